"""Memory: no process of the server is killed for memory while the suites run.

make test runs these suites on a VM of the smallest VPS size (KILN_MEMORY=1024 from the Makefile's SMALL_VPS_MB, as
the boot check's instance b): there the deploys under load (test_release) start a second gunicorn beside the first,
a restore loads a dump, the jobs suite fills the queue Redis, the hostile battery sends large bodies. This module runs
after every other one (tests/infra/conftest.py) and reads the kernel's log of this boot and of the one before the
reboot suite's reboot.
"""

from kilnlib import out

OOM = "out of memory|oom-kill|invoked oom-killer"


def test_no_process_was_killed_for_memory_while_the_suites_ran(host):
    mem_mb = int(out(host, "free -m | awk '/^Mem:/ {print $2}'"))
    swap = out(host, 'free -m | awk \'/^Swap:/ {print $2 " MB swap, " $3 " MB used"}\'')
    boots = out(host, "journalctl --list-boots --no-pager -q | tail -n 2")
    log = out(
        host,
        "for b in -1 0; do journalctl -k -b $b --no-pager -q -o short-precise 2>/dev/null; done"
        f" | grep -iE '{OOM}' || true",
    )
    print(f"{mem_mb} MB of memory ({swap}); boots read:\n{boots}")
    assert not log, f"{mem_mb} MB: the kernel killed processes for memory:\n{log}"
