"""Tombstone purge, and 410 resync for positions behind the purge horizon."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from tornado.httpclient import HTTPClientError
from tornado.websocket import websocket_connect

from healthsync.tasks import purge_tombstones
from tests.support.ws import ws_url

pytestmark = pytest.mark.both_backends


async def test_purge_then_resync(api, app, http_server_client):
    keep = await api.new_patient(name="Keep")
    gone = await api.new_patient(name="Gone")
    await api.new_record(gone["id"])
    kept_record = await api.new_record(keep["id"])
    dropped = await api.new_record(keep["id"])
    await api.delete(f"/api/patients/{gone['id']}/")
    await api.delete(f"/api/records/{dropped['id']}/")
    old = await api.get("/api/sync/download/?cursor=0&limit=1")
    old_cursor, old_time = old.json["cursor"], old.json["server_time"]
    # nothing is old enough yet
    assert await purge_tombstones(app.ctx.db, 365) == 0
    await asyncio.sleep(0.01)
    assert await purge_tombstones(app.ctx.db, 1e-12) == 3  # two records and a patient
    assert (await api.get(f"/api/patients/{gone['id']}/?include_deleted=true")).status == 404
    # a cursor or since behind the horizon must start over
    for query in (f"cursor={old_cursor}", f"since={old_time}"):
        resp = await api.get(f"/api/sync/download/?{query}")
        assert resp.status == 410 and resp.json["resync"] is True and "1970-01-01" in resp.json["error"]
    url = http_server_client.get_url(f"/api/sync/ws?cursor={old_cursor}").replace("http://", "ws://")
    with pytest.raises(HTTPClientError) as err:
        await websocket_connect(url)
    assert err.value.code == 410
    # starting over works and is complete
    full = await api.get("/api/sync/download/?since=1970-01-01T00:00:00Z")
    assert full.status == 200
    assert {e["server_id"] for e in full.json["changes"]} == {keep["id"], kept_record["id"]}
    after = await api.get(f"/api/sync/download/?cursor={full.json['cursor']}")
    assert after.status == 200 and after.json["changes"] == []
    assert (await api.get("/api/sync/download/?cursor=0")).status == 200


async def test_only_tombstones_are_purged(api, app):
    p = await api.new_patient()
    r = await api.new_record(p["id"])
    other = await api.new_patient(name="Other")
    await api.patch(f"/api/records/{r['id']}/", {"patient": other["id"]})
    await api.delete(f"/api/patients/{p['id']}/")
    await asyncio.sleep(0.01)
    assert await purge_tombstones(app.ctx.db, 1e-12) == 1
    assert (await api.get(f"/api/records/{r['id']}/")).status == 200


async def test_datetime_min_on_a_fresh_database_gets_everything(api, http_server_client):
    """Nothing was ever purged: no position is stale, however old."""
    kept = await api.new_patient(name="Kept")
    gone = await api.new_patient(name="Gone")
    await api.delete(f"/api/patients/{gone['id']}/")
    for since in ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000000Z", "1969-12-31T23:59:59Z"):
        resp = await api.get(f"/api/sync/download/?since={since}")
        assert resp.status == 200, (since, resp.body)
        assert [(e["server_id"], e["deleted"]) for e in resp.json["changes"]] == [(kept["id"], False),
                                                                               (gone["id"], True)]
    conn = await websocket_connect(ws_url(http_server_client, "since=0001-01-01T00:00:00Z"))
    try:
        hello = orjson.loads(await conn.read_message())
        assert hello["type"] == "hello"
        changes = orjson.loads(await conn.read_message())
        assert [e["server_id"] for e in changes["changes"]] == [kept["id"], gone["id"]]
    finally:
        conn.close()


async def test_only_a_position_before_a_purged_tombstone_is_stale(api, app, http_server_client):
    before = await api.new_patient(name="Before")
    early = (await api.get("/api/sync/download/?cursor=0")).json  # has not seen the deletion
    dropped = await api.new_patient(name="Dropped")
    await api.delete(f"/api/patients/{dropped['id']}/")
    seen = (await api.get("/api/sync/download/?cursor=0")).json  # has seen the deletion
    after = await api.new_patient(name="After")
    await asyncio.sleep(0.01)
    assert await purge_tombstones(app.ctx.db, 1e-12) == 1
    # before the purged tombstone: may hold the dropped patient, must start over
    for query in (f"since={early['server_time']}", f"cursor={early['cursor']}", "since=2000-01-01T00:00:00Z"):
        resp = await api.get(f"/api/sync/download/?{query}")
        assert resp.status == 410 and resp.json["resync"] is True, (query, resp.body)
        with pytest.raises(HTTPClientError) as err:
            await websocket_connect(ws_url(http_server_client, query))
        assert err.value.code == 410
    # at or after it (even though older than the purge's cutoff): nothing it needs is gone
    for query in (f"since={seen['server_time']}", f"cursor={seen['cursor']}"):
        resp = await api.get(f"/api/sync/download/?{query}")
        assert resp.status == 200, (query, resp.body)
        assert [e["server_id"] for e in resp.json["changes"]] == [after["id"]]
        conn = await websocket_connect(ws_url(http_server_client, query))
        try:
            assert orjson.loads(await conn.read_message())["type"] == "hello"
        finally:
            conn.close()
    # a full sync, however it is spelled, is never stale
    for query in ("since=0001-01-01T00:00:00Z", "since=1970-01-01T00:00:00Z", "cursor=0"):
        resp = await api.get(f"/api/sync/download/?{query}")
        assert resp.status == 200, (query, resp.body)
        assert [e["server_id"] for e in resp.json["changes"]] == [before["id"], after["id"]]
