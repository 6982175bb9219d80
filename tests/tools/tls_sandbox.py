"""Run kiln-letsencrypt where its DNS pre-check sees only what a test made: own network and mount namespaces (started
by `unshare --net --mount`, see run()), with tiny DNS servers on loopback addresses, its own /etc/hosts and
/etc/resolv.conf, a /run with systemd-resolved's upstream file, and optionally an interface with an address of the
"host". No query leaves the namespace: an address named there exists nowhere else.

    unshare --net --mount --propagation private python3 tls_sandbox.py SPEC.json

SPEC: {"argv": [...], "env": {...}, "workdir": DIR (for the files bound over /etc's),
       "hosts": TEXT, "resolv_conf": TEXT, "resolved_upstream": TEXT or null,
       "interface_address": "192.0.2.11/24" or null,
       "servers": [{"addr": "127.0.0.1", "port": 53, "zone": {NAME: {"A": [...], "AAAA": [...]}}}]}
A name missing from a zone gets NXDOMAIN, a name without records of the asked type an empty NOERROR answer.
The script's output goes to stdout/stderr, its exit status is this process's.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

QTYPES = {1: "A", 28: "AAAA"}


def question(packet: bytes) -> tuple[str, int, int]:
    """(name, qtype, offset after the question) of a query's first question."""
    labels, i = [], 12
    while packet[i]:
        labels.append(packet[i + 1 : i + 1 + packet[i]].decode("ascii"))
        i += 1 + packet[i]
    qtype = struct.unpack("!H", packet[i + 1 : i + 3])[0]
    return ".".join(labels).lower(), qtype, i + 5


def answer(packet: bytes, zone: dict) -> bytes:
    name, qtype, end = question(packet)
    (qid,) = struct.unpack("!H", packet[:2])
    records = zone.get(name)
    rcode = 3 if records is None else 0  # NXDOMAIN
    rrtype = QTYPES.get(qtype)
    addrs = (records or {}).get(rrtype, []) if rrtype else []
    family = socket.AF_INET if rrtype == "A" else socket.AF_INET6
    rrs = b"".join(
        struct.pack("!HHHIH", 0xC00C, qtype, 1, 60, len(data)) + data
        for data in (socket.inet_pton(family, a) for a in addrs)
    )
    flags = 0x8180 | rcode  # a response, recursion desired and available
    return struct.pack("!HHHHHH", qid, flags, 1, len(addrs), 0, 0) + packet[12:end] + rrs


def serve(sock: socket.socket, zone: dict) -> None:
    while True:
        packet, peer = sock.recvfrom(4096)
        try:
            sock.sendto(answer(packet, zone), peer)
        except (IndexError, struct.error, UnicodeDecodeError):
            continue  # not a query this server understands: no answer, as from a broken server


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    if spec.get("interface_address"):
        # a veth pair: hostname -I lists no loopback address, and this is the "host's" own address
        subprocess.run(["ip", "link", "add", "kiln0", "type", "veth", "peer", "name", "kiln1"], check=True)
        subprocess.run(["ip", "addr", "add", spec["interface_address"], "dev", "kiln0"], check=True)
        for dev in ("kiln0", "kiln1"):
            subprocess.run(["ip", "link", "set", dev, "up"], check=True)
    files = Path(spec["workdir"])
    (files / "hosts").write_text(spec.get("hosts", "127.0.0.1 localhost\n"))
    (files / "resolv.conf").write_text(spec.get("resolv_conf", ""))
    for name in ("hosts", "resolv.conf"):
        subprocess.run(["mount", "--bind", str(files / name), f"/etc/{name}"], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run"], check=True)
    if spec.get("resolved_upstream") is not None:
        Path("/run/systemd/resolve").mkdir(parents=True)
        Path("/run/systemd/resolve/resolv.conf").write_text(spec["resolved_upstream"])
    for server in spec.get("servers", []):
        addr = server["addr"]
        family = socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((addr, server.get("port", 53)))
        zone = {k.lower().rstrip("."): v for k, v in server["zone"].items()}
        threading.Thread(target=serve, args=(sock, zone), daemon=True).start()
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LANG": "C.UTF-8", **spec.get("env", {})}
    return subprocess.run(spec["argv"], env=env, timeout=120).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
