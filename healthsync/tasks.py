"""Huey wiring: the queue, its tasks, and consumers to run them.

``make_huey`` builds the queue (SqliteHuey in the data dir; on PostgreSQL,
Huey's PostgreSQL storage in the same database; RedisHuey when ``queue_url``
names a Redis, or another PostgreSQL, under ``queue_name``) and registers the
tasks: ``apply_batch`` (runs ``batches.run_claimed_batch``: the batch
lifecycle lives in ``batches.py``), the per-minute ``maintenance`` (re-queue
stale claims, purge tombstones and done batches past their retention) and
the ``daily_backup`` (SQLite only: PostgreSQL's backups are its own).  Tasks are plain ``def`` functions run in consumer
threads (or another process): each opens its own storage and runs the same
async code with ``asyncio.run``.  Every consumer's scheduler enqueues the
periodic jobs, so each runs under a queue lock and records the minute (or
day) it last ran: with several consumers on one queue it runs once per site.

``HealthSyncConsumer`` is Huey's consumer for embedding: it leaves the
process's signal handlers alone, and its ``QueueWorker`` threads and its
``QueueScheduler`` wait out a queue they cannot read (its Redis or
PostgreSQL down) with a warning a minute; ``stop`` blocks, so call it off
the loop.
``EmbeddedWorker`` runs one in this process, with the claims' heartbeat.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from huey import Huey, RedisHuey, SqliteHuey, crontab
from huey.api import Task
from huey.consumer import Consumer, Scheduler, Worker
from huey.signals import SIGNAL_COMPLETE, SIGNAL_ERROR, SIGNAL_EXECUTING

from . import clock
from .batches import HEARTBEAT_SECONDS, close_queue, heartbeat, purge_old_batches, requeue_stale, run_claimed_batch
from .errors import HealthSyncError
from .redact import redact_url
from .settings import Settings
from .storage import Storage, make_storage

log = logging.getLogger("healthsync.tasks")


#: While the queue cannot be read (its Redis down), a consumer thread tries again this often.
QUEUE_DOWN_RETRY_SECONDS = 1.0
#: ...and says so again in the log this often.
QUEUE_DOWN_LOG_SECONDS = 60.0


class _QueueDown:
    """Says that the queue cannot be read once a minute, and when it can again."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.logged: float | None = None

    def failed(self, exc: BaseException) -> None:
        if self.logged is None or time.monotonic() - self.logged > QUEUE_DOWN_LOG_SECONDS:
            log.warning("the task queue cannot be read (%s): %s", _one_line(exc), self.what)
            self.logged = time.monotonic()

    def ok(self) -> None:
        if self.logged is not None:
            log.info("the task queue can be read again")
            self.logged = None


def _one_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


class QueueWorker(Worker):
    """Huey's worker thread, but a queue it cannot read (its Redis or PostgreSQL
    down) is one warning a minute and a retry a second, not a traceback every poll."""

    _down: _QueueDown | None = None

    def loop(self, now: Any = None) -> None:
        if self._down is None:
            self._down = _QueueDown(f"trying again every {QUEUE_DOWN_RETRY_SECONDS} s")
        try:
            task = self.huey.dequeue()
        except Exception as exc:  # whatever the queue's backend raises
            self._down.failed(exc)
            self.stop_flag.wait(QUEUE_DOWN_RETRY_SECONDS)
            return
        self._down.ok()
        if task is None:
            if not self.huey.storage.blocking:
                self.sleep()
            return
        self.delay = self.default_delay
        self.task_count += 1
        try:
            self.huey.execute(task, now)
        except Exception:
            log.exception("unhandled error in task %s", task.id)


class QueueScheduler(Scheduler):
    """Huey's scheduler thread, but a queue it cannot read or write is one warning
    a minute, not a traceback a second (a periodic job missed then runs in the next
    period: each records the period it last ran)."""

    _down: _QueueDown | None = None

    def loop(self, now: Any = None) -> None:
        if self._down is None:
            self._down = _QueueDown("scheduled and periodic tasks wait for it")
        current = self._next_loop
        self._next_loop += self.interval
        if self._next_loop < time.monotonic():
            self._next_loop = time.monotonic()  # a stall: skip an iteration, as Huey's does
            return
        try:
            due = self.huey.read_schedule(now)
        except Exception as exc:  # whatever the queue's backend raises
            self._down.failed(exc)
        else:
            refused = False
            for task in due:  # each on its own: one refused (a retry lost) is re-queued after its batch's lease
                try:
                    self.huey.enqueue(task)
                except Exception as exc:
                    refused = True
                    self._down.failed(exc)
            if not refused:
                self._down.ok()
        if self.periodic and self._next_periodic <= time.monotonic():
            while self._next_periodic <= time.monotonic():
                self._next_periodic += self.periodic_task_seconds
            self.enqueue_periodic_tasks(now)
        self.sleep_for_interval(current, self.interval)

    def enqueue_periodic_tasks(self, now: Any) -> None:
        assert self._down is not None
        for task in self.huey.read_periodic(now):
            try:
                self.huey.enqueue(task)
            except Exception as exc:  # the job runs in the next period
                self._down.failed(exc)


class HealthSyncConsumer(Consumer):
    """A Huey consumer that never installs signal handlers (the host owns them),
    with ``QueueWorker`` threads and a ``QueueScheduler``."""

    worker_class = QueueWorker
    scheduler_class = QueueScheduler

    def _set_signal_handlers(self) -> None:
        pass


#: Redis connection timeouts: an unreachable Redis is an answer (503) in seconds, never a hang.
REDIS_CONNECT_TIMEOUT = 2.0
REDIS_SOCKET_TIMEOUT = 5.0  # above RedisHuey's 1 s blocking read


#: The queue's name in the site's own PostgreSQL database: the database is the site.
SITE_QUEUE_NAME = "healthsync"


def queue_backend(settings: Settings) -> str:
    """Where the queue lives: ``sqlite`` (the data dir), ``postgres`` or ``redis``."""
    if settings.queue_url:
        return "redis" if settings.queue_url.startswith(("redis://", "rediss://")) else "postgres"
    return "postgres" if settings.on_postgres else "sqlite"


def _in_site_database(settings: Settings) -> bool:
    return settings.on_postgres and settings.queue_url in ("", settings.database_url)


def queue_name(settings: Settings) -> str:
    """The site's queue name: ``queue_name``; else ``healthsync`` in the site's own
    PostgreSQL database (one site per database); else (a Redis, or another
    PostgreSQL, that sites may share) one derived from the data dir."""
    if settings.queue_name:
        return settings.queue_name
    if _in_site_database(settings):
        return SITE_QUEUE_NAME
    digest = hashlib.sha256(str(settings.data_dir.resolve()).encode()).hexdigest()[:12]
    return f"healthsync-{digest}"


def queue_info(settings: Settings) -> dict[str, Any]:
    """The queue backend as ``/api/health`` names it (a password in the URL is masked)."""
    backend = queue_backend(settings)
    if backend == "sqlite":
        return {"backend": "sqlite"}
    url = settings.queue_url or settings.database_url
    return {"backend": backend, "url": redact_url(url), "name": queue_name(settings)}


def _open_queue(settings: Settings) -> Huey:
    if queue_backend(settings) == "postgres":
        from .storage.postgres.queue import PostgresQueue

        # Nothing is opened yet: the first use connects (and creates the tables).
        return PostgresQueue(queue_name(settings), dsn=settings.queue_url or settings.database_url,
                             results=False, utc=True)
    if settings.queue_url:
        from redis import ConnectionPool

        pool = ConnectionPool.from_url(
            settings.queue_url,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT,
            socket_timeout=REDIS_SOCKET_TIMEOUT,
        )
        return RedisHuey(name=queue_name(settings), connection_pool=pool, results=False, utc=True)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SqliteHuey(
        name="healthsync",
        filename=str(settings.data_dir / "huey.db"),
        results=False,
        utc=True,
        fsync=settings.synchronous == "FULL",
        timeout=10,
    )


T = TypeVar("T")


#: A periodic job's lock older than this was left by a consumer that died: it is taken over.
LOCK_STALE_SECONDS = 3600.0


def once_per_site(huey: Huey, name: str, period: str, job: Callable[[], T]) -> T | None:
    """Run ``job`` unless another consumer runs it now or already ran it in
    this ``period`` (a minute or a day, as a string); None when skipped.

    The lock and the last period are keys in the queue's own storage, so
    this holds for every consumer of one queue (one data dir, or one Redis
    queue name)."""
    lock, last = f"healthsync.lock.{name}", f"healthsync.last.{name}"
    now = time.time()
    try:
        if not huey.put_if_empty(lock, now):
            held = huey.get(lock, peek=True)
            if isinstance(held, int | float) and now - held < LOCK_STALE_SECONDS:
                log.debug("%s already running in another consumer", name)
                return None
            log.warning("%s: taking over a lock left since %s by a consumer that stopped", name, held)
            huey.delete(lock)
            if not huey.put_if_empty(lock, now):
                return None
        if huey.get(last, peek=True) == period:
            huey.delete(lock)
            return None
    except Exception as exc:  # whatever the queue's backend raises (its Redis down): the next period runs it
        log.warning("%s skipped: the task queue cannot be read (%s)", name, exc)
        return None
    try:
        result = job()
        huey.put(last, period)
        return result
    except Exception as exc:
        # The job's own errors, and the queue lost meanwhile (a Redis down, between the two:
        # the job itself runs on the database, and what it does is safe to do twice).
        if _is_queue_error(exc):
            log.warning("%s: the task queue went away while it ran (%s)", name, exc)
            return None
        raise
    finally:
        try:
            huey.delete(lock)
        except Exception as exc:  # the lock goes stale and is taken over
            log.warning("%s: its lock not released: the task queue cannot be reached (%s)", name, exc)


def _is_queue_error(exc: BaseException) -> bool:
    """An error of the queue's storage (its Redis or PostgreSQL unreachable), not of the job."""
    from .storage.postgres.queue import is_queue_error

    if is_queue_error(exc):
        return True
    try:
        from redis import RedisError
    except ImportError:  # pragma: no cover - redis is in requirements.txt
        return False
    return isinstance(exc, RedisError)


def make_huey(settings: Settings) -> Huey:
    """The queue ``queue_url`` names (default ``<data_dir>/huey.db``, or the site's
    PostgreSQL database) with HealthSync's tasks registered.

    The tasks are reachable as ``huey.apply_batch`` and ``huey.maintenance``.
    """
    huey = _open_queue(settings)

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
        minute = clock.format_us(clock.now_us())[:16]
        once_per_site(huey, "maintenance", minute, lambda: asyncio.run(upkeep(settings, huey)))

    @huey.periodic_task(crontab(minute="0", hour=str(settings.backup_hour)), name="daily_backup")
    def daily_backup() -> str | None:
        day = clock.format_us(clock.now_us())[:10]
        return once_per_site(huey, "daily_backup", day, lambda: scheduled_backup(settings))

    huey.apply_batch = apply_batch  # type: ignore[attr-defined]
    huey.daily_backup = daily_backup  # type: ignore[attr-defined]
    huey.maintenance = maintenance  # type: ignore[attr-defined]
    return huey


def make_consumer(settings: Settings, huey: Huey) -> HealthSyncConsumer:
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


# Periodic jobs ---------------------------------------------------------------------


async def purge_tombstones(db: Storage, retention_days: float) -> int:
    """Remove tombstones older than the retention (raises the resync horizon)."""
    return await db.purge_tombstones(clock.format_us(clock.now_us() - int(retention_days * 86_400 * 1_000_000)))


async def upkeep(settings: Settings, huey: Huey) -> None:
    db = make_storage(settings, worker=True)
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
    ``backup_keep``; None when scheduled backups are off, or on PostgreSQL
    (whose backups are its own: ``pg_dump``, base backups)."""
    if settings.backup_keep <= 0 or settings.on_postgres:
        return None
    folder = settings.effective_backup_dir
    folder.mkdir(parents=True, exist_ok=True)
    day = today or clock.format_us(clock.now_us())[:10].replace("-", "")
    dest = asyncio.run(_backup(settings, folder / f"healthsync-{day}.db"))
    kept = sorted(folder.glob("healthsync-*.db"), reverse=True)
    for old in kept[settings.backup_keep :]:
        old.unlink()
    log.info("scheduled backup written to %s (%d kept)", dest, min(len(kept), settings.backup_keep))
    return str(dest)


async def _backup(settings: Settings, dest: Path) -> Path:
    db = make_storage(settings, worker=True)
    try:
        return await db.backup(dest)
    finally:
        await db.close()


# Running a consumer ------------------------------------------------------------------


TaskObserver = Callable[[str, str, float], None]


class EmbeddedWorker:
    """A Huey consumer in this process's threads, started and stopped by the host.

    ``on_task(name, outcome, seconds)``, if given, is called from the worker
    thread after each task (for metrics); it must be thread-safe.
    """

    def __init__(self, settings: Settings, huey: Huey, on_task: TaskObserver | None = None) -> None:
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
        db = make_storage(self.settings, worker=True)
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
            db = make_storage(self.settings, worker=True)
            try:
                while not await asyncio.to_thread(self._stop_beating.wait, HEARTBEAT_SECONDS):
                    try:
                        await heartbeat(db)
                    except HealthSyncError as exc:  # e.g. busy past busy_timeout: the next beat tries again
                        log.warning("heartbeat not written: %s", exc.message)
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
    close_queue(huey)
    log.info("worker stopped")
    return 0


def queue_depth(huey: Huey) -> int:
    """Tasks waiting in Huey's queue (-1 when it cannot be read)."""
    try:
        return int(huey.pending_count())
    except Exception as exc:  # whatever the queue's backend raises (a locked file, a full disk, a lost server)
        log.warning("queue depth not read: %s", exc)
        return -1
