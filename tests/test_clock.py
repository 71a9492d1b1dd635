from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

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


# Every ISO 8601 text a client could send, from year 1 to 9999 with any offset
# (some of them name an instant outside the years 1..9999 once read as UTC).
offsets = st.builds(timezone, st.timedeltas(min_value=-timedelta(hours=23, minutes=59),
                                            max_value=timedelta(hours=23, minutes=59)).map(
    lambda d: timedelta(minutes=d // timedelta(minutes=1))))
any_datetimes = st.datetimes(min_value=datetime.min, max_value=datetime.max, timezones=st.none() | offsets)
edges = st.sampled_from([datetime.min, datetime.max]).flatmap(
    lambda dt: st.builds(dt.replace, tzinfo=st.none() | offsets)
)


@given(any_datetimes | edges)
def test_what_parse_accepts_formats_and_parses_back(dt):
    try:
        us = clock.parse(dt.isoformat())
    except ValueError as exc:
        # refused only when the instant in UTC is outside the years 1..9999
        assert "outside the supported range" in str(exc)
        assert not clock.MIN_US <= clock.to_us(dt) <= clock.MAX_US
        return
    assert clock.MIN_US <= us <= clock.MAX_US
    text = clock.format_us(us)
    assert len(text) == 27 and text.endswith("Z")
    assert clock.parse(text) == us
    assert clock.canonical(text) == text


@given(st.integers(min_value=clock.MIN_US, max_value=clock.MAX_US),
       st.integers(min_value=clock.MIN_US, max_value=clock.MAX_US))
def test_canonical_strings_sort_as_instants_across_the_whole_range(a, b):
    ta, tb = clock.format_us(a), clock.format_us(b)
    assert len(ta) == len(tb) == 27
    assert (ta < tb) == (a < b)
    assert clock.parse(ta) == a


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000000Z"),
        ("0001-01-01T00:00:00-01:00", "0001-01-01T01:00:00.000000Z"),
        ("0999-06-01", "0999-06-01T00:00:00.000000Z"),
        ("9999-12-31T23:59:59Z", "9999-12-31T23:59:59.000000Z"),
        ("9999-12-31T23:59:59.999999Z", "9999-12-31T23:59:59.999999Z"),
        ("9999-12-31T23:59:59+01:00", "9999-12-31T22:59:59.000000Z"),
    ],
)
def test_edges_of_the_range_are_accepted(text, expected):
    assert clock.canonical(text) == expected


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
                                  "0001-01-01T00:59:59.999999+01:00", "9999-12-31T23:00:00-01:00"])
def test_instants_outside_the_range_are_refused(text):
    with pytest.raises(ValueError, match="outside the supported range"):
        clock.parse(text)
