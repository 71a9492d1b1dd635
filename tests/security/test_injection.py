"""SQL injection attempts in every string parameter and filter change nothing."""

from __future__ import annotations

import uuid

import pytest

pytestmark = pytest.mark.both_backends

ATTACKS = ["' OR '1'='1", "x'; DROP TABLE patients; --", '" OR 1=1 --', "1) UNION SELECT * FROM tokens --",
           "%27%20OR%201%3D1", "Robert'); DELETE FROM records;--"]


@pytest.mark.parametrize("attack", ATTACKS)
async def test_injection_in_filters_and_bodies(api, attack):
    from urllib.parse import quote

    p = await api.new_patient(name=attack, identifiers={attack: attack})
    r = await api.new_record(p["id"], data={attack: attack})
    q = quote(attack)
    for path in (f"/api/records/?patient={q}", f"/api/records/?resource_type={q}", f"/api/patients/?after={q}",
                 f"/api/sync/download/?since={q}", f"/api/sync/download/?cursor={q}",
                 f"/api/sync/download/?cursor=0&resource_type={q}", f"/api/conflicts/?device_id={q}",
                 f"/api/sync/batches/?device_id={q}", f"/api/sync/batches/?status={q}", f"/api/patients/{q}/",
                 f"/api/sync/download/?cursor=0&device_id={q}"):
        resp = await api.get(path)
        assert resp.status in (200, 400, 404), (path, resp.status)
    create = {"operation": "create", "resource_type": "Patient", "client_temp_id": attack, "payload": {"name": attack}}
    refused = await api.post("/api/sync/upload/", {"device_id": attack, "changes": [
        {"operation": "update", "resource_type": "Patient", "server_id": attack, "payload": {"name": attack}}, create]})
    assert refused.status == 400 and refused.json["details"][0]["field"] == "server_id"  # not a UUID: nothing applied
    up = await api.post("/api/sync/upload/", {"device_id": attack, "changes": [
        {"operation": "update", "resource_type": "Patient", "server_id": str(uuid.UUID(int=3)),
         "payload": {"name": attack}}, create]})
    assert up.status == 200
    assert [x["status"] for x in up.json["results"]] == ["not_found", "created"]
    got = (await api.get(f"/api/patients/{p['id']}/")).json
    assert got["name"] == attack and got["identifiers"] == {attack: attack}
    assert (await api.get(f"/api/records/{r['id']}/")).json["data"] == {attack: attack}
    assert len((await api.get("/api/patients/")).json) == 2
