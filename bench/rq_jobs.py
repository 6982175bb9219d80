"""The jobs of make bench's rq measurement (bench/rq_bench.py enqueues them; the worker imports this module from
/opt/kiln-bench, where bench/run.sh puts bench/ in the server)."""

import time

DONE_KEY = "kiln-bench:rq:last-done"


def noop() -> None:
    """Nothing: what rq itself costs per job."""


def one_query() -> bool:
    """One ORM query, on the app's database connection (a new one per job in a forked work horse)."""
    from records.models import Record

    return Record.objects.filter(pk__gt=0).exists()


def mark_done(job, connection, result, *args, **kwargs) -> None:
    """on_success of a measurement's last job: the wall-clock time it was done (the worker's own stop is not counted:
    a burst worker's takes 0-1 s, waiting for its pubsub thread, which a long-running worker never pays per job)."""
    connection.set(DONE_KEY, repr(time.time()))
