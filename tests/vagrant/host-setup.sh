#!/usr/bin/env bash
# Prepare a Debian/Ubuntu build host for `vagrant up` with the libvirt provider. Idempotent: a warm host pays ~1 s.
#   - installs vagrant, vagrant-libvirt, libvirt, QEMU, dnsmasq, rsync (tools/apt-ensure.sh)
#   - makes /dev/kvm usable by libvirt's qemu user the way udev would (root:kvm 0660) when udev is absent
#   - starts virtlogd/libvirtd by hand when no init system does (PID 1 is not systemd on CI hosts)
#   - defines, starts and autostarts libvirt's `default` NAT network
#   - prints the libvirt driver to use (kvm when the image kernel boots under KVM, else qemu/TCG):
#     tests/vagrant/detect-driver.sh -> packer/scripts/kvm-probe.sh
# Usage: sudo tests/vagrant/host-setup.sh            (root)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
log() { printf 'host-setup: %s\n' "$*" >&2; }
[ "$(id -u)" -eq 0 ] || { log "run as root"; exit 1; }

# The same installer as every other stage (only what is missing; QEMU at the version Kiln needs, from backports
# where the host's suite is older); postinst scripts start no daemon: they are started below.
"$here/../../tools/apt-ensure.sh" vagrant vagrant-libvirt libvirt-daemon-system libvirt-clients qemu-system-x86 \
  qemu-utils dnsmasq-base ebtables iptables rsync openssh-client ovmf

# /dev/kvm: without udev it stays 0600 root:root, libvirt then re-probes QEMU on every call (~30 s per define).
if [ -c /dev/kvm ]; then
  getent group kvm >/dev/null || groupadd --system kvm
  if [ "$(stat -c '%G:%a' /dev/kvm)" != "kvm:660" ]; then
    chown root:kvm /dev/kvm && chmod 0660 /dev/kvm && log "/dev/kvm -> root:kvm 0660"
  fi
fi

# Daemons: use systemd when it runs, otherwise start them by hand.
if [ -d /run/systemd/system ]; then
  systemctl start virtlogd.socket libvirtd.service >/dev/null 2>&1 || systemctl start virtlogd libvirtd
else
  mkdir -p /run/libvirt
  # The daemons outlive this script: they get none of its open files besides stdin/out/err. A lock the caller
  # holds (`flock LOCK make test-infra`) would otherwise be held by libvirtd for good, and every later taker waits.
  daemon() { # daemon NAME: start NAME -d with only fds 0-2
    local fd
    ( for fd in /proc/self/fd/*; do fd=${fd##*/}; [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null; done
      exec "$1" -d ) || return 1
    log "started $1"
  }
  pgrep -x virtlogd >/dev/null || daemon virtlogd || { log "virtlogd did not start"; exit 1; }
  pgrep -x libvirtd >/dev/null || daemon libvirtd || { log "libvirtd did not start"; exit 1; }
fi
for _ in $(seq 1 30); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 1; done
virsh -c qemu:///system version >/dev/null || { log "libvirtd does not answer on qemu:///system"; exit 1; }

# The default NAT network (vagrant-libvirt's management network is separate, it creates that itself).
if ! virsh -c qemu:///system net-info default >/dev/null 2>&1; then
  for xml in /usr/share/libvirt/networks/default.xml /etc/libvirt/qemu/networks/default.xml; do
    [ -f "$xml" ] && { virsh -c qemu:///system net-define "$xml" >/dev/null; break; }
  done
fi
if ! [[ $(virsh -c qemu:///system net-info default 2>/dev/null) =~ Active:[[:space:]]+yes ]]; then
  virsh -c qemu:///system net-start default >/dev/null && log "started network default"
fi
virsh -c qemu:///system net-autostart default >/dev/null 2>&1 || true

# Storage pool `default` (vagrant-libvirt uploads boxes there).
if ! virsh -c qemu:///system pool-info default >/dev/null 2>&1; then
  mkdir -p /var/lib/libvirt/images
  virsh -c qemu:///system pool-define-as default dir --target /var/lib/libvirt/images >/dev/null
fi
if ! [[ $(virsh -c qemu:///system pool-info default 2>/dev/null) =~ State:[[:space:]]+running ]]; then
  virsh -c qemu:///system pool-start default >/dev/null && log "started pool default"
fi
virsh -c qemu:///system pool-autostart default >/dev/null 2>&1 || true

log "vagrant $(vagrant --version 2>/dev/null | awk '{print $2}'), libvirt $(virsh -c qemu:///system version --daemon 2>/dev/null | awk '/daemon/{print $NF}')"
log "libvirt driver: $("$here/detect-driver.sh")"
