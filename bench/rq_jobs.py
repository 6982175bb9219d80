"""The jobs of make bench's rq measurement (bench/rq_bench.py enqueues them; the worker imports this module from
/opt/kiln-bench, where bench/run.sh mounts bench/ in the container)."""


def noop() -> None:
    """Nothing: what rq itself costs per job."""


def one_query() -> bool:
    """One ORM query, on the app's database connection (a new one per job in a forked work horse)."""
    from records.models import Record

    return Record.objects.filter(pk__gt=0).exists()
