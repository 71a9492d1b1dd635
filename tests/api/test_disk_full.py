"""A full disk, for real: the data folder on a small tmpfs filled to the last byte.

Writes answer 507 and leave nothing behind, reads and health go on (health
``degraded``), and once the filler is deleted the same server writes again.
Needs root to mount the tmpfs (CI runs as root); skipped otherwise.  SQLite only: the
database file is what fills the disk here (PostgreSQL's disk is the database server's).
"""

from __future__ import annotations

import sqlite3
import uuid

import pytest

from tests.support.faults import fill_disk
from tests.support.http import assert_refused, upload_body
from tests.support.servers import make_settings

pytestmark = pytest.mark.slow


@pytest.fixture
def settings(tmpfs):
    return make_settings(tmpfs(24) / "data", min_free_disk_bytes=4 * 1024 * 1024)


async def test_a_full_disk_is_507_health_degraded_and_recovers_without_restart(api, settings):
    p = await api.new_patient(name="Before")
    health = (await api.get("/api/health")).json
    assert health["status"] == "ok" and health["reasons"] == []
    batch_id = str(uuid.uuid4())
    filler = fill_disk(settings.data_dir.parent)
    try:
        assert_refused(await api.post("/api/patients/", {"name": "No room"}), 507, "disk")
        assert_refused(await api.put(f"/api/patients/{p['id']}/", {"name": "No room"}), 507, "disk")
        assert_refused(await api.post("/api/sync/upload/", upload_body(batch_id, n=200)), 507, "disk")
        # reads go on, and health answers (200: still serving) with the reason
        assert [x["name"] for x in (await api.get("/api/patients/")).json] == ["Before"]
        resp = await api.get("/api/health")
        assert resp.status == 200 and resp.json["status"] == "degraded"
        assert resp.json["disk_free_bytes"] < 4 * 1024 * 1024
        assert any("disk" in reason for reason in resp.json["reasons"])
    finally:
        filler.unlink()
    # the same server, no restart
    assert (await api.get("/api/health")).json["status"] == "ok"
    assert [x["name"] for x in (await api.get("/api/patients/")).json] == ["Before"]  # nothing half-written
    assert (await api.post("/api/patients/", {"name": "After"})).status == 201
    retry = await api.post("/api/sync/upload/", upload_body(batch_id, n=200))
    assert retry.status == 200 and {r["status"] for r in retry.json["results"]} == {"created"}
    assert (await api.put(f"/api/patients/{p['id']}/", {"name": "Renamed"})).json["server_version"] == 2
    assert len((await api.get("/api/patients/")).json) == 202
    conn = sqlite3.connect(settings.db_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()
