"""Response models of the HTTP API, for its OpenAPI document.

They mirror what ``storage/rows.py``, ``sync/download.py``,
``sync/apply.py`` and ``errors.py`` produce; the tests validate real
responses (and a schemathesis fuzz run) against the document built from
them, so a drift fails a test.  Request bodies are not here: they are the
models the handlers validate with (``models.py``).  Pure: no I/O.
"""

from __future__ import annotations

from datetime import date, datetime
from enum import Enum, StrEnum
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, RootModel

from ..fhir import R4_RESOURCE_TYPES
from ..models import PatientIn, RecordIn, UploadRequest

UUID_EXAMPLE = "3f2b8c1e-8d4a-4c6e-9b7a-2d1e5f6a7b8c"
TIME_EXAMPLE = "2025-09-12T19:25:18.331000Z"
BATCH_STATUSES = ("pending", "processing", "done", "failed")
CONFLICT_REASONS = ("version_mismatch", "server_newer", "deleted_on_server")


# Enums: one named schema each, referenced wherever the set of values appears ------------
#
# Timestamps are ``datetime`` (``format: date-time``), ids ``UUID`` (``format: uuid``) and
# dates of birth ``date`` (``format: date``): what the server sends is exactly that text.


class BatchStatus(StrEnum):
    """Where a stored sync batch is: ``pending`` until triggered, ``processing``, then ``done`` or ``failed``."""

    pending = "pending"
    processing = "processing"
    done = "done"
    failed = "failed"


class ConflictReason(StrEnum):
    """Why an upload's change was a conflict: its ``base_version`` is not the server's
    (``version_mismatch``), the server's copy changed after its ``client_updated_at``
    (``server_newer``), or the item was deleted on the server (``deleted_on_server``)."""

    version_mismatch = "version_mismatch"
    server_newer = "server_newer"
    deleted_on_server = "deleted_on_server"


class UploadStatus(StrEnum):
    """The outcome of one change of an upload."""

    created = "created"
    updated = "updated"
    deleted = "deleted"
    not_found = "not_found"
    conflict = "conflict"
    rejected = "rejected"


#: Every FHIR R4 resource type (``Patient`` included): what sync changes and download entries name.
ResourceType = Enum("ResourceType", {t: t for t in sorted(R4_RESOURCE_TYPES)}, type=str)  # type: ignore[misc]
ResourceType.__doc__ = "A FHIR R4 resource type."
#: The FHIR R4 resource types a health record may have: all but ``Patient``.
RecordResourceType = Enum(  # type: ignore[misc]
    "RecordResourceType", {t: t for t in sorted(R4_RESOURCE_TYPES - {"Patient"})}, type=str
)
RecordResourceType.__doc__ = "A FHIR R4 resource type other than Patient: what a health record may be."

assert {s.value for s in BatchStatus} == set(BATCH_STATUSES)
assert {r.value for r in ConflictReason} == set(CONFLICT_REASONS)


# Response models ------------------------------------------------------------------
#
# ``extra="forbid"`` makes each one ``additionalProperties: false``: a key the
# server starts sending without documenting it fails the schema tests.


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Patient(_Out):
    """A patient as the API returns it."""

    id: UUID = Field(description="Server id.")
    owner: str | None = Field(description="Name of the token that created it (null in open mode).")
    name: str
    dob: date | None = Field(description="Date of birth, YYYY-MM-DD.")
    identifiers: dict[str, Any]
    fhir: dict[str, Any] | None
    server_version: int = Field(ge=1, description="1 on create, +1 on every change (deletes included).")
    updated_at: datetime = Field(description="Server UTC time with microseconds.", examples=[TIME_EXAMPLE])
    deleted: bool = Field(description="A tombstone (only shown with include_deleted=true).")


class HealthRecord(_Out):
    """A health record (a FHIR R4 resource of a patient)."""

    id: UUID
    patient: UUID = Field(description="The patient's id.")
    resource_type: RecordResourceType
    data: dict[str, Any]
    server_version: int = Field(ge=1)
    updated_at: datetime
    deleted: bool


class PatientEntryData(_Out):
    owner: str | None
    name: str
    dob: date | None
    identifiers: dict[str, Any]
    fhir: dict[str, Any] | None


class CreatedBy(_Out):
    """The upload that created an item: its device and the change's ``client_temp_id``."""

    device_id: str
    client_temp_id: str


def _created_by() -> Any:
    return Field(description="The upload that created the item (null: created over REST, or before "
                 "HealthSync kept it): a device recognises its own creates by it.")


class PatientEntry(_Out):
    """A patient's download entry: its fields in ``data``."""

    server_id: UUID
    resource_type: Literal["Patient"]
    data: PatientEntryData
    server_version: int
    updated_at: datetime
    deleted: bool
    created_by: CreatedBy | None = _created_by()


class RecordEntry(_Out):
    """A record's download entry, naming its ``patient``."""

    server_id: UUID
    resource_type: RecordResourceType
    patient: UUID
    data: dict[str, Any]
    server_version: int
    updated_at: datetime
    deleted: bool
    created_by: CreatedBy | None = _created_by()


class DownloadEntry(RootModel[PatientEntry | RecordEntry]):
    """The latest version of a changed patient or record (tombstones included)."""


class DownloadPage(_Out):
    """``GET /api/sync/download/``: changes oldest first."""

    changes: list[DownloadEntry]
    server_time: datetime = Field(description="Follow it as the next `since`.")
    cursor: str = Field(description="Opaque; follow it as the next `cursor`.", examples=["42"])
    has_more: bool = Field(description="Another page follows (from `cursor`).")


class UploadResult(_Out):
    """The outcome of one change, in the order of ``changes``."""

    status: UploadStatus
    client_temp_id: str = Field(None, description="Echoed for creates.")
    server_id: UUID = Field(None, description="The item's server id (for a create: the id the device chose, "
                            "else a new one; absent for a rejected create that chose none).")
    server_version: int | None = Field(None, description="The new version of an applied change.")
    error: str = Field(None, description="Why a `rejected` change could not apply.")
    reason: ConflictReason = Field(None, description="Why a `conflict`.")
    conflict_id: UUID = Field(None, description="The conflict recorded at /api/conflicts/.")
    server_copy: Patient | HealthRecord = Field(None, description="The server's copy, for a `conflict`.")


class ConflictSummary(_Out):
    server_id: UUID
    reason: ConflictReason


class UploadResponse(_Out):
    """A synchronous upload's answer (also returned again for a retried ``batch_id``)."""

    batch_id: UUID
    results: list[UploadResult]
    conflicts: list[ConflictSummary]
    server_time: datetime
    cursor: str


class AsyncUploadAccepted(_Out):
    """An ``async: true`` upload, stored to be applied when triggered; or a retried
    ``batch_id`` whose batch is not done yet, with its current status."""

    batch_id: UUID
    status: BatchStatus = Field(description="`pending`, `processing` or `failed` (a `done` batch answers 200).")
    error: str | None = Field(None, description="Why a `failed` batch failed (trigger it again).")


class Conflict(_Out):
    """A recorded conflict: the device's change and the server's copy."""

    id: UUID
    batch_id: UUID
    device_id: str
    server_id: UUID
    resource_type: ResourceType
    reason: ConflictReason
    change: dict[str, Any] = Field(description="The change as the device sent it.")
    server_copy: Patient | HealthRecord | None
    created_at: datetime
    resolved: bool
    resolved_at: datetime | None
    resolution: str | None


class ConflictResolution(_Out):
    """``PATCH /api/conflicts/{id}/`` (or ``POST …/resolve/``): mark resolved."""

    resolved: Literal[True]
    resolution: str | None = Field(None, max_length=2000, description="An optional note.")


class Batch(_Out):
    """A stored sync batch; once ``done`` (by id) it carries its upload response."""

    batch_id: UUID
    device_id: str
    status: BatchStatus
    change_count: int
    attempts: int
    task_id: str | None
    created_at: datetime
    claimed_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    error: str | None
    results: list[UploadResult] = Field(None, description="Only by id, once applied.")
    conflicts: list[ConflictSummary] = Field(None, description="Only by id, once applied.")
    server_time: datetime = Field(None, description="Only by id, once applied.")
    cursor: str = Field(None, description="Only by id, once applied.")


class Device(_Out):
    """A device seen by upload or download (with ``device_id``)."""

    device_id: str
    first_seen: datetime
    last_seen: datetime
    last_upload_at: datetime | None
    last_download_at: datetime | None
    last_cursor: str | None
    behind: int | None = Field(description="Changes committed after its last download's cursor.")
    pending_batches: int
    failed_batches: int


class AuditEntry(_Out):
    id: int
    at: datetime
    who: str | None
    role: str | None
    method: str
    path: str
    query: str | None
    status: int
    remote_ip: str | None


class TriggerResponse(_Out):
    status: Literal["task started"]
    task_id: str


class HealthDatabaseOk(_Out):
    backend: str = Field(description="The database backend: `sqlite` (a clinic box).")
    ok: Literal[True]
    schema_version: int
    head: int


class HealthDatabaseDown(_Out):
    backend: str
    ok: Literal[False]
    error: str


class HealthWorker(_Out):
    embedded: bool
    alive: bool | None
    queue_depth: int = Field(description="Tasks waiting in Huey's queue (-1 when unreadable).")


class HealthQueue(_Out):
    backend: Literal["sqlite", "postgres", "redis"]
    url: str = Field(None, description="Redis or PostgreSQL: the queue's URL, any password shown as `***`.")
    name: str = Field(None, description="Redis or PostgreSQL: the queue's name (one per deployment).")
    ok: bool = Field(description="Whether the queue answered its last read.")


class Health(_Out):
    status: Literal["ok", "degraded", "unavailable"]
    reasons: list[str] = Field(description="Why the status is not ok (empty when it is).")
    auth: Literal["open", "token"]
    uptime_seconds: float
    database: HealthDatabaseOk | HealthDatabaseDown
    warning: str = Field(None, description="Open mode on a network address.")
    disk_free_bytes: int = Field(description="Free space where the data lives (-1 when it cannot be read).")
    websockets: int
    worker: HealthWorker
    queue: HealthQueue


class ErrorDetail(_Out):
    field: str = Field(None, description="The field, parameter or header at fault.")
    index: int = Field(None, description="For uploads: the index of the change at fault.")
    message: str


class Error(_Out):
    """Every error response."""

    error: str
    details: list[ErrorDetail]
    resync: bool = Field(None, description="410: start over from since=1970-01-01T00:00:00Z (or cursor=0).")
    status: str = Field(None, description="409: the batch's current status.")


RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    Patient, HealthRecord, DownloadEntry, DownloadPage, UploadResult, UploadResponse, AsyncUploadAccepted,
    Conflict, ConflictResolution, Batch, Device, AuditEntry, TriggerResponse, Health, Error,
)
REQUEST_MODELS: tuple[type[BaseModel], ...] = (PatientIn, RecordIn, UploadRequest)
