#!/usr/bin/env bash
# Kiln provisioner: the single entry point used by Packer, the Vagrantfile and the nspawn test tier.
#   sudo provision/install.sh            # run all steps (idempotent: a second run changes nothing)
#   sudo provision/install.sh 40 60      # run only steps whose number starts with 40 or 60 (debugging), then the
#                                        # apply steps 89 and 99, as every run: they restart and reload what this
#                                        # or an earlier run changed and no run has applied yet
#                                        # (/var/lib/kiln/provision.pending)
# Expects the app source next to it: $(dirname install.sh)/../app (override: KILN_APP_SRC, the folder with manage.py
# and the app's contract, [tool.kiln] in its pyproject.toml).
# Environment (all optional):
#   KILN_VERSION        release name for /srv/kiln/releases/<version> [default: 0.0.0+<app content hash>]
#   KILN_COMMIT         VCS commit recorded in /etc/kiln/release [default: unknown]
#   KILN_BUILD_CA_DIR   directory of extra *.crt (also in subdirectories) to trust while provisioning (an
#                       intercepting proxy's / corporate CA): this run's process tree gets a bundle of the system's
#                       CAs plus these in a temporary file (SSL_CERT_FILE, PIP_CERT, CURL_CA_BUNDLE,
#                       REQUESTS_CA_BUNDLE, apt's Acquire::https::CaInfo via APT_CONFIG); the trust store is never
#                       touched, and the bundle is removed when install.sh exits
#   KILN_WHEELHOUSE     directory of prebuilt wheels for the app's lock (packer/scripts/build-wheelhouse.sh): the
#                       release venv is installed offline from it, without build deps [default: pip from PyPI]
#   KILN_DISTRO         force the distro profile (debian-13 | ubuntu-24.04) [default: from /etc/os-release]
set -euo pipefail
umask 022
KILN_PROVISION_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KILN_APP_SRC=${KILN_APP_SRC:-$(cd "$KILN_PROVISION_DIR/.." && pwd)/app}
export KILN_PROVISION_DIR KILN_APP_SRC
# shellcheck source=provision/lib/common.sh
. "$KILN_PROVISION_DIR/lib/common.sh"

[ "$(id -u)" -eq 0 ] || die "must run as root (sudo $0)"
load_distro
[ -d "$KILN_APP_SRC" ] || die "app source directory not found: $KILN_APP_SRC (set KILN_APP_SRC)"
[ -f "$KILN_APP_SRC/manage.py" ] || die "missing required file $KILN_APP_SRC/manage.py"
# The app's contract ([tool.kiln] in its pyproject.toml): checked here when this system has a Python for it, and
# always by kiln-release (step 40) before it builds anything; `make image` and `vagrant up` check it on the host.
if command -v python3 >/dev/null && python3 -c 'import tomllib' 2>/dev/null; then
  python3 "$KILN_FILES/usr/local/lib/kiln/kiln_app.py" check "$KILN_APP_SRC" --distro "$KILN_DISTRO" \
    || die "the app's contract has problems (above): nothing was changed"
fi
if [ -n "${KILN_BUILD_CA_DIR:-}" ] && [ ! -d "$KILN_BUILD_CA_DIR" ]; then
  die "KILN_BUILD_CA_DIR=$KILN_BUILD_CA_DIR is not a directory (a directory of *.crt, or unset for none)"
fi
# Host-side pip settings must never leak into the image build.
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_NO_INDEX

# This run's scratch space: the change log the steps append to, the build CA bundle. Readable by all: apt's
# download methods run as _apt and read the bundle (nothing secret is kept here).
KILN_TMP=$(mktemp -d /tmp/kiln-provision.XXXXXX)
trap 'rm -rf "$KILN_TMP"' EXIT
chmod 0755 "$KILN_TMP"
KILN_CHANGES=$KILN_TMP/changes
: >"$KILN_CHANGES"
# Restarts and reloads asked for and not applied yet: kept across runs, so a failed or partial run leaves them to the
# next one; the apply steps (89, 99) apply them and 99 clears the file.
KILN_PENDING=/var/lib/kiln/provision.pending
mkdir -p "${KILN_PENDING%/*}" || die "cannot create ${KILN_PENDING%/*}"
export KILN_CHANGES KILN_PENDING
if [ -s "$KILN_PENDING" ]; then
  log "pending from an earlier run, applied by this one: $(sort -u "$KILN_PENDING" | tr '\n' ' ')"
fi

only=("$@")
total_start=$(date +%s)
printf '==> kiln provision: %s (%s), app %s, %s\n' "$KILN_DISTRO" "$DISTRO_PRETTY" "$KILN_APP_SRC" \
  "$(booted && echo 'systemd running' || echo 'offline/chroot: services are enabled, not started')"

# Build CAs are trusted by this process tree only, never through the trust store: installing them there made
# every provision a change (update-ca-certificates rewrote /etc/ssl/certs: a minute under emulation) and left them for
# cleanup.sh to take out of the image again. Services started through systemctl do not inherit the variables.
# apt's https method (GnuTLS) reads no SSL_CERT_FILE, hence its own setting, added to its configuration by APT_CONFIG.
if [ -n "${KILN_BUILD_CA_DIR:-}" ]; then
  mapfile -t build_cas < <(find "$KILN_BUILD_CA_DIR" -name '*.crt' -xtype f | LC_ALL=C sort)
  if [ ${#build_cas[@]} -gt 0 ]; then
    bundle=$KILN_TMP/ca-bundle.pem system_cas=/etc/ssl/certs/ca-certificates.crt
    if [ -f "$system_cas" ]; then cat "$system_cas" >"$bundle"; else warn "no $system_cas: only the build CAs are trusted"; fi
    cat "${build_cas[@]}" >>"$bundle"
    printf 'Acquire::https::CaInfo "%s";\n' "$bundle" >"$KILN_TMP/apt.conf"
    export SSL_CERT_FILE=$bundle PIP_CERT=$bundle CURL_CA_BUNDLE=$bundle REQUESTS_CA_BUNDLE=$bundle \
      APT_CONFIG=$KILN_TMP/apt.conf
    log "build CAs trusted by this run only (${bundle}): ${build_cas[*]##*/}"
  fi
fi

for step in "$KILN_PROVISION_DIR"/steps/[0-9][0-9]-*.sh; do
  name=$(basename "$step" .sh)
  if [ ${#only[@]} -gt 0 ]; then
    match=0; for o in "${only[@]}" 89 99; do [[ $name == "$o"* ]] && match=1; done
    [ "$match" -eq 1 ] || continue
  fi
  before=$(wc -l <"$KILN_CHANGES")
  printf '==> [%s] %s  (%s)\n' "$name" "$(sed -n 's/^# step: //p' "$step" | head -1)" "$(date -u +%T)"
  t0=$(date +%s)
  bash "$step" || die "step $name failed"
  after=$(wc -l <"$KILN_CHANGES")
  printf '<== [%s] done in %ss, %s change(s)\n' "$name" "$(( $(date +%s) - t0 ))" "$(( after - before ))"
done
n=$(grep -c '^changed ' "$KILN_CHANGES" || true)
printf '==> kiln provision finished in %ss: %s change(s)%s\n' "$(( $(date +%s) - total_start ))" "$n" \
  "$([ "$n" -eq 0 ] && echo ' (system already up to date)')"
