"""Graceful shutdown: an in-flight upload completes and is answered, or is not applied."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time

import pytest

from tests.process.test_crash import N, post_batch

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("delay", [0.05, 0.2])
def test_sigterm_with_an_upload_in_flight(server_process, tmp_path, delay):
    data = tmp_path / "data"
    server = server_process(data_dir=data)
    outcome: dict = {}
    sender = threading.Thread(target=post_batch, args=(server.url, "dev", outcome))
    sender.start()
    time.sleep(delay)
    assert server.stop(signal.SIGTERM) == 0
    sender.join()
    conn = sqlite3.connect(data / "healthsync.db")
    (patients,) = conn.execute("SELECT count(*) FROM patients").fetchone()
    conn.close()
    if outcome.get("status") == 200:
        assert patients == N
    else:
        assert patients == 0, "applied but never answered"
    assert "stopped" in "".join(server.log)
