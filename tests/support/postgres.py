"""PostgreSQL for the storage tests: a database of the test run's own on the
suite's server, dropped at the end, and a clean schema per test.

The suite's server is ``HEALTHSYNC_TEST_POSTGRES_URL`` (``tests/run.sh``
exports it when it starts a throwaway one), else
``postgresql://postgres@127.0.0.1:5432/postgres``.  The run's database is
``hs_test_<pid>_<random>``; nothing else on the server is touched.

``ThrowawayPostgres`` is a cluster of a test's own (``initdb``/``pg_ctl`` into a
temp dir, as ``tests/run.sh`` starts one), for the tests that stop and start
PostgreSQL for real.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
MISSING = (
    "the storage contract runs against a real PostgreSQL: none answers at {url} ({error}). "
    "Run the tests with tests/run.sh (it starts a throwaway one, installing Debian's postgresql "
    "package if needed), or install PostgreSQL (apt-get install postgresql) and run it on "
    "127.0.0.1:5432 with user postgres and trust, or set HEALTHSYNC_TEST_POSTGRES_URL"
)


def server_url() -> str:
    return os.environ.get("HEALTHSYNC_TEST_POSTGRES_URL") or DEFAULT_URL


def _with_dbname(url: str, dbname: str) -> str:
    """``url`` naming database ``dbname`` instead: a ``postgresql://`` URL (the form
    ``database_url`` takes), whatever form the suite's server URL has."""
    if url.startswith(("postgresql://", "postgres://")):
        return urlunsplit(urlsplit(url)._replace(path="/" + dbname))
    info = psycopg.conninfo.conninfo_to_dict(url)
    query = "&".join(f"{k}={quote(str(v))}" for k, v in info.items() if k not in ("user", "password", "host",
                                                                                "port", "dbname"))
    auth = quote(str(info.get("user", ""))) + (":" + quote(str(info["password"])) if info.get("password") else "")
    netloc = (auth + "@" if auth else "") + str(info.get("host", "")) + (f":{info['port']}" if info.get("port") else "")
    return urlunsplit(("postgresql", netloc, "/" + dbname, query, ""))


def unreachable() -> str | None:
    """Why the suite's server cannot be used, or None when it answers."""
    try:
        with psycopg.connect(server_url(), connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return MISSING.format(url=server_url(), error=str(exc).strip().splitlines()[0] if str(exc) else exc)


def create_database() -> tuple[str, str]:
    """A new empty database of this run's own: (its name, its URL)."""
    name = f"hs_test_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(server_url(), autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name, _with_dbname(server_url(), name)


def drop_database(name: str) -> None:
    """Drop the run's database, closing whatever still uses it."""
    with psycopg.connect(server_url(), autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def empty_schema(url: str) -> None:
    """Drop everything in the database's ``public`` schema: the next open migrates afresh."""
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")


# A cluster of the test's own, to stop and start for real ------------------------------------


def bindir() -> Path | None:
    """Where Debian keeps ``initdb`` and ``pg_ctl`` (off PATH), the newest version's; or PATH's."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
                   if p.parent.parent.name.isdigit() else 0)
    return found[-1].parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThrowawayPostgres:
    """A PostgreSQL cluster of its own (``initdb`` into a temp dir, ``fsync=off``, a free
    port on 127.0.0.1, user postgres with trust), to stop and start under load:
    ``start``, ``stop``, ``start`` again (same port, same data), ``destroy`` at the end.
    Run as user postgres when the tests run as root (``initdb`` refuses root), as
    ``tests/run.sh`` does."""

    def __init__(self) -> None:
        self.bin = bindir()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="healthsync-pg-"))  # not under pytest's root-only tmp
        self.data = self.dir / "data"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]

    @staticmethod
    def unavailable() -> str | None:
        """Why no cluster can be made here, or None."""
        if bindir() is None:
            return "initdb is not installed (Debian package postgresql)"
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                return "running as root and there is no user postgres to run initdb as"
        return None

    @property
    def server_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        assert self.bin is not None
        cmd = [*self.as_user, str(self.bin / args[0]), *args[1:]]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            server_log = self.dir / "server.log"
            log = server_log.read_text(errors="replace")[-2000:] if server_log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed: {result.stderr.strip()}\n{log}")

    def start(self) -> ThrowawayPostgres:
        if not self.data.exists():
            self._run("initdb", "-U", "postgres", "-A", "trust", "-D", str(self.data), "--no-sync")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "server.log"), "-w", "-t", "30",
                  "-o", f"-F -p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m fast`` (sessions cut, a clean shutdown) or ``immediate`` (a crash)."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def create_database(self, name: str = "healthsync") -> str:
        """A new database on this cluster: its URL."""
        with psycopg.connect(self.server_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return _with_dbname(self.server_url, name)

    def destroy(self) -> None:
        """Stop it (immediately) and remove its files."""
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
