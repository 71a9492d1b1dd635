from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from healthsync.errors import Invalid
from healthsync.sync.rules import decode_cursor, encode_cursor, if_match_allows, merge_patch

json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=5)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=10,
)
objects = st.dictionaries(st.text(max_size=3), json_values, max_size=4)


def without_nulls(value):
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    return value


@given(objects, objects)
def test_merge_patch_keys_given_replace_absent_stay(target, patch):
    merged = merge_patch(target, patch)
    for key, value in patch.items():
        if value is None:
            assert key not in merged
        elif not isinstance(value, dict):
            assert merged[key] == value
    for key in target:
        if key not in patch:
            assert merged[key] == target[key]


@given(objects, objects)
def test_merge_patch_is_idempotent(target, patch):
    once = merge_patch(target, patch)
    assert merge_patch(once, patch) == once


@given(objects)
def test_merge_patch_with_itself_minus_nulls(target):
    # RFC 7396: applying a document without nulls to {} gives that document
    clean = without_nulls(target)
    assert merge_patch({}, clean) == clean


def test_merge_patch_rfc_7396_example():
    target = {"title": "Goodbye!", "author": {"givenName": "John", "familyName": "Doe"}, "tags": ["example", "sample"],
              "content": "This will be unchanged"}
    patch = {"title": "Hello!", "phoneNumber": "+01-123-456-7890", "author": {"familyName": None}, "tags": ["example"]}
    assert merge_patch(target, patch) == {
        "title": "Hello!", "author": {"givenName": "John"}, "tags": ["example"],
        "content": "This will be unchanged", "phoneNumber": "+01-123-456-7890",
    }


@given(st.integers(min_value=0, max_value=2**60))
def test_cursor_round_trip(seq):
    assert decode_cursor(encode_cursor(seq)) == seq


@pytest.mark.parametrize("text", ["", "-1", "abc", "1.5", "١٢", "9" * 30])
def test_bad_cursor(text):
    with pytest.raises(Invalid):
        decode_cursor(text)


def test_if_match():
    assert if_match_allows(None, 3)
    assert if_match_allows('W/"3"', 3) and if_match_allows('"3"', 3) and if_match_allows("*", 3)
    assert if_match_allows('W/"1", W/"3"', 3)
    assert not if_match_allows('W/"2"', 3)
