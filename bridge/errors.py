"""The bridge's exceptions: the type answers "retry?", so callers never parse messages.

```
* BridgeError
  x ConfigError                       all problems listed at once; exit RET_CONFIG
  x PluginError                       plugin + distribution named; exit RET_PLUGIN
  x StoreUnavailable                  the database cannot be reached; exit RET_CONNECT
  x ListenerUnavailable               a port cannot be bound (in use, no permission); exit RET_CONNECT
  x MappingError                      permanent: unmappable event -> dead-letter, never retried
  x ConnectorError
    + EHRUnavailable                  transient
    + EHRRejected                     permanent; carries the EHR code (e.g. HL7 ACK AE/AR)
  x SendError(retryable, code, provider_code)
    + ChannelUnavailable              retryable: connect error, timeout, 5xx
    + ChannelThrottled                retryable: 429, Graph throttling codes
      + SendHeld                      held by our own limit (spacing, tier): not an attempt
    + RecipientUnreachable            permanent: undeliverable, opted out
    + ChannelConfigInvalid            permanent, alerts the operator: expired token, wrong id
    + MessageRejected                 permanent: the request itself is wrong (limits, template)
  x NotFound (also LookupError)
* SkipNotification                    control flow, not an error: a middleware drops a notification
```

Messages are built in ``__init__`` from identifiers only (outbox id, connector, code),
never from patient data, so an exception can be logged as it is.
"""

from __future__ import annotations

__all__ = [
    "BridgeError",
    "ChannelConfigInvalid",
    "ChannelThrottled",
    "ChannelUnavailable",
    "ConfigError",
    "ConfigProblem",
    "ConnectorError",
    "EHRRejected",
    "EHRUnavailable",
    "ListenerUnavailable",
    "MappingError",
    "MessageRejected",
    "NotFound",
    "PluginError",
    "RecipientUnreachable",
    "SendError",
    "SendHeld",
    "SkipNotification",
    "StoreUnavailable",
]

from dataclasses import dataclass
from datetime import datetime


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One problem in the configuration: where it is and what to do.

    Attributes:
        source: the file path or ``environment``.
        key: dotted key (``whatsapp.rate_per_second``) or variable name.
        reason: what is wrong and, where possible, the fix.
    """

    source: str
    key: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {self.key}: {self.reason}"


class ConfigError(BridgeError):
    """The configuration cannot be used; every problem is listed at once."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} configuration problem(s):\n{lines}")


class PluginError(BridgeError):
    """A plugin named in config is missing, broken or does not meet its Protocol."""

    def __init__(self, group: str, name: str, reason: str, distribution: str | None = None) -> None:
        self.group, self.name, self.distribution = group, name, distribution
        dist = f" (distribution {distribution})" if distribution else ""
        super().__init__(f"plugin {group}:{name}{dist}: {reason}")


class StoreUnavailable(BridgeError):
    """The database cannot be reached or used; transient from the daemon's point of view."""

    def __init__(self, url_redacted: str, reason: str) -> None:
        self.url_redacted = url_redacted
        super().__init__(f"database {url_redacted} unavailable: {reason}")


class ListenerUnavailable(BridgeError):
    """A listener could not bind its address (port in use, no permission)."""

    def __init__(self, what: str, address: str, reason: str) -> None:
        self.what, self.address = what, address
        super().__init__(f"{what} cannot listen on {address}: {reason}")


class MappingError(BridgeError):
    """An event cannot be turned into a message: permanent, never retried."""

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        super().__init__(f"{where}: {reason}")


class NotFound(BridgeError, LookupError):
    """An id the caller named does not exist."""

    def __init__(self, kind: str, ident: str) -> None:
        self.kind, self.ident = kind, ident
        super().__init__(f"{kind} {ident} not found")


class ConnectorError(BridgeError):
    """An EHR connector could not do what was asked."""

    retryable: bool = False


class EHRUnavailable(ConnectorError):
    """The EHR did not answer (connect error, timeout, no ACK, 5xx): retry later."""

    retryable = True

    def __init__(self, connector: str, reason: str) -> None:
        self.connector = connector
        super().__init__(f"{connector}: EHR unavailable: {reason}")


class EHRRejected(ConnectorError):
    """The EHR refused the change (HL7 AE/AR, FHIR 4xx): do not retry as is.

    Args:
        connector: connector name.
        code: the EHR's code (``AR``, ``AE``, ``409``, ``412``...).
        reason: a short reason without patient data.
        conflict: True for version conflicts (409/412) that deserve a re-read.
    """

    def __init__(self, connector: str, code: str, reason: str, *, conflict: bool = False) -> None:
        self.connector, self.code, self.conflict = connector, code, conflict
        super().__init__(f"{connector}: EHR rejected ({code}): {reason}")


class SendError(BridgeError):
    """A message could not be sent; ``retryable`` says whether the outbox should try again.

    Args:
        code: our short code (``throttled``, ``unavailable``...).
        provider_code: the provider's code (Graph ``error.code``), when there is one.
        retry_after: seconds the provider asked us to wait, when known.
    """

    retryable: bool = False
    alert: bool = False

    def __init__(
        self,
        code: str,
        reason: str,
        *,
        provider_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.code, self.provider_code, self.retry_after = code, provider_code, retry_after
        #: may be set per instance: a template error (132001) alerts though its class doesn't
        tag = f" [{provider_code}]" if provider_code is not None else ""
        super().__init__(f"{code}{tag}: {reason}")


class ChannelUnavailable(SendError):
    """Connect error, timeout, 5xx, or a provider's temporary failure."""

    retryable = True


class ChannelThrottled(SendError):
    """The provider asked us to slow down (429, 130429, 131056...)."""

    retryable = True


class SendHeld(ChannelThrottled):
    """Not sent on purpose: a local limit says "not before ``hold_until``".

    Retryable like any throttling, but nothing reached the provider, so the relay reschedules
    the row for ``hold_until`` without counting an attempt.

    Args:
        limit: which limit held it (``patient_spacing``, ``patient_backoff``, ``tier``,
            ``template_paused``).
        hold_until: the earliest time the send may go.
        now: the current time (for ``retry_after``).
    """

    def __init__(self, limit: str, hold_until: datetime, now: datetime) -> None:
        self.limit = limit
        self.hold_until = hold_until
        super().__init__("held", f"held by the {limit} limit",
                         retry_after=max(0.0, (hold_until - now).total_seconds()))


class RecipientUnreachable(SendError):
    """The patient cannot get this message (not on WhatsApp, opted out, blocked)."""


class ChannelConfigInvalid(SendError):
    """Our credentials or ids are wrong: nothing will work until an operator acts."""

    alert = True


class MessageRejected(SendError):
    """The request itself is wrong (a limit, a template mismatch): fix before resending."""


class SkipNotification(Exception):
    """Raised by a middleware to drop one notification on purpose (consent, quiet hours)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
