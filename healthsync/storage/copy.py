"""``run.py copy-data SOURCE TARGET``: a whole HealthSync database from one
backend to the other (a SQLite data dir, a ``postgresql://`` URL), everything kept.

What is copied: every table of the data (patients, records and their
tombstones, conflicts, batches with their stored requests and responses,
temp-id maps, devices and their cursors, tokens, audit) and the clock row
(``seq``, the last ``updated_at``, the purge horizon), with the page keys
(SQLite's ``rowid``, PostgreSQL's ``pk``) and the tokens' and audit rows' ids.
Devices' cursors and ``since`` stay valid, a retried batch gets its stored
answer, a retried create its first server id, and new writes continue after
the old head.  Huey's queue is not data: a batch's truth is its row (a
``pending`` batch is triggered again on the new site, one left
``processing`` is re-queued by the lease).

No value changes form: the PostgreSQL schema stores what SQLite stores
(timestamps as canonical UTC text, JSON documents as the text written,
flags as 0/1), so each value is only normalised to its column's kind (an
integer or a text) on the way.

Safety, in order:
- the source is read in one snapshot (SQLite: one read transaction on a
  read-only connection; PostgreSQL: one ``REPEATABLE READ READ ONLY``
  transaction) and never written; a SQLite data dir in use by a server or
  worker is refused (changes made after the snapshot would be left behind);
- the target is migrated if new, then written in one transaction that first
  takes its write lock (SQLite ``BEGIN IMMEDIATE``, PostgreSQL the clock row
  ``FOR UPDATE``), in which it must be empty (refused otherwise); rows go in
  bulk (``COPY`` on PostgreSQL, ``executemany`` on SQLite);
- before the commit, each table's row count and a checksum of its content
  (rows in a backend-neutral order, values normalised) are compared with the
  source's; any difference, or any error, rolls the transaction back, so a
  failed copy leaves the target as empty as it was.

Blocking code (``sqlite3`` and psycopg's sync connection): the command runs
alone, not on the server's event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import orjson

from ..errors import HealthSyncError

DB_FILE = "healthsync.db"
CHUNK = 5_000


class CopyRefused(HealthSyncError):
    """The copy was not started: a source or target that cannot be used as given."""

    status = 400


class CopyFailed(HealthSyncError):
    """The copy started and did not finish (or did not check): the target was left as it was."""

    status = 500


@dataclass(frozen=True)
class Table:
    """One table to copy: its columns (``pk``: the page key, SQLite's ``rowid``),
    which of them are integers, the order rows are read and checked in, and
    PostgreSQL's identity column (whose sequence must continue after the copy)."""

    name: str
    columns: tuple[str, ...]
    ints: frozenset[str]
    order: tuple[str, ...]
    identity: str | None = None


def _table(name: str, columns: str, ints: str, order: str, identity: str | None = None) -> Table:
    return Table(name, tuple(columns.split()), frozenset(ints.split()), tuple(order.split()), identity)


#: Parents before children (records name their patient).
TABLES: tuple[Table, ...] = (
    _table("patients", "pk id owner name dob identifiers fhir server_version updated_at seq deleted created_at",
           "pk server_version seq deleted", "pk", "pk"),
    _table("records", "pk id patient resource_type data server_version updated_at seq deleted created_at",
           "pk server_version seq deleted", "pk", "pk"),
    _table("batches", "pk id device_id status change_count request response error attempts task_id created_at"
           " claimed_at finished_at updated_at worker heartbeat_at", "pk change_count attempts", "pk", "pk"),
    _table("temp_ids", "device_id client_temp_id server_id resource_type", "", "device_id client_temp_id"),
    _table("conflicts", "pk id batch_id device_id server_id resource_type reason change server_copy created_at"
           " resolved resolved_at resolution", "pk resolved", "pk", "pk"),
    _table("devices", "device_id first_seen last_seen last_upload_at last_download_at last_cursor",
           "last_cursor", "device_id"),
    _table("tokens", "id name role hash created_at revoked_at", "id", "id", "id"),
    _table("audit", "id at who role method path query status remote_ip", "id status", "id", "id"),
)
#: The clock row's columns both backends have (PostgreSQL's ``commits`` is its commit signal, not data).
CLOCK = _table("clock", "seq last_us purged_seq purged_at", "seq last_us purged_seq", "seq")


def normalise(table: Table, row: Iterable[Any]) -> tuple[Any, ...]:
    """``row`` with each value in its column's kind: int, str or None.

    SQLite stores a value of another type when it cannot convert it (a text
    in an integer column, a blob anywhere): such a row is not copied into a
    different form silently, it stops the copy (``CopyFailed``, naming it).
    """
    out = []
    for c, v in zip(table.columns, row, strict=True):
        if v is None or (type(v) is int if c in table.ints else type(v) is str):
            out.append(v)
        elif c in table.ints and isinstance(v, float) and v.is_integer():
            out.append(int(v))
        else:
            kind = "an integer" if c in table.ints else "a text"
            raise CopyFailed(f"{table.name}: column {c} holds {str(v)[:60]!r}, not {kind}")
    return tuple(out)


class Checksum:
    """A row count and a SHA-256 over the rows (normalised, in the table's order)."""

    def __init__(self) -> None:
        self.count = 0
        self._hash = hashlib.sha256()

    def add(self, row: tuple[Any, ...]) -> None:
        self.count += 1
        self._hash.update(orjson.dumps(row))
        self._hash.update(b"\n")

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()


def redact(where: str) -> str:
    """A source or target for a message: a URL without its password."""
    if not where.startswith(("postgresql://", "postgres://")):
        return where
    parts = urlsplit(where)
    if parts.password is None:
        return where
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def is_url(where: str) -> bool:
    return where.startswith(("postgresql://", "postgres://"))


# Backends -----------------------------------------------------------------------------------


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


# The copy -----------------------------------------------------------------------------------


@dataclass
class Report:
    """What was copied and checked: per table (rows, checksum), and the clock row."""

    tables: dict[str, tuple[int, str]] = field(default_factory=dict)
    clock: tuple[Any, ...] = ()
    warnings: list[str] = field(default_factory=list)


def copy_data(source: str, target: str, progress: Callable[[str], None] = lambda _: None) -> Report:
    """Copy everything from ``source`` into the empty ``target`` (each a SQLite data
    dir or a ``postgresql://`` URL) and check it; the report of what was copied.

    ``CopyRefused``: a source that is not a HealthSync database at this schema,
    a data dir in use, a target not empty, the same place twice.  ``CopyFailed``:
    unreachable, an error while copying, or a check that did not match; the
    target's transaction is rolled back, so it is left as empty as it was.
    """
    if _same(source, target):
        raise CopyRefused("the source and the target are the same place")
    report = Report()
    src = open_side(source, write=False)
    try:
        if src.others:
            report.warnings.append(
                f"{src.label} has {src.others} other connection(s): if a server still writes to it, what it"
                " writes from now on is not copied (stop the servers first)"
            )
        tgt = open_side(target, write=True)
        try:
            _refuse_unless_empty(tgt)
            if tgt.others:
                report.warnings.append(f"{tgt.label} has {tgt.others} other connection(s); they wait for the copy")
            for message in report.warnings:
                progress(f"warning: {message}")
            sums = _copy_tables(src, tgt, progress)
            report.clock = tuple(normalise(CLOCK, src.clock()))
            tgt.set_clock(report.clock)
            tgt.finish()
            _check(tgt, sums, report, progress)
            tgt.commit()
        except CopyRefused:
            raise
        except Exception as exc:
            why = exc.message if isinstance(exc, HealthSyncError) else _first_line(exc)
            raise CopyFailed(f"the copy into {tgt.label} failed and was undone (the target is left empty): "
                             f"{why}") from exc
        finally:
            tgt.close()
    finally:
        src.close()
    return report


def _same(source: str, target: str) -> bool:
    if is_url(source) or is_url(target):
        return source == target
    return Path(source).resolve() == Path(target).resolve()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _refuse_unless_empty(tgt: Target) -> None:
    """Inside the target's write transaction: no row in any table, and the clock at 0."""
    filled = [f"{t.name} ({n})" for t in TABLES if (n := tgt.count(t))]
    if filled or int(tgt.clock()[0]) != 0:
        raise CopyRefused(
            f"the target {tgt.label} is not empty ({', '.join(filled) or 'its clock has moved'}):"
            " copy-data only fills a new or freshly migrated database; nothing was changed"
        )


def _copy_tables(src: Side, tgt: Target, progress: Callable[[str], None]) -> dict[str, Checksum]:
    sums: dict[str, Checksum] = {}
    for table in TABLES:
        total = src.count(table)
        checksum = sums[table.name] = Checksum()
        chunk: list[tuple[Any, ...]] = []
        for raw in src.rows(table):
            row = normalise(table, raw)
            checksum.add(row)
            chunk.append(row)
            if len(chunk) >= CHUNK:
                tgt.insert(table, chunk)
                chunk = []
                progress(f"{table.name}: {checksum.count}/{total} rows")
        if chunk:
            tgt.insert(table, chunk)
        progress(f"{table.name}: {checksum.count}/{total} rows copied")
        if checksum.count != total:  # cannot happen in one snapshot: say so loudly if it does
            raise CopyFailed(f"{table.name}: read {checksum.count} rows of {total} counted")
    return sums


def _check(tgt: Target, sums: dict[str, Checksum], report: Report, progress: Callable[[str], None]) -> None:
    """Read the target back (inside its transaction, before the commit) and compare."""
    bad: list[str] = []
    for table in TABLES:
        again = Checksum()
        for raw in tgt.rows(table):
            again.add(normalise(table, raw))
        want = sums[table.name]
        if (again.count, again.digest) != (want.count, want.digest):
            bad.append(f"{table.name} (source {want.count} rows, target {again.count}, checksums "
                       f"{want.digest[:12]} / {again.digest[:12]})")
        report.tables[table.name] = (want.count, want.digest)
    if normalise(CLOCK, tgt.clock()) != report.clock:
        bad.append("clock")
    if bad:
        raise CopyFailed("the check found differences: " + "; ".join(bad))
    progress("checked: " + ", ".join(f"{name} {n}" for name, (n, _) in report.tables.items())
             + f"; clock seq {report.clock[0]}")
