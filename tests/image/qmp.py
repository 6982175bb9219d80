#!/usr/bin/env python3
"""Send one QMP command to a QEMU: `qmp.py SOCKET stop|cont|query-status`; prints the VM's run state afterwards.

`stop` halts the guest's CPUs (its clock stands still too, so the guest sees no jump when it continues), `cont`
continues them; the QEMU process and its user-mode network stay up, so the guest's TCP sessions survive a hold.
Exit: 0 done; 1 QEMU refused the command or did not answer; 2 usage.
"""

from __future__ import annotations

import json
import socket
import sys


def call(f, command: str) -> dict:
    f.write(json.dumps({"execute": command}) + "\n")
    f.flush()
    while True:  # asynchronous events (STOP, RESUME...) may come before the answer
        line = f.readline()
        if not line:
            raise ConnectionError("QEMU closed the QMP socket")
        msg = json.loads(line)
        if "return" in msg or "error" in msg:
            return msg


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[2] not in ("stop", "cont", "query-status"):
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(argv[1])
            f = s.makefile("rw")
            json.loads(f.readline())  # greeting
            for command in ("qmp_capabilities", argv[2], "query-status"):
                msg = call(f, command)
                if "error" in msg:
                    print(f"qmp: {command}: {msg['error'].get('desc', msg['error'])}", file=sys.stderr)
                    return 1
            print(f"qmp: {argv[2]}: VM {msg['return'].get('status')}")
            return 0
    except (OSError, ValueError, ConnectionError) as e:
        print(f"qmp: {argv[1]}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
