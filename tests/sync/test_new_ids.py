"""The ids a sync batch gives the rows it creates: random version 4 UUIDs,
in the canonical text form that ``uuid.UUID`` would print."""

from __future__ import annotations

import uuid

from healthsync.sync.apply import _new_ids


def test_new_ids_are_canonical_random_uuids():
    ids = _new_ids(1000)
    assert len(ids) == len(set(ids)) == 1000
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_no_ids():
    assert _new_ids(0) == []
