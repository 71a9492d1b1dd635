"""Tokens on SQLite: stored by hash, revoked by name, never deleted."""

from __future__ import annotations

from typing import Any

from ...errors import Conflict
from .engine import Engine
from .tx import WriteTx


class TokenOps:
    async def create_token(self: Engine, name: str, role: str, token_hash: str) -> None:
        async def run(tx: WriteTx) -> None:
            cur = await tx.conn.execute("SELECT 1 FROM tokens WHERE name = ? AND revoked_at IS NULL", (name,))
            if await cur.fetchone():
                raise Conflict(f"a live token named {name!r} exists: revoke it first")
            await tx.conn.execute(
                "INSERT INTO tokens (name, role, hash, created_at) VALUES (?, ?, ?, ?)",
                (name, role, token_hash, tx.now()),
            )

        await self.write(run)

    async def revoke_token(self: Engine, name: str) -> int:
        async def run(tx: WriteTx) -> int:
            cur = await tx.conn.execute(
                "UPDATE tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (tx.now(), name)
            )
            return cur.rowcount

        return await self.write(run)

    async def list_tokens(self: Engine) -> list[dict[str, Any]]:
        rows = await self.fetchall("SELECT name, role, created_at, revoked_at FROM tokens ORDER BY created_at")
        return [{"name": r[0], "role": r[1], "created_at": r[2], "revoked_at": r[3]} for r in rows]

    async def find_token(self: Engine, token_hash: str) -> tuple[str, str] | None:
        rows = await self.fetchall("SELECT name, role FROM tokens WHERE hash = ? AND revoked_at IS NULL", (token_hash,))
        return (rows[0][0], rows[0][1]) if rows else None
