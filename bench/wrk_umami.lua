-- wrk script: one realistic Umami tracker pageview per wrk request (POST /api/send).
--
--   wrk -t2 -c50 -d10s -s bench/wrk_umami.lua http://127.0.0.1:PORT
--
-- The server needs a site with `ids = 4e4a8c0a-4b1e-4f6b-9a57-1d8a2c3b4d5e` and
-- rate_limit_per_ip = 0 (all load comes from one IP). Output's last line: the wrk_summary of
-- bench/wrk_post.lua.

wrk.method = "POST"
wrk.path = "/api/send"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 "
  .. "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
wrk.body = '{"type":"event","payload":{"website":"4e4a8c0a-4b1e-4f6b-9a57-1d8a2c3b4d5e",'
  .. '"screen":"1920x1080","language":"en-US","title":"Post 1","hostname":"example.com",'
  .. '"url":"https://example.com/blog/post-1?utm_source=newsletter",'
  .. '"referrer":"https://www.google.com/"}}'

function done(summary, latency, requests)
  local s = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "wrk_summary requests=%d duration_s=%.3f rps=%.1f non2xx=%d errors_connect=%d "
      .. "errors_read=%d errors_write=%d errors_timeout=%d p50_ms=%.3f p99_ms=%.3f\n",
    summary.requests, s, summary.requests / s, e.status, e.connect, e.read, e.write,
    e.timeout, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
