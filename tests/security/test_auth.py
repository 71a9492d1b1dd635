"""Token mode: every route under each role, with no token and a bad token."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid

import orjson
import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from healthsync.auth import RateLimiter, Tokens, hash_token
from healthsync.errors import RateLimited
from healthsync.storage import Database
from healthsync.storage.buckets import MemoryBuckets
from tests.support.databases import execute
from tests.support.ws import ws_url

pytestmark = pytest.mark.both_backends


@pytest.fixture
def settings(settings_with):
    return settings_with(auth="token", write_rate_limit=0)


@pytest.fixture
def tokens(app, io_loop):
    t = Tokens(app.ctx.db)
    return {role: io_loop.run_sync(lambda r=role, n=name: t.create(n, r))
            for role, name in [("device", "tab-1"), ("dashboard", "front-desk"), ("admin", "it")]}


def auth(token):
    return {"Authorization": f"Bearer {token}"}


PID = str(uuid.UUID(int=1))
ROUTES = [
    # (method, path, body, roles allowed)
    ("GET", "/api/patients/", None, {"device", "dashboard", "admin"}),
    ("POST", "/api/patients/", {"name": "X"}, {"device", "admin"}),
    ("GET", f"/api/patients/{PID}/", None, {"device", "dashboard", "admin"}),
    ("PUT", f"/api/patients/{PID}/", {"name": "X"}, {"device", "admin"}),
    ("PATCH", f"/api/patients/{PID}/", {"name": "X"}, {"device", "admin"}),
    ("DELETE", f"/api/patients/{PID}/", None, {"device", "admin"}),
    ("GET", "/api/records/", None, {"device", "dashboard", "admin"}),
    ("POST", "/api/records/", {"patient": PID, "resource_type": "Observation"}, {"device", "admin"}),
    ("GET", f"/api/records/{PID}/", None, {"device", "dashboard", "admin"}),
    ("PUT", f"/api/records/{PID}/", {"patient": PID, "resource_type": "Observation"}, {"device", "admin"}),
    ("PATCH", f"/api/records/{PID}/", {}, {"device", "admin"}),
    ("DELETE", f"/api/records/{PID}/", None, {"device", "admin"}),
    ("POST", "/api/sync/upload/", {"device_id": "tab-1", "changes": []}, {"device", "admin"}),
    ("GET", "/api/sync/download/?cursor=0", None, {"device", "dashboard", "admin"}),
    ("POST", f"/api/sync/trigger/{PID}/", None, {"device", "admin"}),
    ("GET", "/api/sync/batches/", None, {"device", "dashboard", "admin"}),
    ("GET", f"/api/sync/batches/{PID}/", None, {"device", "dashboard", "admin"}),
    ("GET", "/api/conflicts/", None, {"device", "dashboard", "admin"}),
    ("GET", f"/api/conflicts/{PID}/", None, {"device", "dashboard", "admin"}),
    ("PATCH", f"/api/conflicts/{PID}/", {"resolved": True}, {"dashboard", "admin"}),
    ("POST", f"/api/conflicts/{PID}/resolve/", {"resolved": True}, {"dashboard", "admin"}),
    ("GET", "/api/devices/", None, {"dashboard", "admin"}),
    ("GET", "/api/audit/", None, {"admin"}),
]


@pytest.mark.sqlite_only  # the role check comes before any storage (tokens on PostgreSQL: the tests below)
@pytest.mark.parametrize("method, path, body, roles", ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
async def test_every_route_under_each_role(api, tokens, method, path, body, roles):
    none = await api.request(method, path, body)
    assert none.status == 401 and none.json["error"] and none.headers["WWW-Authenticate"].startswith("Bearer")
    bad = await api.request(method, path, body, headers=auth("hs_not-a-real-token"))
    assert bad.status == 401 and bad.json["details"]
    garbled = await api.request(method, path, body, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert garbled.status == 401
    for role, token in tokens.items():
        resp = await api.request(method, path, body, headers=auth(token))
        if role in roles:
            assert resp.status not in (401, 403), (role, resp.status, resp.body)
        else:
            assert resp.status == 403, (role, resp.status, resp.body)
            assert role in resp.json["error"]


async def test_no_patient_data_without_a_token(api, tokens):
    await api.post("/api/patients/", {"name": "Secret Sam"}, headers=auth(tokens["admin"]))
    for path in ("/api/patients/", "/api/records/", "/api/sync/download/?cursor=0", "/api/conflicts/"):
        resp = await api.get(path)
        assert resp.status == 401 and b"Secret" not in resp.body
    health = await api.get("/api/health")
    assert health.status == 200 and health.json["auth"] == "token" and b"Secret" not in health.body


async def test_public_routes_need_no_token_and_hold_no_patient_data(api, tokens):
    await api.post("/api/patients/", {"name": "Secret Sam"}, headers=auth(tokens["admin"]))
    for path in ("/api/health", "/api/schema/", "/api/docs/", "/metrics", "/", "/static/js/app.js"):
        resp = await api.get(path)
        assert resp.status == 200, (path, resp.status)
        assert b"Secret" not in resp.body, path


async def test_schema_and_docs_are_public_and_local(api):
    schema = await api.get("/api/schema/")
    assert schema.status == 200 and schema.json["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    docs = await api.get("/api/docs/")
    assert docs.status == 200 and docs.headers["Content-Type"].startswith("text/html")
    assert b"/api/schema/" in docs.body
    # Nothing from the internet: every script, stylesheet and icon is served by this box.
    for ref in re.findall(rb'(?:src|href)="([^"]+)"', docs.body):
        assert ref.startswith(b"/"), ref
        if ref.startswith(b"/static/"):
            assert (await api.get(ref.decode())).status == 200, ref


async def test_owner_is_the_creating_token(api, tokens):
    p = (await api.post("/api/patients/", {"name": "A"}, headers=auth(tokens["device"]))).json
    assert p["owner"] == "tab-1"
    up = await api.post("/api/sync/upload/", {"device_id": "tab-1", "changes": [
        {"operation": "create", "resource_type": "Patient", "client_temp_id": "t", "payload": {"name": "B"}}]},
        headers=auth(tokens["device"]))
    sid = up.json["results"][0]["server_id"]
    assert (await api.get(f"/api/patients/{sid}/", headers=auth(tokens["dashboard"]))).json["owner"] == "tab-1"


async def test_device_acts_only_as_itself(api, tokens):
    other = await api.post("/api/sync/upload/", {"device_id": "tab-2", "changes": []}, headers=auth(tokens["device"]))
    assert other.status == 403 and other.json["details"][0]["field"] == "device_id"
    stored = await api.post("/api/sync/upload/", {"device_id": "tab-2", "changes": [], "async": True},
                            headers=auth(tokens["admin"]))
    trig = await api.post(f"/api/sync/trigger/{stored.json['batch_id']}/", headers=auth(tokens["device"]))
    assert trig.status == 403


async def test_revoked_token_is_refused(api, app, tokens):
    assert (await api.get("/api/patients/", headers=auth(tokens["dashboard"]))).status == 200
    await Tokens(app.ctx.db).revoke("front-desk")
    assert (await api.get("/api/patients/", headers=auth(tokens["dashboard"]))).status == 401


async def test_only_the_hash_is_stored(app, tokens):
    rows = await app.ctx.db.fetchall("SELECT hash FROM tokens")
    assert {r[0] for r in rows} == {hash_token(t) for t in tokens.values()}
    assert not any(t in r[0] for r in rows for t in tokens.values())


async def test_websocket_needs_a_token(http_server_client, tokens):
    base = http_server_client.get_url("/api/sync/ws?cursor=0").replace("http://", "ws://")
    with pytest.raises(HTTPClientError) as err:
        await websocket_connect(base)
    assert err.value.code == 401
    with pytest.raises(HTTPClientError) as err:
        await websocket_connect(base + "&token=hs_wrong")
    assert err.value.code == 401
    by_query = await websocket_connect(base + f"&token={tokens['dashboard']}")
    by_header = await websocket_connect(HTTPRequest(base, headers=auth(tokens["device"])))
    by_query.close()
    by_header.close()


async def test_audit_trail(api, tokens, app):
    p = (await api.post("/api/patients/", {"name": "A"}, headers=auth(tokens["device"]))).json
    await api.get(f"/api/patients/{p['id']}/", headers=auth(tokens["dashboard"]))
    await api.get("/api/patients/")  # refused: recorded too
    entries = (await api.get("/api/audit/", headers=auth(tokens["admin"]))).json
    seen = [(e["who"], e["role"], e["method"], e["path"], e["status"]) for e in entries]
    assert ("tab-1", "device", "POST", "/api/patients/", 201) in seen
    assert ("front-desk", "dashboard", "GET", f"/api/patients/{p['id']}/", 200) in seen
    assert (None, None, "GET", "/api/patients/", 401) in seen
    assert all(e["remote_ip"] and e["at"] for e in entries)
    only = (await api.get("/api/audit/?who=tab-1", headers=auth(tokens["admin"]))).json
    assert {e["who"] for e in only} == {"tab-1"}
    # append-only: no method changes it, and the table refuses UPDATE
    assert (await api.delete("/api/audit/", headers=auth(tokens["admin"]))).status == 405
    with pytest.raises(Exception, match="append-only"):  # the driver's own error, on either backend
        await asyncio.to_thread(execute, app.ctx.settings, "UPDATE audit SET who = 'someone else'")


async def test_ws_token_never_lands_in_the_audit(http_server_client, api, tokens):
    base = http_server_client.get_url("/api/sync/ws?cursor=0").replace("http://", "ws://")
    conn = await websocket_connect(base + f"&token={tokens['dashboard']}")
    conn.close()
    # The socket's entry is written once the server has seen the close: wait for it.
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        entries = (await api.get("/api/audit/", headers=auth(tokens["admin"]))).json
        mine = [e for e in entries if e["path"] == "/api/sync/ws" and e["who"] == "front-desk"]
        if mine or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert mine, "the websocket's audit entry never came"
    assert not any(tokens["dashboard"] in (e["query"] or "") for e in entries)


def test_rate_buckets_refill():
    now = [0.0]
    buckets = MemoryBuckets(clock=lambda: now[0])
    assert buckets.take("a", 2) is None
    assert buckets.take("a", 2) is None
    assert buckets.take("a", 2) == 30
    assert buckets.take("b", 2) is None  # per key
    now[0] += 30
    assert buckets.take("a", 2) is None


async def test_rate_limiter_raises_429_with_retry_after(tmp_path):
    db = await Database(tmp_path / "hs.db").open()
    try:
        limiter = RateLimiter(1, db)
        await limiter.check("a")
        with pytest.raises(RateLimited) as err:
            await limiter.check("a")
        assert err.value.status == 429 and err.value.retry_after == 60
        assert await RateLimiter(0, db).check("a") is None
    finally:
        await db.close()


# A device token acts as its own device only ------------------------------------------


async def test_download_names_only_the_tokens_own_device(api, tokens):
    other = await api.get("/api/sync/download/?cursor=0&device_id=tab-2", headers=auth(tokens["device"]))
    assert other.status == 403 and other.json["details"][0]["field"] == "device_id"
    # a dashboard watches devices: it may not record a download as one of them
    watching = await api.get("/api/sync/download/?cursor=0&device_id=tab-2", headers=auth(tokens["dashboard"]))
    assert watching.status == 403 and watching.json["details"][0]["field"] == "device_id"
    devices = (await api.get("/api/devices/", headers=auth(tokens["admin"]))).json
    assert "tab-2" not in {d["device_id"] for d in devices}, "a refused download made tab-2 look caught up"
    own = await api.get("/api/sync/download/?cursor=0&device_id=tab-1", headers=auth(tokens["device"]))
    unnamed = await api.get("/api/sync/download/?cursor=0", headers=auth(tokens["device"]))
    by_admin = await api.get("/api/sync/download/?cursor=0&device_id=tab-3", headers=auth(tokens["admin"]))
    assert own.status == unnamed.status == by_admin.status == 200
    devices = (await api.get("/api/devices/", headers=auth(tokens["admin"]))).json
    assert {d["device_id"] for d in devices} == {"tab-1", "tab-3"}


async def test_websocket_names_only_the_tokens_own_device(http_server_client, api, tokens):
    with pytest.raises(HTTPClientError) as err:
        await websocket_connect(HTTPRequest(ws_url(http_server_client, "cursor=0&device_id=tab-2"),
                                            headers=auth(tokens["device"])))
    assert err.value.code == 403
    body = orjson.loads(err.value.response.body)
    assert body["error"] and body["details"][0]["field"] == "device_id"

    async def connect(query, token):
        conn = await websocket_connect(HTTPRequest(ws_url(http_server_client, query), headers=auth(token)))
        assert orjson.loads(await conn.read_message())["type"] == "hello"
        return conn

    # A device's socket without a device_id is its own device's; dashboards may watch any device.
    device = await connect("cursor=0", tokens["device"])
    watcher = await connect("cursor=0&device_id=tab-2", tokens["dashboard"])
    for device_id in ("tab-2", "tab-1"):
        resp = await api.post("/api/sync/upload/", {"device_id": device_id, "changes": []},
                              headers=auth(tokens["admin"]))
        assert resp.status == 200, resp.body

    async def batch_events(conn, until):
        seen = []
        while not seen or seen[-1] != until:
            msg = orjson.loads(await asyncio.wait_for(conn.read_message(), 10))
            if msg["type"] == "batch":
                seen.append(msg["device_id"])
        return seen

    assert await batch_events(device, until="tab-1") == ["tab-1"], "tab-1's socket got tab-2's batch events"
    assert await batch_events(watcher, until="tab-2") == ["tab-2"]
    device.close()
    watcher.close()


# No secret in the audit trail or the logs --------------------------------------------

#: Ways to spell a parameter that carries a token.  Tornado decodes names, so the
#: first three are ``token`` and authenticate a websocket; the others are refused,
#: but they carry the secret all the same.
SPELLINGS = ["token", "%74oken", "to%6Ben", "%54OKEN", "token%00", "TOKEN", "to+ken", "%2574oken", "%20token",
             "access_token", "Authorization", "X-Auth-Token", "%EF%BD%94oken"]


def secret_parts(secret):
    """The secret, and a 20-character run of its random part (no prefix of it may be stored either)."""
    return [secret, secret[3:23], secret[-20:]]


async def send_secret_every_way(http_server_client, api, tokens, secret):
    """REST downloads and websocket handshakes carrying ``secret`` under every spelling."""
    statuses = {}
    for name in SPELLINGS:
        query = f"cursor=0&{name}={secret}"
        refused = await api.get(f"/api/sync/download/?{query}")
        accepted = await api.get(f"/api/sync/download/?{query}", headers=auth(tokens["device"]))
        assert (refused.status, accepted.status) == (401, 200), name
        try:
            conn = await websocket_connect(ws_url(http_server_client, query))
            conn.close()
            statuses[name] = 101
        except HTTPClientError as err:
            statuses[name] = err.code
    # Malformed values beside the secret: Tornado's own log lines quote the URI.
    for query in (f"cursor=%ff&token={secret}", f"cursor=0&token={secret}%ff", f"cursor=0&who={secret}"):
        try:
            (await websocket_connect(ws_url(http_server_client, query))).close()
        except HTTPClientError as err:
            assert err.code in (400, 401), query
    static = await api.get(f"/static/..%2f..%2fsettings.py?token={secret}")
    assert static.status in (403, 404)
    return statuses


async def test_no_secret_in_the_audit_trail_or_the_logs(http_server_client, api, tokens, caplog):
    for name in ("healthsync", "tornado"):
        caplog.set_level(logging.DEBUG, logger=name)
    secret = tokens["dashboard"]
    statuses = await send_secret_every_way(http_server_client, api, tokens, secret)
    # Exactly the parameter named ``token`` (once decoded) authenticates a websocket.
    assert {name for name, status in statuses.items() if status == 101} == {"token", "%74oken", "to%6Ben"}
    assert {status for status in statuses.values() if status != 101} == {401}

    body = (await api.get("/api/audit/?limit=10000", headers=auth(tokens["admin"]))).body
    for part in secret_parts(secret):
        assert part.encode() not in body
    entries = orjson.loads(body)
    redacted = [e for e in entries if "REDACTED" in (e["query"] or "")]
    # every request above is in the trail, its query kept apart from the secret
    assert len(redacted) >= 3 * len(SPELLINGS)
    assert {e["status"] for e in redacted if e["path"] == "/api/sync/ws"} >= {101, 401}
    assert any(e["query"] == "cursor=0&%74oken=REDACTED" and e["status"] == 101 for e in entries)
    assert any(e["query"] == "cursor=0&token%00=REDACTED" and e["status"] == 401 for e in entries)

    logged = "\n".join(r.getMessage() + "\n" + (r.exc_text or "") for r in caplog.records)
    assert "/api/sync/ws" in logged
    for part in secret_parts(secret):
        assert part not in logged


@pytest.mark.slow
@pytest.mark.sqlite_only  # subprocesses at DEBUG; what they log of a token is the same on both backends
def test_no_secret_in_a_servers_log_lines(server_process, tmp_path):
    """The same requests to ``run.py`` at DEBUG, in text and JSON logs: no secret in its output."""
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    from tests.support import ROOT

    data = tmp_path / "data"
    secret = subprocess.run(
        [sys.executable, "run.py", "token", "create", "--role", "dashboard", "--name", "desk", "--data-dir", str(data)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.strip()
    for fmt in ("text", "json"):
        server = server_process("--auth", "token", "--log-level", "DEBUG", "--log-format", fmt, data_dir=data)
        for name in SPELLINGS:
            for path in ("/api/sync/download/", "/api/sync/ws", "/api/nowhere/"):
                try:
                    urllib.request.urlopen(f"{server.url}{path}?cursor=0&{name}={secret}", timeout=10)
                except urllib.error.HTTPError as err:
                    assert err.code in (400, 401, 404), (name, path, err.code)
        for query in (f"cursor=%ff&token={secret}", f"cursor=0&token={secret}%ff"):
            try:
                urllib.request.urlopen(f"{server.url}/api/sync/ws?{query}", timeout=10)
            except urllib.error.HTTPError as err:
                assert err.code in (400, 401)
        try:
            urllib.request.urlopen(f"{server.url}/static/..%2f..%2fsettings.py?token={secret}", timeout=10)
        except urllib.error.HTTPError as err:
            assert err.code in (403, 404)
        assert server.stop() == 0
        output = "".join(server.log)
        assert "/api/sync/download/" in output
        for part in secret_parts(secret):
            assert part not in output, fmt
