#!/usr/bin/env python3
"""Compare two image manifests (build/<distro>/*.manifest.json) and name every difference.

Usage: packer/scripts/compare-manifests.py A.manifest.json B.manifest.json
Exit: 0 the dpkg and pip package lists are the same; 1 they differ; 2 usage or unreadable input.

Package lists (name, version, arch for dpkg; name, version for pip) must match between two builds of one commit,
whether the caches were cold or warm. Everything else that differs is listed too (build ids, dates, stage seconds,
sizes are expected to differ and are reported as "expected"), so a reader sees all of it in one place.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# Fields that differ between any two builds by their nature.
EXPECTED = {
    "name",
    "version",
    "built_at",
    "stage_seconds",
    "build_seconds",
    "artifacts",
    "root_fs_used_bytes",
    "release_stamp",
    "venv",  # both carry the version and the build date
}


def packages(m: dict, key: str) -> dict[str, str]:
    out = {}
    for p in m.get(key, []):
        ident = p["name"] + (f":{p['arch']}" if p.get("arch") else "")
        out[ident] = p.get("version") or ""
    return out


def diff_packages(a: dict, b: dict, key: str) -> list[str]:
    pa, pb = packages(a, key), packages(b, key)
    lines = []
    for n in sorted(pa.keys() - pb.keys()):
        lines.append(f"{key}: only in A: {n} {pa[n]}")
    for n in sorted(pb.keys() - pa.keys()):
        lines.append(f"{key}: only in B: {n} {pb[n]}")
    for n in sorted(pa.keys() & pb.keys()):
        if pa[n] != pb[n]:
            lines.append(f"{key}: {n}: {pa[n]} (A) != {pb[n]} (B)")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    try:
        a, b = (json.loads(Path(f).read_text()) for f in argv[1:])
    except (OSError, ValueError) as e:
        print(f"compare-manifests: {e}", file=sys.stderr)
        return 2
    print(f"A: {argv[1]} ({a.get('version')}, commit {a.get('git_commit')})")
    print(f"B: {argv[2]} ({b.get('version')}, commit {b.get('git_commit')})")
    pkg_diffs = diff_packages(a, b, "dpkg") + diff_packages(a, b, "pip_freeze")
    for line in pkg_diffs:
        print("DIFF " + line)
    for k in sorted((a.keys() | b.keys()) - {"dpkg", "pip_freeze", "dpkg_count", "pip_count"}):
        if a.get(k) != b.get(k):
            tag = "expected" if k in EXPECTED else "DIFF"
            print(f"{tag} {k}: {json.dumps(a.get(k))[:200]} (A) != {json.dumps(b.get(k))[:200]} (B)")
    verdict = f"{len(pkg_diffs)} difference(s)" if pkg_diffs else "same"
    print(
        f"packages: dpkg {a.get('dpkg_count')} vs {b.get('dpkg_count')}, "
        f"pip {a.get('pip_count')} vs {b.get('pip_count')}: {verdict}"
    )
    return 1 if pkg_diffs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
