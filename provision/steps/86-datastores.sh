#!/usr/bin/env bash
# step: database + Redis hardening: dev-sec mysql-baseline settings and SQL cleanup, dangerous Redis commands off
set -euo pipefail
# shellcheck source=provision/lib/common.sh
. "$KILN_PROVISION_DIR/lib/common.sh"; load_distro

# ---- MariaDB/MySQL: settings (20-database's 90-kiln.cnf already binds to loopback with local-infile=0)
ensure_dir /var/lib/mysql-files 0750 mysql:mysql
if install_file "$KILN_FILES/etc/mysql/kiln-hardening.cnf" "$DB_CONF_DIR/91-kiln-hardening.cnf" 0644; then
  need_restart "$DB_SERVICE"
fi

# ---- SQL: no anonymous users, no test database, root only from the local host (authenticated by unix socket).
# Needs a running server: done here on a booted machine (Packer, Vagrant); in an offline build the same SQL is
# checked at the next booted run (install.sh is idempotent) and by tests/hardening (dev-sec mysql checks).
SQL_CLEAN="
DELETE FROM mysql.global_priv WHERE User='';
DELETE FROM mysql.global_priv WHERE User='root' AND Host NOT IN ('localhost','127.0.0.1','::1');
DELETE FROM mysql.db WHERE Db='test' OR Db LIKE 'test\\\\_%';
DROP DATABASE IF EXISTS test;
FLUSH PRIVILEGES;"
SQL_CHECK="SELECT
 (SELECT COUNT(*) FROM mysql.user WHERE User='') +
 (SELECT COUNT(*) FROM mysql.user WHERE User='root' AND Host NOT IN ('localhost','127.0.0.1','::1')) +
 (SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME='test') +
 (SELECT COUNT(*) FROM mysql.db WHERE Db='test' OR Db LIKE 'test\\\\_%')"
if booted && systemctl is-active -q "$DB_SERVICE" && [ -S "$DB_SOCKET" ]; then
  [ "$DB_CLIENT" = mariadb ] || SQL_CLEAN=${SQL_CLEAN//mysql.global_priv/mysql.user}
  bad=$("$DB_CLIENT" -N -B -e "$SQL_CHECK")
  if [ "$bad" != 0 ]; then
    "$DB_CLIENT" -e "$SQL_CLEAN"
    changed "database: removed $bad anonymous/remote-root/test entries"
  fi
  log "database: no anonymous users, no test database, root local only"
else
  [ -d /var/lib/mysql/test ] && warn "test database directory present; removed at the next booted install.sh run"
  log "database: server not running (offline build): SQL cleanup runs on the next booted install.sh"
fi

# ---- Redis: rename-command "" for commands the app never uses (see the file's header for the audit).
if put etc/redis/kiln-hardening.inc 0640 redis:redis; then
  for name in cache queue; do need_restart "redis-server@$name.service"; done
fi
for name in cache queue; do
  conf=/etc/redis/redis-$name.conf
  [ -f "$conf" ] || continue
  grep -qx 'include /etc/redis/kiln-hardening.inc' "$conf" \
    || warn "$conf does not include /etc/redis/kiln-hardening.inc: dangerous commands stay enabled (provision/files/etc/redis/redis-$name.conf needs the include line)"
done
