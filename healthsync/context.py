"""``Context``: the services of one application, handed to every handler.

Built by ``app.make_app``; handlers receive it through ``initialize`` and
only read it.  Event loop only.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

from settings import Settings

from .audit import AuditTrail
from .auth import RateLimiter, Tokens
from .batches import BatchService
from .metrics import Metrics
from .push.hub import Hub
from .resources import Resources
from .storage import Database
from .storage.db import probe
from .sync.service import SyncService
from .tasks import EmbeddedWorker, queue_depth


@dataclass
class Context:
    """The services every handler may use, injected through ``initialize``."""

    settings: Settings
    db: Database
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

    async def health(self) -> dict[str, Any]:
        report: dict[str, Any] = {
            "status": "ok",
            "auth": self.settings.auth_mode,
            "uptime_seconds": round(time.time() - self.started, 3),
        }
        try:
            row = await self.db.fetchone("SELECT seq FROM clock")
            await asyncio.get_running_loop().run_in_executor(None, probe, self.db.path)
            report["database"] = {"ok": True, "schema_version": self.db.schema_version, "head": row[0]}
        except Exception as exc:  # any failure to read is "down", not a 500
            report["status"] = "unavailable"
            report["database"] = {"ok": False, "error": str(exc)}
        if self.settings.auth_mode == "open" and not self.settings.on_loopback:
            report["warning"] = "serving patient data WITHOUT authentication on the network (--allow-open-network)"
        usage = shutil.disk_usage(self.settings.data_dir)
        report["disk_free_bytes"] = usage.free
        report["websockets"] = self.hub.count
        report["worker"] = {
            "embedded": self.worker is not None,
            "alive": self.worker.alive if self.worker is not None else None,
            "queue_depth": queue_depth(self.batches.huey),
        }
        if self.worker is not None and not self.worker.alive:
            report["status"] = "unavailable"
        return report
