#!/usr/bin/env bash
# Sourced helper: boot a root filesystem with systemd-nspawn (native speed) and run commands inside it.
# The root directory is never modified: it is booted with --volatile=overlay (writes go to a tmpfs).
#   nspawn_boot ROOT [NAME]   boots, waits for systemd to settle; sets NSPAWN_PID / NSPAWN_LEADER
#   nspawn_exec CMD...        runs CMD inside the booted container (all namespaces, as root)
#   nspawn_stop               powers the container off (SIGTERM to nspawn), kills it after 30 s
# NSPAWN_VETH=1: a veth pair instead of a loopback-only network; nspawn_boot then addresses it (host 10.213.7.1,
# container NSPAWN_ADDR=10.213.7.2, /30): a network namespace of our own, reachable from this host only.
# NSPAWN_NETNS=PATH: the container joins this network namespace (--network-namespace-path=PATH: a private network
# of the caller's, e.g. /run/netns/NAME of `ip netns add`) instead of a loopback-only one, with CAP_NET_ADMIN in it
# (as nspawn gives with a network of its own, which it does not for a joined one: a firewall inside can run);
# NSPAWN_VETH does not apply.
# NSPAWN_SETTLE_SECS=N: nspawn_boot waits at most N s (default 120) for systemd inside to settle (0: returns once the
# container's init runs; the caller then waits for what it needs).
# NSPAWN_ARGS=(...): more systemd-nspawn options for nspawn_boot (e.g. --cpu-affinity=0, --bind-ro=...).
# NSPAWN_CGROUP=NAME: start the container in a cgroup of its own, /sys/fs/cgroup[/unified]/NAME (cgroup v2; its
# cpu.stat then counts the container's CPU time); removed by nspawn_stop.
# NSPAWN_CPUS=LIST (with NSPAWN_CGROUP): confine the container to these CPUs: --cpu-affinity, and a cpuset cgroup,
# which no process in it can leave (an affinity alone is not enough: Debian 13's nginx.conf says
# `worker_cpu_affinity auto`, and nginx binds a worker to every CPU of the host).
# Host needs: systemd-container (systemd-nspawn), util-linux (nsenter). PID 1 on the host need not be systemd.
#
# Kiln's root filesystem as the nspawn tier provisions it (tests/provision/nspawn-check.sh, bench/run.sh):
#   kiln_rootfs_prepare ROOT LOGDIR      Debian trixie minbase (a cached tarball, keyed by its inputs) unpacked into
#                                        ROOT, the test-only drop-ins, and what Packer uploads under /opt/kiln-src
#   kiln_rootfs_install ROOT VERSION COMMIT   provision/install.sh in ROOT offline (systemd-nspawn without boot: no
#                                        service runs, they start at first boot); its output on stdout
#   kiln_rootfs_key                      what such a provisioned rootfs is made of (this file, provision/, app/)
#   kiln_rootfs_offer ROOT               after a successful offline install, before ROOT is ever booted: keep a copy
#                                        as $KILN_PROVISIONED-<key> for the next tier of the same tree (make test runs
#                                        the nspawn tier, then the quick bench: one install.sh instead of two, ~1 min)
#   kiln_rootfs_provisioned DEST         DEST = that copy, hard-linked (instant: its user must boot it with
#                                        --volatile=overlay and replace, never edit, a file), else return 1
#   kiln_rootfs_get DEST LOGDIR VERSION COMMIT   DEST = a provisioned rootfs of this tree: that copy, hard-linked
#                                        (same rules), else prepared and installed here (install.sh's output in
#                                        LOGDIR/install.log, its tail on failure), then offered; says which on stdout

NSPAWN_PID=""
NSPAWN_LEADER=""
NSPAWN_LOG=""
NSPAWN_CGROUP=${NSPAWN_CGROUP:-}
NSPAWN_CPUS=${NSPAWN_CPUS:-}
[ -n "${NSPAWN_ARGS+set}" ] || NSPAWN_ARGS=()
export NSPAWN_ADDR=""
KILN_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
KILN_ROOTFS_CACHE=/var/tmp/kiln-rootfs-cache
KILN_ROOTFS_SUITE=trixie
KILN_ROOTFS_MIRROR=http://deb.debian.org/debian
KILN_ROOTFS_PKGS=systemd-sysv,dbus,openssh-server,ca-certificates,iproute2,procps,less,curl
KILN_ROOTFS_BIND=(--bind="$KILN_ROOTFS_CACHE/apt-archives:/var/cache/apt/archives")   # apt .deb cache shared across runs

kiln_rootfs_prepare() {
  local root=$1 logdir=$2 key tarball t0 unit
  local suite=$KILN_ROOTFS_SUITE mirror=$KILN_ROOTFS_MIRROR cache=$KILN_ROOTFS_CACHE
  mkdir -p "$cache/apt-archives"
  key=$(printf '%s %s %s v1' "$suite" "$mirror" "$KILN_ROOTFS_PKGS" | sha256sum | cut -c1-12)
  tarball=$cache/$suite-base-$key.tar
  if [ ! -s "$tarball" ]; then
    t0=$(date +%s)
    mmdebstrap --variant=minbase --include="$KILN_ROOTFS_PKGS" --components=main "$suite" "$cache/.partial-$key.tar" \
      "deb $mirror $suite main" "deb $mirror $suite-updates main" "deb http://deb.debian.org/debian-security $suite-security main" \
      >"$logdir/mmdebstrap.log" 2>&1 || { tail -20 "$logdir/mmdebstrap.log" >&2; echo "mmdebstrap failed" >&2; return 1; }
    mv "$cache/.partial-$key.tar" "$tarball"
    echo "  built $tarball in $(( $(date +%s) - t0 ))s"
  fi
  mkdir -p "$root"
  tar -C "$root" -xf "$tarball"
  # Test-only tweaks (drop-ins, so install.sh sees normal enable states): a container may share the host network, so
  # no sshd on the host's port 22, and ufw (steps/80-firewall.sh) must never touch the host's netfilter rules (nspawn
  # gives no CAP_NET_ADMIN without a private network, so it would only fail).
  for unit in ssh.service ssh.socket ufw.service; do
    install -d "$root/etc/systemd/system/$unit.d"
    printf '[Unit]\nConditionVirtualization=!container\n' >"$root/etc/systemd/system/$unit.d/nspawn-test.conf"
  done
  # What Packer uploads: provision/ and app/ side by side; the build CA as a build input.
  install -d "$root/opt/kiln-src/build-ca"
  cp -a "$KILN_REPO/provision" "$KILN_REPO/app" "$root/opt/kiln-src/"
  cp -a "$KILN_REPO/tests/fixtures/second-app" "$root/opt/kiln-src/second-app"
  find "$root/opt/kiln-src/app" "$root/opt/kiln-src/second-app" \( -name __pycache__ -o -name .venv -o -name staticfiles \
    -o -name collected -o -name media \) -prune -exec rm -rf {} +
  cp /usr/local/share/ca-certificates/*.crt "$root/opt/kiln-src/build-ca/" 2>/dev/null || true
}

KILN_PROVISIONED=$KILN_ROOTFS_CACHE/provisioned
kiln_rootfs_key() {
  { echo "kiln provisioned rootfs v1"
    sha256sum "$KILN_REPO/tests/hardening/nspawn-lib.sh" | cut -c1-64
    (cd "$KILN_REPO" && find provision app \( -name __pycache__ -o -name .venv -o -name staticfiles -o -name collected \
      -o -name media \) -prune -o -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
  } | sha256sum | cut -c1-16
}

kiln_rootfs_offer() {
  local root=$1 dest old
  dest=$KILN_PROVISIONED-$(kiln_rootfs_key) || return 1
  [ ! -e "$dest.ready" ] || return 0
  rm -rf "$dest.partial" || return 1
  cp -a "$root" "$dest.partial" || { rm -rf "$dest.partial"; echo "nspawn: cannot copy $root to $dest.partial" >&2; return 1; }
  mv "$dest.partial" "$dest" && touch "$dest.ready" || return 1
  for old in "$KILN_PROVISIONED"-*.ready; do  # older trees': their inputs changed
    [ "$old" = "$dest.ready" ] || rm -rf "$old" "${old%.ready}" || return 1
  done
}

kiln_rootfs_provisioned() {
  local src
  src=$KILN_PROVISIONED-$(kiln_rootfs_key) || return 1
  [ -e "$src.ready" ] || return 1
  rm -rf "$1" && cp -al "$src" "$1"
}

kiln_rootfs_get() {
  local dest=$1 logdir=$2 t0
  if kiln_rootfs_provisioned "$dest"; then
    echo "  rootfs: the provisioned rootfs of this tree, hard-linked ($dest)"; return 0
  fi
  echo "  rootfs: provisioning $dest (install.sh offline, as the nspawn tier does)"
  t0=$(date +%s)
  rm -rf "$dest" && kiln_rootfs_prepare "$dest" "$logdir" || return 1
  if ! kiln_rootfs_install "$dest" "$3" "$4" >"$logdir/install.log"; then
    tail -30 "$logdir/install.log" >&2; echo "nspawn: install.sh failed in $dest (above)" >&2; return 1
  fi
  echo "  rootfs: provisioned in $(( $(date +%s) - t0 ))s"
  kiln_rootfs_offer "$dest"
}

kiln_rootfs_install() {
  systemd-nspawn -q -D "$1" --register=no --keep-unit --resolv-conf=copy-host "${KILN_ROOTFS_BIND[@]}" \
    --setenv=KILN_VERSION="$2" --setenv=KILN_COMMIT="$3" --setenv=KILN_BUILD_CA_DIR=/opt/kiln-src/build-ca \
    /opt/kiln-src/provision/install.sh 2>&1 </dev/null
}

nspawn_boot() {
  local root=$1 name=${2:-kiln-harden-$$} state
  [ -x "$root/lib/systemd/systemd" ] || [ -x "$root/usr/lib/systemd/systemd" ] || {
    echo "nspawn: $root has no systemd" >&2; return 1; }
  command -v systemd-nspawn >/dev/null || { echo "nspawn: install systemd-container" >&2; return 1; }
  NSPAWN_LOG=$(mktemp /tmp/kiln-nspawn.XXXXXX.log)
  # --private-network: the container's sshd/nginx must not collide with the host's ports.
  local net=(--private-network)
  [ "${NSPAWN_VETH:-0}" = 1 ] && net=(--network-veth)
  [ -z "${NSPAWN_NETNS:-}" ] || net=(--network-namespace-path="$NSPAWN_NETNS" --capability=CAP_NET_ADMIN)
  local cg=() d
  if [ -n "$NSPAWN_CGROUP" ]; then
    d=$(nspawn_cgroup_dir) || return 1
    cg=("$d")
    if [ -d /sys/fs/cgroup/systemd ]; then cg+=("/sys/fs/cgroup/systemd/$NSPAWN_CGROUP"); fi  # hybrid host: v1 too
    mkdir -p "${cg[@]}"
    if [ -n "$NSPAWN_CPUS" ]; then
      d=$(nspawn_cpuset_dir) || return 1
      if [ "$d" = "${cg[0]}" ]; then  # cgroup v2: the cpuset controller, enabled for the container's cgroup
        grep -qw cpuset "${d%/*}/cgroup.subtree_control" || echo +cpuset >"${d%/*}/cgroup.subtree_control"
      else                            # the v1 cpuset hierarchy of a hybrid host
        mkdir -p "$d"; cat "${d%/*}/cpuset.mems" >"$d/cpuset.mems"; cg+=("$d")
      fi
      echo "$NSPAWN_CPUS" >"$d/cpuset.cpus"
      NSPAWN_ARGS+=(--cpu-affinity="$NSPAWN_CPUS")
    fi
  fi
  (
    for d in "${cg[@]}"; do echo "$BASHPID" >"$d/cgroup.procs"; done
    exec systemd-nspawn -q -D "$root" -M "$name" -b --register=no --keep-unit --volatile=overlay "${net[@]}" \
      --console=read-only "${NSPAWN_ARGS[@]}"
  ) </dev/null >"$NSPAWN_LOG" 2>&1 &
  NSPAWN_PID=$!
  for _ in $(seq 1 100); do
    NSPAWN_LEADER=$(pgrep -P "$NSPAWN_PID" -x systemd || true)
    [ -n "$NSPAWN_LEADER" ] && break
    kill -0 "$NSPAWN_PID" 2>/dev/null || { echo "nspawn: container exited early:" >&2; cat "$NSPAWN_LOG" >&2; return 1; }
    sleep 0.2
  done
  [ -n "$NSPAWN_LEADER" ] || { echo "nspawn: no container init found" >&2; nspawn_stop; return 1; }
  for _ in $(seq 1 "${NSPAWN_SETTLE_SECS:-120}"); do
    state=$(nspawn_exec systemctl is-system-running 2>/dev/null || true)
    case $state in running|degraded) break ;; esac
    sleep 1
  done
  if [ "${NSPAWN_VETH:-0}" = 1 ] && [ -z "${NSPAWN_NETNS:-}" ]; then
    local hostif=ve-${name:0:12}
    ip link show "$hostif" >/dev/null 2>&1 || { echo "nspawn: no host interface $hostif (use a machine name of at most 12 characters)" >&2; return 1; }
    ip addr replace 10.213.7.1/30 dev "$hostif" && ip link set "$hostif" up
    nspawn_exec ip addr replace 10.213.7.2/30 dev host0
    nspawn_exec ip link set host0 up
    export NSPAWN_ADDR=10.213.7.2
  fi
  echo "nspawn: $root booted as $name (nspawn pid $NSPAWN_PID, init pid $NSPAWN_LEADER, state ${state:-unknown})" >&2
}

nspawn_exec() {
  nsenter -t "$NSPAWN_LEADER" -m -u -i -n -p -C -r -w -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb "$@"
}

nspawn_stop() {
  local _
  [ -n "$NSPAWN_PID" ] || return 0
  if kill -0 "$NSPAWN_PID" 2>/dev/null; then
    kill -TERM "$NSPAWN_PID" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$NSPAWN_PID" 2>/dev/null || true
  fi
  wait "$NSPAWN_PID" 2>/dev/null || true
  NSPAWN_PID=""
  [ -n "$NSPAWN_LOG" ] && rm -f "$NSPAWN_LOG"
  if [ -n "$NSPAWN_CGROUP" ]; then  # the container's cgroups, deepest first (empty now)
    find "$(nspawn_cgroup_dir)" /sys/fs/cgroup/systemd/"$NSPAWN_CGROUP" /sys/fs/cgroup/cpuset/"$NSPAWN_CGROUP" -depth \
      -type d -exec rmdir {} + 2>/dev/null || true
  fi
  return 0
}

nspawn_cgroup_dir() { # the cgroup v2 directory of NSPAWN_CGROUP (cpu.stat: usage_usec, user_usec, system_usec)
  local base
  for base in /sys/fs/cgroup/unified /sys/fs/cgroup; do
    if [ -e "$base/cgroup.controllers" ]; then echo "$base/$NSPAWN_CGROUP"; return 0; fi
  done
  echo "nspawn: no cgroup v2 hierarchy" >&2; return 1
}

nspawn_cpuset_dir() { # the cpuset cgroup of NSPAWN_CGROUP: v2 (the container's own) where its parent has the
  local v2                                    # controller, else the v1 cpuset hierarchy's
  v2=$(nspawn_cgroup_dir) || return 1
  if grep -qw cpuset "${v2%/*}/cgroup.controllers"; then echo "$v2"; return 0; fi
  if [ -e /sys/fs/cgroup/cpuset/cpuset.cpus ]; then echo "/sys/fs/cgroup/cpuset/$NSPAWN_CGROUP"; return 0; fi
  echo "nspawn: no cpuset controller (cgroup v2 or v1)" >&2; return 1
}
