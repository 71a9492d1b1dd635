"""Fuzz the whole HTTP API from its own OpenAPI document with schemathesis.

A real ``run.py`` server (open mode on loopback, with its embedded consumer)
is started once for the module.  The document it serves at ``/api/schema/``
is checked to be the one built here, and schemathesis then sends, for every
documented operation, a bounded number of generated requests (valid and
invalid) and checks each answer: no 5xx, a documented status code and
content type, and a body that matches its documented schema.  Derandomized,
so a failure reproduces; a case it finds is kept as a regular test beside
the code it broke (``tests/api/``), so it stays fixed whatever the fuzzer
draws next.

(The document is built in-process for collection, because schemathesis's
lazy ``from_fixture`` loader does not work with pytest 9.)
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from healthsync.openapi import schema_for
from settings import load
from tests.support.servers import ServerProcess

# Bounded for CI; FUZZ_EXAMPLES=500 bash tests/run.sh tests/security/test_fuzz.py digs deeper.
MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

DOCUMENT = schema_for(load(environ={}))
schema = schemathesis.openapi.from_dict(DOCUMENT)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("fuzz") / "data", "--auth", "open", "--host", "127.0.0.1",
                           env={"HEALTHSYNC_WRITE_RATE_LIMIT": "0"}).start()
    yield server
    assert server.stop() == 0, "".join(server.log)
    assert "Traceback" not in "".join(server.log), "".join(server.log)


@pytest.mark.slow
def test_served_document_is_the_fuzzed_one(fuzz_server: ServerProcess) -> None:
    with urllib.request.urlopen(f"{fuzz_server.url}/api/schema/", timeout=10) as resp:
        assert json.loads(resp.read()) == DOCUMENT


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_survives_fuzzing(case: Any, fuzz_server: ServerProcess) -> None:
    started = time.monotonic()
    case.call_and_validate(base_url=fuzz_server.url, checks=CHECKS, timeout=30)
    assert time.monotonic() - started < 30
