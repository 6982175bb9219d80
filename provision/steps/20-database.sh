#!/usr/bin/env bash
# step: database server (MariaDB on Debian, MySQL on Ubuntu): local only, durable; app DB/user come at first boot
set -euo pipefail
# shellcheck source=provision/lib/common.sh
. "$KILN_PROVISION_DIR/lib/common.sh"; load_distro

apt_install "${PKG_DB_SERVER[@]}"

if install_file "$KILN_FILES/etc/mysql/kiln.cnf" "$DB_CONF_DIR/90-kiln.cnf" 0644; then need_restart "$DB_SERVICE"; fi
unit=${DB_SERVICE%.service}
for dropin in kiln.conf kiln-early.conf "${DB_UNIT_EXTRA[@]}"; do
  if install_file "$KILN_FILES/etc/systemd/system/mariadb.service.d/$dropin" \
       "/etc/systemd/system/$unit.service.d/$dropin" 0644; then need_restart daemon-reload; fi
done
svc_enable "$DB_SERVICE" || true
