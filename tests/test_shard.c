// tests/test_shard.c: shards' arithmetic and names (--shard K/N and auto, the share of each
// shard, the file names), and a shard set's checks on a run folder built here.
#include "test.h"

#include <math.h>
#include <stdlib.h>

static void t_shard_parse(void) {
    Shard s;
    Err err = {0};
    CHECK(shard_parse(NULL, &s, &err) == 0 && s.n == 0);
    CHECK(shard_parse("3/8", &s, &err) == 0 && s.k == 3 && s.n == 8);
    CHECK(shard_parse("1/1", &s, &err) == 0 && s.k == 1 && s.n == 1);
    CHECK(shard_parse("999/999", &s, &err) == 0 && s.k == 999);
    const char *bad[] = {"0/4",    "5/4", "x/y",  "3",    "/4",   "3/",    "-1/4",
                         "1/1000", "1/0", " 1/4", "1/4 ", "1//4", "01/4x", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err = (Err){0};
        CHECKF(shard_parse(bad[i], &s, &err) == -1 && err.code == EXIT_BAD_INPUT && strstr(err.msg, "--shard"),
               "'%s' accepted", bad[i]);
    }
    // auto: the array's own numbering, or BT_SHARDS with task ids 1..N (one task resubmitted alone).
    setenv("SLURM_ARRAY_TASK_ID", "12", 1);
    setenv("SLURM_ARRAY_TASK_MIN", "10", 1);
    setenv("SLURM_ARRAY_TASK_COUNT", "4", 1);
    unsetenv("BT_SHARDS");
    CHECK(shard_parse("auto", &s, &err) == 0 && s.k == 3 && s.n == 4);
    setenv("SLURM_ARRAY_TASK_ID", "3", 1);
    setenv("SLURM_ARRAY_TASK_MIN", "3", 1);
    setenv("SLURM_ARRAY_TASK_COUNT", "1", 1);
    setenv("BT_SHARDS", "8", 1);
    CHECK(shard_parse("auto", &s, &err) == 0 && s.k == 3 && s.n == 8);
    setenv("SLURM_ARRAY_TASK_ID", "9", 1);
    CHECK(shard_parse("auto", &s, &err) == -1 && strstr(err.msg, "not one of shards 1..8"));
    unsetenv("BT_SHARDS");
    unsetenv("SLURM_ARRAY_TASK_ID");
    CHECK(shard_parse("auto", &s, &err) == -1 && strstr(err.msg, "SLURM_ARRAY_TASK_ID"));
    unsetenv("SLURM_ARRAY_TASK_MIN");
    unsetenv("SLURM_ARRAY_TASK_COUNT");
}

// Every unit in exactly one shard, shards contiguous and in order, sizes within one of each other.
static void t_shard_range(void) {
    for (int units = 0; units <= 40; units++)
        for (int n = 1; n <= 12; n++) {
            int next = 0, min = units, max = 0;
            for (int k = 1; k <= n; k++) {
                Shard s = {k, n};
                int first, end;
                shard_range(&s, units, NULL, &first, &end);
                CHECKF(first == next && end >= first, "units %d, shard %d/%d: [%d, %d) after %d", units, k, n, first,
                       end, next);
                next = end;
                if (end - first < min) min = end - first;
                if (end - first > max) max = end - first;
            }
            CHECKF(next == units && max - min <= 1, "units %d in %d shards: cover %d, sizes %d..%d", units, n, next,
                   min, max);
        }
    Shard whole = {0, 0};
    int first, end;
    shard_range(&whole, 7, NULL, &first, &end);
    CHECK(first == 0 && end == 7);
}

// Shares of equal cost: every unit in exactly one shard, in order, each share's cost within the
// largest unit's of the mean; one costly unit gets a shard to itself; all-zero costs split by count.
static void t_shard_range_costs(void) {
    Rng rng;
    rng_seed(&rng, 5);
    double costs[60];
    for (int trial = 0; trial < 200; trial++) {
        int units = (int)rng_below(&rng, 60), n = 1 + (int)rng_below(&rng, 16), next = 0;
        double total = 0, largest = 0, worst = 0;
        for (int q = 0; q < units; q++) {
            costs[q] = trial % 4 == 0 ? (double)rng_below(&rng, 3) : (double)rng_below(&rng, 1000) * rng_below(&rng, 4);
            total += costs[q];
            if (costs[q] > largest) largest = costs[q];
        }
        for (int k = 1; k <= n; k++) {
            Shard s = {k, n};
            int first, end;
            double share = 0;
            shard_range(&s, units, costs, &first, &end);
            CHECKF(first == next && end >= first, "trial %d, shard %d/%d: [%d, %d) after %d", trial, k, n, first, end,
                   next);
            for (int q = first; q < end; q++) share += costs[q];
            if (fabs(share - total / n) > worst) worst = fabs(share - total / n);
            next = end;
        }
        CHECKF(next == units, "trial %d: %d shards cover %d of %d units", trial, n, next, units);
        CHECKF(total == 0 || worst <= largest, "trial %d: a share is %g off the mean %g (largest unit %g)", trial,
               worst, total / n, largest);
    }
    double one_big[] = {1, 1, 100, 1, 1, 1, 1};
    Shard s = {2, 3};
    int first, end;
    shard_range(&s, 7, one_big, &first, &end);
    CHECKF(first == 2 && end == 3, "the costly unit alone in the middle shard: [%d, %d)", first, end);
    double zero[5] = {0};
    shard_range(&s, 5, zero, &first, &end);
    CHECK(first == 1 && end == 3);
}

static void t_shard_names(void) {
    char out[256];
    Shard s = {3, 8};
    shard_file("runs/x/generations/v/baseline.jsonl", &s, out, sizeof out);
    CHECK(strcmp(out, "runs/x/generations/v/baseline.shard-003-of-008.jsonl") == 0);
    shard_file("runs/x.y/analysis/logit_lens.csv", &s, out, sizeof out);
    CHECK(strcmp(out, "runs/x.y/analysis/logit_lens.shard-003-of-008.csv") == 0);
    CHECK(shard_name_stem("baseline.shard-003-of-008.jsonl", "jsonl") == strlen("baseline"));
    CHECK(shard_name_stem("baseline.shard-003-of-008.manifest.json", "manifest.json") == strlen("baseline"));
    CHECK(shard_name_stem("baseline.shard-003-of-008.timing.jsonl", "jsonl") == 0);
    CHECK(shard_name_stem("baseline.shard-03-of-008.jsonl", "jsonl") == 0);
    CHECK(shard_name_stem("baseline.shard-000-of-008.jsonl", "jsonl") == 0);
    CHECK(shard_name_stem(".shard-003-of-008.jsonl", "jsonl") == 0);
    CHECK(shard_name_stem("baseline.jsonl", "jsonl") == 0);
    char id[64];
    run_id_of_generation_path("runs/20250101_000000/generations/v/baseline.jsonl", id, sizeof id);
    CHECK(strcmp(id, "20250101_000000") == 0);
    run_id_of_generation_path("/a/generations/runs/r1/generations/v/c.jsonl", id, sizeof id);
    CHECK(strcmp(id, "r1") == 0);
}

// A set of shard files in a run folder: complete, then with a hole, mixed N, unfinished, another run's.
static void t_shard_set(void) {
    const char *dir = test_tmpdir();
    Run run;
    snprintf(run.id, sizeof run.id, "r1");
    snprintf(run.dir, sizeof run.dir, "%s/r1", dir);
    char path[1200], file[1300];
    snprintf(path, sizeof path, "%s/analysis/x.csv", run.dir);
    Err err = {0};
    char **files;
    int n;
    CHECK(shard_set(run.id, path, 0, &files, &n, NULL, &err) == 0 && n == 0 && !exists_or_sharded(path));
    ShardInfo info = {"stage", "what", 10, 20, 42, 0, NULL};
    for (int k = 1; k <= 3; k++) {
        Shard s = {k, 3};
        CHECK(shard_begin(&run, path, &s, &info, &err) == 0);
        CHECK(!shard_done(&run, path, &s, &info));
        shard_file(path, &s, file, sizeof file);
        CHECK(write_file_atomic(file, "x\n", 2, &err) == 0);
        if (k != 2) CHECK(shard_finish(&run, path, &s, &info, &err) == 0);
        if (k != 2) CHECK(shard_done(&run, path, &s, &info));
    }
    CHECK(exists_or_sharded(path));
    err = (Err){0};
    CHECK(shard_set(run.id, path, 0, &files, &n, NULL, &err) == -1 &&
          strstr(err.msg, "shard-002-of-003.manifest.json: unfinished"));
    Shard two = {2, 3};
    CHECK(shard_finish(&run, path, &two, &info, &err) == 0);
    ShardInfo got;
    CHECK(shard_set(run.id, path, 42, &files, &n, &got, &err) == 3 && n == 3);
    if (n == 3) {
        CHECK(strstr(files[0], "x.shard-001-of-003.csv") && strstr(files[2], "x.shard-003-of-003.csv"));
        CHECK(strcmp(got.stage, "stage") == 0 && got.units == 10 && got.items == 20 && got.digest == 42);
        shard_set_free(files, n);
        shard_info_free(&got);
    }
    err = (Err){0};
    CHECK(shard_set(run.id, path, 43, &files, &n, NULL, &err) == -1 && strstr(err.msg, "other inputs"));
    err = (Err){0};
    CHECK(shard_set("r2", path, 0, &files, &n, NULL, &err) == -1 &&
          strstr(err.msg, "a shard of run r1, not of run r2"));
    // Another N for the same output: refused when writing, and a mixed set refused when reading.
    Shard other = {1, 4};
    err = (Err){0};
    CHECK(shard_begin(&run, path, &other, &info, &err) == -1 && err.code == EXIT_BAD_INPUT && strstr(err.msg, "N = 3"));
    shard_file(path, &other, file, sizeof file);
    CHECK(write_file_atomic(file, "x\n", 2, &err) == 0);
    err = (Err){0};
    CHECK(shard_set(run.id, path, 0, &files, &n, NULL, &err) == -1 && strstr(err.msg, "different N"));
    remove(file);
    shard_file(path, &two, file, sizeof file);
    remove(file);
    err = (Err){0};
    CHECK(shard_set(run.id, path, 0, &files, &n, NULL, &err) == -1 && strstr(err.msg, "1 of 3 missing") &&
          strstr(err.msg, "x.shard-002-of-003.csv"));
}

const TestCase tests_shard[] = {
    {"shard: --shard K/N and auto", t_shard_parse},
    {"shard: every unit in one shard, contiguous, balanced", t_shard_range},
    {"shard: shares of equal cost", t_shard_range_costs},
    {"shard: file names", t_shard_names},
    {"shard: a set is whole, finished, of one N and of this run", t_shard_set},
    {NULL, NULL},
};
