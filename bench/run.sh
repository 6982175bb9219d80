#!/usr/bin/env bash
# make bench (issue 13): how fast Kiln's server serves, side by side with DigitalOcean's Django 1-Click configuration,
# in one run, measured by bench/bench.py on one of two tiers (BENCH_TIER):
#   nspawn (make bench): the provisioned root file system (tests/hardening/nspawn-lib.sh, as
#          tests/provision/nspawn-check.sh provisions it) booted in a systemd-nspawn container confined to one CPU (a
#          1-vCPU VPS), with a network of its own (loopback only), measured by wrk pinned to the other CPU.
#   vm     (make bench-vm): the built image (the newest build/<DISTRO>/*.qcow2, else IMAGE=) booted under QEMU as
#          the boot check boots it (tests/image/vm-boot.sh: a throw-away overlay, a NoCloud seed), 2 vCPUs; the same
#          bench.py runs inside it, its services (system.slice) confined to vCPU 0, wrk (Debian's, this distro's
#          .deb) on vCPU 1. Under TCG an indicative figure: its ratios, not its req/s (mode tcg: shorter, ~6 min).
# Prints a table; writes bench/results/<commit>-<tier>.json and .png (for the VM tier the image's commit). Exit 0
# only when every validity gate passed; a run that fails one prints which, and no figures.
# Usage: bench/run.sh   (root)
#   BENCH_TIER=nspawn|vm  [nspawn]
#   BENCH_QUICK=1         1 s cells, 2 repetitions, 100/50 jobs (make test-bench, in make test: the harness must not
#                         rot; ~75 s with a cached rootfs)
#   BENCH_SERVER_CPU=0 BENCH_CLIENT_CPU=1   the CPUs (the VM's vCPUs) of the server and of the load generator
#   BENCH_KEEP=1          leave the container or VM running at the end until a file says stop (nspawn: its init pid
#                         printed; vm: its SSH command)
# The provisioned rootfs is cached in /var/tmp/kiln-bench-cache, keyed by provision/, app/ and the rootfs recipe (the
# peer's packages beside it, which the VM tier copies into its guest: the same distro's Python): the first run after a
# change there provisions it (install.sh offline, ~1-2 min), the rest boot it at once (--volatile=overlay: every run
# is the first boot of a fresh instance; nothing is written back).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=tests/hardening/nspawn-lib.sh
. "$REPO/tests/hardening/nspawn-lib.sh"
QUICK=${BENCH_QUICK:-0}
TIER=${BENCH_TIER:-nspawn}
SERVER_CPU=${BENCH_SERVER_CPU:-0}
CLIENT_CPU=${BENCH_CLIENT_CPU:-1}
CACHE=/var/tmp/kiln-bench-cache
HOSTPY=/usr/bin/python3   # Debian's Python: python3-matplotlib for the chart (bench.py needs only the stdlib)
T_START=$(date +%s)
say() { printf '==> %s  [%s, +%ss]\n' "$*" "$(date -u +%T)" "$(( $(date +%s) - T_START ))"; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root"
case $TIER in nspawn | vm) ;; *) die "BENCH_TIER is nspawn or vm, not '$TIER'" ;; esac
[ "$SERVER_CPU" != "$CLIENT_CPU" ] || die "BENCH_SERVER_CPU and BENCH_CLIENT_CPU must differ"
for cpu in "$SERVER_CPU" "$CLIENT_CPU"; do
  taskset -c "$cpu" true 2>/dev/null || die "CPU $cpu is not available here ($(nproc) CPUs)"
done
"$REPO/tools/apt-ensure.sh" wrk mmdebstrap systemd-container curl python3-matplotlib
if [ "$TIER" = vm ]; then "$REPO/tools/apt-ensure.sh" qemu-system-x86 qemu-utils genisoimage openssh-client; fi
mkdir -p "$CACHE" "$REPO/bench/results"
# One bench at a time on this machine: two would share the pinned CPUs.
exec 9>"$CACHE/lock"
flock -n 9 || { echo "bench: another bench runs on this machine; waiting for it"; flock 9; }

COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo uncommitted)
if [ -n "$(git -C "$REPO" status --porcelain -- provision app bench ':!bench/results' 2>/dev/null)" ]; then COMMIT=$COMMIT-dirty; fi
WORK=$(mktemp -d /var/tmp/kiln-bench.XXXXXX)
finish() {
  local rc=$?
  nspawn_stop
  if [ "$TIER" = vm ]; then stop_vm; fi
  rm -rf "$WORK"
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- the provisioned rootfs (cached)
ROOTFS=$CACHE/rootfs-$(kiln_rootfs_key)
if [ -e "$ROOTFS.ready" ]; then
  say "rootfs: cached $ROOTFS"
else
  rm -rf "$ROOTFS" "$ROOTFS.partial"
  if kiln_rootfs_provisioned "$ROOTFS.partial"; then
    # install.sh ran in the nspawn tier (tests/provision/nspawn-check.sh) on the same provision/ and app/. Hard links
    # to its copy: files here are only replaced (rm, then written), and every boot is on an overlay.
    say "rootfs: the nspawn tier's provisioned rootfs of this tree, hard-linked ($ROOTFS)"
  else
    say "rootfs: provisioning $ROOTFS (provision/ or app/ changed; install.sh offline, as the nspawn tier does)"
    # apt's .deb cache of its own (hard links to the nspawn tier's): a check running meanwhile holds that one's lock.
    mkdir -p "$CACHE/apt-archives/partial"
    find "$KILN_ROOTFS_CACHE/apt-archives" -maxdepth 1 -name '*.deb' -exec cp -l -n -t "$CACHE/apt-archives/" {} + 2>/dev/null || true
    KILN_ROOTFS_BIND=(--bind="$CACHE/apt-archives:/var/cache/apt/archives")
    kiln_rootfs_prepare "$ROOTFS.partial" "$WORK"
    if ! kiln_rootfs_install "$ROOTFS.partial" "bench-$COMMIT" "$COMMIT" >"$WORK/install.log"; then
      tail -30 "$WORK/install.log"; die "install.sh failed (above)"
    fi
    grep -E 'change\(s\)' "$WORK/install.log" | tail -1 | sed 's/^/  | /'
  fi
  # Bench-only, in this rootfs only: the app's static files also through Django (off by default: kiln.settings).
  rm -f "$ROOTFS.partial/etc/kiln/overrides.env"   # a new file, not one shared by a hard link
  printf '# bench/run.sh: benchmarks only\nKILN_BENCH_STATIC=1\n' >"$ROOTFS.partial/etc/kiln/overrides.env"
  mv "$ROOTFS.partial" "$ROOTFS"
  touch "$ROOTFS.ready"
  for old in "$CACHE"/rootfs-*.ready "$CACHE"/peer-*.ready; do  # older ones: their inputs changed
    [ "$old" = "$ROOTFS.ready" ] || rm -rf "$old" "${old%.ready}"
  done
  say "rootfs: ready"
fi
# CMD... in the rootfs without booting it, writes to a throw-away overlay, with this host's resolver (pip, apt).
in_rootfs() {
  systemd-nspawn -q -D "$ROOTFS" --volatile=overlay --register=no --keep-unit --resolv-conf=copy-host "$@" </dev/null
}
# The peer's packages (bench/peers/digitalocean/requirements.txt), installed with the rootfs's Python into a folder of
# their own, mounted into the container at /opt/kiln-bench-peer/site: never into Kiln's venv. pip runs in the rootfs
# (its writes there go to a throw-away overlay), with this host's CA bundle (an intercepting proxy re-signs HTTPS here).
PEER_SITE=$CACHE/peer-$( { basename "$ROOTFS"; cat "$REPO/bench/peers/digitalocean/requirements.txt"; } | sha256sum | cut -c1-16)
if [ ! -e "$PEER_SITE.ready" ]; then
  say "the peer's packages: pip install -r bench/peers/digitalocean/requirements.txt"
  rm -rf "$PEER_SITE"; mkdir -p "$PEER_SITE"
  in_rootfs --bind-ro=/etc/ssl/certs/ca-certificates.crt:/run/kiln-bench-ca.crt \
    --bind-ro="$REPO/bench/peers:/run/kiln-bench-peers" --bind="$PEER_SITE:/opt/kiln-bench-peer/site" \
    /srv/kiln/current/venv/bin/pip install -q --disable-pip-version-check --cert /run/kiln-bench-ca.crt \
    --target /opt/kiln-bench-peer/site -r /run/kiln-bench-peers/digitalocean/requirements.txt \
    || die "pip install of the peer's requirements failed"
  touch "$PEER_SITE.ready"
fi

# ---------------------------------------------------------------- boot: the server, pinned
out=""                  # bench/results/<commit>-<tier>[-quick] (set by the tier's boot)
args=()                 # bench.py's arguments for the tier
mode=full
if [ "$QUICK" = 1 ]; then mode=quick; fi
# The image side (build stages, TCG boots): the newest image's manifest and its boot check's figures, when this
# checkout built one (make image, make image-check); the table names that image and its commit. None in a clean
# clone (no build/: find fails, which must not end the run).
manifest=$( { find "$REPO/build/${DISTRO:-debian-13}" -maxdepth 1 -name 'kiln-*.manifest.json' -printf '%T@ %p\n' \
  2>/dev/null || true; } | sort -n | tail -1 | cut -d' ' -f2-)

boot_nspawn() {
  say "boot: the container on CPU $SERVER_CPU (private network: loopback only), wrk on CPU $CLIENT_CPU"
  NSPAWN_CGROUP=kiln-bench-$$
  NSPAWN_CPUS=$SERVER_CPU
  NSPAWN_ARGS=(--bind-ro="$REPO/bench:/opt/kiln-bench" --bind-ro="$PEER_SITE:/opt/kiln-bench-peer/site")
  local t0 ready=""
  t0=$(date +%s.%N)
  nspawn_boot "$ROOTFS" "kbench$$"
  for _ in $(seq 1200); do
    if [ "$(nspawn_exec curl -s -o /dev/null -w '%{http_code}' --max-time 5 http://127.0.0.1/readyz || true)" = 200 ]; then
      ready=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'); break
    fi
    sleep 0.1
  done
  [ -n "$ready" ] || { nspawn_exec systemctl --failed --no-legend | sed 's/^/  failed: /'; die "no /readyz 200 within 120 s of the boot"; }
  echo "  first boot of the instance -> /readyz 200: ${ready}s"
  out=$REPO/bench/results/$COMMIT-$TIER
  args=(--leader "$NSPAWN_LEADER" --cgroup "$(nspawn_cgroup_dir)" --boot-ready "$ready")
  if [ -n "$manifest" ]; then args+=(--manifest "$manifest"); fi
}

# The VM tier: wrk and its libraries as the image's distro ships them (.debs fetched once, by apt in the bench's rootfs
# of the same distro, into the cache), installed into the throw-away guest.
wrk_debs() {
  WRK_DEBS=$CACHE/wrk-debs-$KILN_ROOTFS_SUITE
  [ ! -e "$WRK_DEBS.ready" ] || return 0
  say "wrk for the guest: apt-get download in the $KILN_ROOTFS_SUITE rootfs"
  rm -rf "$WRK_DEBS"; mkdir -p "$WRK_DEBS"
  in_rootfs --bind="$WRK_DEBS:/run/kiln-bench-debs" --chdir=/run/kiln-bench-debs \
    sh -c 'apt-get update -qq && apt-get download -qq -o APT::Sandbox::User=root wrk libluajit-5.1-2 libluajit-5.1-common' \
    || die "apt-get download of wrk in the rootfs failed"
  touch "$WRK_DEBS.ready"
}

vssh() { ssh "${SSH_OPTS[@]}" -p "$P22" kilnbench@127.0.0.1 "$@"; }
fail() { die "$*"; } # vm-boot.sh's

boot_vm_tier() {
  repo=$REPO work=$WORK
  # shellcheck source=tests/image/vm-boot.sh
  . "$REPO/tests/image/vm-boot.sh"
  vm_image bench-vm
  manifest=${IMAGE%.qcow2}.manifest.json
  [ -r "$manifest" ] || die "$IMAGE has no manifest beside it ($manifest)"
  COMMIT=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["git_commit"][:7])' "$manifest")
  wrk_debs
  ACCEL=$("$REPO/packer/scripts/kvm-probe.sh")
  vm_ssh_key kiln-bench 12  # bench.py runs minutes in one SSH command
  # The static files also through Django, as in the nspawn tier's rootfs: an operator's override at first boot.
  make_seed bench kilnbench "$(printf '%s\n' 'write_files:' '  - path: /etc/kiln/overrides.env' \
    '    permissions: "0600"' '    content: |' '      KILN_BENCH_STATIC=1')"
  SMP=2 boot_vm bench "" "" -drive "file=$work/bench-seed.iso,media=cdrom,if=ide,readonly=on"
  local ready=$BOOT_SECS
  for _ in $(seq 1 30); do vssh true 2>/dev/null && break; sleep 2; done
  say "guest: until its first boot is done (cloud-init's last stage), then bench/, the peer's packages, wrk"
  vssh 'sudo timeout 300 systemctl is-system-running --wait' || true
  tar -C "$REPO/bench" --exclude=./results --exclude=__pycache__ -cf - . \
    | vssh 'sudo install -d /opt/kiln-bench && sudo tar -C /opt/kiln-bench --no-same-owner -xf -'
  tar -C "$PEER_SITE" -cf - . \
    | vssh 'sudo install -d /opt/kiln-bench-peer/site && sudo tar -C /opt/kiln-bench-peer/site --no-same-owner -xf -'
  # shellcheck disable=SC2016  # expanded in the guest
  tar -C "$WRK_DEBS" -cf - . | vssh 'd=$(mktemp -d) && tar -C "$d" -xf - && sudo dpkg -i "$d"/*.deb >/dev/null && rm -rf "$d"' \
    || die "installing wrk in the guest failed"
  tar -C "$(dirname "$manifest")" -cf - "$(basename "$manifest")" "$(basename "${manifest%.manifest.json}.boot.json")" 2>/dev/null \
    | vssh 'sudo install -d /opt/kiln-bench-image && sudo tar -C /opt/kiln-bench-image --no-same-owner -xf -'
  # The server on one vCPU (every service: system.slice), this SSH session and what it starts on the other.
  vssh "sudo systemctl set-property --runtime system.slice AllowedCPUs=$SERVER_CPU && sudo systemctl set-property --runtime user.slice AllowedCPUs=$CLIENT_CPU" \
    || die "confining the guest's services to vCPU $SERVER_CPU failed"
  out=$REPO/bench/results/$COMMIT-$TIER
  if [ "$mode" = full ]; then mode=tcg; fi
  args=(--cgroup /sys/fs/cgroup/system.slice --boot-ready "$ready" --manifest "/opt/kiln-bench-image/$(basename "$manifest")"
    --host "$(nproc) x $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), QEMU -accel $ACCEL")
  if [ "$COMMIT" != "$(git -C "$REPO" rev-parse --short=7 HEAD 2>/dev/null)" ]; then
    echo "  note: the image is of commit $COMMIT, this checkout is at $(git -C "$REPO" rev-parse --short=7 HEAD 2>/dev/null)"
  fi
}

if [ "$TIER" = vm ]; then boot_vm_tier; else boot_nspawn; fi

# ---------------------------------------------------------------- measure
if [ "$QUICK" = 1 ]; then out+=-quick; fi
say "measure ($mode)"
args+=(--server-cpu "$SERVER_CPU" --client-cpu "$CLIENT_CPU" --commit "$COMMIT" --tier "$TIER" --mode "$mode")
rc=0
if [ "$TIER" = vm ]; then
  # bench.py in the guest, with the guest's Python; its result files come back here.
  guest_out=/var/tmp/kiln-bench-out/$(basename "$out")
  vssh "sudo install -d /var/tmp/kiln-bench-out && sudo python3 /opt/kiln-bench/bench.py $(printf '%q ' "${args[@]}") --out $guest_out.json" || rc=$?
  vssh 'sudo tar -C /var/tmp/kiln-bench-out -cf - .' | tar -C "$REPO/bench/results" --no-same-owner -xf - \
    || die "copying the results out of the guest failed"
else
  "$HOSTPY" "$REPO/bench/bench.py" "${args[@]}" --out "$out.json" || rc=$?
fi
if [ "${BENCH_KEEP:-0}" = 1 ]; then
  if [ "$TIER" = vm ]; then echo "BENCH_KEEP=1: ssh ${SSH_OPTS[*]} -p $P22 kilnbench@127.0.0.1"
  else echo "BENCH_KEEP=1: container init pid $NSPAWN_LEADER"; fi
  echo "  touch $WORK/stop to stop it"
  until [ -e "$WORK/stop" ]; do sleep 1; done
fi
[ "$rc" -eq 0 ] || exit "$rc"
"$HOSTPY" "$REPO/bench/chart.py" "$out.json" "$out.png"
say "done: $out.json, $out.png"
