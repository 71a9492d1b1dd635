"""Row writes on SQLite, run inside ``Database.write`` (``tx`` is the open transaction).

Each function takes the ``WriteTx`` first, so ``tx.WriteTx`` carries them as
its methods (``tx.insert_patient(...)``), the write operations of
``storage.interface.WriteTx``.

Every function that changes a patient or record row stamps it with
``tx.stamp()``: a new ``seq`` and ``updated_at``, and ``server_version`` + 1.
Nothing here decides whether a change is allowed; the services do that, then
call these.  Bulk variants use ``executemany``: one await per statement, not
per row.
"""

from __future__ import annotations

from typing import Any, Protocol

import aiosqlite
import orjson

from ..rows import PatientRow, RecordRow, Row
from .queries import PATIENT_COLS, RECORD_COLS


class WriteTx(Protocol):
    """What these functions use of ``tx.WriteTx`` (declared here, so that
    module, which carries them, is the only one of the two importing the other)."""

    conn: aiosqlite.Connection

    def stamp(self) -> tuple[int, str]: ...

    def now(self) -> str: ...

_PATIENT_FOR_UPDATE = f"SELECT {PATIENT_COLS} FROM patients WHERE id = ?"
_RECORD_FOR_UPDATE = f"SELECT {RECORD_COLS} FROM records WHERE id = ?"


async def fetch_patient(tx: WriteTx, patient_id: str) -> Row | None:
    row = await (await tx.conn.execute(_PATIENT_FOR_UPDATE, (patient_id,))).fetchone()
    return None if row is None else tuple(row)


async def fetch_record(tx: WriteTx, record_id: str) -> Row | None:
    row = await (await tx.conn.execute(_RECORD_FOR_UPDATE, (record_id,))).fetchone()
    return None if row is None else tuple(row)


async def insert_patient(
    tx: WriteTx,
    patient_id: str,
    owner: str | None,
    name: str,
    dob: str | None,
    identifiers: str,
    fhir: str | None,
) -> Row:
    seq, stamp = tx.stamp()
    await tx.conn.execute(
        "INSERT INTO patients (id, owner, name, dob, identifiers, fhir, server_version,"
        " updated_at, seq, deleted, created_at) VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, 0, ?)",
        (patient_id, owner, name, dob, identifiers, fhir, stamp, seq, stamp),
    )
    return (patient_id, owner, name, dob, identifiers, fhir, 1, stamp, 0)


async def update_patient(
    tx: WriteTx, current: Row, name: str, dob: str | None, identifiers: str, fhir: str | None
) -> Row:
    seq, stamp = tx.stamp()
    version = current[6] + 1
    await tx.conn.execute(
        "UPDATE patients SET name = ?, dob = ?, identifiers = ?, fhir = ?,"
        " server_version = ?, updated_at = ?, seq = ? WHERE id = ?",
        (name, dob, identifiers, fhir, version, stamp, seq, current[0]),
    )
    return (current[0], current[1], name, dob, identifiers, fhir, version, stamp, 0)


async def tombstone_patient(tx: WriteTx, current: Row) -> tuple[Row, int]:
    """Soft-delete a patient and every live record of it; (new row, records hit)."""
    seq, stamp = tx.stamp()
    version = current[6] + 1
    await tx.conn.execute(
        "UPDATE patients SET deleted = 1, server_version = ?, updated_at = ?, seq = ? WHERE id = ?",
        (version, stamp, seq, current[0]),
    )
    rows = list(await tx.conn.execute_fetchall(
        "SELECT id, server_version FROM records WHERE patient = ? AND deleted = 0 ORDER BY rowid",
        (current[0],),
    ))
    await tombstone_records(tx, [(r[0], r[1]) for r in rows])
    return (*current[:6], version, stamp, 1), len(rows)


async def tombstone_records(tx: WriteTx, items: list[tuple[str, int]]) -> None:
    """Soft-delete records given as (id, current server_version)."""
    params: list[tuple[Any, ...]] = []
    for record_id, version in items:
        seq, stamp = tx.stamp()
        params.append((version + 1, stamp, seq, record_id))
    if params:
        await tx.conn.executemany(
            "UPDATE records SET deleted = 1, server_version = ?, updated_at = ?, seq = ? WHERE id = ?",
            params,
        )


async def insert_record(
    tx: WriteTx, record_id: str, patient: str, resource_type: str, data: str
) -> Row:
    seq, stamp = tx.stamp()
    await tx.conn.execute(
        "INSERT INTO records (id, patient, resource_type, data, server_version, updated_at,"
        " seq, deleted, created_at) VALUES (?, ?, ?, ?, 1, ?, ?, 0, ?)",
        (record_id, patient, resource_type, data, stamp, seq, stamp),
    )
    return (record_id, patient, resource_type, data, 1, stamp, 0)


async def update_record(tx: WriteTx, current: Row, patient: str, resource_type: str, data: str) -> Row:
    seq, stamp = tx.stamp()
    version = current[4] + 1
    await tx.conn.execute(
        "UPDATE records SET patient = ?, resource_type = ?, data = ?, server_version = ?,"
        " updated_at = ?, seq = ? WHERE id = ?",
        (patient, resource_type, data, version, stamp, seq, current[0]),
    )
    return (current[0], patient, resource_type, data, version, stamp, 0)


# Bulk reads and writes for sync batches -----------------------------------------
#
# Lookups take any number of ids as one JSON array parameter (json_each), so a
# 10,000-change batch is a handful of statements, never one per change.

_IDS = "(SELECT value FROM json_each(?))"


def _json_list(values: Any) -> str:
    return orjson.dumps(list(values)).decode()


def _by_ids(cols: str, table: str) -> str:
    """``SELECT cols FROM table`` for the rows whose id is in a JSON array of
    distinct ids (the parameter).  A join probes the primary key once per id,
    in the array's order; ``id IN (SELECT value FROM json_each(?))`` first
    sorts the ids into a temporary b-tree, which costs a third more for
    10,000 ids (twice as much when few of them exist).  ``CROSS JOIN`` keeps
    the array as the outer loop.  Rows come in no particular order."""
    qualified = ", ".join(f"t.{col.strip()}" for col in cols.split(","))
    return f"SELECT {qualified} FROM json_each(?) AS j CROSS JOIN {table} AS t ON t.id = j.value"


#: A row as the sync write path loads it: every field of ``PatientRow``/``RecordRow``.
_CREATION = ", seq, created_at, created_by_device, created_temp_id"
_PATIENT_LOAD = PATIENT_COLS + _CREATION
_RECORD_LOAD = RECORD_COLS + _CREATION
_PATIENTS_BY_ID = _by_ids(_PATIENT_LOAD, "patients")
_RECORDS_BY_ID = _by_ids(_RECORD_LOAD, "records")


async def load_patients(tx: WriteTx, ids: set[str]) -> dict[str, PatientRow]:
    """The patients of ``ids`` that exist, by id."""
    if not ids:
        return {}
    rows = await tx.conn.execute_fetchall(_PATIENTS_BY_ID, (_json_list(ids),))
    return {r[0]: PatientRow(*r) for r in rows}


async def load_records(tx: WriteTx, ids: set[str]) -> dict[str, RecordRow]:
    """The records of ``ids`` that exist, by id."""
    if not ids:
        return {}
    rows = await tx.conn.execute_fetchall(_RECORDS_BY_ID, (_json_list(ids),))
    return {r[0]: RecordRow(*r) for r in rows}


async def load_live_records_of(tx: WriteTx, patient_ids: set[str]) -> list[RecordRow]:
    """The records not deleted of the patients of ``patient_ids``, oldest first."""
    if not patient_ids:
        return []
    rows = await tx.conn.execute_fetchall(
        f"SELECT {_RECORD_LOAD} FROM records WHERE patient IN {_IDS} AND deleted = 0 ORDER BY rowid",
        (_json_list(patient_ids),),
    )
    return [RecordRow(*r) for r in rows]


async def load_temp_ids(tx: WriteTx, device_id: str, temp_ids: set[str]) -> dict[str, tuple[str, str]]:
    """client_temp_id -> (server_id, resource_type) for this device."""
    if not temp_ids:
        return {}
    rows = await tx.conn.execute_fetchall(
        "SELECT t.client_temp_id, t.server_id, t.resource_type FROM json_each(?) AS j"
        " CROSS JOIN temp_ids AS t ON t.device_id = ? AND t.client_temp_id = j.value",  # see _by_ids
        (_json_list(temp_ids), device_id),
    )
    return {r[0]: (r[1], r[2]) for r in rows}


async def write_patients(tx: WriteTx, new: list[PatientRow], changed: list[PatientRow]) -> None:
    """Insert the ``new`` rows and update the ``changed`` ones, as they are
    (every column but ``id``, ``owner`` and the creation's, which never change)."""
    if new:
        await tx.conn.executemany(
            "INSERT INTO patients (id, owner, name, dob, identifiers, fhir, server_version, updated_at,"
            " deleted, seq, created_at, created_by_device, created_temp_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(r.id, r.owner, r.name, r.dob, r.identifiers, r.fhir, r.version, r.updated_at, r.deleted, r.seq,
              r.created_at, r.created_by_device, r.created_temp_id) for r in new],
        )
    if changed:
        await tx.conn.executemany(
            "UPDATE patients SET name = ?, dob = ?, identifiers = ?, fhir = ?, server_version = ?,"
            " updated_at = ?, deleted = ?, seq = ? WHERE id = ?",
            [(r.name, r.dob, r.identifiers, r.fhir, r.version, r.updated_at, r.deleted, r.seq, r.id)
             for r in changed],
        )


async def write_records(tx: WriteTx, new: list[RecordRow], changed: list[RecordRow]) -> None:
    """Insert the ``new`` rows and update the ``changed`` ones, as they are
    (every column but ``id`` and the creation's)."""
    if new:
        await tx.conn.executemany(
            "INSERT INTO records (id, patient, resource_type, data, server_version, updated_at,"
            " deleted, seq, created_at, created_by_device, created_temp_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(r.id, r.patient, r.resource_type, r.data, r.version, r.updated_at, r.deleted, r.seq, r.created_at,
              r.created_by_device, r.created_temp_id) for r in new],
        )
    if changed:
        await tx.conn.executemany(
            "UPDATE records SET patient = ?, resource_type = ?, data = ?, server_version = ?,"
            " updated_at = ?, deleted = ?, seq = ? WHERE id = ?",
            [(r.patient, r.resource_type, r.data, r.version, r.updated_at, r.deleted, r.seq, r.id)
             for r in changed],
        )


async def insert_temp_ids(tx: WriteTx, rows: list[tuple[str, str, str, str]]) -> None:
    """Remember rows of (device_id, client_temp_id, server_id, resource_type),
    bound as they are."""
    if rows:
        await tx.conn.executemany(
            "INSERT INTO temp_ids (device_id, client_temp_id, server_id, resource_type) VALUES (?, ?, ?, ?)",
            rows,
        )


async def insert_conflicts(tx: WriteTx, rows: list[tuple[Any, ...]]) -> None:
    """Rows of (id, batch_id, device_id, server_id, resource_type, reason, change, server_copy, created_at)."""
    if rows:
        await tx.conn.executemany(
            "INSERT INTO conflicts (id, batch_id, device_id, server_id, resource_type, reason, change,"
            " server_copy, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )


async def resolve_conflict(tx: WriteTx, conflict_id: str, resolution: str | None) -> bool:
    cur = await tx.conn.execute(
        "UPDATE conflicts SET resolved = 1, resolved_at = ?, resolution = ? WHERE id = ? AND resolved = 0",
        (tx.now(), resolution, conflict_id),
    )
    return cur.rowcount == 1


async def fetch_batch(tx: WriteTx, batch_id: str) -> Row | None:
    """(id, device_id, status, response, error, claimed_at, attempts) of a batch."""
    row = await (
        await tx.conn.execute(
            "SELECT id, device_id, status, response, error, claimed_at, attempts FROM batches WHERE id = ?",
            (batch_id,),
        )
    ).fetchone()
    return None if row is None else tuple(row)


async def insert_batch(
    tx: WriteTx,
    batch_id: str,
    device_id: str,
    status: str,
    change_count: int,
    *,
    request: str | None = None,
    response: str | None = None,
) -> None:
    now = tx.now()
    await tx.conn.execute(
        "INSERT INTO batches (id, device_id, status, change_count, request, response, created_at,"
        " finished_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (batch_id, device_id, status, change_count, request, response, now,
         now if status == "done" else None, now),
    )


async def device_uploaded(tx: WriteTx, device_id: str) -> None:
    now = tx.now()
    await tx.conn.execute(
        "INSERT INTO devices (device_id, first_seen, last_seen, last_upload_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (device_id) DO UPDATE SET last_seen = excluded.last_seen,"
        " last_upload_at = excluded.last_upload_at",
        (device_id, now, now, now),
    )


async def device_downloaded(tx: WriteTx, device_id: str, cursor: int) -> None:
    now = tx.now()
    await tx.conn.execute(
        "INSERT INTO devices (device_id, first_seen, last_seen, last_download_at, last_cursor)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET last_seen = excluded.last_seen,"
        " last_download_at = excluded.last_download_at,"
        " last_cursor = max(coalesce(last_cursor, 0), excluded.last_cursor)",
        (device_id, now, now, now, cursor),
    )


async def purge_tombstones(tx: WriteTx, before: str) -> int:
    """Delete tombstones last changed before ``before``; raise the purge horizon.

    Records go first (a patient row is kept while any record points at it).
    The horizon is the newest purged seq and time: a cursor or ``since`` at
    or below it may have missed a purged deletion, so it must resync.
    """
    conn = tx.conn
    top = await (
        await conn.execute(
            "SELECT max(seq), max(updated_at) FROM (SELECT seq, updated_at FROM records"
            " WHERE deleted = 1 AND updated_at < ? UNION ALL SELECT seq, updated_at FROM patients"
            " WHERE deleted = 1 AND updated_at < ?"
            " AND NOT EXISTS (SELECT 1 FROM records r WHERE r.patient = patients.id AND"
            " NOT (r.deleted = 1 AND r.updated_at < ?)))",
            (before, before, before),
        )
    ).fetchone()
    cur = await conn.execute("DELETE FROM records WHERE deleted = 1 AND updated_at < ?", (before,))
    count = cur.rowcount
    cur = await conn.execute(
        "DELETE FROM patients WHERE deleted = 1 AND updated_at < ?"
        " AND NOT EXISTS (SELECT 1 FROM records r WHERE r.patient = patients.id)",
        (before,),
    )
    count += cur.rowcount
    if top is not None and top[0] is not None:
        await conn.execute(
            "UPDATE clock SET purged_seq = max(purged_seq, ?), purged_at = max(purged_at, ?)", (top[0], top[1])
        )
    return count
