"""A reboot brings everything back, and data written before it is still there."""

import json
import os
import re
import time
import uuid

import pytest

from kilnlib import (
    DB_SERVICE,
    FIRSTBOOT_UNITS,
    SERVICES,
    SOCKET,
    all_running,
    app_python,
    boot_id,
    http,
    supervisor_text,
    unit_evidence,
    wait_for,
    wait_http_ok,
    worker_names,
)

BOOT_TIMEOUT = float(os.environ.get("KILN_BOOT_TIMEOUT", "300"))


def _reachable_boot_id(host):
    try:
        res = host.run("cat /proc/sys/kernel/random/boot_id")
    except RuntimeError:  # testinfra raises on ssh's own failure (rc 255): the VM is still rebooting
        return None
    return res.stdout.strip() if res.rc == 0 else None


@pytest.fixture(scope="module")
def rebooted(host, kiln_vm):
    title = f"before-reboot-{uuid.uuid4().hex[:8]}"
    # Written with the app's own models (one Python start, no password check: ~15 s of CPU under TCG), read back
    # through the app's API after the reboot.
    record = app_python(
        host,
        "from records.models import Record\n"
        f"r = Record.objects.create(title={title!r}, body='written before the reboot')\n"
        "print(json.dumps({'id': r.pk, 'title': r.title}))\n",
    )
    assert record and record["title"] == title, f"could not create the record before rebooting: {record}"
    old = boot_id(host)
    watch = kiln_vm.watch() if kiln_vm else None
    host.run("nohup sh -c 'sleep 2; systemctl reboot' >/dev/null 2>&1 &")
    t0 = time.monotonic()
    panicked = False

    def back():
        nonlocal panicked
        if watch and not panicked and (trouble := watch.check()):
            # a panic (seen under TCG) or no kernel progress: report it, power-cycle once (vagrant up watches too)
            panicked = True
            print(f"{'KERNEL PANIC' if trouble[0] == 'panic' else 'KERNEL HUNG'} during reboot, power-cycling once:")
            print(trouble[1])
            kiln_vm.force_off()
            kiln_vm.vagrant("up")
            kiln_vm.write_ssh_config()
        new = _reachable_boot_id(host)
        return new if new and new != old else None

    wait_for(
        back,
        BOOT_TIMEOUT,
        3,
        "the host to come back with a new boot_id",
        evidence=lambda: kiln_vm.serial_since(watch.sizes)[-2000:] if watch else "n/a",
    )
    print(f"reboot: SSH back after {time.monotonic() - t0:.0f}s")
    return {"record": record, "t0": t0, "panicked": panicked}


@pytest.mark.parametrize("unit", [*SERVICES, *FIRSTBOOT_UNITS])
def test_service_is_back_after_reboot(host, rebooted, unit):
    want = ("active",) if unit not in FIRSTBOOT_UNITS else ("active", "inactive")
    wait_for(
        lambda: host.run(f"systemctl is-active {unit}").stdout.strip() in want,
        180,
        2,
        f"{unit} {want} after reboot",
        evidence=lambda: unit_evidence(host, unit),
    )
    if unit in FIRSTBOOT_UNITS:
        res = host.run(f"systemctl show -p Result --value {unit}")
        assert res.stdout.strip() == "success", unit_evidence(host, unit)


def test_programs_are_running_after_reboot(host, rebooted):
    wait_for(
        lambda: all_running(host, ["kiln-web", *worker_names(host)]) and len(worker_names(host)) >= 1,
        180,
        2,
        "kiln-web and workers RUNNING after reboot",
        evidence=lambda: supervisor_text(host),
    )
    assert host.file(SOCKET).is_socket


def test_app_serves_after_reboot(host, rebooted):
    wait_http_ok(host, "/readyz", timeout=180)
    print(f"reboot: /readyz 200 after {time.monotonic() - rebooted['t0']:.0f}s")
    assert http(host, "/records/").status == 200


def test_record_written_before_reboot_is_still_there(host, rebooted):
    rec = rebooted["record"]
    r = http(host, f"/api/records/{rec['id']}/")
    assert r.status == 200 and json.loads(r.body)["title"] == rec["title"], r


def test_reboot_was_clean(host, rebooted):
    assert not rebooted["panicked"], "the guest kernel panicked or hung during the reboot (recovered by a power cycle)"
    failed = host.run("systemctl --failed --no-legend --plain").stdout.strip()
    assert not failed, f"failed units after reboot:\n{failed}"


def test_app_stopped_gracefully_in_the_shutdown_before(host, rebooted):
    # A program that ignores its stop signal holds every reboot for its stopwaitsecs (360 s for a worker) and then
    # loses its work to SIGKILL; systemd's own timeout (TimeoutStopSec) would cut supervisord down the same way.
    log = host.run("journalctl -b -1 -u supervisor.service --no-pager -o short-precise").stdout
    start = log.rfind("Stopping supervisor")
    assert start >= 0, f"no supervisor stop in the previous boot's journal:\n{log[-2000:]}"
    stop = log[start:]
    forced = [line for line in stop.splitlines() if re.search(r"SIGKILL|timed out|Killing process", line)]
    assert not forced and "Deactivated successfully" in stop, f"supervisor's stop at shutdown was forced:\n{stop}"


def test_the_database_stopped_only_after_the_app_in_the_shutdown_before(host, rebooted):
    # kiln-stop-app-first.service is After= the database server and its stop stops supervisor, so at shutdown the app
    # stops first: the rq workers' last jobs and the web's last requests still reach the database. (Without that
    # order the server stopped while supervisor was stopping: seen on a VM, 0.8 s after supervisor's stop began.)
    log = host.run(
        f"journalctl -b -1 _PID=1 --no-pager -o short-monotonic | grep -E 'Stopp(ing|ed) (supervisor|{DB_SERVICE})'"
    ).stdout
    lines = log.splitlines()
    app_down = next((i for i, ln in enumerate(lines) if "Stopped supervisor.service" in ln), None)
    db_stops = next((i for i, ln in enumerate(lines) if f"Stopping {DB_SERVICE}" in ln), None)
    assert app_down is not None and db_stops is not None, f"PID 1's stop messages in the previous boot:\n{log}"
    assert app_down < db_stops, f"the database server began to stop before the app was down:\n{log}"
