#!/usr/bin/env bash
# Watch a booting VM's serial console and stop waiting on a boot that cannot succeed: a kernel panic, or no kernel
# progress (the console stops growing before systemd has started, e.g. stuck at "Loading Linux ..." under a KVM
# that runs a boot sector but not a kernel). The VM process is killed and the reason printed, instead of waiting
# for SSH until the boot timeout.
# Usage: packer/scripts/serial-watch.sh SERIAL_LOG PID [STALL_SECONDS=90]
# Exit: 0 the boot got past the kernel (systemd is running) or PID ended; 3 kernel panic; 4 no kernel progress.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 SERIAL_LOG PID [STALL_SECONDS]" >&2; exit 2; }
log=$1 pid=$2 stall=${3:-90}
# systemd's first lines on the console: the kernel is done and user space runs.
past_kernel='systemd\[1\]|Welcome to |Reached target|login:'
last_size=-1 last_change=$(date +%s)
last_line() { tr -d '\r' <"$log" 2>/dev/null | grep -v '^[[:space:]]*$' | tail -1 | cut -c1-160; }
while kill -0 "$pid" 2>/dev/null; do
  if grep -q 'Kernel panic' "$log" 2>/dev/null; then
    echo "serial-watch: KERNEL PANIC on the serial console ($log):" >&2
    grep -a -A8 -B20 'Kernel panic' "$log" | tr -d '\r' | tail -30 >&2
    kill "$pid" 2>/dev/null || true
    exit 3
  fi
  if grep -Eq "$past_kernel" "$log" 2>/dev/null; then exit 0; fi
  size=$(stat -c %s "$log" 2>/dev/null || echo 0)
  now=$(date +%s)
  if [ "$size" != "$last_size" ]; then last_size=$size last_change=$now; fi
  if [ $(( now - last_change )) -ge "$stall" ]; then
    echo "serial-watch: no kernel progress for ${stall}s (console $log, $size bytes): stuck at '$(last_line)'" >&2
    echo "serial-watch: if this host's KVM is half-working, force emulation: ACCEL=tcg (see packer/scripts/kvm-probe.sh)" >&2
    kill "$pid" 2>/dev/null || true
    exit 4
  fi
  sleep 2
done
exit 0
