"""``Snapshot``: one PostgreSQL ``REPEATABLE READ READ ONLY`` transaction, as
``PostgresDatabase.read`` hands it on, with the named reads of
``storage.interface.Snapshot``.

Rows come back as tuples in the column orders of ``storage.rows``; listings
end each row with its ``pk`` (the page key, as SQLite's rowid).  Change
entries are built as JSON text by PostgreSQL itself: the stored documents
(compact JSON text, as written) are spliced in as they are, the strings
quoted with ``to_json``, so a page is never parsed and re-encoded in Python.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from ..rows import ChangeRow, PushRow, Row, batch_out, device_out
from .tx import PATIENT_COLS, RECORD_COLS


def _q(col: str) -> str:
    return f"coalesce(to_json({col})::text, 'null')"


_DELETED = "CASE WHEN deleted = 1 THEN 'true' ELSE 'false' END"
# Who created the item (an upload's device_id and client_temp_id), or null.
_CREATED_BY = (
    f"""CASE WHEN created_by_device IS NULL THEN 'null' ELSE '{{"device_id":' || {_q('created_by_device')} """
    f"""|| ',"client_temp_id":' || {_q('created_temp_id')} || '}}' END"""
)
_PATIENT_ENTRY = (
    f"""'{{"server_id":' || {_q('id')} || ',"resource_type":"Patient","data":{{"owner":' """
    f"""|| {_q('owner')} || ',"name":' || {_q('name')} || ',"dob":' || {_q('dob')} """
    """|| ',"identifiers":' || identifiers || ',"fhir":' || coalesce(fhir, 'null') """
    """|| '},"server_version":' || server_version || ',"updated_at":"' || updated_at """
    f"""|| '","deleted":' || {_DELETED} || ',"created_by":' || {_CREATED_BY} || '}}'"""
)
_RECORD_ENTRY = (
    f"""'{{"server_id":' || {_q('id')} || ',"resource_type":' || {_q('resource_type')} """
    f"""|| ',"patient":' || {_q('patient')} || ',"data":' || data """
    """|| ',"server_version":' || server_version || ',"updated_at":"' || updated_at """
    f"""|| '","deleted":' || {_DELETED} || ',"created_by":' || {_CREATED_BY} || '}}'"""
)
_CONFLICT_COLS = (
    "id, batch_id, device_id, server_id, resource_type, reason, change, server_copy,"
    " created_at, resolved, resolved_at, resolution"
)
_BATCH_COLS = (
    "id, device_id, status, change_count, attempts, task_id, created_at, claimed_at,"
    " finished_at, updated_at, error"
)


class Snapshot:
    """A connection inside one ``REPEATABLE READ READ ONLY`` transaction."""

    __slots__ = ("conn",)

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def all(self, sql: str, params: Any = None) -> list[Row]:
        cur = await self.conn.execute(sql, params)  # type: ignore[arg-type]
        return [tuple(r) for r in await cur.fetchall()]

    async def one(self, sql: str, params: Any = None) -> Row | None:
        rows = await self.all(sql, params)
        return rows[0] if rows else None

    async def head(self) -> tuple[int, int]:
        row = await self.one("SELECT seq, last_us FROM clock WHERE id = 1")
        assert row is not None
        return row[0], row[1]

    async def purge_horizon(self) -> tuple[int, str]:
        row = await self.one("SELECT purged_seq, purged_at FROM clock WHERE id = 1")
        assert row is not None
        return row[0], row[1]

    async def get_patient(self, patient_id: str) -> Row | None:
        return await self.one(f"SELECT {PATIENT_COLS} FROM patients WHERE id = %s", (patient_id,))

    async def get_record(self, record_id: str) -> Row | None:
        return await self.one(f"SELECT {RECORD_COLS} FROM records WHERE id = %s", (record_id,))

    async def _listing(self, cols: str, table: str, where: list[str], params: list[Any], limit: int | None,
                       desc: bool = False) -> list[Row]:
        sql = f"SELECT {cols}, pk FROM {table} WHERE {' AND '.join(where)} ORDER BY pk{' DESC' if desc else ''}"
        if limit is not None:
            sql += " LIMIT %s"
            params.append(limit + 1)
        return await self.all(sql, params)

    async def list_patients(self, *, include_deleted: bool, limit: int | None, after: int) -> list[Row]:
        where = ["pk > %s"] + ([] if include_deleted else ["deleted = 0"])
        return await self._listing(PATIENT_COLS, "patients", where, [after], limit)

    async def list_records(
        self,
        *,
        include_deleted: bool,
        limit: int | None,
        after: int,
        patient: str | None = None,
        resource_type: str | None = None,
    ) -> list[Row]:
        where = ["pk > %s"] + ([] if include_deleted else ["deleted = 0"])
        params: list[Any] = [after]
        if patient is not None:
            where.append("patient = %s")
            params.append(patient)
        if resource_type is not None:
            where.append("resource_type = %s")
            params.append(resource_type)
        return await self._listing(RECORD_COLS, "records", where, params, limit)

    async def changes_after(
        self,
        *,
        after_seq: int | None = None,
        after_time: str | None = None,
        limit: int,
        resource_type: str | None = None,
        patient: str | None = None,
    ) -> list[ChangeRow]:
        key: int | str | None
        if after_seq is not None:
            column, key, order = "seq", after_seq, "seq"
        else:
            column, key, order = "updated_at", after_time, "updated_at"
        arms: list[str] = []
        params: list[Any] = []
        if resource_type in (None, "Patient"):
            where = f"{column} > %s"
            params.append(key)
            if patient is not None:
                where += " AND id = %s"
                params.append(patient)
            arms.append(f"(SELECT seq, updated_at, {_PATIENT_ENTRY} FROM patients WHERE {where}"
                        f" ORDER BY {order} LIMIT %s)")
            params.append(limit)
        if resource_type != "Patient":
            where = f"{column} > %s"
            params.append(key)
            if resource_type is not None:
                where += " AND resource_type = %s"
                params.append(resource_type)
            if patient is not None:
                where += " AND patient = %s"
                params.append(patient)
            arms.append(f"(SELECT seq, updated_at, {_RECORD_ENTRY} FROM records WHERE {where}"
                        f" ORDER BY {order} LIMIT %s)")
            params.append(limit)
        # Each arm stops at ``limit`` on its own index; the merge keeps the first ``limit``.
        sql = f"SELECT * FROM ({' UNION ALL '.join(arms)}) AS changes ORDER BY {order} LIMIT %s"
        params.append(limit)
        return await self.all(sql, params)  # type: ignore[return-value]

    async def changes_for_push(self, after_seq: int, limit: int) -> list[PushRow]:
        sql = (
            f"(SELECT seq, updated_at, {_PATIENT_ENTRY}, 'Patient', id FROM patients WHERE seq > %s"
            " ORDER BY seq LIMIT %s)"
            f" UNION ALL (SELECT seq, updated_at, {_RECORD_ENTRY}, resource_type, patient FROM records"
            " WHERE seq > %s ORDER BY seq LIMIT %s) ORDER BY 1 LIMIT %s"
        )
        return await self.all(sql, (after_seq, limit, after_seq, limit, limit))  # type: ignore[return-value]

    async def list_conflicts(
        self, *, device_id: str | None, resolved: bool | None, limit: int | None, after: int
    ) -> list[Row]:
        where = ["pk > %s"]
        params: list[Any] = [after]
        if device_id is not None:
            where.append("device_id = %s")
            params.append(device_id)
        if resolved is not None:
            where.append("resolved = %s")
            params.append(int(resolved))
        return await self._listing(_CONFLICT_COLS, "conflicts", where, params, limit)

    async def get_conflict(self, conflict_id: str) -> Row | None:
        return await self.one(f"SELECT {_CONFLICT_COLS} FROM conflicts WHERE id = %s", (conflict_id,))

    async def get_batch(self, batch_id: str) -> dict[str, Any] | None:
        row = await self.one(f"SELECT {_BATCH_COLS}, response FROM batches WHERE id = %s", (batch_id,))
        return None if row is None else batch_out(row[:-1], row[-1])

    async def list_batches(
        self, *, device_id: str | None, status: str | None, limit: int | None, after: int
    ) -> list[Row]:
        where = ["pk < %s"]
        params: list[Any] = [after or 2**62]
        if device_id is not None:
            where.append("device_id = %s")
            params.append(device_id)
        if status is not None:
            where.append("status = %s")
            params.append(status)
        return await self._listing(_BATCH_COLS, "batches", where, params, limit, desc=True)

    async def batch_events_since(self, updated_at: str) -> list[Row]:
        return await self.all(
            "SELECT id, device_id, status, updated_at FROM batches WHERE updated_at >= %s ORDER BY updated_at",
            (updated_at,),
        )

    async def list_devices(self) -> list[dict[str, Any]]:
        rows = await self.all(
            "SELECT d.device_id, d.first_seen, d.last_seen, d.last_upload_at, d.last_download_at, d.last_cursor,"
            " (SELECT count(*) FROM batches b WHERE b.device_id = d.device_id"
            " AND b.status IN ('pending', 'processing')),"
            " (SELECT count(*) FROM batches b WHERE b.device_id = d.device_id AND b.status = 'failed'),"
            " (SELECT seq FROM clock WHERE id = 1) FROM devices d ORDER BY d.last_seen DESC"
        )
        return [device_out(r) for r in rows]
