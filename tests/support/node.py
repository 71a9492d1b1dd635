"""The JS client under Node: ``tests/js/harness.mjs`` as a subprocess, driven like a browser page.

``NodeClient(base_url, websocket)`` starts ``node tests/js/harness.mjs`` with the client module
loaded and ``websocket`` as its WebSocket implementation: ``"builtin"`` (Node's own: Node 22, or
Node 20 with ``--experimental-websocket``, added when needed) or ``"ws"`` (the npm package,
installed by ``npm ci --prefix tests/js``, which tests/run.sh runs).  ``evaluate(src)`` and
``wait_for(src, timeout_ms)`` behave like Playwright's ``page.evaluate`` and
``page.wait_for_function`` (see the harness for the globals a snippet may use).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
from typing import Any

from tests.support import ROOT

HARNESS = ROOT / "tests" / "js" / "harness.mjs"
WS_PACKAGE = ROOT / "tests" / "js" / "node_modules" / "ws"


class NodeError(AssertionError):
    """A snippet threw, or the harness could not run."""


def node_command(websocket: str) -> list[str]:
    """``node`` (with ``--experimental-websocket`` where the built-in WebSocket is behind it);
    fails saying what to install when Node or the ``ws`` package is missing."""
    node = shutil.which("node")
    if node is None:
        raise NodeError("node is missing: run `bash tests/run.sh`, which installs Node.js (the JS client's tests)")
    if websocket == "ws" and not WS_PACKAGE.exists():
        raise NodeError("the npm package ws is missing: run `npm ci --prefix tests/js` (tests/run.sh does)")
    cmd = [node]
    if websocket == "builtin":
        has = subprocess.run([node, "-p", "typeof WebSocket"], capture_output=True, text=True, timeout=30).stdout
        if has.strip() != "function":
            cmd.append("--experimental-websocket")
    return [*cmd, str(HARNESS)]


class NodeClient:
    def __init__(self, base_url: str, websocket: str = "builtin") -> None:
        env = dict(os.environ, HS_BASE=base_url, HS_WEBSOCKET=websocket)
        self.proc = subprocess.Popen(
            node_command(websocket), cwd=ROOT, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.stderr: list[str] = []
        self._answers: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._next_id = 0
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for reader in self._readers:
            reader.start()
        ready = self._answer(30)
        if not ready.get("ready"):
            raise NodeError(f"the Node harness did not start: {ready}")
        self.version = ready["node"]

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self._answers.put(json.loads(line))
            except json.JSONDecodeError:
                self.stderr.append(f"stdout: {line}")
        self._answers.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def _answer(self, timeout: float) -> dict[str, Any]:
        try:
            msg = self._answers.get(timeout=timeout)
        except queue.Empty:
            raise NodeError(f"no answer from Node within {timeout} s; stderr:\n{''.join(self.stderr)}") from None
        if msg is None:
            self.proc.wait(timeout=10)
            raise NodeError(f"Node exited ({self.proc.returncode}):\n{''.join(self.stderr)}")
        return msg

    def _call(self, op: str, src: str, timeout_ms: int = 0) -> Any:
        self._next_id += 1
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"id": self._next_id, "op": op, "src": src, "timeout": timeout_ms}) + "\n")
        self.proc.stdin.flush()
        msg = self._answer(timeout_ms / 1000 + 30)
        assert msg.get("id") == self._next_id, msg
        if not msg["ok"]:
            raise NodeError(msg["error"])
        return msg["value"]

    def evaluate(self, src: str) -> Any:
        return self._call("eval", src)

    def wait_for(self, src: str, timeout: int = 5000) -> Any:
        return self._call("wait", src, timeout)

    def errors(self) -> list[str]:
        """Uncaught errors and unhandled rejections in Node so far."""
        return list(self.evaluate("pageErrors"))

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # the harness exits at the end of its input
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for reader in self._readers:
            reader.join(timeout=10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
