"""Log lines, JSON and text, carry UTC times with ``Z``, whatever the machine's time zone."""

from __future__ import annotations

import calendar
import json
import re
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.support import ROOT

NEW_YORK = {"TZ": "America/New_York"}
UTC_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")

_FORMAT_ONE = """
import logging, time
from healthsync.cli import JsonFormatter, UtcFormatter
record = logging.LogRecord("healthsync.test", logging.INFO, "x.py", 1, "hello", None, None)
record.created = 1757705118.331
record.msecs = 331.0
print(time.strftime("%H:%M", time.localtime(record.created)))
print(JsonFormatter().format(record))
print(UtcFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s").format(record))
"""


def test_a_record_is_stamped_in_utc_under_another_time_zone():
    env = {"PATH": "/usr/bin:/bin", **NEW_YORK}
    result = subprocess.run([sys.executable, "-c", _FORMAT_ONE], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    local, line, text = result.stdout.splitlines()
    assert local == "15:25"  # the zone really is in force: 19:25 UTC is 15:25 in New York (EDT)
    assert json.loads(line)["time"] == "2025-09-12T19:25:18.331000Z"
    assert text == "2025-09-12T19:25:18.331000Z INFO healthsync.test: hello"


@pytest.mark.slow
def test_a_running_server_logs_utc(server_process):
    before = time.time()
    server = server_process("--log-format", "json", env=NEW_YORK)
    with urllib.request.urlopen(server.url + "/api/health", timeout=10) as resp:
        assert resp.status == 200
    assert server.stop() == 0
    after = time.time()
    lines = [json.loads(line) for line in "".join(server.log).splitlines() if line.startswith("{")]
    assert any(x["logger"] == "healthsync.access" for x in lines)
    for x in lines:
        assert UTC_TIME.fullmatch(x["time"]), x
        stamp = calendar.timegm(time.strptime(x["time"][:19], "%Y-%m-%dT%H:%M:%S"))
        assert before - 5 <= stamp <= after + 5, (x, before, after)
