"""JSON over real HTTP: the async ``Api`` on the app under test, ``call`` (urllib) on a
``run.py`` subprocess, a chunked POST over a plain socket, and sync-upload shapes."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

UPLOAD = "/api/sync/upload/"


@dataclass
class Response:
    status: int
    headers: Any
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


class Api:
    """JSON over real HTTP to the app under test."""

    def __init__(self, client: Any) -> None:
        self.client = client

    @property
    def base(self) -> str:
        return self.client.get_url("")

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        data = raw if raw is not None else (None if body is None else orjson.dumps(body))
        if data is None and method in ("POST", "PUT", "PATCH"):
            data = b""
        resp = await self.client.fetch(
            path,
            method=method,
            body=data,
            headers=hdrs,
            raise_error=False,
            allow_nonstandard_methods=True,
            request_timeout=120,
        )
        return Response(resp.code, resp.headers, resp.body or b"")

    async def get(self, path: str, **kw: Any) -> Response:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> Response:
        return await self.request("POST", path, body, **kw)

    async def put(self, path: str, body: Any = None, **kw: Any) -> Response:
        return await self.request("PUT", path, body, **kw)

    async def patch(self, path: str, body: Any = None, **kw: Any) -> Response:
        return await self.request("PATCH", path, body, **kw)

    async def delete(self, path: str, **kw: Any) -> Response:
        return await self.request("DELETE", path, **kw)

    async def new_patient(self, **fields: Any) -> dict[str, Any]:
        body = {"name": "John Doe", "dob": "1990-01-01", "identifiers": {}, "fhir": {}}
        body.update(fields)
        resp = await self.post("/api/patients/", body)
        assert resp.status == 201, resp.body
        return resp.json

    async def new_record(self, patient: str, **fields: Any) -> dict[str, Any]:
        body = {"patient": patient, "resource_type": "Observation", "data": {"value": 1}}
        body.update(fields)
        resp = await self.post("/api/records/", body)
        assert resp.status == 201, resp.body
        return resp.json


def assert_refused(resp: Any, status: int, words: str) -> None:
    """A refusal that tells the client to come back: JSON error naming ``words``, ``Retry-After``."""
    assert resp.status == status, resp.body
    assert resp.headers["Content-Type"].startswith("application/json")
    assert words in resp.json["error"] and resp.json["details"] == []
    assert int(resp.headers["Retry-After"]) >= 1


def call(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    """One JSON request over urllib (blocking): ``(status, parsed body)``, errors included."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


# Sync uploads ---------------------------------------------------------------------------------


def change(op: str, rtype: str = "Observation", **kw: Any) -> dict[str, Any]:
    out = {"operation": op, "resource_type": rtype, "payload": kw.pop("payload", {})}
    out.update(kw)
    return out


async def upload(api: Api, changes: list[dict[str, Any]], device: str = "device123", **extra: Any) -> Response:
    return await api.post(UPLOAD, {"device_id": device, "changes": changes, **extra})


def patient_changes(n: int, prefix: str = "p") -> list[dict[str, Any]]:
    """``n`` patient creates with temp ids ``{prefix}0``…"""
    return [{"operation": "create", "resource_type": "Patient", "client_temp_id": f"{prefix}{i}",
             "payload": {"name": f"Async {i}"}} for i in range(n)]


def upload_body(batch_id: str, n: int = 3) -> dict[str, Any]:
    """An upload of ``n`` patients and one observation of the first, under ``batch_id``."""
    changes = [{"operation": "create", "resource_type": "Patient", "client_temp_id": f"t{i}",
                "payload": {"name": f"Fault {i}"}} for i in range(n)]
    changes.append({"operation": "create", "resource_type": "Observation", "client_temp_id": "o",
                    "payload": {"patient_temp_id": "t0", "value": 1}})
    return {"device_id": "tab-1", "batch_id": batch_id, "changes": changes}


# Raw HTTP -----------------------------------------------------------------------------------


def post_chunked(url: str, pieces: Iterator[bytes], headers: dict[str, str] | None = None) -> Response:
    """POST ``pieces`` as a chunked body (no Content-Length) over a plain socket, blocking
    (run it in a thread). A server that answers early and closes is not an error: the
    rest of the body is dropped and its answer read."""
    from urllib.parse import urlsplit

    import tornado.httputil

    parts = urlsplit(url)
    hdrs = {"Host": parts.netloc, "Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    hdrs.update(headers or {})
    head = f"POST {parts.path}{'?' + parts.query if parts.query else ''} HTTP/1.1\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        try:
            sock.sendall(head.encode())
            for piece in pieces:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered before the body was all sent
        data = b""
        while b"\r\n\r\n" not in data:
            more = sock.recv(65536)
            assert more, f"connection closed before a response: {data!r}"
            data += more
        raw_head, body = data.split(b"\r\n\r\n", 1)
        status_line, _, header_text = raw_head.decode("latin-1").partition("\r\n")
        headers_in = tornado.httputil.HTTPHeaders.parse(header_text)
        length = int(headers_in.get("Content-Length", "0"))
        while len(body) < length:
            more = sock.recv(65536)
            assert more, "connection closed inside the response body"
            body += more
        return Response(int(status_line.split()[1]), headers_in, body)


async def wait_status(api: Api, batch_id: str, wanted: str, timeout: float = 30) -> dict[str, Any]:
    """The batch's status answer once it is ``wanted`` (polling); AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        resp = await api.get(f"/api/sync/batches/{batch_id}/")
        assert resp.status == 200, resp.body
        if resp.json["status"] == wanted:
            return resp.json  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} never reached {wanted}: {resp.json}")
        await asyncio.sleep(0.05)


async def upload_async(api: Api, n: int = 3, prefix: str = "p", device: str = "tab-1") -> str:
    """A queued upload of ``n`` new patients: its batch_id."""
    resp = await api.post(UPLOAD, {"device_id": device, "changes": patient_changes(n, prefix), "async": True})
    assert resp.status == 202, resp.body
    return str(resp.json["batch_id"])
