"""``Context``: the services of one application, handed to every handler.

Built by ``app.make_app``; handlers receive it through ``initialize`` and
only read it.  Event loop only: what blocks (Huey's SQLite queue, opening
the data file afresh) runs in a thread.

Health: ``unavailable`` (503) when the database cannot be read, the
embedded consumer died, or the task queue on Redis or PostgreSQL cannot
be reached; ``degraded`` (200: the box still serves reads, and writes
until the disk is really full) when free space under ``data_dir`` is below
``min_free_disk_bytes``; the reasons are listed.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

from .audit import AuditTrail
from .auth import RateLimiter, Tokens
from .batches import BatchService
from .metrics import Metrics
from .push.hub import Hub
from .resources import Resources
from .settings import Settings
from .storage import Storage
from .sync.service import SyncService
from .tasks import EmbeddedWorker, queue_depth, queue_info

log = logging.getLogger("healthsync.tasks")


@dataclass
class Context:
    """The services every handler may use, injected through ``initialize``."""

    settings: Settings
    db: Storage
    resources: Resources
    sync: SyncService
    batches: BatchService
    hub: Hub
    tokens: Tokens
    audit: AuditTrail
    limiter: RateLimiter
    metrics: Metrics = field(default_factory=Metrics)
    worker: EmbeddedWorker | None = None
    started: float = field(default_factory=time.time)
    inflight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    #: Huey's queue depth as last read by ``read_queue_depth`` (the metrics gauge shows it)
    queue_depth_seen: int = 0
    #: how long a request waits for that read before reporting -1 (the read goes on)
    queue_depth_wait: float = 2.0
    _queue_read: asyncio.Future[int] | None = field(default=None, repr=False)

    async def read_queue_depth(self) -> int:
        """Tasks waiting in Huey's queue, read in a thread (Huey's storage is
        blocking SQLite, with its own 10 s busy timeout); -1 when unreadable or
        slower than ``queue_depth_wait``.  One read at a time: callers share it."""
        if self._queue_read is None or self._queue_read.done():
            self._queue_read = asyncio.ensure_future(asyncio.to_thread(self._queue_depth))
        try:
            self.queue_depth_seen = await asyncio.wait_for(asyncio.shield(self._queue_read), self.queue_depth_wait)
        except TimeoutError:
            self.queue_depth_seen = -1
        return self.queue_depth_seen

    def _queue_depth(self) -> int:  # a thread: the first call also creates Huey's file
        try:
            huey = self.batches.huey
        except Exception as exc:  # e.g. a full disk while Huey's file is made: the gauge says unreadable
            log.warning("task queue not opened: %s", exc)
            return -1
        return queue_depth(huey)

    async def health(self) -> dict[str, Any]:
        """The health report; never raises (a part that cannot be read says so)."""
        unavailable: list[str] = []
        degraded: list[str] = []
        report: dict[str, Any] = {
            "status": "ok",
            "reasons": [],
            "auth": self.settings.auth_mode,
            "uptime_seconds": round(time.time() - self.started, 3),
        }
        try:
            head, _ = await self.db.head()
            await self.db.probe()
            report["database"] = {
                "backend": self.db.backend, "ok": True, "schema_version": self.db.schema_version, "head": head,
            }
        except Exception as exc:  # any failure to read is "down", not a 500
            unavailable.append(f"database unreadable: {exc}")
            report["database"] = {"backend": self.db.backend, "ok": False, "error": str(exc)}
        if self.settings.auth_mode == "open" and not self.settings.on_loopback:
            report["warning"] = "serving patient data WITHOUT authentication on the network (--allow-open-network)"
        where = self.settings.data_dir
        if self.settings.on_postgres:  # nothing of the data lives there: the folder may not even exist
            while not where.exists() and where != where.parent:
                where = where.parent
        try:
            free = shutil.disk_usage(where).free
        except OSError as exc:
            free = -1
            degraded.append(f"free disk space unknown: {exc}")
        if 0 <= free < self.settings.min_free_disk_bytes:
            degraded.append(
                f"low disk space: {free} bytes free under the data folder, below min_free_disk_bytes "
                f"({self.settings.min_free_disk_bytes}); writes answer 507 once it is full"
            )
        report["disk_free_bytes"] = free
        report["websockets"] = self.hub.count
        report["worker"] = {
            "embedded": self.worker is not None,
            "alive": self.worker.alive if self.worker is not None else None,
            "queue_depth": await self.read_queue_depth(),
        }
        queue = queue_info(self.settings)
        queue["ok"] = self.queue_depth_seen >= 0
        report["queue"] = queue
        if queue["backend"] != "sqlite" and not queue["ok"]:
            # SQLite's queue is a file beside the database (a lock on it is brief); a Redis or a
            # PostgreSQL that does not answer takes every trigger and every consumer with it.
            unavailable.append(f"the task queue cannot be reached ({queue['backend']} {queue['url']})")
        if self.worker is not None and not self.worker.alive:
            unavailable.append("the embedded worker stopped")
        report["reasons"] = unavailable + degraded
        report["status"] = "unavailable" if unavailable else "degraded" if degraded else "ok"
        return report
