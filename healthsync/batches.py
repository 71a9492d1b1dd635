"""Background batches: the service-level lifecycle, in one place.

The batch row in storage, not the task queue, is the truth about a batch.
Huey deletes a task when a worker takes it, so a worker that dies mid-task
loses the task; the batch stays ``processing`` with the ``task_id`` and
``claimed_at`` of its claim.  A task that starts names its process in the
claim (``this_process``: host, pid and the process's start token) and the
process refreshes the claim's heartbeat every few seconds while it runs
claims (``heartbeat``).  ``requeue_stale`` (when a consumer starts and every
minute) gives such a batch a new claim and a new task at once when its worker
is a process of this machine that no longer runs, or one of another machine
whose heartbeat stopped; any batch still ``processing`` past its lease,
whatever its worker, is re-queued too (the backstop).  When the queue
refuses the new task (its Redis down), the new claim stays and is re-queued
in turn once its lease is over.

Exactly once: ``claim`` claims a batch (pending or failed -> processing, with
the id of the task it enqueues) in one write; the task then applies it with
storage's ``apply_claimed_batch``, which re-checks inside the very
transaction that applies that the batch is still ``processing`` under *its*
task id.  A duplicate task, a stale one, or one whose batch was re-claimed
after its lease applies nothing.

``BatchService`` is what the batch endpoints call.  The queue (a Huey with
an ``apply_batch`` task, built by ``tasks.make_huey``) comes in from outside;
this module never imports ``tasks``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

import orjson
from huey import Huey
from huey.api import Task
from huey.storage import RedisStorage

from . import clock
from .auth import OPEN, Principal, require_device
from .errors import Busy, NotFound, QueueUnavailable, StorageFull, Unreachable
from .settings import Settings
from .storage import Claim, Storage, WriteTx, make_storage
from .sync.apply import apply_upload
from .sync.envelope import parse_upload

log = logging.getLogger("healthsync.tasks")

#: How often a process running claims refreshes their heartbeat.
HEARTBEAT_SECONDS = 2.0
#: A claim whose worker is on another machine (its pid means nothing here) is
#: given up once its heartbeat is this old.
HEARTBEAT_STALE_SECONDS = 15.0


class BatchService:
    """Trigger, status and listing of stored batches, for the web layer."""

    def __init__(self, db: Storage, make_queue: Callable[[], Huey]) -> None:
        self.db = db
        self._make_queue = make_queue
        self._huey: Huey | None = None

    @property
    def huey(self) -> Huey:
        """The task queue, made on first use (SQLite's lives in the data dir)."""
        if self._huey is None:
            self._huey = self._make_queue()
        return self._huey

    def close_queue(self) -> None:
        """Close the queue's connection, if it was opened (blocking: off the loop)."""
        huey, self._huey = self._huey, None
        if huey is not None:
            close_queue(huey)

    async def trigger(self, batch_id: str, principal: Principal = OPEN) -> str:
        """Claim the batch and enqueue its task; the task id.

        A device token may trigger only its own device's batches.
        """
        if principal.is_device:
            require_device(principal, (await self.get(batch_id))["device_id"])
        return await claim(self.db, self.huey, batch_id)

    async def get(self, batch_id: str) -> dict[str, Any]:
        batch = await self.db.get_batch(batch_id)
        if batch is None:
            raise NotFound(f"batch {batch_id} not found")
        return batch

    async def list(
        self, *, device_id: str | None, status: str | None, limit: int | None, after: int
    ) -> tuple[list[dict[str, Any]], int | None]:
        return await self.db.list_batches(device_id=device_id, status=status, limit=limit, after=after)


# Claims ----------------------------------------------------------------------------


async def claim(db: Storage, huey: Huey, batch_id: str) -> str:
    """Claim a pending or failed batch and enqueue its task; the task id.

    ``NotFound`` for an unknown batch, ``Conflict`` (409) for one that is
    ``processing`` or ``done``.
    """
    task = huey.apply_batch.s(batch_id)  # type: ignore[attr-defined]
    await db.claim_batch(batch_id, task.id)
    # After the commit: a crash between the two leaves the claim to expire
    # and be re-queued by requeue_stale, never a task without its claim.
    # Huey's storage may block (SQLite, Redis): keep it off the event loop.
    try:
        await asyncio.get_running_loop().run_in_executor(None, huey.enqueue, task)
    except Exception as exc:  # whatever the queue's backend raises: it did not take the task
        log.warning("the task queue refused batch %s (%s): claim released", batch_id, exc)
        await db.release_batch(batch_id, task.id)
        raise QueueUnavailable(
            f"the task queue could not take batch {batch_id}: trigger it again in a moment",
            [{"field": "batch_id", "message": "queue unavailable; the batch is pending"}],
        ) from None
    return str(task.id)


async def requeue_stale(
    db: Storage,
    huey: Huey,
    lease_seconds: float,
    heartbeat_stale_seconds: float = HEARTBEAT_STALE_SECONDS,
) -> list[str]:
    """Re-claim and re-enqueue ``processing`` batches whose worker is gone:
    a process of this machine that no longer runs, one of another machine
    silent for ``heartbeat_stale_seconds``, or any claim past its lease."""
    now = clock.now_us()
    cutoff = clock.format_us(now - int(lease_seconds * 1_000_000))
    beat_cutoff = clock.format_us(now - int(heartbeat_stale_seconds * 1_000_000))
    tasks: dict[str, tuple[Task, str]] = {}

    def pick(c: Claim) -> str | None:
        if c.claimed_at is not None and c.claimed_at < cutoff:
            why = "its worker did not finish within the lease"
        elif c.worker and worker_gone(c.worker):
            why = f"its worker {c.worker} no longer runs"
        elif c.worker and c.heartbeat_at and c.heartbeat_at < beat_cutoff and not _on_this_host(c.worker):
            why = f"its worker {c.worker} sent no heartbeat since {c.heartbeat_at}"
        else:
            return None
        task = huey.apply_batch.s(c.batch_id)  # type: ignore[attr-defined]
        tasks[c.batch_id] = (task, why)
        return str(task.id)

    moved = await db.reclaim_batches(pick)
    for old, _ in moved:
        task, why = tasks[old.batch_id]
        try:
            await asyncio.get_running_loop().run_in_executor(None, huey.enqueue, task)
        except Exception as exc:  # the queue's backend is down: the new claim expires and is re-queued
            log.warning("batch %s not re-queued (%s): the task queue refused it (%s); tried again after "
                        "its lease", old.batch_id, why, exc)
            continue
        log.warning("re-queued batch %s: %s", old.batch_id, why)
    return [old.batch_id for old, _ in moved]


async def purge_old_batches(db: Storage, retention_days: float) -> int:
    """Delete ``done`` batches (and their stored payloads) past the retention."""
    return await db.purge_batches(clock.format_us(clock.now_us() - int(retention_days * 86_400 * 1_000_000)))


# Running a claimed batch -------------------------------------------------------------


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: the database was busy or locked by another writer,
    its disk was full (an operator may free space before the last retry), or its
    server could not be reached (PostgreSQL restarting)."""
    return isinstance(exc, (Busy, StorageFull, Unreachable))


async def _apply_stored(tx: WriteTx, request: str, batch_id: str) -> dict[str, Any]:
    """Apply a stored upload exactly as a synchronous upload would be."""
    return await apply_upload(tx, parse_upload(orjson.loads(request), max_changes=1 << 30), batch_id)


async def run_claimed_batch(settings: Settings, batch_id: str, task_id: str, *, final: bool) -> str:
    """Apply a batch this task has claimed, on a storage of its own:
    'done', 'skipped', 'failed' or 'unreachable'.

    A transient error is raised while retries remain (Huey retries with
    backoff); any other error, or the last transient one, ends the batch
    ``failed`` with the error, and it can be triggered again; except a
    database still unreachable at the last retry, which cannot record that:
    the batch stays ``processing`` and its lease re-queues it.
    """
    db = make_storage(settings, worker=True)
    try:
        try:
            with _running(batch_id):
                await db.record_batch_worker(batch_id, task_id, this_process())
                if not await db.apply_claimed_batch(
                    batch_id, task_id, lambda tx, request: _apply_stored(tx, request, batch_id)
                ):
                    log.info("batch %s is not claimed by task %s: skipped", batch_id, task_id)
                    return "skipped"
                return "done"
        except Exception as exc:
            if is_transient(exc) and not final:
                log.warning("batch %s: %s; will retry", batch_id, exc)
                raise
            if isinstance(exc, Unreachable):
                # Nothing can be recorded while the database is away: the claim stays, and
                # the batch is re-queued once its lease is over (requeue_stale), never lost.
                log.warning("batch %s: %s; left processing until its lease is over", batch_id, exc)
                return "unreachable"
            error = f"{type(exc).__name__}: {exc}"
            log.error("batch %s failed: %s", batch_id, error)
            await db.fail_batch(batch_id, task_id, error)
            return "failed"
    finally:
        await db.close()


# Workers: which process runs a claim, and whether it still runs -----------------------


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start token) of a process from ``/proc`` (Linux), None when unknown.

    The start token is the boot id and the start time: a later process that
    gets the same pid has another one.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold anything.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return fields[0].decode(), f"{boot}-{fields[19].decode()}"  # fields 3 (state) and 22 (starttime)


_THIS_PROCESS: tuple[int, str] | None = None


def this_process() -> str:
    """How a claim names this process: ``host:pid:start token``."""
    global _THIS_PROCESS
    pid = os.getpid()
    if _THIS_PROCESS is None or _THIS_PROCESS[0] != pid:  # computed once (again after a fork)
        stat = _proc_stat(pid)
        _THIS_PROCESS = (pid, f"{socket.gethostname()}:{pid}:{stat[1] if stat else ''}")
    return _THIS_PROCESS[1]


def _on_this_host(worker: str) -> bool:
    return worker.rsplit(":", 2)[0] == socket.gethostname()


def worker_gone(worker: str) -> bool:
    """True when ``worker`` names a process of this machine that no longer runs
    (exited, a zombie, or its pid now belongs to another process); False when
    it runs or this machine cannot tell (another host)."""
    try:
        host, pid_text, token = worker.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it runs, as another user
    stat = _proc_stat(pid)
    if stat is None:
        return False
    state, current = stat
    return state == "Z" or (bool(token) and current != token)


_running_lock = threading.Lock()
_running_batches: set[str] = set()


class _running:
    """Marks a batch as run by this process while its task works (for the heartbeat)."""

    def __init__(self, batch_id: str) -> None:
        self.batch_id = batch_id

    def __enter__(self) -> None:
        with _running_lock:
            _running_batches.add(self.batch_id)

    def __exit__(self, *exc: object) -> None:
        with _running_lock:
            _running_batches.discard(self.batch_id)


async def heartbeat(db: Storage) -> int:
    """Refresh the heartbeat of the claims this process runs; how many."""
    with _running_lock:
        if not _running_batches:
            return 0
    return await db.heartbeat_batches(this_process())


def close_queue(huey: Huey) -> None:
    """Let go of the queue's connections (blocking): Huey's storage closes what it
    holds, and a Redis queue's connection pool, which Huey's Redis storage leaves open."""
    huey.storage.close()
    if isinstance(huey.storage, RedisStorage):
        huey.storage.conn.connection_pool.disconnect()
