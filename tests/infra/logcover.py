"""Which rotation covers each file under /var/log: pure functions over what the target reports, and the exceptions.

A log file is covered when
  * logrotate considers it (`logrotate --debug /etc/logrotate.conf` prints "considering log PATH" for every file of
    every stanza: literal names even when absent, wildcards as they expand), or
  * supervisord rotates it itself (a program's stdout_logfile/stderr_logfile, or supervisord's own logfile, with a
    maxbytes above 0 and at least one backup), or
  * it is one of NOT_BY_LOGROTATE, each with the reason it needs no logrotate stanza.
Rotated copies (`web.log.1`, `access.log.2.gz`, `dpkg.log-20261201.xz`) count as their live file.

Used by tests/infra/test_logs.py (the VM), tests/provision/nspawn-check.sh (the container: `python3 logcover.py
FILE_LIST LOGROTATE_DEBUG SUPERVISOR_CONF...`) and tested without either by tests/tools/test_logcover.py.
"""

from __future__ import annotations

import configparser
import re
import sys
from collections.abc import Iterable
from fnmatch import fnmatchcase
from pathlib import Path

# Files under /var/log that no logrotate stanza names, and why none is needed (fnmatch patterns; `*` spans `/`).
NOT_BY_LOGROTATE = {
    "/var/log/journal/*": "journald's own files, capped by /etc/systemd/journald.conf.d/90-kiln.conf (SystemMaxUse)",
    "/var/log/audit/audit.log*": "auditd rotates it itself (auditd.conf: max_log_file_action = ROTATE, num_logs)",
    "/var/log/sysstat/sa*": "sysstat's daily files: sa2 (sysstat-summary.timer) deletes those older than HISTORY days",
    "/var/log/apt/eipp.log.xz": "apt replaces it at every install: the last solver run only",
    "/var/log/lastlog": "a table indexed by UID: its size follows the highest UID, not time",
}

CONSIDERING = re.compile(r"^considering log (\S.*?)\s*$", re.MULTILINE)
# One rotation suffix: a number (web.log.3) or logrotate's dateext (x.log-20261201, -2026120103), then a compression.
ROTATED = re.compile(r"(?:\.\d+|-\d{8}(?:\d{2})?)(?:\.(?:gz|xz|bz2|zst|lz4))?$|\.(?:gz|xz|bz2|zst|lz4)$")
SIZE = re.compile(r"^\s*(\d+)\s*(KB|MB|GB)?\s*$", re.IGNORECASE)


def rotation_base(path: str) -> str:
    """The live file a rotated copy belongs to (the path itself when it has no rotation suffix)."""
    return ROTATED.sub("", path)


def logrotate_logs(debug_output: str) -> set[str]:
    """The files logrotate looks at, from the output of `logrotate --debug CONFIG`."""
    return set(CONSIDERING.findall(debug_output))


def supervisor_bytes(value: str) -> int:
    """supervisor's byte sizes ("20MB", "50KB", "0")."""
    m = SIZE.match(value)
    if not m:
        raise ValueError(f"not a supervisor byte size: {value!r}")
    return int(m.group(1)) * {"": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[(m.group(2) or "").upper()]


def supervisor_logs(configs: Iterable[str]) -> dict[str, str]:
    """{log file: how supervisord rotates it} for supervisord's own log and every program's explicit log files.

    `configs`: the texts of supervisord.conf and its included files, in the order supervisord reads them (a later
    section of the same name adds to and overrides an earlier one, as in supervisord). A log with maxbytes 0 or no
    backup is not rotated and left out.
    """
    parser = configparser.RawConfigParser(strict=False, inline_comment_prefixes=(";",))
    for text in configs:
        parser.read_string(text)
    found: dict[str, str] = {}

    def add(path: str, maxbytes: str, backups: str, who: str) -> None:
        if path.upper() in ("", "NONE", "AUTO", "SYSLOG") or path.startswith("/dev/"):
            return
        size, keep = supervisor_bytes(maxbytes), int(backups)
        if size > 0 and keep > 0:
            found[path] = f"supervisord ({who}): at {maxbytes.strip()}, {keep} backups"

    if parser.has_section("supervisord"):
        s = parser["supervisord"]
        add(s.get("logfile", ""), s.get("logfile_maxbytes", "50MB"), s.get("logfile_backups", "10"), "its own log")
    for section in parser.sections():
        if not section.startswith("program:"):
            continue
        p, name = parser[section], section.split(":", 1)[1]
        streams = ["stdout"] if p.get("redirect_stderr", "false").lower() in ("true", "1", "yes") else []
        streams = streams or ["stdout", "stderr"]
        for n in range(int(p.get("numprocs", "1"))):
            names = {"program_name": name, "group_name": name, "process_num": n}
            for stream in streams:
                raw = p.get(f"{stream}_logfile", "AUTO")
                try:
                    path = raw % names
                except (KeyError, ValueError, TypeError):
                    path = raw
                add(
                    path,
                    p.get(f"{stream}_logfile_maxbytes", "50MB"),
                    p.get(f"{stream}_logfile_backups", "10"),
                    f"program {name}",
                )
    return found


def journald_bytes(value: str) -> int:
    """journald.conf's sizes ("200M", "1G", "512K", bytes without a suffix): powers of 1024, as journald reads them."""
    m = re.match(r"^\s*(\d+)\s*([KMGTPE]?)B?\s*$", value, re.IGNORECASE)
    if not m:
        raise ValueError(f"not a journald size: {value!r}")
    unit = m.group(2).upper()
    return int(m.group(1)) * (1024 ** ("KMGTPE".index(unit) + 1) if unit else 1)


def effective_setting(cat_config: str, key: str) -> tuple[str, str] | None:
    """(value, file) of the last `key=` in `systemd-analyze cat-config` output: the one in effect."""
    found, current = None, ""
    for line in cat_config.splitlines():
        header = re.match(r"^# (/\S+)$", line)
        if header:
            current = header.group(1)
        elif line.startswith(f"{key}="):
            found = (line.split("=", 1)[1].strip(), current)
    return found


def classify(
    files: Iterable[str],
    by_logrotate: set[str],
    by_supervisor: dict[str, str],
    exceptions: dict[str, str] = NOT_BY_LOGROTATE,
) -> dict[str, str | None]:
    """{file: what rotates it, or None when nothing does} for each file."""
    result: dict[str, str | None] = {}
    for f in files:
        base = rotation_base(f)
        how = None
        if f in by_logrotate or base in by_logrotate:
            how = "logrotate"
        elif f in by_supervisor or base in by_supervisor:
            how = by_supervisor.get(f) or by_supervisor[base]
        else:
            how = next((f"not by logrotate: {why}" for pat, why in exceptions.items() if fnmatchcase(f, pat)), None)
        result[f] = how
    return result


def report(classified: dict[str, str | None]) -> str:
    """One line per file: what rotates it, or NOT ROTATED."""
    return "\n".join(f"  {f}: {how or 'NOT ROTATED'}" for f, how in sorted(classified.items()))


def main(argv: list[str]) -> int:
    """logcover.py FILE_LIST LOGROTATE_DEBUG [SUPERVISOR_CONF...]: print the coverage; 1 when a file is not rotated."""
    if len(argv) < 2:
        print(main.__doc__, file=sys.stderr)
        return 2
    files = [ln for ln in Path(argv[0]).read_text().splitlines() if ln.strip()]
    classified = classify(
        files,
        logrotate_logs(Path(argv[1]).read_text()),
        supervisor_logs(Path(p).read_text() for p in argv[2:]),
    )
    print(report(classified))
    return 1 if None in classified.values() else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
