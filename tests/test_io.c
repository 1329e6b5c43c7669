// tests/test_io.c: JSON reading and writing, CSV, whole-file writes.
#include "test.h"

#include <stdlib.h>

static int parse(Json *j, const char *s, Err *err) { return json_parse(j, s, strlen(s), "t.json", err); }

static void t_json_nested(void) {
    Json j;
    Err err = {0};
    const char *s = "{\"a\": [1, 2.5, -3e2, {\"b\": null}], \"c\": \"x\\n\\u00e9\\ud83d\\ude00\", \"d\": true}";
    CHECK(parse(&j, s, &err) == 0);
    CHECK(j.tok[0].type == JSON_OBJECT && j.tok[0].size == 3);
    int a = json_key(&j, 0, "a");
    CHECK(a > 0 && j.tok[a].type == JSON_ARRAY && j.tok[a].size == 4);
    double vals[3];
    JSON_FOR_ARRAY(&j, a, i, t) if (i < 3) CHECK(json_number(&j, t, &vals[i]) == 0);
    CHECK(vals[0] == 1 && vals[1] == 2.5 && vals[2] == -300);
    char *c = json_strdup(&j, json_key(&j, 0, "c"));
    CHECK(c && strcmp(c, "x\n\xC3\xA9\xF0\x9F\x98\x80") == 0);
    free(c);
    int d;
    CHECK(json_bool(&j, json_key(&j, 0, "d"), &d) == 0 && d == 1);
    CHECK(json_key(&j, 0, "missing") == -1);
    CHECK(json_key(&j, a, "a") == -1); // not an object
    long long n;
    CHECK(json_int(&j, a + 1, &n) == 0 && n == 1);
    CHECK(json_int(&j, a + 2, &n) == -1); // 2.5 is not integral
    json_free(&j);
}

static void t_json_iterate_object_skips_subtrees(void) {
    Json j;
    Err err = {0};
    CHECK(parse(&j, "{\"x\": {\"y\": [1, [2, 3]]}, \"z\": 7}", &err) == 0);
    int keys = 0, z = -1;
    JSON_FOR_OBJECT(&j, 0, i, k) {
        keys++;
        if (json_eq(&j, k, "z")) z = k + 1;
    }
    CHECK(keys == 2);
    double v = 0;
    CHECK(z > 0 && json_number(&j, z, &v) == 0 && v == 7);
    json_free(&j);
}

static void t_json_errors_name_line(void) {
    const char *bad[] = {"{\"a\": 1,\n\"b\" 2}", "[1, 2", "{\"a\": tru}", "\"abc", "[1] x", "{\"a\":\n\n01}",
                         "[\"\\q\"]", "{1: 2}", "[-]", "[\"a\tb\"]", "", "[1,]"};
    int lines[] = {2, 1, 1, 1, 1, 3, 1, 1, 1, 1, 1, 1};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        Json j;
        Err err = {0};
        CHECKF(parse(&j, bad[i], &err) == -1, "accepted: %s", bad[i]);
        char want[64];
        snprintf(want, sizeof want, "t.json:%d:", lines[i]);
        CHECKF(strstr(err.msg, want) == err.msg && err.code == EXIT_BAD_INPUT, "case %zu: %s", i, err.msg);
    }
}

static void t_json_deep_nesting_is_an_error(void) {
    char s[2001];
    memset(s, '[', 2000);
    s[2000] = 0;
    Json j;
    Err err = {0};
    CHECK(parse(&j, s, &err) == -1 && strstr(err.msg, "nested too deeply"));
}

static void t_json_write_roundtrip(void) {
    const char raw[] = "q\"\\\n\t\x01 caf\xC3\xA9 \xFF end";
    Buf b = {0};
    buf_json_string(&b, raw, sizeof raw - 1);
    CHECK(strcmp(b.data, "\"q\\\"\\\\\\n\\t\\u0001 caf\xC3\xA9 \xEF\xBF\xBD end\"") == 0);
    Json j;
    Err err = {0};
    CHECK(parse(&j, b.data, &err) == 0);
    char *back = json_strdup(&j, 0);
    CHECK(back && strcmp(back, "q\"\\\n\t\x01 caf\xC3\xA9 \xEF\xBF\xBD end") == 0);
    free(back);
    json_free(&j);
    buf_free(&b);
    double xs[] = {0.1, 1.0 / 3, 1e-300, -2.5, 123456789.0};
    for (int i = 0; i < 5; i++) {
        buf_json_double(&b, xs[i]);
        CHECK(strtod(b.data, NULL) == xs[i]);
        b.len = 0;
    }
    buf_json_double(&b, 0.1);
    CHECK(strcmp(b.data, "0.1") == 0);
    b.len = 0;
    buf_json_double(&b, NAN);
    CHECK(strcmp(b.data, "null") == 0);
    buf_free(&b);
}

static void t_csv_escaping(void) {
    Buf b = {0};
    buf_csv_field(&b, "plain", 5);
    buf_putc(&b, ',');
    buf_csv_field(&b, "a,b", 3);
    buf_putc(&b, ',');
    buf_csv_field(&b, "say \"hi\"\n", 9);
    CHECK(strcmp(b.data, "plain,\"a,b\",\"say \"\"hi\"\"\n\"") == 0);
    buf_free(&b);
}

static void t_atomic_write_replaces_whole(void) {
    const char *dir = test_tmpdir();
    char path[1200];
    snprintf(path, sizeof path, "%s/sub/dir/out.txt", dir);
    Err err = {0};
    CHECK(write_file_atomic(path, "first", 5, &err) == 0);
    CHECK(write_file_atomic(path, "second!", 7, &err) == 0);
    Buf b = {0};
    CHECK(read_file(path, &b, &err) == 0 && strcmp(b.data, "second!") == 0);
    buf_free(&b);
    CHECK(append_durable(path, "+1", 2, &err) == 0);
    CHECK(read_file(path, &b, &err) == 0 && strcmp(b.data, "second!+1") == 0);
    buf_free(&b);
    snprintf(path, sizeof path, "%s/missing.txt", dir);
    CHECK(read_file(path, &b, &err) == -1 && strstr(err.msg, "missing.txt") && err.code == EXIT_BAD_INPUT);
}

static void t_rng_is_deterministic(void) {
    Rng a, b;
    rng_seed(&a, 42);
    rng_seed(&b, 42);
    int same = 1;
    double sum = 0;
    for (int i = 0; i < 10000; i++) {
        uint64_t x = rng_next(&a);
        same &= x == rng_next(&b);
        sum += (x >> 11) * 0x1.0p-53;
    }
    CHECK(same);
    CHECK_NEAR(sum / 10000, 0.5, 0.02); // a uniform stream, not a constant
    CHECK(seed_mix(1, 2) != seed_mix(2, 1));
}

const TestCase tests_io[] = {
    {"io: json nested values and unescaping", t_json_nested},
    {"io: json object iteration skips subtrees", t_json_iterate_object_skips_subtrees},
    {"io: json errors name file and line", t_json_errors_name_line},
    {"io: json deep nesting is an error", t_json_deep_nesting_is_an_error},
    {"io: json writing escapes and round-trips", t_json_write_roundtrip},
    {"io: csv escaping", t_csv_escaping},
    {"io: atomic write and durable append", t_atomic_write_replaces_whole},
    {"io: rng deterministic", t_rng_is_deterministic},
    {0, 0},
};
