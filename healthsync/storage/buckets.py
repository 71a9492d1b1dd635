"""Token buckets for the write rate limit: the rule, and buckets kept in memory.

A key's bucket holds up to ``per_minute`` writes and refills evenly at
``per_minute / 60`` a second; a write takes one whole token.  ``refill`` and
``retry_after`` are the rule; PostgreSQL applies the same rule in SQL (its
buckets are shared by every process of the site), SQLite keeps
``MemoryBuckets`` (one process serves a box).  Pure apart from the clock,
which is injectable.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: A bucket idle this long is full again (it refills within a minute): forgetting it changes nothing.
IDLE_SECONDS = 120.0


def refill(tokens: float, elapsed: float, per_minute: int) -> float:
    """The tokens of a bucket that held ``tokens`` ``elapsed`` seconds ago."""
    return min(float(per_minute), tokens + max(0.0, elapsed) * per_minute / 60.0)


def retry_after(tokens: float, per_minute: int) -> int:
    """Whole seconds until a bucket holding ``tokens`` (< 1) has one (at least 1)."""
    return max(1, int((1.0 - tokens) / (per_minute / 60.0) + 0.999))


class MemoryBuckets:
    """The buckets of one process, in memory.  Event loop only."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, per_minute: int) -> int | None:
        """Take one token: None when taken, else the seconds until one is free."""
        now = self.clock()
        tokens, last = self._buckets.get(key, (float(per_minute), now))
        tokens = refill(tokens, now - last, per_minute)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return retry_after(tokens, per_minute)
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > 10_000:  # forget idle keys so the table stays small
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < IDLE_SECONDS}
        return None
