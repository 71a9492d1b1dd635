"""Benchmark of the live push (``/api/sync/ws``): fan-out latency and memory per idle socket.

Run by hand, never in CI.  Every byte goes over 127.0.0.1; every loop is
bounded and the script stops by itself.  Example (about 5-10 minutes on a
2-core box)::

    python bench/bench_push.py --subscribers 100,1000 --writes 50 --memory 1000,5000 --runs 3

What it measures, against three servers started as subprocesses the same way:

* ``healthsync``: the real server, ``python run.py --port 0 --data-dir <tmp> --no-worker``.
* ``bare``: a bare Tornado websocket server written below (``--role bare-server``)
  that, on ``POST /api/patients/``, builds one ``changes`` frame of the same
  shape and size as HealthSync's and calls ``write_message`` on every socket,
  then answers the POST (a naive broadcast).
* ``bare-ack``: the same bare server answering the POST first and broadcasting
  right after, in the same handler: the order HealthSync has (acknowledge the
  write, then fan out), so the response anchor below measures the same span
  for both.

1. Fan-out latency.  N subscribers connect to ``/api/sync/ws?cursor=<head>``
   and wait for their ``hello``; then W patients are created one at a time
   (``--pause`` between writes).  For every (write, subscriber) pair the
   latency runs from the moment the writer has the HTTP response to the moment
   that subscriber's client receives the ``changes`` message carrying the new
   patient's ``server_id``.  Both clocks are ``CLOCK_MONOTONIC``
   (``time.monotonic``), shared by every process on the machine.  A pair can
   be negative when the frame overtakes the HTTP response, which is the rule
   for the bare server: it answers only after its broadcast loop, while
   HealthSync answers first and fans out after the commit.  So a second table
   gives the same pairs measured from the moment the POST left the writer,
   with the POST round trip and the server's CPU time (user+sys) per write.
2. Memory per idle connection.  Server ``VmRSS`` (``/proc/<pid>/status``)
   after start-up and one warm-up socket, then again once N sockets are
   connected, have their ``hello`` and have sat idle for ``--settle`` seconds;
   (after - before) / N.

Subscribers live in separate client processes (``--role client``) driven by
this one over stdin/stdout, so the writer, the clients and the server each
have their own event loop.  The latency test uses one client process by
default (``--latency-clients``): on 2 cores a second one only competes with
the server for CPU.  The memory test uses one per ``--per-client`` sockets.
The file-descriptor limit is raised to the hard limit in this process before
anything is spawned (children inherit it) and again in every client process.

Two websocket clients hold the subscribers (``--client``):

* ``raw`` (the default): a minimal RFC 6455 client on an asyncio ``Protocol``
  (``RawWS``, no dependency): it sends the upgrade (no ``Origin``, no
  permessage-deflate offered), then parses frames as each read arrives and
  stamps every message a read completes with the time that read arrived.
  It reads with ``recv_into`` into one shared buffer (``BufferedProtocol``):
  the plain ``Protocol`` path allocates 256 KiB per ``recv``, which cost
  about 20 us of kernel time per message.
* ``tornado``: Tornado's ``websocket_connect``, kept for comparison.  Its
  per-frame coroutine machinery costs about 90 us of client CPU per received
  message: 80-100 ms per write at 1,000 subscribers, more than HealthSync's
  own ~36 ms, on the same 2 cores; so with it the latency figures mostly
  measured the client's own decoding.  Hence ``raw`` by default.

``--deflate``: every client offers permessage-deflate (RFC 7692) and inflates
compressed messages, and the bare servers accept it (Tornado's own
per-connection compressor: every frame compressed again for every socket).
HealthSync accepts it too, and compresses the catch-up only: its live frames
go uncompressed (see ``healthsync/web/ws.py``).  The flag reaches the client
and bare-server processes as ``BENCH_PUSH_DEFLATE=1`` in their environment.

Either way messages are only stored on receipt (receive time, text) and parsed
after the run.

Each figure is the median over ``--runs`` runs; the servers alternate
within each run so that noise on a shared machine hits them all alike.
``--profile DIR`` runs ``py-spy record`` on each server during the measured
writes (those runs' latencies are perturbed; use them for where time goes,
not for figures); ``--json FILE`` keeps every run's numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import math
import os
import re
import resource
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

try:
    import orjson

    def loads(data: str | bytes) -> Any:
        return orjson.loads(data)
except ImportError:  # pragma: no cover - the project's venv has orjson
    loads = json.loads

ROOT = Path(__file__).resolve().parent.parent
SELF = Path(__file__).resolve()
HOST = "127.0.0.1"
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
WS_PATH = "/api/sync/ws"
POST_PATH = "/api/patients/"
SERVERS = ("healthsync", "bare", "bare-ack")
MEMORY_SERVERS = ("healthsync", "bare")  # bare-ack holds sockets exactly as bare does
CLIENTS = ("raw", "tornado")
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 1.3


# --------------------------------------------------------------------------------------
# Shared helpers


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process so far (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])  # kB
    raise RuntimeError(f"no VmRSS for pid {pid}")


def patient_body(i: int) -> bytes:
    """A small patient; its ``changes`` message is about 370 bytes."""
    return json.dumps(
        {"name": f"Bench Patient {i:06d}", "dob": "1990-01-01", "identifiers": {"mrn": f"MRN-{i:08d}"}, "fhir": {}}
    ).encode()


def pct(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return math.nan
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


# --------------------------------------------------------------------------------------
# Role: bare Tornado broadcast server


#: --deflate, passed to the client and bare-server processes through their environment
DEFLATE = os.environ.get("BENCH_PUSH_DEFLATE") == "1"


def bare_server(port: int, answer_first: bool = False) -> None:
    import tornado.web
    import tornado.websocket
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    clients: set[tornado.websocket.WebSocketHandler] = set()
    state = {"seq": 0}

    class Socket(tornado.websocket.WebSocketHandler):
        def check_origin(self, origin: str) -> bool:
            return True

        def get_compression_options(self) -> dict[str, Any] | None:
            return {} if DEFLATE else None

        def open(self, *args: Any, **kwargs: Any) -> None:
            clients.add(self)
            self.write_message(b'{"type":"hello","cursor":"0","head":"0"}')

        def on_message(self, message: str | bytes) -> None:
            pass

        def on_close(self) -> None:
            clients.discard(self)

    class Post(tornado.web.RequestHandler):
        def post(self) -> None:
            body = json.loads(self.request.body)
            state["seq"] += 1
            pid = str(uuid.uuid4())
            now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{time.time_ns() // 1000 % 1_000_000:06d}Z"
            data = {"owner": None, **body}
            entry = {
                "server_id": pid, "resource_type": "Patient", "data": data,
                "server_version": 1, "updated_at": now, "deleted": False,
            }
            frame = json.dumps(
                {"type": "changes", "changes": [entry], "cursor": str(state["seq"]), "server_time": now},
                separators=(",", ":"),
            ).encode()
            if not answer_first:  # naive broadcast: write_message to every socket, then answer
                broadcast(frame)
            self.set_status(201)
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"id": pid, **data, "server_version": 1, "updated_at": now, "deleted": False}))
            if answer_first:  # acknowledge the write, then fan out (HealthSync's order)
                broadcast(frame)

    def broadcast(frame: bytes) -> None:
        for c in list(clients):
            try:
                c.write_message(frame)
            except tornado.websocket.WebSocketClosedError:
                clients.discard(c)

    async def main() -> None:
        app = tornado.web.Application([(WS_PATH, Socket), (POST_PATH, Post)])
        server = HTTPServer(app)
        sockets = bind_sockets(port, HOST)
        server.add_sockets(sockets)
        print(f"listening on http://{HOST}:{sockets[0].getsockname()[1]}", file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.stop()
        for c in list(clients):
            c.close(1001)
        await asyncio.sleep(0.1)

    asyncio.run(main())


# --------------------------------------------------------------------------------------
# Role: client process holding subscribers, driven by JSON lines on stdin/stdout


class Conn:
    __slots__ = ("ws", "msgs", "hello", "closed")

    def __init__(self) -> None:
        self.ws: Any = None
        self.msgs: list[tuple[float, str]] = []  # (CLOCK_MONOTONIC, raw text); parsed after the run
        self.hello = asyncio.Event()
        self.closed = False

    def on_message(self, msg: str | bytes | None) -> None:
        t = time.monotonic()  # first thing: the receive time
        if msg is None:
            self.closed = True
            return
        self.msgs.append((t, msg if isinstance(msg, str) else msg.decode()))
        if len(self.msgs) == 1:
            self.hello.set()


class RawWS(asyncio.BufferedProtocol):
    """A lean RFC 6455 websocket client for one subscriber, on an asyncio protocol.

    Sends the upgrade request (no ``Origin``, no extensions offered), checks
    the ``101`` and ``Sec-WebSocket-Accept``, then parses the server's frames
    as each read arrives into ``conn.msgs``.  Every message completed by one
    read gets the time that read arrived.  Pings are answered, a close is
    echoed; the client's own frames are masked.

    A ``BufferedProtocol``: the loop reads with ``recv_into`` one buffer shared
    by every connection (``get_buffer`` -> ``recv_into`` -> ``buffer_updated``
    run back to back in one callback), where a plain ``Protocol`` gets a fresh
    256 KiB ``recv`` per read, about 20 us of kernel time each.
    """

    rbuf = memoryview(bytearray(1 << 16))

    def __init__(self, conn: Conn, host: str, target: str) -> None:
        self.conn = conn
        self.key = base64.b64encode(os.urandom(16))
        self.request = (
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {self.key.decode()}\r\nSec-WebSocket-Version: 13\r\n"
            + ("Sec-WebSocket-Extensions: permessage-deflate\r\n" if DEFLATE else "")
            + "\r\n"
        ).encode()
        self.inflater: Any = None  # a zlib decompressobj once permessage-deflate is agreed
        self.frag_deflated = False
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.close_sent = False
        self.buf = b""
        self.frags: list[bytes] | None = None  # payloads of a fragmented message so far

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.closed = True
        self.transport = None
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"connection lost during the handshake ({exc!r})"))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.rbuf

    def buffer_updated(self, nbytes: int) -> None:
        t = time.monotonic()  # first thing: the receive time of every message this read completes
        self._received(t, self.rbuf[:nbytes].tobytes())

    def _received(self, t: float, data: bytes) -> None:
        """Parse ``data`` (one read, received at ``t``) after what is left of the previous reads."""
        buf = self.buf + data if self.buf else data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    self._fail("handshake response headers too long")
                else:
                    self.buf = buf
                return
            if not self._handshake(buf[:end]):
                return
            buf = buf[end + 4 :]
        msgs = self.conn.msgs
        size = len(buf)
        pos = 0
        while size - pos >= 2:
            b0 = buf[pos]
            n = buf[pos + 1]
            if n & 0x80 or b0 & (0x30 if self.inflater is not None else 0x70):
                self._fail("masked frame or RSV bits from the server")
                return
            if n < 126:
                start = pos + 2
            elif n == 126:
                start = pos + 4
                if start > size:
                    break
                n = struct.unpack_from("!H", buf, pos + 2)[0]
            else:
                start = pos + 10
                if start > size:
                    break
                n = struct.unpack_from("!Q", buf, pos + 2)[0]
            end = start + n
            if end > size:
                break
            payload = buf[start:end]
            pos = end
            op = b0 & 0x0F
            if op & 0x08:
                if not self._control(b0, op, payload):
                    return
                continue
            if op == 0:
                if self.frags is None:
                    self._fail("continuation frame outside a fragmented message")
                    return
                self.frags.append(payload)
                if not b0 & 0x80:
                    continue
                payload = b"".join(self.frags)
                self.frags = None
                if self.frag_deflated:
                    payload = self.inflater.decompress(payload + b"\x00\x00\xff\xff")
            elif op > 2 or self.frags is not None:
                self._fail(f"unexpected data frame (opcode {op})")
                return
            elif not b0 & 0x80:
                self.frags = [payload]
                self.frag_deflated = bool(b0 & 0x40)
                continue
            elif b0 & 0x40:  # RSV1: a compressed message (RFC 7692)
                payload = self.inflater.decompress(payload + b"\x00\x00\xff\xff")
            msgs.append((t, payload.decode()))  # text, or binary decoded as the Tornado path does
            if len(msgs) == 1:
                self.conn.hello.set()
        self.buf = buf[pos:] if pos < size else b""

    def _handshake(self, head: bytes) -> bool:
        """Check the upgrade response; False (and the connection failed) if it is not one."""
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        accept = base64.b64encode(hashlib.sha1(self.key + WS_GUID).digest()).decode()
        if len(status) < 2 or status[1] != "101":
            self._fail(f"handshake answered {lines[0]!r}")
        elif headers.get("upgrade", "").lower() != "websocket" or headers.get("sec-websocket-accept") != accept:
            self._fail(f"bad upgrade response: {headers}")
        elif headers.get("sec-websocket-extensions") and not (
            DEFLATE and headers["sec-websocket-extensions"].startswith("permessage-deflate")
        ):
            self._fail(f"extension not offered: {headers['sec-websocket-extensions']}")
        else:
            if headers.get("sec-websocket-extensions"):
                self.inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            self.upgraded = True
            self.opened.set_result(None)
        return self.upgraded

    def _control(self, b0: int, op: int, payload: bytes) -> bool:
        """Handle a close, ping or pong; False once the connection is done."""
        if not b0 & 0x80 or len(payload) > 125:
            self._fail("fragmented or oversized control frame")
            return False
        if op == 0x9:
            self._send(0xA, payload)
        elif op == 0x8:
            self.conn.closed = True
            if not self.close_sent:
                self.close_sent = True
                self._send(0x8, payload[:2])
            if self.transport is not None:
                self.transport.close()
            return False
        elif op != 0xA:
            self._fail(f"unknown control opcode {op}")
            return False
        return True

    def _send(self, op: int, payload: bytes = b"") -> None:
        """Write one final frame; a client's frames are masked (RFC 6455 5.3)."""
        if self.transport is None or self.transport.is_closing():
            return
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | op, 0x80 | n)
        elif n <= 0xFFFF:
            head = struct.pack("!BBH", 0x80 | op, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | op, 0x80 | 127, n)
        mask = os.urandom(4)
        key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
        self.transport.write(head + mask + (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big"))

    def _fail(self, reason: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(reason))
        else:
            print(f"client: {reason}", file=sys.stderr)
        self.close(1002)

    def close(self, code: int = 1000) -> None:
        """Send a close frame (once the socket is upgraded) and close the transport."""
        if not self.opened.done():
            self.opened.cancel()
        if self.transport is None:
            return
        if self.upgraded and not self.close_sent:
            self.close_sent = True
            self._send(0x8, struct.pack("!H", code))
        self.transport.close()


async def raw_connect(url: str, conn: Conn) -> None:
    """Open ``conn`` with a ``RawWS`` to a ``ws://`` URL; returns after the ``101``."""
    u = urlsplit(url)
    target = (u.path or "/") + (f"?{u.query}" if u.query else "")
    proto = RawWS(conn, u.netloc, target)
    conn.ws = proto
    await asyncio.get_running_loop().create_connection(lambda: proto, u.hostname, u.port or 80)
    await proto.opened


def client_process(kind: str) -> None:
    raise_nofile()
    asyncio.run(_client_main(kind))


async def _client_main(kind: str) -> None:
    if kind == "tornado":
        from tornado.websocket import websocket_connect

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    conns: list[Conn] = []

    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    async def connect_one(url: str, timeout: float) -> bool:
        c = Conn()
        for _attempt in range(3):
            try:
                if kind == "raw":
                    await asyncio.wait_for(raw_connect(url, c), timeout)
                else:
                    c.ws = await asyncio.wait_for(
                        websocket_connect(url, on_message_callback=c.on_message, connect_timeout=timeout,
                                          compression_options={} if DEFLATE else None), timeout
                    )
                await asyncio.wait_for(c.hello.wait(), timeout)
                conns.append(c)
                return True
            except Exception as exc:  # retried; counted as a failure after 3 attempts
                last = exc
                if c.ws is not None:
                    c.ws.close()
                c = Conn()
                await asyncio.sleep(0.2)
        print(f"client: connect failed: {last!r}", file=sys.stderr)
        return False

    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        if cmd["cmd"] == "connect":
            t0 = time.monotonic()
            sem = asyncio.Semaphore(cmd["concurrency"])

            async def guarded(sem: asyncio.Semaphore, url: str, timeout: float) -> bool:
                async with sem:
                    return await connect_one(url, timeout)

            results = await asyncio.gather(*(guarded(sem, cmd["url"], cmd["timeout"]) for _ in range(cmd["n"])))
            ok = sum(results)
            reply({"connected": ok, "failed": len(results) - ok, "seconds": time.monotonic() - t0})
        elif cmd["cmd"] == "collect":
            t_resp: dict[str, float] = cmd["t_resp"]
            deadline = time.monotonic() + cmd["timeout"]
            seen: list[dict[str, float]] = [{} for _ in conns]
            parsed = [1] * len(conns)  # skip each connection's hello
            while True:
                missing = 0
                for i, c in enumerate(conns):
                    for t, raw in c.msgs[parsed[i]:]:
                        msg = loads(raw)
                        if msg.get("type") == "changes":
                            for e in msg["changes"]:
                                seen[i].setdefault(e["server_id"], t)
                    parsed[i] = len(c.msgs)
                    missing += sum(1 for sid in t_resp if sid not in seen[i])
                if missing == 0 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            lat = [round((s[sid] - t) * 1000, 4) for s in seen for sid, t in t_resp.items() if sid in s]
            t_sent: dict[str, float] = cmd.get("t_sent", {})
            req = [round((s[sid] - t) * 1000, 4) for s in seen for sid, t in t_sent.items() if sid in s]
            worst = {sid: max((s[sid] - t) * 1000 for s in seen if sid in s) for sid, t in t_resp.items()
                     if any(sid in s for s in seen)}
            reply({"lat_ms": lat, "req_ms": req, "worst_ms": worst, "missing": missing,
                   "closed": sum(c.closed for c in conns)})
            for c in conns:  # ready for another round
                c.msgs[1:] = []
        elif cmd["cmd"] == "cpu":
            reply({"cpu": time.process_time()})
        elif cmd["cmd"] == "quit":
            for c in conns:
                if c.ws is not None:
                    c.ws.close()
            await asyncio.sleep(0.2)
            reply({"bye": True})
            break


# --------------------------------------------------------------------------------------
# Orchestrator


class Server:
    """One server subprocess; stderr goes to a file (never a pipe that could fill)."""

    def __init__(self, kind: str, workdir: Path, log_level: str | None) -> None:
        self.kind = kind
        self.workdir = workdir
        self.log_path = workdir / f"{kind}.log"
        if kind == "healthsync":
            args = [sys.executable, "run.py", "--port", "0", "--data-dir", str(workdir / "data"), "--no-worker"]
            if log_level:
                args += ["--log-level", log_level]
        else:
            args = [sys.executable, str(SELF), "--role", "bare-server"]
            if kind == "bare-ack":
                args.append("--answer-first")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        self.port = self._wait_port()

    def _wait_port(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = LISTENING.search(self.log_path.read_text(errors="replace"))
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.kind} did not start:\n{self.log_path.read_text(errors='replace')[-3000:]}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Client:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, kind: str) -> Client:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(SELF), "--role", "client", "--client", kind,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 26,
        )
        return cls(proc)

    async def call(self, wait: float, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), wait)
        if not line:
            raise RuntimeError("client process died")
        return json.loads(line)

    async def quit(self) -> None:
        try:
            await self.call(15, cmd="quit")
        except Exception:
            pass
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def start_clients(k: int, kind: str) -> list[Client]:
    return list(await asyncio.gather(*(Client.start(kind) for _ in range(k))))


def split(n: int, k: int) -> list[int]:
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


async def connect_all(clients: list[Client], url: str, n: int, concurrency: int) -> float:
    t0 = time.monotonic()
    shares = split(n, len(clients))
    replies = await asyncio.gather(
        *(
            c.call(600, cmd="connect", url=url, n=s, concurrency=concurrency, timeout=30)
            for c, s in zip(clients, shares, strict=True)
        )
    )
    failed = sum(r["failed"] for r in replies)
    if failed:
        raise RuntimeError(f"{failed} of {n} websockets failed to connect to {url}")
    return time.monotonic() - t0


async def current_head(port: int) -> str:
    """The server's head cursor, from the ``hello`` of one short-lived socket (also a warm-up)."""
    from tornado.websocket import websocket_connect

    ws = await websocket_connect(f"ws://{HOST}:{port}{WS_PATH}?cursor=0")
    hello = loads(await ws.read_message())
    ws.close()
    await asyncio.sleep(0.1)
    return hello.get("head") or "0"


async def post_patient(port: int, i: int) -> tuple[str, float, float]:
    """Create one patient over a fresh connection; (id, time the request left, time the response was in)."""
    body = patient_body(i)
    t_sent = time.monotonic()
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(
        f"POST {POST_PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
    payload = await reader.readexactly(length)
    t = time.monotonic()  # the response is in
    writer.close()
    status = int(head.split(b" ", 2)[1])
    if status != 201:
        raise RuntimeError(f"POST answered {status}: {payload[:300]!r}")
    return loads(payload)["id"], t_sent, t


async def latency_run(kind: str, n: int, opts: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    server = Server(kind, workdir, opts.log_level)
    clients: list[Client] = []
    try:
        head = await current_head(server.port)
        clients = await start_clients(opts.latency_clients, opts.client)
        url = f"ws://{HOST}:{server.port}{WS_PATH}?cursor={head}"
        connect_s = await connect_all(clients, url, n, opts.concurrency)
        await asyncio.sleep(opts.settle)
        for i in range(opts.warmup_writes):  # not counted: first-use costs
            await post_patient(server.port, 900_000 + i)
            await asyncio.sleep(opts.pause)
        if opts.warmup_writes:
            await asyncio.sleep(0.5)
            await asyncio.gather(*(c.call(120, cmd="collect", t_resp={}, timeout=0) for c in clients))
        if opts.profile:
            prof = start_profile(server.pid, workdir, kind, n, opts)
        else:
            prof = None
        t_resp: dict[str, float] = {}
        t_sent: dict[str, float] = {}
        wall: dict[str, float] = {}
        wall0 = time.time()
        cpu0 = cpu_seconds(server.pid)
        ccpu0 = sum(r["cpu"] for r in await asyncio.gather(*(c.call(30, cmd="cpu") for c in clients)))
        for i in range(opts.writes):
            sid, t0, t1 = await post_patient(server.port, i)
            t_sent[sid], t_resp[sid], wall[sid] = t0, t1, time.time()
            await asyncio.sleep(opts.pause)
        cpu = cpu_seconds(server.pid) - cpu0
        wall1 = time.time()
        ccpu = sum(r["cpu"] for r in await asyncio.gather(*(c.call(30, cmd="cpu") for c in clients))) - ccpu0
        if prof is not None:
            stop_profile(prof)
        replies = await asyncio.gather(
            *(c.call(300, cmd="collect", t_resp=t_resp, t_sent=t_sent, timeout=10) for c in clients)
        )
        lat = sorted(x for r in replies for x in r["lat_ms"])
        req = sorted(x for r in replies for x in r["req_ms"])
        rtt = sorted((t_resp[k] - t_sent[k]) * 1000 for k in t_resp)
        missing = sum(r["missing"] for r in replies)
        return {
            "server": kind, "client": opts.client, "subscribers": n, "pairs": len(lat), "missing": missing,
            "connect_s": connect_s,
            "p50": pct(lat, 50), "p99": pct(lat, 99), "max": lat[-1] if lat else math.nan,
            "min": lat[0] if lat else math.nan,
            "req_p50": pct(req, 50), "req_p99": pct(req, 99), "req_max": req[-1] if req else math.nan,
            "post_p50": pct(rtt, 50), "post_max": rtt[-1], "server_cpu_ms_per_write": cpu * 1000 / opts.writes,
            "client_cpu_ms_per_write": ccpu * 1000 / opts.writes, "server_pid": server.pid,
            "writes_wall": [wall0, wall1],
            "per_write": [[wall[sid], max(r["worst_ms"].get(sid, math.nan) for r in replies)] for sid in t_resp],
        }
    finally:
        server.stop()
        await asyncio.gather(*(c.quit() for c in clients))


async def memory_run(kind: str, n: int, opts: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    server = Server(kind, workdir, opts.log_level)
    clients: list[Client] = []
    try:
        head = await current_head(server.port)  # one warm-up socket, closed
        k = max(1, math.ceil(n / opts.per_client))
        clients = await start_clients(k, opts.client)
        await asyncio.sleep(opts.settle)
        before = rss_kib(server.pid)
        connect_s = await connect_all(clients, f"ws://{HOST}:{server.port}{WS_PATH}?cursor={head}", n, opts.concurrency)
        await asyncio.sleep(opts.settle)
        after = rss_kib(server.pid)
        return {
            "server": kind, "client": opts.client, "connections": n, "clients": k, "connect_s": connect_s,
            "before_kib": before, "after_kib": after, "per_conn_kib": (after - before) / n,
        }
    finally:
        server.stop()
        await asyncio.gather(*(c.quit() for c in clients))


def start_profile(pid: int, workdir: Path, kind: str, n: int, opts: argparse.Namespace) -> subprocess.Popen[bytes]:
    out = Path(opts.profile) / f"{kind}-{n}-{int(time.time())}"
    duration = math.ceil(opts.writes * (opts.pause + 0.05)) + 2
    args = [
        opts.py_spy, "record", "--pid", str(pid), "--rate", str(opts.profile_rate), "--duration", str(duration),
        "--format", "raw", "--output", str(out) + ".txt", *opts.profile_args.split(),
    ]
    print(f"  py-spy -> {out}.txt (this run's latencies are perturbed by the profiler)", file=sys.stderr)
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(str(out) + ".log", "wb"))


def stop_profile(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)


def machine() -> dict[str, str]:
    model = ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    mem = ""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    import tornado

    return {
        "nproc": str(os.cpu_count()), "cpu": model, "mem": mem,
        "python": sys.version.split()[0], "tornado": tornado.version,
        "nofile": str(resource.getrlimit(resource.RLIMIT_NOFILE)[0]),
    }


def med(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def report(lat: list[dict[str, Any]], mem: list[dict[str, Any]], opts: argparse.Namespace) -> None:
    m = machine()
    print()
    print(f"Machine: {m['nproc']} cores ({m['cpu']}), {m['mem']} RAM, Python {m['python']}, "
          f"Tornado {m['tornado']}, RLIMIT_NOFILE {m['nofile']}")
    if lat:
        print()
        print(f"Fan-out latency: HTTP response in -> `changes` frame in, per (write, subscriber); "
              f"{opts.writes} writes, {int(opts.pause * 1000)} ms apart; subscribers in "
              f"{opts.latency_clients} client process(es), {opts.client} websocket client"
              f"{' offering permessage-deflate' if opts.deflate else ''}; median of {opts.runs} runs")
        print()
        print("| Subscribers | Server | p50 (ms) | p99 (ms) | max (ms) | missing | p99 vs bare | p99 vs bare-ack "
              "| Target: p99 < 100 ms, <= 1.5x bare (bare-ack) |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|---|")
        for n in opts.subscribers:
            rows = {k: [r for r in lat if r["subscribers"] == n and r["server"] == k] for k in SERVERS}

            def p99_of(kind: str, rows: dict[str, list[dict[str, Any]]] = rows) -> float:
                return med(rows[kind], "p99") if rows[kind] else math.nan

            for k in SERVERS:
                if not rows[k]:
                    continue
                p99 = med(rows[k], "p99")
                ratios = [p99 / p99_of(b) if p99_of(b) > 0 else math.nan for b in ("bare", "bare-ack")]
                if k == "healthsync":
                    fast = "<" if p99 < 100 else ">="
                    verdict = ", ".join(
                        f"{'pass' if p99 < 100 and r <= 1.5 else '**fail**'} vs {b} ({fast} 100 ms, {r:.2f}x)"
                        if not math.isnan(r) else f"vs {b}: see the from-request table"
                        for b, r in zip(("bare", "bare-ack"), ratios, strict=True))
                else:
                    verdict = "baseline"
                shown = [f"{r:.2f}x" if not math.isnan(r) else "n/a" for r in ratios]
                print(f"| {n:,} | {k} | {med(rows[k], 'p50'):.1f} | {p99:.1f} | {med(rows[k], 'max'):.1f} | "
                      f"{sum(r['missing'] for r in rows[k])} | {shown[0]} | {shown[1]} | {verdict} |")
        print()
        print("n/a: that baseline's p99 is at or below zero (its frames arrive before its own HTTP response), "
              "so a ratio to it means nothing; compare from the request instead.")
        print()
        print("Same runs, anchored on the moment the POST left the writer instead (the bare server answers only "
              "after its broadcast loop, HealthSync before its fan-out, so the response anchor flatters the bare "
              "server); with the POST round trip and the server's CPU time per write (user+sys)")
        print()
        print("| Subscribers | Server | p50 from request (ms) | p99 from request (ms) | p99 vs bare "
              "| POST round trip p50 (ms) | server CPU per write (ms) | Target: <= 1.5x bare |")
        print("|---:|---|---:|---:|---:|---:|---:|---|")
        for n in opts.subscribers:
            rows = {k: [r for r in lat if r["subscribers"] == n and r["server"] == k] for k in SERVERS}
            bare_p99 = med(rows["bare"], "req_p99") if rows["bare"] else math.nan
            for k in SERVERS:
                if not rows[k]:
                    continue
                p99 = med(rows[k], "req_p99")
                ratio = p99 / bare_p99 if bare_p99 > 0 else math.nan
                verdict = "baseline" if k != "healthsync" else (
                    "n/a" if math.isnan(ratio) else "pass" if ratio <= 1.5 else "**fail**")
                print(f"| {n:,} | {k} | {med(rows[k], 'req_p50'):.1f} | {p99:.1f} | {ratio:.2f}x | "
                      f"{med(rows[k], 'post_p50'):.1f} | {med(rows[k], 'server_cpu_ms_per_write'):.1f} | {verdict} |")
    if mem:
        print()
        print(f"Memory per idle connection: server VmRSS after N sockets connected and idle {opts.settle:g} s, "
              f"minus before (after start-up and one warm-up socket), / N; median of {opts.memory_runs} runs")
        print()
        print("| Connections | Server | RSS before (MiB) | RSS after (MiB) | KiB per connection | Target: < 24 KiB |")
        print("|---:|---|---:|---:|---:|---|")
        for n in opts.memory:
            for k in SERVERS:
                rows = [r for r in mem if r["connections"] == n and r["server"] == k]
                if not rows:
                    continue
                per = med(rows, "per_conn_kib")
                verdict = ("pass" if per < 24 else "**fail**") if k == "healthsync" else "baseline"
                print(f"| {n:,} | {k} | {med(rows, 'before_kib') / 1024:.1f} | {med(rows, 'after_kib') / 1024:.1f} | "
                      f"{per:.1f} | {verdict} |")
    print()


async def orchestrate(opts: argparse.Namespace) -> None:
    nofile = raise_nofile()
    need = max([*opts.subscribers, *opts.memory, 0]) + 200
    if nofile < need:
        print(f"warning: RLIMIT_NOFILE is {nofile}, the server needs about {need}", file=sys.stderr)
    servers = [s for s in SERVERS if s in opts.servers]
    workroot = Path(tempfile.mkdtemp(prefix="bench-push-"))
    if opts.profile:
        Path(opts.profile).mkdir(parents=True, exist_ok=True)
    lat_rows: list[dict[str, Any]] = []
    mem_rows: list[dict[str, Any]] = []
    t_start = time.monotonic()
    try:
        for n in opts.subscribers:
            for run in range(opts.runs):
                order = servers if run % 2 == 0 else servers[::-1]
                for kind in order:
                    wd = Path(tempfile.mkdtemp(dir=workroot))
                    r = await latency_run(kind, n, opts, wd)
                    lat_rows.append(r)
                    print(f"latency  n={n:<5} run={run + 1} {kind:<10} p50={r['p50']:7.2f} p99={r['p99']:7.2f} "
                          f"max={r['max']:7.2f} min={r['min']:6.2f} ms | from request: p50={r['req_p50']:7.2f} "
                          f"p99={r['req_p99']:7.2f} | POST p50={r['post_p50']:6.2f} max={r['post_max']:6.2f} ms | "
                          f"CPU/write server {r['server_cpu_ms_per_write']:.0f} ms "
                          f"clients {r['client_cpu_ms_per_write']:.0f} ms | "
                          f"pairs={r['pairs']} missing={r['missing']} "
                          f"(connect {r['connect_s']:.1f} s, {time.monotonic() - t_start:.0f} s elapsed)",
                          file=sys.stderr)
        mem_servers = [s for s in servers if s in MEMORY_SERVERS]
        for n in opts.memory:
            for run in range(opts.memory_runs):
                order = mem_servers if run % 2 == 0 else mem_servers[::-1]
                for kind in order:
                    wd = Path(tempfile.mkdtemp(dir=workroot))
                    r = await memory_run(kind, n, opts, wd)
                    mem_rows.append(r)
                    print(f"memory   n={n:<5} run={run + 1} {kind:<10} before={r['before_kib']} KiB "
                          f"after={r['after_kib']} KiB -> {r['per_conn_kib']:.1f} KiB/conn "
                          f"({r['clients']} client procs, connect {r['connect_s']:.1f} s, "
                          f"{time.monotonic() - t_start:.0f} s elapsed)", file=sys.stderr)
    finally:
        if opts.keep:
            print(f"work files kept in {workroot}", file=sys.stderr)
        else:
            shutil.rmtree(workroot, ignore_errors=True)
    report(lat_rows, mem_rows, opts)
    if opts.json:
        results = {"machine": machine(), "latency": lat_rows, "memory": mem_rows}
        Path(opts.json).write_text(json.dumps(results, indent=1))


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()] if text.strip() else []


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", choices=["orchestrator", "client", "bare-server"], default="orchestrator",
                   help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--answer-first", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--subscribers", type=int_list, default=[100, 1000],
                   help="fan-out sizes (default 100,1000; '' skips)")
    p.add_argument("--writes", type=int, default=50, help="measured writes per run (default 50)")
    p.add_argument("--warmup-writes", type=int, default=2, help="writes before measuring, not counted (default 2)")
    p.add_argument("--pause", type=float, default=0.1, help="seconds between writes (default 0.1)")
    p.add_argument("--memory", type=int_list, default=[1000, 5000],
                   help="idle socket counts (default 1000,5000; '' skips)")
    p.add_argument("--runs", type=int, default=3, help="runs per latency figure (default 3)")
    p.add_argument("--memory-runs", type=int, default=None, help="runs per memory figure (default: --runs)")
    p.add_argument("--client", choices=CLIENTS, default="raw",
                   help="subscribers' websocket client: raw (asyncio Protocol, default) or tornado")
    p.add_argument("--latency-clients", type=int, default=1, help="client processes for the latency test (default 1)")
    p.add_argument("--per-client", type=int, default=2500,
                   help="most sockets per client process, memory test (default 2500)")
    p.add_argument("--concurrency", type=int, default=32, help="handshakes in flight per client process (default 32)")
    p.add_argument("--settle", type=float, default=2.0, help="idle seconds before measuring (default 2)")
    p.add_argument("--servers", default="healthsync,bare,bare-ack",
                   help="which servers (default healthsync,bare,bare-ack)")
    p.add_argument("--log-level", default=None, help="HealthSync --log-level (default: its own, INFO)")
    p.add_argument("--profile", metavar="DIR", default=None,
                   help="run py-spy record (raw format) on HealthSync during each measured fan-out, into DIR")
    p.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second (default 250)")
    p.add_argument("--profile-args", default="--nonblocking",
                   help="more py-spy record flags (default --nonblocking; e.g. '--native --gil')")
    p.add_argument("--py-spy", default=shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"))
    p.add_argument("--deflate", action="store_true",
                   help="clients offer permessage-deflate, bare servers accept it (see above)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write every run's figures as JSON")
    p.add_argument("--keep", action="store_true", help="keep the servers' data dirs and logs")
    opts = p.parse_args()
    if opts.role == "client":
        client_process(opts.client)
        return
    if opts.role == "bare-server":
        bare_server(opts.port, opts.answer_first)
        return
    if opts.memory_runs is None:
        opts.memory_runs = opts.runs
    if opts.deflate:
        os.environ["BENCH_PUSH_DEFLATE"] = "1"  # inherited by every process started from here
    opts.servers = opts.servers.split(",")
    asyncio.run(orchestrate(opts))


if __name__ == "__main__":
    main()
