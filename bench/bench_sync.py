"""Sync benchmark: upload and download through HTTP against a raw-SQLite baseline.

Run by hand (never in CI), from the repository root:

    .venv/bin/python bench/bench_sync.py            # 5 runs of each figure
    .venv/bin/python bench/bench_sync.py --runs 9 --only download

Each figure is measured against a baseline run in the same process, in the
same run, on the same disk, and reported as a ratio; the summary takes the
median over the runs.  See bench/README.md for what is measured and why.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import re
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    Client,
    Server,
    Stamps,
    baseline_db,
    dumps,
    filled_database,
    machine,
    median,
    new_id,
    observation_payload,
    open_like_server,
    patient_payloads,
)

UPLOAD_N = 10_000
DOWNLOAD_TOTAL = 100_000
FILL_BATCH = 10_000
PAGE = 5_000
DEVICE = "bench-tablet-1"

# Targets: upload time at most TARGET x the baseline's (WANT x wanted);
# download throughput at least TARGET of the baseline's (WANT wanted).
UPLOAD_TARGET, UPLOAD_WANT = 3.0, 2.0
DOWNLOAD_TARGET, DOWNLOAD_WANT = 0.40, 0.60

UPLOAD_PATH = "/api/sync/upload/"


class quiet_gc:
    """Collect before a timed section; with ``off``, keep the collector off during it.

    Baselines run with the collector off: they are floors, and the bench
    process's own heap should not decide them.  The HTTP side only collects
    first: its timed client work allocates next to nothing.
    """

    def __init__(self, off: bool) -> None:
        self.off = off

    def __enter__(self) -> None:
        gc.collect()
        if self.off:
            gc.disable()

    def __exit__(self, *exc: Any) -> None:
        if self.off:
            gc.enable()


@dataclass
class Pair:
    """One run of one figure: HTTP seconds and baseline seconds for ``n`` changes."""

    n: int
    http_s: float
    base_s: float
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def http_rate(self) -> float:
        return self.n / self.http_s

    @property
    def base_rate(self) -> float:
        return self.n / self.base_s

    @property
    def slowdown(self) -> float:
        """HTTP time / baseline time (above 1: HTTP is slower)."""
        return self.http_s / self.base_s

    @property
    def fraction(self) -> float:
        """HTTP throughput / baseline throughput."""
        return self.base_s / self.http_s


# Upload --------------------------------------------------------------------------------

_INSERT_PATIENTS = (
    "INSERT INTO patients (id, owner, name, dob, identifiers, fhir, server_version,"
    " updated_at, deleted, seq, created_at, created_by_device, created_temp_id)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE_PATIENTS = (
    "UPDATE patients SET name = ?, dob = ?, identifiers = ?, fhir = ?, server_version = ?,"
    " updated_at = ?, deleted = ?, seq = ? WHERE id = ?"
)
_INSERT_BATCH = (
    "INSERT INTO batches (id, device_id, status, change_count, response, created_at, finished_at,"
    " updated_at) VALUES (?, ?, 'done', ?, ?, ?, ?, ?)"
)


@dataclass
class Existing:
    """The realistic-size mode's starting database: a file already holding patients.

    Both sides start from a copy of ``template``.  The update batch renames
    the patients the create batch made, like the default mode, unless
    ``old``: then it renames ``targets`` (indexes into ``ids``/``payloads``),
    patients that were there before, spread over the whole table.
    """

    template: Path
    ids: list[str]
    payloads: list[dict[str, Any]]
    targets: list[int]
    seq: int
    last_us: int
    old: bool = False

    @classmethod
    def build(cls, path: Path, n: int, old: bool) -> Existing:
        t0 = time.perf_counter()
        ids, payloads = filled_database(path, n)
        conn = sqlite3.connect(path)
        try:
            seq, last_us = conn.execute("SELECT seq, last_us FROM clock").fetchone()
        finally:
            conn.close()
        print(f"  filled a database with {n:,} patients in {time.perf_counter() - t0:.1f}s "
              f"({path.stat().st_size / 1e6:.0f} MB)", flush=True)
        targets = random.Random(11).sample(range(n), min(UPLOAD_N, n))
        return cls(path, ids, payloads, targets, seq, last_us, old)

    def copy_to(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.template, path)
        return path

    def update_ids(self) -> list[str]:
        return [self.ids[i] for i in self.targets]

    def update_payloads(self) -> list[dict[str, Any]]:
        return [self.payloads[i] for i in self.targets]


_INSERT_TEMP_IDS = "INSERT INTO temp_ids (device_id, client_temp_id, server_id, resource_type) VALUES (?, ?, ?, ?)"


def create_changes(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"operation": "create", "resource_type": "Patient", "client_temp_id": f"p-{i}", "payload": p}
        for i, p in enumerate(payloads)
    ]


def update_changes(server_ids: list[str], payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge-patch renames of the patients just created (base_version 1: no conflict)."""
    return [
        {"operation": "update", "resource_type": "Patient", "server_id": sid, "base_version": 1,
         "payload": {"name": renamed(p)}}
        for sid, p in zip(server_ids, payloads, strict=True)
    ]


def renamed(payload: dict[str, Any]) -> str:
    given, surname = payload["name"].split(" ", 1)
    return f"{given} {surname}-Lee"


def baseline_upload(
    workdir: Path, payloads: list[dict[str, Any]], bookkeeping: bool, existing: Existing | None = None
) -> tuple[float, float]:
    """(create seconds, update seconds): the server's row writes as bare executemany.

    Rows (ids, JSON text, stamps) are made before the clock starts; the timed
    part is BEGIN IMMEDIATE, executemany, the clock row, COMMIT (an fsync with
    synchronous=FULL).  With ``bookkeeping`` the transaction also writes what
    an upload's transaction stores besides the data: the batch row, with a
    response of the same size as the server's, and a ``temp_ids`` row per
    create.

    With ``existing``, the transactions run on a copy of its database and
    the updates are those of ``existing.targets``, like the HTTP side's.
    """
    if existing is None:
        conn = baseline_db(workdir / "baseline.db")
        stamps = Stamps()
    else:
        conn = open_like_server(existing.copy_to(workdir / "baseline.db"))
        stamps = Stamps(existing.seq, existing.last_us)
    try:
        now = Stamps().next()[1]
        ids = [new_id() for _ in payloads]
        creates = []
        for i, (pid, p) in enumerate(zip(ids, payloads, strict=True)):
            seq, stamp = stamps.next()
            identifiers = orjson.dumps(p["identifiers"]).decode()
            creates.append((pid, None, p["name"], p["dob"], identifiers, None, 1, stamp, 0, seq, now, DEVICE,
                            f"p-{i}"))
        create_response = orjson.dumps({"results": [
            {"client_temp_id": f"p-{i}", "status": "created", "server_id": pid, "server_version": 1}
            for i, pid in enumerate(ids)]}).decode()

        temp_ids = [(DEVICE, f"p-{i}", pid, "Patient") for i, pid in enumerate(ids)]

        def write_creates() -> None:
            conn.executemany(_INSERT_PATIENTS, creates)
            if bookkeeping:
                conn.execute(_INSERT_BATCH, (new_id(), DEVICE, len(creates), create_response, now, now, now))
                conn.executemany(_INSERT_TEMP_IDS, temp_ids)

        create_s = _timed_tx(conn, stamps, write_creates)

        updates = []
        if existing is None or not existing.old:
            for row, p in zip(creates, payloads, strict=True):
                seq, stamp = stamps.next()
                updates.append((renamed(p), row[3], row[4], None, 2, stamp, 0, seq, row[0]))
        else:
            for pid, p in zip(existing.update_ids(), existing.update_payloads(), strict=True):
                seq, stamp = stamps.next()
                identifiers = orjson.dumps(p["identifiers"]).decode()
                updates.append((renamed(p), p["dob"], identifiers, None, 2, stamp, 0, seq, pid))
        update_response = orjson.dumps({"results": [
            {"server_id": u[-1], "status": "updated", "server_version": 2} for u in updates]}).decode()

        def write_updates() -> None:
            conn.executemany(_UPDATE_PATIENTS, updates)
            if bookkeeping:
                conn.execute(_INSERT_BATCH, (new_id(), DEVICE, len(updates), update_response, now, now, now))

        update_s = _timed_tx(conn, stamps, write_updates)
        return create_s, update_s
    finally:
        conn.close()


def _timed_tx(conn: sqlite3.Connection, stamps: Stamps, write: Any) -> float:
    """Seconds for BEGIN IMMEDIATE, ``write()``, the clock row and COMMIT."""
    with quiet_gc(off=True):
        t0 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        write()
        conn.execute("UPDATE clock SET seq = ?, last_us = ? WHERE id = 1", (stamps.seq, stamps.last_us))
        conn.execute("COMMIT")
        return time.perf_counter() - t0


def http_upload(
    workdir: Path, payloads: list[dict[str, Any]], server_args: list[str], existing: Existing | None = None
) -> tuple[float, float]:
    """(create seconds, update seconds) of the two batches through HTTP, on a fresh server.

    Timed: the POST, from sending the (already encoded) body to the last byte
    of the response.  The response is parsed and checked after the clock stops.
    With ``existing``, the server starts on a copy of its database and the
    updates rename ``existing.targets``.
    """
    create_body = dumps({"device_id": DEVICE, "changes": create_changes(payloads)})
    if existing is not None:
        existing.copy_to(workdir / "data" / "healthsync.db")
    with Server(workdir / "data", server_args) as server:
        client = server.client()
        try:
            _warm_up(client)

            with quiet_gc(off=False):
                t0 = time.perf_counter()
                status, data = client.post(UPLOAD_PATH, create_body)
                create_s = time.perf_counter() - t0
            server_ids = _check_results(status, data, "created", len(payloads))

            if existing is None or not existing.old:
                update_body = dumps({"device_id": DEVICE, "changes": update_changes(server_ids, payloads)})
            else:
                update_body = dumps({"device_id": DEVICE, "changes": update_changes(
                    existing.update_ids(), existing.update_payloads())})
            with quiet_gc(off=False):
                t0 = time.perf_counter()
                status, data = client.post(UPLOAD_PATH, update_body)
                update_s = time.perf_counter() - t0
            _check_results(status, data, "updated", len(payloads))
        finally:
            client.close()
    return create_s, update_s


def _warm_up(client: Client) -> None:
    """One tiny create and update on the keep-alive connection before the clock starts."""
    body = dumps({"device_id": "bench-warmup", "changes": create_changes(patient_payloads(1, seed=99))})
    sid = _check_results(*client.post(UPLOAD_PATH, body), "created", 1)
    body = dumps({"device_id": "bench-warmup", "changes": update_changes(sid, patient_payloads(1, seed=99))})
    _check_results(*client.post(UPLOAD_PATH, body), "updated", 1)


def _check_results(status: int, data: bytes, expected: str, n: int) -> list[str]:
    if status != 200:
        raise SystemExit(f"upload answered {status}: {data[:500]!r}")
    results = orjson.loads(data)["results"]
    bad = [r for r in results if r["status"] != expected]
    if len(results) != n or bad:
        raise SystemExit(f"upload: expected {n} x {expected}, got {len(results)}; first bad: {bad[:1]}")
    return [r["server_id"] for r in results]


def bench_upload(
    runs: int, base: Path, server_args: list[str], existing: Existing | None = None
) -> tuple[list[Pair], list[Pair]]:
    payloads = patient_payloads(UPLOAD_N, seed=7)
    creates: list[Pair] = []
    updates: list[Pair] = []
    for run in range(1, runs + 1):
        work = Path(tempfile.mkdtemp(prefix=f"upload-{run}-", dir=base))
        (work / "plain").mkdir()
        (work / "bk").mkdir()
        # Alternate the order so that drift on a noisy box does not always favour one side.
        if run % 2:
            b_create, b_update = baseline_upload(work / "plain", payloads, False, existing)
            k_create, k_update = baseline_upload(work / "bk", payloads, True, existing)
            h_create, h_update = http_upload(work, payloads, server_args, existing)
        else:
            h_create, h_update = http_upload(work, payloads, server_args, existing)
            k_create, k_update = baseline_upload(work / "bk", payloads, True, existing)
            b_create, b_update = baseline_upload(work / "plain", payloads, False, existing)
        creates.append(Pair(UPLOAD_N, h_create, b_create, {"bk_s": k_create}))
        updates.append(Pair(UPLOAD_N, h_update, b_update, {"bk_s": k_update}))
        print(f"  upload run {run}/{runs}: creates http {h_create:.3f}s base {b_create:.3f}s"
              f" ({h_create / b_create:.2f}x) | updates http {h_update:.3f}s base {b_update:.3f}s"
              f" ({h_update / b_update:.2f}x)", flush=True)
        shutil.rmtree(work, ignore_errors=True)
    return creates, updates


# Download ------------------------------------------------------------------------------


def fill_changes(batch: int, n: int) -> list[dict[str, Any]]:
    """A batch of ``n`` creates: a quarter patients, each followed by three Observations."""
    rnd = random.Random(batch)
    changes: list[dict[str, Any]] = []
    for i, p in enumerate(patient_payloads(n // 4, seed=1000 + batch, start=batch * n)):
        temp = f"fill-{batch}-p{i}"
        changes.append({"operation": "create", "resource_type": "Patient", "client_temp_id": temp,
                        "payload": p})
        for j in range(3):
            changes.append({"operation": "create", "resource_type": "Observation",
                            "client_temp_id": f"{temp}-o{j}", "payload": observation_payload(rnd, temp)})
    while len(changes) < n:  # n not a multiple of 4
        k = len(changes)
        p = patient_payloads(1, seed=k, start=10**7 + batch * n + k)[0]
        changes.append({"operation": "create", "resource_type": "Patient",
                        "client_temp_id": f"fill-{batch}-x{k}", "payload": p})
    return changes


def fill(server: Server, total: int) -> float:
    """Upload ``total`` changes in batches of FILL_BATCH; return the seconds the POSTs took."""
    client = server.client()
    elapsed = 0.0
    try:
        for b in range(0, (total + FILL_BATCH - 1) // FILL_BATCH):
            n = min(FILL_BATCH, total - b * FILL_BATCH)
            body = dumps({"device_id": "bench-filler", "changes": fill_changes(b, n)})
            t0 = time.perf_counter()
            status, data = client.post(UPLOAD_PATH, body)
            elapsed += time.perf_counter() - t0
            _check_results(status, data, "created", n)
    finally:
        client.close()
    return elapsed


_TAIL = re.compile(rb'"cursor":"?(\d+)"?,"has_more":(true|false)\}\s*$')


def _next(data: bytes) -> tuple[str, bool]:
    """(cursor, has_more) of a download page, read off its tail without parsing the entries.

    Download bodies end ``…],"server_time":…,"cursor":"N","has_more":B}``; if a
    server ever orders them otherwise, parse the whole page instead.
    """
    m = _TAIL.search(data[-256:])
    if m:
        return m.group(1).decode(), m.group(2) == b"true"
    body = orjson.loads(data)
    return str(body["cursor"]), bool(body["has_more"])


def http_download(server: Server, expect: int) -> tuple[float, int, list[Any]]:
    """(seconds, bytes, first page's changes) for every change from cursor 0, PAGE at a time.

    Timed: each GET, to the last byte of its body, and finding ``cursor`` and
    ``has_more`` at the body's end.  The client's parsing of the entries is
    not the server's work and is left out of the timing (with the GC of a
    large client heap it costs more than the server does); every page is
    parsed afterwards to check that exactly ``expect`` distinct changes came.
    """
    client = server.client()
    try:
        client.get("/api/sync/download/?cursor=0&limit=1")  # connect before the clock starts
        cursor, pages = "0", []
        with quiet_gc(off=False):
            t0 = time.perf_counter()
            while True:
                status, data = client.get(f"/api/sync/download/?cursor={cursor}&limit={PAGE}")
                if status != 200:
                    raise SystemExit(f"download answered {status}: {data[:500]!r}")
                pages.append(data)
                cursor, has_more = _next(data)
                if not has_more:
                    break
            elapsed = time.perf_counter() - t0
    finally:
        client.close()
    ids: set[str] = set()
    count = 0
    first: list[Any] = []
    for i, data in enumerate(pages):
        changes = orjson.loads(data)["changes"]
        if i == 0:
            first = changes
        count += len(changes)
        ids.update(c["server_id"] for c in changes)
    if count != expect or len(ids) != expect:
        raise SystemExit(f"download returned {count} changes ({len(ids)} distinct), expected {expect}")
    return elapsed, sum(map(len, pages)), first


_BASELINE_PAGE = (
    "SELECT seq, 0, id, owner, name, dob, identifiers, fhir, server_version, updated_at, deleted,"
    " created_by_device, created_temp_id FROM patients WHERE seq > ?"
    " UNION ALL"
    " SELECT seq, 1, id, patient, resource_type, data, NULL, NULL, server_version, updated_at, deleted,"
    " created_by_device, created_temp_id FROM records WHERE seq > ?"
    " ORDER BY 1 LIMIT ?"
)


def _entry(r: tuple[Any, ...]) -> dict[str, Any]:
    """A download entry from a baseline row (stored JSON documents as Fragments, not parsed)."""
    if r[1] == 0:
        return {
            "server_id": r[2],
            "resource_type": "Patient",
            "data": {"owner": r[3], "name": r[4], "dob": r[5], "identifiers": orjson.Fragment(r[6]),
                     "fhir": None if r[7] is None else orjson.Fragment(r[7])},
            "server_version": r[8],
            "updated_at": r[9],
            "deleted": bool(r[10]),
            "created_by": _created_by(r),
        }
    return {
        "server_id": r[2],
        "resource_type": r[4],
        "patient": r[3],
        "data": orjson.Fragment(r[5]),
        "server_version": r[8],
        "updated_at": r[9],
        "deleted": bool(r[10]),
        "created_by": _created_by(r),
    }


def _created_by(r: tuple[Any, ...]) -> dict[str, Any] | None:
    return None if r[11] is None else {"device_id": r[11], "client_temp_id": r[12]}


def baseline_download(db_path: Path, expect: int) -> tuple[float, int, list[Any]]:
    """(seconds, bytes, first page's changes): raw sqlite3 pages by seq + orjson encoding.

    Same rows, same pages (limit + 1 fetched to know has_more) and the same
    entry shape as the server's; stored JSON documents pass through as
    ``orjson.Fragment`` (not parsed).  The connection is opened before timing.
    """
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, isolation_level=None)
    try:
        conn.execute("SELECT 1").fetchone()
        return keyset_pages(lambda after, n: conn.execute(_BASELINE_PAGE, (after, after, n)).fetchall(), expect)
    finally:
        conn.close()


def keyset_pages(fetch: Any, expect: int) -> tuple[float, int, list[Any]]:
    """(seconds, bytes, first page's changes) of reading every change by keyset pages:
    ``fetch(after, n)`` gives up to ``n`` rows after seq ``after`` (PAGE + 1 asked, to
    know has_more), each encoded with orjson in the download's entry shape.  The
    raw baseline of every backend's download figure."""
    after, count, nbytes, first = 0, 0, 0, b""
    with quiet_gc(off=True):
        t0 = time.perf_counter()
        while True:
            rows = fetch(after, PAGE + 1)
            has_more = len(rows) > PAGE
            rows = rows[:PAGE]
            out = orjson.dumps({
                "changes": [_entry(r) for r in rows],
                "server_time": rows[-1][9] if rows else None,
                "cursor": str(rows[-1][0]) if rows else str(after),
                "has_more": has_more,
            })
            nbytes += len(out)
            count += len(rows)
            if not first:
                first = out
            if rows:
                after = rows[-1][0]
            if not has_more:
                break
        elapsed = time.perf_counter() - t0
    if count != expect:
        raise SystemExit(f"baseline download read {count} changes, expected {expect}")
    return elapsed, nbytes, orjson.loads(first)["changes"] if first else []


def bench_download(runs: int, base: Path, server_args: list[str]) -> tuple[list[Pair], dict[str, float]]:
    work = Path(tempfile.mkdtemp(prefix="download-", dir=base))
    info: dict[str, float] = {}
    pairs: list[Pair] = []
    with Server(work / "data", server_args) as server:
        fill_s = fill(server, DOWNLOAD_TOTAL)
        info["fill_rate"] = DOWNLOAD_TOTAL / fill_s
        print(f"  filled {DOWNLOAD_TOTAL:,} changes in {fill_s:.1f}s ({info['fill_rate']:,.0f}/s, "
              f"batches of {FILL_BATCH:,}: 1/4 patients, 3/4 Observations)", flush=True)
        db_path = work / "data" / "healthsync.db"
        # Warm both paths (OS page cache, server read connections) and check
        # that the baseline encodes exactly what the server sends.
        _, h_bytes, h_first = http_download(server, DOWNLOAD_TOTAL)
        _, b_bytes, b_first = baseline_download(db_path, DOWNLOAD_TOTAL)
        if h_first != b_first:
            raise SystemExit("baseline entries differ from the server's download entries:\n"
                             f"server   {h_first[:2]}\nbaseline {b_first[:2]}")
        info["http_mb"] = h_bytes / 1e6
        info["base_mb"] = b_bytes / 1e6
        for run in range(1, runs + 1):
            if run % 2:  # alternate the order so that drift on a noisy box hits both sides
                b_s = baseline_download(db_path, DOWNLOAD_TOTAL)[0]
                h_s = http_download(server, DOWNLOAD_TOTAL)[0]
            else:
                h_s = http_download(server, DOWNLOAD_TOTAL)[0]
                b_s = baseline_download(db_path, DOWNLOAD_TOTAL)[0]
            pair = Pair(DOWNLOAD_TOTAL, h_s, b_s)
            pairs.append(pair)
            print(f"  download run {run}/{runs}: http {h_s:.3f}s base {b_s:.3f}s ({pair.fraction:.0%})",
                  flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return pairs, info


# Report --------------------------------------------------------------------------------


def table(title: str, pairs: list[Pair], kind: str, bk: bool = False) -> list[str]:
    """A Markdown table, one row per run and a median row; ``kind`` "x" (slowdown) or "%"."""
    ratio_name = "HTTP / baseline time" if kind == "x" else "HTTP / baseline throughput"
    head = f"| run | HTTP s | HTTP changes/s | baseline s | baseline changes/s | {ratio_name} |"
    sep = "|---|---:|---:|---:|---:|---:|"
    if bk:
        head += " baseline + bookkeeping s | HTTP / that |"
        sep += "---:|---:|"
    lines = [f"**{title}**", "", head, sep]
    n = pairs[0].n

    def ratio(p: Pair) -> float:
        return p.slowdown if kind == "x" else p.fraction

    def row(label: str, h_s: float, b_s: float, r: float, k_s: float | None) -> str:
        shown = f"{r:.2f}x" if kind == "x" else f"{r:.0%}"
        text = f"| {label} | {h_s:.3f} | {n / h_s:,.0f} | {b_s:.3f} | {n / b_s:,.0f} | {shown} |"
        if bk and k_s is not None:
            text += f" {k_s:.3f} | {h_s / k_s:.2f}x |"
        return text

    for i, p in enumerate(pairs, 1):
        lines.append(row(str(i), p.http_s, p.base_s, ratio(p), p.extra.get("bk_s")))
    lines.append(row(
        "**median**",
        median([p.http_s for p in pairs]),
        median([p.base_s for p in pairs]),
        median([ratio(p) for p in pairs]),
        median([p.extra["bk_s"] for p in pairs]) if bk else None,
    ))
    return lines


def verdict_upload(pairs: list[Pair]) -> tuple[float, str]:
    r = median([p.slowdown for p in pairs])
    if r <= UPLOAD_WANT:
        return r, f"PASS (within {UPLOAD_WANT:g}x, the wanted figure)"
    if r <= UPLOAD_TARGET:
        return r, f"PASS (within the {UPLOAD_TARGET:g}x target; {UPLOAD_WANT:g}x wanted)"
    return r, f"FAIL (target {UPLOAD_TARGET:g}x)"


def verdict_download(pairs: list[Pair]) -> tuple[float, str]:
    r = median([p.fraction for p in pairs])
    if r >= DOWNLOAD_WANT:
        return r, f"PASS (at least {DOWNLOAD_WANT:.0%}, the wanted figure)"
    if r >= DOWNLOAD_TARGET:
        return r, f"PASS (at least the {DOWNLOAD_TARGET:.0%} target; {DOWNLOAD_WANT:.0%} wanted)"
    return r, f"FAIL (target {DOWNLOAD_TARGET:.0%})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5,
                        help="runs of each figure; the median is reported (default 5)")
    parser.add_argument("--only", choices=["upload", "download"], help="run one half only")
    parser.add_argument("--patients", type=int, default=0, metavar="N",
                        help="upload to a database that already holds N patients (the realistic-size"
                             " mode: 100000; default 0)")
    parser.add_argument("--update-old", action="store_true",
                        help="with --patients, the update batch renames patients already there, spread over"
                             " the table, instead of those the create batch made")
    parser.add_argument("--tmp", help="folder for the temporary data dirs (default: the system temp dir)")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra argument for run.py (repeatable), e.g. --server-arg=--no-worker")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    base = Path(tempfile.mkdtemp(prefix="healthsync-bench-", dir=args.tmp))
    m = machine()
    started = datetime.now(UTC)
    print(f"HealthSync sync benchmark, {started:%Y-%m-%d %H:%M} UTC, {args.runs} run(s) of each figure")
    print(f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']} RAM; Python {m['python']}, "
          f"SQLite {m['sqlite']}, orjson {m['orjson']}; load average {os.getloadavg()[0]:.2f}; "
          f"data in {base}")
    print(f"server: run.py --port 0 --data-dir D {' '.join(args.server_arg)}".rstrip())
    out: list[str] = []
    verdicts: list[str] = []
    try:
        if args.only in (None, "upload"):
            existing = None
            if args.patients:
                which = "patients already there" if args.update_old else "them"
                print(f"\nUpload to a database already holding {args.patients:,} patients: one batch of"
                      f" {UPLOAD_N:,} Patient creates, then one of {UPLOAD_N:,} updates of {which}"
                      " (a fresh server on a fresh copy each run)")
                existing = Existing.build(base / "template.db", args.patients, args.update_old)
            else:
                print(f"\nUpload: one batch of {UPLOAD_N:,} Patient creates, then one of {UPLOAD_N:,} updates"
                      " (a fresh server each run)")
            creates, updates = bench_upload(args.runs, base, args.server_arg, existing)
            for what, pairs in (("creates", creates), ("updates", updates)):
                out += table(f"Upload, {UPLOAD_N:,} Patient {what} in one batch", pairs, "x", bk=True)
                out.append("")
                r, v = verdict_upload(pairs)
                http_rate = median([p.http_rate for p in pairs])
                base_rate = median([p.base_rate for p in pairs])
                verdicts.append(
                    f"| upload {what} | {http_rate:,.0f}/s | {base_rate:,.0f}/s | {r:.2f}x the time | {v} |")
        if args.only in (None, "download"):
            print(f"\nDownload: {DOWNLOAD_TOTAL:,} changes in pages of {PAGE:,}")
            pairs, info = bench_download(args.runs, base, args.server_arg)
            out += table(f"Download, {DOWNLOAD_TOTAL:,} changes in pages of {PAGE:,} "
                         f"({info['http_mb']:.1f} MB of JSON)", pairs, "%")
            out.append("")
            out.append(f"Fill (untimed setup): {info['fill_rate']:,.0f} mixed creates/s through HTTP.")
            out.append("")
            r, v = verdict_download(pairs)
            http_rate = median([p.http_rate for p in pairs])
            base_rate = median([p.base_rate for p in pairs])
            verdicts.append(
                f"| download | {http_rate:,.0f}/s | {base_rate:,.0f}/s | {r:.0%} of the throughput | {v} |")
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print("\n" + "\n".join(out))
    print("| figure | HTTP (median) | baseline (median) | ratio (median of the runs' ratios) | verdict |")
    print("|---|---:|---:|---:|---|")
    print("\n".join(verdicts))
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
