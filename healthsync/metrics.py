"""Counters, a latency histogram and values read at scrape time, in Prometheus' text format.

Built on ``prometheus_client`` with one ``CollectorRegistry`` per
application (no module-level registry: two apps in one process count
apart).  Every label value is bounded by the code, never chosen by a
client: ``method`` is one of HTTP's methods, ``route`` one of the route
table's handlers (``routes``), ``status`` a three-digit status; anything
else counts as ``other``.  What only grows is a counter (``…_total``);
gauges are values that go up and down.

Thread-safe (``prometheus_client`` locks its own values): a Huey worker
thread may count its tasks directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: The value of any label a request would otherwise choose: an unknown method or route.
OTHER = "other"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

#: Counters without labels: name -> help.
COUNTERS = {
    "healthsync_upload_changes_total": "Changes received in sync uploads",
    "healthsync_changes_applied_total": "Upload changes decided (any outcome) by this process",
    "healthsync_conflicts_total": "Conflicts recorded",
    "healthsync_download_entries_total": "Entries served by download",
}

Read = Callable[[], float]


class _ReadAtScrape:
    """A collector of values owned elsewhere (the hub, the queue), read when scraped."""

    def __init__(self) -> None:
        self.gauges: dict[str, tuple[str, Read]] = {}
        self.counters: dict[str, tuple[str, Read]] = {}

    def describe(self) -> list[Metric]:
        return []  # nothing to read before the app has started

    def collect(self) -> Iterator[Metric]:
        for kind, table in ((GaugeMetricFamily, self.gauges), (CounterMetricFamily, self.counters)):
            for name, (help_text, read) in sorted(table.items()):
                try:
                    value = float(read())
                except Exception:  # a value that cannot be read is left out, not a 500
                    continue
                yield kind(name, help_text, value=value)


class Metrics:
    def __init__(self, routes: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry()
        #: the route label's values (handler class names); set by ``make_app``
        self.routes = frozenset(routes)
        reg = self.registry
        self.counters = {name: Counter(name, text, registry=reg) for name, text in COUNTERS.items()}
        self.requests = Counter("healthsync_requests_total", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=reg)
        self.latency = Histogram("healthsync_request_duration_seconds", "HTTP request latency by route and method",
                                 ["method", "route"], buckets=BUCKETS, registry=reg)
        self.tasks = Counter("healthsync_tasks_total", "Background tasks run by this process",
                             ["task", "outcome"], registry=reg)
        self.task_seconds = Counter("healthsync_task_seconds_total", "Seconds spent in background tasks",
                                    ["task"], registry=reg)
        self._read = _ReadAtScrape()
        reg.register(self._read)

    def inc(self, name: str, value: float = 1.0) -> None:
        """Add ``value`` to one of ``COUNTERS``."""
        self.counters[name].inc(value)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        route = route if route in self.routes else OTHER
        method = method if method in METHODS else OTHER
        self.requests.labels(route, method, str(status) if 100 <= status <= 599 else OTHER).inc()
        self.latency.labels(method, route).observe(seconds)

    def observe_task(self, name: str, outcome: str, seconds: float) -> None:
        """A Huey task run by this process's consumer (count and total seconds)."""
        self.tasks.labels(name, outcome).inc()
        self.task_seconds.labels(name).inc(seconds)

    def gauge(self, name: str, help: str, read: Read) -> None:
        """A value that goes up and down, read at each scrape."""
        self._read.gauges[name] = (help, read)

    def counter(self, name: str, help: str, read: Read) -> None:
        """A count kept elsewhere that only grows, read at each scrape (``name`` ends in ``_total``)."""
        self._read.counters[name] = (help, read)

    def render(self) -> str:
        return generate_latest(self.registry).decode()
