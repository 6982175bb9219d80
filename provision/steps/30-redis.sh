#!/usr/bin/env bash
# step: Redis as two instances (cache on 6379, queue on 6380) from the redis-server@ template; default unit off
set -euo pipefail
# shellcheck source=provision/lib/common.sh
. "$KILN_PROVISION_DIR/lib/common.sh"; load_distro

apt_install "${PKG_REDIS[@]}"
# The stock single instance would take port 6379: stop, disable and mask it.
svc_mask redis-server.service || true
# Its config goes too: a password-less, CONFIG-enabled Redis must not be one `systemctl unmask` away, and audits
# (Lynis DBS-18xx) must not judge a config that no running instance uses.
remove_path /etc/redis/redis.conf

if put etc/systemd/system/redis-server@.service.d/kiln.conf; then need_restart daemon-reload; fi
for name in cache queue; do
  if put "etc/redis/redis-$name.conf" 0640 redis:redis; then need_restart "redis-server@$name.service"; fi
  ensure_dir "/var/lib/redis/$name" 0750 redis:redis
  # Placeholder password so the config is always valid; kiln-firstboot replaces it per instance.
  if [ ! -s "/etc/redis/kiln-$name.auth.conf" ]; then
    printf 'requirepass %s\n' "$(gen_secret 32)" | write_file "/etc/redis/kiln-$name.auth.conf" 0640 redis:redis || true
  fi
  svc_enable "redis-server@$name.service" || true
done
# The queue's unix socket (redis-queue.conf includes it), for this server's own app and workers (QUEUE_URL:
# kiln-firstboot): each of rq's ~25 Redis round trips a job costs less than over loopback TCP (make bench: the simple
# worker's no-op jobs/s +15-20 %). Mode 777 as the loopback port is open to every local process: requirepass guards
# both. The port stays: a cluster's hosts, redis-cli and the checks use it.
printf '# Rendered by provision/steps/30-redis.sh (KILN_QUEUE_SOCKET, provision/lib/common.sh): do not edit.\nunixsocket %s\nunixsocketperm 777\n' \
  "$KILN_QUEUE_SOCKET" | write_file /etc/redis/kiln-queue.socket.conf 0640 redis:redis \
  && need_restart redis-server@queue.service
# Included by both configs; its content comes from the hardening step 86 (an empty file keeps redis startable).
if [ ! -e /etc/redis/kiln-hardening.inc ]; then : | write_file /etc/redis/kiln-hardening.inc 0640 redis:redis || true; fi
