#!/bin/sh
# make fuzz: builds every tests/fuzz/fuzz_*.c as a libFuzzer binary (clang, ASan+UBSan) in
# build/fuzz/ and runs each for $1 seconds (default 60), growing its corpus in
# tests/fuzz/corpus/<target>/ (commit new interesting inputs; `make test` replays them).
# FUZZ_TARGETS="fuzz_batch fuzz_native" limits the run to those targets.
set -e
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-60}
O=build/fuzz
mkdir -p "$O/obj"
PKGS="libevent libevent_pthreads rocksdb liblz4 libcjson libsodium inih libpcre2-8 libmaxminddb libxxhash zlib yaml-0.1 glib-2.0 libnats libcurl"
CFLAGS="-std=c11 -D_GNU_SOURCE -pthread -g -O1 -fno-omit-frame-pointer -Iinclude -Isrc $(pkg-config --cflags $PKGS)"
SAN="-fsanitize=address,undefined"
LIBS="$(pkg-config --libs $PKGS) -lpthread -lm -lstdc++"
objs=""
for src in $(find src -name '*.c' ! -name main.c | sort); do
    obj="$O/obj/$(echo "$src" | tr '/' '_').o"
    if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ]; then
        clang $CFLAGS $SAN -fsanitize=fuzzer-no-link -c "$src" -o "$obj"
    fi
    objs="$objs $obj"
done
for src in $(find src -name '*.S' | sort); do
    obj="$O/obj/$(echo "$src" | tr '/' '_').o"
    clang $CFLAGS -c "$src" -o "$obj"
    objs="$objs $obj"
done
targets=${FUZZ_TARGETS:-$(ls tests/fuzz/fuzz_*.c | xargs -n1 basename | sed 's/\.c$//')}
for t in $targets; do
    clang $CFLAGS $SAN -fsanitize=fuzzer "tests/fuzz/$t.c" $objs $LIBS -o "$O/$t"
    mkdir -p "tests/fuzz/corpus/$t"
    echo "fuzz: $t for ${SECONDS_PER_TARGET}s"
    "$O/$t" -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 "tests/fuzz/corpus/$t" 2>&1 | tail -15
done
