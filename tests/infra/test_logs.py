"""The disk never fills silently: every file under /var/log is rotated by something, the journal is capped, old
exports and releases are removed daily, and the disk check warns when a file system is nearly full; with the
operator's KILN_LOG_REMOTE the app's logs and the journal leave the server over TLS (kiln-logship), and without it
rsyslog does not run.

What rotates which file (and the files that need no logrotate stanza, each with its reason) is decided by
tests/infra/logcover.py, tested without a target by tests/tools/test_logcover.py. This suite runs last, when the
other suites have made every log they make.
"""

import re
import secrets
import shlex

from kilnlib import ENV_FILE, OVERRIDES, out, overrides_restored, sh, wait_http_ok, wait_in_guest
from logcover import (
    classify,
    effective_setting,
    journald_bytes,
    logrotate_logs,
    report,
    supervisor_logs,
)

COMMON = "/usr/local/lib/kiln/lib/common.sh"
JOURNAL_DROPIN = "/etc/systemd/journald.conf.d/90-kiln.conf"
# journald's "Disk space used by the journal" message (SD_MESSAGE_JOURNAL_USAGE), logged when it opens the persistent
# journal at boot; its MAX_USE= field is the limit journald applies, in bytes.
JOURNAL_USAGE_ID = "ec387f577b844b8fa948f33cad9a75e6"
# A syslog-over-TLS receiver for the shipping test: appends what it receives, raw (octet-counted frames), to a file.
LISTENER = r"""
import pathlib, socket, ssl, sys
cert, key, got, port_file = sys.argv[1:]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = socket.create_server(("127.0.0.1", 0))
pathlib.Path(port_file).write_text(str(srv.getsockname()[1]))
with open(got, "ab", buffering=0) as out:
    while True:
        conn, _ = srv.accept()
        try:
            with ctx.wrap_socket(conn, server_side=True) as c:
                while chunk := c.recv(65536):
                    out.write(chunk)
        except (OSError, ssl.SSLError):
            pass
"""


def octet_counted(stream: bytes) -> list[str] | None:
    """RFC 5425's frames ("LEN SP MSG", LEN in bytes) of a stream, or None where it is not made of them."""
    frames, i = [], 0
    while i < len(stream):
        m = re.compile(rb"([1-9][0-9]*) ").match(stream, i)
        if not m:
            return None
        end = m.end() + int(m.group(1))
        if end > len(stream):
            return None
        frames.append(stream[m.end() : end].decode(errors="replace"))
        i = end
    return frames


def test_logs_leave_the_server_over_tls_only_when_the_operator_names_a_receiver(host):
    # First in this module: the coverage test below then sees any file rsyslog would have written under /var/log.
    off = "! systemctl is-enabled -q rsyslog.service && ! systemctl is-active -q rsyslog.service syslog.socket"
    assert host.run(off).rc == 0, (
        f"rsyslog runs without KILN_LOG_REMOTE:\n{host.run('systemctl status rsyslog').stdout}"
    )
    d = out(host, "mktemp -d /run/kiln-logship-test.XXXXXX")
    env_before = out(host, f"cat {ENV_FILE}")
    mark = secrets.token_hex(6)
    with overrides_restored(host, always=True):
        try:
            # A CA and the receiver's certificate for logs.kiln.test; the receiver on a free port of 127.0.0.1.
            ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
            sh(
                host,
                f"cd {d} && openssl req -x509 {ec} -days 1 -subj /CN=kiln-test-ca -keyout ca.key -out ca.pem"
                " 2>/dev/null"
                f" && openssl req -x509 {ec} -days 1 -subj /CN=logs.kiln.test -addext subjectAltName=DNS:logs.kiln.test"
                " -CA ca.pem -CAkey ca.key -keyout srv.key -out srv.pem 2>/dev/null",
            )
            sh(
                host,
                f"printf '%s' {shlex.quote(LISTENER)} >{d}/listener.py && cd {d} && "
                "setsid nohup python3 listener.py srv.pem srv.key got port </dev/null >listener.log 2>&1 &"
                " echo $! >pid",
            )
            wait_in_guest(host, f"test -s {d}/port", 60, "the test's TLS receiver")
            port = out(host, f"cat {d}/port")
            # A bad receiver is refused before anything changes, naming the key.
            sh(host, f"echo KILN_LOG_REMOTE=127.0.0.1 >>{OVERRIDES}")
            res = sh(host, "kiln-firstboot --check", ok=None, timeout=600)
            refused = res.rc != 0 and "KILN_LOG_REMOTE=127.0.0.1 in" in res.stderr
            assert refused, f"rc={res.rc}\n{res.stdout}{res.stderr}"
            assert out(host, f"cat {ENV_FILE}") == env_before
            sh(
                host,
                f"sed -i 's/^KILN_LOG_REMOTE=.*/KILN_LOG_REMOTE=127.0.0.1:{port}/' {OVERRIDES} && printf '%s\\n' "
                f"KILN_LOG_REMOTE_NAME=logs.kiln.test KILN_LOG_REMOTE_CA={d}/ca.pem >>{OVERRIDES}",
            )
            sh(host, "kiln-firstboot --reconfigure", timeout=600)
            state = out(host, "systemctl is-enabled rsyslog.service; systemctl is-active rsyslog.service")
            assert state == "enabled\nactive", state
            # An app line (Django's warning for a 404, JSON in /var/log/kiln/web.log) and a journal line.
            wait_http_ok(host, "/readyz", timeout=120)
            sh(
                host,
                f"curl -sk -o /dev/null https://127.0.0.1/kiln-logship-{mark} && logger -t kiln-probe journal-{mark}",
            )
            evidence = lambda: host.run(f"cat -v {d}/got; journalctl -u rsyslog --no-pager -n 20").stdout  # noqa: E731
            wait_in_guest(
                host,
                f"grep -q kiln-logship-{mark} {d}/got && grep -q journal-{mark} {d}/got",
                60,
                "both lines at the receiver",
                evidence=evidence,
            )
            got = out(host, f"cat {d}/got")
            frames = octet_counted(got.encode())
            assert frames is not None, f"the stream is not octet-counted frames (RFC 5425):\n{got}"
            app = [f for f in frames if f"kiln-logship-{mark}" in f]
            assert app and re.match(r"<\d+>1 \S+ \S+ web \S+ - - \{", app[0]), f"the app's line, RFC 5424:\n{frames}"
            assert any(re.match(rf"<\d+>1 \S+ \S+ kiln-probe \S+ - - journal-{mark}$", f) for f in frames), frames
        finally:
            host.run(f"kill $(cat {d}/pid); rm -rf {d}")
    # Removed again: rsyslog stopped and disabled, its config gone.
    assert host.run(off).rc == 0, host.run("systemctl status rsyslog syslog.socket").stdout
    assert not host.file("/etc/rsyslog.d/kiln-remote.conf").exists


def test_every_log_file_is_rotated(host):
    files = out(host, "find /var/log -type f | LC_ALL=C sort").splitlines()
    assert "/var/log/kiln/web.log" in files, f"the listing of /var/log missed /var/log/kiln:\n{files}"
    res = host.run("logrotate --debug /etc/logrotate.conf 2>&1")
    errors = [ln for ln in res.stdout.splitlines() if ln.startswith("error:")]
    shown = "\n".join(errors or res.stdout.splitlines()[-30:])
    assert res.rc == 0 and not errors, f"logrotate --debug /etc/logrotate.conf: rc={res.rc}\n{shown}"
    confs = ["/etc/supervisor/supervisord.conf", *out(host, "ls /etc/supervisor/conf.d/*.conf").split()]
    by_supervisor = supervisor_logs(host.file(c).content_string for c in confs)
    result = classify(files, logrotate_logs(res.stdout), by_supervisor)
    missing = [f for f, how in result.items() if how is None]
    assert not missing, (
        f"{len(missing)} file(s) under /var/log that nothing rotates: {missing}\n"
        f"(a new one needs a logrotate stanza, or an entry with its reason in logcover.NOT_BY_LOGROTATE)\n"
        f"--- every file ---\n{report(result)}"
    )


def test_logs_outside_logrotate_bound_themselves(host):
    # The reasons logcover.NOT_BY_LOGROTATE gives for auditd's and sysstat's files, checked on the target.
    audit = dict(
        (k.strip().lower(), v.strip())
        for k, _, v in (ln.partition("=") for ln in out(host, "cat /etc/audit/auditd.conf").splitlines())
        if not k.lstrip().startswith("#") and v
    )
    assert audit.get("max_log_file_action", "").upper() == "ROTATE" and int(audit.get("num_logs", "0")) >= 2, (
        f"auditd.conf: max_log_file_action={audit.get('max_log_file_action')!r}, num_logs={audit.get('num_logs')!r}"
    )
    sysstat = out(host, "cat /etc/sysstat/sysstat")
    history = re.search(r"^HISTORY=(\d+)", sysstat, re.MULTILINE)
    assert history and int(history.group(1)) >= 1, f"/etc/sysstat/sysstat has no HISTORY=:\n{sysstat}"
    state = host.run("systemctl is-enabled sysstat-summary.timer").stdout.strip()
    assert state == "enabled", f"sysstat-summary.timer (sa2, which deletes old files) is {state!r}"


def test_journal_is_capped(host):
    cfg = out(host, "systemd-analyze cat-config systemd/journald.conf")
    effective = effective_setting(cfg, "SystemMaxUse")
    assert effective and effective[1] == JOURNAL_DROPIN, (
        f"the SystemMaxUse= in effect is {effective} (value, file), not Kiln's {JOURNAL_DROPIN}:\n{cfg}"
    )
    cap = journald_bytes(effective[0])
    applied = out(
        host,
        f"journalctl -b -o export MESSAGE_ID={JOURNAL_USAGE_ID} 'JOURNAL_NAME=System Journal' "
        "| sed -n 's/^MAX_USE=//p' | tail -n 1",
    )
    evidence = out(host, "journalctl -b -u systemd-journald --no-pager -o cat | tail -n 20")
    assert applied == str(cap), (
        f"journald of this boot applies MAX_USE={applied or '(no usage message)'} to the system journal, "
        f"not SystemMaxUse={effective[0]} ({cap} bytes)\n--- journald ---\n{evidence}"
    )


def test_retention_timer_is_active(host):
    state = out(host, "systemctl is-enabled kiln-retention.timer; systemctl is-active kiln-retention.timer", ok=None)
    assert state.split() == ["enabled", "active"], (
        f"kiln-retention.timer: {state.split()}\n{host.run('systemctl status --no-pager kiln-retention.timer').stdout}"
    )


def test_disk_check_reports_the_root_file_system(host):
    res = host.run(f"bash -c '. {COMMON} && disk_check' 2>&1")
    assert res.rc == 0 and re.search(r"^\s*(WARNING: )?disk / \(\S+\): \d+% used, ", res.stdout, re.MULTILINE), (
        f"disk_check: rc={res.rc}\n{res.stdout}"
    )


def test_disk_check_warns_when_a_file_system_is_nearly_full(host):
    # A small tmpfs filled to just above and then well below the threshold (read from common.sh on the target).
    limit = int(out(host, f"bash -c '. {COMMON} && echo $KILN_DISK_WARN_PCT'"))
    size_kib = 1024
    mnt = out(host, "mktemp -d /run/kiln-disk-test.XXXXXX")
    try:
        sh(host, f"mount -t tmpfs -o size={size_kib}k kiln-disk {mnt}")
        seen = {}
        for percent in (min(99, limit + 5), max(0, limit - 30)):
            fill = size_kib * percent // 100 // 4 * 4 * 1024
            res = host.run(f"head -c {fill} /dev/zero >{mnt}/fill && bash -c '. {COMMON} && disk_check {mnt}' 2>&1")
            m = re.search(rf"disk {re.escape(mnt)} \(kiln-disk\): (\d+)% used", res.stdout)
            assert res.rc == 0 and m, f"disk_check {mnt} ({percent} % filled): rc={res.rc}\n{res.stdout}"
            seen[int(m.group(1))] = "WARNING" in res.stdout
    finally:
        host.run(f"umount {mnt}; rmdir {mnt}")
    assert seen == {p: p >= limit for p in seen} and any(seen.values()) and not all(seen.values()), (
        f"disk_check at {limit} %: warned {seen} (used % -> warned)"
    )
