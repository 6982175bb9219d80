#!/usr/bin/env bash
# Build a bootable cloud-init base disk (qcow2) without downloading a cloud image.
# Usage: packer/scripts/build-base-disk.sh DISTRO OUT.qcow2      (DISTRO: debian-13 | ubuntu-24.04)
#
# mmdebstrap -> one MBR partition (ext4) in a raw file -> loop device (losetup + partx: the host kernel parses no
# partition tables and there is no udev) -> copy the rootfs -> grub-install, root=UUID=... -> qemu-img convert.
# All mounts happen in a private mount namespace; a trap removes every mount and loop device, also on failure.
# Cache: OUT.inputs holds a hash of every input; if it matches, OUT is reused and nothing is rebuilt.
# Also writes OUT.vmlinuz (the image's kernel, for scripts/kvm-probe.sh).
# The disk also carries every distro package the provisioned server runs with (stack_packages in
# provision/lib/common.sh, from the distro profile): installed natively here in seconds, so provision/install.sh in
# the emulated build VM finds them present and only configures (apt in the guest is ~12x slower). Daemons are not
# started (mmdebstrap's policy-rc.d); dpkg's fsyncs are skipped with eatmydata.
# Env: BASE_DISK_SIZE [4G], MIRROR (distro archive URL), SECURITY_MIRROR (its security archive), FORCE=1 (rebuild even if cached).
#
# Ubuntu 24.04: the same code path with archive.ubuntu.com; it fails clearly where that archive is unreachable.
# To build Ubuntu from the official cloud image instead, give packer base_image_url/base_image_checksum
# (packer/ubuntu-24.04.pkrvars.hcl) and skip this script.
set -euo pipefail

usage() { echo "usage: $0 DISTRO OUT.qcow2" >&2; exit 2; }
[ $# -eq 2 ] || usage
distro=$1 out=$2
[ "$(id -u)" -eq 0 ] || { echo "build-base-disk: must run as root (mmdebstrap, losetup, mount)" >&2; exit 1; }
size=${BASE_DISK_SIZE:-4G}
repo=$(cd "$(dirname "$0")/../.." && pwd)
# Read by the sourced common.sh (load_distro) below.
export KILN_PROVISION_DIR=$repo/provision KILN_DISTRO=$distro
# shellcheck source=provision/lib/common.sh
. "$repo/provision/lib/common.sh"
if [ -r "$repo/provision/distro/$distro.sh" ]; then load_distro; mapfile -t stack < <(stack_packages); else stack=(); fi

common_pkgs=(systemd-sysv udev dbus openssh-server sudo cloud-init cloud-guest-utils grub-pc
  ca-certificates curl systemd-resolved iproute2 e2fsprogs kmod less apt-utils)
case $distro in
  debian-13)
    suite=trixie mirror=${MIRROR:-http://deb.debian.org/debian} components=main
    # Security and point-release updates from the start, as on an official cloud image: the packages in the disk are
    # current, and unattended-upgrades has an archive to take security fixes from.
    extra_sources=("deb $mirror $suite-updates $components"
                   "deb ${SECURITY_MIRROR:-http://security.debian.org/debian-security} $suite-security $components")
    # trixie: networkd ships in systemd, resolved in systemd-resolved; cloud-init renders networkd config.
    pkgs=(linux-image-cloud-amd64 "${common_pkgs[@]}" "${stack[@]}")
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    ;;
  ubuntu-24.04)
    suite=noble mirror=${MIRROR:-http://archive.ubuntu.com/ubuntu} components=main,universe
    extra_sources=("deb $mirror $suite-updates ${components//,/ }"
                   "deb ${SECURITY_MIRROR:-http://security.ubuntu.com/ubuntu} $suite-security ${components//,/ }")
    # noble: networkd is part of systemd; netplan is Ubuntu's renderer (cloud-init writes netplan yaml).
    pkgs=(linux-image-virtual netplan.io "${common_pkgs[@]}" "${stack[@]}")
    keyring=/usr/share/keyrings/ubuntu-archive-keyring.gpg
    ;;
  *) echo "build-base-disk: unknown DISTRO '$distro' (debian-13 | ubuntu-24.04)" >&2; exit 2 ;;
esac

# Cache key: this script and the initramfs files, distro, mirror, packages, size. (The archive moves on; FORCE=1 or deleting OUT rebuilds.)
key=$( { sha256sum "$0" "$repo"/provision/files/etc/initramfs-tools/conf.d/90-kiln.conf \
            "$repo"/provision/files/etc/initramfs-tools/hooks/kiln | cut -d' ' -f1; echo "$distro $suite $mirror $components $size ${pkgs[*]} ${extra_sources[*]}"; } | sha256sum | cut -d' ' -f1)
if [ -z "${FORCE:-}" ] && [ -s "$out" ] && [ -s "$out.vmlinuz" ] && [ "$(cat "$out.inputs" 2>/dev/null)" = "$key" ]; then
  echo "build-base-disk: cached $out (inputs $key)"
  exit 0
fi

if [ "$distro" = ubuntu-24.04 ] && ! curl -fsS -m 15 -o /dev/null "$mirror/dists/$suite/Release"; then
  echo "build-base-disk: $mirror is unreachable from this host; an Ubuntu base disk cannot be bootstrapped here." >&2
  echo "  Give packer the official cloud image instead: -var base_image_url=... -var base_image_checksum=sha256:..." >&2
  exit 1
fi
[ -r "$keyring" ] || { echo "build-base-disk: missing $keyring (Debian/Ubuntu package ubuntu-keyring or debian-archive-keyring)" >&2; exit 1; }

mkdir -p "$(dirname "$out")"
work=$(mktemp -d "$(dirname "$out")/.base-$distro.XXXXXX")
work=$(cd "$work" && pwd)
loop=""
cleanup() {
  local rc=$?
  # The mounts live in the private namespace and vanish with it; only the loop device is global.
  if [ -n "$loop" ]; then partx -d "$loop" 2>/dev/null || true; losetup -d "$loop" 2>/dev/null || true; fi
  rm -rf "$work"
  [ $rc -eq 0 ] || echo "build-base-disk: FAILED (rc=$rc)" >&2
  exit $rc
}
trap cleanup EXIT INT TERM

rootuuid=$(cat /proc/sys/kernel/random/uuid)
t0=$(date +%s)
# Kiln's initramfs configuration (provision/steps/82-kernel.sh installs the same files) in place before the kernel
# is installed, so the one initramfs made here is the small one (and the guest has nothing to remake).
initramfs_hook="mkdir -p \"\$1/etc/initramfs-tools/conf.d\" \"\$1/etc/initramfs-tools/hooks\" \
  && install -m 0644 '$repo/provision/files/etc/initramfs-tools/conf.d/90-kiln.conf' \"\$1/etc/initramfs-tools/conf.d/\" \
  && install -m 0755 '$repo/provision/files/etc/initramfs-tools/hooks/kiln' \"\$1/etc/initramfs-tools/hooks/\""

echo "build-base-disk: mmdebstrap $suite (${#pkgs[@]} packages) ..."
# The host's pip settings must not leak into the image. (Hooks are expanded by mmdebstrap: $1 is the rootfs.)
# shellcheck disable=SC2016
env -u PIP_FIND_LINKS -u PIP_CERT -u PIP_DEFAULT_TIMEOUT mmdebstrap --variant=minbase \
  --components="$components" --keyring="$keyring" \
  --include="$(IFS=,; echo "${pkgs[*]}")" \
  --aptopt='Acquire::Languages "none"' --hook-dir=/usr/share/mmdebstrap/hooks/eatmydata \
  --setup-hook="$initramfs_hook" \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook='chroot "$1" systemctl enable systemd-networkd systemd-resolved ssh' \
  --customize-hook='rm -f "$1"/etc/ssh/ssh_host_*_key*' \
  "$suite" "$work/rootfs" "deb $mirror $suite ${components//,/ }" "${extra_sources[@]}" >"$work/mmdebstrap.log" 2>&1 || {
    tail -40 "$work/mmdebstrap.log" >&2; exit 1; }
echo "build-base-disk: rootfs done in $(( $(date +%s) - t0 ))s"

r=$work/rootfs
# The stack's services wait for provision/ (see KILN_DEFERRED_UNITS in provision/lib/common.sh): only the units of
# stack packages that are not part of the bootable base, and only those their packages enabled.
mapfile -t deferrable < <(printf '%s\n' "${stack[@]}" | LC_ALL=C sort -u | comm -23 - <(printf '%s\n' "${common_pkgs[@]}" | LC_ALL=C sort -u))
# What is recorded is the exact set of symlinks the disabling removed ("LINK TARGET", LINK relative to /): step 10
# puts them back with ln, as the packages had them (systemctl enable of 14 units took 70 s in the emulated guest).
links() { (cd "$r" && find etc/systemd/system -type l -printf '%p %l\n' | LC_ALL=C sort); }
links >"$work/links-before"
deferred=()
if [ ${#deferrable[@]} -gt 0 ]; then
  for u in $(chroot "$r" dpkg-query -L "${deferrable[@]}" 2>/dev/null \
               | sed -nE 's#^/(usr/)?lib/systemd/system/([^/@]+\.(service|timer|socket|path))$#\2#p' | sort -u); do
    [ "$(chroot "$r" systemctl is-enabled "$u" 2>/dev/null || true)" = enabled ] || continue
    chroot "$r" systemctl disable -q "$u"
    deferred+=("$u")
  done
fi
mkdir -p "$r$(dirname "$KILN_DEFERRED_UNITS")"
links | LC_ALL=C comm -23 "$work/links-before" - >"$r$KILN_DEFERRED_UNITS"
echo "build-base-disk: ${#deferred[@]} stack units held back until provision/ runs ($(wc -l <"$r$KILN_DEFERRED_UNITS") links): ${deferred[*]}"
printf 'UUID=%s / ext4 errors=remount-ro,discard 0 1\n' "$rootuuid" >"$r/etc/fstab"
echo localhost >"$r/etc/hostname"
: >"$r/etc/machine-id"; rm -f "$r/var/lib/dbus/machine-id"
ln -sf ../run/systemd/resolve/stub-resolv.conf "$r/etc/resolv.conf"
mkdir -p "$r/etc/cloud/cloud.cfg.d"
# The datasources of the providers the README names. At every boot cloud-init's generator runs ds-identify, which
# keeps only the ones it detects, without network (Debian's policy: search, found=all, maybe=none, notfound=disabled):
# a config drive or seed disk by its label (ConfigDrive: DigitalOcean, OpenStack with a config drive, Proxmox
# configdrive2; NoCloud: Proxmox's cloud-init drive), the HTTP-metadata clouds by DMI (Hetzner, Vultr, Scaleway: the
# system vendor; OpenStack, e.g. OVH Public Cloud: the product name "OpenStack Nova"/"OpenStack Compute"; Ec2: AWS's
# product UUID, strict_id). A disk comes first: where a provider offers both, it needs no network. None of the
# others is probed on a machine it does not match (ds-identify writes only the found ones to /run/cloud-init/
# cloud.cfg); on a machine that matches none, cloud-init stays off. DigitalOcean's own datasource is deprecated
# (23.2) for ConfigDrive. tests/image/boot-check.sh boots the image as a Hetzner server and runs ds-identify
# on each provider's values.
cat >"$r/etc/cloud/cloud.cfg.d/90-kiln-base.cfg" <<'EOF'
# Kiln base disk: the providers' datasources; ds-identify (cloud-init's generator) keeps those it detects.
datasource_list: [ ConfigDrive, NoCloud, Hetzner, Vultr, Scaleway, OpenStack, Ec2, None ]
manage_etc_hosts: true
system_info:
  network:
    renderers: [ networkd, netplan, eni ]
EOF
# No menu wait: 1 s of every boot (an operator who wants the menu on the console sets GRUB_TIMEOUT, update-grub).
cat >"$r/etc/default/grub" <<'EOF'
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=`( . /etc/os-release && echo ${NAME} )`
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --speed=115200"
GRUB_DISABLE_OS_PROBER=true
EOF
# Kernel upgrades in the guest re-run grub-install on the first virtio disk without asking.
echo 'grub-pc grub-pc/install_devices multiselect /dev/vda' | chroot "$r" debconf-set-selections
# The kernel also serves scripts/kvm-probe.sh (a real kernel boot is the honest KVM test).
find "$r/boot" -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -1 | xargs -I{} cp {} "$out.vmlinuz.tmp"
mv -f "$out.vmlinuz.tmp" "$out.vmlinuz"
rm -rf "$r/var/cache/apt/archives/"*.deb "$r/var/lib/apt/lists/"* "$r/var/log/"*.log

raw=$work/disk.raw
truncate -s "$size" "$raw"
printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q "$raw"
loop=$(losetup -f --show "$raw")
partx -a "$loop"
part=${loop}p1
[ -b "$part" ] || { echo "build-base-disk: $part did not appear after partx -a" >&2; exit 1; }
mkfs.ext4 -q -U "$rootuuid" -L rootfs "$part"

# Everything mounted below disappears with the namespace, even if the script is killed.
# shellcheck disable=SC2016
unshare -m --propagation private -- bash -euo pipefail -c '
  r=$1 part=$2 loop=$3 uuid=$4 mnt=$5
  mkdir -p "$mnt"; mount "$part" "$mnt"
  cp -a "$r"/. "$mnt"/
  for d in dev dev/pts proc sys; do mount --bind "/$d" "$mnt/$d"; done
  chroot "$mnt" grub-install --target=i386-pc --modules="part_msdos ext2" "$loop" >/dev/null 2>&1 || {
    chroot "$mnt" grub-install --target=i386-pc --modules="part_msdos ext2" "$loop"; exit 1; }
  chroot "$mnt" update-grub >/dev/null 2>&1
  # No udev on the host: grub-mkconfig saw /dev/loopNp1. Point it at the filesystem UUID instead.
  sed -i -E "s#root=/dev/loop[0-9]+p1#root=UUID=$uuid#g" "$mnt/boot/grub/grub.cfg"
  grep -q "root=UUID=$uuid" "$mnt/boot/grub/grub.cfg" || { echo "grub.cfg has no root=UUID" >&2; exit 1; }
  if grep -q "/dev/loop" "$mnt/boot/grub/grub.cfg"; then echo "grub.cfg still names a loop device" >&2; exit 1; fi
  fstrim "$mnt" 2>/dev/null || true
  for d in sys proc dev/pts dev; do umount "$mnt/$d"; done
  umount "$mnt"
' _ "$r" "$part" "$loop" "$rootuuid" "$work/mnt"
partx -d "$loop"; losetup -d "$loop"; loop=""

# Uncompressed: the disk is a local cache that packer copies; compressing it cost ~25 s per cold build.
qemu-img convert -O qcow2 "$raw" "$out.tmp"
mv -f "$out.tmp" "$out"
echo "$key" >"$out.inputs"
echo "build-base-disk: $out ($(du -h "$out" | cut -f1), virtual $size, root UUID $rootuuid) in $(( $(date +%s) - t0 ))s"
