"""``BatchService``: trigger, status and listing of stored sync batches."""

from __future__ import annotations

from typing import Any

from huey import SqliteHuey

from settings import Settings

from .auth import OPEN, Principal, require_device
from .errors import NotFound
from .storage import Database, queries
from .tasks import claim, make_huey


class BatchService:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._huey: SqliteHuey | None = None

    @property
    def huey(self) -> SqliteHuey:
        """The Huey queue, opened on first use (its file lives in the data dir)."""
        if self._huey is None:
            self._huey = make_huey(self.settings)
        return self._huey

    async def trigger(self, batch_id: str, principal: Principal = OPEN) -> str:
        """Claim the batch and enqueue its task; the Huey task id.

        A device token may trigger only its own device's batches.
        """
        if principal.is_device:
            require_device(principal, (await self.get(batch_id))["device_id"])
        return await claim(self.db, self.huey, batch_id)

    async def get(self, batch_id: str) -> dict[str, Any]:
        batch = await self.db.read(lambda conn: queries.get_batch(conn, batch_id))
        if batch is None:
            raise NotFound(f"batch {batch_id} not found")
        return batch

    async def list(
        self, *, device_id: str | None, status: str | None, limit: int | None, after: int
    ) -> tuple[list[dict[str, Any]], int | None]:
        rows = await self.db.read(
            lambda conn: queries.list_batches(conn, device_id=device_id, status=status, limit=limit, after=after)
        )
        return queries.keyset_page(rows, limit, queries.batch_out)
