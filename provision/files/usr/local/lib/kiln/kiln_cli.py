#!/usr/bin/env python3
"""kiln: the operator's command on a Kiln server (/usr/local/sbin/kiln runs this file with the server's python3).

One table, COMMANDS, names every subcommand with its arguments and one line of help: `kiln help` prints it, the
dispatcher checks the arguments against it, the README's "Operating the server" table is generated from it
(`python3 provision/files/usr/local/lib/kiln/kiln_cli.py docs`) and tests/tools/test_kiln_cli.py checks all three.
Most subcommands hand over to the tool that does the work (kiln-release, kiln-firstboot, kiln-letsencrypt,
kiln-backup) and pass its exit status on; `status` reads the server's state with Kiln's own checks: the readiness
check of kiln_ready.py (imported), disk_check and reboot_pending of lib/common.sh (run), supervisord over its socket,
systemd. Its unit lists are the ones the infra suites use (tests/infra/kilnlib.py imports this module).

Standard library only (Python 3.11+: the host's tests import it too).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

LIB = Path(__file__).resolve().parent  # /usr/local/lib/kiln on the server, provision/files/usr/local/lib/kiln here
sys.path.insert(0, str(LIB))
import kiln_ready  # noqa: E402 - beside this file, wherever it is

SBIN = Path(os.environ.get("KILN_SBIN", "/usr/local/sbin"))
ENV_FILE = Path("/etc/kiln/kiln.env")
APP_ENV = Path("/srv/kiln/current/kiln-app.env")
CURRENT = Path("/srv/kiln/current")
RELEASE_STAMP = Path("/etc/kiln/release")
STATUS_DIR = Path("/var/lib/kiln/status")  # kiln-backup writes backup.json and restore-test.json here
SUPERVISOR_SOCK = "/run/supervisor.sock"
# While this file exists nginx answers every request but the health probes with the 50x page, 503 and Retry-After
# (/etc/nginx/snippets/kiln-maintenance.conf tests for it at each request: no reload needed, and it outlives reboots).
# nginx's workers (www-data) stat it: it is in /var/lib itself, not in /var/lib/kiln (0750 root:kiln).
MAINTENANCE_FLAG = Path("/var/lib/kiln-maintenance")
MAINTENANCE_SNIPPET = Path("/etc/nginx/snippets/kiln-maintenance.conf")
LOG_LINES = 200
REPLICA_LAG_WARN = 300  # seconds a replica may lag before kiln status warns

# The units every Kiln server runs (DB_SERVICE of the distro profile: mariadb.service on Debian), active at all times.
CORE_UNITS = ["nginx.service", "{db}", "redis-server@cache.service", "redis-server@queue.service", "supervisor.service"]
# First boot in three stages (kiln-firstboot): oneshots that stay active once done; never failed.
FIRSTBOOT_UNITS = ["kiln-firstboot-secrets.service", "kiln-firstboot.service", "kiln-firstboot-db.service"]
# Kiln's timers (the contract's kiln-app-*.timer are found at run time): active.
TIMERS = ["kiln-retention.timer"]

# Mail backends of django-environ's EMAIL_URL that deliver nothing to anyone.
UNDELIVERED_MAIL = {"consolemail", "filemail", "memorymail", "dummymail"}

EXIT_OK, EXIT_DEGRADED, EXIT_USAGE, EXIT_NOT_READY = 0, 1, 2, 3
EXIT_CODES = [
    (EXIT_OK, "ok: all is well, the command did its work"),
    (EXIT_DEGRADED, "degraded (status: disk, a pending reboot, a stopped timer, a failed backup) or it failed"),
    (EXIT_USAGE, "usage: an unknown subcommand or wrong arguments"),
    (EXIT_NOT_READY, "not ready (status): a Kiln unit or program is down or failed, or the readiness check fails"),
]


def core_units(db_service: str = "mariadb.service") -> list[str]:
    return [u.format(db=db_service) for u in CORE_UNITS]


class Usage(Exception):
    """Wrong arguments: the usage goes to stderr, exit 2."""


# ---------------------------------------------------------------------------------------------------------------------
# helpers


def common_sh() -> Path:
    """lib/common.sh: installed beside this file on the server, provision/lib/common.sh in the repository."""
    repo = LIB.parents[4] if len(LIB.parents) > 4 else LIB  # provision/ of provision/files/usr/local/lib/kiln
    for path in (LIB / "lib" / "common.sh", repo / "lib" / "common.sh"):
        if path.is_file():
            return path
    raise SystemExit(f"kiln: missing lib/common.sh beside {LIB}")


def common(script: str, *args: str, distro: bool = False) -> subprocess.CompletedProcess:
    """Run `script` in bash with lib/common.sh (the server's one implementation of disk_check, reboot_pending...)
    and, with distro, the distro profile (DB_SERVICE...) loaded; args are $1..."""
    lib = common_sh()
    env = {**os.environ, "KILN_PROVISION_DIR": str(lib.parent.parent)}
    cmd = ["bash", "-c", f'. "$0" && {"load_distro && " if distro else ""}{script}', str(lib), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)


def run(cmd: list[str]) -> int:
    """Run another tool: its output as it comes, its exit status."""
    try:
        return subprocess.run(cmd, check=False).returncode
    except FileNotFoundError:
        print(f"kiln: {cmd[0]} is not installed", file=sys.stderr)
        return EXIT_DEGRADED
    except KeyboardInterrupt:
        return 130


def hand_over(cmd: list[str]) -> int:
    """Become the tool (exec): its output, its signals (Ctrl-C, a timeout's TERM reach it, not a parent that would
    leave it running), its exit status. Returns only when it cannot be run."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(cmd[0], cmd)  # noqa: S606 - a list of words, no shell
    except OSError as exc:
        print(f"kiln: cannot run {cmd[0]}: {exc.strerror}", file=sys.stderr)
    return EXIT_DEGRADED


def read_kv(path: Path) -> dict[str, str]:
    try:
        return kiln_ready.read_env(path)
    except OSError:
        return {}


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 10):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


class UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str):
        super().__init__()
        self.unix_path = path

    def make_connection(self, host):
        return UnixHTTPConnection(self.unix_path)


def supervisor(sock: str = SUPERVISOR_SOCK):
    return xmlrpc.client.ServerProxy("http://localhost/RPC2", transport=UnixTransport(sock)).supervisor


# ---------------------------------------------------------------------------------------------------------------------
# status: each part returns its findings; Report sorts them into problems (exit 3), warnings (1) and notices (loud,
# no effect on the exit status)


@dataclass
class Report:
    parts: dict[str, object] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)

    @property
    def exit(self) -> int:
        return EXIT_NOT_READY if self.problems else EXIT_DEGRADED if self.warnings else EXIT_OK

    @property
    def state(self) -> str:
        return {EXIT_OK: "ok", EXIT_DEGRADED: "degraded", EXIT_NOT_READY: "not ready"}[self.exit]


def unit_states(units: list[str]) -> dict[str, dict[str, str]]:
    """systemctl show of the units in one call: {unit: {LoadState, ActiveState, SubState, Result}}."""
    props = "Id,LoadState,ActiveState,SubState,Result"
    res = subprocess.run(["systemctl", "show", f"--property={props}", *units], capture_output=True, text=True)
    states, cur = {}, {}
    for line in [*res.stdout.splitlines(), ""]:
        if not line.strip():
            if cur.get("Id"):
                states[cur["Id"]] = cur
            cur = {}
            continue
        k, _, v = line.partition("=")
        cur[k] = v
    return states


def kiln_unit_names() -> list[str]:
    """The units named kiln-* systemd knows (first boot, retention, the contract's timers and their services...)."""
    res = subprocess.run(
        ["systemctl", "list-units", "--all", "--plain", "--no-legend", "--full", "kiln-*"],
        capture_output=True,
        text=True,
    )
    return [line.split()[0] for line in res.stdout.splitlines() if line.strip()]


def judge_units(report: Report, states: dict[str, dict[str, str]], core: list[str], failed: list[str]) -> None:
    rows = []
    for unit in dict.fromkeys([*core, *FIRSTBOOT_UNITS, *TIMERS, *sorted(states)]):
        st = states.get(unit, {})
        load, active, sub = st.get("LoadState", "not-found"), st.get("ActiveState", "unknown"), st.get("SubState", "")
        state = f"{active} ({sub})" if sub else active
        degraded = False
        if load != "loaded":
            ok, why = False, f"{unit} is {load}"
        elif unit in core:
            ok, why = active == "active", f"{unit} is {state}"
        elif unit.endswith(".timer"):  # the app serves without it, but what it schedules does not happen
            ok, why = active == "active", f"{unit} is {state}: what it schedules does not run (systemctl start {unit})"
            degraded = active != "failed"
        else:  # oneshots: done, waiting, or running now; never failed
            ok, why = active != "failed", f"{unit} failed"
        rows.append({"unit": unit, "state": state, "ok": ok})
        if not ok:
            (report.warnings if degraded else report.problems).append(why)
    for unit in failed:
        if unit not in states:
            rows.append({"unit": unit, "state": "failed", "ok": False})
            report.problems.append(f"{unit} failed")
    report.parts["units"] = rows


def status_units(report: Report, core: list[str]) -> None:
    names = [*core, *FIRSTBOOT_UNITS, *TIMERS, *kiln_unit_names()]
    res = subprocess.run(
        ["systemctl", "list-units", "--state=failed", "--plain", "--no-legend", "--full"],
        capture_output=True,
        text=True,
    )
    failed = [line.split()[0] for line in res.stdout.splitlines() if line.strip()]
    judge_units(report, unit_states(list(dict.fromkeys(names))), core, failed)


def judge_programs(report: Report, infos: list[dict] | None, workers: bool, on_demand: set[str] = frozenset()) -> None:
    """Every program RUNNING, except one supervisor does not start by itself (autostart=false: kiln-web-next, which
    a deploy starts) while it is not running: STOPPED or EXITED is its rest."""
    rows = []
    if infos is None:
        report.problems.append("supervisord does not answer on its socket")
        report.parts["programs"] = rows
        return
    names = []
    for i in infos:
        name = i["name"] if i["group"] == i["name"] else f"{i['group']}:{i['name']}"
        names.append(name)
        ok = i["statename"] == "RUNNING" or (name in on_demand and i["statename"] in ("STOPPED", "EXITED"))
        rows.append({"program": name, "state": i["statename"], "ok": ok, "detail": i.get("description", "")})
        if not ok:
            report.problems.append(f"program {name} is {i['statename']}")
    if "kiln-web" not in names:
        report.problems.append("program kiln-web is missing")
    if workers and not any(n.startswith("kiln-worker:") for n in names):
        report.problems.append("the contract's worker groups have no program (kiln-worker:*)")
    report.parts["programs"] = rows


def status_programs(report: Report, app: dict) -> None:
    try:
        rpc = supervisor()
        infos = rpc.getAllProcessInfo()
        on_demand = {
            c["name"] if c["group"] == c["name"] else f"{c['group']}:{c['name']}"
            for c in rpc.getAllConfigInfo()
            if not c.get("autostart", True)
        }
    except (OSError, xmlrpc.client.Error):
        infos, on_demand = None, set()
    judge_programs(report, infos, bool(app.get("KILN_APP_WORKERS")), on_demand)


def judge_ready(report: Report, results: list) -> None:
    report.parts["ready"] = [asdict(r) for r in results]
    for r in results:
        if not r.ok:
            report.problems.append(f"not ready: {r.name}: {r.detail}")


DISK_LINE = re.compile(
    r"disk (?P<target>\S+) \((?P<fs>[^)]*)\): (?P<used>\d+)% used, (?P<free>\S+) free of (?P<size>\S+); "
    r"inodes (?:(?P<inodes>\d+)% used|-)"
)


def local_mounts(mounts: Path = Path("/proc/self/mounts")) -> list[str]:
    """Mount points of the file systems on block devices (/, /boot, /srv...), / first, /srv always."""
    points = ["/", "/srv"]
    for line in mounts.read_text().splitlines():
        dev, point = line.split()[:2]
        point = point.replace("\\040", " ")
        if dev.startswith("/dev/") and " " not in point and not point.startswith(("/snap/", "/run/", "/proc", "/sys")):
            points.append(point)
    return list(dict.fromkeys(points))


def judge_disk(report: Report, paths: list[str]) -> None:
    """disk_check (lib/common.sh: the threshold, the format) of each file system; its warnings are degraded."""
    res = common('disk_check "$@"', *paths)
    rows = []
    for line in (res.stdout + res.stderr).splitlines():
        m = DISK_LINE.search(line)
        if not m:
            continue
        warning = "WARNING" in line
        row = {**m.groupdict(), "warning": warning, "line": line.strip().removeprefix("WARNING: ")}
        row["used"] = int(row["used"])
        row["inodes"] = int(row["inodes"]) if row["inodes"] else None
        rows.append(row)
        if warning:
            report.warnings.append(row["line"])
    if not rows:
        report.warnings.append(f"disk_check reported nothing: {res.stderr.strip()[-300:]}")
    report.parts["disk"] = rows


def status_reboot(report: Report) -> None:
    res = common("reboot_pending")
    pending = res.returncode == 0
    report.parts["reboot"] = {"pending": pending, "why": res.stdout.strip()}
    if pending:
        report.warnings.append(f"reboot pending: {res.stdout.strip()}")


def mail_backend(env: dict[str, str]) -> tuple[str, bool]:
    """(the app's e-mail backend as the settings choose it from the instance env, whether it delivers mail): an
    ESP through django-anymail when ANYMAIL_ESP and ANYMAIL_API_KEY are set, else EMAIL_URL (console without one)."""
    esp, key = env.get("ANYMAIL_ESP", "").strip().lower(), env.get("ANYMAIL_API_KEY", "")
    if esp and key:
        return f"anymail: {esp}", True
    url = urlsplit(env.get("EMAIL_URL", "") or "consolemail://")
    if url.scheme in UNDELIVERED_MAIL or not url.scheme:
        why = f" (ANYMAIL_ESP={esp} has no ANYMAIL_API_KEY)" if esp else ""
        return f"{url.scheme or 'consolemail'}: mail is printed to the app's log, nobody receives it{why}", False
    where = url.hostname or ""
    return f"{url.scheme}://{where}{f':{url.port}' if url.port else ''}", True


def judge_mail(report: Report, env: dict[str, str]) -> None:
    backend, delivers = mail_backend(env)
    report.parts["mail"] = {"backend": backend, "delivers": delivers}
    if not delivers:
        report.notices.append(
            f"MAIL GOES NOWHERE: {backend}; set EMAIL_URL (smtp+tls://...) or ANYMAIL_ESP + ANYMAIL_API_KEY "
            "in /etc/kiln/overrides.env, then: kiln reconfigure"
        )


def read_record(path: Path) -> dict | None:
    """A kiln-backup status record: {ok, finished_at, seconds, snapshot, error}; None when absent."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return {"ok": False, "error": f"unreadable {path}: {exc}"}
    if not isinstance(data, dict) or not isinstance(data.get("ok"), bool):
        return {"ok": False, "error": f"{path} is not a status record (no boolean 'ok')"}
    return data


def judge_backups(report: Report, env: dict[str, str], status_dir: Path) -> None:
    """Backups OFF (loudly, not degraded) without KILN_BACKUP_REPOSITORY, or when kiln-backup's last run said OFF (a
    repository without its password...); else each record: never (no file), ok, or FAILED (degraded)."""
    repo = env.get("KILN_BACKUP_REPOSITORY", "")
    recs = {
        "backup": ("last backup", read_record(status_dir / "backup.json")),
        "restore_test": ("last restore test", read_record(status_dir / "restore-test.json")),
    }
    off = "" if repo else "no KILN_BACKUP_REPOSITORY in the instance env"
    last = recs["backup"][1]
    if repo and last and last.get("backups") == "OFF":
        off = str(last.get("error") or "kiln-backup's last run found them OFF")
    part: dict[str, object] = {"configured": not off, "off": off or None}
    if off:
        report.notices.append(f"BACKUPS OFF: {off} (set up: /etc/kiln/overrides.env, then kiln reconfigure)")
    for key, (what, rec) in recs.items():
        part[key] = rec
        if rec is None:
            if not off:
                report.notices.append(f"{what}: never")
        elif not rec["ok"] and rec.get("backups") != "OFF":
            report.warnings.append(
                f"{what} FAILED {rec.get('finished_at') or ''}: {rec.get('error') or 'no error given'}"
            )
    report.parts["backups"] = part


def record_line(rec: dict | None) -> str:
    if rec is None:
        return "never"
    if not rec["ok"]:
        return f"FAILED {rec.get('finished_at') or ''}: {rec.get('error') or 'no error given'}"
    return f"ok {rec.get('finished_at')} ({rec.get('seconds')} s, snapshot {rec.get('snapshot')})"


def replication_status(role: str) -> dict[str, str]:
    """The local database's side of a cluster's replication: a replica's SHOW SLAVE STATUS fields, a data host's
    connected replicas (SHOW SLAVE HOSTS)."""
    client = shutil.which("mariadb") or "mysql"
    query = "SHOW SLAVE STATUS\\G" if role == "data-replica" else "SHOW SLAVE HOSTS"
    res = subprocess.run([client, "-B", "-e", query], capture_output=True, text=True, check=False)
    if res.returncode:
        return {"error": (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]}
    if role != "data-replica":
        hosts = [line.split("\t")[1] for line in res.stdout.splitlines()[1:] if "\t" in line]
        return {"replicas": ", ".join(hosts) or "none connected"}
    fields = {k: v.strip() for k, _, v in (line.strip().partition(":") for line in res.stdout.splitlines())}
    wanted = ("Master_Host", "Slave_IO_Running", "Slave_SQL_Running", "Seconds_Behind_Master", "Gtid_IO_Pos")
    return {k: fields.get(k, "") for k in (*wanted, "Last_IO_Error", "Last_SQL_Error")} if fields else {}


def judge_replication(report: Report, role: str) -> None:
    if role not in ("data", "data-replica"):
        return
    rep = replication_status(role)
    report.parts["replication"] = rep
    if "error" in rep:
        report.problems.append(f"replication status: {rep['error']}")
    elif role == "data-replica":
        if not rep:
            report.problems.append("replication: not set up on this replica (kiln-backup seed-replica)")
        elif rep["Slave_IO_Running"] != "Yes" or rep["Slave_SQL_Running"] != "Yes":
            why = rep["Last_IO_Error"] or rep["Last_SQL_Error"] or "stopped"
            running = f"IO {rep['Slave_IO_Running']}, SQL {rep['Slave_SQL_Running']}"
            report.problems.append(f"replication from {rep['Master_Host']}: {running}: {why}")
        elif rep["Seconds_Behind_Master"].isdigit() and int(rep["Seconds_Behind_Master"]) > REPLICA_LAG_WARN:
            report.warnings.append(f"replication: {rep['Seconds_Behind_Master']} s behind {rep['Master_Host']}")


def release_info() -> dict[str, str]:
    stamp = read_kv(RELEASE_STAMP)
    current = os.path.basename(os.readlink(CURRENT)) if CURRENT.is_symlink() else ""
    return {"current": current, "image": stamp.get("KILN_VERSION", ""), "commit": stamp.get("KILN_COMMIT", "")}


def collect(env_file: Path = ENV_FILE, app_file: Path = APP_ENV, status_dir: Path = STATUS_DIR) -> Report:
    report = Report()
    env = read_kv(env_file)
    try:
        app = kiln_ready.read_app_env(app_file)
    except OSError:
        app = {}
    rel = release_info()
    report.parts["release"] = rel
    if not rel["current"]:
        report.problems.append(f"no current release ({CURRENT})")
    # The units of this host's role (common.sh: role_units; all of them on an all-in-one server), its programs where
    # it runs supervisor, and readiness: the app through nginx where it serves the web, its data services elsewhere
    # (a worker host), none on a host without the app (a cluster's data host, its load balancer).
    role = env.get("KILN_ROLE") or "all"
    core = common("role_units", distro=True).stdout.split() or core_units()
    status_units(report, core)
    if "supervisor.service" in core:
        status_programs(report, app)
    if role in ("all", "web", "worker"):
        judge_ready(report, kiln_ready.run_checks(env_file, app_file, data_only=role == "worker"))
    report.parts["role"] = role
    judge_replication(report, role)
    judge_disk(report, local_mounts())
    status_reboot(report)
    judge_mail(report, env)
    judge_backups(report, env, status_dir)
    report.parts["maintenance"] = maintenance_state()
    if report.parts["maintenance"]["on"]:
        report.notices.append(f"MAINTENANCE ON since {report.parts['maintenance']['since']}: visitors get 503")
    return report


def render_text(report: Report) -> str:
    p = report.parts
    mark = {True: "ok  ", False: "FAIL"}
    out = []
    rel = p.get("release", {})
    image = f"image {rel.get('image') or '?'}, commit {rel.get('commit') or '?'}"
    out.append(f"release      {rel.get('current') or '(none)'}  ({image})")
    out.append("units")
    out += [f"  {mark[r['ok']]} {r['unit']:<40} {r['state']}" for r in p.get("units", [])]
    out.append("programs")
    out += [f"  {mark[r['ok']]} {r['program']:<40} {r['state']}  {r['detail']}" for r in p.get("programs", [])]
    out.append("readiness")
    out += [f"  {mark[r['ok']]} {r['name']:<10} {r['ms']:6.0f} ms  {r['detail']}" for r in p.get("ready", [])]
    rep = p.get("replication")
    if rep is not None:
        shown = {k: v for k, v in rep.items() if v and not k.startswith("Last_")} or {"replication": "not set up"}
        out.append("replication  " + ", ".join(f"{k} {v}" for k, v in shown.items()))
    out.append("disk")
    out += [f"  {'WARN' if r['warning'] else 'ok  '} {r['line']}" for r in p.get("disk", [])]
    reboot = p.get("reboot", {})
    out.append(f"reboot       {'PENDING: ' + reboot['why'] if reboot.get('pending') else 'none pending'}")
    mail = p.get("mail", {})
    out.append(f"mail         {mail.get('backend')}")
    b = p.get("backups", {})
    out.append(f"backups      {'on' if b.get('configured') else 'OFF'}")
    out.append(f"  last backup        {record_line(b.get('backup'))}")
    out.append(f"  last restore test  {record_line(b.get('restore_test'))}")
    m = p.get("maintenance", {})
    out.append(f"maintenance  {'ON since ' + str(m.get('since')) if m.get('on') else 'off'}")
    for n in report.notices:
        out.append(f"!!! {n}")
    for w in report.warnings:
        out.append(f"WARNING: {w}")
    for pr in report.problems:
        out.append(f"PROBLEM: {pr}")
    out.append(f"=> {report.state.upper()} (exit {report.exit})")
    return "\n".join(out)


def cmd_status(args: list[str]) -> int:
    if args not in ([], ["--json"]):
        raise Usage("status takes --json at most")
    report = collect()
    if args:
        doc = {"state": report.state, "exit": report.exit, **report.parts}
        doc |= {"problems": report.problems, "warnings": report.warnings, "notices": report.notices}
        print(json.dumps(doc, indent=2, default=str))
    else:
        print(render_text(report))
    return report.exit


# ---------------------------------------------------------------------------------------------------------------------
# maintenance


def maintenance_state(flag: Path = MAINTENANCE_FLAG) -> dict[str, object]:
    try:
        return {"on": True, "since": flag.read_text(encoding="utf-8").strip() or "?"}
    except FileNotFoundError:
        return {"on": False, "since": None}


def probe_page() -> tuple[int, str | None]:
    """GET a page no app serves through nginx's HTTPS server: (status, Retry-After)."""
    conn = http.client.HTTPSConnection("127.0.0.1", 443, timeout=10, context=ssl._create_unverified_context())  # noqa: S323
    try:
        conn.request("GET", "/kiln-maintenance-probe/", headers={"Host": "localhost", "User-Agent": "kiln"})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Retry-After")
    finally:
        conn.close()


def cmd_maintenance(args: list[str]) -> int:
    if args not in (["on"], ["off"]):
        raise Usage("maintenance takes on or off")
    if not MAINTENANCE_SNIPPET.is_file():
        print(f"kiln: {MAINTENANCE_SNIPPET} is missing (provision/install.sh 60 installs it)", file=sys.stderr)
        return EXIT_DEGRADED
    state = maintenance_state()
    if args == ["on"]:
        if state["on"]:
            print(f"kiln: maintenance already on (since {state['since']})")
        else:
            who = os.environ.get("SUDO_USER") or "root"
            tmp = MAINTENANCE_FLAG.with_name(MAINTENANCE_FLAG.name + ".new")
            tmp.write_text(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} by {who}\n", encoding="utf-8")
            tmp.chmod(0o644)
            tmp.replace(MAINTENANCE_FLAG)
            print("kiln: maintenance on: every request but the health probes gets 503 and Retry-After")
    elif state["on"]:
        MAINTENANCE_FLAG.unlink()
        print("kiln: maintenance off")
    else:
        print("kiln: maintenance already off")
    # nginx tests the flag at every request: proven here rather than assumed.
    try:
        status, retry = probe_page()
    except OSError as exc:
        print(f"kiln: WARNING: nginx does not answer on 127.0.0.1:443 to confirm it: {exc}", file=sys.stderr)
        return EXIT_DEGRADED
    if (args == ["on"]) != (status == 503 and retry is not None):
        print(f"kiln: nginx does not show it: a page answered {status} (Retry-After: {retry})", file=sys.stderr)
        return EXIT_DEGRADED
    print(f"kiln: nginx confirms: a page answers {status}{f' with Retry-After: {retry}' if retry else ''}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------------------------
# logs


def cmd_logs(args: list[str]) -> int:
    follow = "-f" in args
    names = [a for a in args if a != "-f"]
    if len(names) > 1 or any(n.startswith("-") for n in names):
        raise Usage("logs takes [-f] and one UNIT or PROGRAM at most")
    n = str(LOG_LINES)
    if not names:
        db = common('printf %s "$DB_SERVICE"', distro=True).stdout.strip() or "mariadb.service"
        units = ["kiln-*", "nginx.service", db, "redis-server@*", "supervisor.service"]
        return hand_over(["journalctl", "--no-pager", "-n", n, *(["-f"] if follow else []), *[f"-u{u}" for u in units]])
    name = names[0]
    logfile = None
    try:
        for i in supervisor().getAllProcessInfo():
            full = i["name"] if i["group"] == i["name"] else f"{i['group']}:{i['name']}"
            if name in (full, i["name"]):
                logfile = i.get("stdout_logfile") or i.get("logfile")
                break
    except (OSError, xmlrpc.client.Error):
        pass
    if logfile:
        return hand_over(["tail", "-n", n, *(["-F"] if follow else []), logfile])
    return hand_over(["journalctl", "--no-pager", "-n", n, *(["-f"] if follow else []), "-u", name])


# ---------------------------------------------------------------------------------------------------------------------
# the table


@dataclass(frozen=True)
class Command:
    name: str
    args: str
    help: str
    min_args: int = 0
    max_args: int | None = 0  # None: any number

    @property
    def usage(self) -> str:
        return f"kiln {self.name}{' ' + self.args if self.args else ''}"


def delegate(*tool: str):
    def handler(args: list[str]) -> int:
        return hand_over([str(SBIN / tool[0]), *tool[1:], *args])

    return handler


def cmd_backup(verb: str):
    def handler(args: list[str]) -> int:
        tool = SBIN / "kiln-backup"
        if not tool.exists():
            print(f"kiln: backups not installed ({tool} is missing)", file=sys.stderr)
            return EXIT_DEGRADED
        return hand_over([str(tool), verb, *args])

    return handler


def cmd_reconfigure(args: list[str]) -> int:
    if args not in ([], ["--check"]):
        raise Usage("reconfigure takes --check at most")
    firstboot = str(SBIN / "kiln-firstboot")
    rc = run([firstboot, "--check"])
    if rc != 0:
        print("kiln: the overrides were not applied (above); nothing changed", file=sys.stderr)
        return EXIT_DEGRADED
    if args:
        return EXIT_OK
    return hand_over([firstboot, "--reconfigure"])


def cmd_help(args: list[str]) -> int:
    print(help_text())
    return EXIT_OK


COMMANDS = [
    Command(
        "status", "[--json]", "units, programs, readiness, release, disk, reboot, mail, backups, maintenance", 0, 1
    ),
    Command(
        "deploy",
        "SRC [VERSION]",
        "build a release (from a make release artifact, a directory or a git URL#REF), switch to it (kiln-release)",
        1,
        2,
    ),
    Command("rollback", "", "switch back to the previous release (kiln-release rollback)"),
    Command("releases", "", "the releases on this server, * marks the current one (kiln-release list)"),
    Command(
        "manage", "ARGS...", "manage.py ARGS of the current release, as the app's user with the instance env", 1, None
    ),
    Command(
        "reconfigure", "[--check]", "check /etc/kiln/overrides.env (keys, values, check --deploy), then apply it", 0, 1
    ),
    Command(
        "maintenance", "on|off", "503 + Retry-After for all but the health probes, until off (outlives reboots)", 1, 1
    ),
    Command("tls", "DOMAIN EMAIL", "a Let's Encrypt certificate for DOMAIN (kiln-letsencrypt)", 2, 2),
    Command(
        "role-env",
        "web|worker|data-replica",
        "on a cluster's data host: the overrides (user-data) of its web, worker or replica hosts (kiln-firstboot)",
        1,
        1,
    ),
    Command(
        "promote",
        "",
        "on a cluster's replica: end replication, make it writable and the cluster's data host (kiln-firstboot)",
    ),
    Command("backup", "", "back up now (kiln-backup backup)"),
    Command("restore", "[SNAPSHOT]", "restore SNAPSHOT, else the latest (kiln-backup restore)", 0, 1),
    Command(
        "logs",
        "[-f] [UNIT|PROGRAM]",
        f"the last {LOG_LINES} lines of a unit's journal or a program's log, -f follows",
        0,
        2,
    ),
    Command("help", "", "this help (also: kiln, kiln --help)"),
]
HANDLERS = {
    "status": cmd_status,
    "deploy": delegate("kiln-release", "deploy"),
    "rollback": delegate("kiln-release", "rollback"),
    "releases": delegate("kiln-release", "list"),
    "manage": delegate("kiln-release", "manage"),
    "reconfigure": cmd_reconfigure,
    "maintenance": cmd_maintenance,
    "tls": delegate("kiln-letsencrypt"),
    "role-env": delegate("kiln-firstboot", "role-env"),
    "promote": delegate("kiln-firstboot", "promote"),
    "backup": cmd_backup("backup"),
    "restore": cmd_backup("restore"),
    "logs": cmd_logs,
    "help": cmd_help,
}


def help_text() -> str:
    width = max(len(c.usage) for c in COMMANDS)
    lines = ["usage: kiln COMMAND [ARGS]   (root; the kiln-* commands it runs work as before)", "", "commands:"]
    lines += [f"  {c.usage:<{width}}  {c.help}" for c in COMMANDS]
    lines += ["", "exit status:"]
    lines += [f"  {code}  {what}" for code, what in EXIT_CODES]
    lines += [
        "  deploy, rollback, releases, manage, tls, role-env, promote, backup, restore, logs:"
        " the exit status of the tool they run"
    ]
    return "\n".join(lines)


def docs() -> str:
    """The README's table (README.md, "Operating the server: `kiln`"), from the same table as the help."""
    rows = ["| command | what |", "| --- | --- |"]
    rows += [f"| `{c.usage.replace('|', chr(92) + '|')}` | {c.help} |" for c in COMMANDS]  # \| in a table cell
    rows += ["", "| exit | meaning |", "| --- | --- |"]
    rows += [f"| {code} | {what} |" for code, what in EXIT_CODES]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("--help", "-h"):
        return cmd_help([])
    if argv[0] == "docs":  # for the README; not an operator's command
        print(docs())
        return EXIT_OK
    table = {c.name: c for c in COMMANDS}
    command = table.get(argv[0])
    args = argv[1:]
    try:
        if command is None:
            raise Usage(f"unknown command {argv[0]!r}")
        if len(args) < command.min_args or (command.max_args is not None and len(args) > command.max_args):
            raise Usage(f"{command.name} takes {command.args or 'no arguments'}")
        if command.name != "help" and os.geteuid() != 0:
            print(f"kiln: {command.name} must run as root: sudo kiln {shlex.join(argv)}", file=sys.stderr)
            return EXIT_DEGRADED
        return HANDLERS[command.name](args)
    except Usage as exc:
        usage = f"usage: {command.usage}" if command else help_text()
        print(f"kiln: {exc}\n{usage}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
