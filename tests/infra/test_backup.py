"""Backups and disaster recovery (kiln-backup, README "Backups and disaster recovery") on the target, into an S3
bucket of a local S3 server: moto's, started on this machine's loopback and reached from the target through an SSH
remote forward over the suites' own ssh config (bounded by `timeout`, ended with the module).

  - off by default: the timers are enabled, and the service's run without settings exits cleanly saying OFF;
  - records written through the app and a media file -> `kiln-backup backup` into the bucket -> the database dropped
    and the media file deleted -> `kiln-backup restore` -> every record back, equal, the file back, the app serving;
  - the restore test passes on that snapshot, and fails once a pack file in the bucket is damaged;
  - a dump that breaks mid-way (mariadb-dump's output cut) is not accepted as a backup: no new snapshot.

The backup settings go to kiln-backup in a test env file (the instance env plus KILN_BACKUP_*, KILN_BACKUP_ENV_FILE):
a `kiln-firstboot --reconfigure` would restart the app twice for nothing the fast tests do not cover
(tests/tools/test_backup_config.py). The suites' SSH user may only forward locally (the box's sshd Match block): for
the module, a drop-in lets it forward remotely too; it is removed, and sshd reloaded, at the end.
"""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kilnlib import ENV_FILE, app_python, figure, out, sh, ssh_target, wait_http_ok

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "kiln-backup-test"
GUEST_PORT = 19771
TEST_ENV = "/run/kiln-backup-test.env"
SSHD_DROPIN = "/etc/ssh/sshd_config.d/00-kiln-backup-test.conf"
MEDIA = "/srv/kiln/shared/media"
TIMINGS: dict[str, float] = {}
KB = f"KILN_BACKUP_ENV_FILE={TEST_ENV} /usr/local/sbin/kiln-backup"
# kiln-backup's Prometheus textfile, in KILN_METRICS_DIR of the target's lib/common.sh
METRICS = "bash -c '. /usr/local/lib/kiln/lib/common.sh && cat \"$KILN_METRICS_DIR/kiln_backup.prom\"'"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def moto_bin() -> str:
    for p in (Path(sys.executable).parent / "moto_server", ROOT / ".venv" / "bin" / "moto_server"):
        if p.exists():
            return str(p)
    pytest.skip("moto_server not found (the repo's .venv has it: make deps)")


@pytest.fixture(scope="module")
def s3(host, request):
    """moto's S3 server on this machine's loopback, reachable in the target at 127.0.0.1:GUEST_PORT."""
    import boto3

    port = free_port()
    moto = subprocess.Popen(
        ["timeout", "1800", moto_bin(), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id="kiln-test",
        aws_secret_access_key="kiln-test-secret",
        region_name="us-east-1",
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            client.list_buckets()
            break
        except Exception:
            if time.monotonic() > deadline or moto.poll() is not None:
                moto.kill()
                raise
            time.sleep(0.3)
    client.create_bucket(Bucket=BUCKET)
    # Remote forwarding for the suites' user, for this module only (the image allows no forwarding at all).
    sh(
        host,
        f"printf 'Match User vagrant,debian,admin\\n    AllowTcpForwarding yes\\n' > {SSHD_DROPIN} && sshd -t "
        f"&& systemctl reload ssh",
    )
    opts, dest = ssh_target(request.config, host)
    cond = f"curl -s -o /dev/null http://127.0.0.1:{GUEST_PORT}/"
    fwd, tries = None, []
    try:
        # Up to 3 connections: `systemctl reload ssh` returns while sshd re-executes itself, and a connection then
        # may be reset ("kex_exchange_identification: read: Connection reset by peer": 1 of 5 tries at once after a
        # reload on a VM; ci16's forward ended so, silent under Vagrant's LogLevel FATAL, which LogLevel=ERROR here
        # overrides). The last try comes 30 s later: ufw limits new ssh connections from one address (6 in 30 s).
        for attempt in range(1, 4):
            fwd = subprocess.Popen(
                ["timeout", "1800", "ssh", *opts, "-N", "-o", "ControlMaster=no", "-o", "ControlPath=none",
                 "-o", "LogLevel=ERROR", "-o", "ExitOnForwardFailure=yes",
                 "-R", f"127.0.0.1:{GUEST_PORT}:127.0.0.1:{port}", dest],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            res = host.run(f"timeout 20 sh -c {shlex.quote(f'until {cond}; do sleep 0.5; done')}")
            if res.rc == 0:
                break
            if fwd.poll() is None:
                fwd.kill()
                said = "(ssh still running, no forward)"
            else:
                said = fwd.stderr.read().strip() or f"(ssh exited {fwd.returncode}, no message)"
            fwd.wait()
            tries.append(f"attempt {attempt}: {said}")
            if attempt < 3:
                time.sleep(5 if attempt == 1 else 30)
        else:
            raise AssertionError("the forward to moto did not come up: " + "; ".join(tries))
        if tries:
            print("the forward came up after: " + "; ".join(tries))
        env = {
            "KILN_BACKUP_REPOSITORY": f"s3:http://127.0.0.1:{GUEST_PORT}/{BUCKET}/kiln",
            "KILN_BACKUP_PASSWORD": "an operator's long passphrase, kept off the server",
            "KILN_BACKUP_AWS_ACCESS_KEY_ID": "kiln-test",
            "KILN_BACKUP_AWS_SECRET_ACCESS_KEY": "kiln-test-secret",
        }
        lines = "".join(f"{k}={v}\n" for k, v in env.items())
        sh(host, f"install -m 0600 {ENV_FILE} {TEST_ENV} && printf %s {shlex.quote(lines)} >> {TEST_ENV}")
        yield client
    finally:
        procs = [p for p in (fwd, moto) if p is not None]
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        host.run(f"rm -f {SSHD_DROPIN} {TEST_ENV} && systemctl reload ssh; rm -rf /var/cache/kiln/restic")
        # the status files as a server without backup settings has them
        host.run("rm -f /var/lib/kiln/status/restore-test.json && systemctl start kiln-backup.service")
        if TIMINGS:
            figure("backup timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in TIMINGS.items()))


def timed(host, what: str, cmd: str, ok=(0,)):
    t0 = time.monotonic()
    res = sh(host, cmd, ok=ok)
    TIMINGS[what] = time.monotonic() - t0
    return res


def status(host, kind: str) -> dict:
    return json.loads(out(host, f"cat /var/lib/kiln/status/{kind}.json"))


def snapshot_objects(client) -> list[str]:
    res = client.list_objects_v2(Bucket=BUCKET, Prefix="kiln/snapshots/")
    return [o["Key"] for o in res.get("Contents", [])]


def repair(host) -> None:
    """After a failed restore: an empty database with the current release's schema, the app serving again."""
    host.run(
        "mariadb -e 'CREATE DATABASE IF NOT EXISTS kiln CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci' && "
        'kiln-release release-commands "$(basename "$(readlink -f /srv/kiln/current)")"; '
        "[ ! -x /usr/local/sbin/kiln ] || kiln maintenance off; supervisorctl start all"
    )


RECORDS = (
    "from records.models import Record\nprint(json.dumps(list(Record.objects.order_by('id').values()), default=str))\n"
)


def test_backups_are_off_until_configured(host):
    assert out(host, "systemctl is-enabled kiln-backup.timer kiln-restore-test.timer").split() == ["enabled"] * 2
    sh(host, "systemctl start kiln-backup.service")  # a oneshot: returns when it ended, rc 0
    st = status(host, "backup")
    assert st["ok"] is False and st["backups"] == "OFF" and st["error"].startswith("backups OFF"), st
    assert "kiln_backup_enabled 0" in out(host, METRICS)
    assert "backups OFF" in out(host, "journalctl -u kiln-backup.service -n 5 --no-pager")


def test_backup_then_restore_brings_back_every_record_and_the_media(host, s3):
    # The records are written with the app's own models, in one Python start: what a backup keeps is the question
    # here, not the way in (test_http posts through the API; each HTTP Basic post checks a password, ~15 s of CPU
    # under TCG).
    records = [(f"backup test {i}", f"body {i}: it's (tricky); \\ and \n newline") for i in range(3)]
    create = "".join(f"Record.objects.create(title={t!r}, body={b!r})\n" for t, b in records)
    before = app_python(host, f"from records.models import Record\n{create}{RECORDS}")
    assert len(before) >= 3 and {(r["title"], r["body"]) for r in before} >= set(records), before
    sh(host, f"runuser -u kiln -- sh -c 'mkdir -p {MEDIA}/backup-test && printf kept > {MEDIA}/backup-test/f.txt'")
    timed(host, "backup", f"{KB} backup")
    st = status(host, "backup")
    assert st["ok"] is True and st["snapshot"] and st["backups"] == "ON", st
    assert len(snapshot_objects(s3)) == 1
    # the disaster: the database and a media file gone
    sh(host, "mariadb -e 'DROP DATABASE kiln' && rm -rf /srv/kiln/shared/media/backup-test")
    try:
        timed(host, "restore", f"{KB} restore")
    except AssertionError:
        repair(host)  # the suites after this one need a database
        raise
    assert app_python(host, RECORDS) == before
    assert out(host, f"cat {MEDIA}/backup-test/f.txt") == "kept"
    assert out(host, f"stat -c %U {MEDIA}/backup-test/f.txt") == "kiln"
    wait_http_ok(host, "/readyz", timeout=120)


def test_restore_test_passes_on_the_snapshot(host, s3):
    res = timed(host, "restore-test", f"{KB} restore-test")
    assert "rows and migrations as in the manifest" in res.stdout, res.stdout
    st = status(host, "restore-test")
    assert st["ok"] is True and st["error"] is None and st["seconds"] > 0, st
    assert not out(host, "ls /var/tmp | grep kiln-restore-test || true"), "scratch directory left behind"
    # [m]: the shell that runs pgrep has the pattern in its command line too
    assert not out(host, "pgrep -f '[m]ariadbd.*kiln-restore-test' || true"), "the throw-away server still runs"


def test_a_dump_broken_mid_way_is_not_a_backup(host, s3):
    before = snapshot_objects(s3)
    # Not under /run or /tmp: the image mounts them noexec, and the shell then quietly runs the next mariadb-dump on
    # PATH (ci14: the real one, a complete dump, a snapshot). The fake leaves a mark that it ran.
    fake = "/var/lib/kiln-backup-test-bin"
    sh(
        host,
        f"rm -rf {fake} && mkdir -m 0700 {fake} && printf '#!/bin/sh\\ntouch {fake}/ran\\n"
        f'/usr/bin/mariadb-dump "$@" | head -c 3000\\n\' > {fake}/mariadb-dump && chmod 0755 {fake}/mariadb-dump',
    )
    try:
        res = sh(host, f"PATH={fake}:$PATH {KB} backup", ok=None)
        ran = host.file(f"{fake}/ran").exists
    finally:
        host.run(f"rm -rf {fake}")
    assert ran, f"the cut mariadb-dump in {fake} was not the one run:\n{res.stdout}{res.stderr}"
    assert res.rc == 1, f"a cut dump was accepted (rc {res.rc}):\n{res.stdout}{res.stderr}"
    assert "not accepted" in res.stderr, res.stderr
    st = status(host, "backup")
    assert st["ok"] is False and "Dump completed" in st["error"], st
    assert snapshot_objects(s3) == before


def test_restore_test_fails_on_a_damaged_pack(host, s3):
    # Every pack file damaged in its middle (16 bytes inverted, the size unchanged): whichever packs hold the latest
    # snapshot's blobs (one pack alone may hold only an older snapshot's, which the restore test never reads).
    packs = s3.list_objects_v2(Bucket=BUCKET, Prefix="kiln/data/")["Contents"]
    for pack in packs:
        data = bytearray(s3.get_object(Bucket=BUCKET, Key=pack["Key"])["Body"].read())
        mid = len(data) // 2
        data[mid : mid + 16] = bytes(b ^ 0xFF for b in data[mid : mid + 16])
        s3.put_object(Bucket=BUCKET, Key=pack["Key"], Body=bytes(data))
    print(f"damaged {len(packs)} pack file(s): {[p['Key'] for p in packs]}")
    host.run("rm -rf /var/cache/kiln/restic")  # the pack as the bucket has it, not a cached copy
    res = timed(host, "restore-test (damaged)", f"{KB} restore-test", ok=(1,))
    st = status(host, "restore-test")
    assert st["ok"] is False and st["error"], (st, res.stderr)
    assert "kiln_restore_test_last_ok 0" in out(host, METRICS)
