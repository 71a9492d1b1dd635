"""``PatientCheck``, the sync upload's fast way to ``PatientIn``'s verdict.

It may only ever say "valid, with these values" when ``PatientIn`` accepts
the payload with exactly those values; for anything else it says None and
the caller asks ``PatientIn``.  Checked here on generated payloads that go
near every constraint (blank and over-long names, odd and future dates,
documents just under and over the depth limit, wrong types, unknown and
read-only keys).
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from healthsync import clock
from healthsync.models import (
    MAX_JSON_DEPTH,
    READ_ONLY_KEYS,
    PatientCheck,
    PatientIn,
    patient_values,
)


def nested(depth: int) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for _ in range(depth - 1):
        doc = {"x": doc}
    return doc


TODAY = clock.today_utc()
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=8,
)
documents = (
    st.dictionaries(st.text(max_size=4), json_values, max_size=4)
    | st.sampled_from([MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, MAX_JSON_DEPTH + 5]).map(nested)
)
names = (
    st.text(max_size=300)
    | st.sampled_from(["", " ", "\u2003\t", " Ada ", "x" * 256, "x" * 257, "\x00"])
    | st.integers()
    | st.none()
)
dates = st.dates(min_value=date(1, 1, 1), max_value=date(9999, 12, 31)).map(date.isoformat)
dobs = (
    dates
    | st.sampled_from([
        TODAY.isoformat(), (TODAY + timedelta(days=1)).isoformat(), "2020-W01-1", "2020W011", "20200101",
        "2020-02-30", "1990-01-01T00:00:00", "", "1990-1-1", "１９９０-01-01", "1990-01-01\n", " 1990-01-01",
        "+990-01-01", "1990-01-0١",
    ])
    | st.text(max_size=12)
    | st.integers()
    | st.none()
)
payloads = st.fixed_dictionaries(
    {},
    optional={
        "name": names,
        "dob": dobs,
        "identifiers": documents | json_values,
        "fhir": documents | json_values,
        "unknown": json_values,
        **{key: json_values for key in READ_ONLY_KEYS},
    },
)


def reference(payload: Any) -> Any:
    """What ``PatientIn`` says: its values, or None when it rejects."""
    try:
        return patient_values(PatientIn.model_validate(payload))
    except ValidationError:
        return None


@given(payloads)
def test_one_says_valid_only_with_patient_ins_own_values(payload):
    got = PatientCheck(TODAY).one(payload)
    if got is not None:
        assert got == reference(payload)


@given(payloads)
def test_one_is_sure_of_every_plain_valid_payload(payload):
    # not a rule for correctness (None is always safe), but the fast path must
    # actually be taken for ordinary payloads: only odd ones go to PatientIn
    expected = reference(payload)
    plain = isinstance(payload.get("dob"), str | type(None)) and "W" not in str(payload.get("dob"))
    if expected is not None and plain:
        assert PatientCheck(TODAY).one(payload) == expected


def test_the_future_starts_tomorrow():
    check = PatientCheck(TODAY)
    assert check.one({"name": "A", "dob": TODAY.isoformat()}) == ("A", TODAY.isoformat(), {}, None)
    assert check.one({"name": "A", "dob": (TODAY + timedelta(days=1)).isoformat()}) is None


def test_defaults_are_patient_ins():
    assert PatientCheck(TODAY).one({"name": "A"}) == reference({"name": "A"}) == ("A", None, {}, None)


@pytest.mark.parametrize("key", ["identifiers", "fhir"])
def test_depth_limit_is_patient_ins(key):
    check = PatientCheck(TODAY)
    at_limit = {"name": "A", key: nested(MAX_JSON_DEPTH)}
    assert check.one(at_limit) is not None and reference(at_limit) is not None
    over = {"name": "A", key: nested(MAX_JSON_DEPTH + 1)}
    assert check.one(over) is None and reference(over) is None
