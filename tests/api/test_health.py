"""``/api/health`` answers 503 when the database cannot be read."""

from __future__ import annotations

import pytest

from tests.support.databases import latest_schema

pytestmark = pytest.mark.both_backends


async def test_health_reports_everything(api, backend):
    body = (await api.get("/api/health")).json
    assert body["status"] == "ok" and body["auth"] == "open"
    assert body["database"]["ok"] and body["database"]["schema_version"] == latest_schema(backend)
    assert body["database"]["backend"] == backend
    assert body["disk_free_bytes"] > 0 and body["websockets"] == 0
    assert body["worker"] == {"embedded": False, "alive": None, "queue_depth": 0}
    # the queue follows the database: SQLite in the data dir, or the site's PostgreSQL database
    assert body["queue"]["backend"] == backend and body["queue"]["ok"] is True


@pytest.mark.sqlite_only  # moves the database file away
@pytest.mark.expect_error_logs  # the access log reports the 503
async def test_health_is_503_when_the_database_file_is_unreadable(api, settings):
    assert (await api.get("/api/health")).status == 200
    # The open connections would go on serving from their cache and the WAL:
    # health must notice what a restart would find.
    moved = settings.db_path.with_name("elsewhere.db")
    settings.db_path.rename(moved)
    try:
        resp = await api.get("/api/health")
        assert resp.status == 503
        assert resp.json["status"] == "unavailable" and resp.json["database"]["ok"] is False
        assert resp.json["database"]["backend"] == "sqlite"
        assert "missing" in resp.json["database"]["error"]
    finally:
        moved.replace(settings.db_path)
    assert (await api.get("/api/health")).status == 200
