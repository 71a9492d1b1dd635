// Drives static/js/healthsync-client.js under Node for tests/support/node.py, the way
// Playwright's page.evaluate drives it in Chromium: one JSON request a line on stdin,
// one JSON answer a line on stdout.
//
//   HS_BASE=http://127.0.0.1:8000 HS_WEBSOCKET=builtin|ws node [--experimental-websocket] tests/js/harness.mjs
//
// Requests: {"id", "op": "eval", "src"} evaluates `src` (an expression, or a function that is
// called and awaited) in the global scope; {"id", "op": "wait", "src", "timeout"} polls the
// expression `src` until it is truthy.  Answers: {"id", "ok": true, "value"} or {"id", "ok": false, "error"}.
// Globals for the snippets: `hs` (the client module), `BASE`, `WS` (the WebSocket implementation)
// and `client(options)` (a HealthSyncClient on BASE with WS).  Uncaught errors and unhandled
// rejections are collected in `pageErrors` (the tests fail on any, as they do for a browser page).
import { createInterface } from "node:readline";

globalThis.pageErrors = [];
process.on("uncaughtException", (err) => pageErrors.push(`uncaught: ${err && err.stack ? err.stack : err}`));
process.on("unhandledRejection", (err) => pageErrors.push(`unhandled rejection: ${err && err.stack ? err.stack : err}`));

const which = process.env.HS_WEBSOCKET || "builtin";
if (which === "ws") {
  let mod;
  try {
    mod = await import("ws");
  } catch (err) {
    console.error(`the npm package ws is not installed: run \`npm ci --prefix tests/js\` (tests/run.sh does) (${err.message})`);
    process.exit(3);
  }
  globalThis.WS = mod.WebSocket;
} else if (typeof globalThis.WebSocket === "function") {
  globalThis.WS = globalThis.WebSocket;
} else {
  console.error(`Node ${process.version} has no built-in WebSocket: Node 22, or Node 20.10+ with --experimental-websocket`);
  process.exit(3);
}

globalThis.hs = await import(new URL("../../static/js/healthsync-client.js", import.meta.url).href);
globalThis.BASE = process.env.HS_BASE;
globalThis.client = (options = {}) => new hs.HealthSyncClient({ baseUrl: BASE, WebSocket: WS, ...options });

const evaluate = async (src) => {
  const value = (0, eval)(`(${src})`);
  return typeof value === "function" ? await value() : await value;
};

const answer = (msg) => process.stdout.write(JSON.stringify(msg) + "\n");

async function handle(req) {
  try {
    if (req.op === "eval") return answer({ id: req.id, ok: true, value: (await evaluate(req.src)) ?? null });
    if (req.op === "wait") {
      const until = Date.now() + (req.timeout ?? 5000);
      for (;;) {
        const value = await evaluate(req.src);
        if (value) return answer({ id: req.id, ok: true, value });
        if (Date.now() > until) throw new Error(`timed out after ${req.timeout} ms waiting for: ${req.src}`);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    }
    throw new Error(`unknown op ${req.op}`);
  } catch (err) {
    answer({ id: req.id, ok: false, error: err && err.stack ? err.stack : String(err) });
  }
}

answer({ ready: true, node: process.version, websocket: which });
const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  if (line.trim()) handle(JSON.parse(line));
});
lines.on("close", () => process.exit(0));
