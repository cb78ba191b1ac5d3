"""Plausible Events API, POST /api/event (API.md §3.2): Plausible's official npm tracker in
headless Chromium pointed at Tally; the documented long and short keys, several domains in `d`,
props as an object or a JSON string, revenue, `interactive`; Plausible's answers (202 "ok", 400
{"errors": ...}, unknown domains dropped with x-plausible-dropped); X-Forwarded-For as Plausible
documents it; nothing appended on errors; the query API counting what arrived."""
import datetime
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time

from harness import BIN, Tally, check, eq, run_all, test

HERE = os.path.dirname(os.path.abspath(__file__))
COMPAT = os.path.join(HERE, "..", "compat")
UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/124.0.0.0 Safari/537.36")
BROWSER = {"User-Agent": UA}


def new_key(scope, site=None):
    args = [BIN, "key", "new", "--scope", scope] + (["--site", site] if site else [])
    out = subprocess.run(args, capture_output=True, text=True, timeout=30, check=True).stdout
    return (re.search(r"^key = (\S+)$", out, re.M).group(1),
            re.search(r"^key_digests = (\S+)$", out, re.M).group(1))


ADMIN, ADMIN_LINE = new_key("admin")


def config():
    return ("[server]\nauto_sites = false\n[auth]\nkey_digests = %s\n"
            "[site example.test]\ntimezone = UTC\n"
            "[site other.org]\nids = other-id\nhosts = example.test\n" % ADMIN_LINE)


def started():
    t = Tally(config())
    t.start()
    return t


def log_end(t):
    return json.loads(t.request("GET", "/healthz")[2])["log_end_offset"]


def post(t, body, headers=None, content_type="text/plain"):
    h = {"Content-Type": content_type}
    h.update(BROWSER)
    h.update(headers or {})
    if not isinstance(body, (str, bytes)):
        body = json.dumps(body)
    return t.request("POST", "/api/event", body, h)


def query(t, body):
    h = {"Content-Type": "application/json", "Authorization": "Bearer " + ADMIN}
    s, _, raw = t.request("POST", "/api/v2/query", json.dumps(body), h)
    eq(s, 200, raw)
    return json.loads(raw)["results"]


def today():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")


def stop_and_dump(t):
    t.stop()
    return t.dump_log()


class PageServer:
    """The test page and Plausible's tracker module, served by http.server on 127.0.0.1."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="tally-plausible-page-")
        shutil.copy(os.path.join(COMPAT, "plausible_page.html"),
                    os.path.join(self.dir, "page.html"))
        shutil.copy(os.path.join(COMPAT, "node_modules", "@plausible-analytics", "tracker",
                                 "plausible.js"), os.path.join(self.dir, "plausible.js"))

        class Handler(http.server.SimpleHTTPRequestHandler):
            extensions_map = dict(http.server.SimpleHTTPRequestHandler.extensions_map,
                                  **{".js": "text/javascript"})

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=self.dir))
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_for_chromium(timeout_s=600):
    """Chromium may still be being installed by apt in the background."""
    deadline = time.time() + timeout_s
    while not os.access("/usr/bin/chromium", os.X_OK):
        check(time.time() < deadline, "/usr/bin/chromium is not installed")
        time.sleep(2)


@test
def official_tracker_in_chromium():
    wait_for_chromium()
    t = started()
    page = PageServer()
    try:
        endpoint = "http://127.0.0.1:%d/api/event" % t.port
        url = ("http://example.test:%d/page.html?utm_source=newsletter&domain=example.test"
               "&endpoint=%s" % (page.port, endpoint))
        r = subprocess.run(["node", os.path.join(COMPAT, "plausible_browser.mjs"), url,
                            "MAP example.test 127.0.0.1"], capture_output=True, text=True,
                           timeout=60, cwd=COMPAT)
        eq(r.returncode, 0, r.stderr[-3000:])
        out = json.loads(r.stdout.strip().splitlines()[-1])
        eq(out["results"], [202], out)
        check(out["statuses"].count(202) >= 2, out)

        t.wait_consumers(20)
        d = today()
        res = query(t, {"site_id": "example.test", "metrics": ["visitors", "pageviews", "events"],
                        "date_range": [d, d]})
        eq(res[0]["metrics"], [1, 1, 2], res)
        res = query(t, {"site_id": "example.test", "metrics": ["events"], "date_range": [d, d],
                        "dimensions": ["event:props:tier"]})
        eq(sorted((r["dimensions"][0], r["metrics"][0]) for r in res),
           [("(none)", 1), ("startup", 1)], res)
        res = query(t, {"site_id": "example.test", "metrics": ["visitors"],
                        "date_range": [d, d], "dimensions": ["visit:source"]})
        eq([r["dimensions"][0] for r in res], ["newsletter"], res)  # utm_source wins

        evs = [e for e in stop_and_dump(t) if e["name"] != "engagement"]
        eq(sorted(e["name"] for e in evs), ["Signup", "pageview"], evs)
        for e in evs:
            eq((e["source"], e["site"], e["flags"]), ("plausible", "example.test", []), e)
            eq(e["url"], "http://example.test:%d/page.html?utm_source=newsletter&domain="
                         "example.test&endpoint=%s" % (page.port, endpoint))
            eq(e["referrer"], "https://news.ycombinator.com/")
            check("Chrome/" in e["user_agent"] and "Headless" not in e["user_agent"], e)
            check(abs(e["ts_ms"] - time.time() * 1000) < 120000, e)
        sig = [e for e in evs if e["name"] == "Signup"][0]
        eq(sig["props"], {"page_kind": "test", "tier": "startup"})
        eq(sig["revenue"], {"amount": "15.990000", "currency": "USD"})
    finally:
        page.close()
        t.cleanup()


@test
def long_and_short_keys_and_several_domains():
    t = started()
    try:
        long_form = {"name": "pageview", "url": "https://example.test/docs?utm_campaign=spring",
                     "domain": "example.test", "referrer": "https://www.google.com/search?q=x",
                     "props": {"author": "Ann", "n": 3, "ok": True, "skip": None,
                               "nested": {"a": 1}, "blank": " "},
                     "screen_width": 1440}
        s, h, b = post(t, long_form, content_type="application/json")
        eq((s, b), (202, b"ok"))
        check(h["content-type"].startswith("text/plain"), h)
        check("x-plausible-dropped" not in h, h)
        short_form = {"n": "Purchase", "u": "https://example.test/checkout", "d": "example.test",
                      "r": None, "p": json.dumps({"plan": "pro"}),
                      "$": json.dumps({"amount": "1322.22", "currency": "EUR"}), "i": False}
        eq(post(t, short_form)[0], 202)
        bad_revenue = {"n": "Purchase", "u": "https://example.test/", "d": "example.test",
                       "revenue": {"amount": "lots", "currency": "EUR"}}
        eq(post(t, bad_revenue)[0], 202)  # documented: kept, revenue discarded
        # several domains: one event per site; unknown ones are dropped and counted
        multi = {"n": "pageview", "u": "https://www.example.test/", "d":
                 " www.example.test , other-id,unknown.test"}
        s, h, b = post(t, multi)
        eq((s, b, h.get("x-plausible-dropped")), (202, b"ok", "1"))
        # no domain: taken from the URL's host (www. removed)
        eq(post(t, {"n": "pageview", "u": "https://www.example.test/home"})[0], 202)
        # engagement: stored, not counted as an event
        eq(post(t, {"n": "engagement", "u": "https://example.test/docs", "d": "example.test",
                    "sd": 140, "e": 5400})[0], 202)
        t.wait_consumers(20)
        d = today()
        res = query(t, {"site_id": "example.test", "metrics": ["pageviews", "events"],
                        "date_range": [d, d]})
        eq(res[0]["metrics"], [3, 5], res)
        res = query(t, {"site_id": "other.org", "metrics": ["pageviews"], "date_range": [d, d]})
        eq(res[0]["metrics"], [1], res)

        evs = stop_and_dump(t)
        eq([(e["site"], e["name"]) for e in evs],
           [("example.test", "pageview"), ("example.test", "Purchase"),
            ("example.test", "Purchase"), ("example.test", "pageview"),
            ("other.org", "pageview"), ("example.test", "pageview"),
            ("example.test", "engagement")])
        e0, e1, e2 = evs[0], evs[1], evs[2]
        eq(e0["props"], {"author": "Ann", "n": "3", "ok": "true"})
        eq(e0["referrer"], "https://www.google.com/search?q=x")
        eq(e0["interactive"], True)
        eq((e1["props"], e1["revenue"], e1["interactive"], e1["referrer"]),
           ({"plan": "pro"}, {"amount": "1322.220000", "currency": "EUR"}, False, ""))
        check("revenue" not in e2 or e2["revenue"] is None, e2)
        eq(evs[6]["props"], {"scroll_depth": "100", "engagement_time": "5400"})
        eq([e["source"] for e in evs], ["plausible"] * 7)
    finally:
        t.cleanup()


@test
def invalid_requests_get_plausible_errors_and_append_nothing():
    t = started()
    try:
        before = log_end(t)
        cases = [
            ("not json", {"request": ["Unable to parse request body as json"]}),
            ("[1, 2]", {"request": ["Unable to parse request body as json"]}),
            (b'{"n": "pageview", "u": "https://example.test/\xff", "d": "example.test"}',
             {"request": ["Unable to parse request body as json"]}),
            ({"u": "https://example.test/", "d": "example.test"},
             {"event_name": ["can't be blank"]}),
            ({"n": " ", "u": "https://example.test/", "d": "example.test"},
             {"event_name": ["can't be blank"]}),
            ({"n": ["x"], "u": "https://example.test/", "d": "example.test"},
             {"event_name": ["is invalid"]}),
            ({"n": "x" * 121, "u": "https://example.test/", "d": "example.test"},
             {"event_name": ["should be at most 120 character(s)"]}),
            ({"n": "pageview", "d": "example.test"}, {"url": ["is required"]}),
            ({"n": "pageview", "u": 5, "d": "example.test"}, {"url": ["must be a valid url"]}),
            ({"n": "pageview", "u": "https://example.test/" + "a" * 2000, "d": "example.test"},
             {"url": ["must be a valid url"]}),
            ({"n": "pageview", "u": "data:text/html,hi", "d": "example.test"},
             {"url": ["scheme is not allowed"]}),
            ({"n": "pageview", "u": "https://example.test/", "d": "  "},
             {"domain": ["can't be blank"]}),
            ({"n": "pageview", "u": "/relative"}, {"domain": ["can't be blank"]}),
            ({"n": "pageview", "u": "https://example.test/", "d": "example.test",
              "p": {"k": "v" * 2001}},
             {"props": ["keys should have at most 300 bytes and values 2000 bytes"]}),
            ({"n": "engagement", "u": "https://example.test/", "d": "example.test"},
             {"event_name": ["engagement event requires a valid integer value for at least "
                             "one of 'sd' or 'e' fields"]}),
            ({"d": "example.test"}, {"event_name": ["can't be blank"], "url": ["is required"]}),
        ]
        for body, errors in cases:
            s, h, b = post(t, body)
            eq(s, 400, (body, b))
            eq(json.loads(b), {"errors": errors}, body)
        # a domain that is no site: 202 as Plausible, dropped, nothing appended
        s, h, b = post(t, {"n": "pageview", "u": "https://example.test/", "d": "unknown.test"})
        eq((s, b, h.get("x-plausible-dropped")), (202, b"ok", "1"))
        # methods and CORS preflight
        eq(t.request("GET", "/api/event")[0], 405)
        s, h, _ = t.request("OPTIONS", "/api/event", headers={
            "Origin": "https://example.test", "Access-Control-Request-Method": "POST"})
        check(s in (200, 204) and h.get("access-control-allow-origin"), (s, h))
        eq(log_end(t), before)
        eq(stop_and_dump(t), [])
    finally:
        t.cleanup()


@test
def forwarded_for_and_user_agent_make_the_visitor():
    t = started()
    try:
        ev = {"n": "pageview", "u": "https://example.test/", "d": "example.test"}
        # the documented debug header shows the address used: the first valid one of the list
        s, _, b = t.request("POST", "/api/event", json.dumps(ev),
                            {"X-Debug-Request": "true",
                             "X-Forwarded-For": "not-an-ip, 203.0.113.7, 10.0.0.1"})
        eq((s, b), (200, b"203.0.113.7"))
        eq(post(t, ev, {"X-Forwarded-For": "203.0.113.7"})[0], 202)
        eq(post(t, ev, {"X-Forwarded-For": "203.0.113.7, 198.51.100.1"})[0], 202)
        eq(post(t, ev, {"X-Forwarded-For": "198.51.100.9"})[0], 202)
        eq(post(t, ev, {"X-Forwarded-For": "198.51.100.9",
                        "User-Agent": UA.replace("124", "125")})[0], 202)
        t.wait_consumers(20)
        d = today()
        res = query(t, {"site_id": "example.test", "metrics": ["visitors", "pageviews"],
                        "date_range": [d, d]})
        eq(res[0]["metrics"], [3, 4], res)
        evs = stop_and_dump(t)
        v = [e["visitor"] for e in evs]
        eq(v[0], v[1])
        check(v[0] != v[2] and v[2] != v[3], v)
        check(not any("203.0.113.7" in json.dumps(e) for e in evs), "no IP is stored")
    finally:
        t.cleanup()


if __name__ == "__main__":
    run_all()
