#!/usr/bin/env bash
# step: sshd hardening drop-in: keys only, no root login, strong algorithms, short idle/auth limits (UsePAM stays yes)
set -euo pipefail
# shellcheck source=provision/lib/common.sh
. "$KILN_PROVISION_DIR/lib/common.sh"; load_distro

apt_install "${PKG_SSH[@]}"

# Preferred algorithms, strongest first; only those this OpenSSH knows are written (Ubuntu 24.04's 9.6 lacks
# mlkem768x25519-sha256, and sshd refuses to start on an unknown name). Compatibility floor, measured:
#  - Vagrant 2.3.4's net-ssh 7.0 (Debian 12): no GCM/ChaCha, no curve25519 without the x25519 gem
#    -> needs aes*-ctr, diffie-hellman-group-exchange-sha256 (moduli < 3071 bits are removed below), *-etm MACs.
#  - Packer 1.6.6 (Go x/crypto 2020): curve25519-sha256@libssh.org, aes128-gcm/chacha20, hmac-sha2-256-etm.
KEX_WANT="mlkem768x25519-sha256 sntrup761x25519-sha512 sntrup761x25519-sha512@openssh.com curve25519-sha256 curve25519-sha256@libssh.org diffie-hellman-group18-sha512 diffie-hellman-group16-sha512 diffie-hellman-group-exchange-sha256"
CIPHERS_WANT="chacha20-poly1305@openssh.com aes256-gcm@openssh.com aes128-gcm@openssh.com aes256-ctr aes192-ctr aes128-ctr"
MACS_WANT="hmac-sha2-512-etm@openssh.com hmac-sha2-256-etm@openssh.com umac-128-etm@openssh.com"

supported() { # supported QUERY "WANT LIST" -> comma list of the wanted names `ssh -Q QUERY` knows, in our order
  local known out="" a
  known=$(ssh -Q "$1")
  for a in $2; do grep -qxF "$a" <<<"$known" && out+="${out:+,}$a"; done
  [ -n "$out" ] || die "none of the wanted $1 algorithms is supported by this OpenSSH"
  printf '%s' "$out"
}

# 10- sorts before cloud-init's 50-cloud-init.conf: sshd takes the first value it reads, so ours win.
if write_file /etc/ssh/sshd_config.d/10-kiln-hardening.conf 0600 root:root <<EOF2
$(cat "$KILN_FILES/etc/ssh/sshd_config.d/10-kiln-hardening.conf")
KexAlgorithms $(supported kex "$KEX_WANT")
Ciphers $(supported cipher "$CIPHERS_WANT")
MACs $(supported mac "$MACS_WANT")
EOF2
then need_reload ssh.service; fi

# Diffie-Hellman group exchange: drop moduli under 3072 bits (ssh-audit / dev-sec recommendation).
if [ -f /etc/ssh/moduli ] && awk '$1 !~ /^#/ && NF >= 7 && $5 < 3071 {found=1} END {exit !found}' /etc/ssh/moduli; then
  awk '$1 ~ /^#/ || NF < 7 || $5 >= 3071' /etc/ssh/moduli >/etc/ssh/moduli.kiln-new
  mv -f /etc/ssh/moduli.kiln-new /etc/ssh/moduli
  chmod 0644 /etc/ssh/moduli
  changed "/etc/ssh/moduli: removed moduli < 3072 bits"
  need_reload ssh.service
fi

# Lynis FILE-7524 / dev-sec: the main config readable by root only.
f=/etc/ssh/sshd_config
[ "$(stat -c '%a' "$f")" = 600 ] || { chmod 0600 "$f"; changed "$f mode 0600"; }

# Validate the whole configuration now: a broken sshd config must fail the build, not lock out the server.
# The host keys are removed from the image (made at first boot), so test with a throw-away key.
tmpkey=$(mktemp -u /tmp/kiln-sshd-test.XXXXXX)
made_run=0
[ -d /run/sshd ] || { mkdir -p /run/sshd; made_run=1; }
cleanup() { rm -f "$tmpkey" "$tmpkey.pub"; if [ "$made_run" -eq 1 ]; then rmdir /run/sshd 2>/dev/null || true; fi; }
trap cleanup EXIT
ssh-keygen -q -t ed25519 -N '' -f "$tmpkey"
/usr/sbin/sshd -t -h "$tmpkey" 2>&1 | grep -v 'Unable to load host key\|no hostkeys available' >&2 || true
/usr/sbin/sshd -T -h "$tmpkey" -C user=root,host=localhost,addr=127.0.0.1 >/tmp/kiln-sshd-T.$$ 2>/dev/null \
  || { rm -f /tmp/kiln-sshd-T.$$; die "sshd -t: configuration invalid (see above)"; }
# Assert the effective values (a drop-in with an earlier name, or the main file, could override ours).
for kv in "permitrootlogin no" "passwordauthentication no" "kbdinteractiveauthentication no" "usepam yes" \
          "pubkeyauthentication yes" "x11forwarding no" "maxauthtries 3"; do
  grep -qx "$kv" /tmp/kiln-sshd-T.$$ || { rm -f /tmp/kiln-sshd-T.$$; die "sshd effective config lacks '$kv'"; }
done
rm -f /tmp/kiln-sshd-T.$$

# The running sshd is reloaded by the restart/reload handling (need_reload): existing sessions survive; new
# logins need a key, which is what the Packer build user (ed25519) and Vagrant (insecure key) use.
log "sshd: key-only, PermitRootLogin no, UsePAM yes; effective config verified with sshd -T"

# No sshd on AF_VSOCK: systemd >= 256's ssh generator offers sshd to the hypervisor host over vsock when it finds a
# vsock device. A VPS is reached over the network only, and the probe loads the vsock modules at every boot, before
# any unit starts (0.8 s under emulation). A generator linked to /dev/null in /etc is disabled (systemd.generator(7)).
if [ -e /usr/lib/systemd/system-generators/systemd-ssh-generator ]; then
  ensure_dir /etc/systemd/system-generators 0755 root:root
  if ensure_symlink /dev/null /etc/systemd/system-generators/systemd-ssh-generator; then need_restart daemon-reload; fi
fi
