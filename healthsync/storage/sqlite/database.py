"""``Database``: the SQLite implementation of ``storage.interface.Storage``.

One SQLite file, one writer, a small pool of readers.  The named operations
(tokens, audit, batches, backups) come from the mixins beside this module;
this one owns the connections, the write path, reads and the commit signal.

Every mutation in HealthSync goes through :meth:`Database.write`, which runs a
coroutine function inside ``BEGIN IMMEDIATE`` … ``COMMIT`` on the single
writer connection.  Inside, :class:`WriteTx` hands out the change sequence
number ``seq`` and the ``updated_at`` stamp of every changed row.  Both come
from the ``clock`` row *of the database*, read and advanced inside the same
transaction, never from a counter in this process's memory: ``BEGIN
IMMEDIATE`` takes SQLite's write lock, so a second process (a Huey worker)
writing the same file waits its turn and continues the same sequence.

After the commit, every registered commit hook is called with a
:class:`CommitInfo` (the new high-water mark and any events the write
recorded); a failed write calls no hook.

Reads run on read-only connections, each call inside one read transaction, so
everything a call reads comes from one snapshot.  WAL mode means readers never
block the writer.

``commit_signal`` reads ``PRAGMA data_version`` on one read-only connection of
its own, opened on first use: the value counts the commits *that connection*
has noticed, so it is only comparable with earlier values from the same
connection, never across the pooled readers.

Checkpoints: by default SQLite copies the WAL back into the database file
inside the commit that takes the WAL past 1,000 pages, so that one write pays
for it (about half the commit of a 10,000-change upload).  With
``checkpoint_pages`` the writer's automatic checkpoint is off; after a commit
leaves at least that many pages not yet copied, a ``PASSIVE`` checkpoint runs
as a write of its own, queued behind the write lock like any other: the
write that crossed the line has already returned, no write of this process
shares the disk with it, and readers are never blocked.  The pages waiting
are read from the WAL-index header (the documented ``-shm`` format), so
deciding costs one ``pread`` per commit, not a query.

Faults of the machine become domain errors here, once for every caller:
SQLite's "database is locked" (another process held the write lock past
``busy_timeout_ms``) is raised as ``errors.Busy`` (503), "database or disk is
full" (and ``ENOSPC``) as ``errors.StorageFull`` (507), each logged as one
warning.  A write that meets either is rolled back whole and the writer
connection stays usable, so the server recovers by itself when the lock is
let go or space is freed.

Loop rules: all methods are coroutines for the event loop that opened the
database.  A different thread or process must open its own ``Database``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sqlite3
import struct
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from ...errors import Busy, HealthSyncError, StorageFull, Unreachable
from ..buckets import MemoryBuckets
from ..interface import CommitHook, CommitInfo, DatabaseClosed, call_commit_hooks
from .audit import AuditOps
from .backup import BackupOps
from .batches import BatchOps
from .migrations import migrate
from .snapshot import Snapshot
from .tokens import TokenOps
from .tx import WriteTx

log = logging.getLogger("healthsync.storage")

T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000

# SQLite's primary result codes (an extended code keeps them in its low byte).
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_FULL = 5, 6, 13

# The WAL-index header (https://www.sqlite.org/walformat.html), native byte order:
# iVersion at 0, mxFrame (frames in the WAL) at 16, nBackfill (frames already
# copied into the database file) at 96.
_WAL_INDEX_VERSION = 3007000
_WAL_INDEX_HEADER = 136


class Database(TokenOps, AuditOps, BatchOps, BackupOps):
    """One SQLite database file in WAL mode.  Open with :meth:`open`."""

    backend = "sqlite"
    #: Other processes' commits are noticed by polling ``commit_signal`` (cheap here).
    pushes_commits = False
    listening = False
    listen_reconnects = 0

    def __init__(
        self,
        path: Path | str,
        *,
        synchronous: str = "FULL",
        readers: int = 2,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
        checkpoint_pages: int = 0,
    ) -> None:
        self.path = Path(path)
        self.checkpoint_pages = checkpoint_pages  # 0: SQLite's own checkpoint, inside the commit
        self.busy_timeout_ms = busy_timeout_ms
        self.synchronous = synchronous
        self._reader_count = readers
        self._writer: aiosqlite.Connection | None = None
        self._readers: asyncio.Queue[aiosqlite.Connection] | None = None
        self._all_readers: list[aiosqlite.Connection] = []
        self._version_conn: aiosqlite.Connection | None = None  # commit_signal's own connection
        self._version_opening: asyncio.Future[None] | None = None
        self._version_lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()
        self._open_lock = asyncio.Lock()
        self._hooks: list[CommitHook] = []
        self._rate_buckets = MemoryBuckets()  # one process serves a box: its buckets are the site's
        self._closed = False
        self.schema_version = 0
        self._shm: int | None = None  # file descriptor of the WAL index, when checkpoints are ours
        self._checkpoint_task: asyncio.Task[None] | None = None
        self._checkpoint_floor = 0  # pages a checkpoint could not copy (a reader holds them)
        self.checkpoints = 0
        self._last_write = 0.0  # time.monotonic() when a write or checkpoint last let go of the writer

    # Lifecycle --------------------------------------------------------------

    async def open(self) -> Database:
        """Open the connections, set pragmas and migrate the schema (idempotent).

        ``Busy`` when another process holds the write lock past the busy
        timeout (a migration waits for it), ``StorageFull`` on a full disk.
        """
        if self._closed:
            raise DatabaseClosed(str(self.path))
        if self._writer is not None:
            return self
        async with self._open_lock:
            if self._writer is not None:
                return self
            try:
                await self._connect()
            except (sqlite3.Error, OSError) as exc:
                fault = machine_fault(exc)
                if fault is None:
                    raise
                log.warning("database not opened: %s (%s)", fault.message, exc)
                raise fault from exc
        return self

    async def migrate(self) -> int:
        """Open (which migrates) and return the schema version reached."""
        await self.open()
        return self.schema_version

    async def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = await aiosqlite.connect(self.path, isolation_level=None)
        readers: list[aiosqlite.Connection] = []
        try:
            await writer.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            mode = await (await writer.execute("PRAGMA journal_mode = WAL")).fetchone()
            if mode is None or mode[0].lower() != "wal":
                raise RuntimeError(f"could not put {self.path} in WAL mode")
            await writer.execute(f"PRAGMA synchronous = {self.synchronous}")
            await writer.execute("PRAGMA foreign_keys = ON")
            self.schema_version = await migrate(writer)
            for _ in range(self._reader_count):
                reader = await aiosqlite.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
                readers.append(reader)
                await reader.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            if self.checkpoint_pages:
                await self._take_over_checkpoints(writer)
        except BaseException:
            for reader in readers:
                await reader.close()
            await writer.close()
            raise
        self._all_readers = readers
        self._readers = asyncio.Queue()
        for reader in readers:
            self._readers.put_nowait(reader)
        self._writer = writer

    async def _take_over_checkpoints(self, writer: aiosqlite.Connection) -> None:
        """Turn the commit-time checkpoint off, to run it after commits instead;
        if the WAL index is not the documented format, keep SQLite's own."""
        try:
            fd = os.open(f"{self.path}-shm", os.O_RDONLY)
        except OSError:
            return
        header = os.pread(fd, _WAL_INDEX_HEADER, 0)
        if len(header) < _WAL_INDEX_HEADER or struct.unpack_from("=I", header, 0)[0] != _WAL_INDEX_VERSION:
            os.close(fd)
            log.warning("unknown WAL index format: checkpoints stay inside commits")
            return
        await writer.execute("PRAGMA wal_autocheckpoint = 0")
        self._shm = fd

    def _pages_waiting(self) -> int:
        """WAL pages not yet copied into the database file (0 if unknown)."""
        if self._shm is None:
            return 0
        header = os.pread(self._shm, _WAL_INDEX_HEADER, 0)
        if len(header) < _WAL_INDEX_HEADER:
            return 0
        return struct.unpack_from("=I", header, 16)[0] - struct.unpack_from("=I", header, 96)[0]

    def _after_commit(self) -> None:
        """Start a background checkpoint when enough pages wait for one."""
        if self._shm is None or self._checkpoint_task is not None:
            return
        waiting = self._pages_waiting()
        if waiting < self._checkpoint_floor:  # the WAL started over
            self._checkpoint_floor = 0
        if waiting - self._checkpoint_floor >= self.checkpoint_pages:
            self._checkpoint_task = asyncio.create_task(self._checkpoint(), name="db-checkpoint")

    async def _checkpoint(self) -> None:
        try:
            async with self._write_lock:
                if self._writer is None:
                    return  # closed meanwhile: closing the writer checkpoints
                await self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)")
                self._last_write = time.monotonic()
            self.checkpoints += 1
            # What is still waiting is held by a reader's snapshot: do not
            # retry for it after every commit, only once as much again is added.
            self._checkpoint_floor = self._pages_waiting()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            fault = machine_fault(exc)
            if fault is None:
                log.exception("background checkpoint failed; the next commit tries again")
            else:  # the WAL keeps the pages: nothing is lost, the file just stays longer
                log.warning("background checkpoint not done: %s (%s); the next commit tries again",
                            fault.message, exc)
        finally:
            self._checkpoint_task = None

    async def close(self) -> None:
        """Let queued writes finish, then close every connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        async with self._write_lock:
            writer, self._writer = self._writer, None
        if self._checkpoint_task is not None:
            await asyncio.gather(self._checkpoint_task, return_exceptions=True)
        for reader in self._all_readers:
            await reader.close()
        self._all_readers = []
        if self._version_opening is not None:
            # An opening whose caller was cancelled still runs on the driver's
            # thread: it must end (and close what it opened) before the loop does.
            await asyncio.gather(self._version_opening, return_exceptions=True)
        async with self._version_lock:
            version_conn, self._version_conn = self._version_conn, None
        if version_conn is not None:
            await version_conn.close()
        if writer is not None:
            # A clean close checkpoints the WAL into the main file.
            await writer.close()
        if self._shm is not None:
            # Last: closing any descriptor of the WAL index drops every POSIX
            # lock this process holds on it, SQLite's included, and another
            # process that then finds no lock resets (truncates) the index
            # under connections still mapping it (SIGBUS).
            os.close(self._shm)
            self._shm = None

    def __del__(self) -> None:
        if self._writer is not None and not self._closed:
            warnings.warn(f"Database {self.path} was never closed", ResourceWarning, stacklevel=1)

    @property
    def closed(self) -> bool:
        return self._closed

    def idle_for(self) -> float:
        """Seconds since a write (or checkpoint) last let go of the writer; 0 while one holds it."""
        return 0.0 if self._write_lock.locked() else time.monotonic() - self._last_write

    def add_commit_hook(self, hook: CommitHook) -> None:
        """Call ``hook(CommitInfo)`` on the event loop after every committed write."""
        self._hooks.append(hook)

    # Writes -----------------------------------------------------------------

    async def write(self, fn: Callable[[WriteTx], Awaitable[T]]) -> T:
        """Run ``fn(tx)`` in one ``BEGIN IMMEDIATE`` transaction and commit.

        Any exception from ``fn`` rolls the whole transaction back and is
        re-raised; nothing it did is kept and no commit hook runs.
        """
        await self.open()
        # aiosqlite runs one statement at a time, but a transaction is several
        # awaits: the lock keeps two coroutines from interleaving on the writer.
        async with self._write_lock:
            conn = self._writer
            if conn is None:
                raise DatabaseClosed(str(self.path))
            try:
                await conn.execute("BEGIN IMMEDIATE")
                row = await (await conn.execute("SELECT seq, last_us FROM clock")).fetchone()
                assert row is not None
                tx = WriteTx(conn, row[0], row[1])
                result = await fn(tx)
                if tx.changed:
                    await conn.execute(
                        "UPDATE clock SET seq = ?, last_us = ? WHERE id = 1", (tx.seq, tx.last_us)
                    )
                await conn.execute("COMMIT")
            except BaseException as exc:
                # Shielded: a second cancellation must not leave the writer
                # inside a transaction that the next write would trip over.
                await asyncio.shield(_rollback(conn))
                fault = machine_fault(exc)
                if fault is not None:
                    log.warning("write not done: %s (%s)", fault.message, exc)
                    raise fault from exc
                raise
            finally:
                self._last_write = time.monotonic()
        self._after_commit()
        call_commit_hooks(self._hooks, CommitInfo(tx.seq, tx.last_us, tx.changed, tx.events))
        return result

    # Reads ------------------------------------------------------------------

    async def read(self, fn: Callable[[Snapshot], Awaitable[T]]) -> T:
        """Run ``fn(snapshot)`` on a read-only connection, inside one read transaction."""
        await self.open()
        if self._readers is None or self._closed:
            raise DatabaseClosed(str(self.path))
        conn = await self._readers.get()
        try:
            # BEGIN is inside the try: a caller cancelled while BEGIN runs on
            # the connection's thread must still end that transaction.
            try:
                await conn.execute("BEGIN")
                return await fn(Snapshot(conn))
            finally:
                await asyncio.shield(_rollback(conn))
        except (sqlite3.Error, OSError) as exc:
            fault = machine_fault(exc)
            if fault is None:
                raise
            log.warning("read not done: %s (%s)", fault.message, exc)
            raise fault from exc
        finally:
            self._readers.put_nowait(conn)

    async def commit_signal(self) -> int:
        """SQLite's ``PRAGMA data_version`` on this database's dedicated connection.

        It changes when any other connection (of this process or another)
        commits; compare it only with earlier values from this method.
        """
        await self.open()
        async with self._version_lock:
            if self._version_conn is None:
                # Shielded: a caller cancelled half-way must not leave an open
                # connection that nobody holds; close() waits for the opening.
                self._version_opening = asyncio.ensure_future(self._open_version_conn())
                await asyncio.shield(self._version_opening)
            if self._closed or self._version_conn is None:
                raise DatabaseClosed(str(self.path))
            row = await (await self._version_conn.execute("PRAGMA data_version")).fetchone()
        assert row is not None
        return int(row[0])

    async def _open_version_conn(self) -> None:
        conn = await aiosqlite.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
        try:
            await conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        except BaseException:
            await conn.close()
            raise
        if self._closed:  # closed meanwhile: close() has already looked for it
            await conn.close()
        else:
            self._version_conn = conn

    async def listen(self, on_signal: Callable[[], None]) -> None:
        """Nothing to listen to on SQLite: the hub polls ``commit_signal``."""

    async def take_rate_token(self, key: str, per_minute: int) -> int | None:
        """Take a write from ``key``'s bucket, kept in this process's memory."""
        return self._rate_buckets.take(key, per_minute)

    async def head(self) -> tuple[int, int]:
        """(seq, updated_at in µs) of the newest commit."""
        return await self.read(Snapshot.head)

    async def probe(self) -> int:
        """Open the file afresh, read-only, and read the head: what a restarting
        server would see (a pooled connection can keep serving from its cache).

        ``Busy``/``StorageFull`` as for a write; ``Unreachable`` for any other
        failure (a missing or unreadable file).
        """
        try:
            return await asyncio.to_thread(_probe, self.path)
        except (sqlite3.Error, OSError) as exc:
            raise (machine_fault(exc) or Unreachable(f"{self.path}: {exc}")) from exc

    async def list_devices(self) -> list[dict[str, Any]]:
        return await self.read(Snapshot.list_devices)

    async def purge_tombstones(self, before: str) -> int:
        return await self.write(lambda tx: tx.purge_tombstones(before))

    async def fetchall(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[Any]:
        """Convenience: one statement's rows."""

        async def run(snap: Snapshot) -> list[Any]:
            return list(await snap.execute_fetchall(sql, params))

        return await self.read(run)

    async def fetchone(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> Any:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None


def machine_fault(exc: BaseException) -> HealthSyncError | None:
    """The domain error for a fault of the machine, None for anything else.

    ``Busy`` for SQLite's BUSY/LOCKED ("database is locked": another process
    held the lock past the busy timeout), ``StorageFull`` for SQLite's FULL
    ("database or disk is full") and for ``OSError`` ``ENOSPC``.
    """
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return StorageFull("the disk holding the data is full: nothing was changed; try again once space is freed")
    if not isinstance(exc, sqlite3.Error):
        return None
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc)
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED) or (primary is None and "database is locked" in text):
        return Busy("the database is busy: another process holds its lock; nothing was changed, try again")
    if primary == _SQLITE_FULL or (primary is None and "database or disk is full" in text):
        return StorageFull("the disk holding the data is full: nothing was changed; try again once space is freed")
    return None


def _probe(path: Path) -> int:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute("SELECT seq FROM clock").fetchone()[0])
    finally:
        conn.close()


async def _rollback(conn: aiosqlite.Connection) -> None:
    try:
        await conn.execute("ROLLBACK")
    except sqlite3.OperationalError:
        pass  # no transaction is active: SQLite already rolled back
