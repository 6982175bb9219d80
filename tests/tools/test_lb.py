"""The lb role's HAProxy (kiln_lb.py, step 65; the roles design, issue 14) with this host's haproxy:

- `check` and `render` refuse bad KILN_LB_BACKENDS, each bad item named, every problem printed, nothing written;
- `render` writes a configuration `haproxy -c` accepts (the server's own, with its ports and socket), the certificate
  file (fullchain + key, 0600), only when something changed ("written"/"unchanged");
- a real run on loopback: haproxy on high ports (render's test-only --listen/--http-port/--https-port/--socket) in
  front of two HTTPS backends of this process (self-signed, as the web hosts are): requests balanced to both; a
  backend whose /readyz answers 503 is out within ~3 s, with no failed request; X-Forwarded-For is the client's
  address (not one the client sent); `set server kiln_web/web1 state drain` on the admin socket sends new requests
  to web2 only; a GET caught by a failing backend (connection closed with no answer, or 503) is retried on the other,
  a POST is not;
- the packages: PKG_LB in both distro profiles and in stack_packages (the base disk's list).

haproxy runs as on the server: as root, chrooted to /var/lib/haproxy, as user haproxy (the package's). Every wait is
bounded in time and count.
"""

from __future__ import annotations

import http.client
import json
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from kilntest import ROOT

LB = ROOT / "provision/files/usr/local/lib/kiln/kiln_lb.py"
PROVISION = ROOT / "provision"
# KILN_TEST_HAPROXY: another haproxy to run (e.g. Debian 13's 3.0 on a Debian 12 host, whose own is 2.6)
HAPROXY = os.environ.get("KILN_TEST_HAPROXY") or shutil.which("haproxy") or "/usr/sbin/haproxy"
needs_haproxy = pytest.mark.skipif(not Path(HAPROXY).exists(), reason="needs haproxy (make test-tools installs it)")
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="haproxy runs as on the server: root, chrooted, as user haproxy"
)


def common(expr: str) -> str:
    """A value of provision/lib/common.sh (with the Debian 13 profile): the numbers are stated there once."""
    script = f'. "{PROVISION}/lib/common.sh"; KILN_DISTRO=debian-13 load_distro; {expr}'
    proc = subprocess.run(
        ["bash", "-c", script], env={**os.environ, "KILN_PROVISION_DIR": str(PROVISION)}, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


WEB_TIMEOUT = int(common('printf %s "$KILN_WEB_TIMEOUT"'))


def lb(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["python3", str(LB), *map(str, args)], capture_output=True, text=True, timeout=60)


def write_env(d: Path, text: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    env = d / "overrides.env"
    env.write_text(text)
    return env


def make_cert(d: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate and its key (EC P-256) for name, as the web hosts' are."""
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / "fullchain.pem", d / "privkey.pem"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    subprocess.run(
        ["openssl", "req", "-x509", *ec, "-days", "2", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- check


def test_check_accepts_and_names_the_servers(tmp_path: Path) -> None:
    env = write_env(
        tmp_path,
        "KILN_ROLE=lb\n"
        'KILN_LB_BACKENDS="10.77.0.11, 10.77.0.12:8443,[2001:db8::1]:443,2001:DB8::2,Web3.Example.com."\n',
    )
    proc = lb("check", env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "web1 10.77.0.11:443",
        "web2 10.77.0.12:8443",
        "web3 [2001:db8::1]:443",
        "web4 [2001:db8::2]:443",
        "web5 web3.example.com:443",
    ]


BAD = [
    ("", "KILN_LB_BACKENDS is missing"),
    ("KILN_LB_BACKENDS=\n", "KILN_LB_BACKENDS is empty"),
    ("KILN_LB_BACKENDS=10.0.0.1,,10.0.0.2\n", "item 2 is empty"),
    ("KILN_LB_BACKENDS=10.0.0.1,\n", "item 2 is empty"),
    ("KILN_LB_BACKENDS=10.0.0.1:0\n", "item 1 '10.0.0.1:0': port '0'"),
    ("KILN_LB_BACKENDS=web.example:65536\n", "item 1 'web.example:65536': port '65536'"),
    ("KILN_LB_BACKENDS=web.example:https\n", "item 1 'web.example:https': port 'https'"),
    ("KILN_LB_BACKENDS=web.example:\n", "item 1 'web.example:': port ''"),
    ("KILN_LB_BACKENDS=[2001:db8::1]:99999\n", "item 1 '[2001:db8::1]:99999': port '99999'"),
    ("KILN_LB_BACKENDS=10.0.0.256\n", "item 1 '10.0.0.256': '10.0.0.256' is not"),
    ("KILN_LB_BACKENDS=web_1.example\n", "item 1 'web_1.example': 'web_1.example' is not"),
    ("KILN_LB_BACKENDS=-web.example\n", "item 1 '-web.example'"),
    ("KILN_LB_BACKENDS=https://web.example/\n", "item 1 'https://web.example/': not ADDR[:PORT]"),
    ("KILN_LB_BACKENDS=[10.0.0.1]:443\n", "item 1 '[10.0.0.1]:443': '10.0.0.1' in brackets is not an IPv6"),
    ("KILN_LB_BACKENDS=10.0.0.1,10.0.0.1:443\n", "item 2 '10.0.0.1:443' is item 1's web host again"),
    ("KILN_LB_BACKENDS=[2001:db8::1]:443,2001:db8:0::1\n", "item 2 '2001:db8:0::1' is item 1's web host again"),
    ("KILN_LB_BACKENDS=Web.Example,web.example.:443\n", "item 2 'web.example.:443' is item 1's web host again"),
    ("KILN_LB_BACKEND=10.0.0.1\n", "KILN_LB_BACKEND is not a key of the lb role (misspelt KILN_LB_BACKENDS?)"),
]


@pytest.mark.parametrize(("text", "named"), BAD, ids=[b[1] for b in BAD])
def test_check_refuses_naming_the_item(tmp_path: Path, text: str, named: str) -> None:
    proc = lb("check", write_env(tmp_path, text))
    assert proc.returncode == 1
    assert named in proc.stderr, proc.stderr
    assert proc.stdout == ""


def test_check_prints_every_problem(tmp_path: Path) -> None:
    env = write_env(tmp_path, "KILN_LB_BACKENDS=10.0.0.1,,h:0,10.0.0.1,ok.example\nKILN_LB_BACKEDNS=x\n")
    proc = lb("check", env)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 4, proc.stderr
    assert all(line.startswith("kiln-lb: ERROR: ") for line in lines)
    for named in ("KILN_LB_BACKEDNS", "item 2 is empty", "item 3 'h:0'", "item 4 '10.0.0.1'"):
        assert any(named in line for line in lines), (named, proc.stderr)


# ---- render


@pytest.fixture
def tls(tmp_path: Path) -> Path:
    make_cert(tmp_path / "tls", "lb.kiln.test")
    return tmp_path / "tls"


def render(env: Path, out: Path, tls_dir: Path, *extra: str | Path) -> subprocess.CompletedProcess[str]:
    return lb("render", env, out, "--web-timeout", str(WEB_TIMEOUT), "--tls-dir", tls_dir, "--haproxy", HAPROXY, *extra)


@pytest.mark.parametrize("text", [b[0] for b in BAD[:3]] + [BAD[14][0]], ids=lambda t: t.strip() or "none")
def test_render_refuses_and_writes_nothing(tmp_path: Path, tls: Path, text: str) -> None:
    out = tmp_path / "etc/haproxy.cfg"
    out.parent.mkdir()
    proc = render(write_env(tmp_path, text), out, tls)
    assert proc.returncode == 1
    assert "kiln-lb: ERROR: KILN_LB_BACKEND" in proc.stderr
    assert proc.stdout == ""
    assert list(out.parent.iterdir()) == []


def test_render_refuses_without_the_certificate(tmp_path: Path, tls: Path) -> None:
    out = tmp_path / "etc/haproxy.cfg"
    out.parent.mkdir()
    (tls / "privkey.pem").unlink()
    proc = render(write_env(tmp_path, "KILN_LB_BACKENDS=10.0.0.1\n"), out, tls)
    assert proc.returncode == 1
    assert f"cannot read the certificate file {tls}/privkey.pem" in proc.stderr
    assert list(out.parent.iterdir()) == []


@needs_haproxy
def test_render_refuses_what_haproxy_refuses(tmp_path: Path, tls: Path) -> None:
    """A DNS name that does not resolve: haproxy would not start; the old configuration stays."""
    out = tmp_path / "etc/haproxy.cfg"
    out.parent.mkdir()
    out.write_text("# the old one\n")
    proc = render(write_env(tmp_path, "KILN_LB_BACKENDS=10.0.0.1,web2.kiln.invalid\n"), out, tls)
    assert proc.returncode == 1
    assert "haproxy -c refuses the rendered configuration" in proc.stderr
    assert "'server kiln_web/web2' : could not resolve address 'web2.kiln.invalid'" in proc.stderr
    assert out.read_text() == "# the old one\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["haproxy.cfg", "kiln.pem"]


@needs_haproxy
def test_render_writes_what_haproxy_accepts_once(tmp_path: Path, tls: Path) -> None:
    """The server's own configuration (default ports, socket, every address): accepted by haproxy -c; written when
    the backends or the certificate change, else "unchanged" (the caller reloads haproxy only then)."""
    out = tmp_path / "etc/haproxy.cfg"
    out.parent.mkdir()
    env = write_env(tmp_path, "KILN_LB_BACKENDS=10.77.0.11,10.77.0.12:8443,[2001:db8::1]\n")
    pem = out.parent / "kiln.pem"
    assert render(env, out, tls).stdout == "written\n"
    proc = subprocess.run([HAPROXY, "-c", "-f", str(out)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    assert oct(pem.stat().st_mode & 0o777) == "0o600"
    assert pem.read_text() == (tls / "fullchain.pem").read_text() + (tls / "privkey.pem").read_text()
    first = out.stat().st_mtime_ns
    assert render(env, out, tls).stdout == "unchanged\n"
    assert out.stat().st_mtime_ns == first
    # a new web host: written
    env.write_text("KILN_LB_BACKENDS=10.77.0.11,10.77.0.12:8443,[2001:db8::1],10.77.0.13\n")
    assert render(env, out, tls).stdout == "written\n"
    assert "    server web4 10.77.0.13:443\n" in out.read_text()
    # a renewed certificate: written (the file haproxy reads), the configuration the same
    cfg = out.read_text()
    make_cert(tls, "lb.kiln.test")
    assert render(env, out, tls).stdout == "written\n"
    assert pem.read_text().startswith((tls / "fullchain.pem").read_text())
    assert out.read_text() == cfg
    assert render(env, out, tls).stdout == "unchanged\n"
    assert list(out.parent.glob(".*")) == []  # no temporary file left


def test_rendered_config_is_the_design(tmp_path: Path, tls: Path) -> None:
    out = tmp_path / "haproxy.cfg"
    env = write_env(tmp_path, "KILN_LB_BACKENDS=10.77.0.11,10.77.0.12\n")
    assert render(env, out, tls, "--haproxy", "true").returncode == 0
    cfg = out.read_text()
    server_timeout = WEB_TIMEOUT + 10  # nginx's proxy_read_timeout is KILN_WEB_TIMEOUT + 5 (kiln-proxy.conf)
    proxy = (PROVISION / "files/etc/nginx/snippets/kiln-proxy.conf").read_text()
    assert f"proxy_read_timeout {WEB_TIMEOUT + 5}s;" in proxy
    assert "proxy_connect_timeout 5s;" in proxy
    for line in (
        "    stats socket /run/haproxy/admin.sock mode 660 level admin",
        "    chroot /var/lib/haproxy",
        "    timeout connect 5s",
        f"    timeout server {server_timeout}s",
        f"    timeout client {server_timeout}s",
        "    bind :80",
        "    bind :::80 v6only",
        f"    bind :443 ssl crt {tmp_path}/kiln.pem alpn h2,http/1.1",
        "    http-request redirect scheme https code 301 unless { path /healthz }",
        "    http-check send meth GET uri /readyz",
        "    default-server inter 1s fall 2 rise 2 ssl verify none check",
        "    retry-on conn-failure empty-response 503",
        "    http-request disable-l7-retry unless METH_GET || METH_OPTIONS",
        "    server web1 10.77.0.11:443",
        "    server web2 10.77.0.12:443",
    ):
        assert line + "\n" in cfg, line
    # nginx's ciphers on the other roles (one TLS policy for the site, whichever host answers)
    nginx_tls = (PROVISION / "files/etc/nginx/snippets/kiln-tls.conf").read_text()
    ciphers = next(x for x in nginx_tls.splitlines() if x.startswith("ssl_ciphers ")).split()[1].rstrip(";")
    assert f"    ssl-default-bind-ciphers {ciphers}\n" in cfg
    for code in (400, 403, 408, 500, 502, 503, 504):
        assert f"    errorfile {code} /etc/haproxy/errors/{code}.http\n" in cfg


# ---- packages


def test_pkg_lb_in_the_profiles_and_step_65() -> None:
    for distro in ("debian-13", "ubuntu-24.04"):
        script = f'. "{PROVISION}/lib/common.sh"; KILN_DISTRO={distro} load_distro; printf "%s\\n" "${{PKG_LB[@]}}"'
        env = {**os.environ, "KILN_PROVISION_DIR": str(PROVISION)}
        proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True)
        assert {"haproxy", "socat"} <= set(proc.stdout.split()), (distro, proc.stdout)
    step = (PROVISION / "steps/65-lb.sh").read_text()
    assert 'apt_install "${PKG_LB[@]}"' in step
    assert "systemctl disable --no-reload -q haproxy.service" in step


def test_the_base_disk_carries_haproxy() -> None:
    """stack_packages: what packer/scripts/build-base-disk.sh preinstalls (else step 65 downloads it in the guest)."""
    assert "haproxy" in common("stack_packages").split()


# ---- a real run


class Backend:
    """An HTTPS server of this process, as a web host's nginx: /readyz (status settable), /healthz, /who (its name,
    and the forwarding headers it got); `fail` makes /who fail: "close" (the connection closed with no answer) or
    "503"."""

    def __init__(self, name: str, cert: Path, key: Path) -> None:
        self.name, self.readyz, self.fail = name, 200, ""
        self.posts = 0
        self.lock = threading.Lock()
        me = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def answer(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def who(self) -> None:
                if self.command == "POST":
                    self.rfile.read(int(self.headers.get("Content-Length", "0")))
                    with me.lock:
                        me.posts += 1
                if me.fail == "close":
                    self.close_connection = True
                    return
                status = 503 if me.fail == "503" else 200
                self.answer(
                    status,
                    {
                        "name": me.name,
                        "xff": self.headers.get_all("X-Forwarded-For") or [],
                        "xfp": self.headers.get("X-Forwarded-Proto"),
                    },
                )

            def do_GET(self) -> None:
                if self.path == "/readyz":
                    self.answer(me.readyz, {"ok": me.readyz == 200})
                elif self.path == "/healthz":
                    self.answer(200, {"name": me.name})
                elif self.path == "/who":
                    self.who()
                else:
                    self.answer(404, {})

            def do_POST(self) -> None:
                self.who()

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        # the handshake in the request's thread, not the accepting one
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True, do_handshake_on_connect=False)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Balancer:
    def __init__(self, workdir: Path, backends: list[Backend]) -> None:
        self.backends = backends
        self.http_port, self.https_port = free_port(), free_port()
        self.socket = workdir / "admin.sock"
        make_cert(workdir / "tls", "lb.kiln.test")
        items = ",".join(f"127.0.0.1:{b.port}" for b in backends)
        env = write_env(workdir, f"KILN_ROLE=lb\nKILN_LB_BACKENDS={items}\n")
        self.cfg = workdir / "haproxy.cfg"
        proc = render(
            env,
            self.cfg,
            workdir / "tls",
            "--listen",
            "127.0.0.1",
            "--http-port",
            str(self.http_port),
            "--https-port",
            str(self.https_port),
            "--socket",
            self.socket,
        )
        assert proc.stdout == "written\n", proc.stderr
        self.log = (workdir / "haproxy.log").open("w")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(self.cfg)], stdout=self.log, stderr=self.log)
        t0 = time.monotonic()
        while not self.socket.exists():  # its admin socket: haproxy is listening
            assert self.proc.poll() is None, (workdir / "haproxy.log").read_text()
            assert time.monotonic() - t0 < 10, "haproxy has no admin socket after 10 s"
            time.sleep(0.05)

    def admin(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.socket))
            s.sendall(command.encode() + b"\n")
            chunks = []
            while data := s.recv(65536):
                chunks.append(data)
        return b"".join(chunks).decode()

    def status(self) -> dict[str, str]:
        """Each server's status (UP, DOWN, DRAIN, "UP 1/2"...), from `show stat`."""
        lines = self.admin("show stat").splitlines()
        head = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(head, line.split(","), strict=False)) for line in lines[1:] if line]
        return {r["svname"]: r["status"] for r in rows if r["pxname"] == "kiln_web" and r["svname"].startswith("web")}

    def wait(self, want: dict[str, str], bound: float = 10.0) -> float:
        """Poll until the servers' status is want; the seconds it took."""
        t0 = time.monotonic()
        seen: dict[str, str] = {}
        while time.monotonic() - t0 < bound:
            assert self.proc.poll() is None, "haproxy exited"
            try:
                seen = self.status()
            except OSError:  # the socket is not there yet
                seen = {}
            if seen == want:
                return time.monotonic() - t0
            time.sleep(0.1)
        raise AssertionError(f"servers {seen}, not {want}, after {bound} s")

    def request(self, method: str = "GET", path: str = "/who", https: bool = True, **headers: str) -> tuple[int, dict]:
        if https:
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                "127.0.0.1", self.https_port, timeout=10, context=ctx
            )
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
        try:
            conn.request(method, path, body=b"x=1" if method == "POST" else None, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            try:
                data = json.loads(body) if resp.getheader("Content-Type") == "application/json" else {}
            except ValueError:
                data = {}
            return resp.status, {**data, "location": resp.getheader("Location")}
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Balancer]:
    if not Path(HAPROXY).exists():
        pytest.skip("needs haproxy (make test-tools installs it)")
    if os.geteuid() != 0:
        pytest.skip("haproxy runs as on the server: root, chrooted, as user haproxy")
    d = tmp_path_factory.mktemp("lb")
    backends = [Backend(f"web{n}", *make_cert(d / f"web{n}", f"web{n}.kiln.test")) for n in (1, 2)]
    balancer = Balancer(d, backends)
    try:
        yield balancer
    finally:
        balancer.stop()
        for b in backends:
            b.stop()


@pytest.fixture
def lbr(running: Balancer) -> Iterator[Balancer]:
    """The running balancer with both backends well and UP, before and after each test."""

    def reset() -> None:
        for b in running.backends:
            b.readyz, b.fail, b.posts = 200, "", 0
        running.admin("set server kiln_web/web1 state ready")
        running.admin("set server kiln_web/web2 state ready")
        running.wait({"web1": "UP", "web2": "UP"})

    reset()
    yield running
    reset()


def names(lbr: Balancer, n: int, **kw: str) -> list[str]:
    """The backends that answered n GETs of /who, each 200."""
    got = []
    for _ in range(n):
        status, body = lbr.request(**kw)
        assert status == 200, body
        got.append(body["name"])
    return got


def test_haproxy_runs_chrooted_as_user_haproxy(lbr: Balancer) -> None:
    status = Path(f"/proc/{lbr.proc.pid}/status").read_text()
    uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
    assert int(uid) == pwd.getpwnam("haproxy").pw_uid
    assert os.readlink(f"/proc/{lbr.proc.pid}/root") == "/var/lib/haproxy"


def test_requests_are_balanced(lbr: Balancer) -> None:
    got = names(lbr, 20)
    assert got.count("web1") >= 7 and got.count("web2") >= 7, got


def test_a_backend_not_ready_is_out_within_3s_without_errors(lbr: Balancer) -> None:
    lbr.backends[0].readyz = 503
    t0 = time.monotonic()
    failed = []
    down_after = None
    while time.monotonic() - t0 < 6.0:  # requests all along; bounded: 6 s, ~60 requests
        status, body = lbr.request()
        if status != 200:
            failed.append((status, body))
        if down_after is None and lbr.status().get("web1") == "DOWN":
            down_after = time.monotonic() - t0
            break
        time.sleep(0.05)
    assert failed == []
    assert down_after is not None and down_after <= 3.5, down_after
    print(f"web1 DOWN {down_after:.2f} s after its /readyz answered 503")
    assert set(names(lbr, 10)) == {"web2"}


def test_x_forwarded_for_is_the_clients_address(lbr: Balancer) -> None:
    for _ in range(2):  # both backends
        status, body = lbr.request(**{"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "http"})
        assert status == 200
        assert body["xff"] == ["127.0.0.1"], body
        assert body["xfp"] == "https"


def test_http_moves_to_https_but_healthz(lbr: Balancer) -> None:
    status, body = lbr.request(path="/who?a=1", https=False)
    assert status == 301
    assert body["location"] == f"https://127.0.0.1:{lbr.http_port}/who?a=1"  # the Host the client gave
    status, body = lbr.request(path="/healthz", https=False)
    assert status == 200 and body["name"] in ("web1", "web2"), body


def test_drain_sends_new_requests_to_the_other(lbr: Balancer) -> None:
    assert lbr.admin("set server kiln_web/web1 state drain").strip() == ""
    lbr.wait({"web1": "DRAIN", "web2": "UP"}, bound=2.0)
    assert set(names(lbr, 10)) == {"web2"}
    assert lbr.admin("set server kiln_web/web1 state ready").strip() == ""
    assert set(names(lbr, 10)) == {"web1", "web2"}


@pytest.mark.parametrize("fail", ["close", "503"])
def test_on_a_failing_backend_gets_are_retried_posts_not(lbr: Balancer, fail: str) -> None:
    """web1 still passes its checks but fails /who: GETs answered by web2, each; a POST sent to web1 is not sent
    again (it may have been done): the client gets the error."""
    web1, web2 = lbr.backends
    web1.fail = fail
    assert set(names(lbr, 10)) == {"web2"}
    statuses = [lbr.request("POST")[0] for _ in range(4)]
    failed = [s for s in statuses if s != 200]
    assert failed, statuses  # round robin: web1 got some of them
    assert set(failed) == {502 if fail == "close" else 503}, statuses
    assert web1.posts == len(failed), (web1.posts, statuses)
    assert web2.posts == statuses.count(200), (web2.posts, statuses)
