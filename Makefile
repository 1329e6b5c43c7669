# bt: plain cc, libc + libm, OpenMP when the compiler has it.
CC ?= cc
CFLAGS ?= -O2 -g
WARN = -Wall -Wextra
BUILD ?= build
# -fopenmp only when this compiler can link it.
OPENMP := $(shell printf 'int main(void){return 0;}' | $(CC) -fopenmp -x c - -o /dev/null 2>/dev/null && echo -fopenmp)
ALL_CFLAGS = $(CFLAGS) $(WARN) $(OPENMP) $(EXTRA_CFLAGS)
LDLIBS = -lm

SRC = bt.c io.c tokenizer.c model.c generate.c analysis.c capture.c report.c organism.c bench.c cluster.c
TEST_SRC = $(wildcard tests/test_*.c) tests/unit.c
OBJ = $(SRC:%.c=$(BUILD)/%.o)
# The unit tests link every module but bt.c's main.
LIB_OBJ = $(BUILD)/bt_lib.o $(filter-out $(BUILD)/bt.o,$(OBJ))

BT ?= ./bt
UNIT ?= $(BUILD)/unit

all: bt

bt: $(BUILD)/bt
	cp $(BUILD)/bt bt

$(BUILD)/bt: $(OBJ)
	$(CC) $(ALL_CFLAGS) -o $@ $(OBJ) $(LDLIBS)

$(BUILD)/%.o: %.c bt.h | $(BUILD)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(BUILD)/bt_lib.o: bt.c bt.h | $(BUILD)
	$(CC) $(ALL_CFLAGS) -DBT_NO_MAIN -c -o $@ bt.c

$(BUILD)/unit: $(LIB_OBJ) $(TEST_SRC) tests/test.h bt.h
	$(CC) $(ALL_CFLAGS) -o $@ $(TEST_SRC) $(LIB_OBJ) $(LDLIBS)

# The fuzz targets (tests/fuzz/fuzz_NAME.c) linked with a driver that replays saved inputs.
FUZZ_TARGET_SRC = $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_NAMES = $(patsubst tests/fuzz/fuzz_%.c,%,$(FUZZ_TARGET_SRC))
$(BUILD)/fuzz_replay: $(LIB_OBJ) $(FUZZ_TARGET_SRC) tests/fuzz/replay.c tests/fuzz/common.c tests/fuzz/seeds.c tests/fuzz/fuzz.h bt.h
	$(CC) $(ALL_CFLAGS) -o $@ tests/fuzz/replay.c tests/fuzz/common.c tests/fuzz/seeds.c $(FUZZ_TARGET_SRC) $(LIB_OBJ) $(LDLIBS)

# libFuzzer targets, one per parser (built by make fuzz with clang into build/fuzz).
$(BUILD)/fuzz-%: tests/fuzz/fuzz_%.c tests/fuzz/common.c tests/fuzz/fuzz.h $(LIB_OBJ)
	$(CC) $(ALL_CFLAGS) $(FUZZ_LINK) -DFUZZ_LIBFUZZER -o $@ $< tests/fuzz/common.c $(LIB_OBJ) $(LDLIBS)

$(BUILD):
	mkdir -p $(BUILD)

# make test: unit tests and command-line tests; ends with "N passed, N failed".
test: bt $(BUILD)/unit $(BUILD)/fuzz_replay
	BT=$(BT) UNIT=$(UNIT) FUZZ_REPLAY=$(BUILD)/fuzz_replay sh tests/run.sh

# The same suite under AddressSanitizer and UndefinedBehaviorSanitizer.
test-san:
	$(MAKE) BUILD=build/san CFLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" build/san/bt build/san/unit build/san/fuzz_replay
	BT=build/san/bt UNIT=build/san/unit FUZZ_REPLAY=build/san/fuzz_replay BT_SANITIZED=1 sh tests/run.sh

# The unit tests and a small bt run under valgrind memcheck: no errors, no definite leaks (minutes).
test-valgrind: bt $(BUILD)/unit
	BT=$(BT) UNIT=$(UNIT) sh tests/valgrind.sh

# make fuzz: every fuzz target for FUZZ_SECONDS each (clang + libFuzzer; skipped with a
# message without them); crashes land in tests/fuzz/crashes/<target>/. FUZZ_TARGETS picks some.
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 60
FUZZ_SAN = -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
fuzz: bt $(BUILD)/fuzz_replay
	FUZZ_CC=$(FUZZ_CC) FUZZ_SECONDS=$(FUZZ_SECONDS) BT=$(BT) FUZZ_REPLAY=$(BUILD)/fuzz_replay sh tests/fuzz/run.sh
# The targets feed parsers, not kernels: -DBT_PORTABLE leaves the x86 kernels out, which clang
# with ASan and UBSan together takes over 15 minutes and 6 GB to compile (model.c: 4 s without).
fuzz-targets:
	$(MAKE) BUILD=build/fuzz CC=$(FUZZ_CC) OPENMP= CFLAGS="-O1 -g $(FUZZ_SAN) -fsanitize=fuzzer-no-link -DBT_PORTABLE" \
		FUZZ_LINK=-fsanitize=fuzzer $(addprefix build/fuzz/fuzz-,$(FUZZ_NAMES))

clean:
	rm -rf build bt

.PHONY: all test test-san test-valgrind fuzz fuzz-targets clean
