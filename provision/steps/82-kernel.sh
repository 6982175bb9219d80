#!/usr/bin/env bash
# step: kernel: a small initramfs, hardening sysctls, unused filesystems/protocols/USB storage off, no core dumps anywhere
set -euo pipefail
# shellcheck source=provision/lib/common.sh
. "$KILN_PROVISION_DIR/lib/common.sh"; load_distro

sysctl_changed=0
put etc/sysctl.d/90-kiln-hardening.conf && sysctl_changed=1
put etc/modprobe.d/kiln-hardening.conf || true
put etc/security/limits.d/90-kiln-nocore.conf || true
put etc/systemd/coredump.conf.d/90-kiln.conf || true
if put etc/systemd/system.conf.d/90-kiln-nocore.conf; then need_restart daemon-reexec; fi

# A small initramfs (see the two files): made anew only when they changed and the machine has a kernel (the base disk
# already has them; a container has no /boot/initrd.img-*). The kernel's packages make every later one with them.
initramfs_changed=0
put etc/initramfs-tools/conf.d/90-kiln.conf && initramfs_changed=1
put etc/initramfs-tools/hooks/kiln 0755 && initramfs_changed=1
if [ "$initramfs_changed" -eq 1 ] && compgen -G '/boot/initrd.img-*' >/dev/null; then
  update-initramfs -u -k all || die "update-initramfs failed"
  log "initramfs made anew: $(du -h /boot/initrd.img-* | awk '{print $2 " " $1}' | xargs)"
fi

# Apply now only on a booted machine with its own kernel: a chroot or container cannot (and must not) set them;
# systemd-sysctl.service applies the file at every boot anyway.
if [ "$sysctl_changed" -eq 1 ] && booted && ! systemd-detect-virt -q --container; then
  sysctl -q -p /etc/sysctl.d/90-kiln-hardening.conf || warn "some sysctls could not be applied now (applied at boot)"
  log "sysctls applied"
fi
log "sysctl: $(grep -c '^[a-z]' /etc/sysctl.d/90-kiln-hardening.conf) keys; modprobe: $(grep -c '^install' /etc/modprobe.d/kiln-hardening.conf) modules off; core dumps off"
