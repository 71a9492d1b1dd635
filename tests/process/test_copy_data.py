"""``run.py copy-data``: a clinic box's SQLite data dir into PostgreSQL and back, as
real ``run.py`` processes, served and compared through the real API."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support import ROOT
from tests.support.dashboard import Api, create_token
from tests.support.databases import fill_database
from tests.support.servers import run_cli

pytestmark = pytest.mark.slow

TABLES = ("patients", "records", "batches", "temp_ids", "conflicts", "devices", "tokens", "audit", "clock")


def raw_get(base: str, path: str, token: str) -> bytes:
    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
        return resp.read()


def status_of(base: str, path: str, token: str) -> int:
    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        err.close()
        return err.code


def wait_done(api: Api, batch_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        batch = api.get(f"/api/sync/batches/{batch_id}/")
        if batch["status"] in ("done", "failed"):
            return batch
        time.sleep(0.05)
    raise AssertionError(f"batch {batch_id} not done: {batch}")


def sqlite_tables(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every copied table of a SQLite file, rowids included, in rowid order (temp_ids has none)."""
    conn = sqlite3.connect(db)
    try:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY device_id, client_temp_id" if t == "temp_ids"
                                else f"SELECT rowid, * FROM {t} ORDER BY rowid").fetchall() for t in TABLES}
    finally:
        conn.close()


def pg_counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES if t != "clock"}
        counts["clock"] = conn.execute("SELECT seq FROM clock").fetchone()[0]
    return counts


def upload_body(batch_id: str, changes: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"device_id": "tab-1", "batch_id": batch_id, "changes": changes, **extra}


def new_patient_change(temp_id: str, name: str) -> dict[str, Any]:
    return {"operation": "create", "resource_type": "Patient", "client_temp_id": temp_id, "payload": {"name": name}}


def build_box(server_process, data: Path) -> dict[str, Any]:
    """A token-mode clinic box with every kind of row, built through the real API;
    what its downloads and uploads answered, for comparing with the copies."""
    box: dict[str, Any] = {"tokens": {
        "admin": create_token(data, "admin", "it"),
        "device": create_token(data, "device", "tab-1"),
        "dashboard": create_token(data, "dashboard", "front-desk"),
        "revoked": create_token(data, "device", "tab-lost"),
    }}
    revoked = run_cli("token", "revoke", "tab-lost", "--data-dir", str(data))
    assert revoked.returncode == 0, revoked.stderr
    server = server_process("--auth", "token", data_dir=data)
    admin = Api(server.url, box["tokens"]["admin"])
    device = Api(server.url, box["tokens"]["device"])

    kept = admin.new_patient("Maria Garcia")
    gone = admin.new_patient("John Smith")
    admin.new_record(kept["id"], value=120, unit="mmHg")
    # Text that COPY and the checksum must carry as it is: tabs, newlines, backslashes, quotes, non-ASCII.
    admin.new_record(kept["id"], resource_type="Condition", note="line 1\nline\t2 \\N \\ \"q\" 'a' Zoë 日本 🩺")
    dropped = admin.new_record(kept["id"], value=80)
    admin.new_record(gone["id"], value=1)
    admin.call("DELETE", f"/api/records/{dropped['id']}/")
    admin.call("DELETE", f"/api/patients/{gone['id']}/")  # tombstones the patient and its record

    # An upload that creates a patient and its observation under temp ids (batch B1).
    b1 = upload_body(str(uuid.uuid4()), [
        new_patient_change("t-patient", "Aisha Okafor"),
        {"operation": "create", "resource_type": "Observation", "client_temp_id": "t-obs",
         "payload": {"patient_temp_id": "t-patient", "value": 37.2}},
    ])
    box["b1"], box["b1_response"] = b1, device.call("POST", "/api/sync/upload/", b1)
    assert [r["status"] for r in box["b1_response"]["results"]] == ["created", "created"]

    # Two conflicts (a stale base_version); one of them resolved.
    for name in ("Maria G.", "Maria Garcia-Lopez"):
        out = device.upload("tab-1", [{"operation": "update", "resource_type": "Patient", "server_id": kept["id"],
                                       "base_version": 0, "payload": {"name": name}}])
        assert out["conflicts"], out
    conflicts = admin.get("/api/conflicts/")
    assert len(conflicts) == 2
    admin.call("PATCH", f"/api/conflicts/{conflicts[0]['id']}/", {"resolved": True, "resolution": "kept server"})

    # Async batches: one applied by the worker (done), one left pending.
    b3 = upload_body(str(uuid.uuid4()), [new_patient_change("t-async-done", "Chen Wang")], **{"async": True})
    assert device.call("POST", "/api/sync/upload/", b3)["status"] == "pending"
    device.call("POST", f"/api/sync/trigger/{b3['batch_id']}/")
    box["b3_batch"] = wait_done(admin, b3["batch_id"])
    assert box["b3_batch"]["status"] == "done"
    b2 = upload_body(str(uuid.uuid4()), [new_patient_change("t-async-pending", "Olga Petrova")], **{"async": True})
    assert device.call("POST", "/api/sync/upload/", b2)["status"] == "pending"
    box["b2"] = b2

    # A device that downloaded part of the history keeps a cursor.
    dash = box["tokens"]["dashboard"]
    box["cursor"] = Api(server.url, dash).get("/api/sync/download/?cursor=0&limit=3")["cursor"]
    box["full"] = raw_get(server.url, "/api/sync/download/?cursor=0", dash)
    box["since"] = raw_get(server.url, "/api/sync/download/?since=1970-01-01T00:00:00Z", dash)
    box["from_cursor"] = raw_get(server.url, f"/api/sync/download/?cursor={box['cursor']}", dash)
    box["patients"] = admin.get("/api/patients/?include_deleted=true")
    box["conflicts"] = admin.get("/api/conflicts/")
    assert server.stop() == 0
    conn = sqlite3.connect(data / "healthsync.db")
    (box["head"],) = conn.execute("SELECT seq FROM clock").fetchone()
    conn.close()
    return box


def check_served(server, box: dict[str, Any]) -> None:
    """A server on a copy answers as the box did, honours old retries, and continues after its head."""
    tokens = box["tokens"]
    dash, admin, device = tokens["dashboard"], Api(server.url, tokens["admin"]), Api(server.url, tokens["device"])
    # Downloads: full, by `since`, and from a cursor taken on the box before the copy: the same bytes.
    assert raw_get(server.url, "/api/sync/download/?cursor=0", dash) == box["full"]
    assert raw_get(server.url, "/api/sync/download/?since=1970-01-01T00:00:00Z", dash) == box["since"]
    assert raw_get(server.url, f"/api/sync/download/?cursor={box['cursor']}", dash) == box["from_cursor"]
    assert admin.get("/api/patients/?include_deleted=true") == box["patients"]
    assert admin.get("/api/conflicts/") == box["conflicts"]
    assert sorted(c["resolved"] for c in box["conflicts"]) == [False, True]
    # Old retries: the same batch_id gets the stored answer; the same client_temp_id the same item.
    assert device.call("POST", "/api/sync/upload/", box["b1"]) == box["b1_response"]
    assert admin.get(f"/api/sync/batches/{box['b3_batch']['batch_id']}/") == box["b3_batch"]
    again = device.call("POST", "/api/sync/upload/", upload_body(str(uuid.uuid4()), [
        new_patient_change("t-patient", "Aisha Okafor")]))
    assert again["results"][0]["server_id"] == box["b1_response"]["results"][0]["server_id"]
    assert len(admin.get("/api/patients/?include_deleted=true")) == len(box["patients"])
    # Tokens: live ones work, the revoked one does not.
    assert status_of(server.url, "/api/patients/", tokens["revoked"]) == 401
    assert status_of(server.url, "/api/patients/", dash) == 200
    # New writes continue after the old head: the next seq, nothing skipped.
    fresh = admin.new_patient("Kofi Mensah")
    after = admin.get(f"/api/sync/download/?cursor={box['head']}")
    assert [c["server_id"] for c in after["changes"]] == [fresh["id"]]
    assert after["cursor"] == str(box["head"] + 1)
    # The batch left pending is applied on the new site once triggered.
    device.call("POST", f"/api/sync/trigger/{box['b2']['batch_id']}/")
    assert wait_done(admin, box["b2"]["batch_id"])["status"] == "done"


def test_a_box_copied_to_postgres_and_back_serves_the_same(server_process, postgres_url, tmp_path):
    src, back = tmp_path / "box", tmp_path / "back"
    box = build_box(server_process, src)

    there = run_cli("copy-data", str(src), postgres_url)
    assert there.returncode == 0, there.stderr
    assert "patients: 4/4 rows copied" in there.stderr and "checked:" in there.stderr
    assert f"clock seq {box['head']}" in there.stderr
    home = run_cli("copy-data", postgres_url, str(back))
    assert home.returncode == 0, home.stderr
    # The round trip is exact: every row, rowids (the page keys) included, and the clock.
    assert sqlite_tables(back / "healthsync.db") == sqlite_tables(src / "healthsync.db")

    on_pg = server_process("--auth", "token", "--database-url", postgres_url, data_dir=tmp_path / "pg-site")
    check_served(on_pg, box)
    assert on_pg.stop() == 0
    on_back = server_process("--auth", "token", data_dir=back)
    check_served(on_back, box)
    assert on_back.stop() == 0


def test_a_non_empty_target_is_refused(postgres_url, tmp_path):
    src = tmp_path / "box"
    assert run_cli("demo", "--patients", "3", "--seed", "1", "--data-dir", str(src)).returncode == 0
    assert run_cli("copy-data", str(src), postgres_url).returncode == 0
    before = pg_counts(postgres_url)
    again = run_cli("copy-data", str(src), postgres_url)
    assert again.returncode == 2
    assert "is not empty (patients (3)" in again.stderr and "nothing was changed" in again.stderr
    assert pg_counts(postgres_url) == before
    # A SQLite target too, and the same place twice.
    into_itself = run_cli("copy-data", str(src), str(src))
    assert into_itself.returncode == 2 and "the same place" in into_itself.stderr
    other = tmp_path / "other"
    assert run_cli("demo", "--patients", "1", "--data-dir", str(other)).returncode == 0
    refused = run_cli("copy-data", postgres_url, str(other))
    assert refused.returncode == 2 and "is not empty" in refused.stderr and "Traceback" not in refused.stderr


def test_unreachable_postgres_and_bad_sources_are_named(tmp_path):
    src = tmp_path / "box"
    assert run_cli("demo", "--patients", "1", "--data-dir", str(src)).returncode == 0
    nowhere = "postgresql://postgres:secret@127.0.0.1:1/healthsync"
    for args in ((str(src), nowhere), (nowhere, str(tmp_path / "new"))):
        out = run_cli("copy-data", *args)
        assert out.returncode == 1, out.stderr
        assert "cannot reach the PostgreSQL database postgresql://postgres:***@127.0.0.1:1/healthsync" in out.stderr
        assert "Traceback" not in out.stderr and "secret" not in out.stderr
    (tmp_path / "empty").mkdir()
    for missing in (tmp_path / "nope", tmp_path / "empty"):
        out = run_cli("copy-data", str(missing), str(tmp_path / "new"))
        assert out.returncode == 2 and "is not a HealthSync data dir" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    assert not (tmp_path / "new").exists()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "healthsync.db").write_bytes(b"not a database at all" * 100)
    out = run_cli("copy-data", str(tmp_path / "junk"), str(tmp_path / "new"))
    assert out.returncode == 2 and "is not a HealthSync database" in out.stderr and "Traceback" not in out.stderr


def test_a_data_dir_in_use_is_refused(server_process, postgres_url, tmp_path):
    src = tmp_path / "box"
    server = server_process(data_dir=src)
    out = run_cli("copy-data", str(src), postgres_url)
    assert out.returncode == 2 and "in use by a running server" in out.stderr and "stop it first" in out.stderr
    assert not _has_schema(postgres_url)  # refused before the target was touched
    assert server.stop() == 0
    assert run_cli("copy-data", str(src), postgres_url).returncode == 0


def _has_schema(url: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT to_regclass('clock') IS NOT NULL").fetchone()[0]


def test_a_copy_that_fails_midway_leaves_the_target_empty(postgres_url, tmp_path):
    """A record whose patient is not there (a file edited by hand) fails PostgreSQL's
    foreign key after all the patients went in: everything is undone."""
    src = tmp_path / "box"
    src.mkdir()
    head = fill_database(src / "healthsync.db", megabytes=20)
    conn = sqlite3.connect(src / "healthsync.db")
    conn.execute(
        "INSERT INTO records (id, patient, resource_type, data, server_version, updated_at, seq, deleted,"
        " created_at) VALUES (?, 'no-such-patient', 'Observation', '{}', 1, '2999-01-01T00:00:00.000000Z', ?,"
        " 0, '2999-01-01T00:00:00.000000Z')", (str(uuid.uuid4()), head + 1))
    conn.commit()
    conn.close()
    out = run_cli("copy-data", str(src), postgres_url)
    assert out.returncode == 1, out.stderr
    assert "patients: " in out.stderr and "rows copied" in out.stderr  # the patients had gone in
    assert "failed and was undone (the target is left empty)" in out.stderr and "records" in out.stderr
    assert "Traceback" not in out.stderr
    assert set(pg_counts(postgres_url).values()) == {0}
    # Into SQLite likewise (its foreign keys are on while copying).
    out = run_cli("copy-data", str(src), str(tmp_path / "sqlite-target"))
    assert out.returncode == 1 and "undone" in out.stderr
    assert set(sqlite_counts(tmp_path / "sqlite-target" / "healthsync.db").values()) == {0}


def sqlite_counts(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES if t != "clock"}
        counts["clock"] = conn.execute("SELECT seq FROM clock").fetchone()[0]
        return counts
    finally:
        conn.close()


def test_a_copy_killed_midway_leaves_the_target_empty(postgres_url, tmp_path):
    src = tmp_path / "box"
    src.mkdir()
    fill_database(src / "healthsync.db", megabytes=60)
    proc = subprocess.Popen([sys.executable, "run.py", "copy-data", str(src), postgres_url], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # the first chunk of patients is in, the copy goes on
        seen.append(line)
        if "patients: 5000/" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    deadline = time.monotonic() + 30
    while _backends(postgres_url) and time.monotonic() < deadline:  # the server notices the client is gone
        time.sleep(0.05)
    assert set(pg_counts(postgres_url).values()) == {0}
    out = run_cli("copy-data", str(src), postgres_url)
    assert out.returncode == 0, out.stderr


def _backends(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                            " AND pid <> pg_backend_pid() AND backend_type = 'client backend'").fetchone()[0]


def test_other_connections_to_postgres_are_warned_of(postgres_url, tmp_path):
    """PostgreSQL has no lock a server holds: other sessions on the source are named, the copy goes on."""
    src = tmp_path / "box"
    assert run_cli("demo", "--patients", "2", "--seed", "2", "--data-dir", str(src)).returncode == 0
    assert run_cli("copy-data", str(src), postgres_url).returncode == 0
    with psycopg.connect(postgres_url) as other:
        other.execute("SELECT 1")
        out = run_cli("copy-data", postgres_url, str(tmp_path / "back"))
    assert out.returncode == 0, out.stderr
    assert "warning: " in out.stderr and "has 1 other connection(s)" in out.stderr and "stop the servers" in out.stderr
    assert sqlite_counts(tmp_path / "back" / "healthsync.db") == sqlite_counts(src / "healthsync.db")


def test_a_row_of_the_wrong_type_stops_the_copy(postgres_url, tmp_path):
    """SQLite keeps a text an integer column could not convert: it is named, not copied in another form."""
    src = tmp_path / "box"
    assert run_cli("demo", "--patients", "3", "--seed", "3", "--data-dir", str(src)).returncode == 0
    conn = sqlite3.connect(src / "healthsync.db")
    conn.execute("UPDATE records SET server_version = 'two' WHERE rowid = (SELECT max(rowid) FROM records)")
    conn.commit()
    conn.close()
    out = run_cli("copy-data", str(src), postgres_url)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "undone (the target is left empty): records: column server_version holds 'two', not an integer" \
        in out.stderr
    assert set(pg_counts(postgres_url).values()) == {0}


def test_a_copy_that_does_not_check_is_undone(postgres_url, tmp_path):
    """A target that changes rows as they go in (here a trigger someone left on it) fails
    the check, and nothing is kept."""
    src = tmp_path / "box"
    assert run_cli("demo", "--patients", "3", "--seed", "4", "--data-dir", str(src)).returncode == 0
    assert run_cli("migrate", "--database-url", postgres_url, "--data-dir", str(tmp_path / "unused")).returncode == 0
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION shout() RETURNS trigger LANGUAGE plpgsql AS"
                     " $$ BEGIN NEW.name := upper(NEW.name); RETURN NEW; END $$")
        conn.execute("CREATE TRIGGER shout BEFORE INSERT ON patients FOR EACH ROW EXECUTE FUNCTION shout()")
    out = run_cli("copy-data", str(src), postgres_url)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "the check found differences: patients (source 3 rows, target 3, checksums" in out.stderr
    assert "undone (the target is left empty)" in out.stderr and "checked:" not in out.stderr
    assert set(pg_counts(postgres_url).values()) == {0}
