"""A Python client generated from ``/api/schema/`` does the seed's flows.

``openapi-python-client`` (no network needed) generates a client from the
document a real ``run.py`` server serves; the test imports it and, through
its typed functions and models only, creates, lists, reads, patches and
deletes patients and records, uploads a batch, downloads by ``since`` and by
``cursor``, lists and resolves conflicts, and reads batches.  Every answer is
parsed into the generated models (a field the document types wrongly fails
here), and ids compare across answers: ``result.server_id == patient.id``
(both ``UUID``), a download's entries against the patients they name.
"""

from __future__ import annotations

import datetime
import importlib
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from tests.support.servers import ServerProcess

pytestmark = pytest.mark.slow

PACKAGE = "healthsync_api_client"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("genclient") / "data", "--auth", "open", "--host", "127.0.0.1",
                         env={"HEALTHSYNC_WRITE_RATE_LIMIT": "0"}).start()
    yield proc
    assert proc.stop() == 0, "".join(proc.log)
    log = "".join(proc.log)
    assert "Traceback" not in log and " ERROR " not in log, log


@pytest.fixture(scope="module")
def gen(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The generated package, imported (``gen.api``, ``gen.models``, ``gen.client``)."""
    where = tmp_path_factory.mktemp("generated")
    with urllib.request.urlopen(f"{server.url}/api/schema/", timeout=10) as resp:
        (where / "schema.json").write_bytes(resp.read())
    (where / "config.json").write_text(json.dumps({"package_name_override": PACKAGE}))
    done = subprocess.run(
        [sys.executable, "-m", "openapi_python_client", "generate", "--path", str(where / "schema.json"),
         "--config", str(where / "config.json"), "--output-path", str(where / PACKAGE), "--meta", "none"],
        capture_output=True, text=True, timeout=120, cwd=where)
    assert done.returncode == 0, done.stdout + done.stderr
    # Every warning but the missing post-generation formatter is a piece of the document it could not use.
    warnings = [line for line in (done.stdout + done.stderr).splitlines()
                if "ruff" not in line and line.strip() and not line.startswith(("Generating", "Skipping"))
                and "Warning(s) encountered" not in line and "If you believe this was a mistake" not in line]
    assert not warnings, warnings
    sys.path.insert(0, str(where))
    try:
        package = importlib.import_module(PACKAGE)
        yield Generated(package)
    finally:
        sys.path.remove(str(where))
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
            del sys.modules[name]


class Generated:
    def __init__(self, package: ModuleType) -> None:
        self.models = importlib.import_module(f"{PACKAGE}.models")
        self.types = importlib.import_module(f"{PACKAGE}.types")
        self.Client = package.Client

    def op(self, tag: str, name: str) -> Any:
        return importlib.import_module(f"{PACKAGE}.api.{tag}.{name}")


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.content)
    return response.parsed


def test_seed_flows_through_the_generated_client(gen: Generated, server: ServerProcess) -> None:
    with gen.Client(base_url=server.url, raise_on_unexpected_status=True) as client:
        seed_flows(gen, client)


def seed_flows(gen: Generated, client: Any) -> None:
    m = gen.models
    patients, records, sync, conflicts = (
        lambda name, tag=tag: gen.op(tag, name) for tag in ("patients", "records", "sync", "conflicts"))

    # 1. Patients: create, list, retrieve, update (patch and put), delete
    created = ok(patients("create_patient").sync_detailed(client=client, body=m.PatientIn(
        name="John Doe", dob=datetime.date(1990, 1, 1),
        identifiers=m.PatientInIdentifiers.from_dict({"mrn": "12345"}))), 201)
    assert isinstance(created, m.Patient) and isinstance(created.id, uuid.UUID)
    assert created.dob == datetime.date(1990, 1, 1) and created.server_version == 1
    assert isinstance(created.updated_at, datetime.datetime) and created.updated_at.tzinfo is not None
    listed = ok(patients("list_patients").sync_detailed(client=client))
    assert [p.id for p in listed] == [created.id]
    got = ok(patients("get_patient").sync_detailed(created.id, client=client))
    assert got.id == created.id and got.identifiers.additional_properties == {"mrn": "12345"}
    patched = ok(patients("patch_patient").sync_detailed(created.id, client=client,
                                                         body=m.PatientPatch(name="John D.", dob=None)))
    assert patched.name == "John D." and patched.dob is None and patched.server_version == 2
    replaced = ok(patients("replace_patient").sync_detailed(
        created.id, client=client, body=m.PatientIn(name="John Doe", dob=datetime.date(1990, 1, 2)),
        if_match=f'W/"{patched.server_version}"'))
    assert replaced.dob == datetime.date(1990, 1, 2) and replaced.server_version == 3
    stale = patients("patch_patient").sync_detailed(created.id, client=client, body=m.PatientPatch(name="X"),
                                                    if_match='W/"1"')
    assert stale.status_code == 412 and isinstance(stale.parsed, m.Error)

    # 2. Health records
    record = ok(records("create_record").sync_detailed(client=client, body=m.RecordIn(
        patient=created.id, resource_type=m.RecordResourceType.OBSERVATION,
        data=m.RecordInData.from_dict({"valueQuantity": {"value": 72.5, "unit": "kg"}}))), 201)
    assert record.patient == created.id and record.resource_type == m.RecordResourceType.OBSERVATION
    by_patient = ok(records("list_records").sync_detailed(client=client, patient=created.id,
                                                          resource_type=m.RecordResourceType.OBSERVATION))
    assert [r.id for r in by_patient] == [record.id]
    assert ok(records("get_record").sync_detailed(record.id, client=client)).data.additional_properties == {
        "valueQuantity": {"value": 72.5, "unit": "kg"}}
    record2 = ok(records("patch_record").sync_detailed(record.id, client=client, body=m.RecordPatch(
        data=m.RecordPatchData.from_dict({"note": "fasting"}))))
    assert record2.data.additional_properties["note"] == "fasting" and record2.server_version == 2

    # 3. Sync upload: a new patient with a record naming it by temp id, a stale update (a conflict)
    before = ok(sync("download").sync_detailed(client=client, cursor="0"))
    batch_id = uuid.uuid4()
    upload = ok(sync("upload").sync_detailed(client=client, body=m.UploadRequest(
        device_id="tablet-7", batch_id=batch_id, changes=[
            m.Change(operation=m.ChangeOperation.CREATE, resource_type=m.ResourceType.PATIENT, client_temp_id="p1",
                     payload=m.PatientPayload(name="Ana Silva", dob=datetime.date(1985, 4, 2))),
            m.Change(operation=m.ChangeOperation.CREATE, resource_type=m.ResourceType.OBSERVATION,
                     client_temp_id="o1", payload=m.RecordPayload.from_dict({"patient_temp_id": "p1", "value": 37.2})),
            m.Change(operation=m.ChangeOperation.UPDATE, resource_type=m.ResourceType.PATIENT, server_id=created.id,
                     base_version=1, payload=m.PatientPayload(name="Stale")),
            m.Change(operation=m.ChangeOperation.UPDATE, resource_type=m.ResourceType.OBSERVATION,
                     server_id=record.id, client_updated_at=datetime.datetime.now(datetime.UTC),
                     payload=m.RecordPayload.from_dict({"value": "Updated data"})),
        ])))
    assert isinstance(upload, m.UploadResponse) and upload.batch_id == batch_id
    statuses = [r.status for r in upload.results]
    assert statuses == [m.UploadStatus.CREATED, m.UploadStatus.CREATED, m.UploadStatus.CONFLICT,
                        m.UploadStatus.UPDATED]
    new_patient = ok(patients("get_patient").sync_detailed(upload.results[0].server_id, client=client))
    assert upload.results[0].server_id == new_patient.id  # the same type on both sides: UUID
    assert upload.results[2].server_id == created.id and upload.results[2].reason == m.ConflictReason.VERSION_MISMATCH
    assert isinstance(upload.results[2].server_copy, m.Patient) and upload.results[2].server_copy.id == created.id
    assert [(c.server_id, c.reason) for c in upload.conflicts] == [(created.id, m.ConflictReason.VERSION_MISMATCH)]
    new_record = ok(records("get_record").sync_detailed(upload.results[1].server_id, client=client))
    assert new_record.patient == new_patient.id

    # 4. Download by cursor (and the next page by its cursor) and by since
    page = ok(sync("download").sync_detailed(client=client, cursor=before.cursor, device_id="tablet-7"))
    assert isinstance(page, m.DownloadPage) and not page.has_more
    entries = {e.server_id: e for e in page.changes}
    assert set(entries) == {new_patient.id, new_record.id, record.id}
    assert isinstance(entries[new_patient.id], m.PatientEntry) and entries[new_patient.id].data.name == "Ana Silva"
    assert isinstance(entries[new_record.id], m.RecordEntry) and entries[new_record.id].patient == new_patient.id
    assert ok(sync("download").sync_detailed(client=client, cursor=page.cursor)).changes == []
    first = ok(sync("download").sync_detailed(client=client, cursor="0", limit=1))
    assert first.has_more and len(first.changes) == 1
    since = ok(sync("download").sync_detailed(client=client, since=before.server_time))
    assert {e.server_id for e in since.changes} == set(entries)
    assert ok(sync("download").sync_detailed(client=client, since=datetime.datetime(2020, 1, 1))).changes
    refused = sync("download").sync_detailed(client=client)  # neither since nor cursor
    assert refused.status_code == 400 and refused.parsed.details[0].field == "since"

    # 5. Conflicts: list, get, resolve (PATCH, and the POST form)
    listed_conflicts = ok(conflicts("list_conflicts").sync_detailed(client=client, resolved=False))
    assert [c.id for c in listed_conflicts] == [upload.results[2].conflict_id]
    conflict = ok(conflicts("get_conflict").sync_detailed(listed_conflicts[0].id, client=client))
    assert conflict.batch_id == batch_id and conflict.server_id == created.id
    assert conflict.resource_type == m.ResourceType.PATIENT and conflict.reason == m.ConflictReason.VERSION_MISMATCH
    resolved = ok(conflicts("resolve_conflict").sync_detailed(conflict.id, client=client, body=m.ConflictResolution(
        resolved=True, resolution="kept the server copy")))
    assert resolved.resolved and isinstance(resolved.resolved_at, datetime.datetime)
    again = ok(conflicts("resolve_conflict_post").sync_detailed(conflict.id, client=client,
                                                                body=m.ConflictResolution(resolved=True)))
    assert again.resolution == "kept the server copy"
    assert ok(conflicts("list_conflicts").sync_detailed(client=client, resolved=False)) == []

    # 6. Batches: the sync one, and an async one triggered and polled until done
    batch = ok(sync("get_batch").sync_detailed(batch_id, client=client))
    assert batch.status == m.BatchStatus.DONE and [r.server_id for r in batch.results] == [
        r.server_id for r in upload.results]
    queued = ok(sync("upload").sync_detailed(client=client, body=m.UploadRequest(
        device_id="tablet-7", async_=True, changes=[
            m.Change(operation=m.ChangeOperation.DELETE, resource_type=m.ResourceType.OBSERVATION,
                     server_id=new_record.id)])), 202)
    assert isinstance(queued, m.AsyncUploadAccepted) and queued.status == m.BatchStatus.PENDING
    started = ok(sync("trigger_batch").sync_detailed(queued.batch_id, client=client), 202)
    assert isinstance(started, m.TriggerResponse) and started.task_id
    for _ in range(400):  # the server's own consumer applies it
        polled = ok(sync("get_batch").sync_detailed(queued.batch_id, client=client))
        if polled.status == m.BatchStatus.DONE:
            break
        time.sleep(0.05)
    assert polled.status == m.BatchStatus.DONE and polled.results[0].server_id == new_record.id
    assert polled.results[0].status == m.UploadStatus.DELETED
    listed_batches = ok(sync("list_batches").sync_detailed(client=client, device_id="tablet-7",
                                                           status=m.BatchStatus.DONE))
    assert {b.batch_id for b in listed_batches} == {batch_id, queued.batch_id}

    # Delete (soft): gone unless include_deleted, and its records with it
    assert patients("delete_patient").sync_detailed(new_patient.id, client=client).status_code == 204
    assert patients("get_patient").sync_detailed(new_patient.id, client=client).status_code == 404
    tomb = ok(patients("get_patient").sync_detailed(new_patient.id, client=client, include_deleted=True))
    assert tomb.deleted and tomb.id == new_patient.id
    devices = ok(gen.op("devices", "list_devices").sync_detailed(client=client))
    assert [d.device_id for d in devices] == ["tablet-7"] and isinstance(devices[0].last_seen, datetime.datetime)
