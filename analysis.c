// analysis.c: statistics, backtracking events, the logit lens, the ablation
// scan, the condition comparison and the formatting sweep.
#include "bt.h"

#include <limits.h>
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

Interval bootstrap_mean95(const double *x, int n, int n_resamples, uint64_t seed) {
    Interval r = {NAN, NAN, NAN};
    if (n <= 0 || n_resamples <= 0) return r;
    r.est = mean_of(x, n);
    double *stats = xmalloc((size_t)n_resamples * sizeof *stats); // (n_resamples)
    Rng rng;
    rng_seed(&rng, seed);
    for (int b = 0; b < n_resamples; b++) stats[b] = resample_mean(&rng, x, n);
    qsort(stats, (size_t)n_resamples, sizeof *stats, cmp_double_nan_last);
    r.lo = sorted_quantile(stats, n_resamples, 0.025);
    r.hi = sorted_quantile(stats, n_resamples, 0.975);
    free(stats);
    return r;
}



double binomial_tail_p(long long k, long long n, double p) {
    if (n < 0 || k < 0 || !(p >= 0 && p <= 1)) return NAN;
    if (k == 0) return 1;
    if (k > n) return 0;
    double sum = 0; // terms from the far end first: the small ones are not lost to rounding
    for (long long x = n; x >= k; x--) {
        if (p == 0) break;
        if (p == 1) return 1;
        sum += exp(log_choose(n, x) + (double)x * log(p) + (double)(n - x) * log1p(-p));
    }
    return sum > 1 ? 1 : sum;
}

double mcnemar_p(long long b, long long c) { return binomial_tail_p(b, b + c, 0.5); }

void holm_adjust(const double *p, int n, double *adjusted) {
    int *order = xmalloc((size_t)(n + 1) * sizeof *order); // (n) indices of the defined p-values, smallest first
    int m = 0;
    for (int i = 0; i < n; i++) {
        adjusted[i] = NAN;
        if (!isnan(p[i])) order[m++] = i;
    }
    for (int i = 1; i < m; i++) // insertion sort: n is the handful of hypotheses
        for (int j = i; j > 0 && p[order[j]] < p[order[j - 1]]; j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    double running = 0;
    for (int r = 0; r < m; r++) {
        double a = (m - r) * p[order[r]];
        if (a > running) running = a;
        adjusted[order[r]] = running > 1 ? 1 : running;
    }
    free(order);
}

Interval cluster_bootstrap95(ClusterStat stat, const void *ctx, int n_clusters, int n_resamples, uint64_t seed,
                             double threshold, double *share_at_least) {
    Interval r = {NAN, NAN, NAN};
    if (share_at_least) *share_at_least = NAN;
    if (n_clusters <= 0 || n_resamples <= 0) return r;
    int *weights = xmalloc((size_t)n_clusters * sizeof *weights); // (n_clusters) draws of each cluster
    for (int c = 0; c < n_clusters; c++) weights[c] = 1;
    r.est = stat(ctx, weights);
    double *stats = xmalloc((size_t)n_resamples * sizeof *stats); // (n_resamples)
    Rng rng;
    rng_seed(&rng, seed);
    int n_defined = 0, at_least = 0;
    for (int b = 0; b < n_resamples; b++) {
        memset(weights, 0, (size_t)n_clusters * sizeof *weights);
        for (int c = 0; c < n_clusters; c++) weights[rng_below(&rng, (uint64_t)n_clusters)]++;
        double v = stat(ctx, weights);
        if (isnan(v)) continue; // a resample where the statistic is undefined (e.g. 0/0) says nothing
        stats[n_defined++] = v;
        at_least += v >= threshold;
    }
    if (n_defined > 0) {
        qsort(stats, (size_t)n_defined, sizeof *stats, cmp_double_nan_last);
        r.lo = sorted_quantile(stats, n_defined, 0.025);
        r.hi = sorted_quantile(stats, n_defined, 0.975);
        if (share_at_least) *share_at_least = (1.0 + at_least) / (1.0 + n_defined);
    }
    free(weights);
    free(stats);
    return r;
}

double normal_quantile(double q) {
    if (!(q > 0 && q < 1)) return q == 0 ? -INFINITY : q == 1 ? INFINITY : NAN;
    double lo = -40, hi = 40; // bisection on the normal cdf: 200 halvings reach double precision
    for (int i = 0; i < 200; i++) {
        double mid = 0.5 * (lo + hi);
        if (0.5 * erfc(-mid / sqrt(2.0)) < q) lo = mid;
        else hi = mid;
    }
    return 0.5 * (lo + hi);
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
    free(s->attn_heads);
    memset(s, 0, sizeof *s);
}

void layer_set_json(Buf *b, const LayerSet *s) {
    buf_printf(b, "{\"kind\": \"%s\", \"attn_layers\": [", s->kind == ABLATE_MEAN ? "mean" : "zero");
    for (int i = 0; i < s->n_attn; i++) buf_printf(b, "%s%d", i ? ", " : "", s->attn_layers[i]);
    buf_puts(b, "], \"mlp_layers\": [");
    for (int i = 0; i < s->n_mlp; i++) buf_printf(b, "%s%d", i ? ", " : "", s->mlp_layers[i]);
    buf_putc(b, ']');
    if (s->n_attn_heads) { // only when there are heads: sets without them read and write as before
        buf_puts(b, ", \"attn_heads\": [");
        for (int i = 0; i < s->n_attn_heads; i++)
            buf_printf(b, "%s[%d, %d]", i ? ", " : "", s->attn_heads[2 * i], s->attn_heads[2 * i + 1]);
        buf_putc(b, ']');
    }
    buf_putc(b, '}');
}

static int read_int_array(const Json *j, int t, int **out, int *n, int n_layers, const char *path, const char *key,
                          Err *err) {
    if (t < 0 || j->tok[t].type != JSON_ARRAY)
        return err_input(err, "%s: \"%s\" must be an array of layer indices", path, key);
    *out = xmalloc((size_t)(j->tok[t].size + 1) * sizeof **out);
    *n = 0;
    JSON_FOR_ARRAY(j, t, i, e) {
        long long v;
        if (json_int(j, e, &v) || v < 0 || v >= n_layers) {
            free(*out);
            *out = NULL;
            return err_input(err, "%s:%d: \"%s\"[%d] is not a layer index in [0, %d)", path, json_line(j, e), key, i,
                             n_layers);
        }
        (*out)[(*n)++] = (int)v;
    }
    return 0;
}

// "attn_heads": [[layer, head], ...] of object obj, when present (a set written without heads has none).
// Heads are checked against the model where a mask is made (layer_set_mask).
static int read_head_pairs(const Json *j, int obj, LayerSet *s, int n_layers, const char *path, Err *err) {
    int t = json_key(j, obj, "attn_heads");
    if (t < 0) return 0;
    if (j->tok[t].type != JSON_ARRAY)
        return err_input(err, "%s:%d: \"attn_heads\" must be an array of [layer, head]", path, json_line(j, t));
    s->attn_heads = xmalloc((size_t)(2 * j->tok[t].size + 2) * sizeof *s->attn_heads);
    JSON_FOR_ARRAY(j, t, i, e) {
        long long layer, head;
        if (j->tok[e].type != JSON_ARRAY || j->tok[e].size != 2 || json_int(j, e + 1, &layer) ||
            json_int(j, e + 2, &head) || layer < 0 || layer >= n_layers || head < 0 || head > INT32_MAX)
            return err_input(err, "%s:%d: \"attn_heads\"[%d] is not [layer, head] with a layer in [0, %d)", path,
                             json_line(j, e), i, n_layers);
        s->attn_heads[2 * i] = (int)layer, s->attn_heads[2 * i + 1] = (int)head;
        s->n_attn_heads++;
    }
    return 0;
}

// Reads {"attn_layers": [...], "mlp_layers": [...], "attn_heads": [[l, h], ...]} (selected or random layers).
int layer_set_read(const char *path, int n_layers, LayerSet *s, Err *err) {
    memset(s, 0, sizeof *s);
    Buf text = {0};
    Json j;
    if (read_file(path, &text, err)) return -1;
    int rc = json_parse(&j, text.data, text.len, path, err);
    if (rc == 0) {
        rc = json_unique_keys(&j, 0, err);
        if (rc == 0)
            rc = read_int_array(&j, json_key(&j, 0, "attn_layers"), &s->attn_layers, &s->n_attn, n_layers, path,
                                "attn_layers", err);
        if (rc == 0)
            rc = read_int_array(&j, json_key(&j, 0, "mlp_layers"), &s->mlp_layers, &s->n_mlp, n_layers, path,
                                "mlp_layers", err);
        if (rc == 0) rc = read_head_pairs(&j, 0, s, n_layers, path, err);
        json_free(&j);
    }
    buf_free(&text);
    if (rc) layer_set_free(s);
    return rc;
}

// The first n_chosen of pool (n_pool) become a uniform draw without replacement, in ascending order.
static void draw_sorted(Rng *rng, int *pool, int n_pool, int n_chosen) {
    for (int i = 0; i < n_chosen; i++) { // partial Fisher-Yates
        int k = i + (int)rng_below(rng, (uint64_t)(n_pool - i));
        int t = pool[i];
        pool[i] = pool[k];
        pool[k] = t;
    }
    qsort(pool, (size_t)n_chosen, sizeof *pool, cmp_int_asc);
}

// One shape-matched draw: as many attention and MLP layers as targeted has, none of them
// targeted, by a partial Fisher-Yates shuffle of the other layers (the seed's fix 4); then as
// many heads, none of them targeted, from the same stream (a set without heads draws no more).
static void draw_one(const LayerSet *targeted, int n_layers, int n_heads, Rng *rng, LayerSet *out) {
    memset(out, 0, sizeof *out);
    out->kind = targeted->kind;
    for (int part = 0; part < 2; part++) {
        const int *chosen = part ? targeted->mlp_layers : targeted->attn_layers;
        int n_chosen = part ? targeted->n_mlp : targeted->n_attn;
        int *pool = xmalloc((size_t)n_layers * sizeof *pool), n_pool = 0; // (n_layers) the untargeted layers
        for (int l = 0; l < n_layers; l++) {
            int taken = 0;
            for (int i = 0; i < n_chosen; i++) taken |= chosen[i] == l;
            if (!taken) pool[n_pool++] = l;
        }
        draw_sorted(rng, pool, n_pool, n_chosen);
        if (part) out->mlp_layers = pool, out->n_mlp = n_chosen;
        else out->attn_layers = pool, out->n_attn = n_chosen;
    }
    if (targeted->n_attn_heads == 0) return;
    int n_all = n_layers * n_heads, n_pool = 0, n_chosen = targeted->n_attn_heads;
    int *pool = xmalloc((size_t)n_all * sizeof *pool); // (n_layers * n_heads) untargeted heads, l * n_heads + h
    for (int k = 0; k < n_all; k++) {
        int taken = 0;
        for (int i = 0; i < n_chosen; i++)
            taken |= targeted->attn_heads[2 * i] * n_heads + targeted->attn_heads[2 * i + 1] == k;
        if (!taken) pool[n_pool++] = k;
    }
    draw_sorted(rng, pool, n_pool, n_chosen);
    out->attn_heads = xmalloc((size_t)(2 * n_chosen) * sizeof *out->attn_heads);
    for (int i = 0; i < n_chosen; i++)
        out->attn_heads[2 * i] = pool[i] / n_heads, out->attn_heads[2 * i + 1] = pool[i] % n_heads;
    out->n_attn_heads = n_chosen;
    free(pool);
}

static int same_layers(const LayerSet *a, const LayerSet *b) {
    if (a->n_attn != b->n_attn || a->n_mlp != b->n_mlp || a->n_attn_heads != b->n_attn_heads) return 0;
    for (int i = 0; i < 2 * a->n_attn_heads; i++)
        if (a->attn_heads[i] != b->attn_heads[i]) return 0;
    for (int i = 0; i < a->n_attn; i++)
        if (a->attn_layers[i] != b->attn_layers[i]) return 0;
    for (int i = 0; i < a->n_mlp; i++)
        if (a->mlp_layers[i] != b->mlp_layers[i]) return 0;
    return 1;
}

int draw_random_layers(const LayerSet *targeted, int n_layers, int n_heads, long long seed, int n_draws,
                       LayerSet *draws, Err *err) {
    int free_attn = n_layers - targeted->n_attn, free_mlp = n_layers - targeted->n_mlp;
    int n_th = targeted->n_attn_heads, free_heads = n_layers * n_heads - n_th;
    if (free_attn < targeted->n_attn || free_mlp < targeted->n_mlp)
        return err_input(
            err, "cannot draw %d attention and %d MLP layers outside the targeted ones: the model has %d layers",
            targeted->n_attn, targeted->n_mlp, n_layers);
    if (free_heads < n_th)
        return err_input(err, "cannot draw %d heads outside the targeted ones: the model has %d", n_th,
                         n_layers * n_heads);
    double possible =
        exp(lgamma(free_attn + 1.0) - lgamma(targeted->n_attn + 1.0) - lgamma(free_attn - targeted->n_attn + 1.0) +
            lgamma(free_mlp + 1.0) - lgamma(targeted->n_mlp + 1.0) - lgamma(free_mlp - targeted->n_mlp + 1.0) +
            lgamma(free_heads + 1.0) - lgamma(n_th + 1.0) - lgamma(free_heads - n_th + 1.0));
    uint64_t base = seed_mix((uint64_t)seed, 0x5A4D0A);
    for (int d = 0; d < n_draws; d++) {
        for (int attempt = 0;; attempt++) { // a draw equal to an earlier one is drawn again, while others remain
            Rng rng;
            rng_seed(&rng, d == 0 && attempt == 0 ? base : seed_mix(base, (uint64_t)d * 1000003 + (uint64_t)attempt));
            draw_one(targeted, n_layers, n_heads, &rng, &draws[d]);
            int repeat = 0;
            for (int e = 0; e < d && !repeat; e++) repeat = same_layers(&draws[e], &draws[d]);
            if (!repeat || d + 0.5 >= possible || attempt >= 10000) break;
            layer_set_free(&draws[d]);
        }
    }
    return 0;
}

// random_layers.json: {"kind": ..., "draws": [{"attn_layers": [...], "mlp_layers": [...]}, ...]}.
int ablation_design_read(const Run *run, int n_layers, int draw, LayerSet *set, Err *err) {
    char path[1200];
    memset(set, 0, sizeof *set);
    run_path(run, path, sizeof path, draw ? ART_RANDOM_LAYERS : ART_SELECTED);
    if (!path_exists(path))
        return err_input(err, "no %s in run %s: run ablation-scan first", draw ? ART_RANDOM_LAYERS : ART_SELECTED,
                         run->id);
    if (!draw) return layer_set_read(path, n_layers, set, err);
    Buf text = {0};
    Json j;
    if (read_file(path, &text, err)) return -1;
    int rc = json_parse(&j, text.data, text.len, path, err);
    if (rc == 0) {
        int draws = json_key(&j, 0, "draws");
        rc = json_unique_keys(&j, 0, err);
        if (rc == 0 && (draws < 0 || j.tok[draws].type != JSON_ARRAY))
            rc = err_input(err, "%s: no \"draws\" array (written by another version? run ablation-scan again)", path);
        else if (rc == 0 && draw > j.tok[draws].size)
            rc = err_input(err, "%s holds %d random draws, not %d: run ablation-scan again", path, j.tok[draws].size,
                           draw);
        if (rc == 0) JSON_FOR_ARRAY(&j, draws, i, t) {
            if (rc || i != draw - 1) continue;
            rc = json_unique_keys(&j, t, err);
            if (rc == 0)
                rc = read_int_array(&j, json_key(&j, t, "attn_layers"), &set->attn_layers, &set->n_attn, n_layers, path,
                                "attn_layers", err);
            if (rc == 0)
                rc = read_int_array(&j, json_key(&j, t, "mlp_layers"), &set->mlp_layers, &set->n_mlp, n_layers, path,
                                    "mlp_layers", err);
            if (rc == 0) rc = read_head_pairs(&j, t, set, n_layers, path, err);
        }
        json_free(&j);
    }
    buf_free(&text);
    if (rc) layer_set_free(set);
    return rc;
}

// analysis/component_means.json (written by ablation-scan), parsed into *j (text holds its bytes).
static int means_open(const Run *run, char *path, size_t size, Buf *text, Json *j, Err *err) {
    run_path(run, path, size, ART_MEANS);
    if (!path_exists(path))
        return err_input(err, "no %s in run %s: run ablation-scan with [ablation] kind = mean first", ART_MEANS,
                         run->id);
    if (read_file(path, text, err)) return -1;
    if (json_parse(j, text->data, text->len, path, err)) return -1;
    return json_unique_keys(j, 0, err);
}

// The means under key: rows x cols finite numbers (a mean replaces activations: inf or NaN would
// spread). *out stays NULL on error.
static int means_array(const Json *j, const char *path, const char *key, int rows, int cols, float **out, Err *err) {
    size_t n = (size_t)rows * (size_t)cols;
    int t = json_key(j, 0, key);
    if (t < 0 || j->tok[t].type != JSON_ARRAY || (size_t)j->tok[t].size != n)
        return err_input(err, "%s: \"%s\" must hold %d x %d numbers for this model", path, key, rows, cols);
    float *v = xmalloc(n * sizeof *v);
    JSON_FOR_ARRAY(j, t, i, e) {
        double d;
        if (json_number(j, e, &d) || !isfinite((float)d)) {
            free(v);
            return err_input(err, "%s:%d: \"%s\"[%d] is not a finite number", path, json_line(j, e), key, i);
        }
        v[i] = (float)d;
    }
    *out = v;
    return 0;
}

// The mean output of every attention block and MLP over the run's completions.
int component_means_read(const Run *run, const ModelConfig *mc, float **attn_mean, float **mlp_mean, Err *err) {
    char path[1200];
    Buf text = {0};
    Json j = {0};
    *attn_mean = *mlp_mean = NULL;
    int rc = means_open(run, path, sizeof path, &text, &j, err);
    if (rc == 0) rc = means_array(&j, path, "attn", mc->n_layers, mc->hidden_size, attn_mean, err);
    if (rc == 0) rc = means_array(&j, path, "mlp", mc->n_layers, mc->hidden_size, mlp_mean, err);
    json_free(&j);
    buf_free(&text);
    if (rc) {
        free(*attn_mean);
        *attn_mean = NULL;
    }
    return rc;
}

// Heads in the ablation design: the mask of a set, and each head's mean output for mean ablation.

int layer_set_mask(const LayerSet *set, const ModelConfig *mc, AblationMask *mask, Err *err) {
    int L = mc->n_layers, H = mc->n_heads;
    memset(mask, 0, sizeof *mask);
    for (int i = 0; i < set->n_attn_heads; i++)
        if (set->attn_heads[2 * i + 1] >= H)
            return err_input(err, "the ablation design names head %d.%d, but the model has %d heads per layer "
                                  "(run ablation-scan again)", set->attn_heads[2 * i], set->attn_heads[2 * i + 1], H);
    mask->attn = xcalloc((size_t)L, 1);
    mask->mlp = xcalloc((size_t)L, 1);
    for (int i = 0; i < set->n_attn; i++) mask->attn[set->attn_layers[i]] = 1;
    for (int i = 0; i < set->n_mlp; i++) mask->mlp[set->mlp_layers[i]] = 1;
    if (set->n_attn_heads) {
        mask->head = xcalloc((size_t)L * H, 1);
        for (int i = 0; i < set->n_attn_heads; i++)
            mask->head[set->attn_heads[2 * i] * H + set->attn_heads[2 * i + 1]] = 1;
    }
    return 0;
}

void ablation_mask_free(AblationMask *mask) {
    free(mask->attn);
    free(mask->mlp);
    free(mask->head);
    mask->attn = mask->mlp = mask->head = NULL;
}

// Each head's mean output before o_proj (n_layers, n_heads * head_dim), for mean ablation of heads.
int head_means_read(const Run *run, const ModelConfig *mc, float **head_mean, Err *err) {
    char path[1200];
    Buf text = {0};
    Json j = {0};
    *head_mean = NULL;
    int rc = means_open(run, path, sizeof path, &text, &j, err);
    if (rc == 0 && json_key(&j, 0, "head") < 0)
        rc = err_input(err, "%s has no \"head\" means (written before heads were scanned): run ablation-scan again",
                       path);
    if (rc == 0) rc = means_array(&j, path, "head", mc->n_layers, mc->n_heads * mc->head_dim, head_mean, err);
    json_free(&j);
    buf_free(&text);
    return rc;
}

// ----------------------------------------------------------------------------
// Events: backtracking triggers in the thinking part of each completion,
// mapped to the token that carries them, and position-matched controls.

static int ascii_alnum(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

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
                if (at + len < n && ascii_alnum((unsigned char)text[at + len]) &&
                    ascii_alnum((unsigned char)triggers[t][len - 1]))
                    continue;
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
    int *sentence_ends; // (n_records) opportunities to backtrack in each thinking part
} RunEvents;

static void run_events_free(RunEvents *e) {
    free(e->sentence_ends);
    generations_free(e->records, e->n_records);
    free(e->first_event);
    free(e->events);
    memset(e, 0, sizeof *e);
}

// Lists generations/<variant>/<condition>.jsonl in a stable order: the
// config's variants first, then any other variant folder, conditions in order.
// Opportunities to backtrack in text[0..n): sentence boundaries with more text after them. A
// boundary is a '.', '!' or '?' followed by white space, or a line break; what follows it must
// hold a non-space character before the end (so a final "\\boxed{3}." offers none).
int count_sentence_ends(const char *text, size_t n) {
    int count = 0;
    for (size_t i = 0; i < n; i++) {
        int end = text[i] == '\n' ||
                  ((text[i] == '.' || text[i] == '!' || text[i] == '?') && i + 1 < n &&
                   (text[i + 1] == ' ' || text[i + 1] == '\n' || text[i + 1] == '\t' || text[i + 1] == '\r'));
        if (!end) continue;
        size_t j = i + 1;
        while (j < n && (text[j] == ' ' || text[j] == '\n' || text[j] == '\t' || text[j] == '\r')) j++;
        if (j < n) count++;
        i = j - 1; // "\n\n" or ". \n" is one boundary
    }
    return count;
}

static int detect_run_events(const Config *c, const Run *run, const Tokenizer *tok, RunEvents *ev, Err *err) {
    memset(ev, 0, sizeof *ev);
    char **files;
    int n_files = run_generation_files(c, run, &files, err);
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
    ev->sentence_ends = xcalloc((size_t)ev->n_records + 1, sizeof *ev->sentence_ends);
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
        ev->sentence_ends[r] = count_sentence_ends(text.data, thinking_len);
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

static int same_group(const GenRecord *a, const GenRecord *b) {
    return strcmp(a->variant, b->variant) == 0 && strcmp(a->condition, b->condition) == 0;
}

// Whether record r has an event within distance tokens of k.
static int event_near(const RunEvents *ev, int r, int k, int distance) {
    for (int e = ev->first_event[r]; e < ev->first_event[r + 1]; e++)
        if (abs(ev->events[e].token_offset - k) <= distance) return 1;
    return 0;
}

// One row of backtracking_events.csv.
static void event_row(Buf *b, const Run *run, const Tokenizer *tok, const char *kind, int event_id,
                      const GenRecord *rec, const char *trigger, int char_offset, int k, int onset_token_id) {
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
    buf_printf(b, ",%d,%d,%d,%d\n", rec->prompt_tokens, rec->prompt_tokens + k - 1, rec->n_completion,
               rec->completion_ids[k < rec->n_completion ? k : 0]);
}

#define COMPLETIONS_HEADER "run_id,variant,condition,problem_id,sample,thinking_open,completion_tokens,finish_reason," \
    "truncated,correct,events,sentence_ends,reasons\n"
#define EVENTS_HEADER                                                                                                  \
    "run_id,kind,event_id,variant,condition,problem_id,sample,trigger,char_offset,token_offset,onset_token_id,onset_"  \
    "token,prompt_tokens,pred_pos,completion_tokens,token_at_offset\n"

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
        event_row(&csv, &run, tok, "event", e, &ev.records[x->record], c.triggers[x->trigger], x->char_offset,
                  x->token_offset, x->onset_token_id);
    }
    int *pool = xmalloc((size_t)ev.n_records * sizeof *pool), n_controls = 0;
    for (int e = 0; e < ev.n_events; e++) {
        const Event *x = &ev.events[e];
        const GenRecord *own = &ev.records[x->record];
        int n_pool = 0;
        for (int q = 0; q < ev.n_records; q++)
            if (q != x->record && same_group(&ev.records[q], own) &&
                ev.records[q].n_completion >= x->token_offset + 1 &&
                !event_near(&ev, q, x->token_offset, c.control_min_distance))
                pool[n_pool++] = q;
        Rng rng;
        rng_seed(&rng, seed_mix(seed_mix((uint64_t)c.seed, 0xC0417201), (uint64_t)e));
        int want = c.controls_per_event < n_pool ? c.controls_per_event : n_pool;
        for (int i = 0; i < want; i++) {
            int k = i + (int)rng_below(&rng, (uint64_t)(n_pool - i));
            int t = pool[i]; pool[i] = pool[k]; pool[k] = t;
            event_row(&csv, &run, tok, "control", e, &ev.records[pool[i]], c.triggers[x->trigger], -1, x->token_offset,
                      x->onset_token_id);
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
    buf_printf(&js,
               "{\n  \"run_id\": \"%s\",\n  \"n_completions\": %d,\n  \"n_events\": %d,\n  \"n_controls\": %d,\n  "
               "\"groups\": [",
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
    // One row per completion: what the comparisons and the sweep count, without re-reading text.
    buf_puts(&csv, COMPLETIONS_HEADER);
    for (int r = 0; r < ev.n_records; r++) {
        const GenRecord *rec = &ev.records[r];
        int truncated = strcmp(rec->finish_reason, "eos") != 0;
        buf_printf(&csv, "%s,", run.id);
        buf_csv_field(&csv, rec->variant, strlen(rec->variant));
        buf_putc(&csv, ',');
        buf_csv_field(&csv, rec->condition, strlen(rec->condition));
        buf_putc(&csv, ',');
        buf_csv_field(&csv, rec->problem_id, strlen(rec->problem_id));
        buf_printf(&csv, ",%d,%d,%d,%s,%d,%d,%d,%d,%d\n", rec->sample, prompt_thinking_open(rec->prompt),
                   rec->n_completion, rec->finish_reason, truncated, rec->correct,
                   ev.first_event[r + 1] - ev.first_event[r], ev.sentence_ends[r], ev.sentence_ends[r] > 0);
    }
    run_path(&run, path, sizeof path, ART_COMPLETIONS);
    wrc = write_file_atomic(path, csv.data, csv.len, &err);
    buf_free(&csv);
    if (wrc) goto out;
    printf("detect-events: %d completions, %d events, %d controls\n", ev.n_records, ev.n_events, n_controls);
out:
    run_events_free(&ev);
    if (tok) tokenizer_free(tok);
    config_free(&c);
    return err.msg[0] ? fail(&err) : 0;
}

// ----------------------------------------------------------------------------
// Completions as the comparisons count them: analysis/completions.csv (detect-events),
// one row per completion, grouped by condition, with problems as the clusters that every
// bootstrap resamples (completions of one problem are not independent).

typedef struct {
    int cluster, sample;     // problem index in the Clusters, sample number
    int events, tokens, correct, truncated, sentence_ends, thinking_open;
} Completion;

typedef struct {
    char name[96];           // the condition (or variant) these completions belong to
    Completion *c;           // (n)
    int n;
} CompletionGroup;

typedef struct {
    char **problem_ids;      // (n_clusters)
    int n_clusters;
} Clusters;

static int cluster_of(Clusters *cl, const char *problem_id) {
    for (int i = 0; i < cl->n_clusters; i++)
        if (strcmp(cl->problem_ids[i], problem_id) == 0) return i;
    cl->problem_ids = xrealloc(cl->problem_ids, (size_t)(cl->n_clusters + 1) * sizeof *cl->problem_ids);
    cl->problem_ids[cl->n_clusters] = xstrdup(problem_id);
    return cl->n_clusters++;
}

static void clusters_free(Clusters *cl) {
    for (int i = 0; i < cl->n_clusters; i++) free(cl->problem_ids[i]);
    free(cl->problem_ids);
    memset(cl, 0, sizeof *cl);
}

// Reads completions.csv; keeps the rows with column `by` equal to want (NULL: every row),
// grouped by the other of variant/condition, in the order they first appear.
static int completions_load(const Run *run, const char *key_col, const char *key, const char *group_col,
                            CompletionGroup **groups, int *n_groups, Clusters *cl, Err *err) {
    char path[1200];
    run_path(run, path, sizeof path, ART_COMPLETIONS);
    if (!path_exists(path)) return err_input(err, "no %s in run %s: run detect-events first", ART_COMPLETIONS, run->id);
    Csv t;
    if (csv_read(path, &t, err)) return -1;
    static const char *const cols[] = {"problem_id", "sample", "events", "completion_tokens", "correct", "truncated",
                                       "sentence_ends", "thinking_open"};
    int col[8], kc = csv_col(&t, key_col), gc = csv_col(&t, group_col), rc = 0;
    for (int k = 0; k < 8; k++)
        if ((col[k] = csv_col(&t, cols[k])) < 0)
            rc = err_input(err, "%s: no column '%s' (run detect-events again)", path, cols[k]);
    if (rc == 0 && (kc < 0 || gc < 0))
        rc = err_input(err, "%s: no variant or condition column (run detect-events again)", path);
    *groups = NULL;
    *n_groups = 0;
    for (int r = 0; rc == 0 && r < t.n_rows; r++) {
        if (key && strcmp(csv_cell(&t, r, kc), key) != 0) continue;
        const char *name = csv_cell(&t, r, gc);
        int g = 0;
        while (g < *n_groups && strcmp((*groups)[g].name, name) != 0) g++;
        if (g == *n_groups) {
            *groups = xrealloc(*groups, (size_t)(g + 1) * sizeof **groups);
            (*groups)[g] = (CompletionGroup){0};
            snprintf((*groups)[g].name, sizeof (*groups)[g].name, "%s", name);
            (*n_groups)++;
        }
        CompletionGroup *grp = &(*groups)[g];
        long long v[8];
        for (int k = 1; k < 8 && rc == 0; k++) rc = csv_int(&t, r, col[k], 0, 1LL << 30, &v[k], err);
        if (rc) break;
        grp->c = xrealloc(grp->c, (size_t)(grp->n + 1) * sizeof *grp->c);
        grp->c[grp->n++] = (Completion){cluster_of(cl, csv_cell(&t, r, col[0])),
                                        (int)v[1],
                                        (int)v[2],
                                        (int)v[3],
                                        (int)v[4],
                                        (int)v[5],
                                        (int)v[6],
                                        (int)v[7]};
    }
    csv_free(&t);
    return rc;
}

static void groups_free(CompletionGroup *g, int n) {
    for (int i = 0; i < n; i++) free(g[i].c);
    free(g);
}

static const CompletionGroup *group_find(const CompletionGroup *g, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (strcmp(g[i].name, name) == 0) return &g[i];
    return NULL;
}

// Per-cluster sums of one group, what every statistic below is a ratio of.
typedef struct {
    double *n, *bt, *events, *tokens, *opportunities, *reasoning, *reasoning_bt, *reasoning_events;
} Sums; // each (n_clusters)

static Sums sums_of(const CompletionGroup *g, int n_clusters, int (*keep)(const Completion *)) {
    Sums s;
    double **f[] = {&s.n,         &s.bt,           &s.events,          &s.tokens, &s.opportunities,
                    &s.reasoning, &s.reasoning_bt, &s.reasoning_events};
    for (int k = 0; k < 8; k++) *f[k] = xcalloc((size_t)n_clusters + 1, sizeof(double));
    for (int i = 0; g && i < g->n; i++) {
        const Completion *c = &g->c[i];
        if (keep && !keep(c)) continue;
        int k = c->cluster, reasons = c->sentence_ends > 0;
        s.n[k]++, s.bt[k] += c->events > 0, s.events[k] += c->events, s.tokens[k] += c->tokens;
        s.opportunities[k] += reasons ? c->sentence_ends : 0, s.reasoning[k] += reasons;
        s.reasoning_bt[k] += reasons && c->events > 0, s.reasoning_events[k] += reasons ? c->events : 0;
    }
    return s;
}

static void sums_free(Sums *s) {
    free(s->n), free(s->bt), free(s->events), free(s->tokens), free(s->opportunities), free(s->reasoning);
    free(s->reasoning_bt), free(s->reasoning_events);
}

typedef struct {
    const Sums *a, *b, *c; // the groups a statistic compares
    int n_clusters;
    double scale;
} SumsCtx;

static double wsum(const double *x, const int *w, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += w[i] * x[i];
    return s;
}

static double rate_of(const Sums *s, const int *w, int n) {
    double d = wsum(s->n, w, n);
    return d > 0 ? wsum(s->bt, w, n) / d : NAN;
}

static double stat_events_per_1k(const void *ctx, const int *w) {
    const SumsCtx *x = ctx;
    double t = wsum(x->a->tokens, w, x->n_clusters);
    return t > 0 ? 1000 * wsum(x->a->events, w, x->n_clusters) / t : NAN;
}

static double stat_mean_length(const void *ctx, const int *w) {
    const SumsCtx *x = ctx;
    double d = wsum(x->a->n, w, x->n_clusters);
    return d > 0 ? wsum(x->a->tokens, w, x->n_clusters) / d : NAN;
}

// 1 - rate(a) / rate(b): the share of b's backtracking that a removes.
static double stat_relative_drop(const void *ctx, const int *w) {
    const SumsCtx *x = ctx;
    double base = rate_of(x->b, w, x->n_clusters);
    return base > 0 ? 1 - rate_of(x->a, w, x->n_clusters) / base : NAN;
}

// (rate(c) - rate(a)) / rate(b): how much more of baseline b's backtracking a removes than c does.
static double stat_advantage(const void *ctx, const int *w) {
    const SumsCtx *x = ctx;
    double base = rate_of(x->b, w, x->n_clusters);
    return base > 0 ? (rate_of(x->c, w, x->n_clusters) - rate_of(x->a, w, x->n_clusters)) / base : NAN;
}

// Events per opportunity (sentence end) among reasoning completions: a's over b's when b is set.
static double stat_opportunity_rate(const void *ctx, const int *w) {
    const SumsCtx *x = ctx;
    double oa = wsum(x->a->opportunities, w, x->n_clusters);
    double ra = oa > 0 ? wsum(x->a->reasoning_events, w, x->n_clusters) / oa : NAN;
    if (!x->b) return ra;
    double ob = wsum(x->b->opportunities, w, x->n_clusters);
    double rb = ob > 0 ? wsum(x->b->reasoning_events, w, x->n_clusters) / ob : NAN;
    return isnan(ra) || isnan(rb) ? NAN : rb > 0 ? ra / rb : ra > 0 ? INFINITY : NAN;
}

// A statistic on the data itself: every cluster once.
static double stat_estimate(ClusterStat stat, const void *ctx, int n_clusters) {
    int *ones = xmalloc((size_t)(n_clusters + 1) * sizeof *ones);
    for (int k = 0; k < n_clusters; k++) ones[k] = 1;
    double v = stat(ctx, ones);
    free(ones);
    return v;
}

// McNemar counts of pairs (same problem and sample, so the same sampling seed) between
// groups a and b: yes_no = backtracked in a but not in b, no_yes the other way.
static void mcnemar_counts(const CompletionGroup *a, const CompletionGroup *b, long long *yes_no, long long *no_yes) {
    *yes_no = *no_yes = 0;
    for (int i = 0; i < a->n; i++)
        for (int j = 0; j < b->n; j++)
            if (a->c[i].cluster == b->c[j].cluster && a->c[i].sample == b->c[j].sample) {
                int x = a->c[i].events > 0, y = b->c[j].events > 0;
                *yes_no += x && !y;
                *no_yes += !x && y;
                break;
            }
}

static void put_num(Buf *b, double x) {
    buf_putc(b, ',');
    if (x == x) buf_printf(b, "%.6g", x);
    else buf_puts(b, "nan");
}

static void put_interval(Buf *b, Interval ci) {
    put_num(b, ci.est);
    put_num(b, ci.lo);
    put_num(b, ci.hi);
}

#define GROUP_STATS_HEADER                                                                                             \
    "completions,with_backtracking,backtracking_rate,rate_ci_lo,rate_ci_hi,events,completion_tokens,"                  \
    "events_per_1k_tokens,events_per_1k_ci_lo,events_per_1k_ci_hi,mean_length,length_ci_lo,length_ci_hi,correct,"      \
    "accuracy,"                                                                                                        \
    "accuracy_ci_lo,accuracy_ci_hi,truncated,truncated_share"

// Rates (Wilson) and ratios (bootstrap over problems) of one group, as CSV cells.
static void group_stats_csv(Buf *b, const CompletionGroup *g, const Sums *s, int n_clusters, uint64_t seed) {
    long long n = g->n, bt = 0, events = 0, tokens = 0, correct = 0, truncated = 0;
    for (int i = 0; i < g->n; i++) {
        bt += g->c[i].events > 0, events += g->c[i].events, tokens += g->c[i].tokens;
        correct += g->c[i].correct, truncated += g->c[i].truncated;
    }
    SumsCtx x = {.a = s, .n_clusters = n_clusters};
    buf_printf(b, ",%lld,%lld", n, bt);
    put_interval(b, wilson95(bt, n));
    buf_printf(b, ",%lld,%lld", events, tokens);
    put_interval(b,
                 cluster_bootstrap95(stat_events_per_1k, &x, n_clusters, STAT_RESAMPLES, seed_mix(seed, 1), 0, NULL));
    put_interval(b, cluster_bootstrap95(stat_mean_length, &x, n_clusters, STAT_RESAMPLES, seed_mix(seed, 2), 0, NULL));
    buf_printf(b, ",%lld", correct);
    put_interval(b, wilson95(correct, n));
    buf_printf(b, ",%lld", truncated);
    put_num(b, n ? (double)truncated / n : NAN);
}

// The collateral damage of each ablation condition (collateral-damage stage), if it has run.
static Interval collateral_of(const Csv *t, int have, const char *condition) {
    Interval r = {NAN, NAN, NAN};
    int cc = have ? csv_col(t, "condition") : -1, e = csv_col(t, "nll_increase"), lo = csv_col(t, "ci_lo"),
        hi = csv_col(t, "ci_hi");
    for (int row = 0; cc >= 0 && e >= 0 && lo >= 0 && hi >= 0 && row < t->n_rows; row++)
        if (strcmp(csv_cell(t, row, cc), condition) == 0) {
            double *out[3] = {&r.est, &r.lo, &r.hi};
            int cols[3] = {e, lo, hi};
            for (int k = 0; k < 3; k++) { // "nan" where the interval is undefined; anything unreadable is NaN too
                char *end;
                const char *cell = csv_cell(t, row, cols[k]);
                double v = strtod(cell, &end);
                *out[k] = *cell && !*end ? v : NAN;
            }
        }
    return r;
}

// ----------------------------------------------------------------------------
// Compare conditions: baseline vs the targeted ablation vs each shape-matched random
// draw of one variant. Baseline and ablated completions share their sampling seeds
// (problem, sample), so the tests are paired (McNemar) and one-sided, in the direction
// the hypotheses claim; intervals resample problems.

#define CONDITIONS_HEADER                                                                                              \
    "run_id,variant,condition," GROUP_STATS_HEADER ",relative_drop_vs_baseline,drop_ci_lo,drop_ci_hi,"                 \
    "p_drop_at_least_min,pairs_yes_no,pairs_no_yes,p_vs_baseline,targeted_advantage,advantage_ci_lo,advantage_ci_hi,"  \
    "p_targeted_vs_this,collateral_nll,collateral_ci_lo,collateral_ci_hi\n"

int cmd_compare_conditions(int argc, char **argv) {
    Opt opts[] = {OPT_CONFIG, OPT("--variant", 1, "variant to compare (default [logit_lens] variant)"), OPT_END};
    Err err = {0};
    Config c;
    Run run;
    int exit_code;
    if (stage_open(argc, argv, opts, &c, &run, &exit_code)) return exit_code;
    const char *variant = opt_str(opts, "--variant", c.lens_variant);
    int n_cond = 2 + c.random_draws, n_groups = 0, have_collateral = 0;
    CompletionGroup *groups = NULL;
    const CompletionGroup **g = xcalloc((size_t)n_cond + 1, sizeof *g); // baseline, targeted, random draws
    char (*names)[64] = xcalloc((size_t)n_cond + 1, sizeof *names);
    Clusters cl = {0};
    Csv collateral = {0};
    Buf csv = {0};
    Sums *sums = xcalloc((size_t)n_cond + 2, sizeof *sums);
    if (completions_load(&run, "variant", variant, "condition", &groups, &n_groups, &cl, &err)) goto out;
    for (int k = 0; k < n_cond; k++) {
        Condition cond = {k == 0 ? COND_BASELINE : k == 1 ? COND_TARGETED : COND_RANDOM, k >= 2 ? k - 1 : 0};
        condition_format(&cond, names[k], sizeof names[k]);
        if (!(g[k] = group_find(groups, n_groups, names[k]))) {
            err_input(&err, "no %s completions of variant %s in run %s: run generate --condition %s --variant %s, then "
                            "detect-events", names[k], variant, run.id, names[k], variant);
            goto out;
        }
    }
    char path[1200];
    run_path(&run, path, sizeof path, ART_COLLATERAL);
    if (path_exists(path) && csv_read(path, &collateral, &err)) goto out;
    have_collateral = path_exists(path);
    int nc = cl.n_clusters;
    for (int k = 0; k < n_cond; k++) sums[k] = sums_of(g[k], nc, NULL);
    // The random draws pooled: every draw's completions together.
    CompletionGroup pooled = {.name = "random_pooled"};
    for (int k = 2; k < n_cond; k++) {
        pooled.c = xrealloc(pooled.c, (size_t)(pooled.n + g[k]->n) * sizeof *pooled.c);
        memcpy(pooled.c + pooled.n, g[k]->c, (size_t)g[k]->n * sizeof *pooled.c);
        pooled.n += g[k]->n;
    }
    sums[n_cond] = sums_of(&pooled, nc, NULL);
    buf_puts(&csv, CONDITIONS_HEADER);
    uint64_t seed = seed_mix((uint64_t)c.seed, 0xC0DE);
    for (int k = 0; k <= n_cond; k++) {
        const CompletionGroup *grp = k < n_cond ? g[k] : &pooled;
        buf_printf(&csv, "%s,", run.id);
        buf_csv_field(&csv, variant, strlen(variant));
        buf_printf(&csv, ",%s", grp->name);
        group_stats_csv(&csv, grp, &sums[k], nc, seed_mix(seed, (uint64_t)k));
        SumsCtx drop = {.a = &sums[k], .b = &sums[0], .n_clusters = nc};
        double p_at_least = NAN;
        Interval d = k ? cluster_bootstrap95(stat_relative_drop, &drop, nc, STAT_RESAMPLES,
                                             seed_mix(seed, 100 + (uint64_t)k), c.h1_min_relative_drop, &p_at_least)
                       : (Interval){NAN, NAN, NAN};
        put_interval(&csv, d);
        put_num(&csv, p_at_least);
        long long yes_no = 0, no_yes = 0;
        if (k > 0 && k < n_cond) mcnemar_counts(g[0], g[k], &yes_no, &no_yes);
        buf_printf(&csv, ",%lld,%lld", yes_no, no_yes);
        put_num(&csv, k > 0 && k < n_cond ? mcnemar_p(yes_no, no_yes) : NAN);
        // Random draws: how much more the targeted set removes, and the paired test of it.
        Interval adv = {NAN, NAN, NAN};
        double p_adv = NAN;
        if (k >= 2) {
            SumsCtx x = {.a = &sums[1], .b = &sums[0], .c = &sums[k], .n_clusters = nc};
            adv =
                cluster_bootstrap95(stat_advantage, &x, nc, STAT_RESAMPLES, seed_mix(seed, 200 + (uint64_t)k), 0, NULL);
            if (k < n_cond) {
                long long r_yes_t_no, r_no_t_yes;
                mcnemar_counts(g[k], g[1], &r_yes_t_no, &r_no_t_yes);
                p_adv = mcnemar_p(r_yes_t_no, r_no_t_yes);
            }
        }
        put_interval(&csv, adv);
        put_num(&csv, p_adv);
        put_interval(&csv, k ? collateral_of(&collateral, have_collateral, grp->name) : (Interval){NAN, NAN, NAN});
        buf_putc(&csv, '\n');
    }
    free(pooled.c);
    run_path(&run, path, sizeof path, ART_CONDITIONS);
    if (write_file_atomic(path, csv.data, csv.len, &err)) goto out;
    printf("compare-conditions: %s: backtracking rate", variant);
    for (int k = 0; k < n_cond; k++) {
        long long bt = 0;
        for (int i = 0; i < g[k]->n; i++) bt += g[k]->c[i].events > 0;
        printf("%s %s %.3f", k ? "," : "", names[k], g[k]->n ? (double)bt / g[k]->n : NAN);
    }
    printf("\n");
out:
    for (int k = 0; k <= n_cond; k++) sums_free(&sums[k]);
    free(sums);
    groups_free(groups, n_groups);
    free(g);
    free(names);
    clusters_free(&cl);
    csv_free(&collateral);
    buf_free(&csv);
    config_free(&c);
    return err.msg[0] ? fail(&err) : 0;
}

// ----------------------------------------------------------------------------
// Formatting sweep: the baseline variants side by side. Whether a format makes the model
// reason at all is one finding (the share of completions whose thinking part has a
// sentence end to backtrack after); H2 is decided on backtracking given reasoning: events
// per opportunity in the variants that leave <think> open against the others, among
// completions that reason, so a format in which the model writes no reasoning cannot
// make H2 true.

static int reasons(const Completion *c) { return c->sentence_ends > 0; }

// One-sided permutation test that think-open completions backtrack more per opportunity
// than the others: labels are shuffled among each problem's reasoning completions, so
// problems are compared with themselves. The statistic is the difference of pooled rates.
static double h2_permutation_p(const CompletionGroup *g, int n_groups, int n_clusters, int n_permutations,
                               uint64_t seed) {
    int n = 0;
    for (int v = 0; v < n_groups; v++)
        for (int i = 0; i < g[v].n; i++) n += reasons(&g[v].c[i]);
    const Completion **all = xmalloc((size_t)(n + 1) * sizeof *all); // (n) reasoning completions, by problem
    int *label = xmalloc((size_t)(n + 1) * sizeof *label), *start = xcalloc((size_t)n_clusters + 2, sizeof *start);
    for (int v = 0; v < n_groups; v++)
        for (int i = 0; i < g[v].n; i++)
            if (reasons(&g[v].c[i])) start[g[v].c[i].cluster + 1]++;
    for (int k = 0; k < n_clusters; k++) start[k + 1] += start[k];
    int *fill = xmalloc((size_t)n_clusters * sizeof *fill);
    memcpy(fill, start, (size_t)n_clusters * sizeof *fill);
    for (int v = 0; v < n_groups; v++)
        for (int i = 0; i < g[v].n; i++)
            if (reasons(&g[v].c[i])) {
                int at = fill[g[v].c[i].cluster]++;
                all[at] = &g[v].c[i];
                label[at] = g[v].c[i].thinking_open;
            }
    double observed = NAN, total[2][2] = {{0}}; // [think][events, opportunities]
    for (int i = 0; i < n; i++) total[label[i]][0] += all[i]->events, total[label[i]][1] += all[i]->sentence_ends;
    double p = NAN;
    if (total[0][1] > 0 && total[1][1] > 0) {
        observed = total[1][0] / total[1][1] - total[0][0] / total[0][1];
        double tol = 1e-12 * (fabs(observed) + 1);
        Rng rng;
        rng_seed(&rng, seed);
        long long extreme = 0;
        for (int b = 0; b < n_permutations; b++) {
            double t[2][2] = {{0}};
            for (int k = 0; k < n_clusters; k++) // shuffle the labels within the problem
                for (int i = start[k]; i < start[k + 1]; i++) {
                    int j = i + (int)rng_below(&rng, (uint64_t)(start[k + 1] - i));
                    int l = label[i];
                    label[i] = label[j];
                    label[j] = l;
                    t[label[i]][0] += all[i]->events, t[label[i]][1] += all[i]->sentence_ends;
                }
            double stat = t[1][1] > 0 && t[0][1] > 0 ? t[1][0] / t[1][1] - t[0][0] / t[0][1] : -INFINITY;
            extreme += stat >= observed - tol;
        }
        p = (1.0 + (double)extreme) / (1.0 + n_permutations);
    }
    free(all);
    free(label);
    free(start);
    free(fill);
    return p;
}

#define FORMATTING_HEADER                                                                                              \
    "run_id,variant,thinking_open," GROUP_STATS_HEADER ",reasoning,reasoning_share,reasoning_ci_lo,"                   \
    "reasoning_ci_hi,opportunities,reasoning_events,events_per_opportunity,epo_ci_lo,epo_ci_hi,reasoning_with_"        \
    "backtracking,"                                                                                                    \
    "reasoning_rate,reasoning_rate_ci_lo,reasoning_rate_ci_hi,chi2_stat,chi2_df,chi2_p,max_min_rate_ratio,"            \
    "h2_think_reasoning,h2_no_think_reasoning,h2_rate_think,h2_rate_no_think,h2_ratio,h2_ratio_ci_lo,h2_ratio_ci_hi,"  \
    "h2_p,"                                                                                                            \
    "h2_p_ratio_at_least_min\n"

int cmd_formatting_sweep(int argc, char **argv) {
    Opt opts[] = {OPT_CONFIG, OPT_END};
    Err err = {0};
    Config c;
    Run run;
    int exit_code;
    if (stage_open(argc, argv, opts, &c, &run, &exit_code)) return exit_code;
    CompletionGroup *all = NULL, *g = xcalloc((size_t)c.n_variants + 1, sizeof *g);
    int n_all = 0, used = 0;
    Clusters cl = {0};
    Buf csv = {0};
    Sums *sums = xcalloc((size_t)c.n_variants + 2, sizeof *sums), think = {0}, no_think = {0};
    long long *bt_k = xcalloc((size_t)c.n_variants + 1, sizeof *bt_k),
              *nn = xcalloc((size_t)c.n_variants + 1, sizeof *nn);
    if (completions_load(&run, "condition", "baseline", "variant", &all, &n_all, &cl, &err)) goto out;
    for (int v = 0; v < c.n_variants; v++) { // the configured variants, in order; one not generated is left out
        const CompletionGroup *x = group_find(all, n_all, c.variants[v]);
        if (x) g[used++] = *x;
    }
    if (used == 0) {
        err_input(&err, "no baseline generations in run %s: run generate --condition baseline first", run.id);
        goto out;
    }
    int nc = cl.n_clusters;
    uint64_t seed = seed_mix((uint64_t)c.seed, 0xF0F0);
    for (int v = 0; v < used; v++) {
        sums[v] = sums_of(&g[v], nc, NULL);
        for (int i = 0; i < g[v].n; i++) bt_k[v] += g[v].c[i].events > 0;
        nn[v] = g[v].n;
    }
    // H2: think-open variants against the others, over their reasoning completions.
    CompletionGroup side[2] = {{.name = "no_think"}, {.name = "think"}};
    for (int v = 0; v < used; v++)
        for (int i = 0; i < g[v].n; i++) {
            CompletionGroup *x = &side[g[v].c[i].thinking_open];
            x->c = xrealloc(x->c, (size_t)(x->n + 1) * sizeof *x->c);
            x->c[x->n++] = g[v].c[i];
        }
    think = sums_of(&side[1], nc, reasons), no_think = sums_of(&side[0], nc, reasons);
    int reasoning[2] = {0, 0};
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < side[k].n; i++) reasoning[k] += reasons(&side[k].c[i]);
    SumsCtx h2 = {.a = &think, .b = &no_think, .n_clusters = nc}, rate_think = {.a = &think, .n_clusters = nc};
    SumsCtx rate_no_think = {.a = &no_think, .n_clusters = nc};
    double p_at_least = NAN;
    Interval ratio = cluster_bootstrap95(stat_opportunity_rate, &h2, nc, STAT_RESAMPLES, seed_mix(seed, 300),
                                         c.h2_min_rate_ratio, &p_at_least);
    double h2_p = h2_permutation_p(g, used, nc, STAT_RESAMPLES, seed_mix(seed, 301));
    double rate_think_est = stat_estimate(stat_opportunity_rate, &rate_think, nc);
    double rate_no_think_est = stat_estimate(stat_opportunity_rate, &rate_no_think, nc);
    ChiSquare chi = chi2_homogeneity(bt_k, nn, used);
    double max_rate = -1, min_rate = 2;
    for (int v = 0; v < used; v++) {
        double r = (double)bt_k[v] / nn[v];
        if (r > max_rate) max_rate = r;
        if (r < min_rate) min_rate = r;
    }
    double max_min = min_rate > 0 ? max_rate / min_rate : max_rate > 0 ? INFINITY : NAN;
    buf_puts(&csv, FORMATTING_HEADER);
    for (int v = 0; v < used; v++) {
        long long n_reason = 0, opps = 0, r_events = 0, r_bt = 0;
        for (int i = 0; i < g[v].n; i++)
            if (reasons(&g[v].c[i])) {
                n_reason++, opps += g[v].c[i].sentence_ends, r_events += g[v].c[i].events;
                r_bt += g[v].c[i].events > 0;
            }
        buf_printf(&csv, "%s,", run.id);
        buf_csv_field(&csv, g[v].name, strlen(g[v].name));
        buf_printf(&csv, ",%d", g[v].n ? g[v].c[0].thinking_open : 0);
        group_stats_csv(&csv, &g[v], &sums[v], nc, seed_mix(seed, (uint64_t)v));
        buf_printf(&csv, ",%lld", n_reason);
        put_interval(&csv, wilson95(n_reason, g[v].n));
        buf_printf(&csv, ",%lld,%lld", opps, r_events);
        SumsCtx x = {.a = &sums[v], .n_clusters = nc};
        put_interval(&csv, cluster_bootstrap95(stat_opportunity_rate, &x, nc, STAT_RESAMPLES,
                                               seed_mix(seed, 400 + (uint64_t)v), 0, NULL));
        buf_printf(&csv, ",%lld", r_bt);
        put_interval(&csv, wilson95(r_bt, n_reason));
        put_num(&csv, chi.stat);
        buf_printf(&csv, ",%d", chi.df);
        put_num(&csv, chi.p);
        put_num(&csv, max_min);
        buf_printf(&csv, ",%d,%d", reasoning[1], reasoning[0]);
        put_num(&csv, rate_think_est);
        put_num(&csv, rate_no_think_est);
        put_interval(&csv, ratio);
        put_num(&csv, h2_p);
        put_num(&csv, p_at_least);
        buf_putc(&csv, '\n');
    }
    char path[1200];
    run_path(&run, path, sizeof path, ART_FORMATTING);
    if (write_file_atomic(path, csv.data, csv.len, &err)) goto out;
    printf("formatting-sweep: %d variants; events per opportunity among reasoning completions, <think> open vs not: "
           "ratio %.3g [%.3g, %.3g], one-sided permutation p = %.3g\n", used, ratio.est, ratio.lo, ratio.hi, h2_p);
    if (used < c.n_variants)
        progress("formatting-sweep: %d of %d variants have no baseline generations and are left out\n",
                 c.n_variants - used, c.n_variants);
    free(side[0].c);
    free(side[1].c);
out:
    for (int v = 0; v < used; v++) sums_free(&sums[v]);
    sums_free(&think);
    sums_free(&no_think);
    free(sums);
    groups_free(all, n_all);
    free(g);
    free(bt_k);
    free(nn);
    clusters_free(&cl);
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
static int items_load(const Config *c, const Run *run, const Tokenizer *tok, const char *variant, int max_events,
                      Items *it, Err *err) {
    memset(it, 0, sizeof *it);
    char path[1200];
    run_path(run, path, sizeof path, ART_EVENTS);
    if (!path_exists(path)) return err_input(err, "no events in run %s: run detect-events first", run->id);
    Csv csv;
    if (csv_read(path, &csv, err)) return -1;
    static const char *const cols[] = {"kind",   "event_id", "variant",        "condition",    "problem_id",
                                       "sample", "pred_pos", "onset_token_id", "prompt_tokens"};
    int col[9];
    for (int i = 0; i < 9; i++)
        if ((col[i] = csv_col(&csv, cols[i])) < 0) {
            csv_free(&csv);
            return err_input(err, "%s: no column '%s' (written by another version? run detect-events again)", path,
                             cols[i]);
        }
    run_generation_path(run, path, sizeof path, variant, "baseline");
    if (!exists_or_sharded(path)) {
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
    int n_chosen = n_rows, rc = 0;
    long long *chosen_ids = xmalloc((size_t)(n_chosen + 1) * sizeof *chosen_ids);
    for (int i = 0; i < n_chosen && rc == 0; i++) rc = csv_int(&csv, rows[i], col[1], 0, INT_MAX, &chosen_ids[i], err);
    // Controls of the chosen events follow the events.
    for (int r = 0; r < csv.n_rows && rc == 0; r++) {
        if (strcmp(csv_cell(&csv, r, col[0]), "control") != 0 || strcmp(csv_cell(&csv, r, col[2]), variant) != 0 ||
            strcmp(csv_cell(&csv, r, col[3]), "baseline") != 0)
            continue;
        long long id;
        int keep = 0;
        if ((rc = csv_int(&csv, r, col[1], 0, INT_MAX, &id, err))) break;
        for (int i = 0; i < n_chosen && !keep; i++) keep = chosen_ids[i] == id;
        if (keep) {
            rows = xrealloc(rows, (size_t)(n_rows + 1) * sizeof *rows);
            rows[n_rows++] = r;
        }
    }
    free(chosen_ids);
    it->items = xcalloc((size_t)(n_rows + 1), sizeof *it->items);
    for (int i = 0; i < n_rows && rc == 0; i++) {
        int r = rows[i];
        Item *x = &it->items[it->n_items];
        long long event_id, pred_pos, onset, sample, prompt_tokens;
        if (csv_int(&csv, r, col[1], 0, INT_MAX, &event_id, err) ||
            csv_int(&csv, r, col[6], 0, INT_MAX - 1, &pred_pos, err) ||
            csv_int(&csv, r, col[7], 0, tokenizer_vocab_size(tok) - 1, &onset, err) ||
            csv_int(&csv, r, col[5], 0, INT_MAX, &sample, err) ||
            csv_int(&csv, r, col[8], 1, INT_MAX, &prompt_tokens, err)) {
            rc = -1;
            break;
        }
        x->is_control = strcmp(csv_cell(&csv, r, col[0]), "control") == 0;
        x->event_id = (int)event_id;
        x->pred_pos = (int)pred_pos;
        x->onset_token_id = (int)onset;
        x->record = find_record(it, csv_cell(&csv, r, col[4]), (int)sample);
        if (x->record < 0) {
            rc =
                err_input(err, "%s:%d: problem %s sample %s of the events is not among the generations of %s", csv.path,
                          csv.row_line[r + 1], csv_cell(&csv, r, col[4]), csv_cell(&csv, r, col[5]), variant);
            break;
        }
        const GenRecord *rec = &it->records[x->record];
        int k = x->pred_pos - rec->prompt_tokens + 1;
        if (prompt_tokens != rec->prompt_tokens || k < 0 || k > rec->n_completion) {
            rc = err_input(err, "%s:%d: event %d does not fit its completion (run detect-events again)", csv.path,
                           csv.row_line[r + 1], x->event_id);
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
                rc = err_input(
                    err, "problem %s: the prompt now encodes to %d tokens, the record says %d (tokenizer changed?)",
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
    for (int s = 0; s < it->n_seqs; s++)
        qsort(it->seqs[s].read_pos, (size_t)it->seqs[s].n_read, sizeof(int), cmp_int_asc);
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

// ANALYSIS_MAX_ROWS and ANALYSIS_CAPTURE_BYTES (bt.h): the passes' shape, which bt plan sizes too.

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
    for (int i = 0; i < a->it.n_items; i++) // the analyses read logits at the onset id
        if (a->it.items[i].onset_token_id >= a->m.cfg.vocab_size)
            return err_input(err, "%s: onset token id %d is outside the model's vocabulary of %d", ART_EVENTS,
                             a->it.items[i].onset_token_id, a->m.cfg.vocab_size);
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
// Sharded analyses: shard K keeps a contiguous K-th of the completions (the items' sequences,
// in their order) and the items read from them, and writes raw per-item results keyed by each
// item's index among all items. The merge puts the items back in that order and runs the same
// summarizing code as an unsharded run, so any N gives the same bytes.

// What a stage costs per sequence, so that shards take equal costs rather than equal counts
// (events cluster in some completions): its positions, once (passes shared by its items) or
// once per item (attribution: a forward and a backward pass each). Freed by the caller.
static double *items_seq_costs(const Items *it, int per_item) {
    double *cost = xcalloc((size_t)it->n_seqs + 1, sizeof *cost);
    if (per_item)
        for (int i = 0; i < it->n_items; i++) cost[it->items[i].seq] += it->seqs[it->items[i].seq].n_tokens;
    else
        for (int q = 0; q < it->n_seqs; q++) cost[q] = it->seqs[q].n_tokens;
    return cost;
}

// Keeps the sequences of shard s (its share of costs, see items_seq_costs) and the items read
// from them; global[i] (n_items entries before) receives kept item i's index among all items.
static void items_keep_shard(Items *it, const Shard *s, const double *costs, int *global) {
    int first, end, n_items = 0;
    shard_range(s, it->n_seqs, costs, &first, &end);
    for (int q = 0; q < it->n_seqs; q++)
        if (q < first || q >= end) {
            free(it->seqs[q].tokens);
            free(it->seqs[q].read_pos);
        }
    memmove(it->seqs, it->seqs + first, (size_t)(end - first) * sizeof *it->seqs);
    memmove(it->seq_record, it->seq_record + first, (size_t)(end - first) * sizeof *it->seq_record);
    it->n_seqs = end - first;
    it->n_events = 0;
    for (int i = 0; i < it->n_items; i++) {
        Item x = it->items[i];
        if (x.seq < first || x.seq >= end) continue;
        x.seq -= first;
        global[n_items] = i;
        it->items[n_items++] = x;
        it->n_events += !x.is_control;
    }
    it->n_items = n_items;
}

// A stage's shard of an open Analysis: its items, and a Forcer sized for them.
static int analysis_keep_shard(Analysis *a, const Config *c, const Shard *s, const double *costs, int **global,
                               Err *err) {
    *global = xmalloc((size_t)(a->it.n_items + 1) * sizeof **global);
    items_keep_shard(&a->it, s, costs, *global);
    forcer_free(&a->f);
    int n_slots = a->it.n_seqs < c->batch_size ? a->it.n_seqs : c->batch_size;
    return forcer_init(&a->f, &a->m, n_slots < 1 ? 1 : n_slots, items_max_tokens(&a->it), ANALYSIS_MAX_ROWS, err);
}

// The baseline rows of variant in the events file (what the analyses read). detect-events run
// again after the ablated and steered generations adds rows of those conditions and renumbers
// the events after them: with_ids 0 leaves the event ids out, for stages whose outputs do not
// carry them.
static uint64_t baseline_events_digest(const Run *run, const char *variant, int with_ids) {
    char path[1200];
    run_path(run, path, sizeof path, ART_EVENTS);
    Csv csv;
    Err ignored;
    if (csv_read(path, &csv, &ignored)) return 0;
    int cond = csv_col(&csv, "condition"), var = csv_col(&csv, "variant"), id = csv_col(&csv, "event_id");
    uint64_t d = fnv1a64("events", 6);
    for (int r = -1; r < csv.n_rows; r++) { // the header, then each baseline row of variant
        if (r >= 0 && (cond < 0 || var < 0 || strcmp(csv_cell(&csv, r, cond), "baseline") != 0 ||
                       strcmp(csv_cell(&csv, r, var), variant) != 0))
            continue;
        for (int k = 0; k < csv.n_cols; k++) {
            if (k == id && !with_ids) continue;
            const char *cell = csv.cells[(size_t)(r + 1) * csv.n_cols + k];
            d = seed_mix(d, fnv1a64(cell, strlen(cell) + 1)); // with its NUL: cells stay apart
        }
    }
    csv_free(&csv);
    return d;
}

// The inputs of a teacher-forced analysis of variant: the config, the events, and each extra run
// file (NULL-ended).
static uint64_t analysis_digest(const Config *c, const Run *run, const char *variant, int with_ids,
                                const char *const *extra) {
    char path[1200];
    uint64_t d = seed_mix(config_digest(c), baseline_events_digest(run, variant, with_ids));
    for (int i = 0; extra && extra[i]; i++) {
        run_path(run, path, sizeof path, extra[i]);
        d = seed_mix(d, file_digest(path));
    }
    return d;
}

// One raw row of a shard file: "item,<row>" lines, kept as bytes.
typedef struct {
    int item, file;
    size_t at, len; // the row's bytes (after "item,", with its newline) in that file's text
} ItemRow;

static int cmp_item_row(const void *a, const void *b) {
    const ItemRow *x = a, *y = b;
    if (x->item != y->item) return x->item < y->item ? -1 : 1;
    if (x->file != y->file) return x->file - y->file;
    return x->at < y->at ? -1 : x->at > y->at;
}

// Shard files whose lines are "item,<a row of an unsharded CSV>" under the header "item,<header>":
// header, then every row in item order (a shard's rows of one item in their order). Every item
// 0..n_items-1 must be in exactly one shard.
static int merge_item_rows(char **files, int n_files, int n_items, const char *header, Buf *out, Err *err) {
    Buf *text = xcalloc((size_t)n_files, sizeof *text);
    ItemRow *rows = NULL;
    int n_rows = 0, rc = 0;
    int *owner = xmalloc((size_t)(n_items + 1) * sizeof *owner); // the shard holding each item, -1 none
    for (int i = 0; i < n_items; i++) owner[i] = -1;
    size_t header_len = strlen(header);
    for (int f = 0; f < n_files && rc == 0; f++) {
        if ((rc = read_file(files[f], &text[f], err))) break;
        const char *t = text[f].data;
        if (text[f].len < 5 + header_len || memcmp(t, "item,", 5) != 0 || memcmp(t + 5, header, header_len) != 0) {
            rc = err_input(err, "%s:1: not the header 'item,%.*s' of this stage's shards", files[f],
                           (int)header_len - 1, header);
            break;
        }
        int line_no = 1;
        for (size_t at = 5 + header_len; at < text[f].len && rc == 0;) {
            const char *nl = memchr(t + at, '\n', text[f].len - at);
            size_t end = nl ? (size_t)(nl - t) + 1 : text[f].len;
            line_no++;
            size_t digits = 0;
            while (at + digits < end && t[at + digits] >= '0' && t[at + digits] <= '9') digits++;
            long item = digits && at + digits < end && t[at + digits] == ',' ? strtol(t + at, NULL, 10) : -1;
            if (!nl || item < 0 || item >= n_items || (owner[item] >= 0 && owner[item] != f)) {
                rc = err_input(err, "%s:%d: %s", files[f], line_no,
                               !nl                           ? "torn last line"
                               : item < 0 || item >= n_items ? "not a row of an item of this stage"
                                                             : "an item another shard holds too");
                break;
            }
            owner[item] = f;
            rows = xrealloc(rows, (size_t)(n_rows + 1) * sizeof *rows);
            rows[n_rows++] = (ItemRow){(int)item, f, at + digits + 1, end - (at + digits + 1)};
            at = end;
        }
    }
    for (int i = 0; i < n_items && rc == 0; i++)
        if (owner[i] < 0)
            rc = err_input(err, "%s: item %d of %d is in no shard (a shard is stale: rerun them all)", files[0], i,
                           n_items);
    if (rc == 0) {
        qsort(rows, (size_t)n_rows, sizeof *rows, cmp_item_row);
        buf_puts(out, header);
        for (int r = 0; r < n_rows; r++) buf_append(out, text[rows[r].file].data + rows[r].at, rows[r].len);
    }
    for (int f = 0; f < n_files; f++) buf_free(&text[f]);
    free(text);
    free(rows);
    free(owner);
    return rc;
}

// Raw shard files read with the CSV reader, in long form: a row per (item, slot), the item in the
// leading "item" column and the slot named in column slot_col (one of slot_names); each of the
// n_items x n_slots keys exactly once; row_of[key] = (file, row), key = item n_slots + slot.
typedef struct {
    Csv *csv; // (n_files)
    int n_files;
    int *file_of; // (n_items, n_slots)
    int *row_of;  // (n_items, n_slots)
} ItemTable;

static void item_table_free(ItemTable *t) {
    for (int f = 0; f < t->n_files; f++) csv_free(&t->csv[f]);
    free(t->csv);
    free(t->file_of);
    free(t->row_of);
    memset(t, 0, sizeof *t);
}

// Reads files whose header is exactly header (comma-separated, first column "item").
static int item_table_read(char **files, int n_files, int n_items, const char *header, int slot_col,
                           const char *const *slot_names, int n_slots, ItemTable *t, Err *err) {
    memset(t, 0, sizeof *t);
    size_t n_keys = (size_t)n_items * n_slots;
    t->csv = xcalloc((size_t)n_files, sizeof *t->csv);
    t->n_files = n_files;
    t->file_of = xmalloc((n_keys + 1) * sizeof *t->file_of);
    t->row_of = xmalloc((n_keys + 1) * sizeof *t->row_of);
    for (size_t i = 0; i < n_keys; i++) t->file_of[i] = -1;
    int rc = 0;
    for (int f = 0; f < n_files && rc == 0; f++) {
        if ((rc = csv_read(files[f], &t->csv[f], err))) break;
        Buf got = {0};
        for (int k = 0; k < t->csv[f].n_cols; k++) buf_printf(&got, "%s%s", k ? "," : "", t->csv[f].cells[k]);
        if (!got.data || strcmp(got.data, header) != 0)
            rc = err_input(err, "%s:1: not the header of this stage's shards ('%.60s...')", files[f], header);
        buf_free(&got);
        for (int r = 0; r < t->csv[f].n_rows && rc == 0; r++) {
            long long item;
            int slot = 0;
            if (csv_int(&t->csv[f], r, 0, 0, n_items - 1, &item, err)) {
                rc = -1;
                break;
            }
            if (slot_col >= 0)
                for (slot = 0; slot < n_slots && strcmp(csv_cell(&t->csv[f], r, slot_col), slot_names[slot]); slot++) {}
            size_t key = (size_t)item * n_slots + slot;
            if (slot == n_slots)
                rc = err_input(err, "%s:%d: '%s' is not one of this stage's (%s ...)", files[f], r + 2,
                               csv_cell(&t->csv[f], r, slot_col), slot_names[0]);
            else if (t->file_of[key] >= 0)
                rc = err_input(err, "%s:%d: item %lld%s%s is in another row or shard too", files[f], r + 2, item,
                               slot_col >= 0 ? " " : "", slot_col >= 0 ? slot_names[slot] : "");
            else
                t->file_of[key] = f, t->row_of[key] = r;
        }
    }
    for (size_t i = 0; i < n_keys && rc == 0; i++)
        if (t->file_of[i] < 0)
            rc = err_input(err, "%s: item %d%s%s of %d is in no shard (a shard is stale: rerun them all)", files[0],
                           (int)(i / n_slots), slot_col >= 0 ? " " : "", slot_col >= 0 ? slot_names[i % n_slots] : "",
                           n_items);
    if (rc) item_table_free(t);
    return rc;
}

static const char *item_cell(const ItemTable *t, int item, int col) {
    return csv_cell(&t->csv[t->file_of[item]], t->row_of[item], col);
}

// A raw double as written by put_raw ("%.17g": the same double back), -1 if not a number.
static int item_double(const ItemTable *t, int item, int col, double *out) {
    const char *s = item_cell(t, item, col);
    char *end;
    *out = strtod(s, &end);
    return *s && !*end ? 0 : -1;
}

static void put_raw(Buf *b, double x) { buf_printf(b, ",%.17g", x); }

// The shard set of a stage's output, checked against the run's current inputs; none is an error.
static int analysis_shards(const Config *c, const Run *run, const char *rel, const char *stage, int with_ids,
                           const char *const *extra, char ***files, int *n, ShardInfo *info, Err *err) {
    char path[1200];
    run_path(run, path, sizeof path, rel);
    int rc = shard_set(run->id, path, 0, files, n, info, err);
    if (rc == 0)
        return err_input(err, "no shards of %s in run %s (%.*s.shard-*): run it with --shard K/N first", stage, run->id,
                         (int)(strrchr(path, '.') - path), path);
    if (rc < 0) return -1;
    if (strcmp(info->stage, stage) != 0) {
        err_input(err, "%s: its shards were written by %s, not %s", path, info->stage, stage);
    } else if (info->digest != analysis_digest(c, run, info->what, with_ids, extra)) {
        const char *dot = strrchr((*files)[0], '.');
        err_input(err, "%.*s.manifest.json: computed from other inputs than the run's current ones (config or input "
                       "files changed): rerun its shards", (int)(dot - (*files)[0]), (*files)[0]);
    } else {
        return 0;
    }
    shard_set_free(*files, *n);
    shard_info_free(info);
    *files = NULL, *n = 0;
    return -1;
}
// ----------------------------------------------------------------------------
// Logit lens window: the onset token's log-prob by layer at the LENS_WINDOW positions up to
// each item's pred_pos (analysis/logit_lens_window.csv, the event browser's heatmaps), read in
// the logit lens's own pass.

#define LENS_WINDOW 4 // positions pred_pos - 3 .. pred_pos

// Adds the window's positions to every sequence's reads (kept increasing) and renumbers the items' reads.
static void lens_window_reads(Items *it) {
    for (int i = 0; i < it->n_items; i++) {
        ForcedSeq *q = &it->seqs[it->items[i].seq];
        for (int w = 1; w < LENS_WINDOW; w++) {
            int p = it->items[i].pred_pos - w, r = 0;
            while (r < q->n_read && q->read_pos[r] != p) r++;
            if (p < 0 || r < q->n_read) continue;
            q->read_pos = xrealloc(q->read_pos, (size_t)(q->n_read + 1) * sizeof *q->read_pos);
            q->read_pos[q->n_read++] = p;
        }
    }
    for (int s = 0; s < it->n_seqs; s++)
        qsort(it->seqs[s].read_pos, (size_t)it->seqs[s].n_read, sizeof(int), cmp_int_asc);
    for (int i = 0; i < it->n_items; i++) {
        const ForcedSeq *q = &it->seqs[it->items[i].seq];
        int r = 0;
        while (q->read_pos[r] != it->items[i].pred_pos) r++;
        it->items[i].read = r;
    }
}

#define LENS_HEADER "run_id,kind,event_id,variant,problem_id,sample,pred_pos,onset_token_id,layer,logit,logprob,rank\n"
#define LENS_WINDOW_HEADER                                                                                             \
    "run_id,kind,event_id,variant,problem_id,sample,pred_pos,offset,pos,onset_token_id,layer,logit,logprob,rank\n"

// Rows of logit_lens_window.csv from resid (n_reads, n_layers + 1, hidden) of the lens pass; a
// shard's (global: each item's index among all, or NULL) start with the item.
static void lens_window_csv(const Analysis *a, const Run *run, const char *variant, const float *resid,
                            const int *global, Buf *csv) {
    int L = a->m.cfg.n_layers, D = a->m.cfg.hidden_size, V = a->m.cfg.vocab_size;
    float *logits = xmalloc((size_t)(L + 1) * V * sizeof *logits); // (n_layers + 1, vocab)
    buf_puts(csv, global ? "item," LENS_WINDOW_HEADER : LENS_WINDOW_HEADER);
    for (int i = 0; i < a->it.n_items; i++) {
        const Item *x = &a->it.items[i];
        const GenRecord *rec = &a->it.records[x->record];
        const ForcedSeq *q = &a->it.seqs[x->seq];
        int base = item_read_index(&a->it, i) - x->read;
        for (int w = LENS_WINDOW - 1; w >= 0; w--) {
            int p = x->pred_pos - w, r = 0;
            if (p < 0) continue;
            while (q->read_pos[r] != p) r++;
            model_final_logits_rows(&a->m, resid + (size_t)(base + r) * (L + 1) * D, L + 1, (size_t)D, logits);
            for (int l = 0; l <= L; l++) {
                int rank;
                const float *lg = logits + (size_t)l * V;
                double lp = log_prob(lg, V, x->onset_token_id, &rank);
                if (global) buf_printf(csv, "%d,", global[i]);
                buf_printf(csv, "%s,%s,%d,", run->id, x->is_control ? "control" : "event", x->event_id);
                buf_csv_field(csv, variant, strlen(variant));
                buf_putc(csv, ',');
                buf_csv_field(csv, rec->problem_id, strlen(rec->problem_id));
                buf_printf(csv, ",%d,%d,%d,%d,%d,%d,%.6f,%.6f,%d\n", rec->sample, x->pred_pos, -w, p, x->onset_token_id,
                           l, lg[x->onset_token_id], lp, rank);
            }
        }
    }
    free(logits);
}

// ----------------------------------------------------------------------------
// Logit lens: at each item's pred_pos, every layer's residual through the
// final norm and the unembedding: the onset token's logit, log-prob and rank.

int cmd_logit_lens(int argc, char **argv) {
    Opt opts[] = {OPT_CONFIG,
                  OPT("--variant", 1, "variant whose baseline events to read (default [logit_lens] variant)"),
                  OPT_SHARD, OPT_END};
    Err err = {0};
    Config c;
    Run run;
    int exit_code;
    if (stage_open(argc, argv, opts, &c, &run, &exit_code)) return exit_code;
    const char *variant = opt_str(opts, "--variant", c.lens_variant);
    Analysis a = {0};
    float *resid = NULL, *logits = NULL;
    Buf csv = {0};
    Shard shard;
    int *global = NULL;   // a shard's items: each one's index among all
    double *costs = NULL; // a shard's: each completion's positions
    ShardInfo info;
    char path[1200], shard_path[1300];
    run_path(&run, path, sizeof path, ART_LOGIT_LENS);
    if (shard_parse(opt_str(opts, "--shard", NULL), &shard, &err)) goto out;
    if (analysis_open(&c, &run, variant, c.lens_max_events, &a, &err)) goto out;
    if (shard.n) {
        // its rows carry the event ids, which the digest then covers
        costs = items_seq_costs(&a.it, 0);
        info = (ShardInfo){
            "logit-lens", variant, a.it.n_seqs, a.it.n_items, analysis_digest(&c, &run, variant, 1, NULL), 0, costs};
        if (shard_done(&run, path, &shard, &info)) {
            printf("logit-lens: shard %d/%d is already there\n", shard.k, shard.n);
            goto out;
        }
        if (shard_begin(&run, path, &shard, &info, &err) || analysis_keep_shard(&a, &c, &shard, costs, &global, &err))
            goto out;
    }
    int n_layers = a.m.cfg.n_layers, hidden = a.m.cfg.hidden_size, vocab = a.m.cfg.vocab_size, n_slots = a.f.n_slots;
    lens_window_reads(&a.it);
    int n_reads = items_total_reads(&a.it);
    resid = xmalloc((size_t)(n_reads + 1) * (n_layers + 1) * hidden * sizeof *resid);
    ProgressClock pc;
    progress_start(&pc);
    double forced = 0, to_force = 0;
    for (int s = 0; s < a.it.n_seqs; s++) to_force += a.it.seqs[s].n_tokens;
    for (int s0 = 0, base = 0; s0 < a.it.n_seqs; s0 += n_slots) {
        int n = a.it.n_seqs - s0 < n_slots ? a.it.n_seqs - s0 : n_slots;
        PassOut out = {.resid = resid + (size_t)base * (n_layers + 1) * hidden};
        if (force_group(&a.f, a.it.seqs + s0, n, &out, &err)) goto out;
        for (int i = 0; i < n; i++) base += a.it.seqs[s0 + i].n_read, forced += a.it.seqs[s0 + i].n_tokens;
        progress_eta(&pc, "logit-lens", s0 + n, a.it.n_seqs, "completions", forced, forced, to_force);
    }
    buf_puts(&csv, global ? "item," LENS_HEADER : LENS_HEADER);
    logits = xmalloc((size_t)vocab * sizeof *logits);
    for (int i = 0; i < a.it.n_items; i++) {
        const Item *x = &a.it.items[i];
        const GenRecord *rec = &a.it.records[x->record];
        const float *rv = resid + (size_t)item_read_index(&a.it, i) * (n_layers + 1) * hidden;
        for (int l = 0; l <= n_layers; l++) {
            model_final_logits(&a.m, rv + (size_t)l * hidden, logits);
            int rank;
            double lp = log_prob(logits, vocab, x->onset_token_id, &rank);
            if (global) buf_printf(&csv, "%d,", global[i]);
            buf_printf(&csv, "%s,%s,%d,", run.id, x->is_control ? "control" : "event", x->event_id);
            buf_csv_field(&csv, variant, strlen(variant));
            buf_putc(&csv, ',');
            buf_csv_field(&csv, rec->problem_id, strlen(rec->problem_id));
            buf_printf(&csv, ",%d,%d,%d,%d,%.6f,%.6f,%d\n", rec->sample, x->pred_pos, x->onset_token_id, l,
                       logits[x->onset_token_id], lp, rank);
        }
    }
    if (shard.n) shard_file(path, &shard, shard_path, sizeof shard_path);
    if (write_file_atomic(shard.n ? shard_path : path, csv.data, csv.len, &err)) goto out;
    csv.len = 0;
    lens_window_csv(&a, &run, variant, resid, global, &csv);
    run_path(&run, path, sizeof path, ART_LOGIT_LENS_WINDOW);
    if (shard.n) shard_file(path, &shard, shard_path, sizeof shard_path);
    if (write_file_atomic(shard.n ? shard_path : path, csv.data, csv.len, &err)) goto out;
    run_path(&run, path, sizeof path, ART_LOGIT_LENS);
    if (shard.n && shard_finish(&run, path, &shard, &info, &err)) goto out;
    printf("logit-lens: %d events, %d controls, %d layers", a.it.n_events, a.it.n_items - a.it.n_events, n_layers + 1);
    if (shard.n) printf(" (shard %d/%d: %d of %d completions)", shard.k, shard.n, a.it.n_seqs, info.units);
    printf("\n");
out:
    free(global);
    free(costs);
    buf_free(&csv);
    free(resid);
    free(logits);
    analysis_close(&a);
    config_free(&c);
    return err.msg[0] ? fail(&err) : 0;
}

// bt merge --stage logit-lens: the shards' rows in item order, under the unsharded headers.
int merge_logit_lens(const Config *c, const Run *run, Err *err) {
    char **files = NULL, path[1200];
    const char *rels[2] = {ART_LOGIT_LENS, ART_LOGIT_LENS_WINDOW}, *headers[2] = {LENS_HEADER, LENS_WINDOW_HEADER};
    ShardInfo info;
    int n = 0,
        rc = analysis_shards(c, run, ART_LOGIT_LENS, "logit-lens", 1, NULL, &files, &n, &info, err);
    if (rc) return -1;
    Buf out[2] = {{0}, {0}};
    for (int part = 0; part < 2 && rc == 0; part++) {
        if (part == 1) // the window's shards sit beside the lens's, one per shard
            for (int k = 0; k < n; k++) {
                Shard s = {k + 1, n};
                run_path(run, path, sizeof path, ART_LOGIT_LENS_WINDOW);
                free(files[k]);
                files[k] = xmalloc(1300);
                shard_file(path, &s, files[k], 1300);
            }
        rc = merge_item_rows(files, n, info.items, headers[part], &out[part], err);
    }
    for (int part = 0; part < 2 && rc == 0; part++) {
        run_path(run, path, sizeof path, rels[part]);
        rc = write_file_atomic(path, out[part].data, out[part].len, err);
    }
    if (rc == 0) printf("merge: logit-lens of %s: %d shards, %d items\n", info.what, n, info.items);
    buf_free(&out[0]);
    buf_free(&out[1]);
    shard_set_free(files, n);
    shard_info_free(&info);
    return rc;
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

// Mean output of every attention block, MLP and head over all positions of the
// completions (the run's own text), for mean ablation; written to the run.
static int estimate_means(Forcer *f, const Items *it, const Run *run, float **attn_mean, float **mlp_mean,
                          float **head_mean, Err *err) {
    const ModelConfig *mc = &f->m->cfg;
    size_t count = (size_t)mc->n_layers * mc->hidden_size,
           head_count = (size_t)mc->n_layers * mc->n_heads * mc->head_dim;
    double *attn_sum = xcalloc(count, sizeof *attn_sum), *mlp_sum = xcalloc(count, sizeof *mlp_sum);
    double *head_sum = xcalloc(head_count, sizeof *head_sum); // (n_layers, n_heads * head_dim)
    long long n_summed = 0;
    int rc = 0;
    for (int s0 = 0; s0 < it->n_seqs && rc == 0; s0 += f->n_slots) {
        int n = it->n_seqs - s0 < f->n_slots ? it->n_seqs - s0 : f->n_slots;
        PassOut out = {.attn_sum = attn_sum, .mlp_sum = mlp_sum, .head_sum = head_sum, .n_summed = &n_summed};
        rc = force_group(f, it->seqs + s0, n, &out, err);
    }
    if (rc == 0) {
        Buf b = {0};
        buf_printf(&b, "{\"n_layers\": %d, \"hidden\": %d, \"n_heads\": %d, \"head_dim\": %d, \"positions\": %lld,\n"
                       "\"attn\": ", mc->n_layers, mc->hidden_size, mc->n_heads, mc->head_dim, n_summed);
        means_json(&b, attn_sum, n_summed, count);
        buf_puts(&b, ",\n\"mlp\": ");
        means_json(&b, mlp_sum, n_summed, count);
        buf_puts(&b, ",\n\"head\": ");
        means_json(&b, head_sum, n_summed, head_count);
        buf_puts(&b, "}\n");
        char path[1200];
        run_path(run, path, sizeof path, ART_MEANS);
        rc = write_file_atomic(path, b.data, b.len, err);
        buf_free(&b);
    }
    free(attn_sum);
    free(mlp_sum);
    free(head_sum);
    // Read back what was written, so generation and the scan use the same floats.
    if (rc || component_means_read(run, mc, attn_mean, mlp_mean, err)) return -1;
    return head_means_read(run, mc, head_mean, err);
}

// The components a scan measures, in one index k: 2l is attention l, 2l + 1 MLP l, and, when
// heads are scanned, 2L + l n_heads + h is head h of layer l.
enum { COMP_ATTN, COMP_MLP, COMP_HEAD };

static int comp_kind(int k, int n_layers) { return k < 2 * n_layers ? k % 2 : COMP_HEAD; }
static int comp_layer(int k, int n_layers, int n_heads) {
    return k < 2 * n_layers ? k / 2 : (k - 2 * n_layers) / n_heads;
}

typedef struct {
    int layer, component; // COMP_*
    int head;             // COMP_HEAD: the head in its layer
    int exact;            // ablated exactly: events, controls and specificity are exact drops, else estimates
    int estimated;        // attribution scored it: the est_ intervals hold its first-order estimate
    Interval events, controls;
    Interval specificity; // drop on events minus drop on controls: what the ranking uses
    Interval est_events, est_controls, est_specificity;
} ScanResult;

// Ranked by specificity, so a component whose ablation breaks everything (events and
// controls alike) does not rank first; by the event drop alone when there are no controls.
// Components ablated exactly rank before those only estimated (attribution+verify selects
// from what it verified).
static int cmp_effect(const void *a, const void *b) {
    const ScanResult *x = *(const ScanResult *const *)a, *y = *(const ScanResult *const *)b;
    if (x->exact != y->exact) return x->exact ? -1 : 1;
    double ex = !isnan(x->specificity.est) ? x->specificity.est : !isnan(x->events.est) ? x->events.est : -INFINITY;
    double ey = !isnan(y->specificity.est) ? y->specificity.est : !isnan(y->events.est) ? y->events.est : -INFINITY;
    if (ex != ey) return ex < ey ? 1 : -1;
    if (x->layer != y->layer) return x->layer - y->layer;
    return x->head - y->head;
}

// Item-level drops grouped by problem, for bootstrap intervals that resample problems.
typedef struct {
    const double *drop;     // (n_items) of one component
    const int *cluster;     // (n_items)
    const Item *items;      // (n_items)
    int n_items, want;      // want: 0 events, 1 controls, 2 events minus controls
} DropCtx;

static double stat_drop(const void *ctx, const int *w) {
    const DropCtx *x = ctx;
    double sum[2] = {0, 0}, n[2] = {0, 0};
    for (int i = 0; i < x->n_items; i++) {
        int k = x->items[i].is_control;
        sum[k] += w[x->cluster[i]] * x->drop[i], n[k] += w[x->cluster[i]];
    }
    double mean_e = n[0] > 0 ? sum[0] / n[0] : NAN, mean_c = n[1] > 0 ? sum[1] / n[1] : NAN;
    return x->want == 0 ? mean_e : x->want == 1 ? mean_c : mean_e - mean_c;
}

// Events, controls and specificity of component k of drop (n_items, n_comp), bootstrapped over problems.
static void drop_intervals(const double *drop, int n_comp, int k, const Item *items, int n_items, const int *cluster,
                           int n_clusters, uint64_t seed, Interval *out[3]) {
    double *vals = xmalloc((size_t)(n_items + 1) * sizeof *vals); // (n_items)
    for (int i = 0; i < n_items; i++) vals[i] = drop[(size_t)i * n_comp + k];
    for (int want = 0; want < 3; want++) {
        DropCtx x = {vals, cluster, items, n_items, want};
        *out[want] = cluster_bootstrap95(stat_drop, &x, n_clusters, STAT_RESAMPLES,
                                         seed_mix(seed, (uint64_t)(3 * k + want)), 0, NULL);
    }
    free(vals);
}

// One row's cells from n_events on, shared by ablation_importance.csv and head_importance.csv.
static void scan_row(Buf *csv, const ScanResult *x, int n_events, int n_controls, int rank, int selected) {
    buf_printf(csv, ",%d", n_events);
    put_interval(csv, x->events);
    buf_printf(csv, ",%d", n_controls);
    put_interval(csv, x->controls);
    put_interval(csv, x->specificity);
    buf_printf(csv, ",%s", x->exact ? "exact" : "attribution");
    put_interval(csv, x->est_events);
    put_interval(csv, x->est_controls);
    put_interval(csv, x->est_specificity);
    put_num(csv, x->exact && x->estimated ? x->est_events.est - x->events.est : NAN); // the estimate's error on events
    buf_printf(csv, ",%d,%d\n", rank, selected);
}

#define SCAN_COLUMNS \
    "n_events,mean_drop_events,ci_lo_events,ci_hi_events,n_controls,mean_drop_controls,ci_lo_controls," \
    "ci_hi_controls,specificity,specificity_ci_lo,specificity_ci_hi,method,est_drop_events,est_ci_lo_events," \
    "est_ci_hi_events,est_drop_controls,est_ci_lo_controls,est_ci_hi_controls,est_specificity," \
    "est_specificity_ci_lo,est_specificity_ci_hi,est_error,rank,selected\n"

// Writes ablation_importance.csv, head_importance.csv (when heads were scanned; removed otherwise),
// selected_layers.json and random_layers.json. results: (n_comp) as the component index k.
static int scan_write(const Config *c, const Run *run, const char *variant, const ScanResult *results, int n_layers,
                      int n_heads, int heads_scanned, int n_events, int n_controls, Err *err) {
    // Rank attention layers, MLP layers and heads apart by their effect.
    int n_of[3] = {n_layers, n_layers, heads_scanned ? n_layers * n_heads : 0};
    int n_comp = 2 * n_layers + n_of[2];
    const ScanResult **order[3];
    int top_k[3] = {c->top_k_attn < n_of[0] ? c->top_k_attn : n_of[0], c->top_k_mlp < n_of[1] ? c->top_k_mlp : n_of[1],
                    c->top_k_heads < n_of[2] ? c->top_k_heads : n_of[2]};
    if (n_events == 0) top_k[0] = top_k[1] = top_k[2] = 0; // nothing measured, nothing selected
    int *rank = xmalloc((size_t)n_comp * sizeof *rank);
    for (int kind = 0; kind < 3; kind++) {
        order[kind] = xmalloc((size_t)(n_of[kind] + 1) * sizeof *order[kind]);
        for (int i = 0, k = 0; k < n_comp; k++)
            if (comp_kind(k, n_layers) == kind) order[kind][i++] = &results[k];
        qsort(order[kind], (size_t)n_of[kind], sizeof *order[kind], cmp_effect);
        for (int i = 0; i < n_of[kind]; i++) rank[order[kind][i] - results] = i + 1;
    }
    const char *kind = c->ablation_kind == ABLATE_MEAN ? "mean" : "zero",
               *scope = c->ablation_scope == SCOPE_ONSET ? "onset" : "all";
    Buf csv = {0}, heads = {0}, js = {0};
    buf_puts(&csv, "run_id,variant,layer,component,kind,scope," SCAN_COLUMNS);
    buf_puts(&heads, "run_id,variant,layer,head,kind,scope," SCAN_COLUMNS);
    for (int k = 0; k < n_comp; k++) {
        const ScanResult *x = &results[k];
        Buf *b = x->component == COMP_HEAD ? &heads : &csv;
        buf_printf(b, "%s,", run->id);
        buf_csv_field(b, variant, strlen(variant));
        if (x->component == COMP_HEAD) buf_printf(b, ",%d,%d,%s,%s", x->layer, x->head, kind, scope);
        else buf_printf(b, ",%d,%s,%s,%s", x->layer, x->component ? "mlp" : "attn", kind, scope);
        scan_row(b, x, n_events, n_controls, rank[k], rank[k] <= top_k[x->component]);
    }
    buf_puts(&js, "{\n  \"variant\": ");
    buf_json_string(&js, variant, strlen(variant));
    buf_printf(&js,
               ",\n  \"kind\": \"%s\",\n  \"scope\": \"%s\",\n  \"method\": \"%s\",\n  \"n_events\": %d,\n"
               "  \"n_controls\": %d",
               kind, scope, ablation_method_name(c->ablation_method), n_events, n_controls);
    for (int comp = 0; comp < 3; comp++) {
        if (comp == COMP_HEAD && c->top_k_heads == 0) break; // a design without heads reads as before
        buf_printf(&js, ",\n  \"%s\": [", comp == COMP_HEAD ? "attn_heads" : comp ? "mlp_layers" : "attn_layers");
        for (int i = 0; i < top_k[comp]; i++) {
            if (comp == COMP_HEAD)
                buf_printf(&js, "%s[%d, %d]", i ? ", " : "", order[comp][i]->layer, order[comp][i]->head);
            else buf_printf(&js, "%s%d", i ? ", " : "", order[comp][i]->layer);
        }
        buf_printf(&js, "],\n  \"%s_effects\": [", comp == COMP_HEAD ? "head" : comp ? "mlp" : "attn");
        for (int i = 0; i < top_k[comp]; i++) {
            if (i) buf_puts(&js, ", ");
            buf_json_double(&js, order[comp][i]->events.est);
        }
        buf_putc(&js, ']');
    }
    buf_puts(&js, "\n}\n");
    // The shape-matched random controls, drawn now from the run seed so the design is fixed in one place.
    LayerSet targeted = {.kind = c->ablation_kind, .n_attn = top_k[0], .n_mlp = top_k[1], .n_attn_heads = top_k[2]};
    targeted.attn_layers = xmalloc((size_t)(top_k[0] + 1) * sizeof(int));
    targeted.mlp_layers = xmalloc((size_t)(top_k[1] + 1) * sizeof(int));
    targeted.attn_heads = xmalloc((size_t)(2 * top_k[2] + 1) * sizeof(int));
    for (int i = 0; i < top_k[0]; i++) targeted.attn_layers[i] = order[0][i]->layer;
    for (int i = 0; i < top_k[1]; i++) targeted.mlp_layers[i] = order[1][i]->layer;
    for (int i = 0; i < top_k[2]; i++)
        targeted.attn_heads[2 * i] = order[2][i]->layer, targeted.attn_heads[2 * i + 1] = order[2][i]->head;
    LayerSet *draws = xcalloc((size_t)c->random_draws, sizeof *draws);
    Buf random = {0};
    int rc = draw_random_layers(&targeted, n_layers, n_heads, c->seed, c->random_draws, draws, err);
    buf_printf(&random, "{\"kind\": \"%s\", \"draws\": [", kind);
    for (int d = 0; d < c->random_draws && rc == 0; d++) {
        buf_puts(&random, d ? ",\n  " : "\n  ");
        layer_set_json(&random, &draws[d]);
    }
    buf_puts(&random, "\n]}\n");
    char path[1200];
    run_path(run, path, sizeof path, ART_ABLATION);
    if (rc == 0) rc = write_file_atomic(path, csv.data, csv.len, err);
    run_path(run, path, sizeof path, ART_HEADS);
    if (rc == 0 && heads_scanned) rc = write_file_atomic(path, heads.data, heads.len, err);
    // A head table of an earlier scan of this run would be stale.
    if (rc == 0 && !heads_scanned && path_exists(path) && remove(path))
        rc = err_runtime(err, "%s: cannot remove the stale head table", path);
    run_path(run, path, sizeof path, ART_SELECTED);
    if (rc == 0) rc = write_file_atomic(path, js.data, js.len, err);
    run_path(run, path, sizeof path, ART_RANDOM_LAYERS);
    if (rc == 0) rc = write_file_atomic(path, random.data, random.len, err);
    for (int d = 0; d < c->random_draws; d++) layer_set_free(&draws[d]);
    free(draws);
    layer_set_free(&targeted);
    buf_free(&random);
    for (int comp = 0; comp < 3; comp++) free(order[comp]);
    free(rank);
    buf_free(&csv);
    buf_free(&heads);
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


// Attribution patching over every item (events and controls): one forward and one backward pass
// each give the estimated drop (minus the score) of every layer component and head, scope all.
static int attribution_pass(Analysis *a, const float *attn_mean, const float *mlp_mean, const float *head_mean,
                            double *est_drop, int n_comp, Err *err) {
    const ModelConfig *mc = &a->m.cfg;
    int L = mc->n_layers, H = mc->n_heads, rc = 0;
    GradState *gs = gradstate_new(&a->m, items_max_tokens(&a->it), GRAD_KEEP_BYTES, err);
    if (!gs) return -1;
    double *score = xmalloc((size_t)(2 * L + L * H) * sizeof *score); // (2 L + L H) attention, MLP, heads
    double t0 = now_seconds();
    for (int i = 0; i < a->it.n_items && rc == 0; i++) {
        const Item *x = &a->it.items[i];
        const ForcedSeq *q = &a->it.seqs[x->seq];
        Gradient g = {.token = q->tokens, .n = q->n_tokens, .pred_pos = x->pred_pos,
                      .onset_token_id = x->onset_token_id, .attn_mean = attn_mean, .mlp_mean = mlp_mean,
                      .head_mean = head_mean, .score_attn = score, .score_mlp = score + L, .score_head = score + 2 * L};
        if ((rc = model_gradient(&a->m, gs, &g, err))) break;
        for (int l = 0; l < L; l++) {
            est_drop[(size_t)i * n_comp + 2 * l] = -g.score_attn[l];
            est_drop[(size_t)i * n_comp + 2 * l + 1] = -g.score_mlp[l];
        }
        for (int h = 0; h < L * H && 2 * L + h < n_comp; h++)
            est_drop[(size_t)i * n_comp + 2 * L + h] = -g.score_head[h];
        if ((i + 1) % 8 == 0 || i + 1 == a->it.n_items)
            progress("ablation-scan: attribution %d/%d items (%.2f s/item)\n", i + 1, a->it.n_items,
                     (now_seconds() - t0) / (i + 1));
    }
    free(score);
    gradstate_free(gs);
    return rc;
}

// attribution+verify: the top verify_k components of each kind by the size of their estimated
// drop on events, the mean of est_drop (n_items, n_comp) over them (a saturated path can show a
// small estimate of either sign, so not by signed value).
// Every shard of a sharded scan chooses from all items' estimates, so each chooses the same.
static void choose_verified(const double *est_drop, const Item *items, int n_items, int n_comp, int n_layers,
                            int verify_k, unsigned char *run_exact) {
    double *size = xmalloc((size_t)(n_comp + 1) * sizeof *size); // (n_comp) |mean estimate on events|
    for (int k = 0; k < n_comp; k++) {
        double sum = 0;
        int n = 0;
        for (int i = 0; i < n_items; i++)
            if (!items[i].is_control) sum += est_drop[(size_t)i * n_comp + k], n++;
        size[k] = n > 0 ? fabs(sum / n) : NAN;
    }
    for (int kind = 0; kind < 3; kind++)
        for (int round = 0; round < verify_k; round++) {
            int best = -1;
            for (int k = 0; k < n_comp; k++) {
                if (comp_kind(k, n_layers) != kind || run_exact[k] || isnan(size[k])) continue;
                if (best < 0 || size[k] > size[best]) best = k;
            }
            if (best >= 0) run_exact[best] = 1;
        }
    free(size);
}

// The summarizing half of the scan, which the merge of its shards runs too: per component the mean
// drop on events, on controls and their difference with 95% CIs from a bootstrap over problems
// (events share completions, completions share problems): the attribution estimate where est_drop
// is given, the exact drop where run_exact (n_comp) says it ran; then the ranking and the outputs.
// drop and est_drop (or NULL) are (n_items, n_comp) in item order; of items only is_control is read.
static int scan_summarize(const Config *c, const Run *run, const char *variant, int n_layers, int n_heads,
                          int heads_scanned, const Item *items, int n_items, const char *const *problem_id,
                          const double *drop, const double *est_drop, const unsigned char *run_exact, Err *err) {
    int n_comp = 2 * n_layers + (heads_scanned ? n_layers * n_heads : 0), n_events = 0;
    ScanResult *results = xcalloc((size_t)n_comp, sizeof *results);
    int *cluster = xmalloc((size_t)(n_items + 1) * sizeof *cluster);
    Clusters cl = {0};
    for (int i = 0; i < n_items; i++) cluster[i] = cluster_of(&cl, problem_id[i]), n_events += !items[i].is_control;
    for (int k = 0; k < n_comp; k++) {
        ScanResult *x = &results[k];
        x->layer = comp_layer(k, n_layers, n_heads), x->component = comp_kind(k, n_layers);
        x->head = x->component == COMP_HEAD ? (k - 2 * n_layers) % n_heads : -1;
        x->events = x->controls = x->specificity = x->est_events = x->est_controls = x->est_specificity =
            (Interval){NAN, NAN, NAN};
        if (est_drop) {
            Interval *out[3] = {&x->est_events, &x->est_controls, &x->est_specificity};
            drop_intervals(est_drop, n_comp, k, items, n_items, cluster, cl.n_clusters,
                           seed_mix((uint64_t)c->seed, 0xA771B), out);
            x->estimated = 1;
            x->events = x->est_events, x->controls = x->est_controls, x->specificity = x->est_specificity;
        }
        if (run_exact[k]) {
            Interval *out[3] = {&x->events, &x->controls, &x->specificity};
            drop_intervals(drop, n_comp, k, items, n_items, cluster, cl.n_clusters,
                           seed_mix((uint64_t)c->seed, 0xAB1A7E), out);
            x->exact = 1;
        }
    }
    int rc = scan_write(c, run, variant, results, n_layers, n_heads, heads_scanned, n_events, n_items - n_events, err);
    free(cluster);
    clusters_free(&cl);
    free(results);
    return rc;
}

// Header of a scan shard: the item, what the summary needs of it, and per component its exact drop
// and its attribution estimate (nan where that method did not run).
#define SCAN_SHARD_HEADER "item,kind,problem_id,component,drop,est_drop"

// The component names of a scan shard's rows, in drop's order: attn_0, mlp_0, attn_1, ..., then
// head_L.H when heads are scanned.
static char **scan_components(int n_layers, int n_heads, int n_comp) {
    char **names = xmalloc((size_t)(n_comp + 1) * sizeof *names);
    for (int k = 0; k < n_comp; k++) {
        names[k] = xmalloc(48);
        if (k < 2 * n_layers) snprintf(names[k], 48, "%s_%d", k % 2 ? "mlp" : "attn", k / 2);
        else snprintf(names[k], 48, "head_%d.%d", (k - 2 * n_layers) / n_heads, (k - 2 * n_layers) % n_heads);
    }
    return names;
}

static void names_free(char **names, int n) {
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
}

// A scan's shard set read back in item order: the scan's own (ART_ABLATION), or the estimates
// the first phase of a sharded attribution+verify scan writes (ART_ABLATION_ESTIMATES).
typedef struct {
    int n_items, n_comp, n_shards;
    Item *items;             // (n_items) of an item only is_control is set
    const char **problem_id; // (n_items) cells of t
    double *drop, *est_drop; // (n_items, n_comp) nan where that method did not run
    ItemTable t;
    ShardInfo info; // info.what: the variant scanned
} ScanShards;

static void scan_shards_free(ScanShards *s) {
    if (s->t.csv) item_table_free(&s->t);
    free(s->items);
    free(s->problem_id);
    free(s->drop);
    free(s->est_drop);
    shard_info_free(&s->info);
    memset(s, 0, sizeof *s);
}

static int scan_shards_read(const Config *c, const Run *run, const char *rel, const char *stage, int n_layers,
                            int n_heads, int n_comp, ScanShards *s, Err *err) {
    char **files = NULL;
    int n = 0;
    memset(s, 0, sizeof *s);
    if (analysis_shards(c, run, rel, stage, 0, NULL, &files, &n, &s->info, err)) return -1;
    int n_items = s->n_items = s->info.items;
    s->n_shards = n;
    s->n_comp = n_comp;
    char **components = scan_components(n_layers, n_heads, n_comp);
    int rc =
        item_table_read(files, n, n_items, SCAN_SHARD_HEADER, 3, (const char *const *)components, n_comp, &s->t, err);
    s->items = xcalloc((size_t)n_items + 1, sizeof *s->items);
    s->problem_id = xcalloc((size_t)n_items + 1, sizeof *s->problem_id);
    s->drop = xmalloc(((size_t)n_items * n_comp + 1) * sizeof *s->drop);
    s->est_drop = xmalloc(((size_t)n_items * n_comp + 1) * sizeof *s->est_drop);
    const ItemTable *t = &s->t;
    for (int i = 0; i < n_items && rc == 0; i++) {
        const char *kind = item_cell(t, i * n_comp, 1);
        s->items[i].is_control = strcmp(kind, "control") == 0;
        s->problem_id[i] = item_cell(t, i * n_comp, 2);
        if (!s->items[i].is_control && strcmp(kind, "event") != 0)
            rc = err_input(err, "%s: item %d: kind '%s'", files[0], i, kind);
        for (int k = 0; k < n_comp && rc == 0; k++) {
            int key = i * n_comp + k;
            if (item_double(t, key, 4, &s->drop[key]) || item_double(t, key, 5, &s->est_drop[key]))
                rc = err_input(err, "%s:%d: drop '%s' or est_drop '%s' is not a number", files[t->file_of[key]],
                               t->row_of[key] + 2, item_cell(t, key, 4), item_cell(t, key, 5));
            else if (strcmp(item_cell(t, key, 1), kind) || strcmp(item_cell(t, key, 2), s->problem_id[i]))
                rc = err_input(err, "%s:%d: item %d's kind or problem differs from its other rows",
                               files[t->file_of[key]], t->row_of[key] + 2, i);
        }
    }
    names_free(components, n_comp);
    shard_set_free(files, n);
    if (rc) scan_shards_free(s);
    return rc;
}

int cmd_ablation_scan(int argc, char **argv) {
    Opt opts[] = {OPT_CONFIG,
                  OPT("--variant", 1, "variant whose baseline events to scan (default [logit_lens] variant)"),
                  OPT_SHARD,
                  OPT("--estimates", 0,
                      "with --shard and method = attribution+verify: this shard's estimates only (the first phase; "
                      "the shards run without it then verify what all the estimates choose)"),
                  OPT_END};
    Err err = {0};
    Config c;
    Run run;
    int exit_code;
    if (stage_open(argc, argv, opts, &c, &run, &exit_code)) return exit_code;
    const char *variant = opt_str(opts, "--variant", c.lens_variant);
    Analysis a = {0};
    float *attn_mean = NULL, *mlp_mean = NULL, *head_mean = NULL, *ablated = NULL, *resid = NULL, *clean_logits = NULL;
    double *drop = NULL, *est_drop = NULL, *clean_lp = NULL;
    int *item_read = NULL;
    unsigned char *run_exact = NULL;
    int n_layers = 0, n_comp = 0, estimates = opt_str(opts, "--estimates", NULL) != NULL;
    ScanShards first = {0}; // a verifying shard's: every item's estimate from the first phase
    AblationMask *masks = NULL;
    Shard shard;
    int *global = NULL;   // a shard's items: each one's index among all
    double *costs = NULL; // a shard's: each completion's positions, once per item when it computes gradients
    ShardInfo info;
    char path[1200];
    run_path(&run, path, sizeof path, estimates ? ART_ABLATION_ESTIMATES : ART_ABLATION);
    if (shard_parse(opt_str(opts, "--shard", NULL), &shard, &err)) goto out;
    // Sharded, attribution+verify runs in two phases: every shard's estimates, then every shard
    // verifies, each choosing from all the estimates what an unsharded scan would.
    int verifying = shard.n && c.ablation_method == METHOD_ATTRIBUTION_VERIFY && !estimates;
    if (estimates && (!shard.n || c.ablation_method != METHOD_ATTRIBUTION_VERIFY)) {
        err_input(&err, "ablation-scan --estimates is the first phase of a sharded attribution+verify scan: give "
                        "--shard K/N, with [ablation] method = attribution+verify");
        goto out;
    }
    if (analysis_open(&c, &run, variant, c.ablation_max_events, &a, &err)) goto out;
    n_layers = a.m.cfg.n_layers;
    int hidden = a.m.cfg.hidden_size, vocab = a.m.cfg.vocab_size, n_slots = a.f.n_slots, n_heads = a.m.cfg.n_heads;
    int heads_scanned = scan_heads(&c);
    n_comp = 2 * n_layers + (heads_scanned ? n_layers * n_heads : 0);
    if (shard.n) {
        const char *stage = estimates ? "ablation-estimates" : "ablation-scan";
        costs = items_seq_costs(&a.it, c.ablation_method != METHOD_EXACT && !verifying);
        uint64_t digest = analysis_digest(&c, &run, variant, 0, NULL);
        info = (ShardInfo){stage, variant, a.it.n_seqs, a.it.n_items, digest, 0, costs};
        if (shard_done(&run, path, &shard, &info)) {
            printf("%s: shard %d/%d is already there\n", stage, shard.k, shard.n);
            goto out;
        }
        if (verifying) {
            char estimates_path[1200];
            run_path(&run, estimates_path, sizeof estimates_path, ART_ABLATION_ESTIMATES);
            if (!exists_or_sharded(estimates_path)) {
                err_input(&err, "ablation-scan --shard: attribution+verify shards in two phases, and the first is not "
                                "there: run ablation-scan --estimates --shard K/N for every K, then this");
                goto out;
            }
            if (scan_shards_read(&c, &run, ART_ABLATION_ESTIMATES, "ablation-estimates", n_layers, n_heads, n_comp,
                                 &first, &err))
                goto out;
            if (strcmp(first.info.what, variant) != 0 || first.n_items != a.it.n_items) {
                err_input(&err,
                          "%s: its estimate shards are of %s (%d items), not of %s (%d items): run "
                          "ablation-scan --estimates --shard K/N again",
                          estimates_path, first.info.what, first.n_items, variant, a.it.n_items);
                goto out;
            }
        }
        if (shard_begin(&run, path, &shard, &info, &err)) goto out;
    }
    if (a.it.n_events == 0 && shard.k <= 1) // the outputs say so: no effects, no layers selected, a "no data" figure
        fprintf(stderr,
                "bt ablation-scan: warning: no events of variant %s in run %s: nothing to scan, no layers selected\n",
                variant, run.id);
    if (c.ablation_kind == ABLATE_MEAN && estimate_means(&a.f, &a.it, &run, &attn_mean, &mlp_mean, &head_mean, &err))
        goto out;
    // A shard scans its share of the completions; every shard computed the means over all of them
    // (the same floats, whatever N), as an unsharded scan does.
    if (shard.n && analysis_keep_shard(&a, &c, &shard, costs, &global, &err)) goto out;
    n_slots = a.f.n_slots;
    // The estimates first: attribution+verify chooses from them what to ablate exactly.
    run_exact = xcalloc((size_t)n_comp, 1);
    if (c.ablation_method != METHOD_EXACT) {
        est_drop = xmalloc((size_t)(a.it.n_items + 1) * n_comp * sizeof *est_drop); // (n_items, n_comp)
        if (verifying) {
            choose_verified(first.est_drop, first.items, first.n_items, n_comp, n_layers, c.verify_k, run_exact);
            for (int i = 0; i < a.it.n_items; i++)
                memcpy(est_drop + (size_t)i * n_comp, first.est_drop + (size_t)global[i] * n_comp,
                       (size_t)n_comp * sizeof *est_drop);
        } else if (attribution_pass(&a, attn_mean, mlp_mean, head_mean, est_drop, n_comp, &err)) {
            goto out;
        }
        if (c.ablation_method == METHOD_ATTRIBUTION_VERIFY && !shard.n)
            choose_verified(est_drop, a.it.items, a.it.n_items, n_comp, n_layers, c.verify_k, run_exact);
    } else {
        memset(run_exact, 1, (size_t)n_comp);
    }
    int n_exact = 0, n_estimated = c.ablation_method != METHOD_EXACT ? n_comp : 0;
    for (int k = 0; k < n_comp; k++) n_exact += run_exact[k];
    // One mask per component: attention l, MLP l, or one head.
    masks = xcalloc((size_t)n_comp, sizeof *masks);
    for (int k = 0; k < n_comp; k++) {
        masks[k] = (AblationMask){.kind = c.ablation_kind,
                                  .attn = xcalloc((size_t)n_layers, 1),
                                  .mlp = xcalloc((size_t)n_layers, 1),
                                  .attn_mean = attn_mean,
                                  .mlp_mean = mlp_mean,
                                  .head_mean = head_mean};
        if (k >= 2 * n_layers) {
            masks[k].head = xcalloc((size_t)n_layers * n_heads, 1);
            masks[k].head[k - 2 * n_layers] = 1;
        } else {
            (k % 2 ? masks[k].mlp : masks[k].attn)[k / 2] = 1;
        }
    }
    item_read = xmalloc((size_t)(a.it.n_items + 1) * sizeof *item_read);
    for (int i = 0; i < a.it.n_items; i++) item_read[i] = item_read_index(&a.it, i);
    drop = xmalloc((size_t)(a.it.n_items + 1) * n_comp * sizeof *drop); // (n_items, n_comp)
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
    if (n_exact == 0) max_group_reads = max_group_positions = 1; // attribution alone: no exact pass
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
    int *row_out = xmalloc((size_t)max_replay * sizeof(int)), *row_read = xmalloc((size_t)max_replay * sizeof(int)),
        *row_k = xmalloc((size_t)max_replay * sizeof(int));
    const AblationMask **row_mask = xmalloc((size_t)max_replay * sizeof *row_mask);
    int *layer_k = xmalloc((size_t)(2 + n_heads) * sizeof *layer_k); // (2 + n_heads) the exact components of one layer
    int rc = 0;
    ProgressClock pc;
    progress_start(&pc);
    double scanned = 0, to_scan = 0;
    for (int s = 0; s < a.it.n_seqs; s++) to_scan += a.it.seqs[s].n_tokens;
    for (int s0 = 0, n, base = 0, group_reads, positions; s0 < a.it.n_seqs && rc == 0 && n_exact > 0;
         s0 += n, base += group_reads) {
        n = scan_group(&a.it, s0, n_slots, max_positions, &group_reads, &positions);
        // The clean pass: logits at the reads, and the residuals the ablated passes start from.
        PassOut clean = {.logits = clean_logits};
        if (c.ablation_scope == SCOPE_ALL) clean.resid_all = resid;
        else clean.resid = resid;
        if ((rc = force_group(&a.f, a.it.seqs + s0, n, &clean, &err))) break;
        for (int i = 0; i < a.it.n_items; i++)
            if (item_read[i] >= base && item_read[i] < base + group_reads)
                clean_lp[i] = log_prob(clean_logits + (size_t)(item_read[i] - base) * vocab, vocab,
                                       a.it.items[i].onset_token_id, NULL);
        if (c.ablation_scope == SCOPE_ALL) {
            // The component ablated at every position, as generation-time ablation does; each
            // pass starts at the ablated layer from the clean residual (the layers below are clean).
            for (int k = 0; k < n_comp && rc == 0; k++) {
                if (!run_exact[k]) continue;
                PassOut out = {.mask = &masks[k], .logits = ablated, .enter = resid,
                               .first_layer = comp_layer(k, n_layers, n_heads)};
                if ((rc = force_group(&a.f, a.it.seqs + s0, n, &out, &err))) break;
                for (int i = 0; i < a.it.n_items; i++)
                    if (item_read[i] >= base && item_read[i] < base + group_reads)
                        drop[(size_t)i * n_comp + k] =
                            clean_lp[i] - log_prob(ablated + (size_t)(item_read[i] - base) * vocab, vocab,
                                                   a.it.items[i].onset_token_id, NULL);
            }
        } else {
            // Onset scope: ablate only at pred_pos; replay the layers from the ablated
            // one up for that position over the clean KV cache of its completion.
            for (int l = 0; l < n_layers && rc == 0; l++) {
                int per = 0; // exact components of layer l: rows are every read of the group x these
                for (int k = 0; k < n_comp; k++)
                    if (run_exact[k] && comp_layer(k, n_layers, n_heads) == l) layer_k[per++] = k;
                for (int start = 0; start < per * group_reads && rc == 0; start += max_replay) {
                    int rows = per * group_reads - start < max_replay ? per * group_reads - start : max_replay;
                    for (int q = 0; q < rows; q++) {
                        int j = (start + q) / per, k = layer_k[(start + q) % per], sq = 0, acc = 0;
                        while (acc + a.it.seqs[s0 + sq].n_read <= j) acc += a.it.seqs[s0 + sq++].n_read;
                        row_slot[q] = sq;
                        row_pos[q] = a.it.seqs[s0 + sq].read_pos[j - acc];
                        row_mask[q] = &masks[k];
                        row_out[q] = q;
                        row_read[q] = base + j;
                        row_k[q] = k;
                        memcpy(x_in + (size_t)q * hidden, resid + ((size_t)j * (n_layers + 1) + l) * hidden,
                               (size_t)hidden * sizeof *x_in);
                    }
                    // token is unused when rows enter with x_in; row_pos stands in for a.it.
                    Forward fw = {.n = rows,
                                  .token = row_pos,
                                  .slot = row_slot,
                                  .pos = row_pos,
                                  .mask = row_mask,
                                  .first_layer = l,
                                  .x_in = x_in,
                                  .replay = 1,
                                  .logits = replay_logits,
                                  .logits_row = row_out};
                    if ((rc = model_forward(&a.m, a.f.state, &fw, &err))) break;
                    for (int q = 0; q < rows; q++)
                        for (int i = 0; i < a.it.n_items; i++)
                            if (item_read[i] == row_read[q])
                                drop[(size_t)i * n_comp + row_k[q]] =
                                    clean_lp[i] - log_prob(replay_logits + (size_t)q * vocab, vocab,
                                                           a.it.items[i].onset_token_id, NULL);
                }
            }
        }
        scanned += positions;
        progress_eta(&pc, "ablation-scan", s0 + n, a.it.n_seqs, "completions", scanned, scanned, to_scan);
    }
    free(row_slot); free(row_pos); free(row_out); free(row_read); free(row_k); free(row_mask); free(replay_logits);
    free(layer_k);
    if (rc) goto out;
    const char **problem_id = xmalloc((size_t)(a.it.n_items + 1) * sizeof *problem_id);
    for (int i = 0; i < a.it.n_items; i++) problem_id[i] = a.it.records[a.it.items[i].record].problem_id;
    if (shard.n) { // the raw drops, exactly ("%.17g"), for the merge to summarize
        Buf raw = {0};
        char shard_path[1300];
        char **components = scan_components(n_layers, n_heads, n_comp);
        buf_puts(&raw, SCAN_SHARD_HEADER "\n");
        for (int i = 0; i < a.it.n_items; i++)
            for (int k = 0; k < n_comp; k++) {
                buf_printf(&raw, "%d,%s,", global[i], a.it.items[i].is_control ? "control" : "event");
                buf_csv_field(&raw, problem_id[i], strlen(problem_id[i]));
                buf_printf(&raw, ",%s", components[k]);
                put_raw(&raw, run_exact[k] ? drop[(size_t)i * n_comp + k] : NAN);
                put_raw(&raw, est_drop ? est_drop[(size_t)i * n_comp + k] : NAN);
                buf_putc(&raw, '\n');
            }
        names_free(components, n_comp);
        shard_file(path, &shard, shard_path, sizeof shard_path);
        rc = write_file_atomic(shard_path, raw.data, raw.len, &err);
        if (rc == 0) rc = shard_finish(&run, path, &shard, &info, &err);
        if (rc == 0)
            printf("%s: shard %d/%d: %d events, %d controls of %d completions of %d\n", info.stage, shard.k, shard.n,
                   a.it.n_events, a.it.n_items - a.it.n_events, a.it.n_seqs, info.units);
        buf_free(&raw);
        free(problem_id);
        goto out;
    }
    rc = scan_summarize(&c, &run, variant, n_layers, n_heads, heads_scanned, a.it.items, a.it.n_items, problem_id,
                        drop, est_drop, run_exact, &err);
    free(problem_id);
    if (rc) goto out;
    printf("ablation-scan: %d events, %d controls, %d components (%s ablation, scope %s; %s: %d estimated, %d exact)\n",
           a.it.n_events, a.it.n_items - a.it.n_events, n_comp, c.ablation_kind == ABLATE_MEAN ? "mean" : "zero",
           c.ablation_scope == SCOPE_ONSET ? "onset" : "all", ablation_method_name(c.ablation_method), n_estimated,
           n_exact);
out:
    if (masks)
        for (int k = 0; k < n_comp; k++) ablation_mask_free(&masks[k]);
    free(masks); free(attn_mean); free(mlp_mean); free(head_mean); free(ablated); free(resid); free(clean_logits);
    free(drop); free(est_drop); free(clean_lp); free(item_read); free(run_exact);
    free(global);
    free(costs);
    scan_shards_free(&first);
    analysis_close(&a);
    config_free(&c);
    return err.msg[0] ? fail(&err) : 0;
}

// bt merge --stage ablation-scan: every shard's raw drops in item order, then the summarizing half;
// attribution+verify's components verified are chosen again from the estimates, as its shards chose.
int merge_ablation_scan(const Config *c, const Run *run, Err *err) {
    ModelConfig mc;
    ScanShards s;
    if (model_config_read(c->model_path, &mc, err)) return -1;
    int L = mc.n_layers, H = mc.n_heads;
    int heads_scanned = scan_heads(c);
    int n_comp = 2 * L + (heads_scanned ? L * H : 0), rc;
    if (scan_shards_read(c, run, ART_ABLATION, "ablation-scan", L, H, n_comp, &s, err)) return -1;
    unsigned char *run_exact = xmalloc((size_t)n_comp + 1);
    memset(run_exact, c->ablation_method == METHOD_EXACT, (size_t)n_comp);
    if (c->ablation_method == METHOD_ATTRIBUTION_VERIFY)
        choose_verified(s.est_drop, s.items, s.n_items, n_comp, L, c->verify_k, run_exact);
    rc = scan_summarize(c, run, s.info.what, L, H, heads_scanned, s.items, s.n_items, s.problem_id, s.drop,
                        c->ablation_method != METHOD_EXACT ? s.est_drop : NULL, run_exact, err);
    if (rc == 0) printf("merge: ablation-scan of %s: %d shards, %d items\n", s.info.what, s.n_shards, s.n_items);
    free(run_exact);
    scan_shards_free(&s);
    return rc;
}

// ----------------------------------------------------------------------------
// Collateral damage: a model whose layers are zeroed can stop saying "Wait" simply because
// it is broken. For each ablation condition (the targeted set and every random draw), the
// baseline completions of the variant are teacher-forced clean and ablated at every
// position, and the mean increase in negative log-likelihood of their tokens (trigger
// onsets left out) is the damage done beside the drop in backtracking.

#define COLLATERAL_CHUNK 256 // reads per forward call: bounds the logits buffer to this many vocab rows

typedef struct {
    const double *increase, *tokens; // (n_clusters) summed per problem
    int n_clusters;
} CollateralCtx;

static double stat_collateral(const void *ctx, const int *w) {
    const CollateralCtx *x = ctx;
    double t = wsum(x->tokens, w, x->n_clusters);
    return t > 0 ? wsum(x->increase, w, x->n_clusters) / t : NAN;
}

// Sum of -log p over the kept reads of one completion under mask; onset marks reads to skip.
static int completion_nll(Forcer *f, int *tokens, int n_tokens, int first_read, const unsigned char *onset,
                          const AblationMask *mask, float *logits, double *nll, Err *err) {
    int vocab = f->m->cfg.vocab_size, read_pos[COLLATERAL_CHUNK];
    *nll = 0;
    for (int i0 = 0; i0 < n_tokens - 1; i0 += COLLATERAL_CHUNK) {
        int end = i0 + COLLATERAL_CHUNK < n_tokens - 1 ? i0 + COLLATERAL_CHUNK : n_tokens - 1, n_read = 0;
        for (int p = i0 > first_read ? i0 : first_read; p < end; p++) read_pos[n_read++] = p;
        ForcedSeq seq = {.tokens = tokens, .n_tokens = end, .start = i0, .read_pos = read_pos, .n_read = n_read};
        PassOut out = {.mask = mask, .logits = logits};
        if (force_group(f, &seq, 1, &out, err)) return -1;
        for (int r = 0; r < n_read; r++)
            if (!onset[read_pos[r] - first_read])
                *nll -= log_prob(logits + (size_t)r * vocab, vocab, tokens[read_pos[r] + 1], NULL);
    }
    return 0;
}

// The summarizing half of collateral damage, which the merge of its shards runs too: per ablation
// set the mean NLL increase per kept token with a 95% CI from a bootstrap over problems.
// problem_id, tokens_kept (n_recs) and nll (n_recs, 1 + n_sets: clean, then each set) are in record order.
static int collateral_summarize(const Config *c, const Run *run, const char *variant, const LayerSet *sets, int n_sets,
                                int n_recs, const char *const *problem_id, const double *tokens_kept, const double *nll,
                                Err *err) {
    Clusters cl = {0};
    int *cluster = xcalloc((size_t)n_recs + 1, sizeof *cluster);
    for (int r = 0; r < n_recs; r++) cluster[r] = cluster_of(&cl, problem_id[r]);
    Buf csv = {0};
    buf_puts(&csv,
             "run_id,variant,condition,attn_layers,mlp_layers,attn_heads,completions,tokens,nll_clean,nll_ablated,"
             "nll_increase,ci_lo,ci_hi\n");
    double *increase = xcalloc((size_t)cl.n_clusters + 1, sizeof *increase),
           *kept = xcalloc((size_t)cl.n_clusters + 1, sizeof *kept);
    for (int s = 0; s < n_sets; s++) {
        Condition cond = {s ? COND_RANDOM : COND_TARGETED, s};
        char name[64];
        condition_format(&cond, name, sizeof name);
        double total_clean = 0, total_ablated = 0, total_tokens = 0;
        memset(increase, 0, (size_t)cl.n_clusters * sizeof *increase);
        memset(kept, 0, (size_t)cl.n_clusters * sizeof *kept);
        for (int r = 0; r < n_recs; r++) {
            double clean = nll[(size_t)r * (n_sets + 1)], ablated = nll[(size_t)r * (n_sets + 1) + s + 1];
            increase[cluster[r]] += ablated - clean, kept[cluster[r]] += tokens_kept[r];
            total_clean += clean, total_ablated += ablated, total_tokens += tokens_kept[r];
        }
        CollateralCtx x = {increase, kept, cl.n_clusters};
        Interval ci = cluster_bootstrap95(stat_collateral, &x, cl.n_clusters, STAT_RESAMPLES,
                                          seed_mix(seed_mix((uint64_t)c->seed, 0xC011A7), (uint64_t)s), 0, NULL);
        buf_printf(&csv, "%s,", run->id);
        buf_csv_field(&csv, variant, strlen(variant));
        buf_printf(&csv, ",%s,[", name); // "[1 2]": a list, read as text whatever its length
        for (int i = 0; i < sets[s].n_attn; i++) buf_printf(&csv, "%s%d", i ? " " : "", sets[s].attn_layers[i]);
        buf_puts(&csv, "],[");
        for (int i = 0; i < sets[s].n_mlp; i++) buf_printf(&csv, "%s%d", i ? " " : "", sets[s].mlp_layers[i]);
        buf_puts(&csv, "],[");
        for (int i = 0; i < sets[s].n_attn_heads; i++) // layer.head
            buf_printf(&csv, "%s%d.%d", i ? " " : "", sets[s].attn_heads[2 * i], sets[s].attn_heads[2 * i + 1]);
        buf_printf(&csv, "],%d,%.0f", n_recs, total_tokens);
        put_num(&csv, total_tokens > 0 ? total_clean / total_tokens : NAN);
        put_num(&csv, total_tokens > 0 ? total_ablated / total_tokens : NAN);
        put_interval(&csv, ci);
        buf_putc(&csv, '\n');
    }
    char path[1200];
    run_path(run, path, sizeof path, ART_COLLATERAL);
    int rc = write_file_atomic(path, csv.data, csv.len, err);
    free(increase);
    free(kept);
    free(cluster);
    clusters_free(&cl);
    buf_free(&csv);
    return rc;
}

// A collateral shard: a row per (record, condition): kept tokens and the NLL clean (condition none)
// or under each ablation set.
#define COLLATERAL_SHARD_HEADER "item,problem_id,tokens,condition,nll"

// The conditions of collateral's rows, in nll's order: none (clean), then each ablation set's.
static char **collateral_conditions(int n_sets) {
    char **names = xmalloc((size_t)(n_sets + 2) * sizeof *names);
    names[0] = xstrdup("none");
    for (int s = 0; s < n_sets; s++) {
        Condition cond = {s ? COND_RANDOM : COND_TARGETED, s};
        names[s + 1] = xmalloc(64);
        condition_format(&cond, names[s + 1], 64);
    }
    return names;
}

// The ablation design files and means collateral damage reads: part of its shards' digest.
static const char *const collateral_inputs[] = {ART_SELECTED, ART_RANDOM_LAYERS, ART_MEANS, NULL};

int cmd_collateral_damage(int argc, char **argv) {
    Opt opts[] = {OPT_CONFIG,
                  OPT("--variant", 1, "variant whose baseline completions to score (default [logit_lens] variant)"),
                  OPT_SHARD, OPT_END};
    Err err = {0};
    Config c;
    Run run;
    int exit_code;
    if (stage_open(argc, argv, opts, &c, &run, &exit_code)) return exit_code;
    const char *variant = opt_str(opts, "--variant", c.lens_variant);
    Model m = {0};
    int loaded = 0, n_recs = 0, n_sets = 1 + c.random_draws, max_tokens = 1;
    Tokenizer *tok = NULL;
    GenRecord *recs = NULL;
    Forcer f = {0};
    Csv events = {0};
    LayerSet *sets = xcalloc((size_t)n_sets, sizeof *sets);
    AblationMask *masks = xcalloc((size_t)n_sets, sizeof *masks);
    float *means[3] = {NULL, NULL, NULL}, *logits = NULL; // attention, MLP, heads
    double *nll = NULL, *tokens_kept = NULL; // (n_recs, 1 + n_sets) clean then each set; (n_recs)
    char path[1200], out_path[1200];
    Shard shard;
    ShardInfo info;
    int first_rec = 0, end_rec = 0;
    run_path(&run, out_path, sizeof out_path, ART_COLLATERAL);
    if (shard_parse(opt_str(opts, "--shard", NULL), &shard, &err)) goto out;
    snprintf(path, sizeof path, "%s/tokenizer.json", c.model_path);
    if (tokenizer_load(&tok, path, &err) || model_load(&m, c.model_path, &err)) goto out;
    loaded = 1;
    int L = m.cfg.n_layers;
    int any_heads = 0;
    for (int s = 0; s < n_sets; s++) {
        if (ablation_design_read(&run, L, s, &sets[s], &err) || layer_set_mask(&sets[s], &m.cfg, &masks[s], &err))
            goto out;
        masks[s].kind = c.ablation_kind;
        any_heads |= sets[s].n_attn_heads > 0;
    }
    if (c.ablation_kind == ABLATE_MEAN) {
        if (component_means_read(&run, &m.cfg, &means[0], &means[1], &err)) goto out;
        if (any_heads && head_means_read(&run, &m.cfg, &means[2], &err)) goto out;
        for (int s = 0; s < n_sets; s++)
            masks[s].attn_mean = means[0], masks[s].mlp_mean = means[1], masks[s].head_mean = means[2];
    }
    run_generation_path(&run, path, sizeof path, variant, "baseline");
    if (!exists_or_sharded(path)) {
        err_input(&err, "no baseline generations for variant %s in run %s: run generate first", variant, run.id);
        goto out;
    }
    if (generations_read(path, &recs, &n_recs, &err)) goto out;
    shard_range(&shard, n_recs, NULL, &first_rec, &end_rec); // a shard scores its share of the completions
    if (shard.n) {
        uint64_t digest = analysis_digest(&c, &run, variant, 0, collateral_inputs);
        info = (ShardInfo){"collateral-damage", variant, n_recs, n_recs, digest, 0, NULL};
        if (shard_done(&run, out_path, &shard, &info)) {
            printf("collateral-damage: shard %d/%d is already there\n", shard.k, shard.n);
            goto out;
        }
        if (shard_begin(&run, out_path, &shard, &info, &err)) goto out;
    }
    run_path(&run, path, sizeof path, ART_EVENTS);
    if (!path_exists(path)) {
        err_input(&err, "no events in run %s: run detect-events first", run.id);
        goto out;
    }
    if (csv_read(path, &events, &err)) goto out;
    int kc = csv_col(&events, "kind"), vc = csv_col(&events, "variant"), cc = csv_col(&events, "condition");
    int pc = csv_col(&events, "problem_id"), sc = csv_col(&events, "sample"), oc = csv_col(&events, "token_offset");
    if (kc < 0 || vc < 0 || cc < 0 || pc < 0 || sc < 0 || oc < 0) {
        err_input(&err, "%s: missing columns (run detect-events again)", path);
        goto out;
    }
    for (int r = first_rec; r < end_rec; r++)
        if (recs[r].prompt_tokens + recs[r].n_completion > max_tokens)
            max_tokens = recs[r].prompt_tokens + recs[r].n_completion;
    if (forcer_init(&f, &m, 1, max_tokens, COLLATERAL_CHUNK, &err)) goto out;
    logits = xmalloc((size_t)COLLATERAL_CHUNK * m.cfg.vocab_size * sizeof *logits);
    nll = xcalloc((size_t)(n_recs + 1) * (n_sets + 1), sizeof *nll);
    tokens_kept = xcalloc((size_t)n_recs + 1, sizeof *tokens_kept);
    TokenList prompt = {0};
    int rc = 0;
    for (int r = first_rec; r < end_rec && rc == 0; r++) {
        const GenRecord *rec = &recs[r];
        prompt.n = 0;
        if ((rc = tokenizer_encode(tok, rec->prompt, strlen(rec->prompt), &prompt, &err))) break;
        if (prompt.n != rec->prompt_tokens) {
            rc = err_input(&err,
                           "problem %s: the prompt now encodes to %d tokens, the record says %d (tokenizer changed?)",
                           rec->problem_id, prompt.n, rec->prompt_tokens);
            break;
        }
        int n_tokens = prompt.n + rec->n_completion, first_read = prompt.n - 1;
        int *ids = xmalloc((size_t)(n_tokens + 1) * sizeof *ids);
        for (int t = 0; t < prompt.n; t++) ids[t] = prompt.v[t].id;
        memcpy(ids + prompt.n, rec->completion_ids, (size_t)rec->n_completion * sizeof *ids);
        unsigned char *onset = xcalloc((size_t)rec->n_completion + 1, 1); // (n_completion) reads that predict an event
        for (int e = 0; e < events.n_rows; e++) {
            long long k, sample;
            if (strcmp(csv_cell(&events, e, kc), "event") || strcmp(csv_cell(&events, e, vc), variant) ||
                strcmp(csv_cell(&events, e, cc), "baseline") || strcmp(csv_cell(&events, e, pc), rec->problem_id))
                continue;
            if ((rc = csv_int(&events, e, sc, 0, INT32_MAX, &sample, &err))) break;
            if (sample != rec->sample) continue;
            if ((rc = csv_int(&events, e, oc, 0, rec->n_completion - 1, &k, &err))) break;
            onset[k] = 1;
        }
        for (int k = 0; k < rec->n_completion; k++) tokens_kept[r] += !onset[k];
        for (int s = 0; s <= n_sets && rc == 0; s++)
            rc = completion_nll(&f, ids, n_tokens, first_read, onset, s ? &masks[s - 1] : NULL, logits,
                                &nll[(size_t)r * (n_sets + 1) + s], &err);
        free(ids);
        free(onset);
        if ((r + 1) % 16 == 0 || r + 1 == end_rec) progress("collateral-damage: %d/%d completions\n", r + 1, end_rec);
    }
    tokens_free(&prompt);
    const char **problem_id = xmalloc((size_t)(n_recs + 1) * sizeof *problem_id);
    for (int r = 0; r < n_recs; r++) problem_id[r] = recs[r].problem_id;
    if (rc == 0 && shard.n) { // the raw sums, exactly ("%.17g"), for the merge to summarize
        Buf raw = {0};
        char shard_path[1300];
        char **conditions = collateral_conditions(n_sets);
        buf_puts(&raw, COLLATERAL_SHARD_HEADER "\n");
        for (int r = first_rec; r < end_rec; r++)
            for (int s = 0; s <= n_sets; s++) {
                buf_printf(&raw, "%d,", r);
                buf_csv_field(&raw, problem_id[r], strlen(problem_id[r]));
                put_raw(&raw, tokens_kept[r]);
                buf_printf(&raw, ",%s", conditions[s]);
                put_raw(&raw, nll[(size_t)r * (n_sets + 1) + s]);
                buf_putc(&raw, '\n');
            }
        names_free(conditions, n_sets + 1);
        shard_file(out_path, &shard, shard_path, sizeof shard_path);
        rc = write_file_atomic(shard_path, raw.data, raw.len, &err);
        if (rc == 0) rc = shard_finish(&run, out_path, &shard, &info, &err);
        if (rc == 0)
            printf("collateral-damage: shard %d/%d: %d of %d completions of %s under %d ablation sets\n", shard.k,
                   shard.n, end_rec - first_rec, n_recs, variant, n_sets);
        buf_free(&raw);
    } else if (rc == 0 &&
               collateral_summarize(&c, &run, variant, sets, n_sets, n_recs, problem_id, tokens_kept, nll, &err) == 0) {
        printf("collateral-damage: %d completions of %s under %d ablation sets\n", n_recs, variant, n_sets);
    }
    free(problem_id);
out:
    for (int s = 0; s < n_sets; s++) {
        layer_set_free(&sets[s]);
        ablation_mask_free(&masks[s]);
    }
    free(sets);
    free(masks);
    free(means[0]);
    free(means[1]);
    free(means[2]);
    free(logits);
    free(nll);
    free(tokens_kept);
    forcer_free(&f);
    generations_free(recs, n_recs);
    csv_free(&events);
    if (tok) tokenizer_free(tok);
    if (loaded) model_free(&m);
    config_free(&c);
    return err.msg[0] ? fail(&err) : 0;
}

// bt merge --stage collateral-damage: every shard's raw sums in record order, then the summarizing half.
int merge_collateral_damage(const Config *c, const Run *run, Err *err) {
    char **files = NULL;
    ShardInfo info;
    ModelConfig mc;
    int n = 0, n_sets = 1 + c->random_draws;
    if (model_config_read(c->model_path, &mc, err) ||
        analysis_shards(c, run, ART_COLLATERAL, "collateral-damage", 0, collateral_inputs, &files,
                        &n, &info, err))
        return -1;
    int n_recs = info.items, rc = 0;
    LayerSet *sets = xcalloc((size_t)n_sets, sizeof *sets);
    for (int s = 0; s < n_sets && rc == 0; s++) rc = ablation_design_read(run, mc.n_layers, s, &sets[s], err);
    char **conditions = collateral_conditions(n_sets);
    ItemTable t = {0};
    if (rc == 0)
        rc = item_table_read(files, n, n_recs, COLLATERAL_SHARD_HEADER, 3, (const char *const *)conditions, n_sets + 1,
                             &t, err);
    const char **problem_id = xcalloc((size_t)n_recs + 1, sizeof *problem_id);
    double *tokens_kept = xcalloc((size_t)n_recs + 1, sizeof *tokens_kept);
    double *nll = xcalloc((size_t)n_recs * (n_sets + 1) + 1, sizeof *nll);
    for (int r = 0; r < n_recs && rc == 0; r++) {
        int first = r * (n_sets + 1);
        problem_id[r] = item_cell(&t, first, 1);
        for (int k = 0; k <= n_sets && rc == 0; k++) {
            int key = first + k;
            double tokens;
            if (item_double(&t, key, 2, &tokens) || item_double(&t, key, 4, &nll[key]))
                rc = err_input(err, "%s:%d: tokens or nll is not a number", files[t.file_of[key]], t.row_of[key] + 2);
            else if (k == 0)
                tokens_kept[r] = tokens;
            else if (tokens != tokens_kept[r] || strcmp(item_cell(&t, key, 1), problem_id[r]))
                rc = err_input(err, "%s:%d: completion %d's tokens or problem differs from its other rows",
                               files[t.file_of[key]], t.row_of[key] + 2, r);
        }
    }
    if (rc == 0) rc = collateral_summarize(c, run, info.what, sets, n_sets, n_recs, problem_id, tokens_kept, nll, err);
    if (rc == 0) printf("merge: collateral-damage of %s: %d shards, %d completions\n", info.what, n, n_recs);
    if (t.csv) item_table_free(&t);
    for (int s = 0; s < n_sets; s++) layer_set_free(&sets[s]);
    free(sets);
    free(problem_id);
    free(tokens_kept);
    free(nll);
    names_free(conditions, n_sets + 1);
    shard_set_free(files, n);
    shard_info_free(&info);
    return rc;
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
    if (!exists_or_sharded(path))
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
    static const char *const cols[] = {"kind",   "variant",      "condition",    "problem_id",
                                       "sample", "token_offset", "prompt_tokens"};
    int col[7], rc = 0;
    for (int i = 0; i < 7 && rc == 0; i++)
        if ((col[i] = csv_col(&csv, cols[i])) < 0)
            rc = err_input(err, "%s: no column '%s' (written by another version? run detect-events again)", path,
                           cols[i]);
    for (int r = 0; r < csv.n_rows && rc == 0; r++) {
        if (strcmp(csv_cell(&csv, r, col[0]), kind) || strcmp(csv_cell(&csv, r, col[1]), variant) ||
            strcmp(csv_cell(&csv, r, col[2]), "baseline"))
            continue;
        int rec = -1, sample = atoi(csv_cell(&csv, r, col[4])), k = atoi(csv_cell(&csv, r, col[5]));
        for (int i = 0; i < s->n_own && rec < 0; i++)
            if (s->records[i].sample == sample && strcmp(s->records[i].problem_id, csv_cell(&csv, r, col[3])) == 0)
                rec = i;
        const GenRecord *g = rec >= 0 ? &s->records[rec] : NULL;
        if (!g || atoi(csv_cell(&csv, r, col[6])) != g->prompt_tokens || k < 0 || k > g->n_completion) {
            rc = err_input(
                err, "%s:%d: %s of problem %s sample %d does not fit the generations of %s (run detect-events again)",
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
static int steer_set_load(const Config *c, const Run *run, const Tokenizer *tok, const char *variant, SteerSet *s,
                          Err *err) {
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
    for (int r = 0; r < s->n_records; r++)
        mark[r] = xcalloc((size_t)(s->records[r].prompt_tokens + s->records[r].n_completion + 1), 1);
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
    if (c->steer_positives == STEER_POSITIVES_EVENTS)
        rc = mark_windows(c, run, variant, "event", s, mark, STEER_POS, err);
    if (rc == 0 && strcmp(neg, "controls") == 0) rc = mark_windows(c, run, variant, "control", s, mark, STEER_NEG, err);
    int *fold = xmalloc((size_t)(s->n_records + 1) * sizeof *fold),
        *order = xmalloc((size_t)(s->n_records + 1) * sizeof *order);
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
        rc = err_input(err, "%s: [steering] %s = %s gives no positions in run %s (variant %s%s)", c->file,
                       no_pos ? "positives" : "negatives",
                       no_pos ? (c->steer_positives == STEER_POSITIVES_EVENTS ? "events" : "thinking") : neg, run->id,
                       no_pos        ? variant
                       : neg_variant ? neg_variant
                                     : variant,
                       (no_pos ? c->steer_positives == STEER_POSITIVES_EVENTS : strcmp(neg, "controls") == 0)
                           ? " has no events"
                           : " has no thinking text");
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
                rc = err_input(
                    err, "problem %s: the prompt now encodes to %d tokens, the record says %d (tokenizer changed?)",
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

// Exact sums of residuals: each float, scaled by 2^64 and truncated, adds into a 128-bit integer
// without rounding, so the sums do not depend on the order of the completions: shards of any N
// add up to the bits of an unsharded pass. |x| < 2^32 leaves room for 2^31 positions.
typedef __int128 ExactSum;
#define EXACT_SCALE 0x1p64
#define EXACT_LIMIT 0x1p32

typedef struct {
    ExactSum *sum;     // (2 folds, 2 sets, L + 1, hidden)
    ExactSum *sum_all; // (L + 1, hidden) over every read once
    long long count[4], count_all;
    float *kept; // (n_obs, L + 1, hidden) the sampled positions' residuals
} DirSums;

static void dir_sums_init(DirSums *ds, size_t per, int n_obs) {
    memset(ds, 0, sizeof *ds);
    ds->sum = xcalloc(4 * per, sizeof *ds->sum);
    ds->sum_all = xcalloc(per, sizeof *ds->sum_all);
    ds->kept = xcalloc((size_t)(n_obs + 1) * per, sizeof *ds->kept);
}

static void dir_sums_free(DirSums *ds) {
    free(ds->sum);
    free(ds->sum_all);
    free(ds->kept);
    memset(ds, 0, sizeof *ds);
}

static int exact_add(ExactSum *acc, const float *x, size_t n) {
    for (size_t k = 0; k < n; k++) {
        if (!(fabsf(x[k]) < EXACT_LIMIT)) return -1;
        acc[k] += (ExactSum)((double)x[k] * EXACT_SCALE);
    }
    return 0;
}

// The directions pass over completions [first, end) of s: sums, counts, and the residuals of
// the sampled positions among them.
static int directions_pass(const Config *c, const Model *m, const SteerSet *s, int first, int end, const SteerObs *obs,
                           int n_obs, DirSums *ds, Err *err) {
    int L = m->cfg.n_layers, D = m->cfg.hidden_size, max_tokens = 1, rc = 0;
    size_t per = (size_t)(L + 1) * D; // one residual stack
    for (int i = first; i < end; i++)
        if (s->seqs[i].n_tokens > max_tokens) max_tokens = s->seqs[i].n_tokens;
    int n_slots = end - first < c->batch_size ? end - first : c->batch_size;
    Forcer f = {0};
    if (forcer_init(&f, m, n_slots < 1 ? 1 : n_slots, max_tokens, ANALYSIS_MAX_ROWS, err)) return -1;
    float *resid = NULL;
    size_t cap_reads = ANALYSIS_CAPTURE_BYTES / (per * sizeof(float));
    int next_obs = 0;
    for (int s0 = first, n = 0; s0 < end && rc == 0; s0 += n) {
        size_t reads = 0;
        // as many sequences as the capture bound allows (at least one)
        for (n = 0; s0 + n < end && n < n_slots; n++) {
            if (n > 0 && reads + (size_t)s->seqs[s0 + n].n_read > cap_reads) break;
            reads += (size_t)s->seqs[s0 + n].n_read;
        }
        resid = xrealloc(resid, (reads + 1) * per * sizeof *resid); // (reads, L + 1, hidden)
        PassOut pass = {.resid = resid};
        if ((rc = force_group(&f, s->seqs + s0, n, &pass, err))) break;
        for (int i = s0, row = 0; i < s0 + n && rc == 0; i++)
            for (int r = 0; r < s->seqs[i].n_read && rc == 0; r++, row++) {
                const float *x = resid + (size_t)row * per;
                unsigned char cls = s->read_class[i][r];
                int fold = s->seq_fold[i];
                for (int set = 0; set < 2 && rc == 0; set++) {
                    if (!(cls & (set ? STEER_NEG : STEER_POS))) continue;
                    rc = exact_add(ds->sum + (size_t)(2 * fold + set) * per, x, per);
                    ds->count[2 * fold + set]++;
                }
                if (rc == 0) rc = exact_add(ds->sum_all, x, per);
                if (rc) {
                    rc = err_runtime(err, "directions: a residual of problem %s is not finite or exceeds 2^32 in size",
                                     s->records[s->seq_record[i]].problem_id);
                    break;
                }
                ds->count_all++;
                for (;
                     next_obs < n_obs && (obs[next_obs].seq < i || (obs[next_obs].seq == i && obs[next_obs].read < r));
                     next_obs++) {}
                for (int o = next_obs; o < n_obs && obs[o].seq == i && obs[o].read == r; o++)
                    memcpy(ds->kept + (size_t)o * per, x, per * sizeof *ds->kept);
            }
        progress("directions: %d/%d completions\n", s0 + n - first, end - first);
    }
    free(resid);
    forcer_free(&f);
    return rc;
}

// The summarizing half of directions (the merge of its shards runs it too): the directions, the
// held-out AUROC of each layer, directions.csv and directions.safetensors.
static int directions_write(const Config *c, const Run *run, const char *variant, const SteerSet *s,
                            const SteerObs *obs, int n_obs, const DirSums *ds, int L, int D, Err *err) {
    size_t per = (size_t)(L + 1) * D;
    double *sum = xmalloc(4 * per * sizeof *sum);       // (2 folds, 2 sets, L + 1, hidden)
    double *dir = xmalloc(per * sizeof *dir);           // (L + 1, hidden)
    double *fold_dir = xmalloc(per * sizeof *fold_dir); // (L + 1, hidden) the other fold's direction
    double *score = xmalloc((size_t)(n_obs + 1) * (L + 1) * sizeof *score); // (L + 1, n_obs) held-out projections
    float *directions = xmalloc(per * sizeof *directions), *mean_norm = xmalloc((size_t)(L + 1) * sizeof *mean_norm);
    for (size_t k = 0; k < 4 * per; k++) sum[k] = (double)ds->sum[k] / EXACT_SCALE;
    const long long *count = ds->count;
    // Each fold's positions are scored on the other fold's direction.
    for (int fold = 0; fold < 2; fold++) {
        steer_diff(sum, count, 1 - fold, per, fold_dir);
        for (int o = 0; o < n_obs; o++)
            if (s->seq_fold[obs[o].seq] == fold)
                steer_project(ds->kept + (size_t)o * per, fold_dir, L, D, score + o, n_obs);
    }
    steer_diff(sum, count, 2, per, dir);
    for (size_t k = 0; k < per; k++) directions[k] = (float)dir[k];
    double *auc = xmalloc((size_t)(L + 1) * 3 * sizeof *auc); // (L + 1, 3) est, lo, hi
    double *obs_score = xmalloc((size_t)(n_obs + 1) * sizeof *obs_score);
    unsigned char *obs_pos = xmalloc((size_t)(n_obs + 1));
    int *obs_seq = xmalloc((size_t)(n_obs + 1) * sizeof *obs_seq), best = -1;
    for (int l = 0; l <= L; l++) {
        double mean_sq = 0;
        for (int d = 0; d < D; d++) {
            double v = (double)ds->sum_all[(size_t)l * D + d] / EXACT_SCALE / (double)ds->count_all;
            mean_sq += v * v;
        }
        mean_norm[l] = (float)sqrt(mean_sq);
        int n_finite = 0;
        for (int o = 0; o < n_obs; o++) {
            double v = score[(size_t)l * n_obs + o];
            if (v != v) continue;
            obs_score[n_finite] = v, obs_pos[n_finite] = obs[o].is_pos, obs_seq[n_finite++] = obs[o].seq;
        }
        Interval a = auroc_cluster_bootstrap95(obs_score, obs_pos, obs_seq, n_finite, s->n_seqs, STEER_AUROC_RESAMPLES,
                                               seed_mix(seed_mix((uint64_t)c->seed, STEER_AUROC_STREAM), (uint64_t)l));
        auc[3 * l] = a.est, auc[3 * l + 1] = a.lo, auc[3 * l + 2] = a.hi;
        // [steering] layer = auto steers a residual the blocks still read: layers 0 .. L-1.
        if (l < L && a.est == a.est && (best < 0 || a.est > auc[3 * best])) best = l;
    }
    free(obs_score);
    free(obs_pos);
    free(obs_seq);
    Buf csv = {0};
    buf_puts(&csv,
             "run_id,variant,positives,negatives,layer,norm,mean_norm,relative_norm,cos_prev,top_dim,top_component,"
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
        buf_printf(&csv, "%s,", run->id);
        buf_csv_field(&csv, variant, strlen(variant));
        buf_printf(&csv, ",%s,", c->steer_positives == STEER_POSITIVES_EVENTS ? "events" : "thinking");
        buf_csv_field(&csv, c->steer_negatives, strlen(c->steer_negatives));
        buf_printf(&csv, ",%d", l);
        put_num(&csv, norm);
        put_num(&csv, mean_norm[l]);
        put_num(&csv, mean_norm[l] > 0 ? norm / mean_norm[l] : NAN);
        put_num(&csv, prev && norm > 0 && prev_norm > 0 ? dot / (norm * prev_norm) : NAN);
        buf_printf(&csv, ",%d", top);
        put_num(&csv, norm > 0 ? v[top] / norm : NAN);
        buf_printf(&csv, ",%lld,%lld,%d", count[0] + count[2], count[1] + count[3], s->n_seqs);
        put_num(&csv, auc[3 * l]);
        put_num(&csv, auc[3 * l + 1]);
        put_num(&csv, auc[3 * l + 2]);
        buf_printf(&csv, ",%d\n", l == best);
    }
    double best_auroc = best >= 0 ? auc[3 * best] : NAN;
    const char *names[2] = {"directions", "mean_norm"};
    Tensor tensors[2] = {{directions, DT_F32, L + 1, D, NULL}, {mean_norm, DT_F32, 1, L + 1, NULL}};
    char path[1200];
    run_path(run, path, sizeof path, ART_DIRECTIONS_CSV);
    int rc = write_file_atomic(path, csv.data, csv.len, err);
    run_path(run, path, sizeof path, ART_DIRECTIONS);
    if (rc == 0) rc = safetensors_write(path, names, tensors, 2, err);
    if (rc == 0) {
        printf("directions: %d completions, %lld positive and %lld negative positions, %d layers", s->n_seqs,
               count[0] + count[2], count[1] + count[3], L + 1);
        if (best >= 0)
            printf("; best held-out AUROC %.3f at layer %d\n", best_auroc, best);
        else
            printf("; no held-out AUROC (a fold lacks positives or negatives)\n");
    }
    free(auc);
    free(sum);
    free(dir);
    free(fold_dir);
    free(score);
    free(directions);
    free(mean_norm);
    buf_free(&csv);
    return rc;
}

// A directions shard (analysis/directions.shard-KKK-of-NNN.bin): one text line, then the exact sums
// (5 (L + 1) hidden 16-byte integers in this machine's byte order), the kept positions' indices
// among the sample (int32) and their residuals (float32, (n_kept, L + 1, hidden)).
#define DIRECTIONS_SHARDS "analysis/directions.bin" // never written: the name its shards derive from
#define DIR_SHARD_HEADER                                                                                               \
    "bt directions shard 1: layers %d hidden %d completions %d of %d from %d obs %d of %d "                            \
    "counts %lld %lld %lld %lld %lld\n"

static int directions_shard_write(const char *path, const SteerSet *s, int first, int end, const SteerObs *obs,
                                  int n_obs, const DirSums *ds, int L, int D, Err *err) {
    size_t per = (size_t)(L + 1) * D;
    int n_kept = 0;
    for (int o = 0; o < n_obs; o++) n_kept += obs[o].seq >= first && obs[o].seq < end;
    Buf b = {0};
    buf_printf(&b, DIR_SHARD_HEADER, L, D, end - first, s->n_seqs, first, n_kept, n_obs, ds->count[0], ds->count[1],
               ds->count[2], ds->count[3], ds->count_all);
    buf_append(&b, ds->sum, 4 * per * sizeof *ds->sum);
    buf_append(&b, ds->sum_all, per * sizeof *ds->sum_all);
    for (int o = 0; o < n_obs; o++)
        if (obs[o].seq >= first && obs[o].seq < end) {
            int32_t idx = o;
            buf_append(&b, &idx, sizeof idx);
        }
    for (int o = 0; o < n_obs; o++)
        if (obs[o].seq >= first && obs[o].seq < end) buf_append(&b, ds->kept + (size_t)o * per, per * sizeof *ds->kept);
    int rc = write_file_atomic(path, b.data, b.len, err);
    buf_free(&b);
    return rc;
}

// Adds one shard file into ds (its sums, counts and kept residuals); every sample index once.
static int directions_shard_add(const char *path, const SteerSet *s, const SteerObs *obs, int n_obs, int L, int D,
                                unsigned char *seen, DirSums *ds, Err *err) {
    size_t per = (size_t)(L + 1) * D;
    Buf b = {0};
    if (read_file(path, &b, err)) return -1;
    const char *nl = b.len ? memchr(b.data, '\n', b.len < 512 ? b.len : 512) : NULL;
    int l, d, n_seq, n_all, first, n_kept, n_obs_file, rc = 0;
    long long cnt[5];
    char line[600];
    snprintf(line, sizeof line, "%.*s", nl ? (int)(nl - b.data + 1) : 0, nl ? b.data : "");
    int got = nl ? sscanf(line, DIR_SHARD_HEADER, &l, &d, &n_seq, &n_all, &first, &n_kept, &n_obs_file, &cnt[0],
                          &cnt[1], &cnt[2], &cnt[3], &cnt[4])
                 : 0;
    size_t head = nl ? (size_t)(nl - b.data) + 1 : 0;
    if (got != 12)
        rc = err_input(err, "%s:1: not a directions shard", path);
    else if (l != L || d != D || n_all != s->n_seqs || n_obs_file != n_obs || first < 0 || n_seq < 0 ||
             first + n_seq > n_all || n_kept < 0 || n_kept > n_obs)
        rc = err_input(err,
                       "%s:1: a shard of another model or of other completions (layers %d, hidden %d, %d completions, "
                       "%d sampled positions; want %d, %d, %d, %d)",
                       path, l, d, n_all, n_obs_file, L, D, s->n_seqs, n_obs);
    else if (b.len - head != 5 * per * sizeof(ExactSum) + (size_t)n_kept * (sizeof(int32_t) + per * sizeof(float)))
        rc = err_input(err, "%s: %zu bytes after the header line, not the %zu its header says (torn or foreign)", path,
                       b.len - head,
                       5 * per * sizeof(ExactSum) + (size_t)n_kept * (sizeof(int32_t) + per * sizeof(float)));
    if (rc == 0) {
        const char *at = b.data + head;
        ExactSum v;
        for (size_t k = 0; k < 4 * per; k++, at += sizeof v) memcpy(&v, at, sizeof v), ds->sum[k] += v;
        for (size_t k = 0; k < per; k++, at += sizeof v) memcpy(&v, at, sizeof v), ds->sum_all[k] += v;
        for (int i = 0; i < 4; i++) ds->count[i] += cnt[i];
        ds->count_all += cnt[4];
        const char *res = at + (size_t)n_kept * sizeof(int32_t);
        for (int i = 0; i < n_kept && rc == 0; i++) {
            int32_t o;
            memcpy(&o, at + (size_t)i * sizeof o, sizeof o);
            if (o < 0 || o >= n_obs || seen[o] || obs[o].seq < first || obs[o].seq >= first + n_seq)
                rc = err_input(err, "%s: sampled position %d is not one of this shard's or comes twice", path, (int)o);
            else
                seen[o] = 1,
                memcpy(ds->kept + (size_t)o * per, res + (size_t)i * per * sizeof(float), per * sizeof(float));
        }
    }
    buf_free(&b);
    return rc;
}

int cmd_directions(int argc, char **argv) {
    Opt opts[] = {OPT_CONFIG,
                  OPT("--variant", 1, "variant whose completions hold the positives (default [logit_lens] variant)"),
                  OPT_SHARD, OPT_END};
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
    SteerObs *obs = NULL;
    DirSums ds = {0};
    Shard shard;
    char path[1200], shard_path[1300];
    if (shard_parse(opt_str(opts, "--shard", NULL), &shard, &err)) goto out;
    if (!config_variant(&c, variant)) {
        err_input(&err, "%s: no [variant.%s] section", c.file, variant);
        goto out;
    }
    snprintf(path, sizeof path, "%s/tokenizer.json", c.model_path);
    if (tokenizer_load(&tok, path, &err) || model_load(&m, c.model_path, &err)) goto out;
    loaded = 1;
    if (steer_set_load(&c, &run, tok, variant, &s, &err)) goto out;
    int L = m.cfg.n_layers, D = m.cfg.hidden_size, n_obs, first, end;
    obs = steer_sample(&s, c.seed, &n_obs);
    shard_range(&shard, s.n_seqs, NULL, &first, &end); // a shard takes its share of the completions (both folds' order)
    ShardInfo info = {"directions", variant, s.n_seqs, n_obs, analysis_digest(&c, &run, variant, 0, NULL), 0, NULL};
    run_path(&run, path, sizeof path, DIRECTIONS_SHARDS);
    if (shard.n && shard_done(&run, path, &shard, &info)) {
        printf("directions: shard %d/%d is already there\n", shard.k, shard.n);
        goto out;
    }
    if (shard.n && shard_begin(&run, path, &shard, &info, &err)) goto out;
    dir_sums_init(&ds, (size_t)(L + 1) * D, n_obs);
    if (directions_pass(&c, &m, &s, first, end, obs, n_obs, &ds, &err)) goto out;
    if (shard.n) {
        shard_file(path, &shard, shard_path, sizeof shard_path);
        if (directions_shard_write(shard_path, &s, first, end, obs, n_obs, &ds, L, D, &err) ||
            shard_finish(&run, path, &shard, &info, &err))
            goto out;
        printf("directions: shard %d/%d: %d of %d completions\n", shard.k, shard.n, end - first, s.n_seqs);
        goto out;
    }
    directions_write(&c, &run, variant, &s, obs, n_obs, &ds, L, D, &err);
out:
    free(obs);
    dir_sums_free(&ds);
    steer_set_free(&s);
    if (tok) tokenizer_free(tok);
    if (loaded) model_free(&m);
    config_free(&c);
    return err.msg[0] ? fail(&err) : 0;
}

// bt merge --stage directions: every shard's sums added (exactly), then the summarizing half.
int merge_directions(const Config *c, const Run *run, Err *err) {
    char **files = NULL, path[1200];
    ShardInfo info = {0};
    ModelConfig mc;
    Tokenizer *tok = NULL;
    SteerSet s = {0};
    SteerObs *obs = NULL;
    DirSums ds = {0};
    unsigned char *seen = NULL;
    int n = 0, n_obs = 0, rc;
    snprintf(path, sizeof path, "%s/tokenizer.json", c->model_path);
    rc = model_config_read(c->model_path, &mc, err) ||
                 analysis_shards(c, run, DIRECTIONS_SHARDS, "directions", 0, NULL, &files, &n, &info,
                                 err) ||
                 tokenizer_load(&tok, path, err) || steer_set_load(c, run, tok, info.what, &s, err)
             ? -1
             : 0;
    int L = mc.n_layers, D = mc.hidden_size;
    if (rc == 0) {
        obs = steer_sample(&s, c->seed, &n_obs);
        if (s.n_seqs != info.units || n_obs != info.items)
            rc = err_input(
                err,
                "%s: its shards were made from %d completions and %d sampled positions, the run has %d and %d "
                "now: rerun them",
                files[0], info.units, info.items, s.n_seqs, n_obs);
    }
    if (rc == 0) {
        dir_sums_init(&ds, (size_t)(L + 1) * D, n_obs);
        seen = xcalloc((size_t)n_obs + 1, 1);
    }
    for (int k = 0; k < n && rc == 0; k++) rc = directions_shard_add(files[k], &s, obs, n_obs, L, D, seen, &ds, err);
    for (int o = 0; o < n_obs && rc == 0; o++)
        if (!seen[o]) rc = err_input(err, "%s: sampled position %d is in no shard (rerun them all)", files[0], o);
    if (rc == 0) rc = directions_write(c, run, info.what, &s, obs, n_obs, &ds, L, D, err);
    free(seen);
    free(obs);
    dir_sums_free(&ds);
    steer_set_free(&s);
    if (tok) tokenizer_free(tok);
    if (files) shard_set_free(files, n);
    if (info.stage) shard_info_free(&info);
    return rc;
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
    char **shards = NULL;
    int n_shards = 0;
    if (!path_exists(path) && shard_set(run->id, path, 0, &shards, &n_shards, NULL, &ignored) > 0) // its first record
        for (int k = 0; k < n_shards && text.len == 0; k++)
            if (read_file(shards[k], &text, &ignored)) text.len = 0;
    if (shards) shard_set_free(shards, n_shards);
    if ((text.len || read_file(path, &text, &ignored) == 0) && text.len) {
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
    ",p_vs_baseline,trend_slope,trend_ci_lo,trend_ci_hi,trend_z,trend_p\n"

int cmd_steering_sweep(int argc, char **argv) {
    Opt opts[] = {OPT_CONFIG, OPT("--variant", 1, "one steered variant (default: every [steering] variants)"), OPT_END};
    Err err = {0};
    Config c;
    Run run;
    int exit_code;
    if (stage_open(argc, argv, opts, &c, &run, &exit_code)) return exit_code;
    const char *one = opt_str(opts, "--variant", NULL);
    int n_cond = 2 * c.n_steer_alphas + 1, n_rows_max = n_cond + 1;
    SteerCondition *sc = xmalloc((size_t)n_cond * sizeof *sc);
    steer_conditions(&c, NULL, sc);
    const CompletionGroup **g = xcalloc((size_t)n_rows_max, sizeof *g); // (n_rows_max) baseline, then each condition
    Buf csv = {0};
    if (one && !config_variant(&c, one)) {
        err_input(&err, "%s: no [variant.%s] section", c.file, one);
        goto out;
    }
    buf_puts(&csv, STEERING_SWEEP_HEADER);
    int n_variants = one ? 1 : c.n_steer_variants;
    for (int v = 0; v < n_variants; v++) {
        const char *variant = one ? one : c.steer_variants[v];
        CompletionGroup *groups = NULL;
        int n_groups = 0, n_present = 0;
        Clusters cl = {0};
        if (completions_load(&run, "variant", variant, "condition", &groups, &n_groups, &cl, &err)) {
            groups_free(groups, n_groups);
            clusters_free(&cl);
            goto out;
        }
        for (int k = 0; k < n_rows_max; k++) {
            g[k] = group_find(groups, n_groups, k == 0 ? "baseline" : sc[k - 1].name);
            n_present += k > 0 && g[k];
        }
        if (!g[0] || n_present == 0) {
            err_input(&err,
                      "no %s generations of variant %s in run %s: run generate --condition %s --variant %s, then "
                      "detect-events",
                      g[0] ? "steered" : "baseline", variant, run.id, g[0] ? "steer" : "baseline", variant);
            groups_free(groups, n_groups);
            clusters_free(&cl);
            goto out;
        }
        long long *bt = xcalloc((size_t)n_rows_max, sizeof *bt); // (n_rows_max) completions that backtrack
        for (int k = 0; k < n_rows_max; k++)
            for (int i = 0; g[k] && i < g[k]->n; i++) bt[k] += g[k]->c[i].events > 0;
        // The trend of each steering kind over alpha, the baseline at alpha 0.
        Trend trend[2];
        for (int kind = 0; kind < 2; kind++) {
            double *x = xmalloc((size_t)n_rows_max * sizeof *x);
            long long *k_bt = xmalloc((size_t)n_rows_max * sizeof *k_bt),
                      *n_all = xmalloc((size_t)n_rows_max * sizeof *n_all);
            int m = 0;
            x[m] = 0, k_bt[m] = bt[0], n_all[m++] = g[0]->n;
            for (int k = 1; k < n_rows_max; k++)
                if (g[k] && sc[k - 1].kind == kind) x[m] = sc[k - 1].alpha, k_bt[m] = bt[k], n_all[m++] = g[k]->n;
            trend[kind] = m > 1 ? cochran_armitage(x, k_bt, n_all, m) : (Trend){NAN, NAN, NAN, NAN, NAN};
            free(x), free(k_bt), free(n_all);
        }
        static const char *const kinds[] = {"direction", "random", "project_out"};
        for (int k = 0; k < n_rows_max; k++) {
            if (!g[k]) continue;
            const char *condition = k == 0 ? "baseline" : sc[k - 1].name;
            int kind = k == 0 ? -1 : sc[k - 1].kind;
            buf_printf(&csv, "%s,", run.id);
            buf_csv_field(&csv, variant, strlen(variant));
            buf_printf(&csv, ",%s,%s", condition, kind < 0 ? "baseline" : kinds[kind]);
            put_num(&csv, k == 0 ? 0 : sc[k - 1].alpha);
            buf_printf(&csv, ",%d", k == 0 ? -1 : steered_layer_of(&run, variant, condition));
            Sums sums = sums_of(g[k], cl.n_clusters, NULL);
            group_stats_csv(&csv, g[k], &sums, cl.n_clusters,
                            seed_mix(seed_mix((uint64_t)c.seed, 0x57EE7), (uint64_t)k));
            sums_free(&sums);
            // Steered completions share their sampling seeds with the baseline's: a paired, two-sided test.
            long long yes_no, no_yes;
            mcnemar_counts(g[0], g[k], &yes_no, &no_yes);
            double p = fmin(1, 2 * fmin(mcnemar_p(yes_no, no_yes), mcnemar_p(no_yes, yes_no)));
            put_num(&csv, k ? p : NAN);
            const Trend *t = kind == STEER_DIRECTION || kind == STEER_RANDOM ? &trend[kind] : NULL;
            put_num(&csv, t ? t->slope : NAN);
            put_num(&csv, t ? t->lo : NAN);
            put_num(&csv, t ? t->hi : NAN);
            put_num(&csv, t ? t->z : NAN);
            put_num(&csv, t ? t->p : NAN);
            buf_putc(&csv, '\n');
        }
        printf(
            "steering-sweep: %s: rate at baseline %.3f; trend over alpha: direction %+.3f per unit (p = %.3g), random "
            "%+.3f (p = %.3g)\n",
            variant, (double)bt[0] / g[0]->n, trend[0].slope, trend[0].p, trend[1].slope, trend[1].p);
        free(bt);
        groups_free(groups, n_groups);
        clusters_free(&cl);
    }
    char path[1200];
    run_path(&run, path, sizeof path, ART_STEERING_SWEEP);
    if (write_file_atomic(path, csv.data, csv.len, &err)) goto out;
out:
    free(sc);
    free(g);
    buf_free(&csv);
    config_free(&c);
    return err.msg[0] ? fail(&err) : 0;
}
