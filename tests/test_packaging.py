"""What the package is made of agrees with itself: the runtime dependencies in
``pyproject.toml`` and ``requirements.txt``, the locks and the files they are written
from, the settings module under both its names, and where the dashboard's files are
found.  (``tests/process/test_package.py`` installs the package for real.)"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import settings
from healthsync import settings as package_settings
from healthsync.cli import build_parser
from healthsync.web.files import STATIC_DIR, find_static_dir
from tests.support import ROOT

RELOCK = "the lock is out of date: run `bash tools/lock.sh` and commit the .lock files"

#: What the tests install and a clinic box must not (the issue's 278 MB venv).
TEST_ONLY = {"pytest", "pytest-tornasync", "hypothesis", "playwright", "schemathesis", "jsonschema-rs", "fhirclient"}


def requirements(path: Path) -> list[Requirement]:
    """A requirements file's requirements, ``-r`` files included."""
    found: list[Requirement] = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            found += requirements(path.parent / line[3:].strip())
        elif line:
            found.append(Requirement(line))
    return found


def lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """A lock file's pins: ``{name: (version, hashes)}``."""
    text = re.sub(r"#[^\n]*", "", path.read_text()).replace("\\\n", " ")
    pins: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        spec, *options = line.split()
        name, sep, version = spec.partition("==")
        assert sep, f"{path.name}: not an exact pin: {line.strip()[:80]}"
        pins[canonicalize_name(name)] = (version, [o for o in options if o.startswith("--hash=sha256:")])
    return pins


def test_pyproject_declares_the_runtime_set_of_requirements_txt():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = sorted(str(Requirement(r)) for r in project["dependencies"])
    assert declared == sorted(str(r) for r in requirements(ROOT / "requirements.txt"))
    assert project["scripts"] == {"healthsync": "healthsync.cli:console_main"}


def test_the_runtime_set_holds_no_test_tool():
    names = {canonicalize_name(r.name) for r in requirements(ROOT / "requirements.txt")}
    assert not names & TEST_ONLY
    assert not set(lock(ROOT / "requirements.lock")) & TEST_ONLY
    assert TEST_ONLY <= {canonicalize_name(r.name) for r in requirements(ROOT / "requirements-test.txt")}


@pytest.mark.parametrize("source, locked", [("requirements.txt", "requirements.lock"),
                                            ("requirements-test.txt", "requirements-test.lock")])
def test_the_locks_pin_every_requirement_with_hashes(source, locked):
    pins = lock(ROOT / locked)
    for req in requirements(ROOT / source):
        name = canonicalize_name(req.name)
        assert name in pins, f"{locked} has no {req.name}: {RELOCK}"
        assert req.specifier.contains(pins[name][0], prereleases=True), \
            f"{locked} pins {req.name}=={pins[name][0]}, outside {req.specifier} ({source}): {RELOCK}"
    for name, (_, hashes) in pins.items():
        assert hashes, f"{locked}: {name} has no hash"


def test_the_test_lock_holds_the_runtime_lock_s_very_versions():
    runtime, test = lock(ROOT / "requirements.lock"), lock(ROOT / "requirements-test.lock")
    assert {n: test.get(n, ("missing",))[0] for n in runtime} == {n: v for n, (v, _) in runtime.items()}, RELOCK


def test_the_top_level_settings_module_is_the_package_s():
    assert settings is package_settings
    assert settings.Settings is package_settings.Settings


def test_the_package_never_imports_the_top_level_settings_module():
    """An installed package has no top-level ``settings`` (only a checkout does): the
    package imports its own, ``healthsync.settings``."""
    offenders = []
    for path in sorted((ROOT / "healthsync").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            if any(n == "settings" or n.startswith("settings.") for n in names if n):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"import healthsync.settings (from .settings import …) instead: {offenders}"


def test_the_static_files_are_found_in_the_checkout_and_in_an_installed_package(tmp_path):
    assert STATIC_DIR == ROOT / "static" and (STATIC_DIR / "index.html").is_file()
    # a checkout: healthsync/ has no static/ of its own, the repository's is beside it
    checkout = tmp_path / "checkout"
    (checkout / "healthsync").mkdir(parents=True)
    assert find_static_dir(checkout / "healthsync") == checkout / "static"
    # installed: site-packages/healthsync/static/ (and no static/ beside the package)
    site = tmp_path / "site-packages"
    (site / "healthsync" / "static").mkdir(parents=True)
    (site / "healthsync" / "static" / "index.html").write_text("<!doctype html>")
    assert find_static_dir(site / "healthsync") == site / "healthsync" / "static"


def test_python_dash_m_healthsync_is_the_cli_of_run_py():
    out = subprocess.run([sys.executable, "-m", "healthsync", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: python -m healthsync")
    commands = re.search(r"\{([a-z,-]+)\}", out.stdout).group(1).split(",")
    subparsers = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    assert commands == list(subparsers.choices)
