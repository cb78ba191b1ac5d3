"""Native ingest POST /v1/events end to end: fields, errors, all-or-nothing, durability in the
log, sites, keys, rate limits, CORS, gzip, health, metrics, graceful stop."""
import gzip
import json
import os
import subprocess
import time

from harness import BIN, Tally, check, eq, run_all, test

NOW_MS = lambda: int(time.time() * 1000)  # noqa: E731


def pv(**kw):
    ev = {"site": "example.com", "url": "https://example.com/a?utm_source=news", "name": "pageview"}
    ev.update(kw)
    return ev


def with_server(config="", **kw):
    t = Tally(config, **kw)
    t.start()
    return t


@test
def accepted_count_is_exact_for_any_size():
    t = with_server()
    try:
        for n in (9, 10, 120, 1000):
            s, _, raw = t.request("POST", "/v1/events",
                                  json.dumps([pv(id="n%d-%d" % (n, i)) for i in range(n)]),
                                  {"Content-Type": "application/json"})
            eq(s, 202, raw)
            eq(raw, b'{"accepted": %d}' % n)
    finally:
        t.cleanup()


@test
def single_array_and_ndjson_are_durable():
    t = with_server()
    try:
        s, _, body = t.post_json("/v1/events", pv(id="e1"))
        eq(s, 202, body)
        eq(body, {"accepted": 1})
        s, _, body = t.post_json("/v1/events", [pv(id="e2"), pv(id="e3", name="Signup")])
        eq((s, body), (202, {"accepted": 2}))
        nd = "\n".join(json.dumps(pv(id="e%d" % i)) for i in range(4, 7)) + "\n\n"
        s, _, raw = t.request("POST", "/v1/events", nd, {"Content-Type": "application/x-ndjson"})
        eq(s, 202, raw)
        eq(json.loads(raw), {"accepted": 3})
        eq(t.stop(), 0)
        recs = t.dump_log()
        eq([r["id"] for r in recs], ["e1", "e2", "e3", "e4", "e5", "e6"])
        eq(recs[2]["name"], "Signup")
        eq(recs[0]["site"], "example.com")
        eq(recs[0]["url"], "https://example.com/a?utm_source=news")
        check("ip" not in recs[0], "no IP in the log")
        check(recs[0]["visitor"] != 0, "visitor hash present")
    finally:
        t.cleanup()


@test
def every_field_round_trips():
    t = with_server()
    try:
        ts = NOW_MS() - 3600 * 1000
        ev = pv(id="full", name="Purchase", referrer="https://www.google.com/search?q=x",
                ts=ts, visitor_id="user-42", props={"plan": "pro", "seats": 3, "trial": False},
                revenue={"amount": "19.99", "currency": "USD"}, interactive=False)
        s, _, body = t.post_json("/v1/events", ev, {"User-Agent": "Mozilla/5.0 (X11; Linux "
                                 "x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                                 "Chrome/120.0 Safari/537.36"})
        eq(s, 202, body)
        s, _, body = t.post_json("/v1/events", pv(id="rfc", ts="2020-01-01T00:00:00Z"))
        eq(s, 400, body)
        check("ts" in body["error"], body)
        eq(body.get("index"), 0)
        t.stop()
        r = t.dump_log()[0]
        eq(r["name"], "Purchase")
        eq(r["referrer"], "https://www.google.com/search?q=x")
        eq(r["ts_ms"], ts)
        eq(r["props"], {"plan": "pro", "seats": "3", "trial": "false"})
        eq(r["revenue"]["currency"], "USD")
        eq(r["interactive"], False)
        check("Chrome/120" in r["user_agent"], r)
    finally:
        t.cleanup()


@test
def visitor_id_is_stable_hash_not_raw():
    t = with_server()
    try:
        for i in range(2):
            eq(t.post_json("/v1/events", pv(id="v%d" % i, visitor_id="alice"))[0], 202)
        eq(t.post_json("/v1/events", pv(id="v2", visitor_id="bob"))[0], 202)
        eq(t.post_json("/v1/events", pv(id="v3"), {"User-Agent": "UA-1"})[0], 202)
        eq(t.post_json("/v1/events", pv(id="v4"), {"User-Agent": "UA-1"})[0], 202)
        eq(t.post_json("/v1/events", pv(id="v5"), {"User-Agent": "UA-2"})[0], 202)
        t.stop()
        v = [r["visitor"] for r in t.dump_log()]
        eq(v[0], v[1])
        check(v[0] != v[2], "different client ids differ")
        eq(v[3], v[4])
        check(v[3] != v[5], "different user agents differ")
        check("alice" not in json.dumps(t.dump_log()), "client ids are stored hashed only")
    finally:
        t.cleanup()


def expect_400(t, body, field, index=0, ctype="application/json", status=400):
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    s, h, raw = t.request("POST", "/v1/events", data, {"Content-Type": ctype})
    eq(s, status, raw)
    eq(h.get("content-type", "").split(";")[0], "application/json")
    obj = json.loads(raw)
    check(field in obj["error"], "error %r should name %r" % (obj["error"], field))
    if index is not None:
        eq(obj.get("index"), index, obj)


@test
def field_errors_name_field_and_index():
    t = with_server()
    try:
        now = NOW_MS()
        expect_400(t, {"url": "https://example.com/"}, "site")
        expect_400(t, pv(site=5), "site")
        expect_400(t, pv(name="x" * 121), "name")
        expect_400(t, pv(name=7), "name")
        expect_400(t, {"site": "example.com"}, "url")
        expect_400(t, pv(url="ftp://example.com/"), "url")
        expect_400(t, pv(url="https://example.com/" + "a" * 2100), "url")
        expect_400(t, pv(referrer="r" * 2100), "referrer")
        expect_400(t, pv(ts=now - 73 * 3600 * 1000), "ts")
        expect_400(t, pv(ts=now + 3600 * 1000), "ts")
        expect_400(t, pv(ts="yesterday"), "ts")
        expect_400(t, pv(ts=1.5e300), "ts")
        expect_400(t, pv(visitor_id="v" * 257), "visitor_id")
        expect_400(t, pv(id="i" * 129), "id")
        expect_400(t, pv(props=[1, 2]), "props")
        expect_400(t, pv(props={"k%d" % i: i for i in range(31)}), "props")
        expect_400(t, pv(props={"k": {"nested": 1}}), "props")
        expect_400(t, pv(props={"k": "v" * 2001}), "props")
        expect_400(t, pv(revenue={"amount": "abc", "currency": "EUR"}), "revenue")
        expect_400(t, pv(revenue={"amount": 1, "currency": "euro"}), "revenue")
        expect_400(t, pv(interactive="yes"), "interactive")
        expect_400(t, pv(ip="1.2.3.4"), "ip", status=403)  # needs a write key
        expect_400(t, pv(user_agent="x"), "user_agent", status=403)
        expect_400(t, pv(unknown_field=1), "unknown_field")
        expect_400(t, [pv(), pv(), pv(name=3)], "name", index=2)
        expect_400(t, "[" * 10000 + "]" * 10000, "", index=None)
        expect_400(t, b'{"site": "ex\xff\xfe.com", "url": "https://example.com/"}', "", None)
        expect_400(t, "not json", "", index=None)
        expect_400(t, "[]", "", index=None)
        t.stop()
        eq(t.dump_log(), [], "nothing appended by invalid requests")
    finally:
        t.cleanup()


@test
def events_per_request_and_body_limits():
    t = with_server("[server]\nevents_per_request_max = 5\nbody_bytes_max = 4096\n")
    try:
        s, _, body = t.post_json("/v1/events", [pv() for _ in range(6)])
        eq(s, 413, body)
        check("error" in body)
        s, _, raw = t.request("POST", "/v1/events", "x" * 5000, {"Content-Type":
                                                                  "application/json"})
        eq(s, 413, raw)
        eq(t.post_json("/v1/events", [pv() for _ in range(5)])[0], 202)
    finally:
        t.cleanup()


@test
def unknown_site_404_without_auto_sites():
    t = with_server("[server]\nauto_sites = false\n[site example.com]\nids = G-XYZ\n")
    try:
        s, _, body = t.post_json("/v1/events", pv(site="other.org"))
        eq(s, 404, body)
        check("other.org" in body["error"], body)
        eq(t.post_json("/v1/events", pv(site="G-XYZ"))[0], 202)
        t.stop()
        eq([r["site"] for r in t.dump_log()], ["example.com"])
    finally:
        t.cleanup()


@test
def write_key_unlocks_privileged_fields():
    out = subprocess.run([BIN, "key", "new", "--scope", "write"], capture_output=True,
                         text=True, timeout=10)
    eq(out.returncode, 0, out.stderr)
    lines = out.stdout.splitlines()
    eq(len(lines), 2, out.stdout)
    key = lines[0].split(" = ")[1]
    digests = lines[1].split(" = ")[1]
    t = with_server("[auth]\nkey_digests = %s\n" % digests)
    try:
        old = NOW_MS() - 400 * 86400 * 1000
        auth = {"Authorization": "Bearer " + key}
        s, _, body = t.post_json("/v1/events", pv(ts=old, ip="8.8.8.8", user_agent="curl/8"),
                                 auth)
        eq(s, 202, body)
        s, _, body = t.post_json("/v1/events", pv(), {"Authorization": "Bearer wrong"})
        eq(s, 401, body)
        t.stop()
        r = t.dump_log()[0]
        eq(r["ts_ms"], old)
        eq(r["user_agent"], "curl/8")
        check("8.8.8.8" not in json.dumps(r), "raw IP never stored")
    finally:
        t.cleanup()


@test
def rate_limit_429_with_retry_after_and_nothing_appended():
    t = with_server("[server]\nrate_limit_per_ip = 1\nrate_limit_burst = 3\n")
    try:
        eq(t.post_json("/v1/events", [pv(), pv(), pv()])[0], 202)
        s, h, body = t.post_json("/v1/events", [pv(id="over")])
        eq(s, 429, body)
        check(int(h["retry-after"]) >= 1, h)
        t.stop()
        eq(len(t.dump_log()), 3)
    finally:
        t.cleanup()


@test
def bots_and_foreign_hosts_are_acknowledged_and_flagged():
    t = with_server("[site example.com]\n")
    try:
        eq(t.post_json("/v1/events", pv(id="bot"), {"User-Agent": "Mozilla/5.0 (compatible; "
                       "Googlebot/2.1; +http://www.google.com/bot.html)"})[0], 202)
        browser = {"User-Agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
                   "(KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"}
        eq(t.post_json("/v1/events", pv(id="host", url="https://evil.net/x"), browser)[0], 202)
        eq(t.post_json("/v1/events", pv(id="ok", url="https://www.example.com/x"), browser)[0],
           202)
        _, _, metrics = t.request("GET", "/metrics")
        m = metrics.decode()
        check('tally_events_dropped_total{reason="bot"} 1' in m, m[-3000:])
        check('tally_events_dropped_total{reason="host"} 1' in m, m[-3000:])
        # a client retry with the same id is acknowledged and left out as a duplicate
        eq(t.post_json("/v1/events", pv(id="ok", url="https://www.example.com/x"), browser)[0],
           202)
        deadline = time.time() + 5
        while 'tally_events_dropped_total{reason="duplicate"} 1' not in m:
            check(time.time() < deadline, "duplicate not counted: %s" % m[-3000:])
            time.sleep(0.1)
            m = t.request("GET", "/metrics")[2].decode()
        t.stop()
        flags = {r["id"]: r["flags"] for r in t.dump_log()[:3]}
        check("bot" in flags["bot"], flags)
        check("host_not_allowed" in flags["host"], flags)
        eq(flags["ok"], [])
    finally:
        t.cleanup()


@test
def cors_preflight_and_gzip_body():
    t = with_server()
    try:
        s, h, _ = t.request("OPTIONS", "/v1/events", None, {
            "Origin": "https://example.com", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        check(s in (200, 204), s)
        check(h.get("access-control-allow-origin") in ("*", "https://example.com"), h)
        check("POST" in h.get("access-control-allow-methods", ""), h)
        body = gzip.compress(json.dumps([pv(id="g1"), pv(id="g2")]).encode())
        s, h, raw = t.request("POST", "/v1/events", body, {"Content-Type": "application/json",
                              "Content-Encoding": "gzip", "Origin": "https://example.com"})
        eq(s, 202, raw)
        check("access-control-allow-origin" in h, h)
        t.stop()
        eq([r["id"] for r in t.dump_log()], ["g1", "g2"])
    finally:
        t.cleanup()


@test
def healthz_metrics_and_graceful_stop():
    t = with_server()
    try:
        s, _, raw = t.request("GET", "/healthz")
        eq(s, 200)
        h = json.loads(raw)
        eq(h["status"], "ok")
        check("log_end_offset" in h, h)
        eq(t.post_json("/v1/events", pv())[0], 202)
        s, hdrs, raw = t.request("GET", "/metrics")
        eq(s, 200)
        m = raw.decode()
        for name in ("tally_http_requests_total", "tally_events_accepted_total",
                     "tally_log_bytes", "tally_log_fsync_seconds_bucket",
                     "tally_log_queue_records", "tally_log_queue_capacity_bytes"):
            check(name in m, "metric %s missing" % name)
        check('tally_events_accepted_total 1' in m, m)
        # One small event: nothing went around the page cache.
        check("\ntally_log_direct_written_bytes_total 0\n" in m, m)
        t0 = time.time()
        eq(t.stop(), 0)
        check(time.time() - t0 < 10, "stopped within 10 s")
    finally:
        t.cleanup()


@test
def geoip_country_from_client_ip_never_the_ip():
    mmdb = os.path.abspath("third_party/data/geo-whois-asn-country.mmdb")
    check(os.path.exists(mmdb), "country database not fetched (make data)")
    out = subprocess.run([BIN, "key", "new", "--scope", "write"], capture_output=True,
                         text=True, timeout=10)
    key, digests = [l.split(" = ")[1] for l in out.stdout.splitlines()]
    t = with_server("[server]\ngeoip_db = %s\ntrusted_proxies = 127.0.0.1/32\n"
                    "[auth]\nkey_digests = %s\n" % (mmdb, digests))
    try:
        auth = {"Authorization": "Bearer " + key}
        eq(t.post_json("/v1/events", pv(id="g-us", ip="8.8.8.8"), auth)[0], 202)
        eq(t.post_json("/v1/events", pv(id="g-xff"), {"X-Forwarded-For": "9.9.9.9, 1.1.1.1"})[0],
           202)
        eq(t.post_json("/v1/events", pv(id="g-local"))[0], 202)
        t.stop()
        recs = {r["id"]: r for r in t.dump_log()}
        eq(recs["g-us"]["country"], "US")
        eq(recs["g-xff"]["country"], "AU", "rightmost untrusted X-Forwarded-For address")
        eq(recs["g-local"]["country"], "")
        text = json.dumps(list(recs.values()))
        check("8.8.8.8" not in text and "1.1.1.1" not in text, "no IP stored")
    finally:
        t.cleanup()


@test
def odd_user_agents_are_bounded_and_never_refused():
    t = with_server()
    try:
        long_ua = "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0 " + "x" * 5000
        body = json.dumps(pv(id="long")).encode()
        raw = (b"POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
               b"User-Agent: " + long_ua.encode() + b"\r\nContent-Length: " +
               str(len(body)).encode() + b"\r\n\r\n" + body)
        check(b" 202 " in t.raw(raw, read_all=False)[:20], "long User-Agent accepted")
        body = json.dumps(pv(id="latin1")).encode()
        raw = (b"POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
               b"User-Agent: Mozilla/5.0 \xe9\xe8 caf\xe9\r\nContent-Length: " +
               str(len(body)).encode() + b"\r\n\r\n" + body)
        check(b" 202 " in t.raw(raw, read_all=False)[:20], "non-UTF-8 User-Agent accepted")
        t.stop()
        recs = {r["id"]: r for r in t.dump_log()}
        eq(len(recs["long"]["user_agent"].encode()), 2048)
        eq(recs["latin1"]["user_agent"], "")
        check("bot" in recs["latin1"]["flags"], recs["latin1"])
    finally:
        t.cleanup()


@test
def second_server_refused_on_same_data_dir():
    t = with_server()
    try:
        out = subprocess.run([BIN, "--data-dir", t.data_dir, "--listen", "127.0.0.1:0"],
                             capture_output=True, text=True, timeout=10)
        eq(out.returncode, 1, out.stderr)
        check("lock" in out.stderr.lower(), out.stderr)
        out = subprocess.run([BIN, "--data-dir", t.data_dir, "--check"], capture_output=True,
                             text=True, timeout=10)
        eq(out.returncode, 0, out.stderr)
    finally:
        t.cleanup()


@test
def check_mode_reports_config_errors_with_line():
    t = Tally("[server]\nthreads = 999\n")
    try:
        out = subprocess.run([BIN, "--config", t.config_path, "--check"], capture_output=True,
                             text=True, timeout=10)
        eq(out.returncode, 2)
        check("tally.ini:4" in out.stderr and "threads" in out.stderr, out.stderr)
    finally:
        t.cleanup()


if __name__ == "__main__":
    run_all()
