"""PostgreSQL benchmark: sync upload and download through the server against raw
psycopg, and what a second ``run.py serve`` process adds on one box.

Run by hand (never in CI), from the repository root, with a PostgreSQL that
lets this user create databases (the default: 127.0.0.1:5432, user postgres):

    .venv/bin/python bench/bench_postgres.py                    # everything, 3 runs, about 4 minutes
    .venv/bin/python bench/bench_postgres.py --only upload,download --runs 5
    .venv/bin/python bench/bench_postgres.py --url postgresql://me@dbhost:5432/postgres

It creates its own databases (``hs_bench_<pid>_<random>_*``) and drops them at
the end, whatever happens.  Four sections, each figure next to its baseline
in the same run, printed side by side:

1. upload: 10,000 Patient creates, then 10,000 renames of them, in one
   ``POST /api/sync/upload/`` each, to a database already holding 100,000
   patients, against raw psycopg writing the same rows in one transaction
   that locks and advances the clock row: ``COPY`` for the creates, ``COPY``
   into a temporary table and one ``UPDATE … FROM`` it for the updates.
2. download: 100,000 changes (a quarter patients, the rest Observations) in
   pages of 5,000 through ``GET /api/sync/download/``, against a raw keyset
   fetch of the same pages with psycopg, encoded with orjson.
3. scale-out download: ``--clients`` clients each downloading all 100,000
   changes at once, all from one server process, then spread over two.
4. websocket fan-out: ``--subscribers`` subscribers (bench_push.py's raw
   client) on one process, then spread over two, while one process takes
   ``--writes`` single-patient writes; latency from the write's response to
   each subscriber's frame.

See bench/README.md for the method and the latest figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_push  # noqa: E402
from bench_sync import (  # noqa: E402
    DEVICE,
    DOWNLOAD_TARGET,
    DOWNLOAD_WANT,
    PAGE,
    UPLOAD_N,
    UPLOAD_PATH,
    UPLOAD_TARGET,
    UPLOAD_WANT,
    Pair,
    _check_results,
    _next,
    _warm_up,
    create_changes,
    fill,
    http_download,
    keyset_pages,
    quiet_gc,
    renamed,
    table,
    update_changes,
)
from common import Server, Stamps, dumps, iso_us, machine, median, new_id, patient_payloads  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DOWNLOAD_TOTAL = 100_000
SCALE_AIM = 1.6

_PATIENT_COLS = "id, owner, name, dob, identifiers, fhir, server_version, updated_at, deleted, seq, created_at"
_COPY_PATIENTS = f"COPY patients ({_PATIENT_COLS}) FROM STDIN"
_COPY_TEMP_IDS = "COPY temp_ids (device_id, client_temp_id, server_id, resource_type) FROM STDIN"
_UPDATE_TEMP = (
    "CREATE TEMP TABLE u (id text, name text, dob text, identifiers text, fhir text, v integer, at text,"
    " d smallint, seq bigint) ON COMMIT DROP"
)
_UPDATE_PATIENTS = (
    "UPDATE patients AS p SET name = u.name, dob = u.dob, identifiers = u.identifiers, fhir = u.fhir,"
    " server_version = u.v, updated_at = u.at, deleted = u.d, seq = u.seq FROM u WHERE p.id = u.id"
)
_INSERT_BATCH = (
    "INSERT INTO batches (id, device_id, status, change_count, response, created_at, finished_at, updated_at)"
    " VALUES (%s, %s, 'done', %s, %s, %s, %s, %s)"
)
_CLOCK_LOCK = "SELECT seq, last_us FROM clock WHERE id = 1 FOR UPDATE"
_CLOCK_SET = "UPDATE clock SET seq = %s, last_us = %s, commits = commits + 1 WHERE id = 1"


# Databases -------------------------------------------------------------------------------


class Databases:
    """This run's databases on the server at ``url``: created on demand, all dropped by ``drop_all``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"hs_bench_{os.getpid()}_{secrets.token_hex(3)}"
        self.names: list[str] = []

    def url_of(self, name: str) -> str:
        return urlunsplit(urlsplit(self.url)._replace(path="/" + name))

    def _admin(self, statement: sql.Composable) -> None:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(statement)

    def create(self, suffix: str, template: str | None = None) -> str:
        """A new database (a copy of ``template`` if given); its URL."""
        name = f"{self.prefix}_{suffix}"
        stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            stmt = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
        self._admin(stmt)
        self.names.append(name)
        return self.url_of(name)

    def drop(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if name in self.names:
            self.names.remove(name)

    def drop_all(self) -> None:
        for name in list(self.names):
            self.drop(self.url_of(name))


def migrate(url: str) -> None:
    """The server's own schema, made by the server's own code."""
    from healthsync.storage.postgres import PostgresDatabase

    async def run() -> None:
        db = PostgresDatabase(url, connections=1)
        await db.open()
        await db.close()

    asyncio.run(run())


def fill_patients(url: str, n: int) -> tuple[int, int]:
    """``n`` patients by raw ``COPY``, stamped as creates through the write path would
    leave them (seq 1..n, ``updated_at`` a second apart ending an hour ago), the
    clock row advanced to match; then ``VACUUM ANALYZE``.  The clock's (seq, last_us)."""
    payloads = patient_payloads(n, seed=3, start=10**7)
    us = time.time_ns() // 1000 - (n + 3600) * 1_000_000
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction(), conn.cursor() as cur, cur.copy(_COPY_PATIENTS) as cp:
            for seq, p in enumerate(payloads, 1):
                us += 1_000_000
                at = iso_us(us)
                cp.write_row((new_id(), None, p["name"], p["dob"], orjson.dumps(p["identifiers"]).decode(), None,
                              1, at, 0, seq, at))
        conn.execute("UPDATE clock SET seq = %s, last_us = %s WHERE id = 1", (n, us))
        conn.execute("VACUUM ANALYZE")
    return n, us


class PgServer(Server):
    """``run.py --port 0 --data-dir D --database-url URL``."""

    def __init__(self, data_dir: Path, url: str, extra_args: list[str] | None = None) -> None:
        super().__init__(data_dir, ["--database-url", url, *(extra_args or [])])


# 1. Upload ---------------------------------------------------------------------------------


def http_upload(workdir: Path, url: str, payloads: list[dict[str, Any]], server_args: list[str]) -> tuple[float, float]:
    """(create seconds, update seconds) of the two batches through HTTP, on a fresh server."""
    create_body = dumps({"device_id": DEVICE, "changes": create_changes(payloads)})
    with PgServer(workdir / "data", url, server_args) as server:
        client = server.client()
        try:
            _warm_up(client)
            with quiet_gc(off=False):
                t0 = time.perf_counter()
                status, data = client.post(UPLOAD_PATH, create_body)
                create_s = time.perf_counter() - t0
            server_ids = _check_results(status, data, "created", len(payloads))
            update_body = dumps({"device_id": DEVICE, "changes": update_changes(server_ids, payloads)})
            with quiet_gc(off=False):
                t0 = time.perf_counter()
                status, data = client.post(UPLOAD_PATH, update_body)
                update_s = time.perf_counter() - t0
            _check_results(status, data, "updated", len(payloads))
        finally:
            client.close()
    return create_s, update_s


def baseline_upload(url: str, payloads: list[dict[str, Any]], bookkeeping: bool) -> tuple[float, float]:
    """(create seconds, update seconds): the same rows by raw psycopg, one transaction each.

    Rows (ids, JSON text, stamps) are made before the clock starts.  Timed:
    BEGIN, lock the clock row, ``COPY`` the creates (``write_row``), or for the
    updates ``COPY`` the new values into a temporary table and one
    ``UPDATE … FROM`` it (about 1.7x faster here than one ``UPDATE … FROM
    unnest(arrays)``), the clock row, COMMIT.
    With ``bookkeeping`` the transaction also writes the batch row (a response
    of the server's size) and, for the creates, one ``temp_ids`` row each.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        seq0, last_us0 = conn.execute("SELECT seq, last_us FROM clock WHERE id = 1").fetchone()  # type: ignore[misc]
        stamps = Stamps(seq0, last_us0)
        now = Stamps().next()[1]
        ids = [new_id() for _ in payloads]
        creates = []
        for pid, p in zip(ids, payloads, strict=True):
            seq, stamp = stamps.next()
            creates.append((pid, None, p["name"], p["dob"], orjson.dumps(p["identifiers"]).decode(), None, 1, stamp,
                            0, seq, now))
        create_response = orjson.dumps({"results": [
            {"client_temp_id": f"p-{i}", "status": "created", "server_id": pid, "server_version": 1}
            for i, pid in enumerate(ids)]}).decode()
        temp_ids = [(DEVICE, f"p-{i}", pid, "Patient") for i, pid in enumerate(ids)]

        def write_creates(cur: psycopg.Cursor[Any]) -> None:
            with cur.copy(_COPY_PATIENTS) as cp:
                for row in creates:
                    cp.write_row(row)
            if bookkeeping:
                cur.execute(_INSERT_BATCH, (new_id(), DEVICE, len(creates), create_response, now, now, now))
                with cur.copy(_COPY_TEMP_IDS) as cp:
                    for row in temp_ids:
                        cp.write_row(row)

        create_s = _timed_tx(conn, stamps, write_creates)

        updates = []
        for row, p in zip(creates, payloads, strict=True):
            seq, stamp = stamps.next()
            updates.append((row[0], renamed(p), row[3], row[4], None, 2, stamp, 0, seq))
        update_response = orjson.dumps({"results": [
            {"server_id": u[0], "status": "updated", "server_version": 2} for u in updates]}).decode()

        def write_updates(cur: psycopg.Cursor[Any]) -> None:
            cur.execute(_UPDATE_TEMP)
            with cur.copy("COPY u FROM STDIN") as cp:
                for row in updates:
                    cp.write_row(row)
            cur.execute(_UPDATE_PATIENTS)
            if bookkeeping:
                cur.execute(_INSERT_BATCH, (new_id(), DEVICE, len(updates), update_response, now, now, now))

        update_s = _timed_tx(conn, stamps, write_updates)
    return create_s, update_s


def _timed_tx(conn: psycopg.Connection[Any], stamps: Stamps, write: Any) -> float:
    """Seconds for BEGIN, the clock row's lock, ``write(cursor)``, the clock row and COMMIT."""
    with quiet_gc(off=True):
        t0 = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(_CLOCK_LOCK)
            cur.fetchone()
            write(cur)
            cur.execute(_CLOCK_SET, (stamps.seq, stamps.last_us))
        return time.perf_counter() - t0


def bench_upload(dbs: Databases, template: str, runs: int, base: Path,
                 server_args: list[str]) -> tuple[list[Pair], list[Pair]]:
    payloads = patient_payloads(UPLOAD_N, seed=7)
    creates: list[Pair] = []
    updates: list[Pair] = []
    for run in range(1, runs + 1):
        work = Path(tempfile.mkdtemp(prefix=f"upload-{run}-", dir=base))
        urls = {k: dbs.create(f"up{run}{k}", template) for k in ("http", "plain", "bk")}
        try:
            if run % 2:  # alternate the order so that drift on a noisy box hits both sides
                b = baseline_upload(urls["plain"], payloads, False)
                k = baseline_upload(urls["bk"], payloads, True)
                h = http_upload(work, urls["http"], payloads, server_args)
            else:
                h = http_upload(work, urls["http"], payloads, server_args)
                k = baseline_upload(urls["bk"], payloads, True)
                b = baseline_upload(urls["plain"], payloads, False)
        finally:
            for u in urls.values():
                dbs.drop(u)
            shutil.rmtree(work, ignore_errors=True)
        creates.append(Pair(UPLOAD_N, h[0], b[0], {"bk_s": k[0]}))
        updates.append(Pair(UPLOAD_N, h[1], b[1], {"bk_s": k[1]}))
        print(f"  upload run {run}/{runs}: creates http {h[0]:.3f}s base {b[0]:.3f}s ({h[0] / b[0]:.2f}x)"
              f" | updates http {h[1]:.3f}s base {b[1]:.3f}s ({h[1] / b[1]:.2f}x)", flush=True)
    return creates, updates


# 2. Download -------------------------------------------------------------------------------

_BASELINE_PAGE = (
    "(SELECT seq, 0, id, owner, name, dob, identifiers, fhir, server_version, updated_at, deleted"
    " FROM patients WHERE seq > %s ORDER BY seq LIMIT %s)"
    " UNION ALL"
    " (SELECT seq, 1, id, patient, resource_type, data, NULL, NULL, server_version, updated_at, deleted"
    " FROM records WHERE seq > %s ORDER BY seq LIMIT %s)"
    " ORDER BY 1 LIMIT %s"
)


def baseline_download(url: str, expect: int) -> tuple[float, int, list[Any]]:
    """(seconds, bytes, first page's changes): raw psycopg keyset pages by seq + orjson.

    The same rows and pages as the server's (limit + 1 fetched to know
    has_more; each arm of the union limited, so each stops on its index),
    encoded with orjson in the download's entry shape; stored JSON documents
    pass through as ``orjson.Fragment``.  One statement per page in
    autocommit (its own snapshot).  The connection is opened before timing.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT 1").fetchone()
        return keyset_pages(lambda after, n: conn.execute(_BASELINE_PAGE, (after, n, after, n, n)).fetchall(), expect)


def fill_download(url: str, base: Path, server_args: list[str]) -> float:
    """``DOWNLOAD_TOTAL`` mixed creates through one server (bench_sync's fill); changes/s."""
    work = Path(tempfile.mkdtemp(prefix="fill-", dir=base))
    try:
        with PgServer(work / "data", url, server_args) as server:
            seconds = fill(server, DOWNLOAD_TOTAL)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return DOWNLOAD_TOTAL / seconds


def bench_download(url: str, runs: int, base: Path, server_args: list[str]) -> tuple[list[Pair], float]:
    work = Path(tempfile.mkdtemp(prefix="download-", dir=base))
    pairs: list[Pair] = []
    try:
        with PgServer(work / "data", url, server_args) as server:
            _, h_bytes, h_first = http_download(server, DOWNLOAD_TOTAL)  # warm both, compare
            _, _, b_first = baseline_download(url, DOWNLOAD_TOTAL)
            if h_first != b_first:
                raise SystemExit("baseline entries differ from the server's download entries:\n"
                                 f"server   {h_first[:2]}\nbaseline {b_first[:2]}")
            for run in range(1, runs + 1):
                if run % 2:
                    b_s = baseline_download(url, DOWNLOAD_TOTAL)[0]
                    h_s = http_download(server, DOWNLOAD_TOTAL)[0]
                else:
                    h_s = http_download(server, DOWNLOAD_TOTAL)[0]
                    b_s = baseline_download(url, DOWNLOAD_TOTAL)[0]
                pair = Pair(DOWNLOAD_TOTAL, h_s, b_s)
                pairs.append(pair)
                print(f"  download run {run}/{runs}: http {h_s:.3f}s base {b_s:.3f}s ({pair.fraction:.0%})",
                      flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return pairs, h_bytes / 1e6


# 3. Scale-out download ----------------------------------------------------------------------


def _download_all(server: Server, errors: list[str]) -> None:
    """Every change from cursor 0 in pages of PAGE on one keep-alive connection (bodies not parsed)."""
    client = server.client()
    try:
        cursor, count = "0", 0
        while True:
            status, data = client.get(f"/api/sync/download/?cursor={cursor}&limit={PAGE}")
            if status != 200:
                errors.append(f"download answered {status}: {data[:200]!r}")
                return
            count += 1
            cursor, has_more = _next(data)
            if not has_more:
                break
        if int(cursor) < DOWNLOAD_TOTAL:
            errors.append(f"download ended at cursor {cursor}")
    finally:
        client.close()


def box_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (``/proc/stat``), every core summed."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = v[3] + v[4]  # idle, iowait
    return (sum(v[:8]) - idle) / tick, sum(v[:8]) / tick


@dataclass
class Scale:
    seconds: float
    server_cores: float  # CPU seconds of the serving processes / wall seconds
    box_cores: float  # CPU seconds of the whole machine (PostgreSQL, clients, others) / wall seconds


def concurrent_download(servers: list[Server], clients: int) -> Scale:
    """``clients`` full downloads at once, client i on server i mod len(servers)."""
    errors: list[str] = []
    threads = [threading.Thread(target=_download_all, args=(servers[i % len(servers)], errors))
               for i in range(clients)]
    with quiet_gc(off=False):
        cpu0 = sum(bench_push.cpu_seconds(s.pid) for s in servers)
        busy0 = box_busy()[0]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        cpu = sum(bench_push.cpu_seconds(s.pid) for s in servers) - cpu0
        busy = box_busy()[0] - busy0
    if errors:
        raise SystemExit(f"scale-out download failed: {errors[0]}")
    return Scale(elapsed, cpu / elapsed, busy / elapsed)


def bench_scale(url: str, runs: int, clients: int, base: Path, server_args: list[str]) -> list[tuple[Scale, Scale]]:
    """Per run (one process, two processes) for ``clients`` concurrent full downloads."""
    work = Path(tempfile.mkdtemp(prefix="scale-", dir=base))
    out: list[tuple[Scale, Scale]] = []
    try:
        with PgServer(work / "a", url, server_args) as a, PgServer(work / "b", url, server_args) as b:
            concurrent_download([a, b], 2)  # warm both processes' pools and the page cache
            for run in range(1, runs + 1):
                if run % 2:
                    one = concurrent_download([a], clients)
                    two = concurrent_download([a, b], clients)
                else:
                    two = concurrent_download([a, b], clients)
                    one = concurrent_download([a], clients)
                out.append((one, two))
                total = clients * DOWNLOAD_TOTAL
                print(f"  scale-out run {run}/{runs}: {clients} clients x {DOWNLOAD_TOTAL:,} changes: one process"
                      f" {one.seconds:.2f}s ({total / one.seconds:,.0f}/s, server {one.server_cores:.2f} cores,"
                      f" machine {one.box_cores:.2f}), two {two.seconds:.2f}s ({total / two.seconds:,.0f}/s,"
                      f" servers {two.server_cores:.2f} cores, machine {two.box_cores:.2f}):"
                      f" {one.seconds / two.seconds:.2f}x", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


# 4. Websocket fan-out over one or two processes ------------------------------------------------


@dataclass
class FanOut:
    p50: float
    p99: float
    p99_a: float  # subscribers on the process that took the writes
    p99_b: float  # subscribers on the other process (nan with one process)
    missing: int


async def fanout_run(ports: list[int], n: int, writes: int, pause: float) -> FanOut:
    """``n`` subscribers, half on each of ``ports`` (all on one if one is given), in two
    client processes; ``writes`` patients created on ``ports[0]``; latency from each
    write's response to each subscriber's frame."""
    clients = await bench_push.start_clients(2, "raw")
    try:
        head = await bench_push.current_head(ports[0])
        shares = bench_push.split(n, 2)
        for c, share, port in zip(clients, shares, (ports[0], ports[-1]), strict=True):
            url = f"ws://{bench_push.HOST}:{port}{bench_push.WS_PATH}?cursor={head}"
            await bench_push.connect_all([c], url, share, 32)
        await asyncio.sleep(1.0)
        for i in range(2):  # not counted: first-use costs
            await bench_push.post_patient(ports[0], 800_000 + i)
            await asyncio.sleep(pause)
        await asyncio.sleep(0.5)
        await asyncio.gather(*(c.call(120, cmd="collect", t_resp={}, timeout=0) for c in clients))
        t_resp: dict[str, float] = {}
        for i in range(writes):
            sid, _sent, t1 = await bench_push.post_patient(ports[0], i + int(time.time()) % 100_000 * 100)
            t_resp[sid] = t1
            await asyncio.sleep(pause)
        replies = await asyncio.gather(*(c.call(300, cmd="collect", t_resp=t_resp, timeout=10) for c in clients))
    finally:
        await asyncio.gather(*(c.quit() for c in clients))
    lat = sorted(x for r in replies for x in r["lat_ms"])
    a = sorted(replies[0]["lat_ms"])
    b = sorted(replies[1]["lat_ms"])
    two = len(ports) > 1
    return FanOut(bench_push.pct(lat, 50), bench_push.pct(lat, 99),
                  bench_push.pct(a if two else lat, 99), bench_push.pct(b, 99) if two else float("nan"),
                  sum(r["missing"] for r in replies))


def bench_fanout(url: str, runs: int, n: int, writes: int, pause: float, base: Path,
                 server_args: list[str]) -> list[tuple[FanOut, FanOut]]:
    bench_push.raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="fanout-", dir=base))
    out: list[tuple[FanOut, FanOut]] = []
    try:
        with PgServer(work / "a", url, server_args) as a, PgServer(work / "b", url, server_args) as b:
            for run in range(1, runs + 1):
                if run % 2:
                    one = asyncio.run(fanout_run([a.port], n, writes, pause))
                    two = asyncio.run(fanout_run([a.port, b.port], n, writes, pause))
                else:
                    two = asyncio.run(fanout_run([a.port, b.port], n, writes, pause))
                    one = asyncio.run(fanout_run([a.port], n, writes, pause))
                out.append((one, two))
                print(f"  fan-out run {run}/{runs}: {n:,} subscribers: one process p50 {one.p50:.1f} p99"
                      f" {one.p99:.1f} ms | two processes p50 {two.p50:.1f} p99 {two.p99:.1f} ms (writer's"
                      f" process {two.p99_a:.1f}, other {two.p99_b:.1f}) | missing {one.missing}/{two.missing}",
                      flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


# Report -------------------------------------------------------------------------------------


def verdict(ratio: float, target: float, want: float | None, lower_is_better: bool) -> str:
    def ok(limit: float) -> bool:
        return ratio <= limit if lower_is_better else ratio >= limit

    if want is not None and ok(want):
        return "aim met"
    if ok(target):
        return "target met, aim not met" if want is not None else "aim met"
    return "NOT met"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("HEALTHSYNC_BENCH_POSTGRES_URL", DEFAULT_URL),
                        help=f"a PostgreSQL server where this user may create databases (default {DEFAULT_URL})")
    parser.add_argument("--runs", type=int, default=3, help="runs of each figure; medians are reported (default 3)")
    parser.add_argument("--only", default="upload,download,scale,fanout",
                        help="comma-separated sections: upload, download, scale, fanout (default all)")
    parser.add_argument("--patients", type=int, default=100_000,
                        help="patients already in the database for the uploads (default 100000)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent downloaders for scale-out (default 4)")
    parser.add_argument("--subscribers", type=int, default=1000, help="websocket subscribers (default 1000)")
    parser.add_argument("--writes", type=int, default=30, help="measured writes per fan-out run (default 30)")
    parser.add_argument("--pause", type=float, default=0.1, help="seconds between fan-out writes (default 0.1)")
    parser.add_argument("--tmp", help="folder for the servers' data dirs (default: the system temp dir)")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra argument for run.py (repeatable), e.g. --server-arg=--no-worker")
    args = parser.parse_args(argv)
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = sections - {"upload", "download", "scale", "fanout"}
    if unknown or args.runs < 1:
        parser.error(f"unknown sections {sorted(unknown)}" if unknown else "--runs must be at least 1")

    base = Path(tempfile.mkdtemp(prefix="healthsync-pgbench-", dir=args.tmp))
    dbs = Databases(args.url)
    m = machine()
    with psycopg.connect(args.url, connect_timeout=5) as conn:
        pg_version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        sync_commit = conn.execute("SHOW synchronous_commit").fetchone()[0]  # type: ignore[index]
    started = datetime.now(UTC)
    print(f"HealthSync PostgreSQL benchmark, {started:%Y-%m-%d %H:%M} UTC, {args.runs} run(s) of each figure")
    print(f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']} RAM; Python {m['python']},"
          f" PostgreSQL {pg_version} (synchronous_commit={sync_commit}), psycopg {psycopg.__version__}"
          f" ({psycopg.pq.__impl__}), orjson {m['orjson']}; load average {os.getloadavg()[0]:.2f}")
    out: list[str] = []
    verdicts: list[str] = []
    try:
        if "upload" in sections:
            print(f"\nUpload to a database already holding {args.patients:,} patients: {UPLOAD_N:,} creates, then"
                  f" {UPLOAD_N:,} renames of them (fresh copies of the database and a fresh server each run)")
            template = dbs.create("tpl")
            migrate(template)
            t0 = time.perf_counter()
            fill_patients(template, args.patients)
            print(f"  filled {args.patients:,} patients by COPY in {time.perf_counter() - t0:.1f}s", flush=True)
            creates, updates = bench_upload(dbs, urlsplit(template).path.lstrip("/"), args.runs, base,
                                            args.server_arg)
            for what, pairs in (("creates", creates), ("updates", updates)):
                out += table(f"Upload on PostgreSQL, {UPLOAD_N:,} Patient {what} in one batch", pairs, "x", bk=True)
                out.append("")
                r = median([p.slowdown for p in pairs])
                verdicts.append(f"| upload {what} | {median([p.http_rate for p in pairs]):,.0f}/s |"
                                f" {median([p.base_rate for p in pairs]):,.0f}/s | {r:.2f}x the time |"
                                f" ≤ {UPLOAD_TARGET:g}x ({UPLOAD_WANT:g}x aim) |"
                                f" {verdict(r, UPLOAD_TARGET, UPLOAD_WANT, True)} |")
            dbs.drop(template)
        dl_url = None
        if sections & {"download", "scale"}:
            dl_url = dbs.create("dl")
            print(f"\nDownload: filling {DOWNLOAD_TOTAL:,} changes through the server (a quarter patients,"
                  " the rest Observations)", flush=True)
            rate = fill_download(dl_url, base, args.server_arg)
            print(f"  filled at {rate:,.0f} changes/s", flush=True)
        if "download" in sections:
            assert dl_url is not None
            print(f"\nDownload: {DOWNLOAD_TOTAL:,} changes in pages of {PAGE:,}", flush=True)
            pairs, mb = bench_download(dl_url, args.runs, base, args.server_arg)
            out += table(f"Download on PostgreSQL, {DOWNLOAD_TOTAL:,} changes in pages of {PAGE:,}"
                         f" ({mb:.1f} MB of JSON)", pairs, "%")
            out.append("")
            r = median([p.fraction for p in pairs])
            verdicts.append(f"| download | {median([p.http_rate for p in pairs]):,.0f}/s |"
                            f" {median([p.base_rate for p in pairs]):,.0f}/s | {r:.0%} of the throughput |"
                            f" ≥ {DOWNLOAD_TARGET:.0%} ({DOWNLOAD_WANT:.0%} aim) |"
                            f" {verdict(r, DOWNLOAD_TARGET, DOWNLOAD_WANT, False)} |")
        if "scale" in sections:
            assert dl_url is not None
            print(f"\nScale-out download: {args.clients} clients at once, each downloading {DOWNLOAD_TOTAL:,}"
                  f" changes in pages of {PAGE:,}, from one server process, then spread over two", flush=True)
            runs = bench_scale(dl_url, args.runs, args.clients, base, args.server_arg)
            total = args.clients * DOWNLOAD_TOTAL
            out += [f"**Scale-out download, {args.clients} concurrent clients x {DOWNLOAD_TOTAL:,} changes**"
                    " (cores: CPU seconds per wall second, of the serving processes and of the whole machine)", "",
                    "| run | one process s | changes/s | server cores | machine cores | two processes s | changes/s |"
                    " servers cores | machine cores | two / one |",
                    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

            def cells(x: Scale) -> str:
                return f"{x.seconds:.2f} | {total / x.seconds:,.0f} | {x.server_cores:.2f} | {x.box_cores:.2f}"

            for i, (one, two) in enumerate(runs, 1):
                out.append(f"| {i} | {cells(one)} | {cells(two)} | {one.seconds / two.seconds:.2f}x |")
            med_one = Scale(median([r[0].seconds for r in runs]), median([r[0].server_cores for r in runs]),
                            median([r[0].box_cores for r in runs]))
            med_two = Scale(median([r[1].seconds for r in runs]), median([r[1].server_cores for r in runs]),
                            median([r[1].box_cores for r in runs]))
            ratio = median([r[0].seconds / r[1].seconds for r in runs])
            out += [f"| **median** | {cells(med_one)} | {cells(med_two)} | {ratio:.2f}x |", ""]
            verdicts.append(f"| scale-out download | {total / med_two.seconds:,.0f}/s (two) |"
                            f" {total / med_one.seconds:,.0f}/s (one) | {ratio:.2f}x | {SCALE_AIM:g}x aim |"
                            f" {verdict(ratio, SCALE_AIM, None, False)} |")
        if dl_url is not None:
            dbs.drop(dl_url)
        if "fanout" in sections:
            print(f"\nWebsocket fan-out: {args.subscribers:,} subscribers on one process, then spread over two;"
                  f" {args.writes} writes on the first", flush=True)
            url = dbs.create("ws")
            runs_f = bench_fanout(url, args.runs, args.subscribers, args.writes, args.pause, base, args.server_arg)
            dbs.drop(url)
            out += [f"**Websocket fan-out, {args.subscribers:,} subscribers, latency from the write's response (ms)**",
                    "", "| run | one process p50 | p99 | two processes p50 | p99 | p99 on the writer's process |"
                    " p99 on the other | missing |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
            for i, (one, two) in enumerate(runs_f, 1):
                out.append(f"| {i} | {one.p50:.1f} | {one.p99:.1f} | {two.p50:.1f} | {two.p99:.1f} | {two.p99_a:.1f} |"
                           f" {two.p99_b:.1f} | {one.missing + two.missing} |")
            one_p99 = median([r[0].p99 for r in runs_f])
            two_p99 = median([r[1].p99 for r in runs_f])
            out += [f"| **median** | {median([r[0].p50 for r in runs_f]):.1f} | {one_p99:.1f} |"
                    f" {median([r[1].p50 for r in runs_f]):.1f} | {two_p99:.1f} |"
                    f" {median([r[1].p99_a for r in runs_f]):.1f} | {median([r[1].p99_b for r in runs_f]):.1f} | |",
                    ""]
            verdicts.append(f"| fan-out p99, {args.subscribers:,} subscribers | {two_p99:.1f} ms (two) |"
                            f" {one_p99:.1f} ms (one) | {two_p99 / one_p99:.2f}x | (compared) | see the table |")
    finally:
        dbs.drop_all()
        shutil.rmtree(base, ignore_errors=True)

    print("\n" + "\n".join(out))
    print("| figure | server | baseline | ratio (median) | target | verdict |")
    print("|---|---:|---:|---:|---|---|")
    print("\n".join(verdicts))
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
