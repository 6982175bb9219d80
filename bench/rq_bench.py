"""make bench: rq throughput in the bench's server (bench/bench.py runs it there as the app's user, with the release's
venv and settings, as a transient unit: in the server's cgroup, on the server's CPU).
  rq_bench.py KIND:N:CLASS...   Django set up once, then for each measurement in order: empty the queue `default`,
      enqueue N jobs of KIND (noop | query: bench/rq_jobs.py), run `manage.py rqworker --burst --worker-class CLASS
      default` in this process, as Kiln's kiln-rqworker runs rq (less the scheduler), timed from its start until its
      last job was done; print a line per measurement: KILN-RQ-BENCH {"finished": jobs done, "seconds": that time,
      "server_cpu_us": the server's CPU time meanwhile (its cgroup, KILN_BENCH_CGROUP: the worker, its work horses,
      Redis, MariaDB)}
The app's own workers are stopped meanwhile (bench.py): they would take these jobs. One process for all: each
Django setup costs ~0.5 s of CPU natively, ~10 s under TCG.
"""

import json
import os
import sys
import time

import django
import rq_jobs
from django.core.management import call_command
from rq import Callback

QUEUE = "default"
PREFIX = "KILN-RQ-BENCH"  # of the report lines: rq's own log lines (JSON, the app's logging) go to stdout too
JOBS = {"noop": "rq_jobs.noop", "query": "rq_jobs.one_query"}


def server_cpu_usec() -> int:
    """The CPU time of the whole server: its cgroup (bench.py: the container's root, or the VM's system.slice)."""
    cgroup = os.environ["KILN_BENCH_CGROUP"]
    path = next(p for p in (f"{cgroup}/unified/cpu.stat", f"{cgroup}/cpu.stat") if os.path.exists(p))
    with open(path) as stat:
        return next(int(line.split()[1]) for line in stat if line.startswith("usage_usec "))


def measure(queue, kind: str, n: int, worker_class: str) -> None:
    queue.empty()
    queue.connection.delete(rq_jobs.DONE_KEY)
    # result_ttl=0: a finished job is deleted at once (nothing piles up over the repetitions). The last job marks when
    # it was done (rq_jobs.mark_done): the worker's time is up to then, from its start.
    jobs = [queue.prepare_data(JOBS[kind], result_ttl=0) for _ in range(n - 1)]
    jobs.append(queue.prepare_data(JOBS[kind], result_ttl=0, on_success=Callback(rq_jobs.mark_done)))
    queue.enqueue_many(jobs)
    failed = queue.failed_job_registry.count
    cpu, start = server_cpu_usec(), time.time()
    call_command("rqworker", QUEUE, burst=True, worker_class=worker_class)
    cpu = server_cpu_usec() - cpu
    done = queue.connection.get(rq_jobs.DONE_KEY)
    seconds = float(done) - start if done else time.time() - start
    finished = n - queue.count - (queue.failed_job_registry.count - failed)
    report = {"finished": finished, "seconds": round(seconds, 4), "server_cpu_us": cpu}
    print(PREFIX, json.dumps(report), flush=True)


def main() -> int:
    django.setup()
    import django_rq

    queue = django_rq.get_queue(QUEUE)
    for spec in sys.argv[1:]:
        kind, n, worker_class = spec.split(":", 2)
        measure(queue, kind, int(n), worker_class)
    return 0


if __name__ == "__main__":
    sys.exit(main())
