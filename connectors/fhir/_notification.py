"""R4 Backport IG subscription notifications: read the status resource of a notification Bundle.

Implements ../shared/reference/fhir.md §2.1. An R4 notification is a ``history`` Bundle whose
first entry is a ``Parameters`` (backport-subscription-status-r4); R4B servers send a
``SubscriptionStatus`` instead (camelCase elements). Reference servers use kebab-case parameter
names; camelCase is accepted too. Trimmed example::

    {"resourceType": "Bundle", "type": "history", "entry": [{"resource": {
        "resourceType": "Parameters", "parameter": [
          {"name": "subscription", "valueReference": {"reference": "https://ehr/fhir/Subscription/a"}},
          {"name": "topic", "valueCanonical": "http://hl7.org/SubscriptionTopic/admission"},
          {"name": "status", "valueCode": "active"},
          {"name": "type", "valueCode": "event-notification"},
          {"name": "events-since-subscription-start", "valueString": "2"},
          {"name": "notification-event", "part": [
            {"name": "event-number", "valueString": "2"},
            {"name": "focus", "valueReference": {"reference": "https://ehr/fhir/Encounter/86"}}]}]}}]}
"""

from __future__ import annotations

__all__ = [
    "NOTIFICATION_TYPES",
    "NotificationEvent",
    "NotificationStatus",
    "is_notification_bundle",
    "parse_status",
]

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: ``type`` codes of the backport status resource.
NOTIFICATION_TYPES = frozenset(
    {"handshake", "heartbeat", "event-notification", "query-status", "query-event"}
)

_STATUS_PROFILE = "backport-subscription-status"


@dataclass(frozen=True, kw_only=True, slots=True)
class NotificationEvent:
    """One ``notification-event``: its number and focus reference (as sent), when present."""

    number: int | None = None
    focus: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class NotificationStatus:
    """What a notification says about its subscription.

    Attributes:
        type: handshake, heartbeat, event-notification, query-status or query-event ('' when
            missing).
        subscription: the Subscription reference as sent.
        topic: the topic canonical URL.
        status: the subscription's status (requested, active, error, off).
        events_since_start: the server's event counter, None when absent or unreadable.
        events: the notification events.
        errors: subscription-error codes.
    """

    type: str
    subscription: str | None = None
    topic: str | None = None
    status: str | None = None
    events_since_start: int | None = None
    events: tuple[NotificationEvent, ...] = ()
    errors: tuple[str, ...] = ()

    @property
    def subscription_id(self) -> str | None:
        """The last path segment of the Subscription reference (its logical id)."""
        if not self.subscription:
            return None
        return self.subscription.rstrip("/").rsplit("/", 1)[-1] or None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _reference(value: Any) -> str | None:
    if isinstance(value, Mapping) and isinstance(value.get("reference"), str):
        return str(value["reference"])
    return None


def _codes(concept: Any) -> list[str]:
    if not isinstance(concept, Mapping):
        return []
    return [
        str(c["code"])
        for c in concept.get("coding", [])
        if isinstance(c, Mapping) and isinstance(c.get("code"), str)
    ]


def _from_parameters(resource: Mapping[str, Any]) -> NotificationStatus:
    values: dict[str, Any] = {}
    events: list[NotificationEvent] = []
    errors: list[str] = []
    for param in resource.get("parameter", []):
        if not isinstance(param, Mapping):
            continue
        name = str(param.get("name", ""))
        if name == "subscription":
            values["subscription"] = _reference(param.get("valueReference"))
        elif name == "topic":
            values["topic"] = param.get("valueCanonical") or param.get("valueUri")
        elif name == "status":
            values["status"] = param.get("valueCode")
        elif name == "type":
            values["type"] = param.get("valueCode")
        elif name in ("events-since-subscription-start", "eventsSinceSubscriptionStart"):
            values["events_since_start"] = _int(
                param.get("valueString", param.get("valueInteger64", param.get("valueInteger")))
            )
        elif name in ("notification-event", "notificationEvent"):
            number: int | None = None
            focus: str | None = None
            for part in param.get("part", []):
                if not isinstance(part, Mapping):
                    continue
                part_name = part.get("name")
                if part_name in ("event-number", "eventNumber"):
                    number = _int(part.get("valueString", part.get("valueInteger")))
                elif part_name == "focus":
                    focus = _reference(part.get("valueReference"))
            events.append(NotificationEvent(number=number, focus=focus))
        elif name == "error":
            errors.extend(_codes(param.get("valueCodeableConcept")))
    return NotificationStatus(
        type=str(values.get("type") or ""),
        subscription=values.get("subscription"),
        topic=values.get("topic") if isinstance(values.get("topic"), str) else None,
        status=values.get("status") if isinstance(values.get("status"), str) else None,
        events_since_start=values.get("events_since_start"),
        events=tuple(events),
        errors=tuple(errors),
    )


def _from_subscription_status(resource: Mapping[str, Any]) -> NotificationStatus:
    events = tuple(
        NotificationEvent(number=_int(e.get("eventNumber")), focus=_reference(e.get("focus")))
        for e in resource.get("notificationEvent", [])
        if isinstance(e, Mapping)
    )
    errors = [code for concept in resource.get("error", []) for code in _codes(concept)]
    topic = resource.get("topic")
    status = resource.get("status")
    return NotificationStatus(
        type=str(resource.get("type") or ""),
        subscription=_reference(resource.get("subscription")),
        topic=topic if isinstance(topic, str) else None,
        status=status if isinstance(status, str) else None,
        events_since_start=_int(resource.get("eventsSinceSubscriptionStart")),
        events=events,
        errors=tuple(errors),
    )


def parse_status(resource: Mapping[str, Any]) -> NotificationStatus | None:
    """Read a backport status resource (R4 Parameters or R4B SubscriptionStatus); None if not one."""
    rtype = resource.get("resourceType")
    if rtype == "SubscriptionStatus":
        return _from_subscription_status(resource)
    if rtype != "Parameters":
        return None
    meta = resource.get("meta")
    profiles = meta.get("profile", []) if isinstance(meta, Mapping) else []
    names = {p.get("name") for p in resource.get("parameter", []) if isinstance(p, Mapping)}
    is_status = any(_STATUS_PROFILE in str(p) for p in profiles) or (
        "subscription" in names and "type" in names
    )
    return _from_parameters(resource) if is_status else None


def is_notification_bundle(bundle: Mapping[str, Any]) -> NotificationStatus | None:
    """Return the status when ``bundle`` is a subscription notification, else None.

    R4/R4B backport notifications are ``history`` Bundles; R5 servers say
    ``subscription-notification``. Either way the first entry holds the status resource.
    """
    if bundle.get("type") not in ("history", "subscription-notification"):
        return None
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], Mapping):
        return None
    first = entries[0].get("resource")
    if not isinstance(first, Mapping):
        return None
    return parse_status(first)
