"""Background batches on Huey (SQLite storage): the apply task and its upkeep.

The ``batches`` table, not Huey's queue, is the truth about a batch.  Huey's
SQLite storage deletes a task when a worker takes it, so a worker that dies
mid-task loses the task; the batch row keeps ``status = 'processing'`` with
the ``task_id`` and ``claimed_at`` of its claim.  A task that starts records
its process in the claim (``worker``: host, pid and the process's start
token) and the process refreshes ``heartbeat_at`` every few seconds while it
runs claims.  ``requeue_stale`` (run when a consumer starts and every minute)
gives such a batch a new claim and a new task at once when its worker is a
process of this machine that no longer runs, or one of another machine whose
heartbeat stopped; any batch still ``processing`` past its lease, whatever
its worker, is re-queued too (the backstop).

Exactly once: ``trigger`` claims a batch (pending or failed -> processing,
with the id of the task it enqueues) in one write; the task then re-checks,
inside the very transaction that applies the batch, that the batch is still
``processing`` under *its* task id.  A duplicate task, a stale one, or one
whose batch was re-claimed after its lease finds the claim is not its own
and applies nothing.

Tasks are plain ``def`` functions run in consumer threads (or another
process): each opens its own ``Database`` and runs the same apply code as a
synchronous upload with ``asyncio.run``.

``HealthSyncConsumer`` is Huey's consumer for embedding: it leaves the
process's signal handlers alone; ``stop`` blocks, so call it off the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable

import orjson
from huey import SqliteHuey, crontab
from huey.api import Task
from huey.consumer import Consumer
from huey.signals import SIGNAL_COMPLETE, SIGNAL_ERROR, SIGNAL_EXECUTING

from settings import Settings

from . import clock
from .errors import Busy, Conflict, NotFound, StorageFull
from .storage import Database, WriteTx, mutations
from .sync.apply import apply_upload
from .sync.envelope import parse_upload

log = logging.getLogger("healthsync.tasks")

#: How often a process running claims refreshes their ``heartbeat_at``.
HEARTBEAT_SECONDS = 2.0
#: A claim whose worker is on another machine (its pid means nothing here) is
#: given up once its heartbeat is this old.
HEARTBEAT_STALE_SECONDS = 15.0

class HealthSyncConsumer(Consumer):
    """A Huey consumer that never installs signal handlers (the host owns them)."""

    def _set_signal_handlers(self) -> None:
        pass


def make_huey(settings: Settings) -> SqliteHuey:
    """A Huey on ``<data_dir>/huey.db`` with HealthSync's tasks registered.

    The tasks are reachable as ``huey.apply_batch`` and ``huey.maintenance``.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    huey = SqliteHuey(
        name="healthsync",
        filename=str(settings.data_dir / "huey.db"),
        results=False,
        utc=True,
        fsync=settings.synchronous == "FULL",
        timeout=10,
    )

    @huey.task(
        retries=settings.task_retries,
        retry_delay=settings.task_retry_delay,
        retry_backoff=2.0,
        context=True,
        name="apply_batch",
    )
    def apply_batch(batch_id: str, task: Task | None = None) -> str:
        assert task is not None
        final = not task.retries
        return asyncio.run(run_claimed_batch(settings, batch_id, task.id, final=final))

    @huey.periodic_task(crontab(minute="*"), name="maintenance")
    def maintenance() -> None:
        asyncio.run(upkeep(settings, huey))

    @huey.periodic_task(crontab(minute="0", hour=str(settings.backup_hour)), name="daily_backup")
    def daily_backup() -> str | None:
        return scheduled_backup(settings)

    huey.apply_batch = apply_batch  # type: ignore[attr-defined]
    huey.daily_backup = daily_backup  # type: ignore[attr-defined]
    huey.maintenance = maintenance  # type: ignore[attr-defined]
    return huey


def make_consumer(settings: Settings, huey: SqliteHuey) -> HealthSyncConsumer:
    return HealthSyncConsumer(
        huey,
        workers=settings.worker_threads,
        worker_type="thread",
        periodic=True,
        initial_delay=settings.worker_poll_seconds,
        backoff=1.0,
        max_delay=settings.worker_poll_seconds,
        check_worker_health=True,
    )


def open_db(settings: Settings) -> Database:
    return Database(
        settings.db_path, synchronous=settings.synchronous, readers=1, busy_timeout_ms=settings.busy_timeout_ms
    )


# The task ----------------------------------------------------------------------


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: the database was busy or locked by another writer,
    or its disk was full (an operator may free space before the last retry)."""
    if isinstance(exc, (Busy, StorageFull)):
        return True
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc)
    )


async def run_claimed_batch(settings: Settings, batch_id: str, task_id: str, *, final: bool) -> str:
    """Apply a batch this task has claimed: 'done', 'skipped' or 'failed'.

    A transient error is raised while retries remain (Huey retries with
    backoff); any other error, or the last transient one, ends the batch
    ``failed`` with the error, and it can be triggered again.
    """
    db = open_db(settings)
    try:
        try:
            with _running(batch_id):
                await db.write(lambda tx: _record_worker(tx, batch_id, task_id))
                return await db.write(lambda tx: _apply_if_claimed(tx, batch_id, task_id))
        except Exception as exc:
            if is_transient(exc) and not final:
                log.warning("batch %s: %s; will retry", batch_id, exc)
                raise
            error = f"{type(exc).__name__}: {exc}"
            log.error("batch %s failed: %s", batch_id, error)
            await db.write(lambda tx: _mark_failed(tx, batch_id, task_id, error))
            return "failed"
    finally:
        await db.close()


async def _apply_if_claimed(tx: WriteTx, batch_id: str, task_id: str) -> str:
    row = await (
        await tx.conn.execute("SELECT status, task_id, request FROM batches WHERE id = ?", (batch_id,))
    ).fetchone()
    if row is None or row[0] != "processing" or row[1] != task_id:
        log.info("batch %s is not claimed by task %s (%s): skipped", batch_id, task_id, row and row[0])
        return "skipped"
    request = parse_upload(orjson.loads(row[2]), max_changes=1 << 30)
    response = await apply_upload(tx, request, batch_id)
    await tx.conn.execute(
        "UPDATE batches SET status = 'done', response = ?, error = NULL, finished_at = ?, updated_at = ?"
        " WHERE id = ?",
        (orjson.dumps(response).decode(), tx.now(), tx.now(), batch_id),
    )
    tx.emit({"type": "batch", "batch_id": batch_id, "status": "done", "device_id": request.device_id})
    return "done"


async def _record_worker(tx: WriteTx, batch_id: str, task_id: str) -> None:
    """Name this process in the claim (if it is still this task's), before the apply."""
    await tx.conn.execute(
        "UPDATE batches SET worker = ?, heartbeat_at = ? WHERE id = ? AND status = 'processing' AND task_id = ?",
        (this_process(), tx.now(), batch_id, task_id),
    )


async def _mark_failed(tx: WriteTx, batch_id: str, task_id: str, error: str) -> None:
    await tx.conn.execute(
        "UPDATE batches SET status = 'failed', error = ?, finished_at = ?, updated_at = ?"
        " WHERE id = ? AND status = 'processing' AND task_id = ?",
        (error[:2000], tx.now(), tx.now(), batch_id, task_id),
    )


# Workers: which process runs a claim, and whether it still runs -----------------


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


async def heartbeat(db: Database) -> int:
    """Refresh ``heartbeat_at`` of the claims this process runs; how many."""
    with _running_lock:
        if not _running_batches:
            return 0

    async def run(tx: WriteTx) -> int:
        cur = await tx.conn.execute(
            "UPDATE batches SET heartbeat_at = ? WHERE worker = ? AND status = 'processing'",
            (tx.now(), this_process()),
        )
        return cur.rowcount

    return await db.write(run)


# Claims --------------------------------------------------------------------------


async def claim(db: Database, huey: SqliteHuey, batch_id: str) -> str:
    """Claim a pending or failed batch and enqueue its task; the task id.

    ``NotFound`` for an unknown batch, ``Conflict`` (409) for one that is
    ``processing`` or ``done``.
    """
    task = huey.apply_batch.s(batch_id)  # type: ignore[attr-defined]

    async def run(tx: WriteTx) -> None:
        row = await mutations.fetch_batch(tx, batch_id)
        if row is None:
            raise NotFound(f"batch {batch_id} not found")
        status = row[2]
        if status not in ("pending", "failed"):
            raise Conflict(
                f"batch {batch_id} is already {status}",
                [{"field": "batch_id", "message": f"status is {status}"}],
                status=status,
            )
        await tx.conn.execute(
            "UPDATE batches SET status = 'processing', task_id = ?, claimed_at = ?, error = NULL,"
            " worker = NULL, heartbeat_at = NULL, attempts = attempts + 1, updated_at = ? WHERE id = ?",
            (task.id, tx.now(), tx.now(), batch_id),
        )
        tx.emit({"type": "batch", "batch_id": batch_id, "status": "processing", "device_id": row[1]})

    await db.write(run)
    # After the commit: a crash between the two leaves the claim to expire
    # and be re-queued by requeue_stale, never a task without its claim.
    # Huey's storage is blocking SQLite: keep it off the event loop.
    await asyncio.get_running_loop().run_in_executor(None, huey.enqueue, task)
    return str(task.id)


async def requeue_stale(
    db: Database,
    huey: SqliteHuey,
    lease_seconds: float,
    heartbeat_stale_seconds: float = HEARTBEAT_STALE_SECONDS,
) -> list[str]:
    """Re-claim and re-enqueue ``processing`` batches whose worker is gone:
    a process of this machine that no longer runs, one of another machine
    silent for ``heartbeat_stale_seconds``, or any claim past its lease."""
    now = clock.now_us()
    cutoff = clock.format_us(now - int(lease_seconds * 1_000_000))
    beat_cutoff = clock.format_us(now - int(heartbeat_stale_seconds * 1_000_000))
    requeued: list[tuple[Task, str]] = []

    async def run(tx: WriteTx) -> None:
        rows = await tx.conn.execute_fetchall(
            "SELECT id, claimed_at, worker, heartbeat_at FROM batches WHERE status = 'processing'"
        )
        for batch_id, claimed_at, worker, heartbeat_at in rows:
            if claimed_at is not None and claimed_at < cutoff:
                why = "its worker did not finish within the lease"
            elif worker and worker_gone(worker):
                why = f"its worker {worker} no longer runs"
            elif worker and heartbeat_at and heartbeat_at < beat_cutoff and not _on_this_host(worker):
                why = f"its worker {worker} sent no heartbeat since {heartbeat_at}"
            else:
                continue
            task = huey.apply_batch.s(batch_id)  # type: ignore[attr-defined]
            await tx.conn.execute(
                "UPDATE batches SET task_id = ?, claimed_at = ?, worker = NULL, heartbeat_at = NULL,"
                " attempts = attempts + 1, updated_at = ? WHERE id = ?",
                (task.id, tx.now(), tx.now(), batch_id),
            )
            requeued.append((task, why))

    await db.write(run)
    for task, why in requeued:
        log.warning("re-queued batch %s: %s", task.args[0], why)
        await asyncio.get_running_loop().run_in_executor(None, huey.enqueue, task)
    return [t.args[0] for t, _ in requeued]


async def purge_old_batches(db: Database, retention_days: float) -> int:
    """Delete ``done`` batches (and their stored payloads) past the retention."""
    cutoff = clock.format_us(clock.now_us() - int(retention_days * 86_400 * 1_000_000))

    async def run(tx: WriteTx) -> int:
        cur = await tx.conn.execute("DELETE FROM batches WHERE status = 'done' AND finished_at < ?", (cutoff,))
        return cur.rowcount

    return await db.write(run)


async def purge_tombstones(db: Database, retention_days: float) -> int:
    """Remove tombstones older than the retention (raises the resync horizon)."""
    cutoff = clock.format_us(clock.now_us() - int(retention_days * 86_400 * 1_000_000))
    return await db.write(lambda tx: mutations.purge_tombstones(tx, cutoff))


async def upkeep(settings: Settings, huey: SqliteHuey) -> None:
    db = open_db(settings)
    try:
        await requeue_stale(db, huey, settings.batch_lease_seconds)
        tombstones = await purge_tombstones(db, settings.tombstone_retention_days)
        if tombstones:
            log.info("purged %d tombstones older than %s days", tombstones, settings.tombstone_retention_days)
        purged = await purge_old_batches(db, settings.batch_retention_days)
        if purged:
            log.info("purged %d done batches older than %s days", purged, settings.batch_retention_days)
    finally:
        await db.close()


def scheduled_backup(settings: Settings, today: str | None = None) -> str | None:
    """Today's backup into ``backup_dir`` (one file a day), keeping the newest
    ``backup_keep``; None when scheduled backups are off."""
    from .backup import backup

    if settings.backup_keep <= 0:
        return None
    folder = settings.effective_backup_dir
    folder.mkdir(parents=True, exist_ok=True)
    day = today or clock.format_us(clock.now_us())[:10].replace("-", "")
    dest = backup(settings.db_path, folder / f"healthsync-{day}.db")
    kept = sorted(folder.glob("healthsync-*.db"), reverse=True)
    for old in kept[settings.backup_keep :]:
        old.unlink()
    log.info("scheduled backup written to %s (%d kept)", dest, min(len(kept), settings.backup_keep))
    return str(dest)


# Running a consumer ------------------------------------------------------------------


TaskObserver = Callable[[str, str, float], None]


class EmbeddedWorker:
    """A Huey consumer in this process's threads, started and stopped by the host.

    ``on_task(name, outcome, seconds)``, if given, is called from the worker
    thread after each task (for metrics); it must be thread-safe.
    """

    def __init__(self, settings: Settings, huey: SqliteHuey, on_task: TaskObserver | None = None) -> None:
        self.settings = settings
        self.huey = huey
        self.consumer: HealthSyncConsumer | None = None
        self._stop_beating = threading.Event()
        self._beater: threading.Thread | None = None
        if on_task is not None:
            started: dict[str, float] = {}

            @huey.signal(SIGNAL_EXECUTING)
            def _executing(signal: str, task: Task) -> None:
                started[task.id] = time.monotonic()

            @huey.signal(SIGNAL_COMPLETE, SIGNAL_ERROR)
            def _finished(signal: str, task: Task, exc: BaseException | None = None) -> None:
                begun = started.pop(task.id, None)
                if begun is not None:
                    on_task(task.name, "ok" if signal == SIGNAL_COMPLETE else "error", time.monotonic() - begun)

    async def start(self) -> None:
        """Start the consumer threads and the heartbeat, then re-queue what a dead
        worker left behind."""
        self.consumer = make_consumer(self.settings, self.huey)
        self.consumer.start()
        self._stop_beating.clear()
        self._beater = threading.Thread(target=self._beat, name="healthsync-heartbeat", daemon=True)
        self._beater.start()
        db = open_db(self.settings)
        try:
            await requeue_stale(db, self.huey, self.settings.batch_lease_seconds)
        finally:
            await db.close()

    def stop(self) -> None:
        """Stop after the running tasks finish (blocks: call it off the event loop)."""
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            consumer.stop(graceful=True)
        beater, self._beater = self._beater, None
        if beater is not None:
            self._stop_beating.set()
            beater.join()

    def _beat(self) -> None:
        """The heartbeat thread: refresh this process's claims until stopped."""

        async def loop() -> None:
            db = open_db(self.settings)
            try:
                while not await asyncio.to_thread(self._stop_beating.wait, HEARTBEAT_SECONDS):
                    try:
                        await heartbeat(db)
                    except sqlite3.Error as exc:  # e.g. locked past busy_timeout: the next beat tries again
                        log.warning("heartbeat not written: %s", exc)
            finally:
                await db.close()

        asyncio.run(loop())

    @property
    def alive(self) -> bool:
        if self.consumer is None:
            return False
        return all(p.is_alive() for _, p in self.consumer.worker_threads)


def run_worker(settings: Settings, stop: threading.Event) -> int:
    """``run.py worker``: a consumer alone until ``stop`` is set."""
    huey = make_huey(settings)
    worker = EmbeddedWorker(settings, huey)
    asyncio.run(worker.start())
    log.info("worker ready on %s (%d threads)", settings.data_dir, settings.worker_threads)
    while not stop.wait(0.5):
        pass
    log.info("worker stopping")
    worker.stop()
    log.info("worker stopped")
    return 0


def queue_depth(huey: SqliteHuey) -> int:
    """Tasks waiting in Huey's queue (-1 when its file cannot be read)."""
    try:
        return int(huey.pending_count())
    except sqlite3.Error:
        return -1
