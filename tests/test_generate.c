// tests/test_generate.c: the sampler against hand-computed distributions and against a
// plain full-sort implementation of Hugging Face's temperature, top-k and top-p warpers.
#include "test.h"

#include <stdlib.h>

// Temperature 0.5, top-k 3, top-p 0.9 on six logits, worked by hand:
// logits / T = [4, 2, 1, 1, -2, 6]; top-k 3 keeps the ids with 6, 4, 2 (ids 5, 0, 1);
// their softmax is [1, e^-2, e^-4] / (1 + e^-2 + e^-4) = [0.8668, 0.1173, 0.0159];
// top-p 0.9 keeps ids 5 and 0 (0.8668 < 0.9 <= 0.9841); renormalised: 1 / (1 + e^-2) and e^-2 / (1 + e^-2).
static void t_sampler_hand_computed(void) {
    const float logits[6] = {2.0f, 1.0f, 0.5f, 0.5f, -1.0f, 3.0f};
    Sampler s = {.temperature = 0.5, .top_k = 3, .top_p = 0.9};
    SampleCandidate out[6];
    int n = sampler_filter(&s, logits, 6, out);
    CHECK(n == 2);
    CHECK(out[0].id == 5 && out[1].id == 0);
    CHECK_NEAR(out[0].prob, 1 / (1 + exp(-2.0)), 1e-6);
    CHECK_NEAR(out[1].prob, exp(-2.0) / (1 + exp(-2.0)), 1e-6);
    // Without top-k the six weights are [e^-2, e^-4, e^-5, e^-5, e^-8, 1]: id 5 alone holds 0.857 of the mass,
    // with id 0 0.972, so top-p 0.9 keeps the same two with the same renormalised probabilities.
    s.top_k = 0;
    n = sampler_filter(&s, logits, 6, out);
    CHECK(n == 2 && out[0].id == 5 && out[1].id == 0);
    CHECK_NEAR(out[1].prob, exp(-2.0) / (1 + exp(-2.0)), 1e-6);
    // top-p 1 and top-k off: plain softmax at temperature 1 over all six.
    s = (Sampler){.temperature = 1, .top_k = 0, .top_p = 1};
    n = sampler_filter(&s, logits, 6, out);
    double z = 0;
    for (int i = 0; i < 6; i++) z += exp(logits[i]);
    CHECK(n == 6);
    for (int i = 0; i < n; i++) CHECK_NEAR(out[i].prob, exp(logits[out[i].id]) / z, 1e-6);
    // top-k keeps every token tied with the k-th largest logit, as torch.topk's threshold does.
    const float tied[4] = {1.0f, 0.0f, 1.0f, 1.0f};
    s = (Sampler){.temperature = 1, .top_k = 2, .top_p = 1};
    n = sampler_filter(&s, tied, 4, out);
    CHECK(n == 3);
    for (int i = 0; i < n; i++) CHECK(out[i].id != 1 && fabs(out[i].prob - 1.0 / 3) < 1e-9);
    CHECK(out[0].id == 0 && out[1].id == 2 && out[2].id == 3); // equal weights: lower id first
}

// The reference: every candidate sorted, then top-k and top-p applied in HF's order.
typedef struct {
    int id;
    float logit, weight;
} RefCandidate;

static int cmp_ref(const void *a, const void *b) {
    const RefCandidate *x = a, *y = b;
    if (x->weight != y->weight) return x->weight < y->weight ? 1 : -1;
    return x->id - y->id;
}

static int reference_filter(const Sampler *s, const float *logits, int vocab, RefCandidate *c, double *prob) {
    float max = logits[0];
    for (int i = 1; i < vocab; i++)
        if (logits[i] > max) max = logits[i];
    int n = 0;
    double sum = 0;
    for (int i = 0; i < vocab; i++) {
        double z = (logits[i] - max) / s->temperature;
        if (z < -40) continue;
        c[n++] = (RefCandidate){i, logits[i], (float)exp(z)};
        sum += exp(z);
    }
    qsort(c, (size_t)n, sizeof *c, cmp_ref);
    if (s->top_k > 0 && s->top_k < n) {
        int keep = s->top_k;
        while (keep < n && c[keep].logit == c[s->top_k - 1].logit) keep++;
        if (keep < n) {
            n = keep;
            sum = 0;
            for (int i = 0; i < n; i++) sum += c[i].weight;
        }
    }
    double cum = 0;
    int keep = 0;
    while (keep < n) {
        cum += c[keep++].weight / sum;
        if (cum >= s->top_p) break;
    }
    double kept = 0;
    for (int i = 0; i < keep; i++) kept += c[i].weight;
    for (int i = 0; i < keep; i++) prob[i] = c[i].weight / kept;
    return keep;
}

// sampler_filter sorts only the best few candidates; it must give exactly what a full sort gives.
static void t_sampler_matches_full_sort(void) {
    enum { VOCAB = 3000, TRIALS = 300 };
    float *logits = xmalloc(VOCAB * sizeof *logits);
    SampleCandidate *out = xmalloc(VOCAB * sizeof *out);
    RefCandidate *ref = xmalloc(VOCAB * sizeof *ref);
    double *prob = xmalloc(VOCAB * sizeof *prob);
    Rng rng;
    rng_seed(&rng, 77);
    int mismatches = 0, long_tails = 0;
    for (int t = 0; t < TRIALS; t++) {
        double spread = t % 3 == 0 ? 0.5 : t % 3 == 1 ? 4 : 15; // flat, middling and peaked distributions
        for (int i = 0; i < VOCAB; i++) // coarse values, so ties happen
            logits[i] = (float)(floor(rng_normal(&rng) * spread * 8) / 8);
        Sampler s = {.temperature = t % 2 ? 0.6 : 1.0, .top_k = (int[]){0, 1, 20, 50, 2999}[t % 5],
                     .top_p = (double[]){1.0, 0.95, 0.5, 0.999}[t % 4]};
        int n = sampler_filter(&s, logits, VOCAB, out), n_ref = reference_filter(&s, logits, VOCAB, ref, prob);
        long_tails += n > 64;
        int same = n == n_ref;
        for (int i = 0; same && i < n; i++) same = out[i].id == ref[i].id && out[i].prob == prob[i];
        if (!same && mismatches++ < 3) CHECKF(0, "trial %d: %d kept, reference %d", t, n, n_ref);
    }
    CHECKF(long_tails > 10, "only %d trials kept more than the first sorted block", long_tails);
    free(logits);
    free(out);
    free(ref);
    free(prob);
}

// Draws follow the filtered distribution; temperature 0 is the first of equal maxima.
static void t_sample_token_frequencies(void) {
    const float logits[6] = {2.0f, 1.0f, 0.5f, 0.5f, -1.0f, 3.0f};
    Sampler s = {.temperature = 0.5, .top_k = 3, .top_p = 0.9};
    SampleCandidate scratch[6];
    Rng rng;
    rng_seed(&rng, 5);
    enum { DRAWS = 20000 };
    int count[6] = {0};
    for (int i = 0; i < DRAWS; i++) count[sample_token(&s, logits, 6, &rng, scratch)]++;
    double p = 1 / (1 + exp(-2.0)), sd = sqrt(p * (1 - p) / DRAWS);
    CHECK(count[0] + count[5] == DRAWS);
    CHECKF(fabs((double)count[5] / DRAWS - p) < 4 * sd, "id 5 drawn %d of %d, expected p %.4f", count[5], DRAWS, p);
    const float flat[3] = {1.0f, 3.0f, 3.0f};
    Sampler greedy = {.temperature = 0};
    CHECK(sample_token(&greedy, flat, 3, &rng, scratch) == 1);
}

const TestCase tests_generate[] = {
    {"sampler: temperature, top-k, top-p against a hand-computed distribution", t_sampler_hand_computed},
    {"sampler: the same tokens and probabilities as sorting every candidate", t_sampler_matches_full_sort},
    {"sampler: draws follow the filtered distribution; greedy at temperature 0", t_sample_token_frequencies},
    {0},
};
