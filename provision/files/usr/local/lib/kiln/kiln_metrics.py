#!/usr/bin/env python3
"""kiln_metrics: Kiln's Prometheus textfiles for node-exporter's textfile collector (README, "Metrics").

  kiln_metrics.py rq DIR [--env FILE] [--app FILE]   the rq queues of the current release -> DIR/kiln_rq.prom
                                                     (kiln-metrics-rq.service, each minute by its timer)
  kiln_metrics.py deploy DIR ok|failed [RELEASE]     the result of a deploy, switch or rollback, and the release
                                                     current after it -> DIR/kiln_deploy.prom (kiln-release)

DIR is KILN_METRICS_DIR of lib/common.sh, given by the callers. A file is replaced whole: written to a temporary file
in DIR (a name that does not end in .prom, which the collector skips), then renamed over the old one, so a scrape
never reads half of one.

rq: the queues are the release's contract's (kiln-app.env: KILN_APP_QUEUES and every worker group's queues), read on
the queue Redis (QUEUE_URL of the instance env) in one round trip with kiln_ready's client: a queue's waiting jobs
are its list rq:queue:NAME (LLEN, rq's Queue.count), its failed jobs its FailedJobRegistry rq:failed:NAME, a sorted
set scored by expiry, counted as rq counts them (FailedJobRegistry.count drops the expired ones first: scores from 0
to now) without the write. A read that fails is an error (exit 1, one line on stderr: the journal) and the file says
so: kiln_rq_up 0, the last success kept, and no queue series, rather than the last values, which would look current,
or an empty file, which would look like an app without queues.

Standard library only (the server's python3; also 3.11, the host's tests import it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

LIB = Path(__file__).resolve().parent  # /usr/local/lib/kiln on the server, provision/files/usr/local/lib/kiln here
sys.path.insert(0, str(LIB))
import kiln_ready  # noqa: E402 - beside this file, wherever it is

RQ_FILE = "kiln_rq.prom"
DEPLOY_FILE = "kiln_deploy.prom"
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*) (\S+)$")


class MetricsError(Exception):
    pass


def label(value: str) -> str:
    """A label value in the text format: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metric(name: str, help_text: str, samples: Iterable[tuple[str, int]]) -> list[str]:
    """One gauge: its HELP and TYPE lines, then its samples (LABELS, VALUE); LABELS is "" or '{k="v"}'."""
    return [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", *(f"{name}{lb} {v}" for lb, v in samples)]


def previous(path: Path) -> dict[str, int]:
    """The unlabelled samples of an earlier file (the timestamps carried over); nothing when there is none or it does
    not parse."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m:
            with contextlib.suppress(ValueError):
                values[m.group(1)] = int(float(m.group(2)))
    return values


def write_textfile(path: Path, lines: list[str]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(tmp, 0o644)  # node-exporter reads it as its own user
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# --- rq ------------------------------------------------------------------------------------------------------------
def app_queues(app: dict[str, str | list[str]]) -> list[str]:
    """The queues of the release's contract, in its order, each once: the declared ones, then every worker group's."""
    names = ["KILN_APP_QUEUES"]
    for group in as_list(app.get("KILN_APP_WORKERS")):
        names.append(f"KILN_APP_WORKERS_{group.upper()}_QUEUES".replace("-", "_"))
    return list(dict.fromkeys(q for n in names for q in as_list(app.get(n))))


def as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else value


def read_rq(url: str, queues: list[str], now: int) -> dict[str, tuple[int, int]]:
    """{queue: (waiting jobs, failed jobs)} from the queue Redis of URL."""
    commands = []
    for q in queues:
        commands += [
            ["LLEN", f"rq:queue:{q}"],
            ["ZCOUNT", f"rq:failed:{q}", "-inf", "(0"],  # never expire (rq's failure_ttl -1)
            ["ZCOUNT", f"rq:failed:{q}", f"({now}", "+inf"],  # not expired yet
        ]
    try:
        where, answers = kiln_ready.redis_call(url, *(commands or [["PING"]]))
    except kiln_ready.NotReady as exc:
        raise MetricsError(str(exc)) from None
    if not commands:
        return {}
    counts = []
    for command, answer in zip(commands, answers, strict=True):
        if not re.fullmatch(r":\d+", answer):
            raise MetricsError(f"{where}: {' '.join(command[:2])} -> {answer!r}, not a count")
        counts.append(int(answer[1:]))
    return {q: (counts[3 * i], counts[3 * i + 1] + counts[3 * i + 2]) for i, q in enumerate(queues)}


def render_rq(counts: dict[str, tuple[int, int]] | None, last_success: int) -> list[str]:
    """The rq file: counts None = the read failed (kiln_rq_up 0, no queue series)."""
    lines = metric(
        "kiln_rq_up",
        "Whether the last read of the queue Redis succeeded (1) or failed (0: no kiln_rq_ queue series then).",
        [("", 1 if counts is not None else 0)],
    )
    lines += metric(
        "kiln_rq_last_success_timestamp_seconds",
        "When the queue Redis was last read (0: never).",
        [("", last_success)],
    )
    if counts:
        lines += metric(
            "kiln_rq_queue_jobs",
            "Jobs waiting in the rq queue (LLEN rq:queue:NAME).",
            [(f'{{queue="{label(q)}"}}', jobs) for q, (jobs, _) in counts.items()],
        )
        lines += metric(
            "kiln_rq_failed_jobs",
            "Jobs in the queue's failed job registry, not expired (rq:failed:NAME).",
            [(f'{{queue="{label(q)}"}}', failed) for q, (_, failed) in counts.items()],
        )
    return lines


def collect_rq(out_dir: Path, env_file: Path, app_file: Path) -> None:
    """Read the queues and write the rq file. A failed read raises MetricsError, the file marked (render_rq)."""
    path = out_dir / RQ_FILE
    now = int(time.time())
    try:
        try:
            url = kiln_ready.read_env(env_file).get("QUEUE_URL", "")
            queues = app_queues(kiln_ready.read_app_env(app_file))
        except OSError as exc:
            raise MetricsError(f"cannot read {exc.filename}: {exc.strerror}") from None
        if not url:
            raise MetricsError(f"no QUEUE_URL in {env_file}")
        counts = read_rq(url, queues, now)
    except MetricsError as exc:
        last = previous(path).get("kiln_rq_last_success_timestamp_seconds", 0)
        try:
            write_textfile(path, render_rq(None, last))
        except OSError as write_exc:
            raise MetricsError(f"{exc}; and cannot mark {path}: {write_exc}") from None
        raise
    write_textfile(path, render_rq(counts, now))


# --- deploys -------------------------------------------------------------------------------------------------------
def render_deploy(ok: bool, release: str, now: int, before: dict[str, int]) -> list[str]:
    success = now if ok else before.get("kiln_deploy_last_success_timestamp_seconds", 0)
    failure = before.get("kiln_deploy_last_failure_timestamp_seconds", 0) if ok else now
    lines = metric(
        "kiln_deploy_last_success_timestamp_seconds",
        "When the last kiln-release deploy, switch or rollback that succeeded finished (0: never).",
        [("", success)],
    )
    lines += metric(
        "kiln_deploy_last_failure_timestamp_seconds",
        "When the last kiln-release deploy, switch or rollback that failed finished (0: never).",
        [("", failure)],
    )
    lines += metric(
        "kiln_deploy_last_ok",
        "Whether the last kiln-release deploy, switch or rollback succeeded (1) or failed (0).",
        [("", 1 if ok else 0)],
    )
    if release:
        lines += metric(
            "kiln_release_info",
            "The release /srv/kiln/current points at (kiln-release current).",
            [(f'{{release="{label(release)}"}}', 1)],
        )
    return lines


def record_deploy(out_dir: Path, ok: bool, release: str) -> None:
    path = out_dir / DEPLOY_FILE
    write_textfile(path, render_deploy(ok, release, int(time.time()), previous(path)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kiln_metrics.py", description="Kiln's Prometheus textfiles.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    rq = sub.add_parser("rq", help=f"the rq queues of the current release -> DIR/{RQ_FILE}")
    rq.add_argument("dir", type=Path)
    rq.add_argument("--env", type=Path, default=kiln_ready.ENV_FILE, help=f"the instance env [{kiln_ready.ENV_FILE}]")
    rq.add_argument("--app", type=Path, default=kiln_ready.APP_ENV, help=f"the contract [{kiln_ready.APP_ENV}]")
    deploy = sub.add_parser("deploy", help=f"a deploy's result -> DIR/{DEPLOY_FILE}")
    deploy.add_argument("dir", type=Path)
    deploy.add_argument("result", choices=["ok", "failed"])
    deploy.add_argument("release", nargs="?", default="", help="the current release after it (none: no info series)")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "rq":
            collect_rq(args.dir, args.env, args.app)
        else:
            record_deploy(args.dir, args.result == "ok", args.release)
    except (MetricsError, OSError) as exc:
        print(f"kiln-metrics: ERROR: {args.cmd}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
