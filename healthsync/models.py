"""Pydantic models for what clients send, and JSON helpers.

``PatientIn`` and ``RecordIn`` are the writable fields of the two resources;
read-only keys a client echoes back (``id``, ``server_version``…) are ignored,
unknown keys are refused so a typo never silently drops data.  The upload
envelope models live in ``sync/`` beside the code that applies them.

``validation_details`` turns a pydantic ``ValidationError`` into the
``details`` list of our error body, each entry naming its field.
"""

from __future__ import annotations

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


class _Writable(BaseModel):
    """Writable fields; the read-only keys a client echoes back are accepted
    and ignored (declared, so pydantic skips them without a Python hook)."""

    model_config = ConfigDict(extra="forbid", str_max_length=1_000_000)

    id: Any = Field(None, exclude=True)
    owner: Any = Field(None, exclude=True)
    server_version: Any = Field(None, exclude=True)
    updated_at: Any = Field(None, exclude=True)
    deleted: Any = Field(None, exclude=True)


def check_dob(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        day = date.fromisoformat(value)
        if len(value) != 10:
            raise ValueError
    except ValueError:
        raise ValueError(f"{value[:64]!r} is not a date in YYYY-MM-DD form") from None
    if day > clock.today_utc():
        raise ValueError(f"{value} is in the future")
    return value


class PatientIn(_Writable):
    """A patient's writable fields, as a create or PUT body gives them."""

    name: str = Field(min_length=1, max_length=256)
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

    def routing_problem(self) -> tuple[str, str] | None:
        """(field, message) when the change cannot be routed at all."""
        if self.operation == "create" and self.client_temp_id is None:
            return "client_temp_id", "client_temp_id is required for create"
        if self.operation != "create" and self.server_id is None:
            return "server_id", f"server_id is required for {self.operation}"
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
