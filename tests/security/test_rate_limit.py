"""write_rate_limit: 429 with Retry-After, per token (per address in open mode)."""

from __future__ import annotations

import pytest

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
