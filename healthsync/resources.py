"""Patients and health records: the REST service behind ``/api/patients/`` and
``/api/records/``.

Each public coroutine takes parsed JSON (``dict``) and plain values, validates
with the models, and makes at most one call to ``Storage.write``.  Checks
that depend on stored state (``If-Match``, the record's patient existing) run
inside that write's transaction, so they cannot race another writer.
A PUT or PATCH that leaves an item as it is writes nothing: the stored row
comes back unchanged (same ``server_version``, ``updated_at`` and ETag), no
``seq`` is spent, so no device downloads it and no ``base_version`` goes
stale.  ``If-Match`` is still checked first.
Results are API representations ready for JSON.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from .errors import Invalid, NotFound, PreconditionFailed
from .models import READ_ONLY_KEYS, PatientIn, RecordIn, parse_model
from .storage import Row, Snapshot, Storage, WriteTx, keyset_page, patient_out, record_out
from .sync.rules import if_match_allows, merge_patch, same_json

Page = tuple[list[dict[str, Any]], int | None]


def _dump(value: Any) -> str:
    return orjson.dumps(value).decode()


def _patient_fields(model: PatientIn) -> tuple[str, str | None, str, str | None]:
    return (
        model.name,
        model.dob,
        _dump(model.identifiers),
        None if model.fhir is None else _dump(model.fhir),
    )


def _same_patient(row: Row, name: str, dob: str | None, identifiers: str, fhir: str | None) -> bool:
    return (
        row[2] == name
        and row[3] == dob
        and same_json(row[4], identifiers)
        and same_json(row[5], fhir)
    )


def _same_record(row: Row, patient: str, resource_type: str, data: str) -> bool:
    return row[1] == patient and row[2] == resource_type and same_json(row[3], data)


async def _update_patient(tx: WriteTx, current: Row, model: PatientIn) -> Row:
    """``current`` with ``model``'s values written, or as it is if they are its own."""
    fields = _patient_fields(model)
    if _same_patient(current, *fields):
        return current
    return await tx.update_patient(current, *fields)


async def _update_record(tx: WriteTx, current: Row, model: RecordIn) -> Row:
    data = _dump(model.data)
    if _same_record(current, model.patient, model.resource_type, data):
        return current
    return await tx.update_record(current, model.patient, model.resource_type, data)


def _patient_writable(row: Row) -> dict[str, Any]:
    return {
        "name": row[2],
        "dob": row[3],
        "identifiers": orjson.loads(row[4]),
        "fhir": None if row[5] is None else orjson.loads(row[5]),
    }


def _record_writable(row: Row) -> dict[str, Any]:
    return {"patient": row[1], "resource_type": row[2], "data": orjson.loads(row[3])}


def _check_version(if_match: str | None, version: int) -> None:
    if not if_match_allows(if_match, version):
        raise PreconditionFailed(
            f"If-Match {if_match} does not match the current version W/\"{version}\"",
            [{"field": "If-Match", "message": f"current version is {version}"}],
        )


async def _live_patient(tx: WriteTx, patient_id: str, field: str | None = None) -> Row:
    """The patient row, or NotFound (or Invalid naming ``field``) when absent or deleted."""
    row = await tx.fetch_patient(patient_id)
    if row is None or row[8]:
        if field is None:
            raise NotFound(f"patient {patient_id} not found")
        what = "does not exist" if row is None else "is deleted"
        raise Invalid(
            f"{field} {patient_id} {what}",
            [{"field": field, "message": f"patient {patient_id} {what}"}],
        )
    return row


async def _live_record(tx: WriteTx, record_id: str) -> Row:
    row = await tx.fetch_record(record_id)
    if row is None or row[6]:
        raise NotFound(f"record {record_id} not found")
    return row


class Resources:
    """The patient and record service over one ``Storage``."""

    def __init__(self, db: Storage) -> None:
        self.db = db

    # Patients ---------------------------------------------------------------

    async def list_patients(self, *, include_deleted: bool, limit: int | None, after: int) -> Page:
        async def run(snap: Snapshot) -> list[Row]:
            return await snap.list_patients(include_deleted=include_deleted, limit=limit, after=after)

        return keyset_page(await self.db.read(run), limit, patient_out)

    async def get_patient(self, patient_id: str, *, include_deleted: bool = False) -> dict[str, Any]:
        row = await self.db.read(lambda snap: snap.get_patient(patient_id))
        if row is None or (row[8] and not include_deleted):
            raise NotFound(f"patient {patient_id} not found")
        return patient_out(row)

    async def create_patient(self, body: Any, owner: str | None = None) -> dict[str, Any]:
        model = parse_model(PatientIn, body, "patient")

        async def run(tx: WriteTx) -> Row:
            return await tx.insert_patient(str(uuid.uuid4()), owner, *_patient_fields(model))

        return patient_out(await self.db.write(run))

    async def replace_patient(self, patient_id: str, body: Any, if_match: str | None) -> dict[str, Any]:
        model = parse_model(PatientIn, body, "patient")

        async def run(tx: WriteTx) -> Row:
            current = await _live_patient(tx, patient_id)
            _check_version(if_match, current[6])
            return await _update_patient(tx, current, model)

        return patient_out(await self.db.write(run))

    async def patch_patient(self, patient_id: str, body: Any, if_match: str | None) -> dict[str, Any]:
        patch = _patch_body(body, "patient")

        async def run(tx: WriteTx) -> Row:
            current = await _live_patient(tx, patient_id)
            _check_version(if_match, current[6])
            model = parse_model(PatientIn, merge_patch(_patient_writable(current), patch), "patient")
            return await _update_patient(tx, current, model)

        return patient_out(await self.db.write(run))

    async def delete_patient(self, patient_id: str, if_match: str | None) -> None:
        async def run(tx: WriteTx) -> None:
            current = await _live_patient(tx, patient_id)
            _check_version(if_match, current[6])
            await tx.tombstone_patient(current)

        await self.db.write(run)

    # Records ----------------------------------------------------------------

    async def list_records(
        self,
        *,
        include_deleted: bool,
        limit: int | None,
        after: int,
        patient: str | None,
        resource_type: str | None,
    ) -> Page:
        async def run(snap: Snapshot) -> list[Row]:
            return await snap.list_records(
                include_deleted=include_deleted,
                limit=limit,
                after=after,
                patient=patient,
                resource_type=resource_type,
            )

        return keyset_page(await self.db.read(run), limit, record_out)

    async def get_record(self, record_id: str, *, include_deleted: bool = False) -> dict[str, Any]:
        row = await self.db.read(lambda snap: snap.get_record(record_id))
        if row is None or (row[6] and not include_deleted):
            raise NotFound(f"record {record_id} not found")
        return record_out(row)

    async def create_record(self, body: Any) -> dict[str, Any]:
        model = parse_model(RecordIn, body, "record")

        async def run(tx: WriteTx) -> Row:
            await _live_patient(tx, model.patient, field="patient")
            return await tx.insert_record(
                str(uuid.uuid4()), model.patient, model.resource_type, _dump(model.data)
            )

        return record_out(await self.db.write(run))

    async def replace_record(self, record_id: str, body: Any, if_match: str | None) -> dict[str, Any]:
        model = parse_model(RecordIn, body, "record")

        async def run(tx: WriteTx) -> Row:
            current = await _live_record(tx, record_id)
            _check_version(if_match, current[4])
            await _live_patient(tx, model.patient, field="patient")
            return await _update_record(tx, current, model)

        return record_out(await self.db.write(run))

    async def patch_record(self, record_id: str, body: Any, if_match: str | None) -> dict[str, Any]:
        patch = _patch_body(body, "record")

        async def run(tx: WriteTx) -> Row:
            current = await _live_record(tx, record_id)
            _check_version(if_match, current[4])
            model = parse_model(RecordIn, merge_patch(_record_writable(current), patch), "record")
            if model.patient != current[1]:
                await _live_patient(tx, model.patient, field="patient")
            return await _update_record(tx, current, model)

        return record_out(await self.db.write(run))

    async def delete_record(self, record_id: str, if_match: str | None) -> None:
        async def run(tx: WriteTx) -> None:
            current = await _live_record(tx, record_id)
            _check_version(if_match, current[4])
            await tx.tombstone_records([(current[0], current[4])])

        await self.db.write(run)


def _patch_body(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise Invalid(f"{what} patch must be a JSON object", [{"field": "body", "message": "expected a JSON object"}])
    return {k: v for k, v in body.items() if k not in READ_ONLY_KEYS}
