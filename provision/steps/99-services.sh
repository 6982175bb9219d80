#!/usr/bin/env bash
# step: (booted systems only) apply changes: restart/reload what changed, run first boot if needed, start all
set -euo pipefail
# shellcheck source=provision/lib/common.sh
. "$KILN_PROVISION_DIR/lib/common.sh"; load_distro

if ! booted; then
  log "no systemd running (image build / chroot): services are enabled and start at boot, after kiln-firstboot"
  rm -f "$KILN_PENDING" || die "cannot clear $KILN_PENDING"
  exit 0
fi
act() { log "$*"; "$@"; }

if pending restart daemon-reload; then act systemctl daemon-reload; fi
# journald reads its configuration only when it starts (its streams survive the restart: they are in its fd store).
if pending restart systemd-journald.service; then act systemctl restart systemd-journald.service; fi
# Only the units of this host's role run (common.sh: role_has; the first boot disables the others).
if role_has db; then
  if pending restart "$DB_SERVICE"; then act systemctl restart "$DB_SERVICE"; fi
  systemctl is-active -q "$DB_SERVICE" || act systemctl start "$DB_SERVICE"
fi
# First boot of this instance (Vagrant provisions a running VM; Packer reboots, then the marker matches).
[ "$(cat /var/lib/kiln/firstboot.done 2>/dev/null || true)" = "$(cat /etc/machine-id)" ] || act systemctl start kiln-firstboot-secrets.service kiln-firstboot.service kiln-firstboot-db.service
for name in cache queue; do
  role_has redis || break
  unit=redis-server@$name.service
  if pending restart "$unit" && systemctl is-active -q "$unit"; then act systemctl restart "$unit"; fi
  systemctl is-active -q "$unit" || act systemctl start "$unit"
done
if ! role_has web && ! role_has workers; then
  :
elif systemctl is-active -q supervisor.service; then
  # update is a no-op when nothing changed, and it also heals a run that died before reaching this step.
  supervisorctl update >/dev/null
  if pending restart kiln-web && role_has web; then act supervisorctl restart kiln-web; fi
  # graceful: TERM, then up to stopwaitsecs for a running job to finish
  # (the app's worker groups, if it has any: kiln-release renders them from its contract)
  if pending restart kiln-worker && supervisorctl avail | grep -q '^kiln-worker:'; then
    act supervisorctl restart 'kiln-worker:*'
  fi
else
  act systemctl start supervisor.service
fi
if ! role_has web; then
  :
elif systemctl is-active -q nginx.service; then
  if pending reload nginx; then
    nginx -t -q || die "nginx -t rejects the configuration: the running nginx keeps the old one"
    act systemctl reload nginx.service
  fi
else
  act systemctl start nginx.service
fi
# node-exporter reads its arguments (/etc/default/prometheus-node-exporter, step 78) only when it starts. (Not there
# before step 78 has run once: `install.sh 40` on a server provisioned before it.)
unit=prometheus-node-exporter.service
if systemctl cat "$unit" >/dev/null 2>&1; then
  if pending restart "$unit" && systemctl is-active -q "$unit"; then act systemctl restart "$unit"; fi
  systemctl is-active -q "$unit" || act systemctl start "$unit"
fi
# An enabled timer starts with timers.target at boot; on a running system, now: each enabled Kiln timer (retention,
# backup, restore test, the app's scheduled commands).
timers=$(systemctl list-unit-files --state=enabled --no-legend 'kiln-*.timer' | awk '{print $1}') \
  || die "cannot list the enabled Kiln timers"
for timer in $timers; do
  systemctl is-active -q "$timer" || act systemctl start "$timer"
done
# Everything pending is applied (set -e: a failed restart stopped this step before here, and stays pending).
rm -f "$KILN_PENDING" || die "cannot clear $KILN_PENDING"
