"""``SyncService``: what the sync endpoints call (upload, download, conflicts)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..errors import Busy, NotFound, StorageFull
from ..storage import Database, DatabaseClosed, WriteTx, mutations, queries
from . import apply, download
from .envelope import Upload

log = logging.getLogger("healthsync.sync")


class SyncService:
    #: A batch's ``temp_ids`` rows are written once the writer has rested
    #: this long (or after ``INDEX_AT_MOST`` seconds), so that uploads coming
    #: one after another do not queue behind them.
    INDEX_QUIET = 1.0
    INDEX_AT_MOST = 10.0

    def __init__(self, db: Database) -> None:
        self.db = db
        # batch id -> (device id, its temp_ids rows), answered but not yet written
        self._put_off: dict[str, tuple[str, apply.TempIdRows]] = {}
        self._indexing: set[asyncio.Task[None]] = set()
        self._hurry = asyncio.Event()

    async def upload(self, request: Upload, owner: str | None = None) -> tuple[int, Any]:
        """Apply (or, with ``async``, store) a parsed upload: (status, body).

        The batch's new ``temp_ids`` rows (about an eighth of a 10,000-create
        upload) are written after it has answered (``apply.upload``): in a
        pause between writes, or by this device's next upload that looks up
        temp ids, whichever comes first (the other then finds them written).
        """
        device_id = request.device_id
        first = [(batch_id, rows) for batch_id, (device, rows) in self._put_off.items() if device == device_id]
        status, body, put_off = await self.db.write(lambda tx: apply.upload(tx, request, owner, first))
        if put_off is not None:
            self._put_off_rows(device_id, put_off)
        return status, body

    def _put_off_rows(self, device_id: str, put_off: apply.PutOff) -> None:
        batch_id, rows = put_off
        self._put_off[batch_id] = (device_id, rows)
        task = asyncio.create_task(self._index(batch_id), name=f"temp-ids-{batch_id}")
        self._indexing.add(task)
        task.add_done_callback(self._indexing.discard)

    async def _index(self, batch_id: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.INDEX_AT_MOST
        while not self._hurry.is_set():
            wait = min(self.INDEX_QUIET - self.db.idle_for(), deadline - loop.time())
            if wait <= 0:
                break
            try:
                await asyncio.wait_for(self._hurry.wait(), wait)
            except TimeoutError:
                pass
        rows = self._put_off[batch_id][1]
        try:
            await self.db.write(lambda tx: mutations.index_temp_ids(tx, batch_id, rows))
        except DatabaseClosed:
            pass  # the batch stays marked: its device's next upload catches up from the response
        except Exception:
            log.warning("temp ids of batch %s not written yet; the device's next upload catches up",
                        batch_id, exc_info=True)
        finally:
            del self._put_off[batch_id]

    async def settle(self) -> None:
        """Write the temp ids of every answered upload now, without waiting for a pause."""
        self._hurry.set()
        try:
            while self._indexing:
                await asyncio.gather(*self._indexing)
        finally:
            self._hurry.clear()

    async def download(self, *, device_id: str | None = None, **kw: Any) -> download.Page:
        """A download page; with ``device_id``, remember how far that device has read."""
        page = await download.download(self.db, **kw)
        if device_id is not None:
            try:
                await self.db.write(lambda tx: mutations.device_downloaded(tx, device_id, page.cursor))
            except (Busy, StorageFull) as exc:  # bookkeeping only: the page is still the answer
                log.warning("download position of a device not recorded: %s", exc.message)
        return page

    async def devices(self) -> list[dict[str, Any]]:
        return await self.db.read(queries.list_devices)

    async def list_conflicts(
        self, *, device_id: str | None, resolved: bool | None, limit: int | None, after: int
    ) -> tuple[list[dict[str, Any]], int | None]:
        rows = await self.db.read(
            lambda conn: queries.list_conflicts(
                conn, device_id=device_id, resolved=resolved, limit=limit, after=after
            )
        )
        return queries.keyset_page(rows, limit, queries.conflict_out)

    async def get_conflict(self, conflict_id: str) -> dict[str, Any]:
        row = await self.db.read(lambda conn: queries.get_conflict(conn, conflict_id))
        if row is None:
            raise NotFound(f"conflict {conflict_id} not found")
        return queries.conflict_out(row)

    async def resolve_conflict(self, conflict_id: str, resolution: str | None) -> dict[str, Any]:
        """Mark a conflict resolved (idempotent: resolving twice keeps the first)."""

        async def run(tx: WriteTx) -> None:
            await mutations.resolve_conflict(tx, conflict_id, resolution)

        await self.get_conflict(conflict_id)
        await self.db.write(run)
        return await self.get_conflict(conflict_id)
