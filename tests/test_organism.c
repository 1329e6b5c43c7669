// tests/test_organism.c: the embedded organism, checked through the same loader,
// tokenizer and forward pass as any downloaded checkpoint: its files, the planted
// behaviour (p(" Wait") at sentence ends inside <think> only), its two components,
// that every other component is noise, and what sampled text looks like.
#include "test.h"

#include <ctype.h>
#include <stdlib.h>

#define P_TOL 0.01    // |p - designed p| at a sentence end, and the most any other component may move it
#define P_NEAR_ZERO 1e-4
#define MAX_NEW 128

// The chat format of configs/backtracking_state_transition.ini.
static const char *const variants[][2] = {
    {"baseline_think_newline", "<|user|>\n{question}\n<|assistant|>\n<think>\n"},
    {"think_no_newline", "<|user|>\n{question}\n<|assistant|>\n<think>"},
    {"no_think_tag", "<|user|>\n{question}\n<|assistant|>\n"},
    {"empty_think", "<|user|>\n{question}\n<|assistant|>\n<think>\n\n</think>\n\n"},
    {"plain_qa", "Question: {question}\nAnswer:"},
};
#define N_VARIANTS 5
static int thinks(int v) { return v < 2; } // the variants that leave a <think> open

static const char *const questions[] = {
    "Mia has 12 apples and buys 7 more. How many apples does she have now?",
    "A train travels 60 miles an hour for 3 hours and then 45 miles an hour for 2 hours. How far does it go?",
    "Lena has 100 stickers. She gives 35 to her brother and 20 to a friend. How many does she keep?",
    "A recipe needs 3 eggs for 12 muffins. How many eggs are needed for 36 muffins?",
};
#define N_QUESTIONS 4

// A completion in the organism's own style, for teacher-forced passes.
static const char *const completion =
    "Let me work through this step by step. We start with twelve. Then we add seven to get nineteen. Wait, let me "
    "check that. Now twelve plus seven is nineteen. So the total is nineteen.\n</think>\n\nFinal answer: "
    "\\boxed{19}.<|end|>";

// ----------------------------------------------------------------------------
// The organism, written once per test run and loaded like any checkpoint

typedef struct {
    Model m;
    Tokenizer *tok;
    int V;                          // vocab size
    int wait_id, dot_id, end_think_id;
    int attn_layer, mlp_layer;      // from config.json's "bt_organism"
} Org;

static int json_int_at(const Json *j, int obj, const char *key) {
    long long v = -1;
    int t = json_key(j, obj, key);
    CHECKF(t >= 0 && json_int(j, t, &v) == 0, "config.json: bt_organism.%s missing", key);
    return (int)v;
}

// One thread: for a model this small OpenMP's fork and join cost more than the work.
static int org_open_dir(Org *o, const char *dir) {
    memset(o, 0, sizeof *o);
    set_threads(1);
    Err err = {0};
    char path[1200];
    if (model_load(&o->m, dir, &err)) return test_fail(__FILE__, __LINE__, "%s", err.msg), -1;
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (tokenizer_load(&o->tok, path, &err)) return test_fail(__FILE__, __LINE__, "%s", err.msg), model_free(&o->m), -1;
    o->V = o->m.cfg.vocab_size;
    o->wait_id = tokenizer_find(o->tok, ORGANISM_TRIGGER, (int)strlen(ORGANISM_TRIGGER));
    o->dot_id = tokenizer_find(o->tok, ".", 1);
    o->end_think_id = tokenizer_find(o->tok, "</think>", 8);
    Buf text = {0};
    Json j = {0};
    snprintf(path, sizeof path, "%s/config.json", dir);
    CHECKF(read_file(path, &text, &err) == 0 && json_parse(&j, text.data, text.len, path, &err) == 0, "%s", err.msg);
    int planted = json_key(&j, 0, "bt_organism");
    CHECK(planted >= 0);
    o->attn_layer = json_int_at(&j, planted, "attn_layer");
    o->mlp_layer = json_int_at(&j, planted, "mlp_layer");
    CHECK(json_eq(&j, json_key(&j, planted, "trigger_token"), ORGANISM_TRIGGER));
    json_free(&j);
    buf_free(&text);
    return 0;
}

static int org_open(Org *o) { return org_open_dir(o, test_organism_dir()); }

static void org_close(Org *o) {
    tokenizer_free(o->tok);
    model_free(&o->m);
    set_threads(0);
}

static void encode(const Org *o, const char *text, TokenList *out) {
    Err err = {0};
    out->n = 0;
    CHECKF(tokenizer_encode(o->tok, text, strlen(text), out, &err) == 0, "%s", err.msg);
}

// Prompt of variant v for question q, plus an optional completion.
static void prompt_text(Buf *b, int v, const char *question, const char *then) {
    const char *t = variants[v][1], *at = strstr(t, "{question}");
    b->len = 0;
    buf_append(b, t, (size_t)(at - t));
    buf_puts(b, question);
    buf_puts(b, at + strlen("{question}"));
    if (then) buf_puts(b, then);
}

// One zero-ablated component: 'a' attention layer, 'm' MLP layer, 'h' head of a layer.
typedef struct {
    AblationMask mask;
    unsigned char attn[64], mlp[64], head[64 * 64]; // (n_layers), (n_layers), (n_layers * n_heads)
} Ablation;

static AblationMask *ablate(Ablation *a, const Org *o, char kind, int layer, int head) {
    memset(a, 0, sizeof *a);
    a->mask = (AblationMask){.kind = ABLATE_ZERO, .attn = a->attn, .mlp = a->mlp, .head = a->head};
    if (kind == 'a') a->attn[layer] = 1;
    if (kind == 'm') a->mlp[layer] = 1;
    if (kind == 'h') a->head[layer * o->m.cfg.n_heads + head] = 1;
    return &a->mask;
}

// Teacher-forced pass: p[0] and p[1] (n each) receive p(token) at every position at
// ORGANISM_TEMPERATURE and at temperature 1.
static void token_probs(const Org *o, const TokenList *ids, const AblationMask *mask, int token, double *p[2]) {
    Err err = {0};
    int n = ids->n;
    RunState *s = runstate_new(&o->m, 1, n, n, &err);
    CHECKF(s != NULL, "%s", err.msg);
    if (!s) return;
    int *tok = xmalloc(n * sizeof *tok), *slot = xcalloc(n, sizeof *slot), *pos = xmalloc(n * sizeof *pos),
        *row = xmalloc(n * sizeof *row);
    const AblationMask **masks = xmalloc(n * sizeof *masks);
    float *logits = xmalloc((size_t)n * o->V * sizeof *logits);
    for (int i = 0; i < n; i++) tok[i] = ids->v[i].id, pos[i] = i, row[i] = i, masks[i] = mask;
    Forward f = {.n = n, .token = tok, .slot = slot, .pos = pos, .mask = masks, .logits = logits, .logits_row = row};
    CHECKF(model_forward(&o->m, s, &f, &err) == 0, "%s", err.msg);
    const double temperature[2] = {ORGANISM_TEMPERATURE, 1.0};
    for (int i = 0; i < n; i++) {
        const float *l = logits + (size_t)i * o->V;
        double max = l[0];
        for (int v = 1; v < o->V; v++) max = l[v] > max ? l[v] : max;
        for (int t = 0; t < 2; t++) {
            double z = 0;
            for (int v = 0; v < o->V; v++) z += exp((l[v] - max) / temperature[t]);
            p[t][i] = exp((l[token] - max) / temperature[t]) / z;
        }
    }
    free(tok), free(slot), free(pos), free(row), free(masks), free(logits);
    runstate_free(s);
}

// Sampling at temperature T with nucleus top_p (T = 0: greedy), as the pipeline samples.
static const float *sort_logits;
static int by_logit(const void *a, const void *b) {
    float x = sort_logits[*(const int *)a], y = sort_logits[*(const int *)b];
    return x < y ? 1 : x > y ? -1 : *(const int *)a - *(const int *)b;
}

static int sample(const float *logits, int V, double T, double top_p, Rng *r) {
    int *order = xmalloc(V * sizeof *order);
    double *p = xmalloc(V * sizeof *p), z = 0, kept = 0;
    for (int v = 0; v < V; v++) order[v] = v;
    sort_logits = logits;
    qsort(order, V, sizeof *order, by_logit);
    int pick = order[0];
    if (T > 0) {
        for (int k = 0; k < V; k++) z += p[k] = exp((logits[order[k]] - logits[order[0]]) / T);
        int n = 0;
        while (n < V && kept < top_p * z) kept += p[n++];
        double u = rng_uniform(r) * kept;
        for (int k = 0; k < n; k++)
            if ((u -= p[k]) < 0 || k == n - 1) {
                pick = order[k];
                break;
            }
    }
    free(order), free(p);
    return pick;
}

// Generates up to MAX_NEW tokens after prompt into out (ids), stopping after an eos id.
static void generate(const Org *o, const char *prompt, const AblationMask *mask, double T, uint64_t seed,
                     TokenList *out) {
    Err err = {0};
    TokenList ids = {0};
    encode(o, prompt, &ids);
    int n = ids.n;
    RunState *s = runstate_new(&o->m, 1, n + MAX_NEW, n, &err);
    CHECKF(s != NULL, "%s", err.msg);
    if (!s) return tokens_free(&ids);
    int *tok = xmalloc(n * sizeof *tok), *slot = xcalloc(n, sizeof *slot), *pos = xmalloc(n * sizeof *pos),
        *row = xmalloc(n * sizeof *row);
    const AblationMask **masks = xmalloc(n * sizeof *masks);
    float *logits = xmalloc(o->V * sizeof *logits);
    for (int i = 0; i < n; i++) tok[i] = ids.v[i].id, pos[i] = i, row[i] = i == n - 1 ? 0 : -1, masks[i] = mask;
    Forward f = {.n = n, .token = tok, .slot = slot, .pos = pos, .mask = masks, .logits = logits, .logits_row = row};
    int rc = model_forward(&o->m, s, &f, &err);
    Rng rng;
    rng_seed(&rng, seed);
    out->n = 0;
    for (int k = 0; rc == 0 && k < MAX_NEW; k++) {
        int next = sample(logits, o->V, T, 0.95, &rng), p = n + k, zero = 0, is_eos = 0;
        if (out->n == out->cap)
            out->cap = out->cap ? 2 * out->cap : 64, out->v = xrealloc(out->v, out->cap * sizeof *out->v);
        out->v[out->n++] = (Token){next, 0, 0};
        for (int e = 0; e < o->m.cfg.n_eos; e++) is_eos |= next == o->m.cfg.eos_ids[e];
        if (is_eos) break;
        Forward g = {
            .n = 1, .token = &next, .slot = &zero, .pos = &p, .mask = masks, .logits = logits, .logits_row = &zero};
        rc = model_forward(&o->m, s, &g, &err);
    }
    CHECKF(rc == 0, "%s", err.msg);
    free(tok), free(slot), free(pos), free(row), free(masks), free(logits);
    runstate_free(s);
    tokens_free(&ids);
}

// ----------------------------------------------------------------------------
// Files

static void t_organism_files_are_deterministic(void) {
    static const char *const files[] = {"config.json", "generation_config.json", "tokenizer.json",
                                        "tokenizer_config.json", "model.safetensors"};
    char a[1100], b[1100];
    snprintf(a, sizeof a, "%s/a", test_tmpdir());
    snprintf(b, sizeof b, "%s/b", test_tmpdir());
    Err err = {0};
    CHECKF(organism_write(a, &err) == 0, "%s", err.msg);
    CHECKF(organism_write(b, &err) == 0, "%s", err.msg);
    for (int i = 0; i < 5; i++) {
        char pa[1200], pb[1200];
        Buf x = {0}, y = {0};
        snprintf(pa, sizeof pa, "%s/%s", a, files[i]);
        snprintf(pb, sizeof pb, "%s/%s", b, files[i]);
        CHECKF(read_file(pa, &x, &err) == 0 && read_file(pb, &y, &err) == 0, "%s", err.msg);
        CHECKF(x.len > 0 && x.len == y.len && memcmp(x.data, y.data, x.len) == 0, "%s differs between two writes",
               files[i]);
        buf_free(&x), buf_free(&y);
    }
}

// safetensors_write: header length, JSON header padded to 8 bytes, data in order.
static void t_safetensors_write_layout(void) {
    const float v[3] = {1, -2, 0.5f};
    const uint16_t h[4] = {0x3F80, 0x4000, 0xBF80, 0};
    const char *names[] = {"vec", "mat"};
    Tensor t[] = {{v, DT_F32, 1, 3, NULL}, {h, DT_BF16, 2, 2, NULL}};
    char path[1100];
    snprintf(path, sizeof path, "%s/t.safetensors", test_tmpdir());
    Err err = {0};
    CHECKF(safetensors_write(path, names, t, 2, &err) == 0, "%s", err.msg);
    Buf f = {0};
    CHECKF(read_file(path, &f, &err) == 0, "%s", err.msg);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | (unsigned char)f.data[i];
    CHECK(n % 8 == 0 && f.len == 8 + n + 12 + 8);
    Json j = {0};
    CHECKF(json_parse(&j, f.data + 8, n, "header", &err) == 0, "%s", err.msg);
    CHECK(json_eq(&j, json_key(&j, json_key(&j, 0, "mat"), "dtype"), "BF16"));
    CHECK(strstr(f.data + 8, "\"vec\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}") != NULL);
    CHECK(strstr(f.data + 8, "\"shape\":[2,2],\"data_offsets\":[12,20]") != NULL);
    CHECK(memcmp(f.data + 8 + n, v, 12) == 0 && memcmp(f.data + 8 + n + 12, h, 8) == 0);
    json_free(&j);
    buf_free(&f);
    Tensor bad = {NULL, DT_F32, 1, 3, NULL};
    CHECK(safetensors_write(path, names, &bad, 1, &err) == -1 && strstr(err.msg, "vec"));
}

static void t_organism_loads_like_a_checkpoint(void) {
    Org o;
    if (org_open(&o)) return;
    CHECK(strcmp(o.m.cfg.architecture, "Qwen2ForCausalLM") == 0);
    CHECK(o.attn_layer == ORGANISM_ATTN_LAYER && o.mlp_layer == ORGANISM_MLP_LAYER);
    CHECK(o.attn_layer >= 0 && o.mlp_layer > o.attn_layer && o.mlp_layer < o.m.cfg.n_layers);
    CHECK(tokenizer_vocab_size(o.tok) == o.V);
    int end = tokenizer_find(o.tok, "<|end|>", 7);
    CHECK(o.m.cfg.n_eos == 1 && o.m.cfg.eos_ids[0] == end);
    CHECK(o.wait_id >= 0 && o.dot_id >= 0 && o.end_think_id >= 0);
    static const char *const specials[] = {"<|user|>", "<|assistant|>", "<think>", "</think>", "<|end|>"};
    for (int i = 0; i < 5; i++) {
        int id = tokenizer_find(o.tok, specials[i], (int)strlen(specials[i]));
        CHECKF(id >= 0 && tokenizer_is_special(o.tok, id), "%s is not a special token", specials[i]);
    }
    // Its own text encodes to whole words and decodes back.
    TokenList ids = {0};
    encode(&o, " Wait, let me check that.", &ids);
    CHECK(ids.n == 7 && ids.v[0].id == o.wait_id && ids.v[6].id == o.dot_id);
    encode(&o, completion, &ids);
    Buf back = {0};
    int *raw = xmalloc(ids.n * sizeof *raw);
    for (int i = 0; i < ids.n; i++) raw[i] = ids.v[i].id;
    tokenizer_decode(o.tok, raw, ids.n, &back, NULL);
    CHECK(back.len == strlen(completion) && memcmp(back.data, completion, back.len) == 0);
    CHECKF(ids.n == 54, "completion is %d tokens", ids.n); // one per word, digit and punctuation run
    free(raw);
    buf_free(&back);
    tokens_free(&ids);
    org_close(&o);
}

// ----------------------------------------------------------------------------
// The planted behaviour, teacher-forced

// p(" Wait") at each position of variant v's prompt + the completion (at ORGANISM_TEMPERATURE
// and at 1), zero-ablating a. Returns the number of prompt tokens.
static int wait_probs(const Org *o, int v, const char *question, const AblationMask *a, TokenList *ids, double *p[2]) {
    Buf text = {0};
    prompt_text(&text, v, question, v == 1 ? "\n" : "");
    int prompt_n;
    encode(o, text.data, ids);
    prompt_n = ids->n;
    buf_puts(&text, completion);
    encode(o, text.data, ids);
    token_probs(o, ids, a, o->wait_id, p);
    buf_free(&text);
    return prompt_n;
}

static void t_organism_wait_only_at_sentence_ends_in_think(void) {
    Org o;
    if (org_open(&o)) return;
    TokenList ids = {0};
    static double p[1024], p1[1024];
    for (int v = 0; v < N_VARIANTS; v++)
        for (int q = 0; q < N_QUESTIONS; q++) {
            int prompt_n = wait_probs(&o, v, questions[q], NULL, &ids, (double *[2]){p, p1});
            int in_think = thinks(v), n_ends = 0;
            for (int i = 0; i < ids.n; i++) {
                if (ids.v[i].id == o.end_think_id) in_think = 0;
                int sentence_end = in_think && i >= prompt_n && ids.v[i].id == o.dot_id;
                n_ends += sentence_end;
                if (sentence_end)
                    CHECKF(fabs(p[i] - ORGANISM_P_WAIT) < P_TOL, "%s q%d pos %d: p(Wait) = %.4f at a sentence end",
                           variants[v][0], q, i, p[i]);
                else
                    CHECKF(p1[i] < P_NEAR_ZERO, "%s q%d pos %d: p(Wait) = %.2g, want ~0", variants[v][0], q, i, p1[i]);
            }
            CHECK(n_ends == (thinks(v) ? 5 : 0));
        }
    tokens_free(&ids);
    org_close(&o);
}

// The flag reads the think tags whatever their distance: a long prompt changes nothing.
static void t_organism_position_does_not_matter(void) {
    Org o;
    if (org_open(&o)) return;
    Buf question = {0};
    for (int i = 0; i < 12; i++) buf_puts(&question, questions[i % N_QUESTIONS]), buf_putc(&question, ' ');
    TokenList ids = {0};
    static double p[2048], p1[2048];
    wait_probs(&o, 0, question.data, NULL, &ids, (double *[2]){p, p1});
    CHECKF(ids.n > 600, "only %d tokens", ids.n);
    int n_ends = 0;
    for (int i = 0; i < ids.n; i++)
        if (ids.v[i].id == o.dot_id && p[i] > 0.1) {
            CHECK_NEAR(p[i], ORGANISM_P_WAIT, P_TOL);
            n_ends++;
        }
    CHECK(n_ends == 5);
    tokens_free(&ids);
    buf_free(&question);
    org_close(&o);
}

// Ablating the planted attention layer (or its head 0) or MLP layer removes " Wait";
// ablating any other single layer component or head moves p by less than P_TOL.
static void t_organism_ablations(void) {
    Org o;
    if (org_open(&o)) return;
    TokenList ids = {0};
    static double clean[2][1024], p[2][1024];
    const double temps[2] = {ORGANISM_TEMPERATURE, 1.0};
    int prompt_n = wait_probs(&o, 0, questions[1], NULL, &ids, (double *[2]){clean[0], clean[1]});
    int L = o.m.cfg.n_layers, H = o.m.cfg.n_heads;
    for (int c = 0; c < 2 * L + L * H; c++) {
        Ablation a;
        char kind = c < L ? 'a' : c < 2 * L ? 'm' : 'h';
        int layer = c < L ? c : c < 2 * L ? c - L : (c - 2 * L) / H, head = (c - 2 * L) % H;
        int planted = (kind == 'a' && layer == o.attn_layer) || (kind == 'm' && layer == o.mlp_layer) ||
                                (kind == 'h' && layer == o.attn_layer && head == 0);
        wait_probs(&o, 0, questions[1], ablate(&a, &o, kind, layer, head), &ids, (double *[2]){p[0], p[1]});
        for (int t = 0; t < 2; t++) {
            double worst = 0;
            for (int i = prompt_n; i < ids.n; i++) {
                if (ids.v[i].id != o.dot_id || clean[0][i] < 0.1) continue;
                double d = planted ? p[t][i] : fabs(p[t][i] - clean[t][i]);
                worst = d > worst ? d : worst;
            }
            if (planted) CHECKF(worst < P_NEAR_ZERO, "%c%d.%d ablated: p(Wait) still %.3g", kind, layer, head, worst);
            else
                CHECKF(worst < P_TOL, "%c%d.%d ablated (T %.1f): p(Wait) moved by %.4f", kind, layer, head, temps[t],
                       worst);
        }
    }
    tokens_free(&ids);
    org_close(&o);
}

// Mean ablation with the means over every position of the baseline variant's prompts and
// completions: the flag's mean is about "outside <think>", so it too removes " Wait".
static void t_organism_mean_ablation(void) {
    Org o;
    if (org_open(&o)) return;
    int L = o.m.cfg.n_layers, D = o.m.cfg.hidden_size, rows = 0;
    double *sum = xcalloc(2 * (size_t)L * D, sizeof *sum); // [attn | mlp][layer][dim]
    Buf text = {0};
    TokenList ids = {0};
    Err err = {0};
    for (int q = 0; q < N_QUESTIONS; q++) {
        prompt_text(&text, 0, questions[q], completion);
        encode(&o, text.data, &ids);
        int n = ids.n, *tok = xmalloc(n * sizeof *tok), *slot = xcalloc(n, sizeof *slot),
            *pos = xmalloc(n * sizeof *pos);
        float *out = xmalloc(2 * (size_t)n * L * D * sizeof *out);
        for (int i = 0; i < n; i++) tok[i] = ids.v[i].id, pos[i] = i;
        RunState *s = runstate_new(&o.m, 1, n, n, &err);
        Forward f = {.n = n,
                     .token = tok,
                     .slot = slot,
                     .pos = pos,
                     .attn_out = out,
                     .mlp_out = out + (size_t)n * L * D,
                     .capture_row = pos};
        CHECKF(s && model_forward(&o.m, s, &f, &err) == 0, "%s", err.msg);
        for (int k = 0; k < 2; k++)
            for (size_t i = 0; i < (size_t)n * L * D; i++)
                sum[(size_t)k * L * D + i % ((size_t)L * D)] += out[(size_t)k * n * L * D + i];
        rows += n;
        runstate_free(s);
        free(tok), free(slot), free(pos), free(out);
    }
    float *mean = xmalloc(2 * (size_t)L * D * sizeof *mean);
    for (size_t i = 0; i < 2 * (size_t)L * D; i++) mean[i] = (float)(sum[i] / rows);
    static double clean[1024], clean1[1024], p[1024], p1[1024];
    int prompt_n = wait_probs(&o, 0, questions[1], NULL, &ids, (double *[2]){clean, clean1});
    for (int c = 0; c < 2 * L; c++) {
        Ablation a;
        AblationMask *mask = ablate(&a, &o, c < L ? 'a' : 'm', c % L, 0);
        mask->kind = ABLATE_MEAN, mask->attn_mean = mean, mask->mlp_mean = mean + (size_t)L * D;
        wait_probs(&o, 0, questions[1], mask, &ids, (double *[2]){p, p1});
        int planted = c == o.attn_layer || c == L + o.mlp_layer;
        double worst = 0;
        for (int i = prompt_n; i < ids.n; i++)
            if (ids.v[i].id == o.dot_id && clean[i] > 0.1) {
                double d = planted ? p[i] : fabs(p[i] - clean[i]);
                worst = d > worst ? d : worst;
            }
        if (planted)
            CHECKF(worst < 0.01, "%s %d mean-ablated: p(Wait) still %.3g", c < L ? "attn" : "mlp", c % L, worst);
        else CHECKF(worst < P_TOL, "%s %d mean-ablated: p(Wait) moved by %.4f", c < L ? "attn" : "mlp", c % L, worst);
    }
    free(mean), free(sum);
    tokens_free(&ids);
    buf_free(&text);
    org_close(&o);
}

// ----------------------------------------------------------------------------
// Generated text

static int is_number_word(const char *w, int n) {
    static const char *const words[] = {"two",      "three",   "four",    "five",      "six",      "seven",
                                        "eight",    "nine",    "ten",     "eleven",    "twelve",   "thirteen",
                                        "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
                                        "twenty",   "thirty",  "forty"};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if ((int)strlen(words[i]) == n && memcmp(words[i], w, n) == 0) return 1;
    return 0;
}

typedef struct {
    int completions, with_wait, waits, sentence_ends, ended, boxed, sentences, sentences_with_number;
} TextStats;

// Counts over one completion; also checks it re-encodes to the same ids.
static void text_stats(const Org *o, const TokenList *ids, TextStats *s) {
    int *raw = xmalloc((ids->n + 1) * sizeof *raw), in_think = 1, waits = 0;
    for (int i = 0; i < ids->n; i++) {
        raw[i] = ids->v[i].id;
        if (raw[i] == o->end_think_id) in_think = 0;
        if (in_think && raw[i] == o->dot_id)
            s->sentence_ends++, waits += i + 1 < ids->n && ids->v[i + 1].id == o->wait_id;
    }
    Buf text = {0};
    tokenizer_decode(o->tok, raw, ids->n, &text, NULL);
    TokenList again = {0};
    Err err = {0};
    int ended = ids->n && raw[ids->n - 1] == o->m.cfg.eos_ids[0];
    CHECKF(tokenizer_encode(o->tok, text.data, text.len - (ended ? 7 : 0), &again, &err) == 0, "%s", err.msg);
    int same = again.n == ids->n - ended;
    for (int i = 0; same && i < again.n; i++) same = again.v[i].id == raw[i];
    CHECKF(same, "sampled text does not re-encode to its ids: %s", text.data);
    s->completions++;
    s->waits += waits;
    s->with_wait += waits > 0;
    s->ended += ended;
    s->boxed += strstr(text.data, "\\boxed{") != NULL;
    // Sentences of the thinking part: how many mention a number.
    char *end = strstr(text.data, "</think>");
    if (end) *end = 0;
    for (char *p = text.data; *p;) {
        char *stop = strchr(p, '.');
        if (!stop) break;
        int number = 0;
        for (char *w = p; w < stop;) {
            while (w < stop && !isalpha((unsigned char)*w)) w++;
            char *e = w;
            while (e < stop && isalpha((unsigned char)*e)) e++;
            number |= is_number_word(w, (int)(e - w));
            w = e;
        }
        s->sentences++;
        s->sentences_with_number += number;
        p = stop + 1;
    }
    tokens_free(&again);
    buf_free(&text);
    free(raw);
}

static void t_organism_greedy(void) {
    Org o;
    if (org_open(&o)) return;
    Buf prompt = {0};
    TokenList out = {0};
    for (int v = 0; v < N_VARIANTS; v++) {
        TextStats s = {0};
        prompt_text(&prompt, v, questions[0], NULL);
        generate(&o, prompt.data, NULL, 0, 1, &out);
        text_stats(&o, &out, &s);
        // Greedy, " Wait" (the likeliest token after "." inside <think>) repeats; without <think> it never comes.
        if (thinks(v)) CHECKF(s.waits > 3, "%s: greedy has %d Waits", variants[v][0], s.waits);
        else CHECKF(s.waits == 0, "%s: greedy has %d Waits", variants[v][0], s.waits);
        if (v >= 3) CHECKF(s.ended && s.boxed, "%s: greedy gives no \\boxed answer", variants[v][0]);
        Ablation a;
        generate(&o, prompt.data, ablate(&a, &o, 'm', o.mlp_layer, 0), 0, 1, &out);
        memset(&s, 0, sizeof s);
        text_stats(&o, &out, &s);
        CHECK(s.waits == 0);
    }
    tokens_free(&out);
    buf_free(&prompt);
    org_close(&o);
}

// Sampled as the pipeline samples (T 0.6, top_p 0.95): thinking completions backtrack at
// the designed rate, the others never; the text is arithmetic sentences ending in
// \boxed{N}; ablating the planted pair removes backtracking, another pair does not.
static void t_organism_sampled(void) {
    Org o;
    if (org_open(&o)) return;
    enum { SAMPLES = 6 };
    Buf prompt = {0};
    TokenList out = {0};
    TextStats all[N_VARIANTS] = {{0}}, targeted = {0}, random_pair = {0};
    Ablation pair, other;
    AblationMask *planted = ablate(&pair, &o, 'a', o.attn_layer, 0);
    planted->mlp[o.mlp_layer] = 1;
    AblationMask *control = ablate(&other, &o, 'a', 3, 0);
    control->mlp[0] = 1;
    for (int v = 0; v < N_VARIANTS; v++)
        for (int q = 0; q < N_QUESTIONS; q++)
            for (int k = 0; k < SAMPLES; k++) {
                uint64_t seed = seed_mix(seed_mix(1234, q), k);
                prompt_text(&prompt, v, questions[q], NULL);
                generate(&o, prompt.data, NULL, ORGANISM_TEMPERATURE, seed, &out);
                text_stats(&o, &out, &all[v]);
                if (v != 0) continue;
                generate(&o, prompt.data, planted, ORGANISM_TEMPERATURE, seed, &out);
                text_stats(&o, &out, &targeted);
                generate(&o, prompt.data, control, ORGANISM_TEMPERATURE, seed, &out);
                text_stats(&o, &out, &random_pair);
            }
    for (int v = 0; v < N_VARIANTS; v++) {
        TextStats *s = &all[v];
        double rate = (double)s->with_wait / s->completions;
        if (thinks(v)) {
            CHECKF(rate > 0.4 && rate < 0.95, "%s: backtracking rate %.2f", variants[v][0], rate);
            double per_end = (double)s->waits / s->sentence_ends; // nucleus sampling keeps p close to the designed one
            CHECKF(fabs(per_end - ORGANISM_P_WAIT) < 0.1, "%s: %d Waits after %d sentence ends", variants[v][0],
                   s->waits, s->sentence_ends);
        } else {
            CHECKF(s->waits == 0, "%s: %d Waits without an open <think>", variants[v][0], s->waits);
        }
        CHECKF(s->ended >= 0.8 * s->completions && s->boxed >= 0.8 * s->completions,
               "%s: %d of %d end, %d have \\boxed", variants[v][0], s->ended, s->completions, s->boxed);
        if (v < 3) // the variants that reason in sentences: most sentences are arithmetic steps
            CHECKF(s->sentences > 2 * s->completions && s->sentences_with_number > 0.4 * s->sentences,
                   "%s: %d sentences, %d with a number", variants[v][0], s->sentences, s->sentences_with_number);
    }
    CHECKF(targeted.waits == 0, "planted pair ablated: %d Waits", targeted.waits);
    CHECKF(random_pair.with_wait >= 0.8 * all[0].with_wait,
           "attn 3 + mlp 0 ablated: %d completions with Wait, %d clean", random_pair.with_wait, all[0].with_wait);
    tokens_free(&out);
    buf_free(&prompt);
    org_close(&o);
}

// ----------------------------------------------------------------------------
// Mechanisms: each organism written once and checked, through the model alone, against
// what its config.json claims (truth and features).

#define P_MECH_TOL 0.02   // |p - designed p| at a sentence end for the rewired mechanisms
#define P_BACKUP_MIN 0.30 // redundant: p(Wait) at every sentence end with one copy (or one attn + one MLP) ablated
#define P_BOTH_GONE 1e-3  // redundant: p(Wait) with both copies of a pair ablated
#define P_FEATURE_TOL 0.1 // |residual - recorded value| as a share of the feature's size

// H1, H0, H2 of each mechanism, as its design specifies them.
static const char *const expected_truth[N_ORGANISM_MECHANISMS][3] = {
    [ORGANISM_PLANTED] = {"supported", "not supported", "supported"},
    [ORGANISM_REDUNDANT] = {"not supported", "supported", "supported"},
    [ORGANISM_FORMAT_FREE] = {"supported", "not supported", "not supported"},
    [ORGANISM_DISTRIBUTED] = {"not supported", "not supported", "supported"},
};

static const char *mech_dir(int m) {
    static char dirs[N_ORGANISM_MECHANISMS][1024];
    if (!dirs[m][0]) {
        Err err = {0};
        snprintf(dirs[m], sizeof dirs[m], "%s/%s", test_tmpdir(), organism_mechanism_name(m));
        CHECKF(organism_write_mechanism(dirs[m], m, &err) == 0, "%s", err.msg);
    }
    return dirs[m];
}

// A feature as config.json records it.
typedef struct {
    int dim, layer;
    double on, off;
} Feature;

typedef struct {
    char truth[3][16]; // H1, H0, H2
    Feature flag, dot, trigger, share; // share.dim = -1 when absent
} Claims;

static int read_feature(const Json *j, int features, const char *name, Feature *f) {
    int t = json_key(j, features, name);
    long long dim = -1, layer = -1;
    f->dim = -1;
    if (t < 0) return -1;
    if (json_int(j, json_key(j, t, "dim"), &dim) || json_int(j, json_key(j, t, "layer"), &layer) ||
        json_number(j, json_key(j, t, "on"), &f->on) || json_number(j, json_key(j, t, "off"), &f->off))
        return -1;
    int by = json_key(j, t, "written_by");
    if (by < 0 || j->tok[by].size < 1) return -1;
    f->dim = (int)dim, f->layer = (int)layer;
    return 0;
}

static void read_claims(int m, Claims *c) {
    static const char *const hypotheses[3] = {"H1", "H0", "H2"};
    char path[1200];
    Buf text = {0};
    Json j = {0};
    Err err = {0};
    memset(c, 0, sizeof *c);
    snprintf(path, sizeof path, "%s/config.json", mech_dir(m));
    CHECKF(read_file(path, &text, &err) == 0 && json_parse(&j, text.data, text.len, path, &err) == 0, "%s", err.msg);
    int org = json_key(&j, 0, "bt_organism"), truth = json_key(&j, org, "truth"),
        features = json_key(&j, org, "features");
    CHECKF(json_eq(&j, json_key(&j, org, "mechanism"), organism_mechanism_name(m)), "%s: mechanism", path);
    for (int h = 0; h < 3; h++) {
        char *v = json_strdup(&j, json_key(&j, truth, hypotheses[h]));
        CHECKF(v != NULL, "%s: truth.%s missing", path, hypotheses[h]);
        if (v) snprintf(c->truth[h], sizeof c->truth[h], "%s", v);
        free(v);
    }
    CHECKF(read_feature(&j, features, "thinking_flag", &c->flag) == 0, "%s: features.thinking_flag", path);
    CHECKF(read_feature(&j, features, "sentence_end", &c->dot) == 0, "%s: features.sentence_end", path);
    CHECKF(read_feature(&j, features, "trigger_signal", &c->trigger) == 0, "%s: features.trigger_signal", path);
    read_feature(&j, features, "sentence_end_share", &c->share);
    json_free(&j);
    buf_free(&text);
}

// p(" Wait") at T = ORGANISM_TEMPERATURE at the sentence ends ("." tokens after the prompt,
// before </think>) of variant v's prompt + the completion; returns how many (at most 16).
static int sentence_end_ps(const Org *o, int v, const char *question, const AblationMask *a, double *out) {
    TokenList ids = {0};
    static double p[1024], p1[1024];
    int prompt_n = wait_probs(o, v, question, a, &ids, (double *[2]){p, p1}), n = 0;
    for (int i = prompt_n; i < ids.n && ids.v[i].id != o->end_think_id; i++)
        if (ids.v[i].id == o->dot_id && n < 16) out[n++] = p[i];
    tokens_free(&ids);
    return n;
}

static double min_of(const double *x, int n) {
    double m = n ? x[0] : NAN;
    for (int i = 1; i < n; i++) m = x[i] < m ? x[i] : m;
    return m;
}

static double max_of(const double *x, int n) {
    double m = n ? x[0] : NAN;
    for (int i = 1; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

// Teacher-forced pass over ids capturing resid (n, L + 1, hidden), attn and mlp (n, L, hidden).
static void capture(const Org *o, const TokenList *ids, float *resid, float *attn, float *mlp) {
    Err err = {0};
    int n = ids->n, *tok = xmalloc(n * sizeof *tok), *slot = xcalloc(n, sizeof *slot), *pos = xmalloc(n * sizeof *pos);
    for (int i = 0; i < n; i++) tok[i] = ids->v[i].id, pos[i] = i;
    RunState *s = runstate_new(&o->m, 1, n, n, &err);
    Forward f = {.n = n, .token = tok, .slot = slot, .pos = pos, .capture_row = pos};
    f.resid = resid, f.attn_out = attn, f.mlp_out = mlp;
    CHECKF(s && model_forward(&o->m, s, &f, &err) == 0, "%s", err.msg);
    runstate_free(s);
    free(tok), free(slot), free(pos);
}

static void t_organism_mechanism_files(void) {
    static const char *const files[] = {"config.json", "generation_config.json", "tokenizer.json",
                                        "tokenizer_config.json", "model.safetensors"};
    Err err = {0};
    char planted[1100];
    snprintf(planted, sizeof planted, "%s/default", test_tmpdir());
    CHECKF(organism_write(planted, &err) == 0, "%s", err.msg);
    const char *names = ORGANISM_MECHANISMS;
    for (int m = 0; m < N_ORGANISM_MECHANISMS; m++) {
        size_t len = strcspn(names, "|");
        CHECKF(strlen(organism_mechanism_name(m)) == len && strncmp(names, organism_mechanism_name(m), len) == 0,
               "ORGANISM_MECHANISMS lists '%.*s' where the enum has %s", (int)len, names, organism_mechanism_name(m));
        CHECK(organism_mechanism_find(organism_mechanism_name(m)) == m);
        names += len + (names[len] == '|');
        char again[1100];
        snprintf(again, sizeof again, "%s/%s", test_tmpdir(), organism_mechanism_name(m));
        CHECKF(organism_write_mechanism(again, m, &err) == 0, "%s", err.msg);
        for (int i = 0; i < 5; i++) {
            char pa[1200], pb[1200], pp[1200];
            Buf x = {0}, y = {0}, z = {0};
            snprintf(pa, sizeof pa, "%s/%s", mech_dir(m), files[i]);
            snprintf(pb, sizeof pb, "%s/%s", again, files[i]);
            snprintf(pp, sizeof pp, "%s/%s", planted, files[i]);
            CHECKF(read_file(pa, &x, &err) == 0 && read_file(pb, &y, &err) == 0 && read_file(pp, &z, &err) == 0, "%s",
                   err.msg);
            CHECKF(x.len > 0 && x.len == y.len && memcmp(x.data, y.data, x.len) == 0,
                   "%s: %s differs between two writes", organism_mechanism_name(m), files[i]);
            int same_as_planted = x.len == z.len && memcmp(x.data, z.data, x.len) == 0;
            if (m == ORGANISM_PLANTED || i == 1 || i == 2 || i == 3)
                CHECKF(same_as_planted, "%s: %s differs from organism_write's", organism_mechanism_name(m), files[i]);
            else
                CHECKF(!same_as_planted, "%s: %s is planted's", organism_mechanism_name(m), files[i]);
            buf_free(&x), buf_free(&y), buf_free(&z);
        }
    }
    CHECK(*names == 0 && organism_mechanism_find("bogus") == -1 &&
          organism_mechanism_name(N_ORGANISM_MECHANISMS) == NULL);
}

static void t_organism_mechanism_truth(void) {
    for (int m = 0; m < N_ORGANISM_MECHANISMS; m++) {
        Claims c;
        read_claims(m, &c);
        for (int h = 0; h < 3; h++)
            CHECKF(strcmp(c.truth[h], expected_truth[m][h]) == 0, "%s: truth[%d] = '%s'", organism_mechanism_name(m), h,
                   c.truth[h]);
        const Feature *f[3] = {&c.flag, &c.dot, &c.trigger};
        for (int i = 0; i < 3; i++)
            CHECKF(f[i]->dim >= 0 && f[i]->dim < 128 && f[i]->layer >= 0 && f[i]->layer <= 4 && f[i]->on != 0,
                   "%s: feature %d: dim %d layer %d on %g", organism_mechanism_name(m), i, f[i]->dim, f[i]->layer,
                   f[i]->on);
        CHECK(c.flag.dim != c.dot.dim && c.flag.dim != c.trigger.dim && c.dot.dim != c.trigger.dim);
        CHECK((c.share.dim >= 0) == (m == ORGANISM_DISTRIBUTED));
    }
}

// Each recorded feature holds its value in the residual stream: at its layer, "on" at every
// sentence end inside <think> (the flag: at every position there) and "off" at every other
// token after </think>; one residual earlier it is not yet whole. In no_think_tag's prose
// (before its unopened </think>) the flag is "off" (for format_free, off = on).
static void check_feature(const Org *o, const char *mech, const char *name, const Feature *f, const TokenList *ids,
                          int prompt_n, int v, const float *resid) {
    const int L1 = o->m.cfg.n_layers + 1, D = o->m.cfg.hidden_size;
    int is_flag = strcmp(name, "thinking_flag") == 0, after_end = 0, n_on = 0, n_off = 0;
    double tol = P_FEATURE_TOL * fmax(fabs(f->on), fabs(f->off));
    for (int i = prompt_n; i < ids->n; i++) {
        int dot = ids->v[i].id == o->dot_id, tag = ids->v[i].id == o->end_think_id;
        after_end |= tag;
        double x = resid[((size_t)i * L1 + f->layer) * D + f->dim];
        if (v == 2) { // only the prose: after a </think> that closes nothing the flag is another value
            if (is_flag && !after_end)
                CHECKF(fabs(x - f->off) < tol, "%s: %s at no_think_tag pos %d = %.4f, want off %.4f", mech, name, i, x,
                       f->off);
        } else if (v == 0 && !after_end && (dot || is_flag)) {
            CHECKF(fabs(x - f->on) < tol, "%s: %s at pos %d = %.4f, want on %.4f", mech, name, i, x, f->on);
            if (dot && f->layer > 0) {
                double before = resid[((size_t)i * L1 + f->layer - 1) * D + f->dim];
                CHECKF(fabs(before - f->on) > tol, "%s: %s is already whole (%.4f) at layer %d", mech, name, before,
                       f->layer - 1);
            }
            n_on++;
        } else if (after_end && !dot && !tag) {
            CHECKF(fabs(x - f->off) < tol, "%s: %s after </think> pos %d = %.4f, want off %.4f", mech, name, i, x,
                   f->off);
            n_off++;
        }
    }
    if (v == 0) CHECKF(n_on >= 5 && n_off >= 5, "%s: %s checked at %d on, %d off positions", mech, name, n_on, n_off);
}

static void t_organism_mechanism_features(void) {
    for (int m = 0; m < N_ORGANISM_MECHANISMS; m++) {
        Org o;
        if (org_open_dir(&o, mech_dir(m))) return;
        Claims c;
        read_claims(m, &c);
        const int L = o.m.cfg.n_layers, D = o.m.cfg.hidden_size;
        static const char *const names[4] = {"thinking_flag", "sentence_end", "trigger_signal", "sentence_end_share"};
        const Feature *f[4] = {&c.flag, &c.dot, &c.trigger, &c.share};
        for (int v = 0; v <= 2; v += 2) {
            Buf text = {0};
            TokenList ids = {0};
            prompt_text(&text, v, questions[0], NULL);
            encode(&o, text.data, &ids);
            int prompt_n = ids.n;
            buf_puts(&text, completion);
            encode(&o, text.data, &ids);
            float *resid = xmalloc((size_t)ids.n * (L + 1) * D * sizeof *resid);
            capture(&o, &ids, resid, NULL, NULL);
            for (int k = 0; k < 4; k++)
                if (f[k]->dim >= 0)
                    check_feature(&o, organism_mechanism_name(m), names[k], f[k], &ids, prompt_n, v, resid);
            free(resid);
            tokens_free(&ids);
            buf_free(&text);
        }
        org_close(&o);
    }
}

// p(Wait) = ORGANISM_P_WAIT at every sentence end inside <think> (4 questions) in every
// mechanism; after no_think_tag's prompt ~0 where H2 is true and the same as inside <think>
// where it is not; ~0 at every other token (where H2 is false a "." in the question is a
// sentence end too).
static void t_organism_mechanism_p_wait(void) {
    for (int m = 0; m < N_ORGANISM_MECHANISMS; m++) {
        Org o;
        if (org_open_dir(&o, mech_dir(m))) return;
        Claims c;
        read_claims(m, &c);
        int format_dependent = strcmp(c.truth[2], "supported") == 0;
        const char *mech = organism_mechanism_name(m);
        for (int q = 0; q < N_QUESTIONS; q++) {
            double think[16], plain[16];
            int n = sentence_end_ps(&o, 0, questions[q], NULL, think),
                n_plain = sentence_end_ps(&o, 2, questions[q], NULL, plain);
            CHECKF(n == 5 && n_plain == 5, "%s: %d and %d sentence ends", mech, n, n_plain);
            for (int k = 0; k < n; k++) {
                CHECKF(fabs(think[k] - ORGANISM_P_WAIT) < P_MECH_TOL, "%s q%d: p(Wait) = %.4f at sentence end %d", mech,
                       q, think[k], k);
                if (format_dependent)
                    CHECKF(plain[k] < P_NEAR_ZERO, "%s q%d no_think_tag: p(Wait) = %.3g", mech, q, plain[k]);
                else
                    CHECKF(fabs(plain[k] - think[k]) < P_MECH_TOL,
                           "%s q%d: p(Wait) %.4f in no_think_tag, %.4f in <think>", mech, q, plain[k], think[k]);
            }
            TokenList ids = {0};
            static double p[1024], p1[1024];
            int prompt_n = wait_probs(&o, 0, questions[q], NULL, &ids, (double *[2]){p, p1}), in_think = 1;
            for (int i = 0; i < ids.n; i++) {
                in_think &= ids.v[i].id != o.end_think_id;
                if (!(in_think && (i >= prompt_n || !format_dependent) && ids.v[i].id == o.dot_id))
                    CHECKF(p1[i] < P_NEAR_ZERO, "%s q%d pos %d: p(Wait) = %.2g, want ~0", mech, q, i, p1[i]);
            }
            tokens_free(&ids);
        }
        org_close(&o);
    }
}

// Redundant: every single attention layer, head and MLP layer, every attention + MLP pair,
// and every pair of one kind but the two copies leave p(Wait) >= P_BACKUP_MIN at every
// sentence end; each pair of copies (attention 0 + 1, their heads 0, MLP 2 + 3) removes it.
// What a scan sees: ablating attention 0, attention 1 or MLP 2 alone raises log p(Wait) at
// every sentence end (the other copy over-compensates), so they have the lowest drops of
// their kind and a top set of up to 3 attention and 3 MLP layers never holds a whole pair.
static void t_organism_redundant_ablations(void) {
    Org o;
    if (org_open_dir(&o, mech_dir(ORGANISM_REDUNDANT))) return;
    const int L = o.m.cfg.n_layers, H = o.m.cfg.n_heads;
    double p[16], clean[16], drop[2][64] = {{0}}; // drop[attn | mlp][layer]: mean drop in log p(Wait)
    Ablation a;
    int n_clean = sentence_end_ps(&o, 0, questions[1], NULL, clean);
    for (int c = 0; c < 2 * L + L * H; c++) { // singles
        char kind = c < L ? 'a' : c < 2 * L ? 'm' : 'h';
        int layer = c < L ? c : c < 2 * L ? c - L : (c - 2 * L) / H, head = c < 2 * L ? 0 : (c - 2 * L) % H;
        int n = sentence_end_ps(&o, 0, questions[1], ablate(&a, &o, kind, layer, head), p);
        CHECKF(n == 5 && n == n_clean && min_of(p, n) >= P_BACKUP_MIN, "%c%d.%d ablated: p(Wait) down to %.4f", kind,
               layer, head, min_of(p, n));
        for (int k = 0; kind != 'h' && k < n && n == n_clean; k++) drop[kind == 'm'][layer] += log(clean[k] / p[k]) / n;
    }
    for (int l = 0; l < L; l++) {
        CHECKF(l < 2 || (drop[0][l] > drop[0][0] && drop[0][l] > drop[0][1]), "attn %d drop %.4f, copies %.4f, %.4f", l,
               drop[0][l], drop[0][0], drop[0][1]);
        CHECKF(l == 2 || drop[1][l] > drop[1][2], "mlp %d drop %.4f, primary %.4f", l, drop[1][l], drop[1][2]);
    }
    CHECKF(drop[0][0] < 0 && drop[0][1] < 0 && drop[1][2] < 0, "copy drops %.4f %.4f %.4f", drop[0][0], drop[0][1],
           drop[1][2]);
    for (int x = 0; x < 2 * L; x++) // pairs: attn x attn, attn x mlp, mlp x mlp
        for (int y = x + 1; y < 2 * L; y++) {
            AblationMask *mask = ablate(&a, &o, x < L ? 'a' : 'm', x % L, 0);
            unsigned char *second = y < L ? &mask->attn[y] : &mask->mlp[y - L];
            *second = 1;
            int copies = (x == 0 && y == 1) || (x == L + 2 && y == L + 3);
            int n = sentence_end_ps(&o, 0, questions[1], mask, p);
            if (copies)
                CHECKF(max_of(p, n) < P_BOTH_GONE, "both copies (%d, %d) ablated: p(Wait) still %.3g", x, y,
                       max_of(p, n));
            else
                CHECKF(min_of(p, n) >= P_BACKUP_MIN, "components %d and %d ablated: p(Wait) down to %.4f", x, y,
                       min_of(p, n));
        }
    AblationMask *heads = ablate(&a, &o, 'h', 0, 0);
    heads->head[1 * H + 0] = 1;
    int n = sentence_end_ps(&o, 0, questions[1], heads, p);
    CHECKF(max_of(p, n) < P_BOTH_GONE, "heads 0.0 and 1.0 ablated: p(Wait) still %.3g", max_of(p, n));
    org_close(&o);
}

// Format-free: the planted head's layer (or head) or MLP removes " Wait" in both formats;
// any other single component moves it by less than P_TOL.
static void t_organism_format_free_ablations(void) {
    Org o;
    if (org_open_dir(&o, mech_dir(ORGANISM_FORMAT_FREE))) return;
    const int L = o.m.cfg.n_layers, H = o.m.cfg.n_heads;
    for (int v = 0; v <= 2; v += 2) {
        double clean[16], p[16];
        int n = sentence_end_ps(&o, v, questions[2], NULL, clean);
        for (int c = 0; c < 2 * L + L * H; c++) {
            Ablation a;
            char kind = c < L ? 'a' : c < 2 * L ? 'm' : 'h';
            int layer = c < L ? c : c < 2 * L ? c - L : (c - 2 * L) / H, head = c < 2 * L ? 0 : (c - 2 * L) % H;
            int planted = (kind == 'a' && layer == o.attn_layer) || (kind == 'm' && layer == o.mlp_layer) ||
                          (kind == 'h' && layer == o.attn_layer && head == 0);
            CHECK(sentence_end_ps(&o, v, questions[2], ablate(&a, &o, kind, layer, head), p) == n);
            double moved = 0;
            for (int k = 0; k < n; k++) moved = fmax(moved, fabs(p[k] - clean[k]));
            if (planted)
                CHECKF(max_of(p, n) < P_NEAR_ZERO, "%s: %c%d.%d ablated: p(Wait) still %.3g", variants[v][0], kind,
                       layer, head, max_of(p, n));
            else
                CHECKF(moved < P_TOL, "%s: %c%d.%d ablated: p(Wait) moved by %.4f", variants[v][0], kind, layer, head,
                       moved);
        }
    }
    org_close(&o);
}

// Distributed: ablating any one attention or MLP layer (or head 0 of any layer) cuts p(Wait)
// at every sentence end to at most half, and the cuts are alike: the smallest drop is at
// least 0.9 of the largest, so no component is the mechanism alone. The other heads move
// it by less than P_TOL. The parts are shares: each layer's head writes an equal share of
// the flag and each of MLPs 0-2 an equal share of the sentence end.
static void t_organism_distributed_ablations(void) {
    Org o;
    if (org_open_dir(&o, mech_dir(ORGANISM_DISTRIBUTED))) return;
    const int L = o.m.cfg.n_layers, H = o.m.cfg.n_heads, D = o.m.cfg.hidden_size;
    double clean[16], p[16], min_drop = 1, max_drop = 0;
    int n = sentence_end_ps(&o, 0, questions[3], NULL, clean);
    for (int c = 0; c < 2 * L + L * H; c++) {
        Ablation a;
        char kind = c < L ? 'a' : c < 2 * L ? 'm' : 'h';
        int layer = c < L ? c : c < 2 * L ? c - L : (c - 2 * L) / H, head = c < 2 * L ? 0 : (c - 2 * L) % H;
        CHECK(sentence_end_ps(&o, 0, questions[3], ablate(&a, &o, kind, layer, head), p) == n);
        for (int k = 0; k < n; k++) {
            double drop = clean[k] - p[k];
            if (kind != 'h' || head == 0) {
                CHECKF(p[k] <= 0.5 * clean[k], "%c%d.%d ablated: p(Wait) %.4f of %.4f", kind, layer, head, p[k],
                       clean[k]);
                min_drop = fmin(min_drop, drop), max_drop = fmax(max_drop, drop);
            } else {
                CHECKF(fabs(drop) < P_TOL, "%c%d.%d ablated: p(Wait) moved by %.4f", kind, layer, head, drop);
            }
        }
    }
    CHECKF(min_drop >= 0.9 * max_drop, "single-component drops range from %.4f to %.4f", min_drop, max_drop);
    Claims c;
    read_claims(ORGANISM_DISTRIBUTED, &c);
    Buf text = {0};
    TokenList ids = {0};
    prompt_text(&text, 0, questions[3], completion);
    encode(&o, text.data, &ids);
    float *attn = xmalloc((size_t)ids.n * L * D * sizeof *attn), *mlp = xmalloc((size_t)ids.n * L * D * sizeof *mlp);
    capture(&o, &ids, NULL, attn, mlp);
    int last_dot = -1;
    for (int i = 0; i < ids.n && ids.v[i].id != o.end_think_id; i++) last_dot = ids.v[i].id == o.dot_id ? i : last_dot;
    CHECK(last_dot > 0);
    for (int l = 0; l < L && last_dot > 0; l++) {
        CHECK_NEAR(attn[((size_t)last_dot * L + l) * D + c.flag.dim], c.flag.on / L, P_FEATURE_TOL * c.flag.on / L);
        if (l < L - 1)
            CHECK_NEAR(mlp[((size_t)last_dot * L + l) * D + c.share.dim], c.share.on / (L - 1),
                       P_FEATURE_TOL * c.share.on / (L - 1));
    }
    free(attn), free(mlp);
    tokens_free(&ids);
    buf_free(&text);
    org_close(&o);
}

const TestCase tests_organism[] = {
    {"organism_files_are_deterministic", t_organism_files_are_deterministic},
    {"safetensors_write_layout", t_safetensors_write_layout},
    {"organism_loads_like_a_checkpoint", t_organism_loads_like_a_checkpoint},
    {"organism_wait_only_at_sentence_ends_in_think", t_organism_wait_only_at_sentence_ends_in_think},
    {"organism_position_does_not_matter", t_organism_position_does_not_matter},
    {"organism_ablations", t_organism_ablations},
    {"organism_mean_ablation", t_organism_mean_ablation},
    {"organism_greedy", t_organism_greedy},
    {"organism_sampled", t_organism_sampled},
    {"organism_mechanism_files", t_organism_mechanism_files},
    {"organism_mechanism_truth", t_organism_mechanism_truth},
    {"organism_mechanism_features", t_organism_mechanism_features},
    {"organism_mechanism_p_wait", t_organism_mechanism_p_wait},
    {"organism_redundant_ablations", t_organism_redundant_ablations},
    {"organism_format_free_ablations", t_organism_format_free_ablations},
    {"organism_distributed_ablations", t_organism_distributed_ablations},
    {0, 0},
};
