"""Checks shared by the tests of every queue backend."""

from __future__ import annotations

import time
from typing import Any

from healthsync.tasks import once_per_site


def check_once_per_site(first: Any, second: Any) -> None:
    """Two consumers' queues on one site: a periodic job runs once per period, is skipped
    by one while the other runs it, and a lock left long ago by a dead consumer is taken over."""
    runs: list[str] = []
    assert once_per_site(first, "job", "2026-01-01T00:00", lambda: runs.append("first") or 1) == 1
    assert once_per_site(second, "job", "2026-01-01T00:00", lambda: runs.append("second") or 2) is None
    assert once_per_site(second, "job", "2026-01-01T00:01", lambda: runs.append("second") or 2) == 2
    # while one runs it, another skips it
    inner: list[object] = []
    once_per_site(first, "job", "2026-01-01T00:02",
                  lambda: inner.append(once_per_site(second, "job", "2026-01-01T00:02", lambda: runs.append("x"))))
    assert inner == [None] and runs == ["first", "second"]
    # a lock left by a consumer that died long ago is taken over
    first.put("healthsync.lock.job", time.time() - 7200)
    assert once_per_site(second, "job", "2026-01-01T00:03", lambda: "ran") == "ran"
