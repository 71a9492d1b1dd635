"""Backup benchmark: ways of copying a live database while devices upload non-stop.

Run by hand (never in CI), from the repository root:

    .venv/bin/python bench/bench_backup.py                 # 150 MB, about 3 minutes
    .venv/bin/python bench/bench_backup.py --size-mb 300 --methods onestep,vacuum

It fills a database of the given size with the server's schema (raw inserts,
not timed), starts a real ``run.py`` server on it, and keeps one device
uploading 200 creates every 0.2 s (``--period``; 0 is back to back). While it
uploads, each method copies the database in a subprocess of its own:

- ``steps``: the online backup API in steps of 1,024 pages (what ``run.py
  backup`` did until then); every commit by the server restarts it.
- ``onestep``: the online backup API in one step (``pages=-1``).
- ``vacuum``: ``VACUUM INTO``.
- ``command``: what ``run.py backup`` does (``healthsync.storage.sqlite.backup.backup``:
  ``VACUUM INTO``, fsync, ``integrity_check``, rename).

For each it prints the time to finish (or the time given up after), the
restarts seen, the copy's size, whether the copy passes ``integrity_check``
and holds exactly a prefix of ``seq`` (every row up to its clock's head and
none above), and the upload latencies while it ran, next to those of a quiet
window of the same length before it. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Server, Stamps, baseline_db, machine, median, new_id, patient_payloads  # noqa: E402

METHODS = ("steps", "onestep", "vacuum", "command")
DEVICE = "bench-backup-tablet"
UPLOAD_CHANGES = 200


# One copy, in a process of its own -------------------------------------------------


def copy_once(method: str, src: Path, dest: Path, give_up_s: float) -> dict[str, Any]:
    """Copy ``src`` to ``dest`` with ``method``; runs in the child process."""
    started = time.monotonic()
    restarts = 0
    finished = True
    if method == "command":
        from healthsync.storage.sqlite.backup import backup

        backup(src, dest)
        return {"method": method, "finished": True, "copy_s": time.monotonic() - started, "restarts": 0}
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=30, isolation_level=None)
    if method == "vacuum":
        source.execute("VACUUM INTO ?", (str(dest),))
    else:
        out = sqlite3.connect(dest)
        last = [None]

        def progress(status: int, remaining: int, total: int) -> None:
            nonlocal restarts
            if last[0] is not None and remaining > last[0]:
                restarts += 1
            last[0] = remaining
            if time.monotonic() - started > give_up_s:
                raise TimeoutError  # aborts the backup

        try:
            source.backup(out, pages=1024 if method == "steps" else -1, progress=progress)
        except TimeoutError:
            finished = False
        out.close()
    copy_s = time.monotonic() - started
    source.close()
    return {"method": method, "finished": finished, "copy_s": copy_s, "restarts": restarts}


# The load -------------------------------------------------------------------------------


class Uploader(threading.Thread):
    """One device uploading ``UPLOAD_CHANGES`` creates every ``period`` seconds."""

    def __init__(self, server: Server, period: float) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.period = period
        self.stop = threading.Event()
        self.samples: list[tuple[float, float, int]] = []  # (start, seconds, status)

    def run(self) -> None:
        client = self.server.client()
        n = 0
        while not self.stop.is_set():
            changes = [
                {"operation": "create", "resource_type": "Patient", "client_temp_id": f"u{n}-{i}", "payload": p}
                for i, p in enumerate(patient_payloads(UPLOAD_CHANGES, seed=n, start=n * UPLOAD_CHANGES))
            ]
            body = orjson.dumps({"device_id": DEVICE, "changes": changes})
            t0 = time.monotonic()
            status, _ = client.post("/api/sync/upload/", body)
            spent = time.monotonic() - t0
            self.samples.append((t0, spent, status))
            n += 1
            self.stop.wait(max(0.0, self.period - spent))
        client.close()

    def window(self, start: float, end: float) -> list[tuple[float, int]]:
        """Latency and status of the uploads that overlapped [start, end]."""
        return [(s, st) for t0, s, st in list(self.samples) if t0 <= end and t0 + s >= start]


# The database ---------------------------------------------------------------------------


def fill(db_path: Path, size_mb: int) -> int:
    """Patients with a ~1.5 KB FHIR document each until the file holds ``size_mb``."""
    conn = baseline_db(db_path)
    stamps = Stamps()
    fhir = orjson.dumps({"resourceType": "Patient", "text": {"div": "x" * 1400}}).decode()
    per_batch = 5_000
    start = 0
    while db_path.stat().st_size + _wal_size(db_path) < size_mb * 1_000_000:
        rows = []
        for p in patient_payloads(per_batch, seed=start, start=start):
            seq, at = stamps.next()
            rows.append((new_id(), None, p["name"], p["dob"], orjson.dumps(p["identifiers"]).decode(), fhir, 1,
                         at, 0, seq, at))
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO patients (id, owner, name, dob, identifiers, fhir, server_version, updated_at,"
            " deleted, seq, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.execute("UPDATE clock SET seq = ?, last_us = ? WHERE id = 1", (stamps.seq, stamps.last_us))
        conn.execute("COMMIT")
        start += per_batch
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return stamps.seq


def _wal_size(db_path: Path) -> int:
    wal = db_path.with_name(db_path.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def check_copy(copy: Path, live: Path) -> dict[str, Any]:
    """integrity_check, and exactly the live rows with seq <= the copy's head (creates only)."""
    conn = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
    ok = conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    (head,) = conn.execute("SELECT seq FROM clock").fetchone()
    (count, top) = conn.execute("SELECT count(*), max(seq) FROM patients").fetchone()
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    with open(copy, "rb") as f:
        header = f.read(20)
    live_conn = sqlite3.connect(f"file:{live}?mode=ro", uri=True)
    (live_count,) = live_conn.execute("SELECT count(*) FROM patients WHERE seq <= ?", (head,)).fetchone()
    live_conn.close()
    prefix = count == head == top == live_count
    return {"integrity": ok, "head": head, "prefix": prefix, "journal_mode": mode,
            "wal_header": header[18] == 2, "size_mb": copy.stat().st_size / 1e6}


# Main -----------------------------------------------------------------------------------


def ms_stats(latencies: list[float]) -> str:
    if not latencies:
        return "none"
    s = sorted(latencies)
    p99 = s[min(len(s) - 1, int(len(s) * 0.99))]
    return f"n={len(s)} p50={median(s) * 1000:.0f} p99={p99 * 1000:.0f} max={s[-1] * 1000:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=150)
    parser.add_argument("--period", type=float, default=0.2, help="seconds between upload starts (0: back to back)")
    parser.add_argument("--give-up", type=float, default=60.0, help="seconds before a copy is abandoned")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--tmp", default=None, help="where the data dir goes (the disk to measure)")
    parser.add_argument("--one", nargs=4, metavar=("METHOD", "SRC", "DEST", "GIVE_UP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        method, src, dest, give_up = args.one
        print(json.dumps(copy_once(method, Path(src), Path(dest), float(give_up))))
        return

    print(json.dumps(machine()))
    root = Path(tempfile.mkdtemp(prefix="bench-backup-", dir=args.tmp))
    try:
        data = root / "data"
        data.mkdir()
        db_path = data / "healthsync.db"
        t0 = time.monotonic()
        rows = fill(db_path, args.size_mb)
        print(f"filled {db_path.stat().st_size / 1e6:.0f} MB ({rows} patients) in {time.monotonic() - t0:.1f} s")
        with Server(data) as server:
            uploader = Uploader(server, args.period)
            uploader.start()
            time.sleep(3)  # warm up
            results = []
            for run in range(args.runs):
                for method in args.methods.split(","):
                    dest = root / f"copy-{method}-{run}.db"
                    started = time.monotonic()
                    proc = subprocess.run(
                        [sys.executable, __file__, "--one", method, str(db_path), str(dest), str(args.give_up)],
                        capture_output=True, text=True, check=True,
                    )
                    ended = time.monotonic()
                    result = json.loads(proc.stdout)
                    result["wall_s"] = ended - started
                    during = uploader.window(started, ended)
                    # a quiet window of the same length, right after the copy
                    quiet_start = time.monotonic()
                    time.sleep(min(ended - started, 20))
                    quiet = uploader.window(quiet_start, time.monotonic())
                    result["uploads_during"] = ms_stats([s for s, _ in during])
                    result["errors_during"] = sum(1 for _, st in during if st >= 500)
                    result["uploads_quiet"] = ms_stats([s for s, _ in quiet])
                    if result["finished"]:
                        result.update(check_copy(dest, db_path))
                        dest.unlink()
                    else:
                        dest.unlink(missing_ok=True)
                    results.append(result)
                    print(json.dumps(result))
            uploader.stop.set()
            uploader.join()
        print()
        print("| method | finished | time (s) | restarts | copy (MB) | integrity | seq prefix "
              "| uploads during the copy | uploads after it |")
        print("|---|---|---:|---:|---:|---|---|---|---|")
        for r in results:
            print(f"| {r['method']} | {'yes' if r['finished'] else 'no, given up'} | {r['copy_s']:.1f} "
                  f"| {r['restarts']} | {r.get('size_mb', 0):.0f} | {r.get('integrity', '-')} "
                  f"| {r.get('prefix', '-')} | {r['uploads_during']}, {r['errors_during']} 5xx "
                  f"| {r['uploads_quiet']} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)
        os.sync()


if __name__ == "__main__":
    main()
