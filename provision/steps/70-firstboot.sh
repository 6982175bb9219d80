#!/usr/bin/env bash
# step: first-boot units (secrets early; TLS, env; then DB user, migrations), the operator commands, SSH host keys at
# boot, supervisord woken at start, CPU weights at boot and what waits for the app's first answer (the path to the
# first served request)
set -euo pipefail
# shellcheck source=provision/lib/common.sh
. "$KILN_PROVISION_DIR/lib/common.sh"; load_distro

put usr/local/sbin/kiln-firstboot 0755 || true
put usr/local/sbin/kiln-letsencrypt 0755 || true
for unit in kiln-firstboot-secrets.service kiln-firstboot.service kiln-firstboot-db.service kiln-firstboot-late.service; do
  if put "etc/systemd/system/$unit"; then need_restart daemon-reload; fi
  svc_enable "$unit" || true
done

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

# CPU at boot: on 1-2 vCPUs everything that starts at boot competes for the CPU, and each unit has the same weight.
# The boot-only units on the path to the first served request get a larger one: cloud-init's single process (every
# unit waits for its network stage) and both first-boot stages. SSH host-key generation (beside that path) keeps the
# default weight: ~2 s of CPU under TCG, but at weight 10 it got so little of it while the app started that sshd
# answered 15-30 s after the app's first 200 (boot check, Vagrant's `up`); at 100 it ends before the app, which
# loses at most ~1 s. Once cloud-init's network stage is done, kiln-web-ready.service gives supervisor (the app's
# start) a large weight and cloud-init (its later stages are not on that path) the idle one, until the app answers.
# Long-running services keep the default weight (systemd 257 does not drop a StartupCPUWeight= once the boot
# finished, so the web's share at run time would change): no unit is starved, each only yields while others need
# the CPU. Setting a weight turns on the cgroup cpu controller for system.slice: services then share the CPU per
# service (cgroup), as they did per session (sched autogroup) without it.
boot_cpu_weight() { # boot_cpu_weight WEIGHT UNIT...
  local weight=$1 unit; shift
  for unit in "$@"; do
    # "10-": drop-ins apply in the order of their file names, whatever their directory, and the --runtime weights of
    # kiln-web-ready (systemctl set-property: /run/systemd/system.control/UNIT.d/50-CPUWeight.conf) must come after
    # this one, also once a daemon-reload has read them all again (a provision on a running server).
    if write_file "/etc/systemd/system/$unit.service.d/10-kiln-boot-cpu.conf" 0644 root:root <<EOF2
# Kiln (provision/steps/70-firstboot.sh): this unit's share of the CPU while the system boots.
[Service]
CPUWeight=$weight
EOF2
    then need_restart daemon-reload; fi
  done
}
boot_cpu_weight 1000 cloud-init-main kiln-firstboot kiln-firstboot-db
boot_cpu_weight 100 sshd-keygen

put usr/local/lib/kiln/kiln-web-ready 0755 || true
if put etc/systemd/system/kiln-web-ready.service; then need_restart daemon-reload; fi
svc_enable kiln-web-ready.service || true
# Long-running services nothing on that path needs start once the app answers (kiln-web-ready.service ends then, or
# after its bound): fail2ban (its start: ~3-5 s of CPU under emulation, reading the journal for its jails; sshd is
# up meanwhile, with its own MaxAuthTries and LoginGraceTime) and unattended-upgrades' shutdown helper (a Python
# process that only waits for a signal).
for unit in fail2ban unattended-upgrades; do
  if write_file "/etc/systemd/system/$unit.service.d/kiln-after-web.conf" 0644 root:root <<EOF2
# Kiln (provision/steps/70-firstboot.sh): started once the app answers, off the path to the first served request.
[Unit]
After=kiln-web-ready.service
EOF2
  then need_restart daemon-reload; fi
done
