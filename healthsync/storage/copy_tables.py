"""What ``run.py copy-data`` copies, shared by the copy (``copy.py``) and its two
ends (``copy_sides.py``): the tables and their columns, the clock row, the
errors, and how a source or target is named in a message."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from ..errors import HealthSyncError

DB_FILE = "healthsync.db"
CHUNK = 5_000


class CopyRefused(HealthSyncError):
    """The copy was not started: a source or target that cannot be used as given."""

    status = 400


class CopyFailed(HealthSyncError):
    """The copy started and did not finish (or did not check): the target was left as it was."""

    status = 500


@dataclass(frozen=True)
class Table:
    """One table to copy: its columns (``pk``: the page key, SQLite's ``rowid``),
    which of them are integers, the order rows are read and checked in, and
    PostgreSQL's identity column (whose sequence must continue after the copy)."""

    name: str
    columns: tuple[str, ...]
    ints: frozenset[str]
    order: tuple[str, ...]
    identity: str | None = None


def _table(name: str, columns: str, ints: str, order: str, identity: str | None = None) -> Table:
    return Table(name, tuple(columns.split()), frozenset(ints.split()), tuple(order.split()), identity)


#: Parents before children (records name their patient).
TABLES: tuple[Table, ...] = (
    _table("patients", "pk id owner name dob identifiers fhir server_version updated_at seq deleted created_at"
           " created_by_device created_temp_id", "pk server_version seq deleted", "pk", "pk"),
    _table("records", "pk id patient resource_type data server_version updated_at seq deleted created_at"
           " created_by_device created_temp_id", "pk server_version seq deleted", "pk", "pk"),
    _table("batches", "pk id device_id status change_count request response error attempts task_id created_at"
           " claimed_at finished_at updated_at worker heartbeat_at", "pk change_count attempts", "pk", "pk"),
    _table("temp_ids", "device_id client_temp_id server_id resource_type", "", "device_id client_temp_id"),
    _table("conflicts", "pk id batch_id device_id server_id resource_type reason change server_copy created_at"
           " resolved resolved_at resolution", "pk resolved", "pk", "pk"),
    _table("devices", "device_id first_seen last_seen last_upload_at last_download_at last_cursor",
           "last_cursor", "device_id"),
    _table("tokens", "id name role hash created_at revoked_at", "id", "id", "id"),
    _table("audit", "id at who role method path query status remote_ip", "id status", "id", "id"),
)
#: The clock row's columns both backends have (PostgreSQL's ``commits`` is its commit signal, not data).
CLOCK = _table("clock", "seq last_us purged_seq purged_at", "seq last_us purged_seq", "seq")


def redact(where: str) -> str:
    """A source or target for a message: a URL without its password."""
    if not where.startswith(("postgresql://", "postgres://")):
        return where
    parts = urlsplit(where)
    if parts.password is None:
        return where
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def is_url(where: str) -> bool:
    return where.startswith(("postgresql://", "postgres://"))
