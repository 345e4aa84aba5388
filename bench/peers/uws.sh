#!/usr/bin/env bash
# uWebSockets' echo server as the highest anchor of the echo benchmark: builds
# examples/EchoServer.cpp from a local checkout of uWebSockets (with uSockets in its
# uSockets/ directory: the snapshot is fetched by hand and never committed), plain TCP, no
# TLS, then runs bench/echo-vs-baseline.sh with it taking its turn in every round.
# Usage: bench/peers/uws.sh UWS_DIR [echo-vs-baseline.sh arguments...]
set -euo pipefail
UWS=$(cd "${1:?usage: bench/peers/uws.sh UWS_DIR [links seconds codec rounds pipeline]}" && pwd)
shift
cd "$(dirname "$0")/../.."
BIN=bench/.peers/uws-echo
mkdir -p bench/.peers
if [ ! -x "$BIN" ] || [ "$UWS/examples/EchoServer.cpp" -nt "$BIN" ]; then
  make -s -C "$UWS/uSockets" >/dev/null
  g++ -O3 -flto -std=c++20 -DLIBUS_NO_SSL -DUWS_NO_ZLIB -I "$UWS/src" -I "$UWS/uSockets/src" \
    "$UWS/examples/EchoServer.cpp" "$UWS/uSockets/uSockets.a" -o "$BIN"
fi
echo "uWebSockets $(git -C "$UWS" rev-parse --short HEAD 2>/dev/null || echo '(no git)'), uSockets $(git -C "$UWS/uSockets" rev-parse --short HEAD 2>/dev/null || echo '(no git)')"
UWS_ECHO=$PWD/$BIN bench/echo-vs-baseline.sh "$@"
