# Sourced by bash (BASH_ENV) before it runs Lynis, when tests/hardening/lynis.sh runs the audit with LYNIS_FASTLOG=1.
# In a TCG guest a process start costs 55-100 ms and a fork of the Lynis shell (a large process: every page it
# writes afterwards is a copy-on-write fault) ~25 ms. Lynis spends most of its audit on a few idioms of that kind:
#   - LogText stamps each of its ~7,000 log lines with `CDATE=$(date ...)`: a fork and an exec per line;
#   - Register, once per test, takes two timestamps with `$(date "+%N")` and `$(date "+%s%N")`;
#   - the Debian plugin (DEB-0001) counts its ~1,700 binaries with `expr N + 1`;
#   - short texts piped through tr, wc, grep, sed, cut and awk, and Display's /bin/echo -e (below).
# The functions below give the same output for exactly those forms without the exec (date, expr, the text tools) or
# without the fork too (LogText); anything else runs the real command, so every check of Lynis runs as it would
# under /bin/sh. tests/tools/test_lynis_fastlog.py holds each form against the real command; a whole audit with and
# without this file (nspawn, the image's rootfs) gave the same report and the same log but for PIDs and temp names.
# shellcheck shell=bash

# For Lynis itself only: the programs it starts (some are bash scripts) get their usual environment.
unset BASH_ENV

date() {
  if [ $# -eq 1 ] && [ "$1" = "+%Y-%m-%d %H:%M:%S" ]; then
    printf '%(%Y-%m-%d %H:%M:%S)T\n' -1
  elif [ $# -eq 1 ] && [ "$1" = "+%N" ]; then
    local t=$EPOCHREALTIME # seconds.microseconds: nanoseconds to the microsecond, as Register's timing needs
    echo "${t#*.}000"
  elif [ $# -eq 1 ] && [ "$1" = "+%s%N" ]; then
    local t=$EPOCHREALTIME
    echo "${t%.*}${t#*.}000"
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

# Lynis pipes short texts through tr, wc, grep, sed and cut by name: in Register (each test's ID upper-cased and looked
# up in a list, ~900 and ~450 times), in
# Display (each result line's length: `wc -m | tr -d ' '`, ~350 times) and while it reads its profiles and /boot
# (`cut -d = -f1`, `sed 's/!space!/ /g'`, `grep -E "^config:"`, `cut -c 9`, ~750 times). For exactly those argument forms and ASCII text, bash's own string
# operations give the same bytes; other input (non-ASCII, a NUL byte) and every other form go to the real command.
_kiln_slurp() { # all of stdin into KILN_IN; fails with KILN_NUL=1 (KILN_IN: what came before) at a NUL byte
  KILN_IN='' KILN_NUL=0
  if IFS= read -r -d '' KILN_IN; then KILN_NUL=1; fi
  [ "$KILN_NUL" = 0 ]
}
_kiln_plain() { _kiln_slurp && [[ $KILN_IN != *[![:ascii:]]* ]]; } # read stdin; is it ASCII text?
_kiln_real() { # _kiln_real CMD ARGS...: the real CMD on the input _kiln_slurp read, and on the rest after a NUL
  { printf '%s' "$KILN_IN"; if [ "$KILN_NUL" = 1 ]; then printf '\0'; command cat; fi; } | command "$@"
}

_kiln_field() { # _kiln_field LINE D N [-]: LINE's field N (N and the rest with -) between the one-character delimiters D
  local rest=$1 d=$2 i
  for ((i = 1; i < $3; i++)); do
    if [[ $rest == *"$d"* ]]; then rest=${rest#*"$d"}; else rest=''; break; fi
  done
  if [ -n "${4:-}" ]; then printf '%s\n' "$rest"; else printf '%s\n' "${rest%%"$d"*}"; fi
}

tr() {
  if [ $# -eq 2 ] && [ "$1" = '[:lower:]' ] && [ "$2" = '[:upper:]' ]; then
    # a-z to A-Z, as tr maps ASCII letters in every locale but the Turkic ones (i to dotted I): those get tr
    if _kiln_plain && [[ ${LC_ALL:-${LC_CTYPE:-${LANG:-}}} != @(tr|az)_* ]]; then printf '%s' "${KILN_IN^^}"; return 0; fi
  elif [ $# -eq 2 ] && [ "$1" = -d ] && [ "$2" = ' ' ]; then
    if _kiln_plain; then printf '%s' "${KILN_IN// /}"; return 0; fi
  else
    command "${KILN_REAL:-tr}" "$@"; return
  fi
  _kiln_real "${KILN_REAL:-tr}" "$@"
}

wc() {
  if [ $# -ne 1 ] || [ "$1" != -m ]; then command "${KILN_REAL:-wc}" "$@"; return; fi
  if _kiln_plain; then echo "${#KILN_IN}"; else _kiln_real "${KILN_REAL:-wc}" "$@"; fi
}

grep() { # grep WORD: the lines holding WORD (letters, digits, _ and -, as Register looks a test ID up in a list);
  # grep -E ^WORD: the lines starting with it (WORD may hold ':' too, as the profile parser asks "^config:")
  local word anchored='' line found=1
  if [ $# -eq 1 ] && [[ $1 =~ ^[A-Za-z0-9_][A-Za-z0-9_-]*$ ]]; then
    word=$1
  elif [ $# -eq 2 ] && [ "$1" = -E ] && [[ $2 =~ ^\^([A-Za-z0-9_][A-Za-z0-9_:-]*)$ ]]; then
    word=${BASH_REMATCH[1]} anchored=1
  else
    command "${KILN_REAL:-grep}" "$@"; return
  fi
  if ! _kiln_plain; then _kiln_real "${KILN_REAL:-grep}" "$@"; return; fi
  while IFS= read -r line; do
    if [[ -z $anchored && $line == *"$word"* ]] || [[ -n $anchored && $line == "$word"* ]]; then
      printf '%s\n' "$line"; found=0
    fi
  done <<<"${KILN_IN%$'\n'}"
  return "$found"
}

sed() { # sed s/OLD/NEW/g with plain OLD and NEW (letters, digits, '!', ':', '_', ' '), as Lynis's profile parser
  # turns its "!space!" markers back into spaces
  if [ $# -eq 1 ] && [[ $1 =~ ^s/([A-Za-z0-9!:_]+)/([A-Za-z0-9!:_ ]*)/g$ ]]; then
    local old=${BASH_REMATCH[1]} new=${BASH_REMATCH[2]}
    if _kiln_plain; then printf '%s' "${KILN_IN//"$old"/"$new"}"; else _kiln_real "${KILN_REAL:-sed}" "$@"; fi
  else
    command "${KILN_REAL:-sed}" "$@"
  fi
}

cut() { # cut -d D -fN, cut -d D -fN- (D one character), cut -c N
  local d='' n='' open='' c='' line
  if [ $# -eq 3 ] && [ "$1" = -d ] && [ ${#2} -eq 1 ] && [[ $3 =~ ^-f([1-9][0-9]?)(-?)$ ]]; then
    d=$2 n=${BASH_REMATCH[1]} open=${BASH_REMATCH[2]}
  elif [ $# -eq 2 ] && [ "$1" = -c ] && [[ $2 =~ ^[1-9][0-9]?$ ]]; then
    c=$2
  else
    command "${KILN_REAL:-cut}" "$@"; return
  fi
  if ! _kiln_plain; then _kiln_real "${KILN_REAL:-cut}" "$@"; return; fi
  [ -n "$KILN_IN" ] || return 0
  while IFS= read -r line; do
    if [ -n "$c" ]; then
      printf '%s\n' "${line:c-1:1}"
    elif [[ $line != *"$d"* ]]; then
      printf '%s\n' "$line" # a line without the delimiter is printed whole
    else
      _kiln_field "$line" "$d" "$n" "$open"
    fi
  done <<<"${KILN_IN%$'\n'}"
}

awk() { # awk [-F' '] '{ print $N }' (fields split at blanks) and awk -FC '{ print $N }' (C one of = ; : , | /)
  local n fs=''
  if [ $# -eq 1 ] && [[ $1 =~ ^\{\ ?print\ \$([1-9])\ ?\}$ ]]; then
    n=${BASH_REMATCH[1]}
  elif [ $# -eq 2 ] && [[ $1 =~ ^-F([=\;:,|/ ])$ ]] && fs=${BASH_REMATCH[1]} && [[ $2 =~ ^\{\ ?print\ \$([1-9])\ ?\}$ ]]; then
    n=${BASH_REMATCH[1]}
    [ "$fs" != ' ' ] || fs='' # a single space is awk's default splitting
  else
    command "${KILN_REAL:-awk}" "$@"; return
  fi
  if ! _kiln_plain; then _kiln_real "${KILN_REAL:-awk}" "$@"; return; fi
  [ -n "$KILN_IN" ] || return 0
  local line f
  while IFS= read -r line; do
    if [ -z "$fs" ]; then
      IFS=$' \t\n' read -r -a f <<<"$line" # blanks, as awk's default field splitting
      printf '%s\n' "${f[n-1]:-}"
    else
      _kiln_field "$line" "$fs" "$n"
    fi
  done <<<"${KILN_IN%$'\n'}"
}

# Lynis calls most tools by the paths it found them at ($AWKBINARY=/usr/bin/awk, ...): bash looks functions up by
# those names too. Each runs the function above, whose fallback runs the very program named.
for _kiln_cmd in tr wc grep sed cut awk; do
  for _kiln_dir in /usr/bin /bin; do
    if [ -x "$_kiln_dir/$_kiln_cmd" ]; then
      eval "$_kiln_dir/$_kiln_cmd() { KILN_REAL=$_kiln_dir/$_kiln_cmd $_kiln_cmd \"\$@\"; }"
    fi
  done
done
unset _kiln_cmd _kiln_dir
# Display prints each line with /bin/echo -e: without a backslash in its words, that is the builtin echo's output.
for _kiln_dir in /usr/bin /bin; do
  if [ -x "$_kiln_dir/echo" ]; then
    eval "$_kiln_dir/echo() {
      if [ \"\${1:-}\" = -e ] && [[ \"\${*:2}\" != *\\\\* ]]; then builtin echo \"\${@:2}\"; else command $_kiln_dir/echo \"\$@\"; fi
    }"
  fi
done
unset _kiln_dir

# LogText without the fork: Lynis's own definition, with the stamp from printf's builtin clock instead of
# $(date ...). Lynis defines LogText after this file has run; `readonly -f` keeps this one (bash says once on stderr
# "LogText: readonly function" and goes on). Only when the installed Lynis defines it exactly as mirrored here: any
# other Lynis keeps its own LogText (and pays the fork). KILN_LYNIS_FUNCTIONS: where the installed Lynis defines it.
# shellcheck disable=SC2016 # Lynis's source line, verbatim
KILN_LYNIS_LOGTEXT='        if [ ! "${LOGFILE}" = "" -a ${LOGTEXT} -eq 1 ]; then CDATE=$(date "+%Y-%m-%d %H:%M:%S"); echo "${CDATE} $1" >> ${LOGFILE}; fi'
if grep -qxF -e "$KILN_LYNIS_LOGTEXT" "${KILN_LYNIS_FUNCTIONS:-/usr/share/lynis/include/functions}" 2>/dev/null; then
  LogText() {
    # shellcheck disable=SC2086,SC2166 # as Lynis writes it
    if [ ! "${LOGFILE}" = "" -a ${LOGTEXT} -eq 1 ]; then printf -v CDATE '%(%Y-%m-%d %H:%M:%S)T' -1; echo "${CDATE} $1" >> ${LOGFILE}; fi
  }
  readonly -f LogText
  echo "lynis-fastlog: LogText without a fork per log line" >&2
else
  echo "lynis-fastlog: this Lynis defines LogText otherwise: its own LogText is used" >&2
fi
