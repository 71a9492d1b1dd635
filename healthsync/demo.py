"""Realistic demo data: ``python run.py demo --data-dir D [--live]``.

Fills a data dir with patients and their FHIR records (Observations with
LOINC codes and UCUM units, Conditions, MedicationRequests), written through
the same upload path devices use, in batches, with a progress bar.  With
``--live`` it then plays several tablets syncing with a running server over
HTTP, so the dashboard moves.  The data is made up; any resemblance to a
real person is chance.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import urllib.request
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .settings import Settings

FIRST = ("Aisha Amara Ben Chen Dara Elif Farah Gabriel Hana Ivan Jonas Kemi Lena Mateo Noor Omar Priya "
         "Quinn Rosa Sami Tomas Uma Vera Wen Yusuf Zelda").split()
LAST = "Garcia Khan Mensah Okafor Petrova Silva Smith Wang Novak Haddad Kowalski Nguyen Rossi Quist".split()
VITALS = [  # LOINC code, display, unit, low, high, decimals
    ("8867-4", "Heart rate", "/min", 52, 110, 0),
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 100, 165, 0),
    ("8462-4", "Diastolic blood pressure", "mm[Hg]", 60, 100, 0),
    ("8310-5", "Body temperature", "Cel", 36.0, 38.6, 1),
    ("29463-7", "Body weight", "kg", 45, 120, 1),
    ("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", 70, 190, 0),
    ("59408-5", "Oxygen saturation", "%", 90, 100, 0),
]
CONDITIONS = [("38341003", "Hypertension"), ("44054006", "Type 2 diabetes mellitus"), ("195967001", "Asthma"),
              ("35489007", "Depressive disorder"), ("13645005", "Chronic obstructive lung disease")]
MEDICATIONS = [("314076", "lisinopril 10 MG Oral Tablet"), ("860975", "metformin 500 MG Oral Tablet"),
               ("745679", "albuterol 0.09 MG/ACTUAT Inhaler"), ("312938", "sertraline 50 MG Oral Tablet")]


def observation(rnd: random.Random, when: str) -> dict[str, Any]:
    code, display, unit, low, high, decimals = rnd.choice(VITALS)
    value = round(rnd.uniform(low, high), decimals) if decimals else rnd.randint(int(low), int(high))
    return {"status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
            "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}


def condition(rnd: random.Random) -> dict[str, Any]:
    code, display = rnd.choice(CONDITIONS)
    return {"clinicalStatus": "active", "code": {"coding": [
        {"system": "http://snomed.info/sct", "code": code, "display": display}]}}


def medication(rnd: random.Random) -> dict[str, Any]:
    code, display = rnd.choice(MEDICATIONS)
    return {"status": "active", "intent": "order", "medicationCodeableConcept": {"coding": [
        {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": code, "display": display}]},
        "dosageInstruction": [{"text": "1 tablet daily"}]}


def patient_changes(rnd: random.Random, n: int, tag: str) -> list[dict[str, Any]]:
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    changes: list[dict[str, Any]] = []
    for i in range(n):
        temp = f"{tag}-p{i}"
        dob = f"{rnd.randint(1935, 2020)}-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}"
        changes.append({"operation": "create", "resource_type": "Patient", "client_temp_id": temp, "payload": {
            "name": f"{rnd.choice(FIRST)} {rnd.choice(LAST)}", "dob": dob,
            "identifiers": {"mrn": f"MRN-{rnd.randint(100000, 999999)}"}}})
        for k in range(rnd.randint(2, 6)):
            changes.append({"operation": "create", "resource_type": "Observation", "client_temp_id": f"{temp}-o{k}",
                            "payload": {"patient_temp_id": temp, **observation(rnd, when)}})
        if rnd.random() < 0.5:
            changes.append({"operation": "create", "resource_type": "Condition", "client_temp_id": f"{temp}-c",
                            "payload": {"patient_temp_id": temp, **condition(rnd)}})
        if rnd.random() < 0.4:
            changes.append({"operation": "create", "resource_type": "MedicationRequest",
                            "client_temp_id": f"{temp}-m", "payload": {"patient_temp_id": temp, **medication(rnd)}})
    return changes


def progress(done: int, total: int) -> None:
    width = 30
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\r  [{'#' * filled}{'.' * (width - filled)}] {done}/{total} patients")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


async def fill_db(db: Any, patients: int, seed: int | None = None) -> int:
    from .sync.envelope import parse_upload
    from .sync.service import SyncService

    rnd = random.Random(seed)
    sync = SyncService(db)
    tag = f"demo{rnd.randint(0, 10**6)}"
    written, step = 0, 100
    progress(0, patients)
    for start in range(0, patients, step):
        n = min(step, patients - start)
        changes = patient_changes(rnd, n, f"{tag}-{start}")
        await sync.upload(parse_upload({"device_id": "demo-import", "changes": changes}, 1 << 30))
        written += len(changes)
        progress(start + n, patients)
    return written


def live(url: str, token: str | None, devices: int, seconds: float | None, seed: int | None = None) -> None:
    """Play ``devices`` tablets syncing with the server at ``url`` until stopped."""
    rnd = random.Random(seed)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"

    def post(body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(url + "/api/sync/upload/", data=json.dumps(body).encode(),
                                     headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    known: dict[str, list[str]] = {f"tablet-{i + 1}": [] for i in range(devices)}
    deadline = None if seconds is None else time.monotonic() + seconds
    n = 0
    print(f"playing {devices} tablets against {url}; Ctrl-C to stop", file=sys.stderr)
    while deadline is None or time.monotonic() < deadline:
        device = rnd.choice(list(known))
        mine = known[device]
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if not mine or rnd.random() < 0.3:
            changes = patient_changes(rnd, 1, f"{device}-{n}-{rnd.randint(0, 10**9)}")
        else:
            pid = rnd.choice(mine)
            changes = [{"operation": "create", "resource_type": "Observation",
                        "client_temp_id": f"{device}-{n}-{rnd.randint(0, 10**9)}",
                        "payload": {"patient_id": pid, **observation(rnd, when)}}]
        body = post({"device_id": device, "changes": changes})
        for change, result in zip(changes, body["results"], strict=False):
            if change["resource_type"] == "Patient" and result["status"] == "created":
                mine.append(result["server_id"])
        n += 1
        print(f"  {device}: {len(changes)} changes", file=sys.stderr)
        time.sleep(rnd.uniform(0.5, 2.0))


def run_fill(settings: Settings, patients: int, seed: int | None) -> int:
    from .storage import make_storage

    async def go() -> int:
        db = make_storage(settings, worker=True)
        try:
            return await fill_db(db, patients, seed)
        finally:
            await db.close()

    return asyncio.run(go())
