"""tests/infra/rootshell.py, the infra suites' one root shell per target, on this machine: its "ssh" is `sh -c` here
(a testinfra SshBackend whose ssh command runs the remote command locally, without sudo), so what it returns, when
it gives a command back to testinfra's own path and how it fails can be checked in a second."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest
from testinfra.backend.ssh import SshBackend

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "infra"))
import rootshell


class LocalBackend(SshBackend):
    def __init__(self):
        super().__init__("local", sudo=True)

    def _build_ssh_command(self, command: str):
        return ["sh", "-c", "%s"], [command.replace("sudo -n ", "", 1)]


@pytest.fixture
def shell():
    sh = rootshell.RootShell(LocalBackend())
    yield sh
    sh._stop()


def test_a_command_gives_back_its_exit_status_and_both_outputs_byte_for_byte(shell):
    res = shell.run("printf 'a\\0b\\377'; echo err >&2; exit 3")
    assert (res.rc, res.stdout_bytes, res.stderr_bytes) == (3, b"a\x00b\xff", b"err\n")
    assert shell.run("true").rc == 0


def test_a_command_killed_by_a_signal_exits_128_plus_the_signal(shell):
    assert shell.run("kill -9 $$").rc == 137


def test_each_command_runs_in_a_session_of_its_own_with_stdin_empty(shell):
    res = shell.run("echo $(ps -o sid= -p $$) $$ $(readlink /proc/$$/fd/0)")
    sid, pid, stdin = res.stdout.split()
    assert (sid, stdin) == (pid, "/dev/null"), res.stdout


def test_a_shell_ended_mid_command_fails_that_command_as_ssh_would_and_the_next_starts_another(shell):
    assert shell.run("true").rc == 0
    first = shell.proc.pid
    with pytest.raises(RuntimeError) as err:
        shell.run("kill -9 $PPID; sleep 5")  # the shell's own process: a reboot, a power cycle
    assert err.value.args[0].rc == 255
    res = shell.run("echo again")
    assert res.stdout == "again\n" and shell.proc.pid != first


def test_a_command_sent_while_the_shell_is_busy_takes_testinfras_own_path(shell):
    assert shell.run("true").rc == 0
    busy = threading.Thread(target=shell.run, args=("sleep 1",))
    busy.start()
    time.sleep(0.3)
    assert shell.run("echo meanwhile") is None
    busy.join()
    assert shell.run("echo after").stdout == "after\n"


def test_a_shell_that_cannot_start_hands_commands_back_and_is_not_retried_at_once(monkeypatch):
    backend = LocalBackend()
    monkeypatch.setattr(rootshell, "START_TIMEOUT", 2.0)
    monkeypatch.setattr(backend, "_build_ssh_command", lambda command: (["sh", "-c", "%s"], ["exit 255"]))
    sh = rootshell.RootShell(backend)
    t0 = time.monotonic()
    assert sh.run("true") is None and sh.run("true") is None
    assert time.monotonic() - t0 < 2, "the second command waited for another start"
