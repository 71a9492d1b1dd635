"""The reusable sync client (static/js/healthsync-client.js) in Chromium against a real server.

Each test opens a page on the server's origin (the dashboard's HTML, with its
own script stubbed out so that only the client runs) and drives the client through ``page.evaluate`` with a dynamic
``import()`` of the module the server serves.  On SQLite only, to keep Chromium's time
down: the client sees the same API on either backend (tests/dashboard/test_dashboard.py
runs live push in the browser on PostgreSQL too).  Recovery (a server restart, a server down
at subscribe, a refused token, a silent attempt) and compression are tested in Chromium and
under Node alike in tests/dashboard/test_client_runtimes.py.
"""

from __future__ import annotations

import math

import pytest

from tests.support.dashboard import Api, seed_patients

pytestmark = pytest.mark.slow

MODULE = "/static/js/healthsync-client.js"


def open_origin(dash, base_url: str):
    """A page on the server's origin: the dashboard's HTML with its own script replaced by nothing."""
    page = dash.page
    page.route("**/static/js/app.js", lambda route: route.fulfill(content_type="text/javascript", body=""))
    page.goto(base_url + "/")
    page.evaluate(f"async () => {{ window.hs = await import({MODULE!r}); }}")
    return page


def test_download_all_follows_the_cursor_page_by_page(server_process, dash):
    srv = server_process()
    api = Api(srv.url)
    results = seed_patients(api, 23)
    for r in results[:4]:
        api.new_record(r["server_id"], "Observation", value=1)
    head = api.get("/api/sync/download/?cursor=0")
    assert not head["has_more"] and len(head["changes"]) == 27
    page = open_origin(dash, srv.url)
    out = page.evaluate(
        """async () => {
            const c = new hs.HealthSyncClient();
            const all = await c.downloadAll({cursor: "0", limit: 10});
            const sizes = [];
            for await (const p of c.pages({cursor: "0", limit: 10})) sizes.push(p.changes.length);
            const patients = await c.downloadAll({since: "2000-01-01T00:00:00Z", resourceType: "Patient", limit: 7});
            const one = await c.download({cursor: all.cursor});
            return {ids: all.changes.map((x) => x.server_id), cursor: all.cursor, sizes,
                    patients: patients.changes.length, after: one.changes.length, more: one.has_more};
        }"""
    )
    assert out["ids"] == [c["server_id"] for c in head["changes"]]  # oldest first, none twice
    assert out["cursor"] == head["cursor"]
    assert out["sizes"] == [10, 10, 7] and len(out["sizes"]) == math.ceil(27 / 10)
    assert out["patients"] == 23
    assert out["after"] == 0 and out["more"] is False


def test_upload_retried_with_the_same_batch_id_applies_once(server_process, dash):
    srv = server_process()
    api = Api(srv.url)
    page = open_origin(dash, srv.url)
    out = page.evaluate(
        """async () => {
            const c = new hs.HealthSyncClient({deviceId: "tablet-9"});
            const batchId = hs.uuid4();
            const changes = [
                {operation: "create", resource_type: "Patient", client_temp_id: "r1", payload: {name: "Rita Retry"}},
                {operation: "create", resource_type: "Observation", client_temp_id: "r1-o",
                 payload: {patient_temp_id: "r1", code: {text: "Pulse"}, value: 70}},
            ];
            const first = await c.upload(changes, {batchId});
            const second = await c.upload(changes, {batchId});
            const third = await c.upload(changes, {batchId});

            // The response is lost after the server applied the batch: the client retries, same batch id.
            let calls = 0;
            const lossy = async (url, init) => {
                calls += 1;
                const resp = await fetch(url, init);
                if (calls === 1) throw new TypeError("Failed to fetch");
                return resp;
            };
            const flaky = new hs.HealthSyncClient({deviceId: "tablet-9", fetch: lossy});
            const lost = await flaky.upload(
                [{operation: "create", resource_type: "Patient", client_temp_id: "l1", payload: {name: "Lou Lost"}}]);

            const queued = await c.upload(
                [{operation: "create", resource_type: "Patient", client_temp_id: "q1",
                  payload: {name: "Quinn Queued"}}],
                {async: true});
            let missingDevice = null;
            try { await new hs.HealthSyncClient().upload([]); } catch (e) { missingDevice = e.name; }
            return {first, second, third, batchId, lost, calls, queued, missingDevice};
        }"""
    )
    assert out["first"]["batch_id"] == out["batchId"]
    assert [r["status"] for r in out["first"]["results"]] == ["created", "created"]
    assert out["first"] == out["second"] == out["third"]
    assert out["calls"] == 2 and out["lost"]["results"][0]["status"] == "created"
    assert out["queued"]["status"] == "pending"
    assert out["missingDevice"] == "TypeError"
    names = [p["name"] for p in api.get("/api/patients/")]
    assert sorted(names) == ["Lou Lost", "Rita Retry"]  # nothing duplicated; the async batch waits
    assert len(api.get("/api/records/")) == 1
    batches = api.get("/api/sync/batches/?device_id=tablet-9")
    assert sorted(b["status"] for b in batches) == ["done", "done", "pending"]


def test_subscribe_pings_when_idle_and_reports_batches(server_process, dash):
    srv = server_process()
    api = Api(srv.url)
    page = open_origin(dash, srv.url)
    page.evaluate(
        """async () => {
            window.sent = []; window.batches = []; window.states = [];
            class Recording extends WebSocket {
                send(data) { sent.push(data); super.send(data); }
            }
            const c = new hs.HealthSyncClient({WebSocket: Recording});
            window.sub = c.subscribe({
                since: "2000-01-01T00:00:00Z",
                pingInterval: 150, pongTimeout: 2000,
                onBatch: (b) => batches.push(b),
                onState: (s) => states.push(s),
            });
        }"""
    )
    page.wait_for_function("sent.length >= 3", timeout=5000)
    assert set(page.evaluate("sent")) == {'{"type":"ping"}'}
    assert page.evaluate("sub.state") == "live"  # pongs arrived: no drop
    api.upload("tablet-5", [])
    page.wait_for_function("batches.length >= 1", timeout=3000)
    batch = page.evaluate("batches[0]")
    assert batch["device_id"] == "tablet-5" and batch["status"] == "done"
    assert page.evaluate("states") == ["connecting", "live"]
    # The backoff doubles from 1 s, is capped at 30 s, and is spread by ±25 % jitter.
    delays = page.evaluate("[0,1,2,3,4,5,6,12].map((n) => hs.backoffDelay(n, {random: () => 0.5}))")
    assert delays == [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
    low, high = page.evaluate("[hs.backoffDelay(2, {random: () => 0}), hs.backoffDelay(2, {random: () => 0.999})]")
    assert low == 3000 and 4900 < high < 5000
    # Bad arguments fail fast, before any request.
    err = page.evaluate("""() => { try { new hs.HealthSyncClient().subscribe({}); } catch (e) { return e.name; } }""")
    assert err == "TypeError"
    page.evaluate("sub.close()")


def test_a_failing_handler_gets_the_same_changes_again(server_process, dash):
    """The cursor advances only once onChanges succeeds; a throw reconnects from the last good one."""
    srv = server_process()
    api = Api(srv.url)
    page = open_origin(dash, srv.url)
    page.evaluate(
        """async () => {
            window.got = []; window.errors = []; let failures = 0;
            const c = new hs.HealthSyncClient();
            window.sub = c.subscribe({
                cursor: "0",
                backoff: {initial: 100, max: 400},
                onChanges: async (changes) => {
                    await new Promise((r) => setTimeout(r, 10));  // an async store, say IndexedDB
                    if (changes.some((x) => x.data.name === "Boom") && failures++ === 0) throw new Error("disk full");
                    for (const x of changes) got.push(x.data.name);
                },
                onError: (e) => errors.push(e.message),
            });
        }"""
    )
    page.wait_for_function("sub.state === 'live'", timeout=10000)
    api.new_patient("Fine")
    page.wait_for_function("got.includes('Fine')", timeout=3000)
    api.new_patient("Boom")
    page.wait_for_function("got.includes('Boom')", timeout=10000)
    api.new_patient("After")
    page.wait_for_function("got.includes('After')", timeout=3000)
    assert page.evaluate("got") == ["Fine", "Boom", "After"]
    assert page.evaluate("errors") == ["disk full"]
    page.evaluate("sub.close()")


def test_a_large_upload_to_another_origin_goes_plain(server_process, dash, tmp_path):
    """From a page on another origin, "auto" compression sends plain: a gzipped body would need the
    server's CORS preflight to allow Content-Encoding.  (Same-origin and Node: test_client_runtimes.py.)"""
    page_server = server_process()
    other = server_process(data_dir=tmp_path / "other")  # open mode on loopback: CORS open to any origin
    page = open_origin(dash, page_server.url)
    out = page.evaluate(
        f"""async () => {{
            const sent = [];
            const recording = (url, init) => {{
                sent.push(init.headers["Content-Encoding"] || null);
                return fetch(url, init);
            }};
            const c = new hs.HealthSyncClient({{baseUrl: {other.url!r}, deviceId: "tablet-x", fetch: recording}});
            const changes = Array.from({{length: 300}}, (_, i) => ({{operation: "create", resource_type: "Patient",
                client_temp_id: "x" + i, payload: {{name: "Cross " + i, identifiers: {{mrn: "MRN-X-" + i}}}}}}));
            const res = await c.upload(changes);
            return {{sent, created: res.results.filter((r) => r.status === "created").length, gzip: c.gzipUploads}};
        }}"""
    )
    assert out == {"sent": [None], "created": 300, "gzip": True}
    assert len(Api(other.url).get("/api/patients/")) == 300
