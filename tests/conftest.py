"""Fixtures and hooks; the helpers behind them live in ``tests/support/`` (test modules
import helpers from there, never from another test module or from here).

- ``settings``: open mode on loopback, data in ``tmp_path``; no environment leaks in.  On the
  backend of the ``backend`` fixture: SQLite unless the module or test is marked
  ``both_backends`` (then it runs once on SQLite and once on PostgreSQL, on an empty
  schema of its own); ``sqlite_only`` keeps one test of such a module on SQLite, ``postgres_only`` on PostgreSQL.
  ``settings_with(**overrides)`` builds settings on the same backend (a module's own
  ``settings`` fixture uses it); ``database_url`` is the backend's setting ("" on SQLite).
- ``app``: ``make_app(settings)``, started and shut down (the name pytest-tornasync wants).
- ``api``: a small JSON client over ``http_server_client`` (real HTTP to the real app).
- ``server_process``: ``python run.py`` as a subprocess on a free port.
- ``ws``: connect real websocket subscribers to the app (``Client`` records what arrives).
- ``redis_queue``: settings overrides for a queue of one's own on the suite's Redis
  (``queue_url``, ``queue_name``); its keys are deleted after.
- ``postgres_database``/``postgres_url``: a PostgreSQL database of the run's own (dropped
  at the end), with an empty schema per test.
- ``throwaway_redis``: a ``redis-server`` of the test's own, to stop and start for real.
- ``throwaway_postgres``: a PostgreSQL cluster of the test's own, to stop and start for real.
- ``tmpfs``: mount a real, small file system (to fill a disk for real).
- Any ERROR log from HealthSync or Tornado fails the test unless it is marked
  ``expect_error_logs``: a 500 can never pass unnoticed.
"""

from __future__ import annotations

import inspect
import logging
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from tests.support import ROOT

sys.path.insert(0, str(ROOT))  # the top-level ``settings`` module

import settings as settings_mod  # noqa: E402
from healthsync.app import make_app  # noqa: E402
from tests.support import postgres as pg  # noqa: E402
from tests.support.http import Api  # noqa: E402
from tests.support.redis import ThrowawayRedis, delete_queue_keys, ping, test_redis_url, unique_queue_name  # noqa: E402
from tests.support.servers import ServerProcess, make_settings  # noqa: E402
from tests.support.ws import Client, ws_url  # noqa: E402


def pytest_report_header(config: Any) -> str:
    return f"sqlite {sqlite3.sqlite_version}"


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "expect_error_logs: the test expects ERROR logs")
    config.addinivalue_line("markers", "both_backends: run the test on SQLite and on PostgreSQL")
    config.addinivalue_line("markers", "sqlite_only: in a both_backends module, this test runs on SQLite only")
    config.addinivalue_line("markers", "postgres_only: in a both_backends module, this test runs on PostgreSQL only")


BACKENDS = ("sqlite", "postgres")


def pytest_generate_tests(metafunc: Any) -> None:
    module_marks = getattr(metafunc.module, "pytestmark", [])
    names = {m.name for m in metafunc.definition.iter_markers()}
    names |= {m.name for m in (module_marks if isinstance(module_marks, list) else [module_marks])}
    if "both_backends" not in names:
        return
    backends = ["sqlite"] if "sqlite_only" in names else ["postgres"] if "postgres_only" in names else list(BACKENDS)
    if "backend" not in metafunc.fixturenames:
        # ``api`` reaches ``app`` and ``settings`` only at run time (pytest-tornasync)
        metafunc.fixturenames.append("backend")
    metafunc.parametrize("backend", backends, indirect=True)


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


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """``sqlite`` or ``postgres``: the storage ``settings`` names (see ``both_backends``)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest) -> str:
    """The ``database_url`` setting of the test's backend: empty (SQLite in the data dir) or
    the test's own PostgreSQL schema."""
    return str(request.getfixturevalue("postgres_url")) if backend == "postgres" else ""


@pytest.fixture
def settings_with(data_dir: Path, database_url: str) -> Callable[..., settings_mod.Settings]:
    """A factory: ``settings_with(**overrides)`` (optionally ``data_dir=``) gives test settings
    on the test's backend; what a module's own ``settings`` fixture builds on."""

    def make(data_dir: Path = data_dir, **overrides: Any) -> settings_mod.Settings:
        overrides.setdefault("database_url", database_url)
        return make_settings(data_dir, **overrides)

    return make


@pytest.fixture
def settings(settings_with: Callable[..., settings_mod.Settings]) -> settings_mod.Settings:
    return settings_with()


@pytest.fixture
def app(settings: settings_mod.Settings, io_loop: Any) -> Iterator[Any]:
    application = make_app(settings)
    io_loop.run_sync(application.startup)
    yield application
    io_loop.run_sync(application.shutdown)


@pytest.fixture
def api(http_server_client: Any) -> Api:
    return Api(http_server_client)


@pytest.fixture
def ws(http_server_client: Any) -> Iterator[Callable[..., Awaitable[Client]]]:
    """A factory: ``await ws(query, headers)`` opens a subscriber, past its hello; all closed after."""
    opened: list[Client] = []

    async def connect(query: str = "cursor=0", headers: dict[str, str] | None = None) -> Client:
        conn = await websocket_connect(HTTPRequest(ws_url(http_server_client, query), headers=headers or {}))
        client = Client(conn)
        opened.append(client)
        hello = await client.next()
        assert hello["type"] == "hello"
        return client

    yield connect
    for client in opened:
        client.close()


@pytest.fixture
def server_process(tmp_path: Path, database_url: str) -> Iterator[Any]:
    """A factory: ``server_process(*args)`` starts ``run.py`` on the test's backend
    (``--database-url`` on PostgreSQL); all are stopped after."""
    started: list[ServerProcess] = []

    def start(*args: str, data_dir: Path | None = None, env: dict[str, str] | None = None) -> ServerProcess:
        proc = ServerProcess(data_dir or tmp_path / "data", *args, env=env, database_url=database_url).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()
    for proc in started:
        # A server-side error behind a failing test shows in its report (captured stderr).
        if any(" ERROR " in line for line in proc.log):
            print(f"--- {' '.join(proc.args) or 'serve'} ({proc.data_dir}) logged errors:", file=sys.stderr)
            print("".join(proc.log), file=sys.stderr)


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


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """The URL of a database of this test run's own on the suite's PostgreSQL
    (``HEALTHSYNC_TEST_POSTGRES_URL``, default 127.0.0.1:5432, user postgres),
    dropped at the end of the run.  Fails, saying what to install, when none answers."""
    why = pg.unreachable()
    if why is not None:
        pytest.fail(why)
    name, url = pg.create_database()
    try:
        yield url
    finally:
        pg.drop_database(name)


@pytest.fixture
def postgres_url(postgres_database: str) -> str:
    """The run's PostgreSQL database with an empty schema: this test's alone."""
    pg.empty_schema(postgres_database)
    return postgres_database


@pytest.fixture
def redis_queue() -> Iterator[dict[str, str]]:
    """``{"queue_url": ..., "queue_name": ...}``: a queue of this test's own on the suite's
    Redis (``HEALTHSYNC_TEST_REDIS_URL``, default 127.0.0.1:6379, db 15); its keys are deleted after."""
    url = test_redis_url()
    why = ping(url)
    if why is not None:
        pytest.fail(f"the tests need Redis at {url} ({why}): run tests/run.sh, which starts one, "
                    "or set HEALTHSYNC_TEST_REDIS_URL")
    name = unique_queue_name()
    yield {"queue_url": url, "queue_name": name}
    delete_queue_keys(url, name)


@pytest.fixture
def throwaway_redis() -> Iterator[ThrowawayRedis]:
    """A started ``redis-server`` of this test's own (killed after); skips without the binary."""
    if not ThrowawayRedis.available():
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    server = ThrowawayRedis().start()
    yield server
    server.kill()


@pytest.fixture
def throwaway_postgres() -> Iterator[pg.ThrowawayPostgres]:
    """A started PostgreSQL cluster of this test's own (removed after); skips without ``initdb``."""
    why = pg.ThrowawayPostgres.unavailable()
    if why is not None:
        pytest.skip(f"cannot make a PostgreSQL of the test's own: {why}")
    cluster = pg.ThrowawayPostgres().start()
    yield cluster
    cluster.destroy()


@pytest.fixture
def make_queue() -> Iterator[Any]:
    """A factory: ``make_queue(settings)`` is ``make_huey(settings)``, its connections
    closed after the test (a Redis pool left open is a socket left to the GC)."""
    from healthsync.batches import close_queue
    from healthsync.tasks import make_huey

    made: list[Any] = []

    def make(settings: Any) -> Any:
        made.append(make_huey(settings))
        return made[-1]

    yield make
    for huey in made:
        close_queue(huey)
