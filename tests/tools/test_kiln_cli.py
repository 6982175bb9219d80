"""The operator's command `kiln` (provision/files/usr/local/sbin/kiln, its program provision/files/usr/local/lib/kiln/
kiln_cli.py) without a server: the help and the README's table from the one table, usage errors, the hand-over to the
kiln-* tools, and `kiln status`'s judgement on fabricated inputs (a file system filled to 85 % in a mount namespace,
backup status records, the instance env's mail settings, unit and program states); the nginx snippet of
`kiln maintenance`. tests/infra/test_kiln_cli.py runs it on the VM.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_app_render import LIB, ROOT, load

KILN = ROOT / "provision" / "files" / "usr" / "local" / "sbin" / "kiln"
SITE = ROOT / "provision" / "files" / "etc" / "nginx" / "sites-available" / "kiln"
SNIPPET = ROOT / "provision" / "files" / "etc" / "nginx" / "snippets" / "kiln-maintenance.conf"


cli = load("kiln_cli", LIB / "kiln_cli.py")


def kiln(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run([str(KILN), *args], capture_output=True, text=True, env={**os.environ, **(env or {})})
    print(f"$ kiln {shlex.join(args)} -> {res.returncode}\n{res.stdout}{res.stderr}")
    return res


# --- the table: help, README, usage ----------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["help"], [], ["--help"]])
def test_help_lists_every_subcommand_of_the_table_and_the_exit_codes(args):
    res = kiln(*args)
    assert res.returncode == 0 and res.stderr == ""
    for c in cli.COMMANDS:
        assert re.search(rf"^  {re.escape(c.usage)} +{re.escape(c.help)}$", res.stdout, re.M), c
    for code, what in cli.EXIT_CODES:
        assert f"  {code}  {what}" in res.stdout
    names = {c.name for c in cli.COMMANDS}
    assert names == set(cli.HANDLERS), "a command of the table without a handler, or the reverse"
    assert {"status", "deploy", "rollback", "releases", "manage", "reconfigure", "maintenance", "tls", "backup"} < names
    assert {"restore", "logs", "help"} < names


def test_readme_shows_the_table_as_docs_generates_it():
    readme = (ROOT / "README.md").read_text()
    table = cli.docs()
    assert table in readme, f"README.md lacks the current table; paste `kiln_cli.py docs`:\n{table}"


@pytest.mark.parametrize(
    "args, said",
    [
        (["bogus"], "unknown command 'bogus'"),
        (["tls", "example.com"], "usage: kiln tls DOMAIN EMAIL"),
        (["maintenance", "maybe"], "usage: kiln maintenance on|off"),
        (["status", "--yaml"], "usage: kiln status [--json]"),
        (["rollback", "now"], "usage: kiln rollback"),
        (["manage"], "usage: kiln manage ARGS..."),
    ],
)
def test_a_wrong_command_or_arguments_print_the_usage_on_stderr_and_exit_2(args, said):
    res = kiln(*args)
    assert res.returncode == 2 and res.stdout == "" and said in res.stderr
    if args == ["bogus"]:
        assert "commands:" in res.stderr  # the whole help, for an unknown command


@pytest.fixture
def fake_sbin(tmp_path: Path) -> Path:
    """kiln-release and kiln-letsencrypt that record how they were called and exit 7."""
    for tool in ("kiln-release", "kiln-letsencrypt", "kiln-firstboot"):
        f = tmp_path / tool
        f.write_text(f'#!/bin/sh\necho "{tool} $*" >>"$(dirname "$0")/calls"\nexit 7\n')
        f.chmod(0o755)
    return tmp_path


pytestmark_root = pytest.mark.skipif(os.geteuid() != 0, reason="kiln runs its commands as root only")


@pytestmark_root
@pytest.mark.parametrize(
    "args, call",
    [
        (["deploy", "/src/app", "2.0"], "kiln-release deploy /src/app 2.0"),
        (["rollback"], "kiln-release rollback"),
        (["releases"], "kiln-release list"),
        (["manage", "check", "--deploy"], "kiln-release manage check --deploy"),
        (["tls", "example.com", "me@example.com"], "kiln-letsencrypt example.com me@example.com"),
        (["reconfigure"], "kiln-firstboot --check"),
    ],
)
def test_subcommands_hand_over_to_the_kiln_tools_and_pass_their_exit_status_on(fake_sbin, args, call):
    res = kiln(*args, env={"KILN_SBIN": str(fake_sbin)})
    calls = (fake_sbin / "calls").read_text().splitlines()
    assert calls == [call], calls
    # reconfigure's failed check is its own: nothing applied, exit 1
    assert res.returncode == (1 if args == ["reconfigure"] else 7)
    if args == ["reconfigure"]:
        assert "nothing changed" in res.stderr


@pytestmark_root
def test_backup_without_kiln_backup_says_backups_not_installed(tmp_path):
    for args in (["backup"], ["restore", "abc123"]):
        res = kiln(*args, env={"KILN_SBIN": str(tmp_path)})
        assert res.returncode == 1 and "backups not installed" in res.stderr


# --- kiln status: its judgement on fabricated inputs ------------------------------------------------------------------


def test_a_file_system_85_percent_full_is_a_warning_and_degrades_the_status(tmp_path):
    """disk_check (lib/common.sh) on a tmpfs filled to 85 %, in a mount namespace of its own, judged by kiln_cli."""
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux unshare")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[2]); import kiln_cli; r = kiln_cli.Report(); "
        "kiln_cli.judge_disk(r, [sys.argv[1]]); print(json.dumps([r.parts['disk'], r.warnings, r.exit]))"
    )
    results = {}
    for pct in (85, 40):
        script = (
            f'mount -t tmpfs -o size=1024k kiln-disk "$1" && '
            f'head -c {1024 * pct // 100 // 4 * 4}k /dev/zero >"$1/fill" '
            f'&& {shlex.quote(sys.executable)} -c {shlex.quote(code)} "$1" {shlex.quote(str(LIB))}'
        )
        res = subprocess.run(["unshare", "-rm", "bash", "-c", script, "_", str(mnt)], capture_output=True, text=True)
        print(f"{pct} %: rc={res.returncode}\n{res.stdout}{res.stderr}")
        assert res.returncode == 0
        results[pct] = json.loads(res.stdout)
    (disk, warnings, code85) = results[85]
    assert len(disk) == 1 and disk[0]["target"] == str(mnt) and disk[0]["used"] >= 80 and disk[0]["warning"]
    assert disk[0]["inodes"] is not None, "the inode use is reported too"
    assert code85 == cli.EXIT_DEGRADED and any(str(mnt) in w and "at or above 80%" in w for w in warnings)
    (disk, warnings, code40) = results[40]
    assert disk[0]["used"] < 80 and not disk[0]["warning"] and warnings == [] and code40 == cli.EXIT_OK


def test_a_pending_reboot_is_a_warning_and_degrades_the_status(tmp_path):
    """reboot_pending (lib/common.sh, the motd's check too) judged by kiln_cli, with /run and /boot of a mount
    namespace of its own: what unattended-upgrades leaves after a kernel update, then nothing."""
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux unshare")
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import kiln_cli; r = kiln_cli.Report(); "
        "kiln_cli.status_reboot(r); print(json.dumps([r.parts['reboot'], r.warnings, r.exit]))"
    )
    results = {}
    for pending in (True, False):
        flag = (
            "echo '*** System restart required ***' >/run/reboot-required && "
            "echo linux-image-test >/run/reboot-required.pkgs && "
        )
        script = (
            "mount -t tmpfs kiln-run /run && mount -t tmpfs kiln-boot /boot && "
            + (flag if pending else "")
            + f"{shlex.quote(sys.executable)} -c {shlex.quote(code)} {shlex.quote(str(LIB))}"
        )
        res = subprocess.run(["unshare", "-rm", "bash", "-c", script], capture_output=True, text=True)
        print(f"pending={pending}: rc={res.returncode}\n{res.stdout}{res.stderr}")
        assert res.returncode == 0
        results[pending] = json.loads(res.stdout)
    (part, warnings, exit_code) = results[True]
    assert part["pending"] and "linux-image-test" in part["why"], part
    assert exit_code == cli.EXIT_DEGRADED and any(w.startswith("reboot pending:") for w in warnings), warnings
    (part, warnings, exit_code) = results[False]
    assert not part["pending"] and warnings == [] and exit_code == cli.EXIT_OK, results[False]


def record(path: Path, **kw) -> None:
    doc = {"ok": True, "finished_at": "2026-12-05T03:00:00Z", "seconds": 12.5, "snapshot": "1a2b3c", "error": None}
    path.write_text(json.dumps({**doc, **kw}))


def test_backups_off_without_a_repository_is_said_loudly_without_degrading(tmp_path):
    r = cli.Report()
    cli.judge_backups(r, {"SECRET_KEY": "x"}, tmp_path)
    print(r)
    assert r.parts["backups"] == {
        "configured": False,
        "off": "no KILN_BACKUP_REPOSITORY in the instance env",
        "backup": None,
        "restore_test": None,
    }
    assert any(n.startswith("BACKUPS OFF") for n in r.notices) and r.exit == cli.EXIT_OK
    text = cli.render_text(r)
    assert "backups      OFF" in text and "!!! BACKUPS OFF" in text and "last backup        never" in text
    # kiln-backup's own verdict: a repository without its password is OFF too, and its run is no failure
    record(tmp_path / "backup.json", ok=False, error="backups OFF: no KILN_BACKUP_PASSWORD", backups="OFF")
    r = cli.Report()
    cli.judge_backups(r, {"KILN_BACKUP_REPOSITORY": "/var/backups/kiln"}, tmp_path)
    assert r.notices[0].startswith("BACKUPS OFF: backups OFF: no KILN_BACKUP_PASSWORD") and r.exit == cli.EXIT_OK


def test_a_backup_never_run_says_never_and_a_failed_one_degrades(tmp_path):
    env = {"KILN_BACKUP_REPOSITORY": "/var/backups/kiln"}
    r = cli.Report()
    cli.judge_backups(r, env, tmp_path)
    assert "last backup: never" in r.notices and "last restore test: never" in r.notices and r.exit == 0
    text = cli.render_text(r)
    assert "backups      on" in text and "last backup        never" in text and "last restore test  never" in text
    record(tmp_path / "backup.json")
    record(tmp_path / "restore-test.json", ok=False, error="restic check: pack 1234 is damaged")
    r = cli.Report()
    cli.judge_backups(r, env, tmp_path)
    text = cli.render_text(r)
    print(text)
    assert "last backup        ok 2026-12-05T03:00:00Z (12.5 s, snapshot 1a2b3c)" in text
    assert "last restore test  FAILED 2026-12-05T03:00:00Z: restic check: pack 1234 is damaged" in text
    assert r.exit == cli.EXIT_DEGRADED and r.warnings == [
        "last restore test FAILED 2026-12-05T03:00:00Z: restic check: pack 1234 is damaged"
    ]
    (tmp_path / "backup.json").write_text("{not json")
    r = cli.Report()
    cli.judge_backups(r, env, tmp_path)
    assert r.exit == cli.EXIT_DEGRADED and any("unreadable" in w for w in r.warnings)


@pytest.mark.parametrize(
    "env, delivers, shown",
    [
        ({}, False, "consolemail"),
        ({"EMAIL_URL": "consolemail://"}, False, "consolemail"),
        ({"ANYMAIL_ESP": "postmark"}, False, "ANYMAIL_ESP=postmark has no ANYMAIL_API_KEY"),
        ({"ANYMAIL_ESP": "Postmark", "ANYMAIL_API_KEY": "k"}, True, "anymail: postmark"),
        ({"EMAIL_URL": "smtp+tls://user:s3cret@smtp.example.com:587"}, True, "smtp+tls://smtp.example.com:587"),
    ],
)
def test_mail_to_the_console_backend_is_warned_about_loudly(env, delivers, shown):
    r = cli.Report()
    cli.judge_mail(r, env)
    print(r)
    assert r.parts["mail"]["delivers"] is delivers and shown in r.parts["mail"]["backend"]
    assert "s3cret" not in json.dumps(r.parts)
    assert any(n.startswith("MAIL GOES NOWHERE") for n in r.notices) is not delivers and r.exit == cli.EXIT_OK


def unit(active: str, sub: str = "", load: str = "loaded") -> dict[str, str]:
    return {"LoadState": load, "ActiveState": active, "SubState": sub}


def test_a_core_unit_down_or_a_failed_unit_is_not_ready_and_a_stopped_timer_degraded():
    core = cli.core_units("mariadb.service")
    states = {u: unit("active", "running") for u in core}
    states |= {u: unit("inactive", "dead") for u in cli.FIRSTBOOT_UNITS}  # done at an earlier boot: fine
    states |= {"kiln-retention.timer": unit("active", "waiting")}
    r = cli.Report()
    cli.judge_units(r, states, core, [])
    assert r.problems == [] and r.exit == cli.EXIT_OK, r.problems
    states |= {"redis-server@queue.service": unit("inactive", "dead"), "kiln-retention.timer": unit("inactive")}
    states |= {"kiln-firstboot-db.service": unit("failed", "failed")}
    r = cli.Report()
    cli.judge_units(r, states, core, ["kiln-firstboot-db.service", "ssh.service"])
    print(r.problems)
    assert r.exit == cli.EXIT_NOT_READY and set(r.problems) == {
        "redis-server@queue.service is inactive (dead)",
        "kiln-firstboot-db.service failed",
        "ssh.service failed",
    }
    assert r.warnings == [
        "kiln-retention.timer is inactive: what it schedules does not run (systemctl start kiln-retention.timer)"
    ]
    # a timer alone not running degrades, it does not stop the app
    r = cli.Report()
    cli.judge_units(
        r, states | {u: unit("active", "running") for u in core} | {cli.FIRSTBOOT_UNITS[2]: unit("active")}, core, []
    )
    assert r.problems == [] and r.exit == cli.EXIT_DEGRADED


def test_a_program_not_running_or_missing_is_not_ready():
    info = {"group": "kiln-web", "name": "kiln-web", "statename": "RUNNING", "description": "pid 1, uptime 0:01:00"}
    worker = {"group": "kiln-worker", "name": "kiln-worker-default-0", "statename": "RUNNING", "description": ""}
    r = cli.Report()
    cli.judge_programs(r, [info, worker], workers=True)
    assert r.problems == [] and [p["program"] for p in r.parts["programs"]] == [
        "kiln-web",
        "kiln-worker:kiln-worker-default-0",
    ]
    r = cli.Report()
    cli.judge_programs(r, [{**worker, "statename": "FATAL"}], workers=True)
    assert r.problems == ["program kiln-worker:kiln-worker-default-0 is FATAL", "program kiln-web is missing"]
    # a program supervisor starts only on demand (autostart=false: kiln-web-next, a deploy's) rests STOPPED
    nxt = {"group": "kiln-web-next", "name": "kiln-web-next", "statename": "STOPPED", "description": "Not started"}
    r = cli.Report()
    cli.judge_programs(r, [info, nxt], workers=False, on_demand={"kiln-web-next"})
    assert r.problems == [] and r.exit == cli.EXIT_OK
    r = cli.Report()
    cli.judge_programs(r, [info, nxt], workers=False)
    assert r.problems == ["program kiln-web-next is STOPPED"]
    r = cli.Report()
    cli.judge_programs(r, None, workers=False)
    assert r.problems == ["supervisord does not answer on its socket"] and r.exit == cli.EXIT_NOT_READY


def test_readiness_is_kiln_readys_own_checks():
    r = cli.Report()
    results = cli.kiln_ready.run_checks(Path("/nonexistent/kiln.env"), Path("/nonexistent/kiln-app.env"))
    cli.judge_ready(r, results)
    assert r.exit == cli.EXIT_NOT_READY and r.problems[0].startswith("not ready: env: ")
    assert cli.kiln_ready is sys.modules["kiln_ready"], "kiln_cli imports kiln_ready, it does not copy it"


# --- kiln maintenance: the nginx snippet -----------------------------------------------------------------------------


def servers(text: str) -> list[str]:
    """The server blocks of the site, in order (HTTP, HTTPS)."""
    return [b for b in re.split(r"^server \{", text, flags=re.M)[1:]]


def test_the_maintenance_snippet_is_included_by_the_https_server_only():
    http_server, https_server = servers(SITE.read_text())
    inc = "include /etc/nginx/snippets/kiln-maintenance.conf;"
    assert inc in https_server and inc not in http_server, "the HTTP server keeps its probes (health path, ACME)"
    assert str(cli.MAINTENANCE_SNIPPET) in inc
    step = (ROOT / "provision" / "steps" / "60-nginx.sh").read_text()
    assert "etc/nginx/snippets/kiln-maintenance.conf" in step, "step 60 installs it"


def test_the_maintenance_snippet_answers_503_with_retry_after_except_the_probes():
    text = "\n".join(line for line in SNIPPET.read_text().splitlines() if not line.lstrip().startswith("#"))
    print(text)
    assert f"if (-f {cli.MAINTENANCE_FLAG})" in text, "the flag file kiln maintenance writes"
    # nginx's workers (www-data) stat the flag: not under /var/lib/kiln (0750 root:kiln), where -f is always false
    assert cli.MAINTENANCE_FLAG.parent == Path("/var/lib")
    assert 'if ($uri ~ "^/(healthz|readyz)$") { set $kiln_maintenance ""; }' in text
    assert 'if ($kiln_maintenance = "on") { return 503; }' in text
    assert "add_header Retry-After $kiln_retry_after always;" in text
    # the 50x page (an internal redirect, through the same lines again) keeps the header and is not refused
    assert re.search(
        r'if \(\$uri ~ "\^/kiln-errors/"\) \{ set \$kiln_maintenance "\$\{kiln_maintenance\}-page"; \}', text
    )
    assert 'if ($kiln_maintenance ~ "^on") { set $kiln_retry_after' in text
    order = [text.index(s) for s in ("-f /var/lib", "healthz|readyz", "kiln-errors", "Retry-After", "return 503")]
    assert order == sorted(order)
