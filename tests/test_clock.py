from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from healthsync import clock

instants = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC))


@given(instants)
def test_format_parse_round_trip(dt):
    us = clock.to_us(dt)
    text = clock.format_us(us)
    assert len(text) == 27 and text.endswith("Z")
    assert clock.parse(text) == us


@given(instants, instants)
def test_canonical_strings_sort_as_instants(a, b):
    ta, tb = clock.format_us(clock.to_us(a)), clock.format_us(clock.to_us(b))
    assert (ta < tb) == (a < b)


@given(st.integers(min_value=0, max_value=2**53), st.integers(min_value=0, max_value=2**53))
def test_step_is_strictly_increasing(last, now):
    nxt = clock.step(last, now)
    assert nxt > last and nxt >= min(now, last + 1)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2025-09-12T10:00:00Z", "2025-09-12T10:00:00.000000Z"),
        ("2025-09-12T12:00:00+02:00", "2025-09-12T10:00:00.000000Z"),
        ("2025-09-12T12:00:00 02:00", "2025-09-12T10:00:00.000000Z"),  # '+' lost in a query string
        ("2025-09-12T10:00:00", "2025-09-12T10:00:00.000000Z"),  # naive is UTC
        ("2025-09-12T19:25:18.331Z", "2025-09-12T19:25:18.331000Z"),
        ("2025-09-12", "2025-09-12T00:00:00.000000Z"),
        ("1970-01-01T00:00:00Z", "1970-01-01T00:00:00.000000Z"),
    ],
)
def test_parse_accepts_iso_8601(text, expected):
    assert clock.canonical(text) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "2025-13-01", "12/09/2025", "2025-09-12T25:00:00Z", "x" * 100])
def test_parse_rejects_non_iso(text):
    with pytest.raises(ValueError, match="ISO 8601"):
        clock.parse(text)


def test_offsets_compare_as_instants():
    early = clock.parse("2025-09-12T11:00:00+02:00")
    late = clock.parse("2025-09-12T10:00:00Z")
    assert early < late
    assert late - early == timedelta(hours=1) // timedelta(microseconds=1)
