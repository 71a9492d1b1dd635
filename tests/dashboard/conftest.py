"""Browser fixtures: headless Chromium (Debian's) driven by Playwright's sync API.

- ``browser``: one Chromium per test module (``/usr/bin/chromium``; Playwright's own
  browser download is not used).  ``tests/run.sh`` installs it when missing.
- ``dash``: a fresh browser context and page per test that records console errors
  and uncaught page errors; the test fails at teardown if there were any (a test
  that stops a server on purpose may allow network errors).
- Seeding a server over plain HTTP: ``tests/support/dashboard.py``.
- Screenshots go to ``test-artifacts/`` at the repo root (gitignored).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-gpu",
    "--no-first-run",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `bash tests/run.sh`, which installs Chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Dashboard:
    """One browser page plus what it logged."""

    def __init__(self, context: Any) -> None:
        self.context = context
        self.page = context.new_page()
        self.errors: list[str] = []
        self.allow: list[re.Pattern[str]] = []
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def _on_console(self, msg: Any) -> None:
        if msg.type == "error":
            where = (msg.location or {}).get("url")  # for a failed load: the resource
            self.errors.append(f"console.error: {msg.text}" + (f" [{where}]" if where else ""))

    def allow_errors(self, pattern: re.Pattern[str] | str) -> None:
        """Console errors matching ``pattern`` are expected (uncaught errors never are)."""
        self.allow.append(re.compile(pattern) if isinstance(pattern, str) else pattern)

    def unexpected_errors(self) -> list[str]:
        return [
            e for e in self.errors
            if e.startswith("uncaught") or not any(p.search(e) for p in self.allow)
        ]

    def open(self, base_url: str, route: str = "") -> Any:
        self.page.goto(f"{base_url}/{'#' + route if route else ''}")
        return self.page

    def shot(self, name: str) -> Path:
        # Let the one-off highlights of newly arrived items fade first (the live dot pulses forever).
        self.page.wait_for_function(
            "() => document.getAnimations().every((a) => !['arrive', 'flash'].includes(a.animationName))",
            timeout=10000,
        )
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"dashboard-{name}.png"
        self.page.screenshot(path=str(path), full_page=False)
        return path


@pytest.fixture
def dash(browser: Any) -> Iterator[Dashboard]:
    context = browser.new_context(viewport={"width": 1400, "height": 900}, locale="en-GB", timezone_id="Europe/London")
    d = Dashboard(context)
    try:
        yield d
    finally:
        context.close()
    unexpected = d.unexpected_errors()
    assert not unexpected, "the page logged errors:\n" + "\n".join(unexpected)
