#!/usr/bin/env bash
# Kiln provisioner: the single entry point used by Packer, the Vagrantfile and the nspawn test tier.
#   sudo provision/install.sh            # run all steps (idempotent: a second run changes nothing)
#   sudo provision/install.sh 40 60      # run only steps whose number starts with 40 or 60 (debugging)
# Expects the app source next to it: $(dirname install.sh)/../app (override: KILN_APP_SRC).
# Environment (all optional):
#   KILN_VERSION        release name for /srv/kiln/releases/<version> [default: 0.0.0+<app content hash>]
#   KILN_COMMIT         VCS commit recorded in /etc/kiln/release [default: unknown]
#   KILN_BUILD_CA_DIR   directory of extra *.crt to trust while building (intercepting proxy / corporate CA);
#                       installed to /usr/local/share/ca-certificates/kiln-build/, removed by provision/cleanup.sh
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
[ -f "$KILN_APP_SRC/requirements.txt" ] || die "missing required file $KILN_APP_SRC/requirements.txt (the app's lock file)"
[ -f "$KILN_APP_SRC/manage.py" ] || die "missing required file $KILN_APP_SRC/manage.py"
# Host-side pip settings must never leak into the image build.
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_NO_INDEX

KILN_CHANGES=$(mktemp /tmp/kiln-provision.XXXXXX)
export KILN_CHANGES
trap 'rm -f "$KILN_CHANGES"' EXIT

only=("$@")
total_start=$(date +%s)
printf '==> kiln provision: %s (%s), app %s, %s\n' "$KILN_DISTRO" "$DISTRO_PRETTY" "$KILN_APP_SRC" \
  "$(booted && echo 'systemd running' || echo 'offline/chroot: services are enabled, not started')"
for step in "$KILN_PROVISION_DIR"/steps/[0-9][0-9]-*.sh; do
  name=$(basename "$step" .sh)
  if [ ${#only[@]} -gt 0 ]; then
    match=0; for o in "${only[@]}"; do [[ $name == "$o"* ]] && match=1; done
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
