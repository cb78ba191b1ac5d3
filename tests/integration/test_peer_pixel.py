"""The no-script pixel, GET /p.gif (API.md §3.2): parameters site/domain, url (else the Referer
header), referrer/ref, name, props as JSON; every answer is the same transparent 1x1 GIF with
no-cache headers, the status and X-Tally-Error telling refusals apart; refusals append nothing;
the query API counts what arrived."""
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


def new_key(scope):
    out = subprocess.run([BIN, "key", "new", "--scope", scope], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return (re.search(r"^key = (\S+)$", out, re.M).group(1),
            re.search(r"^key_digests = (\S+)$", out, re.M).group(1))


ADMIN, ADMIN_LINE = new_key("admin")


def started(server=""):
    t = Tally("[server]\nauto_sites = false\n%s\n[auth]\nkey_digests = %s\n"
              "[site example.com]\nids = px-123\n" % (server, ADMIN_LINE))
    t.start()
    return t


def pixel(t, params, headers=None):
    h = {"User-Agent": UA}
    h.update(headers or {})
    q = params if isinstance(params, str) else urllib.parse.urlencode(params)
    return t.request("GET", "/p.gif?" + q, headers=h)


def is_gif_answer(h, b):
    eq(b, GIF)
    eq(h["content-type"], "image/gif")
    check("no-store" in h["cache-control"] and "no-cache" in h["cache-control"], h)
    eq(h.get("pragma"), "no-cache")
    eq(h.get("expires"), "0")


def log_end(t):
    return json.loads(t.request("GET", "/healthz")[2])["log_end_offset"]


@test
def pixel_records_events():
    t = started()
    try:
        s, h, b = pixel(t, {"site": "example.com", "url": "https://example.com/post?utm_source=rss",
                            "ref": "https://duckduckgo.com/"})
        eq(s, 200)
        is_gif_answer(h, b)
        check("x-tally-error" not in h, h)
        s, h, b = pixel(t, {"domain": "px-123", "name": "Newsletter open",
                            "url": "https://example.com/mail/42",
                            "referrer": "https://mail.example.net/",
                            "props": json.dumps({"issue": 42, "list": "weekly", "x": None})})
        eq(s, 200, h)
        # no url: the Referer header (the page that embeds the image)
        s, h, b = pixel(t, {"site": "example.com", "rnd": "123"},
                        {"Referer": "https://example.com/noscript"})
        eq(s, 200, h)
        s, h, b = t.request("HEAD", "/p.gif?site=example.com&url=https%3A%2F%2Fexample.com%2Fh",
                            headers={"User-Agent": UA})
        eq((s, b, h["content-type"]), (200, b"", "image/gif"))  # HEAD records nothing
        t.wait_consumers(20)
        d = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
        s, _, raw = t.request("POST", "/api/v2/query", json.dumps(
            {"site_id": "example.com", "metrics": ["pageviews", "events"], "date_range": [d, d],
             "dimensions": ["event:page"]}),
            {"Authorization": "Bearer " + ADMIN, "Content-Type": "application/json"})
        eq(s, 200, raw)
        got = sorted((r["dimensions"][0], r["metrics"]) for r in json.loads(raw)["results"])
        eq(got, [("/mail/42", [0, 1]), ("/noscript", [1, 1]), ("/post", [1, 1])])
        t.stop()
        evs = t.dump_log()
        eq([(e["site"], e["name"], e["url"], e["referrer"], e["source"]) for e in evs], [
            ("example.com", "pageview", "https://example.com/post?utm_source=rss",
             "https://duckduckgo.com/", "pixel"),
            ("example.com", "Newsletter open", "https://example.com/mail/42",
             "https://mail.example.net/", "pixel"),
            ("example.com", "pageview", "https://example.com/noscript", "", "pixel")])
        eq(evs[1]["props"], {"issue": "42", "list": "weekly"})
        check(all(abs(e["ts_ms"] - time.time() * 1000) < 60000 for e in evs), evs)
    finally:
        t.cleanup()


@test
def refusals_still_answer_the_gif_and_append_nothing():
    t = started()
    try:
        before = log_end(t)
        cases = [
            ({"site": "unknown.test", "url": "https://unknown.test/"}, 404, "unknown site"),
            ({"url": "https://example.com/"}, 400, "'site' is required"),
            ({"site": "example.com", "url": "ftp://example.com/"}, 400, "absolute http(s)"),
            ({"site": "example.com"}, 400, "'url' is required"),
            ({"site": "example.com", "url": "https://example.com/", "props": "[1]"}, 400,
             "JSON object"),
            ({"site": "example.com", "url": "https://example.com/", "props": "{oops"}, 400,
             "JSON object"),
            ({"site": "example.com", "url": "https://example.com/", "name": "n" * 121}, 400,
             "name"),
            ({"site": "example.com", "url": "https://example.com/" + "a" * 2100}, 400, "longer"),
            ("site=example.com&url=https%3A%2F%2Fexample.com%2F%ZZ", 400, "percent"),
            ("site=example.com&url=https%3A%2F%2Fexample.com%2F%FF", 400, "UTF-8"),
            ("site=example.com&url=https%3A%2F%2Fexample.com%2F%00", 400, "UTF-8"),
        ]
        for params, status, why in cases:
            s, h, b = pixel(t, params)
            eq(s, status, (params, h))
            is_gif_answer(h, b)
            check(why in h.get("x-tally-error", ""), (params, h))
        eq(t.request("POST", "/p.gif?site=example.com")[0], 405)
        eq(log_end(t), before)
        t.stop()
        eq(t.dump_log(), [])
    finally:
        t.cleanup()


@test
def rate_limited_pixels_get_429_and_the_gif():
    t = started("rate_limit_per_ip = 1\nrate_limit_burst = 2")
    try:
        q = {"site": "example.com", "url": "https://example.com/"}
        eq([pixel(t, q)[0] for _ in range(2)], [200, 200])
        s, h, b = pixel(t, q)
        eq(s, 429)
        is_gif_answer(h, b)
        check(int(h["retry-after"]) >= 1, h)
        t.stop()
        eq(len(t.dump_log()), 2)
    finally:
        t.cleanup()


if __name__ == "__main__":
    run_all()
