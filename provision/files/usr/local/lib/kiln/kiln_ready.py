#!/usr/bin/env python3
"""kiln-ready: Kiln's own readiness check of the app, for any app, with or without a readiness endpoint of its own.

In order, each line with its time: the database (DATABASE_URL of the instance's env file, with the app's own
credentials and the distro's client: SELECT 1; over TLS as the URL's options say, database_url), the cache Redis
(CACHE_URL: PING), the queue Redis (QUEUE_URL: a write, SET NX of one key, which a full noeviction Redis refuses; a
PING when the app has no worker groups; rediss:// as redis_url says), then a GET of the app's health path (`health`
of the current release's contract) through nginx: http://127.0.0.1 for a path of its own (the site's HTTP server
proxies it), https://127.0.0.1 for '/' (certificate not checked), with the first name of ALLOWED_HOSTS as Host. A 2xx
answer is ready (not a redirect: nginx's own HTTP -> HTTPS redirect is one). Every check runs, whatever failed before.

  kiln-ready [--env FILE] [--app FILE] [--quiet] [--data]   exit 0 ready, 1 not ready (the failed checks named), 2 usage

Root (or group kiln: the env file is 0640 root:kiln). Standard library only: /usr/local/bin/kiln-ready links here.
"""

from __future__ import annotations

import argparse
import difflib
import http.client
import ipaddress
import os
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
from urllib.parse import parse_qsl, unquote, urlsplit

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


# --- the URLs' options: Kiln's clients read DATABASE_URL, CACHE_URL and QUEUE_URL as the app's drivers do ---------
# (README, "Managed databases and Redis over TLS"). kiln_backup.py connects with these too: one reading of a URL.
class URLError(ValueError):
    """A URL option Kiln does not know, or a value it cannot use: the message names it."""


# DATABASE_URL: the TLS options, spelt as MariaDB's and MySQL's client options (and providers' connection strings:
# ?ssl-mode=REQUIRED), which the app's settings turn into mysqlclient's ssl_mode and ssl; and the ones that only tune
# the app's connection, as django-environ reads them (Kiln's clients take unix_socket and leave the others).
DB_TLS_OPTIONS = ("ssl-mode", "ssl-ca", "ssl-cert", "ssl-key")
DB_SSL_MODES = ("REQUIRED", "VERIFY_CA", "VERIFY_IDENTITY")
# django-environ's own (Django's CONN_MAX_AGE...), which it reads in any case.
DB_ENVIRON_OPTIONS = (
    "conn_max_age",
    "conn_health_checks",
    "atomic_requests",
    "autocommit",
    "disable_server_side_cursors",
)
DB_OTHER_OPTIONS = (
    "unix_socket",
    *DB_ENVIRON_OPTIONS,
    "charset",
    "connect_timeout",
    "init_command",
    "isolation_level",
    "read_timeout",
    "write_timeout",
)
# CACHE_URL, QUEUE_URL: redis-py's own names (the app's django-redis and django-rq hand the URL to redis-py), the TLS
# ones Kiln honours, and the ones that only tune the app's client.
REDIS_TLS_OPTIONS = ("ssl_ca_certs", "ssl_cert_reqs", "ssl_check_hostname", "ssl_certfile", "ssl_keyfile")
REDIS_OTHER_OPTIONS = (
    "db",
    "socket_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
    "retry_on_timeout",
    "health_check_interval",
    "max_connections",
    "protocol",
)
REDIS_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
BOOLEANS = dict.fromkeys(("1", "true", "t", "yes", "y"), True) | dict.fromkeys(("0", "false", "f", "no", "n"), False)


def url_options(key: str, query: str, known: tuple[str, ...]) -> dict[str, str]:
    """The options of a URL's query, decoded as the drivers decode them (parse_qs). One Kiln does not know, given
    twice or without a value is an error naming it: the app's driver would refuse it, or worse, ignore it."""
    options: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        norm = name.lower() if name.lower() in DB_ENVIRON_OPTIONS else name
        if norm not in known:
            close = [k for k in known if k.replace("_", "-") == norm.lower().replace("_", "-")]
            close = close or difflib.get_close_matches(norm, known, n=1, cutoff=0.7)
            hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(known)}"
            raise URLError(f"{key} option {name!r} is not one Kiln knows ({hint})")
        if norm in options or not value:
            raise URLError(f"{key} option {name!r} {'is given twice' if value else 'has no value'}")
        options[norm] = value
    return options


def existing_file(key: str, option: str, path: str) -> str:
    # The clients' own message for a missing file does not name it ("TLS/SSL error: No such file or directory").
    if not os.path.isfile(path):
        raise URLError(f"{key}: {option}={path}: no such file")
    return path


@dataclass
class DatabaseURL:
    """DATABASE_URL as Kiln's clients (mariadb or mysql, their dump tools) connect with it."""

    user: str
    password: str
    host: str | None
    port: int | None
    socket: str | None
    database: str
    tls: bool = False  # TLS or no connection
    verify: bool = False  # the server's certificate checked, its host name too
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def where(self) -> str:
        where = self.socket or f"{self.host or 'localhost'}:{self.port or 3306}"
        if not self.tls:
            return where
        checked = "certificate not checked"
        if self.verify:
            checked = f"certificate checked{f' against {self.ca}' if self.ca else ''}"
        return f"{where} over TLS ({checked})"

    def client_options(self, flavor: str | None = None, as_the_app: bool = False) -> dict[str, str | None]:
        """The [client] options of the URL's user (credentials, server, TLS: tls_options) for FLAVOR's client
        ('mariadb' or 'mysql'; default: this host's, client_flavor())."""
        options: dict[str, str | None] = {"user": self.user, "password": self.password}
        if self.host:
            options["host"] = self.host
        if self.port:
            options["port"] = str(self.port)
        if self.socket:
            options["socket"] = self.socket
        return options | self.tls_options(flavor or client_flavor(), as_the_app)

    def tls_options(self, flavor: str, as_the_app: bool = False) -> dict[str, str | None]:
        """The client's TLS options for what the URL says. A URL without TLS options leaves the client's default,
        unless AS_THE_APP (kiln-ready, whose check stands for the app's connection): mysqlclient on libmariadb then
        uses no TLS, where Debian's mariadb client would (skip-ssl); on libmysqlclient it uses TLS when the server
        offers it, as MySQL's client does by itself. A dump (kiln-backup) keeps whatever TLS the client gets."""
        files = {k: v for k, v in (("ssl-ca", self.ca), ("ssl-cert", self.cert), ("ssl-key", self.key)) if v}
        if flavor == "mariadb":
            if not self.tls:
                return {"skip-ssl": None} if as_the_app else {}
            return {"ssl": None, **files, f"{'' if self.verify else 'skip-'}ssl-verify-server-cert": None}
        if not self.tls:
            return {}
        return {"ssl-mode": "VERIFY_IDENTITY" if self.verify else "REQUIRED", **files}


def client_flavor() -> str:
    """'mariadb' where MariaDB's client is installed (Debian: also as mysql), else 'mysql' (Ubuntu's MySQL)."""
    return "mariadb" if shutil.which("mariadb") else "mysql"


def database_url(url: str) -> DatabaseURL:
    """DATABASE_URL read for Kiln's clients, with the meaning the app's settings give it (app/kiln/settings.py):
      ssl-mode=REQUIRED                   TLS, the server's certificate not checked
      ssl-mode=VERIFY_IDENTITY|VERIFY_CA  TLS, the certificate checked and its host name too (MariaDB's client and
                                          mysqlclient on libmariadb check both), against ssl-ca or the system's CAs
      ssl-ca=FILE                         TLS, the certificate checked against FILE, whatever ssl-mode says (a CA is
                                          given to be checked against, as MySQL's client does with REQUIRED)
      ssl-cert=FILE&ssl-key=FILE          TLS with this client certificate
    URLError names what is wrong."""
    u = urlsplit(url)
    if not url:
        raise URLError("DATABASE_URL is not set")
    if not u.scheme.startswith(("mysql", "mariadb")):
        raise URLError(f"DATABASE_URL is a {u.scheme!r} URL: Kiln checks MySQL/MariaDB databases")
    try:
        port = u.port
    except ValueError as exc:
        raise URLError(f"DATABASE_URL: {exc}") from None
    opts = url_options("DATABASE_URL", u.query, DB_TLS_OPTIONS + DB_OTHER_OPTIONS)
    mode = opts.get("ssl-mode", "").upper()
    if mode and mode not in DB_SSL_MODES:
        raise URLError(
            f"DATABASE_URL: ssl-mode={opts['ssl-mode']} is not one Kiln supports ({', '.join(DB_SSL_MODES)})"
        )
    if ("ssl-cert" in opts) != ("ssl-key" in opts):
        raise URLError("DATABASE_URL: a client certificate needs both ssl-cert and ssl-key")
    files = {k: existing_file("DATABASE_URL", k, opts[k]) for k in ("ssl-ca", "ssl-cert", "ssl-key") if k in opts}
    return DatabaseURL(
        user=unquote(u.username or ""),
        password=unquote(u.password or ""),
        host=u.hostname,
        port=port,
        socket=opts.get("unix_socket"),
        database=unquote(u.path.lstrip("/")),
        tls=bool(mode or files),
        verify="ssl-ca" in files or mode.startswith("VERIFY_"),
        ca=files.get("ssl-ca"),
        cert=files.get("ssl-cert"),
        key=files.get("ssl-key"),
    )


def option_file(options: dict[str, str | None]) -> str:
    """A MariaDB client option file's [client] group: values quoted (a password may hold any character), flags bare."""

    def quoted(v: str) -> str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'

    broken = [k for k, v in options.items() if v is not None and "\n" in v]
    if broken:
        raise URLError(f"a line break in {', '.join(broken)}: it would end the value and start an option of its own")
    lines = [k if v is None else f"{k}={quoted(v)}" for k, v in options.items()]
    return "[client]\n" + "".join(f"{line}\n" for line in lines)


@dataclass
class RedisTLS:
    """The TLS of a rediss:// URL, as redis-py's SSLConnection makes it from the URL's options."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    cert_reqs: ssl.VerifyMode = ssl.CERT_REQUIRED
    check_hostname: bool = True

    def context(self) -> ssl.SSLContext:
        # redis-py's order: the system's CAs, then ssl_ca_certs added to them; check_hostname before verify_mode
        # (CERT_NONE with check_hostname on is refused).
        context = ssl.create_default_context()
        context.check_hostname = self.check_hostname and self.cert_reqs != ssl.CERT_NONE
        context.verify_mode = self.cert_reqs
        if self.cert:
            context.load_cert_chain(certfile=self.cert, keyfile=self.key)
        if self.ca:
            context.load_verify_locations(cafile=self.ca)
        return context

    def cli_args(self, host: str) -> list[str]:
        """redis-cli's options for the same connection. redis-cli checks the certificate's chain, never its host
        name."""
        args = ["--tls", *(["--cacert", self.ca] if self.ca else [])]
        if self.cert and self.key:
            args += ["--cert", self.cert, "--key", self.key]
        if self.cert_reqs == ssl.CERT_NONE:
            args.append("--insecure")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            args += ["--sni", host]  # as Python's ssl sends it: for a name, never for an address
        return args


@dataclass
class RedisURL:
    scheme: str
    host: str
    port: int
    path: str  # unix://: the socket
    username: str
    password: str
    db: str
    tls: RedisTLS | None

    def where(self) -> str:
        return self.path if self.scheme == "unix" else f"{self.host}:{self.port}"


def redis_url(url: str, key: str = "the Redis URL") -> RedisURL:
    """A Redis URL (redis://, rediss://, unix://) read as redis-py reads it: the database of ?db= or the path, and
    for rediss:// the TLS options ssl_ca_certs=FILE (the CA to check the server's certificate against, added to the
    system's), ssl_cert_reqs=none|optional|required, ssl_check_hostname=false, ssl_certfile=FILE&ssl_keyfile=FILE.
    URLError names what is wrong."""
    u = urlsplit(url)
    if not url:
        raise URLError("no URL set (CACHE_URL, QUEUE_URL)")
    if u.scheme not in ("redis", "rediss", "unix"):
        raise URLError(f"{u.scheme!r} is not a Redis URL (redis://, rediss://, unix://)")
    try:
        port = u.port or 6379
    except ValueError as exc:
        raise URLError(f"{key}: {exc}") from None
    opts = url_options(key, u.query, REDIS_TLS_OPTIONS + REDIS_OTHER_OPTIONS)
    given = [k for k in REDIS_TLS_OPTIONS if k in opts]
    tls = None
    if u.scheme == "rediss":
        tls = RedisTLS()
        if "ssl_ca_certs" in opts:
            tls.ca = existing_file(key, "ssl_ca_certs", opts["ssl_ca_certs"])
        if ("ssl_certfile" in opts) != ("ssl_keyfile" in opts):
            raise URLError(f"{key}: a client certificate needs both ssl_certfile and ssl_keyfile")
        if "ssl_certfile" in opts:
            tls.cert = existing_file(key, "ssl_certfile", opts["ssl_certfile"])
            tls.key = existing_file(key, "ssl_keyfile", opts["ssl_keyfile"])
        reqs = opts.get("ssl_cert_reqs", "required")
        if reqs not in REDIS_CERT_REQS:
            raise URLError(f"{key}: ssl_cert_reqs={reqs} is not one of {', '.join(REDIS_CERT_REQS)}")
        tls.cert_reqs = REDIS_CERT_REQS[reqs]
        check = opts.get("ssl_check_hostname", "true")
        if check.lower() not in BOOLEANS:
            raise URLError(f"{key}: ssl_check_hostname={check} is neither true nor false")
        tls.check_hostname = BOOLEANS[check.lower()]
    elif given:
        # redis-py refuses them on a plain connection (an unexpected keyword argument).
        raise URLError(f"{key}: {', '.join(given)} is for a rediss:// URL, not {u.scheme}://")
    db = opts.get("db") or ("" if u.scheme == "unix" else u.path.strip("/")) or "0"
    if not db.isdigit():
        raise URLError(f"{key}: the database {db!r} is not a number")
    return RedisURL(
        scheme=u.scheme,
        host=u.hostname or "127.0.0.1",
        port=port,
        path=unquote(u.path),
        username=unquote(u.username or ""),
        password=unquote(u.password or ""),
        db=db,
        tls=tls,
    )


# --- the checks: each returns what it did, or raises NotReady with what went wrong ---
def check_database(url: str) -> str:
    try:
        db = database_url(url)
        options = option_file(db.client_options(as_the_app=True))
    except URLError as exc:
        raise NotReady(str(exc)) from None
    client = shutil.which(client_flavor())
    if client is None:
        raise NotReady("no mariadb or mysql client installed")
    # The password in an option file of this process only, never on a command line (ps shows those).
    with tempfile.TemporaryDirectory(prefix="kiln-ready.") as tmp:
        conf = Path(tmp) / "client.cnf"
        conf.touch(mode=0o600)
        conf.write_text(options, encoding="utf-8")
        cmd = [client, f"--defaults-extra-file={conf}", f"--connect-timeout={int(TIMEOUT)}", "-N", "-B"]
        query = "SELECT 1; SHOW SESSION STATUS LIKE 'Ssl_version'" if db.tls else "SELECT 1"
        cmd += ["-e", query, *([db.database] if db.database else [])]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT * 2, check=False)
        except subprocess.TimeoutExpired as exc:
            raise NotReady(f"no answer from the database in {exc.timeout:.0f}s") from None
    out = res.stdout.splitlines()
    if res.returncode != 0 or out[:1] != ["1"]:
        said = (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]
        if not db.tls and not db.socket and "ERROR 1045 " in said:
            # Also MariaDB's answer to a login without TLS where TLS is required, which does not say so.
            said += " (or TLS is required: DATABASE_URL has no ssl-mode or ssl-ca, and MariaDB refuses so without TLS)"
        raise NotReady(f"SELECT 1 as {db.user} via {db.where()}: {said}")
    if db.tls and out[1:2] in ([], ["Ssl_version\t"]):
        # MariaDB's client library (the app's mysqlclient too) goes on in plain text when a server offers no TLS,
        # unless the certificate is checked: the app would, and the URL asked for TLS.
        raise NotReady(f"SELECT 1 as {db.user} via {db.where()}: the server offers no TLS, the session is plain text")
    return f"SELECT 1 as {db.user} on {db.database or '(no database)'} via {db.where()}"


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


def redis_call(url: str, *commands: list[str], key: str = "the Redis URL") -> tuple[str, list[str]]:
    """COMMANDS on the Redis of URL (redis://, rediss://, unix://; redis_url), after AUTH (when the URL has a password)
    and SELECT (a database other than 0), in one round trip: where it connected, and the answers of COMMANDS. No
    connection, a URL Kiln cannot read, or an error answer to any command, raises NotReady naming it. kiln_metrics.py
    reads the queues with it too."""
    try:
        r = redis_url(url, key)
    except URLError as exc:
        raise NotReady(str(exc)) from None
    where = r.where()
    try:
        if r.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(TIMEOUT)
            sock.connect(r.path)
        else:
            sock = socket.create_connection((r.host, r.port), timeout=TIMEOUT)
            if r.tls:
                sock = r.tls.context().wrap_socket(sock, server_hostname=r.host)
    except ssl.SSLCertVerificationError as exc:
        # OpenSSL's words for the certificate's problem, without the exception's wrapping.
        raise NotReady(f"TLS with {where}: certificate verify failed: {exc.verify_message}") from None
    except ssl.SSLError as exc:
        raise NotReady(f"TLS with {where}: {exc.reason or exc}") from None
    except OSError as exc:
        raise NotReady(f"cannot connect to {where}: {exc}") from None
    setup = []
    if r.password:
        setup.append(["AUTH", *([r.username] if r.username else []), r.password])
    if r.db != "0":
        setup.append(["SELECT", r.db])
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


def check_redis(url: str, write: bool, key: str = "the Redis URL") -> str:
    """PING or, as a write, SET NX of one key (redis_call)."""
    where, _ = redis_call(url, ["SET", "kiln:ready", "1", "NX"] if write else ["PING"], key=key)
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
        "cache": lambda: check_redis(env.get("CACHE_URL") or env.get("REDIS_URL", ""), write=False, key="CACHE_URL"),
        "queue": lambda: check_redis(env.get("QUEUE_URL", ""), write=has_workers, key="QUEUE_URL"),
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
