"""``Engine``: what the named operations (tokens, audit, batches, backups)
need of ``Database``, so that each lives in a module of its own as a mixin."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from .snapshot import Snapshot
from .tx import WriteTx

T = TypeVar("T")


class Engine(Protocol):
    path: Path

    async def write(self, fn: Callable[[WriteTx], Awaitable[T]]) -> T: ...

    async def read(self, fn: Callable[[Snapshot], Awaitable[T]]) -> T: ...

    async def fetchall(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[Any]: ...
