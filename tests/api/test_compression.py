"""Compression on slow links: gzip answers, gzip request bodies (the size limit on the
inflated body), and permessage-deflate on the sync websocket."""

from __future__ import annotations

import asyncio
import gzip
import urllib.request
import zlib
from pathlib import Path

import orjson
import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from healthsync.web.base import accepts_gzip
from tests.support.http import UPLOAD, call, patient_changes, post_chunked, upload
from tests.support.ws import Client, ws_url

pytestmark = pytest.mark.both_backends

LIMIT = 256 * 1024


@pytest.fixture
def settings(settings_with):
    return settings_with(max_body_bytes=LIMIT)


async def fetch(http_server_client, path: str, **kw):
    """One request as it comes off the wire: no automatic Accept-Encoding, no inflating."""
    kw.setdefault("raise_error", False)
    return await http_server_client.fetch(path, decompress_response=False, **kw)


def gz(value) -> bytes:
    return gzip.compress(value if isinstance(value, bytes) else orjson.dumps(value))


async def seed(api, n: int = 200) -> None:
    resp = await upload(api, patient_changes(n))
    assert resp.status == 200, resp.json


# Answers ------------------------------------------------------------------------------------


async def test_download_is_gzipped_when_asked_and_decodes_to_the_same_json(api, http_server_client):
    await seed(api)
    path = "/api/sync/download/?cursor=0&limit=500"
    zipped = await fetch(http_server_client, path, headers={"Accept-Encoding": "gzip"})
    plain = await fetch(http_server_client, path)
    assert zipped.code == plain.code == 200
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in zipped.headers["Vary"] and "Accept-Encoding" in plain.headers["Vary"]
    assert "Content-Encoding" not in plain.headers
    assert int(zipped.headers["Content-Length"]) == len(zipped.body) < len(plain.body) / 4
    got, want = orjson.loads(gzip.decompress(zipped.body)), orjson.loads(plain.body)
    assert len(want["changes"]) == 200
    assert got["changes"] == want["changes"] and got["cursor"] == want["cursor"]


async def test_lists_are_gzipped_too(api, http_server_client):
    await seed(api, 50)
    resp = await fetch(http_server_client, "/api/patients/?limit=50", headers={"Accept-Encoding": "gzip, deflate, br"})
    assert resp.code == 200 and resp.headers["Content-Encoding"] == "gzip"
    assert len(orjson.loads(gzip.decompress(resp.body))) == 50


@pytest.mark.parametrize("accept", [None, "identity", "gzip;q=0", "br", "*;q=0"])
async def test_no_gzip_unless_accepted(api, http_server_client, accept):
    await seed(api, 50)
    headers = {} if accept is None else {"Accept-Encoding": accept}
    resp = await fetch(http_server_client, "/api/sync/download/?cursor=0", headers=headers)
    assert resp.code == 200 and "Content-Encoding" not in resp.headers
    assert len(orjson.loads(resp.body)["changes"]) == 50


async def test_small_answers_are_not_gzipped(http_server_client):
    resp = await fetch(http_server_client, "/api/nothing-here/", headers={"Accept-Encoding": "gzip"})
    assert resp.code == 404 and "Content-Encoding" not in resp.headers
    assert orjson.loads(resp.body)["error"].startswith("no such path")


def test_accept_encoding_is_read_with_its_weights():
    assert accepts_gzip("gzip") and accepts_gzip("deflate, GZIP;q=0.5") and accepts_gzip("*")
    assert accepts_gzip("br, *;q=0.1") and accepts_gzip("x-gzip")
    assert not accepts_gzip("") and not accepts_gzip("br") and not accepts_gzip("gzip;q=0")
    assert not accepts_gzip("gzip;q=0.0, *") and not accepts_gzip("*;q=0") and not accepts_gzip("gzip;q=nonsense")


# Request bodies -----------------------------------------------------------------------------


async def test_gzip_upload_is_applied(api):
    body = {"device_id": "device123", "changes": patient_changes(300)}
    resp = await api.post(UPLOAD, raw=gz(body), headers={"Content-Encoding": "gzip"})
    assert resp.status == 200, resp.json
    assert [r["status"] for r in resp.json["results"]] == ["created"] * 300
    down = (await api.get("/api/sync/download/?cursor=0&limit=1000")).json
    assert len(down["changes"]) == 300


async def test_gzip_bodies_on_rest_writes(api):
    created = await api.post("/api/patients/", raw=gz({"name": "Zipped"}), headers={"Content-Encoding": "GZIP"})
    assert created.status == 201, created.json
    pid = created.json["id"]
    patched = await api.patch(f"/api/patients/{pid}/", raw=gz({"name": "Still zipped"}),
                              headers={"Content-Encoding": "gzip", "If-Match": created.headers["ETag"]})
    assert patched.status == 200, patched.json
    assert (await api.get(f"/api/patients/{pid}/")).json["name"] == "Still zipped"
    # identity is no encoding at all; gzip members one after another are one body (as gzip(1) has it)
    raw = orjson.dumps({"name": "Plain"})
    assert (await api.post("/api/patients/", raw=raw, headers={"Content-Encoding": "identity"})).status == 201
    two = gzip.compress(raw[:5]) + gzip.compress(raw[5:])
    assert (await api.post("/api/patients/", raw=two, headers={"Content-Encoding": "gzip"})).status == 201


async def test_a_gzip_body_within_the_limit_inflated_is_accepted_up_to_it(api):
    # about 200 KiB inflated, under the 256 KiB limit; far smaller on the wire
    body = {"device_id": "device123", "changes": patient_changes(2000)}
    raw = orjson.dumps(body)
    assert len(raw) < LIMIT
    assert (await api.post(UPLOAD, raw=gz(raw), headers={"Content-Encoding": "gzip"})).status == 200


async def assert_bomb_refused(resp, app) -> None:
    assert resp.status == 413, resp.json
    assert resp.json == {
        "error": f"request body is over the limit of {LIMIT} bytes once inflated (Content-Encoding: gzip)",
        "details": [],
    }
    assert resp.headers["Content-Type"].startswith("application/json")
    for _ in range(200):
        if app.ctx.inflight == 0:
            break
        await asyncio.sleep(0.05)
    assert app.ctx.inflight == 0


async def test_zip_bomb_is_413(api, app):
    bomb = gz(bytes(10 << 20))  # 10 MiB of zeros: about 10 KiB gzipped
    assert len(bomb) < 20_000
    await assert_bomb_refused(await api.post(UPLOAD, raw=bomb, headers={"Content-Encoding": "gzip"}), app)
    # a valid JSON document just over the limit once inflated: the same 413
    big = orjson.dumps({"device_id": "device123", "changes": [], "pad": "x" * LIMIT})
    await assert_bomb_refused(await api.post(UPLOAD, raw=gz(big), headers={"Content-Encoding": "gzip"}), app)
    assert (await upload(api, patient_changes(1))).status == 200  # nothing applied, server fine
    assert len((await api.get("/api/sync/download/?cursor=0")).json["changes"]) == 1


async def test_chunked_zip_bomb_is_413_as_it_arrives(api, app, http_server_client):
    bomb = gz(bytes(64 << 20))
    pieces = (bomb[i : i + 4096] for i in range(0, len(bomb), 4096))
    url = http_server_client.get_url(UPLOAD)
    resp = await asyncio.to_thread(post_chunked, url, pieces, {"Content-Encoding": "gzip"})
    assert resp.headers["Connection"] == "close"
    await assert_bomb_refused(resp, app)


@pytest.mark.parametrize(
    "raw, why",
    [
        (b"this is not gzip at all", "incorrect header check"),
        (gz({"device_id": "d", "changes": []})[:-12], "truncated"),
        (gz({"device_id": "d", "changes": []})[:10] + b"\xff" * 40, "invalid"),
    ],
    ids=["not-gzip", "truncated", "corrupt-deflate"],
)
async def test_corrupt_gzip_is_400(api, raw, why):
    resp = await api.post(UPLOAD, raw=raw, headers={"Content-Encoding": "gzip"})
    assert resp.status == 400, resp.json
    assert resp.json["error"].startswith("request body is not valid gzip (Content-Encoding: gzip)")
    assert why in resp.json["error"]
    assert resp.json["details"] == [{"field": "Content-Encoding", "message": "body is not valid gzip"}]
    assert (await api.get("/api/sync/download/?cursor=0")).json["changes"] == []


async def test_gzip_of_something_that_is_not_json_is_the_usual_400(api):
    resp = await api.post(UPLOAD, raw=gz(b"{not json"), headers={"Content-Encoding": "gzip"})
    assert resp.status == 400 and "gzip" not in resp.json["error"]


@pytest.mark.parametrize("encoding", ["br", "deflate", "gzip, br", "gzip, gzip"])
async def test_unsupported_content_encoding_is_415(api, encoding):
    resp = await api.post("/api/patients/", raw=gz({"name": "x"}), headers={"Content-Encoding": encoding})
    assert resp.status == 415, resp.json
    assert "Content-Encoding" in resp.json["error"] or "gzipped more than once" in resp.json["error"]
    assert resp.json["details"] == [{"field": "Content-Encoding", "message": "expected gzip or none"}]
    assert resp.headers["Accept-Encoding"] == "gzip"
    assert (await api.get("/api/patients/")).json == []


@pytest.mark.slow
@pytest.mark.sqlite_only
def test_a_gigabyte_bomb_costs_a_real_server_no_more_than_the_limit(server_process):
    """1 GiB of zeros (about 1 MiB on the wire, as gzip members one after another) to a
    real ``run.py`` with the default 16 MiB limit: a JSON 413, and the server's peak
    resident memory grows by a few times the limit at most (about 32 MiB), not by a gigabyte."""
    server = server_process()
    member = gzip.compress(bytes(16 << 20), compresslevel=9)
    bomb = member * 64
    assert len(bomb) < 2 << 20

    def peak_kib() -> int:
        status = Path(f"/proc/{server.proc.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])

    before = peak_kib()
    req = urllib.request.Request(f"{server.url}{UPLOAD}", data=bomb, method="POST",
                                 headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, body = err.code, err.read()
    assert status == 413, body
    assert orjson.loads(body)["error"] == (
        f"request body is over the limit of {16 << 20} bytes once inflated (Content-Encoding: gzip)"
    )
    grown = peak_kib() - before  # about twice the limit (the pieces kept, zlib's buffers)
    assert grown < 64 * 1024, f"peak RSS grew by {grown} KiB"


# The websocket --------------------------------------------------------------------------------


async def collect(conn, count: int) -> list[dict]:
    client = Client(conn)
    await client.next()  # hello
    return await client.changes_until(count, timeout=20)


async def test_websocket_with_permessage_deflate_receives_the_same_frames(api, http_server_client):
    await seed(api, 1500)  # two catch-up pages at the default page size of 1,000
    url = ws_url(http_server_client, "cursor=0")
    deflated = await websocket_connect(HTTPRequest(url), compression_options={})
    plain = await websocket_connect(HTTPRequest(url))
    try:
        assert "permessage-deflate" in deflated.headers.get("Sec-WebSocket-Extensions", "")
        assert "Sec-WebSocket-Extensions" not in plain.headers
        got, want = await collect(deflated, 1500), await collect(plain, 1500)
        assert got == want and len(got) == 1500
        # the catch-up went compressed: far fewer bytes on the wire than in the messages
        proto = deflated.protocol
        assert proto._wire_bytes_in < proto._message_bytes_in / 4
        # live frames arrive uncompressed on the same socket, and decode the same
        created = await upload(api, patient_changes(3, prefix="live"))
        assert created.status == 200
        live_deflated = await Client(deflated).changes_until(3)
        live_plain = await Client(plain).changes_until(3)
        assert live_deflated == live_plain
        assert {c["server_id"] for c in live_deflated} == {r["server_id"] for r in created.json["results"]}
        # the client's own messages go compressed too (context kept between them): all answered
        for _ in range(3):
            await deflated.write_message(b'{"type":"ping"}')
            await Client(deflated).until(lambda m: m["type"] == "pong")  # past any batch event
    finally:
        deflated.close()
        plain.close()


async def test_websocket_offer_of_a_256_byte_window_gets_no_compression(api, http_server_client):
    """zlib cannot compress with a 256-byte window: such an offer gets an uncompressed socket."""
    await seed(api, 5)
    offer = "permessage-deflate; server_max_window_bits=8; client_max_window_bits"
    conn = await websocket_connect(HTTPRequest(ws_url(http_server_client, "cursor=0"),
                                               headers={"Sec-WebSocket-Extensions": offer}))
    try:
        assert "Sec-WebSocket-Extensions" not in conn.headers
        assert len(await collect(conn, 5)) == 5
    finally:
        conn.close()


def test_deflate_frames_inflate_with_the_agreed_window():
    from healthsync.web.ws import deflate

    payload = orjson.dumps({"type": "changes", "changes": [{"n": i, "name": "Patient"} for i in range(500)]})
    for wbits in (9, 12, 15):
        z = zlib.decompressobj(-wbits)
        assert z.decompress(deflate(payload, wbits) + b"\x00\x00\xff\xff") == payload
    # two messages, each compressed on its own, through one inflater that keeps its window
    z = zlib.decompressobj(-15)
    for part in (payload, payload[::-1]):
        assert z.decompress(deflate(part, 15) + b"\x00\x00\xff\xff") == part


CHROMIUM_PAGE_SCRIPT = """async ([count, more]) => {
  const down = await fetch('/api/sync/download/?cursor=0&limit=5000');
  const body = await down.json();
  const ws = new WebSocket(location.origin.replace('http', 'ws') + '/api/sync/ws?cursor=0');
  const got = [];
  let live = null;
  await new Promise((resolve, reject) => {
    ws.onerror = () => reject(new Error('websocket error'));
    ws.onmessage = (e) => {
      const msg = JSON.parse(e.data);
      if (msg.type !== 'changes') return;
      got.push(...msg.changes.map((c) => c.server_id));
      if (got.length === count && live === null) {
        live = fetch('/api/sync/upload/', {method: 'POST', headers: {'Content-Type': 'application/json'},
          body: JSON.stringify({device_id: 'browser', changes: more})});
      }
      if (got.length >= count + more.length) resolve();
    };
  });
  ws.close();
  return {encoding: down.headers.get('content-encoding'), downloaded: body.changes.map((c) => c.server_id),
          extensions: ws.extensions, received: got, live: (await live).status};
}"""


@pytest.mark.slow
@pytest.mark.sqlite_only
def test_chromium_gets_gzip_and_a_compressed_catch_up_then_live_frames(server_process):
    """A real browser: gzip answers, and a websocket it offered permessage-deflate on
    (compressed catch-up frames, then uncompressed live ones) reads every change."""
    from playwright.sync_api import sync_playwright

    from tests.dashboard.conftest import CHROMIUM, CHROMIUM_ARGS

    server = server_process()
    status, _ = call("POST", f"{server.url}{UPLOAD}", {"device_id": "seed", "changes": patient_changes(1500)})
    assert status == 200
    more = patient_changes(3, prefix="live")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{server.url}/")
            out = page.evaluate(CHROMIUM_PAGE_SCRIPT, [1500, more])
        finally:
            browser.close()
    assert out["encoding"] == "gzip"
    assert "permessage-deflate" in out["extensions"]
    assert out["live"] == 200
    assert out["received"][:1500] == out["downloaded"] and len(set(out["received"])) == 1503


async def test_a_browser_on_another_origin_may_send_gzip_bodies(api):
    """Content-Encoding is not a CORS-safelisted header: the preflight must allow it."""
    origin = "http://localhost:5173"
    pre = await api.request("OPTIONS", UPLOAD, headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-encoding,content-type"})
    assert pre.status == 204 and pre.headers["Access-Control-Allow-Origin"] == origin
    allowed = {h.strip().lower() for h in pre.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"content-encoding", "content-type"} <= allowed
    body = {"device_id": "device123", "changes": patient_changes(2)}
    resp = await api.post(UPLOAD, raw=gz(body), headers={"Origin": origin, "Content-Encoding": "gzip"})
    assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == origin
