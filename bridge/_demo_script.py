"""The cast and script of ``bridge demo``, and the check of its summary against the database.

Six synthetic patients (invented names, fictional ``+57300123xxxx`` numbers), each booked by
the simulated HIS and each answering the reminder a different way:

=============  ===========================================  ==============================
patient        answers the reminder with                    what the bridge must do
=============  ===========================================  ==============================
confirm        the Confirmar button                         SRM^S03 to the HIS, thanks
cancel         Cancelar, then "Sí, cancelar"                SRM^S04 to the HIS, notice
reschedule     Reprogramar                                  a person takes over (the HL7
                                                            connector offers no free slots)
opt-out        "STOP"                                       opt-out, acknowledgement only
human          "humano"                                     a person takes over
free text      "sí confirmo"                                SRM^S03 to the HIS, thanks
=============  ===========================================  ==============================

The first patient also gets a final lab result (ORU^R01): a results-ready notice with a portal
link and no result content.

:func:`check_summary` compares what the demo did with the ``bridge report`` figures read from
the database and with what the simulated HIS received; the demo exits non-zero on any mismatch.
"""

from __future__ import annotations

__all__ = ["CAST", "Check", "Persona", "Step", "check_summary", "expected_totals"]

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from bridge._demo_his import DemoPatient, HisMessage
from bridge.store.reports import ClinicReport

#: Template names of the messages that open a conversation (not answers to a reply).
REMINDER_TEMPLATE = "appointment_reminder"
RESULTS_TEMPLATE = "results_ready"


@dataclass(frozen=True, kw_only=True, slots=True)
class Step:
    """One thing a simulated patient does when a message of the given shape arrives.

    Args:
        on: ``"reminder"`` (the reminder template) or ``"buttons"`` (reply buttons, e.g.
            the are-you-sure question).
        button: the button to tap (intent word, label or payload).
        text: the text to type.
        says: what the demo prints.
    """

    on: str
    says: str
    button: str | None = None
    text: str | None = None

    def matches(self, message: Mapping[str, object]) -> bool:
        """Whether a message the bridge sent (a sandbox log record) triggers this step."""
        template = message.get("template")
        if self.on == "reminder":
            return isinstance(template, dict) and template.get("name") == REMINDER_TEMPLATE
        if self.on == "buttons":
            return message.get("interactive_type") == "button"
        return False

    def reply_body(self, to: str, context_id: str | None) -> dict[str, str]:
        """The sandbox control API's ``POST /_sandbox/reply`` body.

        Args:
            to: the patient's number.
            context_id: the bridge's message being answered (a tap), or None (typed text).
        """
        body = {"to": to}
        if context_id is not None:
            body["context_id"] = context_id
        if self.button is not None:
            body["button"] = self.button
        if self.text is not None:
            body["text"] = self.text
        return body


@dataclass(frozen=True, kw_only=True, slots=True)
class Persona:
    """A simulated patient: who, their appointment, and how they answer.

    Args:
        patient: the synthetic patient.
        appointment_id: the HIS's appointment id.
        location: the clinic (the report groups by it).
        slot: minutes after 09:00 tomorrow (clinic time) the appointment starts.
        steps: what they do, in order.
        outcome: ``confirmed``, ``cancelled``, ``handoff`` or ``opt_out``.
        result: what the demo prints when their conversation has ended.
        his_message: the decision the HIS must receive (``SRM^S03``), or None.
        gets_result: whether the lab also reports a final result for them.
        remark: a line under the summary that explains their figure, if it needs one.
    """

    patient: DemoPatient
    appointment_id: str
    location: str
    slot: int
    steps: tuple[Step, ...]
    outcome: str
    result: str
    his_message: str | None = None
    gets_result: bool = False
    remark: str = ""

    @property
    def digits(self) -> str:
        """The number as the sandbox writes ``to`` (digits only)."""
        return self.patient.phone.lstrip("+")


def _patient(n: int, given: str, family: str) -> DemoPatient:
    return DemoPatient(mrn=f"DEMO-MRN-{n}", given=given, family=family, phone=f"+5730012306{n:02d}")


#: The demo's cast, in booking order. Names are invented; numbers are fictional.
CAST: tuple[Persona, ...] = (
    Persona(
        patient=_patient(1, "Julián", "Torres"),
        appointment_id="DEMO-1001",
        location="Sede Norte",
        slot=0,
        steps=(Step(on="reminder", button="confirm", says='taps "Confirmar"'),),
        outcome="confirmed",
        result="confirmed; the HIS has the SRM^S03",
        his_message="SRM^S03",
        gets_result=True,
    ),
    Persona(
        patient=_patient(2, "Camila", "Herrera"),
        appointment_id="DEMO-1002",
        location="Sede Norte",
        slot=30,
        steps=(
            Step(on="reminder", button="cancel", says='taps "Cancelar"'),
            Step(on="buttons", button="Sí, cancelar", says='taps "Sí, cancelar"'),
        ),
        outcome="cancelled",
        result="cancelled after the are-you-sure question; the HIS has the SRM^S04",
        his_message="SRM^S04",
    ),
    Persona(
        patient=_patient(3, "Andrés", "Pardo"),
        appointment_id="DEMO-1003",
        location="Sede Norte",
        slot=60,
        steps=(Step(on="reminder", button="reschedule", says='taps "Reprogramar"'),),
        outcome="handoff",
        result="handed to a person (no free slots to offer)",
        remark="asked to reschedule; the HL7 v2 connector cannot list free slots, so the bridge "
        "handed the conversation to a person: counted under handoffs, not rescheduled",
    ),
    Persona(
        patient=_patient(4, "Sofía", "Lozano"),
        appointment_id="DEMO-1004",
        location="Sede Sur",
        slot=0,
        steps=(Step(on="reminder", text="STOP", says='writes "STOP"'),),
        outcome="opt_out",
        result="opted out; gets nothing more but this acknowledgement",
    ),
    Persona(
        patient=_patient(5, "Diego", "Salazar"),
        appointment_id="DEMO-1005",
        location="Sede Sur",
        slot=30,
        steps=(Step(on="reminder", text="humano", says='writes "humano"'),),
        outcome="handoff",
        result="handed to a person, as asked",
    ),
    Persona(
        patient=_patient(6, "Marta", "Quintero"),
        appointment_id="DEMO-1006",
        location="Sede Sur",
        slot=60,
        steps=(Step(on="reminder", text="sí confirmo", says='writes "sí confirmo"'),),
        outcome="confirmed",
        result="confirmed in free text; the HIS has the SRM^S03",
        his_message="SRM^S03",
    ),
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Check:
    """One line of the demo's summary: a figure as the demo expects it and as found."""

    label: str
    expected: int
    found: int
    source: str

    @property
    def ok(self) -> bool:
        """Whether the figures agree."""
        return self.expected == self.found


def expected_totals(cast: Iterable[Persona]) -> Counter[str]:
    """What the demo did, by outcome, plus the decisions the HIS must receive."""
    totals: Counter[str] = Counter()
    for persona in cast:
        totals[persona.outcome] += 1
        if persona.his_message is not None:
            totals[persona.his_message] += 1
    return totals


def check_summary(
    cast: Sequence[Persona],
    reports: Sequence[ClinicReport],
    his_messages: Sequence[HisMessage],
    sandbox_messages: int,
) -> list[Check]:
    """Compare what the demo did with the report read from the database and the HIS's log.

    Args:
        cast: the personas that played.
        reports: ``build_report`` over the demo's period.
        his_messages: what the simulated HIS received.
        sandbox_messages: how many messages reached the sandbox (the patients' phones).

    Returns:
        One :class:`Check` per figure; the summary matches when every one is ``ok``.
    """
    expected = expected_totals(cast)
    total = Counter[str]()
    for rep in reports:
        total["confirmed"] += rep.confirmed
        total["cancelled"] += rep.cancelled
        total["rescheduled"] += rep.rescheduled
        total["opt_outs"] += rep.opt_outs
        total["handoffs"] += rep.handoffs
        total["sent"] += rep.sent
    received = Counter(m.message_type for m in his_messages)
    return [
        Check(
            label="confirmed",
            expected=expected["confirmed"],
            found=total["confirmed"],
            source="report",
        ),
        Check(
            label="cancelled",
            expected=expected["cancelled"],
            found=total["cancelled"],
            source="report",
        ),
        Check(label="rescheduled", expected=0, found=total["rescheduled"], source="report"),
        Check(
            label="opt-outs", expected=expected["opt_out"], found=total["opt_outs"], source="report"
        ),
        Check(
            label="handoffs", expected=expected["handoff"], found=total["handoffs"], source="report"
        ),
        Check(
            label="confirmations at the HIS (SRM^S03)",
            expected=expected["SRM^S03"],
            found=received["SRM^S03"],
            source="HIS",
        ),
        Check(
            label="cancellations at the HIS (SRM^S04)",
            expected=expected["SRM^S04"],
            found=received["SRM^S04"],
            source="HIS",
        ),
        Check(
            label="messages sent",
            expected=sandbox_messages,
            found=total["sent"],
            source="report vs sandbox",
        ),
    ]
