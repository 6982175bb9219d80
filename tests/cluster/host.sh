#!/usr/bin/env bash
# The cluster test's shell side (tests/cluster/cluster.py drives it): tests/hardening/nspawn-lib.sh's functions, one
# command per call.
#   host.sh rootfs LOGDIR           prints the path of a provisioned rootfs of this tree, kept in
#                                   /var/tmp/kiln-cluster-cache/rootfs-<key> (kiln_rootfs_key): the nspawn tier's copy
#                                   hard-linked, else provisioned here (kiln_rootfs_get: install.sh offline, ~90 s);
#                                   its progress on stderr
#   host.sh boot ROOT NAME NETNS    boots ROOT (nspawn_boot, --volatile=overlay) as NAME in the network namespace
#                                   /run/netns/NETNS; prints "leader=PID nspawn=PID" once the container's init runs
#                                   (the caller waits for its first boot: a failed one is seen at once), then stays in
#                                   the foreground until the container ends or this script gets SIGTERM or SIGINT
#                                   (then nspawn_stop: SIGTERM to nspawn, SIGKILL after 30 s)
#   host.sh exec LEADER CMD...      CMD inside the container whose init is LEADER (nspawn_exec)
#   host.sh sh LEADER COMMAND       COMMAND (one string) by sh inside it, stdin passed on, /usr/local/{sbin,bin} on
#                                   the PATH: what `ssh HOST COMMAND` does on a server (tools/kiln-fleet's --via)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/hardening/nspawn-lib.sh
. "$HERE/../hardening/nspawn-lib.sh"
CACHE=/var/tmp/kiln-cluster-cache

die() { printf 'host.sh: %s\n' "$*" >&2; exit 1; }

rootfs() {
  local logdir=$1 root commit old
  root=$CACHE/rootfs-$(kiln_rootfs_key)
  mkdir -p "$CACHE"
  exec 9>"$CACHE/lock"
  flock -n 9 || { echo "  rootfs: another cluster test provisions; waiting for it" >&2; flock 9; }
  if [ ! -e "$root.ready" ]; then
    rm -rf "$root" "$root.partial"
    # apt's .deb cache of its own (hard links to the nspawn tier's): a check running meanwhile holds that one's lock.
    mkdir -p "$CACHE/apt-archives/partial"
    find "$KILN_ROOTFS_CACHE/apt-archives" -maxdepth 1 -name '*.deb' -exec cp -l -n -t "$CACHE/apt-archives/" {} + \
      2>/dev/null || true
    KILN_ROOTFS_BIND=(--bind="$CACHE/apt-archives:/var/cache/apt/archives")
    commit=$(git -C "$KILN_REPO" rev-parse --short HEAD 2>/dev/null || echo uncommitted)
    kiln_rootfs_get "$root.partial" "$logdir" "cluster-$commit" "$commit" >&2
    mv "$root.partial" "$root"
    touch "$root.ready"
    for old in "$CACHE"/rootfs-*.ready; do  # older trees': their inputs changed
      [ "$old" = "$root.ready" ] || rm -rf "$old" "${old%.ready}"
    done
  fi
  echo "$root"
}

boot() {
  local root=$1 name=$2 netns=$3 rc=0
  [ -e "/run/netns/$netns" ] || die "no network namespace /run/netns/$netns"
  NSPAWN_NETNS=/run/netns/$netns
  NSPAWN_SETTLE_SECS=0
  # A cgroup of its own: containers started in the same one share their /system.slice, and one host's systemd then
  # removes or reuses another's unit cgroups (a restart failed "Failed to spawn executor: No such file or directory").
  NSPAWN_CGROUP=kiln-cluster-$name
  trap 'trap "" TERM INT; nspawn_stop; exit 0' TERM INT
  nspawn_boot "$root" "$name" || { nspawn_stop; exit 1; }
  echo "leader=$NSPAWN_LEADER nspawn=$NSPAWN_PID"
  wait "$NSPAWN_PID" || rc=$?  # returns early when a trapped signal arrives (the trap stops the container)
  NSPAWN_PID=""
  echo "host.sh: container $name ended (rc $rc)" >&2
  exit "$rc"
}

[ "$(id -u)" -eq 0 ] || die "run as root"
cmd=${1:-}
shift || true
case $cmd in
  rootfs) [ $# -eq 1 ] || die "usage: host.sh rootfs LOGDIR"; rootfs "$1" ;;
  boot) [ $# -eq 3 ] || die "usage: host.sh boot ROOT NAME NETNS"; boot "$@" ;;
  exec) [ $# -ge 2 ] || die "usage: host.sh exec LEADER CMD..."; NSPAWN_LEADER=$1; shift; nspawn_exec "$@" ;;
  sh) [ $# -eq 2 ] || die "usage: host.sh sh LEADER COMMAND"; NSPAWN_LEADER=$1
      nspawn_exec env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin sh -c "$2" ;;
  *) die "usage: host.sh rootfs LOGDIR | boot ROOT NAME NETNS | exec LEADER CMD... | sh LEADER COMMAND" ;;
esac
