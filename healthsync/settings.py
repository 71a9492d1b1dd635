"""Every HealthSync setting, declared once: name, default, help.

Values come from, in rising order of precedence: the defaults below,
``HEALTHSYNC_<NAME>`` environment variables, then ``run.py`` flags.  They are
validated by pydantic, so a bad value stops the server at start with a message
that names the variable.  ``load()`` takes the environment as a mapping so
tests can inject one.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "HEALTHSYNC_"

LOOPBACK_CORS_ORIGINS = ["http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*"]


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names it."""


class Settings(BaseModel):
    """HealthSync's configuration.  Field descriptions are the help text."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on (0 picks a free one).")
    data_dir: Path = Field(Path("data"), description="Folder holding the database files.")
    auth: Literal["auto", "open", "token"] = Field(
        "auto",
        description="open: no credentials (the seed's AllowAny); token: bearer tokens; "
        "auto: open on a loopback address, token anywhere else.",
    )
    allow_open_network: bool = Field(
        False, description="Let --auth open serve on a non-loopback address (loudly logged)."
    )
    trust_proxy_headers: bool = Field(
        False,
        description="Behind a reverse proxy (nginx): take a client's address from X-Real-Ip / "
        "X-Forwarded-For, for the access log, the audit trail and the per-address rate limit. "
        "Only when the server listens where nothing but the proxy reaches it.",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed by CORS and the websocket, comma separated; '*' in a "
        "pattern matches anything.  Empty: local development origins in open mode on "
        "loopback, none otherwise.",
    )
    write_rate_limit: int = Field(
        0, ge=0, description="Writes per token (per address in open mode) per minute; 0 = no limit (429 past it)."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="text: one readable line per event; json: one JSON object per line (for log shippers)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL",
        description="SQLite synchronous pragma.  FULL survives a power cut; NORMAL is faster "
        "and may lose the last acknowledged writes on power loss (logged as a warning).",
    )
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 above).")
    max_batch_changes: int = Field(10_000, ge=1, description="Most changes in one sync upload.")
    page_limit_default: int = Field(1000, ge=1, description="Download page size when no limit is given.")
    page_limit_max: int = Field(10_000, ge=1, description="Largest limit a list or download accepts.")
    read_connections: int = Field(2, ge=1, le=32, description="SQLite read connections.")
    push_poll_seconds: float = Field(
        0.2, gt=0, le=10, description="How often the push hub looks for commits by other processes."
    )
    push_listen_poll_seconds: float = Field(
        5.0, gt=0, le=3600,
        description="On PostgreSQL, how often the push hub also looks for commits while it LISTENs "
        "(NOTIFY wakes it at once; this is the safety net).  While the LISTEN connection is down: push_poll_seconds.",
    )
    push_max_buffer_bytes: int = Field(
        1 << 20, ge=4096, description="Unsent bytes a websocket may hold before it is paused and caught up."
    )
    ws_ping_seconds: float = Field(30, gt=0, description="Websocket ping interval (keeps idle sockets alive).")
    ws_ping_timeout_seconds: float = Field(
        20, gt=0, description="A websocket that does not answer a ping this long is closed (at most ws_ping_seconds)."
    )
    embedded_worker: bool = Field(
        True, description="serve runs a Huey consumer in-process (--no-worker turns it off)."
    )
    worker_threads: int = Field(2, ge=1, le=32, description="Huey consumer threads (serve and worker).")
    worker_poll_seconds: float = Field(
        0.1, gt=0, le=5, description="How often an idle consumer looks for a new task."
    )
    batch_lease_seconds: float = Field(
        60, gt=0, description="A batch left processing this long by a dead worker is re-queued."
    )
    task_retries: int = Field(4, ge=0, le=20, description="Retries of a batch whose database was busy.")
    task_retry_delay: float = Field(
        0.5, ge=0, description="Seconds before the first retry; doubles on each further one."
    )
    busy_timeout_ms: int = Field(
        10_000, ge=0, description="How long a write waits for another process's write lock."
    )
    min_free_disk_bytes: int = Field(
        100 * 1024 * 1024,
        ge=0,
        description="Free space under data_dir below which /api/health reports degraded (still 200: reads "
        "go on; writes answer 507 only once the disk is actually full).  The default holds a few of the "
        "largest uploads (max_body_bytes each, stored about three times over: batch, rows, WAL).",
    )
    wal_checkpoint_pages: int = Field(
        1000,
        ge=0,
        description="WAL pages that start a background checkpoint after a commit; 0: SQLite checkpoints "
        "inside the commit that passes 1,000 pages.",
    )
    backup_keep: int = Field(
        7, ge=0, description="Daily backups kept in backup_dir (0 turns scheduled backups off)."
    )
    backup_hour: int = Field(2, ge=0, le=23, description="Hour of the day (UTC) of the scheduled backup.")
    backup_dir: Path | None = Field(None, description="Where scheduled backups go (default: <data_dir>/backups).")
    tombstone_retention_days: float = Field(
        365, gt=0, description="Deleted items are purged after this; older cursors must resync (410)."
    )
    batch_retention_days: float = Field(
        30, gt=0, description="Done batches and their stored payloads are purged after this."
    )
    database_url: str = Field(
        "",
        description="Where the data lives.  Empty: SQLite in data_dir (healthsync.db); "
        "postgresql://user:pass@host:port/db (or postgres://): PostgreSQL, shared by every server and worker of "
        "the site.",
    )
    queue_url: str = Field(
        "",
        description="Where the task queue lives.  Empty: the database's own (SQLite in data_dir (huey.db), or "
        "the PostgreSQL database of database_url); redis://[:password@]host:port/n (or rediss://): Redis; "
        "postgresql://…: another PostgreSQL database.  Shared by every server and worker of the site.",
    )
    queue_name: str = Field(
        "",
        description="Name of the site's queue (on Redis, keys huey.*.<name>; on PostgreSQL, the rows' queue "
        "column); the same on every process of one site, different for sites sharing a Redis or a queue "
        "database.  Empty: healthsync in the site's own PostgreSQL database, else "
        "healthsync-<hash of the absolute data_dir>.",
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("log_level", "synchronous", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        value = value.strip()
        if value and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be empty (SQLite in data_dir) or a postgresql:// URL")
        return value

    @field_validator("queue_url")
    @classmethod
    def _queue_url(cls, value: str) -> str:
        value = value.strip()
        if value and not value.startswith(("redis://", "rediss://", "postgresql://", "postgres://")):
            raise ValueError("must be empty (the database's own), a redis:// or rediss:// URL, "
                             "or a postgresql:// URL")
        return value

    @model_validator(mode="after")
    def _ping_timeout_within_interval(self) -> Settings:
        if self.ws_ping_timeout_seconds > self.ws_ping_seconds:
            raise ValueError("ws_ping_timeout_seconds must not exceed ws_ping_seconds")
        return self

    # Derived values -------------------------------------------------------

    @property
    def on_loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def auth_mode(self) -> Literal["open", "token"]:
        """The effective mode: ``auto`` resolved against the listen address."""
        if self.auth == "auto":
            return "open" if self.on_loopback else "token"
        return self.auth

    @property
    def effective_cors_origins(self) -> list[str]:
        if self.cors_origins:
            return list(self.cors_origins)
        if self.auth_mode == "open" and self.on_loopback:
            return list(LOOPBACK_CORS_ORIGINS)
        return []

    @property
    def effective_backup_dir(self) -> Path:
        return self.backup_dir if self.backup_dir is not None else self.data_dir / "backups"

    @property
    def on_postgres(self) -> bool:
        return bool(self.database_url)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "healthsync.db"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def load(environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> Settings:
    """Build ``Settings`` from an environment mapping and flag overrides.

    Raises ``SettingsError`` naming the variable or flag when a value is bad.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    source: dict[str, str] = {}
    for name in Settings.model_fields:
        key = env_name(name)
        if key in environ:
            values[name] = environ[key]
            source[name] = key
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
            source[name] = "--" + name.replace("_", "-")
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            name = str(err["loc"][0]) if err["loc"] else "?"
            problems.append(f"{source.get(name, name)}: {err['msg']}")
        raise SettingsError("bad setting: " + "; ".join(problems)) from None


def describe() -> list[tuple[str, Any, str]]:
    """(name, default, help) of every setting, for docs and ``--help``."""
    out = []
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        out.append((name, default, field.description or ""))
    return out
