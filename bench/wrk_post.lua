-- wrk script: POST the same body on every request, then print one machine-readable summary.
--
-- Environment (read by every wrk thread):
--   WRK_BODY_FILE      file whose bytes are the request body (required)
--   WRK_CONTENT_TYPE   Content-Type header (default application/json)
--   WRK_USER_AGENT     User-Agent header (default a desktop browser, so the server does not
--                      treat the load as a bot and skip the append)
--
-- Last line of output:
--   wrk_summary requests=N duration_s=S rps=R non2xx=N errors_connect=N errors_read=N
--               errors_write=N errors_timeout=N p50_ms=.. p99_ms=..
-- (wrk counts "status" errors as any answer >= 400; it is reported as non2xx.)

local function slurp(path)
  local f = assert(io.open(path, "rb"), "cannot open WRK_BODY_FILE " .. tostring(path))
  local data = f:read("*a")
  f:close()
  return data
end

local body_file = os.getenv("WRK_BODY_FILE")
assert(body_file, "WRK_BODY_FILE is not set")

wrk.method = "POST"
wrk.body = slurp(body_file)
wrk.headers["Content-Type"] = os.getenv("WRK_CONTENT_TYPE") or "application/json"
wrk.headers["User-Agent"] = os.getenv("WRK_USER_AGENT")
  or "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
     .. "Chrome/124.0.0.0 Safari/537.36"

-- No request() function: wrk then formats the request once per thread after adding Host.

function done(summary, latency, requests)
  local s = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "wrk_summary requests=%d duration_s=%.3f rps=%.1f non2xx=%d errors_connect=%d "
      .. "errors_read=%d errors_write=%d errors_timeout=%d p50_ms=%.3f p99_ms=%.3f\n",
    summary.requests, s, summary.requests / s, e.status, e.connect, e.read, e.write,
    e.timeout, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
