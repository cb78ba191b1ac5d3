"""The JetStream cluster under faults (issue 10, docs/cluster.md).

On loopback: three nats-server processes as one JetStream cluster (own client/route/monitor
ports and stores), two ingest nodes and two processing nodes (partitions 0-3 and 4-7 of 8,
streams R3), six sites spread over both. Several client threads post batches of events with
unique ids alternately to both ingest nodes and RETRY every failed request (5xx, connection
error, timeout) with the same events until it gets 202, so every event sent is eventually
acknowledged (a quarter of the visitors are anonymous, IP + User-Agent: both ingest nodes must
hash them with the same shared salt). During the load a nats-server is killed -9 (and
restarted later) and a processing node is killed -9 and restarted on its data directory.
Afterwards:
  - every acknowledged event is counted exactly once: per site, pageviews and events equal the
    number of distinct acknowledged events of each kind, visitors the distinct visitors;
  - every answer (totals, event:page, visit:entry_page, event:name, event:goal, time:day,
    visit:source) equals that of a single-node Tally (role all, local log) fed the same events
    once, whether asked through either ingest node, through the other processing node (both
    forward) or of the owner itself;
  - forwarding: keys, scopes and unknown sites are checked before forwarding; a forwarded
    request is never forwarded again (421); export and live answer 421 with the owner's URL;
  - `tally --rebuild` of a stopped processing node replays its partitions from the streams to
    the digest of its incrementally built store; the owner being down gives 502 to forwarded
    queries; events ingested meanwhile are counted after its restart;
  - moving a partition as docs/cluster.md describes, (a) to a running node that replays the
    stream and (b) to a new node restored from a backup of the old owner, keeps every answer.

Prints one PASS line "skipped: nats-server not installed" when /usr/sbin/nats-server
(NATS_SERVER_BIN) is absent.

usage: test_cluster.py [--long] [--seed S] [TEST_NAME...]
  default: the short run of `make test`: about 5,000 events, one NATS kill and one processing
  node kill (about a minute); --long (`make cluster-test`): about 80,000 events, five cycles of
  NATS + processing node kills (an ingest node too every other cycle), then two of the three
  NATS servers killed at once (no quorum) and restarted (about 4 minutes).
"""
import argparse
import http.client
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter

import harness
from harness import (BIN, NATS_BIN, NatsCluster, Tally, check, digest_line, eq,
                     nats_stream_leaders, partition_of, run_all, test)

ARGS = argparse.Namespace(long=False, seed=1)
PARTITIONS = 8
V2 = "/api/v2/query"
DATE_RANGE = ["2024-05-01", "2024-06-30"]
BASE_TS_MS = 1714521600000  # 2024-05-01T00:00:00Z: write keys may send any time
PAGES = ["/", "/pricing", "/blog/a", "/blog/b", "/docs/start", "/about"]
REFERRERS = [None, None, "https://www.google.com/search?q=tally", "https://news.ycombinator.com/",
             "https://twitter.com/x/status/1"]
UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/%d.0 Safari/537.36")
RETRY_STATUSES = (500, 502, 503, 504)


def pick_sites(per_owner=3):
    """Site names whose partitions (cluster.h's xxh64 % partitions) put per_owner sites in
    each processing node's range, so both own some."""
    lo, hi = [], []
    for i in range(1000):
        name = "s%d.example" % i
        (lo if partition_of(name, PARTITIONS) < 4 else hi).append(name)
        if len(lo) >= per_owner and len(hi) >= per_owner:
            break
    return lo[:per_owner] + hi[:per_owner]


SITES = pick_sites()


def new_key(scope):
    out = subprocess.run([BIN, "key", "new", "--scope", scope], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return (re.search(r"^key = (\S+)$", out, re.M).group(1),
            re.search(r"^key_digests = (\S+)$", out, re.M).group(1))


def sites_config():
    out = []
    for i, s in enumerate(SITES):
        out.append("[site %s]\ntimezone = %s\ngoals = event:Signup, page:/pricing\n" %
                   (s, "Europe/Berlin" if i % 2 else "UTC"))
    return "".join(out)


def ranges(parts):
    """Sorted partition numbers as a range list: {0, 1, 2, 5} -> "0-2,5"."""
    out, run = [], []
    for p in sorted(parts):
        if run and p == run[-1] + 1:
            run.append(p)
        else:
            if run:
                out.append("%d-%d" % (run[0], run[-1]) if len(run) > 1 else str(run[0]))
            run = [p]
    if run:
        out.append("%d-%d" % (run[0], run[-1]) if len(run) > 1 else str(run[0]))
    return ",".join(out)


class Cluster:
    """The whole loopback deployment of one test run. owned[k]: the partitions processing
    node k consumes; answering[p]: the node partition_owners names for p (during a move a
    partition is consumed by two nodes, but answered by one)."""

    def __init__(self):
        self.write, write_line = new_key("write")
        self.read, read_line = new_key("read")
        self.admin, admin_line = new_key("admin")
        self.auth = "[auth]\nkey_digests = %s, %s, %s\n" % (write_line, read_line, admin_line)
        self.nats = NatsCluster(3)
        self.proc = [Tally() for _ in range(2)]    # p1, p2: role process
        self.ingest = [Tally() for _ in range(2)]  # i1, i2: role ingest
        self.single = Tally()                      # role all, local log: the reference
        self.owned = [set(range(0, 4)), set(range(4, PARTITIONS))]
        self.answering = {p: 0 if p < 4 else 1 for p in range(PARTITIONS)}
        for t in self.proc + self.ingest + [self.single]:
            t.shared = True  # the cluster lives across tests: main() cleans it up
        self.configure()
        self.single.write_config("[server]\nthreads = 2\nauto_sites = false\n" + self.auth +
                                 "[storage]\nfsync = interval\n" + sites_config())

    def add_proc(self, data_dir=None):
        """A new processing node (consuming nothing until owned[k] is set)."""
        t = Tally(data_dir=data_dir)
        t.shared = True
        self.proc.append(t)
        self.owned.append(set())
        return t

    def configure(self):
        """(Re)writes every cluster node's configuration from owned and answering."""
        owners = ", ".join("%s=http://127.0.0.1:%d" % (r, t.port)
                           for k, t in enumerate(self.proc)
                           for r in ranges([p for p in range(PARTITIONS)
                                            if self.answering[p] == k]).split(",") if r)
        common = ("[server]\nthreads = 2\nauto_sites = false\n" + self.auth +
                  "[cluster]\nlog_backend = jetstream\nnats_urls = %s\npartitions = %d\n"
                  "replicas = 3\npartition_owners = %s\npublish_timeout_ms = 2000\n"
                  "forward_timeout_ms = 10000\n" % (", ".join(self.nats.urls()), PARTITIONS,
                                                     owners))
        for k, t in enumerate(self.proc):
            t.write_config(common + "role = process\nnode_name = p%d\nowned_partitions = %s\n"
                           % (k + 1, ranges(self.owned[k])) + sites_config())
        for k, t in enumerate(self.ingest):
            t.write_config(common + "role = ingest\nnode_name = i%d\n" % (k + 1) +
                           sites_config())

    def nodes(self):
        return self.proc + self.ingest

    def start(self):
        self.nats.start()
        self.nats.wait_ready(60)
        # The first node creates the streams and the salts bucket (waiting for a leader).
        for t in self.nodes():
            t.start(timeout_s=90)
        self.single.start(timeout_s=30)

    def restart(self, t):
        eq(t.stop(), 0, "stop of the node on port %d" % t.port)
        t.start(timeout_s=60)

    def owner_of(self, site):
        return self.proc[self.answering[partition_of(site, PARTITIONS)]]

    def other_of(self, site):
        return next(t for t in self.proc if t is not self.owner_of(site) and t.proc and
                    t.proc.poll() is None)

    def cleanup(self):
        for t in self.nodes() + [self.single]:
            t.cleanup()
        self.nats.cleanup()


# ----------------------------------------------------------------------------------- load


class Visitor:
    def __init__(self, rnd, tid, k, site, anonymous):
        self.site = site
        self.key = ("ip", "10.%d.%d.%d" % (tid, k // 250, k % 250), UA % (90 + k % 30)) \
            if anonymous else ("id", "v-%d-%d" % (tid, k))
        self.ua = UA % (90 + k % 30)
        self.ts = BASE_TS_MS + rnd.randrange(0, 20 * 86400) * 1000
        self.page = 0


class Load:
    """Client threads posting to the ingest nodes; failed requests are retried with the same
    events until acknowledged. acked[tid] = that thread's batches in acknowledgement order (a
    visitor's events are all sent by one thread, in time order)."""

    def __init__(self, ports, write_key, seed, threads, events_per_s, visitors_per_thread,
                 retry_deadline_s):
        self.ports = ports
        self.key = write_key
        self.seed = seed
        self.nthreads = threads
        self.per_thread_s = events_per_s / float(threads)
        self.visitors_per_thread = visitors_per_thread
        self.retry_deadline_s = retry_deadline_s
        self.acked = [[] for _ in range(threads)]
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.statuses = Counter()
        self.reasons = Counter()  # error messages of the retried answers
        self.retry_s = []  # first attempt to 202 of each request that needed retries
        self.retried_requests = 0
        self.errors = []
        self.threads = []
        # Anonymous visitors (IP + User-Agent) hash with the shared daily salt: two ingest
        # nodes must agree. Not within 15 min of midnight UTC (the salt of "today" changes).
        self.anonymous_ok = (86400 - time.time() % 86400) > 900

    def start(self):
        self.threads = [threading.Thread(target=self.worker, args=(tid,), daemon=True)
                        for tid in range(self.nthreads)]
        for th in self.threads:
            th.start()

    def finish(self):
        self.stop.set()
        for th in self.threads:
            th.join(self.retry_deadline_s + 30)
            check(not th.is_alive(), "a load thread did not finish")
        check(not self.errors, "load errors: %s" % self.errors[:5])

    def count(self):
        return sum(len(b) for batches in self.acked for b in batches)

    def event(self, rnd, tid, seq, v):
        gap_s = rnd.randint(31 * 60, 5 * 3600) if rnd.random() < 0.15 else rnd.randint(5, 300)
        v.ts += gap_s * 1000
        if rnd.random() < 0.2:
            v.page = rnd.randrange(len(PAGES))
        else:
            v.page = (v.page + 1) % len(PAGES)
        ev = {"site": v.site, "id": "e%d-%d-%d" % (self.seed, tid, seq), "ts": v.ts,
              "url": "https://%s%s" % (v.site, PAGES[v.page])}
        r = rnd.random()
        if r < 0.08:
            ev["name"] = "Signup"
        elif r < 0.14:
            ev["name"] = "Download"
            ev["props"] = {"file": "f%d.pdf" % rnd.randrange(3)}
        ref = rnd.choice(REFERRERS)
        if ref:
            ev["referrer"] = ref
        if v.key[0] == "id":  # the User-Agent still classifies the device (no UA: a bot)
            ev["visitor_id"], ev["user_agent"] = v.key[1], v.ua
        else:
            ev["ip"], ev["user_agent"] = v.key[1], v.key[2]
        return ev

    def post_until_acked(self, tid, conns, batch, rr):
        body = json.dumps(batch)
        t_first = time.time()
        deadline = t_first + self.retry_deadline_s
        attempt = 0
        while True:
            k = (rr + attempt) % len(self.ports)
            attempt += 1
            status = None
            try:
                if conns[k] is None:
                    conns[k] = http.client.HTTPConnection("127.0.0.1", self.ports[k], timeout=10)
                conns[k].request("POST", "/v1/events", body, {
                    "Content-Type": "application/json", "Authorization": "Bearer " + self.key})
                r = conns[k].getresponse()
                data = r.read()
                status = r.status
            except (OSError, http.client.HTTPException):
                if conns[k] is not None:
                    conns[k].close()
                conns[k] = None
                status = "conn"
            with self.lock:
                self.statuses[status] += 1
                if status in RETRY_STATUSES:
                    try:
                        self.reasons[json.loads(data).get("error", "")[:70]] += 1
                    except (ValueError, AttributeError):
                        self.reasons[repr(data[:70])] += 1
                if attempt == 2:
                    self.retried_requests += 1
            if status == 202:
                eq(json.loads(data), {"accepted": len(batch)})
                if attempt > 1:
                    with self.lock:
                        self.retry_s.append(time.time() - t_first)
                return
            if status != "conn" and status not in RETRY_STATUSES:
                raise AssertionError("ingest answered %s: %r" % (status, data[:300]))
            if time.time() > deadline:
                raise AssertionError("a request was not acknowledged within %ss (last: %s)" %
                                     (self.retry_deadline_s, status))
            time.sleep(min(0.05 * attempt, 0.5))

    def worker(self, tid):
        rnd = random.Random("%d-%d" % (self.seed, tid))
        visitors = [Visitor(rnd, tid, k, SITES[(tid + k) % len(SITES)],
                            self.anonymous_ok and k % 4 == 0)
                    for k in range(self.visitors_per_thread)]
        conns = [None] * len(self.ports)
        seq = 0
        rr = tid
        t0 = time.time()
        try:
            while not self.stop.is_set():
                n = rnd.randint(1, 20)
                batch = []
                for _ in range(n):
                    batch.append(self.event(rnd, tid, seq, rnd.choice(visitors)))
                    seq += 1
                self.post_until_acked(tid, conns, batch, rr)
                rr += 1
                self.acked[tid].append(batch)
                # pace: seq events by now at per_thread_s
                ahead_s = seq / self.per_thread_s - (time.time() - t0)
                if ahead_s > 0:
                    self.stop.wait(ahead_s)
        except Exception as e:  # noqa: BLE001 - reported by finish()
            with self.lock:
                self.errors.append("thread %d: %s" % (tid, e))
        finally:
            for c in conns:
                if c is not None:
                    c.close()


def feed_single(t, key, acked):
    """Sends every acknowledged event once to the single node: each load thread's batches in
    their order (so each visitor's events in time order), up to 1000 per request."""
    errors = []

    def one(batches):
        evs = [e for b in batches for e in b]
        conn = http.client.HTTPConnection("127.0.0.1", t.port, timeout=60)
        try:
            for i in range(0, len(evs), 1000):
                conn.request("POST", "/v1/events", json.dumps(evs[i:i + 1000]), {
                    "Content-Type": "application/json", "Authorization": "Bearer " + key})
                r = conn.getresponse()
                data = r.read()
                if r.status != 202:
                    errors.append("single node answered %d: %r" % (r.status, data[:300]))
                    return
        finally:
            conn.close()

    ths = [threading.Thread(target=one, args=(b,)) for b in acked]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    check(not errors, errors[:3])


def expected_counts(acked):
    """site -> {pageviews, events, visitors} from the acknowledged events (ids unique)."""
    out = {s: {"pageviews": 0, "events": 0, "visitors": set()} for s in SITES}
    ids = set()
    for batches in acked:
        for b in batches:
            for e in b:
                check(e["id"] not in ids, "the load generated id %s twice" % e["id"])
                ids.add(e["id"])
                c = out[e["site"]]
                c["events"] += 1
                if e.get("name", "pageview") == "pageview":
                    c["pageviews"] += 1
                c["visitors"].add(e.get("visitor_id") or (e["ip"], e["user_agent"]))
    for c in out.values():
        c["visitors"] = len(c["visitors"])
    return out


# -------------------------------------------------------------------------------- queries

QUERIES = [
    {"metrics": ["visitors", "visits", "pageviews", "events", "bounce_rate", "visit_duration",
                 "views_per_visit"]},
    {"metrics": ["visitors", "pageviews"], "dimensions": ["event:page"],
     "order_by": [["event:page", "asc"]]},
    {"metrics": ["visitors", "visits", "bounce_rate", "visit_duration"],
     "dimensions": ["visit:entry_page"], "order_by": [["visit:entry_page", "asc"]]},
    {"metrics": ["visitors", "events"], "dimensions": ["event:name"],
     "order_by": [["event:name", "asc"]]},
    {"metrics": ["visitors", "events", "conversion_rate"], "dimensions": ["event:goal"],
     "order_by": [["event:goal", "asc"]]},
    {"metrics": ["visitors", "visits", "pageviews"], "dimensions": ["time:day"]},
    {"metrics": ["visitors", "visits"], "dimensions": ["visit:source"],
     "order_by": [["visit:source", "asc"]]},
]


def query(t, site, q, read_key, headers=None):
    body = dict(q, site_id=site, date_range=DATE_RANGE)
    h = {"Authorization": "Bearer " + read_key}
    h.update(headers or {})
    return t.post_json(V2, body, h)


def answers(t, site, read_key):
    out = []
    for q in QUERIES:
        s, _, b = query(t, site, q, read_key)
        eq(s, 200, "query %s of %s on port %d: %s" % (q, site, t.port, b))
        out.append(b["results"])
    return out


def totals(t, site, read_key):
    s, _, b = query(t, site, {"metrics": ["visitors", "pageviews", "events"]}, read_key)
    if s != 200:
        return None
    m = b["results"][0]["metrics"]
    return {"visitors": m[0], "pageviews": m[1], "events": m[2]}


def lag(t):
    try:
        s, _, raw = t.request("GET", "/healthz", timeout=2)
        if s != 200:
            return None
        h = json.loads(raw)
        return h["consumers"]["raw"]["lag"] + h["consumers"]["rollup"]["lag"]
    except (OSError, ValueError, KeyError):
        return None


def wait_caught_up(c, expected, timeout_s):
    """Until both processing nodes have no lag and every site's totals are the expected ones."""
    deadline = time.time() + timeout_s
    last = None
    while True:
        lags = [lag(t) for t in c.proc]
        if all(x == 0 for x in lags):
            got = {s: totals(c.owner_of(s), s, c.read) for s in SITES}
            if got == expected:
                return
            last = "lags %s, totals %s, expected %s" % (lags, got, expected)
        else:
            last = "lags %s" % lags
        check(time.time() < deadline, "the processing nodes did not catch up in %ss: %s" %
              (timeout_s, last))
        time.sleep(0.25)


def metric(t, name, label=""):
    s, _, raw = t.request("GET", "/metrics", timeout=5)
    total = 0.0
    for line in raw.decode().splitlines():
        if line.startswith(name) and label in line and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def stream_messages(nats):
    """Messages per stream as the first running server reports them."""
    k = nats.running()[0]
    st, body = nats.monitor(k, "/jsz?accounts=true&streams=true")
    out = {}
    for acc in json.loads(body).get("account_details") or []:
        for sd in acc.get("stream_detail") or []:
            out[sd["name"]] = sd["state"]["messages"]
    return out


# ---------------------------------------------------------------------------------- tests

STATE = {}


def log(msg):
    print("    " + msg, flush=True)


def register_instances(c):
    harness._INSTANCES.extend(c.nodes() + [c.single])


@test
def faults_under_load_count_each_acked_event_once():
    c = Cluster()  # its Tally instances register themselves for the failure report
    STATE["cluster"] = c
    rnd = random.Random(ARGS.seed)
    t0 = time.time()
    c.start()
    log("cluster up in %.1fs: nats %s, sites %s" % (
        time.time() - t0, [s["port"] for s in c.nats.servers],
        {s: partition_of(s, PARTITIONS) for s in SITES}))
    if ARGS.long:
        load = Load([t.port for t in c.ingest], c.write, ARGS.seed, threads=8,
                    events_per_s=600, visitors_per_thread=150, retry_deadline_s=120)
    else:
        load = Load([t.port for t in c.ingest], c.write, ARGS.seed, threads=4,
                    events_per_s=250, visitors_per_thread=40, retry_deadline_s=60)
    cycles = 5 if ARGS.long else 1
    k0, p0 = rnd.randrange(3), rnd.randrange(2)
    load.start()
    try:
        time.sleep(3)
        used = {"%s_P%d" % ("TALLY", partition_of(s, PARTITIONS)) for s in SITES}
        for cycle in range(cycles):
            # Even cycles: the server leading most of the streams in use (so that their
            # leaders must fail over); odd cycles: the next one in turn.
            k = (k0 + cycle) % 3
            if cycle % 2 == 0:
                leaders = Counter(v for n, v in nats_stream_leaders(c.nats).items()
                                  if n in used)
                names = [srv["name"] for srv in c.nats.servers]
                if leaders and leaders.most_common(1)[0][0] in names:
                    k = names.index(leaders.most_common(1)[0][0])
            log("cycle %d: kill -9 nats %s (acked so far %d)" % (cycle, c.nats.servers[k]["name"],
                                                                 load.count()))
            c.nats.kill9(k)
            time.sleep(rnd.uniform(2, 4))
            p = c.proc[(p0 + cycle) % 2]
            log("cycle %d: kill -9 processing node on port %d" % (cycle, p.port))
            p.kill9()
            time.sleep(rnd.uniform(0.5, 2))
            p.start(timeout_s=60)
            log("cycle %d: processing node restarted (acked so far %d)" % (cycle, load.count()))
            if ARGS.long and cycle % 2 == 1:
                i = c.ingest[cycle % 2]
                log("cycle %d: kill -9 ingest node on port %d" % (cycle, i.port))
                i.kill9()
                time.sleep(1)
                i.start(timeout_s=60)
            time.sleep(rnd.uniform(2, 4))
            c.nats.start(k)
            c.nats.wait_ready(60, health=False)
            log("cycle %d: nats %s back" % (cycle, c.nats.servers[k]["name"]))
            time.sleep(rnd.uniform(3, 8) if ARGS.long else 2)
        if ARGS.long:
            # Two of three servers down: no quorum, every publish fails until they are back.
            a, b = k0, (k0 + 1) % 3
            log("quorum loss: kill -9 nats %s and %s (acked so far %d)" % (
                c.nats.servers[a]["name"], c.nats.servers[b]["name"], load.count()))
            c.nats.kill9(a)
            c.nats.kill9(b)
            time.sleep(5)
            c.nats.start(a)
            c.nats.start(b)
            c.nats.wait_ready(90, health=False)
            log("quorum back (acked so far %d)" % load.count())
            time.sleep(8)
    finally:
        load.finish()
    n = load.count()
    log("load: %d events acknowledged in %.1fs; statuses %s; %d requests retried (longest "
        "%.1fs until acknowledged); errors %s" % (
            n, time.time() - t0, dict(load.statuses), load.retried_requests,
            max(load.retry_s or [0]), dict(load.reasons)))
    check(n >= (20000 if ARGS.long else 2000), "load too low: %d events" % n)
    expected = expected_counts(load.acked)
    feed_single(c.single, c.write, load.acked)
    c.single.wait_consumers(120)
    wait_caught_up(c, expected, 300 if ARGS.long else 90)
    dups = sum(metric(t, "tally_events_dropped_total", 'reason="duplicate"') for t in c.proc)
    log("caught up; duplicates dropped by the consumers since their last start: %d; "
        "stream messages: %s" % (
        dups, stream_messages(c.nats)))
    eq({s: totals(c.single, s, c.read) for s in SITES}, expected, "single node totals")
    reference = {}
    for s in SITES:
        ref = answers(c.single, s, c.read)
        reference[s] = ref
        owner, other = c.owner_of(s), c.other_of(s)
        eq(answers(owner, s, c.read), ref, "owner's answers for %s differ from the single "
           "node's" % s)
        for k, t in enumerate(c.ingest):
            eq(answers(t, s, c.read), ref, "answers for %s through ingest node %d differ" %
               (s, k + 1))
        eq(answers(other, s, c.read), ref, "answers for %s through the other processing node "
           "differ" % s)
        # The owner is the one this test computed (xxh64 % partitions): asked with the
        # forwarded header, the owner answers itself and the other node refuses (421).
        st, _, b = query(owner, s, QUERIES[0], c.read, {"X-Tally-Forwarded": "1"})
        eq(st, 200, b)
        st, _, b = query(other, s, QUERIES[0], c.read, {"X-Tally-Forwarded": "1"})
        eq(st, 421, b)
    STATE["reference"] = reference
    STATE["expected"] = expected


@test
def forwarding_checks_keys_and_sites_first():
    c = STATE.get("cluster")
    check(c is not None and "reference" in STATE, "needs the first test's cluster")
    register_instances(c)
    s = SITES[0]
    i1 = c.ingest[0]
    st, _, b = query(i1, s, QUERIES[0], "tly_not-a-real-key")
    eq(st, 401, b)
    st, _, b = query(i1, "unknown.example", QUERIES[0], c.read)
    eq(st, 404, b)
    st, _, b = query(i1, s, {"metrics": ["no_such_metric"]}, c.read)
    eq(st, 400, b)
    st, _, b = query(i1, s, QUERIES[0], c.write)  # a write key cannot read
    eq(st, 403, b)
    # export is not relayed: the answer names the owner
    st, _, raw = i1.request("GET", "/api/v1/export?site_id=%s&date_range=all" % s,
                            headers={"Authorization": "Bearer " + c.read})
    eq(st, 421, raw)
    eq(json.loads(raw)["owner"], "http://127.0.0.1:%d" % c.owner_of(s).port)
    # so is the live WebSocket, on a processing node that does not own the site
    ws = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
          "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Authorization": "Bearer " + c.read}
    st, _, raw = c.other_of(s).request("GET", "/api/v1/live?site_id=%s" % s, headers=ws)
    eq(st, 421, raw)
    eq(json.loads(raw)["owner"], "http://127.0.0.1:%d" % c.owner_of(s).port)


@test
def live_on_the_owner_shows_events_from_every_ingest_node():
    # The owner's live feed comes from the stream's subject, not from its own ingest.
    registered = list(harness._TESTS)
    from test_live import WS  # (importing registers test_live's tests: undo that)
    harness._TESTS[:] = registered
    c = STATE.get("cluster")
    check(c is not None, "needs the first test's cluster")
    s = SITES[0]
    owner = c.owner_of(s)
    ws = WS(owner, path="/api/v1/live?site_id=%s" % s, key=c.read)
    eq(ws.status, 101, "live upgrade on the owner")
    ws.recv_json("visitors", timeout=5)
    h = {"User-Agent": UA % 120}
    for n, node in enumerate(c.ingest + [owner]):
        path = "/live-%d-%d" % (n, ARGS.seed)
        st, _, b = node.post_json("/v1/events", [{"site": s, "url": "https://%s%s" % (s, path),
                                                  "visitor_id": "live%d" % n}], h)
        eq(st, 202, b)
        m = ws.recv_json("event", timeout=5)
        eq(m["path"], path, "live event ingested through node %d" % n)
        eq(m["site"], s, "live event's site")
    time.sleep(0.3)
    wait_lag0(owner)  # the live view runs ahead of the consumers: let them catch up


@test
def rebuild_from_stream_gives_same_answers():
    c = STATE.get("cluster")
    check(c is not None and "reference" in STATE, "needs the first test's cluster")
    register_instances(c)
    p = c.proc[0]
    mine = [s for s in SITES if c.owner_of(s) is p]
    # Stop only once p has consumed everything in its streams (earlier tests may have just
    # published): a stop flushes what was consumed, and the rebuild replays to the stream end.
    time.sleep(0.3)
    wait_lag0(p)
    eq(p.stop(), 0)
    # The owner is down: a forwarded query fails cleanly (502), ingest goes on.
    st, _, b = query(c.ingest[0], mine[0], QUERIES[0], c.read)
    eq(st, 502, b)
    rc, out, err = p.tool("--digest")
    eq(rc, 0, err)
    d_inc = digest_line(out)
    rc, out, err = p.tool("--rebuild", timeout_s=600)
    eq(rc, 0, "--rebuild failed: %s %s" % (out, err))
    log("rebuild: %s" % " | ".join(out.strip().splitlines()))
    d_reb = digest_line(out)
    eq(d_inc, d_reb, "the incremental store differs from a rebuild from the streams")
    check(d_inc != "0" * 32, "nothing was counted (empty digest)")
    # Events arriving while the node is down are consumed when it is back.
    extra = [[{"site": s, "id": "late-%d-%d" % (ARGS.seed, k), "ts": BASE_TS_MS + 40 * 86400000
               + k * 1000, "url": "https://%s/late" % s, "visitor_id": "late-%d" % k,
               "user_agent": UA % 120}
              for k in range(20) for s in mine]]
    for t in (c.ingest[1], c.single):
        st, _, b = t.post_json("/v1/events", extra[0], {"Authorization": "Bearer " + c.write})
        eq(st, 202, b)
    p.start(timeout_s=60)
    expected = STATE["expected"]
    for s in mine:
        expected[s]["pageviews"] += 20
        expected[s]["events"] += 20
        expected[s]["visitors"] += 20
    c.single.wait_consumers(60)
    wait_caught_up(c, expected, 60)
    for s in SITES:
        ref = answers(c.single, s, c.read)
        eq(answers(c.owner_of(s), s, c.read), ref, "answers for %s after the rebuild" % s)
        eq(answers(c.ingest[0], s, c.read), ref, "answers for %s after the rebuild (forwarded)"
           % s)


def post_both(c, tag, sites, n):
    """n new pageviews per site (new visitors) to an ingest node and to the single node; the
    expected counts follow."""
    evs = [{"site": s, "id": "%s-%d-%d" % (tag, ARGS.seed, k), "ts": BASE_TS_MS + 45 * 86400000
            + k * 1000, "url": "https://%s/%s" % (s, tag), "visitor_id": "%s-%d" % (tag, k),
            "user_agent": UA % 121} for k in range(n) for s in sites]
    for t in (c.ingest[len(tag) % 2], c.single):
        st, _, b = t.post_json("/v1/events", evs, {"Authorization": "Bearer " + c.write})
        eq(st, 202, b)
    for s in sites:
        for k in ("pageviews", "events", "visitors"):
            STATE["expected"][s][k] += n


def check_everywhere(c, label):
    """Every site's answers, from its owner and through both ingest nodes, equal the single
    node's; the owner answers a forwarded request itself."""
    c.single.wait_consumers(60)
    wait_caught_up(c, STATE["expected"], 60)
    for s in SITES:
        ref = answers(c.single, s, c.read)
        owner = c.owner_of(s)
        eq(answers(owner, s, c.read), ref, "%s: the owner's answers for %s" % (label, s))
        for k, t in enumerate(c.ingest):
            eq(answers(t, s, c.read), ref, "%s: answers for %s through ingest node %d" %
               (label, s, k + 1))
        st, _, b = query(owner, s, QUERIES[0], c.read, {"X-Tally-Forwarded": "1"})
        eq(st, 200, "%s: %s" % (label, b))


def wait_lag0(t, timeout_s=60):
    deadline = time.time() + timeout_s
    while lag(t) != 0:
        check(time.time() < deadline, "node on port %d did not catch up" % t.port)
        time.sleep(0.2)
    time.sleep(0.3)  # the stream end is refreshed every ~50 ms
    while lag(t) != 0:
        check(time.time() < deadline, "node on port %d did not catch up" % t.port)
        time.sleep(0.2)


@test
def move_partitions_by_replay_and_by_backup():
    """docs/cluster.md, "Moving a partition": (a) to a running node that replays it from the
    stream, (b) to a new node restored from a backup of the old owner (resuming at the
    restored cursors)."""
    c = STATE.get("cluster")
    check(c is not None and "reference" in STATE, "needs the first test's cluster")
    register_instances(c)
    p1, p2 = c.proc[0], c.proc[1]
    mine = [s for s in SITES if c.owner_of(s) is p1]
    pa = partition_of(mine[0], PARTITIONS)
    pb = next(partition_of(s, PARTITIONS) for s in mine if partition_of(s, PARTITIONS) != pa)
    sites_a = [s for s in SITES if partition_of(s, PARTITIONS) == pa]
    sites_b = [s for s in SITES if partition_of(s, PARTITIONS) == pb]
    # (a) p2 also consumes pa: it replays the stream from its start.
    c.owned[1].add(pa)
    c.configure()
    c.restart(p2)
    post_both(c, "mva", sites_a, 10)
    c.single.wait_consumers(60)
    wait_lag0(p2)
    for s in sites_a:  # p2 owns pa now: it answers itself, before any owner changed
        eq(answers(p2, s, c.read), answers(c.single, s, c.read), "p2 after replaying %s" % s)
    # then partition_owners names p2 everywhere, and p1 stops consuming pa
    c.answering[pa] = 1
    c.owned[0].discard(pa)
    c.configure()
    for t in c.ingest + [p1, p2]:
        c.restart(t)
    post_both(c, "mvb", SITES, 5)
    check_everywhere(c, "after moving partition %d to p2 by replay" % pa)
    eq(query(p1, sites_a[0], QUERIES[0], c.read, {"X-Tally-Forwarded": "1"})[0], 421)
    # (b) a new node p3 from a backup of p1, then events it must pick up at its cursors
    dest = os.path.join(p1.tmp, "backup")
    out = subprocess.run([BIN, "backup", dest, "--url", "http://127.0.0.1:%d" % p1.port,
                          "--key", c.admin], capture_output=True, text=True, timeout=120)
    eq(out.returncode, 0, "backup of a processing node: %s %s" % (out.stdout, out.stderr))
    post_both(c, "mvc", sites_b, 10)
    p3 = c.add_proc()
    out = subprocess.run([BIN, "restore", dest, p3.data_dir], capture_output=True, text=True,
                         timeout=120)
    eq(out.returncode, 0, "restore: %s %s" % (out.stdout, out.stderr))
    c.owned[2] = {pb}
    c.configure()
    p3.start(timeout_s=60)
    c.single.wait_consumers(60)
    wait_lag0(p3)
    for s in sites_b:
        eq(answers(p3, s, c.read), answers(c.single, s, c.read), "p3 restored, for %s" % s)
    c.answering[pb] = 2
    c.owned[0].discard(pb)
    c.configure()
    for t in c.ingest + [p1, p2, p3]:
        c.restart(t)
    post_both(c, "mvd", SITES, 5)
    check_everywhere(c, "after moving partition %d to p3 by backup" % pb)
    log("moved partition %d (%s) to p2 by replay, partition %d (%s) to p3 by backup" % (
        pa, sites_a, pb, sites_b))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--long", action="store_true")
    p.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    global ARGS
    ARGS, rest = p.parse_known_args()
    if not os.path.exists(NATS_BIN):
        print("PASS test_cluster: skipped: nats-server not installed", flush=True)
        return
    print("seed=%d%s" % (ARGS.seed, " long" if ARGS.long else ""), flush=True)
    sys.argv = sys.argv[:1] + rest
    try:
        run_all()
    finally:
        c = STATE.get("cluster")
        if c is not None:
            c.cleanup()


if __name__ == "__main__":
    main()
