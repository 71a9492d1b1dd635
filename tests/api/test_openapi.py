"""``/api/schema/`` (OpenAPI 3.1) and ``/api/docs/``: complete, valid, true to real responses.

The fuzz run (``tests/security/test_fuzz.py``) throws generated requests at
every operation; these tests pin the document down deterministically: every
route is documented and every documented operation exists, every schema is a
valid JSON Schema, and the answers of a real session (creates, an upload
with a conflict, downloads, batches, errors) match what the document says.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import jsonschema_rs
import pytest

from healthsync.openapi import build_schema

pytestmark = pytest.mark.both_backends

METHODS = ("get", "post", "put", "patch", "delete")
UNDOCUMENTED = {"/api/sync/ws", "/api/docs", "/metrics"}  # a websocket, an HTML page, Prometheus text


async def served(api) -> dict[str, Any]:
    resp = await api.get("/api/schema/")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("application/json")
    return resp.json


def check(document: dict[str, Any], method: str, template: str, resp: Any) -> None:
    """Assert ``resp`` is a documented answer of ``method template`` and matches its schema."""
    op = document["paths"][template][method.lower()]
    assert str(resp.status) in op["responses"], (method, template, resp.status, resp.body)
    documented = op["responses"][str(resp.status)]
    if "content" not in documented:
        assert not resp.body, (method, template, resp.status)
        return
    assert resp.headers["Content-Type"].startswith("application/json")
    schema = {**documented["content"]["application/json"]["schema"], "components": document["components"]}
    errors = [str(e) for e in jsonschema_rs.Draft202012Validator(schema).iter_errors(resp.json)]
    assert not errors, (method, template, resp.status, errors, resp.json)


async def test_document_is_openapi_31_with_valid_schemas(api):
    document = await served(api)
    assert document["openapi"] == "3.1.0" and document["info"]["title"] == "HealthSync API"
    assert document == build_schema(page_limit_max=10000, max_batch_changes=10000)
    for name, schema in document["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name
    ids = [op["operationId"] for item in document["paths"].values() for m, op in item.items() if m in METHODS]
    assert len(ids) == len(set(ids))


async def test_document_shows_the_configured_limits(api, app):
    doc = await served(api)
    limit = next(p for p in doc["paths"]["/api/patients/"]["get"]["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maximum"] == app.ctx.settings.page_limit_max
    assert str(app.ctx.settings.max_batch_changes) in doc["paths"]["/api/sync/upload/"]["post"]["description"]


def _routes(app) -> list[tuple[re.Pattern[str], type]]:
    return [(rule.matcher.regex, rule.target) for rule in app.wildcard_router.rules
            if hasattr(rule.matcher, "regex") and rule.matcher.regex.pattern.startswith("/api/")]


def _example_path(template: str) -> str:
    return re.sub(r"\{[^}]+\}", str(uuid.UUID(int=7)), template)


def test_every_route_documented_and_every_operation_served(app):
    document = build_schema(page_limit_max=app.ctx.settings.page_limit_max,
                            max_batch_changes=app.ctx.settings.max_batch_changes)
    routes = _routes(app)
    for template, item in document["paths"].items():
        matches = [handler for regex, handler in routes if regex.fullmatch(_example_path(template))]
        assert matches, f"{template} is documented but not served"
        handler = matches[0]
        for method in (m for m in item if m in METHODS):
            assert method in vars(handler) or any(method in vars(base) for base in handler.__mro__[:-3]), (
                f"{method.upper()} {template} is documented but {handler.__name__} does not implement it")
    for regex, handler in routes:
        served = regex.pattern.rstrip("$").removesuffix("/?").replace("([^/]+)", "{id}")
        if served in UNDOCUMENTED:
            continue
        assert any(regex.fullmatch(_example_path(t)) for t in document["paths"]), (
            f"{handler.__name__} at {regex.pattern} is served but not documented")


async def test_real_answers_match_the_document(api):
    document = await served(api)
    post = await api.post("/api/patients/", {"name": "Ana Silva", "dob": "1985-04-02", "identifiers": {"mrn": "1"}})
    check(document, "POST", "/api/patients/", post)
    pid = post.json["id"]
    check(document, "GET", "/api/patients/", await api.get("/api/patients/?limit=1"))
    check(document, "GET", "/api/patients/{id}/", await api.get(f"/api/patients/{pid}/"))
    check(document, "PATCH", "/api/patients/{id}/", await api.patch(f"/api/patients/{pid}/", {"dob": None}))
    check(document, "PUT", "/api/patients/{id}/", await api.put(f"/api/patients/{pid}/", {"name": "Ana S."}))
    rec = await api.post("/api/records/", {"patient": pid, "resource_type": "Observation", "data": {"v": 1}})
    check(document, "POST", "/api/records/", rec)
    check(document, "GET", "/api/records/", await api.get(f"/api/records/?patient={pid}"))
    check(document, "GET", "/api/records/{id}/", await api.get(f"/api/records/{rec.json['id']}/"))
    check(document, "PATCH", "/api/records/{id}/", await api.patch(f"/api/records/{rec.json['id']}/",
                                                                  {"data": {"v": 2}}))

    upload = await api.post("/api/sync/upload/", {"device_id": "tab-1", "changes": [
        {"operation": "create", "resource_type": "Patient", "client_temp_id": "p1", "payload": {"name": "Bo"}},
        {"operation": "create", "resource_type": "Observation", "client_temp_id": "o1",
         "payload": {"patient_temp_id": "p1", "value": 3}},
        {"operation": "update", "resource_type": "Patient", "server_id": pid, "base_version": 1,
         "payload": {"name": "Stale"}},
        {"operation": "update", "resource_type": "Patient", "server_id": str(uuid.UUID(int=9)), "payload": {}},
        {"operation": "create", "resource_type": "Patient", "client_temp_id": "bad", "payload": {"dob": "banana"}},
        {"operation": "delete", "resource_type": "Observation", "server_id": rec.json["id"]},
    ]})
    check(document, "POST", "/api/sync/upload/", upload)
    assert [r["status"] for r in upload.json["results"]] == [
        "created", "created", "conflict", "not_found", "rejected", "deleted"]
    queued = await api.post("/api/sync/upload/", {"device_id": "tab-1", "async": True, "changes": []})
    check(document, "POST", "/api/sync/upload/", queued)
    check(document, "GET", "/api/sync/download/", await api.get("/api/sync/download/?cursor=0&limit=3"))
    check(document, "GET", "/api/sync/download/", await api.get("/api/sync/download/?since=2020-01-01T00:00:00Z"))
    check(document, "GET", "/api/sync/batches/", await api.get("/api/sync/batches/?device_id=tab-1"))
    for bid in (upload.json["batch_id"], queued.json["batch_id"]):
        check(document, "GET", "/api/sync/batches/{batch_id}/", await api.get(f"/api/sync/batches/{bid}/"))
    check(document, "POST", "/api/sync/trigger/{batch_id}/",
          await api.post(f"/api/sync/trigger/{upload.json['batch_id']}/"))  # already done: 409
    conflicts = await api.get("/api/conflicts/")
    check(document, "GET", "/api/conflicts/", conflicts)
    cid = conflicts.json[0]["id"]
    check(document, "GET", "/api/conflicts/{id}/", await api.get(f"/api/conflicts/{cid}/"))
    check(document, "PATCH", "/api/conflicts/{id}/", await api.patch(f"/api/conflicts/{cid}/", {"resolved": True}))
    check(document, "GET", "/api/devices/", await api.get("/api/devices/"))
    check(document, "GET", "/api/audit/", await api.get("/api/audit/?limit=5"))
    check(document, "GET", "/api/health", await api.get("/api/health"))
    check(document, "DELETE", "/api/patients/{id}/", await api.delete(f"/api/patients/{pid}/"))

    # Errors: each documented, each the one error shape.
    check(document, "GET", "/api/patients/{id}/", await api.get(f"/api/patients/{pid}/"))  # deleted: 404
    check(document, "GET", "/api/records/{id}/", await api.get("/api/records/not-a-uuid/"))
    check(document, "POST", "/api/patients/", await api.post("/api/patients/", {"name": "x" * 10_000}))
    check(document, "POST", "/api/patients/", await api.post("/api/patients/", raw=b"a,b",
                                                             headers={"Content-Type": "text/csv"}))
    check(document, "PUT", "/api/patients/{id}/", await api.put(f"/api/patients/{pid}/", {"name": "X"},
                                                                headers={"If-Match": 'W/"1"'}))
    check(document, "GET", "/api/sync/download/", await api.get("/api/sync/download/"))
    check(document, "POST", "/api/sync/upload/", await api.post("/api/sync/upload/", {"device_id": "d",
                                                                                      "changes": "nope"}))


# What the document declares, pinned down (issue: the description says exactly what the server does) -------

SCHEMAS = build_schema()["components"]["schemas"]


def _walk(node: Any, path: str = "") -> Any:
    """Every (path, schema) of a document: its schemas and parameters' schemas, nested ones included."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}/{i}")


def _branch(prop: dict[str, Any]) -> dict[str, Any]:
    """The non-null branch of a nullable property (the property itself otherwise)."""
    return next((b for b in prop.get("anyOf", []) if b.get("type") != "null"), prop)


def test_enforced_rules_are_declared():
    patient, record = SCHEMAS["PatientIn"]["properties"], SCHEMAS["RecordIn"]["properties"]
    assert _branch(patient["dob"]) == {"type": "string", "format": "date"}
    assert record["patient"]["format"] == "uuid"
    assert record["resource_type"]["$ref"].endswith("/RecordResourceType")
    change = SCHEMAS["Change"]["properties"]
    assert change["resource_type"]["$ref"].endswith("/ResourceType")
    assert _branch(change["server_id"])["format"] == "uuid"
    assert _branch(change["client_updated_at"])["format"] == "date-time"
    assert _branch(SCHEMAS["UploadRequest"]["properties"]["batch_id"])["format"] == "uuid"
    assert {r["$ref"].rsplit("/", 1)[1] for r in change["payload"]["anyOf"]} == {"PatientPayload", "RecordPayload"}
    assert {"patient_id", "patient_temp_id"} <= set(SCHEMAS["RecordPayload"]["properties"])
    download = build_schema()["paths"]["/api/sync/download/"]["get"]
    assert "`since` or `cursor` is required" in download["description"] and "400" in download["responses"]


def test_required_keys_may_not_be_null_in_a_merge_patch():
    for name, required in (("PatientPatch", ["name"]), ("RecordPatch", ["patient", "resource_type"])):
        props = SCHEMAS[name]["properties"]
        for key in required:
            assert "anyOf" not in props[key], (name, key)
            assert not jsonschema_rs.is_valid({**SCHEMAS[name], "components": {"schemas": SCHEMAS}}, {key: None})
    assert jsonschema_rs.is_valid({**SCHEMAS["PatientPatch"]}, {"dob": None, "fhir": None, "identifiers": None})


async def test_null_for_a_required_key_is_refused_as_the_document_says(api):
    pid = (await api.post("/api/patients/", {"name": "Ana"})).json["id"]
    rid = (await api.post("/api/records/", {"patient": pid, "resource_type": "Observation"})).json["id"]
    for path, key in ((f"/api/patients/{pid}/", "name"), (f"/api/records/{rid}/", "patient"),
                      (f"/api/records/{rid}/", "resource_type")):
        resp = await api.patch(path, {key: None})
        assert resp.status == 400 and resp.json["details"][0]["field"] == key, resp.json
    assert (await api.patch(f"/api/patients/{pid}/", {"dob": None, "fhir": None, "identifiers": None})).status == 200
    assert (await api.patch(f"/api/records/{rid}/", {"data": None})).status == 200


def test_timestamps_and_ids_have_their_formats():
    for name in ("Patient", "HealthRecord", "PatientEntry", "RecordEntry", "DownloadPage", "UploadResponse",
                 "Conflict", "Batch", "Device", "AuditEntry"):
        for key, prop in SCHEMAS[name]["properties"].items():
            if key.endswith("_at") or key in ("server_time", "first_seen", "last_seen", "at"):
                assert _branch(prop).get("format") == "date-time", (name, key)
            if key in ("id", "server_id", "batch_id", "patient", "conflict_id") and name not in ("AuditEntry",):
                assert _branch(prop).get("format") == "uuid", (name, key)
    assert SCHEMAS["Patient"]["properties"]["id"]["type"] == SCHEMAS["UploadResult"]["properties"]["server_id"]["type"]
    assert SCHEMAS["Patient"]["properties"]["id"]["format"] == SCHEMAS["UploadResult"]["properties"]["server_id"][
        "format"] == "uuid"
    assert _branch(SCHEMAS["Patient"]["properties"]["dob"])["format"] == "date"


def test_each_enum_is_one_named_schema_referenced_everywhere():
    document = build_schema()
    named = {name for name, s in SCHEMAS.items() if "enum" in s}
    assert {"ResourceType", "RecordResourceType", "ConflictReason", "BatchStatus", "UploadStatus"} <= named
    inline = [(path, len(s["enum"])) for path, s in _walk(document)
              if "enum" in s and not path.startswith(tuple(f"/components/schemas/{n}" for n in named))]
    # only small, single-use enums stay inline (a change's operation, the health document's words)
    assert all(size <= 3 for _, size in inline), inline
    refs = {s["$ref"].rsplit("/", 1)[1] for _, s in _walk(document) if "$ref" in s}
    assert {"ConflictReason", "BatchStatus", "ResourceType", "RecordResourceType"} <= refs
    for path, s in _walk(document):
        if "reason" in s.get("properties", {}) and "Conflict" in path:
            assert s["properties"]["reason"]["$ref"].endswith("/ConflictReason"), path


def test_boolean_parameters_are_booleans():
    for _, op in ((p, o) for item in build_schema()["paths"].values() for p, o in item.items() if p in METHODS):
        for param in op.get("parameters", []):
            if param["name"] in ("include_deleted", "resolved"):
                assert param["schema"] == {"type": "boolean"} and "`true` or `false` only" in param["description"]


@pytest.mark.parametrize("query", ["include_deleted=", "include_deleted=1", "include_deleted=yes",
                                   "include_deleted=TRUE", "include_deleted=0", "limit=", "after="])
async def test_loose_query_values_are_400_naming_the_parameter(api, query):
    for path in ("/api/patients/", "/api/records/"):
        resp = await api.get(f"{path}?{query}")
        assert resp.status == 400 and resp.json["details"][0]["field"] == query.split("=")[0], (path, resp.json)
    resp = await api.get(f"/api/conflicts/?{query.replace('include_deleted', 'resolved')}")
    assert resp.status == 400


async def test_strict_booleans_still_work(api):
    pid = (await api.post("/api/patients/", {"name": "Ana"})).json["id"]
    await api.delete(f"/api/patients/{pid}/")
    assert (await api.get(f"/api/patients/{pid}/?include_deleted=true")).status == 200
    assert (await api.get(f"/api/patients/{pid}/?include_deleted=false")).status == 404
    assert [p["id"] for p in (await api.get("/api/patients/?include_deleted=true")).json] == [pid]
    assert (await api.get("/api/conflicts/?resolved=false")).status == 200


@pytest.mark.parametrize("method, suffix, allow", [
    ("POST", "", "GET, PATCH, OPTIONS"),
    ("PUT", "", "GET, PATCH, OPTIONS"),
    ("DELETE", "", "GET, PATCH, OPTIONS"),
    ("GET", "resolve/", "POST, OPTIONS"),
    ("PATCH", "resolve/", "POST, OPTIONS"),
])
async def test_undocumented_conflict_methods_are_405(api, method, suffix, allow):
    document = build_schema()
    template = "/api/conflicts/{id}/" + suffix
    assert method.lower() not in document["paths"][template]
    resp = await api.request(method, f"/api/conflicts/{uuid.UUID(int=7)}/{suffix}", {"resolved": True})
    assert resp.status == 405, resp.body
    assert resp.headers["Allow"] == allow and resp.json["error"].startswith(f"method {method}")
    documented = {m.upper() for m in document["paths"][template] if m in METHODS}
    assert set(allow.split(", ")) - {"OPTIONS"} == documented


async def test_upload_server_id_must_be_a_uuid(api):
    resp = await api.post("/api/sync/upload/", {"device_id": "d", "changes": [
        {"operation": "update", "resource_type": "Patient", "server_id": "not-a-uuid", "payload": {}}]})
    assert resp.status == 400 and resp.json["details"] == [
        {"index": 0, "field": "server_id", "message": "'not-a-uuid' is not a server id (a UUID)"}]
    pid = (await api.post("/api/patients/", {"name": "Ana"})).json["id"]
    resp = await api.post("/api/sync/upload/", {"device_id": "d", "changes": [
        {"operation": "update", "resource_type": "Patient", "server_id": pid.upper(), "payload": {"name": "B"},
         "base_version": 1.0}]})
    assert resp.status == 200 and resp.json["results"][0] == {"server_id": pid, "status": "updated",
                                                              "server_version": 2}


async def test_download_checks_since_even_with_a_cursor(api):
    for query, field in (("cursor=0&since=yesterday", "since"), ("cursor=", "cursor"), ("since=", "since")):
        resp = await api.get(f"/api/sync/download/?{query}")
        assert resp.status == 400 and resp.json["details"][0]["field"] == field, (query, resp.json)
    assert (await api.get("/api/sync/download/?cursor=0&since=2020-01-01T00:00:00Z")).status == 200


async def test_blank_names_are_refused_as_the_pattern_says(api):
    from healthsync.openapi.document import NOT_BLANK

    assert NOT_BLANK == "[^" + "".join(c for c in map(chr, range(0x110000)) if c.isspace()) + "]"
    for name in ("\u001d", " \u3000\t", "\u0085"):
        assert not re.search(NOT_BLANK, name)
        assert (await api.post("/api/patients/", {"name": name})).status == 400
    assert (await api.post("/api/patients/", {"name": "\ufeffA"})).status == 201


def test_links_walk_from_creates_uploads_and_conflicts():
    paths = build_schema()["paths"]
    ops = {op["operationId"]: op for item in paths.values() for m, op in item.items() if m in METHODS}
    created = paths["/api/patients/"]["post"]["responses"]["201"]["links"]
    assert {link["operationId"] for link in created.values()} == {
        "get_patient", "replace_patient", "patch_patient", "delete_patient"}
    assert all(link["parameters"] == {"id": "$response.body#/id"} for link in created.values())
    rec = paths["/api/records/"]["post"]["responses"]["201"]["links"]
    assert {link["operationId"] for link in rec.values()} >= {"get_record", "patch_record", "delete_record"}
    upload = paths["/api/sync/upload/"]["post"]["responses"]
    assert upload["200"]["links"]["GetBatch"]["operationId"] == "get_batch"
    assert upload["202"]["links"]["TriggerBatch"]["operationId"] == "trigger_batch"
    listed = paths["/api/conflicts/"]["get"]["responses"]["200"]["links"]
    assert listed["ResolveConflict"]["operationId"] == "resolve_conflict"
    assert listed["ResolveConflict"]["parameters"] == {"id": "$response.body#/0/id"}
    for item in paths.values():  # every link names an operation that exists, with its parameters
        for op in (o for m, o in item.items() if m in METHODS):
            for response in op["responses"].values():
                for link in response.get("links", {}).values():
                    target = ops[link["operationId"]]
                    names = {p["name"] for p in target.get("parameters", []) if p["in"] == "path"}
                    assert set(link["parameters"]) == names, link
