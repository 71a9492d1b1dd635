"""Reads on SQLite: every SELECT the API needs, parameterized, in one snapshot.

Each function takes the ``Snapshot`` that ``Database.read`` hands out first,
so ``snapshot.Snapshot`` carries them as its methods (``snap.get_patient(id)``),
the read operations of ``storage.interface.Snapshot``.  Rows come back as
plain tuples in the column orders of ``storage.rows``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import aiosqlite

from ..rows import ChangeRow, PushRow, Row, batch_out, device_out


class Snapshot(Protocol):
    """What these functions use of ``snapshot.Snapshot`` (declared here, so that
    module, which carries them, is the only one of the two importing the other)."""

    def execute(self, sql: str, parameters: Any = ...) -> aiosqlite.context.Result[aiosqlite.Cursor]: ...

    async def execute_fetchall(self, sql: str, parameters: Any = ...) -> Iterable[Any]: ...

PATIENT_COLS = "id, owner, name, dob, identifiers, fhir, server_version, updated_at, deleted"
RECORD_COLS = "id, patient, resource_type, data, server_version, updated_at, deleted"

async def get_patient(conn: Snapshot, patient_id: str) -> Row | None:
    cur = await conn.execute(f"SELECT {PATIENT_COLS} FROM patients WHERE id = ?", (patient_id,))
    row = await cur.fetchone()
    return None if row is None else tuple(row)


async def get_record(conn: Snapshot, record_id: str) -> Row | None:
    cur = await conn.execute(f"SELECT {RECORD_COLS} FROM records WHERE id = ?", (record_id,))
    row = await cur.fetchone()
    return None if row is None else tuple(row)


async def list_patients(
    conn: Snapshot, *, include_deleted: bool, limit: int | None, after: int
) -> list[Row]:
    """Patients in creation order (rowid), after the keyset ``after``.

    Each row is the patient's columns followed by its rowid (the page key).
    """
    where = ["rowid > ?"]
    params: list[Any] = [after]
    if not include_deleted:
        where.append("deleted = 0")
    sql = f"SELECT {PATIENT_COLS}, rowid FROM patients WHERE {' AND '.join(where)} ORDER BY rowid"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit + 1)
    return [tuple(r) for r in await conn.execute_fetchall(sql, params)]


async def list_records(
    conn: Snapshot,
    *,
    include_deleted: bool,
    limit: int | None,
    after: int,
    patient: str | None = None,
    resource_type: str | None = None,
) -> list[Row]:
    """Records in creation order, filtered; each row ends with its rowid."""
    where = ["rowid > ?"]
    params: list[Any] = [after]
    if not include_deleted:
        where.append("deleted = 0")
    if patient is not None:
        where.append("patient = ?")
        params.append(patient)
    if resource_type is not None:
        where.append("resource_type = ?")
        params.append(resource_type)
    sql = f"SELECT {RECORD_COLS}, rowid FROM records WHERE {' AND '.join(where)} ORDER BY rowid"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit + 1)
    return [tuple(r) for r in await conn.execute_fetchall(sql, params)]


# Changes (download and push) ----------------------------------------------------
#
# Each entry is built as JSON text by SQLite itself (json_object), so a page of
# thousands of changes is serialized in C and joined, never parsed and
# re-encoded in Python.  The two tables are merged by one index scan each
# ("MERGE (UNION ALL)" in the query plan), and LIMIT stops both early.

# Stored documents are compact JSON written by orjson (every writer goes
# through the models), so they are spliced in as they are: json() would parse
# each one again for nothing.
_DELETED = "CASE WHEN deleted THEN 'true' ELSE 'false' END"
# Who created the item (an upload's device_id and client_temp_id), or null.
_CREATED_BY = (
    """CASE WHEN created_by_device IS NULL THEN 'null' ELSE '{"device_id":' || json_quote(created_by_device) """
    """|| ',"client_temp_id":' || json_quote(created_temp_id) || '}' END"""
)
_PATIENT_ENTRY = (
    """'{"server_id":' || json_quote(id) || ',"resource_type":"Patient","data":{"owner":' """
    """|| json_quote(owner) || ',"name":' || json_quote(name) || ',"dob":' || json_quote(dob) """
    """|| ',"identifiers":' || identifiers || ',"fhir":' || coalesce(fhir, 'null') """
    """|| '},"server_version":' || server_version || ',"updated_at":"' || updated_at """
    f"""|| '","deleted":' || {_DELETED} || ',"created_by":' || {_CREATED_BY} || '}}'"""
)
_RECORD_ENTRY = (
    """'{"server_id":' || json_quote(id) || ',"resource_type":' || json_quote(resource_type) """
    """|| ',"patient":' || json_quote(patient) || ',"data":' || data """
    """|| ',"server_version":' || server_version || ',"updated_at":"' || updated_at """
    f"""|| '","deleted":' || {_DELETED} || ',"created_by":' || {_CREATED_BY} || '}}'"""
)

async def purge_horizon(conn: Snapshot) -> tuple[int, str]:
    """(seq, updated_at) at or below which purged tombstones may be missing."""
    row = await (await conn.execute("SELECT purged_seq, purged_at FROM clock")).fetchone()
    assert row is not None
    return row[0], row[1]


async def head(conn: Snapshot) -> tuple[int, int]:
    """(seq, last_us): the high-water mark of the snapshot ``conn`` reads."""
    row = await (await conn.execute("SELECT seq, last_us FROM clock")).fetchone()
    assert row is not None
    return row[0], row[1]


async def changes_after(
    conn: Snapshot,
    *,
    after_seq: int | None = None,
    after_time: str | None = None,
    limit: int,
    resource_type: str | None = None,
    patient: str | None = None,
) -> list[ChangeRow]:
    """Up to ``limit`` changes after a seq (or a canonical time), oldest first.

    ``resource_type`` 'Patient' reads only patients, any other type only
    records of that type; ``patient`` keeps the patient's own entry and its
    records' entries.
    """
    key: int | str | None
    if after_seq is not None:
        column, key, order = "seq", after_seq, 1
    else:
        column, key, order = "updated_at", after_time, 2
    arms: list[str] = []
    params: list[Any] = []
    if resource_type in (None, "Patient"):
        where = f"{column} > ?"
        params.append(key)
        if patient is not None:
            where += " AND id = ?"
            params.append(patient)
        arms.append(f"SELECT seq, updated_at, {_PATIENT_ENTRY} FROM patients WHERE {where}")
    if resource_type != "Patient":
        where = f"{column} > ?"
        params.append(key)
        if resource_type is not None:
            where += " AND resource_type = ?"
            params.append(resource_type)
        if patient is not None:
            where += " AND patient = ?"
            params.append(patient)
        arms.append(f"SELECT seq, updated_at, {_RECORD_ENTRY} FROM records WHERE {where}")
    sql = " UNION ALL ".join(arms) + f" ORDER BY {order} LIMIT ?"
    params.append(limit)
    return [tuple(r) for r in await conn.execute_fetchall(sql, params)]  # type: ignore[misc]


_CONFLICT_COLS = (
    "id, batch_id, device_id, server_id, resource_type, reason, change, server_copy,"
    " created_at, resolved, resolved_at, resolution"
)


async def changes_for_push(conn: Snapshot, after_seq: int, limit: int) -> list[PushRow]:
    """Like ``changes_after`` with no filter, plus the keys the push hub filters on."""
    sql = (
        f"SELECT seq, updated_at, {_PATIENT_ENTRY}, 'Patient', id FROM patients WHERE seq > ?"
        f" UNION ALL SELECT seq, updated_at, {_RECORD_ENTRY}, resource_type, patient FROM records"
        " WHERE seq > ? ORDER BY 1 LIMIT ?"
    )
    return [tuple(r) for r in await conn.execute_fetchall(sql, (after_seq, after_seq, limit))]  # type: ignore[misc]


async def batch_events_since(conn: Snapshot, updated_at: str) -> list[Row]:
    """(id, device_id, status, updated_at) of batches changed at or after ``updated_at``."""
    rows = await conn.execute_fetchall(
        "SELECT id, device_id, status, updated_at FROM batches WHERE updated_at >= ? ORDER BY updated_at",
        (updated_at,),
    )
    return [tuple(r) for r in rows]


async def list_conflicts(
    conn: Snapshot,
    *,
    device_id: str | None,
    resolved: bool | None,
    limit: int | None,
    after: int,
) -> list[Row]:
    where = ["rowid > ?"]
    params: list[Any] = [after]
    if device_id is not None:
        where.append("device_id = ?")
        params.append(device_id)
    if resolved is not None:
        where.append("resolved = ?")
        params.append(int(resolved))
    sql = f"SELECT {_CONFLICT_COLS}, rowid FROM conflicts WHERE {' AND '.join(where)} ORDER BY rowid"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit + 1)
    return [tuple(r) for r in await conn.execute_fetchall(sql, params)]


async def get_conflict(conn: Snapshot, conflict_id: str) -> Row | None:
    row = await (
        await conn.execute(f"SELECT {_CONFLICT_COLS} FROM conflicts WHERE id = ?", (conflict_id,))
    ).fetchone()
    return None if row is None else tuple(row)


# Batches ---------------------------------------------------------------------------

_BATCH_COLS = (
    "id, device_id, status, change_count, attempts, task_id, created_at, claimed_at,"
    " finished_at, updated_at, error"
)


async def get_batch(conn: Snapshot, batch_id: str) -> dict[str, Any] | None:
    row = await (
        await conn.execute(f"SELECT {_BATCH_COLS}, response FROM batches WHERE id = ?", (batch_id,))
    ).fetchone()
    return None if row is None else batch_out(tuple(row[:-1]), row[-1])


async def list_batches(
    conn: Snapshot,
    *,
    device_id: str | None,
    status: str | None,
    limit: int | None,
    after: int,
) -> list[Row]:
    """Batches newest first; each row ends with its rowid (the page key, descending)."""
    where = ["rowid < ?"]
    params: list[Any] = [after or 2**62]
    if device_id is not None:
        where.append("device_id = ?")
        params.append(device_id)
    if status is not None:
        where.append("status = ?")
        params.append(status)
    sql = f"SELECT {_BATCH_COLS}, rowid FROM batches WHERE {' AND '.join(where)} ORDER BY rowid DESC"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit + 1)
    return [tuple(r) for r in await conn.execute_fetchall(sql, params)]


async def list_devices(conn: Snapshot) -> list[dict[str, Any]]:
    """Every device seen, most recently seen first, with its batches and lag."""
    rows = await conn.execute_fetchall(
        "SELECT d.device_id, d.first_seen, d.last_seen, d.last_upload_at, d.last_download_at, d.last_cursor,"
        " (SELECT count(*) FROM batches b WHERE b.device_id = d.device_id AND b.status IN ('pending', 'processing')),"
        " (SELECT count(*) FROM batches b WHERE b.device_id = d.device_id AND b.status = 'failed'),"
        " (SELECT seq FROM clock) FROM devices d ORDER BY d.last_seen DESC"
    )
    return [device_out(r) for r in rows]
