// tests/test_interop.c: what bt capture reads from a teacher-forced pass (attention and MLP
// outputs at the reads), the [capture] and [report] keys, and the duration format of the ETA.
#include "test.h"

#include <stdlib.h>

// Each block adds its attention output, then its MLP output, to the residual stream: the
// outputs force_group reads at the reads must sum to the residuals it reads, bit for bit,
// and reading them must not change the residuals.
static void t_block_outputs_at_reads(void) {
    Model m;
    Err err = {0};
    set_threads(1);
    if (model_load(&m, test_organism_dir(), &err)) {
        CHECKF(0, "%s", err.msg);
        return;
    }
    int L = m.cfg.n_layers, D = m.cfg.hidden_size, tokens[40], reads[3] = {5, 21, 39};
    for (int i = 0; i < 40; i++) tokens[i] = (i * 37 + 11) % m.cfg.vocab_size;
    ForcedSeq seq = {.tokens = tokens, .n_tokens = 40, .read_pos = reads, .n_read = 3};
    Forcer f;
    CHECK(forcer_init(&f, &m, 1, 40, 16, &err) == 0); // 16 rows a call: reads fall in three calls
    float *resid = xmalloc((size_t)3 * (L + 1) * D * sizeof(float)),
          *plain = xmalloc((size_t)3 * (L + 1) * D * sizeof(float));
    float *attn = xmalloc((size_t)3 * L * D * sizeof(float)), *mlp = xmalloc((size_t)3 * L * D * sizeof(float));
    PassOut both = {.resid = resid, .attn = attn, .mlp = mlp}, only = {.resid = plain};
    CHECKF(force_group(&f, &seq, 1, &both, &err) == 0, "%s", err.msg);
    CHECKF(force_group(&f, &seq, 1, &only, &err) == 0, "%s", err.msg);
    CHECK(memcmp(resid, plain, (size_t)3 * (L + 1) * D * sizeof(float)) == 0);
    int mismatches = 0, nonzero = 0;
    for (int r = 0; r < 3; r++)
        for (int l = 0; l < L; l++)
            for (int d = 0; d < D; d++) {
                float x = resid[((size_t)r * (L + 1) + l) * D + d], a = attn[((size_t)r * L + l) * D + d];
                float y = mlp[((size_t)r * L + l) * D + d], next = resid[((size_t)r * (L + 1) + l + 1) * D + d];
                float sum = x + a;
                sum += y;
                mismatches += sum != next;
                nonzero += a != 0 && y != 0;
            }
    CHECKF(mismatches == 0, "%d of %d residual entries are not the sum of the block outputs", mismatches, 3 * L * D);
    CHECKF(nonzero > 3 * L * D / 4, "only %d entries with both outputs nonzero", nonzero);
    // MLP outputs alone (no residuals), and the combinations force_group refuses.
    float *mlp_only = xmalloc((size_t)3 * L * D * sizeof(float));
    PassOut just_mlp = {.mlp = mlp_only};
    CHECKF(force_group(&f, &seq, 1, &just_mlp, &err) == 0, "%s", err.msg);
    CHECK(memcmp(mlp_only, mlp, (size_t)3 * L * D * sizeof(float)) == 0);
    float *all = xmalloc((size_t)40 * (L + 1) * D * sizeof(float));
    PassOut bad = {.resid_all = all, .attn = attn};
    CHECK(force_group(&f, &seq, 1, &bad, &err) == -1 && strstr(err.msg, "component outputs at reads"));
    free(all), free(mlp_only), free(resid), free(plain), free(attn), free(mlp);
    forcer_free(&f);
    model_free(&m);
}

// The default config with text appended (sections may open again), written to path.
static void config_with(const char *path, const char *text) {
    Buf b = {0};
    Err err = {0};
    CHECKF(read_file(BT_DEFAULT_CONFIG, &b, &err) == 0, "%s", err.msg);
    buf_puts(&b, text);
    CHECK(write_file_atomic(path, b.data, b.len, &err) == 0);
    buf_free(&b);
}

static void t_capture_and_report_keys(void) {
    Config c;
    Err err = {0};
    char path[1200];
    snprintf(path, sizeof path, "%s/c.ini", test_tmpdir());
    config_with(path, "[capture]\nmax_memory_mb = 0.5\nmax_file_mb = 2\nwindow = 3\ndtype = bf16\n"
                      "[report]\nevents_path = out/e.html\nmax_events_shown = 7\n");
    CHECKF(config_load(&c, path, &err) == 0, "%s", err.msg);
    if (err.msg[0]) return;
    CHECK(c.capture_max_memory_mb == 0.5 && c.capture_max_file_mb == 2 && c.capture_window == 3);
    CHECK(c.capture_dtype == CAPTURE_BF16 && strcmp(c.events_path, "out/e.html") == 0 && c.max_events_shown == 7);
    Buf b = {0};
    config_write_resolved(&c, &b);
    CHECK(strstr(b.data, "[capture]\nmax_memory_mb = 0.5\nmax_file_mb = 2\nwindow = 3\ndtype = bf16\n"));
    buf_free(&b);
    config_free(&c);
    static const char *const bad[][2] = {
        {"[capture]\nmax_memory_mb = 0\n", "[capture] max_memory_mb = 0 is out of range"},
        {"[capture]\ndtype = f16\n", "[capture] dtype: 'f16' is not one of f32|bf16"},
        {"[capture]\nwindow = -1\n", "[capture] window = -1 is out of range"},
        {"[report]\nmax_events_shown = x\n", "[report] max_events_shown: 'x' is not an integer"},
    };
    Buf base = {0};
    read_file(BT_DEFAULT_CONFIG, &base, &err);
    int line = 2;
    for (size_t i = 0; i < base.len; i++) line += base.data[i] == '\n';
    buf_free(&base);
    for (int i = 0; i < 4; i++) {
        char want[200];
        snprintf(want, sizeof want, "c.ini:%d: %s", line, bad[i][1]);
        err = (Err){0};
        config_with(path, bad[i][0]);
        CHECKF(config_load(&c, path, &err) == -1 && err.code == EXIT_BAD_INPUT && strstr(err.msg, want), "%s", err.msg);
    }
}

static void t_duration_format(void) {
    static const struct { double s; const char *want;
    } cases[] = {
        {0, "0s"}, {59.4, "59s"}, {125, "2m05s"},  {3600 * 2 + 60 * 5 + 9, "2h05m"},
        {-1, "?"}, {NAN, "?"},    {INFINITY, "?"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[32];
        format_duration(out, sizeof out, cases[i].s);
        CHECKF(strcmp(out, cases[i].want) == 0, "%g s -> '%s', want '%s'", cases[i].s, out, cases[i].want);
    }
}

const TestCase tests_interop[] = {
    {"interop: attention and MLP outputs at the reads sum to the residuals", t_block_outputs_at_reads},
    {"interop: [capture] and [report] keys, their errors", t_capture_and_report_keys},
    {"interop: durations of the ETA", t_duration_format},
    {0, 0},
};
