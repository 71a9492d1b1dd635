"""The push channel with real websocket clients against a real server."""

from __future__ import annotations

import asyncio
import random
import sys
import textwrap
import time

import orjson
import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from tests.support import ROOT
from tests.support.databases import execute
from tests.support.ws import Client

pytestmark = pytest.mark.both_backends


async def test_catch_up_then_live(api, ws):
    p = await api.new_patient()
    r = await api.new_record(p["id"])
    client = await ws("cursor=0")
    caught = await client.changes_until(2)
    assert [e["server_id"] for e in caught] == [p["id"], r["id"]]
    download = (await api.get("/api/sync/download/?cursor=0")).json
    assert caught == download["changes"]
    assert client.cursor == download["cursor"]
    # live: a new change arrives without asking
    r2 = await api.new_record(p["id"], data={"live": True})
    entries = await client.changes_until(3)
    assert entries[2]["server_id"] == r2["id"] and entries[2]["data"] == {"live": True}
    last = client.messages[-1]
    assert last["type"] == "changes" and last["server_time"] == r2["updated_at"]


async def test_hello_describes_the_stream(api, ws):
    await api.new_patient()
    client = await ws("since=1970-01-01T00:00:00Z")
    hello = client.messages[0]
    assert hello["since"] == "1970-01-01T00:00:00.000000Z" and hello["head"] == "1"
    assert (await client.changes_until(1))[0]["resource_type"] == "Patient"


async def test_filters(api, ws):
    a = await api.new_patient(name="A")
    b = await api.new_patient(name="B")
    only_obs = await ws("cursor=0&resource_type=Observation")
    only_a = await ws(f"cursor=0&patient={a['id']}")
    everything = await ws("cursor=0")
    await everything.changes_until(2)
    ra = await api.new_record(a["id"], resource_type="Observation")
    rb = await api.new_record(b["id"], resource_type="Condition")
    rb2 = await api.new_record(b["id"], resource_type="Observation")
    await everything.changes_until(5)
    assert [e["server_id"] for e in await only_obs.changes_until(2)] == [ra["id"], rb2["id"]]
    assert [e["server_id"] for e in await only_a.changes_until(2)] == [a["id"], ra["id"]]
    assert rb["id"] not in [e["server_id"] for e in only_obs.changes]


async def test_resume_after_disconnect(api, ws):
    p = await api.new_patient()
    first = await ws("cursor=0")
    await first.changes_until(1)
    cursor = first.cursor
    first.close()
    r = await api.new_record(p["id"])
    again = await ws(f"cursor={cursor}")
    assert [e["server_id"] for e in await again.changes_until(1)] == [r["id"]]


async def test_ping_and_bad_messages(api, ws):
    client = await ws("cursor=0")
    await client.conn.write_message(orjson.dumps({"type": "ping"}))
    assert (await client.until(lambda m: m["type"] != "changes"))["type"] == "pong"
    await client.conn.write_message("this is not json")
    err = await client.until(lambda m: m["type"] != "changes")
    assert err["type"] == "error" and "ping" in err["error"]
    await client.conn.write_message(orjson.dumps({"type": "subscribe"}))
    assert (await client.next())["type"] == "error"
    # still open and live
    p = await api.new_patient()
    assert (await client.changes_until(1))[0]["server_id"] == p["id"]


@pytest.mark.parametrize(
    "query, status",
    [("", 400), ("since=banana", 400), ("cursor=x", 400), ("cursor=0&resource_type=Nope", 400),
     ("cursor=0&patient=nope", 400), ("cursor=99", 410),
     ("since=0001-01-01T00:00:00%2B01:00", 400), ("since=9999-12-31T23:59:59-01:00", 400)],
)
async def test_bad_handshakes_are_json_errors(http_server_client, query, status):
    url = http_server_client.get_url(f"/api/sync/ws?{query}").replace("http://", "ws://")
    with pytest.raises(HTTPClientError) as err:
        await websocket_connect(url)
    assert err.value.code == status
    body = orjson.loads(err.value.response.body)
    assert body["error"] and isinstance(body["details"], list)


async def test_origins(http_server_client):
    url = http_server_client.get_url("/api/sync/ws?cursor=0").replace("http://", "ws://")
    with pytest.raises(HTTPClientError) as err:
        await websocket_connect(HTTPRequest(url, headers={"Origin": "http://evil.example"}))
    assert err.value.code == 403
    assert orjson.loads(err.value.response.body)["error"] == "Cross origin websockets not allowed"
    ok = await websocket_connect(HTTPRequest(url, headers={"Origin": "http://localhost:5173"}))
    ok.close()
    host = url.split("/")[2]
    same = await websocket_connect(HTTPRequest(url, headers={"Origin": f"http://{host}"}))
    same.close()


@pytest.mark.parametrize("since", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "9999-12-31T23:59:59%2B01:00"])
async def test_since_at_the_edges_of_the_date_range(api, ws, since):
    client = await ws(f"since={since}")
    p = await api.new_patient()
    assert (await client.changes_until(1))[0]["server_id"] == p["id"]


@pytest.mark.parametrize(
    "method, headers, status",
    [("GET", {}, 400),  # a plain request, no Upgrade header
     ("GET", {"Upgrade": "websocket"}, 400),  # no "Connection: Upgrade"
     ("GET", {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "8"}, 426),
     ("POST", {}, 405)],
)
async def test_refusals_before_the_upgrade_are_json(api, method, headers, status):
    resp = await api.request(method, "/api/sync/ws?cursor=0", raw=b"{}" if method == "POST" else None, headers=headers)
    assert resp.status == status, resp.body
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.json["error"] and resp.json["details"] == []


@pytest.mark.expect_error_logs
async def test_a_fault_before_the_upgrade_is_a_json_500(app, http_server_client, settings):
    # the schema lost its clock: every handshake fails
    await asyncio.to_thread(execute, settings, "ALTER TABLE clock RENAME TO clock_gone")
    url = http_server_client.get_url("/api/sync/ws?cursor=0").replace("http://", "ws://")
    with pytest.raises(HTTPClientError) as err:
        await websocket_connect(url)
    assert err.value.code == 500
    assert err.value.response.headers["Content-Type"].startswith("application/json")
    assert orjson.loads(err.value.response.body) == {"error": "internal server error", "details": []}


async def test_trailing_slash(http_server_client):
    url = http_server_client.get_url("/api/sync/ws/?cursor=0").replace("http://", "ws://")
    conn = await websocket_connect(url)
    assert orjson.loads(await conn.read_message())["type"] == "hello"
    conn.close()


async def test_guarantee_under_concurrent_writes(api, ws):
    """Subscribers connecting at random moments while writers run: each stream equals
    the download sequence from its start point."""
    rnd = random.Random()
    stop = asyncio.Event()
    patients: list[str] = []

    async def writer(tag: str) -> None:
        i = 0
        while not stop.is_set():
            if not patients or rnd.random() < 0.3:
                patients.append((await api.new_patient(name=f"{tag}{i}"))["id"])
            elif rnd.random() < 0.5:
                changes = [{"operation": "update", "resource_type": "Patient", "server_id": rnd.choice(patients),
                            "payload": {"name": f"{tag}-{i}-{k}"}} for k in range(rnd.randint(1, 30))]
                await api.post("/api/sync/upload/", {"device_id": tag, "changes": changes})
            else:
                await api.new_record(rnd.choice(patients))
            i += 1

    writers = [asyncio.ensure_future(writer(t)) for t in ("w1", "w2")]
    subscribers: list[tuple[str, Client]] = []
    for _ in range(8):
        await asyncio.sleep(rnd.random() * 0.15)
        start = (await api.get("/api/sync/download/?cursor=0&limit=1")).json["cursor"]
        start = str(rnd.randint(0, int(start)))
        subscribers.append((start, await ws(f"cursor={start}")))
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.gather(*writers)
    head = (await api.get("/api/sync/download/?cursor=0&limit=1")).json
    final_cursor = (await api.get(f"/api/sync/download/?cursor={head['cursor']}")).json["cursor"]
    for start, client in subscribers:
        while client.cursor != final_cursor:
            await client.next()
        # what download returns for the same range, page by page from the same start
        expected, cursor = [], start
        while True:
            page = (await api.get(f"/api/sync/download/?cursor={cursor}&limit=10000")).json
            expected += page["changes"]
            cursor = page["cursor"]
            if not page["has_more"]:
                break
        got = client.changes
        stamps = [e["updated_at"] for e in got]
        assert stamps == sorted(set(stamps)), "gap-free, duplicate-free, in order"
        latest = {}
        for e in got:
            latest[e["server_id"]] = e
        assert latest == {e["server_id"]: e for e in expected}


@pytest.fixture
def settings(settings_with):
    return settings_with(push_max_buffer_bytes=64 * 1024)


@pytest.mark.slow
@pytest.mark.sqlite_only  # 24 MB through the hub's buffers, the same on both; kept to one backend for time
async def test_slow_subscriber_does_not_hold_back_others(app, api, ws):
    hub = app.ctx.hub
    slow = await ws("cursor=0")  # connects, then stops reading
    fast = await ws("cursor=0")
    p = await api.new_patient()
    blob = "x" * 4000
    total = 1
    biggest_frame = 0
    # ~24 MB in all: more than loopback's kernel buffers can hide from the server
    for b in range(6):
        changes = [{"operation": "create", "resource_type": "Observation", "client_temp_id": f"{b}-{i}",
                    "payload": {"patient_id": p["id"], "blob": blob}} for i in range(1000)]
        assert (await api.post("/api/sync/upload/", {"device_id": "d", "changes": changes})).status == 200
        total += 1000
        # the fast reader gets every change promptly, whatever the slow one does
        started = time.monotonic()
        await fast.changes_until(total, timeout=20)
        assert time.monotonic() - started < 10
        biggest_frame = max(biggest_frame, max(len(orjson.dumps(m)) for m in fast.messages))
        for sub in hub.subs:
            assert sub.buffered <= hub.max_buffer + biggest_frame + 4096
    # (Whether a later frame found it still paused, and was dropped, or already catching
    # up by reads once the kernel took its bytes, depends on the machine's timing.)
    assert hub.stats["lagged"] >= 1, "the slow reader was never paused"
    # once it reads again it is caught up by reads: nothing missed, nothing repeated
    got = await slow.changes_until(total, timeout=30)
    assert [e["server_id"] for e in got] == [e["server_id"] for e in fast.changes]
    # and it is live again
    r = await api.new_record(p["id"])
    assert (await slow.changes_until(total + 1))[-1]["server_id"] == r["id"]


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, {root!r})
    from healthsync.resources import Resources
    from healthsync.storage import Database
    from healthsync.storage.postgres import PostgresDatabase

    async def main():
        db = await (PostgresDatabase({url!r}) if {url!r} else Database({path!r})).open()
        await Resources(db).create_patient({{"name": "from another process"}})
        await db.close()

    asyncio.run(main())
    """
)


async def test_changes_from_another_process_are_pushed(api, ws, settings):
    await api.new_patient()
    client = await ws("cursor=1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD.format(root=str(ROOT), path=str(settings.db_path), url=settings.database_url))
    assert await proc.wait() == 0
    entries = await client.changes_until(1, timeout=10)
    assert entries[0]["data"]["name"] == "from another process"


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 0xFFFF, 0x10000, 300_000])
def test_text_frame_header_by_payload_length(size):
    from healthsync.web.ws import text_frame

    payload = b"x" * size
    frame = text_frame(payload)
    assert frame[0] == 0x81  # FIN, text
    assert frame[1] & 0x80 == 0  # a server never masks
    length, header = frame[1], 2
    if length == 126:
        length, header = int.from_bytes(frame[2:4], "big"), 4
    elif length == 127:
        length, header = int.from_bytes(frame[2:10], "big"), 10
    assert length == size and frame[header:] == payload
    assert header == (2 if size < 126 else 4 if size <= 0xFFFF else 10)  # the shortest form, as RFC 6455 asks


async def test_frames_of_every_length_class_arrive_whole(api, ws):
    """Live frames under 126 bytes cannot carry a change; the catch-up page and
    live frames of 16-bit and 64-bit lengths are read back by Tornado's own client."""
    client = await ws("cursor=0")
    small = await api.new_patient(name="S")
    big = await api.new_patient(name="B", fhir={"note": "y" * 70_000})
    entries = await client.changes_until(2)
    assert [e["server_id"] for e in entries] == [small["id"], big["id"]]
    assert entries[1]["data"]["fhir"]["note"] == "y" * 70_000
    late = await ws("cursor=0")  # catch-up: both in one page
    assert [e["server_id"] for e in await late.changes_until(2)] == [small["id"], big["id"]]
    await late.conn.write_message(b'{"type": "ping"}')
    assert (await late.until(lambda m: m["type"] == "pong"))["type"] == "pong"


async def test_a_handshake_during_shutdown_gets_a_close_frame(app, http_server_client):
    await app.ctx.hub.close()
    url = http_server_client.get_url("/api/sync/ws?cursor=0").replace("http://", "ws://")
    conn = await websocket_connect(url)
    try:
        assert await asyncio.wait_for(conn.read_message(), 5) is None
        assert (conn.close_code, conn.close_reason) == (1001, "server shutting down")
    finally:
        conn.close()
