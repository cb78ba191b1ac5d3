"""The built-in dashboard (GET /), the tracker (GET /js/script.js and [server] tracker_path) and
GET /api/v1/sites; end to end in headless Chromium (tests/compat/dashboard_e2e.mjs): a test site
with the tracker -> the events arrive -> the dashboard shows the query API's numbers, filters by
clicking a row and keeps its state across a reload.

`python3 tests/integration/test_dashboard.py --screenshots DIR` (make screenshots) instead fills
a server with a month of sample traffic and saves light and dark screenshots into DIR.
"""
import datetime
import functools
import gzip
import http.server
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import BIN, Tally, check, eq, run_all, test  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
COMPAT = os.path.join(ROOT, "tests", "compat")
E2E = os.path.join(COMPAT, "dashboard_e2e.mjs")
TRACKER_SRC = os.path.join(ROOT, "src", "app", "tracker", "script.js")
TRACKER_GZIP_BYTES_MAX = 2048
SITE = "dash.test"
TOP = ["visitors", "visits", "pageviews", "views_per_visit", "bounce_rate", "visit_duration"]


def new_key(scope, site=None):
    out = subprocess.run([BIN, "key", "new", "--scope", scope] + (["--site", site] if site else []),
                         capture_output=True, text=True, check=True).stdout
    return (re.search(r"^key = (\S+)$", out, re.M).group(1),
            re.search(r"^key_digests = (\S+)$", out, re.M).group(1))


class Keys:
    def __init__(self):
        self.read, self.read_line = new_key("read")
        self.write, self.write_line = new_key("write")
        self.site, self.site_line = new_key("read", SITE)

    def config(self, extra=""):
        return ("[server]\ntracker_path = /assets/app.js\n%s\n[storage]\nfsync = none\n"
                "[auth]\nkey_digests = %s, %s\n"
                "[site %s]\nhosts = 127.0.0.1, localhost\nkey_digests = %s\n"
                "[site other.org]\ntimezone = Europe/Berlin\n"
                % (extra, self.read_line, self.write_line, SITE, self.site_line))


def bearer(key):
    return {"Authorization": "Bearer " + key}


def api_query(t, key, body):
    s, _, b = t.post_json("/api/v2/query", body, bearer(key))
    eq(s, 200, b)
    return b


def node(*args, timeout_s=120):
    check(os.path.exists(os.path.join(COMPAT, "node_modules", "playwright-core")),
          "playwright-core is missing: run `make compat`")
    check(os.path.exists(os.environ.get("CHROMIUM", "/usr/bin/chromium")),
          "chromium is missing: apt-get install chromium")
    r = subprocess.run(["node", E2E] + list(args), cwd=COMPAT, capture_output=True, text=True,
                       timeout=timeout_s)
    if r.returncode != 0:
        raise AssertionError("dashboard_e2e.mjs %s failed:\n%s" % (args[0], r.stderr[-3000:]))
    return json.loads(r.stdout.strip().splitlines()[-1])


class TestSite:
    """The test pages (tests/compat/dashboard_site) served by Python's http.server on 127.0.0.1,
    with the tracker loaded from the Tally under test."""

    def __init__(self, tally_url, tracker_path):
        self.dir = tempfile.mkdtemp(prefix="tally-site-")
        src = os.path.join(COMPAT, "dashboard_site")
        for base, _, files in os.walk(src):
            for f in files:
                rel = os.path.relpath(os.path.join(base, f), src)
                os.makedirs(os.path.dirname(os.path.join(self.dir, rel)), exist_ok=True)
                with open(os.path.join(base, f)) as fi:
                    text = fi.read().replace("{{TALLY}}", tally_url)
                with open(os.path.join(self.dir, rel), "w") as fo:
                    fo.write(text.replace("{{TRACKER_PATH}}", tracker_path))
        handler = functools.partial(Quiet, directory=self.dir)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def today():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")


# ---------------------------------------------------------------- the tracker

@test
def tracker_is_small_and_served_at_both_paths():
    with open(TRACKER_SRC, "rb") as f:
        src = f.read()
    size = len(gzip.compress(src, 9))
    print("tracker: %d bytes, %d bytes with gzip -9" % (len(src), size))
    check(size <= TRACKER_GZIP_BYTES_MAX, "tracker is %d bytes gzipped (> %d)" %
          (size, TRACKER_GZIP_BYTES_MAX))
    keys = Keys()
    t = Tally(keys.config()).start()
    try:
        for path in ("/js/script.js", "/assets/app.js"):
            s, h, body = t.request("GET", path)
            eq(s, 200, path)
            eq(body, src, "%s serves the tracker verbatim" % path)
            check(h["content-type"].startswith("text/javascript"), h)
            check("max-age=86400" in h["cache-control"], h)
            check("content-encoding" not in h, "no gzip unless accepted")
            s, hz, gz = t.request("GET", path, headers={"Accept-Encoding": "gzip, br"})
            eq(hz.get("content-encoding"), "gzip")
            eq(gzip.decompress(gz), src)
            check(len(gz) <= TRACKER_GZIP_BYTES_MAX, "served gzip %d bytes" % len(gz))
            eq(hz.get("vary"), "Accept-Encoding")
            s, _, b = t.request("GET", path, headers={"If-None-Match": h["etag"]})
            eq((s, b), (304, b""), "revalidation by ETag")
            s, h0, _ = t.request("GET", path, headers={"Accept-Encoding": "gzip;q=0"})
            check("content-encoding" not in h0, "gzip;q=0 refuses gzip")
        s, _, _ = t.request("HEAD", "/js/script.js")
        eq(s, 200)
        check("Set-Cookie" not in src.decode() and "document.cookie" not in src.decode(),
              "the tracker never touches cookies")
    finally:
        t.cleanup()


@test
def tracker_path_is_validated():
    for bad in ("/api/x.js", "js/x.js", "/a b.js", "/v1/events", "/x/../y.js"):
        t = Tally("[server]\ntracker_path = %s\n" % bad)
        try:
            rc, _, err = t.tool("--check", timeout_s=30)
            eq(rc, 2, "tracker_path = %s: %s" % (bad, err))
            check("tracker_path" in err, err)
        finally:
            t.cleanup()


# ---------------------------------------------------------------- the page and the site list

@test
def dashboard_page_and_assets_are_served():
    t = Tally().start()
    try:
        s, h, body = t.request("GET", "/")
        eq(s, 200)
        check(h["content-type"].startswith("text/html"), h)
        check("frame-ancestors 'none'" in h["content-security-policy"], h)
        eq(h.get("x-frame-options"), "DENY")
        eq(h.get("cache-control"), "no-cache")
        html = body.decode()
        for asset in re.findall(r'(?:src|href)="(/dashboard/[^"]+)"', html):
            s, ha, b = t.request("GET", asset, headers={"Accept-Encoding": "gzip"})
            eq(s, 200, asset)
            check(len(gzip.decompress(b)) > 100, asset)
        check("uplot.js" in html and "app.js" in html, html)
        s, _, b = t.request("GET", "/dashboard/uplot.js")
        check(b"uPlot" in b, "uPlot is embedded")
        eq(t.request("GET", "/dashboard/nope.js")[0], 404)
        check("http://" not in html.replace("http://www.w3.org", "") and "cdn" not in html.lower(),
              "no third-party resources")
    finally:
        t.cleanup()


@test
def sites_lists_what_the_key_may_read():
    keys = Keys()
    t = Tally(keys.config()).start()
    try:
        s, _, b = t.post_json("/v1/events", {"site": "auto.example", "url":
                                             "https://auto.example/"})
        eq(s, 202, b)
        t.wait_consumers(10)
        s, h, b = t.request("GET", "/api/v1/sites")
        eq(s, 401)
        eq(h.get("www-authenticate"), "Bearer")
        eq(t.request("GET", "/api/v1/sites", headers=bearer("tly_nope"))[0], 401)
        eq(t.request("GET", "/api/v1/sites", headers=bearer(keys.write))[0], 403)
        s, h, b = t.request("GET", "/api/v1/sites", headers=bearer(keys.read))
        eq(s, 200, b)
        eq(h.get("cache-control"), "no-store")
        j = json.loads(b)
        eq([x["name"] for x in j["sites"]], [SITE, "other.org", "auto.example"])
        eq(j["sites"][1], {"name": "other.org", "timezone": "Europe/Berlin", "configured": True})
        eq(j["sites"][2]["configured"], False)
        eq(j["truncated"], False)
        s, _, b = t.request("GET", "/api/v1/sites", headers=bearer(keys.site))
        eq(s, 200, b)
        eq([x["name"] for x in json.loads(b)["sites"]], [SITE])
    finally:
        t.cleanup()


# ---------------------------------------------------------------- end to end in Chromium

def numbers(res):
    return [float(v) for v in res["results"][0]["metrics"]] if res["results"] else [0.0] * 6


def shown(top):
    return [float(top[m]["value"]) for m in TOP]


@test
def tracker_to_dashboard_in_chromium():
    keys = Keys()
    t = Tally(keys.config()).start()
    site = None
    try:
        tally_url = "http://127.0.0.1:%d" % t.port
        site = TestSite(tally_url, "/assets/app.js")
        tr = node("track", site.url)
        eq(tr["cookies"], 0, "no cookies")
        names = [e["name"] for e in tr["sent"]]
        check(all(e["site"] == SITE for e in tr["sent"]), tr["sent"])
        check(not any("/private/" in e["url"] for e in tr["sent"]), "data-exclude")
        outbound = [e for e in tr["sent"] if e["name"] == "Outbound Link: Click"]
        eq(len(outbound), 1, names)
        eq(outbound[0]["props"], {"url": "http://outbound.example/landing"})
        downloads = [e for e in tr["sent"] if e["name"] == "File Download"]
        eq([e["props"]["url"] for e in downloads], [site.url + "/files/report.pdf"])
        t.wait_consumers(20)

        day = [today(), today()]
        pages = api_query(t, keys.read, {"site_id": SITE, "metrics": ["pageviews"],
                                         "date_range": day, "dimensions": ["event:page"]})
        got = {r["dimensions"][0]: r["metrics"][0] for r in pages["results"]}
        eq(got, {"/": 1, "/about": 2, "/pricing": 1, "/docs.html": 2},
           "navigations and SPA routes (pushState, popstate) arrive; /private is excluded")
        ev = api_query(t, keys.read, {"site_id": SITE, "metrics": ["events"], "date_range": day,
                                      "dimensions": ["event:name"]})
        got = {r["dimensions"][0]: r["metrics"][0] for r in ev["results"]}
        for name, n in (("Outbound Link: Click", 1), ("File Download", 1), ("Signup", 1), ("Purchase", 1),
                        ("Queued", 3), ("pageview", 6)):
            eq(got.get(name), n, "%s in %s" % (name, got))
        rev = api_query(t, keys.read, {"site_id": SITE, "metrics": ["total_revenue"],
                                       "date_range": day,
                                       "filters": [["is", "event:name", ["Purchase"]]]})
        check("12.5" in json.dumps(rev["results"]), rev)
        props = api_query(t, keys.read, {"site_id": SITE, "metrics": ["events"], "date_range": day,
                                         "dimensions": ["event:props:plan"]})
        check(["pro"] in [r["dimensions"] for r in props["results"]], props)

        dash = node("dashboard", tally_url, keys.site, SITE)
        eq(dash["consoleErrors"], [])
        all_ = api_query(t, keys.read, {"site_id": SITE, "metrics": TOP, "date_range": day})
        about = api_query(t, keys.read, {"site_id": SITE, "metrics": TOP, "date_range": day,
                                         "filters": [["is", "event:page", ["/about"]]]})
        init, filt, rel, unf = dash["initial"], dash["filtered"], dash["reloaded"], dash["unfiltered"]
        eq(init["error"], "")
        eq(shown(init["top"]), numbers(all_), "top-line numbers equal the query API's")
        eq(init["top"]["pageviews"]["text"], "6")
        check(init["chartSvgOrCanvas"], "the chart is drawn")
        eq(init["keyInUrl"], False, "the key never appears in the URL")
        eq(init["live"], "1", "one current visitor")
        eq(sorted(v for v, _ in init["rows"]["panel-pages"]),
           ["/", "/about", "/docs.html", "/pricing"])
        check(["Signup", "1"] in init["rows"]["panel-goals"], init["rows"]["panel-goals"])
        check("f=event%3Apage%7E%2Fabout" in filt["hash"], filt["hash"])
        eq(len(filt["chips"]), 1)
        check("/about" in filt["chips"][0], filt["chips"])
        eq(shown(filt["top"]), numbers(about), "filtered numbers equal the query API's")
        eq([v for v, _ in filt["rows"]["panel-pages"]], ["/about"])
        check("tab_devices=visit%3Abrowser" in rel["hash"], rel["hash"])
        eq(rel["chips"], filt["chips"], "the filter survives a reload")
        eq(shown(rel["top"]), numbers(about))
        eq(dash["browserTab"], "true", "the selected tab survives a reload")
        eq(unf["chips"], [])
        eq(shown(unf["top"]), numbers(all_), "removing the chip removes the filter")
    finally:
        if site:
            site.close()
        t.cleanup()


# ---------------------------------------------------------------- screenshots

UAS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Mobile Safari/537.36",
]
REFS = ["", "", "https://www.google.com/", "https://news.ycombinator.com/",
        "https://duckduckgo.com/", "https://github.com/", "https://www.reddit.com/"]
PATHS = ["/", "/", "/pricing", "/docs", "/docs/install", "/blog/hello-world", "/about",
         "/blog/why-tally"]
IPS = ["81.2.69.%d", "89.160.20.%d", "175.16.199.%d", "2.125.160.%d", "216.160.83.%d",
       "67.43.156.%d", "202.196.224.%d"]


def sample_traffic(t, key, days=62, seed=7):
    """A month of plausible traffic, sent with a write key (past timestamps, IPs, UAs)."""
    rnd = random.Random(seed)
    now = datetime.datetime.now(datetime.timezone.utc)
    events = []
    for d in range(days, -1, -1):
        for v in range(int(20 + 12 * rnd.random() + (days - d) * 0.4)):
            start = now - datetime.timedelta(days=d, minutes=rnd.randint(0, 1300))
            if start > now:
                continue
            ip, ua = rnd.choice(IPS) % rnd.randint(1, 250), rnd.choice(UAS)
            ref = rnd.choice(REFS)
            utm = "?utm_source=newsletter&utm_medium=email" if rnd.random() < 0.1 else ""
            for i in range(rnd.choice([1, 1, 2, 3, 4])):
                ts = start + datetime.timedelta(seconds=40 * i)
                e = {"site": SITE, "url": "https://%s%s%s" % (SITE, rnd.choice(PATHS),
                                                             utm if i == 0 else ""),
                     "ts": ts.strftime("%Y-%m-%dT%H:%M:%SZ"), "ip": ip, "user_agent": ua}
                if i == 0 and ref:
                    e["referrer"] = ref
                events.append(e)
            if rnd.random() < 0.12:
                events.append({"site": SITE, "name": "Signup", "url": "https://%s/pricing" % SITE,
                               "ts": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "ip": ip,
                               "user_agent": ua, "props": {"plan": rnd.choice(["pro", "free"])}})
    for i in range(0, len(events), 500):
        s, _, b = t.post_json("/v1/events", events[i:i + 500], bearer(key))
        eq(s, 202, b)
    # a few visitors right now, for the realtime count
    for n in range(3):
        s, _, b = t.post_json("/v1/events", {"site": SITE, "url": "https://%s/" % SITE,
                                             "ip": "81.2.69.%d" % (200 + n), "user_agent": UAS[n]},
                              bearer(key))
        eq(s, 202, b)
    return len(events)


def screenshots(out_dir):
    keys = Keys()
    geo = os.path.join(ROOT, "third_party", "data", "geo-whois-asn-country.mmdb")
    extra = "geoip_db = %s\n" % geo if os.path.exists(geo) else ""
    conf = keys.config(extra).replace("hosts = 127.0.0.1, localhost\n", "")
    t = Tally(conf).start()
    try:
        n = sample_traffic(t, keys.write)
        t.wait_consumers(60)
        os.makedirs(out_dir, exist_ok=True)
        r = node("screenshots", "http://127.0.0.1:%d" % t.port, keys.read, SITE,
                 os.path.abspath(out_dir), timeout_s=180)
        print("%d sample events; saved %s in %s" % (n, ", ".join(r["screenshots"]), out_dir))
    finally:
        t.cleanup()


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--screenshots":
        screenshots(sys.argv[2])
    else:
        run_all()
