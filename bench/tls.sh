#!/usr/bin/env bash
# TLS on the client port: handshakes per second (TCP connect + TLS + upgrade + JWT + CONNECTED)
# and memory per idle link, plain and over TLS, alternating, on the same build and cores. The
# certificate is a self-signed P-256 one made here with openssl; the load generator trusts it
# (--tls-ca).
# Usage: bench/tls.sh [links] [rounds]
source "$(dirname "$0")/common.sh"
LINKS=${1:-5000}
ROUNDS=${2:-3}
trap stop_server EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 -addext basicConstraints=critical,CA:FALSE \
  -keyout "$OUT/tls-key.pem" -out "$OUT/tls-cert.pem" 2>/dev/null
TLS=(--tls-cert "$OUT/tls-cert.pem" --tls-key "$OUT/tls-key.pem")
for round in $(seq "$ROUNDS"); do
  for mode in plain tls; do
    flags=() client=()
    if [ "$mode" = tls ]; then flags=("${TLS[@]}"); client=(--tls-ca "$OUT/tls-cert.pem"); fi
    start_server --heartbeat-timeout-ms 600000 "${flags[@]}"
    echo "== round $round, $mode: connect"
    taskset -c "$LOAD_CPU" target/release/ringway-load connect --server "$WS" \
      --jwt-secret "$SECRET" --links "$LINKS" --connect-rate 100000 \
      --sources 127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6 --user-prefix "c$round" "${client[@]}" \
      --json-out "$OUT/tls-connect-$mode-$round.json"
    stop_server
    start_server --heartbeat-timeout-ms 600000 "${flags[@]}"
    echo "== round $round, $mode: idle"
    taskset -c "$LOAD_CPU" target/release/ringway-load idle --server "$WS" \
      --jwt-secret "$SECRET" --links "$LINKS" --sources 127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6 \
      --server-pid "$SERVER_PID" "${client[@]}" --json-out "$OUT/tls-idle-$mode-$round.json"
    stop_server
  done
done
