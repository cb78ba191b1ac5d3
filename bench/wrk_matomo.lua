-- wrk script: one realistic matomo.js pageview per wrk request (GET /matomo.php?...).
--
--   wrk -t2 -c50 -d10s -s bench/wrk_matomo.lua http://127.0.0.1:PORT
--
-- The server needs a site with `ids = 1` (Matomo's idsite) and, to measure the append path, a
-- rate limit that does not refuse the load (rate_limit_per_ip = 0). Output's last line: the
-- wrk_summary of bench/wrk_post.lua.

wrk.method = "GET"
wrk.path = "/matomo.php?action_name=Post%201&idsite=1&rec=1&r=123456&h=12&m=30&s=5"
  .. "&url=https%3A%2F%2Fexample.com%2Fblog%2Fpost-1%3Futm_source%3Dnewsletter"
  .. "&urlref=https%3A%2F%2Fwww.google.com%2F&_id=0123456789abcdef&_idn=0&send_image=0"
  .. "&_refts=0&pdf=1&qt=0&realp=0&wma=0&fla=0&java=0&ag=0&cookie=1&res=1920x1080"
  .. "&dimension1=pro&pv_id=AbC123&pf_net=0&pf_srv=12"
wrk.headers["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 "
  .. "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
wrk.headers["Accept-Language"] = "en-US,en;q=0.9"

function done(summary, latency, requests)
  local s = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "wrk_summary requests=%d duration_s=%.3f rps=%.1f non2xx=%d errors_connect=%d "
      .. "errors_read=%d errors_write=%d errors_timeout=%d p50_ms=%.3f p99_ms=%.3f\n",
    summary.requests, s, summary.requests / s, e.status, e.connect, e.read, e.write,
    e.timeout, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
