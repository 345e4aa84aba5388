// ringway client SDK: one ES module, no dependencies.
//
//   import { RingwayClient } from "./ringway.js";
//   const c = new RingwayClient({ url: "ws://host:8080", token });
//   c.on("message", (m) => console.log(m.key, m.text()));
//   c.connect();
//   const reply = await c.send("hello");      // resolves on UPSTREAM_ACK
//
// Transports: a WebSocket when the page has one, else server-sent events (downstream) with
// POST /send (upstream), else long polling. Every transport speaks the same JSON frames, so the
// rules below (acks, retries, dedup, redirect, backoff, resume) are written once.
//
// Resume: the client keeps its user's stream position {epoch, offset} (in localStorage with
// `persist: true`) and reconnects with since=EPOCH:OFFSET, after a drop, a REDIRECT or a
// reload, so the gateway replays what it missed. It emits "recovered" when that worked and
// "discontinuity" when pushes may have been missed (history lost, too old, a jump in offsets
// it could not mend): the app then re-syncs from its own source of truth.
//
// Rooms: a room message (or a broadcast) arrives as a "message" whose `room` is set (empty for a
// broadcast). Best-effort ones carry no seq and are not acked; reliable ones are acked like
// pushes. Membership comes from the token's `rooms` claim and the backend's join API.

const CMD = {
  HEARTBEAT: "CMD_HEARTBEAT",
  UPSTREAM: "CMD_UPSTREAM",
  UPSTREAM_ACK: "CMD_UPSTREAM_ACK",
  DOWNSTREAM: "CMD_DOWNSTREAM",
  DOWNSTREAM_ACK: "CMD_DOWNSTREAM_ACK",
  REDIRECT: "CMD_REDIRECT",
  RATE_LIMITED: "CMD_RATE_LIMITED",
  KICKED: "CMD_KICKED",
  ERROR: "CMD_ERROR",
  CONNECTED: "CMD_CONNECTED",
  REFRESH: "CMD_REFRESH",
};

const CMD_NAMES = [
  "CMD_UNSPECIFIED", "CMD_HEARTBEAT", "CMD_UPSTREAM", "CMD_UPSTREAM_ACK", "CMD_DOWNSTREAM",
  "CMD_DOWNSTREAM_ACK", "CMD_REDIRECT", "CMD_RATE_LIMITED", "CMD_KICKED", "CMD_ERROR",
  "CMD_CONNECTED", "CMD_REFRESH",
];

// Close codes after which reconnecting would only repeat the refusal.
const FINAL_CLOSES = new Set([4003]); // kicked: another login took this device slot

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

function toBase64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

function fromBase64(s) {
  const bin = atob(s || "");
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function bytesOf(body) {
  if (body instanceof Uint8Array) return body;
  if (typeof body === "string") return utf8.encode(body);
  return utf8.encode(JSON.stringify(body));
}

// Full jitter on an exponential backoff: spreads a reconnect storm over the whole window.
export function backoffDelay(attempt, baseMs, maxMs, random = Math.random) {
  const cap = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 20));
  return Math.round(cap / 2 + (random() * cap) / 2);
}

/// The `ringway.v1.proto` codec, written out for the few fields of `Frame`: the SDK keeps
/// frames in their JSON shape (cmd names, base64 bodies, 64-bit numbers as strings) and turns
/// them into protobuf bytes at the socket.
export const protoCodec = {
  encode(f) {
    const out = [];
    const varint = (v) => {
      v = BigInt(v);
      while (v >= 0x80n) {
        out.push(Number(v & 0x7fn) | 0x80);
        v >>= 7n;
      }
      out.push(Number(v));
    };
    const field = (no, bytes) => {
      if (!bytes.length) return;
      varint((no << 3) | 2);
      varint(bytes.length);
      for (const b of bytes) out.push(b);
    };
    const cmd = CMD_NAMES.indexOf(f.cmd);
    if (cmd > 0) {
      varint(1 << 3);
      varint(cmd);
    }
    if (f.key) field(2, utf8.encode(f.key));
    if (f.body) field(3, fromBase64(f.body));
    if (f.token) field(12, utf8.encode(f.token));
    return new Uint8Array(out);
  },

  decode(buf) {
    const message = (bytes, fields) => {
      const obj = {};
      let i = 0;
      const varint = () => {
        let v = 0n;
        for (let shift = 0n; ; shift += 7n) {
          const b = bytes[i++];
          v |= BigInt(b & 0x7f) << shift;
          if (b < 0x80) return v;
        }
      };
      while (i < bytes.length) {
        const tag = Number(varint());
        const [no, wire] = [tag >> 3, tag & 7];
        let value;
        if (wire === 0) value = varint();
        else if (wire === 2) {
          const len = Number(varint());
          value = bytes.subarray(i, i + len);
          i += len;
        } else if (wire === 1) i += 8;
        else if (wire === 5) i += 4;
        const f = fields[no];
        if (f && value !== undefined) {
          const v = f[1](value);
          if (f[2]) (obj[f[0]] ||= []).push(v);
          else obj[f[0]] = v;
        }
      }
      return obj;
    };
    const str = (b) => fromUtf8.decode(b);
    const num = (v) => Number(v);
    const big = (v) => v.toString();
    const node = { 1: ["id", str], 2: ["ip", str], 3: ["port", num] };
    const connected = {
      1: ["linkId", str],
      2: ["nodeId", str],
      3: ["heartbeatIntervalMs", num],
      4: ["serverTimeMs", big],
      5: ["epoch", str],
      6: ["offset", big],
      7: ["recovered", (v) => v === 1n],
    };
    return message(buf, {
      1: ["cmd", (v) => CMD_NAMES[Number(v)] || Number(v)],
      2: ["key", str],
      3: ["body", (b) => toBase64(b)],
      4: ["seq", big],
      5: ["code", num],
      6: ["reason", str],
      7: ["retryAfterMs", num],
      8: ["connected", (b) => message(b, connected)],
      9: ["nodes", (b) => message(b, node), true],
      10: ["offset", big],
      11: ["room", str],
    });
  },
};

/// A downstream message, as the app sees it.
class Message {
  constructor(frame, body) {
    this.key = frame.key;
    this.seq = Number(frame.seq || 0);
    // Its place in the user's stream; 0: not stored (a device's push, an ephemeral one, a
    // room message).
    this.offset = Number(frame.offset || 0);
    // The room it was published to; "" for a push or a broadcast.
    this.room = frame.room || "";
    this.body = body;
  }
  text() {
    return fromUtf8.decode(this.body);
  }
}

export class RingwayClient {
  constructor(opts) {
    this.opts = {
      transport: "auto", // "websocket" | "sse" | "poll"
      codec: "json", // "proto": binary frames on a WebSocket (the HTTP transports are JSON)
      ackTimeoutMs: 5000, // resend an unacked UPSTREAM after this long
      maxSendAttempts: 5,
      backoffBaseMs: 500,
      backoffMaxMs: 30000,
      dedupKeys: 2048,
      bodyKey: null, // base64 AES-256 key when the gateway runs with --body-key for this biz
      persist: false, // keep the stream position in localStorage, to resume after a reload
      getToken: null, // async () => a fresh JWT: refreshed before exp, and after a 4005
      refreshBeforeMs: 30000,
      ...opts,
    };
    this.url = this.opts.url.replace(/\/+$/, "");
    this.listeners = new Map();
    this.state = "idle";
    this.pending = new Map(); // key -> { frame, resolve, reject, attempts, timer }
    this.seen = new Map(); // push keys already handed to the app (insertion-ordered)
    this.attempt = 0;
    this.closedByUser = false;
    this.transport = null;
    this.heartbeatMs = 30000;
    this.timers = new Set();
    this.nextKey = 0;
    this.stream = this.loadStream(); // { epoch, offset }: where this user's stream was left
    this.asked = null; // the position the current link asked to resume from
  }

  /// The token's claims (unverified: the gateway checks it), or {} when it does not parse.
  claims() {
    try {
      return JSON.parse(atob(this.opts.token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    } catch {
      return {};
    }
  }

  /// Where the position is kept: one entry per biz, user and device of the token.
  storageKey() {
    const c = this.claims();
    return c.user_id ? `ringway:stream:${c.biz_id}:${c.user_id}:${c.device_id || "default"}` : "ringway:stream";
  }

  /// With getToken, a new token goes out as REFRESH before the link's runs out: refreshBeforeMs
  /// early, or halfway through a token with less time than that left (a fixed floor would fire
  /// after such a token ran out, and the link would close with 4005). Never sooner than 100 ms,
  /// so a token already out (a skewed clock) cannot spin.
  scheduleRefresh() {
    clearTimeout(this.refreshTimer);
    const exp = this.claims().exp;
    if (!this.opts.getToken || !exp) return;
    const left = exp * 1000 - Date.now();
    const wait = Math.max(100, left - this.opts.refreshBeforeMs, Math.min(1000, left / 2));
    this.refreshTimer = this.later(wait, () => this.refreshToken());
  }

  async refreshToken() {
    try {
      this.opts.token = await this.opts.getToken();
    } catch (e) {
      this.emit("error", new Error(`getToken failed: ${e.message || e}`));
      return;
    }
    // The HTTP transports' next requests present it too.
    this.transport?.setToken?.(encodeURIComponent(this.opts.token));
    this.transport?.send({ cmd: CMD.REFRESH, token: this.opts.token });
  }

  loadStream() {
    if (!this.opts.persist || typeof localStorage === "undefined") return { epoch: "", offset: 0 };
    try {
      return JSON.parse(localStorage.getItem(this.storageKey())) || { epoch: "", offset: 0 };
    } catch {
      return { epoch: "", offset: 0 };
    }
  }

  saveStream() {
    if (this.opts.persist && typeof localStorage !== "undefined") {
      localStorage.setItem(this.storageKey(), JSON.stringify(this.stream));
    }
  }

  /// The position this client resumes from, as `since` wants it.
  since() {
    return this.stream.epoch ? `${this.stream.epoch}:${this.stream.offset}` : "";
  }

  /// Pushes may have been missed: the app should re-sync. The position starts over at `to`.
  discontinuity(reason, to) {
    const from = { ...this.stream };
    this.stream = { epoch: to.epoch || "", offset: Number(to.offset || 0) };
    this.saveStream();
    this.emit("discontinuity", { reason, from, to: { ...this.stream } });
  }

  /// A stored push's offset: the position moves on, or a jump says something was stored
  /// while this link was elsewhere; a resume from the last position held mends it.
  takeOffset(f) {
    const named = f.connected;
    if (named && named.epoch && named.epoch !== this.stream.epoch) {
      // The stream began (or began again) while this link was open.
      if (this.stream.epoch) this.discontinuity("history lost", named);
      else this.stream = { epoch: named.epoch, offset: Number(named.offset || 0) };
    }
    const offset = Number(f.offset || 0);
    if (!offset || offset <= this.stream.offset) return;
    if (offset > this.stream.offset + 1) {
      this.emit("gap", { expected: this.stream.offset + 1, got: offset });
      this.resumeNow();
      return;
    }
    this.stream.offset = offset;
    this.saveStream();
  }

  /// Reconnects at once, resuming from the position held.
  resumeNow() {
    if (this.resuming) return;
    this.resuming = true;
    this.transport?.close(1000, "resuming");
    this.transport = null;
    this.later(0, () => {
      this.resuming = false;
      if (!this.closedByUser) this.open();
    });
  }

  on(event, fn) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(fn);
    return () => this.listeners.get(event).delete(fn);
  }

  emit(event, value) {
    for (const fn of this.listeners.get(event) || []) {
      try {
        fn(value);
      } catch (e) {
        console.error(e);
      }
    }
  }

  setState(s, detail) {
    if (this.state === s) return;
    this.state = s;
    this.emit("state", { state: s, ...detail });
  }

  later(ms, fn) {
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    this.timers.add(t);
    return t;
  }

  /// Which transport this page can use.
  pickTransport() {
    const t = this.opts.transport;
    if (t !== "auto") return t;
    if (typeof WebSocket !== "undefined") return "websocket";
    if (typeof EventSource !== "undefined") return "sse";
    return "poll";
  }

  connect() {
    this.closedByUser = false;
    this.open();
  }

  open() {
    const kind = this.pickTransport();
    const since = this.since();
    this.asked = since || null;
    const token = encodeURIComponent(this.opts.token);
    const resume = since ? `&since=${encodeURIComponent(since)}` : "";
    const httpBase = this.url.replace(/^ws/, "http");
    const handlers = {
      frame: (f) => this.onFrame(f),
      closed: (code, reason) => this.onClosed(code, reason),
    };
    this.setState("connecting", { transport: kind });
    if (kind === "websocket") {
      const url = `${this.url}/ws?token=${token}${resume}`;
      this.transport = new WsTransport(url, this.opts.codec === "proto", handlers);
    } else if (kind === "sse") {
      this.transport = new SseTransport(httpBase, token, resume, handlers);
    } else {
      this.transport = new PollTransport(httpBase, token, resume, handlers);
    }
    this.transportKind = kind;
  }

  close() {
    this.closedByUser = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.transport?.close(1000, "client closed");
    this.transport = null;
    this.setState("closed");
  }

  /// Sends an UPSTREAM message; resolves with the backend's reply (Uint8Array) once acked.
  /// The key makes retries safe: the gateway forwards a key once and re-acks duplicates.
  async send(body, { key } = {}) {
    key = key || `${Date.now().toString(36)}-${(this.nextKey++).toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
    // Sealed once: every resend of this key carries the same bytes.
    const frame = { cmd: CMD.UPSTREAM, key, body: toBase64(await this.sealBody(bytesOf(body))) };
    return new Promise((resolve, reject) => {
      const p = { frame, resolve, reject, attempts: 0, timer: null };
      this.pending.set(key, p);
      this.transmit(p);
    });
  }

  /// Body encryption (AES-256-GCM, a 12-byte nonce first), as the gateway's --body-key does.
  cipherKey() {
    this.keyPromise ||= crypto.subtle.importKey("raw", fromBase64(this.opts.bodyKey), "AES-GCM", false, ["encrypt", "decrypt"]);
    return this.keyPromise;
  }

  async sealBody(bytes) {
    if (!this.opts.bodyKey || !bytes.length) return bytes;
    const iv = crypto.getRandomValues(new Uint8Array(12));
    const sealed = new Uint8Array(await crypto.subtle.encrypt({ name: "AES-GCM", iv }, await this.cipherKey(), bytes));
    const out = new Uint8Array(12 + sealed.length);
    out.set(iv);
    out.set(sealed, 12);
    return out;
  }

  async openBody(b64) {
    const bytes = fromBase64(b64);
    if (!this.opts.bodyKey || !bytes.length) return bytes;
    const plain = await crypto.subtle.decrypt({ name: "AES-GCM", iv: bytes.subarray(0, 12) }, await this.cipherKey(), bytes.subarray(12));
    return new Uint8Array(plain);
  }

  transmit(p) {
    clearTimeout(p.timer);
    if (p.attempts >= this.opts.maxSendAttempts) {
      this.pending.delete(p.frame.key);
      p.reject(new Error(`no ack for ${p.frame.key} after ${p.attempts} attempts`));
      return;
    }
    if (this.state === "open") {
      p.attempts++;
      this.transport.send(p.frame);
    }
    // Unacked (or not sent while disconnected): try again later; a reconnect resends at once.
    p.timer = this.later(this.opts.ackTimeoutMs, () => this.transmit(p));
  }

  onFrame(f) {
    switch (f.cmd) {
      case CMD.CONNECTED: {
        const c = f.connected || {};
        if (this.asked && c.recovered) {
          this.emit("recovered", { epoch: c.epoch, offset: Number(c.offset || 0), from: this.asked });
        } else if (this.asked) {
          this.discontinuity("not recovered", c);
        } else if (c.epoch) {
          this.stream = { epoch: c.epoch, offset: Number(c.offset || 0) };
          this.saveStream();
        }
        // An event stream that EventSource re-attached by itself resumes by Last-Event-ID.
        this.asked = null;
        this.heartbeatMs = c.heartbeatIntervalMs || 30000;
        this.attempt = 0;
        this.scheduleRefresh();
        this.setState("open", { transport: this.transportKind, linkId: c.linkId, nodeId: c.nodeId });
        this.emit("connected", c);
        this.startHeartbeat();
        for (const p of this.pending.values()) this.transmit(p);
        break;
      }
      case CMD.HEARTBEAT:
        break;
      case CMD.REFRESH:
        this.emit("refreshed", {});
        this.scheduleRefresh();
        break;
      case CMD.UPSTREAM_ACK: {
        const p = this.pending.get(f.key);
        if (p) {
          clearTimeout(p.timer);
          this.pending.delete(f.key);
          this.openBody(f.body).then(p.resolve, p.reject);
        }
        this.emit("ack", { key: f.key });
        break;
      }
      case CMD.DOWNSTREAM: {
        // Ack every copy that has a seq (a lost ack means a resend; best-effort messages have
        // none and want no ack); hand each key to the app once (a room's keys are its own).
        if (Number(f.seq || 0) > 0) this.transport?.send({ cmd: CMD.DOWNSTREAM_ACK, key: f.key });
        this.takeOffset(f);
        const once = f.room ? `${f.room}\u0000${f.key}` : f.key;
        if (this.seen.has(once)) {
          this.emit("duplicate", { key: f.key, room: f.room || "" });
          break;
        }
        this.seen.set(once, true);
        if (this.seen.size > this.opts.dedupKeys) {
          this.seen.delete(this.seen.keys().next().value);
        }
        this.openBody(f.body).then(
          (body) => this.emit("message", new Message(f, body)),
          () => this.emit("error", new Error(`push ${f.key}: body does not decrypt with bodyKey`)),
        );
        break;
      }
      case CMD.RATE_LIMITED: {
        const p = this.pending.get(f.key);
        if (p) {
          clearTimeout(p.timer);
          p.attempts = Math.max(0, p.attempts - 1); // the gateway did not process it
          p.timer = this.later(f.retryAfterMs || 1000, () => this.transmit(p));
        }
        this.emit("rateLimited", { key: f.key, retryAfterMs: f.retryAfterMs });
        break;
      }
      case CMD.REDIRECT: {
        const nodes = f.nodes || [];
        const n = nodes[Math.floor(Math.random() * nodes.length)];
        if (n && n.ip && n.port) {
          this.url = `${this.url.startsWith("wss") ? "wss" : "ws"}://${n.ip}:${n.port}`;
        }
        const wait = backoffDelay(0, f.retryAfterMs || 500, f.retryAfterMs || 500);
        this.emit("redirect", { nodes, waitMs: wait });
        this.redirectWaitMs = wait;
        break;
      }
      case CMD.KICKED:
        this.emit("kicked", { reason: f.reason });
        break;
      case CMD.ERROR: {
        const p = f.key && this.pending.get(f.key);
        const err = Object.assign(new Error(f.reason || f.code), { code: f.code });
        if (p) {
          clearTimeout(p.timer);
          this.pending.delete(f.key);
          p.reject(err);
        }
        this.emit("error", err);
        break;
      }
    }
  }

  startHeartbeat() {
    clearTimeout(this.heartbeatTimer);
    const beat = () => {
      if (this.state !== "open") return;
      this.transport.send({ cmd: CMD.HEARTBEAT });
      this.heartbeatTimer = this.later(this.heartbeatMs, beat);
    };
    this.heartbeatTimer = this.later(this.heartbeatMs, beat);
  }

  onClosed(code, reason) {
    this.transport = null;
    clearTimeout(this.heartbeatTimer);
    clearTimeout(this.refreshTimer);
    if (this.closedByUser) return;
    if (FINAL_CLOSES.has(code) || (code === 4005 && !this.opts.getToken)) {
      this.setState("closed", { code, reason });
      return;
    }
    if (code === 4005) {
      // The token ran out: reconnect with a fresh one.
      this.setState("reconnecting", { code, reason, waitMs: 0 });
      this.opts
        .getToken()
        .then((t) => {
          this.opts.token = t;
          if (!this.closedByUser) this.open();
        })
        .catch((e) => {
          this.emit("error", new Error(`getToken failed: ${e.message || e}`));
          this.setState("closed", { code, reason });
        });
      return;
    }
    const wait = this.redirectWaitMs ?? backoffDelay(this.attempt++, this.opts.backoffBaseMs, this.opts.backoffMaxMs);
    this.redirectWaitMs = undefined;
    this.setState("reconnecting", { code, reason, waitMs: wait });
    this.later(wait, () => {
      if (!this.closedByUser) this.open();
    });
  }
}

class WsTransport {
  constructor(url, proto, { frame, closed }) {
    this.proto = proto;
    this.ws = new WebSocket(url, [proto ? "ringway.v1.proto" : "ringway.v1.json"]);
    this.ws.binaryType = "arraybuffer";
    this.ws.onmessage = (e) =>
      frame(proto ? protoCodec.decode(new Uint8Array(e.data)) : JSON.parse(e.data));
    this.ws.onclose = (e) => closed(e.code, e.reason);
  }
  send(f) {
    if (this.ws.readyState !== WebSocket.OPEN) return;
    this.ws.send(this.proto ? protoCodec.encode(f) : JSON.stringify(f));
  }
  close(code, reason) {
    this.ws.onclose = null;
    this.ws.close(code, reason);
  }
}

/// POST /send, shared by the HTTP transports. A body of text/plain keeps the request "simple"
/// (no CORS preflight).
function postFrames(base, token, frames) {
  return fetch(`${base}/send?token=${token}`, {
    method: "POST",
    headers: { "Content-Type": "text/plain" },
    body: JSON.stringify(frames),
  });
}

/// Frames queued while a POST is in flight leave together in the next one, in order.
class Sender {
  constructor(base, token) {
    this.base = base;
    this.token = token;
    this.queue = [];
    this.busy = false;
  }
  send(f) {
    this.queue.push(f);
    if (!this.busy) this.flush();
  }
  async flush() {
    this.busy = true;
    while (this.queue.length) {
      const batch = this.queue.splice(0);
      try {
        await postFrames(this.base, this.token, batch);
      } catch {
        // Lost: UPSTREAM is resent on its ack timeout; a lost DOWNSTREAM_ACK means a resend.
      }
    }
    this.busy = false;
  }
}

/// What the HTTP transports share: upstream by POST, and one report of their end.
class HttpTransport {
  constructor(base, token, { frame, closed }) {
    this.base = base;
    this.token = token;
    this.frame = frame;
    this.closed = closed;
    this.sender = new Sender(base, token);
  }
  end(code, reason) {
    this.stop();
    if (this.closed) {
      const cb = this.closed;
      this.closed = null;
      cb(code, reason);
    }
  }
  send(f) {
    this.sender.send(f);
  }
  setToken(token) {
    this.token = token;
    this.sender.token = token;
  }
  close() {
    this.closed = null;
    this.stop();
  }
}

class SseTransport extends HttpTransport {
  constructor(base, token, resume, handlers) {
    super(base, token, handlers);
    // EventSource's own reconnects send the last id in Last-Event-ID, which the gateway
    // prefers to this `since`.
    this.es = new EventSource(`${base}/sse?token=${token}${resume}`);
    this.es.onmessage = (e) => this.frame(JSON.parse(e.data));
    this.es.addEventListener("close", (e) => {
      const { code, reason } = JSON.parse(e.data);
      this.end(code, reason);
    });
    // EventSource reconnects by itself (sending Last-Event-ID) unless the server refused it.
    this.es.onerror = () => {
      if (this.es.readyState === EventSource.CLOSED) this.end(1006, "event stream failed");
    };
  }
  stop() {
    this.es.close();
  }
}

class PollTransport extends HttpTransport {
  constructor(base, token, resume, handlers) {
    super(base, token, handlers);
    this.abort = new AbortController();
    this.resume = resume; // on the first poll only: the next ones continue the same link
    this.loop();
  }
  async loop() {
    let failures = 0;
    while (this.closed) {
      try {
        const url = `${this.base}/poll?token=${this.token}${this.resume}`;
        this.resume = "";
        const r = await fetch(url, { signal: this.abort.signal });
        if (!r.ok) throw new Error(`poll answered ${r.status}`);
        const { frames, close } = await r.json();
        failures = 0;
        for (const f of frames) this.frame(f);
        if (close) return this.end(close.code, close.reason);
      } catch (e) {
        if (!this.closed) return;
        if (++failures >= 2) return this.end(1006, String(e));
      }
    }
  }
  stop() {
    this.abort.abort();
  }
}
