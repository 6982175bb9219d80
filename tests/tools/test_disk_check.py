"""provision/lib/common.sh's disk_check on a real file system filled to a known level (a tmpfs in a mount namespace
of its own, `unshare`): a warning with the figure at or above the threshold, a plain line below it, never a failure.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMON = ROOT / "provision" / "lib" / "common.sh"
SIZE_KIB = 1024

pytestmark = pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")


def threshold() -> int:
    res = subprocess.run(["bash", "-c", f'. {COMMON} && echo "$KILN_DISK_WARN_PCT"'], capture_output=True, text=True)
    return int(res.stdout.strip())


def disk_check_at(tmp_path: Path, percent: int) -> tuple[int, str, str]:
    """disk_check of a tmpfs of SIZE_KIB filled to about `percent`: (exit status, stdout, stderr)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fill_kib = SIZE_KIB * percent // 100 // 4 * 4  # whole 4 KiB pages
    script = (
        f'mount -t tmpfs -o size={SIZE_KIB}k kiln-disk "$1" && '
        f'head -c {fill_kib * 1024} /dev/zero >"$1/fill" && . {shlex.quote(str(COMMON))} && disk_check "$1"'
    )
    res = subprocess.run(
        ["unshare", "-rm", "bash", "-c", script, "_", str(mnt)], capture_output=True, text=True, timeout=60
    )
    return res.returncode, res.stdout, res.stderr


def used_percent(text: str, mnt: Path) -> int:
    m = re.search(rf"disk {re.escape(str(mnt))} \(kiln-disk\): (\d+)% used, \S+ free of \S+", text)
    assert m, f"no disk line for {mnt} in: {text!r}"
    return int(m.group(1))


def test_disk_check_warns_at_the_threshold_with_the_figure(tmp_path: Path):
    limit = threshold()
    rc, out, err = disk_check_at(tmp_path, min(99, limit + 5))
    assert rc == 0, f"disk_check failed (it must only warn): rc={rc}\n{out}\n{err}"
    assert "WARNING" in err and used_percent(err, tmp_path / "mnt") >= limit, f"stdout: {out!r}\nstderr: {err!r}"


def test_disk_check_below_the_threshold_only_reports(tmp_path: Path):
    limit = threshold()
    rc, out, err = disk_check_at(tmp_path, max(0, limit - 30))
    assert rc == 0, f"rc={rc}\n{out}\n{err}"
    assert "WARNING" not in err and used_percent(out, tmp_path / "mnt") < limit, f"stdout: {out!r}\nstderr: {err!r}"


def test_disk_check_reports_each_file_system_once():
    # Default paths / and /srv: on most machines one file system, which must appear once.
    res = subprocess.run(["bash", "-c", f". {COMMON} && disk_check"], capture_output=True, text=True)
    targets = re.findall(r"disk (\S+) \(", res.stdout + res.stderr)
    assert res.returncode == 0 and "/" in targets and len(targets) == len(set(targets)), res
