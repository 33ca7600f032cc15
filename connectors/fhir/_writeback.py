"""Decisions written back to the FHIR server: confirm, cancel, reschedule, free slots, Communication.

Implements ../shared/reference/fhir.md §3 (write-back). Every write is optimistic-concurrency:
``If-Match: W/"<version>"``. The first write uses the version the patient saw (the command's
``AppointmentRef.version``), so the server arbitrates when staff changed the appointment since.
On 409/412 the appointment is re-read; the decision is re-applied only when it still makes sense
(status still open, start and end unchanged since the version the patient saw), else
``EHRRejected(conflict=True)`` hands it to a human. After every write the resource is read back
and ``CommandResult.verified`` says whether the change is there.

- confirm → the patient participant's ``status = accepted`` (PUT, JSON Patch, or an
  AppointmentResponse, per ``confirm_mode``);
- cancel → ``status = cancelled`` + ``cancelationReason`` (R4 spelling) ``pat-crs`` or ``pat``;
- reschedule → ``start``/``end``/``slot`` from the chosen Slot (If-Match), or a Task for staff
  where the server cannot (``reschedule_mode = task``, or the update is refused).
"""

from __future__ import annotations

__all__ = ["COMMAND_SYSTEM", "WAMID_SYSTEM", "WriteBack"]

import copy
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from structlog.typing import FilteringBoundLogger

from bridge.domain import (
    AppointmentRef,
    CancelAppointment,
    CommandResult,
    ConfirmAppointment,
    FreeSlot,
    RescheduleAppointment,
    SchedulingCommand,
)
from bridge.errors import EHRRejected
from bridge.ports import Clock

from ._client import FhirClient, FhirResponse
from ._values import parse_datetime, parse_reference

_CONNECTOR = "fhir"
#: identifier system for resources the bridge creates per command (idempotent re-tries).
COMMAND_SYSTEM = "urn:ehr-whatsapp-bridge:command"
#: identifier system for the WhatsApp message id on Communication.
WAMID_SYSTEM = "urn:ehr-whatsapp-bridge:wamid"
_CANCEL_SYSTEM = "http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason"
#: statuses in which a patient's decision can still be applied.
_OPEN = frozenset({"proposed", "pending", "booked", "arrived", "checked-in", "waitlist"})
_MOVABLE = frozenset({"proposed", "pending", "booked", "waitlist"})
#: answers meaning "this server cannot do that update", after which reschedule opens a Task.
_CANNOT = frozenset({"400", "403", "405", "422", "501"})
_ATTEMPTS = 3


@dataclass(frozen=True, kw_only=True, slots=True)
class _Plan:
    """One decision: when it is already done, when it is allowed, how to write it."""

    done: Callable[[Mapping[str, Any]], bool]
    refused: Callable[[Mapping[str, Any]], str | None]
    write: Callable[[Mapping[str, Any], str | None], Awaitable[FhirResponse]]


def _patient_index(resource: Mapping[str, Any], patient_id: str) -> int | None:
    for index, participant in enumerate(resource.get("participant", []) or []):
        actor = participant.get("actor") if isinstance(participant, Mapping) else None
        ref = parse_reference(actor.get("reference")) if isinstance(actor, Mapping) else None
        if ref is not None and ref.type == "Patient" and (not patient_id or ref.id == patient_id):
            return index
    return None


def _times(resource: Mapping[str, Any] | None) -> tuple[datetime | None, datetime | None]:
    if resource is None:
        return None, None
    return parse_datetime(resource.get("start"), None), parse_datetime(resource.get("end"), None)


class WriteBack:
    """Applies scheduling commands to one FHIR server.

    Args:
        client: the FHIR client.
        clock: the clock port.
        confirm_mode: ``put``, ``patch`` or ``appointment-response``.
        cancel_reason: ``pat-crs`` or ``pat``.
        reschedule_mode: ``update`` or ``task``.
        log: structlog logger (ids only).
    """

    def __init__(
        self,
        client: FhirClient,
        *,
        clock: Clock,
        confirm_mode: str = "put",
        cancel_reason: str = "pat-crs",
        reschedule_mode: str = "update",
        log: FilteringBoundLogger | None = None,
    ) -> None:
        self._client = client
        self._clock = clock
        self._confirm_mode = confirm_mode
        self._cancel_reason = cancel_reason
        self._reschedule_mode = reschedule_mode
        self._log = log

    # ---------------------------------------------------------------- commands

    async def apply(self, command: SchedulingCommand) -> CommandResult:
        """Apply one command, resolving version conflicts; see the module docstring.

        Raises:
            bridge.errors.EHRUnavailable: the server did not answer; retry later.
            bridge.errors.EHRRejected: refused; ``conflict`` when a human must decide.
        """
        if isinstance(command, ConfirmAppointment):
            if self._confirm_mode == "appointment-response":
                return await self._respond(command)
            return await self._run(command, self._confirm_plan(command))
        if isinstance(command, CancelAppointment):
            return await self._run(command, self._cancel_plan(command))
        if isinstance(command, RescheduleAppointment):
            if self._reschedule_mode == "task":
                return await self._task(command)
            try:
                return await self._run(command, self._reschedule_plan(command))
            except EHRRejected as exc:
                if exc.conflict or exc.code not in _CANNOT:
                    raise
                return await self._task(command)
        raise EHRRejected(_CONNECTOR, "unsupported", f"command {command.kind} is not supported")

    async def _still_sensible(self, ref: AppointmentRef, fresh: Mapping[str, Any]) -> bool:
        """False when the appointment moved since the version the patient answered."""
        if not ref.version:
            return True
        try:
            seen = await self._client.vread("Appointment", ref.value, ref.version)
        except EHRRejected:
            return True  # no history on this server: the status check alone decides
        return _times(seen.resource) == _times(fresh)

    async def _run(self, command: SchedulingCommand, plan: _Plan) -> CommandResult:
        ref = command.appointment
        current = await self._client.read("Appointment", ref.value)
        resource: Mapping[str, Any] = current.resource or {}
        # the version the patient saw: a newer one on the server gives 412 and the re-read path
        if_match = ref.version or current.version
        for attempt in range(_ATTEMPTS):
            if plan.done(resource):
                return CommandResult(
                    applied=True, verified=True, code="200", detail="already so in the EHR"
                )
            reason = plan.refused(resource)
            if reason is not None:
                raise EHRRejected(_CONNECTOR, "state", reason, conflict=attempt > 0)
            try:
                answer = await plan.write(resource, if_match)
            except EHRRejected as exc:
                if not exc.conflict:
                    raise
                fresh = await self._client.read("Appointment", ref.value)
                resource = fresh.resource or {}
                if not await self._still_sensible(ref, resource):
                    raise EHRRejected(
                        _CONNECTOR,
                        exc.code,
                        f"Appointment/{ref.value} changed since the patient answered",
                        conflict=True,
                    ) from exc
                if_match = fresh.version
                if self._log is not None:
                    self._log.info(
                        "fhir.writeback.conflict_retry",
                        appointment=ref.value,
                        command=command.command_id,
                        version=if_match,
                    )
                continue
            back = await self._client.read("Appointment", ref.value)
            verified = plan.done(back.resource or {})
            return CommandResult(
                applied=True,
                verified=verified,
                code=str(answer.status),
                detail=f"Appointment/{ref.value} now version {back.version}",
            )
        raise EHRRejected(
            _CONNECTOR, "412", f"Appointment/{ref.value} kept changing", conflict=True
        )

    async def _put_or_patch(
        self,
        resource: Mapping[str, Any],
        version: str | None,
        change: Callable[[dict[str, Any]], None],
        operations: Sequence[Mapping[str, Any]],
        *,
        patch: bool,
    ) -> FhirResponse:
        if patch:
            return await self._client.patch(
                "Appointment", str(resource["id"]), operations, version=version
            )
        updated = copy.deepcopy(dict(resource))
        change(updated)
        return await self._client.update(updated, version=version)

    def _confirm_plan(self, command: ConfirmAppointment) -> _Plan:
        def done(resource: Mapping[str, Any]) -> bool:
            index = _patient_index(resource, command.patient_id)
            return index is not None and resource["participant"][index].get("status") == "accepted"

        def refused(resource: Mapping[str, Any]) -> str | None:
            if resource.get("status") not in _OPEN:
                return f"appointment is {resource.get('status')}"
            if _patient_index(resource, command.patient_id) is None:
                return f"Patient/{command.patient_id} is not a participant"
            return None

        async def write(resource: Mapping[str, Any], version: str | None) -> FhirResponse:
            index = _patient_index(resource, command.patient_id)
            if index is None:  # refused() already said so; keeps the types honest
                raise EHRRejected(_CONNECTOR, "state", "no patient participant")

            def change(updated: dict[str, Any]) -> None:
                updated["participant"][index]["status"] = "accepted"

            actor = resource["participant"][index]["actor"]["reference"]
            operations: list[dict[str, Any]] = [
                {"op": "test", "path": f"/participant/{index}/actor/reference", "value": actor},
                {"op": "replace", "path": f"/participant/{index}/status", "value": "accepted"},
            ]
            return await self._put_or_patch(
                resource, version, change, operations, patch=self._confirm_mode == "patch"
            )

        return _Plan(done=done, refused=refused, write=write)

    def _cancel_plan(self, command: CancelAppointment) -> _Plan:
        # the command's default is plain "pat"; the site's configured reason refines it
        code = command.reason if command.reason != "pat" else self._cancel_reason
        reason = {"coding": [{"system": _CANCEL_SYSTEM, "code": code}]}

        def done(resource: Mapping[str, Any]) -> bool:
            return resource.get("status") == "cancelled"

        def refused(resource: Mapping[str, Any]) -> str | None:
            status = resource.get("status")
            return None if status in _OPEN else f"appointment is {status}"

        async def write(resource: Mapping[str, Any], version: str | None) -> FhirResponse:
            def change(updated: dict[str, Any]) -> None:
                updated["status"] = "cancelled"
                updated["cancelationReason"] = reason  # R4 spelling, one "l"

            operations: list[dict[str, Any]] = [
                {"op": "replace", "path": "/status", "value": "cancelled"},
                {"op": "add", "path": "/cancelationReason", "value": reason},
            ]
            return await self._put_or_patch(
                resource, version, change, operations, patch=self._confirm_mode == "patch"
            )

        return _Plan(done=done, refused=refused, write=write)

    def _reschedule_plan(self, command: RescheduleAppointment) -> _Plan:
        slot = command.slot
        slot_ref = {"reference": f"Slot/{slot.id}"}

        def done(resource: Mapping[str, Any]) -> bool:
            start, end = _times(resource)
            refs = [
                s.get("reference") for s in resource.get("slot", []) or [] if isinstance(s, Mapping)
            ]
            return start == slot.start and end == slot.end and slot_ref["reference"] in refs

        def refused(resource: Mapping[str, Any]) -> str | None:
            status = resource.get("status")
            return None if status in _MOVABLE else f"appointment is {status}"

        async def write(resource: Mapping[str, Any], version: str | None) -> FhirResponse:
            start, end = slot.start.isoformat(), slot.end.isoformat()

            def change(updated: dict[str, Any]) -> None:
                updated["start"], updated["end"], updated["slot"] = start, end, [slot_ref]

            operations: list[dict[str, Any]] = [
                {"op": "add", "path": "/start", "value": start},
                {"op": "add", "path": "/end", "value": end},
                {"op": "add", "path": "/slot", "value": [slot_ref]},
            ]
            return await self._put_or_patch(
                resource, version, change, operations, patch=self._confirm_mode == "patch"
            )

        return _Plan(done=done, refused=refused, write=write)

    async def _respond(self, command: ConfirmAppointment) -> CommandResult:
        """Confirm with an AppointmentResponse (conditional create: one per command)."""
        current = await self._client.read("Appointment", command.appointment.value)
        status = (current.resource or {}).get("status")
        if status not in _OPEN:
            raise EHRRejected(_CONNECTOR, "state", f"appointment is {status}")
        identifier = {"system": COMMAND_SYSTEM, "value": command.command_id}
        response = {
            "resourceType": "AppointmentResponse",
            "identifier": [identifier],
            "appointment": {"reference": f"Appointment/{command.appointment.value}"},
            "actor": {"reference": f"Patient/{command.patient_id}"},
            "participantStatus": "accepted",
        }
        answer = await self._client.create(
            response, if_none_exist=f"identifier={COMMAND_SYSTEM}|{command.command_id}"
        )
        return await self._read_back_created(
            answer, "AppointmentResponse", "participantStatus", "accepted"
        )

    async def _task(self, command: RescheduleAppointment) -> CommandResult:
        """Open a Task asking staff to move the appointment to the chosen slot."""
        task = {
            "resourceType": "Task",
            "identifier": [{"system": COMMAND_SYSTEM, "value": command.command_id}],
            "status": "requested",
            "intent": "order",
            "code": {
                "coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "change"}]
            },
            "focus": {"reference": f"Appointment/{command.appointment.value}"},
            "for": {"reference": f"Patient/{command.patient_id}"},
            "authoredOn": self._clock.now().isoformat(),
            "description": "Patient asked to move this appointment to the slot in input",
            "input": [
                {
                    "type": {"text": "requested-slot"},
                    "valueReference": {"reference": f"Slot/{command.slot.id}"},
                },
                {
                    "type": {"text": "requested-period"},
                    "valuePeriod": {
                        "start": command.slot.start.isoformat(),
                        "end": command.slot.end.isoformat(),
                    },
                },
            ],
        }
        answer = await self._client.create(
            task, if_none_exist=f"identifier={COMMAND_SYSTEM}|{command.command_id}"
        )
        result = await self._read_back_created(answer, "Task", "status", "requested")
        return CommandResult(
            applied=result.applied,
            verified=result.verified,
            code="task",
            detail=f"staff asked to reschedule: {result.detail}",
        )

    async def _read_back_created(
        self, answer: FhirResponse, rtype: str, element: str, expected: str
    ) -> CommandResult:
        created = answer.resource or {}
        rid = created.get("id")
        if not isinstance(rid, str) and answer.location:
            ref = parse_reference(answer.location.split("/_history/")[0])
            rid = ref.id if ref is not None else None
        if not isinstance(rid, str):
            return CommandResult(
                applied=True,
                verified=False,
                code=str(answer.status),
                detail=f"{rtype} created, no id",
            )
        back = await self._client.read(rtype, rid)
        verified = (back.resource or {}).get(element) == expected
        return CommandResult(
            applied=True, verified=verified, code=str(answer.status), detail=f"{rtype}/{rid}"
        )

    # ---------------------------------------------------------------- slots

    async def free_slots(self, appointment: AppointmentRef, limit: int) -> list[FreeSlot]:
        """Up to ``limit`` free slots of the same schedule and service, soonest first.

        Uses ``Appointment/$find`` where the CapabilityStatement offers it, else a Slot search
        (``schedule``, ``status=free``, ``start=ge<now>``, ``service-type``).
        """
        if limit <= 0:
            return []
        current = await self._client.read("Appointment", appointment.value)
        resource = current.resource or {}
        own = {s.get("reference") for s in resource.get("slot", []) or [] if isinstance(s, Mapping)}
        services = [
            f"{c.get('system')}|{c.get('code')}" if c.get("system") else str(c.get("code"))
            for concept in resource.get("serviceType", []) or []
            if isinstance(concept, Mapping)
            for c in concept.get("coding", []) or []
            if isinstance(c, Mapping) and c.get("code")
        ]
        now = self._clock.now()
        capability = self._client.capability
        if capability is not None and capability.has_operation("Appointment", "find"):
            return await self._find(resource, services, own, now, limit)
        schedule = await self._schedule_of(own)
        if schedule is None:
            return []
        params = [
            ("schedule", schedule),
            ("status", "free"),
            ("start", f"ge{now.isoformat()}"),
            ("_sort", "start"),
            ("_count", str(min(limit * 2 + len(own), 100))),
        ]
        if services:
            params.append(("service-type", ",".join(services)))
        answer = await self._client.request("GET", "Slot", params=params)
        slots = [
            e.get("resource")
            for e in (answer.resource or {}).get("entry", []) or []
            if isinstance(e, Mapping) and isinstance(e.get("resource"), Mapping)
        ]
        return _free(slots, own, now, limit)

    async def _schedule_of(self, own: set[Any]) -> str | None:
        for value in sorted(str(v) for v in own if v):
            ref = parse_reference(value)
            if ref is None or ref.type != "Slot":
                continue
            slot = await self._client.read("Slot", ref.id)
            schedule = (slot.resource or {}).get("schedule")
            target = (
                parse_reference(schedule.get("reference"))
                if isinstance(schedule, Mapping)
                else None
            )
            if target is not None:
                return target.relative
        return None

    async def _find(
        self,
        resource: Mapping[str, Any],
        services: list[str],
        own: set[Any],
        now: datetime,
        limit: int,
    ) -> list[FreeSlot]:
        parameters: list[dict[str, Any]] = [
            {"name": "start", "valueDateTime": now.isoformat()},
            {"name": "end", "valueDateTime": (now + timedelta(days=60)).isoformat()},
        ]
        for service in services:
            system, _, code = service.rpartition("|")
            coding = {"code": code, **({"system": system} if system else {})}
            parameters.append({"name": "service-type", "valueCoding": coding})
        answer = await self._client.request(
            "POST",
            "Appointment/$find",
            body={"resourceType": "Parameters", "parameter": parameters},
        )
        found: list[Mapping[str, Any]] = []
        for entry in (answer.resource or {}).get("entry", []) or []:
            proposal = entry.get("resource") if isinstance(entry, Mapping) else None
            if not isinstance(proposal, Mapping) or proposal.get("resourceType") != "Appointment":
                continue
            for slot in proposal.get("slot", []) or []:
                ref = parse_reference(slot.get("reference")) if isinstance(slot, Mapping) else None
                if ref is not None:
                    found.append(
                        {"id": ref.id, "start": proposal.get("start"), "end": proposal.get("end")}
                    )
        return _free(found, own, now, limit)

    # ---------------------------------------------------------------- communication

    async def record_communication(
        self,
        *,
        about: str,
        patient_id: str,
        wamid: str,
        status: str = "completed",
        sent: datetime | None = None,
        category: str = "reminder",
    ) -> str | None:
        """Record one WhatsApp message as a Communication; idempotent on the wamid.

        Args:
            about: ``Appointment/<id>`` or ``DiagnosticReport/<id>``.
            patient_id: the Patient's logical id.
            wamid: the WhatsApp message id (stored as the identifier).
            status: event-status code (completed, not-done...).
            sent: when it was sent (default now).
            category: communication-category code (reminder, notification, alert).

        Returns:
            The Communication's id, when the server tells it.
        """
        communication = {
            "resourceType": "Communication",
            "identifier": [{"system": WAMID_SYSTEM, "value": wamid}],
            "status": status,
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/communication-category",
                            "code": category,
                        }
                    ]
                }
            ],
            "medium": [{"text": "WhatsApp"}],
            "subject": {"reference": f"Patient/{patient_id}"},
            "recipient": [{"reference": f"Patient/{patient_id}"}],
            "about": [{"reference": about}],
            "sent": (sent or self._clock.now()).isoformat(),
        }
        answer = await self._client.create(
            communication, if_none_exist=f"identifier={WAMID_SYSTEM}|{wamid}"
        )
        rid = (answer.resource or {}).get("id")
        return str(rid) if rid else None


def _free(slots: Sequence[Any], own: set[Any], now: datetime, limit: int) -> list[FreeSlot]:
    found: dict[str, FreeSlot] = {}
    for slot in slots:
        if not isinstance(slot, Mapping) or not isinstance(slot.get("id"), str):
            continue
        if f"Slot/{slot['id']}" in own or slot.get("status", "free") != "free":
            continue
        start = parse_datetime(slot.get("start"), None)
        end = parse_datetime(slot.get("end"), None)
        if start is None or end is None or start < now:
            continue
        found.setdefault(slot["id"], FreeSlot(id=slot["id"], start=start, end=end))
    return sorted(found.values(), key=lambda s: s.start)[:limit]
