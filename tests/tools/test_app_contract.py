"""The app contract (provision/files/usr/local/lib/kiln/kiln_app.py): [tool.kiln] of an app's pyproject.toml.

Each case runs the command the way `make app-check` does, from the folder above the app (so the messages name
`mysite/pyproject.toml`), on a tree shaped like the one `django-admin startproject mysite .` writes plus a hashed lock.
A bad contract must be refused with exit 1 and exactly its own problem lines; a good one passes with exit 0.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kilntest import ROOT, load

KILN_APP = ROOT / "provision" / "files" / "usr" / "local" / "lib" / "kiln" / "kiln_app.py"
kiln_app = load("kiln_app", KILN_APP)

HASH = "--hash=sha256:" + "ab" * 32
LOCK = f"django==5.2.8 \\\n    {HASH}\n    # via -r requirements.in\ngunicorn==23.0.0 \\\n    {HASH}\n"
LOCK_RQ = LOCK + f"django-rq==3.1 {HASH}\nrq==2.6.0 {HASH}\n"

# What startproject writes that matters here (manage.py's settings default; the project package's modules).
MANAGE_PY = """\
#!/usr/bin/env python
import os
import sys


def main():
    os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mysite.settings')
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == '__main__':
    main()
"""
HANDLER = "import os\n\nfrom django.core.{0} import get_{0}_application\n\napplication = get_{0}_application()\n"
PROJECT_FILES = {
    "__init__.py": "",
    "settings.py": "from pathlib import Path\n\nBASE_DIR = Path(__file__).resolve().parent.parent\n",
    "urls.py": "from django.contrib import admin\nfrom django.urls import path\n\nurlpatterns = []\n",
    "wsgi.py": HANDLER.format("wsgi"),
    "asgi.py": HANDLER.format("asgi"),
}

# A contract that sets every key (two worker groups, a timer, a runtime package).
FULL = """\
[project]
name = "mysite"
version = "2.1.0"
requires-python = ">=3.11,<3.14"

[tool.kiln]
wsgi = "mysite.wsgi:application"
settings = "mysite.settings"
lock = "requirements.txt"
packages = ["libpq5"]
build-packages = ["libpq-dev"]
release = ["migrate --noinput", "createcachetable"]
static-root = "staticfiles"
static-url = "/assets/"
health = "/up"
queues = ["mail", "reports", "default"]

[tool.kiln.workers]
fast = { queues = ["mail", "default"], processes = 2, class = "SimpleWorker" }
slow = { queues = ["reports"] }

[tool.kiln.timers]
sessions = { command = "clearsessions", on-calendar = "daily" }
"""

GOOD = """\
[tool.kiln]
queues = ["mail"]
workers = { mail = { queues = ["mail"] } }
"""


def startproject(base: Path, pyproject: str | None = None, lock: str = LOCK) -> Path:
    app = base / "mysite"
    (app / "mysite").mkdir(parents=True)
    (app / "manage.py").write_text(MANAGE_PY)
    for name, text in PROJECT_FILES.items():
        (app / "mysite" / name).write_text(text)
    (app / "requirements.txt").write_text(lock)
    if pyproject is not None:
        (app / "pyproject.toml").write_text(pyproject)
    return app


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(KILN_APP), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def check(base: Path, *options: str) -> tuple[int, list[str], list[str]]:
    res = run(base, "check", "mysite", *(options or ("--python", "3.13")))
    return res.returncode, res.stdout.splitlines(), res.stderr.splitlines()


def test_reference_app_contract_passes_for_each_distro():
    for distro in ("debian-13", "ubuntu-24.04"):
        res = run(ROOT, "check", "app", "--distro", distro)
        assert (res.returncode, res.stdout, res.stderr) == (0, "app-check: kiln-reference-app 1.0.0: ok\n", "")


def test_reference_app_contract_is_what_kiln_runs_today():
    res = run(ROOT, "show", "app", "--distro", "debian-13")
    assert res.returncode == 0, res.stderr
    contract = json.loads(res.stdout)["contract"]
    assert contract["wsgi"] == "kiln.wsgi:application"
    assert contract["settings"] == "kiln.settings"
    assert contract["health"] == "/readyz"
    assert contract["lock"] == "requirements.txt"
    assert contract["workers"] == {"default": {"queues": ["export", "default"], "processes": 2, "class": "Worker"}}
    assert contract["timers"] == {}
    assert contract["shared-media"] == "AWS_STORAGE_BUCKET_NAME"


def test_startproject_tree_without_a_contract_gets_the_defaults(tmp_path):
    startproject(tmp_path)
    assert check(tmp_path) == (0, ["app-check: mysite 0.0.0: ok"], [])
    res = run(tmp_path, "show", "mysite", "--python", "3.13")
    assert res.returncode == 0, res.stderr
    shown = json.loads(res.stdout)
    assert (shown["name"], shown["version"]) == ("mysite", "0.0.0")
    assert shown["contract"] == {
        "wsgi": "mysite.wsgi:application",
        "settings": "mysite.settings",
        "lock": "requirements.txt",
        "python": "",
        "packages": [],
        "build-packages": [],
        "release": ["migrate --noinput"],
        "static-root": None,
        "static-url": "/static/",
        "health": "/",
        "shared-media": None,
        "queues": None,
        "workers": {},
        "job-timeout": 180,
        "timers": {},
    }


def test_contract_setting_every_key_passes_and_sources_as_bash(tmp_path):
    startproject(tmp_path, FULL, LOCK_RQ)
    assert check(tmp_path) == (0, ["app-check: mysite 2.1.0: ok"], [])
    res = run(tmp_path, "show", "mysite", "--format", "env", "--python", "3.13")
    assert res.returncode == 0, res.stderr
    shown = [
        "$KILN_APP_PYTHON",
        "${KILN_APP_RELEASE[@]}",
        "${KILN_APP_WORKERS[@]}",
        "${KILN_APP_WORKERS_FAST_QUEUES[@]}",
        "$KILN_APP_WORKERS_SLOW_PROCESSES",
        "$KILN_APP_WORKERS_FAST_CLASS",
        "$KILN_APP_WORKERS_SLOW_CLASS",
        "$KILN_APP_TIMERS_SESSIONS_ON_CALENDAR",
    ]
    script = res.stdout + 'printf "%s|" ' + " ".join(f'"{v}"' for v in shown)
    out = subprocess.run(["bash", "-euc", script], capture_output=True, text=True, check=True).stdout
    assert out == ">=3.11,<3.14|migrate --noinput|createcachetable|fast|slow|mail|default|1|SimpleWorker|Worker|daily|"


BAD = {
    "typo_key_with_suggestion": (
        '[tool.kiln]\nwsgii = "mysite.wsgi:application"\n',
        ["unknown key tool.kiln.wsgii in mysite/pyproject.toml (did you mean wsgi?)"],
    ),
    "wrong_type": (
        "[tool.kiln]\nhealth = 200\n",
        ["tool.kiln.health in mysite/pyproject.toml: must be a string, not an integer (200)"],
    ),
    "list_item_of_wrong_type": (
        '[tool.kiln]\npackages = ["libpq5", 3]\n',
        ["tool.kiln.packages in mysite/pyproject.toml: must be a list of strings, not an array holding an integer (3)"],
    ),
    "missing_wsgi_module": (
        '[tool.kiln]\nwsgi = "mysite.wsgix:application"\n',
        [
            "tool.kiln.wsgi in mysite/pyproject.toml: no module mysite.wsgix in the app "
            "(no mysite/mysite/wsgix.py or mysite/mysite/wsgix/__init__.py)"
        ],
    ),
    "wsgi_callable_not_in_module": (
        '[tool.kiln]\nwsgi = "mysite.wsgi:app"\n',
        ["tool.kiln.wsgi in mysite/pyproject.toml: mysite/mysite/wsgi.py defines no app"],
    ),
    "missing_settings_module": (
        '[tool.kiln]\nsettings = "mysite.production"\n',
        [
            "tool.kiln.settings in mysite/pyproject.toml: no module mysite.production in the app "
            "(no mysite/mysite/production.py or mysite/mysite/production/__init__.py)"
        ],
    ),
    "queue_named_by_no_worker_group": (
        GOOD.replace('queues = ["mail"]', 'queues = ["mail", "reports"]', 1),
        ["tool.kiln.queues in mysite/pyproject.toml: queue 'reports' is named by no worker group"],
    ),
    "worker_queue_not_declared": (
        GOOD.replace('{ queues = ["mail"] }', '{ queues = ["mail", "bulk"] }'),
        ["tool.kiln.workers.mail.queues in mysite/pyproject.toml: queue 'bulk' is not in tool.kiln.queues"],
    ),
    "python_out_of_range": (
        '[tool.kiln]\npython = ">=3.11,<3.13"\n',
        ["tool.kiln.python in mysite/pyproject.toml: Python 3.13 (--python) is outside '>=3.11,<3.13'"],
    ),
    "python_range_unparsable": (
        '[tool.kiln]\npython = "3.11+"\n',
        [
            "tool.kiln.python in mysite/pyproject.toml: '3.11+' is not a version range (comparators >=, >, <=, <, "
            "==, != with versions such as 3.12, joined by commas: '>=3.11,<3.14')"
        ],
    ),
    "python_stated_twice_differently": (
        '[project]\nrequires-python = ">=3.10"\n[tool.kiln]\npython = ">=3.11"\n',
        [
            "tool.kiln.python in mysite/pyproject.toml: '>=3.11' differs from [project] requires-python '>=3.10': "
            "state the range once"
        ],
    ),
    "unknown_key_in_worker_group": (
        GOOD.replace('{ queues = ["mail"] }', '{ queues = ["mail"], proceses = 2 }'),
        ["unknown key tool.kiln.workers.mail.proceses in mysite/pyproject.toml (did you mean processes?)"],
    ),
    "worker_group_without_processes": (
        GOOD.replace('{ queues = ["mail"] }', '{ queues = ["mail"], processes = 0 }'),
        ["tool.kiln.workers.mail.processes in mysite/pyproject.toml: must be at least 1, not 0"],
    ),
    "worker_class_not_rqs": (
        GOOD.replace('{ queues = ["mail"] }', '{ queues = ["mail"], class = "simple" }'),
        ["tool.kiln.workers.mail.class in mysite/pyproject.toml: 'simple' is not one of 'Worker', 'SimpleWorker'"],
    ),
    "worker_group_without_queues": (
        "[tool.kiln.workers]\nmail = { processes = 2 }\n",
        ["tool.kiln.workers.mail.queues in mysite/pyproject.toml: missing (required)"],
    ),
    "timer_name_not_unit_safe": (
        '[tool.kiln.timers]\n"Clear Sessions" = { command = "clearsessions", on-calendar = "daily" }\n',
        [
            "tool.kiln.timers.Clear Sessions in mysite/pyproject.toml: the name must be lowercase letters, digits "
            "and '-', at most 40 (it names services and units)"
        ],
    ),
    "timer_without_calendar": (
        '[tool.kiln.timers]\nsessions = { command = "clearsessions", on-calendar = " " }\n',
        [
            "tool.kiln.timers.sessions.on-calendar in mysite/pyproject.toml: must not be empty "
            "(a systemd OnCalendar= expression, e.g. 'daily')"
        ],
    ),
    "health_path_with_nginx_syntax": (
        '[tool.kiln]\nhealth = "/up;return"\n',
        [
            "tool.kiln.health in mysite/pyproject.toml: '/up;return' must be a URL path: '/', then letters, "
            "digits and ._~!&()*+,=:@%/- (no query)"
        ],
    ),
    "static_url_over_kiln_media_location": (
        '[tool.kiln]\nstatic-url = "/media/static/"\n',
        ["tool.kiln.static-url in mysite/pyproject.toml: '/media/static/' overlaps /media/, which nginx serves itself"],
    ),
    "shared_media_not_an_env_key": (
        '[tool.kiln]\nshared-media = "s3://bucket"\n',
        [
            "tool.kiln.shared-media in mysite/pyproject.toml: 's3://bucket' must be an instance env key "
            "(e.g. 'AWS_STORAGE_BUCKET_NAME') or 'none'"
        ],
    ),
    "static_url_at_the_root": (
        '[tool.kiln]\nstatic-url = "/"\n',
        [
            "tool.kiln.static-url in mysite/pyproject.toml: '/' must be a URL path beginning and ending with '/', "
            "not '/' alone"
        ],
    ),
    "timer_calendar_of_two_lines": (
        '[tool.kiln.timers]\nsessions = { command = "clearsessions", on-calendar = "daily\\n[Service]" }\n',
        [
            "tool.kiln.timers.sessions.on-calendar in mysite/pyproject.toml: 'daily\\n[Service]' must be one line "
            "(a systemd OnCalendar= expression, e.g. 'daily')"
        ],
    ),
    "release_command_with_manage_py": (
        '[tool.kiln]\nrelease = ["python manage.py migrate"]\n',
        [
            "tool.kiln.release in mysite/pyproject.toml: 'python manage.py migrate': write the manage.py command "
            "alone, e.g. 'migrate --noinput'"
        ],
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_contract_is_refused_with_its_exact_problem(tmp_path, case):
    pyproject, expected = BAD[case]
    startproject(tmp_path, pyproject, LOCK_RQ)
    assert check(tmp_path) == (1, [], ["app-check: " + line for line in expected])


def test_unhashed_lock_is_refused_naming_the_file_and_first_requirement(tmp_path):
    startproject(tmp_path, lock=f"# a comment\ndjango==5.2.8\ngunicorn==23.0.0\nredis==6.0 {HASH}\n")
    assert check(tmp_path) == (
        1,
        [],
        [
            "app-check: tool.kiln.lock (default) in mysite/pyproject.toml: mysite/requirements.txt is not a hashed "
            "lock: mysite/requirements.txt line 2: django==5.2.8 has no --hash=sha256:... (and 1 more); lock it with "
            "`uv pip compile --generate-hashes` or `pip-compile --generate-hashes`"
        ],
    )


def test_invalid_toml_is_refused_naming_the_file(tmp_path):
    startproject(tmp_path, "[tool.kiln\n")
    rc, out, err = check(tmp_path)
    assert (rc, out, len(err)) == (1, [], 1)
    assert err[0].startswith("app-check: mysite/pyproject.toml is not valid TOML: ")


def test_lock_must_install_what_kiln_runs(tmp_path):
    startproject(tmp_path, GOOD, lock=f"django==5.2.8 {HASH}\n")
    assert check(tmp_path) == (
        1,
        [],
        [
            "app-check: tool.kiln.lock (default) in mysite/pyproject.toml: mysite/requirements.txt installs no "
            "gunicorn (Kiln serves the app with it)",
            "app-check: tool.kiln.lock (default) in mysite/pyproject.toml: mysite/requirements.txt installs no "
            "django-rq (the worker groups run manage.py rqworker)",
        ],
    )


def test_missing_lock_is_refused(tmp_path):
    startproject(tmp_path, '[tool.kiln]\nlock = "requirements/prod.txt"\n')
    assert check(tmp_path) == (
        1,
        [],
        [
            "app-check: tool.kiln.lock in mysite/pyproject.toml: mysite/requirements/prod.txt does not exist "
            "(a hashed lock: uv pip compile --generate-hashes)"
        ],
    )


def test_settings_default_needs_manage_py_to_name_one(tmp_path):
    app = startproject(tmp_path)
    (app / "manage.py").write_text("import sys\n")
    reason = "no default: mysite/manage.py sets no DJANGO_SETTINGS_MODULE default"
    assert check(tmp_path) == (
        1,
        [],
        [
            f"app-check: tool.kiln.wsgi (default) in mysite/pyproject.toml: {reason}; set tool.kiln.wsgi",
            f"app-check: tool.kiln.settings (default) in mysite/pyproject.toml: {reason}; set tool.kiln.settings",
        ],
    )


def test_every_problem_is_reported_in_one_run(tmp_path):
    pyproject = """\
[tool.kiln]
wsgii = "x"
wsgi = "mysite.nowsgi:application"
python = "<3.12"
health = "readyz"
queues = ["mail", "orphan"]
[tool.kiln.workers]
mail = { queues = ["mail"], processes = -1, extra = true }
"""
    startproject(tmp_path, pyproject, lock="django==5.2.8\n")
    rc, out, err = check(tmp_path)
    assert (rc, out) == (1, [])
    assert err == [
        "app-check: unknown key tool.kiln.wsgii in mysite/pyproject.toml (did you mean wsgi?)",
        "app-check: tool.kiln.health in mysite/pyproject.toml: 'readyz' must be a URL path: '/', then letters, digits "
        "and ._~!&()*+,=:@%/- (no query)",
        "app-check: unknown key tool.kiln.workers.mail.extra in mysite/pyproject.toml",
        "app-check: tool.kiln.workers.mail.processes in mysite/pyproject.toml: must be at least 1, not -1",
        "app-check: tool.kiln.wsgi in mysite/pyproject.toml: no module mysite.nowsgi in the app "
        "(no mysite/mysite/nowsgi.py or mysite/mysite/nowsgi/__init__.py)",
        "app-check: tool.kiln.lock (default) in mysite/pyproject.toml: mysite/requirements.txt is not a hashed lock: "
        "mysite/requirements.txt line 1: django==5.2.8 has no --hash=sha256:...; lock it with "
        "`uv pip compile --generate-hashes` or `pip-compile --generate-hashes`",
        "app-check: tool.kiln.lock (default) in mysite/pyproject.toml: mysite/requirements.txt installs no gunicorn "
        "(Kiln serves the app with it)",
        "app-check: tool.kiln.lock (default) in mysite/pyproject.toml: mysite/requirements.txt installs no django-rq "
        "(the worker groups run manage.py rqworker)",
        "app-check: tool.kiln.python in mysite/pyproject.toml: Python 3.13 (--python) is outside '<3.12'",
        "app-check: tool.kiln.queues in mysite/pyproject.toml: queue 'orphan' is named by no worker group",
    ]


def test_distro_profile_states_the_target_python(tmp_path):
    startproject(tmp_path, '[tool.kiln]\npython = ">=3.11,<3.13"\n')
    assert check(tmp_path, "--distro", "ubuntu-24.04") == (0, ["app-check: mysite 0.0.0: ok"], [])
    assert check(tmp_path, "--distro", "debian-13")[2] == [
        "app-check: tool.kiln.python in mysite/pyproject.toml: Python 3.13 (debian-13) is outside '>=3.11,<3.13'"
    ]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_timer_calendar_is_checked_by_systemd(tmp_path):
    startproject(tmp_path, '[tool.kiln.timers]\nsessions = { command = "clearsessions", on-calendar = "nightly" }\n')
    rc, _, err = check(tmp_path)
    assert rc == 1
    assert len(err) == 1
    assert err[0].startswith(
        "app-check: tool.kiln.timers.sessions.on-calendar in mysite/pyproject.toml: 'nightly' is not a systemd "
        "calendar expression ("
    )


def test_usage_errors_exit_2(tmp_path):
    startproject(tmp_path)
    for args in (["check", "nowhere"], ["check", "mysite", "--distro", "plan9"], ["check", "mysite", "--python", "3"]):
        res = run(tmp_path, *args)
        assert res.returncode == 2, args
        assert "kiln_app.py: error:" in res.stderr, args
    assert (
        run(tmp_path, "check", "mysite", "--distro", "plan9")
        .stderr.splitlines()[-1]
        .endswith("(known: debian-13, ubuntu-24.04)")
    )


def test_docs_table_lists_every_schema_key():
    res = run(ROOT, "docs")
    assert res.returncode == 0
    rows = [line.split("|")[1].strip() for line in res.stdout.splitlines()[2:]]
    expected = []
    for name, key in kiln_app.SCHEMA.items():
        expected += [f"`{name}`", *(f"`{name}.<name>.{sub}`" for sub in key.entry)]
    assert rows == expected
