"""Schema migrations on PostgreSQL, in order, recorded in ``schema_version``.

All of them run in one transaction under ``pg_advisory_xact_lock``, so
several processes starting at once apply each step once; a crash leaves the
database before or after, never half-way.  Steps are append-only.  A schema
newer than this code is refused (``SchemaTooNew``).

The tables are SQLite's at its latest step, with PostgreSQL's types:
- ids and other strings ``text``; timestamps canonical UTC text
  (``clock.format_us``) with ``COLLATE "C"`` so they order bytewise, as
  instants and as on SQLite;
- JSON documents ``text``, exactly as written, so reads splice them into
  entries without parsing or re-encoding;
- flags (``deleted``, ``resolved``) ``smallint`` 0/1, as the row shapes give them;
- ``pk``, a ``bigint`` identity, is the page key SQLite's ``rowid`` is.
The clock row also counts commits (``commits``): the commit signal.
``rate_buckets`` (unlogged) holds the write rate limit's buckets, one row
per token, shared by every process.
"""

from __future__ import annotations

import logging

from psycopg import AsyncConnection

from ...errors import SchemaTooNew

log = logging.getLogger("healthsync.storage")

#: Any constant both this code and a second process agree on.
ADVISORY_LOCK = 0x4853_594E_4331  # "HSYNC1"

_TS = 'text COLLATE "C"'

MIGRATIONS: list[tuple[str, list[str]]] = [
    (
        "everything SQLite has at its schema 9",
        [
            f"""CREATE TABLE clock (
                id integer PRIMARY KEY CHECK (id = 1),
                seq bigint NOT NULL,
                last_us bigint NOT NULL,
                commits bigint NOT NULL DEFAULT 0,
                purged_seq bigint NOT NULL DEFAULT 0,
                purged_at {_TS} NOT NULL DEFAULT '1970-01-01T00:00:00.000000Z'
            )""",
            "INSERT INTO clock (id, seq, last_us) VALUES (1, 0, 0)",
            f"""CREATE TABLE patients (
                pk bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
                id text COLLATE "C" PRIMARY KEY,
                owner text,
                name text NOT NULL,
                dob text,
                identifiers text NOT NULL DEFAULT '{{}}',
                fhir text,
                server_version integer NOT NULL,
                updated_at {_TS} NOT NULL UNIQUE,
                seq bigint NOT NULL UNIQUE,
                deleted smallint NOT NULL DEFAULT 0,
                created_at {_TS} NOT NULL
            )""",
            f"""CREATE TABLE records (
                pk bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
                id text COLLATE "C" PRIMARY KEY,
                patient text COLLATE "C" NOT NULL REFERENCES patients (id),
                resource_type text NOT NULL,
                data text NOT NULL DEFAULT '{{}}',
                server_version integer NOT NULL,
                updated_at {_TS} NOT NULL UNIQUE,
                seq bigint NOT NULL UNIQUE,
                deleted smallint NOT NULL DEFAULT 0,
                created_at {_TS} NOT NULL
            )""",
            "CREATE INDEX records_patient ON records (patient, seq)",
            "CREATE INDEX records_resource_type ON records (resource_type, seq)",
            "CREATE INDEX patients_tombstones ON patients (deleted, updated_at)",
            "CREATE INDEX records_tombstones ON records (deleted, updated_at)",
            f"""CREATE TABLE batches (
                pk bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
                id text PRIMARY KEY,
                device_id text NOT NULL,
                status text NOT NULL,
                change_count integer NOT NULL,
                request text,
                response text,
                error text,
                attempts integer NOT NULL DEFAULT 0,
                task_id text,
                created_at {_TS} NOT NULL,
                claimed_at {_TS},
                finished_at {_TS},
                updated_at {_TS} NOT NULL,
                worker text,
                heartbeat_at {_TS}
            )""",
            "CREATE INDEX batches_device ON batches (device_id, created_at)",
            "CREATE INDEX batches_status ON batches (status, claimed_at)",
            "CREATE INDEX batches_updated_at ON batches (updated_at)",
            """CREATE TABLE temp_ids (
                device_id text NOT NULL,
                client_temp_id text NOT NULL,
                server_id text NOT NULL,
                resource_type text NOT NULL,
                PRIMARY KEY (device_id, client_temp_id)
            )""",
            f"""CREATE TABLE conflicts (
                pk bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
                id text PRIMARY KEY,
                batch_id text,
                device_id text NOT NULL,
                server_id text NOT NULL,
                resource_type text NOT NULL,
                reason text NOT NULL,
                change text NOT NULL,
                server_copy text,
                created_at {_TS} NOT NULL,
                resolved smallint NOT NULL DEFAULT 0,
                resolved_at {_TS},
                resolution text
            )""",
            "CREATE INDEX conflicts_device ON conflicts (device_id, created_at)",
            "CREATE INDEX conflicts_open ON conflicts (resolved, created_at)",
            f"""CREATE TABLE devices (
                device_id text PRIMARY KEY,
                first_seen {_TS} NOT NULL,
                last_seen {_TS} NOT NULL,
                last_upload_at {_TS},
                last_download_at {_TS},
                last_cursor bigint
            )""",
            f"""CREATE TABLE tokens (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                name text NOT NULL,
                role text NOT NULL,
                hash text NOT NULL UNIQUE,
                created_at {_TS} NOT NULL,
                revoked_at {_TS}
            )""",
            "CREATE INDEX tokens_name ON tokens (name)",
            f"""CREATE TABLE audit (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                at {_TS} NOT NULL,
                who text,
                role text,
                method text NOT NULL,
                path text NOT NULL,
                query text,
                status integer NOT NULL,
                remote_ip text
            )""",
            "CREATE INDEX audit_at ON audit (at)",
            "CREATE INDEX audit_who ON audit (who, at)",
            """CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN RAISE EXCEPTION 'the audit trail is append-only'; END $$""",
            """CREATE TRIGGER audit_append_only BEFORE UPDATE ON audit
               FOR EACH ROW EXECUTE FUNCTION audit_append_only()""",
        ],
    ),
    (
        "write rate limit buckets shared by every process",
        [
            # Unlogged: a bucket is full again within a minute, so losing them
            # in a crash (or on a standby) forgets nothing worth keeping, and
            # no write-ahead log is written for every request.
            """CREATE UNLOGGED TABLE rate_buckets (
                key text PRIMARY KEY,
                tokens double precision NOT NULL,
                at double precision NOT NULL,
                taken boolean NOT NULL
            )""",
        ],
    ),
    (
        "ids made on the device: the device and client_temp_id that created each item (SQLite's step 10)",
        [
            "ALTER TABLE patients ADD COLUMN created_by_device text, ADD COLUMN created_temp_id text",
            "ALTER TABLE records ADD COLUMN created_by_device text, ADD COLUMN created_temp_id text",
        ],
    ),
]

LATEST = len(MIGRATIONS)


async def migrate(conn: AsyncConnection, target: int = LATEST) -> int:
    """Apply pending steps up to ``target`` under the advisory lock; the version reached."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK,))
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        cur = await conn.execute("SELECT version FROM schema_version")
        row = await cur.fetchone()
        if row is None:
            await conn.execute("INSERT INTO schema_version (version) VALUES (0)")
            current = 0
        else:
            current = int(row[0])
        if current > LATEST:
            raise SchemaTooNew(
                f"database schema version {current} is newer than this HealthSync "
                f"understands ({LATEST}); upgrade HealthSync"
            )
        while current < target:
            name, statements = MIGRATIONS[current]
            for statement in statements:
                await conn.execute(statement)  # type: ignore[arg-type]
            current += 1
            log.info("migrated database to schema %d (%s)", current, name)
        await conn.execute("UPDATE schema_version SET version = %s", (current,))
    return current
