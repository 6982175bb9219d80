"""The cluster test's harness (issue 14): a private network of network namespaces made here, Kiln hosts booted in it
from one provisioned root filesystem with systemd-nspawn, and a `client` namespace that talks to them.

The network: a bridge in a namespace of its own (kc<pid>-br), per host a namespace kc<pid>-<host> with a veth into
that bridge and its static address (ADDR, /24). Nothing on the host's own network; the names carry this process's
id, so two runs never collide, and a run's leftovers (a harness killed with SIGKILL) are removed by the next run
once that id is gone (sweep_stale).

A host: a hard-linked copy (cp -al) of the provisioned rootfs (tests/cluster/host.sh rootfs: the nspawn tier's of
this tree, else provisioned once) in /var/tmp/kiln-cluster-cache/run-<pid>/<host> (files there are replaced, never
edited in place), with its own /etc/kiln/overrides.env and without the nspawn tier's drop-ins that keep ufw and sshd
from starting (a private network: nspawn gives the container CAP_NET_ADMIN, so the image's firewall runs), booted by
host.sh boot (nspawn_boot: -b --volatile=overlay --register=no --keep-unit --network-namespace-path=...): every boot
is a first boot of a fresh instance. Commands inside it: host.sh exec (nspawn_exec).

The client (10.77.0.100): curl, tests/cluster/client.py (the load loop, the port scan, the S3 bucket) and moto's S3
server, each started in that namespace with nsenter --net.

Everything is removed at the end (Cluster.close), also on a failure, Ctrl-C or SIGTERM.
`python tests/cluster/cluster.py smoke` (root): the harness alone, on today's image: two hosts of the default role on
the private network, /readyz from the client, a load loop, a port scan, teardown; timings printed.
KILN_CLUSTER_ROOTFS=DIR: boot copies of DIR instead of host.sh's rootfs (an iteration on a rootfs at hand).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
HOST_SH = HERE / "host.sh"
CLIENT_PY = HERE / "client.py"
PYTHON = str(REPO / ".venv/bin/python") if (REPO / ".venv/bin/python").exists() else sys.executable
MOTO_SERVER = REPO / ".venv/bin/moto_server"
WORK_BASE = Path("/var/tmp/kiln-cluster-cache")  # the rootfs's file system: hard links
PRIVATE_NET = "10.77.0.0/24"
ADDR = {
    "data": "10.77.0.2",
    "replica": "10.77.0.3",
    "lb": "10.77.0.5",
    "web1": "10.77.0.11",
    "web2": "10.77.0.12",
    "web3": "10.77.0.13",  # the short-lived web host with a wrong database password
    "web4": "10.77.0.14",  # ... and the one without shared media
    "worker": "10.77.0.21",
    "client": "10.77.0.100",
}
SCAN_PORTS = (22, 80, 443, 3306, 6379, 6380, 9100)
# Each host's role (what the test boots it as; topology.py draws the same).
ROLE = {"data": "data", "replica": "data-replica", "web1": "web", "web2": "web", "worker": "worker", "lb": "lb"}
# The spec's table: the units a role runs (enabled and running); every other of these stays off.
ROLE_UNITS = {
    "data": {"mariadb.service", "redis-server@cache.service", "redis-server@queue.service", "kiln-metrics-rq.timer"},
    "data-replica": {"mariadb.service"},
    "web": {"supervisor.service", "nginx.service"},
    "worker": {"supervisor.service"},
    "lb": {"haproxy.service"},
}
# ...and what ufw lets in (the client is in KILN_PRIVATE_NET: the data host's ports are open to it).
ROLE_PORTS = {
    "data": {22, 3306, 6379, 6380},
    "data-replica": {22, 3306},
    "web": {22, 80, 443},
    "worker": {22},
    "lb": {22, 80, 443},
}
MOTO_PORT = 9000
MOTO_URL = f"http://{ADDR['client']}:{MOTO_PORT}"
BUCKET = "kiln-cluster-media"
BACKUP_BUCKET = "kiln-cluster-backups"  # the data host's backups, the replica's seed, then the replica's backups
S3_KEY = "testing"  # moto's
FIRSTBOOT_UNITS = "kiln-firstboot*"
T0 = time.monotonic()
FIGURES: list[str] = []
T = TypeVar("T")


class HarnessError(Exception):
    pass


def say(msg: str) -> None:
    print(f"[+{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def figure(text: str) -> None:
    """A line for the closing note (kilnlib's figure lines): printed now, and again in the summary at the end."""
    FIGURES.append(text)
    say(text)


def run(
    cmd: list[str], *, check: bool = True, timeout: float = 60, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=stdin)
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"timed out after {timeout}s: {' '.join(cmd)}") from exc
    if check and res.returncode:
        raise HarnessError(f"rc {res.returncode}: {' '.join(cmd)}\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    return res


def wait_until(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 1.0) -> T:
    """probe() until it returns something else than None/False, at most `timeout` seconds; HarnessError after."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise HarnessError(f"{what}: not within {timeout:.0f}s")
        time.sleep(interval)


def settle(fns: Iterable[Callable[[], T]]) -> list[concurrent.futures.Future[T]]:
    """Runs the callables at once, until every one ended. Interrupted (Ctrl-C, SIGTERM), it returns at once: the
    cleanup that follows stops what the threads wait for, so they end too."""
    fns = list(fns)
    pool = concurrent.futures.ThreadPoolExecutor(max(1, len(fns)))
    futures = [pool.submit(fn) for fn in fns]
    try:
        concurrent.futures.wait(futures)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return futures


def parallel(fns: Iterable[Callable[[], T]]) -> list[T]:
    """Runs the callables at once; every one ends before the first error is raised."""
    return [f.result() for f in settle(fns)]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def readline(proc: subprocess.Popen[str], timeout: float) -> str:
    """The next line of proc's stdout, '' at its end or when none came within `timeout` seconds."""
    q: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    out = proc.stdout
    threading.Thread(target=lambda: q.put(out.readline()), daemon=True).start()
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        return ""


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def sweep_stale() -> None:
    """Leftovers of runs whose process is gone (killed with SIGKILL: no cleanup ran): their namespaces, with what
    still runs in them (their containers), and their root filesystem copies."""
    listing = run(["ip", "netns", "list"], check=False).stdout.split("\n")
    for ns in (line.split()[0] for line in listing if line.strip()):
        m = re.fullmatch(r"kc(\d+)-[a-z0-9]+", ns)
        if not m or pid_alive(int(m[1])):
            continue
        for pid in run(["ip", "netns", "pids", ns], check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        run(["ip", "netns", "del", ns], check=False)
        say(f"removed a stale namespace {ns}")
    for d in WORK_BASE.glob("run-*"):
        if d.name[4:].isdigit() and not pid_alive(int(d.name[4:])):
            shutil.rmtree(d, ignore_errors=True)
            say(f"removed a stale run directory {d}")


class Network:
    """The bridge's namespace and one namespace per member, each with a veth into the bridge."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.bridge = f"{run_id}-br"
        self.members: dict[str, str] = {}  # name -> namespace
        self.up = False

    def ns(self, name: str) -> str:
        return f"{self.run_id}-{name}"

    def create(self) -> None:
        run(["ip", "netns", "add", self.bridge])
        self.up = True
        ipn = ["ip", "-n", self.bridge]
        run([*ipn, "link", "set", "lo", "up"])
        run([*ipn, "link", "add", "br0", "type", "bridge"])
        run([*ipn, "link", "set", "br0", "up"])

    def add(self, name: str, addr: str) -> str:
        ns = self.ns(name)
        run(["ip", "netns", "add", ns])
        self.members[name] = ns
        ipb, ipm = ["ip", "-n", self.bridge], ["ip", "-n", ns]
        run([*ipb, "link", "add", f"v-{name}", "type", "veth", "peer", "name", "eth0", "netns", ns])
        run([*ipb, "link", "set", f"v-{name}", "master", "br0", "up"])
        run([*ipm, "addr", "add", f"{addr}/24", "dev", "eth0"])
        run([*ipm, "link", "set", "eth0", "up"])
        run([*ipm, "link", "set", "lo", "up"])
        return ns

    def remove(self) -> None:
        for ns in [*self.members.values(), self.bridge]:
            if ns == self.bridge and not self.up:
                continue
            pids = run(["ip", "netns", "pids", ns], check=False).stdout.split()
            if pids:  # every process this run started there has been stopped: whatever is left is a container's
                say(f"{ns}: processes left {pids}: killed")
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
            run(["ip", "netns", "del", ns], check=False)
        self.members.clear()
        self.up = False


class Host:
    """One Kiln host: a hard-linked copy of the rootfs with its overrides, booted in its namespace."""

    def __init__(self, name: str, addr: str, ns: str, root: Path, machine: str) -> None:
        self.name, self.addr, self.ns, self.root, self.machine = name, addr, ns, root, machine
        self.log = root.parent / f"{name}.boot.log"
        self.proc: subprocess.Popen[str] | None = None
        self.leader = 0
        self.nspawn_pid = 0
        self.boots = 0
        self.times: dict[str, float] = {}

    def prepare(self, rootfs: Path, overrides: str) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)
        run(["cp", "-al", str(rootfs), str(self.root)], timeout=600)
        self.set_overrides(overrides)
        # The nspawn tier's drop-ins keep ufw and sshd off where a container shares the host's network; here each
        # host has a network of its own, so the image's firewall and sshd run as on a server.
        for unit in ("ufw.service", "ssh.service", "ssh.socket"):
            (self.root / f"etc/systemd/system/{unit}.d/nspawn-test.conf").unlink(missing_ok=True)

    def set_overrides(self, text: str) -> None:
        """/etc/kiln/overrides.env of the copy (cloud-init's write_files on a server): a new file, never the rootfs's
        (hard-linked) one edited."""
        path = self.root / "etc/kiln/overrides.env"
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    def boot(self) -> None:
        """Boots the copy (a first boot: --volatile=overlay), until the container's init runs (wait_first_boot
        follows)."""
        if self.alive():
            raise HarnessError(f"{self.name}: already running")
        t0 = time.monotonic()
        self.boots += 1
        with self.log.open("a") as log:
            log.write(f"--- boot {self.boots}\n")
            log.flush()
            self.proc = subprocess.Popen(
                [str(HOST_SH), "boot", str(self.root), self.machine, self.ns],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                text=True,
                start_new_session=True,  # this harness alone stops it (a Ctrl-C reaches only the harness)
            )
        line = readline(self.proc, 60)
        m = re.search(r"leader=(\d+) nspawn=(\d+)", line)
        if not m:
            stop_process(self.proc, 45)
            raise HarnessError(f"{self.name}: the container did not boot:\n{self.log_tail()}")
        self.leader, self.nspawn_pid = int(m[1]), int(m[2])
        self.times["container up"] = time.monotonic() - t0
        self.times["boot started"] = t0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exec(
        self, cmd: str | list[str], *, timeout: float = 60, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """CMD inside the container (nspawn_exec); a string runs with bash -c."""
        if not self.alive():
            raise HarnessError(f"{self.name}: not running")
        args = ["bash", "-c", cmd] if isinstance(cmd, str) else cmd
        return run([str(HOST_SH), "exec", str(self.leader), *args], check=check, timeout=timeout)

    def out(self, cmd: str | list[str], timeout: float = 60) -> str:
        return self.exec(cmd, timeout=timeout).stdout.strip()

    def stop(self) -> float:
        """A clean poweroff (host.sh: SIGTERM to nspawn, SIGKILL after 30 s); the seconds it took."""
        t0 = time.monotonic()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(50)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.nspawn_pid, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait(10)
        self.leader = 0
        return time.monotonic() - t0

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def first_boot_state(self) -> str:
        """'done' once systemd finished starting up with no kiln-firstboot unit failed, 'failed: UNITS', or
        'pending'."""
        out = self.out(
            "systemctl is-system-running; "
            f"systemctl list-units --all --plain --no-legend '{FIRSTBOOT_UNITS}' | awk '{{print $1, $3, $4}}'"
        )
        lines = out.splitlines()
        state, units = (lines[0] if lines else "unknown"), lines[1:]
        failed = [u.split()[0] for u in units if " failed " in f"{u} "]
        if failed:
            return "failed: " + " ".join(failed)
        activating = [u for u in units if " activating" in u]
        return "done" if state in ("running", "degraded") and not activating else "pending"

    def wait_first_boot(self, timeout: float = 300) -> str:
        """Until first boot is done or failed (its state returned); times it."""
        state = wait_until(
            f"{self.name}: first boot",
            lambda: (s := self.first_boot_state()) != "pending" and s,
            timeout,
            0.5,
        )
        self.times["first boot"] = time.monotonic() - self.times["boot started"]
        return state

    def diagnose(self) -> str:
        """What the host shows when something fails: failed units, first boot's journal, supervisor's programs."""
        if not self.alive():
            return f"== {self.name} ({self.addr}): not running; host.sh's log:\n{self.log_tail()}"
        res = self.exec(
            "echo '-- systemctl --failed'; systemctl --failed --no-legend --plain; "
            f"echo '-- journal of {FIRSTBOOT_UNITS} (tail)'; "
            f"journalctl -b --no-pager -o cat -n 40 -u '{FIRSTBOOT_UNITS}'; "
            "echo '-- supervisorctl status'; supervisorctl status 2>&1 | head -20; "
            # systemd's own word on a unit that would not (re)start: a spawn that failed, processes left over
            "echo '-- the journal: errors of this boot (tail)'; journalctl -b --no-pager -o short-precise -p err -n 30",
            timeout=60,
        )
        return f"== {self.name} ({self.addr}):\n{res.stdout}{res.stderr}"


class LoadLoop:
    """client.py load in the client namespace: bounded by requests and seconds; mark() records the requests in
    flight at that moment; finish() stops it and returns its counts."""

    def __init__(
        self,
        client: Client,
        url: str,
        *,
        concurrency: int = 4,
        max_requests: int = 20000,
        max_seconds: float = 180,
        pause: float = 0.0,
        timeout: float = 10,
    ) -> None:
        args = [
            PYTHON,
            str(CLIENT_PY),
            "load",
            url,
            f"--concurrency={concurrency}",
            f"--max-requests={max_requests}",
            f"--max-seconds={max_seconds}",
            f"--pause={pause}",
            f"--timeout={timeout}",
        ]
        self.url = url
        self.proc = subprocess.Popen(client.cmd(args), stdout=subprocess.PIPE, text=True, start_new_session=True)
        client.loops.append(self)
        if readline(self.proc, 30).strip() != "started":
            stop_process(self.proc, 10, signal.SIGKILL)
            raise HarnessError(f"the load loop on {url} did not start")
        self.marks: list[str] = []
        self.result: dict[str, Any] | None = None

    def mark(self, label: str) -> None:
        self.marks.append(label)
        self.proc.send_signal(signal.SIGUSR1)

    def finish(self, timeout: float = 30, *, stop: bool = True) -> dict[str, Any]:
        """Stops the loop (SIGTERM: no new request; those in flight end or time out), or with stop=False waits for
        its own end (its bounds), and returns its counts, the marks labelled."""
        if self.result is not None:
            return self.result
        if stop:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        last = (out.strip().splitlines() or ["{}"])[-1]
        try:
            self.result = json.loads(last)
        except json.JSONDecodeError:
            self.result = {"requests": 0, "errors": 0, "error_kinds": {"no-result": 1}, "marks": [], "raw": out[-500:]}
        for label, m in zip(self.marks, self.result.get("marks", []), strict=False):
            m["label"] = label
        return self.result


def describe_load(r: dict[str, Any]) -> str:
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(r.get("error_kinds", {}).items())) or "none"
    marks = "; ".join(f"{m.get('label', '?')} at {m['t']}s: {m['in_flight']} in flight" for m in r.get("marks", []))
    rate = r.get("requests", 0) / r["seconds"] if r.get("seconds") else 0
    return (
        f"{r.get('requests', 0)} requests in {r.get('seconds', 0)}s ({rate:.0f}/s, {r.get('concurrency', '?')} "
        f"at a time), {r.get('ok', 0)} ok, {r.get('errors', 0)} errors ({kinds})" + (f"; {marks}" if marks else "")
    )


class Client:
    """The client namespace: curl, client.py, moto's S3 server."""

    def __init__(self, ns: str, addr: str) -> None:
        self.ns, self.addr = ns, addr
        self.moto: subprocess.Popen[str] | None = None
        self.loops: list[LoadLoop] = []

    def cmd(self, args: list[str]) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.ns}", "--", *args]

    def curl(
        self,
        url: str,
        *,
        method: str = "GET",
        auth: str | None = None,
        data: str | None = None,
        content_type: str = "application/json",
        timeout: float = 20,
    ) -> tuple[int, str]:
        """(HTTP status, body); status 0 when no answer came (refused, timeout: curl's error in the body)."""
        args = ["curl", "-sSk", "-o", "-", "-w", "\n%{http_code}", "--max-time", str(timeout), "-X", method]
        if auth:
            args += ["-u", auth]
        if data is not None:
            args += ["-H", f"Content-Type: {content_type}", "--data-binary", data]
        res = run(self.cmd([*args, url]), check=False, timeout=timeout + 10)
        body, _, code = res.stdout.rpartition("\n")
        status = int(code) if code.isdigit() else 0
        return status, (body if status else (body + res.stderr).strip())

    def json(self, url: str, **kw: Any) -> tuple[int, Any]:
        status, body = self.curl(url, **kw)
        try:
            return status, json.loads(body)
        except json.JSONDecodeError:
            return status, body

    def scan(self, addr: str, ports: Iterable[int] = SCAN_PORTS) -> dict[int, str]:
        res = run(self.cmd([PYTHON, str(CLIENT_PY), "scan", addr, *map(str, ports)]), timeout=30)
        return {int(k): v for k, v in json.loads(res.stdout).items()}

    def load(self, url: str, **kw: Any) -> LoadLoop:
        return LoadLoop(self, url, **kw)

    def start_moto(self, log: Path) -> None:
        if not MOTO_SERVER.exists():
            raise HarnessError(f"no {MOTO_SERVER}: make deps (app/requirements-dev.txt has moto[server])")
        with log.open("w") as f:
            self.moto = subprocess.Popen(
                self.cmd([str(MOTO_SERVER), "-H", self.addr, "-p", str(MOTO_PORT)]),
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        wait_until("moto's S3 server", lambda: self.curl(f"{MOTO_URL}/", timeout=2)[0] == 200, 60, 0.5)
        for bucket in (BUCKET, BACKUP_BUCKET):
            run(self.cmd([PYTHON, str(CLIENT_PY), "bucket", MOTO_URL, bucket]), timeout=60)

    def close(self) -> None:
        for loop in self.loops:
            stop_process(loop.proc, 15)
        stop_process(self.moto, 10)


class Cluster:
    """The network, the client, the hosts; close() removes all of it (idempotent; also at exit and on SIGTERM)."""

    def __init__(self) -> None:
        self.run_id = f"kc{os.getpid()}"
        self.work = WORK_BASE / f"run-{os.getpid()}"
        self.net = Network(self.run_id)
        self.hosts: dict[str, Host] = {}
        self.client: Client | None = None
        self.closed = False
        self.rootfs_path: Path | None = None

    def start(self, *, moto: bool = True) -> Cluster:
        if os.geteuid() != 0:
            raise HarnessError("the cluster test runs as root (namespaces, systemd-nspawn)")
        atexit.register(self.close)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _sigterm)
        sweep_stale()
        self.work.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        self.rootfs_path = self.rootfs()
        figure(f"cluster: provisioned rootfs {self.rootfs_path} ready in {time.monotonic() - t0:.1f}s")
        self.net.create()
        self.client = Client(self.net.add("client", ADDR["client"]), ADDR["client"])
        say(f"network: bridge namespace {self.net.bridge}, client {self.client.ns} ({ADDR['client']}/24)")
        if moto:
            t0 = time.monotonic()
            self.client.start_moto(self.work / "moto.log")
            say(f"moto's S3 server on {MOTO_URL}, bucket {BUCKET} ({time.monotonic() - t0:.1f}s)")
        return self

    def rootfs(self) -> Path:
        given = os.environ.get("KILN_CLUSTER_ROOTFS")
        if given:
            return Path(given)
        res = run([str(HOST_SH), "rootfs", str(self.work)], check=False, timeout=1800)
        for line in res.stderr.splitlines():
            say(line.strip())
        if res.returncode:
            raise HarnessError(f"no provisioned rootfs (host.sh rootfs, rc {res.returncode})")
        return Path(res.stdout.strip().splitlines()[-1])

    def add(self, name: str, overrides: str) -> Host:
        """A host NAME at ADDR[NAME], prepared (not booted) with these overrides."""
        assert self.rootfs_path is not None
        ns = self.net.add(name, ADDR[name])
        host = Host(name, ADDR[name], ns, self.work / name, f"{self.run_id}-{name}")
        host.prepare(self.rootfs_path, overrides)
        self.hosts[name] = host
        return host

    def boot(
        self, names: Iterable[str], ready: Callable[[Host], None] | None = None, *, strict: bool = True
    ) -> dict[str, str]:
        """Boots the hosts in parallel, each until its first boot is done, then ready(host) (a role's readiness).
        On a failure: what every one of them shows, then the error; strict=False: the failed hosts, {name: what
        failed}, returned instead."""
        hosts = [self.hosts[n] for n in names]

        def one(h: Host) -> str:
            h.boot()
            state = h.wait_first_boot()
            if state != "done":
                return f"{h.name}: first boot {state}"
            if ready:
                ready(h)
                h.times["ready"] = time.monotonic() - h.times["boot started"]
            return ""

        say(f"booting {', '.join(h.name for h in hosts)}")
        results: list[str] = []
        for h, f in zip(hosts, self._each(one, hosts), strict=True):
            results.append(f if isinstance(f, str) else f"{h.name}: {f}")
        for h in hosts:
            t = h.times
            ready_s = f", ready {t['ready']:.1f}s" if "ready" in t else ""
            up, done = t.get("container up", 0), t.get("first boot", 0)
            figure(f"boot {h.name} ({h.addr}): container up {up:.1f}s, first boot done {done:.1f}s{ready_s}")
        failed = {h.name: r for h, r in zip(hosts, results, strict=True) if r}
        if failed:
            for h in hosts:
                print(h.diagnose(), flush=True)
            if strict:
                raise HarnessError("; ".join(failed.values()))
        return failed

    @staticmethod
    def _each(fn: Callable[[Host], str], hosts: list[Host]) -> list[str | BaseException]:
        futures = settle([lambda h=h: fn(h) for h in hosts])
        return [f.exception() or f.result() for f in futures]

    def diagnose(self, names: Iterable[str] | None = None) -> str:
        hosts = [self.hosts[n] for n in (names or self.hosts)]
        return "\n".join(h.diagnose() for h in hosts)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        t0 = time.monotonic()
        if self.client:
            self.client.close()
        stops = parallel([h.stop for h in self.hosts.values()])
        self.net.remove()
        shutil.rmtree(self.work, ignore_errors=True)
        left = [ns for ns in run(["ip", "netns", "list"], check=False).stdout.split() if ns.startswith(self.run_id)]
        left_s = f" (LEFT: {' '.join(left)})" if left else ""
        say(
            f"teardown: {len(stops)} host(s) stopped (longest {max(stops, default=0):.1f}s), namespaces removed"
            f"{left_s}, {self.work} removed, in {time.monotonic() - t0:.1f}s"
        )


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through the fixtures' and close()'s cleanup


def access_lines(host: Host, marker: str, log: str = "/var/log/nginx/access.log") -> list[str]:
    """The lines of a log on the host that contain marker."""
    return host.out(f"grep -F -- {marker!r} {log} || true").splitlines()


def smoke() -> int:
    """The harness on today's image: two hosts of the default role (all), /readyz from the client, a load loop,
    a port scan, teardown."""
    cluster = Cluster()
    try:
        cluster.start()
        assert cluster.client is not None
        client = cluster.client
        for name in ("web1", "web2"):
            cluster.add(name, "# tests/cluster smoke: the default role\n")

        def readyz(h: Host) -> None:
            wait_until(
                f"{h.name}: /readyz 200 from the client",
                lambda: client.curl(f"https://{h.addr}/readyz", timeout=5)[0] == 200,
                180,
            )

        cluster.boot(["web1", "web2"], readyz)
        for name in ("web1", "web2"):
            status, body = client.curl(f"https://{ADDR[name]}/readyz")
            say(f"client -> https://{ADDR[name]}/readyz: {status} {body[:160]}")
        tag = f"smoke{os.getpid()}"
        loop = client.load(f"https://{ADDR['web1']}/api/records/?loop={tag}", concurrency=4, max_seconds=15)
        time.sleep(5)
        loop.mark("after 5 s")
        r = loop.finish(timeout=40, stop=False)
        figure(f"load loop client -> web1: {describe_load(r)}")
        lines = access_lines(cluster.hosts["web1"], tag)
        say(f"web1's nginx access log: {len(lines)} lines of the loop; first: {lines[0] if lines else '-'}")
        glines = access_lines(cluster.hosts["web1"], tag, "/var/log/kiln/web.log")
        say(f"web1's gunicorn access log: {len(glines)} lines; first: {glines[0] if glines else '-'}")
        for name in ("web1",):
            scan = cluster.client.scan(ADDR[name])
            figure(f"port scan of {name} from the client: {' '.join(f'{p}:{s}' for p, s in scan.items())}")
        ok = r.get("requests", 0) > 0 and r.get("errors", 1) == 0
        return 0 if ok else 1
    except HarnessError as exc:
        print(f"FAILED: {exc}", flush=True)
        return 1
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        return 130
    finally:
        cluster.close()
        say(f"total {time.monotonic() - T0:.1f}s")


if __name__ == "__main__":
    if sys.argv[1:] != ["smoke"]:
        sys.exit("usage: cluster.py smoke   (root)")
    sys.exit(smoke())
