"""make bench: rq throughput in the bench container (bench/bench.py runs it there as the app's user, with the release's
venv and settings, as a transient unit: in the container's cgroup, on the server's CPU).
  rq_bench.py KIND CLASS N   empty the queue `default`, enqueue N jobs of KIND (noop | query: bench/rq_jobs.py), then
                             run `manage.py rqworker --burst --worker-class CLASS default` in this process, Django set
                             up first, as Kiln's kiln-rqworker runs rq (less the scheduler); prints as its last line
                             {"finished": jobs done, "seconds": the worker's time, "server_cpu_us": the container's CPU
                             time meanwhile (its cgroup: the worker, its work horses, Redis, MariaDB)}
The app's own workers are stopped meanwhile (bench.py): they would take these jobs.
"""

import json
import os
import sys
import time

import django
from django.core.management import call_command

QUEUE = "default"
JOBS = {"noop": "rq_jobs.noop", "query": "rq_jobs.one_query"}


def container_cpu_usec() -> int:
    """The CPU time of the whole container: the root of its cgroup namespace (v2; unified/ on a hybrid layout)."""
    path = next(p for p in ("/sys/fs/cgroup/unified/cpu.stat", "/sys/fs/cgroup/cpu.stat") if os.path.exists(p))
    with open(path) as stat:
        return next(int(line.split()[1]) for line in stat if line.startswith("usage_usec "))


def main() -> int:
    django.setup()
    import django_rq

    kind, worker_class, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    queue = django_rq.get_queue(QUEUE)
    queue.empty()
    # result_ttl=0: a finished job is deleted at once (nothing piles up over the repetitions)
    queue.enqueue_many([queue.prepare_data(JOBS[kind], result_ttl=0) for _ in range(n)])
    failed = queue.failed_job_registry.count
    cpu, start = container_cpu_usec(), time.monotonic()
    call_command("rqworker", QUEUE, burst=True, worker_class=worker_class)
    seconds, cpu = time.monotonic() - start, container_cpu_usec() - cpu
    finished = n - queue.count - (queue.failed_job_registry.count - failed)
    print(json.dumps({"finished": finished, "seconds": round(seconds, 4), "server_cpu_us": cpu}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
