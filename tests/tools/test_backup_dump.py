"""kiln-backup against real binaries on this host: a MariaDB server of its own (mariadbd, temporary datadir and socket),
real mariadb-dump, real restic with a repository in a temporary directory.
  - a complete dump is accepted: one snapshot, its manifest counts every table's rows (strings with quotes,
    escapes, parentheses, semicolons and newlines included) and lists the applied migrations;
  - a dump cut mid-way, one without its trailer, a dump tool that exits non-zero after a whole dump and a scan stage
    that fails are each refused: no snapshot, the status file says why;
  - the restore test passes on a good snapshot and fails once a pack file of the repository is damaged;
  - restore puts back every row of a dropped database and the media as they were.
"""

from __future__ import annotations

import re
import tempfile
from datetime import datetime
from pathlib import Path

import pytest
from backup_harness import Env, load_app_data, needs_db_and_restic, needs_root, start_mariadb, stop_mariadb

pytestmark = [needs_root, needs_db_and_restic]
REAL_DUMP = "/usr/bin/mariadb-dump"


@pytest.fixture(scope="module")
def server():
    # Under /var/tmp: the server runs as mysql, which cannot enter pytest's 0700 /tmp/pytest-of-root.
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="kiln-backup-test-") as d:
        proc, sock = start_mariadb(Path(d))
        yield sock
        stop_mariadb(proc)


@pytest.fixture
def env(server: Path, tmp_path: Path) -> Env:
    e = Env(tmp_path, server, tmp_path / "kiln.env", tmp_path / "repo", tmp_path / "media")
    load_app_data(e)
    (e.media / "uploads").mkdir(parents=True)
    (e.media / "uploads" / "photo.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    e.write_env()
    return e


def fake_dump(tmp_path: Path, body: str) -> Path:
    """A directory whose mariadb-dump runs the real one through `body` (a shell snippet using $REAL "$@")."""
    d = tmp_path / "fakebin"
    d.mkdir()
    f = d / "mariadb-dump"
    f.write_text(f"#!/bin/bash\nREAL={REAL_DUMP}\n{body}\n")
    f.chmod(0o755)
    return d


def counts(env: Env) -> dict[str, int]:
    tables = env.sql("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'kiln'").split()
    return {t: int(env.sql(f"SELECT COUNT(*) FROM `{t}`")) for t in tables}


def test_a_complete_dump_is_accepted_with_a_manifest_of_every_row(env: Env):
    res = env.run("backup")
    assert res.returncode == 0, res.stdout + res.stderr
    st = env.status("backup")
    assert st["ok"] is True and st["error"] is None and st["backups"] == "ON", st
    assert isinstance(st["seconds"], float) and datetime.strptime(st["finished_at"], "%Y-%m-%dT%H:%M:%SZ")
    snaps = env.snapshots()
    assert len(snaps) == 1 and snaps[0]["id"].startswith(st["snapshot"]), snaps
    manifest = env.restic_json("dump", "latest", f"{env.dir}/work/stage/kiln-backup/kiln-manifest.json")
    assert manifest["tables"] == counts(env), manifest["tables"]
    assert manifest["tables"]["records_record"] == 506 and manifest["tables"]["empty_table"] == 0
    assert sorted(map(tuple, manifest["migrations"])) == sorted(
        tuple(line.split("\t")) for line in env.sql("SELECT app, name FROM django_migrations").splitlines()
    )
    assert manifest["dump"]["completed"] is True and manifest["media_root"] == str(env.media)
    m = re.search(r"^kiln_backup_last_success_timestamp_seconds (\d+)$", env.metrics(), re.M)
    assert m and int(m.group(1)) > 0, env.metrics()


@pytest.mark.parametrize(
    "body, named",
    [
        ('"$REAL" "$@" | head -c 6000', "does not end with '-- Dump completed'"),
        ('"$REAL" "$@" | sed \'$d\'', "does not end with '-- Dump completed'"),
        ('"$REAL" "$@"; exit 3', "exited with status 3"),
        ('echo \'INSERT INTO `x` VALUE 1;\'; "$REAL" "$@"', "reading the dump failed (status 1)"),
    ],
    ids=["cut mid-way", "no trailer", "dump tool fails", "scan stage fails"],
)
def test_an_incomplete_or_failed_dump_is_refused(env: Env, tmp_path: Path, body: str, named: str):
    res = env.run("backup", path_prefix=fake_dump(tmp_path, body))
    assert res.returncode == 1, res.stdout + res.stderr
    assert named in res.stderr, res.stderr
    st = env.status("backup")
    assert st["ok"] is False and named in st["error"] and st["snapshot"] == "", st
    assert env.snapshots() == [], "a refused dump became a snapshot"
    assert "kiln_backup_last_ok 0" in env.metrics()


def test_restore_test_passes_on_a_good_snapshot_and_fails_on_a_damaged_pack(env: Env, tmp_path: Path, monkeypatch):
    # Run as from a login session: libpam-tmpdir gives root TMPDIR=/tmp/user/0 (0700), which the throw-away server,
    # running as mysql, cannot write (seen on the VM: InnoDB did not start).
    root_only = tmp_path / "user-0"
    root_only.mkdir(mode=0o700)
    monkeypatch.setenv("TMPDIR", str(root_only))
    assert env.run("backup").returncode == 0
    res = env.run("restore-test")
    assert res.returncode == 0, res.stdout + res.stderr
    st = env.status("restore-test")
    assert st["ok"] is True and st["snapshot"] and "tables, rows and migrations as in the manifest" in res.stdout, st
    passed_at = re.search(r"^kiln_restore_test_last_success_timestamp_seconds (\d+)$", env.metrics(), re.M)
    assert passed_at and int(passed_at.group(1)) > 0
    # damage the largest pack (the dump's data) in its middle, keeping its size
    pack = max((p for p in (env.repo / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    pack.chmod(0o600)
    data = bytearray(pack.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 16] = bytes(b ^ 0xFF for b in data[mid : mid + 16])
    pack.write_bytes(bytes(data))
    res = env.run("restore-test")
    assert res.returncode == 1, res.stdout + res.stderr
    st = env.status("restore-test")
    assert st["ok"] is False and st["error"], st
    assert "kiln_restore_test_last_ok 0" in env.metrics()
    assert f"kiln_restore_test_last_success_timestamp_seconds {passed_at.group(1)}" in env.metrics()
    assert not list(Path("/var/tmp").glob("kiln-restore-test.*")), "the restore test left its scratch directory"


def test_restore_puts_back_a_dropped_database_and_the_media(env: Env):
    rows = "SELECT id, title, body, HEX(data) FROM records_record ORDER BY id"
    before, tags, tables = env.sql(rows), env.sql("SELECT * FROM records_tag ORDER BY id"), counts(env)
    assert env.run("backup").returncode == 0
    env.sql("DROP DATABASE kiln", db="mysql")
    (env.media / "uploads" / "photo.jpg").unlink()
    (env.media / "stray.txt").write_text("not in the backup")
    res = env.run("restore")
    assert res.returncode == 0, res.stdout + res.stderr
    assert env.sql(rows) == before and env.sql("SELECT * FROM records_tag ORDER BY id") == tags
    assert counts(env) == tables
    assert (env.media / "uploads" / "photo.jpg").read_bytes() == b"\xff\xd8 not really a jpeg"
    assert not (env.media / "stray.txt").exists()


def test_retention_keeps_what_it_is_told_and_a_wrong_password_opens_nothing(env: Env):
    assert env.run("backup").returncode == 0
    # ten older snapshots, one a day (restic's --time), of the same tag
    for day in range(1, 11):
        res = env.restic("backup", "--tag", "kiln-backup", "--time", f"2026-11-{day:02d} 03:00:00", str(env.media))
        assert res.returncode == 0, res.stderr
    env.write_env(KILN_BACKUP_KEEP_DAILY="3", KILN_BACKUP_KEEP_WEEKLY="0", KILN_BACKUP_KEEP_MONTHLY="0")
    res = env.run("backup")
    assert res.returncode == 0, res.stdout + res.stderr
    days = sorted(s["time"][:10] for s in env.snapshots())
    assert len(days) == 3 and days[:2] == ["2026-11-09", "2026-11-10"], days  # today's newest and 2 days before
    assert "3 snapshot(s) kept" in res.stdout, res.stdout
    env.write_env(KILN_BACKUP_PASSWORD="not the repository's password")
    res = env.run("backup")
    assert res.returncode == 1 and "cannot open the restic repository" in res.stderr, res.stdout + res.stderr
    assert "initialising" not in res.stdout and len(env.snapshots()) == 3
