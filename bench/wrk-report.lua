-- wrk's report for make bench: one JSON line after the run, which bench/bench.py reads (the line after "KILN-BENCH ").
-- WRK_PATHS (paths separated by spaces; optional): requests cycle through them (the warm-up: every target at once).
local paths = {}
for p in string.gmatch(os.getenv("WRK_PATHS") or "", "%S+") do paths[#paths + 1] = p end
local i = 0
if #paths > 0 then
  request = function()
    i = i % #paths + 1
    return wrk.format(nil, paths[i])
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'KILN-BENCH {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
