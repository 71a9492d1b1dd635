"""Row writes, run inside ``Database.write`` (``tx`` is the open transaction).

Every function that changes a patient or record row stamps it with
``tx.stamp()``: a new ``seq`` and ``updated_at``, and ``server_version`` + 1.
Nothing here decides whether a change is allowed; the services do that, then
call these.  Bulk variants use ``executemany``: one await per statement, not
per row.
"""

from __future__ import annotations

from typing import Any

from .db import WriteTx
from .queries import PATIENT_COLS, RECORD_COLS, Row

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
    rows = await tx.conn.execute_fetchall(
        "SELECT id, server_version FROM records WHERE patient = ? AND deleted = 0 ORDER BY rowid",
        (current[0],),
    )
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
