"""tests/infra/logcover.py without a target: which rotation covers each file under /var/log.

The inputs are what a Debian 13 server reports (logrotate 3.22's --debug output, supervisord.conf as Debian ships
it) and Kiln's own supervisor config from provision/, so a program log that loses its rotation fails here first.
"""

from __future__ import annotations

from kilntest import ROOT, load

logcover = load("logcover", ROOT / "tests" / "infra" / "logcover.py")

# logrotate --debug /etc/logrotate.conf, abridged: a stanza of three names on three lines, a wildcard that expanded,
# a literal name that does not exist (still "considered").
LOGROTATE_DEBUG = """\
warning: logrotate in debug mode does nothing except printing debug messages!

reading config file /etc/logrotate.conf
including /etc/logrotate.d
reading config file nginx
reading config file unattended-upgrades
Handling 3 logs

rotating pattern: /var/log/nginx/*.log  after 1 days (14 rotations)
empty log files are not rotated, old logs are removed
considering log /var/log/nginx/access.log
  log does not need rotating (log has been rotated at 2026-12-04 00:00, which is less than a day ago)
considering log /var/log/nginx/error.log
  log does not need rotating (log has been rotated at 2026-12-04 00:00, which is less than a day ago)

rotating pattern: /var/log/unattended-upgrades/unattended-upgrades.log
/var/log/unattended-upgrades/unattended-upgrades-dpkg.log
/var/log/unattended-upgrades/unattended-upgrades-shutdown.log
  monthly (6 rotations)
considering log /var/log/unattended-upgrades/unattended-upgrades.log
considering log /var/log/unattended-upgrades/unattended-upgrades-dpkg.log
considering log /var/log/unattended-upgrades/unattended-upgrades-shutdown.log
  log /var/log/unattended-upgrades/unattended-upgrades-shutdown.log does not exist -- skipping

rotating pattern: /var/log/dpkg.log  monthly (12 rotations)
considering log /var/log/dpkg.log
"""

DEBIAN_SUPERVISORD_CONF = """\
[unix_http_server]
file=/var/run/supervisor.sock   ; (the path to the socket file)

[supervisord]
logfile=/var/log/supervisor/supervisord.log ; (main log file;default $CWD/supervisord.log)
pidfile=/var/run/supervisord.pid ; (supervisord pidfile;default supervisord.pid)
childlogdir=/var/log/supervisor            ; ('AUTO' child log dir, default $TEMP)

[include]
files = /etc/supervisor/conf.d/*.conf
"""
# Kiln's own programs, then the reference app's worker groups as kiln-release renders them from its contract.
kiln_app = load("kiln_app", ROOT / "provision" / "files" / "usr" / "local" / "lib" / "kiln" / "kiln_app.py")
KILN_SUPERVISOR_CONF = (ROOT / "provision" / "files" / "etc" / "supervisor" / "conf.d" / "kiln.conf").read_text() + (
    kiln_app.render(kiln_app.load(ROOT / "app", ((3, 13), "test")))["supervisor/kiln-workers.conf"]
)

FILES = [
    "/var/log/nginx/access.log",
    "/var/log/nginx/access.log.1",
    "/var/log/nginx/access.log.2.gz",
    "/var/log/dpkg.log-20261201.xz",
    "/var/log/unattended-upgrades/unattended-upgrades-dpkg.log",
    "/var/log/kiln/web.log",
    "/var/log/kiln/web.log.5",
    "/var/log/kiln/worker-default-0.log",
    "/var/log/kiln/worker-default-1.log.2",
    "/var/log/supervisor/supervisord.log",
    "/var/log/supervisor/supervisord.log.1",
    "/var/log/journal/0123abcd/system@0006-0001.journal~",
    "/var/log/audit/audit.log.3",
    "/var/log/sysstat/sa05",
    "/var/log/apt/eipp.log.xz",
    "/var/log/lastlog",
]


def classified(files=FILES, supervisor=(DEBIAN_SUPERVISORD_CONF, KILN_SUPERVISOR_CONF)):
    return logcover.classify(files, logcover.logrotate_logs(LOGROTATE_DEBUG), logcover.supervisor_logs(supervisor))


def test_logcover_every_file_of_a_kiln_server_is_covered():
    result = classified()
    assert None not in result.values(), logcover.report(result)
    assert result["/var/log/nginx/access.log.2.gz"] == "logrotate"
    assert result["/var/log/kiln/worker-default-1.log.2"].startswith("supervisord (program kiln-worker-default)"), (
        result
    )
    assert result["/var/log/journal/0123abcd/system@0006-0001.journal~"].startswith("not by logrotate: journald")


def test_logcover_names_a_log_nothing_rotates():
    strays = ["/var/log/kiln/debug.log", "/var/log/nginx/access.log.old-copy", "/var/log/installer/syslog"]
    result = classified(FILES + strays)
    assert [f for f, how in result.items() if how is None] == strays, logcover.report(result)


def test_logcover_a_program_log_without_rotation_is_not_covered():
    # stdout_logfile_maxbytes=0 switches supervisor's rotation off: the log grows forever.
    unrotated = KILN_SUPERVISOR_CONF.replace("stdout_logfile_maxbytes=20MB", "stdout_logfile_maxbytes=0")
    result = classified(supervisor=(DEBIAN_SUPERVISORD_CONF, unrotated))
    assert result["/var/log/kiln/web.log"] is None, logcover.report(result)
    assert result["/var/log/kiln/worker-default-0.log"] is None, logcover.report(result)


def test_logcover_supervisord_limits_set_in_an_included_file_apply():
    # Kiln's conf.d file sets supervisord's own log limits; supervisord reads its [supervisord] section after Debian's.
    log = "/var/log/supervisor/supervisord.log"
    own = logcover.supervisor_logs([DEBIAN_SUPERVISORD_CONF, KILN_SUPERVISOR_CONF])[log]
    debian = logcover.supervisor_logs([DEBIAN_SUPERVISORD_CONF])[log]
    assert debian == "supervisord (its own log): at 50MB, 10 backups"
    assert own != debian, own


def test_logcover_journald_sizes_and_the_setting_in_effect():
    assert logcover.journald_bytes("200M") == 200 * 1024**2 and logcover.journald_bytes("4096") == 4096
    cat_config = (
        "# /etc/systemd/journald.conf\n[Journal]\nSystemMaxUse=1G\n\n# /etc/x.conf.d/90-kiln.conf\nSystemMaxUse=200M\n"
    )
    assert logcover.effective_setting(cat_config, "SystemMaxUse") == ("200M", "/etc/x.conf.d/90-kiln.conf")


def test_logcover_rotation_base():
    assert logcover.rotation_base("/var/log/kiln/worker-1.log.12") == "/var/log/kiln/worker-1.log"
    assert logcover.rotation_base("/var/log/dpkg.log-2026120103.gz") == "/var/log/dpkg.log"
    assert logcover.rotation_base("/var/log/sysstat/sa05") == "/var/log/sysstat/sa05"
    assert logcover.rotation_base("/var/log/kiln/worker-0.log") == "/var/log/kiln/worker-0.log"
