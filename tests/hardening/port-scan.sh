#!/usr/bin/env bash
# TCP connect scan of all 65535 ports of a Kiln target; only the expected ports may answer.
# Usage: tests/hardening/port-scan.sh HOST [PORTS_EXPECTED]     (default "22 80 443")
#   HOST must be this machine or a test VM/container reachable without a gateway (loopback, a libvirt bridge, a veth):
#   anything routed through a gateway is refused, so this never scans a foreign network.
#   Scanning a QEMU user-networking VM through 127.0.0.1 only shows its host forwards: scan the guest's bridge address.
# Env: SCAN_CONCURRENCY [1024], SCAN_TIMEOUT seconds [1]. ~65 s against a firewall that drops (each port times out);
# a sweep that misses an expected port (answering a calm probe) is repeated slower.
set -euo pipefail
HOST=${1:?usage: port-scan.sh HOST [\"22 80 443\"]}
EXPECT=${2:-22 80 443}
addr=$(getent ahosts "$HOST" | awk 'NR==1 {print $1}')
[ -n "$addr" ] || { echo "port-scan: cannot resolve $HOST" >&2; exit 2; }
route=$(ip route get "$addr" 2>/dev/null | head -1)
case $route in
  local\ *|*" dev lo "*) ;;
  *" via "*) echo "port-scan: refusing $HOST ($addr): routed via a gateway ($route)" >&2; exit 2 ;;
  "") echo "port-scan: no route to $addr" >&2; exit 2 ;;
esac
echo "port-scan: $HOST ($addr), all TCP ports, expecting only: $EXPECT"
python3 - "$addr" "$EXPECT" "${SCAN_CONCURRENCY:-1024}" "${SCAN_TIMEOUT:-1}" <<'PY'
import asyncio, resource, sys, time
addr, expect, conc, timeout = sys.argv[1], {int(p) for p in sys.argv[2].split()}, int(sys.argv[3]), float(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = min(hard, conc + 256) if hard != resource.RLIM_INFINITY else conc + 256
if soft < want:
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
conc = min(conc, want - 64)
async def probe(port, sem, found, tmo):
    async with sem:
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection(addr, port), tmo)
            found.append(port); w.close()
            try: await w.wait_closed()
            except Exception: pass
        except Exception:
            pass
async def sweep(ports, conc, tmo):
    sem, found = asyncio.Semaphore(conc), []
    await asyncio.gather(*(probe(p, sem, found, tmo) for p in ports))
    return sorted(found)
# A sweep only counts when it saw every expected port that answers a calm probe: a slow target (a TCG VM) can
# miss connections under thousands of SYNs per second, and a lossy sweep could also miss an unexpected port.
t0 = time.time()
calm = asyncio.run(sweep(sorted(expect), 1, 5.0))
for attempt in range(1, 4):
    open_ports = asyncio.run(sweep(range(1, 65536), conc, timeout))
    lost = [p for p in calm if p not in open_ports]
    if not lost:
        break
    print(f"port-scan: sweep {attempt} at concurrency {conc} missed answering port(s) {lost}: lossy, retrying slower")
    conc, timeout = max(64, conc // 4), timeout * 2
else:
    print("port-scan: FAIL  no reliable sweep in 3 attempts"); sys.exit(1)
open_ports.sort()
unexpected = [p for p in open_ports if p not in expect]
missing = sorted(expect - set(open_ports))
print(f"port-scan: {len(open_ports)} open in {time.time()-t0:.1f}s: {' '.join(map(str, open_ports)) or '(none)'}")
for p in unexpected: print(f"  FAIL  unexpected open port {p}")
for p in missing: print(f"  FAIL  expected port {p} not answering")
ok = not unexpected and not missing
print(f"port-scan: {1 if ok else 0} passed, {0 if ok else 1} failed")
sys.exit(0 if ok else 1)
PY
