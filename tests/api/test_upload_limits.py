"""Upload bodies over a small max_body_bytes."""

from __future__ import annotations

import asyncio
import socket

import orjson
import pytest

from tests.support.http import change, post_chunked, upload

pytestmark = pytest.mark.both_backends


@pytest.fixture
def settings(settings_with):
    return settings_with(max_body_bytes=64 * 1024)


async def test_huge_payload_is_413(api):
    resp = await upload(api, [change("create", "Patient", client_temp_id="a",
                                     payload={"name": "x", "fhir": {"b": "y" * 100_000}})])
    assert resp.status == 413




def running_handlers() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__qualname__", "") == "RequestHandler._execute"]


async def until_nothing_runs(app) -> None:
    """Wait (boundedly) until no request is in flight or running: the server closes the
    connection once its answer is out, and the close is what ends a request mid-body."""
    for _ in range(200):
        if app.ctx.inflight == 0 and not running_handlers():
            break
        await asyncio.sleep(0.05)
    assert app.ctx.inflight == 0
    assert running_handlers() == []


@pytest.mark.parametrize("pieces", [40, 1], ids=["40x1MiB", "1x40MiB"])
async def test_oversized_chunked_body_is_a_json_413_and_nothing_stays_open(api, app, http_server_client, pieces):
    """40 MiB with no Content-Length: the same 413 as a sized body, as soon as it passes
    the limit, and the request is over (not left waiting for a body it will never read)."""
    url = http_server_client.get_url("/api/sync/upload/")
    size = (40 << 20) // pieces
    resp = await asyncio.to_thread(post_chunked, url, (b"x" * size for _ in range(pieces)))
    assert resp.status == 413, resp
    assert resp.json == {"error": f"request body is over the limit of {64 * 1024} bytes", "details": []}
    assert resp.headers["Content-Type"].startswith("application/json") and resp.headers["Connection"] == "close"
    await until_nothing_runs(app)
    assert (await api.get("/api/sync/download/?cursor=0")).status == 200
    assert (await upload(api, [change("create", "Patient", client_temp_id="a", payload={"name": "x"})])).status == 200


async def test_a_client_gone_mid_body_ends_its_request(api, app, http_server_client):
    port = int(http_server_client.get_url("/").split(":")[2].split("/")[0])
    sock = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", port))
    with sock:
        sock.sendall(b"POST /api/sync/upload/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n400\r\n" + b"x" * 100)
        for _ in range(200):  # until the server is reading the body
            if running_handlers():
                break
            await asyncio.sleep(0.05)
        assert running_handlers()
    await until_nothing_runs(app)
    assert (await api.get("/api/sync/download/?cursor=0")).status == 200


async def test_chunked_body_under_the_limit_is_applied(api, http_server_client):
    body = orjson.dumps({"device_id": "d1", "changes": [
        change("create", "Patient", client_temp_id=f"p{i}", payload={"name": f"P{i}"}) for i in range(200)]})
    assert 16 * 1024 < len(body) < 64 * 1024
    pieces = (body[i:i + 1000] for i in range(0, len(body), 1000))
    resp = await asyncio.to_thread(post_chunked, http_server_client.get_url("/api/sync/upload/"), pieces)
    assert resp.status == 200, resp
    assert [r["status"] for r in resp.json["results"]] == ["created"] * 200
