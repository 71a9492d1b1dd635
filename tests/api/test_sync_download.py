"""Seed section 4 (Sync Download) and DESIGN.md "Sync download"."""

from __future__ import annotations

import re
import uuid

import pytest

from tests.support.http import change, upload

pytestmark = pytest.mark.both_backends

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
DL = "/api/sync/download/"


async def test_seed_example_exact_shape(api):
    p = await api.new_patient()
    r = await api.new_record(p["id"], data={"v": 1})
    await api.patch(f"/api/records/{r['id']}/", {"data": {"v": None}})  # a change: to {}, version 2
    resp = await api.get(f"{DL}?since=2025-09-12T10:00:00Z")
    assert resp.status == 200
    body = resp.json
    assert {"changes", "server_time"} <= set(body)
    assert TS.match(body["server_time"])
    patient_entry, record_entry = body["changes"]
    assert set(record_entry) >= {"server_id", "resource_type", "data", "server_version", "updated_at", "deleted"}
    assert record_entry == {
        "server_id": r["id"], "resource_type": "Observation", "patient": p["id"], "data": {},
        "server_version": 2, "updated_at": record_entry["updated_at"], "deleted": False,
        "created_by": None,  # an addition: made over REST, by no device
    }
    assert TS.match(record_entry["updated_at"])
    assert patient_entry["resource_type"] == "Patient" and patient_entry["server_id"] == p["id"]
    assert patient_entry["data"] == {"owner": None, "name": "John Doe", "dob": "1990-01-01",
                                     "identifiers": {}, "fhir": {}}
    assert body["server_time"] == record_entry["updated_at"]
    assert body["has_more"] is False and body["cursor"]


async def test_since_returns_only_later_changes_oldest_first_latest_version(api):
    p = await api.new_patient()
    first = await api.get(f"{DL}?since=1970-01-01T00:00:00Z")
    t = first.json["server_time"]
    a = await api.new_record(p["id"])
    b = await api.new_record(p["id"])
    await api.patch(f"/api/records/{a['id']}/", {"data": {"again": True}})
    await api.delete(f"/api/records/{b['id']}/")
    resp = await api.get(f"{DL}?since={t}")
    entries = resp.json["changes"]
    assert [(e["server_id"], e["server_version"], e["deleted"]) for e in entries] == [
        (a["id"], 2, False), (b["id"], 2, True)]
    assert (await api.get(f"{DL}?since={resp.json['server_time']}")).json["changes"] == []
    # an offset is an instant: the same moment written in +02:00 gives the same answer
    same = await api.get(f"{DL}?since={t}".replace("Z", "+00:00").replace("+", "%2B"))
    assert same.json["changes"] == entries


async def test_paging_by_cursor_and_by_server_time_see_everything(api):
    resp = await upload(api, [change("create", "Patient", client_temp_id=f"p{i}", payload={"name": f"P{i}"})
                              for i in range(25)])
    ids = [x["server_id"] for x in resp.json["results"]]
    for follow in ("cursor", "since"):
        seen, pos, pages = [], ("since", "1970-01-01T00:00:00Z"), 0
        while True:
            r = await api.get(f"{DL}?{pos[0]}={pos[1]}&limit=7")
            assert r.status == 200
            seen += [e["server_id"] for e in r.json["changes"]]
            pages += 1
            pos = ("cursor", r.json["cursor"]) if follow == "cursor" else ("since", r.json["server_time"])
            if not r.json["has_more"]:
                break
        assert seen == ids and pages == 4, follow


async def test_filters(api):
    a = await api.new_patient(name="A")
    b = await api.new_patient(name="B")
    ra = await api.new_record(a["id"], resource_type="Observation")
    rb = await api.new_record(b["id"], resource_type="Condition")
    since = "since=1970-01-01T00:00:00Z"
    only_patients = (await api.get(f"{DL}?{since}&resource_type=Patient")).json["changes"]
    assert [e["server_id"] for e in only_patients] == [a["id"], b["id"]]
    only_cond = (await api.get(f"{DL}?{since}&resource_type=Condition")).json["changes"]
    assert [e["server_id"] for e in only_cond] == [rb["id"]]
    of_a = (await api.get(f"{DL}?{since}&patient={a['id']}")).json["changes"]
    assert [e["server_id"] for e in of_a] == [a["id"], ra["id"]]


@pytest.mark.parametrize(
    "query, field",
    [
        ("", "since"),
        ("since=", "since"),
        ("since=yesterday", "since"),
        ("since=2025-13-45T00:00:00Z", "since"),
        ("cursor=abc", "cursor"),
        ("cursor=-5", "cursor"),
        ("since=2025-01-01&limit=0", "limit"),
        ("since=2025-01-01&limit=1000000", "limit"),
        ("since=2025-01-01&resource_type=Banana", "resource_type"),
        ("since=2025-01-01&patient=nope", "patient"),
    ],
)
async def test_bad_queries_are_400_with_an_example(api, query, field):
    resp = await api.get(f"{DL}?{query}")
    assert resp.status == 400, resp.body
    assert resp.json["details"][0]["field"] == field
    if field == "since":
        assert "2025-09-12T10:00:00Z" in resp.json["error"]


async def test_cursor_ahead_of_history_is_410_resync(api):
    await api.new_patient()
    resp = await api.get(f"{DL}?cursor=999")
    assert resp.status == 410 and resp.json["resync"] is True


async def test_empty_database(api):
    resp = await api.get(f"{DL}?since=1970-01-01T00:00:00Z")
    assert resp.json == {"changes": [], "server_time": "1970-01-01T00:00:00.000000Z", "cursor": "0", "has_more": False}
    assert (await api.get(f"{DL}?cursor=0")).json["changes"] == []


async def test_unknown_patient_filter_gives_nothing(api):
    await api.new_patient()
    resp = await api.get(f"{DL}?since=1970-01-01T00:00:00Z&patient={uuid.uuid4()}")
    assert resp.json["changes"] == []


# (a raw "+" arrives as a space, which is read as the "+" it was)
OUT_OF_RANGE = ["0001-01-01T00:00:00%2B01:00", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"]


@pytest.mark.parametrize("path", [DL, "/api/audit/"])
@pytest.mark.parametrize("since", OUT_OF_RANGE)
async def test_since_outside_the_date_range_is_400(api, path, since):
    resp = await api.get(f"{path}?since={since}")
    assert resp.status == 400, resp.body
    assert resp.json["details"][0]["field"] == "since"
    assert "outside the supported range" in resp.json["details"][0]["message"]


@pytest.mark.parametrize("path", [DL, "/api/audit/"])
async def test_since_at_the_edges_of_the_date_range_works(api, path):
    p = await api.new_patient()
    for since in ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00-01:00", "0999-12-31", "1969-12-31T23:59:59Z"):
        resp = await api.get(f"{path}?since={since}")
        assert resp.status == 200, (since, resp.body)
        if path == DL:  # everything is after a time before the epoch
            assert [e["server_id"] for e in resp.json["changes"]] == [p["id"]], since
    for since in ("9999-12-31T23:59:59Z", "9999-12-31T23:59:59.999999Z", "9999-12-31T23:59:59%2B01:00"):
        resp = await api.get(f"{path}?since={since}")
        assert resp.status == 200, (since, resp.body)
        if path == DL:
            assert resp.json["changes"] == [] and not resp.json["has_more"]
