"""``/api/devices/``: each device seen, its last upload and download, batches, lag."""

from __future__ import annotations

import pytest

from tests.support.http import change, upload

pytestmark = pytest.mark.both_backends


async def test_devices_view(api):
    await upload(api, [change("create", "Patient", client_temp_id="a", payload={"name": "A"})], device="tab-1")
    await api.post("/api/sync/upload/", {"device_id": "tab-2", "changes": [], "async": True})
    page = await api.get("/api/sync/download/?cursor=0&device_id=tab-1")
    assert page.status == 200
    await upload(api, [change("create", "Patient", client_temp_id="b", payload={"name": "B"})], device="tab-3")
    devices = {d["device_id"]: d for d in (await api.get("/api/devices/")).json}
    assert set(devices) == {"tab-1", "tab-2", "tab-3"}
    one = devices["tab-1"]
    assert one["last_upload_at"] and one["last_download_at"] and one["last_cursor"] == page.json["cursor"]
    assert one["behind"] == 1 and one["pending_batches"] == 0 and one["failed_batches"] == 0
    assert devices["tab-2"]["pending_batches"] == 1 and devices["tab-2"]["last_download_at"] is None
    assert devices["tab-2"]["behind"] is None
    assert (await api.get("/api/sync/download/?cursor=0&device_id=" + "x" * 300)).status == 400
