"""Apply one upload batch, whole, inside one ``Storage.write`` transaction.

``envelope.parse_upload`` has checked the envelope and every change's
routing, refusing a malformed batch whole before anything is written.
``apply_upload`` then runs inside the write: it loads every row the batch
touches in a few bulk statements, decides each change in memory
(validation, temp-id routing, conflicts), and writes the outcome with
``executemany``.  One bad change is ``rejected`` without sinking the
others; because every decision is made before the rows are written, there
is nothing to undo per change.  Whatever fails below that (the disk, a bug)
rolls the whole batch back: a batch is all there or absent.

An ``update`` that leaves its item as it is (the merge patch changes
nothing) answers ``updated`` with the item's unchanged version and writes
nothing: no ``seq`` is spent on it, so no device downloads it again and no
other device's ``base_version`` goes stale.

What no row can change is worked out before the write's lock when the
caller can: ``prepare`` checks each create's payload and renders it as the
text it is stored as, so the transaction (which holds the one writer lock of
the site) only routes, stamps and writes it.

The same code serves synchronous uploads and the Huey task (``tasks.py``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from .. import clock
from ..errors import Conflict
from ..fhir import record_type_error
from ..models import (
    MAX_JSON_DEPTH,
    READ_ONLY_KEYS,
    ROUTING_KEYS,
    PatientCheck,
    PatientIn,
    PatientValues,
    new_id_problem,
    patient_values,
    too_deep,
    validation_details,
)
from ..storage import PatientRow, RecordRow, WriteTx, patient_out, record_out
from .envelope import ChangeFields, Upload, change_dump
from .rules import conflict_reason, encode_cursor, merge_patch, same_json


class _Rejected(Exception):
    """A change that cannot apply; its message goes to the device."""


def _model_error(exc: ValidationError) -> str:
    return "; ".join(f"{d['field']}: {d['message']}" for d in validation_details(exc))


def _validate(model: type[BaseModel], value: dict[str, Any]) -> Any:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise _Rejected(_model_error(exc)) from None


def _dump(value: Any) -> str:
    return orjson.dumps(value).decode()


def _patient_values(check: PatientCheck, payload: dict[str, Any]) -> PatientValues:
    """A patient payload's values: ``PatientCheck``'s verdict when it is
    sure, else ``PatientIn``'s, which rejects with its errors."""
    checked = check.one(payload)
    if checked is None:
        checked = patient_values(_validate(PatientIn, payload))
    return checked


def _chosen_id(ch: ChangeFields) -> str | None:
    """The id a create names for its new item, None to let the server make one.

    ``server_id`` (checked as an envelope field: a canonical UUID).  A
    patient payload's ``id`` says the same, and is honoured rather than
    dropped: alone it is the id (a bad one rejects the change), beside a
    different ``server_id`` it is a contradiction.  A record payload's ``id``
    is part of its ``data`` (a FHIR resource's own id), as before.
    """
    server_id = ch.get("server_id")
    if ch["resource_type"] != "Patient":
        return server_id
    payload_id = ch["payload"].get("id")
    if payload_id is None:
        return server_id
    if server_id is None:
        problem = new_id_problem(payload_id)
        if problem:
            raise _Rejected(f"payload.id: the new patient's id {problem}")
        return str(payload_id)
    if payload_id != server_id:
        raise _Rejected(f"payload.id {str(payload_id)[:64]!r} differs from server_id {server_id}: send one id")
    return server_id


def _kind(row: PatientRow | RecordRow) -> str:
    return "Patient" if isinstance(row, PatientRow) else row.resource_type


def _record_data(payload: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any]:
    """A record's data: the payload less its routing keys, merged into ``base`` if given."""
    patch = {k: v for k, v in payload.items() if k not in ROUTING_KEYS}
    data = patch if base is None else merge_patch(base, patch)
    if too_deep(data):
        raise _Rejected(f"payload is nested deeper than {MAX_JSON_DEPTH} levels")
    return data


#: A create worked out ahead (``prepare``): a patient's (name, dob, identifiers
#: text, fhir text), a record's data text, or the rejection of its payload.
Ready = tuple[str, str | None, str, str | None] | str | _Rejected


def _ready(check: PatientCheck, ch: ChangeFields) -> Ready | None:
    if ch["operation"] != "create":
        return None
    try:
        if ch["resource_type"] == "Patient":
            name, dob, identifiers, fhir = _patient_values(check, ch["payload"])
            return name, dob, _dump(identifiers), None if fhir is None else _dump(fhir)
        return _dump(_record_data(ch["payload"], None))
    except _Rejected as exc:
        return exc


def prepare(request: Upload) -> list[Ready | None]:
    """Each create's payload checked and rendered as stored text (or its
    rejection), None for the other changes: what ``apply_upload`` would work
    out for them, done before the write so the writer lock is held shorter.
    Nothing here depends on a stored row."""
    check = PatientCheck(clock.today_utc())
    return [_ready(check, ch) for ch in request.changes]


# Byte maps that set the version (4) and RFC 4122 variant bits of a UUID's bytes 6 and 8.
_UUID_VERSION = bytes((b & 0x0F) | 0x40 for b in range(256))
_UUID_VARIANT = bytes((b & 0x3F) | 0x80 for b in range(256))


def _new_ids(n: int) -> list[str]:
    """``n`` random (version 4) UUIDs as text, from one draw of entropy for the
    whole batch, formatted directly (``uuid.UUID`` costs more than the write)."""
    pool = bytearray(os.urandom(16 * n))
    pool[6::16] = pool[6::16].translate(_UUID_VERSION)
    pool[8::16] = pool[8::16].translate(_UUID_VARIANT)
    h = pool.hex()
    return [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-{h[i + 12:i + 16]}-{h[i + 16:i + 20]}-{h[i + 20:i + 32]}"
            for i in range(0, 32 * n, 32)]


class _Apply:
    """The working state of one batch inside its write transaction."""

    def __init__(self, tx: WriteTx, device_id: str, batch_id: str, owner: str | None) -> None:
        self.tx = tx
        self.device_id = device_id
        self.batch_id = batch_id
        self.owner = owner
        self.patients: dict[str, PatientRow] = {}
        self.records: dict[str, RecordRow] = {}
        self.new_ids: set[str] = set()
        self.new_patients: list[PatientRow] = []  # rows to insert, in creation order
        self.new_records: list[RecordRow] = []
        self.created_at = tx.now()
        self.check = PatientCheck(clock.today_utc())
        self.dirty_patients: dict[str, None] = {}  # insertion-ordered sets
        self.dirty_records: dict[str, None] = {}
        self.records_of: dict[str, set[str]] = {}
        self.temp: dict[str, tuple[str, str]] = {}
        self.new_temp: list[tuple[str, str, str, str]] = []  # temp_ids rows, as the tuples tx.insert_temp_ids takes
        self.conflict_rows: list[tuple[Any, ...]] = []
        self.conflicts: list[dict[str, Any]] = []
        self._ids: Iterator[str] = iter(())  # one id per create: drawn in preload

    # Loading -----------------------------------------------------------------

    async def preload(self, changes: Iterable[ChangeFields]) -> None:
        temp_ids: set[str] = set()
        patient_ids: set[str] = set()
        record_ids: set[str] = set()
        deleted_patients: set[str] = set()
        creates = 0
        for ch in changes:
            temp_id, server_id = ch.get("client_temp_id"), ch.get("server_id")
            if temp_id is not None:
                temp_ids.add(temp_id)
            if ch["operation"] == "create":
                creates += 1
                # an id the device made: loaded from both tables, as it must be new to both
                chosen = server_id
                if chosen is None and ch["resource_type"] == "Patient":
                    chosen = ch["payload"].get("id")
                if isinstance(chosen, str):
                    patient_ids.add(chosen)
                    record_ids.add(chosen)
            if ch["resource_type"] == "Patient":
                if server_id is not None:
                    patient_ids.add(server_id)
                    if ch["operation"] == "delete":
                        deleted_patients.add(server_id)
            else:
                if server_id is not None:
                    record_ids.add(server_id)
                pid, ptemp = ch["payload"].get("patient_id"), ch["payload"].get("patient_temp_id")
                if isinstance(pid, str):
                    patient_ids.add(pid)
                if isinstance(ptemp, str):
                    temp_ids.add(ptemp)
        self._ids = iter(_new_ids(creates))
        self.temp = await self.tx.load_temp_ids(self.device_id, temp_ids)
        for server_id, kind in self.temp.values():
            (patient_ids if kind == "Patient" else record_ids).add(server_id)
        self.patients = await self.tx.load_patients(patient_ids)
        for row in (await self.tx.load_records(record_ids)).values():
            self._add_record(row)
        for row in await self.tx.load_live_records_of(deleted_patients):
            if row.id not in self.records:
                self._add_record(row)

    def _add_record(self, row: RecordRow) -> None:
        self.records[row.id] = row
        self.records_of.setdefault(row.patient, set()).add(row.id)

    # Stamping ----------------------------------------------------------------

    def _touch_patient(self, row: PatientRow) -> None:
        row.seq, row.updated_at = self.tx.stamp()
        row.version += 1
        self.dirty_patients[row.id] = None

    def _touch_record(self, row: RecordRow) -> None:
        row.seq, row.updated_at = self.tx.stamp()
        row.version += 1
        self.dirty_records[row.id] = None

    # Deciding ------------------------------------------------------------------

    def apply(self, ch: ChangeFields, ready: Ready | None = None) -> dict[str, Any]:
        """One change's result; ``ready``: its create worked out ahead (``prepare``)."""
        try:
            if ch["operation"] == "create":
                return self._create(ch, ready)
            return self._update_or_delete(ch)
        except _Rejected as exc:
            out: dict[str, Any] = {}
            temp_id, server_id = ch.get("client_temp_id"), ch.get("server_id")
            if temp_id is not None:
                out["client_temp_id"] = temp_id
            if server_id is not None:
                out["server_id"] = server_id
            out["status"] = "rejected"
            out["error"] = str(exc)
            return out

    def _check_type(self, resource_type: str) -> None:
        if resource_type != "Patient":
            problem = record_type_error(resource_type)
            if problem:
                raise _Rejected(f"resource_type: {problem}")

    def _create(self, ch: ChangeFields, ready: Ready | None) -> dict[str, Any]:
        temp_id = ch.get("client_temp_id")
        assert temp_id is not None
        resource_type = ch["resource_type"]
        self._check_type(resource_type)
        chosen = _chosen_id(ch)
        known = self.temp.get(temp_id)
        if known is not None:  # a retried create: same answer, nothing new
            server_id, kind = known
            if chosen is not None and chosen != server_id:
                raise _Rejected(
                    f"client_temp_id {temp_id[:64]!r} already created {server_id} for this device, not {chosen}"
                )
            found = self.patients.get(server_id) if kind == "Patient" else self.records.get(server_id)
            version = found.version if found else None
            return {"client_temp_id": temp_id, "status": "created", "server_id": server_id, "server_version": version}
        if chosen is None:
            new_id = next(self._ids)
        else:
            existing: PatientRow | RecordRow | None = self.patients.get(chosen) or self.records.get(chosen)
            if existing is not None:
                if existing.created_by_device == self.device_id and _kind(existing) == resource_type:
                    # This device made this item with this id already (a retry under
                    # another client_temp_id): the same answer, and the temp id learnt.
                    self.temp[temp_id] = (chosen, resource_type)
                    self.new_temp.append((self.device_id, temp_id, chosen, resource_type))
                    return {"client_temp_id": temp_id, "status": "created", "server_id": chosen,
                            "server_version": existing.version}
                state = ", deleted" if existing.deleted else ""
                raise _Rejected(f"server_id {chosen} is already the id of another item ({_kind(existing)}{state})")
            new_id = chosen
        if resource_type == "Patient":
            texts = _ready(self.check, ch) if ready is None else ready
            if isinstance(texts, _Rejected):
                raise texts
            assert isinstance(texts, tuple)
            name, dob, ident_text, fhir_text = texts
            seq, stamp = self.tx.stamp()
            patient_row = PatientRow(new_id, self.owner, name, dob, ident_text, fhir_text, 1, stamp, 0, seq,
                                     self.created_at, self.device_id, temp_id)
            self.patients[new_id] = patient_row
            self.new_patients.append(patient_row)
        else:
            patient = self._route(ch["payload"])
            if patient is None:
                raise _Rejected("payload needs patient_id (a server id) or patient_temp_id")
            text = _ready(self.check, ch) if ready is None else ready
            if isinstance(text, _Rejected):
                raise text
            assert isinstance(text, str)
            seq, stamp = self.tx.stamp()
            record_row = RecordRow(new_id, patient, resource_type, text, 1, stamp, 0, seq, self.created_at,
                                   self.device_id, temp_id)
            self.records[new_id] = record_row
            self.records_of.setdefault(patient, set()).add(new_id)
            self.new_records.append(record_row)
        version = 1
        self.new_ids.add(new_id)
        self.temp[temp_id] = (new_id, resource_type)
        self.new_temp.append((self.device_id, temp_id, new_id, resource_type))
        return {"client_temp_id": temp_id, "status": "created", "server_id": new_id, "server_version": version}

    def _patient(self, payload: dict[str, Any]) -> PatientValues:
        return _patient_values(self.check, payload)

    def _route(self, payload: dict[str, Any]) -> str | None:
        """The live patient a record payload names, None if it names none."""
        pid = payload.get("patient_id")
        ptemp = payload.get("patient_temp_id")
        if pid is None and ptemp is None:
            return None
        if pid is not None:
            if not isinstance(pid, str):
                raise _Rejected("patient_id must be a string")
            where = f"patient_id {pid[:64]}"
        else:
            if not isinstance(ptemp, str):
                raise _Rejected("patient_temp_id must be a string")
            known = self.temp.get(ptemp)
            if known is None or known[1] != "Patient":
                raise _Rejected(f"patient_temp_id {ptemp[:64]!r} names no patient this device created")
            pid = known[0]
            where = f"patient_temp_id {ptemp[:64]!r}"
        row = self.patients.get(pid)
        if row is None:
            raise _Rejected(f"{where} does not exist")
        if row.deleted:
            raise _Rejected(f"{where} is deleted")
        return pid

    def _data(self, payload: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any]:
        return _record_data(payload, base)

    def _update_or_delete(self, ch: ChangeFields) -> dict[str, Any]:
        server_id = ch.get("server_id")
        assert server_id is not None
        resource_type, operation = ch["resource_type"], ch["operation"]
        self._check_type(resource_type)
        is_patient = resource_type == "Patient"
        row: PatientRow | RecordRow | None
        if is_patient:
            row = self.patients.get(server_id)
        else:
            row = self.records.get(server_id)
            if row is not None and row.resource_type != resource_type:
                raise _Rejected(f"server_id {server_id} is a {row.resource_type}, not a {resource_type}")
        if row is None:
            return {"server_id": server_id, "status": "not_found"}
        if operation == "delete" and row.deleted:
            return {"server_id": server_id, "status": "deleted", "server_version": row.version}
        client_us = None
        client_updated_at = ch.get("client_updated_at")
        if client_updated_at is not None:
            try:
                client_us = clock.parse(client_updated_at)
            except ValueError as exc:
                raise _Rejected(f"client_updated_at: {exc}") from None
        reason = conflict_reason(
            operation,
            base_version=ch.get("base_version"),
            client_updated_us=client_us,
            server_version=row.version,
            # only read when it decides anything: a parse per change is not free
            server_updated_us=clock.parse(row.updated_at) if client_us is not None else 0,
            server_deleted=bool(row.deleted),
        )
        if reason is not None:
            return self._conflict(ch, row, reason)
        if operation == "delete":
            if isinstance(row, PatientRow):
                self._delete_patient(row)
            else:
                row.deleted = 1
                self._touch_record(row)
            return {"server_id": server_id, "status": "deleted", "server_version": row.version}
        if isinstance(row, PatientRow):
            self._update_patient(row, ch["payload"])
        else:
            self._update_record(row, ch["payload"])
        return {"server_id": server_id, "status": "updated", "server_version": row.version}

    def _update_patient(self, row: PatientRow, payload: dict[str, Any]) -> None:
        patch = payload  # merge_patch copies what it keeps: the payload is only read
        if not READ_ONLY_KEYS.isdisjoint(payload):  # keys a client echoed back: ignored
            patch = {k: v for k, v in payload.items() if k not in READ_ONLY_KEYS}
        if "identifiers" in patch or "fhir" in patch or not self._update_patient_fields(row, patch):
            self._update_patient_document(row, patch)

    def _update_patient_fields(self, row: PatientRow, patch: dict[str, Any]) -> bool:
        """Apply a patch that leaves ``identifiers`` and ``fhir`` alone, the
        common update (a rename, a corrected date of birth): their stored
        texts stay as they are, neither parsed nor written out again (they
        were checked when stored, and a patch that does not name them cannot
        change them).  False, having changed nothing, when ``PatientCheck``
        is not sure of the result: the whole document then goes through
        ``_update_patient_document``, which words the errors."""
        merged = merge_patch({"name": row.name, "dob": row.dob}, patch)
        checked = self.check.one(merged)
        if checked is None:
            return False
        name, dob = checked[0], checked[1]
        if name != row.name or dob != row.dob:
            row.name, row.dob = name, dob
            self._touch_patient(row)
        return True  # else nothing changes: the row keeps its version and seq

    def _update_patient_document(self, row: PatientRow, patch: dict[str, Any]) -> None:
        current = {
            "name": row.name,
            "dob": row.dob,
            "identifiers": orjson.loads(row.identifiers),
            "fhir": None if row.fhir is None else orjson.loads(row.fhir),
        }
        merged = merge_patch(current, patch)
        name, dob, identifiers, fhir = self._patient(merged)
        ident_text = _dump(identifiers)
        fhir_text = None if fhir is None else _dump(fhir)
        if (
            name == row.name
            and dob == row.dob
            and same_json(row.identifiers, ident_text, current["identifiers"], identifiers)
            and same_json(row.fhir, fhir_text, current["fhir"], fhir)
        ):
            return  # nothing changes: the row keeps its version and seq
        row.name, row.dob = name, dob
        row.identifiers = ident_text
        row.fhir = fhir_text
        self._touch_patient(row)

    def _update_record(self, row: RecordRow, payload: dict[str, Any]) -> None:
        patient = self._route(payload)
        base = orjson.loads(row.data)
        data = self._data(payload, base)  # a new dict: ``base`` is left as stored
        text = _dump(data)
        moved_to = patient if patient is not None and patient != row.patient else None
        if moved_to is None and same_json(row.data, text, base, data):
            return  # nothing changes: the row keeps its version and seq
        if moved_to is not None:
            self.records_of.get(row.patient, set()).discard(row.id)
            self.records_of.setdefault(moved_to, set()).add(row.id)
            row.patient = moved_to
        row.data = text
        self._touch_record(row)

    def _delete_patient(self, row: PatientRow) -> None:
        row.deleted = 1
        self._touch_patient(row)
        for record_id in sorted(self.records_of.get(row.id, ()), key=lambda r: self.records[r].updated_at or ""):
            record = self.records[record_id]
            if not record.deleted:
                record.deleted = 1
                self._touch_record(record)

    def _conflict(self, ch: ChangeFields, row: PatientRow | RecordRow, reason: str) -> dict[str, Any]:
        server_id = row.id
        copy = patient_out(row.stored()) if isinstance(row, PatientRow) else record_out(row.stored())
        conflict_id = str(uuid.uuid4())
        self.conflict_rows.append(
            (conflict_id, self.batch_id, self.device_id, server_id, ch["resource_type"], reason,
             _dump(change_dump(ch)), _dump(copy), self.tx.now())
        )
        self.conflicts.append({"server_id": server_id, "reason": reason})
        return {
            "server_id": server_id,
            "status": "conflict",
            "reason": reason,
            "conflict_id": conflict_id,
            "server_version": copy["server_version"],
            "server_copy": copy,
        }

    # Writing -------------------------------------------------------------------

    async def flush(self) -> None:
        # A row created here is inserted as it ends up (a record may be
        # tombstoned later in the batch), never also updated.
        old_p = [self.patients[i] for i in self.dirty_patients if i not in self.new_ids]
        old_r = [self.records[i] for i in self.dirty_records if i not in self.new_ids]
        await self.tx.write_patients(self.new_patients, old_p)
        await self.tx.write_records(self.new_records, old_r)
        await self.tx.insert_temp_ids(self.new_temp)
        await self.tx.insert_conflicts(self.conflict_rows)


async def apply_upload(
    tx: WriteTx, request: Upload, batch_id: str, owner: str | None = None, ready: list[Ready | None] | None = None
) -> dict[str, Any]:
    """Apply ``request``'s changes inside ``tx``; return the upload response.
    ``ready``: ``prepare(request)``, if the caller made it before the write.

    The caller has checked that ``batch_id`` is not applied yet.  The new
    items' ``temp_ids`` rows are written in the same transaction, so a
    retried create finds its item whenever the batch is there.
    """
    work = _Apply(tx, request.device_id, batch_id, owner)
    await work.preload(request.changes)
    if ready is None:
        results = [work.apply(ch) for ch in request.changes]
    else:
        results = [work.apply(ch, r) for ch, r in zip(request.changes, ready, strict=True)]
    await work.flush()
    tx.emit({"type": "applied", "changes": len(results), "conflicts": len(work.conflicts)})
    return {
        "batch_id": batch_id,
        "results": results,
        "conflicts": work.conflicts,
        "server_time": clock.format_us(tx.last_us),
        "cursor": encode_cursor(tx.seq),
    }


def _accepted(batch_id: str, status: str, error: str | None = None) -> dict[str, Any]:
    """The 202 body of a stored batch not done yet: ``{"batch_id", "status"}`` (and ``error``)."""
    body: dict[str, Any] = {"batch_id": batch_id, "status": status}
    if error is not None:
        body["error"] = error
    return body


async def upload(
    tx: WriteTx, request: Upload, owner: str | None = None, ready: list[Ready | None] | None = None
) -> tuple[int, Any]:
    """A synchronous upload inside ``tx``: (status, response body); ``ready`` as
    ``apply_upload`` takes it.

    A ``batch_id`` already stored is a retry: it applies and stores nothing
    and gets the batch's answer, whatever its ``async``: once ``done`` the
    stored response (200), before that (``pending``, ``processing``,
    ``failed``) 202 with the batch's current ``status`` (and ``error``), the
    body an async upload answers.  Another device's ``batch_id`` is a 409.
    """
    batch_id = request.batch_id or str(uuid.uuid4())
    await tx.device_uploaded(request.device_id)
    if request.batch_id is not None:
        existing = await tx.fetch_batch(batch_id)
        if existing is not None:
            _, device_id, status, response, error, _claimed, _attempts = existing
            if device_id != request.device_id:
                raise Conflict(
                    f"batch {batch_id} belongs to another device",
                    [{"field": "batch_id", "message": "already used by another device"}],
                )
            if status == "done" and response is not None:
                return 200, orjson.Fragment(response)
            return 202, _accepted(batch_id, status, error)
    if request.async_:
        body = request.stored_request(batch_id)
        await tx.insert_batch(
            batch_id, request.device_id, "pending", len(request.changes), request=_dump(body)
        )
        return 202, _accepted(batch_id, "pending")
    response = await apply_upload(tx, request, batch_id, owner, ready)
    text = _dump(response)
    await tx.insert_batch(batch_id, request.device_id, "done", len(request.changes), response=text)
    return 200, orjson.Fragment(text)
