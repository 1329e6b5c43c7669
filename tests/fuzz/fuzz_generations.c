// tests/fuzz/fuzz_generations.c: a generation JSONL file through generations_read.
#include "fuzz.h"

FUZZ_TARGET(generations) {
    const char *path = fuzz_write("generations/v/baseline.jsonl", data, n);
    GenRecord *r = NULL;
    int n_rec = 0;
    Err err = {0};
    if (generations_read(path, &r, &n_rec, &err)) {
        fuzz_invariant(err.code == EXIT_BAD_INPUT && strstr(err.msg, "baseline.jsonl:") != NULL,
                       "an error names file and line");
        return 0;
    }
    for (int i = 0; i < n_rec; i++) {
        fuzz_invariant(r[i].sample >= 0 && r[i].prompt_tokens > 0 && r[i].n_completion >= 0, "counts are in range");
        for (int k = 0; k < r[i].n_completion; k++) fuzz_invariant(r[i].completion_ids[k] >= 0, "ids are not negative");
        fuzz_invariant(r[i].correct == 0 || r[i].correct == 1, "correct is a bool");
    }
    generations_free(r, n_rec);
    return 0;
}
