"""Metrics for the operator's monitoring (README, "Metrics"; provision/steps/78-metrics.sh) on the target:
node-exporter listens on loopback only, and a scrape of it serves Kiln's textfiles: the backups' (after test_backup,
which ran backups and restore tests), the rq queues' of the current release (a job enqueued on each queue while the
workers are stopped shows as waiting, and is gone once they run again) and the current release's info.

Read-only but for that: the workers are stopped for the few seconds of one collector run, and started again whatever
happens. The address and the metrics directory are read from the target's own lib/common.sh (the one place they are
set).
"""

from __future__ import annotations

import shlex
import textwrap

import pytest

from kilnlib import all_running, app_python, out, prom_samples, sh, supervisor_text, wait_for, worker_names

COMMON = "/usr/local/lib/kiln/lib/common.sh"
APP_ENV = "/srv/kiln/current/kiln-app.env"


@pytest.fixture(scope="module")
def metrics(host) -> dict[str, str]:
    """KILN_METRICS_LISTEN and KILN_METRICS_DIR as the target's lib/common.sh sets them."""
    got = out(host, f"bash -c '. {COMMON} && echo $KILN_METRICS_LISTEN $KILN_METRICS_DIR'").split()
    print(f"target's common.sh: listen {got[0]}, textfiles in {got[1]}")
    return {"listen": got[0], "dir": got[1]}


def scrape(host, metrics) -> dict[str, float]:
    return prom_samples(out(host, f"curl -sS --max-time 10 http://{metrics['listen']}/metrics"))


def textfile(host, path: str) -> dict[str, float]:
    return prom_samples(out(host, f"cat {path}"))


def app_queues(host) -> list[str]:
    """The queues of the current release's contract: declared, and every worker group's (as kiln-rqworker reads
    them), each once."""
    script = (
        f'. {APP_ENV}; qs=("${{KILN_APP_QUEUES[@]}}"); for g in "${{KILN_APP_WORKERS[@]}}"; do '
        'v="KILN_APP_WORKERS_${g^^}_QUEUES[@]"; v=${v//-/_}; qs+=("${!v}"); done; printf "%s\\n" "${qs[@]}"'
    )
    return list(dict.fromkeys(out(host, f"bash -c {shlex.quote(script)}").split()))


def test_node_exporter_listens_on_loopback_only(host, metrics):
    assert host.service("prometheus-node-exporter").is_running
    port = metrics["listen"].rsplit(":", 1)[1]
    ss = host.run("ss -Hltnp").stdout
    lines = [ln for ln in ss.splitlines() if ln.split()[3].rsplit(":", 1)[-1] == port]
    print("\n".join(lines))
    assert [ln.split()[3] for ln in lines] == [metrics["listen"]], f"port {port} beyond {metrics['listen']}:\n{ss}"
    assert all('(("prometheus-node",' in ln for ln in lines), lines
    assert out(host, "ps -o user= -p $(systemctl show -P MainPID prometheus-node-exporter)") == "prometheus"


def test_the_collector_runs_each_minute_and_logs_only_its_failures(host, metrics):
    assert host.service("kiln-metrics-rq.timer").is_running
    assert out(host, "systemctl show -P Result kiln-metrics-rq.service") == "success"
    # the timer's last run (this module starts the collector itself only after this test): at most a minute (and the
    # timer's 5 s accuracy) ago
    age = out(host, f"echo $(( $(date +%s) - $(stat -c %Y {metrics['dir']}/kiln_rq.prom) ))")
    print(f"kiln_rq.prom written {age} s ago")
    assert int(age) <= 70, age
    logged = out(host, "journalctl -u kiln-metrics-rq.service --since -10min --no-pager -o cat | tail -n 5")
    print(logged or "(nothing logged)")
    assert "Starting" not in logged and "Finished" not in logged, logged


def test_scrape_serves_the_backup_metrics_as_written(host, metrics):
    written = textfile(host, f"{metrics['dir']}/kiln_backup.prom")
    seen = scrape(host, metrics)
    print({k: v for k, v in seen.items() if k.startswith(("kiln_backup", "kiln_restore", "node_textfile"))})
    assert seen["node_textfile_scrape_error"] == 0
    assert any(k.startswith("kiln_backup_") for k in written), written
    for key, value in written.items():
        assert seen.get(key) == value, f"{key}: {seen.get(key)} served, {value} in kiln_backup.prom"


def test_scrape_serves_the_current_release(host, metrics):
    release = out(host, "basename $(readlink /srv/kiln/current)")
    seen = scrape(host, metrics)
    info = {k: v for k, v in seen.items() if k.startswith(("kiln_release_info", "kiln_deploy_"))}
    print(info)
    assert [k for k in info if k.startswith("kiln_release_info")] == [f'kiln_release_info{{release="{release}"}}']
    assert seen["kiln_deploy_last_success_timestamp_seconds"] > 0


ENQUEUE = textwrap.dedent("""
    from redis import Redis
    from rq import Queue
    env = dict(line.split("=", 1) for line in open("/etc/kiln/kiln.env").read().splitlines() if "=" in line)
    conn = Redis.from_url(env["QUEUE_URL"])
    print(json.dumps({q: Queue(q, connection=conn).enqueue("os.getpid").id for q in sys.argv[1:]}))
""")


def test_scrape_serves_the_queue_depths_of_the_apps_queues(host, metrics):
    queues = app_queues(host)
    if not queues:
        pytest.skip("the current release has no queues")
    collect = "systemctl start kiln-metrics-rq.service"
    sh(host, collect)
    idle = scrape(host, metrics)
    assert idle["kiln_rq_up"] == 1, idle
    sh(host, "supervisorctl stop 'kiln-worker:*'")
    try:
        jobs = app_python(host, ENQUEUE.replace("sys.argv[1:]", repr(queues)))
        sh(host, collect)
        waiting = scrape(host, metrics)
    finally:
        sh(host, "supervisorctl start 'kiln-worker:*'")
        wait_for(
            lambda: all_running(host, worker_names(host)),
            90,
            2,
            "workers RUNNING",
            evidence=lambda: supervisor_text(host),
        )
    print(f"enqueued {jobs}; idle: {idle}; workers stopped: {waiting}")
    for q in queues:
        key = f'kiln_rq_queue_jobs{{queue="{q}"}}'
        assert waiting[key] >= 1, f"{q}: {waiting[key]} waiting after a job was enqueued with no worker running"
        assert f'kiln_rq_failed_jobs{{queue="{q}"}}' in waiting

    def drained():
        sh(host, collect)
        seen = scrape(host, metrics)
        return all(
            seen[f'kiln_rq_queue_jobs{{queue="{q}"}}'] < waiting[f'kiln_rq_queue_jobs{{queue="{q}"}}'] for q in queues
        )

    wait_for(drained, 120, 3, "the jobs taken once the workers run again")
