"""Websockets on the app under test: their URL, and a subscriber that records what it receives."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson


def ws_url(http_server_client: Any, query: str) -> str:
    """The sync websocket's URL on the app under test, with ``query``."""
    return http_server_client.get_url(f"/api/sync/ws?{query}").replace("http://", "ws://")


class Client:
    """A websocket subscriber that records what it receives."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.messages: list[dict[str, Any]] = []

    @property
    def changes(self) -> list[dict[str, Any]]:
        return [e for m in self.messages if m["type"] == "changes" for e in m["changes"]]

    async def next(self, timeout: float = 10) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.conn.read_message(), timeout)
        assert raw is not None, "socket closed"
        msg = orjson.loads(raw)
        self.messages.append(msg)
        return msg

    async def until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            msg = await self.next(max(deadline - time.monotonic(), 0.01))
            if predicate(msg):
                return msg

    async def changes_until(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.changes) < count:
            await self.next(max(deadline - time.monotonic(), 0.01))
        return self.changes

    async def quiet(self, seconds: float) -> list[dict[str, Any]]:
        """What arrives within ``seconds``: the empty list when nothing does."""
        try:
            return [await self.next(seconds)]
        except TimeoutError:
            return []

    @property
    def cursor(self) -> str | None:
        cursors = [m["cursor"] for m in self.messages if m["type"] == "changes"]
        return cursors[-1] if cursors else None

    def close(self) -> None:
        self.conn.close()
