#!/usr/bin/env bash
# step: /tmp and /dev/shm as tmpfs with nodev,nosuid,noexec (from the next boot); apt keeps working with it
set -euo pipefail
# shellcheck source=provision/lib/common.sh
. "$KILN_PROVISION_DIR/lib/common.sh"; load_distro

# Nothing of the app executes from /tmp at run time: gunicorn keeps its worker heartbeat files there, Django its
# upload spool, pip its build trees (executed through the interpreter, not exec'd). apt/debconf does exec
# extracted config scripts: they go to /var/cache/apt/tmp instead (file below). Options take effect at boot:
# remounting /tmp under a running build would hide files that the build is using.
put etc/apt/apt.conf.d/50kiln-extracttemplates || true
ensure_dir /var/cache/apt/tmp 0700 root:root

# fstab entries (Debian 13 mounts /tmp as tmpfs via tmp.mount; an fstab line overrides it with the same size
# limits plus noexec. Ubuntu 24.04 keeps /tmp on disk: the same line moves it to a tmpfs).
declare -A want=(
  [/tmp]="tmpfs /tmp tmpfs mode=1777,strictatime,nosuid,nodev,noexec,size=50%,nr_inodes=1m 0 0"
  [/dev/shm]="tmpfs /dev/shm tmpfs nosuid,nodev,noexec 0 0"
)
touch /etc/fstab
for mp in /tmp /dev/shm; do
  line=${want[$mp]}
  current=$(awk -v mp="$mp" '$1 !~ /^#/ && $2 == mp' /etc/fstab)
  [ "$current" = "$line" ] && continue
  if [ -n "$current" ]; then
    awk -v mp="$mp" -v line="$line" '($1 !~ /^#/ && $2 == mp) {print line; next} {print}' /etc/fstab >/etc/fstab.kiln-new
  else
    { cat /etc/fstab; echo "$line"; } >/etc/fstab.kiln-new
  fi
  chmod 0644 /etc/fstab.kiln-new; mv -f /etc/fstab.kiln-new /etc/fstab
  changed "/etc/fstab: $mp nodev,nosuid,noexec"
  need_restart daemon-reload
done
log "/tmp, /dev/shm: nodev,nosuid,noexec from the next boot; debconf extracts to /var/cache/apt/tmp"
