"""provision/lib/common.sh's file helpers on a file system that refuses the write (read-only) or has no room (full).

The steps call the helpers from `if` and `||` (their status says "changed"), where bash ignores `set -e`: a helper
that does not check its own commands reports a failed write as a change and goes on. Each case here runs a helper
the way the steps do, inside `if`, on a real tmpfs in a mount namespace of its own (`unshare`), and then shows what
is left: the helper must stop with an error that names the file, log no change, and leave the previous file whole.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMON = ROOT / "provision" / "lib" / "common.sh"

pytestmark = pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")

# $1 = mount point (a fresh tmpfs), $2 = the change log. SETUP prepares it, CALL is the helper call.
SCRIPT = r"""
set -euo pipefail
mnt=$1
export KILN_CHANGES=$2 KILN_PENDING=/dev/null
. "{common}"
printf 'old config\n' >"$mnt/app.conf"
mkdir "$mnt/dir" && ln -s old-target "$mnt/link"
{setup}
rc=0
( if {call}; then echo "helper: changed"; else echo "helper: unchanged"; fi ) || rc=$?
echo "exit: $rc"
echo "app.conf: $(cat "$mnt/app.conf")"
echo "leftovers: $(cd "$mnt" && ls -A | grep -v -x -e app.conf -e dir -e link -e fill | tr '\n' ' ')"
"""

FULL = 'dd if=/dev/zero of="$mnt/fill" bs=4k 2>/dev/null || true'
READ_ONLY = 'mount -o remount,ro "$mnt"'
BIG = "head -c 200000 /dev/urandom | base64"


def run_helper(tmp_path: Path, setup: str, call: str) -> tuple[dict[str, str], str, str]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    changes = tmp_path / "changes"
    changes.write_text("")
    script = SCRIPT.format(common=COMMON, setup=setup, call=call)
    # -r: a user namespace where this user is root, so the test needs no root; -m: mounts vanish with it
    inner = f'mount -t tmpfs -o size=64k kiln-test "$1" && exec bash -c {shlex.quote(script)} _ "$1" "$2"'
    res = subprocess.run(
        ["unshare", "-rm", "bash", "-c", inner, "_", str(mnt), str(changes)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, f"test harness failed: {res.returncode}\n{res.stdout}\n{res.stderr}"
    seen = dict(line.split(": ", 1) for line in res.stdout.splitlines() if ": " in line)
    return seen, res.stderr, changes.read_text()


CASES = {
    "write_file_on_full_fs": (FULL, f'write_file "$mnt/app.conf" 0644 root:root < <({BIG})', "cannot write"),
    "write_file_on_read_only_fs": (
        READ_ONLY,
        'write_file "$mnt/app.conf" 0644 root:root <<< "new config"',
        "cannot write",
    ),
    "install_file_on_read_only_fs": (
        READ_ONLY,
        'install_file /etc/hostname "$mnt/app.conf" 0644 root:root',
        "cannot write",
    ),
    "ensure_dir_on_read_only_fs": (READ_ONLY, 'ensure_dir "$mnt/new-dir" 0750 root:root', "cannot create directory"),
    "ensure_dir_mode_on_read_only_fs": (READ_ONLY, 'ensure_dir "$mnt/dir" 0700 root:root', "cannot set mode"),
    "ensure_symlink_on_read_only_fs": (READ_ONLY, 'ensure_symlink new-target "$mnt/link"', "cannot link"),
    "remove_path_on_read_only_fs": (READ_ONLY, 'remove_path "$mnt/dir"', "cannot remove"),
}


@pytest.mark.parametrize("case", CASES)
def test_helper_stops_on_a_failed_write_and_keeps_the_old_file(tmp_path: Path, case: str):
    setup, call, message = CASES[case]
    seen, stderr, changes = run_helper(tmp_path, setup, call)
    evidence = f"saw {seen}\nstderr: {stderr}\nchange log: {changes!r}"
    assert seen.get("exit") == "1", evidence
    assert "helper" not in seen, evidence  # neither "changed" nor "unchanged": the step stops
    assert message in stderr and str(tmp_path / "mnt") in stderr, evidence
    assert "changed" not in changes, evidence
    assert seen.get("app.conf") == "old config", evidence
    assert seen.get("leftovers", "").strip() == "", evidence  # no half-written .kiln-new


def test_helper_reports_a_change_then_none_on_a_writable_fs(tmp_path: Path):
    write = 'write_file "$mnt/app.conf" 0644 root:root <<< "new config"'
    call = f"{write} && {write}"
    seen, stderr, changes = run_helper(tmp_path, "", call)
    evidence = f"saw {seen}\nstderr: {stderr}\nchange log: {changes!r}"
    # the first write changes the file (0), the identical second one does not (1): `if` sees 1
    assert seen.get("exit") == "0" and seen.get("helper") == "unchanged", evidence
    assert seen.get("app.conf") == "new config", evidence
    assert changes.count("changed ") == 1, evidence
