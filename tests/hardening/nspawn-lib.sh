#!/usr/bin/env bash
# Sourced helper: boot a root filesystem with systemd-nspawn (native speed) and run commands inside it.
# The root directory is never modified: it is booted with --volatile=overlay (writes go to a tmpfs).
#   nspawn_boot ROOT [NAME]   boots, waits for systemd to settle; sets NSPAWN_PID / NSPAWN_LEADER
#   nspawn_exec CMD...        runs CMD inside the booted container (all namespaces, as root)
#   nspawn_stop               powers the container off (SIGTERM to nspawn), kills it after 30 s
# NSPAWN_VETH=1: a veth pair instead of a loopback-only network; nspawn_boot then addresses it (host 10.213.7.1,
# container NSPAWN_ADDR=10.213.7.2, /30): a network namespace of our own, reachable from this host only.
# Host needs: systemd-container (systemd-nspawn), util-linux (nsenter). PID 1 on the host need not be systemd.

NSPAWN_PID=""
NSPAWN_LEADER=""
NSPAWN_LOG=""
export NSPAWN_ADDR=""

nspawn_boot() {
  local root=$1 name=${2:-kiln-harden-$$} state
  [ -x "$root/lib/systemd/systemd" ] || [ -x "$root/usr/lib/systemd/systemd" ] || {
    echo "nspawn: $root has no systemd" >&2; return 1; }
  command -v systemd-nspawn >/dev/null || { echo "nspawn: install systemd-container" >&2; return 1; }
  NSPAWN_LOG=$(mktemp /tmp/kiln-nspawn.XXXXXX.log)
  # --private-network: the container's sshd/nginx must not collide with the host's ports.
  local net=(--private-network)
  [ "${NSPAWN_VETH:-0}" = 1 ] && net=(--network-veth)
  systemd-nspawn -q -D "$root" -M "$name" -b --register=no --keep-unit --volatile=overlay "${net[@]}" \
    --console=read-only </dev/null >"$NSPAWN_LOG" 2>&1 &
  NSPAWN_PID=$!
  for _ in $(seq 1 100); do
    NSPAWN_LEADER=$(pgrep -P "$NSPAWN_PID" -x systemd || true)
    [ -n "$NSPAWN_LEADER" ] && break
    kill -0 "$NSPAWN_PID" 2>/dev/null || { echo "nspawn: container exited early:" >&2; cat "$NSPAWN_LOG" >&2; return 1; }
    sleep 0.2
  done
  [ -n "$NSPAWN_LEADER" ] || { echo "nspawn: no container init found" >&2; nspawn_stop; return 1; }
  for _ in $(seq 1 120); do
    state=$(nspawn_exec systemctl is-system-running 2>/dev/null || true)
    case $state in running|degraded) break ;; esac
    sleep 1
  done
  if [ "${NSPAWN_VETH:-0}" = 1 ]; then
    local hostif=ve-${name:0:12}
    ip link show "$hostif" >/dev/null 2>&1 || { echo "nspawn: no host interface $hostif (use a machine name of at most 12 characters)" >&2; return 1; }
    ip addr replace 10.213.7.1/30 dev "$hostif" && ip link set "$hostif" up
    nspawn_exec ip addr replace 10.213.7.2/30 dev host0
    nspawn_exec ip link set host0 up
    export NSPAWN_ADDR=10.213.7.2
  fi
  echo "nspawn: $root booted as $name (nspawn pid $NSPAWN_PID, init pid $NSPAWN_LEADER, state ${state:-unknown})" >&2
}

nspawn_exec() {
  nsenter -t "$NSPAWN_LEADER" -m -u -i -n -p -C -r -w -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb "$@"
}

nspawn_stop() {
  local _
  [ -n "$NSPAWN_PID" ] || return 0
  if kill -0 "$NSPAWN_PID" 2>/dev/null; then
    kill -TERM "$NSPAWN_PID" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$NSPAWN_PID" 2>/dev/null || true
  fi
  wait "$NSPAWN_PID" 2>/dev/null || true
  NSPAWN_PID=""
  [ -n "$NSPAWN_LOG" ] && rm -f "$NSPAWN_LOG"
}
