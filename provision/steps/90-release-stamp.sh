#!/usr/bin/env bash
# step: version stamp /etc/kiln/release (KILN_VERSION, KILN_COMMIT, KILN_BUILD_DATE, KILN_DISTRO)
set -euo pipefail
# shellcheck source=provision/lib/common.sh
. "$KILN_PROVISION_DIR/lib/common.sh"; load_distro

version=${KILN_VERSION:-$(basename "$(readlink -f /srv/kiln/current)")}
commit=${KILN_COMMIT:-unknown}
stamp=/etc/kiln/release
# Keep the old build date when nothing else changed, so a re-run does not rewrite the stamp.
if [ -f "$stamp" ] && grep -qx "KILN_VERSION=$version" "$stamp" && grep -qx "KILN_COMMIT=$commit" "$stamp" \
   && grep -qx "KILN_DISTRO=$KILN_DISTRO" "$stamp" && grep -qx "KILN_RELEASE_DIR=$(readlink -f /srv/kiln/current)" "$stamp"; then
  log "unchanged: $(grep -E '^KILN_(VERSION|BUILD_DATE)=' "$stamp" | xargs)"
  exit 0
fi
printf 'KILN_VERSION=%s\nKILN_COMMIT=%s\nKILN_BUILD_DATE=%s\nKILN_DISTRO=%s\nKILN_RELEASE_DIR=%s\n' \
  "$version" "$commit" "$(date -u +%FT%TZ)" "$KILN_DISTRO" "$(readlink -f /srv/kiln/current)" \
  | write_file "$stamp" 0644 root:root || true
