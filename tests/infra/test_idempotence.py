"""`vagrant provision` on a provisioned server changes nothing: /etc, packages, the venv, running processes."""

import difflib
import re

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
    # The baked box was provisioned by the same provision/ that Vagrant runs now: any change means the two disagree.
    # (It also runs while the Lynis audit of this VM is under way: a provision that changes nothing restarts nothing.)
    before = snapshot(host)
    log = kiln_vm.provision()
    after = snapshot(host)
    changed = diff(before, after)
    assert changes(log) == 0 and not changed, (
        f"`vagrant provision` of the provisioned box changed the system ({changes(log)} change(s) reported):\n"
        f"{changed[:3000]}\n--- provision log ---\n{log[-3000:]}"
    )
