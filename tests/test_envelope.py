"""``check_upload``, the sync upload's fast way to ``UploadRequest``'s verdict.

It may only ever answer an ``Upload`` when ``UploadRequest`` accepts the body
with exactly those values; for anything else it says None and the caller asks
``UploadRequest``, which words the errors.  Checked here on generated bodies
that go near every constraint of the envelope and of each change (wrong JSON
types, empty and over-long ids, unknown keys and operations, negative and
boolean versions, nulls where a value is optional or required).
"""

from __future__ import annotations

from typing import Any, get_type_hints

from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from healthsync.models import Change, UploadRequest, routing_problem
from healthsync.sync.envelope import ChangeFields, Upload, change_dump, check_upload

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=8,
)
ids = st.text(min_size=1, max_size=8) | st.sampled_from(["", "x" * 256, "x" * 257]) | json_scalars
BATCH_ID = "6f1c3a52-3b0e-4f43-9d4e-2b8a41b5b0a1"
batch_ids = st.sampled_from([BATCH_ID, BATCH_ID.upper(), "{" + BATCH_ID + "}", BATCH_ID.replace("-", ""), "nope"]) | ids
changes = st.fixed_dictionaries(
    {},
    optional={
        "operation": st.sampled_from(["create", "update", "delete", "zap", "Create"]) | json_scalars,
        "resource_type": st.sampled_from(["Patient", "Observation"]) | ids,
        "client_temp_id": ids,
        "server_id": ids | st.uuids().map(str),
        "client_updated_at": st.sampled_from(["2020-01-01T00:00:00Z", "x" * 64, "x" * 65]) | json_scalars,
        "base_version": st.integers(min_value=-2, max_value=3) | json_scalars,
        "payload": st.dictionaries(st.text(max_size=4), json_values, max_size=3) | json_values,
        "extra": json_values,
    },
)
# changes that are valid more often than not, so the fast path is exercised too
plain_changes = st.fixed_dictionaries(
    {"operation": st.sampled_from(["create", "update", "delete"]), "resource_type": st.sampled_from(["Patient", "X"])},
    optional={
        "client_temp_id": st.text(min_size=1, max_size=4) | st.none(),
        "server_id": st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper()) | st.text(min_size=1, max_size=4)
        | st.none(),
        "client_updated_at": st.text(max_size=4) | st.none(),
        "base_version": st.integers(min_value=0, max_value=3) | st.none(),
        "payload": st.dictionaries(st.text(max_size=4), json_values, max_size=3),
    },
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "device_id": ids,
        "changes": st.lists(changes | plain_changes, max_size=4) | json_values,
        "batch_id": batch_ids,
        "async": st.booleans() | json_scalars,
        "async_": st.booleans(),
        "more": json_values,
    },
)
plain_bodies = st.fixed_dictionaries(
    {"device_id": st.text(min_size=1, max_size=4), "changes": st.lists(plain_changes, max_size=4)},
    optional={"batch_id": st.sampled_from([BATCH_ID, BATCH_ID.upper()]) | st.none(), "async": st.booleans()},
)


def fields(change: Any) -> dict[str, Any]:
    """What the apply code reads of a change: every field, None when absent."""
    return {key: change.get(key) for key in Change.model_fields}


def reference(body: Any) -> Upload | None:
    """What ``UploadRequest`` says: its values, or None when it refuses."""
    try:
        return Upload.from_model(UploadRequest.model_validate(body))
    except ValidationError:
        return None


def same(got: Upload, expected: Upload) -> bool:
    return (
        (got.device_id, got.batch_id, got.async_) == (expected.device_id, expected.batch_id, expected.async_)
        and [fields(c) for c in got.changes] == [fields(c) for c in expected.changes]
        and [change_dump(c) for c in got.changes] == [change_dump(c) for c in expected.changes]
    )


def routable(upload: Upload) -> bool:
    return all(
        routing_problem(c["operation"], c.get("client_temp_id"), c.get("server_id")) is None for c in upload.changes
    )


@given(bodies | plain_bodies)
def test_check_says_valid_only_with_upload_requests_own_values(body):
    got = check_upload(body)
    if got is not None:
        expected = reference(body)
        assert expected is not None and same(got, expected)
        assert routable(expected), "a change that cannot be routed is left to the slow path's 400"


@given(plain_bodies)
def test_check_is_sure_of_every_valid_plain_body(body):
    # not a rule for correctness (None is always safe), but the fast path must
    # actually be taken for ordinary bodies
    expected = reference(body)
    if expected is not None and routable(expected):
        got = check_upload(body)
        assert got is not None and same(got, expected)


@given(st.lists(changes | plain_changes, min_size=1, max_size=3))
def test_change_dump_is_the_models_dump(items):
    for item in items:
        try:
            model = Change.model_validate(item)
        except ValidationError:
            continue
        dumped = model.model_dump(by_alias=True, exclude_none=True)
        # the model makes server_id canonical, as check_upload does in place
        made = fields(item) | {"payload": model.payload, "server_id": model.server_id}
        assert list(change_dump(made).items()) == list(dumped.items())


def test_stored_request_is_the_models_dump():
    body = {"device_id": "d", "async": True, "batch_id": BATCH_ID.upper(), "changes": [
        {"operation": "create", "resource_type": "Patient", "client_temp_id": "a", "server_id": None},
        {"payload": {"dob": None}, "base_version": 0, "server_id": BATCH_ID, "operation": "update",
         "resource_type": "P"},
    ]}
    model = UploadRequest.model_validate(body)
    expected = model.model_dump(by_alias=True, exclude={"async_"}, exclude_none=True)
    got = check_upload(body)
    assert got is not None
    stored = got.stored_request(BATCH_ID)
    assert list(stored) == list(expected) and stored == expected
    assert [list(c.items()) for c in stored["changes"]] == [list(c.items()) for c in expected["changes"]]


def test_change_fields_mirror_change():
    assert list(get_type_hints(ChangeFields)) == list(Change.model_fields)
