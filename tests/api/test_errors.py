"""One error shape from every endpoint; body limits; content types; CORS."""

from __future__ import annotations

import uuid

import pytest

from tests.support.databases import latest_schema
from tests.support.http import change, upload
from tests.support.servers import make_settings

pytestmark = pytest.mark.both_backends


def assert_error_shape(resp) -> None:
    assert resp.headers["Content-Type"].startswith("application/json")
    body = resp.json
    assert set(body) >= {"error", "details"}
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["details"], list)
    assert b"Traceback" not in resp.body


@pytest.mark.sqlite_only  # routing and parsing, before any storage: kept to one backend for time
@pytest.mark.parametrize(
    "method, path, status",
    [
        ("GET", "/api/nope", 404),
        ("POST", "/nothing/here", 404),
        ("DELETE", "/api/patients/", 405),
        ("PUT", "/api/records/", 405),
        ("POST", f"/api/patients/{uuid.UUID(int=1)}/", 405),
        ("GET", f"/api/records/{uuid.UUID(int=1)}/", 404),
        ("GET", "/api/records/xyz/", 400),
        ("GET", "/api/patients/?limit=x", 400),
    ],
)
async def test_error_shape_everywhere(api, method, path, status):
    resp = await api.request(method, path, {} if method in ("POST", "PUT") else None)
    assert resp.status == status
    assert_error_shape(resp)
    if status == 405:
        assert "GET" in resp.headers["Allow"]


@pytest.mark.sqlite_only  # parsing, before any storage: kept to one backend for time
@pytest.mark.parametrize(
    "raw, ctype, status",
    [
        (b"{not json", "application/json", 400),
        (b"", "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b'"just a string"', "application/json", 400),
        (b'{"name": "x"}', "text/plain", 415),
        (b"name=x", "application/x-www-form-urlencoded", 415),
        (b"\xff\xfe\x00", "application/json", 400),
    ],
)
async def test_unparseable_bodies(api, raw, ctype, status):
    resp = await api.post("/api/patients/", raw=raw, headers={"Content-Type": ctype})
    assert resp.status == status, resp.body
    assert_error_shape(resp)
    assert (await api.get("/api/patients/")).json == []


async def test_json_with_charset_is_accepted(api):
    resp = await api.post("/api/patients/", {"name": "x"}, headers={"Content-Type": "application/json; charset=utf-8"})
    assert resp.status == 201


@pytest.fixture
def settings(settings_with):
    return settings_with(max_body_bytes=4096)


async def test_body_over_limit_is_413_json(api):
    resp = await api.post("/api/patients/", {"name": "x", "fhir": {"blob": "y" * 10_000}})
    assert resp.status == 413
    assert_error_shape(resp)
    assert "4096" in resp.json["error"]
    assert (await api.get("/api/patients/")).json == []


async def test_chunked_body_over_limit_is_413(api, http_server_client):
    async def body_producer(write):
        # over our 4096-byte limit, under Tornado's own hard cut-off (twice ours)
        for _ in range(6):
            await write(b" " * 1000)

    resp = await http_server_client.fetch(
        "/api/patients/",
        method="POST",
        body_producer=body_producer,
        headers={"Content-Type": "application/json"},
        raise_error=False,
    )
    assert resp.code == 413


async def test_cors_preflight_and_request_from_local_origin(api):
    origin = "http://localhost:5173"
    pre = await api.request(
        "OPTIONS",
        "/api/patients/",
        headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"},
    )
    assert pre.status == 204
    assert pre.headers["Access-Control-Allow-Origin"] == origin
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    assert "Content-Type" in pre.headers["Access-Control-Allow-Headers"]
    resp = await api.post("/api/patients/", {"name": "x"}, headers={"Origin": origin})
    assert resp.status == 201
    assert resp.headers["Access-Control-Allow-Origin"] == origin
    assert "ETag" in resp.headers["Access-Control-Expose-Headers"]
    # errors carry CORS headers too, so the browser can read them
    err = await api.get("/api/patients/?limit=x", headers={"Origin": origin})
    assert err.status == 400 and err.headers["Access-Control-Allow-Origin"] == origin


async def test_cors_refuses_foreign_origin(api):
    evil = "http://evil.example"
    pre = await api.request("OPTIONS", "/api/patients/",
                            headers={"Origin": evil, "Access-Control-Request-Method": "POST"})
    assert pre.status == 403
    assert "Access-Control-Allow-Origin" not in pre.headers
    assert_error_shape(pre)
    resp = await api.get("/api/patients/", headers={"Origin": evil})
    assert "Access-Control-Allow-Origin" not in resp.headers


def test_cors_origins_from_settings(data_dir):
    s = make_settings(data_dir, cors_origins="https://dash.clinic.lan, http://10.0.0.*:8080")
    assert s.effective_cors_origins == ["https://dash.clinic.lan", "http://10.0.0.*:8080"]
    token_mode = make_settings(data_dir, auth="token")
    assert token_mode.effective_cors_origins == []


async def test_health(api, backend):
    resp = await api.get("/api/health")
    assert resp.status == 200
    assert resp.json["status"] == "ok" and resp.json["database"]["ok"] is True
    assert resp.json["database"]["schema_version"] == latest_schema(backend)




async def test_a_request_after_shutdown_closed_the_database_is_503_not_500(api, app):
    # What a kept-alive connection meets between the database closing and the
    # connections being dropped at shutdown (the hub closes first, as there).
    await app.ctx.hub.close()
    await app.ctx.db.close()
    resp = await api.get("/api/patients/")
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert_error_shape(resp)
    assert "shutting down" in resp.json["error"]


async def test_a_nul_character_is_stored_or_refused_never_a_500(api, backend):
    """SQLite keeps U+0000 in text as given; PostgreSQL cannot store it: a 400 naming it there,
    and nothing written (an upload holding one is refused whole)."""
    created = await api.post("/api/patients/", {"name": "a\x00b"})
    uploaded = await upload(api, [change("create", "Patient", client_temp_id="ok", payload={"name": "Fine"}),
                                  change("create", "Patient", client_temp_id="t\x00", payload={"name": "x"})])
    read = await api.get("/api/sync/download/?cursor=0&device_id=tab%00")
    if backend == "sqlite":
        assert created.status == 201 and created.json["name"] == "a\x00b"
        assert uploaded.status == 200 and read.status == 200
        return
    for resp in (created, uploaded, read):
        assert resp.status == 400, resp.body
        assert_error_shape(resp)
        assert "NUL character" in resp.json["error"]
    assert (await api.get("/api/patients/")).json == []
    assert (await api.get("/api/sync/download/?cursor=0")).json["changes"] == []
