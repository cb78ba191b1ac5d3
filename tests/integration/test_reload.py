"""Configuration reload on SIGHUP (issue 9), under load: a valid new file (a new site, a new
key) is applied without a restart; an invalid one is refused with FILE:LINE: key on stderr and
the old configuration keeps serving; no request fails meanwhile."""
import re
import signal
import subprocess
import threading
import time

from harness import BIN, Tally, check, eq, run_all, test

UA = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/120.0"}


def new_key(scope, site=None):
    out = subprocess.run([BIN, "key", "new", "--scope", scope] + (["--site", site] if site else []),
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return (re.search(r"^key = (\S+)$", out, re.M).group(1),
            re.search(r"^key_digests = (\S+)$", out, re.M).group(1))


def wait_for(cond, timeout_s, msg):
    deadline = time.time() + timeout_s
    while not cond():
        if time.time() > deadline:
            raise AssertionError(msg)
        time.sleep(0.05)


@test
def sighup_under_load():
    read1, read1_line = new_key("read")
    read2, read2_line = new_key("read", "new.example")
    base = "[server]\nauto_sites = false\n[auth]\nkey_digests = %s\n[site example.com]\ntimezone = UTC\n" % read1_line
    t = Tally(base)
    t.start()
    stop = threading.Event()
    failures, sent = [], [0]

    def load():
        while not stop.is_set():
            for body in ({"site": "example.com", "url": "https://example.com/a"},
                         [{"site": "example.com", "url": "https://example.com/b"}] * 5):
                try:
                    s, _, b = t.post_json("/v1/events", body, UA)
                    if s != 202:
                        failures.append((s, b))
                    sent[0] += 1
                except Exception as e:  # noqa: BLE001
                    failures.append(repr(e))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for th in threads:
        th.start()
    try:
        time.sleep(0.5)
        # Before: the new site is unknown (auto_sites off) and the new key is refused.
        s, _, _ = t.post_json("/v1/events", {"site": "new.example",
                                             "url": "https://new.example/"}, UA)
        eq(s, 404)
        q = {"site_id": "new.example", "metrics": ["pageviews"], "date_range": "day"}
        eq(t.post_json("/api/v2/query", q, {"Authorization": "Bearer " + read2})[0], 401)
        # Valid reload: a new site with its own key.
        t.write_config(base + "[site new.example]\ntimezone = UTC\nkey_digests = %s\n" % read2_line)
        t.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload: configuration" in t.stderr_text(), 10, "no reload logged")
        s, _, b = t.post_json("/v1/events", {"site": "new.example",
                                             "url": "https://new.example/"}, UA)
        eq(s, 202, b)
        wait_for(lambda: t.post_json("/api/v2/query", q, {"Authorization": "Bearer " + read2})
                 [2].get("results", [{}])[0].get("metrics") == [1], 10,
                 "the new site's key does not read its pageview")
        # Invalid reload: refused with the reason, the running configuration stays.
        t.write_config(base + "[site new.example]\ntimezone = Mars/Olympus\nbogus_key = 1\n")
        t.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in t.stderr_text(), 10, "no refusal logged")
        line = [l for l in t.stderr_text().splitlines() if "reload refused" in l][-1]
        check(re.search(r"tally\.ini:\d+", line), line)
        s, _, b = t.post_json("/v1/events", {"site": "new.example",
                                             "url": "https://new.example/x"}, UA)
        eq(s, 202, b)
        eq(t.post_json("/api/v2/query", q, {"Authorization": "Bearer " + read2})[0], 200)
        time.sleep(0.3)
    finally:
        stop.set()
        for th in threads:
            th.join()
    eq(failures[:5], [])
    check(sent[0] > 20, sent)
    eq(t.proc.poll(), None)
    eq(t.stop(), 0)


@test
def restart_only_key_is_named():
    t = Tally("[server]\nthreads = 2\n")
    t.start()
    t.write_config("[server]\nthreads = 3\n")
    t.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "read only at start" in t.stderr_text(), 10, "no warning")
    check("threads" in [l for l in t.stderr_text().splitlines() if "read only at start" in l][0])
    eq(t.request("GET", "/healthz")[0], 200)
    eq(t.stop(), 0)


if __name__ == "__main__":
    run_all()
