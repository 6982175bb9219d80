#!/usr/bin/env bash
# Install the named Debian packages on the build host, only those missing or older than Kiln needs, so a warm machine
# pays nothing.
# Usage: tools/apt-ensure.sh PKG...
set -euo pipefail
# Minimum versions. QEMU >= 8.0 translates x86 code position-independently under TCG (CF_PCREL): a guest's processes,
# each mapped at random addresses (ASLR), then share translated code instead of re-translating ld.so and libc on
# every exec. Measured in a TCG guest of the image (2 vCPUs): an exec of /bin/true 44 -> 27 ms, `openssl version` 214 ->
# 74 ms (7.2 against 10.0). Debian 12 ships 7.2; its backports carry 10.0.
declare -A MIN=([qemu-system-x86]=1:8.0 [qemu-utils]=1:8.0)
wanted() { # -> missing, too_old; status 0 when nothing is to be installed
  local pkg have
  missing=() too_old=()
  for pkg in "$@"; do
    have=$(dpkg-query -W -f='${Status} ${Version}' "$pkg" 2>/dev/null || true)
    case $have in
      "install ok installed "*) ;;
      *) missing+=("$pkg"); continue ;;
    esac
    if [ -n "${MIN[$pkg]:-}" ] && dpkg --compare-versions "${have##* }" lt "${MIN[$pkg]}"; then too_old+=("$pkg"); fi
  done
  [ ${#missing[@]} -eq 0 ] && [ ${#too_old[@]} -eq 0 ]
}
if wanted "$@"; then exit 0; fi
[ "$(id -u)" -eq 0 ] || { echo "apt-ensure: need root to install: ${missing[*]} ${too_old[*]}" >&2; exit 1; }
# One install at a time: `make test` runs stages side by side (tools/background.sh), each ensuring its own packages,
# and apt refuses a second dpkg run instead of waiting. After the wait, what another run installed is not wanted.
mkdir -p /run/lock
exec 9>/run/lock/kiln-apt-ensure.lock
flock 9
if wanted "$@"; then exit 0; fi
echo "apt-ensure: installing${missing:+ ${missing[*]}}${too_old:+ (newer: ${too_old[*]})}"
export DEBIAN_FRONTEND=noninteractive
# Daemons are started by whoever needs them (tests start their own), never by the package's postinst.
policy_added=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy_added=1
fi
trap 'if [ "$policy_added" -eq 1 ]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT
apt-get update -qq
# A package whose minimum the host's own suite does not meet comes from the distro's backports, from Debian's or
# Ubuntu's archive as already configured: the same mirror, suite <codename>-backports, the same signing key.
backports=()
for pkg in "${missing[@]}" "${too_old[@]}"; do
  [ -n "${MIN[$pkg]:-}" ] || continue
  cand=$(apt-cache policy "$pkg" | sed -n 's/^ *Candidate: //p')
  if [ -z "$cand" ] || [ "$cand" = "(none)" ] || dpkg --compare-versions "$cand" lt "${MIN[$pkg]}"; then backports+=("$pkg"); fi
done
if [ ${#backports[@]} -gt 0 ]; then
  # shellcheck source=/dev/null
  . /etc/os-release
  suite="$VERSION_CODENAME-backports"
  src=/etc/apt/sources.list.d/kiln-backports.sources
  # shellcheck disable=SC2016 # apt's own format placeholder
  fmt='$(REPO_URI)'
  # Already configured (by Kiln or the host, as on some cloud images): a second entry with another Signed-By breaks apt.
  if [ ! -e "$src" ] && [ -z "$(apt-get indextargets --format "$fmt" 'Created-By: Packages' "Codename: $suite")" ]; then
    # The distro's own archive for the host's suite, by its Release file's fields (not a third-party repository
    # whose address happens to end in debian/).
    uri=$(apt-get indextargets --format "$fmt" 'Created-By: Packages' "Codename: $VERSION_CODENAME" "Label: ${ID^}" | sed -n 1p)
    [ -n "$uri" ] || { echo "apt-ensure: no ${ID^} archive for $VERSION_CODENAME among the apt sources to take $suite from" >&2; exit 1; }
    key=/usr/share/keyrings/$ID-archive-keyring.gpg
    printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: %s\n' "$uri" "$suite" "$key" > "$src"
    echo "apt-ensure: added $suite ($uri) as $src"
    apt-get update -qq || { rm -f "$src"; echo "apt-ensure: $suite unusable, removed $src" >&2; exit 1; }
  fi
fi
others=()
for pkg in "${missing[@]}" "${too_old[@]}"; do
  [[ " ${backports[*]} " == *" $pkg "* ]] || others+=("$pkg")
done
if [ ${#others[@]} -gt 0 ]; then apt-get install -y -qq --no-install-recommends "${others[@]}" >/dev/null; fi
if [ ${#backports[@]} -gt 0 ]; then
  apt-get install -y -qq --no-install-recommends -t "$suite" "${backports[@]}" >/dev/null
fi
for pkg in "${backports[@]}"; do
  v=$(dpkg-query -W -f='${Version}' "$pkg")
  dpkg --compare-versions "$v" ge "${MIN[$pkg]}" || { echo "apt-ensure: $pkg $v installed, Kiln needs >= ${MIN[$pkg]}" >&2; exit 1; }
done
