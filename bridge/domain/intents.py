"""Reply intents: what a patient's tap or words mean, in Spanish and English.

Two inputs reach here from the channel, and neither is a vendor type:

* a **button payload** we set at send time, ``"<intent>.<token>"`` (``confirm.k3Jx9...``), split by
  :func:`parse_button_payload`; the token is opaque, issued and verified by the engine;
* **free text** a patient typed, classified by :func:`classify_text` into one of
  :data:`TEXT_INTENTS`.

Decisions (documented so staff and template authors know them):

* Numeric shortcuts follow the on-screen order of the ``appointment_reminder`` buttons
  (Confirm, Reschedule, Cancel): ``1`` confirm, ``2`` reschedule, ``3`` cancel. A patient who
  counts buttons gets what they see, and a misread ``2`` leads to the harmless reschedule flow
  (a list of slots, where cancelling is still possible) rather than to a cancellation.
* A bare "no" is ``unknown``: "no" to what? The engine answers with the buttons again.
* ``stop``/``start`` words count only when they are the whole message ("STOP", "baja"), never
  inside a sentence, so "no puedo parar de toser" is not an opt-out.
* When a message holds several intents, the least destructive wins: reschedule before cancel,
  cancel before confirm ("sí, pero necesito otro día" is a reschedule).
"""

from __future__ import annotations

__all__ = [
    "PAYLOAD_INTENTS",
    "TEXT_INTENTS",
    "classify_text",
    "normalise_text",
    "parse_button_payload",
]

import re
import unicodedata

#: Intents a button payload or list-row id may carry (``"<intent>.<token>"``).
PAYLOAD_INTENTS = frozenset(
    {"confirm", "cancel", "reschedule", "slot", "rating", "start", "stop", "help"}
)
#: What :func:`classify_text` can answer.
TEXT_INTENTS = ("confirm", "cancel", "reschedule", "stop", "start", "help", "unknown")

#: Tokens are url-safe and opaque; dots are allowed so signed tokens (``body.signature``) fit.
_TOKEN_RE = re.compile(r"[A-Za-z0-9_\-.=~]{1,240}")
#: A text longer than this is a story, not a command: only phrase search applies.
_MAX_NORMALISED = 400

#: Whole-message commands (after normalisation). Checked first.
_EXACT: dict[str, str] = {
    # confirm
    "1": "confirm",
    "si": "confirm",
    "ok": "confirm",
    "okay": "confirm",
    "okey": "confirm",
    "vale": "confirm",
    "yes": "confirm",
    "yep": "confirm",
    "confirmo": "confirm",
    "confirmar": "confirm",
    "confirmado": "confirm",
    "confirmada": "confirm",
    "confirm": "confirm",
    "confirmed": "confirm",
    "claro": "confirm",
    "listo": "confirm",
    "de acuerdo": "confirm",
    "si confirmo": "confirm",
    "\U0001f44d": "confirm",  # thumbs up, kept by normalisation on purpose
    # reschedule
    "2": "reschedule",
    "reprogramar": "reschedule",
    "reagendar": "reschedule",
    "cambiar": "reschedule",
    "reschedule": "reschedule",
    "change": "reschedule",
    # cancel
    "3": "cancel",
    "cancelar": "cancel",
    "cancelo": "cancel",
    "cancela": "cancel",
    "anular": "cancel",
    "anulo": "cancel",
    "cancel": "cancel",
    # opt-out / opt-in: whole message only
    "stop": "stop",
    "baja": "stop",
    "parar": "stop",
    "para": "stop",
    "unsubscribe": "stop",
    "darme de baja": "stop",
    "dar de baja": "stop",
    "no mas mensajes": "stop",
    "start": "start",
    "alta": "start",
    "darme de alta": "start",
    "subscribe": "start",
    "unstop": "start",
    "reanudar": "start",
    # help
    "help": "help",
    "ayuda": "help",
    "humano": "help",
    "asesor": "help",
    "agente": "help",
    "agent": "help",
    "operador": "help",
    "persona": "help",
}

#: Phrases searched inside longer messages, as whole words, in priority order.
_PHRASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "help",
        (
            "hablar con una persona",
            "hablar con alguien",
            "hablar con un humano",
            "hablar con un asesor",
            "hablar con un agente",
            "talk to a person",
            "talk to someone",
            "talk to a human",
            "speak to someone",
            "speak to a person",
            "real person",
            "humano",
            "asesor",
            "agent",
            "agente",
            "ayuda",
            "help",
        ),
    ),
    (
        "reschedule",
        (
            "cambiar la cita",
            "cambiar mi cita",
            "cambiar la fecha",
            "cambiar la hora",
            "cambiar de dia",
            "otro dia",
            "otra fecha",
            "otra hora",
            "otro horario",
            "mas tarde",
            "mas temprano",
            "reprogramar",
            "reprogramarla",
            "reagendar",
            "reagendarla",
            "mover la cita",
            "reschedule",
            "another day",
            "another time",
            "different day",
            "different time",
            "change the date",
            "change the time",
            "change my appointment",
            "move my appointment",
            "move the appointment",
        ),
    ),
    (
        "cancel",
        (
            "no puedo ir",
            "no podre ir",
            "no puedo asistir",
            "no podre asistir",
            "no voy a ir",
            "no voy",
            "no asistire",
            "no ire",
            "cancelar",
            "cancelo",
            "cancela",
            "cancelarla",
            "anular",
            "anulo",
            "cancel",
            "can t come",
            "cant come",
            "can t make it",
            "cant make it",
            "cannot come",
            "cannot attend",
            "won t be able",
            "wont be able",
            "not coming",
        ),
    ),
    (
        "confirm",
        (
            "si",
            "confirmo",
            "confirmar",
            "confirmado",
            "confirmada",
            "confirm",
            "confirmed",
            "alli estare",
            "ahi estare",
            "asistire",
            "ire",
            "de acuerdo",
            "perfecto",
            "ok",
            "yes",
            "i will be there",
            "i ll be there",
            "see you",
        ),
    ),
)


def _strip_marks(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _normalise_once(text: str) -> str:
    folded = _strip_marks(text).casefold()
    # Keep letters, digits and the thumbs-up; everything else separates words.
    chars = [ch if ch.isalnum() or ch == "\U0001f44d" else " " for ch in folded]
    return " ".join("".join(chars).split())


def normalise_text(text: str) -> str:
    """Fold case and accents, drop punctuation and collapse spaces.

    ``"¡Sí, CONFIRMO!"`` becomes ``"si confirmo"``. Idempotent: normalising twice gives the
    same text (Unicode compatibility forms can need a second fold, so it runs to a fixed point).

    Args:
        text: any text.

    Returns:
        The normalised text (may be empty).
    """
    current = text
    # Casefolding can produce characters that decompose again (and the reverse), so repeat
    # until nothing changes; two or three rounds suffice in practice.
    for _ in range(8):
        nxt = _normalise_once(current)
        if nxt == current:
            return nxt
        current = nxt
    return current


def classify_text(text: str) -> str:
    """Classify a patient's free text.

    Args:
        text: what the patient wrote (PHI: never logged here).

    Returns:
        One of :data:`TEXT_INTENTS`.
    """
    norm = normalise_text(text)
    if not norm:
        return "unknown"
    exact = _EXACT.get(norm)
    if exact is not None:
        return exact
    if len(norm) > _MAX_NORMALISED:
        return "unknown"
    padded = f" {norm} "
    for intent, phrases in _PHRASES:
        if any(f" {phrase} " in padded for phrase in phrases):
            return intent
    return "unknown"


def parse_button_payload(payload: str) -> tuple[str, str] | None:
    """Split a payload we set at send time into ``(intent, token)``.

    Args:
        payload: a template quick-reply payload, reply-button id or list-row id.

    Returns:
        ``(intent, token)`` when the payload is ``"<intent>.<token>"`` with a known intent and a
        url-safe token; otherwise None (the caller then treats the payload as text).
    """
    intent, sep, token = payload.partition(".")
    if not sep or intent not in PAYLOAD_INTENTS or not _TOKEN_RE.fullmatch(token):
        return None
    return intent, token
