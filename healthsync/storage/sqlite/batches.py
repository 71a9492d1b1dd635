"""The batch state machine on SQLite: every statement about ``batches`` rows
outside an upload's own write (which stores them through ``WriteTx.insert_batch``).

pending -> processing (a claim: ``task_id``, ``claimed_at``, attempts + 1)
-> done | failed, and failed -> processing again.  ``apply_claimed_batch``
re-checks the claim inside the transaction that applies, so a batch is
applied once whichever task runs it, however often.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from ..interface import ApplyStored, Claim, claimable
from ..rows import batch_out, keyset_page
from .engine import Engine
from .tx import WriteTx


class BatchOps:
    async def store_batch(self: Engine, batch_id: str, device_id: str, request: str, change_count: int) -> None:
        await self.write(
            lambda tx: tx.insert_batch(batch_id, device_id, "pending", change_count, request=request)
        )

    async def get_batch(self: Engine, batch_id: str) -> dict[str, Any] | None:
        return await self.read(lambda snap: snap.get_batch(batch_id))

    async def list_batches(
        self: Engine, *, device_id: str | None, status: str | None, limit: int | None, after: int
    ) -> tuple[list[dict[str, Any]], int | None]:
        rows = await self.read(
            lambda snap: snap.list_batches(device_id=device_id, status=status, limit=limit, after=after)
        )
        return keyset_page(rows, limit, batch_out)

    async def claim_batch(self: Engine, batch_id: str, task_id: str) -> str:
        async def run(tx: WriteTx) -> str:
            device_id = claimable(batch_id, await tx.fetch_batch(batch_id))
            await tx.conn.execute(
                "UPDATE batches SET status = 'processing', task_id = ?, claimed_at = ?, error = NULL,"
                " worker = NULL, heartbeat_at = NULL, attempts = attempts + 1, updated_at = ? WHERE id = ?",
                (task_id, tx.now(), tx.now(), batch_id),
            )
            return str(device_id)

        return await self.write(run)

    async def release_batch(self: Engine, batch_id: str, task_id: str) -> bool:
        async def run(tx: WriteTx) -> bool:
            cur = await tx.conn.execute(
                "UPDATE batches SET status = 'pending', task_id = NULL, claimed_at = NULL,"
                " attempts = attempts - 1, updated_at = ? WHERE id = ? AND status = 'processing' AND task_id = ?",
                (tx.now(), batch_id, task_id),
            )
            return cur.rowcount == 1

        return await self.write(run)

    async def record_batch_worker(self: Engine, batch_id: str, task_id: str, worker: str) -> bool:
        async def run(tx: WriteTx) -> bool:
            cur = await tx.conn.execute(
                "UPDATE batches SET worker = ?, heartbeat_at = ?"
                " WHERE id = ? AND status = 'processing' AND task_id = ?",
                (worker, tx.now(), batch_id, task_id),
            )
            return cur.rowcount == 1

        return await self.write(run)

    async def heartbeat_batches(self: Engine, worker: str) -> int:
        async def run(tx: WriteTx) -> int:
            cur = await tx.conn.execute(
                "UPDATE batches SET heartbeat_at = ? WHERE worker = ? AND status = 'processing'",
                (tx.now(), worker),
            )
            return cur.rowcount

        return await self.write(run)

    async def apply_claimed_batch(self: Engine, batch_id: str, task_id: str, apply: ApplyStored) -> bool:
        async def run(tx: WriteTx) -> bool:
            row = await (
                await tx.conn.execute("SELECT status, task_id, request FROM batches WHERE id = ?", (batch_id,))
            ).fetchone()
            if row is None or row[0] != "processing" or row[1] != task_id:
                return False
            response = await apply(tx, row[2])
            await tx.conn.execute(
                "UPDATE batches SET status = 'done', response = ?, error = NULL, finished_at = ?, updated_at = ?"
                " WHERE id = ?",
                (orjson.dumps(response).decode(), tx.now(), tx.now(), batch_id),
            )
            return True

        return await self.write(run)

    async def fail_batch(self: Engine, batch_id: str, task_id: str, error: str) -> bool:
        async def run(tx: WriteTx) -> bool:
            cur = await tx.conn.execute(
                "UPDATE batches SET status = 'failed', error = ?, finished_at = ?, updated_at = ?"
                " WHERE id = ? AND status = 'processing' AND task_id = ?",
                (error[:2000], tx.now(), tx.now(), batch_id, task_id),
            )
            return cur.rowcount == 1

        return await self.write(run)

    async def reclaim_batches(self: Engine, pick: Callable[[Claim], str | None]) -> list[tuple[Claim, str]]:
        async def run(tx: WriteTx) -> list[tuple[Claim, str]]:
            rows = await tx.conn.execute_fetchall(
                "SELECT id, task_id, claimed_at, worker, heartbeat_at FROM batches WHERE status = 'processing'"
            )
            moved: list[tuple[Claim, str]] = []
            for row in rows:
                claim = Claim(*row)
                task_id = pick(claim)
                if task_id is None:
                    continue
                await tx.conn.execute(
                    "UPDATE batches SET task_id = ?, claimed_at = ?, worker = NULL, heartbeat_at = NULL,"
                    " attempts = attempts + 1, updated_at = ? WHERE id = ?",
                    (task_id, tx.now(), tx.now(), claim.batch_id),
                )
                moved.append((claim, task_id))
            return moved

        return await self.write(run)

    async def purge_batches(self: Engine, before: str) -> int:
        async def run(tx: WriteTx) -> int:
            cur = await tx.conn.execute("DELETE FROM batches WHERE status = 'done' AND finished_at < ?", (before,))
            return cur.rowcount

        return await self.write(run)

    async def batch_events_since(self: Engine, updated_at: str) -> list[tuple[str, str, str, str]]:
        rows = await self.read(lambda snap: snap.batch_events_since(updated_at))
        return [(r[0], r[1], r[2], r[3]) for r in rows]
