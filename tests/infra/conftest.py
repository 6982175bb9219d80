"""pytest-testinfra suites for a Kiln server.

Targets:
  * default: the Vagrant VM of the repo's Vagrantfile. A session fixture brings it up when it is not running
    (python-vagrant), writes its ssh-config to .vagrant/kiln-ssh-config and runs every command with sudo.
    KILN_DESTROY=1 destroys the VM at the end. The VM's serial console (.vagrant/kiln-serial-*.log) is watched
    during boots: a kernel panic is reported as such and the boot retried once (seen under TCG).
  * any host: pytest tests/infra --hosts=ssh://admin@203.0.113.7 [--ssh-config=FILE] --sudo
    (tests that need Vagrant itself - `vagrant provision` in test_idempotence - are skipped then).

Order: state, http, security basics, hardening (Lynis: ~10 min under TCG), jobs, restart, reboot, idempotence
(disruptive last).
Environment: KILN_DESTROY=1, KILN_RESTART_TIMEOUT (seconds for a killed service to serve again) [10; 20 under TCG],
KILN_BOOT_TIMEOUT (seconds for a reboot) [300].
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SSH_CONFIG = ROOT / ".vagrant" / "kiln-ssh-config"
VAGRANT_LOG = ROOT / ".vagrant" / "kiln-vagrant.log"
ORDER = [
    "test_state",
    "test_http",
    "test_security_basics",
    "test_hardening",
    "test_jobs",
    "test_restart",
    "test_reboot",
    "test_idempotence",
]


def pytest_configure(config):
    config.addinivalue_line("markers", "vagrant: needs the Vagrant VM (vagrant provision/reload)")
    config.kiln_vagrant = config.option.hosts is None
    if config.kiln_vagrant:
        SSH_CONFIG.parent.mkdir(parents=True, exist_ok=True)
        if not SSH_CONFIG.exists():
            SSH_CONFIG.write_text("# written by tests/infra/conftest.py once the VM is up\n")
        config.option.hosts = "ssh://default"
        config.option.ssh_config = str(SSH_CONFIG)
        config.option.sudo = True


def pytest_collection_modifyitems(config, items):
    def key(item):
        mod = item.module.__name__.rsplit(".", 1)[-1]
        return ORDER.index(mod) if mod in ORDER else len(ORDER)

    items.sort(key=key)  # stable: keeps the order inside a module
    if not config.kiln_vagrant:
        skip = pytest.mark.skip(reason="needs the Vagrant VM (run without --hosts)")
        for item in items:
            if "vagrant" in item.keywords:
                item.add_marker(skip)


# --- the Vagrant VM -------------------------------------------------------------------------------------------------


class KilnVM:
    """The repo's Vagrant machine: boot with panic detection, ssh-config, provision."""

    def __init__(self):
        import vagrant  # python-vagrant

        self.v = vagrant.Vagrant(
            str(ROOT),
            quiet_stdout=False,
            quiet_stderr=False,
            out_cm=vagrant.make_file_cm(str(VAGRANT_LOG)),
            err_cm=vagrant.make_file_cm(str(VAGRANT_LOG)),
        )

    def state(self) -> str:
        return self.v.status()[0].state

    def serial_logs(self) -> list[Path]:
        return sorted((ROOT / ".vagrant").glob("kiln-serial-*.log"))

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

    def force_off(self):
        dom = self.domain_id()
        if dom:
            subprocess.run(
                ["virsh", "-c", os.environ.get("KILN_LIBVIRT_URI", "qemu:///system"), "destroy", dom],
                capture_output=True,
            )

    def vagrant(self, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
        """Run a vagrant command, watching the serial console; one retry after a kernel panic."""
        for attempt in (1, 2):
            sizes = self.serial_size()
            with VAGRANT_LOG.open("a") as log:
                log.write(f"\n=== vagrant {' '.join(args)} (attempt {attempt}) {time.strftime('%T')}\n")
                log.flush()
                proc = subprocess.Popen(["vagrant", *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
                deadline = time.monotonic() + timeout
                panic = False
                while proc.poll() is None and time.monotonic() < deadline:
                    if "Kernel panic" in self.serial_since(sizes):
                        panic = True
                        self.force_off()
                        break
                    time.sleep(2)
                if proc.poll() is None and not panic:
                    proc.kill()
                proc.wait()
            if panic:
                sys.stderr.write(
                    f"\nkiln: KERNEL PANIC during `vagrant {' '.join(args)}`:\n"
                    f"{self.serial_since(sizes)[-1500:]}\nkiln: retrying once\n"
                )
                if attempt == 1:
                    continue
            if proc.returncode != 0:
                raise RuntimeError(
                    f"`vagrant {' '.join(args)}` failed (rc={proc.returncode}); "
                    f"tail of {VAGRANT_LOG}:\n{VAGRANT_LOG.read_text()[-3000:]}"
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
        start = VAGRANT_LOG.stat().st_size if VAGRANT_LOG.exists() else 0
        self.vagrant("provision")
        with VAGRANT_LOG.open() as f:
            f.seek(start)
            return f.read()

    def panic_since(self, sizes) -> str | None:
        text = self.serial_since(sizes)
        i = text.find("Kernel panic")
        return text[max(0, i - 1500) : i + 300] if i >= 0 else None


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


@pytest.fixture(scope="module")
def restart_timeout(host) -> float:
    """Seconds a killed service may take to serve again: 10, doubled when the target is emulated (TCG).

    Under TCG every gunicorn worker needs ~5 s of emulated CPU to import Django, and 2*CPU+1 of them boot at once
    on 2 vCPUs: ~12 s from kill -9 to the first 200, where KVM or real hardware takes 1-2 s. systemd-detect-virt
    tells them apart ("qemu" = emulation, "kvm" = hardware virtualisation).
    """
    if "KILN_RESTART_TIMEOUT" in os.environ:
        return float(os.environ["KILN_RESTART_TIMEOUT"])
    virt = host.run("systemd-detect-virt || true").stdout.strip()
    return 20.0 if virt == "qemu" else 10.0
