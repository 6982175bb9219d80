# shellcheck shell=bash
# Shared helpers for provision/install.sh, its steps and provision/cleanup.sh. Sourced, never executed.
# Contract: install.sh exports KILN_PROVISION_DIR, KILN_APP_SRC, KILN_DISTRO, KILN_CHANGES (this run's change log)
# and KILN_PENDING (restarts and reloads not applied yet: kept across runs until a run applies them).
# The helpers are called from `if` and `||` (their return value says "changed"), where bash ignores set -e: each of
# them checks its own commands, and a failure stops the step (die) instead of being reported as a change.

KILN_PROVISION_DIR=${KILN_PROVISION_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
KILN_FILES=$KILN_PROVISION_DIR/files
KILN_CHANGES=${KILN_CHANGES:-/dev/null}
KILN_PENDING=${KILN_PENDING:-/dev/null}
export DEBIAN_FRONTEND=noninteractive

log()  { printf '    %s\n' "$*"; }
warn() { printf '    WARNING: %s\n' "$*" >&2; }
die()  { printf 'kiln: ERROR: %s\n' "$*" >&2; exit 1; }

# True when systemd is PID 1 (a booted VM); false in a chroot / non-booted container (image build or test tier).
booted() { [ -d /run/systemd/system ]; }

detect_distro() {
  [ -r /etc/os-release ] || die "missing required file /etc/os-release (cannot tell the distribution)"
  # shellcheck disable=SC1091
  . /etc/os-release
  printf '%s-%s\n' "$ID" "${VERSION_ID:-unknown}"
}

load_distro() {
  KILN_DISTRO=${KILN_DISTRO:-$(detect_distro)}
  local f=$KILN_PROVISION_DIR/distro/$KILN_DISTRO.sh
  if [ ! -r "$f" ]; then
    local known=() d; for d in "$KILN_PROVISION_DIR"/distro/*.sh; do known+=("$(basename "$d" .sh)"); done
    die "unsupported distribution '$KILN_DISTRO' (no $f); supported: ${known[*]}"
  fi
  # shellcheck source=/dev/null
  . "$f"
  export KILN_DISTRO
}

# Record that something changed and which services need a restart/reload because of it (until applied: 89, 99).
changed()      { printf 'changed %s\n' "$1" >>"$KILN_CHANGES" || die "cannot append to $KILN_CHANGES"; log "changed: $1"; }
need_restart() { printf 'restart %s\n' "$1" >>"$KILN_PENDING" || die "cannot record a pending restart of $1 in $KILN_PENDING"; }
need_reload()  { printf 'reload %s\n' "$1" >>"$KILN_PENDING" || die "cannot record a pending reload of $1 in $KILN_PENDING"; }
# pending restart|reload UNIT: a change recorded by this or an earlier run that no run has applied yet
pending()      { grep -qsx "$1 $2" "$KILN_PENDING"; }

# install_file SRC DEST [MODE] [OWNER:GROUP] -> returns 0 if DEST was (re)written, 1 if already identical.
# Never rewrites identical files (so mtimes and checksums stay stable across runs).
# A failed write (read-only or full file system, unknown owner) stops the step naming the file; the old file stays
# whole (the new content goes to DEST.kiln-new first and replaces DEST by rename only once it is complete).
install_file() {
  local src=$1 dest=$2 mode=${3:-0644} owner=${4:-root:root} meta
  [ -f "$src" ] || die "missing source file $src"
  [ -d "${dest%/*}" ] || mkdir -p "${dest%/*}" || die "cannot create directory ${dest%/*} for $dest"
  if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
    # content identical: only fix metadata if needed
    meta=$(stat -c '%a %U:%G' "$dest") || die "cannot stat $dest"
    if [ "$meta" != "${mode#0} $owner" ]; then
      { chmod "$mode" "$dest" && chown "$owner" "$dest"; } || die "cannot set mode $mode and owner $owner on $dest"
      changed "$dest (mode/owner)"
    fi
    return 1
  fi
  if ! install -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$src" "$dest.kiln-new" \
     || ! mv -f "$dest.kiln-new" "$dest"; then
    rm -f "$dest.kiln-new"
    die "cannot write $dest (mode $mode, owner $owner): the previous file, if any, is unchanged"
  fi
  changed "$dest"
  return 0
}

# put PATH-IN-FILES-TREE [MODE] [OWNER:GROUP]: install provision/files/PATH to /PATH.
put() { install_file "$KILN_FILES/$1" "/$1" "${2:-0644}" "${3:-root:root}"; }

# write_file DEST MODE OWNER:GROUP < content  (same no-rewrite semantics as install_file, content from stdin)
write_file() {
  local dest=$1 mode=$2 owner=$3 tmp rc=0
  tmp=$(mktemp) || die "cannot create a temporary file for $dest"
  cat >"$tmp" || { rm -f "$tmp"; die "cannot buffer the content of $dest in $tmp"; }
  install_file "$tmp" "$dest" "$mode" "$owner" || rc=$?
  rm -f "$tmp"
  return "$rc"
}

ensure_dir() { # ensure_dir PATH MODE OWNER:GROUP (a change is logged; returns 0 unless it dies)
  local d=$1 mode=$2 owner=$3 meta
  if [ ! -d "$d" ]; then
    install -d -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$d" || die "cannot create directory $d"
    changed "$d/"; return 0
  fi
  meta=$(stat -c '%a %U:%G' "$d") || die "cannot stat $d"
  [ "$meta" != "${mode#0} $owner" ] || return 0
  { chmod "$mode" "$d" && chown "$owner" "$d"; } || die "cannot set mode $mode and owner $owner on $d"
  changed "$d/ (mode/owner)"
}

ensure_symlink() { # ensure_symlink TARGET LINKNAME
  [ "$(readlink "$2" 2>/dev/null)" = "$1" ] && return 1
  ln -sfn "$1" "$2" || die "cannot link $2 -> $1"
  changed "$2 -> $1"
}

remove_path() { # remove_path PATH (a removal is logged; returns 0 unless it dies)
  [ -e "$1" ] || [ -L "$1" ] || return 0
  rm -rf "$1" || die "cannot remove $1"
  changed "removed $1"
}

# Every distro package the provisioned server runs with, from the distro profile's PKG_* lists (build-only
# PKG_BUILD_DEPS excluded) and, with KILN_APP_SRC set, the app's own runtime packages (its contract's `packages`).
# The image build preinstalls exactly these into the base disk, so the steps' apt_install calls in the emulated guest
# find them present; a stock box or a plain server installs them step by step (the app's: kiln-release).
stack_packages() {
  { printf '%s\n' "${PKG_BASE[@]}" "${PKG_DB_SERVER[@]}" "${PKG_REDIS[@]}" "${PKG_WEB[@]}" "${PKG_APP_RUNTIME[@]}" \
      "${PKG_FIREWALL[@]}" "${PKG_SSH[@]}" "${PKG_SERVICES[@]}" "${PKG_ACCOUNTS[@]}" "${PKG_LOGS[@]}" \
      "${PKG_LOGSHIP[@]}" "${PKG_BACKUP[@]}" "${PKG_METRICS[@]}" "${PKG_DEPLOY[@]}" "${PKG_TLS[@]}" "${PKG_LB[@]}"
    if [ -n "${KILN_APP_SRC:-}" ]; then app_contract_list "$KILN_APP_SRC" PACKAGES; fi
  } | LC_ALL=C sort -u
}

# kiln_lib_file NAME: one of Kiln's library files (kiln_app.py, kiln_metrics.py): beside this file on a server
# (/usr/local/lib/kiln), else in the provision/ tree.
kiln_lib_file() {
  local f
  for f in "$KILN_PROVISION_DIR/$1" "$KILN_FILES/usr/local/lib/kiln/$1"; do
    if [ -f "$f" ]; then echo "$f"; return 0; fi
  done
  die "no $1 in $KILN_PROVISION_DIR or $KILN_FILES/usr/local/lib/kiln"
}
# The app contract's reader.
kiln_app_py() { kiln_lib_file kiln_app.py; }
# app_contract_list APP_DIR KEY: a list of the app's resolved contract (KEY as in kiln-app.env: PACKAGES,
# BUILD_PACKAGES, RELEASE, ...), one item a line. A contract with problems stops the caller, naming them.
app_contract_list() {
  local env
  env=$(python3 "$(kiln_app_py)" show "$1" --format env ${KILN_DISTRO:+--distro "$KILN_DISTRO"}) \
    || die "the contract of the app in $1 has problems (above)"
  # The assignments are shlex-quoted by kiln_app.py: evaluating them assigns, it runs nothing.
  ( eval "$env"; local -n list="KILN_APP_$2"; if [ ${#list[@]} -gt 0 ]; then printf '%s\n' "${list[@]}"; fi )
}

# Units that the base disk's stack packages enabled, held back by packer/scripts/build-base-disk.sh so the build VM
# does not start them (with stock configs, under emulation) before provision/ has configured anything; step 10
# enables exactly these again, which is the state an apt install in the guest would have left.
# shellcheck disable=SC2034  # used by the steps and packer/scripts/build-base-disk.sh
KILN_DEFERRED_UNITS=/var/lib/kiln-base/deferred-units

pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

APT_OPTS=(-y -q -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)

# apt_install PKG... : installs only what is missing (a second run does not touch apt at all).
apt_install() {
  local missing=() p
  for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  if [ ! -f /var/lib/apt/lists/.kiln-updated ] || [ -n "$(find /var/lib/apt/lists/.kiln-updated -mmin +60 2>/dev/null)" ]; then
    apt-get -q -o DPkg::Lock::Timeout=600 update >/dev/null || die "apt-get update failed"
    touch /var/lib/apt/lists/.kiln-updated || die "cannot touch /var/lib/apt/lists/.kiln-updated"
  fi
  apt-get install "${APT_OPTS[@]}" --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
  changed "packages: ${missing[*]}"
}

# Enable a unit (works offline in a chroot too). Returns 0 if it changed something. --no-reload: each reload of a
# running systemd costs seconds under emulation; the symlinks count at boot, and 99-services reloads once.
svc_enable() {
  systemctl is-enabled -q "$1" 2>/dev/null && return 1
  systemctl enable --no-reload -q "$1" 2>/dev/null || systemctl enable --no-reload "$1" || die "cannot enable $1"
  need_restart daemon-reload
  changed "enabled $1"
}

svc_mask() { # stop (if running), disable and mask a unit
  [ "$(systemctl is-enabled "$1" 2>/dev/null)" = masked ] && return 1
  if booted; then systemctl stop "$1" 2>/dev/null || true; fi
  systemctl disable --no-reload -q "$1" 2>/dev/null || true
  systemctl mask --no-reload -q "$1" || die "cannot mask $1"
  need_restart daemon-reload
  changed "masked $1"
}

# Disk use at which disk_check warns, in percent of a file system's blocks.
KILN_DISK_WARN_PCT=80

# The upload limit in bytes, one number for the app (MAX_UPLOAD_BYTES in /etc/kiln/kiln.env) and nginx
# (client_max_body_size): this default, or the operator's MAX_UPLOAD_BYTES, rendered into both by kiln-firstboot.
# shellcheck disable=SC2034  # used by kiln-firstboot and step 60-nginx
KILN_MAX_UPLOAD_BYTES=10485760
# upload_limit_snippet BYTES: nginx's side of it (included by sites-available/kiln); 0 = written, 1 = unchanged.
upload_limit_snippet() {
  write_file /etc/nginx/snippets/kiln-limits.conf 0644 root:root <<EOF
# Written by kiln-firstboot and step 60-nginx: the app's MAX_UPLOAD_BYTES (/etc/kiln/kiln.env), the default in
# provision/lib/common.sh or the operator's.
client_max_body_size $1;
EOF
}

# The instance's env file: Kiln's defaults and the operator's overrides (kiln-firstboot writes it), which the app reads
# (KILN_ENV_FILE in its environment names it).
KILN_INSTANCE_ENV=/etc/kiln/kiln.env
# env_value FILE KEY: KEY's value in a KEY=VALUE file (the instance's env file, the operator's overrides):
# the last assignment, as when the app reads it, quotes stripped; nothing when FILE has none or is not readable.
env_value() {
  [ -r "$1" ] || return 0
  sed -nE "s/^[[:space:]]*(export[[:space:]]+)?$2=//p" "$1" | tail -n 1 | sed -E "s/^([\"'])(.*)\\1\$/\\2/"
}

# Kiln's Prometheus textfiles (kiln-backup's, kiln-release's, kiln-metrics-rq's), read by node-exporter's textfile
# collector, and where node-exporter listens: loopback only, the operator scrapes it through an SSH tunnel or a
# private network (README, "Metrics"). Step 78 renders both into /etc/default/prometheus-node-exporter and
# kiln-metrics-rq.service. Not under /var/lib/kiln (0750 root:kiln): node-exporter runs as its own user, prometheus,
# which must not join group kiln (it reads the instance env's secrets). Tests move the directory (the environment's).
# shellcheck disable=SC2034  # used by the steps, kiln-backup and kiln-release
KILN_METRICS_DIR=${KILN_METRICS_DIR:-/var/lib/kiln-metrics}
# shellcheck disable=SC2034
KILN_METRICS_LISTEN=127.0.0.1:9100

# job_timeout RELEASE_DIR: the longest an rq job of the app may run, in seconds: the operator's JOB_TIMEOUT (the
# overrides, through KILN_INSTANCE_ENV), else the release's contract (job-timeout, in its kiln-app.env). One number
# for the app (kiln-gunicorn, kiln-rqworker, kiln-release's manage.py and the timers give it as JOB_TIMEOUT) and for
# every stop that waits for a running job (the workers' stopwaitsecs, supervisor.service's TimeoutStopSec:
# kiln-release configure). kiln-firstboot refuses an override that is not a whole number >= 1.
job_timeout() {
  local v
  v=$(env_value "$KILN_INSTANCE_ENV" JOB_TIMEOUT)
  if [[ ! $v =~ ^[1-9][0-9]*$ ]]; then
    # shellcheck source=/dev/null
    v=$( . "$1/kiln-app.env" && printf '%s' "${KILN_APP_JOB_TIMEOUT:-}" ) || die "cannot read the contract of $1 (kiln-app.env)"
  fi
  [[ $v =~ ^[1-9][0-9]*$ ]] || die "no job timeout for $1: neither JOB_TIMEOUT in $KILN_INSTANCE_ENV nor job-timeout in its kiln-app.env"
  printf '%s\n' "$v"
}

# Per-instance sizing by kiln-firstboot (its memory), removed from the image by cleanup.sh: the swap file, and the
# database server's option file (in the distro's $DB_CONF_DIR) with the buffer pool.
# shellcheck disable=SC2034  # used by kiln-firstboot and cleanup.sh
KILN_SWAPFILE=/swapfile.kiln
# shellcheck disable=SC2034
KILN_DB_SIZING_CNF=91-kiln-sizing.cnf
# A cluster's data host keeps its binary logs this long (10 days): a replica is seeded from the latest daily backup and
# replays the logs written since; kiln-backup seed-replica refuses a backup older than that.
# shellcheck disable=SC2034
KILN_DB_BINLOG_KEEP_SECONDS=864000

# disk_check [PATH...]: the use of each file system holding a PATH (default / and /srv, each file system once), its
# blocks and its inodes, one line each; a warning (stderr) for each whose blocks or inodes are at KILN_DISK_WARN_PCT
# or above. It never fails: a full disk is news for the operator, not a reason to stop what called it. The one disk
# check of Kiln: `kiln status` (every local file system; packer/scripts/guest-verify.sh, the image build's verify,
# through it), kiln-retention (daily, into the journal) and the tests call it. A file system without inode counts
# (btrfs, vfat) says "inodes -".
# shellcheck disable=SC2120  # the paths are optional
disk_check() {
  local paths=("$@") fs size avail pct target seen=" " ipct line
  local -A inodes=()
  [ ${#paths[@]} -gt 0 ] || paths=(/ /srv)
  while read -r _ _ _ _ ipct target; do inodes[$target]=${ipct%\%}; done < <(df -P -i "${paths[@]}" | tail -n +2)
  while read -r fs size _ avail pct target; do
    [[ $seen == *" $target "* ]] && continue
    seen+="$target "
    pct=${pct%\%}; ipct=${inodes[$target]:--}
    [[ $pct =~ ^[0-9]+$ ]] || pct=0   # no block counts (proc and the like): nothing to fill
    line="disk $target ($fs): ${pct}% used, ${avail} free of ${size}; inodes -"
    [[ ! $ipct =~ ^[0-9]+$ ]] || line="${line%-}${ipct}% used"
    if [ "$pct" -ge "$KILN_DISK_WARN_PCT" ] || { [[ $ipct =~ ^[0-9]+$ ]] && [ "$ipct" -ge "$KILN_DISK_WARN_PCT" ]; }; then
      warn "$line: at or above ${KILN_DISK_WARN_PCT}%"
    else
      log "$line"
    fi
  done < <(df -P -h "${paths[@]}" | tail -n +2)
  return 0
}

# reboot_pending: succeeds and prints why when installed fixes wait for a reboot (a newer kernel in /boot than the
# running one, or /run/reboot-required, which unattended-upgrades' kernel hook and some packages leave); fails
# quietly otherwise. The one check for the login message (/etc/update-motd.d/90-kiln-reboot-required), the status
# checks and the tests.
reboot_pending() {
  local running newest reasons=()
  running=$(uname -r)
  newest=$(find /boot -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' | sed 's/^vmlinuz-//' | sort -V | tail -n 1)
  [ -z "$newest" ] || [ "$newest" = "$running" ] || reasons+=("kernel $newest is installed, $running is running")
  if [ -e /run/reboot-required ]; then
    local pkgs=""
    if [ -r /run/reboot-required.pkgs ]; then pkgs=$(sort -u /run/reboot-required.pkgs | tr '\n' ' '); fi
    reasons+=("/run/reboot-required${pkgs:+ (packages: ${pkgs% })}")
  fi
  [ ${#reasons[@]} -gt 0 ] || return 1
  local IFS=';'; echo "${reasons[*]}"
}

# Random secrets: hex only, so they are safe inside URLs and config files without quoting.
gen_secret() { openssl rand -hex "${1:-24}"; }

# Present from a boot's first-boot secrets stage until its config stage has written this instance's kiln.env
# (kiln-firstboot; under /run, so gone at every shutdown): supervisord starts beside first boot, not after it, and
# kiln-gunicorn waits while this exists (kiln-firstboot.service removes it also when the stage fails).
# shellcheck disable=SC2034
KILN_CONFIG_PENDING=/run/kiln-config.pending
# Left by a boot's config stage for kiln-firstboot-late.service (kiln-firstboot late, once the app answers): the
# app's config to render again with the operator's JOB_TIMEOUT (the stop waits only; nothing the first request needs).
# shellcheck disable=SC2034
KILN_LATE_PENDING=/run/kiln-firstboot-late.pending

# The queue Redis's unix socket (step 30 renders it into its config; on a single server QUEUE_URL names it: kiln-firstboot).
# Beside its pid file, in the directory its unit makes (RuntimeDirectory=redis-queue).
# shellcheck disable=SC2034  # used by step 30 and kiln-firstboot
KILN_QUEUE_SOCKET=/run/redis-queue/redis-server.sock

# --- The app's web server: each value stated once, here, and rendered into every consumer: kiln-gunicorn (its
# sockets, timeouts), supervisor's kiln.conf (stopwaitsecs, rendered by step 50 with render_vars), nginx's upstream
# (web_upstream_snippet) and kiln-release's deploys (the health gate, the drains). See kiln-release's header for the
# deploy these make possible.
# shellcheck disable=SC2034  # used by kiln-gunicorn, kiln-release and step 50
KILN_WEB_SOCKET=/run/kiln/gunicorn.sock            # supervisor's kiln-web: the release that serves
# shellcheck disable=SC2034
KILN_WEB_NEXT_SOCKET=/run/kiln/gunicorn-next.sock  # supervisor's kiln-web-next: a deploy's new release, beside it
# shellcheck disable=SC2034
KILN_WEB_TIMEOUT=60            # gunicorn --timeout: a request running longer is killed (nginx waits 65 s: kiln-proxy.conf)
KILN_WEB_GRACEFUL_TIMEOUT=30   # gunicorn --graceful-timeout: a stopped master's requests in flight finish within it
KILN_STOP_MARGIN=15            # supervisor waits a stopped program's own bound plus this before it kills
# shellcheck disable=SC2034  # kiln-release configure writes it: supervisor.service's TimeoutStopSec
KILN_SUPERVISOR_STOP_DROPIN=/etc/systemd/system/supervisor.service.d/kiln-stop-timeout.conf
# shellcheck disable=SC2034
KILN_WEB_STOPWAITSECS=$((KILN_WEB_GRACEFUL_TIMEOUT + KILN_STOP_MARGIN))
# shellcheck disable=SC2034
KILN_WEB_START_TIMEOUT=240     # a deploy waits at most this for its new release's gunicorn to answer (TCG: ~15 s)
# shellcheck disable=SC2034
KILN_HEALTH_GRACE=20           # ... and once it answers, at most this for its health path to answer 2xx

# render_vars FILE: FILE with each @NAME@ replaced by the value of the shell variable NAME (the values above); a name
# without a value stops the caller, naming it.
render_vars() {
  local text name
  text=$(cat "$1") || die "cannot read $1"
  while [[ $text =~ @([A-Z][A-Z0-9_]*)@ ]]; do
    name=${BASH_REMATCH[1]}
    [ -n "${!name:-}" ] || die "$1 names @$name@, which has no value (provision/lib/common.sh)"
    text=${text//@"$name"@/${!name}}
  done
  printf '%s\n' "$text"
}

# web_upstream_snippet SOCKET: the gunicorn nginx sends the app's requests to (the upstream kiln_app of
# conf.d/kiln.conf includes it): kiln-web's socket, or kiln-web-next's while a deploy moves kiln-web to its new
# release. 0 = written, 1 = unchanged.
web_upstream_snippet() {
  write_file /etc/nginx/snippets/kiln-upstream.conf 0644 root:root <<EOS
# Written by kiln-release (and step 60-nginx): the gunicorn that serves the app. $KILN_WEB_SOCKET is kiln-web's;
# $KILN_WEB_NEXT_SOCKET (kiln-web-next) only while a deploy restarts kiln-web.
server unix:$1 fail_timeout=0;
EOS
}

# --- Log shipping (README, "Logs leave the server"): rsyslog sends the journal and the app's logs to the operator's
# KILN_LOG_REMOTE over syslog-over-TLS (RFC 5425). kiln-logship renders the template
# files/usr/local/lib/kiln/rsyslog-kiln-remote.conf with these; step 76 renders rsyslog.service's drop-in (which runs
# rsyslogd on this file alone: the package's rsyslog.conf would also write /var/log/syslog and the like, and the
# journal is the local log). Tests move the paths (the environment's).
# shellcheck disable=SC2034  # used by kiln-logship and step 76
KILN_LOGSHIP_ETC=${KILN_LOGSHIP_ETC:-/etc/rsyslog.d}
# shellcheck disable=SC2034
KILN_LOGSHIP_CONF=$KILN_LOGSHIP_ETC/kiln-remote.conf
# shellcheck disable=SC2034  # the operator's CA when given as PEM text (a path is used where it is)
KILN_LOGSHIP_CA_PEM=$KILN_LOGSHIP_ETC/kiln-remote-ca.pem
# shellcheck disable=SC2034  # the receiver's CA unless the operator names one
KILN_LOGSHIP_SYSTEM_CA=${KILN_LOGSHIP_SYSTEM_CA:-/etc/ssl/certs/ca-certificates.crt}
# shellcheck disable=SC2034  # rsyslog's work directory: the action queue's disk part and imfile's read positions
KILN_LOGSHIP_SPOOL=${KILN_LOGSHIP_SPOOL:-/var/spool/rsyslog}
# shellcheck disable=SC2034  # the app's logs (supervisor's, step 50)
KILN_LOGSHIP_APP_LOGS=${KILN_LOGSHIP_APP_LOGS:-/var/log/kiln/*.log}
# shellcheck disable=SC2034  # where journald forwards each entry (ForwardToSyslog; systemd's syslog.socket)
KILN_LOGSHIP_JOURNAL_SOCKET=${KILN_LOGSHIP_JOURNAL_SOCKET:-/run/systemd/journal/syslog}
# shellcheck disable=SC2034  # the bound of what a receiver outage keeps: messages in memory, then bytes on disk
KILN_LOGSHIP_QUEUE_MESSAGES=10000
# shellcheck disable=SC2034
KILN_LOGSHIP_QUEUE_DISK=256m

# Roles (issue 14): one image, each host's role chosen at first boot (KILN_ROLE in /etc/kiln/overrides.env, rendered
# into the instance env; `all` when none is given: the all-in-one server). This table is the one statement of what a
# role runs; every consumer asks role_has: the first boot (units, users, binds, firewall), step 50 (kiln-web's
# programs), step 99 (what it starts), kiln-release (worker groups, the web switch, release commands).
#   db: the database server   redis: both Redis instances   web: nginx + kiln-web   workers: the app's rq worker groups
#   lb: HAProxy in front of the web hosts
# data-replica: a read-only MariaDB following the data host's (GTID replication, seeded from a backup), no Redis; it
# takes the cluster's backups; `kiln promote` makes it the data host (KILN_ROLE=data).
KILN_ROLES="all web worker data data-replica lb"
role_has() { # role_has PART [ROLE]: ROLE (default: this host's) runs PART
  case ${2:-$(kiln_role)}:$1 in
    all:db | all:redis | all:web | all:workers | data:db | data:redis | data-replica:db | web:web | worker:workers | lb:lb)
      return 0 ;;
    *) return 1 ;;
  esac
}
kiln_role() { # this host's role: KILN_ROLE of the instance env (none before the first boot: all)
  local r; r=$(env_value "$KILN_INSTANCE_ENV" KILN_ROLE); echo "${r:-all}"
}
replication_status() { # replication_status FIELD...: the local database's replication (SHOW SLAVE STATUS), FIELD=VALUE
  # a line, nothing when it follows no primary; fails when the server cannot be asked (kiln-backup, kiln-firstboot)
  "$DB_CLIENT" -e 'SHOW SLAVE STATUS\G' | awk -v want=" $* " '{
    line = $0; sub(/^ +/, "", line); k = line; sub(/:.*/, "", k); v = line; sub(/^[^:]*: ?/, "", v)
    if (index(want, " " k " ")) print k "=" v }'
}
role_units() { # role_units [ROLE]: the role-managed units ROLE runs, one a line (the others stay disabled)
  local r=${1:-$(kiln_role)}
  if role_has db "$r"; then echo "$DB_SERVICE"; fi
  # (the queue's metrics where the queue is: a host without it would fail the collector each minute)
  if role_has redis "$r"; then echo redis-server@cache.service; echo redis-server@queue.service; echo kiln-metrics-rq.timer; fi
  if role_has web "$r" || role_has workers "$r"; then echo supervisor.service; fi
  if role_has web "$r"; then echo nginx.service; fi
  if role_has lb "$r"; then echo haproxy.service; fi
  return 0
}
role_managed_units() { # every unit some role runs (a host disables those its role does not)
  local r; for r in $KILN_ROLES; do role_units "$r"; done | LC_ALL=C sort -u
}
# kiln-web's programs (kiln-web, kiln-web-next), rendered by step 50 into KILN_SUPERVISOR_WEB_CONF; supervisord reads
# them from conf.d only on a host that serves the web (role_supervisor_web applies that, step 50 and the first boot).
KILN_SUPERVISOR_WEB_CONF=/usr/local/lib/kiln/supervisor-kiln-web.conf
role_supervisor_web() { # 0 = conf.d/kiln.conf changed (supervisorctl update applies it), 1 = unchanged
  if role_has web; then
    install_file "$KILN_SUPERVISOR_WEB_CONF" /etc/supervisor/conf.d/kiln.conf 0644 root:root
  elif [ -e /etc/supervisor/conf.d/kiln.conf ]; then
    remove_path /etc/supervisor/conf.d/kiln.conf
  else
    return 1
  fi
}
