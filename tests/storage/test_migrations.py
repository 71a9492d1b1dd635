"""Migrations: numbered, transactional, forward from older files.

SQLite's own (older SQLite files); PostgreSQL's migrations: tests/storage/test_postgres.py."""

from __future__ import annotations

import shutil
import sqlite3

import aiosqlite
import orjson
import pytest

from healthsync.resources import Resources
from healthsync.storage import Database
from healthsync.storage.sqlite.migrations import LATEST, SchemaTooNew, migrate
from tests.support.databases import V1_FILE


async def test_fresh_file_reaches_latest(tmp_path):
    db = Database(tmp_path / "h.db")
    await db.open()
    assert db.schema_version == LATEST
    await db.close()
    assert sqlite3.connect(tmp_path / "h.db").execute("PRAGMA user_version").fetchone()[0] == LATEST


async def test_version_1_file_is_migrated_forward_with_its_data(tmp_path):
    path = tmp_path / "h.db"
    shutil.copy(V1_FILE, path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    (count,) = conn.execute("SELECT count(*) FROM patients").fetchone()
    conn.close()
    assert count == 2
    db = Database(path)
    res = Resources(db)
    try:
        await db.open()
        assert db.schema_version == LATEST
        patients, _ = await res.list_patients(include_deleted=False, limit=None, after=0)
        assert [p["name"] for p in patients] == ["Ada Lovelace", "Grace Hopper"]
        # writing continues the old file's sequence
        new = await res.create_patient({"name": "New"})
        assert new["updated_at"] > patients[-1]["updated_at"]
        assert (await db.fetchone("SELECT seq FROM clock"))[0] == 4
        assert await db.fetchall("SELECT * FROM batches") == []
        # items older than the creator columns have none: their entries say created_by null
        entries = await db.read(lambda snap: snap.changes_after(after_seq=0, limit=10))
        assert len(entries) == 4 and all(orjson.loads(e[2])["created_by"] is None for e in entries)
        assert await db.fetchall("SELECT created_by_device, created_temp_id FROM patients") == [(None, None)] * 3
    finally:
        await db.close()


async def test_migrating_twice_is_a_no_op(tmp_path):
    path = tmp_path / "h.db"
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        assert await migrate(conn, target=1) == 1
        assert await migrate(conn) == LATEST
        assert await migrate(conn) == LATEST


async def test_newer_file_refuses_to_open(tmp_path):
    path = tmp_path / "h.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    conn.close()
    db = Database(path)
    with pytest.raises(SchemaTooNew):
        await db.open()
    await db.close()


def make_v1_file(path) -> None:
    """How tests/data/schema_v1.db was made (kept for the record)."""
    import asyncio

    async def run():
        async with aiosqlite.connect(path, isolation_level=None) as conn:
            await migrate(conn, target=1)
            await conn.execute("UPDATE clock SET seq = 3, last_us = 1757705118333000")
            for seq, pid, name in [(1, "11111111-1111-4111-8111-111111111111", "Ada Lovelace"),
                                   (2, "22222222-2222-4222-8222-222222222222", "Grace Hopper")]:
                stamp = f"2025-09-12T19:25:18.33{seq}000Z"
                await conn.execute(
                    "INSERT INTO patients VALUES (?, NULL, ?, '1815-12-10', '{}', NULL, 1, ?, ?, 0, ?)",
                    (pid, name, stamp, seq, stamp),
                )
            await conn.execute(
                "INSERT INTO records VALUES (?, ?, 'Observation', ?, 1, ?, 3, 0, ?)",
                ("33333333-3333-4333-8333-333333333333", "11111111-1111-4111-8111-111111111111",
                 '{"v": 1}', "2025-09-12T19:25:18.333000Z", "2025-09-12T19:25:18.333000Z"),
            )

    asyncio.run(run())
