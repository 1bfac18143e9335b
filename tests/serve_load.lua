-- wrk script for tests/serve_load.sh: PUT /api with a small greedy request; at the
-- end one line: requests, errors (connect, read, write, timeout, non-2xx), latency
-- p50 / p99 in milliseconds.
wrk.method = "PUT"
wrk.body = '{"prompts": ["the quick brown"], "tokens_to_generate": 4, "temperature": 0}'
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("LOAD requests=%d errors=%d non2xx=%d p50_ms=%.1f p99_ms=%.1f\n",
    summary.requests, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
