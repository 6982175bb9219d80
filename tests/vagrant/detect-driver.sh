#!/usr/bin/env bash
# Print the libvirt domain type for the Vagrant VM: "kvm" or "qemu" (TCG). A thin mapping onto the repo's one KVM
# probe, packer/scripts/kvm-probe.sh (it boots the image's own kernel under KVM and caches the answer per host boot
# and kernel; see its header): kvm -> kvm, tcg -> qemu.
# Usage: detect-driver.sh [-q]     (-q: quiet on a cached answer)
# Env: KILN_LIBVIRT_DRIVER=kvm|qemu overrides; ACCEL=kvm|tcg overrides too (as for Packer and the boot check).
set -euo pipefail
exec "$(cd "$(dirname "$0")/../.." && pwd)/packer/scripts/kvm-probe.sh" --libvirt "$@"
