#!/usr/bin/env bash
# step: the lb role's load balancer: HAProxy (the distro profile's PKG_LB) and kiln_lb.py, which checks the operator's
#       KILN_LB_BACKENDS and renders /etc/haproxy/haproxy.cfg from it; in every image, haproxy disabled and stopped:
#       only a host whose first boot chose KILN_ROLE=lb runs it (the roles design, issue 14)
set -euo pipefail
# shellcheck source=provision/lib/common.sh
. "$KILN_PROVISION_DIR/lib/common.sh"; load_distro

put usr/local/lib/kiln/kiln_lb.py 0644 || true
apt_install "${PKG_LB[@]}"
# The package's postinst enabled haproxy.service, and on a running system started it with the package's haproxy.cfg
# (which listens nowhere); a Kiln base disk's step 10 enabled it again. A host whose role is lb (common.sh: role_has)
# keeps it: its first boot enabled it, rendered its config and started it; on every other host it stays off.
if role_has lb; then exit 0; fi
if systemctl is-enabled -q haproxy.service 2>/dev/null; then
  systemctl disable --no-reload -q haproxy.service || die "cannot disable haproxy.service"
  changed "disabled haproxy.service"
fi
if booted && systemctl is-active -q haproxy.service; then
  systemctl stop haproxy.service || die "cannot stop haproxy.service"
  changed "stopped haproxy.service"
fi
