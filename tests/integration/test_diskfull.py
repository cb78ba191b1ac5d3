"""Disk full: the data directory on a small tmpfs. Ingest answers 503 with Retry-After once the
disk is full, loses nothing acknowledged, and recovers by itself when space returns."""
import base64
import json
import os
import subprocess
import time
from collections import Counter

from harness import Tally, check, eq, run_all, test


@test
def enospc_gives_503_then_recovers_without_loss():
    t = Tally("[server]\nthreads = 2\n[storage]\nsegment_bytes = 1048576\n")
    mnt = os.path.join(t.tmp, "mnt")
    os.makedirs(mnt)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", mnt],
                       capture_output=True, text=True)
    check(r.returncode == 0, "cannot mount a tmpfs (run as root): %s" % r.stderr)
    try:
        t.data_dir = os.path.join(mnt, "data")
        # A filler takes most of the space; removing it later "returns" space.
        filler = os.path.join(mnt, "filler")
        with open(filler, "wb") as f:
            f.write(b"\0" * (4 << 20))
        t.start()
        acked, full_at = [], None
        for i in range(5000):
            ids = ["d%d-%d" % (i, k) for k in range(10)]
            # incompressible padding, so the log really grows
            body = [{"site": "example.com", "url": "https://example.com/", "id": x,
                     "props": {"pad": base64.b64encode(os.urandom(1400)).decode()}}
                    for x in ids]
            s, h, obj = t.post_json("/v1/events", body)
            if s == 202:
                acked.extend(ids)
                continue
            eq(s, 503, obj)
            check(int(h.get("retry-after", "0")) >= 1, h)
            check("error" in obj, obj)
            full_at = i
            break
        check(full_at is not None, "disk never filled")
        for _ in range(5):  # stays refused, fast, while full
            s, h, _ = t.post_json("/v1/events", {"site": "example.com",
                                                 "url": "https://example.com/"})
            eq(s, 503)
        eq(t.request("GET", "/healthz")[0], 503)
        os.unlink(filler)
        deadline = time.time() + 15
        while True:
            s, _, _ = t.post_json("/v1/events", {"site": "example.com", "id": "after-full",
                                                 "url": "https://example.com/"})
            if s == 202:
                acked.append("after-full")
                break
            check(time.time() < deadline, "did not recover after space returned (last %s)" % s)
            time.sleep(0.2)
        eq(t.request("GET", "/healthz")[0], 200)
        eq(t.stop(), 0)
        counts = Counter(r["id"] for r in t.dump_log())
        missing = [i for i in acked if counts[i] != 1]
        check(not missing, "acknowledged events lost or doubled: %s" % missing[:10])
        check(all(n == 1 for n in counts.values()), "duplicates in log")
        print("disk full after %d requests; acked %d" % (full_at, len(acked)))
    finally:
        t.kill9()
        subprocess.run(["umount", "-l", mnt], capture_output=True)
        t.cleanup()


if __name__ == "__main__":
    run_all()
