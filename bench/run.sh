#!/usr/bin/env bash
# make bench (issue 13): how fast the server of the nspawn tier serves, side by side with DigitalOcean's Django 1-Click
# configuration, in one run: boots the provisioned root file system (tests/hardening/nspawn-lib.sh, as
# tests/provision/nspawn-check.sh provisions it) in a systemd-nspawn container confined to one CPU (a 1-vCPU VPS), with
# a network of its own (loopback only), and measures it with wrk pinned to the other CPU (bench/bench.py).
# Prints a table; writes bench/results/<commit>-nspawn.json and .png. Exit 0 only when every validity gate passed;
# a run that fails one prints which, and no figures.
# Usage: bench/run.sh   (root)
#   BENCH_QUICK=1         1 s cells, 2 repetitions, 100/50 jobs (make test-bench, in make test: the harness must not
#                         rot; ~75 s with a cached rootfs)
#   BENCH_SERVER_CPU=0 BENCH_CLIENT_CPU=1   the CPUs of the container and of the load generator
#   BENCH_KEEP=1          leave the container running at the end (its init pid printed) until a file says stop
# The provisioned rootfs is cached in /var/tmp/kiln-bench-cache, keyed by provision/, app/ and the rootfs recipe (the
# peer's packages beside it): the first run after a change there provisions it (install.sh offline, ~1-2 min), the rest
# boot it at once (--volatile=overlay: every run is the first boot of a fresh instance; nothing is written back).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=tests/hardening/nspawn-lib.sh
. "$REPO/tests/hardening/nspawn-lib.sh"
QUICK=${BENCH_QUICK:-0}
SERVER_CPU=${BENCH_SERVER_CPU:-0}
CLIENT_CPU=${BENCH_CLIENT_CPU:-1}
CACHE=/var/tmp/kiln-bench-cache
TIER=nspawn
HOSTPY=/usr/bin/python3   # Debian's Python: python3-matplotlib for the chart (bench.py needs only the stdlib)
T_START=$(date +%s)
say() { printf '==> %s  [%s, +%ss]\n' "$*" "$(date -u +%T)" "$(( $(date +%s) - T_START ))"; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root"
[ "$SERVER_CPU" != "$CLIENT_CPU" ] || die "BENCH_SERVER_CPU and BENCH_CLIENT_CPU must differ"
for cpu in "$SERVER_CPU" "$CLIENT_CPU"; do
  taskset -c "$cpu" true 2>/dev/null || die "CPU $cpu is not available here ($(nproc) CPUs)"
done
"$REPO/tools/apt-ensure.sh" wrk mmdebstrap systemd-container curl python3-matplotlib
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
# The peer's packages (bench/peers/digitalocean/requirements.txt), installed with the rootfs's Python into a folder of
# their own, mounted into the container at /opt/kiln-bench-peer/site: never into Kiln's venv. pip runs in the rootfs
# (its writes there go to a throw-away overlay), with this host's CA bundle (an intercepting proxy re-signs HTTPS here).
PEER_SITE=$CACHE/peer-$( { basename "$ROOTFS"; cat "$REPO/bench/peers/digitalocean/requirements.txt"; } | sha256sum | cut -c1-16)
if [ ! -e "$PEER_SITE.ready" ]; then
  say "the peer's packages: pip install -r bench/peers/digitalocean/requirements.txt"
  rm -rf "$PEER_SITE"; mkdir -p "$PEER_SITE"
  systemd-nspawn -q -D "$ROOTFS" --volatile=overlay --register=no --keep-unit --resolv-conf=copy-host \
    --bind-ro=/etc/ssl/certs/ca-certificates.crt:/run/kiln-bench-ca.crt \
    --bind-ro="$REPO/bench/peers:/run/kiln-bench-peers" --bind="$PEER_SITE:/opt/kiln-bench-peer/site" \
    /srv/kiln/current/venv/bin/pip install -q --disable-pip-version-check --cert /run/kiln-bench-ca.crt \
    --target /opt/kiln-bench-peer/site -r /run/kiln-bench-peers/digitalocean/requirements.txt </dev/null \
    || die "pip install of the peer's requirements failed"
  touch "$PEER_SITE.ready"
fi

# ---------------------------------------------------------------- boot, pinned, in a cgroup of its own
say "boot: the container on CPU $SERVER_CPU (private network: loopback only), wrk on CPU $CLIENT_CPU"
NSPAWN_CGROUP=kiln-bench-$$
NSPAWN_CPUS=$SERVER_CPU
NSPAWN_ARGS=(--bind-ro="$REPO/bench:/opt/kiln-bench" --bind-ro="$PEER_SITE:/opt/kiln-bench-peer/site")
t0=$(date +%s.%N)
nspawn_boot "$ROOTFS" "kbench$$"
ready=""
for _ in $(seq 1200); do
  if [ "$(nspawn_exec curl -s -o /dev/null -w '%{http_code}' --max-time 5 http://127.0.0.1/readyz || true)" = 200 ]; then
    ready=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'); break
  fi
  sleep 0.1
done
[ -n "$ready" ] || { nspawn_exec systemctl --failed --no-legend | sed 's/^/  failed: /'; die "no /readyz 200 within 120 s of the boot"; }
echo "  first boot of the instance -> /readyz 200: ${ready}s"

# ---------------------------------------------------------------- measure
out=$REPO/bench/results/$COMMIT-$TIER
if [ "$QUICK" = 1 ]; then out+=-quick; say "measure (quick)"; else say "measure (full)"; fi
args=(--leader "$NSPAWN_LEADER" --cgroup "$(nspawn_cgroup_dir)" --server-cpu "$SERVER_CPU" --client-cpu "$CLIENT_CPU"
  --commit "$COMMIT" --tier "$TIER" --boot-ready "$ready" --out "$out.json")
if [ "$QUICK" = 1 ]; then args+=(--quick); fi
# The image side (build stages, TCG boots): the newest image's manifest and its boot check's figures, when this
# checkout built one (make image, make image-check); the table names that image and its commit.
manifest=$(find "$REPO/build/${DISTRO:-debian-13}" -maxdepth 1 -name 'kiln-*.manifest.json' -printf '%T@ %p\n' 2>/dev/null \
  | sort -n | tail -1 | cut -d' ' -f2-)
if [ -n "$manifest" ]; then args+=(--manifest "$manifest"); fi
rc=0
"$HOSTPY" "$REPO/bench/bench.py" "${args[@]}" || rc=$?
if [ "${BENCH_KEEP:-0}" = 1 ]; then
  echo "BENCH_KEEP=1: container init pid $NSPAWN_LEADER; touch $WORK/stop to stop it"
  until [ -e "$WORK/stop" ]; do sleep 1; done
fi
[ "$rc" -eq 0 ] || exit "$rc"
"$HOSTPY" "$REPO/bench/chart.py" "$out.json" "$out.png"
say "done: $out.json, $out.png"
