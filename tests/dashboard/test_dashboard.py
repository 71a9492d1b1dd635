"""The live dashboard (static/) end to end: real ``run.py`` servers, headless Chromium.

Every wait is one of Playwright's auto-retrying ``expect`` assertions with an
explicit timeout; nothing sleeps.  Screenshots land in ``test-artifacts/``.
"""

from __future__ import annotations

import re
import uuid

import pytest
from playwright.sync_api import expect

from tests.support.dashboard import NETWORK_ERROR, Api, create_token, seed_names, seed_patients

pytestmark = pytest.mark.slow

LIVE = 3000  # ms: a change posted through the API is on the page within this (usually ~50 ms)
LOAD = 10000  # ms: first load of the page and its data


def wait_live(page, timeout: int = LOAD) -> None:
    expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=timeout)
    expect(page.locator("#connection-label")).to_have_text("Live")


def patient_rows(page):
    return page.locator("#patient-list a.patient-row")


def test_patients_are_listed_counted_paged_and_searchable(server_process, dash):
    srv = server_process()
    api = Api(srv.url)
    seed_patients(api, 120)
    zelda = api.new_patient("Zelda Quist", dob="1961-11-02", identifiers={"nhs": "943 476 5919"})
    api.new_record(zelda["id"], "Observation", code={"text": "Heart rate"}, valueQuantity={"value": 64, "unit": "bpm"})
    api.new_record(zelda["id"], "Condition", code={"text": "Hypertension"}, clinicalStatus="active")
    api.new_record(zelda["id"], "Observation", code={"text": "Blood pressure"},
                   valueQuantity={"value": 128, "unit": "mmHg"})

    page = dash.open(srv.url)
    wait_live(page)
    expect(page.locator("#patient-count")).to_have_text("121 patients", timeout=LOAD)
    expect(page.locator("#nav-count-patients")).to_have_text("121")
    rows = patient_rows(page)
    expect(rows).to_have_count(50)
    expect(page.locator("#patients-page")).to_have_text(re.compile(r"Page 1 of 3 · 1–50"))
    expect(page.locator("#patients-prev")).to_be_disabled()

    # Pages: 50, 50, 21; sorted by name.
    page.click("#patients-next")
    expect(page.locator("#patients-page")).to_have_text(re.compile(r"Page 2 of 3 · 51–100"))
    expect(rows).to_have_count(50)
    page.click("#patients-next")
    expect(rows).to_have_count(21)
    expect(page.locator("#patients-next")).to_be_disabled()
    names = sorted([*seed_names(120), "Zelda Quist"], key=str.casefold)
    expect(page.locator("#patient-list .patient-name")).to_have_text(names[100:])

    # Search by identifier value, by name (any order of words), and no match.
    search = page.get_by_label("Search patients by name or identifier")
    search.fill("MRN-1042")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(seed_names(120)[42])
    expect(page.locator("#patient-count")).to_have_text("1 of 121 patients match “MRN-1042”")
    search.fill("943 476")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Zelda Quist")
    search.fill("garcia maria")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Maria Garcia")
    search.fill("smith")
    expect(rows).to_have_count(16)
    expect(page.locator("#patients-page")).to_have_text(re.compile(r"Page 1 of 1"))
    search.fill("nobody-has-this-name")
    expect(rows).to_have_count(0)
    expect(page.locator("#patient-list")).to_contain_text("No patient matches")

    # Selecting a patient shows their records grouped by type, newest first.
    search.fill("zelda")
    rows.first.click()
    expect(page).to_have_url(re.compile(f"#patients/{zelda['id']}$"))
    detail = page.locator("#patient-detail")
    expect(detail.locator("h2")).to_have_text("Zelda Quist")
    expect(detail).to_contain_text("nhs 943 476 5919")
    expect(detail.locator(".tl-group")).to_have_count(2)
    expect(detail.locator(".tl-group h3")).to_have_text([re.compile("^Observation"), re.compile("^Condition")])
    expect(detail.locator(".tl-group").first.locator(".tl-summary")).to_have_text(
        ["Blood pressure · 128 mmHg", "Heart rate · 64 bpm"]
    )
    expect(rows.first).to_have_attribute("aria-current", "true")
    search.fill("")
    expect(rows).to_have_count(50)
    dash.shot("patients")

    # Deep link: reloading on #patients/<id> opens the same patient.
    page.reload()
    expect(page.locator("#patient-detail h2")).to_have_text("Zelda Quist", timeout=LOAD)
    expect(page.locator("#patient-detail .tl-item")).to_have_count(3)


# Representative of the dashboard on PostgreSQL (the page sees the same API either way;
# the rest stay on SQLite to keep Chromium's time down): live push.
@pytest.mark.both_backends
def test_changes_posted_through_the_api_appear_without_reload(server_process, dash):
    srv = server_process()
    api = Api(srv.url)
    zelda = api.new_patient("Zelda Quist")
    api.new_record(zelda["id"], "Observation", code={"text": "Heart rate"}, valueQuantity={"value": 64, "unit": "bpm"})

    page = dash.open(srv.url, f"patients/{zelda['id']}")
    wait_live(page)
    expect(page.locator("#patient-count")).to_have_text("1 patient")
    expect(page.locator("#patient-detail .tl-item")).to_have_count(1, timeout=LOAD)
    page.evaluate("window.__sameDocument = true")

    # A new patient: in the list and its count.
    wanda = api.new_patient("Wanda Walk-in")
    expect(page.locator("#patient-count")).to_have_text("2 patients", timeout=LIVE)
    expect(patient_rows(page).filter(has_text="Wanda Walk-in")).to_have_count(1, timeout=LIVE)

    # A new record of the open patient: on top of its timeline.
    api.new_record(zelda["id"], "Observation", code={"text": "Blood pressure"},
                   valueQuantity={"value": 131, "unit": "mmHg"})
    expect(page.locator("#patient-detail .tl-summary").first).to_have_text("Blood pressure · 131 mmHg", timeout=LIVE)
    expect(page.locator("#patient-detail .tl-item")).to_have_count(2)

    # An edit of the open patient: list and heading.
    api.call("PATCH", f"/api/patients/{zelda['id']}/", {"name": "Zelda Quist-Moreau"})
    expect(page.locator("#patient-detail h2")).to_have_text("Zelda Quist-Moreau", timeout=LIVE)
    expect(patient_rows(page).filter(has_text="Zelda Quist-Moreau")).to_have_count(1)

    # A device's sync batch: the feed names the device; the REST changes name none.
    api.upload("tablet-7", [
        {"operation": "create", "resource_type": "Patient", "client_temp_id": "t1", "payload": {"name": "Tom Tablet"}},
        {"operation": "create", "resource_type": "Observation", "client_temp_id": "o1",
         "payload": {"patient_temp_id": "t1", "code": {"text": "Temperature"},
                     "valueQuantity": {"value": 37.2, "unit": "°C"}}},
    ])
    expect(page.locator("#patient-count")).to_have_text("3 patients", timeout=LIVE)
    expect(page.locator("#nav-count-feed")).to_have_text(re.compile(r"^\d+ new$"))

    # Deleting a patient removes them from the list.
    api.call("DELETE", f"/api/patients/{wanda['id']}/")
    expect(page.locator("#patient-count")).to_have_text("2 patients", timeout=LIVE)
    expect(patient_rows(page).filter(has_text="Wanda Walk-in")).to_have_count(0)

    page.get_by_role("link", name=re.compile("^Live feed")).click()
    expect(page).to_have_url(re.compile("#feed$"))
    feed = page.locator("#feed-list > li.feed-item:not(.feed-batch)")
    expect(feed).to_have_count(6)  # newest first
    expect(feed.nth(0)).to_contain_text("Deleted")
    expect(feed.nth(0)).to_contain_text("Wanda Walk-in")
    expect(feed.nth(1)).to_contain_text("Observation for Tom Tablet")
    expect(feed.nth(1)).to_contain_text("Temperature · 37.2 °C")
    expect(feed.nth(1).locator(".device-chip")).to_have_text("tablet-7", timeout=LIVE)
    expect(feed.nth(2)).to_contain_text("Tom Tablet")
    expect(feed.nth(2).locator(".device-chip")).to_have_text("tablet-7")
    expect(feed.nth(3)).to_contain_text("Updated")
    expect(feed.nth(3)).to_contain_text("Zelda Quist-Moreau")
    expect(feed.nth(4)).to_contain_text("Blood pressure · 131 mmHg")
    expect(feed.nth(5)).to_contain_text("New")
    expect(feed.nth(5)).to_contain_text("Wanda Walk-in")
    for i in (0, 3, 4, 5):  # made over REST: no device is invented
        expect(feed.nth(i).locator(".device-chip")).to_have_count(0)
    batch = page.locator("#feed-list > li.feed-batch")
    expect(batch).to_have_count(1)
    expect(batch).to_contain_text("tablet-7: synced 2 changes (2 created)")
    expect(page.locator("#feed-status")).to_contain_text("Deleted patient “Wanda Walk-in”")
    expect(page.locator("#nav-count-feed")).to_have_text("")

    # Still the same document: nothing reloaded the page.
    assert page.evaluate("window.__sameDocument") is True
    dash.shot("feed")


def test_connection_indicator_reconnects_when_the_server_comes_back(server_process, dash):
    first = server_process()
    api = Api(first.url)
    api.new_patient("Before Restart")
    page = dash.open(first.url)
    wait_live(page)
    expect(page.locator("#patient-count")).to_have_text("1 patient")

    dash.allow_errors(NETWORK_ERROR)  # the browser logs the refused reconnects
    assert first.stop() == 0
    expect(page.locator("#connection")).to_have_attribute("data-state", "reconnecting", timeout=LOAD)
    expect(page.locator("#connection-label")).to_have_text("Reconnecting…")
    expect(page.locator("#connection-retry")).to_be_visible()
    dash.shot("reconnecting")

    second = server_process("--port", str(first.port), data_dir=first.data_dir)
    # Reconnect attempts back off (1 s, 2 s, 4 s … with jitter); one lands within 30 s.
    wait_live(page, timeout=45000)
    expect(page.locator("#connection-retry")).to_be_hidden()

    # It resumed from its cursor: a change made now arrives, exactly once.
    Api(second.url).new_patient("After Restart")
    expect(page.locator("#patient-count")).to_have_text("2 patients", timeout=LIVE)
    expect(patient_rows(page).filter(has_text="After Restart")).to_have_count(1)
    expect(patient_rows(page).filter(has_text="Before Restart")).to_have_count(1)


def test_retry_now_skips_the_backoff(server_process, dash):
    first = server_process()
    page = dash.open(first.url)
    wait_live(page)
    dash.allow_errors(NETWORK_ERROR)
    assert first.stop() == 0
    expect(page.locator("#connection")).to_have_attribute("data-state", "reconnecting", timeout=LOAD)
    # Let attempts fail until the next one is 10 s or more away (attempt 5: 12–20 s), so the
    # timer cannot beat the button while the server starts.
    expect(page.locator("#connection-detail")).to_have_text(re.compile(r"next try in \d\d s"), timeout=40000)
    server_process("--port", str(first.port), data_dir=first.data_dir)
    page.get_by_role("button", name="Retry now").click()
    wait_live(page, timeout=3000)


def make_conflicts(api: Api, device: str = "tablet-3") -> tuple[dict, dict]:
    ana = api.new_patient("Ana Silva", identifiers={"mrn": "MRN-77"})
    obs = api.new_record(ana["id"], "Observation", code={"text": "Weight"}, valueQuantity={"value": 61, "unit": "kg"})
    body = api.upload(device, [
        {"operation": "update", "resource_type": "Patient", "server_id": ana["id"], "base_version": 7,
         "payload": {"name": "Ana S. Silva", "dob": "1980-05-17"}},
        {"operation": "update", "resource_type": "Observation", "server_id": obs["id"], "base_version": 4,
         "payload": {"valueQuantity": {"value": 63, "unit": "kg"}}},
    ])
    assert [r["status"] for r in body["results"]] == ["conflict", "conflict"], body
    return ana, obs


def test_a_conflict_is_resolved_from_the_page(server_process, dash):
    srv = server_process()
    api = Api(srv.url)
    ana, _obs = make_conflicts(api)

    page = dash.open(srv.url, "conflicts")
    wait_live(page)
    cards = page.locator("#conflict-list article.conflict")
    expect(cards).to_have_count(2, timeout=LOAD)
    expect(page.locator("#nav-count-conflicts")).to_have_text("2")
    patient_card = cards.filter(has_text="Patient · Ana Silva")
    expect(patient_card).to_contain_text("Edited an older version")
    expect(patient_card).to_contain_text("From tablet-3")
    # Side by side: the device's attempted change and the server's copy.
    expect(patient_card.locator(".side-device pre")).to_contain_text('"name": "Ana S. Silva"')
    expect(patient_card.locator(".side-server pre")).to_contain_text('"name": "Ana Silva"')
    expect(patient_card.locator(".diff-table tr.differs th")).to_have_text([re.compile("^name")])  # dob was the same
    record_card = cards.filter(has_text="Observation · Ana Silva")
    expect(record_card.locator(".side-device pre")).to_contain_text('"value": 63')
    expect(record_card.locator(".side-server pre")).to_contain_text('"value": 61')
    dash.shot("conflicts")

    note = "Called the ward: kept the server copy"
    patient_card.get_by_label("Resolution note").fill(note)
    patient_card.get_by_role("button", name="Mark resolved").click()
    expect(cards).to_have_count(1, timeout=LIVE)
    expect(page.locator("#nav-count-conflicts")).to_have_text("1")
    still_open = api.get("/api/conflicts/?resolved=false")
    assert [c["resource_type"] for c in still_open] == ["Observation"]
    resolved = api.get("/api/conflicts/?resolved=true")
    assert len(resolved) == 1 and resolved[0]["server_id"] == ana["id"] and resolved[0]["resolution"] == note

    # Without a note, a default resolution is recorded; the empty state shows.
    record_card.get_by_role("button", name="Mark resolved").click()
    expect(cards).to_have_count(0, timeout=LIVE)
    expect(page.locator("#conflict-list")).to_contain_text("No open conflicts")
    expect(page.locator("#nav-count-conflicts")).to_have_text("")
    assert api.get("/api/conflicts/?resolved=false") == []
    assert all(c["resolution"] for c in api.get("/api/conflicts/?resolved=true"))

    # A new conflict shows up live (the batch event refreshes the list).
    make_conflicts(api, device="tablet-9")
    expect(cards).to_have_count(2, timeout=LIVE)
    expect(cards.first).to_contain_text("From tablet-9")


def test_devices_and_batches_views(server_process, dash):
    srv = server_process()
    api = Api(srv.url)
    seed_patients(api, 3, device="tablet-frontdesk")
    down = api.get("/api/sync/download/?cursor=0&device_id=tablet-frontdesk")
    assert not down["has_more"]
    pending = api.upload("tablet-ward", [
        {"operation": "create", "resource_type": "Patient", "client_temp_id": "w1", "payload": {"name": "Ward Walter"}},
    ], batch_id=str(uuid.uuid4()), **{"async": True})
    assert pending["status"] == "pending"

    page = dash.open(srv.url, "devices")
    wait_live(page)
    rows = page.locator("#device-body tbody tr")
    expect(rows).to_have_count(2, timeout=LOAD)
    ward = rows.filter(has_text="tablet-ward")
    front = rows.filter(has_text="tablet-frontdesk")
    expect(ward.locator("td.behind")).to_have_text("never downloaded")
    expect(ward).to_have_class(re.compile("row-warn"))
    expect(ward.locator(".device-state")).to_have_text("Never downloaded · 1 pending batch")
    expect(front.locator(".device-state")).to_have_text("OK")
    expect(front.locator("td.behind")).to_have_text("up to date")
    expect(rows.first).to_contain_text("tablet-ward")  # the one needing a look comes first
    expect(page.locator("#nav-count-devices")).to_have_text("1 need a look")

    # The front desk tablet falls behind as changes arrive; the view follows.
    for name in ("Late One", "Late Two", "Late Three"):
        api.new_patient(name)
    expect(front.locator("td.behind")).to_have_text("3 behind", timeout=8000)
    dash.shot("devices")

    page.get_by_role("link", name=re.compile("^Sync batches")).click()
    batches = page.locator("#batch-body tbody tr")
    expect(batches).to_have_count(2, timeout=LOAD)
    expect(batches.first).to_contain_text("tablet-ward")
    expect(batches.first.locator(".badge")).to_have_text("Pending")
    expect(batches.nth(1).locator(".badge")).to_have_text("Done")
    expect(batches.nth(1)).to_contain_text("tablet-frontdesk")

    # Triggered on the server's worker: the row turns Done without a reload.
    api.call("POST", f"/api/sync/trigger/{pending['batch_id']}/")
    expect(batches.first.locator(".badge")).to_have_text("Done", timeout=8000)
    expect(page.locator("#patient-count")).to_have_text("7 patients", timeout=LIVE)
    page.select_option("#batch-status", "pending")
    expect(batches).to_have_count(0)
    expect(page.locator("#batch-body")).to_contain_text("No pending batches.")
    page.select_option("#batch-status", "")
    expect(batches).to_have_count(2)
    dash.shot("batches")


def test_keyboard_navigation_between_views(server_process, dash):
    srv = server_process()
    api = Api(srv.url)
    seed_patients(api, 3)
    page = dash.open(srv.url)
    wait_live(page)
    expect(patient_rows(page)).to_have_count(3)
    page.keyboard.press("Tab")
    expect(page.locator("#skip-link")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#main")).to_be_focused()
    nav = page.get_by_role("navigation", name="Dashboard views")
    nav.get_by_role("link", name=re.compile("^Devices")).focus()
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile("#devices$"))
    expect(page.locator("#devices-title")).to_be_focused()
    expect(nav.get_by_role("link", name=re.compile("^Devices"))).to_have_attribute("aria-current", "page")
    expect(page).to_have_title("Devices · HealthSync")
    # In the patient list, arrow keys move between patients and Enter opens one.
    page.goto(f"{srv.url}/#patients")
    patient_rows(page).first.focus()
    page.keyboard.press("ArrowDown")
    expect(patient_rows(page).nth(1)).to_be_focused()
    page.keyboard.press("Enter")
    second = sorted(seed_names(3), key=str.casefold)[1]
    expect(page.locator("#patient-detail h2")).to_have_text(second)


def test_token_mode_asks_for_a_dashboard_token(server_process, dash, tmp_path):
    data = tmp_path / "data"
    token = create_token(data, "dashboard", "front-desk")
    admin = Api("", token=create_token(data, "admin", "it"))
    srv = server_process("--auth", "token", data_dir=data)
    admin.base = srv.url
    admin.new_patient("Tess Token")
    make_conflicts(admin, device="tablet-3")
    page = dash.page
    dash.allow_errors(r"status of 401")  # the browser logs each refused request

    # No token: a panel that says why nothing loads, never a blank page.
    dash.open(srv.url)
    panel = page.locator("#auth-panel")
    expect(panel).to_be_visible(timeout=LOAD)
    expect(panel).to_contain_text("A dashboard token is needed")
    expect(page.locator("#auth-reason")).to_contain_text("No token is stored in this tab")
    expect(page.locator("#connection")).to_have_attribute("data-state", "closed")
    expect(page.locator("#view-patients")).to_be_hidden()
    expect(page.get_by_role("textbox", name="Dashboard token")).to_be_focused()
    dash.shot("token")

    # A wrong token is refused, and the panel says so.
    page.get_by_role("textbox", name="Dashboard token").fill("hs_not-a-real-token")
    page.get_by_role("button", name="Use this token").click()
    expect(page.locator("#auth-reason")).to_contain_text("The token stored in this tab was refused", timeout=LOAD)
    expect(panel).to_be_visible()

    # The real one: data loads, the websocket (with ?token=) goes live, conflicts can be resolved.
    page.get_by_role("textbox", name="Dashboard token").fill(token)
    page.get_by_role("button", name="Use this token").click()
    expect(panel).to_be_hidden()
    expect(page.locator("#patient-count")).to_have_text("2 patients", timeout=LOAD)
    wait_live(page)
    assert page.evaluate("sessionStorage.getItem('healthsync.dashboardToken')") == token
    admin.new_patient("Live Through Token")
    expect(page.locator("#patient-count")).to_have_text("3 patients", timeout=LIVE)
    page.get_by_role("link", name=re.compile("^Conflicts")).click()
    cards = page.locator("#conflict-list article.conflict")
    expect(cards).to_have_count(2, timeout=LOAD)
    cards.first.get_by_role("button", name="Mark resolved").click()
    expect(cards).to_have_count(1, timeout=LIVE)
    page.get_by_role("link", name=re.compile("^Devices")).click()
    expect(page.locator("#device-body tbody tr")).to_have_count(1, timeout=LOAD)

    # The token stays for this tab: a reload goes straight to the data.
    page.reload()
    expect(page.locator("#patient-count")).to_have_text("3 patients", timeout=LOAD)
    wait_live(page)
    expect(panel).to_be_hidden()
    page.get_by_role("button", name="Forget dashboard token").click()
    expect(panel).to_be_visible(timeout=LOAD)
    assert page.evaluate("sessionStorage.getItem('healthsync.dashboardToken')") is None


def test_api_docs_page_renders_the_openapi_document(server_process, dash):
    srv = server_process()
    operations = sum(
        1 for item in Api(srv.url).get("/api/schema/")["paths"].values()
        for method in item if method in ("get", "post", "put", "patch", "delete")
    )
    page = dash.page
    page.goto(f"{srv.url}/api/docs/")
    expect(page.locator("#title")).to_have_text(re.compile("HealthSync API"), timeout=LOAD)
    expect(page.locator("section.op .method")).to_have_count(operations, timeout=LOAD)
    expect(page.locator("#status")).to_have_count(0)
    upload = page.locator("section.op", has=page.locator(".path", has_text="/api/sync/upload/"))
    expect(upload.first).to_contain_text("Upload a device's batch of changes")
    expect(page.locator("#schemas")).to_contain_text("UploadRequest")
    # (a create answers 201, or 200 for a retry: each answer lists its links)
    expect(page.locator("#create_patient .links").first).to_contain_text("get_patient with id = $response.body#/id")
    expect(page.locator("#list_conflicts .links")).to_contain_text("resolve_conflict")
    dash.shot("api-docs")
    assert dash.unexpected_errors() == []
