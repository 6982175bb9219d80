#!/usr/bin/env bash
# step: (booted systems only) apply the hardening changes of steps 80-88 to the running system
set -euo pipefail
# shellcheck source=provision/lib/common.sh
. "$KILN_PROVISION_DIR/lib/common.sh"; load_distro

if ! booted; then
  log "no systemd running: sshd, fail2ban, auditd, sysctls and mount options take effect at boot"
  exit 0
fi
act() { log "$*"; "$@"; }

if pending restart daemon-reexec; then act systemctl daemon-reexec
elif pending restart daemon-reload; then act systemctl daemon-reload; fi

# sshd: reload keeps open sessions (a Packer/Vagrant provisioning session survives); the config was validated
# by 81-ssh.sh with sshd -t. Ubuntu 24.04 uses socket activation: each connection reads the new config anyway.
if pending reload ssh.service && systemctl is-active -q ssh.service; then act systemctl reload ssh.service; fi

in_container=0; systemd-detect-virt -q --container && in_container=1
if pending restart fail2ban.service || ! systemctl is-active -q fail2ban.service; then
  act systemctl restart fail2ban.service
fi
if [ "$in_container" -eq 0 ]; then
  # auditd refuses a manual restart (RefuseManualStop): load the rules into the kernel instead.
  if systemctl is-active -q auditd.service; then
    if pending restart auditd.service; then act augenrules --load; fi
  else
    act systemctl start auditd.service
  fi
  systemctl is-active -q apparmor.service || act systemctl start apparmor.service || warn "AppArmor not available"
  systemctl is-active -q systemd-timesyncd.service || act systemctl start systemd-timesyncd.service
fi
log "hardening applied to the running system (redis/database restarts: 99-services)"
