"""Seed section 2 (Health Records) exactly as shown, plus DESIGN.md's additions."""

from __future__ import annotations

import uuid

import pytest

pytestmark = pytest.mark.both_backends

SEED_RECORD_KEYS = {"id", "patient", "resource_type", "data", "server_version", "updated_at", "deleted"}


async def test_seed_create_list_retrieve_update_delete(api):
    p = await api.new_patient()
    created = await api.post("/api/records/", {"patient": p["id"], "resource_type": "Observation", "data": {}})
    assert created.status == 201
    r = created.json
    assert set(r) == SEED_RECORD_KEYS
    assert r["patient"] == p["id"] and r["resource_type"] == "Observation" and r["data"] == {}
    assert r["server_version"] == 1 and r["deleted"] is False
    assert str(uuid.UUID(r["id"])) == r["id"]

    listed = await api.get("/api/records/")
    assert listed.status == 200 and listed.json == [r]
    assert (await api.get(f"/api/records/{r['id']}/")).json == r

    put = await api.put(f"/api/records/{r['id']}/",
                        {"patient": p["id"], "resource_type": "Observation", "data": {"v": 1}})
    assert put.status == 200 and put.json["data"] == {"v": 1} and put.json["server_version"] == 2
    patched = await api.patch(f"/api/records/{r['id']}/", {"data": {"unit": "mmHg"}})
    assert patched.status == 200
    assert patched.json["data"] == {"v": 1, "unit": "mmHg"} and patched.json["server_version"] == 3

    deleted = await api.delete(f"/api/records/{r['id']}/")
    assert deleted.status == 204 and deleted.body == b""
    assert (await api.get(f"/api/records/{r['id']}/")).status == 404
    tomb = await api.get(f"/api/records/{r['id']}/?include_deleted=true")
    assert tomb.json["deleted"] is True and tomb.json["server_version"] == 4


async def test_deleting_a_patient_tombstones_its_records(api):
    p = await api.new_patient()
    other = await api.new_patient(name="Other")
    mine = [await api.new_record(p["id"]) for _ in range(3)]
    theirs = await api.new_record(other["id"])
    assert (await api.delete(f"/api/patients/{p['id']}/")).status == 204
    listed = await api.get("/api/records/")
    assert [r["id"] for r in listed.json] == [theirs["id"]]
    tombs = await api.get(f"/api/records/?include_deleted=true&patient={p['id']}")
    assert {r["id"] for r in tombs.json} == {r["id"] for r in mine}
    assert all(r["deleted"] and r["server_version"] == 2 for r in tombs.json)
    # a record cannot be added to a deleted patient
    resp = await api.post("/api/records/", {"patient": p["id"], "resource_type": "Observation", "data": {}})
    assert resp.status == 400 and resp.json["details"][0]["field"] == "patient"


async def test_filters(api):
    a = await api.new_patient(name="A")
    b = await api.new_patient(name="B")
    obs = await api.new_record(a["id"], resource_type="Observation")
    cond = await api.new_record(a["id"], resource_type="Condition")
    other = await api.new_record(b["id"], resource_type="Observation")
    assert [r["id"] for r in (await api.get(f"/api/records/?patient={a['id']}")).json] == [obs["id"], cond["id"]]
    assert [r["id"] for r in (await api.get("/api/records/?resource_type=Observation")).json] == [
        obs["id"], other["id"]]
    both = await api.get(f"/api/records/?patient={a['id']}&resource_type=Condition")
    assert [r["id"] for r in both.json] == [cond["id"]]
    paged = await api.get("/api/records/?resource_type=Observation&limit=1")
    assert len(paged.json) == 1 and "resource_type=Observation" in paged.headers["Link"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"patient": "PATIENT", "resource_type": "Banana", "data": {}}, "resource_type"),
        ({"patient": "PATIENT", "resource_type": "Patient", "data": {}}, "resource_type"),
        ({"patient": "PATIENT", "resource_type": "observation", "data": {}}, "resource_type"),
        ({"patient": "PATIENT", "resource_type": "Observation", "data": []}, "data"),
        ({"patient": "PATIENT", "data": {}}, "resource_type"),
        ({"patient": "not-a-uuid", "resource_type": "Observation"}, "patient"),
        ({"patient": str(uuid.UUID(int=7)), "resource_type": "Observation"}, "patient"),
        ({"resource_type": "Observation"}, "patient"),
    ],
)
async def test_bad_record_fields_are_400(api, body, field):
    p = await api.new_patient()
    body = {k: (p["id"] if v == "PATIENT" else v) for k, v in body.items()}
    resp = await api.post("/api/records/", body)
    assert resp.status == 400, resp.body
    assert any(d["field"] == field for d in resp.json["details"]), resp.json
    assert (await api.get("/api/records/")).json == []


async def test_deeply_nested_data_is_400(api):
    p = await api.new_patient()
    data: dict = {}
    cur = data
    for _ in range(100):
        cur["x"] = {}
        cur = cur["x"]
    resp = await api.post("/api/records/", {"patient": p["id"], "resource_type": "Observation", "data": data})
    assert resp.status == 400 and resp.json["details"][0]["field"] == "data"


async def test_record_filters_validated(api):
    assert (await api.get("/api/records/?patient=nope")).status == 400
    assert (await api.get("/api/records/?resource_type=Banana")).status == 400


async def test_patch_record_to_another_patient(api):
    a = await api.new_patient(name="A")
    b = await api.new_patient(name="B")
    r = await api.new_record(a["id"])
    moved = await api.patch(f"/api/records/{r['id']}/", {"patient": b["id"]})
    assert moved.status == 200 and moved.json["patient"] == b["id"]
    bad = await api.patch(f"/api/records/{r['id']}/", {"patient": str(uuid.uuid4())})
    assert bad.status == 400 and bad.json["details"][0]["field"] == "patient"
    stale = await api.put(f"/api/records/{r['id']}/", {"patient": a["id"], "resource_type": "Observation"},
                          headers={"If-Match": 'W/"1"'})
    assert stale.status == 412
