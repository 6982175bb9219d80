"""rq jobs under failure: warm shutdown, worker crash mid-job, queue Redis restart; cache vs queue eviction.

The slow job is the standard callable `time.sleep`, enqueued by dotted path through rq in the release venv (as the
kiln user, KILN_ENV_FILE=/etc/kiln/kiln.env), on the app's `default` queue that the kiln-worker programs consume.
"""

import json
import shlex
import textwrap

import pytest

from kilnlib import (
    all_running,
    app_python,
    out,
    redis_cli,
    redis_conn,
    redis_delete,
    redis_info,
    sh,
    supervisor_status,
    supervisor_text,
    tail,
    wait_for,
    worker_names,
)

RQ_PRELUDE = textwrap.dedent("""
    import django_rq
    from rq import Retry, Worker
    from rq.job import Job
    from rq.registry import FailedJobRegistry, StartedJobRegistry
    q = django_rq.get_queue("default")
    conn = q.connection
    def job_state(job_id):
        job = Job.fetch(job_id, connection=conn)
        st = job.get_status(refresh=True)
        st = str(getattr(st, "value", st))
        worker = None
        for w in Worker.all(connection=conn):
            if w.get_current_job_id() == job_id:
                worker = {"name": w.name, "pid": w.pid}
        return {"id": job_id, "status": st, "worker": worker,
                "in_started": job_id in StartedJobRegistry(queue=q).get_job_ids(),
                "in_failed": job_id in FailedJobRegistry(queue=q).get_job_ids(),
                "in_queue": job_id in q.get_job_ids(), "exc": (job.exc_info or "")[-300:]}
""")


def rq(host, code: str, timeout: int = 120):
    # django_rq reads the app's RQ_QUEUES from its settings; nothing here needs the app's models
    return app_python(host, RQ_PRELUDE + textwrap.dedent(code), timeout=timeout, setup=False)


def enqueue_sleep(host, seconds: int, retries: int = 0, wait_started: bool = True) -> dict:
    """Enqueue time.sleep(seconds) (enqueue)."""
    return enqueue(host, f'"time.sleep", {seconds}', retries, wait_started)


def enqueue(host, call: str, retries: int = 0, wait_started: bool = True, job_timeout: int = 300) -> dict:
    """Enqueue `call` (q.enqueue's function and its arguments, as Python source); with wait_started, poll (in the same
    process, so it is quick under TCG) until a worker has started it. Returns the job state incl. the worker's name
    and pid."""
    retry = f", retry=Retry(max={retries})" if retries else ""
    return rq(
        host,
        f"""
        job = q.enqueue({call}, job_timeout={job_timeout}, result_ttl=3600, failure_ttl=3600{retry})
        deadline = time.time() + 90
        s = job_state(job.id)
        while {wait_started!r} and not (s["status"] == "started" and s["worker"]) and time.time() < deadline:
            time.sleep(0.2)
            s = job_state(job.id)
        print(json.dumps(s))
    """,
    )


def state(host, job_id: str) -> dict:
    return rq(host, f"print(json.dumps(job_state({job_id!r})))")


def worker_logs(host) -> str:
    return "\n".join(
        f"--- {p} ---\n{tail(host, p, 15)}"
        for p in out(host, "ls /var/log/kiln/worker-*.log 2>/dev/null || true").split()
    )


def started(host, seconds: int, retries: int = 0) -> dict:
    st = enqueue_sleep(host, seconds, retries)
    assert st["status"] == "started" and st["worker"], (
        f"job not started by a worker within 90s: {st}\n{supervisor_text(host)}\n{worker_logs(host)}"
    )
    return st


def wait_final(host, job_id: str, timeout: float = 120, want=("finished",)) -> dict:
    """Poll the job's state every 0.5 s inside one Python process on the target (each new process pays Django's
    import, seconds under TCG) until it is in `want`; fail after `timeout` s with the last state and evidence."""
    s = rq(
        host,
        f"""
        deadline = time.time() + {timeout}
        s = job_state({job_id!r})
        while s["status"] not in {list(want)!r} and time.time() < deadline:
            time.sleep(0.5)
            s = job_state({job_id!r})
        print(json.dumps(s))
    """,
        timeout=int(timeout) + 120,
    )
    if s["status"] not in want:
        raise AssertionError(
            f"timed out after {timeout}s waiting for job {job_id} in {want}; last seen: {s!r}\n--- evidence ---\n"
            f"{supervisor_text(host)}\n{worker_logs(host)}"
        )
    return s


def wait_workers_running(host, timeout: float = 90):
    wait_for(
        lambda: all_running(host, worker_names(host)),
        timeout,
        2,
        "all kiln-worker RUNNING",
        evidence=lambda: supervisor_text(host) + worker_logs(host),
    )


@pytest.fixture(autouse=True)
def workers_ready(host):
    wait_workers_running(host)
    yield
    wait_workers_running(host)


def _proc_of_pid(host, pid: int) -> str:
    for name, p in supervisor_status(host).items():
        if p.pid == pid:
            return name
    raise AssertionError(f"pid {pid} is no supervisor program:\n{supervisor_text(host)}")


def test_job_in_progress_survives_sigterm_of_its_worker(host):
    st = started(host, 15)
    job_id, pid = st["id"], st["worker"]["pid"]
    name = _proc_of_pid(host, pid)
    sh(host, f"kill -TERM {pid}")
    final = wait_final(host, job_id, 90, want=("finished", "failed"))
    assert final["status"] == "finished", f"job lost its work on SIGTERM of {name} (pid {pid}): {final}"
    # the worker exits after the job (warm shutdown) and supervisor starts a new one
    wait_for(
        lambda: (p := supervisor_status(host).get(name)) and p.state == "RUNNING" and p.pid != pid,
        60,
        1,
        f"{name} restarted with a new pid",
        evidence=lambda: supervisor_text(host),
    )


def test_job_in_progress_survives_supervisorctl_restart_of_its_worker(host):
    # what a deploy does: supervisor sends TERM (stopasgroup) and waits stopwaitsecs for the warm shutdown
    st = started(host, 15)
    job_id = st["id"]
    name = _proc_of_pid(host, st["worker"]["pid"])
    res = sh(host, f"supervisorctl restart {name}", ok=None, timeout=120)
    final = wait_final(host, job_id, 90, want=("finished", "failed"))
    assert final["status"] == "finished", f"job killed by `supervisorctl restart {name}`: {final}\n{res.stdout}"


def test_job_of_a_worker_killed_mid_job_is_retried_to_completion(host):
    st = started(host, 20, retries=1)
    job_id, pid = st["id"], st["worker"]["pid"]
    name = _proc_of_pid(host, pid)
    # its children: the work horse (own process group) and, with --with-scheduler, the scheduler process
    children = " ".join(out(host, f"pgrep -P {pid} || true").split())
    # the worker and its children die at once, as in an OOM kill
    sh(host, f"kill -9 {pid} {children}")
    wait_for(
        lambda: (p := supervisor_status(host).get(name)) and p.pid != pid and p.state == "RUNNING",
        60,
        1,
        f"{name} back after kill -9",
        evidence=lambda: supervisor_text(host),
    )
    after = state(host, job_id)
    assert after["in_started"] or after["in_queue"] or after["in_failed"] or after["status"] == "finished", (
        f"job is in no registry after kill -9 of its worker: {after}"
    )
    # rq's maintenance (every 10 min in each worker) handles started jobs whose heartbeat expired: run that now,
    # with the clock moved past the heartbeat TTL, instead of waiting for it.
    rq(host, "StartedJobRegistry(queue=q).cleanup(timestamp=time.time() + 3600); print('{}')")
    # The job had one retry: the killed run used it, so the job ran again, to the end, on a worker.
    final = wait_final(host, job_id, 120, want=("finished", "failed"))
    runs = rq(
        host,
        f"""
        job = Job.fetch({job_id!r}, connection=conn)
        print(json.dumps({{"retries_left": job.retries_left, "worker": job.worker_name,
                           "ended_at": str(job.ended_at), "started_at": str(job.started_at)}}))
    """,
    )
    assert final["status"] == "finished", f"the retry of the killed job did not complete: {final} {runs}"
    assert runs["retries_left"] == 0, f"the job finished without using its retry (it was never killed?): {runs}"
    print(f"job {job_id}: killed with {name} (pid {pid}), retried and finished: {runs}")


def test_queued_jobs_survive_a_restart_and_a_crash_of_the_queue_redis(host):
    # a queue no worker listens on, so the jobs stay queued
    ids = rq(
        host,
        """
        from rq import Queue
        tq = Queue("kiln-infra-test", connection=conn)
        tq.empty()
        ids = [tq.enqueue("time.sleep", 1, job_id=f"kiln-infra-{i}").id for i in range(3)]
        print(json.dumps(ids))
    """,
    )
    check = """
        from rq import Queue
        tq = Queue("kiln-infra-test", connection=conn)
        print(json.dumps(sorted(tq.get_job_ids())))
    """
    try:
        sh(host, "systemctl restart redis-server@queue")
        wait_for(lambda: "PONG" in redis_cli(host, "queue", "PING", ok=None).stdout, 30, 1, "queue redis PONG")
        assert rq(host, check) == sorted(ids), "queued jobs lost over `systemctl restart redis-server@queue`"
        # crash: no shutdown save; AOF everysec keeps what is older than ~1 s
        sh(host, "sleep 2; kill -9 $(systemctl show -p MainPID --value redis-server@queue)")
        wait_for(
            lambda: "PONG" in redis_cli(host, "queue", "PING", ok=None).stdout,
            60,
            1,
            "queue redis back after kill -9",
            evidence=lambda: out(host, "systemctl status redis-server@queue --no-pager -n 20 || true"),
        )
        assert rq(host, check) == sorted(ids), "queued jobs lost over kill -9 of redis-server@queue"
    finally:
        rq(host, 'from rq import Queue\nQueue("kiln-infra-test", connection=conn).empty()\nprint("{}")')
    wait_workers_running(host, 120)


def test_full_cache_redis_evicts_to_stay_within_its_memory(host):
    cache_before = redis_info(host, "cache", "stats")
    mem = redis_info(host, "cache", "memory")
    maxmem = int(mem.get("maxmemory", "0"))
    assert maxmem > 0, f"cache redis has no maxmemory: {mem}"
    assert mem.get("maxmemory_policy") in ("allkeys-lru", "allkeys-lfu", "volatile-lru"), mem.get("maxmemory_policy")
    assert redis_info(host, "queue", "memory").get("maxmemory_policy") == "noeviction"
    # write ~2x maxmemory in 100 KiB values, 5 MiB per call (each call evicts before it runs)
    fill = (
        "EVAL \"for i=1,50 do redis.call('SET','kiln-infra-fill:'..ARGV[1]..':'..i, string.rep('x',102400)) end "
        'return 1" 0'
    )
    calls = 2 * maxmem // (50 * 102400) + 1
    try:
        for n in range(calls):
            redis_cli(host, "cache", f"{fill} {n}")
        cache_after = redis_info(host, "cache", "stats")
        used = int(redis_info(host, "cache", "memory")["used_memory"])
        evicted = int(cache_after["evicted_keys"]) - int(cache_before["evicted_keys"])
        assert evicted > 0, f"cache redis evicted nothing after writing {calls * 5} MiB: {cache_after}"
        assert used <= maxmem * 1.1, f"cache used_memory {used} > maxmemory {maxmem}"
    finally:
        redis_delete(host, "cache", "kiln-infra-fill:*")
    # the app still works with its cache churned
    r = json.loads(out(host, "curl -s -H 'Host: localhost' http://127.0.0.1/readyz"))
    assert r["cache"]["ok"] and r["queue"]["ok"], r


def test_full_queue_redis_refuses_writes_and_evicts_nothing(host):
    # The queue instance itself under memory pressure: filled to its maxmemory, it must refuse new writes (OOM under
    # noeviction) and keep every job it holds; readiness reports it (503), and recovers once there is room again.
    mem = redis_info(host, "queue", "memory")
    maxmem = int(mem.get("maxmemory", "0"))
    assert maxmem > 0 and mem.get("maxmemory_policy") == "noeviction", mem
    evicted_before = redis_info(host, "queue", "stats")["evicted_keys"]
    # a job in a queue no worker consumes, so it stays while the instance is full
    held = 'from rq import Queue\nhq = Queue("kiln-infra-held", connection=conn)\n'
    kept = "kiln-infra-kept"
    rq(host, held + f'hq.enqueue("time.sleep", 0, job_id="{kept}")\nprint("{{}}")')
    fill = (
        "EVAL \"for i=1,50 do redis.call('SET','kiln-infra-qfill:'..ARGV[1]..':'..i, string.rep('x',102400)) end "
        'return 1" 0'
    )
    # 5 MB a write, up to twice maxmemory, in one loop on the target (a command each from here: ~2 s apiece under TCG)
    h, p, pw = redis_conn(host, "queue")
    writes = 2 * maxmem // (50 * 102400) + 2
    loop = (
        f"export REDISCLI_AUTH={shlex.quote(pw)}; for n in $(seq 0 {writes - 1}); do "
        f"r=$(redis-cli --no-raw -h {h} -p {p} {fill} $n 2>&1); "
        'case $r in *OOM*) printf "%s %s" "$n" "$r" | head -c 200; exit 0;; esac; done'
    )
    refused = None
    try:
        said = out(host, loop, timeout=600)
        if said:
            n, _, msg = said.partition(" ")
            refused = (int(n), msg)
        assert refused, f"queue redis took {2 * maxmem} bytes past its maxmemory {maxmem} without refusing"
        ready = sh(host, "curl -s -o /dev/null -w '%{http_code}' -H 'Host: localhost' http://127.0.0.1/readyz").stdout
        assert ready == "503", f"readiness with a full queue redis: {ready}"
        stats = redis_info(host, "queue", "stats")
        assert stats["evicted_keys"] == evicted_before, f"queue redis evicted keys: {evicted_before} -> {stats}"
        jobs = rq(host, held + "print(json.dumps(hq.get_job_ids()))")
        assert jobs == [kept], f"the job held in the full queue redis: {jobs}"
        print(f"queue redis full: write {refused[0]} refused ({refused[1]}), readyz {ready}, evicted 0, job kept")
    finally:
        redis_delete(host, "queue", "kiln-infra-qfill:*")
        rq(host, held + 'hq.empty()\nprint("{}")')
    r = json.loads(out(host, "curl -s -H 'Host: localhost' http://127.0.0.1/readyz"))
    assert r["queue"]["ok"], f"readiness after the queue redis was emptied again: {r}"
