#!/usr/bin/env bash
# Print the QEMU accelerator that really boots the image's kernel here: "kvm" or "tcg" (--libvirt: "kvm" or "qemu",
# libvirt's domain types). The one KVM probe of the repo: Packer (scripts/build.sh), the boot check
# (tests/image/boot-check.sh) and Vagrant (tests/vagrant/detect-driver.sh, a thin mapping onto this) all ask it.
#
# /dev/kvm existing is not enough, and neither is a tiny real-mode guest: on some hosts a nested paravirtual KVM runs a
# 512-byte boot sector fine while the Linux kernel hangs in its decompressor ("Loading Linux ..." at 100% CPU), or
# QEMU aborts with "failed to set MSR". So this boots the image's own kernel under -accel kvm -cpu max (the CPU model
# Packer, the boot check and the Vagrant VM use) with a timeout and waits until it gets as far as mounting a root
# filesystem (there is none: it panics and QEMU exits). Real KVM gets there in about a second.
#
# The kernel, in this order:
#   1. PROBE_KERNEL
#   2. the base disk's kernel, <BUILD_DIR>/base/<DISTRO>.qcow2.vmlinuz (else the newest <BUILD_DIR>/base/*.vmlinuz),
#      written by build-base-disk.sh (BUILD_DIR as in build.sh: [<repo>/build])
#   3. the kernel inside the Vagrant box (KILN_BOX_FILE, else the newest <BUILD_DIR>/<DISTRO>/*.libvirt.box): box.img's
#      /boot/vmlinuz-* is read with qemu-img + debugfs (no mount, no loop device) into the cache directory, once
#      per box file
#   4. none: a 512-byte boot sector, with a warning that this weaker probe can answer kvm where Linux then hangs
#      (the infra suites' serial watch then reports "no kernel progress"; ACCEL=tcg / KILN_LIBVIRT_DRIVER=qemu)
# The answer is cached per host boot and kernel: the key is /proc/sys/kernel/random/boot_id, the kernel file's
# sha256 (a new kernel re-probes) and the QEMU binary; concurrent callers wait for one probe (flock).
#
# Usage: kvm-probe.sh [--libvirt] [-q]     -q: say nothing on a cache hit (the Vagrantfile asks on every command)
# Env: ACCEL=kvm|tcg overrides (both modes); KILN_LIBVIRT_DRIVER=kvm|qemu overrides in --libvirt mode;
#      PROBE_KERNEL; DISTRO / KILN_DISTRO [debian-13]; KILN_BOX_FILE; PROBE_TIMEOUT [25] seconds;
#      KILN_PROBE_CACHE [/var/tmp/kiln-kvm-probe] cache directory; KILN_PROBE_NOCACHE=1 always probes.
set -euo pipefail
libvirt=0 quiet=0
for a in "$@"; do
  case $a in
    --libvirt) libvirt=1 ;; -q) quiet=1 ;;
    *) sed -n '2,26p' "$0" >&2; exit 2 ;;
  esac
done
answer() { # $1 = kvm|tcg
  if [ "$libvirt" = 1 ]; then [ "$1" = kvm ] && echo kvm || echo qemu; else echo "$1"; fi
}
say() { echo "kvm-probe: $*" >&2; }
if [ "$libvirt" = 1 ] && [ -n "${KILN_LIBVIRT_DRIVER:-}" ]; then
  case $KILN_LIBVIRT_DRIVER in kvm|qemu) echo "$KILN_LIBVIRT_DRIVER"; exit 0 ;; esac
  say "KILN_LIBVIRT_DRIVER must be kvm or qemu"; exit 2
fi
if [ -n "${ACCEL:-}" ]; then
  case $ACCEL in kvm|tcg) answer "$ACCEL"; exit 0 ;; *) say "ACCEL must be kvm or tcg"; exit 2 ;; esac
fi
qemu=$(command -v qemu-system-x86_64 || true)
[ -n "$qemu" ] || { say "no qemu-system-x86_64"; answer tcg; exit 0; }
if ! [ -c /dev/kvm ] || ! [ -r /dev/kvm ] || ! [ -w /dev/kvm ]; then say "/dev/kvm not usable"; answer tcg; exit 0; fi

repo=$(cd "$(dirname "$0")/../.." && pwd)
distro=${DISTRO:-${KILN_DISTRO:-debian-13}}
build=${BUILD_DIR:-$repo/build}
cachedir=${KILN_PROBE_CACHE:-/var/tmp/kiln-kvm-probe}
mkdir -p "$cachedir"
exec 9>"$cachedir/lock"
flock 9 # one probe at a time; the second caller then finds the first one's answer

# the newest existing file among the arguments (unmatched globs drop out)
newest() { local f best=""; for f in "$@"; do [ -f "$f" ] && { [ -z "$best" ] || [ "$f" -nt "$best" ]; } && best=$f; done; echo "$best"; }

# The kernel inside a Vagrant box: tar -> box.img (qcow2) -> raw (sparse) -> first MBR partition with /boot/vmlinuz-*.
box_kernel() (
  box=$1
  key=$(stat -L -c '%s-%Y-%i' "$box")
  out="$cachedir/box-$(basename "$box" .box)-$key.vmlinuz"
  if [ -s "$out" ]; then echo "$out"; return 0; fi
  if ! command -v qemu-img >/dev/null || ! command -v debugfs >/dev/null; then say "box kernel: needs qemu-img and debugfs"; return 1; fi
  tmp=$(mktemp -d "$cachedir/box.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  tar -xf "$box" -C "$tmp" box.img 2>/dev/null || { say "box kernel: no box.img in $box"; return 1; }
  qemu-img convert -O raw "$tmp/box.img" "$tmp/disk.raw" || { say "box kernel: qemu-img convert failed"; return 1; }
  rm -f "$tmp/box.img"
  for i in 0 1 2 3; do # MBR partition entries: start LBA at 446 + 16*i + 8, little-endian
    start=$(od -An -tu4 -j $((446 + 16 * i + 8)) -N4 "$tmp/disk.raw" | tr -d ' ')
    [ "${start:-0}" -gt 0 ] || continue
    off=$((start * 512))
    k=$(debugfs -R 'ls -p /boot' "$tmp/disk.raw?offset=$off" 2>/dev/null | awk -F/ '$6 ~ /^vmlinuz-/ {print $6}' | sort -V | tail -1)
    [ -n "$k" ] || continue
    debugfs -R "dump /boot/$k $out.tmp" "$tmp/disk.raw?offset=$off" >/dev/null 2>&1 || continue
    [ -s "$out.tmp" ] || continue
    rm -f "$cachedir/box-$(basename "$box" .box)-"*.vmlinuz # older extractions of this box name
    mv -f "$out.tmp" "$out"
    say "box kernel: /boot/$k of $(basename "$box") -> $out"
    echo "$out"; return 0
  done
  say "box kernel: no /boot/vmlinuz-* found in $box"; return 1
)

kernel=${PROBE_KERNEL:-}
src="PROBE_KERNEL"
if [ -z "$kernel" ]; then
  src="base disk"
  kernel=$(newest "$build/base/$distro.qcow2.vmlinuz")
  [ -n "$kernel" ] || kernel=$(newest "$build"/base/*.vmlinuz)
fi
if [ -z "$kernel" ]; then
  box=${KILN_BOX_FILE:-$(newest "$build/$distro"/*.libvirt.box)}
  if [ -n "$box" ] && [ -r "$box" ]; then src="Vagrant box $(basename "$box")"; kernel=$(box_kernel "$box" || true); fi
fi
if [ -n "$kernel" ] && ! [ -r "$kernel" ]; then say "kernel $kernel is not readable"; kernel=""; fi

boot_id=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null || echo no-boot-id)
if [ -n "$kernel" ]; then
  ident="kernel:$(sha256sum "$kernel" | cut -c1-16)"
else
  ident="boot-sector"
fi
key="$boot_id $ident qemu:$(stat -L -c '%s-%Y' "$qemu")"
cache="$cachedir/answers"
if [ "${KILN_PROBE_NOCACHE:-0}" != 1 ] && [ -s "$cache" ]; then
  hit=$(awk -v k="$key" '{r = $NF; $NF = ""; sub(/ $/, ""); if ($0 == k) print r}' "$cache" | tail -1)
  if [ -n "$hit" ]; then
    if [ "$ident" = boot-sector ] && [ "$hit" = kvm ]; then
      say "WARNING: cached answer kvm from the weaker boot-sector probe (no image kernel here); if a VM hangs at 'Loading Linux', use ACCEL=tcg / KILN_LIBVIRT_DRIVER=qemu"
    elif [ "$quiet" = 0 ]; then
      say "$hit (cached for this host boot, $ident)"
    fi
    answer "$hit"; exit 0
  fi
fi

tmp=$(mktemp -d)
pid=""
stop_qemu() {
  if [ -n "$pid" ]; then
    if [ -s "$tmp/qemu.pid" ]; then kill "$(cat "$tmp/qemu.pid")" 2>/dev/null || true; fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  pid=""
}
trap 'stop_qemu; rm -rf "$tmp"' EXIT
if [ -n "$kernel" ]; then
  boot=(-kernel "$kernel" -append "console=ttyS0 panic=-1 root=/dev/nonexistent")
  want='VFS: Cannot open root|Kernel panic - not syncing|Unable to mount root'
  what="kernel $(basename "$kernel") ($src)"
else
  say "WARNING: no image kernel ($build/base/*.vmlinuz from build-base-disk.sh, or $build/$distro/*.libvirt.box):" \
      "falling back to the weaker boot-sector probe, which can answer kvm on hosts where Linux then hangs at" \
      "'Loading Linux'; if a VM hangs there, use ACCEL=tcg / KILN_LIBVIRT_DRIVER=qemu"
  # mov dx,0x3f8; mov al,'O'; out dx,al; mov al,'K'; out dx,al; cli; hlt
  printf '\xba\xf8\x03\xb0O\xee\xb0K\xee\xfa\xf4' >"$tmp/boot.img"
  truncate -s 510 "$tmp/boot.img"; printf '\x55\xaa' >>"$tmp/boot.img"
  boot=(-drive "file=$tmp/boot.img,format=raw,if=ide")
  want='OK'
  what="boot sector (weaker probe)"
fi
t0=$(date +%s)
# In a subshell whose stderr is discarded: bash would print QEMU's abort ("failed to set MSR") as a job message.
( timeout "${PROBE_TIMEOUT:-25}" "$qemu" -accel kvm -cpu max -m 256 -smp 1 -display none -nodefaults -no-reboot \
    "${boot[@]}" -serial "file:$tmp/serial" -pidfile "$tmp/qemu.pid" >"$tmp/err" 2>&1; exit $? ) 2>/dev/null &
pid=$!
result=tcg
while kill -0 "$pid" 2>/dev/null || [ -s "$tmp/serial" ]; do
  if grep -Eq "$want" "$tmp/serial" 2>/dev/null; then result=kvm; break; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.3
done
stop_qemu
if [ "$result" = kvm ]; then
  say "KVM booted the $what in $(( $(date +%s) - t0 ))s -> kvm"
else
  say "KVM probe with the $what failed after $(( $(date +%s) - t0 ))s: $(head -c 200 "$tmp/err" | tr '\n' ' ')$(tail -c 200 "$tmp/serial" 2>/dev/null | tr -d '\r' | tr '\n' ' ') -> tcg"
fi
# keep this boot's answers only
{ grep -F "$boot_id " "$cache" 2>/dev/null | awk -v k="$key" '{l = $0; $NF = ""; sub(/ $/, ""); if ($0 != k) print l}' || true
  echo "$key $result"; } >"$cache.tmp" && mv -f "$cache.tmp" "$cache"
answer "$result"
