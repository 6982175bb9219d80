"""`kiln tls DOMAIN EMAIL` (kiln-letsencrypt) obtains a real certificate: from Debian's pebble, an ACME test server
started on the target with pebble-challtestsrv as the DNS server that knows the test's names (the target's address),
HTTP-01 validated by pebble against nginx on port 80. Then nginx serves pebble's certificate, a renewal (certbot
renew, with the environment certbot.service has) runs the stored deploy hook and nginx serves the new one, and runs
that must fail (a name only /etc/hosts knows, a name DNS does not know, a CA that does not answer, an nginx that
refuses the new certificate) exit non-zero naming the problem and change nothing that is served.

Every run names a local ACME directory (pebble's, or a port nothing listens on): whatever the pre-check lets
through, no request leaves the target. The module leaves the target as it found it: the /etc/kiln/tls links and
what nginx serves, certbot's directories, certbot.service's environment, pebble installed only if it was before,
nothing of it running.
"""

from __future__ import annotations

import json
import shlex
import time

import pytest

from kilnlib import out, sh, wait_for, wait_in_guest

DOMAIN = "kiln-test.example"
WORK = "/run/kiln-test-acme"
ACME = "https://localhost:14000/dir"
DEAD_ACME = "https://localhost:14009/dir"  # nothing listens there
DNS = "127.0.0.1#8053"  # pebble-challtestsrv
CHALLTESTSRV_API = "http://127.0.0.1:8055"
UNITS = ("kiln-test-pebble.service", "kiln-test-challtestsrv.service")
TLS = "/etc/kiln/tls"
LE_DIRS = "/etc/letsencrypt /var/lib/letsencrypt /var/log/letsencrypt"
LE_SAVED = "/var/tmp/kiln-test-letsencrypt.tar"
CA_DROPIN = "/etc/systemd/system/certbot.service.d/kiln-acme-ca.conf"
CA_COPY = "/etc/letsencrypt/kiln-acme-ca.pem"
# A throw-away CA for pebble's own HTTPS (certbot must trust it: KILN_ACME_CA_BUNDLE), its certificate for localhost,
# pebble's config (challenges on nginx's ports), then both servers as transient units.
START = f"""set -e
install -d -m 0700 {WORK}; cd {WORK}
ec='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2'
openssl req -x509 $ec -subj /CN=kiln-test-acme-ca -addext basicConstraints=critical,CA:TRUE \\
  -addext keyUsage=critical,keyCertSign,cRLSign -keyout ca.key -out ca.pem 2>/dev/null
openssl req -x509 $ec -subj /CN=localhost -CA ca.pem -CAkey ca.key -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \\
  -addext basicConstraints=critical,CA:FALSE -addext keyUsage=critical,digitalSignature \\
  -addext extendedKeyUsage=serverAuth -keyout key.pem -out cert.pem 2>/dev/null
printf '%s\\n' '{{"pebble": {{"listenAddress": "127.0.0.1:14000", "managementListenAddress": "127.0.0.1:15000",
  "certificate": "{WORK}/cert.pem", "privateKey": "{WORK}/key.pem", "httpPort": 80, "tlsPort": 443,
  "ocspResponderURL": "", "externalAccountBindingRequired": false}}}}' >pebble.json
systemd-run -q --unit={UNITS[1]} pebble-challtestsrv -defaultIPv4 '' -defaultIPv6 '' -dns01 127.0.0.1:8053 \\
  -http01 '' -https01 '' -tlsalpn01 '' -doh '' -management 127.0.0.1:8055
systemd-run -q --unit={UNITS[0]} -E PEBBLE_VA_NOSLEEP=1 -E PEBBLE_WFE_NONCEREJECT=0 \\
  pebble -config {WORK}/pebble.json -dnsserver 127.0.0.1:8053
"""


def served(host) -> dict[str, str]:
    """What nginx serves on 443 for DOMAIN's SNI: subject, issuer, serial, fingerprint (openssl's words)."""
    text = out(
        host,
        f"echo | timeout 20 openssl s_client -connect 127.0.0.1:443 -servername {DOMAIN} 2>/dev/null"
        " | openssl x509 -noout -subject -issuer -serial -fingerprint -sha256",
    )
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def links(host) -> dict[str, str]:
    return {n: out(host, f"readlink {TLS}/{n}") for n in ("fullchain.pem", "privkey.pem")}


def kiln_tls(host, domain: str, ok=(0,), **env: str):
    """`kiln tls DOMAIN admin@DOMAIN` as the operator runs it (sudo), with KILN_* settings."""
    words = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    t0 = time.monotonic()
    res = sh(host, f"env {words} kiln tls {domain} admin@{domain}", ok=ok, timeout=600)
    print(f"$ {words} kiln tls {domain} -> rc={res.rc} in {time.monotonic() - t0:.1f}s\n{res.stdout}{res.stderr}")
    return res


def fails_changing_nothing(host, domain: str, said: str, **env: str):
    """kiln tls DOMAIN fails, saying `said`, and nginx serves what it served before, through the same links."""
    before, links_before = served(host), links(host)
    res = kiln_tls(host, domain, ok=None, **env)
    assert res.rc != 0, f"kiln tls should have failed:\n{res.stdout}{res.stderr}"
    assert said in res.stderr, f"expected {said!r} in:\n{res.stderr}"
    after = served(host)
    assert after == before, f"the served certificate changed:\nbefore {before}\nafter  {after}"
    assert links(host) == links_before
    return res


@pytest.fixture(scope="module")
def address(host) -> str:
    return out(host, "hostname -I | awk '{print $1}'")


@pytest.fixture(scope="module", autouse=True)
def target_restored(host):
    """After the module, as before it: /etc/kiln/tls's links and what nginx serves, certbot's directories and
    certbot.service's environment."""
    links_before, served_before = links(host), served(host)
    sh(host, f"ls -d {LE_DIRS} 2>/dev/null | tar -cf {LE_SAVED} -T -")
    yield
    dropin_dir = CA_DROPIN.rsplit("/", 1)[0]
    sh(
        host,
        f"rm -rf {LE_DIRS} {CA_DROPIN} && tar -xf {LE_SAVED} -C / && rm -f {LE_SAVED} && "
        f"{{ [ ! -d {dropin_dir} ] || rmdir --ignore-fail-on-non-empty {dropin_dir}; }} && systemctl daemon-reload && "
        f"ln -sfn {shlex.quote(links_before['fullchain.pem'])} {TLS}/fullchain.pem && "
        f"ln -sfn {shlex.quote(links_before['privkey.pem'])} {TLS}/privkey.pem && "
        "nginx -t -q && systemctl reload nginx",
    )
    wait_for(lambda: served(host) == served_before, 30, 1, "nginx serves the certificate it served before")


@pytest.fixture(scope="module")
def acme(host, address):
    """pebble and pebble-challtestsrv running (DOMAIN -> the target's address); afterwards stopped, and pebble
    removed when it was not installed."""
    had_pebble = host.run("dpkg-query -W -f '${Status}' pebble 2>/dev/null | grep -q 'install ok installed'").rc == 0
    try:
        if not had_pebble:
            t0 = time.monotonic()
            # The image keeps no apt lists: fetch them when apt does not know the package.
            sh(
                host,
                "export DEBIAN_FRONTEND=noninteractive; i='apt-get install -y -q --no-install-recommends pebble'; "
                "$i >/dev/null 2>&1 || { apt-get update -q >/dev/null && $i >/dev/null; }",
                timeout=600,
            )
            print(f"installed Debian's pebble in {time.monotonic() - t0:.0f}s")
        sh(host, START, timeout=120)
        wait_in_guest(
            host,
            f"curl -fsS --cacert {WORK}/ca.pem -o /dev/null {ACME} && curl -sS -o /dev/null {CHALLTESTSRV_API}/",
            60,
            "pebble and pebble-challtestsrv answer",
            evidence=lambda: out(host, f"journalctl -n 20 --no-pager -u {UNITS[0]} -u {UNITS[1]}", ok=None),
        )
        add_a = json.dumps({"host": DOMAIN, "addresses": [address]})
        sh(host, f"curl -fsS -d {shlex.quote(add_a)} {CHALLTESTSRV_API}/add-a")
        yield {
            "KILN_TLS_DNS": DNS,
            "KILN_PUBLIC_IP": address,
            "KILN_ACME_SERVER": ACME,
            "KILN_ACME_CA_BUNDLE": f"{WORK}/ca.pem",
        }
    finally:
        units = " ".join(UNITS)
        stop = f"systemctl stop {units}; systemctl reset-failed {units} 2>/dev/null; rm -rf {WORK}"
        stop += f"; ! systemctl is-active -q {units}"
        if not had_pebble:
            stop += " && DEBIAN_FRONTEND=noninteractive apt-get purge -y -q pebble >/dev/null"
        sh(host, stop, timeout=300)


@pytest.fixture(scope="module")
def issued(host, acme):
    """kiln tls DOMAIN done against pebble: its output."""
    return kiln_tls(host, DOMAIN, **acme)


def pebble_root(host) -> str:
    """pebble's root CA (it makes a new one at every start), as a file on the target."""
    sh(host, f"curl -fsS --cacert {WORK}/ca.pem -o {WORK}/pebble-root.pem https://localhost:15000/roots/0")
    return f"{WORK}/pebble-root.pem"


def test_tls_refuses_a_name_that_resolves_only_through_etc_hosts(host, address):
    # No resolver override: the system's (systemd-resolved, whose stub would answer from /etc/hosts too).
    sh(host, f"echo '{address} kiln-hosts.example' >>/etc/hosts")
    try:
        res = fails_changing_nothing(
            host,
            "kiln-hosts.example",
            "kiln-hosts.example resolves only through /etc/hosts",
            KILN_PUBLIC_IP=address,
            KILN_ACME_SERVER=DEAD_ACME,
        )
    finally:
        sh(host, "sed -i '/ kiln-hosts\\.example$/d' /etc/hosts")
    assert "DNS ok" not in res.stdout


def test_tls_refuses_a_name_that_dns_does_not_know(host, acme):
    # (pebble-challtestsrv answers NOERROR without records where a real server would say NXDOMAIN)
    said = f"kiln-unknown.example has no A/AAAA record ({DNS} answered "
    fails_changing_nothing(host, "kiln-unknown.example", said, **acme)


def test_tls_failed_certbot_run_keeps_the_served_certificate_and_links(host, acme):
    res = fails_changing_nothing(
        host, DOMAIN, "certbot failed (above): nothing changed", **{**acme, "KILN_ACME_SERVER": DEAD_ACME}
    )
    assert "DNS ok" in res.stdout, "the pre-check should have passed: this is certbot's failure"


def test_tls_puts_the_links_back_when_nginx_refuses_the_new_certificate(host, acme):
    # certbot gets the certificate, then the first `nginx -t` (a stand-in ahead in PATH) refuses it; the one after
    # the links are put back is nginx's own. (In /root: /tmp, /var/tmp and /run are noexec on the image.)
    shim = "/root/kiln-test-nginx-refuses"
    script = f"""#!/bin/sh
[ "$1" != -t ] || [ -e {shim}/refused ] || {{ touch {shim}/refused; echo "nginx: refused by the test" >&2; exit 1; }}
exec /usr/sbin/nginx "$@"
"""
    sh(host, f"mkdir -p {shim} && printf '%s' {shlex.quote(script)} >{shim}/nginx && chmod 0755 {shim}/nginx")
    path = f"{shim}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    try:
        res = fails_changing_nothing(host, DOMAIN, "nginx refuses the new certificate", PATH=path, **acme)
    finally:
        sh(host, f"rm -rf {shim}")
    assert "put back as it was, nginx serves the certificate it served before" in res.stderr
    # certbot's lineage stays for the next run (which finds it not yet due and uses it: the tests below)
    assert host.file(f"/etc/letsencrypt/live/{DOMAIN}/fullchain.pem").exists


def test_tls_serves_certificate_from_acme(host, issued):
    assert "DNS ok" in issued.stdout and "nginx now serves the certificate" in issued.stdout
    live = f"/etc/letsencrypt/live/{DOMAIN}"
    assert links(host) == {"fullchain.pem": f"{live}/fullchain.pem", "privkey.pem": f"{live}/privkey.pem"}
    cert = served(host)
    verify = host.run(
        f"echo | timeout 20 openssl s_client -connect 127.0.0.1:443 -servername {DOMAIN} -CAfile {pebble_root(host)} "
        f"-verify_return_error -verify_hostname {DOMAIN} 2>&1"
    )
    assert verify.rc == 0 and "Verify return code: 0 (ok)" in verify.stdout, (
        f"nginx does not serve a certificate for {DOMAIN} from pebble's CA: {cert}\n{verify.stdout[-1500:]}"
    )
    assert cert["issuer"].startswith("CN=Pebble Intermediate CA"), cert
    live_serial = out(host, f"openssl x509 -noout -serial -in {live}/cert.pem").split("=", 1)[1]
    assert cert["serial"] == live_serial, f"served {cert}, {live}/cert.pem has serial {live_serial}"


def test_tls_renewal_runs_the_deploy_hook_and_nginx_serves_the_new_certificate(host, issued):
    conf = out(host, f"cat /etc/letsencrypt/renewal/{DOMAIN}.conf")
    assert "renew_hook = systemctl reload nginx" in conf.splitlines(), conf
    assert f"server = {ACME}" in conf.splitlines(), conf
    # The timer's renewals: certbot.timer on (the image carries certbot), certbot.service trusting pebble's HTTPS.
    assert out(host, "systemctl is-enabled certbot.timer") == "enabled"
    unit_env = out(host, "systemctl show -p Environment --value certbot.service")
    assert f"REQUESTS_CA_BUNDLE={CA_COPY}" in unit_env.split(), unit_env
    before = served(host)
    t0 = time.monotonic()
    res = sh(host, f"env {unit_env} certbot renew --force-renewal --no-random-sleep-on-renew 2>&1", timeout=600)
    print(f"certbot renew in {time.monotonic() - t0:.1f}s:\n{res.stdout}")
    after = wait_for(
        lambda: (c := served(host))["serial"] != before["serial"] and c,
        30,
        1,
        "nginx serves the renewed certificate (a new serial)",
        evidence=lambda: f"before {before}\nnow {served(host)}\n{res.stdout[-1500:]}",
    )
    print(f"serial before the renewal {before['serial']}, after {after['serial']}")
    assert after["issuer"].startswith("CN=Pebble Intermediate CA"), after
