"""``WriteTx``: one PostgreSQL write transaction, as ``PostgresDatabase.write`` hands it on.

It implements ``storage.interface.WriteTx``: the stamp and the named writes.
The transaction has locked the clock row first (``SELECT … FOR UPDATE``), so
writers of every process are serialized and the stamps continue the one
sequence; the wall clock of a stamp is the database server's
(``clock_timestamp()`` read with the lock), never this host's.

Every write that changes a patient or record stamps it: a new ``seq`` and
``updated_at``, and ``server_version`` + 1.  Bulk loads take the ids as one
array parameter (``= ANY(%s)``).  Bulk writes are one statement each, never
a statement per row: new rows go in with ``COPY``, changed rows with one
``UPDATE … FROM`` a temporary table or ``unnest(arrays)`` (below).  ``conn``
is for this backend's own modules only.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from ... import clock
from ..rows import PatientRow, RecordRow, Row

PATIENT_COLS = "id, owner, name, dob, identifiers, fhir, server_version, updated_at, deleted"
RECORD_COLS = "id, patient, resource_type, data, server_version, updated_at, deleted"
#: A row as the sync write path loads it: every field of ``PatientRow``/``RecordRow``.
_CREATION = ", seq, created_at, created_by_device, created_temp_id"
_PATIENT_LOAD = PATIENT_COLS + _CREATION
_RECORD_LOAD = RECORD_COLS + _CREATION

# Bulk updates: the new values of the changed rows go in as one set of rows,
# joined to the table by one ``UPDATE … FROM``.  A few rows come as one array
# per column (``unnest``); many are copied into a temporary table first
# (``COPY``): for 10,000 rows that measured about 1.7x as fast as ``unnest``
# and 1.2x as fast as ``executemany`` (bench/README.md).  Either way a small
# batch joins through the primary key's index.
BULK_COPY_ROWS = 500

_PATIENT_CHANGES = (
    "id text, name text, dob text, identifiers text, fhir text, version integer, updated_at text,"
    " deleted smallint, seq bigint"
)
_PATIENT_SET = (
    "name = u.name, dob = u.dob, identifiers = u.identifiers, fhir = u.fhir, server_version = u.version,"
    " updated_at = u.updated_at, deleted = u.deleted, seq = u.seq"
)
_RECORD_CHANGES = (
    "id text, patient text, resource_type text, data text, version integer, updated_at text, deleted smallint,"
    " seq bigint"
)
_RECORD_SET = (
    "patient = u.patient, resource_type = u.resource_type, data = u.data, server_version = u.version,"
    " updated_at = u.updated_at, deleted = u.deleted, seq = u.seq"
)
_TOMBSTONE_CHANGES = "id text, version integer, updated_at text, seq bigint"
_TOMBSTONE_SET = "deleted = 1, server_version = u.version, updated_at = u.updated_at, seq = u.seq"


class WriteTx:
    """The state of one write transaction, given to the write function."""

    def __init__(self, conn: AsyncConnection, seq: int, last_us: int, now_us: int) -> None:
        self.conn = conn
        self.seq = seq
        self.last_us = last_us
        self.changed = 0
        self.events: list[dict[str, Any]] = []
        self._now = now_us
        self._second = -1  # the second of the last stamp, and its text up to the fraction
        self._second_text = ""

    def stamp(self) -> tuple[int, str]:
        """Next (seq, updated_at) for one changed row: both strictly increasing.

        ``clock.step`` and ``clock.format_us``, inlined (as on SQLite): an
        upload stamps 10,000 rows in a row, almost all within one second.
        """
        self.seq += 1
        us = self.last_us + 1
        if us < self._now:
            us = self._now
        self.last_us = us
        self.changed += 1
        second, micro = divmod(us, 1_000_000)
        if second != self._second:
            self._second = second
            self._second_text = clock.format_us(us)[:-7]
        return self.seq, f"{self._second_text}{micro:06d}Z"

    def now(self) -> str:
        """The transaction's wall-clock time (the database's), canonical."""
        return clock.format_us(self._now)

    def emit(self, event: dict[str, Any]) -> None:
        """Record an event for the commit hooks; dropped if the write fails."""
        self.events.append(event)

    async def one(self, sql: str, params: Any = None) -> Row | None:
        cur = await self.conn.execute(sql, params)  # type: ignore[arg-type]
        row = await cur.fetchone()
        return None if row is None else tuple(row)

    async def all(self, sql: str, params: Any = None) -> list[Row]:
        cur = await self.conn.execute(sql, params)  # type: ignore[arg-type]
        return [tuple(r) for r in await cur.fetchall()]

    async def run(self, sql: str, params: Any = None) -> int:
        """Execute; the number of rows it touched."""
        cur = await self.conn.execute(sql, params)  # type: ignore[arg-type]
        return cur.rowcount

    async def many(self, sql: str, rows: list[Any]) -> None:
        if rows:
            async with self.conn.cursor() as cur:
                await cur.executemany(sql, rows)  # type: ignore[arg-type]

    # Patients and records, one at a time -------------------------------------------

    async def fetch_patient(self, patient_id: str) -> Row | None:
        return await self.one(f"SELECT {PATIENT_COLS} FROM patients WHERE id = %s", (patient_id,))

    async def fetch_record(self, record_id: str) -> Row | None:
        return await self.one(f"SELECT {RECORD_COLS} FROM records WHERE id = %s", (record_id,))

    async def insert_patient(
        self, patient_id: str, owner: str | None, name: str, dob: str | None, identifiers: str, fhir: str | None
    ) -> Row:
        seq, stamp = self.stamp()
        await self.run(
            "INSERT INTO patients (id, owner, name, dob, identifiers, fhir, server_version,"
            " updated_at, seq, deleted, created_at) VALUES (%s, %s, %s, %s, %s, %s, 1, %s, %s, 0, %s)",
            (patient_id, owner, name, dob, identifiers, fhir, stamp, seq, stamp),
        )
        return (patient_id, owner, name, dob, identifiers, fhir, 1, stamp, 0)

    async def update_patient(
        self, current: Row, name: str, dob: str | None, identifiers: str, fhir: str | None
    ) -> Row:
        seq, stamp = self.stamp()
        version = current[6] + 1
        await self.run(
            "UPDATE patients SET name = %s, dob = %s, identifiers = %s, fhir = %s,"
            " server_version = %s, updated_at = %s, seq = %s WHERE id = %s",
            (name, dob, identifiers, fhir, version, stamp, seq, current[0]),
        )
        return (current[0], current[1], name, dob, identifiers, fhir, version, stamp, 0)

    async def tombstone_patient(self, current: Row) -> tuple[Row, int]:
        seq, stamp = self.stamp()
        version = current[6] + 1
        await self.run(
            "UPDATE patients SET deleted = 1, server_version = %s, updated_at = %s, seq = %s WHERE id = %s",
            (version, stamp, seq, current[0]),
        )
        rows = await self.all(
            "SELECT id, server_version FROM records WHERE patient = %s AND deleted = 0 ORDER BY pk", (current[0],)
        )
        await self.tombstone_records([(r[0], r[1]) for r in rows])
        return (*current[:6], version, stamp, 1), len(rows)

    async def tombstone_records(self, items: list[tuple[str, int]]) -> None:
        rows: list[tuple[Any, ...]] = []
        for record_id, version in items:
            seq, stamp = self.stamp()
            rows.append((record_id, version + 1, stamp, seq))
        await self.update_from("records", _TOMBSTONE_CHANGES, _TOMBSTONE_SET, rows)

    async def insert_record(self, record_id: str, patient: str, resource_type: str, data: str) -> Row:
        seq, stamp = self.stamp()
        await self.run(
            "INSERT INTO records (id, patient, resource_type, data, server_version, updated_at,"
            " seq, deleted, created_at) VALUES (%s, %s, %s, %s, 1, %s, %s, 0, %s)",
            (record_id, patient, resource_type, data, stamp, seq, stamp),
        )
        return (record_id, patient, resource_type, data, 1, stamp, 0)

    async def update_record(self, current: Row, patient: str, resource_type: str, data: str) -> Row:
        seq, stamp = self.stamp()
        version = current[4] + 1
        await self.run(
            "UPDATE records SET patient = %s, resource_type = %s, data = %s, server_version = %s,"
            " updated_at = %s, seq = %s WHERE id = %s",
            (patient, resource_type, data, version, stamp, seq, current[0]),
        )
        return (current[0], patient, resource_type, data, version, stamp, 0)

    # Sync batches, in bulk ------------------------------------------------------------

    async def load_patients(self, ids: set[str]) -> dict[str, PatientRow]:
        if not ids:
            return {}
        rows = await self.all(f"SELECT {_PATIENT_LOAD} FROM patients WHERE id = ANY(%s)", (list(ids),))
        return {r[0]: PatientRow(*r) for r in rows}

    async def load_records(self, ids: set[str]) -> dict[str, RecordRow]:
        if not ids:
            return {}
        rows = await self.all(f"SELECT {_RECORD_LOAD} FROM records WHERE id = ANY(%s)", (list(ids),))
        return {r[0]: RecordRow(*r) for r in rows}

    async def load_live_records_of(self, patient_ids: set[str]) -> list[RecordRow]:
        if not patient_ids:
            return []
        rows = await self.all(
            f"SELECT {_RECORD_LOAD} FROM records WHERE patient = ANY(%s) AND deleted = 0 ORDER BY pk",
            (list(patient_ids),),
        )
        return [RecordRow(*r) for r in rows]

    async def load_temp_ids(self, device_id: str, temp_ids: set[str]) -> dict[str, tuple[str, str]]:
        if not temp_ids:
            return {}
        rows = await self.all(
            "SELECT client_temp_id, server_id, resource_type FROM temp_ids"
            " WHERE device_id = %s AND client_temp_id = ANY(%s)",
            (device_id, list(temp_ids)),
        )
        return {r[0]: (r[1], r[2]) for r in rows}

    async def copy_in(self, table: str, columns: str, rows: list[Any]) -> None:
        """Insert ``rows`` (tuples in the order of ``columns``) with one ``COPY``:
        the fastest bulk insert PostgreSQL has, constraints and triggers checked
        as by ``INSERT``."""
        if rows:
            async with self.conn.cursor() as cur, cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    await copy.write_row(row)

    async def update_from(self, table: str, changes: str, assignments: str, rows: list[tuple[Any, ...]]) -> None:
        """Update the rows of ``table`` named by the first value of each of ``rows``
        (tuples typed by ``changes``, ``"id text, name text, …"``) as ``assignments``
        (``"name = u.name, …"``) say, in one ``UPDATE … FROM``."""
        if not rows:
            return
        if len(rows) < BULK_COPY_ROWS:
            names = ", ".join(c.split()[0] for c in changes.split(", "))
            arrays = ", ".join(f"%s::{c.split()[1]}[]" for c in changes.split(", "))
            await self.run(
                f"UPDATE {table} AS t SET {assignments} FROM unnest({arrays}) AS u({names}) WHERE t.id = u.id",
                [list(col) for col in zip(*rows, strict=True)],
            )
            return
        await self.run(f"CREATE TEMP TABLE bulk_changes ({changes}) ON COMMIT DROP")
        await self.copy_in("bulk_changes", ", ".join(c.split()[0] for c in changes.split(", ")), rows)
        await self.run(f"UPDATE {table} AS t SET {assignments} FROM bulk_changes AS u WHERE t.id = u.id")
        await self.run("DROP TABLE bulk_changes")

    async def write_patients(self, new: list[PatientRow], changed: list[PatientRow]) -> None:
        await self.copy_in(
            "patients",
            "id, owner, name, dob, identifiers, fhir, server_version, updated_at, deleted, seq, created_at,"
            " created_by_device, created_temp_id",
            [(r.id, r.owner, r.name, r.dob, r.identifiers, r.fhir, r.version, r.updated_at, r.deleted, r.seq,
              r.created_at, r.created_by_device, r.created_temp_id) for r in new],
        )
        if changed:
            await self.update_from("patients", _PATIENT_CHANGES, _PATIENT_SET, [
                (r.id, r.name, r.dob, r.identifiers, r.fhir, r.version, r.updated_at, r.deleted, r.seq)
                for r in changed])

    async def write_records(self, new: list[RecordRow], changed: list[RecordRow]) -> None:
        await self.copy_in(
            "records",
            "id, patient, resource_type, data, server_version, updated_at, deleted, seq, created_at,"
            " created_by_device, created_temp_id",
            [(r.id, r.patient, r.resource_type, r.data, r.version, r.updated_at, r.deleted, r.seq, r.created_at,
              r.created_by_device, r.created_temp_id) for r in new],
        )
        if changed:
            await self.update_from("records", _RECORD_CHANGES, _RECORD_SET, [
                (r.id, r.patient, r.resource_type, r.data, r.version, r.updated_at, r.deleted, r.seq)
                for r in changed])

    async def insert_temp_ids(self, rows: list[tuple[str, str, str, str]]) -> None:
        await self.copy_in("temp_ids", "device_id, client_temp_id, server_id, resource_type", rows)

    async def insert_conflicts(self, rows: list[tuple[Any, ...]]) -> None:
        await self.copy_in(
            "conflicts",
            "id, batch_id, device_id, server_id, resource_type, reason, change, server_copy, created_at",
            rows,
        )

    async def resolve_conflict(self, conflict_id: str, resolution: str | None) -> bool:
        return await self.run(
            "UPDATE conflicts SET resolved = 1, resolved_at = %s, resolution = %s WHERE id = %s AND resolved = 0",
            (self.now(), resolution, conflict_id),
        ) == 1

    # Batches and devices -----------------------------------------------------------------

    async def fetch_batch(self, batch_id: str) -> Row | None:
        return await self.one(
            "SELECT id, device_id, status, response, error, claimed_at, attempts FROM batches WHERE id = %s",
            (batch_id,),
        )

    async def insert_batch(
        self,
        batch_id: str,
        device_id: str,
        status: str,
        change_count: int,
        *,
        request: str | None = None,
        response: str | None = None,
    ) -> None:
        now = self.now()
        await self.run(
            "INSERT INTO batches (id, device_id, status, change_count, request, response, created_at,"
            " finished_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (batch_id, device_id, status, change_count, request, response, now,
             now if status == "done" else None, now),
        )

    async def device_uploaded(self, device_id: str) -> None:
        now = self.now()
        await self.run(
            "INSERT INTO devices (device_id, first_seen, last_seen, last_upload_at) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (device_id) DO UPDATE SET last_seen = excluded.last_seen,"
            " last_upload_at = excluded.last_upload_at",
            (device_id, now, now, now),
        )

    async def device_downloaded(self, device_id: str, cursor: int) -> None:
        now = self.now()
        await self.run(
            "INSERT INTO devices (device_id, first_seen, last_seen, last_download_at, last_cursor)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (device_id) DO UPDATE SET last_seen = excluded.last_seen,"
            " last_download_at = excluded.last_download_at,"
            " last_cursor = greatest(coalesce(devices.last_cursor, 0), excluded.last_cursor)",
            (device_id, now, now, now, cursor),
        )

    async def purge_tombstones(self, before: str) -> int:
        """Delete tombstones last changed before ``before``; raise the purge horizon
        (records first: a patient row stays while any record points at it)."""
        top = await self.one(
            "SELECT max(seq), max(updated_at) FROM (SELECT seq, updated_at FROM records"
            " WHERE deleted = 1 AND updated_at < %s UNION ALL SELECT seq, updated_at FROM patients"
            " WHERE deleted = 1 AND updated_at < %s"
            " AND NOT EXISTS (SELECT 1 FROM records r WHERE r.patient = patients.id AND"
            " NOT (r.deleted = 1 AND r.updated_at < %s))) AS gone",
            (before, before, before),
        )
        count = await self.run("DELETE FROM records WHERE deleted = 1 AND updated_at < %s", (before,))
        count += await self.run(
            "DELETE FROM patients WHERE deleted = 1 AND updated_at < %s"
            " AND NOT EXISTS (SELECT 1 FROM records r WHERE r.patient = patients.id)",
            (before,),
        )
        if top is not None and top[0] is not None:
            await self.run(
                "UPDATE clock SET purged_seq = greatest(purged_seq, %s), purged_at = greatest(purged_at, %s)"
                " WHERE id = 1",
                (top[0], top[1]),
            )
        return count
