-- wrk script: GoatCounter's count.js beacon, GET /count, one pageview per request (path, title,
-- referrer, screen width, query, cache buster), then one machine-readable summary line as
-- bench/wrk_post.lua prints. GoatCounter names the site by the Host header: it is set to
-- WRK_HOST (default example.com, a configured site name or one of a site's ids).
--
-- Environment: WRK_HOST, WRK_USER_AGENT (default a desktop Chrome, so the load is not taken
-- for bots).
-- Last line: wrk_summary requests=N duration_s=S rps=R non2xx=N errors_connect=N ...

wrk.method = "GET"
wrk.path = "/count?p=%2Fblog%2Flaunch&t=We%20launched&r=https%3A%2F%2Fwww.google.com%2F"
  .. "&s=1920&q=%3Futm_source%3Dnews&b=0&rnd=x7k2a"
wrk.headers["Host"] = os.getenv("WRK_HOST") or "example.com"
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
