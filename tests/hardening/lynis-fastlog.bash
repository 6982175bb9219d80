# Sourced by bash (BASH_ENV) before it runs Lynis, when tests/hardening/lynis.sh runs the audit with LYNIS_FASTLOG=1.
# Lynis stamps each of its ~7,000 log lines with `$(date "+%Y-%m-%d %H:%M:%S")` and counts the ~1,700 binaries of its
# Debian plugin (DEB-0001) with `expr N + 1`: an exec each. An exec costs 55-100 ms in a TCG guest, a fork of the
# shell 10-20 ms, so those two idioms alone cost the audit 10-13 minutes there. These functions give the same output
# and exit status without the exec, for exactly those argument forms; anything else runs the real command, so every
# check of Lynis runs as it would under /bin/sh.
# shellcheck shell=bash

date() {
  if [ $# -eq 1 ] && [ "$1" = "+%Y-%m-%d %H:%M:%S" ]; then
    printf '%(%Y-%m-%d %H:%M:%S)T\n' -1
  else
    command date "$@"
  fi
}

expr() {
  if [ $# -eq 3 ] && [ "$2" = + ] && [[ $1 =~ ^[0-9]{1,15}$ && $3 =~ ^[0-9]{1,15}$ ]]; then
    local sum=$((10#$1 + 10#$3))
    echo "$sum"
    [ "$sum" -ne 0 ] # expr's status: 1 when the result is 0
  else
    command expr "$@"
  fi
}
