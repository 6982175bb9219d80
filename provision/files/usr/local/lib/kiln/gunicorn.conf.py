"""Gunicorn server hooks for kiln-web (/usr/local/lib/kiln/kiln-gunicorn passes this file with --config).

The master imports the app once, and its workers are forks of it (when_ready below). Without that every worker
imported Django itself: under TCG ~6 s of CPU each, so a start of 4 workers cost ~31-44 s of guest CPU and a start
with one import ~9-11 s (a kiln-web restart on a 1 GB, 2-vCPU VM, measured), and the workers share the loaded code
(PSS ~13 MB each). Not gunicorn's --preload: it imports before the master binds its socket, so for the whole import
nginx would find no socket and answer 502; here the socket is bound first (gunicorn's start(), then when_ready), and
requests that come meanwhile wait in its backlog, as they did while workers imported. A deploy starts a new master
(kiln-release: no HUP is ever used), so the one limit of an app loaded by the master, a HUP that cannot load new
code, does not apply.

The master must not hand a connection opened while importing (an app that queries the database in its urls or
AppConfig.ready()) to every worker: they would share one socket. So the master closes Django's database connections
before each fork; Redis clients (redis-py) notice the fork themselves and reconnect.

The master freezes its objects (gc.freeze()) before each fork: Python's full collections in a worker then skip the
app's and Django's own objects, which no request frees. Without it each full collection walked all of them: 38-43 ms
of the worker's one CPU at a time in the bench (bench/: `make bench`), the DB page's p99 at one connection 15-33 ms
in the cells that met one against 4-5 ms in those that did not, and a worker's first full collection ~200 ms (it
also wrote to every page it shares with the master, copying them).

The client's address: gunicorn on a unix socket leaves REMOTE_ADDR empty (it is the socket's peer, and nginx is the
only one that can connect to it), so each worker's WSGI callable is wrapped to take it from X-Real-IP, which nginx
always sets itself (kiln-proxy.conf: $remote_addr, the client's own, or the one a trusted load balancer forwarded:
KILN_TRUSTED_PROXIES, nginx's real_ip). Django's request.META["REMOTE_ADDR"] and gunicorn's access log (%(h)s) then
name the client.

The marker "a worker of this master serves" is what /usr/local/lib/kiln/kiln-rqworker waits for before it starts rq, and
kiln-release's deploy runs two masters for a moment (kiln-web and kiln-web-next): each keeps its own marker.
"""

import contextlib
import gc
import glob
import os
import sys


def _serving_marker(worker) -> tuple[str, str]:
    """(run directory, the marker of "a worker of this master serves"): beside kiln-gunicorn's --pid file."""
    run_dir = os.path.dirname(os.path.abspath(worker.cfg.pidfile or "gunicorn.pid"))
    return run_dir, os.path.join(run_dir, f"gunicorn-serving.{worker.ppid}")


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _load_backends() -> None:
    """Django's database wrappers and cache backends, made once here instead of in each worker's first request.

    Django creates them at their first use, and with them imports the database driver's and the cache client's
    modules: in every worker, inside the first request it serves (a fresh worker's first /readyz cache probe on an
    idle TCG VM: 142-165 ms without this, 86-108 ms with it). Made in the master, the workers inherit them; neither
    opens a connection (a wrapper connects at its first query, a cache backend at its first command), so no socket is
    shared by the forks.
    """
    django_conf = sys.modules.get("django.conf")
    if django_conf is None or not django_conf.settings.configured:
        return  # not a Django app, or one that configures Django per request
    from django.core.cache import caches
    from django.db import connections

    for alias in connections:
        connections[alias]
    for alias in django_conf.settings.CACHES:
        caches[alias]


def when_ready(server):
    # The master's sockets are bound and its signal handlers set (a TERM meanwhile is handled once the app is loaded);
    # an app that does not import ends the master here, as a worker's failed import would.
    server.app.wsgi()
    _load_backends()


def pre_fork(server, worker):
    db = sys.modules.get("django.db")
    if db is not None:
        db.connections.close_all()
    gc.freeze()


def _with_client_address(app):
    def application(environ, start_response):
        if not environ.get("REMOTE_ADDR") and environ.get("HTTP_X_REAL_IP"):
            environ["REMOTE_ADDR"] = environ["HTTP_X_REAL_IP"]
        return app(environ, start_response)

    return application


def post_worker_init(worker):
    worker.wsgi = _with_client_address(worker.wsgi)
    run_dir, serving = _serving_marker(worker)
    if os.path.exists(serving):
        return
    for old in glob.glob(os.path.join(run_dir, "gunicorn-serving.*")):
        if not _alive(old.rsplit(".", 1)[-1]):  # of masters gone before this one (kiln-web-next's runs beside)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(old)
    os.close(os.open(serving, os.O_WRONLY | os.O_CREAT, 0o600))
