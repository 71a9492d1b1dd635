"""Pages of changes after a cursor or a time: ``GET /api/sync/download/``.

A page and the head it reports come from one read snapshot.  When a page is
cut by ``limit``, ``cursor`` and ``server_time`` are the last entry's, so a
client that follows either (the seed's ``since = last server_time``
included) continues exactly after it; when it is not cut they are the head's.
Either way nothing committed is skipped and nothing is sent twice in a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from .. import clock
from ..errors import Gone, Invalid
from ..fhir import R4_RESOURCE_TYPES
from ..storage import ChangeRow, Snapshot, Storage
from .rules import decode_cursor, encode_cursor

SINCE_EXAMPLE = "?since=2025-09-12T10:00:00Z"
FROM_THE_START = clock.format_us(0)


def parse_position(since: str | None, cursor: str | None) -> tuple[int | None, str | None]:
    """(after_seq, after_time) from the query: ``cursor`` wins over ``since``.

    Either given is checked, both when both are (an empty one is not a value:
    400 naming it); neither given is a 400 too.
    """
    after_time = None
    if since is not None:
        try:
            after_time = clock.canonical(since)
        except ValueError as exc:
            raise Invalid(
                f"since is not an ISO 8601 timestamp, e.g. {SINCE_EXAMPLE}",
                [{"field": "since", "message": str(exc)}],
            ) from None
    if cursor is not None:
        return decode_cursor(cursor), None
    if after_time is None:
        raise Invalid(
            f"since is required: an ISO 8601 timestamp, e.g. {SINCE_EXAMPLE} "
            "(or cursor=<the cursor of your last download>)",
            [{"field": "since", "message": "required"}],
        )
    return None, after_time


def check_resource_type(resource_type: str | None) -> None:
    if resource_type is not None and resource_type not in R4_RESOURCE_TYPES:
        raise Invalid(
            "resource_type is not a FHIR R4 resource type",
            [{"field": "resource_type", "message": f"{resource_type[:64]!r} is not a FHIR R4 resource type"}],
        )


@dataclass
class Page:
    """One page of changes: pre-serialized entries and the position after them."""

    entries: list[str]
    cursor: int
    server_time: str
    has_more: bool

    def body(self) -> dict[str, Any]:
        """The download response body (entries embedded as they are, not re-encoded)."""
        return {
            "changes": orjson.Fragment("[" + ",".join(self.entries) + "]"),
            "server_time": self.server_time,
            "cursor": encode_cursor(self.cursor),
            "has_more": self.has_more,
        }


def make_page(rows: list[ChangeRow], limit: int, head: tuple[int, int]) -> Page:
    """The page for ``rows`` (fetched with ``limit + 1``) and the snapshot's head."""
    has_more = len(rows) > limit
    if has_more:
        rows = rows[:limit]
        seq, server_time = rows[-1][0], rows[-1][1]
    else:
        seq, server_time = head[0], clock.format_us(head[1])
    return Page([r[2] for r in rows], seq, server_time, has_more)


def gone_if_ahead(after_seq: int | None, head_seq: int) -> None:
    """410 with ``resync`` for a cursor past this database's history (e.g. after a restore)."""
    if after_seq is not None and after_seq > head_seq:
        raise Gone(
            "cursor is ahead of this server's history (was the database restored?): "
            "start over from since=1970-01-01T00:00:00Z",
            [{"field": "cursor", "message": f"head is {head_seq}"}],
            resync=True,
        )


async def check_position(snap: Snapshot, after_seq: int | None, after_time: str | None) -> None:
    """410 ``resync`` for a position this database can no longer answer in full:
    ahead of its history, or before a tombstone that was actually purged.

    The purge horizon is the newest purged tombstone's (seq, updated_at)
    (both 0 / the epoch while nothing was ever purged).  A position before it
    may hold a copy of an item whose deletion it can no longer learn; one at
    or after it has seen every purged deletion.  A full sync (cursor 0, or a
    ``since`` at or before the epoch, such as a client's ``datetime.min``)
    holds no copy, so it is never stale.
    """
    if after_seq is not None:
        gone_if_ahead(after_seq, (await snap.head())[0])
    if after_seq == 0 or (after_time is not None and after_time <= FROM_THE_START):
        return
    purged_seq, purged_at = await snap.purge_horizon()
    if purged_seq == 0:
        return  # nothing was ever purged
    if (after_seq is not None and after_seq < purged_seq) or (after_time is not None and after_time < purged_at):
        raise Gone(
            "deleted items older than your last sync have been purged: start over from "
            "since=1970-01-01T00:00:00Z to get a complete copy",
            [{"field": "cursor" if after_seq is not None else "since", "message": f"purged up to {purged_at}"}],
            resync=True,
        )


async def check_cursor(db: Storage, after_seq: int | None, after_time: str | None = None) -> None:
    await db.read(lambda snap: check_position(snap, after_seq, after_time))


async def read_page(
    snap: Snapshot,
    *,
    after_seq: int | None,
    after_time: str | None,
    limit: int,
    resource_type: str | None = None,
    patient: str | None = None,
) -> Page:
    """One page, read inside the caller's snapshot."""
    top = await snap.head()
    gone_if_ahead(after_seq, top[0])
    await check_position(snap, after_seq, after_time)
    rows = await snap.changes_after(
        after_seq=after_seq,
        after_time=after_time,
        limit=limit + 1,
        resource_type=resource_type,
        patient=patient,
    )
    return make_page(rows, limit, top)


async def download(
    db: Storage,
    *,
    since: str | None,
    cursor: str | None,
    limit: int,
    resource_type: str | None = None,
    patient: str | None = None,
) -> Page:
    after_seq, after_time = parse_position(since, cursor)
    check_resource_type(resource_type)
    page = await db.read(
        lambda snap: read_page(
            snap,
            after_seq=after_seq,
            after_time=after_time,
            limit=limit,
            resource_type=resource_type,
            patient=patient,
        )
    )
    return page
