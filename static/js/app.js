/**
 * The HealthSync dashboard: boot, hash routing, the connection indicator,
 * token handling, and wiring of websocket messages to the views.
 *
 * Start-up order matters for "nothing missed": the patient list is loaded
 * through the download endpoint, whose last page's cursor is the server's head
 * at that moment; the websocket is opened from that cursor, so every change
 * after the load arrives live, none twice.
 * @module app
 */

import { HealthSyncClient, backoffDelay } from "./healthsync-client.js";
import { $, announce } from "./dom.js";
import { fullTime, refreshRelativeTimes, shortTime } from "./format.js";
import { PatientStore } from "./store.js";
import { createBatchesView } from "./views/batches.js";
import { createConflictsView } from "./views/conflicts.js";
import { createDevicesView } from "./views/devices.js";
import { createFeedView } from "./views/feed.js";
import { createPatientsView } from "./views/patients.js";

const TOKEN_KEY = "healthsync.dashboardToken";
const TITLES = { patients: "Patients", feed: "Live feed", batches: "Sync batches", conflicts: "Conflicts", devices: "Devices" };
const VIEW_NAMES = Object.keys(TITLES);
const CONNECTION_LABEL = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  offline: "Offline",
  closed: "Not connected",
};

function readToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null; // storage blocked: open mode still works
  }
}

function writeToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    /* storage blocked */
  }
}

const client = new HealthSyncClient({ token: readToken });
const store = new PatientStore();

// Connection indicator ----------------------------------------------------------------

const conn = $("#connection");
const connLabel = $("#connection-label");
const connDetail = $("#connection-detail");
const connRetry = /** @type {HTMLButtonElement} */ ($("#connection-retry"));
let connState = "connecting";
let retryAt = null;
let liveSince = null;

function setConnection(state, info = {}) {
  connState = state;
  retryAt = info.retryAt || null;
  if (state === "live") liveSince = new Date().toISOString();
  conn.dataset.state = state;
  if (connLabel.textContent !== CONNECTION_LABEL[state]) connLabel.textContent = CONNECTION_LABEL[state];
  connRetry.hidden = !(state === "reconnecting" || state === "offline");
  drawConnectionDetail();
}

function drawConnectionDetail() {
  let text = "";
  if (connState === "live" && liveSince) {
    text = `since ${shortTime(liveSince)}`;
    conn.title = `Receiving changes live since ${fullTime(liveSince)}`;
  } else if ((connState === "reconnecting" || connState === "offline") && retryAt) {
    const s = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
    text = s ? `next try in ${s} s` : "trying…";
    conn.title = "The page shows what it had; changes made meanwhile appear once the connection is back.";
  } else if (connState === "reconnecting") {
    text = "trying…";
  } else {
    conn.title = "";
  }
  if (connDetail.textContent !== text) connDetail.textContent = text;
}

// Navigation counts -----------------------------------------------------------------------

function setNavCount(view, text, kind = "neutral") {
  const el = document.getElementById(`nav-count-${view}`);
  if (!el) return;
  el.textContent = text;
  el.className = text ? `nav-count nav-count-${kind}` : "nav-count";
}

// Errors and the token panel -------------------------------------------------------------------

const authPanel = $("#auth-panel");
const authReason = $("#auth-reason");
const authForm = /** @type {HTMLFormElement} */ ($("#auth-form"));
const authInput = /** @type {HTMLInputElement} */ ($("#auth-token"));
const forgetBtn = /** @type {HTMLButtonElement} */ ($("#forget-token"));
let authShown = false;

function showAuth(err) {
  const hadToken = Boolean(readToken());
  const said = err && err.message ? ` (the server said: “${err.message}”)` : "";
  authReason.textContent = hadToken
    ? `The token stored in this tab was refused${said}. Enter a valid dashboard token.`
    : `No token is stored in this tab${said}.`;
  if (authShown) return;
  authShown = true;
  stop();
  setConnection("closed");
  for (const section of document.querySelectorAll("main > .view")) section.hidden = true;
  authPanel.hidden = false;
  authInput.focus();
}

authForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const token = authInput.value.trim();
  if (!token) return;
  writeToken(token);
  authInput.value = "";
  authShown = false;
  authPanel.hidden = true;
  forgetBtn.hidden = false;
  start();
});

forgetBtn.hidden = !readToken();
forgetBtn.addEventListener("click", () => {
  writeToken(null);
  forgetBtn.hidden = true;
  announce("Dashboard token forgotten.");
  start();
});

/** A short human message for `err`; shows the token panel for 401/403. */
function handleError(err) {
  if (err && err.unauthorized) {
    showAuth(err);
    return "a dashboard token is needed";
  }
  if (err && err.network) return "the HealthSync server cannot be reached";
  return (err && err.message) || String(err);
}

// Views ----------------------------------------------------------------------------------------

const ctx = { client, store, handleError, setNavCount };
const views = {
  patients: createPatientsView(ctx),
  feed: createFeedView(ctx),
  batches: createBatchesView(ctx),
  conflicts: createConflictsView(ctx),
  devices: createDevicesView(ctx),
};
let current = null;

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [name, ...rest] = raw.split("/");
  if (!VIEW_NAMES.includes(name)) return { name: "patients", param: null };
  const param = rest.length && rest.join("/") ? decodeURIComponent(rest.join("/")) : null;
  return { name, param };
}

function route(moveFocus) {
  if (authShown) return;
  const { name, param } = parseHash();
  const changed = name !== current;
  if (changed && current) views[current].hide();
  for (const section of document.querySelectorAll("main > .view")) {
    section.hidden = section.dataset.view !== name;
  }
  for (const link of document.querySelectorAll(".sidebar a[data-view]")) {
    if (link.dataset.view === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  current = name;
  document.title = `${TITLES[name]} · HealthSync`;
  views[name].show(param);
  if (changed && moveFocus) $(`#${name}-title`).focus();
}

window.addEventListener("hashchange", () => route(true));
$("#skip-link").addEventListener("click", (event) => {
  event.preventDefault();
  $("#main").focus();
});

// Data and the live subscription --------------------------------------------------------------

let sub = null;
let generation = 0;
let bootAttempt = 0;
let bootTimer = null;
let missedSomething = false;

function stop() {
  generation++;
  clearTimeout(bootTimer);
  bootTimer = null;
  if (sub) {
    const s = sub;
    sub = null;
    s.close();
  }
}

/** Run one view's update; a bug in one view must not stop the others or the stream. */
function safely(fn) {
  try {
    fn();
  } catch (err) {
    console.error("HealthSync dashboard:", err);
  }
}

function onChanges(changes) {
  const changedPatients = [];
  for (const c of changes) {
    if (c.resource_type === "Patient" && store.apply(c)) changedPatients.push(c.server_id);
  }
  safely(() => views.patients.onChanges(changes, changedPatients));
  if (changedPatients.length) safely(() => views.conflicts.onPatientsChanged());
  safely(() => views.feed.onChanges(changes));
  safely(() => views.devices.onChanges());
}

function onBatch(event) {
  safely(() => views.feed.onBatch(event));
  safely(() => views.batches.onBatch(event));
  safely(() => views.conflicts.onBatch(event));
  safely(() => views.devices.onBatch(event));
}

/** (Re)load everything and go live.  Safe to call again (new token, resync). */
async function start() {
  stop();
  const gen = generation;
  setConnection("connecting");
  for (const v of Object.values(views)) v.reset();
  route(false); // re-select what the URL names (the reset dropped it)
  views.batches.refresh();
  views.conflicts.refresh();
  views.devices.refresh();
  let cursor;
  try {
    cursor = await store.load(client, (n) => views.patients.progress(n));
  } catch (err) {
    if (gen !== generation) return;
    const message = handleError(err);
    if (authShown) return;
    views.patients.loadFailed(message);
    const delay = backoffDelay(bootAttempt++);
    setConnection(navigator.onLine === false ? "offline" : "reconnecting", { retryAt: Date.now() + delay });
    bootTimer = setTimeout(() => start(), delay);
    return;
  }
  if (gen !== generation) return;
  bootAttempt = 0;
  views.patients.loaded();
  views.conflicts.onPatientsChanged();
  sub = client.subscribe({
    cursor,
    onChanges,
    onBatch,
    onState(state, info) {
      if (gen !== generation) return;
      setConnection(state, info);
      if (state === "reconnecting" || state === "offline") missedSomething = true;
      if (state === "live" && missedSomething) {
        // Changes resume from the cursor; lists that batch events keep fresh are re-read.
        missedSomething = false;
        views.batches.refresh();
        views.conflicts.refresh();
        views.devices.refresh();
        announce("Connection to the server is back. The page is live again.");
      }
    },
    onError(err) {
      if (gen !== generation) return;
      if (err && err.unauthorized) showAuth(err);
      else if (err && err.resync) start(); // the database was restored: load again from scratch
      else console.warn("HealthSync live updates:", err && err.message ? err.message : err);
    },
  });
}

connRetry.addEventListener("click", () => {
  if (sub) sub.reconnectNow();
  else start();
});

document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible" && sub && (sub.state === "reconnecting" || sub.state === "offline")) {
    sub.reconnectNow();
  }
});

setInterval(() => {
  if (retryAt) drawConnectionDetail();
}, 1000);
setInterval(() => refreshRelativeTimes(), 30000);

// For people poking at the page from the console (and for tests).
Object.defineProperty(window, "healthsync", {
  value: Object.freeze({
    client,
    store,
    get subscription() {
      return sub;
    },
  }),
});

start();
