"""Seed section 1 (Patients) exactly as shown, plus DESIGN.md's additions."""

from __future__ import annotations

import re
import uuid

import pytest

pytestmark = pytest.mark.both_backends

SEED_PATIENT_KEYS = {"id", "owner", "name", "dob", "identifiers", "fhir", "server_version", "updated_at", "deleted"}
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
SEED_BODY = {"name": "John Doe", "dob": "1990-01-01", "identifiers": {}, "fhir": {}}


def assert_patient_shape(p: dict) -> None:
    assert set(p) == SEED_PATIENT_KEYS
    assert str(uuid.UUID(p["id"])) == p["id"]
    assert p["owner"] is None
    assert isinstance(p["name"], str)
    assert p["dob"] is None or re.match(r"^\d{4}-\d\d-\d\d$", p["dob"])
    assert isinstance(p["identifiers"], dict)
    assert p["fhir"] is None or isinstance(p["fhir"], dict)
    assert isinstance(p["server_version"], int) and not isinstance(p["server_version"], bool)
    assert TS.match(p["updated_at"])
    assert p["deleted"] is False


async def test_seed_create_then_list_retrieve(api):
    created = await api.post("/api/patients/", SEED_BODY)
    assert created.status == 201
    p = created.json
    assert_patient_shape(p)
    assert p["name"] == "John Doe" and p["dob"] == "1990-01-01" and p["identifiers"] == {} and p["fhir"] == {}
    assert p["server_version"] == 1
    assert created.headers["ETag"] == 'W/"1"'

    listed = await api.get("/api/patients/")
    assert listed.status == 200
    assert isinstance(listed.json, list) and listed.json == [p]

    one = await api.get(f"/api/patients/{p['id']}/")
    assert one.status == 200 and one.json == p


async def test_seed_update_put_and_patch(api):
    p = await api.new_patient()
    put = await api.put(f"/api/patients/{p['id']}/", {**SEED_BODY, "name": "Jane Doe"})
    assert put.status == 200
    assert_patient_shape(put.json)
    assert put.json["name"] == "Jane Doe" and put.json["server_version"] == 2
    assert put.json["updated_at"] > p["updated_at"]

    patch = await api.patch(f"/api/patients/{p['id']}/", {"dob": "1991-02-03"})
    assert patch.status == 200
    assert patch.json["dob"] == "1991-02-03" and patch.json["name"] == "Jane Doe"
    assert patch.json["server_version"] == 3
    assert patch.headers["ETag"] == 'W/"3"'


async def test_seed_delete_is_204_and_soft(api):
    p = await api.new_patient()
    resp = await api.delete(f"/api/patients/{p['id']}/")
    assert resp.status == 204 and resp.body == b""
    assert (await api.get(f"/api/patients/{p['id']}/")).status == 404
    assert (await api.get("/api/patients/")).json == []
    gone = await api.get(f"/api/patients/{p['id']}/?include_deleted=true")
    assert gone.status == 200
    assert gone.json["deleted"] is True and gone.json["server_version"] == 2
    listed = await api.get("/api/patients/?include_deleted=true")
    assert [x["id"] for x in listed.json] == [p["id"]]
    # a deleted patient cannot be changed or deleted again
    assert (await api.put(f"/api/patients/{p['id']}/", SEED_BODY)).status == 404
    assert (await api.delete(f"/api/patients/{p['id']}/")).status == 404


async def test_paths_without_trailing_slash(api):
    p = await api.new_patient()
    assert (await api.get("/api/patients")).status == 200
    assert (await api.get(f"/api/patients/{p['id']}")).json["id"] == p["id"]


async def test_patch_merges_identifiers_key_by_key(api):
    p = await api.new_patient(identifiers={"mrn": "1", "nhs": "2"}, fhir={"a": {"b": 1, "c": 2}})
    resp = await api.patch(f"/api/patients/{p['id']}/",
                           {"identifiers": {"nhs": None, "ssn": "3"}, "fhir": {"a": {"c": None}}})
    assert resp.status == 200, resp.body
    assert resp.json["identifiers"] == {"mrn": "1", "ssn": "3"}
    assert resp.json["fhir"] == {"a": {"b": 1}}
    cleared = await api.patch(f"/api/patients/{p['id']}/", {"fhir": None, "dob": None})
    assert cleared.json["fhir"] is None and cleared.json["dob"] is None


async def test_put_replaces_writable_fields_and_ignores_read_only(api):
    p = await api.new_patient(identifiers={"mrn": "1"})
    echoed = {**p, "name": "Renamed", "identifiers": {}, "server_version": 99, "owner": "mallory", "deleted": True}
    resp = await api.put(f"/api/patients/{p['id']}/", echoed)
    assert resp.status == 200
    assert resp.json["name"] == "Renamed" and resp.json["identifiers"] == {}
    assert resp.json["server_version"] == 2 and resp.json["owner"] is None and resp.json["deleted"] is False
    # PUT without dob clears it: PUT replaces
    resp = await api.put(f"/api/patients/{p['id']}/", {"name": "Renamed"})
    assert resp.json["dob"] is None and resp.json["fhir"] is None


async def test_if_match(api):
    p = await api.new_patient()
    url = f"/api/patients/{p['id']}/"
    stale = await api.put(url, SEED_BODY, headers={"If-Match": 'W/"7"'})
    assert stale.status == 412
    assert stale.json["error"] and isinstance(stale.json["details"], list)
    assert (await api.get(url)).json["server_version"] == 1  # nothing changed
    ok = await api.patch(url, {"name": "A"}, headers={"If-Match": 'W/"1"'})
    assert ok.status == 200 and ok.json["server_version"] == 2
    assert (await api.patch(url, {"name": "B"}, headers={"If-Match": '"2"'})).status == 200
    assert (await api.delete(url, headers={"If-Match": 'W/"2"'})).status == 412
    assert (await api.delete(url, headers={"If-Match": "*"})).status == 204


async def test_get_with_if_none_match_is_304(api):
    p = await api.new_patient()
    resp = await api.get(f"/api/patients/{p['id']}/", headers={"If-None-Match": 'W/"1"'})
    assert resp.status == 304


async def test_limit_pages_with_link_header(api):
    ids = [(await api.new_patient(name=f"P{i}"))["id"] for i in range(5)]
    seen = []
    url = "/api/patients/?limit=2"
    pages = 0
    while url:
        resp = await api.get(url)
        assert resp.status == 200 and isinstance(resp.json, list)
        assert len(resp.json) <= 2
        seen += [p["id"] for p in resp.json]
        link = resp.headers.get("Link")
        pages += 1
        if link:
            m = re.match(r'^<([^>]+)>; rel="next"$', link)
            assert m, link
            url = m.group(1).replace(api.base.rstrip("/"), "")
        else:
            url = None
    assert seen == ids and pages == 3


@pytest.mark.parametrize(
    "body, field",
    [
        ({"name": "x", "dob": "banana"}, "dob"),
        ({"name": "x", "dob": "2999-01-01"}, "dob"),
        ({"name": "x", "dob": "1990-1-1"}, "dob"),
        ({"name": "x", "dob": "2020-W01-1"}, "dob"),  # an ISO week date: not YYYY-MM-DD
        ({"name": "x", "dob": "19900101"}, "dob"),
        ({"name": "x" * 10_000}, "name"),
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": 12}, "name"),
        ({}, "name"),
        ({"name": "x", "identifiers": []}, "identifiers"),
        ({"name": "x", "identifiers": "mrn"}, "identifiers"),
        ({"name": "x", "fhir": [1]}, "fhir"),
        ({"name": "x", "nmae": "typo"}, "nmae"),
    ],
)
async def test_bad_patient_fields_are_400_naming_the_field(api, body, field):
    resp = await api.post("/api/patients/", body)
    assert resp.status == 400, resp.body
    assert field in resp.json["error"]
    assert any(d["field"] == field for d in resp.json["details"])
    assert (await api.get("/api/patients/")).json == []


async def test_bad_body_on_update_changes_nothing(api):
    p = await api.new_patient()
    url = f"/api/patients/{p['id']}/"
    assert (await api.put(url, {"name": "x", "dob": "banana"})).status == 400
    assert (await api.patch(url, {"name": None})).status == 400
    assert (await api.patch(url, {"identifiers": [1]})).status == 400
    assert (await api.patch(url, [1, 2])).status == 400
    assert (await api.get(url)).json == p


async def test_malformed_uuid_in_path_is_400(api):
    for method in ("GET", "PUT", "PATCH", "DELETE"):
        resp = await api.request(method, "/api/patients/not-a-uuid/", SEED_BODY if method in ("PUT", "PATCH") else None)
        assert resp.status == 400, (method, resp.body)
        assert resp.json["details"][0]["field"] == "id"


async def test_unknown_patient_is_404(api):
    missing = str(uuid.uuid4())
    for method in ("GET", "PUT", "PATCH", "DELETE"):
        resp = await api.request(method, f"/api/patients/{missing}/", SEED_BODY if method in ("PUT", "PATCH") else None)
        assert resp.status == 404, method
        assert missing in resp.json["error"]


async def test_bad_query_arguments(api):
    for query, field in [("limit=0", "limit"), ("limit=abc", "limit"), ("limit=99999999", "limit"),
                         ("include_deleted=maybe", "include_deleted"), ("after=-1", "after")]:
        resp = await api.get(f"/api/patients/?{query}")
        assert resp.status == 400, query
        assert resp.json["details"][0]["field"] == field


async def test_the_api_runs_on_the_backend_asked_for(api, backend):
    health = (await api.get("/api/health")).json
    assert health["database"]["backend"] == backend
