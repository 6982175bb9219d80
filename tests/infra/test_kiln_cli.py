"""The operator's command `kiln` on the server: status, maintenance mode, manage, reconfigure (README, "Operating the
server: `kiln`"). Each test leaves the server as it found it (maintenance off, the overrides and their env as before).
"""

from __future__ import annotations

import json
import shlex
import time

import pytest

from kilnlib import ENV_FILE, OVERRIDES, http, out, overrides_restored, sh, supervisor_status, wait_http_ok

PAGE = "/records/"  # the reference app's list page: 200 when the app serves


def kiln(host, args: str, ok=(0,), timeout: int = 600):
    t0 = time.monotonic()
    res = sh(host, f"kiln {args}", ok=ok, timeout=timeout)
    print(f"$ kiln {args} -> rc={res.rc} in {time.monotonic() - t0:.1f}s\n{res.stdout}{res.stderr}")
    return res


def test_kiln_status_reports_the_server_ready_and_exits_0(host):
    res = kiln(host, "status")
    assert res.rc == 0 and "=> OK (exit 0)" in res.stdout
    doc = json.loads(kiln(host, "status --json").stdout)
    assert doc["state"] == "ok" and doc["exit"] == 0 and doc["problems"] == [] and doc["warnings"] == [], doc
    assert [r["name"] for r in doc["ready"]] == ["database", "cache", "queue", "app"]
    assert all(r["ok"] for r in doc["ready"]), doc["ready"]
    units = {u["unit"]: u for u in doc["units"]}
    for unit in ("nginx.service", "mariadb.service", "redis-server@queue.service", "kiln-retention.timer"):
        assert units[unit]["ok"], units.get(unit)
    assert {p["program"] for p in doc["programs"]} >= {"kiln-web"} and all(p["ok"] for p in doc["programs"])
    assert doc["release"]["current"] == out(host, "basename $(readlink /srv/kiln/current)")
    assert any(d["target"] == "/" and isinstance(d["inodes"], int) for d in doc["disk"]), doc["disk"]
    # The VM has no mail provider and no backup repository: said loudly, without failing the status.
    assert doc["mail"]["delivers"] is False and any(n.startswith("MAIL GOES NOWHERE") for n in doc["notices"])
    assert doc["backups"]["configured"] is False and any(n.startswith("BACKUPS OFF") for n in doc["notices"])


@pytest.fixture
def maintenance_off(host):
    yield
    sh(host, "kiln maintenance off")


def test_maintenance_mode_answers_503_with_retry_after_while_the_probes_answer_200(host, maintenance_off):
    assert http(host, PAGE).status == 200
    kiln(host, "maintenance on")
    again = kiln(host, "maintenance on")  # idempotent
    assert "already on" in again.stdout
    page = http(host, PAGE)
    print(f"page during maintenance:\n{page}")
    assert page.status == 503 and page.headers.get("retry-after") == "300" and "kiln-50x" in page.body, page
    assert http(host, "/static/admin/css/base.css").status == 503, "static files are in maintenance too"
    for path, scheme in (("/readyz", "https"), ("/healthz", "https"), ("/readyz", "http"), ("/healthz", "http")):
        probe = http(host, path, scheme=scheme)
        assert probe.status == 200 and "retry-after" not in probe.headers, f"{scheme} {path}:\n{probe}"
    assert http(host, PAGE, scheme="http").status == 301, "HTTP still redirects to HTTPS (and 503 there)"
    assert sh(host, "kiln-ready --quiet").rc == 0, "kiln-ready (the health path over HTTP) stays ready"
    status = json.loads(kiln(host, "status --json").stdout)
    assert status["maintenance"]["on"] and any(n.startswith("MAINTENANCE ON") for n in status["notices"])
    kiln(host, "maintenance off")
    after = http(host, PAGE)
    assert after.status == 200 and "retry-after" not in after.headers, after
    assert "already off" in kiln(host, "maintenance off").stdout


def test_kiln_manage_runs_the_current_releases_manage_py_as_the_app(host):
    res = kiln(host, "manage check")
    assert res.rc == 0 and "System check identified no issues" in res.stdout
    who = kiln(host, "manage shell -c 'import getpass, os; print(getpass.getuser(), os.environ[\"KILN_ENV_FILE\"])'")
    assert who.stdout.strip().splitlines()[-1] == f"kiln {ENV_FILE}"
    assert kiln(host, "manage no-such-command", ok=None).rc != 0


@pytest.fixture
def overrides(host):
    """The operator's overrides as they were; restored afterwards (and applied again when a test applied others)."""
    with overrides_restored(host):
        yield


def add_override(host, line: str) -> None:
    sh(host, f"cp -a {OVERRIDES} {OVERRIDES}.kiln-test 2>/dev/null || true; echo {shlex.quote(line)} >>{OVERRIDES}")


def undo_override(host) -> None:
    saved = f"{OVERRIDES}.kiln-test"
    sh(host, f"if [ -e {saved} ]; then mv -f {saved} {OVERRIDES}; else rm -f {OVERRIDES}; fi")


@pytest.mark.parametrize(
    "line, named",
    [
        ("ALLOWED_HOST=example.com", "ALLOWED_HOST"),  # a typo: no such key
        ("KILN_SWAP_MB=lots", "KILN_SWAP_MB=lots"),  # a value Kiln parses
        ("SITE_URL=example.com/path", "check --deploy fails"),  # a value the app's settings refuse
    ],
)
def test_reconfigure_with_a_bad_override_changes_nothing_and_says_why(host, overrides, line, named):
    env_before = out(host, f"stat -c '%Y %s' {ENV_FILE}; cat {ENV_FILE}")
    web_pid = supervisor_status(host)["kiln-web"].pid
    add_override(host, line)
    try:
        res = kiln(host, "reconfigure", ok=None)
    finally:
        undo_override(host)
    said = res.stdout + res.stderr
    assert res.rc == 1 and named in said and "nothing changed" in said.lower(), said
    assert out(host, f"stat -c '%Y %s' {ENV_FILE}; cat {ENV_FILE}") == env_before, "the env file was rewritten"
    assert supervisor_status(host)["kiln-web"].pid == web_pid, "the app was restarted"


def test_reconfigure_with_a_good_override_applies_it(host, overrides):
    add_override(host, "LOG_LEVEL=WARNING")
    res = kiln(host, "reconfigure")
    assert res.rc == 0 and "are good" in res.stdout + res.stderr
    assert out(host, f"grep '^LOG_LEVEL=' {ENV_FILE} | tail -n 1") == "LOG_LEVEL=WARNING"
    wait_http_ok(host, "/readyz", timeout=120)
    sh(host, f"rm -f {OVERRIDES}.kiln-test")


def test_kiln_logs_tails_a_programs_log_or_a_units_journal_bounded(host):
    web = kiln(host, "logs kiln-web")
    lines = web.stdout.splitlines()
    assert 0 < len(lines) <= 200 and lines == sh(host, "tail -n 200 /var/log/kiln/web.log").stdout.splitlines()
    journal = kiln(host, "logs nginx.service")
    assert 0 < len(journal.stdout.splitlines()) <= 201, "200 entries and journalctl's header at most"
    assert len(kiln(host, "logs").stdout.splitlines()) <= 201
    follow = sh(host, "timeout 5 kiln logs -f kiln-web", ok=(124,))  # follows until stopped: the tail, then waits
    assert follow.stdout.strip() and not out(host, "pgrep -f '[t]ail -n 200 -F /var/log/kiln' || true"), "left running"
