"""A managed database and Redis over TLS (issue 14): DATABASE_URL's ssl-mode, ssl-ca, ssl-cert and ssl-key, and a
rediss:// CACHE_URL with ssl_ca_certs, read the same way by Kiln's clients (kiln_ready.py's database_url and redis_url:
kiln-ready, and kiln_backup.py's dbconf and redis for kiln-backup's mariadb-dump and redis-cli) and by the reference
app's settings (django-environ, then app/kiln/settings.py's own reading of the TLS options for mysqlclient; redis-py's
own for django-redis and django-rq). Against real servers started here on loopback, nothing mocked:
  - a mariadbd (tests/tools/backup_harness.py's start_mariadb) with a certificate of a CA made here by openssl and
    require_secure_transport=ON, a second one without TLS;
  - a redis-server with --tls-port only (--port 0), its certificate for the name localhost only.
Needs root (mariadbd runs as mysql), mariadbd, redis-server and openssl; skipped without them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from backup_harness import HELPER, KILN_BACKUP, MARIADBD, start_mariadb, stop_mariadb
from kilntest import ROOT, load

LIB = ROOT / "provision" / "files" / "usr" / "local" / "lib" / "kiln"
APP = ROOT / "app"
kiln_ready = load("kiln_ready", LIB / "kiln_ready.py")
services = load("kiln_services", ROOT / "tests" / "app" / "kiln_services.py")

PASSWORD = "tls p@ss/word"  # URL-quoted in the URLs: a password a client could get wrong
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="mariadbd --user=mysql needs root"),
    pytest.mark.skipif(
        not (Path(MARIADBD).exists() and shutil.which("mariadb-install-db") and shutil.which("mariadb-dump")),
        reason="needs mariadbd, mariadb-install-db and mariadb-dump (apt-get install -y mariadb-server)",
    ),
    pytest.mark.skipif(
        not (shutil.which("redis-server") and shutil.which("redis-cli") and shutil.which("openssl")),
        reason="needs redis-server, redis-cli and openssl",
    ),
]


@dataclass
class PKI:
    ca: Path  # signed both servers' certificates and the client's
    other_ca: Path  # a CA that signed nothing here: "the wrong CA"
    db_cert: Path  # names IP 127.0.0.2 (MariaDB's clients take "localhost" for the socket)
    db_key: Path
    redis_cert: Path  # names localhost only: 127.0.0.1 is a name mismatch
    redis_key: Path
    client_cert: Path
    client_key: Path


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_pki(d: Path) -> PKI:
    def cert(name: str, subject: str, san: str | None) -> tuple[Path, Path]:
        key, csr, crt, ext = (d / f"{name}.{x}" for x in ("key", "csr", "crt", "ext"))
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", subject)
        ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
        openssl("x509", "-req", "-in", str(csr), "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"),
                "-CAcreateserial", "-days", "2", "-out", str(crt), "-extfile", str(ext))  # fmt: skip
        return crt, key

    for ca, subject in (("ca", "/CN=Kiln test CA"), ("other-ca", "/CN=Another CA")):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / f"{ca}.key"),
                "-out", str(d / f"{ca}.crt"), "-days", "2", "-subj", subject)  # fmt: skip
    db = cert("db", "/CN=db.kiln.test", "IP:127.0.0.2")
    redis = cert("redis", "/CN=localhost", "DNS:localhost")
    client = cert("client", "/CN=kiln-client", None)
    for f in d.iterdir():
        f.chmod(0o644)  # mariadbd runs as mysql
    return PKI(d / "ca.crt", d / "other-ca.crt", *db, *redis, *client)


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    # Under /var/tmp: mariadbd runs as mysql, which cannot enter pytest's 0700 /tmp/pytest-of-root.
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="kiln-tls-test-") as d:
        os.chmod(d, 0o755)
        (Path(d) / "pki").mkdir(mode=0o755)
        yield Path(d)


@pytest.fixture(scope="module")
def pki(base: Path) -> PKI:
    return make_pki(base / "pki")


@dataclass
class DB:
    host: str
    port: int
    socket: Path

    def url(self, query: str = "", user: str = "kiln") -> str:
        return f"mysql://{user}:{quote(PASSWORD, safe='')}@{self.host}:{self.port}/kiln{'?' + query if query else ''}"

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def sql(self, query: str) -> str:
        res = subprocess.run(["mariadb", "--no-defaults", "-S", str(self.socket), "-N", "-B", "-e", query],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert res.returncode == 0, f"{query}: {res.stderr}"
        return res.stdout


def started_db(base: Path, host: str, *server_args: str) -> Iterator[DB]:
    port = services.free_port()
    proc, sock = start_mariadb(base, port, ["--skip-name-resolve", f"--bind-address={host}", *server_args])
    db = DB(host, port, sock)
    pw = PASSWORD.replace("'", "''")
    db.sql(
        f"CREATE USER 'kiln'@'%' IDENTIFIED BY '{pw}'; CREATE USER 'kiln_x509'@'%' IDENTIFIED BY '{pw}' REQUIRE X509;"
        "CREATE DATABASE kiln CHARACTER SET utf8mb4; GRANT ALL ON kiln.* TO 'kiln'@'%';"
        "GRANT ALL ON kiln.* TO 'kiln_x509'@'%'; CREATE TABLE kiln.records_record (id INT PRIMARY KEY, title TEXT);"
        "INSERT INTO kiln.records_record VALUES (1, 'over TLS'), (2, 'still TLS');"
    )
    yield db
    stop_mariadb(proc)


@pytest.fixture(scope="module")
def tls_db(base: Path, pki: PKI) -> Iterator[DB]:
    tls = [f"--ssl-ca={pki.ca}", f"--ssl-cert={pki.db_cert}", f"--ssl-key={pki.db_key}"]
    # Not on 127.0.0.1: kiln-backup reads a database there as root over the socket (a local one).
    yield from started_db(base / "tls-db", "127.0.0.2", *tls, "--require-secure-transport=ON")


@pytest.fixture(scope="module")
def plain_db(base: Path) -> Iterator[DB]:
    yield from started_db(base / "plain-db", "127.0.0.1")


@dataclass
class Redis:
    port: int

    def url(self, query: str = "", host: str = "localhost", db: int = 0) -> str:
        return f"rediss://:{quote(PASSWORD, safe='')}@{host}:{self.port}/{db}{'?' + query if query else ''}"


@pytest.fixture(scope="module")
def tls_redis(base: Path, pki: PKI) -> Iterator[Redis]:
    port = services.free_port()
    argv = [shutil.which("redis-server") or "redis-server", "--port", "0", "--tls-port", str(port),
            "--bind", "127.0.0.1", "--tls-cert-file", str(pki.redis_cert), "--tls-key-file", str(pki.redis_key),
            "--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", "no", "--requirepass", PASSWORD,
            "--save", "", "--appendonly", "no", "--dir", str(base)]  # fmt: skip

    def ready() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass

    proc = services.Process("redis-tls", argv, base / "redis.log", ready)
    proc.start()
    yield Redis(port)
    proc.stop()


def not_ready(check, *args, **kwargs) -> str:
    with pytest.raises(kiln_ready.NotReady) as exc:
        check(*args, **kwargs)
    return str(exc.value)


# --- kiln-ready's database check ---------------------------------------------------------------------------------


def test_kiln_ready_database_over_tls_checked_against_the_ca(tls_db: DB, pki: PKI):
    did = kiln_ready.check_database(tls_db.url(f"ssl-ca={pki.ca}"))
    assert did == f"SELECT 1 as kiln on kiln via {tls_db.where} over TLS (certificate checked against {pki.ca})"
    # REQUIRED: TLS without checking the certificate (a provider's own CA not at hand), as mysqlclient does with it.
    did = kiln_ready.check_database(tls_db.url("ssl-mode=REQUIRED"))
    assert did.endswith("over TLS (certificate not checked)"), did


def test_kiln_ready_database_refuses_a_certificate_of_another_ca(tls_db: DB, pki: PKI):
    said = not_ready(kiln_ready.check_database, tls_db.url(f"ssl-ca={pki.other_ca}"))
    assert said == (
        f"SELECT 1 as kiln via {tls_db.where} over TLS (certificate checked against {pki.other_ca}): "
        "ERROR 2026 (HY000): TLS/SSL error: self-signed certificate in certificate chain"
    )
    # VERIFY_IDENTITY without ssl-ca: the system's CAs, which never signed this test's CA.
    said = not_ready(kiln_ready.check_database, tls_db.url("ssl-mode=VERIFY_IDENTITY"))
    assert said.endswith(
        "(certificate checked): ERROR 2026 (HY000): TLS/SSL error: self-signed certificate in certificate chain"
    )


def test_kiln_ready_database_without_tls_is_refused_as_the_app_would_be(tls_db: DB):
    # Debian's mariadb client would use TLS unasked; mysqlclient does not, so kiln-ready does not either, and the
    # server's refusal (MariaDB says "Access denied" for a login without TLS) comes with the likely reason.
    said = not_ready(kiln_ready.check_database, tls_db.url())
    assert said.startswith(f"SELECT 1 as kiln via {tls_db.where}: ERROR 1045 (28000): Access denied"), said
    assert "no ssl-mode or ssl-ca" in said, said


def test_kiln_ready_database_tls_required_from_a_server_without_it(plain_db: DB, pki: PKI):
    # MariaDB's client library, the mariadb client's and the app's mysqlclient's, goes on in plain text when the
    # server offers no TLS and the certificate is not checked (ssl-mode=REQUIRED): kiln-ready says so.
    said = not_ready(kiln_ready.check_database, plain_db.url("ssl-mode=REQUIRED"))
    assert said == (
        f"SELECT 1 as kiln via {plain_db.where} over TLS (certificate not checked): "
        "the server offers no TLS, the session is plain text"
    )
    assert probe(DATABASE_URL=plain_db.url("ssl-mode=REQUIRED"))["db"] == "", "the app's session: plain text"
    # With a certificate to check, the client library itself refuses.
    said = not_ready(kiln_ready.check_database, plain_db.url(f"ssl-ca={pki.ca}"))
    assert said.endswith("ERROR 2026 (HY000): TLS/SSL error: SSL is required, but the server does not support it")
    assert kiln_ready.check_database(plain_db.url()) == f"SELECT 1 as kiln on kiln via {plain_db.where}"


def test_kiln_ready_database_with_a_client_certificate(tls_db: DB, pki: PKI):
    cert = f"ssl-ca={pki.ca}&ssl-cert={pki.client_cert}&ssl-key={pki.client_key}"
    assert kiln_ready.check_database(tls_db.url(cert, user="kiln_x509")).startswith("SELECT 1 as kiln_x509 on kiln")
    said = not_ready(kiln_ready.check_database, tls_db.url(f"ssl-ca={pki.ca}", user="kiln_x509"))
    assert "ERROR 1045 (28000): Access denied for user 'kiln_x509'" in said, said


# --- kiln-backup: dbconf's option file for mariadb-dump, redis for redis-cli --------------------------------------


def backup_helper(*args: str) -> subprocess.CompletedProcess:
    # The system's python3, as kiln-backup runs its helper.
    return subprocess.run(["python3", str(HELPER), *args], capture_output=True, text=True, timeout=60)


def test_kiln_backup_dumps_over_tls_with_dbconfs_option_file(tls_db: DB, pki: PKI, tmp_path: Path):
    env, conf = tmp_path / "kiln.env", tmp_path / "client.cnf"
    env.write_text(f"DATABASE_URL={tls_db.url(f'ssl-ca={pki.ca}')}\n")
    res = backup_helper("dbconf", str(env), str(conf), "/run/mysqld/mysqld.sock")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["DB_NAME=kiln", "DB_LOCAL=0"]
    assert conf.stat().st_mode & 0o777 == 0o600
    assert conf.read_text().splitlines()[-3:] == ["ssl", f'ssl-ca="{pki.ca}"', "ssl-verify-server-cert"]
    dump = subprocess.run(["mariadb-dump", f"--defaults-extra-file={conf}", "--single-transaction", "kiln"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert dump.returncode == 0, dump.stderr
    # The server takes no session without TLS (require_secure_transport): these rows came over TLS.
    assert re.search(r"\(1,'over TLS'\),\s*\(2,'still TLS'\);", dump.stdout) and "-- Dump completed" in dump.stdout

    env.write_text(f"DATABASE_URL={tls_db.url(f'ssl-ca={pki.other_ca}')}\n")
    assert backup_helper("dbconf", str(env), str(conf), "/run/mysqld/mysqld.sock").returncode == 0
    dump = subprocess.run(["mariadb-dump", f"--defaults-extra-file={conf}", "kiln"], capture_output=True, text=True)
    assert dump.returncode != 0 and "self-signed certificate in certificate chain" in dump.stderr, dump.stderr


def test_kiln_backup_refuses_an_unknown_database_url_option(tmp_path: Path, pki: PKI):
    env, conf = tmp_path / "kiln.env", tmp_path / "client.cnf"
    env.write_text(f"DATABASE_URL=mysql://kiln:pw@db.example:25060/kiln?ssl-mode=REQUIRED&sslca={pki.ca}\n")
    res = backup_helper("dbconf", str(env), str(conf), "/run/mysqld/mysqld.sock")
    assert res.returncode == 1 and not conf.exists()
    assert res.stderr == (
        f"kiln-backup: ERROR: DATABASE_URL option 'sslca' is not one Kiln knows (did you mean ssl-ca?) (in {env})\n"
    )


def flush_cache(env: Path) -> subprocess.CompletedProcess:
    """kiln-backup's own lines that empty the cache Redis after a restore (from its restore), run as they are."""
    text = KILN_BACKUP.read_text()
    start = r'^ *mapfile -t r < <\(python3 "\$HELPER" redis "\$ENVFILE" CACHE_URL\)\n'
    m = re.search(start + r'.*?say "cache emptied[^\n]*\n', text, re.M | re.S)
    assert m, "kiln-backup's FLUSHDB of the cache Redis is not where this test looks for it"
    script = f'fail() {{ echo "FAIL: $*" >&2; exit 1; }}\nsay() {{ echo "$*"; }}\n{m.group(0)}'
    env_vars = {**os.environ, "HELPER": str(HELPER), "ENVFILE": str(env)}
    return subprocess.run(["bash", "-c", script], env=env_vars, capture_output=True, text=True, timeout=60)


def test_kiln_backup_empties_a_tls_cache_redis_with_redis_cli(tls_redis: Redis, pki: PKI, tmp_path: Path):
    import redis

    client = redis.Redis.from_url(tls_redis.url(f"ssl_ca_certs={pki.ca}", db=3))
    client.set("kiln:page", "of the old data")
    env = tmp_path / "kiln.env"
    env.write_text(f"CACHE_URL={tls_redis.url(f'ssl_ca_certs={pki.ca}', db=3)}\n")
    res = backup_helper("redis", str(env), "CACHE_URL")
    assert res.stdout.splitlines() == ["localhost", str(tls_redis.port), "3", PASSWORD, "--tls", "--cacert",
                                       str(pki.ca), "--sni", "localhost"]  # fmt: skip
    res = flush_cache(env)
    assert res.returncode == 0 and res.stdout == f"cache emptied (localhost:{tls_redis.port}/3)\n", res.stderr
    assert client.get("kiln:page") is None

    client.set("kiln:page", "of the old data")
    env.write_text(f"CACHE_URL={tls_redis.url(f'ssl_ca_certs={pki.other_ca}', db=3)}\n")
    res = flush_cache(env)
    assert res.returncode == 1 and "FAIL: cannot empty the cache Redis" in res.stderr, res.stderr
    assert "certificate verify failed" in res.stderr, res.stderr
    assert client.get("kiln:page") == b"of the old data"


# --- kiln-ready's Redis checks -----------------------------------------------------------------------------------


def test_kiln_ready_redis_over_tls_checked_against_the_ca(tls_redis: Redis, pki: PKI):
    url = tls_redis.url(f"ssl_ca_certs={pki.ca}", db=2)
    assert kiln_ready.check_redis(url, write=True) == f"SET NX (a write) on localhost:{tls_redis.port}"
    said = not_ready(kiln_ready.check_redis, tls_redis.url(f"ssl_ca_certs={pki.other_ca}"), write=False)
    assert said == (
        f"TLS with localhost:{tls_redis.port}: certificate verify failed: self-signed certificate in certificate chain"
    )
    # Without ssl_ca_certs: the system's CAs only, as redis-py.
    said = not_ready(kiln_ready.check_redis, tls_redis.url(), write=False)
    assert said.endswith("certificate verify failed: self-signed certificate in certificate chain"), said


def test_kiln_ready_redis_checks_the_host_name_as_redis_py_does(tls_redis: Redis, pki: PKI):
    url = tls_redis.url(f"ssl_ca_certs={pki.ca}", host="127.0.0.1")
    said = not_ready(kiln_ready.check_redis, url, write=False)
    assert said == (
        f"TLS with 127.0.0.1:{tls_redis.port}: certificate verify failed: "
        "IP address mismatch, certificate is not valid for '127.0.0.1'."
    )
    assert kiln_ready.check_redis(url + "&ssl_check_hostname=false", write=False).startswith("PING on 127.0.0.1")
    assert kiln_ready.check_redis(tls_redis.url("ssl_cert_reqs=none", host="127.0.0.1"), write=False)


# --- the app's settings: the same URLs, the same connections -----------------------------------------------------

DJANGO_PROBE = """
import json, os
from django.conf import settings
from django.db import connection
import django_rq
from django.core.cache import cache
out = {"OPTIONS": settings.DATABASES["default"]["OPTIONS"]}
try:
    with connection.cursor() as c:
        c.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
        out["db"] = c.fetchone()[1]
except Exception as exc:
    out["db"] = f"{type(exc).__name__}: {exc}"
try:
    if os.environ.get("CACHE_URL"):
        cache.set("kiln:probe", "ok")
        out["cache"] = cache.get("kiln:probe")
        out["queue"] = django_rq.get_connection("default").ping()
except Exception as exc:
    out["cache"] = f"{type(exc).__name__}: {exc}"
print("PROBE " + json.dumps(out, sort_keys=True))
"""


def django(**env: str) -> subprocess.CompletedProcess:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")}
    settings = {"SECRET_KEY": "test-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz", "DEBUG": "off",
                "ALLOWED_HOSTS": "localhost", "DJANGO_SETTINGS_MODULE": "kiln.settings"}  # fmt: skip
    return subprocess.run([sys.executable, "manage.py", "shell", "-c", DJANGO_PROBE], cwd=APP,
                          env={**keep, **settings, **env}, capture_output=True, text=True, timeout=120)  # fmt: skip


def probe(**env: str) -> dict:
    res = django(**env)
    lines = [line for line in res.stdout.splitlines() if line.startswith("PROBE ")]
    assert res.returncode == 0 and lines, res.stdout + res.stderr
    return json.loads(lines[-1].removeprefix("PROBE "))


def test_django_connects_over_tls_with_the_same_urls(tls_db: DB, tls_redis: Redis, pki: PKI):
    cache = tls_redis.url(f"ssl_ca_certs={pki.ca}", db=1)
    got = probe(DATABASE_URL=tls_db.url(f"ssl-ca={pki.ca}"), CACHE_URL=cache, QUEUE_URL=cache)
    assert got["OPTIONS"] == {"ssl_mode": "VERIFY_IDENTITY", "ssl": {"ca": str(pki.ca)}, "charset": "utf8mb4",
                              "connect_timeout": 5}  # fmt: skip
    assert got["db"].startswith("TLSv1."), got
    assert got["cache"] == "ok" and got["queue"] is True, got

    got = probe(
        DATABASE_URL=tls_db.url(f"ssl-ca={pki.other_ca}"),
        CACHE_URL=tls_redis.url(f"ssl_ca_certs={pki.other_ca}"),
        QUEUE_URL=cache,
    )
    assert got["db"] == "OperationalError: (2026, 'TLS/SSL error: self-signed certificate in certificate chain')", got
    assert "certificate verify failed: self-signed certificate in certificate chain" in got["cache"], got

    # REQUIRED: TLS, the certificate not checked; no option: no TLS, refused as kiln-ready is.
    got = probe(DATABASE_URL=tls_db.url("ssl-mode=REQUIRED"), CACHE_URL=cache, QUEUE_URL=cache)
    assert got["OPTIONS"]["ssl_mode"] == "REQUIRED" and "ssl" not in got["OPTIONS"] and got["db"].startswith("TLSv1.")
    got = probe(DATABASE_URL=tls_db.url(), CACHE_URL=cache, QUEUE_URL=cache)
    assert got["db"].startswith("OperationalError: (1045, \"Access denied for user 'kiln'"), got


# --- one reading of the options: kiln-ready, kiln-backup and the settings accept and refuse the same ------------

# (query, the TLS lines Kiln writes for MariaDB's client, for MySQL's, mysqlclient's OPTIONS from the settings), or
# (query, what kiln_ready's and the settings' errors both say). {ca}, {cert}, {key}: this test's files.
OPTION_CASES: list[tuple] = [
    ("", ["skip-ssl"], [], {}),
    ("unix_socket=/run/mysqld/mysqld.sock&CONN_MAX_AGE=0&charset=utf8mb4", ["skip-ssl"], [], {}),
    ("ssl-mode=REQUIRED", ["ssl", "skip-ssl-verify-server-cert"], ["ssl-mode=REQUIRED"], {"ssl_mode": "REQUIRED"}),
    (
        "ssl-mode=required&ssl-ca={ca}",
        ["ssl", "ssl-ca={ca}", "ssl-verify-server-cert"],
        ["ssl-mode=VERIFY_IDENTITY", "ssl-ca={ca}"],
        {"ssl_mode": "VERIFY_IDENTITY", "ssl": {"ca": "{ca}"}},
    ),
    (
        "ssl-ca={ca}",
        ["ssl", "ssl-ca={ca}", "ssl-verify-server-cert"],
        ["ssl-mode=VERIFY_IDENTITY", "ssl-ca={ca}"],
        {"ssl_mode": "VERIFY_IDENTITY", "ssl": {"ca": "{ca}"}},
    ),
    (
        "ssl-mode=VERIFY_CA",
        ["ssl", "ssl-verify-server-cert"],
        ["ssl-mode=VERIFY_IDENTITY"],
        {"ssl_mode": "VERIFY_IDENTITY"},
    ),
    (
        "ssl-cert={cert}&ssl-key={key}",
        ["ssl", "ssl-cert={cert}", "ssl-key={key}", "skip-ssl-verify-server-cert"],
        ["ssl-mode=REQUIRED", "ssl-cert={cert}", "ssl-key={key}"],
        {"ssl_mode": "REQUIRED", "ssl": {"cert": "{cert}", "key": "{key}"}},
    ),
    ("sslca={ca}", "DATABASE_URL option 'sslca' is not one Kiln knows"),
    ("ssl_mode=REQUIRED", "DATABASE_URL option 'ssl_mode' is not one Kiln knows"),
    ("ssl-mode=PREFERRED", "ssl-mode=PREFERRED is not"),
    ("ssl-ca=", "DATABASE_URL option 'ssl-ca' has no value"),
    ("ssl-ca={ca}&ssl-ca={ca}", "DATABASE_URL option 'ssl-ca' is given twice"),
    ("ssl-cert={cert}", "a client certificate needs both ssl-cert and ssl-key"),
]

SETTINGS_READER = """
import importlib, json, os, sys
from django.core.exceptions import ImproperlyConfigured
out = []
for url in json.loads(sys.argv[1]):
    os.environ["DATABASE_URL"] = url
    sys.modules.pop("kiln.settings", None)
    try:
        out.append({"options": importlib.import_module("kiln.settings").DATABASES["default"]["OPTIONS"]})
    except ImproperlyConfigured as exc:
        out.append({"error": str(exc)})
print(json.dumps(out))
"""


def filled(v, pki: PKI):
    if isinstance(v, dict):
        return {k: filled(x, pki) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [filled(x, pki) for x in v]
    return v.format(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)


def case_url(query: str) -> str:
    return f"mysql://kiln:pw@db.example:25060/kiln?{query}"


@pytest.fixture(scope="module")
def settings_read(pki: PKI) -> dict[str, dict]:
    """What the app's settings make of each case's URL (one process: the settings module imported again per URL)."""
    urls = [case_url(filled(c[0], pki)) for c in OPTION_CASES]
    env = {**os.environ, "SECRET_KEY": "x" * 50, "DEBUG": "off"}
    res = subprocess.run([sys.executable, "-c", SETTINGS_READER, json.dumps(urls)], cwd=APP, env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stderr
    return dict(zip(urls, json.loads(res.stdout), strict=True))


@pytest.mark.parametrize("case", OPTION_CASES, ids=[c[0] or "none" for c in OPTION_CASES])
def test_every_reader_reads_the_database_url_options_alike(case: tuple, pki: PKI, settings_read: dict):
    query, *want = filled(case, pki)
    url = case_url(query)
    app = settings_read[url]
    if len(want) == 1:
        with pytest.raises(kiln_ready.URLError) as exc:
            kiln_ready.database_url(url)
        assert want[0] in str(exc.value) and want[0] in app.get("error", ""), (str(exc.value), app)
        return
    db = kiln_ready.database_url(url)

    def lines(flavor: str, as_the_app: bool = True) -> list[str]:
        return [k if v is None else f"{k}={v}" for k, v in db.tls_options(flavor, as_the_app).items()]

    assert [lines("mariadb"), lines("mysql")] == want[:2]
    # kiln-backup's dump: the client's own default when the URL says nothing of TLS, the same lines otherwise.
    assert lines("mariadb", as_the_app=False) == ([] if want[0] == ["skip-ssl"] else want[0])
    assert "error" not in app, app
    assert {k: v for k, v in app["options"].items() if k not in ("charset", "connect_timeout", "unix_socket")} == want[
        2
    ]
