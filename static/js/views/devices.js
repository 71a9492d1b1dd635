/**
 * Devices: GET /api/devices/ — each device's last upload and download, how
 * many changes it is `behind` the server's head, pending and failed batches,
 * so a stuck tablet is spotted from the front desk.  Devices needing a look
 * are listed first.
 * @module views/devices
 */

import { $, setText, debounce, h, replaceChildren } from "../dom.js";
import { badge, formatNumber, parseTime, plural, timeEl } from "../format.js";

/** `behind` at or above this is highlighted; at or above BEHIND_DANGER it is red. */
export const BEHIND_WARN = 100;
export const BEHIND_DANGER = 1000;
/** Not seen for this long: flagged. */
const STALE_MS = 24 * 3600 * 1000;

/** Problems worth a look, most serious first, as [text, kind]. */
function issues(d, now) {
  const out = [];
  if (d.failed_batches > 0) out.push([`${plural(d.failed_batches, "failed batch", "failed batches")}`, "danger"]);
  if (d.behind === null || d.behind === undefined) out.push(["Never downloaded", "warn"]);
  else if (d.behind >= BEHIND_DANGER) out.push([`Far behind`, "danger"]);
  else if (d.behind >= BEHIND_WARN) out.push([`Behind`, "warn"]);
  if (d.pending_batches > 0) out.push([`${plural(d.pending_batches, "pending batch", "pending batches")}`, "info"]);
  if (stale(d, now)) out.push(["Not seen for a day", "warn"]);
  return out;
}

function stale(d, now) {
  const seen = parseTime(d.last_seen);
  return Boolean(seen && now - seen.getTime() > STALE_MS);
}

function bySeverity(list) {
  const rank = { danger: 3, warn: 2, info: 1 };
  return [...list].sort((a, b) => (rank[b[1]] || 0) - (rank[a[1]] || 0));
}

function severity(list) {
  const rank = { danger: 3, warn: 2, info: 1 };
  return list.reduce((m, [, kind]) => Math.max(m, rank[kind] || 0), 0);
}

function behindCell(behind) {
  if (behind === null || behind === undefined) return badge("never downloaded", "warn");
  if (behind === 0) return badge("up to date", "ok");
  const kind = behind >= BEHIND_DANGER ? "danger" : behind >= BEHIND_WARN ? "warn" : "neutral";
  return badge(`${formatNumber(behind)} behind`, kind, { title: `${formatNumber(behind)} changes behind the server` });
}

/**
 * @param {{client: any, handleError: (e: any) => string, setNavCount: Function}} ctx
 */
export function createDevicesView(ctx) {
  const { client } = ctx;
  const body = $("#device-body");
  const countEl = $("#device-count");
  $("#devices-refresh").addEventListener("click", () => refresh());

  let items = null;
  let error = null;
  let inflight = null;
  let again = false;
  let visible = false;
  let loadedAt = 0;
  let timer = null;

  async function refresh() {
    if (inflight) {
      again = true;
      return inflight;
    }
    inflight = (async () => {
      try {
        items = await client.listDevices();
        error = null;
        loadedAt = Date.now();
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
    const now = Date.now();
    const rows = (items || []).map((d) => ({ d, issues: bySeverity(issues(d, now)) }));
    const attention = rows.filter((r) => r.issues.length && severity(r.issues) >= 2).length;
    ctx.setNavCount("devices", attention ? `${attention} need a look` : "", "warn");
    if (error && !items) {
      replaceChildren(body, h("p", { class: "notice notice-danger" }, `Could not load devices: ${error}`));
      setText(countEl, "");
      return;
    }
    if (!items) {
      replaceChildren(body, h("p", { class: "muted loading" }, "Loading devices…"));
      return;
    }
    setText(countEl, plural(items.length, "device") + (attention ? ` · ${attention} need a look` : "") + (error ? ` · refresh failed: ${error}` : ""));
    if (!items.length) {
      replaceChildren(body, h("div", { class: "empty empty-small" }, h("p", null, "No device has synced yet.")));
      return;
    }
    rows.sort((a, b) => severity(b.issues) - severity(a.issues) || String(b.d.last_seen || "").localeCompare(String(a.d.last_seen || "")));
    const table = h(
      "table",
      { class: "data-table" },
      h("caption", { class: "visually-hidden" }, "Devices, those needing a look first"),
      h(
        "thead",
        null,
        h("tr", null,
          h("th", { scope: "col" }, "Device"),
          h("th", { scope: "col" }, "Last upload"),
          h("th", { scope: "col" }, "Last download"),
          h("th", { scope: "col" }, "Behind"),
          h("th", { scope: "col", class: "num" }, "Pending"),
          h("th", { scope: "col", class: "num" }, "Failed"),
          h("th", { scope: "col" }, "Last seen")),
      ),
      h(
        "tbody",
        null,
        rows.map(({ d, issues: list }) => {
          const sev = severity(list);
          return h(
            "tr",
            { dataset: { device: d.device_id }, class: sev >= 3 ? "row-danger" : sev >= 2 ? "row-warn" : null },
            h("th", { scope: "row", class: "nowrap" },
              h("span", { class: "strong" }, d.device_id),
              h("span", { class: `device-state device-state-${sev >= 3 ? "danger" : sev >= 2 ? "warn" : "ok"}` },
                list.length ? list.map(([text]) => text).join(" · ") : "OK")),
            h("td", null, timeEl(d.last_upload_at, "relative")),
            h("td", null, timeEl(d.last_download_at, "relative")),
            h("td", { class: "behind" }, behindCell(d.behind)),
            h("td", { class: "num" }, d.pending_batches ? badge(formatNumber(d.pending_batches), "info") : "0"),
            h("td", { class: "num" }, d.failed_batches ? badge(formatNumber(d.failed_batches), "danger") : "0"),
            h("td", null, stale(d, now) ? badge(timeEl(d.last_seen, "relative"), "warn") : timeEl(d.last_seen, "relative")),
          );
        }),
      ),
    );
    replaceChildren(body, table);
  }

  const refreshSoon = debounce(() => refresh(), 400);
  // `behind` grows with every change: re-read now and then while someone is looking.
  const refreshLazy = debounce(() => {
    if (visible) refresh();
  }, 2000);

  return {
    show() {
      visible = true;
      if (!items || Date.now() - loadedAt > 5000) refresh();
      else draw();
      clearInterval(timer);
      timer = setInterval(() => refresh(), 30000);
    },
    hide() {
      visible = false;
      clearInterval(timer);
      timer = null;
    },
    refresh,
    onBatch() {
      refreshSoon();
    },
    onChanges() {
      refreshLazy();
    },
    reset() {
      items = null;
      error = null;
      draw();
    },
  };
}
