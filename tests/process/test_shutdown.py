"""Graceful shutdown: an upload in flight when SIGTERM or SIGINT arrives completes, is
answered and is all there after a restart; the process exits 0.

The upload is in flight for certain: it asks ``Expect: 100-continue``, which Tornado
answers only once the handler has run ``prepare`` (where a request is counted in flight
for shutdown), and the rest of its body is sent only after the server has logged that it
is shutting down."""

from __future__ import annotations

import json
import signal
import socket
import time
import uuid
from typing import Any

import pytest

from tests.support.databases import execute
from tests.support.http import call
from tests.support.servers import make_settings

pytestmark = [pytest.mark.slow, pytest.mark.both_backends]

N = 3_000


def read_response(sock: socket.socket, buf: bytes = b"") -> tuple[int, bytes, bytes]:
    """One HTTP/1.1 response with a Content-Length: ``(status, body, what was read past it)``."""
    while b"\r\n\r\n" not in buf:
        more = sock.recv(65536)
        assert more, f"connection closed before a response: {buf!r}"
        buf += more
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        more = sock.recv(65536)
        assert more, "connection closed inside the response body"
        rest += more
    return int(lines[0].split()[1]), rest[:length], rest[length:]


def wait_for_line(server: Any, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in line for line in server.log):
        assert server.proc.poll() is None, "the server exited:\n" + "".join(server.log)
        assert time.monotonic() < deadline, f"{text!r} never logged:\n" + "".join(server.log)
        time.sleep(0.01)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_upload_in_flight_at_the_signal_completes(server_process, tmp_path, sig, database_url):
    data = tmp_path / "data"
    settings = make_settings(data, database_url=database_url)
    server = server_process(data_dir=data)
    batch_id = str(uuid.uuid4())
    changes = [{"operation": "create", "resource_type": "Patient", "client_temp_id": f"t{i}",
                "payload": {"name": f"Patient {i}", "identifiers": {"mrn": str(i)}}} for i in range(N)]
    body = json.dumps({"device_id": "dev", "batch_id": batch_id, "changes": changes}).encode()
    head = (f"POST /api/sync/upload/ HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Expect: 100-continue\r\n\r\n").encode()

    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(head)
        status, _, left = read_response(sock)
        assert status == 100  # the server has the request: it is in flight
        half = len(body) // 2
        sock.sendall(body[:half])
        server.proc.send_signal(sig)
        wait_for_line(server, "shutting down")  # the signal was handled, with the body half sent
        sock.sendall(body[half:])
        status, answer, _ = read_response(sock, left)

    assert status == 200, answer
    results = json.loads(answer)["results"]
    assert [r["status"] for r in results] == ["created"] * N
    server.proc.wait(timeout=30)  # no second signal: it was stopping already
    assert server.stop() == 0
    assert "stopped" in "".join(server.log)
    assert not any("still running at shutdown" in line for line in server.log)

    assert execute(settings, "SELECT count(*) FROM patients")[0][0] == N
    # After a restart the batch is all there, and its retry creates nothing twice.
    again = server_process(data_dir=data)
    first, last = results[0]["server_id"], results[-1]["server_id"]
    assert call("GET", again.url + f"/api/patients/{first}/")[1]["name"] == "Patient 0"
    assert call("GET", again.url + f"/api/patients/{last}/")[1]["name"] == f"Patient {N - 1}"
    status, retry = call("POST", again.url + "/api/sync/upload/", json.loads(body))
    assert status == 200 and [r["server_id"] for r in retry["results"]] == [r["server_id"] for r in results]
    assert again.stop() == 0
    assert execute(settings, "SELECT count(*) FROM patients")[0][0] == N
