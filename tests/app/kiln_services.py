"""Real backing services for the app tests, as plain processes on random loopback ports.

MariaDB, two redis-servers (cache, queue), moto's S3 server over HTTP and an aiosmtpd sink.
Everything lives under one throw-away directory and is stopped by `Services.stop()`.
"""

from __future__ import annotations

import email
import email.policy
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

DB_NAME = "kiln"
DB_USER = "kiln"
DB_PASSWORD = "kiln-test-pw"
REDIS_PASSWORD = "redis-test-pw"
BUCKET = "kiln-media"
CDN_DOMAIN = "cdn.kiln.test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, what: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        try:
            check()
            return
        except Exception as exc:  # noqa: BLE001 - not ready yet, whatever the reason
            last = exc
            time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {timeout}s: {last}")


@dataclass
class Process:
    """A server process that can be stopped and started again with the same data and port."""

    name: str
    argv: list[str]
    log: Path
    ready: object  # callable
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_for(self.ready, self.name, proc=self.proc)
        except Exception:  # noqa: BLE001 - re-raised with the server's log attached
            self.stop()
            raise RuntimeError(f"{self.name} failed to start; log tail:\n{self.log.read_text()[-2000:]}") from None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Mailbox:
    messages: list[email.message.EmailMessage] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # The reply to MAIL FROM for these senders, as a provider refuses an unverified sender (5xx) or defers (4xx).
    refuse_senders: dict[str, str] = field(default_factory=dict)

    async def handle_MAIL(self, server, session, envelope, address, mail_options) -> str:  # aiosmtpd's hook name
        refusal = self.refuse_senders.get(address)
        if refusal:
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:  # aiosmtpd's hook name
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append(message)
        return "250 Message accepted"

    def to(self, address: str) -> list[email.message.EmailMessage]:
        with self.lock:
            return [m for m in self.messages if address in str(m["To"])]


class Services:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[str, Process] = {}
        self.moto = None
        self.smtp = None
        self.mailbox = Mailbox()
        self.env: dict[str, str] = {}

    # --- lifecycle ---
    def start(self) -> None:
        try:
            self._start_mariadb()
            self._start_redis("cache")
            self._start_redis("queue")
            self._start_moto()
            self._start_smtp()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()
        if self.moto is not None:
            self.moto.stop()
            self.moto = None
        if self.smtp is not None:
            self.smtp.stop()
            self.smtp = None

    # --- MariaDB ---
    def _start_mariadb(self) -> None:
        datadir = self.root / "mariadb"
        datadir.mkdir()
        as_root = ["--user=root"] if os.geteuid() == 0 else []
        install = shutil.which("mariadb-install-db") or "mysql_install_db"
        subprocess.run(
            [
                install,
                "--no-defaults",
                f"--datadir={datadir}",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
                "--skip-name-resolve",
                *as_root,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # A real user with a password (created on every start; IF NOT EXISTS makes restarts idempotent).
        init = self.root / "mariadb-init.sql"
        init.write_text(
            f"CREATE USER IF NOT EXISTS '{DB_USER}'@'%' IDENTIFIED BY '{DB_PASSWORD}';\n"
            f"GRANT ALL PRIVILEGES ON *.* TO '{DB_USER}'@'%';\n"
            f"CREATE DATABASE IF NOT EXISTS {DB_NAME} CHARACTER SET utf8mb4;\n"
        )
        port = free_port()
        mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        argv = [
            mariadbd,
            "--no-defaults",
            *as_root,
            f"--datadir={datadir}",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.root / 'mysqld.sock'}",
            f"--pid-file={self.root / 'mysqld.pid'}",
            f"--init-file={init}",
            "--skip-name-resolve",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=64M",
            "--innodb-log-file-size=16M",
            # Durability is worthless for a throw-away test DB; fsyncs are the slowest part of migrate.
            "--innodb-flush-log-at-trx-commit=0",
            "--innodb-doublewrite=0",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci",
        ]

        def ready() -> None:
            import MySQLdb

            MySQLdb.connect(
                host="127.0.0.1", port=port, user=DB_USER, password=DB_PASSWORD, database=DB_NAME, connect_timeout=2
            ).close()

        self.procs["database"] = Process("mariadb", argv, self.root / "mariadb.log", ready)
        self.procs["database"].start()
        self.env["DATABASE_URL"] = f"mysql://{DB_USER}:{DB_PASSWORD}@127.0.0.1:{port}/{DB_NAME}"

    # --- Redis ---
    def _start_redis(self, role: str) -> None:
        port = free_port()
        workdir = self.root / f"redis-{role}"
        workdir.mkdir()
        argv = [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--requirepass",
            REDIS_PASSWORD,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--daemonize",
            "no",
            "--logfile",
            "",
        ]

        def ready() -> None:
            import redis

            redis.Redis(host="127.0.0.1", port=port, password=REDIS_PASSWORD, socket_timeout=1).ping()

        self.procs[role] = Process(f"redis-{role}", argv, self.root / f"redis-{role}.log", ready)
        self.procs[role].start()
        self.env[f"{role.upper()}_URL"] = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"

    def redis(self, role: str):
        import redis

        return redis.Redis.from_url(self.env[f"{role.upper()}_URL"])

    # --- S3 (moto) ---
    def _start_moto(self) -> None:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per S3 call is noise
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
        self.moto.start()
        host, port = self.moto.get_host_and_port()
        self.env.update(
            AWS_STORAGE_BUCKET_NAME=BUCKET,
            AWS_S3_ENDPOINT_URL=f"http://{host}:{port}",
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_S3_REGION_NAME="us-east-1",
            MEDIA_CDN_DOMAIN=CDN_DOMAIN,
        )
        self.s3().create_bucket(Bucket=BUCKET)

    def s3(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.env["AWS_S3_ENDPOINT_URL"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    # --- SMTP sink ---
    def _start_smtp(self) -> None:
        from aiosmtpd.controller import Controller

        port = free_port()
        self.smtp = Controller(self.mailbox, hostname="127.0.0.1", port=port)
        self.smtp.start()
        self.env["EMAIL_URL"] = f"smtp://127.0.0.1:{port}"
