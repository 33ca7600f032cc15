"""Polling with ``_lastUpdated`` and ``next`` links from a persisted cursor.

Implements ../shared/reference/fhir.md §2.3: ``GET [base]/Appointment?_lastUpdated=ge<cursor>
&_sort=_lastUpdated&_count=N``, following ``Bundle.link[next]`` verbatim. The cursor is the newest
``meta.lastUpdated`` seen, re-queried with ``ge`` (not ``gt``) so equal timestamps and clock
skew lose nothing; the version seen twice is a duplicate for the store. The cursor advances after
each page is stored, so a crash re-reads at most one page. The lead schedules :meth:`Poller.poll_once`
on APScheduler; the notification endpoint calls it to resync after a gap.
"""

from __future__ import annotations

__all__ = ["CursorStore", "MemoryCursorStore", "Poller"]

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol, runtime_checkable

from structlog.typing import FilteringBoundLogger

from bridge.ports import Clock, EventSink

from ._client import FhirClient
from ._ingest import Ingestor
from ._values import parse_datetime


@runtime_checkable
class CursorStore(Protocol):
    """**Protocol:** named cursors that survive a restart (the lead's store implements it)."""

    async def get(self, name: str) -> str | None:
        """The cursor's value, or None when never set."""
        ...

    async def set(self, name: str, value: str) -> None:
        """Store the cursor's value durably."""
        ...


@dataclass
class MemoryCursorStore:
    """A :class:`CursorStore` in a dict, for tests and single runs."""

    values: dict[str, str] = field(default_factory=dict)

    async def get(self, name: str) -> str | None:
        """Return the value or None."""
        return self.values.get(name)

    async def set(self, name: str, value: str) -> None:
        """Keep the value."""
        self.values[name] = value


class Poller:
    """Incremental search for changed resources of a few types.

    Args:
        client: the FHIR client.
        ingestor: translation and storage of each resource.
        cursors: where the cursors live.
        types: resource types to poll.
        page_size: ``_count``.
        lookback: where the first poll starts when there is no cursor.
        clock: the clock port.
        log: structlog logger (ids only).
    """

    def __init__(
        self,
        client: FhirClient,
        ingestor: Ingestor,
        cursors: CursorStore,
        *,
        types: Sequence[str],
        page_size: int,
        lookback: timedelta,
        clock: Clock,
        log: FilteringBoundLogger,
    ) -> None:
        self._client = client
        self._ingestor = ingestor
        self._cursors = cursors
        self._types = tuple(types)
        self._page_size = page_size
        self._lookback = lookback
        self._clock = clock
        self._log = log
        # one poll at a time: a resync requested during a poll waits for it
        self._lock = asyncio.Lock()

    def cursor_name(self, resource_type: str) -> str:
        """``fhir:<base url>:<Type>``."""
        return f"fhir:{self._client.base_url}:{resource_type}"

    async def poll_once(self, sink: EventSink) -> int:
        """Poll every configured type once; return how many resources were handed to the sink.

        Raises:
            bridge.errors.EHRUnavailable: the server failed; the cursor keeps its last page.
            bridge.errors.StoreUnavailable: the sink failed; the cursor keeps its last page.
        """
        async with self._lock:
            total = 0
            for resource_type in self._types:
                total += await self._poll_type(resource_type, sink)
            return total

    async def _poll_type(self, resource_type: str, sink: EventSink) -> int:
        name = self.cursor_name(resource_type)
        since = await self._cursors.get(name)
        if since is None:
            since = (self._clock.now() - self._lookback).isoformat()
        newest, newest_at = since, parse_datetime(since, None)
        params = [
            ("_lastUpdated", f"ge{since}"),
            ("_sort", "_lastUpdated"),
            ("_count", str(self._page_size)),
        ]
        count = 0
        async for page in self._client.search_pages(resource_type, params):
            for entry in page.get("entry", []) or []:
                resource = entry.get("resource") if isinstance(entry, Mapping) else None
                # search mode include / OperationOutcome entries are not ours to ingest
                if (
                    not isinstance(resource, Mapping)
                    or resource.get("resourceType") != resource_type
                ):
                    continue
                await self._ingestor.ingest(resource, sink)
                count += 1
                meta = resource.get("meta")
                stamp = meta.get("lastUpdated") if isinstance(meta, Mapping) else None
                when = parse_datetime(stamp, None)
                if (
                    isinstance(stamp, str)
                    and when is not None
                    and (newest_at is None or when > newest_at)
                ):
                    newest, newest_at = stamp, when
            await self._cursors.set(name, newest)
        self._log.info("fhir.polled", type=resource_type, resources=count, cursor=newest)
        return count
