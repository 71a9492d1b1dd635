"""Handlers for the seed's sync section: upload, download, and conflicts."""

from __future__ import annotations

from ..auth import Permission, require_device
from ..errors import Invalid
from ..gcpause import gc_paused
from ..sync.envelope import parse_upload
from .base import BaseHandler


class UploadHandler(BaseHandler):
    permissions = {"POST": Permission.SYNC}

    async def post(self) -> None:
        # An upload of 10,000 changes builds a few hundred thousand objects that
        # all live until the response is written: 15–45 ms of collections a batch.
        with gc_paused():
            # in a call of its own, so that its objects are freed before the collector is back
            await self._upload()

    async def _upload(self) -> None:
        request = parse_upload(self.json_body(), self.ctx.settings.max_batch_changes)
        assert self.principal is not None
        require_device(self.principal, request.device_id)
        status, body = await self.ctx.sync.upload(request, owner=self.owner)
        self.ctx.metrics.inc("healthsync_upload_changes_total", len(request.changes))
        self.write_json(body, status)


class DownloadHandler(BaseHandler):
    async def get(self) -> None:
        limit = self.limit_arg() or self.ctx.settings.page_limit_default
        page = await self.ctx.sync.download(
            since=self.arg("since"),
            cursor=self.arg("cursor"),
            limit=limit,
            resource_type=self.arg("resource_type"),
            patient=self.uuid_arg("patient"),
            device_id=self.device_arg(),
        )
        self.ctx.metrics.inc("healthsync_download_entries_total", len(page.entries))
        self.write_json(page.body())


class DeviceListHandler(BaseHandler):
    permissions = {"GET": Permission.OBSERVE}

    async def get(self) -> None:
        self.write_json(await self.ctx.sync.devices())


class ConflictListHandler(BaseHandler):
    async def get(self) -> None:
        resolved = None if self.arg("resolved") is None else self.bool_arg("resolved")
        items, next_after = await self.ctx.sync.list_conflicts(
            device_id=self.arg("device_id"),
            resolved=resolved,
            limit=self.limit_arg(),
            after=self.after_arg(),
        )
        self.set_link_next(next_after)
        self.write_json(items)


async def _resolve(handler: BaseHandler, conflict_id: str) -> None:
    """Mark a conflict resolved from ``{"resolved": true, "resolution": "…"}``."""
    cid = handler.path_id(conflict_id)
    body = handler.json_body()
    if not isinstance(body, dict) or body.get("resolved") is not True:
        raise Invalid(
            'send {"resolved": true} (optionally with a "resolution" note) to resolve a conflict',
            [{"field": "resolved", "message": "must be true"}],
        )
    resolution = body.get("resolution")
    if resolution is not None and (not isinstance(resolution, str) or len(resolution) > 2000):
        raise Invalid("resolution must be a string of at most 2000 characters",
                      [{"field": "resolution", "message": "must be a short string"}])
    unknown = set(body) - {"resolved", "resolution"}
    if unknown:
        raise Invalid(f"unknown fields: {', '.join(sorted(unknown))}",
                      [{"field": k, "message": "unknown field"} for k in sorted(unknown)])
    handler.write_json(await handler.ctx.sync.resolve_conflict(cid, resolution))


class ConflictHandler(BaseHandler):
    """``/api/conflicts/{id}/``: GET, and PATCH to resolve (any other method: 405 with ``Allow``)."""

    permissions = {"GET": Permission.READ, "PATCH": Permission.RESOLVE}

    async def get(self, conflict_id: str) -> None:
        self.write_json(await self.ctx.sync.get_conflict(self.path_id(conflict_id)))

    async def patch(self, conflict_id: str) -> None:
        await _resolve(self, conflict_id)


class ConflictResolveHandler(BaseHandler):
    """``/api/conflicts/{id}/resolve/``: POST only, the same as PATCH on the conflict."""

    permissions = {"POST": Permission.RESOLVE}

    async def post(self, conflict_id: str) -> None:
        await _resolve(self, conflict_id)
