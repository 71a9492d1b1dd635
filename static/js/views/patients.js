/**
 * Patients view: a searchable, paged list (50 a page, filtered in the
 * browser) and the selected patient's records as a timeline grouped by
 * resource type, newest first.  Both stay live from websocket changes.
 * @module views/patients
 */

import { $, announce, setText, debounce, frameThrottle, h, replaceChildren } from "../dom.js";
import { formatDob, formatNumber, identifiersText, plural, prettyJson, summarizeData, timeEl } from "../format.js";
import { recordFrom } from "../store.js";

export const PAGE_SIZE = 50;
const FLASH_MS = 2500;

function initials(name) {
  const parts = String(name || "?").trim().split(/\s+/).filter(Boolean);
  const letters = parts.length > 1 ? parts[0][0] + parts[parts.length - 1][0] : (parts[0] || "?").slice(0, 2);
  return letters.toUpperCase();
}

/** A stable, calm hue per patient id for the avatar. */
function hue(id) {
  let n = 0;
  for (let i = 0; i < id.length; i++) n = (n * 31 + id.charCodeAt(i)) % 360;
  return n;
}

/**
 * @param {{client: any, store: import("../store.js").PatientStore, handleError: (e: any) => string,
 *          setNavCount: (view: string, text: string, kind?: string) => void}} ctx
 */
export function createPatientsView(ctx) {
  const { client, store } = ctx;
  const search = /** @type {HTMLInputElement} */ ($("#patient-search"));
  const countEl = $("#patient-count");
  const listEl = $("#patient-list");
  const prevBtn = /** @type {HTMLButtonElement} */ ($("#patients-prev"));
  const nextBtn = /** @type {HTMLButtonElement} */ ($("#patients-next"));
  const pageEl = $("#patients-page");
  const detailEl = $("#patient-detail");

  let page = 0;
  let query = "";
  let loadError = null;
  /** @type {Map<string, number>} id -> when it last changed live */
  const flashes = new Map();
  /** @type {null | {id: string, records: Map<string, any>, loading: boolean, error: string|null}} */
  let selected = null;

  const renderList = frameThrottle(() => drawList());
  const renderDetail = frameThrottle(() => drawDetail());

  search.addEventListener(
    "input",
    debounce(() => {
      query = search.value.trim();
      page = 0;
      drawList();
    }, 80),
  );
  prevBtn.addEventListener("click", () => {
    page = Math.max(0, page - 1);
    drawList();
  });
  nextBtn.addEventListener("click", () => {
    page += 1;
    drawList();
  });
  // Arrow keys move between patients in the list.
  listEl.addEventListener("keydown", (event) => {
    if (event.key !== "ArrowDown" && event.key !== "ArrowUp") return;
    const links = [...listEl.querySelectorAll("a.patient-row")];
    const i = links.indexOf(/** @type {any} */ (document.activeElement));
    if (i < 0) return;
    const next = links[event.key === "ArrowDown" ? Math.min(links.length - 1, i + 1) : Math.max(0, i - 1)];
    next.focus();
    event.preventDefault();
  });

  function flashAttrs(id) {
    const at = flashes.get(id);
    if (!at) return {};
    const age = Date.now() - at;
    if (age > FLASH_MS) {
      flashes.delete(id);
      return {};
    }
    return { class: "flash", style: `animation-delay: -${age}ms` };
  }

  function drawList() {
    const total = store.count;
    ctx.setNavCount("patients", store.loaded ? formatNumber(total) : "");
    if (!store.loaded) {
      if (loadError) {
        setText(countEl, loadError);
        countEl.classList.add("error-text");
      }
      return;
    }
    countEl.classList.remove("error-text");
    const matches = store.search(query);
    const pages = Math.max(1, Math.ceil(matches.length / PAGE_SIZE));
    page = Math.min(page, pages - 1);
    const start = page * PAGE_SIZE;
    const items = matches.slice(start, start + PAGE_SIZE);
    setText(countEl, query
      ? `${formatNumber(matches.length)} of ${plural(total, "patient")} match “${query}”`
      : plural(total, "patient"));
    const rows = items.map((p) => {
      const meta = [formatDob(p.dob), identifiersText(p.identifiers)].filter(Boolean).join(" · ");
      const fl = flashAttrs(p.id);
      return h(
        "li",
        { class: fl.class, style: fl.style, dataset: { id: p.id } },
        h(
          "a",
          {
            class: "patient-row",
            href: `#patients/${encodeURIComponent(p.id)}`,
            "aria-current": selected && selected.id === p.id ? "true" : null,
          },
          h("span", { class: "avatar", "aria-hidden": "true", style: `--hue: ${hue(p.id)}` }, initials(p.name)),
          h(
            "span",
            { class: "patient-main" },
            h("span", { class: "patient-name" }, p.name || "(no name)"),
            meta ? h("span", { class: "patient-meta" }, meta) : null,
          ),
          h("span", { class: "patient-updated" }, timeEl(p.updatedAt, "relative")),
        ),
      );
    });
    if (!rows.length) {
      rows.push(
        h(
          "li",
          { class: "empty-row" },
          total ? `No patient matches “${query}”.` : "No patients yet. They appear here as soon as a device syncs one.",
        ),
      );
    }
    replaceChildren(listEl, rows);
    prevBtn.disabled = page === 0;
    nextBtn.disabled = page >= pages - 1;
    pageEl.textContent = matches.length
      ? `Page ${page + 1} of ${pages} · ${formatNumber(start + 1)}–${formatNumber(start + items.length)}`
      : "";
  }

  // Detail ---------------------------------------------------------------------------

  function select(id) {
    if (selected && selected.id === id) {
      renderList();
      renderDetail();
      return;
    }
    selected = { id, records: new Map(), loading: true, error: null };
    renderList();
    drawDetail();
    client
      .listRecords({ patient: id })
      .then((items) => {
        if (!selected || selected.id !== id) return;
        for (const item of items) applyRecord(recordFrom(item));
        selected.loading = false;
        drawDetail();
        const live = [...selected.records.values()].filter((r) => !r.deleted).length;
        announce(`${store.nameOf(id) || "Patient"}: ${plural(live, "record")}.`);
      })
      .catch((err) => {
        if (!selected || selected.id !== id) return;
        selected.loading = false;
        selected.error = ctx.handleError(err);
        drawDetail();
      });
  }

  /** Keep the newest version of each record (tombstones included, hidden when drawn). */
  function applyRecord(rec) {
    if (!selected || rec.patient !== selected.id) return false;
    const prev = selected.records.get(rec.id);
    if (prev && prev.version >= rec.version) return false;
    selected.records.set(rec.id, { ...rec, flashAt: selected.loading ? 0 : Date.now() });
    return true;
  }

  function drawDetail() {
    detailEl.setAttribute("aria-busy", selected && selected.loading ? "true" : "false");
    detailEl.parentElement.classList.toggle("has-selection", Boolean(selected));
    if (!selected) {
      replaceChildren(
        detailEl,
        h(
          "div",
          { class: "empty" },
          h("p", { class: "empty-title" }, "No patient selected"),
          h("p", null, "Choose a patient from the list to see their records, newest first."),
        ),
      );
      return;
    }
    const patient = store.get(selected.id);
    if (!patient && store.loaded) {
      replaceChildren(
        detailEl,
        h("div", { class: "empty" }, h("p", { class: "empty-title" }, "Patient not found"),
          h("p", null, "This link points to a patient this server does not have."),
          h("a", { href: "#patients" }, "Back to the list")),
      );
      return;
    }
    const head = h(
      "div",
      { class: "detail-head" },
      h("a", { class: "back-link", href: "#patients" }, "← All patients"),
      h("h2", { id: "detail-title" }, patient ? patient.name || "(no name)" : "Loading…"),
      patient
        ? h(
            "p",
            { class: "detail-meta" },
            [
              patient.dob ? `Born ${formatDob(patient.dob)}` : "Date of birth not recorded",
              identifiersText(patient.identifiers),
            ]
              .filter(Boolean)
              .join(" · "),
          )
        : null,
      patient
        ? h("p", { class: "detail-meta muted" }, "Updated ", timeEl(patient.updatedAt, "relative"), ` · version ${patient.version}`,
            " · ", h("span", { class: "mono", title: patient.id }, patient.id))
        : null,
    );
    const parts = [head];
    if (patient && patient.deleted) {
      parts.push(h("p", { class: "notice notice-danger", role: "note" }, "This patient was deleted. Devices remove them on their next sync."));
    }
    if (selected.error) {
      parts.push(h("p", { class: "notice notice-danger" }, `Could not load records: ${selected.error}`));
    } else if (selected.loading) {
      parts.push(h("p", { class: "muted loading" }, "Loading records…"));
    } else {
      parts.push(...timeline());
    }
    replaceChildren(detailEl, parts);
  }

  function timeline() {
    const live = [...selected.records.values()].filter((r) => !r.deleted);
    if (!live.length) {
      return [h("div", { class: "empty empty-small" }, h("p", null, "No records yet for this patient."))];
    }
    const groups = new Map();
    for (const r of live) {
      if (!groups.has(r.resourceType)) groups.set(r.resourceType, []);
      groups.get(r.resourceType).push(r);
    }
    const newestFirst = (a, b) => (a.updatedAt < b.updatedAt ? 1 : a.updatedAt > b.updatedAt ? -1 : 0);
    for (const list of groups.values()) list.sort(newestFirst);
    const ordered = [...groups.entries()].sort((a, b) => newestFirst(a[1][0], b[1][0]));
    const now = Date.now();
    const out = [h("p", { class: "count" }, `${plural(live.length, "record")} in ${plural(ordered.length, "type")}`)];
    for (const [type, list] of ordered) {
      const gid = `tl-${type}`;
      out.push(
        h(
          "section",
          { class: "tl-group", "aria-labelledby": gid, dataset: { type } },
          h("h3", { id: gid, class: "tl-title" }, type, h("span", { class: "pill" }, String(list.length))),
          h(
            "ol",
            { class: "timeline" },
            list.map((r) => {
              const age = r.flashAt ? now - r.flashAt : FLASH_MS + 1;
              return h(
                "li",
                {
                  class: `tl-item${age < FLASH_MS ? " flash" : ""}`,
                  style: age < FLASH_MS ? `animation-delay: -${age}ms` : null,
                  dataset: { id: r.id },
                },
                h("span", { class: "tl-dot", "aria-hidden": "true" }),
                h(
                  "div",
                  { class: "tl-body" },
                  h("div", { class: "tl-line" },
                    h("span", { class: "tl-summary" }, summarizeData(r.data)),
                    h("span", { class: "tl-time" }, timeEl(r.updatedAt), h("span", { class: "muted" }, ` · v${r.version}`))),
                  h("details", { class: "tl-details" }, h("summary", null, "Show data"), h("pre", { class: "json" }, prettyJson(r.data))),
                ),
              );
            }),
          ),
        ),
      );
    }
    return out;
  }

  return {
    /** Show the view; `param` is a patient id from `#patients/<id>`. */
    show(param) {
      if (param) select(param);
      else if (selected) {
        selected = null;
        drawDetail();
      }
      drawList();
    },
    hide() {},
    /** The store finished (re)loading. */
    loaded() {
      loadError = null;
      drawList();
      if (selected) drawDetail();
    },
    loadFailed(message) {
      loadError = `Could not load patients: ${message}`;
      drawList();
    },
    progress(count) {
      setText(countEl, `Loading patients… ${formatNumber(count)}`);
    },
    /** Websocket changes (all types); patients were already applied to the store. */
    onChanges(changes, changedPatientIds) {
      const now = Date.now();
      for (const id of changedPatientIds) flashes.set(id, now);
      let detailDirty = false;
      if (selected) {
        for (const c of changes) {
          if (c.resource_type === "Patient") {
            if (c.server_id === selected.id) detailDirty = true;
          } else if (c.patient === selected.id && applyRecord(recordFrom(c))) {
            detailDirty = true;
          }
        }
      }
      if (changedPatientIds.length) renderList();
      else ctx.setNavCount("patients", formatNumber(store.count));
      if (detailDirty) renderDetail();
    },
    /** Start over (new token, resync). */
    reset() {
      selected = null;
      page = 0;
      flashes.clear();
      listEl.textContent = "";
      setText(countEl, "Loading patients…");
      drawDetail();
    },
    get selectedId() {
      return selected ? selected.id : null;
    },
  };
}
