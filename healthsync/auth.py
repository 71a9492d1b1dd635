"""Tokens, roles and what each role may do.

A token is ``hs_`` + 32 random bytes (URL-safe base64), shown once when
created; only its SHA-256 is stored (a random 256-bit secret needs no slow
hash: there is nothing to brute-force).  Tokens are created and revoked
through storage (``create_token``, ``revoke_token``: its one write path).

Roles:
- ``device``: read patients and records, write them, sync (upload,
  download, websocket), trigger its own batches.  A device token's name is
  its device id: every ``device_id`` it names (upload, trigger, download,
  websocket) must be that one (``require_device``).
- ``dashboard``: read everything, resolve conflicts, watch the websocket.
- ``admin``: everything, including the audit trail.

``Permission`` names what a handler method needs; ``allowed`` is the one
table that maps roles to permissions.  Pure apart from the storage calls.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .errors import Forbidden, Invalid, NotFound, RateLimited, Unauthorized
from .storage import Storage

ROLES = ("device", "dashboard", "admin")
TOKEN_PREFIX = "hs_"


class Permission(StrEnum):
    READ = "read"  # patients, records, download, websocket, batches, conflicts
    WRITE = "write"  # create/update/delete patients and records
    SYNC = "sync"  # upload and trigger
    RESOLVE = "resolve"  # mark conflicts resolved
    OBSERVE = "observe"  # devices view
    ADMIN = "admin"  # audit trail


GRANTS: dict[str, frozenset[Permission]] = {
    "device": frozenset({Permission.READ, Permission.WRITE, Permission.SYNC}),
    "dashboard": frozenset({Permission.READ, Permission.RESOLVE, Permission.OBSERVE}),
    "admin": frozenset(Permission),
}


@dataclass(frozen=True)
class Principal:
    """Who is asking: a token's name and role, or ``open`` mode's anonymous caller."""

    name: str | None
    role: str

    @property
    def is_device(self) -> bool:
        return self.role == "device"


OPEN = Principal(None, "admin")  # open mode: the seed's AllowAny


def allowed(principal: Principal, permission: Permission) -> bool:
    return permission in GRANTS.get(principal.role, frozenset())


def require(principal: Principal, permission: Permission) -> None:
    if not allowed(principal, permission):
        raise Forbidden(
            f"a {principal.role} token may not do this (needs {permission.value})",
            [{"field": "Authorization", "message": f"role {principal.role} lacks {permission.value}"}],
        )


def require_device(principal: Principal, device_id: str, *, acts: bool = True) -> None:
    """The one device check: may ``principal`` name ``device_id``?

    A device token names only its own device, everywhere.  ``acts``: the
    request acts as that device (upload, trigger, a download that records the
    device's position): a dashboard may not, it only watches.  Otherwise (the
    websocket's batch events, a read-only view) dashboards and admins may
    name any device.  Admins (and open mode) may do both.
    """
    if principal.is_device and principal.name != device_id:
        raise Forbidden(
            f"this token belongs to device {principal.name!r}, not {device_id[:64]!r}",
            [{"field": "device_id", "message": "must be the token's own device"}],
        )
    if acts and principal.role == "dashboard":
        raise Forbidden(
            "a dashboard token watches devices; it may not act as one",
            [{"field": "device_id", "message": "only that device's token (or an admin) may act as it"}],
        )


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer …`` header, or None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized(
            "Authorization must be 'Bearer <token>'", [{"field": "Authorization", "message": "not a bearer token"}]
        )
    return value.strip()


class Tokens:
    """Tokens: created, revoked, listed and checked through storage (by hash only)."""

    def __init__(self, db: Storage) -> None:
        self.db = db

    async def create(self, name: str, role: str) -> str:
        """Create a token; the secret is returned once and never stored."""
        if role not in ROLES:
            raise Invalid(f"role must be one of {', '.join(ROLES)}", [{"field": "role", "message": role}])
        if not name or len(name) > 256 or not name.isprintable():
            raise Invalid("name must be 1 to 256 printable characters", [{"field": "name", "message": "bad name"}])
        token = new_token()
        await self.db.create_token(name, role, hash_token(token))
        return token

    async def revoke(self, name: str) -> int:
        count = await self.db.revoke_token(name)
        if not count:
            raise NotFound(f"no live token named {name!r}")
        return count

    async def list(self) -> list[dict[str, Any]]:
        return await self.db.list_tokens()

    async def authenticate(self, token: str | None) -> Principal:
        """The principal of a live token; ``Unauthorized`` otherwise."""
        if token is None:
            raise Unauthorized(
                "authentication required: send Authorization: Bearer <token>",
                [{"field": "Authorization", "message": "missing"}],
            )
        found = await self.db.find_token(hash_token(token))
        if found is None:
            raise Unauthorized("invalid or revoked token", [{"field": "Authorization", "message": "not a live token"}])
        return Principal(*found)


class RateLimiter:
    """Writes per key per minute (a token bucket per key, kept by storage); 0 turns it off.

    On PostgreSQL the buckets are shared by every process of the site, so the
    limit holds for the whole site; on SQLite the one process keeps them.
    """

    def __init__(self, per_minute: int, db: Storage) -> None:
        self.per_minute = per_minute
        self.db = db

    async def check(self, key: str) -> None:
        """``RateLimited`` (429, ``Retry-After``) past the limit; storage's 503 when it cannot be asked."""
        if self.per_minute <= 0:
            return
        wait = await self.db.take_rate_token(key, self.per_minute)
        if wait is not None:
            raise RateLimited(f"too many writes: at most {self.per_minute} a minute", wait)
