#!/usr/bin/env bash
# Host tuning for ringway: compares the running kernel with tuning/sysctl.conf and this shell's
# limits with what a large node needs.
#   scripts/tune.sh            dry run: each setting with its current and wanted value
#   scripts/tune.sh --check    the same, exit 1 if anything must change (for monitoring)
#   scripts/tune.sh --apply    raise what is short (root), persist only that, then --check
# Single-number settings are minimums: a host already above them is left alone. Multi-number
# ones (ranges, memory triples) must match.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:---dry-run}
case "$mode" in --dry-run|--check|--apply) ;; *) echo "usage: $0 [--dry-run|--check|--apply]" >&2; exit 2 ;; esac

row() { printf '%-36s %-28s %-28s %s\n' "$@"; }
changes=()
row setting current wanted state
while IFS= read -r line; do
  line=${line%%#*}
  [[ "$line" =~ ^[[:space:]]*$ ]] && continue
  key=$(echo "${line%%=*}" | xargs)
  want=$(echo "${line#*=}" | xargs)
  path=/proc/sys/${key//.//}
  if [ ! -e "$path" ]; then
    row "$key" "-" "$want" "absent (skipped)"
    continue
  fi
  have=$(xargs < "$path")
  state=CHANGE
  if [ "$have" = "$want" ]; then
    state=ok
  elif [[ "$want" =~ ^[0-9]+$ && "$have" =~ ^[0-9]+$ ]] && [ "$have" -ge "$want" ]; then
    state=ok
  fi
  [ "$state" = ok ] || changes+=("$key = $want")
  row "$key" "$have" "$want" "$state"
done < tuning/sysctl.conf

nofile=$(ulimit -n); memlock=$(ulimit -l)
if [ "$nofile" = unlimited ] || [ "$nofile" -ge 1048576 ]; then s=ok; else s="CHANGE (limits.conf or LimitNOFILE)"; fi
row "ulimit -n (this shell)" "$nofile" 1048576 "$s"
if [ "$memlock" = unlimited ]; then s=ok; else s="CHANGE (limits.conf or LimitMEMLOCK)"; fi
row "ulimit -l (this shell, KiB)" "$memlock" unlimited "$s"

if [ "$mode" = --apply ] && [ ${#changes[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "--apply needs root" >&2; exit 1; }
  # Persist only what had to change, so a reboot never lowers a larger host setting.
  { echo "# written by ringway scripts/tune.sh from tuning/sysctl.conf"; printf '%s\n' "${changes[@]}"; } \
    > /etc/sysctl.d/90-ringway.conf
  install -m 0644 tuning/limits.conf /etc/security/limits.d/90-ringway.conf 2>/dev/null || true
  sysctl -e -p /etc/sysctl.d/90-ringway.conf >/dev/null
  echo "applied ${#changes[@]} settings; checking again:"
  exec "$0" --check
fi
if [ "$mode" = --check ] && [ ${#changes[@]} -gt 0 ]; then
  echo "${#changes[@]} kernel settings are short of tuning/sysctl.conf" >&2
  exit 1
fi
