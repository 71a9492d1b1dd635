"""Benchmark of compression on slow links: bytes on the wire and server CPU.

Run by hand, never in CI (about 2-4 minutes on a 2-core box)::

    .venv/bin/python bench/bench_compression.py                 # 100,000 changes, pages of 5,000, 3 runs
    .venv/bin/python bench/bench_compression.py --changes 20000 --runs 1

Against a real server (``run.py --port 0 --no-worker`` on a data dir holding
``--changes`` patients, built as ``bench_sync.py`` builds its own), over
127.0.0.1:

1. Download: the whole history from ``cursor=0`` in pages of ``--page``
   (5,000, the README's advice for a first sync), once without
   ``Accept-Encoding`` and once with ``Accept-Encoding: gzip``.  Bytes on the
   wire are the response bodies plus their header blocks; server CPU is the
   server process's user+system time (``/proc/<pid>/stat``) over the whole
   download; the wall time is on loopback, so it shows CPU, not a slow link.
   The time the same bytes take on a slow link is worked out from the bytes
   (``--link-kbit``, 1,000 kbit/s by default: a fair 3G connection).
2. The websocket catch-up: ``/api/sync/ws?cursor=0`` read until it has all
   the changes, once without and once with permessage-deflate offered
   (Tornado's client, ``compression_options={}``).  Bytes are the frames on
   the wire (Tornado's ``_wire_bytes_in``), CPU as above.
3. gzip levels: one download page compressed here with zlib at levels 1, 6
   and 9 (the CPU a level costs for the bytes it saves; the server uses 6).
4. Upload: one upload of ``--upload`` patient creates, plain and gzipped:
   its bytes and the server's CPU for it.

Each figure is the median over ``--runs`` runs; the modes alternate within a
run.  ``--json FILE`` keeps every run's numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Server, filled_database, machine, patient_payloads  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def header_bytes(resp: http.client.HTTPResponse) -> int:
    """The size of a response's status line and header block, as sent."""
    lines = [f"HTTP/1.1 {resp.status} {resp.reason}"] + [f"{k}: {v}" for k, v in resp.getheaders()]
    return sum(len(line) + 2 for line in lines) + 2


def download(server: Server, page: int, expect: int, gzipped: bool) -> dict[str, float]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=600)
    headers = {"Accept-Encoding": "gzip"} if gzipped else {}
    conn.request("GET", "/api/sync/download/?cursor=0&limit=1", headers=headers)  # connect first
    conn.getresponse().read()
    wire = body_bytes = 0
    count = 0
    cursor = "0"
    cpu0, t0 = cpu_seconds(server.pid), time.perf_counter()
    while True:
        conn.request("GET", f"/api/sync/download/?cursor={cursor}&limit={page}", headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise SystemExit(f"download answered {resp.status}: {data[:300]!r}")
        wire += header_bytes(resp) + len(data)
        if gzipped:
            if resp.getheader("Content-Encoding") != "gzip":
                raise SystemExit("asked for gzip, got none")
            data = gzip.decompress(data)
        body_bytes += len(data)
        doc = orjson.loads(data)
        count += len(doc["changes"])
        cursor = doc["cursor"]
        if not doc["has_more"]:
            break
    seconds, cpu = time.perf_counter() - t0, cpu_seconds(server.pid) - cpu0
    conn.close()
    if count != expect:
        raise SystemExit(f"download returned {count} changes, expected {expect}")
    return {"wire_bytes": wire, "json_bytes": body_bytes, "server_cpu_s": cpu, "wall_s": seconds}


async def catch_up(server: Server, expect: int, deflate: bool) -> dict[str, float]:
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    url = f"ws://{server.host}:{server.port}/api/sync/ws?cursor=0"
    cpu0, t0 = cpu_seconds(server.pid), time.perf_counter()
    conn = await websocket_connect(HTTPRequest(url), compression_options={} if deflate else None,
                                   max_message_size=256 << 20)
    agreed = "permessage-deflate" in conn.headers.get("Sec-WebSocket-Extensions", "")
    if agreed != deflate:
        raise SystemExit(f"permessage-deflate {'not ' if deflate else ''}agreed")
    count = 0
    while count < expect:
        raw = await asyncio.wait_for(conn.read_message(), 120)
        if raw is None:
            raise SystemExit("socket closed during the catch-up")
        msg = orjson.loads(raw)
        if msg["type"] == "changes":
            count += len(msg["changes"])
    seconds, cpu = time.perf_counter() - t0, cpu_seconds(server.pid) - cpu0
    proto = conn.protocol
    wire, message = proto._wire_bytes_in, proto._message_bytes_in  # type: ignore[attr-defined]
    conn.close()
    return {"wire_bytes": wire, "json_bytes": message, "server_cpu_s": cpu, "wall_s": seconds}


def upload(server: Server, n: int, gzipped: bool, run: int) -> dict[str, float]:
    changes = [{"operation": "create", "resource_type": "Patient", "client_temp_id": f"u{run}-{i}", "payload": p}
               for i, p in enumerate(patient_payloads(n, seed=run + 11))]
    body = orjson.dumps({"device_id": f"bench-{run}-{int(gzipped)}", "changes": changes})
    headers = {"Content-Type": "application/json"}
    if gzipped:
        body = gzip.compress(body, 6)
        headers["Content-Encoding"] = "gzip"
    conn = http.client.HTTPConnection(server.host, server.port, timeout=600)
    conn.request("GET", "/api/health/")
    conn.getresponse().read()
    cpu0 = cpu_seconds(server.pid)
    conn.request("POST", "/api/sync/upload/", body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    cpu = cpu_seconds(server.pid) - cpu0
    conn.close()
    if resp.status != 200:
        raise SystemExit(f"upload answered {resp.status}: {data[:300]!r}")
    return {"wire_bytes": len(body), "server_cpu_s": cpu}


def levels(server: Server, page: int, repeat: int = 5) -> dict[int, dict[str, float]]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=600)
    conn.request("GET", f"/api/sync/download/?cursor=0&limit={page}")
    data = conn.getresponse().read()
    conn.close()
    out = {}
    for level in (1, 6, 9):
        times = []
        for _ in range(repeat):
            t0 = time.process_time()
            size = len(gzip.compress(data, level))
            times.append(time.process_time() - t0)
        out[level] = {"json_bytes": len(data), "gzip_bytes": size, "cpu_ms": 1000 * statistics.median(times)}
    # permessage-deflate's own framing of the same page (raw deflate, level 6)
    z = zlib.compressobj(6, zlib.DEFLATED, -15)
    out[0] = {"json_bytes": len(data), "gzip_bytes": len(z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)) - 4,
              "cpu_ms": 0.0}
    return out


def med(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--changes", type=int, default=100_000, help="changes in the history (default 100,000)")
    p.add_argument("--page", type=int, default=5000, help="download page size (default 5,000)")
    p.add_argument("--upload", type=int, default=5000, help="creates in the upload measured (default 5,000)")
    p.add_argument("--runs", type=int, default=3, help="runs per figure (default 3)")
    p.add_argument("--link-kbit", type=float, default=1000, help="slow link for the worked-out times (default 1000)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write every run's figures as JSON")
    p.add_argument("--keep", action="store_true", help="keep the data dir and the server's log")
    opts = p.parse_args()

    base = Path(tempfile.mkdtemp(prefix="bench-compression-"))
    data_dir = base / "data"
    data_dir.mkdir()
    print(f"building a database of {opts.changes:,} patients ...", file=sys.stderr)
    filled_database(data_dir / "healthsync.db", opts.changes)
    results: dict[str, Any] = {"machine": machine(), "options": vars(opts), "runs": []}
    server = Server(data_dir, ["--no-worker", "--log-level", "WARNING"]).start()
    try:
        results["levels"] = levels(server, opts.page)
        for run in range(opts.runs):
            order = [False, True] if run % 2 == 0 else [True, False]
            r: dict[str, Any] = {}
            for z in order:
                r[f"download_{'gzip' if z else 'plain'}"] = download(server, opts.page, opts.changes, z)
                r[f"ws_{'deflate' if z else 'plain'}"] = asyncio.run(catch_up(server, opts.changes, z))
            results["runs"].append(r)
            print(f"  run {run + 1}/{opts.runs}: " + ", ".join(
                f"{k} {mb(v['wire_bytes'])} {v['server_cpu_s']:.2f}s cpu" for k, v in r.items()), file=sys.stderr)
        ups: dict[str, list[dict[str, float]]] = {"plain": [], "gzip": []}
        for run in range(opts.runs):
            for z in ([False, True] if run % 2 == 0 else [True, False]):
                ups["gzip" if z else "plain"].append(upload(server, opts.upload, z, run))
        results["uploads"] = ups
    finally:
        server.stop()
        if not opts.keep:
            shutil.rmtree(base, ignore_errors=True)

    runs = results["runs"]
    m = results["machine"]
    print(f"\nMachine: {m['nproc']} of {m['cpus']} CPUs ({m['cpu']}), {m['memory']}, Python {m['python']}; "
          f"median of {opts.runs} runs; {opts.changes:,} changes (patients)\n")
    kbit = opts.link_kbit
    print(f"| {opts.changes:,}-change first sync | on the wire | server CPU | loopback wall | at {kbit:,.0f} kbit/s |")
    print("|---|---:|---:|---:|---:|")
    for key, label in (("download_plain", f"download, pages of {opts.page:,}, no gzip"),
                       ("download_gzip", f"download, pages of {opts.page:,}, gzip"),
                       ("ws_plain", "websocket catch-up, no compression"),
                       ("ws_deflate", "websocket catch-up, permessage-deflate")):
        wire = med([r[key] for r in runs], "wire_bytes")
        print(f"| {label} | {mb(wire)} | {med([r[key] for r in runs], 'server_cpu_s'):.2f} s "
              f"| {med([r[key] for r in runs], 'wall_s'):.2f} s | {wire * 8 / kbit / 1000 / 60:.1f} min |")
    print(f"\n| one page of {opts.page:,} ({mb(results['levels'][1]['json_bytes'])} of JSON) | compressed | CPU |")
    print("|---|---:|---:|")
    for level in (1, 6, 9):
        lv = results["levels"][level]
        print(f"| gzip level {level} | {mb(lv['gzip_bytes'])} ({lv['gzip_bytes'] / lv['json_bytes']:.1%}) "
              f"| {lv['cpu_ms']:.0f} ms |")
    print(f"\n| upload of {opts.upload:,} creates | on the wire | server CPU |")
    print("|---|---:|---:|")
    for key in ("plain", "gzip"):
        print(f"| {key} | {mb(med(ups[key], 'wire_bytes'))} | {med(ups[key], 'server_cpu_s'):.2f} s |")
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
