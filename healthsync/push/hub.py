"""The push hub: download deltas to every subscriber as changes commit.

A subscriber starts in *catch-up*: its own task reads pages after its cursor
(or ``since``) with its filters, exactly as a download would, and sends each
one, waiting for the socket to drain before the next.  When a page reaches
the head of its snapshot and the subscriber's cursor is at or past what the
hub has already broadcast, it joins the *live* set, on the event loop in one
step, so no change can fall between the two.

Live: after each commit (``notify``, called by this process's commit hook,
or by the poller that notices other processes' commits through storage's
``commit_signal``), the
hub reads the new changes once, builds one frame per filter group
(serialized once, the same bytes for every member), and hands it to each
up-to-date member.  A member whose cursor lies inside the page (it joined
mid-flight) gets the part after its cursor; one already past the page gets
nothing.  Per subscriber, the stream has no gap, no
duplicate, and is in ``seq`` order across the hand-over.

Backpressure: each subscriber counts bytes handed to its socket and not yet
flushed.  Past ``max_buffer`` it stops receiving live frames (*lagging*);
once drained it is caught up again from its cursor, by reads, like a new
subscriber.  Memory per subscriber stays near the bound, and nobody else
waits for it.

Other processes' commits: the poller reads storage's ``commit_signal`` every
``poll_seconds``.  Where storage pushes commits (PostgreSQL: LISTEN/NOTIFY,
``Storage.listen``), a notification wakes the poller at once, and while the
listener is up the poller otherwise looks only every
``listen_poll_seconds`` (a safety net), so idle processes leave the database
alone; while it is down the poller is back to ``poll_seconds``, and when it
returns it polls once, so nothing committed meanwhile is missed.

Batch events (``type: "batch"``) come from storage's ``batch_events_since``,
read on the same commit signal, so a batch applied by any process is
reported.  A subscriber with a ``device_id`` gets its device's batches, one
without (a dashboard) gets all.

A read the database refuses (``errors.Busy``: another process held its lock
too long) is a warning, never a crash: a subscriber in catch-up gets an
``error`` message with ``retry_after`` and is closed with code 4503 and the
reason, so it resumes from its last cursor; the poller and the broadcaster
try again.

Loop rules: everything here runs on the event loop; nothing imports
Tornado.  A peer is anything with ``send(bytes) -> Future | None`` and
``close(code, reason)``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from .. import clock
from ..errors import HealthSyncError
from ..gcpause import gc_paused
from ..storage import PushRow, Snapshot, Storage
from ..sync import download as dl
from ..sync.rules import encode_cursor

log = logging.getLogger("healthsync.push")

#: Seconds between two polls woken by notifications, at least (see ``_poller``).
LISTEN_MIN_GAP = 0.05

CATCHING_UP, LIVE, LAGGING, CLOSED = "catching_up", "live", "lagging", "closed"


class Peer(Protocol):
    def send(self, frame: bytes) -> Awaitable[None] | None:
        """Queue one text frame; a future that resolves once flushed, or None if closed."""

    def close(self, code: int, reason: str) -> None: ...


@dataclass(eq=False)
class Subscription:
    peer: Peer
    cursor: int | None  # None until the first catch-up page when started from ``since``
    since: str | None
    resource_type: str | None
    patient: str | None
    device_id: str | None
    state: str = CATCHING_UP
    buffered: int = 0
    frames_sent: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def group(self) -> tuple[str | None, str | None]:
        return (self.resource_type, self.patient)


def changes_frame(entries: list[str], cursor: int, server_time: str) -> bytes:
    """A ``changes`` message built from pre-serialized entries, without re-encoding them."""
    return (
        '{"type":"changes","changes":[' + ",".join(entries) + '],"cursor":"'
        + encode_cursor(cursor) + '","server_time":"' + server_time + '"}'
    ).encode()


class Hub:
    """Subscribers of one database; owned by the application."""

    def __init__(
        self,
        db: Storage,
        *,
        page_size: int = 1000,
        max_buffer: int = 1 << 20,
        poll_seconds: float = 0.2,
        listen_poll_seconds: float = 5.0,
    ) -> None:
        self.db = db
        self.page_size = page_size
        self.max_buffer = max_buffer
        self.poll_seconds = poll_seconds
        self.listen_poll_seconds = listen_poll_seconds
        self.live_seq = 0  # everything up to here has been broadcast
        self.live_time = clock.format_us(0)
        self.head_seq = 0  # the newest commit the hub has heard of
        self.head_time = self.live_time
        self.subs: set[Subscription] = set()
        self._groups: dict[tuple[str | None, str | None], set[Subscription]] = {}
        self._wake = asyncio.Event()
        self._poke = asyncio.Event()  # set by storage's listener: poll now
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._batch_mark: tuple[str, set[tuple[str, str]]] = ("", set())
        self._last_version: int | None = None  # the commit signal at the poller's last look
        self.stats = {"frames_sent": 0, "frames_dropped": 0, "lagged": 0}

    # Lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        head = await self.db.head()
        self.live_seq = self.head_seq = head[0]
        self.live_time = self.head_time = clock.format_us(head[1])
        now = clock.format_us(clock.now_us())
        self._batch_mark = (now, set())
        self._tasks = [
            asyncio.create_task(self._broadcaster(), name="hub-broadcast"),
            asyncio.create_task(self._poller(), name="hub-poller"),
        ]
        if self.db.pushes_commits:
            self._tasks.append(asyncio.create_task(self._listener(), name="hub-listen"))

    async def close(self) -> None:
        """Close every subscriber with a close frame (1001, going away) and stop."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for sub in list(self.subs):
            self._drop(sub)
            try:
                sub.peer.close(1001, "server shutting down")
            except Exception:  # a peer already gone
                pass
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def count(self) -> int:
        return len(self.subs)

    # Commit signals ------------------------------------------------------------------

    def notify(self, head_seq: int, head_us: int) -> None:
        """A commit reached ``head_seq`` at ``head_us`` (from a commit hook or the poller)."""
        if head_seq > self.head_seq:
            self.head_seq = head_seq
            self.head_time = clock.format_us(head_us)
            self._wake.set()

    async def _poller(self) -> None:
        """Notice commits by other connections and processes: every
        ``poll_seconds``, or at once when storage's listener says so (then
        every ``listen_poll_seconds`` while it listens)."""
        while True:
            self._poke.clear()  # a signal from here on is a commit this poll may miss: poll again
            failed = True
            try:
                await self.poll()
                failed = False
            except asyncio.CancelledError:
                raise
            except HealthSyncError as exc:  # the database is busy: the next poll tries again
                log.warning("push poller: %s; retrying", exc.message)
            except Exception:
                log.exception("push poller failed; retrying")
            if self.db.listening and not failed:  # a failed poll is tried again soon, notified or not
                interval = self.listen_poll_seconds
                # Every commit of the site notifies: under a stream of them, one
                # poll per LISTEN_MIN_GAP at most (each reads three times), the
                # notifications meanwhile answered together by the next.
                await asyncio.sleep(LISTEN_MIN_GAP)
            else:
                interval = self.poll_seconds
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel that
            # arrives as the event is set (a commit signal during shutdown), and this loop
            # would then never end.
            try:
                async with asyncio.timeout(interval):
                    await self._poke.wait()
            except TimeoutError:
                pass

    async def _listener(self) -> None:
        """Storage's listener, pokes the poller; restarted should it ever fail."""
        while True:
            try:
                await self.db.listen(self._poke.set)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("push listener failed; restarting it")
                await asyncio.sleep(self.poll_seconds)

    async def poll(self) -> bool:
        """One look for commits by other connections: True (and the new head and
        batch events handed on) when the database changed since the last look."""
        version = await self.db.commit_signal()
        if version == self._last_version:
            return False
        self._last_version = version
        head = await self.db.head()
        self.notify(*head)
        await self._batch_events()
        return True

    async def _batch_events(self) -> None:
        mark, seen = self._batch_mark
        rows = await self.db.batch_events_since(mark)
        fresh = [r for r in rows if (r[0], r[3]) not in seen]
        if not rows:
            return
        newest = rows[-1][3]
        self._batch_mark = (newest, {(r[0], r[3]) for r in rows if r[3] == newest})
        for batch_id, device_id, status, _ in fresh:
            frame = orjson.dumps({"type": "batch", "batch_id": batch_id, "status": status, "device_id": device_id})
            for sub in list(self.subs):
                if sub.state != CLOSED and (sub.device_id is None or sub.device_id == device_id):
                    self._send(sub, frame)

    # Live broadcast --------------------------------------------------------------------

    async def _broadcaster(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                while self.live_seq < self.head_seq:
                    if not any(s.state == LIVE for s in self.subs):
                        # Nobody to send to: skip the read.  A subscriber still
                        # catching up reads on to the head by itself.
                        self.live_seq, self.live_time = self.head_seq, self.head_time
                        break
                    await self._broadcast_page()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, HealthSyncError):  # the database is busy: nothing to fix here
                    log.warning("push broadcast: %s; will retry", exc.message)
                else:
                    log.exception("push broadcast failed; will retry on the next commit")
                await asyncio.sleep(self.poll_seconds)
                self._wake.set()

    async def _broadcast_page(self) -> None:
        start = self.live_seq

        async def read(snap: Snapshot) -> tuple[list[PushRow], tuple[int, int]]:
            head = await snap.head()
            return await snap.changes_for_push(start, self.page_size + 1), head

        rows, head = await self.db.read(read)
        if len(rows) > self.page_size:
            rows = rows[: self.page_size]
            end, end_time = rows[-1][0], rows[-1][1]
        else:
            end, end_time = head[0], clock.format_us(head[1])
        # Group frames: each built once, sent as the same bytes to every member.
        # The loop is synchronous and allocates a little per subscriber: keep
        # the cyclic GC from pausing it half-way through a thousand sockets.
        with gc_paused():
            self._fan_out(rows, start, end, end_time)
        self.live_seq, self.live_time = end, end_time
        self.head_seq = max(self.head_seq, end)

    def _fan_out(self, rows: list[PushRow], start: int, end: int, end_time: str) -> None:
        for group, members in list(self._groups.items()):
            self.stats["frames_dropped"] += sum(1 for s in members if s.state == LAGGING)
            live = [s for s in members if s.state == LIVE and s.cursor is not None and s.cursor < end]
            if not live:
                continue
            resource_type, patient = group
            selected = [
                r for r in rows
                if (resource_type is None or r[3] == resource_type) and (patient is None or r[4] == patient)
            ]
            shared: bytes | None = None
            for sub in live:
                assert sub.cursor is not None
                if sub.cursor == start:
                    if shared is None:
                        shared = changes_frame([r[2] for r in selected], end, end_time) if selected else b""
                    frame = shared
                else:  # joined while this page was being read: only what is new to it
                    mine = [r[2] for r in selected if r[0] > sub.cursor]
                    frame = changes_frame(mine, end, end_time) if mine else b""
                sub.cursor = end
                if frame:
                    self._send(sub, frame)

    # Subscribers -------------------------------------------------------------------------

    def subscribe(
        self,
        peer: Peer,
        *,
        cursor: int | None,
        since: str | None,
        resource_type: str | None = None,
        patient: str | None = None,
        device_id: str | None = None,
    ) -> Subscription:
        sub = Subscription(peer, cursor, since, resource_type, patient, device_id)
        if self._closed:  # a handshake that slipped in during shutdown
            sub.state = CLOSED
            peer.close(1001, "server shutting down")
            return sub
        self.subs.add(sub)
        self._groups.setdefault(sub.group, set()).add(sub)
        self._send(
            sub,
            orjson.dumps(
                {
                    "type": "hello",
                    "cursor": None if cursor is None else encode_cursor(cursor),
                    "since": since,
                    "head": encode_cursor(self.head_seq),
                    "server_time": self.live_time,
                }
            ),
        )
        self._start_catch_up(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._drop(sub)

    def _drop(self, sub: Subscription) -> None:
        sub.state = CLOSED
        self.subs.discard(sub)
        members = self._groups.get(sub.group)
        if members is not None:
            members.discard(sub)
            if not members:
                del self._groups[sub.group]
        if sub.task is not None and sub.task is not asyncio.current_task():
            sub.task.cancel()

    def _start_catch_up(self, sub: Subscription) -> None:
        sub.state = CATCHING_UP
        sub.task = asyncio.create_task(self._catch_up(sub), name="hub-catch-up")

    async def _catch_up(self, sub: Subscription) -> None:
        try:
            while sub.state == CATCHING_UP:
                after_seq, after_time = sub.cursor, (sub.since if sub.cursor is None else None)
                async def page_of(
                    snap: Snapshot, after_seq: int | None = after_seq, after_time: str | None = after_time
                ) -> dl.Page:
                    return await dl.read_page(
                        snap,
                        after_seq=after_seq,
                        after_time=after_time,
                        limit=self.page_size,
                        resource_type=sub.resource_type,
                        patient=sub.patient,
                    )

                page = await self.db.read(page_of)
                if sub.state != CATCHING_UP:
                    return
                sub.cursor = page.cursor
                if page.entries:
                    done = self._send(sub, changes_frame(page.entries, page.cursor, page.server_time))
                    if done is not None:
                        await done  # flow control: one page in flight at a time
                if not page.has_more and sub.cursor >= self.live_seq:
                    sub.state = LIVE  # from here the broadcaster serves it
                    sub.task = None  # nothing keeps the finished task (memory per socket)
                    return
        except asyncio.CancelledError:
            raise
        except HealthSyncError as exc:  # e.g. 410: cursor ahead of history; 503: database busy
            if exc.status >= 500:
                log.warning("catch-up stopped: %s", exc.message)
            error: dict[str, Any] = {"type": "error", **exc.body()}
            if exc.retry_after is not None:  # the client may resume from its last cursor then
                error["retry_after"] = exc.retry_after
            self._send(sub, orjson.dumps(error))
            self._drop(sub)
            sub.peer.close(4000 + exc.status, exc.message[:120])
        except Exception:
            log.exception("catch-up failed for a subscriber")
            self._drop(sub)
            sub.peer.close(1011, "catch-up failed")

    # Sending -----------------------------------------------------------------------------

    def _send(self, sub: Subscription, frame: bytes) -> Awaitable[None] | None:
        """Hand ``frame`` to the peer, counting unflushed bytes; lag it past the bound."""
        if sub.state == CLOSED:
            return None
        if sub.state == LAGGING:
            self.stats["frames_dropped"] += 1  # a batch event while paused
            return None
        try:
            done = sub.peer.send(frame)
        except Exception:
            done = None
        if done is None:
            self._drop(sub)
            return None
        size = len(frame)
        sub.buffered += size
        sub.frames_sent += 1
        self.stats["frames_sent"] += 1
        future = asyncio.ensure_future(done)
        future.add_done_callback(functools.partial(self._flushed, sub, size))
        if sub.buffered > self.max_buffer and sub.state == LIVE:
            sub.state = LAGGING
            self.stats["lagged"] += 1
            log.info("subscriber lagging (%d bytes unsent): live frames paused", sub.buffered)
        return future

    def _flushed(self, sub: Subscription, size: int, future: asyncio.Future[Any]) -> None:
        sub.buffered -= size
        if future.cancelled() or future.exception() is not None:
            self._drop(sub)
            return
        if sub.state == LAGGING and sub.buffered == 0:
            # Drained: catch up from the cursor by reads, then rejoin live.
            self._start_catch_up(sub)

