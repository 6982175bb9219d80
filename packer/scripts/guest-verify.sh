#!/usr/bin/env bash
# Runs in the build VM (root) once provision/install.sh is done: every expected service is active, nothing failed, and
# kiln-ready says ready (the database, both Redis instances, then the app's health path, its contract's `health`,
# through nginx). Retries until READYZ_TIMEOUT, then fails with diagnostics.
# Env: CHECK_UNITS (systemd units), CHECK_PROGRAMS (supervisor programs; empty: kiln-web, and kiln-worker when the
# app's contract has worker groups: /srv/kiln/current/kiln-app.env), READYZ_TIMEOUT [600].
set -uo pipefail
timeout=${READYZ_TIMEOUT:-600}
if [ -z "${CHECK_PROGRAMS:-}" ]; then
  CHECK_PROGRAMS="kiln-web$(bash -c '. /srv/kiln/current/kiln-app.env && [ ${#KILN_APP_WORKERS[@]} -eq 0 ] || echo " kiln-worker"')"
fi
deadline=$(( $(date +%s) + timeout ))
echo "==> verify: boot state"
state=$(timeout "$timeout" systemctl is-system-running --wait 2>/dev/null || true)
echo "    system: ${state:-unknown} (uptime $(cut -d' ' -f1 /proc/uptime)s)"
problems() {
  local out="" u p st
  for u in ${CHECK_UNITS:-}; do
    st=$(systemctl is-active "$u" 2>/dev/null || true)
    [ "$st" = active ] || out+="unit $u is ${st:-missing}; "
  done
  if [ -n "${CHECK_PROGRAMS:-}" ]; then
    # A program with numprocs > 1 is a group (kiln-worker:kiln-worker-0, ...): every process must be RUNNING.
    local lines bad
    lines=$(supervisorctl status 2>/dev/null || true)
    for p in $CHECK_PROGRAMS; do
      st=$(awk -v p="$p" '$1 == p || index($1, p ":") == 1' <<<"$lines")
      bad=$(awk '$2 != "RUNNING" {printf "%s=%s ", $1, $2}' <<<"$st")
      if [ -z "$st" ]; then out+="program $p is missing; "; elif [ -n "$bad" ]; then out+="program $bad; "; fi
    done
  fi
  st=$(systemctl list-units --state=failed --no-legend --plain 2>/dev/null | awk '{print $1}' | tr '\n' ' ')
  [ -z "${st// /}" ] || out+="failed units: $st; "
  /usr/local/bin/kiln-ready >/tmp/readyz.json 2>&1 || out+="not ready: $(grep 'NOT READY (' /tmp/readyz.json | tr '\n' ' ')"
  printf '%s' "$out"
}

while :; do
  p=$(problems)
  if [ -z "$p" ]; then
    echo "    units active: ${CHECK_UNITS:-(none)}"
    echo "    programs RUNNING: ${CHECK_PROGRAMS:-(none)}"
    sed 's/^/    /' /tmp/readyz.json
    # The build log shows how full the image is (lib/common.sh's disk check: a warning, never a failure).
    # ... and whether it waits for a reboot (the login message's check; the infra suites fail on one).
    bash -c '. /usr/local/lib/kiln/lib/common.sh && disk_check && if r=$(reboot_pending); then warn "reboot pending: $r"; else log "no reboot pending"; fi'
    echo "<== verify: OK after $(( timeout - (deadline - $(date +%s)) ))s"
    exit 0
  fi
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "!!! verify FAILED: $p" >&2
    systemctl --no-pager list-units --state=failed >&2 || true
    for u in $(systemctl list-units --state=failed --no-legend --plain | awk '{print $1}') ${CHECK_UNITS:-}; do
      journalctl -b -u "$u" --no-pager -n 15 >&2 2>/dev/null || true
    done
    command -v supervisorctl >/dev/null && supervisorctl status >&2
    cat /tmp/readyz.json >&2 2>/dev/null
    exit 1
  fi
  echo "    waiting: $p"
  sleep 5
done
