// tests/test_grad.c: the gradient pass (attribution patching) against central finite
// differences of a double-precision forward written here, against model_forward's
// activations and exact ablations, across thread counts and kernels, and on the
// organism, whose planted components it must rank first.
#include "test.h"

#include <stdlib.h>

static const char *const ref_models[] = {"qwen2_tiny_f32", "qwen2_tiny_bf16_tied", "qwen3_tiny", "llama3_tiny"};
#define N_REF 4
#define FD_STEP 1e-4      // central differences: truncation ~ step^2, rounding ~ 1e-16 / step, both far below tolerance
#define FD_REL_TOL 1e-3   // |gradient - finite difference| / |finite difference| on the largest components
#define FD_MIN_SHARE 1e-3 // a checked coordinate's |gradient| is at least this share of its array's largest
#define LONG_SEQ 150      // > GRAD_ROWS (128): the row chunks of the gradient pass meet
#define KERNEL_REL_TOL 1e-3 // portable against AVX-512 kernels, relative to the largest |gradient| of an array
#define PLANTED_MIN_DROP 0.6931 // the planted MLP's estimate must at least halve p(Wait): ln 2
#define Z99 2.326347874   // one-sided 1% point of the standard normal

// ----------------------------------------------------------------------------
// Models and sequences

// Loads reference model `name` and the input ids of its expected.json (ids: 3 sequences).
static int ref_load(const char *name, Model *m, int ids[3][96], int n_ids[3]) {
    char rel[256];
    snprintf(rel, sizeof rel, "reference/%s/expected.json", name);
    const char *path = shared_path(rel);
    if (!path) return -1;
    char dir[1024];
    snprintf(dir, sizeof dir, "%.*s", (int)(strlen(path) - strlen("/expected.json")), path);
    Err err = {0};
    Buf text = {0};
    Json j = {0};
    CHECKF(model_load(m, dir, &err) == 0, "%s", err.msg);
    CHECKF(read_file(path, &text, &err) == 0 && json_parse(&j, text.data, text.len, path, &err) == 0, "%s", err.msg);
    int arr = json_key(&j, 0, "input_ids"), s = 0;
    CHECK(arr >= 0);
    JSON_FOR_ARRAY(&j, arr, i, seq) {
        n_ids[s] = 0;
        JSON_FOR_ARRAY(&j, seq, k, t) {
            long long v = 0;
            json_int(&j, t, &v);
            if (n_ids[s] < 96) ids[s][n_ids[s]++] = (int)v;
        }
        if (++s == 3) break;
    }
    json_free(&j);
    buf_free(&text);
    return 0;
}

static int argmax_of(const float *v, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

// model_forward over ids 0..n-1 in one call: logits (n, vocab), attn_out / mlp_out (n, L, hidden) when
// non-NULL; mask on every row.
static void forward_all(const Model *m, const int *ids, int n, const AblationMask *mask, float *logits, float *attn_out,
                        float *mlp_out) {
    Err err = {0};
    RunState *s = runstate_new(m, 1, n, n, &err);
    CHECKF(s != NULL, "%s", err.msg);
    if (!s) return;
    int *slot = xcalloc((size_t)n, sizeof *slot), *pos = xmalloc((size_t)n * sizeof *pos);
    const AblationMask **masks = xmalloc((size_t)n * sizeof *masks);
    for (int i = 0; i < n; i++) pos[i] = i, masks[i] = mask;
    Forward f = {.n = n, .token = ids, .slot = slot, .pos = pos, .mask = masks, .logits = logits, .logits_row = pos,
                 .attn_out = attn_out, .mlp_out = mlp_out, .capture_row = attn_out || mlp_out ? pos : NULL};
    CHECKF(model_forward(m, s, &f, &err) == 0, "%s", err.msg);
    free(slot), free(pos), free(masks);
    runstate_free(s);
}

static double log_softmax_at(const float *logits, int V, int token) { // as analysis.c's log_prob
    double max = logits[0], sum = 0;
    for (int v = 1; v < V; v++) max = logits[v] > max ? logits[v] : max;
    for (int v = 0; v < V; v++) sum += exp((double)logits[v] - max);
    return (double)logits[token] - max - log(sum);
}

// Every output of one gradient pass, allocated for the model and pred_pos.
typedef struct {
    Gradient g;
    double metric;
} Grads;

static void grads_alloc(Grads *r, const ModelConfig *c, const int *ids, int n, int pred_pos, int onset) {
    size_t rows = (size_t)pred_pos + 1, L = (size_t)c->n_layers, D = (size_t)c->hidden_size,
           Q = (size_t)c->n_heads * c->head_dim;
    memset(r, 0, sizeof *r);
    r->g = (Gradient){.token = ids, .n = n, .pred_pos = pred_pos, .onset_token_id = onset};
    r->g.grad_resid = xmalloc(rows * (L + 1) * D * sizeof(float));
    r->g.grad_attn = xmalloc(rows * L * D * sizeof(float));
    r->g.grad_mlp = xmalloc(rows * L * D * sizeof(float));
    r->g.grad_head = xmalloc(rows * L * Q * sizeof(float));
    r->g.attn_out = xmalloc(rows * L * D * sizeof(float));
    r->g.mlp_out = xmalloc(rows * L * D * sizeof(float));
    r->g.head_out = xmalloc(rows * L * Q * sizeof(float));
    r->g.score_attn = xmalloc(L * sizeof(double));
    r->g.score_mlp = xmalloc(L * sizeof(double));
    r->g.score_head = xmalloc(L * (size_t)c->n_heads * sizeof(double));
}

static void grads_free(Grads *r) {
    free(r->g.grad_resid), free(r->g.grad_attn), free(r->g.grad_mlp), free(r->g.grad_head);
    free(r->g.attn_out), free(r->g.mlp_out), free(r->g.head_out);
    free(r->g.score_attn), free(r->g.score_mlp), free(r->g.score_head);
}

static size_t keep_bytes = GRAD_KEEP_BYTES; // what run_grad passes

static int run_grad(const Model *m, Grads *r) {
    Err err = {0};
    GradState *gs = gradstate_new(m, r->g.pred_pos + 1, keep_bytes, &err);
    CHECKF(gs != NULL, "%s", err.msg);
    if (!gs) return -1;
    CHECK(gradstate_bytes(gs) == model_gradient_bytes(m, r->g.pred_pos + 1, keep_bytes));
    int rc = model_gradient(m, gs, &r->g, &err);
    CHECKF(rc == 0, "%s", err.msg);
    gradstate_free(gs);
    return rc;
}

// ----------------------------------------------------------------------------
// A double-precision forward of one sequence, for finite differences: the same
// architecture as model.c written plainly, every value a double, with one nudge added
// to one activation.

typedef struct {
    char kind;      // 'r' residual at a layer boundary, 'a' attention output, 'm' MLP output, 'h' heads; 0 none
    int layer, pos; // boundary 0..L for 'r', block 0..L-1 otherwise
    int index;      // value within the row (heads: h * head_dim + d)
    double delta;
} Nudge;

typedef struct {
    double *attn_norm, *wq, *wk, *wv, *bq, *bk, *bv, *q_norm, *k_norm, *wo, *mlp_norm, *w_gate, *w_up, *w_down;
} RefLayer;

typedef struct {
    const Model *m;
    RefLayer *layers; // (n_layers)
    double *embed, *final_norm, *lm_head;
} RefModel;

static double *to_double(const Tensor *t) {
    if (!t->data) return NULL;
    size_t n = (size_t)t->rows * t->cols;
    double *v = xmalloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++) v[i] = tensor_at(t, i);
    return v;
}

static void ref_model_init(RefModel *r, const Model *m) {
    r->m = m;
    r->layers = xcalloc((size_t)m->cfg.n_layers, sizeof *r->layers);
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const LayerWeights *w = &m->layers[l];
        RefLayer *d = &r->layers[l];
        d->attn_norm = to_double(&w->attn_norm), d->wq = to_double(&w->wq), d->wk = to_double(&w->wk),
        d->wv = to_double(&w->wv);
        d->bq = to_double(&w->bq), d->bk = to_double(&w->bk), d->bv = to_double(&w->bv);
        d->q_norm = to_double(&w->q_norm), d->k_norm = to_double(&w->k_norm), d->wo = to_double(&w->wo);
        d->mlp_norm = to_double(&w->mlp_norm), d->w_gate = to_double(&w->w_gate), d->w_up = to_double(&w->w_up);
        d->w_down = to_double(&w->w_down);
    }
    r->embed = to_double(&m->embed), r->final_norm = to_double(&m->final_norm), r->lm_head = to_double(&m->lm_head);
}

static void ref_model_free(RefModel *r) {
    for (int l = 0; l < r->m->cfg.n_layers; l++) {
        RefLayer *d = &r->layers[l];
        double *all[] = {d->attn_norm, d->wq,     d->wk, d->wv,       d->bq,     d->bk,   d->bv,
                         d->q_norm,    d->k_norm, d->wo, d->mlp_norm, d->w_gate, d->w_up, d->w_down};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
    }
    free(r->layers), free(r->embed), free(r->final_norm), free(r->lm_head);
}

static void rmsnorm_d(double *out, const double *x, const double *w, int n, double eps) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    double r = 1 / sqrt(ss / n + eps);
    for (int i = 0; i < n; i++) out[i] = w[i] * x[i] * r;
}

static void matvec_d(double *out, const double *w, const double *bias, const double *x, int rows, int cols) {
    for (int o = 0; o < rows; o++) {
        double s = bias ? bias[o] : 0;
        for (int i = 0; i < cols; i++) s += w[(size_t)o * cols + i] * x[i];
        out[o] = s;
    }
}

static void rope_d(double *v, int pos, const float *inv_freq, int hd) {
    for (int i = 0; i < hd / 2; i++) {
        double a = pos * (double)inv_freq[i], x1 = v[i], x2 = v[i + hd / 2];
        v[i] = x1 * cos(a) - x2 * sin(a);
        v[i + hd / 2] = x2 * cos(a) + x1 * sin(a);
    }
}

static void nudge_rows(const Nudge *nd, char kind, int layer, double *rows, int dim) {
    if (nd && nd->kind == kind && nd->layer == layer) rows[(size_t)nd->pos * dim + nd->index] += nd->delta;
}

// log p(onset) at position n-1 of ids 0..n-1, in double, with the nudge applied.
static double ref_metric(const RefModel *r, const int *ids, int n, int onset, const Nudge *nd) {
    const ModelConfig *c = &r->m->cfg;
    int D = c->hidden_size, L = c->n_layers, H = c->n_heads, KV = c->n_kv_heads, hd = c->head_dim, V = c->vocab_size;
    int q_dim = H * hd, kv_dim = KV * hd, inter = c->intermediate_size, group = H / KV;
    double eps = c->rms_norm_eps, scale = 1 / sqrt((double)hd);
    double *x = xmalloc((size_t)n * D * sizeof *x), *xn = xmalloc((size_t)n * D * sizeof *xn),
           *out = xmalloc((size_t)n * D * sizeof *out);
    double *q = xmalloc((size_t)n * q_dim * sizeof *q), *heads = xmalloc((size_t)n * q_dim * sizeof *heads);
    double *k = xmalloc((size_t)n * kv_dim * sizeof *k), *v = xmalloc((size_t)n * kv_dim * sizeof *v);
    double *gate = xmalloc((size_t)inter * sizeof *gate), *up = xmalloc((size_t)inter * sizeof *up),
           *p = xmalloc((size_t)n * sizeof *p);
    double *logits = xmalloc((size_t)V * sizeof *logits);
    for (int t = 0; t < n; t++) memcpy(x + (size_t)t * D, r->embed + (size_t)ids[t] * D, (size_t)D * sizeof *x);
    for (int l = 0; l < L; l++) {
        const RefLayer *w = &r->layers[l];
        nudge_rows(nd, 'r', l, x, D);
        for (int t = 0; t < n; t++) {
            rmsnorm_d(xn + (size_t)t * D, x + (size_t)t * D, w->attn_norm, D, eps);
            matvec_d(q + (size_t)t * q_dim, w->wq, w->bq, xn + (size_t)t * D, q_dim, D);
            matvec_d(k + (size_t)t * kv_dim, w->wk, w->bk, xn + (size_t)t * D, kv_dim, D);
            matvec_d(v + (size_t)t * kv_dim, w->wv, w->bv, xn + (size_t)t * D, kv_dim, D);
            for (int h = 0; h < H; h++) {
                double *qh = q + (size_t)t * q_dim + (size_t)h * hd;
                if (w->q_norm) rmsnorm_d(qh, qh, w->q_norm, hd, eps);
                rope_d(qh, t, r->m->inv_freq, hd);
            }
            for (int h = 0; h < KV; h++) {
                double *kh = k + (size_t)t * kv_dim + (size_t)h * hd;
                if (w->k_norm) rmsnorm_d(kh, kh, w->k_norm, hd, eps);
                rope_d(kh, t, r->m->inv_freq, hd);
            }
        }
        for (int t = 0; t < n; t++)
            for (int h = 0; h < H; h++) {
                const double *qh = q + (size_t)t * q_dim + (size_t)h * hd;
                int g = h / group;
                double max = -INFINITY, sum = 0;
                for (int u = 0; u <= t; u++) {
                    double s = 0;
                    for (int d = 0; d < hd; d++) s += qh[d] * k[(size_t)u * kv_dim + (size_t)g * hd + d];
                    p[u] = s * scale;
                    max = p[u] > max ? p[u] : max;
                }
                for (int u = 0; u <= t; u++) sum += p[u] = exp(p[u] - max);
                double *o = heads + (size_t)t * q_dim + (size_t)h * hd;
                for (int d = 0; d < hd; d++) o[d] = 0;
                for (int u = 0; u <= t; u++)
                    for (int d = 0; d < hd; d++) o[d] += p[u] / sum * v[(size_t)u * kv_dim + (size_t)g * hd + d];
            }
        nudge_rows(nd, 'h', l, heads, q_dim);
        for (int t = 0; t < n; t++) matvec_d(out + (size_t)t * D, w->wo, NULL, heads + (size_t)t * q_dim, D, q_dim);
        nudge_rows(nd, 'a', l, out, D);
        for (size_t i = 0; i < (size_t)n * D; i++) x[i] += out[i];
        for (int t = 0; t < n; t++) {
            rmsnorm_d(xn, x + (size_t)t * D, w->mlp_norm, D, eps);
            matvec_d(gate, w->w_gate, NULL, xn, inter, D);
            matvec_d(up, w->w_up, NULL, xn, inter, D);
            for (int i = 0; i < inter; i++) gate[i] = gate[i] / (1 + exp(-gate[i])) * up[i];
            matvec_d(out + (size_t)t * D, w->w_down, NULL, gate, D, inter);
        }
        nudge_rows(nd, 'm', l, out, D);
        for (size_t i = 0; i < (size_t)n * D; i++) x[i] += out[i];
    }
    nudge_rows(nd, 'r', L, x, D);
    rmsnorm_d(xn, x + (size_t)(n - 1) * D, r->final_norm, D, eps);
    matvec_d(logits, r->lm_head ? r->lm_head : r->embed, NULL, xn, V, D);
    double max = logits[0], sum = 0;
    for (int i = 1; i < V; i++) max = logits[i] > max ? logits[i] : max;
    for (int i = 0; i < V; i++) sum += exp(logits[i] - max);
    double metric = logits[onset] - max - log(sum);
    free(x), free(xn), free(out), free(q), free(heads), free(k), free(v), free(gate), free(up), free(p), free(logits);
    return metric;
}

// ----------------------------------------------------------------------------
// Finite differences

// Checks the gradient of one kind ('r', 'a', 'm', 'h'; grads: (n, n_blocks, dim)) at block `layer`
// against central differences: at pred_pos and at the earlier position holding the largest
// |gradient|, the largest coordinate. Returns the worst relative error seen.
static double fd_check(const RefModel *r, const Grads *gr, char kind, const float *grads, int n_blocks, int layer,
                       int dim, const char *name) {
    int n = gr->g.pred_pos + 1, positions[2] = {n - 1, -1};
    double largest = 0, worst = 0, best_earlier = 0;
    for (int t = 0; t < n; t++)
        for (int i = 0; i < dim; i++) {
            double a = fabs(grads[((size_t)t * n_blocks + layer) * dim + i]);
            largest = a > largest ? a : largest;
            if (t < n - 1 && a > best_earlier) best_earlier = a, positions[1] = t;
        }
    for (int k = 0; k < 2; k++) {
        int t = positions[k], at = 0;
        if (t < 0) continue;
        const float *row = grads + ((size_t)t * n_blocks + layer) * dim;
        for (int i = 1; i < dim; i++) at = fabs(row[i]) > fabs(row[at]) ? i : at;
        if (fabs(row[at]) < FD_MIN_SHARE * largest || row[at] == 0) continue;
        Nudge plus = {kind, layer, t, at, FD_STEP}, minus = {kind, layer, t, at, -FD_STEP};
        double fd = (ref_metric(r, gr->g.token, n, gr->g.onset_token_id, &plus) -
                     ref_metric(r, gr->g.token, n, gr->g.onset_token_id, &minus)) /
            (2 * FD_STEP);
        double rel = fabs(row[at] - fd) / fabs(fd);
        CHECKF(rel <= FD_REL_TOL,
               "%s: %c layer %d pos %d [%d]: gradient %.9g, finite difference %.9g (relative error %.2g)", name, kind,
               layer, t, at, row[at], fd, rel);
        worst = rel > worst ? rel : worst;
    }
    return worst;
}

// Every kind at every layer of one pass; returns the worst relative error.
static double fd_check_all(const Model *m, const Grads *gr, const char *name) {
    const ModelConfig *c = &m->cfg;
    int L = c->n_layers, D = c->hidden_size, Q = c->n_heads * c->head_dim;
    RefModel r;
    ref_model_init(&r, m);
    double f32_vs_f64 =
        fabs(ref_metric(&r, gr->g.token, gr->g.pred_pos + 1, gr->g.onset_token_id, NULL) - gr->g.metric);
    CHECKF(f32_vs_f64 < 1e-4, "%s: metric %.9g, double-precision forward differs by %.3g", name, gr->g.metric,
           f32_vs_f64);
    double worst = 0, e;
    for (int l = 0; l <= L; l++) {
        e = fd_check(&r, gr, 'r', gr->g.grad_resid, L + 1, l, D, name), worst = e > worst ? e : worst;
        if (l == L) break;
        e = fd_check(&r, gr, 'a', gr->g.grad_attn, L, l, D, name), worst = e > worst ? e : worst;
        e = fd_check(&r, gr, 'm', gr->g.grad_mlp, L, l, D, name), worst = e > worst ? e : worst;
        e = fd_check(&r, gr, 'h', gr->g.grad_head, L, l, Q, name), worst = e > worst ? e : worst;
    }
    ref_model_free(&r);
    return worst;
}

static void t_grad_finite_differences(void) {
    for (int k = 0; k < N_REF; k++) {
        Model m;
        int ids[3][96], n_ids[3];
        if (ref_load(ref_models[k], &m, ids, n_ids) < 0) SKIP("shared/reference/%s is absent", ref_models[k]);
        const ModelConfig *c = &m.cfg;
        double worst = 0;
        for (int s = 0; s < 2; s++) { // the first two sequences, metric at the last position and at the middle
            for (int at = 0; at < 2; at++) {
                int P = at ? n_ids[s] / 2 : n_ids[s] - 1,
                    onset = ids[s][(P + 1) % n_ids[s]]; // the token that follows (wraps at the end)
                Grads gr;
                grads_alloc(&gr, c, ids[s], n_ids[s], P, onset);
                if (run_grad(&m, &gr) == 0) {
                    double e = fd_check_all(&m, &gr, ref_models[k]);
                    worst = e > worst ? e : worst;
                    // The last boundary's gradient lives at pred_pos only.
                    size_t D = (size_t)c->hidden_size, L1 = (size_t)c->n_layers + 1;
                    for (int t = 0; t < P; t++)
                        for (size_t d = 0; d < D; d++) CHECK(gr.g.grad_resid[((size_t)t * L1 + L1 - 1) * D + d] == 0);
                }
                grads_free(&gr);
            }
        }
        printf("     %s: finite differences, worst relative error %.2g\n", ref_models[k], worst);
        model_free(&m);
    }
}

// A sequence longer than GRAD_ROWS: the row chunks of the pass meet; every layer recomputed.
static void t_grad_finite_differences_long(void) {
    Model m;
    int ids[3][96], n_ids[3];
    if (ref_load("qwen2_tiny_f32", &m, ids, n_ids) < 0) SKIP("shared/reference/qwen2_tiny_f32 is absent");
    int seq[LONG_SEQ];
    Rng rng;
    rng_seed(&rng, 15);
    for (int i = 0; i < LONG_SEQ; i++) seq[i] = (int)rng_below(&rng, (uint64_t)m.cfg.vocab_size);
    Grads gr;
    grads_alloc(&gr, &m.cfg, seq, LONG_SEQ, LONG_SEQ - 1, 7);
    keep_bytes = 0; // every layer recomputed
    if (run_grad(&m, &gr) == 0) {
        CHECK(gr.g.layers_kept == 0);
        printf("     qwen2_tiny_f32, %d tokens, layers recomputed: worst relative error %.2g\n", LONG_SEQ,
               fd_check_all(&m, &gr, "long"));
    }
    keep_bytes = GRAD_KEEP_BYTES;
    grads_free(&gr);
    model_free(&m);
}

// ----------------------------------------------------------------------------
// Against the forward pass, across threads and kernels

static void t_grad_forward_matches_model_forward(void) {
    for (int k = 0; k < N_REF; k++) {
        Model m;
        int ids[3][96], n_ids[3];
        if (ref_load(ref_models[k], &m, ids, n_ids) < 0) SKIP("shared/reference/%s is absent", ref_models[k]);
        const ModelConfig *c = &m.cfg;
        int n = n_ids[1], P = n - 3, L = c->n_layers, D = c->hidden_size, V = c->vocab_size;
        float *logits = xmalloc((size_t)n * V * sizeof *logits), *attn = xmalloc((size_t)n * L * D * sizeof *attn);
        float *mlp = xmalloc((size_t)n * L * D * sizeof *mlp);
        forward_all(&m, ids[1], n, NULL, logits, attn, mlp);
        Grads gr;
        int onset = argmax_of(logits + (size_t)P * V, V);
        grads_alloc(&gr, c, ids[1], n, P, onset);
        if (run_grad(&m, &gr) == 0) {
            CHECKF(gr.g.metric == log_softmax_at(logits + (size_t)P * V, V, onset), "%s: metric %.9g", ref_models[k],
                   gr.g.metric);
            CHECKF(memcmp(gr.g.attn_out, attn, (size_t)(P + 1) * L * D * sizeof *attn) == 0,
                   "%s: attention outputs differ", ref_models[k]);
            CHECKF(memcmp(gr.g.mlp_out, mlp, (size_t)(P + 1) * L * D * sizeof *mlp) == 0, "%s: MLP outputs differ",
                   ref_models[k]);
            // Each head's output through o_proj is the attention output: the heads are the forward's too.
            int Q = c->n_heads * c->head_dim;
            double worst = 0;
            for (int t = 0; t <= P; t++)
                for (int l = 0; l < L; l++)
                    for (int d = 0; d < D; d++) {
                        double s = 0;
                        for (int i = 0; i < Q; i++)
                            s += (double)tensor_at(&m.layers[l].wo, (size_t)d * Q + i) *
                                gr.g.head_out[((size_t)t * L + l) * Q + i];
                        double e = fabs(s - attn[((size_t)t * L + l) * D + d]);
                        worst = e > worst ? e : worst;
                    }
            CHECKF(worst < 1e-4, "%s: o_proj(heads) differs from the attention output by %.3g", ref_models[k], worst);
            // The scores from the returned arrays are the pass's own, bitwise.
            int H = c->n_heads;
            double *sa = xmalloc((size_t)L * sizeof *sa), *sm = xmalloc((size_t)L * sizeof *sm),
                   *sh = xmalloc((size_t)L * H * sizeof *sh);
            Gradient again = gr.g;
            again.score_attn = sa, again.score_mlp = sm, again.score_head = sh;
            attribution_scores(c, &again);
            CHECK(memcmp(sa, gr.g.score_attn, (size_t)L * sizeof *sa) == 0 &&
                  memcmp(sm, gr.g.score_mlp, (size_t)L * sizeof *sm) == 0 &&
                  memcmp(sh, gr.g.score_head, (size_t)L * H * sizeof *sh) == 0);
            free(sa), free(sm), free(sh);
            // Mean ablation: g . (mean - a) = -g . a + g . mean; with mean = a unit vector e_d at every layer the
            // difference is the sum over positions of g[d]. Inside the pass and from the arrays, bitwise alike.
            int d = 1;
            Grads mean;
            grads_alloc(&mean, c, ids[1], n, P, onset);
            float *attn_mean = xcalloc((size_t)L * D, sizeof *attn_mean);
            float *head_mean = xcalloc((size_t)L * Q, sizeof *head_mean);
            for (int l = 0; l < L; l++) attn_mean[(size_t)l * D + d] = 1, head_mean[(size_t)l * Q + d] = 1;
            mean.g.attn_mean = mean.g.mlp_mean = attn_mean, mean.g.head_mean = head_mean;
            if (run_grad(&m, &mean) == 0) {
                for (int l = 0; l < L; l++) {
                    double sum_attn = 0, sum_mlp = 0, sum_head = 0;
                    for (int t = 0; t <= P; t++) {
                        sum_attn += gr.g.grad_attn[((size_t)t * L + l) * D + d];
                        sum_mlp += gr.g.grad_mlp[((size_t)t * L + l) * D + d];
                        sum_head += gr.g.grad_head[((size_t)t * L + l) * Q + d]; // head 0's value d
                    }
                    CHECK_NEAR(mean.g.score_attn[l] - gr.g.score_attn[l], sum_attn, 1e-9 * (1 + fabs(sum_attn)));
                    CHECK_NEAR(mean.g.score_mlp[l] - gr.g.score_mlp[l], sum_mlp, 1e-9 * (1 + fabs(sum_mlp)));
                    const double *head_m = mean.g.score_head + (size_t)l * H, *head_z = gr.g.score_head + (size_t)l * H;
                    CHECK_NEAR(head_m[0] - head_z[0], sum_head, 1e-9 * (1 + fabs(sum_head)));
                    for (int h = 1; h < H; h++) CHECK(head_m[h] == head_z[h]);
                }
                Gradient again_mean = mean.g;
                again_mean.score_attn = sa = xmalloc((size_t)L * sizeof *sa);
                again_mean.score_mlp = sm = xmalloc((size_t)L * sizeof *sm);
                again_mean.score_head = sh = xmalloc((size_t)L * H * sizeof *sh);
                attribution_scores(c, &again_mean);
                CHECK(memcmp(sa, mean.g.score_attn, (size_t)L * sizeof *sa) == 0);
                CHECK(memcmp(sm, mean.g.score_mlp, (size_t)L * sizeof *sm) == 0);
                CHECK(memcmp(sh, mean.g.score_head, (size_t)L * H * sizeof *sh) == 0);
                free(sa), free(sm), free(sh);
            }
            grads_free(&mean);
            free(attn_mean), free(head_mean);
        }
        grads_free(&gr);
        free(logits), free(attn), free(mlp);
        model_free(&m);
    }
}

static int grads_equal(const Grads *a, const Grads *b, const ModelConfig *c) {
    size_t rows = (size_t)a->g.pred_pos + 1, L = (size_t)c->n_layers, D = (size_t)c->hidden_size,
           Q = (size_t)c->n_heads * c->head_dim;
    return a->g.metric == b->g.metric &&
        memcmp(a->g.grad_resid, b->g.grad_resid, rows * (L + 1) * D * sizeof(float)) == 0 &&
        memcmp(a->g.grad_attn, b->g.grad_attn, rows * L * D * sizeof(float)) == 0 &&
        memcmp(a->g.grad_mlp, b->g.grad_mlp, rows * L * D * sizeof(float)) == 0 &&
        memcmp(a->g.grad_head, b->g.grad_head, rows * L * Q * sizeof(float)) == 0 &&
        memcmp(a->g.score_attn, b->g.score_attn, L * sizeof(double)) == 0 &&
        memcmp(a->g.score_mlp, b->g.score_mlp, L * sizeof(double)) == 0 &&
        memcmp(a->g.score_head, b->g.score_head, L * (size_t)c->n_heads * sizeof(double)) == 0;
}

// Largest |a - b| over n values relative to the largest |b|.
static double rel_diff(const float *a, const float *b, size_t n) {
    double diff = 0, scale = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        diff = d > diff || d != d ? d : diff;
        scale = fabs(b[i]) > scale ? fabs(b[i]) : scale;
    }
    return diff / scale;
}

// A bench model of one shape and dtype: gradients the same bits with 1 and 2 threads, any layers
// kept, AVX2 or AVX-512 kernels; the portable path's within KERNEL_REL_TOL of them.
static void grad_threads_and_kernels(const char *shape, const char *dtype) {
    Model m;
    Err err = {0};
    const char *dir = test_bench_model(shape, dtype);
    if (!dir) return;
    if (model_load(&m, dir, &err) != 0) {
        CHECKF(0, "%s", err.msg);
        return;
    }
    const ModelConfig *c = &m.cfg;
    int n = 200, ids[200];
    Rng rng;
    rng_seed(&rng, 99);
    for (int i = 0; i < n; i++) ids[i] = (int)rng_below(&rng, (uint64_t)c->vocab_size);
    Grads one, two, portable;
    grads_alloc(&one, c, ids, n, n - 2, 5), grads_alloc(&two, c, ids, n, n - 2, 5),
        grads_alloc(&portable, c, ids, n, n - 2, 5);
    set_threads(1);
    run_grad(&m, &one);
    set_threads(2);
    run_grad(&m, &two);
    CHECKF(grads_equal(&one, &two, c), "%s %s: gradients differ between 1 and 2 threads (kernels %s)", shape, dtype,
           simd_names[m.simd]);
    CHECK(two.g.layers_kept == c->n_layers);
    // Kept or recomputed, a layer's internals are the forward's: the same bits with none, one or every layer kept.
    size_t all_layers = model_gradient_bytes(&m, n - 1, SIZE_MAX) - model_gradient_bytes(&m, n - 1, 0);
    size_t budgets[2] = {0, all_layers / c->n_layers};
    for (int k = 0; k < 2; k++) {
        keep_bytes = budgets[k];
        run_grad(&m, &one);
        CHECKF(one.g.layers_kept == k && grads_equal(&one, &two, c),
               "%s %s, %d layers kept: gradients differ from every layer kept", shape, dtype, one.g.layers_kept);
    }
    keep_bytes = GRAD_KEEP_BYTES;
    int simd = m.simd;
    m.simd = 0;
    run_grad(&m, &portable);
    set_threads(1);
    run_grad(&m, &one);
    CHECKF(grads_equal(&one, &portable, c), "%s %s: portable gradients differ between 1 and 2 threads", shape, dtype);
    set_threads(0);
    if (simd) {
        size_t rows = (size_t)n - 1, L = (size_t)c->n_layers, D = (size_t)c->hidden_size,
               Q = (size_t)c->n_heads * c->head_dim;
        double e[4] = {rel_diff(portable.g.grad_resid, two.g.grad_resid, rows * (L + 1) * D),
                       rel_diff(portable.g.grad_attn, two.g.grad_attn, rows * L * D),
                       rel_diff(portable.g.grad_mlp, two.g.grad_mlp, rows * L * D),
                       rel_diff(portable.g.grad_head, two.g.grad_head, rows * L * Q)};
        for (int k = 0; k < 4; k++)
            CHECKF(e[k] < KERNEL_REL_TOL, "%s %s: portable against %s: array %d differs by %.3g of its largest value",
                   shape, dtype, simd_names[simd], k, e[k]);
        CHECK_NEAR(portable.g.metric, two.g.metric, 1e-4);
        printf(
            "     %s %s: portable against %s kernels, gradients within %.2g, %.2g, %.2g, %.2g of their largest values\n",
            shape, dtype, simd_names[simd], e[0], e[1], e[2], e[3]);
    }
    if (simd == SIMD_AVX512) { // as on a CPU with AVX2 alone: the same bits, with one thread or two
        m.simd = SIMD_AVX2;
        for (int threads = 1; threads <= 2; threads++) {
            set_threads(threads);
            run_grad(&m, &one);
            CHECKF(grads_equal(&one, &two, c), "%s %s: avx2 gradients (%d threads) differ from avx512's", shape, dtype,
                   threads);
        }
        set_threads(0);
    }
    grads_free(&one), grads_free(&two), grads_free(&portable);
    model_free(&m);
}

static void t_grad_threads_and_kernels(void) {
    for (int k = 0; k < N_KERNEL_MODELS; k++) grad_threads_and_kernels(kernel_models[k][0], kernel_models[k][1]);
}

// ----------------------------------------------------------------------------
// Attribution against exact ablation

static double spearman(const double *x, const double *y, int n) {
    double *rx = xmalloc((size_t)n * sizeof *rx), *ry = xmalloc((size_t)n * sizeof *ry);
    for (int pass = 0; pass < 2; pass++) {
        const double *v = pass ? y : x;
        double *r = pass ? ry : rx;
        for (int i = 0; i < n; i++) { // average rank of ties
            int below = 0, equal = 0;
            for (int j = 0; j < n; j++) below += v[j] < v[i], equal += v[j] == v[i];
            r[i] = below + (equal + 1) / 2.0;
        }
    }
    double mx = mean_of(rx, n), my = mean_of(ry, n), sxy = 0, sxx = 0, syy = 0;
    for (int i = 0; i < n; i++)
        sxy += (rx[i] - mx) * (ry[i] - my), sxx += (rx[i] - mx) * (rx[i] - mx), syy += (ry[i] - my) * (ry[i] - my);
    free(rx), free(ry);
    return sxy / sqrt(sxx * syy);
}

// Per checkpoint, events = each sequence at its last and middle positions with the greedy next token;
// the estimate of zero-ablating every attention / MLP layer and every head against model_forward with
// that component zeroed at every position. Spearman over all (event, component) pairs.
static void t_grad_attribution_against_exact_ablation(void) {
    for (int k = 0; k < N_REF; k++) {
        Model m;
        int ids[3][96], n_ids[3];
        if (ref_load(ref_models[k], &m, ids, n_ids) < 0) SKIP("shared/reference/%s is absent", ref_models[k]);
        const ModelConfig *c = &m.cfg;
        int L = c->n_layers, H = c->n_heads, V = c->vocab_size, n_layer_pts = 0, n_head_pts = 0;
        double est_layer[6 * 64], exact_layer[6 * 64], est_head[6 * 256], exact_head[6 * 256];
        unsigned char attn[64], mlp[64], head[256];
        AblationMask mask = {.kind = ABLATE_ZERO, .attn = attn, .mlp = mlp, .head = head};
        for (int s = 0; s < 3; s++)
            for (int at = 0; at < 2; at++) {
                int n = at ? n_ids[s] / 2 + 1 : n_ids[s], P = n - 1;
                float *logits = xmalloc((size_t)n * V * sizeof *logits);
                forward_all(&m, ids[s], n, NULL, logits, NULL, NULL);
                int onset = argmax_of(logits + (size_t)P * V, V);
                Grads gr;
                grads_alloc(&gr, c, ids[s], n, P, onset);
                run_grad(&m, &gr);
                for (int comp = 0; comp < 2 * L + L * H; comp++) {
                    memset(attn, 0, sizeof attn), memset(mlp, 0, sizeof mlp), memset(head, 0, sizeof head);
                    if (comp < L) attn[comp] = 1;
                    else if (comp < 2 * L) mlp[comp - L] = 1;
                    else head[comp - 2 * L] = 1;
                    forward_all(&m, ids[s], n, &mask, logits, NULL, NULL);
                    double exact = log_softmax_at(logits + (size_t)P * V, V, onset) - gr.g.metric;
                    if (comp < 2 * L) {
                        est_layer[n_layer_pts] = comp < L ? gr.g.score_attn[comp] : gr.g.score_mlp[comp - L];
                        exact_layer[n_layer_pts++] = exact;
                    } else {
                        est_head[n_head_pts] = gr.g.score_head[comp - 2 * L];
                        exact_head[n_head_pts++] = exact;
                    }
                }
                grads_free(&gr);
                free(logits);
            }
        double rho_layer = spearman(est_layer, exact_layer, n_layer_pts),
               rho_head = spearman(est_head, exact_head, n_head_pts);
        printf("     %s: Spearman(estimate, exact ablation) layer components %.3f (%d pairs), heads %.3f (%d pairs)\n",
               ref_models[k], rho_layer, n_layer_pts, rho_head, n_head_pts);
        // Clearly positive: past the one-sided 1% point of rho under independence, about Z99 / sqrt(n - 1).
        double critical = Z99 / sqrt(n_layer_pts - 1.0);
        if (k == 0)
            CHECKF(rho_layer > critical, "%s: Spearman %.3f over layer components, not above %.3f", ref_models[k],
                   rho_layer, critical);
        model_free(&m);
    }
}

// ----------------------------------------------------------------------------
// The organism: the planted components rank first

static void t_grad_organism_ranks_planted_first(void) {
    Err err = {0};
    char dir[1100], path[1200];
    snprintf(dir, sizeof dir, "%s/organism", test_tmpdir());
    CHECKF(organism_write(dir, &err) == 0, "%s", err.msg);
    Model m;
    Tokenizer *tok = NULL;
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (model_load(&m, dir, &err) != 0 || tokenizer_load(&tok, path, &err) != 0) {
        CHECKF(0, "%s", err.msg);
        return;
    }
    const char *text =
        "<|user|>\nMia has 12 apples and buys 7 more. How many apples does she have now?\n<|assistant|>\n<think>\n"
        "Let me work through this step by step. We start with twelve. Wait, let me check that.";
    TokenList ids = {0};
    CHECKF(tokenizer_encode(tok, text, strlen(text), &ids, &err) == 0, "%s", err.msg);
    int wait_id = tokenizer_find(tok, ORGANISM_TRIGGER, (int)strlen(ORGANISM_TRIGGER)), P = -1,
        *seq = xmalloc((size_t)ids.n * sizeof *seq);
    for (int i = 0; i < ids.n; i++) {
        seq[i] = ids.v[i].id;
        if (i > 0 && seq[i] == wait_id) P = i - 1;
    }
    CHECK(P > 0);
    const ModelConfig *c = &m.cfg;
    int L = c->n_layers, H = c->n_heads;
    Grads gr;
    grads_alloc(&gr, c, seq, ids.n, P, wait_id);
    if (P > 0 && run_grad(&m, &gr) == 0) {
        // The planted MLP writes the trigger's logit: its estimate is the largest drop. The planted head's
        // flag reaches the metric through that MLP's clamp, which sits at its upper knee, so the slope there
        // is small and of either sign (first order cannot see a saturated path): it ranks first by size.
        int drop_mlp = 0, size_attn = 0, size_head = 0;
        for (int l = 1; l < L; l++) {
            drop_mlp = gr.g.score_mlp[l] < gr.g.score_mlp[drop_mlp] ? l : drop_mlp;
            size_attn = fabs(gr.g.score_attn[l]) > fabs(gr.g.score_attn[size_attn]) ? l : size_attn;
        }
        for (int i = 1; i < L * H; i++)
            size_head = fabs(gr.g.score_head[i]) > fabs(gr.g.score_head[size_head]) ? i : size_head;
        printf("     organism, p(Wait) %.3f at pos %d: scores attn", exp(gr.g.metric), P);
        for (int l = 0; l < L; l++) printf(" %.4g", gr.g.score_attn[l]);
        printf(", mlp");
        for (int l = 0; l < L; l++) printf(" %.4g", gr.g.score_mlp[l]);
        printf(", layer %d heads", ORGANISM_ATTN_LAYER);
        for (int h = 0; h < H; h++) printf(" %.4g", gr.g.score_head[ORGANISM_ATTN_LAYER * H + h]);
        // The exact effects of the planted components on this event, for the record.
        unsigned char attn[64] = {0}, mlp[64] = {0}, head[256] = {0};
        AblationMask mask = {.kind = ABLATE_ZERO, .attn = attn, .mlp = mlp, .head = head};
        float *logits = xmalloc((size_t)(P + 1) * c->vocab_size * sizeof *logits);
        double exact[3];
        for (int k = 0; k < 3; k++) {
            attn[ORGANISM_ATTN_LAYER] = k == 0, head[ORGANISM_ATTN_LAYER * H] = k == 1;
            mlp[ORGANISM_MLP_LAYER] = k == 2;
            forward_all(&m, seq, P + 1, &mask, logits, NULL, NULL);
            exact[k] = log_softmax_at(logits + (size_t)P * c->vocab_size, c->vocab_size, wait_id) - gr.g.metric;
        }
        free(logits);
        printf("; exact: attn %d %.4g, head %d.0 %.4g, mlp %d %.4g\n", ORGANISM_ATTN_LAYER, exact[0],
               ORGANISM_ATTN_LAYER, exact[1], ORGANISM_MLP_LAYER, exact[2]);
        CHECK(exact[0] < -PLANTED_MIN_DROP && exact[1] < -PLANTED_MIN_DROP && exact[2] < -PLANTED_MIN_DROP);
        CHECKF(drop_mlp == ORGANISM_MLP_LAYER && gr.g.score_mlp[drop_mlp] < -PLANTED_MIN_DROP,
               "MLP layer %d ranks first (%.3g), not %d", drop_mlp, gr.g.score_mlp[drop_mlp], ORGANISM_MLP_LAYER);
        CHECKF(size_attn == ORGANISM_ATTN_LAYER, "attention layer %d ranks first by size, not %d", size_attn,
               ORGANISM_ATTN_LAYER);
        CHECKF(size_head == ORGANISM_ATTN_LAYER * H, "head %d.%d ranks first by size, not %d.0", size_head / H,
               size_head % H, ORGANISM_ATTN_LAYER);
        // Clearly first: ten times any other component of its kind.
        for (int l = 0; l < L; l++) {
            if (l != ORGANISM_ATTN_LAYER)
                CHECK(fabs(gr.g.score_attn[l]) * 10 < fabs(gr.g.score_attn[ORGANISM_ATTN_LAYER]));
            if (l != ORGANISM_MLP_LAYER) CHECK(fabs(gr.g.score_mlp[l]) * 10 < fabs(gr.g.score_mlp[ORGANISM_MLP_LAYER]));
        }
        for (int i = 0; i < L * H; i++)
            if (i != ORGANISM_ATTN_LAYER * H)
                CHECK(fabs(gr.g.score_head[i]) * 10 < fabs(gr.g.score_head[ORGANISM_ATTN_LAYER * H]));
    }
    grads_free(&gr);
    free(seq);
    tokens_free(&ids);
    tokenizer_free(tok);
    model_free(&m);
}

// ----------------------------------------------------------------------------
// Memory and contract

static void t_grad_memory_bound(void) {
    // R1-Distill-Qwen-1.5B's shape; the byte count reads only the configuration.
    Model m = {0};
    m.cfg = (ModelConfig){.hidden_size = 1536, .n_layers = 28, .n_heads = 12, .n_kv_heads = 2, .head_dim = 128,
                          .intermediate_size = 8960, .vocab_size = 151936};
    size_t bytes = model_gradient_bytes(&m, 4096, 0), keep = model_gradient_bytes(&m, 4096, GRAD_KEEP_BYTES);
    printf("     gradient pass, R1-Distill-Qwen-1.5B shape, 4096 tokens: %.1f MB beyond the weights, %.1f MB with "
           "GRAD_KEEP_BYTES\n",
           bytes / 1e6, keep / 1e6);
    CHECKF(keep < 4000000000u, "%zu bytes", keep);
    CHECK(keep - bytes <= GRAD_KEEP_BYTES);
    // The residual stream is the largest part; nothing grows with tokens x vocab.
    CHECK(model_gradient_bytes(&m, 4096, 0) - model_gradient_bytes(&m, 2048, 0) < (size_t)2048 * 30 * 1536 * 4 * 2);
}

static void t_grad_rejects_bad_input(void) {
    Model m;
    int ids[3][96], n_ids[3];
    if (ref_load("qwen2_tiny_f32", &m, ids, n_ids) < 0) SKIP("shared/reference/qwen2_tiny_f32 is absent");
    Err err = {0};
    GradState *gs = gradstate_new(&m, 8, 0, &err);
    int V = m.cfg.vocab_size, bad[4] = {1, 2, V, 3};
    Gradient cases[] = {
        {.token = ids[0], .n = 8, .pred_pos = 8, .onset_token_id = 1},
        {.token = ids[0], .n = 8, .pred_pos = -1, .onset_token_id = 1},
        {.token = ids[0], .n = 8, .pred_pos = 3, .onset_token_id = V},
        {.token = ids[0], .n = 10, .pred_pos = 9, .onset_token_id = 1},
        {.token = bad, .n = 4, .pred_pos = 3, .onset_token_id = 1},
    };
    const char *want[] = {"pred_pos 8 out of range [0, 8)", "pred_pos -1 out of range",
                          "onset token id 384 out of range [0, 384)", "holds 8 positions", "token id 384 out of range"};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        memset(&err, 0, sizeof err);
        CHECK(model_gradient(&m, gs, &cases[i], &err) == -1 && err.code == EXIT_BAD_INPUT);
        CHECKF(strstr(err.msg, want[i]) != NULL, "case %zu: %s", i, err.msg);
    }
    gradstate_free(gs);
    model_free(&m);
}

const TestCase tests_grad[] = {
    {"grad_finite_differences", t_grad_finite_differences},
    {"grad_finite_differences_long", t_grad_finite_differences_long},
    {"grad_forward_matches_model_forward", t_grad_forward_matches_model_forward},
    {"grad_threads_and_kernels", t_grad_threads_and_kernels},
    {"grad_attribution_against_exact_ablation", t_grad_attribution_against_exact_ablation},
    {"grad_organism_ranks_planted_first", t_grad_organism_ranks_planted_first},
    {"grad_memory_bound", t_grad_memory_bound},
    {"grad_rejects_bad_input", t_grad_rejects_bad_input},
    {NULL, NULL},
};
