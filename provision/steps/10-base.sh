#!/usr/bin/env bash
# step: base system: packages, UTC, locale, unattended security upgrades, user kiln, directories
set -euo pipefail
# shellcheck source=provision/lib/common.sh
. "$KILN_PROVISION_DIR/lib/common.sh"; load_distro

# The distro's security archive, before anything is installed (so packages come with their security fixes).
# Official cloud images carry it; a bare debootstrap or an old box may not.
if ! grep -rqsE -- '-security' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  if printf '%s\n' "$SECURITY_SOURCES" | write_file "$SECURITY_SOURCES_FILE" 0644 root:root; then
    rm -f /var/lib/apt/lists/.kiln-updated   # apt_install must fetch the new archive's lists
    warn "the apt sources had no security archive: added $SECURITY_SOURCES_FILE"
  fi
fi

apt_install "${PKG_BASE[@]}"

# A Kiln base disk carries the stack's packages with their units held back (lib/common.sh, KILN_DEFERRED_UNITS):
# enable them now, as their packages' install would have.
if [ -f "$KILN_DEFERRED_UNITS" ]; then
  # Lines "LINK TARGET" (LINK relative to /): the symlinks the packages' enabling made, put back as they were.
  # ln, not systemctl enable: that took 70 s for these units in the emulated build VM.
  held=()
  while read -r link target; do
    [ -n "$link" ] || continue
    if [ "$(readlink "/$link" 2>/dev/null || true)" != "$target" ]; then
      mkdir -p "$(dirname "/$link")"
      ln -sfn "$target" "/$link"
    fi
    held+=("${link##*/}")
  done <"$KILN_DEFERRED_UNITS"
  need_restart daemon-reload
  rm -f "$KILN_DEFERRED_UNITS"; rmdir "$(dirname "$KILN_DEFERRED_UNITS")" 2>/dev/null || true
  changed "enabled the base disk's held-back units (${#held[@]} links): ${held[*]}"
fi

# Time zone UTC, locale C.UTF-8 (built into glibc: no locale package needed).
ensure_symlink /usr/share/zoneinfo/Etc/UTC /etc/localtime || true
echo Etc/UTC | write_file /etc/timezone 0644 root:root || true
install_file "$KILN_FILES/etc/locale.conf" "$LOCALE_FILE" 0644 || true

# Unattended security upgrades (the distro's default origins are security-only).
put etc/apt/apt.conf.d/20auto-upgrades || true
svc_enable apt-daily.timer || true
svc_enable apt-daily-upgrade.timer || true

# System user for the app: no login shell, no password.
if ! getent group kiln >/dev/null; then groupadd --system kiln; changed "group kiln"; fi
if ! id kiln >/dev/null 2>&1; then
  useradd --system --gid kiln --home-dir /srv/kiln --no-create-home --shell /usr/sbin/nologin kiln
  changed "user kiln"
fi

ensure_dir /srv/kiln 0755 root:root
ensure_dir /srv/kiln/releases 0755 root:root
ensure_dir /srv/kiln/shared 0755 root:root
# setgid group www-data: uploads (FILE_UPLOAD_PERMISSIONS 0640) stay readable by nginx, not by others
ensure_dir /srv/kiln/shared/media 2750 kiln:www-data
ensure_dir /etc/kiln 0750 root:kiln
ensure_dir /var/log/kiln 0750 kiln:adm
ensure_dir /var/lib/kiln 0750 root:kiln
ensure_dir /usr/share/kiln 0755 root:root
put etc/tmpfiles.d/kiln.conf || true
# /run/kiln (gunicorn socket; group www-data so nginx can reach it) — tmpfiles creates it at every boot.
if booted; then systemd-tmpfiles --create /etc/tmpfiles.d/kiln.conf; fi
