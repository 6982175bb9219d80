#!/usr/bin/env bash
# step: backups: kiln-backup (restic), its daily backup and weekly restore test timers; OFF until the operator gives
#       a repository and its password (README, "Backups and disaster recovery")
set -euo pipefail
# shellcheck source=provision/lib/common.sh
. "$KILN_PROVISION_DIR/lib/common.sh"; load_distro

apt_install "${PKG_BACKUP[@]}"
put usr/local/sbin/kiln-backup 0755 || true
put usr/local/lib/kiln/kiln_backup.py 0644 || true
# Results (kiln status reads them) and the Prometheus textfile (node-exporter's: step 78); the restic cache is rebuilt
# from the repository.
ensure_dir /var/lib/kiln/status 0755 root:root
ensure_dir "$KILN_METRICS_DIR" 0755 root:root
for unit in kiln-backup.service kiln-backup.timer kiln-restore-test.service kiln-restore-test.timer; do
  if put "etc/systemd/system/$unit"; then need_restart daemon-reload; fi
done
svc_enable kiln-backup.timer || true
svc_enable kiln-restore-test.timer || true
