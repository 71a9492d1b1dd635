"""write_rate_limit: 429 with Retry-After, per token (per address in open mode),
for the whole site on PostgreSQL however many processes serve it."""

from __future__ import annotations

import psycopg
import pytest

from tests.support.http import Response

pytestmark = pytest.mark.both_backends


@pytest.fixture
def settings(settings_with):
    return settings_with(write_rate_limit=3)


async def test_writes_past_the_limit_get_429(api):
    for _ in range(3):
        assert (await api.post("/api/patients/", {"name": "A"})).status == 201
    resp = await api.post("/api/patients/", {"name": "A"})
    assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
    assert resp.json["error"] and resp.json["details"] == []
    assert len((await api.get("/api/patients/")).json) == 3  # reads are not limited


@pytest.mark.postgres_only  # SQLite's buckets are in memory: there is nothing to be unreachable
async def test_a_database_that_cannot_be_asked_is_503_not_500(app, api, settings):
    # Nothing else may touch the database meanwhile: the hub (its poller and
    # listener) stops, and no request has run yet (no audit write pending).
    await app.ctx.hub.close()
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    # The rate check is this request's first use of the database, on a connection that is gone.
    resp: Response = await api.post("/api/patients/", {"name": "B"})
    assert resp.status == 503, resp.json
    assert resp.json["error"] and int(resp.headers["Retry-After"]) >= 1
    for _ in range(10):  # the pool replaces its connections that went with it
        resp = await api.post("/api/patients/", {"name": "C"})
        if resp.status != 503:
            break
    assert resp.status == 201
    assert [p["name"] for p in (await api.get("/api/patients/")).json] == ["C"]
