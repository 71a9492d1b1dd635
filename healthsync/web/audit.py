"""``GET /api/audit/``: the audit trail, for admins; append-only (no other method)."""

from __future__ import annotations

from .. import clock
from ..auth import Permission
from ..errors import Invalid
from .base import BaseHandler


class AuditHandler(BaseHandler):
    permissions = {"GET": Permission.ADMIN}

    async def get(self) -> None:
        since = self.arg("since")
        if since is not None:
            try:
                since = clock.canonical(since)
            except ValueError as exc:
                raise Invalid("since is not an ISO 8601 timestamp", [{"field": "since", "message": str(exc)}]) from None
        limit = self.limit_arg() or 1000
        items, next_after = await self.ctx.audit.list(
            who=self.arg("who"), since=since, limit=limit, after=self.after_arg()
        )
        self.set_link_next(next_after)
        self.write_json(items)
