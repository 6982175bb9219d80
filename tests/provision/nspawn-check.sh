#!/usr/bin/env bash
# Fast provisioner test tier (no VM): Debian 13 rootfs (mmdebstrap, cached) -> provision/install.sh inside it ->
# boot it with systemd-nspawn -> check first boot, services, nginx/HTTPS, app, worker -> second install.sh run must
# change nothing -> reboot -> provision/cleanup.sh -> boot again = fresh first boot -> a second app
# (tests/fixtures/second-app: another contract in every key) provisioned onto it as `make image APP=` does, and the
# same probes, parametrised by the current release's contract (/srv/kiln/current/kiln-app.env), run on it.
# Usage: tests/provision/nspawn-check.sh        (root; exit 0 = all checks passed)
#   KILN_NSPAWN_KEEP=1       keep the container rootfs afterwards (path printed)
#   KILN_NSPAWN_INSTALL=booted   run the first install.sh in the booted container (like Packer/Vagrant) instead of
#                                offline (default: offline, i.e. no systemd running, services start at first boot)
#   KILN_NSPAWN_QUICK=1      skip the reboot and cleanup/fresh-boot phases
#   KILN_NSPAWN_SECOND_APP=0 skip the second app
# Every boot prints its boot -> first health 200 time and, for the app's boots, the critical chain of the units on
# that path, `systemd-analyze` and the top of `blame`.
# The container shares the host network: it binds 80, 443, 3306, 6379, 6380 on the host while it runs.
# shellcheck disable=SC2016  # many single-quoted snippets run inside the container on purpose
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=tests/hardening/nspawn-lib.sh
. "$REPO/tests/hardening/nspawn-lib.sh"   # kiln_rootfs_prepare, kiln_rootfs_install (this tier's rootfs, shared)
WORK=$(mktemp -d /var/tmp/kiln-nspawn.XXXXXX)
ROOT=$WORK/root
MODE=${KILN_NSPAWN_INSTALL:-offline}
NSPAWN_PID=""
FAILS=0
T_START=$(date +%s)

say()  { printf '\n==> %s  [%s, +%ss]\n' "$*" "$(date -u +%T)" "$(( $(date +%s) - T_START ))"; }
ok()   { printf '  ok    %s\n' "$*"; }
bad()  { printf '  FAIL  %s\n' "$*"; FAILS=$((FAILS + 1)); }
fatal(){ printf '\nFATAL: %s\n' "$*" >&2; exit 1; }
check(){ local d=$1; shift; if "$@" >/dev/null 2>&1; then ok "$d"; else bad "$d"; fi; }

stop_container() {
  [ -n "$NSPAWN_PID" ] || return 0
  if kill -0 "$NSPAWN_PID" 2>/dev/null; then
    kill -TERM "$NSPAWN_PID" 2>/dev/null || true     # nspawn asks the container's systemd for a clean poweroff
    for _ in $(seq 60); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 1; done
    kill -0 "$NSPAWN_PID" 2>/dev/null && kill -KILL "$NSPAWN_PID" 2>/dev/null
    wait "$NSPAWN_PID" 2>/dev/null || true
  fi
  NSPAWN_PID=""
}
finish() {
  local rc=$?
  stop_container
  if [ "${KILN_NSPAWN_KEEP:-0}" = 1 ]; then echo "kept: $ROOT (console logs in $WORK)"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" -eq 0 ] || fatal "run as root"
[ -f "$REPO/app/requirements.txt" ] || fatal "app/requirements.txt missing (the app is required)"
"$REPO/tools/apt-ensure.sh" mmdebstrap systemd-container curl openssl

# ---------------------------------------------------------------- rootfs (cached tarball, keyed by its inputs)
say "rootfs: Debian $KILN_ROOTFS_SUITE (cache $KILN_ROOTFS_CACHE)"
kiln_rootfs_prepare "$ROOT" "$WORK"
VERSION=nspawn-$(date -u +%Y%m%d%H%M%S)
COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo uncommitted)
BIND=("${KILN_ROOTFS_BIND[@]}")   # apt .deb cache shared across runs

# ---------------------------------------------------------------- container helpers
now() { date +%s.%N; }
secs_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
boot() { # boot LOGNAME [app]: with "app", also time container start -> first GET of the health path 200 (READY_SECS)
  local app=${2:-} t0 state="" deadline
  t0=$(now)
  READY_SECS=""
  systemd-nspawn -q -D "$ROOT" -b --register=no --keep-unit --resolv-conf=copy-host "${BIND[@]}" \
    >"$WORK/console-$1.log" 2>&1 </dev/null &
  NSPAWN_PID=$!
  INIT=""
  for _ in $(seq 300); do
    INIT=$(pgrep -x -P "$NSPAWN_PID" systemd || true)   # the container's PID 1 is nspawn's child
    [ -n "$INIT" ] && break
    kill -0 "$NSPAWN_PID" 2>/dev/null || { tail -20 "$WORK/console-$1.log"; fatal "container exited during boot"; }
    sleep 0.1
  done
  [ -n "$INIT" ] || fatal "container init not found"
  export INIT
  # Until systemd inside has finished starting up and (app) the health path answered 200, polled every 0.1 s (the time is
  # the tier's headline figure), at most 240 s.
  deadline=$(( $(date +%s) + 240 ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    if [ -n "$app" ] && [ -z "$READY_SECS" ] && health_200; then READY_SECS=$(secs_since "$t0"); fi
    case $state in running|degraded|maintenance|stopping) [ -z "$app" ] || [ -n "$READY_SECS" ] && break ;;
      *) state=$(nsenter -t "$INIT" -a -- systemctl is-system-running 2>/dev/null || true) ;; esac
    sleep 0.1
  done
  echo "  booted (init pid $INIT): system $state${app:+; boot -> first GET $KILN_APP_HEALTH 200: ${READY_SECS:-none}s}"
  if [ "$state" != running ]; then
    cx systemctl --failed --no-legend --plain | sed 's/^/  failed unit: /'
  fi
  if [ -n "$app" ]; then boot_profile; fi
}
boot_profile() { # the units on the path to the first request: what to cut next (informational: never fails)
  echo "  critical chain (systemd-analyze critical-chain supervisor.service nginx.service):"
  { cx systemd-analyze critical-chain --no-pager supervisor.service nginx.service 2>&1 | grep -v '^The time' | sed '/^$/d; s/^/    /'; } || true
  echo "  $(cx systemd-analyze 2>&1 | head -1 || true)"
  echo "  top of systemd-analyze blame:"
  { cx systemd-analyze blame --no-pager 2>&1 | head -8 | sed 's/^/    /'; } || true
}
cx() { # run a command inside the booted container, with a clean environment
  nsenter -t "$INIT" -a -- env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"
}
export -f cx
http_code() { curl -sk -o /dev/null -w '%{http_code}' --max-time 10 "$@" || true; }
wait_for() { # wait_for SECONDS DESCRIPTION CMD...
  local n=$1 d=$2; shift 2
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && { ok "$d"; return 0; }; sleep 1; done
  bad "$d (after ${n}s)"; return 1
}
# The current release's contract (kiln-release writes it resolved next to the release): KILN_APP_* in this shell,
# read from the rootfs whether or not the container runs. The probes below are parametrised by it.
load_contract() {
  local f=$ROOT/srv/kiln/current/kiln-app.env
  [ -f "$f" ] || fatal "no $f: the release has no resolved contract"
  # shellcheck source=/dev/null
  . "$f"
  if [ -z "${KILN_APP_WSGI:-}" ] || [ -z "${KILN_APP_HEALTH:-}" ]; then fatal "$f resolves no wsgi or health"; fi
}
# The health path through nginx: over HTTP where the site proxies it (rendered from the contract), HTTPS for '/'.
health_url() { if [ "$KILN_APP_HEALTH" = / ]; then echo https://127.0.0.1/; else echo "http://127.0.0.1$KILN_APP_HEALTH"; fi; }
health_200() { [ "$(http_code "$(health_url)")" = 200 ]; }
# group_var GROUP FIELD: the field (QUEUES, PROCESSES) of a worker group of the contract, words
group_var() { local v="KILN_APP_WORKERS_${1^^}_$2[*]"; v=${v//-/_}; echo "${!v}"; }
worker_processes() { local g n=0; for g in "${KILN_APP_WORKERS[@]}"; do n=$((n + $(group_var "$g" PROCESSES))); done; echo "$n"; }

snapshot() { # state that a no-op provisioning run must not change
  cx bash -c 'cd /etc && find . -xdev -type f ! -name "*.pid" -print0 | LC_ALL=C sort -z | xargs -0 sha256sum;
              find /etc /srv/kiln /usr/local -xdev \( -type l -o -type d \) -printf "%p %l %m %u:%g\n" | LC_ALL=C sort;
              find /srv/kiln /usr/local -xdev -type f -printf "%p %s %T@\n" | LC_ALL=C sort;
              dpkg-query -W -f="\${Package} \${Version} \${Status}\n";
              /srv/kiln/current/venv/bin/python -m pip freeze --all 2>/dev/null;
              for u in mariadb redis-server@cache redis-server@queue nginx supervisor; do
                echo "$u $(systemctl show -p MainPID -p ActiveEnterTimestampMonotonic --value $u | xargs)"; done;
              supervisorctl pid kiln-web || true'
}

service_checks() { # service_checks PHASE
  local u
  for u in kiln-firstboot-secrets kiln-firstboot kiln-firstboot-db mariadb redis-server@cache redis-server@queue nginx supervisor; do
    check "$1: $u.service active" cx systemctl is-active -q "$u.service"
  done
  check "$1: stock redis-server.service masked" test "$(cx systemctl is-enabled redis-server.service 2>/dev/null)" = masked
  check "$1: first-boot marker = machine-id" cx bash -c '[ -s /etc/machine-id ] && cmp -s /etc/machine-id /var/lib/kiln/firstboot.done'
  local workers; workers=$(worker_processes)
  wait_for 60 "$1: supervisor: kiln-web + $workers rq worker(s) of groups ${KILN_APP_WORKERS[*]:-(none)} RUNNING" \
    bash -c "[ \$(nsenter -t $INIT -a -- supervisorctl status | grep -c RUNNING) -eq $((1 + workers)) ]" || true
  wait_for 60 "$1: GET $(health_url) -> 200 (nginx -> gunicorn -> the app's health path)" health_200 || true
  check "$1: GET https://127.0.0.1$KILN_APP_HEALTH -> 200 (self-signed, -k)" test "$(http_code "https://127.0.0.1$KILN_APP_HEALTH")" = 200
  kiln_ready "$1"
}
kiln_ready() { # kiln_ready PHASE: Kiln's own readiness check: database, both Redis, the health path through nginx
  local out rc=0
  out=$(cx kiln-ready 2>&1) || rc=$?
  if [ "$rc" -eq 0 ]; then ok "$1: kiln-ready: ready (database, cache, queue, GET $KILN_APP_HEALTH)"; else bad "$1: kiln-ready (rc $rc):"; fi
  printf '%s\n' "$out" | sed 's/^/      /'
}

# One job on each of the given queues, enqueued on the instance's QUEUE_URL as the app's user; the worker that took it
# is named in the job's result, its pid in that worker's record (a forking Worker's job runs in a child of it, a
# SimpleWorker's in it). Prints "QUEUE PID" (or "QUEUE STATUS" when it did not finish).
PROBE_JOBS='
import sys, time
from redis import Redis
from rq import Queue, Worker
env = {}
for line in open("/etc/kiln/kiln.env").read().splitlines():
    if "=" in line and not line.startswith("#"):
        key, value = line.split("=", 1)
        env[key] = value
conn = Redis.from_url(env["QUEUE_URL"])
jobs = {q: Queue(q, connection=conn).enqueue("os.getpid") for q in sys.argv[1:]}
deadline = time.time() + 60
for q, job in jobs.items():
    while job.get_status(refresh=True) not in ("finished", "failed") and time.time() < deadline:
        time.sleep(0.2)
    status = job.get_status()
    result = job.latest_result() if status == "finished" else None
    worker = Worker.find_by_key(Worker.redis_worker_namespace_prefix + result.worker_name, connection=conn) if result else None
    print(q, worker.pid if worker else getattr(status, "value", status))
'
app_probes() { # app_probes PHASE: what Kiln proves for every app, parametrised by the current release's contract
  local f url g q out status pid prog group master
  kiln_ready "$1"
  f=$(cx find /srv/kiln/current/static/ -type f -name '*.css' | LC_ALL=C sort | head -1 || true)
  url=$KILN_APP_STATIC_URL${f#/srv/kiln/current/static/}
  check "$1: a static file of the release at the contract's static-url, served by nginx ($url: cache-control)" bash -c \
    "[ -n '$f' ] && curl -sk -D - -o /dev/null 'https://127.0.0.1$url' | tr -d '\r' | grep -qi '^cache-control: max-age='"
  local queues=()
  for g in "${KILN_APP_WORKERS[@]}"; do
    for q in $(group_var "$g" QUEUES); do [[ " ${queues[*]} " == *" $q "* ]] || queues+=("$q"); done
  done
  if [ ${#queues[@]} -gt 0 ]; then
    out=$(cx runuser -u kiln -- /srv/kiln/current/venv/bin/python -c "$PROBE_JOBS" "${queues[@]}" 2>&1 || true)
    status=$(cx supervisorctl status || true)
    for q in "${queues[@]}"; do
      pid=$(awk -v q="$q" '$1 == q {print $2}' <<<"$out")
      prog=$(awk -v p="$pid," '$3 == "pid" && $4 == p {print $1}' <<<"$status")
      group=${prog#kiln-worker:kiln-worker-}; group=${group%-*}
      check "$1: a job on queue $q ran in rq worker ${prog:-?} (pid ${pid:-none}), of a group that takes $q" bash -c \
        "[ -n '$prog' ] && [[ ' $(group_var "${group:-none}" QUEUES 2>/dev/null) ' == *' $q '* ]]"
      [ -n "$prog" ] || printf '%s\n' "$out" | sed 's/^/      /'
    done
    # rq names each worker's connection (CLIENT SETNAME): on a single server all of them come over the queue's socket.
    local sock=$QUEUE_SOCK clients named
    clients=$(rcli queue 6380 client list 2>&1 | tr -d '\r' || true)
    named=$(grep ' name=[^ ]' <<<"$clients" || true)
    check "$1: QUEUE_URL is the queue Redis's unix socket ($sock), and each rq worker's connection comes over it" bash -c \
      "grep -q '^QUEUE_URL=unix://:[^@]*@$sock?db=0\$' <(cx cat /etc/kiln/kiln.env) && [ -n '$named' ] && ! grep -qv ' addr=$sock:' <<<'$named'"
    check "$1: as many named connections to the queue Redis as rq worker programs run" test \
      "$(grep -c . <<<"$named")" -ge "$(grep -c '^kiln-worker:.* RUNNING' <<<"$status")"
    if ! grep -q " addr=$sock:" <<<"$named"; then printf '%s\n' "$clients" | sed 's/^/      /'; fi
  fi
  for g in "${KILN_APP_TIMERS[@]}"; do
    check "$1: timer kiln-app-$g.timer enabled and active" test \
      "$(cx systemctl is-enabled "kiln-app-$g.timer" 2>&1 || true) $(cx systemctl is-active "kiln-app-$g.timer" 2>&1 || true)" = "enabled active"
    check "$1: timer $g: a run (systemctl start kiln-app-$g.service) succeeds, as the app's user" cx bash -c \
      "systemctl start kiln-app-$g.service && [ \$(systemctl show -p Result --value kiln-app-$g.service) = success ] && [ \$(systemctl show -p User --value kiln-app-$g.service) = kiln ]"
  done
  master=$(cx cat /run/kiln/gunicorn.pid 2>/dev/null || true)
  cx kill -9 "${master:-0}" 2>/dev/null || bad "$1: no gunicorn master to kill (pid file: ${master:-none})"
  wait_for 60 "$1: kill -9 of gunicorn's master ($master) -> supervisor starts another, $KILN_APP_HEALTH 200 again" bash -c \
    "m=\$(cx cat /run/kiln/gunicorn.pid 2>/dev/null); [ -n \"\$m\" ] && [ \"\$m\" != $master ] && [ \$(curl -sk -o /dev/null -w '%{http_code}' --max-time 5 $(health_url)) = 200 ]" \
    || true
}

no_change_run() { # no_change_run LABEL NAME CMD...: CMD, a provisioning run, must report 0 changes and change no state
  local label=$1 name=$2 t0; shift 2
  sleep 2
  snapshot >"$WORK/snap-$name-1.txt"
  t0=$(date +%s)
  "$@" >"$WORK/install-$name.log" 2>&1 || { sed 's/^/  | /' "$WORK/install-$name.log"; fatal "${label}install.sh ($name) failed"; }
  NO_CHANGE_SECS=$(( $(date +%s) - t0 ))
  snapshot >"$WORK/snap-$name-2.txt"
  tail -1 "$WORK/install-$name.log" | sed -u 's/^/  | /'
  check "${label}second run reports 0 changes (${NO_CHANGE_SECS}s)" grep -q ': 0 change(s)' "$WORK/install-$name.log"
  if ! grep -q ': 0 change(s)' "$WORK/install-$name.log"; then  # which step changed what
    grep -e 'changed: ' -e '^==> \[' "$WORK/install-$name.log" | grep -B1 'changed: ' | sed 's/^/      /' || true
  fi
  if diff -u "$WORK/snap-$name-1.txt" "$WORK/snap-$name-2.txt" >"$WORK/snap-$name.diff"; then
    ok "${label}checksums of /etc, /srv/kiln, /usr/local, dpkg list, pip freeze, service PIDs unchanged"
  else
    bad "${label}state changed by the second run:"; head -40 "$WORK/snap-$name.diff" | sed 's/^/      /'
  fi
}

trust_store() { # the CA trust store's names, link targets and contents, read from the host (both install modes)
  (cd "$ROOT" && find etc/ssl/certs usr/local/share/ca-certificates -printf '%p %y %l\n' | LC_ALL=C sort &&
   find etc/ssl/certs usr/local/share/ca-certificates -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum)
}

# ---------------------------------------------------------------- 1. install
trust_store >"$WORK/trust-store-0.txt"
if [ "$MODE" = booted ]; then
  say "boot the bare rootfs, then install.sh inside the running system (as Packer/Vagrant do)"
  boot bare
  t0=$(date +%s)
  nsenter -t "$INIT" -a -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 KILN_VERSION="$VERSION" \
    KILN_COMMIT="$COMMIT" KILN_BUILD_CA_DIR=/opt/kiln-src/build-ca /opt/kiln-src/provision/install.sh \
    2>&1 | tee "$WORK/install-1.log" | sed -u 's/^/  | /'
  [ "${PIPESTATUS[0]}" -eq 0 ] || fatal "install.sh failed"
  INSTALL_SECS=$(( $(date +%s) - t0 ))
  stop_container
else
  say "install.sh in the rootfs, offline (systemd-nspawn without boot: nothing runs, services start at first boot)"
  t0=$(date +%s)
  kiln_rootfs_install "$ROOT" "$VERSION" "$COMMIT" | tee "$WORK/install-1.log" | sed -u 's/^/  | /'
  [ "${PIPESTATUS[0]}" -eq 0 ] || fatal "install.sh failed"
  INSTALL_SECS=$(( $(date +%s) - t0 ))
  kiln_rootfs_offer "$ROOT" || fatal "cannot keep the provisioned rootfs for the bench ($KILN_PROVISIONED-*)"
fi
echo "  install.sh took ${INSTALL_SECS}s"
# The build CAs are trusted through install.sh's own bundle (pip above fetched from the index through it when the
# host's egress is intercepted); the store stays as the distro made it.
if compgen -G "$ROOT/opt/kiln-src/build-ca/*.crt" >/dev/null; then
  check "install.sh trusted the build CAs for its own run (a bundle outside the store)" \
    grep -q 'build CAs trusted by this run only' "$WORK/install-1.log"
fi
trust_store >"$WORK/trust-store-1.txt"
if diff -u "$WORK/trust-store-0.txt" "$WORK/trust-store-1.txt" >"$WORK/trust-store.diff"; then
  ok "CA trust store (/etc/ssl/certs, /usr/local/share/ca-certificates) unchanged by install.sh"
else
  bad "install.sh changed the CA trust store:"; head -20 "$WORK/trust-store.diff" | sed 's/^/      /'
fi

# ---------------------------------------------------------------- 2. first boot
load_contract
say "boot: first boot of this instance (app $KILN_APP_NAME $KILN_APP_VERSION)"
boot first app
service_checks "first boot"
FIRSTBOOT_SECS=$READY_SECS
echo "  first boot (no baked schema: migrates) -> first $KILN_APP_HEALTH 200: ${FIRSTBOOT_SECS}s"
check "first boot: no schema record yet -> migrate ran, then recorded (/var/lib/kiln/schema.migrated)" bash -c \
  "cx journalctl -b -u kiln-firstboot -u kiln-firstboot-db --no-pager -o cat | grep -q 'running migrations: no record' && cx grep -qx 'RELEASE=$VERSION' /var/lib/kiln/schema.migrated"
workers_after_web() { # workers_after_web PHASE: every rq worker of this boot waited until kiln-web served
  local g n line
  for g in "${KILN_APP_WORKERS[@]}"; do
    for ((n = 0; n < $(group_var "$g" PROCESSES); n++)); do
      line=$(cx grep 'kiln-rqworker' "/var/log/kiln/worker-$g-$n.log" | tail -1 || true)
      check "$1: rq worker $g-$n started after kiln-web served (${line#"kiln-rqworker $g-$n: "})" grep -q 'kiln-web serves after' <<<"$line"
    done
  done
}
workers_after_web "first boot"

say "image contents"
check "no compiler left (gcc, cc absent; build-essential not installed)" \
  cx bash -c '! command -v gcc && ! command -v cc && ! dpkg -s build-essential python3-dev default-libmysqlclient-dev 2>/dev/null | grep -q "ok installed"'
check "runtime lib libmariadb3 kept" cx dpkg -s libmariadb3
check "mysqlclient importable in the release venv" cx /srv/kiln/current/venv/bin/python -c 'import MySQLdb'
check "/srv/kiln/current -> releases/$VERSION" test "$(cx readlink /srv/kiln/current)" = "releases/$VERSION"
check "/etc/kiln/kiln.env is 0640 root:kiln" test "$(cx stat -c '%a %U:%G' /etc/kiln/kiln.env)" = "640 root:kiln"
check "/etc/kiln/release has version/commit/date/distro" cx bash -c \
  "grep -qx 'KILN_VERSION=$VERSION' /etc/kiln/release && grep -qx 'KILN_COMMIT=$COMMIT' /etc/kiln/release && grep -q '^KILN_BUILD_DATE=20' /etc/kiln/release && grep -qx KILN_DISTRO=debian-13 /etc/kiln/release"
check "redis auth files 0640 redis:redis" test "$(cx stat -c '%a %U:%G' /etc/redis/kiln-cache.auth.conf /etc/redis/kiln-queue.auth.conf | sort -u)" = "640 redis:redis"
# supervisord through Kiln's launcher: the distro's supervisor, started without pkg_resources (tests/infra/test_restart.py:
# the same on the VM; the launcher's resolution of supervisor's specs: tests/tools/test_supervisord_launcher.py)
sup_pid=$(cx systemctl show -p MainPID --value supervisor.service)
check "supervisord (pid $sup_pid) runs through /usr/local/lib/kiln/supervisord" \
  bash -c "cx cat /proc/$sup_pid/cmdline | tr '\\0' ' ' | grep -q '^/usr/bin/python3 -I /usr/local/lib/kiln/supervisord -n -c /etc/supervisor/supervisord.conf'"
check "supervisord's launcher starts the distro's supervisor without importing pkg_resources" bash -c \
  "cx python3 -I -X importtime /usr/local/lib/kiln/supervisord --version 2>&1 | { out=\$(cat); grep -qx '4[.][0-9.]*' <<<\"\$out\" && ! grep -q pkg_resources <<<\"\$out\"; }"
gunicorn_pattern() { local m=${KILN_APP_WSGI%%:*}; echo "gunicorn ${m//./[.]}"; }
check "gunicorn ($KILN_APP_WSGI) workers = 2*CPU+1" test "$(cx pgrep -c -f "$(gunicorn_pattern)")" -eq $(( 2 * $(cx nproc) + 2 ))

say "database, redis"
check "MariaDB: flush_log_at_trx_commit=1, local_infile=0, bind 127.0.0.1" test \
  "$(cx mariadb -N -e 'select @@innodb_flush_log_at_trx_commit, @@local_infile, @@bind_address' | xargs)" = "1 0 127.0.0.1"
check "MariaDB: app user kiln@localhost exists, has no global privileges" cx bash -c \
  "mariadb -N -e \"show grants for 'kiln'@'localhost'\" | grep -q 'ON \`kiln\`.\*' && ! mariadb -N -e \"show grants for 'kiln'@'localhost'\" | grep -q 'ON \*\.\*.*\(ALL\|SUPER\|FILE\)'"
check "MariaDB TLS: the per-boot EC certificate of kiln-tls.conf, not an RSA key made at every start" test \
  "$(cx mariadb -N -e 'select @@ssl_cert' | xargs)" = /run/mysqld/kiln-tls.crt
check "MariaDB listens on loopback only" bash -c "! ss -ltnH | awk '{print \$4}' | grep ':3306\$' | grep -v '^127.0.0.1:'"
check "redis cache (6379) refuses unauthenticated commands" bash -c "cx redis-cli -p 6379 ping 2>&1 | grep -q NOAUTH"
QUEUE_SOCK=$(cx bash -c '. /usr/local/lib/kiln/lib/common.sh && echo "$KILN_QUEUE_SOCKET"')
check "redis queue's unix socket $QUEUE_SOCK (mode 777: any local user, as the port) refuses unauthenticated commands" bash -c \
  "cx runuser -u nobody -- redis-cli -s '$QUEUE_SOCK' ping 2>&1 | grep -q NOAUTH"
rcli() { # rcli NAME PORT ARGS...: redis-cli against instance NAME with its password
  local n=$1 p=$2; shift 2
  cx bash -c "REDISCLI_AUTH=\$(awk '{print \$2}' /etc/redis/kiln-$n.auth.conf) exec redis-cli -p $p $*"
}
rinfo() { rcli "$1" "$2" info | tr -d '\r' | sed -n "s/^$3://p"; }   # CONFIG is disabled by the hardening include
check "redis cache: allkeys-lru, maxmemory 64mb, no AOF, no RDB saves" test \
  "$(rinfo cache 6379 maxmemory_policy) $(rinfo cache 6379 maxmemory) $(rinfo cache 6379 aof_enabled) $(cx grep -c '^save ""$' /etc/redis/redis-cache.conf)" = "allkeys-lru 67108864 0 1"
check "redis queue (6380): noeviction, AOF on, appendfsync everysec" test \
  "$(rinfo queue 6380 maxmemory_policy) $(rinfo queue 6380 aof_enabled) $(cx grep -c '^appendfsync everysec$' /etc/redis/redis-queue.conf)" = "noeviction 1 1"
check "redis cache and queue: background tasks once a second (hz 1: an idle Redis costs 5 % of a vCPU under TCG at 10)" \
  test "$(rinfo cache 6379 configured_hz) $(rinfo queue 6380 configured_hz)" = "1 1"
out=$(rcli cache 6379 config get maxmemory 2>&1 || true)
check "redis: CONFIG command disabled (hardening include active)" grep -qi 'unknown command' <<<"$out"
# Metrics (step 78): the address and the textfile directory as the server's lib/common.sh sets them.
check "node-exporter active, listening on KILN_METRICS_LISTEN (loopback) only" cx bash -c \
  '. /usr/local/lib/kiln/lib/common.sh && systemctl is-active -q prometheus-node-exporter && [ "$(ss -Hltn "sport = :${KILN_METRICS_LISTEN##*:}" | awk "{print \$4}" | sort -u)" = "$KILN_METRICS_LISTEN" ]'
check "node-exporter serves Kiln's textfiles: kiln_release_info of $VERSION, the rq queues (${KILN_APP_QUEUES[*]:-none}) read by kiln-metrics-rq" cx bash -c \
  'set -e; . /usr/local/lib/kiln/lib/common.sh; systemctl start kiln-metrics-rq.service; m=$(curl -sS --max-time 10 "http://$KILN_METRICS_LISTEN/metrics")
   grep -qx "kiln_release_info{release=\"$1\"} 1" <<<"$m"; grep -qx "kiln_rq_up 1" <<<"$m"; grep -qx "node_textfile_scrape_error 0" <<<"$m"
   for q in "${@:2}"; do grep -q "^kiln_rq_queue_jobs{queue=\"$q\"} " <<<"$m"; done' _ "$VERSION" "${KILN_APP_QUEUES[@]}"

say "nginx"
check "HTTP / -> 301 to https" bash -c "curl -sI --max-time 10 http://127.0.0.1/records/ | grep -qi '^location: https://127.0.0.1/records/'"
check "HTTP /healthz -> 200 over plain HTTP" test "$(http_code http://127.0.0.1/healthz)" = 200
check "HTTPS /records/ -> 200" test "$(http_code https://127.0.0.1/records/)" = 200
hdrs=$(curl -sk -D - -o /dev/null --max-time 10 https://127.0.0.1/records/ | tr -d '\r')
for h in 'strict-transport-security: max-age=' 'x-content-type-options: nosniff' 'x-frame-options: DENY' 'referrer-policy: ' 'server: nginx$'; do
  check "HTTPS header: $h" grep -qi "^$h" <<<"$hdrs"
done
check "headers sent once (no duplicate X-Frame-Options)" test "$(grep -ci '^x-frame-options' <<<"$hdrs")" = 1
check "TLS 1.3 works" curl -sk --tlsv1.3 -o /dev/null --max-time 10 https://127.0.0.1/healthz
check "TLS 1.1 refused" bash -c "! curl -sk --tlsv1.1 --tls-max 1.1 -o /dev/null --max-time 10 https://127.0.0.1/healthz"
check "/static/ served by nginx with cache headers" bash -c \
  "curl -sk -D - -o /dev/null https://127.0.0.1/static/admin/css/base.css | tr -d '\r' | grep -qi '^cache-control: max-age='"
check "gzip on for CSS" bash -c "curl -sk -H 'Accept-Encoding: gzip' -D - -o /dev/null https://127.0.0.1/static/admin/css/base.css | grep -qi '^content-encoding: gzip'"
gz=$(cx stat -c %s /srv/kiln/current/static/admin/css/base.css.gz 2>/dev/null || echo none)
check "CSS sent as kiln-release's precompressed copy (gzip_static: Content-Length $gz, the size of base.css.gz)" bash -c \
  "curl -sk --http1.1 -H 'Accept-Encoding: gzip' -D - -o /dev/null https://127.0.0.1/static/admin/css/base.css | tr -d '\r' | grep -qix 'content-length: $gz'"
# open_file_cache (the app's nginx snippet): the file served stays open in the worker that served it, no open/close
# per request. The workers' descriptors, after the requests above.
check "static file kept open by nginx between requests (open_file_cache: base.css.gz among a worker's descriptors)" \
  cx bash -c 'for p in $(pgrep -f "nginx: worker"); do ls -l /proc/$p/fd; done 2>/dev/null | grep -q "/static/admin/css/base.css.gz$"'
# nginx's page cache (snippets/kiln-page-cache.conf): what the app marks public (the records list, 5 s) is served by
# nginx from the second request on; a request with a cookie or credentials always reaches the app; a page the app
# did not mark public (here /healthz) is never stored. A query of its own: a key no earlier request filled.
cache_status() { curl -sk -D - -o /dev/null --max-time 10 "$@" | tr -d '\r' | sed -n 's/^x-cache-status: *//Ip'; }
q=nspawn-$RANDOM$RANDOM
seen="$(cache_status "https://127.0.0.1/records/?$q") $(cache_status "https://127.0.0.1/records/?$q")"
check "page cache: the public records list from nginx on the 2nd GET (X-Cache-Status: $seen)" test "$seen" = "MISS HIT"
seen="$(cache_status -H 'Cookie: sessionid=x' "https://127.0.0.1/records/?$q") $(cache_status -u a:b "https://127.0.0.1/records/?$q")"
check "page cache: bypassed with a cookie, with credentials (X-Cache-Status: $seen)" test "$seen" = "BYPASS BYPASS"
seen="$(cache_status "https://127.0.0.1/healthz?$q") $(cache_status "https://127.0.0.1/healthz?$q")"
check "page cache: a page not marked public is never stored (X-Cache-Status: $seen)" test "$seen" = "MISS MISS"
check "upload over 10m -> 413 from nginx" test "$(head -c 11000000 /dev/zero | curl -sk -o /dev/null -w '%{http_code}' -X POST --data-binary @- https://127.0.0.1/api/records/)" = 413
check "anonymous POST /api/records/ -> 401 (writes need a user)" test "$(curl -sk -o /dev/null -w '%{http_code}' \
  -X POST -H 'Content-Type: application/json' -d '{"title": "anonymous", "body": "x"}' https://127.0.0.1/api/records/)" = 401
# A user for the writes below, made as an operator makes one: manage.py as the app's user with the instance's settings.
API_USER=nspawn-check API_PASS=$(openssl rand -hex 16)
check "manage.py createsuperuser $API_USER (as kiln, KILN_ENV_FILE=/etc/kiln/kiln.env)" cx runuser -u kiln -- env -i \
  PATH=/usr/bin:/bin HOME=/srv/kiln LANG=C.UTF-8 KILN_ENV_FILE=/etc/kiln/kiln.env DJANGO_SUPERUSER_PASSWORD="$API_PASS" \
  /srv/kiln/current/venv/bin/python /srv/kiln/current/app/manage.py createsuperuser --noinput --username "$API_USER" \
  --email ops@example.com
job=$(curl -sk --max-time 30 -u "$API_USER:$API_PASS" -X POST -d '' https://127.0.0.1/api/exports/ || true)
job_id=$(sed -n 's/.*"job_id": *"\([^"]*\)".*/\1/p' <<<"$job")
if [ -n "$job_id" ]; then
  wait_for 60 "rq worker finishes an export job ($job_id)" bash -c \
    "curl -sk -u '$API_USER:$API_PASS' https://127.0.0.1/api/exports/$job_id/ | grep -q '\"status\": \"finished\"'"
  url=$(curl -sk -u "$API_USER:$API_PASS" "https://127.0.0.1/api/exports/$job_id/" | sed -n 's/.*"result_url": *"\([^"]*\)".*/\1/p')
  url=/${url#http*://*/}
  check "export CSV downloaded through its expiring link ($url)" bash -c \
    "curl -sk --max-time 10 'https://127.0.0.1$url' | head -1 | grep -q '^id,title,body,'"
else
  bad "POST /api/exports/ returned no job id: ${job:0:200}"
fi
cx supervisorctl stop kiln-web >/dev/null
# (a query of its own: the list nginx keeps for a few seconds would be served from its cache)
check "app down -> nginx's own 502 page" bash -c "[ \$(curl -sk -o $WORK/502.html -w '%{http_code}' 'https://127.0.0.1/records/?down-$RANDOM') = 502 ] && grep -q kiln-50x $WORK/502.html"
cx supervisorctl start kiln-web >/dev/null
wait_for 30 "app back after start" health_200
app_probes "reference app"

say "logs, journal, retention (tests/infra/test_logs.py: the same on the VM)"
lr_rc=0
cx logrotate --debug /etc/logrotate.conf >"$WORK/logrotate-debug.txt" 2>&1 || lr_rc=$?
if [ "$lr_rc" -eq 0 ] && ! grep -q '^error:' "$WORK/logrotate-debug.txt"; then
  ok "logrotate --debug /etc/logrotate.conf parses with no error"
else
  bad "logrotate --debug /etc/logrotate.conf: rc=$lr_rc"; grep -m 10 -e '^error:' -e 'No such file' "$WORK/logrotate-debug.txt" | sed 's/^/      /'
fi
cx find /var/log -type f >"$WORK/var-log-files.txt"
if python3 "$REPO/tests/infra/logcover.py" "$WORK/var-log-files.txt" "$WORK/logrotate-debug.txt" \
     "$ROOT/etc/supervisor/supervisord.conf" "$ROOT"/etc/supervisor/conf.d/*.conf >"$WORK/logcover.txt"; then
  ok "every file under /var/log is rotated by something (tests/infra/logcover.py):"
else
  bad "files under /var/log that nothing rotates (NOT ROTATED below; tests/infra/logcover.py):"
fi
sed 's/^/    /' "$WORK/logcover.txt"
check "logs outside logrotate bound themselves: auditd rotates its own, sysstat's sa2 (sysstat-summary.timer) is enabled" \
  cx bash -c "grep -qiE '^max_log_file_action *= *ROTATE' /etc/audit/auditd.conf && [ \"\$(systemctl is-enabled sysstat-summary.timer)\" = enabled ]"
cap=$(sed -n 's/^SystemMaxUse=//p' "$REPO/provision/files/etc/systemd/journald.conf.d/90-kiln.conf")
effective=$(cx systemd-analyze cat-config systemd/journald.conf | awk '/^# \// {f = $2} /^SystemMaxUse=/ {v = $0; vf = f} END {print vf, v}' || true)
check "journald.conf.d/90-kiln.conf in effect (systemd-analyze cat-config: ${effective:-no SystemMaxUse})" \
  test "$effective" = "/etc/systemd/journald.conf.d/90-kiln.conf SystemMaxUse=$cap"
# journald's "Disk space used by the journal" message of this boot: MAX_USE= is the limit it applies, in bytes.
max_use=$(cx journalctl -b -o export MESSAGE_ID=ec387f577b844b8fa948f33cad9a75e6 'JOURNAL_NAME=System Journal' \
  | sed -n 's/^MAX_USE=//p' | tail -n 1 || true)
check "journald applies it to the system journal: MAX_USE=${max_use:-none} = $cap" test "${max_use:-}" = "$(numfmt --from=iec "$cap")"
# Log shipping is OFF without the operator's KILN_LOG_REMOTE (step 76, kiln-logship): rsyslog installed, not running,
# nothing of its own under /var/log (the journal is the local log); a bad receiver is refused, naming the key.
check "log shipping OFF: rsyslog installed, rsyslog.service disabled, it and syslog.socket inactive" \
  cx bash -c '[ -x /usr/sbin/rsyslogd ] && ! systemctl is-enabled -q rsyslog.service && ! systemctl is-active -q rsyslog.service syslog.socket'
check "no /var/log/syslog, messages or auth.log" \
  cx bash -c 'for f in /var/log/syslog /var/log/messages /var/log/auth.log; do [ ! -e "$f" ] || exit 1; done'
check "kiln-logship check refuses KILN_LOG_REMOTE=logs.example.com (no port), naming the key" \
  cx bash -c 'printf "KILN_LOG_REMOTE=logs.example.com\n" >/run/kiln-logship-check.env
    if o=$(/usr/local/sbin/kiln-logship check /run/kiln-logship-check.env 2>&1); then exit 1; fi
    rm -f /run/kiln-logship-check.env; [[ $o == *"KILN_LOG_REMOTE=logs.example.com in"* ]]'
for t in logrotate.timer kiln-retention.timer; do
  check "$t enabled and active" test "$(cx systemctl is-enabled "$t" 2>&1 || true) $(cx systemctl is-active "$t" 2>&1 || true)" = "enabled active"
done
# Planted: an export from 1970 and a fresh one, an upload from 1970 (not an export: kept), and as many releases from
# 1970 as the service keeps (with the current one, the oldest of them is one too many).
media=$(cx sed -n 's/^MEDIA_ROOT=//p' /etc/kiln/kiln.env)
kept=$(cx systemctl show -p Environment --value kiln-retention.service | tr ' ' '\n' | sed -n 's/^KILN_RELEASES_KEPT=//p')
cx runuser -u kiln -- sh -c "set -e; mkdir -p '$media/exports' '$media/attachments/1970/01'
  echo old >'$media/exports/nspawn-old.csv'; touch -d @0 '$media/exports/nspawn-old.csv'
  echo fresh >'$media/exports/nspawn-fresh.csv'
  echo upload >'$media/attachments/1970/01/nspawn-old.bin'; touch -d @0 '$media/attachments/1970/01/nspawn-old.bin'"
for i in $(seq "${kept:-0}"); do
  cx sh -c "mkdir /srv/kiln/releases/nspawn-old-$i && touch /srv/kiln/releases/nspawn-old-$i/.kiln-release /srv/kiln/releases/nspawn-old-$i -d @$i"
done
if cx systemctl start kiln-retention.service; then ok "kiln-retention.service ran"; else bad "kiln-retention.service failed"; fi
cx journalctl -b -u kiln-retention.service --no-pager -o cat | sed 's/^/    | /'
check "retention: the export from 1970 deleted, the fresh export and the upload from 1970 kept" cx bash -c \
  "[ ! -e '$media/exports/nspawn-old.csv' ] && [ -e '$media/exports/nspawn-fresh.csv' ] && [ -e '$media/attachments/1970/01/nspawn-old.bin' ]"
check "retention: releases beyond the newest ${kept:-?} pruned (nspawn-old-1 gone; current and the rest kept)" cx bash -c \
  "[ -n '$kept' ] && [ ! -e /srv/kiln/releases/nspawn-old-1 ] && [ -d /srv/kiln/releases/nspawn-old-$kept ] && [ -d /srv/kiln/current/ ] && [ \$(ls /srv/kiln/releases | wc -l) -eq $kept ]"
check "retention: reported the disk use of / (lib/common.sh disk_check)" bash -c \
  "cx journalctl -b -u kiln-retention.service --no-pager -o cat | grep -q 'disk / ('"

# ---------------------------------------------------------------- 3. idempotency
say "second install.sh run (booted) must change nothing"
no_change_run "" 2 cx env KILN_VERSION="$VERSION" KILN_COMMIT="$COMMIT" KILN_BUILD_CA_DIR=/opt/kiln-src/build-ca \
  /opt/kiln-src/provision/install.sh
SECOND_SECS=$NO_CHANGE_SECS

# A change whose restart/reload failed stays pending, and the next run applies it, whatever steps it runs: step 60
# puts back Kiln's site (an operator edited it), the reload in 99 fails on a broken foreign nginx file, then a run
# of step 10 only (after the file is fixed) must reload nginx.
say "a failed run leaves its reload pending; the next run applies it"
run_install() { # run_install LOG [STEP...]
  local log=$1; shift
  cx env KILN_VERSION="$VERSION" KILN_COMMIT="$COMMIT" /opt/kiln-src/provision/install.sh "$@" >"$log" 2>&1
}
cx sh -c 'echo "# operator edit" >>/etc/nginx/sites-available/kiln; echo "this is not nginx" >/etc/nginx/conf.d/zz-kiln-test.conf'
if run_install "$WORK/install-pending-1.log" 60; then
  bad "install.sh 60 succeeded although nginx -t rejects the configuration"
else
  check "install.sh 60 failed at the nginx reload (nginx -t) and kept 'reload nginx' pending" bash -c \
    "grep -q 'nginx -t rejects' '$WORK/install-pending-1.log' && cx grep -qx 'reload nginx' /var/lib/kiln/provision.pending"
fi
cx rm -f /etc/nginx/conf.d/zz-kiln-test.conf
nginx_pid=$(cx systemctl show -p ExecMainPID --value nginx.service)
run_install "$WORK/install-pending-2.log" 10 || { sed 's/^/  | /' "$WORK/install-pending-2.log"; fatal "install.sh 10 failed"; }
check "install.sh 10 applied the pending reload (log: 'pending from an earlier run', 'systemctl reload nginx.service')" \
  bash -c "grep -q 'pending from an earlier run' '$WORK/install-pending-2.log' && grep -q 'systemctl reload nginx.service' '$WORK/install-pending-2.log'"
check "nothing pending afterwards (/var/lib/kiln/provision.pending gone)" bash -c "! cx test -e /var/lib/kiln/provision.pending"
check "nginx reloaded, not restarted (pid $nginx_pid), and serving ($KILN_APP_HEALTH 200)" bash -c \
  "[ \"$(cx systemctl show -p ExecMainPID --value nginx.service)\" = '$nginx_pid' ] && [ '$(http_code "https://127.0.0.1$KILN_APP_HEALTH")' = 200 ]"

if [ "${KILN_NSPAWN_QUICK:-0}" != 1 ]; then
  # -------------------------------------------------------------- 4. reboot (Packer: install, reboot, check)
  say "reboot: services come back, first boot does not run again"
  mid=$(cx cat /etc/machine-id)
  stop_container
  boot second app
  REBOOT_SECS=$READY_SECS
  service_checks "reboot"
  workers_after_web "reboot"
  check "same machine-id, first boot skipped" bash -c "cx journalctl -b -u kiln-firstboot -u kiln-firstboot-db --no-pager | grep -q 'already done for this instance'"
  test "$(cx cat /etc/machine-id)" = "$mid" || bad "machine-id changed across reboot"

  # -------------------------------------------------------------- 5. cleanup.sh, then a fresh first boot
  say "provision/cleanup.sh (as before a snapshot), then boot = a new instance"
  old_secret=$(cx grep '^SECRET_KEY=' /etc/kiln/kiln.env)
  check "a record written by this instance (must not reach the next one)" test "$(curl -sk -o /dev/null -w '%{http_code}' \
    -u "$API_USER:$API_PASS" -X POST -H 'Content-Type: application/json' -d '{"title": "nspawn-instance-1", "body": "x"}' \
    https://127.0.0.1/api/records/)" = 201
  old_hostkey=$(cx ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub | awk '{print $2}' || true)
  cx env KILN_CLEANUP_CONFIRM=yes /opt/kiln-src/provision/cleanup.sh >"$WORK/cleanup.log" 2>&1 \
    || { sed 's/^/  | /' "$WORK/cleanup.log"; fatal "cleanup.sh failed"; }
  tail -1 "$WORK/cleanup.log" | sed -u 's/^/  | /'
  check "cleanup: machine-id empty, no SSH host keys, no secrets/env/marker" cx bash -c \
    '[ ! -s /etc/machine-id ] && ! ls /etc/ssh/ssh_host_* && [ ! -e /etc/kiln/kiln.env ] && [ ! -e /etc/kiln/secrets.env ] && [ ! -e /var/lib/kiln/firstboot.done ]'
  left=$(cx bash -c 'ls -A /usr/local/share/ca-certificates /var/lib/apt/lists | grep -v -e "^/" -e "^$";
                     find /var/log -type f -size +0 ! -path "/var/log/journal/*"')
  check "cleanup: no build CA, no apt lists, logs (outside the live journal) empty" test -z "$left"
  [ -z "$left" ] || echo "      left over: ${left//$'\n'/ }"
  # The image keeps the migrated schema (first boot then skips migrate) but no user and no rows of this instance.
  # cleanup.sh stopped the database server: started for these checks only, stopped again before the next boot.
  cx systemctl start mariadb.service
  check "cleanup: user kiln dropped, migrated schema of database kiln kept" cx bash -c \
    "[ \$(mariadb -N -e \"SELECT COUNT(*) FROM mysql.user WHERE User='kiln'\") = 0 ] && [ \$(mariadb -N -e 'SELECT COUNT(*) FROM kiln.django_migrations') -gt 0 ] && mariadb -N -e 'SELECT 1 FROM kiln.records_record LIMIT 0'"
  rows=$(cx bash -c 'set -e
    ts=$(mariadb -N -e "SELECT table_name FROM information_schema.tables WHERE table_schema = '\''kiln'\''
                        AND table_name NOT IN ('\''django_migrations'\'','\''django_content_type'\'','\''auth_permission'\'')")
    [ -n "$ts" ] || { echo "no app tables in database kiln"; exit 0; }
    for t in $ts; do c=$(mariadb -N -e "SELECT COUNT(*) FROM kiln.\`$t\`"); [ "$c" = 0 ] || echo "$t:$c"; done' 2>&1 \
    || echo "query failed")
  check "cleanup: no rows of this instance left in database kiln (sessions, records, users)${rows:+: $rows}" test -z "$rows"
  cx systemctl stop mariadb.service
  check "cleanup: the record of the completed migrate is kept (/var/lib/kiln/schema.migrated)" cx grep -qx "RELEASE=$VERSION" /var/lib/kiln/schema.migrated
  check "cleanup: no systemd timer stamps (Persistent timers would fire at the first boot)" bash -c "! cx bash -c 'ls /var/lib/systemd/timers/stamp-* 2>/dev/null | grep -q .'"
  stop_container
  boot fresh app
  FRESH_SECS=$READY_SECS
  service_checks "fresh instance"
  check "fresh instance: new SECRET_KEY" cx bash -c "! grep -qx '$old_secret' /etc/kiln/kiln.env"
  new_hostkey=$(cx ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub 2>/dev/null | awk '{print $2}' || true)
  check "fresh instance: SSH host keys made anew by sshd-keygen.service, not by kiln-firstboot ($new_hostkey)" bash -c \
    "[ -n '$new_hostkey' ] && [ '$new_hostkey' != '$old_hostkey' ] && [ \"\$(cx systemctl show -p Result --value sshd-keygen.service)\" = success ] && ! cx journalctl -b -u kiln-firstboot -u kiln-firstboot-db --no-pager -o cat | grep -q 'ssh host keys'"
  check "fresh instance: baked schema matched -> migrate skipped (no Django run by kiln-firstboot)" bash -c \
    "cx journalctl -b -u kiln-firstboot -u kiln-firstboot-db --no-pager -o cat | grep -q 'migrations: skipped: release $VERSION' && ! cx journalctl -b -u kiln-firstboot -u kiln-firstboot-db --no-pager -o cat | grep -qE 'running migrations|Apply all migrations'"
  check "fresh instance: the app user works with its new password (records API over HTTPS)" test "$(http_code https://127.0.0.1/records/)" = 200
  workers_after_web "fresh instance"
  # A figure, not a gate (tests time nothing; in CI this tier runs beside the image build): `make bench` judges the
  # same fresh first boot against its 3 s target on a quiet host.
  check "fresh instance: boot -> first $KILN_APP_HEALTH 200 (${FRESH_SECS:-none}s)" test -n "$FRESH_SECS"
fi

REF_HEALTH=$KILN_APP_HEALTH
if [ "${KILN_NSPAWN_SECOND_APP:-1}" != 0 ]; then
  # -------------------------------------------------------------- 6. a second app: another contract in every key
  say "a second app (tests/fixtures/second-app) onto this instance, as \`make image APP=\` bakes one: install.sh, KILN_APP_SRC"
  t_app2=$(date +%s)
  check "second app: its runtime package (file) is not installed yet" bash -c "! cx dpkg -s file >/dev/null 2>&1"
  app2() { # install.sh with the second app
    cx env KILN_APP_SRC=/opt/kiln-src/second-app KILN_VERSION="$VERSION-second" KILN_COMMIT="$COMMIT" \
      KILN_BUILD_CA_DIR=/opt/kiln-src/build-ca /opt/kiln-src/provision/install.sh
  }
  t0=$(date +%s)
  app2 >"$WORK/install-app2.log" 2>&1 || { sed 's/^/  | /' "$WORK/install-app2.log"; fatal "install.sh of the second app failed"; }
  APP2_SECS=$(( $(date +%s) - t0 ))
  grep -e 'kiln-release: ' -e '^==> kiln provision finished' "$WORK/install-app2.log" | sed 's/^/  | /'
  load_contract
  check "second app: current -> releases/$VERSION-second ($KILN_APP_NAME $KILN_APP_VERSION, wsgi $KILN_APP_WSGI)" \
    test "$(cx readlink /srv/kiln/current) $KILN_APP_NAME" = "releases/$VERSION-second kiln-second-app"
  check "second app: its release commands ran before the switch, in order (check --deploy, migrate)" bash -c \
    "grep -o 'manage.py [a-z]*' '$WORK/install-app2.log' | head -2 | xargs | grep -qx 'manage.py check manage.py migrate' && grep -n -e 'release command' -e 'current ->' '$WORK/install-app2.log' | tail -1 | grep -q 'current ->'"
  check "second app: its runtime package file installed, as wanted (not auto)" cx bash -c \
    'dpkg -s file | grep -q "ok installed" && ! apt-mark showauto file | grep -q .'
  check "second app: no compiler left after its release was built from the index" \
    cx bash -c '! command -v gcc && ! command -v cc && ! dpkg -s build-essential 2>/dev/null | grep -q "ok installed"'
  programs=$(cx supervisorctl status | awk '{print $1}' | LC_ALL=C sort | xargs || true)
  check "second app: supervisor runs its worker groups only (urgent: 1, bulk: 2): $programs" test "$programs" = \
    "kiln-web kiln-web-next kiln-worker:kiln-worker-bulk-0 kiln-worker:kiln-worker-bulk-1 kiln-worker:kiln-worker-urgent-0"
  # The switch from the reference app was a deploy on a running instance (kiln-release's header): the new app started
  # beside the old one as kiln-web-next, gated on its health path, nginx to it, kiln-web restarted on it, nginx back.
  check "second app: deployed beside the reference app (kiln-web-next gated on $KILN_APP_HEALTH, nginx to it and back to kiln-web)" bash -c \
    "grep -q 'kiln-web-next ($VERSION-second): GET $KILN_APP_HEALTH -> 2' '$WORK/install-app2.log' && grep 'kiln-release: nginx -> ' '$WORK/install-app2.log' | sed -n 's/.*nginx -> \([^ ]*\).*/\1/p' | xargs | grep -qx '/run/kiln/gunicorn-next.sock /run/kiln/gunicorn.sock'"
  check "second app: kiln-web-next stopped again, nginx's upstream is kiln-web's socket" bash -c \
    "cx supervisorctl status kiln-web-next | grep -q STOPPED && cx grep -qx 'server unix:/run/kiln/gunicorn.sock fail_timeout=0;' /etc/nginx/snippets/kiln-upstream.conf"
  for prog in kiln-worker-urgent-0:SimpleWorker:urgent kiln-worker-bulk-0:Worker:bulk kiln-worker-bulk-1:Worker:bulk; do
    IFS=: read -r p cls q <<<"$prog"
    check "second app: $p runs rq's $cls on queue $q only" bash -c "cx cat /proc/\$(cx supervisorctl pid kiln-worker:$p)/cmdline | tr '\\0' ' ' | grep -q 'manage.py rqworker --with-scheduler --worker-class rq.worker.$cls $q \$'"
  done
  service_checks "second app"
  workers_after_web "second app"
  check "second app: gunicorn serves $KILN_APP_WSGI (2*CPU+1 workers)" test "$(cx pgrep -c -f "$(gunicorn_pattern)")" -eq $(( 2 * $(cx nproc) + 2 ))
  check "second app: the reference app's /readyz is not routed by nginx any more (HTTP -> redirect)" \
    test "$(http_code http://127.0.0.1/readyz)" = 301
  check "second app: /static/ is no static location any more (its own static file there: the app's 404)" \
    test "$(http_code https://127.0.0.1/static/tally/site.css)" = 404
  # Its own work, observable through its pages: a job on each queue, run by its code in its workers.
  for q in urgent bulk; do
    cx runuser -u kiln -- env -i PATH=/usr/bin:/bin HOME=/srv/kiln LANG=C.UTF-8 KILN_ENV_FILE=/etc/kiln/kiln.env \
      DJANGO_SETTINGS_MODULE="$KILN_APP_SETTINGS" /srv/kiln/current/venv/bin/python /srv/kiln/current/app/manage.py \
      enqueue "$q" >/dev/null
  done
  wait_for 30 "second app: its jobs on urgent and bulk ran (its home page through nginx: urgent: 1, bulk: 1)" bash -c \
    "curl -sk --max-time 5 https://127.0.0.1/ | grep -q '<li>urgent: 1</li>' && curl -sk --max-time 5 https://127.0.0.1/ | grep -q '<li>bulk: 1</li>'" \
    || true
  app_probes "second app"
  media=$(cx sed -n 's/^MEDIA_ROOT=//p' /etc/kiln/kiln.env)
  check "second app: its timer's run (manage.py snapshot) wrote MEDIA_ROOT/snapshots/*.txt with the tallies" cx bash -c \
    "grep -qx 'urgent 1' $media/snapshots/*.txt && [ \$(stat -c %U $media/snapshots) = kiln ]"
  check "second app: its home page lists the snapshot with file's MIME type (its runtime package at work)" bash -c \
    "curl -sk --max-time 5 https://127.0.0.1/ | grep -q '\.txt (text/plain)</li>'"
  no_change_run "second app: " app2-again app2

  # -------------------------------------------------------------- 7. the second app deployed from a git URL
  say "the second app from a git repository: kiln-release deploy file://...#v2:site (a tag; the app in a subfolder)"
  # A repository with the app in site/: v1 as it is, then a tagged commit v2 that adds a static file.
  git_repo=/var/tmp/second-app.git
  rm -rf "$WORK/gitsrc" "${ROOT:?}$git_repo"
  mkdir -p "$WORK/gitsrc" && cp -a "$REPO/tests/fixtures/second-app" "$WORK/gitsrc/site"
  gitw() { git -C "$WORK/gitsrc" -c user.name=kiln-test -c user.email=kiln-test@localhost "$@"; }
  { gitw init -q -b main && gitw add -A && gitw commit -q -m v1 \
    && echo "from git v2" >"$WORK/gitsrc/site/tally/static/tally/v2.txt" && gitw add -A && gitw commit -q -m v2 \
    && gitw tag v2 && git clone -q --bare "$WORK/gitsrc" "$ROOT$git_repo"; } || fatal "cannot make the test's git repository"
  v2=$(gitw rev-parse v2)
  cx kiln-release deploy "file://$git_repo#v2:site" >"$WORK/deploy-git.log" 2>&1 \
    || { sed 's/^/  | /' "$WORK/deploy-git.log"; fatal "kiln-release deploy from git failed"; }
  check "git deploy: current -> releases/v2-${v2:0:12} (the tag's commit)" test "$(cx readlink /srv/kiln/current)" = "releases/v2-${v2:0:12}"
  check "git deploy: the release records its origin (GIT=file://$git_repo#v2:site $v2)" \
    cx grep -qx "GIT=file://$git_repo#v2:site $v2" /srv/kiln/current/.kiln-release
  check "git deploy: the fetch's scratch directory is gone from /var/tmp" \
    cx bash -c '! compgen -G "/var/tmp/kiln-release-git.*"'
  check "git deploy: v2's new static file served by nginx (/assets/tally/v2.txt)" \
    bash -c "curl -sk --max-time 5 https://127.0.0.1/assets/tally/v2.txt | grep -qx 'from git v2'"
  check "git deploy: $KILN_APP_HEALTH 200 on the new release" test "$(http_code "http://127.0.0.1$KILN_APP_HEALTH")" = 200
  rc=0; cx kiln-release deploy "file://$git_repo#no-such-ref:site" >"$WORK/deploy-git-bad.log" 2>&1 || rc=$?
  check "git deploy: an unknown ref stops the deploy (exit $rc), naming it; nothing built, current unchanged" bash -c \
    "[ $rc = 1 ] && grep -q 'cannot fetch no-such-ref of file://$git_repo' '$WORK/deploy-git-bad.log' && [ \"\$(cx readlink /srv/kiln/current)\" = releases/v2-${v2:0:12} ] && ! compgen -G '$ROOT/srv/kiln/releases/no-such-ref*' && ! compgen -G '$ROOT/var/tmp/kiln-release-git.*'"
  APP2_TOTAL=$(( $(date +%s) - t_app2 ))

  # -------------------------------------------------------------- 8. a release artifact, deployed offline
  say "a release artifact (make release) of the reference app, changed, deployed offline: kiln deploy FILE"
  t0=$(date +%s)
  token=artifact-$COMMIT
  { rm -rf "$WORK/artsrc" && cp -a "$REPO/app" "$WORK/artsrc"; } || fatal "cannot copy the reference app"
  sed -i "s/return JsonResponse({\"ok\": True})\$/return JsonResponse({\"ok\": True, \"deploy_test\": \"$token\"})/" \
    "$WORK/artsrc/kiln/health.py"
  grep -q "$token" "$WORK/artsrc/kiln/health.py" || fatal "cannot change the copy's /healthz"
  art=$("$REPO/packer/scripts/make-release.sh" debian-13 "$WORK/artsrc" "$WORK/release" 2>"$WORK/make-release.log") \
    || { sed 's/^/  | /' "$WORK/make-release.log"; fatal "make-release.sh failed"; }
  ART_SECS=$(( $(date +%s) - t0 ))
  sed 's/^/  | /' "$WORK/make-release.log"
  art_name=$(basename "$art" .kiln.tar); art_name=${art_name#kiln-reference-app-}
  { cp "$art" "$ROOT/var/tmp/" && cp "$art" "$ROOT/var/tmp/damaged.kiln.tar"; } || fatal "cannot copy the artifact into the container"
  # One byte changed inside the biggest member (a wheel's or the bytecode's data, never a tar header).
  off=$(python3 -c 'import sys, tarfile; t = tarfile.open(sys.argv[1]); m = max(t.getmembers(), key=lambda m: m.size); print(m.offset_data + m.size // 2)' "$art")
  printf 'X' | dd of="$ROOT/var/tmp/damaged.kiln.tar" bs=1 seek="$off" conv=notrunc status=none
  # No release of the reference app's lock left to link a venv from (the image's went to the second app): the
  # artifact's wheels are what gets installed.
  cx kiln-release prune 1 >"$WORK/prune.log" 2>&1 || { sed 's/^/  | /' "$WORK/prune.log"; fatal "kiln-release prune 1 failed"; }
  check "prune 1 removed the reference app's release $VERSION (kept: current and previous)" bash -c \
    "[ ! -e '$ROOT/srv/kiln/releases/$VERSION' ] && [ -e '$ROOT/srv/kiln/releases/$VERSION-second' ] && [ \"\$(cx readlink /srv/kiln/current)\" = releases/v2-${v2:0:12} ]"
  # Offline: every HTTP(S) fetch (pip, apt, curl) goes to a dead proxy on port 9; only loopback names pass.
  offline=(env http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9
           HTTPS_PROXY=http://127.0.0.1:9 'no_proxy=localhost,127.0.0.1' 'NO_PROXY=localhost,127.0.0.1')
  rc=0; cx "${offline[@]}" kiln deploy /var/tmp/damaged.kiln.tar >"$WORK/deploy-damaged.log" 2>&1 || rc=$?
  check "artifact: a damaged copy is refused (exit $rc), the member named; nothing built, current unchanged, no scratch left" bash -c \
    "[ $rc = 1 ] && grep -q 'differs from its manifest' '$WORK/deploy-damaged.log' && [ \"\$(cx readlink /srv/kiln/current)\" = releases/v2-${v2:0:12} ] && ! compgen -G '$ROOT/srv/kiln/releases/$art_name' && ! compgen -G '$ROOT/var/tmp/kiln-release-artifact.*'"
  grep 'kiln_artifact' "$WORK/deploy-damaged.log" | sed 's/^/  | /'
  # Backups on for these deploys (kiln-backup's test hook KILN_BACKUP_ENV_FILE: the instance env plus a local
  # repository), first a repository made with another password: the pre-deploy backup fails and stops the deploy.
  bk=/root/kiln-backup-test.env repo=/var/backups/kiln-deploy-test
  cx bash -c "cp /etc/kiln/kiln.env $bk && chmod 0600 $bk && printf 'KILN_BACKUP_REPOSITORY=$repo\nKILN_BACKUP_PASSWORD=nspawn-deploy-test\n' >>$bk && rm -rf $repo $repo-2 && RESTIC_PASSWORD=another-password restic init --repo $repo >/dev/null" \
    || fatal "cannot set up the backup settings for the deploys"
  offline+=("KILN_BACKUP_ENV_FILE=$bk")
  rc=0; cx "${offline[@]}" kiln deploy "/var/tmp/$(basename "$art")" >"$WORK/deploy-artifact-nobackup.log" 2>&1 || rc=$?
  grep -e 'kiln-release: ' -e 'kiln-backup: ' "$WORK/deploy-artifact-nobackup.log" | sed 's/^/  | /'
  check "artifact: a failing pre-deploy backup stops the deploy (exit $rc) after the build, before the release commands; current unchanged" bash -c \
    "[ $rc = 1 ] && grep -q 'the pre-deploy backup failed' '$WORK/deploy-artifact-nobackup.log' && grep -q 'wrong password' '$WORK/deploy-artifact-nobackup.log' && ! grep -q 'release command with' '$WORK/deploy-artifact-nobackup.log' && [ \"\$(cx readlink /srv/kiln/current)\" = releases/v2-${v2:0:12} ]"
  check "artifact: its wheels installed offline from the artifact (pip --no-index), no venv linked" bash -c \
    "grep -q 'installing [0-9]* wheels offline from /var/tmp/kiln-release-artifact' '$WORK/deploy-artifact-nobackup.log' && ! grep -q 'linked, not installed again' '$WORK/deploy-artifact-nobackup.log'"
  cx sed -i "s|^KILN_BACKUP_REPOSITORY=.*|KILN_BACKUP_REPOSITORY=$repo-2|" "$bk"   # a new one: made by the backup
  t0=$(date +%s)
  cx "${offline[@]}" kiln deploy "/var/tmp/$(basename "$art")" >"$WORK/deploy-artifact.log" 2>&1 \
    || { sed 's/^/  | /' "$WORK/deploy-artifact.log"; fatal "kiln deploy of the artifact failed"; }
  ART_DEPLOY_SECS=$(( $(date +%s) - t0 ))
  grep -e 'kiln-release: ' -e 'kiln-backup: ' "$WORK/deploy-artifact.log" | sed 's/^/  | /'
  check "artifact: current -> releases/$art_name (the name make release gave it; built once, reused)" bash -c \
    "[ \"\$(cx readlink /srv/kiln/current)\" = releases/$art_name ] && grep -q 'release $art_name already built (same source)' '$WORK/deploy-artifact.log'"
  check "artifact: the pre-deploy backup ran before the release commands and left a snapshot in the repository" bash -c \
    "grep -n -e 'pre-deploy backup before' -e 'release command with' '$WORK/deploy-artifact.log' | head -1 | grep -q 'pre-deploy backup' && cx env KILN_BACKUP_ENV_FILE=$bk kiln-backup snapshots | grep -q kiln-backup"
  check "artifact: the release records its origin (ARTIFACT=$(basename "$art") sha256:$(sha256sum "$art" | cut -c1-12)...)" \
    cx grep -q "^ARTIFACT=$(basename "$art") sha256:$(sha256sum "$art" | cut -c1-64)" /srv/kiln/current/.kiln-release
  check "artifact: the changed app serves (/healthz says $token)" bash -c \
    "curl -s --max-time 5 http://127.0.0.1/healthz | grep -q '\"deploy_test\": *\"$token\"'"
  load_contract
  check "artifact: $KILN_APP_HEALTH 200 on the new release (database, both Redis, through nginx)" test "$(http_code "$(health_url)")" = 200
  check "artifact: the unpacked scratch is gone from /var/tmp" cx bash -c '! compgen -G "/var/tmp/kiln-release-artifact.*"'
fi

say "summary"
echo "  install.sh (first run, $MODE): ${INSTALL_SECS}s; second run: ${SECOND_SECS}s"
[ -z "${APP2_SECS:-}" ] || echo "  second app: install.sh ${APP2_SECS}s; its phase in all ${APP2_TOTAL}s"
[ -z "${ART_SECS:-}" ] || echo "  release artifact: make-release.sh ${ART_SECS}s, kiln deploy of it (offline) ${ART_DEPLOY_SECS}s"
echo "  boot -> first GET $REF_HEALTH 200: first boot ${FIRSTBOOT_SECS:-none}s (migrates)${REBOOT_SECS:+, reboot ${REBOOT_SECS}s}${FRESH_SECS:+, fresh instance after cleanup.sh ${FRESH_SECS}s (baked schema)}"
if [ "$FAILS" -gt 0 ]; then echo "  $FAILS check(s) FAILED"; exit 1; fi
echo "  all checks passed in $(( $(date +%s) - T_START ))s"
