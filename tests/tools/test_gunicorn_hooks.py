"""kiln-web's gunicorn: the app imported once, by the master, after it bound its socket (a request meanwhile waits and
is answered, never refused), its workers forks of it; a database connection the import opened is not inherited by the
workers; the master's objects frozen out of the workers' garbage collections; the cache backends made by the master;
the "a worker serves" marker that kiln-rqworker waits for; the client's address (nginx's X-Real-IP) as REMOTE_ADDR. A
real gunicorn with Kiln's hooks (provision/files/usr/local/lib/kiln/gunicorn.conf.py) serves a small Django app on a
unix socket. The same start on the server: tests/infra/test_restart.py."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOOKS = ROOT / "provision" / "files" / "usr" / "local" / "lib" / "kiln" / "gunicorn.conf.py"
GUNICORN = ROOT / "provision" / "files" / "usr" / "local" / "lib" / "kiln" / "kiln-gunicorn"

# An app that queries its database while it is imported (in its urls or AppConfig.ready(), as apps do).
APP = """
import gc, json, os, time
bound_before_import = os.path.exists(os.environ["T_SOCK"])
time.sleep(float(os.environ["T_IMPORT_S"]))  # a slow import: a request meanwhile must wait for it
import django
from django.conf import settings
from django.core.cache.backends.locmem import LocMemCache

class PidCache(LocMemCache):  # a cache backend that says which process made it
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.made_by = os.getpid()

settings.configure(DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["T_DB"]}},
                   CACHES={"default": {"BACKEND": "preloadapp.PidCache"}})
django.setup()
from django.core.cache import caches
from django.db import connection
with open(os.environ["T_IMPORTS"], "a") as f:
    f.write(f"{os.getpid()} {'bound' if bound_before_import else 'unbound'}\\n")
with connection.cursor() as c:
    c.execute("select 1")

def app(environ, start_response):
    body = json.dumps({"pid": os.getpid(), "inherited_connection": connection.connection is not None,
                       "frozen": gc.get_freeze_count(), "remote_addr": environ.get("REMOTE_ADDR"),
                       "cache_made_by": caches["default"].made_by}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
"""


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self.path)


def get(sock: Path, headers: dict[str, str] | None = None) -> dict:
    conn = UnixHTTPConnection(str(sock))
    try:
        conn.request("GET", "/", headers={"Connection": "close", **(headers or {})})
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        return json.loads(resp.read())
    finally:
        conn.close()


def test_kiln_gunicorn_starts_gunicorn_with_kilns_hooks_and_not_its_preload():
    text = GUNICORN.read_text()
    assert re.search(r"--config /usr/local/lib/kiln/gunicorn\.conf\.py \\", text), (
        "kiln-gunicorn does not start gunicorn with Kiln's hooks"
    )
    assert not re.search(r"^\s*--preload", text, re.M), "--preload imports before the socket is bound (the hooks say)"


def test_workers_are_forks_of_a_master_that_imported_the_app_once(tmp_path):
    (tmp_path / "preloadapp.py").write_text(APP)
    run = tmp_path / "run"
    run.mkdir()
    sock = run / "gunicorn.sock"
    env = dict(os.environ, T_DB=str(tmp_path / "db.sqlite3"), T_IMPORTS=str(tmp_path / "imports"), T_SOCK=str(sock))
    env["T_IMPORT_S"] = "2"
    workers = 3
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "preloadapp:app", "--config", str(HOOKS),
         "--chdir", str(tmp_path), "--bind", f"unix:{sock}", "--pid", str(run / "gunicorn.pid"),
         "--control-socket", str(run / "gunicorn.ctl"), "--workers", str(workers)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        t0 = time.monotonic()
        first = get(sock)  # sent while the master imports: waits in the socket's backlog
        waited = time.monotonic() - t0
        marker = run / f"gunicorn-serving.{proc.pid}"
        deadline = time.monotonic() + 60
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), f"no serving marker {marker.name} (gunicorn rc={proc.poll()})"
        seen, frozen, cache_made_by = {}, {}, {}
        for _ in range(60):  # bounded: enough requests to reach every worker, usually
            r = get(sock)
            seen[r["pid"]] = r["inherited_connection"]
            frozen[r["pid"]] = r["frozen"]
            cache_made_by[r["pid"]] = r["cache_made_by"]
            if len(seen) == workers:
                break
        imports = (tmp_path / "imports").read_text().splitlines()
        print(f"master {proc.pid}; app imported by {imports}; a request during the import answered after "
              f"{waited:.1f} s by {first['pid']}; workers seen {seen}, frozen objects {frozen}")  # fmt: skip
        assert imports == [f"{proc.pid} bound"], (
            f"the app was imported by {imports}, not once by the master {proc.pid} after binding its socket"
        )
        assert proc.pid not in seen and seen, f"workers {seen}"
        inherited = [pid for pid, yes in seen.items() if yes]
        assert not inherited, f"workers {inherited} inherited the master's open database connection"
        # the cache backends (their clients imported) are made once by the master, not in each worker's first request
        assert set(cache_made_by.values()) == {proc.pid}, f"cache backend made by (worker: maker) {cache_made_by}"
        # the master's objects (Django's, the app's: tens of thousands) are out of the workers' collections
        assert all(n > 10_000 for n in frozen.values()), f"objects frozen per worker: {frozen}"
        # the client's address, as nginx names it in X-Real-IP (the socket's peer has none): what the app sees
        told = get(sock, {"X-Real-IP": "203.0.113.9"})["remote_addr"]
        untold = get(sock)["remote_addr"]
        print(f"REMOTE_ADDR with X-Real-IP 203.0.113.9: {told!r}; without: {untold!r}")
        assert told == "203.0.113.9", f"the app saw REMOTE_ADDR {told!r}, not nginx's X-Real-IP"
        assert untold == "", f"without X-Real-IP the app saw REMOTE_ADDR {untold!r}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        print(out[-3000:])
