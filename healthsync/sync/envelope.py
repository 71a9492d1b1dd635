"""The sync upload's envelope: what ``POST /api/sync/upload/`` must look like.

``models.UploadRequest`` (pydantic) is the reference: it words every error.
``check_upload`` reaches its verdict cheaply for a valid body, checking each
change in place, and ``parse_upload`` puts the two together: an ``Upload``
whose changes are plain dicts (``ChangeFields``), or the whole batch refused
(``Invalid`` naming the change index and field, or ``TooLarge``) before
anything is written.  What each change's payload says is judged later, per
change, when the batch is applied (``apply.py``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal, Required, TypeGuard, cast

from pydantic import ValidationError

# pydantic needs typing_extensions' TypedDict before Python 3.12 (it depends on the package)
from typing_extensions import TypedDict

from ..errors import Invalid, TooLarge
from ..models import ABSENT, CANONICAL_UUID, MAX_VERSION, UploadRequest, routing_problem, validation_details


class ChangeFields(TypedDict, total=False):
    """``Change`` as a plain dict, with the very same fields.  A key the
    client left out is absent rather than None, so read the optional ones
    with ``.get``; ``payload`` is always there once ``check_upload`` or
    ``Upload.from_model`` has made it.  Keep the two in step
    (``tests/test_envelope.py`` compares them)."""

    operation: Required[Literal["create", "update", "delete"]]
    resource_type: Required[str]
    client_temp_id: str | None
    server_id: str | None
    client_updated_at: str | None
    base_version: int | None
    payload: dict[str, Any]


_UPLOAD_KEYS = frozenset({"device_id", "changes", "batch_id", "async"})
#: ``Change``'s fields in its order: the order of ``change_dump``.
_CHANGE_KEYS = ("operation", "resource_type", "client_temp_id", "server_id", "client_updated_at", "base_version")
_CHANGE_KEY_SET = frozenset((*_CHANGE_KEYS, "payload"))
_OPERATIONS = frozenset(("create", "update", "delete"))


def change_dump(change: ChangeFields) -> dict[str, Any]:
    """A change as ``Change.model_dump(by_alias=True, exclude_none=True)`` gives
    it (keys in field order, None left out, the payload always there): how it
    is stored with a conflict or an async batch."""
    out: dict[str, Any] = {}
    for key in _CHANGE_KEYS:
        value = change.get(key)
        if value is not None:
            out[key] = value
    out["payload"] = change.get("payload", {})
    return out


@dataclass(slots=True)
class Upload:
    """A valid upload envelope, its changes as ``ChangeFields``; what
    ``UploadRequest`` accepts, as ``check_upload`` or ``from_model`` makes it."""

    device_id: str
    changes: list[ChangeFields]
    batch_id: str | None = None
    async_: bool = False

    @classmethod
    def from_model(cls, request: UploadRequest) -> Upload:
        changes = [cast(ChangeFields, change.model_dump()) for change in request.changes]
        return cls(request.device_id, changes, request.batch_id, request.async_)

    def stored_request(self, batch_id: str) -> dict[str, Any]:
        """The body an async batch is stored as, to be applied later under ``batch_id``."""
        changes = [change_dump(change) for change in self.changes]
        return {"device_id": self.device_id, "changes": changes, "batch_id": batch_id}


def _is_id(value: Any) -> TypeGuard[str]:
    """What ``_ID`` accepts, or less (a ``str`` subclass is left to the model)."""
    return type(value) is str and 0 < len(value) <= 256


def check_upload(body: dict[str, Any]) -> Upload | None:
    """``UploadRequest``'s verdict on ``body``, reached cheaply when it accepts.

    The envelope's own keys and each change are checked with plain type
    tests, in place.  The answer is an ``Upload`` only when
    ``UploadRequest`` certainly accepts ``body`` with those very values, and
    None otherwise: the caller then asks ``UploadRequest``, which words every
    error, so a malformed batch is refused exactly as before.
    """
    device_id, changes, batch_id = body.get("device_id"), body.get("changes"), body.get("batch_id")
    async_ = body.get("async", False)
    if not (
        _UPLOAD_KEYS.issuperset(body)
        and _is_id(device_id)
        and type(changes) is list
        and (batch_id is None or _is_id(batch_id))
        and type(async_) is bool
    ):
        return None
    if batch_id is not None:
        try:
            batch_id = str(uuid.UUID(batch_id))  # as UploadRequest._batch_uuid
        except ValueError:
            return None
    for change in changes:
        if not _plain_change(change):
            return None
    return Upload(device_id, cast(list[ChangeFields], changes), batch_id, async_)


def _plain_change(change: Any) -> bool:
    """Whether ``Change`` (strict) certainly accepts ``change`` as it is, and
    it can be routed (``routing_problem``); a missing ``payload`` is filled in
    as ``{}``, the model's default.

    Exact types only, as in ``PatientCheck``: the change is checked where it
    lies, not copied (pydantic checking a list of ``ChangeFields`` builds a
    new dict per change, and costs twice this).
    """
    if type(change) is not dict or not _CHANGE_KEY_SET.issuperset(change):
        return False
    operation = change.get("operation")
    if type(operation) is not str or operation not in _OPERATIONS or not _is_id(change.get("resource_type")):
        return False
    temp_id, server_id = change.get("client_temp_id"), change.get("server_id")
    if temp_id is not None and not _is_id(temp_id):
        return False
    if server_id is not None and not (type(server_id) is str and CANONICAL_UUID.fullmatch(server_id)):
        if not _is_id(server_id) or operation == "create":  # a create's own id: canonical, or refused (slow path)
            return False
        try:
            change["server_id"] = str(uuid.UUID(server_id))  # as Change._server_uuid
        except ValueError:
            return False
    if routing_problem(operation, temp_id, server_id) is not None:
        return False
    value = change.get("client_updated_at")
    if value is not None and (type(value) is not str or len(value) > 64):
        return False
    value = change.get("base_version")
    if value is not None and (type(value) is not int or not 0 <= value <= MAX_VERSION):
        return False
    value = change.get("payload", ABSENT)
    if value is ABSENT:
        change["payload"] = {}
    elif type(value) is not dict:
        return False
    return True


def parse_upload(body: Any, max_changes: int) -> Upload:
    """Validate an upload body: an ``Upload`` or a whole-batch refusal.

    ``check_upload`` answers for a valid body; anything it is not sure of goes
    to ``UploadRequest``, which words the errors (or, in a case the check is
    unsure of, accepts), and then to the routing check (``routing_problem``).
    """
    if not isinstance(body, dict):
        raise Invalid("upload body must be a JSON object", [{"field": "body", "message": "expected a JSON object"}])
    changes = body.get("changes")
    if isinstance(changes, list) and len(changes) > max_changes:
        raise TooLarge(
            f"batch has {len(changes)} changes; the most one upload may carry is {max_changes}",
            [{"field": "changes", "message": f"at most {max_changes} changes per batch"}],
        )
    request = check_upload(body)  # sure of a valid body, routing included
    if request is not None:
        return request
    try:
        request = Upload.from_model(UploadRequest.model_validate(body))
    except ValidationError as exc:
        details = validation_details(exc)
        raise Invalid(_summary("invalid upload", details), details) from None
    problems = []
    for index, change in enumerate(request.changes):
        problem = routing_problem(change["operation"], change.get("client_temp_id"), change.get("server_id"))
        if problem:
            problems.append({"index": index, "field": problem[0], "message": problem[1]})
    if problems:
        raise Invalid(_summary("invalid upload", problems), problems)
    return request


def _summary(prefix: str, details: list[dict[str, Any]]) -> str:
    first = details[0]
    where = f"change {first['index']}: " if "index" in first else ""
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return f"{prefix}: {where}{first['field']}: {first['message']}{more}"
