#!/usr/bin/env bash
# step: firewall: ufw default-deny inbound, allow 22/80/443 (v4+v6), enabled at boot; active now when booted;
#       no LLMNR/mDNS responders
set -euo pipefail
# shellcheck source=provision/lib/common.sh
. "$KILN_PROVISION_DIR/lib/common.sh"; load_distro

apt_install "${PKG_FIREWALL[@]}"

# Rules are kept in /etc/ufw/user*.rules: ufw edits them even while inactive (chroot / image build), and
# ufw.service loads them at boot. Only what differs is touched, so a second run changes nothing.

# Offline (chroot, image build) or in a container, ufw must only edit its files: with ENABLED=yes it would try to
# apply them to a netfilter it cannot reach and fail. So it is marked disabled while rules are edited, and
# enabled again below (the state at boot is what counts).
live=0
if booted && ! systemd-detect-virt -q --container; then live=1; fi
was_enabled=0
grep -qx 'ENABLED=yes' /etc/ufw/ufw.conf && was_enabled=1

# ufw without a live netfilter (chroot, image build) warns "initcaps" on every call: show output only on failure.
ufw_q() {
  local out
  if [ "$live" -eq 0 ] && grep -qx 'ENABLED=yes' /etc/ufw/ufw.conf; then sed -i 's/^ENABLED=.*/ENABLED=no/' /etc/ufw/ufw.conf; fi
  out=$(ufw "$@" 2>&1) || { printf '%s\n' "$out" >&2; return 1; }
}

ufw_default() { # ufw_default incoming|outgoing|routed POLICY(DROP|ACCEPT)
  local key want=$2 word
  case $1 in incoming) key=DEFAULT_INPUT_POLICY ;; outgoing) key=DEFAULT_OUTPUT_POLICY ;; *) key=DEFAULT_FORWARD_POLICY ;; esac
  if ! grep -qx "$key=\"$want\"" /etc/default/ufw; then
    word=$([ "$want" = DROP ] && echo deny || echo allow)
    ufw_q default "$word" "$1"
    changed "ufw default $word $1"
  fi
}
# ufw applies its own sysctl file at every start, which resets log_martians to 0 and would silently undo the
# hardening sysctls: point it at Kiln's file instead, so there is one set of kernel settings.
if ! grep -qx 'IPT_SYSCTL=/etc/sysctl.d/90-kiln-hardening.conf' /etc/default/ufw; then
  sed -i 's|^IPT_SYSCTL=.*|IPT_SYSCTL=/etc/sysctl.d/90-kiln-hardening.conf|' /etc/default/ufw
  grep -qx 'IPT_SYSCTL=/etc/sysctl.d/90-kiln-hardening.conf' /etc/default/ufw \
    || echo 'IPT_SYSCTL=/etc/sysctl.d/90-kiln-hardening.conf' >>/etc/default/ufw
  changed "ufw applies /etc/sysctl.d/90-kiln-hardening.conf (not /etc/ufw/sysctl.conf)"
fi
ufw_default incoming DROP
ufw_default outgoing ACCEPT
ufw_default routed DROP

for rule in 22/tcp 80/tcp 443/tcp; do
  # user.rules holds one "### tuple ### allow tcp PORT 0.0.0.0/0 any 0.0.0.0/0 in" comment per rule.
  if ! grep -q "^### tuple ### allow tcp ${rule%/tcp} 0.0.0.0/0 any 0.0.0.0/0 in" /etc/ufw/user.rules; then
    ufw_q allow "$rule"
    changed "ufw allow $rule"
  fi
done

# Enabled at boot: ufw.service reads ENABLED=yes from /etc/ufw/ufw.conf.
if ! grep -qx 'ENABLED=yes' /etc/ufw/ufw.conf; then
  sed -i 's/^ENABLED=.*/ENABLED=yes/' /etc/ufw/ufw.conf
  grep -qx 'ENABLED=yes' /etc/ufw/ufw.conf || echo 'ENABLED=yes' >>/etc/ufw/ufw.conf
  [ "$was_enabled" -eq 1 ] || changed "ufw enabled at boot (/etc/ufw/ufw.conf)"
fi
svc_enable ufw.service || true
if put etc/systemd/system/ufw.service.d/kiln.conf; then need_restart daemon-reload; fi

# Nothing listening that nobody needs: systemd-resolved's LLMNR/mDNS responders off.
if put etc/systemd/resolved.conf.d/90-kiln.conf && booted; then
  systemctl try-restart systemd-resolved.service || warn "systemd-resolved did not restart (applies at boot)"
fi

# In a booted VM, activate now (22 is allowed first, so an SSH build session survives). Not in a container:
# there the rules would land in the container's netns only and prove nothing.
if [ "$live" -eq 1 ]; then
  status=$(ufw status 2>&1 || true)
  if ! grep -q '^Status: active' <<<"$status"; then
    ufw_q --force enable
    changed "ufw activated"
  fi
fi
log "ufw: default deny incoming; allowed: 22/tcp 80/tcp 443/tcp"
