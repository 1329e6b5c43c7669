// tests/test_steering.c: steering's statistics against published values, the steering hook of
// model_forward against its definition on the organism, the [steering] keys and the directions file.
#include "test.h"

#include <stdlib.h>
#include <sys/wait.h>

// Hanley & McNeil (1982), Radiology 143:29, Table 1: CT ratings (1 = definitely normal ..
// 5 = definitely abnormal) of 58 normal and 51 abnormal patients; the published area is 0.893
// (exactly 2642 / 2958 with ties counting half).
static void t_auroc_hanley_mcneil(void) {
    const int normal[5] = {33, 6, 6, 11, 2}, abnormal[5] = {3, 2, 2, 11, 33};
    double score[109];
    unsigned char is_pos[109];
    int n = 0;
    for (int r = 0; r < 5; r++) {
        for (int i = 0; i < normal[r]; i++) score[n] = r + 1, is_pos[n++] = 0;
        for (int i = 0; i < abnormal[r]; i++) score[n] = r + 1, is_pos[n++] = 1;
    }
    CHECK(n == 109);
    double a = auroc(score, is_pos, NULL, n);
    CHECK_NEAR(a, 0.893, 5e-4);
    CHECK_NEAR(a, 2642.0 / 2958.0, 1e-12);
    // Swapping the labels mirrors it; a constant score is a coin toss.
    for (int i = 0; i < n; i++) is_pos[i] = !is_pos[i];
    CHECK_NEAR(auroc(score, is_pos, NULL, n), 1 - 2642.0 / 2958.0, 1e-12);
    for (int i = 0; i < n; i++) score[i] = 7;
    CHECK_NEAR(auroc(score, is_pos, NULL, n), 0.5, 1e-12);
    // One set empty: undefined.
    for (int i = 0; i < n; i++) is_pos[i] = 1;
    CHECK(isnan(auroc(score, is_pos, NULL, n)));
}

// Worked by hand: positives {0.9, 0.8, 0.4}, negatives {0.5, 0.3, 0.4}: 3 + 3 + (1 + 0.5) of 9 pairs.
// An integer weight counts an observation that many times.
static void t_auroc_hand_and_weights(void) {
    const double score[6] = {0.9, 0.5, 0.8, 0.3, 0.4, 0.4};
    const unsigned char is_pos[6] = {1, 0, 1, 0, 1, 0};
    CHECK_NEAR(auroc(score, is_pos, NULL, 6), 7.5 / 9, 1e-15);
    const double weight[6] = {2, 1, 1, 1, 1, 3};
    // Copies: positives {0.9, 0.9, 0.8, 0.4}, negatives {0.5, 0.3, 0.4, 0.4, 0.4}:
    // 0.9: 5 each (10), 0.8: 5, 0.4: 1 below + 3 ties / 2 = 2.5; 17.5 of 20 pairs.
    CHECK_NEAR(auroc(score, is_pos, weight, 6), 17.5 / 20, 1e-15);
    const double dup_score[9] = {0.9, 0.9, 0.5, 0.8, 0.3, 0.4, 0.4, 0.4, 0.4};
    const unsigned char dup_pos[9] = {1, 1, 0, 1, 0, 1, 0, 0, 0};
    CHECK_NEAR(auroc(dup_score, dup_pos, NULL, 9), 17.5 / 20, 1e-15);
}

// The cluster bootstrap: the same seed gives the same interval, it holds the estimate, and a
// perfect separation stays perfect in every resample.
static void t_auroc_cluster_bootstrap(void) {
    enum { N = 400, CLUSTERS = 40 };
    double score[N];
    unsigned char is_pos[N];
    int cluster[N];
    Rng rng;
    rng_seed(&rng, 99);
    for (int i = 0; i < N; i++) {
        cluster[i] = i % CLUSTERS;
        is_pos[i] = (i / CLUSTERS) % 2;
        score[i] = rng_normal(&rng) + (is_pos[i] ? 1.0 : 0.0) + 0.5 * (cluster[i] % 3); // a cluster effect
    }
    Interval a = auroc_cluster_bootstrap95(score, is_pos, cluster, N, CLUSTERS, 500, 7);
    Interval b = auroc_cluster_bootstrap95(score, is_pos, cluster, N, CLUSTERS, 500, 7);
    CHECK(a.est == b.est && a.lo == b.lo && a.hi == b.hi);
    CHECK_NEAR(a.est, auroc(score, is_pos, NULL, N), 1e-15);
    CHECK(a.lo < a.est && a.est < a.hi && a.lo > 0.5 && a.hi < 1);
    for (int i = 0; i < N; i++) score[i] = is_pos[i] ? 2 + i : -i;
    Interval p = auroc_cluster_bootstrap95(score, is_pos, cluster, N, CLUSTERS, 200, 7);
    CHECK(p.est == 1 && p.lo == 1 && p.hi == 1);
    Interval none = auroc_cluster_bootstrap95(score, is_pos, cluster, 0, CLUSTERS, 200, 7);
    CHECK(isnan(none.est) && isnan(none.lo));
}

// Agresti, Categorical Data Analysis (2nd ed., 2002), section 3.4: infant malformation by the
// mother's alcohol consumption (0, <1, 1-2, 3-5, >=6 drinks a day; malformed of total). With scores
// 0, 0.5, 1.5, 4, 7 the linear-trend statistic is M^2 = 6.57 (P = 0.01); with scores 1..5, 1.83.
// Cochran-Armitage's z^2 is N r^2 against M^2 = (N - 1) r^2: equal to 3 digits at N = 32574.
static void t_cochran_armitage_agresti(void) {
    const long long k[5] = {48, 38, 5, 1, 1}, n[5] = {17114, 14502, 793, 127, 38};
    const double scores[5] = {0, 0.5, 1.5, 4, 7}, equal[5] = {1, 2, 3, 4, 5};
    Trend t = cochran_armitage(scores, k, n, 5);
    CHECK_NEAR(t.z * t.z, 6.57, 5e-3);
    CHECK_NEAR(t.p, 0.0104, 5e-4);
    CHECK(t.slope > 0 && t.lo < t.slope && t.slope < t.hi);
    Trend e = cochran_armitage(equal, k, n, 5);
    CHECK_NEAR(e.z * e.z, 1.83, 5e-3);
    // The slope is the least-squares slope of the rate on x weighted by n: exact on a line.
    const double x[3] = {-1, 0, 1};
    const long long k_line[3] = {10, 30, 50}, n_line[3] = {100, 100, 100};
    Trend line = cochran_armitage(x, k_line, n_line, 3);
    CHECK_NEAR(line.slope, 0.2, 1e-12);
    CHECK(line.p < 1e-6);
    // Undefined cases: x does not vary; nothing (or everything) succeeds; every rate 0 or 1.
    const double same[3] = {2, 2, 2};
    CHECK(isnan(cochran_armitage(same, k_line, n_line, 3).slope));
    const long long zero[3] = {0, 0, 0};
    Trend z = cochran_armitage(x, zero, n_line, 3);
    CHECK(z.slope == 0 && isnan(z.z) && isnan(z.p) && isnan(z.lo));
    const long long step[3] = {0, 0, 100};
    Trend s = cochran_armitage(x, step, n_line, 3);
    CHECK(s.slope > 0 && s.p < 1e-6 && isnan(s.lo) && isnan(s.hi));
}

// --- the steering hook -------------------------------------------------------------------------

typedef struct {
    Model m;
    Tokenizer *tok;
    int L, D;
} SteerOrg;

static int steer_org_open(SteerOrg *o) {
    memset(o, 0, sizeof *o);
    Err err = {0};
    char path[1200];
    if (model_load(&o->m, test_organism_dir(), &err)) return test_fail(__FILE__, __LINE__, "%s", err.msg), -1;
    snprintf(path, sizeof path, "%s/tokenizer.json", test_organism_dir());
    if (tokenizer_load(&o->tok, path, &err)) return test_fail(__FILE__, __LINE__, "%s", err.msg), model_free(&o->m), -1;
    o->L = o->m.cfg.n_layers, o->D = o->m.cfg.hidden_size;
    return 0;
}

static void steer_org_close(SteerOrg *o) {
    tokenizer_free(o->tok);
    model_free(&o->m);
}

// One pass over ids (one slot) capturing every residual (n, L + 1, hidden) and the logits (n, vocab).
static void steer_pass(const SteerOrg *o, const TokenList *ids, const AblationMask *mask, float *resid, float *logits) {
    Err err = {0};
    int n = ids->n, *tok = xmalloc(n * sizeof *tok), *slot = xcalloc(n, sizeof *slot), *pos = xmalloc(n * sizeof *pos);
    const AblationMask **masks = xmalloc(n * sizeof *masks);
    for (int i = 0; i < n; i++) tok[i] = ids->v[i].id, pos[i] = i, masks[i] = mask;
    RunState *s = runstate_new(&o->m, 1, n, n, &err);
    Forward f = {.n = n, .token = tok, .slot = slot, .pos = pos, .mask = mask ? masks : NULL, .capture_row = pos,
                 .resid = resid, .logits = logits, .logits_row = pos};
    CHECKF(s && model_forward(&o->m, s, &f, &err) == 0, "%s", err.msg);
    runstate_free(s);
    free(tok), free(slot), free(pos), free(masks);
}

// steer_add joins exactly its residual: below it every residual is the clean one bit for bit, at
// it the clean one plus the vector (the same float additions); project_out leaves no component
// along its direction in any residual, and the model's RMSNorm reads the steered residual.
static void t_steer_hook_definition(void) {
    SteerOrg o;
    if (steer_org_open(&o)) return;
    const char *text =
        "<|user|>\nMia has 12 apples.\n<|assistant|>\n<think>\nOkay, let me check that. We start with twelve.";
    TokenList ids = {0};
    Err err = {0};
    CHECKF(tokenizer_encode(o.tok, text, strlen(text), &ids, &err) == 0, "%s", err.msg);
    int n = ids.n, L = o.L, D = o.D, V = o.m.cfg.vocab_size;
    size_t per = (size_t)(L + 1) * D;
    float *clean = xmalloc(n * per * sizeof *clean), *steered = xmalloc(n * per * sizeof *steered);
    float *logits = xmalloc((size_t)n * V * sizeof *logits), *logits_clean = xmalloc((size_t)n * V * sizeof *logits);
    float *vec = xmalloc(D * sizeof *vec);
    Rng rng;
    rng_seed(&rng, 5);
    for (int d = 0; d < D; d++) vec[d] = (float)(0.1 * rng_normal(&rng));
    steer_pass(&o, &ids, NULL, clean, logits_clean);
    for (int layer = 0; layer <= L; layer++) {
        AblationMask mask = {.steer_layer = layer, .steer_add = vec};
        steer_pass(&o, &ids, &mask, steered, logits);
        int below_same = 1, at_added = 1, above_moved = 0;
        for (int i = 0; i < n; i++)
            for (int l = 0; l <= L; l++)
                for (int d = 0; d < D; d++) {
                    float c = clean[i * per + (size_t)l * D + d], s = steered[i * per + (size_t)l * D + d];
                    if (l < layer) below_same &= s == c;
                    if (l == layer) at_added &= s == c + vec[d];
                    if (l > layer) above_moved |= s != c;
                }
        CHECKF(below_same && at_added, "layer %d: below unchanged %d, at it clean + vector %d", layer, below_same,
               at_added);
        CHECKF(layer == L || above_moved, "layer %d: the blocks above did not see the vector", layer);
        int logits_moved = 0;
        for (size_t k = 0; k < (size_t)n * V; k++) logits_moved |= logits[k] != logits_clean[k];
        CHECKF(logits_moved, "layer %d: the logits did not change", layer);
    }
    // project_out: a unit direction's component is gone from every residual, at every position.
    double norm = 0;
    for (int d = 0; d < D; d++) norm += (double)vec[d] * vec[d];
    for (int d = 0; d < D; d++) vec[d] = (float)(vec[d] / sqrt(norm));
    AblationMask po = {.project_out = vec};
    steer_pass(&o, &ids, &po, steered, logits);
    double worst = 0, typical = 0;
    for (int i = 0; i < n; i++)
        for (int l = 0; l <= L; l++) {
            double dot = 0, sq = 0, dot_clean = 0;
            for (int d = 0; d < D; d++) {
                dot += (double)steered[i * per + (size_t)l * D + d] * vec[d];
                dot_clean += (double)clean[i * per + (size_t)l * D + d] * vec[d];
                sq += (double)steered[i * per + (size_t)l * D + d] * steered[i * per + (size_t)l * D + d];
            }
            if (fabs(dot) / (sqrt(sq) + 1e-30) > worst) worst = fabs(dot) / (sqrt(sq) + 1e-30);
            typical += fabs(dot_clean) / (n * (L + 1));
        }
    CHECKF(worst < 1e-6, "a residual keeps %g of its norm along the projected direction", worst);
    CHECK(typical > 1e-3); // the clean residuals did have a component to remove
    free(clean), free(steered), free(logits), free(logits_clean), free(vec);
    tokens_free(&ids);
    steer_org_close(&o);
}

// A steered row computes the same bits whatever else is in its forward call: two sequences in one
// call, one steered and one clean, against each alone; and with 1 or 2 threads.
static void t_steer_hook_batch_invariant(void) {
    SteerOrg o;
    if (steer_org_open(&o)) return;
    const char *texts[2] = {
        "<|user|>\nTom reads.\n<|assistant|>\n<think>\nWe start with four. Now four plus two is six.",
        "Question: Sara saves.\nAnswer: So the total is nine."};
    TokenList ids[2] = {{0}, {0}};
    Err err = {0};
    for (int k = 0; k < 2; k++)
        CHECKF(tokenizer_encode(o.tok, texts[k], strlen(texts[k]), &ids[k], &err) == 0, "%s", err.msg);
    int D = o.D, V = o.m.cfg.vocab_size, n = ids[0].n + ids[1].n;
    float *vec = xmalloc(D * sizeof *vec), *unit = xmalloc(D * sizeof *unit);
    for (int d = 0; d < D; d++) vec[d] = (float)(0.05 * ((d * 7919) % 13 - 6)), unit[d] = d == 3 ? 1.0f : 0.0f;
    AblationMask masks[2] = {{.steer_layer = 2, .steer_add = vec, .project_out = unit}, {0}};
    float *alone = xmalloc((size_t)n * V * sizeof *alone), *together = xmalloc((size_t)n * V * sizeof *together);
    for (int threads = 1; threads <= 2; threads++) {
        set_threads(threads);
        for (int k = 0, at = 0; k < 2; k++) { // each alone
            steer_pass(&o, &ids[k], k == 0 ? &masks[0] : NULL, NULL, alone + (size_t)at * V);
            at += ids[k].n;
        }
        int *tok = xmalloc(n * sizeof *tok), *slot = xmalloc(n * sizeof *slot), *pos = xmalloc(n * sizeof *pos),
            *row = xmalloc(n * sizeof *row);
        const AblationMask **row_mask = xmalloc(n * sizeof *row_mask);
        int a = 0, b = 0;
        for (int i = 0; i < n; i++) { // interleaved: the two sequences share the call
            int k = (i % 2 == 1 && b < ids[1].n) || a == ids[0].n ? 1 : 0, p = k ? b++ : a++;
            tok[i] = ids[k].v[p].id, slot[i] = k, pos[i] = p, row_mask[i] = k ? NULL : &masks[0];
            row[i] = k ? ids[0].n + p : p;
        }
        RunState *s = runstate_new(&o.m, 2, n, n, &err);
        Forward f = {
            .n = n, .token = tok, .slot = slot, .pos = pos, .mask = row_mask, .logits = together, .logits_row = row};
        CHECKF(s && model_forward(&o.m, s, &f, &err) == 0, "%s", err.msg);
        CHECKF(memcmp(alone, together, (size_t)n * V * sizeof *alone) == 0,
               "%d threads: logits differ in a mixed batch", threads);
        runstate_free(s);
        free(tok), free(slot), free(pos), free(row), free(row_mask);
    }
    set_threads(0);
    // A steer_layer outside [0, L] breaks the contract: refused before anything runs.
    AblationMask bad = {.steer_layer = o.L + 1, .steer_add = vec};
    int tok0 = ids[0].v[0].id, slot0 = 0, pos0 = 0;
    const AblationMask *bad_mask = &bad;
    RunState *s = runstate_new(&o.m, 1, 4, 4, &err);
    Forward f = {.n = 1, .token = &tok0, .slot = &slot0, .pos = &pos0, .mask = &bad_mask};
    CHECK(model_forward(&o.m, s, &f, &err) < 0 && strstr(err.msg, "steer_layer"));
    runstate_free(s);
    free(vec), free(unit), free(alone), free(together);
    tokens_free(&ids[0]), tokens_free(&ids[1]);
    steer_org_close(&o);
}

// --- configuration, conditions, the directions file ----------------------------------------------

static int load_config(const char *text, Config *c, Err *err) {
    char path[1200];
    snprintf(path, sizeof path, "%s/s.ini", test_tmpdir());
    Err werr;
    if (write_file_atomic(path, text, strlen(text), &werr)) return -2;
    return config_load(c, path, err);
}

#define VARIANTS                                                                                                       \
    "[variant.baseline_think_newline]\ntemplate = <think>{question}\n[variant.other]\ntemplate = {question}\n"

static void t_steering_config(void) {
    Config c;
    Err err = {0};
    CHECKF(load_config(VARIANTS "[steering]\nalphas = -2, 0.5,1e-1\nlayer = 3\nnegatives = variant:other\n", &c,
                       &err) == 0,
           "%s", err.msg);
    CHECK(c.n_steer_alphas == 3 && c.steer_alphas[0] == -2 && c.steer_alphas[2] == 0.1 && c.steer_layer == 3);
    SteerCondition sc[7];
    CHECK(steer_conditions(&c, NULL, sc) == 7);
    CHECK(strcmp(sc[0].name, "steer_-2") == 0 && strcmp(sc[1].name, "steer_+0.5") == 0 &&
          strcmp(sc[2].name, "steer_+0.1") == 0);
    CHECK(strcmp(sc[3].name, "steer_random_-2") == 0 && sc[3].kind == STEER_RANDOM &&
          strcmp(sc[6].name, "project_out") == 0);
    CHECK(steer_conditions(&c, "steer_random", sc) == 3 && steer_conditions(&c, "project_out", sc) == 1);
    CHECK(steer_conditions(&c, "baseline", sc) == -1 && steer_conditions(&c, "steer", NULL) >= 0);
    // The resolved config reads back to itself.
    Buf a = {0}, b = {0};
    config_write_resolved(&c, &a);
    CHECK(strstr(a.data, "alphas = -2, 0.5, 0.1\n") && strstr(a.data, "layer = 3\n"));
    Config again;
    CHECKF(load_config(a.data, &again, &err) == 0, "%s", err.msg);
    config_write_resolved(&again, &b);
    CHECK(strcmp(strchr(a.data, '\n'), strchr(b.data, '\n')) == 0);
    config_free(&again);
    config_free(&c);
    buf_free(&a);
    buf_free(&b);
    CHECKF(load_config(VARIANTS "[steering]\nlayer = auto\n", &c, &err) == 0, "%s", err.msg);
    CHECK(c.steer_layer == STEER_LAYER_AUTO && c.steering_enabled == 0 && c.n_steer_alphas == 6);
    config_free(&c);
    // Bad values: exit 2, file:line and the key.
    struct { const char *text, *want;
    } bad[] = {
        {"[steering]\nalphas = -1, abc\n", "s.ini:6: [steering] alphas: 'abc' is not a number"},
        {"[steering]\nalphas = -1, 0\n", "alphas: 0 is 0 or out of range"},
        {"[steering]\nalphas = 1, 1.0\n", "alphas: 1.0 is listed twice"},
        {"[steering]\nalphas = ,\n", "alphas: empty list"},
        {"[steering]\nlayer = -1\n", "s.ini:6: [steering] layer = -1 is out of range"},
        {"[steering]\nlayer = two\n", "[steering] layer: 'two' is not a layer number or auto"},
        {"[steering]\nnegatives = others\n",
         "s.ini:6: [steering] negatives: 'others' is not controls, thinking or variant:NAME"},
        {"[steering]\n\nnegatives = variant:nope\n",
         "s.ini:7: [steering] negatives = variant:nope: there is no [variant.nope] section"},
        {"[steering]\nvariants = baseline_think_newline, nope\n", "s.ini:6: [steering] variants names 'nope'"},
        {"[steering]\npositives = thinking\nnegatives = thinking\n", "contrast a set with itself"},
        {"[steering]\nwindow_len = 0\n", "window_len = 0 is out of range"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[512];
        snprintf(text, sizeof text, VARIANTS "%s", bad[i].text);
        err = (Err){0};
        CHECKF(load_config(text, &c, &err) == -1 && err.code == EXIT_BAD_INPUT && strstr(err.msg, bad[i].want),
               "case %zu: %s", i, err.msg);
    }
}

// safetensors_read_f32 reads back what safetensors_write wrote, F32 and BF16, 1-D and 2-D; a missing
// tensor, a dtype bt cannot read and a truncated file are errors naming the file.
static void t_safetensors_read_f32(void) {
    const char *dir = test_tmpdir();
    char path[1200];
    snprintf(path, sizeof path, "%s/d.safetensors", dir);
    float dirs[3 * 4], norms[3];
    uint16_t half[4] = {0x3F80, 0xBF00, 0x4040, 0x0000}; // bf16 1, -0.5, 3, 0
    for (int i = 0; i < 12; i++) dirs[i] = (float)i / 8 - 0.7f;
    for (int i = 0; i < 3; i++) norms[i] = 1.5f * i;
    const char *names[3] = {"directions", "mean_norm", "half"};
    Tensor t[3] = {{dirs, DT_F32, 3, 4, NULL}, {norms, DT_F32, 1, 3, NULL}, {half, DT_BF16, 1, 4, NULL}};
    Err err = {0};
    CHECKF(safetensors_write(path, names, t, 3, &err) == 0, "%s", err.msg);
    float *out;
    int rows, cols;
    CHECKF(safetensors_read_f32(path, "directions", &out, &rows, &cols, &err) == 0, "%s", err.msg);
    CHECK(rows == 3 && cols == 4 && memcmp(out, dirs, sizeof dirs) == 0);
    free(out);
    CHECK(safetensors_read_f32(path, "mean_norm", &out, &rows, &cols, &err) == 0 && rows == 1 && cols == 3 &&
          out[2] == 3.0f);
    free(out);
    CHECK(safetensors_read_f32(path, "half", &out, &rows, &cols, &err) == 0 && out[0] == 1 && out[1] == -0.5f &&
          out[2] == 3);
    free(out);
    CHECK(safetensors_read_f32(path, "nope", &out, &rows, &cols, &err) == -1 && err.code == EXIT_BAD_INPUT &&
          strstr(err.msg, "d.safetensors: no tensor 'nope'") && out == NULL);
    Buf b = {0};
    CHECK(read_file(path, &b, &err) == 0);
    CHECK(write_file_atomic(path, b.data, b.len - 5, &err) == 0); // truncated data
    CHECK(safetensors_read_f32(path, "directions", &out, &rows, &cols, &err) == -1 && strstr(err.msg, "d.safetensors"));
    buf_free(&b);
}

// The dose-response figure from synthetic counts: two variants' direction (lines with bands), random
// control (dashed) and project_out (rings with whiskers); byte-identical across writes; no data says so;
// python3's XML parser (and headless Chromium, where installed) accept it.
static void t_steering_figure(void) {
    const char *dir = test_tmpdir();
    char path[1200], again[1200], empty[1200];
    snprintf(path, sizeof path, "%s/steer.svg", dir);
    snprintf(again, sizeof again, "%s/steer_again.svg", dir);
    snprintf(empty, sizeof empty, "%s/steer_empty.svg", dir);
    const double alpha[5] = {-2, -1, 0, 1, 2}, zero[1] = {0};
    const long long k_dir[5] = {0, 5, 40, 60, 75}, k_rand[5] = {38, 41, 40, 39, 42}, n[5] = {80, 80, 80, 80, 80};
    const long long k_po[1] = {3}, n_po[1] = {80}, k_other[5] = {0, 0, 0, 20, 55};
    SteerSeries series[5] = {{"think: direction", STEER_DIRECTION, 0, alpha, k_dir, n, 5},
                             {"think: random direction", STEER_RANDOM, 0, alpha, k_rand, n, 5},
                             {"think: project_out (at 0)", STEER_PROJECT_OUT, 0, zero, k_po, n_po, 1},
                             {"no_think & <tag>: direction", STEER_DIRECTION, 1, alpha, k_other, n, 5},
                             {"no_think & <tag>: random direction", STEER_RANDOM, 1, alpha, n, n, 5}};
    Err err = {0};
    CHECKF(fig_rate_by_steering(path, series, 5, "run x; steered after layer 2", &err) == 0, "%s", err.msg);
    CHECKF(fig_rate_by_steering(again, series, 5, "run x; steered after layer 2", &err) == 0, "%s", err.msg);
    SteerSeries none = {"nothing", STEER_DIRECTION, 0, alpha, k_po, n_po, 0};
    CHECKF(fig_rate_by_steering(empty, &none, 0, NULL, &err) == 0, "%s", err.msg);
    Buf a = {0}, b = {0}, e = {0};
    CHECK(read_file(path, &a, &err) == 0 && read_file(again, &b, &err) == 0 && read_file(empty, &e, &err) == 0);
    CHECK(a.len == b.len && memcmp(a.data, b.data, a.len) == 0);
    const char *svg = a.data;
    int lines = 0, dashed = 0, bands = 0, rings = 0;
    for (const char *p = svg; (p = strstr(p, "class=\"line\"")); p++)
        lines++, dashed += strncmp(strstr(p, "stroke-width=\"2\""), "stroke-width=\"2\" stroke-dasharray", 33) == 0;
    for (const char *p = svg; (p = strstr(p, "class=\"band\"")); p++) bands++;
    for (const char *p = svg; (p = strstr(p, "class=\"mark\"")); p++) rings++;
    CHECKF(lines == 4 && dashed == 2 && bands == 4 && rings == 1, "lines %d dashed %d bands %d rings %d", lines, dashed,
           bands, rings);
    CHECK(strstr(svg, "Backtracking rate by steering strength") &&
          strstr(svg, "no_think &amp; &lt;tag&gt;: direction"));
    CHECK(strstr(e.data, "class=\"nodata\"") && !strstr(e.data, "class=\"line\""));
    buf_free(&a), buf_free(&b), buf_free(&e);
    if (system("python3 -c 'import xml.dom.minidom' >/dev/null 2>&1") != 0) SKIP("python3 not found");
    char cmd[4000];
    snprintf(cmd, sizeof cmd, "python3 tests/svg_check.py xml %s %s >/dev/null 2>&1", path, empty);
    CHECK(system(cmd) == 0);
    snprintf(cmd, sizeof cmd, "python3 tests/svg_check.py render %s >/dev/null 2>&1", path);
    int rc = system(cmd);
    rc = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
    if (rc == 77) SKIP("chromium not found: the steering figure parses as XML, rendering not checked");
    CHECKF(rc == 0, "svg_check.py render exited %d", rc);
}

const TestCase tests_steering[] = {
    {"auroc_hanley_mcneil", t_auroc_hanley_mcneil},
    {"auroc_hand_and_weights", t_auroc_hand_and_weights},
    {"auroc_cluster_bootstrap", t_auroc_cluster_bootstrap},
    {"cochran_armitage_agresti", t_cochran_armitage_agresti},
    {"steer_hook_definition", t_steer_hook_definition},
    {"steer_hook_batch_invariant", t_steer_hook_batch_invariant},
    {"steering_config", t_steering_config},
    {"safetensors_read_f32", t_safetensors_read_f32},
    {"steering_figure", t_steering_figure},
    {0, 0},
};
