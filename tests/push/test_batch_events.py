"""``batch`` events: the uploading device's socket learns when its batch is done."""

from __future__ import annotations

import pytest

from tests.support.http import patient_changes

pytestmark = pytest.mark.both_backends


@pytest.fixture
def settings(settings_with):
    return settings_with(embedded_worker=True, push_poll_seconds=0.05)


async def test_batch_event_reaches_its_device_and_dashboards_only(api, ws):
    mine = await ws("cursor=0&device_id=tab-1")
    other = await ws("cursor=0&device_id=tab-2")
    dashboard = await ws("cursor=0")
    resp = await api.post("/api/sync/upload/", {"device_id": "tab-1", "changes": patient_changes(20), "async": True})
    batch_id = resp.json["batch_id"]
    await api.post(f"/api/sync/trigger/{batch_id}/")

    def done(m):
        return m["type"] == "batch" and m["status"] == "done"

    event = await mine.until(done)
    assert event == {"type": "batch", "batch_id": batch_id, "status": "done", "device_id": "tab-1"}
    assert (await dashboard.until(done))["batch_id"] == batch_id
    # the changes were pushed too, to everyone (device_id does not narrow changes)
    assert len(await mine.changes_until(20)) == 20
    assert len(await other.changes_until(20)) == 20
    assert not [m for m in other.messages if m["type"] == "batch"]
    statuses = [m["status"] for m in dashboard.messages if m["type"] == "batch"]
    assert statuses[-1] == "done"
