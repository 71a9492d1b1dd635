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
