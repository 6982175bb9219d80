#!/usr/bin/env bash
# One long stage in the background beside others, then waited for and printed in one piece (its lines never
# interleave with the foreground's). `make test` builds the image this way while the native stages run: under TCG
# the build VM keeps about one host core busy, and lint, the app and tool tests and the nspawn tier use the other.
# Usage: tools/background.sh start NAME CMD...  start CMD in a session of its own, output to DIR/NAME.log
#        tools/background.sh wait NAME          wait for it, print its output, exit with its status
#        tools/background.sh stop NAME          end it and everything it started (packer, QEMU), e.g. when the
#                                               foreground failed; then its output, and status 1
# Env: KILN_BACKGROUND_DIR [build/background]
set -euo pipefail
usage() { sed -n 's/^# Usage: //p; s/^#        //p' "$0" >&2; exit 2; }
[ $# -ge 2 ] || usage
action=$1 name=$2
shift 2
dir=${KILN_BACKGROUND_DIR:-build/background}
log=$dir/$name.log rcf=$dir/$name.rc pidf=$dir/$name.pid t0f=$dir/$name.start

# running: started, no exit status yet, its process there (a reaped-late zombie keeps its pid: the status decides)
alive() { [ -s "$pidf" ] && [ ! -e "$rcf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; }

finish() { # print the output once, with how long the foreground waited for it, and exit with its status
  local waited=$1 rc
  rc=$(cat "$rcf" 2>/dev/null || echo 1)
  printf '\n==> background %s (started %s, output below; the foreground waited %ss for it)\n' \
    "$name" "$(date -u -d "@$(cat "$t0f")" +%T)" "$waited"
  cat "$log"
  printf '<== background %s: exit %s after %ss\n' "$name" "$rc" "$(( $(stat -c %Y "$rcf" 2>/dev/null || date +%s) - $(cat "$t0f") ))"
  exit "$rc"
}

case $action in
  start)
    [ $# -gt 0 ] || usage
    ! alive || { echo "background: $name is already running (pid $(cat "$pidf"))" >&2; exit 1; }
    mkdir -p "$dir"
    rm -f "$rcf" "$pidf"
    date +%s >"$t0f"
    # setsid: a new session and process group whose id is the wrapper's own pid ($$), so `stop` reaches every
    # process the stage started.
    # shellcheck disable=SC2016  # expanded by the inner bash
    setsid bash -c 'echo $$ >"$1"; log=$2 rcf=$3; shift 3; rc=0; "$@" >"$log" 2>&1 </dev/null || rc=$?; echo "$rc" >"$rcf"' \
      _ "$pidf" "$log" "$rcf" "$@" &
    for _ in $(seq 50); do [ -s "$pidf" ] && break; sleep 0.1; done
    [ -s "$pidf" ] || { echo "background: $name did not start" >&2; exit 1; }
    echo "background: $name started (pid $(cat "$pidf"), output $log): $*"
    ;;
  wait)
    [ -e "$t0f" ] || { echo "background: $name was never started" >&2; exit 1; }
    t0=$(date +%s)
    while [ ! -e "$rcf" ]; do
      alive || { sleep 1; [ -e "$rcf" ] || { echo "background: $name died without an exit status" >&2; echo 1 >"$rcf"; }; break; }
      sleep 2
    done
    finish $(( $(date +%s) - t0 ))
    ;;
  stop)
    [ -e "$t0f" ] || exit 0
    if alive; then
      pg=$(cat "$pidf")
      echo "background: stopping $name (process group $pg)"
      kill -TERM -- "-$pg" 2>/dev/null || true
      for _ in $(seq 60); do kill -0 -- "-$pg" 2>/dev/null || break; sleep 1; done
      kill -KILL -- "-$pg" 2>/dev/null || true
      [ -e "$rcf" ] || echo 143 >"$rcf"
    fi
    (finish 0) || true
    exit 1
    ;;
  *) usage ;;
esac
