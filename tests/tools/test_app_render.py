"""The app's server configuration rendered from its contract (`kiln_app.py render`, run by kiln-release at every
switch), and the parts of kiln-ready (provision/files/usr/local/lib/kiln/kiln_ready.py) that need no server.

The rendered files are what supervisor, systemd and nginx read on the server; the nspawn tier
(tests/provision/nspawn-check.sh) runs them for the reference app and the second app (tests/fixtures/second-app).
"""

from __future__ import annotations

import configparser
import json
import shlex
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from kilntest import load
from test_app_contract import FULL, LOCK_RQ, ROOT, run, startproject

LIB = ROOT / "provision" / "files" / "usr" / "local" / "lib" / "kiln"
SECOND_APP = ROOT / "tests" / "fixtures" / "second-app"


kiln_ready = load("kiln_ready", LIB / "kiln_ready.py")
logcover = load("logcover", ROOT / "tests" / "infra" / "logcover.py")


def render(app: Path, tmp_path: Path, *options: str) -> dict[str, str]:
    out = tmp_path / "out"
    res = run(app.parent, "render", app.name, "--python", "3.13", "--out", str(out), *options)
    assert res.returncode == 0, res.stderr
    files = {p.relative_to(out).as_posix(): p.read_text() for p in sorted(out.rglob("*")) if p.is_file()}
    assert sorted(res.stdout.split()) == sorted(files)
    return files


def supervisor(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    parser.read_string(text)
    return parser


def unit(text: str) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        elif "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            current[key] = value
    return sections


def test_reference_app_renders_what_kiln_ran_before_the_contract(tmp_path):
    files = render(ROOT / "app", tmp_path)
    assert sorted(files) == ["nginx/kiln-app-http.conf", "nginx/kiln-app.conf", "supervisor/kiln-workers.conf"]
    conf = supervisor(files["supervisor/kiln-workers.conf"])
    assert conf["group:kiln-worker"]["programs"] == "kiln-worker-default"
    program = conf["program:kiln-worker-default"]
    assert program["command"] == "/usr/local/lib/kiln/kiln-rqworker default %(process_num)d"
    assert (program["numprocs"], program["user"], program["stopsignal"], program["stopwaitsecs"]) == (
        "2",
        "kiln",
        "TERM",
        "360",
    )
    # every worker's log is rotated by supervisord (tests/infra/logcover.py reads the server's files the same way)
    assert sorted(logcover.supervisor_logs([files["supervisor/kiln-workers.conf"]])) == [
        "/var/log/kiln/worker-default-0.log",
        "/var/log/kiln/worker-default-1.log",
    ]
    assert "location ^~ /static/ {\n    alias /srv/kiln/current/static/;" in files["nginx/kiln-app.conf"]
    assert "\n    gzip_static on;\n" in files["nginx/kiln-app.conf"]  # kiln-release precompresses (make bench)
    assert "location = /readyz { include /etc/nginx/snippets/kiln-proxy.conf; }" in files["nginx/kiln-app-http.conf"]


def test_contract_with_two_groups_and_a_timer_renders_two_programs_and_a_timer(tmp_path):
    files = render(startproject(tmp_path, FULL, LOCK_RQ), tmp_path)
    assert sorted(files) == [
        "nginx/kiln-app-http.conf",
        "nginx/kiln-app.conf",
        "supervisor/kiln-workers.conf",
        "systemd/kiln-app-sessions.service",
        "systemd/kiln-app-sessions.timer",
    ]
    conf = supervisor(files["supervisor/kiln-workers.conf"])
    assert conf["group:kiln-worker"]["programs"] == "kiln-worker-fast,kiln-worker-slow"
    assert [
        (conf[f"program:kiln-worker-{g}"]["command"], conf[f"program:kiln-worker-{g}"]["numprocs"])
        for g in ("fast", "slow")
    ] == [
        ("/usr/local/lib/kiln/kiln-rqworker fast %(process_num)d", "2"),
        ("/usr/local/lib/kiln/kiln-rqworker slow %(process_num)d", "1"),
    ]
    service = unit(files["systemd/kiln-app-sessions.service"])["Service"]
    assert (service["Type"], service["User"], service["Group"]) == ("oneshot", "kiln", "kiln")
    assert service["ExecStart"] == "/srv/kiln/current/venv/bin/python /srv/kiln/current/app/manage.py clearsessions"
    assert shlex.split(service["Environment"]) == [
        "KILN_ENV_FILE=/etc/kiln/kiln.env",
        "HOME=/srv/kiln",
        "LANG=C.UTF-8",
        "PYTHONUNBUFFERED=1",
        "DJANGO_SETTINGS_MODULE=mysite.settings",
        "JOB_TIMEOUT=180",  # the contract's job-timeout (its default) without the operator's
    ]
    timer = unit(files["systemd/kiln-app-sessions.timer"])
    assert (timer["Timer"]["OnCalendar"], timer["Timer"]["Persistent"], timer["Install"]["WantedBy"]) == (
        "daily",
        "true",
        "timers.target",
    )
    assert "location ^~ /assets/ {\n    alias /srv/kiln/current/static/;" in files["nginx/kiln-app.conf"]
    assert "location = /up { include /etc/nginx/snippets/kiln-proxy.conf; }" in files["nginx/kiln-app-http.conf"]


def test_startproject_defaults_render_no_worker_program_and_no_health_location(tmp_path):
    files = render(startproject(tmp_path), tmp_path)
    assert sorted(files) == ["nginx/kiln-app-http.conf", "nginx/kiln-app.conf"]
    assert "location =" not in files["nginx/kiln-app-http.conf"]  # "/" goes to HTTPS like every page


def test_timer_command_words_reach_manage_py_as_written(tmp_path):
    pyproject = (
        '[tool.kiln.timers]\nreport = { command = "report --title \'50% of $HOME\' --to \\"ops team\\"", '
        'on-calendar = "Mon *-*-* 06:00:00" }\n'
    )
    service = unit(render(startproject(tmp_path, pyproject, LOCK_RQ), tmp_path)["systemd/kiln-app-report.service"])
    assert service["Service"]["ExecStart"].split(" ", 2)[2] == (
        'report --title "50%% of $$HOME" --to "ops team"'  # systemd: %% and $$ are a literal % and $
    )


def test_second_app_fixture_differs_from_the_reference_app_in_every_key():
    shown = {}
    for app in (ROOT / "app", SECOND_APP):
        res = run(ROOT, "show", str(app), "--distro", "debian-13")
        assert res.returncode == 0, res.stderr
        shown[app.name] = json.loads(res.stdout)["contract"]
    same = [key for key in shown["app"] if shown["app"][key] == shown["second-app"][key]]
    # build-packages: neither app builds more than the profile's PKG_BUILD_DEPS (mysqlclient) needs
    assert same == ["build-packages"]
    assert len(shown["second-app"]["workers"]) == 2 and len(shown["second-app"]["timers"]) == 1


# --- kiln-ready ---
def test_kiln_ready_reads_the_release_contract_as_bash_wrote_it(tmp_path):
    res = run(ROOT, "show", str(SECOND_APP), "--format", "env", "--distro", "debian-13")
    (tmp_path / "kiln-app.env").write_text(res.stdout)
    app = kiln_ready.read_app_env(tmp_path / "kiln-app.env")
    assert (app["KILN_APP_HEALTH"], app["KILN_APP_WORKERS"], app["KILN_APP_STATIC_ROOT"]) == (
        "/up/",
        ["urgent", "bulk"],
        "collected",
    )
    assert app["KILN_APP_RELEASE"] == ["check --deploy --fail-level ERROR", "migrate --noinput"]


def test_kiln_ready_reads_the_instance_env_file_last_value_wins(tmp_path):
    (tmp_path / "kiln.env").write_text(
        "# Generated\nQUEUE_URL=redis://:a@127.0.0.1:6380/0\n# --- from overrides ---\nexport QUEUE_URL='redis://x:6380/1'\n"
    )
    assert kiln_ready.read_env(tmp_path / "kiln.env") == {"QUEUE_URL": "redis://x:6380/1"}


def test_kiln_ready_refuses_a_database_kiln_does_not_run():
    with pytest.raises(kiln_ready.NotReady, match="a 'postgres' URL"):
        kiln_ready.check_database("postgres://u:p@db/app")


class FakeRedis:
    """One connection: answers each command of the client with the next canned reply; records the commands."""

    def __init__(self, replies: list[bytes]):
        self.replies, self.commands = replies, []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        conn, _ = self.server.accept()
        with conn, conn.makefile("rb") as stream:
            for answer in self.replies:
                count = int(stream.readline()[1:])
                words = []
                for _ in range(count):
                    size = int(stream.readline()[1:])
                    words.append(stream.read(size + 2)[:-2].decode())
                self.commands.append(words)
                conn.sendall(answer)


def test_kiln_ready_queue_check_is_a_write_with_the_instance_password():
    redis = FakeRedis([b"+OK\r\n", b"+OK\r\n", b"$-1\r\n"])
    did = kiln_ready.check_redis(f"redis://:s%40cret@127.0.0.1:{redis.port}/2", write=True)
    redis.thread.join(5)
    assert redis.commands == [["AUTH", "s@cret"], ["SELECT", "2"], ["SET", "kiln:ready", "1", "NX"]]
    assert did == f"SET NX (a write) on 127.0.0.1:{redis.port}"


def test_kiln_ready_full_queue_redis_is_not_ready():
    redis = FakeRedis([b"+OK\r\n", b"-OOM command not allowed when used memory > 'maxmemory'.\r\n"])
    with pytest.raises(kiln_ready.NotReady, match=r"SET -> OOM command not allowed"):
        kiln_ready.check_redis(f"redis://:pw@127.0.0.1:{redis.port}/0", write=True)


def test_kiln_ready_cache_check_is_a_ping():
    redis = FakeRedis([b"+OK\r\n", b"+PONG\r\n"])
    assert kiln_ready.check_redis(f"redis://:pw@127.0.0.1:{redis.port}/0", write=False).startswith("PING on ")
    redis.thread.join(5)
    assert redis.commands == [["AUTH", "pw"], ["PING"]]


def test_kiln_ready_names_every_failed_check(tmp_path):
    (tmp_path / "kiln.env").write_text("DATABASE_URL=postgres://u:p@db/app\nCACHE_URL=memcache://x\n")
    res = run(ROOT, "show", str(SECOND_APP), "--format", "env", "--distro", "debian-13")
    (tmp_path / "kiln-app.env").write_text(res.stdout)
    proc = subprocess.run(
        [
            sys.executable,
            str(LIB / "kiln_ready.py"),
            "--env",
            str(tmp_path / "kiln.env"),
            "--app",
            str(tmp_path / "kiln-app.env"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[:3] == [
        "kiln-ready: database NOT READY (DATABASE_URL is a 'postgres' URL: Kiln checks MySQL/MariaDB databases)",
        "kiln-ready: cache NOT READY ('memcache' is not a Redis URL (redis://, rediss://, unix://))",
        "kiln-ready: queue NOT READY (no URL set (CACHE_URL, QUEUE_URL))",
    ]
    # (the app check GETs 127.0.0.1:80, whatever listens there on this host)
    assert proc.stderr.splitlines()[-1].startswith("kiln-ready: NOT READY: database, cache, queue")
