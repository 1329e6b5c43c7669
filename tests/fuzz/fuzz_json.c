// tests/fuzz/fuzz_json.c: json_parse on any bytes, then every token through the accessors.
#include "fuzz.h"

FUZZ_TARGET(json) {
    Json j;
    Err err = {0};
    if (json_parse(&j, (const char *)data, n, "fuzz.json", &err)) {
        fuzz_invariant(err.code == EXIT_BAD_INPUT && strncmp(err.msg, "fuzz.json", 9) == 0,
                       "a parse error names the file");
        return 0;
    }
    fuzz_invariant(j.n_tok > 0 && j.tok[0].next == j.n_tok, "the root spans every token");
    fuzz_invariant(json_line(&j, 0) >= 1 && json_line(&j, j.n_tok - 1) >= json_line(&j, 0),
                   "lines count from 1, in order");
    Buf b = {0};
    for (int t = 0; t < j.n_tok; t++) {
        const JsonTok *k = &j.tok[t];
        fuzz_invariant(k->start >= 0 && k->start <= k->end && (size_t)k->end <= n, "a token is a span of the input");
        fuzz_invariant(k->next > t && k->next <= j.n_tok, "next skips forward");
        double d;
        long long ll;
        int flag;
        b.len = 0;
        switch (k->type) {
        case JSON_NUMBER:
            fuzz_invariant(json_number(&j, t, &d) == 0, "a number token reads as a number");
            json_int(&j, t, &ll);
            break;
        case JSON_BOOL: fuzz_invariant(json_bool(&j, t, &flag) == 0, "a bool token reads as a bool"); break;
        case JSON_STRING: {
            fuzz_invariant(json_string(&j, t, &b) == 0, "a string token unescapes");
            char *s = json_strdup(&j, t);
            fuzz_invariant(s && strlen(s) <= b.len && memcmp(s, b.data, strlen(s)) == 0,
                           "json_strdup agrees with json_string");
            fuzz_invariant(memchr(b.data, 0, b.len) != NULL || json_eq(&j, t, s), "a string equals its unescaped text");
            free(s);
            break;
        }
        case JSON_ARRAY: {
            int count = 0, last = t + 1;
            JSON_FOR_ARRAY(&j, t, i, e) { count++; last = j.tok[e].next; }
            fuzz_invariant(count == k->size && last == k->next,
                           "array iteration visits size elements and ends at next");
            break;
        }
        case JSON_OBJECT: {
            int count = 0;
            JSON_FOR_OBJECT(&j, t, i, key) {
                fuzz_invariant(j.tok[key].type == JSON_STRING, "object keys are strings");
                if (count++ == 0) { // the first key finds its own value
                    Buf name = {0};
                    json_string(&j, key, &name);
                    if (!memchr(name.data, 0, name.len))
                        fuzz_invariant(json_key(&j, t, name.data) == key + 1, "json_key finds the first key");
                    buf_free(&name);
                }
            }
            fuzz_invariant(count == k->size, "object iteration visits size pairs");
            break;
        }
        case JSON_NULL: break;
        }
        if (k->type != JSON_NUMBER) fuzz_invariant(json_number(&j, t, &d) == -1, "only numbers read as numbers");
        if (k->type != JSON_STRING) fuzz_invariant(json_string(&j, t, &b) == -1, "only strings unescape");
    }
    buf_free(&b);
    json_free(&j);
    return 0;
}
