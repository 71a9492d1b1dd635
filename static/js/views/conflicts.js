/**
 * Conflicts: GET /api/conflicts/?resolved=false.  Each shows the device's
 * attempted change and the server's copy side by side, and a "Mark resolved"
 * button (PATCH /api/conflicts/{id}/ {"resolved": true, "resolution": …}).
 * @module views/conflicts
 */

import { $, setText, announce, debounce, frameThrottle, h, replaceChildren } from "../dom.js";
import { badge, plural, prettyJson, reasonLabel, shortId, timeEl } from "../format.js";

const DEFAULT_RESOLUTION = "Reviewed on the dashboard; server copy kept";

/** A patient's writable fields (the ones a device's change can touch). */
function patientFields(p) {
  return { name: p.name, dob: p.dob, identifiers: p.identifiers, fhir: p.fhir };
}

function same(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

function show(value) {
  if (value === undefined) return h("span", { class: "muted" }, "not set");
  if (value === null) return h("span", { class: "muted" }, "null");
  if (typeof value === "object") return h("code", { class: "json-inline" }, JSON.stringify(value));
  return String(value);
}

/**
 * @param {{client: any, store: import("../store.js").PatientStore, handleError: (e: any) => string,
 *          setNavCount: Function}} ctx
 */
export function createConflictsView(ctx) {
  const { client, store } = ctx;
  const listEl = $("#conflict-list");
  const countEl = $("#conflict-count");

  let items = null;
  let error = null;
  let inflight = null;
  let again = false;
  /** ids resolved from this page: kept out of the list even if a refresh raced the PATCH */
  const resolvedHere = new Set();

  async function refresh() {
    if (inflight) {
      again = true;
      return inflight;
    }
    inflight = (async () => {
      try {
        items = (await client.listConflicts({ resolved: false })).filter((c) => !resolvedHere.has(c.id));
        error = null;
      } catch (err) {
        error = ctx.handleError(err);
      }
      draw();
    })();
    try {
      await inflight;
    } finally {
      inflight = null;
    }
    if (again) {
      again = false;
      return refresh();
    }
    return undefined;
  }

  function updateCount() {
    const n = items ? items.length : 0;
    ctx.setNavCount("conflicts", n ? String(n) : "", "warn");
    setText(countEl, items ? (n ? `${plural(n, "open conflict")} to review` : "") : "");
  }

  function draw() {
    updateCount();
    if (error && !items) {
      replaceChildren(listEl, h("p", { class: "notice notice-danger" }, `Could not load conflicts: ${error}`));
      return;
    }
    if (!items) {
      replaceChildren(listEl, h("p", { class: "muted loading" }, "Loading conflicts…"));
      return;
    }
    if (!items.length) {
      replaceChildren(
        listEl,
        h(
          "div",
          { class: "panel empty" },
          h("p", { class: "empty-title" }, "No open conflicts"),
          h("p", null, "Every device change has been applied or reviewed."),
        ),
      );
      return;
    }
    // A refresh must not lose a note being typed, or the keyboard focus.
    const notes = new Map();
    for (const input of listEl.querySelectorAll("input[name=resolution]")) notes.set(input.id, input.value);
    const focusedId = listEl.contains(document.activeElement) ? document.activeElement.id : null;
    replaceChildren(listEl, items.map(card));
    for (const [id, value] of notes) {
      const input = document.getElementById(id);
      if (input) input.value = value;
    }
    if (focusedId && document.getElementById(focusedId)) document.getElementById(focusedId).focus();
  }

  function card(c) {
    const change = c.change || {};
    const payload = change.payload;
    const server = c.server_copy;
    const isPatient = c.resource_type === "Patient";
    // A device's update is a merge patch of a patient's fields or of a record's data.
    const serverFields = server ? (isPatient ? server : server.data || {}) : null;
    const patientId = isPatient ? c.server_id : server && server.patient;
    const who = (isPatient && server && server.name) || (patientId && store.nameOf(patientId)) || null;
    const titleId = `conflict-${c.id}-title`;
    const noteId = `conflict-${c.id}-note`;

    const diffRows =
      payload && typeof payload === "object" && !Array.isArray(payload)
        ? Object.keys(payload).map((key) => {
            const mine = payload[key];
            const theirs = serverFields ? serverFields[key] : undefined;
            const differs = !same(mine, theirs);
            return h(
              "tr",
              { class: differs ? "differs" : null },
              h("th", { scope: "row" }, key, differs ? h("span", { class: "visually-hidden" }, " (differs)") : null),
              h("td", null, show(mine)),
              h("td", null, server ? show(theirs) : h("span", { class: "muted" }, "—")),
            );
          })
        : [];

    const button = h("button", { type: "submit", id: `conflict-${c.id}-resolve`, class: "btn btn-primary" }, "Mark resolved");
    const noteInput = h("input", {
      id: noteId,
      name: "resolution",
      type: "text",
      maxlength: "2000",
      placeholder: DEFAULT_RESOLUTION,
      autocomplete: "off",
    });
    const formError = h("p", { class: "error-text form-error", role: "alert" });
    const form = h(
      "form",
      { class: "conflict-actions" },
      h("label", { for: noteId }, "Resolution note ", h("span", { class: "muted" }, "(optional)")),
      h("div", { class: "inline-field" }, noteInput, button),
      formError,
    );
    const article = h(
      "article",
      { class: "panel conflict", "aria-labelledby": titleId, dataset: { id: c.id } },
      h(
        "header",
        { class: "conflict-head" },
        h(
          "h2",
          { id: titleId, class: "conflict-title" },
          `${c.resource_type}${who ? ` · ${who}` : ""}`,
          " ",
          badge(reasonLabel(c.reason), "warn", { title: c.reason }),
        ),
        h(
          "p",
          { class: "conflict-meta" },
          "From ", h("strong", null, c.device_id || "unknown device"), " · ",
          timeEl(c.created_at), " (", timeEl(c.created_at, "relative"), ")",
          " · ", h("span", { class: "mono", title: c.server_id }, shortId(c.server_id)),
          c.batch_id ? [" · batch ", h("span", { class: "mono", title: c.batch_id }, shortId(c.batch_id))] : null,
        ),
      ),
      diffRows.length
        ? h(
            "table",
            { class: "diff-table" },
            h("caption", null, "Fields in the device's change", h("span", { class: "caption-note" }, " · differences highlighted")),
            h("thead", null, h("tr", null, h("th", { scope: "col" }, "Field"), h("th", { scope: "col" }, "Device wanted"), h("th", { scope: "col" }, "Server has"))),
            h("tbody", null, diffRows),
          )
        : null,
      h(
        "div",
        { class: "side-by-side" },
        h(
          "section",
          { class: "side side-device", "aria-label": "Device's attempted change" },
          h("h3", null, "Device's change"),
          h(
            "p",
            { class: "side-meta" },
            `${change.operation || "change"}`,
            change.base_version !== undefined && change.base_version !== null ? ` of version ${change.base_version}` : "",
            change.client_updated_at ? [" · edited ", timeEl(change.client_updated_at)] : null,
          ),
          payload !== undefined ? h("pre", { class: "json" }, prettyJson(payload)) : h("p", { class: "muted" }, "No payload (a delete)."),
        ),
        h(
          "section",
          { class: "side side-server", "aria-label": "Server copy" },
          h("h3", null, "Server copy"),
          server
            ? [
                h("p", { class: "side-meta" }, `version ${server.server_version}`, server.deleted ? " · deleted" : "", " · updated ", timeEl(server.updated_at)),
                h("pre", { class: "json" }, prettyJson(isPatient ? patientFields(server) : server.data)),
              ]
            : h("p", { class: "muted" }, "The server has no copy."),
        ),
      ),
      form,
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      button.disabled = true;
      button.textContent = "Resolving…";
      formError.textContent = "";
      try {
        await client.resolveConflict(c.id, noteInput.value.trim() || DEFAULT_RESOLUTION);
        resolvedHere.add(c.id);
        const index = items.findIndex((x) => x.id === c.id);
        if (index >= 0) items.splice(index, 1);
        const next = article.nextElementSibling || article.previousElementSibling;
        article.remove();
        updateCount();
        if (!items.length) draw();
        announce(`Conflict on ${c.resource_type}${who ? ` ${who}` : ""} marked resolved.`);
        // Keep keyboard users in the list.
        const focusTarget = next && next.querySelector("input, button");
        if (focusTarget) /** @type {HTMLElement} */ (focusTarget).focus();
        else $("#conflicts-title").focus();
      } catch (err) {
        formError.textContent = `Could not mark it resolved: ${ctx.handleError(err)}`;
        button.disabled = false;
        button.textContent = "Mark resolved";
      }
    });
    return article;
  }

  const refreshSoon = debounce(() => refresh(), 300);
  const redraw = frameThrottle(() => {
    if (items) draw();
  });

  return {
    /** Patient names changed or finished loading: titles name the patient. */
    onPatientsChanged() {
      redraw();
    },
    show() {
      if (!items && !inflight) refresh();
      else draw();
    },
    hide() {},
    refresh,
    onBatch() {
      refreshSoon();
    },
    reset() {
      items = null;
      error = null;
      draw();
    },
  };
}
