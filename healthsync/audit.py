"""The audit trail: who read or changed patient data, when, what, from where.

One row per API request (``/api/health`` aside): time, token name and role,
method, path, query, status and remote address.  The handlers record the
query through ``redact.redact_query``: a credential's value (``token`` by any
spelling, ``access_token``, ``authorization``…) is stored as ``REDACTED``,
for refused requests as for accepted ones.  Rows are buffered and written together once a second, or at 500,
through ``Database.write`` (never one write per request); ``flush`` runs on
shutdown.  A crash can lose at most the last second of read entries.  The
table refuses UPDATE (a trigger); the API only lists it, for admins.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from . import clock
from .storage import Database, WriteTx

log = logging.getLogger("healthsync.audit")

FLUSH_SECONDS = 1.0
FLUSH_ROWS = 500

Entry = tuple[str, str | None, str | None, str, str, str | None, int, str | None]


class AuditTrail:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._buffer: list[Entry] = []
        self._task: asyncio.Task[None] | None = None

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
        if len(self._buffer) >= FLUSH_ROWS:
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

        async def run(tx: WriteTx) -> None:
            await tx.conn.executemany(
                "INSERT INTO audit (at, who, role, method, path, query, status, remote_ip)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

        try:
            await self.db.write(run)
        except Exception:
            log.exception("could not write %d audit entries", len(rows))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.flush()

    async def list(
        self, *, who: str | None, since: str | None, limit: int, after: int
    ) -> tuple[list[dict[str, Any]], int | None]:
        await self.flush()  # what was just done is visible at once
        where = ["id > ?"]
        params: list[Any] = [after]
        if who is not None:
            where.append("who = ?")
            params.append(who)
        if since is not None:
            where.append("at > ?")
            params.append(since)
        rows = await self.db.fetchall(
            "SELECT id, at, who, role, method, path, query, status, remote_ip FROM audit"
            f" WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",
            [*params, limit + 1],
        )
        next_after = rows[limit - 1][0] if len(rows) > limit else None
        keys = ("id", "at", "who", "role", "method", "path", "query", "status", "remote_ip")
        return [dict(zip(keys, r, strict=True)) for r in rows[:limit]], next_after
