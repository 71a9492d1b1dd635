"""Async uploads, trigger and status with a real Huey consumer in this process."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid

import orjson
import pytest

from healthsync.batches import claim, purge_old_batches, requeue_stale, run_claimed_batch
from healthsync.storage import Database, make_storage
from healthsync.tasks import make_huey
from tests.support.databases import execute
from tests.support.http import patient_changes, wait_status
from tests.support.servers import make_settings

# On PostgreSQL the queue is whatever make_huey gives (SQLite in the data dir for now).
pytestmark = pytest.mark.both_backends


@pytest.fixture
def settings(settings_with):
    return settings_with(embedded_worker=True, task_retry_delay=0.2, busy_timeout_ms=200)


async def patient_count(db) -> int:
    return len(await db.read(lambda snap: snap.list_patients(include_deleted=False, limit=None, after=0)))



async def test_async_upload_trigger_poll_done(api):
    p = await api.new_patient()
    changes = [*patient_changes(3), {"operation": "create", "resource_type": "Observation", "client_temp_id": "o1",
                                     "payload": {"patient_temp_id": "p0", "v": 1}},
               {"operation": "update", "resource_type": "Patient", "server_id": p["id"], "base_version": 9,
                "payload": {"name": "conflicting"}}]
    resp = await api.post("/api/sync/upload/", {"device_id": "tab-1", "changes": changes, "async": True})
    assert resp.status == 202
    batch_id = resp.json["batch_id"]
    assert resp.json == {"batch_id": batch_id, "status": "pending"}
    pending = (await api.get(f"/api/sync/batches/{batch_id}/")).json
    assert pending["status"] == "pending" and pending["change_count"] == 5 and "results" not in pending
    assert len((await api.get("/api/patients/")).json) == 1  # nothing applied yet

    trig = await api.post(f"/api/sync/trigger/{batch_id}/")
    assert trig.status == 202
    assert trig.json["status"] == "task started" and isinstance(trig.json["task_id"], str)
    done = await wait_status(api, batch_id, "done")
    assert done["task_id"] == trig.json["task_id"] and done["finished_at"] and done["error"] is None
    assert [r["status"] for r in done["results"]] == ["created"] * 4 + ["conflict"]
    assert done["conflicts"] == [{"server_id": p["id"], "reason": "version_mismatch"}]
    assert len((await api.get("/api/patients/")).json) == 4
    # the same changes uploaded synchronously by another device give the same outcomes
    sync = await api.post("/api/sync/upload/", {"device_id": "tab-2", "changes": changes})
    assert [r["status"] for r in sync.json["results"]] == [r["status"] for r in done["results"]]
    # the batch is listed for its device
    listed = (await api.get("/api/sync/batches/?device_id=tab-1")).json
    assert [b["batch_id"] for b in listed] == [batch_id]


async def test_double_trigger_and_trigger_while_processing_or_done(api):
    resp = await api.post("/api/sync/upload/", {"device_id": "d", "changes": patient_changes(2000), "async": True})
    batch_id = resp.json["batch_id"]
    first, second = await asyncio.gather(api.post(f"/api/sync/trigger/{batch_id}/"),
                                         api.post(f"/api/sync/trigger/{batch_id}/"))
    assert sorted([first.status, second.status]) == [202, 409]
    refused = first if first.status == 409 else second
    assert refused.json["status"] in ("processing", "done") and "already" in refused.json["error"]
    await wait_status(api, batch_id, "done")
    again = await api.post(f"/api/sync/trigger/{batch_id}/")
    assert again.status == 409 and again.json["status"] == "done"
    assert len((await api.get("/api/patients/")).json) == 2000


async def test_trigger_unknown_or_malformed(api):
    assert (await api.post(f"/api/sync/trigger/{uuid.uuid4()}/")).status == 404
    bad = await api.post("/api/sync/trigger/not-a-uuid/")
    assert bad.status == 400 and bad.json["details"][0]["field"] == "batch_id"
    assert (await api.get(f"/api/sync/batches/{uuid.uuid4()}/")).status == 404
    assert (await api.get("/api/sync/batches/?status=weird")).status == 400
    assert (await api.get(f"/api/sync/trigger/{uuid.uuid4()}/")).status == 405


async def test_client_batch_id_for_async_upload_is_idempotent(api):
    batch_id = str(uuid.uuid4())
    body = {"device_id": "d", "changes": patient_changes(2), "async": True, "batch_id": batch_id}
    first = await api.post("/api/sync/upload/", body)
    assert first.status == 202
    # a retry while pending (the first answer was lost) gets that answer again
    again = await api.post("/api/sync/upload/", body)
    assert again.status == 202 and again.json == first.json == {"batch_id": batch_id, "status": "pending"}
    assert len((await api.get("/api/sync/batches/?device_id=d")).json) == 1
    await api.post(f"/api/sync/trigger/{batch_id}/")
    done = await wait_status(api, batch_id, "done")
    replay = await api.post("/api/sync/upload/", body)
    assert replay.status == 200 and replay.json["batch_id"] == batch_id
    assert replay.json["results"] == done["results"]
    assert len((await api.get("/api/patients/")).json) == 2


@pytest.mark.expect_error_logs
async def test_failing_batch_ends_failed_and_can_be_triggered_again(api, settings):
    resp = await api.post("/api/sync/upload/", {"device_id": "d", "changes": patient_changes(1), "async": True})
    batch_id = resp.json["batch_id"]
    execute(settings, "UPDATE batches SET request = '{\"device_id\": \"d\", \"changes\": 5}' WHERE id = ?", batch_id)
    await api.post(f"/api/sync/trigger/{batch_id}/")
    failed = await wait_status(api, batch_id, "failed")
    assert "changes" in failed["error"]
    assert (await api.get("/api/patients/")).json == []
    # a retried upload of it learns that it failed, and why (trigger it again)
    retry = await api.post("/api/sync/upload/", {"device_id": "d", "changes": patient_changes(1), "async": True,
                                                 "batch_id": batch_id})
    assert retry.status == 202
    assert retry.json == {"batch_id": batch_id, "status": "failed", "error": failed["error"]}
    # mend the stored request (as an operator could) and trigger again
    execute(settings, "UPDATE batches SET request = ? WHERE id = ?",
            orjson.dumps({"device_id": "d", "changes": patient_changes(1)}).decode(), batch_id)
    assert (await api.post(f"/api/sync/trigger/{batch_id}/")).status == 202
    done = await wait_status(api, batch_id, "done")
    assert done["attempts"] == 2 and len((await api.get("/api/patients/")).json) == 1


@pytest.mark.sqlite_only  # SQLite's write lock held by another connection
async def test_busy_database_is_retried_with_backoff(api, settings):
    resp = await api.post("/api/sync/upload/", {"device_id": "d", "changes": patient_changes(5), "async": True})
    batch_id = resp.json["batch_id"]
    blocker = sqlite3.connect(settings.db_path, isolation_level=None)
    trig = await api.post(f"/api/sync/trigger/{batch_id}/")
    assert trig.status == 202
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    await asyncio.sleep(0.6)
    blocker.execute("ROLLBACK")
    blocker.close()
    done = await wait_status(api, batch_id, "done")
    assert len(done["results"]) == 5


async def test_requeue_after_a_dead_worker_applies_exactly_once(settings_with):
    # No consumer here: drive the claims by hand, as two workers would.
    settings = settings_with(batch_lease_seconds=0.2)
    huey = make_huey(settings)
    db = await make_storage(settings).open()
    try:
        from healthsync.sync.envelope import parse_upload
        from healthsync.sync.service import SyncService

        req = parse_upload({"device_id": "d", "changes": patient_changes(50), "async": True}, 10_000)
        _, body = await SyncService(db).upload(req)
        batch_id = body["batch_id"]
        dead_task = await claim(db, huey, batch_id)  # this worker "dies" before running it
        assert await requeue_stale(db, huey, 60) == []  # lease not over yet
        await asyncio.sleep(0.3)
        assert await requeue_stale(db, huey, 0.2) == [batch_id]
        new_task = (await db.get_batch(batch_id))["task_id"]
        assert new_task != dead_task
        # the stale task wakes up late: the claim is not its own, it applies nothing
        assert await run_claimed_batch(settings, batch_id, dead_task, final=True) == "skipped"
        assert await run_claimed_batch(settings, batch_id, new_task, final=True) == "done"
        assert await run_claimed_batch(settings, batch_id, new_task, final=True) == "skipped"
        assert await patient_count(db) == 50
        # retention: a done batch older than the retention is purged
        assert await purge_old_batches(db, 1) == 0
        await asyncio.sleep(0.01)
        assert await purge_old_batches(db, 1e-9) == 1
    finally:
        await db.close()
        huey.storage.close()


def test_huey_task_logic_in_immediate_mode(settings_with):
    settings = settings_with()
    huey = make_huey(settings)
    huey.immediate = True

    async def store() -> str:
        from healthsync.sync.envelope import parse_upload
        from healthsync.sync.service import SyncService

        db = await make_storage(settings).open()
        try:
            req = parse_upload({"device_id": "d", "changes": patient_changes(3), "async": True}, 10_000)
            _, body = await SyncService(db).upload(req)
            # claimed without being queued
            assert await db.claim_batch(body["batch_id"], "manual-task") == "d"
            return body["batch_id"]
        finally:
            await db.close()

    async def status(batch_id: str) -> tuple[str, int]:
        db = await make_storage(settings).open()
        try:
            return (await db.get_batch(batch_id))["status"], await patient_count(db)
        finally:
            await db.close()

    batch_id = asyncio.run(store())
    # immediate mode runs the task inline; its own id does not hold the claim
    result = threading.Thread(target=lambda: huey.apply_batch(batch_id))
    result.start()
    result.join()
    assert asyncio.run(status(batch_id)) == ("processing", 0)


async def test_task_runs_are_counted_in_metrics(api):
    resp = await api.post("/api/sync/upload/", {"device_id": "d", "changes": patient_changes(3), "async": True})
    await api.post(f"/api/sync/trigger/{resp.json['batch_id']}/")
    await wait_status(api, resp.json["batch_id"], "done")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        text = (await api.get("/metrics")).body.decode()
        if 'healthsync_tasks_total{outcome="ok",task="apply_batch"} 1' in text:
            break
        await asyncio.sleep(0.05)
    assert 'healthsync_tasks_total{outcome="ok",task="apply_batch"} 1' in text
    assert 'healthsync_task_seconds_total{task="apply_batch"}' in text


@pytest.mark.sqlite_only  # backups of the SQLite file (VACUUM INTO); on PostgreSQL the job is a no-op, checked here
def test_scheduled_backup_keeps_the_newest(tmp_path):
    from healthsync.tasks import scheduled_backup

    settings = make_settings(tmp_path / "data", backup_keep=2)
    db = Database(settings.db_path)
    asyncio.run(db.open())
    asyncio.run(db.close())
    for day in ("20261120", "20261121", "20261122", "20261122"):
        assert scheduled_backup(settings, today=day).endswith(f"healthsync-{day}.db")
    kept = sorted(p.name for p in settings.effective_backup_dir.iterdir())
    assert kept == ["healthsync-20261121.db", "healthsync-20261122.db"]
    assert scheduled_backup(make_settings(tmp_path / "data", backup_keep=0)) is None
    # on PostgreSQL backups are pg_dump's: the daily job does nothing (never an error each day)
    assert scheduled_backup(make_settings(tmp_path / "pg", database_url="postgresql://nobody@127.0.0.1:1/x")) is None
    huey = make_huey(settings)
    assert "daily_backup" in {t.__name__ for t in huey._registry._periodic_tasks}


@pytest.mark.slow
@pytest.mark.sqlite_only  # SQLite's write lock held by another connection
async def test_busy_retries_wait_longer_each_time(tmp_path):
    """A batch whose database stays locked is retried after 0.5 s, then 1 s, then 2 s
    (``task_retry_delay`` doubling), by a real consumer; it applies once the lock goes."""
    from huey.signals import SIGNAL_EXECUTING

    from healthsync.sync.envelope import parse_upload
    from healthsync.sync.service import SyncService
    from healthsync.tasks import make_consumer

    settings = make_settings(tmp_path / "data", task_retries=4, task_retry_delay=0.5, busy_timeout_ms=50)
    huey = make_huey(settings)
    attempts: list[float] = []

    @huey.signal(SIGNAL_EXECUTING)
    def _executing(signal: str, task) -> None:
        if task.name == "apply_batch":
            attempts.append(time.monotonic())

    db = Database(settings.db_path)
    consumer = make_consumer(settings, huey)
    blocker = sqlite3.connect(settings.db_path, isolation_level=None)
    try:
        req = parse_upload({"device_id": "d", "changes": patient_changes(3), "async": True}, 10_000)
        _, body = await SyncService(db).upload(req)
        batch_id = body["batch_id"]
        await claim(db, huey, batch_id)
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        consumer.start()
        deadline = time.monotonic() + 30
        while len(attempts) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # the third attempt fails on the lock too
        blocker.execute("ROLLBACK")
        while len(attempts) < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        status = None
        while status != "done" and time.monotonic() < deadline:
            status = (await db.fetchone("SELECT status FROM batches WHERE id = ?", (batch_id,)))[0]
            await asyncio.sleep(0.05)
        assert status == "done"
        assert (await db.fetchone("SELECT count(*) FROM patients"))[0] == 3
    finally:
        blocker.close()
        await asyncio.get_running_loop().run_in_executor(None, lambda: consumer.stop(graceful=True))
        await db.close()
        huey.storage.close()
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    assert len(gaps) == 3, gaps
    # Lower bounds only (a busy machine only adds): each wait is at least its
    # scheduled delay, so the third is at least four times the first delay.
    for n, gap in enumerate(gaps):
        assert gap >= 0.5 * 2**n * 0.95, gaps
    assert gaps[2] > gaps[0], gaps


async def test_requeue_by_the_worker_named_in_the_claim(settings_with):
    """A claim is given up at once when its worker is gone (a pid of this machine now
    held by another process, or another machine's worker silent too long), never when
    its worker runs, and the lease (60 s here) is not waited for."""
    import os
    import socket

    from healthsync import batches, clock
    from healthsync.sync.envelope import parse_upload
    from healthsync.sync.service import SyncService

    settings = settings_with()
    huey = make_huey(settings)
    db = await make_storage(settings).open()
    long_ago = clock.format_us(clock.now_us() - 600 * 1_000_000)
    now = clock.format_us(clock.now_us())
    claims = {
        "alive": (batches.this_process(), now),
        "pid reused": (f"{socket.gethostname()}:{os.getpid()}:another-start", now),
        "other host": ("elsewhere.example:1234:x", now),
        "other host, silent": ("elsewhere.example:1234:x", long_ago),
        "alive, silent": (batches.this_process(), long_ago),  # its pid says more than its heartbeat
    }
    ids = {}
    try:
        for name, (worker, beat) in claims.items():
            req = parse_upload({"device_id": "d", "changes": patient_changes(1, name), "async": True}, 10)
            ids[name] = (await SyncService(db).upload(req))[1]["batch_id"]
            await claim(db, huey, ids[name])
            await asyncio.to_thread(execute, settings, "UPDATE batches SET worker = ?, heartbeat_at = ? WHERE id = ?",
                                    worker, beat, ids[name])
        requeued = await requeue_stale(db, huey, 60)
        assert sorted(requeued) == sorted([ids["pid reused"], ids["other host, silent"]])
        # the heartbeat of this process's running claims
        with batches._running(ids["alive, silent"]):
            assert await batches.heartbeat(db) == 2
        beats = await asyncio.to_thread(execute, settings, "SELECT heartbeat_at FROM batches WHERE worker = ?",
                                        batches.this_process())
        assert [b > now for (b,) in beats] == [True, True]
        assert await requeue_stale(db, huey, 60) == []
    finally:
        await db.close()
        huey.storage.close()
