// tests/test_model.c: the loader and forward pass against Hugging Face's own outputs
// (shared/reference/*/expected.json), the batching, threading and replay contracts,
// and damaged checkpoints.
#include "test.h"

#include <stdlib.h>

static const char *const ref_models[] = {"qwen2_tiny_f32", "qwen2_tiny_bf16_tied", "qwen3_tiny", "llama3_tiny"};
#define N_REF 4
#define ATOL_LOGITS 1e-4
#define ATOL_HIDDEN 2e-4
#define REF_MAX_SEQ 128 // longest reference sequence (80) plus the 24 greedy tokens
#define KERNELS(simd) (simd_names[simd])

// ----------------------------------------------------------------------------
// Reference data

typedef struct {
    char dir[1024];
    Buf text;  // expected.json
    Json j;
    Model m;
} Ref;

// Loads the model and its expected.json; 0, or -1 when the reference data is absent.
static int ref_open(Ref *r, const char *name) {
    char rel[256];
    snprintf(rel, sizeof rel, "reference/%s/expected.json", name);
    const char *path = shared_path(rel);
    memset(r, 0, sizeof *r);
    if (!path) return -1;
    snprintf(r->dir, sizeof r->dir, "%.*s", (int)(strlen(path) - strlen("/expected.json")), path);
    Err err = {0};
    CHECKF(read_file(path, &r->text, &err) == 0, "%s", err.msg);
    CHECKF(json_parse(&r->j, r->text.data, r->text.len, path, &err) == 0, "%s", err.msg);
    CHECKF(model_load(&r->m, r->dir, &err) == 0, "%s", err.msg);
    return 0;
}

static void ref_close(Ref *r) {
    model_free(&r->m);
    json_free(&r->j);
    buf_free(&r->text);
}

static int jkey(const Json *j, int obj, const char *key) { return json_key(j, obj, key); }

static int jat(const Json *j, int arr, int i) { // i-th element of an array
    if (arr < 0 || j->tok[arr].type != JSON_ARRAY || i >= j->tok[arr].size) return -1;
    int t = arr + 1;
    while (i-- > 0) t = j->tok[t].next;
    return t;
}

static int jfloats(const Json *j, int arr, float *out, int max) { // values of a number array
    int n = 0;
    if (arr < 0 || j->tok[arr].type != JSON_ARRAY) return -1;
    JSON_FOR_ARRAY(j, arr, i, t) {
        double v;
        if (n < max && json_number(j, t, &v) == 0) out[n] = (float)v;
        n++;
    }
    return n;
}

static int jints(const Json *j, int arr, int *out, int max) {
    int n = 0;
    if (arr < 0 || j->tok[arr].type != JSON_ARRAY) return -1;
    JSON_FOR_ARRAY(j, arr, i, t) {
        long long v = -1;
        json_int(j, t, &v);
        if (n < max) out[n] = (int)v;
        n++;
    }
    return n;
}

static double max_abs_diff(const float *a, const float *b, size_t n) {
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= worst)) worst = d; // NaN counts as worst
    }
    return worst;
}

// Runs ids in `slot` from position 0 in one call: logits (n, vocab) and, when asked,
// resid (n, L+1, hidden), attn_out / mlp_out (n, L, hidden); mask applies to every row.
static int run_seq(const Model *m, RunState *s, int slot, const int *ids, int n, const AblationMask *mask,
                   float *logits, float *resid, float *attn_out, float *mlp_out) {
    int *slots = xmalloc((size_t)n * sizeof(int)), *pos = xmalloc((size_t)n * sizeof(int)),
        *rows = xmalloc((size_t)n * sizeof(int));
    const AblationMask **masks = xmalloc((size_t)n * sizeof *masks);
    for (int i = 0; i < n; i++) {
        slots[i] = slot;
        pos[i] = rows[i] = i;
        masks[i] = mask;
    }
    Forward f = {.n = n,
                 .token = ids,
                 .slot = slots,
                 .pos = pos,
                 .mask = masks,
                 .logits = logits,
                 .logits_row = rows,
                 .resid = resid,
                 .attn_out = attn_out,
                 .mlp_out = mlp_out,
                 .capture_row = resid || attn_out || mlp_out ? rows : NULL};
    Err err = {0};
    int rc = model_forward(m, s, &f, &err);
    CHECKF(rc == 0, "%s", err.msg);
    free(slots);
    free(pos);
    free(rows);
    free(masks);
    return rc;
}

// One row at (slot, pos); logits (vocab) when non-NULL.
static int run_row(const Model *m, RunState *s, int slot, int token, int pos, const AblationMask *mask, float *logits) {
    int zero = 0;
    Forward f = {.n = 1, .token = &token, .slot = &slot, .pos = &pos, .mask = mask ? &mask : NULL, .logits = logits,
                 .logits_row = logits ? &zero : NULL};
    Err err = {0};
    int rc = model_forward(m, s, &f, &err);
    CHECKF(rc == 0, "%s", err.msg);
    return rc;
}

static RunState *new_state(const Model *m, int n_slots, int max_seq, int max_rows) {
    Err err = {0};
    RunState *s = runstate_new(m, n_slots, max_seq, max_rows, &err);
    CHECKF(s != NULL, "%s", err.msg);
    return s;
}

typedef struct {
    unsigned char attn[16], mlp[16], head[64];
    AblationMask mask;
} MaskStore;

static const AblationMask *mask_zero(MaskStore *ms, const char *component, int layer, int head, int n_heads) {
    memset(ms, 0, sizeof *ms);
    ms->mask = (AblationMask){.kind = ABLATE_ZERO, .attn = ms->attn, .mlp = ms->mlp, .head = ms->head};
    if (strcmp(component, "attn") == 0) ms->attn[layer] = 1;
    else if (strcmp(component, "mlp") == 0) ms->mlp[layer] = 1;
    else ms->head[layer * n_heads + head] = 1;
    return &ms->mask;
}

// ----------------------------------------------------------------------------
// Against Hugging Face

static void t_model_reference_config_weights_rope(void) {
    for (int r = 0; r < N_REF; r++) {
        Ref ref;
        if (ref_open(&ref, ref_models[r]) < 0) SKIP("shared/reference/%s is absent", ref_models[r]);
        const Json *j = &ref.j;
        const ModelConfig *c = &ref.m.cfg;
        int cs = jkey(j, 0, "config_summary");
        long long v[5];
        json_int(j, jkey(j, cs, "num_hidden_layers"), &v[0]);
        json_int(j, jkey(j, cs, "num_key_value_heads"), &v[1]);
        json_int(j, jkey(j, cs, "head_dim"), &v[2]);
        json_int(j, jkey(j, cs, "vocab_size"), &v[3]);
        json_int(j, jkey(j, cs, "intermediate_size"), &v[4]);
        CHECK(c->n_layers == v[0] && c->n_kv_heads == v[1] && c->head_dim == v[2] && c->vocab_size == v[3] &&
              c->intermediate_size == v[4]);
        int b[3];
        json_bool(j, jkey(j, cs, "tie_word_embeddings"), &b[0]);
        json_bool(j, jkey(j, cs, "qkv_bias"), &b[1]);
        json_bool(j, jkey(j, cs, "qk_norm"), &b[2]);
        CHECK(c->tie_word_embeddings == b[0] && c->qkv_bias == b[1] && c->qk_norm == b[2]);
        CHECK(c->n_eos == 0 && c->bos_token_id == -1);
        // Weights are mapped, not copied, except the AVX-512 kernels' packed matmul weights:
        // each matrix's rows rounded up to slivers of 32, its bytes to a 64-byte line.
        size_t packed = 0, eb = ref.m.lm_head.dtype == DT_F32 ? 4 : 2;
        const Tensor *mats[] = {&ref.m.layers[0].wq, &ref.m.layers[0].wk, &ref.m.layers[0].wv, &ref.m.layers[0].wo,
                                &ref.m.layers[0].w_gate, &ref.m.layers[0].w_up, &ref.m.layers[0].w_down};
        for (int i = 0; i < 7; i++)
            packed += ((size_t)(mats[i]->rows + 31) / 32 * 32 * mats[i]->cols * eb + 63) / 64 * 64;
        packed = packed * (size_t)c->n_layers +
                 ((size_t)(c->vocab_size + 31) / 32 * 32 * c->hidden_size * eb + 63) / 64 * 64;
        CHECKF(ref.m.bytes_mapped > 100000 && ref.m.bytes_allocated < 4096 + (ref.m.simd ? packed + 64 : 0),
               "%zu bytes allocated (packed weights: %zu)", ref.m.bytes_allocated, ref.m.simd ? packed : 0);
        CHECK(!ref.m.simd || ref.m.bytes_allocated >= packed);
        if (c->tie_word_embeddings) CHECK(ref.m.lm_head.data == ref.m.embed.data);

        float inv[64];
        int n = jfloats(j, jkey(j, jkey(j, 0, "rope"), "inv_freq_hf_f32"), inv, 64);
        CHECK(n == c->head_dim / 2);
        for (int i = 0; i < n && i < 64; i++) CHECK_NEAR(ref.m.inv_freq[i], inv[i], 1e-6 * inv[i]);

        // Checksums of the stored values of a few tensors, one of each kind.
        const LayerWeights *w0 = &ref.m.layers[0], *w1 = &ref.m.layers[1];
        struct { const char *name; const Tensor *t;
        } named[] = {
            {"model.embed_tokens.weight", &ref.m.embed},
            {"model.norm.weight", &ref.m.final_norm},
            {"lm_head.weight", &ref.m.lm_head},
            {"model.layers.0.self_attn.q_proj.weight", &w0->wq},
            {"model.layers.0.self_attn.k_proj.bias", &w0->bk},
            {"model.layers.0.self_attn.q_norm.weight", &w0->q_norm},
            {"model.layers.0.mlp.down_proj.weight", &w0->w_down},
            {"model.layers.0.self_attn.o_proj.weight", &w0->wo},
            {"model.layers.0.post_attention_layernorm.weight", &w0->mlp_norm},
            {"model.layers.1.mlp.up_proj.weight", &w1->w_up},
            {"model.layers.1.self_attn.v_proj.weight", &w1->wv},
            {"model.layers.1.input_layernorm.weight", &w1->attn_norm},
        };
        int checked = 0;
        int sums = jkey(j, 0, "weights_checksums");
        for (size_t k = 0; k < sizeof named / sizeof named[0]; k++) {
            int e = jkey(j, sums, named[k].name);
            if (e < 0) {
                CHECKF(!named[k].t->data || named[k].t == &ref.m.lm_head, "%s: %s is loaded but not stored",
                       ref_models[r], named[k].name);
                continue;
            }
            const Tensor *t = named[k].t;
            size_t count = (size_t)t->rows * t->cols;
            double sum = 0, sum_abs = 0, want_sum, want_abs;
            for (size_t i = 0; i < count; i++) {
                double x = tensor_at(t, i);
                sum += x;
                sum_abs += fabs(x);
            }
            json_number(j, jkey(j, e, "sum"), &want_sum);
            json_number(j, jkey(j, e, "sum_abs"), &want_abs);
            int shape[2], dims = jints(j, jkey(j, e, "shape"), shape, 2);
            CHECKF(dims == 2 ? t->rows == shape[0] && t->cols == shape[1] : t->rows == 1 && t->cols == shape[0],
                   "%s %s shape", ref_models[r], named[k].name);
            CHECKF(fabs(sum - want_sum) <= 1e-9 * want_abs && fabs(sum_abs - want_abs) <= 1e-9 * want_abs,
                   "%s %s: sum %.12g vs %.12g, |sum| %.12g vs %.12g", ref_models[r], named[k].name, sum, want_sum,
                   sum_abs, want_abs);
            float first[4];
            jfloats(j, jkey(j, e, "first"), first, 4);
            for (int i = 0; i < 4; i++) CHECK_NEAR(tensor_at(t, (size_t)i), first[i], 1e-6 * fabs(first[i]));
            checked++;
        }
        CHECKF(checked >= 7, "%s: only %d tensors checked", ref_models[r], checked);
        ref_close(&ref);
    }
}

static void t_model_reference_logits_and_hidden(void) {
    for (int r = 0; r < N_REF; r++) {
        Ref ref;
        if (ref_open(&ref, ref_models[r]) < 0) SKIP("shared/reference/%s is absent", ref_models[r]);
        const Json *j = &ref.j;
        int V = ref.m.cfg.vocab_size, D = ref.m.cfg.hidden_size, L = ref.m.cfg.n_layers;
        RunState *s = new_state(&ref.m, 1, REF_MAX_SEQ, REF_MAX_SEQ);
        int inputs = jkey(j, 0, "input_ids");
        CHECK(j->tok[inputs].size == 3);
        for (int simd = ref.m.simd; simd >= 0; simd--) // each SIMD level the CPU has, then portable C
        for (int seq = 0; seq < j->tok[inputs].size; seq++) {
            ref.m.simd = simd;
            int ids[REF_MAX_SEQ], T = jints(j, jat(j, inputs, seq), ids, REF_MAX_SEQ);
            float *logits = xmalloc((size_t)T * V * sizeof(float)),
                  *resid = xmalloc((size_t)T * (L + 1) * D * sizeof(float));
            float *want = xmalloc((size_t)V * sizeof(float));
            if (run_seq(&ref.m, s, 0, ids, T, NULL, logits, resid, NULL, NULL) == 0) {
                double worst_logit = 0, worst_hidden = 0;
                int lg = jat(j, jkey(j, 0, "logits"), seq), hs = jat(j, jkey(j, 0, "hidden_states"), seq);
                int last = jat(j, jkey(j, 0, "last_layer_output"), seq);
                for (int t = 0; t < T; t++) {
                    CHECK(jfloats(j, jat(j, lg, t), want, V) == V);
                    double d = max_abs_diff(logits + (size_t)t * V, want, (size_t)V);
                    if (d > worst_logit) worst_logit = d;
                    for (int l = 0; l <= L; l++) { // [0..L-1] from hidden_states, [L] (raw) from last_layer_output
                        int row = l < L ? jat(j, jat(j, hs, l), t) : jat(j, last, t);
                        CHECK(jfloats(j, row, want, D) == D);
                        d = max_abs_diff(resid + ((size_t)t * (L + 1) + l) * D, want, (size_t)D);
                        if (d > worst_hidden) worst_hidden = d;
                    }
                }
                CHECKF(worst_logit <= ATOL_LOGITS, "%s %s seq %d: logits differ by %g", ref_models[r], KERNELS(simd),
                       seq, worst_logit);
                CHECKF(worst_hidden <= ATOL_HIDDEN, "%s %s seq %d: hidden states differ by %g", ref_models[r],
                       KERNELS(simd), seq, worst_hidden);
            }
            free(logits);
            free(resid);
            free(want);
        }
        runstate_free(s);
        ref_close(&ref);
    }
}

// Greedy decoding with the KV cache, one row per step, as model.generate(do_sample=False).
static void t_model_reference_greedy(void) {
    for (int r = 0; r < N_REF; r++) {
        Ref ref;
        if (ref_open(&ref, ref_models[r]) < 0) SKIP("shared/reference/%s is absent", ref_models[r]);
        const Json *j = &ref.j;
        int V = ref.m.cfg.vocab_size, g = jkey(j, 0, "greedy");
        int ids[REF_MAX_SEQ], want[64], T = jints(j, jat(j, jkey(j, 0, "input_ids"), 0), ids, REF_MAX_SEQ);
        int n_new = jints(j, jkey(j, g, "new_tokens"), want, 64),
            step_logits = jkey(j, g, "logits_from_last_prompt_position");
        CHECK(n_new == 24);
        for (int simd = ref.m.simd; simd >= 0; simd--) {
            ref.m.simd = simd;
            RunState *s = new_state(&ref.m, 1, REF_MAX_SEQ, REF_MAX_SEQ);
            float *logits = xmalloc((size_t)T * V * sizeof(float)), *expect = xmalloc((size_t)V * sizeof(float));
            int ok = run_seq(&ref.m, s, 0, ids, T, NULL, logits, NULL, NULL, NULL) == 0;
            float *step = logits + (size_t)(T - 1) * V;
            int same = 0;
            double worst = 0;
            for (int k = 0; ok && k < n_new; k++) {
                jfloats(j, jat(j, step_logits, k), expect, V);
                double d = max_abs_diff(step, expect, (size_t)V);
                if (d > worst) worst = d;
                int best = 0;
                for (int v = 1; v < V; v++)
                    if (step[v] > step[best]) best = v;
                if (best != want[k]) break;
                same++;
                ok = run_row(&ref.m, s, 0, best, T + k, NULL, step) == 0;
            }
            CHECKF(same == n_new, "%s %s: greedy token %d differs", ref_models[r], KERNELS(simd), same);
            CHECKF(worst <= ATOL_LOGITS, "%s %s: step logits differ by %g", ref_models[r], KERNELS(simd), worst);
            free(logits);
            free(expect);
            runstate_free(s);
        }
        ref_close(&ref);
    }
}

// Zero ablation of attn / mlp / one head at every position, logits of the last position.
static void t_model_reference_ablations(void) {
    for (int r = 0; r < N_REF; r++) {
        Ref ref;
        if (ref_open(&ref, ref_models[r]) < 0) SKIP("shared/reference/%s is absent", ref_models[r]);
        const Json *j = &ref.j;
        int V = ref.m.cfg.vocab_size, ab = jkey(j, 0, "ablations");
        int ids[REF_MAX_SEQ], T = jints(j, jat(j, jkey(j, 0, "input_ids"), 0), ids, REF_MAX_SEQ);
        for (int simd = ref.m.simd; simd >= 0; simd--) {
            ref.m.simd = simd;
            RunState *s = new_state(&ref.m, 1, REF_MAX_SEQ, REF_MAX_SEQ);
            float *logits = xmalloc((size_t)T * V * sizeof(float)), *want = xmalloc((size_t)V * sizeof(float));
            run_seq(&ref.m, s, 0, ids, T, NULL, logits, NULL, NULL, NULL);
            jfloats(j, jkey(j, ab, "baseline_logits"), want, V);
            CHECK(max_abs_diff(logits + (size_t)(T - 1) * V, want, (size_t)V) <= ATOL_LOGITS);
            int results = jkey(j, ab, "results"), n_results = 0;
            JSON_FOR_ARRAY(j, results, i, e) {
                long long layer, head = 0;
                json_int(j, jkey(j, e, "layer"), &layer);
                json_int(j, jkey(j, e, "head"), &head);
                char *component = json_strdup(j, jkey(j, e, "component"));
                MaskStore ms;
                const AblationMask *mask = mask_zero(&ms, component, (int)layer, (int)head, ref.m.cfg.n_heads);
                run_seq(&ref.m, s, 0, ids, T, mask, logits, NULL, NULL, NULL);
                jfloats(j, jkey(j, e, "logits"), want, V);
                double d = max_abs_diff(logits + (size_t)(T - 1) * V, want, (size_t)V), change;
                json_number(j, jkey(j, e, "max_abs_change"), &change);
                CHECKF(d <= ATOL_LOGITS, "%s %s: ablating %s layer %lld head %lld: logits differ by %g", ref_models[r],
                       KERNELS(simd), component, layer, head, d);
                CHECK(change > 100 * ATOL_LOGITS); // the ablation matters, so the check above can fail
                free(component);
                n_results++;
            }
            CHECK(n_results == 6);
            free(logits);
            free(want);
            runstate_free(s);
        }
        ref_close(&ref);
    }
}

// ----------------------------------------------------------------------------
// Contracts of the batched forward pass

// Three sequences of different lengths in one batch, interleaved, split over two calls.
static void t_model_batch_mixed_lengths_equal_single(void) {
    Ref ref;
    if (ref_open(&ref, "qwen3_tiny") < 0) SKIP("shared/reference/qwen3_tiny is absent");
    const Json *j = &ref.j;
    int V = ref.m.cfg.vocab_size, inputs = jkey(j, 0, "input_ids"), ids[3][REF_MAX_SEQ], T[3], total = 0;
    float *single[3];
    RunState *s = new_state(&ref.m, 3, REF_MAX_SEQ, 3 * REF_MAX_SEQ);
    for (int q = 0; q < 3; q++) {
        T[q] = jints(j, jat(j, inputs, q), ids[q], REF_MAX_SEQ);
        total += T[q];
        single[q] = xmalloc((size_t)T[q] * V * sizeof(float));
        run_seq(&ref.m, s, 0, ids[q], T[q], NULL, single[q], NULL, NULL, NULL);
    }
    CHECK(T[0] != T[1] && T[1] != T[2]);
    int *token = xmalloc((size_t)total * sizeof(int)), *slot = xmalloc((size_t)total * sizeof(int)),
        *pos = xmalloc((size_t)total * sizeof(int));
    int *row = xmalloc((size_t)total * sizeof(int));
    float *batched = xmalloc((size_t)total * V * sizeof(float));
    for (int half = 0; half < 2; half++) { // first call: the first half of each sequence; second: the rest
        int n = 0;
        for (int t = 0; t < REF_MAX_SEQ; t++)
            for (int q = 2; q >= 0; q--) {
                int lo = half ? T[q] / 2 : 0, hi = half ? T[q] : T[q] / 2;
                if (t < lo || t >= hi) continue;
                token[n] = ids[q][t];
                slot[n] = q;
                pos[n] = t;
                row[n] = n;
                n++;
            }
        Forward f = {.n = n, .token = token, .slot = slot, .pos = pos, .logits = batched, .logits_row = row};
        Err err = {0};
        CHECKF(model_forward(&ref.m, s, &f, &err) == 0, "%s", err.msg);
        for (int i = 0; i < n; i++) {
            double d = max_abs_diff(batched + (size_t)i * V, single[slot[i]] + (size_t)pos[i] * V, (size_t)V);
            CHECKF(d <= 1e-5, "slot %d pos %d: batched differs by %g", slot[i], pos[i], d);
        }
    }
    for (int q = 0; q < 3; q++) free(single[q]);
    free(token);
    free(slot);
    free(pos);
    free(row);
    free(batched);
    runstate_free(s);
    ref_close(&ref);
}

// Prefill, captures and a few decode steps give identical bytes with 1 and 2 threads.
static void t_model_threads_identical(void) {
    Ref ref;
    if (ref_open(&ref, "llama3_tiny") < 0) SKIP("shared/reference/llama3_tiny is absent");
    int V = ref.m.cfg.vocab_size, D = ref.m.cfg.hidden_size, L = ref.m.cfg.n_layers;
    int ids[REF_MAX_SEQ], T = jints(&ref.j, jat(&ref.j, jkey(&ref.j, 0, "input_ids"), 1), ids, REF_MAX_SEQ);
    size_t n_logits = (size_t)(T + 3) * V, n_resid = (size_t)T * (L + 1) * D;
    float *out[2];
    for (int run = 0; run < 2; run++) {
        set_threads(run + 1);
        RunState *s = new_state(&ref.m, 1, REF_MAX_SEQ, REF_MAX_SEQ);
        out[run] = xcalloc(n_logits + n_resid, sizeof(float));
        run_seq(&ref.m, s, 0, ids, T, NULL, out[run], out[run] + n_logits, NULL, NULL);
        for (int k = 0; k < 3; k++) run_row(&ref.m, s, 0, ids[k], T + k, NULL, out[run] + (size_t)(T + k) * V);
        runstate_free(s);
    }
    set_threads(0);
    CHECK(memcmp(out[0], out[1], (n_logits + n_resid) * sizeof(float)) == 0);
    free(out[0]);
    free(out[1]);
    ref_close(&ref);
}

// The residual after each block is (x + attn_out) + mlp_out; the final logits of the last
// residual are the forward's logits; mean ablation writes the mean.
static void t_model_captures_and_mean_ablation(void) {
    Ref ref;
    if (ref_open(&ref, "qwen2_tiny_f32") < 0) SKIP("shared/reference/qwen2_tiny_f32 is absent");
    int V = ref.m.cfg.vocab_size, D = ref.m.cfg.hidden_size, L = ref.m.cfg.n_layers, H = ref.m.cfg.n_heads,
        hd = ref.m.cfg.head_dim;
    int ids[REF_MAX_SEQ], T = jints(&ref.j, jat(&ref.j, jkey(&ref.j, 0, "input_ids"), 0), ids, REF_MAX_SEQ);
    RunState *s = new_state(&ref.m, 1, REF_MAX_SEQ, REF_MAX_SEQ);
    float *logits = xmalloc((size_t)T * V * sizeof(float)), *resid = xmalloc((size_t)T * (L + 1) * D * sizeof(float));
    float *attn = xmalloc((size_t)T * L * D * sizeof(float)), *mlp = xmalloc((size_t)T * L * D * sizeof(float));
    run_seq(&ref.m, s, 0, ids, T, NULL, logits, resid, attn, mlp);
    int exact = 1;
    for (int t = 0; t < T; t++)
        for (int l = 0; l < L; l++)
            for (int d = 0; d < D; d++) {
                size_t at = (size_t)t * L + l;
                float x = resid[((size_t)t * (L + 1) + l) * D + d] + attn[at * D + d];
                x = x + mlp[at * D + d];
                exact &= x == resid[((size_t)t * (L + 1) + l + 1) * D + d];
            }
    CHECK(exact);
    float *final = xmalloc((size_t)V * sizeof(float));
    model_final_logits(&ref.m, resid + ((size_t)(T - 1) * (L + 1) + L) * D, final);
    CHECK(memcmp(final, logits + (size_t)(T - 1) * V, (size_t)V * sizeof(float)) == 0);

    // Mean ablation: the component's output becomes the mean; a zero mean is zero ablation.
    float *means = xcalloc((size_t)L * H * hd, sizeof(float)), *zero_logits = xmalloc((size_t)T * V * sizeof(float));
    for (size_t i = 0; i < (size_t)L * D; i++) means[i] = (float)(i % 7) * 0.25f - 0.5f;
    unsigned char attn_on[8] = {0}, mlp_on[8] = {0}, head_on[64] = {0};
    attn_on[1] = mlp_on[2] = 1;
    AblationMask mean_mask = {.kind = ABLATE_MEAN, .attn = attn_on, .mlp = mlp_on, .head = head_on,
                              .attn_mean = means, .mlp_mean = means, .head_mean = means};
    run_seq(&ref.m, s, 0, ids, T, &mean_mask, logits, resid, attn, mlp);
    CHECK(memcmp(attn + ((size_t)(T - 1) * L + 1) * D, means + D, (size_t)D * sizeof(float)) == 0);
    CHECK(memcmp(mlp + ((size_t)3 * L + 2) * D, means + 2 * D, (size_t)D * sizeof(float)) == 0);
    memset(means, 0, (size_t)L * H * hd * sizeof(float));
    attn_on[1] = mlp_on[2] = 0;
    head_on[1 * H + 2] = 1;
    run_seq(&ref.m, s, 0, ids, T, &mean_mask, logits, NULL, NULL, NULL);
    MaskStore ms;
    run_seq(&ref.m, s, 0, ids, T, mask_zero(&ms, "head", 1, 2, H), zero_logits, NULL, NULL, NULL);
    CHECK(memcmp(logits, zero_logits, (size_t)T * V * sizeof(float)) == 0);
    // A mean ablation without its means is refused.
    mean_mask.head_mean = NULL;
    int token = ids[0], slot = 0, pos = 0;
    const AblationMask *mp = &mean_mask;
    Forward f = {.n = 1, .token = &token, .slot = &slot, .pos = &pos, .mask = &mp};
    Err err = {0};
    CHECK(model_forward(&ref.m, s, &f, &err) == -1 && strstr(err.msg, "mean"));
    free(means);
    free(zero_logits);
    free(final);
    free(logits);
    free(resid);
    free(attn);
    free(mlp);
    runstate_free(s);
    ref_close(&ref);
}

// Replay from layer l of the clean residual reproduces the clean logits and leaves the cache
// alone; ablating at one position by replay equals a full pass that ablates only that row.
static void t_model_replay(void) {
    Ref ref;
    if (ref_open(&ref, "qwen3_tiny") < 0) SKIP("shared/reference/qwen3_tiny is absent");
    const Json *j = &ref.j;
    int V = ref.m.cfg.vocab_size, D = ref.m.cfg.hidden_size, L = ref.m.cfg.n_layers, H = ref.m.cfg.n_heads;
    int ids[REF_MAX_SEQ], T = jints(j, jat(j, jkey(j, 0, "input_ids"), 0), ids, REF_MAX_SEQ), p = T - 1;
    RunState *s = new_state(&ref.m, 1, REF_MAX_SEQ, REF_MAX_SEQ);
    float *logits = xmalloc((size_t)T * V * sizeof(float)), *resid = xmalloc((size_t)T * (L + 1) * D * sizeof(float));
    float *out = xmalloc((size_t)(L + 8) * V * sizeof(float)), *cap = xmalloc((size_t)L * (L + 1) * D * sizeof(float));
    run_seq(&ref.m, s, 0, ids, T, NULL, logits, resid, NULL, NULL);
    const float *clean = logits + (size_t)p * V, *clean_resid = resid + (size_t)p * (L + 1) * D;

    // first_layer is per call: one call per layer.
    for (int l = 1; l <= L; l++) {
        int zero = 0, slot = 0;
        for (size_t i = 0; i < (size_t)(L + 1) * D; i++) cap[i] = -7.0f;
        Forward f = {.n = 1,
                     .slot = &slot,
                     .pos = &p,
                     .first_layer = l,
                     .x_in = clean_resid + (size_t)l * D,
                     .replay = 1,
                     .logits = out,
                     .logits_row = &zero,
                     .resid = cap,
                     .capture_row = &zero};
        Err err = {0};
        CHECKF(model_forward(&ref.m, s, &f, &err) == 0, "%s", err.msg);
        CHECKF(max_abs_diff(out, clean, (size_t)V) <= 1e-5, "replay from layer %d: %g", l,
               max_abs_diff(out, clean, (size_t)V));
        CHECK(cap[0] == -7.0f && cap[(size_t)l * D] == clean_resid[(size_t)l * D]); // untouched below first_layer
        CHECK(max_abs_diff(cap + (size_t)L * D, clean_resid + (size_t)L * D, (size_t)D) <= 1e-5);
    }

    // Ablations at position p only: many masks in one replay batch versus full passes.
    struct {
        const char *component;
        int layer, head;
    } cases[] = {
        {"mlp", 2, 0}, {"mlp", 0, 0}, {"head", 0, 1}, {"attn", 1, 0}, {"attn", 0, 0}}; // last changes later keys
    enum { N_CASES = sizeof cases / sizeof cases[0] };
    MaskStore ms[N_CASES];
    const AblationMask *masks[N_CASES], **full_masks = xcalloc((size_t)T, sizeof *full_masks);
    int slots[N_CASES] = {0}, pos[N_CASES], tokens[N_CASES], rows[N_CASES];
    for (int c = 0; c < N_CASES; c++) {
        masks[c] = mask_zero(&ms[c], cases[c].component, cases[c].layer, cases[c].head, H);
        pos[c] = p;
        tokens[c] = ids[p];
        rows[c] = c;
    }
    Forward f = {.n = N_CASES,
                 .token = tokens,
                 .slot = slots,
                 .pos = pos,
                 .mask = masks,
                 .replay = 1,
                 .logits = out,
                 .logits_row = rows};
    Err err = {0};
    float *full = xmalloc((size_t)T * V * sizeof(float));
    CHECKF(model_forward(&ref.m, s, &f, &err) == 0, "%s", err.msg);
    for (int c = 0; c < N_CASES; c++) {
        RunState *s2 = new_state(&ref.m, 1, REF_MAX_SEQ, REF_MAX_SEQ);
        int *slot0 = xcalloc((size_t)T, sizeof(int)), *pos_all = xmalloc((size_t)T * sizeof(int)),
            *row_all = xmalloc((size_t)T * sizeof(int));
        for (int t = 0; t < T; t++) {
            pos_all[t] = row_all[t] = t;
            full_masks[t] = t == p ? masks[c] : NULL;
        }
        Forward g = {.n = T,
                     .token = ids,
                     .slot = slot0,
                     .pos = pos_all,
                     .mask = full_masks,
                     .logits = full,
                     .logits_row = row_all};
        CHECKF(model_forward(&ref.m, s2, &g, &err) == 0, "%s", err.msg);
        double d = max_abs_diff(out + (size_t)c * V, full + (size_t)p * V, (size_t)V);
        CHECKF(d <= 1e-5, "%s layer %d at one position: replay differs from full pass by %g", cases[c].component,
               cases[c].layer, d);
        CHECK(max_abs_diff(out + (size_t)c * V, clean, (size_t)V) > 1e-3);
        free(slot0);
        free(pos_all);
        free(row_all);
        runstate_free(s2);
    }
    // The replays left the clean cache as it was: the next greedy step is still HF's.
    int g = jkey(j, 0, "greedy"), next[1];
    jints(j, jkey(j, g, "new_tokens"), next, 1);
    float *want = xmalloc((size_t)V * sizeof(float));
    jfloats(j, jat(j, jkey(j, g, "logits_from_last_prompt_position"), 1), want, V);
    run_row(&ref.m, s, 0, next[0], T, NULL, out);
    CHECK(max_abs_diff(out, want, (size_t)V) <= ATOL_LOGITS);
    // A replay at the last layer ablating attn at the last position equals HF's all-position ablation there.
    int ab = jkey(j, 0, "ablations");
    JSON_FOR_ARRAY(j, jkey(j, ab, "results"), i, e) {
        long long layer;
        json_int(j, jkey(j, e, "layer"), &layer);
        if (layer != L - 1 || !json_eq(j, jkey(j, e, "component"), "attn")) continue;
        MaskStore m1;
        const AblationMask *mk = mask_zero(&m1, "attn", L - 1, 0, H);
        int zero = 0, slot = 0;
        Forward r = {.n = 1,
                     .slot = &slot,
                     .pos = &p,
                     .mask = &mk,
                     .first_layer = L - 1,
                     .x_in = clean_resid + (size_t)(L - 1) * D,
                     .replay = 1,
                     .logits = out,
                     .logits_row = &zero};
        CHECKF(model_forward(&ref.m, s, &r, &err) == 0, "%s", err.msg);
        jfloats(j, jkey(j, e, "logits"), want, V);
        CHECK(max_abs_diff(out, want, (size_t)V) <= ATOL_LOGITS);
    }
    free(want);
    free(full);
    free(full_masks);
    free(out);
    free(cap);
    free(logits);
    free(resid);
    runstate_free(s);
    ref_close(&ref);
}

// Starting a pass at layer l from the clean residual, ablating a component of layer l
// at every position, gives bitwise the logits of the full ablated pass and leaves the
// cache as the full pass would: the next token's logits agree too.
static void t_model_resume_from_layer(void) {
    Ref ref;
    if (ref_open(&ref, "qwen2_tiny_f32") < 0) SKIP("shared/reference/qwen2_tiny_f32 is absent");
    const Json *j = &ref.j;
    int V = ref.m.cfg.vocab_size, D = ref.m.cfg.hidden_size, L = ref.m.cfg.n_layers, H = ref.m.cfg.n_heads;
    int ids[REF_MAX_SEQ], T = jints(j, jat(j, jkey(j, 0, "input_ids"), 0), ids, REF_MAX_SEQ) - 1, next = ids[T];
    RunState *s = new_state(&ref.m, 1, REF_MAX_SEQ, REF_MAX_SEQ),
             *s_full = new_state(&ref.m, 1, REF_MAX_SEQ, REF_MAX_SEQ);
    float *resid = xmalloc((size_t)T * (L + 1) * D * sizeof(float)), *x_in = xmalloc((size_t)T * D * sizeof(float));
    float *full = xmalloc((size_t)(T + 1) * V * sizeof(float)), *resumed = xmalloc((size_t)(T + 1) * V * sizeof(float));
    run_seq(&ref.m, s, 0, ids, T, NULL, full, resid, NULL, NULL);
    int *slot = xcalloc((size_t)T, sizeof(int)), *pos = xmalloc((size_t)T * sizeof(int));
    const AblationMask **masks = xmalloc((size_t)T * sizeof *masks);
    for (int t = 0; t < T; t++) pos[t] = t;
    for (int k = 0; k < 2 * L;
         k++) { // layers in increasing order, as the scan goes: each pass overwrites the last one's cache
        int l = k / 2;
        MaskStore ms;
        const AblationMask *mk = mask_zero(&ms, k % 2 ? "mlp" : "attn", l, 0, H);
        run_seq(&ref.m, s_full, 0, ids, T, mk, full, NULL, NULL, NULL);
        run_row(&ref.m, s_full, 0, next, T, mk, full + (size_t)T * V);
        for (int t = 0; t < T; t++) {
            masks[t] = mk;
            memcpy(x_in + (size_t)t * D, resid + ((size_t)t * (L + 1) + l) * D, (size_t)D * sizeof(float));
        }
        Forward f = {.n = T,
                     .slot = slot,
                     .pos = pos,
                     .mask = masks,
                     .first_layer = l,
                     .x_in = x_in,
                     .logits = resumed,
                     .logits_row = pos};
        Err err = {0};
        CHECKF(model_forward(&ref.m, s, &f, &err) == 0, "%s", err.msg);
        run_row(&ref.m, s, 0, next, T, mk, resumed + (size_t)T * V);
        CHECKF(memcmp(resumed, full, (size_t)T * V * sizeof(float)) == 0,
               "%s %d: resumed pass differs from the full pass", k % 2 ? "mlp" : "attn", l);
        CHECKF(memcmp(resumed + (size_t)T * V, full + (size_t)T * V, (size_t)V * sizeof(float)) == 0,
               "%s %d: the next token after a resumed pass differs", k % 2 ? "mlp" : "attn", l);
    }
    free(slot);
    free(pos);
    free(masks);
    free(resid);
    free(x_in);
    free(full);
    free(resumed);
    runstate_free(s);
    runstate_free(s_full);
    ref_close(&ref);
}

static void t_model_forward_rejects_bad_calls(void) {
    Ref ref;
    if (ref_open(&ref, "qwen2_tiny_bf16_tied") < 0) SKIP("shared/reference/qwen2_tiny_bf16_tied is absent");
    RunState *s = new_state(&ref.m, 2, 8, 4);
    CHECK(runstate_bytes(s) >= 2 * 8 * model_kv_bytes_per_token(&ref.m));
    int token[5] = {1, 2, 3, 4, 5}, slot[5] = {0}, pos[5] = {0, 1, 2, 3, 4};
    Err err = {0};
    Forward f = {.n = 5, .token = token, .slot = slot, .pos = pos};
    CHECK(model_forward(&ref.m, s, &f, &err) == -1 && strstr(err.msg, "rows")); // more rows than max_rows
    f.n = 1;
    pos[0] = 3;
    CHECK(model_forward(&ref.m, s, &f, &err) == -1 && strstr(err.msg, "cached")); // positions 0..2 not there
    pos[0] = 8;
    CHECK(model_forward(&ref.m, s, &f, &err) == -1 && err.code == EXIT_BAD_INPUT); // past max_seq
    pos[0] = 0;
    token[0] = ref.m.cfg.vocab_size;
    CHECK(model_forward(&ref.m, s, &f, &err) == -1 && strstr(err.msg, "token id") && err.code == EXIT_BAD_INPUT);
    token[0] = 1;
    slot[0] = 2;
    CHECK(model_forward(&ref.m, s, &f, &err) == -1 && strstr(err.msg, "slot"));
    slot[0] = 0;
    f.n = 2; // two rows writing slot 0 position 0
    pos[1] = 0;
    CHECK(model_forward(&ref.m, s, &f, &err) == -1 && strstr(err.msg, "same call"));
    pos[1] = 1;
    CHECK(model_forward(&ref.m, s, &f, &err) == 0);
    f.n = 1;
    f.first_layer = 1;
    CHECK(model_forward(&ref.m, s, &f, &err) == -1 && strstr(err.msg, "x_in"));
    runstate_free(s);
    ref_close(&ref);
}

// ----------------------------------------------------------------------------
// Damaged checkpoints: each is a copy of a reference model with one thing broken.

// Copies the model files of reference/NAME into a fresh directory; NULL when absent.
static const char *copy_model(const char *name) {
    char rel[256];
    snprintf(rel, sizeof rel, "reference/%s", name);
    const char *src = shared_path(rel);
    if (!src) return NULL;
    static char dst[1024];
    snprintf(dst, sizeof dst, "%s", test_tmpdir());
    const char *files[] = {"config.json", "model.safetensors", "model.safetensors.index.json",
                           "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char from[1100], to[1100];
        snprintf(from, sizeof from, "%s/%s", src, files[i]);
        snprintf(to, sizeof to, "%s/%s", dst, files[i]);
        Err err = {0};
        if (path_exists(from)) CHECKF(copy_file_atomic(from, to, &err) == 0, "%s", err.msg);
    }
    return dst;
}

// text with its first `from` replaced by `to` into out; 0, or -1 when from is absent.
static int replace_first(Buf *out, const char *text, size_t len, const char *from, const char *to) {
    char *copy = xstrndup(text, len), *at = strstr(copy, from);
    if (at) {
        buf_append(out, copy, (size_t)(at - copy));
        buf_puts(out, to);
        buf_append(out, at + strlen(from), len - (size_t)(at - copy) - strlen(from));
    }
    free(copy);
    return at ? 0 : -1;
}

// Replaces the first `from` in the text of DIR/FILE by `to`.
static void edit_text(const char *dir, const char *file, const char *from, const char *to) {
    char path[1100];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    Buf b = {0}, out = {0};
    Err err = {0};
    CHECKF(read_file(path, &b, &err) == 0, "%s", err.msg);
    CHECKF(replace_first(&out, b.data, b.len, from, to) == 0, "'%s' not in %s", from, path);
    CHECK(write_file_atomic(path, out.data, out.len, &err) == 0);
    buf_free(&b);
    buf_free(&out);
}

// Replaces the first `from` in the JSON header of DIR/FILE by `to`, keeping the data.
static void edit_header(const char *dir, const char *file, const char *from, const char *to) {
    char path[1100];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    Buf b = {0}, h = {0}, out = {0};
    Err err = {0};
    CHECKF(read_file(path, &b, &err) == 0, "%s", err.msg);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | (unsigned char)b.data[i];
    CHECKF(replace_first(&h, b.data + 8, (size_t)n, from, to) == 0, "'%s' not in the header of %s", from, path);
    while (h.len % 8) buf_putc(&h, ' ');
    unsigned char len[8];
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)((uint64_t)h.len >> (8 * i));
    buf_append(&out, len, 8);
    buf_append(&out, h.data, h.len);
    buf_append(&out, b.data + 8 + n, b.len - 8 - (size_t)n);
    CHECK(write_file_atomic(path, out.data, out.len, &err) == 0);
    buf_free(&b);
    buf_free(&h);
    buf_free(&out);
}

static void truncate_file(const char *dir, const char *file, size_t keep) {
    char path[1100];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    Buf b = {0};
    Err err = {0};
    CHECK(read_file(path, &b, &err) == 0);
    CHECK(write_file_atomic(path, b.data, keep < b.len ? keep : b.len, &err) == 0);
    buf_free(&b);
}

// model_load fails with exit code 2 and a message holding each of the patterns.
static void expect_load_error(const char *dir, const char *what, const char *p1, const char *p2) {
    Model m;
    Err err = {0};
    int rc = model_load(&m, dir, &err);
    CHECKF(rc == -1, "%s: loaded", what);
    if (rc == 0) {
        model_free(&m);
        return;
    }
    CHECKF(err.code == EXIT_BAD_INPUT, "%s: code %d: %s", what, err.code, err.msg);
    CHECKF(strstr(err.msg, p1) && (!p2 || strstr(err.msg, p2)), "%s: message '%s' lacks '%s' / '%s'", what, err.msg, p1,
           p2 ? p2 : "");
}

static void t_model_bad_safetensors(void) {
    const char *d = copy_model("qwen2_tiny_f32");
    if (!d) SKIP("shared/reference/qwen2_tiny_f32 is absent");
    truncate_file(d, "model.safetensors", 720000 - 100);
    expect_load_error(d, "truncated", "model.safetensors: tensor 'model.norm.weight': data_offsets", "out of range");
    d = copy_model("qwen2_tiny_f32");
    truncate_file(d, "model.safetensors", 5);
    expect_load_error(d, "5-byte file", "model.safetensors: truncated", NULL);
    d = copy_model("qwen2_tiny_f32");
    truncate_file(d, "model.safetensors", 2000);
    expect_load_error(d, "header cut", "model.safetensors: header length 3960 runs past the end", NULL);
    d = copy_model("qwen2_tiny_f32");
    edit_header(d, "model.safetensors", "\"data_offsets\":[0,98304]", "\"data_offsets\":[0,98304000]");
    expect_load_error(d, "offset past the end", "tensor 'lm_head.weight': data_offsets [0, 98304000] out of range",
                      NULL);
    d = copy_model("qwen2_tiny_f32");
    edit_header(d, "model.safetensors", "\"data_offsets\":[98304,196608]", "\"data_offsets\":[0,98304]");
    expect_load_error(d, "overlap",
                      "model.safetensors: tensors 'lm_head.weight' and 'model.embed_tokens.weight' overlap", NULL);
    d = copy_model("qwen2_tiny_f32");
    edit_header(d, "model.safetensors", "\"shape\":[384,64]", "\"shape\":[384,63]");
    expect_load_error(d, "size != shape x dtype",
                      "tensor 'lm_head.weight': data_offsets hold 98304 bytes but shape x F32 needs 96768", NULL);
    d = copy_model("qwen2_tiny_f32");
    edit_header(d, "model.safetensors", "\"dtype\":\"F32\"", "\"dtype\":\"F31\"");
    expect_load_error(d, "unknown dtype", "model.safetensors: tensor 'lm_head.weight': unknown dtype 'F31'", NULL);
    d = copy_model("qwen2_tiny_f32");
    edit_header(d, "model.safetensors", "\"dtype\":\"F32\"", "\"dtype\":\"I32\"");
    expect_load_error(d, "unsupported dtype", "tensor 'lm_head.weight': dtype I32 is not supported", NULL);
    d = copy_model("qwen2_tiny_f32");
    edit_header(d, "model.safetensors", "\"model.norm.weight\"", "\"model.norm.weighs\"");
    expect_load_error(d, "missing tensor", "model.safetensors: tensor 'model.norm.weight' is missing", NULL);
    d = copy_model("qwen2_tiny_f32");
    edit_header(d, "model.safetensors", "\"model.layers.0.mlp.down_proj.weight\":{\"dtype\":\"F32\",\"shape\":[64,160]",
                "\"model.layers.0.mlp.down_proj.weight\":{\"dtype\":\"F32\",\"shape\":[160,64]");
    expect_load_error(d, "transposed",
                      "tensor 'model.layers.0.mlp.down_proj.weight': shape [160, 64], expected [64, 160]", NULL);
    d = copy_model("qwen2_tiny_f32");
    edit_header(d, "model.safetensors", "{\"__metadata__\"", "[\"__metadata__\"");
    expect_load_error(d, "header not JSON", "model.safetensors:1: invalid JSON", NULL);
}

// transformers 5 writes RoPE as one rope_parameters object: the same model either way.
static void t_model_rope_parameters(void) {
    const char *d = copy_model("qwen2_tiny_f32");
    if (!d) SKIP("shared/reference/qwen2_tiny_f32 is absent");
    Model a, b;
    Err err = {0};
    CHECKF(model_load(&a, d, &err) == 0, "%s", err.msg);
    edit_text(d, "config.json", "\"rope_scaling\": null,",
              "\"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 10000.0},");
    edit_text(d, "config.json", "\"rope_theta\": 10000.0,", "");
    CHECKF(model_load(&b, d, &err) == 0, "%s", err.msg);
    CHECK(a.cfg.rope_theta == b.cfg.rope_theta && a.cfg.rope_theta == 10000.0f);
    for (int k = 0; k < a.cfg.head_dim / 2; k++) CHECK(a.inv_freq[k] == b.inv_freq[k]);
    model_free(&a);
    model_free(&b);
}

static void t_model_bad_config_and_shards(void) {
    const char *d = copy_model("qwen2_tiny_f32");
    if (!d) SKIP("shared/reference/qwen2_tiny_f32 is absent");
    edit_text(d, "config.json", "\"intermediate_size\": 160", "\"intermediate_size\": 128");
    expect_load_error(
        d, "config shape",
        "model.safetensors: tensor 'model.layers.0.mlp.gate_proj.weight': shape [160, 64], expected [128, 64]", NULL);
    d = copy_model("qwen2_tiny_f32");
    edit_text(d, "config.json", "Qwen2ForCausalLM", "GPT2LMHeadModel");
    expect_load_error(d, "architecture", "config.json:3: unsupported architecture 'GPT2LMHeadModel'", NULL);
    d = copy_model("qwen2_tiny_f32");
    edit_text(d, "config.json", "\"rope_scaling\": null",
              "\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0}");
    expect_load_error(d, "rope scaling", "config.json", "rope_scaling rope_type 'yarn' is not implemented");
    d = copy_model("qwen2_tiny_f32");
    edit_text(d, "config.json", "\"rope_theta\": 10000.0,", "");
    expect_load_error(d, "no rope_theta", "config.json: 'rope_theta' is missing", NULL);
    d = copy_model("qwen2_tiny_f32");
    edit_text(d, "config.json", "\"rope_scaling\": null,",
              "\"rope_parameters\": {\"rope_type\": \"linear\", \"factor\": 2.0},");
    expect_load_error(d, "rope_parameters type", "config.json",
                      "rope_parameters rope_type 'linear' is not implemented");
    d = copy_model("qwen2_tiny_f32");
    edit_text(d, "config.json", "\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3");
    expect_load_error(d, "heads", "config.json: num_attention_heads 4 is not a multiple of num_key_value_heads 3",
                      NULL);
    d = copy_model("qwen2_tiny_f32");
    edit_text(d, "config.json", "\"num_attention_heads\": 4", "\"num_attention_heads\": 128");
    expect_load_error(d, "derived head_dim 0", "config.json: head_dim 0 must be even and positive", NULL);
    d = copy_model("qwen2_tiny_f32");
    edit_text(d, "config.json", "\"hidden_size\": 64,", "");
    expect_load_error(d, "missing key", "config.json: 'hidden_size' is missing", NULL);
    d = copy_model("qwen2_tiny_f32");
    edit_text(d, "config.json", "\"use_sliding_window\": false", "\"use_sliding_window\": true");
    expect_load_error(d, "sliding window", "use_sliding_window true is not supported", NULL);
    d = copy_model("qwen2_tiny_f32");
    char path[1100];
    snprintf(path, sizeof path, "%s/config.json", d);
    remove(path);
    expect_load_error(d, "no config", "no config.json", NULL);

    d = copy_model("qwen2_tiny_bf16_tied");
    snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", d);
    remove(path);
    expect_load_error(d, "missing shard", "shard 'model-00002-of-00002.safetensors' (listed in", NULL);
    d = copy_model("qwen2_tiny_bf16_tied");
    edit_text(d, "model.safetensors.index.json", "\"model.embed_tokens.weight\": \"model-00001-of-00002.safetensors\"",
              "\"model.embed_tokens.weight\": \"model-00002-of-00002.safetensors\"");
    expect_load_error(d, "index names the wrong shard",
                      "tensor 'model.embed_tokens.weight' is not in model-00002-of-00002.safetensors", NULL);
    d = copy_model("qwen2_tiny_bf16_tied");
    edit_header(d, "model-00002-of-00002.safetensors", "\"model.norm.weight\"", "\"model.norm.weighs\"");
    edit_text(d, "model.safetensors.index.json", "\"model.norm.weight\"", "\"model.norm.weighs\"");
    expect_load_error(d, "missing tensor, sharded",
                      "model.safetensors.index.json: tensor 'model.norm.weight' is missing", NULL);
    d = copy_model("qwen2_tiny_bf16_tied");
    edit_text(d, "model.safetensors.index.json", "\"model-00001-of-00002.safetensors\"",
              "\"../model-00001-of-00002.safetensors\"");
    expect_load_error(d, "shard outside the directory", "weight_map value is not a file name", NULL);
}

// eos ids come from config.json and generation_config.json (int, list or null), each once.
static void t_model_eos_ids(void) {
    const char *d = copy_model("llama3_tiny");
    if (!d) SKIP("shared/reference/llama3_tiny is absent");
    edit_text(d, "config.json", "\"eos_token_id\": null", "\"eos_token_id\": [7, 9]");
    char path[1100];
    snprintf(path, sizeof path, "%s/generation_config.json", d);
    Err err = {0};
    const char *gen = "{\"bos_token_id\": 3, \"eos_token_id\": [9, 11], \"do_sample\": true}";
    CHECK(write_file_atomic(path, gen, strlen(gen), &err) == 0);
    Model m;
    CHECKF(model_load(&m, d, &err) == 0, "%s", err.msg);
    CHECK(m.cfg.n_eos == 3 && m.cfg.eos_ids[0] == 7 && m.cfg.eos_ids[1] == 9 && m.cfg.eos_ids[2] == 11 &&
          m.cfg.bos_token_id == 3);
    model_free(&m);
    gen = "{\"eos_token_id\": \"x\"}";
    CHECK(write_file_atomic(path, gen, strlen(gen), &err) == 0);
    expect_load_error(d, "bad eos", "generation_config.json:1: eos_token_id must be", NULL);
}

// Random damage to a shard's header never crashes the loader: it loads (and runs) or says why.
static void t_model_fuzz_safetensors_header(void) {
    const char *d = copy_model("qwen2_tiny_bf16_tied");
    if (!d) SKIP("shared/reference/qwen2_tiny_bf16_tied is absent");
    char path[1100];
    snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", d);
    Buf orig = {0};
    Err err = {0};
    CHECK(read_file(path, &orig, &err) == 0);
    size_t header = 8 + ((unsigned char)orig.data[0] | (size_t)(unsigned char)orig.data[1] << 8);
    static const char alphabet[] = "{}[],:\"0123456789-eE. aFBI\\";
    Rng rng;
    rng_seed(&rng, 20251223);
    int loaded = 0, refused = 0;
    char *bytes = xmalloc(orig.len);
    for (int iter = 0; iter < 300; iter++) {
        memcpy(bytes, orig.data, orig.len);
        int n_edits = 1 + (int)rng_below(&rng, 3);
        for (int e = 0; e < n_edits; e++) {
            size_t at = rng_below(&rng, 10) == 0 ? rng_below(&rng, 8) : 8 + rng_below(&rng, header - 8);
            bytes[at] = alphabet[rng_below(&rng, sizeof alphabet - 1)];
        }
        size_t len = rng_below(&rng, 8) == 0 ? rng_below(&rng, orig.len) : orig.len;
        FILE *f = fopen(path, "wb");
        CHECK(f && fwrite(bytes, 1, len, f) == len);
        if (f) fclose(f);
        Model m;
        memset(&err, 0, sizeof err);
        if (model_load(&m, d, &err) == 0) {
            RunState *s = runstate_new(&m, 1, 4, 4, &err);
            int ids[4] = {1, 2, 3, 4};
            float *logits = xmalloc((size_t)4 * m.cfg.vocab_size * sizeof(float));
            if (s) run_seq(&m, s, 0, ids, 4, NULL, logits, NULL, NULL, NULL);
            free(logits);
            runstate_free(s);
            model_free(&m);
            loaded++;
        } else {
            CHECKF(err.code == EXIT_BAD_INPUT && err.msg[0], "iteration %d: code %d '%s'", iter, err.code, err.msg);
            refused++;
        }
    }
    CHECK(refused > 200 &&
          loaded + refused ==
              300); // most damage is caught; some edits (padding, a digit of a 1-D shape) are not damage
    free(bytes);
    buf_free(&orig);
}

// ----------------------------------------------------------------------------
// Batch invariance: bitwise, on random-weight models whose sizes are not multiples of
// the SIMD widths (hidden 96, intermediate 2100, head_dim 24, vocab 1001)

// One row's logits are bitwise the same alone and inside batches of 3, 8, 16 and 17 rows (at
// the front or the back, beside sequences of other lengths), with 1 and 2 threads, for
// prefill rows and decode rows, in every dtype and with both kernels. (16 decode rows and the
// 64 prefill rows of 3 sequences, target at the front, take the 16-row first tile.)
static void t_model_batch_invariance_bitwise(void) {
    const char *dtypes[] = {"bf16", "f16", "f32"};
    enum { P = 21, MAX_N = 17, MAX_SEQ = 32 };
    int sizes[] = {1, 3, 8, 16, 17};
    for (int dt = 0; dt < 3; dt++) {
        const char *dir = test_bench_model("tiny", dtypes[dt]);
        Model m;
        Err err = {0};
        if (!dir || model_load(&m, dir, &err) < 0) {
            CHECKF(0, "%s", err.msg);
            continue;
        }
        int V = m.cfg.vocab_size, prompt[MAX_N][P + 3], len[MAX_N];
        Rng rng;
        rng_seed(&rng, 99);
        for (int q = 0; q < MAX_N; q++) {
            len[q] = P - 2 + q % 5; // other sequences are 19..23 tokens long
            for (int t = 0; t < P + 3; t++) prompt[q][t] = (int)rng_below(&rng, (uint64_t)V);
        }
        int *token = xmalloc((size_t)MAX_N * (P + 3) * sizeof(int)),
            *slot = xmalloc((size_t)MAX_N * (P + 3) * sizeof(int));
        int *pos = xmalloc((size_t)MAX_N * (P + 3) * sizeof(int)),
            *row = xmalloc((size_t)MAX_N * (P + 3) * sizeof(int));
        float *alone = xmalloc((size_t)(P + 1) * V * sizeof(float)),
              *batch = xmalloc((size_t)MAX_N * (P + 3) * V * sizeof(float));
        for (int simd = m.simd; simd >= 0; simd--) {
            m.simd = simd;
            // The target alone: its prompt (P rows) in one call, then one decode row.
            RunState *s = new_state(&m, 1, MAX_SEQ, MAX_SEQ);
            int next = prompt[0][P];
            run_seq(&m, s, 0, prompt[0], P, NULL, alone, NULL, NULL, NULL);
            run_row(&m, s, 0, next, P, NULL, alone + (size_t)P * V);
            runstate_free(s);
            for (int si = 0; si < 5; si++)
                for (int threads = 1; threads <= 2; threads++)
                    for (int back = 0; back <= (sizes[si] > 1); back++) {
                        int n_seq = sizes[si], target = back ? n_seq - 1 : 0, n = 0;
                        set_threads(threads);
                        s = new_state(&m, n_seq, MAX_SEQ, MAX_N * (P + 3));
                        // Prefill: every sequence's prompt in one call, interleaved by position.
                        for (int t = 0; t < P + 3; t++)
                            for (int q = 0; q < n_seq; q++) {
                                int k = q == target ? 0 : q + 1 < MAX_N ? q + 1 : q, L_q = q == target ? P : len[k];
                                if (t >= L_q) continue;
                                token[n] = prompt[k][t], slot[n] = q, pos[n] = t, row[n] = n;
                                n++;
                            }
                        Forward f = {
                            .n = n, .token = token, .slot = slot, .pos = pos, .logits = batch, .logits_row = row};
                        CHECKF(model_forward(&m, s, &f, &err) == 0, "%s", err.msg);
                        int same = 1;
                        for (int i = 0; i < n; i++)
                            if (slot[i] == target)
                                same &= memcmp(batch + (size_t)i * V, alone + (size_t)pos[i] * V,
                                               (size_t)V * sizeof(float)) == 0;
                        // Decode: one row per sequence, each at its own position.
                        n = 0;
                        for (int q = 0; q < n_seq; q++) {
                            int k = q == target ? 0 : q + 1 < MAX_N ? q + 1 : q;
                            token[n] = q == target ? next : prompt[k][len[k] - 1], slot[n] = q,
                            pos[n] = q == target ? P : len[k], row[n] = n;
                            n++;
                        }
                        Forward g = {
                            .n = n, .token = token, .slot = slot, .pos = pos, .logits = batch, .logits_row = row};
                        CHECKF(model_forward(&m, s, &g, &err) == 0, "%s", err.msg);
                        same &=
                            memcmp(batch + (size_t)target * V, alone + (size_t)P * V, (size_t)V * sizeof(float)) == 0;
                        CHECKF(same, "%s %s: %d sequences (target at %d), %d threads: logits differ from the row alone",
                               dtypes[dt], KERNELS(simd), n_seq, target, threads);
                        runstate_free(s);
                    }
            set_threads(0);
        }
        // The two kernels agree to HF's tolerance with each other, not bitwise.
        free(token);
        free(slot);
        free(pos);
        free(row);
        free(alone);
        free(batch);
        model_free(&m);
    }
}

// The SIMD and portable kernels agree to HF's tolerances on every dtype, including a matmul
// over several packed column blocks and a part-filled sliver (intermediate 2100), over prefill
// and decode; the AVX2 kernels give the AVX-512 kernels' bits.
static void t_model_kernels_agree(void) {
    for (int k = 0; k < N_KERNEL_MODELS; k++) {
        const char *shape = kernel_models[k][0], *dtype = kernel_models[k][1], *dir = test_bench_model(shape, dtype);
        Model m;
        Err err = {0};
        if (!dir || model_load(&m, dir, &err) < 0) {
            CHECKF(0, "%s", err.msg);
            continue;
        }
        if (!m.simd) {
            model_free(&m);
            SKIP("this CPU has no AVX2 (or BT_NO_SIMD is set)");
        }
        int V = m.cfg.vocab_size, D = m.cfg.hidden_size, L = m.cfg.n_layers, T = 40, ids[40], best = m.simd;
        for (int t = 0; t < T; t++) ids[t] = (t * 101 + 3) % V;
        float *logits[3], *resid[3];
        size_t n_logits = (size_t)(T + 1) * V, n_resid = (size_t)T * (L + 1) * D;
        for (int simd = 0; simd <= best; simd++) {
            m.simd = simd;
            RunState *s = new_state(&m, 1, T + 1, T);
            logits[simd] = xmalloc(n_logits * sizeof(float));
            resid[simd] = xmalloc(n_resid * sizeof(float));
            run_seq(&m, s, 0, ids, T, NULL, logits[simd], resid[simd], NULL, NULL);
            run_row(&m, s, 0, ids[0], T, NULL, logits[simd] + (size_t)T * V);
            runstate_free(s);
        }
        double dl = max_abs_diff(logits[0], logits[best], n_logits), dh = max_abs_diff(resid[0], resid[best], n_resid);
        CHECKF(dl <= ATOL_LOGITS && dh <= ATOL_HIDDEN,
               "%s %s: %s and portable kernels differ by %g (logits), %g (hidden)", shape, dtype, KERNELS(best), dl, dh);
        CHECKF(dl > 0, "%s %s: kernels agree bitwise: is the %s path in use?", shape, dtype, KERNELS(best));
        if (best == SIMD_AVX512)
            CHECKF(memcmp(logits[SIMD_AVX2], logits[SIMD_AVX512], n_logits * sizeof(float)) == 0 &&
                       memcmp(resid[SIMD_AVX2], resid[SIMD_AVX512], n_resid * sizeof(float)) == 0,
                   "%s %s: the avx2 and avx512 kernels give different bits (logits by %g, hidden by %g)", shape, dtype,
                   max_abs_diff(logits[SIMD_AVX2], logits[SIMD_AVX512], n_logits),
                   max_abs_diff(resid[SIMD_AVX2], resid[SIMD_AVX512], n_resid));
        else if (k == 0)
            printf("     avx2 against avx512 bits not checked: this CPU has no AVX-512\n");
        for (int simd = 0; simd <= best; simd++) free(logits[simd]), free(resid[simd]);
        model_free(&m);
    }
}

// Final norm + lm_head of many residuals at once is bitwise the forward pass's logits.
static void t_model_final_logits_rows(void) {
    const char *dir = test_bench_model("tiny", "bf16");
    Model m;
    Err err = {0};
    if (!dir || model_load(&m, dir, &err) < 0) {
        CHECKF(0, "%s", err.msg);
        return;
    }
    int V = m.cfg.vocab_size, D = m.cfg.hidden_size, L = m.cfg.n_layers, T = 70, ids[70];
    for (int t = 0; t < T; t++) ids[t] = (t * 37 + 5) % V;
    for (int simd = m.simd; simd >= 0; simd--) {
        m.simd = simd;
        RunState *s = new_state(&m, 1, T, T);
        float *logits = xmalloc((size_t)T * V * sizeof(float)),
              *resid = xmalloc((size_t)T * (L + 1) * D * sizeof(float));
        float *rows = xmalloc((size_t)T * V * sizeof(float));
        run_seq(&m, s, 0, ids, T, NULL, logits, resid, NULL, NULL);
        model_final_logits_rows(&m, resid + (size_t)L * D, T, (size_t)(L + 1) * D,
                                rows); // more rows than one lm_head pass
        CHECKF(memcmp(rows, logits, (size_t)T * V * sizeof(float)) == 0, "%s: final logits of %d rows differ",
               KERNELS(simd), T);
        free(logits);
        free(resid);
        free(rows);
        runstate_free(s);
    }
    model_free(&m);
}

// The matmuls' unit order is a permutation whatever the unit and thread counts (a unit
// handed out twice or never would leave outputs unwritten), and spreads the first picks apart.
static void t_model_spread_unit(void) {
    for (int T = 1; T <= 8; T++)
        for (int n = 0; n <= 100; n++) {
            char seen[100] = {0};
            int bad = 0;
            for (int v = 0; v < n; v++) {
                int u = spread_unit(v, n, T);
                if (u < 0 || u >= n || seen[u]++) bad = 1;
                if (T == 1 && u != v) bad = 1;
            }
            CHECKF(!bad, "%d units, %d threads: not a permutation", n, T);
        }
    CHECK(spread_unit(1, 48, 2) == 24 && spread_unit(2, 48, 2) == 1 && spread_unit(2, 7, 3) == 5);
}

const TestCase tests_model[] = {
    {"model_reference_config_weights_rope", t_model_reference_config_weights_rope},
    {"model_reference_logits_and_hidden", t_model_reference_logits_and_hidden},
    {"model_reference_greedy", t_model_reference_greedy},
    {"model_reference_ablations", t_model_reference_ablations},
    {"model_batch_mixed_lengths_equal_single", t_model_batch_mixed_lengths_equal_single},
    {"model_threads_identical", t_model_threads_identical},
    {"model_spread_unit", t_model_spread_unit},
    {"model_captures_and_mean_ablation", t_model_captures_and_mean_ablation},
    {"model_replay", t_model_replay},
    {"model_resume_from_layer", t_model_resume_from_layer},
    {"model_forward_rejects_bad_calls", t_model_forward_rejects_bad_calls},
    {"model_bad_safetensors", t_model_bad_safetensors},
    {"model_bad_config_and_shards", t_model_bad_config_and_shards},
    {"model_rope_parameters", t_model_rope_parameters},
    {"model_eos_ids", t_model_eos_ids},
    {"model_fuzz_safetensors_header", t_model_fuzz_safetensors_header},
    {"model_batch_invariance_bitwise", t_model_batch_invariance_bitwise},
    {"model_final_logits_rows", t_model_final_logits_rows},
    {"model_kernels_agree", t_model_kernels_agree},
    {0, 0},
};
