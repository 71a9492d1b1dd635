"""``run.py worker`` as its own process beside ``run.py --no-worker``.

The tests of a worker's claims (killed mid-batch, taking over a dead worker's batch,
its changes pushed) run on both backends; the throughput, clean-stop and 40,000-change
kill tests run on SQLite only, to keep the suite's time down (their backend part is
covered by the others)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.support import ROOT
from tests.support.databases import execute
from tests.support.http import call
from tests.support.servers import RunPy, make_settings

pytestmark = pytest.mark.slow


def Worker(data_dir, env=None, database_url: str = "") -> RunPy:
    """``run.py worker`` on ``data_dir`` (and ``database_url``), started (its ready line seen)."""
    return RunPy(data_dir, "worker", env=env, database_url=database_url).start()


def upload_async(url: str, n: int, device: str = "tablet-7") -> str:
    changes = [{"operation": "create", "resource_type": "Patient", "client_temp_id": f"{device}-{i}",
                "payload": {"name": f"Patient {i}"}} for i in range(n)]
    status, body = call("POST", url + "/api/sync/upload/", {"device_id": device, "changes": changes, "async": True})
    assert status == 202, body
    return body["batch_id"]


def wait_done(url: str, batch_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = call("GET", f"{url}/api/sync/batches/{batch_id}/")
        if body["status"] in ("done", "failed"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"batch stuck: {body}")


def download_all(url: str) -> list[dict]:
    out, cursor = [], "0"
    while True:
        status, body = call("GET", f"{url}/api/sync/download/?cursor={cursor}&limit=5000")
        out += body["changes"]
        cursor = body["cursor"]
        if not body["has_more"]:
            return out


def test_ten_thousand_async_changes_through_a_separate_worker(server_process, tmp_path):
    data = tmp_path / "data"
    server = server_process("--no-worker", data_dir=data)
    worker = Worker(data)
    batch_id = upload_async(server.url, 10_000)
    status, trig = call("POST", f"{server.url}/api/sync/trigger/{batch_id}/")
    assert status == 202 and trig["status"] == "task started"
    done = wait_done(server.url, batch_id)
    assert done["status"] == "done" and len(done["results"]) == 10_000
    assert {r["status"] for r in done["results"]} == {"created"}
    entries = download_all(server.url)
    assert len(entries) == 10_000
    assert {e["server_id"] for e in entries} == {r["server_id"] for r in done["results"]}
    assert worker.stop(signal.SIGTERM) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_worker_and_server_stop_cleanly(server_process, tmp_path, sig):
    data = tmp_path / "data"
    server = server_process(data_dir=data)  # with its embedded consumer
    worker = Worker(data)
    batch_id = upload_async(server.url, 100)
    call("POST", f"{server.url}/api/sync/trigger/{batch_id}/")
    assert wait_done(server.url, batch_id)["status"] == "done"
    assert worker.stop(sig) == 0
    assert server.stop(sig) == 0


# SQLite only, for time (40,000 changes): on PostgreSQL, the kill mid-batch and the
# exactly-once are checked by test_a_worker_killed_mid_batch_is_replaced_within_seconds_not_the_lease.
def test_worker_killed_mid_batch_is_finished_exactly_once(server_process, tmp_path, database_url):
    data = tmp_path / "data"
    env = {"HEALTHSYNC_BATCH_LEASE_SECONDS": "1"}
    server = server_process("--no-worker", data_dir=data, env=env)
    # calibrate: how long does a 10,000-change batch take on this machine?
    worker = Worker(data, env, database_url)
    started = time.monotonic()
    first = upload_async(server.url, 10_000, "calibrate")
    call("POST", f"{server.url}/api/sync/trigger/{first}/")
    wait_done(server.url, first)
    took = time.monotonic() - started

    for n, fraction in enumerate([0.3, 0.6, 0.9]):
        batch_id = upload_async(server.url, 10_000, f"dev{n}")
        call("POST", f"{server.url}/api/sync/trigger/{batch_id}/")
        time.sleep(took * fraction)
        worker.kill()
        time.sleep(1.2)  # past the lease
        worker = Worker(data, env, database_url)  # on start it re-queues what the dead one left
        done = wait_done(server.url, batch_id)
        assert done["status"] == "done"
        status, patients = call("GET", f"{server.url}/api/patients/")
        assert len(patients) == 10_000 * (n + 2)  # every batch exactly once
    assert worker.stop() == 0
    entries = download_all(server.url)
    assert len(entries) == len({e["server_id"] for e in entries}) == 40_000
    assert json.dumps(server.log).count("Traceback") == 0


@pytest.mark.both_backends
def test_changes_applied_by_a_worker_process_are_pushed(server_process, tmp_path, database_url):
    import asyncio

    import orjson
    from tornado.websocket import websocket_connect

    data = tmp_path / "data"
    server = server_process("--no-worker", data_dir=data)
    worker = Worker(data, database_url=database_url)

    async def run():
        conn = await websocket_connect(server.url.replace("http://", "ws://") + "/api/sync/ws?cursor=0&device_id=tab-9")
        batch_id = upload_async(server.url, 500, "tab-9")
        call("POST", f"{server.url}/api/sync/trigger/{batch_id}/")
        entries, events = [], []
        while len(entries) < 500 or not any(e["status"] == "done" for e in events):
            msg = orjson.loads(await asyncio.wait_for(conn.read_message(), 20))
            if msg["type"] == "changes":
                entries += msg["changes"]
            elif msg["type"] == "batch":
                events.append(msg)
        conn.close()
        return entries, events, batch_id

    entries, events, batch_id = asyncio.run(run())
    assert len({e["server_id"] for e in entries}) == 500
    assert events[-1] == {"type": "batch", "batch_id": batch_id, "status": "done", "device_id": "tab-9"}
    assert worker.stop() == 0


# A real process that claims a batch as its worker (as a task does), then exits.
CLAIM_AND_EXIT = textwrap.dedent(
    """
    import sys
    from healthsync import clock
    from healthsync.batches import this_process
    from tests.support.databases import execute
    from tests.support.servers import make_settings
    data, database_url, batch_id = sys.argv[1:]
    now = clock.format_us(clock.now_us())
    execute(make_settings(data, database_url=database_url),
            "UPDATE batches SET status = 'processing', task_id = 'lost-task', claimed_at = ?, worker = ?,"
            " heartbeat_at = ?, attempts = attempts + 1 WHERE id = ?", now, this_process(), now, batch_id)
    """
)


def batch_row(settings, batch_id: str) -> tuple:
    return execute(settings, "SELECT status, worker, attempts FROM batches WHERE id = ?", batch_id)[0]


@pytest.mark.both_backends
def test_a_starting_worker_takes_over_at_once_a_batch_whose_worker_exited(server_process, tmp_path, database_url):
    data = tmp_path / "data"
    settings = make_settings(data, database_url=database_url)
    env = {"HEALTHSYNC_BATCH_LEASE_SECONDS": "60"}
    server = server_process("--no-worker", data_dir=data, env=env)
    batch_id = upload_async(server.url, 50)
    subprocess.run([sys.executable, "-c", CLAIM_AND_EXIT, str(data), database_url, batch_id],
                   cwd=ROOT, check=True)
    status, worker, _ = batch_row(settings, batch_id)
    assert status == "processing" and worker.split(":")[1].isdigit()  # held by a pid that is gone
    started = time.monotonic()
    new = Worker(data, env, database_url)
    done = wait_done(server.url, batch_id, timeout=20)  # the lease (60 s) would be far later
    assert done["status"] == "done" and done["attempts"] == 2
    assert time.monotonic() - started < 20
    status, patients = call("GET", f"{server.url}/api/patients/")
    assert len(patients) == 50
    assert any("no longer runs" in line for line in new.log)
    assert new.stop() == 0


@pytest.mark.both_backends
def test_a_worker_killed_mid_batch_is_replaced_within_seconds_not_the_lease(server_process, tmp_path, database_url):
    data = tmp_path / "data"
    settings = make_settings(data, database_url=database_url)
    env = {"HEALTHSYNC_BATCH_LEASE_SECONDS": "60"}
    server = server_process("--no-worker", data_dir=data, env=env)
    worker = Worker(data, env, database_url)
    batch_id = upload_async(server.url, 10_000)
    call("POST", f"{server.url}/api/sync/trigger/{batch_id}/")
    deadline = time.monotonic() + 30
    while batch_row(settings, batch_id)[1] is None and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.kill()  # SIGKILL while it applies the batch it has named itself in
    status, owner, _ = batch_row(settings, batch_id)
    assert status == "processing" and owner is not None, "the batch finished before the kill"
    started = time.monotonic()
    worker = Worker(data, env, database_url)  # a restart, well inside the lease
    done = wait_done(server.url, batch_id, timeout=20)
    assert done["status"] == "done" and len(done["results"]) == 10_000
    assert time.monotonic() - started < 20
    assert len(download_all(server.url)) == 10_000  # exactly once
    assert worker.stop() == 0
