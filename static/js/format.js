/**
 * Formatting for people at a front desk: local times, "3 min ago", short
 * one-line summaries of FHIR-ish record data.
 * @module format
 */

import { h } from "./dom.js";

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
const dateTimeFmt = new Intl.DateTimeFormat(undefined, {
  day: "numeric",
  month: "short",
  hour: "2-digit",
  minute: "2-digit",
});
const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
const dateFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeZone: "UTC" });
const numberFmt = new Intl.NumberFormat();
const relFmt = typeof Intl.RelativeTimeFormat === "function" ? new Intl.RelativeTimeFormat(undefined, { numeric: "auto" }) : null;

/** Parse a server timestamp (ISO 8601 UTC) into a Date, or null. */
export function parseTime(value) {
  if (!value) return null;
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? null : d;
}

/** "14:03:22" today, "12 Sep, 14:03" otherwise. */
export function shortTime(value) {
  const d = parseTime(value);
  if (!d) return "—";
  const now = new Date();
  return d.toDateString() === now.toDateString() ? timeFmt.format(d) : dateTimeFmt.format(d);
}

/** Full local date and time, for tooltips. */
export function fullTime(value) {
  const d = parseTime(value);
  return d ? fullFmt.format(d) : "";
}

/** "just now", "3 min ago", "2 hours ago", "yesterday"… */
export function relativeTime(value, now = Date.now()) {
  const d = parseTime(value);
  if (!d) return "never";
  const seconds = Math.round((d.getTime() - now) / 1000);
  const abs = Math.abs(seconds);
  if (abs < 45) return "just now";
  if (!relFmt) return shortTime(value);
  if (abs < 3600) return relFmt.format(Math.round(seconds / 60), "minute");
  if (abs < 86400) return relFmt.format(Math.round(seconds / 3600), "hour");
  if (abs < 86400 * 30) return relFmt.format(Math.round(seconds / 86400), "day");
  return dateTimeFmt.format(d);
}

/**
 * A `<time>` element showing `mode` ("relative" keeps itself fresh: see refreshRelativeTimes)
 * with the full local time as its tooltip.
 */
export function timeEl(value, mode = "short") {
  if (!value) return h("span", { class: "muted" }, mode === "relative" ? "never" : "—");
  const text = mode === "relative" ? relativeTime(value) : shortTime(value);
  return h("time", { datetime: value, title: fullTime(value), "data-relative": mode === "relative" ? "" : null }, text);
}

/** Update every relative `<time>` under `root` (called on a slow timer). */
export function refreshRelativeTimes(root = document) {
  const now = Date.now();
  for (const el of root.querySelectorAll("time[data-relative]")) {
    const text = relativeTime(el.getAttribute("datetime"), now);
    if (el.textContent !== text) el.textContent = text;
  }
}

/** A date of birth (YYYY-MM-DD) as a local-style date plus age. */
export function formatDob(dob) {
  if (!dob) return "";
  const d = parseTime(`${dob}T00:00:00Z`);
  if (!d) return dob;
  const now = new Date();
  let age = now.getUTCFullYear() - d.getUTCFullYear();
  const m = now.getUTCMonth() - d.getUTCMonth();
  if (m < 0 || (m === 0 && now.getUTCDate() < d.getUTCDate())) age -= 1;
  return `${dateFmt.format(d)} (${age} y)`;
}

export function formatNumber(n) {
  return numberFmt.format(n);
}

/** "1 patient" / "3 patients". */
export function plural(n, one, many = `${one}s`) {
  return `${formatNumber(n)} ${n === 1 ? one : many}`;
}

/** The first 8 characters of an id, for display next to the full id in a tooltip. */
export function shortId(id) {
  return id ? String(id).slice(0, 8) : "";
}

function codeText(code) {
  if (code === null || code === undefined) return "";
  if (typeof code !== "object") return String(code);
  if (code.text) return String(code.text);
  const coding = Array.isArray(code.coding) ? code.coding[0] : null;
  if (coding) return String(coding.display || coding.code || "");
  return "";
}

function primitive(v) {
  return v === null || ["string", "number", "boolean"].includes(typeof v);
}

function clip(text, max = 90) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/**
 * One line about a record's data: its code and value for FHIR-shaped data
 * ("Blood pressure · 120 mmHg"), else its first few simple fields.
 */
export function summarizeData(data) {
  if (!data || typeof data !== "object") return "";
  const parts = [];
  const code = codeText(data.code) || codeText(data.vaccineCode) || codeText(data.medicationCodeableConcept);
  if (code) parts.push(code);
  const q = data.valueQuantity;
  if (q && typeof q === "object" && q.value !== undefined) parts.push(`${q.value}${q.unit ? ` ${q.unit}` : ""}`);
  else if (data.valueString !== undefined) parts.push(String(data.valueString));
  else if (data.valueCodeableConcept) parts.push(codeText(data.valueCodeableConcept));
  else if (primitive(data.value) && data.value !== undefined) parts.push(`${data.value}${data.unit ? ` ${data.unit}` : ""}`);
  const more = ["status", "clinicalStatus", "description", "note"];
  for (const key of more) {
    if (parts.length >= 3) break;
    const v = data[key];
    if (v === undefined || v === null) continue;
    const text = primitive(v) ? String(v) : codeText(v);
    if (text) parts.push(text);
  }
  if (!parts.length) {
    for (const [key, v] of Object.entries(data)) {
      if (parts.length >= 3) break;
      if (primitive(v) && v !== null) parts.push(`${key}: ${v}`);
    }
  }
  if (!parts.length) {
    const keys = Object.keys(data);
    return keys.length ? clip(`fields: ${keys.join(", ")}`) : "no data";
  }
  return clip(parts.join(" · "));
}

/** Identifiers object as "mrn MRN-1 · nhs 123". */
export function identifiersText(identifiers) {
  if (!identifiers || typeof identifiers !== "object") return "";
  return Object.entries(identifiers)
    .filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => `${k} ${typeof v === "object" ? JSON.stringify(v) : v}`)
    .join(" · ");
}

/** Pretty JSON for `<pre>` blocks. */
export function prettyJson(value) {
  return JSON.stringify(value, null, 2);
}

/** A human label for a conflict reason. */
export function reasonLabel(reason) {
  return (
    {
      version_mismatch: "Edited an older version",
      server_newer: "Server copy changed later",
      deleted_on_server: "Deleted on the server",
    }[reason] || String(reason || "conflict").replaceAll("_", " ")
  );
}

/** A status badge element (`kind` picks the colour). */
export function badge(text, kind = "neutral", attrs = {}) {
  return h("span", { class: `badge badge-${kind}`, ...attrs }, text);
}
