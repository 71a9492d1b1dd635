/**
 * HealthSync sync client: a small, dependency-free ES module for browsers (and
 * any runtime with `fetch` and `WebSocket`).  A tablet web app can import it as
 * is; the HealthSync dashboard is built on it.
 *
 * ```js
 * import { HealthSyncClient } from "/static/js/healthsync-client.js";
 *
 * const client = new HealthSyncClient({ deviceId: "tablet-7" });
 * const { changes, cursor } = await client.downloadAll({ cursor: "0" });
 * const sub = client.subscribe({
 *   cursor,
 *   onChanges: (changes, { cursor }) => { apply(changes); saveCursor(cursor); },
 *   onState: (state) => console.log(state), // connecting | live | reconnecting | offline | closed
 * });
 * await client.upload([{ operation: "create", resource_type: "Patient",
 *                        client_temp_id: "p1", payload: { name: "Ana Silva" } }]);
 * sub.close();
 * ```
 *
 * Guarantees it relies on (see the server's README): download pages and the
 * websocket never skip or repeat a change when you resume from the last
 * `cursor` you received; an upload retried with the same `batch_id` returns
 * the stored response and applies nothing twice.
 *
 * Token mode: give `token` (a string, or a function returning one) and every
 * request carries `Authorization: Bearer <token>`; the websocket, which
 * browsers cannot give headers, carries it as the `token` query parameter.
 *
 * Node: Node 22 has a global `WebSocket` (Node 20 with `--experimental-websocket`),
 * or pass one, e.g. `new HealthSyncClient({ baseUrl, WebSocket: (await import("ws")).WebSocket })`.
 * A subscription recovers on any of them: a failed attempt that reports only
 * `error` (Node's built-in WebSocket never follows it with `close`) ends that
 * attempt, and an attempt that neither opens nor fails within `connectTimeout`
 * is abandoned and retried.
 *
 * Compression: downloads and lists are asked for with the runtime's own
 * `Accept-Encoding` (browsers and Node's fetch send `gzip` and inflate the
 * answer themselves).  Upload bodies of `compressThreshold` bytes or more are
 * sent gzipped (`Content-Encoding: gzip`, via `CompressionStream`) where the
 * runtime has it; a server that refuses that (415, or 400 where the same batch
 * sent plain is accepted) gets the body plain, and this client sends it plain
 * from then on.
 *
 * @module healthsync-client
 */

/** Websocket connection states reported through `onState`. */
export const STATES = Object.freeze(["connecting", "live", "reconnecting", "offline", "closed"]);

/**
 * An error from the server (an HTTP status with HealthSync's JSON error body)
 * or from the network (`status` 0, `network` true).
 */
export class HealthSyncError extends Error {
  /**
   * @param {string} message
   * @param {{status?: number, body?: any, cause?: unknown, url?: string}} [info]
   */
  constructor(message, { status = 0, body = null, cause = undefined, url = "" } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "HealthSyncError";
    /** HTTP status; 0 when the server could not be reached. */
    this.status = status;
    /** The parsed JSON error body (`{error, details}`), when there was one. */
    this.body = body;
    this.url = url;
  }

  /** True when the server could not be reached at all. */
  get network() {
    return this.status === 0;
  }

  /** True for 401/403: a (valid) token is needed. */
  get unauthorized() {
    return this.status === 401 || this.status === 403;
  }

  /** True when the server says the cursor is ahead of its history (410): download again from scratch. */
  get resync() {
    return this.status === 410 && Boolean(this.body && this.body.resync);
  }

  /** Worth retrying unchanged: the network, 429 and 502/503/504. */
  get retryable() {
    return this.status === 0 || this.status === 429 || this.status === 502 || this.status === 503 || this.status === 504;
  }
}

/** A random UUID v4, also where `crypto.randomUUID` is missing (plain http on a LAN is not a secure context). */
export function uuid4() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === "function") {
    try {
      return c.randomUUID();
    } catch {
      /* fall through: not a secure context */
    }
  }
  const b = new Uint8Array(16);
  if (c && typeof c.getRandomValues === "function") c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/**
 * The delay before reconnect attempt `attempt` (0-based): `initial` doubled
 * per attempt, capped at `max`, then spread by ±25% jitter so that many
 * tablets do not all come back in the same instant.
 * @param {number} attempt
 * @param {{initial?: number, max?: number, random?: () => number}} [opts]
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, { initial = 1000, max = 30000, random = Math.random } = {}) {
  const base = Math.min(max, initial * 2 ** Math.min(attempt, 30));
  return Math.round(Math.min(max, base * (0.75 + random() * 0.5)));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** `text` gzipped (UTF-8), with the runtime's `CompressionStream`. */
async function gzip(text) {
  const stream = new Blob([text]).stream().pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/**
 * @typedef {object} Change
 * An entry exactly as download and the websocket give it.
 * @property {string} server_id
 * @property {string} resource_type  "Patient" or a FHIR record type
 * @property {string} [patient]      a record's patient id
 * @property {object} data           the record's data (a patient's fields for a patient)
 * @property {number} server_version
 * @property {string} updated_at
 * @property {boolean} deleted
 */

/**
 * @typedef {object} DownloadPage
 * @property {Change[]} changes
 * @property {string} cursor      resume point: pass it back as `cursor`
 * @property {string} server_time
 * @property {boolean} has_more
 */

/**
 * @typedef {object} Position
 * Where a download or subscription starts: `cursor` (preferred) or `since` (ISO 8601 time).
 * @property {string|number} [cursor]
 * @property {string} [since]
 * @property {number} [limit]
 * @property {string} [resourceType]  "Patient" or a FHIR record type
 * @property {string} [patient]       a patient id: its own entry and its records
 */

/** A client for one HealthSync server. */
export class HealthSyncClient {
  /**
   * @param {object} [options]
   * @param {string} [options.baseUrl=""]  server root, e.g. "http://clinic-box:8000"; "" = this page's origin
   * @param {string|null|(() => string|null)} [options.token=null]  bearer token, or a function returning the current one
   * @param {string|null} [options.deviceId=null]  this device's id: sent with uploads, downloads and the websocket
   * @param {typeof fetch} [options.fetch]  a fetch implementation (tests, wrappers)
   * @param {typeof WebSocket} [options.WebSocket]  a WebSocket implementation
   * @param {number} [options.retries=4]  retries of a retryable upload/request failure
   * @param {"auto"|boolean} [options.compress="auto"]  gzip upload bodies of `compressThreshold` bytes or more
   *   where `CompressionStream` exists, falling back to plain if the server refuses.  "auto": except from a
   *   browser page to another origin (its preflight needs the server to allow `Content-Encoding`); true: there
   *   too; false: never
   * @param {number} [options.compressThreshold=16384]  the shortest upload body (length of its JSON) worth gzipping
   */
  constructor({
    baseUrl = "",
    token = null,
    deviceId = null,
    fetch = globalThis.fetch,
    WebSocket = globalThis.WebSocket,
    retries = 4,
    compress = "auto",
    compressThreshold = 16384,
  } = {}) {
    if (typeof fetch !== "function") throw new TypeError("HealthSyncClient needs a fetch implementation");
    this.baseUrl = String(baseUrl || "").replace(/\/+$/, "");
    this.token = token;
    this.deviceId = deviceId;
    this.retries = retries;
    // Called unbound: window.fetch invoked as a method of another object throws "Illegal invocation".
    this._fetch = (input, init) => fetch(input, init);
    this._WebSocket = WebSocket;
    this.compress = compress;
    this.compressThreshold = compressThreshold;
    /** Whether upload bodies may be gzipped: false once the server refused a gzipped body. */
    this.gzipUploads = compress !== false && typeof globalThis.CompressionStream === "function";
  }

  /** The current token (resolving a token function), or null. */
  currentToken() {
    const t = typeof this.token === "function" ? this.token() : this.token;
    return t ? String(t) : null;
  }

  /**
   * An absolute URL for `path` with the non-empty `params`.
   * @param {string} path
   * @param {Record<string, unknown>} [params]
   * @returns {URL}
   */
  url(path, params = {}) {
    const root = this.baseUrl || (globalThis.location ? globalThis.location.origin : "");
    if (!root) throw new TypeError("HealthSyncClient: baseUrl is required outside a browser page");
    const url = new URL(root + path);
    for (const [key, value] of Object.entries(params)) {
      if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, String(value));
    }
    return url;
  }

  /**
   * One HTTP request; resolves to the parsed JSON body (null for an empty body).
   * @param {string} method
   * @param {string} path
   * @param {{params?: Record<string, unknown>, body?: unknown, headers?: Record<string,string>, signal?: AbortSignal,
   *          compress?: boolean}} [opts]  `compress`: gzip a large body (see the constructor's `compress`)
   * @returns {Promise<any>}
   * @throws {HealthSyncError}
   */
  async request(method, path, { params, body, headers = {}, signal, compress = false } = {}) {
    if (body === undefined) return this._send(method, path, { params, headers, signal });
    const json = JSON.stringify(body);
    const gzipped = compress && this._gzipTo(path) && json.length >= this.compressThreshold ? await gzip(json) : null;
    if (!gzipped) return this._send(method, path, { params, headers, signal, json });
    try {
      return await this._send(method, path, { params, headers, signal, json: gzipped, encoding: "gzip" });
    } catch (err) {
      // 415: the server (or a proxy) does not take gzipped bodies; 400: it may have read the gzip as JSON.
      if (!(err instanceof HealthSyncError) || (err.status !== 415 && err.status !== 400)) throw err;
      const answer = await this._send(method, path, { params, headers, signal, json });
      this.gzipUploads = false; // the plain body was accepted: it was the gzip that was refused
      return answer;
    }
  }

  /** Whether a body to `path` may go gzipped (see the constructor's `compress`). */
  _gzipTo(path) {
    if (!this.gzipUploads) return false;
    if (this.compress === true || !globalThis.location || !globalThis.document) return true;
    return this.url(path).origin === globalThis.location.origin; // cross-origin: a CORS preflight would need it allowed
  }

  /** One HTTP request with an already serialised body (`json`, a string or gzipped bytes). */
  async _send(method, path, { params, headers = {}, signal, json, encoding } = {}) {
    const url = this.url(path, params);
    const hdrs = { Accept: "application/json", ...headers };
    const token = this.currentToken();
    if (token) hdrs.Authorization = `Bearer ${token}`;
    const init = { method, headers: hdrs, signal, cache: "no-store" };
    if (json !== undefined) {
      hdrs["Content-Type"] = "application/json";
      if (encoding) hdrs["Content-Encoding"] = encoding;
      init.body = json;
    }
    let resp;
    try {
      resp = await this._fetch(url.href, init);
    } catch (cause) {
      if (cause && cause.name === "AbortError") throw cause;
      throw new HealthSyncError(`cannot reach the server (${method} ${url.pathname})`, { cause, url: url.href });
    }
    const text = await resp.text().catch(() => "");
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = text;
      }
    }
    if (!resp.ok) {
      const message = (data && typeof data === "object" && data.error) || `${resp.status} ${resp.statusText}`;
      const err = new HealthSyncError(String(message), { status: resp.status, body: data, url: url.href });
      err.retryAfter = Number(resp.headers.get("Retry-After")) || 0;
      throw err;
    }
    return data;
  }

  // Download -------------------------------------------------------------------

  /**
   * One page of changes after `cursor` (or `since`), oldest first.
   * @param {Position & {deviceId?: string|null, signal?: AbortSignal}} [position]  `deviceId: null` leaves this device's download record alone
   * @returns {Promise<DownloadPage>}
   */
  download({ cursor, since, limit, resourceType, patient, deviceId = this.deviceId, signal } = {}) {
    const hasCursor = cursor !== undefined && cursor !== null && cursor !== "";
    if (!hasCursor && !since) throw new TypeError("download needs a cursor (\"0\" for everything) or since");
    return this.request("GET", "/api/sync/download/", {
      params: {
        cursor: hasCursor ? cursor : undefined,
        since: hasCursor ? undefined : since,
        limit,
        resource_type: resourceType,
        patient,
        device_id: deviceId,
      },
      signal,
    });
  }

  /**
   * Every page from `cursor` (or `since`), following `cursor` while `has_more`.
   * @param {Position} [position]
   * @returns {AsyncGenerator<DownloadPage>}
   */
  async *pages(position = {}) {
    let pos = { ...position };
    for (;;) {
      const page = await this.download(pos);
      yield page;
      if (!page.has_more) return;
      pos = { ...pos, since: undefined, cursor: page.cursor };
    }
  }

  /**
   * All changes from `cursor` (or `since`) up to the server's head, in one array.
   * @param {Position} [position]
   * @param {{onPage?: (page: DownloadPage) => void}} [opts]
   * @returns {Promise<{changes: Change[], cursor: string, server_time: string}>}
   */
  async downloadAll(position = {}, { onPage } = {}) {
    const changes = [];
    let last = null;
    for await (const page of this.pages(position)) {
      for (const c of page.changes) changes.push(c);
      if (onPage) onPage(page);
      last = page;
    }
    return { changes, cursor: last.cursor, server_time: last.server_time };
  }

  // Upload ---------------------------------------------------------------------

  /**
   * Upload a batch of changes.  The batch id is made once and reused for every
   * retry (network errors, 429, 502–504), so the server applies the batch at
   * most once and a retry gets the stored response.  Keep `batchId` yourself
   * and call again with it if your app restarts mid-upload.
   * @param {object[]} changes  `{operation, resource_type, client_temp_id | server_id, payload, base_version?, client_updated_at?}`
   * @param {{batchId?: string, async?: boolean, deviceId?: string, retries?: number}} [opts]
   * @returns {Promise<any>} the server's response: `{batch_id, results, conflicts, server_time, cursor}` (202 `{batch_id, status}` when async)
   */
  async upload(changes, { batchId = uuid4(), async: isAsync = false, deviceId = this.deviceId, retries = this.retries } = {}) {
    if (!deviceId) throw new TypeError("upload needs a deviceId (in the constructor or the options)");
    if (!Array.isArray(changes)) throw new TypeError("changes must be an array");
    const body = { device_id: deviceId, batch_id: batchId, changes, async: Boolean(isAsync) };
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.request("POST", "/api/sync/upload/", { body, compress: true });
      } catch (err) {
        if (!(err instanceof HealthSyncError) || !err.retryable || attempt >= retries) throw err;
        const wait = err.retryAfter ? err.retryAfter * 1000 : backoffDelay(attempt, { initial: 500, max: 8000 });
        await sleep(wait);
      }
    }
  }

  /** Apply a stored (async) batch: 202 `{status: "task started", task_id}`. */
  trigger(batchId) {
    return this.request("POST", `/api/sync/trigger/${encodeURIComponent(batchId)}/`);
  }

  // Lists used by dashboards ------------------------------------------------------

  /** Patients (all unless `limit`). */
  listPatients({ limit, includeDeleted } = {}) {
    return this.request("GET", "/api/patients/", { params: { limit, include_deleted: includeDeleted ? "true" : undefined } });
  }

  /** Records, optionally of one patient and/or one FHIR type. */
  listRecords({ patient, resourceType, limit } = {}) {
    return this.request("GET", "/api/records/", { params: { patient, resource_type: resourceType, limit } });
  }

  /** Sync batches, newest first. */
  listBatches({ deviceId, status, limit } = {}) {
    return this.request("GET", "/api/sync/batches/", { params: { device_id: deviceId, status, limit } });
  }

  /** One batch with, once done, its results. */
  getBatch(batchId) {
    return this.request("GET", `/api/sync/batches/${encodeURIComponent(batchId)}/`);
  }

  /** Recorded conflicts; `resolved: false` for the open ones. */
  listConflicts({ resolved, deviceId, limit } = {}) {
    return this.request("GET", "/api/conflicts/", {
      params: { resolved: resolved === undefined ? undefined : String(Boolean(resolved)), device_id: deviceId, limit },
    });
  }

  /** Mark a conflict resolved, with a short note of what was decided. */
  resolveConflict(conflictId, resolution) {
    const body = { resolved: true };
    if (resolution) body.resolution = String(resolution);
    return this.request("PATCH", `/api/conflicts/${encodeURIComponent(conflictId)}/`, { body });
  }

  /** Every device seen: last upload/download, `behind`, pending and failed batches. */
  listDevices() {
    return this.request("GET", "/api/devices/");
  }

  /** The server's health report. */
  health() {
    return this.request("GET", "/api/health");
  }

  // Live push ------------------------------------------------------------------------

  /**
   * Follow changes live over `/api/sync/ws`, reconnecting with backoff
   * (1 s, 2 s, 4 s … capped at 30 s, with jitter) and resuming from the last
   * cursor received, so nothing is missed or repeated.  An attempt ends at its
   * socket's `error` or `close`, whichever comes first (Node's built-in
   * WebSocket reports a refused connection with `error` alone), or after
   * `connectTimeout` ms (default 10 s) without opening.  A refused handshake
   * is explained by asking the server over HTTP: 401/403/400/410 go to
   * `onError` and end the subscription; anything else is retried.
   *
   * `onChanges` may return a promise: messages are handled one at a time, and
   * the cursor advances only once the handler has finished.  If it throws (or
   * rejects), the error goes to `onError` and the subscription reconnects from
   * the last cursor it completed, so the changes come again.
   *
   * @param {Position & {
   *   onChanges?: (changes: Change[], info: {cursor: string, server_time: string}) => (void|Promise<void>),
   *   onBatch?: (event: {batch_id: string, status: string, device_id?: string}) => void,
   *   onState?: (state: string, info: {attempt: number, retryAt: number|null}) => void,
   *   onHello?: (hello: {cursor?: string, since?: string, head: string, server_time: string}) => void,
   *   onError?: (error: Error) => void,
   *   pingInterval?: number, pongTimeout?: number, connectTimeout?: number,
   *   backoff?: {initial?: number, max?: number},
   * }} options  needs `cursor` or `since`
   * @returns {Subscription}
   */
  subscribe(options = {}) {
    return new Subscription(this, options);
  }
}

/**
 * A live subscription made by {@link HealthSyncClient#subscribe}.
 * `state`, `cursor` and `attempt` can be read at any time.
 */
export class Subscription {
  /** @param {HealthSyncClient} client @param {object} options */
  constructor(client, options) {
    const { cursor, since } = options;
    const hasCursor = cursor !== undefined && cursor !== null && cursor !== "";
    if (!hasCursor && !since) throw new TypeError("subscribe needs a cursor (\"0\" for everything) or since");
    if (typeof client._WebSocket !== "function") throw new TypeError("subscribe needs a WebSocket implementation");
    this.client = client;
    this.options = options;
    /** Last cursor fully handled; the resume point. */
    this.cursor = hasCursor ? String(cursor) : null;
    this.since = hasCursor ? null : since;
    /** @type {string} one of STATES */
    this.state = null;
    /** Failed attempts since the last successful connection. */
    this.attempt = 0;
    /** When the next reconnect attempt is due (ms since epoch), or null. */
    this.retryAt = null;
    this._ws = null;
    this._gen = 0;
    /** Messages are handled in order on this chain. */
    this._queue = Promise.resolve();
    this._retryTimer = null;
    this._pingTimer = null;
    this._pongTimer = null;
    this._connectTimer = null;
    this._closed = false;
    this._onOnline = () => {
      if (this.state === "offline" || this.state === "reconnecting") this.reconnectNow();
    };
    this._onOffline = () => {
      if (this.state !== "live" && this.state !== "closed") this._setState("offline");
    };
    if (typeof globalThis.addEventListener === "function") {
      globalThis.addEventListener("online", this._onOnline);
      globalThis.addEventListener("offline", this._onOffline);
    }
    this._connect(true);
  }

  /** Stop for good: closes the socket, no more callbacks except `onState("closed")`. */
  close() {
    if (this._closed) return;
    this._closed = true;
    this._clearTimers();
    if (typeof globalThis.removeEventListener === "function") {
      globalThis.removeEventListener("online", this._onOnline);
      globalThis.removeEventListener("offline", this._onOffline);
    }
    const ws = this._ws;
    this._ws = null;
    this._gen++;
    if (ws) {
      try {
        ws.close(1000, "closed by client");
      } catch {
        /* already closing */
      }
    }
    this._setState("closed");
  }

  /** Skip the backoff wait and try to connect now (e.g. a "Retry now" button). */
  reconnectNow() {
    if (this._closed || this.state === "live" || this.state === "connecting") return;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._connect();
  }

  // internals -------------------------------------------------------------------

  _setState(state) {
    if (this.state === state && state !== "reconnecting") return;
    this.state = state;
    this._call("onState", state, { attempt: this.attempt, retryAt: this.retryAt });
  }

  _call(name, ...args) {
    const fn = this.options[name];
    if (typeof fn !== "function") return undefined;
    try {
      return fn(...args);
    } catch (err) {
      if (name !== "onError") this._call("onError", err);
      return undefined;
    }
  }

  /** The handshake's query: where to resume, what to follow, and (token mode) the token. */
  _wsParams() {
    const o = this.options;
    return {
      cursor: this.cursor ?? undefined,
      since: this.cursor === null ? this.since : undefined,
      resource_type: o.resourceType,
      patient: o.patient,
      device_id: this.client.deviceId,
      token: this.client.currentToken(),
    };
  }

  _wsUrl() {
    const url = this.client.url("/api/sync/ws", this._wsParams());
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return url.href;
  }

  _connect(first = false) {
    if (this._closed) return;
    this.retryAt = null;
    this._setState(first ? "connecting" : "reconnecting");
    const gen = ++this._gen;
    const previous = this._ws;
    this._ws = null;
    if (previous) {
      try {
        previous.close(4000, "reconnecting");
      } catch {
        /* ignore */
      }
    }
    // Open only once the previous socket's messages are handled, so the URL has their cursor.
    this._queue.finally(() => {
      if (gen === this._gen && !this._closed) this._open(gen);
    });
  }

  _open(gen) {
    let ws;
    try {
      ws = new this.client._WebSocket(this._wsUrl());
    } catch (err) {
      this._call("onError", err);
      this._scheduleReconnect(false);
      return;
    }
    this._ws = ws;
    let helloSeen = false;
    ws.onmessage = (event) => {
      if (gen !== this._gen) return;
      this._armPing(ws, gen);
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        this._call("onError", new HealthSyncError("unreadable websocket message", { status: 0 }));
        return;
      }
      if (msg && msg.type === "hello") helloSeen = true;
      // One message at a time, in order, even if onChanges is async.
      this._queue = this._queue.then(() => this._handle(msg, gen)).catch((err) => {
        if (gen !== this._gen) return;
        this._call("onError", err);
        this._drop(ws, gen, true);
      });
    };
    ws.onopen = () => {
      if (gen !== this._gen) return;
      clearTimeout(this._connectTimer);
      this._connectTimer = null;
      this._armPing(ws, gen);
    };
    // The attempt ends at `error` or `close`, whichever comes first (the other is then ignored):
    // browsers and `ws` follow an error with close, Node's built-in WebSocket may not.
    ws.onerror = () => {
      if (gen === this._gen) this._drop(ws, gen, helloSeen);
    };
    ws.onclose = () => {
      if (gen === this._gen) this._drop(ws, gen, helloSeen);
    };
    // An attempt that neither opens nor fails (a black-holed network) is abandoned and retried.
    const timeout = this.options.connectTimeout ?? 10000;
    clearTimeout(this._connectTimer);
    this._connectTimer = timeout
      ? setTimeout(() => {
          this._connectTimer = null;
          if (gen === this._gen && ws.readyState === 0) this._drop(ws, gen, false);
        }, timeout)
      : null;
  }

  async _handle(msg, gen) {
    if (gen !== this._gen || !msg || typeof msg !== "object") return;
    switch (msg.type) {
      case "hello":
        this.attempt = 0;
        this._setState("live");
        this._call("onHello", msg);
        break;
      case "changes": {
        const fn = this.options.onChanges;
        if (typeof fn === "function") await fn(msg.changes || [], { cursor: msg.cursor, server_time: msg.server_time });
        // Handled: advance, even if the socket dropped meanwhile (the reconnect waits for this).
        if (msg.cursor !== undefined && msg.cursor !== null) this.cursor = String(msg.cursor);
        break;
      }
      case "batch":
        this._call("onBatch", msg);
        break;
      case "error":
        this._call("onError", new HealthSyncError(String(msg.error || "websocket error"), { status: 0, body: msg }));
        break;
      case "pong":
      default:
        break;
    }
  }

  /** Forget `ws` (closing it) and schedule the next attempt. */
  _drop(ws, gen, wasLive) {
    if (gen !== this._gen || this._closed) return;
    this._gen++;
    this._ws = null;
    this._clearTimers();
    try {
      if (ws.readyState === 0 || ws.readyState === 1) ws.close(4000, "reconnecting");
    } catch {
      /* ignore */
    }
    this._scheduleReconnect(wasLive);
  }

  async _scheduleReconnect(wasLive) {
    if (this._closed) return;
    const gen = this._gen;
    if (!wasLive) {
      // The handshake failed: ask the server why over HTTP, since browsers hide the status.
      const fatal = await this._probe();
      if (this._closed || gen !== this._gen) return; // closed, or reconnectNow() went ahead meanwhile
      if (fatal) {
        this._call("onError", fatal);
        this.close();
        return;
      }
    }
    const delay = backoffDelay(this.attempt, this.options.backoff);
    this.attempt += 1;
    this.retryAt = Date.now() + delay;
    const offline = globalThis.navigator && globalThis.navigator.onLine === false;
    this._setState(offline ? "offline" : "reconnecting");
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      this._connect();
    }, delay);
  }

  /** A fatal reason the handshake fails (401/403/400/410), or null when it is worth retrying. */
  async _probe() {
    // A browser page asks the download endpoint (it answers cross-origin requests; the handshake's
    // status is hidden from pages).  Elsewhere (Node, …) an HTTP GET of the handshake URL itself
    // gets the server's exact JSON refusal: Node's WebSocket reports a refused handshake as a bare error.
    // As long as a connection attempt at most: a probe into a black hole must not stall the retries.
    const ms = this.options.connectTimeout ?? 10000;
    const timed = ms && globalThis.AbortSignal && typeof globalThis.AbortSignal.timeout === "function";
    const signal = timed ? globalThis.AbortSignal.timeout(ms) : undefined;
    return typeof globalThis.document === "undefined" ? this._probeHandshake(signal) : this._probeDownload(signal);
  }

  async _probeHandshake(signal) {
    try {
      await this.client.request("GET", "/api/sync/ws", { params: this._wsParams(), signal });
      return null;
    } catch (err) {
      if (!(err instanceof HealthSyncError) || err.retryable || err.status < 400 || err.status >= 500) return null;
      // Past every check, a GET without `Upgrade` is refused by the websocket layer itself (400 or 426):
      // the handshake would have been accepted, so the failure was transient.
      const message = err.body && typeof err.body === "object" ? String(err.body.error || "") : "";
      if (err.status === 426 || /upgrade/i.test(message)) return null;
      return err;
    }
  }

  async _probeDownload(signal) {
    const o = this.options;
    try {
      await this.client.download({
        cursor: this.cursor ?? undefined,
        since: this.cursor === null ? this.since : undefined,
        limit: 1,
        resourceType: o.resourceType,
        patient: o.patient,
        deviceId: null, // a probe is not a download by this device
        signal,
      });
      return null;
    } catch (err) {
      if (err instanceof HealthSyncError && !err.retryable && err.status >= 400 && err.status < 500) return err;
      return null;
    }
  }

  _armPing(ws, gen) {
    const interval = this.options.pingInterval ?? 25000;
    const timeout = this.options.pongTimeout ?? 10000;
    clearTimeout(this._pingTimer);
    clearTimeout(this._pongTimer);
    this._pongTimer = null;
    if (!interval) return;
    this._pingTimer = setTimeout(() => {
      if (gen !== this._gen) return;
      try {
        ws.send('{"type":"ping"}');
      } catch {
        /* closing */
      }
      this._pongTimer = setTimeout(() => this._drop(ws, gen, true), timeout);
    }, interval);
  }

  _clearTimers() {
    clearTimeout(this._retryTimer);
    clearTimeout(this._pingTimer);
    clearTimeout(this._pongTimer);
    clearTimeout(this._connectTimer);
    this._retryTimer = this._pingTimer = this._pongTimer = this._connectTimer = null;
  }
}

export default HealthSyncClient;
