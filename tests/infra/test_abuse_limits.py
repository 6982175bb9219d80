"""Abuse limits through nginx: bursts of logins and writes get 429s, and a client that keeps failing to log in is
banned by fail2ban.

The clients are test hosts in a network namespace this suite makes on the target (a veth pair, 10.213.0.0/24), each
test with its own address: a ban or a rate limit never touches the suite's own SSH or loopback (which fail2ban
ignores). Every burst is bounded in count; the namespace is removed and any ban lifted afterwards.
"""

from __future__ import annotations

import re
import shlex

import pytest

from kilnlib import PASSWORD_CHECK_TIMEOUT, env_file, out, sh, wait_for

NETNS = "kilnt"
SERVER = "10.213.0.1"
JAIL = "kiln-login"


@pytest.fixture(scope="module")
def clients(host):
    """Addresses in the test namespace, reaching the server's nginx on SERVER:443."""
    addrs = ["10.213.0.2", "10.213.0.3", "10.213.0.4"]
    setup = [
        f"ip netns add {NETNS}",
        f"ip link add {NETNS}0 type veth peer name {NETNS}1",
        f"ip link set {NETNS}1 netns {NETNS}",
        f"ip addr add {SERVER}/24 dev {NETNS}0",
        f"ip link set {NETNS}0 up",
        f"ip netns exec {NETNS} ip link set lo up",
        f"ip netns exec {NETNS} ip link set {NETNS}1 up",
        *(f"ip netns exec {NETNS} ip addr add {a}/24 dev {NETNS}1" for a in addrs),
    ]
    teardown = f"ip netns del {NETNS} 2>/dev/null; ip link del {NETNS}0 2>/dev/null; true"
    sh(host, teardown)
    sh(host, " && ".join(setup))
    yield addrs
    for a in addrs:
        sh(host, f"fail2ban-client set {JAIL} unbanip {a} >/dev/null 2>&1 || true")
    sh(host, teardown)


def _site_name(host) -> str:
    """A name this instance's ALLOWED_HOSTS accepts (the test reaches nginx by the veth address)."""
    names = [h.strip().lstrip(".") for h in env_file(host).get("ALLOWED_HOSTS", "").split(",")]
    return next((n for n in names if n and n != "*" and "*" not in n), "localhost")


def _curl(host, src: str, args: str, status: bool = True, max_time: int = 10) -> str:
    """curl from the test namespace with source address `src`, the URL's path to be appended. With `status`, it
    prints only the status (000: no connection); else the body."""
    name = _site_name(host)
    show = "-o /dev/null -w '%{http_code}\\n' " if status else ""
    return (
        f"ip netns exec {NETNS} curl -sk {show}--max-time {max_time} --interface {src} "
        f"--resolve {name}:443:{SERVER} {args} https://{name}"
    )


def _burst(host, src: str, n: int, args: str, path: str, max_time: int = 10, parallel: int = 1) -> list[str]:
    """n requests to `path` from one curl, as fast as the server answers (curl's URL globbing: one process start for
    all, which under emulation would otherwise pace the burst): over one connection, or `parallel` at a time."""
    par = f"-Z --parallel-max {parallel} " if parallel > 1 else ""
    return out(host, _curl(host, src, par + args, max_time=max_time) + f"{path}?burst=[1-{n}]", timeout=900).split()


def _assert_limited(codes: list[str], what: str):
    assert codes and codes[0] != "429", f"{what}: the first request was already refused: {codes}"
    assert "429" in codes, f"{what}: no 429 in a burst of {len(codes)}: {codes}"
    assert not [c for c in codes if c.startswith("5") or c == "000"], f"{what}: errors in the burst: {codes}"
    print(f"{what}: {codes}")


def test_a_burst_of_login_attempts_gets_429(host, clients):
    # No CSRF token: Django answers 403 until nginx's kiln_login limit answers 429 (a rate of 10/min, burst 5).
    codes = _burst(host, clients[0], 12, "-X POST -d username=x -d password=y", "/accounts/login/")
    _assert_limited(codes, "POST /accounts/login/ x12")


def test_a_burst_of_writes_gets_429(host, clients):
    # Anonymous form posts (redirected to the login or refused by CSRF) still count: nginx limits before the app.
    codes = _burst(host, clients[2], 40, "-X POST -d title=x", "/records/new/")
    _assert_limited(codes, "POST /records/new/ x40")


def test_repeated_failed_admin_logins_get_the_client_banned(host, clients):
    src = clients[1]
    name = _site_name(host)
    jar = "/tmp/kiln-abuse-cookies"
    page = out(host, _curl(host, src, f"-c {jar}", status=False) + "/admin/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token, f"no CSRF token in the admin login page:\n{page[:2000]}"
    post = (
        f"-b {jar} -e https://{name}/admin/login/ -X POST -d csrfmiddlewaretoken={shlex.quote(token.group(1))} "
        "-d username=admin -d password=wrong-password"
    )
    # Each attempt checks a password (PBKDF2: seconds of CPU under TCG): two at a time, one per vCPU of the VM.
    codes = _burst(host, src, 6, post, "/admin/login/", max_time=PASSWORD_CHECK_TIMEOUT, parallel=2)
    # 200: the form again, i.e. a failed login (a success redirects); within the login burst of 1 + 5.
    assert codes.count("200") >= 5, f"failed admin logins: {codes}"
    wait_for(
        lambda: src in out(host, f"fail2ban-client status {JAIL}"),
        60,
        1,
        f"fail2ban's {JAIL} jail bans {src}",
        evidence=lambda: out(host, f"fail2ban-client status {JAIL}; tail -n 8 /var/log/nginx/access.log", ok=None),
    )
    # fail2ban lists an address as banned before its ban action has run (iptables-multiport: on the jail's first ban
    # its chain too, each iptables call ~1 s under TCG): the ban is in force once the action's rule is there.
    wait_for(
        lambda: f"-s {src}/32 " in out(host, "iptables -w -S", ok=None),
        60,
        1,
        f"the firewall rule of the ban of {src}",
        evidence=lambda: out(host, f"iptables -w -S; fail2ban-client status {JAIL}", ok=None),
    )
    after = out(host, _curl(host, src, "") + "/healthz || true")
    assert after == "000", f"{src} is banned, yet its request got an HTTP answer: {after}"
    other = out(host, _curl(host, clients[2], "") + "/healthz || true")
    assert other == "200", f"another client is refused too: {other}"
    print(f"{src}: failed admin logins {codes}, then banned (no connection); {clients[2]} still served")
