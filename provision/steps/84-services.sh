#!/usr/bin/env bash
# step: security services: fail2ban (sshd), AppArmor, auditd, time sync, sysstat, debsums; security updates verified
# and made to take effect (needrestart, a pending reboot at login)
set -euo pipefail
# shellcheck source=provision/lib/common.sh
. "$KILN_PROVISION_DIR/lib/common.sh"; load_distro

# Each package is small and earns its place on a 1 GB VPS:
#  fail2ban + python3-systemd  bans SSH brute force (journal backend)
#  apparmor                    loads the distro's profiles (kernel LSM is on by default in Debian/Ubuntu)
#  auditd                      tamper trail for identity/sudo/sshd/Kiln config changes (rules.d/50-kiln.rules)
#  systemd-timesyncd           clock sync: TLS, logs and fail2ban windows need the right time (minbase has none)
#  sysstat                     10-minute CPU/memory/IO history for capacity questions, self-rotating
#  debsums                     verify installed files against package checksums after an incident
#  needrestart                 restarts what still uses replaced libraries after each apt run (security updates)
apt_install "${PKG_SERVICES[@]}"

for f in etc/fail2ban/jail.local etc/fail2ban/filter.d/kiln-login.conf; do
  if put "$f"; then need_restart fail2ban.service; fi
done
svc_enable fail2ban.service || true

if put etc/audit/rules.d/50-kiln.rules 0640; then need_restart auditd.service; fi
# Same skip-in-containers condition for the rules loader (a separate unit since audit 4).
for unit in auditd.service audit-rules.service; do
  if install_file "$KILN_FILES/etc/systemd/system/auditd.service.d/kiln.conf" "/etc/systemd/system/$unit.d/kiln.conf"; then
    need_restart daemon-reload
  fi
done
svc_enable auditd.service || true

svc_enable apparmor.service || true
# Debian's apparmor ships ~75 profiles flagged "unconfined" for desktop programs (browsers, chat and game clients):
# they confine nothing, they only let those programs create user namespaces, and none of the programs is on a server.
# Loading them cost ~2 s of CPU at every boot under emulation, while the first request waited. dpkg keeps a deleted
# conffile deleted on upgrade. (tests/infra/test_hardening.py: no profile in unconfined mode, the others enforce.)
for profile in /etc/apparmor.d/*; do
  if [ -f "$profile" ] && grep -qE '^profile .*flags=\(unconfined\)' "$profile"; then remove_path "$profile"; fi
done
svc_enable systemd-timesyncd.service || true

if ! grep -qx 'ENABLED="true"' /etc/default/sysstat; then
  sed -i 's/^ENABLED=.*/ENABLED="true"/' /etc/default/sysstat
  changed "sysstat collection enabled"
fi
svc_enable sysstat.service || true

# Security updates take effect: needrestart restarts services after apt runs (automatic mode, Kiln's conf.d), and a
# pending reboot (a new kernel) is shown at every login; kiln-firstboot sets the operator's reboot window, if any.
put etc/needrestart/conf.d/50-kiln.conf || true
put etc/update-motd.d/90-kiln-reboot-required 0755 || true

# Security updates: 10-base configures the security archive, unattended-upgrades and 20auto-upgrades; verify them.
pkg_installed unattended-upgrades || die "unattended-upgrades is not installed (10-base should install it)"
aptconf=$(apt-config dump 2>/dev/null)
grep -q '^APT::Periodic::Unattended-Upgrade "1"' <<<"$aptconf" \
  || die "APT::Periodic::Unattended-Upgrade is not enabled"
grep -rqsE -- '-security' /etc/apt/sources.list /etc/apt/sources.list.d/ \
  || die "no -security suite in the apt sources (10-base adds one): unattended-upgrades would have nothing to install"
log "fail2ban(sshd, systemd backend), apparmor, auditd, timesyncd, sysstat, debsums, needrestart; unattended-upgrades verified"
