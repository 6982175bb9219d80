#!/usr/bin/env bash
# step: the app as an immutable release: /srv/kiln/releases/<version>/{app,venv,static,kiln-app.env} + current symlink,
#       and the app's server config rendered from its contract (worker groups, timers, nginx locations)
set -euo pipefail
# shellcheck source=provision/lib/common.sh
. "$KILN_PROVISION_DIR/lib/common.sh"; load_distro

# The helpers the server-side tools (kiln-release, kiln-firstboot) share with this provisioner.
install_file "$KILN_PROVISION_DIR/lib/common.sh" /usr/local/lib/kiln/lib/common.sh 0644 || true
for f in "$KILN_PROVISION_DIR"/distro/*.sh; do
  install_file "$f" "/usr/local/lib/kiln/distro/$(basename "$f")" 0644 || true
done
put usr/local/sbin/kiln-release 0755 || true
# The operator's command (`kiln help`): kiln_cli.py, run by /usr/local/sbin/kiln; it imports kiln_ready.py.
put usr/local/sbin/kiln 0755 || true
put usr/local/lib/kiln/kiln_cli.py 0644 || true
# The app contract's reader (kiln-release checks and renders with it) and Kiln's readiness check of any app.
put usr/local/lib/kiln/kiln_app.py 0644 || true
put usr/local/lib/kiln/kiln_ready.py 0755 || true
ensure_symlink ../lib/kiln/kiln_ready.py /usr/local/bin/kiln-ready || true
# Kiln's Prometheus textfiles: kiln-release records each deploy's result with it (step 78 serves them).
put usr/local/lib/kiln/kiln_metrics.py 0644 || true
# Release artifacts (make release): kiln-release checks and unpacks them with it.
put usr/local/lib/kiln/kiln_artifact.py 0644 || true

# What kiln-release needs to deploy from a git URL.
apt_install "${PKG_DEPLOY[@]}"

before=$(readlink /srv/kiln/current 2>/dev/null || true)
KILN_PROVISION_DIR=/usr/local/lib/kiln /usr/local/sbin/kiln-release deploy "$KILN_APP_SRC" ${KILN_VERSION:+"$KILN_VERSION"}
after=$(readlink /srv/kiln/current)
if [ "$before" != "$after" ]; then changed "/srv/kiln/current -> $after"; fi
log "current release: $after"
