"""pytest-testinfra suites for a Kiln server.

Targets:
  * default: the Vagrant VM of the repo's Vagrantfile. A session fixture brings it up when it is not running
    (python-vagrant), writes its ssh-config to .vagrant/kiln-ssh-config and runs every command with sudo.
    KILN_DESTROY=1 destroys the VM at the end. The VM's serial console (.vagrant/kiln-serial-*.log) is watched
    during boots: a kernel panic is reported as such and the boot retried once (seen under TCG); so is a boot that
    shows no kernel progress (no new serial output for KILN_KERNEL_STALL s after GRUB's "Loading Linux" and before
    systemd: a KVM that runs boot sectors but hangs in Linux's decompressor), except under KVM, where it fails at
    once with a hint to KILN_LIBVIRT_DRIVER=qemu.
  * any host: pytest tests/infra --hosts=ssh://admin@203.0.113.7 [--ssh-config=FILE] --sudo
    (tests that need Vagrant itself - `vagrant provision` in test_idempotence - are skipped then).

Order: state, http, security basics, hardening, jobs, idempotence, bad input, then the Lynis test (it collects the audit
started in the background when the target came up, so it overlaps every suite that leaves services running; a provision
that changes nothing restarts nothing), backup (a restore stops the app), metrics (the backups' among them), restart,
reboot (disruptive last: a reboot would end the audit, a kill could show it a service down), then logs (every log file
the suites before made is rotated by something); test_memory after every suite (it reads the kernel's log for OOM
kills). With KILN_LYNIS_BG=DIR the audit is not of this target: the boot check started it on its instance b of
the production image (tests/image/boot-check.sh), beside the suites here except those that time things (b is held
while they run: HOLD_LYNIS_VM_FOR), and the Lynis test collects it last.
Environment: KILN_DESTROY=1, KILN_RESTART_TIMEOUT (seconds for a killed service to serve again) [10; 20 under TCG],
KILN_BOOT_TIMEOUT (seconds for a reboot) [300], KILN_KERNEL_STALL (seconds without serial output in the kernel phase
of a boot before it counts as hung) [90], KILN_LYNIS_EARLY (1: when the Lynis test is selected, start the audit in the
background as soon as the target is up, while the suites before its test run; 0: run it in test_hardening) [1],
KILN_LYNIS_BG (a directory of tests/hardening/lynis-bg.sh where another process started the audit: collect that one).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import rootshell

ROOT = Path(__file__).resolve().parents[2]
SSH_CONFIG = ROOT / ".vagrant" / "kiln-ssh-config"
VAGRANT_LOG = ROOT / ".vagrant" / "kiln-vagrant.log"
KERNEL_STALL = float(os.environ.get("KILN_KERNEL_STALL", "90"))
# Where a boot's kernel phase starts (GRUB's line; the kernel's banner when GRUB is silent) and where it ends.
KERNEL_START = re.compile(r"Loading Linux |Linux version \d")
USERSPACE = re.compile(r"Welcome to |systemd\[1\]|Run /init as init process| login: ")
ORDER = [
    "test_state",
    "test_http",
    "test_security_basics",
    "test_hardening",
    "test_jobs",
    "test_idempotence",
    # requests only, every service left up: more of the background audit overlaps suites instead of being waited for
    "test_bad_input",
    "test_hardening::test_lynis_hardening_index_meets_target",
    # after the audit: a restore stops the app's programs for a while
    "test_backup",
    # after the backups: their metrics are there to be scraped; it stops the workers for a moment
    "test_metrics",
    "test_restart",
    "test_reboot",
    # last: by then every suite has made the logs it makes, and the reboot has left a second boot's journal
    "test_logs",
]
LYNIS_TEST = "test_lynis_hardening_index_meets_target"
LYNIS_BG_DIR = os.environ.get("KILN_LYNIS_BG", "")
# Suites that time the target (a killed service back within restart_timeout, a reboot within KILN_BOOT_TIMEOUT, jobs
# within their deadlines): the audited VM of KILN_LYNIS_BG is held while they run, so they measure the target alone.
HOLD_LYNIS_VM_FOR = {"test_jobs", "test_restart", "test_reboot"}


def pytest_configure(config):
    rootshell.install()
    _count_commands()
    config.addinivalue_line("markers", "vagrant: needs the Vagrant VM (vagrant provision/reload)")
    config.kiln_vagrant = config.option.hosts is None
    if config.kiln_vagrant:
        SSH_CONFIG.parent.mkdir(parents=True, exist_ok=True)
        if not SSH_CONFIG.exists():
            SSH_CONFIG.write_text("# written by tests/infra/conftest.py once the VM is up\n")
        config.option.hosts = "ssh://default"
        config.option.ssh_config = str(SSH_CONFIG)
        config.option.sudo = True


# Where the session's time goes (issue 9): every command sent to the target is counted and timed per test module
# (fixtures included); the summary prints them, and how many went through the root shell (rootshell.py).
COMMANDS: dict[str, list[float]] = {}
SLOWEST: list[tuple[float, str, str]] = []  # (seconds, module, command): the commands the suites' time goes to
SLOWEST_SHOWN = 15
# What a printed command must not show: the passwords and tokens the suites pass in variables, headers and URLs. A
# command is cut at the first of them (its value may be quoted in any of the shell's ways), a URL's password masked.
_SECRET_START = re.compile(r"\b[A-Z_]*(?:AUTH|PASSWORD|SECRET|TOKEN|KEY)[A-Z_]*=|Authorization:", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]+@")


def shown_command(command: str) -> str:
    text = _URL_PASSWORD.sub(r"\1***@", " ".join(str(command).split()))
    cut = _SECRET_START.search(text)
    return text if cut is None else text[: cut.end()] + "*** (the rest not shown)"


_CURRENT = ["session"]


def _count_commands() -> None:
    from testinfra.backend.ssh import SshBackend

    real = SshBackend.run
    if getattr(real, "kiln_counted", False):
        return

    def timed(self, command, *args, **kwargs):
        t0 = time.monotonic()
        try:
            return real(self, command, *args, **kwargs)
        finally:
            took = time.monotonic() - t0
            tally = COMMANDS.setdefault(_CURRENT[0], [0, 0.0])
            tally[0] += 1
            tally[1] += took
            SLOWEST.append((took, _CURRENT[0], shown_command(command)[:160]))
            SLOWEST.sort(reverse=True)
            del SLOWEST[SLOWEST_SHOWN:]

    timed.kiln_counted = True
    SshBackend.run = timed


def pytest_runtest_logstart(nodeid, location):
    _CURRENT[0] = nodeid.split("::")[0].rsplit("/", 1)[-1].removesuffix(".py")


def pytest_terminal_summary(terminalreporter):
    import kilnlib  # (beside this file; imported here, after the suites put it on the path)

    for text in kilnlib.FIGURES:
        terminalreporter.write_line(f"kiln figure: {text}")
    if not COMMANDS:
        return
    n = sum(int(c) for c, _ in COMMANDS.values())
    secs = sum(t for _, t in COMMANDS.values())
    terminalreporter.write_line(
        f"kiln: {n} commands on the target in {secs:.0f} s ({1000 * secs / max(n, 1):.0f} ms each), "
        f"{rootshell.USED[0]} of them through the root shell; by module: "
        + ", ".join(f"{m} {int(c)}/{t:.0f}s" for m, (c, t) in sorted(COMMANDS.items(), key=lambda kv: -kv[1][1]))
    )
    for took, module, command in SLOWEST:
        terminalreporter.write_line(f"kiln: slowest: {took:6.1f} s  {module}: {command}")


def pytest_collection_modifyitems(config, items):
    def key(item):
        if LYNIS_BG_DIR and item.originalname == LYNIS_TEST:
            return len(ORDER) + 1  # another VM's audit: it can wait until every suite here is done
        mod = item.module.__name__.rsplit(".", 1)[-1]
        if mod == "test_memory":
            return len(ORDER) + 2  # it reads what every other suite did to memory
        for name in (f"{mod}::{item.originalname}", mod):
            if name in ORDER:
                return ORDER.index(name)
        return len(ORDER)

    items.sort(key=key)  # stable: keeps the order inside a module
    if not config.kiln_vagrant:
        skip = pytest.mark.skip(reason="needs the Vagrant VM (run without --hosts)")
        for item in items:
            if "vagrant" in item.keywords:
                item.add_marker(skip)


def pytest_runtest_setup(item):
    """Hold or continue the KILN_LYNIS_BG audit's VM when the session enters a module (HOLD_LYNIS_VM_FOR)."""
    run = getattr(item.config, "kiln_lynis", None)
    if not (LYNIS_BG_DIR and run):
        return
    held = item.module.__name__.rsplit(".", 1)[-1] in HOLD_LYNIS_VM_FOR
    if getattr(item.config, "kiln_lynis_held", False) != held:
        said = run.hold(held)
        item.config.kiln_lynis_held = held
        sys.stderr.write(f"\nkiln: {'held' if held else 'continued'} the Lynis audit's VM: {said}\n")


# --- the Vagrant VM -------------------------------------------------------------------------------------------------


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    return lines[-1][-200:] if lines else "(none)"


class SerialWatch:
    """Watches the serial logs for trouble in a boot: ("panic", context) or ("stall", message), else None.

    A stall is a boot in its kernel phase (after the last "Loading Linux", before any userspace line) whose serial
    logs have not grown for `stall_after` seconds. Before the domain prints anything (box import, define) nothing
    counts: the phase starts with GRUB's line.
    """

    def __init__(self, vm: KilnVM, stall_after: float = KERNEL_STALL):
        self.vm = vm
        self.stall_after = stall_after
        self.sizes = vm.serial_size()
        self.sig = dict(self.sizes)
        self.changed = time.monotonic()

    def check(self) -> tuple[str, str] | None:
        text = self.vm.serial_since(self.sizes)
        now = time.monotonic()
        sig = self.vm.serial_size()
        if sig != self.sig:
            self.sig, self.changed = sig, now
        i = text.find("Kernel panic")
        if i >= 0:
            return "panic", text[max(0, i - 1500) : i + 300]
        starts = list(KERNEL_START.finditer(text))
        if starts and not USERSPACE.search(text, starts[-1].start()) and now - self.changed >= self.stall_after:
            return "stall", f"no kernel progress after {now - self.changed:.0f} s: last serial line: {last_line(text)}"
        return None


def _stamp_lines(stream, log) -> None:
    """Copy a child's output to `log`, each line prefixed with the time (progress bars: their last state only)."""
    for line in stream:
        log.write(f"{time.strftime('%T')} {line.rstrip().rsplit(chr(13), 1)[-1]}\n")
        log.flush()


class KilnVM:
    """The repo's Vagrant machine: boot with panic detection, ssh-config, provision."""

    def __init__(self, serial_dir: Path = ROOT / ".vagrant", log: Path = VAGRANT_LOG):
        import vagrant  # python-vagrant

        self.serial_dir = serial_dir
        self.log = log
        self.v = vagrant.Vagrant(
            str(ROOT),
            quiet_stdout=False,
            quiet_stderr=False,
            out_cm=vagrant.make_file_cm(str(log)),
            err_cm=vagrant.make_file_cm(str(log)),
        )

    def state(self) -> str:
        return self.v.status()[0].state

    def serial_logs(self) -> list[Path]:
        return sorted(self.serial_dir.glob("kiln-serial-*.log"))

    def serial_size(self) -> dict[Path, int]:
        return {p: p.stat().st_size for p in self.serial_logs()}

    def serial_since(self, sizes: dict[Path, int]) -> str:
        text = ""
        for p in self.serial_logs():
            with p.open("rb") as f:
                f.seek(sizes.get(p, 0) if p.stat().st_size >= sizes.get(p, 0) else 0)
                text += f.read().decode("utf-8", "replace")
        return text

    def domain_id(self) -> str | None:
        f = ROOT / ".vagrant" / "machines" / "default" / "libvirt" / "id"
        return f.read_text().strip() if f.exists() else None

    def virsh(self, *args: str) -> subprocess.CompletedProcess:
        uri = os.environ.get("KILN_LIBVIRT_URI", "qemu:///system")
        return subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True)

    def force_off(self):
        dom = self.domain_id()
        if dom:
            self.virsh("destroy", dom)

    def fresh_serial_logs(self):
        """Before a boot of a stopped domain: keep the old serial output as *.log.prev and start the logs empty.

        QEMU may truncate the file at start or append to it; a stalled retry even writes the same bytes again, which
        an offset alone cannot tell from old output. A running domain holds the file open: it is left alone.
        """
        dom = self.domain_id()
        if dom and self.virsh("domstate", dom).stdout.strip() in ("running", "paused", "in shutdown"):
            return
        for p in self.serial_logs():
            if p.stat().st_size:
                p.with_name(p.name + ".prev").write_bytes(p.read_bytes())
                with p.open("r+b") as f:
                    f.truncate(0)

    def domain_type(self) -> str:
        """libvirt's domain type of the VM: "kvm" or "qemu" (TCG); "" when there is none."""
        dom = self.domain_id()
        m = re.search(r"<domain type='(\w+)'", self.virsh("dumpxml", dom).stdout) if dom else None
        return m.group(1) if m else ""

    def vagrant(self, *args: str, timeout: int = 1800) -> subprocess.Popen:
        """Run a vagrant command, watching the serial console: a kernel panic, or no kernel progress for
        KERNEL_STALL s, powers the VM off and retries once (a stall under KVM fails at once: the probe was wrong)."""
        cmd = f"vagrant {' '.join(args)}"
        for attempt in (1, 2):
            if args[0] in ("up", "reload", "resume"):
                self.fresh_serial_logs()
            watch = SerialWatch(self)
            started_at = self.log.stat().st_size if self.log.exists() else 0
            with self.log.open("a") as log:
                log.write(f"\n=== {cmd} (attempt {attempt}) {time.strftime('%T')}\n")
                log.flush()
                proc = subprocess.Popen(
                    ["vagrant", *args],
                    cwd=ROOT,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    errors="replace",
                )
                # every line timestamped: where a `vagrant up` spends its minutes (box upload, boot, key, rsync)
                stamper = threading.Thread(target=_stamp_lines, args=(proc.stdout, log), daemon=True)
                stamper.start()
                deadline = time.monotonic() + timeout
                trouble = None
                while proc.poll() is None and time.monotonic() < deadline:
                    trouble = watch.check()
                    if trouble:
                        break
                    time.sleep(2)
                if trouble:
                    domtype = self.domain_type()
                    self.force_off()
                    # vagrant would otherwise wait for the dead guest's address until its boot_timeout
                    proc.send_signal(signal.SIGINT)
                    try:
                        proc.wait(60)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                stamper.join(10)
            if trouble:
                kind, what = trouble
                if kind == "panic":
                    sys.stderr.write(f"\nkiln: KERNEL PANIC during `{cmd}`:\n{what}\n")
                    report = f"kernel panic during `{cmd}`:\n{what}"
                else:
                    sys.stderr.write(f"\nkiln: `{cmd}`: {what}\n")
                    report = f"`{cmd}`: {what}"
                    if domtype == "kvm":
                        raise RuntimeError(
                            f"{report}\nThe domain runs under KVM: this host's KVM does not run the kernel although "
                            "packer/scripts/kvm-probe.sh answered kvm (or KILN_LIBVIRT_DRIVER=kvm was given); "
                            "KILN_LIBVIRT_DRIVER=qemu uses TCG."
                        )
                if attempt == 1:
                    sys.stderr.write("kiln: powered the VM off, retrying once\n")
                    continue
                raise RuntimeError(f"{report}\n(after one retry)")
            if proc.returncode != 0 and attempt == 1 and args[0] in ("up", "reload", "resume"):
                with self.log.open() as f:
                    f.seek(started_at)
                    said = f.read()
                # Seen once (CI of 9ddc429): `vagrant up` booted the VM, then its after-up trigger failed with
                # "Vagrant can't use the requested machine because it is locked!", no other vagrant command running.
                # The machine is up; a second `up` only runs the triggers again.
                if "because it is locked" in said:
                    sys.stderr.write(f"\nkiln: `{cmd}` failed on Vagrant's machine lock; once more in 10 s\n")
                    time.sleep(10)
                    continue
            if proc.returncode != 0:
                raise RuntimeError(
                    f"`{cmd}` failed (rc={proc.returncode}); tail of {self.log}:\n{self.log.read_text()[-3000:]}"
                )
            return proc
        raise RuntimeError("unreachable")

    def up(self):
        if self.state() != "running":
            self.vagrant("up")
        self.write_ssh_config()

    def write_ssh_config(self):
        cfg = self.v.ssh_config()
        # Survive reboots: fail fast on a dead connection instead of hanging on a stale control master.
        extra = (
            "  ServerAliveInterval 5\n  ServerAliveCountMax 3\n  ConnectTimeout 10\n"
            "  ControlMaster auto\n  ControlPersist 60s\n  ControlPath /tmp/kiln-ssh-%C\n"
        )
        SSH_CONFIG.write_text(cfg.rstrip("\n") + "\n" + extra)

    def provision(self) -> str:
        start = self.log.stat().st_size if self.log.exists() else 0
        self.vagrant("provision")
        with self.log.open() as f:
            f.seek(start)
            return f.read()

    def watch(self, stall_after: float = KERNEL_STALL) -> SerialWatch:
        """A SerialWatch from now on (e.g. across a reboot from inside the guest)."""
        return SerialWatch(self, stall_after)


@pytest.fixture(scope="session")
def kiln_vm(request):
    if not request.config.kiln_vagrant:
        yield None
        return
    vm = KilnVM()
    t0 = time.monotonic()
    vm.up()
    sys.stderr.write(f"\nkiln: VM ready in {time.monotonic() - t0:.0f}s (ssh-config {SSH_CONFIG})\n")
    yield vm
    if os.environ.get("KILN_DESTROY") == "1":
        vm.vagrant("destroy", "-f")


@pytest.fixture(scope="session", autouse=True)
def _kiln_target(kiln_vm):
    """Bring the VM up before the first test touches the host."""
    yield kiln_vm


@pytest.fixture(scope="session", autouse=True)
def _kiln_lynis_early(request, _kiln_target):
    """Start the Lynis audit in the background once the target is up, when the Lynis test is selected.

    The audit only reads the system: it may overlap the suites before its test (state, http, security basics,
    hardening, jobs, idempotence: http stops kiln-web for a moment, jobs kills rq workers and restarts the queue Redis,
    idempotence provisions again, which on a provisioned server changes, restarts and installs nothing, or fails;
    nginx, MariaDB and the cache Redis, whose presence Lynis checks, stay up), never the ones after it (restart kills
    every service, reboot would end the audit): test_lynis_hardening_index_meets_target waits for the audit before they
    start.
    """
    from kilnlib import LynisRun

    config = request.config
    config.kiln_lynis = None
    selected = any(i.originalname == LYNIS_TEST for i in request.session.items)
    if LYNIS_BG_DIR:
        # Started by the boot check; attached even when its test is deselected, so that the teardown below ends it.
        config.kiln_lynis = LynisRun.attach(LYNIS_BG_DIR)
        sys.stderr.write(f"\nkiln: the Lynis test collects the audit running in {LYNIS_BG_DIR} (KILN_LYNIS_BG)\n")
    elif selected and os.environ.get("KILN_LYNIS_EARLY", "1") == "1" and "," not in (config.option.hosts or ""):
        import testinfra

        from kilnlib import ssh_target

        opts, dest = ssh_target(config)
        # Audit the settled system, as when it ran after the suites before it: boot finished (kiln-firstboot, a
        # oneshot of multi-user.target, made the env file, secrets, database), no unit still starting.
        target = testinfra.get_host(config.option.hosts.split(",")[0], ssh_config=config.option.ssh_config, sudo=True)
        t0 = time.monotonic()
        state = target.run("timeout 600 systemctl is-system-running --wait").stdout.strip()
        sys.stderr.write(f"\nkiln: target {state or '?'} after waiting {time.monotonic() - t0:.0f}s for its boot\n")
        outdir = ROOT / ".vagrant" / "lynis"
        config.kiln_lynis = LynisRun.start(opts, dest, str(outdir))
        sys.stderr.write(f"\nkiln: Lynis audit of {dest} started in the background (log {outdir}/lynis-run.log)\n")
    yield
    if config.kiln_lynis:
        config.kiln_lynis.stop()


@pytest.fixture(scope="module")
def restart_timeout(host) -> float:
    """Seconds a killed service may take to serve again: 10, doubled when the target is emulated (TCG).

    Under TCG gunicorn's master needs ~6-8 s of emulated CPU to import Django (once, for all workers: gunicorn.conf.py):
    13-17 s from kill -9 to the first 200 on our slower machine, where KVM or real hardware takes 1-2 s.
    systemd-detect-virt tells them apart ("qemu" = emulation, "kvm" = hardware virtualisation).
    """
    if "KILN_RESTART_TIMEOUT" in os.environ:
        return float(os.environ["KILN_RESTART_TIMEOUT"])
    virt = host.run("systemd-detect-virt || true").stdout.strip()
    return 20.0 if virt == "qemu" else 10.0
