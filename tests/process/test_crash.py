"""A batch is all there or absent after the server is killed mid-apply, and
retrying it after the restart creates nothing twice (its temp ids may not
have been written yet when the server died: they are written after the
answer)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import urllib.request

import pytest

pytestmark = pytest.mark.slow

N = 10_000


def post_batch(url: str, device: str, outcome: dict) -> None:
    changes = [
        {"operation": "create", "resource_type": "Patient", "client_temp_id": f"{device}-{i}",
         "payload": {"name": f"Patient {i}", "identifiers": {"mrn": str(i)}}}
        for i in range(N)
    ]
    body = json.dumps({"device_id": device, "changes": changes}).encode()
    req = urllib.request.Request(url + "/api/sync/upload/", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            outcome["status"] = resp.status
    except Exception as exc:  # the server died under us
        outcome["error"] = repr(exc)


def count(path) -> tuple[int, int, int, int]:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return (
            conn.execute("SELECT count(*) FROM patients").fetchone()[0],
            conn.execute("SELECT count(*) FROM devices").fetchone()[0],
            conn.execute("SELECT count(*) FROM batches").fetchone()[0],
            conn.execute("SELECT seq FROM clock").fetchone()[0],
        )
    finally:
        conn.close()


def test_sigkill_mid_batch_leaves_all_or_nothing(server_process, tmp_path):
    # How long does one batch take here?  Kill at fractions of that, so some
    # kills land while the write transaction is open, on any machine speed.
    calibrate = server_process(data_dir=tmp_path / "calibrate")
    started = time.monotonic()
    post_batch(calibrate.url, "calibrate", outcome := {})
    took = time.monotonic() - started
    assert outcome.get("status") == 200
    calibrate.stop()

    for n, fraction in enumerate([0.45, 0.6, 0.7, 0.8, 0.9, 0.97]):
        data = tmp_path / f"data{n}"
        server = server_process(data_dir=data)
        outcome = {}
        sender = threading.Thread(target=post_batch, args=(server.url, "crashy", outcome))
        sender.start()
        time.sleep(took * fraction)
        server.kill()
        sender.join()
        counts = count(data / "healthsync.db")
        assert counts in [(0, 0, 0, 0), (N, 1, 1, N)], (fraction, counts)
        if outcome.get("status") == 200:
            assert counts[0] == N  # an acknowledged batch survived the kill

        # the server starts again on that file; the device retries the batch
        again = server_process(data_dir=data)
        post_batch(again.url, "crashy", outcome := {})
        assert outcome.get("status") == 200
        again.stop()
        assert count(data / "healthsync.db")[:3] == (N, 1, counts[2] + 1)  # made once, whichever try did
        conn = sqlite3.connect(data / "healthsync.db")
        try:  # and every create is remembered, once
            assert conn.execute("SELECT count(*) FROM temp_ids").fetchone()[0] == N
        finally:
            conn.close()
