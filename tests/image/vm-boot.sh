#!/usr/bin/env bash
# Sourced by boot-check.sh: boot the built image once under QEMU, the way a cloud would start
# it (a copy-on-write overlay: the image is never modified; user networking with random free loopback ports forwarded
# to 22/80/443), and wait for its first GET of the baked app's health path (/readyz for the reference app) answered
# 200 through nginx.
#   vm_image CHECK [IMAGE]  sets IMAGE (the argument, else $IMAGE, else the newest build/<DISTRO>/kiln-<DISTRO>-*.qcow2;
#                  exits naming CHECK if there is none), DISTRO [debian-13], BOOT_TIMEOUT [900], KERNEL_STALL [60],
#                  HEALTH (the contract's `health` in the image's manifest, IMAGE's name with .manifest.json; an
#                  image without one: /readyz)
#   vm_ssh_key COMMENT [ALIVE]  $work/key (a fresh ed25519 key) and SSH_OPTS to log in with it: no host key kept, batch
#                  mode, a keepalive every 5 s, given up after ALIVE [6] unanswered
#   make_seed NAME USER [CLOUD-CONFIG]  $work/NAME-seed.iso: a NoCloud seed (Proxmox's way, and most clouds' fallback)
#                  that makes USER, with sudo and $work/key.pub as its SSH key; CLOUD-CONFIG: more top-level keys
#   boot_vm NAME NETDEV NIC [QEMU-ARG...]  boots $work/NAME.qcow2 over IMAGE as a provider stores it once imported
#                  ($work/base.qcow2: an uncompressed copy, made at the first boot_vm); NETDEV and NIC are extra options of the
#                  user network and of its virtio NIC ("" for none). Sets vmpid P22 P80 P443 BOOT_SECS; returns 2 on
#                  a kernel panic (the VM is stopped).
#   boot_retry NAME FN   runs FN NAME (a function that calls boot_vm), once more after a kernel panic
#   stop_vm        kills the VM (a throw-away overlay: no clean poweroff needed)
#   free_port      a free loopback TCP port
#   vm_work_done CHECK RC   removes work, or after a failure (RC not 0) or with KEEP_LOGS=1 keeps it but the overlays
# The serial console is watched: a kernel panic is reported as such (boot_retry retries it once: under TCG 1 of 13
# boots panicked early, cause unknown); a boot whose console stops growing before systemd runs (e.g. stuck at
# "Loading Linux ...") fails after KERNEL_STALL seconds instead of waiting until BOOT_TIMEOUT. If the caller defines
# boot_watch, boot_vm calls `boot_watch NAME SERIAL-LOG` on every poll: it may fail the boot early.
# The caller sets repo, ACCEL, SMP/MEM (optional) and work (a directory) and calls vm_image, and defines say MESSAGE
# and fail MESSAGE (exits).
# shellcheck disable=SC2154  # work, repo: the sourcing script's
vmpid=""

vm_image() {
  DISTRO=${DISTRO:-debian-13}
  local newest
  # (no build/ at all is no image here: find's failure must not end a caller under `set -e -o pipefail` silently)
  newest=$(find "$repo/build/$DISTRO" -maxdepth 1 -name "kiln-$DISTRO-*.qcow2" -printf '%T@ %p\n' 2>/dev/null \
    | sort -n | tail -1 | cut -d' ' -f2- || true)
  IMAGE=${2:-${IMAGE:-$newest}}
  if [ -z "$IMAGE" ] || [ ! -r "$IMAGE" ]; then
    echo "$1: no image (build one: make image, or set IMAGE=)" >&2; exit 1
  fi
  IMAGE=$(readlink -f "$IMAGE")
  HEALTH=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["app"]["contract"]["health"])' \
    "${IMAGE%.qcow2}.manifest.json" 2>/dev/null || echo /readyz)
  BOOT_TIMEOUT=${BOOT_TIMEOUT:-900}
  KERNEL_STALL=${KERNEL_STALL:-60}
}

vm_work_done() {
  if [ "$2" -ne 0 ] || [ -n "${KEEP_LOGS:-}" ]; then
    echo "$1: logs kept in $work" >&2
    rm -f "$work"/*.qcow2
  else
    rm -rf "$work"
  fi
}

vm_ssh_key() {
  ssh-keygen -q -t ed25519 -N '' -C "$1" -f "$work/key"
  # shellcheck disable=SC2034  # the sourcing script's
  SSH_OPTS=(-i "$work/key" -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
            -o LogLevel=ERROR -o ConnectTimeout=10 -o BatchMode=yes -o ServerAliveInterval=5 -o ServerAliveCountMax="${2:-6}")
}

make_seed() {
  local n=$1 d="$work/$1-seed"
  mkdir -p "$d"
  cat >"$d/user-data" <<EOF
#cloud-config
users:
  - name: $2
    shell: /bin/bash
    lock_passwd: true
    sudo: "ALL=(ALL) NOPASSWD:ALL"
    ssh_authorized_keys:
      - $(cat "$work/key.pub")
${3:-}
EOF
  printf 'instance-id: kiln-%s-%s\nlocal-hostname: kiln-%s\n' "$n" "$(date +%s%N)" "$n" >"$d/meta-data"
  genisoimage -quiet -output "$work/$n-seed.iso" -volid cidata -joliet -rock "$d/user-data" "$d/meta-data"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

stop_vm() {
  if [ -n "$vmpid" ] && kill -0 "$vmpid" 2>/dev/null; then
    kill "$vmpid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$vmpid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$vmpid" 2>/dev/null || true
  fi
  if [ -n "$vmpid" ]; then wait "$vmpid" 2>/dev/null || true; fi
  vmpid=""
}

boot_vm() {
  local n=$1 netdev=$2 nic=$3 serial="$work/$1-serial.log" t0 code url
  shift 3
  # No provider boots the zlib-compressed image file itself: its import writes the disk to the provider's storage
  # (raw or uncompressed). The same here, outside the boot's timing: under TCG each read of a compressed cluster
  # would cost the host CPU that the guest's vCPUs need.
  if [ ! -s "$work/base.qcow2" ]; then
    local tc=$EPOCHREALTIME
    qemu-img convert -O qcow2 "$IMAGE" "$work/base.qcow2.tmp" || fail "$n: cannot convert $IMAGE to an uncompressed copy in $work"
    mv "$work/base.qcow2.tmp" "$work/base.qcow2" || fail "$n: cannot move the uncompressed copy into place"
    say "$n: $(basename "$IMAGE") as a provider stores it (uncompressed): $(du -h "$work/base.qcow2" | cut -f1) in $(awk -v a="$EPOCHREALTIME" -v b="$tc" 'BEGIN { printf "%.1f", a - b }') s"
  fi
  qemu-img create -q -f qcow2 -F qcow2 -b "$work/base.qcow2" "$work/$n.qcow2"
  P22=$(free_port); P80=$(free_port); P443=$(free_port)
  : >"$serial"
  t0=$EPOCHREALTIME
  # setsid: a session, so a scheduler autogroup, of its own: beside the Vagrant VM (libvirtd's autogroup) it gets an
  # equal share of the CPU, not a share of whatever else runs in this session
  # one socket (as QEMU >= 6.2 makes of a plain -smp N, said here for older ones): on more sockets of this CPU model
  # the guest's kernel counts its TSCs as unsynchronized and keeps time with the emulated HPET (packer/sources.pkr.hcl)
  setsid qemu-system-x86_64 -accel "$ACCEL" -cpu max -smp "${SMP:-2},sockets=1" -m "${MEM:-2048}" -display none -nodefaults \
    -serial "file:$serial" -no-reboot -qmp "unix:$work/$n-qmp.sock,server=on,wait=off" \
    -drive "file=$work/$n.qcow2,if=virtio,format=qcow2,discard=unmap" "$@" \
    -netdev "user,id=n0,${netdev:+$netdev,}hostfwd=tcp:127.0.0.1:$P22-:22,hostfwd=tcp:127.0.0.1:$P80-:80,hostfwd=tcp:127.0.0.1:$P443-:443" \
    -device "virtio-net-pci,netdev=n0${nic:+,$nic}" >"$work/$n-qemu.log" 2>&1 &
  vmpid=$!
  say "$n: booting $(basename "$IMAGE") (accel $ACCEL, pid $vmpid, ssh :$P22, http :$P80, https :$P443)"
  local last="" now size=0 grown_at=0 userspace="" stuck
  while :; do
    if grep -aqE 'Kernel panic|Oops: ' "$serial"; then
      say "$n: KERNEL PANIC on the serial console:"
      grep -aE -A3 'Kernel panic|Oops: ' "$serial" | head -12 | sed 's/^/    /'
      stop_vm; return 2
    fi
    kill -0 "$vmpid" 2>/dev/null || { tail -20 "$serial"; cat "$work/$n-qemu.log"; fail "$n: QEMU exited"; }
    now=$(( ${EPOCHREALTIME%.*} - ${t0%.*} ))
    # Kernel progress: until systemd runs, the console must keep growing (GRUB, then the kernel's messages).
    if [ -z "$userspace" ]; then
      if grep -aqE 'systemd\[1\]|Welcome to |Reached target|login:' "$serial"; then
        userspace=$now; say "$n: ${now}s: systemd runs (serial console)"
      elif [ "$(stat -c %s "$serial")" != "$size" ]; then
        size=$(stat -c %s "$serial"); grown_at=$now
      elif [ $(( now - grown_at )) -ge "$KERNEL_STALL" ]; then
        stuck=$(tr -d '\r' <"$serial" | grep -av '^[[:space:]]*$' | tail -1 | cut -c1-160 || true)
        stop_vm
        fail "$n: no kernel progress after ${now}s: stuck at ${stuck:-<no console output at all>} (no new console output for ${KERNEL_STALL}s; a half-working KVM? ACCEL=tcg forces emulation)"
      fi
    fi
    if declare -F boot_watch >/dev/null; then boot_watch "$n" "$serial"; fi
    # The health path over HTTP, where nginx proxies it (kiln-app-http.conf); '/' only over HTTPS (self-signed).
    if [ "$HEALTH" = / ]; then url=https://127.0.0.1:$P443/; else url=http://127.0.0.1:$P80$HEALTH; fi
    code=$(curl -sk -o "$work/$n-readyz.json" -w '%{http_code}' -m 5 "$url" || true)
    if [ "$code" = 200 ]; then
      BOOT_SECS=$(awk -v now="$EPOCHREALTIME" -v t0="$t0" 'BEGIN { printf "%.1f", now - t0 }')
      say "$n: boot -> first GET $HEALTH 200 in ${BOOT_SECS}s: $(head -c 300 "$work/$n-readyz.json")"
      return 0
    fi
    [ "$now" -lt "$BOOT_TIMEOUT" ] || { tail -30 "$serial"; fail "$n: no $HEALTH 200 within ${BOOT_TIMEOUT}s (last: ${code:-none})"; }
    if [ "$code" != "$last" ]; then say "$n: ${now}s: $HEALTH -> ${code/000/no answer}"; last=$code; fi
    # The time to the first 200 is this poll's: every 0.5 s (no process but grep, stat and curl per poll: the host's
    # CPUs also run the guest's), so the figure is at most ~0.5 s late (a 2 s poll made it up to 2 s late).
    sleep 0.5
  done
}

boot_retry() { # boot once, retry once after a kernel panic
  local rc=0
  "$2" "$1" || rc=$?
  if [ $rc -eq 2 ]; then
    say "$1: retrying the boot once after the kernel panic"
    mv "$work/$1-serial.log" "$work/$1-serial.panic.log"
    rm -f "$work/$1.qcow2"
    rc=0; "$2" "$1" || rc=$?
    [ $rc -eq 0 ] || fail "$1: kernel panic twice"
  fi
}
