#!/usr/bin/env bash
# Installs the benchmark peers from the registries into bench/.peers (not committed):
# sockudo from crates.io (its build needs protoc, which scripts/services.sh build-deps adds).
# The tokio-tungstenite and raw TCP echo peers are built from bench/peers with the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
SOCKUDO_VERSION=5.2.0
if ! [ -x bench/.peers/bin/sockudo ]; then
  scripts/services.sh build-deps
  echo "installing sockudo $SOCKUDO_VERSION from crates.io (a cold build takes ~15 minutes on 2 cores)"
  cargo install --locked --root bench/.peers sockudo --version "$SOCKUDO_VERSION"
fi
