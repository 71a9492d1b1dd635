"""``/api/conflicts/``: recorded conflicts, filters, marking resolved."""

from __future__ import annotations

import uuid

import pytest

from tests.support.http import change, upload

pytestmark = pytest.mark.both_backends


async def make_conflict(api, device="tab-1"):
    p = await api.new_patient()
    resp = await upload(api, [change("update", "Patient", server_id=p["id"], base_version=7, payload={"name": "Mine"})],
                        device=device)
    return p, resp.json["results"][0]


async def test_conflict_is_listed_with_both_versions_and_resolvable(api):
    p, result = await make_conflict(api)
    listed = (await api.get("/api/conflicts/")).json
    assert len(listed) == 1
    c = listed[0]
    assert c["id"] == result["conflict_id"] and c["device_id"] == "tab-1" and c["reason"] == "version_mismatch"
    assert c["server_id"] == p["id"] and c["resolved"] is False
    assert c["change"]["payload"] == {"name": "Mine"} and c["server_copy"]["name"] == "John Doe"
    resolved = await api.patch(f"/api/conflicts/{c['id']}/", {"resolved": True, "resolution": "kept server copy"})
    assert (resolved.status == 200 and resolved.json["resolved"] is True
            and resolved.json["resolution"] == "kept server copy")
    assert resolved.json["resolved_at"]
    assert (await api.get("/api/conflicts/?resolved=false")).json == []
    assert len((await api.get("/api/conflicts/?resolved=true")).json) == 1
    # the POST form works too, and resolving again keeps the first resolution
    again = await api.post(f"/api/conflicts/{c['id']}/resolve/", {"resolved": True, "resolution": "other"})
    assert again.status == 200 and again.json["resolution"] == "kept server copy"


async def test_filter_by_device(api):
    await make_conflict(api, "tab-1")
    await make_conflict(api, "tab-2")
    assert [c["device_id"] for c in (await api.get("/api/conflicts/?device_id=tab-2")).json] == ["tab-2"]
    assert len((await api.get("/api/conflicts/?limit=1")).json) == 1


async def test_bad_conflict_requests(api):
    _, result = await make_conflict(api)
    cid = result["conflict_id"]
    assert (await api.get(f"/api/conflicts/{uuid.uuid4()}/")).status == 404
    assert (await api.patch(f"/api/conflicts/{uuid.uuid4()}/", {"resolved": True})).status == 404
    assert (await api.get("/api/conflicts/nope/")).status == 400
    assert (await api.patch(f"/api/conflicts/{cid}/", {"resolved": False})).status == 400
    assert (await api.patch(f"/api/conflicts/{cid}/", {"resolved": True, "extra": 1})).status == 400
    assert (await api.patch(f"/api/conflicts/{cid}/", {"resolved": True, "resolution": 5})).status == 400
    assert (await api.get("/api/conflicts/?resolved=perhaps")).status == 400
    assert (await api.get(f"/api/conflicts/{cid}/")).json["resolved"] is False
