"""The OpenAPI 3.1 document of the whole HTTP API, built from pydantic models.

Request bodies come from the models the handlers validate with
(``PatientIn``, ``RecordIn``, ``UploadRequest`` and its ``Change``), so the
document cannot drift from what the server accepts.  Response bodies are
described by the models of ``responses.py``.

``build_schema(...)`` returns a fresh dict; ``schema_for(settings)``
caches it per limit values (the document shows the configured limits).
Pure: no I/O, safe from any thread.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Literal

from pydantic import BaseModel

from .. import __version__ as _version
from .responses import REQUEST_MODELS, RESPONSE_MODELS, UUID_EXAMPLE

REF = "#/components/schemas/{model}"


# Schema assembly ---------------------------------------------------------------------


def _strip_defaults(node: Any) -> None:
    """Drop ``default`` from response schemas (meaningless there, and ``null``
    defaults on non-nullable optional keys would read as if null were sent)."""
    if isinstance(node, dict):
        node.pop("default", None)
        for key, value in node.items():
            if key in ("properties", "$defs"):
                for sub in value.values():
                    _strip_defaults(sub)
            elif key not in ("examples", "example", "enum", "const", "required"):
                _strip_defaults(value)
    elif isinstance(node, list):
        for item in node:
            _strip_defaults(item)


def _add(components: dict[str, Any], model: type[BaseModel], mode: Literal["validation", "serialization"]) -> None:
    schema = model.model_json_schema(ref_template=REF, mode=mode)
    defs = schema.pop("$defs", {})
    if mode == "serialization":
        _strip_defaults(schema)
        for sub in defs.values():
            _strip_defaults(sub)
    for name, sub in defs.items():
        components.setdefault(name, sub)
    components[model.__name__] = schema


def _patch_schema(source: dict[str, Any], title: str) -> dict[str, Any]:
    """A JSON Merge Patch body for ``source``: every key optional; null removes a key
    that may be absent (a required one, such as a patient's ``name``, may not be null)."""
    required = set(source.get("required", ()))
    props = {}
    for name, sub in source["properties"].items():
        sub = {k: v for k, v in sub.items() if k != "default"}
        nullable = name not in required and "type" in sub  # (read-only keys: any value, ignored)
        props[name] = {"anyOf": [sub, {"type": "null"}]} if nullable else sub
    return {
        "title": title,
        "description": "JSON Merge Patch (RFC 7396): keys given replace, null removes, absent keys stay; "
        "object fields merge key by key. A key the item must have (" + ", ".join(f"`{k}`" for k in sorted(required))
        + ") may be left out but not null. Read-only keys are ignored; unknown keys are refused.",
        "type": "object",
        "properties": props,
        "additionalProperties": False,
    }


def _nullable(schema: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"anyOf": [schema, {"type": "null"}]}
    if description:
        out["description"] = description
    return out


UUID_S = {"type": "string", "format": "uuid"}
#: Holds a character that is not white space (Python's ``str.isspace``, which the server's check uses).
NOT_BLANK = ("[^\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
             "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000]")
DATE_TIME_S = {"type": "string", "format": "date-time"}


def _components() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in REQUEST_MODELS:
        _add(schemas, model, "validation")
    for model in RESPONSE_MODELS:
        _add(schemas, model, "serialization")
    read_only = "Read-only: accepted when a client sends its copy back, and ignored."
    for name in ("PatientIn", "RecordIn"):
        for key in ("id", "owner", "server_version", "updated_at", "deleted"):
            schemas[name]["properties"][key] = {"description": read_only}
    patient, record = schemas["PatientIn"]["properties"], schemas["RecordIn"]["properties"]
    patient["name"] = {**patient["name"], "pattern": NOT_BLANK,
                       "description": "1 to 256 characters, not all white space."}
    patient["dob"] = _nullable({"type": "string", "format": "date"},
                               "YYYY-MM-DD (a calendar date, `format: date`), not in the future; or null.")
    record["patient"] = {**UUID_S, "description": "An existing, not deleted patient's id."}
    record["resource_type"] = {**_ref("RecordResourceType"), "description": "A FHIR R4 resource type other than "
                               "Patient (400 naming `resource_type` otherwise)."}
    schemas["PatientPatch"] = _patch_schema(schemas["PatientIn"], "PatientPatch")
    schemas["RecordPatch"] = _patch_schema(schemas["RecordIn"], "RecordPatch")

    # The sync upload: what its envelope refuses whole (400) is declared, and each
    # payload's shape, which is judged per change (a `rejected` result, not a 400).
    change = schemas["Change"]["properties"]
    change["resource_type"] = {**_ref("ResourceType"), "description": "A FHIR R4 resource type. Another type "
                               "gets this change `rejected` (the rest of the batch still applies)."}
    change["server_id"] = _nullable({**UUID_S}, "The item's server id: required for update and delete; on a "
                                    "create, optional: the id the device made for the new item (a batch with one "
                                    "that is not a UUID is refused whole, 400).")
    change["client_updated_at"] = _nullable(
        {**DATE_TIME_S, "maxLength": 64},
        "When the device last changed the item (`server_newer` conflict if the server's copy is newer). "
        "One that is not a time gets this change `rejected`.")
    # Routing: a create names its client_temp_id, an update or delete its server_id (400 otherwise).
    schemas["Change"]["allOf"] = [{
        "if": {"properties": {"operation": {"const": "create"}}, "required": ["operation"]},
        "then": {"required": ["client_temp_id"], "properties": {
            "client_temp_id": {"type": "string"},
            # a create's own id is taken as it is: canonical (lower-case) only
            "server_id": {"anyOf": [{"type": "string", "pattern": CANONICAL_UUID}, {"type": "null"}]}}},
        "else": {"required": ["server_id"], "properties": {"server_id": {"type": "string"}}},
    }]
    schemas["Change"]["description"] = ("One change of an upload. A `create` needs `client_temp_id`, an `update` "
                                        "or `delete` needs `server_id` (the batch is refused whole, 400, "
                                        "otherwise). What the payload says is judged per change when the batch "
                                        "is applied.")
    change["payload"] = {
        "anyOf": [_ref("PatientPayload"), _ref("RecordPayload")],
        "description": "The item's fields: a `PatientPayload` for `Patient`, a `RecordPayload` for any other "
        "type. On update a merge patch (null removes a key). Judged per change: a payload that does not fit "
        "gets this change `rejected`; a delete's payload is not read.",
    }
    schemas["UploadRequest"]["properties"]["batch_id"] = _nullable(
        {**UUID_S}, "A UUID the device makes for this batch, so that a retry after a lost answer applies "
        "nothing twice (it gets the stored answer).")
    schemas["PatientPayload"] = {
        **_patch_schema(schemas["PatientIn"], "PatientPayload"),
        "description": "A patient change's payload: a create needs `name` (and may give `dob`, `identifiers`, "
        "`fhir`); an update is a JSON Merge Patch of those fields (`name` may not be null). Read-only keys "
        "are ignored; any other key gets the change `rejected`. On create, `id` is the same as the change's "
        "`server_id` (the id the device made).",
    }
    schemas["PatientPayload"].setdefault("properties", {})["id"] = {
        **UUID_S, "description": "On create: the id the device made for the patient (as `server_id`)."}
    schemas["RecordPayload"] = {
        "title": "RecordPayload",
        "description": "A health record change's payload: the record's `data` (any keys but these two), and on "
        "create its patient, named by `patient_id` (a server id) or `patient_temp_id` (the `client_temp_id` "
        "of a patient created by this device, in this batch or before). An update is a JSON Merge Patch of "
        "`data`.",
        "type": "object",
        "properties": {
            "patient_id": {**UUID_S, "description": "An existing, not deleted patient's server id."},
            "patient_temp_id": {"type": "string", "minLength": 1, "maxLength": 256,
                                "description": "The `client_temp_id` this device created the patient with."},
        },
        "additionalProperties": True,
    }
    # A create's body is the same but for ``id``: the new item's id, made by the client.
    for name, create in (("PatientIn", "PatientCreate"), ("RecordIn", "RecordCreate")):
        body = copy.deepcopy(schemas[name])
        body["title"] = create
        body["properties"]["id"] = {
            "anyOf": [{"type": "string", "format": "uuid", "pattern": CANONICAL_UUID}, {"type": "null"}],
            "description": "The new item's id, made by the client: a UUID in canonical lower-case form. Omitted "
            "or null: the server makes one. Already used by another item: 409, unless this very body created it "
            "(a retry: 200).",
        }
        schemas[create] = body
    return schemas


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json(name: str | None = None, schema: dict[str, Any] | None = None, example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema if schema is not None else _ref(name or "")}
    if example is not None:
        media["example"] = example
    return {"application/json": media}


ERROR_TEXT = {
    400: "Invalid input: the field or parameter is named in `details`.",
    401: "Token mode: missing or unknown bearer token (`WWW-Authenticate: Bearer`).",
    403: "Token mode: this token's role may not do this (or a device token acting for another device).",
    404: "Unknown id.",
    409: "The batch is in a state that forbids this.",
    410: "The cursor or `since` can no longer be answered in full: `resync` is true; start over.",
    412: "`If-Match` no longer matches the current version; nothing changed.",
    413: "Request body over `max_body_bytes` (or too many changes).",
    415: "The body is not `application/json`.",
    429: "Write rate limit (`write_rate_limit`) reached; see `Retry-After`.",
    503: "The database is busy (another process held its lock past `busy_timeout_ms`), or the server is "
    "shutting down; nothing changed: send it again after `Retry-After`.",
    507: "The disk holding the data is full; nothing was written: send it again once space is freed "
    "(`Retry-After`).",
}


CANONICAL_UUID = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
REPEATED_CREATE = ("A retry: the body names an `id` whose item this very body already created (and is unchanged "
                   "since); nothing was written, the item is returned as it is.")
USED_ID = "The body's `id` is already used by another item (a patient or record, deleted or not), named in the error."


def _error(status: int, text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": text or ERROR_TEXT[status], "content": _json("Error")}
    if status in (429, 503, 507):
        out["headers"] = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}}
    if status == 401:
        out["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return out


ETAG = {"ETag": {"description": 'The weak version tag, `W/"<server_version>"`.', "schema": {"type": "string"}}}
LINK = {"Link": {"description": 'RFC 8288 `<…>; rel="next"` while more remain (with `limit`).',
                 "schema": {"type": "string"}}}


def _ok(description: str, content: dict[str, Any] | None, headers: dict[str, Any] | None = None,
        links: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if content is not None:
        out["content"] = content
    if headers:
        out["headers"] = headers
    if links:
        out["links"] = links
    return out


def _list_of(name: str) -> dict[str, Any]:
    return _json(schema={"type": "array", "items": _ref(name)})


def _param(name: str, where: str, schema: dict[str, Any], description: str, required: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "in": where, "description": description, "schema": schema}
    if required or where == "path":
        out["required"] = True
    return out


def _id_param(name: str, what: str) -> dict[str, Any]:
    return _param(name, "path", {"type": "string", "format": "uuid"}, f"The {what}'s id (a UUID).")


def build_schema(*, page_limit_max: int = 10000, max_batch_changes: int = 10000) -> dict[str, Any]:
    """The OpenAPI 3.1 document (a new dict each call)."""
    uuid_s = {"type": "string", "format": "uuid"}
    limit = _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": page_limit_max},
                   "Page size; a `Link: rel=\"next\"` header follows while more remain.")
    after = _param("after", "query", {"type": "integer", "minimum": 0, "maximum": 2**62},
                   "Page key from a previous page's `Link` header.")
    include_deleted = _param("include_deleted", "query", {"type": "boolean"},
                             "`true` also shows tombstones (deleted items); `true` or `false` only "
                             "(anything else, empty included, is a 400 naming it).")
    if_match = _param("If-Match", "header", {"type": "string"},
                      'Only if the current version matches (`W/"<server_version>"`, or `*`): else 412.')
    if_none_match = _param("If-None-Match", "header", {"type": "string"},
                           "304 (no body) when it matches the current ETag.")

    common_errors = {400: _error(400), 401: _error(401), 403: _error(403), 503: _error(503)}
    write_errors = {**common_errors, 413: _error(413), 415: _error(415), 429: _error(429), 507: _error(507)}

    def op(tag: str, summary: str, responses: dict[Any, Any], *, op_id: str, description: str = "",
           parameters: list[dict[str, Any]] | None = None, body: dict[str, Any] | None = None,
           public: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"tags": [tag], "summary": summary, "operationId": op_id}
        if description:
            out["description"] = description
        if parameters:
            out["parameters"] = parameters
        if body is not None:
            out["requestBody"] = {"required": True, "content": body}
        out["responses"] = {str(k): v for k, v in sorted(responses.items())}
        if public:
            out["security"] = []
        return out

    def item_links(kind: str, source: str) -> dict[str, Any]:
        """OpenAPI links from an answer naming an item (``source``, a runtime expression) to its operations."""
        return {f"{verb.capitalize()}{kind.capitalize()}": {
            "operationId": f"{verb}_{kind}", "parameters": {"id": source},
            "description": f"{verb.capitalize()} this {kind}."} for verb in ("get", "replace", "patch", "delete")}

    def item_ops(kind: str, tag: str, in_name: str, patch_name: str, out_name: str, example: Any) -> dict[str, Any]:
        pid = _id_param("id", kind)
        item = _ok(f"The {kind}.", _json(out_name), ETAG)
        return {
            "get": op(tag, f"Retrieve a {kind}", {200: item, 304: {"description": "Not modified."},
                                                     **common_errors, 404: _error(404)},
                      op_id=f"get_{kind}", parameters=[pid, include_deleted, if_none_match],
                      description="Deleted items are 404 unless `include_deleted=true`."),
            "put": op(tag, f"Replace a {kind}'s writable fields",
                      {200: item, **write_errors, 404: _error(404), 412: _error(412)},
                      op_id=f"replace_{kind}", parameters=[pid, if_match], body=_json(in_name, example=example)),
            "patch": op(tag, f"Merge-patch a {kind}",
                        {200: item, **write_errors, 404: _error(404), 412: _error(412)},
                        op_id=f"patch_{kind}", parameters=[pid, if_match], body=_json(patch_name),
                        description="JSON Merge Patch (RFC 7396); `application/merge-patch+json` is accepted too."),
            "delete": op(tag, f"Delete a {kind} (soft: keeps a tombstone)",
                         {204: {"description": "Deleted."}, **common_errors, 404: _error(404), 412: _error(412),
                          413: _error(413), 429: _error(429), 507: _error(507)},
                         op_id=f"delete_{kind}", parameters=[pid, if_match],
                         description="Devices learn of it on their next sync"
                         + ("; deleting a patient tombstones its records too." if kind == "patient" else ".")),
        }

    patient_example = {"name": "John Doe", "dob": "1990-01-01", "identifiers": {"mrn": "12345"}, "fhir": {}}
    record_example = {"patient": UUID_EXAMPLE, "resource_type": "Observation",
                      "data": {"code": {"text": "Body weight"}, "valueQuantity": {"value": 72.5, "unit": "kg"}}}
    upload_example = {
        "device_id": "tablet-7",
        "changes": [
            {"operation": "create", "resource_type": "Patient", "client_temp_id": "p1",
             "payload": {"name": "Ana Silva", "dob": "1985-04-02"}},
            {"operation": "create", "resource_type": "Observation", "client_temp_id": "o1",
             "payload": {"patient_temp_id": "p1", "valueQuantity": {"value": 37.2, "unit": "Cel"}}},
        ],
    }
    conflict_id = _id_param("id", "conflict")
    batch_link = {"operationId": "get_batch", "parameters": {"batch_id": "$response.body#/batch_id"},
                  "description": "This batch's status (and once done, its results)."}
    resolve = op("Conflicts", "Mark a conflict resolved",
                 {200: _ok("The conflict, resolved.", _json("Conflict")), **write_errors, 404: _error(404)},
                 op_id="resolve_conflict", parameters=[conflict_id], body=_json(
                     "ConflictResolution", example={"resolved": True, "resolution": "kept the server copy"}),
                 description="Idempotent: resolving twice keeps the first resolution.")

    paths: dict[str, Any] = {
        "/api/patients/": {
            "get": op("Patients", "List patients",
                      {200: _ok("Patients in creation order.", _list_of("Patient"), LINK), **common_errors},
                      op_id="list_patients", parameters=[include_deleted, limit, after],
                      description="Everything by default (a plain JSON array); `limit` pages it."),
            "post": op("Patients", "Create a patient",
                       {201: _ok("Created.", _json("Patient"), {**ETAG, "Location": {"schema": {"type": "string"}}},
                                 links=item_links("patient", "$response.body#/id")),
                        200: _ok(REPEATED_CREATE, _json("Patient"),
                                 {**ETAG, "Location": {"schema": {"type": "string"}}},
                                 links=item_links("patient", "$response.body#/id")),
                        **write_errors, 409: _error(409, USED_ID)},
                       op_id="create_patient", body=_json("PatientCreate", example=patient_example)),
        },
        "/api/patients/{id}/": item_ops("patient", "Patients", "PatientIn", "PatientPatch", "Patient",
                                        patient_example),
        "/api/records/": {
            "get": op("Records", "List health records",
                      {200: _ok("Records in creation order.", _list_of("HealthRecord"), LINK), **common_errors},
                      op_id="list_records",
                      parameters=[include_deleted, limit, after,
                                  _param("patient", "query", uuid_s, "Only this patient's records."),
                                  _param("resource_type", "query", _ref("RecordResourceType"),
                                         "Only this FHIR R4 type.")]),
            "post": op("Records", "Create a health record",
                       {201: _ok("Created.", _json("HealthRecord"),
                                 {**ETAG, "Location": {"schema": {"type": "string"}}},
                                 links=item_links("record", "$response.body#/id")),
                        200: _ok(REPEATED_CREATE, _json("HealthRecord"),
                                 {**ETAG, "Location": {"schema": {"type": "string"}}},
                                 links=item_links("record", "$response.body#/id")),
                        **write_errors, 409: _error(409, USED_ID)},
                       op_id="create_record", body=_json("RecordCreate", example=record_example),
                       description="The patient must exist and not be deleted (else 400 naming `patient`)."),
        },
        "/api/records/{id}/": item_ops("record", "Records", "RecordIn", "RecordPatch", "HealthRecord",
                                       record_example),
        "/api/sync/upload/": {
            "post": op("Sync", "Upload a device's batch of changes",
                       {200: _ok("Applied in one transaction; one result per change, in order.",
                                 _json("UploadResponse"), links={"GetBatch": batch_link}),
                        202: _ok("`async: true`: stored as pending; apply it with the trigger endpoint. "
                                 "Also a retried `batch_id` not done yet, with its current `status`.",
                                 _json("AsyncUploadAccepted"), links={"GetBatch": batch_link, "TriggerBatch": {
                                     "operationId": "trigger_batch",
                                     "parameters": {"batch_id": "$response.body#/batch_id"},
                                     "description": "Apply this stored batch."}}),
                        **write_errors, 409: _error(409, "The `batch_id` belongs to another device.")},
                       op_id="upload", body=_json("UploadRequest", example=upload_example),
                       description=f"At most {max_batch_changes} changes (else 413). A malformed batch is refused "
                       "whole with 400 naming the change `index` and `field`; nothing is applied. A retried "
                       "`batch_id` returns its stored response and applies nothing again. In token mode a "
                       "device token may only upload as its own `device_id`."),
        },
        "/api/sync/download/": {
            "get": op("Sync", "Download changes after a time or cursor",
                      {200: _ok("A page of changes, oldest first.", _json("DownloadPage")),
                       **common_errors, 400: _error(400, "A bad parameter (named in `details`), or neither `since` "
                                                "nor `cursor` given."),
                       410: _error(410)},
                      op_id="download",
                      parameters=[
                          _param("since", "query", {"type": "string", "format": "date-time"},
                                 "ISO 8601 time (an offset, `Z`, or none for UTC). `since` or `cursor` is "
                                 "required (400 otherwise)."),
                          _param("cursor", "query", {"type": "string", "pattern": "^[0-9]{1,19}$"},
                                 "A previous page's `cursor` (wins over `since`). `0` is the start."),
                          limit,
                          _param("resource_type", "query", _ref("ResourceType"), "Only this type."),
                          _param("patient", "query", uuid_s, "A patient's own entry and its records' entries."),
                          _param("device_id", "query", {"type": "string", "minLength": 1, "maxLength": 256},
                                 "Record this device's progress (shown at /api/devices/). In token mode only "
                                 "that device's own token or an admin may name it (403 otherwise)."),
                      ],
                      description="The latest version of every patient and record changed after that point, "
                      "tombstones included. A cut page's `server_time` and `cursor` are its last entry's.\n\n"
                      "**`since` or `cursor` is required** (400 naming them otherwise; `cursor` wins when both are "
                      "given). OpenAPI cannot say that one of two parameters is required, so both are declared "
                      "optional here."),
        },
        "/api/sync/trigger/{batch_id}/": {
            "post": op("Sync", "Apply a stored (async) batch in the background",
                       {202: _ok("Claimed and queued.", _json("TriggerResponse")), **common_errors,
                        404: _error(404), 409: _error(409, "Already `processing` or `done` (`status`)."),
                        413: _error(413), 429: _error(429), 507: _error(507),
                        503: _error(503, "The database is busy, or the task queue could not take the task "
                                    "(the batch stays `pending`): retry after `Retry-After`.")},
                       op_id="trigger_batch", parameters=[_id_param("batch_id", "batch")],
                       description="A `failed` batch may be triggered again. Poll the batch until `done`."),
        },
        "/api/sync/batches/": {
            "get": op("Sync", "List batches, newest first",
                      {200: _ok("Batches (without results).", _list_of("Batch"), LINK), **common_errors},
                      op_id="list_batches",
                      parameters=[_param("device_id", "query", {"type": "string"}, "Only this device's."),
                                  _param("status", "query", _ref("BatchStatus"), "Only batches in this status."),
                                  limit, after]),
        },
        "/api/sync/batches/{batch_id}/": {
            "get": op("Sync", "A batch's status (and once done, its results)",
                      {200: _ok("The batch.", _json("Batch")), **common_errors, 404: _error(404)},
                      op_id="get_batch", parameters=[_id_param("batch_id", "batch")]),
        },
        "/api/devices/": {
            "get": op("Devices", "Devices seen, most recently seen first",
                      {200: _ok("Devices.", _list_of("Device")), **common_errors}, op_id="list_devices"),
        },
        "/api/conflicts/": {
            "get": op("Conflicts", "List recorded conflicts",
                      {200: _ok("Conflicts, oldest first.", _list_of("Conflict"), LINK, links={
                          "GetConflict": {"operationId": "get_conflict", "parameters": {"id": "$response.body#/0/id"},
                                          "description": "The first conflict listed."},
                          "ResolveConflict": {"operationId": "resolve_conflict",
                                              "parameters": {"id": "$response.body#/0/id"},
                                              "description": "Resolve the first conflict listed."}}),
                       **common_errors},
                      op_id="list_conflicts",
                      parameters=[_param("device_id", "query", {"type": "string"}, "Only this device's."),
                                  _param("resolved", "query", {"type": "boolean"},
                                         "Only resolved (`true`) or unresolved (`false`) ones; `true` or `false` "
                                         "only (anything else, empty included, is a 400 naming it)."),
                                  limit, after]),
        },
        "/api/conflicts/{id}/": {
            "get": op("Conflicts", "Retrieve a conflict",
                      {200: _ok("The conflict.", _json("Conflict")), **common_errors, 404: _error(404)},
                      op_id="get_conflict", parameters=[conflict_id]),
            "patch": resolve,
        },
        "/api/conflicts/{id}/resolve/": {"post": {**resolve, "operationId": "resolve_conflict_post",
                                                  "description": "The same as PATCH on `/api/conflicts/{id}/`. "
                                                  + resolve["description"]}},
        "/api/audit/": {
            "get": op("Audit", "The audit trail (admin)",
                      {200: _ok("Entries, oldest first.", _list_of("AuditEntry"), LINK), **common_errors},
                      op_id="list_audit",
                      parameters=[_param("who", "query", {"type": "string"}, "Only this token's requests."),
                                  _param("since", "query", {"type": "string", "format": "date-time"},
                                         "Only entries after this time."),
                                  _param("limit", "query", {"type": "integer", "minimum": 1,
                                                            "maximum": page_limit_max}, "Page size (default 1000)."),
                                  after],
                      description="Every API request (`/api/health` aside). Append-only: no other method."),
        },
        "/api/health": {
            "get": op("Health", "Is this box able to serve?",
                      {200: _ok("Up (`status` ok), or `degraded` with its `reasons` (free disk space "
                                "below `min_free_disk_bytes`): still serving.", _json("Health")), 400: _error(400),
                       503: _ok("Database unreadable or the embedded consumer died.", _json("Health"))},
                      op_id="health", public=True, description="No token needed; no patient data."),
        },
        "/api/schema/": {
            "get": op("Docs", "This OpenAPI document", {200: _ok("OpenAPI 3.1.", _json(schema={"type": "object"}))},
                      op_id="openapi_schema", public=True),
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "HealthSync API",
            "version": _version,
            "summary": "The clinic sync server: patients, FHIR health records, device sync.",
            "description": DESCRIPTION,
        },
        "servers": [{"url": "/", "description": "This server"}],
        "tags": TAGS,
        "paths": paths,
        "components": {
            "schemas": _components(),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Token mode: `Authorization: Bearer <token>` (made with "
                    "`run.py token create --role device|dashboard|admin --name N`). In open mode (the default "
                    "on a loopback address) no token is needed and any sent is ignored.",
                }
            },
        },
        # Token mode needs the bearer token; open mode needs nothing (the empty requirement).
        "security": [{"bearerAuth": []}, {}],
    }


TAGS = [
    {"name": "Patients", "description": "Patients: create, read, replace, merge-patch, soft delete."},
    {"name": "Records", "description": "Health records: FHIR R4 resources of a patient."},
    {"name": "Sync", "description": "Device sync: upload batches, download changes, background batches."},
    {"name": "Conflicts", "description": "Conflicts recorded by uploads, and resolving them."},
    {"name": "Devices", "description": "What the dashboard shows about each device."},
    {"name": "Audit", "description": "Who did what, for admins."},
    {"name": "Health", "description": "Monitoring (no token)."},
    {"name": "Docs", "description": "This document (`/api/schema/`) and its reader (`/api/docs/`)."},
]

DESCRIPTION = """\
HealthSync serves one clinic: offline tablets sync patients and FHIR R4 health records, and dashboards
watch changes arrive. Trailing slashes are optional on every path.

**Authentication.** In *open* mode (the default on a loopback address) no credentials are needed. In
*token* mode every operation except `/api/health`, `/api/schema/` and `/api/docs/` needs
`Authorization: Bearer <token>`: 401 without a live token, 403 when its role (`device`, `dashboard`,
`admin`) may not.

**Errors.** Every error is JSON: `{"error": "…", "details": [{"field": "dob", "message": "…"}]}` (plus
`resync` on 410, `status` on some 409). Unknown paths are 404, wrong methods 405 (with `Allow`).

**Versions.** `server_version` is 1 on create and +1 on every change. Responses carry
`ETag: W/"<server_version>"`; `If-Match` guards writes (412), `If-None-Match` reads (304). A PUT, PATCH
or sync `update` that leaves the item as it is changes nothing: same `server_version` and `updated_at`.

**Ids made on the device.** A sync `create` may carry `server_id` (and `POST` an `id`): a UUID the client
made, in canonical lower-case form, becomes the item's id. Retrying the create (same device, same
`client_temp_id` or the same id; over REST the same body) gives the same answer and creates nothing; an
id already used by another item (patient or record, deleted or not) is `rejected` (REST: 409) naming it.
Download and websocket entries carry `created_by` (`device_id`, `client_temp_id` of the upload that
created the item; null for items created over REST), so a device recognises its own creates.

**Live push: `/api/sync/ws` (websocket, not describable in OpenAPI).** Connect with `since` or `cursor`
(as for download) and optionally `resource_type`, `patient`, `device_id` (and in token mode `token`, for
browsers). Messages are JSON objects with a `type`: `hello` (`cursor`/`since`, `head`, `server_time`),
`changes` (`changes` exactly as download's entries, `cursor`, `server_time`), `batch` (`batch_id`,
`status`, `device_id`) and `error`. Send `{"type": "ping"}` to get `{"type": "pong"}`. Bad parameters fail
the handshake with a JSON 400 (410 with `resync` for a cursor ahead of history). A device token may name
only its own `device_id` (a JSON 403 otherwise); without one its socket is its own device's. Reconnect with
the last `cursor` received.

**Not in this document:** `/metrics` (Prometheus text), the dashboard's static files (`/`, `/static/…`).
"""


@functools.lru_cache(maxsize=8)
def _cached(page_limit_max: int, max_batch_changes: int) -> dict[str, Any]:
    return build_schema(page_limit_max=page_limit_max, max_batch_changes=max_batch_changes)


def schema_for(settings: Any) -> dict[str, Any]:
    """The document for a server's settings (a copy of a cached build)."""
    return copy.deepcopy(_cached(settings.page_limit_max, settings.max_batch_changes))
