"""Gunicorn server hooks for kiln-web (/usr/local/bin/kiln-gunicorn passes this file with --config).

Workers import the app after they fork (no --preload: a HUP must load a deploy's new code). Started together,
2*CPU+1 workers import Django side by side and share the CPUs, so every one of them becomes ready late: after a
crash or a reboot the first request waited until the imports of all of them were nearly done (kill -9 of the master
-> 200 again: 34 s with 5 workers on 2 emulated vCPUs, measured; one import alone takes 8 s there).

So a worker takes an import slot before it imports the app and gives it back once the app is loaded. Until one
worker of this master serves, there is one slot: the first import runs alone, with a CPU to itself (kill -> 200:
13 s, same machine). From then on there is one slot per CPU (the rest of the workers; a HUP's new workers, while
the old ones keep serving). A worker that dies holding a slot frees it (the kernel drops its flock). Waiting workers
keep their heartbeat, so gunicorn's --timeout never kills them for waiting, and exit at once when the master stops.
The marker "a worker of this master serves" is also what /usr/local/bin/kiln-rqworker waits for before it starts rq,
and kiln-release's deploy runs two masters for a moment (kiln-web and kiln-web-next): each keeps its own marker.
"""

import contextlib
import fcntl
import glob
import os
import signal
import sys
import time


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


def post_fork(server, worker):
    # Until init_process() installs the worker's own handlers, this child still has the master's, which would
    # swallow the master's TERM/QUIT/INT (a stop or a HUP while workers wait here hung for --graceful-timeout, 30 s):
    # a waiting worker has nothing to finish and exits at once; one signalled after taking its slot stops as soon as
    # its app is loaded (post_worker_init).
    worker._kiln_stop = []
    for sig in (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: worker._kiln_stop.append(signum))
    run_dir, serving = _serving_marker(worker)
    while True:
        if worker._kiln_stop:
            sys.exit(0)
        slots = max(1, len(os.sched_getaffinity(0))) if os.path.exists(serving) else 1
        for i in range(slots):
            fd = os.open(os.path.join(run_dir, f"gunicorn-import-slot.{i}"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            worker._kiln_import_slot = fd
            return
        worker.tmp.notify()
        time.sleep(0.1)


def post_worker_init(worker):
    if getattr(worker, "_kiln_stop", None):
        worker.alive = False  # signalled between taking its slot and installing its handlers
    fd = getattr(worker, "_kiln_import_slot", None)
    if fd is None:
        return
    run_dir, serving = _serving_marker(worker)
    if not os.path.exists(serving):
        for old in glob.glob(os.path.join(run_dir, "gunicorn-serving.*")):
            if not _alive(old.rsplit(".", 1)[-1]):  # of masters gone before this one (kiln-web-next's runs beside)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(old)
        os.close(os.open(serving, os.O_WRONLY | os.O_CREAT, 0o600))
    os.close(fd)
    worker._kiln_import_slot = None
