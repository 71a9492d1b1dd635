"""``BaseHandler``: what every HealthSync endpoint shares.

- Request bodies are streamed (``stream_request_body``) so an oversized body
  is refused with 413 from its ``Content-Length`` before it is read, and a
  chunked one with the same 413 as soon as it passes the limit (the rest is
  not read: the connection closes once the answer is out).  A request whose
  connection closes mid-body ends there; none waits for a body that will not
  come.
- Compression both ways (slow links): a client sending ``Accept-Encoding:
  gzip`` gets JSON and text answers of 1 KiB and more gzipped (``GZip``); a
  body sent with ``Content-Encoding: gzip`` is inflated here as it arrives
  (``GzipBody``), so the test server and ``run.py serve`` behave the same and
  ``max_body_bytes`` bounds the inflated body: past it, 413 at once, without
  inflating the rest.  A corrupt gzip body is a 400, another encoding a 415.
- One error exit: ``write_error`` renders every error, ours or Tornado's, as
  ``{"error": …, "details": […]}``.  Domain errors (``HealthSyncError``) are
  logged as warnings without a traceback; anything else is a 500 whose body
  says nothing about internals, logged with its traceback.
- CORS: allowed origins come from settings; a preflight ``OPTIONS`` is
  answered here for every route.
- Services arrive through ``initialize`` from the route table.
- No credential in a log line or the audit trail: Tornado's own request
  summaries and the audit's query go through ``redact`` (``RedactedLogs``).

Thread-safety: handlers run on the event loop only.
"""

from __future__ import annotations

import fnmatch
import logging
import zlib
from types import TracebackType
from typing import TYPE_CHECKING, Any

import orjson
import tornado.httputil
import tornado.web

from ..auth import OPEN, Permission, Principal, bearer, require, require_device
from ..errors import (
    Forbidden,
    HealthSyncError,
    Invalid,
    NotFound,
    ShuttingDown,
    TooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from ..models import loads, parse_uuid
from ..redact import is_credential_name, redact_query, redact_uri, scrub
from ..storage import DatabaseClosed

if TYPE_CHECKING:
    from ..context import Context

log = logging.getLogger("healthsync.web")
app_log = logging.getLogger("tornado.application")
gen_log = logging.getLogger("tornado.general")

JSON_TYPES = ("application/json",)
ALLOWED_HEADERS = "Authorization, Content-Encoding, Content-Type, If-Match, If-None-Match"
EXPOSED_HEADERS = "ETag, Link, Location, Retry-After"
#: The only words a boolean query parameter takes (as the API description says).
BOOLEAN_WORDS = {"true": True, "false": False}


def tornado_body_limit(limit: int) -> int:
    """Tornado's hard cut-off for a body, kept above our own 413 limit."""
    return limit * 2 + 1024


#: Tornado's cut-off for a body without Content-Length: never reached, ours is (see prepare).
CHUNKED_HARD_LIMIT = 2**62


#: Content-Encodings a request body may have (RFC 9110 8.4.1); anything else is a 415.
BODY_ENCODINGS = ("gzip", "x-gzip", "identity")


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` value lets us answer in gzip (RFC 9110 12.5.3):
    named (or ``*``) with a weight above zero."""
    named: dict[str, float] = {}
    for item in accept_encoding.split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip().lower()
        weight = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        if coding:
            named[coding] = weight
    for coding in ("gzip", "x-gzip", "*"):
        if coding in named:
            return named[coding] > 0
    return False


class GZip(tornado.web.GZipContentEncoding):
    """Tornado's gzip of answers (JSON and text of ``MIN_LENGTH`` bytes and more, to
    clients that accept it; ``Vary: Accept-Encoding`` always), honouring ``q=0``.

    Level 6 (Tornado's and gzip's default): a download page of 5,000 patients
    (1.3 MB of JSON) goes to 15% of that for about 21 ms of CPU; level 1 takes
    9 ms for 15% more bytes, level 9 twice the CPU for 4% fewer.  On a slow
    link the bytes cost more than the CPU (bench/README.md, "Compression").
    """

    GZIP_LEVEL = 6
    MIN_LENGTH = 1024

    def __init__(self, request: tornado.httputil.HTTPServerRequest) -> None:
        super().__init__(request)
        self._gzipping = accepts_gzip(request.headers.get("Accept-Encoding", ""))


class GzipBody:
    """A gzip request body inflated as it arrives, never past ``limit`` bytes.

    ``feed`` returns the inflated pieces of a chunk; it raises ``TooLarge`` as
    soon as the inflated size passes ``limit`` (zlib is asked for at most one
    byte more than room is left for, so a zip bomb costs ``limit`` bytes of
    memory and that much inflating, no more), ``Invalid`` for bytes that are
    not gzip.  ``close`` checks the stream ended (a truncated body is a 400).
    Several gzip members one after another are one body, as for gzip(1).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.fed = 0
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def feed(self, data: bytes) -> list[bytes]:
        self.fed += len(data)
        out: list[bytes] = []
        while data:
            try:
                piece = self._z.decompress(data, self.limit - self.size + 1)
            except zlib.error as exc:
                raise self._corrupt(str(exc)) from None
            self._add(piece, out)
            if self._z.eof:
                data = self._z.unused_data
                if data:
                    self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)  # another member
            else:
                data = self._z.unconsumed_tail
        return out

    def close(self) -> list[bytes]:
        out: list[bytes] = []
        if not self.fed:
            return out
        try:
            self._add(self._z.flush(), out)
        except zlib.error as exc:
            raise self._corrupt(str(exc)) from None
        if not self._z.eof:
            raise self._corrupt("the gzip stream is truncated")
        return out

    def _add(self, piece: bytes, out: list[bytes]) -> None:
        self.size += len(piece)
        if self.size > self.limit:
            raise TooLarge(
                f"request body is over the limit of {self.limit} bytes once inflated (Content-Encoding: gzip)"
            )
        if piece:
            out.append(piece)

    @staticmethod
    def _corrupt(why: str) -> Invalid:
        return Invalid(
            f"request body is not valid gzip (Content-Encoding: gzip): {why}",
            [{"field": "Content-Encoding", "message": "body is not valid gzip"}],
        )


def origin_allowed(origin: str, patterns: list[str]) -> bool:
    """Whether ``origin`` matches one of ``patterns`` ('*' matches anything)."""
    return any(fnmatch.fnmatchcase(origin, p) for p in patterns)


#: What each method needs unless a handler says otherwise.
DEFAULT_PERMISSIONS = {
    "GET": Permission.READ,
    "HEAD": Permission.READ,
    "POST": Permission.WRITE,
    "PUT": Permission.WRITE,
    "PATCH": Permission.WRITE,
    "DELETE": Permission.WRITE,
}
RATE_LIMITED = {Permission.WRITE, Permission.SYNC, Permission.RESOLVE}


class RedactedLogs(tornado.web.RequestHandler):
    """Tornado's own log lines for a request, without its credentials.

    Tornado logs ``request.uri`` (query and all) when a handler raises: an
    ``HTTPError`` with a message as a warning, anything else as an error with
    the request's repr.  Every handler here logs ``redact_uri`` instead.
    """

    def _request_summary(self) -> str:
        return f"{self.request.method} {redact_uri(self.request.uri or '')} ({self.request.remote_ip})"

    def log_exception(
        self, typ: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(value, tornado.web.HTTPError):
            message = value.get_message()
            if message:
                gen_log.warning("%d %s: %s", value.status_code, self._request_summary(), scrub(message))
        else:
            app_log.error("Uncaught exception %s", self._request_summary(), exc_info=(typ, value, tb))  # type: ignore[arg-type]


class StaticHandler(RedactedLogs, tornado.web.StaticFileHandler):
    """The dashboard's files, with the same credential-free log lines."""


@tornado.web.stream_request_body
class BaseHandler(RedactedLogs):
    ctx: Context
    #: method -> permission the caller's role must grant
    permissions: dict[str, Permission] = DEFAULT_PERMISSIONS
    #: no credentials needed (health, unknown paths)
    public = False
    principal: Principal | None = None

    def initialize(self, ctx: Context) -> None:
        self.ctx = ctx
        self._set_cors_headers()  # set_default_headers ran before ctx existed
        self._chunks: list[bytes] = []
        self._received = 0
        self._too_large = False
        self._gzip: GzipBody | None = None
        self._body_error: Invalid | None = None

    # Headers and CORS -------------------------------------------------------

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        if hasattr(self, "ctx"):
            self._set_cors_headers()

    def _set_cors_headers(self) -> None:
        origin = self.request.headers.get("Origin")
        if origin and origin_allowed(origin, self.ctx.settings.effective_cors_origins):
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Access-Control-Expose-Headers", EXPOSED_HEADERS)
            self.set_header("Vary", "Origin")

    def compute_etag(self) -> str | None:
        return None  # ETags are resource versions, set by the handlers

    async def options(self, *args: Any) -> None:
        origin = self.request.headers.get("Origin")
        if not origin or not origin_allowed(origin, self.ctx.settings.effective_cors_origins):
            raise Forbidden(f"origin {origin!r} is not allowed by CORS settings")
        self.set_header("Access-Control-Allow-Methods", ", ".join(self._allowed_methods()))
        self.set_header("Access-Control-Allow-Headers", ALLOWED_HEADERS)
        self.set_header("Access-Control-Max-Age", "600")
        self.set_status(204)
        self.finish()

    def _allowed_methods(self) -> list[str]:
        own = []
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            impl = getattr(type(self), method.lower(), None)
            if impl is not None and impl is not getattr(tornado.web.RequestHandler, method.lower(), None):
                own.append(method)
        return own + ["OPTIONS"]

    # Body -------------------------------------------------------------------

    async def prepare(self) -> None:
        self._track()
        length = self.request.headers.get("Content-Length")
        limit = self.ctx.settings.max_body_bytes
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise Invalid("Content-Length is not a number") from None
            if declared > limit:
                raise TooLarge(f"request body of {declared} bytes is over the limit of {limit} bytes")
        # Tornado's own limit answers a bare 400 (and cuts the connection), so
        # it sits above ours.  A chunked body is checked by data_received as it
        # arrives, and answered 413 once past our limit; Tornado checks each
        # chunk's declared size before reading it, so for one whose first chunk
        # alone declares more than its limit it would answer first: with no
        # Content-Length, Tornado's limit is lifted (data_received bounds what
        # is kept, and Tornado reads a chunk in pieces, never whole).
        hard = tornado_body_limit(limit) if length is not None else CHUNKED_HARD_LIMIT
        self.request.connection.set_max_body_size(hard)  # type: ignore[union-attr]
        self._body_encoding(limit)
        if self.request.method != "OPTIONS":
            await self.authenticate()

    def _body_encoding(self, limit: int) -> None:
        """Inflate a gzip body as it arrives (see ``GzipBody``); 415 for another
        ``Content-Encoding`` on a request with a body."""
        value = self.request.headers.get("Content-Encoding", "")
        codings = [c.strip().lower() for c in value.split(",") if c.strip()]
        if not codings or self.request.method not in ("POST", "PUT", "PATCH"):
            return
        unknown = [c for c in codings if c not in BODY_ENCODINGS]
        if unknown:
            raise UnsupportedMediaType(
                f"Content-Encoding {value.strip()[:60]!r} is not supported: send the body as is, or gzip",
                [{"field": "Content-Encoding", "message": "expected gzip or none"}],
            )
        gzips = sum(1 for c in codings if c != "identity")
        if gzips > 1:
            raise UnsupportedMediaType(
                "a body gzipped more than once is not supported: gzip it once",
                [{"field": "Content-Encoding", "message": "expected gzip or none"}],
            )
        if gzips:
            self._gzip = GzipBody(limit)

    async def authenticate(self) -> None:
        """Who is asking (401 without a live token in token mode) and may they (403)."""
        if self.public:
            return
        if self.ctx.settings.auth_mode == "open":
            principal = OPEN
        else:
            principal = await self.ctx.tokens.authenticate(self.credentials())
        self.principal = principal
        permission = self.permissions.get(self.request.method or "")
        if permission is None:
            return  # Tornado answers 405
        require(principal, permission)
        if permission in RATE_LIMITED:
            await self.ctx.limiter.check(principal.name or f"ip:{self.request.remote_ip}")

    def credentials(self) -> str | None:
        return bearer(self.request.headers.get("Authorization"))

    @property
    def owner(self) -> str | None:
        """The ``owner`` of what this request creates: the token's name (null in open mode)."""
        return None if self.principal is None else self.principal.name

    def _track(self) -> None:
        """Count this request as in flight until it finishes (for graceful shutdown)."""
        if not getattr(self, "_tracked", False):
            self._tracked = True
            self.ctx.inflight += 1
            self.ctx.idle.clear()

    def on_finish(self) -> None:
        self._audit()
        if getattr(self, "_tracked", False):
            self._tracked = False
            self.ctx.inflight -= 1
            if not self.ctx.inflight:
                self.ctx.idle.set()

    def on_connection_close(self) -> None:
        # Tornado's own ends a request still waiting for its body (the client
        # went away mid-body, or we answered early): without it the request
        # would wait until shutdown.
        super().on_connection_close()
        if getattr(self, "_tracked", False):
            self._tracked = False
            self.ctx.inflight -= 1
            if not self.ctx.inflight:
                self.ctx.idle.set()

    def _audit(self) -> None:
        if self.public or self.request.method == "OPTIONS" or not self.request.path.startswith("/api/"):
            return
        principal = self.principal
        self.ctx.audit.record(
            who=None if principal is None else principal.name,
            role=None if principal is None else principal.role,
            method=self.request.method or "",
            path=scrub(self.request.path),
            query=redact_query(self.request.query),
            status=self.get_status(),
            remote_ip=self.request.remote_ip,
        )

    def data_received(self, chunk: bytes) -> None:
        """Keep the body up to ``max_body_bytes``; past it (a chunked body,
        whose size was not declared) answer 413 at once.

        Finishing while the body is still arriving makes Tornado drop the
        rest and close the connection once the answer is written; the close
        ends this request's wait for its body, so the method never runs.
        """
        if self._too_large or self._body_error is not None:
            return
        self._received += len(chunk)
        limit = self.ctx.settings.max_body_bytes
        if self._received <= limit:
            if self._gzip is None:
                self._chunks.append(chunk)
                return
            try:
                self._chunks.extend(self._gzip.feed(chunk))
                return
            except Invalid as bad:  # answered by json_body: the rest is read and dropped
                self._body_error = bad
                self._chunks = []
                return
            except TooLarge as over:
                exc = over
        else:
            exc = TooLarge(f"request body is over the limit of {limit} bytes")
        self._too_large = True
        self._chunks = []
        log.info("%s %s -> 413 %s", self.request.method, self.request.path, exc.message)
        # not send_error: its clear() would drop the Connection header
        self.set_status(exc.status)
        self.set_header("Connection", "close")  # the rest of the body is not read
        self.write_error(exc.status, exc_info=(type(exc), exc, None))

    def json_body(self) -> Any:
        """The request body parsed as JSON; 413, 415 or 400 when it cannot be."""
        if self._too_large:
            limit = self.ctx.settings.max_body_bytes
            raise TooLarge(f"request body is over the limit of {limit} bytes")
        if self._body_error is not None:
            raise self._body_error
        if self._gzip is not None:
            self._chunks.extend(self._gzip.close())
        body = b"".join(self._chunks)
        ctype = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype and ctype not in JSON_TYPES and not ctype.endswith("+json"):
            raise UnsupportedMediaType(
                f"Content-Type {ctype!r} is not supported: send application/json",
                [{"field": "Content-Type", "message": "expected application/json"}],
            )
        if not body.strip():
            raise Invalid("request body is empty: send a JSON object", [{"field": "body", "message": "empty"}])
        return loads(body)

    # Query arguments --------------------------------------------------------

    def arg(self, name: str) -> str | None:
        values = self.request.query_arguments.get(name)
        if not values:
            return None
        try:
            return values[-1].decode("utf-8")
        except UnicodeDecodeError:
            raise Invalid(f"{name} is not valid UTF-8", [{"field": name, "message": "not UTF-8"}]) from None

    def bool_arg(self, name: str, default: bool = False) -> bool:
        """``true`` or ``false`` exactly (absent: ``default``); anything else, empty
        included, is a 400 naming ``name``."""
        value = self.arg(name)
        if value is None:
            return default
        try:
            return BOOLEAN_WORDS[value]
        except KeyError:
            raise Invalid(
                f"{name} must be true or false", [{"field": name, "message": f"{value[:40]!r} is not true or false"}]
            ) from None

    def int_arg(self, name: str, *, minimum: int, maximum: int) -> int | None:
        """A whole number in range (absent: None); anything else, empty included, is a 400 naming ``name``."""
        value = self.arg(name)
        if value is None:
            return None
        if not value.isascii() or not value.isdigit() or not minimum <= int(value) <= maximum:
            raise Invalid(
                f"{name} must be a whole number from {minimum} to {maximum}",
                [{"field": name, "message": f"{value[:40]!r} is not a number from {minimum} to {maximum}"}],
            )
        return int(value)

    def after_arg(self) -> int:
        """The page key of a list's ``Link: rel="next"`` (0: from the start)."""
        return self.int_arg("after", minimum=0, maximum=2**62) or 0

    def limit_arg(self) -> int | None:
        return self.int_arg("limit", minimum=1, maximum=self.ctx.settings.page_limit_max)

    def device_arg(self) -> str | None:
        """``device_id`` naming the device this request acts as (see ``device_param``)."""
        return device_param(self.arg("device_id"), self.principal, acts=True)

    def uuid_arg(self, name: str) -> str | None:
        value = self.arg(name)
        return None if value is None else parse_uuid(value, name)

    def path_id(self, value: str, what: str = "id") -> str:
        return parse_uuid(value, what)

    # Responses --------------------------------------------------------------

    def write_json(self, value: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(orjson.dumps(value))

    def set_link_next(self, after: int | None, **params: Any) -> None:
        """An RFC 8288 ``Link: <…>; rel="next"`` keeping this request's other arguments."""
        if after is None:
            return
        from urllib.parse import urlencode

        args = {k: v[-1].decode("utf-8", "replace") for k, v in self.request.query_arguments.items()
                if not is_credential_name(k)}
        args.update({k: str(v) for k, v in params.items()})
        args["after"] = str(after)
        url = f"{self.request.protocol}://{self.request.host}{self.request.path}?{urlencode(args)}"
        self.set_header("Link", f'<{url}>; rel="next"')

    # Errors -----------------------------------------------------------------

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, DatabaseClosed):
            # A request on a kept-alive connection after shutdown closed the
            # database: the client should come back, not see a server fault.
            e = ShuttingDown("the server is shutting down: retry in a moment")
        if isinstance(e, HealthSyncError) and not self._finished:
            log.info("%s %s -> %d %s", self.request.method, scrub(self.request.path), e.status, e.message)
            self._reason = tornado.httputil.responses.get(e.status, "Error")
            self.send_error(e.status, exc_info=(type(e), e, e.__traceback__))
            return
        super()._handle_request_exception(e)  # type: ignore[arg-type]

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if status_code == 405 and isinstance(exc, tornado.web.HTTPError):
            body = {"error": f"method {self.request.method} is not allowed on {self.request.path}", "details": []}
            self.set_header("Allow", ", ".join(self._allowed_methods()))
        else:
            body = error_body(self, status_code, exc)
        if status_code == 415 and "Content-Encoding" in self.request.headers:
            self.set_header("Accept-Encoding", "gzip")  # RFC 9110 12.5.3: what a body may be sent in
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(orjson.dumps(body))


def error_body(handler: tornado.web.RequestHandler, status_code: int, exc: BaseException | None) -> dict[str, Any]:
    """The one JSON shape of an error, ``{"error", "details"}``, plus the headers it
    carries (``Retry-After``, ``WWW-Authenticate``); shared by every handler and the
    websocket handshake.  A 5xx that is not ours says nothing about internals."""
    if isinstance(exc, HealthSyncError):
        if exc.retry_after is not None:
            handler.set_header("Retry-After", str(exc.retry_after))
        if isinstance(exc, Unauthorized):
            handler.set_header("WWW-Authenticate", 'Bearer realm="healthsync"')
        return exc.body()
    if status_code >= 500:
        return {"error": "internal server error", "details": []}
    if isinstance(exc, tornado.web.HTTPError) and exc.log_message:
        return {"error": exc.log_message, "details": []}
    return {"error": handler._reason, "details": []}


def device_param(value: str | None, principal: Principal | None, *, acts: bool) -> str | None:
    """A request's ``device_id`` parameter: 1 to 256 characters (400), and one
    ``principal`` may name (403, ``auth.require_device``: the check upload and
    trigger make too; ``acts`` as there).  Absent: None."""
    if value is None:
        return None
    if not 0 < len(value) <= 256:
        raise Invalid("device_id must be 1 to 256 characters", [{"field": "device_id", "message": "bad length"}])
    if principal is not None:
        require_device(principal, value, acts=acts)
    return value


class NotFoundHandler(BaseHandler):
    """The default handler: any unknown path is a JSON 404, whatever the method."""

    public = True

    async def prepare(self) -> None:
        if self.request.method == "OPTIONS":
            return
        raise NotFound(f"no such path: {self.request.path}")


__all__ = ["BaseHandler", "NotFoundHandler", "RedactedLogs", "StaticHandler", "origin_allowed"]
