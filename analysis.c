// analysis.c: statistics, then (not built yet) logit lens, ablation scan,
// condition comparison, formatting sweep.
#include "bt.h"

#include <math.h>
#include <stdlib.h>

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
// Commands

int cmd_logit_lens(int argc, char **argv) { return not_built(argc, argv); }
int cmd_ablation_scan(int argc, char **argv) { return not_built(argc, argv); }
int cmd_compare_conditions(int argc, char **argv) { return not_built(argc, argv); }
int cmd_formatting_sweep(int argc, char **argv) { return not_built(argc, argv); }
