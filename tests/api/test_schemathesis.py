"""The API description is exact: schemathesis with the data-acceptance checks.

A real ``run.py`` server (open mode on loopback, its embedded consumer on)
answers, for every operation of ``/api/schema/``, at least ``EXAMPLES``
generated requests, valid (positive) and invalid (negative), and each answer
is checked:

- ``positive_data_acceptance``: a request the document calls valid is not
  refused as malformed: 2xx, or a refusal that depends on the server's state
  (404 unknown id, 409 batch state, 410 cursor ahead of history, 412
  ``If-Match``), never a 400;
- ``negative_data_rejection``: a request the document calls invalid is
  refused with a 4xx;
- ``not_a_server_error``, ``status_code_conformance``,
  ``content_type_conformance``, ``response_schema_conformance``,
  ``response_headers_conformance``: no 5xx, and only documented statuses,
  content types, headers and bodies.

Two refusals depend on the data's meaning, not its shape, and the document
says so in words: a record names a patient that must exist (400 naming
``patient``: a generated UUID names none), and an upload judges each change's
payload per change (``rejected`` in a 200, not a 400; ``negative_upload``
below accepts that as a refusal only when a change was indeed refused).
Dates of birth are drawn from the past (a future one is refused, as the
document says).  A stateful run then follows the document's links (create ->
get/patch/delete, upload -> batch, conflict list -> resolve).

Derandomized, so a failure reproduces.  ``SCHEMATHESIS_EXAMPLES`` raises the
count for a deeper run.
"""

from __future__ import annotations

import copy
import json
import os
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from healthsync.openapi import schema_for
from settings import load
from tests.support.servers import ServerProcess

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "100"))
STATE_REFUSALS = ["2xx", "401", "403", "404", "409", "410", "412"]

DOCUMENT = schema_for(load(environ={}))
CONFIG = SchemathesisConfig.from_dict({
    "generation": {"mode": "all"},
    "checks": {"positive_data_acceptance": {"expected-statuses": STATE_REFUSALS}},
})
schema = schemathesis.openapi.from_dict(copy.deepcopy(DOCUMENT), config=CONFIG)  # it is changed in place
#: (operation, positive or negative) -> requests sent, for the report at the end
SENT: Counter[tuple[str, str]] = Counter()

# A date of birth: a calendar date not after today (the document says "not in the future").
schemathesis.openapi.format(
    "date", st.dates(min_value=date(1, 1, 1), max_value=date.today() - timedelta(days=1)).map(date.isoformat))


def _refused_as_documented(case: Any, response: Any) -> bool:
    """A valid shape refused for a rule the document states in words: a record naming a
    patient that does not exist (400 naming ``patient``), or a download with neither
    ``since`` nor ``cursor`` (400 naming ``since``; OpenAPI cannot declare "one of")."""
    if response.status_code != 400:
        return False
    fields = {d.get("field") for d in response.json().get("details", [])}
    path = case.operation.path
    if path in ("/api/records/", "/api/records/{id}/"):
        return fields == {"patient"} and any(word in response.json()["error"] for word in ("does not exist",
                                                                                          "is deleted"))
    if path == "/api/sync/download/":
        query = case.query or {}
        return "since" not in query and "cursor" not in query and fields == {"since"}
    return False


@schemathesis.check
def positive_acceptance(ctx: Any, response: Any, case: Any) -> bool | None:
    """``positive_data_acceptance``, but for the refusals the document states in words."""
    if _refused_as_documented(case, response):
        return None
    return positive_data_acceptance(ctx, response, case)


@schemathesis.check
def negative_rejection(ctx: Any, response: Any, case: Any) -> bool | None:
    """``negative_data_rejection``; an upload's invalid change may be refused on its own
    (``rejected`` or ``not_found`` in a 200), as the document says of payloads and types,
    and a write whose ``If-Match`` fails is refused (412) before its body is read."""
    if response.status_code == 412:
        return None  # an If-Match that does not match is judged before the body: refused all the same
    if case.operation.path == "/api/sync/upload/" and response.status_code == 202:
        return None  # a queued upload's changes are judged when its batch is applied (the document says so)
    if case.operation.path == "/api/sync/upload/" and response.status_code == 200:
        results = response.json().get("results", [])
        if any(r.get("status") in ("rejected", "not_found") for r in results):
            return None
        if all(c.get("operation") == "delete" for c in (case.body or {}).get("changes", [])
               if isinstance(c, dict)):
            return None  # a delete's payload is not read (the document says so)
    return negative_data_rejection(ctx, response, case)


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, positive_acceptance, negative_rejection]


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("schemathesis") / "data", "--auth", "open",
                           "--host", "127.0.0.1", env={"HEALTHSYNC_WRITE_RATE_LIMIT": "0"}).start()
    yield server
    assert server.stop() == 0, "".join(server.log)
    log = "".join(server.log)
    assert "Traceback" not in log and " ERROR " not in log, log


@pytest.mark.slow
def test_served_document_is_the_tested_one(api_server: ServerProcess) -> None:
    with urllib.request.urlopen(f"{api_server.url}/api/schema/", timeout=10) as resp:
        assert json.loads(resp.read()) == DOCUMENT


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_operation_does_what_the_document_says(case: Any, api_server: ServerProcess) -> None:
    SENT[case.operation.label, case.meta.generation.mode.value if case.meta else "?"] += 1
    case.call_and_validate(base_url=api_server.url, checks=CHECKS, timeout=30)


@pytest.mark.slow
def test_report_requests_per_operation(capsys: pytest.CaptureFixture[str]) -> None:
    """Runs after the operations (file order): how many requests each got, in the test output."""
    if not SENT:
        pytest.skip("the operations were not run")
    with capsys.disabled():
        for (label, mode), count in sorted(SENT.items()):
            print(f"\n  {count:5d} {mode:8s} {label}", end="")
        print()


APIWorkflow = schema.as_state_machine()


@pytest.mark.slow
def test_links_walk_the_api(api_server: ServerProcess) -> None:
    class Workflow(APIWorkflow):  # type: ignore[misc,valid-type]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": api_server.url, "timeout": 30}

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            case.validate_response(response, checks=CHECKS)

    Workflow.run(settings=settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                                   suppress_health_check=list(HealthCheck), stateful_step_count=6))
