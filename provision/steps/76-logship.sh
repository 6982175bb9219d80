#!/usr/bin/env bash
# step: log shipping: rsyslog (the distro profile's PKG_LOGSHIP) sends the journal and the app's logs to the operator's
#       receiver over syslog-over-TLS; OFF, rsyslog disabled and stopped, until the operator's KILN_LOG_REMOTE is in
#       the instance env (kiln-logship; README, "Logs leave the server")
set -euo pipefail
# shellcheck source=provision/lib/common.sh
. "$KILN_PROVISION_DIR/lib/common.sh"; load_distro

put usr/local/sbin/kiln-logship 0755 || true
put usr/local/lib/kiln/rsyslog-kiln-remote.conf 0644 || true
# The units' drop-ins before the package: on a running system its postinst starts rsyslog, which must not run the
# package's rsyslog.conf (it writes /var/log/syslog and the like), nor start at all without Kiln's config, even for
# that moment; so systemd reads them at once then. (A Kiln base disk has the package already: the reload waits for
# step 99.)
dropin_changed=""
for unit in rsyslog.service syslog.socket; do
  dropin=$(render_vars "$KILN_FILES/etc/systemd/system/$unit.d/kiln.conf")
  if write_file "/etc/systemd/system/$unit.d/kiln.conf" 0644 root:root <<<"$dropin"; then
    need_restart daemon-reload; dropin_changed=1
  fi
done
if [ -n "$dropin_changed" ] && booted && ! pkg_installed rsyslog; then
  systemctl daemon-reload || die "systemctl daemon-reload failed"
fi
apt_install "${PKG_LOGSHIP[@]}"
ensure_dir "$KILN_LOGSHIP_SPOOL" 0700 root:root
# ON or OFF as the instance env says (no env in an image build: OFF); a changed template is rendered and applied.
"$KILN_FILES/usr/local/sbin/kiln-logship" apply
# Shipping ON and the unit's drop-in changed (an upgrade of a running server): rsyslogd runs the new command line.
if [ -n "$dropin_changed" ] && booted && systemctl is-active -q rsyslog.service; then
  systemctl daemon-reload || die "systemctl daemon-reload failed"
  systemctl restart rsyslog.service || die "rsyslog.service did not restart: journalctl -u rsyslog"
fi
