#!/usr/bin/env bash
# Build a minimal throw-away Debian 13 libvirt Vagrant box (no Kiln stack): for checking the Vagrantfile mechanics
# (up, rsync, provision, halt, destroy) and as the stock box when no cloud image can be downloaded.
# Usage: tests/vagrant/make-test-box.sh [OUT.box]      (root; default /var/tmp/kiln-testbox/debian-13-minimal.box)
# Then:  vagrant box add --force --name kiln-test/debian-13 OUT.box
# shellcheck disable=SC2016  # the single-quoted hooks are expanded by mmdebstrap / the inner bash
set -euo pipefail
out=${1:-/var/tmp/kiln-testbox/debian-13-minimal.box}
suite=${SUITE:-trixie}
mirror=${MIRROR:-http://deb.debian.org/debian}
size=${DISK_SIZE:-8G}
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
for t in mmdebstrap:mmdebstrap sfdisk:fdisk mkfs.ext4:e2fsprogs qemu-img:qemu-utils; do
  command -v "${t%%:*}" >/dev/null || apt-get install -y -qq --no-install-recommends "${t#*:}" >/dev/null
done
pubkey=
for k in /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub; do [ -f "$k" ] && pubkey=$k; done
[ -n "$pubkey" ] || { echo "vagrant's insecure key not found: install vagrant first (tests/vagrant/host-setup.sh)" >&2; exit 1; }

work=$(mktemp -d /var/tmp/kiln-testbox.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$(dirname "$out")"

env -u PIP_FIND_LINKS mmdebstrap --variant=minbase --components=main \
  --include=linux-image-cloud-amd64,systemd-sysv,systemd-resolved,udev,dbus,openssh-server,sudo,grub-pc,rsync,ca-certificates,iproute2,procps,python3,less,curl \
  --customize-hook='chroot "$1" useradd -m -s /bin/bash -G sudo vagrant' \
  --customize-hook='echo "vagrant ALL=(ALL) NOPASSWD: ALL" > "$1/etc/sudoers.d/vagrant"; chmod 0440 "$1/etc/sudoers.d/vagrant"' \
  --customize-hook="install -d -m700 -o 1000 -g 1000 \"\$1/home/vagrant/.ssh\"; install -m600 -o 1000 -g 1000 $pubkey \"\$1/home/vagrant/.ssh/authorized_keys\"" \
  --customize-hook='printf "[Match]\nName=en* eth*\n[Network]\nDHCP=yes\n" > "$1/etc/systemd/network/80-dhcp.network"' \
  --customize-hook='chroot "$1" systemctl enable systemd-networkd systemd-resolved ssh' \
  --customize-hook='echo kiln-test > "$1/etc/hostname"; printf "127.0.0.1 localhost\n127.0.1.1 kiln-test\n" > "$1/etc/hosts"' \
  --customize-hook='sed -i "s/^#\?UseDNS.*/UseDNS no/" "$1/etc/ssh/sshd_config"' \
  "$suite" "$work/rootfs.tar" "$mirror"

truncate -s "$size" "$work/disk.raw"
printf 'label: dos\n,,L,*\n' | sfdisk -q "$work/disk.raw"
unshare -m --propagation private bash -euo pipefail -c '
  work=$1
  loop=$(losetup -f --show "$work/disk.raw"); partx -a "$loop"
  cleanup() { umount -R "$work/mnt" 2>/dev/null || true; partx -d "$loop" 2>/dev/null || true; losetup -d "$loop"; }
  trap cleanup EXIT
  mkfs.ext4 -q -L root "${loop}p1"
  uuid=$(blkid -s UUID -o value "${loop}p1")
  mkdir -p "$work/mnt"; mount "${loop}p1" "$work/mnt"
  tar -C "$work/mnt" -xpf "$work/rootfs.tar"
  echo "UUID=$uuid / ext4 errors=remount-ro 0 1" > "$work/mnt/etc/fstab"
  for d in dev proc sys; do mount --rbind /$d "$work/mnt/$d"; done
  cat > "$work/mnt/etc/default/grub" <<EOF
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8 net.ifnames=1"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --speed=115200"
GRUB_DISABLE_OS_PROBER=true
EOF
  chroot "$work/mnt" grub-install --target=i386-pc "$loop" >/dev/null 2>&1
  chroot "$work/mnt" update-grub >/dev/null 2>&1
  # No udev on the build host: update-grub wrote root=/dev/loopNp1.
  sed -i "s#root=${loop}p1#root=UUID=$uuid#g" "$work/mnt/boot/grub/grub.cfg"
  grep -q "root=UUID=$uuid" "$work/mnt/boot/grub/grub.cfg"
' _ "$work"

qemu-img convert -O qcow2 "$work/disk.raw" "$work/box.img"
vsize=$(( $(qemu-img info --output=json "$work/box.img" | python3 -c 'import json,sys;print(json.load(sys.stdin)["virtual-size"])') / 1024 / 1024 / 1024 ))
printf '{"provider":"libvirt","format":"qcow2","virtual_size":%s}\n' "$vsize" >"$work/metadata.json"
cat >"$work/Vagrantfile" <<'EOF'
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.disk_bus = "virtio"
  end
end
EOF
tar -C "$work" -czf "$out.tmp" metadata.json Vagrantfile box.img
mv "$out.tmp" "$out"
ls -la "$out"
