#!/usr/bin/env bash
# Host tuning for ringway: compares the running kernel with tuning/sysctl.conf and this shell's
# limits with what a large node needs.
#   scripts/tune.sh            dry run: each setting with its current and wanted value
#   scripts/tune.sh --check    the same, exit 1 if anything must change (for monitoring)
#   scripts/tune.sh --apply    set what must change (root), persist only that, then --check
# A single number is a minimum (a host already above it is left alone), except the settings in
# EXACT, which must match, as must every multi-value setting (ranges, memory triples, port
# lists). `ram/N` in sysctl.conf is the host's RAM in 4 KiB pages divided by N.
# Tests point it at a fake tree: PROC_SYS (default /proc/sys), MEMINFO (/proc/meminfo) and
# SYSCTL_D (/etc/sysctl.d).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:---dry-run}
case "$mode" in --dry-run|--check|--apply) ;; *) echo "usage: $0 [--dry-run|--check|--apply]" >&2; exit 2 ;; esac
PROC_SYS=${PROC_SYS:-/proc/sys}
MEMINFO=${MEMINFO:-/proc/meminfo}
SYSCTL_D=${SYSCTL_D:-/etc/sysctl.d}
EXACT=" net.ipv4.tcp_tw_reuse net.ipv4.tcp_fin_timeout "

ram_pages=$(( $(awk '/^MemTotal:/ {print $2}' "$MEMINFO") / 4 ))
# `ram/8` → the host's RAM in pages / 8; anything else stays as written.
resolve() {
  local out=() v
  for v in $1; do
    if [[ "$v" =~ ^ram/([0-9]+)$ ]]; then v=$(( ram_pages / BASH_REMATCH[1] )); fi
    out+=("$v")
  done
  echo "${out[*]}"
}

row() { printf '%-36s %-28s %-28s %s\n' "$@"; }
changes=()
short=0
row setting current wanted state
while IFS= read -r line; do
  line=${line%%#*}
  [[ "$line" =~ ^[[:space:]]*$ ]] && continue
  key=$(echo "${line%%=*}" | xargs)
  want=$(resolve "$(echo "${line#*=}" | xargs)")
  path=$PROC_SYS/${key//.//}
  if [ ! -e "$path" ]; then
    row "$key" "-" "$want" "absent (skipped)"
    continue
  fi
  have=$(xargs < "$path")
  state=CHANGE
  if [ "$have" = "$want" ]; then
    state=ok
  elif [[ "$EXACT" != *" $key "* && "$want" =~ ^[0-9]+$ && "$have" =~ ^[0-9]+$ ]] \
    && [ "$have" -ge "$want" ]; then
    state=ok
  fi
  [ "$state" = ok ] || changes+=("$key = $want")
  row "$key" "$have" "$want" "$state"
done < tuning/sysctl.conf

# The limits of this shell (a systemd unit sets its own: LimitNOFILE, LimitMEMLOCK).
nofile=$(ulimit -n); memlock=$(ulimit -l)
if [ "$nofile" = unlimited ] || [ "$nofile" -ge 1048576 ]; then s=ok; else s="CHANGE (limits.conf or LimitNOFILE)"; short=$((short + 1)); fi
row "ulimit -n (this shell)" "$nofile" 1048576 "$s"
if [ "$memlock" = unlimited ]; then s=ok; else s="CHANGE (limits.conf or LimitMEMLOCK)"; short=$((short + 1)); fi
row "ulimit -l (this shell, KiB)" "$memlock" unlimited "$s"

if [ "$mode" = --apply ] && [ ${#changes[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || [ "$PROC_SYS" != /proc/sys ] || { echo "--apply needs root" >&2; exit 1; }
  # Persist only what had to change, so a reboot never lowers a larger host setting.
  mkdir -p "$SYSCTL_D"
  { echo "# written by ringway scripts/tune.sh from tuning/sysctl.conf"; printf '%s\n' "${changes[@]}"; } \
    > "$SYSCTL_D/90-ringway.conf"
  for c in "${changes[@]}"; do
    key=${c%% = *}
    echo "${c#* = }" > "$PROC_SYS/${key//.//}"
  done
  if [ "$SYSCTL_D" = /etc/sysctl.d ]; then
    install -m 0644 tuning/limits.conf /etc/security/limits.d/90-ringway.conf 2>/dev/null || true
  fi
  echo "applied ${#changes[@]} settings (limits take effect at the next login); checking again:"
  exec "$0" --check
fi
if [ "$mode" = --check ] && [ $(( ${#changes[@]} + short )) -gt 0 ]; then
  echo "${#changes[@]} kernel settings differ from tuning/sysctl.conf, $short limits are short" >&2
  exit 1
fi
