// tests/fuzz/fuzz_model_config.c: config.json alone through model_load (no weights beside
// it, so a config that parses stops at the missing model.safetensors).
#include "fuzz.h"

FUZZ_TARGET(model_config) {
    const char *path = fuzz_write("model/config.json", data, n);
    char dir[1024];
    snprintf(dir, sizeof dir, "%.*s", (int)(strrchr(path, '/') - path), path);
    Model m;
    Err err = {0};
    int rc = model_load(&m, dir, &err);
    fuzz_invariant(rc == -1 && err.code == EXIT_BAD_INPUT, "without weights the load fails as bad input");
    fuzz_invariant(strstr(err.msg, "config.json") != NULL || strstr(err.msg, "no model.safetensors") != NULL,
                   "the error names config.json, or the missing weights after a config that parses");
    return 0;
}
