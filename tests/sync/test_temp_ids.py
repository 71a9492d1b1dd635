"""The temp ids of a synchronous upload are written in its own transaction.

A retried create, a ``patient_temp_id`` of an earlier batch, a purge and the
batch retention all find them as soon as the upload has answered; a database
left with batches whose rows were put off (by an older HealthSync) gets them
written by the migration.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import aiosqlite
import orjson
import pytest

from healthsync.batches import purge_old_batches
from healthsync.storage import Database
from healthsync.storage.sqlite.migrations import MIGRATIONS, migrate
from healthsync.tasks import purge_tombstones
from tests.support.databases import execute

pytestmark = pytest.mark.both_backends

UPLOAD = "/api/sync/upload/"


def create(temp: str, payload: dict[str, Any], rtype: str = "Patient") -> dict[str, Any]:
    return {"operation": "create", "resource_type": rtype, "client_temp_id": temp, "payload": payload}


def temp_rows(settings: Any) -> list[tuple[str, ...]]:
    return sorted(execute(settings, "SELECT device_id, client_temp_id, server_id, resource_type FROM temp_ids"))


async def test_rows_are_there_when_the_upload_answers(api, app, settings):
    resp = await api.post(UPLOAD, {"device_id": "tab", "changes": [
        create("p", {"name": "A"}), create("o", {"patient_temp_id": "p", "v": 1}, "Observation"),
        create("bad", {"name": ""}),
    ]})
    assert resp.status == 200
    ids = {r["client_temp_id"]: r.get("server_id") for r in resp.json["results"]}
    assert temp_rows(settings) == sorted([("tab", "o", ids["o"], "Observation"),
                                                   ("tab", "p", ids["p"], "Patient")])


async def test_retries_find_their_creates(api, app, settings):
    first = await api.post(UPLOAD, {"device_id": "tab", "changes": [
        create("p", {"name": "A"}), create("o", {"patient_temp_id": "p", "v": 1}, "Observation"),
        create("bad", {"name": ""}),
    ]})
    assert [r["status"] for r in first.json["results"]] == ["created", "created", "rejected"]
    await api.post(UPLOAD, {"device_id": "other", "changes": [create("p", {"name": "Other"})]})

    again = await api.post(UPLOAD, {"device_id": "tab", "changes": [
        create("p", {"name": "A"}),                                              # a retry
        create("o2", {"patient_temp_id": "p", "v": 2}, "Observation"),          # routed by the earlier batch
        create("bad", {"name": "Fixed"}),                                        # was rejected: now made
    ]})
    results = again.json["results"]
    assert results[0] == {**first.json["results"][0], "server_version": 1}
    assert [r["status"] for r in results] == ["created"] * 3
    o2 = (await api.get(f"/api/records/{results[1]['server_id']}/")).json
    assert o2["patient"] == first.json["results"][0]["server_id"]
    assert len((await api.get("/api/patients/")).json) == 3  # A, Other, Fixed: nothing twice


async def test_a_retry_after_a_purge_does_not_bring_the_item_back(api, app, settings):
    resp = await api.post(UPLOAD, {"device_id": "tab", "changes": [create("p", {"name": "A"})]})
    sid = resp.json["results"][0]["server_id"]
    assert (await api.delete(f"/api/patients/{sid}/")).status == 204
    await asyncio.sleep(0.01)
    assert await purge_tombstones(app.ctx.db, 1e-12) == 1
    again = await api.post(UPLOAD, {"device_id": "tab", "changes": [create("p", {"name": "A"})]})
    assert again.json["results"][0] == {"client_temp_id": "p", "status": "created", "server_id": sid,
                                        "server_version": None}
    assert (await api.get("/api/patients/")).json == []


async def test_a_retry_after_batch_retention_finds_its_create(api, app, settings):
    resp = await api.post(UPLOAD, {"device_id": "tab", "changes": [create("p", {"name": "A"})]})
    sid = resp.json["results"][0]["server_id"]
    await asyncio.sleep(0.01)
    assert await purge_old_batches(app.ctx.db, 1e-12) == 1  # the batch, with its stored response
    again = await api.post(UPLOAD, {"device_id": "tab", "changes": [create("p", {"name": "A"})]})
    assert again.json["results"][0]["server_id"] == sid
    assert len((await api.get("/api/patients/")).json) == 1


@pytest.mark.sqlite_only  # a migration of an older SQLite file
async def test_the_migration_writes_the_rows_a_marked_batch_still_owes(tmp_path):
    """A server stopped between an upload's answer and its put-off rows (an older HealthSync) left
    the batch marked; the step that drops the mark writes them from its response."""
    path = tmp_path / "old.db"
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        # the schema just before the step that writes them (steps are numbered from 1)
        step = next(i for i, (name, _) in enumerate(MIGRATIONS, 1) if name.startswith("temp ids: written in the"))
        await migrate(conn, target=step - 1)
        at = "2025-01-01T00:00:00.000000Z"
        await conn.execute("BEGIN IMMEDIATE")
        for pid, seq in (("p-id", 1), ("gone-id", 2)):
            await conn.execute(
                "INSERT INTO patients (id, name, identifiers, server_version, updated_at, seq, created_at)"
                " VALUES (?, 'A', '{}', 1, ?, ?, ?)", (pid, at[:-2] + str(seq) + "Z", seq, at))
        await conn.execute("DELETE FROM patients WHERE id = 'gone-id'")  # purged since
        response = {"results": [
            {"client_temp_id": "p", "status": "created", "server_id": "p-id", "server_version": 1},
            {"client_temp_id": "g", "status": "created", "server_id": "gone-id", "server_version": 1},
            {"client_temp_id": "bad", "status": "rejected", "error": "name: required"},
        ]}
        await conn.execute(
            "INSERT INTO batches (id, device_id, status, change_count, response, created_at, updated_at,"
            " temp_pending) VALUES ('b', 'tab', 'done', 3, ?, ?, ?, 1)", (orjson.dumps(response).decode(), at, at))
        await conn.execute("COMMIT")
    finally:
        await conn.close()

    db = await Database(path, readers=1).open()
    await db.close()
    conn2 = sqlite3.connect(path)
    try:
        rows = conn2.execute("SELECT device_id, client_temp_id, server_id, resource_type FROM temp_ids").fetchall()
        assert rows == [("tab", "p", "p-id", "Patient")]
        assert "temp_pending" not in {r[1] for r in conn2.execute("PRAGMA table_info(batches)")}
    finally:
        conn2.close()
