"""``/metrics``: Prometheus text whose counters move as requests are made."""

from __future__ import annotations

import re

from tests.api.test_sync_upload import change, upload


def value(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_move(api):
    before = (await api.get("/metrics")).body.decode()
    p = await api.new_patient()
    await upload(api, [change("update", "Patient", server_id=p["id"], base_version=5, payload={"name": "x"}),
                       change("create", "Patient", client_temp_id="a", payload={"name": "y"})])
    await api.get("/api/sync/download/?cursor=0")
    resp = await api.get("/metrics")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    text = resp.body.decode()
    assert value(text, 'healthsync_requests_total{method="POST",route="PatientListHandler",status="201"}') == \
        value(before, 'healthsync_requests_total{method="POST",route="PatientListHandler",status="201"}') + 1
    assert value(text, "healthsync_changes_applied_total") == 2
    assert value(text, "healthsync_conflicts_total") == 1
    assert value(text, "healthsync_upload_changes_total") == 2
    assert value(text, "healthsync_download_entries_total") == 2
    assert value(text, "healthsync_websocket_subscribers") == 0
    assert re.search(r'healthsync_request_duration_seconds_bucket\{method="GET",route="DownloadHandler",le="\+Inf"\} 1',
                     text)
    for line in text.splitlines():  # every line is a comment or `name{labels} number`
        assert line.startswith("#") or re.match(r'^[a-z_]+(\{[^}]*\})? [0-9.e+-]+$', line), line
