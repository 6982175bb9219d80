"""Hardening, measured: what answers from outside, the TLS offer, Django's deploy check, the Lynis index.

The port scan and the TLS check run on the machine running pytest against the target's address (they refuse any
address routed through a gateway: a Vagrant VM on its libvirt bridge is fine, a remote droplet is skipped).
Lynis runs inside the target over the same ssh-config; its report is kept in .vagrant/lynis/. The session starts the
audit in the background as soon as the target is up (conftest.py, KILN_LYNIS_EARLY): the Lynis test collects it.
Under `make test` the audit is of the production image instead (KILN_LYNIS_BG: the boot check's instance b).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from kilnlib import LynisRun, app_python, ssh_target

ROOT = Path(__file__).resolve().parents[2]
HARDENING = ROOT / "tests" / "hardening"


def _ssh_dest(request, host) -> tuple[list[str], str]:
    """(ssh options, destination) for the target testinfra talks to."""
    return ssh_target(request.config, host)


@pytest.fixture(scope="module")
def target_addr(request, host) -> str:
    opts, dest = _ssh_dest(request, host)
    res = subprocess.run(["ssh", *opts, "-G", dest], capture_output=True, text=True, check=True)
    addr = next(line.split()[1] for line in res.stdout.splitlines() if line.startswith("hostname "))
    route = subprocess.run(["ip", "route", "get", addr], capture_output=True, text=True).stdout
    first = route.splitlines()[0] if route else ""
    if not first or " via " in first:
        pytest.skip(f"{addr} is routed through a gateway ({route.strip()}): scans only target local test VMs")
    return addr


def _run(cmd: list[str], timeout: int, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    print(res.stdout[-6000:], res.stderr[-3000:], sep="\n")  # shown by pytest when the test fails
    return res


def test_only_ssh_http_https_answer_from_outside(target_addr):
    res = _run([str(HARDENING / "port-scan.sh"), target_addr, "22 80 443"], timeout=600)
    assert res.returncode == 0, f"port scan of {target_addr} found unexpected open/closed ports (output above)"


def test_tls_is_mozilla_intermediate_with_security_headers(target_addr):
    res = _run([str(HARDENING / "tls-check.sh"), target_addr, "443"], timeout=300)
    assert res.returncode == 0, f"TLS/header check of {target_addr}:443 failed (output above)"


# Every key of Kiln's kernel settings must exist in /proc/sys, be writable there and hold its value: a key the
# kernel lacks or keeps read-only is set by nothing (systemd-sysctl only logs it; ufw, which applies the same file at
# each start, printed "Operation not permitted" for net.ipv4.conf.all.mc_forwarding, read-only in 6.12; and
# Linux has no net.ipv6.conf.all.send_redirects). One SSH command; what it saw is printed.
SYSCTL_CHECK = r"""
while IFS='=' read -r key want; do
  key=$(echo $key); want=$(echo $want)
  case $key in ''|'#'*|';'*) continue ;; esac
  p=/proc/sys/$(echo "$key" | tr . /)
  if [ ! -e "$p" ]; then echo "absent: $key"; continue; fi
  [ -w "$p" ] || echo "read-only: $key"
  have=$(echo $(cat "$p"))
  [ "$have" = "$want" ] || echo "differs: $key is $have, not $want"
done </etc/sysctl.d/90-kiln-hardening.conf
"""


def test_every_kernel_setting_exists_is_writable_and_in_force(host):
    res = host.run("sh -c %s", SYSCTL_CHECK)
    assert res.rc == 0, f"the check itself failed: {res.stderr}"
    assert res.stdout.strip() == "", f"/etc/sysctl.d/90-kiln-hardening.conf on the target:\n{res.stdout}"


def test_django_deploy_check_is_clean(host):
    found = app_python(
        host,
        "from django.core import checks\n"
        "msgs = checks.run_checks(include_deployment_checks=True)\n"
        "print(json.dumps([f'{m.id}: {m.msg}' for m in msgs if m.level >= checks.WARNING]))\n",
    )
    assert found == [], f"manage.py check --deploy reports: {found}"


def test_lynis_hardening_index_meets_target(request, host):
    run = getattr(request.config, "kiln_lynis", None)
    if run is None:  # not started early (KILN_LYNIS_EARLY=0, several --hosts): run it now
        opts, dest = _ssh_dest(request, host)
        run = LynisRun.start(opts, dest, str(ROOT / ".vagrant" / "lynis"))
    t0 = time.monotonic()
    rc, output, took = run.result()
    print(output[-9000:])  # shown by pytest when the test fails
    print(f"lynis-bg.sh: rc={rc}, {took:.0f}s since its start, of which this test waited {time.monotonic() - t0:.0f}s")
    assert rc != 124, f"Lynis did not finish within its bound (LYNIS_TIMEOUT, lynis-bg.sh; output above, {run.outdir})"
    assert rc == 0, f"Lynis below KILN_LYNIS_THRESHOLD or unwaived findings (output above, report in {run.outdir})"
