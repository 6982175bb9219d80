#!/usr/bin/env bash
# Build the app's dependencies as wheels for the target distro's Python, natively on the build host, so the emulated
# build VM only unpacks them (offline, hash-checked) and no compiler ever enters the image.
# Usage: packer/scripts/build-wheelhouse.sh DISTRO APP_DIR OUT_DIR
#
# The lock is the app contract's (`lock` of [tool.kiln] in APP_DIR/pyproject.toml, provision/.../kiln_app.py). A builder
# root file system of the target distro (mmdebstrap: python3-venv + the profile's PKG_BUILD_DEPS + the contract's
# build-packages) is cached in $KILN_CACHE_DIR; `pip wheel --require-hashes` runs in it under systemd-nspawn (the host's
# Python is another version). OUT_DIR then holds:
#   *.whl                      every locked distribution, for the target's Python ABI
#   requirements.txt           name==version --hash=sha256:<hash of the wheel in OUT_DIR>, what the guest installs
#   built-from-sdist.txt       the wheels built here from a locked sdist (their hashes are new; the sdist's was checked)
#   source-requirements.sha256 the hash of the app's lock it was built from (kiln-release checks it)
#   pycache.tar, pycache.prefix  the wheels' bytecode (checked-hash .pyc) and the venv folder it unpacks into
#   pip-runner.zip             the pip wheel's pip with its bytecode, which runs the install in the guest
# A wheel that PyPI ships is used as downloaded, so its hash is the lock's own; the script fails otherwise.
# Cache: OUT_DIR/.inputs (lock, build deps, this script); the same inputs reuse OUT_DIR.
# Env: KILN_CACHE_DIR [<repo>/build/cache], MIRROR [http://deb.debian.org/debian], FORCE=1 rebuilds.
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: $0 DISTRO APP_DIR OUT_DIR" >&2; exit 2; }
distro=$1 app=$2 out=$3
repo=$(cd "$(dirname "$0")/../.." && pwd)
[ "$(id -u)" -eq 0 ] || { echo "build-wheelhouse: must run as root (mmdebstrap, systemd-nspawn)" >&2; exit 1; }
# The lock and the build packages: the app's contract, resolved (shlex-quoted bash assignments: eval only assigns).
app_env=$(python3 "$repo/provision/files/usr/local/lib/kiln/kiln_app.py" show "$app" --format env --distro "$distro") \
  || { echo "build-wheelhouse: the app's contract has problems (above)" >&2; exit 1; }
eval "$app_env"
lock=$app/$KILN_APP_LOCK
[ -f "$lock" ] || { echo "build-wheelhouse: missing required file $lock (the app's lock file)" >&2; exit 1; }
grep -q -- '--hash=sha256:' "$lock" || { echo "build-wheelhouse: $lock has no --hash entries: a lock without hashes is refused" >&2; exit 1; }
cache=${KILN_CACHE_DIR:-$repo/build/cache}

# The build deps come from the distro profile and the contract, the same lists kiln-release uses when it compiles on a
# server.
# shellcheck source=/dev/null
. "$repo/provision/distro/$distro.sh"
case $distro in
  debian-13) suite=trixie mirror=${MIRROR:-http://deb.debian.org/debian} components=main
             keyring=/usr/share/keyrings/debian-archive-keyring.gpg ;;
  ubuntu-24.04) suite=noble mirror=${MIRROR:-http://archive.ubuntu.com/ubuntu} components=main,universe
             keyring=/usr/share/keyrings/ubuntu-archive-keyring.gpg ;;
  *) echo "build-wheelhouse: unknown DISTRO '$distro'" >&2; exit 2 ;;
esac
builder_pkgs=(python3-venv ca-certificates "${PKG_BUILD_DEPS[@]}" "${KILN_APP_BUILD_PACKAGES[@]}")
self=$(sha256sum "$0" | cut -c1-64)
bkey=$(printf "%s %s %s %s\n" "$suite" "$mirror" "$components" "${builder_pkgs[*]}" | sha256sum | cut -c1-16)
wkey=$(printf "%s %s %s\n" "$self" "$bkey" "$(sha256sum "$lock" | cut -c1-64)" | sha256sum | cut -c1-64)
# One build of a wheelhouse (and of a builder root) at a time: make test builds the image's beside the nspawn tier's
# release artifacts, which share the builder root and, for the same lock, the wheelhouse.
mkdir -p "$cache" "$(dirname "$out")"
exec 8>"$out.lock"
flock 8 || { echo "build-wheelhouse: cannot lock $out.lock" >&2; exit 1; }
if [ -z "${FORCE:-}" ] && [ "$(cat "$out/.inputs" 2>/dev/null)" = "$wkey" ] && [ -s "$out/requirements.txt" ]; then
  echo "build-wheelhouse: cached $out ($(find "$out" -name '*.whl' | wc -l) wheels, inputs ${wkey:0:12})"
  exit 0
fi

builder=$cache/$distro-wheel-builder-$bkey
exec 7>"$builder.lock"
flock 7 || { echo "build-wheelhouse: cannot lock $builder.lock" >&2; exit 1; }
if [ ! -x "$builder/usr/bin/python3" ]; then
  t0=$(date +%s)
  echo "build-wheelhouse: builder root $suite (${builder_pkgs[*]}) ..."
  rm -rf "$builder" "$builder.tmp"
  env -u PIP_FIND_LINKS mmdebstrap --variant=minbase --components="$components" --keyring="$keyring" \
    --include="$(IFS=,; echo "${builder_pkgs[*]}")" --aptopt='Acquire::Languages "none"' \
    --hook-dir=/usr/share/mmdebstrap/hooks/eatmydata \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    "$suite" "$builder.tmp" "deb $mirror $suite ${components//,/ }" >"$cache/$distro-wheel-builder.log" 2>&1 || {
      tail -30 "$cache/$distro-wheel-builder.log" >&2; rm -rf "$builder.tmp"; exit 1; }
  # mmdebstrap (root mode) can fail to unmount the chroot's /proc ("W: umount /proc failed": target is busy, seen on
  # this host) and still succeed: detach what it left, or the cached builder root carries a live /proc (a copy or an
  # rm -rf of it then walks the host's processes).
  findmnt -n -r -o TARGET | awk -v root="$builder.tmp/" 'index($0, root) == 1' | sort -r | while read -r m; do
    umount -l "$m" || { echo "build-wheelhouse: cannot unmount $m (left mounted by mmdebstrap)" >&2; exit 1; }
  done
  mv "$builder.tmp" "$builder"
  echo "build-wheelhouse: builder root done in $(( $(date +%s) - t0 ))s"
fi
exec 7>&-   # built: others may use it (each run is a throw-away overlay of it)

in_builder() { # in_builder NSPAWN-ARGS... CMD...: run CMD in a throw-away overlay of the builder (never modified)
  systemd-nspawn -q -D "$builder" -M kiln-wheels --register=no --keep-unit --volatile=overlay --timezone=off \
    --resolv-conf=copy-host --bind-ro=/etc/ssl/certs/ca-certificates.crt:/kiln/host-ca.pem \
    --setenv=PIP_DISABLE_PIP_VERSION_CHECK=1 --setenv=PIP_NO_CACHE_DIR=1 "$@" 2> >(grep -v 'Attempted to remove disk file system' >&2)
}

t0=$(date +%s)
rm -rf "$out.tmp"; mkdir -p "$out.tmp"
# HTTPS may be re-signed by an intercepting proxy: pip in the builder trusts the host's CA bundle (a read-only bind).
# The lock's folder is bound, so files it includes (-r) are there too.
# shellcheck disable=SC2016  # KILN_LOCK is expanded in the builder
in_builder --bind-ro="$(dirname "$(readlink -f "$lock")")":/kiln/lock --bind="$(readlink -f "$out.tmp")":/kiln/wheels \
  --setenv=PIP_CERT=/kiln/host-ca.pem --setenv=KILN_LOCK="/kiln/lock/$(basename "$lock")" \
  /bin/sh -euc 'python3 -m venv /tmp/wb && /tmp/wb/bin/pip wheel -q --require-hashes -w /kiln/wheels -r "$KILN_LOCK"
                cp /usr/share/python-wheels/pip-*.whl /kiln/wheels/
                mkdir /tmp/runner && cd /tmp/runner && python3 -m zipfile -e /kiln/wheels/pip-*.whl .
                python3 -m compileall -q -b -j 0 --invalidation-mode unchecked-hash pip >/dev/null
                python3 -m zipfile -c /kiln/wheels/pip-runner.zip pip
                python3 --version >/kiln/wheels/.python' \
  || { echo "build-wheelhouse: pip wheel failed in the $suite builder" >&2; exit 1; }

# The guest installs exactly these files: pin each by its own hash. Every downloaded wheel must carry a locked hash;
# the rest were built here from a locked (hash-checked) sdist and are listed as such, except pip: the distro's own
# wheel (python3-pip-whl, what `python3 -m venv` would put in the venv). The venv is made without ensurepip (its compile
# of pip is ~20 s of emulated CPU) and the install run by pip-runner.zip: that wheel's pip with its bytecode compiled
# here next to the sources, where zipimport finds it (pip run from its wheel compiles what it imports, ~15 s more).
lock_abs=$(readlink -f "$lock")
(
  cd "$out.tmp"
  : >requirements.txt; : >built-from-sdist.txt
  for w in *.whl; do
    [ -e "$w" ] || { echo "build-wheelhouse: pip produced no wheels" >&2; exit 1; }
    h=$(sha256sum "$w" | cut -c1-64)
    name=${w%%-*} rest=${w#*-}; version=${rest%%-*}
    printf '%s==%s --hash=sha256:%s\n' "$name" "$version" "$h" >>requirements.txt
    [ "$name" = pip ] || grep -q "sha256:$h" "$lock_abs" || printf '%s==%s %s\n' "$name" "$version" "$w" >>built-from-sdist.txt
  done
)
sha256sum "$lock" | cut -c1-64 >"$out.tmp/source-requirements.sha256"
got=$(wc -l <"$out.tmp/requirements.txt")
# The wheelhouse must be complete and consistent on its own (the guest installs it with --no-index): a trial install
# into a fresh venv of the target's Python, then pip check. Its bytecode becomes pycache.tar: compiling ~4,000 modules
# is most of an install under emulation. checked-hash .pyc files carry the hash of their source, not an mtime, so
# they are valid wherever the same wheels are unpacked, and Python itself recompiles any whose source differs.
# shellcheck disable=SC2016  # expanded inside the builder
in_builder --bind="$(readlink -f "$out.tmp")":/kiln/wheels \
  /bin/sh -euc 'python3 -m venv --without-pip /tmp/t && /tmp/t/bin/python /kiln/wheels/pip-runner.zip/pip install -q --no-compile \
                  --no-index --find-links /kiln/wheels --require-hashes -r /kiln/wheels/requirements.txt \
                && /tmp/t/bin/pip check >/dev/null
                sp=$(/tmp/t/bin/python -c "import sysconfig; print(sysconfig.get_paths()[\"purelib\"])")
                /tmp/t/bin/python -m compileall -q -j 0 --invalidation-mode checked-hash "$sp" >/dev/null
                cd "$sp" && find . -name "*.pyc" \
                  | LC_ALL=C sort | tar --owner=0 --group=0 --mtime=@315532800 -cf /kiln/wheels/pycache.tar -T -
                echo "${sp#/tmp/t/}" >/kiln/wheels/pycache.prefix' \
  || { echo "build-wheelhouse: the wheelhouse does not install on its own (offline, hashes, pip check)" >&2; exit 1; }
echo "$wkey" >"$out.tmp/.inputs"
rm -rf "$out"; mv "$out.tmp" "$out"
echo "build-wheelhouse: $out: $got wheels for $(cat "$out/.python"), $(wc -l <"$out/built-from-sdist.txt") built from sdist" \
  "($(tr '\n' ' ' <"$out/built-from-sdist.txt")) in $(( $(date +%s) - t0 ))s"
