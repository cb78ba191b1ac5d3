-- wrk script: one realistic GA4 Measurement Protocol request (a page_view) per wrk request.
--
--   wrk -t2 -c50 -d10s -s bench/wrk_ga4.lua 'http://127.0.0.1:PORT/mp/collect?measurement_id=G-BENCH&api_secret=bench-secret'
--
-- The server needs a site with `ids = G-BENCH` and `ga4_api_secret = bench-secret`. The body
-- is fixed (GA4 allows the same client_id on every hit); the last line of output is the same
-- machine-readable summary as bench/wrk_post.lua:
--   wrk_summary requests=N duration_s=S rps=R non2xx=N errors_connect=N ... p50_ms=.. p99_ms=..

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["User-Agent"] = "python-requests/2.31.0"
wrk.body = '{"client_id":"1234567890.1700000000","user_id":"u-42",'
  .. '"device":{"language":"en-US","screen_resolution":"1920x1080"},'
  .. '"events":[{"name":"page_view","params":{'
  .. '"page_location":"https://example.com/blog/post-1?utm_source=newsletter",'
  .. '"page_referrer":"https://www.google.com/","page_title":"Post 1",'
  .. '"engagement_time_msec":1200,"session_id":"1700000000","plan":"pro"}}]}'

function done(summary, latency, requests)
  local s = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "wrk_summary requests=%d duration_s=%.3f rps=%.1f non2xx=%d errors_connect=%d "
      .. "errors_read=%d errors_write=%d errors_timeout=%d p50_ms=%.3f p99_ms=%.3f\n",
    summary.requests, s, summary.requests / s, e.status, e.connect, e.read, e.write,
    e.timeout, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
