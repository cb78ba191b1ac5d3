#!/bin/sh
# Cluster benchmark (issue 10): a single node (role all, local log, fsync always) against the
# JetStream cluster (three nats-server processes, streams R3, two ingest and two processing
# nodes) on this machine, in the same run: events/s of NDJSON batches (wrk) acknowledged and
# processed, CPU per event of each kind of process, and the acknowledgement latency p50/p99 of
# single-event requests at a fixed rate (http_load, open loop). bench/cluster_bench.py does the
# work and documents every field; it prints one line:
#   bench=cluster single_ingest_eps=... cluster_ingest_eps=... ratio_ingest=... ...
# Everything runs on 127.0.0.1 with free ports and temporary directories that are removed;
# only processes started here are stopped, by PID. About 1-2 minutes with the defaults.
#
# Environment: BENCH_SECONDS (10) per measurement, BENCH_LATENCY_RPS (1000), TALLY (./tally,
# else build/rel/tally), NATS_SERVER_BIN (/usr/sbin/nats-server), WRK (wrk), HTTP_LOAD
# (build/rel/bench/http_load).
set -u
cd "$(dirname "$0")/.." || exit 1
TALLY=${TALLY:-./tally}
[ -x "$TALLY" ] || [ ! -x build/rel/tally ] || TALLY=build/rel/tally
NATS=${NATS_SERVER_BIN:-/usr/sbin/nats-server}
for need in "$TALLY" "$NATS"; do
    [ -x "$need" ] || { echo "cluster: $need not found" >&2;
                        echo "bench=cluster status=skipped reason=missing_$(basename "$need")";
                        exit 0; }
done
command -v "${WRK:-wrk}" >/dev/null 2>&1 || { echo "cluster: wrk not found" >&2; exit 1; }
TALLY_BIN=$TALLY NATS_SERVER_BIN=$NATS exec python3 bench/cluster_bench.py
