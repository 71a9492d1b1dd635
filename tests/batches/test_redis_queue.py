"""The task queue on a real Redis (``queue_url=redis://…``): batches applied by an
in-process consumer and by a separate ``run.py worker``; Redis stopped (503s, the
batch left pending, health naming the queue) and back; a bad ``queue_url``;
periodic jobs run once per site."""

from __future__ import annotations

import asyncio
import time

import pytest

import settings as settings_mod
from healthsync.redact import redact_url
from healthsync.tasks import once_per_site, queue_info
from tests.support.http import call, patient_changes, upload_async, wait_status
from tests.support.queues import check_once_per_site
from tests.support.redis import queue_keys
from tests.support.servers import RunPy, make_settings, run_cli


class TestOnTheSuitesRedis:
    @pytest.fixture
    def settings(self, data_dir, redis_queue):
        return make_settings(data_dir, embedded_worker=True, **redis_queue)

    async def test_an_async_upload_is_applied_by_the_in_process_consumer(self, app, api, settings, redis_queue):
        batch_id = await upload_async(api)
        trig = await api.post(f"/api/sync/trigger/{batch_id}/")
        assert trig.status == 202, trig.body
        done = await wait_status(api, batch_id, "done")
        assert [r["status"] for r in done["results"]] == ["created"] * 3
        assert len((await api.get("/api/patients/")).json) == 3
        assert not (settings.data_dir / "huey.db").exists()  # the queue is on Redis, not in the data dir
        assert queue_keys(redis_queue["queue_url"], redis_queue["queue_name"])  # ...under this site's name
        health = (await api.get("/api/health")).json
        assert health["status"] == "ok"
        assert health["queue"] == {"backend": "redis", "url": redis_queue["queue_url"],
                                   "name": redis_queue["queue_name"], "ok": True}


@pytest.mark.slow
def test_a_separate_worker_process_applies_batches_from_redis(server_process, tmp_path, redis_queue):
    flags = ["--queue-url", redis_queue["queue_url"], "--queue-name", redis_queue["queue_name"]]
    data = tmp_path / "data"
    server = server_process("--no-worker", *flags, data_dir=data)
    worker = RunPy(data, "worker", *flags).start()
    try:
        changes = patient_changes(50)
        status, body = call("POST", server.url + "/api/sync/upload/",
                            {"device_id": "tab-1", "changes": changes, "async": True})
        assert status == 202, body
        batch_id = body["batch_id"]
        status, trig = call("POST", f"{server.url}/api/sync/trigger/{batch_id}/")
        assert status == 202, trig
        deadline = time.monotonic() + 60
        while (batch := call("GET", f"{server.url}/api/sync/batches/{batch_id}/")[1])["status"] != "done":
            assert batch["status"] != "failed" and time.monotonic() < deadline, batch
            time.sleep(0.1)
        assert len(call("GET", server.url + "/api/patients/?limit=1000")[1]) == 50
    finally:
        assert worker.stop() == 0, "".join(worker.log)
    assert not (data / "huey.db").exists()


class TestRedisStopped:
    @pytest.fixture
    def settings(self, data_dir, throwaway_redis):
        return make_settings(data_dir, embedded_worker=True, queue_url=throwaway_redis.url)

    @pytest.mark.expect_error_logs  # the access log reports the 503s
    async def test_503_and_the_batch_left_pending_then_applied_once_redis_is_back(self, app, api, throwaway_redis,
                                                                                     caplog):
        batch_id = await upload_async(api)
        throwaway_redis.kill()
        await asyncio.sleep(0.5)  # the consumer threads meet the stopped Redis

        trig = await api.post(f"/api/sync/trigger/{batch_id}/")
        assert trig.status == 503 and int(trig.headers["Retry-After"]) >= 1, trig.body
        assert "task queue" in trig.json["error"] and trig.json["details"][0]["field"] == "batch_id"
        assert (await api.get(f"/api/sync/batches/{batch_id}/")).json["status"] == "pending"

        health = await api.get("/api/health")
        assert health.status == 503 and health.json["status"] == "unavailable", health.body
        assert health.json["queue"]["backend"] == "redis" and health.json["queue"]["ok"] is False
        assert any("task queue" in r and throwaway_redis.url in r for r in health.json["reasons"])
        assert health.json["worker"]["queue_depth"] == -1
        metrics = await api.get("/metrics")
        assert metrics.status == 200 and "healthsync_batch_queue_depth -1" in metrics.body.decode()

        throwaway_redis.start()  # same port: the consumer and the server reconnect
        assert (await api.get("/api/health")).status == 200
        trig = await api.post(f"/api/sync/trigger/{batch_id}/")
        assert trig.status == 202, trig.body
        await wait_status(api, batch_id, "done")
        assert len((await api.get("/api/patients/")).json) == 3
        # the consumer threads said so in a warning, not a traceback every poll
        assert any("task queue cannot be read" in r.getMessage() for r in caplog.records)
        huey_errors = [r for r in caplog.records if r.name.startswith("huey") and r.levelno >= 40]
        assert not huey_errors, [(r.getMessage(), r.exc_info) for r in huey_errors]


def test_a_bad_queue_url_stops_the_start_with_the_setting_named(tmp_path):
    for command in ("serve", "worker"):
        result = run_cli(command, "--queue-url", "amqp://127.0.0.1/", "--data-dir", str(tmp_path / "d"))
        assert result.returncode == 2, result.stderr
        assert "--queue-url" in result.stderr and "redis://" in result.stderr
    with pytest.raises(settings_mod.SettingsError, match="HEALTHSYNC_QUEUE_URL"):
        settings_mod.load({"HEALTHSYNC_QUEUE_URL": "127.0.0.1:6379"})


def test_the_queue_url_is_shown_without_its_password(tmp_path):
    assert redact_url("redis://:s3cret@cache.local:6380/2") == "redis://:***@cache.local:6380/2"
    assert redact_url("rediss://app:s3cret@[::1]:6380/2") == "rediss://app:***@[::1]:6380/2"
    info = queue_info(make_settings(tmp_path, queue_url="redis://u:s3cret@h:6379/1", queue_name="site-a"))
    assert info == {"backend": "redis", "url": "redis://u:***@h:6379/1", "name": "site-a"}
    # without queue_name, the name follows the absolute data dir: two sites, two queues
    a = queue_info(make_settings(tmp_path / "a", queue_url="redis://h/1"))["name"]
    b = queue_info(make_settings(tmp_path / "b", queue_url="redis://h/1"))["name"]
    assert a.startswith("healthsync-") and a != b


def test_a_periodic_job_runs_once_per_period_whatever_the_consumers(tmp_path, redis_queue, make_queue):
    # two processes' queues on one Redis queue name: what one runs, the other skips
    first, second = (make_queue(make_settings(tmp_path / d, **redis_queue)) for d in ("a", "b"))
    check_once_per_site(first, second)
    # the registered job is the guarded one (and the SQLite queue has the same guard)
    local = make_queue(make_settings(tmp_path / "c"))
    local.maintenance.call_local()
    assert local.get("healthsync.last.maintenance", peek=True) is not None


async def test_a_stale_claim_met_by_a_stopped_redis_is_requeued_after_its_lease(tmp_path, throwaway_redis, make_queue):
    from healthsync.batches import claim, requeue_stale, run_claimed_batch
    from healthsync.storage import Database
    from healthsync.sync.envelope import parse_upload
    from healthsync.sync.service import SyncService

    settings = make_settings(tmp_path / "data", queue_url=throwaway_redis.url)
    huey = make_queue(settings)
    db = Database(settings.db_path)
    try:
        req = parse_upload({"device_id": "d", "changes": patient_changes(5), "async": True}, 10_000)
        batch_id = (await SyncService(db).upload(req))[1]["batch_id"]
        await claim(db, huey, batch_id)  # its worker "dies" before running it
        await asyncio.sleep(0.3)
        throwaway_redis.kill()
        # a consumer starting while Redis is down does not fail: the batch waits for its new lease
        assert await requeue_stale(db, huey, 0.2) == [batch_id]
        assert (await db.get_batch(batch_id))["status"] == "processing"
        throwaway_redis.start()
        await asyncio.sleep(0.3)
        assert await requeue_stale(db, huey, 0.2) == [batch_id]
        task = huey.dequeue()
        assert task is not None and task.args == (batch_id,)
        assert await run_claimed_batch(settings, batch_id, task.id, final=True) == "done"
    finally:
        await db.close()


def test_a_periodic_job_whose_redis_is_down_is_skipped_with_a_warning(tmp_path, throwaway_redis, caplog, make_queue):
    huey = make_queue(make_settings(tmp_path, queue_url=throwaway_redis.url))
    # Redis stops while the job runs: the job's work stands, the queue's bookkeeping is a warning
    assert once_per_site(huey, "job", "2026-01-01T00:00", throwaway_redis.kill) is None
    assert any("job: the task queue went away while it ran" in r.getMessage() for r in caplog.records)
    # Redis down when the job is due: skipped, with a warning (the next period runs it)
    assert once_per_site(huey, "job", "2026-01-01T00:01", lambda: "ran") is None
    assert any("job skipped: the task queue cannot be read" in r.getMessage() for r in caplog.records)
