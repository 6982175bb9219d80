#!/bin/bash
# Swap DigitalOcean's Django 1-Click serving configuration (this folder) in for Kiln's, inside the bench's container,
# and back (bench/bench.py runs it there as root; bench/run.sh bind-mounts bench/ at /opt/kiln-bench). Kiln's files
# are not changed: its nginx site is disabled and re-enabled, its gunicorn (supervisor's kiln-web) stopped and
# started; the peer's gunicorn is a transient systemd unit (as DigitalOcean runs it: a systemd service), with the
# current release's app, venv and settings (/etc/kiln/kiln.env) and gevent from /opt/kiln-bench-peer/site.
#   peer.sh apply     DigitalOcean's gunicorn + nginx site
#   peer.sh revert    Kiln's again (also when apply stopped half-way)
#   peer.sh site      which site serves: kiln or peer (nothing while /healthz is no 200)
# Each returns once the configuration it switched to serves /healthz over HTTPS.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
UNIT=kiln-bench-peer
# shellcheck source=/dev/null
. /srv/kiln/current/kiln-app.env

until_true() { # until_true WHAT CMD...: CMD succeeds within 60 s
  local what=$1; shift
  for _ in $(seq 600); do "$@" && return 0; sleep 0.1; done
  echo "peer.sh: $what: not after 60 s" >&2; return 1
}
socket_200() { [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --unix-socket "$1" http://127.0.0.1/healthz || true)" = 200 ]; }
# Which site nginx's workers serve after a reload: Kiln's adds X-Frame-Options to every answer, the app sends none
# with /healthz (its probes answer before Django's clickjacking middleware), and the peer's site adds nothing.
site() { # site: "kiln" or "peer" when /healthz answers 200 over HTTPS, else nothing
  local head
  head=$(curl -sk --http1.1 -D - -o /dev/null --max-time 5 https://127.0.0.1/healthz | tr -d '\r') || return 0
  [[ $head == "HTTP/1.1 200"* ]] || return 0
  if grep -qi '^x-frame-options:' <<<"$head"; then echo kiln; else echo peer; fi
}
serves() { [ "$(site)" = "$1" ]; }

case ${1:-} in
  apply)
    supervisorctl stop kiln-web >/dev/null
    systemd-run --quiet --collect --unit="$UNIT" -p User=kiln -p Group=kiln -p RuntimeDirectory=kiln-bench-peer \
      -p WorkingDirectory=/srv/kiln/current/app --setenv=KILN_ENV_FILE=/etc/kiln/kiln.env \
      --setenv=DJANGO_SETTINGS_MODULE="$KILN_APP_SETTINGS" --setenv=PYTHONPATH=/opt/kiln-bench-peer/site \
      --setenv=HOME=/srv/kiln --setenv=LANG=C.UTF-8 \
      /srv/kiln/current/venv/bin/gunicorn --config "$HERE/gunicorn.conf.py" "$KILN_APP_WSGI"
    until_true "the peer's gunicorn answers" socket_200 /run/kiln-bench-peer/gunicorn.sock
    ln -sfn "$HERE/nginx-site.conf" /etc/nginx/sites-enabled/kiln-bench-peer
    rm -f /etc/nginx/sites-enabled/kiln
    nginx -t -q
    systemctl reload nginx
    until_true "nginx serves the peer's site" serves peer
    ;;
  revert)
    systemctl stop "$UNIT" 2>/dev/null || true
    rm -f /etc/nginx/sites-enabled/kiln-bench-peer
    ln -sfn ../sites-available/kiln /etc/nginx/sites-enabled/kiln
    nginx -t -q
    systemctl reload nginx
    supervisorctl start kiln-web >/dev/null
    until_true "kiln-web answers" socket_200 /run/kiln/gunicorn.sock
    until_true "nginx serves Kiln's site" serves kiln
    ;;
  site) site ;;
  *) echo "usage: $0 apply|revert|site" >&2; exit 2 ;;
esac
