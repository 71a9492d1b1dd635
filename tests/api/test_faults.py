"""Faults of the machine, created for real: a second process holding the database's
lock, Huey's queue file locked (a full disk: test_disk_full.py).  The client always
gets JSON that says what to do (503/507 with ``Retry-After``), nothing is half
written, and the server recovers by itself.

The write lock held by another process runs on both backends (on PostgreSQL another
session holds the clock row); the tests of Huey's SQLite queue file and of SQLite's
own error codes are SQLite's."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from typing import Any

import orjson
import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from healthsync.batches import is_transient, run_claimed_batch
from healthsync.errors import Busy
from healthsync.push.hub import Hub
from healthsync.storage import Database
from tests.support.faults import LockHolder, write_lock_holder
from tests.support.http import assert_refused, upload_body
from tests.support.ws import ws_url

pytestmark = pytest.mark.both_backends


async def ws_messages(http_server_client: Any, query: str, count: int) -> list[dict[str, Any]]:
    conn = await websocket_connect(HTTPRequest(ws_url(http_server_client, query)))
    try:
        return [orjson.loads(await asyncio.wait_for(conn.read_message(), 10)) for _ in range(count)]
    finally:
        conn.close()


# Another process holds the write lock -----------------------------------------------------------


@pytest.fixture
def settings(settings_with):
    return settings_with(busy_timeout_ms=200)


async def test_a_write_lock_held_by_another_process_is_503_then_all_works(api, settings, http_server_client):
    p = await api.new_patient(name="Before")
    batch_id = str(uuid.uuid4())
    with write_lock_holder(settings) as lock:
        assert_refused(await api.post("/api/patients/", {"name": "Locked out"}), 503, "busy")
        assert_refused(await api.patch(f"/api/patients/{p['id']}/", {"name": "Locked out"}), 503, "busy")
        assert_refused(await api.post("/api/sync/upload/", upload_body(batch_id)), 503, "busy")
        # Readers are never blocked by a writer (WAL; snapshots on PostgreSQL): lists, download and a
        # websocket's catch-up go on while the lock is held.
        assert [x["name"] for x in (await api.get("/api/patients/")).json] == ["Before"]
        assert (await api.get("/api/sync/download/?cursor=0")).status == 200
        hello, changes = await ws_messages(http_server_client, "cursor=0", 2)
        assert hello["type"] == "hello" and [e["server_id"] for e in changes["changes"]] == [p["id"]]
        lock.release()
        assert (await api.post("/api/patients/", {"name": "After"})).status == 201
        retry = await api.post("/api/sync/upload/", upload_body(batch_id))
        assert retry.status == 200 and [r["status"] for r in retry.json["results"]] == ["created"] * 4
    names = sorted(x["name"] for x in (await api.get("/api/patients/")).json)
    assert names == ["After", "Before", "Fault 0", "Fault 1", "Fault 2"]  # nothing from the refused tries
    assert len((await api.get("/api/records/")).json) == 1


async def test_the_batch_task_meets_the_lock_and_is_retried_not_failed(api, settings):
    body = {**upload_body(str(uuid.uuid4())), "async": True}
    batch_id = (await api.post("/api/sync/upload/", body)).json["batch_id"]
    task_id = (await api.post(f"/api/sync/trigger/{batch_id}/")).json["task_id"]  # no consumer: run it here
    with write_lock_holder(settings):
        with pytest.raises(Busy) as info:
            await run_claimed_batch(settings, batch_id, task_id, final=False)
        assert is_transient(info.value)  # Huey retries it, with backoff
        assert (await api.get(f"/api/sync/batches/{batch_id}/")).json["status"] == "processing"
    assert await run_claimed_batch(settings, batch_id, task_id, final=False) == "done"
    assert len((await api.get("/api/patients/")).json) == 3


@pytest.mark.slow
@pytest.mark.sqlite_only  # Huey's SQLite file locked (on PostgreSQL too, for now: once is enough)
async def test_a_trigger_the_queue_refuses_leaves_the_batch_pending(app, api, settings):
    body = {**upload_body(str(uuid.uuid4())), "async": True}
    batch_id = (await api.post("/api/sync/upload/", body)).json["batch_id"]
    assert app.ctx.batches.huey is not None  # Huey's file exists, and nobody holds it open
    with LockHolder(settings.data_dir / "huey.db", exclusive=True):
        resp = await api.post(f"/api/sync/trigger/{batch_id}/")  # Huey waits out its own 10 s timeout
        assert resp.status == 503 and int(resp.headers["Retry-After"]) >= 1, resp.body
        assert "task queue" in resp.json["error"] and resp.json["details"][0]["field"] == "batch_id"
        batch = (await api.get(f"/api/sync/batches/{batch_id}/")).json
        assert batch["status"] == "pending"  # not claimed by a task that no queue holds
    again = await api.post(f"/api/sync/trigger/{batch_id}/")
    assert again.status == 202
    assert await run_claimed_batch(settings, batch_id, again.json["task_id"], final=False) == "done"
    assert len((await api.get("/api/patients/")).json) == 3


@pytest.mark.sqlite_only  # the hub's side, the same on both: the refusal is injected into SQLite's storage
async def test_a_refused_catch_up_read_is_an_error_message_and_a_close_with_reason(tmp_path):
    # In WAL mode another process cannot block a read (the test above shows it),
    # so the refusal is injected at the storage boundary: what the hub must do
    # if a catch-up read is refused anyway.
    class RefusingReads(Database):
        refuse = False

        async def read(self, fn: Any) -> Any:
            if self.refuse:
                raise Busy("the database is busy: another process holds its lock; nothing was changed, try again")
            return await super().read(fn)

    class Peer:
        def __init__(self) -> None:
            self.frames: list[dict[str, Any]] = []
            self.closed: tuple[int, str] | None = None

        def send(self, frame: bytes) -> asyncio.Future[None]:
            self.frames.append(orjson.loads(frame))
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done

        def close(self, code: int, reason: str) -> None:
            self.closed = (code, reason)

    db = RefusingReads(tmp_path / "hub.db")
    hub = Hub(db, poll_seconds=0.05)
    try:
        await db.open()
        await hub.start()
        db.refuse = True
        peer = Peer()
        hub.subscribe(peer, cursor=0, since=None)
        for _ in range(200):
            if peer.closed:
                break
            await asyncio.sleep(0.01)
        assert peer.closed is not None and peer.closed[0] == 4503 and "busy" in peer.closed[1]
        error = peer.frames[-1]
        assert error["type"] == "error" and "busy" in error["error"] and error["retry_after"] == 1
        assert hub.count == 0
        await asyncio.sleep(0.15)  # the poller meets the refusal too: a warning, not a crash
        db.refuse = False
        again = Peer()
        hub.subscribe(again, cursor=0, since=None)
        await asyncio.sleep(0.2)
        assert again.closed is None and hub.count == 1
    finally:
        await hub.close()
        await db.close()


# Blocking calls stay off the event loop -----------------------------------------------------------


@pytest.mark.sqlite_only  # Huey's SQLite file locked (on PostgreSQL too, for now: once is enough)
@pytest.mark.parametrize("path", ["/api/health", "/metrics"])
async def test_a_locked_queue_file_does_not_stall_the_server(app, api, path):
    assert app.ctx.batches.huey is not None  # Huey's file exists (created on first use), and nobody holds it open
    app.ctx.queue_depth_wait = 60  # wait for the read here: the point is where it waits
    with LockHolder(app.ctx.settings.data_dir / "huey.db", exclusive=True) as lock:
        slow = asyncio.ensure_future(api.get(path))
        # The queue read waits on the lock (Huey's own 10 s timeout); meanwhile
        # the event loop serves others.  (The pause lets the request reach that
        # read first; a slow machine only makes the test easier to pass.)
        await asyncio.sleep(0.5)
        other = await api.get("/api/patients/")
        assert other.status == 200
        assert not slow.done(), "the queue read held the event loop"
        lock.release()
        resp = await slow
    assert resp.status == 200
    if path == "/metrics":
        assert "healthsync_batch_queue_depth 0" in resp.body.decode()
    else:
        assert resp.json["worker"]["queue_depth"] == 0 and resp.json["status"] == "ok"


@pytest.mark.sqlite_only  # SQLite's own error codes (PostgreSQL's: tests/storage/test_postgres.py)
def test_sqlite_reports_the_lock_as_busy(tmp_path):
    """What the storage layer translates: the driver's code, not only its words."""
    from healthsync.storage.sqlite import machine_fault

    path = tmp_path / "x.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.commit()
    with LockHolder(path):
        conn = sqlite3.connect(path, timeout=0.05)
        try:
            with pytest.raises(sqlite3.OperationalError) as info:
                conn.execute("INSERT INTO t VALUES (1)")
        finally:
            conn.close()
    fault = machine_fault(info.value)
    assert isinstance(fault, Busy) and fault.status == 503 and fault.retry_after == 1

