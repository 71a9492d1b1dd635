"""Patient and record rows with names, as the sync write path holds them.

``mutations.load_patients``/``load_records`` return them, a sync batch
changes them in memory (``sync/apply.py``), and ``mutations.write_patients``/
``write_records`` write them back.  The two share the names of the columns
the write path stamps (``version``, ``updated_at``, ``deleted``, ``seq``), so
code that handles either kind reads them alike.

Plain slotted classes: a 10,000-change upload makes one per row it loads or
creates, and building them, then the statements' parameter tuples, costs
about 2.5 ms per 10,000 rows more than the positional lists they replace
(see ``bench/README.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .queries import Row


@dataclass(slots=True, eq=False)
class PatientRow:
    """A ``patients`` row: the columns of ``queries.PATIENT_COLS`` in order,
    then ``seq`` (None until the batch changes the row) and ``created_at``
    (set for a row the batch creates)."""

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

    def stored(self) -> Row:
        """The ``PATIENT_COLS`` tuple (what ``queries.patient_out`` takes)."""
        return (self.id, self.owner, self.name, self.dob, self.identifiers, self.fhir, self.version,
                self.updated_at, self.deleted)


@dataclass(slots=True, eq=False)
class RecordRow:
    """A ``records`` row: the columns of ``queries.RECORD_COLS`` in order,
    then ``seq`` and ``created_at`` as in ``PatientRow``."""

    id: str
    patient: str
    resource_type: str
    data: str  # JSON text, as stored
    version: int  # the server_version column
    updated_at: str
    deleted: int
    seq: int | None = None
    created_at: str | None = None

    def stored(self) -> Row:
        """The ``RECORD_COLS`` tuple (what ``queries.record_out`` takes)."""
        return (self.id, self.patient, self.resource_type, self.data, self.version, self.updated_at, self.deleted)
