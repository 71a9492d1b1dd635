"""The audit trail on SQLite: an append-only table (a trigger refuses UPDATE)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..interface import AuditEntry
from .engine import Engine
from .tx import WriteTx

_KEYS = ("id", "at", "who", "role", "method", "path", "query", "status", "remote_ip")


class AuditOps:
    async def append_audit(self: Engine, entries: Sequence[AuditEntry]) -> None:
        async def run(tx: WriteTx) -> None:
            await tx.conn.executemany(
                "INSERT INTO audit (at, who, role, method, path, query, status, remote_ip)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                entries,
            )

        await self.write(run)

    async def list_audit(
        self: Engine, *, who: str | None, since: str | None, limit: int, after: int
    ) -> list[dict[str, Any]]:
        where = ["id > ?"]
        params: list[Any] = [after]
        if who is not None:
            where.append("who = ?")
            params.append(who)
        if since is not None:
            where.append("at > ?")
            params.append(since)
        rows = await self.fetchall(
            f"SELECT {', '.join(_KEYS)} FROM audit WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",
            [*params, limit],
        )
        return [dict(zip(_KEYS, r, strict=True)) for r in rows]
