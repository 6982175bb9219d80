#!/usr/bin/env bash
# Print the QEMU accelerator that really boots a guest here: "kvm" or "tcg".
# /dev/kvm existing is not enough (nested paravirtual KVM can abort with "failed to set MSR" or hang in the kernel
# decompressor), so this boots a real kernel under -accel kvm -cpu max with a timeout and waits until it gets as far
# as mounting a root filesystem (there is none: it then panics and QEMU exits). Without a kernel it boots a
# 512-byte boot sector instead (weaker: proves only that KVM runs real-mode code).
# Env: ACCEL=kvm|tcg overrides; PROBE_KERNEL [build/base/*.vmlinuz, newest]; PROBE_TIMEOUT [25] seconds.
set -euo pipefail
if [ -n "${ACCEL:-}" ]; then
  case $ACCEL in kvm|tcg) echo "$ACCEL"; exit 0 ;; *) echo "kvm-probe: ACCEL must be kvm or tcg" >&2; exit 2 ;; esac
fi
say() { echo "kvm-probe: $*" >&2; }
qemu=$(command -v qemu-system-x86_64 || true)
[ -n "$qemu" ] || { say "no qemu-system-x86_64"; echo tcg; exit 0; }
if ! [ -c /dev/kvm ] || ! [ -r /dev/kvm ] || ! [ -w /dev/kvm ]; then say "/dev/kvm not usable"; echo tcg; exit 0; fi

repo=$(cd "$(dirname "$0")/../.." && pwd)
kernel=${PROBE_KERNEL:-$(find "$repo/build/base" -maxdepth 1 -name '*.vmlinuz' 2>/dev/null | sort | tail -1)}
tmp=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT
if [ -n "$kernel" ] && [ -r "$kernel" ]; then
  boot=(-kernel "$kernel" -append "console=ttyS0 panic=-1 root=/dev/nonexistent")
  want='VFS: Cannot open root|Kernel panic - not syncing|Unable to mount root'
  what="kernel $(basename "$kernel")"
else
  # mov dx,0x3f8; mov al,'O'; out dx,al; mov al,'K'; out dx,al; cli; hlt
  printf '\xba\xf8\x03\xb0O\xee\xb0K\xee\xfa\xf4' >"$tmp/boot.img"
  truncate -s 510 "$tmp/boot.img"; printf '\x55\xaa' >>"$tmp/boot.img"
  boot=(-drive "file=$tmp/boot.img,format=raw,if=ide")
  want='OK'
  what="boot sector"
fi
t0=$(date +%s)
timeout "${PROBE_TIMEOUT:-25}" "$qemu" -accel kvm -cpu max -m 256 -smp 1 -display none -nodefaults -no-reboot \
  "${boot[@]}" -serial "file:$tmp/serial" >"$tmp/err" 2>&1 &
pid=$!
result=tcg
while kill -0 "$pid" 2>/dev/null || [ -s "$tmp/serial" ]; do
  if grep -Eq "$want" "$tmp/serial" 2>/dev/null; then result=kvm; break; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.3
done
kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=""
if [ "$result" = kvm ]; then
  say "KVM booted the $what in $(( $(date +%s) - t0 ))s"
else
  say "KVM probe with the $what failed after $(( $(date +%s) - t0 ))s: $(head -c 200 "$tmp/err" | tr '\n' ' ')$(tail -c 200 "$tmp/serial" 2>/dev/null | tr -d '\r' | tr '\n' ' ') -> tcg"
fi
echo "$result"
