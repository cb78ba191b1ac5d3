-- wrk script: Segment HTTP Tracking API. Each request is what @segment/analytics-node sends
-- for one track call: POST /v1/batch with one message, the write key by Basic auth and in the
-- body, the SDK's User-Agent. Run against a tally whose site lists the key in `ids`:
--   [site example.com]
--   ids = WRK_SEGMENT_KEY (default bench_segment_key)
--   wrk -t2 -c50 -d10s -s bench/wrk_segment.lua http://127.0.0.1:PORT/v1/batch
-- (rate_limit_per_ip = 0 on the server: a write key is not privileged, and all load comes from
-- one IP.) Last line: the same wrk_summary line as bench/wrk_post.lua.

local key = os.getenv("WRK_SEGMENT_KEY") or "bench_segment_key"

local function b64(s)
  local a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  return ((s:gsub(".", function(c)
    local r, b = "", c:byte()
    for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and "1" or "0") end
    return r
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then return "" end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
    return a:sub(c + 1, c + 1)
  end) .. ({ "", "==", "=" })[#s % 3 + 1])
end

local now = os.date("!%Y-%m-%dT%H:%M:%S.000Z")
wrk.method = "POST"
wrk.path = "/v1/batch"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["User-Agent"] = "analytics-node-next/latest"
wrk.headers["Authorization"] = "Basic " .. b64(key .. ":")
wrk.body = '{"batch":[{"timestamp":"' .. now .. '","integrations":{},"event":"Order Completed",'
  .. '"type":"track","properties":{"order_id":"50314b8e9bcf000000000000","total":27.5,'
  .. '"revenue":25,"currency":"USD","coupon":"hasbros","products":[{"sku":"45790-32",'
  .. '"price":19}],"plan":"pro"},"context":{"page":{"url":"https://example.com/checkout",'
  .. '"referrer":"https://www.google.com/"},"userAgent":"Mozilla/5.0 (X11; Linux x86_64) '
  .. 'AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36","ip":"203.0.113.9",'
  .. '"library":{"name":"@segment/analytics-node","version":"3.1.0"}},"userId":"user-1029",'
  .. '"anonymousId":"6f1c2a9e-2d7b-4f7e-9a55-3c0f8f6f2b11","messageId":"node-next-'
  .. '1714000000000-1b2c3d4e-5f60-4718-9a0b-c1d2e3f40516","_metadata":{"nodeVersion":'
  .. '"v20.20.2","jsRuntime":"node"}}],"writeKey":"' .. key .. '","sentAt":"' .. now .. '"}'

function done(summary, latency, requests)
  local s = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "wrk_summary requests=%d duration_s=%.3f rps=%.1f non2xx=%d errors_connect=%d "
      .. "errors_read=%d errors_write=%d errors_timeout=%d p50_ms=%.3f p99_ms=%.3f\n",
    summary.requests, s, summary.requests / s, e.status, e.connect, e.read, e.write,
    e.timeout, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
