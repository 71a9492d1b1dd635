"""The command line: ``python run.py [serve|…] [flags]``, the same as the installed
``healthsync`` command (``console_main``) and ``python -m healthsync``.

``serve`` (the default) opens and migrates the database, listens, logs one
ready line (``listening on http://HOST:PORT``) and runs until SIGINT or
SIGTERM, then shuts down in order: stop accepting, let in-flight requests
finish, close the database.  Exit code 0 on a clean stop, 2 on a bad setting.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from . import settings as settings_mod
from .settings import Settings, SettingsError

log = logging.getLogger("healthsync")
# The ready line is what operators, service managers and tests wait for: it is
# logged at any ``log_level`` (this logger's own level lets it through).
ready_log = logging.getLogger("healthsync.ready")

SHUTDOWN_GRACE_SECONDS = 10.0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="folder holding the database files (default ./data)")
    parser.add_argument(
        "--database-url", help="the data: empty = SQLite in the data dir, or postgresql://user:pass@host:port/db"
    )
    parser.add_argument("--queue-url", help="task queue: empty = the database's own (SQLite in the data dir, or the "
                        "PostgreSQL database), redis://host:port/n, or postgresql://…")
    parser.add_argument("--queue-name", help="the site's queue name (default: healthsync in the site's PostgreSQL "
                        "database, else from the data dir)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument("--log-format", choices=["text", "json"], help="text (default) or json lines")


def build_parser(prog: str = "run.py") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="HealthSync: the clinic sync server.  Every flag also has a "
        "HEALTHSYNC_<NAME> environment variable; flags win.",
    )
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="serve the API, the websocket and the dashboard (default)")
    _serve_flags(serve)
    worker = sub.add_parser("worker", help="run a Huey consumer alone, beside a server on the same data dir")
    _common(worker)
    worker.add_argument("--worker-threads", type=int, help="consumer threads (default 2)")

    token = sub.add_parser("token", help="create, list or revoke access tokens (token auth mode)")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser(
        "create",
        help="create a token and print it once",
        description="Create a token and print it once; only its hash is stored. Examples: "
        "`run.py token create --role device --name tablet-7` (the name is the device id), "
        "`run.py token create --role dashboard --name front-desk`, "
        "`run.py token create --role admin --name it`.",
    )
    _common(create)
    create.add_argument("--role", required=True, choices=["device", "dashboard", "admin"])
    create.add_argument("--name", required=True, help="who holds it; for a device, its device id")
    listing = token_sub.add_parser("list", help="list tokens (names, roles, dates; never secrets)")
    _common(listing)
    revoke = token_sub.add_parser("revoke", help="revoke the live token with this name")
    _common(revoke)
    revoke.add_argument("name")
    mig = sub.add_parser("migrate", help="bring the database's schema up to date, and nothing else")
    _common(mig)
    back = sub.add_parser("backup", help="a consistent copy of the live database (the server keeps serving)")
    _common(back)
    back.add_argument("dest", help="a file, or a folder that gets a timestamped file")
    rest = sub.add_parser("restore", help="put a backup back (refused while a server uses the data dir)")
    _common(rest)
    rest.add_argument("src", help="the backup file")
    copy = sub.add_parser(
        "copy-data",
        help="copy a whole database into an empty one: a SQLite data dir to PostgreSQL, or back",
        description="Copy everything (patients, records, tombstones, conflicts, batches, temp ids, devices, "
        "tokens, audit, the clock) from SOURCE into TARGET, each a SQLite data dir or a postgresql:// URL, "
        "and check the copy (row counts and checksums per table).  TARGET must be new or empty; stop the "
        "servers and workers on both first.  Huey's queue is not copied.  Exit code 0 when copied and "
        "checked, 2 when refused (nothing done), 1 when the copy failed (the target is left empty).  "
        "Example: `run.py copy-data /var/lib/healthsync postgresql://healthsync@db/healthsync`.",
    )
    copy.add_argument("source", help="a data dir (the folder holding healthsync.db) or a postgresql:// URL")
    copy.add_argument("target", help="a new or empty data dir, or an empty (or new schema) postgresql:// URL")
    copy.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    demo = sub.add_parser("demo", help="fill a data dir with realistic demo data; --live plays tablets syncing")
    _common(demo)
    demo.add_argument("--patients", type=int, default=200, help="patients to create (default 200)")
    demo.add_argument("--seed", type=int, help="random seed, for the same data every time")
    demo.add_argument("--live", action="store_true", help="then play tablets syncing with a running server")
    demo.add_argument("--url", default="http://127.0.0.1:8000", help="the running server, for --live")
    demo.add_argument("--token", help="a device or admin token, for --live in token mode")
    demo.add_argument("--devices", type=int, default=3, help="tablets to play (default 3)")
    demo.add_argument("--seconds", type=float, help="stop --live after this long (default: until Ctrl-C)")
    return parser


def _serve_flags(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8000; 0 picks a free one)")
    parser.add_argument("--auth", choices=["auto", "open", "token"], help="authentication mode")
    parser.add_argument(
        "--allow-open-network",
        action="store_true",
        default=None,
        help="let --auth open serve on a non-loopback address (logged loudly)",
    )
    parser.add_argument(
        "--trust-proxy-headers",
        action="store_true",
        default=None,
        help="take clients' addresses from X-Real-Ip / X-Forwarded-For (only behind a proxy)",
    )
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL"], help="SQLite synchronous pragma")
    parser.add_argument(
        "--no-worker",
        dest="embedded_worker",
        action="store_false",
        default=None,
        help="no in-process Huey consumer (run `run.py worker` beside it instead)",
    )


def parse_args(argv: Sequence[str], prog: str = "run.py") -> argparse.Namespace:
    parser = build_parser(prog)
    argv = list(argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["serve", *argv]
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["serve", *argv])
    return args


def load_settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for name in Settings.model_fields:
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return settings_mod.load(overrides=overrides)


ACCESS_FIELDS = ("method", "path", "status", "duration_ms", "token", "remote_ip")


class UtcFormatter(logging.Formatter):
    """Text lines stamped in UTC, in the API's canonical form, like ``updated_at``."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        from . import clock

        return clock.format_us(round(record.created * 1_000_000))


class JsonFormatter(UtcFormatter):
    """One JSON object per line: time, level, logger, message, and access fields.

    ``time`` is UTC in the API's canonical form (``2025-09-12T19:25:18.331000Z``),
    whatever the machine's time zone, so log lines line up with ``updated_at``.
    """

    def format(self, record: logging.LogRecord) -> str:
        import orjson

        out = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ACCESS_FIELDS:
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            # exc_text, when set, is the redacted one (``RedactingFilter``)
            out["exception"] = record.exc_text or self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


def setup_logging(level: str, fmt: str = "text") -> None:
    from .redact import RedactingFilter

    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())  # no token-shaped text in any line, whoever logs it
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(UtcFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    ready_log.setLevel(logging.INFO)


def main(argv: Sequence[str], prog: str = "run.py") -> int:
    """Run one command; ``prog`` is the name ``--help`` and usage errors show."""
    args = parse_args(argv, prog)
    try:
        settings = load_settings(args)
    except SettingsError as exc:
        print(f"healthsync: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    if args.command == "serve":
        return asyncio.run(serve(settings))
    if args.command == "worker":
        return worker(settings)
    if args.command == "token":
        return asyncio.run(token_command(settings, args))
    if args.command == "migrate":
        return asyncio.run(migrate_command(settings))
    if args.command in ("backup", "restore"):
        return backup_command(settings, args)
    if args.command == "demo":
        return demo_command(settings, args)
    if args.command == "copy-data":
        return copy_data_command(args)
    raise AssertionError(args.command)


def console_main() -> int:
    """The ``healthsync`` command that ``pip install .`` puts on the PATH."""
    return main(sys.argv[1:], prog="healthsync")


async def token_command(settings: Settings, args: argparse.Namespace) -> int:
    """``run.py token create|list|revoke``: works on a fresh data dir too."""
    from .auth import Tokens
    from .errors import HealthSyncError
    from .storage import make_storage

    db = make_storage(settings, worker=True)
    try:
        tokens = Tokens(db)
        if args.token_command == "create":
            secret = await tokens.create(args.name, args.role)
            print(secret)
            print(f"created {args.role} token {args.name!r}: it is shown only this once", file=sys.stderr)
        elif args.token_command == "list":
            for t in await tokens.list():
                state = f"revoked {t['revoked_at']}" if t["revoked_at"] else "live"
                print(f"{t['name']}\t{t['role']}\tcreated {t['created_at']}\t{state}")
        else:
            await tokens.revoke(args.name)
            print(f"revoked token {args.name!r}", file=sys.stderr)
        return 0
    except HealthSyncError as exc:
        print(f"healthsync: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await db.close()


async def migrate_command(settings: Settings) -> int:
    """``run.py migrate``: what ``serve`` and ``worker`` do on start, alone (for an
    upgrade run before the servers start); a database newer than this code is refused."""
    from .errors import HealthSyncError
    from .storage import make_storage

    db = make_storage(settings, worker=True)
    try:
        version = await db.migrate()
    except HealthSyncError as exc:
        print(f"healthsync: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await db.close()
    print(f"{_where(settings)}: schema version {version}, up to date", file=sys.stderr)
    return 0


def _where(settings: Settings) -> str:
    """The database ``settings`` name, for a message (a PostgreSQL URL without its password)."""
    if settings.database_url:
        from .redact import redact_url

        return redact_url(settings.database_url)
    return str(settings.db_path)


def backup_command(settings: Settings, args: argparse.Namespace) -> int:
    """``run.py backup DEST`` / ``run.py restore SRC``; both verified with integrity_check."""
    from .errors import HealthSyncError

    try:
        return asyncio.run(_backup_or_restore(settings, args))
    except HealthSyncError as exc:
        print(f"healthsync: {exc.message}", file=sys.stderr)
        return 1


async def _backup_or_restore(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from .storage import make_storage

    db = make_storage(settings, worker=True)
    try:
        if args.command == "backup":
            dest = await db.backup(Path(args.dest))
            print(dest)
            print(f"backed up {settings.db_path} to {dest} (integrity check ok)", file=sys.stderr)
        else:
            await db.restore(Path(args.src))
            print(f"restored {args.src} into {settings.db_path}", file=sys.stderr)
    finally:
        await db.close()
    return 0


def copy_data_command(args: argparse.Namespace) -> int:
    """``run.py copy-data SOURCE TARGET``: progress and the check on stderr; exit 0
    copied and checked, 2 refused (nothing done), 1 failed (the target left empty)."""
    from .errors import HealthSyncError
    from .storage.copy import CopyRefused, copy_data, redact

    def progress(line: str) -> None:
        print(f"copy-data: {line}", file=sys.stderr, flush=True)

    source, target = args.source, args.target
    progress(f"copying {redact(source)} into {redact(target)}")
    try:
        copy_data(source, target, progress)
    except CopyRefused as exc:
        print(f"healthsync: {exc.message}", file=sys.stderr)
        return 2
    except HealthSyncError as exc:
        print(f"healthsync: {exc.message}", file=sys.stderr)
        return 1
    progress(f"done: {redact(target)} holds a checked copy of {redact(source)}")
    return 0


def demo_command(settings: Settings, args: argparse.Namespace) -> int:
    from . import demo

    if args.patients > 0:
        print(f"writing {args.patients} demo patients into {_where(settings)}", file=sys.stderr)
        changes = demo.run_fill(settings, args.patients, args.seed)
        print(f"wrote {changes} changes", file=sys.stderr)
    if args.live:
        try:
            demo.live(args.url.rstrip("/"), args.token, args.devices, args.seconds, args.seed)
        except KeyboardInterrupt:
            pass
        except OSError as exc:
            print(f"healthsync: cannot reach {args.url}: {exc}", file=sys.stderr)
            return 1
    return 0


def worker(settings: Settings) -> int:
    """``run.py worker``: a Huey consumer alone until SIGINT or SIGTERM (exit 0)."""
    import threading

    from .tasks import run_worker

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return run_worker(settings, stop)


def check_exposure(settings: Settings) -> str | None:
    """Why ``settings`` must not serve, or None.  Open mode off loopback needs the opt-out."""
    if settings.auth_mode == "open" and not settings.on_loopback:
        if not settings.allow_open_network:
            return (
                f"refusing to serve patient data without authentication on {settings.host}: "
                "use --auth token, or add --allow-open-network to accept the risk"
            )
        log.warning(
            "SERVING WITHOUT AUTHENTICATION ON %s (--allow-open-network): anyone on the "
            "network can read and change patient data",
            settings.host,
        )
    return None


async def serve(settings: Settings) -> int:
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    from .app import make_app
    from .web.base import tornado_body_limit

    problem = check_exposure(settings)
    if problem:
        log.error("%s", problem)
        return 2
    app = make_app(settings)
    await app.startup()
    # Everything built so far lives as long as the process: keep the cyclic
    # GC from walking it again on every collection during large uploads.
    gc.collect()
    gc.freeze()
    # No decompress_request: a gzip body (Content-Encoding: gzip) is inflated by the
    # handlers as it arrives, with max_body_bytes on the inflated size (web/base.py),
    # the same under the tests' server as here.
    server = HTTPServer(
        app, max_body_size=tornado_body_limit(settings.max_body_bytes), xheaders=settings.trust_proxy_headers
    )
    try:
        sockets = bind_sockets(settings.port, settings.host)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", settings.host, settings.port, exc)
        await app.shutdown()
        return 1
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    host = settings.host if ":" not in settings.host else f"[{settings.host}]"
    ready_log.info("listening on http://%s:%d", host, port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    server.stop()
    await app.drain(SHUTDOWN_GRACE_SECONDS)
    # Close the kept-alive HTTP connections while the database is still open:
    # a request sent on one meanwhile is answered, not refused with a 503.
    # (Websockets are not among them; the hub closes them in shutdown.)
    try:
        await asyncio.wait_for(server.close_all_connections(), 5)
    except TimeoutError:
        log.warning("some connections did not close in time")
    await app.shutdown()
    log.info("stopped")
    return 0
