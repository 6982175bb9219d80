# shellcheck shell=bash disable=SC2034
# Ubuntu 24.04 (noble): MySQL 8.0 instead of MariaDB. NOT verified from the build host (no Ubuntu archive there);
# kept small and honest: only names and paths differ, the steps are the same.
DISTRO_PRETTY="Ubuntu 24.04 (noble)"
# Vagrant guest plugin (the Vagrantfile reads it: a named guest skips probing ~40 guest types over SSH)
VAGRANT_GUEST=ubuntu
LOCALE_FILE=/etc/default/locale
# The distro's python3, which runs the app's venv (X.Y; kiln_app.py checks the app's Python range against it)
PYTHON_VERSION=3.12
# zstd: initramfs-tools compresses with it (files/etc/initramfs-tools/conf.d/90-kiln.conf), gzip without it
PKG_BASE=(ca-certificates curl openssl tzdata unattended-upgrades openssh-client
          python3 python3-venv procps iproute2 zstd)
PKG_DB_SERVER=(mysql-server mysql-client)
DB_SERVICE=mysql.service
# Drop-ins of files/etc/systemd/system/mariadb.service.d/ this server also gets (besides kiln.conf and
# kiln-early.conf): none for MySQL
DB_UNIT_EXTRA=()
DB_CONF_DIR=/etc/mysql/mysql.conf.d
DB_CLIENT=mysql
DB_SOCKET=/run/mysqld/mysqld.sock
# MySQL's GTIDs are not MariaDB's, and Kiln's replica is written for MariaDB's: no data-replica role on this image
# (the data role works; its dumps carry no replication position)
DB_GTID_REPLICATION=
PKG_REDIS=(redis-server redis-tools)
PKG_WEB=(nginx supervisor)
PKG_FIREWALL=(ufw)
PKG_SSH=(openssh-server)
PKG_SERVICES=(fail2ban python3-systemd apparmor auditd systemd-timesyncd sysstat debsums needrestart)
PKG_ACCOUNTS=(libpam-passwdqc libpam-tmpdir)
PKG_LOGS=(logrotate)
# Log shipping (step 76, kiln-logship): rsyslog and its TLS driver (GnuTLS), disabled unless KILN_LOG_REMOTE is set
PKG_LOGSHIP=(rsyslog rsyslog-gnutls)
# Backups (kiln-backup): restic, and the database's dump tool and server binary (the restore test runs a throw-away
# server of its own); MySQL initialises its datadir itself (--initialize-insecure)
PKG_BACKUP=(restic)
# Metrics (step 78): node-exporter, without its Recommends' prometheus-node-exporter-collectors (timers and scripts
# for apt, SMART and NVMe, pulling moreutils and smartmontools): Kiln writes the textfiles it serves
PKG_METRICS=(prometheus-node-exporter)
# git: kiln-release deploys an app from a git URL too (a shallow fetch of one ref)
PKG_DEPLOY=(git)
# kiln-letsencrypt (kiln tls): certbot (its certbot.timer renews) and dig, which asks DNS itself for the pre-check
# (getent would read /etc/hosts first)
PKG_TLS=(certbot bind9-dnsutils)
# The lb role (step 65, kiln_lb.py): HAProxy, installed in every image, disabled unless KILN_ROLE=lb; socat talks
# to its admin socket (drain a web host: README, "Beyond one server"; tools/kiln-fleet)
PKG_LB=(haproxy socat)
DB_DUMP=mysqldump
DB_SERVER_BIN=/usr/sbin/mysqld
DB_INSTALL_DB=
PKG_BUILD_DEPS=(build-essential default-libmysqlclient-dev pkg-config python3-dev)
PKG_APP_RUNTIME=(libmysqlclient21)
# nginx 1.24 has no `http2 on;` (added in 1.25.1); `listen ... http2` would need a different listen line: skip HTTP/2.
NGINX_HTTP2_DIRECTIVE=""
# The security archive (deb822), added by 10-base when the apt sources have none
SECURITY_SOURCES_FILE=/etc/apt/sources.list.d/ubuntu-security.sources
SECURITY_SOURCES="Types: deb
URIs: http://security.ubuntu.com/ubuntu
Suites: noble-security
Components: main universe
Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg"
