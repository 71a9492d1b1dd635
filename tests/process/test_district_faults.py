"""Faults of a district (several ``run.py serve`` processes and a ``run.py worker`` on one
PostgreSQL), made for real: a server SIGKILLed in the middle of a big upload (all or
nothing, and the device's retry with the same ``batch_id`` gets one consistent answer),
PostgreSQL stopped and started under load (JSON 503 with ``Retry-After``, never a 500 or
a hang; recovery without a restart, nothing acknowledged lost, push resumes), and Redis
stopped under two servers (503s, batches applied once it is back); and a background
batch whose task meets PostgreSQL stopped (retried, never failed nor lost)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
import pytest

from healthsync.batches import is_transient, run_claimed_batch
from healthsync.errors import Unreachable
from healthsync.storage import make_storage
from tests.support.district import (
    Ack,
    Acks,
    CursorFollower,
    WsFollower,
    http_client,
    jcall,
    queue_flags,
    start_district,
    wait_batch,
)
from tests.support.http import call, upload_body
from tests.support.redis import unique_queue_name
from tests.support.servers import make_settings

pytestmark = pytest.mark.slow


def server_trouble(log: list[str]) -> list[str]:
    """Lines of a server's log that would mean a bug: an ERROR (a fault of the machine is
    a WARNING), a traceback or a 500."""
    return [line for line in log if " ERROR " in line or "Traceback" in line or " 500 " in line]


def assert_not_now(reply: Any, where: str) -> None:
    """The answer of a process whose database or queue is away: JSON 503 with Retry-After."""
    assert reply.status == 503, (where, reply.status, reply.body[:300])
    assert reply.headers["Content-Type"].startswith("application/json"), where
    assert reply.json["error"], where
    assert int(reply.headers["Retry-After"]) >= 1, where


# A server killed mid-upload ------------------------------------------------------------------


def big_upload(batch_id: str, patients: int) -> dict[str, Any]:
    changes: list[dict[str, Any]] = []
    for i in range(patients):
        changes.append({"operation": "create", "resource_type": "Patient", "client_temp_id": f"p{i}",
                        "payload": {"name": f"big {i}"}})
        changes.append({"operation": "create", "resource_type": "Observation", "client_temp_id": f"o{i}",
                        "payload": {"patient_temp_id": f"p{i}", "value": i}})
    return {"device_id": "tab-big", "batch_id": batch_id, "changes": changes}


def writing_rows(database_url: str) -> bool:
    """Whether a transaction is writing patients or records right now (in bulk: ``COPY``)."""
    with psycopg.connect(database_url, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND xact_start IS NOT NULL AND (query ILIKE '%%INSERT INTO patients%%'"
            " OR query ILIKE '%%INSERT INTO records%%' OR query ILIKE 'COPY patients%%'"
            " OR query ILIKE 'COPY records%%' OR query ILIKE 'COPY temp_ids%%')"
        ).fetchone()
    return bool(row and row[0])


def counts(database_url: str) -> tuple[int, int, list[str]]:
    """Patients and records of the big upload, and its batch's status (if stored)."""
    with psycopg.connect(database_url, connect_timeout=5) as conn:
        patients = conn.execute("SELECT count(*) FROM patients WHERE name LIKE 'big %%'").fetchone()
        records = conn.execute("SELECT count(*) FROM records WHERE resource_type = 'Observation'").fetchone()
        batches = conn.execute("SELECT status FROM batches WHERE device_id = 'tab-big'").fetchall()
    assert patients is not None and records is not None
    return patients[0], records[0], [b[0] for b in batches]


@pytest.mark.parametrize("moment", ["while its rows are written", "once it has committed"])
def test_a_server_killed_mid_upload_leaves_all_or_nothing_and_the_retry_is_consistent(
    server_process, tmp_path, postgres_url, redis_queue, moment
):
    district = start_district(server_process, tmp_path, postgres_url, queue_flags("redis", redis_queue))
    try:
        a, b = district.servers
        patients = 4_000
        batch_id = str(uuid.uuid4())
        body = big_upload(batch_id, patients)
        answer: dict[str, Any] = {}

        def send() -> None:
            try:
                answer["reply"] = call("POST", a.url + "/api/sync/upload/", body)
            except OSError as exc:  # the server died under it
                answer["error"] = exc

        sender = threading.Thread(target=send)
        sender.start()
        deadline = time.monotonic() + 60
        while not writing_rows(postgres_url):
            assert time.monotonic() < deadline and sender.is_alive(), f"the upload was never seen writing: {answer}"
            time.sleep(0.005)
        if moment == "once it has committed":  # its answer may not be out yet: a retry must get it
            while True:
                alive = sender.is_alive()  # (read before the count: an answer comes after the commit)
                if counts(postgres_url)[0] == patients:
                    break
                assert alive and time.monotonic() < deadline, f"never committed: {answer}"
                time.sleep(0.002)
        a.proc.kill()  # type: ignore[union-attr]  # SIGKILL
        a.proc.wait()  # type: ignore[union-attr]
        sender.join(timeout=60)
        assert not sender.is_alive()

        # All or nothing, whatever the moment (PostgreSQL rolls back a dead client's transaction).
        deadline = time.monotonic() + 30
        while True:
            p, r, batches = counts(postgres_url)
            if (p, r) in ((0, 0), (patients, patients)) or time.monotonic() > deadline:
                break
            time.sleep(0.1)  # the killed connection's backend may still be rolling back
        assert (p, r) in ((0, 0), (patients, patients)), f"a partial upload: {p} patients, {r} records"
        assert p == (0 if moment == "while its rows are written" else patients)
        assert batches == ([] if p == 0 else ["done"]), batches
        if "reply" in answer:  # answered before the kill: then it was all there
            assert answer["reply"][0] == 200 and p == patients, answer["reply"][0]

        # The device retries on the other server with the same batch_id: one consistent answer.
        status, first = call("POST", b.url + "/api/sync/upload/", body)
        assert status == 200, first
        assert [res["status"] for res in first["results"]] == ["created"] * (2 * patients)
        assert counts(postgres_url)[:2] == (patients, patients)
        status, again = call("POST", b.url + "/api/sync/upload/", body)
        assert status == 200 and again["results"] == first["results"]
        assert counts(postgres_url) == (patients, patients, ["done"])
        ids = {res["server_id"] for res in first["results"]}
        assert len(ids) == 2 * patients
        assert not server_trouble(b.log), "".join(b.log)
    finally:
        assert district.worker.stop() == 0, "".join(district.worker.log)


# PostgreSQL stopped and started under load ----------------------------------------------------


@dataclass
class Load:
    """Writers that go on whatever they are answered, and what they were answered."""

    acks: Acks = field(default_factory=Acks)
    statuses: dict[int, int] = field(default_factory=dict)
    slowest: float = 0.0
    #: per server, the time of its last 2xx
    last_ok: dict[int, float] = field(default_factory=dict)
    refusals: list[tuple[int, Any]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def answered(self, where: int, reply: Any, sent: float) -> None:
        took = time.monotonic() - sent
        self.slowest = max(self.slowest, took)
        self.statuses[reply.status] = self.statuses.get(reply.status, 0) + 1
        if 200 <= reply.status < 300:
            self.last_ok[where] = time.monotonic()
        else:
            self.refusals.append((where, reply))


async def steady_writer(client, url: str, where: int, tag: str, load: Load) -> None:
    """Create a patient and rename it, over and over, until told to stop; a refused write
    is left as it is (the next round goes on)."""
    i = 0
    while not load.stop.is_set():
        sent = time.monotonic()
        reply = await jcall(client, "POST", f"{url}/api/patients/", {"name": f"{tag} {i}"}, timeout=60)
        load.answered(where, reply, sent)
        if reply.status == 201:
            pid = reply.json["id"]
            load.acks.add(pid, 1, Ack(where, sent, time.monotonic()))
            sent = time.monotonic()
            reply = await jcall(client, "PATCH", f"{url}/api/patients/{pid}/", {"name": f"{tag} {i} b"}, timeout=60)
            load.answered(where, reply, sent)
            if reply.status == 200:
                load.acks.add(pid, 2, Ack(where, sent, time.monotonic()))
        if reply.status >= 300:
            await asyncio.sleep(0.1)
        i += 1


async def wait_health(client, url: str, status: int, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        reply = await jcall(client, "GET", f"{url}/api/health", timeout=timeout)
        if reply.status == status:
            return reply.json
        assert time.monotonic() < deadline, f"{url}/api/health stayed {reply.status}: {reply.body[:300]}"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("mode", ["fast", "immediate"])  # a clean shutdown, and a crash
async def test_postgresql_restarted_under_load_503s_then_recovery_with_nothing_lost(
    server_process, tmp_path, redis_queue, throwaway_postgres, mode
):
    url = throwaway_postgres.create_database()
    district = start_district(server_process, tmp_path, url, queue_flags("redis", redis_queue))
    client = http_client()
    load = Load()
    sockets = [WsFollower(u, i) for i, u in enumerate(district.urls)]
    try:
        for ws in sockets:
            await ws.connect()
        following = [asyncio.ensure_future(ws.run(timeout=240)) for ws in sockets]
        writers = [asyncio.ensure_future(steady_writer(client, u, i, f"w{i}{k}", load))
                   for i, u in enumerate(district.urls) for k in "ab"]
        await asyncio.sleep(1.5)
        assert len(load.acks.pairs) > 20, load.statuses

        throwaway_postgres.stop(mode)
        stopped = time.monotonic()
        await asyncio.sleep(3)
        for u in district.urls:
            health = await wait_health(client, u, 503)
            assert health["status"] == "unavailable" and health["database"]["ok"] is False, health
            assert_not_now(await jcall(client, "GET", f"{u}/api/sync/download/?cursor=0"), u)
            assert_not_now(await jcall(client, "POST", f"{u}/api/patients/", {"name": "while down"}), u)
        during = dict(load.statuses)
        assert during.get(503, 0) >= 4, during

        throwaway_postgres.start()  # same port, same data: the processes reconnect by themselves
        for u in district.urls:
            await wait_health(client, u, 200)
        back = time.monotonic()
        deadline = back + 30
        while not all(load.last_ok.get(i, 0) > back for i in range(len(district.urls))):
            assert time.monotonic() < deadline, f"writes did not resume: {load.statuses}"
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)
        load.stop.set()
        await asyncio.gather(*writers)

        with psycopg.connect(url, connect_timeout=5) as conn:
            head = conn.execute("SELECT seq FROM clock WHERE id = 1").fetchone()[0]  # type: ignore[index]
            rows = dict(conn.execute("SELECT id::text, server_version FROM patients").fetchall())
        # Nothing acknowledged is lost: every 2xx is there (a write cut off mid-answer may be
        # there too, unacknowledged: the client was told to try again).
        lost = [p for p in load.acks.pairs if rows.get(p[0], 0) < p[1]]
        assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:5]}"
        # Refusals were all JSON 503s with Retry-After, none a 500 or a hang.
        assert set(load.statuses) <= {200, 201, 503}, load.statuses
        for where, reply in load.refusals:
            assert_not_now(reply, district.urls[where])
        assert load.slowest < 10, f"a request took {load.slowest:.1f} s: a hang (the pool waits 30 s)"

        # Push resumes: each websocket (open throughout) gets everything, in order, once.
        for ws in sockets:
            ws.final_head = head
        await asyncio.gather(*following)
        for ws in sockets:
            pairs = [(s.sid, s.version) for s in ws.seen]
            assert len(set(pairs)) == len(pairs), f"{ws} got a change twice"
            assert [s.updated_at for s in ws.seen] == sorted(s.updated_at for s in ws.seen)
            newest = {}
            for sid, version in pairs:
                newest[sid] = version
            assert newest == rows, f"{ws}: not the database's final versions"
            assert any(s.at > back for s in ws.seen), f"{ws} got nothing after the restart"
        print(f"PostgreSQL stopped ({mode}) for {back - stopped:.1f} s: answers {load.statuses},"
              f" slowest {load.slowest:.2f} s")
        for s in district.servers:
            assert s.proc.poll() is None  # type: ignore[union-attr]  # no process had to be restarted
            assert not server_trouble(s.log), "".join(s.log)
        assert district.worker.proc.poll() is None  # type: ignore[union-attr]
        assert not server_trouble(district.worker.log), "".join(district.worker.log)
    finally:
        load.stop.set()
        for ws in sockets:
            ws.close()
        client.close()
        assert district.worker.stop() == 0, "".join(district.worker.log)


# Redis stopped under two servers --------------------------------------------------------------


async def test_redis_stopped_under_two_servers_503s_then_batches_applied(
    server_process, tmp_path, postgres_url, throwaway_redis
):
    queue = ["--queue-url", throwaway_redis.url, "--queue-name", unique_queue_name()]
    district = start_district(server_process, tmp_path, postgres_url, queue)
    client = http_client()
    try:
        a, b = district.urls

        async def stored(url: str, device: str, n: int = 3) -> str:
            changes = [{"operation": "create", "resource_type": "Patient", "client_temp_id": f"{device}-{i}",
                        "payload": {"name": f"{device} {i}"}} for i in range(n)]
            reply = await jcall(client, "POST", f"{url}/api/sync/upload/",
                                {"device_id": device, "changes": changes, "async": True})
            assert reply.status == 202, reply.body
            return reply.json["batch_id"]

        first = await stored(a, "tab-a0")
        assert (await jcall(client, "POST", f"{a}/api/sync/trigger/{first}/")).status == 202
        await wait_batch(client, b, first)  # applied by the worker, seen from the other server

        throwaway_redis.kill()
        waiting = {a: await stored(a, "tab-a1"), b: await stored(b, "tab-b1")}  # storing needs no queue
        for url, batch_id in waiting.items():
            assert_not_now(await jcall(client, "POST", f"{url}/api/sync/trigger/{batch_id}/"), url)
            assert (await jcall(client, "GET", f"{url}/api/sync/batches/{batch_id}/")).json["status"] == "pending"
            health = await wait_health(client, url, 503)
            assert health["queue"]["ok"] is False and health["database"]["ok"] is True, health
        # What needs no queue goes on: a sync upload, a download, on either server.
        for url, device in ((a, "tab-a2"), (b, "tab-b2")):
            change = {"operation": "create", "resource_type": "Patient", "client_temp_id": "x",
                      "payload": {"name": f"{device} x"}}
            reply = await jcall(client, "POST", f"{url}/api/sync/upload/", {"device_id": device, "changes": [change]})
            assert reply.status == 200, reply.body
            assert (await jcall(client, "GET", f"{url}/api/sync/download/?cursor=0")).status == 200

        throwaway_redis.start()  # same port: servers and worker reconnect by themselves
        for url, batch_id in waiting.items():
            await wait_health(client, url, 200)
            reply = await jcall(client, "POST", f"{url}/api/sync/trigger/{batch_id}/")
            assert reply.status == 202, reply.body
        for url, batch_id in waiting.items():
            other = b if url == a else a
            done = await wait_batch(client, other, batch_id)
            assert [r["status"] for r in done["results"]] == ["created"] * 3
        follower = CursorFollower(a, 0, client, limit=100)
        head = int((await jcall(client, "GET", f"{a}/api/health")).json["database"]["head"])
        follower.final_head = head
        await follower.run(timeout=30)
        names = sorted(s.entry["data"]["name"] for s in follower.seen if s.entry)  # type: ignore[index]
        assert len(names) == 3 * 3 + 2 and len(set(names)) == len(names), names
        for s in district.servers:
            assert not server_trouble(s.log), "".join(s.log)
    finally:
        client.close()
        assert district.worker.stop() == 0, "".join(district.worker.log)


# A background batch whose database goes away --------------------------------------------------


async def test_a_batch_task_that_meets_postgresql_stopped_is_retried_then_left_to_its_lease(
    tmp_path, throwaway_postgres
):
    """Not ``failed`` (which it could not even record) and no ERROR: Huey retries it with
    backoff; at the last retry the claim stays for its lease; once PostgreSQL is back the
    task applies it, once."""
    settings = make_settings(tmp_path / "data", database_url=throwaway_postgres.create_database())
    batch_id, task_id = str(uuid.uuid4()), str(uuid.uuid4())
    db = make_storage(settings)
    try:
        await db.store_batch(batch_id, "tab-1", orjson.dumps(upload_body(batch_id)).decode(), 4)
        await db.claim_batch(batch_id, task_id)
    finally:
        await db.close()
    throwaway_postgres.stop()
    with pytest.raises(Unreachable) as info:
        await run_claimed_batch(settings, batch_id, task_id, final=False)
    assert is_transient(info.value)  # Huey retries it, with backoff
    assert await run_claimed_batch(settings, batch_id, task_id, final=True) == "unreachable"
    throwaway_postgres.start()
    db = make_storage(settings)
    try:
        assert (await db.get_batch(batch_id))["status"] == "processing"  # type: ignore[index]
        assert await run_claimed_batch(settings, batch_id, task_id, final=False) == "done"
        assert await run_claimed_batch(settings, batch_id, task_id, final=False) == "skipped"
        done = await db.get_batch(batch_id)
        assert done is not None and [r["status"] for r in done["results"]] == ["created"] * 4
        assert len(await db.fetchall("SELECT id FROM patients")) == 3
    finally:
        await db.close()
