"""``python run.py`` as a real subprocess: ready line, signals, restart, settings.

The demo data runs on both backends, and a restart on PostgreSQL is checked by
test_database_url_on_postgresql_serves_migrates_makes_tokens_and_refuses_backup; the rest
are about the command line itself, the same whatever the backend, and run on SQLite only
(the SQLite file migrations are SQLite's own)."""

from __future__ import annotations

import json
import shutil
import signal
import urllib.request

import pytest

from tests.support.databases import V1_FILE
from tests.support.http import call
from tests.support.servers import run_cli

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_ready_line_and_clean_stop(server_process, sig):
    server = server_process()
    assert any(f"listening on http://127.0.0.1:{server.port}" in line for line in server.log)
    assert call("GET", server.url + "/api/health")[0] == 200
    assert server.stop(sig) == 0
    assert "stopped" in "".join(server.log)


def test_ready_line_is_logged_at_any_log_level(server_process):
    server = server_process("--log-level", "WARNING")
    assert any("listening on http://" in line for line in server.log)
    assert call("GET", server.url + "/api/health")[0] == 200
    assert server.stop() == 0


def test_restart_keeps_everything(server_process, tmp_path):
    data = tmp_path / "data"
    first = server_process(data_dir=data)
    status, patient = call("POST", first.url + "/api/patients/", {"name": "Ada", "dob": "1815-12-10"})
    assert status == 201
    status, record = call("POST", first.url + "/api/records/",
                          {"patient": patient["id"], "resource_type": "Observation", "data": {"v": 1}})
    assert status == 201
    assert call("DELETE", first.url + f"/api/records/{record['id']}/")[0] == 204
    assert first.stop() == 0
    second = server_process(data_dir=data)
    assert call("GET", second.url + "/api/patients/")[1] == [patient]
    status, tomb = call("GET", second.url + f"/api/records/{record['id']}/?include_deleted=true")
    assert status == 200 and tomb["deleted"] is True and tomb["server_version"] == 2
    status, again = call("PATCH", second.url + f"/api/patients/{patient['id']}/", {"name": "Ada L."})
    assert again["server_version"] == 2 and again["updated_at"] > tomb["updated_at"]


def test_old_schema_file_is_migrated_on_start(server_process, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(V1_FILE, data / "healthsync.db")
    server = server_process(data_dir=data)
    assert "migrated database to schema 2" in "".join(server.log)
    status, patients = call("GET", server.url + "/api/patients/")
    assert status == 200 and [p["name"] for p in patients] == ["Ada Lovelace", "Grace Hopper"]
    status, records = call("GET", server.url + "/api/records/")
    assert records[0]["data"] == {"v": 1}


def test_bad_setting_fails_at_start_naming_it(tmp_path):
    import os

    env = dict(os.environ, HEALTHSYNC_PORT="eighty")
    result = run_cli("--data-dir", str(tmp_path), env=env)
    assert result.returncode == 2
    assert "HEALTHSYNC_PORT" in result.stderr
    result = run_cli("--data-dir", str(tmp_path), "--port", "99999")
    assert result.returncode == 2 and "--port" in result.stderr


def test_open_mode_on_the_network_refuses_without_opt_out(tmp_path):
    result = run_cli("--host", "0.0.0.0", "--auth", "open", "--port", "0", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "--allow-open-network" in result.stderr


def test_help_lists_flags():
    result = run_cli("--help")
    assert result.returncode == 0 and "serve" in result.stdout
    serve = run_cli("serve", "--help")
    for flag in ("--host", "--port", "--data-dir", "--auth", "--allow-open-network"):
        assert flag in serve.stdout


def test_token_cli_create_list_revoke_and_use(server_process, tmp_path):
    data = str(tmp_path / "fresh")
    created = run_cli("token", "create", "--role", "dashboard", "--name", "front-desk", "--data-dir", data)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("hs_") and "shown only this once" in created.stderr
    listed = run_cli("token", "list", "--data-dir", data)
    assert "front-desk\tdashboard" in listed.stdout and token not in listed.stdout
    dup = run_cli("token", "create", "--role", "admin", "--name", "front-desk", "--data-dir", data)
    assert dup.returncode == 1 and "revoke it first" in dup.stderr
    server = server_process("--auth", "token", data_dir=tmp_path / "fresh")
    req = urllib.request.Request(server.url + "/api/patients/", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
    assert call("GET", server.url + "/api/patients/")[0] == 401
    assert run_cli("token", "revoke", "front-desk", "--data-dir", data).returncode == 0
    assert "revoked" in run_cli("token", "list", "--data-dir", data).stdout
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("revoked token still works")
    except urllib.error.HTTPError as err:
        assert err.code == 401
    assert run_cli("token", "revoke", "nobody", "--data-dir", data).returncode == 1


def test_auto_mode_on_the_network_means_tokens(server_process):
    server = server_process("--host", "0.0.0.0")
    assert call("GET", server.url + "/api/patients/")[0] == 401
    assert call("GET", server.url + "/api/health")[1]["auth"] == "token"


def test_open_network_opt_out_warns_loudly(server_process):
    server = server_process("--host", "0.0.0.0", "--auth", "open", "--allow-open-network")
    assert "WITHOUT AUTHENTICATION" in "".join(server.log)
    health = call("GET", server.url + "/api/health")[1]
    assert "WITHOUT authentication" in health["warning"]


def test_json_access_log_names_the_token_never_patient_data(server_process):
    server = server_process("--log-format", "json")
    call("POST", server.url + "/api/patients/", {"name": "Very Private Person"})
    assert server.stop() == 0
    lines = [json.loads(line) for line in "".join(server.log).splitlines() if line.startswith("{")]
    access = [x for x in lines if x["logger"] == "healthsync.access"]
    assert any(x["method"] == "POST" and x["path"] == "/api/patients/" and x["status"] == 201
               and "duration_ms" in x and x["token"] is None for x in access)
    assert "Very Private Person" not in "".join(server.log)
    assert any("listening on http://" in x["message"] for x in lines)


@pytest.mark.both_backends
def test_demo_fills_a_fresh_data_dir_and_plays_live(server_process, tmp_path, database_url):
    data = tmp_path / "demo"
    on_backend = ["--database-url", database_url] if database_url else []
    result = run_cli("demo", "--patients", "120", "--seed", "7", "--data-dir", str(data), *on_backend)
    assert result.returncode == 0, result.stderr
    assert "120/120 patients" in result.stderr
    server = server_process(data_dir=data)
    patients = call("GET", server.url + "/api/patients/")[1]
    assert len(patients) == 120 and all(p["identifiers"]["mrn"].startswith("MRN-") for p in patients)
    records = call("GET", server.url + "/api/records/?resource_type=Observation")[1]
    codings = {r["data"]["code"]["coding"][0]["system"] for r in records}
    assert codings == {"http://loinc.org"} and all("unit" in r["data"]["valueQuantity"] for r in records)
    played = run_cli("demo", "--patients", "0", "--live", "--url", server.url, "--seconds", "2",
                     "--data-dir", str(data), *on_backend)
    assert played.returncode == 0, played.stderr
    assert len(call("GET", server.url + "/api/devices/")[1]) >= 2  # the import and at least one tablet


def test_migrate_brings_an_old_file_forward_and_refuses_a_newer_one(tmp_path):
    import shutil
    import sqlite3

    from healthsync.storage.sqlite.migrations import LATEST
    from tests.support.databases import V1_FILE

    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(V1_FILE, old / "healthsync.db")
    result = run_cli("migrate", "--data-dir", str(old))
    assert result.returncode == 0, result.stderr
    assert f"schema version {LATEST}, up to date" in result.stderr
    with sqlite3.connect(old / "healthsync.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST
    fresh = run_cli("migrate", "--data-dir", str(tmp_path / "fresh"))  # a fresh data dir is made and migrated
    assert fresh.returncode == 0 and f"schema version {LATEST}" in fresh.stderr
    with sqlite3.connect(old / "healthsync.db") as conn:
        conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    newer = run_cli("migrate", "--data-dir", str(old))
    assert newer.returncode == 1 and "newer than this HealthSync" in newer.stderr
    assert "Traceback" not in newer.stderr


def test_database_url_that_is_not_postgresql_fails_at_start_naming_it(tmp_path):
    import os

    env = dict(os.environ, HEALTHSYNC_DATABASE_URL="mysql://root@localhost/hs")
    result = run_cli("--data-dir", str(tmp_path), "--port", "0", env=env)
    assert result.returncode == 2 and "HEALTHSYNC_DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_cli("migrate", "--data-dir", str(tmp_path), "--database-url", "sqlite:///x.db")
    assert result.returncode == 2 and "--database-url" in result.stderr


def test_database_url_on_postgresql_serves_migrates_makes_tokens_and_refuses_backup(
    server_process, tmp_path, postgres_url
):
    migrated = run_cli("migrate", "--data-dir", str(tmp_path / "m"), "--database-url", postgres_url)
    assert migrated.returncode == 0, migrated.stderr
    assert "up to date" in migrated.stderr
    created = run_cli("token", "create", "--role", "admin", "--name", "it", "--database-url", postgres_url,
                      "--data-dir", str(tmp_path / "t"))
    assert created.returncode == 0, created.stderr
    listed = run_cli("token", "list", "--database-url", postgres_url, "--data-dir", str(tmp_path / "t"))
    assert listed.returncode == 0 and listed.stdout.startswith("it\tadmin"), listed.stderr

    server = server_process("--database-url", postgres_url, "--auth", "open")
    status, patient = call("POST", server.url + "/api/patients/", {"name": "Ada Lovelace", "dob": "1815-12-10"})
    assert status == 201, patient
    status, health = call("GET", server.url + "/api/health")
    assert health["database"]["backend"] == "postgres"
    server.close()
    again = server_process("--database-url", postgres_url, "--auth", "open", data_dir=tmp_path / "other")
    status, patients = call("GET", again.url + "/api/patients/")
    assert [p["name"] for p in patients] == ["Ada Lovelace"]  # the data is in PostgreSQL, not the data dir

    backup = run_cli("backup", str(tmp_path / "b"), "--database-url", postgres_url, "--data-dir", str(tmp_path))
    assert backup.returncode == 1
    assert "pg_dump" in backup.stderr and "Traceback" not in backup.stderr
    assert not (tmp_path / "b").exists()
