"""`vagrant provision` on a provisioned server changes nothing: /etc, packages, the venv, running processes."""

import difflib
import re
import warnings

import pytest

from kilnlib import SERVICES, VENV_PY, main_pid, supervisor_status

# Files that legitimately change on their own while the system runs.
ETC_VOLATILE = re.compile(r"^/etc/(adjtime|resolv\.conf|ld\.so\.cache)$")


def snapshot(host) -> dict[str, str]:
    etc = host.run(
        "find /etc -xdev \\( -type f -o -type l \\) -printf '%p %m %u:%g %l\\n' | sort; "
        "find /etc -xdev -type f -print0 | sort -z | xargs -0 sha256sum"
    ).stdout
    etc = "\n".join(
        ln
        for ln in etc.splitlines()
        if not ETC_VOLATILE.match(ln.split()[-1] if " " in ln else ln) and not ETC_VOLATILE.match(ln.split()[0])
    )
    return {
        "etc": etc,
        "dpkg": host.run("dpkg-query -W -f '${Package} ${Version} ${Status}\\n' | sort").stdout,
        "pip": host.run(f"{VENV_PY} -m pip freeze --all 2>/dev/null | sort").stdout,
        "release": host.run("readlink -f /srv/kiln/current; ls /srv/kiln/releases").stdout,
        "supervisor": "\n".join(f"{n} {p.state} {p.pid}" for n, p in sorted(supervisor_status(host).items())),
        "services": "\n".join(f"{u} {main_pid(host, u)}" for u in SERVICES),
    }


def diff(a: dict[str, str], b: dict[str, str]) -> str:
    out = []
    for k in a:
        if a[k] != b[k]:
            d = difflib.unified_diff(
                a[k].splitlines(), b[k].splitlines(), f"{k} before", f"{k} after", lineterm="", n=0
            )
            out.append("\n".join(list(d)[:60]))
    return "\n".join(out)


def changes(log: str) -> int | None:
    m = re.findall(r"kiln provision finished in \d+s: (\d+) change", log)
    return int(m[-1]) if m else None


@pytest.mark.vagrant
def test_second_vagrant_provision_changes_nothing(host, kiln_vm):
    before = snapshot(host)
    log1 = kiln_vm.provision()
    mid = snapshot(host)
    first = diff(before, mid)
    if first or changes(log1):
        # e.g. the baked image was built from other sources than the ones rsynced now: report, then judge run 2
        warnings.warn(f"first `vagrant provision` changed things ({changes(log1)} change(s)):\n{first[:3000]}")
        log2 = kiln_vm.provision()
        after = snapshot(host)
        assert changes(log2) == 0, f"second provision reported changes:\n{log2[-3000:]}"
        assert not diff(mid, after), f"second `vagrant provision` changed the system:\n{diff(mid, after)}"
    else:
        assert changes(log1) == 0, log1[-3000:]
