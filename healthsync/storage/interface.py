"""The storage interface: what the rest of HealthSync may ask of a database.

One small interface, in the spirit of Huey's ``BaseStorage``: each backend
(``storage/sqlite/`` today, PostgreSQL next) implements it whole, and
``tests/storage/test_contract.py`` holds every implementation to the same
promises.  Nothing here names a driver or relies on one engine's tricks
(rowid, ``INSERT OR IGNORE``, ``json_each``, the WAL index): they stay
inside the implementation that uses them.

The promises every backend keeps:

- **One write path.**  ``write(fn)`` runs ``fn`` in one transaction on the
  writer side.  The transaction first takes the clock lock (SQLite's ``BEGIN
  IMMEDIATE``, PostgreSQL's ``SELECT … FROM clock WHERE id = 1 FOR UPDATE``),
  so writers are serialized across every process: ``seq`` is gap-free and
  strictly increasing, ``updated_at`` strictly increasing, and a snapshot
  always holds exactly seq 1..head.  An exception from ``fn`` rolls
  everything back and no commit hook runs.
- **Snapshot reads.**  ``read(fn)`` runs ``fn`` in one consistent snapshot:
  the head and the rows it reads agree.
- **Named operations.**  The services call the named writes of ``WriteTx``
  and the named reads of ``Snapshot``, never a statement; rows come back in
  the shapes of ``storage.rows``.
- **A commit signal.**  ``commit_signal()`` changes whenever any process
  commits (SQLite: ``PRAGMA data_version``; PostgreSQL: a counter in the
  clock row).  Where ``pushes_commits`` is true (PostgreSQL: ``NOTIFY`` sent
  by every write, ``LISTEN`` on a connection of its own), ``listen`` also
  calls back on every commit as it happens, so the push hub need not poll
  often.
- **The write rate limit.**  ``take_rate_token`` keeps one bucket per key
  for everyone who shares the database: the whole site on PostgreSQL (a
  table, one statement per take), the one process of the box on SQLite
  (memory).
- **Domain errors only.**  A driver's exception never leaves storage: a lock
  held too long is ``errors.Busy``, a full disk ``errors.StorageFull``, a
  closed storage ``DatabaseClosed``; rules of the data are ``NotFound`` and
  ``Conflict``.

Times are canonical UTC text (``clock.format_us``), ordered as text.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..errors import Conflict, NotFound
from .rows import ChangeRow, PatientRow, PushRow, RecordRow, Row

T = TypeVar("T")


class DatabaseClosed(RuntimeError):
    """The storage was closed; no further reads or writes are possible."""


@dataclass
class CommitInfo:
    """What a committed write tells the commit hooks."""

    head_seq: int
    head_us: int
    changed: int
    events: list[dict[str, Any]] = field(default_factory=list)


CommitHook = Callable[[CommitInfo], None]


def call_commit_hooks(hooks: list[CommitHook], info: CommitInfo) -> None:
    """Tell every hook of a commit, after it: one failing hook neither stops
    the others nor undoes the write (it is logged)."""
    for hook in hooks:
        try:
            hook(info)
        except Exception:
            logging.getLogger("healthsync.storage").exception("commit hook failed")

@dataclass(frozen=True)
class Claim:
    """A batch in ``processing``: who claimed it, and when that process last spoke."""

    batch_id: str
    task_id: str | None
    claimed_at: str | None
    worker: str | None
    heartbeat_at: str | None


def claimable(batch_id: str, row: Row | None) -> str:
    """The rule every backend's ``claim_batch`` applies to the batch row it
    fetched (id, device_id, status, …): its device when it may be claimed;
    ``NotFound``, or ``Conflict`` (with the status) unless pending or failed."""
    if row is None:
        raise NotFound(f"batch {batch_id} not found")
    device_id, status = row[1], row[2]
    if status not in ("pending", "failed"):
        raise Conflict(
            f"batch {batch_id} is already {status}",
            [{"field": "batch_id", "message": f"status is {status}"}],
            status=status,
        )
    return str(device_id)


#: One audit row: (at, who, role, method, path, query, status, remote_ip).
AuditEntry = tuple[str, str | None, str | None, str, str, str | None, int, str | None]

#: ``apply_claimed_batch``'s work: given the open transaction and the batch's
#: stored request (JSON text), apply it and return the response body.
ApplyStored = Callable[["WriteTx", str], Awaitable[dict[str, Any]]]


class WriteTx(Protocol):
    """One write transaction, inside the clock lock, as ``write(fn)`` hands it to ``fn``.

    Every named write that changes a patient or record stamps it (``stamp``)
    and raises its ``server_version`` by one; none decides whether a change
    is allowed (the services do).  Rows are ``storage.rows`` shapes.
    """

    #: The seq of the last row stamped so far (the head before the first stamp).
    seq: int
    #: The ``updated_at`` of the last stamp so far, in µs.
    last_us: int
    #: Rows stamped so far.
    changed: int

    def stamp(self) -> tuple[int, str]:
        """The next (seq, updated_at) for one changed row: seq + 1 and a time
        strictly after the previous stamp's, never before the wall clock."""
        ...

    def now(self) -> str:
        """The transaction's wall-clock time, for bookkeeping columns."""
        ...

    def emit(self, event: dict[str, Any]) -> None:
        """Hand ``event`` to the commit hooks after the commit; dropped on rollback."""
        ...

    # Patients and records, one at a time (the REST API) ----------------------------

    async def fetch_patient(self, patient_id: str) -> Row | None:
        """The patient row (deleted or not), as this transaction sees it, or None."""
        ...

    async def fetch_record(self, record_id: str) -> Row | None:
        """The record row (deleted or not), as this transaction sees it, or None."""
        ...

    async def insert_patient(
        self, patient_id: str, owner: str | None, name: str, dob: str | None, identifiers: str, fhir: str | None
    ) -> Row:
        """Create a live patient at version 1 (``identifiers``/``fhir``: JSON text); its row."""
        ...

    async def update_patient(
        self, current: Row, name: str, dob: str | None, identifiers: str, fhir: str | None
    ) -> Row:
        """Write new values over the patient ``current`` (its row as fetched); the new row."""
        ...

    async def tombstone_patient(self, current: Row) -> tuple[Row, int]:
        """Soft-delete the patient ``current`` and every live record of it
        (each stamped); (the new patient row, how many records)."""
        ...

    async def tombstone_records(self, items: list[tuple[str, int]]) -> None:
        """Soft-delete the records given as (id, current server_version), each stamped."""
        ...

    async def insert_record(self, record_id: str, patient: str, resource_type: str, data: str) -> Row:
        """Create a live record at version 1 (``data``: JSON text); its row."""
        ...

    async def update_record(self, current: Row, patient: str, resource_type: str, data: str) -> Row:
        """Write new values over the record ``current`` (its row as fetched); the new row."""
        ...

    # Sync batches, in bulk -----------------------------------------------------------
    # One statement per kind, not one per row: an upload has up to 10,000 changes.

    async def load_patients(self, ids: set[str]) -> dict[str, PatientRow]:
        """The patients of ``ids`` that exist (deleted or not), by id, every field
        of ``PatientRow`` filled in (its creator included)."""
        ...

    async def load_records(self, ids: set[str]) -> dict[str, RecordRow]:
        """The records of ``ids`` that exist (deleted or not), by id."""
        ...

    async def load_live_records_of(self, patient_ids: set[str]) -> list[RecordRow]:
        """The live records of the patients of ``patient_ids``, oldest first."""
        ...

    async def load_temp_ids(self, device_id: str, temp_ids: set[str]) -> dict[str, tuple[str, str]]:
        """client_temp_id -> (server_id, resource_type) of this device's known temp ids."""
        ...

    async def write_patients(self, new: list[PatientRow], changed: list[PatientRow]) -> None:
        """Insert ``new`` and update ``changed`` as they are, stamps included
        (the caller stamped them; ``id``, ``owner``, ``created_at`` and the creator,
        ``created_by_device`` and ``created_temp_id``, are written once, on insert)."""
        ...

    async def write_records(self, new: list[RecordRow], changed: list[RecordRow]) -> None:
        """Insert ``new`` and update ``changed`` as they are, stamps included
        (``id``, ``created_at`` and the creator are written once, on insert)."""
        ...

    async def insert_temp_ids(self, rows: list[tuple[str, str, str, str]]) -> None:
        """Remember (device_id, client_temp_id, server_id, resource_type) rows."""
        ...

    async def insert_conflicts(self, rows: list[tuple[Any, ...]]) -> None:
        """Store conflicts: (id, batch_id, device_id, server_id, resource_type,
        reason, change, server_copy, created_at), unresolved."""
        ...

    async def resolve_conflict(self, conflict_id: str, resolution: str | None) -> bool:
        """Mark the conflict resolved now, unless it already is; whether it was changed."""
        ...

    # Batches and devices ---------------------------------------------------------------

    async def fetch_batch(self, batch_id: str) -> Row | None:
        """(id, device_id, status, response, error, claimed_at, attempts) of the batch, or None."""
        ...

    async def insert_batch(
        self,
        batch_id: str,
        device_id: str,
        status: str,
        change_count: int,
        *,
        request: str | None = None,
        response: str | None = None,
    ) -> None:
        """Store a new batch in ``status`` (``done``: finished now, with ``response``)."""
        ...

    async def device_uploaded(self, device_id: str) -> None:
        """Note that the device was seen uploading now (created on first sight)."""
        ...

    async def device_downloaded(self, device_id: str, cursor: int) -> None:
        """Note that the device was seen downloading now, up to ``cursor``
        (its stored cursor never goes back)."""
        ...

    async def purge_tombstones(self, before: str) -> int:
        """Delete tombstones last changed before ``before`` (a patient only once
        no record points at it) and raise the purge horizon; how many rows went."""
        ...


class Snapshot(Protocol):
    """One consistent read snapshot, as ``read(fn)`` hands it to ``fn``.

    Listings end each row with its page key and take ``limit + 1`` rows'
    worth of ``limit`` so that ``rows.keyset_page`` can cut them; ``after`` is
    the last page's key (0: from the start).
    """

    async def head(self) -> tuple[int, int]:
        """(seq, updated_at in µs) of the newest commit this snapshot holds."""
        ...

    async def purge_horizon(self) -> tuple[int, str]:
        """(seq, updated_at) of the newest purged tombstone (0 and the epoch if none):
        a position before it may have missed a deletion."""
        ...

    async def get_patient(self, patient_id: str) -> Row | None:
        """The patient row (deleted or not), or None."""
        ...

    async def get_record(self, record_id: str) -> Row | None:
        """The record row (deleted or not), or None."""
        ...

    async def list_patients(self, *, include_deleted: bool, limit: int | None, after: int) -> list[Row]:
        """Patients in creation order after the page key ``after``, up to
        ``limit + 1`` (all with None), each row ending in its page key."""
        ...

    async def list_records(
        self,
        *,
        include_deleted: bool,
        limit: int | None,
        after: int,
        patient: str | None = None,
        resource_type: str | None = None,
    ) -> list[Row]:
        """Records in creation order, filtered, paged as ``list_patients``."""
        ...

    async def changes_after(
        self,
        *,
        after_seq: int | None = None,
        after_time: str | None = None,
        limit: int,
        resource_type: str | None = None,
        patient: str | None = None,
    ) -> list[ChangeRow]:
        """Up to ``limit`` changes (patients and records, deleted ones too) after
        a seq or a canonical time, oldest first.  ``resource_type`` 'Patient'
        reads only patients, any other type only records of that type;
        ``patient`` keeps the patient's own entry and its records'.  Each entry
        ends with ``created_by`` (see ``rows``)."""
        ...

    async def changes_for_push(self, after_seq: int, limit: int) -> list[PushRow]:
        """Like ``changes_after`` with no filter, plus the keys the push hub filters on."""
        ...

    async def list_conflicts(
        self, *, device_id: str | None, resolved: bool | None, limit: int | None, after: int
    ) -> list[Row]:
        """Conflicts in creation order, filtered, paged as ``list_patients``."""
        ...

    async def get_conflict(self, conflict_id: str) -> Row | None:
        """The conflict row, or None."""
        ...

    async def get_batch(self, batch_id: str) -> dict[str, Any] | None:
        """The batch as the API shows it (``rows.batch_out``), or None."""
        ...

    async def list_batches(
        self, *, device_id: str | None, status: str | None, limit: int | None, after: int
    ) -> list[Row]:
        """Batches newest first, filtered, each row ending in its page key
        (descending; ``after`` 0: from the newest)."""
        ...

    async def batch_events_since(self, updated_at: str) -> list[Row]:
        """(id, device_id, status, updated_at) of batches changed at or after
        ``updated_at``, oldest change first."""
        ...

    async def list_devices(self) -> list[dict[str, Any]]:
        """Every device seen, most recently seen first, with its batches and lag."""
        ...


class Storage(Protocol):
    """A HealthSync database: the only way the program reads or writes its data."""

    #: The backend's name, as ``/api/health`` reports it (``"sqlite"``, ``"postgres"``).
    backend: str
    #: The schema version reached by ``migrate`` (0 before ``open``).
    schema_version: int

    # Lifecycle -------------------------------------------------------------------

    async def open(self) -> Storage:
        """Connect and migrate (idempotent).  ``DatabaseClosed`` once closed."""
        ...

    async def migrate(self) -> int:
        """Bring the schema up to date; the version reached.  Safe when several
        processes start at once: each step is applied once."""
        ...

    async def close(self) -> None:
        """Let queued writes finish, then let go of every connection (idempotent)."""
        ...

    @property
    def closed(self) -> bool: ...

    # The write path, reads, commits ----------------------------------------------

    async def write(self, fn: Callable[[WriteTx], Awaitable[T]]) -> T:
        """Run ``fn(tx)`` in one transaction under the clock lock and commit;
        then call every commit hook.  Any exception rolls back and is re-raised."""
        ...

    async def read(self, fn: Callable[[Snapshot], Awaitable[T]]) -> T:
        """Run ``fn(snapshot)`` in one consistent read snapshot (a ``Snapshot``)."""
        ...

    def add_commit_hook(self, hook: CommitHook) -> None:
        """Call ``hook(CommitInfo)`` on the event loop after every committed write
        of this storage object (other processes' commits show in ``commit_signal``)."""
        ...

    async def commit_signal(self) -> int:
        """A value that changes whenever any process commits.  Compare it only
        with earlier values from the same storage object."""
        ...

    #: Whether ``listen`` hears every commit of every process as it happens
    #: (PostgreSQL's LISTEN/NOTIFY); False where only polling ``commit_signal``
    #: notices other processes' commits (SQLite).
    pushes_commits: bool

    async def listen(self, on_signal: Callable[[], None]) -> None:
        """Call ``on_signal()`` after each commit of any process, and once each
        time listening starts or resumes (whatever committed unheard is then
        read by the caller, as after a poll).  Runs until cancelled; a lost
        connection is re-opened with backoff (``listen_reconnects`` counts it).
        Returns at once where ``pushes_commits`` is False."""
        ...

    @property
    def listening(self) -> bool:
        """Whether ``listen`` hears commits right now (its connection is up)."""
        ...

    @property
    def listen_reconnects(self) -> int:
        """How often ``listen`` re-opened a lost connection."""
        ...

    async def take_rate_token(self, key: str, per_minute: int) -> int | None:
        """Take one write from ``key``'s bucket (``per_minute`` > 0 a minute,
        refilled evenly, up to ``per_minute`` at once): None when taken,
        else the whole seconds until one is free (at least 1).  Shared by
        every process of the database where it has several (PostgreSQL);
        ``Unreachable`` when the database cannot be asked."""
        ...

    def idle_for(self) -> float:
        """Seconds since a write last let go of the writer; 0 while one holds it."""
        ...

    async def head(self) -> tuple[int, int]:
        """(seq, updated_at in µs) of the newest commit."""
        ...

    async def probe(self) -> int:
        """The head as a process starting now would read it (a fresh connection,
        not a pooled one); raises when the database cannot be reached."""
        ...

    # Backups ---------------------------------------------------------------------

    async def backup(self, dest: Path) -> Path:
        """A consistent copy (one snapshot) at ``dest``, or in it when it is a
        folder; the path written.  ``Conflict`` if the copy fails its check.
        Needs no ``open``; closes nothing it did not open."""
        ...

    async def restore(self, src: Path) -> None:
        """Replace the data by the backup ``src``, which must pass its check
        (``Invalid``); ``Conflict`` while any process has the database open."""
        ...

    # Tokens ----------------------------------------------------------------------

    async def create_token(self, name: str, role: str, token_hash: str) -> None:
        """Store a token by its hash; ``Conflict`` while a live token has ``name``."""
        ...

    async def revoke_token(self, name: str) -> int:
        """Revoke the live token named ``name``; how many were revoked (0 or 1)."""
        ...

    async def list_tokens(self) -> list[dict[str, Any]]:
        """Every token, oldest first: name, role, created_at, revoked_at."""
        ...

    async def find_token(self, token_hash: str) -> tuple[str, str] | None:
        """(name, role) of the live token with this hash, or None."""
        ...

    # Audit -----------------------------------------------------------------------

    async def append_audit(self, entries: Sequence[AuditEntry]) -> None:
        """Append audit entries in one write (the trail is append-only)."""
        ...

    async def list_audit(
        self, *, who: str | None, since: str | None, limit: int, after: int
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` entries after entry id ``after``, oldest first,
        optionally by ``who`` and newer than ``since``."""
        ...

    # Devices and purge -----------------------------------------------------------

    async def list_devices(self) -> list[dict[str, Any]]:
        """Every device seen, most recently seen first, with its batches and lag."""
        ...

    async def purge_tombstones(self, before: str) -> int:
        """Delete tombstones last changed before ``before`` and raise the purge
        horizon, in one write; how many rows went."""
        ...

    # Batches ---------------------------------------------------------------------
    # States: pending -> processing (claimed by a task) -> done | failed;
    # failed -> processing again.  A batch is applied at most once.

    async def store_batch(self, batch_id: str, device_id: str, request: str, change_count: int) -> None:
        """Store an uploaded batch as ``pending`` (``request``: its JSON text)."""
        ...

    async def get_batch(self, batch_id: str) -> dict[str, Any] | None:
        """The batch as the API shows it (with its results once done), or None."""
        ...

    async def list_batches(
        self, *, device_id: str | None, status: str | None, limit: int | None, after: int
    ) -> tuple[list[dict[str, Any]], int | None]:
        """A page of batches, newest first, and the ``after`` of the next page."""
        ...

    async def claim_batch(self, batch_id: str, task_id: str) -> str:
        """``pending``/``failed`` -> ``processing`` under ``task_id`` (a new claim:
        attempts + 1, no worker yet); the batch's device.  ``NotFound``, or
        ``Conflict`` (with the status) when it is ``processing`` or ``done``."""
        ...

    async def release_batch(self, batch_id: str, task_id: str) -> bool:
        """Undo a claim whose task never reached the queue: ``processing`` under
        ``task_id`` -> ``pending`` (the attempt uncounted); whether it was."""
        ...

    async def record_batch_worker(self, batch_id: str, task_id: str, worker: str) -> bool:
        """Name the process running the claim and stamp its heartbeat, if the
        batch is still ``processing`` under ``task_id``; whether it was."""
        ...

    async def heartbeat_batches(self, worker: str) -> int:
        """Stamp ``heartbeat_at`` of every claim ``worker`` runs; how many."""
        ...

    async def apply_claimed_batch(self, batch_id: str, task_id: str, apply: ApplyStored) -> bool:
        """In ONE write: if the batch is still ``processing`` under ``task_id``,
        run ``apply(tx, request)`` and mark it ``done`` with the response;
        otherwise change nothing.  Whether it was applied.  Whoever calls it,
        however often, a batch is applied once."""
        ...

    async def fail_batch(self, batch_id: str, task_id: str, error: str) -> bool:
        """Mark the batch ``failed`` with ``error``, if still claimed by ``task_id``."""
        ...

    async def reclaim_batches(self, pick: Callable[[Claim], str | None]) -> list[tuple[Claim, str]]:
        """In one write, give every ``processing`` batch for which ``pick(claim)``
        returns a new task id a new claim under it (attempts + 1, no worker);
        (old claim, new task id) for each."""
        ...

    async def purge_batches(self, before: str) -> int:
        """Delete ``done`` batches finished before ``before``; how many."""
        ...

    async def batch_events_since(self, updated_at: str) -> list[tuple[str, str, str, str]]:
        """(batch_id, device_id, status, updated_at) of batches changed at or
        after ``updated_at``, oldest change first."""
        ...
