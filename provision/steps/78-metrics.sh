#!/usr/bin/env bash
# step: metrics for the operator's monitoring: prometheus-node-exporter on loopback (KILN_METRICS_LISTEN), its textfile
#       collector serving Kiln's textfiles (KILN_METRICS_DIR: backups, deploys, the rq queues), and the rq queues read
#       each minute (kiln-metrics-rq.timer) (README, "Metrics")
set -euo pipefail
# shellcheck source=provision/lib/common.sh
. "$KILN_PROVISION_DIR/lib/common.sh"; load_distro

# kiln-backup (77) and kiln-release (40) write here too, and create it when it is missing.
ensure_dir "$KILN_METRICS_DIR" 0755 root:root
# Where Kiln's textfiles were before node-exporter read them (its user cannot enter /var/lib/kiln): stale copies.
remove_path /var/lib/kiln/metrics

# The arguments before the package: on a running system its postinst starts it at once, and it must not listen on
# every address even then. dpkg keeps a configuration file that is already there (--force-confold) and puts its own
# beside it as .dpkg-dist, which goes.
args=$(render_vars "$KILN_FILES/etc/default/prometheus-node-exporter")
# (a here-string, not a pipe: a write_file that dies in a pipe's subshell would only read as "unchanged")
if write_file /etc/default/prometheus-node-exporter 0644 root:root <<<"$args"; then
  need_restart prometheus-node-exporter.service
fi
apt_install "${PKG_METRICS[@]}"
remove_path /etc/default/prometheus-node-exporter.dpkg-dist
svc_enable prometheus-node-exporter.service || true
# Nothing on the boot's path to the first served request needs it: it starts once the app answers, as fail2ban does
# (step 70).
if put etc/systemd/system/prometheus-node-exporter.service.d/kiln-after-web.conf; then need_restart daemon-reload; fi

# The rq queues' collector (kiln_metrics.py: step 40 installs it, kiln-release records the deploys with it).
unit=$(render_vars "$KILN_FILES/etc/systemd/system/kiln-metrics-rq.service")
if write_file /etc/systemd/system/kiln-metrics-rq.service 0644 root:root <<<"$unit"; then
  need_restart daemon-reload
fi
if put etc/systemd/system/kiln-metrics-rq.timer; then need_restart daemon-reload; fi
svc_enable kiln-metrics-rq.timer || true
