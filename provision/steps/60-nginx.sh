#!/usr/bin/env bash
# step: nginx: gunicorn upstream, /static and /media, security headers, TLS (cert at first boot), error page
set -euo pipefail
# shellcheck source=provision/lib/common.sh
. "$KILN_PROVISION_DIR/lib/common.sh"; load_distro

apt_install "${PKG_WEB[@]}"
# kiln-letsencrypt's certbot and dig: renewal by certbot.timer from the first certificate on
apt_install "${PKG_TLS[@]}"
reload=0
for f in etc/nginx/conf.d/kiln.conf etc/nginx/snippets/kiln-headers.conf etc/nginx/snippets/kiln-headers-https.conf \
         etc/nginx/snippets/kiln-tls.conf etc/nginx/snippets/kiln-proxy.conf etc/nginx/snippets/kiln-page-cache.conf \
         etc/nginx/snippets/kiln-maintenance.conf \
         etc/nginx/sites-available/kiln; do
  put "$f" && reload=1
done
printf '# HTTP/2 (distro-specific syntax, from provision/distro/%s.sh)\n%s\n' "$KILN_DISTRO" "$NGINX_HTTP2_DIRECTIVE" \
  | write_file /etc/nginx/snippets/kiln-http2.conf 0644 root:root && reload=1
# The upload limit the instance has (kiln-firstboot renders it again from its env at every (re)configuration).
limit=$(sed -n 's/^MAX_UPLOAD_BYTES=\([0-9][0-9]*\)$/\1/p' /etc/kiln/kiln.env 2>/dev/null | tail -n 1 || true)  # no env yet: an offline install
upload_limit_snippet "${limit:-$KILN_MAX_UPLOAD_BYTES}" && reload=1
# The upstream: kiln-web's socket (a deploy points it at kiln-web-next's for a moment, and back: kiln-release).
web_upstream_snippet "$KILN_WEB_SOCKET" && reload=1
ensure_symlink ../sites-available/kiln /etc/nginx/sites-enabled/kiln && reload=1
if [ -e /etc/nginx/sites-enabled/default ] || [ -L /etc/nginx/sites-enabled/default ]; then
  remove_path /etc/nginx/sites-enabled/default; reload=1
fi
for page in 50x.html 400.html; do put "usr/share/kiln/kiln-errors/$page" || true; done
ensure_dir /var/www/letsencrypt 0755 root:root
ensure_dir /etc/kiln/tls 0750 root:root
if put etc/systemd/system/nginx.service.d/kiln.conf; then need_restart daemon-reload; fi
[ "$reload" -eq 0 ] || need_reload nginx
svc_enable nginx.service || true
