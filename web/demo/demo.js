// The demo page: signs in with a token the node mints (--demo), chats through the SDK and
// charts the node's /metrics. Tests drive it through the same elements a person uses and
// read `window.ringwayDemo` for what happened.
import { RingwayClient } from "/sdk/ringway.js";

const $ = (id) => document.getElementById(id);
const demo = (window.ringwayDemo = {
  states: [],
  pushes: [],
  acks: [],
  recovered: [],
  discontinuities: [],
  roomMessages: [],
  presence: null,
  client: null,
});

/// The user's stream position as the SDK holds it, in the header.
function showStream(client) {
  const s = client.stream;
  $("stream").textContent = s.epoch ? `stream ${s.epoch.slice(0, 6)}…:${s.offset}` : "no stream yet";
}

function log(cls, text) {
  const line = document.createElement("div");
  line.className = cls;
  line.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  $("log").append(line);
  $("log").scrollTop = $("log").scrollHeight;
}

async function tokenFor(biz, user, device) {
  const typed = $("token").value.trim();
  if (typed) return typed;
  const rooms = $("rooms").value.split(",").map((r) => r.trim()).filter(Boolean);
  const r = await fetch("/demo/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ biz_id: Number(biz), user_id: user, device_id: device, rooms }),
  });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error);
  return body.token;
}

$("login").addEventListener("submit", async (e) => {
  e.preventDefault();
  demo.client?.close();
  const cfg = await (await fetch("/demo/config")).json();
  let token;
  try {
    token = await tokenFor($("biz").value, $("user").value, $("device").value);
  } catch (err) {
    log("err", `sign-in failed: ${err.message}`);
    return;
  }
  const client = new RingwayClient({
    url: `ws://${location.hostname}:${cfg.ws_port}`,
    token,
    transport: $("mode").value,
    codec: $("codec").value,
    persist: true,
  });
  demo.client = client;
  client.on("state", (s) => {
    demo.states.push(s);
    $("state").textContent = s.state;
    $("state").dataset.state = s.state;
    if (s.transport) $("transport").textContent = s.transport;
    if (s.linkId) $("link").textContent = `${s.linkId} @ ${s.nodeId}`;
    const extra = s.code ? ` (close ${s.code} ${s.reason || ""}, retry in ${s.waitMs} ms)` : "";
    log("sys", `${s.state}${s.transport ? " via " + s.transport : ""}${extra}`);
  });
  client.on("message", (m) => {
    if (m.room) {
      demo.roomMessages.push({ room: m.room, key: m.key, seq: m.seq, text: m.text() });
      log("push", `room ${m.room}: ${m.key}: ${m.text()}`);
      return;
    }
    demo.pushes.push({ key: m.key, seq: m.seq, offset: m.offset, text: m.text() });
    log("push", `push ${m.key} #${m.seq}${m.offset ? " @" + m.offset : ""}: ${m.text()}`);
    showStream(client);
  });
  client.on("connected", () => showStream(client));
  client.on("recovered", (r) => {
    demo.recovered.push(r);
    log("sys", `resumed from ${r.from}: what was missed follows`);
  });
  client.on("discontinuity", (d) => {
    demo.discontinuities.push(d);
    log("err", `pushes may have been missed (${d.reason}): re-sync from the app's own store`);
    showStream(client);
  });
  client.on("redirect", (r) => log("sys", `redirected; reconnecting in ${r.waitMs} ms`));
  client.on("kicked", (k) => log("err", `kicked: ${k.reason}`));
  client.on("error", (err) => log("err", `error: ${err.message}`));
  client.connect();
});

$("sendform").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = $("text").value;
  if (!demo.client || !text) return;
  $("text").value = "";
  log("sys", `send: ${text}`);
  try {
    await demo.client.send(text);
    demo.acks.push(text);
    log("ack", `acked: ${text}`);
  } catch (err) {
    log("err", `not sent: ${err.message}`);
  }
});

// The page is served by the admin port, so it may use the admin API (a node with --admin-token
// refuses these without it, as it should).
$("roomform").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = $("roomtext").value;
  if (!text) return;
  $("roomtext").value = "";
  const body = {
    biz_id: Number($("biz").value),
    room: $("room").value,
    key: `demo-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`,
    body: btoa(String.fromCharCode(...new TextEncoder().encode(text))),
  };
  const r = await fetch("/v1/rooms/publish", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!r.ok) log("err", `publish refused: ${(await r.json()).error}`);
  const m = await (await fetch(`/v1/rooms/members?biz_id=${body.biz_id}&room=${encodeURIComponent(body.room)}`)).json();
  $("members").textContent = `${body.room}: ${m.links} links, ${m.users} users on ${m.node_id}`;
});

$("presence").addEventListener("click", async () => {
  const q = `biz_id=${Number($("biz").value)}&user_id=${encodeURIComponent($("user").value)}`;
  const r = await fetch(`/v1/presence?${q}`);
  const p = await r.json();
  if (!r.ok) {
    log("err", `presence: ${p.error}`);
    return;
  }
  demo.presence = p;
  const devices = p.devices.map((d) => `${d.device_id} on ${d.node} (${d.transport}) since ${new Date(d.since_ms).toLocaleTimeString()}`);
  log("sys", `online (${p.scope}): ${devices.join("; ") || "nobody"}`);
});

// --- the metrics chart -------------------------------------------------------------------

const series = { links: [], inRate: [], outRate: [] };
let last = null;

function sum(text, name) {
  let total = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith(name + " ") || line.startsWith(name + "{")) {
      total += Number(line.slice(line.lastIndexOf(" ") + 1)) || 0;
    }
  }
  return total;
}

async function sample() {
  try {
    const text = await (await fetch("/metrics")).text();
    const now = performance.now();
    const cur = { t: now, links: sum(text, "ringway_links"), fin: sum(text, "ringway_frames_in_total"), fout: sum(text, "ringway_frames_out_total") };
    if (last) {
      const dt = (cur.t - last.t) / 1000;
      series.links.push(cur.links);
      series.inRate.push((cur.fin - last.fin) / dt);
      series.outRate.push((cur.fout - last.fout) / dt);
      for (const s of Object.values(series)) if (s.length > 120) s.shift();
      draw();
      $("figures").textContent = `links ${cur.links} · frames in ${series.inRate.at(-1).toFixed(1)}/s · frames out ${series.outRate.at(-1).toFixed(1)}/s`;
      demo.metricsSamples = series.links.length;
    }
    last = cur;
  } catch {
    // The node may be restarting; the next sample tries again.
  }
}

function draw() {
  const c = $("chart");
  // Draw at the size the canvas is shown at, so lines are not stretched.
  c.width = c.clientWidth;
  c.height = c.clientHeight;
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const lines = [
    [series.links, "#1f9d55", "links"],
    [series.inRate, "#2b6cb0", "frames in/s"],
    [series.outRate, "#d69e2e", "frames out/s"],
  ];
  const max = Math.max(1, ...lines.flatMap(([s]) => s));
  g.strokeStyle = "#ddd";
  g.beginPath();
  for (let i = 0; i <= 4; i++) {
    const y = 10 + ((c.height - 30) * i) / 4;
    g.moveTo(40, y);
    g.lineTo(c.width, y);
  }
  g.stroke();
  g.fillStyle = "#555";
  g.font = "11px sans-serif";
  g.fillText(max.toFixed(0), 2, 14);
  g.fillText("0", 2, c.height - 20);
  lines.forEach(([s, color, name], i) => {
    g.strokeStyle = color;
    g.lineWidth = 2;
    g.beginPath();
    s.forEach((v, j) => {
      const x = 40 + ((c.width - 40) * j) / 119;
      const y = 10 + (c.height - 30) * (1 - v / max);
      j ? g.lineTo(x, y) : g.moveTo(x, y);
    });
    g.stroke();
    g.fillStyle = color;
    g.fillText(name, 50 + i * 110, c.height - 4);
  });
}

setInterval(sample, 1000);
sample();
