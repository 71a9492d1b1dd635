"""``PostgresDatabase``: the PostgreSQL implementation of ``storage.interface.Storage``.

A psycopg 3 async connection pool (autocommit connections; every statement
runs in a transaction this module opens).  ``lock_timeout`` and
``idle_in_transaction_session_timeout`` are set on every connection, so a
stuck writer cannot stop the site.

- **Writes**: ``write(fn)`` opens a transaction whose first statement locks
  the one clock row (``SELECT seq, last_us … FROM clock WHERE id = 1 FOR
  UPDATE``, the twin of SQLite's ``BEGIN IMMEDIATE``): writers of every
  process are serialized, ``seq`` and ``updated_at`` continue from the row
  (never a sequence, whose values commit out of order) and are written back
  with the commit.  Within this process an ``asyncio.Lock`` also queues
  writers, so they wait here rather than each holding a pooled connection.
- **Reads**: ``read(fn)`` runs in one ``REPEATABLE READ READ ONLY``
  transaction, so the head and the rows agree.
- **Commit signal**: every write also counts itself in the clock row
  (``commits``); ``commit_signal`` reads that counter, which changes whenever
  any process commits.  The same statement sends ``NOTIFY`` (delivered on
  commit, in commit order), and ``listen`` hears it on a connection of its
  own (``listen.Listener``): the push hub learns of every process's commits
  at once, and polls only as a safety net.
- **Rate limit**: ``take_rate_token`` keeps the write rate limit's buckets in
  ``rate_buckets``, one autocommit statement per take (never under the clock
  lock: it does not wait for writes), shared by every process of the site.
- **Backups** are PostgreSQL's own (``pg_dump``, base backups):
  ``backup``/``restore`` raise ``BackupsArePostgres`` saying so.
- **Faults**: a lock held past ``lock_timeout``, a serialization failure or a
  deadlock is ``errors.Busy``; a database that cannot be reached (refused,
  dropped connection, shut down, pool timeout) ``errors.Unreachable``; a full
  disk ``errors.StorageFull``, each logged as one warning.  Once the database
  was found unreachable, a request waits at most ``DOWN_WAIT_S`` for a pooled
  connection (a 503 at once, not a request hanging for the pool's 30 s) until
  one succeeds again; the pool retries connecting with a backoff bounded by
  ``RECONNECT_TIMEOUT_S``, so it is back soon after the database is.

``make_storage`` chooses it when the ``database_url`` setting names a PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson
import psycopg
from psycopg import errors as pgerrors
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ...errors import Busy, Conflict, HealthSyncError, Invalid, StorageFull, Unreachable
from ..buckets import IDLE_SECONDS, retry_after
from ..interface import (
    ApplyStored,
    AuditEntry,
    Claim,
    CommitHook,
    CommitInfo,
    DatabaseClosed,
    call_commit_hooks,
    claimable,
)
from ..rows import batch_out, keyset_page
from .listen import CHANNEL, Listener
from .schema import migrate
from .snapshot import Snapshot
from .tx import WriteTx

log = logging.getLogger("healthsync.storage")

T = TypeVar("T")

LOCK_TIMEOUT_MS = 10_000
IDLE_IN_TRANSACTION_MS = 60_000
CONNECT_TIMEOUT_S = 5
#: How long a request waits for a pooled connection while the database is known to be down.
DOWN_WAIT_S = 1.0
#: The pool's reconnection attempts back off (1, 2, 4… s) for at most this long, then start over
#: when a request asks: bounds how long after the database's return the pool is back.
RECONNECT_TIMEOUT_S = 10.0

_CLOCK_LOCK = (
    "SELECT seq, last_us, floor(extract(epoch FROM clock_timestamp()) * 1000000)::bigint"
    " FROM clock WHERE id = 1 FOR UPDATE"
)
# One round trip: the clock row written back, counted (the commit signal) and NOTIFY sent.
_CLOCK_WRITE = (
    "WITH c AS (UPDATE clock SET seq = %s, last_us = %s, commits = commits + 1 WHERE id = 1 RETURNING seq)"
    f" SELECT pg_notify('{CHANNEL}', seq::text) FROM c"
)
# The token bucket rule of ``storage.buckets``, applied in one statement to the
# key's row (its row lock serializes takers of the same key only); the time is
# the database server's, the same for every process.
_TAKE_RATE_TOKEN = """
WITH t AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS at)
INSERT INTO rate_buckets AS b (key, tokens, at, taken)
SELECT %(key)s, %(cap)s - 1, t.at, true FROM t
ON CONFLICT (key) DO UPDATE SET
    tokens = least(%(cap)s, b.tokens + greatest(0, excluded.at - b.at) * %(cap)s / 60.0)
        - CASE WHEN least(%(cap)s, b.tokens + greatest(0, excluded.at - b.at) * %(cap)s / 60.0) >= 1
               THEN 1 ELSE 0 END,
    taken = least(%(cap)s, b.tokens + greatest(0, excluded.at - b.at) * %(cap)s / 60.0) >= 1,
    at = excluded.at
RETURNING taken, tokens
"""
_FORGET_RATE_BUCKETS = "DELETE FROM rate_buckets WHERE at < extract(epoch FROM clock_timestamp())::float8 - %s"
_AUDIT_KEYS = ("id", "at", "who", "role", "method", "path", "query", "status", "remote_ip")


class BackupsArePostgres(HealthSyncError):
    """``backup``/``restore`` on PostgreSQL: its own tools do that (501)."""

    status = 501


def _redacted(url: str) -> str:
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://…"
    return f"postgresql://{info.get('user', '')}@{info.get('host', '')}:{info.get('port', '')}/{info.get('dbname', '')}"


class PostgresDatabase:
    """One PostgreSQL database.  Open with :meth:`open`."""

    backend = "postgres"
    pushes_commits = True

    def __init__(
        self,
        url: str,
        *,
        connections: int = 4,
        lock_timeout_ms: int = LOCK_TIMEOUT_MS,
        idle_in_transaction_ms: int = IDLE_IN_TRANSACTION_MS,
    ) -> None:
        self.url = url
        self.connections = connections
        self.lock_timeout_ms = lock_timeout_ms
        self.idle_in_transaction_ms = idle_in_transaction_ms
        self.schema_version = 0
        self._pool: AsyncConnectionPool | None = None
        self._hooks: list[CommitHook] = []
        self._write_lock = asyncio.Lock()
        self._open_lock = asyncio.Lock()
        self._closed = False
        self._last_write = time.monotonic()
        self._listener: Listener | None = None
        self._buckets_swept = time.monotonic()
        #: the last read or write found the database unreachable (see ``DOWN_WAIT_S``)
        self._down = False

    def __repr__(self) -> str:
        return f"PostgresDatabase({_redacted(self.url)})"

    def _options(self) -> str:
        return (f"-c lock_timeout={int(self.lock_timeout_ms)}"
                f" -c idle_in_transaction_session_timeout={int(self.idle_in_transaction_ms)}")

    # Lifecycle --------------------------------------------------------------

    async def open(self) -> PostgresDatabase:
        """Open the pool and migrate (idempotent); ``Unreachable`` when the server cannot be reached."""
        if self._closed:
            raise DatabaseClosed(repr(self))
        if self._pool is not None:
            return self
        async with self._open_lock:
            if self._pool is not None:
                return self
            pool: AsyncConnectionPool | None = None
            try:
                # One plain connection first: a server that is down fails at once
                # (a pool would keep retrying), and the migration runs on it.
                conn = await self._connect()
                try:
                    self.schema_version = await migrate(conn)
                finally:
                    await conn.close()
                pool = AsyncConnectionPool(
                    self.url,
                    min_size=1,
                    max_size=self.connections,
                    open=False,
                    timeout=30,
                    reconnect_timeout=RECONNECT_TIMEOUT_S,
                    kwargs={"autocommit": True, "options": self._options(), "connect_timeout": CONNECT_TIMEOUT_S},
                )
                await pool.open(wait=True, timeout=CONNECT_TIMEOUT_S * 2)
            except BaseException as exc:
                if pool is not None:
                    await pool.close()
                fault = machine_fault(exc)
                if fault is None:
                    raise
                log.warning("database not opened: %s (%s)", fault.message, exc)
                raise fault from exc
            self._pool = pool
        return self

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, options=self._options()
        )

    async def migrate(self) -> int:
        await self.open()
        return self.schema_version

    async def close(self) -> None:
        """Let queued writes finish, then close the pool (idempotent)."""
        if self._closed:
            return
        self._closed = True
        async with self._write_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def idle_for(self) -> float:
        return 0.0 if self._write_lock.locked() else time.monotonic() - self._last_write

    def add_commit_hook(self, hook: CommitHook) -> None:
        self._hooks.append(hook)

    async def _ready(self) -> AsyncConnectionPool:
        await self.open()
        if self._closed or self._pool is None:
            raise DatabaseClosed(repr(self))
        return self._pool

    # Writes -----------------------------------------------------------------

    async def write(self, fn: Callable[[WriteTx], Awaitable[T]]) -> T:
        """Run ``fn(tx)`` in one transaction that first locks the clock row, and commit."""
        await self.open()
        async with self._write_lock:
            pool = self._pool
            if pool is None:
                raise DatabaseClosed(repr(self))
            try:
                async with pool.connection(self._wait()) as conn, conn.transaction():
                    cur = await conn.execute(_CLOCK_LOCK)
                    row = await cur.fetchone()
                    assert row is not None
                    tx = WriteTx(conn, row[0], row[1], row[2])
                    result = await fn(tx)
                    await conn.execute(_CLOCK_WRITE, (tx.seq, tx.last_us))
            except BaseException as exc:
                fault = self._fault(exc)
                if fault is not None:
                    log.warning("write not done: %s (%s)", fault.message, exc)
                    raise fault from exc
                if _nul_in_text(exc):
                    raise Invalid(NUL_IN_TEXT + "; nothing was changed") from exc
                raise
            finally:
                self._last_write = time.monotonic()
            self._down = False
        call_commit_hooks(self._hooks, CommitInfo(tx.seq, tx.last_us, tx.changed, tx.events))
        return result

    # Reads ------------------------------------------------------------------

    async def read(self, fn: Callable[[Snapshot], Awaitable[T]]) -> T:
        """Run ``fn(snapshot)`` in one ``REPEATABLE READ READ ONLY`` transaction."""
        pool = await self._ready()
        try:
            async with pool.connection(self._wait()) as conn, conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                result = await fn(Snapshot(conn))
        except (psycopg.Error, OSError) as exc:
            if _nul_in_text(exc):
                raise Invalid(NUL_IN_TEXT) from exc
            fault = self._fault(exc)
            if fault is None:
                raise
            log.warning("read not done: %s (%s)", fault.message, exc)
            raise fault from exc
        self._down = False
        return result

    def _wait(self) -> float | None:
        """How long to wait for a pooled connection: the pool's own timeout, or only
        ``DOWN_WAIT_S`` while the database is known to be unreachable."""
        return DOWN_WAIT_S if self._down else None

    def _fault(self, exc: BaseException) -> HealthSyncError | None:
        """``machine_fault(exc)``, noting an unreachable database (see ``_wait``).  A pool
        timeout alone does not say so (a pool busy under load times out too)."""
        fault = machine_fault(exc)
        if isinstance(fault, Unreachable) and not isinstance(exc, PoolTimeout):
            self._down = True
        return fault

    async def commit_signal(self) -> int:
        """The clock row's commit counter: it changes whenever any process commits."""
        return await self.read(_commits)

    async def listen(self, on_signal: Callable[[], None]) -> None:
        """Call ``on_signal`` on every commit's NOTIFY (and on each (re)connect) until cancelled."""
        listener = Listener(self.url, on_signal,
                            connect_kwargs={"connect_timeout": CONNECT_TIMEOUT_S, "options": self._options()})
        self._listener = listener
        await listener.run()

    @property
    def listening(self) -> bool:
        return self._listener is not None and self._listener.listening

    @property
    def listen_reconnects(self) -> int:
        return 0 if self._listener is None else self._listener.reconnects

    async def take_rate_token(self, key: str, per_minute: int) -> int | None:
        """Take a write from ``key``'s bucket in ``rate_buckets``, for the whole site."""
        pool = await self._ready()
        try:
            async with pool.connection(self._wait()) as conn:  # autocommit: the statement is its own transaction
                cur = await conn.execute(_TAKE_RATE_TOKEN, {"key": key, "cap": float(per_minute)})
                row = await cur.fetchone()
                if time.monotonic() - self._buckets_swept > IDLE_SECONDS:
                    self._buckets_swept = time.monotonic()
                    await conn.execute(_FORGET_RATE_BUCKETS, (IDLE_SECONDS,))
        except (psycopg.Error, OSError) as exc:
            fault = self._fault(exc)
            if fault is None:
                raise
            log.warning("rate limit not checked: %s (%s)", fault.message, exc)
            raise fault from exc
        self._down = False
        assert row is not None
        return None if row[0] else retry_after(float(row[1]), per_minute)

    async def head(self) -> tuple[int, int]:
        return await self.read(Snapshot.head)

    async def probe(self) -> int:
        """The head read on a fresh connection (not a pooled one); ``Unreachable`` on failure."""
        try:
            conn = await self._connect()
            try:
                cur = await conn.execute("SELECT seq FROM clock WHERE id = 1")
                row = await cur.fetchone()
            finally:
                await conn.close()
        except (psycopg.Error, OSError) as exc:
            raise (machine_fault(exc) or Unreachable(f"{self!r}: {exc}")) from exc
        if row is None:
            raise Unreachable(f"{self!r}: no clock row")
        return int(row[0])

    async def fetchall(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[Any]:
        return await self.read(lambda snap: snap.all(sql, params))

    # Backups: PostgreSQL's own ----------------------------------------------

    async def backup(self, dest: Path) -> Path:
        raise BackupsArePostgres(
            "backups of a PostgreSQL database are PostgreSQL's own: use pg_dump (or base backups"
            " with WAL archiving), not a HealthSync backup"
        )

    async def restore(self, src: Path) -> None:
        raise BackupsArePostgres(
            "a PostgreSQL database is restored with PostgreSQL's own tools (pg_restore, or a base"
            " backup), not a HealthSync restore"
        )

    # Tokens -----------------------------------------------------------------

    async def create_token(self, name: str, role: str, token_hash: str) -> None:
        async def run(tx: WriteTx) -> None:
            if await tx.one("SELECT 1 FROM tokens WHERE name = %s AND revoked_at IS NULL", (name,)):
                raise Conflict(f"a live token named {name!r} exists: revoke it first")
            await tx.run(
                "INSERT INTO tokens (name, role, hash, created_at) VALUES (%s, %s, %s, %s)",
                (name, role, token_hash, tx.now()),
            )

        await self.write(run)

    async def revoke_token(self, name: str) -> int:
        return await self.write(lambda tx: tx.run(
            "UPDATE tokens SET revoked_at = %s WHERE name = %s AND revoked_at IS NULL", (tx.now(), name)
        ))

    async def list_tokens(self) -> list[dict[str, Any]]:
        rows = await self.fetchall("SELECT name, role, created_at, revoked_at FROM tokens ORDER BY created_at, id")
        return [{"name": r[0], "role": r[1], "created_at": r[2], "revoked_at": r[3]} for r in rows]

    async def find_token(self, token_hash: str) -> tuple[str, str] | None:
        rows = await self.fetchall(
            "SELECT name, role FROM tokens WHERE hash = %s AND revoked_at IS NULL", (token_hash,)
        )
        return (rows[0][0], rows[0][1]) if rows else None

    # Audit ------------------------------------------------------------------

    async def append_audit(self, entries: Sequence[AuditEntry]) -> None:
        await self.write(lambda tx: tx.many(
            "INSERT INTO audit (at, who, role, method, path, query, status, remote_ip)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            list(entries),
        ))

    async def list_audit(
        self, *, who: str | None, since: str | None, limit: int, after: int
    ) -> list[dict[str, Any]]:
        where = ["id > %s"]
        params: list[Any] = [after]
        if who is not None:
            where.append("who = %s")
            params.append(who)
        if since is not None:
            where.append("at > %s")
            params.append(since)
        rows = await self.fetchall(
            f"SELECT {', '.join(_AUDIT_KEYS)} FROM audit WHERE {' AND '.join(where)} ORDER BY id LIMIT %s",
            [*params, limit],
        )
        return [dict(zip(_AUDIT_KEYS, r, strict=True)) for r in rows]

    # Devices and purge ------------------------------------------------------

    async def list_devices(self) -> list[dict[str, Any]]:
        return await self.read(Snapshot.list_devices)

    async def purge_tombstones(self, before: str) -> int:
        return await self.write(lambda tx: tx.purge_tombstones(before))

    # Batches ----------------------------------------------------------------

    async def store_batch(self, batch_id: str, device_id: str, request: str, change_count: int) -> None:
        await self.write(lambda tx: tx.insert_batch(batch_id, device_id, "pending", change_count, request=request))

    async def get_batch(self, batch_id: str) -> dict[str, Any] | None:
        return await self.read(lambda snap: snap.get_batch(batch_id))

    async def list_batches(
        self, *, device_id: str | None, status: str | None, limit: int | None, after: int
    ) -> tuple[list[dict[str, Any]], int | None]:
        rows = await self.read(
            lambda snap: snap.list_batches(device_id=device_id, status=status, limit=limit, after=after)
        )
        return keyset_page(rows, limit, batch_out)

    async def claim_batch(self, batch_id: str, task_id: str) -> str:
        async def run(tx: WriteTx) -> str:
            device_id = claimable(batch_id, await tx.fetch_batch(batch_id))
            await tx.run(
                "UPDATE batches SET status = 'processing', task_id = %s, claimed_at = %s, error = NULL,"
                " worker = NULL, heartbeat_at = NULL, attempts = attempts + 1, updated_at = %s WHERE id = %s",
                (task_id, tx.now(), tx.now(), batch_id),
            )
            return str(device_id)

        return await self.write(run)

    async def release_batch(self, batch_id: str, task_id: str) -> bool:
        return await self.write(lambda tx: tx.run(
            "UPDATE batches SET status = 'pending', task_id = NULL, claimed_at = NULL, attempts = attempts - 1,"
            " updated_at = %s WHERE id = %s AND status = 'processing' AND task_id = %s",
            (tx.now(), batch_id, task_id),
        )) == 1

    async def record_batch_worker(self, batch_id: str, task_id: str, worker: str) -> bool:
        return await self.write(lambda tx: tx.run(
            "UPDATE batches SET worker = %s, heartbeat_at = %s WHERE id = %s AND status = 'processing'"
            " AND task_id = %s",
            (worker, tx.now(), batch_id, task_id),
        )) == 1

    async def heartbeat_batches(self, worker: str) -> int:
        return await self.write(lambda tx: tx.run(
            "UPDATE batches SET heartbeat_at = %s WHERE worker = %s AND status = 'processing'", (tx.now(), worker)
        ))

    async def apply_claimed_batch(self, batch_id: str, task_id: str, apply: ApplyStored) -> bool:
        async def run(tx: WriteTx) -> bool:
            row = await tx.one("SELECT status, task_id, request FROM batches WHERE id = %s FOR UPDATE", (batch_id,))
            if row is None or row[0] != "processing" or row[1] != task_id:
                return False
            response = await apply(tx, row[2])  # type: ignore[arg-type]
            await tx.run(
                "UPDATE batches SET status = 'done', response = %s, error = NULL, finished_at = %s,"
                " updated_at = %s WHERE id = %s",
                (orjson.dumps(response).decode(), tx.now(), tx.now(), batch_id),
            )
            return True

        return await self.write(run)

    async def fail_batch(self, batch_id: str, task_id: str, error: str) -> bool:
        return await self.write(lambda tx: tx.run(
            "UPDATE batches SET status = 'failed', error = %s, finished_at = %s, updated_at = %s"
            " WHERE id = %s AND status = 'processing' AND task_id = %s",
            (error[:2000], tx.now(), tx.now(), batch_id, task_id),
        )) == 1

    async def reclaim_batches(self, pick: Callable[[Claim], str | None]) -> list[tuple[Claim, str]]:
        async def run(tx: WriteTx) -> list[tuple[Claim, str]]:
            rows = await tx.all(
                "SELECT id, task_id, claimed_at, worker, heartbeat_at FROM batches WHERE status = 'processing'"
                " ORDER BY pk"
            )
            moved: list[tuple[Claim, str]] = []
            for row in rows:
                claim = Claim(*row)
                task_id = pick(claim)
                if task_id is None:
                    continue
                await tx.run(
                    "UPDATE batches SET task_id = %s, claimed_at = %s, worker = NULL, heartbeat_at = NULL,"
                    " attempts = attempts + 1, updated_at = %s WHERE id = %s",
                    (task_id, tx.now(), tx.now(), claim.batch_id),
                )
                moved.append((claim, task_id))
            return moved

        return await self.write(run)

    async def purge_batches(self, before: str) -> int:
        return await self.write(lambda tx: tx.run(
            "DELETE FROM batches WHERE status = 'done' AND finished_at < %s", (before,)
        ))

    async def batch_events_since(self, updated_at: str) -> list[tuple[str, str, str, str]]:
        rows = await self.read(lambda snap: snap.batch_events_since(updated_at))
        return [(r[0], r[1], r[2], r[3]) for r in rows]


async def _commits(snap: Snapshot) -> int:
    row = await snap.one("SELECT commits FROM clock WHERE id = 1")
    assert row is not None
    return int(row[0])


_BUSY = (pgerrors.LockNotAvailable, pgerrors.SerializationFailure, pgerrors.DeadlockDetected,
         pgerrors.QueryCanceled)
_UNREACHABLE_STATES = ("08", "57P01", "57P02", "57P03", "53300")


#: PostgreSQL's text cannot hold U+0000 (SQLite's can): such a value is refused, never a 500.
NUL_IN_TEXT = ("a text value contains the NUL character (\\u0000), which this server's database "
               "(PostgreSQL) cannot store")


def _nul_in_text(exc: BaseException) -> bool:
    """psycopg refusing to send a str holding U+0000 (client-side, no SQLSTATE), or the
    server refusing one (``22021`` / ``22P05``)."""
    if not isinstance(exc, psycopg.DataError):
        return False
    return "NUL" in str(exc) or (getattr(exc, "sqlstate", None) in ("22021", "22P05") and "0x00" in str(exc))


def machine_fault(exc: BaseException) -> HealthSyncError | None:
    """The domain error for a fault of the machine, None for anything else."""
    if isinstance(exc, HealthSyncError) or not isinstance(exc, (psycopg.Error, OSError)):
        return None
    if isinstance(exc, _BUSY):
        return Busy("the database is busy: another process holds its lock; nothing was changed, try again")
    if isinstance(exc, pgerrors.DiskFull) or (isinstance(exc, OSError) and exc.errno == 28):
        return StorageFull("the disk holding the data is full: nothing was changed; try again once space is freed")
    state = getattr(exc, "sqlstate", None) or ""
    if (isinstance(exc, (PoolTimeout, OSError, psycopg.OperationalError, psycopg.InterfaceError))
            and (not state or state.startswith(_UNREACHABLE_STATES))):
        return Unreachable(f"the database cannot be reached: {exc}")
    return None
