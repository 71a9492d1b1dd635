"""``SyncService``: what the sync endpoints call (upload, download, conflicts)."""

from __future__ import annotations

import logging
from typing import Any

from ..errors import Busy, NotFound, StorageFull
from ..storage import Storage, WriteTx, conflict_out, keyset_page
from . import apply, download
from .envelope import Upload

log = logging.getLogger("healthsync.sync")


class SyncService:
    def __init__(self, db: Storage) -> None:
        self.db = db

    async def upload(self, request: Upload, owner: str | None = None) -> tuple[int, Any]:
        """Apply (or, with ``async``, store) a parsed upload: (status, body).

        The creates' payloads are checked and rendered before the write
        (``apply.prepare``): the write holds the site's one writer lock."""
        ready = None if request.async_ else apply.prepare(request)
        return await self.db.write(lambda tx: apply.upload(tx, request, owner, ready))

    async def download(self, *, device_id: str | None = None, **kw: Any) -> download.Page:
        """A download page; with ``device_id``, remember how far that device has read."""
        page = await download.download(self.db, **kw)
        if device_id is not None:
            try:
                await self.db.write(lambda tx: tx.device_downloaded(device_id, page.cursor))
            except (Busy, StorageFull) as exc:  # bookkeeping only: the page is still the answer
                log.warning("download position of a device not recorded: %s", exc.message)
        return page

    async def devices(self) -> list[dict[str, Any]]:
        return await self.db.read(lambda snap: snap.list_devices())

    async def list_conflicts(
        self, *, device_id: str | None, resolved: bool | None, limit: int | None, after: int
    ) -> tuple[list[dict[str, Any]], int | None]:
        rows = await self.db.read(
            lambda snap: snap.list_conflicts(
                device_id=device_id, resolved=resolved, limit=limit, after=after
            )
        )
        return keyset_page(rows, limit, conflict_out)

    async def get_conflict(self, conflict_id: str) -> dict[str, Any]:
        row = await self.db.read(lambda snap: snap.get_conflict(conflict_id))
        if row is None:
            raise NotFound(f"conflict {conflict_id} not found")
        return conflict_out(row)

    async def resolve_conflict(self, conflict_id: str, resolution: str | None) -> dict[str, Any]:
        """Mark a conflict resolved (idempotent: resolving twice keeps the first)."""

        async def run(tx: WriteTx) -> None:
            await tx.resolve_conflict(conflict_id, resolution)

        await self.get_conflict(conflict_id)
        await self.db.write(run)
        return await self.get_conflict(conflict_id)
