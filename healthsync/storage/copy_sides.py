"""The two ends of ``run.py copy-data`` (see ``storage.copy``): a SQLite data
dir through ``sqlite3``, a PostgreSQL database through psycopg's sync
connection, each open in its one transaction, as a source (a snapshot, never
written) or a target (migrated, locked, written in bulk, kept only on
``commit``).  Blocking code: the command runs alone.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from ..errors import HealthSyncError
from .copy_tables import CHUNK, CLOCK, DB_FILE, TABLES, CopyFailed, CopyRefused, Table, is_url, redact


class Side(Protocol):
    """One end of the copy, open in its one transaction: what it is called in
    messages, how many other sessions use it (PostgreSQL only: SQLite refuses
    a data dir in use), and its tables read in each table's order."""

    label: str
    others: int

    def count(self, table: Table) -> int: ...

    def rows(self, table: Table) -> Iterator[tuple[Any, ...]]: ...

    def clock(self) -> tuple[Any, ...]: ...

    def close(self) -> None: ...


class Target(Side, Protocol):
    """A side open for writing, inside its write lock; nothing is kept before ``commit``."""

    def insert(self, table: Table, rows: list[tuple[Any, ...]]) -> None: ...

    def set_clock(self, values: tuple[Any, ...]) -> None: ...

    def finish(self) -> None: ...

    def commit(self) -> None: ...


def _select(table: Table, pk: str, text_order: str = "") -> str:
    cols = ", ".join(pk if c == "pk" else c for c in table.columns)
    order = ", ".join(
        (pk if c == "pk" else c) + ("" if c in table.ints else text_order) for c in table.order
    )
    return f"SELECT {cols} FROM {table.name} ORDER BY {order}"


class SqliteSide:
    """A data dir's ``healthsync.db`` through ``sqlite3``: a source in one read
    transaction on a read-only connection, or a target in ``BEGIN IMMEDIATE``."""

    def __init__(self, data_dir: str, *, write: bool) -> None:
        from .sqlite.backup import in_use
        from .sqlite.migrations import LATEST

        self.path = Path(data_dir) / DB_FILE
        self.label = data_dir
        self.others = 0
        if not write:
            if not Path(data_dir).is_dir() or not self.path.is_file():
                raise CopyRefused(
                    f"{data_dir} is not a HealthSync data dir (no {DB_FILE} in it): give the folder a"
                    " server's --data-dir names, or a postgresql:// URL"
                )
        elif Path(data_dir).exists() and not Path(data_dir).is_dir():
            raise CopyRefused(f"{data_dir} is a file, not a data dir: give a folder (new or empty)")
        try:
            busy = in_use(self.path)
        except sqlite3.DatabaseError as exc:
            raise CopyRefused(f"{self.path} is not a HealthSync database: {exc}") from exc
        if busy:
            raise CopyRefused(
                f"{data_dir} is in use by a running server or worker: stop it first (a copy"
                f" {'from' if not write else 'into'} a live box would miss what it writes meanwhile)"
            )
        if write:
            asyncio.run(_migrate_sqlite(self.path))
            self.conn = sqlite3.connect(self.path, isolation_level=None, timeout=10)
            self.conn.execute("PRAGMA foreign_keys = ON")
            self.conn.execute("PRAGMA synchronous = FULL")
            self.conn.execute("BEGIN IMMEDIATE")
        else:
            self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None, timeout=10)
            self.conn.execute("BEGIN")
        try:
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            # The snapshot starts at the first read: everything after is one instant.
            self.conn.execute("SELECT seq FROM clock").fetchone()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise CopyRefused(f"{self.path} is not a HealthSync database: {exc}") from exc
        if version != LATEST:
            self.close()
            raise CopyRefused(_schema_message(data_dir, version, LATEST, f"--data-dir {data_dir}"))

    def count(self, table: Table) -> int:
        return int(self.conn.execute(f"SELECT count(*) FROM {table.name}").fetchone()[0])

    def rows(self, table: Table) -> Iterator[tuple[Any, ...]]:
        cur = self.conn.execute(_select(table, "rowid"))
        while batch := cur.fetchmany(CHUNK):
            yield from batch

    def clock(self) -> tuple[Any, ...]:
        return tuple(self.conn.execute(f"SELECT {', '.join(CLOCK.columns)} FROM clock WHERE id = 1").fetchone())

    def insert(self, table: Table, rows: list[tuple[Any, ...]]) -> None:
        cols = ", ".join("rowid" if c == "pk" else c for c in table.columns)
        marks = ", ".join("?" for _ in table.columns)
        self.conn.executemany(f"INSERT INTO {table.name} ({cols}) VALUES ({marks})", rows)

    def set_clock(self, values: tuple[Any, ...]) -> None:
        sets = ", ".join(f"{c} = ?" for c in CLOCK.columns)
        self.conn.execute(f"UPDATE clock SET {sets} WHERE id = 1", values)

    def finish(self) -> None:
        pass

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def close(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        self.conn.close()


class PostgresSide:
    """A PostgreSQL database through psycopg's sync connection: a source in one
    ``REPEATABLE READ READ ONLY`` transaction, or a target in one transaction
    that first locks the clock row (every writer of the site waits for it)."""

    def __init__(self, url: str, *, write: bool) -> None:
        import psycopg

        from .postgres.database import CONNECT_TIMEOUT_S, LOCK_TIMEOUT_MS
        from .postgres.schema import LATEST

        self.label = redact(url)
        self.others = 0
        if write:
            asyncio.run(_migrate_postgres(url, self.label))
        try:
            self.conn = psycopg.connect(
                url, connect_timeout=CONNECT_TIMEOUT_S, options=f"-c lock_timeout={LOCK_TIMEOUT_MS}"
            )
        except psycopg.Error as exc:
            raise CopyFailed(_unreachable(self.label, exc)) from exc
        try:
            if write:
                self.conn.execute("SELECT seq FROM clock WHERE id = 1 FOR UPDATE")
            else:
                self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                row = self.conn.execute(
                    "SELECT to_regclass('schema_version') IS NOT NULL AND to_regclass('clock') IS NOT NULL"
                ).fetchone()
                if not row or not row[0]:
                    raise CopyRefused(f"{self.label} holds no HealthSync database (no schema_version, no clock)")
                version = self.conn.execute("SELECT version FROM schema_version").fetchone()
                if version is None or version[0] != LATEST:
                    found = 0 if version is None else int(version[0])
                    raise CopyRefused(_schema_message(self.label, found, LATEST, "--database-url URL"))
                self.conn.execute("SELECT seq FROM clock WHERE id = 1").fetchone()  # the snapshot starts here
            self.others = self._one_int(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
            )
        except psycopg.errors.LockNotAvailable as exc:
            self.close()
            raise CopyFailed(f"{self.label} is busy: another process holds its write lock; stop the servers"
                             " on it and try again") from exc
        except BaseException:
            self.close()
            raise

    def _one_int(self, sql: str) -> int:
        row = self.conn.execute(sql).fetchone()  # type: ignore[call-overload]
        assert row is not None
        return int(row[0])

    def count(self, table: Table) -> int:
        return self._one_int(f"SELECT count(*) FROM {table.name}")

    def rows(self, table: Table) -> Iterator[tuple[Any, ...]]:
        # A server-side cursor: the table streams in pages, never whole in memory.
        with self.conn.cursor(name=f"copy_{table.name}") as cur:
            cur.itersize = CHUNK
            cur.execute(_select(table, "pk", ' COLLATE "C"'))  # the byte order SQLite's BINARY has
            yield from cur

    def clock(self) -> tuple[Any, ...]:
        row = self.conn.execute(f"SELECT {', '.join(CLOCK.columns)} FROM clock WHERE id = 1").fetchone()
        assert row is not None
        return tuple(row)

    def insert(self, table: Table, rows: list[tuple[Any, ...]]) -> None:
        # COPY takes values for identity columns as given (no OVERRIDING needed).
        with self.conn.cursor() as cur, cur.copy(
            f"COPY {table.name} ({', '.join(table.columns)}) FROM STDIN"
        ) as copy:
            for row in rows:
                copy.write_row(row)

    def set_clock(self, values: tuple[Any, ...]) -> None:
        sets = ", ".join(f"{c} = %s" for c in CLOCK.columns)
        self.conn.execute(f"UPDATE clock SET {sets}, commits = commits + 1 WHERE id = 1", values)  # type: ignore[arg-type]

    def finish(self) -> None:
        """Identity sequences continue after the ids copied in (COPY does not move them)."""
        for table in TABLES:
            if table.identity:
                self.conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', '{table.identity}'),"  # type: ignore[arg-type]
                    f" coalesce(max({table.identity}), 0) + 1, false) FROM {table.name}"
                )

    def commit(self) -> None:
        self.conn.commit()

    def close(self) -> None:
        if not self.conn.closed:
            self.conn.rollback()
            self.conn.close()


def _schema_message(where: str, found: int, latest: int, flag: str) -> str:
    if found > latest:
        return f"{where} has schema version {found}, newer than this HealthSync ({latest}): upgrade HealthSync"
    return (f"{where} has schema version {found}, this HealthSync copies version {latest}: run"
            f" `run.py migrate {flag}` on it first")


def _unreachable(label: str, exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"cannot reach the PostgreSQL database {label}: {first}"


async def _migrate_sqlite(path: Path) -> None:
    """Make (or bring up to date) the target file with the server's own open: WAL, migrations."""
    from .sqlite import Database

    db = Database(path, readers=1)
    try:
        await db.open()
    except HealthSyncError as exc:
        raise CopyFailed(f"cannot prepare {path}: {exc.message}") from exc
    finally:
        await db.close()


async def _migrate_postgres(url: str, label: str) -> None:
    """Migrate the target with the server's own migrations (under their advisory lock)."""
    import psycopg

    from ..errors import SchemaTooNew
    from .postgres.database import CONNECT_TIMEOUT_S
    from .postgres.schema import migrate

    try:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.Error as exc:
        raise CopyFailed(_unreachable(label, exc)) from exc
    try:
        await migrate(conn)
    except SchemaTooNew as exc:
        raise CopyRefused(f"{label}: {exc.message}") from exc
    except psycopg.Error as exc:
        raise CopyFailed(f"cannot prepare {label}: {exc}") from exc
    finally:
        await conn.close()


def open_side(where: str, *, write: bool) -> Target:
    """``where`` opened as a source (``write=False``: its snapshot) or a target (migrated, locked)."""
    return PostgresSide(where, write=write) if is_url(where) else SqliteSide(where, write=write)
