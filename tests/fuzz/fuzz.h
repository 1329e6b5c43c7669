// tests/fuzz/fuzz.h: fuzz targets, one per parser. fuzz_NAME(data, n) feeds the bytes
// through the entry point a user's file goes through (written to a scratch file when
// that entry point takes a path) and returns 0; errors are expected, crashes, leaks and
// undefined behaviour are not. Built with -DFUZZ_LIBFUZZER a target file is also a
// libFuzzer target; without it, tests/fuzz/replay.c runs saved inputs through it.
#ifndef BT_FUZZ_H
#define BT_FUZZ_H
#include "../../bt.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

const char *fuzz_dir(void); // a private scratch directory, made on first use, removed at exit
// Writes data to fuzz_dir()/rel (its directory made as needed) and returns the path (static per rel).
const char *fuzz_write(const char *rel, const uint8_t *data, size_t n);
// A broken invariant: prints what and aborts, so the fuzzer saves the input as a crash.
void fuzz_invariant(int ok, const char *what);

#ifdef FUZZ_LIBFUZZER
#define FUZZ_TARGET(name) \
    int fuzz_##name(const uint8_t *data, size_t n); \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) { return fuzz_##name(data, n); } \
    int fuzz_##name(const uint8_t *data, size_t n)
#else
#define FUZZ_TARGET(name) int fuzz_##name(const uint8_t *data, size_t n)
#endif

#endif
