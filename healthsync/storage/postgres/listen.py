"""``Listener``: hear every commit of every process through PostgreSQL's LISTEN/NOTIFY.

Every write transaction of ``PostgresDatabase.write`` sends
``NOTIFY healthsync_commits, '<seq>'`` (``pg_notify``), which PostgreSQL
delivers only once the transaction has committed, in commit order, to every
session of the same database that LISTENs.  Each serving process keeps one
connection of its own for it (never a pooled one: a pooled connection is
handed to requests, and a LISTEN on it would hear nothing between them),
named ``healthsync-listen`` in ``pg_stat_activity`` so operators can find it.

The listener calls ``on_signal()`` for each notification (the push hub then
reads the head and the batch events once, however many arrived), and once
each time its connection is (re)opened: anything committed while nobody
listened is read then.  A lost connection (the server restarted, the
backend terminated, the network gone) is one warning, then re-opened with
growing delays (``BACKOFF``); each re-open counts in ``reconnects``.  TCP
keepalives and a periodic ``SELECT 1`` notice a connection whose other end
vanished without a word.

Loop rules: ``run`` is a task on the event loop, cancelled to stop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import psycopg

log = logging.getLogger("healthsync.push")

#: The channel every write notifies and every serving process listens on (per database).
CHANNEL = "healthsync_commits"
#: ``application_name`` of the listening connection, as ``pg_stat_activity`` shows it.
APPLICATION_NAME = "healthsync-listen"
#: Seconds between attempts to re-open a lost connection: the first, doubling up to the last.
BACKOFF = (0.1, 10.0)
#: Seconds without a notification after which the connection is checked (``SELECT 1``).
HEARTBEAT_SECONDS = 30.0


class Listener:
    """One LISTEN connection, kept open for as long as ``run`` runs."""

    def __init__(
        self,
        conninfo: str,
        on_signal: Callable[[], None],
        *,
        connect_kwargs: dict[str, Any] | None = None,
        backoff: tuple[float, float] = BACKOFF,
        heartbeat: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.conninfo = conninfo
        self.on_signal = on_signal
        self.connect_kwargs = connect_kwargs or {}
        self.backoff = backoff
        self.heartbeat = heartbeat
        self.listening = False
        self.reconnects = 0

    async def run(self) -> None:
        """Listen until cancelled, re-opening a lost connection."""
        delay = self.backoff[0]
        opened_once = False
        lost = False  # a loss already logged, not yet re-opened
        while True:
            try:
                conn = await self._connect()
            except (psycopg.Error, OSError) as exc:
                if not lost:  # one warning per loss, however many attempts it takes
                    log.warning("cannot LISTEN for commits (%s); push polls meanwhile, retrying", _first_line(exc))
                    lost = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff[1])
                continue
            try:
                await conn.execute(f"LISTEN {CHANNEL}")
                self.listening = True
                if opened_once:
                    self.reconnects += 1
                    log.info("listening for commits again (re-opened %d times)", self.reconnects)
                opened_once, lost, delay = True, False, self.backoff[0]
                self.on_signal()  # whatever committed while nobody listened
                await self._serve(conn)
            except (psycopg.Error, OSError) as exc:
                self.listening = False
                if not lost:
                    log.warning("the LISTEN connection was lost (%s); re-opening it", _first_line(exc))
                    lost = True
            finally:
                self.listening = False
                await _close_quietly(conn)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff[1])

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            self.conninfo,
            autocommit=True,
            application_name=APPLICATION_NAME,
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
            **self.connect_kwargs,
        )

    async def _serve(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Signal each notification; check the connection when all is quiet."""
        while True:
            heard = False
            async for _ in conn.notifies(timeout=self.heartbeat):
                heard = True
                self.on_signal()
            if not heard:
                await conn.execute("SELECT 1")


async def _close_quietly(conn: psycopg.AsyncConnection[Any]) -> None:
    try:
        await conn.close()
    except (psycopg.Error, OSError):  # already broken: nothing to let go of
        pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
