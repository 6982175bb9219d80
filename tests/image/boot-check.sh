#!/usr/bin/env bash
# Boot check of the built VPS image with plain QEMU, the way two clouds would start it: a copy-on-write overlay (the
# image is never modified), user networking with random free host ports forwarded to 22/80/443. One VM at a time;
# every VM is killed on exit.
#   1. instance A is a Hetzner Cloud server: no seed disk, Hetzner's SMBIOS and its metadata API over HTTP serving the
#      SSH key, hostname, network and user-data (tests/image/hetzner.sh, which lists what it checks); boot -> first
#      GET /readyz 200 through nginx on :80 (timed), admin login page over HTTPS (:443, self-signed), read its
#      identity over SSH (as debian, the key the metadata served)
#   2. instance B from the same image with a NoCloud seed ISO (Proxmox's way, and most clouds' fallback) carrying a
#      fresh SSH key for a user of its own: the same, and it must differ from A in SECRET_KEY, database password, SSH
#      host keys (fingerprints) and /etc/machine-id
#   3. instance B is a 1 GB VPS (B_MEM), the most common size: kiln-firstboot sized it from its memory (web workers,
#      InnoDB buffer pool, a swap file), and a bounded load loop over HTTPS (pages from the database, the cache, static
#      files, the login form) gets no error and makes no OOM kill, every program RUNNING. A deploy's memory peak on
#      this size is proven by the infra suites, which make test runs on a VM of the same memory (SMALL_VPS_MB).
# The serial console is watched: a kernel panic is reported as such and that boot is retried once; a boot whose
# console stops growing before systemd runs (e.g. stuck at "Loading Linux ...") fails after KERNEL_STALL seconds
# ("no kernel progress after N s: stuck at <last line>") instead of waiting until BOOT_TIMEOUT. The boot and that
# watch are tests/image/vm-boot.sh.
# Each instance prints what lies on the path to its first /readyz 200: `systemd-analyze critical-chain` of the
# units on it, `systemd-analyze` (total) and the top of `blame`, and how kiln-firstboot handled the migrations (the
# image's baked schema must make it skip them).
# A passed check writes its figures beside the image (NAME.boot.json: each instance's boot -> first /readyz 200 and
# systemd-analyze's total), which make bench's table shows with the image's build stages (its manifest).
# The two instances boot one after the other: on 2 host cores, two TCG guests of 2 vCPUs each only share the same
# cores (TCG is CPU-bound), and each boot's time would then measure the other guest too.
# Usage: tests/image/boot-check.sh [IMAGE.qcow2]
# Env: DISTRO [debian-13]; IMAGE [newest build/<distro>/kiln-<distro>-*.qcow2]; ACCEL kvm|tcg [probe];
#      BOOT_TIMEOUT [900] seconds per boot until /readyz 200; KERNEL_STALL [60] seconds without new console output
#      before systemd runs; SMP [2]; MEM [2048] (instance a); B_MEM [1024] (instance b); LOAD_REQUESTS [400] of the
#      load loop on b; KEEP_LOGS=1 keeps the work dir;
#      KILN_LYNIS_BG=DIR (make test): once the check passed, instance b stays up and is audited by
#      tests/hardening/lynis-bg.sh in DIR, beside the infra suites, which hold b (DIR/vm-ctl) while a suite that times
#      things runs, and whose Lynis test collects the audit; the audit's end stops the VM (DIR/on-done).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
# vm_image, vm_ssh_key, make_seed, boot_vm, boot_retry, stop_vm, free_port
# shellcheck source=tests/image/vm-boot.sh
. "$repo/tests/image/vm-boot.sh"
# hetzner_setup, boot_hetzner, hetzner_check, hetzner_diagnose (instance a)
# shellcheck source=tests/image/hetzner.sh
. "$repo/tests/image/hetzner.sh"
vm_image boot-check "$@"
"$repo/tools/apt-ensure.sh" qemu-system-x86 qemu-utils genisoimage openssh-client curl python3
ACCEL=$("$repo/packer/scripts/kvm-probe.sh")

work=$(mktemp -d "${TMPDIR:-/tmp}/kiln-boot-check.XXXXXX")
handed_off=""
cleanup() {
  local rc=$?
  [ -n "$handed_off" ] || stop_vm
  if [ -n "$handed_off" ]; then
    rm -f "$work/a.qcow2" # instance b's files stay until its audit ends (DIR/on-done)
  else
    vm_work_done boot-check $rc
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '[boot-check %s] %s\n' "$(date -u +%T)" "$*"; }
CURRENT=""   # the instance being checked
fail() {
  printf '[boot-check] FAIL: %s\n' "$*" >&2
  if [ -n "$CURRENT" ] && [ "$CURRENT" = "$HETZNER_NAME" ]; then hetzner_diagnose; fi
  exit 1
}

vm_ssh_key kiln-boot-check

boot() { # boot NAME: a VM with a NoCloud seed of its own, until /readyz 200 (vm-boot.sh)
  make_seed "$1" kilncheck
  boot_vm "$1" "" "" -drive "file=$work/$1-seed.iso,media=cdrom,if=ide,readonly=on"
}

LOGIN=""   # the instance's login user: debian (a, cloud-init's default user), kilncheck (b, its seed's user)
vssh() { ssh "${SSH_OPTS[@]}" -p "$P22" "$LOGIN@127.0.0.1" "$@"; }
# section FILE NAME: the "== NAME" part of FILE (inspect's one SSH read, split)
section() { awk -v s="== $2" '$0 == s {on=1; next} /^== / {on=0} on' "$1"; }

inspect() { # inspect NAME: HTTPS admin login page, identity over SSH -> $work/NAME.id
  local n=$1 code
  code=$(curl -sk -o "$work/$n-admin.html" -w '%{http_code}' -m 20 "https://127.0.0.1:$P443/admin/login/" || true)
  [ "$code" = 200 ] || fail "$n: GET https /admin/login/ -> $code"
  grep -qi 'csrfmiddlewaretoken' "$work/$n-admin.html" || fail "$n: /admin/login/ is not Django's login form"
  say "$n: HTTPS /admin/login/ -> 200 (login form, self-signed certificate)"
  for _ in $(seq 1 30); do vssh true 2>/dev/null && break; sleep 2; done
  vssh true || fail "$n: SSH login with the seed key failed"
  # One SSH session for everything read from the instance (each costs ~4 s of emulated CPU under TCG), split into
  # sections here. Host keys are read over the logged-in session: ssh-keyscan's unauthenticated connections count as
  # failures for fail2ban's sshd jail (aggressive mode), which then bans the QEMU gateway all our sessions come from.
  # Secrets are compared by hash; their values never leave the VM. Hygiene seen from inside: no build or Vagrant
  # leftovers, no build CA, no failed unit.
  # shellcheck disable=SC2016  # expanded in the guest
  vssh 'sudo sh -c '\''
    echo "== hostkeys"; for k in /etc/ssh/ssh_host_*_key.pub; do ssh-keygen -lf "$k"; done
    echo "== id"; . /etc/kiln/secrets.env
    echo "machine-id $(cat /etc/machine-id)"
    echo "secret-key-sha256 $(printf %s "$SECRET_KEY" | sha256sum | cut -c1-16)"
    echo "db-password-sha256 $(printf %s "$DB_PASSWORD" | sha256sum | cut -c1-16)"
    echo "env-secret-key-sha256 $(sed -n "s/^SECRET_KEY=//p" /etc/kiln/kiln.env | tr -d "\n" | sha256sum | cut -c1-16)"
    echo "== hygiene"
    for u in vagrant kilnbuild; do getent passwd $u >/dev/null && echo "user $u exists"; done
    # cloud-init (disable_root) gives root the keys behind a command= that only says "log in as <the user>".
    [ -e /root/.ssh/authorized_keys ] && grep -v "^no-port-forwarding.*command=" /root/.ssh/authorized_keys | grep -q . \
      && echo "/root/.ssh/authorized_keys holds a usable key"
    ls /usr/local/share/ca-certificates | grep -q . && echo "build CA certificates left: $(ls /usr/local/share/ca-certificates)"
    systemctl list-units --state=failed --no-legend --plain | grep . | sed "s/^/failed unit: /"
    # the readiness check of the baked app (kiln-ready): database, both Redis, its health path through nginx
    /usr/local/bin/kiln-ready --quiet >/dev/null 2>&1 || /usr/local/bin/kiln-ready --quiet 2>&1 | sed "s/^/not ready: /"
    echo "== rootfs"; df -h / | sed -n "2p" | tr -s " " | cut -d" " -f2
  '\''' >"$work/$n.inspect" || fail "$n: reading the instance over SSH failed"
  section "$work/$n.inspect" hostkeys | awk '{print $2, $NF}' | sort >"$work/$n.hostkeys"
  section "$work/$n.inspect" id >"$work/$n.id"
  section "$work/$n.inspect" hygiene >"$work/$n.hygiene"
  [ -s "$work/$n.hostkeys" ] || fail "$n: no SSH host keys in /etc/ssh"
  grep -q '^machine-id [0-9a-f]\{32\}$' "$work/$n.id" || fail "$n: no machine-id"
  if [ -s "$work/$n.hygiene" ]; then sed 's/^/    /' "$work/$n.hygiene"; fail "$n: image hygiene"; fi
  say "$n: identity: $(grep machine-id "$work/$n.id"), host keys: $(wc -l <"$work/$n.hostkeys"), root fs $(section "$work/$n.inspect" rootfs)"
  profile "$n"
}

profile() { # profile NAME: what lay on the path to the first /readyz 200, and how first boot treated the migrations
  local n=$1
  # systemd-analyze's total needs the boot to be finished (cloud-final, late units): bounded wait.
  vssh 'sudo timeout 180 systemctl is-system-running --wait >/dev/null 2>&1; true'
  # shellcheck disable=SC2016  # expanded in the guest
  vssh 'sudo sh -c '\''
    echo "== systemd-analyze"; systemd-analyze 2>&1 | head -3
    echo "== systemd-analyze critical-chain supervisor.service nginx.service"
    systemd-analyze critical-chain --no-pager supervisor.service nginx.service 2>&1 | grep -v "^The time"
    echo "== systemd-analyze blame (top 15)"; systemd-analyze blame --no-pager 2>&1 | head -15
    echo "== kiln-firstboot"; journalctl -b -u kiln-firstboot-secrets -u kiln-firstboot -u kiln-firstboot-db -u kiln-firstboot-late --no-pager -o cat | grep "kiln-firstboot:"
    echo "== rq workers"; grep -h "^kiln-rqworker" /var/log/kiln/worker-*.log
    echo "== the path to the first answer (seconds of kernel time, the journal)"
    journalctl -b -o short-monotonic --no-pager SYSLOG_IDENTIFIER=systemd + SYSLOG_IDENTIFIER=supervisord + SYSLOG_IDENTIFIER=kiln-web-ready | grep -E "Reached target network.target|Finished kiln-firstboot(-db)?[.]service|Started (mariadb|nginx|supervisor)[.]service|spawned: .kiln-web. |kiln-web-ready: the app answers" | sed -E "s/^[[] *([0-9]+[.][0-9])[0-9]*[]] [^ ]+ /\1 /" | cut -c1-150
  '\''' >"$work/$n.profile" 2>&1 || true
  sed 's/^/    /' "$work/$n.profile"
  grep -q 'kiln-firstboot: migrations: skipped' "$work/$n.profile" \
    || fail "$n: first boot did not skip the migrations (the image's baked schema should match its release): $(grep -E 'running migrations|migrations:' "$work/$n.profile" | head -2)"
  say "$n: first boot skipped the migrations (baked schema of the image's release)"
}


load_loop() { # load_loop COUNT: COUNT HTTPS requests, 8 at a time, over the pages a visitor reaches without an account;
  # prints "COUNT CODE" pairs on one line (curl: one -o per URL argument, its glob's transfers included)
  local urls=() path
  for path in /records/ /api/records/ /accounts/login/ /static/admin/css/base.css; do
    urls+=(-o /dev/null "https://127.0.0.1:$P443$path?n=[1-$(( $1 / 4 ))]")
  done
  curl -sk -Z --parallel-max 8 -m 60 -w '%{http_code}\n' "${urls[@]}" 2>/dev/null | sort | uniq -c | xargs
}
not_2xx_3xx() { awk '{for (i = 2; i <= NF; i += 2) if ($i !~ /^[23]/) print $(i-1) " x " $i}' <<<"$1"; }

small_vps() { # small_vps NAME: sized from its memory; a load loop: no OOM kill, no 5xx
  local n=$1 sizing codes bad t0
  sizing=$(grep -o 'kiln-firstboot: sizing: .*' "$work/$n.profile" || true)
  [ -n "$sizing" ] || fail "$n: kiln-firstboot logged no sizing"
  # The rule (kiln-firstboot) for a 1 GB VPS with 2 vCPUs: 4 web workers (one per 256 MB), a 128 MB buffer pool, 1 GB
  # of swap.
  case $sizing in
    *": 1024 MB, 2 CPU(s): 4 web workers, InnoDB buffer pool 128 MB, swap 1024 MB") ;;
    *) fail "$n: sized as \"$sizing\", expected 4 web workers, a 128 MB buffer pool and 1024 MB of swap for 1 GB" ;;
  esac
  # A bounded load loop over HTTPS on it. The deploy's memory peak on this size (a second gunicorn beside the first,
  # under load) is the infra suites' to prove: make test runs them on a VM of this memory (SMALL_VPS_MB;
  # tests/infra/test_release.py, test_memory.py).
  t0=$(date +%s)
  codes=$(load_loop "${LOAD_REQUESTS:-400}")
  say "$n: load loop of ${LOAD_REQUESTS:-400} requests in $(( $(date +%s) - t0 ))s: $codes (count code)"
  bad=$(not_2xx_3xx "$codes")
  [ -z "$bad" ] || fail "$n: the load loop got answers other than 2xx/3xx: $bad"

  # shellcheck disable=SC2016  # expanded in the guest
  vssh 'sudo sh -c '\''
    echo "== oom"; journalctl -k -b --no-pager -o cat | grep -iE "out of memory|oom-kill|invoked oom-killer" || true
    echo "== memory"; free -m | sed -n "2,3p"; sed -n "2,\$p" /proc/swaps
    echo "== supervisor"; supervisorctl status || true
  '\''' >"$work/$n.load" || fail "$n: reading memory and programs over SSH failed"
  sed 's/^/    /' "$work/$n.load"
  [ -z "$(section "$work/$n.load" oom)" ] || fail "$n: the kernel killed a process for memory (above)"
  # supervisorctl status exits 3 when a program is not running: the lines are judged here. kiln-web-next is a
  # deploy's program: at rest (STOPPED) between deploys.
  if section "$work/$n.load" supervisor | grep -v RUNNING | grep -v '^kiln-web-next .*STOPPED' | grep -q .; then
    fail "$n: a program is not RUNNING after the load loop"
  fi
  say "$n: a 1 GB VPS: ${sizing#kiln-firstboot: sizing: }; under load no OOM kill, every answer 2xx/3xx"
}

say "image $IMAGE ($(du -h "$IMAGE" | cut -f1)), accelerator $ACCEL"
start=$(date +%s)
hetzner_setup a
CURRENT=a LOGIN=debian
boot_retry a boot_hetzner; A_SECS=$BOOT_SECS; hetzner_check a; inspect a
stop_vm # a throw-away overlay: no need to wait for a clean poweroff
CURRENT=b LOGIN=kilncheck
MEM=${B_MEM:-1024} boot_retry b boot; B_SECS=$BOOT_SECS; inspect b; small_vps b

same=()
for k in machine-id secret-key-sha256 db-password-sha256 env-secret-key-sha256; do
  a=$(awk -v k="$k" '$1==k{print $2}' "$work/a.id"); b=$(awk -v k="$k" '$1==k{print $2}' "$work/b.id")
  [ -n "$a" ] && [ "$a" != "$b" ] || same+=("$k")
done
if [ -n "$(comm -12 "$work/a.hostkeys" "$work/b.hostkeys")" ]; then same+=("ssh-host-keys"); fi
[ ${#same[@]} -eq 0 ] || fail "instances a and b share: ${same[*]}"
say "instances a and b differ in machine-id, SECRET_KEY, database password and SSH host keys"
say "PASS: boot -> first $HEALTH 200: a ${A_SECS}s (Hetzner), b ${B_SECS}s (NoCloud, ${B_MEM:-1024} MB) (accel $ACCEL); total $(( $(date +%s) - start ))s"
# Beside the image, for make bench's table (its build stages come from the manifest): these boots' figures.
python3 - "${IMAGE%.qcow2}.boot.json" "$ACCEL" "$A_SECS" "$B_SECS" "${MEM:-2048}" "${B_MEM:-1024}" \
  "$work/a.profile" "$work/b.profile" <<'PY'
import json, re, sys, time
out, accel, a, b, a_mem, b_mem, *profiles = sys.argv[1:]
def startup(path):  # systemd-analyze's "Startup finished in ..." line, as the instance printed it
    m = re.search(r"Startup finished in (.*)", open(path, errors="replace").read())
    return m.group(1).strip() if m else None
json.dump({"accel": accel, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "ready_s": {f"a (Hetzner, {a_mem} MB)": float(a), f"b (NoCloud, {b_mem} MB)": float(b)},
           "systemd_analyze": {"a": startup(profiles[0]), "b": startup(profiles[1])}},
          open(out, "w"), indent=1)
PY

# Hand instance b to a background Lynis audit: the production image itself, audited while the infra suites run on
# the Vagrant VM (the audit is one emulated core of fork/exec work for 20-30 min). On 2 host cores b and the Vagrant
# VM share the CPU; the suites that time things (restarts, reboots, jobs) hold b meanwhile (DIR/vm-ctl stop|cont:
# its vCPUs halt, its clock with them) rather than run beside it: at nice 19 instead, b starved until its sshd timed
# out the audit's login (CI, 11a60b4); at an equal share, the restart suite's gunicorn timings failed (0ff30e8).
# on-done stops b and deletes its files however the audit ends.
if [ -n "${KILN_LYNIS_BG:-}" ]; then
  mkdir -p "$KILN_LYNIS_BG"
  lynis_dir=$(cd "$KILN_LYNIS_BG" && pwd)
  cat >"$lynis_dir/on-done" <<EOF
#!/bin/sh
# Written by tests/image/boot-check.sh: the audit of instance b (QEMU pid $vmpid) has ended; stop b, delete its files.
kill $vmpid 2>/dev/null
for i in \$(seq 1 20); do kill -0 $vmpid 2>/dev/null || break; sleep 0.5; done
kill -9 $vmpid 2>/dev/null
rm -rf '$work' '$lynis_dir/vm-ctl'
echo "boot-check: instance b (QEMU pid $vmpid) stopped after its Lynis audit"
rm -f "\$0" # the pid is stale from now on
EOF
  cat >"$lynis_dir/vm-ctl" <<EOF
#!/bin/sh
# Written by tests/image/boot-check.sh: vm-ctl stop|cont halts or continues instance b (QEMU pid $vmpid).
exec '$repo/tests/image/qmp.py' '$work/b-qmp.sock' "\$1"
EOF
  chmod +x "$lynis_dir/on-done" "$lynis_dir/vm-ctl"
  # While held, b answers no ssh keepalive: the audit's session waits up to an hour for it (lynis-bg.sh bounds the
  # audit itself, held time not counted).
  LYNIS_SSH_OPTS="-i $work/key -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
-o LogLevel=ERROR -o BatchMode=yes -o ConnectTimeout=60 -o ServerAliveInterval=15 -o ServerAliveCountMax=240 -p $P22" \
    "$repo/tests/hardening/lynis-bg.sh" start "$lynis_dir" ssh:kilncheck@127.0.0.1
  handed_off=1
  say "b: left running for its Lynis audit (collected by the infra suites' Lynis test, output $lynis_dir/lynis-run.log)"
fi
