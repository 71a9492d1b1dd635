"""The write rate limit holds per token for the whole site: two ``run.py serve``
processes on one PostgreSQL share each token's bucket."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from tests.support.servers import run_cli

pytestmark = pytest.mark.slow

LIMIT = 4  # a minute: one more write every 15 s


def post(url: str, token: str, body: dict) -> tuple[int, dict, str | None]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read()), resp.headers.get("Retry-After")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), err.headers.get("Retry-After")


def test_one_token_alternated_across_two_processes_gets_the_limit_once(server_process, postgres_url, tmp_path):
    env = {"HEALTHSYNC_WRITE_RATE_LIMIT": str(LIMIT)}
    common = ("--database-url", postgres_url, "--auth", "token", "--no-worker")
    a = server_process(*common, data_dir=tmp_path / "a", env=env)
    b = server_process(*common, data_dir=tmp_path / "b", env=env)
    made = run_cli("token", "create", "--role", "device", "--name", "tab-1", "--database-url", postgres_url,
                   "--data-dir", str(tmp_path / "a"))
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()

    started = time.monotonic()
    answers = [post(server.url + "/api/patients/", token, {"name": f"p{n}"})
               for n, server in zip(range(3 * LIMIT), [a, b] * (3 * LIMIT), strict=False)]
    elapsed = time.monotonic() - started
    admitted = [n for n, (status, _, _) in enumerate(answers) if status == 201]
    refused = [(status, body, retry) for status, body, retry in answers if status != 201]
    # Per process it would be twice the limit; a slow run may earn one more token a 15 s.
    assert LIMIT <= len(admitted) <= LIMIT + int(elapsed * LIMIT / 60), (elapsed, answers)
    assert admitted[:LIMIT] == list(range(LIMIT))  # the first ones, whichever process served them
    assert all(status == 429 and body["error"] and int(retry) >= 1 for status, body, retry in refused)
    # Another token has a bucket of its own, on either process.
    other = run_cli("token", "create", "--role", "device", "--name", "tab-2", "--database-url", postgres_url,
                    "--data-dir", str(tmp_path / "a")).stdout.strip()
    assert post(b.url + "/api/patients/", other, {"name": "other"})[0] == 201
