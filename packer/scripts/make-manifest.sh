#!/usr/bin/env bash
# Write build/<distro>/<name>.manifest.json from the guest's package lists (guest.tar from the packer build),
# the stage durations, the artifacts and the baked app (APP.json: `kiln_app.py show APP_DIR --format json`, its name,
# version and resolved contract).
# Usage: make-manifest.sh GUEST.tar STAGES.tsv OUTDIR NAME DISTRO VERSION COMMIT ACCEL BUILD_SECONDS APP.json
set -euo pipefail
usage="usage: $0 GUEST.tar STAGES.tsv OUTDIR NAME DISTRO VERSION COMMIT ACCEL BUILD_SECONDS APP.json"
[ $# -eq 10 ] || { echo "$usage" >&2; exit 2; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
tar -C "$tmp" -xf "$1"
for f in "$3/$4".*; do
  case $f in *.manifest.json) continue ;; esac
  printf '%s\t%s\t%s\n' "$(basename "$f")" "$(stat -c %s "$f")" \
    "$(qemu-img info --output=json "$f" 2>/dev/null | jq -r '.["virtual-size"] // empty' 2>/dev/null || true)"
done >"$tmp/artifacts.tsv"
packer_version=$(packer version 2>/dev/null | head -1 || true)
env -u PIP_FIND_LINKS python3 - "$tmp" "$2" "$3/$4.manifest.json" "$4" "$5" "$6" "$7" "$8" "$9" "$packer_version" "${10}" <<'PY'
import json, os, sys, datetime
d, stages, out, name, distro, version, commit, accel, total, packer, app_json = sys.argv[1:]
def read(f, default=""):
    p = os.path.join(d, f)
    return open(p).read().strip() if os.path.exists(p) else default
def kv(text):
    r = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1); r[k] = v.strip().strip('"')
    return r
pkgs = [dict(zip(("name", "version", "arch"), l.split("\t"))) for l in read("dpkg.tsv").splitlines() if l]
pip = []
for l in read("pip-freeze.txt").splitlines():
    if "==" in l:
        n, v = l.split("==", 1); pip.append({"name": n, "version": v})
    elif l.strip():
        pip.append({"name": l.strip(), "version": None})
arts = {}
for l in open(os.path.join(d, "artifacts.tsv")).read().splitlines():
    f, size, vsize = (l.split("\t") + ["", "", ""])[:3]
    arts[f] = {"bytes": int(size), "mib": round(int(size) / 1048576, 1)}
    if vsize:
        arts[f]["virtual_bytes"] = int(vsize)
st = {}
for l in open(stages).read().splitlines():
    if l:
        k, v = l.split("\t"); st[k] = int(v)
m = {
    "name": name, "distro": distro, "version": version, "git_commit": commit,
    "app": {k: v for k, v in json.load(open(app_json)).items() if k != "dir"},
    "built_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "accelerator": accel, "packer": packer,
    "os": kv(read("os-release")).get("PRETTY_NAME"), "release_stamp": kv(read("release")),
    "kernel": read("kernel-running"), "kernels_installed": read("kernels-installed").split(),
    "python": read("python-version"), "venv": read("venv-path"),
    "root_fs_used_bytes": int(read("root-used-bytes") or 0),
    "stage_seconds": st, "build_seconds": int(total), "artifacts": arts,
    "dpkg_count": len(pkgs), "pip_count": len(pip), "dpkg": pkgs, "pip_freeze": pip,
}
json.dump(m, open(out, "w"), indent=1)
print(f"manifest: {out} ({len(pkgs)} dpkg, {len(pip)} pip, kernel {m['kernel']})")
PY
