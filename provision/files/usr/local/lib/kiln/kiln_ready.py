#!/usr/bin/env python3
"""kiln-ready: Kiln's own readiness check of the app, for any app, with or without a readiness endpoint of its own.

In order, each line with its time: the database (DATABASE_URL of the instance's env file, with the app's own
credentials and the distro's client: SELECT 1), the cache Redis (CACHE_URL: PING), the queue Redis (QUEUE_URL: a
write, SET NX of one key, which a full noeviction Redis refuses; a PING when the app has no worker groups), then a
GET of the app's health path (`health` of the current release's contract) through nginx: http://127.0.0.1 for a
path of its own (the site's HTTP server proxies it), https://127.0.0.1 for '/' (certificate not checked), with the
first name of ALLOWED_HOSTS as Host. A 2xx answer is ready (not a redirect: nginx's own HTTP -> HTTPS redirect is
one). Every check runs, whatever failed before.

  kiln-ready [--env FILE] [--app FILE] [--quiet] [--data]   exit 0 ready, 1 not ready (the failed checks named), 2 usage

Root (or group kiln: the env file is 0640 root:kiln). Standard library only: /usr/local/bin/kiln-ready links here.
"""

from __future__ import annotations

import argparse
import http.client
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

ENV_FILE = Path("/etc/kiln/kiln.env")
APP_ENV = Path("/srv/kiln/current/kiln-app.env")
TIMEOUT = 5.0


class NotReady(Exception):
    pass


def read_env(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (the env file kiln-firstboot writes: defaults, then the operator's overrides; the last one
    wins; quotes around a value are dropped)."""
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.removeprefix("export ").split("=", 1)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def read_app_env(path: Path) -> dict[str, str | list[str]]:
    """The bash assignments of kiln_app.py's `show --format env` (a release's kiln-app.env): NAME=word, NAME=(words)."""
    values: dict[str, str | list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, sep, value = line.partition("=")
        if not sep:
            continue
        if value.startswith("(") and value.endswith(")"):
            values[name] = shlex.split(value[1:-1])
        else:
            values[name] = "".join(shlex.split(value))
    return values


# --- the checks: each returns what it did, or raises NotReady with what went wrong ---
def check_database(url: str) -> str:
    u = urlsplit(url)
    if not url:
        raise NotReady("DATABASE_URL is not set")
    if not u.scheme.startswith(("mysql", "mariadb")):
        raise NotReady(f"DATABASE_URL is a {u.scheme!r} URL: Kiln checks MySQL/MariaDB databases")
    client = shutil.which("mariadb") or shutil.which("mysql")
    if client is None:
        raise NotReady("no mariadb or mysql client installed")
    query = dict(part.split("=", 1) for part in u.query.split("&") if "=" in part)
    options = {"user": unquote(u.username or ""), "password": unquote(u.password or "")}
    if u.hostname:
        options["host"] = u.hostname
    if u.port:
        options["port"] = str(u.port)
    if query.get("unix_socket"):
        options["socket"] = unquote(query["unix_socket"])
    database = unquote(u.path.lstrip("/"))
    # The password in an option file of this process only, never on a command line (ps shows those).
    with tempfile.TemporaryDirectory(prefix="kiln-ready.") as tmp:
        conf = Path(tmp) / "client.cnf"
        conf.touch(mode=0o600)
        quoted = {k: '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for k, v in options.items()}
        conf.write_text("[client]\n" + "".join(f"{k}={v}\n" for k, v in quoted.items()), encoding="utf-8")
        cmd = [client, f"--defaults-extra-file={conf}", f"--connect-timeout={int(TIMEOUT)}", "-N", "-B"]
        cmd += ["-e", "SELECT 1", *([database] if database else [])]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT * 2, check=False)
        except subprocess.TimeoutExpired as exc:
            raise NotReady(f"no answer from the database in {exc.timeout:.0f}s") from None
    where = options.get("socket") or f"{options.get('host', 'localhost')}:{options.get('port', 3306)}"
    if res.returncode != 0 or res.stdout.strip() != "1":
        said = (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]
        raise NotReady(f"SELECT 1 as {options['user']} via {where}: {said}")
    return f"SELECT 1 as {options['user']} on {database or '(no database)'} via {where}"


def resp(*words: str) -> bytes:
    out = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def reply(stream) -> str:
    """One RESP reply: '+OK', '-ERR ...', ':1', '$' bulk (its text, or '(nil)')."""
    line = stream.readline().decode(errors="replace").rstrip("\r\n")
    if not line:
        raise NotReady("the connection closed without an answer")
    if line[0] == "$":
        size = int(line[1:])
        return "(nil)" if size < 0 else stream.read(size + 2)[:-2].decode(errors="replace")
    return line


def redis_call(url: str, *commands: list[str]) -> tuple[str, list[str]]:
    """COMMANDS on the Redis of URL (redis://, rediss://, unix://), after AUTH (when the URL has a password) and SELECT
    (a database other than 0), in one round trip: where it connected, and the answers of COMMANDS. No connection, or
    an error answer to any command, raises NotReady naming it. kiln_metrics.py reads the queues with it too."""
    u = urlsplit(url)
    if not url:
        raise NotReady("no URL set (CACHE_URL, QUEUE_URL)")
    try:
        if u.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(TIMEOUT)
            sock.connect(unquote(u.path))
            where = u.path
        elif u.scheme in ("redis", "rediss"):
            sock = socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=TIMEOUT)
            if u.scheme == "rediss":
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=u.hostname)
            where = f"{u.hostname}:{u.port or 6379}"
        else:
            raise NotReady(f"{u.scheme!r} is not a Redis URL (redis://, rediss://, unix://)")
    except OSError as exc:
        raise NotReady(f"cannot connect to {u.hostname or u.path}:{u.port or ''}: {exc}") from None
    setup = []
    if u.password:
        setup.append(["AUTH", *([unquote(u.username)] if u.username else []), unquote(u.password)])
    query = dict(part.split("=", 1) for part in u.query.split("&") if "=" in part)
    db = query.get("db", "") if u.scheme == "unix" else u.path.strip("/")
    if db not in ("", "0"):
        setup.append(["SELECT", db])
    sent = [*setup, *commands]
    with sock, sock.makefile("rb") as stream:
        try:
            sock.sendall(b"".join(resp(*c) for c in sent))
            answers = [reply(stream) for _ in sent]
        except OSError as exc:
            raise NotReady(f"{where}: {exc}") from None
    for command, answer in zip(sent, answers, strict=True):
        if answer.startswith("-"):
            raise NotReady(f"{where}: {command[0]} -> {answer[1:]}")
    return where, answers[len(setup) :]


def check_redis(url: str, write: bool) -> str:
    """PING or, as a write, SET NX of one key (redis_call)."""
    where, _ = redis_call(url, ["SET", "kiln:ready", "1", "NX"] if write else ["PING"])
    return f"{'SET NX (a write)' if write else 'PING'} on {where}"


def check_http(path: str, allowed_hosts: str) -> str:
    names = [h.strip().lstrip(".") for h in allowed_hosts.split(",")]
    host = next((h for h in names if h and h != "*"), "localhost")
    if path == "/":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1",
            443,
            timeout=TIMEOUT,
            context=ssl._create_unverified_context(),  # noqa: S323 - the instance's own, often self-signed
        )
        url = f"https://127.0.0.1{path}"
    else:
        conn = http.client.HTTPConnection("127.0.0.1", 80, timeout=TIMEOUT)
        url = f"http://127.0.0.1{path}"
    try:
        conn.request("GET", path, headers={"Host": host, "User-Agent": "kiln-ready"})
        status = conn.getresponse().status
    except OSError as exc:
        raise NotReady(f"GET {url} (Host: {host}): {exc}") from None
    finally:
        conn.close()
    if not 200 <= status < 300:
        raise NotReady(f"GET {url} (Host: {host}) -> {status}")
    return f"GET {url} (Host: {host}) -> {status}"


@dataclass
class Result:
    """One check's outcome: ok, what it did (or what went wrong), how long it took."""

    name: str
    ok: bool
    detail: str
    ms: float


def run_check(name: str, check: Callable[[], str]) -> Result:
    start = time.monotonic()
    try:
        did, ok = check(), True
    except NotReady as exc:
        did, ok = str(exc), False
    return Result(name, ok, did, (time.monotonic() - start) * 1000)


def run_checks(env_file: Path = ENV_FILE, app_file: Path = APP_ENV, data_only: bool = False) -> list[Result]:
    """Every check, in order, whatever failed before (the instance's env and the release's contract read first: a
    missing one is one failed check, "env"). `kiln status` reports these too. data_only: the database and the two
    Redis instances, not the app (a cluster's web or worker host checks its data host at first boot, before the app
    may start)."""
    try:
        env, app = read_env(env_file), read_app_env(app_file)
    except OSError as exc:
        return [Result("env", False, str(exc), 0.0)]
    has_workers = bool(app.get("KILN_APP_WORKERS"))
    checks = {
        "database": lambda: check_database(env.get("DATABASE_URL", "")),
        "cache": lambda: check_redis(env.get("CACHE_URL") or env.get("REDIS_URL", ""), write=False),
        "queue": lambda: check_redis(env.get("QUEUE_URL", ""), write=has_workers),
        "app": lambda: check_http(str(app.get("KILN_APP_HEALTH") or "/"), env.get("ALLOWED_HOSTS", "")),
    }
    if data_only:
        del checks["app"]
    return [run_check(name, check) for name, check in checks.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kiln-ready", description="Kiln's readiness check of the app.")
    parser.add_argument("--env", type=Path, default=ENV_FILE, help=f"the instance's env file [{ENV_FILE}]")
    parser.add_argument("--app", type=Path, default=APP_ENV, help=f"the release's resolved contract [{APP_ENV}]")
    parser.add_argument("--quiet", action="store_true", help="print only what is not ready")
    parser.add_argument("--data", action="store_true", help="the database and the Redis instances only, not the app")
    args = parser.parse_args(argv)
    results = run_checks(args.env, args.app, data_only=args.data)
    if len(results) == 1 and results[0].name == "env":
        print(f"kiln-ready: NOT READY: {results[0].detail}", file=sys.stderr)
        return 1
    for r in results:
        if not r.ok:
            print(f"kiln-ready: {r.name} NOT READY ({r.detail})", file=sys.stderr)
        elif not args.quiet:
            print(f"kiln-ready: {r.name} ok ({r.ms:.0f} ms: {r.detail})")
    failed = [r.name for r in results if not r.ok]
    if failed:
        print(f"kiln-ready: NOT READY: {', '.join(failed)}", file=sys.stderr)
        return 1
    if not args.quiet:
        print("kiln-ready: ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
