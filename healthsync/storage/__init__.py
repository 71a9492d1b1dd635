"""Storage: the only package that speaks SQL or imports a database driver.

``interface`` is what the rest of HealthSync may ask of a database: the
``Storage`` protocol (the one write path, snapshot reads, the commit signal
and named operations), the ``WriteTx`` that ``write`` hands out with the
named row writes as its methods, and the ``Snapshot`` that ``read`` hands
out with the named reads.  ``rows`` holds the row shapes they return and
their API representations (pure, the same for every backend).  ``sqlite/``
implements the interface on one SQLite file; ``postgres/`` implements it on
PostgreSQL (it passes the same contract suite).  ``make_storage(settings)``
builds the backend the settings name (``database_url``: empty is SQLite in
``data_dir``, a ``postgresql://`` URL is PostgreSQL); it is the only place above the
backends that names one, and the rest of HealthSync imports from this
package only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .interface import AuditEntry, Claim, CommitInfo, DatabaseClosed, Snapshot, Storage, WriteTx
from .rows import (
    ChangeRow,
    PatientRow,
    PushRow,
    RecordRow,
    Row,
    batch_out,
    conflict_out,
    keyset_page,
    patient_out,
    record_out,
)
from .sqlite import Database

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = [
    "AuditEntry",
    "ChangeRow",
    "Claim",
    "CommitInfo",
    "Database",
    "DatabaseClosed",
    "PatientRow",
    "PushRow",
    "RecordRow",
    "Row",
    "Snapshot",
    "Storage",
    "WriteTx",
    "batch_out",
    "conflict_out",
    "keyset_page",
    "make_storage",
    "patient_out",
    "record_out",
]


def make_storage(settings: Settings, *, worker: bool = False) -> Storage:
    """The storage ``settings`` name (not opened yet): PostgreSQL when
    ``database_url`` names one, else SQLite in ``data_dir``.

    ``worker``: for a task, a periodic job or a command beside the server: one
    read connection (on PostgreSQL, a pool of two), and checkpoints left to
    SQLite (only the serving process takes them over, on its one long-lived storage).
    """
    if settings.database_url:
        from .postgres import PostgresDatabase

        # busy_timeout_ms is how long a write waits for another's lock, on either backend
        # (PostgreSQL's lock_timeout; its 0 would mean "forever", so 1 ms at least).
        return PostgresDatabase(settings.database_url, connections=2 if worker else settings.read_connections + 2,
                                lock_timeout_ms=max(1, settings.busy_timeout_ms))
    if worker:
        return Database(
            settings.db_path, synchronous=settings.synchronous, readers=1, busy_timeout_ms=settings.busy_timeout_ms
        )
    return Database(
        settings.db_path,
        synchronous=settings.synchronous,
        readers=settings.read_connections,
        busy_timeout_ms=settings.busy_timeout_ms,
        checkpoint_pages=settings.wal_checkpoint_pages,
    )
