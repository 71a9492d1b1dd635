"""``run.py backup`` during a write load, and ``run.py restore``.

SQLite only: these are copies of the SQLite file (``VACUUM INTO``); on PostgreSQL the
commands refuse and point to ``pg_dump`` (tests/process/test_cli.py checks that)."""

from __future__ import annotations

import http.client
import json
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from tests.support import ROOT
from tests.support.databases import fill_database
from tests.support.http import call
from tests.support.servers import run_cli

pytestmark = pytest.mark.slow


def test_backup_during_writes_is_consistent_and_restorable(server_process, tmp_path):
    data = tmp_path / "data"
    server = server_process(data_dir=data)
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            call("POST", server.url + "/api/sync/upload/", {"device_id": "d", "changes": [
                {"operation": "create", "resource_type": "Patient", "client_temp_id": f"{i}-{k}",
                 "payload": {"name": f"P{i}-{k}"}} for k in range(50)]})
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        copies = []
        for _n in range(3):
            result = run_cli("backup", str(tmp_path / "backups") + "/", "--data-dir", str(data))
            assert result.returncode == 0, result.stderr
            copies.append(result.stdout.strip())
    finally:
        stop.set()
        thread.join()
    for copy in copies:
        conn = sqlite3.connect(copy)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # a consistent prefix: whole batches only, and the clock matches the rows
        (patients,) = conn.execute("SELECT count(*) FROM patients").fetchone()
        (head,) = conn.execute("SELECT seq FROM clock").fetchone()
        (batches,) = conn.execute("SELECT count(*) FROM batches").fetchone()
        assert patients % 50 == 0 and patients == head == batches * 50
        conn.close()
    # restore refuses while the server runs, works once it is stopped
    refused = run_cli("restore", copies[0], "--data-dir", str(data))
    assert refused.returncode == 1 and "in use" in refused.stderr
    assert server.stop() == 0
    restored = run_cli("restore", copies[0], "--data-dir", str(data))
    assert restored.returncode == 0, restored.stderr
    again = server_process(data_dir=data)
    conn = sqlite3.connect(copies[0])
    (expected,) = conn.execute("SELECT count(*) FROM patients").fetchone()
    conn.close()
    assert len(call("GET", again.url + "/api/patients/")[1]) == expected


def test_restore_refuses_a_damaged_file(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    result = run_cli("restore", str(bad), "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 1 and "integrity_check" in result.stderr and "Traceback" not in result.stderr
    missing = run_cli("restore", str(tmp_path / "nope.db"), "--data-dir", str(tmp_path / "data"))
    assert missing.returncode == 1 and "no backup file" in missing.stderr


def test_backup_finishes_while_devices_upload_non_stop(server_process, tmp_path):
    """On 250 MB with two devices uploading back to back, the stepped backup API
    started over on every commit and never finished (the probe saw it on 265 MB;
    on 160 MB it still finished, by luck between commits). The copy must finish,
    be one snapshot, and not hold the uploads off."""
    data = tmp_path / "data"
    live = data / "healthsync.db"
    filled = fill_database(live, megabytes=250)
    server = server_process(data_dir=data)
    uploads: list[tuple[float, float, int]] = []  # (start, end, status)
    stop = threading.Event()

    def uploader(device: str):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        i = 0
        while not stop.is_set():
            body = json.dumps({"device_id": device, "changes": [
                {"operation": "create", "resource_type": "Patient", "client_temp_id": f"{i}-{k}",
                 "payload": {"name": f"P{i}-{k}"}} for k in range(100)]})
            started = time.monotonic()
            conn.request("POST", "/api/sync/upload/", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            uploads.append((started, time.monotonic(), resp.status))
            i += 1
        conn.close()

    threads = [threading.Thread(target=uploader, args=(f"tablet-{n}",)) for n in range(2)]
    for thread in threads:
        thread.start()
    try:
        while len(uploads) < 6:  # the load is on before the copy starts
            time.sleep(0.05)
        dest = tmp_path / "backups" / "copy.db"
        command = [sys.executable, "run.py", "backup", str(dest), "--data-dir", str(data)]
        # A backup killed mid-copy leaves nothing under the final name.
        crashed = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        partial = dest.with_name("copy.db.partial")
        while crashed.poll() is None and not (partial.exists() and partial.stat().st_size > 0):
            time.sleep(0.001)
        crashed.kill()
        assert crashed.wait() == -9, "the copy ended before it could be killed"
        assert not dest.exists()
        began = time.monotonic()
        try:
            result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the backup did not finish within 60 s under uploads")
        ended = time.monotonic()
        time.sleep(0.5)  # and it is still on after
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert result.returncode == 0, result.stderr
    assert [p.name for p in dest.parent.iterdir()] == ["copy.db"]  # the crashed copy's partial file is gone too
    during = [u for u in uploads if u[0] <= ended and u[1] >= began]
    assert len(during) >= 2 and all(status == 200 for *_, status in uploads)
    assert max(end - start for start, end, _ in during) < 10, "uploads were held off during the copy"
    assert uploads[-1][0] > ended  # writers went on after it

    copy = sqlite3.connect(f"file:{dest}?mode=ro", uri=True)
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    (head,) = copy.execute("SELECT seq FROM clock").fetchone()
    copied = set(copy.execute("SELECT id, seq FROM patients"))
    copy.close()
    conn = sqlite3.connect(f"file:{live}?mode=ro", uri=True)
    expected = set(conn.execute("SELECT id, seq FROM patients WHERE seq <= ?", (head,)))
    (live_head,) = conn.execute("SELECT seq FROM clock").fetchone()
    conn.close()
    # a prefix of seq: every row up to the copy's head, none above (creates only, so rows keep their seq)
    assert head >= filled and live_head > head
    assert copied == expected and len(copied) == head
