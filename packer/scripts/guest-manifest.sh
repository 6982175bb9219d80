#!/usr/bin/env bash
# Runs in the build VM (root): collects what the image contains into /tmp/kiln-manifest.tar for the JSON manifest
# (packer downloads it): dpkg packages, pip freeze of the release venv, kernel, os-release, release stamp, disk use.
set -euo pipefail
d=/tmp/kiln-manifest
rm -rf "$d"; mkdir -p "$d"
dpkg-query -W -f='${Package}\t${Version}\t${Architecture}\n' | sort >"$d/dpkg.tsv"
uname -r >"$d/kernel-running"
find /boot -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' | sed 's#^vmlinuz-##' | sort -V >"$d/kernels-installed"
cp /etc/os-release "$d/os-release"
[ -r /etc/kiln/release ] && cp /etc/kiln/release "$d/release"
venv=""
for c in /srv/kiln/current/venv /srv/kiln/releases/*/venv; do [ -x "$c/bin/python" ] && { venv=$c; break; }; done
if [ -n "$venv" ]; then
  readlink -f "$venv" >"$d/venv-path"
  env -u PIP_FIND_LINKS "$venv/bin/python" -m pip freeze --all --disable-pip-version-check >"$d/pip-freeze.txt" 2>/dev/null \
    || "$venv/bin/python" -m pip freeze >"$d/pip-freeze.txt"
  "$venv/bin/python" -V >"$d/python-version" 2>&1
fi
df -B1 --output=used / | tail -1 >"$d/root-used-bytes"
tar -C "$d" -cf /tmp/kiln-manifest.tar .
chmod 0644 /tmp/kiln-manifest.tar
echo "manifest: $(wc -l <"$d/dpkg.tsv") dpkg packages, $( [ -s "$d/pip-freeze.txt" ] && wc -l <"$d/pip-freeze.txt" || echo 0) pip packages, kernel $(cat "$d/kernel-running")"
