#!/usr/bin/env bash
# Make a libvirt Vagrant box from the VPS image without booting it: convert a copy to raw, loop-mount it and edit it
# in a chroot (vagrant user, passwordless sudo, Vagrant's insecure public keys, DHCP on any NIC), then pack
# box.img (uncompressed qcow2) + metadata.json + Vagrantfile into a gzip'd tar. The VPS image itself is never modified.
# box.img is not compressed inside (the VPS image is: zlib, for the providers' importers): vagrant-libvirt runs the VM
# on a copy-on-write overlay of it, where each read of a compressed cluster costs the host CPU that, under TCG, the
# guest's vCPUs need (booting the VPS image from an uncompressed copy: /readyz 200 after 42.4-44.9 s against
# 44.0-47.5 s from the compressed file, alternating, same image); the tar's gzip keeps the file about as small.
# Usage: packer/scripts/make-vagrant-box.sh IMAGE.qcow2 OUT.box WORKDIR
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: $0 IMAGE.qcow2 OUT.box WORKDIR" >&2; exit 2; }
img=$1 box=$2 work=$3
[ "$(id -u)" -eq 0 ] || { echo "make-vagrant-box: must run as root" >&2; exit 1; }
rm -rf "$work"; mkdir -p "$work"
work=$(cd "$work" && pwd)
cleanup() {
  local rc=$?
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT INT TERM

# Vagrant's well-known insecure public keys: from the installed vagrant package when present, else these.
keys=""
for k in /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub \
         /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub.*; do
  [ -r "$k" ] && keys+="$(cat "$k")"$'\n'
done
if [ -z "$keys" ]; then
  keys="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN1YdxBpNlzxDqfJyw/QKow1F+wvG9hXGoqiysfJOn5Y vagrant insecure public key
ssh-rsa AAAAB3NzaC1yc2EAAAABIwAAAQEA6NF8iallvQVp22WDkTkyrtvp9eWW6A8YVr+kz4TjGYe7gHzIw+niNltGEFHzD8+v1I2YJ6oXevct1YeS0o9HZyN1Q9qgCgzUFtdOKLv6IedplqoPkcmF0aYet2PkEDo3MlTBckFXPITAMzF8dJSIFo9D8HfdOV0IAdx4O7PtixWKn5y2hMNG0zQPyUecp4pzC6kivAIhyfHilFR61RGL+GPXQ2MWZWFYbAGjyiYJnAmCP3NOTd0jMZEnDkbUvxhMmBYSdETk1rRgm+R4LOzFUGaHqHDLKLX+FIPKcF96hrucXzcWyLbIbEgE98OHlnVYCzRdK8jlqm8tehUc9c9WhQ== vagrant insecure public key
"
fi
printf '%s' "$keys" >"$work/authorized_keys"

qemu-img convert -O raw "$img" "$work/disk.raw"
# shellcheck disable=SC2016  # expanded by disk-edit.sh
"$(dirname "$0")/disk-edit.sh" "$work/disk.raw" '
  mnt=$1 keys=$2
  if ! chroot "$mnt" getent passwd vagrant >/dev/null; then
    chroot "$mnt" useradd --create-home --user-group --shell /bin/bash vagrant
  fi
  chroot "$mnt" usermod -p "*" vagrant   # no password, not "locked": key login works with or without PAM
  install -d -m 0700 -o "$(chroot "$mnt" id -u vagrant)" -g "$(chroot "$mnt" id -g vagrant)" "$mnt/home/vagrant/.ssh"
  install -m 0600 -o "$(chroot "$mnt" id -u vagrant)" -g "$(chroot "$mnt" id -g vagrant)" "$keys" \
    "$mnt/home/vagrant/.ssh/authorized_keys"
  printf "vagrant ALL=(ALL) NOPASSWD:ALL\nDefaults:vagrant !requiretty\n" >"$mnt/etc/sudoers.d/vagrant"
  chmod 0440 "$mnt/etc/sudoers.d/vagrant"
  chroot "$mnt" visudo -cqf /etc/sudoers.d/vagrant
  # The image allows no TCP forwarding; vagrant-libvirt forwards the box ports with `ssh -L` as vagrant.
  printf "\n# Vagrant box only (make-vagrant-box.sh): port forwards for vagrant-libvirt.\nMatch User vagrant\n    AllowTcpForwarding local\n" \
    >>"$mnt/etc/ssh/sshd_config"
  # Validate the result with a throw-away host key (the image has none until its first boot).
  mkdir -p "$mnt/run/sshd" && ssh-keygen -q -t ed25519 -N "" -f "$mnt/run/kiln-box-hostkey"
  chroot "$mnt" sshd -t -h /run/kiln-box-hostkey
  [ "$(chroot "$mnt" sshd -T -h /run/kiln-box-hostkey -C user=vagrant,host=h,addr=192.0.2.1 | grep -i "^allowtcpforwarding")" = "allowtcpforwarding local" ]
  rm -rf "$mnt/run/sshd" "$mnt"/run/kiln-box-hostkey*
  # No cloud datasource under Vagrant: make sure the first NIC gets DHCP even if cloud-init renders nothing.
  mkdir -p "$mnt/etc/systemd/network"
  printf "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n" >"$mnt/etc/systemd/network/99-vagrant-dhcp.network"
  mkdir -p "$mnt/etc/cloud/cloud.cfg.d"
  printf "# Vagrant box: no cloud, no default cloud user.\ndatasource_list: [ NoCloud, None ]\n" \
    >"$mnt/etc/cloud/cloud.cfg.d/99-vagrant.cfg"
' "$work/authorized_keys"

qemu-img convert -O qcow2 -m 8 -W "$work/disk.raw" "$work/box.img"
rm -f "$work/disk.raw"
vsize=$(qemu-img info --output=json "$work/box.img" | jq '.["virtual-size"]')
gib=$(( (vsize + 1073741823) / 1073741824 ))
printf '{"provider":"libvirt","format":"qcow2","virtual_size":%s}\n' "$gib" >"$work/metadata.json"
cat >"$work/Vagrantfile" <<'VF'
# Defaults shipped inside the Kiln box; a project's Vagrantfile overrides them.
Vagrant.configure("2") do |config|
  config.ssh.insert_key = true
  config.vm.provider :libvirt do |libvirt|
    libvirt.disk_bus = "virtio"
    libvirt.nic_model_type = "virtio"
    libvirt.memory = 2048
    libvirt.cpus = 2
  end
end
VF
tar -C "$work" --use-compress-program='gzip -1' -cf "$box.tmp" metadata.json Vagrantfile box.img
mv -f "$box.tmp" "$box"
echo "make-vagrant-box: $box (box.img $(du -h "$work/box.img" | cut -f1), virtual ${gib} GiB)"
