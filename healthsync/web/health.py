"""``GET /api/health``: is this box able to serve?"""

from __future__ import annotations

from .base import BaseHandler


class HealthHandler(BaseHandler):
    public = True  # monitoring needs no token; it reveals no patient data

    async def get(self) -> None:
        report = await self.ctx.health()
        # degraded still serves (reads, and writes until the disk is full): 200, so a
        # balancer keeps it; only unavailable is 503.  Monitoring reads ``status``.
        self.write_json(report, 503 if report["status"] == "unavailable" else 200)


class MetricsHandler(BaseHandler):
    """``GET /metrics``: Prometheus text format.  Counts only, no patient data."""

    public = True

    async def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        await self.ctx.read_queue_depth()  # off the loop; render() is synchronous and shows it
        self.finish(self.ctx.metrics.render())
