"""Seed section 3 (Sync Upload) and DESIGN.md "Sync upload"."""

from __future__ import annotations

import gc
import uuid

import pytest

from tests.support.http import UPLOAD, change, upload

pytestmark = pytest.mark.both_backends


async def test_seed_example_exact_shape(api):
    patient = await api.new_patient()
    record = await api.new_record(patient["id"], data={"value": "original"})
    # the seed's request, word for word, with real ids in place of its placeholders
    body = {
        "device_id": "device123",
        "changes": [
            {
                "operation": "create",
                "resource_type": "Observation",
                "client_temp_id": "temp123",
                "payload": {"patient_id": patient["id"], "value": "Some observation data"},
            },
            {
                "operation": "update",
                "resource_type": "Observation",
                "server_id": record["id"],
                "client_updated_at": "2025-09-12T10:00:00Z",
                "payload": {"value": "Updated data"},
            },
        ],
    }
    resp = await api.post(UPLOAD, body)
    assert resp.status == 200
    out = resp.json
    assert {"batch_id", "results", "conflicts"} <= set(out)
    assert str(uuid.UUID(out["batch_id"])) == out["batch_id"]
    created, conflicted = out["results"]
    assert created["client_temp_id"] == "temp123" and created["status"] == "created"
    assert str(uuid.UUID(created["server_id"])) == created["server_id"]
    # the server's copy changed after 2025-09-12T10:00:00Z: the seed's conflict
    assert conflicted["server_id"] == record["id"] and conflicted["status"] == "conflict"
    assert out["conflicts"] == [{"server_id": record["id"], "reason": "server_newer"}]
    assert conflicted["server_copy"]["data"] == {"value": "original"}
    assert (await api.get(f"/api/records/{record['id']}/")).json["data"] == {"value": "original"}
    new = (await api.get(f"/api/records/{created['server_id']}/")).json
    assert new["data"] == {"value": "Some observation data"} and new["patient"] == patient["id"]
    assert out["server_time"] and out["cursor"]

    # the seed's "updated" result: the same update with no stale timestamp
    resp = await upload(api, [change("update", server_id=record["id"], payload={"value": "Updated data"})])
    assert resp.json["results"] == [{"server_id": record["id"], "status": "updated", "server_version": 2}]
    assert resp.json["conflicts"] == []
    assert (await api.get(f"/api/records/{record['id']}/")).json["data"] == {"value": "Updated data"}


async def test_patient_and_observations_in_one_batch_then_in_a_later_one(api):
    first = await upload(api, [
        change("create", "Patient", client_temp_id="p1", payload={"name": "Offline Olga", "dob": "1980-05-05"}),
        change("create", client_temp_id="o1", payload={"patient_temp_id": "p1", "code": "8867-4", "value": 72}),
    ])
    pid = first.json["results"][0]["server_id"]
    obs = first.json["results"][1]
    assert obs["status"] == "created"
    record = (await api.get(f"/api/records/{obs['server_id']}/")).json
    assert record["patient"] == pid and record["data"] == {"code": "8867-4", "value": 72}
    later = await upload(api, [change("create", "Condition", client_temp_id="c1", payload={"patient_temp_id": "p1"})])
    assert later.json["results"][0]["status"] == "created"
    assert (await api.get(f"/api/records/{later.json['results'][0]['server_id']}/")).json["patient"] == pid
    # another device cannot use this device's temp ids
    other = await upload(api, [change("create", client_temp_id="x", payload={"patient_temp_id": "p1"})],
                         device="tablet-2")
    assert other.json["results"][0]["status"] == "rejected"


async def test_retried_create_returns_same_id_and_creates_nothing(api):
    p = await api.new_patient()
    ch = change("create", client_temp_id="t-1", payload={"patient_id": p["id"], "v": 1})
    a = await upload(api, [ch])
    b = await upload(api, [ch])
    assert a.json["results"][0]["server_id"] == b.json["results"][0]["server_id"]
    assert b.json["results"][0]["status"] == "created"
    assert len((await api.get("/api/records/")).json) == 1
    # the same temp id twice inside one batch is one record too
    c = await upload(api, [change("create", "Patient", client_temp_id="dup", payload={"name": "A"}),
                           change("create", "Patient", client_temp_id="dup", payload={"name": "A"})])
    assert c.json["results"][0]["server_id"] == c.json["results"][1]["server_id"]
    assert len((await api.get("/api/patients/")).json) == 2


async def test_retried_batch_id_returns_stored_response_and_applies_nothing(api):
    p = await api.new_patient()
    batch_id = str(uuid.uuid4())
    changes = [change("update", "Patient", server_id=p["id"], payload={"name": "Once"})]
    a = await upload(api, changes, batch_id=batch_id)
    b = await upload(api, changes, batch_id=batch_id)
    assert a.status == b.status == 200
    assert a.json == b.json and a.json["batch_id"] == batch_id
    assert (await api.get(f"/api/patients/{p['id']}/")).json["server_version"] == 2
    stolen = await upload(api, changes, device="someone-else", batch_id=batch_id)
    assert stolen.status == 409


async def test_retried_async_batch_id_gets_the_batch_answer_in_every_state(api, app, settings):
    """No consumer runs here: the batch is claimed and applied by hand, one state at a time."""
    from healthsync.batches import claim, run_claimed_batch
    from healthsync.tasks import make_huey

    batch_id = str(uuid.uuid4())
    body = {"device_id": "tab-1", "batch_id": batch_id, "async": True,
            "changes": [change("create", "Patient", client_temp_id="a", payload={"name": "Once"})]}
    first = await api.post(UPLOAD, body)
    assert first.status == 202 and first.json == {"batch_id": batch_id, "status": "pending"}
    for retry in (body, {**body, "async": False}):  # a retry is answered from the batch, however it is sent
        again = await api.post(UPLOAD, retry)
        assert (again.status, again.json) == (202, first.json)
    huey = make_huey(settings)
    try:
        task_id = await claim(app.ctx.db, huey, batch_id)
        processing = await api.post(UPLOAD, body)
        assert (processing.status, processing.json) == (202, {"batch_id": batch_id, "status": "processing"})
        assert await run_claimed_batch(settings, batch_id, task_id, final=True) == "done"
    finally:
        huey.storage.close()
    done = await api.post(UPLOAD, body)
    assert done.status == 200 and done.json["batch_id"] == batch_id
    assert [r["status"] for r in done.json["results"]] == ["created"]
    stored = (await api.get(f"/api/sync/batches/{batch_id}/")).json
    assert done.json["results"] == stored["results"] and done.json["cursor"] == stored["cursor"]
    assert (await api.post(UPLOAD, body)).json == done.json
    assert [p["name"] for p in (await api.get("/api/patients/")).json] == ["Once"]
    stolen = await api.post(UPLOAD, {**body, "device_id": "tab-2"})
    assert stolen.status == 409 and stolen.json["details"][0]["field"] == "batch_id"


async def test_every_outcome(api):
    p = await api.new_patient()
    r = await api.new_record(p["id"])
    gone = await api.new_record(p["id"])
    await api.delete(f"/api/records/{gone['id']}/")
    missing = str(uuid.uuid4())
    resp = await upload(api, [
        change("update", server_id=r["id"], base_version=1, payload={"v": 2}),          # updated
        change("update", server_id=r["id"], base_version=1, payload={"v": 3}),          # version_mismatch
        change("update", server_id=gone["id"], payload={"v": 9}),                       # deleted_on_server
        change("update", server_id=missing, payload={}),                                # not_found
        change("delete", server_id=missing),                                            # not_found
        change("create", "Patient", client_temp_id="bad", payload={"name": "X", "dob": "banana"}),  # rejected
        change("create", "Banana", client_temp_id="b2", payload={}),                    # rejected
        change("create", client_temp_id="b3", payload={"patient_id": missing}),         # rejected
        change("create", client_temp_id="b4", payload={}),                              # rejected: no patient
        change("create", "Patient", client_temp_id="b5", payload={"name": "y" * 300}),  # rejected
        change("delete", server_id=gone["id"]),                                         # deleted (twice)
        change("update", server_id=r["id"], client_updated_at="2000-01-01T00:00:00+05:00", payload={}),  # server_newer
        change("update", server_id=r["id"], client_updated_at="yesterday", payload={}),  # rejected
    ])
    assert resp.status == 200, resp.body
    statuses = [x["status"] for x in resp.json["results"]]
    assert statuses == ["updated", "conflict", "conflict", "not_found", "not_found", "rejected", "rejected",
                        "rejected", "rejected", "rejected", "deleted", "conflict", "rejected"]
    results = resp.json["results"]
    assert results[0]["server_version"] == 2
    assert results[1]["reason"] == "version_mismatch" and results[1]["server_copy"]["server_version"] == 2
    assert results[2]["reason"] == "deleted_on_server" and results[2]["server_copy"]["deleted"] is True
    assert results[11]["reason"] == "server_newer"
    assert "dob" in results[5]["error"] and "Banana" in results[6]["error"]
    assert "does not exist" in results[7]["error"] and "patient_id" in results[8]["error"]
    assert "name" in results[9]["error"] and "ISO 8601" in results[12]["error"]
    assert results[10]["server_version"] == 2  # deleting twice changes nothing
    assert resp.json["conflicts"] == [
        {"server_id": r["id"], "reason": "version_mismatch"},
        {"server_id": gone["id"], "reason": "deleted_on_server"},
        {"server_id": r["id"], "reason": "server_newer"},
    ]
    assert (await api.get(f"/api/records/{gone['id']}/?include_deleted=true")).json["server_version"] == 2
    conflicts = (await api.get("/api/conflicts/?device_id=device123")).json
    assert [c["reason"] for c in conflicts] == ["version_mismatch", "deleted_on_server", "server_newer"]


async def test_client_updated_at_compared_as_instants(api):
    p = await api.new_patient()
    stamp = p["updated_at"]  # e.g. 2026-…Z
    # the same instant written with an offset is not "later"
    hour = int(stamp[11:13])
    shifted = f"{stamp[:11]}{(hour + 2) % 24:02d}{stamp[13:26]}+02:00" if hour < 22 else stamp
    resp = await upload(api, [change("update", "Patient", server_id=p["id"], client_updated_at=shifted,
                                     payload={"name": "Same instant"})])
    assert resp.json["results"][0]["status"] == "updated"


async def test_client_updated_at_at_the_edges_of_the_date_range(api):
    p = await api.new_patient()
    resp = await upload(api, [
        change("update", "Patient", server_id=p["id"], client_updated_at="0001-01-01T00:00:00+01:00", payload={}),
        change("update", "Patient", server_id=p["id"], client_updated_at="9999-12-31T23:59:59-01:00", payload={}),
        change("update", "Patient", server_id=p["id"], client_updated_at="0001-01-01T00:00:00Z", payload={}),
        change("update", "Patient", server_id=p["id"], client_updated_at="9999-12-31T23:59:59Z",
               payload={"name": "Later"}),
    ])
    assert resp.status == 200, resp.body
    results = resp.json["results"]
    assert [x["status"] for x in results] == ["rejected", "rejected", "conflict", "updated"]
    for rejected in results[:2]:
        assert rejected["error"].startswith("client_updated_at:") and "outside the supported range" in rejected["error"]
    assert results[2]["reason"] == "server_newer"
    assert (await api.get(f"/api/patients/{p['id']}/")).json["name"] == "Later"


async def test_patient_update_is_merge_patch_and_delete_tombstones_records(api):
    p = await api.new_patient(identifiers={"mrn": "1", "old": "x"})
    r = await api.new_record(p["id"], data={"a": 1, "b": 2})
    resp = await upload(api, [
        change("update", "Patient", server_id=p["id"], payload={"identifiers": {"old": None, "nhs": "9"}}),
        change("update", server_id=r["id"], payload={"b": None, "c": 3}),
        change("delete", "Patient", server_id=p["id"]),
    ])
    assert [x["status"] for x in resp.json["results"]] == ["updated", "updated", "deleted"]
    tomb = (await api.get(f"/api/patients/{p['id']}/?include_deleted=true")).json
    assert tomb["identifiers"] == {"mrn": "1", "nhs": "9"} and tomb["deleted"] and tomb["server_version"] == 3
    rec = (await api.get(f"/api/records/{r['id']}/?include_deleted=true")).json
    assert rec["data"] == {"a": 1, "c": 3} and rec["deleted"] and rec["server_version"] == 3


BAD_BATCHES = [
    ({"changes": []}, 400, "device_id"),
    ({"device_id": "d", "changes": "nope"}, 400, "changes"),
    ({"device_id": "d", "changes": [{"operation": "zap", "resource_type": "Observation", "client_temp_id": "a"}]},
     400, "operation"),
    ({"device_id": "d", "changes": [{"operation": "create", "resource_type": "Observation", "payload": {}}]},
     400, "client_temp_id"),
    ({"device_id": "d", "changes": [{"operation": "update", "resource_type": "Observation", "payload": {}}]},
     400, "server_id"),
    ({"device_id": "d", "changes": [{"operation": "create", "resource_type": "Patient", "client_temp_id": "a",
                                     "payload": []}]},
     400, "payload"),
    ({"device_id": "d", "changes": [{"operation": "update", "resource_type": "Patient",
                                     "server_id": str(uuid.UUID(int=1)), "base_version": "3"}]},
     400, "base_version"),
    ({"device_id": "d", "changes": [7]}, 400, "change"),
    ({"device_id": "d", "changes": [{"operation": "update", "resource_type": "Patient", "server_id": "not-a-uuid"}]},
     400, "server_id"),  # refused whole, as the API description says (it was a not_found)
    ({"device_id": 5, "changes": []}, 400, "device_id"),
    ({"device_id": "d", "changes": [], "batch_id": "not-a-uuid"}, 400, "batch_id"),
    ({"device_id": "d", "changes": [], "async": "yes"}, 400, "async"),
]


@pytest.mark.parametrize("body, status, field", BAD_BATCHES)
async def test_malformed_batch_refused_whole(api, body, status, field):
    good = {"operation": "create", "resource_type": "Patient", "client_temp_id": "good",
            "payload": {"name": "Kept out"}}
    if isinstance(body.get("changes"), list):
        body = {**body, "changes": [good, *body["changes"]]}
    resp = await api.post(UPLOAD, body)
    assert resp.status == status, resp.body
    assert any(d["field"] == field for d in resp.json["details"]), resp.json
    if isinstance(body.get("changes"), list) and len(body["changes"]) > 1:
        assert any(d.get("index") == 1 for d in resp.json["details"])
    assert (await api.get("/api/patients/")).json == []


async def test_not_json_and_wrong_content_type(api):
    assert (await api.post(UPLOAD, raw=b"{{{")).status == 400
    assert (await api.post(UPLOAD, raw=b'{"device_id": "d", "changes": []}',
                           headers={"Content-Type": "text/csv"})).status == 415
    assert (await api.post(UPLOAD, raw=b"[]")).status == 400


async def test_too_many_changes_is_413_and_writes_nothing(api):
    changes = [change("create", "Patient", client_temp_id=f"t{i}", payload={"name": "P"}) for i in range(10_001)]
    resp = await upload(api, changes)
    assert resp.status == 413
    assert resp.json["details"][0]["field"] == "changes" and "10000" in resp.json["error"]
    assert (await api.get("/api/patients/")).json == []


async def test_deeply_nested_payload_is_rejected_not_500(api):
    p = await api.new_patient()
    deep: dict = {}
    cur = deep
    for _ in range(200):
        cur["x"] = {}
        cur = cur["x"]
    resp = await upload(api, [change("create", client_temp_id="deep", payload={"patient_id": p["id"], **deep}),
                              change("create", client_temp_id="ok", payload={"patient_id": p["id"]})])
    assert resp.status == 200
    assert [r["status"] for r in resp.json["results"]] == ["rejected", "created"]


async def test_json_nested_past_the_parser_limit_is_400(api):
    resp = await api.post(UPLOAD, raw=b'{"device_id": "d", "changes": ' + b"[" * 2000 + b"]" * 2000 + b"}")
    assert resp.status == 400


async def test_batch_is_stored_done(api):
    resp = await upload(api, [change("create", "Patient", client_temp_id="a", payload={"name": "x"})])
    stored = (await api.get(f"/api/sync/batches/{resp.json['batch_id']}/")).json
    assert (stored["status"], stored["change_count"], stored["device_id"]) == ("done", 1, "device123")
    assert stored["results"] == resp.json["results"]


async def test_record_created_and_tombstoned_in_one_batch_is_written_once_as_it_ends(api):
    p = await api.new_patient()
    resp = await upload(api, [
        change("create", client_temp_id="o1", payload={"patient_id": p["id"], "v": 1}),
        change("delete", "Patient", server_id=p["id"]),
        change("create", "Patient", client_temp_id="p2", payload={"name": "Kept"}),
        change("create", client_temp_id="o2", payload={"patient_temp_id": "p2", "v": 2}),
    ])
    created, deleted, kept, other = resp.json["results"]
    assert created["status"] == "created" and created["server_version"] == 1
    assert deleted == {"server_id": p["id"], "status": "deleted", "server_version": 2}
    record = (await api.get(f"/api/records/{created['server_id']}/?include_deleted=true")).json
    patient = (await api.get(f"/api/patients/{p['id']}/?include_deleted=true")).json
    assert record["deleted"] is True and record["server_version"] == 2
    assert record["updated_at"] > patient["updated_at"]  # tombstoned after its patient
    assert (await api.get(f"/api/records/{other['server_id']}/")).json["server_version"] == 1
    assert (await api.get(f"/api/patients/{kept['server_id']}/")).json["server_version"] == 1
    changes = (await api.get("/api/sync/download/?cursor=0")).json["changes"]
    assert [c["server_id"] for c in changes][-4:] == [p["id"], created["server_id"], kept["server_id"],
                                                      other["server_id"]]


def test_gc_paused_restores_the_collector_as_it_found_it():
    from healthsync.gcpause import gc_paused

    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        assert not gc.isenabled()
        raise RuntimeError
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # off already: left off
    finally:
        gc.enable()


async def test_upload_turns_the_collector_back_on(api, monkeypatch):
    from healthsync.sync import service

    during = []
    real = service.SyncService.upload

    async def spy(self, request, owner=None):
        during.append(gc.isenabled())
        return await real(self, request, owner)

    monkeypatch.setattr(service.SyncService, "upload", spy)
    ok = await upload(api, [change("create", "Patient", client_temp_id="a", payload={"name": "x"})])
    bad = await upload(api, [change("zap", "Patient", client_temp_id="b")])
    assert ok.status == 200 and bad.status == 400
    assert during == [False] and gc.isenabled()
