// tests/fuzz/fuzz_problems.c: the same bytes as bt's processed problems (problems_load, what
// generate reads) and as GSM8K JSONL (gsm8k_load, what prepare-data reads).
#include "fuzz.h"

static void check(int rc, Problem *p, int n_p, const Err *err, const char *name) {
    if (rc) {
        fuzz_invariant(err->code == EXIT_BAD_INPUT && strstr(err->msg, name) != NULL, "an error names the file");
        return;
    }
    for (int i = 0; i < n_p; i++)
        fuzz_invariant(p[i].id && p[i].question && p[i].gold && p[i].answer, "every field of a problem is set");
    problems_free(p, n_p);
}

FUZZ_TARGET(problems) {
    Problem *p = NULL;
    int n_p = 0;
    Err err = {0};
    int rc = problems_load(fuzz_write("builtin_4.jsonl", data, n), &p, &n_p, &err);
    check(rc, p, n_p, &err, "builtin_4.jsonl");
    rc = gsm8k_load(fuzz_write("test.jsonl", data, n), &p, &n_p, &err);
    check(rc, p, n_p, &err, "test.jsonl");
    return 0;
}
