"""Ids made on the device (issue 18): a sync ``create`` may name its item's id
(``server_id``), REST ``POST`` may name it (``id``), and download and websocket
entries say which device created an item under which ``client_temp_id``.

Offline-first libraries (WatermelonDB, RxDB, PouchDB, PowerSync, the Android
FHIR SDK) make every id on the device and cannot change it, so the server keeps
the id the device chose; a retry is idempotent, an id already used by another
item is refused naming it, and nothing a client sends as an id is dropped.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from tests.support.databases import execute

pytestmark = pytest.mark.both_backends

UPLOAD = "/api/sync/upload/"
DL = "/api/sync/download/?cursor=0"


@pytest.fixture
def settings(settings_with, request):
    """The test settings; a test may add its own (``indirect`` parametrization)."""
    return settings_with(**getattr(request, "param", {}))


def new_id() -> str:
    return str(uuid.uuid4())


def create(temp: str, payload: dict[str, Any], rtype: str = "Patient", server_id: str | None = None) -> dict[str, Any]:
    change: dict[str, Any] = {"operation": "create", "resource_type": rtype, "client_temp_id": temp,
                              "payload": payload}
    if server_id is not None:
        change["server_id"] = server_id
    return change


async def upload(api: Any, device: str, *changes: dict[str, Any]) -> list[dict[str, Any]]:
    resp = await api.post(UPLOAD, {"device_id": device, "changes": list(changes)})
    assert resp.status == 200, resp.body
    return resp.json["results"]


async def entries(api: Any) -> dict[str, dict[str, Any]]:
    resp = await api.get(DL)
    assert resp.status == 200
    return {e["server_id"]: e for e in resp.json["changes"]}


def count(settings: Any, table: str) -> int:
    return int(execute(settings, f"SELECT count(*) FROM {table}")[0][0])


# Sync upload ---------------------------------------------------------------------------


async def test_a_create_names_its_own_id_and_a_retry_is_the_same_answer_once(api, app, settings):
    pid, oid = new_id(), new_id()
    changes = [create("p1", {"name": "Ana"}, server_id=pid),
               create("o1", {"patient_id": pid, "v": 1}, "Observation", server_id=oid)]
    first = await upload(api, "tab-1", *changes)
    assert first == [
        {"client_temp_id": "p1", "status": "created", "server_id": pid, "server_version": 1},
        {"client_temp_id": "o1", "status": "created", "server_id": oid, "server_version": 1},
    ]
    assert (await api.get(f"/api/patients/{pid}/")).json["name"] == "Ana"
    assert (await api.get(f"/api/records/{oid}/")).json["patient"] == pid

    # the answer was lost: the device sends the very same changes again (a new batch)
    assert await upload(api, "tab-1", *changes) == first
    # a retry by id alone (the device lost its temp ids too): the same answer, and the temp id learnt
    again = await upload(api, "tab-1", create("p1-again", {"name": "Ana"}, server_id=pid),
                         create("o2", {"patient_temp_id": "p1-again", "v": 2}, "Observation"))
    assert again[0] == {"client_temp_id": "p1-again", "status": "created", "server_id": pid, "server_version": 1}
    assert again[1]["status"] == "created"
    assert (await api.get(f"/api/records/{again[1]['server_id']}/")).json["patient"] == pid
    # nothing twice
    assert count(settings, "patients") == 1 and count(settings, "records") == 2


async def test_the_same_temp_id_naming_another_id_is_rejected(api, app):
    pid = new_id()
    await upload(api, "tab-1", create("p1", {"name": "Ana"}, server_id=pid))
    other = new_id()
    result = (await upload(api, "tab-1", create("p1", {"name": "Ana"}, server_id=other)))[0]
    assert result["status"] == "rejected"
    assert pid in result["error"] and other in result["error"] and "p1" in result["error"]
    assert (await api.get(f"/api/patients/{other}/")).status == 404


async def test_an_id_used_by_another_item_is_rejected_naming_it(api, app, settings):
    pid, oid = new_id(), new_id()
    await upload(api, "tab-1", create("p1", {"name": "Ana"}, server_id=pid),
                 create("o1", {"patient_id": pid}, "Observation", server_id=oid))
    rest = (await api.post("/api/patients/", {"name": "Made over REST"})).json["id"]
    gone = new_id()
    await upload(api, "tab-1", create("g", {"name": "Gone"}, server_id=gone))
    assert (await api.delete(f"/api/patients/{gone}/")).status == 204

    results = await upload(
        api, "tab-2",
        create("a", {"name": "Same id, other device"}, server_id=pid),   # another device's patient
        create("b", {"patient_id": pid}, "Observation", server_id=pid),  # a patient's id for a record
        create("c", {"name": "A record's id"}, server_id=oid),            # a record's id for a patient
        create("d", {"name": "REST's id"}, server_id=rest),               # an id the server made
        create("e", {"name": "A deleted one's"}, server_id=gone),         # deleted, still used
        create("f", {"name": "Fine"}),                                    # one bad change sinks no other
    )
    assert [r["status"] for r in results] == ["rejected"] * 5 + ["created"]
    for result, used, kind in zip(results, (pid, pid, oid, rest, gone),
                                  ("Patient", "Patient", "Observation", "Patient", "Patient, deleted"),
                                  strict=False):
        assert result["server_id"] == used  # the rejected create's own id is echoed
        assert result["error"] == f"server_id {used} is already the id of another item ({kind})"
    # the same device making a record under its own patient's id is a collision too
    same_device = await upload(api, "tab-1", create("x", {"patient_id": pid}, "Observation", server_id=pid))
    assert same_device[0]["status"] == "rejected" and pid in same_device[0]["error"]
    assert count(settings, "patients") == 4 and count(settings, "records") == 1
    assert (await api.get(f"/api/patients/{pid}/")).json["name"] == "Ana"


async def test_a_record_names_its_patient_by_the_devices_id(api, app):
    pid = new_id()
    same = await upload(api, "tab-1", create("p1", {"name": "Ana"}, server_id=pid),
                        create("o1", {"patient_id": pid, "v": 1}, "Observation"))
    assert [r["status"] for r in same] == ["created", "created"]
    later = await upload(api, "tab-1", create("o2", {"patient_id": pid, "v": 2}, "Observation"))
    # another device that learnt the id (from a download) names it too
    other = await upload(api, "tab-2", create("o3", {"patient_id": pid, "v": 3}, "Condition"))
    for result in (same[1], later[0], other[0]):
        assert result["status"] == "created"
        assert (await api.get(f"/api/records/{result['server_id']}/")).json["patient"] == pid
    # and updates and deletes name the device's ids as any server id
    upd = await upload(api, "tab-1", {"operation": "update", "resource_type": "Patient", "server_id": pid,
                                      "base_version": 1, "payload": {"name": "Ana Silva"}})
    assert upd == [{"server_id": pid, "status": "updated", "server_version": 2}]


@pytest.mark.parametrize("bad", [
    "not-a-uuid",
    "3F2B8C1E-8D4A-4C6E-9B7A-2D1E5F6A7B8C",    # upper case: would be a second spelling of the id
    "{3f2b8c1e-8d4a-4c6e-9b7a-2d1e5f6a7b8c}",
    "3f2b8c1e8d4a4c6e9b7a2d1e5f6a7b8c",
])
async def test_a_create_naming_an_id_that_is_not_a_canonical_uuid_is_refused_whole(api, app, settings, bad):
    resp = await api.post(UPLOAD, {"device_id": "tab-1", "changes": [
        create("ok", {"name": "Fine"}), create("p1", {"name": "Ana"}, server_id=bad)]})
    assert resp.status == 400
    detail = resp.json["details"][0]
    assert detail["index"] == 1 and detail["field"] == "server_id"
    assert "UUID" in detail["message"] or "canonical" in detail["message"]
    if bad.startswith("3F"):
        assert bad.lower() in detail["message"]  # says what to send instead
    assert count(settings, "patients") == 0  # nothing applied


async def test_a_patient_payloads_id_is_honoured_never_dropped(api, app, settings):
    pid = new_id()
    results = await upload(
        api, "tab-1",
        create("p1", {"id": pid, "name": "Ana"}),                        # the payload's id: the patient's id
        create("p2", {"id": pid, "name": "Ana"}, server_id=pid),         # both, the same: a retry of p1's id
        create("p3", {"id": new_id(), "name": "Two ids"}, server_id=new_id()),
        create("p4", {"id": "x", "name": "Bad id"}),
        create("o1", {"id": "obs-1", "patient_id": pid}, "Observation"),  # a record's data keeps its own id
    )
    assert results[0] == {"client_temp_id": "p1", "status": "created", "server_id": pid, "server_version": 1}
    assert results[1]["status"] == "created" and results[1]["server_id"] == pid
    assert results[2]["status"] == "rejected" and "differs from server_id" in results[2]["error"]
    assert results[3] == {"client_temp_id": "p4", "status": "rejected",
                          "error": "payload.id: the new patient's id 'x' is not a UUID"}
    assert results[4]["status"] == "created"
    record = (await api.get(f"/api/records/{results[4]['server_id']}/")).json
    assert record["data"] == {"id": "obs-1"} and record["id"] != "obs-1"
    assert count(settings, "patients") == 1


@pytest.mark.parametrize("settings", [{"embedded_worker": True, "task_retry_delay": 0.2}], ids=["worker"],
                         indirect=True)
async def test_an_async_batch_keeps_the_ids_and_the_creator(api, app):
    pid = new_id()
    batch = new_id()
    resp = await api.post(UPLOAD, {"device_id": "tab-1", "async": True, "batch_id": batch,
                                   "changes": [create("p1", {"name": "Later"}, server_id=pid)]})
    assert resp.status == 202
    assert (await api.post(f"/api/sync/trigger/{batch}/")).status == 202
    for _ in range(600):
        status = (await api.get(f"/api/sync/batches/{batch}/")).json
        if status["status"] == "done":
            break
        await asyncio.sleep(0.05)
    assert status["results"] == [{"client_temp_id": "p1", "status": "created", "server_id": pid,
                                  "server_version": 1}]
    assert (await entries(api))[pid]["created_by"] == {"device_id": "tab-1", "client_temp_id": "p1"}


# Download and websocket entries ------------------------------------------------------------


async def test_download_entries_name_the_creating_device_and_temp_id(api, app):
    pid = new_id()
    made = await upload(api, "tab-1", create("p1", {"name": "Ana"}, server_id=pid),
                        create("o1", {"patient_temp_id": "p1", "v": 1}, "Observation"))
    oid = made[1]["server_id"]
    rest = (await api.post("/api/patients/", {"name": "Over REST"})).json["id"]
    rest_record = (await api.post("/api/records/", {"patient": pid, "resource_type": "Condition"})).json["id"]
    # an update by another device keeps the creator
    await upload(api, "tab-2", {"operation": "update", "resource_type": "Observation", "server_id": oid,
                                "payload": {"v": 2}})
    got = await entries(api)
    assert got[pid]["created_by"] == {"device_id": "tab-1", "client_temp_id": "p1"}
    assert got[oid]["created_by"] == {"device_id": "tab-1", "client_temp_id": "o1"}
    assert got[oid]["server_version"] == 2
    assert got[rest]["created_by"] is None
    assert got[rest_record]["created_by"] is None
    # the seed's fields are all there as before
    assert set(got[oid]) == {"server_id", "resource_type", "patient", "data", "server_version", "updated_at",
                             "deleted", "created_by"}
    # a tombstone still says who created it
    await upload(api, "tab-2", {"operation": "delete", "resource_type": "Patient", "server_id": pid})
    got = await entries(api)
    assert got[pid]["deleted"] is True and got[pid]["created_by"]["device_id"] == "tab-1"
    # the REST items stay as they are: no creator field there
    assert "created_by" not in (await api.get(f"/api/patients/{rest}/")).json


async def test_websocket_entries_name_the_creator_in_catch_up_and_live(api, app, ws):
    pid = new_id()
    await upload(api, "tab-1", create("p1", {"name": "Caught up"}, server_id=pid))
    sub = await ws("cursor=0&device_id=tab-1")
    first = await sub.changes_until(1)
    assert first[0]["server_id"] == pid
    assert first[0]["created_by"] == {"device_id": "tab-1", "client_temp_id": "p1"}

    oid = new_id()
    await upload(api, "tab-1", create("o1", {"patient_id": pid}, "Observation", server_id=oid))
    rest = (await api.post("/api/patients/", {"name": "Live over REST"})).json["id"]
    live = {e["server_id"]: e for e in await sub.changes_until(3)}
    assert live[oid]["created_by"] == {"device_id": "tab-1", "client_temp_id": "o1"}
    assert live[rest]["created_by"] is None
    # exactly what download gives for the same items
    got = await entries(api)
    assert all(live[k] == got[k] for k in live)


# REST --------------------------------------------------------------------------------------


async def test_rest_post_with_an_id(api, app, settings):
    pid = new_id()
    body = {"id": pid, "name": "Ana", "dob": "1990-01-01"}
    resp = await api.post("/api/patients/", body)
    assert resp.status == 201
    assert resp.json["id"] == pid and resp.headers["Location"] == f"/api/patients/{pid}/"

    # the same body again (the answer was lost): the item as it is, 200, nothing written
    again = await api.post("/api/patients/", body)
    assert again.status == 200 and again.json == resp.json
    assert again.headers["ETag"] == resp.headers["ETag"] and again.headers["Location"] == f"/api/patients/{pid}/"

    oid = new_id()
    rec = {"id": oid, "patient": pid, "resource_type": "Observation", "data": {"v": 1}}
    made = await api.post("/api/records/", rec)
    assert made.status == 201 and made.json["id"] == oid
    assert (await api.post("/api/records/", rec)).status == 200
    assert count(settings, "patients") == 1 and count(settings, "records") == 1

    # a null id: the server makes one, as without it
    plain = await api.post("/api/patients/", {"id": None, "name": "Plain"})
    assert plain.status == 201 and plain.json["id"] != pid


async def test_rest_post_with_a_used_id_is_a_409_naming_it(api, app, settings):
    pid = new_id()
    await api.post("/api/patients/", {"id": pid, "name": "Ana"})
    oid = (await api.post("/api/records/", {"patient": pid, "resource_type": "Observation"})).json["id"]
    synced = new_id()
    await upload(api, "tab-1", create("s", {"name": "From a device"}, server_id=synced))
    gone = new_id()
    await api.post("/api/patients/", {"id": gone, "name": "Gone"})
    assert (await api.delete(f"/api/patients/{gone}/")).status == 204
    before = await entries(api)

    cases = [
        ("/api/patients/", {"id": pid, "name": "Someone else"}, pid, "a patient with other values"),
        ("/api/patients/", {"id": oid, "name": "A record's id"}, oid, "a record"),
        ("/api/patients/", {"id": synced, "name": "A device's id"}, synced, "a patient with other values"),
        ("/api/patients/", {"id": gone, "name": "Gone"}, gone, "a deleted patient"),
        ("/api/records/", {"id": pid, "patient": pid, "resource_type": "Observation"}, pid, "a patient"),
        ("/api/records/", {"id": oid, "patient": pid, "resource_type": "Observation", "data": {"v": 2}}, oid,
         "a record with other values"),
    ]
    for path, body, used, what in cases:
        resp = await api.post(path, body)
        assert resp.status == 409, (body, resp.json)
        assert resp.json["error"] == f"id {used} is already used by {what}"
        assert resp.json["details"] == [{"field": "id", "message": f"already used by {what}"}]
    assert await entries(api) == before  # nothing written


@pytest.mark.parametrize("bad", ["nope", 7, "3F2B8C1E-8D4A-4C6E-9B7A-2D1E5F6A7B8C", {"a": 1}])
async def test_rest_post_with_a_bad_id_is_a_400(api, app, settings, bad):
    for path, body in (("/api/patients/", {"id": bad, "name": "Ana"}),
                       ("/api/records/", {"id": bad, "patient": new_id(), "resource_type": "Observation"})):
        resp = await api.post(path, body)
        assert resp.status == 400, resp.json
        assert resp.json["details"][0]["field"] == "id"
        assert "UUID" in resp.json["details"][0]["message"] or "canonical" in resp.json["details"][0]["message"]
    assert count(settings, "patients") == 0 and count(settings, "records") == 0


async def test_put_and_patch_still_ignore_an_echoed_id(api, app):
    p = await api.new_patient()
    resp = await api.put(f"/api/patients/{p['id']}/", {**p, "name": "Renamed"})
    assert resp.status == 200 and resp.json["id"] == p["id"]
