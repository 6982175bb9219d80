#!/usr/bin/env bash
# Print the libvirt domain type to use: "kvm" when KVM really runs a guest, else "qemu" (TCG).
# /dev/kvm existing is not enough (nested paravirtual KVM on some CI hosts aborts with "failed to set MSR" or
# hangs), so this boots a 512-byte boot sector under `-accel kvm -cpu host` and waits for it to write to the
# serial port. Override: KILN_LIBVIRT_DRIVER=kvm|qemu. The result is cached per boot of the host in
# ${KILN_DRIVER_CACHE:-/tmp/kiln-libvirt-driver}.
set -euo pipefail
if [ -n "${KILN_LIBVIRT_DRIVER:-}" ]; then echo "$KILN_LIBVIRT_DRIVER"; exit 0; fi
cache=${KILN_DRIVER_CACHE:-/tmp/kiln-libvirt-driver}
boot_id=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null || echo none)
if [ -s "$cache" ] && [ "$(sed -n 2p "$cache")" = "$boot_id" ]; then sed -n 1p "$cache"; exit 0; fi

driver=qemu
qemu=$(command -v qemu-system-x86_64 || true)
if [ -c /dev/kvm ] && [ -r /dev/kvm ] && [ -w /dev/kvm ] && [ -n "$qemu" ]; then
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  # mov dx,0x3f8; mov al,'K'; out dx,al; mov al,'V'; out dx,al; mov al,10; out dx,al; hlt; jmp $-1
  printf '\xba\xf8\x03\xb0K\xee\xb0V\xee\xb0\x0a\xee\xf4\xeb\xfd' >"$tmp/probe.img"
  truncate -s 510 "$tmp/probe.img"; printf '\x55\xaa' >>"$tmp/probe.img"
  ( timeout 20 "$qemu" -accel kvm -cpu host -m 64 -display none -no-reboot -nodefaults \
      -drive "file=$tmp/probe.img,format=raw,if=ide" -serial "file:$tmp/serial" >"$tmp/err" 2>&1; exit 1 ) 2>/dev/null &
  pid=$!
  for _ in $(seq 1 40); do
    if grep -q KV "$tmp/serial" 2>/dev/null; then driver=kvm; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  if [ "$driver" = qemu ] && [ -s "$tmp/err" ]; then
    printf 'detect-driver: KVM probe failed: %s\n' "$(head -c 300 "$tmp/err" | tr '\n' ' ')" >&2
  fi
fi
printf '%s\n%s\n' "$driver" "$boot_id" >"$cache" 2>/dev/null || true
echo "$driver"
