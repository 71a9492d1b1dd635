"""Settings for an app under test, and ``python run.py …`` as a real subprocess."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Self

import settings as settings_mod
from tests.support import ROOT


def make_settings(data_dir: Path, **overrides: Any) -> settings_mod.Settings:
    """Open mode on loopback, data in ``data_dir``; no environment leaks in."""
    # No consumer threads unless a test asks for them (see tests/batches/).
    values: dict[str, Any] = {"data_dir": data_dir, "auth": "open", "embedded_worker": False,
                              "worker_poll_seconds": 0.05}
    values.update(overrides)
    return settings_mod.load({}, values)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python run.py ARGS`` to completion (30 s at most), output captured."""
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=30, env=env)


class RunPy:
    """``python run.py …`` in a subprocess; ``start`` waits for its ready line.
    ``database_url`` (when not empty) goes on its command line as ``--database-url``.
    ``command`` runs another program instead of ``python run.py`` (an installed
    ``healthsync``), in ``cwd`` (default: the checkout).

    A thread drains the process's output into ``log`` for its whole life: an
    unread pipe fills up and then blocks the process's next log line.
    """

    READY = re.compile(r"worker ready")

    def __init__(self, data_dir: Path, *args: str, env: dict[str, str] | None = None,
                 database_url: str = "", command: list[str] | None = None, cwd: Path = ROOT) -> None:
        self.data_dir = data_dir
        self.command = command or [sys.executable, "run.py"]
        self.cwd = cwd
        self.database_url = database_url
        self.args = list(args)
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.ready_line: str | None = None
        self.log: list[str] = []
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 30) -> Self:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC_")}
        env.update(self.env or {})
        cmd = [*self.command, *self.args, *self.extra_args(), "--data-dir", str(self.data_dir)]
        if self.database_url:
            cmd += ["--database-url", self.database_url]
        self.proc = subprocess.Popen(
            cmd, cwd=self.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.ready_line = None
        self._ready.clear()
        self._reader = threading.Thread(target=self._drain, args=(self.proc,), daemon=True)
        self._reader.start()
        self._ready.wait(timeout)
        if self.ready_line is None:
            self.stop()
            raise RuntimeError(f"{' '.join(self.args) or 'serve'} did not start:\n" + "".join(self.log))
        return self

    def extra_args(self) -> list[str]:
        return []

    def _drain(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.log.append(line)
            if self.ready_line is None and self.READY.search(line):
                self.ready_line = line
                self._ready.set()
        self._ready.set()  # the process exited: stop waiting

    def _reap(self) -> None:
        assert self.proc is not None
        self.proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._reap()
        return self.proc.returncode

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self._reap()

    def close(self) -> None:
        """Kill it if it still runs, and release its pipe (also after it exited by itself)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self._reap()


class ServerProcess(RunPy):
    """``python run.py [serve] …`` on a free port (``--port 0`` unless given)."""

    READY = re.compile(r"listening on http://\S+?:(\d+)")

    def extra_args(self) -> list[str]:
        return [] if "--port" in self.args else ["--port", "0"]

    @property
    def port(self) -> int | None:
        m = self.READY.search(self.ready_line or "")
        return int(m.group(1)) if m else None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
