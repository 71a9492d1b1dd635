"""The temp ids of a synchronous upload are written after it has answered.

Until that write is done (or if it never is: a crash, a shutdown), the
batch is marked ``temp_pending`` and its stored response stands in for the
rows: a retried create, a ``patient_temp_id`` and a purge must all find them.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import pytest

from healthsync.batches import purge_old_batches
from healthsync.sync.service import SyncService
from healthsync.tasks import purge_tombstones

UPLOAD = "/api/sync/upload/"


def create(temp: str, payload: dict[str, Any], rtype: str = "Patient") -> dict[str, Any]:
    return {"operation": "create", "resource_type": rtype, "client_temp_id": temp, "payload": payload}


def stored(db_path: Any) -> tuple[list[tuple[str, ...]], list[tuple[str, int]]]:
    """(temp_ids rows, (batch id, temp_pending) of every batch)."""
    conn = sqlite3.connect(db_path)
    try:
        temp = conn.execute(
            "SELECT device_id, client_temp_id, server_id, resource_type FROM temp_ids ORDER BY 1, 2"
        ).fetchall()
        marks = conn.execute("SELECT id, temp_pending FROM batches ORDER BY created_at").fetchall()
        return temp, marks
    finally:
        conn.close()


@pytest.fixture
def never_indexed(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the server stopped between an upload's answer and its temp ids' write."""

    def lost(self: SyncService, device_id: str, put_off: Any) -> None:
        return None

    monkeypatch.setattr(SyncService, "_put_off_rows", lost)


async def test_rows_are_written_after_the_answer(api, app, settings):
    resp = await api.post(UPLOAD, {"device_id": "tab", "changes": [
        create("p", {"name": "A"}), create("o", {"patient_temp_id": "p", "v": 1}, "Observation"),
        create("bad", {"name": ""}),
    ]})
    assert resp.status == 200
    await app.ctx.sync.settle()
    temp, marks = stored(settings.db_path)
    ids = {r["client_temp_id"]: r.get("server_id") for r in resp.json["results"]}
    assert temp == sorted([("tab", "o", ids["o"], "Observation"), ("tab", "p", ids["p"], "Patient")])
    assert [m[1] for m in marks] == [0]


async def test_they_wait_for_a_pause_or_the_devices_next_upload(api, app, settings, monkeypatch):
    monkeypatch.setattr(SyncService, "INDEX_QUIET", 60.0)  # no pause comes in this test
    monkeypatch.setattr(SyncService, "INDEX_AT_MOST", 120.0)
    one = await api.post(UPLOAD, {"device_id": "tab", "changes": [create("p", {"name": "A"})]})
    other = await api.post(UPLOAD, {"device_id": "other", "changes": [create("q", {"name": "B"})]})
    assert stored(settings.db_path) == ([], [(one.json["batch_id"], 1), (other.json["batch_id"], 1)])

    two = await api.post(UPLOAD, {"device_id": "tab", "changes": [create("p", {"name": "A"}),
                                                                   create("r", {"name": "C"})]})
    assert two.json["results"][0] == one.json["results"][0]  # a retry, answered from the rows written first
    temp, marks = stored(settings.db_path)
    assert [r[:2] for r in temp] == [("tab", "p")]
    assert marks == [(one.json["batch_id"], 0), (other.json["batch_id"], 1), (two.json["batch_id"], 1)]

    await app.ctx.sync.settle()  # as at shutdown: no waiting for a pause
    temp, marks = stored(settings.db_path)
    assert [r[:2] for r in temp] == [("other", "q"), ("tab", "p"), ("tab", "r")]
    assert {m[1] for m in marks} == {0}


async def test_a_batch_of_updates_is_not_marked(api, app, settings):
    p = await api.new_patient()
    resp = await api.post(UPLOAD, {"device_id": "tab", "changes": [
        {"operation": "update", "resource_type": "Patient", "server_id": p["id"], "payload": {"name": "B"}}]})
    assert resp.status == 200 and not app.ctx.sync._indexing
    assert stored(settings.db_path) == ([], [(resp.json["batch_id"], 0)])


async def test_retries_find_creates_whose_rows_were_never_written(api, app, settings, never_indexed):
    first = await api.post(UPLOAD, {"device_id": "tab", "changes": [
        create("p", {"name": "A"}), create("o", {"patient_temp_id": "p", "v": 1}, "Observation"),
        create("bad", {"name": ""}),
    ]})
    assert [r["status"] for r in first.json["results"]] == ["created", "created", "rejected"]
    assert stored(settings.db_path) == ([], [(first.json["batch_id"], 1)])

    # another device's upload neither sees nor clears this device's mark
    await api.post(UPLOAD, {"device_id": "other", "changes": [create("p", {"name": "Other"})]})
    assert stored(settings.db_path)[1][0] == (first.json["batch_id"], 1)

    again = await api.post(UPLOAD, {"device_id": "tab", "changes": [
        create("p", {"name": "A"}),                                              # a retry
        create("o2", {"patient_temp_id": "p", "v": 2}, "Observation"),          # routed by the pending mapping
        create("bad", {"name": "Fixed"}),                                        # was rejected: now made
    ]})
    results = again.json["results"]
    assert results[0] == {**first.json["results"][0], "server_version": 1}
    assert [r["status"] for r in results] == ["created"] * 3
    o2 = (await api.get(f"/api/records/{results[1]['server_id']}/")).json
    assert o2["patient"] == first.json["results"][0]["server_id"]
    assert len((await api.get("/api/patients/")).json) == 3  # A, Other, Fixed: nothing twice

    temp, marks = stored(settings.db_path)
    assert {(r[0], r[1]) for r in temp} == {("tab", "p"), ("tab", "o")}  # caught up from the response
    assert marks[0] == (first.json["batch_id"], 0)


async def test_a_purge_catches_up_first(api, app, settings, never_indexed):
    resp = await api.post(UPLOAD, {"device_id": "tab", "changes": [create("p", {"name": "A"})]})
    sid = resp.json["results"][0]["server_id"]
    assert (await api.delete(f"/api/patients/{sid}/")).status == 204
    await asyncio.sleep(0.01)
    assert await purge_tombstones(app.ctx.db, 1e-12) == 1
    assert stored(settings.db_path) == ([("tab", "p", sid, "Patient")], [(resp.json["batch_id"], 0)])
    # so a retry after the purge is still a retry, and does not bring the patient back
    again = await api.post(UPLOAD, {"device_id": "tab", "changes": [create("p", {"name": "A"})]})
    assert again.json["results"][0] == {"client_temp_id": "p", "status": "created", "server_id": sid,
                                        "server_version": None}
    assert (await api.get("/api/patients/")).json == []


async def test_batch_retention_catches_up_first(api, app, settings, never_indexed):
    resp = await api.post(UPLOAD, {"device_id": "tab", "changes": [create("p", {"name": "A"})]})
    sid = resp.json["results"][0]["server_id"]
    await asyncio.sleep(0.01)
    assert await purge_old_batches(app.ctx.db, 1e-12) == 1  # the batch, with the response that stood in
    assert stored(settings.db_path) == ([("tab", "p", sid, "Patient")], [])
    again = await api.post(UPLOAD, {"device_id": "tab", "changes": [create("p", {"name": "A"})]})
    assert again.json["results"][0]["server_id"] == sid
    assert len((await api.get("/api/patients/")).json) == 1


async def test_shutdown_writes_what_is_left(api, app, settings):
    resp = await api.post(UPLOAD, {"device_id": "tab", "changes": [create("p", {"name": "A"})]})
    assert resp.status == 200
    await app.shutdown()
    app.shutdown = _noop  # the fixture's own shutdown
    temp, marks = stored(settings.db_path)
    assert len(temp) == 1 and marks == [(resp.json["batch_id"], 0)]


async def _noop() -> None:
    return None
