"""Segment HTTP Tracking API (API.md §3.2, src/app/peer_segment.c): @segment/analytics-node
driven unchanged (tests/compat/segment_client.mjs) and raw HTTP calls against the real binary;
checks the log (--dump-log), the query API, and that every documented error appends nothing."""
import base64
import datetime
import json
import os
import re
import subprocess
import time

from harness import BIN, Tally, check, eq, run_all, test

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT = os.path.join(HERE, "..", "compat", "segment_client.mjs")
MODULES = os.path.join(HERE, "..", "compat", "node_modules", "@segment", "analytics-node")
WRITE_KEY = "seg_wk_3f9a1c"
CHROME = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/120.0 Safari/537.36")


def new_key(scope):
    out = subprocess.run([BIN, "key", "new", "--scope", scope], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return (re.search(r"^key = (\S+)$", out, re.M).group(1),
            re.search(r"^key_digests = (\S+)$", out, re.M).group(1))


class Keys:
    def __init__(self):
        self.read, read_line = new_key("read")
        self.write, write_line = new_key("write")
        self.lines = "%s, %s" % (read_line, write_line)


def server(keys, extra=""):
    t = Tally("[server]\n%s\n[storage]\nfsync = always\n[auth]\nkey_digests = %s\n"
              "[site example.com]\nids = %s\n" % (extra, keys.lines, WRITE_KEY))
    t.start()
    return t


def run_client(t, calls, key=WRITE_KEY, **opts):
    check(os.path.isdir(MODULES), "run `make compat` first (tests/compat/node_modules missing)")
    scenario = dict(opts, calls=calls)
    out = subprocess.run(["node", CLIENT, "http://127.0.0.1:%d" % t.port, key,
                          json.dumps(scenario)], capture_output=True, text=True, timeout=60)
    check(out.returncode == 0, "node failed: %s %s" % (out.stdout, out.stderr[-2000:]))
    return json.loads(out.stdout.strip().splitlines()[-1])


def basic(key):
    return {"Authorization": "Basic " + base64.b64encode((key + ":").encode()).decode()}


def today():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")


def query(t, keys, body):
    # from yesterday (UTC): the tracked event is an hour old, which is yesterday just after
    # midnight
    yesterday = (datetime.datetime.now(datetime.timezone.utc) -
                 datetime.timedelta(days=1)).strftime("%Y-%m-%d")
    body = dict({"site_id": "example.com", "date_range": [yesterday, today()]}, **body)
    s, _, b = t.post_json("/api/v2/query", body, {"Authorization": "Bearer " + keys.read})
    eq(s, 200, b)
    return b["results"]


def iso(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@test
def analytics_node_calls_arrive_and_are_counted():
    keys = Keys()
    t = server(keys)
    try:
        hour_ago = int(time.time() * 1000) - 3600 * 1000
        ctx = {"userAgent": CHROME, "page": {"url": "https://example.com/pricing?plan=pro",
                                             "referrer": "https://news.ycombinator.com/"},
               "locale": "en_GB", "screen": {"width": 1440, "height": 900}}
        calls = [
            ["page", {"anonymousId": "anon-1", "name": "Pricing", "context": ctx,
                      "properties": {"url": "https://example.com/pricing?utm_source=hn",
                                     "referrer": "https://news.ycombinator.com/item",
                                     "title": "Pricing", "variant": "b"}}],
            ["track", {"anonymousId": "anon-1", "userId": "user-7", "event": "Signed Up",
                       "context": ctx, "timestamp": iso(hour_ago),
                       "properties": {"plan": "pro", "seats": 3, "trial": False,
                                      "revenue": 49.5, "currency": "eur",
                                      "product": {"sku": "P-1", "tags": ["x"]},
                                      "nothing": None}}],
            ["screen", {"userId": "user-9", "name": "Settings Page",
                        "context": {"userAgent": CHROME}}],
            ["identify", {"userId": "user-7", "traits": {"email": "a@example.com"}}],
            ["group", {"userId": "user-7", "groupId": "g1", "traits": {"name": "Acme"}}],
            ["alias", {"userId": "user-7", "previousId": "anon-1"}],
        ]
        res = run_client(t, calls)
        eq(res["errors"], [], res)
        statuses = [r["status"] for r in res["responses"] if "status" in r]
        eq(statuses, [200], res)
        sent = [r for r in res["responses"] if "body" in r][0]
        check(sent["url"].endswith("/v1/batch"), sent["url"])
        msgs = sent["body"]["batch"]
        eq(len(msgs), 6)

        t.wait_consumers(20)
        r = query(t, keys, {"metrics": ["visitors", "pageviews", "events"]})
        eq(r[0]["metrics"], [2, 2, 3], r)
        r = query(t, keys, {"metrics": ["events"], "dimensions": ["event:name"]})
        eq(sorted((x["dimensions"][0], x["metrics"][0]) for x in r),
           [("Signed Up", 1), ("pageview", 2)], r)
        r = query(t, keys, {"metrics": ["pageviews"], "dimensions": ["event:page"]})
        eq(sorted(x["dimensions"][0] for x in r), ["/Settings%20Page", "/pricing"], r)
        r = query(t, keys, {"metrics": ["events"], "dimensions": ["event:props:plan"],
                            "filters": [["is", "event:name", ["Signed Up"]]]})
        eq([(x["dimensions"][0], x["metrics"][0]) for x in r], [("pro", 1)], r)
        r = query(t, keys, {"metrics": ["visitors"], "dimensions": ["visit:source"]})
        check(any(x["dimensions"][0] == "Hacker News" for x in r), r)

        eq(t.stop(), 0)
        log = t.dump_log()
        eq(len(log), 3, log)
        page, track, screen = log
        for rec, msg in zip(log, [msgs[0], msgs[1], msgs[2]]):
            eq(rec["source"], "segment")
            eq(rec["site"], "example.com")
            eq(rec["id"], msg["messageId"])
            eq(rec["user_agent"], CHROME)
            eq(rec["flags"], [])
        eq(page["name"], "pageview")
        eq(page["url"], "https://example.com/pricing?utm_source=hn")
        eq(page["referrer"], "https://news.ycombinator.com/item")
        eq(page["props"], {"variant": "b", "name": "Pricing"})
        eq(track["name"], "Signed Up")
        eq(track["url"], "https://example.com/pricing?plan=pro")
        eq(track["referrer"], "https://news.ycombinator.com/")
        eq(track["props"], {"plan": "pro", "seats": "3", "trial": "false",
                            "product.sku": "P-1"})
        eq(track["revenue"], {"amount": "49.500000", "currency": "EUR"})
        check(abs(track["ts_ms"] - hour_ago) < 2000, (track["ts_ms"], hour_ago))
        eq(screen["url"], "https://example.com/Settings%20Page")
        eq(screen["props"], {"name": "Settings Page"})
        check(page["visitor"] == track["visitor"], "anonymousId is the visitor")
        check(screen["visitor"] != page["visitor"])
    finally:
        t.cleanup()


@test
def raw_calls_auth_forms_and_dedup():
    keys = Keys()
    t = server(keys)
    try:
        ua = {"User-Agent": CHROME}
        # writeKey in the body, Basic auth, and the one-letter analytics.js paths
        s, _, b = t.post_json("/v1/track", {"writeKey": WRITE_KEY, "anonymousId": "a",
                                            "event": "Clicked", "messageId": "m-1"}, ua)
        eq((s, b), (200, {"success": True}))
        s, _, b = t.post_json("/v1/page", {"anonymousId": "a", "messageId": "m-2",
                                           "context": {"page": {"path": "/docs/intro"}}},
                              dict(basic(WRITE_KEY), **ua))
        eq((s, b), (200, {"success": True}))
        s, _, b = t.post_json("/v1/p", {"writeKey": WRITE_KEY, "anonymousId": "a",
                                        "messageId": "m-2",
                                        "properties": {"url": "https://example.com/x"}}, ua)
        eq((s, b), (200, {"success": True}))  # a retry with the same messageId
        for path, body in (("/v1/identify", {"userId": "u", "traits": {"a": 1}}),
                           ("/v1/group", {"userId": "u", "groupId": "g"}),
                           ("/v1/alias", {"userId": "u", "previousId": "a"}),
                           ("/v1/batch", {"batch": []})):
            s, _, b = t.post_json(path, dict(body, writeKey=WRITE_KEY), ua)
            eq((s, b), (200, {"success": True}), path)
        # the site name itself works as a write key too
        s, _, b = t.post_json("/v1/screen", {"writeKey": "example.com", "userId": "u",
                                             "name": "Home"}, ua)
        eq((s, b), (200, {"success": True}))
        # CORS preflight (analytics.js from a browser)
        s, h, _ = t.request("OPTIONS", "/v1/t", headers={
            "Origin": "https://example.com", "Access-Control-Request-Method": "POST"})
        check(s in (200, 204) and h.get("access-control-allow-origin"), (s, h))
        t.wait_consumers(20)
        r = query(t, keys, {"metrics": ["pageviews", "events"]})
        eq(r[0]["metrics"], [2, 3], r)  # the retried m-2 is not counted twice
        eq(t.stop(), 0)
        log = t.dump_log()
        eq([x["url"] for x in log], ["", "https://example.com/docs/intro",
                                     "https://example.com/x", "https://example.com/Home"])
        eq([x["id"] for x in log], ["m-1", "m-2", "m-2", ""])
        eq(log[0]["name"], "Clicked")
    finally:
        t.cleanup()


@test
def timestamps_skew_window_and_bearer_imports():
    keys = Keys()
    t = server(keys)
    try:
        now = int(time.time() * 1000)
        ua = {"User-Agent": CHROME}
        # client clock 2 days ahead: timestamp and sentAt both skewed; corrected to ~now - 60 s
        skew = 2 * 86400 * 1000
        s, _, b = t.post_json("/v1/batch", {
            "writeKey": WRITE_KEY, "sentAt": iso(now + skew),
            "batch": [{"type": "track", "event": "Skewed", "anonymousId": "a",
                       "timestamp": iso(now + skew - 60000)}]}, ua)
        eq((s, b), (200, {"success": True}))
        old = now - 10 * 86400 * 1000
        body = {"writeKey": WRITE_KEY, "event": "Imported", "userId": "u",
                "timestamp": iso(old)}
        s, _, b = t.post_json("/v1/track", body, ua)
        eq(s, 400, b)
        eq(b["code"], "invalid_request")
        check("72 hours" in b["message"], b)
        s, _, b = t.post_json("/v1/track", body, dict({"Authorization": "Bearer " + keys.write},
                                                      **ua))
        eq((s, b), (200, {"success": True}))
        eq(t.stop(), 0)
        log = t.dump_log()
        eq([x["name"] for x in log], ["Skewed", "Imported"])
        check(abs(log[0]["ts_ms"] - (now - 60000)) < 3000, (log[0]["ts_ms"], now))
        eq(log[1]["ts_ms"], old)
    finally:
        t.cleanup()


@test
def documented_errors_append_nothing():
    keys = Keys()
    t = server(keys, "events_per_request_max = 3000\n")
    try:
        ok = {"type": "track", "event": "E", "anonymousId": "a"}
        big = "x" * (33 * 1024)
        wk = {"writeKey": WRITE_KEY}
        cases = [
            ("/v1/track", "{not json", {}, 400, "invalid_request"),
            ("/v1/track", json.dumps([ok]), {}, 400, "invalid_request"),
            ("/v1/track", dict(wk, event="E", anonymousId="a", properties={"p": big}), {},
             400, "invalid_request"),
            ("/v1/batch", dict(wk, batch=[ok] * 40 + [dict(ok, properties={"p": big})]), {},
             400, "invalid_request"),
            ("/v1/batch", dict(wk, batch=[dict(ok, properties={"p": "y" * 20000})] * 30), {},
             400, "invalid_request"),
            ("/v1/batch", dict(wk, batch=[ok] * 2501), {}, 400, "invalid_request"),
            ("/v1/batch", dict(wk, batch={"type": "track"}), {}, 400, "invalid_request"),
            ("/v1/batch", dict(wk, batch=[ok, dict(ok, type="bogus")]), {}, 400,
             "invalid_request"),
            ("/v1/batch", dict(wk, batch=[ok, {"type": "track", "event": "E"}]), {}, 400,
             "invalid_request"),
            ("/v1/track", dict(wk, anonymousId="a"), {}, 400, "invalid_request"),
            ("/v1/track", dict(wk, anonymousId="a", event=""), {}, 400, "invalid_request"),
            ("/v1/alias", dict(wk, userId="u"), {}, 400, "invalid_request"),
            ("/v1/group", dict(wk, userId="u"), {}, 400, "invalid_request"),
            ("/v1/page", dict(wk, anonymousId="a", timestamp="yesterday"), {}, 400,
             "invalid_request"),
            ("/v1/page", dict(wk, anonymousId="a", timestamp="2030-01-01T00:00:00Z"), {}, 400,
             "invalid_request"),
            ("/v1/track", {"event": "E", "anonymousId": "a"}, {}, 401, "invalid_write_key"),
            ("/v1/track", {"writeKey": "nope_123", "event": "E", "anonymousId": "a"}, {}, 401,
             "invalid_write_key"),
            ("/v1/identify", {"writeKey": "nope_123", "userId": "u"}, {}, 401,
             "invalid_write_key"),
            ("/v1/track", {"event": "E", "anonymousId": "a"}, basic("unknown_key"), 401,
             "invalid_write_key"),
            ("/v1/track", dict(wk, event="E", anonymousId="a"),
             {"Authorization": "Bearer tly_not_a_key"}, 401, "invalid_write_key"),
            ("/v1/track", dict(wk, event="E", anonymousId="a"),
             {"Authorization": "Basic !!!"}, 401, "invalid_write_key"),
        ]
        for path, body, headers, status, code in cases:
            data = body if isinstance(body, str) else json.dumps(body)
            h = dict({"Content-Type": "application/json", "User-Agent": CHROME}, **headers)
            s, hdrs, raw = t.request("POST", path, data, h)
            b = json.loads(raw)
            eq((s, b.get("code")), (status, code), (path, data[:120], b))
            check(isinstance(b.get("message"), str) and b["message"], b)
            eq(hdrs.get("content-type"), "application/json")
        # over 500 KB in one batch
        s, _, raw = t.request("POST", "/v1/batch", json.dumps(dict(
            wk, batch=[dict(ok, properties={"p": "z" * 20000})] * 27)),
            {"Content-Type": "application/json"})
        eq((s, json.loads(raw)["message"]), (400, "Exceed payload limit"))
        s, _, _ = t.request("GET", "/v1/track")
        eq(s, 405)
        eq(t.stop(), 0)
        eq(t.dump_log(), [])
    finally:
        t.cleanup()


@test
def rate_limited_and_server_sdk_ip_rules():
    keys = Keys()
    t = server(keys, "rate_limit_per_ip = 1\nrate_limit_burst = 2\n")
    try:
        body = {"writeKey": WRITE_KEY, "batch": [
            {"type": "track", "event": "E", "anonymousId": "a"}] * 3}
        s, h, b = t.post_json("/v1/batch", body, {"User-Agent": CHROME})
        eq((s, b["code"]), (429, "rate_limited"), b)
        check(int(h.get("retry-after", "0")) >= 1, h)
        # a Tally write key as Bearer token is not rate limited
        s, _, b = t.post_json("/v1/batch", body, {"Authorization": "Bearer " + keys.write,
                                                  "User-Agent": "analytics-node-next/latest"})
        eq((s, b), (200, {"success": True}))
        eq(t.stop(), 0)
        log = t.dump_log()
        eq(len(log), 3)
        eq(log[0]["flags"], [], "a server SDK is not a bot")
    finally:
        t.cleanup()


if __name__ == "__main__":
    run_all()
