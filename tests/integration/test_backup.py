"""Online backup and restore (issue 9): `tally backup DIR` asks the running server (POST
/api/v1/admin/backup, admin key) for a consistent snapshot (RocksDB checkpoint + the log up to a
committed offset + salts/keys + MANIFEST.json); `tally restore BACKUP DATA_DIR` brings it back
into an empty directory; a server on the restored copy answers queries as the original did."""
import json
import os
import re
import subprocess
import threading
import time

from harness import BIN, Tally, check, digest_line, eq, run_all, test

V2 = "/api/v2/query"
UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/120.0 Safari/537.36")
PAGES = ["/", "/pricing", "/blog/a", "/blog/b", "/about"]


def new_key(scope):
    out = subprocess.run([BIN, "key", "new", "--scope", scope], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return (re.search(r"^key = (\S+)$", out, re.M).group(1),
            re.search(r"^key_digests = (\S+)$", out, re.M).group(1))


class Keys:
    def __init__(self):
        self.admin, admin_line = new_key("admin")
        self.read, read_line = new_key("read")
        self.config = ("[auth]\nkey_digests = %s, %s\n[site example.com]\ntimezone = "
                       "Europe/Berlin\n" % (admin_line, read_line))


def events(i0, n, pad=False):
    base = 1714550400000  # 2024-05-01T08:00:00Z: write keys may send any time
    return [{"site": "example.com", "url": "https://example.com" + PAGES[i % len(PAGES)],
             "ts": base + i * 7000, "ip": "10.%d.%d.%d" % (i % 7, (i // 7) % 250, i % 13),
             "user_agent": UA, **({"props": {"pad": os.urandom(700).hex()}} if pad else {})}
            for i in range(i0, i0 + n)]


def post(t, key, evs):
    s, _, b = t.post_json("/v1/events", evs, {"Authorization": "Bearer " + key})
    eq(s, 202, b)
    return b["accepted"]


def answers(t, key):
    h = {"Authorization": "Bearer " + key}
    rng = ["2024-04-01", "2024-06-30"]
    total = t.post_json(V2, {"site_id": "example.com", "date_range": rng,
                             "metrics": ["visitors", "visits", "pageviews", "bounce_rate",
                                         "visit_duration", "events"]}, h)
    pages = t.post_json(V2, {"site_id": "example.com", "date_range": rng,
                             "metrics": ["visitors", "pageviews"],
                             "dimensions": ["event:page"]}, h)
    days = t.post_json(V2, {"site_id": "example.com", "date_range": rng,
                            "metrics": ["visitors", "visits"], "dimensions": ["time:hour"]}, h)
    out = []
    for s, _, b in (total, pages, days):
        eq(s, 200, b)
        out.append(b["results"])
    return out


def backup_cmd(t, key, dest):
    return subprocess.run([BIN, "backup", dest, "--url", "http://127.0.0.1:%d" % t.port,
                           "--key", key], capture_output=True, text=True, timeout=120)


def restored_server(keys, backup_dir):
    r = Tally(keys.config)
    out = subprocess.run([BIN, "restore", backup_dir, r.data_dir], capture_output=True,
                         text=True, timeout=120)
    eq(out.returncode, 0, out.stderr)
    check("restored backup" in out.stdout, out.stdout)
    return r


@test
def backup_restore_same_answers():
    keys = Keys()
    t = Tally(keys.config)
    t.start()
    for i in range(0, 600, 50):
        post(t, keys.admin, events(i, 50))
    t.wait_consumers(30)
    before = answers(t, keys.read)
    check(before[0][0]["metrics"][2] == 600, before[0])
    dest = os.path.join(t.tmp, "backup1")
    out = backup_cmd(t, keys.admin, dest)
    eq(out.returncode, 0, out.stderr)
    info = json.loads(out.stdout)
    eq(info["log_end_offset"], 600)
    man = json.load(open(os.path.join(dest, "MANIFEST.json")))
    eq(man["log_end_offset"], 600)
    check(os.path.isfile(os.path.join(dest, "salts")), os.listdir(dest))
    # The original keeps serving and ingesting after the snapshot.
    post(t, keys.admin, events(600, 100))
    r = restored_server(keys, dest)
    r.start()
    r.wait_consumers(30)
    eq(answers(r, keys.read), before, "restored answers differ from the original's")
    h = json.loads(r.request("GET", "/healthz")[2])
    eq(h["log_end_offset"], 600)
    # The restored server ingests on (its log continues at the snapshot offset).
    post(r, keys.admin, events(600, 100))
    r.wait_consumers(30)
    t.wait_consumers(30)
    eq(answers(r, keys.read), answers(t, keys.read))
    eq(r.stop(), 0)
    eq(t.stop(), 0)


@test
def backup_during_ingest_is_consistent_prefix():
    keys = Keys()
    t = Tally(keys.config, args=())
    t.write_config("[storage]\nsegment_bytes = 1048576\n" + keys.config)  # several segments
    t.start()
    stop = threading.Event()
    acked = []
    errors = []

    def load():
        i = 0
        while not stop.is_set():
            try:
                post(t, keys.admin, events(i, 20, pad=True))
                acked.append((time.time(), i + 20))
                i += 20
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
                return

    th = threading.Thread(target=load)
    th.start()
    time.sleep(1.5)
    n_before = acked[-1][1] if acked else 0
    dest = os.path.join(t.tmp, "backup2")
    out = backup_cmd(t, keys.admin, dest)
    time.sleep(0.5)
    stop.set()
    th.join()
    eq(errors, [])
    eq(out.returncode, 0, out.stderr)
    info = json.loads(out.stdout)
    snap = info["log_end_offset"]
    check(snap >= n_before, "snapshot %d misses acknowledged events (%d)" % (snap, n_before))
    check(snap <= acked[-1][1], (snap, acked[-1]))
    check(info["segments"] >= 2, info)
    eq(t.stop(), 0)
    r = restored_server(keys, dest)
    r.write_config("[storage]\nsegment_bytes = 1048576\n" + keys.config)
    r.start()
    r.wait_consumers(30)
    eq(json.loads(r.request("GET", "/healthz")[2])["log_end_offset"], snap)
    got = answers(r, keys.read)
    eq(got[0][0]["metrics"][2], snap, "pageviews of the restored copy")
    eq(r.stop(), 0)
    rc, dig, err = r.tool("--digest")
    eq(rc, 0, err)
    rc, reb, err = r.tool("--rebuild")
    eq(rc, 0, err)
    eq(digest_line(dig), digest_line(reb), "restored incremental store != rebuild of its log")


@test
def backup_refusals():
    keys = Keys()
    t = Tally(keys.config)
    t.start()
    h = {"Authorization": "Bearer " + keys.read}
    eq(t.post_json("/api/v1/admin/backup", {"dir": "/tmp/x"}, h)[0], 403)
    eq(t.post_json("/api/v1/admin/backup", {"dir": "/tmp/x"})[0], 401)
    h = {"Authorization": "Bearer " + keys.admin}
    eq(t.post_json("/api/v1/admin/backup", {"dir": "relative"}, h)[0], 400)
    s, _, b = t.post_json("/api/v1/admin/backup", {"dir": t.tmp}, h)  # not empty
    eq(s, 400, b)
    check("not empty" in b["error"], b)
    # restore refuses a non-empty target and a directory without a manifest
    out = subprocess.run([BIN, "restore", t.tmp, t.data_dir], capture_output=True, text=True)
    check(out.returncode != 0, out)
    eq(t.stop(), 0)


if __name__ == "__main__":
    run_all()
