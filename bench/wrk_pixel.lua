-- wrk script: the no-script pixel, GET /p.gif, one pageview per request with a page URL, a
-- referrer and a cache buster, then one machine-readable summary line as bench/wrk_post.lua.
--
-- Environment: WRK_SITE (default example.com: the configured site), WRK_USER_AGENT (default a
-- desktop Chrome, so the load is not taken for bots).
-- Last line: wrk_summary requests=N duration_s=S rps=R non2xx=N errors_connect=N ...

local site = os.getenv("WRK_SITE") or "example.com"
wrk.method = "GET"
wrk.path = "/p.gif?site=" .. site .. "&url=https%3A%2F%2F" .. site
  .. "%2Fnewsletter%2F2026-05%3Futm_source%3Demail&ref=https%3A%2F%2Fmail.example.net%2F"
  .. "&rnd=8f3k2"
wrk.headers["User-Agent"] = os.getenv("WRK_USER_AGENT")
  or "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
     .. "Chrome/124.0.0.0 Safari/537.36"

function done(summary, latency, requests)
  local s = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "wrk_summary requests=%d duration_s=%.3f rps=%.1f non2xx=%d errors_connect=%d "
      .. "errors_read=%d errors_write=%d errors_timeout=%d p50_ms=%.3f p99_ms=%.3f\n",
    summary.requests, s, summary.requests / s, e.status, e.connect, e.read, e.write,
    e.timeout, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
