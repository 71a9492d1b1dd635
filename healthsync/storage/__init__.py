"""Storage: the only package that speaks SQL.  See ``db.Database``."""

from .db import CommitInfo, Database, DatabaseClosed, WriteTx

__all__ = ["CommitInfo", "Database", "DatabaseClosed", "WriteTx"]
