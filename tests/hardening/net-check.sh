#!/usr/bin/env bash
# Fast-tier network check of a provisioned root file system (no VM): boot it with systemd-nspawn on a veth pair of
# its own (10.213.7.0/30, nothing else reachable), wait for nginx, then run port-scan.sh and tls-check.sh against it.
# ufw runs inside the container's network namespace, so the scan sees the firewall as a client would.
# Usage: tests/hardening/net-check.sh ROOTFS_DIR       (root; the directory is not modified: --volatile=overlay)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=${1:?usage: net-check.sh ROOTFS_DIR}
[ "$(id -u)" -eq 0 ] || { echo "net-check: needs root" >&2; exit 2; }
# shellcheck source=tests/hardening/nspawn-lib.sh
. "$HERE/nspawn-lib.sh"
trap nspawn_stop EXIT
NSPAWN_VETH=1 nspawn_boot "$ROOT" "kn$$"   # short name: host side is ve-kn<pid>, not shortened
for _ in $(seq 1 90); do
  nspawn_exec systemctl is-active -q nginx.service ufw.service && break
  sleep 2
done
nspawn_exec systemctl is-active nginx.service ufw.service ssh.service | paste -sd' ' | sed 's/^/net-check: nginx ufw ssh: /'
rc=0
"$HERE/port-scan.sh" "$NSPAWN_ADDR" || rc=1
TLS_CHECK_HOST=localhost "$HERE/tls-check.sh" "$NSPAWN_ADDR" 443 || rc=1
exit "$rc"
