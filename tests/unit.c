// tests/unit.c: runs every test group; prints one line per test and the totals.
// usage: build/unit [substring]   (only tests whose name contains it)
#include "test.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

extern const TestCase tests_io[];
extern const TestCase tests_config[];
extern const TestCase tests_tokenizer[];
extern const TestCase tests_model[];
extern const TestCase tests_stats[];
extern const TestCase tests_svg[];
extern const TestCase tests_pipeline[];
extern const TestCase tests_organism[];
extern const TestCase tests_generate[];
extern const TestCase tests_grad[];
extern const TestCase tests_attrib[];
extern const TestCase tests_interop[];
extern const TestCase tests_reliability[];
extern const TestCase tests_steering[];
extern const TestCase tests_shard[];

static const TestCase *groups[] = {tests_io,      tests_config,      tests_tokenizer, tests_model,    tests_stats,
                                   tests_svg,     tests_pipeline,    tests_organism,  tests_generate, tests_grad,
                                   tests_interop, tests_reliability, tests_steering,  tests_attrib,
                                   tests_shard};

static int current_failed, current_skipped;
static char skip_reason[512];
static const char *current_name;

void test_fail(const char *file, int line, const char *fmt, ...) {
    if (current_failed < 5) { // the first few failures of a test are enough to read
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "  %s:%d: ", file, line);
        vfprintf(stderr, fmt, ap);
        fprintf(stderr, "\n");
        va_end(ap);
    }
    current_failed++;
}

void test_skip(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(skip_reason, sizeof skip_reason, fmt, ap);
    va_end(ap);
    current_skipped = 1;
}

const char *shared_path(const char *rel) {
    static char paths[8][1024];
    static int next;
    const char *root = getenv("BT_SHARED") ? getenv("BT_SHARED") : "../shared";
    char *p = paths[next++ % 8];
    snprintf(p, 1024, "%s/%s", root, rel);
    return access(p, R_OK) == 0 ? p : NULL;
}

const char *test_tmpdir(void) {
    static char dir[1024];
    static int counter;
    snprintf(dir, sizeof dir, "build/tmp/unit_%ld_%d", (long)getpid(), counter++);
    char cmd[2200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", dir, dir);
    if (system(cmd) != 0) fprintf(stderr, "cannot create %s\n", dir);
    return dir;
}

const char *const kernel_models[N_KERNEL_MODELS][2] = {
    {"tiny", "bf16"}, {"tiny", "f16"}, {"tiny", "f32"}, {"tiny-qwen3", "bf16"}};

const char *test_bench_model(const char *shape, const char *dtype) {
    static char dir[1024];
    snprintf(dir, sizeof dir, "%s/%s_%s", test_tmpdir(), shape, dtype);
    char *argv[] = {"make-bench-model", dir, "--shape", (char *)shape, "--dtype", (char *)dtype, "--seed", "7", NULL};
    int rc = cmd_make_bench_model(8, argv);
    CHECKF(rc == 0, "make-bench-model --shape %s --dtype %s failed", shape, dtype);
    return rc == 0 ? dir : NULL;
}

const char *test_organism_dir(void) {
    static char dir[1024];
    if (!dir[0]) {
        Err err = {0};
        snprintf(dir, sizeof dir, "%s/organism", test_tmpdir());
        CHECKF(organism_write(dir, &err) == 0, "%s", err.msg);
    }
    return dir;
}

int main(int argc, char **argv) {
    const char *filter = argc > 1 ? argv[1] : NULL;
    bt_quiet = 1;
    set_threads(0);
    int passed = 0, failed = 0, skipped = 0;
    for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++) {
        for (const TestCase *t = groups[g]; t->name; t++) {
            if (filter && !strstr(t->name, filter)) continue;
            current_failed = current_skipped = 0;
            current_name = t->name;
            t->fn();
            if (current_failed) {
                printf("FAIL %s\n", t->name);
                failed++;
            } else if (current_skipped) {
                printf("skip %s: %s\n", t->name, skip_reason);
                skipped++;
            } else {
                printf("ok   %s\n", t->name);
                passed++;
            }
            fflush(stdout);
        }
    }
    printf("unit: %d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}
