"""The SQLite backend: one file in WAL mode.  See ``database.Database``."""

from .database import Database, machine_fault

__all__ = ["Database", "machine_fault"]
