#!/usr/bin/env bash
# Add (or refresh after a rebuild) a local .box as a Vagrant box, e.g. build/debian-13/kiln-debian-13-1.0.box as
# kiln/debian-13. Idempotent: does nothing when the box was added from the same file (size + mtime) before.
# vagrant-libvirt keeps the box's disk as a volume in the storage pool and never replaces it on a re-add of the same
# name/version: that stale volume is deleted too, so the next `vagrant up` uploads the new disk.
# Usage: tests/vagrant/box-add.sh [--check] [BOX_FILE [NAME]]
#   --check: add nothing; exit 0 if the box would be (re)added, 1 if it is up to date
#        defaults: newest build/$KILN_DISTRO/*.box, kiln/$KILN_DISTRO  (KILN_DISTRO defaults to debian-13)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
distro=${KILN_DISTRO:-debian-13}
check=0
if [ "${1:-}" = --check ]; then check=1; shift; fi
file=${1:-}
if [ -z "$file" ]; then
  for f in "$root"/build/"$distro"/*.box; do
    [ -f "$f" ] && { [ -z "$file" ] || [ "$f" -nt "$file" ]; } && file=$f
  done
fi
name=${2:-kiln/$distro}
[ -f "$file" ] || { echo "box-add: no box file (looked for $root/build/$distro/*.box)" >&2; exit 1; }
file=$(cd "$(dirname "$file")" && pwd)/$(basename "$file")
stamp_dir=${VAGRANT_HOME:-$HOME/.vagrant.d}/kiln-box-stamps
stamp_file=$stamp_dir/${name//\//__}
stamp="$file $(stat -c '%s %Y' "$file")"
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ] && vagrant box list 2>/dev/null | grep -q "^$name "; then
  [ "$check" -eq 0 ] || exit 1
  echo "box-add: $name is up to date ($file)"; exit 0
fi
[ "$check" -eq 0 ] || exit 0
uri=${KILN_LIBVIRT_URI:-qemu:///system}
vol="${name//\//-VAGRANTSLASH-}_vagrant_box_image_0_box.img"
if command -v virsh >/dev/null && virsh -c "$uri" vol-info --pool default "$vol" >/dev/null 2>&1; then
  virsh -c "$uri" vol-delete --pool default "$vol" >/dev/null && echo "box-add: deleted stale libvirt volume $vol"
fi
echo "box-add: adding $file as $name"
vagrant box add --force --name "$name" "$file"
mkdir -p "$stamp_dir" && echo "$stamp" >"$stamp_file"
