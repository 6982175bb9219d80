"""make bench's chart: bench/chart.py RESULT.json OUT.png (Debian's python3-matplotlib; bench/run.sh calls it).

Left: req/s of every HTTP cell, median with its min-max over the repetitions (log scale: static files are 10-100x
pages). Right: rq jobs/s per worker class and job kind.
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {"kiln": "#c0392b", "do": "#2e86c1", "fork": "#7f8c8d", "simple": "#27ae60"}
CONFIGS = {"kiln": "Kiln", "do": "DigitalOcean 1-Click"}


def bars(ax, rows, color_of) -> None:
    labels = [r[0] for r in rows]
    medians = [r[1]["median"] for r in rows]
    low = [r[1]["median"] - r[1]["min"] for r in rows]
    high = [r[1]["max"] - r[1]["median"] for r in rows]
    y = range(len(rows))
    ax.barh(y, medians, xerr=[low, high], color=[color_of(r) for r in rows], capsize=3)
    ax.set_yticks(list(y), labels)
    ax.invert_yaxis()
    for i, r in enumerate(rows):
        ax.text(r[1]["max"] * 1.05, i, f"{r[1]['median']:,.0f}", va="center", fontsize=8)


def main() -> int:
    src, out = sys.argv[1], sys.argv[2]
    with open(src) as f:
        result = json.load(f)
    meta, targets = result["meta"], result["meta"]["targets"]
    order = list(targets)
    cells = sorted(result["cells"].values(), key=lambda c: (order.index(c["target"]), c["connections"], c["config"]))
    http = [
        (f"{targets[c['target']]['label']}, c{c['connections']}: {CONFIGS[c['config']]}", c["rps"], c["config"])
        for c in cells
    ]
    rq = [(f"{r['kind']}: {r['worker']}", r["jobs_per_s"], r["worker"]) for r in result["rq"].values()]
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 7), gridspec_kw={"width_ratios": [3, 1]})
    bars(left, http, lambda r: COLORS[r[2]])
    left.set_xscale("log")
    left.set_xlabel("requests/s (median, min-max bars), HTTPS, keep-alive")
    bars(right, rq, lambda r: COLORS[r[2]])
    right.set_xlabel("rq jobs/s (" + ", ".join(f"{n} {kind}" for kind, n in meta["rq_jobs"].items()) + " jobs)")
    fig.suptitle(
        f"make bench, commit {meta['commit']} ({meta['mode']}): server pinned to 1 CPU, wrk to another; "
        f"{meta['machine']['nproc']} x {meta['machine']['cpu_model']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    return 0


if __name__ == "__main__":
    sys.exit(main())
