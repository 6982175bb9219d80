#!/usr/bin/env bash
# step: the disk never fills silently: logrotate (the packages' rotation configs), the journal capped, old exports and
#       releases removed by a daily timer (kiln-retention)
set -euo pipefail
# shellcheck source=provision/lib/common.sh
. "$KILN_PROVISION_DIR/lib/common.sh"; load_distro

# Rotation of every log under /var/log (tests/infra/logcover.py names what rotates each file):
#  - logrotate, daily by its own timer, for the logs of nginx, fail2ban, apt, dpkg, unattended-upgrades, cloud-init,
#    wtmp/btmp: their packages ship the stanzas, minbase (no Recommends) only lacks logrotate itself;
#  - supervisord for its own log and the app's (/var/log/kiln): files/etc/supervisor/conf.d/kiln.conf (step 50);
#  - journald for the journal, capped here; auditd and sysstat for theirs (their packages' settings).
apt_install "${PKG_LOGS[@]}"
svc_enable logrotate.timer || true
if put etc/systemd/journald.conf.d/90-kiln.conf; then need_restart systemd-journald.service; fi

# Retention of what the app and the deploys leave behind (values: kiln-retention.service).
put usr/local/sbin/kiln-retention 0755 || true
for unit in kiln-retention.service kiln-retention.timer; do
  if put "etc/systemd/system/$unit"; then need_restart daemon-reload; fi
done
svc_enable kiln-retention.timer || true
