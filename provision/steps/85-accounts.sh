#!/usr/bin/env bash
# step: login policy (login.defs umask 027, password aging floor, hashing), passwdqc, legal banners, file modes
set -euo pipefail
# shellcheck source=provision/lib/common.sh
. "$KILN_PROVISION_DIR/lib/common.sh"; load_distro

# Password quality for the rare account that gets a password (no account in the image has one): passwdqc is a
# ~100 kB PAM module with no dictionary package (pwquality would pull cracklib's).
apt_install "${PKG_ACCOUNTS[@]}"

# login.defs KEY VALUE: set (or add) a key, idempotently.
set_logindef() {
  local key=$1 val=$2
  grep -qE "^${key}[[:space:]]+${val}\$" /etc/login.defs && return 0
  if grep -qE "^${key}[[:space:]]" /etc/login.defs; then
    sed -i -E "s|^${key}[[:space:]].*|${key}\t${val}|" /etc/login.defs
  else
    printf '%s\t%s\n' "$key" "$val" >>/etc/login.defs
  fi
  changed "/etc/login.defs: $key $val"
}
# Files made in login sessions are not world-readable (pam_umask reads this). provision/install.sh sets umask 022
# itself, so deploys still produce files nginx (www-data) and the kiln user can read.
set_logindef UMASK 027
set_logindef PASS_MIN_DAYS 1
set_logindef PASS_WARN_AGE 14
# PASS_MAX_DAYS stays 99999 on purpose: with UsePAM yes an *expired* password blocks key-only logins too
# (pam_unix account check), so aging would lock the cloud-init admin user out after N days. Lynis AUTH-9286
# (1 point) is an accepted suggestion, see tests/hardening/lynis-waivers.txt.
set_logindef ENCRYPT_METHOD YESCRYPT
set_logindef YESCRYPT_COST_FACTOR 8
# Only used if someone switches ENCRYPT_METHOD to SHA512: then at least 65536 rounds.
set_logindef SHA_CRYPT_MIN_ROUNDS 65536
set_logindef SHA_CRYPT_MAX_ROUNDS 131072

# passwdqc / tmpdir: pam-auth-update adds them to common-password / common-session (packages' own profiles).
if ! grep -q pam_passwdqc /etc/pam.d/common-password || ! grep -q pam_tmpdir /etc/pam.d/common-session; then
  pam-auth-update --package --enable passwdqc tmpdir
  changed "pam: passwdqc, tmpdir"
fi

# Interactive admin shells: no core files, idle logout after 15 minutes (TMOUT, read-only).
put etc/profile.d/kiln-hardening.sh || true

# Legal banners (console and SSH pre-login): no OS name or version for the world to read.
put etc/issue || true
put etc/issue.net || true

# File modes Lynis (FILE-7524) and dev-sec linux-baseline look at; only paths that exist, nothing created.
ensure_mode() { # ensure_mode MODE PATH...
  local mode=$1 p; shift
  for p in "$@"; do
    [ -e "$p" ] || continue
    [ "$(stat -c '%a' "$p")" = "${mode#0}" ] && continue
    chmod "$mode" "$p"; changed "$p mode $mode"
  done
}
# After 84-services: dpkg resets /etc/cron.* to 0755 whenever a package it installs ships files there.
ensure_mode 0600 /etc/crontab /boot/grub/grub.cfg /etc/ssh/sshd_config
ensure_mode 0700 /etc/cron.d /etc/cron.hourly /etc/cron.daily /etc/cron.weekly /etc/cron.monthly /etc/cron.yearly
ensure_mode 0640 /etc/shadow /etc/gshadow /etc/shadow- /etc/gshadow-
ensure_mode 0644 /etc/passwd /etc/group
# Home directories of regular users: 0750 at most.
while IFS=: read -r _ _ uid _ _ home _; do
  { [ "$uid" -ge 1000 ] && [ "$uid" -lt 60000 ] && [ -d "$home" ]; } || continue
  [ $(( 0$(stat -c '%a' "$home") & 027 )) -eq 0 ] && continue
  chmod g-w,o-rwx "$home"; changed "$home: g-w,o-rwx"
done </etc/passwd

log "login.defs: UMASK 027, PASS_MIN_DAYS 1, yescrypt; passwdqc; banners; file modes"
