"""Pure sync rules: JSON Merge Patch, conflict decisions, cursor codec.

No I/O and no clock reads: every function here is a function of its
arguments, so hypothesis can test them directly.
"""

from __future__ import annotations

from typing import Any

from ..errors import Invalid


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON Merge Patch: keys given replace, ``null`` removes."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


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
