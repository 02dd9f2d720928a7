-- wrk script for scripts/bench-latency: a small non-streaming POST /v1/messages, and a
-- one-line JSON summary (latency percentiles in microseconds) that the wrapper parses.
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.headers["anthropic-version"] = "2023-06-01"
wrk.headers["x-api-key"] = "sk-ant-bench-latency"
wrk.headers["x-toklock-agent"] = "wrk"
wrk.body = '{"model":"claude-sonnet-4-5","max_tokens":16,' ..
  '"messages":[{"role":"user","content":"Say hello in a few words."}]}'

function done(summary, latency, requests)
  local s = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests":%d,"seconds":%.3f,"rps":%.1f,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
      '"max_us":%d,"non2xx":%d,"socket_errors":%d}\n',
    summary.requests, s, summary.requests / s, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
