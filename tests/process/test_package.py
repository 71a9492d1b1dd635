"""The package installed for real, as a clinic box installs it: a fresh venv, the
runtime lock (``pip install --require-hashes -r requirements.lock``), then
``pip install .`` of a copy of the checkout; then the ``healthsync`` command (and
``python -m healthsync``) run from a folder outside any checkout serve the API and the
dashboard, and stop cleanly.  It needs PyPI, or pip's cache, for the packages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from tests.support import ROOT
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.slow

#: Not part of a build: what tests, CI and a developer's runs leave in a checkout.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "data", "build", "*.egg-info", "__pycache__", "*.pyc",
                                    "test-artifacts", "node_modules", "results", ".pytest_cache", ".hypothesis",
                                    ".ruff_cache", ".mypy_cache")


def lock_names(path: Path) -> set[str]:
    return {canonicalize_name(line.split("==", 1)[0]) for line in path.read_text().splitlines()
            if "==" in line and not line.startswith((" ", "#"))}


def pip(venv: Path, *args: str, cwd: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    out = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q", *args],
                         cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"pip {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"


def get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), resp.read()


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the package installed from a copy of the checkout; its path."""
    tmp = tmp_path_factory.mktemp("package")
    src, venv = tmp / "src", tmp / "venv"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCE, symlinks=True)
    started = time.monotonic()
    base_python = getattr(sys, "_base_executable", sys.executable)  # not this venv's, with its test tools
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True, timeout=120)
    pip(venv, "install", "--require-hashes", "-r", "requirements.lock", cwd=src)
    pip(venv, "install", ".", cwd=src)
    print(f"fresh venv, locked runtime set and the package installed in {time.monotonic() - started:.1f} s")
    return venv


def outside(tmp_path: Path) -> Path:
    """A folder with no checkout in it or above it: only the installed package can be imported."""
    where = tmp_path / "elsewhere"
    where.mkdir()
    return where


def test_the_installed_venv_holds_the_runtime_set_only(installed, tmp_path):
    out = subprocess.run([str(installed / "bin" / "python"), "-m", "pip", "list", "--format=json",
                          "--disable-pip-version-check"], capture_output=True, text=True, timeout=60,
                         cwd=outside(tmp_path), check=True)
    names = {canonicalize_name(p["name"]) for p in json.loads(out.stdout)}
    runtime, test = lock_names(ROOT / "requirements.lock"), lock_names(ROOT / "requirements-test.lock")
    assert "healthsync" in names and runtime <= names | {"async-timeout", "tzdata"}  # those two by markers only
    assert not names & (test - runtime), sorted(names & (test - runtime))  # pytest, playwright, schemathesis…
    assert names <= runtime | {"healthsync", "pip", "setuptools", "wheel"}, sorted(names - runtime)


@pytest.mark.parametrize("command", [["healthsync"], ["python", "-m", "healthsync"]])
def test_the_command_and_python_dash_m_show_the_cli(installed, tmp_path, command):
    argv = [str(installed / "bin" / command[0]), *command[1:], "--help"]
    out = subprocess.run(argv, cwd=outside(tmp_path), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    prog = "healthsync" if command == ["healthsync"] else "python -m healthsync"
    assert out.stdout.startswith(f"usage: {prog} "), out.stdout
    for name in ("serve", "worker", "token", "migrate", "backup", "restore", "copy-data", "demo"):
        assert name in out.stdout


def test_the_installed_command_serves_the_api_and_the_dashboard_and_stops_cleanly(installed, tmp_path):
    where = outside(tmp_path)
    where_python = subprocess.run(
        [str(installed / "bin" / "python"), "-c", "import healthsync.web.files as f; print(f.STATIC_DIR)"],
        cwd=where, capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    assert Path(where_python).is_relative_to(installed), where_python  # the package's copy, not the checkout's

    server = ServerProcess(tmp_path / "data", "serve", command=[str(installed / "bin" / "healthsync")],
                           cwd=where).start()
    try:
        status, kind, body = get(f"{server.url}/api/health")
        assert status == 200 and kind.startswith("application/json")
        assert json.loads(body)["status"] == "ok"
        status, kind, body = get(f"{server.url}/")
        assert status == 200 and kind.startswith("text/html") and body == (ROOT / "static" / "index.html").read_bytes()
        status, kind, body = get(f"{server.url}/static/js/healthsync-client.js")
        assert status == 200 and body == (ROOT / "static" / "js" / "healthsync-client.js").read_bytes()
        status, kind, body = get(f"{server.url}/api/docs/")
        assert status == 200 and kind.startswith("text/html")
    finally:
        code = server.stop()
    assert code == 0, "".join(server.log)
    assert (tmp_path / "data" / "healthsync.db").is_file()
    assert not (where / "data").exists()  # --data-dir was used, not ./data
    assert not [line for line in server.log if " ERROR " in line or '"ERROR"' in line], "".join(server.log)
