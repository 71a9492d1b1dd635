"""Upload bodies over a small max_body_bytes."""

from __future__ import annotations

import pytest

from tests.api.test_sync_upload import change, upload
from tests.conftest import make_settings


@pytest.fixture
def settings(data_dir):
    return make_settings(data_dir, max_body_bytes=64 * 1024)


async def test_huge_payload_is_413(api):
    resp = await upload(api, [change("create", "Patient", client_temp_id="a",
                                     payload={"name": "x", "fhir": {"b": "y" * 100_000}})])
    assert resp.status == 413


