"""Helpers for the Kiln infra suites: run commands on the target, wait with evidence, talk HTTP/Redis/rq there.

Every check runs *on the target* (curl, redis-cli, the release venv), so the suites work against any host that
testinfra reaches (the Vagrant VM, a droplet, a container), not only through forwarded ports.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import math
import os
import re
import secrets
import shlex
import subprocess
import sys
import time
import xml.parsers.expat
import xmlrpc.client
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

RELEASE = "/srv/kiln/current"
VENV_PY = f"{RELEASE}/venv/bin/python"
APP_DIR = f"{RELEASE}/app"
ENV_FILE = "/etc/kiln/kiln.env"
OVERRIDES = "/etc/kiln/overrides.env"  # the operator's (cloud-init write_files); kiln-firstboot applies them
WEB_LOG = "/var/log/kiln/web.log"
SOCKET = "/run/kiln/gunicorn.sock"
GUNICORN_PID = "/run/kiln/gunicorn.pid"


def _kiln_cli():
    """The server's `kiln` command as a module (provision/files/usr/local/lib/kiln/kiln_cli.py): its unit lists."""
    path = Path(__file__).resolve().parents[2] / "provision/files/usr/local/lib/kiln/kiln_cli.py"
    spec = importlib.util.spec_from_file_location("kiln_cli", path)
    module = sys.modules["kiln_cli"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def profile_words(name: str) -> list[str]:
    """NAME's value (words; a one-line bash array's elements) in the distro profile of the server under test
    (provision/distro/$KILN_DISTRO.sh, as the Vagrantfile picks it): the one place where the distros differ."""
    distro = os.environ.get("KILN_DISTRO", "debian-13")
    text = (Path(__file__).resolve().parents[2] / "provision" / "distro" / f"{distro}.sh").read_text()
    found = re.search(rf"^{name}=(?:\(([^)\n]*)\)|(\S+))$", text, re.M)
    if not found:
        raise LookupError(f"provision/distro/{distro}.sh sets no {name} (on one line)")
    return (found.group(1) or found.group(2)).split()


KILN_CLI = _kiln_cli()
DB_SERVICE = profile_words("DB_SERVICE")[0]
DB_SERVER_PACKAGE = profile_words("PKG_DB_SERVER")[0]
DB_SERVER_PROCESS = Path(profile_words("DB_SERVER_BIN")[0]).name  # as ss -p names it
# The units `kiln status` requires active (the distro's database unit), and first boot in three stages
# (provision/files/usr/local/sbin/kiln-firstboot): secrets, config, database.
SERVICES = [u.removesuffix(".service") for u in KILN_CLI.core_units(DB_SERVICE)]
FIRSTBOOT_UNITS = [u.removesuffix(".service") for u in KILN_CLI.FIRSTBOOT_UNITS]
# The server's own pending-reboot check (provision/lib/common.sh, installed with the operator commands): rc 0 and
# the reason when a reboot is pending, rc 1 when not. The login message uses it too.
REBOOT_PENDING = "bash -c '. /usr/local/lib/kiln/lib/common.sh && reboot_pending'"


# The figures a run measured that a closing note or the README quotes (a load loop's counts, a backup's time):
# printed where they are measured and again together at the end of the run (conftest's terminal summary), where a
# passing test's own output does not reach.
FIGURES: list[str] = []


def figure(text: str) -> None:
    FIGURES.append(text)
    print(text)


def sh(host, cmd: str, ok=(0,), timeout: int | None = None):
    """Run `cmd` on the target (through sh -c; root when the host is opened with sudo). Fails with what it saw."""
    if timeout:
        cmd = f"timeout {int(timeout)} sh -c {shlex.quote(cmd)}"
    res = host.run(cmd)
    if ok is not None and res.rc not in ok:
        raise AssertionError(
            f"command failed (rc={res.rc}): {cmd}\n--- stdout ---\n{res.stdout[-3000:]}\n"
            f"--- stderr ---\n{res.stderr[-3000:]}"
        )
    return res


def out(host, cmd: str, **kw) -> str:
    return sh(host, cmd, **kw).stdout.strip()


def _evidence_text(evidence) -> str:
    """What a failed wait adds to its message: evidence()'s output, best effort."""
    if evidence is None:
        return ""
    try:
        return "\n--- evidence ---\n" + str(evidence())
    except Exception as exc:  # noqa: BLE001 - evidence is best effort
        return f"\n--- evidence unavailable: {exc}"


def wait_for(fn, timeout: float, interval: float = 1.0, what: str = "condition", evidence=None):
    """Call fn() until it returns a truthy value; on timeout fail with the last value (and evidence() output)."""
    deadline = time.monotonic() + timeout
    last = None
    start = time.monotonic()
    while True:
        try:
            last = fn()
        except AssertionError as exc:  # a failing probe counts as "not yet"
            last = f"<probe failed: {exc}>"
            ok = False
        else:
            ok = bool(last)
        if ok:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {time.monotonic() - start:.1f}s waiting for {what}; last seen: {last!r}"
                f"{_evidence_text(evidence)}"
            )
        time.sleep(interval)


def wait_in_guest(host, cond: str, timeout: float, what: str, interval: float = 0.5, evidence=None) -> float:
    """Poll the shell condition `cond` inside the target until it holds; returns the seconds it took.

    One ssh command and one sudo for the whole wait, not one per poll: under TCG each `sudo` costs ~0.6 s of emulated
    CPU and each `supervisorctl` ~4 s (measured), so host-side polling every half second took a vCPU away from the
    very restart it was timing. Bounded by `timeout` (coreutils) in the target."""
    t0 = time.monotonic()
    loop = f"until {cond}; do sleep {interval}; done"
    res = host.run(f"timeout {max(1, math.ceil(timeout))} sh -c {shlex.quote(loop)}")
    took = time.monotonic() - t0
    if res.rc != 0:
        raise AssertionError(
            f"timed out after {took:.1f}s waiting for {what} (rc={res.rc}; condition: {cond}){res.stderr[-500:]}"
            f"{_evidence_text(evidence)}"
        )
    return took


def tail(host, path: str, n: int = 30) -> str:
    return host.run(f"tail -n {n} {shlex.quote(path)} 2>&1").stdout


def journal(host, unit: str, n: int = 30) -> str:
    return host.run(f"journalctl -u {shlex.quote(unit)} -n {n} --no-pager 2>&1").stdout


# --- systemd / supervisor -----------------------------------------------------------------------------------------


def main_pid(host, unit: str) -> int:
    return int(out(host, f"systemctl show -p MainPID --value {shlex.quote(unit)}") or 0)


def unit_state(host, unit: str) -> str:
    return host.run(f"systemctl is-active {shlex.quote(unit)}").stdout.strip()


def unit_evidence(host, unit: str) -> str:
    return host.run(f"systemctl status --no-pager -n 20 {shlex.quote(unit)} 2>&1").stdout


@dataclass
class Prog:
    name: str
    state: str
    pid: int
    line: str


# supervisord's XML-RPC on its unix socket (Debian's and Ubuntu's supervisord.conf: [unix_http_server]
# file=/var/run/supervisor.sock), read with curl: the tests poll program states every half second, and each
# `supervisorctl status` is a Python start in the guest (seconds of emulated CPU under TCG) that competed with the
# very restarts being timed.
SUPERVISOR_SOCK = "/run/supervisor.sock"


def supervisor_status(host) -> dict[str, Prog]:
    """Program states from supervisord (getAllProcessInfo) as {name: Prog}; names like kiln-web,
    kiln-worker:kiln-worker-default-0 (a process of the app's worker group default, as `supervisorctl status` prints
    them). {} when supervisord does not answer."""
    body = xmlrpc.client.dumps((), "supervisor.getAllProcessInfo")
    res = host.run(
        f"printf %s {shlex.quote(body)} | curl -sS --max-time 10 --unix-socket {SUPERVISOR_SOCK} "
        "-H 'Content-Type: text/xml' --data-binary @- http://localhost/RPC2"
    )
    if res.rc != 0:
        return {}
    try:
        (infos,), _ = xmlrpc.client.loads(res.stdout)
    except (xmlrpc.client.Fault, xml.parsers.expat.ExpatError, ValueError) as exc:
        raise AssertionError(f"supervisord answered getAllProcessInfo with {exc!r}: {res.stdout[:500]}") from exc
    progs = {}
    for i in infos:
        name = i["name"] if i["group"] == i["name"] else f"{i['group']}:{i['name']}"
        progs[name] = Prog(name, i["statename"], int(i["pid"]), f"{name} {i['statename']} {i['description']}")
    return progs


def supervisor_text(host) -> str:
    res = host.run("supervisorctl status")
    return f"rc={res.rc}\n{res.stdout}{res.stderr}"


def worker_names(host) -> list[str]:
    return sorted(n for n in supervisor_status(host) if n.startswith("kiln-worker"))


@dataclass
class Proc:
    user: str
    pid: int
    ppid: int
    args: str


def app_processes(host) -> list[Proc]:
    """The app's processes (gunicorn, rq workers, manage.py) from `ps`, without the ps command itself."""
    procs = []
    for line in host.run("ps -eo user:20=,pid=,ppid=,args=").stdout.splitlines():
        user, pid, ppid, args = line.split(None, 3)
        if re.search(r"gunicorn|rqworker|manage\.py", args) and "ps -eo" not in args:
            procs.append(Proc(user, int(pid), int(ppid), args))
    return procs


def all_running(host, names) -> bool:
    st = supervisor_status(host)
    return all(n in st and st[n].state == "RUNNING" for n in names)


# --- HTTP (curl on the target) --------------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    raw_headers: str = ""

    def __str__(self) -> str:
        return f"HTTP {self.status}\n{self.raw_headers.strip()}\n\n{self.body[:800]}"


def http(
    host,
    path: str,
    scheme: str = "https",
    method: str = "GET",
    data_cmd: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: int = 15,
    host_header: str = "localhost",
) -> Response:
    """Request `path` from nginx on the target. data_cmd: a shell command whose stdout is the request body."""
    port = 443 if scheme == "https" else 80
    hdrs = {"Host": host_header, **(headers or {})}
    hargs = " ".join(f"-H {shlex.quote(f'{k}: {v}')}" for k, v in hdrs.items())
    url = f"{scheme}://127.0.0.1:{port}{path}"
    body = "--data-binary @-" if data_cmd else ""
    curl = (
        f"curl -sk -X {method} {hargs} {body} --max-time {timeout} -D /tmp/kiln-h.$$ -o /tmp/kiln-b.$$ "
        f"-w '%{{http_code}}' {shlex.quote(url)}"
    )
    if data_cmd:
        curl = f"{data_cmd} | {curl}"
    script = (
        f"code=$({curl}); printf '%s\\n' \"$code\"; base64 -w0 /tmp/kiln-h.$$ 2>/dev/null; echo; "
        f"head -c 200000 /tmp/kiln-b.$$ 2>/dev/null | base64 -w0; echo; rm -f /tmp/kiln-h.$$ /tmp/kiln-b.$$"
    )
    res = host.run(script)
    lines = res.stdout.split("\n")
    try:
        status = int(lines[0].strip() or 0)
    except ValueError:
        status = 0
    raw_h = base64.b64decode(lines[1]).decode("latin-1") if len(lines) > 1 else ""
    body = base64.b64decode(lines[2]).decode("utf-8", "replace") if len(lines) > 2 else ""
    # keep the last header block (after redirects/100-continue)
    blocks = [b for b in re.split(r"\r?\n\r?\n", raw_h) if b.strip()]
    last = blocks[-1] if blocks else ""
    parsed = {}
    for hl in last.splitlines()[1:]:
        if ":" in hl:
            k, v = hl.split(":", 1)
            parsed[k.strip().lower()] = v.strip()
    return Response(status, parsed, body, last)


def http_ok_cond(path: str, scheme: str = "http", timeout: int = 5) -> str:
    """A shell condition, true when nginx on the target answers `path` with 200 (as http() asks it)."""
    port = 443 if scheme == "https" else 80
    url = shlex.quote(f"{scheme}://127.0.0.1:{port}{path}")
    return f"[ \"$(curl -sk -o /dev/null -H 'Host: localhost' --max-time {timeout} -w '%{{http_code}}' {url})\" = 200 ]"


def wait_http_ok(host, path: str = "/readyz", timeout: float = 10, scheme: str = "http") -> Response:
    """Wait (polling inside the target) until `path` answers 200; returns that answer as http() reads it."""
    deadline = time.monotonic() + timeout

    def evidence() -> str:
        return (
            f"{http(host, path, scheme=scheme, timeout=5)}\n{supervisor_text(host)}\n"
            f"--- {WEB_LOG} ---\n{tail(host, WEB_LOG, 20)}"
        )

    while True:
        left = deadline - time.monotonic()
        wait_in_guest(host, http_ok_cond(path, scheme), max(1.0, left), f"{scheme} {path} -> 200", evidence=evidence)
        r = http(host, path, scheme=scheme, timeout=5)
        if r.status == 200:
            return r
        if time.monotonic() >= deadline:
            raise AssertionError(f"{scheme} {path} answered 200 once, then {r.status}\n{evidence()}")


# --- env file, Redis, Python in the release venv ------------------------------------------------------------------


def env_file(host) -> dict[str, str]:
    text = out(host, f"cat {ENV_FILE}")
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, v = line.split("=", 1)
        env[k.strip().removeprefix("export ").strip()] = v.strip().strip('"').strip("'")
    return env


def redis_conn(host, which: str) -> tuple[str, int, str]:
    url = urlparse(env_file(host)["CACHE_URL" if which == "cache" else "QUEUE_URL"])
    return url.hostname or "127.0.0.1", url.port or (6379 if which == "cache" else 6380), url.password or ""


def redis_cli(host, which: str, args: str, auth: bool = True, ok=(0,)):
    h, p, pw = redis_conn(host, which)
    pre = f"REDISCLI_AUTH={shlex.quote(pw)} " if auth else ""
    return sh(host, f"{pre}redis-cli --no-raw -h {h} -p {p} {args}", ok=ok)


def redis_delete(host, which: str, pattern: str) -> None:
    """Delete a test's keys (redis-cli --scan --pattern, DEL in batches) with the instance's password, and fail if
    any is left: a fill left behind (a full queue Redis refuses every write) would fail every suite after it."""
    h, p, pw = redis_conn(host, which)
    cli = f"REDISCLI_AUTH={shlex.quote(pw)} redis-cli -h {h} -p {p}"
    scan = f"{cli} --scan --pattern {shlex.quote(pattern)}"
    sh(host, f"{scan} | REDISCLI_AUTH={shlex.quote(pw)} xargs -r -n 500 redis-cli -h {h} -p {p} DEL >/dev/null")
    left = out(host, f"{scan} | head -3")
    assert not left, f"redis {which}: keys {pattern} still there after DEL: {left}"


def redis_info(host, which: str, section: str) -> dict[str, str]:
    text = redis_cli(host, which, f"INFO {section}").stdout
    info = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            info[k.strip().strip('"')] = v.strip().strip('"')
    return info


# The app's commands run as on the server: as the kiln user, with the instance's settings and nothing of the caller's
# environment. Followed by more VAR=value words and the command.
AS_APP = (
    f"runuser -u kiln -- env -i PATH=/usr/bin:/bin HOME=/srv/kiln LANG=C.UTF-8 KILN_ENV_FILE={ENV_FILE} "
    f"PYTHONPATH={APP_DIR}"
)


def app_python(host, code: str, timeout: int = 120, ok=(0,), setup: bool = True):
    """Run Python with Django set up, as the kiln user in the release venv. Returns the last JSON line printed.
    setup=False: the settings only, no django.setup(), which imports every installed app (2.1-2.4 s of a 3.8-4.2 s
    call on the TCG VM), for code that reads settings but uses no model."""
    prelude = "import json, os, sys, time\nos.environ.setdefault('DJANGO_SETTINGS_MODULE', 'kiln.settings')\n"
    if setup:
        prelude += "import django\ndjango.setup()\n"
    b64 = base64.b64encode((prelude + code).encode()).decode()
    cmd = (
        f"cd {APP_DIR} && echo {b64} | base64 -d > /tmp/kiln-py.$$ && chmod 0644 /tmp/kiln-py.$$ && "
        f"{AS_APP} timeout {timeout} {VENV_PY} /tmp/kiln-py.$$; rc=$?; rm -f /tmp/kiln-py.$$; exit $rc"
    )
    res = sh(host, cmd, ok=ok)
    for line in reversed(res.stdout.strip().splitlines()):
        if line.startswith("{") or line.startswith("["):
            return json.loads(line)
    return None


@dataclass(frozen=True)
class AppUser:
    """A Django user of the app on the target: writes and exports need one (reads are public)."""

    username: str
    password: str


@contextlib.contextmanager
def app_user(host, timeout: int = 120) -> Iterator[AppUser]:
    """A new Django superuser on the target for the with-block, made as an operator makes one (`manage.py
    createsuperuser --noinput`, as the app's user with the instance's settings) and deleted afterwards: the suites
    also run against real servers."""
    user = AppUser(f"kiln-infra-{secrets.token_hex(4)}", secrets.token_urlsafe(18))
    sh(
        host,
        f"cd {APP_DIR} && {AS_APP} DJANGO_SUPERUSER_PASSWORD={shlex.quote(user.password)} timeout {timeout} "
        f"{VENV_PY} manage.py createsuperuser --noinput --username {user.username} --email {user.username}@example.com",
    )
    try:
        yield user
    finally:
        app_python(
            host,
            "from django.contrib.auth import get_user_model\n"
            f"get_user_model().objects.filter(username={user.username!r}).delete()\n",
        )


# A request that makes the app check a password (HTTP Basic, a login form) runs Django's PBKDF2 with its 1,000,000
# iterations: 0.56 s of CPU natively, 6-15 s under TCG on our slower machines (ci21: three such requests outlasted
# a 10-15 s bound). Such requests get this bound instead; it bounds a hang, it times nothing.
PASSWORD_CHECK_TIMEOUT = 90


def http_as(host, user: AppUser, path: str, headers: dict[str, str] | None = None, **kw) -> Response:
    """http() as `user`, with HTTP Basic credentials (the API's way in for scripts)."""
    token = base64.b64encode(f"{user.username}:{user.password}".encode()).decode()
    kw.setdefault("timeout", PASSWORD_CHECK_TIMEOUT)
    return http(host, path, headers={**(headers or {}), "Authorization": f"Basic {token}"}, **kw)


def post_record(host, user: AppUser | None, title: str, body: str = "x") -> Response:
    """POST a new record to the API as `user` (anonymously when None)."""
    data = shlex.quote(json.dumps({"title": title, "body": body}))
    kw = {"method": "POST", "headers": {"Content-Type": "application/json"}, "data_cmd": f"printf '%s' {data}"}
    return http(host, "/api/records/", **kw) if user is None else http_as(host, user, "/api/records/", **kw)


def boot_id(host) -> str:
    return out(host, "cat /proc/sys/kernel/random/boot_id")


# --- Lynis, run from this machine over ssh (tests/hardening/lynis.sh) ---------------------------------------------


def ssh_target(config, host=None) -> tuple[list[str], str]:
    """(ssh options, destination) for `host` (a testinfra host; the first of --hosts when None)."""
    opts = ["-F", config.option.ssh_config] if config.option.ssh_config else []
    if host is None:
        import testinfra

        host = testinfra.get_host(config.option.hosts.split(",")[0], ssh_config=config.option.ssh_config)
    h = host.backend.host
    return opts, f"{h.user}@{h.name}" if h.user else h.name


LYNIS_BG = str(Path(__file__).resolve().parents[2] / "tests" / "hardening" / "lynis-bg.sh")


class LynisRun:
    """An audit by tests/hardening/lynis-bg.sh in OUTDIR: started here (`start`) or by another process (`attach`).

    The audit takes ~29 min in a TCG guest (fork/exec-bound: 70-120 ms per process there) and only reads the system,
    so it runs in the background: the session starts it on its own VM right after the VM is up and lets the suites
    ordered before its test (conftest.ORDER) run meanwhile, or `make test` has the boot check start it on the
    production image (tests/image/boot-check.sh, KILN_LYNIS_BG). test_lynis_hardening_index_meets_target collects
    it with result(); lynis-bg.sh bounds it (LYNIS_TIMEOUT).
    """

    def __init__(self, outdir: str):
        self.outdir = outdir

    @classmethod
    def start(cls, ssh_opts: list[str], dest: str, outdir: str) -> LynisRun:
        subprocess.run(
            [LYNIS_BG, "start", outdir, f"ssh:{dest}"],
            check=True,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "LYNIS_SSH_OPTS": " ".join(ssh_opts)},
        )
        return cls(outdir)

    @classmethod
    def attach(cls, outdir: str) -> LynisRun:
        return cls(outdir)

    def hold(self, held: bool) -> str:
        """Halt (True) or continue (False) the audited VM, where its starter made that possible (lynis-bg.sh
        pause|resume: the boot check's instance b; a no-op for an audit of the suites' own VM). Returns what it said."""
        verb = "pause" if held else "resume"
        res = subprocess.run([LYNIS_BG, verb, self.outdir], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        out = (res.stdout + res.stderr).strip()
        return out if res.returncode == 0 else f"lynis-bg.sh {verb} failed (rc {res.returncode}): {out}"

    def result(self) -> tuple[int, str, float]:
        """(exit code of lynis-bg.sh wait: lynis.sh's, 124 when the bound stopped it; output; seconds since start)."""
        self.hold(False)
        res = subprocess.run([LYNIS_BG, "wait", self.outdir], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        try:
            with open(os.path.join(self.outdir, "started")) as f:
                took = time.time() - int(f.read().strip())
        except (OSError, ValueError):
            took = float("nan")
        return res.returncode, res.stdout + res.stderr, took

    def stop(self):
        subprocess.run([LYNIS_BG, "stop", self.outdir], check=False, stdin=subprocess.DEVNULL)


@contextlib.contextmanager
def overrides_restored(host, always: bool = False) -> Iterator[None]:
    """The operator's overrides as they were before the with-block, put back after it whatever happened there, and
    applied again (kiln-firstboot --reconfigure: a restart of the stack, ~35-55 s under TCG) when the instance env is
    not what it was, or always (a block that applied overrides whose effect is more than the env file)."""
    had = host.file(OVERRIDES).exists
    saved = out(host, f"cat {OVERRIDES}") if had else ""
    unstamped = f"grep -v '^# Generated by' {ENV_FILE}"
    env_before = out(host, unstamped)
    try:
        yield
    finally:
        if had:
            sh(host, f"printf '%s\\n' {shlex.quote(saved)} >{OVERRIDES}")
        else:
            sh(host, f"rm -f {OVERRIDES}")
        if always or out(host, unstamped) != env_before:
            sh(host, "kiln-firstboot --reconfigure", timeout=600)
            wait_http_ok(host, "/readyz", timeout=120)


def prom_samples(text: str) -> dict[str, float]:
    """{'name{labels}': value} of a Prometheus text-format exposition (a scrape, or one of Kiln's textfiles)."""
    seen = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            seen[key] = float(value)
    return seen
