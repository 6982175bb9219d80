"""Kiln's Prometheus textfiles (provision/files/usr/local/lib/kiln/kiln_metrics.py) and what serves them.

- the rq queues: the real collector, run as kiln-metrics-rq.service runs it (the system python3, isolated: no redis
  module), against a real redis-server holding jobs that rq itself enqueued and failed; its counts must be rq's own
  (Queue.count, FailedJobRegistry.count: expired failures not counted), for every queue of the release's contract;
- the queue Redis down, or refusing the password: exit 1, one error line, and the file marked (kiln_rq_up 0, the
  last success kept, no queue series), never a file that looks current;
- the deploys: kiln-release's EXIT trap records a failed switch, with the release still current and the earlier
  success kept (the real kiln-release, in a mount namespace whose /srv and /var/lib are empty tmpfs);
- node-exporter (this host's prometheus-node-exporter) started with the arguments step 78 renders, on another port:
  it listens on loopback only and serves every file as written (node_textfile_scrape_error 0).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from kilntest import ROOT, load

LIB = ROOT / "provision" / "files" / "usr" / "local" / "lib" / "kiln"
COMMON = ROOT / "provision" / "lib" / "common.sh"
FILES = ROOT / "provision" / "files"
KILN_RELEASE = FILES / "usr" / "local" / "sbin" / "kiln-release"
REDIS_SERVER = shutil.which("redis-server") or "/usr/sbin/redis-server"
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or "/usr/bin/prometheus-node-exporter"
PASSWORD = "s@cret/pw"  # URL-quoted in QUEUE_URL, as kiln-firstboot writes hex ones

needs_redis = pytest.mark.skipif(not Path(REDIS_SERVER).exists(), reason="needs redis-server (make deps)")
needs_exporter = pytest.mark.skipif(
    not Path(NODE_EXPORTER).exists(), reason="needs prometheus-node-exporter (make test-tools installs it)"
)


kiln_metrics = load("kiln_metrics", LIB / "kiln_metrics.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# the infra suite's parser of the text format (one for both: the scrapes there, the files here)
samples = load("kilnlib", ROOT / "tests" / "infra" / "kilnlib.py").prom_samples


def collect(tmp_path: Path, env: Path, app: Path) -> subprocess.CompletedProcess:
    """The collector as kiln-metrics-rq.service runs it: the system's python3, here isolated (-I: no user site, no
    PYTHON* variables), which has no redis module to lean on."""
    cmd = ["/usr/bin/python3", "-I", str(LIB / "kiln_metrics.py"), "rq", str(tmp_path / "metrics")]
    return subprocess.run(
        [*cmd, "--env", str(env), "--app", str(app)],
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- rendering, no server ------------------------------------------------------------------------------------------
def test_queues_are_the_contracts_declared_and_every_worker_groups_once(tmp_path):
    app = tmp_path / "kiln-app.env"
    app.write_text(
        "KILN_APP_QUEUES=(mail export)\nKILN_APP_WORKERS=(fast bulk-io)\nKILN_APP_WORKERS_FAST_QUEUES=(mail)\n"
        "KILN_APP_WORKERS_FAST_CLASS=SimpleWorker\nKILN_APP_WORKERS_BULK_IO_QUEUES=(export 'low prio')\n"
    )
    assert kiln_metrics.app_queues(kiln_metrics.kiln_ready.read_app_env(app)) == ["mail", "export", "low prio"]
    assert kiln_metrics.app_queues({}) == []


def test_rq_file_escapes_queue_names_and_a_failed_read_has_no_queue_series():
    ok = "\n".join(kiln_metrics.render_rq({'a"b\\c': (3, 1)}, 1700000000))
    assert 'kiln_rq_queue_jobs{queue="a\\"b\\\\c"} 3' in ok
    assert 'kiln_rq_failed_jobs{queue="a\\"b\\\\c"} 1' in ok
    assert samples(ok)["kiln_rq_up"] == 1
    failed = "\n".join(kiln_metrics.render_rq(None, 1700000000))
    assert samples(failed) == {"kiln_rq_up": 0, "kiln_rq_last_success_timestamp_seconds": 1700000000}


def test_deploy_file_keeps_the_other_outcomes_time(tmp_path):
    (tmp_path / "kiln_deploy.prom").write_text("kiln_deploy_last_success_timestamp_seconds 1.7e+09\n")
    kiln_metrics.record_deploy(tmp_path, False, "2.0")
    failed = samples((tmp_path / "kiln_deploy.prom").read_text())
    assert failed["kiln_deploy_last_success_timestamp_seconds"] == 1.7e9
    assert failed["kiln_deploy_last_failure_timestamp_seconds"] >= time.time() - 60
    assert failed["kiln_deploy_last_ok"] == 0 and failed['kiln_release_info{release="2.0"}'] == 1
    kiln_metrics.record_deploy(tmp_path, True, "")
    ok = samples((tmp_path / "kiln_deploy.prom").read_text())
    assert ok["kiln_deploy_last_failure_timestamp_seconds"] == failed["kiln_deploy_last_failure_timestamp_seconds"]
    assert ok["kiln_deploy_last_ok"] == 1 and not any(k.startswith("kiln_release_info") for k in ok), ok
    assert [p.name for p in tmp_path.iterdir()] == ["kiln_deploy.prom"], "a temporary file was left behind"


# --- against a real redis-server -----------------------------------------------------------------------------------
class Redis:
    """redis-server on a free loopback port, with a password, no persistence; stop() and start() again."""

    def __init__(self, workdir: Path):
        self.port, self.workdir, self.proc = free_port(), workdir, None
        self.url = f"redis://:{PASSWORD.replace('@', '%40').replace('/', '%2F')}@127.0.0.1:{self.port}/1"

    def start(self) -> None:
        self.workdir.mkdir(exist_ok=True)
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--requirepass", PASSWORD]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir), "--logfile", ""]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                kiln_metrics.kiln_ready.redis_call(self.url, ["PING"])
                return
            except kiln_metrics.kiln_ready.NotReady:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"redis-server on {self.port} did not come up") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


@pytest.fixture
def redis(tmp_path):
    server = Redis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def instance(tmp_path, redis):
    """The instance env (QUEUE_URL), the current release's contract (kiln-app.env as kiln_app.py writes it: the second
    app's two worker groups, urgent and bulk) and the metrics directory."""
    env = tmp_path / "kiln.env"
    env.write_text(f"SECRET_KEY=x\nQUEUE_URL={redis.url}\n")
    app = tmp_path / "kiln-app.env"
    show = [sys.executable, str(LIB / "kiln_app.py"), "show", str(ROOT / "tests/fixtures/second-app")]
    res = subprocess.run(
        [*show, "--format", "env", "--distro", "debian-13"],
        capture_output=True,
        text=True,
        check=True,
    )
    app.write_text(res.stdout)
    (tmp_path / "metrics").mkdir()
    return env, app


@needs_redis
def test_queue_depths_and_failed_jobs_are_rqs_own_counts(tmp_path, redis, instance):
    from redis import Redis as Client
    from rq import Queue
    from rq.job import Job
    from rq.registry import FailedJobRegistry

    conn = Client.from_url(redis.url)
    urgent, bulk = Queue("urgent", connection=conn), Queue("bulk", connection=conn)
    for _ in range(3):
        bulk.enqueue("os.getpid")
    urgent.enqueue("os.getpid")
    failed = FailedJobRegistry(queue=bulk)
    for ttl in (3600, -1):  # fails for an hour; never expires (rq's failure_ttl -1)
        job = Job.create("os.getpid", connection=conn, origin="bulk")
        job.save()
        failed.add(job, ttl=ttl)
    conn.zadd("rq:failed:bulk", {"expired-long-ago": time.time() - 600})  # what rq's cleanup drops

    res = collect(tmp_path, *instance)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    seen = samples((tmp_path / "metrics" / "kiln_rq.prom").read_text())
    print(seen)
    assert seen['kiln_rq_queue_jobs{queue="urgent"}'] == urgent.count == 1
    assert seen['kiln_rq_queue_jobs{queue="bulk"}'] == bulk.count == 3
    assert seen['kiln_rq_failed_jobs{queue="urgent"}'] == 0
    # rq's count drops the expired entry (its cleanup writes: the collector only reads, so rq's count comes last)
    assert conn.zcard("rq:failed:bulk") == 3
    assert seen['kiln_rq_failed_jobs{queue="bulk"}'] == failed.count == 2
    assert seen["kiln_rq_up"] == 1 and seen["kiln_rq_last_success_timestamp_seconds"] >= time.time() - 60
    assert sorted(p.name for p in (tmp_path / "metrics").iterdir()) == ["kiln_rq.prom"], "temporary files left"


@needs_redis
def test_queue_redis_down_is_an_error_and_the_file_says_so(tmp_path, redis, instance):
    assert collect(tmp_path, *instance).returncode == 0
    before = samples((tmp_path / "metrics" / "kiln_rq.prom").read_text())
    redis.stop()
    res = collect(tmp_path, *instance)
    print(res.stderr)
    assert res.returncode == 1, res
    assert re.fullmatch(r"kiln-metrics: ERROR: rq: cannot connect to 127\.0\.0\.1:\d+: .*\n", res.stderr), res.stderr
    after = samples((tmp_path / "metrics" / "kiln_rq.prom").read_text())
    # marked, not kept: the old depths would look current; the time of the last good read stays
    last = before["kiln_rq_last_success_timestamp_seconds"]
    assert after == {"kiln_rq_up": 0, "kiln_rq_last_success_timestamp_seconds": last}, after
    redis.start()
    assert collect(tmp_path, *instance).returncode == 0
    assert samples((tmp_path / "metrics" / "kiln_rq.prom").read_text())["kiln_rq_up"] == 1


@needs_redis
def test_a_wrong_password_or_no_queue_url_is_an_error(tmp_path, redis, instance):
    env, app = instance
    env.write_text(f"QUEUE_URL={redis.url.replace('%40', 'x')}\n")
    res = collect(tmp_path, env, app)
    assert res.returncode == 1 and "AUTH -> " in res.stderr, res.stderr
    env.write_text("SECRET_KEY=x\n")
    res = collect(tmp_path, env, app)
    assert res.returncode == 1 and f"no QUEUE_URL in {env}" in res.stderr, res.stderr
    res = collect(tmp_path, env, tmp_path / "no-release.env")
    assert res.returncode == 1 and "cannot read" in res.stderr, res.stderr
    assert samples((tmp_path / "metrics" / "kiln_rq.prom").read_text())["kiln_rq_up"] == 0


# --- kiln-release's record of a deploy -----------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_kiln_release_records_a_failed_switch_with_the_release_still_current(tmp_path):
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "kiln_deploy.prom").write_text("kiln_deploy_last_success_timestamp_seconds 1700000000\n")
    # /srv and /var/lib empty tmpfs of a mount namespace of its own: kiln-release's lock and releases are there, this
    # host's stay untouched. Release 1.0 is current; 2.0 was never built, so the switch to it fails.
    script = (
        "mount -t tmpfs kiln-srv /srv && mount -t tmpfs kiln-lib /var/lib && mkdir -p /srv/kiln/releases/1.0 && "
        'ln -s releases/1.0 /srv/kiln/current && exec "$0" switch 2.0'
    )
    res = subprocess.run(
        ["unshare", "-rm", "bash", "-c", script, str(KILN_RELEASE)],
        env={
            "PATH": os.environ["PATH"],
            "KILN_PROVISION_DIR": str(ROOT / "provision"),
            "KILN_DISTRO": "debian-13",
            "KILN_METRICS_DIR": str(metrics),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    print(res.stderr)
    assert res.returncode == 1 and "no complete release 2.0" in res.stderr, res.stderr
    seen = samples((metrics / "kiln_deploy.prom").read_text())
    assert seen['kiln_release_info{release="1.0"}'] == 1
    assert seen["kiln_deploy_last_ok"] == 0 and seen["kiln_deploy_last_failure_timestamp_seconds"] >= time.time() - 60
    assert seen["kiln_deploy_last_success_timestamp_seconds"] == 1700000000


# --- node-exporter with step 78's arguments --------------------------------------------------------------------------
def rendered(template: str, metrics: Path, port: int | None = None) -> str:
    """A file of provision/files as step 78 renders it (render_vars, common.sh's values), with METRICS as the metrics
    directory and PORT, if given, instead of common.sh's (the nspawn tier's container shares this host's network)."""
    listen = f"KILN_METRICS_LISTEN=${{KILN_METRICS_LISTEN%:*}}:{port}; " if port else ""
    script = f'. "{COMMON}"; {listen}render_vars "{FILES / template}"'
    res = subprocess.run(
        ["bash", "-c", script], env={"PATH": os.environ["PATH"], "KILN_METRICS_DIR": str(metrics)}, capture_output=True
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.decode()


def test_one_metrics_dir_and_loopback_only_in_what_step_78_renders(tmp_path):
    defaults = rendered("etc/default/prometheus-node-exporter", tmp_path)
    unit = rendered("etc/systemd/system/kiln-metrics-rq.service", tmp_path)
    assert not re.search(r"@[A-Z][A-Z0-9_]*@", defaults + unit), "a value left unrendered"
    assert re.search(r"--web\.listen-address=127\.0\.0\.1:9100 ", defaults), defaults
    assert f'--collector.textfile.directory={tmp_path}"' in defaults, defaults
    assert f"kiln_metrics.py rq {tmp_path}\n" in unit and f"ReadWritePaths={tmp_path}\n" in unit, unit


@needs_exporter
@needs_redis
def test_node_exporter_with_step_78s_arguments_serves_every_textfile_on_loopback(tmp_path, redis, instance):
    metrics = tmp_path / "metrics"
    assert collect(tmp_path, *instance).returncode == 0
    kiln_metrics.record_deploy(metrics, True, "1.0+abc")
    (metrics / "kiln_backup.prom").write_text("# TYPE kiln_backup_enabled gauge\nkiln_backup_enabled 0\n")
    port = free_port()
    args = subprocess.run(
        ["bash", "-c", '. "$0"; printf "%s\\n" $ARGS', "/dev/stdin"],
        input=rendered("etc/default/prometheus-node-exporter", metrics, port),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    proc = subprocess.Popen(
        ["timeout", "60", NODE_EXPORTER, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline, text = time.monotonic() + 20, ""
        while not text:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        listening = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
    finally:
        proc.terminate()
        proc.wait(20)
    print(args, listening, sep="\n")
    assert [line.split()[3] for line in listening.splitlines()] == [f"127.0.0.1:{port}"], listening
    seen = samples(text)
    assert seen["node_textfile_scrape_error"] == 0, proc.stderr.read() if proc.stderr else ""
    for name in ("kiln_rq.prom", "kiln_deploy.prom", "kiln_backup.prom"):
        for key, value in samples((metrics / name).read_text()).items():
            assert seen.get(key) == value, f"{key} of {name}: {seen.get(key)} served, {value} written"
    assert seen['kiln_rq_queue_jobs{queue="urgent"}'] == 0 and seen['kiln_release_info{release="1.0+abc"}'] == 1
