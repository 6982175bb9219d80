#!/usr/bin/env bash
# Runs in the build VM (root) after provision/cleanup.sh, as the last provisioner: makes sure nothing of this build
# or this instance is left in the image (belt and braces: cleanup.sh should already have done most of it).
# The build user itself is removed by packer's shutdown_command (it is still logged in here).
set -euo pipefail
# The build host's CA certificates: trusted only during the build.
# (update-ca-certificates takes over a minute under TCG: only when something was still left to remove.)
left=$(find /usr/local/share/ca-certificates -mindepth 1 -name '*.crt' 2>/dev/null | head -1)
if [ -n "$left" ]; then
  echo "scrub: build CA certificates still present, removing: $(find /usr/local/share/ca-certificates -mindepth 1 | tr '\n' ' ')"
  find /usr/local/share/ca-certificates -mindepth 1 -delete
  update-ca-certificates --fresh >/dev/null
fi
# Writers that would otherwise put state or logs into the image between this scrub and the power-off:
# fail2ban and auditd logs (auditd refuses `systemctl stop`: TERM is its clean shutdown), the journal (relinquished
# to /run until the next boot flushes it to a fresh machine-id folder), and systemd-random-seed, which saves a seed
# when it is stopped at shutdown (stopped now, so the seed file removed below stays removed).
systemctl stop fail2ban.service sysstat-collect.timer sysstat-summary.timer 2>/dev/null || true
if pid=$(pidof auditd); then
  kill -TERM "$pid"
  for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
fi
systemctl stop systemd-random-seed.service 2>/dev/null || true
journalctl --relinquish-var 2>/dev/null || true
rm -rf /tmp/kiln /tmp/kiln-manifest /tmp/kiln-manifest.tar /tmp/readyz.json
# The build VM's own access (scripts/build.sh seed): its DHCP file and cloud-init switched off for this boot only.
# (Its user and sudoers drop-in go with the shutdown command, which still needs them.)
rm -f /etc/cloud/cloud-init.disabled /etc/systemd/network/10-kiln-build.network
# Per-instance identity: a fresh machine-id, SSH host keys and cloud-init run on the first real boot.
cloud-init clean --logs --seed >/dev/null 2>&1 || cloud-init clean --logs
: >/etc/machine-id
rm -f /var/lib/dbus/machine-id /var/lib/systemd/random-seed /var/lib/systemd/credential.secret
rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub
rm -rf /root/.ssh /root/.bash_history /root/.cache /root/.wget-hsts /root/.lesshst
# The build user's sudoers entry stays until the shutdown command, which needs it to delete the user.
apt-get clean
rm -rf /var/lib/apt/lists/*
# Logs of the build must not reappear in the image (the DO image check warns on them).
rm -rf /var/log/journal/*/ 2>/dev/null || true
find /var/log -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' \) -delete
find /var/log -type f -exec truncate -s 0 {} +
rm -rf /var/tmp/* 2>/dev/null || true
sync
fstrim -av 2>/dev/null || true
echo "scrub: done (machine-id empty, host keys removed, cloud-init cleaned, CA certs removed)"
