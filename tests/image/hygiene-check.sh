#!/usr/bin/env bash
# Hygiene of the built artifacts before any boot, with tests/hardening/img-check.sh (DigitalOcean's image rules,
# stricter, failing on any finding):
#   1. the VPS qcow2 passes every check (including "no pending security updates" against the distro archive);
#   2. the Vagrant box fails, and only because of what makes it a Vagrant box (the vagrant user, its insecure key,
#      its sudoers entry): the box is not for upload, and this proves the check sees a baked-in user and key.
# Usage: tests/image/hygiene-check.sh [IMAGE.qcow2 [BOX]]     (default: the newest ones in build/$DISTRO/)
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
DISTRO=${DISTRO:-debian-13}
say() { printf '[hygiene-check %s] %s\n' "$(date -u +%T)" "$*"; }
fail() { printf '[hygiene-check] FAIL: %s\n' "$*" >&2; exit 1; }
newest() { find "$repo/build/$DISTRO" -maxdepth 1 -name "$1" -printf '%T@ %p\n' 2>/dev/null | sort -n | tail -1 | cut -d' ' -f2-; }
qcow=${1:-$(newest "kiln-$DISTRO-*.qcow2")}
box=${2:-$(newest "kiln-$DISTRO-*.box")}
{ [ -n "$qcow" ] && [ -r "$qcow" ]; } || fail "no VPS image in build/$DISTRO (make image)"
{ [ -n "$box" ] && [ -r "$box" ]; } || fail "no Vagrant box in build/$DISTRO (make image)"

say "VPS image $qcow: every check must pass"
"$repo/tests/hardening/img-check.sh" "$qcow" || fail "the VPS image is not clean (findings above)"

work=$(mktemp -d /var/tmp/kiln-hygiene.XXXXXX)
trap 'rm -rf "$work"' EXIT
say "Vagrant box $box: must fail on the vagrant user and nothing else"
tar -xf "$box" -C "$work" box.img
rc=0
"$repo/tests/hardening/img-check.sh" --no-updates "$work/box.img" >"$work/out" || rc=$?
cat "$work/out"
[ "$rc" -eq 1 ] || fail "img-check on the Vagrant box exited $rc (expected 1: the vagrant user must be reported)"
# A FAIL line is followed by its findings (indented 10 spaces); every finding must be about vagrant.
python3 - "$work/out" <<'PY' || fail "the Vagrant box has findings beyond the vagrant user (above)"
import sys
fails, cur = {}, None
for line in open(sys.argv[1]):
    if line.startswith("  FAIL  "):
        cur = line[8:].strip(); fails[cur] = []
    elif line.startswith("          ") and cur:
        fails[cur].append(line.strip())
    else:
        cur = None
other = [f"{k}: {v}" for k, vs in fails.items() for v in (vs or ["(no detail)"]) if "vagrant" not in v]
vagrant = [v for vs in fails.values() for v in vs if "vagrant" in v]
print(f"box findings about vagrant: {len(vagrant)}; other findings: {len(other)}")
for o in other:
    print("  OTHER", o)
sys.exit(1 if other or not vagrant else 0)
PY
say "PASS: VPS image clean; the Vagrant box is reported for its vagrant user only"
