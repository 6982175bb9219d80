#!/usr/bin/env bash
# Kiln image cleanup (Packer only, last step before the snapshot). Makes the next boot a fresh first boot:
# no per-instance secrets/DB/user/certs/SSH host keys/machine-id, no logs, histories, apt lists, caches, build CA.
# DESTRUCTIVE on a live server: runs only under Packer (PACKER_BUILDER_TYPE, set by Packer's shell provisioner),
# with KILN_CLEANUP_CONFIRM=yes, or with --yes.
#   KILN_KEEP_LOCAL_CA=1  keep /usr/local/share/ca-certificates/* (default: remove all of it, see below)
set -euo pipefail
KILN_PROVISION_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export KILN_PROVISION_DIR
# shellcheck source=provision/lib/common.sh
. "$KILN_PROVISION_DIR/lib/common.sh"
load_distro
[ "$(id -u)" -eq 0 ] || die "must run as root"
[ -n "${PACKER_BUILDER_TYPE:-}" ] || [ "${KILN_CLEANUP_CONFIRM:-}" = yes ] || [ "${1:-}" = --yes ] \
  || die "cleanup.sh wipes secrets, the app database and logs: set KILN_CLEANUP_CONFIRM=yes (image builds only)"
step() { printf '==> cleanup: %s\n' "$*"; }
t0=$(date +%s)

step "stop the app and web server"
if booted; then systemctl stop nginx.service supervisor.service 2>/dev/null || true; fi

step "drop the first-boot database and user"
if booted && systemctl is-active -q "$DB_SERVICE"; then
  "$DB_CLIENT" -e "DROP DATABASE IF EXISTS kiln; DROP USER IF EXISTS 'kiln'@'localhost'; FLUSH PRIVILEGES;"
else
  warn "$DB_SERVICE not running: database kiln / user kiln not dropped"
fi

step "stop redis, database; remove their data written during the build checks"
if booted; then systemctl stop redis-server@cache.service redis-server@queue.service "$DB_SERVICE" 2>/dev/null || true; fi
find /var/lib/redis/cache /var/lib/redis/queue -mindepth 1 -delete 2>/dev/null || true

step "remove per-instance secrets, env, TLS, first-boot marker, uploaded media, app logs"
rm -f /etc/kiln/secrets.env /etc/kiln/kiln.env /etc/kiln/overrides.env /var/lib/kiln/firstboot.done
rm -f /etc/redis/kiln-cache.auth.conf /etc/redis/kiln-queue.auth.conf
find /etc/kiln/tls -mindepth 1 -delete 2>/dev/null || true
find /srv/kiln/shared/media -mindepth 1 -delete 2>/dev/null || true

step "machine-id, SSH host keys, shell histories, root's SSH keys"
truncate -s 0 /etc/machine-id
rm -f /var/lib/dbus/machine-id
rm -f /etc/ssh/ssh_host_*
rm -f /root/.bash_history /root/.lesshst /root/.mysql_history /root/.python_history /root/.wget-hsts
rm -rf /root/.ssh /root/.cache
for h in /home/*; do [ -d "$h" ] && rm -f "$h"/.bash_history "$h"/.mysql_history "$h"/.python_history; done

step "build-time CA certificates"
rm -rf /usr/local/share/ca-certificates/kiln-build
if [ "${KILN_KEEP_LOCAL_CA:-0}" != 1 ]; then find /usr/local/share/ca-certificates -mindepth 1 -delete 2>/dev/null || true; fi
update-ca-certificates --fresh >/dev/null

step "apt lists and caches, pip caches"
apt-get clean
find /var/lib/apt/lists -mindepth 1 -delete
rm -f /var/cache/apt/*.bin
rm -rf /root/.cache/pip /srv/kiln/.cache /tmp/pip-* /var/tmp/pip-*
find /srv/kiln/releases -type d -name .cache -prune -exec rm -rf {} + 2>/dev/null || true

step "cloud-init instance state"
if command -v cloud-init >/dev/null; then cloud-init clean --logs --seed; fi

step "logs (all of /var/log, incl. subfolders) and journal"
if booted; then journalctl --rotate >/dev/null 2>&1 || true; journalctl --vacuum-time=1s >/dev/null 2>&1 || true; fi
rm -rf /var/log/journal/*/ 2>/dev/null || true
find /var/log -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' -o -name '*.xz' \) -delete
find /var/log -type f -exec truncate -s 0 {} +
rm -rf /tmp/* /var/tmp/* 2>/dev/null || true

step "discard free space"
sync
if command -v fstrim >/dev/null; then fstrim -av 2>/dev/null || warn "fstrim not supported here"; fi
printf '==> cleanup done in %ss: next boot is a fresh first boot\n' "$(( $(date +%s) - t0 ))"
