"""PostHog capture API (API.md §3.2, src/app/peer_posthog.c): posthog-node driven unchanged
(tests/compat/posthog_client.mjs), the other body shapes posthog-js and raw HTTP send (gzip by
header, by ?compression=gzip-js and bare; form data=, base64; arrays; single events), the log
(--dump-log), the query API, and every documented error appending nothing."""
import base64
import datetime
import gzip
import json
import os
import re
import subprocess
import time
import urllib.parse

from harness import BIN, Tally, check, eq, run_all, test

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT = os.path.join(HERE, "..", "compat", "posthog_client.mjs")
MODULES = os.path.join(HERE, "..", "compat", "node_modules", "posthog-node")
TOKEN = "phc_T4llyTestToken"
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
              "[site example.com]\nids = %s\n" % (extra, keys.lines, TOKEN))
    t.start()
    return t


def run_client(t, calls, token=TOKEN, **opts):
    check(os.path.isdir(MODULES), "run `make compat` first (tests/compat/node_modules missing)")
    out = subprocess.run(["node", CLIENT, "http://127.0.0.1:%d" % t.port, token,
                          json.dumps(dict(opts, calls=calls))],
                         capture_output=True, text=True, timeout=60)
    check(out.returncode == 0, "node failed: %s %s" % (out.stdout, out.stderr[-2000:]))
    return json.loads(out.stdout.strip().splitlines()[-1])


def today():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")


def query(t, keys, body):
    body = dict({"site_id": "example.com", "date_range": [today(), today()]}, **body)
    s, _, b = t.post_json("/api/v2/query", body, {"Authorization": "Bearer " + keys.read})
    eq(s, 200, b)
    return b["results"]


def iso(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def post(t, path, data, headers=None):
    if not isinstance(data, (bytes, str)):
        data = json.dumps(data)
    h = {"Content-Type": "application/json", "User-Agent": CHROME}
    h.update(headers or {})
    s, hdrs, raw = t.request("POST", path, data, h)
    return s, hdrs, json.loads(raw) if raw else None


@test
def posthog_node_capture_arrives_and_is_counted():
    keys = Keys()
    t = server(keys)
    try:
        calls = [
            ["capture", {"distinctId": "d-1", "event": "$pageview", "properties": {
                "$current_url": "https://example.com/blog/post?utm_source=newsletter",
                "$referrer": "https://www.google.com/", "$raw_user_agent": CHROME,
                "$screen_width": 1280, "$browser_language": "de-DE", "author": "ann"}}],
            ["capture", {"distinctId": "d-1", "event": "Purchase", "properties": {
                "$current_url": "https://example.com/checkout", "$raw_user_agent": CHROME,
                "revenue": "12.50", "currency": "eur", "plan": "team", "count": 2,
                "cart": {"items": 3, "coupon": {"code": "X"}}, "list": [1, 2]}}],
            ["capture", {"distinctId": "d-2", "event": "$pageview", "properties": {
                "$current_url": "https://example.com/", "$referrer": "$direct"}}],
            ["identify", {"distinctId": "d-1", "properties": {"email": "a@example.com"}}],
            ["capture", {"distinctId": "d-1", "event": "$autocapture",
                         "properties": {"$event_type": "click"}}],
        ]
        res = run_client(t, calls)
        eq(res["errors"], [], res)
        check(res["requests"], res)
        for r in res["requests"]:
            check(r["url"].endswith("/batch/"), r)
            eq(r["status"], 200, r)
            eq(r["encoding"], "gzip", "posthog-node compresses")
        t.wait_consumers(20)
        r = query(t, keys, {"metrics": ["visitors", "pageviews", "events"]})
        eq(r[0]["metrics"], [2, 2, 3], r)
        r = query(t, keys, {"metrics": ["events"], "dimensions": ["event:name"]})
        eq(sorted((x["dimensions"][0], x["metrics"][0]) for x in r),
           [("Purchase", 1), ("pageview", 2)], r)
        r = query(t, keys, {"metrics": ["pageviews"], "dimensions": ["event:page"]})
        eq(sorted(x["dimensions"][0] for x in r if x["metrics"][0]), ["/", "/blog/post"], r)
        r = query(t, keys, {"metrics": ["events"], "dimensions": ["event:props:plan"],
                            "filters": [["is", "event:name", ["Purchase"]]]})
        eq([(x["dimensions"][0], x["metrics"][0]) for x in r], [("team", 1)], r)
        eq(t.stop(), 0)
        log = t.dump_log()
        eq(len(log), 3, log)
        pv, buy, pv2 = log
        for rec in log:
            eq(rec["source"], "posthog")
            eq(rec["site"], "example.com")
            check(re.match(r"^[0-9a-f-]{36}$", rec["id"]), rec["id"])
            eq(rec["flags"], [])
        eq(pv["name"], "pageview")
        eq(pv["url"], "https://example.com/blog/post?utm_source=newsletter")
        eq(pv["referrer"], "https://www.google.com/")
        eq(pv["user_agent"], CHROME)
        eq(pv["props"], {"author": "ann"})
        eq(buy["name"], "Purchase")
        eq(buy["url"], "https://example.com/checkout")
        eq(buy["props"], {"plan": "team", "count": "2", "cart.items": "3",
                          "cart.coupon.code": "X"})
        eq(buy["revenue"], {"amount": "12.500000", "currency": "EUR"})
        eq(pv2["referrer"], "")
        check(pv2["user_agent"].startswith("posthog-node"), pv2)
        check(pv["visitor"] == buy["visitor"] != pv2["visitor"], "distinct_id is the visitor")
        check(abs(pv["ts_ms"] - time.time() * 1000) < 60000, pv["ts_ms"])
    finally:
        t.cleanup()


@test
def body_shapes_compression_and_forms():
    keys = Keys()
    t = server(keys)
    try:
        def ev(name, url, **kw):
            return dict({"event": name, "distinct_id": "v-" + name,
                         "properties": {"$current_url": url}}, **kw)
        now = int(time.time() * 1000)
        shapes = []
        # single event with api_key, on every route
        for i, path in enumerate(["/capture/", "/capture", "/e", "/i/v0/e", "/batch"]):
            shapes.append((path, dict(ev("$pageview", "https://example.com/s%d" % i),
                                      api_key=TOKEN), {}))
        # a batch, gzip by Content-Encoding
        shapes.append(("/batch/", gzip.compress(json.dumps(
            {"api_key": TOKEN, "batch": [ev("$pageview", "https://example.com/gz-header")]}
        ).encode()), {"Content-Encoding": "gzip"}))
        # posthog-js: an array of events, gzip announced by ?compression=gzip-js
        shapes.append(("/e/?compression=gzip-js&ver=1.200.0", gzip.compress(json.dumps(
            [dict(ev("$pageview", "https://example.com/gz-param"), token=TOKEN)]).encode()),
            {"Content-Type": "text/plain"}))
        # bare gzip, detected by its magic bytes
        shapes.append(("/i/v0/e/", gzip.compress(json.dumps(
            dict(ev("$pageview", "https://example.com/gz-bare"), api_key=TOKEN)).encode()), {}))
        # form data=, base64 (older posthog-js), token inside properties
        b64 = base64.b64encode(json.dumps([{"event": "$pageview", "properties": {
            "token": TOKEN, "distinct_id": "f1", "$current_url": "https://example.com/form64"}}]
        ).encode()).decode()
        shapes.append(("/e/", "data=" + urllib.parse.quote(b64),
                       {"Content-Type": "application/x-www-form-urlencoded"}))
        shapes.append(("/e/", urllib.parse.urlencode({"data": json.dumps(
            dict(ev("$pageview", "https://example.com/formjson"), token=TOKEN))}),
            {"Content-Type": "application/x-www-form-urlencoded"}))
        # {"api_key", "data": [...]}
        shapes.append(("/batch/", {"api_key": TOKEN, "data": [
            ev("$pageview", "https://example.com/data-array")]}, {}))
        # $screen with no URL, a custom event, $-events acknowledged only
        shapes.append(("/batch/", {"api_key": TOKEN, "batch": [
            {"event": "$screen", "distinct_id": "m1", "properties": {"$screen_name": "Home"}},
            {"event": "$identify", "distinct_id": "m1", "$set": {"a": 1}},
            {"event": "$pageleave", "distinct_id": "m1"}]}, {}))
        # clock skew: the client is a day ahead; sent_at corrects it to ~now - 10 min
        day = 86400 * 1000
        shapes.append(("/batch/", {"api_key": TOKEN, "sent_at": iso(now + day), "batch": [
            dict(ev("Skewed", "https://example.com/skew"),
                 timestamp=iso(now + day - 600000))]}, {}))
        # offset: 30 s ago; distinct_id as a number; uuid as idempotency key
        shapes.append(("/i/v0/e/", {"api_key": TOKEN, "event": "Offset", "distinct_id": 42,
                                    "offset": 30000,
                                    "uuid": "0190a0b1-7c5e-7d4a-9a1b-123456789abc"}, {}))
        for path, data, headers in shapes:
            s, h, b = post(t, path, data, headers)
            eq((s, b), (200, {"status": 1}), (path, data if isinstance(data, dict) else ""))
            eq(h.get("content-type"), "application/json")
        s, h, _ = t.request("OPTIONS", "/e/", headers={
            "Origin": "https://example.com", "Access-Control-Request-Method": "POST"})
        check(s in (200, 204) and h.get("access-control-allow-origin"), (s, h))
        eq(t.stop(), 0)
        log = t.dump_log()
        urls = [x["url"] for x in log]
        eq(urls, ["https://example.com/s%d" % i for i in range(5)] + [
            "https://example.com/gz-header", "https://example.com/gz-param",
            "https://example.com/gz-bare", "https://example.com/form64",
            "https://example.com/formjson", "https://example.com/data-array",
            "https://example.com/Home", "https://example.com/skew", ""], urls)
        skewed, offset = log[-2], log[-1]
        check(abs(skewed["ts_ms"] - (now - 600000)) < 3000, (skewed["ts_ms"], now))
        check(abs(offset["ts_ms"] - (now - 30000)) < 3000, (offset["ts_ms"], now))
        eq(offset["id"], "0190a0b1-7c5e-7d4a-9a1b-123456789abc")
        eq(offset["name"], "Offset")
    finally:
        t.cleanup()


@test
def bearer_write_key_imports_and_window():
    keys = Keys()
    t = server(keys)
    try:
        old = int(time.time() * 1000) - 30 * 86400 * 1000
        body = {"api_key": TOKEN, "historical_migration": True, "batch": [
            {"event": "$pageview", "distinct_id": "imp", "timestamp": iso(old),
             "properties": {"$current_url": "https://example.com/old"}}]}
        s, _, b = post(t, "/batch/", body)
        eq(s, 400, b)
        eq((b["type"], b["code"]), ("validation_error", "invalid_payload"))
        check("72 hours" in b["detail"], b)
        s, _, b = post(t, "/batch/", body, {"Authorization": "Bearer " + keys.write})
        eq((s, b), (200, {"status": 1}))
        # capture v1 style: the project token as Bearer
        s, _, b = post(t, "/e/", {"event": "X", "distinct_id": "a"},
                       {"Authorization": "Bearer " + TOKEN})
        eq((s, b), (200, {"status": 1}))
        eq(t.stop(), 0)
        log = t.dump_log()
        eq([(x["url"], x["ts_ms"]) for x in log][0], ("https://example.com/old", old))
        eq(log[1]["name"], "X")
    finally:
        t.cleanup()


@test
def documented_errors_append_nothing():
    keys = Keys()
    t = server(keys, "events_per_request_max = 5\n")
    try:
        good = {"event": "E", "distinct_id": "a"}
        auth = ("authentication_error", 401)
        val = ("validation_error", 400)
        cases = [
            ("/batch/", "", {}, val, "no_data"),
            ("/batch/", "{nope", {}, val, "invalid_payload"),
            ("/batch/", "\"just a string\"", {}, val, "invalid_payload"),
            ("/batch/", {"api_key": TOKEN, "batch": {"event": "E"}}, {}, val,
             "invalid_payload"),
            ("/batch/", {"api_key": TOKEN, "batch": []}, {}, val, "invalid_payload"),
            ("/e/?compression=lz64", "N4IgdghgtgpiBcIAqB7A", {}, val, "invalid_payload"),
            ("/e/?compression=gzip-js", "not gzip at all", {}, val, "invalid_payload"),
            ("/e/", "data=%%%", {"Content-Type": "application/x-www-form-urlencoded"}, val,
             "no_data"),
            ("/e/", "data=***notbase64***",
             {"Content-Type": "application/x-www-form-urlencoded"}, val, "invalid_payload"),
            ("/batch/", {"batch": [good]}, {}, auth, "missing_api_key"),
            ("/i/v0/e/", good, {}, auth, "missing_api_key"),
            ("/batch/", {"api_key": "phc_unknown", "batch": [good]}, {}, auth,
             "invalid_api_key"),
            ("/batch/", {"api_key": "phc_unknown", "batch": [dict(good, event="$identify")]},
             {}, auth, "invalid_api_key"),
            ("/e/", [dict(good, token=TOKEN), dict(good, token="phc_other")], {}, auth,
             "invalid_api_key"),
            ("/batch/", {"api_key": TOKEN, "batch": [good, {"distinct_id": "a"}]}, {}, val,
             "invalid_event"),
            ("/batch/", {"api_key": TOKEN, "batch": [good, {"event": "E"}]}, {}, val,
             "invalid_payload"),
            ("/batch/", {"api_key": TOKEN, "batch": [dict(good, distinct_id="")]}, {}, val,
             "invalid_payload"),
            ("/batch/", {"api_key": TOKEN, "batch": [dict(good, uuid="not-a-uuid")]}, {}, val,
             "invalid_payload"),
            ("/batch/", {"api_key": TOKEN, "batch": [dict(good, timestamp="soon")]}, {}, val,
             "invalid_payload"),
            ("/batch/", {"api_key": TOKEN, "batch": [dict(good, properties=[1])]}, {}, val,
             "invalid_payload"),
            ("/batch/", {"api_key": TOKEN, "batch": [good] * 6}, {}, ("validation_error", 413),
             "payload_too_large"),
        ]
        for path, data, headers, (typ, status), code in cases:
            s, h, b = post(t, path, data, headers)
            eq((s, b.get("type"), b.get("code")), (status, typ, code), (path, data, b))
            check(isinstance(b.get("detail"), str) and b["detail"], b)
        s, _, _ = t.request("GET", "/batch/")
        eq(s, 405)
        eq(t.stop(), 0)
        eq(t.dump_log(), [])
    finally:
        t.cleanup()


if __name__ == "__main__":
    run_all()
