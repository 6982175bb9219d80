#!/usr/bin/env python3
"""Kiln's app contract: the [tool.kiln] table of a Django app's pyproject.toml, read, checked and resolved.

The app dir is the folder with manage.py. Every key has a default that fits a plain `django-admin startproject` tree,
so a project without a [tool.kiln] table (or without a pyproject.toml) gets a working contract. SCHEMA, below, is the
only statement of the keys: the parsing, the validation, the defaults and `docs` (the README's table) all read it.
Nothing of the app is imported; standard library only (Python >= 3.11: the build host's and the server's python3).

  kiln_app.py check APP_DIR [--python X.Y | --distro NAME]   "app-check: NAME VERSION: ok", or every problem, one a line
  kiln_app.py show  APP_DIR [--format json|env] [same target]  the resolved contract (env: KILN_APP_*=... lines, bash)
  kiln_app.py render APP_DIR --out DIR [--release DIR] [same target]  the app's server config (supervisor, systemd,
                                                                       nginx)
  kiln_app.py docs                                              the keys as a Markdown table

The target Python (whose version must be in the app's range): --python, or the PYTHON_VERSION of the distro profile
distro/NAME.sh (in $KILN_PROVISION_DIR, else beside this file on a server, else the repository's provision/), or the
Python running this. Exit codes: 0 the contract is good, 1 it is not (every problem printed), 2 usage.
"""

from __future__ import annotations

import argparse
import ast
import copy
import difflib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "app-check: "
REQUIRED = "required"  # a Key's default when the key must be given
BAD = object()  # the resolved value of a key that has a problem (later checks skip it)

NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")  # worker groups and timers: supervisor programs, systemd units
DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+")  # Debian policy 5.6.1
QUEUE_RE = re.compile(r"[A-Za-z0-9_.:-]+")
COMMAND_RE = re.compile(r"[A-Za-z_]\w*")  # a manage.py command is a Python module name
HASH_RE = re.compile(r"--hash[=\s]+sha256:[0-9a-fA-F]{64}(?![0-9a-fA-F])")
VERSION = r"\d+(?:\.\d+)*"
CLAUSE_RE = re.compile(rf"\s*(>=|<=|==|!=|>|<)\s*({VERSION})(\.\*)?\s*")
RANGE_HELP = "comparators >=, >, <=, <, ==, != with versions such as 3.12, joined by commas: '>=3.11,<3.14'"
# URL paths go into nginx's configuration verbatim: RFC 3986 path characters, without ; $ ' (nginx syntax).
URL_PATH_PUNCTUATION = "._~!&()*+,=:@%/-"
URL_PATH = rf"/[A-Za-z0-9{re.escape(URL_PATH_PUNCTUATION)}]*"
NGINX_PATHS = ("/media/", "/kiln-errors/", "/.well-known/")  # locations of Kiln's nginx site (the static URL's peers)


# --- the value rules: each returns the problem with the value, or None ---
def check_wsgi(value: str) -> str | None:
    if not re.fullmatch(rf"{DOTTED}:[A-Za-z_]\w*", value):
        return f"{value!r} is not module:callable (e.g. 'mysite.wsgi:application')"
    return None


def check_module(value: str) -> str | None:
    return None if re.fullmatch(DOTTED, value) else f"{value!r} is not a dotted module name (e.g. 'mysite.settings')"


def check_relative_path(value: str) -> str | None:
    path = Path(value)
    if not value or path.is_absolute() or ".." in path.parts:
        return f"{value!r} must be a path inside the app, relative to it"
    return None


def parse_range(text: str) -> list[tuple[str, tuple[int, ...], bool]]:
    """'>=3.11,<3.14' -> [('>=', (3, 11), False), ('<', (3, 14), False)]; '' -> [] (any version)."""
    clauses = []
    for part in text.split(",") if text.strip() else []:
        m = CLAUSE_RE.fullmatch(part)
        if not m or (m[3] and m[1] not in ("==", "!=")):
            raise ValueError(f"{text!r} is not a version range ({RANGE_HELP})")
        clauses.append((m[1], tuple(int(n) for n in m[2].split(".")), bool(m[3])))
    return clauses


def in_range(version: tuple[int, ...], clauses: list[tuple[str, tuple[int, ...], bool]]) -> bool:
    for op, bound, wildcard in clauses:
        if wildcard:
            ok = (version[: len(bound)] == bound) == (op == "==")
        else:
            width = max(len(version), len(bound))
            v, b = version + (0,) * (width - len(version)), bound + (0,) * (width - len(bound))
            ok = {">=": v >= b, "<=": v <= b, ">": v > b, "<": v < b, "==": v == b, "!=": v != b}[op]
        if not ok:
            return False
    return True


def check_range(value: str) -> str | None:
    try:
        parse_range(value)
    except ValueError as exc:
        return str(exc)
    return None


def check_packages(value: list[str]) -> str | None:
    bad = [p for p in value if not PACKAGE_RE.fullmatch(p)]
    return f"not Debian package names: {', '.join(map(repr, bad))}" if bad else None


def check_command(value: str) -> str | None:
    try:
        words = shlex.split(value)
    except ValueError as exc:
        return f"{value!r} cannot be split into words ({exc})"
    if not words:
        return "the command is empty"
    if words[0] in ("python", "python3", "django-admin") or words[0].endswith("manage.py"):
        return f"{value!r}: write the manage.py command alone, e.g. 'migrate --noinput'"
    if not COMMAND_RE.fullmatch(words[0]):
        return f"{value!r}: {words[0]!r} is not a manage.py command name"
    return None


def check_commands(value: list[str]) -> str | None:
    problems = [p for p in map(check_command, value) if p]
    return "; ".join(problems) or None


def check_url_path(value: str) -> str | None:
    if not re.fullmatch(URL_PATH, value):
        return f"{value!r} must be a URL path: '/', then letters, digits and {URL_PATH_PUNCTUATION} (no query)"
    return None


def check_shared_media(value: str) -> str | None:
    if value != "none" and not re.fullmatch(r"[A-Z_][A-Z0-9_]*", value):
        return f"{value!r} must be an instance env key (e.g. 'AWS_STORAGE_BUCKET_NAME') or 'none'"
    return None


def check_static_url(value: str) -> str | None:
    if not re.fullmatch(URL_PATH, value) or not value.endswith("/") or value == "/":
        return f"{value!r} must be a URL path beginning and ending with '/', not '/' alone"
    taken = next((p for p in NGINX_PATHS if value.startswith(p) or p.startswith(value)), None)
    return f"{value!r} overlaps {taken}, which nginx serves itself" if taken else None


def check_queue_names(value: list[str]) -> str | None:
    bad = [q for q in value if not QUEUE_RE.fullmatch(q)]
    return f"not queue names (letters, digits, _ . : -): {', '.join(map(repr, bad))}" if bad else None


def check_group_queues(value: list[str]) -> str | None:
    return check_queue_names(value) if value else "a worker group needs at least one queue"


# rq's worker classes a group may run (rq.worker.NAME): the names are rq's, so kiln-rqworker and make bench pass
# `--worker-class rq.worker.NAME` and nothing maps one name to another.
WORKER_CLASSES = ("Worker", "SimpleWorker")


def check_worker_class(value: str) -> str | None:
    return None if value in WORKER_CLASSES else f"{value!r} is not one of {', '.join(map(repr, WORKER_CLASSES))}"


def check_processes(value: int) -> str | None:
    return None if value >= 1 else f"must be at least 1, not {value}"


def check_seconds(value: int) -> str | None:
    return None if value >= 1 else f"must be a number of seconds >= 1, not {value}"


def check_calendar(value: str) -> str | None:
    if not value.strip():
        return "must not be empty (a systemd OnCalendar= expression, e.g. 'daily')"
    if any(ord(c) < 32 for c in value):
        return f"{value!r} must be one line (a systemd OnCalendar= expression, e.g. 'daily')"
    if shutil.which("systemd-analyze") is None:  # not a systemd machine: the expression is checked where it runs
        return None
    try:
        res = subprocess.run(
            ["systemd-analyze", "calendar", value], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode == 0:
        return None
    said = [line for line in res.stderr.splitlines() if line.strip()]
    return f"{value!r} is not a systemd calendar expression ({said[-1] if said else 'systemd-analyze calendar'})"


# --- the schema ---
@dataclass(frozen=True)
class Key:
    kind: str  # "string" | "integer" | "list of strings" | "table" (of named entries, each with the keys `entry`)
    doc: str
    default: Any = None  # the value, REQUIRED, or a function of the App (a default derived from the project)
    shown: str = ""  # how `docs` shows a derived default
    check: Callable[[Any], str | None] | None = None
    entry: dict[str, Key] = field(default_factory=dict)


def default_settings(app: App) -> str | None:
    return app.manage_settings


def default_wsgi(app: App) -> str | None:
    return f"{app.manage_settings.split('.')[0]}.wsgi:application" if app.manage_settings else None


def default_python(app: App) -> str:
    declared = app.project.get("requires-python")
    return declared if isinstance(declared, str) else ""


SCHEMA: dict[str, Key] = {
    "wsgi": Key(
        "string",
        "the WSGI callable gunicorn serves, `module:callable`; the module is a file of the app",
        default_wsgi,
        "`<project>.wsgi:application`",
        check_wsgi,
    ),
    "settings": Key(
        "string",
        "the settings module (`DJANGO_SETTINGS_MODULE`); a file of the app",
        default_settings,
        "manage.py's `DJANGO_SETTINGS_MODULE` default (`<project>.settings`)",
        check_module,
    ),
    "lock": Key(
        "string",
        "the lock file pip installs, relative to the app: every requirement with `--hash=sha256:`, gunicorn among "
        "them (and django-rq when there are workers)",
        "requirements.txt",
        check=check_relative_path,
    ),
    "python": Key(
        "string",
        "the Python versions the lock supports, e.g. `>=3.11,<3.14`; the distro's Python must be one of them",
        default_python,
        "`[project] requires-python`, else any",
        check_range,
    ),
    "packages": Key(
        "list of strings",
        "extra Debian/Ubuntu packages the app needs at run time (e.g. a library a wheel links against)",
        [],
        check=check_packages,
    ),
    "build-packages": Key(
        "list of strings",
        "extra Debian/Ubuntu packages needed only to build the lock's wheels (removed after the build)",
        [],
        check=check_packages,
    ),
    "release": Key(
        "list of strings",
        "manage.py commands run once per deploy, in order, before the switch (collectstatic is Kiln's own step)",
        ["migrate --noinput"],
        check=check_commands,
    ),
    "static-root": Key(
        "string",
        "where the settings' `STATIC_ROOT` puts collectstatic's output, relative to the app",
        None,
        "Kiln's: the release's `static/`, given to the app as `STATIC_ROOT`",
        check_relative_path,
    ),
    "static-url": Key(
        "string", "the URL path nginx serves the static files at (`STATIC_URL`)", "/static/", check=check_static_url
    ),
    "health": Key(
        "string",
        "the path Kiln's readiness check GETs through nginx, after its own database and Redis checks: it must answer "
        "2xx (`/admin/login/` does, `/admin/` redirects)",
        "/",
        check=check_url_path,
    ),
    "shared-media": Key(
        "string",
        "the instance env key whose value puts the app's uploads on storage every host shares (S3), e.g. "
        "`AWS_STORAGE_BUCKET_NAME`: a web host of a cluster (KILN_ROLE=web) refuses to start without it, since another "
        "web host would not have a file uploaded to this one; `none`: the app keeps no uploads",
        None,
        "not declared: a cluster's web hosts refuse to start (an all-in-one server does not ask)",
        check_shared_media,
    ),
    "queues": Key(
        "list of strings",
        "the rq queues the app enqueues to: each must be consumed by a worker group, and no group may name another",
        None,
        "not declared (not checked)",
        check_queue_names,
    ),
    "workers": Key(
        "table",
        "rq worker groups by name (`manage.py rqworker QUEUES`); none: no worker programs (the queue Redis then only "
        "gets kiln-ready's PING)",
        {},
        "none",
        entry={
            "queues": Key(
                "list of strings",
                "the queues the group's workers take jobs from, in priority order",
                REQUIRED,
                check=check_group_queues,
            ),
            "processes": Key("integer", "how many worker processes the group runs", 1, check=check_processes),
            "class": Key(
                "string",
                "rq's worker class: `Worker` forks a child for each job (a job that crashes or leaks memory takes "
                "only its child; the fork costs the most of a short job: 11-15 ms of CPU per no-op job in make bench), "
                "`SimpleWorker` runs each job in the worker itself (~5x the jobs/s on short jobs in make bench; a job "
                "that crashes or leaks takes the worker with it, and supervisor restarts it)",
                "Worker",
                check=check_worker_class,
            ),
        },
    ),
    "job-timeout": Key(
        "integer",
        "the longest an rq job of the app runs, in seconds (its longest `job_timeout`): a deploy's warm restart of the "
        "workers, and any stop of them, waits that long plus a margin for the running job to finish",
        180,
        "`180` (rq's default job timeout)",
        check_seconds,
    ),
    "timers": Key(
        "table",
        "scheduled manage.py commands by name, run by systemd timers as the app's user",
        {},
        "none",
        entry={
            "command": Key("string", "the manage.py command, e.g. `clearsessions`", REQUIRED, check=check_command),
            "on-calendar": Key(
                "string",
                "when, as systemd's `OnCalendar=`, e.g. `daily` or `*-*-* 03:30:00`",
                REQUIRED,
                check=check_calendar,
            ),
        },
    ),
}


# --- reading an app ---
@dataclass
class App:
    dir: Path  # as given (messages name files the way the user wrote the path)
    file: Path  # its pyproject.toml
    project: dict[str, Any] = field(default_factory=dict)
    manage_settings: str | None = None
    given: set[str] = field(default_factory=set)  # the key paths the file sets
    problems: list[str] = field(default_factory=list)
    contract: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        name = self.project.get("name")
        return name if isinstance(name, str) and name else self.dir.resolve().name

    @property
    def version(self) -> str:
        version = self.project.get("version")
        return version if isinstance(version, str) and version else "0.0.0"

    def where(self, path: str) -> str:
        return f"{path} in {self.file}" if path in self.given else f"{path} (default) in {self.file}"

    def manage_py(self) -> Path:
        return self.dir / "manage.py"

    def problem(self, path: str, text: str) -> None:
        self.problems.append(f"{self.where(path)}: {text}")


def toml_type(value: Any) -> str:
    for kind, name in ((bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string")):
        if isinstance(value, kind):
            return name
    return {list: "an array", dict: "a table"}.get(type(value), "a date/time")


def shown(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def kind_problem(kind: str, value: Any) -> str | None:
    """The value's TOML type against the key's kind: the problem, or None."""
    if kind == "list of strings" and isinstance(value, list):
        odd = [v for v in value if not isinstance(v, str)]
        return f"must be a list of strings, not an array holding {toml_type(odd[0])} ({shown(odd[0])})" if odd else None
    fits = {
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "table": isinstance(value, dict),
    }.get(kind, False)
    if fits:
        return None
    article = "an" if kind[0] in "aeiou" else "a"
    return f"must be {article} {kind}, not {toml_type(value)} ({shown(value)})"


def resolve(app: App, schema: dict[str, Key], table: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The table's values by the schema, defaults filled in; every problem recorded in app.problems."""
    for name in table:
        if name not in schema:
            near = difflib.get_close_matches(name, list(schema), n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            app.problems.append(f"unknown key {prefix}.{name} in {app.file}{hint}")
    out: dict[str, Any] = {}
    for name, key in schema.items():
        path = f"{prefix}.{name}"
        if name in table:
            app.given.add(path)
            value = table[name]
        elif key.default == REQUIRED:
            app.problems.append(f"{path} in {app.file}: missing (required)")
            out[name] = BAD
            continue
        elif callable(key.default):
            value = key.default(app)
            if value is None:  # wsgi and settings, when manage.py names no settings module
                app.problem(path, f"no default: {app.manage_py()} sets no DJANGO_SETTINGS_MODULE default; set {path}")
                out[name] = BAD
                continue
        else:
            value = copy.deepcopy(key.default)
        if value is None:
            out[name] = None
            continue
        problem = kind_problem(key.kind, value)
        if problem is None and key.kind == "table":
            value = resolve_entries(app, key, value, path)
        elif problem is None and key.check:
            problem = key.check(value)
        if problem:
            app.problem(path, problem)
        out[name] = BAD if problem else value
    return out


def resolve_entries(app: App, key: Key, table: dict[str, Any], path: str) -> dict[str, Any]:
    entries = {}
    for name, entry in table.items():
        app.given.add(f"{path}.{name}")
        if not NAME_RE.fullmatch(name):
            app.problem(
                f"{path}.{name}",
                "the name must be lowercase letters, digits and '-', at most 40 (it names services and units)",
            )
        elif not isinstance(entry, dict):
            app.problem(f"{path}.{name}", f"must be a table, not {toml_type(entry)} ({shown(entry)})")
        else:
            entries[name] = resolve(app, key.entry, entry, f"{path}.{name}")
    return entries


def manage_settings(manage: Path) -> str | None:
    """The DJANGO_SETTINGS_MODULE default of manage.py's os.environ.setdefault(...) call, read without running it."""
    tree = ast.parse(manage.read_text(encoding="utf-8"), filename=str(manage))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "setdefault"
            and len(node.args) == 2
            and all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in node.args)
            and node.args[0].value == "DJANGO_SETTINGS_MODULE"
        ):
            return node.args[1].value
    return None


def module_file(app_dir: Path, module: str) -> Path | None:
    base = app_dir.joinpath(*module.split("."))
    for candidate in (base.parent / f"{base.name}.py", base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def binds(source: Path, name: str) -> bool:
    """Whether the module file binds `name` (assigns, defines or imports it); True when it cannot be told."""
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return True  # Python's own error, at the import, says more than a guess here
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and node.id == name:
            return True
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == name:
            return True
        if isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if alias.name == "*" or (alias.asname or alias.name.split(".")[0]) == name:
                    return True
    return False


def read_lock(path: Path, seen: set[Path]) -> tuple[set[str], list[str]]:
    """The requirement names of a pip requirements file (and of the files it includes with -r), and its unhashed
    requirements as 'FILE line N: REQUIREMENT'."""
    seen.add(path.resolve())
    names: set[str] = set()
    unhashed: list[str] = []
    logical, start = "", 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        start = start or number
        line = re.sub(r"(^|\s)#.*", "", raw)
        if line.rstrip().endswith("\\"):
            logical += line.rstrip()[:-1] + " "
            continue
        line, first, logical, start = (logical + line).strip(), start, "", 0
        if not line:
            continue
        include = re.fullmatch(r"(?:-r\s*|--requirement[=\s]\s*)(\S+)", line)
        if include:
            included = path.parent / include[1]
            if not included.is_file():
                unhashed.append(f"{path} line {first}: {line} (no such file)")
            elif included.resolve() not in seen:
                more, more_unhashed = read_lock(included, seen)
                names |= more
                unhashed += more_unhashed
        elif re.match(r"(-e|--editable)\b", line):  # a source tree: nothing to hash
            unhashed.append(f"{path} line {first}: {line.split(' --')[0]}")
        elif not line.startswith("-"):
            names.add(re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]*", line)[0]).lower())
            if not HASH_RE.search(line):
                unhashed.append(f"{path} line {first}: {line.split(' --')[0].split(' ;')[0].strip()}")
    return names, unhashed


# --- the checks across keys and files ---
def check_files(app: App, c: dict[str, Any]) -> None:
    if c["wsgi"] is not BAD:
        module, _, attr = c["wsgi"].partition(":")
        source = module_file(app.dir, module)
        if source is None:
            rel = app.dir.joinpath(*module.split("."))
            app.problem("tool.kiln.wsgi", f"no module {module} in the app (no {rel}.py or {rel}/__init__.py)")
        elif not binds(source, attr):
            app.problem("tool.kiln.wsgi", f"{source} defines no {attr}")
    if c["settings"] is not BAD and module_file(app.dir, c["settings"]) is None:
        rel = app.dir.joinpath(*c["settings"].split("."))
        app.problem("tool.kiln.settings", f"no module {c['settings']} in the app (no {rel}.py or {rel}/__init__.py)")
    if c["lock"] is BAD:
        return
    lock = app.dir / c["lock"]
    if not lock.is_file():
        app.problem("tool.kiln.lock", f"{lock} does not exist (a hashed lock: uv pip compile --generate-hashes)")
        return
    try:
        names, unhashed = read_lock(lock, set())
    except (OSError, UnicodeDecodeError) as exc:
        app.problem("tool.kiln.lock", f"{lock} cannot be read ({exc})")
        return
    if unhashed:
        more = f" (and {len(unhashed) - 1} more)" if len(unhashed) > 1 else ""
        app.problem(
            "tool.kiln.lock",
            f"{lock} is not a hashed lock: {unhashed[0]} has no --hash=sha256:...{more}; "
            "lock it with `uv pip compile --generate-hashes` or `pip-compile --generate-hashes`",
        )
    if "gunicorn" not in names:
        app.problem("tool.kiln.lock", f"{lock} installs no gunicorn (Kiln serves the app with it)")
    if c["workers"] and c["workers"] is not BAD and "django-rq" not in names:
        app.problem("tool.kiln.lock", f"{lock} installs no django-rq (the worker groups run manage.py rqworker)")


def check_python(app: App, c: dict[str, Any], target: tuple[tuple[int, ...], str]) -> None:
    declared = app.project.get("requires-python")
    if c["python"] is BAD:
        return
    if "tool.kiln.python" in app.given and isinstance(declared, str) and declared != c["python"]:
        app.problem(
            "tool.kiln.python",
            f"{c['python']!r} differs from [project] requires-python {declared!r}: state the range once",
        )
    if not in_range(target[0], parse_range(c["python"])):
        version = ".".join(map(str, target[0]))
        app.problem("tool.kiln.python", f"Python {version} ({target[1]}) is outside {c['python']!r}")


def check_queues(app: App, c: dict[str, Any]) -> None:
    if c["workers"] is BAD:
        return
    consumed = {q for group in c["workers"].values() if group["queues"] is not BAD for q in group["queues"]}
    if c["queues"] in (None, BAD):
        return
    for queue in c["queues"]:
        if queue not in consumed:
            app.problem("tool.kiln.queues", f"queue {queue!r} is named by no worker group")
    for name, group in c["workers"].items():
        for queue in [] if group["queues"] is BAD else group["queues"]:
            if queue not in c["queues"]:
                app.problem(f"tool.kiln.workers.{name}.queues", f"queue {queue!r} is not in tool.kiln.queues")


def load(app_dir: Path, target: tuple[tuple[int, ...], str]) -> App:
    """Read and check the app's contract: app.contract is the resolved contract, app.problems what is wrong with it."""
    app = App(app_dir, app_dir / "pyproject.toml")
    manage = app.manage_py()
    if not manage.is_file():
        app.problems.append(f"{app_dir} has no manage.py (the app dir is the folder with manage.py)")
        return app
    try:
        app.manage_settings = manage_settings(manage)
    except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
        app.problems.append(f"{manage} cannot be read as Python: {exc}")
    data: dict[str, Any] = {}
    if app.file.is_file():
        try:
            data = tomllib.loads(app.file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            app.problems.append(f"{app.file} is not valid TOML: {exc}")
            return app
    project = data.get("project", {})
    app.project = project if isinstance(project, dict) else {}
    tool = data.get("tool", {})
    table = tool.get("kiln", {}) if isinstance(tool, dict) else {}
    if not isinstance(table, dict):
        app.problems.append(f"tool.kiln in {app.file}: must be a table, not {toml_type(table)}")
        table = {}
    app.contract = c = resolve(app, SCHEMA, table, "tool.kiln")
    check_files(app, c)
    check_python(app, c, target)
    check_queues(app, c)
    return app


# --- output ---
def env_lines(app: App) -> list[str]:
    """The contract as bash assignments (lists are arrays; a table is the array of its names plus one assignment per
    key of each entry: KILN_APP_WORKERS=(default), KILN_APP_WORKERS_DEFAULT_PROCESSES=2)."""

    def assign(var: str, value: Any) -> str:
        if isinstance(value, list):
            return f"{var}=({' '.join(shlex.quote(v) for v in value)})"
        return f"{var}={shlex.quote('' if value is None else str(value))}"

    def var(*parts: str) -> str:
        return "_".join(["KILN_APP", *parts]).upper().replace("-", "_")

    lines = [assign(var("name"), app.name), assign(var("version"), app.version), assign(var("dir"), app.dir.resolve())]
    for key, value in app.contract.items():
        if SCHEMA[key].kind != "table":
            lines.append(assign(var(key), [] if value is None and SCHEMA[key].kind == "list of strings" else value))
            continue
        lines.append(assign(var(key), list(value)))
        for name, entry in value.items():
            lines += [assign(var(key, name, k), v) for k, v in entry.items()]
    return lines


# --- the server's configuration of the app, rendered by kiln-release at every switch ---
CURRENT = "/srv/kiln/current"  # the current release: app/, venv/, static/, kiln-app.env
ENV_FILE = "/etc/kiln/kiln.env"  # the instance's settings, which the app reads (KILN_ENV_FILE)
APP_ENV = f"KILN_ENV_FILE={ENV_FILE} HOME=/srv/kiln LANG=C.UTF-8 PYTHONUNBUFFERED=1"
RENDERED = "Rendered by kiln-release from the current release's contract ([tool.kiln] of its pyproject.toml)"
JOB_STOP_MARGIN = 60  # supervisor's wait for a stopped worker beyond its job's timeout: rq's own bookkeeping
SYSTEMD_SAFE = re.compile(r"[A-Za-z0-9_./:=,+@-]+")


def systemd_word(word: str) -> str:
    """One word of an ExecStart= line: quoted unless plain; specifiers (%) and variables ($) taken literally."""
    if not SYSTEMD_SAFE.fullmatch(word):
        word = '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word.replace("%", "%%").replace("$", "$$")


def supervisor_workers(c: dict[str, Any], job_timeout: int) -> str:
    """supervisord's programs for the rq worker groups: one program per group, all in the group kiln-worker."""
    programs = [f"kiln-worker-{name}" for name in c["workers"]]
    out = [
        f"; {RENDERED}: do not edit.",
        "; One program per rq worker group (kiln-rqworker GROUP N reads the group's queues from kiln-app.env, so a",
        "; deploy's changed queues take effect at its graceful worker restart), all in the group kiln-worker:",
        "; `supervisorctl restart 'kiln-worker:*'` restarts every worker.",
        "[group:kiln-worker]",
        f"programs={','.join(programs)}",
        "; after kiln-web (100): kiln-rqworker waits (bounded) until kiln-web serves",
        "priority=200",
    ]
    for name, group in c["workers"].items():
        out += [
            "",
            f"[program:kiln-worker-{name}]",
            f"; worker group {name}: queues {' '.join(group['queues'])}, rq's {group['class']}. kiln-rqworker execs",
            "; rq, so SIGTERM reaches it (warm shutdown: the current job finishes).",
            f"command=/usr/local/lib/kiln/kiln-rqworker {name} %(process_num)d",
            "priority=200",
            "process_name=%(program_name)s-%(process_num)d",
            f"numprocs={group['processes']}",
            "user=kiln",
            "directory=/srv/kiln",
            f'environment=KILN_ENV_FILE="{ENV_FILE}",HOME="/srv/kiln",LANG="C.UTF-8",PYTHONUNBUFFERED="1"',
            "autostart=true",
            "autorestart=true",
            "startsecs=5",
            "startretries=100",
            "stopsignal=TERM",
            f"; the job timeout ({job_timeout} s) + {JOB_STOP_MARGIN} s: a running job finishes",
            f"stopwaitsecs={job_timeout + JOB_STOP_MARGIN}",
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile=/var/log/kiln/worker-{name}-%(process_num)d.log",
            "stdout_logfile_maxbytes=20MB",
            "stdout_logfile_backups=5",
        ]
    return "\n".join(out) + "\n"


def timer_units(c: dict[str, Any], name: str, job_timeout: int) -> tuple[str, str]:
    """(service, timer) of a scheduled command: manage.py COMMAND as the app's user with the instance's settings."""
    timer = c["timers"][name]
    words = [f"{CURRENT}/venv/bin/python", f"{CURRENT}/app/manage.py", *shlex.split(timer["command"])]
    service = f"""\
# {RENDERED}: do not edit.
[Unit]
Description=Kiln app timer {name}: manage.py {timer["command"]}
# The app's database user and settings exist once first boot is done; Redis may be what the command uses.
After=kiln-firstboot-db.service redis-server@cache.service redis-server@queue.service

[Service]
Type=oneshot
User=kiln
Group=kiln
WorkingDirectory={CURRENT}/app
Environment={APP_ENV} DJANGO_SETTINGS_MODULE={c["settings"]} JOB_TIMEOUT={job_timeout}
ExecStart={" ".join(map(systemd_word, words))}
Nice=10
NoNewPrivileges=yes
PrivateTmp=yes
ProtectSystem=full
"""
    unit = f"""\
# {RENDERED}: do not edit.
[Unit]
Description=Kiln app timer {name} (kiln-app-{name}.service)

[Timer]
OnCalendar={timer["on-calendar"]}
# A server that was off at that time catches up once it runs again.
Persistent=true

[Install]
WantedBy=timers.target
"""
    return service, unit


def nginx_snippets(c: dict[str, Any], release: str = CURRENT) -> dict[str, str]:
    """The app's locations in Kiln's nginx site: static files (HTTPS server), the health path (HTTP server).
    release: the release's own directory (kiln-release gives it), so the static files switch with the nginx reload
    that switches the upstream to that release's gunicorn, not earlier with the `current` link."""
    https = f"""\
# {RENDERED}: do not edit.
# Included by the HTTPS server of /etc/nginx/sites-available/kiln.
# The static files (static-url) from the release's static/ (collectstatic's output, or a link to static-root): its
# own directory, switched with the nginx reload that sends the pages to its gunicorn (kiln-release's deploy).
location ^~ {c["static-url"]} {{
    alias {release}/static/;
    # 7 days, not a year: file names need not be hashed (ManifestStaticFilesStorage would allow `expires max` +
    # immutable). Each release has its own static dir, switched with `current`.
    expires 7d;
    access_log off;
    # the .gz kiln-release made beside each compressible file, sent as it is (no compression per request)
    gzip_static on;
    # A release's files never change: their descriptors and sizes are kept open (the .gz's and the file's) instead of
    # an open, fstat and close per request (make bench, AMD EPYC: the CSS file at 1 connection 58-65 -> 52-54 us of
    # server CPU per request). A reload (every deploy's switch) starts with an empty cache.
    open_file_cache max=2000 inactive=60s;
    open_file_cache_valid 60s;
    open_file_cache_errors on;
}}
"""
    http = f"# {RENDERED}: do not edit.\n# Included by the HTTP server of /etc/nginx/sites-available/kiln.\n"
    if c["health"] in ("/", "/healthz"):
        http += f"# The health path {c['health']} gets no location of its own here (the site serves it as it is).\n"
    else:
        http += (
            "# The app's health path, over plain HTTP too: load balancers' probes and kiln-ready.\n"
            f"location = {c['health']} {{ include /etc/nginx/snippets/kiln-proxy.conf; }}\n"
        )
    return {"kiln-app.conf": https, "kiln-app-http.conf": http}


def render(app: App, release: str = CURRENT, job_timeout: int | None = None) -> dict[str, str]:
    """The app's server configuration, {path under the output folder: content}: supervisor/kiln-workers.conf (no
    file: no worker group), systemd/kiln-app-NAME.{service,timer} per timer, nginx/kiln-app{,-http}.conf.
    job_timeout: the operator's (kiln-release passes common.sh's job_timeout), else the contract's job-timeout."""
    c = app.contract
    job_timeout = job_timeout or c["job-timeout"]
    files = {f"nginx/{name}": text for name, text in nginx_snippets(c, release).items()}
    if c["workers"]:
        files["supervisor/kiln-workers.conf"] = supervisor_workers(c, job_timeout)
    for name in c["timers"]:
        files[f"systemd/kiln-app-{name}.service"], files[f"systemd/kiln-app-{name}.timer"] = timer_units(
            c, name, job_timeout
        )
    return files


def docs() -> str:
    def default(key: Key) -> str:
        if key.shown:
            return key.shown
        return "required" if key.default == REQUIRED else f"`{json.dumps(key.default)}`"

    rows = ["| key | type | default | what |", "| --- | --- | --- | --- |"]
    for name, key in SCHEMA.items():
        kind = f"table of `{{{', '.join(key.entry)}}}`" if key.entry else key.kind
        rows.append(f"| `{name}` | {kind} | {default(key)} | {key.doc} |")
        rows += [f"| `{name}.<name>.{n}` | {k.kind} | {default(k)} | {k.doc} |" for n, k in key.entry.items()]
    return "\n".join(rows)


def provision_dirs() -> list[Path]:
    if os.environ.get("KILN_PROVISION_DIR"):
        return [Path(os.environ["KILN_PROVISION_DIR"])]
    here = Path(__file__).resolve().parent  # a server's /usr/local/lib/kiln, or provision/files/usr/local/lib/kiln
    return [here, *here.parents[4:5]]  # ... and then the repository's provision/


def distro_python(parser: argparse.ArgumentParser, name: str) -> str:
    """PYTHON_VERSION=X.Y of the distro profile distro/NAME.sh."""
    dirs = [d / "distro" for d in provision_dirs()]
    profile = next((d / f"{name}.sh" for d in dirs if (d / f"{name}.sh").is_file()), None)
    if profile is None or "/" in name:
        known = sorted({p.stem for d in dirs if d.is_dir() for p in d.glob("*.sh")})
        parser.error(f"no distro profile {name!r} in {' or '.join(map(str, dirs))} (known: {', '.join(known)})")
    for line in profile.read_text(encoding="utf-8").splitlines():
        m = re.fullmatch(r"""PYTHON_VERSION=(["']?)(\S+)\1\s*(#.*)?""", line.strip())
        if m:
            return m[2]
    parser.error(f"{profile} states no PYTHON_VERSION=")
    return ""  # not reached


def positive(text: str) -> int:
    """argparse type: a whole number of seconds >= 1 (check_seconds, as for the contract's job-timeout)."""
    problem = None if text.isdigit() else f"must be a whole number of seconds, not {text!r}"
    if problem is None:
        problem = check_seconds(int(text))
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kiln_app.py", description="Kiln's app contract ([tool.kiln]).")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="check an app's contract: every problem, one a line")
    show = sub.add_parser("show", help="the resolved contract, defaults filled in")
    show.add_argument("--format", choices=("json", "env"), default="json")
    rend = sub.add_parser("render", help="the server's configuration of the app, written into --out (kiln-release)")
    rend.add_argument("--out", metavar="DIR", type=Path, required=True, help="an empty or new folder")
    rend.add_argument("--release", metavar="DIR", default=CURRENT, help=f"the release's directory [{CURRENT}]")
    rend.add_argument(
        "--job-timeout", metavar="SECONDS", type=positive, help="the operator's job timeout [the contract's]"
    )
    sub.add_parser("docs", help="the contract's keys as a Markdown table")
    for p in (check, show, rend):
        p.add_argument("app_dir", metavar="APP_DIR", type=Path, help="the folder with manage.py")
        target = p.add_mutually_exclusive_group()
        target.add_argument("--python", metavar="X.Y", help="the target Python version")
        target.add_argument("--distro", metavar="NAME", help="the target: PYTHON_VERSION of distro/NAME.sh")
    args = parser.parse_args(argv)

    if args.command == "docs":
        print(docs())
        return 0
    if not args.app_dir.is_dir():
        parser.error(f"{args.app_dir} is not a directory")
    version, source = ".".join(map(str, sys.version_info[:3])), "this interpreter"
    if args.distro:
        version, source = distro_python(parser, args.distro), args.distro
    elif args.python:
        version, source = args.python, "--python"
    if not re.fullmatch(r"\d+\.\d+(?:\.\d+)?", version):
        parser.error(f"{version!r} ({source}) is not a Python version such as 3.13")
    app = load(args.app_dir, (tuple(int(n) for n in version.split(".")), source))
    for problem in app.problems:
        print(PREFIX + problem, file=sys.stderr)
    if app.problems:
        return 1
    if args.command == "check":
        print(f"{PREFIX}{app.name} {app.version}: ok")
    elif args.command == "render":
        for rel, text in render(app, args.release, args.job_timeout).items():
            (args.out / rel).parent.mkdir(parents=True, exist_ok=True)
            (args.out / rel).write_text(text, encoding="utf-8")
            print(rel)
    elif args.format == "env":
        print("\n".join(env_lines(app)))
    else:
        info = {"name": app.name, "version": app.version, "dir": str(app.dir.resolve())}
        print(json.dumps({**info, "contract": app.contract}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
