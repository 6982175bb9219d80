"""One root shell per target for the suites' commands.

testinfra runs every command as its own `ssh HOST 'sudo /bin/sh -c CMD'`. Under TCG that costs ~350 ms before the
command itself starts, ~250 ms of it sudo (its PAM stack and plugins, loaded and relocated anew each time), and the
suites send thousands of commands. Here one `sudo python3` per target (started on first use over the suites' own ssh
config) reads the commands as JSON lines and runs each as `sudo` would have: `/bin/sh -c CMD` as root, in a session
of its own (as sshd gives each command), stdin empty, stdout and stderr captured, the exit status returned (128+N
for a signal, as a shell reports it). Its environment is the one sudo made for it, as each sudo made one before.

Only the commands testinfra would have run as root go this way; any other (another user, a backend without sudo) and
any command sent while the shell is busy (a thread's, during another's long command) take testinfra's own path, so
nothing waits on anything it did not wait on before. When the shell cannot start, the command takes that path too,
and the shell is tried again 20 s later. When the shell ends during a command (a reboot, a power cycle), the command
fails as testinfra's ssh would fail then (RuntimeError of exit status 255), and the next one starts a new shell.
KILN_ROOTSHELL=0 turns it off (every command through ssh + sudo again).
"""

from __future__ import annotations

import base64
import json
import os
import select
import subprocess
import threading
import time

ENABLED = os.environ.get("KILN_ROOTSHELL", "1") != "0"
START_TIMEOUT = 30.0
RETRY_AFTER = 20.0
USED = [0]  # commands run through a root shell, all targets

RUNNER = r"""
import base64, json, subprocess, sys
out = sys.stdout.buffer
out.write(b"kiln-rootshell ready\n")
out.flush()
for line in sys.stdin.buffer:
    cmd = json.loads(line)
    try:
        p = subprocess.run(["/bin/sh", "-c", cmd], stdin=subprocess.DEVNULL, capture_output=True,
                           start_new_session=True)
        rc, so, se = (p.returncode if p.returncode >= 0 else 128 - p.returncode), p.stdout, p.stderr
    except OSError as exc:
        rc, so, se = 127, b"", str(exc).encode()
    out.write(json.dumps({"rc": rc, "out": base64.b64encode(so).decode(),
                          "err": base64.b64encode(se).decode()}).encode() + b"\n")
    out.flush()
"""


class RootShell:
    def __init__(self, backend) -> None:
        self.backend = backend
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()
        self.retry_at = 0.0

    def _start(self) -> bool:
        code = base64.b64encode(RUNNER.encode()).decode()
        remote = f"sudo -n /usr/bin/python3 -u -c 'import base64; exec(base64.b64decode(\"{code}\"))'"
        # A guest gone without closing the connection ends the shell by the ssh config's ServerAlive* (the Vagrant
        # VM's: conftest.py's write_ssh_config) instead of hanging it.
        cmd, args = self.backend._build_ssh_command(remote)
        self.proc = subprocess.Popen(
            self.backend.quote(" ".join(cmd), *args),
            shell=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT)
        if ready and self.proc.stdout.readline() == b"kiln-rootshell ready\n":
            return True
        self._stop()
        return False

    def _stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def run(self, command: str):
        """The CommandResult of `command` run as root, or None when it must take testinfra's own path."""
        if not self.lock.acquire(blocking=False):
            return None
        try:
            if self.proc is not None and self.proc.poll() is not None:
                self._stop()
            if self.proc is None and time.monotonic() < self.retry_at:
                return None
            if self.proc is None and not self._start():
                self.retry_at = time.monotonic() + RETRY_AFTER
                return None
            try:
                self.proc.stdin.write(json.dumps(command).encode() + b"\n")
                self.proc.stdin.flush()
                line = self.proc.stdout.readline()
            except OSError:
                line = b""
            if not line:
                self._stop()
                said = b"kiln-rootshell: the target's shell ended during the command"
                raise RuntimeError(self.backend.result(255, self.backend.encode(command), b"", said))
            reply = json.loads(line)
            USED[0] += 1
            return self.backend.result(
                reply["rc"],
                self.backend.encode(command),
                base64.b64decode(reply["out"]),
                base64.b64decode(reply["err"]),
            )
        finally:
            self.lock.release()


def install() -> None:
    """Route testinfra's root commands over ssh through a RootShell per backend (once per process)."""
    from testinfra.backend.ssh import SshBackend

    if not ENABLED or getattr(SshBackend.run, "kiln_rootshell", False):
        return
    real = SshBackend.run

    def run(self, command: str, *args: str, **kwargs):
        if self.sudo and self.sudo_user is None:
            shell = self.__dict__.get("_kiln_rootshell")
            if shell is None:
                shell = self.__dict__["_kiln_rootshell"] = RootShell(self)
            res = shell.run(self.quote(command, *args))
            if res is not None:
                return res
        return real(self, command, *args, **kwargs)

    run.kiln_rootshell = True
    SshBackend.run = run
