// tests/fuzz/fuzz_ini.c: an INI config through config_load, and a loaded one written back resolved.
#include "fuzz.h"

FUZZ_TARGET(ini) {
    const char *path = fuzz_write("config.ini", data, n);
    Config c;
    Err err = {0};
    if (config_load(&c, path, &err)) {
        fuzz_invariant(err.code == EXIT_BAD_INPUT && strstr(err.msg, "config.ini") != NULL, "an error names the file");
        return 0;
    }
    Buf resolved = {0};
    config_write_resolved(&c, &resolved);
    // What bt writes as config_resolved.ini loads again to the same text.
    const char *again = fuzz_write("resolved.ini", (const uint8_t *)resolved.data, resolved.len);
    Config c2;
    fuzz_invariant(config_load(&c2, again, &err) == 0, "config_resolved.ini loads");
    Buf resolved2 = {0};
    config_write_resolved(&c2, &resolved2);
    const char *body = strchr(resolved.data, '\n'),
               *body2 = strchr(resolved2.data, '\n'); // the first line names the file
    fuzz_invariant(body && body2 && strcmp(body, body2) == 0, "config_resolved.ini round-trips");
    buf_free(&resolved);
    buf_free(&resolved2);
    config_free(&c2);
    config_free(&c);
    return 0;
}
