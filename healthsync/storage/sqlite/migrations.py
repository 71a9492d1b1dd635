"""Schema migrations, in order, keyed by ``PRAGMA user_version``.

Each step runs in its own ``BEGIN IMMEDIATE`` transaction together with the
``user_version`` bump that records it, so a crash leaves the file either
before or after the step, never half-way.  Steps are append-only: never edit
one that has shipped, add the next.  A file newer than this code refuses to
open rather than be written by software that does not understand it.
"""

from __future__ import annotations

import logging

import aiosqlite

from ...errors import SchemaTooNew

__all__ = ["LATEST", "MIGRATIONS", "SchemaTooNew", "migrate"]

log = logging.getLogger("healthsync.storage")


#: (name, script): a script is statements separated by ';' (none inside a
#: literal), or a list of statements when one needs a ';' of its own.
MIGRATIONS: list[tuple[str, str | list[str]]] = [
    (
        "core: clock, patients, records",
        """
        CREATE TABLE clock (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            seq INTEGER NOT NULL,
            last_us INTEGER NOT NULL
        );
        INSERT INTO clock (id, seq, last_us) VALUES (1, 0, 0);
        CREATE TABLE patients (
            id TEXT PRIMARY KEY,
            owner TEXT,
            name TEXT NOT NULL,
            dob TEXT,
            identifiers TEXT NOT NULL DEFAULT '{}',
            fhir TEXT,
            server_version INTEGER NOT NULL,
            updated_at TEXT NOT NULL,
            seq INTEGER NOT NULL,
            deleted INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL
        );
        CREATE UNIQUE INDEX patients_seq ON patients (seq);
        CREATE UNIQUE INDEX patients_updated_at ON patients (updated_at);
        CREATE TABLE records (
            id TEXT PRIMARY KEY,
            patient TEXT NOT NULL REFERENCES patients (id),
            resource_type TEXT NOT NULL,
            data TEXT NOT NULL DEFAULT '{}',
            server_version INTEGER NOT NULL,
            updated_at TEXT NOT NULL,
            seq INTEGER NOT NULL,
            deleted INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL
        );
        CREATE UNIQUE INDEX records_seq ON records (seq);
        CREATE UNIQUE INDEX records_updated_at ON records (updated_at);
        CREATE INDEX records_patient ON records (patient, seq);
        CREATE INDEX records_resource_type ON records (resource_type, seq)
        """,
    ),
    (
        "sync: batches, temp ids, conflicts",
        """
        CREATE TABLE batches (
            id TEXT PRIMARY KEY,
            device_id TEXT NOT NULL,
            status TEXT NOT NULL,
            change_count INTEGER NOT NULL,
            request TEXT,
            response TEXT,
            error TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            task_id TEXT,
            created_at TEXT NOT NULL,
            claimed_at TEXT,
            finished_at TEXT,
            updated_at TEXT NOT NULL
        );
        CREATE INDEX batches_device ON batches (device_id, created_at);
        CREATE INDEX batches_status ON batches (status, claimed_at);
        CREATE TABLE temp_ids (
            device_id TEXT NOT NULL,
            client_temp_id TEXT NOT NULL,
            server_id TEXT NOT NULL,
            resource_type TEXT NOT NULL,
            PRIMARY KEY (device_id, client_temp_id)
        ) WITHOUT ROWID;
        CREATE TABLE conflicts (
            id TEXT PRIMARY KEY,
            batch_id TEXT,
            device_id TEXT NOT NULL,
            server_id TEXT NOT NULL,
            resource_type TEXT NOT NULL,
            reason TEXT NOT NULL,
            change TEXT NOT NULL,
            server_copy TEXT,
            created_at TEXT NOT NULL,
            resolved INTEGER NOT NULL DEFAULT 0,
            resolved_at TEXT,
            resolution TEXT
        );
        CREATE INDEX conflicts_device ON conflicts (device_id, created_at);
        CREATE INDEX conflicts_open ON conflicts (resolved, created_at)
        """,
    ),
    (
        "push: batch status changes by time",
        """
        CREATE INDEX batches_updated_at ON batches (updated_at)
        """,
    ),
    (
        "devices: what each device last uploaded and downloaded",
        """
        CREATE TABLE devices (
            device_id TEXT PRIMARY KEY,
            first_seen TEXT NOT NULL,
            last_seen TEXT NOT NULL,
            last_upload_at TEXT,
            last_download_at TEXT,
            last_cursor INTEGER
        );
        INSERT INTO devices (device_id, first_seen, last_seen, last_upload_at)
            SELECT device_id, min(created_at), max(created_at), max(created_at) FROM batches GROUP BY device_id
        """,
    ),
    (
        "security: tokens and the audit trail",
        [
            """CREATE TABLE tokens (
                id INTEGER PRIMARY KEY,
                name TEXT NOT NULL,
                role TEXT NOT NULL,
                hash TEXT NOT NULL UNIQUE,
                created_at TEXT NOT NULL,
                revoked_at TEXT
            )""",
            "CREATE INDEX tokens_name ON tokens (name)",
            """CREATE TABLE audit (
                id INTEGER PRIMARY KEY,
                at TEXT NOT NULL,
                who TEXT,
                role TEXT,
                method TEXT NOT NULL,
                path TEXT NOT NULL,
                query TEXT,
                status INTEGER NOT NULL,
                remote_ip TEXT
            )""",
            "CREATE INDEX audit_at ON audit (at)",
            "CREATE INDEX audit_who ON audit (who, at)",
            """CREATE TRIGGER audit_append_only BEFORE UPDATE ON audit
               BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END""",
        ],
    ),
    (
        "purge: the horizon below which tombstones may be gone",
        """
        ALTER TABLE clock ADD COLUMN purged_seq INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE clock ADD COLUMN purged_at TEXT NOT NULL DEFAULT '1970-01-01T00:00:00.000000Z';
        CREATE INDEX patients_tombstones ON patients (deleted, updated_at);
        CREATE INDEX records_tombstones ON records (deleted, updated_at)
        """,
    ),
    (
        "temp ids: written after the batch's commit, from a batch marked until then",
        """
        ALTER TABLE batches ADD COLUMN temp_pending INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX batches_temp_pending ON batches (device_id) WHERE temp_pending = 1
        """,
    ),
    (
        "batches: the worker process running a claim, and its heartbeat",
        """
        ALTER TABLE batches ADD COLUMN worker TEXT;
        ALTER TABLE batches ADD COLUMN heartbeat_at TEXT
        """,
    ),
    (
        "temp ids: written in the upload's transaction; those a marked batch still owes, from its response",
        [
            # Each result ``created`` of a batch's stored response names its
            # item's server_id; a mapping already there (a retry) is kept, and
            # an item no longer there (purged) is skipped.
            """
            INSERT OR IGNORE INTO temp_ids (device_id, client_temp_id, server_id, resource_type)
            SELECT device_id, temp_id, server_id, kind FROM (
                SELECT device_id, temp_id, server_id,
                       coalesce((SELECT 'Patient' FROM patients WHERE id = server_id),
                                (SELECT resource_type FROM records WHERE id = server_id)) AS kind
                FROM (
                    SELECT b.device_id, json_extract(r.value, '$.client_temp_id') AS temp_id,
                           json_extract(r.value, '$.server_id') AS server_id
                    FROM batches AS b, json_each(b.response, '$.results') AS r
                    WHERE b.temp_pending = 1 AND json_extract(r.value, '$.status') = 'created'
                )
            )
            WHERE kind IS NOT NULL
            """,
            "DROP INDEX batches_temp_pending",
            "ALTER TABLE batches DROP COLUMN temp_pending",
        ],
    ),
    (
        "ids made on the device: the device and client_temp_id that created each item",
        # NULL for items made before this step and for REST creates.
        """
        ALTER TABLE patients ADD COLUMN created_by_device TEXT;
        ALTER TABLE patients ADD COLUMN created_temp_id TEXT;
        ALTER TABLE records ADD COLUMN created_by_device TEXT;
        ALTER TABLE records ADD COLUMN created_temp_id TEXT
        """,
    ),
]

LATEST = len(MIGRATIONS)


def statements(script: str | list[str]) -> list[str]:
    """A migration's statements: a list as given, a string split on ';'."""
    if isinstance(script, list):
        return script
    return [s.strip() for s in script.split(";") if s.strip()]


async def migrate(conn: aiosqlite.Connection, target: int = LATEST) -> int:
    """Apply pending steps up to ``target``; return the schema version reached."""
    row = await (await conn.execute("PRAGMA user_version")).fetchone()
    current = row[0] if row else 0
    if current > LATEST:
        raise SchemaTooNew(
            f"database schema version {current} is newer than this HealthSync "
            f"understands ({LATEST}); upgrade HealthSync"
        )
    while current < target:
        await conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated.
            row = await (await conn.execute("PRAGMA user_version")).fetchone()
            current = row[0] if row else 0
            if current >= target:
                await conn.execute("COMMIT")
                break
            version = current + 1
            name, script = MIGRATIONS[version - 1]
            for statement in statements(script):
                await conn.execute(statement)
            await conn.execute(f"PRAGMA user_version = {version}")
            await conn.execute("COMMIT")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise
        log.info("migrated database to schema %d (%s)", version, name)
        current = version
    return current
