"""tests/hardening/lynis-bg.sh and tests/image/qmp.py without a guest: the hold, the bound and the stop of a
background audit, and QMP against a real QEMU.

The audit here never gets to run Lynis: its ssh goes through a ProxyCommand that only sleeps, so lynis.sh waits on
its first login for as long as lynis-bg.sh lets it. That is exactly the shape of a hung audit, and it makes the
bound observable in seconds. vm-ctl is a script that logs the calls lynis-bg.sh makes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LYNIS_BG = ROOT / "tests" / "hardening" / "lynis-bg.sh"
QMP = ROOT / "tests" / "image" / "qmp.py"


@pytest.fixture
def audit_dir(tmp_path: Path):
    hang = tmp_path / "hang.sh"
    hang.write_text("#!/bin/sh\nexec sleep 600\n")
    hang.chmod(0o755)
    d = tmp_path / "audit"
    d.mkdir()
    calls = tmp_path / "vm-ctl.calls"
    (d / "vm-ctl").write_text(f'#!/bin/sh\necho "$1" >>{calls}\necho "vm $1"\n')
    (d / "on-done").write_text(f'#!/bin/sh\necho on-done >>{calls}\nrm -f "$0"\n')
    for f in ("vm-ctl", "on-done"):
        (d / f).chmod(0o755)
    env = {**os.environ, "LYNIS_SSH_OPTS": f"-oProxyCommand={hang} -oBatchMode=yes", "LYNIS_TIMEOUT": "4"}
    yield d, calls, env
    subprocess.run([LYNIS_BG, "stop", d], env=env, check=False, capture_output=True)


def bg(cmd: str, d: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LYNIS_BG, cmd, d, *args], env=env, capture_output=True, text=True, timeout=120)


def no_sleeper_left(d: Path) -> bool:
    """True once nothing of the audit's process group is left (its members' zombies are reaped within a moment)."""
    pid = (d / "audit.pid").read_text().strip()
    for _ in range(50):
        if subprocess.run(["pgrep", "-g", pid], capture_output=True).returncode != 0:
            return True
        time.sleep(0.2)
    return False


def test_held_time_does_not_count_against_the_audit_bound(audit_dir):
    d, calls, env = audit_dir
    t0 = time.monotonic()
    assert bg("start", d, env, "ssh:kilncheck@192.0.2.1").returncode == 0
    assert bg("pause", d, env).returncode == 0
    assert (d / "paused").exists()
    time.sleep(7)  # longer than the 4 s bound: only unheld time counts
    assert not (d / "rc").exists(), f"the bound ended a held audit: {(d / 'lynis-run.log').read_text()}"
    assert bg("resume", d, env).returncode == 0
    res = bg("wait", d, env)
    took = time.monotonic() - t0
    assert res.returncode == 124, res.stdout + res.stderr
    assert "did not end within 4s" in res.stdout
    assert took >= 11, f"ended after {took:.1f}s: held time was counted"
    assert calls.read_text().split() == ["stop", "cont", "on-done"]
    assert no_sleeper_left(d)


def test_an_audit_ending_while_held_continues_the_vm_before_on_done(audit_dir):
    d, calls, env = audit_dir
    assert bg("start", d, env, "ssh:kilncheck@192.0.2.1").returncode == 0
    assert bg("pause", d, env).returncode == 0
    res = bg("stop", d, env)
    assert res.returncode == 0 and "stopped" in res.stdout, res.stdout + res.stderr
    waited = bg("wait", d, env)
    assert waited.returncode == 143, waited.stdout + waited.stderr
    assert calls.read_text().split() == ["stop", "cont", "on-done"], waited.stdout
    assert not (d / "paused").exists()
    assert no_sleeper_left(d)


def test_a_hold_asked_for_while_the_audit_ends_is_not_taken(audit_dir):
    """A hold that slipped in once the runner had continued the VM would leave it halted for good."""
    d, calls, env = audit_dir
    (d / "on-done").write_text(f"#!/bin/sh\necho on-done >>{calls}\nsleep 4\n")  # a slow on-done: the window
    assert bg("start", d, env, "ssh:kilncheck@192.0.2.1").returncode == 0
    stopper = subprocess.Popen([LYNIS_BG, "stop", d], env=env, stdout=subprocess.PIPE, text=True)
    for _ in range(100):
        if calls.exists() and "on-done" in calls.read_text():
            break
        time.sleep(0.1)
    assert not (d / "rc").exists(), "on-done ended before the hold could be asked for: no window tested"
    assert bg("pause", d, env).returncode == 0
    assert "stopped" in stopper.communicate(timeout=60)[0]
    assert calls.read_text().split() == ["on-done"], f"vm-ctl calls: {calls.read_text().split()}"
    assert not (d / "paused").exists()


def test_pause_is_a_no_op_without_vm_ctl(audit_dir):
    d, _, env = audit_dir
    (d / "vm-ctl").unlink()
    assert bg("start", d, env, "ssh:kilncheck@192.0.2.1").returncode == 0
    assert bg("pause", d, env).returncode == 0
    assert not (d / "paused").exists()


@pytest.fixture
def qemu():
    qemu_bin = shutil.which("qemu-system-x86_64")
    if not qemu_bin:
        pytest.skip("no qemu-system-x86_64 on this machine")
    sock_dir = tempfile.mkdtemp(prefix="kiln-qmp-")  # short: a unix socket path has ~108 bytes
    sock = os.path.join(sock_dir, "q.sock")
    p = subprocess.Popen(
        [qemu_bin, "-accel", "tcg", "-m", "64", "-display", "none", "-nodefaults", "-qmp",
         f"unix:{sock},server=on,wait=off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(100):
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(sock)
            break
        except OSError:
            time.sleep(0.1)
    yield sock
    p.kill()
    p.wait()
    shutil.rmtree(sock_dir, ignore_errors=True)


def qmp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([QMP, *args], capture_output=True, text=True, timeout=60)


def test_qmp_stop_halts_and_cont_continues_a_real_qemu(qemu):
    assert qmp(qemu, "query-status").stdout.strip() == "qmp: query-status: VM running"
    assert qmp(qemu, "stop").stdout.strip() == "qmp: stop: VM paused"
    assert qmp(qemu, "query-status").stdout.strip() == "qmp: query-status: VM paused"
    assert qmp(qemu, "cont").stdout.strip() == "qmp: cont: VM running"


def test_qmp_names_a_dead_socket_and_refuses_other_commands(qemu, tmp_path):
    res = qmp(str(tmp_path / "nothing.sock"), "stop")
    assert res.returncode == 1 and "nothing.sock" in res.stderr
    assert qmp(qemu, "quit").returncode == 2
