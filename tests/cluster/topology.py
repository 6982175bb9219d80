"""The cluster test's topology as a picture (README, "Beyond one server"): the hosts, roles, addresses, units and
open ports of tests/cluster/cluster.py (ADDR, ROLE, ROLE_UNITS, ROLE_PORTS: what the test boots and checks), and who
talks to whom on which port.

  /usr/bin/python3 tests/cluster/topology.py OUT.png     (Debian's python3-matplotlib, as bench/chart.py)
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster import ADDR, PRIVATE_NET, ROLE, ROLE_PORTS, ROLE_UNITS

# Where each box sits (x, y: centre) and what it is.
PLACE = {
    "client": (0.53, 0.9),
    "lb": (0.53, 0.68),
    "web1": (0.3, 0.44),
    "web2": (0.76, 0.44),
    "worker": (0.87, 0.14),
    "data": (0.33, 0.14),
    "replica": (0.33, -0.1),
}
COLOUR = {
    "lb": "#fde2b8",
    "web": "#cfe8fc",
    "worker": "#d9f2d0",
    "data": "#f3d1dc",
    "data-replica": "#ead9f5",
    "client": "#eeeeee",
}
# (from, to, label): the connections the test exercises
LINKS = [
    ("client", "lb", "HTTPS 443"),
    ("lb", "web1", "HTTPS 443, GET /readyz 1 s"),
    ("lb", "web2", "HTTPS 443, GET /readyz 1 s"),
    ("web1", "data", "3306, 6379, 6380"),
    ("web2", "data", "3306, 6379, 6380"),
    ("worker", "data", "3306, 6379, 6380"),
    ("data", "replica", "3306: GTID replication; backups from the replica"),
]
W, H = 0.34, 0.13


def label(name: str) -> str:
    if name == "client":
        return f"client {ADDR['client']}\nload loop, port scans, S3 (moto)"
    role = ROLE[name]
    units = ", ".join(sorted(u.removesuffix(".service") for u in ROLE_UNITS[role]))
    ports = " ".join(str(p) for p in sorted(ROLE_PORTS[role]))
    return f"{name} {ADDR[name]}  KILN_ROLE={role}\n{units}\nufw: {ports}"


def main(out: str) -> None:
    fig, ax = plt.subplots(figsize=(10, 9.2))
    ax.set_xlim(0.1, 1.06)
    ax.set_ylim(-0.2, 1)
    ax.axis("off")
    for name, (x, y) in PLACE.items():
        colour = COLOUR["client" if name == "client" else ROLE[name]]
        ax.add_patch(
            FancyBboxPatch((x - W / 2, y - H / 2), W, H, boxstyle="round,pad=0.01", fc=colour, ec="#444444", lw=1)
        )
        ax.text(x, y, label(name), ha="center", va="center", fontsize=8.5)
    for a, b, text in LINKS:
        (x1, y1), (x2, y2) = PLACE[a], PLACE[b]
        if abs(y1 - y2) < H:  # side by side: edge to edge
            start, end = (x1 - W / 2, y1), (x2 + W / 2, y2)
        else:  # one above the other: bottom to top
            start, end = (x1, y1 - H / 2), (x2, y2 + H / 2)
        ax.add_patch(
            FancyArrowPatch(
                start,
                end,
                arrowstyle="-|>",
                mutation_scale=12,
                color="#555555",
                shrinkA=2,
                shrinkB=2,
            )
        )
        ax.text((x1 + x2) / 2 + 0.01, (y1 + y2) / 2 + 0.015, text, fontsize=7.5, color="#333333", ha="center")
    ax.set_title(
        f"make test-cluster: one image in roles, a private network {PRIVATE_NET} of namespaces (systemd-nspawn)",
        fontsize=10,
    )
    fig.savefig(out, dpi=100, bbox_inches="tight")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "cluster-topology.png")
