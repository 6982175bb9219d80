#!/usr/bin/env bash
# Image check for a Kiln image: DigitalOcean's marketplace img_check rules, made stricter, and failing on any finding.
# Usage: tests/hardening/img-check.sh [--no-updates] ROOT_DIR | IMAGE.qcow2 | IMAGE.raw
#   ROOT_DIR       a mounted (or unpacked) root file system, checked read-only
#   IMAGE          a disk image: converted to raw, attached read-only (losetup + partx), the partition holding
#                  etc/os-release mounted read-only inside a private mount namespace; everything undone on exit
#   --no-updates   skip the "no pending security updates" check (it needs the distro archive over the network)
# Checks (DO = also in DigitalOcean's img_check; * = stricter than DO):
#   cloud-init installed and enabled (DO) · no account with a usable password (DO) · root locked (DO)
#   no authorized_keys / .ssh content in any home, /root included (DO, * every user) · no shell/tool histories (DO, *)
#   no pending security updates (DO) · ufw enabled at boot (DO warns, * fails) · /var/log holds no non-empty file,
#   subfolders and the journal included (DO warns, * fails) · /tmp and /var/tmp empty (*) · machine-id empty (*)
#   no SSH host keys (*) · no build CA trusted (*) · no build user or its sudoers file (*) · no cloud-init instance
#   state (*) · no Kiln per-instance secrets or first-boot marker (*) · no systemd random seed (*) · sshd refuses
#   passwords and root (*)
# Output: one line per check, then "N passed, N failed". Exit 1 on any failure, 2 on usage errors.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CHECK_UPDATES=1
if [ "${1:-}" = --no-updates ]; then CHECK_UPDATES=0; shift; fi
[ $# -eq 1 ] || { sed -n '2,16p' "$0"; exit 2; }
TARGET=$1

# ------------------------------------------------------------------ disk image: attach, mount, re-run on the dir
if [ -f "$TARGET" ]; then
  [ "$(id -u)" -eq 0 ] || { echo "img-check: attaching a disk image needs root" >&2; exit 2; }
  if [ "${KILN_IMGCHECK_INNER:-0}" != 1 ]; then
    # A private mount namespace: a VM started meanwhile cannot pin our mounts, and nothing leaks on a crash.
    exec env KILN_IMGCHECK_INNER=1 unshare -m --propagation private "$0" "$@"
  fi
  command -v qemu-img >/dev/null || "$HERE/../../tools/apt-ensure.sh" qemu-utils
  work=$(mktemp -d /var/tmp/kiln-imgcheck.XXXXXX)
  loop=""
  # shellcheck disable=SC2317  # called by the EXIT trap
  cleanup() {
    set +e
    mountpoint -q "$work/root" && umount -R "$work/root"
    if [ -n "$loop" ]; then partx -d "$loop" 2>/dev/null; losetup -d "$loop"; fi
    rm -rf "$work"
  }
  trap cleanup EXIT
  fmt=$(qemu-img info --output=json "$TARGET" | python3 -c 'import json,sys; print(json.load(sys.stdin)["format"])')
  raw=$TARGET
  if [ "$fmt" != raw ]; then
    echo "img-check: converting $TARGET ($fmt) to raw" >&2
    qemu-img convert -O raw "$TARGET" "$work/disk.raw"
    raw=$work/disk.raw
  fi
  loop=$(losetup -f --show -r "$raw")
  partx -a "$loop" 2>/dev/null || true
  mkdir -p "$work/root"
  found=""
  for dev in "$loop" "$loop"p*; do
    [ -b "$dev" ] || continue
    mount -o ro "$dev" "$work/root" 2>/dev/null || mount -o ro,noload "$dev" "$work/root" 2>/dev/null || continue
    if [ -f "$work/root/etc/os-release" ]; then found=$dev; break; fi
    umount "$work/root"
  done
  [ -n "$found" ] || { echo "img-check: no partition with etc/os-release in $TARGET" >&2; exit 2; }
  echo "img-check: $TARGET -> root file system on $found (read-only)" >&2
  args=("$work/root"); [ "$CHECK_UPDATES" -eq 1 ] || args=(--no-updates "$work/root")
  rc=0; KILN_IMGCHECK_INNER=0 "$0" "${args[@]}" || rc=$?
  exit "$rc"
fi

[ -d "$TARGET" ] || { echo "img-check: $TARGET is neither a directory nor an image file" >&2; exit 2; }
R=$(cd "$TARGET" && pwd)
[ -f "$R/etc/os-release" ] || { echo "img-check: $R has no etc/os-release" >&2; exit 2; }
PASSED=0; FAILED=0
pass() { printf '  PASS  %s\n' "$1"; PASSED=$((PASSED + 1)); }
fail() { printf '  FAIL  %s\n' "$1"; shift; local l; for l in "$@"; do printf '          %s\n' "$l"; done; FAILED=$((FAILED + 1)); }
check() { # check NAME FINDINGS... : pass if no findings
  local name=$1; shift
  if [ $# -eq 0 ]; then pass "$name"; else fail "$name" "$@"; fi
}
lines() { local -n _arr=$1; _arr=(); local l; while IFS= read -r l; do [ -n "$l" ] && _arr+=("$l"); done; }
# shellcheck disable=SC1091
echo "img-check: $R ($(. "$R/etc/os-release" && echo "$PRETTY_NAME"))"

# 1. cloud-init
f=()
[ -x "$R/usr/bin/cloud-init" ] || f+=("cloud-init is not installed")
[ -n "$(find "$R/etc/systemd/system" -path '*.wants/cloud-init*' 2>/dev/null)" ] || f+=("no cloud-init unit is enabled")
[ -e "$R/etc/cloud/cloud-init.disabled" ] && f+=("/etc/cloud/cloud-init.disabled exists")
check "cloud-init installed and enabled" "${f[@]}"

# 2. accounts with a password / root locked
lines f < <(awk -F: '$2 !~ /^[!*]/ {print $1 ($2 == "" ? ": EMPTY password (login without one)" : ": has a password")}' "$R/etc/shadow")
check "no account has a usable password (shadow)" "${f[@]}"
lines f < <(awk -F: '$1 == "root" && $2 !~ /^[!*]/ {print "root password is not locked"}' "$R/etc/shadow")
check "root account locked" "${f[@]}"

# 3. keys and histories in every home (passwd homes, /home/*, /root)
homes=$( { awk -F: '{print $6}' "$R/etc/passwd"; printf '/root\n'; for d in "$R"/home/*; do if [ -d "$d" ]; then echo "${d#"$R"}"; fi; done; } | sort -u)
f=(); h=()
for home in $homes; do
  { [ -d "$R$home" ] && [ "$home" != / ]; } || continue
  if [ -d "$R$home/.ssh" ]; then
    while IFS= read -r k; do f+=("$k"); done < <(find "$R$home/.ssh" -mindepth 1 \( -type f -o -type l \) -printf "$home/.ssh/%P (%s bytes)\n" 2>/dev/null)
  fi
  while IFS= read -r k; do h+=("$k"); done < <(find "$R$home" -maxdepth 1 -type f \( -name '.*_history' -o -name '.*history' \
    -o -name .lesshst -o -name .viminfo -o -name .wget-hsts -o -name .sudo_as_admin_successful -o -name .selected_editor \) \
    -printf "$home/%P (%s bytes)\n" 2>/dev/null)
done
check "no SSH keys or .ssh content for any user (incl. /root)" "${f[@]}"
check "no shell or tool histories in any home" "${h[@]}"
lines f < <(awk -F: '$3 >= 1000 && $3 < 60000 {print "login user " $1 " (uid " $3 ", home " $6 ", shell " $7 ")"}' "$R/etc/passwd")
check "no regular (uid >= 1000) users baked in" "${f[@]}"

# 4. build leftovers
f=()
grep -q '^kilnbuild:' "$R/etc/passwd" && f+=("build user kilnbuild exists")
for s in "$R"/etc/sudoers.d/*; do
  [ -f "$s" ] || continue
  case $(basename "$s") in README) ;; *) f+=("sudoers drop-in ${s#"$R"}");; esac
done
[ -d "$R/var/lib/cloud/instances" ] && [ -n "$(ls -A "$R/var/lib/cloud/instances" 2>/dev/null)" ] && f+=("cloud-init instance state in /var/lib/cloud/instances (run cloud-init clean)")
[ -e "$R/var/lib/cloud/instance" ] && f+=("/var/lib/cloud/instance link present")
# The build VM's DHCP file (packer/scripts/build.sh seed): on a server, cloud-init renders the network config.
[ -e "$R/etc/systemd/network/10-kiln-build.network" ] && f+=("build VM network file /etc/systemd/network/10-kiln-build.network")
check "no build user, sudoers drop-ins or cloud-init instance state" "${f[@]}"

# 5. per-instance identity
f=()
if [ -s "$R/etc/machine-id" ] && [ "$(cat "$R/etc/machine-id")" != uninitialized ]; then f+=("/etc/machine-id is set: $(cat "$R/etc/machine-id")"); fi
[ -e "$R/etc/machine-id" ] || f+=("/etc/machine-id missing (must exist, empty)")
if [ -f "$R/var/lib/dbus/machine-id" ] && [ ! -L "$R/var/lib/dbus/machine-id" ] && [ -s "$R/var/lib/dbus/machine-id" ]; then f+=("/var/lib/dbus/machine-id is set"); fi
for k in "$R"/etc/ssh/ssh_host_*; do [ -e "$k" ] && f+=("SSH host key ${k#"$R"}"); done
[ -e "$R/var/lib/systemd/random-seed" ] && f+=("/var/lib/systemd/random-seed present (shared entropy)")
for s in "$R/etc/kiln/secrets.env" "$R/etc/kiln/kiln.env" "$R/var/lib/kiln/firstboot.done" "$R/swapfile.kiln" \
         "$R"/etc/mysql/*/91-kiln-sizing.cnf "$R/var/lib/kiln-metrics/kiln_rq.prom"; do
  [ -e "$s" ] && f+=("Kiln per-instance file ${s#"$R"}")
done
check "no per-instance identity: machine-id, host keys, random seed, Kiln secrets, the build's queue metrics" "${f[@]}"

# 6. build CA: no extra certificates, and none of the build host's extra CAs in the trust bundle
f=()
while IFS= read -r c; do f+=("extra CA ${c#"$R"}"); done < <(find "$R/usr/local/share/ca-certificates" -type f 2>/dev/null)
while IFS= read -r c; do f+=("${c#"$R"} -> $(readlink "$c")"); done < <(find "$R/etc/ssl/certs" -maxdepth 1 -type l -lname '*/usr/local/share/ca-certificates/*' 2>/dev/null)
if [ -f "$R/etc/ssl/certs/ca-certificates.crt" ]; then
  for hc in /usr/local/share/ca-certificates/*.crt; do
    [ -f "$hc" ] || continue
    body=$(sed -n '/BEGIN CERT/,/END CERT/p' "$hc" | sed -n '2p')
    [ -n "$body" ] && grep -qF "$body" "$R/etc/ssl/certs/ca-certificates.crt" && f+=("trust bundle contains the build host's $(basename "$hc")")
  done
fi
check "no build CA trusted" "${f[@]}"

# 7. logs and temporary files
lines f < <(find "$R/var/log" -type f -size +0 -printf '/var/log/%P (%s bytes)\n' 2>/dev/null | head -50)
check "no log content under /var/log (subfolders and journal included)" "${f[@]}"
lines f < <(find "$R/tmp" "$R/var/tmp" -mindepth 1 -maxdepth 1 -printf '%p\n' 2>/dev/null | sed "s|^$R||" | head -50)
check "/tmp and /var/tmp are empty" "${f[@]}"

# 8. firewall and sshd
f=()
grep -qx 'ENABLED=yes' "$R/etc/ufw/ufw.conf" 2>/dev/null || f+=("ufw not enabled at boot (/etc/ufw/ufw.conf ENABLED)")
[ -n "$(find "$R/etc/systemd/system" -path '*.wants/ufw.service' 2>/dev/null)" ] || f+=("ufw.service not enabled")
grep -q '^-A ufw-user-input -p tcp --dport 22 -j ACCEPT' "$R/etc/ufw/user.rules" 2>/dev/null || f+=("ufw does not allow 22/tcp (lockout)")
grep -qx 'DEFAULT_INPUT_POLICY="DROP"' "$R/etc/default/ufw" 2>/dev/null || f+=("ufw default incoming policy is not deny")
check "ufw enabled at boot: default deny, 22 allowed" "${f[@]}"
sshd_first() { # first value sshd would read for KEY (drop-ins included where the main file includes them)
  local key=$1
  { for c in "$R"/etc/ssh/sshd_config.d/*.conf; do [ -f "$c" ] && cat "$c"; done; cat "$R/etc/ssh/sshd_config"; } 2>/dev/null \
    | awk -v k="${key,,}" 'tolower($1) == k && !done {print tolower($2); done=1}'
}
f=()
[ "$(sshd_first PasswordAuthentication)" = no ] || f+=("PasswordAuthentication is not 'no' ($(sshd_first PasswordAuthentication))")
[ "$(sshd_first PermitRootLogin)" = no ] || f+=("PermitRootLogin is not 'no' ($(sshd_first PermitRootLogin))")
[ "$(sshd_first KbdInteractiveAuthentication)" = no ] || f+=("KbdInteractiveAuthentication is not 'no'")
check "sshd: no passwords, no root login" "${f[@]}"

# 9. pending security updates (against the image's own sources and dpkg status, resolved on this host)
if [ "$CHECK_UPDATES" -eq 1 ]; then
  a=$(mktemp -d /tmp/kiln-imgcheck-apt.XXXXXX)
  mkdir -p "$a/lists/partial" "$a/cache/archives/partial" "$a/etc/sources.list.d" "$a/etc/trusted.gpg.d" "$a/etc/preferences.d" "$a/etc/apt.conf.d"
  # Sources with keyring paths pointing into the image (Signed-By / signed-by=).
  for s in "$R"/etc/apt/sources.list "$R"/etc/apt/sources.list.d/*.list "$R"/etc/apt/sources.list.d/*.sources; do
    [ -f "$s" ] || continue
    dst=$a/etc/sources.list.d/$(basename "$s"); [ "$s" = "$R/etc/apt/sources.list" ] && dst=$a/etc/sources.list
    sed -E "s#(Signed-By:[[:space:]]*|signed-by=)/#\\1$R/#" "$s" >"$dst"
  done
  aptq=(-o Dir::Etc="$a/etc" -o Dir::Etc::sourcelist="$a/etc/sources.list" -o Dir::Etc::sourceparts="$a/etc/sources.list.d"
        -o Dir::Etc::trustedparts="$R/etc/apt/trusted.gpg.d" -o Dir::State::Lists="$a/lists" -o Dir::State::status="$R/var/lib/dpkg/status"
        -o Dir::Cache="$a/cache" -o APT::Architecture="$(awk -F': ' '$1=="Architecture" && $2!="all" {print $2; exit}' "$R/var/lib/dpkg/status")"
        -o Debug::NoLocking=1 -o APT::Get::List-Cleanup=0)
  if ! grep -rqsE 'security' "$a/etc"; then
    fail "no pending security updates" "no security suite in the image's apt sources: updates cannot be checked (nor installed)"
  elif ! apt-get -q "${aptq[@]}" update >"$a/update.log" 2>&1; then
    fail "no pending security updates" "apt-get update against the image's sources failed:" "$(tail -3 "$a/update.log")"
  else
    lines f < <(apt-get -s "${aptq[@]}" dist-upgrade 2>/dev/null \
      | sed -nE '/^Inst .*-security/s/^Inst ([^ ]+) (\[([^]]*)\] )?\(([^ ]+) ([^ ]+).*/\1 \3 -> \4 (\5)/p')
    check "no pending security updates" "${f[@]}"
  fi
  rm -rf "$a"
fi

echo
echo "img-check: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
