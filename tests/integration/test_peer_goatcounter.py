"""GoatCounter's endpoints (API.md §3.2) by their documented HTTP requests: GET/POST /count as
count.js and the <img> pixel send them (site from the Host header through `ids`), and
POST /api/v0/count with a Tally write key as the API token; GoatCounter's answers (GIF with
X-Goatcounter on errors; 202 {"status":"ok"}; 401/403/415; 400 {"error"} and per-hit
{"errors": {"INDEX": ...}}); refusals append nothing; the query API counts what arrived."""
import base64
import datetime
import json
import re
import subprocess
import time
import urllib.parse

from harness import BIN, Tally, check, eq, run_all, test

UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/124.0.0.0 Safari/537.36")
GIF = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c000000000100"
                    "01000002024401003b")
HOST = "mycode.stats.test"  # GoatCounter's CODE.goatcounter.com; the site's ids has "mycode"


def new_key(scope, site=None):
    args = [BIN, "key", "new", "--scope", scope] + (["--site", site] if site else [])
    out = subprocess.run(args, capture_output=True, text=True, timeout=30, check=True).stdout
    return (re.search(r"^key = (\S+)$", out, re.M).group(1),
            re.search(r"^key_digests = (\S+)$", out, re.M).group(1))


ADMIN, ADMIN_LINE = new_key("admin")
WRITE, WRITE_LINE = new_key("write")
READ, READ_LINE = new_key("read")
SITE_WRITE, SITE_WRITE_LINE = new_key("write", "example.com")


def started():
    t = Tally("[server]\nauto_sites = false\n[auth]\nkey_digests = %s, %s, %s\n"
              "[site example.com]\nids = mycode\nkey_digests = %s\n"
              "[site other.org]\ntimezone = UTC\n" % (ADMIN_LINE, WRITE_LINE, READ_LINE,
                                                      SITE_WRITE_LINE))
    t.start()
    return t


def count(t, params, method="GET", host=HOST, headers=None):
    h = {"User-Agent": UA, "Host": host}
    h.update(headers or {})
    return t.request(method, "/count?" + urllib.parse.urlencode(params), headers=h)


def api(t, body, token=WRITE, host=HOST, headers=None, raw=False):
    h = {"Content-Type": "application/json", "Host": host, "User-Agent": "my-backend/1.0"}
    if token:
        h["Authorization"] = "Bearer " + token
    h.update(headers or {})
    s, hd, b = t.request("POST", "/api/v0/count", body if raw else json.dumps(body), h)
    return s, hd, (json.loads(b) if b else None)


def log_end(t):
    return json.loads(t.request("GET", "/healthz")[2])["log_end_offset"]


def query(t, body):
    s, _, raw = t.request("POST", "/api/v2/query", json.dumps(body),
                          {"Authorization": "Bearer " + ADMIN,
                           "Content-Type": "application/json"})
    eq(s, 200, raw)
    return json.loads(raw)["results"]


def day(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%d")


@test
def count_js_requests_are_recorded():
    t = started()
    try:
        s, h, b = count(t, {"p": "/hello/", "t": "Hello page", "r": "https://news.example.net/a",
                            "s": "1920", "q": "?utm_source=newsletter", "b": "0",
                            "rnd": "x7k2a"})
        eq((s, b, h["content-type"]), (200, GIF, "image/gif"))
        eq(h.get("access-control-allow-origin"), "*")
        check("x-goatcounter" not in h, h)
        # navigator.sendBeacon: a POST with the query string; an event
        s, h, b = count(t, {"p": "click-signup", "e": "true", "s": "1280,720,2", "rnd": "a"},
                        method="POST")
        eq((s, b), (200, GIF))
        # the site by its name too; a bot hint from count.js is acknowledged, not recorded
        eq(count(t, {"p": "/"}, host="example.com:8080")[0], 200)
        eq(count(t, {"p": "/bot", "b": "153"})[0], 200)
        # a prefetch is answered and not recorded
        eq(count(t, {"p": "/pre"}, headers={"Sec-Purpose": "prefetch"})[0], 200)
        t.wait_consumers(20)
        d = day(time.time() * 1000)
        res = query(t, {"site_id": "example.com", "metrics": ["pageviews", "events"],
                        "date_range": [d, d], "dimensions": ["event:page"]})
        eq(sorted((r["dimensions"][0], r["metrics"]) for r in res),
           [("(none)", [0, 1]), ("/", [1, 1]), ("/hello", [1, 1])], res)
        res = query(t, {"site_id": "example.com", "metrics": ["events"], "date_range": [d, d],
                        "dimensions": ["event:name"]})
        eq(sorted((r["dimensions"][0], r["metrics"][0]) for r in res),
           [("click-signup", 1), ("pageview", 2)], res)
        res = query(t, {"site_id": "example.com", "metrics": ["visitors"], "date_range": [d, d],
                        "dimensions": ["visit:utm_source"]})
        check(["newsletter"] in [r["dimensions"] for r in res], res)
        t.stop()
        evs = t.dump_log()
        eq([(e["site"], e["name"], e["url"], e["source"]) for e in evs], [
            ("example.com", "pageview", "https://example.com/hello?utm_source=newsletter",
             "goatcounter"),
            ("example.com", "click-signup", "", "goatcounter"),
            ("example.com", "pageview", "https://example.com/", "goatcounter")])
        eq((evs[0]["referrer"], evs[0]["props"]), ("https://news.example.net/a",
                                                  {"title": "Hello page"}))
        eq(evs[2]["flags"], [])
    finally:
        t.cleanup()


@test
def count_errors_answer_the_gif_with_a_reason_and_append_nothing():
    t = started()
    try:
        before = log_end(t)
        cases = [
            ({"p": "/x", "b": "3"}, HOST, "wrong value"),
            ({"p": "/x", "b": "many"}, HOST, "error decoding"),
            ({"p": "/x", "e": "maybe"}, HOST, "error decoding"),
            ({"p": "/x", "s": "wide"}, HOST, "error decoding"),
            ({"p": "/x", "s": "3000000000"}, HOST, "out of range"),
            ({"t": "no path"}, HOST, "path"),
            ({"p": "  "}, HOST, "path"),
            ({"p": "/" + "a" * 2100}, HOST, "longer than 2048"),
            ({"p": "/x", "r": "r" * 2100}, HOST, "error decoding"),
            ({"p": "/x"}, "nosuch.example", "no site at this domain"),
        ]
        for params, host, why in cases:
            s, h, b = count(t, params, host=host)
            eq((s, b), (400, GIF), (params, h))
            check(why in h.get("x-goatcounter", ""), (params, h))
        eq(t.request("PUT", "/count?p=/x", headers={"Host": HOST})[0], 405)
        eq(log_end(t), before)
        t.stop()
        eq(t.dump_log(), [])
    finally:
        t.cleanup()


@test
def api_count_records_hits():
    t = started()
    try:
        now = int(time.time() * 1000)
        base = (now // 86400000 - 3) * 86400000 + 10 * 3600000  # 10:00 UTC three days ago
        iso = lambda ms: datetime.datetime.fromtimestamp(
            ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        hits = [
            {"path": "/docs/", "title": "Docs", "ref": "https://www.google.com/",
             "session": "s-1", "created_at": iso(base), "size": [1920, 1080, 1],
             "query": "utm_campaign=launch", "language": "nl-NL", "location": "NL"},
            {"path": "/pricing", "session": "s-1", "created_at": iso(base + 60000)},
            {"path": "download", "event": True, "session": "s-1",
             "created_at": iso(base + 120000)},
            {"path": "/docs", "user_agent": UA, "ip": "198.51.100.4",
             "created_at": iso(base + 180000)},
            {"path": "/wp-login.php", "session": "s-9", "bot": 3},  # acknowledged, not recorded
        ]
        s, h, b = api(t, {"hits": hits})
        eq((s, b), (202, {"status": "ok"}))
        # no_sessions: hits without a visitor identity; Basic auth with the token as password
        basic = base64.b64encode((":" + SITE_WRITE).encode()).decode()
        s, h, b = api(t, {"no_sessions": True, "filter": ["ip"], "hits": [
            {"path": "/feed", "user_agent": UA, "created_at": iso(base + 240000)}]},
            token=None, host="127.0.0.1", headers={"Authorization": "Basic " + basic})
        eq((s, b), (202, {"status": "ok"}))
        t.wait_consumers(20)
        d = day(base)
        res = query(t, {"site_id": "example.com", "metrics": ["visitors", "pageviews", "events"],
                        "date_range": [d, d]})
        eq(res[0]["metrics"], [3, 4, 5], res)
        res = query(t, {"site_id": "example.com", "metrics": ["pageviews"], "date_range": [d, d],
                        "dimensions": ["event:page"]})
        eq(sorted((r["dimensions"][0], r["metrics"][0]) for r in res),
           [("(none)", 0), ("/docs", 2), ("/feed", 1), ("/pricing", 1)], res)
        t.stop()
        evs = t.dump_log()
        eq([(e["name"], e["url"], e["ts_ms"]) for e in evs], [
            ("pageview", "https://example.com/docs?utm_campaign=launch", base),
            ("pageview", "https://example.com/pricing", base + 60000),
            ("download", "", base + 120000),
            ("pageview", "https://example.com/docs", base + 180000),
            ("pageview", "https://example.com/feed", base + 240000)])
        eq(len({e["visitor"] for e in evs[:3]}), 1)
        eq((evs[0]["props"], evs[0]["country"], evs[0]["referrer"]),
           ({"title": "Docs"}, "NL", "https://www.google.com/"))
        eq(evs[3]["user_agent"], UA)
        eq({e["site"] for e in evs}, {"example.com"})
        check(not any("198.51.100.4" in json.dumps(e) for e in evs), "no IP is stored")
    finally:
        t.cleanup()


@test
def api_count_errors():
    t = started()
    try:
        before = log_end(t)
        ok_hit = {"path": "/x", "session": "s"}
        for token, hdrs, status, msg in [
                (None, {}, 401, "no Authorization header"),
                (None, {"Authorization": "Bearer"}, 401, "wrong format for Authorization header"),
                (None, {"Authorization": "Token abc"}, 401,
                 "wrong format for Authorization header"),
                (None, {"Authorization": "Basic !!!"}, 401,
                 "wrong format for Authorization header"),
                ("tly_not-a-key", {}, 401, "unknown token"),
                (READ, {}, 403, "requires count permissions")]:
            s, h, b = api(t, {"hits": [ok_hit]}, token=token, headers=hdrs)
            eq((s, b), (status, {"error": msg}), (token, hdrs))
            if status == 401:
                eq(h.get("www-authenticate"), "Basic realm=GoatCounter")
        s, _, b = api(t, {"hits": [ok_hit]}, headers={"Content-Type": "text/plain"})
        eq(s, 415, b)
        for body, msg in [
                ("{oops", None), ("[1]", None), ({}, "no hits"), ({"hits": []}, "no hits"),
                ({"hits": [ok_hit] * 501}, "maximum amount of pageviews in one batch is 500"),
                ({"hits": [ok_hit], "filter": ["bogus"]}, "unknown value in Filter: [bogus]")]:
            s, _, b = api(t, body, raw=isinstance(body, str))
            eq(s, 400, (body, b))
            check(set(b) == {"error"} and (msg is None or b["error"] == msg), (body, b))
        s, _, b = api(t, {"hits": [ok_hit]}, host="nosuch.example")
        eq((s, b), (400, {"error": 'no site at this domain ("nosuch.example")'}))
        future = (datetime.datetime.now(datetime.timezone.utc) +
                  datetime.timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
        bad = [{"session": "s"}, {"path": "/x"}, {"path": "/x", "session": "s",
                                                  "created_at": future},
               {"path": "/x", "session": "s", "created_at": "yesterday"},
               {"path": "/x", "session": "s", "title": "t" * 1025}]
        s, _, b = api(t, {"hits": bad})
        eq(s, 400, b)
        eq(sorted(b["errors"]), ["0", "1", "2", "3", "4"], b)
        eq(b["errors"]["1"], "session or browser/IP not set; use no_sessions if you don't want "
                             "to track unique visits")
        eq(b["errors"]["2"], "created_at: in the future")
        eq(log_end(t), before)
        # GoatCounter's contract: hits not listed in "errors" were processed
        s, _, b = api(t, {"hits": [ok_hit, {"path": ""}, dict(ok_hit, path="/y")]})
        eq(s, 400, b)
        eq(list(b["errors"]), ["1"], b)
        eq(log_end(t), before + 2)
        t.stop()
        eq([e["url"] for e in t.dump_log()], ["https://example.com/x", "https://example.com/y"])
    finally:
        t.cleanup()


if __name__ == "__main__":
    run_all()
