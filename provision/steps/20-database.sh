#!/usr/bin/env bash
# step: database server (MariaDB on Debian, MySQL on Ubuntu): local only, durable; app DB/user come at first boot
set -euo pipefail
# shellcheck source=provision/lib/common.sh
. "$KILN_PROVISION_DIR/lib/common.sh"; load_distro

apt_install "${PKG_DB_SERVER[@]}"

if install_file "$KILN_FILES/etc/mysql/kiln.cnf" "$DB_CONF_DIR/90-kiln.cnf" 0644; then need_restart "$DB_SERVICE"; fi
unit=${DB_SERVICE%.service}
if install_file "$KILN_FILES/etc/systemd/system/mariadb.service.d/kiln.conf" \
     "/etc/systemd/system/$unit.service.d/kiln.conf" 0644; then need_restart daemon-reload; fi
svc_enable "$DB_SERVICE" || true
