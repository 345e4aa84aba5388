#!/usr/bin/env bash
# WebSocket conformance: the Autobahn testsuite's fuzzing client against a ringway node in
# conformance mode (--ws-echo: every data message comes back as it was sent, through the real
# socket, framing, permessage-deflate and closing code).
#
#   scripts/autobahn.sh [--if-available] [--tls] [--debug] [quick|full|CASE...]
#
#   quick  (default) every case of sections 1-7 and 10, and cases 1-9 of each permessage-deflate
#          group (12.x, 13.x): 355 cases, about 2 minutes
#   full   all 517 cases, 9.x (up to 16 MiB messages) and all of 12.x/13.x included: about 11
#          minutes, the Python client being the slow side
#   CASE   case ids or patterns as Autobahn takes them, e.g. 6.4.* 12.2.9
#
# --debug runs the debug build `cargo test` already made, instead of building a release binary
# (the test suite does this: the verdicts are the same, and a cold release build takes minutes).
#
# --tls runs the same cases over wss://: the node gets a self-signed certificate (made here with
# openssl) and the suite's client speaks TLS to it, so the rustls path (records split across
# reads, TLS close_notify) is held to the same verdicts.
#
# Exits 1 if any case is FAILED (or the suite could not run); NON-STRICT and INFORMATIONAL
# are listed, not failures. The report (HTML and JSON per case) lands in target/autobahn/.
#
# The testsuite is Python 2 code (the PyPI release, installed unchanged). Python 2.7 comes
# from Debian 11's packages, unpacked into a cache folder (nothing is installed system-wide);
# its pip installs autobahntestsuite there. --if-available: when that cannot be set up (no
# Debian 11 packages on the mirror), say so and exit 0.
set -euo pipefail
cd "$(dirname "$0")/.."

if_available=0
tls=0
profile=release
while [ $# -gt 0 ]; do
  case "$1" in
    --if-available) if_available=1; shift ;;
    --tls) tls=1; shift ;;
    --debug) profile=debug; shift ;;
    *) break ;;
  esac
done
mode=${1:-quick}

CACHE=${RINGWAY_AUTOBAHN_CACHE:-$HOME/.cache/ringway/autobahn}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE_VERSION=25.10.1
ROOT=$CACHE/root
SITE=$ROOT/usr/lib/python2.7/dist-packages
PY2=$ROOT/usr/bin/python2.7

py2() {
  LD_LIBRARY_PATH=$ROOT/usr/lib/x86_64-linux-gnu PYTHONHOME=$ROOT/usr \
    C_INCLUDE_PATH=$ROOT/usr/include/python2.7:$ROOT/usr/include "$PY2" "$@"
}

install_python2() {
  local packages=(python2.7-minimal libpython2.7-minimal libpython2.7-stdlib libssl1.1 libffi7
    python2.7-dev libpython2.7-dev)
  mkdir -p "$CACHE/debs" "$ROOT"
  curl -fsS "$MIRROR/dists/bullseye/main/binary-amd64/Packages.xz" | xz -dc > "$CACHE/Packages"
  for p in "${packages[@]}"; do
    local file
    file=$(awk -v p="Package: $p" '$0 == p {f = 1} f && /^Filename:/ {print $2; exit}' "$CACHE/Packages")
    [ -n "$file" ] || { echo "autobahn: $p not in Debian 11's index" >&2; return 1; }
    curl -fsS -o "$CACHE/debs/${file##*/}" "$MIRROR/$file"
    dpkg -x "$CACHE/debs/${file##*/}" "$ROOT"
  done
  py2 -c 'import ssl, zlib' >/dev/null
}

install_suite() {
  # pip 20.3 is the last with Python 2 support: bootstrap it from its wheel.
  python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 27 -d "$CACHE/wheels" pip==20.3.4 setuptools==44.1.1 wheel==0.37.1
  mkdir -p "$SITE"
  py2 "$CACHE/wheels/pip-20.3.4-py2.py3-none-any.whl/pip" install -q --disable-pip-version-check \
    --no-warn-script-location --target "$SITE" "$CACHE"/wheels/*.whl 2>&1 | grep -vE 'DEPRECATION|Target directory' || true
  py2 -m pip install -q --disable-pip-version-check --no-warn-script-location --target "$SITE" \
    "autobahntestsuite==$SUITE_VERSION" 2>&1 | grep -vE 'DEPRECATION|Target directory' || true
  py2 -c 'import autobahntestsuite' >/dev/null
}

ready() { py2 -c 'import autobahntestsuite' >/dev/null 2>&1; }

if ! ready; then
  if ! { [ -x "$PY2" ] || install_python2; } || ! install_suite; then
    if [ "$if_available" = 1 ]; then
      echo "autobahn: SKIPPED, Python 2.7 or autobahntestsuite could not be installed here"
      exit 0
    fi
    echo "autobahn: could not install Python 2.7 and autobahntestsuite" >&2
    exit 1
  fi
fi

case "$mode" in
  quick)
    cases='"1.*","2.*","3.*","4.*","5.*","6.*","7.*","10.*","12.*","13.*"'
    exclude='"12.*.1[0-8]","13.*.1[0-8]"' ;;
  full) cases='"*"'; exclude='' ;;
  *)
    cases=$(printf '"%s",' "$@"); cases=${cases%,}
    exclude='' ;;
esac

if [ "$profile" = release ]; then
  cargo build --release --locked -q --bin ringway
else
  cargo build --locked -q --bin ringway
fi
bin=target/$profile/ringway
out=target/autobahn
scheme=ws
tls_args=()
if [ "$tls" = 1 ]; then
  out=target/autobahn-tls
  scheme=wss
fi
rm -rf "$out" && mkdir -p "$out"
if [ "$tls" = 1 ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 -addext basicConstraints=critical,CA:FALSE \
    -keyout "$out/key.pem" -out "$out/cert.pem" 2>/dev/null
  tls_args=(--tls-cert "$out/cert.pem" --tls-key "$out/key.pem")
fi
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port=$(free_port)
admin=$(free_port)
secret=autobahn-conformance-secret
# Room for the suite's largest messages (16 MiB in 9.x) both ways.
"$bin" serve --jwt-secret "$secret" --listen "127.0.0.1:$port" \
  --admin-listen "127.0.0.1:$admin" --workers 1 --ws-echo \
  --max-message-bytes 20000000 --max-outbound-bytes 40000000 "${tls_args[@]}" \
  >"$out/ringway.log" 2>&1 &
gateway=$!
trap 'kill $gateway 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
token=$("$bin" token --jwt-secret "$secret" --user autobahn)
cat >"$out/spec.json" <<EOF
{"outdir": "$PWD/$out/report",
 "servers": [{"agent": "ringway", "url": "$scheme://127.0.0.1:$port/ws?token=$token"}],
 "cases": [$cases], "exclude-cases": [$exclude], "exclude-agent-cases": {}}
EOF
echo "autobahn: running ${*:-quick} against ringway on $scheme://127.0.0.1:$port (log: $out/wstest.log)"
(cd "$out" && py2 -m autobahntestsuite.wstest -m fuzzingclient -s spec.json >wstest.log 2>&1)

python3 - "$out/report/index.json" <<'EOF'
import collections, json, sys
cases = json.load(open(sys.argv[1]))["ringway"]
key = lambda c: [int(x) for x in c.split(".")]
tally = collections.Counter()
listed = []
for case in sorted(cases, key=key):
    r = cases[case]
    verdicts = {r["behavior"], r["behaviorClose"]}
    worst = next((v for v in ("FAILED", "UNIMPLEMENTED", "WRONG CODE", "UNCLEAN", "NON-STRICT",
                              "INFORMATIONAL") if v in verdicts), "OK")
    tally[worst] += 1
    if worst != "OK":
        listed.append(f"  {case}: {r['behavior']} / close {r['behaviorClose']}")
print(f"autobahn: {len(cases)} cases: " + ", ".join(f"{v} {n}" for v, n in tally.most_common()))
print("\n".join(listed))
bad = sum(n for v, n in tally.items() if v in ("FAILED", "UNIMPLEMENTED", "WRONG CODE", "UNCLEAN"))
sys.exit(1 if bad else 0)
EOF
