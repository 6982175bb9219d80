#!/usr/bin/env bash
# step: Supervisor (under systemd, Restart=always) running kiln-web (gunicorn) and the app's rq worker groups
set -euo pipefail
# shellcheck source=provision/lib/common.sh
. "$KILN_PROVISION_DIR/lib/common.sh"; load_distro

apt_install "${PKG_WEB[@]}"
if put usr/local/lib/kiln/kiln-reap-group 0755; then need_restart kiln-web; need_restart kiln-worker; fi
if put usr/local/lib/kiln/kiln-gunicorn 0755; then need_restart kiln-web; fi
if put usr/local/lib/kiln/gunicorn.conf.py; then need_restart kiln-web; fi
if put usr/local/lib/kiln/kiln-rqworker 0755; then need_restart kiln-worker; fi
# supervisord's launcher: a change takes effect at supervisord's next start (it changes how supervisor is imported, not
# what it runs; no restart of the app for it).
put usr/local/lib/kiln/supervisord 0755 || true
# kiln-workers.conf, the worker groups' programs, is the app's: kiln-release renders it from the contract (step 40).
# kiln-web and kiln-web-next, their timeouts from lib/common.sh (render_vars), kept in the library directory and read by
# supervisord from conf.d on a host whose role serves the web (role_supervisor_web: a worker host runs no gunicorn).
conf=$(render_vars "$KILN_FILES/etc/supervisor/conf.d/kiln.conf")
printf '%s\n' "$conf" | write_file "$KILN_SUPERVISOR_WEB_CONF" 0644 root:root || true
if role_supervisor_web; then need_reload supervisor; fi
# The helpers above lived in /usr/local/bin on servers provisioned by an earlier Kiln: internal, not commands (the
# operator's are in /usr/local/sbin: kiln and the kiln-* it runs), they are in the library directory now.
for old in kiln-reap-group kiln-gunicorn kiln-rqworker; do remove_path "/usr/local/bin/$old"; done
if put etc/systemd/system/supervisor.service.d/kiln.conf; then need_restart daemon-reload; fi
if put etc/systemd/system/kiln-stop-app-first.service; then need_restart daemon-reload; fi
svc_enable supervisor.service || true
