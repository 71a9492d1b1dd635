"""The storage contract: what every backend of ``storage.interface.Storage`` must do.

One suite, run per backend (Huey's ``tests/test_storage.py`` is the model):
the ``storage`` fixture is parametrised by backend name: "sqlite", and
"postgres" on a database of the test run's own on a real PostgreSQL
(``postgres_url``: an empty schema per test).
The tests speak the interface and the services above it, never a backend's
SQL, so a second backend passes or fails them for the same reasons.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest

from healthsync import clock
from healthsync.errors import Conflict, Gone, NotFound
from healthsync.resources import Resources
from healthsync.storage import CommitInfo, Database, DatabaseClosed, PatientRow, RecordRow, Storage, keyset_page
from healthsync.storage.postgres import BackupsArePostgres, PostgresDatabase
from healthsync.sync import download as dl
from tests.support import ROOT

BACKENDS = ["sqlite", "postgres"]


def build(backend: str, where: Path, url: str | None = None) -> Storage:
    if backend == "sqlite":
        return Database(where / "healthsync.db", readers=2)
    if backend == "postgres":
        assert url is not None
        return PostgresDatabase(url, connections=3)
    raise AssertionError(backend)


#: A second process's storage, as Python source (``{where}``: the tmp dir, ``{url}``: the database URL).
OTHER_PROCESS = {
    "sqlite": "from healthsync.storage import Database\ndb = Database({where!r} + '/healthsync.db', readers=1)",
    "postgres": "from healthsync.storage.postgres import PostgresDatabase\ndb = PostgresDatabase({url!r})",
}


@pytest.fixture(params=BACKENDS)
def storage(request: pytest.FixtureRequest, tmp_path: Path, io_loop: Any) -> Any:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    db = build(request.param, tmp_path, url)
    db.backend = request.param  # type: ignore[attr-defined]
    db.where = tmp_path  # type: ignore[attr-defined]
    db.test_url = url  # type: ignore[attr-defined]
    io_loop.run_sync(db.open)
    yield db
    io_loop.run_sync(db.close)


def in_other_process(storage: Any, body: str) -> None:
    """Run ``body`` (async, with ``db`` open) in a process of its own."""
    script = textwrap.dedent(
        """
        import asyncio, sys
        sys.path.insert(0, {root!r})
        {make}

        async def main():
            await db.open()
            try:
        {body}
            finally:
                await db.close()

        asyncio.run(main())
        """
    ).format(
        root=str(ROOT),
        make=OTHER_PROCESS[storage.backend].format(where=str(storage.where), url=storage.test_url),
        body=textwrap.indent(textwrap.dedent(body), " " * 8),
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


# The write path ------------------------------------------------------------------


async def test_stamps_are_contiguous_and_strictly_increasing(storage):
    seen: list[tuple[int, str]] = []

    async def stamp(tx, n):
        return [tx.stamp() for _ in range(n)]

    for n in (1, 5, 1000, 2):
        seen += await storage.write(lambda tx, n=n: stamp(tx, n))
    assert [s for s, _ in seen] == list(range(1, len(seen) + 1))
    times = [t for _, t in seen]
    assert all(a < b for a, b in zip(times, times[1:], strict=False))
    assert all(clock.canonical(t) == t for t in times)
    head_seq, head_us = await storage.head()
    assert head_seq == len(seen) and clock.format_us(head_us) == times[-1]


async def test_versions_and_stamps_of_rows(storage):
    res = Resources(storage)
    p = await res.create_patient({"name": "A"})
    q = await res.replace_patient(p["id"], {"name": "B"}, None)
    assert p["server_version"] == 1
    assert q["server_version"] == 2 and q["updated_at"] > p["updated_at"]
    assert await storage.head() == (2, clock.parse(q["updated_at"]))


async def test_a_failed_write_leaves_nothing_and_calls_no_hook(storage):
    infos: list[CommitInfo] = []
    storage.add_commit_hook(infos.append)

    async def half(tx):
        tx.stamp()
        tx.emit({"type": "test"})
        await asyncio.sleep(0)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await storage.write(half)
    assert await storage.head() == (0, 0) and infos == []

    async def ok(tx):
        tx.stamp()
        tx.emit({"type": "test"})

    await storage.write(ok)
    assert len(infos) == 1 and infos[0].head_seq == 1 and infos[0].changed == 1
    assert infos[0].events == [{"type": "test"}]


async def test_writes_are_serialized(storage):
    async def stamp(tx):
        await asyncio.sleep(0)
        return tx.stamp()[0]

    got = await asyncio.gather(*(storage.write(stamp) for _ in range(50)))
    assert sorted(got) == list(range(1, 51))


# Named row operations: WriteTx's writes, Snapshot's reads ---------------------------


async def test_a_patient_and_its_record_inserted_read_updated_and_tombstoned(storage):
    ids = '[{"system":"s","value":"1"}]'
    p = await storage.write(lambda tx: tx.insert_patient("p1", "alice", "Ann", "1990-01-01", ids, None))
    assert p[:7] == ("p1", "alice", "Ann", "1990-01-01", ids, None, 1) and p[8] == 0
    assert await storage.read(lambda snap: snap.get_patient("p1")) == p
    r = await storage.write(lambda tx: tx.insert_record("r1", "p1", "Observation", '{"a":1}'))
    assert r[:5] == ("r1", "p1", "Observation", '{"a":1}', 1) and r[6] == 0 and r[5] > p[7]
    assert await storage.read(lambda snap: snap.get_record("r1")) == r

    async def update(tx):
        current = await tx.fetch_patient("p1")
        assert current == p
        return await tx.update_patient(current, "Anna", None, "[]", '{"x":1}')

    q = await storage.write(update)
    assert q[:7] == ("p1", "alice", "Anna", None, "[]", '{"x":1}', 2) and q[7] > r[5] and q[8] == 0
    assert await storage.read(lambda snap: snap.get_patient("p1")) == q

    async def tombstone(tx):
        return await tx.tombstone_patient(await tx.fetch_patient("p1"))

    gone, records_hit = await storage.write(tombstone)
    assert records_hit == 1 and gone[:6] == q[:6] and gone[6] == 3 and gone[8] == 1
    assert await storage.read(lambda snap: snap.get_patient("p1")) == gone
    record = await storage.read(lambda snap: snap.get_record("r1"))
    assert record[4] == 2 and record[6] == 1 and record[5] > gone[7]
    assert await storage.read(lambda snap: snap.get_patient("nobody")) is None
    assert await storage.write(lambda tx: tx.fetch_record("nothing")) is None
    live = await storage.read(lambda snap: snap.list_patients(include_deleted=False, limit=None, after=0))
    every = await storage.read(lambda snap: snap.list_patients(include_deleted=True, limit=None, after=0))
    assert live == [] and [row[:-1] for row in every] == [gone]
    assert (await storage.head())[0] == 5  # two inserts, an update, two tombstones


async def test_listings_page_by_their_key(storage):
    async def create(tx):
        return [await tx.insert_patient(f"p{i}", None, f"P{i}", None, "[]", None) for i in range(7)]

    made = await storage.write(create)
    seen: list[Any] = []
    after = 0
    while True:
        rows = await storage.read(
            lambda snap, after=after: snap.list_patients(include_deleted=False, limit=3, after=after)
        )
        assert len(rows) <= 4
        page, after = keyset_page(rows, 3, lambda row: row)
        seen += page
        if after is None:
            break
    assert seen == made


async def test_changes_after_pages_every_change_once_oldest_first(storage):
    async def create(tx):
        for i in range(4):
            await tx.insert_patient(f"p{i}", None, f"P{i}", None, "[]", None)
            await tx.insert_record(f"r{i}", f"p{i}", "Observation", f'{{"i":{i}}}')
            await tx.insert_record(f"c{i}", f"p{i}", "Condition", "{}")

    await storage.write(create)
    await storage.write(lambda tx: tx.tombstone_records([("r0", 1)]))  # r0 changes again, last
    everything = await storage.read(lambda snap: snap.changes_after(after_seq=0, limit=100))
    assert [row[0] for row in everything] == [1, *range(3, 14)]  # r0's first change (2) is superseded
    entries = [orjson.loads(row[2]) for row in everything]
    assert entries[-1]["server_id"] == "r0" and entries[-1]["deleted"] is True
    assert entries[0] == {
        "server_id": "p0", "resource_type": "Patient", "server_version": 1, "updated_at": everything[0][1],
        "deleted": False, "data": {"owner": None, "name": "P0", "dob": None, "identifiers": [], "fhir": None},
        "created_by": None,  # not made by an upload
    }
    assert [row[1] for row in everything] == sorted(row[1] for row in everything)

    by_seq: list[Any] = []
    after_seq = 0
    while rows := await storage.read(lambda snap, a=after_seq: snap.changes_after(after_seq=a, limit=5)):
        assert len(rows) <= 5
        by_seq += rows
        after_seq = rows[-1][0]
    assert by_seq == everything
    by_time: list[Any] = []
    after_time = clock.format_us(0)
    while rows := await storage.read(lambda snap, a=after_time: snap.changes_after(after_time=a, limit=5)):
        by_time += rows
        after_time = rows[-1][1]
    assert by_time == everything

    async def ids(**only: str) -> list[str]:
        rows = await storage.read(lambda snap: snap.changes_after(after_seq=0, limit=100, **only))
        return [orjson.loads(row[2])["server_id"] for row in rows]

    assert await ids(resource_type="Observation") == ["r1", "r2", "r3", "r0"]
    assert await ids(resource_type="Patient") == ["p0", "p1", "p2", "p3"]
    assert await ids(patient="p2") == ["p2", "r2", "c2"]
    assert await ids(patient="p2", resource_type="Condition") == ["c2"]
    pushed = await storage.read(lambda snap: snap.changes_for_push(0, 100))
    assert [row[:3] for row in pushed] == everything
    assert [row[3:] for row in pushed][:3] == [("Patient", "p0"), ("Condition", "p0"), ("Patient", "p1")]


async def test_rows_loaded_in_bulk_are_written_back_as_they_are(storage):
    async def create(tx):
        rows = []
        for i in range(3):
            seq, at = tx.stamp()
            rows.append(PatientRow(f"p{i}", "alice", f"P{i}", None, "[]", None, 1, at, 0, seq, at))
        await tx.write_patients(rows, [])
        await tx.insert_temp_ids([("dev", "t0", "p0", "Patient")])

    await storage.write(create)

    async def change(tx):
        loaded = await tx.load_patients({"p0", "p1", "missing"})
        assert sorted(loaded) == ["p0", "p1"] and loaded["p1"].name == "P1" and loaded["p1"].owner == "alice"
        row = loaded["p1"]
        row.name, row.version = "Q", row.version + 1
        row.seq, row.updated_at = tx.stamp()
        await tx.write_patients([], [row])
        return await tx.load_temp_ids("dev", {"t0", "t9"}), await tx.load_temp_ids("other", {"t0"})

    assert await storage.write(change) == ({"t0": ("p0", "Patient")}, {})
    p1 = await storage.read(lambda snap: snap.get_patient("p1"))
    assert p1[1:3] == ("alice", "Q") and p1[6] == 2
    assert [row[0] for row in await storage.read(lambda snap: snap.changes_after(after_seq=3, limit=10))] == [4]


async def test_many_rows_written_in_bulk_come_back_as_written(storage):
    """Large batches (a backend may write them another way than small ones: PostgreSQL
    copies them) keep every value, awkward text and NULLs included."""
    n = 700
    odd = 'tab\there, new\nline, back\\slash, quote " and \u00e9\u4e2d, \\N'

    def doc(i: int) -> str:
        return orjson.dumps({"i": i, "text": odd if i % 2 else None}).decode()

    async def create(tx):
        patients, records, temp = [], [], []
        for i in range(n):
            seq, at = tx.stamp()
            patients.append(PatientRow(f"p{i}", None if i % 3 else "alice", f"{odd} {i}",
                                       None if i % 2 else "2000-01-01", doc(i), None if i % 2 else doc(-i),
                                       1, at, 0, seq, at))
            temp.append(("dev", f"t{i}", f"p{i}", "Patient"))
        for i in range(n):
            seq, at = tx.stamp()
            records.append(RecordRow(f"r{i}", "p0", "Observation", doc(i), 1, at, 0, seq, at))
        await tx.write_patients(patients, [])
        await tx.write_records(records, [])
        await tx.insert_temp_ids(temp)

    await storage.write(create)

    async def change(tx):
        patients = await tx.load_patients({f"p{i}" for i in range(n)})
        records = await tx.load_records({f"r{i}" for i in range(n)})
        assert len(patients) == n and len(records) == n
        assert patients["p1"].name == f"{odd} 1" and patients["p1"].owner is None and patients["p1"].fhir is None
        assert records["r1"].data == doc(1)
        for i, row in enumerate(patients.values()):
            row.name, row.dob, row.fhir, row.version = f"new {odd} {i}", None, doc(i), row.version + 1
            row.seq, row.updated_at = tx.stamp()
        for row in records.values():
            row.patient, row.data, row.version = "p1", doc(-1), row.version + 1
            row.seq, row.updated_at = tx.stamp()
        await tx.write_patients([], list(patients.values()))
        await tx.write_records([], list(records.values()))
        return patients, records, await tx.load_temp_ids("dev", {f"t{i}" for i in range(n)})

    patients, records, temp = await storage.write(change)
    assert temp == {f"t{i}": (f"p{i}", "Patient") for i in range(n)}
    for i in (0, 1, n - 1):
        assert await storage.read(lambda snap, i=i: snap.get_patient(f"p{i}")) == patients[f"p{i}"].stored()
        assert await storage.read(lambda snap, i=i: snap.get_record(f"r{i}")) == records[f"r{i}"].stored()

    gone, hit = await storage.write(lambda tx: _tombstone(tx, "p1"))
    assert hit == n and gone[8] == 1
    rows = await storage.read(lambda snap: snap.list_records(include_deleted=True, limit=None, after=0, patient="p1"))
    assert len(rows) == n and all(r[6] == 1 and r[4] == 3 for r in rows)
    seqs = [r[0] for r in await storage.read(lambda snap: snap.changes_after(after_seq=0, limit=10 * n))]
    assert seqs == sorted(seqs) and len(seqs) == 2 * n and seqs[-1] == (await storage.head())[0] == 5 * n + 1


async def test_a_bulk_write_that_fails_half_way_leaves_nothing(storage):
    """A large batch whose rows are written, then one that breaks a constraint
    (a duplicate id), or an error after the writes: all or nothing, and the
    storage writes again afterwards."""

    def rows(tx, ids):
        out = []
        for i in ids:
            seq, at = tx.stamp()
            out.append(PatientRow(i, None, "N", None, "{}", None, 1, at, 0, seq, at))
        return out

    async def duplicate(tx):
        await tx.write_patients(rows(tx, [f"p{i}" for i in range(600)] + ["p7"]), [])

    async def after_writes(tx):
        new = rows(tx, [f"p{i}" for i in range(600)])
        await tx.write_patients(new, [])
        for row in new:
            row.name, row.version = "M", 2
            row.seq, row.updated_at = tx.stamp()
        await tx.write_patients([], new)
        await tx.insert_temp_ids([("dev", f"t{i}", f"p{i}", "Patient") for i in range(600)])
        raise RuntimeError("boom")

    with pytest.raises(Exception, match="(?i)unique|duplicate|p7"):
        await storage.write(duplicate)
    with pytest.raises(RuntimeError):
        await storage.write(after_writes)
    assert await storage.head() == (0, 0)
    assert await storage.read(lambda snap: snap.list_patients(include_deleted=True, limit=None, after=0)) == []
    assert await storage.write(lambda tx: tx.load_temp_ids("dev", {"t1"})) == {}
    await storage.write(lambda tx: tx.write_patients(rows(tx, ["p1"]), []))
    assert (await storage.read(lambda snap: snap.get_patient("p1")))[0] == "p1"


async def _tombstone(tx, patient_id):
    return await tx.tombstone_patient(await tx.fetch_patient(patient_id))


# Snapshots and the commit signal ---------------------------------------------------


async def test_a_snapshot_returns_the_head_with_its_rows(storage):
    res = Resources(storage)
    stop = asyncio.Event()

    async def writer():
        i = 0
        while not stop.is_set():
            await res.create_patient({"name": f"P{i}"})
            i += 1

    task = asyncio.ensure_future(writer())
    try:
        for _ in range(20):
            page = await storage.read(lambda snap: dl.read_page(snap, after_seq=0, after_time=None, limit=100_000))
            assert not page.has_more
            # everything up to the head, nothing after it
            assert len(page.entries) == page.cursor
            await asyncio.sleep(0.005)
    finally:
        stop.set()
        await task


async def test_the_commit_signal_changes_after_another_process_commits(storage):
    before = await storage.commit_signal()
    assert await storage.commit_signal() == before  # nothing committed
    in_other_process(storage, "await db.create_token('elsewhere', 'device', 'h' * 64)")
    assert await storage.commit_signal() != before
    assert await storage.find_token("h" * 64) == ("elsewhere", "device")


async def test_the_commit_signal_changes_after_this_process_commits(storage):
    before = await storage.commit_signal()
    await storage.create_token("here", "admin", "x" * 64)
    assert await storage.commit_signal() != before


async def test_listen_hears_another_process_commit_where_the_backend_pushes_commits(storage):
    heard: list[int] = []
    task = asyncio.ensure_future(storage.listen(lambda: heard.append(1)))
    try:
        if not storage.pushes_commits:  # SQLite: the hub polls; listen has nothing to do
            await asyncio.wait_for(task, 5)
            assert heard == [] and not storage.listening and storage.listen_reconnects == 0
            return
        for _ in range(200):
            if storage.listening and heard:
                break
            await asyncio.sleep(0.05)
        assert storage.listening and heard == [1]  # "look now" once it listens
        in_other_process(storage, "await db.create_token('elsewhere', 'device', 'h' * 64)")
        for _ in range(200):
            if len(heard) > 1:
                break
            await asyncio.sleep(0.05)
        assert heard == [1, 1] and storage.listen_reconnects == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_rate_tokens_are_taken_per_key_and_refused_with_a_wait(storage):
    assert [await storage.take_rate_token("a", 3) for _ in range(3)] == [None, None, None]
    assert 19 <= await storage.take_rate_token("a", 3) <= 20  # one token a 20 s
    assert await storage.take_rate_token("b", 3) is None
    if storage.backend == "postgres":  # every process of the site shares the buckets
        in_other_process(storage, "assert await db.take_rate_token('c', 2) is None")
        assert await storage.take_rate_token("c", 2) is None
        assert await storage.take_rate_token("c", 2) == 30


async def test_probe_and_closed(storage):
    assert await storage.probe() == 0
    await storage.close()
    assert storage.closed
    with pytest.raises(DatabaseClosed):
        await storage.head()
    with pytest.raises(DatabaseClosed):
        await storage.write(lambda tx: asyncio.sleep(0))


# Tokens and audit -------------------------------------------------------------------


async def test_tokens(storage):
    await storage.create_token("tab-1", "device", "a" * 64)
    with pytest.raises(Conflict):
        await storage.create_token("tab-1", "device", "b" * 64)
    assert await storage.find_token("a" * 64) == ("tab-1", "device")
    assert await storage.revoke_token("tab-1") == 1
    assert await storage.revoke_token("tab-1") == 0
    assert await storage.find_token("a" * 64) is None
    await storage.create_token("tab-1", "device", "b" * 64)  # a live name may be reused once revoked
    listed = await storage.list_tokens()
    assert sorted((t["name"], t["revoked_at"] is None) for t in listed) == [("tab-1", False), ("tab-1", True)]
    assert all(set(t) == {"name", "role", "created_at", "revoked_at"} for t in listed)


async def test_audit_is_appended_and_listed_in_order(storage):
    at = clock.format_us(clock.now_us())
    entries = [(at, f"who{i % 2}", "admin", "GET", f"/api/x/{i}", None, 200, "127.0.0.1") for i in range(5)]
    await storage.append_audit(entries)
    rows = await storage.list_audit(who=None, since=None, limit=10, after=0)
    assert [r["path"] for r in rows] == [f"/api/x/{i}" for i in range(5)]
    page = await storage.list_audit(who=None, since=None, limit=2, after=0)
    rest = await storage.list_audit(who=None, since=None, limit=10, after=page[-1]["id"])
    assert [r["path"] for r in page + rest] == [r["path"] for r in rows]
    assert [r["path"] for r in await storage.list_audit(who="who1", since=None, limit=10, after=0)] == [
        "/api/x/1", "/api/x/3"
    ]


# The batch lifecycle -------------------------------------------------------------------


def stored_upload(batch_id: str, n: int = 2) -> str:
    return orjson.dumps({"device_id": "tab-1", "batch_id": batch_id, "changes": [
        {"operation": "create", "resource_type": "Patient", "client_temp_id": f"t{i}", "payload": {"name": f"B{i}"}}
        for i in range(n)
    ]}).decode()


async def apply_marker(tx, request):
    """An apply that stamps one row per change (what a real apply would count)."""
    changes = orjson.loads(request)["changes"]
    for _ in changes:
        tx.stamp()
    return {"results": [], "conflicts": [], "server_time": clock.format_us(0), "cursor": "0", "applied": len(changes)}


async def test_batch_store_claim_apply_once_done(storage):
    await storage.store_batch("b1", "tab-1", stored_upload("b1"), 2)
    batch = await storage.get_batch("b1")
    assert batch["status"] == "pending" and batch["device_id"] == "tab-1" and batch["change_count"] == 2
    assert await storage.claim_batch("b1", "task-1") == "tab-1"
    with pytest.raises(Conflict) as info:
        await storage.claim_batch("b1", "task-2")
    assert "processing" in info.value.message
    assert await storage.record_batch_worker("b1", "task-1", "host:1:x")
    assert not await storage.record_batch_worker("b1", "task-other", "host:2:y")
    assert await storage.heartbeat_batches("host:1:x") == 1
    assert not await storage.apply_claimed_batch("b1", "task-other", apply_marker)  # not its claim
    assert (await storage.head())[0] == 0
    assert await storage.apply_claimed_batch("b1", "task-1", apply_marker)
    assert not await storage.apply_claimed_batch("b1", "task-1", apply_marker)  # once only
    assert (await storage.head())[0] == 2
    batch = await storage.get_batch("b1")
    assert batch["status"] == "done" and batch["attempts"] == 1 and batch["finished_at"] is not None
    with pytest.raises(Conflict):
        await storage.claim_batch("b1", "task-3")
    with pytest.raises(NotFound):
        await storage.claim_batch("nope", "task-4")


async def test_a_claim_the_queue_never_took_is_released(storage):
    await storage.store_batch("r1", "tab-1", stored_upload("r1"), 2)
    await storage.claim_batch("r1", "task-1")
    assert not await storage.release_batch("r1", "task-other")  # not its claim
    assert await storage.release_batch("r1", "task-1")
    assert not await storage.release_batch("r1", "task-1")  # once only
    batch = await storage.get_batch("r1")
    assert batch["status"] == "pending" and batch["attempts"] == 0
    assert not await storage.apply_claimed_batch("r1", "task-1", apply_marker)  # the released claim is gone
    await storage.claim_batch("r1", "task-2")
    assert await storage.apply_claimed_batch("r1", "task-2", apply_marker)


async def test_a_failed_apply_rolls_back_and_the_batch_can_fail_and_be_claimed_again(storage):
    await storage.store_batch("b2", "tab-1", stored_upload("b2"), 2)
    await storage.claim_batch("b2", "task-1")

    async def broken(tx, request):
        tx.stamp()
        raise ValueError("bad batch")

    with pytest.raises(ValueError):
        await storage.apply_claimed_batch("b2", "task-1", broken)
    assert (await storage.head())[0] == 0
    assert not await storage.fail_batch("b2", "task-other", "not mine")
    assert await storage.fail_batch("b2", "task-1", "ValueError: bad batch")
    batch = await storage.get_batch("b2")
    assert batch["status"] == "failed" and batch["error"] == "ValueError: bad batch"
    await storage.claim_batch("b2", "task-2")
    batch = await storage.get_batch("b2")
    assert batch["status"] == "processing" and batch["attempts"] == 2 and batch["error"] is None


async def test_stale_claims_are_reclaimed_under_a_new_task(storage):
    for b in ("s1", "s2"):
        await storage.store_batch(b, "tab-1", stored_upload(b), 2)
        await storage.claim_batch(b, f"old-{b}")
    await storage.record_batch_worker("s1", "old-s1", "gone:1:x")
    seen = []

    def pick(claim):
        seen.append(claim)
        return "new-s1" if claim.worker == "gone:1:x" else None

    moved = await storage.reclaim_batches(pick)
    assert sorted(c.batch_id for c in seen) == ["s1", "s2"]
    assert [(c.batch_id, c.task_id, t) for c, t in moved] == [("s1", "old-s1", "new-s1")]
    assert not await storage.apply_claimed_batch("s1", "old-s1", apply_marker)  # the old task lost it
    assert await storage.apply_claimed_batch("s1", "new-s1", apply_marker)
    assert (await storage.get_batch("s1"))["attempts"] == 2


async def test_batch_listing_events_and_retention(storage):
    start = clock.format_us(clock.now_us())
    for b in ("r1", "r2", "r3"):
        await storage.store_batch(b, "tab-1" if b != "r3" else "tab-2", stored_upload(b), 2)
    await storage.claim_batch("r1", "t1")
    await storage.apply_claimed_batch("r1", "t1", apply_marker)
    items, after = await storage.list_batches(device_id=None, status=None, limit=2, after=0)
    assert [b["batch_id"] for b in items] == ["r3", "r2"] and after is not None
    items, after = await storage.list_batches(device_id=None, status=None, limit=2, after=after)
    assert [b["batch_id"] for b in items] == ["r1"] and after is None
    items, _ = await storage.list_batches(device_id="tab-2", status=None, limit=None, after=0)
    assert [b["batch_id"] for b in items] == ["r3"]
    events = await storage.batch_events_since(start)
    assert {(e[0], e[2]) for e in events} >= {("r1", "done"), ("r2", "pending"), ("r3", "pending")}
    assert [e[3] for e in events] == sorted(e[3] for e in events)
    assert await storage.purge_batches(start) == 0  # finished after the cutoff
    assert await storage.purge_batches(clock.format_us(clock.now_us() + 1_000_000)) == 1  # done ones only
    assert await storage.get_batch("r1") is None and await storage.get_batch("r2") is not None


# Devices, purge, backup ------------------------------------------------------------------


async def test_tombstones_purge_and_devices(storage):
    res = Resources(storage)
    p = await res.create_patient({"name": "gone"})
    await res.delete_patient(p["id"], None)
    head = (await storage.head())[0]
    assert await storage.purge_tombstones(clock.format_us(0)) == 0
    assert await storage.purge_tombstones(clock.format_us(clock.now_us() + 1_000_000)) == 1
    with pytest.raises(Gone):
        await dl.check_cursor(storage, 1)
    await dl.check_cursor(storage, head)  # at the horizon: complete
    assert await storage.list_devices() == []


async def test_backup_is_a_consistent_copy(storage, tmp_path):
    if storage.backend == "postgres":  # backups are PostgreSQL's own: the storage says so
        with pytest.raises(BackupsArePostgres, match="pg_dump"):
            await storage.backup(tmp_path / "copies" / "one.db")
        with pytest.raises(BackupsArePostgres, match="pg_restore"):
            await storage.restore(tmp_path / "copies" / "one.db")
        return
    res = Resources(storage)
    stop = asyncio.Event()

    async def writer():
        while not stop.is_set():
            await res.create_patient({"name": "copy me"})

    task = asyncio.ensure_future(writer())
    try:
        await asyncio.sleep(0.05)
        dest = await storage.backup(tmp_path / "copies" / "one.db")
    finally:
        stop.set()
        await task
    copy = build(storage.backend, tmp_path / "restored")
    try:
        await copy.restore(dest)
        await copy.open()
        page = await copy.read(lambda snap: dl.read_page(snap, after_seq=0, after_time=None, limit=100_000))
        assert len(page.entries) == page.cursor > 0  # a prefix of seq, nothing torn
    finally:
        await copy.close()
