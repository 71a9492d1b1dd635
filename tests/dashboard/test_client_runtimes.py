"""The sync client (static/js/healthsync-client.js) recovers wherever it is imported.

Every test runs the same JavaScript three times against a real ``run.py serve``: in Chromium
(a page on the server's origin, as tests/dashboard/test_client.py), under Node with Node's own
WebSocket (Node 22, or Node 20 with ``--experimental-websocket``), and under Node with the npm
``ws`` package injected as the client's ``WebSocket`` (tests/js/, ``npm ci --prefix tests/js``).
Node's own WebSocket reports a refused connection with ``error`` alone, never ``close``: the
subscription must still retry, reconnect, resume from its cursor, and report a refused token.

Snippets use the globals ``hs`` (the module), ``BASE`` (the server) and ``client(options)``
(a HealthSyncClient on BASE with the runtime's WebSocket), and keep their state on ``globalThis``.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.dashboard import NETWORK_ERROR, Api, create_token, seed_patients
from tests.support.node import NodeClient

pytestmark = pytest.mark.slow

MODULE = "/static/js/healthsync-client.js"
RUNTIMES = ["chromium", "node", "node-ws"]
#: What Chromium logs for a request the server refuses (the client's probe after a refused handshake).
REFUSED = re.compile(r"status of 40[13]|Unexpected response code: 40[13]")
GZIP_REFUSED = re.compile(r"status of 400 \(Bad Request\) \[\S*/api/sync/upload/\]")


class Page:
    """A Chromium page on the server's origin with the client module loaded, driven like NodeClient."""

    def __init__(self, dash: Any, base_url: str) -> None:
        self.dash = dash
        page = dash.page
        page.route("**/static/js/app.js", lambda route: route.fulfill(content_type="text/javascript", body=""))
        page.goto(base_url + "/")
        page.evaluate(
            f"""async () => {{
                globalThis.hs = await import({MODULE!r});
                globalThis.BASE = location.origin;
                globalThis.client = (options = {{}}) => new hs.HealthSyncClient({{baseUrl: BASE, ...options}});
            }}"""
        )

    def evaluate(self, src: str) -> Any:
        return self.dash.page.evaluate(src)

    def wait_for(self, src: str, timeout: int = 5000) -> Any:
        return self.dash.page.wait_for_function(src, timeout=timeout).json_value()

    def allow_errors(self, pattern: re.Pattern[str]) -> None:
        self.dash.allow_errors(pattern)

    def close(self) -> list[str]:
        return []  # the dash fixture checks the page's errors


class Node:
    def __init__(self, base_url: str, websocket: str) -> None:
        self.node = NodeClient(base_url, websocket)
        self.evaluate = self.node.evaluate
        self.wait_for = self.node.wait_for

    def allow_errors(self, pattern: re.Pattern[str]) -> None:
        """Node logs nothing the tests check (uncaught errors are never allowed)."""

    def close(self) -> list[str]:
        try:
            return self.node.errors()
        finally:
            self.node.close()


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> Iterator[Callable[[str], Any]]:
    """A factory: ``runtime(base_url)`` loads the client in this test's runtime."""
    opened: list[Any] = []

    def open_runtime(base_url: str) -> Any:
        if request.param == "chromium":
            rt: Any = Page(request.getfixturevalue("dash"), base_url)
        else:
            rt = Node(base_url, "ws" if request.param == "node-ws" else "builtin")
        opened.append(rt)
        return rt

    yield open_runtime
    errors = [e for rt in opened for e in rt.close()]
    assert not errors, "Node reported uncaught errors:\n" + "\n".join(errors)


def follow(rt: Any, position: str = 'cursor: "0"', **options: str) -> None:
    """Subscribe as ``sub``, collecting names in ``got``, states in ``states``, errors in ``errors``."""
    extra = "".join(f"{k}: {v}, " for k, v in options.items())
    rt.evaluate(
        f"""async () => {{
            globalThis.got = []; globalThis.states = []; globalThis.errors = [];
            globalThis.sub = client().subscribe({{
                {position}, {extra}
                onChanges: (changes) => {{ for (const x of changes) got.push(x.data.name); }},
                onState: (s) => states.push(s),
                onError: (e) => errors.push({{message: e.message, status: e.status}}),
            }});
        }}"""
    )


def test_reconnects_after_a_restart_and_resumes_from_its_cursor(server_process, runtime):
    first = server_process()
    api = Api(first.url)
    api.new_patient("Already There")
    rt = runtime(first.url)
    head = rt.evaluate("async () => (await client().downloadAll({cursor: '0'})).cursor")
    follow(rt, f"cursor: {head!r}", backoff="{initial: 200, max: 1000}")
    rt.wait_for("sub.state === 'live'", 10000)
    api.new_patient("One")
    rt.wait_for("got.includes('One')", 5000)

    rt.allow_errors(NETWORK_ERROR)
    assert first.stop() == 0
    rt.wait_for("sub.state === 'reconnecting' && sub.attempt >= 2", 10000)  # failed attempts are retried
    # Changes made while the client cannot reach its server (by a server on the same data,
    # on another port); then the server comes back on its port.
    other = server_process(data_dir=first.data_dir)
    Api(other.url).new_patient("Two")
    Api(other.url).upload("tablet-2", [
        {"operation": "create", "resource_type": "Patient", "client_temp_id": "x", "payload": {"name": "Three"}},
    ])
    assert other.stop() == 0
    back = server_process("--port", str(first.port), data_dir=first.data_dir)
    rt.wait_for("got.includes('Three')", 10000)
    assert rt.evaluate("sub.state") == "live"
    Api(back.url).new_patient("Four")
    rt.wait_for("got.includes('Four')", 5000)
    out = rt.evaluate("({got, states, errors, cursor: sub.cursor})")
    assert out["got"] == ["One", "Two", "Three", "Four"]  # in order, none missed, none twice
    assert out["cursor"] == Api(back.url).get("/api/sync/download/?cursor=0")["cursor"]
    assert out["errors"] == []  # an unreachable server is retried, not an error
    states = out["states"]
    assert states[:2] == ["connecting", "live"] and "reconnecting" in states and states[-1] == "live"
    rt.evaluate("sub.close()")
    assert rt.evaluate("sub.state") == "closed"


def test_server_down_at_subscribe_connects_once_it_is_up(server_process, runtime):
    srv = server_process()
    Api(srv.url).new_patient("Waiting")
    rt = runtime(srv.url)
    rt.allow_errors(NETWORK_ERROR)
    assert srv.stop() == 0
    follow(rt, backoff="{initial: 200, max: 1000}")
    rt.wait_for("sub.state === 'reconnecting' && sub.attempt >= 2", 10000)
    assert rt.evaluate("states[0]") == "connecting"
    back = server_process("--port", str(srv.port), data_dir=srv.data_dir)
    # Backoff capped at 1 s here: live again within a few seconds, not stuck on a silent attempt.
    rt.wait_for("sub.state === 'live'", 5000)
    rt.wait_for("got.includes('Waiting')", 5000)
    Api(back.url).new_patient("Next")
    rt.wait_for("got.includes('Next')", 5000)
    assert rt.evaluate("({got, errors})") == {"got": ["Waiting", "Next"], "errors": []}
    rt.evaluate("sub.close()")


def test_a_refused_token_reaches_on_error(server_process, runtime, tmp_path):
    data = tmp_path / "data"
    good = create_token(data, "dashboard", "front-desk")
    admin = create_token(data, "admin", "it")
    srv = server_process("--auth", "token", data_dir=data)
    Api(srv.url, token=admin).new_patient("Private")
    rt = runtime(srv.url)
    rt.allow_errors(NETWORK_ERROR)
    rt.allow_errors(REFUSED)
    rt.evaluate(
        """async () => {
            globalThis.errors = []; globalThis.states = [];
            globalThis.sub = client({token: "hs_not-a-real-token"}).subscribe({
                cursor: "0", backoff: {initial: 100, max: 200},
                onState: (s) => states.push(s),
                onError: (e) => errors.push({message: e.message, status: e.status, unauthorized: e.unauthorized}),
            });
        }"""
    )
    rt.wait_for("sub.state === 'closed'", 10000)
    out = rt.evaluate("({errors, states})")
    assert [e["status"] for e in out["errors"]] == [401] and out["errors"][0]["unauthorized"]
    assert out["states"] == ["connecting", "closed"]  # not retried: the token will not get better

    # The right token goes live.
    rt.evaluate(
        f"""async () => {{
            globalThis.got = [];
            globalThis.live = client({{token: {good!r}}}).subscribe({{
                cursor: "0", onChanges: (changes) => {{ for (const x of changes) got.push(x.data.name); }},
            }});
        }}"""
    )
    rt.wait_for("got.includes('Private')", 10000)
    rt.evaluate("live.close()")


@pytest.mark.parametrize("runtime", ["node", "node-ws"], indirect=True)
def test_a_handshake_only_refusal_reaches_on_error_under_node(server_process, runtime, tmp_path):
    """A device token naming another device: the handshake alone refuses it (403), download
    would not; under Node the client asks the handshake URL itself over HTTP.  (A browser page
    asks the download endpoint, which answers cross-origin pages, and retries this one.)"""
    data = tmp_path / "data"
    device = create_token(data, "device", "tablet-1")
    srv = server_process("--auth", "token", data_dir=data)
    rt = runtime(srv.url)
    rt.evaluate(
        f"""async () => {{
            globalThis.errors = [];
            globalThis.sub = client({{token: {device!r}, deviceId: "tablet-2"}}).subscribe({{
                cursor: "0", backoff: {{initial: 100, max: 200}},
                onError: (e) => errors.push({{message: e.message, status: e.status}}),
            }});
        }}"""
    )
    rt.wait_for("sub.state === 'closed'", 10000)
    errors = rt.evaluate("errors")
    assert [e["status"] for e in errors] == [403] and "tablet-2" in errors[0]["message"], errors


def test_an_attempt_that_never_answers_is_abandoned_and_retried(server_process, runtime):
    """A black hole (a port that accepts connections and never answers): each attempt ends after
    ``connectTimeout`` and the next one follows, instead of waiting forever."""
    srv = server_process()
    rt = runtime(srv.url)
    rt.allow_errors(NETWORK_ERROR)
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)  # never accepted, never answered
        port = hole.getsockname()[1]
        rt.evaluate(
            f"""async () => {{
                globalThis.states = []; globalThis.errors = [];
                globalThis.sub = client({{baseUrl: "http://127.0.0.1:{port}"}}).subscribe({{
                    cursor: "0", connectTimeout: 300, backoff: {{initial: 50, max: 100}},
                    onState: (s) => states.push(s),
                    onError: (e) => errors.push(e.message),
                }});
            }}"""
        )
        rt.wait_for("sub.attempt >= 3", 10000)
        out = rt.evaluate("({states, errors, state: sub.state})")
        rt.evaluate("sub.close()")
    assert out["errors"] == []
    assert out["states"][0] == "connecting" and set(out["states"][1:]) == {"reconnecting"}


# Compression -------------------------------------------------------------------------------

#: A fetch that records what each request sent and got: ``calls``.
RECORDING_FETCH = """
    globalThis.calls = [];
    globalThis.recording = async (url, init) => {
        const resp = await fetch(url, init);
        calls.push({method: init.method, path: new URL(url).pathname,
                    sent: (init.headers || {})["Content-Encoding"] || null,
                    status: resp.status, got: resp.headers.get("Content-Encoding")});
        return resp;
    };
"""


def big_batch(prefix: str, n: int = 300) -> str:
    """JS for ``n`` patient creates: well over the client's 16 KiB gzip threshold."""
    return (
        f"Array.from({{length: {n}}}, (_, i) => ({{operation: 'create', resource_type: 'Patient', "
        f"client_temp_id: '{prefix}-' + i, payload: {{name: '{prefix} patient ' + i, dob: '1980-05-17', "
        f"identifiers: {{mrn: 'MRN-{prefix}-' + i}}}}}}))"
    )


def test_a_large_upload_is_applied_once_whether_or_not_the_server_takes_gzip(server_process, runtime):
    """Gzipped where the runtime can (Chromium and Node have CompressionStream); the batch is
    applied once either way (a server without gzip support gets it again, plain)."""
    srv = server_process()
    rt = runtime(srv.url)
    # A server without gzip support refuses the gzipped body (400, in Chromium's console) before the plain one.
    rt.allow_errors(GZIP_REFUSED)
    out = rt.evaluate(
        f"""async () => {{
            {RECORDING_FETCH}
            const c = client({{deviceId: "tablet-z", fetch: recording}});
            const big = await c.upload({big_batch("Big")});
            const small = await c.upload([{{operation: "create", resource_type: "Patient",
                                            client_temp_id: "s", payload: {{name: "Small"}}}}]);
            return {{calls, big: big.results.map((r) => r.status), small: small.results[0].status,
                     gzipUploads: c.gzipUploads}};
        }}"""
    )
    assert out["big"] == ["created"] * 300 and out["small"] == "created"
    assert out["calls"][0]["sent"] == "gzip"
    assert out["calls"][-1]["sent"] is None  # under the threshold: plain
    assert len(Api(srv.url).get("/api/patients/")) == 301


def test_gzip_refused_by_the_server_is_resent_plain_once(server_process, runtime):
    """A server (or proxy) that answers 415 to a gzipped body gets the same batch plain, and
    this client's later uploads go plain straight away."""
    srv = server_process()
    rt = runtime(srv.url)
    out = rt.evaluate(
        f"""async () => {{
            {RECORDING_FETCH}
            const refusing = async (url, init) => {{
                if ((init.headers || {{}})["Content-Encoding"] === "gzip") {{
                    calls.push({{sent: "gzip", status: 415}});
                    return new Response(JSON.stringify({{error: "compressed bodies are not accepted", details: []}}),
                                        {{status: 415, headers: {{"Content-Type": "application/json"}}}});
                }}
                return recording(url, init);
            }};
            const c = client({{deviceId: "tablet-p", fetch: refusing}});
            const first = await c.upload({big_batch("First")});
            const second = await c.upload({big_batch("Second")});
            return {{calls: calls.map((x) => [x.sent, x.status]), gzipUploads: c.gzipUploads,
                     statuses: [...first.results, ...second.results].map((r) => r.status)}};
        }}"""
    )
    assert out["calls"] == [["gzip", 415], [None, 200], [None, 200]]
    assert out["gzipUploads"] is False
    assert set(out["statuses"]) == {"created"} and len(out["statuses"]) == 600
    assert len(Api(srv.url).get("/api/patients/")) == 600


def test_compression_can_be_turned_off(server_process, runtime):
    srv = server_process()
    rt = runtime(srv.url)
    out = rt.evaluate(
        f"""async () => {{
            {RECORDING_FETCH}
            const c = client({{deviceId: "tablet-o", fetch: recording, compress: false}});
            await c.upload({big_batch("Plain", 200)});
            return calls.map((x) => x.sent);
        }}"""
    )
    assert out == [None]


def test_the_server_takes_a_gzipped_upload(server_process, runtime):
    srv = server_process()
    rt = runtime(srv.url)
    out = rt.evaluate(
        f"""async () => {{
            {RECORDING_FETCH}
            const c = client({{deviceId: "tablet-g", fetch: recording}});
            const res = await c.upload({big_batch("Zipped")});
            return {{calls: calls.map((x) => [x.sent, x.status]), gzipUploads: c.gzipUploads,
                     created: res.results.filter((r) => r.status === "created").length}};
        }}"""
    )
    assert out == {"calls": [["gzip", 200]], "gzipUploads": True, "created": 300}


def test_downloads_and_lists_arrive_gzipped(server_process, runtime):
    """The runtime's fetch asks for gzip by itself (browsers, Node) and inflates the answer."""
    srv = server_process()
    seed_patients(Api(srv.url), 200)
    rt = runtime(srv.url)
    out = rt.evaluate(
        f"""async () => {{
            {RECORDING_FETCH}
            const c = client({{fetch: recording}});
            const all = await c.downloadAll({{cursor: "0"}});
            const patients = await c.listPatients();
            return {{n: all.changes.length, listed: patients.length, got: calls.map((x) => x.got)}};
        }}"""
    )
    assert out["n"] == 200 and out["listed"] == 200
    assert set(out["got"]) == {"gzip"}
