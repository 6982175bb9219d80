#!/usr/bin/env python3
"""kiln-backup's helper (the system python3, standard library only): what is easier and safer in Python than in bash.

  config ENVFILE            check the backup settings in the instance env; print them as shell assignments (quoted)
  dbconf ENVFILE OUT SOCK   write a MariaDB/MySQL client option file (0600) for the app's DATABASE_URL: the local
                            server as root over its unix socket (SOCK unless the URL names one), any other host with
                            the URL's user and password and its TLS options (kiln_ready.database_url: an unknown
                            option is an error); print DB_NAME=... and DB_LOCAL=1|0 assignments
  redis ENVFILE KEY         host, port, db and password of the Redis URL KEY (CACHE_URL), then redis-cli's options
                            for its user and TLS (kiln_ready.redis_url), one per line
  scan DUMP MANIFEST        copy stdin (a mariadb-dump) to DUMP and write MANIFEST: the tables and their rows as the
                            dump holds them, the applied migrations (django_migrations' rows in the dump), the
                            dump's size, sha256 and whether it ends with the "-- Dump completed" trailer
  media DIR                 {"files": N, "bytes": N} of the regular files under DIR (JSON)
  lsmedia DIR               the same from `restic ls --json` on stdin (what the snapshot lists under DIR)
  compare MANIFEST TABLES MIGRATIONS MEDIA_WANT MEDIA_GOT
                            the restored copy against the manifest: TABLES is "name<TAB>rows" lines, MIGRATIONS
                            "app<TAB>name" lines, MEDIA_WANT and MEDIA_GOT {"files", "bytes"} files (the snapshot's
                            listing, the restored files) or "-"; every difference is printed, exit 1 when there is one
  status KIND STATUS_DIR METRICS_FILE  (KIND backup|restore-test; the result as JSON on stdin: ok, seconds,
                            snapshot, error, backups) write STATUS_DIR/KIND.json (ok, finished_at, seconds, snapshot,
                            error, backups, last_success_at) and the Prometheus textfile METRICS_FILE from both kinds
Row counts come from the dump itself, not from a query beside it: the dump is one consistent transaction
(--single-transaction), a COUNT(*) next to it would not be, and the restore test compares against what the dump holds.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import shlex
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kiln_ready  # beside this file: its reading of DATABASE_URL and the Redis URLs, the one Kiln has

# The backup settings an operator may give (README, "Backups and disaster recovery"), with their defaults.
DEFAULTS = {
    "KILN_BACKUP_REPOSITORY": "",
    "KILN_BACKUP_PASSWORD": "",
    "KILN_BACKUP_AWS_ACCESS_KEY_ID": "",
    "KILN_BACKUP_AWS_SECRET_ACCESS_KEY": "",
    "KILN_BACKUP_AWS_DEFAULT_REGION": "",
    "KILN_BACKUP_KEEP_DAILY": "7",
    "KILN_BACKUP_KEEP_WEEKLY": "4",
    "KILN_BACKUP_KEEP_MONTHLY": "6",
}
KEEP = ("KILN_BACKUP_KEEP_DAILY", "KILN_BACKUP_KEEP_WEEKLY", "KILN_BACKUP_KEEP_MONTHLY")
TRAILER = b"-- Dump completed"
KINDS = ("backup", "restore-test")


class Problem(Exception):
    pass


def read_env(path: str) -> dict[str, str]:
    """KEY=VALUE lines as kiln-firstboot writes them (the last assignment wins, one layer of quotes removed)."""
    env: dict[str, str] = {}
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise Problem(f"cannot read the instance env {path}: {exc.strerror}") from exc
    for line in text.splitlines():
        m = re.match(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if not m:
            continue
        value = m.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        env[m.group(1)] = value
    return env


def config(envfile: str) -> list[str]:
    """The backup settings as shell assignments. A KILN_BACKUP_* key that is not one of them, or a KILN_ key that
    looks like a misspelt one, is a problem named with its likely meaning; all problems are raised together."""
    env = read_env(envfile)
    problems = []
    for key in env:
        if key in DEFAULTS:
            continue
        close = difflib.get_close_matches(key, DEFAULTS, n=1, cutoff=0.85)
        if key.startswith("KILN_BACKUP_") or (key.startswith("KILN_") and close):
            hint = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(DEFAULTS)})"
            problems.append(f"unknown backup setting {key} in {envfile}{hint}")
    cfg = {k: env.get(k, d) or d for k, d in DEFAULTS.items()}
    for key in KEEP:
        if not re.fullmatch(r"[0-9]+", cfg[key]):
            problems.append(f"{key}={cfg[key]} in {envfile} is not a whole number (a count of snapshots to keep)")
    if not problems and sum(int(cfg[k]) for k in KEEP) == 0:
        problems.append(f"{', '.join(KEEP)} are all 0 in {envfile}: retention would delete every snapshot")
    repo = cfg["KILN_BACKUP_REPOSITORY"]
    state, reason = "ON", ""
    if not repo and not cfg["KILN_BACKUP_PASSWORD"]:
        state, reason = "OFF", f"no KILN_BACKUP_REPOSITORY and no KILN_BACKUP_PASSWORD in {envfile}"
    elif not repo:
        state, reason = "OFF", f"KILN_BACKUP_PASSWORD is set but KILN_BACKUP_REPOSITORY is not, in {envfile}"
    elif not cfg["KILN_BACKUP_PASSWORD"]:
        state, reason = (
            "OFF",
            (
                f"KILN_BACKUP_REPOSITORY is set but KILN_BACKUP_PASSWORD is not, in {envfile}: the repository's "
                "password is the operator's (kept off the server too), never one made here"
            ),
        )
    elif repo.startswith("s3:"):
        # The app's AWS_* (its media bucket) serve when the backup has no keys of its own.
        for own, app in (
            ("KILN_BACKUP_AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
            ("KILN_BACKUP_AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"),
        ):
            cfg[own] = cfg[own] or env.get(app, "")
            if not cfg[own]:
                problems.append(f"KILN_BACKUP_REPOSITORY={repo} is on S3 but neither {own} nor {app} is in {envfile}")
        if not re.fullmatch(r"s3:(https?://)?[^/\s]+/[^\s]+", repo):
            problems.append(f"KILN_BACKUP_REPOSITORY={repo} in {envfile} is not s3:HOST/BUCKET[/PATH]")
    elif not repo.startswith("/"):
        problems.append(
            f"KILN_BACKUP_REPOSITORY={repo} in {envfile} is neither s3:HOST/BUCKET[/PATH] nor an absolute path"
        )
    cfg["KILN_BACKUP_STATE"] = state
    cfg["KILN_BACKUP_OFF_REASON"] = reason
    cfg["KILN_BACKUP_MEDIA_ROOT"] = "" if env.get("AWS_STORAGE_BUCKET_NAME") else env.get("MEDIA_ROOT", "")
    cfg["KILN_BACKUP_MEDIA_BUCKET"] = env.get("AWS_STORAGE_BUCKET_NAME", "")
    if problems:
        raise Problem("\n".join(problems))
    return [f"{k}={shlex.quote(v)}" for k, v in cfg.items()]


def dbconf(envfile: str, out: str, socket: str) -> list[str]:
    env = read_env(envfile)
    if not env.get("DATABASE_URL"):
        raise Problem(f"no DATABASE_URL in {envfile} (first boot has not run?)")
    try:
        db = kiln_ready.database_url(env["DATABASE_URL"])
    except kiln_ready.URLError as exc:
        raise Problem(f"{exc} (in {envfile})") from None
    if not re.fullmatch(r"[A-Za-z0-9_$]+", db.database):
        raise Problem(f"DATABASE_URL in {envfile} names the database {db.database!r}: not a plain name")
    local = (db.host or "localhost") in ("localhost", "127.0.0.1", "::1")
    if local:
        # The local server: root over its unix socket (unix_socket authentication, no password anywhere), so the
        # dump holds every trigger and routine and a restore may drop and create the database. No TLS on a socket.
        options: dict[str, str | None] = {"user": "root", "socket": db.socket or socket}
    else:
        options = db.client_options()
    try:
        text = kiln_ready.option_file(options)
    except kiln_ready.URLError as exc:
        raise Problem(f"DATABASE_URL in {envfile}: {exc}") from None
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return [f"DB_NAME={shlex.quote(db.database)}", f"DB_LOCAL={int(local)}"]


def redis(envfile: str, key: str) -> list[str]:
    """host, port, db, password, then redis-cli's options for the URL's user and TLS (one a line: --tls, --cacert,
    FILE...)."""
    url = read_env(envfile).get(key, "")
    if not url:
        raise Problem(f"no {key} in {envfile}")
    try:
        r = kiln_ready.redis_url(url, key)
    except kiln_ready.URLError as exc:
        raise Problem(f"{exc} (in {envfile})") from None
    args = ["--user", r.username] if r.username else []
    args += r.tls.cli_args(r.host) if r.tls else []
    if any("\n" in a for a in [r.password, *args]):
        raise Problem(f"{key} in {envfile}: a newline in its password or an option (kiln-backup reads lines)")
    return [r.host, str(r.port), r.db, r.password, *args]


# --- the dump ---------------------------------------------------------------------------------------------------

# A value list of mariadb-dump's INSERTs: quoted strings (backslash escapes; newlines are escaped, so a statement is
# one line), parentheses, commas, and bare words (numbers, NULL, 0x... of --hex-blob).
TOKEN = re.compile(rb"'(?:[^'\\]|\\.)*'|[(),]|[^'(),]+", re.S)
ESCAPES = {b"0": b"\0", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"Z": b"\x1a", b"b": b"\b"}
INSERT = re.compile(rb"INSERT INTO `((?:[^`]|``)+)` (?:\([^)]*\) )?VALUES\s")


def unquote_sql(tok: bytes) -> str:
    body = tok[1:-1]
    return re.sub(rb"\\(.)", lambda m: ESCAPES.get(m.group(1), m.group(1)), body, flags=re.S).decode(
        "utf-8", "surrogateescape"
    )


class Rows:
    """The row tuples of one INSERT statement, fed line by line: mariadb-dump writes an INSERT on one line or (10.11+)
    one tuple per line; a quoted string never spans lines (newlines in data are escaped)."""

    def __init__(self, want_fields: bool):
        self.want_fields = want_fields
        self.depth = 0
        self.fields: list[bytes] = []
        self.cur = b""
        self.rows: list[list[bytes] | None] = []

    def feed(self, chunk: bytes) -> bool:
        """Parse a piece of the statement; True when the statement ended (its ';' outside any tuple)."""
        for m in TOKEN.finditer(chunk):
            t = m.group(0)
            if t == b"(":
                self.depth += 1
                if self.depth == 1:
                    self.fields, self.cur = [], b""
                elif self.want_fields:
                    self.cur += t
            elif t == b")":
                self.depth -= 1
                if self.depth < 0:
                    raise Problem("unbalanced parentheses in an INSERT of the dump")
                if self.depth == 0:
                    if self.want_fields:
                        self.fields.append(self.cur.strip())
                    self.rows.append(self.fields if self.want_fields else None)
                elif self.want_fields:
                    self.cur += t
            elif self.depth >= 1:
                if self.want_fields:
                    if t == b"," and self.depth == 1:
                        self.fields.append(self.cur.strip())
                        self.cur = b""
                    else:
                        self.cur += t
            elif b";" in t:
                return True
        return False


ROUTINE = re.compile(rb"CREATE\b.*\b(?:PROCEDURE|FUNCTION)\s+`")


def scan(dump_path: str, manifest_path: str) -> None:
    tables: dict[str, int] = {}
    views: set[str] = set()
    migrations: list[list[str]] = []
    routines = 0
    sha = hashlib.sha256()
    size = 0
    last = b""
    mig_cols: list[str] | None = None
    current_create: str | None = None
    insert: tuple[str, Rows] | None = None

    def rows_done(name: str, rows: Rows) -> None:
        tables[name] = tables.get(name, 0) + len(rows.rows)
        if rows.want_fields:
            cols = mig_cols or ["id", "app", "name", "applied"]
            for fields in rows.rows:
                row = dict(zip(cols, fields, strict=False))
                migrations.append([unquote_sql(row["app"]), unquote_sql(row["name"])])

    fd = os.open(dump_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        for line in sys.stdin.buffer:
            out.write(line)
            sha.update(line)
            size += len(line)
            if line.strip():
                last = line
            if insert:
                if insert[1].feed(line):
                    rows_done(*insert)
                    insert = None
            elif line.startswith(b"INSERT INTO `"):
                m = INSERT.match(line)
                if not m:
                    raise Problem(f"an INSERT the scanner cannot read: {line[:120]!r}")
                name = m.group(1).replace(b"``", b"`").decode()
                rows = Rows(want_fields=name == "django_migrations")
                if rows.feed(line[m.end() :]):
                    rows_done(name, rows)
                else:
                    insert = (name, rows)
            elif line.startswith(b"CREATE TABLE `"):
                name = line.split(b"`")[1].decode()
                current_create = name
                tables.setdefault(name, 0)
                if name == "django_migrations":
                    mig_cols = []
            elif current_create == "django_migrations" and mig_cols is not None and line.startswith(b"  `"):
                mig_cols.append(line.split(b"`")[1].decode())
            elif line.startswith(b")"):
                current_create = None
            elif line.startswith(b"-- Temporary table structure for view `"):
                views.add(line.split(b"`")[1].decode())
            elif ROUTINE.match(line):
                routines += 1
    if insert:
        rows_done(*insert)  # a dump cut inside an INSERT: counted as far as it goes (the trailer is missing anyway)
    for v in views:
        tables.pop(v, None)
    manifest = {
        "format": 1,
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "dump": {
            "file": os.path.basename(dump_path),
            "bytes": size,
            "sha256": sha.hexdigest(),
            "completed": last.startswith(TRAILER),
        },
        "tables": dict(sorted(tables.items())),
        "views": sorted(views),
        "routines": routines,
        "migrations": sorted(migrations),
    }
    write_json(manifest_path, manifest)


def media(root: str) -> dict[str, int]:
    files = size = 0
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            if os.path.isfile(p) and not os.path.islink(p):
                files += 1
                size += os.path.getsize(p)
    return {"files": files, "bytes": size}


def lsmedia(root: str) -> dict[str, int]:
    """{"files", "bytes"} of the regular files under root in `restic ls --json` output (stdin)."""
    prefix = root.rstrip("/") + "/"
    files = size = 0
    for line in sys.stdin:
        e = json.loads(line)
        if e.get("struct_type") == "node" and e.get("type") == "file" and e["path"].startswith(prefix):
            files += 1
            size += e.get("size", 0)
    return {"files": files, "bytes": size}


def compare(manifest_path: str, tables_tsv: str, migrations_tsv: str, media_want: str, media_got: str) -> list[str]:
    m = json.loads(Path(manifest_path).read_text())
    want = m["tables"]
    got = {}
    for line in Path(tables_tsv).read_text().splitlines():
        if line.strip():
            name, rows = line.split("\t")
            got[name] = int(rows)
    problems = []
    for name in sorted(set(want) | set(got)):
        if name not in got:
            problems.append(f"table {name}: in the manifest ({want[name]} rows), missing from the restored copy")
        elif name not in want:
            problems.append(f"table {name}: in the restored copy ({got[name]} rows), not in the manifest")
        elif want[name] != got[name]:
            problems.append(f"table {name}: {got[name]} rows restored, the manifest says {want[name]}")
    restored_migs = sorted(line.split("\t") for line in Path(migrations_tsv).read_text().splitlines() if line.strip())
    want_migs = sorted(m["migrations"])
    if restored_migs != want_migs:
        missing = [f"{a}.{n}" for a, n in want_migs if [a, n] not in restored_migs]
        extra = [f"{a}.{n}" for a, n in restored_migs if [a, n] not in want_migs]
        problems.append(
            f"migrations differ from the manifest: missing {missing[:10] or 'none'}, unexpected {extra[:10] or 'none'}"
        )
    elif not want_migs:
        problems.append("the manifest records no applied migrations: not a Django app's database")
    if m.get("media_root") and (media_want == "-" or media_got == "-"):
        problems.append(f"the snapshot holds media ({m['media_root']}), none was compared")
    elif media_want != "-":
        want_media, got_media = (json.loads(Path(p).read_text()) for p in (media_want, media_got))
        if want_media != got_media:
            problems.append(f"media restored {got_media}, the snapshot lists {want_media}")
    return problems


# --- results ----------------------------------------------------------------------------------------------------


def write_json(path: str, data) -> None:
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".kiln-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def status(kind: str, status_dir: str, metrics_file: str) -> None:
    if kind not in KINDS:
        raise Problem(f"status: unknown kind {kind!r} (one of {', '.join(KINDS)})")
    res = json.load(sys.stdin)
    path = os.path.join(status_dir, f"{kind}.json")
    try:
        before = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        before = {}
    now = time.time()
    rec = {
        "ok": bool(res["ok"]),
        "finished_at": datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seconds": round(float(res["seconds"]), 1),
        "snapshot": str(res.get("snapshot") or ""),
        "error": res.get("error") or None,
        "backups": res.get("backups", "ON"),
        "last_success_at": (
            datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            if res["ok"]
            else before.get("last_success_at")
        ),
    }
    write_json(path, rec)
    lines = []
    for k in KINDS:
        metric = k.replace("-", "_")
        try:
            r = rec if k == kind else json.loads(Path(os.path.join(status_dir, f"{k}.json")).read_text())
        except (OSError, ValueError):
            continue
        last = r.get("last_success_at")
        ts = datetime.strptime(last, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp() if last else 0
        lines += [
            f"# HELP kiln_{metric}_last_success_timestamp_seconds When the last successful {k} finished (0: never).",
            f"# TYPE kiln_{metric}_last_success_timestamp_seconds gauge",
            f"kiln_{metric}_last_success_timestamp_seconds {ts:.0f}",
            f"# HELP kiln_{metric}_last_duration_seconds How long the last {k} run took.",
            f"# TYPE kiln_{metric}_last_duration_seconds gauge",
            f"kiln_{metric}_last_duration_seconds {r['seconds']}",
            f"# HELP kiln_{metric}_last_ok Whether the last {k} run succeeded (1) or not (0).",
            f"# TYPE kiln_{metric}_last_ok gauge",
            f"kiln_{metric}_last_ok {int(bool(r['ok']))}",
        ]
        if k == "backup":
            lines += [
                "# HELP kiln_backup_enabled Whether backups are configured (1) or OFF (0).",
                "# TYPE kiln_backup_enabled gauge",
                f"kiln_backup_enabled {int(r.get('backups') == 'ON')}",
            ]
    d = os.path.dirname(os.path.abspath(metrics_file))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".kiln-")
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, metrics_file)


def main(argv: list[str]) -> int:
    cmd, args = (argv[0], argv[1:]) if argv else ("", [])
    try:
        if cmd == "config" and len(args) == 1:
            print("\n".join(config(args[0])))
        elif cmd == "dbconf" and len(args) == 3:
            print("\n".join(dbconf(*args)))
        elif cmd == "redis" and len(args) == 2:
            print("\n".join(redis(*args)))
        elif cmd == "scan" and len(args) == 2:
            scan(*args)
        elif cmd == "media" and len(args) == 1:
            print(json.dumps(media(args[0])))
        elif cmd == "lsmedia" and len(args) == 1:
            print(json.dumps(lsmedia(args[0])))
        elif cmd == "compare" and len(args) == 5:
            problems = compare(*args)
            for p in problems:
                print(p)
            return 1 if problems else 0
        elif cmd == "status" and len(args) == 3:
            status(*args)
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except Problem as exc:
        for line in str(exc).splitlines():
            print(f"kiln-backup: ERROR: {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
