-- wrk script: PostHog capture API. Each request is one posthog-js style $pageview posted to
-- /i/v0/e/ (uncompressed JSON; gzip bodies cost the server an inflate on top). Run against a
-- tally whose site lists the token in `ids`:
--   [site example.com]
--   ids = WRK_POSTHOG_TOKEN (default phc_bench_token)
--   wrk -t2 -c50 -d10s -s bench/wrk_posthog.lua http://127.0.0.1:PORT/i/v0/e/
-- (rate_limit_per_ip = 0 on the server: all load comes from one IP.) Last line: the same
-- wrk_summary line as bench/wrk_post.lua.

local token = os.getenv("WRK_POSTHOG_TOKEN") or "phc_bench_token"
local ua = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
  .. "Chrome/124.0.0.0 Safari/537.36"
local now = os.date("!%Y-%m-%dT%H:%M:%S.000Z")

wrk.method = "POST"
wrk.path = "/i/v0/e/"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["User-Agent"] = ua
wrk.body = '{"api_key":"' .. token .. '","event":"$pageview","distinct_id":'
  .. '"0190a0b1-7c5e-7d4a-9a1b-123456789abc","uuid":"0190a0b1-7c5e-7d4a-9a1b-cdef01234567",'
  .. '"timestamp":"' .. now .. '","properties":{"$os":"Linux","$browser":"Chrome",'
  .. '"$device_type":"Desktop","$current_url":"https://example.com/blog/hello?utm_source=hn",'
  .. '"$host":"example.com","$pathname":"/blog/hello","$raw_user_agent":"' .. ua .. '",'
  .. '"$browser_version":124,"$browser_language":"en-US","$screen_height":1080,'
  .. '"$screen_width":1920,"$viewport_height":960,"$viewport_width":1920,"$lib":"web",'
  .. '"$lib_version":"1.200.0","$insert_id":"m2y1l4u3q7x9z0a1","$time":1714000000.123,'
  .. '"$device_id":"0190a0b1-7c5e-7d4a-9a1b-123456789abc","$referrer":"https://news.'
  .. 'ycombinator.com/","$referring_domain":"news.ycombinator.com","$session_id":'
  .. '"0190a0b1-7c5e-7d4a-9a1b-aaaabbbbcccc","$window_id":"0190a0b1-7c5e-7d4a-9a1b-'
  .. 'ddddeeeeffff","$pageview_id":"0190a0b1-7c5e-7d4a-9a1b-000011112222","author":"ann",'
  .. '"category":"engineering"},"offset":12}'

function done(summary, latency, requests)
  local s = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "wrk_summary requests=%d duration_s=%.3f rps=%.1f non2xx=%d errors_connect=%d "
      .. "errors_read=%d errors_write=%d errors_timeout=%d p50_ms=%.3f p99_ms=%.3f\n",
    summary.requests, s, summary.requests / s, e.status, e.connect, e.read, e.write,
    e.timeout, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
