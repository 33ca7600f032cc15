"""One fetched or notified resource → one durable InboundMessage, with its Patient read alongside.

Shared by polling and the notification endpoint, so both paths build the same dedupe identity:
``InboundMessage(connector="fhir", sender=<base URL>, source_id="Type/id/_history/vid",
payload=<canonical resource JSON>)``. Because the sender is the base URL on every path, a version
seen by a notification and again by a poll is the same message (DESIGN.md §3: FHIR dedupe is
resource id + versionId).

``AppointmentHistory`` is what the bridge saw last of each appointment; the translator needs it
to tell "booked" from "rescheduled" (see ``_translate``). The store can implement it; the memory
one here serves tests and single-process runs.
"""

from __future__ import annotations

import orjson

__all__ = ["AppointmentHistory", "Ingestor", "MemoryAppointmentHistory"]

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from zoneinfo import ZoneInfo

from structlog.typing import FilteringBoundLogger

from bridge.domain import (
    AppointmentEvent,
    AppointmentInfo,
    InboundMessage,
    IngestOutcome,
    Translation,
)
from bridge.errors import EHRRejected
from bridge.ports import Clock, EventSink, PluginState

from ._client import FhirClient
from ._translate import TranslateContext, translate_resource
from ._values import canonical_json, message_id, parse_reference

FHIR_JSON = "application/fhir+json"


@runtime_checkable
class AppointmentHistory(Protocol):
    """**Protocol:** the last AppointmentInfo the bridge saw of each appointment."""

    async def previous(self, appointment_id: str, version: str | None) -> AppointmentInfo | None:
        """What was seen of ``appointment_id`` before ``version`` (None: never seen)."""
        ...

    async def remember(self, info: AppointmentInfo) -> None:
        """Record ``info`` as the latest seen version."""
        ...


@dataclass
class MemoryAppointmentHistory:
    """An in-memory :class:`AppointmentHistory` (the last two versions of each appointment)."""

    _seen: dict[str, list[AppointmentInfo]] = field(default_factory=dict)

    async def previous(self, appointment_id: str, version: str | None) -> AppointmentInfo | None:
        """The newest remembered version other than ``version``."""
        for info in reversed(self._seen.get(appointment_id, [])):
            if version is None or info.version != version:
                return info
        return None

    async def remember(self, info: AppointmentInfo) -> None:
        """Keep ``info`` (replacing an older copy of the same version)."""
        versions = [i for i in self._seen.get(info.id, []) if i.version != info.version]
        self._seen[info.id] = [*versions, info][-2:]


class StateAppointmentHistory:
    """A durable :class:`AppointmentHistory` in the bridge's plugin state (``kv`` table).

    Survives restarts and is shared by daemons on one PostgreSQL, so a reschedule received
    after a restart is still recognised as one.
    """

    def __init__(self, state: PluginState) -> None:
        self._state = state

    async def previous(self, appointment_id: str, version: str | None) -> AppointmentInfo | None:
        """The newest remembered version other than ``version``."""
        for info in reversed(await self._load(appointment_id)):
            if version is None or info.version != version:
                return info
        return None

    async def remember(self, info: AppointmentInfo) -> None:
        """Keep ``info`` and the version before it."""
        versions = [i for i in await self._load(info.id) if i.version != info.version]
        kept = [*versions, info][-2:]
        await self._state.set(
            f"history:{info.id}", orjson.dumps([i.marshal() for i in kept]).decode()
        )

    async def _load(self, appointment_id: str) -> list[AppointmentInfo]:
        raw = await self._state.get(f"history:{appointment_id}")
        if not raw:
            return []
        return [AppointmentInfo.unmarshal(item) for item in orjson.loads(raw)]


class Ingestor:
    """Translate a resource (reading its Patient) and hand it to the sink.

    Args:
        client: the FHIR client (to read Patients).
        history: what was seen of each appointment.
        clock: the clock port.
        region: default phone region.
        timezone: IANA zone for date-times without offset.
        known_topics: topics subscribed to (None: any).
        log: structlog logger (ids only).
    """

    def __init__(
        self,
        client: FhirClient,
        *,
        history: AppointmentHistory,
        clock: Clock,
        region: str | None,
        timezone: str | None,
        known_topics: frozenset[str] | None,
        log: FilteringBoundLogger,
    ) -> None:
        self._client = client
        self._history = history
        self._clock = clock
        self._region = region
        self._tz = ZoneInfo(timezone) if timezone else None
        self._known_topics = known_topics
        self._log = log

    @property
    def sender(self) -> str:
        """The dedupe namespace of every resource from this server: its base URL."""
        return self._client.base_url

    def context(self, **overrides: Any) -> TranslateContext:
        """A translation context for this server."""
        values: dict[str, Any] = {
            "now": self._clock.now(),
            "system": self._client.base_url,
            "region": self._region,
            "tz": self._tz,
            "known_topics": self._known_topics,
        }
        values.update(overrides)
        return TranslateContext(**values)

    async def _patients(self, resource: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
        references: list[Any] = []
        if resource.get("resourceType") == "Appointment":
            references = [
                p.get("actor", {}).get("reference")
                for p in resource.get("participant", []) or []
                if isinstance(p, Mapping) and isinstance(p.get("actor"), Mapping)
            ]
        elif resource.get("resourceType") == "DiagnosticReport":
            subject = resource.get("subject")
            references = [subject.get("reference")] if isinstance(subject, Mapping) else []
        found: dict[str, Mapping[str, Any]] = {}
        for value in references:
            ref = parse_reference(value)
            if ref is None or ref.type != "Patient" or ref.relative in found:
                continue
            if ref.base is not None and ref.base.rstrip("/") != self._client.base_url:
                continue  # another server's patient: never send our token there
            try:
                answer = await self._client.read("Patient", ref.id)
            except EHRRejected as exc:
                # gone or forbidden: the translation says "patient.not_included"
                self._log.warning("fhir.patient_unreadable", patient=ref.id, code=exc.code)
                continue
            if answer.resource is not None:
                found[ref.relative] = answer.resource
            break  # the first patient participant is the one we message
        return found

    async def translate(self, resource: Mapping[str, Any]) -> Translation:
        """Translate ``resource`` with its Patient read from the server and its history.

        Raises:
            bridge.errors.EHRUnavailable: the Patient could not be read now.
        """
        patients = await self._patients(resource)
        previous: AppointmentInfo | None = None
        if resource.get("resourceType") == "Appointment" and isinstance(resource.get("id"), str):
            meta = resource.get("meta")
            version = meta.get("versionId") if isinstance(meta, Mapping) else None
            previous = await self._history.previous(resource["id"], version)
        ctx = self.context(patients=patients, previous=lambda _id: previous)
        return translate_resource(resource, ctx)

    async def ingest(
        self, resource: Mapping[str, Any], sink: EventSink
    ) -> tuple[IngestOutcome, Translation]:
        """Translate and store one resource; remember appointments once stored.

        Returns:
            What the store made of it, and the translation.

        Raises:
            bridge.errors.EHRUnavailable: the Patient could not be read now.
            bridge.errors.StoreUnavailable: the sink could not store it.
        """
        translation = await self.translate(resource)
        message = InboundMessage(
            connector="fhir",
            sender=self.sender,
            source_id=message_id(resource),
            payload=canonical_json(resource),
            translation=translation,
            content_type=FHIR_JSON,
        )
        outcome = await sink.ingest(message)
        for event in translation.events:
            if isinstance(event, AppointmentEvent):
                await self._history.remember(event.appointment)
        self._log.info(
            "fhir.ingested",
            source_id=message.source_id,
            outcome=outcome.value,
            events=[e.type for e in translation.events],
            problems=[p.code for p in translation.problems],
        )
        return outcome, translation
