/**
 * Sync batches: GET /api/sync/batches/ (newest first) with status badges,
 * refreshed when a websocket `batch` event arrives.
 * @module views/batches
 */

import { $, setText, debounce, h, replaceChildren } from "../dom.js";
import { badge, formatNumber, plural, shortId, timeEl } from "../format.js";

export const BATCH_LIMIT = 200;
export const STATUS_BADGE = { pending: "info", processing: "warn", done: "ok", failed: "danger" };
const STATUS_LABEL = { pending: "Pending", processing: "Processing", done: "Done", failed: "Failed" };

/**
 * @param {{client: any, handleError: (e: any) => string, setNavCount: Function}} ctx
 */
export function createBatchesView(ctx) {
  const { client } = ctx;
  const body = $("#batch-body");
  const countEl = $("#batch-count");
  const statusSel = /** @type {HTMLSelectElement} */ ($("#batch-status"));
  $("#batches-refresh").addEventListener("click", () => refresh());
  statusSel.addEventListener("change", () => refresh());

  let items = null;
  let error = null;
  let inflight = null;
  let again = false;
  let failedCount = 0;

  async function refresh() {
    if (inflight) {
      again = true;
      return inflight;
    }
    const status = statusSel.value || undefined;
    inflight = (async () => {
      try {
        const [list, failed] = await Promise.all([
          client.listBatches({ status, limit: BATCH_LIMIT }),
          status === "failed" ? null : client.listBatches({ status: "failed", limit: BATCH_LIMIT }),
        ]);
        items = list;
        failedCount = (failed || list).length;
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

  function draw() {
    ctx.setNavCount("batches", failedCount ? `${failedCount} failed` : "", "danger");
    if (error && !items) {
      replaceChildren(body, h("p", { class: "notice notice-danger" }, `Could not load batches: ${error}`));
      setText(countEl, "");
      return;
    }
    if (!items) {
      replaceChildren(body, h("p", { class: "muted loading" }, "Loading batches…"));
      return;
    }
    const filter = statusSel.value;
    setText(countEl, (items.length >= BATCH_LIMIT ? `Latest ${formatNumber(items.length)} batches` : plural(items.length, "batch", "batches")) +
      (filter ? ` (${filter})` : "") +
      (error ? ` · refresh failed: ${error}` : ""));
    if (!items.length) {
      replaceChildren(
        body,
        h("div", { class: "empty empty-small" }, h("p", null, filter ? `No ${filter} batches.` : "No sync batches yet. They appear when a device uploads.")),
      );
      return;
    }
    const table = h(
      "table",
      { class: "data-table" },
      h("caption", { class: "visually-hidden" }, "Sync batches, newest first"),
      h(
        "thead",
        null,
        h("tr", null,
          h("th", { scope: "col" }, "Status"),
          h("th", { scope: "col" }, "Device"),
          h("th", { scope: "col", class: "num" }, "Changes"),
          h("th", { scope: "col" }, "Received"),
          h("th", { scope: "col" }, "Finished"),
          h("th", { scope: "col" }, "Batch"),
          h("th", { scope: "col" }, "Error")),
      ),
      h(
        "tbody",
        null,
        items.map((b) =>
          h(
            "tr",
            { dataset: { batch: b.batch_id, status: b.status }, class: b.status === "failed" ? "row-danger" : null },
            h("td", null, badge(STATUS_LABEL[b.status] || b.status, STATUS_BADGE[b.status] || "neutral")),
            h("td", { class: "strong" }, b.device_id || "—"),
            h("td", { class: "num" }, formatNumber(b.change_count ?? 0)),
            h("td", null, timeEl(b.created_at)),
            h("td", null, b.finished_at ? timeEl(b.finished_at) : h("span", { class: "muted" }, "—")),
            h("td", { class: "mono", title: b.batch_id }, shortId(b.batch_id)),
            h("td", { class: "error-cell" }, b.error ? h("span", { class: "error-text" }, b.error) : h("span", { class: "muted" }, "—")),
          ),
        ),
      ),
    );
    replaceChildren(body, table);
  }

  const refreshSoon = debounce(() => refresh(), 250);

  return {
    show() {
      if (!items && !inflight) refresh();
      else draw();
    },
    hide() {},
    refresh,
    /** Websocket `batch` event: the list is re-read (debounced), not patched. */
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
