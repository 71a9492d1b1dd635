"""``make_app(settings)``: the one place HealthSync is assembled.

It builds the storage (``storage.make_storage``) and the services, puts them on a ``Context``, and
hands that to every handler through the route table (``initialize``).  All
state lives on the returned application object; ``cli.py`` and every test
use this factory.  ``startup()`` opens and migrates the database before the
server listens; ``shutdown()`` closes in order.

Thread-safety: the application and its context belong to the event loop that
called ``startup()``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import tornado.web

from .audit import AuditTrail
from .auth import RateLimiter, Tokens
from .batches import BatchService
from .context import Context
from .push.hub import Hub
from .redact import scrub
from .resources import Resources
from .settings import Settings
from .storage import CommitInfo, make_storage
from .sync.service import SyncService
from .tasks import EmbeddedWorker, make_huey
from .web.audit import AuditHandler
from .web.base import GZip, NotFoundHandler, StaticHandler
from .web.batches import BatchHandler, BatchListHandler, TriggerHandler
from .web.files import STATIC_DIR
from .web.health import HealthHandler, MetricsHandler
from .web.openapi import DocsHandler, SchemaHandler
from .web.resources import PatientHandler, PatientListHandler, RecordHandler, RecordListHandler
from .web.sync import (
    ConflictHandler,
    ConflictListHandler,
    ConflictResolveHandler,
    DeviceListHandler,
    DownloadHandler,
    UploadHandler,
)
from .web.ws import SyncSocket

log = logging.getLogger("healthsync")
access_log = logging.getLogger("healthsync.access")


class HealthSyncApp(tornado.web.Application):
    ctx: Context

    async def startup(self) -> None:
        await self.ctx.db.open()
        await self.ctx.hub.start()
        if self.ctx.settings.embedded_worker:
            loop = asyncio.get_running_loop()
            metrics = self.ctx.metrics

            def on_task(name: str, outcome: str, seconds: float) -> None:  # a worker thread
                loop.call_soon_threadsafe(metrics.observe_task, name, outcome, seconds)

            self.ctx.worker = EmbeddedWorker(self.ctx.settings, self.ctx.batches.huey, on_task)
            await self.ctx.worker.start()
        if self.ctx.settings.synchronous != "FULL":
            log.warning(
                "synchronous=%s: acknowledged writes may be lost on a power cut",
                self.ctx.settings.synchronous,
            )

    async def drain(self, timeout: float) -> None:
        """Wait (up to ``timeout``) for in-flight requests to finish."""
        if self.ctx.inflight:
            try:
                async with asyncio.timeout(timeout):  # (not wait_for: it may swallow a cancel on 3.11)
                    await self.ctx.idle.wait()
            except TimeoutError:
                log.warning("%d requests still running at shutdown", self.ctx.inflight)

    async def shutdown(self) -> None:
        await self.ctx.hub.close()  # websockets get a close frame
        await self.ctx.audit.close()
        worker, self.ctx.worker = self.ctx.worker, None
        if worker is not None:
            # Consumer.stop(graceful=True) joins threads: never on the event loop.
            await asyncio.get_running_loop().run_in_executor(None, worker.stop)
        await asyncio.get_running_loop().run_in_executor(None, self.ctx.batches.close_queue)
        await self.ctx.db.close()


def _log_request(handler: tornado.web.RequestHandler) -> None:
    """One access line per request (never patient data), and the request metrics."""
    status = handler.get_status()
    seconds = handler.request.request_time()
    ctx: Context | None = getattr(handler, "ctx", None)
    principal = getattr(handler, "principal", None)
    route = type(handler).__name__
    path = scrub(handler.request.path)  # never the query: it may hold a credential
    if ctx is not None:
        ctx.metrics.observe_request(route, handler.request.method or "", status, seconds)
    # 503 is the server saying "not now" (shutting down, database locked by another process), 507 a full
    # disk: faults of the machine the client is told to wait out, not of the server's own making.
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 or status in (503, 507) else logging.ERROR
    access_log.log(
        level,
        "%s %s %d %.1fms %s",
        handler.request.method,
        path,
        status,
        1000.0 * seconds,
        getattr(principal, "name", None) or "-",
        extra={
            "method": handler.request.method,
            "path": path,
            "status": status,
            "duration_ms": round(1000.0 * seconds, 2),
            "token": getattr(principal, "name", None),
            "remote_ip": handler.request.remote_ip,
        },
    )


def _register_gauges(ctx: Context) -> None:
    m = ctx.metrics
    m.gauge("healthsync_websocket_subscribers", "Connected websocket subscribers", lambda: ctx.hub.count)
    m.counter("healthsync_websocket_frames_sent_total", "Frames handed to websockets",
              lambda: ctx.hub.stats["frames_sent"])
    m.counter(
        "healthsync_websocket_frames_dropped_total",
        "Live frames skipped for paused (slow) subscribers, caught up later by reads",
        lambda: ctx.hub.stats["frames_dropped"],
    )
    if ctx.db.pushes_commits:
        m.counter("healthsync_listen_reconnects_total",
                  "Times the LISTEN connection (push across processes) was lost and re-opened",
                  lambda: ctx.db.listen_reconnects)
    m.gauge("healthsync_change_head", "Newest change sequence number", lambda: ctx.hub.head_seq)
    # Read off the loop by the metrics handler just before rendering (Huey's queue is blocking SQLite).
    m.gauge("healthsync_batch_queue_depth", "Tasks waiting in Huey's queue", lambda: ctx.queue_depth_seen)


def make_app(settings: Settings) -> HealthSyncApp:
    """Build the application for ``settings`` (nothing is opened until startup)."""
    db = make_storage(settings)
    ctx = Context(
        settings=settings,
        db=db,
        resources=Resources(db),
        sync=SyncService(db),
        batches=BatchService(db, lambda: make_huey(settings)),
        tokens=Tokens(db),
        audit=AuditTrail(db),
        limiter=RateLimiter(settings.write_rate_limit, db),
        hub=Hub(
            db,
            page_size=settings.page_limit_default,
            max_buffer=settings.push_max_buffer_bytes,
            poll_seconds=settings.push_poll_seconds,
            listen_poll_seconds=settings.push_listen_poll_seconds,
        ),
    )
    def after_commit(info: CommitInfo) -> None:
        ctx.hub.notify(info.head_seq, info.head_us)
        for event in info.events:
            if event["type"] == "applied":
                ctx.metrics.inc("healthsync_changes_applied_total", event["changes"])
                ctx.metrics.inc("healthsync_conflicts_total", event["conflicts"])

    db.add_commit_hook(after_commit)
    _register_gauges(ctx)
    ctx.idle.set()
    kw = {"ctx": ctx}
    uuid_ish = r"([^/]+)"
    routes: list[Any] = [
        (r"/api/patients/?", PatientListHandler, kw),
        (rf"/api/patients/{uuid_ish}/?", PatientHandler, kw),
        (r"/api/records/?", RecordListHandler, kw),
        (rf"/api/records/{uuid_ish}/?", RecordHandler, kw),
        (r"/api/sync/upload/?", UploadHandler, kw),
        (r"/api/sync/download/?", DownloadHandler, kw),
        (r"/api/sync/ws/?", SyncSocket, kw),
        (rf"/api/sync/trigger/{uuid_ish}/?", TriggerHandler, kw),
        (r"/api/sync/batches/?", BatchListHandler, kw),
        (rf"/api/sync/batches/{uuid_ish}/?", BatchHandler, kw),
        (r"/api/devices/?", DeviceListHandler, kw),
        (r"/api/conflicts/?", ConflictListHandler, kw),
        (rf"/api/conflicts/{uuid_ish}/?", ConflictHandler, kw),
        (rf"/api/conflicts/{uuid_ish}/resolve/?", ConflictResolveHandler, kw),
        (r"/api/audit/?", AuditHandler, kw),
        (r"/api/health/?", HealthHandler, kw),
        (r"/api/schema/?", SchemaHandler, kw),
        (r"/api/docs/?", DocsHandler, kw),
        (r"/metrics", MetricsHandler, kw),
        (r"/()", StaticHandler, {"path": str(STATIC_DIR), "default_filename": "index.html"}),
        (r"/static/(.*)", StaticHandler, {"path": str(STATIC_DIR)}),
    ]
    # The metrics' route label: these handlers, or "other" (unknown paths among them).
    ctx.metrics.routes = frozenset(handler.__name__ for _, handler, _ in routes)
    app = HealthSyncApp(
        routes,
        default_handler_class=NotFoundHandler,
        default_handler_args=kw,
        log_function=_log_request,
        # gzip for clients that ask (Accept-Encoding), on JSON and text of 1 KiB and more
        transforms=[GZip],
        websocket_ping_interval=settings.ws_ping_seconds,
        websocket_ping_timeout=settings.ws_ping_timeout_seconds,
        websocket_max_message_size=64 * 1024,
    )
    app.ctx = ctx
    return app
