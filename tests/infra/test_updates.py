"""Security updates take effect: an apt run restarts what uses replaced files, a pending reboot is shown, and the
operator's reboot window is the only automatic reboot.

Disruptive (both Redis instances restart, the first-boot config is re-run): the suite runs after the others
(conftest.py's ORDER does not name it).
"""

from __future__ import annotations

import pytest

from kilnlib import (
    ENV_FILE,
    OVERRIDES,
    REBOOT_PENDING,
    app_processes,
    http,
    main_pid,
    out,
    overrides_restored,
    redis_cli,
    sh,
    unit_evidence,
    wait_for,
    wait_http_ok,
    worker_names,
)

REDIS_UNITS = ("redis-server@cache.service", "redis-server@queue.service")
AUTO_REBOOT = "/etc/apt/apt.conf.d/52kiln-auto-reboot"


def _apt_run(host) -> str:
    """One real apt/dpkg transaction (a throw-away local package in, then out), so apt's DPkg::Post-Invoke hooks run
    as they do for unattended-upgrades; no package index is needed."""
    build = (
        "set -e; d=$(mktemp -d); mkdir -p $d/pkg/DEBIAN; chmod 0755 $d $d/pkg $d/pkg/DEBIAN; "
        "printf 'Package: kiln-apt-probe\\nVersion: 1\\nArchitecture: all\\nMaintainer: kiln\\n"
        "Description: Kiln test: an apt transaction\\n' >$d/pkg/DEBIAN/control; "
        "dpkg-deb -b $d/pkg $d/probe.deb >/dev/null; "
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q $d/probe.deb 2>&1; "
        "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q kiln-apt-probe 2>&1; rm -rf $d"
    )
    return sh(host, build, timeout=600).stdout


def test_an_apt_run_restarts_both_redis_instances_when_their_binary_is_replaced(host):
    # Debian's redis postinst restarts only the stock redis-server.service (masked here): without a restart hook the
    # @cache and @queue instances would keep running the old, vulnerable binary after a security update.
    before = {unit: main_pid(host, unit) for unit in REDIS_UNITS}
    assert all(before.values()), {u: unit_evidence(host, u) for u in REDIS_UNITS}
    # What an upgrade does to the file: a new inode at the same path (the same bytes here). The running binary is
    # what /proc/PID/exe names (Debian's redis-server and redis-check-rdb are one program).
    binary = out(host, f"readlink /proc/{before[REDIS_UNITS[0]]}/exe")
    sh(host, f"cp -p {binary} {binary}.kiln-new && mv -f {binary}.kiln-new {binary}")
    deleted = out(host, f"readlink /proc/{before[REDIS_UNITS[0]]}/exe")
    # (its mount namespace may show the deleted file's path as "/ (deleted)")
    assert deleted.endswith(" (deleted)"), f"the running redis does not see {binary} replaced: exe -> {deleted}"
    log = _apt_run(host)
    after = wait_for(
        lambda: (p := {u: main_pid(host, u) for u in REDIS_UNITS}) and all(p[u] not in (0, before[u]) for u in p) and p,
        60,
        1,
        "both Redis instances restarted with new PIDs",
        evidence=lambda: f"PIDs before: {before}\n--- apt run ---\n{log[-3000:]}",
    )
    print(f"redis PIDs before {before}, after the apt run {after}")
    for which in ("cache", "queue"):
        pong = wait_for(
            lambda w=which: (r := redis_cli(host, w, "PING", ok=None)).rc == 0 and "PONG" in r.stdout and r,
            30,
            1,
            f"redis {which} answers PING",
        )
        assert "PONG" in pong.stdout
        exe = out(host, f"readlink /proc/{after[f'redis-server@{which}.service']}/exe")
        assert exe == binary, f"redis {which} runs {exe}, not the new {binary}"
    wait_http_ok(host, "/readyz", timeout=60)


def test_a_pending_reboot_is_shown_at_login_and_by_the_status_check(host):
    # Nothing is pending on a fresh server (test_security_basics checks the kernel); then what unattended-upgrades'
    # kernel hook leaves behind after a kernel update.
    res = sh(host, REBOOT_PENDING, ok=None)
    assert res.rc == 1, f"reboot_pending on a server that needs none: rc={res.rc} {res.stdout}{res.stderr}"
    motd = out(host, "run-parts /etc/update-motd.d")
    assert "reboot" not in motd.lower(), motd
    try:
        sh(host, "echo '*** System restart required ***' >/run/reboot-required")
        sh(host, "echo linux-image-test >/run/reboot-required.pkgs")
        res = sh(host, REBOOT_PENDING, ok=None)
        assert res.rc == 0 and "linux-image-test" in res.stdout, f"rc={res.rc}: {res.stdout}{res.stderr}"
        motd = out(host, "run-parts /etc/update-motd.d")
        assert "reboot" in motd.lower() and "linux-image-test" in motd, f"motd at login:\n{motd}"
    finally:
        sh(host, "rm -f /run/reboot-required /run/reboot-required.pkgs")


@pytest.fixture(scope="module")
def overrides(host):
    """The operator's overrides as they were; restored (and the first-boot config re-applied) after the module's last
    test that changed them: one reconfigure, a restart of the stack (~35-55 s under TCG), for all of them."""
    with overrides_restored(host, always=True):
        yield


def _apt_reboot_settings(host) -> str:
    return out(host, "apt-config dump | grep -i 'Unattended-Upgrade::Automatic-Reboot' || true")


def test_reboots_happen_only_in_the_operators_window(host, overrides):
    assert 'Automatic-Reboot "true"' not in _apt_reboot_settings(host), _apt_reboot_settings(host)
    env_before = out(host, f"cat {ENV_FILE}")
    # A bad value stops the reconfigure, naming the key, and changes nothing.
    sh(host, f"echo 'KILN_REBOOT_TIME=25:00' >>{OVERRIDES}")
    res = sh(host, "kiln-firstboot --reconfigure", ok=None, timeout=600)
    assert res.rc != 0 and "KILN_REBOOT_TIME" in res.stdout + res.stderr, f"rc={res.rc}\n{res.stdout}{res.stderr}"
    assert out(host, f"cat {ENV_FILE}") == env_before, "a refused reconfigure rewrote the env file"
    assert not host.file(AUTO_REBOOT).exists
    # A good one is what unattended-upgrades reads.
    sh(host, f"sed -i 's/^KILN_REBOOT_TIME=.*/KILN_REBOOT_TIME=04:30/' {OVERRIDES}")
    sh(host, "kiln-firstboot --reconfigure", timeout=600)
    settings = _apt_reboot_settings(host)
    assert 'Automatic-Reboot "true"' in settings and 'Automatic-Reboot-Time "04:30"' in settings, settings


def _environ(host, pid: int) -> dict[str, str]:
    lines = out(host, f"tr '\\0' '\\n' </proc/{pid}/environ").splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def test_an_upload_limit_and_a_job_timeout_override_reach_every_consumer(host, overrides):
    # One number each, rendered into every consumer (one reconfigure for both: each costs a restart of the stack).
    # The upload limit (provision/lib/common.sh: KILN_MAX_UPLOAD_BYTES, or the operator's MAX_UPLOAD_BYTES): raised in
    # the overrides, a 15 MB body passes nginx and reaches the app, which refuses the anonymous write with its 401
    # (with nginx still at 10 MB, nginx answered it with its own 413).
    # The job timeout (common.sh's job_timeout: the contract's job-timeout, or the operator's JOB_TIMEOUT): the app's
    # web and rq workers get it as JOB_TIMEOUT, the workers' stop waits for it + 60 s, and systemd's bound on
    # supervisor's stop covers the workers' wait and the web's after it (+ 15 s): 960 + 45 + 15 = 1020 s.
    sh(host, f"printf '%s\\n' MAX_UPLOAD_BYTES=20000000 JOB_TIMEOUT=900 >>{OVERRIDES}")
    sh(host, "kiln-firstboot --reconfigure", timeout=600)
    wait_http_ok(host, "/readyz", timeout=120)
    stop_waits = out(host, "grep -h '^stopwaitsecs=' /etc/supervisor/conf.d/kiln-workers.conf")
    assert set(stop_waits.split()) == {"stopwaitsecs=960"}, stop_waits
    reread = out(host, "supervisorctl reread")
    assert reread == "No config updates to processes", f"supervisord does not run the file's config: {reread}"
    stop = out(host, "systemctl show -P TimeoutStopUSec supervisor.service")
    assert stop == "17min", f"supervisor.service's TimeoutStopSec: {stop}"
    # the app's processes, once the wrappers exec'd them (kiln-rqworker waits for the web first)
    supervisord, workers = main_pid(host, "supervisor.service"), worker_names(host)

    def rq_workers() -> list:
        return [p for p in app_processes(host) if p.ppid == supervisord and "manage.py rqworker" in p.args]

    wait_for(
        lambda: len(rq_workers()) == len(workers),
        timeout=180,
        what=f"rq running in each of {workers}",
        evidence=lambda: "\n".join(f"{p.pid} {p.ppid} {p.args}" for p in app_processes(host)),
    )
    master = int(out(host, "cat /run/kiln/gunicorn.pid"))
    procs = rq_workers() + [p for p in app_processes(host) if p.ppid == master]
    seen = {f"{p.pid} {p.args[:60]}": _environ(host, p.pid).get("JOB_TIMEOUT") for p in procs}
    assert seen and set(seen.values()) == {"900"}, seen
    nginx = out(host, "nginx -T 2>/dev/null | grep -E '^[[:space:]]*client_max_body_size' || true")
    assert "client_max_body_size 20000000;" in nginx, f"nginx's limit after the override:\n{nginx}"
    r = http(
        host,
        "/api/records/",
        method="POST",
        headers={"Content-Type": "application/octet-stream"},
        data_cmd="head -c 15000000 /dev/zero",
        timeout=120,
    )
    assert r.status == 401 and "Authentication required" in r.body, r
    # A value that is not a number of bytes stops the reconfigure, naming the key, and changes nothing.
    env_before = out(host, f"cat {ENV_FILE}")
    sh(host, f"sed -i 's/^MAX_UPLOAD_BYTES=.*/MAX_UPLOAD_BYTES=20MB/' {OVERRIDES}")
    res = sh(host, "kiln-firstboot --reconfigure", ok=None, timeout=600)
    assert res.rc != 0 and "MAX_UPLOAD_BYTES" in res.stdout + res.stderr, f"rc={res.rc}\n{res.stdout}{res.stderr}"
    assert out(host, f"cat {ENV_FILE}") == env_before, "a refused reconfigure rewrote the env file"
