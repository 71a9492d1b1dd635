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

A create may name the new item's ``id`` (a UUID the client made, in its
canonical lower-case form), as a sync ``create`` may name its
``server_id``.  An id already used by another item (patient or record,
deleted or not) is a ``Conflict`` naming it, except a retry: the same body
again, while the item is as that body made it, answers the item as it is
(``created`` false: HTTP 200 instead of 201) and writes nothing.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from .errors import Conflict, Invalid, NotFound, PreconditionFailed
from .models import READ_ONLY_KEYS, PatientIn, RecordIn, new_id_problem, parse_model
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


def _chosen_id(model: PatientIn | RecordIn, what: str) -> str | None:
    """The ``id`` a create body names (None: the server makes one), or ``Invalid``."""
    if model.id is None:
        return None
    problem = new_id_problem(model.id)
    if problem:
        raise Invalid(f"invalid {what}: id", [{"field": "id", "message": f"the new {what}'s id {problem}"}])
    return str(model.id)


def _used(item_id: str, what: str) -> Conflict:
    return Conflict(f"id {item_id} is already used by {what}", [{"field": "id", "message": f"already used by {what}"}])


async def _other_item(tx: WriteTx, item_id: str, own_kind: str) -> None:
    """``Conflict`` when ``item_id`` is the id of an item of the other kind."""
    if own_kind == "patient":
        row = await tx.fetch_record(item_id)
        kind, deleted = "record", row is not None and row[6]
    else:
        row = await tx.fetch_patient(item_id)
        kind, deleted = "patient", row is not None and row[8]
    if row is not None:
        raise _used(item_id, f"a deleted {kind}" if deleted else f"a {kind}")


#: A create's answer: the item, and whether it was created now (False: a retry found it).
Created = tuple[dict[str, Any], bool]


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
        return (await self.create_patient_or_find(body, owner))[0]

    async def create_patient_or_find(self, body: Any, owner: str | None = None) -> Created:
        """Create a patient (with the body's ``id`` if it names one); a retry
        of that create finds it (see the module's docstring)."""
        model = parse_model(PatientIn, body, "patient")
        chosen = _chosen_id(model, "patient")
        fields = _patient_fields(model)

        async def run(tx: WriteTx) -> tuple[Row, bool]:
            if chosen is None:
                return await tx.insert_patient(str(uuid.uuid4()), owner, *fields), True
            current = await tx.fetch_patient(chosen)
            if current is not None:
                if not current[8] and _same_patient(current, *fields):
                    return current, False
                raise _used(chosen, "a deleted patient" if current[8] else "a patient with other values")
            await _other_item(tx, chosen, "patient")
            return await tx.insert_patient(chosen, owner, *fields), True

        row, created = await self.db.write(run)
        return patient_out(row), created

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
        return (await self.create_record_or_find(body))[0]

    async def create_record_or_find(self, body: Any) -> Created:
        """Create a record (with the body's ``id`` if it names one); a retry
        of that create finds it (see the module's docstring)."""
        model = parse_model(RecordIn, body, "record")
        chosen = _chosen_id(model, "record")
        data = _dump(model.data)

        async def run(tx: WriteTx) -> tuple[Row, bool]:
            if chosen is not None:
                current = await tx.fetch_record(chosen)
                if current is not None:
                    if not current[6] and _same_record(current, model.patient, model.resource_type, data):
                        return current, False
                    raise _used(chosen, "a deleted record" if current[6] else "a record with other values")
                await _other_item(tx, chosen, "record")
            await _live_patient(tx, model.patient, field="patient")
            return await tx.insert_record(chosen or str(uuid.uuid4()), model.patient, model.resource_type, data), True

        row, created = await self.db.write(run)
        return record_out(row), created

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
