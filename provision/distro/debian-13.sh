# shellcheck shell=bash disable=SC2034
# Debian 13 (trixie): package names, service names and paths. Sourced by lib/common.sh:load_distro.
DISTRO_PRETTY="Debian 13 (trixie)"
# Vagrant guest plugin (the Vagrantfile reads it: a named guest skips probing ~40 guest types over SSH)
VAGRANT_GUEST=debian
# systemd-native locale file (trixie makes /etc/default/locale a symlink to it)
LOCALE_FILE=/etc/locale.conf
# The distro's python3, which runs the app's venv (X.Y; kiln_app.py checks the app's Python range against it)
PYTHON_VERSION=3.13
# zstd: initramfs-tools compresses with it (files/etc/initramfs-tools/conf.d/90-kiln.conf), gzip without it
PKG_BASE=(ca-certificates curl openssl tzdata unattended-upgrades openssh-client
          python3 python3-venv procps iproute2 zstd)
PKG_DB_SERVER=(mariadb-server mariadb-client)
DB_SERVICE=mariadb.service
DB_CONF_DIR=/etc/mysql/mariadb.conf.d
DB_CLIENT=mariadb
DB_SOCKET=/run/mysqld/mysqld.sock
# A cluster's replica (KILN_ROLE=data-replica) follows the data host with MariaDB's GTID replication (gtid_slave_pos,
# MASTER_USE_GTID, mariadb-dump --gtid)
DB_GTID_REPLICATION=1
# Drop-ins of files/etc/systemd/system/mariadb.service.d/ this server also gets (besides kiln.conf and
# kiln-early.conf)
DB_UNIT_EXTRA=(kiln-start.conf kiln-tls.conf)
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
# server of its own)
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
DB_DUMP=mariadb-dump
DB_SERVER_BIN=/usr/sbin/mariadbd
DB_INSTALL_DB=mariadb-install-db
# Build-time only (purged after the wheels are built) vs. the runtime library the compiled mysqlclient links to.
PKG_BUILD_DEPS=(build-essential default-libmysqlclient-dev pkg-config python3-dev)
PKG_APP_RUNTIME=(libmariadb3)
# nginx >= 1.25.1 syntax for HTTP/2
NGINX_HTTP2_DIRECTIVE="http2 on;"
# The security archive (deb822), added by 10-base when the apt sources have none
SECURITY_SOURCES_FILE=/etc/apt/sources.list.d/debian-security.sources
SECURITY_SOURCES="Types: deb
URIs: http://security.debian.org/debian-security
Suites: trixie-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
