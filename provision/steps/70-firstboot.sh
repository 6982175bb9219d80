#!/usr/bin/env bash
# step: first-boot unit (per-instance secrets, TLS, DB, migrations) and the operator commands
set -euo pipefail
# shellcheck source=provision/lib/common.sh
. "$KILN_PROVISION_DIR/lib/common.sh"; load_distro

put usr/local/sbin/kiln-firstboot 0755 || true
put usr/local/sbin/kiln-letsencrypt 0755 || true
if put etc/systemd/system/kiln-firstboot.service; then need_restart daemon-reload; fi
svc_enable kiln-firstboot.service || true
