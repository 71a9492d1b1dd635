// HealthSync API reference: renders /api/schema/ (OpenAPI 3.1) with plain DOM, nothing external.

const METHODS = ["get", "post", "put", "patch", "delete"];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// A tiny, safe subset of Markdown: paragraphs, **bold**, *italic* and `code`
// (bold and italic may hold code; text nodes only, never innerHTML).
function inline(text) {
  const out = [];
  const re = /(\*\*[^*]+\*\*|\*[^*\s][^*]*\*|`[^`]+`)/g;
  let last = 0;
  for (const m of text.matchAll(re)) {
    if (m.index > last) out.push(text.slice(last, m.index));
    const tok = m[0];
    if (tok.startsWith("**")) out.push(el("strong", {}, inline(tok.slice(2, -2))));
    else if (tok.startsWith("*")) out.push(el("em", {}, inline(tok.slice(1, -1))));
    else out.push(el("code", {}, tok.slice(1, -1)));
    last = m.index + tok.length;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

function markdown(text) {
  if (!text) return [];
  return text.split(/\n\s*\n/).map((para) => el("p", {}, inline(para.replace(/\n/g, " "))));
}

function refName(ref) {
  return ref.split("/").pop();
}

function anchor(name) {
  return "schema-" + name;
}

// A readable one-line type for a schema, with links for $refs.
function typeOf(schema) {
  if (!schema || Object.keys(schema).length === 0) return ["any"];
  if (schema.$ref) {
    const name = refName(schema.$ref);
    return [el("a", { class: "schema-name", href: "#" + anchor(name) }, name)];
  }
  for (const key of ["anyOf", "oneOf"]) {
    if (schema[key]) {
      const parts = [];
      schema[key].forEach((sub, i) => {
        if (i) parts.push(" | ");
        parts.push(...typeOf(sub));
      });
      return parts;
    }
  }
  if (schema.const !== undefined) return [el("code", {}, JSON.stringify(schema.const))];
  if (schema.enum) {
    const shown = schema.enum.slice(0, 8).map((v) => JSON.stringify(v)).join(" | ");
    return [el("code", {}, shown + (schema.enum.length > 8 ? ` | … (${schema.enum.length} values)` : ""))];
  }
  if (schema.type === "array") return ["array of ", ...typeOf(schema.items)];
  let text = schema.type || "any";
  if (schema.format) text += ` (${schema.format})`;
  const limits = [];
  if (schema.minLength !== undefined) limits.push(`min length ${schema.minLength}`);
  if (schema.maxLength !== undefined) limits.push(`max length ${schema.maxLength}`);
  if (schema.minimum !== undefined) limits.push(`≥ ${schema.minimum}`);
  if (schema.maximum !== undefined) limits.push(`≤ ${schema.maximum}`);
  // a long pattern (such as "not all white space") is explained in the notes instead
  if (schema.pattern) limits.push(schema.pattern.length > 24 ? "pattern (see notes)" : `pattern ${schema.pattern}`);
  if (limits.length) text += `, ${limits.join(", ")}`;
  return [text];
}

function propertiesTable(schema) {
  const props = schema.properties || {};
  const required = new Set(schema.required || []);
  const rows = Object.entries(props).map(([name, sub]) =>
    el("tr", {},
      el("td", {}, el("code", {}, name), required.has(name) ? " *" : ""),
      el("td", {}, typeOf(sub)),
      el("td", {}, sub.description ? inline(sub.description) : ""),
    ));
  if (!rows.length) return el("p", { class: "muted" }, typeOf(schema));
  return el("table", {},
    el("thead", {}, el("tr", {}, el("th", {}, "Field"), el("th", {}, "Type"), el("th", {}, "Notes"))),
    el("tbody", {}, rows));
}

function parametersTable(params) {
  return el("table", {},
    el("thead", {}, el("tr", {}, el("th", {}, "Parameter"), el("th", {}, "In"), el("th", {}, "Type"),
      el("th", {}, "Description"))),
    el("tbody", {}, params.map((p) => el("tr", {},
      el("td", {}, el("code", {}, p.name), p.required ? " *" : ""),
      el("td", {}, p.in),
      el("td", {}, typeOf(p.schema)),
      el("td", {}, inline(p.description || "")),
    ))));
}

function mediaBlock(content) {
  const media = content && content["application/json"];
  if (!media) return [];
  const out = [el("div", {}, "JSON: ", typeOf(media.schema))];
  if (media.example !== undefined) {
    out.push(el("details", {}, el("summary", {}, "Example"), el("pre", {}, JSON.stringify(media.example, null, 2))));
  }
  return out;
}

// OpenAPI links: where an answer leads (its id, as the next operation's parameter).
function linksBlock(links) {
  if (!links || !Object.keys(links).length) return null;
  return el("ul", { class: "links" }, Object.values(links).map((link) => el("li", {},
    "Next: ", el("a", { href: "#" + link.operationId }, el("code", {}, link.operationId)),
    " with ", Object.entries(link.parameters || {}).flatMap(([name, expr], i) =>
      [i ? ", " : "", el("code", {}, name), " = ", el("code", {}, expr)]),
  )));
}

function operation(path, method, op, id) {
  const isPublic = Array.isArray(op.security) && op.security.length === 0;
  const parts = [
    el("h3", {},
      el("span", { class: `method ${method}` }, method),
      el("span", { class: "path" }, path),
      el("span", { class: "summary" }, op.summary || ""),
      isPublic ? el("span", { class: "badge" }, "no token") : null),
    ...markdown(op.description),
  ];
  if (op.parameters && op.parameters.length) {
    parts.push(el("h4", {}, "Parameters"), parametersTable(op.parameters));
  }
  if (op.requestBody) {
    parts.push(el("h4", {}, "Request body"), ...mediaBlock(op.requestBody.content));
  }
  const responses = Object.entries(op.responses || {}).map(([code, resp]) => el("tr", {},
    el("td", {}, el("span", { class: "status-code" }, code)),
    el("td", {}, inline(resp.description || ""), linksBlock(resp.links)),
    el("td", {}, mediaBlock(resp.content)),
  ));
  parts.push(el("h4", {}, "Responses"), el("table", {},
    el("thead", {}, el("tr", {}, el("th", {}, "Status"), el("th", {}, "Meaning"), el("th", {}, "Body"))),
    el("tbody", {}, responses)));
  return el("section", { class: "op", id }, parts);
}

function render(doc) {
  const main = document.getElementById("main");
  const toc = document.getElementById("toc");
  main.replaceChildren();
  document.getElementById("title").textContent = `${doc.info.title} ${doc.info.version}`;
  main.append(el("section", { class: "intro" }, markdown(doc.info.description)));

  const byTag = new Map((doc.tags || []).map((t) => [t.name, { tag: t, ops: [] }]));
  for (const [path, item] of Object.entries(doc.paths || {})) {
    for (const method of METHODS) {
      const op = item[method];
      if (!op) continue;
      const tagName = (op.tags && op.tags[0]) || "Other";
      if (!byTag.has(tagName)) byTag.set(tagName, { tag: { name: tagName }, ops: [] });
      byTag.get(tagName).ops.push({ path, method, op });
    }
  }
  for (const { tag, ops } of byTag.values()) {
    if (!ops.length) continue;
    toc.append(el("h2", {}, tag.name));
    const section = el("section", { class: "tag", id: "tag-" + tag.name },
      el("h2", {}, tag.name), ...markdown(tag.description));
    for (const { path, method, op } of ops) {
      const id = op.operationId || `${method}-${path}`;
      toc.append(el("a", { href: "#" + id }, `${method.toUpperCase()} ${path}`));
      section.append(operation(path, method, op, id));
    }
    main.append(section);
  }

  const schemas = (doc.components && doc.components.schemas) || {};
  toc.append(el("h2", {}, "Schemas"));
  const section = el("section", { class: "tag", id: "schemas" }, el("h2", {}, "Schemas"));
  for (const [name, schema] of Object.entries(schemas).sort(([a], [b]) => a.localeCompare(b))) {
    toc.append(el("a", { href: "#" + anchor(name) }, name));
    section.append(el("section", { class: "op", id: anchor(name) },
      el("h3", {}, el("span", { class: "schema-name" }, name)),
      ...markdown(schema.description),
      propertiesTable(schema)));
  }
  main.append(section);
  if (location.hash) document.getElementById(location.hash.slice(1))?.scrollIntoView();
}

async function main() {
  const status = document.getElementById("status");
  try {
    const resp = await fetch("/api/schema/", { headers: { Accept: "application/json" } });
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    render(await resp.json());
  } catch (err) {
    status.textContent = `Could not load /api/schema/: ${err.message}`;
  }
}

main();
