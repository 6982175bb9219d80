"""kiln-letsencrypt's arguments and DNS pre-check (`kiln tls`), without a server or a CA: `--check` runs the pre-check
alone, in network and mount namespaces of its own (tls_sandbox.py) with tiny DNS servers that the test configures,
its own /etc/hosts, /etc/resolv.conf and systemd-resolved upstream file. The certificate itself (certbot against
Debian's pebble, nginx, the renewal) is tests/infra/test_tls.py's, on the VM.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from kilntest import ROOT

SCRIPT = ROOT / "provision" / "files" / "usr" / "local" / "sbin" / "kiln-letsencrypt"
SANDBOX = Path(__file__).with_name("tls_sandbox.py")
DOMAIN = "kiln-test.example"
# Documentation addresses (RFC 5737, RFC 3849): they exist only inside the sandbox.
HOST_IP = "203.0.113.7"
ELSEWHERE = "198.51.100.9"
ELSEWHERE6 = "2001:db8::9"
DNS = "127.0.0.1"

pytestmark = pytest.mark.skipif(
    shutil.which("unshare") is None or shutil.which("dig") is None or shutil.which("ip") is None,
    reason="needs util-linux unshare, iproute2 and dig (bind9-dnsutils; make test-tools installs it)",
)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check(
    tmp_path: Path,
    *args: str,
    zone: dict | None = None,
    env: dict[str, str] | None = None,
    hosts: str = "",
    resolv_conf: str | None = None,
    resolved_upstream: str | None = None,
    servers: list[dict] | None = None,
    interface_address: str | None = None,
) -> subprocess.CompletedProcess:
    """`kiln-letsencrypt --check ARGS` (ARGS default: DOMAIN and an address) in the sandbox. By default one DNS server
    with `zone` on 127.0.0.1 at a random port, named by KILN_TLS_DNS, and this host's public address HOST_IP."""
    port = free_udp_port()
    if servers is None:
        servers = [{"addr": DNS, "port": port, "zone": zone or {}}]
        env = {"KILN_TLS_DNS": f"{DNS}#{port}", **(env or {})}
    spec = {
        "argv": [str(SCRIPT), "--check", *(args or (DOMAIN, f"admin@{DOMAIN}"))],
        "env": {
            "KILN_PROVISION_DIR": str(ROOT / "provision"),
            "KILN_DISTRO": "debian-13",
            "KILN_PUBLIC_IP": HOST_IP,
            **(env or {}),
        },
        "workdir": str(tmp_path),
        "hosts": f"127.0.0.1 localhost\n{hosts}",
        "resolv_conf": resolv_conf if resolv_conf is not None else "nameserver 192.0.2.53\n",
        "resolved_upstream": resolved_upstream,
        "interface_address": interface_address,
        "servers": servers,
    }
    spec = {k: v for k, v in spec.items() if v is not None}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    res = subprocess.run(
        ["unshare", "-rnm", sys.executable, str(SANDBOX), str(tmp_path / "spec.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    print(f"$ kiln-letsencrypt --check {' '.join(spec['argv'][2:])} -> {res.returncode}\n{res.stdout}{res.stderr}")
    return res


def refused(res: subprocess.CompletedProcess) -> str:
    """The error of a refused check: exit 1, no "DNS ok", one line from die()."""
    assert res.returncode == 1, f"expected a refusal (exit 1), got {res.returncode}"
    assert "DNS ok" not in res.stdout
    assert "kiln: ERROR: " in res.stderr
    return res.stderr


# --- DNS -> this host ------------------------------------------------------------------------------------------------


def test_tls_check_accepts_a_name_whose_records_point_at_this_host(tmp_path):
    res = check(tmp_path, zone={DOMAIN: {"A": [HOST_IP]}})
    assert res.returncode == 0, res.stderr
    assert f"DNS ok: {DOMAIN} -> {HOST_IP} (asked {DNS}#" in res.stdout


def test_tls_check_counts_an_interface_address_as_this_hosts(tmp_path):
    # no KILN_PUBLIC_IP: the interface's address is this host's (the public-IP lookup has no network here)
    res = check(
        tmp_path, zone={DOMAIN: {"A": ["192.0.2.11"]}}, env={"KILN_PUBLIC_IP": ""}, interface_address="192.0.2.11/24"
    )
    assert res.returncode == 0, res.stderr
    assert f"DNS ok: {DOMAIN} -> 192.0.2.11" in res.stdout


def test_tls_check_refuses_a_name_that_resolves_only_through_etc_hosts(tmp_path):
    # getent (nsswitch: files first) finds it; DNS, which the CA asks, has no such name
    err = refused(check(tmp_path, zone={}, hosts=f"{HOST_IP} {DOMAIN}\n"))
    assert f"{DOMAIN} resolves only through /etc/hosts" in err
    assert f"({HOST_IP})" in err and "NXDOMAIN" in err


def test_tls_check_asks_resolveds_upstream_servers_not_its_stub_which_answers_from_etc_hosts(tmp_path):
    # systemd-resolved's stub (127.0.0.53, /etc/resolv.conf) answers names of /etc/hosts as DNS: the one here does
    # just that; the server it forwards to (/run/systemd/resolve/resolv.conf) does not know the name.
    servers = [
        {"addr": "127.0.0.53", "zone": {DOMAIN: {"A": [HOST_IP]}}},
        {"addr": "127.0.0.1", "zone": {}},
    ]
    err = refused(
        check(
            tmp_path,
            hosts=f"{HOST_IP} {DOMAIN}\n",
            resolv_conf="nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n",
            resolved_upstream="nameserver 127.0.0.1\n",
            servers=servers,
        )
    )
    assert f"{DOMAIN} resolves only through /etc/hosts" in err and "127.0.0.1 answered NXDOMAIN" in err


def test_tls_check_asks_the_name_servers_of_resolv_conf(tmp_path):
    servers = [{"addr": "127.0.0.1", "zone": {DOMAIN: {"A": [HOST_IP]}}}]
    res = check(tmp_path, resolv_conf="nameserver 127.0.0.1\n", servers=servers)
    assert res.returncode == 0, res.stderr
    assert f"DNS ok: {DOMAIN} -> {HOST_IP} (asked 127.0.0.1)" in res.stdout


def test_tls_check_names_a_record_that_points_elsewhere(tmp_path):
    err = refused(check(tmp_path, zone={DOMAIN: {"A": [ELSEWHERE]}}))
    assert f"{DOMAIN} -> {ELSEWHERE}" in err
    assert f"this host's addresses are {HOST_IP}" in err


def test_tls_check_names_an_aaaa_record_that_points_elsewhere(tmp_path):
    err = refused(check(tmp_path, zone={DOMAIN: {"A": [HOST_IP], "AAAA": [ELSEWHERE6]}}))
    assert f"{DOMAIN} -> {ELSEWHERE6}" in err


def test_tls_check_refuses_a_name_without_records(tmp_path):
    err = refused(check(tmp_path, zone={"other.example": {"A": [HOST_IP]}}))
    assert f"{DOMAIN} has no A/AAAA record" in err and "NXDOMAIN" in err


def test_tls_check_says_when_no_dns_server_answers(tmp_path):
    # KILN_TLS_DNS names a port nothing listens on
    port = free_udp_port()
    err = refused(check(tmp_path, servers=[], env={"KILN_TLS_DNS": f"{DNS}#{port}"}))
    assert f"no server answered: {DNS}#{port} (no reply)" in err


@pytest.mark.parametrize("value", ["dns.example", "127.0.0.1:53", "127.0.0.1#port", "127.0.0.1 #53", "1.2.3"])
def test_tls_check_refuses_a_resolver_override_that_is_not_ip_and_port(tmp_path, value):
    err = refused(check(tmp_path, zone={}, env={"KILN_TLS_DNS": value}))
    assert "KILN_TLS_DNS must be IP[#PORT]" in err


# --- arguments and the CA's settings (checked before DNS is asked) -------------------------------------------------


@pytest.mark.parametrize(
    "args, env, said",
    [
        ((DOMAIN,), {}, "missing EMAIL"),
        (("localhost", "admin@example.com"), {}, "not a domain name: localhost"),
        (("-rf.example", "admin@example.com"), {}, "not a domain name: -rf.example"),
        ((DOMAIN, "admin"), {}, "not an e-mail address: admin"),
        ((DOMAIN, "a@b.example", "extra"), {}, "too many arguments"),
        (
            (DOMAIN, "a@b.example"),
            {"KILN_LE_STAGING": "1", "KILN_ACME_SERVER": "https://ca.example/dir"},
            "KILN_LE_STAGING=1 and KILN_ACME_SERVER both set",
        ),
        ((DOMAIN, "a@b.example"), {"KILN_LE_STAGING": "yes"}, "KILN_LE_STAGING must be 0 or 1"),
        ((DOMAIN, "a@b.example"), {"KILN_ACME_SERVER": "http://ca.example/dir"}, "must be an https:// URL"),
        (
            (DOMAIN, "a@b.example"),
            {"KILN_ACME_CA_BUNDLE": "/nonexistent/ca.pem"},
            "KILN_ACME_CA_BUNDLE=/nonexistent/ca.pem is not a readable PEM certificate file",
        ),
    ],
)
def test_tls_refuses_bad_arguments_and_settings_before_asking_dns(tmp_path, args, env, said):
    res = check(tmp_path, *args, zone={DOMAIN: {"A": [HOST_IP]}}, env=env)
    assert res.returncode == 1 and said in res.stderr, res.stderr
    assert "DNS ok" not in res.stdout


def test_tls_check_asks_an_ipv6_resolver_override(tmp_path):
    port = free_udp_port()
    servers = [{"addr": "::1", "port": port, "zone": {DOMAIN: {"A": [HOST_IP]}}}]
    res = check(tmp_path, servers=servers, env={"KILN_TLS_DNS": f"::1#{port}"})
    assert res.returncode == 0, res.stderr
    assert f"DNS ok: {DOMAIN} -> {HOST_IP} (asked ::1#{port})" in res.stdout
