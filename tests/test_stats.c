// tests/test_stats.c: statistics against published values and against exact
// values computed independently (python3 fractions/math, noted by each case).
#include "test.h"

#include <stdlib.h>

// Newcombe (1998), Stat Med 17:857, Table I, method 3 (score, no continuity
// correction): published to 4 decimals.
static void t_wilson_newcombe_examples(void) {
    struct { long long k, n; double lo, hi; } cases[] = {
        {81, 263, 0.2553, 0.3662}, {15, 148, 0.0624, 0.1605}, {0, 20, 0.0000, 0.1611}, {1, 29, 0.0061, 0.1718}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        Interval w = wilson95(cases[i].k, cases[i].n);
        CHECK_NEAR(w.lo, cases[i].lo, 5e-5);
        CHECK_NEAR(w.hi, cases[i].hi, 5e-5);
        CHECK_NEAR(w.est, (double)cases[i].k / cases[i].n, 1e-15);
    }
}

static void t_wilson_edges(void) {
    Interval w = wilson95(0, 0); // no trials: no interval
    CHECK(isnan(w.est) && isnan(w.lo) && isnan(w.hi));
    w = wilson95(5, 3); // impossible counts are not an interval either
    CHECK(isnan(w.lo));
    w = wilson95(20, 20); // mirror of 0/20 in Newcombe's table
    CHECK(w.hi == 1.0 && fabs(w.lo - (1 - 0.1611)) < 5e-5);
    w = wilson95(1, 1); // 1/1: the formula reduces to [1 / (1 + z^2), 1] = [0.2065, 1]
    CHECK_NEAR(w.lo, 1 / (1 + Z95 * Z95), 1e-15);
    CHECK(w.hi == 1);
    // the interval narrows as n grows at a fixed rate
    Interval a = wilson95(10, 40), b = wilson95(100, 400), c = wilson95(1000, 4000);
    CHECK(a.hi - a.lo > b.hi - b.lo && b.hi - b.lo > c.hi - c.lo);
    CHECK(c.lo < 0.25 && c.hi > 0.25);
}

static void t_fisher_published_and_exact(void) {
    // Fisher's lady tasting tea: two-sided 0.4857142857 (= 34/70).
    CHECK_NEAR(fisher_exact_p(3, 1, 1, 3), 0.4857142857, 1e-10);
    // Wikipedia's "Fisher's exact test" example (men/women dieting): p = 0.002759.
    CHECK_NEAR(fisher_exact_p(1, 9, 11, 3), 0.002759456185220084, 1e-15);
    // The rest are exact rational sums from python3 fractions with math.comb.
    struct { long long a, b, c, d; double p; } cases[] = {
        {8, 2, 1, 5, 0.03496503496503497},
        {0, 5, 5, 0, 0.007936507936507936},
        {10, 0, 0, 10, 1.082508822446903e-05},
        {2, 7, 8, 2, 0.023014137565221155},
        {7, 12, 0, 9, 0.06213134691395561},
        {0, 0, 0, 0, 1.0},
        {5, 0, 0, 0, 1.0},
        // n in the thousands: log-factorials keep this finite and accurate
        {1000, 2000, 1100, 1900, 0.007364099121621439},
        {30, 2970, 55, 2945, 0.008366911390049598},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        double p = fisher_exact_p(cases[i].a, cases[i].b, cases[i].c, cases[i].d);
        CHECKF(fabs(p - cases[i].p) <= 1e-9 * cases[i].p, "table %zu: p = %.15g, want %.15g", i, p, cases[i].p);
    }
    // symmetric in rows, columns and transposition
    CHECK_NEAR(fisher_exact_p(9, 1, 3, 11), fisher_exact_p(1, 9, 11, 3), 1e-15);
    CHECK_NEAR(fisher_exact_p(1, 11, 9, 3), fisher_exact_p(1, 9, 11, 3), 1e-15);
    CHECK(isnan(fisher_exact_p(-1, 2, 3, 4)));
}

static void t_gamma_q_closed_forms(void) {
    // Q(1, x) = e^-x and Q(1/2, x) = erfc(sqrt x) on both sides of the series/fraction split
    double xs[] = {0.01, 0.3, 1, 1.4, 2.5, 7, 30, 200};
    for (size_t i = 0; i < sizeof xs / sizeof xs[0]; i++) {
        CHECK(fabs(gamma_q(1, xs[i]) - exp(-xs[i])) <= 1e-13 * exp(-xs[i]) + 1e-300);
        CHECK(fabs(gamma_q(0.5, xs[i]) - erfc(sqrt(xs[i]))) <= 1e-12 * erfc(sqrt(xs[i])) + 1e-300);
    }
    CHECK(gamma_q(3, 0) == 1 && isnan(gamma_q(0, 1)) && isnan(gamma_q(1, -1)));
}

static void t_chi2_critical_values(void) {
    // Upper 5% and 1% points from standard chi-square tables (e.g. NIST/SEMATECH e-Handbook 1.3.6.7.4).
    struct { double x, df, p; } cases[] = {
        {3.841459, 1, 0.05}, {5.991465, 2, 0.05}, {11.0705, 5, 0.05}, {18.30704, 10, 0.05},
        {43.77297, 30, 0.05}, {124.3421, 100, 0.05}, {6.634897, 1, 0.01}, {9.210340, 2, 0.01},
        {15.08627, 5, 0.01}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECKF(fabs(chi2_sf(cases[i].x, cases[i].df) - cases[i].p) < 1e-6, "chi2 %g df %g: %.9g", cases[i].x,
               cases[i].df, chi2_sf(cases[i].x, cases[i].df));
    // df = 3 closed form erfc(sqrt(x/2)) + sqrt(2x/pi) e^(-x/2) at x = 1: 0.8012519569012008
    CHECK_NEAR(chi2_sf(1, 3), 0.8012519569012008, 1e-13);
    CHECK(chi2_sf(0, 4) == 1 && isnan(chi2_sf(1, 0)));
}

static void t_chi2_homogeneity_worked(void) {
    // 20/100, 30/100, 45/100: X^2 = 600/41 = 14.634146... exactly (python3 fractions),
    // df 2, p = exp(-X^2 / 2) = 0.0006641030858712747.
    long long k3[] = {20, 30, 45}, n3[] = {100, 100, 100};
    ChiSquare c = chi2_homogeneity(k3, n3, 3);
    CHECK_NEAR(c.stat, 600.0 / 41.0, 1e-11);
    CHECK(c.df == 2 && c.n_groups == 3);
    CHECK_NEAR(c.p, 0.0006641030858712747, 1e-15);
    // Two groups 15/50 vs 25/50: X^2 = 25/6, p = erfc(sqrt(X^2/2)) = 0.041226833337163676;
    // the same as the squared two-proportion z test.
    long long k2[] = {15, 25}, n2[] = {50, 50};
    c = chi2_homogeneity(k2, n2, 2);
    CHECK_NEAR(c.stat, 25.0 / 6.0, 1e-12);
    CHECK(c.df == 1);
    CHECK_NEAR(c.p, 0.041226833337163676, 1e-14);
    // Four groups; X^2 = 15.008973564202536 (fractions), df 3 closed form p = 0.00180899647217478.
    long long k4[] = {12, 5, 9, 20}, n4[] = {40, 38, 41, 39};
    c = chi2_homogeneity(k4, n4, 4);
    CHECK_NEAR(c.stat, 15.008973564202536, 1e-11);
    CHECK_NEAR(c.p, 0.00180899647217478, 1e-13);
    // An empty group carries no information and is left out.
    long long k5[] = {20, 0, 30, 45}, n5[] = {100, 0, 100, 100};
    c = chi2_homogeneity(k5, n5, 4);
    CHECK(c.n_groups == 3 && c.df == 2);
    CHECK_NEAR(c.stat, 600.0 / 41.0, 1e-11);
}

static void t_chi2_homogeneity_degenerate(void) {
    long long zero_k[] = {0, 0, 0}, n[] = {10, 20, 30}, all_k[] = {10, 20, 30}, one_k[] = {4}, one_n[] = {9};
    ChiSquare c = chi2_homogeneity(zero_k, n, 3); // nobody backtracked anywhere
    CHECK(isnan(c.stat) && isnan(c.p) && c.df == 2);
    c = chi2_homogeneity(all_k, n, 3); // everybody did
    CHECK(isnan(c.p));
    c = chi2_homogeneity(one_k, one_n, 1); // one group: nothing to compare
    CHECK(isnan(c.p) && c.df == 0 && c.n_groups == 1);
    c = chi2_homogeneity(NULL, NULL, 0);
    CHECK(isnan(c.p) && c.n_groups == 0);
    long long same_k[] = {5, 10}, same_n[] = {10, 20}; // identical rates: X^2 = 0, p = 1
    c = chi2_homogeneity(same_k, same_n, 2);
    CHECK(c.stat == 0 && c.p == 1);
}

static void t_mean(void) {
    double x[] = {2, 4, 4, 4, 5, 5, 7, 9}; // the textbook example: mean 5
    CHECK_NEAR(mean_of(x, 8), 5, 1e-15);
    CHECK(isnan(mean_of(x, 0)));
}

static void t_bootstrap_known_and_seeded(void) {
    // Two points {0, 1}: the bootstrap mean is 0, 1/2, 1 with probability 1/4, 1/2, 1/4,
    // so the 2.5% and 97.5% points are exactly 0 and 1.
    double two[] = {0, 1};
    Interval b = bootstrap_mean95(two, 2, 4000, 7);
    CHECK(b.est == 0.5 && b.lo == 0 && b.hi == 1);
    // Bernoulli data, n = 400, 100 ones: the bootstrap percentile interval approaches
    // the normal one p +/- 1.96 sqrt(p(1-p)/n) = [0.2076, 0.2924].
    double *x = xmalloc(400 * sizeof *x);
    for (int i = 0; i < 400; i++) x[i] = i % 4 == 0;
    b = bootstrap_mean95(x, 400, STAT_RESAMPLES, 1);
    CHECK_NEAR(b.est, 0.25, 1e-15);
    CHECK_NEAR(b.lo, 0.25 - Z95 * sqrt(0.25 * 0.75 / 400), 0.006);
    CHECK_NEAR(b.hi, 0.25 + Z95 * sqrt(0.25 * 0.75 / 400), 0.006);
    // same seed, same interval bit for bit; another seed, another interval (continuous
    // data, since 0/1 data makes resample means a lattice that different seeds can share)
    double normal[100];
    Rng rng;
    rng_seed(&rng, 99);
    for (int i = 0; i < 100; i++) normal[i] = rng_normal(&rng);
    Interval first = bootstrap_mean95(normal, 100, 1000, 1), again = bootstrap_mean95(normal, 100, 1000, 1),
             other = bootstrap_mean95(normal, 100, 1000, 2);
    CHECK(memcmp(&again, &first, sizeof first) == 0);
    CHECK(other.lo != first.lo && other.hi != first.hi && other.est == first.est);
    // the interval contains the mean and shrinks with n
    Interval small = bootstrap_mean95(x, 40, STAT_RESAMPLES, 1);
    CHECK(small.lo < small.est && small.est < small.hi && b.lo < b.est && b.est < b.hi);
    CHECK(small.hi - small.lo > 2 * (b.hi - b.lo));
    b = bootstrap_mean95(x, 0, 100, 1);
    CHECK(isnan(b.est) && isnan(b.lo) && isnan(b.hi));
    free(x);
}

static void t_binomial_mcnemar(void) {
    // McNemar exact, one-sided: 10 pairs yes -> no against 2 no -> yes:
    // P(X >= 10), X ~ Bin(12, 1/2) = (66 + 12 + 1) / 4096.
    CHECK_NEAR(mcnemar_p(10, 2), 79.0 / 4096.0, 1e-12);
    CHECK(mcnemar_p(0, 0) == 1 && mcnemar_p(0, 5) == 1);
    CHECK_NEAR(mcnemar_p(5, 0), 1.0 / 32, 1e-15);
    CHECK(mcnemar_p(2, 10) > 0.99);
    // Binomial tails: P(X >= 3), X ~ Bin(10, 0.3) = 0.6172172 (1 - pbinom(2, 10, 0.3) in R).
    CHECK_NEAR(binomial_tail_p(3, 10, 0.3), 0.6172172, 1e-7);
    // Far tail: P(X >= 90), X ~ Bin(100, 0.5) = 1.531645e-17 (R), no cancellation.
    CHECK_NEAR(binomial_tail_p(90, 100, 0.5) / 1.531645e-17, 1, 1e-5);
    CHECK(binomial_tail_p(11, 10, 0.5) == 0 && isnan(binomial_tail_p(1, 10, 1.5)));
}

static void t_holm(void) {
    // Holm 1979 step-down: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, made monotone.
    double p[] = {0.01, 0.04, 0.03, 0.005}, a[4];
    holm_adjust(p, 4, a);
    CHECK_NEAR(a[0], 0.03, 1e-15);
    CHECK_NEAR(a[1], 0.06, 1e-15);
    CHECK_NEAR(a[2], 0.06, 1e-15);
    CHECK_NEAR(a[3], 0.02, 1e-15);
    double q[] = {0.5, NAN, 0.9}, b[3];
    holm_adjust(q, 3, b);
    CHECK(b[0] == 1 && isnan(b[1]) && b[2] == 1);
}

// Mean of per-cluster sums: the ratio of weighted sums, as the analyses use it.
typedef struct {
    const double *num, *den;
} RatioCtx;

static double ratio_stat(const void *ctx, const int *w) {
    const RatioCtx *r = ctx;
    double a = 0, b = 0;
    for (int c = 0; c < 6; c++) a += w[c] * r->num[c], b += w[c] * r->den[c];
    return b > 0 ? a / b : NAN;
}

static void t_cluster_bootstrap(void) {
    double num[6] = {1, 2, 3, 4, 5, 6}, den[6] = {10, 10, 10, 10, 10, 10};
    RatioCtx ctx = {num, den};
    double share;
    Interval a = cluster_bootstrap95(ratio_stat, &ctx, 6, 4000, 3, 0.5, &share);
    CHECK_NEAR(a.est, 21.0 / 60, 1e-15);
    CHECK(a.lo < a.est && a.est < a.hi && a.lo >= 0.1 && a.hi <= 0.6);
    CHECK(share > 0 && share < 0.05); // a ratio of 0.5 or more takes mostly the largest clusters
    Interval b = cluster_bootstrap95(ratio_stat, &ctx, 6, 4000, 3, 0.5, NULL);
    CHECK(a.lo == b.lo && a.hi == b.hi); // seeded
    // Identical clusters: every resample gives the estimate.
    double same[6] = {2, 2, 2, 2, 2, 2};
    RatioCtx flat = {same, den};
    Interval c = cluster_bootstrap95(ratio_stat, &flat, 6, 500, 9, 0.2, &share);
    CHECK(c.lo == 0.2 && c.hi == 0.2 && share == 1);
    // Undefined everywhere: no interval, no p-value.
    double zero[6] = {0};
    RatioCtx undefined = {num, zero};
    Interval d = cluster_bootstrap95(ratio_stat, &undefined, 6, 100, 1, 0, &share);
    CHECK(isnan(d.est) && isnan(d.lo) && isnan(share));
}

static void t_normal_quantile(void) {
    CHECK_NEAR(normal_quantile(0.975), Z95, 1e-12);
    CHECK_NEAR(normal_quantile(0.95), 1.6448536269514722, 1e-12);
    CHECK_NEAR(normal_quantile(0.5), 0, 1e-12);
    CHECK_NEAR(normal_quantile(1e-10), -6.361340902404056, 1e-9);
    CHECK(isinf(normal_quantile(1)) && isnan(normal_quantile(2)));
}

const TestCase tests_stats[] = {
    {"stats: wilson matches Newcombe 1998", t_wilson_newcombe_examples},
    {"stats: wilson edges and n = 0", t_wilson_edges},
    {"stats: fisher exact published and exact values", t_fisher_published_and_exact},
    {"stats: upper incomplete gamma closed forms", t_gamma_q_closed_forms},
    {"stats: chi-square table critical values", t_chi2_critical_values},
    {"stats: chi-square homogeneity worked examples", t_chi2_homogeneity_worked},
    {"stats: chi-square homogeneity degenerate cases", t_chi2_homogeneity_degenerate},
    {"stats: mean", t_mean},
    {"stats: bootstrap known values and seeding", t_bootstrap_known_and_seeded},
    {"stats: binomial tails and exact McNemar", t_binomial_mcnemar},
    {"stats: Holm adjustment (Holm 1979)", t_holm},
    {"stats: cluster bootstrap", t_cluster_bootstrap},
    {"stats: normal quantile", t_normal_quantile},
    {0, 0},
};
