"""The web server's values, each stated once in provision/lib/common.sh, rendered into every consumer: supervisor's
kiln.conf (render_vars, provision step 50), nginx's upstream (web_upstream_snippet) and kiln-gunicorn; and the worker
groups' stop wait from the job timeout (kiln_app.py render, common.sh's job_timeout). The deploy that relies on them is
proven on the VM (tests/infra/test_release.py)."""

from __future__ import annotations

import configparser
import subprocess

from test_app_contract import FULL, LOCK_RQ, ROOT, startproject
from test_app_render import render, unit

COMMON = ROOT / "provision" / "lib" / "common.sh"
SUPERVISOR_CONF = ROOT / "provision" / "files" / "etc" / "supervisor" / "conf.d" / "kiln.conf"
GUNICORN = ROOT / "provision" / "files" / "usr" / "local" / "lib" / "kiln" / "kiln-gunicorn"
NGINX_CONF = ROOT / "provision" / "files" / "etc" / "nginx" / "conf.d" / "kiln.conf"


def bash(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", f'set -euo pipefail; . "{COMMON}"; {script}', "_", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def common(name: str) -> str:
    res = bash(f'printf %s "${name}"')
    assert res.returncode == 0 and res.stdout, f"{name} has no value in common.sh: {res.stderr}"
    return res.stdout


def rendered_supervisor() -> configparser.RawConfigParser:
    res = bash(f'render_vars "{SUPERVISOR_CONF}"')
    assert res.returncode == 0, res.stderr
    assert "@" not in res.stdout.replace("@-quoted", ""), f"a name left unrendered:\n{res.stdout}"
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    parser.read_string(res.stdout)
    return parser


def test_supervisor_waits_for_gunicorns_graceful_timeout_from_common_sh():
    conf = rendered_supervisor()
    graceful, margin = int(common("KILN_WEB_GRACEFUL_TIMEOUT")), int(common("KILN_STOP_MARGIN"))
    for program in ("program:kiln-web", "program:kiln-web-next"):
        assert int(conf[program]["stopwaitsecs"]) == graceful + margin, f"{program}: {dict(conf[program])}"
        assert conf[program]["stopsignal"] == "TERM"
    # the deploy's bridge: started and watched by kiln-release only
    nxt = conf["program:kiln-web-next"]
    assert (nxt["command"], nxt["autostart"], nxt["autorestart"]) == (
        "/usr/local/lib/kiln/kiln-gunicorn next",
        "false",
        "false",
    )
    assert conf["program:kiln-web"]["command"] == "/usr/local/lib/kiln/kiln-gunicorn"
    assert conf["program:kiln-web"]["autostart"] == "true"


def test_gunicorn_takes_its_sockets_and_timeouts_from_common_sh():
    text = GUNICORN.read_text()
    for name in ("KILN_WEB_SOCKET", "KILN_WEB_NEXT_SOCKET", "KILN_WEB_TIMEOUT", "KILN_WEB_GRACEFUL_TIMEOUT"):
        assert f"${name}" in text, f"kiln-gunicorn does not use {name}"
    for literal in ("/run/kiln/gunicorn.sock", "--graceful-timeout 30", "--timeout 60"):
        assert literal not in text, f"kiln-gunicorn states {literal!r} itself"
    assert "include /etc/nginx/snippets/kiln-upstream.conf;" in NGINX_CONF.read_text()
    assert "gunicorn.sock" not in NGINX_CONF.read_text()


def test_upstream_snippet_names_the_socket_it_is_given(tmp_path):
    snippet = "/etc/nginx/snippets/kiln-upstream.conf"
    # write_file's destination is fixed: run it in a copy of the function with the path moved under tmp_path
    res = bash(
        f'eval "$(declare -f web_upstream_snippet | sed "s|{snippet}|$1|")"; '
        'web_upstream_snippet "$KILN_WEB_NEXT_SOCKET"; echo "changed=$?"; '
        'web_upstream_snippet "$KILN_WEB_NEXT_SOCKET" || echo "unchanged=$?"',
        str(tmp_path / "kiln-upstream.conf"),
    )
    assert res.returncode == 0, res.stderr
    assert "changed=0" in res.stdout and "unchanged=1" in res.stdout, res.stdout
    lines = [ln for ln in (tmp_path / "kiln-upstream.conf").read_text().splitlines() if not ln.startswith("#")]
    assert lines == [f"server unix:{common('KILN_WEB_NEXT_SOCKET')} fail_timeout=0;"]


def test_render_vars_stops_on_a_name_without_a_value(tmp_path):
    template = tmp_path / "t.conf"
    template.write_text("a=@KILN_WEB_TIMEOUT@\nb=@KILN_NO_SUCH_VALUE@\n")
    res = bash(f'render_vars "{template}"')
    assert res.returncode != 0 and "@KILN_NO_SUCH_VALUE@" in res.stderr, (res.returncode, res.stdout, res.stderr)


def test_workers_stop_wait_follows_the_contracts_job_timeout(tmp_path):
    app = startproject(tmp_path, FULL.replace('health = "/up"', 'health = "/up"\njob-timeout = 900'), LOCK_RQ)
    files = render(app, tmp_path)
    conf = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    conf.read_string(files["supervisor/kiln-workers.conf"])
    assert [conf[f"program:kiln-worker-{g}"]["stopwaitsecs"] for g in ("fast", "slow")] == ["960", "960"]


def test_an_operators_job_timeout_sets_the_workers_stop_wait_and_the_timers_job_timeout(tmp_path):
    app = startproject(tmp_path, FULL, LOCK_RQ)  # the contract's job-timeout: the default, 180
    files = render(app, tmp_path, "--job-timeout", "900")
    conf = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    conf.read_string(files["supervisor/kiln-workers.conf"])
    assert [conf[f"program:kiln-worker-{g}"]["stopwaitsecs"] for g in ("fast", "slow")] == ["960", "960"]
    service = unit(files["systemd/kiln-app-sessions.service"])["Service"]
    assert "JOB_TIMEOUT=900" in service["Environment"].split(), service


def test_job_timeout_is_the_operators_else_the_release_contracts(tmp_path):
    release, env_file = tmp_path / "release", tmp_path / "kiln.env"
    release.mkdir()
    (release / "kiln-app.env").write_text("KILN_APP_NAME=mysite\nKILN_APP_JOB_TIMEOUT=300\n")

    def job_timeout() -> subprocess.CompletedProcess:
        return bash(f'KILN_INSTANCE_ENV="{env_file}"; job_timeout "$1"', str(release))

    assert job_timeout().stdout == "300\n"  # no instance env yet (an image build): the contract's
    env_file.write_text("JOB_TIMEOUT=120\n# --- from /etc/kiln/overrides.env ---\nexport JOB_TIMEOUT='900'\n")
    assert job_timeout().stdout == "900\n"  # the operator's, the last assignment, as the app reads it
    env_file.write_text("SECRET_KEY=x\n")
    (release / "kiln-app.env").write_text("KILN_APP_NAME=mysite\n")
    res = job_timeout()
    assert res.returncode != 0 and "JOB_TIMEOUT" in res.stderr and "job-timeout" in res.stderr, res


def test_reference_app_states_its_export_jobs_timeout(tmp_path):
    files = render(ROOT / "app", tmp_path)
    conf = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    conf.read_string(files["supervisor/kiln-workers.conf"])
    assert conf["program:kiln-worker-default"]["stopwaitsecs"] == "360"  # job-timeout 300 + 60


def test_static_files_are_served_from_the_release_given(tmp_path):
    out = tmp_path / "out"
    res = subprocess.run(
        [
            "python3",
            str(ROOT / "provision" / "files" / "usr" / "local" / "lib" / "kiln" / "kiln_app.py"),
            "render",
            str(ROOT / "app"),
            "--python",
            "3.13",
            "--release",
            "/srv/kiln/releases/1.2.3",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert "    alias /srv/kiln/releases/1.2.3/static/;" in (out / "nginx" / "kiln-app.conf").read_text()
