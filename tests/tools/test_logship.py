"""Log shipping (kiln-logship, README "Logs leave the server"), without a target:

- `kiln-logship check` and `render` on the operator's KILN_LOG_* settings: good ones render rsyslog's config (checked
  by this host's rsyslogd -N1 inside render), bad ones fail naming the key and write nothing;
- end to end with this host's rsyslog: a receiver (imtcp over TLS with a certificate this test's CA signs) on
  127.0.0.1, a sender running Kiln's rendered config (its paths moved into the test's directory): a line appended to
  an app log and a line on the journal's socket arrive, RFC 5424 with their APP-NAME; a receiver whose certificate
  names another host gets nothing (x509/name); a config with a misspelt parameter stops rsyslogd;
- step 76's drop-ins: rsyslogd runs Kiln's config, and neither it nor syslog.socket starts without it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROVISION = ROOT / "provision"
LOGSHIP = PROVISION / "files/usr/local/sbin/kiln-logship"
RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
HAVE_RSYSLOG = Path(RSYSLOGD).exists() and any(
    Path(d, "lmnsd_gtls.so").exists() for d in ("/usr/lib/x86_64-linux-gnu/rsyslog", "/usr/lib/rsyslog")
)
needs_rsyslog = pytest.mark.skipif(
    not HAVE_RSYSLOG, reason="needs rsyslog and rsyslog-gnutls (make test-tools installs them)"
)
NAME = "logs.kiln.test"


def logship(tmp: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {
        **os.environ,
        "KILN_PROVISION_DIR": str(PROVISION),
        "KILN_LOGSHIP_ETC": str(tmp / "etc"),
        "KILN_LOGSHIP_SPOOL": str(tmp / "spool"),
        "KILN_LOGSHIP_APP_LOGS": str(tmp / "applogs/*.log"),
        "KILN_LOGSHIP_JOURNAL_SOCKET": str(tmp / "journal.sock"),
        **(env or {}),
    }
    return subprocess.run(["bash", str(LOGSHIP), *args], env=full, capture_output=True, text=True, timeout=60)


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, and two server certificates it signs: one for NAME, one for another name."""
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl(
        "req", "-x509", *ec, "-days", "2", "-subj", "/CN=Kiln test CA", "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem"
    )
    for stem, name in (("good", NAME), ("other", "other.kiln.test")):
        openssl("req", *ec, "-subj", f"/CN={name}", "-keyout", f"{d}/{stem}.key", "-out", f"{d}/{stem}.csr")
        (d / f"{stem}.ext").write_text(f"subjectAltName=DNS:{name}\nextendedKeyUsage=serverAuth\n")
        sign = ["-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key", "-CAcreateserial", "-days", "2"]
        openssl(
            "x509", "-req", "-in", f"{d}/{stem}.csr", *sign, "-extfile", f"{d}/{stem}.ext", "-out", f"{d}/{stem}.pem"
        )
    return d


def write_env(tmp: Path, text: str) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    env = tmp / "overrides.env"
    env.write_text(text)
    return env


# ---- check and render


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("KILN_LOG_REMOTE=logs.example.com", "KILN_LOG_REMOTE=logs.example.com in"),
        ("KILN_LOG_REMOTE=logs.example.com:0", "the port must be 1-65535"),
        ("KILN_LOG_REMOTE=logs.example.com:65536", "the port must be 1-65535"),
        ("KILN_LOG_REMOTE=https://logs.example.com:6514", "KILN_LOG_REMOTE=https://logs.example.com:6514 in"),
        ('KILN_LOG_REMOTE="logs.example.com:6514 x"', "is not HOST:PORT"),
        ("KILN_LOG_REMOTE=192.0.2.10:6514", "KILN_LOG_REMOTE_NAME must give the name"),
        ("KILN_LOG_REMOTE=[2001:db8::1]:6514", "KILN_LOG_REMOTE_NAME must give the name"),
        (
            "KILN_LOG_REMOTE=l.example.com:6514\nKILN_LOG_REMOTE_CA=/nonexistent/ca.pem",
            "KILN_LOG_REMOTE_CA=/nonexistent",
        ),
        ("KILN_LOG_REMOTE=l.example.com:6514\nKILN_LOG_REMOTE_CA=ca.pem", "neither an absolute path nor a PEM"),
        ("KILN_LOG_REMOTE=l.example.com:6514\nKILN_LOG_REMOTE_CA=-----BEGIN CERTIFICATE-----AAAA", "cannot read it"),
        ('KILN_LOG_REMOTE=l.example.com:6514\nKILN_LOG_REMOTE_NAME=a"b', 'KILN_LOG_REMOTE_NAME=a"b in'),
        ("KILN_LOG_REMOTE_NAME=l.example.com", "KILN_LOG_REMOTE_NAME is set in"),
        (
            "KILN_LOG_REMOTE=l.example.com:6514\nKILN_LOG_REMOTE_CAFILE=/x",
            "unknown log shipping setting KILN_LOG_REMOTE_CAFILE",
        ),
    ],
)
def test_a_bad_setting_is_named_and_nothing_is_written(tmp_path: Path, line: str, key: str) -> None:
    env = write_env(tmp_path, f"ALLOWED_HOSTS=example.com\n{line}\n")
    for cmd in ("check", "render"):
        res = logship(tmp_path, cmd, str(env))
        assert res.returncode == 1, f"kiln-logship {cmd} accepted {line!r}:\n{res.stdout}{res.stderr}"
        assert key in res.stderr, f"kiln-logship {cmd}: the error does not name {key!r}:\n{res.stderr}"
    assert not (tmp_path / "etc/kiln-remote.conf").exists()


def test_without_a_receiver_shipping_is_off_and_its_files_go(tmp_path: Path) -> None:
    env = write_env(tmp_path, "ALLOWED_HOSTS=example.com\n")
    res = logship(tmp_path, "check", str(env))
    assert res.returncode == 0 and "OFF" in res.stdout, res.stderr
    (tmp_path / "etc").mkdir()
    for f in ("kiln-remote.conf", "kiln-remote-ca.pem"):
        (tmp_path / "etc" / f).write_text("left from when shipping was on\n")
    res = logship(tmp_path, "render", str(env))
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "etc").iterdir()) == []


@needs_rsyslog
def test_a_good_setting_renders_a_config_rsyslog_accepts(tmp_path: Path, pki: Path) -> None:
    # The CA as PEM on one line (as it fits in a KEY=VALUE file), to a receiver named by address.
    one_line = "".join(pki.joinpath("ca.pem").read_text().splitlines())
    env = write_env(
        tmp_path,
        f"KILN_LOG_REMOTE=[2001:db8::1]:06514\nKILN_LOG_REMOTE_NAME={NAME}\nKILN_LOG_REMOTE_CA={one_line}\n",
    )
    res = logship(tmp_path, "render", str(env))
    assert res.returncode == 0, res.stderr
    conf = (tmp_path / "etc/kiln-remote.conf").read_text()
    for want in (
        'target="2001:db8::1"',
        'port="6514"',
        f'StreamDriverPermittedPeers="{NAME}"',
        'TCP_Framing="octet-counted"',
        'StreamDriverAuthMode="x509/name"',
        f'defaultNetstreamDriverCAFile="{tmp_path}/etc/kiln-remote-ca.pem"',
        f'file="{tmp_path}/applogs/*.log"',
        'queue.maxDiskSpace="256m"',
    ):
        assert want in conf, f"{want} not in the rendered config:\n{conf}"
    assert "@" not in conf.replace("@KILN", "").split("#")[0]
    pem = (tmp_path / "etc/kiln-remote-ca.pem").read_text()
    assert pem == pki.joinpath("ca.pem").read_text(), "the one-line PEM was not put back as it was"
    # A second render changes nothing; a render without the receiver removes both files.
    again = logship(tmp_path, "render", str(env))
    assert again.returncode == 0 and "changed" not in again.stdout, again.stdout
    write_env(tmp_path, "DEBUG=0\n")
    assert logship(tmp_path, "render", str(env)).returncode == 0
    assert not any((tmp_path / "etc").iterdir())


# ---- end to end, with this host's rsyslogd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Rsyslogd:
    def __init__(self, d: Path, conf: Path) -> None:
        self.d, self.conf = d, conf
        self.log = (d / "rsyslogd.out").open("w")
        self.proc = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(conf), "-i", str(d / "rsyslogd.pid")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.log.close()

    def output(self) -> str:
        return (self.d / "rsyslogd.out").read_text()


def receiver(d: Path, pki: Path, stem: str, port: int) -> Rsyslogd:
    d.mkdir()
    conf = d / "rsyslog.conf"
    conf.write_text(f"""
global(workDirectory="{d}" defaultNetstreamDriver="gtls" defaultNetstreamDriverCAFile="{pki}/ca.pem"
       defaultNetstreamDriverCertFile="{pki}/{stem}.pem" defaultNetstreamDriverKeyFile="{pki}/{stem}.key")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="got")
template(name="raw" type="string" string="%rawmsg%\\n")
ruleset(name="got") {{ action(type="omfile" file="{d}/received.log" template="raw" flushOnTXEnd="on") }}
""")
    recv = Rsyslogd(d, conf)
    # Listening before the sender starts: a refused first connection suspends the sender's action for its
    # resumeInterval, and a test of "nothing arrives" would pass for that reason alone.
    end = time.monotonic() + 15
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return recv
        time.sleep(0.1)
    raise AssertionError(f"the receiver does not listen on 127.0.0.1:{port}:\n{recv.output()}")


def wait_for(path: Path, text: str, seconds: float) -> str:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        got = path.read_text() if path.exists() else ""
        if text in got:
            return got
        time.sleep(0.2)
    return path.read_text() if path.exists() else ""


@pytest.fixture
def shipping(tmp_path: Path, pki: Path) -> Iterator[tuple[Path, Path, list[Rsyslogd]]]:
    """A sender's moved paths, and a list the test puts its rsyslogds in (all stopped at the end)."""
    (tmp_path / "applogs").mkdir()
    started: list[Rsyslogd] = []
    yield tmp_path, pki, started
    for r in started:
        r.stop()


def start_sender(tmp: Path, pki: Path, port: int, started: list[Rsyslogd]) -> Rsyslogd:
    env = write_env(
        tmp, f"KILN_LOG_REMOTE=127.0.0.1:{port}\nKILN_LOG_REMOTE_NAME={NAME}\nKILN_LOG_REMOTE_CA={pki}/ca.pem\n"
    )
    res = logship(tmp, "render", str(env))
    assert res.returncode == 0, res.stderr
    sender = Rsyslogd(tmp, tmp / "etc/kiln-remote.conf")
    started.append(sender)
    return sender


def journal_line(tmp: Path, text: str) -> None:
    # What journald's ForwardToSyslog sends for an entry: a datagram in the BSD syslog format.
    sock_path = str(tmp / "journal.sock")
    end = time.monotonic() + 10
    while not os.path.exists(sock_path) and time.monotonic() < end:
        time.sleep(0.1)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(f"<13>{time.strftime('%b %e %H:%M:%S')} kiln-probe[4242]: {text}".encode(), sock_path)


@needs_rsyslog
def test_the_app_logs_and_the_journal_reach_the_receiver_over_tls(shipping: tuple[Path, Path, list[Rsyslogd]]) -> None:
    tmp, pki, started = shipping
    port = free_port()
    recv = receiver(tmp / "receiver", pki, "good", port)
    started.append(recv)
    # A line written before the sender starts (the history of a log when shipping is turned on) and one after.
    app_log = tmp / "applogs/web.log"
    app_log.write_text('{"level": "INFO", "message": "before-start"}\n')
    sender = start_sender(tmp, pki, port, started)
    with app_log.open("a") as f:
        f.write('{"level": "WARNING", "message": "kiln-logship-probe"}\n')
    journal_line(tmp, "journal-probe")
    got = wait_for(tmp / "receiver/received.log", "journal-probe", 30)
    got = wait_for(tmp / "receiver/received.log", "kiln-logship-probe", 5) if "kiln-logship-probe" not in got else got
    detail = f"received:\n{got}\n--- sender:\n{sender.output()}\n--- receiver:\n{recv.output()}"
    lines = got.splitlines()
    app = [ln for ln in lines if "kiln-logship-probe" in ln]
    assert app and app[0].startswith("<134>1 ") and " web - - - {" in app[0], detail  # local0.info, APP-NAME web
    assert app[0].endswith('{"level": "WARNING", "message": "kiln-logship-probe"}'), detail
    assert any("before-start" in ln for ln in lines), detail
    journal = [ln for ln in lines if "journal-probe" in ln]
    assert journal and journal[0].startswith("<13>1 ") and journal[0].endswith(" kiln-probe 4242 - - journal-probe"), (
        detail
    )


@needs_rsyslog
def test_a_receiver_whose_certificate_names_another_host_gets_nothing(
    shipping: tuple[Path, Path, list[Rsyslogd]],
) -> None:
    tmp, pki, started = shipping
    port = free_port()
    recv = receiver(tmp / "receiver", pki, "other", port)
    started.append(recv)
    (tmp / "applogs/web.log").write_text('{"message": "must-not-arrive"}\n')
    sender = start_sender(tmp, pki, port, started)
    journal_line(tmp, "must-not-arrive-either")
    got = wait_for(tmp / "receiver/received.log", "must-not-arrive", 6)
    assert "must-not-arrive" not in got, f"delivered to a receiver named other.kiln.test:\n{got}"
    assert "peer name not authorized" in wait_for(tmp / "rsyslogd.out", "peer name not authorized", 5), sender.output()
    assert sender.proc.poll() is None, f"the sender stopped:\n{sender.output()}"


@needs_rsyslog
def test_rsyslogd_refuses_to_start_on_a_config_with_an_error(tmp_path: Path, pki: Path) -> None:
    # abortOnUncleanConfig: a misspelt parameter is a failed start (a failed unit), not a daemon that ran on without
    # the action it was in (rsyslogd's default: seen running with abortOnUncleanConfig="off").
    env = write_env(tmp_path, f"KILN_LOG_REMOTE=127.0.0.1:6514\nKILN_LOG_REMOTE_NAME={NAME}\n")
    assert logship(tmp_path, "render", str(env)).returncode == 0
    conf = tmp_path / "etc/kiln-remote.conf"
    conf.write_text(conf.read_text().replace('TCP_Framing="octet-counted"', 'TCP_Framng="octet-counted"'))
    res = subprocess.run(
        [RSYSLOGD, "-n", "-f", str(conf), "-i", str(tmp_path / "pid")], capture_output=True, text=True, timeout=15
    )
    assert res.returncode != 0, f"rsyslogd ran with a broken config:\n{res.stdout}{res.stderr}"


def test_the_units_drop_ins_name_the_config_kiln_logship_writes(tmp_path: Path) -> None:
    # Step 76 renders both with render_vars: one path, common.sh's KILN_LOGSHIP_CONF, for -f and both conditions.
    script = (
        f". {PROVISION}/lib/common.sh && echo $KILN_LOGSHIP_CONF && "
        f"render_vars {PROVISION}/files/etc/systemd/system/rsyslog.service.d/kiln.conf && "
        f"render_vars {PROVISION}/files/etc/systemd/system/syslog.socket.d/kiln.conf"
    )
    res = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"}
    )
    assert res.returncode == 0, res.stderr
    conf, _, units = res.stdout.partition("\n")
    assert conf == "/etc/rsyslog.d/kiln-remote.conf", conf
    assert units.count(f"ConditionPathExists={conf}\n") == 2, units
    assert f"ExecStart=/usr/sbin/rsyslogd -n -iNONE -f {conf}\n" in units, units
