"""Redis for the queue tests: the test server's URL, a queue of one's own on
it (its keys deleted after), and a throwaway ``redis-server`` to stop for real.

The suite's Redis is ``HEALTHSYNC_TEST_REDIS_URL`` (``tests/run.sh`` exports it
when it starts one), else ``redis://127.0.0.1:6379``.  Tests use db 15 and a
queue name of their own, and delete only their own keys: a shared Redis is left
as it was found.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

TEST_DB = 15
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def test_redis_url() -> str:
    """The suite's Redis, on db 15 unless the URL names a db."""
    url = os.environ.get("HEALTHSYNC_TEST_REDIS_URL") or "redis://127.0.0.1:6379"
    parts = urlsplit(url)
    if parts.path in ("", "/"):
        parts = parts._replace(path=f"/{TEST_DB}")
    return urlunsplit(parts)


test_redis_url.__test__ = False  # type: ignore[attr-defined]  # not a test for pytest


def unique_queue_name() -> str:
    return f"healthsync_test_{uuid.uuid4().hex[:12]}"


def ping(url: str) -> str | None:
    """None when Redis answers at ``url``, else why not."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except redis.RedisError as exc:
        return str(exc)
    return None


def delete_queue_keys(url: str, name: str) -> None:
    """Delete the keys of Huey's queue ``name`` (and nothing else)."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"huey.*.{name}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def queue_keys(url: str, name: str) -> list[bytes]:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        return list(client.scan_iter(match=f"huey.*.{name}*"))
    finally:
        client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThrowawayRedis:
    """``redis-server`` on a port of its own, no persistence: ``start``, ``kill``, ``start`` again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @staticmethod
    def available() -> bool:
        return os.access(REDIS_SERVER, os.X_OK)

    def start(self, timeout: float = 10) -> ThrowawayRedis:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while ping(self.url) is not None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
