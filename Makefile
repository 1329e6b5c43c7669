# bt: plain cc, libc + libm, OpenMP when the compiler has it.
CC ?= cc
CFLAGS ?= -O2 -g
WARN = -Wall -Wextra
BUILD ?= build
# -fopenmp only when this compiler can link it.
OPENMP := $(shell printf 'int main(void){return 0;}' | $(CC) -fopenmp -x c - -o /dev/null 2>/dev/null && echo -fopenmp)
ALL_CFLAGS = $(CFLAGS) $(WARN) $(OPENMP) $(EXTRA_CFLAGS)
LDLIBS = -lm

SRC = bt.c io.c tokenizer.c model.c generate.c analysis.c capture.c report.c organism.c bench.c
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

$(BUILD):
	mkdir -p $(BUILD)

# make test: unit tests and command-line tests; ends with "N passed, N failed".
test: bt $(BUILD)/unit
	BT=$(BT) UNIT=$(UNIT) sh tests/run.sh

# The same suite under AddressSanitizer and UndefinedBehaviorSanitizer.
test-san:
	$(MAKE) BUILD=build/san CFLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" build/san/bt build/san/unit
	BT=build/san/bt UNIT=build/san/unit BT_SANITIZED=1 sh tests/run.sh

clean:
	rm -rf build bt

.PHONY: all test test-san clean
