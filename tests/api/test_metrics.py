"""``/metrics``: Prometheus text whose counters move as requests are made."""

from __future__ import annotations

import re

import pytest

from tests.support.http import change, upload

pytestmark = pytest.mark.both_backends


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
    bucket = 'healthsync_request_duration_seconds_bucket{le="+Inf",method="GET",route="DownloadHandler"}'
    assert value(text, bucket) == 1
    for line in text.splitlines():  # every line is a comment or `name{labels} number`
        assert line.startswith("#") or re.match(r'^[a-z_]+(\{[^}]*\})? [0-9.e+-]+$', line), line


def series(text: str) -> list[tuple[str, dict[str, str]]]:
    """Every sample of ``text`` as (name, labels)."""
    out = []
    for line in text.splitlines():
        m = re.match(r'^([a-z_]+)(?:\{(.*)\})? ', line)
        if m:
            out.append((m.group(1), dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))))
    return out


async def test_labels_are_never_chosen_by_clients(api):
    """Invented methods and paths count as one ``other`` each, however many there are."""
    for i in range(20):
        assert (await api.request(f"FOO{i}", "/api/patients/")).status == 405
        assert (await api.get(f"/api/invented-{i}/")).status == 404
        assert (await api.request(f"BAR{i}", f"/nowhere-{i}")).status in (404, 405)
    await api.request("get", "/api/patients/")  # methods are case-sensitive: not GET
    await api.get("/api/patients/")
    text = (await api.get("/metrics")).body.decode()
    assert "FOO" not in text and "BAR" not in text and "invented" not in text and "nowhere" not in text
    samples = series(text)
    methods = {labels["method"] for _, labels in samples if "method" in labels}
    routes = {labels["route"] for _, labels in samples if "route" in labels}
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"} and "other" in methods
    assert "other" in routes and "PatientListHandler" in routes and "NotFoundHandler" not in routes
    other = 'healthsync_requests_total{method="other",route="PatientListHandler",status="405"}'
    assert value(text, other) == 21
    assert value(text, 'healthsync_requests_total{method="GET",route="other",status="404"}') == 20


async def test_what_only_grows_is_a_counter(api):
    text = (await api.get("/metrics")).body.decode()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    for name in ("healthsync_websocket_frames_sent_total", "healthsync_websocket_frames_dropped_total",
                 "healthsync_requests_total", "healthsync_upload_changes_total", "healthsync_tasks_total"):
        assert types.get(name) == "counter", name
    for name in ("healthsync_websocket_subscribers", "healthsync_change_head", "healthsync_batch_queue_depth"):
        assert types.get(name) == "gauge", name
    assert not [n for n, t in types.items() if t == "gauge" and n.endswith("_total")]


async def test_each_app_counts_apart(api, app, settings, io_loop):
    """One registry per application: a second app in the process starts from zero."""
    from healthsync.app import make_app

    await api.get("/api/patients/")
    other = make_app(settings)
    assert value(other.ctx.metrics.render(), 'healthsync_requests_total{method="GET",route="PatientListHandler"') == 0
    assert value(app.ctx.metrics.render(), 'healthsync_requests_total{method="GET",route="PatientListHandler"') == 1
