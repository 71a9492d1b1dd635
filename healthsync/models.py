"""Pydantic models for what clients send, and JSON helpers.

``PatientIn`` and ``RecordIn`` are the writable fields of the two resources;
read-only keys a client echoes back (``id``, ``server_version``…) are ignored,
unknown keys are refused so a typo never silently drops data.  The upload
envelope models live in ``sync/`` beside the code that applies them.

``validation_details`` turns a pydantic ``ValidationError`` into the
``details`` list of our error body, each entry naming its field.

``PatientCheck`` is the sync upload's fast way to the same verdict as
``PatientIn`` for thousands of payloads at once; ``PatientIn`` stays the one
that words every error.  ``check_upload`` does the same for the upload
envelope and ``UploadRequest``: a valid batch becomes an ``Upload`` whose
changes are plain dicts (``ChangeFields``), not 10,000 ``Change`` models.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any, Literal, Required, cast

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    with_config,
)

# pydantic needs typing_extensions' TypedDict before Python 3.12 (it depends on the package)
from typing_extensions import TypedDict

from . import clock
from .errors import Invalid
from .fhir import record_type_error

#: Keys of a resource's representation that clients may send back but not set.
READ_ONLY_KEYS = frozenset({"id", "owner", "server_version", "updated_at", "deleted"})
MAX_JSON_DEPTH = 32


def loads(body: bytes | str) -> Any:
    """Parse a JSON body; ``Invalid`` with a clear message when it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Invalid(f"request body is not valid JSON: {exc}") from None


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a JSON value nests deeper than ``limit`` (a scalar is 0, ``{}`` is 1).

    Recursion stops at ``limit``, so it never goes deeper than that however
    deep the value; flat documents, the common case, cost one pass.
    """
    if isinstance(value, dict):
        children: Any = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return False
    if limit <= 0:
        return True
    for child in children:
        if isinstance(child, (dict, list)) and too_deep(child, limit - 1):
            return True
    return False


def parse_uuid(text: str, field: str = "id") -> str:
    """Canonical lower-case UUID text, or ``Invalid`` naming ``field``."""
    try:
        return str(uuid.UUID(text))
    except (ValueError, TypeError, AttributeError):
        raise Invalid(
            f"{field} must be a UUID",
            [{"field": field, "message": f"{str(text)[:64]!r} is not a UUID"}],
        ) from None


def validation_details(exc: ValidationError, prefix: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    details = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = prefix + tuple(err["loc"])
        message = err["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        detail: dict[str, Any]
        if len(loc) >= 2 and loc[0] == "changes" and isinstance(loc[1], int):
            # a change's own field: name it and the change's index
            field = ".".join(str(p) for p in loc[2:]) or "change"
            detail = {"index": loc[1], "field": field}
        else:
            detail = {"field": ".".join(str(p) for p in loc) or "body"}
        detail["message"] = message
        details.append(detail)
    return details


def invalid_from(exc: ValidationError, what: str) -> Invalid:
    details = validation_details(exc)
    named = ", ".join(sorted({d["field"] for d in details}))
    return Invalid(f"invalid {what}: {named}", details)


_WRITABLE_CONFIG = ConfigDict(extra="forbid", str_max_length=1_000_000)


class _Writable(BaseModel):
    """Writable fields; the read-only keys a client echoes back are accepted
    and ignored (declared, so pydantic skips them without a Python hook)."""

    model_config = _WRITABLE_CONFIG

    id: Any = Field(None, exclude=True)
    owner: Any = Field(None, exclude=True)
    server_version: Any = Field(None, exclude=True)
    updated_at: Any = Field(None, exclude=True)
    deleted: Any = Field(None, exclude=True)


# date.fromisoformat also reads other ISO 8601 forms (``2020-W01-1``,
# ``20200101``); a date of birth is stored and sent back as given, so only
# the calendar form is accepted.
_DOB_FORM = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# The same form for pydantic's own (Rust) regex engine, where ``$`` is the
# very end of the text: ``PatientFields`` checks it without calling Python.
_DOB_PATTERN = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"


def dob_problem(value: str, today: date) -> str | None:
    """Why ``value`` is not a date of birth (``YYYY-MM-DD``, not after ``today``), or None."""
    if not _DOB_FORM.fullmatch(value):
        return _not_a_date(value)
    return day_problem(value, today)


def day_problem(value: str, today: date) -> str | None:
    """``dob_problem`` for a ``value`` already known to have the ``YYYY-MM-DD``
    form: a day the calendar has (not 1990-02-30), not after ``today``."""
    try:
        day = date.fromisoformat(value)
    except ValueError:
        return _not_a_date(value)
    if day > today:
        return f"{value} is in the future"
    return None


def _not_a_date(value: str) -> str:
    return f"{value[:64]!r} is not a date in YYYY-MM-DD form"


def check_dob(value: str | None) -> str | None:
    if value is None:
        return None
    problem = dob_problem(value, clock.today_utc())
    if problem:
        raise ValueError(problem)
    return value


#: A patient's name: the constraint PatientIn and PatientFields share.
PatientName = Annotated[str, Field(min_length=1, max_length=256)]


class PatientIn(_Writable):
    """A patient's writable fields, as a create or PUT body gives them."""

    name: PatientName
    dob: str | None = None
    identifiers: dict[str, Any] = Field(default_factory=dict)
    fhir: dict[str, Any] | None = None

    @field_validator("dob")
    @classmethod
    def _dob(cls, v: str | None) -> str | None:
        return check_dob(v)

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("name must not be blank")
        return v

    @field_validator("identifiers", "fhir")
    @classmethod
    def _not_too_deep(cls, v: Any) -> Any:
        if v is not None and too_deep(v):
            raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
        return v


#: (name, dob, identifiers, fhir) of a valid patient, defaults filled in.
PatientValues = tuple[str, str | None, dict[str, Any], dict[str, Any] | None]


def patient_values(model: PatientIn) -> PatientValues:
    return model.name, model.dob, model.identifiers, model.fhir


@with_config(_WRITABLE_CONFIG)
class PatientFields(TypedDict, total=False):
    """``PatientIn``'s fields with only their declarative constraints, as a
    plain dict: pydantic checks a list of these without building a model per
    item or calling back into Python, several times faster than ``PatientIn``.
    ``PatientCheck`` adds the checks that ``PatientIn`` does in Python, but
    for the ``dob``'s form, which pydantic checks here as a pattern.  Keep
    the two in step (``tests/test_models.py`` compares them)."""

    name: Required[PatientName]
    dob: Annotated[str, StringConstraints(pattern=_DOB_PATTERN)] | None
    identifiers: dict[str, Any]
    fhir: dict[str, Any] | None
    id: Any
    owner: Any
    server_version: Any
    updated_at: Any
    deleted: Any


# The validator itself for single items: TypeAdapter.validate_python's own
# Python layer costs a third as much again as checking a small payload.
_validate_patient_fields = TypeAdapter(PatientFields).validator.validate_python
_PATIENT_FIELDS_LIST = TypeAdapter(list[PatientFields])


class PatientCheck:
    """``PatientIn``'s verdict on many payloads, reached cheaply for the valid ones.

    A sync batch carries up to 10,000 patient payloads; one ``PatientIn`` per
    payload, with its Python validators (and ``today`` read for every
    ``dob``), costs more than writing the rows.  Here pydantic checks the
    declarative constraints of a whole list in one call, ``today`` is read
    once, and the Python checks run on plain values.

    Every method answers a payload's ``PatientValues`` only when ``PatientIn``
    certainly accepts it with those very values, and None otherwise: the
    caller then asks ``PatientIn`` itself, which words the errors (or, in a
    case this check is unsure of, accepts).  So errors and edge cases have
    one source of truth, and the fast path cannot change an outcome.
    """

    def __init__(self, today: date) -> None:
        self.today = today

    def many(self, payloads: list[Any]) -> list[PatientValues | None]:
        """``one`` for each of ``payloads``, validating them together."""
        try:
            checked: list[PatientFields | None] = _PATIENT_FIELDS_LIST.validate_python(payloads)
        except ValidationError as exc:
            # One bad payload fails the list: check the others again without it.
            bad = {e["loc"][0] for e in exc.errors(include_url=False, include_input=False)}
            rest = [i for i in range(len(payloads)) if i not in bad]
            checked = [None] * len(payloads)
            try:
                valid = _PATIENT_FIELDS_LIST.validate_python([payloads[i] for i in rest])
            except ValidationError:
                return checked
            for i, fields in zip(rest, valid, strict=True):
                checked[i] = fields
        return [None if fields is None else self._values(fields) for fields in checked]

    def one(self, payload: Any) -> PatientValues | None:
        """``payload``'s values when ``PatientIn`` would accept it as they are, else None."""
        try:
            fields = _validate_patient_fields(payload)
        except ValidationError:
            return None
        return self._values(fields)

    def _values(self, fields: PatientFields) -> PatientValues | None:
        """The checks ``PatientIn`` makes in Python, on fields pydantic has checked."""
        name = fields["name"]
        dob = fields.get("dob")
        identifiers = fields.get("identifiers", {})
        fhir = fields.get("fhir")
        if not name.strip() or (identifiers and too_deep(identifiers)) or (fhir and too_deep(fhir)):
            return None
        if dob is not None and day_problem(dob, self.today) is not None:  # its form: checked by the pattern
            return None
        return name, dob, identifiers, fhir


class RecordIn(_Writable):
    """A health record's writable fields."""

    patient: str
    resource_type: str
    data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("patient")
    @classmethod
    def _patient_uuid(cls, v: str) -> str:
        try:
            return str(uuid.UUID(v))
        except ValueError:
            raise ValueError(f"{v[:64]!r} is not a patient id (a UUID)") from None

    @field_validator("resource_type")
    @classmethod
    def _fhir_type(cls, v: str) -> str:
        problem = record_type_error(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("data")
    @classmethod
    def _not_too_deep(cls, v: Any) -> Any:
        if too_deep(v):
            raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
        return v


def parse_model(model: type[BaseModel], body: Any, what: str) -> Any:
    """Validate ``body`` into ``model``; ``Invalid`` naming each bad field."""
    if not isinstance(body, dict):
        raise Invalid(f"{what} must be a JSON object", [{"field": "body", "message": "expected a JSON object"}])
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise invalid_from(exc, what) from None


# Sync upload envelope ---------------------------------------------------------

#: Keys of a record payload that route it to its patient; the rest is ``data``.
ROUTING_KEYS = frozenset({"patient_id", "patient_temp_id"})

_ID = Annotated[str, StringConstraints(min_length=1, max_length=256), Strict()]


class Change(BaseModel):
    """One change of an upload.  Only its routing is checked here; what the
    payload says is judged per change when the batch is applied."""

    model_config = ConfigDict(extra="forbid", strict=True)

    operation: Literal["create", "update", "delete"]
    resource_type: _ID
    client_temp_id: _ID | None = None
    server_id: _ID | None = None
    client_updated_at: Annotated[str, StringConstraints(max_length=64)] | None = None
    base_version: Annotated[int, Field(ge=0)] | None = None
    payload: dict[str, Any] = Field(default_factory=dict)


def routing_problem(operation: str, client_temp_id: str | None, server_id: str | None) -> tuple[str, str] | None:
    """(field, message) when a change cannot be routed at all."""
    if operation == "create" and client_temp_id is None:
        return "client_temp_id", "client_temp_id is required for create"
    if operation != "create" and server_id is None:
        return "server_id", f"server_id is required for {operation}"
    return None


class UploadRequest(BaseModel):
    """``POST /api/sync/upload/``: a device's batch of changes."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    device_id: _ID
    changes: list[Change]
    batch_id: _ID | None = None
    async_: bool = Field(False, alias="async")

    @field_validator("batch_id")
    @classmethod
    def _batch_uuid(cls, v: str | None) -> str | None:
        if v is None:
            return None
        try:
            return str(uuid.UUID(v))
        except ValueError:
            raise ValueError("batch_id must be a UUID made by the client") from None


@with_config(ConfigDict(extra="forbid", strict=True))
class ChangeFields(TypedDict, total=False):
    """``Change`` as a plain dict, with the very same field types and
    constraints: pydantic checks a list of these without building a model per
    change, about twice as fast.  A key the client left out is absent rather
    than None, so read the optional ones with ``.get``; ``payload`` is always
    there once ``check_upload`` or ``Upload.from_model`` has made it.  Keep
    the two in step (``tests/test_envelope.py`` compares them)."""

    operation: Required[Literal["create", "update", "delete"]]
    resource_type: Required[_ID]
    client_temp_id: _ID | None
    server_id: _ID | None
    client_updated_at: Annotated[str, StringConstraints(max_length=64)] | None
    base_version: Annotated[int, Field(ge=0)] | None
    payload: dict[str, Any]


_CHANGE_FIELDS_LIST = TypeAdapter(list[ChangeFields])
_UPLOAD_KEYS = frozenset({"device_id", "changes", "batch_id", "async"})
#: ``Change``'s fields in its order: the order of ``change_dump``.
_CHANGE_KEYS = ("operation", "resource_type", "client_temp_id", "server_id", "client_updated_at", "base_version")


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


def _is_id(value: Any) -> bool:
    """What ``_ID`` accepts, or less (a ``str`` subclass is left to the model)."""
    return type(value) is str and 0 < len(value) <= 256


def check_upload(body: dict[str, Any]) -> Upload | None:
    """``UploadRequest``'s verdict on ``body``, reached cheaply when it accepts.

    The envelope's own keys are checked in Python and the changes as one list
    of ``ChangeFields``.  The answer is an ``Upload`` only when
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
    try:
        checked: list[ChangeFields] = _CHANGE_FIELDS_LIST.validate_python(changes)
    except ValidationError:
        return None
    for change in checked:
        if "payload" not in change:
            change["payload"] = {}
    return Upload(device_id, checked, batch_id, async_)
