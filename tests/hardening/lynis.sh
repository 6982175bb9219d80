#!/usr/bin/env bash
# Lynis audit of a Kiln target: hardening index >= threshold, every warning and every skipped test waived.
# Usage: tests/hardening/lynis.sh [-t THRESHOLD] [-w WAIVERS] [-o OUTDIR] TARGET
#   TARGET = ROOTFS_DIR        a root file system with lynis installed: booted with systemd-nspawn (--volatile=overlay,
#                              private network: the directory is not modified), audited inside (fast tier, ~1 min)
#          | ssh:DEST          a running VM: `ssh $LYNIS_SSH_OPTS DEST` (e.g. LYNIS_SSH_OPTS="-F .vagrant/kiln-ssh-config"
#                              DEST=default); runs with sudo (6-7 min under TCG beside the infra suites on the faster
#                              machine, 2.3x that on the slower). Lynis
#                              missing there: this host fetches the target's apt lists and lynis .deb natively, with the target's own apt
#                              sources (the candidate the target's apt would install), copies both in and dpkg -i's
#                              the .deb: no apt download/parse inside a TCG guest (LYNIS_INSTALL=guest: apt in the
#                              target, as before; also the fallback). Lynis refreshes the lists itself (PKGS-7392).
# Env: LYNIS_FASTLOG [1]: run Lynis with bash and lynis-fastlog.bash (LogText without a fork, and the date, expr,
#   tr, wc, grep, sed, cut, awk and /bin/echo forms Lynis uses most without a process, for the inputs where bash gives
#   the same bytes; same checks, tested by tests/tools/test_lynis_fastlog.py): the audit 512 -> 368-402 s in a TCG
#   guest beside the suites (DEB-0001 88 -> 30-32 s), with CRYP-7902's package-owned path below; 0: as installed,
#   under /bin/sh.
#   -t  minimum hardening index [KILN_LYNIS_THRESHOLD, else 85]       -w  waiver file [tests/hardening/lynis-waivers.txt]
#   -o  keep lynis-report.dat, lynis.log and lynis.out in OUTDIR
# Exit: 0 pass; 1 index below threshold or unwaived warnings/skips; 2 usage or the audit could not run.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
THRESHOLD=${KILN_LYNIS_THRESHOLD:-85}
WAIVERS=$HERE/lynis-waivers.txt
OUTDIR=""
while getopts 't:w:o:h' opt; do
  case $opt in
    t) THRESHOLD=$OPTARG ;; w) WAIVERS=$OPTARG ;; o) OUTDIR=$OPTARG ;;
    *) sed -n '2,12p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ $# -eq 1 ] || { sed -n '2,12p' "$0"; exit 2; }
TARGET=$1
[ -r "$WAIVERS" ] || { echo "lynis: waiver file $WAIVERS not readable" >&2; exit 2; }

WORK=$(mktemp -d /tmp/kiln-lynis.XXXXXX)
FASTLOG=/tmp/kiln-lynis-fastlog.bash # inside the target
case ${LYNIS_FASTLOG:-1} in
  1) LYNIS_CMD=(env "BASH_ENV=$FASTLOG" bash /usr/sbin/lynis) ;;
  0) LYNIS_CMD=(/usr/sbin/lynis); FASTLOG=/dev/null ;;
  *) echo "lynis: LYNIS_FASTLOG must be 0 or 1, not '$LYNIS_FASTLOG'" >&2; exit 2 ;;
esac
LYNIS_ARGS=(audit system --quick --no-colors --report-file /tmp/kiln-lynis-report.dat --logfile /tmp/kiln-lynis.log)
# CRYP-7902 (expired certificates) checks only files no package installed (default.prf: include-packages=no), but
# finds that out per file: ~14 process starts and a dpkg-query search each, 40-100 s under TCG for the ~150 CA files
# of /usr/share/ca-certificates. When every file there belongs to a package, Lynis would skip them all: ignoring the
# path (a profile given with --profile, after default.prf, whose own ignored paths it keeps) then changes no finding.
# Checked in the target before each audit (one dpkg-query); a file no package owns keeps the path in the audit.
PACKAGE_OWNED_CERT_PATH=/usr/share/ca-certificates
LYNIS_PROFILE=/tmp/kiln-lynis.prf # inside the target
# shellcheck disable=SC2016 # runs in the target (sh -s, as root); says "profile" when it wrote $LYNIS_PROFILE
PROFILE_SCRIPT='set -u
p='"$PACKAGE_OWNED_CERT_PATH"'
unowned=$(find "$p" -type f -print0 2>/dev/null | xargs -0 -r dpkg-query -S 2>&1 >/dev/null \
  | sed -n "s/^dpkg-query: no path found matching pattern //p" | head -3)
if [ -d "$p" ] && [ -z "$unowned" ]; then
  keep=$(sed -n "s/^ssl-certificate-paths-to-ignore=//p" /etc/lynis/default.prf 2>/dev/null | tail -1)
  case $keep in ""|*:) ;; *) keep=$keep: ;; esac
  printf "# lynis.sh: every file under %s belongs to a package\nssl-certificate-paths-to-ignore=%s%s:\n" "$p" "$keep" "$p" \
    >'"$LYNIS_PROFILE"' && echo profile
else
  echo "lynis: CRYP-7902 checks $p: not every file there belongs to a package (${unowned:-no such directory})" >&2
fi'
# shellcheck source=tests/hardening/nspawn-lib.sh
. "$HERE/nspawn-lib.sh"
cleanup() { nspawn_stop; if [ -n "$OUTDIR" ]; then mkdir -p "$OUTDIR"; cp -f "$WORK"/* "$OUTDIR"/ 2>/dev/null || true; fi; rm -rf "$WORK"; }
trap cleanup EXIT

# The target's apt sources, lists and lynis .deb, fetched with this host's apt (native speed), then copied in.
install_from_host() {
  local ctx=$WORK/apt arch
  mkdir -p "$ctx/etc/sources.list.d" "$ctx/etc/preferences.d" "$ctx/lists/partial" "$ctx/cache/archives/partial"
  command -v apt-get >/dev/null || { echo "lynis: no apt-get on this host" >&2; return 1; }
  arch=$(rsh 'dpkg --print-architecture') || return 1
  # shellcheck disable=SC2016 # expanded on the target
  rsh 'cd /etc/apt && tar -cf - $(ls -d sources.list sources.list.d 2>/dev/null)' | tar -xf - -C "$ctx/etc" || return 1
  [ -e "$ctx/etc/sources.list" ] || : >"$ctx/etc/sources.list"
  local apt=(-o "Dir::Etc::SourceList=$ctx/etc/sources.list" -o "Dir::Etc::SourceParts=$ctx/etc/sources.list.d"
    -o "Dir::Etc::Preferences=$ctx/etc/preferences" -o "Dir::Etc::PreferencesParts=$ctx/etc/preferences.d"
    -o "Dir::State::Lists=$ctx/lists" -o Dir::State::status=/dev/null -o "Dir::Cache=$ctx/cache"
    -o "APT::Architecture=$arch" -o "APT::Architectures::=$arch" -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
  if ! { apt-get "${apt[@]}" -q update >"$WORK/apt.log" 2>&1 &&
          (cd "$ctx" && apt-get "${apt[@]}" -q download lynis >>"$WORK/apt.log" 2>&1) &&
          compgen -G "$ctx/lynis_*.deb" >/dev/null; }; then
    echo "lynis: fetching the target's apt lists here failed, installing with apt on the target:" >&2
    tail -5 "$WORK/apt.log" >&2
    return 1
  fi
  tar -cf - -C "$ctx/lists" --exclude=partial --exclude=lock --exclude=auxfiles . \
    | rsh 'sudo tar -xf - -C /var/lib/apt/lists --no-same-owner --no-same-permissions' || return 1
  # shellcheck disable=SC2016 # expanded on the target
  rsh 'f=$(mktemp /var/tmp/kiln-lynis.XXXXXX.deb) && cat >"$f" && sudo DEBIAN_FRONTEND=noninteractive dpkg -i "$f" >/dev/null; rc=$?; rm -f "$f"; exit $rc' \
    <"$ctx"/lynis_*.deb || { echo "lynis: dpkg -i on the target failed" >&2; return 1; }
}

t0=$(date +%s)
case $TARGET in
  ssh:*)
    dest=${TARGET#ssh:}
    read -r -a sshopts <<<"${LYNIS_SSH_OPTS:-}"
    rsh() { ssh "${sshopts[@]}" -o BatchMode=yes "$dest" "$@"; }
    if ! env_desc=$(rsh 'uname -r; systemd-detect-virt || true' | paste -sd' ') || [ -z "$env_desc" ]; then
      echo "lynis: cannot reach $dest over ssh (LYNIS_SSH_OPTS: ${LYNIS_SSH_OPTS:-none})" >&2; exit 2
    fi
    env_desc="ssh $dest: $env_desc"; tier=vm
    if ! rsh 'test -x /usr/sbin/lynis'; then
      ti=$(date +%s)
      if [ "${LYNIS_INSTALL:-host}" = host ] && install_from_host; then
        echo "lynis: installed $(basename "$WORK/apt/"lynis_*.deb) with the target's apt lists, fetched on this host, in $(( $(date +%s) - ti ))s" >&2
      else
        # An image ships without apt lists (cleanup.sh): fetch them before installing.
        rsh 'sudo apt-get update -q >/dev/null && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q lynis >/dev/null' \
          || { echo "lynis: could not install lynis on $dest" >&2; exit 2; }
        echo "lynis: apt-installed lynis on the target in $(( $(date +%s) - ti ))s" >&2
      fi
    fi
    echo "lynis: auditing $dest (under TCG this takes ~30 minutes)" >&2
    rsh "cat >$FASTLOG" <"$HERE/lynis-fastlog.bash"
    [ "$(rsh 'sudo sh -s' <<<"$PROFILE_SCRIPT")" = profile ] && LYNIS_ARGS+=(--profile "$LYNIS_PROFILE")
    rsh "sudo ${LYNIS_CMD[*]} ${LYNIS_ARGS[*]}" >"$WORK/lynis.out" 2>&1 || true
    rsh 'sudo cat /tmp/kiln-lynis-report.dat' >"$WORK/lynis-report.dat"
    rsh 'sudo cat /tmp/kiln-lynis.log' >"$WORK/lynis.log"
    ;;
  *)
    [ -d "$TARGET" ] || { echo "lynis: $TARGET is neither ssh:DEST nor a directory" >&2; exit 2; }
    [ -x "$TARGET/usr/sbin/lynis" ] || { echo "lynis: $TARGET has no /usr/sbin/lynis (install lynis into the rootfs)" >&2; exit 2; }
    [ "$(id -u)" -eq 0 ] || { echo "lynis: booting a rootfs needs root" >&2; exit 2; }
    nspawn_boot "$TARGET" "kiln-lynis-$$"
    env_desc="systemd-nspawn container (host kernel $(uname -r)) of $TARGET"; tier=container
    nspawn_exec sh -c "cat >$FASTLOG" <"$HERE/lynis-fastlog.bash"
    [ "$(nspawn_exec sh -s <<<"$PROFILE_SCRIPT")" = profile ] && LYNIS_ARGS+=(--profile "$LYNIS_PROFILE")
    nspawn_exec "${LYNIS_CMD[@]}" "${LYNIS_ARGS[@]}" >"$WORK/lynis.out" 2>&1 || true
    nspawn_exec cat /tmp/kiln-lynis-report.dat >"$WORK/lynis-report.dat"
    nspawn_exec cat /tmp/kiln-lynis.log >"$WORK/lynis.log"
    nspawn_stop
    ;;
esac
[ -s "$WORK/lynis-report.dat" ] || { echo "lynis: no report produced" >&2; tail -20 "$WORK/lynis.out" >&2; exit 2; }
echo "lynis: audit took $(( $(date +%s) - t0 ))s in: $env_desc"

python3 - "$WORK/lynis-report.dat" "$WORK/lynis.log" "$WAIVERS" "$THRESHOLD" "$tier" <<'PY'
import re, sys
report, log, waivers_path, threshold, tier = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
rep = {}
lists = {"warning[]": [], "suggestion[]": []}
for line in open(report, errors="replace"):
    line = line.rstrip("\n")
    if "=" not in line or line.startswith("#"):
        continue
    k, v = line.split("=", 1)
    if k in lists:
        lists[k].append(v)
    else:
        rep[k] = v
# skip reasons from the log: "Skipped test ID (desc)" followed by "Reason to skip: ..."
skips, last = {}, None
for line in open(log, errors="replace"):
    m = re.search(r"Skipped test (\S+) \((.*)\)$", line.rstrip())
    if m:
        last = m.group(1); skips[last] = [m.group(2), ""]; continue
    m = re.search(r"Reason to skip: (.*)$", line.rstrip())
    if m and last:
        skips[last][1] = m.group(1); last = None
for t in filter(None, rep.get("tests_skipped", "").split("|")):
    skips.setdefault(t, ["?", "?"])
# waivers: "TIER KIND:ID reason" or "TIER ID reason" (= skip); "@os" waives skips whose reason is another OS. Only
# the waivers of this audit's tier (vm: a booted VM over ssh; container: the nspawn tier) and of "all" apply.
TIERS = ("all", "vm", "container")
waived = {}
for n, line in enumerate(open(waivers_path), 1):
    line = line.strip()
    if not line or line.startswith("#"):
        continue
    tag, _, rest = line.partition(" ")
    if tag not in TIERS:
        sys.exit(f"lynis: {waivers_path}:{n}: a waiver starts with its tier ({', '.join(TIERS)}), not '{tag}'")
    key, _, reason = rest.strip().partition(" ")
    if not reason.strip():
        sys.exit(f"lynis: {waivers_path}:{n}: waiver '{key}' has no reason")
    if ":" not in key:
        key = "skip:" + key
    if tag in ("all", tier):
        waived[key] = reason.strip()
used = set()

idx = int(rep.get("hardening_index", "0"))
fails = 0
print(f"\nHardening index: {idx} (threshold {threshold}); tests done: {rep.get('lynis_tests_done','?')}; "
      f"lynis {rep.get('lynis_version','?')} on {rep.get('os_fullname', rep.get('os_name','?'))}")
print(f"\nWarnings ({len(lists['warning[]'])}):")
for w in lists["warning[]"]:
    tid, text = (w.split("|") + [""])[:2]
    r = waived.get("warning:" + tid)
    used.add("warning:" + tid)
    print(f"  {'waived ' if r else 'OPEN   '} {tid}: {text}" + (f"  -- {r}" if r else ""))
    fails += 0 if r else 1
print(f"\nSuggestions ({len(lists['suggestion[]'])}; informational, accepted ones carry a reason):")
for s in lists["suggestion[]"]:
    parts = (s.split("|") + ["", ""])
    tid, text, detail = parts[0], parts[1], parts[2]
    r = waived.get("suggestion:" + tid)
    extra = f" [{detail}]" if detail not in ("", "-") else ""
    print(f"  {'accepted' if r else 'open    '} {tid}: {text}{extra}" + (f"  -- {r}" if r else ""))
unwaived = []
os_skips = 0
for t, (desc, why) in sorted(skips.items()):
    if ("skip:" + t) in waived:
        used.add("skip:" + t)
        continue
    if "skip:@os" in waived and (why.startswith("Incorrect guest OS") or why.startswith("Test only applies to")):
        os_skips += 1; continue
    unwaived.append((t, desc, why))
print(f"\nSkipped tests: {len(skips)} ({os_skips} for other operating systems, waived by @os; "
      f"{len(skips) - os_skips - len(unwaived)} waived by ID; {len(unwaived)} not waived)")
for t, desc, why in unwaived:
    print(f"  NOT WAIVED {t} ({desc}): {why}")
fails += len(unwaived)
# Waivers of this tier that waived nothing in this audit: kept honest by a look (informational; audits vary).
idle = sorted(k for k in waived if k.split(":")[0] in ("skip", "warning") and k not in used and k != "skip:@os")
if idle:
    print(f"\nWaivers for the {tier} tier that waived nothing this time ({len(idle)}): {' '.join(idle)}")
if idx < threshold:
    print(f"\nFAIL: hardening index {idx} < {threshold}"); fails += 1
print(f"\nlynis: {'PASS' if fails == 0 else 'FAIL'}: index {idx}, {fails} finding(s) "
      f"(unwaived warnings/skips, index below threshold)")
sys.exit(1 if fails else 0)
PY
