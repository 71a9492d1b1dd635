"""UTC instants as integers of microseconds since the epoch.

Parsing accepts any ISO 8601 date or date-time (``Z``, an offset, or naive,
which is read as UTC) whose instant lies in ``MIN_US``..``MAX_US``
(0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z): exactly the instants
emitting can write, so whatever ``parse`` accepts can be formatted and parsed
back.  Emitting always gives the canonical fixed-width form
``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (four-digit year), so canonical strings sort
as instants do.
``step`` is the "strictly increasing even if the wall clock stalls or steps
back" rule of the write path.  Pure functions; safe from any thread.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, date, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)
# A '+' in an unencoded query string arrives as a space: "…T10:00:00 02:00".
_SPACE_OFFSET = re.compile(r"(T[0-9:.,]+) (\d{2}(:?\d{2})?)$")


def now_us() -> int:
    """The wall clock, in microseconds since the epoch."""
    return time.time_ns() // 1000


def step(last_us: int, now: int) -> int:
    """The next stamp after ``last_us``: the clock, or last + 1µs if it lags."""
    return now if now > last_us else last_us + 1


def to_us(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - EPOCH) // _MICRO


#: The first and last instants a canonical string can hold (years 1 to 9999, UTC).
MIN_US = to_us(datetime.min.replace(tzinfo=UTC))
MAX_US = to_us(datetime.max.replace(tzinfo=UTC))
RANGE_TEXT = "0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z"


def parse(text: str) -> int:
    """Parse ISO 8601 text into microseconds since the epoch.

    Raises ``ValueError`` with a readable message when ``text`` is not an
    ISO 8601 date or date-time, or names an instant outside ``MIN_US``..``MAX_US``
    (such as 0001-01-01T00:00:00+01:00, which is in year 0 in UTC).
    """
    if not isinstance(text, str) or not text or len(text) > 64:
        raise ValueError("expected an ISO 8601 timestamp such as 2025-09-12T10:00:00Z")
    cleaned = _SPACE_OFFSET.sub(r"\1+\2", text.strip())
    try:
        if len(cleaned) == 10:
            d = date.fromisoformat(cleaned)
            us = to_us(datetime(d.year, d.month, d.day, tzinfo=UTC))
        else:
            us = to_us(datetime.fromisoformat(cleaned))
    except ValueError:
        raise ValueError(
            f"{text!r} is not an ISO 8601 timestamp (example: 2025-09-12T10:00:00Z)"
        ) from None
    if not MIN_US <= us <= MAX_US:
        raise ValueError(f"{text!r} is outside the supported range {RANGE_TEXT} (in UTC)")
    return us


_last_second: tuple[int, str] = (0, "1970-01-01T00:00:00")


def format_us(us: int) -> str:
    """Canonical UTC text: ``2025-09-12T19:25:18.331000Z``, for ``us`` in
    ``MIN_US``..``MAX_US`` (``OverflowError`` outside it).

    The date-time part of the last second formatted is cached: a batch stamps
    thousands of rows within one second, and strftime is the cost.
    """
    global _last_second
    second, micro = divmod(us, 1_000_000)
    cached = _last_second  # one read: safe against another thread's update
    if cached[0] != second:
        # isoformat, not strftime: "%Y" drops the zero padding of years before 1000
        cached = (second, (EPOCH + timedelta(seconds=second)).isoformat()[:19])
        _last_second = cached
    return f"{cached[1]}.{micro:06d}Z"


def canonical(text: str) -> str:
    """Any ISO 8601 text, re-emitted in canonical form."""
    return format_us(parse(text))


def today_utc() -> date:
    return datetime.now(UTC).date()
