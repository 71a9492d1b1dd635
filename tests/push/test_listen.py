"""Push across processes on PostgreSQL: NOTIFY from every write, LISTEN in every server.

Two ``run.py serve`` processes on one PostgreSQL database, each with its own
websocket subscribers.  The poller's intervals are set far longer than any
wait here (``push_listen_poll_seconds`` an hour while listening,
``push_poll_seconds`` its longest, 10 s, while not), so only a notification,
or the poll the hub makes when its listener re-opens, can explain a change
reaching the other process's subscriber.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
from typing import Any

import orjson
import psycopg
import pytest
from psycopg import sql
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

from healthsync.storage.postgres import PostgresDatabase
from tests.support import postgres as pg
from tests.support.http import patient_changes
from tests.support.servers import ServerProcess
from tests.support.ws import Client

pytestmark = pytest.mark.slow

LISTENER = "healthsync-listen"
#: Longer than any wait for a push below: a poll cannot explain an arrival.
QUIET_POLLS = {"HEALTHSYNC_PUSH_LISTEN_POLL_SECONDS": "3600", "HEALTHSYNC_PUSH_POLL_SECONDS": "10"}
#: How long a push may take here (a busy 2-core machine), well under the 10 s poll.
PUSH_WAIT = 6


async def request(server: ServerProcess, method: str, path: str, body: Any = None,
                  headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    resp = await AsyncHTTPClient().fetch(
        server.url + path, method=method, raise_error=False,
        body=orjson.dumps(body) if body is not None else b"" if method in ("POST", "PUT", "PATCH") else None,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    text = resp.body or b""
    is_json = resp.headers.get("Content-Type", "").startswith("application/json")
    parsed = orjson.loads(text) if text and is_json else text
    return resp.code, parsed, resp.headers


async def subscribe(server: ServerProcess, query: str = "cursor=0") -> Client:
    url = server.url.replace("http://", "ws://") + f"/api/sync/ws?{query}"
    client = Client(await websocket_connect(HTTPRequest(url)))
    assert (await client.next())["type"] == "hello"
    return client


def dbname(url: str) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(url)["dbname"])


def listener_pids(url: str) -> list[int]:
    """The backends listening for the database of ``url`` (asked from the server's own database)."""
    with psycopg.connect(pg.server_url(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
            (dbname(url), LISTENER),
        ).fetchall()
    return [r[0] for r in rows]


async def wait_for_listeners(url: str, count: int, timeout: float = 20) -> list[int]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        pids = listener_pids(url)
        if len(pids) >= count or asyncio.get_running_loop().time() > deadline:
            assert len(pids) == count, f"{len(pids)} listeners, expected {count}"
            return pids
        await asyncio.sleep(0.05)


def terminate(pids: list[int]) -> None:
    """End these backends, and wait until they are gone (a backend still
    exiting would yet hear a notification)."""
    with psycopg.connect(pg.server_url(), autocommit=True) as conn:
        for pid in pids:
            assert conn.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,)).fetchone()[0]


async def metric(server: ServerProcess, name: str) -> float:
    status, body, _ = await request(server, "GET", "/metrics")
    assert status == 200
    found = re.search(rf"^{name} (\S+)$", body.decode(), re.M)
    assert found, f"{name} is not in /metrics"
    return float(found.group(1))


@pytest.fixture
def two_servers(server_process, postgres_url, tmp_path):
    """Start two servers on the test's database (each with its own data dir), both listening."""

    async def start(*args: str, env: dict[str, str] | None = None) -> tuple[ServerProcess, ServerProcess]:
        env = {**QUIET_POLLS, **(env or {})}
        servers = [
            server_process("--database-url", postgres_url, *args, data_dir=tmp_path / name, env=env)
            for name in ("a", "b")
        ]
        await wait_for_listeners(postgres_url, 2)
        return servers[0], servers[1]

    return start


async def test_a_change_on_one_process_reaches_a_websocket_on_the_other(two_servers, postgres_url):
    a, b = await two_servers("--no-worker")
    on_b = await subscribe(b)
    try:
        for n in range(3):
            status, created, _ = await request(a, "POST", "/api/patients/", {"name": f"via a {n}"})
            assert status == 201
            changes = await on_b.changes_until(n + 1, timeout=PUSH_WAIT)
            assert changes[-1]["server_id"] == created["id"] and changes[-1]["data"]["name"] == f"via a {n}"
        assert [c["server_id"] for c in on_b.changes] == list(dict.fromkeys(c["server_id"] for c in on_b.changes))
    finally:
        on_b.close()


async def test_a_killed_listener_reconnects_and_nothing_committed_meanwhile_is_lost(two_servers, postgres_url):
    a, b = await two_servers("--no-worker")
    assert await metric(b, "healthsync_listen_reconnects_total") == 0
    on_b = await subscribe(b)
    try:
        status, _, _ = await request(a, "POST", "/api/patients/", {"name": "before"})
        assert status == 201
        await on_b.changes_until(1, timeout=PUSH_WAIT)
        # B is frozen while its listener is killed and A commits: B cannot
        # listen again before that commit (its poller sleeps for 10 s at least).
        assert b.proc is not None
        os.kill(b.proc.pid, signal.SIGSTOP)
        try:
            terminate(listener_pids(postgres_url))
            status, missed, _ = await request(a, "POST", "/api/patients/", {"name": "while b was deaf"})
            assert status == 201
        finally:
            os.kill(b.proc.pid, signal.SIGCONT)
        changes = await on_b.changes_until(2, timeout=PUSH_WAIT)
        assert changes[-1]["server_id"] == missed["id"]
        await wait_for_listeners(postgres_url, 2)
        # Push resumes on the new connection.
        status, after, _ = await request(a, "POST", "/api/patients/", {"name": "after"})
        assert status == 201
        changes = await on_b.changes_until(3, timeout=PUSH_WAIT)
        assert [c["data"]["name"] for c in changes] == ["before", "while b was deaf", "after"]
        assert await metric(b, "healthsync_listen_reconnects_total") == 1
        assert await metric(a, "healthsync_listen_reconnects_total") == 1
    finally:
        on_b.close()
    assert not [line for line in a.log + b.log if " ERROR " in line]
    lost = [line for line in b.log if "LISTEN connection was lost" in line]
    assert len(lost) == 1 and " WARNING " in lost[0], b.log[-20:]


async def test_the_listener_signals_each_time_it_listens_again(postgres_url):
    # PostgreSQL may even hand a new listener notifications from before its
    # LISTEN, but nothing promises it (a restarted server has none): the
    # listener says "look now" itself on every (re)open, commit or not.
    db = await PostgresDatabase(postgres_url).open()
    signals: list[bool] = []
    task = asyncio.create_task(db.listen(lambda: signals.append(db.listening)))
    try:
        pids = await wait_for_listeners(postgres_url, 1)
        assert signals == [True] and db.listen_reconnects == 0
        terminate(pids)
        new = await wait_for_listeners(postgres_url, 1)
        assert new != pids
        for _ in range(200):
            if len(signals) == 2:
                break
            await asyncio.sleep(0.05)
        assert signals == [True, True] and db.listen_reconnects == 1 and db.listening
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await db.close()
    assert not db.listening


async def test_a_listener_refused_for_a_while_warns_once_and_listens_again(postgres_url, caplog):
    db = await PostgresDatabase(postgres_url).open()
    signals: list[bool] = []
    task = asyncio.create_task(db.listen(lambda: signals.append(db.listening)))
    allow = "ALTER DATABASE {} ALLOW_CONNECTIONS {}"
    try:
        pids = await wait_for_listeners(postgres_url, 1)
        # From the server's own database: one may not lock oneself out.
        with psycopg.connect(pg.server_url(), autocommit=True) as conn:
            name = sql.Identifier(dbname(postgres_url))
            conn.execute(sql.SQL(allow.format("{}", "false")).format(name))
            try:
                terminate(pids)
                await asyncio.sleep(1.5)  # several attempts, each refused
                assert not db.listening and signals == [True]
            finally:
                conn.execute(sql.SQL(allow.format("{}", "true")).format(name))
        await wait_for_listeners(postgres_url, 1)
        for _ in range(400):
            if len(signals) == 2:
                break
            await asyncio.sleep(0.05)
        assert signals == [True, True] and db.listen_reconnects == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await db.close()
    warnings = [r for r in caplog.records if r.name == "healthsync.push" and r.levelno >= logging.WARNING]
    assert [r.levelname for r in warnings] == ["WARNING"], [r.getMessage() for r in warnings]
    assert "LISTEN connection was lost" in warnings[0].getMessage()


async def test_batch_events_cross_processes(two_servers, postgres_url):
    a, b = await two_servers()  # A's embedded worker applies the batch
    device_on_b = await subscribe(b, "cursor=0&device_id=tab-1")
    dashboard_on_b = await subscribe(b)
    try:
        status, body, _ = await request(
            a, "POST", "/api/sync/upload/", {"device_id": "tab-1", "changes": patient_changes(5), "async": True}
        )
        assert status in (200, 202), body
        batch_id = body["batch_id"]
        status, _, _ = await request(a, "POST", f"/api/sync/trigger/{batch_id}/")
        assert status in (200, 202)

        def done(m: dict[str, Any]) -> bool:
            return m["type"] == "batch" and m["status"] == "done"

        event = await device_on_b.until(done, timeout=30)
        assert event == {"type": "batch", "batch_id": batch_id, "status": "done", "device_id": "tab-1"}
        assert (await dashboard_on_b.until(done, timeout=PUSH_WAIT))["batch_id"] == batch_id
        assert len(await dashboard_on_b.changes_until(5, timeout=PUSH_WAIT)) == 5
    finally:
        device_on_b.close()
        dashboard_on_b.close()
