"""``run.py backup`` during a write load, and ``run.py restore``."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from tests.process.test_cli import call, run_cli

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
