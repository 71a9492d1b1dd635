"""``GET /api/health``: is this box able to serve?"""

from __future__ import annotations

from .base import BaseHandler


class HealthHandler(BaseHandler):
    public = True  # monitoring needs no token; it reveals no patient data

    async def get(self) -> None:
        report = await self.ctx.health()
        self.write_json(report, 200 if report["status"] == "ok" else 503)


class MetricsHandler(BaseHandler):
    """``GET /metrics``: Prometheus text format.  Counts only, no patient data."""

    public = True

    async def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(self.ctx.metrics.render())
