"""``run.py copy-data SOURCE TARGET``: a whole HealthSync database from one
backend to the other (a SQLite data dir, a ``postgresql://`` URL), everything kept.

What is copied: every table of the data (patients, records and their
tombstones, conflicts, batches with their stored requests and responses,
temp-id maps, devices and their cursors, tokens, audit) and the clock row
(``seq``, the last ``updated_at``, the purge horizon), with the page keys
(SQLite's ``rowid``, PostgreSQL's ``pk``) and the tokens' and audit rows' ids.
Devices' cursors and ``since`` stay valid, a retried batch gets its stored
answer, a retried create its first server id, and new writes continue after
the old head.  Huey's queue is not data: a batch's truth is its row (a
``pending`` batch is triggered again on the new site, one left
``processing`` is re-queued by the lease).

No value changes form: the PostgreSQL schema stores what SQLite stores
(timestamps as canonical UTC text, JSON documents as the text written,
flags as 0/1), so each value is only normalised to its column's kind (an
integer or a text) on the way.

Safety, in order:
- the source is read in one snapshot (SQLite: one read transaction on a
  read-only connection; PostgreSQL: one ``REPEATABLE READ READ ONLY``
  transaction) and never written; a SQLite data dir in use by a server or
  worker is refused (changes made after the snapshot would be left behind);
- the target is migrated if new, then written in one transaction that first
  takes its write lock (SQLite ``BEGIN IMMEDIATE``, PostgreSQL the clock row
  ``FOR UPDATE``), in which it must be empty (refused otherwise); rows go in
  bulk (``COPY`` on PostgreSQL, ``executemany`` on SQLite);
- before the commit, each table's row count and a checksum of its content
  (rows in a backend-neutral order, values normalised) are compared with the
  source's; any difference, or any error, rolls the transaction back, so a
  failed copy leaves the target as empty as it was.

This module holds what is copied and how it is checked; ``copy_sides`` the
two ends (SQLite, PostgreSQL).  Blocking code (``sqlite3`` and psycopg's sync
connection): the command runs alone, not on the server's event loop.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import HealthSyncError
from .copy_tables import CHUNK, CLOCK, TABLES, CopyFailed, CopyRefused, Table, is_url, redact

if TYPE_CHECKING:
    from .copy_sides import Side, Target

__all__ = ["CopyFailed", "CopyRefused", "Report", "copy_data", "redact"]


def normalise(table: Table, row: Iterable[Any]) -> tuple[Any, ...]:
    """``row`` with each value in its column's kind: int, str or None.

    SQLite stores a value of another type when it cannot convert it (a text
    in an integer column, a blob anywhere): such a row is not copied into a
    different form silently, it stops the copy (``CopyFailed``, naming it).
    """
    out = []
    for c, v in zip(table.columns, row, strict=True):
        if v is None or (type(v) is int if c in table.ints else type(v) is str):
            out.append(v)
        elif c in table.ints and isinstance(v, float) and v.is_integer():
            out.append(int(v))
        else:
            kind = "an integer" if c in table.ints else "a text"
            raise CopyFailed(f"{table.name}: column {c} holds {str(v)[:60]!r}, not {kind}")
    return tuple(out)


class Checksum:
    """A row count and a SHA-256 over the rows (normalised, in the table's order)."""

    def __init__(self) -> None:
        self.count = 0
        self._hash = hashlib.sha256()

    def add(self, row: tuple[Any, ...]) -> None:
        self.count += 1
        self._hash.update(orjson.dumps(row))
        self._hash.update(b"\n")

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()


# The copy -----------------------------------------------------------------------------------


@dataclass
class Report:
    """What was copied and checked: per table (rows, checksum), and the clock row."""

    tables: dict[str, tuple[int, str]] = field(default_factory=dict)
    clock: tuple[Any, ...] = ()
    warnings: list[str] = field(default_factory=list)


def copy_data(source: str, target: str, progress: Callable[[str], None] = lambda _: None) -> Report:
    """Copy everything from ``source`` into the empty ``target`` (each a SQLite data
    dir or a ``postgresql://`` URL) and check it; the report of what was copied.

    ``CopyRefused``: a source that is not a HealthSync database at this schema,
    a data dir in use, a target not empty, the same place twice.  ``CopyFailed``:
    unreachable, an error while copying, or a check that did not match; the
    target's transaction is rolled back, so it is left as empty as it was.
    """
    if _same(source, target):
        raise CopyRefused("the source and the target are the same place")
    from .copy_sides import open_side

    report = Report()
    src = open_side(source, write=False)
    try:
        if src.others:
            report.warnings.append(
                f"{src.label} has {src.others} other connection(s): if a server still writes to it, what it"
                " writes from now on is not copied (stop the servers first)"
            )
        tgt = open_side(target, write=True)
        try:
            _refuse_unless_empty(tgt)
            if tgt.others:
                report.warnings.append(f"{tgt.label} has {tgt.others} other connection(s); they wait for the copy")
            for message in report.warnings:
                progress(f"warning: {message}")
            sums = _copy_tables(src, tgt, progress)
            report.clock = tuple(normalise(CLOCK, src.clock()))
            tgt.set_clock(report.clock)
            tgt.finish()
            _check(tgt, sums, report, progress)
            tgt.commit()
        except CopyRefused:
            raise
        except Exception as exc:
            why = exc.message if isinstance(exc, HealthSyncError) else _first_line(exc)
            raise CopyFailed(f"the copy into {tgt.label} failed and was undone (the target is left empty): "
                             f"{why}") from exc
        finally:
            tgt.close()
    finally:
        src.close()
    return report


def _same(source: str, target: str) -> bool:
    if is_url(source) or is_url(target):
        return source == target
    return Path(source).resolve() == Path(target).resolve()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _refuse_unless_empty(tgt: Target) -> None:
    """Inside the target's write transaction: no row in any table, and the clock at 0."""
    filled = [f"{t.name} ({n})" for t in TABLES if (n := tgt.count(t))]
    if filled or int(tgt.clock()[0]) != 0:
        raise CopyRefused(
            f"the target {tgt.label} is not empty ({', '.join(filled) or 'its clock has moved'}):"
            " copy-data only fills a new or freshly migrated database; nothing was changed"
        )


def _copy_tables(src: Side, tgt: Target, progress: Callable[[str], None]) -> dict[str, Checksum]:
    sums: dict[str, Checksum] = {}
    for table in TABLES:
        total = src.count(table)
        checksum = sums[table.name] = Checksum()
        chunk: list[tuple[Any, ...]] = []
        for raw in src.rows(table):
            row = normalise(table, raw)
            checksum.add(row)
            chunk.append(row)
            if len(chunk) >= CHUNK:
                tgt.insert(table, chunk)
                chunk = []
                progress(f"{table.name}: {checksum.count}/{total} rows")
        if chunk:
            tgt.insert(table, chunk)
        progress(f"{table.name}: {checksum.count}/{total} rows copied")
        if checksum.count != total:  # cannot happen in one snapshot: say so loudly if it does
            raise CopyFailed(f"{table.name}: read {checksum.count} rows of {total} counted")
    return sums


def _check(tgt: Target, sums: dict[str, Checksum], report: Report, progress: Callable[[str], None]) -> None:
    """Read the target back (inside its transaction, before the commit) and compare."""
    bad: list[str] = []
    for table in TABLES:
        again = Checksum()
        for raw in tgt.rows(table):
            again.add(normalise(table, raw))
        want = sums[table.name]
        if (again.count, again.digest) != (want.count, want.digest):
            bad.append(f"{table.name} (source {want.count} rows, target {again.count}, checksums "
                       f"{want.digest[:12]} / {again.digest[:12]})")
        report.tables[table.name] = (want.count, want.digest)
    if normalise(CLOCK, tgt.clock()) != report.clock:
        bad.append("clock")
    if bad:
        raise CopyFailed("the check found differences: " + "; ".join(bad))
    progress("checked: " + ", ".join(f"{name} {n}" for name, (n, _) in report.tables.items())
             + f"; clock seq {report.clock[0]}")
