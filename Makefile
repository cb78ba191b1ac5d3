# Tally build. Plain make; one variant per build directory:
#   build/rel   -O2, the ./tally binary, unit tests, benches
#   build/asan  ASan+UBSan, unit tests and fuzz-corpus replays
# `make test` installs missing Debian packages first (scripts/deps.sh).

BUILD ?= rel
O := build/$(BUILD)
CC ?= cc

PKGS := libevent libevent_pthreads rocksdb liblz4 libcjson libsodium inih libpcre2-8 \
        libmaxminddb libxxhash zlib yaml-0.1 glib-2.0 libnats libcurl
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

Q := $(if $(V),,@)
WARN := -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter -Wno-format-truncation
ifeq ($(BUILD),asan)
  OPT := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
else
  OPT := -O2 -g
endif
CFLAGS := -std=c11 -D_GNU_SOURCE -pthread $(WARN) $(OPT) -Iinclude -Isrc -I$(O)/gen $(PKG_CFLAGS) \
          -MMD -MP
LDLIBS := $(PKG_LIBS) -lpthread -lm -lstdc++

SRC_LIB := $(filter-out src/main.c,$(shell find src -name '*.c' | sort))
ASM_LIB := $(shell find src -name '*.S' | sort)
OBJ_LIB := $(SRC_LIB:%.c=$(O)/%.o) $(ASM_LIB:%.S=$(O)/%.o)
UNIT_BIN := $(patsubst tests/unit/%.c,$(O)/tests/%,$(wildcard tests/unit/test_*.c))
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_REPLAY := $(patsubst tests/fuzz/%.c,$(O)/fuzz/%_replay,$(FUZZ_SRC))
BENCH_BIN := $(patsubst bench/%.c,$(O)/bench/%,$(wildcard bench/*.c))
LIB := $(O)/libtally.a

.PHONY: all deps run test test-only unit asan fuzz bench crash upgrade clean data format compat \
        cluster-test tsan
all: tally

deps:
	@sh scripts/deps.sh

data:
	@sh scripts/fetch_data.sh

tally: data $(O)/tally
	@cp $(O)/tally ./tally.tmp && mv -f ./tally.tmp ./tally

$(O)/tally: $(O)/src/main.o $(LIB)
	@echo "  LD    $@"
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(LIB): $(OBJ_LIB)
	@rm -f $@
	$(Q)ar rcs $@ $^

$(O)/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC    $<"
	$(Q)$(CC) $(CFLAGS) -c -o $@ $<

# The embedded data sets must be fetched before datasets.S is assembled (make -j).
$(O)/src/ingest/datasets.o: | data

$(O)/%.o: %.S
	@mkdir -p $(dir $@)
	@echo "  CC    $<"
	$(Q)$(CC) $(CFLAGS) -c -o $@ $<

$(O)/tests/%: tests/unit/%.c tests/unit/test.h $(LIB)
	@mkdir -p $(dir $@)
	@echo "  LD    $@"
	$(Q)$(CC) $(CFLAGS) -Itests/unit -o $@ $< $(LIB) $(LDLIBS)

$(O)/fuzz/%_replay: tests/fuzz/%.c tests/fuzz/replay_main.c $(LIB)
	@mkdir -p $(dir $@)
	@echo "  LD    $@"
	$(Q)$(CC) $(CFLAGS) -o $@ $< tests/fuzz/replay_main.c $(LIB) $(LDLIBS)

$(O)/bench/%: bench/%.c $(LIB)
	@mkdir -p $(dir $@)
	@echo "  LD    $@"
	$(Q)$(CC) $(CFLAGS) -Ibench -o $@ $< $(LIB) $(LDLIBS)

unit: data $(UNIT_BIN) $(FUZZ_REPLAY) $(BENCH_BIN) $(O)/tally

asan:
	@$(MAKE) --no-print-directory BUILD=asan unit

# ThreadSanitizer over the log's tests: its queue shards, writer, syncer and completer hand work
# over partly without locks (seglog.c, seglog_writer.c). Built straight from the log's sources.
TSAN_TESTS := test_seglog test_seglog_queue test_seglog_direct test_seglog_faults
TSAN_SRC := $(wildcard src/log/seglog*.c) src/log/batch.c src/log/segindex.c src/log/segment.c \
            src/core/diag.c src/core/error.c src/core/fsio.c src/core/fsio_fault.c src/core/sched.c
tsan: $(TSAN_TESTS:%=build/tsan/tests/%)

build/tsan/tests/%: tests/unit/%.c $(wildcard tests/unit/*.h src/log/*.h src/core/*.h) $(TSAN_SRC)
	@mkdir -p $(dir $@)
	@echo "  LD    $@ (tsan)"
	$(Q)$(CC) -std=c11 -D_GNU_SOURCE -pthread $(WARN) -O1 -g -fsanitize=thread -Iinclude -Isrc \
	    -Itests/unit $(PKG_CFLAGS) -o $@ $< $(TSAN_SRC) $(LDLIBS)

run: deps tally
	./tally

test: deps
	@$(MAKE) --no-print-directory test-only

test-only: tally unit asan tsan compat
	@sh tests/run.sh

# The peers' official client libraries (tests/compat/package.json, pinned, integrity-checked by
# the lockfile) for the compatibility tests; reinstalled only when the lockfile changes.
compat: tests/compat/node_modules/.installed
tests/compat/node_modules/.installed: tests/compat/package-lock.json tests/compat/package.json
	@cd tests/compat && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	@touch $@

crash: tally
	@python3 tests/integration/test_crash.py --cycles 200

# Zero-downtime restarts, long version: 100 SIGUSR2 upgrades and 100 socket-activated restarts
# under load (make test runs 10 of each).
upgrade: tally
	@python3 tests/integration/test_upgrade.py --cycles 100

# The JetStream cluster under faults, long version (make test runs a short one): three
# nats-server processes, two ingest and two processing nodes on loopback (issue 10).
cluster-test: tally
	@python3 tests/integration/test_cluster.py --long

# libFuzzer builds (clang). FUZZ_SECONDS per target; the corpus grows in tests/fuzz/corpus/NAME.
FUZZ_SECONDS ?= 60
fuzz: data
	@sh scripts/fuzz.sh $(FUZZ_SECONDS)

bench: tally
	@$(MAKE) --no-print-directory $(BENCH_BIN)
	@sh bench/run.sh

format:
	clang-format -i $$(find src include tests bench -name '*.[ch]')

# The dashboard's and the tracker's files are .incbin'd by src/app/assets.S: rebuild on change.
$(O)/src/app/assets.o: $(wildcard src/app/dashboard/* src/app/tracker/*) | data

# Light and dark screenshots of the dashboard (headless Chromium) into docs/screenshots/.
.PHONY: screenshots
screenshots: tally compat
	@python3 tests/integration/test_dashboard.py --screenshots docs/screenshots

clean:
	rm -rf build tally

-include $(shell find build -name '*.d' 2>/dev/null)
