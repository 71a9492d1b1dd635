"""The PostgreSQL implementation of ``storage.interface.Storage`` (psycopg 3, async).

``database`` owns the connection pool, the write path (the clock row locked
first), snapshot reads, the commit signal, tokens, audit, batches and the
driver's faults as domain errors; ``tx`` the write transaction with the named
writes; ``snapshot`` the read snapshot with the named reads; ``schema`` the
migrations, under an advisory lock.  ``make_storage`` chooses it when
``database_url`` names a PostgreSQL.
"""

from .database import BackupsArePostgres, PostgresDatabase

__all__ = ["BackupsArePostgres", "PostgresDatabase"]
