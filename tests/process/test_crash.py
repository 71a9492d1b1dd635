"""A batch is all there or absent after the server is killed mid-apply, and
retrying it after the restart creates nothing twice (its temp ids may not
have been written yet when the server died: they are written after the
answer).  On both backends: on PostgreSQL the killed process's transaction is rolled
back by the server."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest

from tests.support import postgres as pg
from tests.support.databases import execute
from tests.support.servers import make_settings

pytestmark = [pytest.mark.slow, pytest.mark.both_backends]

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


def count(settings) -> tuple[int, int, int, int]:
    if not settings.database_url:
        assert execute(settings, "PRAGMA integrity_check")[0][0] == "ok"
    return (
        execute(settings, "SELECT count(*) FROM patients")[0][0],
        execute(settings, "SELECT count(*) FROM devices")[0][0],
        execute(settings, "SELECT count(*) FROM batches")[0][0],
        execute(settings, "SELECT seq FROM clock")[0][0],
    )


def test_sigkill_mid_batch_leaves_all_or_nothing(server_process, tmp_path, database_url):
    def fresh(data):
        """Settings of a new, empty database: a new data dir, and on PostgreSQL an empty schema."""
        if database_url:
            pg.empty_schema(database_url)
        return make_settings(data, database_url=database_url)

    # How long does one batch take here?  Kill at fractions of that, so some
    # kills land while the write transaction is open, on any machine speed.
    calibrate = server_process(data_dir=tmp_path / "calibrate")
    started = time.monotonic()
    post_batch(calibrate.url, "calibrate", outcome := {})
    took = time.monotonic() - started
    assert outcome.get("status") == 200
    calibrate.stop()

    # Fewer kills on PostgreSQL, where a batch takes longer: time, not coverage (the kill
    # lands inside the open transaction either way).
    fractions = [0.5, 0.9] if database_url else [0.45, 0.6, 0.7, 0.8, 0.9, 0.97]
    for n, fraction in enumerate(fractions):
        data = tmp_path / f"data{n}"
        settings = fresh(data)
        server = server_process(data_dir=data)
        outcome = {}
        sender = threading.Thread(target=post_batch, args=(server.url, "crashy", outcome))
        sender.start()
        time.sleep(took * fraction)
        server.kill()
        sender.join()
        counts = count(settings)
        assert counts in [(0, 0, 0, 0), (N, 1, 1, N)], (fraction, counts)
        if outcome.get("status") == 200:
            assert counts[0] == N  # an acknowledged batch survived the kill

        # the server starts again on that file; the device retries the batch
        again = server_process(data_dir=data)
        post_batch(again.url, "crashy", outcome := {})
        assert outcome.get("status") == 200
        again.stop()
        assert count(settings)[:3] == (N, 1, counts[2] + 1)  # made once, whichever try did
        # and every create is remembered, once
        assert execute(settings, "SELECT count(*) FROM temp_ids")[0][0] == N
