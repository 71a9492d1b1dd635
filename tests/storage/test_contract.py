"""The storage contract: what every backend of ``storage.interface.Storage`` must do.

One suite, run per backend (Huey's ``tests/test_storage.py`` is the model):
the ``storage`` fixture is parametrised by backend name, only "sqlite" today.
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
from healthsync.storage import CommitInfo, Database, DatabaseClosed, Storage
from healthsync.sync import download as dl
from tests.support import ROOT

BACKENDS = ["sqlite"]


def build(backend: str, where: Path) -> Storage:
    if backend == "sqlite":
        return Database(where / "healthsync.db", readers=2)
    raise AssertionError(backend)


#: A second process's storage, as Python source (``{where}``: the tmp dir).
OTHER_PROCESS = {
    "sqlite": "from healthsync.storage import Database\ndb = Database({where!r} + '/healthsync.db', readers=1)",
}


@pytest.fixture(params=BACKENDS)
def storage(request: pytest.FixtureRequest, tmp_path: Path, io_loop: Any) -> Any:
    db = build(request.param, tmp_path)
    db.backend = request.param  # type: ignore[attr-defined]
    db.where = tmp_path  # type: ignore[attr-defined]
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
        make=OTHER_PROCESS[storage.backend].format(where=str(storage.where)),
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
