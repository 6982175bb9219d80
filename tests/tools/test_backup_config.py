"""kiln-backup's settings from the instance env (provision/files/usr/local/sbin/kiln-backup, its helper kiln_backup.py):
without a repository or its password backups are OFF (a clean exit that says so, the status file and the metrics say
OFF), a misspelt or unknown backup key and a bad value stop the run naming them, an S3 repository needs keys (its
own or the app's AWS_*). The real script on this host; no database is reached in any of these cases.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from backup_harness import HELPER, Env, needs_db_and_restic, needs_root

pytestmark = [needs_root, needs_db_and_restic]


@pytest.fixture
def env(tmp_path: Path) -> Env:
    # no database server: every case here ends before kiln-backup would dump
    return Env(tmp_path, tmp_path / "no-such.sock", tmp_path / "kiln.env", tmp_path / "repo", tmp_path / "media")


def helper_config(env: Env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HELPER), "config", str(env.envfile)], capture_output=True, text=True)


@pytest.mark.parametrize(
    "settings, why",
    [
        ({"KILN_BACKUP_REPOSITORY": None, "KILN_BACKUP_PASSWORD": None}, "no KILN_BACKUP_REPOSITORY"),
        ({"KILN_BACKUP_PASSWORD": None}, "KILN_BACKUP_PASSWORD is not"),
        ({"KILN_BACKUP_REPOSITORY": None}, "KILN_BACKUP_REPOSITORY is not"),
    ],
    ids=["nothing", "no password", "no repository"],
)
def test_backups_are_off_without_a_repository_or_its_password(env: Env, settings, why):
    env.write_env(**settings)
    for cmd in ("backup", "restore-test"):
        res = env.run(cmd)
        assert res.returncode == 0, f"{cmd}: rc={res.returncode}\n{res.stdout}\n{res.stderr}"
        assert "backups OFF" in res.stdout and why in res.stdout, res.stdout
        st = env.status(cmd)
        assert st["ok"] is False and st["backups"] == "OFF" and why in st["error"], st
        assert set(st) >= {"ok", "finished_at", "seconds", "snapshot", "error"}, st
    assert "kiln_backup_enabled 0" in env.metrics(), env.metrics()
    assert not env.repo.exists(), "a repository was made although backups are OFF"
    # restore has nothing to restore from: an error, not a silent success
    res = env.run("restore")
    assert res.returncode == 1 and "OFF" in res.stderr, res.stderr


@pytest.mark.parametrize(
    "key, named",
    [
        ("KILN_BACKUP_PASWORD", "did you mean KILN_BACKUP_PASSWORD?"),
        ("KILN_BAKUP_REPOSITORY", "did you mean KILN_BACKUP_REPOSITORY?"),
        ("KILN_BACKUP_SCHEDULE", "known: KILN_BACKUP_REPOSITORY"),
    ],
)
def test_a_misspelt_or_unknown_backup_key_is_named(env: Env, key, named):
    env.write_env(**{key: "7"})
    res = env.run("backup")
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"unknown backup setting {key}" in res.stderr and named in res.stderr, res.stderr
    st = env.status("backup")
    assert st["ok"] is False and f"unknown backup setting {key}" in st["error"], st
    assert not env.repo.exists()


@pytest.mark.parametrize(
    "settings, named",
    [
        ({"KILN_BACKUP_KEEP_DAILY": "seven"}, "KILN_BACKUP_KEEP_DAILY=seven"),
        (
            {"KILN_BACKUP_KEEP_DAILY": "0", "KILN_BACKUP_KEEP_WEEKLY": "0", "KILN_BACKUP_KEEP_MONTHLY": "0"},
            "retention would delete every snapshot",
        ),
        ({"KILN_BACKUP_REPOSITORY": "backups/here"}, "KILN_BACKUP_REPOSITORY=backups/here"),
        ({"KILN_BACKUP_REPOSITORY": "s3:http://127.0.0.1:9/kiln"}, "neither KILN_BACKUP_AWS_ACCESS_KEY_ID nor"),
        ({"KILN_BACKUP_REPOSITORY": "s3:nobucket", "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}, "s3:HOST"),
    ],
    ids=["keep not a number", "keep nothing", "relative path", "s3 without keys", "s3 without bucket"],
)
def test_a_bad_value_is_named(env: Env, settings, named):
    env.write_env(**settings)
    res = env.run("backup")
    assert res.returncode == 1 and named in res.stderr, res.stdout + res.stderr


def test_an_s3_repository_takes_the_apps_keys_unless_it_has_its_own(env: Env):
    env.write_env(
        KILN_BACKUP_REPOSITORY="s3:https://s3.example.com/kiln-backups",
        AWS_ACCESS_KEY_ID="app-key",
        AWS_SECRET_ACCESS_KEY="app-secret",
    )
    res = helper_config(env)
    assert res.returncode == 0, res.stderr
    assert "KILN_BACKUP_AWS_ACCESS_KEY_ID=app-key" in res.stdout and "KILN_BACKUP_STATE=ON" in res.stdout
    env.write_env(
        KILN_BACKUP_REPOSITORY="s3:https://s3.example.com/kiln-backups",
        AWS_ACCESS_KEY_ID="app-key",
        AWS_SECRET_ACCESS_KEY="app-secret",
        KILN_BACKUP_AWS_ACCESS_KEY_ID="backup-key",
        KILN_BACKUP_AWS_SECRET_ACCESS_KEY="backup-secret",
    )
    res = helper_config(env)
    assert res.returncode == 0 and "KILN_BACKUP_AWS_ACCESS_KEY_ID=backup-key" in res.stdout, res.stdout + res.stderr


def test_media_on_s3_is_not_backed_up_here(env: Env):
    env.write_env(AWS_STORAGE_BUCKET_NAME="media")
    res = helper_config(env)
    assert res.returncode == 0 and "KILN_BACKUP_MEDIA_ROOT=''" in res.stdout, res.stdout
    env.write_env()
    assert f"KILN_BACKUP_MEDIA_ROOT={env.media}" in helper_config(env).stdout
