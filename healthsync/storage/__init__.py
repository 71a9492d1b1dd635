"""Storage: the only package that speaks SQL or imports a database driver.

``interface`` is what the rest of HealthSync may ask of a database (the
``Storage`` protocol: the one write path, snapshot reads, the commit signal
and named operations); ``sqlite/`` implements it on one SQLite file.
``queries`` and ``mutations`` are the SQLite backend's row reads and writes,
called with the snapshot or transaction that ``read``/``write`` hand out.
``make_storage(settings)`` builds the backend the settings name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .interface import Claim, CommitInfo, DatabaseClosed, Storage, WriteTx
from .sqlite import Database

if TYPE_CHECKING:
    from settings import Settings

__all__ = ["Claim", "CommitInfo", "Database", "DatabaseClosed", "Storage", "WriteTx", "make_storage"]


def make_storage(settings: Settings, *, worker: bool = False) -> Database:
    """The storage ``settings`` name (not opened yet): today always SQLite in ``data_dir``.

    ``worker``: for a task, a periodic job or a command beside the server: one
    read connection, and checkpoints left to SQLite (only the serving process
    takes them over, on its one long-lived storage).
    """
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
