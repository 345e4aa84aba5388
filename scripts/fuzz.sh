#!/usr/bin/env bash
# Fuzzes what ringway reads from the outside (upgrade requests, WebSocket frames with and
# without deflate, both frame codecs, POST /send bodies, push API bodies and Kafka push
# records) with cargo-fuzz: libFuzzer and AddressSanitizer, on nightly Rust.
#
#   scripts/fuzz.sh [--if-available] [SECONDS_PER_TARGET] [TARGET...]
#                                  default 60 s, every target; --if-available skips (with a
#                                  warning) where no nightly toolchain can be had
#
# Each target starts from fuzz/seeds/<target>/ and keeps what it learns in fuzz/corpus/ (not
# committed), so longer local runs pick up where the last one stopped. A crash stops the run
# with the input in fuzz/artifacts/<target>/: fix it, then copy the input to
# fuzz/regressions/<target>/ so tests/fuzz_regressions.rs replays it on every test run.
# Longer runs: scripts/fuzz.sh 3600 ws_frames (one hour on the frame reader), or one target per
# core in parallel.
set -euo pipefail
cd "$(dirname "$0")/.."
optional=false
if [ "${1:-}" = --if-available ]; then optional=true; shift; fi
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(upgrade_request ws_frames frame_codecs send_body push_api)

scripts/services.sh build-deps
if ! rustup toolchain list | grep -q '^nightly' && ! rustup toolchain install nightly --profile minimal; then
  $optional || { echo "cargo fuzz needs a nightly toolchain" >&2; exit 1; }
  echo "WARNING: fuzzing skipped: no nightly toolchain here" >&2
  exit 0
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" fuzz/logs
  echo "== fuzzing $t for ${secs}s"
  status=0
  cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$secs" -max_len=65536 -timeout=10 -print_final_stats=1 \
    >"fuzz/logs/$t.log" 2>&1 || status=$?
  grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "fuzz/logs/$t.log" || true
  if [ "$status" != 0 ]; then
    tail -40 "fuzz/logs/$t.log" >&2
    echo "fuzz target $t failed: the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
