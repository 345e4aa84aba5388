#!/usr/bin/env bash
# What permessage-deflate saves on chat-like pushes (355-byte JSON frames with a base64 body),
# with one shared context per core (the default) and with per-link context takeover.
# Usage: bench/deflate-savings.sh    (needs scripts/services.sh install for the ws package)
source "$(dirname "$0")/common.sh"
trap stop_server EXIT
token() { target/release/ringway token --jwt-secret "$SECRET" --user "$1"; }
for mode in shared takeover; do
  flags=()
  [ "$mode" = takeover ] && flags=(--deflate-takeover)
  start_server "${flags[@]}"
  echo "$mode: $(node bench/deflate-savings.mjs "$WS" "$ADMIN" "$(token dz)" "$(token pl)")"
  stop_server
done
