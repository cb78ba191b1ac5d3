#!/bin/sh
# Runs every test and ends with one line "N passed, N failed".
# Each test binary/script prints PASS/FAIL lines; a binary that dies or times out without
# printing a FAIL line counts as one failure. Per-binary timeout: TEST_TIMEOUT_S (default 600).
cd "$(dirname "$0")/.."
T=${TEST_TIMEOUT_S:-600}
OUT=$(mktemp -d /tmp/tally-run-XXXXXX)
pass=0; fail=0

# Tests that run their own nats-server processes (JetStream clusters: leaders killed, elections,
# reconnects) and so depend on timing of processes outside Tally. One of them that fails is run
# once more and only the second run counts; the first run's failure is still printed (RETRY
# lines), so a flaky run shows and a deterministic failure still fails. Seen (session 9):
# cluster_r3_survives_a_server reading nothing for 20 s after a leader kill beside two CPU
# burners (1 run in 12). (An ASan abort of test_jslog seen then was a use after free in
# libnats 3.4, worked around in jslog.c and tested by reader_churn_while_delivering.)
RETRY_ONCE="test_jslog test_cluster test_cluster.py"

# An abort in a sanitizer build prints a stack trace (ASan's handle_abort), so that a failure
# like the one above says where it happened; the release builds ignore these variables.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}handle_abort=1"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}print_stacktrace=1"

run_one() { # label, command...
    label=$1; shift
    log="$OUT/$(echo "$label" | tr '/ ' '__').log"
    timeout -k 5 "$T" "$@" >"$log" 2>&1
    rc=$?
    case " $RETRY_ONCE " in
    *" $(basename "$label") "*)
        if [ "$rc" != 0 ] || grep -q '^FAIL ' "$log"; then
            echo "RETRY [$label] failed once (status $rc); its last lines:"
            tail -60 "$log" | sed 's/^/    /'
            timeout -k 5 "$T" "$@" >"$log" 2>&1
            rc=$?
        fi
        ;;
    esac
    p=$(grep -c '^PASS ' "$log"); f=$(grep -c '^FAIL ' "$log")
    grep -E '^(PASS|FAIL) ' "$log" | sed "s|^|[$label] |"
    if [ "$rc" != 0 ] && [ "$f" = 0 ]; then
        echo "FAIL [$label] exited with status $rc; last lines:"; tail -20 "$log" | sed 's/^/    /'
        f=1
    elif [ "$f" != 0 ]; then
        grep -v -E '^(PASS|FAIL) ' "$log" | tail -30 | sed 's/^/    /'
    fi
    pass=$((pass + p)); fail=$((fail + f))
}

for variant in rel asan; do
    for t in build/$variant/tests/test_*; do
        [ -x "$t" ] && run_one "$variant/unit/$(basename "$t")" "$t"
    done
    for r in build/$variant/fuzz/*_replay; do
        [ -x "$r" ] || continue
        name=$(basename "$r" _replay)
        run_one "$variant/fuzz/$name" "$r" "tests/fuzz/corpus/$name"
    done
done

# The log's tests under ThreadSanitizer (make tsan): a report is a failure.
export TSAN_OPTIONS="${TSAN_OPTIONS:+$TSAN_OPTIONS:}halt_on_error=1:exitcode=66"
for t in build/tsan/tests/test_*; do
    [ -x "$t" ] && run_one "tsan/unit/$(basename "$t")" "$t"
done

for t in tests/integration/test_*.py; do
    [ -f "$t" ] && TALLY_BIN=./tally run_one "integration/$(basename "$t")" python3 "$t"
done
for t in tests/integration/test_*.sh; do
    [ -f "$t" ] && TALLY_BIN=./tally run_one "integration/$(basename "$t")" sh "$t"
done

# The server under ASan+UBSan: the functional and hostile-input suites again.
if [ -x build/asan/tally ]; then
    for t in test_ingest.py test_hostile.py test_rollups.py test_recovery.py test_query_api.py \
             test_query_diff.py test_funnel.py test_export.py test_backup.py test_reload.py \
             test_peer_plausible.py test_peer_segment.py test_peer_posthog.py test_peer_ga4.py \
             test_peer_matomo.py test_peer_umami.py test_peer_goatcounter.py test_peer_pixel.py \
             test_live.py; do
        TALLY_BIN=build/asan/tally run_one "asan/integration/$t" python3 "tests/integration/$t"
    done
fi

rm -rf "$OUT"
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
