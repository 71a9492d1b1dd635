"""Handlers for batches: the seed's "Trigger Sync Batch" and batch status."""

from __future__ import annotations

from ..auth import Permission
from ..errors import Invalid
from .base import BaseHandler

STATUSES = ("pending", "processing", "done", "failed")


class TriggerHandler(BaseHandler):
    permissions = {"POST": Permission.SYNC}

    async def post(self, batch_id: str) -> None:
        assert self.principal is not None
        task_id = await self.ctx.batches.trigger(self.path_id(batch_id, "batch_id"), self.principal)
        self.write_json({"status": "task started", "task_id": task_id}, 202)


class BatchHandler(BaseHandler):
    async def get(self, batch_id: str) -> None:
        self.write_json(await self.ctx.batches.get(self.path_id(batch_id, "batch_id")))


class BatchListHandler(BaseHandler):
    async def get(self) -> None:
        status = self.arg("status")
        if status is not None and status not in STATUSES:
            raise Invalid(
                f"status must be one of {', '.join(STATUSES)}",
                [{"field": "status", "message": f"{status[:40]!r} is not a batch status"}],
            )
        items, next_after = await self.ctx.batches.list(
            device_id=self.arg("device_id"),
            status=status,
            limit=self.limit_arg(),
            after=self.after_arg(),
        )
        self.set_link_next(next_after)
        self.write_json(items)
