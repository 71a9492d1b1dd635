/**
 * Live feed: every change the websocket delivers (new / updated / deleted),
 * newest first, the last 200; and batch status events.
 *
 * Devices: change entries do not say which device made them.  When a batch
 * finishes, its results (GET /api/sync/batches/{id}/) list each applied
 * change's `server_id` and new `server_version`; an entry with exactly that
 * id and version, committed while the batch ran, is labelled with the
 * batch's device.  Anything else shows no device: nothing is guessed.
 * @module views/feed
 */

import { $, frameThrottle, h, replaceChildren } from "../dom.js";
import { badge, formatNumber, plural, shortId, shortTime, summarizeData, timeEl } from "../format.js";
import { changeKind } from "../store.js";

export const FEED_CAP = 200;
const ATTRIBUTION_CAP = 5000;
const KIND_LABEL = { new: "New", updated: "Updated", deleted: "Deleted" };
const KIND_BADGE = { new: "ok", updated: "info", deleted: "danger" };
const BATCH_BADGE = { pending: "info", processing: "warn", done: "ok", failed: "danger" };

/**
 * @param {{client: any, store: import("../store.js").PatientStore, setNavCount: Function}} ctx
 */
export function createFeedView(ctx) {
  const { client, store } = ctx;
  const listEl = $("#feed-list");
  const statusEl = $("#feed-status");
  $("#feed-clear").addEventListener("click", () => {
    entries = [];
    listEl.textContent = "";
    unseen = 0;
    draw();
    statusEl.textContent = "Cleared. Waiting for changes…";
  });

  /** newest first */
  let entries = [];
  let visible = false;
  let unseen = 0;
  let seq = 0;
  /** `${server_id}@${version}` -> {device, lo, hi} from finished batches */
  const attribution = new Map();
  const render = frameThrottle(() => draw());

  function deviceFor(entry) {
    const a = attribution.get(`${entry.id}@${entry.version}`);
    if (!a) return null;
    // The entry must have been committed while that batch ran.
    if (entry.updatedAt && a.lo && a.hi && (entry.updatedAt < a.lo || entry.updatedAt > a.hi)) return null;
    return a.device;
  }

  function titleOf(entry) {
    if (entry.type === "Patient") return entry.name || store.nameOf(entry.id) || "(no name)";
    const who = store.nameOf(entry.patient);
    return who ? `${entry.type} for ${who}` : entry.type;
  }

  function drawEntry(e) {
    if (e.batch) {
      const b = e.batch;
      const text =
        b.status === "done" && b.summary
          ? b.summary
          : b.status === "failed"
            ? `Batch failed${b.error ? `: ${b.error}` : ""}`
            : `Batch ${b.status}`;
      return h(
        "li",
        { class: `feed-item feed-batch status-${b.status}`, dataset: { batch: b.batch_id } },
        h("span", { class: "feed-kind" }, badge(b.status.charAt(0).toUpperCase() + b.status.slice(1), BATCH_BADGE[b.status] || "neutral")),
        h(
          "div",
          { class: "feed-main" },
          h("span", { class: "feed-title" }, b.device_id ? `${b.device_id}: ` : "", text),
          h("span", { class: "feed-sub mono", title: b.batch_id }, `batch ${shortId(b.batch_id)}`),
        ),
        h("span", { class: "feed-time" }, h("time", { datetime: e.at }, shortTime(e.at))),
      );
    }
    const device = e.device || deviceFor(e);
    if (device) e.device = device;
    const patientLink = e.type === "Patient" ? e.id : e.patient;
    const linkable = patientLink && store.get(patientLink) && !store.get(patientLink).deleted;
    const title = titleOf(e);
    return h(
      "li",
      { class: `feed-item kind-${e.kind}`, dataset: { id: e.id, kind: e.kind, type: e.type } },
      h("span", { class: "feed-kind" }, badge(KIND_LABEL[e.kind], KIND_BADGE[e.kind])),
      h(
        "div",
        { class: "feed-main" },
        h(
          "span",
          { class: "feed-title" },
          linkable ? h("a", { href: `#patients/${encodeURIComponent(patientLink)}` }, title) : title,
        ),
        h(
          "span",
          { class: "feed-sub" },
          h("span", { class: "feed-type" }, e.type),
          e.summary ? ` · ${e.summary}` : "",
          ` · v${e.version}`,
          device ? h("span", { class: "device-chip", title: "Device whose sync batch made this change" }, device) : null,
        ),
      ),
      h("span", { class: "feed-time" }, timeEl(e.updatedAt)),
    );
  }

  /**
   * Incremental: new entries are inserted at the top (and animate once), changed
   * ones are replaced in place, dropped ones removed; the rest of the list is
   * left alone, so nothing flickers or re-animates as changes stream in.
   */
  function draw() {
    if (!entries.length) {
      replaceChildren(listEl, h("li", { class: "empty-row" }, "No changes since this page opened. New ones appear here as they arrive."));
    } else {
      const empty = listEl.querySelector(":scope > .empty-row");
      if (empty) empty.remove();
      const wanted = new Set();
      entries.forEach((e, i) => {
        if (!e.el) {
          e.el = drawEntry(e);
          if (e.fresh) e.el.classList.add("arrive");
        } else if (e.dirty) {
          const el = drawEntry(e);
          e.el.replaceWith(el);
          e.el = el;
        }
        e.fresh = e.dirty = false;
        wanted.add(e.el);
        const at = listEl.children[i];
        if (at !== e.el) listEl.insertBefore(e.el, at || null);
      });
      for (const child of [...listEl.children]) if (!wanted.has(child)) child.remove();
    }
    ctx.setNavCount("feed", !visible && unseen ? `${unseen > 99 ? "99+" : unseen} new` : "", "info");
  }

  function push(entry) {
    entry.key = ++seq;
    entry.fresh = true;
    entries.unshift(entry);
    if (entries.length > FEED_CAP) entries.length = FEED_CAP;
  }

  function remember(key, value) {
    attribution.set(key, value);
    if (attribution.size > ATTRIBUTION_CAP) attribution.delete(attribution.keys().next().value);
  }

  async function attributeBatch(ev) {
    let detail;
    try {
      detail = await client.getBatch(ev.batch_id);
    } catch {
      return; // no device shown rather than a wrong one
    }
    const device = detail.device_id || ev.device_id;
    const results = Array.isArray(detail.results) ? detail.results : [];
    const starts = [detail.created_at, detail.claimed_at].filter(Boolean).sort();
    const ends = [detail.finished_at, detail.server_time].filter(Boolean).sort();
    const lo = starts[0] || null;
    const hi = ends[ends.length - 1] || null;
    const counts = {};
    for (const r of results) {
      counts[r.status] = (counts[r.status] || 0) + 1;
      if (device && r.server_id && r.server_version && ["created", "updated", "deleted"].includes(r.status)) {
        remember(`${r.server_id}@${r.server_version}`, { device, lo, hi });
      }
    }
    const line = Object.entries(counts)
      .map(([k, n]) => `${n} ${k.replace("_", " ")}`)
      .join(", ");
    const item = entries.find((e) => e.batch && e.batch.batch_id === ev.batch_id && e.batch.status === "done");
    if (item) {
      item.batch.summary = `synced ${plural(results.length, "change")}${line ? ` (${line})` : ""}`;
      item.dirty = true;
    }
    for (const e of entries) {
      if (!e.batch && !e.device && deviceFor(e)) e.dirty = true;
    }
    render();
  }

  return {
    show() {
      visible = true;
      unseen = 0;
      draw();
    },
    hide() {
      visible = false;
    },
    /** Websocket `changes`. */
    onChanges(changes) {
      let last = null;
      for (const c of changes) {
        const entry = {
          id: c.server_id,
          type: c.resource_type,
          patient: c.patient || null,
          name: c.resource_type === "Patient" && c.data ? c.data.name : null,
          kind: changeKind(c),
          version: c.server_version,
          updatedAt: c.updated_at,
          summary: c.resource_type === "Patient" ? "" : summarizeData(c.data),
          device: null,
        };
        push(entry);
        last = entry;
      }
      if (!last) return;
      if (!visible) unseen += changes.length;
      const title = titleOf(last);
      const what = `${KIND_LABEL[last.kind]} ${title === last.type ? last.type : last.type === "Patient" ? `patient “${title}”` : title}`;
      statusEl.textContent =
        changes.length === 1
          ? `Last change at ${shortTime(last.updatedAt)}: ${what}`
          : `${formatNumber(changes.length)} changes just arrived; the latest at ${shortTime(last.updatedAt)}: ${what}`;
      render();
    },
    /** Websocket `batch` events. */
    onBatch(ev) {
      push({ batch: { ...ev }, at: new Date().toISOString() });
      if (ev.status === "done") attributeBatch(ev);
      render();
    },
    reset() {
      entries = [];
      unseen = 0;
      listEl.textContent = "";
      draw();
    },
  };
}
