-- wrk script of `make bench`: prints one machine-readable line at the end
-- (latencies in microseconds, unrounded; the same numbers wrk's
-- "Latency Avg" and "99%" lines show rounded).
done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        "RESULT requests=%d duration_us=%d mean_us=%.1f p50_us=%.1f p90_us=%.1f p99_us=%.1f max_us=%.1f errors=%d\n",
        summary.requests, summary.duration, latency.mean,
        latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
        e.connect + e.read + e.write + e.status + e.timeout))
end
