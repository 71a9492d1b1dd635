"""SQLite's backups: consistent copies of the live file, and putting one back.

``backup`` copies with ``VACUUM INTO`` from a read-only connection of its
own: one read transaction, so the copy is one consistent snapshot (a prefix
of ``seq``), and in WAL mode a reader never holds off the server's writers,
nor do their commits make it start over (as the stepped online backup API
did, which under non-stop uploads never finished; bench/bench_backup.py
measures both). The copy is a compact, self-contained file in rollback
journal mode, written under a temporary name, synced, checked with
``PRAGMA integrity_check`` and only then renamed to its final name, so a
crash never leaves a half file under that name. ``restore`` checks the file
the same way and refuses while a server or worker holds the data dir (an
exclusive lock on the database file is the test: any open connection in WAL
mode keeps it from being taken).  ``BackupOps`` gives ``Database`` both, run in
a thread (they block).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from ...errors import Conflict, Invalid


class _Opens(Protocol):
    path: Path

    @property
    def closed(self) -> bool: ...

    async def open(self) -> object: ...


class BackupOps:
    async def backup(self: _Opens, dest: Path) -> Path:
        """A consistent copy at ``dest`` (a file, or a folder that gets a timestamped
        file); a database not made yet is made first, so the copy is a valid one."""
        if not self.path.exists():
            await self.open()
        return await asyncio.to_thread(backup, self.path, dest)

    async def restore(self: _Opens, src: Path) -> None:
        """Replace this database's file by the backup ``src``: refused (``Conflict``)
        while any process has it open, ``Invalid`` for a file that fails its check."""
        await asyncio.to_thread(restore, src, self.path)


def integrity_ok(path: Path) -> bool:
    """Whether ``path`` is an SQLite database that passes ``PRAGMA integrity_check``."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return bool(conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok")
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return False


def backup(db_path: Path, dest: Path) -> Path:
    """Copy ``db_path`` to ``dest`` (a file, or a folder that gets a timestamped file)."""
    if not db_path.exists():
        raise Invalid(f"no database at {db_path}")
    if dest.is_dir() or str(dest).endswith("/"):
        dest.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        dest = dest / f"healthsync-{stamp}.db"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial")
    tmp.unlink(missing_ok=True)  # left by a copy that crashed: VACUUM INTO wants no file there
    try:
        src = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30, isolation_level=None)
        try:
            # One read transaction from start to end: a snapshot that the
            # server's commits neither restart nor wait for.
            src.execute("VACUUM INTO ?", (str(tmp),))
        finally:
            src.close()
        _fsync(tmp)  # VACUUM INTO does not sync its output
        if not integrity_ok(tmp):
            raise Conflict("the copy failed its integrity check; nothing was written")
        tmp.replace(dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(dest.parent)  # the rename itself survives a power cut
    return dest


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def in_use(db_path: Path) -> bool:
    """Whether another process has the database open (a server or a worker)."""
    if not db_path.exists():
        return False
    conn = sqlite3.connect(db_path, timeout=0, isolation_level=None)
    try:
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("ROLLBACK")
        # In WAL mode an exclusive lock is also refused while readers hold the
        # shared memory; a clean open with no other user succeeds.
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        conn.close()


def restore(src: Path, db_path: Path) -> None:
    """Replace the data dir's database by ``src`` (refused while it is in use)."""
    if not src.is_file():
        raise Invalid(f"no backup file at {src}")
    if not integrity_ok(src):
        raise Invalid(f"{src} fails PRAGMA integrity_check: not restoring it")
    if in_use(db_path):
        raise Conflict(f"{db_path} is in use by a running server or worker: stop it before restoring")
    db_path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("-wal", "-shm"):
        side = db_path.with_name(db_path.name + suffix)
        if side.exists():
            side.unlink()
    tmp = db_path.with_name(db_path.name + ".restoring")
    shutil.copyfile(src, tmp)
    tmp.replace(db_path)
