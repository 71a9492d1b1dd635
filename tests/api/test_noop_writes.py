"""Writes that change nothing store nothing.

A ``PATCH {}``, a PUT of the representation as stored, or a sync ``update``
whose merge patch leaves the item as it is: same ``server_version``, same
``updated_at``, same ETag, no ``seq`` spent (the download head stays), no
message to websocket subscribers, and other devices' ``base_version`` stays
good.  Real changes, however small (``1`` to ``1.0``), still count.
"""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.both_backends

UPLOAD = "/api/sync/upload/"
QUIET = 0.3  # seconds a subscriber listens for a message that must not come


async def head(api: Any) -> str:
    resp = await api.get("/api/sync/download/?cursor=0")
    assert resp.status == 200, resp.body
    return resp.json["cursor"]


def writable(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k not in ("id", "owner", "server_version", "updated_at", "deleted")}


async def subscribed(api: Any, ws: Any) -> Any:
    """A subscriber caught up to the head."""
    client = await ws(f"cursor={await head(api)}")
    assert await client.quiet(QUIET) == []
    return client


async def test_patient_writes_that_change_nothing(api, ws):
    p = await api.new_patient(identifiers={"mrn": "7", "ids": [1, 2.5, {"x": None}]}, fhir={"active": True, "n": 1})
    client = await subscribed(api, ws)
    before = await head(api)
    url = f"/api/patients/{p['id']}/"
    same_reordered = {
        "fhir": {"n": 1, "active": True},
        "identifiers": {"ids": [1, 2.5, {"x": None}], "mrn": "7"},
        "dob": p["dob"],
        "name": p["name"],
    }
    attempts = [
        ("PATCH", {}),
        ("PATCH", {"name": p["name"], "dob": p["dob"]}),
        ("PATCH", {"identifiers": {"mrn": "7"}, "fhir": {"n": 1}}),
        ("PATCH", {"identifiers": {"absent": None}}),  # removing a key that is not there
        ("PATCH", {**p, "deleted": True}),  # read-only keys echoed back are ignored
        ("PUT", writable(p)),
        ("PUT", same_reordered),
        ("PUT", p),
    ]
    for method, body in attempts:
        resp = await api.request(method, url, body, headers={"If-Match": f'W/"{p["server_version"]}"'})
        assert resp.status == 200, (method, body, resp.body)
        assert resp.json == p, (method, body)
        assert resp.headers["ETag"] == 'W/"1"'
    assert (await api.get(url)).json == p
    assert await head(api) == before
    assert await client.quiet(QUIET) == []
    # a stale If-Match is still refused, change or not
    assert (await api.patch(url, {}, headers={"If-Match": 'W/"9"'})).status == 412
    # a real change does arrive: the socket was listening
    changed = (await api.patch(url, {"fhir": {"n": 1.0}})).json  # 1.0 is not 1 (FHIR decimal precision)
    assert changed["server_version"] == 2 and changed["updated_at"] > p["updated_at"]
    entries = await client.changes_until(1)
    assert [(e["server_id"], e["server_version"]) for e in entries] == [(p["id"], 2)]
    assert int(await head(api)) == int(before) + 1


async def test_values_of_another_type_are_a_change(api):
    p = await api.new_patient(identifiers={"a": 1, "b": 0})
    url = f"/api/patients/{p['id']}/"
    version = p["server_version"]
    for identifiers in ({"a": True, "b": 0}, {"a": 1, "b": False}, {"a": 1.0, "b": 0}, {"a": "1", "b": 0}):
        resp = await api.put(url, {**writable(p), "identifiers": identifiers})
        assert resp.status == 200 and resp.json["identifiers"] == identifiers
        assert resp.json["server_version"] == version + 1, identifiers
        version += 1
        p = resp.json
    assert p["fhir"] == {}
    assert (await api.put(url, {**writable(p), "fhir": {}})).json["server_version"] == version
    assert (await api.put(url, {**writable(p), "fhir": None})).json["server_version"] == version + 1  # {} is not null


async def test_record_writes_that_change_nothing(api, ws):
    p = await api.new_patient()
    other = await api.new_patient(name="Other")
    r = await api.new_record(p["id"], data={"code": {"text": "bp", "coding": [{"system": "s", "code": "c"}]}, "v": 120})
    client = await subscribed(api, ws)
    before = await head(api)
    url = f"/api/records/{r['id']}/"
    for method, body in [
        ("PATCH", {}),
        ("PATCH", {"patient": p["id"], "data": {"v": 120}}),
        ("PATCH", {"patient": p["id"].upper()}),  # the same id, spelt otherwise
        ("PUT", {"data": {"v": 120, "code": {"coding": [{"code": "c", "system": "s"}], "text": "bp"}},
                 "resource_type": "Observation", "patient": p["id"]}),
        ("PUT", r),
    ]:
        resp = await api.request(method, url, body, headers={"If-Match": 'W/"1"'})
        assert resp.status == 200, (method, body, resp.body)
        assert resp.json == r and resp.headers["ETag"] == 'W/"1"', (method, body)
    assert await head(api) == before
    assert await client.quiet(QUIET) == []
    assert (await api.put(url, r, headers={"If-Match": 'W/"2"'})).status == 412
    moved = (await api.patch(url, {"patient": other["id"]})).json
    assert moved["server_version"] == 2 and moved["data"] == r["data"]
    assert [e["server_id"] for e in await client.changes_until(1)] == [r["id"]]


async def test_upload_updates_that_change_nothing(api, ws):
    p = await api.new_patient(identifiers={"mrn": "1"}, fhir={"k": [1, 2]})
    r = await api.new_record(p["id"], data={"v": 1, "unit": "mmHg"})
    client = await subscribed(api, ws)
    before = await head(api)

    def update(item: dict[str, Any], payload: dict[str, Any], rtype: str, **kw: Any) -> dict[str, Any]:
        return {"operation": "update", "resource_type": rtype, "server_id": item["id"], "payload": payload, **kw}

    changes = [
        update(p, {}, "Patient", base_version=1),
        update(p, writable(p), "Patient", base_version=1),
        update(p, {"fhir": {"k": [1, 2]}, "identifiers": {"gone": None}}, "Patient"),
        update(r, {"unit": "mmHg", "v": 1}, "Observation", base_version=1),
        update(r, {"patient_id": p["id"], "v": 1}, "Observation", base_version=1),
        update(r, {}, "Observation", client_updated_at="2999-01-01T00:00:00Z"),
    ]
    resp = await api.post(UPLOAD, {"device_id": "tab-1", "changes": changes})
    assert resp.status == 200, resp.body
    body = resp.json
    assert [(x["status"], x["server_version"]) for x in body["results"]] == [("updated", 1)] * len(changes)
    assert body["cursor"] == before
    assert (await api.get(f"/api/patients/{p['id']}/")).json == p
    assert (await api.get(f"/api/records/{r['id']}/")).json == r
    assert await head(api) == before
    assert (await api.get("/api/sync/download/?cursor=" + before)).json["changes"] == []
    assert [m for m in await client.quiet(QUIET) if m["type"] == "changes"] == []

    # another device that last saw version 1 still applies over it: no spurious conflict
    resp = await api.post(UPLOAD, {"device_id": "tab-2", "changes": [
        update(p, {"name": "Renamed"}, "Patient", base_version=1),
        update(r, {"v": 2}, "Observation", base_version=1),
    ]})
    assert [(x["status"], x["server_version"]) for x in resp.json["results"]] == [("updated", 2)] * 2
    assert resp.json["conflicts"] == []
    entries = await client.changes_until(2)
    assert {e["server_id"] for e in entries} == {p["id"], r["id"]}


async def test_a_stale_base_version_still_conflicts_when_nothing_would_change(api):
    p = await api.new_patient()
    assert (await api.patch(f"/api/patients/{p['id']}/", {"name": "Two"})).json["server_version"] == 2
    change = {"operation": "update", "resource_type": "Patient", "server_id": p["id"],
              "payload": {"name": "Two"}, "base_version": 1}
    result = (await api.post(UPLOAD, {"device_id": "tab-1", "changes": [change]})).json["results"][0]
    assert result["status"] == "conflict" and result["reason"] == "version_mismatch"
