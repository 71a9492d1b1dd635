"""Database files to start from: one at schema version 1, a large filled one."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson

from tests.support import ROOT

#: A file written at schema version 1 (how it was made: tests/storage/test_migrations.py).
V1_FILE = ROOT / "tests" / "data" / "schema_v1.db"


def fill_database(db_path: Path, megabytes: int) -> int:
    """A database of at least ``megabytes`` MB, quickly: the app's own migrations make
    the schema, then patients (with a ~3 KB FHIR document each) go in by raw
    ``executemany`` with increasing ``seq`` and the clock advanced to match, as
    creates through the write path would leave them. Returns the clock's head."""
    import asyncio
    import uuid

    from healthsync import clock
    from healthsync.storage import Database

    async def migrate() -> None:
        db = Database(db_path, readers=1)
        await db.open()
        await db.close()

    asyncio.run(migrate())
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")  # only building the starting file
    fhir = orjson.dumps({"resourceType": "Patient", "text": {"status": "generated", "div": "x" * 3000}}).decode()
    seq, us, batch = 0, clock.now_us(), 5_000
    while db_path.stat().st_size < megabytes * 1_000_000:
        rows = []
        for _ in range(batch):
            seq += 1
            us += 1
            at = clock.format_us(us)
            identifiers = f'{{"mrn": "MRN-{seq}"}}'
            rows.append((str(uuid.uuid4()), f"Patient {seq}", "1980-01-01", identifiers, fhir, at, seq, at))
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO patients (id, name, dob, identifiers, fhir, server_version, updated_at, seq, created_at)"
            " VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?)",
            rows,
        )
        conn.execute("UPDATE clock SET seq = ?, last_us = ? WHERE id = 1", (seq, us))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return seq


def latest_schema(backend: str) -> int:
    """The schema version a freshly migrated database of ``backend`` reports."""
    if backend == "postgres":
        from healthsync.storage.postgres.schema import LATEST as PG_LATEST

        return PG_LATEST
    from healthsync.storage.sqlite.migrations import LATEST

    return LATEST


def execute(settings: Any, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """One SQL statement (``?`` placeholders) run straight on the database ``settings`` name,
    SQLite or PostgreSQL, committed; its rows, if any.  For what no API does: corrupting a
    stored request, ageing a claim's heartbeat."""
    if settings.database_url:
        import psycopg

        with psycopg.connect(settings.database_url, autocommit=True, connect_timeout=5) as pg_conn:
            cur = pg_conn.execute(sql.replace("?", "%s"), params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []
    conn = sqlite3.connect(settings.db_path, isolation_level=None)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()
