"""Matomo Tracking HTTP API (API.md §3.2) by its documented requests: GET and POST
/matomo.php (and /piwik.php), pageviews, events, site search, outlinks, downloads, goals and
ecommerce revenue, custom dimensions, send_image, rec=1, token_auth with cip/cdt, bulk
{"requests": [...]} with its JSON answers, and every error case appending nothing."""
import datetime
import json
import re
import subprocess
import time
import urllib.parse

from harness import BIN, Tally, check, eq, run_all, test

UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/120.0 Safari/537.36")
GIF_PREFIX = b"GIF89a\x01\x00\x01\x00"


def new_key(scope, site=None):
    args = [BIN, "key", "new", "--scope", scope] + (["--site", site] if site else [])
    out = subprocess.run(args, capture_output=True, text=True, timeout=30, check=True).stdout
    return (re.search(r"^key = (\S+)$", out, re.M).group(1),
            re.search(r"^key_digests = (\S+)$", out, re.M).group(1))


class Env:
    def __init__(self, server=""):
        self.admin, admin_line = new_key("admin")
        self.other, other_line = new_key("write", "other.org")
        self.t = Tally("[server]\n%s\n[auth]\nkey_digests = %s\n"
                       "[site example.com]\nids = 1\ncurrency = USD\n"
                       "[site other.org]\nids = 2\nkey_digests = %s\n" %
                       (server, admin_line, other_line))
        self.t.start()

    def get(self, params, path="/matomo.php", headers=None):
        q = urllib.parse.urlencode(params)
        return self.t.request("GET", path + "?" + q, headers=dict({"User-Agent": UA},
                                                                  **(headers or {})))

    def post_form(self, params, path="/matomo.php"):
        return self.t.request("POST", path, urllib.parse.urlencode(params), {
            "User-Agent": UA, "Content-Type": "application/x-www-form-urlencoded"})

    def bulk(self, obj):
        return self.t.request("POST", "/matomo.php", json.dumps(obj),
                              {"User-Agent": UA, "Content-Type": "application/json"})

    def query(self, body):
        s, _, b = self.t.post_json("/api/v2/query", body, {"Authorization": "Bearer " +
                                                                    self.admin})
        eq(s, 200, b)
        return b


def pv(**kw):
    p = {"idsite": 1, "rec": 1, "url": "https://example.com/home", "action_name": "Home",
         "_id": "0123456789abcdef", "rand": "42", "apiv": 1, "res": "1920x1080",
         "urlref": "https://duckduckgo.com/"}
    p.update(kw)
    return p


def today():
    return datetime.datetime.utcnow().strftime("%Y-%m-%d")


@test
def tracking_requests_are_durable_and_counted():
    e = Env()
    t = e.t
    try:
        s, h, raw = e.get(pv())
        eq(s, 200, raw)
        eq(h.get("content-type"), "image/gif")
        eq(h.get("cache-control"), "no-store")
        check(raw.startswith(GIF_PREFIX) and raw.endswith(b";"), raw)
        s, h, raw = e.get(pv(url="https://example.com/pricing", send_image=0), "/piwik.php")
        eq((s, raw), (204, b""))
        s, h, raw = e.post_form(pv(url="https://example.com/blog", lang="fr-CH,fr;q=0.9"))
        eq(s, 200, raw)
        eq(h.get("content-type"), "image/gif")
        for extra in ({"e_c": "Videos", "e_a": "Play", "e_n": "Intro", "e_v": "12.5"},
                      {"search": "shoes", "search_cat": "shop", "search_count": "7"},
                      {"link": "https://other.net/x"},
                      {"download": "https://example.com/f.pdf"},
                      {"idgoal": "3", "revenue": "9.5"},
                      {"idgoal": "0", "ec_id": "ORDER-7", "revenue": "123.45"},
                      {"c_n": "Banner", "c_p": "img.png", "c_t": "https://example.com/t"},
                      {"dimension1": "gold", "dimension12": "x"}):
            eq(e.get(pv(**extra))[0], 200, extra)
        t.wait_consumers(20)
        d = today()
        q = {"site_id": "example.com", "date_range": [d, d]}
        b = e.query(dict(q, metrics=["visitors", "pageviews", "events"]))
        eq(b["results"][0]["metrics"], [1, 4, 11], b)
        b = e.query(dict(q, metrics=["events"], dimensions=["event:name"]))
        eq(sorted((r["dimensions"][0], r["metrics"][0]) for r in b["results"]),
           sorted([("pageview", 4), ("Play", 1), ("Site Search", 1),
                   ("Outbound Link: Click", 1), ("File Download", 1), ("Goal 3", 1),
                   ("Ecommerce Order", 1), ("Content Impression", 1)]), b)
        b = e.query(dict(q, metrics=["pageviews"], dimensions=["event:page"]))
        eq(sorted((r["dimensions"][0], r["metrics"][0]) for r in b["results"]
                  if r["metrics"][0]), [("/blog", 1), ("/home", 2), ("/pricing", 1)], b)
        eq(t.stop(), 0)
        recs = t.dump_log()
        eq(len(recs), 11)
        eq({r["source"] for r in recs}, {"matomo"})
        eq({r["site"] for r in recs}, {"example.com"})
        eq(recs[0]["url"], "https://example.com/home")
        eq(recs[0]["referrer"], "https://duckduckgo.com/")
        eq(recs[0]["user_agent"], UA)
        eq(recs[3]["name"], "Play")
        eq(recs[3]["props"], {"category": "Videos", "name": "Intro", "value": "12.5"})
        eq(recs[4]["props"], {"keyword": "shoes", "category": "shop", "count": "7"})
        eq(recs[5]["props"], {"url": "https://other.net/x"})
        eq(recs[7]["revenue"], {"amount": "9.500000", "currency": "USD"})
        eq(recs[8]["revenue"], {"amount": "123.450000", "currency": "USD"})
        eq(recs[8]["id"], "ORDER-7")
        eq(recs[9]["props"]["content_name"], "Banner")
        eq(recs[10]["props"], {"dimension1": "gold", "dimension12": "x"})
        eq(len({r["visitor"] for r in recs}), 1, "_id is the visitor")
    finally:
        t.cleanup()


@test
def rec_ping_and_errors_append_nothing():
    e = Env()
    t = e.t
    try:
        # excluded, answered as tracked
        eq(e.get(pv(rec=0))[0], 200)
        eq(e.get({k: v for k, v in pv().items() if k != "rec"})[0], 200)
        eq(e.get(pv(ping=1))[0], 200)
        # invalid: 400 with the GIF (204 with send_image=0, as Matomo)
        for bad in (pv(idsite=99), pv(idsite=""), pv(idsite="0"), pv(idsite="example.org"),
                    pv(cid="not-hex"),
                    pv(cdt=str(int(time.time()) - 3 * 86400)),
                    pv(cdt=str(int(time.time()) - 3 * 86400), token_auth="tly_wrong"),
                    pv(cdt=str(int(time.time()) - 3 * 86400), token_auth=e.other)):
            s, h, raw = e.get(bad)
            eq(s, 400, bad)
            check(raw.startswith(GIF_PREFIX), raw)
        s, h, raw = e.get(pv(idsite=99, send_image=0))
        eq((s, raw), (204, b""))
        # no parameters at all: Matomo's note
        s, h, raw = t.request("GET", "/matomo.php")
        eq(s, 200)
        check(h.get("content-type", "").startswith("text/html"), h)
        s, _, _ = t.request("POST", "/matomo.php", "")
        eq(s, 400)
        # bulk errors
        s, _, raw = e.bulk({"requests": "nope"})
        eq(s, 400, raw)
        eq(json.loads(raw), {"status": "error", "tracked": 0, "invalid": 0})
        s, _, raw = t.request("POST", "/matomo.php", '{"requests": [', {"User-Agent": UA})
        eq(s, 400, raw)
        s, _, raw = e.bulk({"requests": ["?idsite=1&rec=1"] * 1001})
        eq(s, 413, raw)
        eq(t.stop(), 0)
        eq(t.dump_log(), [], "nothing appended")
    finally:
        t.cleanup()


@test
def token_auth_honours_cip_and_old_cdt():
    e = Env()
    t = e.t
    try:
        old = int(time.time()) - 5 * 86400
        recent = int(time.time()) - 3600
        eq(e.get(pv(cdt=str(old), cip="198.51.100.7", token_auth=e.admin))[0], 200)
        eq(e.get(pv(cdt=datetime.datetime.utcfromtimestamp(recent).strftime(
            "%Y-%m-%d %H:%M:%S")))[0], 200)
        eq(e.get(pv(cdt=str(int(time.time()) + 86400)))[0], 200)  # future: ignored
        eq(e.get(pv(cip="198.51.100.8", uid="user-9"))[0], 200)  # cip without token: ignored
        eq(e.get(pv(idsite=2, cdt=str(old), token_auth=e.other,
                    url="https://other.org/"))[0], 200)
        eq(t.stop(), 0)
        recs = t.dump_log()
        eq(len(recs), 5)
        eq(recs[0]["ts_ms"], old * 1000)
        eq(recs[1]["ts_ms"], recent * 1000)
        check(abs(recs[2]["ts_ms"] - time.time() * 1000) < 60000, recs[2])
        eq(recs[4]["site"], "other.org")
        check("198.51.100" not in json.dumps(recs), "no IP stored")
        check(recs[3]["visitor"] != recs[0]["visitor"], "uid wins over _id")
    finally:
        t.cleanup()


@test
def bulk_tracking_answers_like_matomo():
    e = Env("rate_limit_per_ip = 1\nrate_limit_burst = 2")
    t = e.t
    try:
        reqs = ["?" + urllib.parse.urlencode(pv(url="https://example.com/b%d" % i))
                for i in range(3)]
        reqs += ["?idsite=77&rec=1", "no-query-here", {"idsite": 1, "rec": 1,
                                                       "url": "https://example.com/obj",
                                                       "e_c": "c", "e_a": "a"},
                 "?idsite=1&url=https%3A%2F%2Fexample.com%2Fnorec"]
        s, h, raw = e.bulk({"requests": reqs, "token_auth": e.admin})
        eq(s, 200, raw)
        eq(h.get("content-type"), "application/json")
        eq(json.loads(raw), {"status": "success", "tracked": 5, "invalid": 1,
                             "invalid_indices": [3]})
        # without a valid token: no indices, and the per-IP rate limit applies (burst 2)
        s, _, raw = e.bulk({"requests": reqs[:2] + ["?idsite=5&rec=1"]})
        eq(s, 200, raw)
        eq(json.loads(raw), {"status": "success", "tracked": 2, "invalid": 1})
        s, h, raw = e.bulk({"requests": reqs[:2]})
        eq(s, 429, raw)
        check("retry-after" in h, h)
        eq(json.loads(raw)["status"], "error")
        s, _, raw = e.bulk({"requests": reqs[:1], "token_auth": e.admin, "send_image": 0})
        eq((s, raw), (204, b""))
        eq(t.stop(), 0)
        recs = t.dump_log()
        eq(len(recs), 4 + 2 + 1, [r["url"] for r in recs])
        eq([r["url"] for r in recs[:4]], ["https://example.com/b0", "https://example.com/b1",
                                          "https://example.com/b2", "https://example.com/obj"])
        eq(recs[3]["name"], "a")
    finally:
        t.cleanup()


if __name__ == "__main__":
    run_all()
