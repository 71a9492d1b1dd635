/**
 * Tiny DOM helpers.  Text from the server (names, payloads, errors) only ever
 * goes into text nodes and attributes, never through innerHTML.
 * @module dom
 */

/**
 * Create an element: `h("li", {class: "row", dataset: {id}}, "text", child)`.
 * Attribute values of `false`/`null`/`undefined` are skipped; `on*` functions become listeners.
 * @param {string} tag
 * @param {Record<string, any>|null} [attrs]
 * @param {...any} children  strings, numbers, nodes, arrays of them, or null
 * @returns {HTMLElement}
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [key, value] of Object.entries(attrs)) {
      if (value === false || value === null || value === undefined) continue;
      if (key === "class") el.className = value;
      else if (key === "dataset") Object.assign(el.dataset, value);
      else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
      else if (key === "text") el.textContent = value;
      else el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

/** Set `el`'s text only when it changes (live regions re-announce on every write). */
export function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

/** Replace all children of `el`. */
export function replaceChildren(el, ...children) {
  el.textContent = "";
  append(el, children);
}

/** `document.querySelector` that throws a clear error when the markup is missing a piece. */
export function $(selector, root = document) {
  const el = root.querySelector(selector);
  if (!el) throw new Error(`dashboard markup is missing ${selector}`);
  return el;
}

/** Run `fn` at most once per animation frame (coalesces bursts of live updates). */
export function frameThrottle(fn) {
  let scheduled = false;
  return () => {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => {
      scheduled = false;
      fn();
    });
  };
}

/** Debounce: `fn` runs `ms` after the last call. */
export function debounce(fn, ms) {
  let timer = null;
  const run = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
  run.cancel = () => clearTimeout(timer);
  return run;
}

/** A polite screen-reader announcement through the page's one announcer region. */
export function announce(message) {
  const el = document.getElementById("announcer");
  if (!el) return;
  el.textContent = "";
  // A fresh text node in a new task so repeated messages are announced again.
  setTimeout(() => {
    el.textContent = message;
  }, 50);
}
