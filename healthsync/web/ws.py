"""``/api/sync/ws``: a websocket that adapts one socket to the push hub.

Query: ``since`` or ``cursor`` (required, as for download), optional
``resource_type``, ``patient`` and ``device_id``.  Bad parameters fail the
handshake with a JSON 400 (410 for a position download would refuse), like
the download endpoint; a database that cannot be read fails it with a JSON
503 and ``Retry-After``; every other answer before the upgrade is JSON too
(Tornado's own refusals: no ``Upgrade`` header, a refused origin, a method
other than GET; and a fault, a 500 that says nothing about internals).  A
device token's socket is its own device's: naming another device fails the
handshake with a JSON 403, and naming none means its own (so it gets only its
own batch events).  In token mode a browser may pass its token as the
``token`` parameter; the audit trail and the logs never hold it
(``redact``).  The client may send ``{"type": "ping"}`` (answered with
``pong``); anything else gets an ``error`` message and the socket stays open.

Compression (slow links): a client offering ``permessage-deflate`` (RFC 7692;
browsers do, Node's ``ws`` and Tornado's client when asked) gets it, for the
catch-up: each catch-up page (any frame of 1 KiB or more sent while catching
up) goes compressed, on its own (no context kept between messages, so
nothing stays allocated per socket: Tornado's own compressor, about 256 KiB
per socket, is dropped after the handshake, and its inflater of the client's
messages is made only when the client first sends a compressed one).  Live
frames go uncompressed on every socket (a message without RSV1, which RFC
7692 section 6 allows on a compressed connection): they are usually small,
and compressing each one again for each of a thousand subscribers nearly
doubles the fan-out's CPU (bench/README.md, "Compression on slow links").  A
subscriber that falls behind is caught up by reads again, compressed.

Origins: a browser's ``Origin`` must be this server's own, or match
``cors_origins`` (wide open only in open mode on loopback).  Tornado
refuses cross-origin websockets by default because a page on any site could
otherwise open a socket with the visitor's network position; we relax that
only as far as the settings say.
"""

from __future__ import annotations

import re
import struct
import zlib
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import orjson
import tornado.websocket
from tornado.concurrent import Future
from tornado.iostream import StreamClosedError

from ..auth import OPEN, Permission, Principal, bearer, require
from ..errors import HealthSyncError, Invalid
from ..models import parse_uuid
from ..push.hub import CATCHING_UP
from ..redact import redact_query, scrub
from ..sync import download as dl
from .base import RedactedLogs, device_param, error_body, origin_allowed

if TYPE_CHECKING:
    from ..context import Context
    from ..push.hub import Subscription

MAX_CLIENT_MESSAGE = 4096
#: permessage-deflate: the zlib level of catch-up frames, and the smallest frame compressed.
DEFLATE_LEVEL = 6
DEFLATE_MIN_BYTES = 1024
TINY_WINDOW = re.compile(r'server_max_window_bits\s*=\s*"?0*8\b')
TEXT, TEXT_DEFLATED = 0x81, 0xC1  # FIN + text opcode; with RSV1 (RFC 7692 6: a compressed message)


def text_frame(payload: bytes, first: int = TEXT) -> bytes:
    """One unmasked, final websocket text frame (RFC 6455 5.2) carrying
    ``payload``: what a server sends, byte for byte as Tornado's own
    ``write_message`` frames it when compression is off.  ``first``:
    ``TEXT_DEFLATED`` for a payload from ``deflate``."""
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", first, n) + payload
    if n <= 0xFFFF:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


def deflate(payload: bytes, wbits: int) -> bytes:
    """``payload`` as one permessage-deflate message (RFC 7692 7.2.1) compressed on
    its own, with a window of at most ``2**wbits`` bytes (what the client allowed)."""
    z = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -wbits)
    data = z.compress(payload) + z.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4]  # the empty stored block's 00 00 ff ff, which the receiver adds back


class LazyInflater:
    """Tornado's inflater of the client's compressed messages, its zlib state (about
    7 KiB) made at the first one: most clients only ever send a ping now and then,
    and a thousand idle sockets should not each hold one.  Persistent from then
    on, as the client may refer back to its earlier messages (context takeover)."""

    def __init__(self, inflater: Any) -> None:
        self._inflater = inflater
        inflater._decompressor = None

    def decompress(self, data: bytes) -> bytes:
        inflater = self._inflater
        if inflater._decompressor is None:
            inflater._decompressor = inflater._create_decompressor()
        result: bytes = inflater.decompress(data)
        return result


class SyncSocket(RedactedLogs, tornado.websocket.WebSocketHandler):
    ctx: Context
    sub: Subscription | None = None
    principal: Principal | None = None

    def initialize(self, ctx: Context) -> None:
        self.ctx = ctx
        self._params: dict[str, Any] = {}
        self._deflate_wbits: int | None = None  # permessage-deflate agreed: the window we may use

    def get_compression_options(self) -> dict[str, Any] | None:
        """Accept permessage-deflate when the client offers it (see the module's notes);
        not for an offer limiting our window to 256 bytes, which zlib cannot
        compress with (Tornado would drop the connection): that client gets none."""
        if TINY_WINDOW.search(self.request.headers.get("Sec-WebSocket-Extensions", "")):
            return None
        return {"compression_level": DEFLATE_LEVEL}

    def check_origin(self, origin: str) -> bool:
        host = urlparse(origin).netloc.lower()
        if host and host == self.request.host.lower():
            return True  # same origin: the dashboard served by this server
        return origin_allowed(origin, self.ctx.settings.effective_cors_origins)

    async def get(self, *args: Any, **kwargs: Any) -> None:
        try:
            await self._authenticate()
            self._params = self._parse()
            await dl.check_cursor(self.ctx.db, self._params["cursor"], self._params["since"])
        except HealthSyncError as exc:
            self._audit(exc.status)
            self.set_status(exc.status)
            self.write_error(exc.status, exc_info=(type(exc), exc, exc.__traceback__))
            return
        self._audit(101)
        await super().get(*args, **kwargs)

    async def _authenticate(self) -> None:
        """Token mode: ``Authorization: Bearer`` or, for browsers, a ``token`` parameter."""
        if self.ctx.settings.auth_mode == "open":
            self.principal = OPEN
            return
        # Exactly the parameter named ``token`` once decoded (``%74oken`` is that
        # name spelled another way, as in any URL); no other spelling or name.
        token = bearer(self.request.headers.get("Authorization")) or self._arg("token")
        self.principal = await self.ctx.tokens.authenticate(token)
        require(self.principal, Permission.READ)

    def finish(self, chunk: str | bytes | dict[str, Any] | None = None) -> Future[None]:
        """Tornado's handshake refusals (plain text, or an empty 426) as a JSON error body."""
        if self.get_status() >= 400 and (chunk is None or isinstance(chunk, str)) and not self._write_buffer:
            self.set_header("Content-Type", "application/json; charset=utf-8")
            chunk = orjson.dumps({"error": chunk or self._reason, "details": []})
        return super().finish(chunk)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """An error raised before the upgrade, as JSON (never Tornado's HTML page)."""
        body = error_body(self, status_code, kwargs.get("exc_info", (None, None, None))[1])
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(orjson.dumps(body))

    def _audit(self, status: int) -> None:
        principal = self.principal
        self.ctx.audit.record(
            who=None if principal is None else principal.name,
            role=None if principal is None else principal.role,
            method="GET",
            path=scrub(self.request.path),
            query=redact_query(self.request.query),
            status=status,
            remote_ip=self.request.remote_ip,
        )

    def _arg(self, name: str) -> str | None:
        values = self.request.query_arguments.get(name)
        if not values:
            return None
        try:
            value = values[-1].decode("utf-8").strip()
        except UnicodeDecodeError:
            # A JSON 400 of ours, not Tornado's HTML one (whose log line quotes the value).
            raise Invalid(f"{name} is not valid UTF-8", [{"field": name, "message": "not UTF-8"}]) from None
        return value or None

    def _parse(self) -> dict[str, Any]:
        after_seq, after_time = dl.parse_position(self._arg("since"), self._arg("cursor"))
        resource_type = self._arg("resource_type")
        dl.check_resource_type(resource_type)
        patient = self._arg("patient")
        # Naming a device here only chooses whose batch events to watch.
        device_id = device_param(self._arg("device_id"), self.principal, acts=False)
        if device_id is None and self.principal is not None and self.principal.is_device:
            device_id = self.principal.name  # a device's socket is its own device's, never a dashboard's
        return {
            "cursor": after_seq,
            "since": after_time,
            "resource_type": resource_type,
            "patient": None if patient is None else parse_uuid(patient, "patient"),
            "device_id": device_id,
        }

    def open(self, *args: Any, **kwargs: Any) -> None:
        conn = self.ws_connection
        compressor = getattr(conn, "_compressor", None)
        wbits = getattr(compressor, "_max_wbits", None)
        if compressor is not None and getattr(conn, "stream", None) is not None and isinstance(wbits, int):
            # Compressed here, frame by frame (``send``); Tornado's compressor, which keeps its
            # window per socket, goes.  A window under 512 bytes (zlib's least) is not used.
            conn._compressor = None  # type: ignore[union-attr]
            self._deflate_wbits = wbits if wbits >= 9 else None
            inflater = getattr(conn, "_decompressor", None)
            if getattr(inflater, "_decompressor", None) is not None and hasattr(inflater, "_create_decompressor"):
                conn._decompressor = LazyInflater(inflater)  # type: ignore[union-attr]
        self.sub = self.ctx.hub.subscribe(self, **self._params)

    def on_message(self, message: str | bytes) -> None:
        try:
            msg = orjson.loads(message) if len(message) <= MAX_CLIENT_MESSAGE else None
        except orjson.JSONDecodeError:
            msg = None
        if isinstance(msg, dict) and msg.get("type") == "ping":
            self.send(b'{"type":"pong"}')
            return
        self.send(orjson.dumps({"type": "error", "error": 'unknown message: the server accepts {"type": "ping"}'}))

    def on_close(self) -> None:
        if self.sub is not None:
            self.ctx.hub.unsubscribe(self.sub)
            self.sub = None

    # The hub's Peer interface -------------------------------------------------------

    def send(self, frame: bytes) -> Future[None] | None:
        """Write ``frame`` (a JSON text message); the future resolves once it
        is flushed to the socket (the hub's flow control), None if closed.

        The hub sends one frame to up to thousands of sockets in a row, so
        this writes the framed bytes to the connection's stream directly:
        ``write_message`` would wrap each write in a coroutine Task of its own,
        which cost about a third of the server's time per broadcast.  With
        permessage-deflate agreed, a frame sent while catching up is
        compressed here (``deflate``); live frames never are (module notes).
        On a Tornado without the stream attribute (or whose compressor
        ``open`` did not take over) it falls back to ``write_message``.
        """
        conn = self.ws_connection
        if conn is None or conn.is_closing():
            return None
        stream = getattr(conn, "stream", None)
        try:
            if stream is None or getattr(conn, "_compressor", None) is not None:
                return self.write_message(frame)
            wbits = self._deflate_wbits
            if (
                wbits is not None
                and len(frame) >= DEFLATE_MIN_BYTES
                and (self.sub is None or self.sub.state == CATCHING_UP)
            ):
                return stream.write(text_frame(deflate(frame, wbits), TEXT_DEFLATED))
            return stream.write(text_frame(frame))
        except (tornado.websocket.WebSocketClosedError, StreamClosedError):
            return None

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        super().close(code, reason)


__all__ = ["SyncSocket"]
