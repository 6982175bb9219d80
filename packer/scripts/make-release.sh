#!/usr/bin/env bash
# make release: a release artifact of APP_DIR for DISTRO, which a server deploys offline (`kiln deploy FILE`): the app
# and its wheelhouse, built natively as `make image` builds them (build-wheelhouse.sh: the same wheels, hashes and
# bytecode), checked by the server against the manifest inside (provision/.../kiln_artifact.py, its format).
# Usage: packer/scripts/make-release.sh DISTRO APP_DIR OUT_DIR [NAME]      (root: the wheelhouse's builder)
#   NAME: the release's name on the server (default: the contract's version + 12 digits of the app tree's hash)
# Prints the artifact's path: OUT_DIR/<contract name>-<NAME>.kiln.tar. The wheelhouse is cached per lock in
# KILN_CACHE_DIR [<repo>/build/cache] as <DISTRO>-wheelhouse-<12 digits of the lock's hash>.
set -euo pipefail
{ [ $# -ge 3 ] && [ $# -le 4 ]; } || { echo "usage: $0 DISTRO APP_DIR OUT_DIR [NAME]" >&2; exit 2; }
distro=$1 app=$2 out=$3 name=${4:-}
repo=$(cd "$(dirname "$0")/../.." && pwd)
lib=$repo/provision/files/usr/local/lib/kiln
[ -d "$app" ] || { echo "make-release: APP_DIR $app is not a directory" >&2; exit 2; }

echo "make-release: checking the contract of $app for $distro" >&2
app_env=$(python3 "$lib/kiln_app.py" show "$app" --format env --distro "$distro") \
  || { echo "make-release: the app's contract has problems (above): nothing built" >&2; exit 1; }
eval "$app_env"   # KILN_APP_* (shlex-quoted assignments)
cache=${KILN_CACHE_DIR:-$repo/build/cache}
"$repo/tools/apt-ensure.sh" mmdebstrap systemd-container >&2   # build-wheelhouse.sh's builder
wheels=$cache/$distro-wheelhouse-$(sha256sum "$app/$KILN_APP_LOCK" | cut -c1-12)
"$repo/packer/scripts/build-wheelhouse.sh" "$distro" "$app" "$wheels" >&2

origin=""
if git -C "$app" rev-parse --git-dir >/dev/null 2>&1; then
  origin="git $(git -C "$app" describe --always --dirty --abbrev=12 2>/dev/null || true)"
fi
tmp=$out/.make-release.$$
trap 'rm -f "$tmp"' EXIT
name=$(python3 "$lib/kiln_artifact.py" pack --app "$app" --wheels "$wheels" --distro "$distro" --out "$tmp" \
  --version "$KILN_APP_VERSION" ${name:+--name "$name"} ${origin:+--origin "$origin"})
file=$out/$KILN_APP_NAME-$name.kiln.tar
mv "$tmp" "$file"
echo "make-release: $file ($(du -h "$file" | cut -f1), release $name for $distro; deploy: kiln deploy FILE on the server)" >&2
echo "$file"
