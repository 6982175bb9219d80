#!/usr/bin/env bash
# Kiln image cleanup (Packer only, last step before the snapshot). Makes the next boot a fresh first boot:
# no per-instance secrets/DB user/rows/certs/SSH host keys/machine-id, no logs, histories, apt lists, caches, build
# CA, timer stamps. The migrated schema of the app database stays (the first boot skips `migrate` when it matches).
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

step "database: drop the app user, keep the migrated schema of database kiln (first boot then skips migrate)"
# Kept: the tables and what `migrate` itself writes (django_migrations, and the content types and permissions of its
# post_migrate handlers); kiln-firstboot's record of that migrate (/var/lib/kiln/schema.migrated) describes them.
# Per-instance: the user kiln (its password is this build's), and every other row (sessions, admin log, users,
# records, written by the build's checks): emptied. A data migration of the app (RunPython/RunSQL) may have written
# rows that emptying would lose while django_migrations still says applied: then the database goes as a whole and
# the first boot migrates.
SCHEMA_KEEP="'django_migrations','django_content_type','auth_permission'"
if booted && systemctl is-active -q "$DB_SERVICE"; then
  "$DB_CLIENT" -e "DROP USER IF EXISTS 'kiln'@'localhost'; FLUSH PRIVILEGES;"
  if grep -lE 'RunPython|RunSQL' /srv/kiln/current/app/*/migrations/[0-9]*.py 2>/dev/null; then
    warn "the app has data migrations (above): dropping database kiln, the first boot will migrate"
    "$DB_CLIENT" -e "DROP DATABASE IF EXISTS kiln;"
    rm -f /var/lib/kiln/schema.migrated
  else
    mapfile -t rows < <("$DB_CLIENT" -N -B -e "SELECT table_name FROM information_schema.tables
      WHERE table_schema = 'kiln' AND table_type = 'BASE TABLE' AND table_name NOT IN ($SCHEMA_KEEP) ORDER BY 1")
    sql="SET FOREIGN_KEY_CHECKS = 0;"
    for t in "${rows[@]}"; do sql+=" TRUNCATE TABLE kiln.\`$t\`;"; done
    "$DB_CLIENT" -e "$sql"
    log "kept the schema of database kiln (${#rows[@]} tables emptied, $SCHEMA_KEEP kept), dropped user kiln"
  fi
else
  warn "$DB_SERVICE not running: user kiln not dropped, rows not emptied; dropping the schema record (first boot migrates)"
  rm -f /var/lib/kiln/schema.migrated
fi

step "stop redis, database; remove their data written during the build checks"
if booted; then systemctl stop redis-server@cache.service redis-server@queue.service "$DB_SERVICE" 2>/dev/null || true; fi
find /var/lib/redis/cache /var/lib/redis/queue -mindepth 1 -delete 2>/dev/null || true
# MySQL (Ubuntu) keeps per-instance identity in its datadir: server_uuid (auto.cnf) and the auto-generated TLS and RSA
# key pairs; it makes new ones at the next start. (MariaDB writes neither.)
rm -f /var/lib/mysql/auto.cnf /var/lib/mysql/*.pem

step "remove per-instance secrets, env, sizing, swap, TLS, first-boot marker, uploaded media, metrics, app logs"
rm -f /etc/kiln/secrets.env /etc/kiln/kiln.env /etc/kiln/overrides.env /var/lib/kiln/firstboot.done \
  /var/lib/kiln/provision.pending
rm -f /etc/redis/kiln-cache.auth.conf /etc/redis/kiln-queue.auth.conf
# Sized for the build VM by kiln-firstboot: each instance sizes itself (its memory) at its first boot.
rm -f "$DB_CONF_DIR/$KILN_DB_SIZING_CNF"
if grep -q "^$KILN_SWAPFILE " /proc/swaps 2>/dev/null; then swapoff "$KILN_SWAPFILE" || die "swapoff $KILN_SWAPFILE failed"; fi
rm -f "$KILN_SWAPFILE"
sed -i "\\#^$KILN_SWAPFILE #d" /etc/fstab || die "cannot remove $KILN_SWAPFILE from /etc/fstab"
find /etc/kiln/tls -mindepth 1 -delete 2>/dev/null || true
find /srv/kiln/shared/media -mindepth 1 -delete 2>/dev/null || true
# The build VM's queue depths are not the instance's (kiln-metrics-rq.timer writes its own within a minute of boot);
# kiln_deploy.prom stays: the image's release was deployed at build time, and a scrape names it from the first boot.
# (its timer stopped first, in this boot only: a run after the removal would write the file again.)
if booted; then systemctl stop kiln-metrics-rq.timer kiln-metrics-rq.service 2>/dev/null || true; fi
rm -f "$KILN_METRICS_DIR/kiln_rq.prom"

step "machine-id, SSH host keys, shell histories, root's SSH keys"
truncate -s 0 /etc/machine-id
rm -f /var/lib/dbus/machine-id
rm -f /etc/ssh/ssh_host_*
rm -f /root/.bash_history /root/.lesshst /root/.mysql_history /root/.python_history /root/.wget-hsts
rm -rf /root/.ssh /root/.cache
for h in /home/*; do [ -d "$h" ] && rm -f "$h"/.bash_history "$h"/.mysql_history "$h"/.python_history; done

step "build-time CA certificates"
# install.sh trusts KILN_BUILD_CA_DIR through a bundle outside the store, so a build leaves nothing here; a system
# provisioned by an older install.sh may still hold kiln-build/ in it. Rebuilding the store takes minutes under
# emulation: only when a CA was really in it.
ca_dirty=0
[ -d /usr/local/share/ca-certificates/kiln-build ] && ca_dirty=1
rm -rf /usr/local/share/ca-certificates/kiln-build
if [ "${KILN_KEEP_LOCAL_CA:-0}" != 1 ] && [ -n "$(find /usr/local/share/ca-certificates -mindepth 1 -print -quit 2>/dev/null)" ]; then
  find /usr/local/share/ca-certificates -mindepth 1 -delete
  ca_dirty=1
fi
if [ "$ca_dirty" -eq 1 ]; then update-ca-certificates --fresh >/dev/null; else log "no build CA in the trust store"; fi

step "apt lists and caches, pip caches"
apt-get clean
find /var/lib/apt/lists -mindepth 1 -delete
rm -f /var/cache/apt/*.bin
rm -rf /root/.cache/pip /srv/kiln/.cache /tmp/pip-* /var/tmp/pip-*
find /srv/kiln/releases -type d -name .cache -prune -exec rm -rf {} + 2>/dev/null || true

step "systemd timer stamps"
# A Persistent= timer whose stamp is older than its last due time fires at once at boot: the image's first boot,
# days after the bake, would run apt-daily(-upgrade), dpkg-db-backup, fstrim next to the app's start. Without a
# stamp the timers wait for their next due time.
rm -f /var/lib/systemd/timers/stamp-*

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
