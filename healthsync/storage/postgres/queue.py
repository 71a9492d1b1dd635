"""Huey's task queue in a PostgreSQL database: ``PostgresQueue``.

Huey ships the storage (``huey.storage.PostgresStorage``, psycopg 3, since
Huey 3.1): tasks, the schedule and the key/value store are rows of
``huey_task``, ``huey_schedule``, ``huey_kv`` and ``huey_counter``, keyed by
the queue's name, so several sites may share a database under different
names.  A dequeue is ``DELETE … WHERE id = (SELECT … FOR UPDATE SKIP
LOCKED LIMIT 1) RETURNING data``, so any number of consumers on any number
of machines never take the same task; ``put_if_empty`` is ``INSERT … ON
CONFLICT DO NOTHING``, which is what keeps a periodic job to one consumer
at a time.  Idle workers wait on ``LISTEN`` (a second, per-thread
connection) and re-poll each second, so a task starts as soon as it is
queued.

What this module adds for HealthSync:

- **Nothing is opened when the queue is made.**  The tables are made sure
  of (``CREATE … IF NOT EXISTS``, under the migrations' advisory lock, so
  several processes starting at once do not trip over each other) each
  time the storage (re)connects, not in the constructor: a server whose
  queue database is down still starts, answers 503 until it returns, and
  then carries on even on a database recreated empty.
- **A database that cannot be reached is an error in seconds, never a
  hang**: ``connect_timeout`` on every connection, TCP keepalives so a
  silent peer is noticed, and ``lock_timeout`` on the queue's statements.
  Every such failure is a ``psycopg.OperationalError`` (see
  ``is_queue_error``); a broken connection is replaced on the next use.

Blocking (thread-safe): Huey calls it from worker threads, and the server
from an executor, never on the event loop.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
from huey import PostgresHuey
from huey.storage import PostgresStorage

from .schema import ADVISORY_LOCK

#: Seconds to wait for a connection before the queue is reported unreachable.
QUEUE_CONNECT_TIMEOUT = 3
#: A queue statement waiting this long on a row lock gives up (milliseconds).
QUEUE_LOCK_TIMEOUT_MS = 10_000
#: TCP keepalives: a peer gone silent is noticed in about 10 + 3 * 5 seconds, and data it
#: does not acknowledge gives up after 20 s (instead of the kernel's many minutes).
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
               "tcp_user_timeout": 20_000}


class PostgresQueueStorage(PostgresStorage):
    """Huey's PostgreSQL storage with timeouts, creating its tables on first use."""

    def __init__(self, name: str = "healthsync", dsn: str | None = None, **connection_params: Any) -> None:
        params: dict[str, Any] = {
            "connect_timeout": QUEUE_CONNECT_TIMEOUT,
            "options": f"-c lock_timeout={QUEUE_LOCK_TIMEOUT_MS}",
            "application_name": "healthsync-queue",
            **_KEEPALIVES,
        }
        params.update(connection_params)
        self._listeners: list[psycopg.Connection[Any]] = []
        self._listeners_lock = threading.Lock()
        super().__init__(name, dsn=dsn, create_tables=False, **params)

    def _create_connection(self) -> psycopg.Connection[Any]:
        """The storage's connection (the one ``LISTEN`` waits on per thread is
        ``_connect``'s): its tables made sure of first."""
        conn: psycopg.Connection[Any] = self._connect()
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK,))
                for statement in self.ddl:
                    conn.execute(statement)
        except BaseException:
            conn.close()
            raise
        return conn

    def _listen_conn(self) -> psycopg.Connection[Any]:
        """Huey's per-thread ``LISTEN`` connection, also kept here so ``close``
        closes it (Huey leaves those of finished threads to the garbage collector)."""
        conn: psycopg.Connection[Any] = super()._listen_conn()
        with self._listeners_lock:
            if not any(c is conn for c in self._listeners):
                self._listeners = [c for c in self._listeners if not c.closed] + [conn]
        return conn

    def close(self) -> bool:
        """Close the storage's connection and every ``LISTEN`` connection it opened."""
        with self._listeners_lock:
            listeners, self._listeners = self._listeners, []
        for conn in listeners:
            self._close_quiet(conn)
        return bool(super().close())


class PostgresQueue(PostgresHuey):
    """``PostgresHuey`` on ``PostgresQueueStorage``: ``PostgresQueue(name, dsn=url, ...)``."""

    storage_class = PostgresQueueStorage


def is_queue_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure to reach the queue's database (down, dropped, refused,
    timed out, its connection lost), not a fault of the code using it."""
    return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
