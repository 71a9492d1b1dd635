/**
 * The dashboard's live copy of the patient list.
 *
 * It is loaded with the download endpoint (`resource_type=Patient`, from
 * cursor 0, page by page), which also gives the cursor of the server's head at
 * that moment; the websocket is then opened from that cursor, so no change
 * falls between the initial load and the live stream.  Entries are applied by
 * `server_version`, so an older copy never overwrites a newer one.
 * @module store
 */

const collator = new Intl.Collator(undefined, { sensitivity: "base", numeric: true });

/**
 * @typedef {object} Patient
 * @property {string} id
 * @property {string} name
 * @property {string|null} dob
 * @property {Record<string, any>} identifiers
 * @property {number} version
 * @property {string} updatedAt
 * @property {boolean} deleted
 * @property {string} search  lower-case name and identifier values
 */

/** Normalise a download/websocket Patient entry. @returns {Patient} */
export function patientFromChange(change) {
  const data = change.data || {};
  const identifiers = data.identifiers && typeof data.identifiers === "object" ? data.identifiers : {};
  const name = typeof data.name === "string" ? data.name : "";
  const idValues = Object.values(identifiers).map((v) => (typeof v === "object" ? JSON.stringify(v) : String(v)));
  return {
    id: change.server_id,
    name,
    dob: data.dob || null,
    identifiers,
    version: change.server_version,
    updatedAt: change.updated_at,
    deleted: Boolean(change.deleted),
    search: [name, ...idValues].join("\u0000").toLowerCase(),
  };
}

/** Normalise a record from `/api/records/` or a download/websocket entry. */
export function recordFrom(item) {
  return {
    id: item.id || item.server_id,
    patient: item.patient,
    resourceType: item.resource_type,
    data: item.data || {},
    version: item.server_version,
    updatedAt: item.updated_at,
    deleted: Boolean(item.deleted),
  };
}

/** "new" | "updated" | "deleted" for a change entry. */
export function changeKind(change) {
  if (change.deleted) return "deleted";
  return change.server_version === 1 ? "new" : "updated";
}

export class PatientStore {
  constructor() {
    /** @type {Map<string, Patient>} every patient seen, tombstones included */
    this.byId = new Map();
    this._sorted = null;
    this.loaded = false;
  }

  clear() {
    this.byId.clear();
    this._sorted = null;
    this.loaded = false;
  }

  /**
   * Load every patient; resolves to the cursor to subscribe from.
   * @param {import("./healthsync-client.js").HealthSyncClient} client
   * @param {(count: number) => void} [onProgress]
   */
  async load(client, onProgress) {
    this.clear();
    let count = 0;
    const { cursor } = await client.downloadAll(
      { cursor: "0", resourceType: "Patient", deviceId: null },
      {
        onPage: (page) => {
          for (const c of page.changes) this.apply(c);
          count += page.changes.length;
          if (onProgress) onProgress(count);
        },
      },
    );
    this.loaded = true;
    return cursor;
  }

  /**
   * Apply one Patient entry. Returns true when it changed the store.
   * @param {object} change a download/websocket entry with resource_type "Patient"
   */
  apply(change) {
    const next = patientFromChange(change);
    const prev = this.byId.get(next.id);
    if (prev && prev.version >= next.version) return false;
    this.byId.set(next.id, next);
    this._sorted = null;
    return true;
  }

  get(id) {
    return this.byId.get(id) || null;
  }

  /** The patient's display name, or null when unknown. */
  nameOf(id) {
    const p = this.byId.get(id);
    return p && p.name ? p.name : null;
  }

  /** Live (not deleted) patients sorted by name. */
  sorted() {
    if (!this._sorted) {
      this._sorted = [...this.byId.values()]
        .filter((p) => !p.deleted)
        .sort((a, b) => collator.compare(a.name, b.name) || (a.id < b.id ? -1 : 1));
    }
    return this._sorted;
  }

  /** Live patients whose name or an identifier value contains every word of `query`. */
  search(query) {
    const all = this.sorted();
    const words = String(query || "").toLowerCase().split(/\s+/).filter(Boolean);
    if (!words.length) return all;
    return all.filter((p) => words.every((w) => p.search.includes(w)));
  }

  get count() {
    return this.sorted().length;
  }
}
