"""The one write path: seq and updated_at, atomicity, two processes on one file.

SQLite's write path (pragmas, WAL checkpoints, the file shared by two processes); the same
guarantees on PostgreSQL: tests/storage/test_contract.py, test_postgres.py and
tests/sync/test_guarantee.py."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
import uuid

import pytest

from healthsync.resources import Resources
from healthsync.storage import Database
from tests.support import ROOT


def all_changes(path) -> list[tuple[int, str, str]]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT seq, updated_at, id FROM patients UNION ALL SELECT seq, updated_at, id FROM records ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()
    return rows


def assert_strictly_increasing(rows) -> None:
    seqs = [r[0] for r in rows]
    stamps = [r[1] for r in rows]
    assert seqs == sorted(set(seqs)), "seq must be unique and increasing"
    assert stamps == sorted(set(stamps)), "updated_at must be unique and increase with seq"


async def test_seq_and_updated_at_across_both_tables(tmp_path):
    db = Database(tmp_path / "h.db")
    res = Resources(db)
    try:
        p = await res.create_patient({"name": "A"})
        r = await res.create_record({"patient": p["id"], "resource_type": "Observation", "data": {}})
        p2 = await res.patch_patient(p["id"], {"name": "B"}, None)
        r2 = await res.patch_record(r["id"], {"data": {"x": 1}}, None)
        assert p2["updated_at"] > r["updated_at"] > p["updated_at"]
        assert r2["updated_at"] > p2["updated_at"]
        assert (p2["server_version"], r2["server_version"]) == (2, 2)
        await res.delete_patient(p["id"], None)  # tombstones the record too: two new seqs
        head = await db.fetchone("SELECT seq FROM clock")
        assert head[0] == 6
    finally:
        await db.close()
    rows = all_changes(tmp_path / "h.db")
    assert_strictly_increasing(rows)
    assert [r[0] for r in rows] == [5, 6]


async def test_many_rows_in_one_transaction_get_distinct_stamps(tmp_path):
    db = Database(tmp_path / "h.db")
    try:
        async def many(tx):
            for i in range(500):
                await tx.insert_patient(f"id-{i}", None, f"P{i}", None, "{}", None)
        await db.write(many)
    finally:
        await db.close()
    rows = all_changes(tmp_path / "h.db")
    assert len(rows) == 500
    assert_strictly_increasing(rows)


async def test_clock_stepping_back_still_increases(tmp_path, monkeypatch):
    from healthsync import clock

    db = Database(tmp_path / "h.db")
    res = Resources(db)
    try:
        first = await res.create_patient({"name": "A"})
        monkeypatch.setattr(clock, "now_us", lambda: 0)  # the wall clock jumps back to 1970
        second = await res.create_patient({"name": "B"})
        assert second["updated_at"] > first["updated_at"]
    finally:
        await db.close()


async def test_failed_write_rolls_back_everything_and_calls_no_hook(tmp_path):
    db = Database(tmp_path / "h.db")
    seen = []
    db.add_commit_hook(seen.append)
    try:
        async def half(tx):
            await tx.insert_patient("a", None, "A", None, "{}", None)
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            await db.write(half)
        assert await db.fetchall("SELECT * FROM patients") == []
        assert (await db.fetchone("SELECT seq, last_us FROM clock")) == (0, 0)
        assert seen == []

        async def ok(tx):
            await tx.insert_patient("b", None, "B", None, "{}", None)

        await db.write(ok)
        assert len(seen) == 1 and seen[0].head_seq == 1 and seen[0].changed == 1
    finally:
        await db.close()


async def test_concurrent_coroutines_never_interleave(tmp_path):
    db = Database(tmp_path / "h.db")
    res = Resources(db)
    try:
        await asyncio.gather(*(res.create_patient({"name": f"P{i}"}) for i in range(100)))
    finally:
        await db.close()
    rows = all_changes(tmp_path / "h.db")
    assert len(rows) == 100
    assert_strictly_increasing(rows)


async def test_pragmas(tmp_path):
    db = Database(tmp_path / "h.db")
    try:
        await db.open()
        assert (await db.fetchone("PRAGMA journal_mode"))[0] == "wal"
        async def pragmas(tx):
            sync = await (await tx.conn.execute("PRAGMA synchronous")).fetchone()
            fk = await (await tx.conn.execute("PRAGMA foreign_keys")).fetchone()
            return sync[0], fk[0]
        assert await db.write(pragmas) == (2, 1)  # FULL, on
    finally:
        await db.close()


async def test_closed_database_refuses(tmp_path):
    from healthsync.storage import DatabaseClosed

    db = Database(tmp_path / "h.db")
    await db.open()
    await db.close()
    await db.close()  # idempotent
    with pytest.raises(DatabaseClosed):
        await db.fetchall("SELECT 1")


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, {root!r})
    from healthsync.resources import Resources
    from healthsync.storage import Database

    async def main():
        db = Database({path!r})
        res = Resources(db)
        for i in range({n}):
            p = await res.create_patient({{"name": "child %d" % i}})
            await res.create_record({{"patient": p["id"], "resource_type": "Observation", "data": {{}}}})
        await db.close()

    asyncio.run(main())
    """
)


@pytest.mark.slow
async def test_two_processes_writing_one_file(tmp_path):
    path = tmp_path / "h.db"
    db = Database(path)
    await db.open()
    child = subprocess.Popen([sys.executable, "-c", WRITER.format(root=str(ROOT), path=str(path), n=300)])
    res = Resources(db)
    try:
        for i in range(300):
            p = await res.create_patient({"name": f"parent {i}"})
            await res.create_record({"patient": p["id"], "resource_type": "Condition", "data": {}})
            if i % 50 == 0:
                await asyncio.sleep(0.01)
        while child.poll() is None:
            await asyncio.sleep(0.05)
        assert child.returncode == 0
        head = await db.fetchone("SELECT seq FROM clock")
    finally:
        await db.close()
    rows = all_changes(path)
    assert len(rows) == 1200 and head[0] == 1200
    assert_strictly_increasing(rows)


async def _write_blobs(db: Database, n: int, size: int) -> None:
    """``n`` rows of about ``size`` bytes each, in one write."""
    batch = uuid.uuid4().hex

    async def run(tx):
        await tx.conn.executemany(
            "INSERT INTO devices (device_id, first_seen, last_seen, last_upload_at) VALUES (?, ?, ?, ?)",
            [(f"{batch}-{i}-{'x' * size}", "t", "t", "t") for i in range(n)],
        )

    await db.write(run)


async def test_background_checkpoint_copies_the_wal_after_the_commit(tmp_path):
    db = Database(tmp_path / "h.db", checkpoint_pages=100)
    try:
        await db.open()
        assert (await (await db._writer.execute("PRAGMA wal_autocheckpoint")).fetchone())[0] == 0
        await _write_blobs(db, 400, 1000)  # over 100 pages
        assert db._checkpoint_task is not None, "a commit past the threshold starts a checkpoint"
        await db._checkpoint_task
        assert db.checkpoints == 1
        assert db._pages_waiting() == 0
        # A small commit below the threshold starts none.
        await _write_blobs(db, 1, 10)
        assert db._checkpoint_task is None and db.checkpoints == 1
        rows = await db.fetchone("SELECT count(*) FROM devices")
        assert rows[0] == 401
    finally:
        await db.close()
    conn = sqlite3.connect(tmp_path / "h.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT count(*) FROM devices").fetchone()[0] == 401
    finally:
        conn.close()


async def test_a_reader_holding_pages_does_not_make_every_commit_checkpoint(tmp_path):
    db = Database(tmp_path / "h.db", checkpoint_pages=100)
    try:
        await db.open()
        held = asyncio.Event()
        release = asyncio.Event()

        async def hold(conn):
            await conn.execute_fetchall("SELECT count(*) FROM devices")  # pins this snapshot
            held.set()
            await release.wait()

        reader = asyncio.create_task(db.read(hold))
        await held.wait()
        await _write_blobs(db, 400, 1000)
        await db._checkpoint_task
        assert db._pages_waiting() > 100, "the open snapshot keeps the new pages in the WAL"
        await _write_blobs(db, 1, 10)
        assert db._checkpoint_task is None, "pages a reader holds do not count again"
        release.set()
        await reader
        await _write_blobs(db, 400, 1000)
        await db._checkpoint_task
        assert db._pages_waiting() == 0
        assert db.checkpoints == 2
    finally:
        await db.close()


async def test_checkpoints_stay_in_the_commit_by_default(tmp_path):
    db = Database(tmp_path / "h.db")
    try:
        await db.open()
        assert (await (await db._writer.execute("PRAGMA wal_autocheckpoint")).fetchone())[0] == 1000
        await _write_blobs(db, 200, 1000)
        assert db._checkpoint_task is None and db.checkpoints == 0
    finally:
        await db.close()
    assert not (tmp_path / "h.db-wal").exists() or (tmp_path / "h.db-wal").stat().st_size == 0


@pytest.mark.parametrize("lag", [-5, 0, 1, 10_000_000])
def test_stamps_follow_the_clock_rules_across_a_second(lag):
    """``WriteTx.stamp`` inlines ``clock.step`` and ``clock.format_us``: same answers."""
    from healthsync import clock
    from healthsync.storage.sqlite.tx import WriteTx

    last = 1_760_000_000 * 1_000_000 - 3  # three microseconds before a whole second
    tx = WriteTx(None, 41, last)
    tx._now = last + lag
    expected_us, expected_seq = last, 41
    for _ in range(8):
        expected_us, expected_seq = clock.step(expected_us, tx._now), expected_seq + 1
        assert tx.stamp() == (expected_seq, clock.format_us(expected_us))
    assert tx.last_us == expected_us and tx.changed == 8
