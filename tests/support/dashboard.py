"""Seeding and inspecting a ``run.py`` server for the browser tests, over plain HTTP (urllib)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support import ROOT

#: What a browser logs when the server it talks to is stopped: allowed only where a test says so.
NETWORK_ERROR = re.compile(
    r"net::ERR_(CONNECTION_REFUSED|CONNECTION_RESET|CONNECTION_CLOSED|EMPTY_RESPONSE|NETWORK_CHANGED)"
    r"|WebSocket connection to .* failed"
)


class Api:
    """JSON over HTTP to a ``server_process`` (with a bearer token in token mode)."""

    def __init__(self, base_url: str, token: str | None = None) -> None:
        self.base = base_url
        self.token = token

    def call(self, method: str, path: str, body: Any = None, expect: tuple[int, ...] = (200, 201, 202, 204)) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
            err.close()
        assert status in expect, f"{method} {path}: {status} {raw[:500]!r}"
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def new_patient(self, name: str, **fields: Any) -> dict[str, Any]:
        body = {"name": name, "dob": "1980-05-17", "identifiers": {}, "fhir": {}}
        body.update(fields)
        return self.call("POST", "/api/patients/", body)

    def new_record(self, patient: str, resource_type: str = "Observation", **data: Any) -> dict[str, Any]:
        return self.call("POST", "/api/records/", {"patient": patient, "resource_type": resource_type, "data": data})

    def upload(self, device: str, changes: list[dict[str, Any]], **extra: Any) -> Any:
        return self.call("POST", "/api/sync/upload/", {"device_id": device, "changes": changes, **extra})


FIRST = ["Maria", "John", "Aisha", "Chen", "Lucas", "Olga", "Samuel", "Fatima",
         "Ivan", "Priya", "Noah", "Emma", "Kofi", "Sofia", "Liam", "Hana"]
LAST = ["Garcia", "Smith", "Okafor", "Wang", "Silva", "Petrova", "Mensah", "Khan",
        "Novak", "Patel", "Brown", "Jensen", "Tanaka", "Rossi"]


def seed_names(n: int) -> list[str]:
    """``n`` distinct, realistic names (deterministic)."""
    names = [f"{f} {last}" for last in LAST for f in FIRST]
    assert n <= len(names)
    return names[:n]


def seed_patients(api: Api, n: int, device: str = "seed-tablet") -> list[dict[str, Any]]:
    """Create ``n`` patients (identifiers MRN-1000…) in one sync batch; returns their results."""
    changes = [
        {
            "operation": "create",
            "resource_type": "Patient",
            "client_temp_id": f"seed-{i}",
            "payload": {"name": name, "dob": f"19{50 + i % 50:02d}-0{1 + i % 9}-1{i % 10}",
                        "identifiers": {"mrn": f"MRN-{1000 + i}"}},
        }
        for i, name in enumerate(seed_names(n))
    ]
    body = api.upload(device, changes)
    assert all(r["status"] == "created" for r in body["results"]), body
    return body["results"]


def create_token(data_dir: Path, role: str, name: str) -> str:
    """``run.py token create`` on ``data_dir``; returns the token it prints once."""
    out = subprocess.run(
        [sys.executable, "run.py", "token", "create", "--role", role, "--name", name, "--data-dir", str(data_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    tokens = [line.strip() for line in out.splitlines() if line.strip().startswith("hs_")]
    assert len(tokens) == 1, out
    return tokens[0]
