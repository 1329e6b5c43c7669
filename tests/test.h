// tests/test.h: a small unit-test harness. A test is a function; it fails when
// any CHECK in it fails, and SKIP ends it as skipped with a reason.
#ifndef BT_TEST_H
#define BT_TEST_H
#include "../bt.h"

#include <math.h>
#include <string.h>

typedef struct {
    const char *name;
    void (*fn)(void);
} TestCase;

void test_fail(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void test_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
// Path of a file under ../shared (or $BT_SHARED), or NULL when it is absent.
const char *shared_path(const char *rel);
// Fresh empty scratch directory for this test (under build/tmp), returned path is static per call.
const char *test_tmpdir(void);
// make-bench-model's shape (tiny: hidden 96, intermediate 2100, head_dim 24, vocab 1001, GQA, sizes
// off the SIMD widths; tiny-qwen3: q/k norms, head_dim 136) in dtype (bf16, f16, f32), seed 7, in a
// fresh scratch directory; NULL on failure.
const char *test_bench_model(const char *shape, const char *dtype);
// The bench models the kernel-agreement tests of the forward and the gradient pass run on: tiny
// in every dtype, and tiny-qwen3, whose heads reach the kernels' whole blocks of dimensions.
#define N_KERNEL_MODELS 4
extern const char *const kernel_models[N_KERNEL_MODELS][2]; // {shape, dtype}
// The planted organism, written once per process into a scratch directory: read it, do not change it.
const char *test_organism_dir(void);

#define CHECK(cond) do { if (!(cond)) test_fail(__FILE__, __LINE__, "%s", #cond); } while (0)
#define CHECKF(cond, ...) do { if (!(cond)) test_fail(__FILE__, __LINE__, __VA_ARGS__); } while (0)
#define CHECK_NEAR(a, b, tol) do { double a_ = (a), b_ = (b); \
    if (!(fabs(a_ - b_) <= (tol))) test_fail(__FILE__, __LINE__, "%s = %.9g, %s = %.9g, tolerance %g", #a, a_, #b, b_, (double)(tol)); } while (0)
#define SKIP(...) do { test_skip(__VA_ARGS__); return; } while (0)

#endif
