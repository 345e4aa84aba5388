// The demo page in Debian's Chromium, against two real gateway nodes sharing a real Redis:
// WebSocket (with permessage-deflate), server-sent events when the page has no WebSocket, long
// polling, a REDIRECT to the other node and a restart of the node the page is on, each time
// resuming the user's stream. Plus permessage-deflate with a non-browser client (the `ws`
// package).
//
// Run by scripts/test.sh after `cargo test` built target/debug/ringway; RINGWAY_BIN overrides.
// SCREENSHOT=path saves the demo page once it has chatted (the README's picture).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import WebSocket from "ws";

const here = path.dirname(fileURLToPath(import.meta.url));
const BIN = process.env.RINGWAY_BIN || path.join(here, "../../target/debug/ringway");
const SECRET = "browser-tests-secret-0123456789";

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on("error", reject);
  });
}

/// One gateway node; `start` waits until its admin port answers.
class Node {
  constructor(id, extra = []) {
    this.id = id;
    this.extra = extra;
  }
  async init() {
    this.ws = await freePort();
    this.admin = await freePort();
    return this;
  }
  get adminUrl() {
    return `http://127.0.0.1:${this.admin}`;
  }
  async start() {
    this.proc = spawn(
      BIN,
      [
        "serve",
        "--listen", `127.0.0.1:${this.ws}`,
        "--admin-listen", `127.0.0.1:${this.admin}`,
        "--jwt-secret", SECRET,
        "--node-id", this.id,
        "--workers", "1",
        "--pin-cores", "false",
        "--demo",
        ...this.extra,
      ],
      { stdio: ["ignore", "ignore", "inherit"], env: { ...process.env, RUST_LOG: "warn" } },
    );
    const deadline = Date.now() + 20000;
    while (Date.now() < deadline) {
      try {
        if ((await fetch(`${this.adminUrl}/healthz`)).ok) return;
      } catch {}
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`node ${this.id} did not come up`);
  }
  async stop() {
    if (!this.proc || this.proc.exitCode !== null) return;
    const exited = new Promise((r) => this.proc.once("exit", r));
    this.proc.kill("SIGKILL");
    await exited;
  }
  async push(user, key, text) {
    const r = await fetch(`${this.adminUrl}/v1/push`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ biz_id: 1, user_ids: [user], key, body: Buffer.from(text).toString("base64") }),
    });
    assert.equal(r.status, 202, await r.text());
  }
  async redirect(user, to) {
    const r = await fetch(`${this.adminUrl}/v1/redirect`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ biz_id: 1, user_id: user, nodes: [{ id: to.id, ip: "127.0.0.1", port: to.ws }], retry_after_ms: 200 }),
    });
    assert.equal(r.status, 202, await r.text());
  }
  async metric(name) {
    const text = await (await fetch(`${this.adminUrl}/metrics`)).text();
    const line = text.split("\n").find((l) => l.startsWith(name + " "));
    return Number(line?.split(" ").at(-1) ?? NaN);
  }
}

let a, b, browser, redis;

/// A redis-server of the test's own, for the nodes' shared streams.
async function startRedis() {
  const port = await freePort();
  const proc = spawn("redis-server", ["--bind", "127.0.0.1", "--port", String(port), "--save", "", "--appendonly", "no"], {
    stdio: "ignore",
  });
  const deadline = Date.now() + 10000;
  while (Date.now() < deadline) {
    const up = await new Promise((resolve) => {
      const s = net.connect(port, "127.0.0.1", () => {
        s.end();
        resolve(true);
      });
      s.on("error", () => resolve(false));
    });
    if (up) return { port, proc };
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error("redis-server did not come up");
}

before(async () => {
  redis = await startRedis();
  const shared = ["--redis", `redis://127.0.0.1:${redis.port}`];
  a = await (await new Node("node-a", shared).init());
  b = await (await new Node("node-b", shared).init());
  await Promise.all([a.start(), b.start()]);
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
});

after(async () => {
  await browser?.close();
  await a?.stop();
  await b?.stop();
  redis?.proc.kill("SIGKILL");
});

/// Opens the demo page from node A and signs in as `user` with the chosen transport.
async function signIn(user, mode, { noWebSocket = false, codec = "json" } = {}) {
  const page = await browser.newPage({ viewport: { width: 1200, height: 760 } });
  page.on("pageerror", (e) => console.error("page error:", e));
  if (noWebSocket) {
    await page.addInitScript(() => {
      delete window.WebSocket;
    });
  }
  await page.goto(`${a.adminUrl}/demo/`);
  await page.fill("#user", user);
  await page.selectOption("#mode", mode);
  await page.selectOption("#codec", codec);
  await page.click("#connect");
  await waitOpen(page, 1);
  return page;
}

/// Waits until the client has been "open" `times` times in all.
async function waitOpen(page, times) {
  await page.waitForFunction(
    (n) => window.ringwayDemo.states.filter((s) => s.state === "open").length >= n,
    times,
    { timeout: 15000 },
  );
  return page.evaluate(() => window.ringwayDemo.states.filter((s) => s.state === "open").at(-1));
}

async function eventually(check, ms = 10000) {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`not true within ${ms} ms: ${check}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function sendText(page, text) {
  await page.fill("#text", text);
  await page.click("#send");
  await page.waitForFunction((t) => window.ringwayDemo.acks.includes(t), text, { timeout: 15000 });
}

async function waitPush(page, key) {
  return page.waitForFunction(
    (k) => window.ringwayDemo.pushes.find((p) => p.key === k),
    key,
    { timeout: 15000 },
  ).then((h) => h.jsonValue());
}

test("WebSocket: chat, pushes, deflate, a REDIRECT and a restart", async () => {
  const page = await signIn("alice", "auto");
  const first = await page.evaluate(() => window.ringwayDemo.states.find((s) => s.state === "open"));
  assert.equal(first.transport, "websocket");
  assert.equal(first.nodeId, "node-a");

  await sendText(page, "hello from chromium");
  // Long enough to be compressed both ways (the default threshold is 256 bytes).
  await sendText(page, "long ".repeat(100));
  await a.push("alice", "p-1", "first push");
  assert.equal((await waitPush(page, "p-1")).text, "first push");
  await a.push("alice", "p-big", "x".repeat(2000));
  assert.equal((await waitPush(page, "p-big")).text.length, 2000);
  assert.equal(await a.metric('ringway_links_by_transport_total{transport="websocket_deflate"}'), 1);
  assert.ok((await a.metric("ringway_deflated_out_total")) >= 1, "the big push went out compressed");
  assert.ok((await a.metric("ringway_inflated_in_total")) >= 1, "chromium compressed the long message");
  // The live chart has drawn samples from /metrics.
  await page.waitForFunction(() => window.ringwayDemo.metricsSamples >= 2, null, { timeout: 10000 });
  if (process.env.SCREENSHOT) {
    for (let i = 0; i < 8; i++) {
      await a.push("alice", `chart-${i}`, `push ${i} for the chart`);
      await sendText(page, `message ${i}`);
      await new Promise((r) => setTimeout(r, 400));
    }
    await page.screenshot({ path: process.env.SCREENSHOT });
  }

  // The gateway sends the link elsewhere: the SDK reconnects to node B, resuming its stream.
  await a.redirect("alice", b);
  const moved = await waitOpen(page, 2);
  assert.equal(moved.nodeId, "node-b");
  await page.waitForFunction(() => window.ringwayDemo.recovered.length >= 1);
  await b.push("alice", "p-2", "after redirect");
  await waitPush(page, "p-2");

  // Node B dies; a push comes meanwhile (through A, which stores it in Redis); B comes back on
  // the same port: the SDK backs off, reconnects and gets the push it missed.
  await b.stop();
  await page.waitForFunction(() => window.ringwayDemo.states.at(-1).state === "reconnecting");
  await a.push("alice", "while-away", "stored while away");
  await b.start();
  const back = await waitOpen(page, 3);
  assert.equal(back.nodeId, "node-b");
  assert.equal((await waitPush(page, "while-away")).text, "stored while away");
  await page.waitForFunction(() => window.ringwayDemo.recovered.length >= 2);
  const offsets = await page.evaluate(() => window.ringwayDemo.pushes.map((p) => p.offset));
  assert.deepEqual(offsets, [1, 2, 3, 4], "one stream, no offset skipped");
  assert.equal(await page.evaluate(() => window.ringwayDemo.discontinuities.length), 0);
  await sendText(page, "after restart");
  await b.push("alice", "p-3", "after restart");
  await waitPush(page, "p-3");
  assert.match(await page.textContent("#stream"), /:5$/);
  await page.close();
});

test("EventSource when the page has no WebSocket: chat, pushes, acks by POST, REDIRECT", async () => {
  const page = await signIn("bob", "auto", { noWebSocket: true });
  const open = await page.evaluate(() => window.ringwayDemo.states.find((s) => s.state === "open"));
  assert.equal(open.transport, "sse");
  await sendText(page, "hello over POST /send");
  await a.push("bob", "s-1", "over an event stream");
  assert.equal((await waitPush(page, "s-1")).text, "over an event stream");
  assert.equal(await a.metric('ringway_links_by_transport_total{transport="sse"}'), 1);
  // The page acked by POST /send.
  await eventually(async () => (await a.metric("ringway_push_acked_total")) >= 1);

  await a.redirect("bob", b);
  const moved = await waitOpen(page, 2);
  assert.equal(moved.nodeId, "node-b");
  assert.equal(moved.transport, "sse");
  await page.waitForFunction(() => window.ringwayDemo.recovered.length >= 1);
  await b.push("bob", "s-2", "after redirect");
  await waitPush(page, "s-2");
  await sendText(page, "still sending");
  await page.close();
});

test("protobuf codec on a WebSocket: chat and pushes", async () => {
  const page = await signIn("erin", "websocket", { codec: "proto" });
  await sendText(page, "hello in protobuf");
  await a.push("erin", "b-1", "binary push");
  assert.equal((await waitPush(page, "b-1")).text, "binary push");
  await page.close();
});

test("rooms and presence: the token's claim joins, the page publishes, presence lists the device", async () => {
  const page = await signIn("rita", "websocket");
  await page.fill("#roomtext", "hello, lobby");
  await page.click("#publish");
  const got = await page.waitForFunction(() => window.ringwayDemo.roomMessages[0], null, { timeout: 15000 });
  const m = await got.jsonValue();
  assert.deepEqual([m.room, m.text, m.seq], ["lobby", "hello, lobby", 0], "best effort: no seq");
  await page.waitForFunction(() => document.querySelector("#members").textContent.includes("1 links"));
  assert.equal(await a.metric("ringway_room_sent_total"), 1);
  // Best effort wants no ack: nothing is waiting for one, and no push was counted.
  assert.equal(await page.evaluate(() => window.ringwayDemo.pushes.length), 0);
  await page.click("#presence");
  const p = await (await page.waitForFunction(() => window.ringwayDemo.presence, null, { timeout: 15000 })).jsonValue();
  assert.equal(p.scope, "fleet", "the nodes share a Redis");
  assert.deepEqual(p.devices.map((d) => [d.device_id, d.node, d.transport]), [["browser", "node-a", "websocket_deflate"]], "chromium offers permessage-deflate");
  await page.close();
});

test("long polling: chat and pushes", async () => {
  const page = await signIn("carol", "poll");
  await sendText(page, "hello by polling");
  await a.push("carol", "l-1", "polled push");
  assert.equal((await waitPush(page, "l-1")).text, "polled push");
  assert.equal(await a.metric('ringway_links_by_transport_total{transport="long_poll"}'), 1);
  await page.close();
});

test("body encryption: the SDK seals with WebCrypto, the gateway opens and seals once", async () => {
  const key = Buffer.alloc(32, 5).toString("base64");
  const d = await new Node("node-d", ["--body-key", `1=${key}`, "--echo"]).init();
  await d.start();
  try {
    const page = await browser.newPage();
    await page.goto(`${d.adminUrl}/demo/`);
    const result = await page.evaluate(
      async ({ port, key }) => {
        const { RingwayClient } = await import("/sdk/ringway.js");
        const r = await fetch("/demo/token", { method: "POST", body: JSON.stringify({ biz_id: 1, user_id: "gina" }) });
        const { token } = await r.json();
        const c = new RingwayClient({ url: `ws://127.0.0.1:${port}`, token, bodyKey: key });
        const echoed = new Promise((resolve) => c.on("message", (m) => resolve(m.text())));
        c.connect();
        await new Promise((resolve) => c.on("connected", resolve));
        // The loopback backend (--echo) pushes back the body it received: plain only if the
        // gateway opened it, and readable here only if the gateway sealed the push.
        await c.send("top secret");
        const text = await echoed;
        c.close();
        return text;
      },
      { port: d.ws, key },
    );
    assert.equal(result, "top secret");
    await page.close();
  } finally {
    await d.stop();
  }
});

test("a token that runs out is refreshed by the SDK's getToken, and the link lives on", async () => {
  const page = await browser.newPage();
  await page.goto(`${a.adminUrl}/demo/`);
  const result = await page.evaluate(async (port) => {
    const { RingwayClient } = await import("/sdk/ringway.js");
    const mint = async () => {
      const r = await fetch("/demo/token", { method: "POST", body: JSON.stringify({ biz_id: 1, user_id: "ivy", ttl_s: 2 }) });
      return (await r.json()).token;
    };
    const c = new RingwayClient({ url: `ws://127.0.0.1:${port}`, token: await mint(), getToken: mint, refreshBeforeMs: 1000 });
    const states = [];
    c.on("state", (s) => states.push(s.state));
    let refreshed = 0;
    c.on("refreshed", () => refreshed++);
    c.connect();
    // Two 2-second tokens' worth: each refreshed a second before it ran out.
    await new Promise((r) => setTimeout(r, 4500));
    c.close();
    return { refreshed, states };
  }, a.ws);
  assert.ok(result.refreshed >= 2, JSON.stringify(result));
  assert.deepEqual(result.states, ["connecting", "open", "closed"], "never dropped");
  await page.close();
});

/// A Node client (the `ws` package) on `node`; returns the socket, the agreed extension header
/// and a way to wait for a frame.
async function wsClient(node, user) {
  const r = await fetch(`${node.adminUrl}/demo/token`, {
    method: "POST",
    body: JSON.stringify({ biz_id: 1, user_id: user }),
  });
  const { token } = await r.json();
  const ws = new WebSocket(`ws://127.0.0.1:${node.ws}/ws?token=${token}`, ["ringway.v1.json"], {
    perMessageDeflate: { threshold: 0 },
  });
  let agreed = "";
  ws.once("upgrade", (res) => (agreed = res.headers["sec-websocket-extensions"] || ""));
  const frames = [];
  ws.on("message", (d) => frames.push(JSON.parse(d.toString())));
  await new Promise((r, j) => {
    ws.once("open", r);
    ws.once("error", j);
  });
  const waitFor = (pred) =>
    eventually(() => frames.some(pred)).then(() => frames.find(pred));
  await waitFor((f) => f.cmd === "CMD_CONNECTED");
  return { ws, agreed, waitFor };
}

/// Two big upstream messages and two big pushes through a deflate link.
async function bigBothWays(node, user, { ws, waitFor }) {
  const body = Buffer.from("y".repeat(5000)).toString("base64");
  for (const key of ["d-1", "d-2"]) {
    ws.send(JSON.stringify({ cmd: "CMD_UPSTREAM", key, body }));
    await waitFor((f) => f.cmd === "CMD_UPSTREAM_ACK" && f.key === key);
  }
  for (const key of ["dp-1", "dp-2"]) {
    await node.push(user, key, "z".repeat(3000));
    const push = await waitFor((f) => f.cmd === "CMD_DOWNSTREAM" && f.key === key);
    assert.equal(Buffer.from(push.body, "base64").toString(), "z".repeat(3000));
  }
}

test("permessage-deflate with a non-browser client", async () => {
  const before = {
    out: await a.metric("ringway_deflated_out_total"),
    in: await a.metric("ringway_inflated_in_total"),
  };
  const client = await wsClient(a, "dave");
  assert.equal(client.ws.extensions, "permessage-deflate");
  assert.equal(client.agreed, "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
  await bigBothWays(a, "dave", client);
  assert.ok((await a.metric("ringway_deflated_out_total")) >= before.out + 2);
  assert.ok((await a.metric("ringway_inflated_in_total")) >= before.in + 2);
  client.ws.close();
});

test("permessage-deflate with context takeover (--deflate-takeover)", async () => {
  const c = await new Node("node-c", ["--deflate-takeover"]).init();
  await c.start();
  try {
    const client = await wsClient(c, "frank");
    // Both sides keep their window: the second of two equal messages refers to the first.
    assert.equal(client.agreed, "permessage-deflate");
    await bigBothWays(c, "frank", client);
    assert.equal(await c.metric("ringway_inflated_in_total"), 2);
    assert.ok((await c.metric("ringway_deflated_out_total")) >= 2);
    client.ws.close();
  } finally {
    await c.stop();
  }
});
