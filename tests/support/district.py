"""A district on one machine: several ``run.py serve`` processes and a ``run.py worker``
on one PostgreSQL database, with writers and followers that talk to them over real HTTP
and real websockets, and the checks of the guarantee across processes.

- ``start_district``: N servers (no in-process consumer) and one worker, each with a
  data dir of its own (as on separate machines), all on ``database_url`` and the queue
  the given flags name.
- ``Acks``: every write a server acknowledged, as ``(id, server_version)``, with the
  process that took it and when it was sent and answered.
- Writers: ``rest_writer`` (creates, merge-patches and deletes over REST),
  ``upload_writer`` (sync uploads of creates and updates, with a ``batch_id``; with
  ``background=True`` stored ``async``, triggered, and applied by the worker).
- Followers: ``CursorFollower`` (download by cursor), ``SinceFollower`` (download by
  ``since``), ``WsFollower`` (a websocket subscriber); each records every entry it got
  and stops once it has reached the final head.
- ``check_follower``/``final_state``: what must hold of what a follower saw.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.httputil import HTTPHeaders
from tornado.websocket import websocket_connect

from tests.support.http import Response
from tests.support.servers import RunPy, ServerProcess

DOWNLOAD = "/api/sync/download/"


def queue_flags(kind: str, redis_queue: dict[str, str] | None = None) -> list[str]:
    """The command-line flags that put the site's queue on ``kind``: ``redis`` (the
    suite's Redis, a queue name of the test's own) or ``database`` (the queue follows
    the database: in the same PostgreSQL; no flags)."""
    if kind == "redis":
        assert redis_queue is not None
        return ["--queue-url", redis_queue["queue_url"], "--queue-name", redis_queue["queue_name"]]
    if kind == "database":
        return []
    raise AssertionError(kind)


@dataclass
class District:
    servers: list[ServerProcess]
    worker: RunPy
    database_url: str

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]


def start_district(start_server: Callable[..., ServerProcess], tmp_path: Path, database_url: str,
                   queue: list[str], servers: int = 2) -> District:
    """``servers`` × ``run.py serve --no-worker`` and one ``run.py worker``; the caller's
    ``server_process`` factory stops the servers, the caller stops the worker."""
    flags = ["--database-url", database_url, *queue]
    procs = [start_server("serve", "--no-worker", *flags, data_dir=tmp_path / f"serve{i}") for i in range(servers)]
    worker = RunPy(tmp_path / "worker", "worker", *flags).start()
    return District(procs, worker, database_url)


# Real HTTP ------------------------------------------------------------------------------------


def http_client() -> AsyncHTTPClient:
    return AsyncHTTPClient(force_instance=True, max_clients=64)


async def jcall(client: AsyncHTTPClient, method: str, url: str, body: Any = None, timeout: float = 30) -> Response:
    """One JSON request; a connection refused or cut is status 599 (Tornado's own)."""
    data = None if body is None else orjson.dumps(body)
    if data is None and method in ("POST", "PUT", "PATCH"):
        data = b""
    request = HTTPRequest(url, method=method, body=data, headers={"Content-Type": "application/json"},
                          request_timeout=timeout, connect_timeout=timeout)
    try:
        resp = await client.fetch(request, raise_error=False)
    except (OSError, HTTPClientError) as exc:  # no answer at all: refused, cut, or timed out
        return Response(599, HTTPHeaders(), orjson.dumps({"error": f"no answer: {exc!r}"}))
    return Response(resp.code, resp.headers, resp.body or b"")


# Acknowledged writes --------------------------------------------------------------------------


@dataclass
class Ack:
    where: int  # the server that took it
    sent: float  # time.monotonic() when the request went out
    answered: float  # ... and when its 2xx came back


@dataclass
class Acks:
    """Every write acknowledged with a 2xx: ``(id, server_version)`` -> ``Ack``."""

    pairs: dict[tuple[str, int], Ack] = field(default_factory=dict)
    #: pairs whose ack came from a stored batch (applied by the worker, not by the server answering)
    background: set[tuple[str, int]] = field(default_factory=set)

    def add(self, sid: str, version: int, ack: Ack, background: bool = False) -> None:
        key = (sid, version)
        assert key not in self.pairs, f"{key} acknowledged twice"
        self.pairs[key] = ack
        if background:
            self.background.add(key)

    def latest(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for sid, version in self.pairs:
            out[sid] = max(out.get(sid, 0), version)
        return out


def _ok(reply: Response, *statuses: int) -> Any:
    assert reply.status in statuses, (reply.status, reply.body[:500])
    return reply.json


async def rest_writer(client: AsyncHTTPClient, url: str, where: int, tag: str, rounds: int, acks: Acks) -> None:
    """Per round: a patient created and renamed, an Observation of it created and changed,
    every third one deleted: each answer acknowledges one (id, version)."""
    for i in range(rounds):
        sent = time.monotonic()
        p = _ok(await jcall(client, "POST", f"{url}/api/patients/", {"name": f"{tag} {i}", "dob": "1990-01-01"}), 201)
        acks.add(p["id"], p["server_version"], Ack(where, sent, time.monotonic()))
        sent = time.monotonic()
        p = _ok(await jcall(client, "PATCH", f"{url}/api/patients/{p['id']}/", {"name": f"{tag} {i} b"}), 200)
        acks.add(p["id"], p["server_version"], Ack(where, sent, time.monotonic()))
        sent = time.monotonic()
        r = _ok(await jcall(client, "POST", f"{url}/api/records/",
                            {"patient": p["id"], "resource_type": "Observation", "data": {"v": i}}), 201)
        acks.add(r["id"], r["server_version"], Ack(where, sent, time.monotonic()))
        sent = time.monotonic()
        r = _ok(await jcall(client, "PATCH", f"{url}/api/records/{r['id']}/", {"data": {"v": -i - 1}}), 200)
        acks.add(r["id"], r["server_version"], Ack(where, sent, time.monotonic()))
        if i % 3 == 0:
            sent = time.monotonic()
            _ok(await jcall(client, "DELETE", f"{url}/api/records/{r['id']}/"), 204)
            acks.add(r["id"], r["server_version"] + 1, Ack(where, sent, time.monotonic()))


def upload_changes(prefix: str, creates: int, updates: list[str]) -> list[dict[str, Any]]:
    """``creates`` patients, each with an Observation, and a rename of each of ``updates``."""
    changes: list[dict[str, Any]] = []
    for j in range(creates):
        changes.append({"operation": "create", "resource_type": "Patient", "client_temp_id": f"{prefix}p{j}",
                        "payload": {"name": f"{prefix} {j}"}})
        changes.append({"operation": "create", "resource_type": "Observation", "client_temp_id": f"{prefix}o{j}",
                        "payload": {"patient_temp_id": f"{prefix}p{j}", "value": j}})
    for k, sid in enumerate(updates):
        changes.append({"operation": "update", "resource_type": "Patient", "server_id": sid,
                        "payload": {"name": f"{prefix} renamed {k}"}})
    return changes


async def wait_batch(client: AsyncHTTPClient, url: str, batch_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = _ok(await jcall(client, "GET", f"{url}/api/sync/batches/{batch_id}/"), 200)
        if body["status"] == "done":
            return body
        assert body["status"] in ("pending", "processing") and time.monotonic() < deadline, body
        await asyncio.sleep(0.05)


async def upload_writer(client: AsyncHTTPClient, url: str, where: int, device: str, uploads: int, acks: Acks,
                        creates: int = 5, background: bool = False) -> None:
    """``uploads`` sync uploads from ``device``, each creating ``creates`` patients with an
    Observation and renaming the previous upload's patients; with ``background`` each is
    stored (``async``), triggered, and acknowledged once the worker has applied it."""
    previous: list[str] = []
    for i in range(uploads):
        body: dict[str, Any] = {"device_id": device, "batch_id": str(uuid.uuid4()),
                                "changes": upload_changes(f"{device}-{i}-", creates, previous)}
        sent = time.monotonic()
        if background:
            body["async"] = True
            stored = _ok(await jcall(client, "POST", f"{url}/api/sync/upload/", body), 202)
            _ok(await jcall(client, "POST", f"{url}/api/sync/trigger/{stored['batch_id']}/"), 202)
            results = (await wait_batch(client, url, stored["batch_id"]))["results"]
        else:
            results = _ok(await jcall(client, "POST", f"{url}/api/sync/upload/", body), 200)["results"]
        answered = time.monotonic()
        assert [r["status"] for r in results] == ["created"] * (2 * creates) + ["updated"] * len(previous), results
        for r in results:
            acks.add(r["server_id"], r["server_version"], Ack(where, sent, answered), background)
        previous = [r["server_id"] for r in results[: 2 * creates : 2]]


# Followers -----------------------------------------------------------------------------------


@dataclass
class Seen:
    """One entry as a follower got it."""

    sid: str
    version: int
    updated_at: str
    at: float  # time.monotonic() when it arrived
    wall: float  # time.time() when it arrived (to compare with updated_at, the database's clock)
    seq: int | None = None  # known to a cursor follower reading one entry a page
    entry: dict[str, Any] | None = None


class Follower:
    name = "follower"

    def __init__(self, url: str, where: int) -> None:
        self.url = url
        self.where = where
        self.seen: list[Seen] = []
        #: set to the final head once every writer is done: run() returns once it got there
        self.final_head: int | None = None
        self.reached: int = 0  # the seq (cursor) it has got up to

    def __repr__(self) -> str:
        return f"{self.name} on server {self.where}"

    def done(self) -> bool:
        return self.final_head is not None and self.reached >= self.final_head

    def record(self, entries: list[dict[str, Any]], seq: int | None = None) -> None:
        now, wall = time.monotonic(), time.time()
        for e in entries:
            self.seen.append(Seen(e["server_id"], e["server_version"], e["updated_at"], now, wall, seq, e))


class CursorFollower(Follower):
    """Download by ``cursor``, ``limit`` entries a page; with ``limit=1`` each entry's seq
    is its page's cursor (the cursor of a cut page is its last entry's, of the last page
    the head's, which is the newest entry's)."""

    name = "cursor follower"

    def __init__(self, url: str, where: int, client: AsyncHTTPClient, limit: int) -> None:
        super().__init__(url, where)
        self.client = client
        self.limit = limit
        self.cursors: list[int] = []

    async def run(self, timeout: float) -> None:
        cursor, deadline = "0", time.monotonic() + timeout
        while not self.done():
            assert time.monotonic() < deadline, f"{self} stuck at {cursor} (head {self.final_head})"
            page = _ok(await jcall(self.client, "GET", f"{self.url}{DOWNLOAD}?cursor={cursor}&limit={self.limit}"), 200)
            cursor = page["cursor"]
            self.cursors.append(int(cursor))
            self.record(page["changes"], int(cursor) if self.limit == 1 and page["changes"] else None)
            self.reached = int(cursor)
            if not page["has_more"]:
                await asyncio.sleep(0.02)


class SinceFollower(Follower):
    """Download by ``since`` (the seed's way: the last page's ``server_time``)."""

    name = "since follower"

    def __init__(self, url: str, where: int, client: AsyncHTTPClient, limit: int) -> None:
        super().__init__(url, where)
        self.client = client
        self.limit = limit

    async def run(self, timeout: float) -> None:
        since, deadline = "1970-01-01T00:00:00Z", time.monotonic() + timeout
        while not self.done():
            assert time.monotonic() < deadline, f"{self} stuck at {since} (head {self.final_head})"
            page = _ok(await jcall(self.client, "GET", f"{self.url}{DOWNLOAD}?since={since}&limit={self.limit}"), 200)
            since = page["server_time"]
            self.record(page["changes"])
            self.reached = int(page["cursor"])
            if not page["has_more"]:
                await asyncio.sleep(0.02)


class WsFollower(Follower):
    """A websocket subscriber from ``cursor=0``."""

    name = "websocket"

    def __init__(self, url: str, where: int) -> None:
        super().__init__(url, where)
        self.conn: Any = None
        self.cursors: list[int] = []

    async def connect(self, query: str = "cursor=0") -> None:
        self.conn = await websocket_connect(self.url.replace("http://", "ws://") + f"/api/sync/ws?{query}")
        hello = orjson.loads(await self.conn.read_message())
        assert hello["type"] == "hello", hello

    async def run(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.done():
            left = deadline - time.monotonic()
            assert left > 0, f"{self} stuck at {self.reached} (head {self.final_head})"
            try:
                raw = await asyncio.wait_for(self.conn.read_message(), min(left, 0.5))
            except TimeoutError:
                continue
            assert raw is not None, f"{self}: socket closed"
            msg = orjson.loads(raw)
            if msg["type"] == "changes":
                self.record(msg["changes"])
                self.cursors.append(int(msg["cursor"]))
                self.reached = int(msg["cursor"])
            else:
                assert msg["type"] == "batch", msg

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


# Checks --------------------------------------------------------------------------------------


def final_state(database_url: str) -> tuple[int, dict[str, tuple[int, int]]]:
    """The database's head and ``id -> (server_version, seq)`` of every patient and record."""
    with psycopg.connect(database_url, connect_timeout=5) as conn:
        head = conn.execute("SELECT seq FROM clock WHERE id = 1").fetchone()
        rows = conn.execute("SELECT id, server_version, seq FROM patients"
                            " UNION ALL SELECT id, server_version, seq FROM records").fetchall()
    assert head is not None
    return int(head[0]), {str(r[0]): (int(r[1]), int(r[2])) for r in rows}


def check_follower(f: Follower, acks: Acks, head: int, rows: dict[str, tuple[int, int]]) -> None:
    """What every follower must have seen: each (id, version) at most once (nothing twice),
    in commit order (``updated_at`` strictly increasing: it is stamped with seq), nothing
    that was not acknowledged, every acknowledged write or a later version of its item,
    and the final version of every item."""
    pairs = [(s.sid, s.version) for s in f.seen]
    twice = [p for p, n in Counter(pairs).items() if n > 1]
    assert not twice, f"{f} got {sorted(twice)[:5]} twice"
    stamps = [s.updated_at for s in f.seen]
    assert all(a < b for a, b in zip(stamps, stamps[1:], strict=False)), f"{f}: updated_at not increasing"
    phantom = set(pairs) - set(acks.pairs)
    assert not phantom, f"{f} got writes nobody acknowledged: {sorted(phantom)[:5]}"
    newest: dict[str, int] = {}
    for sid, version in pairs:
        assert version > newest.get(sid, 0), f"{f} got {sid} v{version} after v{newest[sid]}"
        newest[sid] = version
    missed = [p for p in acks.pairs if newest.get(p[0], 0) < p[1]]
    assert not missed, f"{f} never got {len(missed)} acknowledged writes, e.g. {missed[:5]}"
    assert newest == {sid: v for sid, (v, _) in rows.items()}, f"{f}: final versions differ from the database's"
    assert f.reached == head


def check_seq(f: CursorFollower, acks: Acks, head: int, rows: dict[str, tuple[int, int]]) -> None:
    """Seq as a one-entry-a-page cursor follower sees it: strictly increasing, within
    1..head, each item's final version at the seq the database holds; and contiguous:
    every write took exactly one seq (head = the number of acknowledged writes, all of
    them 2xx), and every seq the follower skipped was a version replaced before it got
    there (it got a later version of that item)."""
    assert f.limit == 1
    seqs = [s.seq for s in f.seen]
    assert all(s is not None for s in seqs)
    assert all(a < b for a, b in zip(seqs, seqs[1:], strict=False)), f"{f}: seq not increasing"  # type: ignore[operator]
    assert seqs[0] >= 1 and seqs[-1] == head  # type: ignore[operator]
    assert head == len(acks.pairs), f"head {head} but {len(acks.pairs)} writes acknowledged: a seq was lost or reused"
    for s in f.seen:
        version, seq = rows[s.sid]
        if s.version == version:
            assert s.seq == seq, f"{f} got {s.sid} v{version} at {s.seq}, the database has it at {seq}"
    cursors = f.cursors
    assert all(a <= b for a, b in zip(cursors, cursors[1:], strict=False)), f"{f}: cursor went back"
