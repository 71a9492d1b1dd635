"""``Snapshot``: one SQLite read transaction, as ``Database.read`` hands it on.

It implements ``storage.interface.Snapshot``: the named reads of
``queries`` as its methods (each of those functions takes the snapshot
first, so the class carries them as they are).  ``execute`` and
``execute_fetchall`` are the read connection's own, inside its ``BEGIN``:
for the SQLite backend's own modules only.
"""

from __future__ import annotations

import aiosqlite

from . import queries


class Snapshot:
    """A read-only connection inside one read transaction."""

    __slots__ = ("execute", "execute_fetchall")

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.execute = conn.execute
        self.execute_fetchall = conn.execute_fetchall

    # The named reads (storage.interface.Snapshot) ---------------------------------

    head = queries.head
    purge_horizon = queries.purge_horizon
    get_patient = queries.get_patient
    get_record = queries.get_record
    list_patients = queries.list_patients
    list_records = queries.list_records
    changes_after = queries.changes_after
    changes_for_push = queries.changes_for_push
    list_conflicts = queries.list_conflicts
    get_conflict = queries.get_conflict
    get_batch = queries.get_batch
    list_batches = queries.list_batches
    batch_events_since = queries.batch_events_since
    list_devices = queries.list_devices
