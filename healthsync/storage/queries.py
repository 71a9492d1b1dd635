"""Reads: every SELECT the API needs, parameterized, on a read connection.

Rows come back as plain tuples in the column orders below; ``patient_out`` and
``record_out`` turn them into API representations.  Stored JSON documents are
passed through as ``orjson.Fragment`` so they are never parsed just to be
serialized again.
"""

from __future__ import annotations

from typing import Any

import aiosqlite
import orjson

PATIENT_COLS = "id, owner, name, dob, identifiers, fhir, server_version, updated_at, deleted"
RECORD_COLS = "id, patient, resource_type, data, server_version, updated_at, deleted"

Row = tuple[Any, ...]


def patient_out(row: Row) -> dict[str, Any]:
    return {
        "id": row[0],
        "owner": row[1],
        "name": row[2],
        "dob": row[3],
        "identifiers": orjson.Fragment(row[4]),
        "fhir": None if row[5] is None else orjson.Fragment(row[5]),
        "server_version": row[6],
        "updated_at": row[7],
        "deleted": bool(row[8]),
    }


def record_out(row: Row) -> dict[str, Any]:
    return {
        "id": row[0],
        "patient": row[1],
        "resource_type": row[2],
        "data": orjson.Fragment(row[3]),
        "server_version": row[4],
        "updated_at": row[5],
        "deleted": bool(row[6]),
    }


async def get_patient(conn: aiosqlite.Connection, patient_id: str) -> Row | None:
    cur = await conn.execute(f"SELECT {PATIENT_COLS} FROM patients WHERE id = ?", (patient_id,))
    row = await cur.fetchone()
    return None if row is None else tuple(row)


async def get_record(conn: aiosqlite.Connection, record_id: str) -> Row | None:
    cur = await conn.execute(f"SELECT {RECORD_COLS} FROM records WHERE id = ?", (record_id,))
    row = await cur.fetchone()
    return None if row is None else tuple(row)


async def list_patients(
    conn: aiosqlite.Connection, *, include_deleted: bool, limit: int | None, after: int
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
    conn: aiosqlite.Connection,
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
