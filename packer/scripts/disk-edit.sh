#!/usr/bin/env bash
# Edit the root file system of a raw disk image (one partition) without booting it. The host kernel parses no
# partition tables and there is no udev: losetup + partx give ${loop}p1. It is mounted in a private mount namespace
# (it vanishes with the snippet, even if that is killed) and the loop device is detached on any exit.
# Usage: packer/scripts/disk-edit.sh DISK.raw SNIPPET [ARG...]
#   SNIPPET is bash (set -euo pipefail) run as root with $1 = the mount point and $2... = ARGs.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 DISK.raw SNIPPET [ARG...]" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "disk-edit: must run as root (losetup, mount)" >&2; exit 1; }
disk=$1 snippet=$2; shift 2
mnt=$(mktemp -d /var/tmp/kiln-disk-edit.XXXXXX)
loop=""
detach() {
  local rc=$?
  if [ -n "$loop" ]; then partx -d "$loop" 2>/dev/null || true; losetup -d "$loop" 2>/dev/null || true; fi
  rmdir "$mnt" 2>/dev/null || true
  exit $rc
}
trap detach EXIT INT TERM
loop=$(losetup -f --show "$disk")
partx -a "$loop"
[ -b "${loop}p1" ] || { echo "disk-edit: ${loop}p1 did not appear after partx -a" >&2; exit 1; }
# shellcheck disable=SC2016  # expanded by the inner bash
unshare -m --propagation private -- bash -euo pipefail -c '
  part=$1 mnt=$2 snippet=$3; shift 3
  mount "$part" "$mnt"
  bash -euo pipefail -c "$snippet" _ "$mnt" "$@"
  fstrim "$mnt" 2>/dev/null || true
  umount "$mnt"
' _ "${loop}p1" "$mnt" "$snippet" "$@"
