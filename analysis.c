// analysis.c: statistics, backtracking events, the logit lens, the ablation
// scan, the condition comparison and the formatting sweep.
#include "bt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

// ----------------------------------------------------------------------------
// Statistics

Interval wilson95(long long k, long long n) {
    Interval r = {NAN, NAN, NAN};
    if (n <= 0 || k < 0 || k > n) return r;
    double nn = (double)n, z2 = Z95 * Z95;
    double center = ((double)k + z2 / 2) / (nn + z2);
    double half = Z95 / (nn + z2) * sqrt((double)k * (double)(n - k) / nn + z2 / 4);
    r.est = (double)k / nn;
    r.lo = k == 0 ? 0.0 : center - half; // exact 0 and 1 at the ends instead of rounding noise
    r.hi = k == n ? 1.0 : center + half;
    return r;
}

static double log_choose(long long n, long long k) {
    return lgamma((double)n + 1) - lgamma((double)k + 1) - lgamma((double)(n - k) + 1);
}

double fisher_exact_p(long long a, long long b, long long c, long long d) {
    if (a < 0 || b < 0 || c < 0 || d < 0) return NAN;
    long long row1 = a + b, row2 = c + d, col1 = a + c, n = row1 + row2;
    // Every table with these margins is fixed by its top-left cell x (hypergeometric).
    long long x_lo = col1 - row2 > 0 ? col1 - row2 : 0, x_hi = row1 < col1 ? row1 : col1;
    double log_denom = log_choose(n, col1);
    double log_p_obs = log_choose(row1, a) + log_choose(row2, col1 - a) - log_denom;
    double cutoff = log_p_obs + log1p(FISHER_REL_TOL);
    double p = 0;
    for (long long x = x_lo; x <= x_hi; x++) {
        double lp = log_choose(row1, x) + log_choose(row2, col1 - x) - log_denom;
        if (lp <= cutoff) p += exp(lp);
    }
    return p > 1 ? 1 : p;
}

// Q(a, x) by the series for P when x < a + 1, else by the continued fraction
// for Q (modified Lentz), the split that keeps both convergent and accurate.
double gamma_q(double a, double x) {
    enum { MAX_ITER = 100000 };
    const double eps = 1e-16, tiny = 1e-300;
    if (!(a > 0) || !(x >= 0) || isinf(a)) return NAN;
    if (x == 0) return 1;
    if (isinf(x)) return 0;
    double log_prefix = a * log(x) - x - lgamma(a); // log(x^a e^-x / Gamma(a))
    if (x < a + 1) {
        double term = 1 / a, sum = term;
        for (int i = 1; i < MAX_ITER; i++) {
            term *= x / (a + i);
            sum += term;
            if (term < sum * eps) break;
        }
        double q = 1 - sum * exp(log_prefix);
        return q < 0 ? 0 : q;
    }
    double b = x + 1 - a, c = 1 / tiny, d = 1 / b, h = d;
    for (int i = 1; i < MAX_ITER; i++) {
        double an = -i * (i - a);
        b += 2;
        d = an * d + b;
        if (fabs(d) < tiny) d = tiny;
        c = b + an / c;
        if (fabs(c) < tiny) c = tiny;
        d = 1 / d;
        double delta = d * c;
        h *= delta;
        if (fabs(delta - 1) < eps) break;
    }
    return exp(log_prefix) * h;
}

double chi2_sf(double x, double df) {
    if (isnan(x) || !(df > 0)) return NAN;
    if (x <= 0) return 1;
    return gamma_q(df / 2, x / 2);
}

ChiSquare chi2_homogeneity(const long long *k, const long long *n, int n_groups) {
    ChiSquare r = {NAN, 0, NAN, 0};
    long long total_k = 0, total_n = 0;
    for (int i = 0; i < n_groups; i++) {
        if (n[i] <= 0) continue;
        if (k[i] < 0 || k[i] > n[i]) return r;
        total_k += k[i];
        total_n += n[i];
        r.n_groups++;
    }
    r.df = r.n_groups > 1 ? r.n_groups - 1 : 0;
    if (r.n_groups < 2 || total_k == 0 || total_k == total_n) return r; // no variation to test
    double pooled = (double)total_k / (double)total_n, stat = 0;
    for (int i = 0; i < n_groups; i++) {
        if (n[i] <= 0) continue;
        double expected = (double)n[i] * pooled, diff = (double)k[i] - expected;
        // (k - E)^2 / E over successes plus the same over failures
        stat += diff * diff / (expected * (1 - pooled));
    }
    r.stat = stat;
    r.p = chi2_sf(stat, r.df);
    return r;
}

double mean_of(const double *x, int n) {
    if (n <= 0) return NAN;
    double s = 0;
    for (int i = 0; i < n; i++) s += x[i];
    return s / n;
}

double sd_of(const double *x, int n) {
    if (n < 2) return NAN;
    double m = mean_of(x, n), ss = 0;
    for (int i = 0; i < n; i++) ss += (x[i] - m) * (x[i] - m);
    return sqrt(ss / (n - 1));
}

static double resample_mean(Rng *rng, const double *x, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += x[rng_below(rng, (uint64_t)n)];
    return s / n;
}

static int cmp_double_nan_last(const void *pa, const void *pb) {
    double a = *(const double *)pa, b = *(const double *)pb;
    if (isnan(a) || isnan(b)) return isnan(a) - isnan(b);
    return (a > b) - (a < b);
}

// Quantile q of sorted v[0..n) with linear interpolation (R's type 7).
static double sorted_quantile(const double *v, int n, double q) {
    double h = (n - 1) * q;
    int i = (int)floor(h);
    if (i >= n - 1) return v[n - 1];
    double frac = h - i;
    if (frac == 0 || v[i] == v[i + 1]) return v[i];
    if (isinf(v[i]) || isinf(v[i + 1])) return v[i + 1]; // inf - inf is no interpolation
    return v[i] + frac * (v[i + 1] - v[i]);
}

enum { BOOT_MEAN, BOOT_DIFF, BOOT_RATIO };

static double boot_stat(int kind, double mean_x, double mean_y) {
    if (kind == BOOT_MEAN) return mean_x;
    if (kind == BOOT_DIFF) return mean_x - mean_y;
    return mean_y == 0 ? INFINITY : mean_x / mean_y; // 0/0 too: the ratio is unbounded
}

static Interval bootstrap95(int kind, const double *x, int nx, const double *y, int ny, int n_resamples, uint64_t seed) {
    Interval r = {NAN, NAN, NAN};
    if (nx <= 0 || (kind != BOOT_MEAN && ny <= 0) || n_resamples <= 0) return r;
    double mean_y = kind == BOOT_MEAN ? 0 : mean_of(y, ny);
    r.est = kind == BOOT_RATIO && mean_y == 0 ? NAN : boot_stat(kind, mean_of(x, nx), mean_y);
    double *stats = xmalloc((size_t)n_resamples * sizeof *stats); // (n_resamples)
    Rng rng;
    rng_seed(&rng, seed);
    for (int b = 0; b < n_resamples; b++) {
        double mx = resample_mean(&rng, x, nx);
        double my = kind == BOOT_MEAN ? 0 : resample_mean(&rng, y, ny);
        stats[b] = boot_stat(kind, mx, my);
    }
    qsort(stats, (size_t)n_resamples, sizeof *stats, cmp_double_nan_last);
    r.lo = sorted_quantile(stats, n_resamples, 0.025);
    r.hi = sorted_quantile(stats, n_resamples, 0.975);
    free(stats);
    return r;
}

Interval bootstrap_mean95(const double *x, int n, int n_resamples, uint64_t seed) {
    return bootstrap95(BOOT_MEAN, x, n, NULL, 0, n_resamples, seed);
}

Interval bootstrap_diff95(const double *x, int nx, const double *y, int ny, int n_resamples, uint64_t seed) {
    return bootstrap95(BOOT_DIFF, x, nx, y, ny, n_resamples, seed);
}

Interval bootstrap_ratio95(const double *x, int nx, const double *y, int ny, int n_resamples, uint64_t seed) {
    return bootstrap95(BOOT_RATIO, x, nx, y, ny, n_resamples, seed);
}

double permutation_p(const double *x, int nx, const double *y, int ny, int n_permutations, uint64_t seed) {
    if (nx <= 0 || ny <= 0 || n_permutations <= 0) return NAN;
    int n = nx + ny;
    double *pool = xmalloc((size_t)n * sizeof *pool); // (nx + ny) x then y, shuffled in place
    double total = 0;
    for (int i = 0; i < n; i++) {
        pool[i] = i < nx ? x[i] : y[i - nx];
        total += pool[i];
    }
    double observed = fabs(mean_of(x, nx) - mean_of(y, ny));
    // Relabelings that tie the observed difference must count as extreme, despite rounding.
    double tol = 1e-9 * (fabs(observed) + fabs(total) / n + 1e-300);
    Rng rng;
    rng_seed(&rng, seed);
    long long extreme = 0;
    for (int b = 0; b < n_permutations; b++) {
        // Partial Fisher-Yates: the first nx slots become a uniformly drawn x group.
        double sum_x = 0;
        for (int i = 0; i < nx; i++) {
            int j = i + (int)rng_below(&rng, (uint64_t)(n - i));
            double t = pool[i];
            pool[i] = pool[j];
            pool[j] = t;
            sum_x += pool[i];
        }
        double diff = fabs(sum_x / nx - (total - sum_x) / ny);
        if (diff >= observed - tol) extreme++;
    }
    free(pool);
    return (1.0 + (double)extreme) / (1.0 + n_permutations);
}



// ----------------------------------------------------------------------------
// Statistics for steering: how well a projection separates two sets (AUROC, with a bootstrap
// over completions), and a trend of a rate over a dose (Cochran-Armitage).

typedef struct {
    double score;
    int index; // into the caller's arrays
} Scored;

static int cmp_scored(const void *a, const void *b) {
    const Scored *x = a, *y = b;
    if (x->score != y->score) return x->score < y->score ? -1 : 1;
    return x->index - y->index;
}

// AUROC over scores already in ascending order: groups of equal scores count half.
static double auroc_sorted(const Scored *order, int n, const unsigned char *is_pos, const double *weight) {
    double u = 0, neg_below = 0, w_pos = 0, w_neg = 0;
    for (int i = 0; i < n;) {
        double pos_g = 0, neg_g = 0;
        int j = i;
        for (; j < n && order[j].score == order[i].score; j++) {
            double w = weight ? weight[order[j].index] : 1;
            if (is_pos[order[j].index]) pos_g += w;
            else neg_g += w;
        }
        u += pos_g * (neg_below + 0.5 * neg_g);
        neg_below += neg_g;
        w_pos += pos_g;
        w_neg += neg_g;
        i = j;
    }
    return w_pos > 0 && w_neg > 0 ? u / (w_pos * w_neg) : NAN;
}

static Scored *scored_sort(const double *score, int n) {
    Scored *order = xmalloc((size_t)(n + 1) * sizeof *order);
    for (int i = 0; i < n; i++) order[i] = (Scored){score[i], i};
    qsort(order, (size_t)n, sizeof *order, cmp_scored);
    return order;
}

double auroc(const double *score, const unsigned char *is_pos, const double *weight, int n) {
    Scored *order = scored_sort(score, n);
    double a = auroc_sorted(order, n, is_pos, weight);
    free(order);
    return a;
}

Interval auroc_cluster_bootstrap95(const double *score, const unsigned char *is_pos, const int *cluster, int n,
                                   int n_clusters, int n_resamples, uint64_t seed) {
    Interval r = {NAN, NAN, NAN};
    if (n <= 0 || n_clusters <= 0) return r;
    Scored *order = scored_sort(score, n);
    r.est = auroc_sorted(order, n, is_pos, NULL);
    double *draws = xmalloc((size_t)n_clusters * sizeof *draws), *weight = xmalloc((size_t)n * sizeof *weight);
    double *stat = xmalloc((size_t)(n_resamples + 1) * sizeof *stat);
    Rng rng;
    rng_seed(&rng, seed);
    for (int b = 0; b < n_resamples; b++) {
        for (int k = 0; k < n_clusters; k++) draws[k] = 0;
        for (int k = 0; k < n_clusters; k++) draws[rng_below(&rng, (uint64_t)n_clusters)] += 1;
        for (int i = 0; i < n; i++) weight[i] = draws[cluster[i]];
        stat[b] = auroc_sorted(order, n, is_pos, weight);
    }
    qsort(stat, (size_t)n_resamples, sizeof *stat, cmp_double_nan_last);
    int finite = 0;
    while (finite < n_resamples && stat[finite] == stat[finite]) finite++;
    if (finite > 0 && r.est == r.est) {
        r.lo = sorted_quantile(stat, finite, 0.025);
        r.hi = sorted_quantile(stat, finite, 0.975);
    }
    free(order);
    free(draws);
    free(weight);
    free(stat);
    return r;
}

Trend cochran_armitage(const double *x, const long long *k, const long long *n, int m) {
    Trend t = {NAN, NAN, NAN, NAN, NAN};
    double total = 0, hits = 0, x_mean = 0;
    for (int i = 0; i < m; i++) total += (double)n[i], hits += (double)k[i], x_mean += (double)n[i] * x[i];
    if (total <= 0) return t;
    x_mean /= total;
    double p_bar = hits / total, sxx = 0, sxy = 0, var_unpooled = 0;
    for (int i = 0; i < m; i++) {
        if (n[i] <= 0) continue;
        double dx = x[i] - x_mean, p = (double)k[i] / (double)n[i];
        sxx += (double)n[i] * dx * dx;
        sxy += dx * ((double)k[i] - (double)n[i] * p_bar);
        var_unpooled += dx * dx * (double)n[i] * p * (1 - p);
    }
    if (!(sxx > 0)) return t;
    t.slope = sxy / sxx;
    double se = sqrt(var_unpooled) / sxx;
    if (se > 0) { // every rate 0 or 1 leaves the Wald interval undefined, not exact
        t.lo = t.slope - Z95 * se;
        t.hi = t.slope + Z95 * se;
    }
    if (p_bar > 0 && p_bar < 1) {
        t.z = t.slope / sqrt(p_bar * (1 - p_bar) / sxx);
        t.p = erfc(fabs(t.z) / sqrt(2.0));
    }
    return t;
}

// ----------------------------------------------------------------------------
// Ablation design: which layers a condition removes. ablation-scan writes the selected
// layers (and, for mean ablation, each component's mean output); the random control is
// drawn from the run seed; generation reads them back.

void layer_set_free(LayerSet *s) {
    free(s->attn_layers);
    free(s->mlp_layers);
    memset(s, 0, sizeof *s);
}

void layer_set_json(Buf *b, const LayerSet *s) {
    buf_printf(b, "{\"kind\": \"%s\", \"attn_layers\": [", s->kind == ABLATE_MEAN ? "mean" : "zero");
    for (int i = 0; i < s->n_attn; i++) buf_printf(b, "%s%d", i ? ", " : "", s->attn_layers[i]);
    buf_puts(b, "], \"mlp_layers\": [");
    for (int i = 0; i < s->n_mlp; i++) buf_printf(b, "%s%d", i ? ", " : "", s->mlp_layers[i]);
    buf_puts(b, "]}");
}

static int read_int_array(const Json *j, int t, int **out, int *n, int n_layers, const char *path, const char *key, Err *err) {
    if (t < 0 || j->tok[t].type != JSON_ARRAY) return err_input(err, "%s: \"%s\" must be an array of layer indices", path, key);
    *out = xmalloc((size_t)(j->tok[t].size + 1) * sizeof **out);
    *n = 0;
    JSON_FOR_ARRAY(j, t, i, e) {
        long long v;
        if (json_int(j, e, &v) || v < 0 || v >= n_layers) {
            free(*out);
            *out = NULL;
            return err_input(err, "%s:%d: \"%s\"[%d] is not a layer index in [0, %d)", path, json_line(j, e), key, i, n_layers);
        }
        (*out)[(*n)++] = (int)v;
    }
    return 0;
}

// Reads {"attn_layers": [...], "mlp_layers": [...]} (selected or random layers).
int layer_set_read(const char *path, int n_layers, LayerSet *s, Err *err) {
    memset(s, 0, sizeof *s);
    Buf text = {0};
    Json j;
    if (read_file(path, &text, err)) return -1;
    int rc = json_parse(&j, text.data, text.len, path, err);
    if (rc == 0) {
        rc = read_int_array(&j, json_key(&j, 0, "attn_layers"), &s->attn_layers, &s->n_attn, n_layers, path, "attn_layers", err);
        if (rc == 0) rc = read_int_array(&j, json_key(&j, 0, "mlp_layers"), &s->mlp_layers, &s->n_mlp, n_layers, path, "mlp_layers", err);
        json_free(&j);
    }
    buf_free(&text);
    if (rc) layer_set_free(s);
    return rc;
}

// Draws as many attention and MLP layers as the targeted set has, none of them
// targeted, from the run seed (the seed's fix 4: a shape-matched control).
int draw_random_layers(const LayerSet *targeted, int n_layers, long long seed, LayerSet *out, Err *err) {
    memset(out, 0, sizeof *out);
    out->kind = targeted->kind;
    Rng rng;
    rng_seed(&rng, seed_mix((uint64_t)seed, 0x5A4D0A));
    for (int part = 0; part < 2; part++) {
        const int *chosen = part ? targeted->mlp_layers : targeted->attn_layers;
        int n_chosen = part ? targeted->n_mlp : targeted->n_attn;
        int *pool = xmalloc((size_t)n_layers * sizeof *pool), n_pool = 0;
        for (int l = 0; l < n_layers; l++) {
            int taken = 0;
            for (int i = 0; i < n_chosen; i++) taken |= chosen[i] == l;
            if (!taken) pool[n_pool++] = l;
        }
        if (n_pool < n_chosen) {
            free(pool);
            layer_set_free(out);
            return err_input(err, "cannot draw %d random %s layers outside the %d targeted ones: the model has %d layers",
                             n_chosen, part ? "MLP" : "attention", n_chosen, n_layers);
        }
        for (int i = 0; i < n_chosen; i++) { // partial Fisher-Yates
            int k = i + (int)rng_below(&rng, (uint64_t)(n_pool - i));
            int t = pool[i]; pool[i] = pool[k]; pool[k] = t;
        }
        qsort(pool, (size_t)n_chosen, sizeof *pool, cmp_int_asc);
        if (part) { out->mlp_layers = pool; out->n_mlp = n_chosen; }
        else { out->attn_layers = pool; out->n_attn = n_chosen; }
    }
    return 0;
}

// Reads analysis/component_means.json (written by ablation-scan): the mean
// output of every attention block and MLP over the run's completions.
int component_means_read(const Run *run, const ModelConfig *mc, float **attn_mean, float **mlp_mean, Err *err) {
    char path[1200];
    run_path(run, path, sizeof path, ART_MEANS);
    Buf text = {0};
    Json j;
    *attn_mean = *mlp_mean = NULL;
    if (!path_exists(path)) return err_input(err, "no %s in run %s: run ablation-scan with [ablation] kind = mean first", ART_MEANS, run->id);
    if (read_file(path, &text, err)) return -1;
    if (json_parse(&j, text.data, text.len, path, err)) {
        buf_free(&text);
        return -1;
    }
    int rc = 0;
    size_t n = (size_t)mc->n_layers * (size_t)mc->hidden_size;
    const char *keys[2] = {"attn", "mlp"};
    float **outs[2] = {attn_mean, mlp_mean};
    for (int part = 0; part < 2 && rc == 0; part++) {
        int t = json_key(&j, 0, keys[part]);
        if (t < 0 || j.tok[t].type != JSON_ARRAY || (size_t)j.tok[t].size != n) {
            rc = err_input(err, "%s: \"%s\" must hold %d x %d numbers for this model", path, keys[part], mc->n_layers, mc->hidden_size);
            break;
        }
        float *v = xmalloc(n * sizeof *v);
        JSON_FOR_ARRAY(&j, t, i, e) {
            double d;
            if (json_number(&j, e, &d)) { rc = err_input(err, "%s:%d: not a number", path, json_line(&j, e)); break; }
            v[i] = (float)d;
        }
        *outs[part] = v;
    }
    json_free(&j);
    buf_free(&text);
    if (rc) {
        free(*attn_mean);
        free(*mlp_mean);
        *attn_mean = *mlp_mean = NULL;
    }
    return rc;
}

// ----------------------------------------------------------------------------
// Events: backtracking triggers in the thinking part of each completion,
// mapped to the token that carries them, and position-matched controls.

static int ascii_alnum(unsigned char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); }

// Finds trigger occurrences in text[0..n): case-sensitive, a whole word at each
// end, earliest first, overlaps resolved for the earliest (then longest) match.
int find_triggers(const char *text, size_t n, char *const *triggers, int n_triggers, TriggerHit *hits, int max_hits) {
    int n_hits = 0;
    for (size_t at = 0; at < n && n_hits < max_hits;) {
        int best = -1;
        size_t best_len = 0;
        if (at == 0 || !ascii_alnum((unsigned char)text[at - 1]))
            for (int t = 0; t < n_triggers; t++) {
                size_t len = strlen(triggers[t]);
                if (len == 0 || at + len > n || memcmp(text + at, triggers[t], len) != 0) continue;
                if (at + len < n && ascii_alnum((unsigned char)text[at + len]) && ascii_alnum((unsigned char)triggers[t][len - 1])) continue;
                if (len > best_len) {
                    best = t;
                    best_len = len;
                }
            }
        if (best < 0) {
            at++;
            continue;
        }
        hits[n_hits++] = (TriggerHit){best, (int)at, (int)(at + best_len)};
        at += best_len;
    }
    return n_hits;
}

// Token index whose span [offsets[k], offsets[k+1]) holds byte b.
static int token_at_byte(const int *offsets, int n_tokens, int b) {
    int lo = 0, hi = n_tokens - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (offsets[mid] <= b) lo = mid;
        else hi = mid - 1;
    }
    while (lo < n_tokens - 1 && offsets[lo + 1] <= b) lo++; // skip empty tokens
    return lo;
}

typedef struct {
    int record;       // index in the completions of the run
    int trigger;      // index in the config's triggers
    int char_offset;  // byte offset of the trigger in the completion text
    int token_offset; // k: the completion token holding the trigger's first byte
    int onset_token_id;
} Event;

typedef struct {
    GenRecord *records; // every completion of the run (n_records)
    int n_records;
    int *first_event;   // (n_records + 1) events of record r: first_event[r] .. first_event[r+1]-1
    Event *events;      // (n_events)
    int n_events;
} RunEvents;

static void run_events_free(RunEvents *e) {
    generations_free(e->records, e->n_records);
    free(e->first_event);
    free(e->events);
    memset(e, 0, sizeof *e);
}

// Lists generations/<variant>/<condition>.jsonl in a stable order: the
// config's variants first, then any other variant folder, conditions in order.
static int generation_files(const Config *c, const Run *run, char ***out, Err *err) {
    (void)err;
    static const char *const conditions[] = {"baseline", "targeted_ablation", "random_ablation"};
    char **files = NULL;
    int n = 0;
    // after the three conditions, each steering condition
    SteerCondition *steer = xmalloc((size_t)(2 * c->n_steer_alphas + 1) * sizeof *steer);
    int n_steer = steer_conditions(c, NULL, steer);
    for (int v = 0; v < c->n_variant_defs; v++) {
        for (int k = 0; k < 3 + n_steer; k++) {
            char path[1200];
            run_generation_path(run, path, sizeof path, c->variant_defs[v].name, k < 3 ? conditions[k] : steer[k - 3].name);
            if (!path_exists(path)) continue;
            files = xrealloc(files, (size_t)(n + 1) * sizeof *files);
            files[n++] = xstrdup(path);
        }
    }
    free(steer);
    *out = files;
    return n;
}

static int detect_run_events(const Config *c, const Run *run, const Tokenizer *tok, RunEvents *ev, Err *err) {
    memset(ev, 0, sizeof *ev);
    char **files;
    int n_files = generation_files(c, run, &files, err);
    int rc = 0;
    for (int f = 0; f < n_files && rc == 0; f++) {
        GenRecord *recs;
        int n;
        rc = generations_read(files[f], &recs, &n, err);
        if (rc == 0) {
            ev->records = xrealloc(ev->records, (size_t)(ev->n_records + n + 1) * sizeof *ev->records);
            memcpy(ev->records + ev->n_records, recs, (size_t)n * sizeof *recs);
            ev->n_records += n;
            free(recs);
        }
    }
    for (int f = 0; f < n_files; f++) free(files[f]);
    free(files);
    if (rc) return -1;
    if (ev->n_records == 0) return err_input(err, "no generations in run %s: run generate first", run->id);
    ev->first_event = xmalloc((size_t)(ev->n_records + 1) * sizeof *ev->first_event);
    Buf text = {0};
    int *offsets = NULL, cap = 0;
    TriggerHit hits[256];
    for (int r = 0; r < ev->n_records; r++) {
        const GenRecord *rec = &ev->records[r];
        ev->first_event[r] = ev->n_events;
        if (rec->n_completion + 1 > cap) {
            cap = rec->n_completion + 1;
            offsets = xrealloc(offsets, (size_t)cap * sizeof *offsets);
        }
        text.len = 0;
        tokenizer_decode(tok, rec->completion_ids, rec->n_completion, &text, offsets);
        if (rec->n_completion == 0) continue;
        // Only the thinking part counts: up to </think> when the completion has one.
        size_t thinking_len = 0;
        while (thinking_len + 8 <= text.len && memcmp(text.data + thinking_len, "</think>", 8) != 0) thinking_len++;
        if (thinking_len + 8 > text.len) thinking_len = text.len;
        int n_hits = find_triggers(text.data, thinking_len, c->triggers, c->n_triggers, hits, 256);
        ev->events = xrealloc(ev->events, (size_t)(ev->n_events + n_hits + 1) * sizeof *ev->events);
        for (int h = 0; h < n_hits; h++) {
            int k = token_at_byte(offsets, rec->n_completion, hits[h].start);
            ev->events[ev->n_events++] = (Event){r, hits[h].trigger, hits[h].start, k, rec->completion_ids[k]};
        }
    }
    ev->first_event[ev->n_records] = ev->n_events;
    buf_free(&text);
    free(offsets);
    return 0;
}

static int same_group(const GenRecord *a, const GenRecord *b) { return strcmp(a->variant, b->variant) == 0 && strcmp(a->condition, b->condition) == 0; }

// Whether record r has an event within distance tokens of k.
static int event_near(const RunEvents *ev, int r, int k, int distance) {
    for (int e = ev->first_event[r]; e < ev->first_event[r + 1]; e++)
        if (abs(ev->events[e].token_offset - k) <= distance) return 1;
    return 0;
}

// One row of backtracking_events.csv.
static void event_row(Buf *b, const Run *run, const Tokenizer *tok, const char *kind, int event_id, const GenRecord *rec,
                      const char *trigger, int char_offset, int k, int onset_token_id) {
    int n_bytes;
    const char *onset = tokenizer_token_bytes(tok, onset_token_id, &n_bytes);
    buf_printf(b, "%s,%s,%d,", run->id, kind, event_id);
    buf_csv_field(b, rec->variant, strlen(rec->variant));
    buf_putc(b, ',');
    buf_csv_field(b, rec->condition, strlen(rec->condition));
    buf_putc(b, ',');
    buf_csv_field(b, rec->problem_id, strlen(rec->problem_id));
    buf_printf(b, ",%d,", rec->sample);
    buf_csv_field(b, trigger, strlen(trigger));
    buf_printf(b, ",%d,%d,%d,", char_offset, k, onset_token_id);
    Buf escaped = {0}; // the token text as JSON, so spaces and newlines stay visible
    buf_json_string(&escaped, onset ? onset : "", onset ? (size_t)n_bytes : 0);
    buf_csv_field(b, escaped.data, escaped.len);
    buf_free(&escaped);
    buf_printf(b, ",%d,%d,%d,%d\n", rec->prompt_tokens, rec->prompt_tokens + k - 1, rec->n_completion, rec->completion_ids[k < rec->n_completion ? k : 0]);
}

#define EVENTS_HEADER "run_id,kind,event_id,variant,condition,problem_id,sample,trigger,char_offset,token_offset,onset_token_id,onset_token,prompt_tokens,pred_pos,completion_tokens,token_at_offset\n"

int cmd_detect_events(int argc, char **argv) {
    Opt opts[] = {OPT_CONFIG, OPT_END};
    Err err = {0};
    Config c;
    Run run;
    int exit_code;
    if (stage_open(argc, argv, opts, &c, &run, &exit_code)) return exit_code;
    Tokenizer *tok = NULL;
    RunEvents ev = {0};
    char path[1200];
    snprintf(path, sizeof path, "%s/tokenizer.json", c.model_path);
    if (tokenizer_load(&tok, path, &err) || detect_run_events(&c, &run, tok, &ev, &err)) goto out;
    // Events, then their controls: for each event, completions of the same
    // variant and condition that reach k with no event within the distance.
    Buf csv = {0};
    buf_puts(&csv, EVENTS_HEADER);
    for (int e = 0; e < ev.n_events; e++) {
        const Event *x = &ev.events[e];
        event_row(&csv, &run, tok, "event", e, &ev.records[x->record], c.triggers[x->trigger], x->char_offset, x->token_offset, x->onset_token_id);
    }
    int *pool = xmalloc((size_t)ev.n_records * sizeof *pool), n_controls = 0;
    for (int e = 0; e < ev.n_events; e++) {
        const Event *x = &ev.events[e];
        const GenRecord *own = &ev.records[x->record];
        int n_pool = 0;
        for (int q = 0; q < ev.n_records; q++)
            if (q != x->record && same_group(&ev.records[q], own) && ev.records[q].n_completion >= x->token_offset + 1 &&
                !event_near(&ev, q, x->token_offset, c.control_min_distance))
                pool[n_pool++] = q;
        Rng rng;
        rng_seed(&rng, seed_mix(seed_mix((uint64_t)c.seed, 0xC0417201), (uint64_t)e));
        int want = c.controls_per_event < n_pool ? c.controls_per_event : n_pool;
        for (int i = 0; i < want; i++) {
            int k = i + (int)rng_below(&rng, (uint64_t)(n_pool - i));
            int t = pool[i]; pool[i] = pool[k]; pool[k] = t;
            event_row(&csv, &run, tok, "control", e, &ev.records[pool[i]], c.triggers[x->trigger], -1, x->token_offset, x->onset_token_id);
            n_controls++;
        }
    }
    free(pool);
    run_path(&run, path, sizeof path, ART_EVENTS);
    if (write_file_atomic(path, csv.data, csv.len, &err)) {
        buf_free(&csv);
        goto out;
    }
    buf_free(&csv);
    // Summary per variant x condition, in the order the completions were read.
    Buf js = {0};
    buf_printf(&js, "{\n  \"run_id\": \"%s\",\n  \"n_completions\": %d,\n  \"n_events\": %d,\n  \"n_controls\": %d,\n  \"groups\": [",
               run.id, ev.n_records, ev.n_events, n_controls);
    int n_groups = 0;
    for (int q = 0; q < ev.n_records; q++) {
        int first = 1;
        for (int p = 0; p < q && first; p++) first = !same_group(&ev.records[p], &ev.records[q]);
        if (!first) continue;
        int n = 0, with_bt = 0, events = 0, correct = 0, correct_bt = 0;
        long long tokens = 0;
        for (int p = q; p < ev.n_records; p++) {
            if (!same_group(&ev.records[p], &ev.records[q])) continue;
            int n_ev = ev.first_event[p + 1] - ev.first_event[p];
            n++;
            events += n_ev;
            with_bt += n_ev > 0;
            tokens += ev.records[p].n_completion;
            correct += ev.records[p].correct;
            correct_bt += ev.records[p].correct && n_ev > 0;
        }
        buf_puts(&js, n_groups++ ? ",\n    {" : "\n    {");
        buf_puts(&js, "\"variant\": ");
        buf_json_string(&js, ev.records[q].variant, strlen(ev.records[q].variant));
        buf_puts(&js, ", \"condition\": ");
        buf_json_string(&js, ev.records[q].condition, strlen(ev.records[q].condition));
        buf_printf(&js, ", \"completions\": %d, \"with_backtracking\": %d, \"backtracking_rate\": ", n, with_bt);
        buf_json_double(&js, (double)with_bt / n);
        buf_printf(&js, ", \"events\": %d, \"completion_tokens\": %lld, \"events_per_1k_tokens\": ", events, tokens);
        buf_json_double(&js, tokens ? 1000.0 * events / (double)tokens : NAN);
        buf_printf(&js, ", \"correct\": %d, \"accuracy\": ", correct);
        buf_json_double(&js, (double)correct / n);
        buf_puts(&js, ", \"mean_length\": ");
        buf_json_double(&js, (double)tokens / n);
        buf_printf(&js, ", \"correct_with_backtracking\": %d, \"accuracy_with_backtracking\": ", correct_bt);
        buf_json_double(&js, with_bt ? (double)correct_bt / with_bt : NAN);
        buf_puts(&js, ", \"accuracy_without_backtracking\": ");
        buf_json_double(&js, n - with_bt ? (double)(correct - correct_bt) / (n - with_bt) : NAN);
        buf_putc(&js, '}');
    }
    buf_puts(&js, "\n  ]\n}\n");
    run_path(&run, path, sizeof path, ART_SUMMARY);
    int wrc = write_file_atomic(path, js.data, js.len, &err);
    buf_free(&js);
    if (wrc) goto out;
    printf("detect-events: %d completions, %d events, %d controls\n", ev.n_records, ev.n_events, n_controls);
out:
    run_events_free(&ev);
    if (tok) tokenizer_free(tok);
    config_free(&c);
    return err.msg[0] ? fail(&err) : 0;
}

// ----------------------------------------------------------------------------
// Group statistics shared by detect-events, compare-conditions and the
// formatting sweep: one variant x condition's completions and their events.

typedef struct {
    int n, with_bt, events, correct, correct_bt;
    long long tokens;
    Interval rate, accuracy, events_per_1k, mean_length; // 95% CIs: Wilson for proportions, bootstrap for the others
} GroupStats;

static GroupStats group_stats(const GenRecord *recs, const int *n_events, int n, uint64_t seed) {
    GroupStats g = {0};
    double *ev = xmalloc((size_t)(n + 1) * sizeof *ev), *len = xmalloc((size_t)(n + 1) * sizeof *len);
    for (int i = 0; i < n; i++) {
        g.n++;
        g.events += n_events[i];
        g.with_bt += n_events[i] > 0;
        g.tokens += recs[i].n_completion;
        g.correct += recs[i].correct;
        g.correct_bt += recs[i].correct && n_events[i] > 0;
        ev[i] = 1000.0 * n_events[i];
        len[i] = recs[i].n_completion;
    }
    g.rate = wilson95(g.with_bt, g.n);
    g.accuracy = wilson95(g.correct, g.n);
    g.events_per_1k = bootstrap_ratio95(ev, n, len, n, STAT_RESAMPLES, seed_mix(seed, 1));
    g.mean_length = bootstrap_mean95(len, n, STAT_RESAMPLES, seed_mix(seed, 2));
    free(ev);
    free(len);
    return g;
}

static void put_num(Buf *b, double x) {
    buf_putc(b, ',');
    if (x == x) buf_printf(b, "%.6g", x);
    else buf_puts(b, "nan");
}

#define GROUP_STATS_HEADER "completions,with_backtracking,backtracking_rate,rate_ci_lo,rate_ci_hi,events,completion_tokens," \
    "events_per_1k_tokens,events_per_1k_ci_lo,events_per_1k_ci_hi,mean_length,length_ci_lo,length_ci_hi,correct,accuracy,accuracy_ci_lo,accuracy_ci_hi"

static void group_stats_csv(Buf *b, const GroupStats *g) {
    buf_printf(b, ",%d,%d", g->n, g->with_bt);
    put_num(b, g->rate.est); put_num(b, g->rate.lo); put_num(b, g->rate.hi);
    buf_printf(b, ",%d,%lld", g->events, g->tokens);
    put_num(b, g->events_per_1k.est); put_num(b, g->events_per_1k.lo); put_num(b, g->events_per_1k.hi);
    put_num(b, g->mean_length.est); put_num(b, g->mean_length.lo); put_num(b, g->mean_length.hi);
    buf_printf(b, ",%d", g->correct);
    put_num(b, g->accuracy.est); put_num(b, g->accuracy.lo); put_num(b, g->accuracy.hi);
}

// The completions of one variant x condition and the event count of each,
// counted from backtracking_events.csv (the pipeline's record of events).
static int load_group(const Run *run, const Csv *events, const char *variant, const char *condition, GenRecord **recs, int *n,
                      int **n_events, Err *err) {
    char path[1200];
    *recs = NULL;
    *n = 0;
    *n_events = NULL;
    run_generation_path(run, path, sizeof path, variant, condition);
    if (!path_exists(path)) return 1; // absent: the caller decides
    if (generations_read(path, recs, n, err)) return -1;
    *n_events = xcalloc((size_t)(*n + 1), sizeof **n_events);
    int kind = csv_col(events, "kind"), var = csv_col(events, "variant"), cond = csv_col(events, "condition");
    int prob = csv_col(events, "problem_id"), sample = csv_col(events, "sample");
    if (kind < 0 || var < 0 || cond < 0 || prob < 0 || sample < 0)
        return err_input(err, "%s: missing columns (run detect-events again)", ART_EVENTS);
    for (int r = 0; r < events->n_rows; r++) {
        if (strcmp(csv_cell(events, r, kind), "event") || strcmp(csv_cell(events, r, var), variant) || strcmp(csv_cell(events, r, cond), condition))
            continue;
        int s = atoi(csv_cell(events, r, sample));
        for (int i = 0; i < *n; i++)
            if ((*recs)[i].sample == s && strcmp((*recs)[i].problem_id, csv_cell(events, r, prob)) == 0) {
                (*n_events)[i]++;
                break;
            }
    }
    return 0;
}

static int events_csv_open(const Run *run, Csv *events, Err *err) {
    char path[1200];
    run_path(run, path, sizeof path, ART_EVENTS);
    if (!path_exists(path)) return err_input(err, "no events in run %s: run detect-events first", run->id);
    return csv_read(path, events, err);
}

// ----------------------------------------------------------------------------
// Compare conditions: baseline vs targeted vs random ablation of one variant.

int cmd_compare_conditions(int argc, char **argv) {
    Opt opts[] = {OPT_CONFIG,
                  OPT("--variant", 1, "variant to compare (default [logit_lens] variant)"), OPT_END};
    Err err = {0};
    Config c;
    Run run;
    int exit_code;
    if (stage_open(argc, argv, opts, &c, &run, &exit_code)) return exit_code;
    const char *variant = opt_str(opts, "--variant", c.lens_variant);
    static const char *const conditions[3] = {"baseline", "targeted_ablation", "random_ablation"};
    GenRecord *recs[3] = {0};
    int n[3] = {0}, *n_events[3] = {0};
    GroupStats g[3];
    Csv events = {0};
    Buf csv = {0};
    if (events_csv_open(&run, &events, &err)) goto out;
    for (int k = 0; k < 3; k++) {
        int rc = load_group(&run, &events, variant, conditions[k], &recs[k], &n[k], &n_events[k], &err);
        if (rc < 0) goto out;
        if (rc > 0) {
            err_input(&err, "no %s generations of variant %s in run %s: run generate --condition %s --variant %s first", conditions[k],
                      variant, run.id, conditions[k], variant);
            goto out;
        }
        g[k] = group_stats(recs[k], n_events[k], n[k], seed_mix((uint64_t)c.seed, 0xC0DE + (uint64_t)k));
    }
    double p_vs_baseline = fisher_exact_p(g[1].with_bt, g[1].n - g[1].with_bt, g[0].with_bt, g[0].n - g[0].with_bt);
    double p_vs_random = fisher_exact_p(g[1].with_bt, g[1].n - g[1].with_bt, g[2].with_bt, g[2].n - g[2].with_bt);
    buf_puts(&csv, "run_id,variant,condition," GROUP_STATS_HEADER ",relative_drop_vs_baseline,fisher_p_vs_baseline,fisher_p_targeted_vs_random\n");
    for (int k = 0; k < 3; k++) {
        buf_printf(&csv, "%s,", run.id);
        buf_csv_field(&csv, variant, strlen(variant));
        buf_printf(&csv, ",%s", conditions[k]);
        group_stats_csv(&csv, &g[k]);
        put_num(&csv, k ? 1.0 - g[k].rate.est / g[0].rate.est : 0.0);
        put_num(&csv, k ? fisher_exact_p(g[k].with_bt, g[k].n - g[k].with_bt, g[0].with_bt, g[0].n - g[0].with_bt) : NAN);
        put_num(&csv, k == 1 ? p_vs_random : NAN);
        buf_putc(&csv, '\n');
    }
    char path[1200];
    run_path(&run, path, sizeof path, ART_CONDITIONS);
    if (write_file_atomic(path, csv.data, csv.len, &err)) goto out;
    printf("compare-conditions: backtracking rate baseline %.3f, targeted %.3f, random %.3f; Fisher p targeted vs baseline %.3g\n",
           g[0].rate.est, g[1].rate.est, g[2].rate.est, p_vs_baseline);
out:
    for (int k = 0; k < 3; k++) {
        generations_free(recs[k], n[k]);
        free(n_events[k]);
    }
    csv_free(&events);
    buf_free(&csv);
    config_free(&c);
    return err.msg[0] ? fail(&err) : 0;
}

// ----------------------------------------------------------------------------
// Formatting sweep: the baseline variants side by side, chi-square across them.

int cmd_formatting_sweep(int argc, char **argv) {
    Opt opts[] = {OPT_CONFIG, OPT_END};
    Err err = {0};
    Config c;
    Run run;
    int exit_code;
    if (stage_open(argc, argv, opts, &c, &run, &exit_code)) return exit_code;
    int nv = c.n_variants;
    GenRecord **recs = xcalloc((size_t)nv, sizeof *recs);
    int *n = xcalloc((size_t)nv, sizeof *n), **n_events = xcalloc((size_t)nv, sizeof *n_events);
    GroupStats *g = xcalloc((size_t)nv, sizeof *g);
    long long *bt_k = xcalloc((size_t)nv, sizeof *bt_k), *nn = xcalloc((size_t)nv, sizeof *nn);
    const char **names = xcalloc((size_t)nv, sizeof *names);
    Csv events = {0};
    Buf csv = {0};
    int used = 0;
    if (events_csv_open(&run, &events, &err)) goto out;
    for (int v = 0; v < nv; v++) {
        int rc = load_group(&run, &events, c.variants[v], "baseline", &recs[used], &n[used], &n_events[used], &err);
        if (rc < 0) goto out;
        if (rc > 0) continue; // a variant not generated is left out, and said so below
        g[used] = group_stats(recs[used], n_events[used], n[used], seed_mix((uint64_t)c.seed, 0xF0F0 + (uint64_t)v));
        names[used] = c.variants[v];
        bt_k[used] = g[used].with_bt;
        nn[used] = g[used].n;
        used++;
    }
    if (used == 0) {
        err_input(&err, "no baseline generations in run %s: run generate --condition baseline first", run.id);
        goto out;
    }
    ChiSquare chi = chi2_homogeneity(bt_k, nn, used);
    double max_rate = -1, min_rate = 2;
    for (int v = 0; v < used; v++) {
        if (g[v].rate.est > max_rate) max_rate = g[v].rate.est;
        if (g[v].rate.est < min_rate) min_rate = g[v].rate.est;
    }
    double ratio = min_rate > 0 ? max_rate / min_rate : max_rate > 0 ? INFINITY : NAN;
    buf_puts(&csv, "run_id,variant,thinking_open," GROUP_STATS_HEADER ",chi2_stat,chi2_df,chi2_p,max_min_rate_ratio\n");
    for (int v = 0; v < used; v++) {
        buf_printf(&csv, "%s,", run.id);
        buf_csv_field(&csv, names[v], strlen(names[v]));
        buf_printf(&csv, ",%d", prompt_thinking_open(config_variant(&c, names[v])->template_text));
        group_stats_csv(&csv, &g[v]);
        put_num(&csv, chi.stat);
        buf_printf(&csv, ",%d", chi.df);
        put_num(&csv, chi.p);
        put_num(&csv, ratio);
        buf_putc(&csv, '\n');
    }
    char path[1200];
    run_path(&run, path, sizeof path, ART_FORMATTING);
    if (write_file_atomic(path, csv.data, csv.len, &err)) goto out;
    printf("formatting-sweep: %d variants, chi-square %.3g (df %d) p = %.3g, max/min rate ratio %.3g\n", used, chi.stat, chi.df, chi.p, ratio);
    if (used < nv) progress("formatting-sweep: %d of %d variants have no baseline generations and are left out\n", nv - used, nv);
out:
    for (int v = 0; v < nv; v++) {
        generations_free(recs[v], n[v]);
        free(n_events[v]);
    }
    free(recs); free(n); free(n_events); free(g); free(bt_k); free(nn); free(names);
    csv_free(&events);
    buf_free(&csv);
    config_free(&c);
    return err.msg[0] ? fail(&err) : 0;
}

// ----------------------------------------------------------------------------
// Items: the events (and their controls) an analysis looks at, each with the
// completion it sits in, teacher-forced up to its pred_pos.

typedef struct {
    int is_control;
    int event_id;       // the event's id in backtracking_events.csv (a control: its event's)
    int record;         // index into the loaded completions
    int pred_pos;       // prompt_tokens + k - 1: the position whose logits predict the onset
    int onset_token_id; // the event's onset token (controls use their event's)
    int seq;            // sequence (completion) it is read from
    int read;           // index of pred_pos among that sequence's read positions
} Item;

typedef struct {
    GenRecord *records; // completions of one variant, baseline condition
    int n_records;
    Item *items;        // (n_items) events first, then controls
    int n_items, n_events;
    ForcedSeq *seqs;    // (n_seqs) one per completion: prompt + completion up to its last pred_pos
    int *seq_record;    // (n_seqs) the completion of each
    int n_seqs;
} Items;

static void items_free(Items *it) {
    generations_free(it->records, it->n_records);
    free(it->items);
    for (int s = 0; s < it->n_seqs; s++) {
        free(it->seqs[s].tokens);
        free(it->seqs[s].read_pos);
    }
    free(it->seqs);
    free(it->seq_record);
    memset(it, 0, sizeof *it);
}

static int find_record(const Items *it, const char *problem_id, int sample) {
    for (int r = 0; r < it->n_records; r++)
        if (it->records[r].sample == sample && strcmp(it->records[r].problem_id, problem_id) == 0) return r;
    return -1;
}

// Reads the events of variant (baseline condition) from backtracking_events.csv,
// keeps at most max_events of them (a seeded choice) with their controls, and
// lays out one teacher-forced sequence per completion involved.
static int items_load(const Config *c, const Run *run, const Tokenizer *tok, const char *variant, int max_events, Items *it, Err *err) {
    memset(it, 0, sizeof *it);
    char path[1200];
    run_path(run, path, sizeof path, ART_EVENTS);
    if (!path_exists(path)) return err_input(err, "no events in run %s: run detect-events first", run->id);
    Csv csv;
    if (csv_read(path, &csv, err)) return -1;
    static const char *const cols[] = {"kind", "event_id", "variant", "condition", "problem_id", "sample", "pred_pos", "onset_token_id", "prompt_tokens"};
    int col[9];
    for (int i = 0; i < 9; i++)
        if ((col[i] = csv_col(&csv, cols[i])) < 0) {
            csv_free(&csv);
            return err_input(err, "%s: no column '%s' (written by another version? run detect-events again)", path, cols[i]);
        }
    run_generation_path(run, path, sizeof path, variant, "baseline");
    if (!path_exists(path)) {
        csv_free(&csv);
        return err_input(err, "no baseline generations for variant %s in run %s: run generate first", variant, run->id);
    }
    if (generations_read(path, &it->records, &it->n_records, err)) {
        csv_free(&csv);
        return -1;
    }
    // The events of this variant, then a seeded choice of max_events of them.
    int *rows = xmalloc((size_t)(csv.n_rows + 1) * sizeof *rows), n_rows = 0;
    for (int r = 0; r < csv.n_rows; r++)
        if (strcmp(csv_cell(&csv, r, col[0]), "event") == 0 && strcmp(csv_cell(&csv, r, col[2]), variant) == 0 &&
            strcmp(csv_cell(&csv, r, col[3]), "baseline") == 0)
            rows[n_rows++] = r;
    if (n_rows > max_events) {
        Rng rng;
        rng_seed(&rng, seed_mix((uint64_t)c->seed, 0x17E45));
        for (int i = 0; i < max_events; i++) {
            int k = i + (int)rng_below(&rng, (uint64_t)(n_rows - i));
            int t = rows[i]; rows[i] = rows[k]; rows[k] = t;
        }
        n_rows = max_events;
        qsort(rows, (size_t)n_rows, sizeof *rows, cmp_int_asc);
    }
    int n_chosen = n_rows, *chosen_ids = xmalloc((size_t)(n_chosen + 1) * sizeof *chosen_ids);
    for (int i = 0; i < n_chosen; i++) chosen_ids[i] = atoi(csv_cell(&csv, rows[i], col[1]));
    // Controls of the chosen events follow the events.
    for (int r = 0; r < csv.n_rows; r++) {
        if (strcmp(csv_cell(&csv, r, col[0]), "control") != 0 || strcmp(csv_cell(&csv, r, col[2]), variant) != 0 ||
            strcmp(csv_cell(&csv, r, col[3]), "baseline") != 0)
            continue;
        int id = atoi(csv_cell(&csv, r, col[1])), keep = 0;
        for (int i = 0; i < n_chosen && !keep; i++) keep = chosen_ids[i] == id;
        if (keep) {
            rows = xrealloc(rows, (size_t)(n_rows + 1) * sizeof *rows);
            rows[n_rows++] = r;
        }
    }
    free(chosen_ids);
    it->items = xcalloc((size_t)(n_rows + 1), sizeof *it->items);
    int rc = 0;
    for (int i = 0; i < n_rows && rc == 0; i++) {
        int r = rows[i];
        Item *x = &it->items[it->n_items];
        x->is_control = strcmp(csv_cell(&csv, r, col[0]), "control") == 0;
        x->event_id = atoi(csv_cell(&csv, r, col[1]));
        x->pred_pos = atoi(csv_cell(&csv, r, col[6]));
        x->onset_token_id = atoi(csv_cell(&csv, r, col[7]));
        x->record = find_record(it, csv_cell(&csv, r, col[4]), atoi(csv_cell(&csv, r, col[5])));
        if (x->record < 0) {
            rc = err_input(err, "%s: problem %s sample %s of the events is not among the generations of %s", ART_EVENTS,
                           csv_cell(&csv, r, col[4]), csv_cell(&csv, r, col[5]), variant);
            break;
        }
        const GenRecord *rec = &it->records[x->record];
        int k = x->pred_pos - rec->prompt_tokens + 1;
        if (atoi(csv_cell(&csv, r, col[8])) != rec->prompt_tokens || k < 0 || k > rec->n_completion) {
            rc = err_input(err, "%s: event %d does not fit its completion (run detect-events again)", ART_EVENTS, x->event_id);
            break;
        }
        if (!x->is_control) it->n_events++;
        it->n_items++;
    }
    free(rows);
    csv_free(&csv);
    if (rc) return -1;
    // One sequence per completion: prompt tokens (the one tokenization path) + completion.
    it->seqs = xcalloc((size_t)(it->n_items + 1), sizeof *it->seqs);
    it->seq_record = xcalloc((size_t)(it->n_items + 1), sizeof *it->seq_record);
    TokenList prompt = {0};
    for (int i = 0; i < it->n_items && rc == 0; i++) {
        Item *x = &it->items[i];
        int s = 0;
        while (s < it->n_seqs && it->seq_record[s] != x->record) s++;
        ForcedSeq *q = &it->seqs[s];
        if (s == it->n_seqs) {
            const GenRecord *rec = &it->records[x->record];
            prompt.n = 0;
            rc = tokenizer_encode(tok, rec->prompt, strlen(rec->prompt), &prompt, err);
            if (rc) break;
            if (prompt.n != rec->prompt_tokens) {
                rc = err_input(err, "problem %s: the prompt now encodes to %d tokens, the record says %d (tokenizer changed?)",
                               rec->problem_id, prompt.n, rec->prompt_tokens);
                break;
            }
            it->n_seqs++;
            it->seq_record[s] = x->record;
            q->tokens = xmalloc((size_t)(prompt.n + rec->n_completion + 1) * sizeof *q->tokens);
            for (int t = 0; t < prompt.n; t++) q->tokens[t] = prompt.v[t].id;
            memcpy(q->tokens + prompt.n, rec->completion_ids, (size_t)rec->n_completion * sizeof *q->tokens);
            q->read_pos = xmalloc((size_t)(it->n_items + 1) * sizeof *q->read_pos);
        }
        int r = 0;
        while (r < q->n_read && q->read_pos[r] != x->pred_pos) r++;
        if (r == q->n_read) q->read_pos[q->n_read++] = x->pred_pos;
        if (x->pred_pos + 1 > q->n_tokens) q->n_tokens = x->pred_pos + 1;
        x->seq = s;
    }
    tokens_free(&prompt);
    if (rc) return -1;
    for (int s = 0; s < it->n_seqs; s++) qsort(it->seqs[s].read_pos, (size_t)it->seqs[s].n_read, sizeof(int), cmp_int_asc);
    for (int i = 0; i < it->n_items; i++) {
        const ForcedSeq *q = &it->seqs[it->items[i].seq];
        int r = 0;
        while (q->read_pos[r] != it->items[i].pred_pos) r++;
        it->items[i].read = r;
    }
    return 0;
}

static int items_max_tokens(const Items *it) {
    int max = 1;
    for (int s = 0; s < it->n_seqs; s++)
        if (it->seqs[s].n_tokens > max) max = it->seqs[s].n_tokens;
    return max;
}

static int items_total_reads(const Items *it) {
    int n = 0;
    for (int s = 0; s < it->n_seqs; s++) n += it->seqs[s].n_read;
    return n;
}

// Global read index of item i: reads are numbered sequence by sequence.
static int item_read_index(const Items *it, int i) {
    int g = 0;
    for (int s = 0; s < it->items[i].seq; s++) g += it->seqs[s].n_read;
    return g + it->items[i].read;
}

#define ANALYSIS_MAX_ROWS 512 // rows per forward call in teacher-forced passes
#define ANALYSIS_CAPTURE_BYTES ((size_t)1 << 30) // scope-all scan: clean residuals kept per group of completions

// What a teacher-forcing stage works on: the config's model and tokenizer, the items
// of one variant, and a Forcer with a slot per completion, up to batch_size of them.
typedef struct {
    Model m;
    int model_loaded;
    Tokenizer *tok;
    Items it;
    Forcer f;
} Analysis;

static int analysis_open(const Config *c, const Run *run, const char *variant, int max_events, Analysis *a, Err *err) {
    memset(a, 0, sizeof *a);
    char path[1200];
    snprintf(path, sizeof path, "%s/tokenizer.json", c->model_path);
    if (tokenizer_load(&a->tok, path, err) || model_load(&a->m, c->model_path, err)) return -1;
    a->model_loaded = 1;
    if (items_load(c, run, a->tok, variant, max_events, &a->it, err)) return -1;
    int n_slots = a->it.n_seqs < c->batch_size ? a->it.n_seqs : c->batch_size;
    return forcer_init(&a->f, &a->m, n_slots < 1 ? 1 : n_slots, items_max_tokens(&a->it), ANALYSIS_MAX_ROWS, err);
}

static void analysis_close(Analysis *a) {
    forcer_free(&a->f);
    items_free(&a->it);
    if (a->tok) tokenizer_free(a->tok);
    if (a->model_loaded) model_free(&a->m);
}

// ----------------------------------------------------------------------------
// Logit lens: at each item's pred_pos, every layer's residual through the
// final norm and the unembedding: the onset token's logit, log-prob and rank.

int cmd_logit_lens(int argc, char **argv) {
    Opt opts[] = {OPT_CONFIG,
                  OPT("--variant", 1, "variant whose baseline events to read (default [logit_lens] variant)"), OPT_END};
    Err err = {0};
    Config c;
    Run run;
    int exit_code;
    if (stage_open(argc, argv, opts, &c, &run, &exit_code)) return exit_code;
    const char *variant = opt_str(opts, "--variant", c.lens_variant);
    Analysis a = {0};
    float *resid = NULL, *logits = NULL;
    Buf csv = {0};
    if (analysis_open(&c, &run, variant, c.lens_max_events, &a, &err)) goto out;
    int n_layers = a.m.cfg.n_layers, hidden = a.m.cfg.hidden_size, vocab = a.m.cfg.vocab_size, n_slots = a.f.n_slots;
    int n_reads = items_total_reads(&a.it);
    resid = xmalloc((size_t)(n_reads + 1) * (n_layers + 1) * hidden * sizeof *resid);
    for (int s0 = 0, base = 0; s0 < a.it.n_seqs; s0 += n_slots) {
        int n = a.it.n_seqs - s0 < n_slots ? a.it.n_seqs - s0 : n_slots;
        PassOut out = {.resid = resid + (size_t)base * (n_layers + 1) * hidden};
        if (force_group(&a.f, a.it.seqs + s0, n, &out, &err)) goto out;
        for (int i = 0; i < n; i++) base += a.it.seqs[s0 + i].n_read;
        progress("logit-lens: %d/%d completions\n", s0 + n, a.it.n_seqs);
    }
    buf_puts(&csv, "run_id,kind,event_id,variant,problem_id,sample,pred_pos,onset_token_id,layer,logit,logprob,rank\n");
    logits = xmalloc((size_t)vocab * sizeof *logits);
    for (int i = 0; i < a.it.n_items; i++) {
        const Item *x = &a.it.items[i];
        const GenRecord *rec = &a.it.records[x->record];
        const float *rv = resid + (size_t)item_read_index(&a.it, i) * (n_layers + 1) * hidden;
        for (int l = 0; l <= n_layers; l++) {
            model_final_logits(&a.m, rv + (size_t)l * hidden, logits);
            int rank;
            double lp = log_prob(logits, vocab, x->onset_token_id, &rank);
            buf_printf(&csv, "%s,%s,%d,", run.id, x->is_control ? "control" : "event", x->event_id);
            buf_csv_field(&csv, variant, strlen(variant));
            buf_putc(&csv, ',');
            buf_csv_field(&csv, rec->problem_id, strlen(rec->problem_id));
            buf_printf(&csv, ",%d,%d,%d,%d,%.6f,%.6f,%d\n", rec->sample, x->pred_pos, x->onset_token_id, l, logits[x->onset_token_id], lp, rank);
        }
    }
    char path[1200];
    run_path(&run, path, sizeof path, ART_LOGIT_LENS);
    if (write_file_atomic(path, csv.data, csv.len, &err)) goto out;
    printf("logit-lens: %d events, %d controls, %d layers\n", a.it.n_events, a.it.n_items - a.it.n_events, n_layers + 1);
out:
    buf_free(&csv);
    free(resid);
    free(logits);
    analysis_close(&a);
    config_free(&c);
    return err.msg[0] ? fail(&err) : 0;
}

// ----------------------------------------------------------------------------
// Ablation scan: for every layer x {attention, MLP}, the drop in log p(onset)
// at pred_pos when that component's output is ablated (zero or mean), over
// events and over controls.

static void means_json(Buf *b, const double *sum, long long n, size_t count) {
    buf_putc(b, '[');
    for (size_t i = 0; i < count; i++) {
        if (i) buf_putc(b, ',');
        buf_printf(b, "%.9g", n ? sum[i] / (double)n : 0.0);
    }
    buf_putc(b, ']');
}

// Mean output of every attention block and MLP over all positions of the
// completions (the run's own text), for mean ablation; written to the run.
static int estimate_means(Forcer *f, const Items *it, const Run *run, float **attn_mean, float **mlp_mean, Err *err) {
    const ModelConfig *mc = &f->m->cfg;
    size_t count = (size_t)mc->n_layers * mc->hidden_size;
    double *attn_sum = xcalloc(count, sizeof *attn_sum), *mlp_sum = xcalloc(count, sizeof *mlp_sum);
    long long n_summed = 0;
    int rc = 0;
    for (int s0 = 0; s0 < it->n_seqs && rc == 0; s0 += f->n_slots) {
        int n = it->n_seqs - s0 < f->n_slots ? it->n_seqs - s0 : f->n_slots;
        PassOut out = {.attn_sum = attn_sum, .mlp_sum = mlp_sum, .n_summed = &n_summed};
        rc = force_group(f, it->seqs + s0, n, &out, err);
    }
    if (rc == 0) {
        Buf b = {0};
        buf_printf(&b, "{\"n_layers\": %d, \"hidden\": %d, \"positions\": %lld,\n\"attn\": ", mc->n_layers, mc->hidden_size, n_summed);
        means_json(&b, attn_sum, n_summed, count);
        buf_puts(&b, ",\n\"mlp\": ");
        means_json(&b, mlp_sum, n_summed, count);
        buf_puts(&b, "}\n");
        char path[1200];
        run_path(run, path, sizeof path, ART_MEANS);
        rc = write_file_atomic(path, b.data, b.len, err);
        buf_free(&b);
    }
    free(attn_sum);
    free(mlp_sum);
    // Read back what was written, so generation and the scan use the same floats.
    return rc ? rc : component_means_read(run, mc, attn_mean, mlp_mean, err);
}

typedef struct {
    int layer, component; // component 0 = attention, 1 = MLP
    Interval events, controls;
} ScanResult;

static int cmp_effect(const void *a, const void *b) {
    const ScanResult *x = *(const ScanResult *const *)a, *y = *(const ScanResult *const *)b;
    double ex = x->events.est == x->events.est ? x->events.est : -INFINITY, ey = y->events.est == y->events.est ? y->events.est : -INFINITY;
    if (ex != ey) return ex < ey ? 1 : -1;
    return x->layer - y->layer;
}

// Writes ablation_importance.csv, selected_layers.json and the figure.
static int scan_write(const Config *c, const Run *run, const char *variant, const ScanResult *results, int n_layers, int n_events,
                      int n_controls, Err *err) {
    // Rank attention layers and MLP layers apart by their mean effect on events.
    const ScanResult **order[2];
    int top_k[2] = {c->top_k_attn < n_layers ? c->top_k_attn : n_layers, c->top_k_mlp < n_layers ? c->top_k_mlp : n_layers};
    if (n_events == 0) top_k[0] = top_k[1] = 0; // nothing measured, nothing selected
    int *rank = xmalloc((size_t)2 * n_layers * sizeof *rank);
    for (int comp = 0; comp < 2; comp++) {
        order[comp] = xmalloc((size_t)n_layers * sizeof *order[comp]);
        for (int l = 0; l < n_layers; l++) order[comp][l] = &results[2 * l + comp];
        qsort(order[comp], (size_t)n_layers, sizeof *order[comp], cmp_effect);
        for (int i = 0; i < n_layers; i++) rank[2 * order[comp][i]->layer + comp] = i + 1;
    }
    const char *kind = c->ablation_kind == ABLATE_MEAN ? "mean" : "zero", *scope = c->ablation_scope == SCOPE_ONSET ? "onset" : "all";
    Buf csv = {0}, js = {0};
    buf_puts(&csv, "run_id,variant,layer,component,kind,scope,n_events,mean_drop_events,ci_lo_events,ci_hi_events,"
                   "n_controls,mean_drop_controls,ci_lo_controls,ci_hi_controls,rank,selected\n");
    for (int k = 0; k < 2 * n_layers; k++) {
        const ScanResult *x = &results[k];
        buf_printf(&csv, "%s,", run->id);
        buf_csv_field(&csv, variant, strlen(variant));
        buf_printf(&csv, ",%d,%s,%s,%s,%d", x->layer, x->component ? "mlp" : "attn", kind, scope, n_events);
        put_num(&csv, x->events.est); put_num(&csv, x->events.lo); put_num(&csv, x->events.hi);
        buf_printf(&csv, ",%d", n_controls);
        put_num(&csv, x->controls.est); put_num(&csv, x->controls.lo); put_num(&csv, x->controls.hi);
        buf_printf(&csv, ",%d,%d\n", rank[k], rank[k] <= top_k[x->component]);
    }
    buf_puts(&js, "{\n  \"variant\": ");
    buf_json_string(&js, variant, strlen(variant));
    buf_printf(&js, ",\n  \"kind\": \"%s\",\n  \"scope\": \"%s\",\n  \"n_events\": %d,\n  \"n_controls\": %d", kind, scope, n_events, n_controls);
    for (int comp = 0; comp < 2; comp++) {
        buf_printf(&js, ",\n  \"%s_layers\": [", comp ? "mlp" : "attn");
        for (int i = 0; i < top_k[comp]; i++) {
            buf_printf(&js, "%s%d", i ? ", " : "", order[comp][i]->layer);
        }
        buf_printf(&js, "],\n  \"%s_effects\": [", comp ? "mlp" : "attn");
        for (int i = 0; i < top_k[comp]; i++) {
            if (i) buf_puts(&js, ", ");
            buf_json_double(&js, order[comp][i]->events.est);
        }
        buf_putc(&js, ']');
    }
    buf_puts(&js, "\n}\n");
    char path[1200];
    run_path(run, path, sizeof path, ART_ABLATION);
    int rc = write_file_atomic(path, csv.data, csv.len, err);
    run_path(run, path, sizeof path, ART_SELECTED);
    if (rc == 0) rc = write_file_atomic(path, js.data, js.len, err);
    for (int comp = 0; comp < 2; comp++) free(order[comp]);
    free(rank);
    buf_free(&csv);
    buf_free(&js);
    return rc;
}

// The group of completions from s0 a scan pass takes: at most n_slots, and at most
// max_positions positions in all unless that is fewer than one (0 = no bound).
static int scan_group(const Items *it, int s0, int n_slots, size_t max_positions, int *reads, int *positions) {
    int n = 0;
    *reads = *positions = 0;
    for (; s0 + n < it->n_seqs && n < n_slots; n++) {
        const ForcedSeq *q = &it->seqs[s0 + n];
        if (max_positions && n > 0 && (size_t)(*positions + q->n_tokens) > max_positions) break;
        *reads += q->n_read, *positions += q->n_tokens;
    }
    return n;
}

int cmd_ablation_scan(int argc, char **argv) {
    Opt opts[] = {OPT_CONFIG,
                  OPT("--variant", 1, "variant whose baseline events to scan (default [logit_lens] variant)"), OPT_END};
    Err err = {0};
    Config c;
    Run run;
    int exit_code;
    if (stage_open(argc, argv, opts, &c, &run, &exit_code)) return exit_code;
    const char *variant = opt_str(opts, "--variant", c.lens_variant);
    Analysis a = {0};
    float *attn_mean = NULL, *mlp_mean = NULL, *ablated = NULL, *resid = NULL, *clean_logits = NULL;
    double *drop = NULL, *vals = NULL, *clean_lp = NULL;
    int *item_read = NULL;
    int n_layers = 0;
    ScanResult *results = NULL;
    AblationMask *masks = NULL;
    if (analysis_open(&c, &run, variant, c.ablation_max_events, &a, &err)) goto out;
    if (a.it.n_events == 0) // the outputs say so: no effects, no layers selected, a "no data" figure
        fprintf(stderr, "bt ablation-scan: warning: no events of variant %s in run %s: nothing to scan, no layers selected\n", variant, run.id);
    n_layers = a.m.cfg.n_layers;
    int hidden = a.m.cfg.hidden_size, vocab = a.m.cfg.vocab_size, n_slots = a.f.n_slots;
    if (c.ablation_kind == ABLATE_MEAN && estimate_means(&a.f, &a.it, &run, &attn_mean, &mlp_mean, &err)) goto out;
    // One mask per (layer, component): masks[2l] ablates attention l, masks[2l+1] MLP l.
    masks = xcalloc((size_t)2 * n_layers, sizeof *masks);
    for (int k = 0; k < 2 * n_layers; k++) {
        masks[k] = (AblationMask){.kind = c.ablation_kind, .attn = xcalloc((size_t)n_layers, 1), .mlp = xcalloc((size_t)n_layers, 1),
                                  .attn_mean = attn_mean, .mlp_mean = mlp_mean};
        (k % 2 ? masks[k].mlp : masks[k].attn)[k / 2] = 1;
    }
    item_read = xmalloc((size_t)(a.it.n_items + 1) * sizeof *item_read);
    for (int i = 0; i < a.it.n_items; i++) item_read[i] = item_read_index(&a.it, i);
    drop = xmalloc((size_t)(a.it.n_items + 1) * 2 * n_layers * sizeof *drop); // (n_items, 2 n_layers)
    clean_lp = xmalloc((size_t)(a.it.n_items + 1) * sizeof *clean_lp);
    // Groups of completions, one per slot; scope all keeps every position's clean
    // residuals of a group, so its groups are also bounded by ANALYSIS_CAPTURE_BYTES.
    size_t position_bytes = (size_t)(n_layers + 1) * hidden * sizeof(float);
    size_t max_positions = c.ablation_scope == SCOPE_ALL ? ANALYSIS_CAPTURE_BYTES / position_bytes : 0;
    int max_group_reads = 1, max_group_positions = 1;
    for (int s0 = 0, n, reads, positions; s0 < a.it.n_seqs; s0 += n) {
        n = scan_group(&a.it, s0, n_slots, max_positions, &reads, &positions);
        if (reads > max_group_reads) max_group_reads = reads;
        if (positions > max_group_positions) max_group_positions = positions;
    }
    clean_logits = xmalloc((size_t)max_group_reads * vocab * sizeof *clean_logits);
    if (c.ablation_scope == SCOPE_ALL) {
        resid = xmalloc((size_t)max_group_positions * position_bytes);
        ablated = xmalloc((size_t)max_group_reads * vocab * sizeof *ablated);
    } else {
        resid = xmalloc((size_t)max_group_reads * position_bytes);
    }
    // Onset scope: rows of one replay call (reads x components of a layer), none for scope all.
    int max_replay = c.ablation_scope == SCOPE_ONSET ? a.f.max_rows : 0;
    float *x_in = a.f.x_in, *replay_logits = xmalloc((size_t)max_replay * vocab * sizeof *replay_logits);
    int *row_slot = xmalloc((size_t)max_replay * sizeof(int)), *row_pos = xmalloc((size_t)max_replay * sizeof(int));
    int *row_out = xmalloc((size_t)max_replay * sizeof(int)), *row_read = xmalloc((size_t)max_replay * sizeof(int)), *row_k = xmalloc((size_t)max_replay * sizeof(int));
    const AblationMask **row_mask = xmalloc((size_t)max_replay * sizeof *row_mask);
    int rc = 0;
    for (int s0 = 0, n, base = 0, group_reads, positions; s0 < a.it.n_seqs && rc == 0; s0 += n, base += group_reads) {
        n = scan_group(&a.it, s0, n_slots, max_positions, &group_reads, &positions);
        // The clean pass: logits at the reads, and the residuals the ablated passes start from.
        PassOut clean = {.logits = clean_logits};
        if (c.ablation_scope == SCOPE_ALL) clean.resid_all = resid;
        else clean.resid = resid;
        if ((rc = force_group(&a.f, a.it.seqs + s0, n, &clean, &err))) break;
        for (int i = 0; i < a.it.n_items; i++)
            if (item_read[i] >= base && item_read[i] < base + group_reads)
                clean_lp[i] = log_prob(clean_logits + (size_t)(item_read[i] - base) * vocab, vocab, a.it.items[i].onset_token_id, NULL);
        if (c.ablation_scope == SCOPE_ALL) {
            // The component ablated at every position, as generation-time ablation does; each
            // pass starts at the ablated layer from the clean residual (the layers below are clean).
            for (int k = 0; k < 2 * n_layers && rc == 0; k++) {
                PassOut out = {.mask = &masks[k], .logits = ablated, .enter = resid, .first_layer = k / 2};
                if ((rc = force_group(&a.f, a.it.seqs + s0, n, &out, &err))) break;
                for (int i = 0; i < a.it.n_items; i++)
                    if (item_read[i] >= base && item_read[i] < base + group_reads)
                        drop[(size_t)i * 2 * n_layers + k] =
                            clean_lp[i] - log_prob(ablated + (size_t)(item_read[i] - base) * vocab, vocab, a.it.items[i].onset_token_id, NULL);
            }
        } else {
            // Onset scope: ablate only at pred_pos; replay the layers from the ablated
            // one up for that position over the clean KV cache of its completion.
            for (int l = 0; l < n_layers && rc == 0; l++) {
                // Rows: every read of the group x {attention, MLP} of layer l.
                for (int start = 0; start < 2 * group_reads && rc == 0; start += max_replay) {
                    int rows = 2 * group_reads - start < max_replay ? 2 * group_reads - start : max_replay;
                    for (int q = 0; q < rows; q++) {
                        int j = (start + q) / 2, comp = (start + q) % 2, sq = 0, acc = 0;
                        while (acc + a.it.seqs[s0 + sq].n_read <= j) acc += a.it.seqs[s0 + sq++].n_read;
                        row_slot[q] = sq;
                        row_pos[q] = a.it.seqs[s0 + sq].read_pos[j - acc];
                        row_mask[q] = &masks[2 * l + comp];
                        row_out[q] = q;
                        row_read[q] = base + j;
                        row_k[q] = 2 * l + comp;
                        memcpy(x_in + (size_t)q * hidden, resid + ((size_t)j * (n_layers + 1) + l) * hidden, (size_t)hidden * sizeof *x_in);
                    }
                    // token is unused when rows enter with x_in; row_pos stands in for a.it.
                    Forward fw = {.n = rows, .token = row_pos, .slot = row_slot, .pos = row_pos, .mask = row_mask, .first_layer = l,
                                  .x_in = x_in, .replay = 1, .logits = replay_logits, .logits_row = row_out};
                    if ((rc = model_forward(&a.m, a.f.state, &fw, &err))) break;
                    for (int q = 0; q < rows; q++)
                        for (int i = 0; i < a.it.n_items; i++)
                            if (item_read[i] == row_read[q])
                                drop[(size_t)i * 2 * n_layers + row_k[q]] =
                                    clean_lp[i] - log_prob(replay_logits + (size_t)q * vocab, vocab, a.it.items[i].onset_token_id, NULL);
                }
            }
        }
        progress("ablation-scan: %d/%d completions\n", s0 + n, a.it.n_seqs);
    }
    free(row_slot); free(row_pos); free(row_out); free(row_read); free(row_k); free(row_mask); free(replay_logits);
    if (rc) goto out;
    // Mean drop with bootstrap 95% CI per component, events and controls apart.
    results = xcalloc((size_t)2 * n_layers, sizeof *results);
    vals = xmalloc((size_t)(a.it.n_items + 1) * sizeof *vals);
    for (int k = 0; k < 2 * n_layers; k++) {
        results[k].layer = k / 2;
        results[k].component = k % 2;
        for (int want_control = 0; want_control < 2; want_control++) {
            int nv = 0;
            for (int i = 0; i < a.it.n_items; i++)
                if (a.it.items[i].is_control == want_control) vals[nv++] = drop[(size_t)i * 2 * n_layers + k];
            Interval ci = bootstrap_mean95(vals, nv, STAT_RESAMPLES, seed_mix(seed_mix((uint64_t)c.seed, 0xAB1A7E), (uint64_t)(2 * k + want_control)));
            if (want_control) results[k].controls = ci;
            else results[k].events = ci;
        }
    }
    if (scan_write(&c, &run, variant, results, n_layers, a.it.n_events, a.it.n_items - a.it.n_events, &err)) goto out;
    printf("ablation-scan: %d events, %d controls, %d components (%s ablation, scope %s)\n", a.it.n_events, a.it.n_items - a.it.n_events,
           2 * n_layers, c.ablation_kind == ABLATE_MEAN ? "mean" : "zero", c.ablation_scope == SCOPE_ONSET ? "onset" : "all");
out:
    if (masks)
        for (int k = 0; k < 2 * n_layers; k++) {
            free(masks[k].attn);
            free(masks[k].mlp);
        }
    free(masks); free(attn_mean); free(mlp_mean); free(ablated); free(resid); free(clean_logits);
    free(drop); free(vals); free(results); free(clean_lp); free(item_read);
    analysis_close(&a);
    config_free(&c);
    return err.msg[0] ? fail(&err) : 0;
}

// ----------------------------------------------------------------------------
// Steering directions: for every layer (0 = embeddings), the difference of means of the
// residual stream between a positive and a negative set of positions ([steering] positives,
// negatives); the norm of each layer's mean residual (the unit of the steering alphas); and how
// well the projection on a direction from one half of the completions separates the positions of
// the other half (2-fold, split by completion, not by position).

#define STEER_POS 1 // a read's classes, as bits
#define STEER_NEG 2
#define STEER_FOLD_STREAM 0xF01D5
#define STEER_SAMPLE_STREAM 0x5A3B1E
#define STEER_AUROC_STREAM 0xA0C
#define STEER_AUROC_READS 1000     // positions of each set kept for the held-out AUROC, a seeded sample
#define STEER_AUROC_RESAMPLES 1000 // bootstrap resamples of completions for the AUROC's interval

typedef struct {
    GenRecord *records;         // (n_records) the variant's baseline completions, then a negative variant's
    int n_records, n_own;       // the first n_own are the variant's
    ForcedSeq *seqs;            // (n_seqs) one per completion with reads, fold 0 first
    int *seq_record;            // (n_seqs)
    int *seq_fold;              // (n_seqs) 0 or 1
    unsigned char **read_class; // (n_seqs) per read: STEER_POS | STEER_NEG
    int n_seqs, n_fold0;
    long long n_pos, n_neg;     // reads in each set
} SteerSet;

static void steer_set_free(SteerSet *s) {
    generations_free(s->records, s->n_records);
    for (int i = 0; i < s->n_seqs; i++) {
        free(s->seqs[i].tokens);
        free(s->seqs[i].read_pos);
        free(s->read_class[i]);
    }
    free(s->seqs);
    free(s->seq_record);
    free(s->seq_fold);
    free(s->read_class);
    memset(s, 0, sizeof *s);
}

// Completion tokens before "</think>" (all of them when it has none): the thinking text.
static int thinking_tokens(const Tokenizer *tok, const GenRecord *rec, Buf *text, int **offsets) {
    *offsets = xrealloc(*offsets, (size_t)(rec->n_completion + 1) * sizeof **offsets);
    text->len = 0;
    tokenizer_decode(tok, rec->completion_ids, rec->n_completion, text, *offsets);
    const char *close = text->data && text->len ? strstr(text->data, "</think>") : NULL;
    if (!close || rec->n_completion == 0) return rec->n_completion;
    return token_at_byte(*offsets, rec->n_completion, (int)(close - text->data));
}

static int read_generations_of(const Run *run, const char *variant, GenRecord **recs, int *n, Err *err) {
    char path[1200];
    run_generation_path(run, path, sizeof path, variant, "baseline");
    if (!path_exists(path))
        return err_input(err, "no baseline generations for variant %s in run %s: run generate first", variant, run->id);
    return generations_read(path, recs, n, err);
}

// Marks the window of every event (or control) of variant in backtracking_events.csv.
static int mark_windows(const Config *c, const Run *run, const char *variant, const char *kind, const SteerSet *s,
                        unsigned char **mark, unsigned char bit, Err *err) {
    char path[1200];
    run_path(run, path, sizeof path, ART_EVENTS);
    if (!path_exists(path)) return err_input(err, "no events in run %s: run detect-events first", run->id);
    Csv csv;
    if (csv_read(path, &csv, err)) return -1;
    static const char *const cols[] = {"kind", "variant", "condition", "problem_id", "sample", "token_offset", "prompt_tokens"};
    int col[7], rc = 0;
    for (int i = 0; i < 7 && rc == 0; i++)
        if ((col[i] = csv_col(&csv, cols[i])) < 0)
            rc = err_input(err, "%s: no column '%s' (written by another version? run detect-events again)", path, cols[i]);
    for (int r = 0; r < csv.n_rows && rc == 0; r++) {
        if (strcmp(csv_cell(&csv, r, col[0]), kind) || strcmp(csv_cell(&csv, r, col[1]), variant) ||
            strcmp(csv_cell(&csv, r, col[2]), "baseline"))
            continue;
        int rec = -1, sample = atoi(csv_cell(&csv, r, col[4])), k = atoi(csv_cell(&csv, r, col[5]));
        for (int i = 0; i < s->n_own && rec < 0; i++)
            if (s->records[i].sample == sample && strcmp(s->records[i].problem_id, csv_cell(&csv, r, col[3])) == 0) rec = i;
        const GenRecord *g = rec >= 0 ? &s->records[rec] : NULL;
        if (!g || atoi(csv_cell(&csv, r, col[6])) != g->prompt_tokens || k < 0 || k > g->n_completion) {
            rc = err_input(err, "%s:%d: %s of problem %s sample %d does not fit the generations of %s (run detect-events again)",
                           path, r + 2, kind, csv_cell(&csv, r, col[3]), sample, variant);
            break;
        }
        int onset = g->prompt_tokens + k;
        for (int p = onset + c->steer_window_start; p < onset + c->steer_window_start + c->steer_window_len; p++)
            if (p >= g->prompt_tokens - 1 && p < g->prompt_tokens + g->n_completion) mark[rec][p] |= bit;
    }
    csv_free(&csv);
    return rc;
}

// Reads the completions and marks each position's sets, splits the completions in two folds
// (a seeded shuffle within each variant, then alternating), and lays out one sequence each.
static int steer_set_load(const Config *c, const Run *run, const Tokenizer *tok, const char *variant, SteerSet *s, Err *err) {
    memset(s, 0, sizeof *s);
    const char *neg = c->steer_negatives, *neg_variant = strncmp(neg, "variant:", 8) == 0 ? neg + 8 : NULL;
    if (neg_variant && strcmp(neg_variant, variant) == 0)
        return err_input(err, "%s: [steering] negatives = %s is the positive variant itself", c->file, neg);
    if (read_generations_of(run, variant, &s->records, &s->n_records, err)) return -1;
    s->n_own = s->n_records;
    if (neg_variant) {
        GenRecord *more;
        int n_more;
        if (read_generations_of(run, neg_variant, &more, &n_more, err)) return -1;
        s->records = xrealloc(s->records, (size_t)(s->n_records + n_more + 1) * sizeof *s->records);
        memcpy(s->records + s->n_records, more, (size_t)n_more * sizeof *more);
        s->n_records += n_more;
        free(more);
    }
    unsigned char **mark = xcalloc((size_t)s->n_records + 1, sizeof *mark); // (n_records) per position: STEER_* bits
    for (int r = 0; r < s->n_records; r++) mark[r] = xcalloc((size_t)(s->records[r].prompt_tokens + s->records[r].n_completion + 1), 1);
    Buf text = {0};
    int *offsets = NULL, rc = 0;
    // the thinking text: positives (own), negatives (own or the other variant's)
    for (int r = 0; r < s->n_records; r++) {
        int own = r < s->n_own, want = (own && c->steer_positives == STEER_POSITIVES_THINKING ? STEER_POS : 0) |
                                       ((own ? strcmp(neg, "thinking") == 0 : neg_variant != NULL) ? STEER_NEG : 0);
        if (!want) continue;
        const GenRecord *g = &s->records[r];
        int n_think = thinking_tokens(tok, g, &text, &offsets);
        for (int t = 0; t < n_think; t++) mark[r][g->prompt_tokens + t] |= (unsigned char)want;
    }
    buf_free(&text);
    free(offsets);
    if (c->steer_positives == STEER_POSITIVES_EVENTS) rc = mark_windows(c, run, variant, "event", s, mark, STEER_POS, err);
    if (rc == 0 && strcmp(neg, "controls") == 0) rc = mark_windows(c, run, variant, "control", s, mark, STEER_NEG, err);
    int *fold = xmalloc((size_t)(s->n_records + 1) * sizeof *fold), *order = xmalloc((size_t)(s->n_records + 1) * sizeof *order);
    int n_reads_max = 0;
    for (int r = 0; r < s->n_records; r++) {
        int len = s->records[r].prompt_tokens + s->records[r].n_completion, n_reads = 0;
        for (int p = 0; p < len; p++) {
            n_reads += mark[r][p] != 0;
            s->n_pos += (mark[r][p] & STEER_POS) != 0;
            s->n_neg += (mark[r][p] & STEER_NEG) != 0;
        }
        fold[r] = n_reads ? 0 : -1;
        if (n_reads > n_reads_max) n_reads_max = n_reads;
    }
    if (rc == 0 && (s->n_pos == 0 || s->n_neg == 0)) {
        int no_pos = s->n_pos == 0;
        rc = err_input(err, "%s: [steering] %s = %s gives no positions in run %s (variant %s%s)", c->file, no_pos ? "positives" : "negatives",
                       no_pos ? (c->steer_positives == STEER_POSITIVES_EVENTS ? "events" : "thinking") : neg, run->id,
                       no_pos ? variant : neg_variant ? neg_variant : variant,
                       (no_pos ? c->steer_positives == STEER_POSITIVES_EVENTS : strcmp(neg, "controls") == 0) ? " has no events" : " has no thinking text");
    }
    // each variant's completions with reads: shuffled, then alternating folds
    for (int part = 0; part < 2 && rc == 0; part++) {
        int lo = part ? s->n_own : 0, hi = part ? s->n_records : s->n_own, n = 0;
        for (int r = lo; r < hi; r++)
            if (fold[r] == 0) order[n++] = r;
        Rng rng;
        rng_seed(&rng, seed_mix(seed_mix((uint64_t)c->seed, STEER_FOLD_STREAM), (uint64_t)part));
        for (int i = 0; i + 1 < n; i++) {
            int j = i + (int)rng_below(&rng, (uint64_t)(n - i)), t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
        for (int i = 0; i < n; i++) fold[order[i]] = i % 2;
    }
    s->seqs = xcalloc((size_t)s->n_records + 1, sizeof *s->seqs);
    s->seq_record = xcalloc((size_t)s->n_records + 1, sizeof *s->seq_record);
    s->seq_fold = xcalloc((size_t)s->n_records + 1, sizeof *s->seq_fold);
    s->read_class = xcalloc((size_t)s->n_records + 1, sizeof *s->read_class);
    TokenList prompt = {0};
    for (int f = 0; f < 2 && rc == 0; f++)
        for (int r = 0; r < s->n_records && rc == 0; r++) {
            if (fold[r] != f) continue;
            const GenRecord *g = &s->records[r];
            prompt.n = 0;
            if ((rc = tokenizer_encode(tok, g->prompt, strlen(g->prompt), &prompt, err))) break;
            if (prompt.n != g->prompt_tokens) {
                rc = err_input(err, "problem %s: the prompt now encodes to %d tokens, the record says %d (tokenizer changed?)",
                               g->problem_id, prompt.n, g->prompt_tokens);
                break;
            }
            int i = s->n_seqs++, len = g->prompt_tokens + g->n_completion;
            ForcedSeq *q = &s->seqs[i];
            s->seq_record[i] = r;
            s->seq_fold[i] = f;
            s->n_fold0 += f == 0;
            q->tokens = xmalloc((size_t)(len + 1) * sizeof *q->tokens);
            for (int t = 0; t < prompt.n; t++) q->tokens[t] = prompt.v[t].id;
            memcpy(q->tokens + prompt.n, g->completion_ids, (size_t)g->n_completion * sizeof *q->tokens);
            q->read_pos = xmalloc((size_t)(n_reads_max + 1) * sizeof *q->read_pos);
            s->read_class[i] = xmalloc((size_t)(n_reads_max + 1));
            for (int p = 0; p < len; p++)
                if (mark[r][p]) {
                    s->read_class[i][q->n_read] = mark[r][p];
                    q->read_pos[q->n_read++] = p;
                    q->n_tokens = p + 1;
                }
        }
    tokens_free(&prompt);
    for (int r = 0; r < s->n_records; r++) free(mark[r]);
    free(mark);
    free(fold);
    free(order);
    if (rc) steer_set_free(s);
    return rc;
}

// One position's score on a held-out AUROC: read `read` of sequence seq, in set is_pos.
typedef struct {
    int seq, read;
    unsigned char is_pos;
    int stored; // row of the kept residuals (fold 0: projected once fold 1's direction exists), -1 = none
} SteerObs;

static int cmp_obs(const void *a, const void *b) {
    const SteerObs *x = a, *y = b;
    return x->seq != y->seq ? x->seq - y->seq : x->read != y->read ? x->read - y->read : x->is_pos - y->is_pos;
}

// A seeded sample of at most STEER_AUROC_READS reads of each set, in (sequence, read) order.
static SteerObs *steer_sample(const SteerSet *s, long long seed, int *n_obs) {
    SteerObs *obs = NULL;
    int n = 0;
    for (int set = 0; set < 2; set++) {
        unsigned char bit = set ? STEER_NEG : STEER_POS;
        int n_set = 0, start = n;
        for (int i = 0; i < s->n_seqs; i++)
            for (int r = 0; r < s->seqs[i].n_read; r++)
                if (s->read_class[i][r] & bit) {
                    obs = xrealloc(obs, (size_t)(n + 1) * sizeof *obs);
                    obs[n++] = (SteerObs){i, r, (unsigned char)!set, -1};
                    n_set++;
                }
        if (n_set > STEER_AUROC_READS) { // partial Fisher-Yates over this set's entries
            Rng rng;
            rng_seed(&rng, seed_mix(seed_mix((uint64_t)seed, STEER_SAMPLE_STREAM), (uint64_t)set));
            for (int i = 0; i < STEER_AUROC_READS; i++) {
                int j = i + (int)rng_below(&rng, (uint64_t)(n_set - i));
                SteerObs t = obs[start + i];
                obs[start + i] = obs[start + j];
                obs[start + j] = t;
            }
            n = start + STEER_AUROC_READS;
        }
    }
    if (n) qsort(obs, (size_t)n, sizeof *obs, cmp_obs);
    *n_obs = n;
    return obs;
}

// Difference of means of fold f (f = 2: both folds) per layer into dir ((L + 1) * hidden);
// NaN where a set is empty.
static void steer_diff(const double *sum, const long long *count, int f, size_t per, double *dir) {
    // sum: (2 folds, 2 sets, per); count: (2 folds, 2 sets)
    for (size_t k = 0; k < per; k++) {
        double pos = 0, neg = 0;
        long long n_pos = 0, n_neg = 0;
        for (int g = 0; g < 2; g++) {
            if (f != 2 && g != f) continue;
            pos += sum[(size_t)(2 * g) * per + k], neg += sum[(size_t)(2 * g + 1) * per + k];
            n_pos += count[2 * g], n_neg += count[2 * g + 1];
        }
        dir[k] = n_pos && n_neg ? pos / n_pos - neg / n_neg : NAN;
    }
}

// Projections of one residual stack ((L + 1) * hidden) on a direction stack: score per layer.
static void steer_project(const float *x, const double *dir, int n_layers, int hidden, double *score, int stride) {
    for (int l = 0; l <= n_layers; l++) {
        double dot = 0;
        for (int d = 0; d < hidden; d++) dot += (double)x[(size_t)l * hidden + d] * dir[(size_t)l * hidden + d];
        score[(size_t)l * stride] = dot;
    }
}

int cmd_directions(int argc, char **argv) {
    Opt opts[] = {OPT_CONFIG, OPT("--variant", 1, "variant whose completions hold the positives (default [logit_lens] variant)"),
                  OPT_END};
    Err err = {0};
    Config c;
    Run run;
    int exit_code;
    if (stage_open(argc, argv, opts, &c, &run, &exit_code)) return exit_code;
    const char *variant = opt_str(opts, "--variant", c.lens_variant);
    Model m = {0};
    int loaded = 0;
    Tokenizer *tok = NULL;
    SteerSet s = {0};
    Forcer f = {0};
    SteerObs *obs = NULL;
    double *sum = NULL, *sum_all = NULL, *dir = NULL, *fold_dir = NULL, *score = NULL;
    float *resid = NULL, *kept = NULL, *directions = NULL, *mean_norm = NULL;
    Buf csv = {0};
    char path[1200];
    if (!config_variant(&c, variant)) {
        err_input(&err, "%s: no [variant.%s] section", c.file, variant);
        goto out;
    }
    snprintf(path, sizeof path, "%s/tokenizer.json", c.model_path);
    if (tokenizer_load(&tok, path, &err) || model_load(&m, c.model_path, &err)) goto out;
    loaded = 1;
    if (steer_set_load(&c, &run, tok, variant, &s, &err)) goto out;
    int L = m.cfg.n_layers, D = m.cfg.hidden_size, max_tokens = 1;
    size_t per = (size_t)(L + 1) * D; // one residual stack
    for (int i = 0; i < s.n_seqs; i++)
        if (s.seqs[i].n_tokens > max_tokens) max_tokens = s.seqs[i].n_tokens;
    int n_slots = s.n_seqs < c.batch_size ? s.n_seqs : c.batch_size;
    if (forcer_init(&f, &m, n_slots, max_tokens, ANALYSIS_MAX_ROWS, &err)) goto out;
    int n_obs, n_kept = 0;
    obs = steer_sample(&s, c.seed, &n_obs);
    for (int o = 0; o < n_obs; o++)
        if (s.seq_fold[obs[o].seq] == 0) obs[o].stored = n_kept++;
    // (n_kept, L + 1, hidden) fold 0's sampled residuals
    kept = xmalloc((size_t)(n_kept + 1) * per * sizeof *kept);
    score = xmalloc((size_t)(n_obs + 1) * (L + 1) * sizeof *score);     // (L + 1, n_obs) held-out projections
    sum = xcalloc(4 * per, sizeof *sum);                                 // (2 folds, 2 sets, L + 1, hidden)
    sum_all = xcalloc(per, sizeof *sum_all);                             // (L + 1, hidden) over every read once
    dir = xmalloc(per * sizeof *dir);                                    // (L + 1, hidden)
    fold_dir = xmalloc(per * sizeof *fold_dir);                          // (L + 1, hidden) the other fold's direction
    long long count[4] = {0}, count_all = 0;
    size_t cap_reads = ANALYSIS_CAPTURE_BYTES / (per * sizeof(float));
    int have_fold0_dir = 0, next_obs = 0;
    for (int s0 = 0, n = 0; s0 < s.n_seqs; s0 += n) {
        size_t reads = 0;
        // as many sequences as the capture bound allows (at least one)
        for (n = 0; s0 + n < s.n_seqs && n < n_slots; n++) {
            if (n > 0 && reads + (size_t)s.seqs[s0 + n].n_read > cap_reads) break;
            reads += (size_t)s.seqs[s0 + n].n_read;
        }
        resid = xrealloc(resid, (reads + 1) * per * sizeof *resid); // (reads, L + 1, hidden)
        PassOut pass = {.resid = resid};
        if (force_group(&f, s.seqs + s0, n, &pass, &err)) goto out;
        for (int i = s0, row = 0; i < s0 + n; i++)
            for (int r = 0; r < s.seqs[i].n_read; r++, row++) {
                const float *x = resid + (size_t)row * per;
                unsigned char cls = s.read_class[i][r];
                int fold = s.seq_fold[i];
                for (int set = 0; set < 2; set++) {
                    if (!(cls & (set ? STEER_NEG : STEER_POS))) continue;
                    double *acc = sum + (size_t)(2 * fold + set) * per;
                    for (size_t k = 0; k < per; k++) acc[k] += x[k];
                    count[2 * fold + set]++;
                }
                for (size_t k = 0; k < per; k++) sum_all[k] += x[k];
                count_all++;
                for (; next_obs < n_obs && (obs[next_obs].seq < i || (obs[next_obs].seq == i && obs[next_obs].read < r)); next_obs++) {}
                for (int o = next_obs; o < n_obs && obs[o].seq == i && obs[o].read == r; o++)
                    if (obs[o].stored >= 0) memcpy(kept + (size_t)obs[o].stored * per, x, per * sizeof *kept);
            }
        // Fold 1's positions are scored on fold 0's direction as they pass; fold 0 comes first.
        if (!have_fold0_dir && s0 + n >= s.n_fold0) {
            steer_diff(sum, count, 0, per, fold_dir);
            have_fold0_dir = 1;
        }
        for (int o = 0, row0 = 0; o < n_obs; o++) {
            int i = obs[o].seq;
            if (i < s0 || i >= s0 + n || s.seq_fold[i] != 1) continue;
            row0 = 0;
            for (int j = s0; j < i; j++) row0 += s.seqs[j].n_read;
            steer_project(resid + (size_t)(row0 + obs[o].read) * per, fold_dir, L, D, score + o, n_obs);
        }
        progress("directions: %d/%d completions\n", s0 + n, s.n_seqs);
    }
    steer_diff(sum, count, 1, per, fold_dir);
    for (int o = 0; o < n_obs; o++)
        if (obs[o].stored >= 0) steer_project(kept + (size_t)obs[o].stored * per, fold_dir, L, D, score + o, n_obs);
    steer_diff(sum, count, 2, per, dir);
    // The files: directions (L + 1, hidden) and mean_norm (L + 1) as F32, and one CSV row per layer.
    directions = xmalloc(per * sizeof *directions);
    mean_norm = xmalloc((size_t)(L + 1) * sizeof *mean_norm);
    for (size_t k = 0; k < per; k++) directions[k] = (float)dir[k];
    double *auc = xmalloc((size_t)(L + 1) * 3 * sizeof *auc); // (L + 1, 3) est, lo, hi
    double *obs_score = xmalloc((size_t)(n_obs + 1) * sizeof *obs_score);
    unsigned char *obs_pos = xmalloc((size_t)(n_obs + 1));
    int *obs_seq = xmalloc((size_t)(n_obs + 1) * sizeof *obs_seq), best = -1;
    for (int l = 0; l <= L; l++) {
        double mean_sq = 0;
        for (int d = 0; d < D; d++) {
            double v = sum_all[(size_t)l * D + d] / (double)count_all;
            mean_sq += v * v;
        }
        mean_norm[l] = (float)sqrt(mean_sq);
        int n_finite = 0;
        for (int o = 0; o < n_obs; o++) {
            double v = score[(size_t)l * n_obs + o];
            if (v != v) continue;
            obs_score[n_finite] = v, obs_pos[n_finite] = obs[o].is_pos, obs_seq[n_finite++] = obs[o].seq;
        }
        Interval a = auroc_cluster_bootstrap95(obs_score, obs_pos, obs_seq, n_finite, s.n_seqs, STEER_AUROC_RESAMPLES,
                                               seed_mix(seed_mix((uint64_t)c.seed, STEER_AUROC_STREAM), (uint64_t)l));
        auc[3 * l] = a.est, auc[3 * l + 1] = a.lo, auc[3 * l + 2] = a.hi;
        // [steering] layer = auto steers a residual the blocks still read: layers 0 .. L-1.
        if (l < L && a.est == a.est && (best < 0 || a.est > auc[3 * best])) best = l;
    }
    free(obs_score);
    free(obs_pos);
    free(obs_seq);
    buf_puts(&csv, "run_id,variant,positives,negatives,layer,norm,mean_norm,relative_norm,cos_prev,top_dim,top_component,"
                   "n_positive,n_negative,n_completions,auroc,auroc_ci_lo,auroc_ci_hi,best_auroc\n");
    for (int l = 0; l <= L; l++) {
        const double *v = dir + (size_t)l * D, *prev = l ? dir + (size_t)(l - 1) * D : NULL;
        double norm = 0, prev_norm = 0, dot = 0;
        int top = 0;
        for (int d = 0; d < D; d++) {
            norm += v[d] * v[d];
            if (prev) prev_norm += prev[d] * prev[d], dot += v[d] * prev[d];
            if (fabs(v[d]) > fabs(v[top])) top = d;
        }
        norm = sqrt(norm), prev_norm = sqrt(prev_norm);
        buf_printf(&csv, "%s,", run.id);
        buf_csv_field(&csv, variant, strlen(variant));
        buf_printf(&csv, ",%s,", c.steer_positives == STEER_POSITIVES_EVENTS ? "events" : "thinking");
        buf_csv_field(&csv, c.steer_negatives, strlen(c.steer_negatives));
        buf_printf(&csv, ",%d", l);
        put_num(&csv, norm);
        put_num(&csv, mean_norm[l]);
        put_num(&csv, mean_norm[l] > 0 ? norm / mean_norm[l] : NAN);
        put_num(&csv, prev && norm > 0 && prev_norm > 0 ? dot / (norm * prev_norm) : NAN);
        buf_printf(&csv, ",%d", top);
        put_num(&csv, norm > 0 ? v[top] / norm : NAN);
        buf_printf(&csv, ",%lld,%lld,%d", count[0] + count[2], count[1] + count[3], s.n_seqs);
        put_num(&csv, auc[3 * l]);
        put_num(&csv, auc[3 * l + 1]);
        put_num(&csv, auc[3 * l + 2]);
        buf_printf(&csv, ",%d\n", l == best);
    }
    double best_auroc = best >= 0 ? auc[3 * best] : NAN;
    free(auc);
    const char *names[2] = {"directions", "mean_norm"};
    Tensor tensors[2] = {{directions, DT_F32, L + 1, D}, {mean_norm, DT_F32, 1, L + 1}};
    run_path(&run, path, sizeof path, ART_DIRECTIONS_CSV);
    if (write_file_atomic(path, csv.data, csv.len, &err)) goto out;
    run_path(&run, path, sizeof path, ART_DIRECTIONS);
    if (safetensors_write(path, names, tensors, 2, &err)) goto out;
    printf("directions: %d completions, %lld positive and %lld negative positions, %d layers", s.n_seqs, count[0] + count[2],
           count[1] + count[3], L + 1);
    if (best >= 0) printf("; best held-out AUROC %.3f at layer %d\n", best_auroc, best);
    else printf("; no held-out AUROC (a fold lacks positives or negatives)\n");
out:
    free(obs);
    free(sum);
    free(sum_all);
    free(dir);
    free(fold_dir);
    free(score);
    free(resid);
    free(kept);
    free(directions);
    free(mean_norm);
    buf_free(&csv);
    forcer_free(&f);
    steer_set_free(&s);
    if (tok) tokenizer_free(tok);
    if (loaded) model_free(&m);
    config_free(&c);
    return err.msg[0] ? fail(&err) : 0;
}

// ----------------------------------------------------------------------------
// Steering sweep: per steered variant, the baseline (alpha 0), every steer_<alpha> and
// steer_random_<alpha> condition and project_out, with the statistics of compare-conditions, a
// Fisher test against the baseline, and a Cochran-Armitage trend of the rate over alpha for the
// direction and for the random control (the baseline counted at alpha 0 in both).

// The steered layer a generation file records ("steering": {"layer": L}), -1 if none.
static int steered_layer_of(const Run *run, const char *variant, const char *condition) {
    char path[1200];
    run_generation_path(run, path, sizeof path, variant, condition);
    Buf text = {0};
    Err ignored;
    long long layer = -1;
    if (read_file(path, &text, &ignored) == 0 && text.len) {
        size_t len = strcspn(text.data, "\n");
        Json j;
        if (json_parse(&j, text.data, len, path, &ignored) == 0) {
            int steering = json_key(&j, 0, "steering");
            if (steering < 0 || json_int(&j, json_key(&j, steering, "layer"), &layer)) layer = -1;
            json_free(&j);
        }
    }
    buf_free(&text);
    return (int)layer;
}

#define STEERING_SWEEP_HEADER "run_id,variant,condition,kind,alpha,layer," GROUP_STATS_HEADER \
    ",fisher_p_vs_baseline,trend_slope,trend_ci_lo,trend_ci_hi,trend_z,trend_p\n"

int cmd_steering_sweep(int argc, char **argv) {
    Opt opts[] = {OPT_CONFIG, OPT("--variant", 1, "one steered variant (default: every [steering] variants)"), OPT_END};
    Err err = {0};
    Config c;
    Run run;
    int exit_code;
    if (stage_open(argc, argv, opts, &c, &run, &exit_code)) return exit_code;
    const char *one = opt_str(opts, "--variant", NULL);
    int n_cond = 2 * c.n_steer_alphas + 1, n_rows_max = n_cond + 1, rows = 0;
    SteerCondition *sc = xmalloc((size_t)n_cond * sizeof *sc);
    steer_conditions(&c, NULL, sc);
    GroupStats *g = xmalloc((size_t)n_rows_max * sizeof *g);    // (n_rows_max) baseline, then each condition
    int *present = xmalloc((size_t)n_rows_max * sizeof *present); // (n_rows_max)
    Csv events = {0};
    Buf csv = {0};
    if (one && !config_variant(&c, one)) {
        err_input(&err, "%s: no [variant.%s] section", c.file, one);
        goto out;
    }
    if (events_csv_open(&run, &events, &err)) goto out;
    buf_puts(&csv, STEERING_SWEEP_HEADER);
    int n_variants = one ? 1 : c.n_steer_variants;
    for (int v = 0; v < n_variants; v++) {
        const char *variant = one ? one : c.steer_variants[v];
        int n_present = 0;
        for (int k = 0; k < n_rows_max; k++) {
            const char *condition = k == 0 ? "baseline" : sc[k - 1].name;
            GenRecord *recs;
            int n, *n_events, rc = load_group(&run, &events, variant, condition, &recs, &n, &n_events, &err);
            if (rc < 0) goto out;
            present[k] = rc == 0;
            if (rc == 0) {
                g[k] = group_stats(recs, n_events, n, seed_mix(seed_mix((uint64_t)c.seed, 0x57EE7), (uint64_t)k));
                n_present += k > 0;
            }
            generations_free(recs, n);
            free(n_events);
        }
        if (!present[0]) {
            err_input(&err, "no baseline generations of variant %s in run %s: run generate --condition baseline --variant %s first",
                      variant, run.id, variant);
            goto out;
        }
        if (n_present == 0) {
            err_input(&err, "no steered generations of variant %s in run %s: run generate --condition steer --variant %s first",
                      variant, run.id, variant);
            goto out;
        }
        // The trend of each steering kind over alpha, the baseline at alpha 0.
        Trend trend[2];
        for (int kind = 0; kind < 2; kind++) {
            double *x = xmalloc((size_t)n_rows_max * sizeof *x);
            long long *k_bt = xmalloc((size_t)n_rows_max * sizeof *k_bt), *n_all = xmalloc((size_t)n_rows_max * sizeof *n_all);
            int m = 0;
            x[m] = 0, k_bt[m] = g[0].with_bt, n_all[m++] = g[0].n;
            for (int k = 1; k < n_rows_max; k++)
                if (present[k] && sc[k - 1].kind == kind) x[m] = sc[k - 1].alpha, k_bt[m] = g[k].with_bt, n_all[m++] = g[k].n;
            trend[kind] = m > 1 ? cochran_armitage(x, k_bt, n_all, m) : (Trend){NAN, NAN, NAN, NAN, NAN};
            free(x), free(k_bt), free(n_all);
        }
        static const char *const kinds[] = {"direction", "random", "project_out"};
        for (int k = 0; k < n_rows_max; k++) {
            if (!present[k]) continue;
            const char *condition = k == 0 ? "baseline" : sc[k - 1].name;
            int kind = k == 0 ? -1 : sc[k - 1].kind;
            buf_printf(&csv, "%s,", run.id);
            buf_csv_field(&csv, variant, strlen(variant));
            buf_printf(&csv, ",%s,%s", condition, kind < 0 ? "baseline" : kinds[kind]);
            put_num(&csv, k == 0 ? 0 : sc[k - 1].alpha);
            buf_printf(&csv, ",%d", k == 0 ? -1 : steered_layer_of(&run, variant, condition));
            group_stats_csv(&csv, &g[k]);
            put_num(&csv, k ? fisher_exact_p(g[k].with_bt, g[k].n - g[k].with_bt, g[0].with_bt, g[0].n - g[0].with_bt) : NAN);
            const Trend *t = kind == STEER_DIRECTION || kind == STEER_RANDOM ? &trend[kind] : NULL;
            put_num(&csv, t ? t->slope : NAN);
            put_num(&csv, t ? t->lo : NAN);
            put_num(&csv, t ? t->hi : NAN);
            put_num(&csv, t ? t->z : NAN);
            put_num(&csv, t ? t->p : NAN);
            buf_putc(&csv, '\n');
            rows++;
        }
        printf("steering-sweep: %s: rate at baseline %.3f; trend over alpha: direction %+.3f per unit (p = %.3g), random %+.3f (p = %.3g)\n",
               variant, g[0].rate.est, trend[0].slope, trend[0].p, trend[1].slope, trend[1].p);
    }
    char path[1200];
    run_path(&run, path, sizeof path, ART_STEERING_SWEEP);
    if (write_file_atomic(path, csv.data, csv.len, &err)) goto out;
out:
    (void)rows;
    free(sc);
    free(g);
    free(present);
    csv_free(&events);
    buf_free(&csv);
    config_free(&c);
    return err.msg[0] ? fail(&err) : 0;
}
