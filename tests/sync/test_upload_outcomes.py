"""Every outcome of a varied upload, pinned exactly: statuses, error messages,
server copies, stored rows, stored conflicts and async requests, and the
400 bodies of malformed batches.

``tests/data/upload_outcomes.json`` was written by the upload code as it was
before the batch validation fast path (which checks all patient payloads of
a batch at once and falls back to the per-change model only for the ones that
fail).  A faster path must give the very same answers, message for message,
so this file is the reference: if this test fails, the code changed what
clients see.  Do not regenerate the file to make it pass.  (It was
regenerated once, deliberately, when an ISO week date such as ``2020-W01-1``
stopped being accepted as a ``dob``: that one outcome changed, to
``rejected``, and the placeholders after it were renumbered.  And once more
when an update that changes nothing stopped writing: the empty update ``{}``
of a base patient now answers ``updated`` with its unchanged version 1
instead of 2, its row keeps version 1, and the batch's cursor is one lower,
as that change no longer spends a ``seq``.  And once more when a create
stopped dropping an ``id`` in a patient payload silently: it names the new
patient's id now, so the "Read Only" create's ``"id": "x"`` is ``rejected``
as not a UUID; one row, one temp id and one ``seq`` fewer, and the
placeholders after it renumbered.)

Ids, stamps and batch ids are random or wall-clock; they are replaced by
stable placeholders in order of first appearance (``<id 1>``, ``<time>``…),
so the comparison still shows which result refers to which row.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.databases import execute

pytestmark = pytest.mark.both_backends

UPLOAD = "/api/sync/upload/"
EXPECTED = Path(__file__).resolve().parent.parent / "data" / "upload_outcomes.json"

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")


class Normalizer:
    """Replace UUIDs by ``<id N>`` (same id, same N) and stamps by ``<time>``."""

    def __init__(self) -> None:
        self.ids: dict[str, str] = {}

    def text(self, value: str) -> str:
        value = _UUID.sub(lambda m: self.ids.setdefault(m.group(0), f"<id {len(self.ids) + 1}>"), value)
        return _TIME.sub("<time>", value)

    def __call__(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self(v) for v in value]
        if isinstance(value, dict):
            return {self.text(k): self(v) for k, v in value.items()}
        return value


def nested(depth: int) -> dict[str, Any]:
    """A document ``depth`` levels deep ({} is 1)."""
    doc: dict[str, Any] = {}
    for _ in range(depth - 1):
        doc = {"x": doc}
    return doc


def create(temp: str, payload: Any, rtype: str = "Patient") -> dict[str, Any]:
    return {"operation": "create", "resource_type": rtype, "client_temp_id": temp, "payload": payload}


def update(server_id: str, payload: Any, rtype: str = "Patient", **kw: Any) -> dict[str, Any]:
    return {"operation": "update", "resource_type": rtype, "server_id": server_id, "payload": payload, **kw}


PATIENT_CREATES: list[Any] = [
    {"name": "Ada Lovelace"},
    {"name": "Full Fields", "dob": "1990-01-01", "identifiers": {"mrn": "1", "n": {"a": [1, 2.5, {"b": None}]}},
     "fhir": {"resourceType": "Patient", "active": True}},
    {"name": "Nulls", "dob": None, "fhir": None},
    {"name": "Read Only", "id": "x", "owner": "o", "server_version": 9, "updated_at": "soon", "deleted": True},
    {"name": " Spaced "},
    {"name": "x" * 256},
    {"name": "Week Date", "dob": "2020-W01-1"},               # rejected: not YYYY-MM-DD
    {"name": "Leap", "dob": "2020-02-29"},
    {"name": "At Depth", "identifiers": nested(32), "fhir": nested(32)},
    {"name": "Numbers", "identifiers": {"big": 12345678901234567890, "neg": -1, "f": 1e300, "u": "é\u2028"}},
    {"name": "Empty Fhir", "fhir": {}, "identifiers": {}},
    # rejected, one or several reasons each
    {"name": "   "},
    {"name": "\u2003\t"},
    {"name": ""},
    {"name": "x" * 257},
    {"name": 5},
    {"name": None},
    {},
    {"name": "Bad Day", "dob": "1990-02-30"},
    {"name": "Compact", "dob": "19900101"},
    {"name": "With Time", "dob": "1990-01-01T00:00:00"},
    {"name": "Future", "dob": "2999-01-01"},
    {"name": "Int Dob", "dob": 19900101},
    {"name": "Empty Dob", "dob": ""},
    {"name": "Ident List", "identifiers": []},
    {"name": "Ident Null", "identifiers": None},
    {"name": "Too Deep", "identifiers": nested(33)},
    {"name": "Fhir Deep", "fhir": nested(40)},
    {"name": "Fhir Text", "fhir": "text"},
    {"name": "Unknown", "unknown": 1},
    {"dob": "banana", "extra": 1, "identifiers": 3, "fhir": [], "name": "   "},
    {"name": "x" * 300, "dob": "2999-12-31", "identifiers": nested(50)},
]

PATIENT_UPDATES: list[Any] = [
    {"name": "Renamed"},
    {"name": None},
    {"dob": "2999-01-01"},
    {"dob": None},
    {"identifiers": {"mrn": None, "new": {"deep": 1}}},
    {"identifiers": None},
    {"fhir": {"a": nested(40)}},
    {"fhir": {"active": False}},
    {"unknown": 1},
    {"id": "x", "server_version": 99, "name": "Echoed"},
    {"name": "   ", "dob": "bad"},
    {},
]


async def _scenario(api: Any, settings: Any) -> dict[str, Any]:
    norm = Normalizer()
    out: dict[str, Any] = {}
    base = []
    for i in range(len(PATIENT_UPDATES) + 3):
        resp = await api.post("/api/patients/", {"name": f"Base {i}", "dob": "1980-01-01",
                                                 "identifiers": {"mrn": str(i), "keep": True}, "fhir": {"k": i}})
        base.append(resp.json["id"])
    norm(base)
    record = (await api.post("/api/records/", {"patient": base[0], "resource_type": "Observation",
                                               "data": {"v": 1}})).json["id"]
    norm(record)

    changes: list[dict[str, Any]] = [create(f"p{i}", p) for i, p in enumerate(PATIENT_CREATES)]
    changes += [
        create("p0", {"name": "Retried, so ignored"}),
        create("dup", {"name": "First"}),
        create("dup", {"name": "Second"}),
        create("o-good", {"patient_temp_id": "p1", "v": 1}, "Observation"),
        create("o-rejected-patient", {"patient_temp_id": "p11", "v": 1}, "Observation"),
        create("o-unknown-temp", {"patient_temp_id": "nope", "v": 1}, "Observation"),
        create("o-bad-type", {"patient_id": base[0]}, "Banana"),
        create("p-plain", {"name": "Plain"}, "Patient"),
    ]
    changes += [update(base[i], p, base_version=1) for i, p in enumerate(PATIENT_UPDATES)]
    n = len(PATIENT_UPDATES)
    changes += [
        update(base[0], {"name": "Again"}, base_version=2),       # second update in the batch
        update(base[0], {"name": "Stale"}, base_version=1),       # version_mismatch
        {"operation": "delete", "resource_type": "Patient", "server_id": base[n]},
        update(base[n], {"name": "After delete"}),                # deleted_on_server
        update(base[n + 1], {"name": "Old clock"}, client_updated_at="2000-01-01T00:00:00Z"),
        update(base[n + 2], {"name": "Bad clock"}, client_updated_at="yesterday"),
        update(record, {"v": 2}, "Patient"),                      # a record's id as a patient: not_found
        update(base[1], {"name": "As record"}, "Observation"),
    ]
    resp = await api.post(UPLOAD, {"device_id": "dev-1", "changes": changes})
    assert resp.status == 200, resp.body
    out["batch"] = norm(resp.json)

    rows = []
    for change, result in zip(changes, resp.json["results"], strict=True):
        sid = result.get("server_id")
        if sid and result["status"] in ("created", "updated", "deleted", "conflict"):
            kind = "patients" if change["resource_type"] == "Patient" else "records"
            got = await api.get(f"/api/{kind}/{sid}/?include_deleted=true")
            rows.append(norm(got.json))
    out["rows"] = rows
    out["conflicts"] = norm((await api.get("/api/conflicts/?device_id=dev-1")).json)

    pending = {"device_id": "dev-2", "async": True, "batch_id": "6f1c3a52-3b0e-4f43-9d4e-2b8a41b5b0a1",
               "changes": [create("a1", {"name": "Later"}), update(base[2], {"dob": "bad"}, base_version=7,
                                                                    client_updated_at="2020-01-01T00:00:00Z")]}
    resp = await api.post(UPLOAD, pending)
    out["async"] = {"status": resp.status, "body": norm(resp.json)}
    stored = (await asyncio.to_thread(execute, settings, "SELECT request FROM batches WHERE id = ?",
                                      pending["batch_id"]))[0][0]
    # sorted here, bytewise on either backend (PostgreSQL's ORDER BY follows the database's collation)
    temp_ids = sorted(await asyncio.to_thread(execute, settings,
                                              "SELECT device_id, client_temp_id, resource_type FROM temp_ids"))
    out["async"]["stored_request"] = norm(stored)
    out["temp_ids"] = [list(r) for r in temp_ids]

    X, Y = str(uuid.UUID(int=1)), str(uuid.UUID(int=2))  # server ids: UUIDs, or the batch is refused for them
    malformed = [
        {"device_id": "d", "changes": [create("ok", {"name": "x"}), 7]},
        {"device_id": "d", "changes": [create("ok", {"name": "x"}), {"operation": "zap", "resource_type": "X"}]},
        {"device_id": "d", "changes": [{"operation": "create", "resource_type": "Patient", "payload": []}]},
        {"device_id": "d", "changes": [update(X, {}, base_version="3"), update(Y, {}, base_version=-1)]},
        {"device_id": "d", "changes": [{"operation": "update", "resource_type": "Patient"}, create("", {})]},
        {"device_id": "d", "changes": [create("a", {}, rtype=""), {**create("b", {}), "extra": 1}]},
        {"device_id": "d", "changes": [update(X, {}, client_updated_at=5), update(X, {}, client_temp_id=3)]},
        {"device_id": "d", "changes": [{**create("a", {}), "payload": None}]},
        {"device_id": 5, "changes": {}, "batch_id": "nope", "async": "yes", "more": 1},
        {"changes": [{"operation": "create"}]},
        [],
    ]
    out["malformed"] = []
    for body in malformed:
        resp = await api.post(UPLOAD, body)
        out["malformed"].append({"status": resp.status, "body": resp.json})
    return out


async def test_upload_outcomes_are_exactly_as_pinned(api, app, settings):
    got = orjson.loads(orjson.dumps(await _scenario(api, settings)))
    expected = orjson.loads(EXPECTED.read_bytes())
    for key in expected:
        assert got[key] == expected[key], key
    assert got.keys() == expected.keys()
