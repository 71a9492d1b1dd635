"""``WriteTx``: one SQLite write transaction, as ``Database.write`` hands it on.

It implements ``storage.interface.WriteTx``: the stamp, and the named writes
of ``mutations`` as its methods (each of those functions takes the
transaction first, so the class carries them as they are).  ``conn`` (the
writer connection, inside ``BEGIN IMMEDIATE``) is for the SQLite backend's
own modules only.
"""

from __future__ import annotations

from typing import Any

import aiosqlite

from ... import clock
from . import mutations


class WriteTx:
    """The state of one write transaction, given to the write function.

    ``conn`` is the writer connection, inside ``BEGIN IMMEDIATE``.
    """

    def __init__(self, conn: aiosqlite.Connection, seq: int, last_us: int) -> None:
        self.conn = conn
        self.seq = seq
        self.last_us = last_us
        self.changed = 0
        self.events: list[dict[str, Any]] = []
        self._now = clock.now_us()
        self._second = -1  # the second of the last stamp, and its text up to the fraction
        self._second_text = ""

    def stamp(self) -> tuple[int, str]:
        """Next (seq, updated_at) for one changed row: both strictly increasing.

        ``clock.step`` and ``clock.format_us``, inlined: an upload stamps
        10,000 rows in a row, almost all within one second.
        """
        self.seq += 1
        us = self.last_us + 1
        if us < self._now:
            us = self._now
        self.last_us = us
        self.changed += 1
        second, micro = divmod(us, 1_000_000)
        if second != self._second:
            self._second = second
            self._second_text = clock.format_us(us)[:-7]
        return self.seq, f"{self._second_text}{micro:06d}Z"

    def now(self) -> str:
        """The transaction's wall-clock time, canonical (for bookkeeping columns)."""
        return clock.format_us(self._now)

    def emit(self, event: dict[str, Any]) -> None:
        """Record an event for the commit hooks; dropped if the write fails."""
        self.events.append(event)

    # The named writes (storage.interface.WriteTx) ---------------------------------

    fetch_patient = mutations.fetch_patient
    fetch_record = mutations.fetch_record
    insert_patient = mutations.insert_patient
    update_patient = mutations.update_patient
    tombstone_patient = mutations.tombstone_patient
    tombstone_records = mutations.tombstone_records
    insert_record = mutations.insert_record
    update_record = mutations.update_record
    load_patients = mutations.load_patients
    load_records = mutations.load_records
    load_live_records_of = mutations.load_live_records_of
    load_temp_ids = mutations.load_temp_ids
    write_patients = mutations.write_patients
    write_records = mutations.write_records
    insert_temp_ids = mutations.insert_temp_ids
    insert_conflicts = mutations.insert_conflicts
    resolve_conflict = mutations.resolve_conflict
    fetch_batch = mutations.fetch_batch
    insert_batch = mutations.insert_batch
    device_uploaded = mutations.device_uploaded
    device_downloaded = mutations.device_downloaded
    purge_tombstones = mutations.purge_tombstones
