"""``healthsync.redact``: which parameters are credentials, and what is left of them."""

from __future__ import annotations

import logging
import sys

import pytest

from healthsync.redact import RedactingFilter, is_credential_name, redact_query, redact_uri

SECRET = "hs_" + "Ab3-_x" * 7 + "Z"


@pytest.mark.parametrize("name", [
    "token", "%74oken", "%54OKEN", "token%00", "to%6Ben", "TOKEN", "%2574oken", "%20token%20", "tok%0Aen",
    "access_token", "Access-Token", "Authorization", "auth", "X-Auth-Token", "api_key", "password", "secret",
    "%EF%BD%94%EF%BD%8F%EF%BD%8B%EF%BD%85%EF%BD%8E",  # fullwidth "token"
])
def test_every_spelling_of_a_credential_is_redacted(name):
    assert is_credential_name(name)
    assert redact_query(f"cursor=0&{name}=abc&limit=5") == f"cursor=0&{name}=REDACTED&limit=5"


@pytest.mark.parametrize("name", ["since", "cursor", "limit", "after", "resource_type", "patient", "device_id",
                                  "status", "resolved", "who"])
def test_the_apis_own_parameters_are_kept(name):
    assert not is_credential_name(name)
    assert redact_query(f"{name}=x%20y") == f"{name}=x%20y"


def test_a_token_shaped_value_or_name_is_redacted_wherever_it_stands():
    assert SECRET not in redact_query(f"who={SECRET}&{SECRET}&a=%68s_{SECRET[3:]}")
    assert redact_uri(f"/api/patients/{SECRET}/?cursor=0") == "/api/patients/REDACTED/?cursor=0"


def test_the_log_filter_scrubs_messages_and_tracebacks():
    try:
        raise ValueError(f"bad value {SECRET}")
    except ValueError:
        record = logging.LogRecord("x", logging.WARNING, __file__, 1, "saw %s", (SECRET,), sys.exc_info())
    assert RedactingFilter().filter(record)
    line = logging.Formatter().format(record)
    assert "saw REDACTED" in line and "ValueError" in line and SECRET not in line
