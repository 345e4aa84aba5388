#!/usr/bin/env bash
# Builds the ringway .deb: the binaries, the systemd units and service user, the tuning files,
# the Grafana dashboard and the Prometheus alert rules.
#   scripts/deb.sh                 release build, then target/debian/ringway_<version>_<arch>.deb
#   BIN_DIR=target/debug scripts/deb.sh   package binaries already built there (the tests do)
# Installs to: /usr/bin/ringway (and ringway-load when built), /lib/systemd/system/ringway.service
# and ringway@.service, /usr/lib/sysusers.d/ringway.conf, /etc/ringway/ringway.env (a conffile,
# kept on upgrade), /usr/share/ringway/{tuning,grafana,prometheus}/.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(awk -F'"' '/^version *=/ {print $2; exit}' Cargo.toml)
arch=$(dpkg --print-architecture)
if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release --locked -p ringway -p ringway-load
  BIN_DIR=target/release
fi
OUT=${OUT:-target/debian}
stage=$(mktemp -d)
chmod 0755 "$stage"
trap 'rm -rf "$stage"' EXIT

install -D -m 0755 "$BIN_DIR/ringway" "$stage/usr/bin/ringway"
[ -x "$BIN_DIR/ringway-load" ] && install -D -m 0755 "$BIN_DIR/ringway-load" "$stage/usr/bin/ringway-load"
for unit in ringway.service ringway@.service; do
  # The repo's units name /usr/local/bin (a hand install); the package installs to /usr/bin.
  install -d "$stage/lib/systemd/system"
  sed 's|/usr/local/bin/ringway|/usr/bin/ringway|' "tuning/$unit" > "$stage/lib/systemd/system/$unit"
done
install -D -m 0644 tuning/ringway.sysusers "$stage/usr/lib/sysusers.d/ringway.conf"
install -D -m 0640 /dev/null "$stage/etc/ringway/ringway.env"
cat > "$stage/etc/ringway/ringway.env" <<'ENV'
# Flags of ringway.service as RINGWAY_* variables (ringway serve --help lists them all).
# RINGWAY_JWT_SECRET=at-least-16-bytes-of-secret
# RINGWAY_LISTEN=0.0.0.0:8080
# RINGWAY_ADMIN_LISTEN=127.0.0.1:9090
ENV
for f in sysctl.conf limits.conf; do
  install -D -m 0644 "tuning/$f" "$stage/usr/share/ringway/tuning/$f"
done
install -D -m 0644 deploy/grafana/ringway.json "$stage/usr/share/ringway/grafana/ringway.json"
install -D -m 0644 deploy/prometheus/alerts.yml "$stage/usr/share/ringway/prometheus/alerts.yml"

install -d "$stage/DEBIAN"
cat > "$stage/DEBIAN/control" <<CONTROL
Package: ringway
Version: $version
Architecture: $arch
Maintainer: ringway developers <ringway@localhost>
Section: net
Priority: optional
Depends: libc6 (>= 2.34), libgcc-s1, zlib1g
Installed-Size: $(du -sk "$stage" | cut -f1)
Description: IM WebSocket gateway, thread-per-core on io_uring
 One link per device, upstream messages acked after the backend took them,
 downstream pushes acked and retransmitted, every undelivered push reported.
CONTROL
echo /etc/ringway/ringway.env > "$stage/DEBIAN/conffiles"
cat > "$stage/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  if command -v systemd-sysusers >/dev/null; then
    systemd-sysusers ringway.conf
  elif ! getent passwd ringway >/dev/null; then
    adduser --system --group --no-create-home --home /nonexistent ringway
  fi
  chgrp ringway /etc/ringway/ringway.env 2>/dev/null || true
  if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
fi
POSTINST
chmod 0755 "$stage/DEBIAN/postinst"

mkdir -p "$OUT"
deb="$OUT/ringway_${version}_${arch}.deb"
# Files owned by root in the package: as root directly, else through fakeroot. Debug builds
# are large: the tests skip compression.
as_root=()
[ "$(id -u)" = 0 ] || as_root=(fakeroot)
"${as_root[@]}" dpkg-deb --root-owner-group --build ${DEB_COMPRESS:+-Z"$DEB_COMPRESS"} "$stage" "$deb" >/dev/null
echo "$deb"
