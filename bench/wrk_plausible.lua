-- wrk script: Plausible's tracker request, POST /api/event, one realistic pageview per request
-- (short keys and text/plain, as @plausible-analytics/tracker sends it), then one
-- machine-readable summary line as bench/wrk_post.lua prints.
--
-- Environment: WRK_SITE (default example.com: the configured site), WRK_USER_AGENT (default a
-- desktop Chrome, so the load is not taken for bots).
-- Last line: wrk_summary requests=N duration_s=S rps=R non2xx=N errors_connect=N ...

local site = os.getenv("WRK_SITE") or "example.com"
wrk.method = "POST"
wrk.path = "/api/event"
wrk.body = '{"n":"pageview","v":36,"u":"https://' .. site .. '/blog/launch?utm_source=news'
  .. '&utm_medium=email","d":"' .. site .. '","r":"https://www.google.com/",'
  .. '"p":{"author":"ann","logged_in":"false"}}'
wrk.headers["Content-Type"] = "text/plain"
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
