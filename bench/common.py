"""Helpers for the hand-run benchmarks in ``bench/``: a server subprocess, a
keep-alive JSON client, a baseline database with the server's schema, and the
fake clinic data both sides write.

Nothing here is imported by HealthSync or its tests.
"""

from __future__ import annotations

import http.client
import os
import random
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from healthsync.storage.sqlite.migrations import LATEST, MIGRATIONS, statements  # noqa: E402

_LISTENING = re.compile(r"listening on http://([0-9.]+):(\d+)")

SURNAMES = ["Okafor", "Nguyen", "Garcia", "Smith", "Kowalski", "Haddad", "Silva", "Ivanova", "Mensah",
            "Tanaka"]
GIVEN = ["Amina", "John", "Maria", "Wei", "Fatima", "Lucas", "Priya", "Omar", "Sofia", "Kwame"]


# The server --------------------------------------------------------------------


class Server:
    """``python run.py --port 0 --data-dir D`` as a subprocess; stderr goes to ``D/../server.log``."""

    def __init__(self, data_dir: Path, extra_args: list[str] | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.server.log"
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.host = "127.0.0.1"
        self.port = 0

    def start(self, timeout: float = 30.0) -> Server:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "run.py", "--port", "0", "--data-dir", str(self.data_dir), *self.extra_args],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            m = _LISTENING.search(text)
            if m:
                self.host, self.port = m.group(1), int(m.group(2))
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not log its port within {timeout}s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def client(self) -> Client:
        return Client(self.host, self.port)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class Client:
    """One keep-alive HTTP/1.1 connection (``http.client``)."""

    def __init__(self, host: str, port: int) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=600)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        self.conn.request(method, path, body=body, headers=headers)
        resp = self.conn.getresponse()
        data = resp.read()  # read to the end so the connection can be reused
        return resp.status, data

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        return self.request("POST", path, body)

    def get(self, path: str) -> tuple[int, bytes]:
        return self.request("GET", path)

    def close(self) -> None:
        self.conn.close()


# The baseline database ---------------------------------------------------------------


def baseline_db(path: Path) -> sqlite3.Connection:
    """A fresh SQLite file with HealthSync's schema and the server's pragmas.

    Autocommit mode (``isolation_level=None``): the caller writes BEGIN/COMMIT.
    """
    conn = sqlite3.connect(path, isolation_level=None)
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    assert mode.lower() == "wal", mode
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("BEGIN IMMEDIATE")
    for _name, script in MIGRATIONS:
        for statement in statements(script):
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {LATEST}")
    conn.execute("COMMIT")
    return conn


def filled_database(path: Path, n: int, seed: int = 3) -> tuple[list[str], list[dict[str, Any]]]:
    """A database file holding ``n`` patients, as the server would have left it.

    The server's own code makes the file (``Database.open`` runs the
    migrations and sets the pragmas); then the patients go in by raw
    ``executemany``, 10,000 per transaction, with ``seq`` and ``updated_at``
    strictly increasing (one second apart, ending an hour ago) and the clock
    row advanced to match, as creates through the write path would leave
    them.  The WAL is checkpointed and removed, so the file can be copied.
    Returns the patients' ids and payloads (``patient_payloads``), in order.
    """
    import asyncio

    from healthsync.storage import Database

    async def migrate() -> None:
        db = Database(path, readers=1)
        await db.open()
        await db.close()

    asyncio.run(migrate())
    payloads = patient_payloads(n, seed=seed, start=10**7)
    ids = [new_id() for _ in range(n)]
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")  # only building the starting file
        us = time.time_ns() // 1000 - (n + 3600) * 1_000_000
        for start in range(0, n, 10_000):
            rows = []
            for seq in range(start + 1, min(n, start + 10_000) + 1):
                us += 1_000_000
                at = iso_us(us)
                p = payloads[seq - 1]
                rows.append((ids[seq - 1], None, p["name"], p["dob"], orjson.dumps(p["identifiers"]).decode(),
                             None, 1, at, 0, seq, at))
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO patients (id, owner, name, dob, identifiers, fhir, server_version,"
                " updated_at, deleted, seq, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.execute("UPDATE clock SET seq = ?, last_us = ? WHERE id = 1", (rows[-1][9], us))
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return ids, payloads


def open_like_server(path: Path) -> sqlite3.Connection:
    """A connection to an existing file with the server's pragmas (autocommit mode)."""
    conn = sqlite3.connect(path, isolation_level=None)
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    assert mode.lower() == "wal", mode
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def iso_us(us: int) -> str:
    """Canonical UTC text like the server's ``updated_at``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(us // 1_000_000)) + f".{us % 1_000_000:06d}Z"


class Stamps:
    """(seq, updated_at) pairs like ``WriteTx.stamp``: strictly increasing."""

    def __init__(self, seq: int = 0, last_us: int = 0) -> None:
        self.seq = seq
        self.last_us = last_us

    def next(self) -> tuple[int, str]:
        now = time.time_ns() // 1000
        self.last_us = now if now > self.last_us else self.last_us + 1
        self.seq += 1
        return self.seq, iso_us(self.last_us)


# Data --------------------------------------------------------------------------------


def patient_payloads(n: int, seed: int = 1, start: int = 0) -> list[dict[str, Any]]:
    """``n`` small, realistic patient payloads: name, dob, identifiers {"mrn"}."""
    rnd = random.Random(seed)
    first_day = date(1935, 1, 1)
    out = []
    for i in range(start, start + n):
        out.append(
            {
                "name": f"{rnd.choice(GIVEN)} {rnd.choice(SURNAMES)}",
                "dob": (first_day + timedelta(days=rnd.randrange(0, 32000))).isoformat(),
                "identifiers": {"mrn": f"MRN-{i:08d}"},
            }
        )
    return out


def observation_payload(rnd: random.Random, patient_temp_id: str) -> dict[str, Any]:
    """A small FHIR-like Observation (blood pressure / heart rate / weight)."""
    kind = rnd.randrange(3)
    if kind == 0:
        data: dict[str, Any] = {
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
            "valueQuantity": {"value": rnd.randrange(50, 120), "unit": "/min"},
        }
    elif kind == 1:
        data = {
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body weight"}]},
            "valueQuantity": {"value": round(rnd.uniform(3, 120), 1), "unit": "kg"},
        }
    else:
        data = {
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic BP"}]},
            "valueQuantity": {"value": rnd.randrange(90, 180), "unit": "mm[Hg]"},
        }
    data["effectiveDateTime"] = f"2025-{rnd.randrange(1, 13):02d}-{rnd.randrange(1, 29):02d}T10:00:00Z"
    data["patient_temp_id"] = patient_temp_id
    return data


def new_id() -> str:
    return str(uuid.uuid4())


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


# Figures -------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine() -> dict[str, str]:
    """What the README's results table needs to say about the box."""

    def sh(cmd: str) -> str:
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:  # pragma: no cover - informational only
            return "?"

    model = sh("lscpu | grep 'Model name'").split(":", 1)[-1].strip()
    mem = sh("free -h | awk '/^Mem:/ {print $2}'")
    return {
        "cpus": str(os.cpu_count()),
        "nproc": sh("nproc"),
        "cpu": model,
        "memory": mem,
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "orjson": orjson.__version__,
    }
