"""Handlers for ``/api/patients/`` and ``/api/records/`` (the seed's sections 1–2)."""

from __future__ import annotations

from typing import Any

from ..errors import Invalid
from ..fhir import record_type_error
from ..sync.rules import weak_etag
from .base import BaseHandler


class _ItemHandler(BaseHandler):
    def write_item(self, item: dict[str, Any], status: int = 200) -> None:
        self.set_header("ETag", weak_etag(item["server_version"]))
        if self.request.method == "GET" and self.check_etag_header():
            self.set_status(304)
            self.finish()
            return
        self.write_json(item, status)

    def if_match(self) -> str | None:
        return self.request.headers.get("If-Match")

    def page_args(self) -> tuple[bool, int | None, int]:
        include_deleted = self.bool_arg("include_deleted")
        limit = self.limit_arg()
        after = self.after_arg()
        return include_deleted, limit, after


class PatientListHandler(_ItemHandler):
    async def get(self) -> None:
        include_deleted, limit, after = self.page_args()
        items, next_after = await self.ctx.resources.list_patients(
            include_deleted=include_deleted, limit=limit, after=after
        )
        self.set_link_next(next_after)
        self.write_json(items)

    async def post(self) -> None:
        item, created = await self.ctx.resources.create_patient_or_find(self.json_body(), owner=self.owner)
        self.set_header("Location", f"/api/patients/{item['id']}/")
        self.write_item(item, 201 if created else 200)


class PatientHandler(_ItemHandler):
    async def get(self, patient_id: str) -> None:
        pid = self.path_id(patient_id)
        self.write_item(
            await self.ctx.resources.get_patient(pid, include_deleted=self.bool_arg("include_deleted"))
        )

    async def put(self, patient_id: str) -> None:
        pid = self.path_id(patient_id)
        self.write_item(await self.ctx.resources.replace_patient(pid, self.json_body(), self.if_match()))

    async def patch(self, patient_id: str) -> None:
        pid = self.path_id(patient_id)
        self.write_item(await self.ctx.resources.patch_patient(pid, self.json_body(), self.if_match()))

    async def delete(self, patient_id: str) -> None:
        pid = self.path_id(patient_id)
        await self.ctx.resources.delete_patient(pid, self.if_match())
        self.set_status(204)
        self.clear_header("Content-Type")
        self.finish()


class RecordListHandler(_ItemHandler):
    async def get(self) -> None:
        include_deleted, limit, after = self.page_args()
        resource_type = self.arg("resource_type")
        if resource_type is not None and record_type_error(resource_type):
            raise Invalid(
                "resource_type is not a FHIR R4 record type",
                [{"field": "resource_type", "message": record_type_error(resource_type)}],
            )
        items, next_after = await self.ctx.resources.list_records(
            include_deleted=include_deleted,
            limit=limit,
            after=after,
            patient=self.uuid_arg("patient"),
            resource_type=resource_type,
        )
        self.set_link_next(next_after)
        self.write_json(items)

    async def post(self) -> None:
        item, created = await self.ctx.resources.create_record_or_find(self.json_body())
        self.set_header("Location", f"/api/records/{item['id']}/")
        self.write_item(item, 201 if created else 200)


class RecordHandler(_ItemHandler):
    async def get(self, record_id: str) -> None:
        rid = self.path_id(record_id)
        self.write_item(
            await self.ctx.resources.get_record(rid, include_deleted=self.bool_arg("include_deleted"))
        )

    async def put(self, record_id: str) -> None:
        rid = self.path_id(record_id)
        self.write_item(await self.ctx.resources.replace_record(rid, self.json_body(), self.if_match()))

    async def patch(self, record_id: str) -> None:
        rid = self.path_id(record_id)
        self.write_item(await self.ctx.resources.patch_record(rid, self.json_body(), self.if_match()))

    async def delete(self, record_id: str) -> None:
        rid = self.path_id(record_id)
        await self.ctx.resources.delete_record(rid, self.if_match())
        self.set_status(204)
        self.clear_header("Content-Type")
        self.finish()
