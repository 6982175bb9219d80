"""Crash recovery: kill -9 of every long-running piece comes back by itself (supervisor or systemd)."""

import re
import time

import pytest

from kilnlib import (
    DB_SERVICE,
    GUNICORN_PID,
    WEB_LOG,
    all_running,
    app_processes,
    http,
    http_ok_cond,
    journal,
    main_pid,
    out,
    sh,
    supervisor_status,
    supervisor_text,
    tail,
    unit_evidence,
    unit_state,
    wait_for,
    wait_http_ok,
    wait_in_guest,
    worker_names,
)


@pytest.fixture(autouse=True)
def everything_running(host):
    names = ["kiln-web", *worker_names(host)]
    wait_for(lambda: all_running(host, names), 90, 2, "all programs RUNNING", evidence=lambda: supervisor_text(host))
    yield
    wait_for(
        lambda: all_running(host, ["kiln-web", *worker_names(host)]),
        120,
        2,
        "all programs RUNNING again",
        evidence=lambda: supervisor_text(host),
    )


def _program_comes_back(host, name: str, timeout: float):
    before = supervisor_status(host)[name]
    t0 = time.monotonic()
    sh(host, f"kill -9 {before.pid}")
    after = wait_for(
        lambda: (
            (p := supervisor_status(host).get(name)) and p.pid not in (0, before.pid) and p.state == "RUNNING" and p
        ),
        timeout + 20,
        0.5,
        f"{name} RUNNING with a new pid",
        evidence=lambda: supervisor_text(host),
    )
    return before, after, time.monotonic() - t0


def test_gunicorn_restarts_after_kill(host, restart_timeout):
    before = supervisor_status(host)["kiln-web"]
    t0 = time.monotonic()
    # master only: its workers notice the dead master and exit; supervisor starts a fresh master. Until the new master
    # writes its pid file, the dead one's workers may still answer on the old socket: only a 200 after that counts.
    sh(host, f"kill -9 {before.pid}")
    # (read, a shell builtin: no process per poll beside the sleep)
    new_master = f'p=; read -r p 2>/dev/null <{GUNICORN_PID}; [ -n "$p" ] && [ "$p" -ne {before.pid} ]'
    wait_in_guest(
        host,
        f"{new_master} && {http_ok_cond('/readyz')}",
        restart_timeout + 30,
        "a new gunicorn master serving /readyz 200",
        evidence=lambda: f"{supervisor_text(host)}\n{tail(host, WEB_LOG, 15)}",
    )
    took = time.monotonic() - t0
    print(f"kiln-web: kill -9 of the master (pid {before.pid}) -> /readyz 200 from a new master in {took:.1f}s")
    after = wait_for(
        lambda: (p := supervisor_status(host)["kiln-web"]).state == "RUNNING" and p,
        15,
        0.5,
        "kiln-web RUNNING",
        evidence=lambda: supervisor_text(host),
    )
    served_by = int(out(host, f"cat {GUNICORN_PID}"))
    assert after.pid not in (0, before.pid) and after.pid == served_by, (
        f"supervisor's kiln-web pid {before.pid} -> {after.pid}, gunicorn pid file {served_by}\n{supervisor_text(host)}"
    )
    assert took <= restart_timeout, (
        f"kiln-web served 200 again only after {took:.1f}s (> {restart_timeout}s); "
        f"pid {before.pid} -> {after.pid}\n{tail(host, WEB_LOG, 15)}"
    )
    # the dead master's workers must go, not linger re-parented to init holding memory and database connections;
    # left alone, idle sync workers would notice the dead master only after --timeout/2 = 30 s
    wait_no_strays(host, 10, "the killed master's workers gone")


def wait_no_strays(host, timeout: float, what: str) -> None:
    """Wait until every app process descends from the running supervisord (kiln-reap-group ended the rest)."""
    wait_for(
        lambda: not unmanaged_app_processes(host, main_pid(host, "supervisor")),
        timeout,
        1,
        what,
        evidence=lambda: "\n".join(unmanaged_app_processes(host, main_pid(host, "supervisor"))),
    )


def unmanaged_app_processes(host, supervisord: int) -> list[str]:
    """App processes that do not descend from `supervisord`, as text."""
    parent = {int(pid): int(ppid) for pid, ppid in (ln.split() for ln in out(host, "ps -eo pid=,ppid=").splitlines())}

    def managed(pid: int) -> bool:
        while pid > 1 and pid != supervisord:
            pid = parent.get(pid, 1)
        return pid == supervisord

    return [f"{p.pid} ppid={p.ppid} {p.args}" for p in app_processes(host) if not managed(p.pid)]


def test_stop_while_workers_boot_does_not_wait_out_the_graceful_timeout(host):
    """A stop right after a start (the master still importing the app: gunicorn.conf.py) ends once the import is done
    and the idle workers exit, not after gunicorn's --graceful-timeout and a SIGKILL."""
    # the one value (provision/lib/common.sh, which kiln-gunicorn renders into its --graceful-timeout)
    graceful = int(out(host, "bash -c '. /usr/local/lib/kiln/lib/common.sh && echo $KILN_WEB_GRACEFUL_TIMEOUT'"))
    sh(host, "supervisorctl restart kiln-web", timeout=120)
    t0 = time.monotonic()
    res = sh(host, "supervisorctl stop kiln-web", ok=None, timeout=120)
    took = time.monotonic() - t0
    log = tail(host, WEB_LOG, 25)
    sh(host, "supervisorctl start kiln-web", timeout=120)
    print(f"kiln-web: stop during the workers' boot took {took:.1f}s (rc={res.rc})")
    assert res.rc == 0, f"supervisorctl stop kiln-web: rc={res.rc}\n{res.stdout}{res.stderr}"
    assert took < graceful, f"stop took {took:.1f}s: the workers waited out the graceful timeout\n{log}"


def test_gunicorn_waits_while_first_boots_config_stage_is_pending(host, restart_timeout):
    """At boot supervisord starts before first boot's config stage has written this instance's kiln.env (secrets,
    sizing, the operator's overrides): while that stage is pending (its marker, made by the secrets stage), kiln-web
    must not start gunicorn on an older or missing env; once the stage is done it starts at once."""
    pending = out(host, "bash -c '. /usr/local/lib/kiln/lib/common.sh && echo $KILN_CONFIG_PENDING'")
    assert pending.startswith("/run/"), f"KILN_CONFIG_PENDING={pending!r}: not under /run (it must not survive a boot)"
    try:
        sh(host, f"touch {pending}")
        # returns once kiln-web is RUNNING: supervisord's startsecs (3 s) after the start, the wrapper still waiting
        sh(host, "supervisorctl restart kiln-web", timeout=120)
        prog = supervisor_status(host)["kiln-web"]
        cmdline = out(host, f"tr '\\0' ' ' </proc/{prog.pid}/cmdline")
        readyz = http(host, "/readyz", scheme="http")
        log = tail(host, WEB_LOG, 5)
        print(f"config pending: kiln-web {prog.state} pid {prog.pid}: {cmdline}; GET /readyz -> {readyz.status}")
        assert "/usr/local/lib/kiln/kiln-gunicorn" in cmdline and "/venv/bin/gunicorn" not in cmdline, (
            f"kiln-web runs gunicorn while first boot's config stage is pending: {cmdline}\n{log}"
        )
        assert readyz.status != 200, f"/readyz 200 while the config stage is pending\n{log}"
    finally:
        sh(host, f"rm -f {pending}")
    t = wait_in_guest(host, http_ok_cond("/readyz"), restart_timeout, "/readyz 200 once the config stage is done")
    log = tail(host, WEB_LOG, 30)
    print(f"config done: /readyz 200 after {t:.1f}s")
    assert "for first boot's config stage" in log, f"kiln-web's log does not say that it waited:\n{log}"


def test_each_rq_worker_restarts_after_kill(host, restart_timeout):
    for name in worker_names(host):
        before, after, took = _program_comes_back(host, name, restart_timeout)
        assert took <= restart_timeout + 10, f"{name}: back after {took:.1f}s (pid {before.pid} -> {after.pid})"
        # the killed worker's scheduler process (--with-scheduler) must not live on unmanaged, holding the lock
        wait_no_strays(host, 15, f"{name}: the killed worker's children gone")


def test_supervisord_starts_through_kilns_launcher_without_pkg_resources(host):
    # supervisor 4.2's import of pkg_resources was ~1-1.8 s of emulated CPU at each start, on the first boot's path
    # to the first answer (/usr/local/lib/kiln/supervisord says why; tests/tools/test_supervisord_launcher.py: how it
    # resolves supervisor's specs)
    pid = main_pid(host, "supervisor")
    cmdline = sh(host, f"tr '\\0' ' ' </proc/{pid}/cmdline").stdout.strip()
    assert cmdline == "/usr/bin/python3 -I /usr/local/lib/kiln/supervisord -n -c /etc/supervisor/supervisord.conf", (
        f"supervisord (pid {pid}) runs as: {cmdline}"
    )
    out = sh(host, "python3 -I -X importtime /usr/local/lib/kiln/supervisord --version 2>&1").stdout
    version = out.strip().splitlines()[-1]
    assert re.fullmatch(r"4\.[0-9.]+", version), f"the launcher's supervisord --version: {out[-2000:]}"
    imported = [line for line in out.splitlines() if "pkg_resources" in line]
    assert not imported, "supervisord's launcher imported pkg_resources:\n" + "\n".join(imported)


def test_supervisord_is_restarted_by_systemd_with_its_programs(host, restart_timeout):
    pid = main_pid(host, "supervisor")
    web = supervisor_status(host)["kiln-web"].pid
    t0 = time.monotonic()
    sh(host, f"kill -9 {pid}")
    wait_for(
        lambda: main_pid(host, "supervisor") not in (0, pid) and unit_state(host, "supervisor") == "active",
        60,
        1,
        "supervisor.service active with a new MainPID",
        evidence=lambda: unit_evidence(host, "supervisor"),
    )
    names = ["kiln-web", *worker_names(host)]
    wait_for(
        lambda: all_running(host, names) and supervisor_status(host)["kiln-web"].pid != web,
        90,
        1,
        "programs RUNNING under the new supervisord",
        evidence=lambda: supervisor_text(host),
    )
    wait_http_ok(host, "/readyz", timeout=60)
    # the old programs of the dead supervisord must not linger (holding the pid file, the socket, jobs): every
    # gunicorn and rq worker process descends from the new supervisord
    strays = unmanaged_app_processes(host, main_pid(host, "supervisor"))
    assert not strays, "app processes outside the new supervisord:\n" + "\n".join(strays)
    print(f"supervisord back with programs serving in {time.monotonic() - t0:.1f}s")


@pytest.mark.parametrize(
    "unit", ["nginx", "redis-server@cache", "redis-server@queue", DB_SERVICE.removesuffix(".service")]
)
def test_service_restarts_after_kill(host, unit):
    pid = main_pid(host, unit)
    assert pid, unit_evidence(host, unit)
    t0 = time.monotonic()
    sh(host, f"kill -9 {pid}")
    wait_for(
        lambda: main_pid(host, unit) not in (0, pid) and unit_state(host, unit) == "active",
        90,
        1,
        f"{unit} active with a new MainPID",
        evidence=lambda: unit_evidence(host, unit) + journal(host, unit, 15),
    )
    if unit == "nginx":
        # nginx workers of the killed master keep the listening sockets: make sure the new master really serves
        wait_http_ok(host, "/healthz", timeout=30)
    wait_http_ok(host, "/readyz", timeout=60)
    print(f"{unit} back in {time.monotonic() - t0:.1f}s")


CRASHER = """[program:kiln-infra-crasher]
command=/bin/false
autostart=true
autorestart=true
startsecs=1
startretries=3
"""


def test_crash_looping_program_does_not_take_the_others_down(host):
    before = {n: p.pid for n, p in supervisor_status(host).items() if p.state == "RUNNING"}  # not kiln-web-next
    try:
        sh(host, f"printf '%s' '{CRASHER}' > /etc/supervisor/conf.d/kiln-infra-crasher.conf && supervisorctl update")
        wait_for(
            lambda: (p := supervisor_status(host).get("kiln-infra-crasher")) and p.state == "FATAL",
            60,
            1,
            "crasher FATAL",
            evidence=lambda: supervisor_text(host),
        )
        time.sleep(2)
        st = supervisor_status(host)
        for name, pid in before.items():
            assert st[name].state == "RUNNING" and st[name].pid == pid, (
                f"{name} disturbed by a crash-looping neighbour:\n{supervisor_text(host)}"
            )
        assert http(host, "/readyz", scheme="http").status == 200
    finally:
        host.run("rm -f /etc/supervisor/conf.d/kiln-infra-crasher.conf && supervisorctl update")
    assert "kiln-infra-crasher" not in supervisor_status(host)
