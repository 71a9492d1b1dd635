"""The audit trail: who read or changed patient data, when, what, from where.

One row per API request (``/api/health`` aside): time, token name and role,
method, path, query, status and remote address.  The handlers record the
query through ``redact.redact_query``: a credential's value (``token`` by any
spelling, ``access_token``, ``authorization``…) is stored as ``REDACTED``,
for refused requests as for accepted ones.  Rows are buffered and written together once a second, or at 500,
through storage's ``append_audit`` (never one write per request); ``flush`` runs on
shutdown.  A crash can lose at most the last second of read entries.  The
trail is append-only (storage refuses changes); the API only lists it, for admins.  When the
database refuses the write (busy, disk full) the rows stay buffered, up to
``KEEP_ROWS``, and are written a second later: reads served meanwhile are
still audited.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from . import clock
from .errors import HealthSyncError
from .storage import AuditEntry, Storage

log = logging.getLogger("healthsync.audit")

FLUSH_SECONDS = 1.0
FLUSH_ROWS = 500
KEEP_ROWS = 100_000  # buffered while the database refuses writes (about 30 MB)

Entry = AuditEntry


class AuditTrail:
    def __init__(self, db: Storage) -> None:
        self.db = db
        self._buffer: list[Entry] = []
        self._task: asyncio.Task[None] | None = None
        self._refused = False  # the last write was refused: wait for the timer, not the row count

    def record(
        self,
        *,
        who: str | None,
        role: str | None,
        method: str,
        path: str,
        query: str | None,
        status: int,
        remote_ip: str | None,
    ) -> None:
        self._buffer.append(
            (clock.format_us(clock.now_us()), who, role, method[:32], path[:2000], (query or None) and query[:2000],
             status, remote_ip)
        )
        if len(self._buffer) >= FLUSH_ROWS and not self._refused:
            asyncio.ensure_future(self.flush())
        elif self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._later())

    async def _later(self) -> None:
        await asyncio.sleep(FLUSH_SECONDS)
        await self.flush()

    async def flush(self) -> None:
        rows, self._buffer = self._buffer, []
        if not rows or self.db.closed:
            return

        try:
            await self.db.append_audit(rows)
            self._refused = False
        except HealthSyncError as exc:  # busy or disk full: keep them for the next try
            self._refused = True
            self._buffer[:0] = rows
            dropped = len(self._buffer) - KEEP_ROWS
            if dropped > 0:
                del self._buffer[:dropped]
                log.error("dropped the %d oldest audit entries: the database refused them too long", dropped)
            log.warning("%d audit entries kept for later: %s", len(self._buffer), exc.message)
            if self._task is None or self._task.done() or self._task is asyncio.current_task():
                self._task = asyncio.ensure_future(self._later())
        except Exception:
            log.exception("could not write %d audit entries", len(rows))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.flush()
        if self._task is not None:  # a refused last flush has no later
            self._task.cancel()

    async def list(
        self, *, who: str | None, since: str | None, limit: int, after: int
    ) -> tuple[list[dict[str, Any]], int | None]:
        await self.flush()  # what was just done is visible at once
        rows = await self.db.list_audit(who=who, since=since, limit=limit + 1, after=after)
        next_after = rows[limit - 1]["id"] if len(rows) > limit else None
        return rows[:limit], next_after
