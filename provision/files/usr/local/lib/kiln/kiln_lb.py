#!/usr/bin/env python3
"""kiln_lb: the `lb` role's HAProxy (the roles design, issue 14): the operator's KILN_LB_BACKENDS checked, and
HAProxy's configuration rendered from it.

  kiln_lb.py check ENVFILE
      The lb keys of ENVFILE (KEY=VALUE lines: the overrides, the instance env; the last assignment wins, one layer
      of quotes dropped). Every problem on stderr, one a line, naming the item; exit 1 if there is one. Else the
      servers as render writes them on stdout, one a line ("web1 10.77.0.11:443").
  kiln_lb.py render ENVFILE OUT --web-timeout SECONDS [--tls-dir DIR] [--pem FILE] [--haproxy BIN]
      The same check, then OUT (haproxy.cfg, 0644) and the certificate HAProxy serves, FILE (default kiln.pem beside
      OUT, 0600): DIR/fullchain.pem then DIR/privkey.pem in one file (DIR: /etc/kiln/tls, the files nginx serves on
      the other roles), each written only when its content differs, by rename of a complete file. A new OUT must pass
      `BIN -c` (default /usr/sbin/haproxy) before it replaces the old one. Prints "written" (a file changed: reload
      haproxy) or "unchanged"; a problem exits 1 naming it, and OUT is left as it was.
      SECONDS is gunicorn's request timeout, KILN_WEB_TIMEOUT of lib/common.sh (the caller passes it: one number).
  For tests only (the server uses the defaults): --listen ADDR (one address instead of every IPv4 and IPv6 one),
  --http-port N [80], --https-port N [443], --socket PATH [/run/haproxy/admin.sock].

KILN_LB_BACKENDS=ADDR[:PORT][,...]: the web hosts, each an IPv4 address, an IPv6 address ([ADDR]:PORT with a port),
or a DNS name (resolved when HAProxy starts), port 443 unless given. An empty item, a port outside 1-65535 and the
same host and port twice are errors naming the item; so is a KILN_LB_* key that is not one of Kiln's (misspelt).
The servers are web1..webN in the order given (`set server kiln_web/web1 state drain` on the admin socket).

Why HAProxy needs one file: its `crt` takes the certificate and key together (a separate key file must be named
CRT.key; HAProxy 3.0's crt-store takes `key`, but HAProxy 2.6, which the build host's tests run, has no crt-store).
So a renewed certificate needs a render and a reload, as it needs an nginx reload on the other roles.

Retries: HAProxy retries by its `retry-on` list whatever the method (its manual: "You have to make sure the
application has a replay protection mechanism built in [...] or it is very dangerous to use any retry-on value
beside conn-failure and none"). conn-failure is safe for every request (it was not sent); the others
(empty-response, 503) are kept for GET, HEAD and OPTIONS by `http-request disable-l7-retry`. A retry goes to another
server (`option redispatch 1`); `retries 2` bounds the attempts after the first.

Standard library only (the server's python3; also 3.11, the host's tests run it).
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

LIB = Path(__file__).resolve().parent  # /usr/local/lib/kiln on the server, provision/files/usr/local/lib/kiln here
sys.path.insert(0, str(LIB))
import kiln_ready  # noqa: E402 - beside this file, wherever it is

KEY = "KILN_LB_BACKENDS"
KEYS = (KEY,)  # the lb role's keys; any other KILN_LB_* key is misspelt
DEFAULT_PORT = 443
TLS_DIR = Path("/etc/kiln/tls")
SOCKET = "/run/haproxy/admin.sock"
HAPROXY = "/usr/sbin/haproxy"
BACKEND = "kiln_web"
# nginx's proxy_connect_timeout (files/etc/nginx/snippets/kiln-proxy.conf): a web host that does not take a
# connection within it is down for this request (HAProxy retries on another).
CONNECT_TIMEOUT = 5
# HAProxy waits for a web host's answer longer than the web host does: gunicorn kills a request at KILN_WEB_TIMEOUT,
# nginx gives up at KILN_WEB_TIMEOUT + 5 (proxy_read_timeout 65s, kiln-proxy.conf); so the client gets the web
# host's own answer (the app's, or nginx's 504 page), never a cut from the balancer first.
SERVER_TIMEOUT_MARGIN = 10
# The TLS of nginx's kiln-tls.conf on the other roles (Mozilla "intermediate": TLS 1.2 and 1.3, ECDHE AEAD suites,
# no DHE: no dhparam), as Debian's default haproxy.cfg has it but for the DHE suites. The tests compare the two.
CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
CIPHERSUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
CURVES = "X25519:P-256:P-384"  # nginx's ssl_ecdh_curve X25519:prime256v1:secp384r1
ERRORFILES = (400, 403, 408, 500, 502, 503, 504)  # Debian's /etc/haproxy/errors, as its default haproxy.cfg uses
LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class LbError(Exception):
    """One or more problems, one a line."""


@dataclass(frozen=True)
class Backend:
    host: str  # an IP address (its compressed form) or a DNS name (lower case)
    port: int
    item: str  # as the operator wrote it

    @property
    def address(self) -> str:
        """HOST:PORT as HAProxy reads it (an IPv6 address in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def read_env(path: Path) -> dict[str, str]:
    """The env file's KEY=VALUE lines, read as every Kiln helper reads them (kiln_ready.read_env)."""
    try:
        return kiln_ready.read_env(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise LbError(f"cannot read {path}: {exc}") from exc


def parse_host(host: str, bracketed: bool) -> str | None:
    """The canonical form of an address or DNS name; None when it is neither."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        if "%" in host or (bracketed and ip.version != 6):  # no zone index; brackets are for IPv6 only
            return None
        return ip.compressed
    if bracketed:
        return None
    name = host.lower().removesuffix(".")
    labels = name.split(".")
    if not name or len(name) > 253 or not all(LABEL.match(label) for label in labels) or labels[-1].isdigit():
        return None
    return name


def parse_item(n: int, item: str) -> Backend | str:
    """One item of KILN_LB_BACKENDS: its backend, or the problem with it."""
    where = f"{KEY} item {n} '{item}'"
    if not re.fullmatch(r"[A-Za-z0-9_.:\[\]-]+", item):
        return f"{where}: not ADDR[:PORT] (an address or a DNS name, then an optional port; no scheme, no path)"
    port_text: str | None = None
    if item.startswith("["):
        m = re.match(r"^\[([^\]]*)\](?::(.*))?$", item)
        if not m:
            return f"{where}: an IPv6 address with a port is written [ADDR]:PORT"
        host_text, port_text, bracketed = m.group(1), m.group(2), True
    elif item.count(":") >= 2:  # an IPv6 address without brackets is one without a port
        host_text, bracketed = item, False
    else:
        host_text, sep, port = item.partition(":")
        port_text, bracketed = (port if sep else None), False
    host = parse_host(host_text, bracketed)
    if host is None and bracketed:
        return f"{where}: '{host_text}' in brackets is not an IPv6 address"
    if host is None:
        return f"{where}: '{host_text}' is not an IPv4 address, an IPv6 address or a DNS name"
    port = DEFAULT_PORT
    if port_text is not None:
        if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 1 <= int(port_text) <= 65535:
            return f"{where}: port '{port_text}' is not a number from 1 to 65535"
        port = int(port_text)
    return Backend(host, port, item)


def check_env(env: dict[str, str]) -> tuple[list[Backend], list[str]]:
    """The backends of KILN_LB_BACKENDS in order, and every problem of the lb keys."""
    problems: list[str] = []
    for key in sorted(k for k in env if k.startswith("KILN_LB_") and k not in KEYS):
        close = difflib.get_close_matches(key, KEYS, n=1)
        problems.append(f"{key} is not a key of the lb role" + (f" (misspelt {close[0]}?)" if close else ""))
    value = env.get(KEY)
    if value is None:
        problems.append(f"{KEY} is missing: the lb role needs its web hosts, ADDR[:PORT][,...]")
        return [], problems
    if not value.strip():
        problems.append(f"{KEY} is empty: the lb role needs its web hosts, ADDR[:PORT][,...]")
        return [], problems
    backends: list[Backend] = []
    seen: dict[tuple[str, int], int] = {}
    for n, raw in enumerate(value.split(","), start=1):
        item = raw.strip()
        if not item:
            problems.append(f"{KEY} item {n} is empty (a comma too many?)")
            continue
        parsed = parse_item(n, item)
        if isinstance(parsed, str):
            problems.append(parsed)
            continue
        first = seen.setdefault((parsed.host, parsed.port), n)
        if first != n:
            problems.append(f"{KEY} item {n} '{item}' is item {first}'s web host again ({parsed.address})")
            continue
        backends.append(parsed)
    return backends, problems


def backends_of(envfile: Path) -> list[Backend]:
    backends, problems = check_env(read_env(envfile))
    if problems:
        raise LbError("\n".join(problems))
    return backends


def render_config(
    backends: list[Backend],
    *,
    web_timeout: int,
    pem: Path,
    socket: str = SOCKET,
    listen: str | None = None,
    http_port: int = 80,
    https_port: int = 443,
) -> str:
    """haproxy.cfg for these backends."""

    def binds(port: int, opts: str = "") -> list[str]:
        tail = f" {opts}" if opts else ""
        if listen is not None:
            return [f"    bind {Backend(listen, port, listen).address}{tail}"]
        return [f"    bind :{port}{tail}", f"    bind :::{port} v6only{tail}"]

    timeout = web_timeout + SERVER_TIMEOUT_MARGIN
    tls = f"ssl crt {pem} alpn h2,http/1.1"
    lines = [
        "# Written by kiln_lb.py render (the lb role: kiln-firstboot, kiln reconfigure), from KILN_LB_BACKENDS: edits",
        "# here are replaced at the next render.",
        "global",
        "    log /dev/log local0",
        "    chroot /var/lib/haproxy",
        f"    stats socket {socket} mode 660 level admin",
        "    stats timeout 30s",
        "    user haproxy",
        "    group haproxy",
        "    # nginx's TLS on the other roles (snippets/kiln-tls.conf)",
        f"    ssl-default-bind-ciphers {CIPHERS}",
        f"    ssl-default-bind-ciphersuites {CIPHERSUITES}",
        f"    ssl-default-bind-curves {CURVES}",
        "    ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets",
        "    ssl-default-server-options ssl-min-ver TLSv1.2",
        "",
        "defaults",
        "    log global",
        "    mode http",
        "    option httplog",
        "    option dontlognull",
        f"    timeout connect {CONNECT_TIMEOUT}s",
        f"    # gunicorn's {web_timeout}s + {SERVER_TIMEOUT_MARGIN}: after nginx's own timeout on the web host",
        f"    timeout client {timeout}s",
        f"    timeout server {timeout}s",
        "    timeout http-request 10s",
        "    # a check's answer (/readyz: the database and both Redis) within 2 s, not only within inter's 1 s",
        "    timeout check 2s",
        *(f"    errorfile {code} /etc/haproxy/errors/{code}.http" for code in ERRORFILES),
        "",
        "frontend kiln_http",
        *binds(http_port),
        "    # the load balancer's probe is answered by a web host; everything else moves to HTTPS",
        "    http-request redirect scheme https code 301 unless { path /healthz }",
        "    http-request del-header X-Forwarded-For",
        "    option forwardfor",
        "    http-request set-header X-Forwarded-Proto http",
        f"    default_backend {BACKEND}",
        "",
        "frontend kiln_https",
        *binds(https_port, tls),
        "    # the client's address as this host sees it, never one the client claims",
        "    http-request del-header X-Forwarded-For",
        "    option forwardfor",
        "    http-request set-header X-Forwarded-Proto https",
        f"    default_backend {BACKEND}",
        "",
        f"backend {BACKEND}",
        "    balance roundrobin",
        "    option httpchk",
        "    http-check send meth GET uri /readyz",
        "    http-check expect status 200",
        "    retries 2",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response 503",
        "    # a request that was sent is sent again only when that is safe (conn-failure: it was not sent)",
        "    http-request disable-l7-retry unless METH_GET || METH_OPTIONS",
        "    # the web hosts' certificates are self-signed per instance",
        "    default-server inter 1s fall 2 rise 2 ssl verify none check",
        *(f"    server web{n} {b.address}" for n, b in enumerate(backends, start=1)),
    ]
    return "\n".join(lines) + "\n"


def pem_text(tls_dir: Path) -> str:
    """fullchain.pem then privkey.pem of tls_dir, one file."""
    parts = []
    for name, marker in (("fullchain.pem", "-----BEGIN CERTIFICATE-----"), ("privkey.pem", "PRIVATE KEY-----")):
        path = tls_dir / name
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise LbError(f"cannot read the certificate file {path}: {exc}") from exc
        if marker not in text:
            raise LbError(f"{path} holds no {marker.strip('-')}")
        parts.append(text if text.endswith("\n") else text + "\n")
    return "".join(parts)


def same(path: Path, content: str, mode: int) -> bool:
    """True when path holds content already (its mode set to mode if it differs)."""
    try:
        if path.read_text(encoding="utf-8") != content:
            return False
    except (OSError, UnicodeDecodeError):  # none yet, or unreadable: written anew
        return False
    if path.stat().st_mode & 0o7777 != mode:
        path.chmod(mode)
    return True


def stage(path: Path, content: str, mode: int) -> Path:
    """content in a new file beside path (mode set before anything is written), synced; its name."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".kiln-new")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def render(
    envfile: Path,
    out: Path,
    *,
    web_timeout: int,
    tls_dir: Path = TLS_DIR,
    pem: Path | None = None,
    haproxy: str = HAPROXY,
    socket: str = SOCKET,
    listen: str | None = None,
    http_port: int = 80,
    https_port: int = 443,
) -> bool:
    """Write the certificate file and OUT where they differ; True when one was written."""
    if web_timeout < 1:
        raise LbError(f"--web-timeout {web_timeout}: not a number of seconds >= 1")
    backends = backends_of(envfile)
    pem = (pem or out.parent / "kiln.pem").absolute()  # haproxy.cfg names it: not relative to a caller's cwd
    cert = pem_text(tls_dir)
    config = render_config(
        backends,
        web_timeout=web_timeout,
        pem=pem,
        socket=socket,
        listen=listen,
        http_port=http_port,
        https_port=https_port,
    )
    written = False
    try:
        if not same(pem, cert, 0o600):
            stage(pem, cert, 0o600).replace(pem)
            written = True
        if not same(out, config, 0o644):
            tmp = stage(out, config, 0o644)
            try:
                verify(haproxy, tmp, out)
                tmp.replace(out)
            finally:
                tmp.unlink(missing_ok=True)
            written = True
    except OSError as exc:
        raise LbError(f"cannot write {exc.filename or out}: {exc.strerror}") from exc
    return written


def verify(haproxy: str, cfg: Path, out: Path) -> None:
    """`haproxy -c` on cfg (the new OUT); its alerts in the problem when it refuses."""
    try:
        proc = subprocess.run([haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LbError(f"cannot run {haproxy} -c (the distro profile's PKG_LB): {exc}") from exc
    if proc.returncode != 0:
        # its ALERT lines (the NOTICE lines name its version and path); a DNS name must resolve now
        lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "NOTICE" not in line]
        said = [
            re.sub(r"^\[(ALERT|WARNING)\] +\(\d+\) : ", "", line).replace(str(cfg), f"new {out}")
            for line in lines
            if line.strip()
        ]
        raise LbError("\n".join([f"{haproxy} -c refuses the rendered configuration (exit {proc.returncode}):", *said]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kiln_lb.py", description="The lb role's HAProxy: check and render.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    check = sub.add_parser("check", help="check the lb keys of an env file")
    check.add_argument("envfile", type=Path)
    rend = sub.add_parser("render", help="write haproxy.cfg and its certificate file where they differ")
    rend.add_argument("envfile", type=Path)
    rend.add_argument("out", type=Path)
    rend.add_argument("--web-timeout", type=int, required=True, help="gunicorn's timeout (KILN_WEB_TIMEOUT)")
    rend.add_argument("--tls-dir", type=Path, default=TLS_DIR, help=f"fullchain.pem and privkey.pem [{TLS_DIR}]")
    rend.add_argument("--pem", type=Path, help="the certificate file HAProxy serves [kiln.pem beside OUT]")
    rend.add_argument("--haproxy", default=HAPROXY, help=f"the haproxy that checks OUT [{HAPROXY}]")
    rend.add_argument("--socket", default=SOCKET, help=f"tests: the admin socket [{SOCKET}]")
    rend.add_argument("--listen", help="tests: the one address to listen on [every IPv4 and IPv6 address]")
    rend.add_argument("--http-port", type=int, default=80, help="tests: [80]")
    rend.add_argument("--https-port", type=int, default=443, help="tests: [443]")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "check":
            for n, b in enumerate(backends_of(args.envfile), start=1):
                print(f"web{n} {b.address}")
        else:
            written = render(
                args.envfile,
                args.out,
                web_timeout=args.web_timeout,
                tls_dir=args.tls_dir,
                pem=args.pem,
                haproxy=args.haproxy,
                socket=args.socket,
                listen=args.listen,
                http_port=args.http_port,
                https_port=args.https_port,
            )
            print("written" if written else "unchanged")
    except LbError as exc:
        for line in str(exc).splitlines():
            print(f"kiln-lb: ERROR: {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
