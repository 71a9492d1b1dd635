"""Domain errors: what went wrong, as data the web layer turns into JSON.

Every error carries the HTTP status it maps to, a human message and a list of
``details`` (dicts naming the field, and for uploads the change index).  The
web layer's one ``write_error`` renders them as ``{"error", "details"}``;
nothing else writes an error body.  An error whose ``retry_after`` is set
(seconds) tells the client to come back: the web layer sends it as
``Retry-After``, whatever the error's class.

``Busy`` and ``StorageFull`` are faults of the machine, not of the request:
the storage layer raises them in place of the driver's "database is locked"
and "database or disk is full", after rolling the write back whole.
"""

from __future__ import annotations

from typing import Any


class HealthSyncError(Exception):
    """Base class: ``status`` is the HTTP status the error maps to."""

    status = 500
    #: seconds after which the client should try again (``Retry-After``); None: not a wait
    retry_after: int | None = None

    def __init__(
        self,
        message: str,
        details: list[dict[str, Any]] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []
        #: extra top-level keys for the error body (e.g. ``resync``).
        self.extra = extra

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.message, "details": self.details}
        out.update(self.extra)
        return out


class Invalid(HealthSyncError):
    """The request is malformed or a field has a bad value (400)."""

    status = 400


class Unauthorized(HealthSyncError):
    status = 401


class Forbidden(HealthSyncError):
    status = 403


class NotFound(HealthSyncError):
    status = 404


class Conflict(HealthSyncError):
    """The target is in a state that forbids the request (409)."""

    status = 409


class Gone(HealthSyncError):
    """A cursor older than what the server still keeps (410)."""

    status = 410


class PreconditionFailed(HealthSyncError):
    """``If-Match`` no longer matches the stored version (412)."""

    status = 412


class TooLarge(HealthSyncError):
    status = 413


class UnsupportedMediaType(HealthSyncError):
    """The body is not JSON by its ``Content-Type`` (415)."""

    status = 415


class RateLimited(HealthSyncError):
    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ShuttingDown(HealthSyncError):
    """A request that reached the server after its database closed for shutdown (503)."""

    status = 503
    retry_after = 1


class Busy(HealthSyncError):
    """Another process held the database's lock past the busy timeout (503).

    Nothing was written; the same request can simply be sent again.
    """

    status = 503
    retry_after = 1


class StorageFull(HealthSyncError):
    """The disk holding the data is full (507 Insufficient Storage).

    Nothing was written.  The server carries on by itself once space is freed,
    which takes an operator: a longer ``Retry-After`` than for ``Busy``.
    """

    status = 507
    retry_after = 60


class QueueUnavailable(HealthSyncError):
    """The task queue refused a task (its file locked or full, its server down):
    nothing was left claimed, the client may trigger again (503)."""

    status = 503
    retry_after = 5


class Unreachable(HealthSyncError):
    """The database cannot be reached or read at all: missing, unreadable, or its
    server down (503).  The health check reports it; the process keeps running."""

    status = 503
    retry_after = 5


class SchemaTooNew(HealthSyncError):
    """The database was written by a newer HealthSync than this one: refused,
    never migrated backwards (503: this process cannot serve it)."""

    status = 503
