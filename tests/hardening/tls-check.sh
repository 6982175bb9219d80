#!/usr/bin/env bash
# TLS and security-header check of a Kiln web endpoint (Mozilla "intermediate" profile).
# Usage: tests/hardening/tls-check.sh HOST [PORT]        (default port 443)
#   TLS 1.0 and 1.1 refused (probed with a client willing to speak them: @SECLEVEL=0); TLS 1.2 and 1.3 accepted;
#   every TLS 1.2 cipher the server accepts is in Mozilla's intermediate list; HSTS (>= 6 months),
#   X-Content-Type-Options nosniff, X-Frame-Options or CSP frame-ancestors, Referrer-Policy; no version in Server.
# Env: TLS_CHECK_PATH [/healthz] (probes over HTTPS), TLS_CHECK_HOST Host header [HOST]. Needs openssl and curl.
set -euo pipefail
HOST=${1:?usage: tls-check.sh HOST [PORT]}
PORT=${2:-443}
URLPATH=${TLS_CHECK_PATH:-/healthz}
HOSTHDR=${TLS_CHECK_HOST:-$HOST}
# Only this machine or a test VM/container reachable without a gateway (as in port-scan.sh): never a foreign host.
addr=$(getent ahosts "$HOST" | awk 'NR==1 {print $1}')
route=$(ip route get "$addr" 2>/dev/null | head -1)
case $route in
  local\ *|*" dev lo "*) ;;
  *" via "*|"") echo "tls-check: refusing $HOST ($addr): not on this host or a directly attached test network ($route)" >&2; exit 2 ;;
esac
PASSED=0; FAILED=0
pass() { printf '  PASS  %s\n' "$*"; PASSED=$((PASSED + 1)); }
fail() { printf '  FAIL  %s\n' "$*"; FAILED=$((FAILED + 1)); }
# Mozilla Server Side TLS, intermediate configuration: TLS 1.2 cipher suites (OpenSSL names).
MOZ_INTERMEDIATE="ECDHE-ECDSA-AES128-GCM-SHA256 ECDHE-RSA-AES128-GCM-SHA256 ECDHE-ECDSA-AES256-GCM-SHA384
ECDHE-RSA-AES256-GCM-SHA384 ECDHE-ECDSA-CHACHA20-POLY1305 ECDHE-RSA-CHACHA20-POLY1305 DHE-RSA-AES128-GCM-SHA256
DHE-RSA-AES256-GCM-SHA384 DHE-RSA-CHACHA20-POLY1305"

handshake() { # handshake ARGS... -> 0 if a session was established
  local out
  out=$(timeout 10 openssl s_client -connect "$HOST:$PORT" -servername "$HOSTHDR" "$@" </dev/null 2>&1) || return 1
  grep -qE '^ *(Protocol|New), (TLSv|\(NONE\))' <<<"$out" || grep -q 'Cipher is [A-Z0-9]' <<<"$out" || return 1
  ! grep -q 'Cipher is (NONE)' <<<"$out"
}
echo "tls-check: $HOST:$PORT (Host: $HOSTHDR)"
for v in tls1 tls1_1; do
  if handshake "-$v" -cipher 'ALL:@SECLEVEL=0'; then fail "${v/_/.} accepted (must be refused)"; else pass "${v/_/.} refused"; fi
done
for v in tls1_2 tls1_3; do
  if handshake "-$v"; then pass "${v/_/.} accepted"; else fail "${v/_/.} refused (must be accepted)"; fi
done

accepted=(); bad=()
for c in $(openssl ciphers -tls1_2 'ALL:COMPLEMENTOFALL:@SECLEVEL=0' 2>/dev/null | tr ':' ' '); do
  case $c in TLS_*) continue ;; esac           # TLS 1.3 suites: fixed set, all acceptable
  if handshake -tls1_2 -cipher "$c:@SECLEVEL=0"; then
    accepted+=("$c")
    grep -qw -- "$c" <<<"$MOZ_INTERMEDIATE" || bad+=("$c")
  fi
done
if [ ${#accepted[@]} -eq 0 ]; then fail "TLS 1.2: no cipher accepted"
elif [ ${#bad[@]} -gt 0 ]; then fail "TLS 1.2 ciphers outside Mozilla intermediate: ${bad[*]}"
else pass "TLS 1.2 ciphers all Mozilla intermediate: ${accepted[*]}"; fi

hdrs=$(curl -sk -o /dev/null -D - --max-time 15 -H "Host: $HOSTHDR" "https://$HOST:$PORT$URLPATH" | tr -d '\r') \
  || { fail "HTTPS request to $URLPATH failed"; hdrs=""; }
hval() { awk -v k="$1" 'BEGIN {IGNORECASE=1} tolower($0) ~ "^" tolower(k) ":" {sub(/^[^:]*: */, ""); print; exit}' <<<"$hdrs"; }
hsts=$(hval Strict-Transport-Security)
age=$(sed -nE 's/.*max-age=([0-9]+).*/\1/p' <<<"$hsts")
if [ -n "$age" ] && [ "$age" -ge 15768000 ]; then pass "HSTS: $hsts"; else fail "HSTS missing or max-age < 6 months: '${hsts}'"; fi
xcto=$(hval X-Content-Type-Options)
if [ "${xcto,,}" = nosniff ]; then pass "X-Content-Type-Options: nosniff"; else fail "X-Content-Type-Options nosniff missing"; fi
xfo=$(hval X-Frame-Options); csp=$(hval Content-Security-Policy)
if [ -n "$xfo" ] || grep -q 'frame-ancestors' <<<"$csp"; then pass "framing restricted: ${xfo:-$csp}"; else fail "neither X-Frame-Options nor CSP frame-ancestors"; fi
rp=$(hval Referrer-Policy)
if [ -n "$rp" ]; then pass "Referrer-Policy: $rp"; else fail "Referrer-Policy missing"; fi
srv=$(hval Server)
if grep -qE '[0-9]+\.[0-9]+' <<<"$srv"; then fail "Server header leaks a version: $srv"; else pass "Server header without version: ${srv:-(none)}"; fi

echo "tls-check: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
