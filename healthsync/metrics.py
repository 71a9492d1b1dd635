"""Counters and latency histograms, rendered in Prometheus' text format.

Owned by the application (no module-level registry).  Event loop only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Labels = tuple[tuple[str, str], ...]


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in labels)
    return "{" + inner + "}"


class Metrics:
    def __init__(self) -> None:
        self.counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self.histograms: dict[Labels, list[float]] = {}
        self.help: dict[str, str] = {}
        #: gauges read at render time: name -> (help, callable)
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def inc(self, name: str, value: float = 1.0, help: str = "", **labels: str) -> None:
        self.counters[name][tuple(sorted(labels.items()))] += value
        if help:
            self.help.setdefault(name, help)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.inc("healthsync_requests_total", help="HTTP requests by route, method and status",
                 route=route, method=method, status=str(status))
        key = (("method", method), ("route", route))
        hist = self.histograms.setdefault(key, [0.0] * (len(BUCKETS) + 2))
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                hist[i] += 1
        hist[-2] += 1  # count
        hist[-1] += seconds  # sum

    def observe_task(self, name: str, outcome: str, seconds: float) -> None:
        """A Huey task run by this process's consumer (count and total seconds)."""
        self.inc("healthsync_tasks_total", help="Background tasks run by this process", task=name, outcome=outcome)
        self.inc("healthsync_task_seconds_total", seconds, help="Seconds spent in background tasks", task=name)

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        self.gauges[name] = (help, read)

    def render(self) -> str:
        lines: list[str] = []
        for name in sorted(self.counters):
            lines.append(f"# HELP {name} {self.help.get(name, name)}")
            lines.append(f"# TYPE {name} counter")
            for labels, value in sorted(self.counters[name].items()):
                lines.append(f"{name}{_labels(labels)} {value:g}")
        name = "healthsync_request_duration_seconds"
        lines.append(f"# HELP {name} HTTP request latency by route and method")
        lines.append(f"# TYPE {name} histogram")
        for labels, hist in sorted(self.histograms.items()):
            for bound, count in zip(BUCKETS, hist, strict=False):
                lines.append(f"{name}_bucket{_labels((*labels, ('le', f'{bound:g}')))} {count:g}")
            lines.append(f"{name}_bucket{_labels((*labels, ('le', '+Inf')))} {hist[-2]:g}")
            lines.append(f"{name}_count{_labels(labels)} {hist[-2]:g}")
            lines.append(f"{name}_sum{_labels(labels)} {hist[-1]:.6f}")
        for gname, (help_text, read) in sorted(self.gauges.items()):
            lines.append(f"# HELP {gname} {help_text}")
            lines.append(f"# TYPE {gname} gauge")
            try:
                lines.append(f"{gname} {float(read()):g}")
            except Exception:  # a gauge that cannot be read is left out, not a 500
                lines.pop()
                lines.pop()
        return "\n".join(lines) + "\n"
