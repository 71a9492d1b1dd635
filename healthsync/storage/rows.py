"""Rows as every backend hands them out, and their API representations.

The row shapes are part of the storage interface (``interface.WriteTx`` and
``interface.Snapshot`` return them), so they are the same whatever the
backend:

- ``Row``: a patient, record, conflict or batch as a plain tuple, its
  columns in the orders below.  A listing's rows end with one more item,
  the page key (an increasing integer, opaque to the caller): see
  ``keyset_page``.
- ``PatientRow``/``RecordRow``: the rows the sync write path loads, changes
  in memory (``sync/apply.py``) and writes back, with names.
- ``ChangeRow``/``PushRow``: one change as the download and the push hub
  read it, its JSON entry already built by the backend.  An entry ends with
  ``created_by``: ``{"device_id", "client_temp_id"}`` of the upload that
  created the item, or null (a REST create, or one made before it was kept).

Column orders of a ``Row``:

- patient: id, owner, name, dob, identifiers, fhir, server_version,
  updated_at, deleted
- record: id, patient, resource_type, data, server_version, updated_at,
  deleted
- conflict: id, batch_id, device_id, server_id, resource_type, reason,
  change, server_copy, created_at, resolved, resolved_at, resolution
- batch: id, device_id, status, change_count, attempts, task_id,
  created_at, claimed_at, finished_at, updated_at, error

The ``*_out`` functions turn rows into API representations.  Stored JSON
documents are passed through as ``orjson.Fragment`` so they are never parsed
just to be serialized again.  Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

Row = tuple[Any, ...]

#: (seq, updated_at, entry JSON)
ChangeRow = tuple[int, str, str]

#: (seq, updated_at, entry JSON, resource_type, patient id): what the push hub filters on.
PushRow = tuple[int, str, str, str, str]


@dataclass(slots=True, eq=False)
class PatientRow:
    """A ``patients`` row: the columns of a patient ``Row`` in order, then
    ``seq`` and ``created_at`` (as stored for a loaded row; a changed row
    gets a new ``seq``), and who created it: ``created_by_device`` and
    ``created_temp_id`` (the upload's ``device_id`` and ``client_temp_id``;
    None for a REST create or one older than those columns).

    Plain slotted classes: a 10,000-change upload makes one per row it loads
    or creates, and building them, then the statements' parameter tuples,
    costs about 2.5 ms per 10,000 rows more than positional lists (see
    ``bench/README.md``).  ``PatientRow`` and ``RecordRow`` share the names
    of the columns the write path stamps (``version``, ``updated_at``,
    ``deleted``, ``seq``), so code that handles either kind reads them alike.
    """

    id: str
    owner: str | None
    name: str
    dob: str | None
    identifiers: str  # JSON text, as stored
    fhir: str | None  # JSON text, as stored
    version: int  # the server_version column
    updated_at: str
    deleted: int
    seq: int | None = None
    created_at: str | None = None
    created_by_device: str | None = None
    created_temp_id: str | None = None

    def stored(self) -> Row:
        """The patient ``Row`` (what ``patient_out`` takes)."""
        return (self.id, self.owner, self.name, self.dob, self.identifiers, self.fhir, self.version,
                self.updated_at, self.deleted)


@dataclass(slots=True, eq=False)
class RecordRow:
    """A ``records`` row: the columns of a record ``Row`` in order, then
    ``seq``, ``created_at``, ``created_by_device`` and ``created_temp_id``
    as in ``PatientRow``."""

    id: str
    patient: str
    resource_type: str
    data: str  # JSON text, as stored
    version: int  # the server_version column
    updated_at: str
    deleted: int
    seq: int | None = None
    created_at: str | None = None
    created_by_device: str | None = None
    created_temp_id: str | None = None

    def stored(self) -> Row:
        """The record ``Row`` (what ``record_out`` takes)."""
        return (self.id, self.patient, self.resource_type, self.data, self.version, self.updated_at, self.deleted)


def keyset_page(rows: list[Row], limit: int | None, out: Callable[[Row], Any]) -> tuple[list[Any], int | None]:
    """Rows fetched with ``limit + 1``, each ending in its page key: the
    page's items (``out`` of each row less its key) and the key to continue
    after, or None on the last page."""
    next_after = None
    if limit is not None and len(rows) > limit:
        rows = rows[:limit]
        next_after = rows[-1][-1]
    return [out(r[:-1]) for r in rows], next_after


def patient_out(row: Row) -> dict[str, Any]:
    return {
        "id": row[0],
        "owner": row[1],
        "name": row[2],
        "dob": row[3],
        "identifiers": orjson.Fragment(row[4]),
        "fhir": None if row[5] is None else orjson.Fragment(row[5]),
        "server_version": row[6],
        "updated_at": row[7],
        "deleted": bool(row[8]),
    }


def record_out(row: Row) -> dict[str, Any]:
    return {
        "id": row[0],
        "patient": row[1],
        "resource_type": row[2],
        "data": orjson.Fragment(row[3]),
        "server_version": row[4],
        "updated_at": row[5],
        "deleted": bool(row[6]),
    }


def device_out(row: Row) -> dict[str, Any]:
    """A device row (device_id, first_seen, last_seen, last_upload_at,
    last_download_at, last_cursor, pending batches, failed batches, head seq)."""
    return {
        "device_id": row[0],
        "first_seen": row[1],
        "last_seen": row[2],
        "last_upload_at": row[3],
        "last_download_at": row[4],
        "last_cursor": None if row[5] is None else str(row[5]),
        "behind": None if row[5] is None else max(row[8] - row[5], 0),
        "pending_batches": row[6],
        "failed_batches": row[7],
    }


def conflict_out(row: Row) -> dict[str, Any]:
    return {
        "id": row[0],
        "batch_id": row[1],
        "device_id": row[2],
        "server_id": row[3],
        "resource_type": row[4],
        "reason": row[5],
        "change": orjson.Fragment(row[6]),
        "server_copy": None if row[7] is None else orjson.Fragment(row[7]),
        "created_at": row[8],
        "resolved": bool(row[9]),
        "resolved_at": row[10],
        "resolution": row[11],
    }


def batch_out(row: Row, response: str | None = None) -> dict[str, Any]:
    """A batch ``Row`` as the API shows it; with its stored ``response``
    (JSON text), the results, conflicts, server_time and cursor too."""
    out = {
        "batch_id": row[0],
        "device_id": row[1],
        "status": row[2],
        "change_count": row[3],
        "attempts": row[4],
        "task_id": row[5],
        "created_at": row[6],
        "claimed_at": row[7],
        "finished_at": row[8],
        "updated_at": row[9],
        "error": row[10],
    }
    if response is not None:
        body = orjson.loads(response)
        out["results"] = body["results"]
        out["conflicts"] = body["conflicts"]
        out["server_time"] = body["server_time"]
        out["cursor"] = body["cursor"]
    return out
