"""tests/image/vm-boot.sh's vm_image, as boot-check.sh and `make bench-vm` call it (under `set -euo pipefail`): the
image named on the command line is used from a checkout that has built nothing (no build/ directory), and no image
at all is said, naming the check. Before the fix a checkout without build/ ended the check silently: find's failure
on the missing directory ended the caller through pipefail, before any message."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VM_BOOT = ROOT / "tests" / "image" / "vm-boot.sh"


def vm_image(repo: Path, *args: str) -> subprocess.CompletedProcess:
    script = f'set -euo pipefail; repo={repo}; . {VM_BOOT}; vm_image demo-check "$@"; '
    script += 'echo "IMAGE=$IMAGE HEALTH=$HEALTH"'
    return subprocess.run(["bash", "-c", script, "_", *args], capture_output=True, text=True, timeout=30)


def test_an_image_named_on_the_command_line_is_used_where_nothing_was_built(tmp_path):
    image = tmp_path / "elsewhere" / "kiln-debian-13-demo.qcow2"
    image.parent.mkdir()
    image.write_bytes(b"not really an image")
    res = vm_image(tmp_path / "checkout", str(image))
    assert res.returncode == 0, f"rc {res.returncode}\nstdout: {res.stdout}\nstderr: {res.stderr}"
    assert f"IMAGE={image} HEALTH=/readyz" in res.stdout, res.stdout


def test_no_image_at_all_is_said_naming_the_check(tmp_path):
    res = vm_image(tmp_path / "checkout")
    assert res.returncode == 1, f"rc {res.returncode}\nstdout: {res.stdout}\nstderr: {res.stderr}"
    assert "demo-check: no image" in res.stderr, res.stderr
