"""Shared fixtures: real servers on real SQLite files in temporary folders.

- ``settings``: open mode on loopback, data in ``tmp_path``; no environment leaks in.
- ``app``: ``make_app(settings)``, started and shut down (the name pytest-tornasync wants).
- ``api``: a small JSON client over ``http_server_client`` (real HTTP to the real app).
- ``server_process``: ``python run.py`` as a subprocess on a free port.
- ``ws``: connect real websocket subscribers to the app (``Client`` records what arrives).
- Any ERROR log from HealthSync or Tornado fails the test unless it is marked
  ``expect_error_logs``: a 500 can never pass unnoticed.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import settings as settings_mod  # noqa: E402
from healthsync.app import make_app  # noqa: E402


def pytest_report_header(config: Any) -> str:
    return f"sqlite {sqlite3.sqlite_version}"


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "expect_error_logs: the test expects ERROR logs")


class _ErrorCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def io_loop() -> Iterator[Any]:
    """A new loop per test, always closed (replaces pytest-tornasync's, which uses
    Tornado's deprecated make_current/clear_current)."""
    import asyncio

    import tornado.ioloop

    loop = tornado.ioloop.IOLoop(make_current=False)
    asyncio.set_event_loop(loop.asyncio_loop)  # type: ignore[attr-defined]
    try:
        yield loop
    finally:
        asyncio.set_event_loop(None)
        loop.close(all_fds=True)


@pytest.fixture(autouse=True)
def _fresh_loop_for_async_tests(request: pytest.FixtureRequest) -> None:
    """Every coroutine test runs on pytest-tornasync's per-test loop, which is closed after
    (without it the plugin falls back to IOLoop.current(), a loop nobody closes)."""
    if inspect.iscoroutinefunction(request.function):
        request.getfixturevalue("io_loop")


@pytest.fixture(autouse=True)
def fail_on_error_logs(request: pytest.FixtureRequest) -> Iterator[None]:
    collector = _ErrorCollector()
    loggers = [logging.getLogger("healthsync"), logging.getLogger("tornado")]
    for lg in loggers:
        lg.addHandler(collector)
    yield
    for lg in loggers:
        lg.removeHandler(collector)
    if collector.records and not request.node.get_closest_marker("expect_error_logs"):
        lines = "\n".join(f"{r.name}: {r.getMessage()}" for r in collector.records)
        pytest.fail(f"unexpected error logs:\n{lines}")


def make_settings(data_dir: Path, **overrides: Any) -> settings_mod.Settings:
    # No consumer threads unless a test asks for them (see tests/batches/).
    values: dict[str, Any] = {"data_dir": data_dir, "auth": "open", "embedded_worker": False,
                              "worker_poll_seconds": 0.05}
    values.update(overrides)
    return settings_mod.load({}, values)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def settings(data_dir: Path) -> settings_mod.Settings:
    return make_settings(data_dir)


@pytest.fixture
def app(settings: settings_mod.Settings, io_loop: Any) -> Iterator[Any]:
    application = make_app(settings)
    io_loop.run_sync(application.startup)
    yield application
    io_loop.run_sync(application.shutdown)


@dataclass
class Response:
    status: int
    headers: Any
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


class Api:
    """JSON over real HTTP to the app under test."""

    def __init__(self, client: Any) -> None:
        self.client = client

    @property
    def base(self) -> str:
        return self.client.get_url("")

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        data = raw if raw is not None else (None if body is None else orjson.dumps(body))
        if data is None and method in ("POST", "PUT", "PATCH"):
            data = b""
        resp = await self.client.fetch(
            path,
            method=method,
            body=data,
            headers=hdrs,
            raise_error=False,
            allow_nonstandard_methods=True,
            request_timeout=120,
        )
        return Response(resp.code, resp.headers, resp.body or b"")

    async def get(self, path: str, **kw: Any) -> Response:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> Response:
        return await self.request("POST", path, body, **kw)

    async def put(self, path: str, body: Any = None, **kw: Any) -> Response:
        return await self.request("PUT", path, body, **kw)

    async def patch(self, path: str, body: Any = None, **kw: Any) -> Response:
        return await self.request("PATCH", path, body, **kw)

    async def delete(self, path: str, **kw: Any) -> Response:
        return await self.request("DELETE", path, **kw)

    async def new_patient(self, **fields: Any) -> dict[str, Any]:
        body = {"name": "John Doe", "dob": "1990-01-01", "identifiers": {}, "fhir": {}}
        body.update(fields)
        resp = await self.post("/api/patients/", body)
        assert resp.status == 201, resp.body
        return resp.json

    async def new_record(self, patient: str, **fields: Any) -> dict[str, Any]:
        body = {"patient": patient, "resource_type": "Observation", "data": {"value": 1}}
        body.update(fields)
        resp = await self.post("/api/records/", body)
        assert resp.status == 201, resp.body
        return resp.json


@pytest.fixture
def api(http_server_client: Any) -> Api:
    return Api(http_server_client)


# Subprocess servers -------------------------------------------------------------


class Client:
    """A websocket subscriber that records what it receives."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.messages: list[dict[str, Any]] = []

    @property
    def changes(self) -> list[dict[str, Any]]:
        return [e for m in self.messages if m["type"] == "changes" for e in m["changes"]]

    async def next(self, timeout: float = 10) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.conn.read_message(), timeout)
        assert raw is not None, "socket closed"
        msg = orjson.loads(raw)
        self.messages.append(msg)
        return msg

    async def until(self, predicate, timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            msg = await self.next(max(deadline - time.monotonic(), 0.01))
            if predicate(msg):
                return msg

    async def changes_until(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.changes) < count:
            await self.next(max(deadline - time.monotonic(), 0.01))
        return self.changes

    async def quiet(self, seconds: float) -> list[dict[str, Any]]:
        """What arrives within ``seconds``: the empty list when nothing does."""
        try:
            return [await self.next(seconds)]
        except TimeoutError:
            return []

    @property
    def cursor(self) -> str | None:
        cursors = [m["cursor"] for m in self.messages if m["type"] == "changes"]
        return cursors[-1] if cursors else None

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def ws(http_server_client):
    opened: list[Client] = []

    async def connect(query: str = "cursor=0", headers: dict | None = None) -> Client:
        url = http_server_client.get_url(f"/api/sync/ws?{query}").replace("http://", "ws://")
        conn = await websocket_connect(HTTPRequest(url, headers=headers or {}))
        client = Client(conn)
        opened.append(client)
        hello = await client.next()
        assert hello["type"] == "hello"
        return client

    yield connect
    for client in opened:
        client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunPy:
    """``python run.py …`` in a subprocess; ``start`` waits for its ready line.

    A thread drains the process's output into ``log`` for its whole life: an
    unread pipe fills up and then blocks the process's next log line.
    """

    READY = re.compile(r"worker ready")

    def __init__(self, data_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.args = list(args)
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.ready_line: str | None = None
        self.log: list[str] = []
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 30) -> ServerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC_")}
        env.update(self.env or {})
        cmd = [sys.executable, "run.py", *self.args, *self.extra_args(), "--data-dir", str(self.data_dir)]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.ready_line = None
        self._ready.clear()
        self._reader = threading.Thread(target=self._drain, args=(self.proc,), daemon=True)
        self._reader.start()
        self._ready.wait(timeout)
        if self.ready_line is None:
            self.stop()
            raise RuntimeError(f"{' '.join(self.args) or 'serve'} did not start:\n" + "".join(self.log))
        return self

    def extra_args(self) -> list[str]:
        return []

    def _drain(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.log.append(line)
            if self.ready_line is None and self.READY.search(line):
                self.ready_line = line
                self._ready.set()
        self._ready.set()  # the process exited: stop waiting

    def _reap(self) -> None:
        assert self.proc is not None
        self.proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._reap()
        return self.proc.returncode

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self._reap()


class ServerProcess(RunPy):
    """``python run.py [serve] …`` on a free port (``--port 0`` unless given)."""

    READY = re.compile(r"listening on http://\S+?:(\d+)")

    def extra_args(self) -> list[str]:
        return [] if "--port" in self.args else ["--port", "0"]

    @property
    def port(self) -> int | None:
        m = self.READY.search(self.ready_line or "")
        return int(m.group(1)) if m else None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Any]:
    """A factory: ``server_process(*args)`` starts ``run.py``; all are stopped after."""
    started: list[ServerProcess] = []

    def start(*args: str, data_dir: Path | None = None, env: dict[str, str] | None = None) -> ServerProcess:
        proc = ServerProcess(data_dir or tmp_path / "data", *args, env=env).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.kill()
    for proc in started:
        # A server-side error behind a failing test shows in its report (captured stderr).
        if any(" ERROR " in line for line in proc.log):
            print(f"--- {' '.join(proc.args) or 'serve'} ({proc.data_dir}) logged errors:", file=sys.stderr)
            print("".join(proc.log), file=sys.stderr)


# Faults of the machine ------------------------------------------------------------


_HOLD_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
if sys.argv[2] == "exclusive":
    conn.execute("PRAGMA locking_mode = EXCLUSIVE")  # readers too are shut out (no WAL index)
conn.execute("BEGIN IMMEDIATE")
conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
conn.close()
"""


class LockHolder:
    """A separate Python process holding an SQLite file's write lock (``BEGIN IMMEDIATE``)
    until ``release()``; ``exclusive=True`` also shuts out readers (``locking_mode =
    EXCLUSIVE``, possible only while no other connection has the file open)."""

    def __init__(self, path: Path, *, exclusive: bool = False) -> None:
        self.path = path
        self.mode = "exclusive" if exclusive else "immediate"
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> LockHolder:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _HOLD_LOCK, str(self.path), self.mode],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "locked":
            self.proc.kill()
            _, err = self.proc.communicate()
            raise RuntimeError(f"could not lock {self.path}: {err}")
        return self

    def release(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        assert proc.stdin is not None
        try:
            proc.stdin.write("\n")
            proc.stdin.flush()
        except BrokenPipeError:
            pass
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()

    def __exit__(self, *exc: object) -> None:
        self.release()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Any]:
    """A factory: ``tmpfs(size_mb)`` mounts a real, small tmpfs and returns its path;
    unmounted after the test.  Skips when mounting is not allowed (not root)."""
    mounted: list[Path] = []

    def mount(size_mb: int) -> Path:
        where = tmp_path / f"tmpfs{len(mounted)}"
        where.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs to fill a disk for real (needs root): {result.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill_disk(folder: Path) -> Path:
    """Fill the file system under ``folder`` to the last byte; the filler's path."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        size = 1 << 20
        while size:
            try:
                os.write(fd, b"\0" * size)
            except OSError:
                size //= 2  # down to the last byte
    finally:
        os.close(fd)
    return filler


# Raw HTTP -----------------------------------------------------------------------


def post_chunked(url: str, pieces: Iterator[bytes], headers: dict[str, str] | None = None) -> Response:
    """POST ``pieces`` as a chunked body (no Content-Length) over a plain socket, blocking
    (run it in a thread). A server that answers early and closes is not an error: the
    rest of the body is dropped and its answer read."""
    from urllib.parse import urlsplit

    import tornado.httputil

    parts = urlsplit(url)
    hdrs = {"Host": parts.netloc, "Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    hdrs.update(headers or {})
    head = f"POST {parts.path}{'?' + parts.query if parts.query else ''} HTTP/1.1\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        try:
            sock.sendall(head.encode())
            for piece in pieces:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered before the body was all sent
        data = b""
        while b"\r\n\r\n" not in data:
            more = sock.recv(65536)
            assert more, f"connection closed before a response: {data!r}"
            data += more
        raw_head, body = data.split(b"\r\n\r\n", 1)
        status_line, _, header_text = raw_head.decode("latin-1").partition("\r\n")
        headers_in = tornado.httputil.HTTPHeaders.parse(header_text)
        length = int(headers_in.get("Content-Length", "0"))
        while len(body) < length:
            more = sock.recv(65536)
            assert more, "connection closed inside the response body"
            body += more
        return Response(int(status_line.split()[1]), headers_in, body)


# Large databases ----------------------------------------------------------------------


def fill_database(db_path: Path, megabytes: int) -> int:
    """A database of at least ``megabytes`` MB, quickly: the app's own migrations make
    the schema, then patients (with a ~3 KB FHIR document each) go in by raw
    ``executemany`` with increasing ``seq`` and the clock advanced to match, as
    creates through the write path would leave them. Returns the clock's head."""
    import asyncio
    import uuid

    from healthsync import clock
    from healthsync.storage import Database

    async def migrate() -> None:
        db = Database(db_path, readers=1)
        await db.open()
        await db.close()

    asyncio.run(migrate())
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")  # only building the starting file
    fhir = orjson.dumps({"resourceType": "Patient", "text": {"status": "generated", "div": "x" * 3000}}).decode()
    seq, us, batch = 0, clock.now_us(), 5_000
    while db_path.stat().st_size < megabytes * 1_000_000:
        rows = []
        for _ in range(batch):
            seq += 1
            us += 1
            at = clock.format_us(us)
            identifiers = f'{{"mrn": "MRN-{seq}"}}'
            rows.append((str(uuid.uuid4()), f"Patient {seq}", "1980-01-01", identifiers, fhir, at, seq, at))
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO patients (id, name, dob, identifiers, fhir, server_version, updated_at, seq, created_at)"
            " VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?)",
            rows,
        )
        conn.execute("UPDATE clock SET seq = ?, last_us = ? WHERE id = 1", (seq, us))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return seq
