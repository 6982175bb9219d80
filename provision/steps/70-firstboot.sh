#!/usr/bin/env bash
# step: first-boot unit (per-instance secrets, TLS, DB, migrations), the operator commands, SSH host keys at boot,
# supervisord woken at start (the path to the first served request)
set -euo pipefail
# shellcheck source=provision/lib/common.sh
. "$KILN_PROVISION_DIR/lib/common.sh"; load_distro

put usr/local/sbin/kiln-firstboot 0755 || true
put usr/local/sbin/kiln-letsencrypt 0755 || true
if put etc/systemd/system/kiln-firstboot.service; then need_restart daemon-reload; fi
svc_enable kiln-firstboot.service || true

# SSH host keys: where openssh ships sshd-keygen.service (Debian 13), it makes them at boot, off the path to the first
# served request; cloud-init is told not to make them itself in its network stage, which everything waits for.
# Elsewhere (Ubuntu 24.04) cloud-init's ssh module, or kiln-firstboot without cloud-init, makes them.
# (A drop-in for a unit that does not exist is inert; the cloud-init setting is not: only with sshd-keygen.)
if put etc/systemd/system/sshd-keygen.service.d/kiln.conf; then need_restart daemon-reload; fi
if [ -d /etc/cloud ] && { [ -e /usr/lib/systemd/system/sshd-keygen.service ] || [ -e /lib/systemd/system/sshd-keygen.service ]; }; then
  put etc/cloud/cloud.cfg.d/60-kiln-ssh-hostkeys.cfg || true
fi

# supervisord waits up to 1 s for a client before it spawns its programs (see the unit): woken at every start.
if put etc/systemd/system/kiln-supervisor-kick.service; then need_restart daemon-reload; fi
svc_enable kiln-supervisor-kick.service || true
