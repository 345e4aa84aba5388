// Pushes 1000 chat-like JSON messages (as base64 push bodies) to a link that negotiated
// permessage-deflate and to one that did not; prints what deflate took off the wire.
// Run by bench/deflate-savings.sh. Uses the `ws` package installed for the browser tests.
import WebSocket from "../tests/browser/node_modules/ws/index.js";
const [ws, admin, deflateToken, plainToken] = process.argv.slice(2);
const N = 1000;
const open = (token, deflate) => new Promise((res) => {
  const s = new WebSocket(`ws://${ws}/ws?token=${token}`, ["ringway.v1.json"], { perMessageDeflate: deflate });
  let n = 0; s.on("message", (d) => { const f = JSON.parse(d); if (f.cmd === "CMD_DOWNSTREAM") { n++; s.send(JSON.stringify({cmd:"CMD_DOWNSTREAM_ACK", key:f.key})); if (n === N) res(s); } });
  s.on("open", () => s.count = () => n);
  s.once("open", () => setTimeout(() => push(), 200));
});
let pushed = false;
async function push() {
  if (pushed) return; pushed = true;
  for (let i = 0; i < N; i++) {
    const msg = JSON.stringify({ type: "chat", conversation: "c-1842", from: "alice", to: ["bob", "carol"], text: `message ${i}: are we still on for the review at three? I moved the notes into the shared doc`, sent_at: 1795448207469 + i, client_msg_id: `m-${i}-x7q2` });
    await fetch(`http://${admin}/v1/push`, { method: "POST", headers: {"content-type":"application/json"}, body: JSON.stringify({ biz_id: 1, user_ids: ["dz", "pl"], key: `k${i}`, body: Buffer.from(msg).toString("base64") }) });
  }
}
await Promise.all([open(deflateToken, { threshold: 0 }), open(plainToken, false)]);
const m = await (await fetch(`http://${admin}/metrics`)).text();
const get = (n) => Number(m.split("\n").find((l) => l.startsWith(n + " ")).split(" ")[1]);
console.log(JSON.stringify({ pushes: N, deflated_out: get("ringway_deflated_out_total"), saved_bytes: get("ringway_deflate_saved_bytes_total") }));
process.exit(0);
