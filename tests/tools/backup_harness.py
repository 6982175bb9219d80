"""Running the real kiln-backup on this host, for tests/tools/test_backup_*.py: the script from provision/ (its helper
beside it), a throw-away MariaDB server (this host's mariadbd on a temporary datadir and socket, no TCP) holding a
Django-like database, a restic repository in a temporary directory, and the instance env file pointing at them. The
paths kiln-backup writes (status, metrics, work, cache) are moved into the test's directory by its KILN_* variables.
Needs root (mariadbd runs as mysql, kiln-backup refuses other users), mariadbd and restic (`apt-get install restic
mariadb-server`); the tests skip without them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KILN_BACKUP = ROOT / "provision" / "files" / "usr" / "local" / "sbin" / "kiln-backup"
HELPER = ROOT / "provision" / "files" / "usr" / "local" / "lib" / "kiln" / "kiln_backup.py"
MARIADBD = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
PASSWORD = "correct horse battery staple"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="kiln-backup and mariadbd --user=mysql need root")
needs_db_and_restic = pytest.mark.skipif(
    not (Path(MARIADBD).exists() and shutil.which("mariadb-install-db") and shutil.which("restic")),
    reason="needs mariadbd, mariadb-install-db and restic (apt-get install -y restic mariadb-server)",
)

# Rows that a parser of the dump could get wrong: quotes, escapes, separators and parentheses inside strings, a
# newline, a NULL, and more rows than fit one line.
TRICKY = [
    "plain",
    "it's (quoted), with; a semicolon",
    "back\\slash \\' and ),( in a string",
    "two\nlines",
    "ünïcödé ✓",
    None,
]
SCHEMA = """
CREATE TABLE django_migrations (id INT AUTO_INCREMENT PRIMARY KEY, app VARCHAR(255) NOT NULL,
  name VARCHAR(255) NOT NULL, applied DATETIME(6) NOT NULL);
INSERT INTO django_migrations (app, name, applied) VALUES ('contenttypes', '0001_initial', NOW()),
  ('auth', '0001_initial', NOW()), ('records', '0001_initial', NOW()), ('records', '0002_record_body', NOW());
CREATE TABLE records_record (id INT AUTO_INCREMENT PRIMARY KEY, title VARCHAR(200), body LONGTEXT, data LONGBLOB);
CREATE TABLE records_tag (id INT AUTO_INCREMENT PRIMARY KEY, record_id INT NOT NULL,
  FOREIGN KEY (record_id) REFERENCES records_record (id));
CREATE TABLE empty_table (id INT PRIMARY KEY);
"""


@dataclass
class Env:
    dir: Path
    socket: Path
    envfile: Path
    repo: Path
    media: Path

    def environ(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "KILN_DISTRO": "debian-13",
            "KILN_PROVISION_DIR": str(ROOT / "provision"),
            "KILN_BACKUP_ENV_FILE": str(self.envfile),
            "KILN_STATUS_DIR": str(self.dir / "status"),
            "KILN_METRICS_DIR": str(self.dir / "metrics"),
            "KILN_BACKUP_WORK": str(self.dir / "work"),
            "KILN_BACKUP_CACHE": str(self.dir / "cache"),
            **extra,
        }

    def write_env(self, **settings: str | None) -> None:
        """The instance env: the database and media of this test, the backup settings given (None: left out)."""
        base = {
            "DATABASE_URL": f"mysql://kiln:app-password@localhost/kiln?unix_socket={self.socket}",
            "MEDIA_ROOT": str(self.media),
            "KILN_BACKUP_REPOSITORY": str(self.repo),
            "KILN_BACKUP_PASSWORD": PASSWORD,
        }
        base.update(settings)
        self.envfile.write_text("".join(f"{k}={v}\n" for k, v in base.items() if v is not None))

    def run(self, *args: str, path_prefix: Path | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
        env = self.environ()
        if path_prefix:
            env["PATH"] = f"{path_prefix}:{env['PATH']}"
        return subprocess.run(
            ["bash", str(KILN_BACKUP), *args], env=env, capture_output=True, text=True, timeout=timeout
        )

    def status(self, kind: str) -> dict:
        return json.loads((self.dir / "status" / f"{kind}.json").read_text())

    def metrics(self) -> str:
        return (self.dir / "metrics" / "kiln_backup.prom").read_text()

    def sql(self, query: str, db: str = "kiln") -> str:
        res = subprocess.run(
            ["mariadb", "--no-defaults", "-S", str(self.socket), "-N", "-B", db, "-e", query],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0, f"{query}: {res.stderr}"
        return res.stdout

    def restic(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["restic", "-r", str(self.repo), "--cache-dir", str(self.dir / "cache"), *args],
            env={**os.environ, "RESTIC_PASSWORD": PASSWORD},
            capture_output=True,
            text=True,
            timeout=60,
        )

    def restic_json(self, *args: str):
        res = self.restic(*args)
        assert res.returncode == 0, f"restic {' '.join(args)}: {res.stderr}"
        return json.loads(res.stdout)

    def snapshots(self) -> list[dict]:
        res = self.restic("snapshots", "--json")
        if "Is there a repository" in res.stderr:
            return []
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout) or []


def start_mariadb(
    base: Path, port: int | None = None, server_args: Sequence[str] = ()
) -> tuple[subprocess.Popen, Path]:
    """A MariaDB server on BASE/data with its system tables (mariadb-dump --routines reads mysql.proc): its socket
    only, or also 127.0.0.1:PORT; SERVER_ARGS are added to mariadbd's command line (tests/tools/test_managed_tls.py:
    its TLS certificate and require_secure_transport)."""
    data, sock = base / "data", base / "mysqld.sock"
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)
    shutil.chown(base, "mysql", "mysql")
    subprocess.run(
        ["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=mysql", "--skip-test-db",
         "--auth-root-authentication-method=socket"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    proc = subprocess.Popen(
        [MARIADBD, "--no-defaults", f"--datadir={data}", f"--socket={sock}", "--user=mysql",
         *(["--skip-networking"] if port is None else [f"--port={port}", "--bind-address=127.0.0.1"]),
         f"--log-error={base}/error.log", "--skip-log-bin", "--innodb-buffer-pool-size=32M", *server_args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ok = subprocess.run(["mariadb", "--no-defaults", "-S", str(sock), "-e", "SELECT 1"], capture_output=True)
        if ok.returncode == 0:
            return proc, sock
        assert proc.poll() is None, (base / "error.log").read_text()[-2000:]
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"mariadbd did not answer on {sock} within 60 s")


def stop_mariadb(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def sql_literal(v: str | None) -> str:
    if v is None:
        return "NULL"
    return "'" + v.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def load_app_data(env: Env, records: int = 500) -> None:
    """The Django-like schema with the tricky rows and `records` more, one table with a foreign key, one empty."""
    env.sql("DROP DATABASE IF EXISTS kiln; CREATE DATABASE kiln CHARACTER SET utf8mb4", db="mysql")
    env.sql(SCHEMA)
    rows = [f"({sql_literal(f'title {i}')}, {sql_literal(t)}, 0x00ff10)" for i, t in enumerate(TRICKY)]
    rows += [f"('record {i}', '{'x' * (i % 50)}', NULL)" for i in range(records)]
    env.sql(f"INSERT INTO records_record (title, body, data) VALUES {', '.join(rows)}")
    env.sql("INSERT INTO records_tag (record_id) SELECT id FROM records_record WHERE id % 3 = 0")
