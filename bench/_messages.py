"""Synthetic workloads: SIU^S12 frames and WhatsApp status webhook bodies, no real PHI.

Every message is built from one template with unique ids, so dedupe never hides work: each
SIU has its own MSH-10 and appointment id, each status its own wamid. Names are placeholders and
phone numbers sit in the fictional ``+57300123xxxx`` range.
"""

from __future__ import annotations

__all__ = [
    "MLLP_END",
    "MLLP_START",
    "control_id",
    "sign",
    "siu_frame",
    "status_webhook",
    "wamid",
]

import hashlib
import hmac

import orjson

MLLP_START = b"\x0b"
MLLP_END = b"\x1c\r"

#: SIU^S12 v2.5 in the shape real schedulers send (reference hl7v2.md §1): SCH with TQ timing,
#: TQ1, PID with a mobile number, PV1, one RGS with service, location and personnel.
_SIU_SEGMENTS = (
    "MSH|^~\\&|BENCHHIS|BENCHFAC|BRIDGE|CLINIC|20261122083000||SIU^S12^SIU_S12|{ctrl}|P|2.5",
    (
        "SCH|{appt}^BENCH|{appt}^BENCH|||{appt}|ROUTINE^Routine visit||CONSULT|30|MIN"
        "|^^30^20261201090000^20261201093000|||||1^DOCTOR^BENCH|||||||||Booked"
    ),
    "TQ1|1||||||20261201090000|20261201093000",
    (
        "PID|1||MRN{appt}^^^BENCH^MR||TESTPATIENT^ALPHA||19800101|F|||1 TEST ST^^BOGOTA^^110111"
        "^CO||^PRN^CP^^57^300^123{phone}~^NET^Internet^bench@example.invalid|||||||||||||||||||"
    ),
    "PV1|1|O|OPD^1^1^BENCH||||1^DOCTOR^BENCH",
    "RGS|1|A",
    "AIS|1|A|CONSULT^Consultation|20261201090000|||30|MIN",
    "AIL|1|A|OPD^^^BENCH^^^^^Outpatients|||20261201090000|||30|MIN",
    "AIP|1|A|1^DOCTOR^BENCH|ATTENDING||20261201090000|||30|MIN",
)
_SIU_TEMPLATE = "\r".join(_SIU_SEGMENTS)


def control_id(run: str, index: int) -> str:
    """The MSH-10 of message ``index`` in run ``run`` (unique across runs of one bench)."""
    return f"{run}{index:08d}"


def siu_frame(run: str, index: int) -> bytes:
    """One MLLP-framed SIU^S12 with a unique MSH-10 and appointment id.

    Args:
        run: a short prefix unique to this load run.
        index: the message number within the run.
    """
    text = _SIU_TEMPLATE.format(
        ctrl=control_id(run, index), appt=f"{run}A{index}", phone=f"{index % 10000:04d}"
    )
    return MLLP_START + text.encode("ascii") + b"\r" + MLLP_END


def wamid(run: str, index: int) -> str:
    """A unique, wamid-shaped message id."""
    return f"wamid.BENCH{run}{index:010d}"


def status_webhook(run: str, first: int, count: int, *, phone_number_id: str) -> bytes:
    """A status webhook body (shaped like the corpus' pywa delivered sample) with ``count``
    statuses for wamids ``first .. first + count - 1``.

    Args:
        run: a short prefix unique to this load run.
        first: index of the first wamid.
        count: statuses in this body (1 for single, 50 for batches).
        phone_number_id: the business number the webhook is for.
    """
    statuses = [
        {
            "id": wamid(run, first + n),
            "status": "delivered",
            "timestamp": "1698266945",
            "recipient_id": f"57300123{(first + n) % 10000:04d}",
            "conversation": {"id": f"conv{run}{first + n}", "origin": {"type": "utility"}},
            "pricing": {"billable": True, "pricing_model": "PMP", "category": "utility"},
        }
        for n in range(count)
    ]
    body = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "5467539754836534",
                "changes": [
                    {
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550009999",
                                "phone_number_id": phone_number_id,
                            },
                            "statuses": statuses,
                        },
                        "field": "messages",
                    }
                ],
            }
        ],
    }
    return orjson.dumps(body)


def sign(app_secret: str, body: bytes) -> str:
    """``X-Hub-Signature-256`` for ``body``: ``sha256=`` + hex HMAC-SHA256 with the app secret."""
    digest = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"
