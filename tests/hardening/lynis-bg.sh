#!/usr/bin/env bash
# Lynis in the background, collected later, possibly by another process: `make test` has the boot check hand its
# instance b (the production image) to this, so the ~29-min audit runs beside the infra suites on the Vagrant VM, and
# the infra session's Lynis test collects it; the infra session uses it too for an audit of its own VM.
# Usage: tests/hardening/lynis-bg.sh start DIR [lynis.sh ARGS...]   start lynis.sh ARGS -o DIR; returns at once
#        tests/hardening/lynis-bg.sh wait DIR     wait for the end, print lynis.sh's output, exit with its code
#        tests/hardening/lynis-bg.sh stop DIR     end a running audit (then it runs DIR/on-done as usual)
#        tests/hardening/lynis-bg.sh pause|resume DIR   hold the audited VM (DIR/vm-ctl stop|cont), e.g. while a
#                                                 suite that times things runs beside it; no-op without DIR/vm-ctl
# DIR: lynis-run.log (lynis.sh's output), rc (its exit code, written last), started (epoch s), runner.pid, audit.pid
#   (lynis.sh, leader of its process group), paused (present while held), ending (the audit's end has begun: no
#   more holds), lock, lynis.sh's -o files; written by the starter
#   before `start`: on-done, an executable run once the audit has ended, however it ended (the boot check's stops the
#   audited VM and deletes its overlay), and vm-ctl (`vm-ctl stop|cont`: halt or continue the audited VM's CPUs).
# Env: LYNIS_TIMEOUT [2700] bound of one audit in seconds, time held by `pause` not counted: a guard against a hung
#   audit, not a speed target (it is fork/exec-bound under TCG: 894 s on the faster machine, 1564-1950 s on the slower
#   one beside the suites, QEMU 7.2); LYNIS_SSH_OPTS and LYNIS_* reach lynis.sh.
# Exit (wait): lynis.sh's code (0 pass, 1 findings, 2 could not run), 124 bound reached, 143 stopped; 2 usage or no
#   audit in DIR.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LYNIS_TIMEOUT=${LYNIS_TIMEOUT:-2700}
usage() { sed -n '5,9p' "$0" >&2; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1 dir=$2
shift 2
alive() { [ -s "$dir/runner.pid" ] && kill -0 "$(cat "$dir/runner.pid")" 2>/dev/null; }
# `pause` and the audit's end take this lock: a hold that slipped in after the end continued the VM would hold it
# for good.
lock() { exec 9>"$dir/lock" && flock 9; }
unlock() { exec 9>&-; }
# The audit's end (the runner's, or `stop`'s when the runner had not written rc 40 s after the TERM): the VM
# continued if held, DIR/on-done, then rc. `stop` calls it only without rc; a runner it ended during on-done has run
# on-done in part, and on-done runs again here (on-done must bear that, as it did before).
finish() {
  local rc=$1 log=$dir/lynis-run.log
  lock
  : >"$dir/ending"
  if [ -e "$dir/paused" ] && [ -x "$dir/vm-ctl" ]; then
    "$dir/vm-ctl" cont >/dev/null 2>&1 || echo "lynis-bg: vm-ctl cont failed" >>"$log"
    rm -f "$dir/paused"
  fi
  unlock
  if [ -x "$dir/on-done" ]; then "$dir/on-done" >>"$log" 2>&1 || echo "lynis-bg: on-done failed" >>"$log"; fi
  echo "$rc" >"$dir/rc.tmp" && mv "$dir/rc.tmp" "$dir/rc"
}

case $cmd in
  start)
    mkdir -p "$dir"
    alive && { echo "lynis-bg: an audit is already running in $dir" >&2; exit 2; }
    rm -f "$dir/rc" "$dir/lynis-run.log" "$dir/runner.pid" "$dir/audit.pid" "$dir/paused" "$dir/ending"
    date +%s >"$dir/started"
    # The runner (`_run`, below): its own session, so a Ctrl-C or the end of the starting shell does not reach it.
    setsid "$0" _run "$dir" "$LYNIS_TIMEOUT" "$HERE/lynis.sh" -o "$dir" "$@" </dev/null >/dev/null 2>&1 &
    for _ in $(seq 1 50); do [ -s "$dir/audit.pid" ] && break; sleep 0.1; done
    [ -s "$dir/audit.pid" ] || { echo "lynis-bg: the runner did not start" >&2; exit 2; }
    echo "lynis-bg: audit started (runner pid $(cat "$dir/runner.pid"), output $dir/lynis-run.log, bound ${LYNIS_TIMEOUT}s)"
    ;;
  wait)
    [ -s "$dir/started" ] || { echo "lynis-bg: no audit was started in $dir" >&2; exit 2; }
    # The runner enforces the bound; this deadline only catches a runner that stopped watching (held time included).
    deadline=$(( $(cat "$dir/started") + 3 * LYNIS_TIMEOUT ))
    gone=""
    while [ ! -e "$dir/rc" ]; do
      if ! alive; then # the runner writes rc just before it exits: give a last look, then report its death
        [ -n "$gone" ] && { cat "$dir/lynis-run.log" 2>/dev/null; echo "lynis-bg: the runner died without a result" >&2; exit 2; }
        gone=1
      elif [ "$(date +%s)" -gt "$deadline" ]; then
        "$0" stop "$dir"
      fi
      sleep 3
    done
    cat "$dir/lynis-run.log"
    exit "$(cat "$dir/rc")"
    ;;
  stop)
    if alive && [ ! -e "$dir/rc" ]; then
      kill -TERM -- "-$(cat "$dir/audit.pid")" 2>/dev/null || true
      for _ in $(seq 1 40); do [ -e "$dir/rc" ] && break; sleep 1; done
      if [ ! -e "$dir/rc" ]; then # the runner did not finish in 40 s: end both process groups, do its last steps
        kill -KILL -- "-$(cat "$dir/audit.pid")" "-$(cat "$dir/runner.pid")" 2>/dev/null || true
        echo "lynis-bg: the runner did not finish within 40 s of the stop: ended, its last steps done here" \
          >>"$dir/lynis-run.log"
        finish 143
      fi
      echo "lynis-bg: audit in $dir stopped"
    fi
    ;;
  pause | resume)
    [ -x "$dir/vm-ctl" ] || exit 0
    lock
    if [ "$cmd" = pause ]; then
      alive && [ ! -e "$dir/ending" ] || exit 0
      [ -e "$dir/paused" ] || { "$dir/vm-ctl" stop && date +%s >"$dir/paused"; }
    elif [ -e "$dir/paused" ]; then
      "$dir/vm-ctl" cont && rm -f "$dir/paused"
    fi
    ;;
  _run) # the runner, started by `start`: lynis.sh in a process group of its own (its ssh too), its unheld time
    # counted every second against the bound
    bound=$1; shift
    echo $$ >"$dir/runner.pid"
    setsid "$@" >"$dir/lynis-run.log" 2>&1 </dev/null &
    audit=$!
    echo $audit >"$dir/audit.pid"
    used=0
    while kill -0 $audit 2>/dev/null && [ $used -lt "$bound" ]; do
      sleep 1; [ -e "$dir/paused" ] || used=$((used + 1))
    done
    if kill -0 $audit 2>/dev/null; then
      echo "lynis-bg: the audit did not end within ${bound}s (held time not counted): stopped" >>"$dir/lynis-run.log"
      kill -TERM -- -$audit 2>/dev/null || true
      for _ in $(seq 1 30); do kill -0 $audit 2>/dev/null || break; sleep 1; done
      kill -KILL -- -$audit 2>/dev/null || true
    fi
    rc=0; wait $audit || rc=$?
    [ $used -lt "$bound" ] || rc=124
    finish $rc
    ;;
  *) usage ;;
esac
