#!/usr/bin/env bash
# Runs one gateway node with no external service: in-memory idempotency, the built-in loopback
# backend, the HTTP push API. Installs the one build prerequisite (protoc) if it is missing.
#   scripts/run.sh [serve flags...]      e.g. scripts/run.sh --jwt-secret change-me-0123456789 --echo
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh build-deps
exec cargo run --release -- serve "$@"
