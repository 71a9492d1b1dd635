"""Pure sync rules: JSON Merge Patch, document equality, conflict decisions,
cursor codec.

No I/O and no clock reads: every function here is a function of its
arguments, so hypothesis can test them directly.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import Invalid

_UNPARSED: Any = object()


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON Merge Patch: keys given replace, ``null`` removes."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            result[key] = merge_patch(result.get(key), value)
        else:  # what merge_patch(…, value) would return, without the call: most values are scalars
            result[key] = value
    return result


def same_json(old_text: str | None, new_text: str | None, old: Any = _UNPARSED, new: Any = _UNPARSED) -> bool:
    """Whether two stored JSON documents (text, None for SQL NULL) say the same.

    Key order does not count; anything else a client could tell apart does:
    ``1``, ``1.0`` and ``true`` differ (a FHIR decimal's precision is data).
    ``old``/``new`` are the parsed documents when the caller has them.  The
    texts are compared first, and the parsed values with ``==`` before any
    canonical form is made: a document that did change costs a comparison
    that stops at the first difference.
    """
    if old_text == new_text:
        return True
    if old_text is None or new_text is None:
        return False
    if old is _UNPARSED:
        old = orjson.loads(old_text)
    if new is _UNPARSED:
        new = orjson.loads(new_text)
    if old != new:  # 1 == 1.0 == True here: equal values still need the strict look below
        return False
    return orjson.dumps(old, option=orjson.OPT_SORT_KEYS) == orjson.dumps(new, option=orjson.OPT_SORT_KEYS)


def encode_cursor(seq: int) -> str:
    """A download cursor: opaque to clients, the change sequence number to us."""
    return str(seq)


def decode_cursor(text: str) -> int:
    """Parse a cursor; ``Invalid`` naming the parameter when it is not one of ours."""
    if not text.isascii() or not text.isdigit() or len(text) > 19 or int(text) >= 2**63:
        raise Invalid(
            "cursor must be a value returned by a previous download",
            [{"field": "cursor", "message": f"{text[:40]!r} is not a cursor"}],
        )
    return int(text)


def weak_etag(version: int) -> str:
    return f'W/"{version}"'


def if_match_allows(header: str | None, version: int) -> bool:
    """Whether an ``If-Match`` header admits ``version`` (weak comparison)."""
    if header is None:
        return True
    for part in header.split(","):
        tag = part.strip()
        if tag == "*":
            return True
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag.strip('"') == str(version):
            return True
    return False


def conflict_reason(
    operation: str,
    *,
    base_version: int | None,
    client_updated_us: int | None,
    server_version: int,
    server_updated_us: int,
    server_deleted: bool,
) -> str | None:
    """Why a change must not apply over the server's copy, or None.

    ``deleted_on_server`` for an update of a tombstone; then with a
    ``base_version``, ``version_mismatch`` when it is not the server's;
    else with a ``client_updated_at``, ``server_newer`` when the server's copy
    changed later (instants, never strings).  With neither, last writer wins.
    """
    if server_deleted and operation == "update":
        return "deleted_on_server"
    if base_version is not None:
        return None if base_version == server_version else "version_mismatch"
    if client_updated_us is not None and server_updated_us > client_updated_us:
        return "server_newer"
    return None
