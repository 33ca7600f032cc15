"""Reply intents: free text in Spanish and English, button payloads, normalisation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.domain.intents import (
    PAYLOAD_INTENTS,
    TEXT_INTENTS,
    classify_text,
    normalise_text,
    parse_button_payload,
)

TEXT_CASES = [
    ("sí", "confirm"),
    ("Si", "confirm"),
    ("SÍ!!", "confirm"),
    ("¡Sí, confirmo!", "confirm"),
    ("confirmo", "confirm"),
    ("1", "confirm"),
    (" 1 ", "confirm"),
    ("ok", "confirm"),
    ("OK 👍", "confirm"),
    ("👍", "confirm"),
    ("yes", "confirm"),
    ("Yes, I will be there", "confirm"),
    ("Allí estaré", "confirm"),
    ("cancelar", "cancel"),
    ("Cancelar la cita por favor", "cancel"),
    ("no puedo ir", "cancel"),
    ("No podré asistir, lo siento", "cancel"),
    ("anular", "cancel"),
    ("3", "cancel"),
    ("I can't make it", "cancel"),
    ("2", "reschedule"),
    ("cambiar la cita", "reschedule"),
    ("¿Puede ser otro día?", "reschedule"),
    ("reprogramar", "reschedule"),
    ("Reschedule please", "reschedule"),
    ("no puedo ir, ¿otro día?", "reschedule"),
    ("sí, pero necesito otra hora", "reschedule"),
    ("STOP", "stop"),
    ("stop", "stop"),
    ("BAJA", "stop"),
    ("Parar", "stop"),
    ("START", "start"),
    ("ALTA", "start"),
    ("humano", "help"),
    ("Quiero hablar con un asesor", "help"),
    ("agent", "help"),
    ("help", "help"),
    ("AYUDA", "help"),
    ("no", "unknown"),
    ("", "unknown"),
    ("   ", "unknown"),
    ("Body Text", "unknown"),
    ("no puedo parar de toser", "unknown"),
    ("4", "unknown"),
    ("hola" * 300, "unknown"),
]


class TestClassifyText:
    @pytest.mark.parametrize(("text", "intent"), TEXT_CASES, ids=[c[0][:30] for c in TEXT_CASES])
    def test_common_phrasings_map_to_their_intent(self, text, intent):
        assert classify_text(text) == intent

    def test_stop_inside_a_sentence_is_not_an_opt_out(self):
        assert classify_text("I can't stop sneezing") != "stop"

    @given(st.text(max_size=200))
    def test_any_text_gives_a_known_intent(self, text):
        assert classify_text(text) in TEXT_INTENTS


class TestNormalise:
    @pytest.mark.parametrize(
        ("raw", "norm"),
        [("¡Sí, CONFIRMO!", "si confirmo"), ("  Otro   DÍA ", "otro dia"), ("ÑANDÚ", "nandu")],
    )
    def test_folds_case_accents_and_punctuation(self, raw, norm):
        assert normalise_text(raw) == norm

    @given(st.text())
    def test_normalisation_is_idempotent(self, text):
        once = normalise_text(text)
        assert normalise_text(once) == once

    @given(st.text())
    def test_classification_ignores_prior_normalisation(self, text):
        assert classify_text(normalise_text(text)) == classify_text(text)


class TestButtonPayload:
    @pytest.mark.parametrize("intent", sorted(PAYLOAD_INTENTS))
    def test_every_intent_splits_with_its_token(self, intent):
        assert parse_button_payload(f"{intent}.k3Jx9-_AbC") == (intent, "k3Jx9-_AbC")

    def test_token_may_contain_dots(self):
        assert parse_button_payload("slot.abc.def") == ("slot", "abc.def")

    @pytest.mark.parametrize(
        "payload",
        [
            "",
            "confirm",
            "confirm.",
            "CONFIRM.abc",
            "delete.abc",
            "callback_data",
            "Unsubscribe",
            "confirm.a b",
            "confirm.ñ",
            "confirm." + "a" * 241,
        ],
    )
    def test_foreign_or_malformed_payload_is_none(self, payload):
        assert parse_button_payload(payload) is None

    @given(st.text())
    def test_any_payload_is_none_or_a_known_intent(self, payload):
        parsed = parse_button_payload(payload)
        assert parsed is None or (parsed[0] in PAYLOAD_INTENTS and parsed[1])
