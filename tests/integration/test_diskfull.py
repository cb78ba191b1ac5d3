"""Disk full: the data directory on a small tmpfs. Ingest answers 503 with Retry-After once the
disk is full, loses nothing acknowledged, and recovers by itself when space returns."""
import base64
import json
import os
import shutil
import subprocess
import time
from collections import Counter

from harness import Tally, check, digest_line, eq, run_all, test


@test
def enospc_gives_503_then_recovers_without_loss():
    t = Tally("[server]\nthreads = 2\n[storage]\nsegment_bytes = 1048576\n")
    mnt = os.path.join(t.tmp, "mnt")
    os.makedirs(mnt)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", mnt],
                       capture_output=True, text=True)
    check(r.returncode == 0, "cannot mount a tmpfs (run as root): %s" % r.stderr)
    try:
        t.data_dir = os.path.join(mnt, "data")
        # A filler takes most of the space; removing it later "returns" space.
        filler = os.path.join(mnt, "filler")
        with open(filler, "wb") as f:
            f.write(b"\0" * (7 << 20))
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
        # The consumers' store hit the full disk too: it recovers by itself and catches up.
        try:
            t.wait_consumers(30)
        except AssertionError as e:
            # In the FAIL line itself: tests/run.sh shows only the last lines of the output.
            du = subprocess.run(["du", "-ab", mnt], capture_output=True, text=True).stdout
            df = subprocess.run(["df", "-B1", mnt], capture_output=True, text=True).stdout
            raise AssertionError("%s; disk use at the failure: %s; files: %s" % (
                e, " ".join(df.split()[-6:]), ", ".join(
                    l.replace("\t", " ") for l in du.splitlines() if int(l.split()[0]) > 100000)))
        health = json.loads(t.request("GET", "/healthz")[2])
        eq(health["consumers"]["raw"]["error"], 0, health)
        eq(health["consumers"]["rollup"]["error"], 0, health)
        eq(t.stop(), 0)
        stopped_log = t.stderr_text()
        # The offline tools run on a copy outside the small tmpfs (opening the store may
        # write, and the tmpfs is nearly full again).
        copy = os.path.join(t.tmp, "data-copy")
        shutil.copytree(t.data_dir, copy)
        t.data_dir = copy
        counts = Counter(r["id"] for r in t.dump_log())
        missing = [i for i in acked if counts[i] != 1]
        check(not missing, "acknowledged events lost or doubled: %s" % missing[:10])
        check(all(n == 1 for n in counts.values()), "duplicates in log")
        # What the consumers stored equals a rebuild from the log.
        rc, out, err = t.tool("--digest")
        eq(rc, 0, err)
        d_inc = digest_line(out)
        rc, out, err = t.tool("--rebuild")
        eq(rc, 0, err)
        eq(d_inc, digest_line(out), "rollups after the disk-full recovery differ from a rebuild")
        print("disk full after %d requests; acked %d; store reopened: %s" %
              (full_at, len(acked), "store reopened" in stopped_log))
    finally:
        t.kill9()
        subprocess.run(["umount", "-l", mnt], capture_output=True)
        t.cleanup()


if __name__ == "__main__":
    run_all()
