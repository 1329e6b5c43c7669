// tests/test_reliability.c: the parser findings of the reliability review, one test
// each (every one failed before its fix), and the checked CSV cell readers.
#include "test.h"

#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static int write_text(const char *path, const char *text) {
    Err err = {0};
    return write_file_atomic(path, text, strlen(text), &err);
}

// A shape whose product wraps 64 bits, e.g. [2^40, 2^40] = 2^80 = 0 mod 2^64, with
// empty data_offsets: the bound must hold before each multiply, or the tensor reads
// as empty and a checkpoint carrying it loads.
static void t_safetensors_shape_bound_before_multiply(void) {
    const char *dir = test_tmpdir();
    Err err = {0};
    CHECK(organism_write(dir, &err) == 0);
    char path[1200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    Buf file = {0};
    CHECK(read_file(path, &file, &err) == 0 && file.len > 8);
    Model m;
    CHECKF(model_load(&m, dir, &err) == 0, "%s", err.msg);
    model_free(&m);
    unsigned long long header_bytes = 0;
    for (int i = 7; i >= 0; i--) header_bytes = header_bytes << 8 | (unsigned char)file.data[i];
    const char *shapes[] = {"[1099511627776, 1099511627776]", "[16777216, 1099511627776]",
                            "[1024, 1024, 1024, 1024, 1024, 1024, 16]"};
    for (int k = 0; k < 3; k++) {
        Buf header = {0}, out = {0};
        buf_printf(&header, "{\"zz_wrap\": {\"dtype\": \"F32\", \"shape\": %s, \"data_offsets\": [0, 0]}, ", shapes[k]);
        buf_append(&header, file.data + 9, (size_t)header_bytes - 1); // the original header after its '{'
        while ((8 + header.len) % 8) buf_putc(&header, ' ');            // keep the data section aligned
        unsigned char len8[8];
        for (int i = 0; i < 8; i++) len8[i] = (unsigned char)(header.len >> (8 * i));
        buf_append(&out, len8, 8);
        buf_append(&out, header.data, header.len);
        buf_append(&out, file.data + 8 + header_bytes, file.len - 8 - (size_t)header_bytes);
        CHECK(write_file_atomic(path, out.data, out.len, &err) == 0);
        err.msg[0] = 0;
        int rc = model_load(&m, dir, &err);
        if (rc == 0) model_free(&m);
        CHECKF(rc == -1 && strstr(err.msg, "tensor 'zz_wrap': shape is too large") && err.code == EXIT_BAD_INPUT,
               "shape %s: rc %d, %s", shapes[k], rc, err.msg);
        buf_free(&header);
        buf_free(&out);
    }
    buf_free(&file);
}

// JSON numbers of any length keep their value (they were cut at 127 characters).
static void t_json_long_numbers_keep_their_value(void) {
    Buf text = {0};
    buf_puts(&text, "[1");
    for (int i = 0; i < 199; i++) buf_putc(&text, '0');
    buf_puts(&text, ", 0.");
    for (int i = 0; i < 150; i++) buf_putc(&text, '0');
    buf_puts(&text, "1, -7");
    for (int i = 0; i < 140; i++) buf_putc(&text, '0');
    buf_puts(&text, "e-140]");
    Json j;
    Err err = {0};
    CHECK(json_parse(&j, text.data, text.len, "long.json", &err) == 0);
    double v[3] = {0};
    JSON_FOR_ARRAY(&j, 0, i, t) CHECK(json_number(&j, t, &v[i]) == 0);
    CHECKF(v[0] == 1e199, "%g", v[0]);
    CHECKF(v[1] == 1e-151, "%g", v[1]);
    CHECKF(v[2] == -7, "%g", v[2]);
    long long n;
    CHECK(json_int(&j, 3, &n) == 0 && n == -7);
    json_free(&j);
    buf_free(&text);
}

// A quoted CSV field that never closes is an error at the line it opens on; it used
// to swallow the rest of the file into one cell.
static void t_csv_unterminated_quote_is_an_error(void) {
    const char *dir = test_tmpdir();
    char path[1200];
    snprintf(path, sizeof path, "%s/t.csv", dir);
    CHECK(write_text(path, "a,b\n1,\"x\n2,3\n4,5\n") == 0);
    Csv t;
    Err err = {0};
    CHECKF(csv_read(path, &t, &err) == -1, "read %d rows", t.n_rows);
    CHECKF(strstr(err.msg, "t.csv:2: quoted field is not closed") && err.code == EXIT_BAD_INPUT, "%s", err.msg);
    CHECK(write_text(path, "a,b\n1,\"x\n2\"\n4,\"5\"\"\"\n") == 0); // closed quotes, one spanning a line
    CHECKF(csv_read(path, &t, &err) == 0, "%s", err.msg);
    CHECK(t.n_rows == 2 && strcmp(csv_cell(&t, 0, 1), "x\n2") == 0 && strcmp(csv_cell(&t, 1, 1), "5\"") == 0);
    CHECK(t.row_line[1] == 2 && t.row_line[2] == 4);
    csv_free(&t);
}

// Cells are read as checked numbers naming file, line and column (atoi read "1x" as 1).
static void t_csv_checked_cells(void) {
    const char *dir = test_tmpdir();
    char path[1200];
    snprintf(path, sizeof path, "%s/cells.csv", dir);
    CHECK(write_text(path, "name,n,x\n\"two\nlines\",7,0.25\nb,1x,nan\nc, 3,1e999\nd,-1,\n") == 0);
    Csv t;
    Err err = {0};
    CHECKF(csv_read(path, &t, &err) == 0, "%s", err.msg);
    long long n;
    double x;
    CHECK(csv_int(&t, 0, 1, 0, 100, &n, &err) == 0 && n == 7);
    CHECK(csv_double(&t, 0, 2, &x, &err) == 0 && x == 0.25);
    CHECK(csv_int(&t, 1, 1, 0, 100, &n, &err) == -1);
    CHECKF(strstr(err.msg, "cells.csv:4: column 'n': '1x' is not an integer in [0, 100]") && err.code == EXIT_BAD_INPUT,
           "%s", err.msg);
    CHECK(csv_double(&t, 1, 2, &x, &err) == -1 && strstr(err.msg, "cells.csv:4: column 'x'"));
    CHECK(csv_int(&t, 2, 1, 0, 100, &n, &err) == -1 && strstr(err.msg, "cells.csv:5:")); // leading space
    CHECK(csv_double(&t, 2, 2, &x, &err) == -1);                                          // overflows to inf
    CHECK(csv_int(&t, 3, 1, 0, 100, &n, &err) == -1 && strstr(err.msg, "'-1' is not an integer in [0, 100]"));
    CHECK(csv_int(&t, 3, 1, -5, 100, &n, &err) == 0 && n == -1);
    CHECK(csv_double(&t, 3, 2, &x, &err) == -1); // empty
    csv_free(&t);
}

// A generation record without "correct" is an error (it read as false), and sample
// and prompt_tokens must fit an int (they were narrowed unchecked).
static void t_generation_record_fields_checked(void) {
    const char *dir = test_tmpdir();
    char path[1200];
    snprintf(path, sizeof path, "%s/baseline.jsonl", dir);
    const char *head = "{\"problem_id\": \"p\", \"variant\": \"v\", \"condition\": \"baseline\", \"prompt\": \"x\", "
                       "\"completion_ids\": [1, 2], \"finish_reason\": \"eos\"";
    struct { const char *rest, *bad; } cases[] = {
        {", \"sample\": 0, \"prompt_tokens\": 3}", "correct"},
        {", \"sample\": 0, \"prompt_tokens\": 3, \"correct\": 0}", "correct"},
        {", \"sample\": 4294967296, \"prompt_tokens\": 3, \"correct\": true}", "sample"},
        {", \"sample\": 0, \"prompt_tokens\": 4294967299, \"correct\": true}", "prompt_tokens"},
        {", \"sample\": 2147483648, \"prompt_tokens\": 3, \"correct\": true}", "sample"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        Buf text = {0};
        buf_printf(&text, "%s, \"sample\": 0, \"prompt_tokens\": 3, \"correct\": false}\n%s%s\n", head, head,
                   cases[k].rest);
        Err err = {0};
        CHECK(write_file_atomic(path, text.data, text.len, &err) == 0);
        GenRecord *r = NULL;
        int n = 0;
        int rc = generations_read(path, &r, &n, &err);
        char want[128];
        snprintf(want, sizeof want, "baseline.jsonl:2: generation record: \"%s\"", cases[k].bad);
        CHECKF(rc == -1 && strstr(err.msg, want) && err.code == EXIT_BAD_INPUT, "case %zu: rc %d, %s", k, rc, err.msg);
        if (rc == 0) generations_free(r, n);
        buf_free(&text);
    }
    Buf text = {0};
    buf_printf(&text, "%s, \"sample\": 2147483647, \"prompt_tokens\": 3, \"correct\": true}\n", head);
    Err err = {0};
    CHECK(write_file_atomic(path, text.data, text.len, &err) == 0);
    GenRecord *r = NULL;
    int n = 0;
    CHECKF(generations_read(path, &r, &n, &err) == 0, "%s", err.msg);
    CHECK(n == 1 && r[0].sample == 2147483647 && r[0].correct == 1 && r[0].n_completion == 2);
    generations_free(r, n);
    buf_free(&text);
}

// The token-string pool is bounded before an offset is narrowed to 32 bits (the check
// ran after the narrowing). The limit is lowered so a small tokenizer reaches it.
static void t_tokenizer_pool_bounded_before_narrowing(void) {
    const char *dir = test_tmpdir();
    Err err = {0};
    CHECK(organism_write(dir, &err) == 0);
    char path[1200];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    Tokenizer *t = NULL;
    size_t saved = tokenizer_pool_limit;
    tokenizer_pool_limit = 200;
    int rc = tokenizer_load(&t, path, &err);
    tokenizer_pool_limit = saved;
    if (rc == 0) tokenizer_free(t);
    CHECKF(rc == -1 && strstr(err.msg, "tokenizer.json:") && strstr(err.msg, "token strings larger than 200 bytes"),
           "rc %d, %s", rc, err.msg);
    CHECKF(tokenizer_load(&t, path, &err) == 0, "%s", err.msg);
    tokenizer_free(t);
}

// A writer killed before its rename leaves path.tmp.PID; the next write of path removes
// it when that process is gone, and leaves a live process's temp file alone.
static void t_stale_temp_files_removed(void) {
    const char *dir = test_tmpdir();
    pid_t child = fork();
    if (child == 0) _exit(0);
    CHECK(child > 0 && waitpid(child, NULL, 0) == child); // now a pid with no process
    char path[1200], dead[1300], live[1300], other[1300];
    snprintf(path, sizeof path, "%s/out.csv", dir);
    snprintf(dead, sizeof dead, "%s.tmp.%ld", path, (long)child);
    snprintf(live, sizeof live, "%s.tmp.%ld", path, (long)getppid());
    snprintf(other, sizeof other, "%s/other.csv.tmp.%ld", dir, (long)child);
    const char *partial = "half a fi";
    CHECK(write_text(dead, partial) == 0 && write_text(live, partial) == 0 && write_text(other, partial) == 0);
    Err err = {0};
    CHECK(write_file_atomic(path, "a,b\n", 4, &err) == 0);
    CHECK(!path_exists(dead));
    CHECK(path_exists(live) && path_exists(other)); // a live writer's, and another file's
}

const TestCase tests_reliability[] = {
    {"reliability: safetensors shape bounded before it multiplies", t_safetensors_shape_bound_before_multiply},
    {"reliability: json numbers longer than 127 characters", t_json_long_numbers_keep_their_value},
    {"reliability: csv unterminated quote is an error", t_csv_unterminated_quote_is_an_error},
    {"reliability: csv cells read as checked numbers", t_csv_checked_cells},
    {"reliability: generation record fields checked", t_generation_record_fields_checked},
    {"reliability: tokenizer pool bounded before narrowing", t_tokenizer_pool_bounded_before_narrowing},
    {"reliability: stale temp files of killed writers removed", t_stale_temp_files_removed},
    {0, 0},
};
