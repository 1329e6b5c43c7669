// tests/fuzz/replay.c: saved inputs (tests/fuzz/crashes/<target>/*) through their fuzz
// target with the normal build, so make test keeps every crash the fuzzers found fixed.
// usage: fuzz_replay TARGET FILE...          each file's bytes through fuzz_TARGET
//        fuzz_replay --targets               the target names, one a line
//        fuzz_replay --seed-safetensors PATH a valid model.safetensors for that target's config
//        fuzz_replay --shrink-tokenizer IN OUT MAX_ID  a small tokenizer.json seed cut from a real one
#include "fuzz.h"

#include <stdio.h>

int fuzz_json(const uint8_t *data, size_t n);
int fuzz_ini(const uint8_t *data, size_t n);
int fuzz_model_config(const uint8_t *data, size_t n);
int fuzz_safetensors(const uint8_t *data, size_t n);
int fuzz_tokenizer(const uint8_t *data, size_t n);
int fuzz_generations(const uint8_t *data, size_t n);
int fuzz_problems(const uint8_t *data, size_t n);
int fuzz_csv(const uint8_t *data, size_t n);
int fuzz_layers(const uint8_t *data, size_t n);
int fuzz_safetensors_seed(const char *path);
int fuzz_shrink_tokenizer(const char *in, const char *out, int max_id);

static const struct {
    const char *name;
    int (*fn)(const uint8_t *, size_t);
} targets[] = {
    {"json", fuzz_json}, {"ini", fuzz_ini}, {"model_config", fuzz_model_config}, {"safetensors", fuzz_safetensors},
    {"tokenizer", fuzz_tokenizer}, {"generations", fuzz_generations}, {"problems", fuzz_problems}, {"csv", fuzz_csv},
    {"layers", fuzz_layers},
};
#define N_TARGETS (int)(sizeof targets / sizeof targets[0])

int main(int argc, char **argv) {
    bt_quiet = 1;
    set_threads(1);
    if (argc == 2 && strcmp(argv[1], "--targets") == 0) {
        for (int i = 0; i < N_TARGETS; i++) printf("%s\n", targets[i].name);
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "--seed-safetensors") == 0) return fuzz_safetensors_seed(argv[2]) ? 1 : 0;
    if (argc == 5 && strcmp(argv[1], "--shrink-tokenizer") == 0)
        return fuzz_shrink_tokenizer(argv[2], argv[3], atoi(argv[4])) ? 1 : 0;
    int t = 0;
    while (argc >= 2 && t < N_TARGETS && strcmp(targets[t].name, argv[1]) != 0) t++;
    if (argc < 3 || t == N_TARGETS) {
        fprintf(stderr, "usage: fuzz_replay TARGET FILE... | --targets | --seed-safetensors PATH | --shrink-tokenizer "
                        "IN OUT MAX_ID\n");
        return 2;
    }
    for (int i = 2; i < argc; i++) {
        Buf b = {0};
        Err err = {0};
        if (read_file(argv[i], &b, &err)) {
            fprintf(stderr, "%s\n", err.msg);
            return 2;
        }
        targets[t].fn((const uint8_t *)b.data, b.len);
        buf_free(&b);
    }
    return 0;
}
