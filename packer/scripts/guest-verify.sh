#!/usr/bin/env bash
# Runs in the build VM (root) once provision/install.sh is done: `kiln status` (the operator's command, the one check
# of a server's state) says nothing is wrong: every Kiln unit active and none failed, every supervisor program RUNNING
# (kiln-web, and the worker groups of the app's contract), and kiln-ready's checks pass (the database, both Redis
# instances, then the app's health path, its contract's `health`, through nginx). Its warnings (disk use, a pending
# reboot) are printed, not failures. Retries until READYZ_TIMEOUT, then fails with diagnostics.
# Env: CHECK_UNITS (systemd units), CHECK_PROGRAMS (supervisor programs; a group's name covers its processes): names
# that must also be among what kiln status reports running (packer's check_units; kiln status has its own list),
# READYZ_TIMEOUT [600].
set -uo pipefail
timeout=${READYZ_TIMEOUT:-600}
deadline=$(( $(date +%s) + timeout ))
echo "==> verify: boot state"
state=$(timeout "$timeout" systemctl is-system-running --wait 2>/dev/null || true)
echo "    system: ${state:-unknown} (uptime $(cut -d' ' -f1 /proc/uptime)s)"
problems() { # what kiln status finds wrong (exit 3: its problems), and any CHECK_* name it does not report running
  /usr/local/sbin/kiln status --json >/tmp/kiln-status.json 2>/tmp/kiln-status.err
  python3 - "${CHECK_UNITS:-}" "${CHECK_PROGRAMS:-}" <<'PY'
import json, sys
try:
    s = json.load(open("/tmp/kiln-status.json"))
except ValueError as exc:
    print(f"kiln status --json gave no report ({exc}): {open('/tmp/kiln-status.err').read()[-500:]}", end="")
    sys.exit()
out = list(s["problems"]) if s["exit"] == 3 else []
units = {u["unit"]: u for u in s["units"]}
for name in sys.argv[1].split():
    u = units.get(name) or units.get(f"{name}.service")
    if not (u and u["ok"]):
        out.append(f"unit {name} is {u['state'] if u else 'not reported'}")
progs = s["programs"]
for name in sys.argv[2].split():
    mine = [p for p in progs if p["program"] == name or p["program"].startswith(f"{name}:")]
    if not mine or not all(p["ok"] for p in mine):
        out.append(f"program {name}: {', '.join(p['program'] + '=' + p['state'] for p in mine) or 'missing'}")
print("; ".join(out), end="")
PY
}

while :; do
  p=$(problems)
  if [ -z "$p" ]; then
    /usr/local/sbin/kiln status | sed 's/^/    /'
    echo "<== verify: OK after $(( timeout - (deadline - $(date +%s)) ))s"
    exit 0
  fi
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "!!! verify FAILED: $p" >&2
    /usr/local/sbin/kiln status >&2
    for u in $(systemctl list-units --state=failed --no-legend --plain | awk '{print $1}') ${CHECK_UNITS:-}; do
      journalctl -b -u "$u" --no-pager -n 15 >&2 2>/dev/null || true
    done
    exit 1
  fi
  echo "    waiting: $p"
  sleep 5
done
