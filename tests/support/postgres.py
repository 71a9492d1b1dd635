"""PostgreSQL for the storage tests: a database of the test run's own on the
suite's server, dropped at the end, and a clean schema per test.

The suite's server is ``HEALTHSYNC_TEST_POSTGRES_URL`` (``tests/run.sh``
exports it when it starts a throwaway one), else
``postgresql://postgres@127.0.0.1:5432/postgres``.  The run's database is
``hs_test_<pid>_<random>``; nothing else on the server is touched.
"""

from __future__ import annotations

import os
import secrets
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
