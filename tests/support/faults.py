"""Faults of the machine, made for real: another process holding an SQLite file's lock
(or another session holding PostgreSQL's clock row), a full disk."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

_HOLD_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
if sys.argv[2] == "exclusive":
    conn.execute("PRAGMA locking_mode = EXCLUSIVE")  # readers too are shut out (no WAL index)
conn.execute("BEGIN IMMEDIATE")
conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
conn.close()
"""


class LockHolder:
    """A separate Python process holding an SQLite file's write lock (``BEGIN IMMEDIATE``)
    until ``release()``; ``exclusive=True`` also shuts out readers (``locking_mode =
    EXCLUSIVE``, possible only while no other connection has the file open)."""

    def __init__(self, path: Path, *, exclusive: bool = False) -> None:
        self.path = path
        self.mode = "exclusive" if exclusive else "immediate"
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> LockHolder:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _HOLD_LOCK, str(self.path), self.mode],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "locked":
            self.proc.kill()
            _, err = self.proc.communicate()
            raise RuntimeError(f"could not lock {self.path}: {err}")
        return self

    def release(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        assert proc.stdin is not None
        try:
            proc.stdin.write("\n")
            proc.stdin.flush()
        except BrokenPipeError:
            pass
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()

    def __exit__(self, *exc: object) -> None:
        self.release()


class ClockRowHolder:
    """Another PostgreSQL session holding the clock row (``FOR UPDATE``, the lock every
    HealthSync write takes first, in every process) until ``release()``: PostgreSQL's
    twin of ``LockHolder``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: Any = None

    def __enter__(self) -> ClockRowHolder:
        import psycopg

        self.conn = psycopg.connect(self.url, connect_timeout=5)  # not autocommit: the transaction stays open
        self.conn.execute("SELECT seq FROM clock WHERE id = 1 FOR UPDATE")
        return self

    def release(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.rollback()
            conn.close()

    def __exit__(self, *exc: object) -> None:
        self.release()


def write_lock_holder(settings: Any) -> LockHolder | ClockRowHolder:
    """What holds the write lock of the database ``settings`` name, on its backend."""
    return ClockRowHolder(settings.database_url) if settings.database_url else LockHolder(settings.db_path)


def fill_disk(folder: Path) -> Path:
    """Fill the file system under ``folder`` to the last byte; the filler's path."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        size = 1 << 20
        while size:
            try:
                os.write(fd, b"\0" * size)
            except OSError:
                size //= 2  # down to the last byte
    finally:
        os.close(fd)
    return filler
