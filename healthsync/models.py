"""Pydantic models for what clients send, and JSON helpers.

``PatientIn`` and ``RecordIn`` are the writable fields of the two resources;
read-only keys a client echoes back (``id``, ``server_version``…) are ignored,
unknown keys are refused so a typo never silently drops data.
``UploadRequest`` and ``Change`` are the sync upload's envelope;
``sync/envelope.py`` reaches their verdict cheaply for a valid batch.

``validation_details`` turns a pydantic ``ValidationError`` into the
``details`` list of our error body, each entry naming its field.

``PatientCheck`` is the sync upload's fast way to the same verdict as
``PatientIn`` for each of thousands of payloads; ``PatientIn`` stays the one
that words every error.
"""

from __future__ import annotations

import re
import uuid
from datetime import date
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)

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


_MAX_STR = 1_000_000
_WRITABLE_CONFIG = ConfigDict(extra="forbid", str_max_length=_MAX_STR)


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


def dob_problem(value: str, today: date) -> str | None:
    """Why ``value`` is not a date of birth (``YYYY-MM-DD``, not after ``today``), or None."""
    try:
        if not _DOB_FORM.fullmatch(value):
            raise ValueError
        day = date.fromisoformat(value)
    except ValueError:
        return f"{value[:64]!r} is not a date in YYYY-MM-DD form"
    if day > today:
        return f"{value} is in the future"
    return None


def check_dob(value: str | None) -> str | None:
    if value is None:
        return None
    problem = dob_problem(value, clock.today_utc())
    if problem:
        raise ValueError(problem)
    return value


#: A patient's name (``PatientCheck`` checks the same bounds).
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


#: The keys a patient payload may have: ``PatientIn``'s fields, the ignored
#: read-only ones included (any other key is refused).
_PATIENT_KEYS = frozenset(PatientIn.model_fields)
ABSENT: Any = object()  # a key left out, told apart from a None value


class PatientCheck:
    """``PatientIn``'s verdict on many payloads, reached cheaply for the valid ones.

    A sync batch carries up to 10,000 patient payloads; one ``PatientIn`` per
    payload, with its Python validators (and ``today`` read for every
    ``dob``), costs more than writing the rows, and even pydantic checking a
    list of plain dicts in one call builds a copy of every payload.  Here
    ``today`` is read once and each payload is checked where it lies, with
    plain type tests, no copy.

    ``one`` answers a payload's ``PatientValues`` only when ``PatientIn``
    certainly accepts it with those very values, and None otherwise: the
    caller then asks ``PatientIn`` itself, which words the errors (or, in a
    case this check is unsure of, accepts).  So errors and edge cases have
    one source of truth, and the fast path cannot change an outcome
    (``tests/test_models.py`` holds the two together on generated payloads).
    """

    def __init__(self, today: date) -> None:
        self.today = today

    def one(self, payload: Any) -> PatientValues | None:
        """``payload``'s values when ``PatientIn`` would accept it as they are, else None.

        Exact types only (what ``orjson`` gives): anything else, a subclass
        included, is left to ``PatientIn``.  ``str_max_length`` applies to the
        top-level keys of ``identifiers`` and ``fhir`` (the values are ``Any``).
        """
        if type(payload) is not dict or not _PATIENT_KEYS.issuperset(payload):
            return None
        name = payload.get("name")
        if type(name) is not str or not 0 < len(name) <= 256 or not name.strip():
            return None
        dob = payload.get("dob")
        if dob is not None and (type(dob) is not str or dob_problem(dob, self.today) is not None):
            return None
        identifiers = payload.get("identifiers", ABSENT)
        if identifiers is ABSENT:
            identifiers = {}
        elif type(identifiers) is not dict or (identifiers and not _plain_document(identifiers)):
            return None
        fhir = payload.get("fhir")
        if fhir is not None and (type(fhir) is not dict or (fhir and not _plain_document(fhir))):
            return None
        return name, dob, identifiers, fhir


def _plain_document(doc: dict[str, Any]) -> bool:
    """A ``dict[str, Any]`` field ``PatientIn`` takes as it is: keys within
    ``str_max_length`` and not nested past ``MAX_JSON_DEPTH``."""
    return not too_deep(doc) and all(type(key) is str and len(key) <= _MAX_STR for key in doc)


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


# Sync upload envelope (checked in sync/envelope.py) --------------------------------

#: Keys of a record payload that route it to its patient; the rest is ``data``.
ROUTING_KEYS = frozenset({"patient_id", "patient_temp_id"})

_ID = Annotated[str, StringConstraints(min_length=1, max_length=256), Strict()]
#: The largest ``server_version`` (a signed 64-bit integer in the database).
MAX_VERSION = 2**63 - 1


class Change(BaseModel):
    """One change of an upload.  Only its routing is checked here; what the
    payload says is judged per change when the batch is applied."""

    model_config = ConfigDict(extra="forbid", strict=True)

    operation: Literal["create", "update", "delete"]
    resource_type: _ID
    client_temp_id: _ID | None = None
    server_id: _ID | None = None
    client_updated_at: Annotated[str, StringConstraints(max_length=64)] | None = None
    base_version: Annotated[int, Field(ge=0, le=MAX_VERSION)] | None = None
    payload: dict[str, Any] = Field(default_factory=dict)

    @field_validator("base_version", mode="before")
    @classmethod
    def _integral(cls, v: Any) -> Any:
        # JSON does not tell 3 from 3.0 (JSON Schema's "integer" is either): a whole float is that number
        if type(v) is float and v.is_integer() and 0 <= v <= MAX_VERSION:
            return int(v)
        return v

    @field_validator("server_id")
    @classmethod
    def _server_uuid(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return None
        if info.data.get("operation") == "create":
            return v  # the id a device made for a new item is taken as it is, or refused (routing_problem)
        try:
            return str(uuid.UUID(v))
        except ValueError:
            raise ValueError(f"{v[:64]!r} is not a server id (a UUID)") from None


#: A UUID in its canonical text form (what ``str(uuid.UUID(…))`` gives).
CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def new_id_problem(value: Any) -> str | None:
    """Why ``value`` cannot be the id a client chose for a new item, or None.

    A UUID in its canonical form (lower-case hex, 8-4-4-4-12), the form the
    server writes every id in: ids are compared exactly (in download
    entries, in a device's own map), so an upper-case or braced spelling
    would name the item under a second string, and is refused instead of
    being rewritten behind the device's back.
    """
    if type(value) is not str:
        return "must be a UUID string"
    if _CANONICAL_UUID.fullmatch(value):
        return None
    try:
        canonical = str(uuid.UUID(value))
    except (ValueError, TypeError):
        return f"{value[:64]!r} is not a UUID"
    return f"{value[:64]!r} is not in canonical form (lower-case, 8-4-4-4-12): send {canonical!r}"


def routing_problem(operation: str, client_temp_id: str | None, server_id: str | None) -> tuple[str, str] | None:
    """(field, message) when a change cannot be routed at all.  A create's
    ``server_id`` (optional) is the id the device made for the new item."""
    if operation == "create":
        if client_temp_id is None:
            return "client_temp_id", "client_temp_id is required for create"
        if server_id is not None:
            problem = new_id_problem(server_id)
            if problem:
                return "server_id", f"a create's server_id is the new item's id: {problem}"
        return None
    if server_id is None:
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
