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



// Writes a figure into the run and copies it to [report] figures_dir.
static int publish_figure(const Config *c, const Run *run, const char *name, Err *err) {
    char from[1200], to[1200];
    run_path(run, from, sizeof from, "figures/");
    snprintf(from + strlen(from), sizeof from - strlen(from), "%s", name);
    snprintf(to, sizeof to, "%s/%s", c->figures_dir, name);
    return copy_file_atomic(from, to, err);
}

static void figure_path(const Run *run, const char *name, char *out, size_t n) {
    run_path(run, out, n, "figures/");
    snprintf(out + strlen(out), n - strlen(out), "%s", name);
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
    for (int v = 0; v < c->n_variant_defs; v++) {
        for (int k = 0; k < 3; k++) {
            char path[1200];
            run_generation_path(run, path, sizeof path, c->variant_defs[v].name, conditions[k]);
            if (!path_exists(path)) continue;
            files = xrealloc(files, (size_t)(n + 1) * sizeof *files);
            files[n++] = xstrdup(path);
        }
    }
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

// The two figures detect-events has the data for: the baseline backtracking
// rate per variant, and accuracy with vs without backtracking per group.
static int detect_figures(const Config *c, const Run *run, const RunEvents *ev, Err *err) {
    int n = ev->n_records;
    const char **names = xcalloc((size_t)(c->n_variant_defs + n + 1), sizeof *names);
    char **groups = xcalloc((size_t)(n + 1), sizeof *groups);
    long long *bt_k = xcalloc((size_t)(n + 1), sizeof *bt_k), *total = xcalloc((size_t)(n + 1), sizeof *total);
    long long *correct_bt = xcalloc((size_t)(n + 1), sizeof *correct_bt), *n_bt = xcalloc((size_t)(n + 1), sizeof *n_bt);
    long long *correct_nobt = xcalloc((size_t)(n + 1), sizeof *correct_nobt), *n_nobt = xcalloc((size_t)(n + 1), sizeof *n_nobt);
    int n_names = 0, n_groups = 0;
    for (int v = 0; v < c->n_variants; v++) { // baseline rate per configured variant that was generated
        long long k = 0, m = 0;
        for (int r = 0; r < n; r++)
            if (strcmp(ev->records[r].variant, c->variants[v]) == 0 && strcmp(ev->records[r].condition, "baseline") == 0) {
                m++;
                k += ev->first_event[r + 1] > ev->first_event[r];
            }
        if (m == 0) continue;
        names[n_names] = c->variants[v];
        bt_k[n_names] = k;
        total[n_names++] = m;
    }
    for (int r = 0; r < n; r++) { // accuracy per variant / condition group, in reading order
        int g = 0;
        char label[300];
        snprintf(label, sizeof label, "%s / %s", ev->records[r].variant, ev->records[r].condition);
        while (g < n_groups && strcmp(groups[g], label) != 0) g++;
        if (g == n_groups) groups[n_groups++] = xstrdup(label);
        int has_bt = ev->first_event[r + 1] > ev->first_event[r];
        (has_bt ? n_bt : n_nobt)[g]++;
        (has_bt ? correct_bt : correct_nobt)[g] += ev->records[r].correct;
    }
    char path[1200], note[256];
    snprintf(note, sizeof note, "run %s; baseline completions; error bars: Wilson 95%% CI", run->id);
    figure_path(run, FIG_RATE_BY_VARIANT, path, sizeof path);
    int rc = fig_rate_by_variant(path, names, bt_k, total, n_names, note, err);
    if (rc == 0) rc = publish_figure(c, run, FIG_RATE_BY_VARIANT, err);
    snprintf(note, sizeof note, "run %s; completions with >= 1 event vs none; Wilson 95%% CI", run->id);
    figure_path(run, FIG_BT_VS_ACCURACY, path, sizeof path);
    if (rc == 0) rc = fig_bt_vs_accuracy(path, (const char *const *)groups, correct_bt, n_bt, correct_nobt, n_nobt, n_groups, note, err);
    if (rc == 0) rc = publish_figure(c, run, FIG_BT_VS_ACCURACY, err);
    for (int g = 0; g < n_groups; g++) free(groups[g]);
    free(groups); free(names); free(bt_k); free(total); free(correct_bt); free(n_bt); free(correct_nobt); free(n_nobt);
    return rc;
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
        buf_puts(&js, ", \"accuracy_with_backtracking\": ");
        buf_json_double(&js, with_bt ? (double)correct_bt / with_bt : NAN);
        buf_puts(&js, ", \"accuracy_without_backtracking\": ");
        buf_json_double(&js, n - with_bt ? (double)(correct - correct_bt) / (n - with_bt) : NAN);
        buf_putc(&js, '}');
    }
    buf_puts(&js, "\n  ]\n}\n");
    run_path(&run, path, sizeof path, ART_SUMMARY);
    int wrc = write_file_atomic(path, js.data, js.len, &err);
    buf_free(&js);
    if (wrc || detect_figures(&c, &run, &ev, &err)) goto out;
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
        long long s;
        if (csv_int(events, r, sample, 0, INT_MAX, &s, err)) return -1;
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
    long long bt_k[3], nn[3];
    for (int k = 0; k < 3; k++) {
        bt_k[k] = g[k].with_bt;
        nn[k] = g[k].n;
    }
    char note[256];
    snprintf(note, sizeof note, "%s, run %s; Fisher p targeted vs baseline %.3g, vs random %.3g", variant, run.id, p_vs_baseline, p_vs_random);
    figure_path(&run, FIG_RATE_BY_CONDITION, path, sizeof path);
    if (fig_rate_by_condition(path, conditions, bt_k, nn, 3, note, &err) || publish_figure(&c, &run, FIG_RATE_BY_CONDITION, &err)) goto out;
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
    long long *bt_k = xcalloc((size_t)nv, sizeof *bt_k), *nn = xcalloc((size_t)nv, sizeof *nn), *correct = xcalloc((size_t)nv, sizeof *correct);
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
        correct[used] = g[used].correct;
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
    char note[256];
    snprintf(note, sizeof note, "run %s; chi-square across variants %.3g (df %d), p = %.3g", run.id, chi.stat, chi.df, chi.p);
    figure_path(&run, FIG_FORMATTING, path, sizeof path);
    if (fig_formatting_effect(path, names, bt_k, nn, correct, used, note, &err) || publish_figure(&c, &run, FIG_FORMATTING, &err)) goto out;
    printf("formatting-sweep: %d variants, chi-square %.3g (df %d) p = %.3g, max/min rate ratio %.3g\n", used, chi.stat, chi.df, chi.p, ratio);
    if (used < nv) progress("formatting-sweep: %d of %d variants have no baseline generations and are left out\n", nv - used, nv);
out:
    for (int v = 0; v < nv; v++) {
        generations_free(recs[v], n[v]);
        free(n_events[v]);
    }
    free(recs); free(n); free(n_events); free(g); free(bt_k); free(nn); free(correct); free(names);
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
    int record;       // completion
    int *tokens;      // (n_tokens) prompt + completion up to the last pred_pos read
    int n_tokens;
    int *read_pos;    // (n_read) increasing
    int n_read;
} Seq;

typedef struct {
    GenRecord *records; // completions of one variant, baseline condition
    int n_records;
    Item *items;        // (n_items) events first, then controls
    int n_items, n_events;
    Seq *seqs;          // (n_seqs)
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
    long long *chosen_ids = xmalloc((size_t)(n_rows + 1) * sizeof *chosen_ids);
    int rc = 0;
    for (int i = 0; i < n_rows && rc == 0; i++) rc = csv_int(&csv, rows[i], col[1], 0, INT_MAX, &chosen_ids[i], err);
    // Controls of the chosen events follow the events.
    for (int r = 0; r < csv.n_rows && rc == 0; r++) {
        if (strcmp(csv_cell(&csv, r, col[0]), "control") != 0 || strcmp(csv_cell(&csv, r, col[2]), variant) != 0 ||
            strcmp(csv_cell(&csv, r, col[3]), "baseline") != 0)
            continue;
        long long id;
        int keep = 0;
        if ((rc = csv_int(&csv, r, col[1], 0, INT_MAX, &id, err))) break;
        for (int i = 0; i < n_rows && !keep; i++) keep = chosen_ids[i] == id;
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
        if (csv_int(&csv, r, col[1], 0, INT_MAX, &event_id, err) || csv_int(&csv, r, col[6], 0, INT_MAX - 1, &pred_pos, err) ||
            csv_int(&csv, r, col[7], 0, tokenizer_vocab_size(tok) - 1, &onset, err) ||
            csv_int(&csv, r, col[5], 0, INT_MAX, &sample, err) || csv_int(&csv, r, col[8], 1, INT_MAX, &prompt_tokens, err)) {
            rc = -1;
            break;
        }
        x->is_control = strcmp(csv_cell(&csv, r, col[0]), "control") == 0;
        x->event_id = (int)event_id;
        x->pred_pos = (int)pred_pos;
        x->onset_token_id = (int)onset;
        x->record = find_record(it, csv_cell(&csv, r, col[4]), (int)sample);
        if (x->record < 0) {
            rc = err_input(err, "%s:%d: problem %s sample %s of the events is not among the generations of %s",
                           csv.path, csv.row_line[r + 1], csv_cell(&csv, r, col[4]), csv_cell(&csv, r, col[5]), variant);
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
    TokenList prompt = {0};
    for (int i = 0; i < it->n_items && rc == 0; i++) {
        Item *x = &it->items[i];
        int s = 0;
        while (s < it->n_seqs && it->seqs[s].record != x->record) s++;
        Seq *q = &it->seqs[s];
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
            q->record = x->record;
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
        const Seq *q = &it->seqs[it->items[i].seq];
        int r = 0;
        while (q->read_pos[r] != it->items[i].pred_pos) r++;
        it->items[i].read = r;
    }
    return 0;
}

// ----------------------------------------------------------------------------
// Teacher forcing: sequences through the model, n_slots at a time, in chunks
// of at most max_rows rows; outputs at each sequence's read positions.

typedef struct {
    const Model *m;
    RunState *state;
    int n_slots, max_rows;
    int *token, *slot, *pos, *logits_row, *capture_row; // (max_rows) row buffers
    const AblationMask **mask;                          // (max_rows)
    float *x_in;                                        // (max_rows, hidden) residuals rows enter with
} Forcer;

static int forcer_init(Forcer *f, const Model *m, int n_slots, int max_seq, int max_rows, Err *err) {
    memset(f, 0, sizeof *f);
    f->m = m;
    f->n_slots = n_slots;
    f->max_rows = max_rows;
    f->state = runstate_new(m, n_slots, max_seq, max_rows, err);
    if (!f->state) return -1;
    f->token = xmalloc((size_t)max_rows * sizeof *f->token);
    f->slot = xmalloc((size_t)max_rows * sizeof *f->slot);
    f->pos = xmalloc((size_t)max_rows * sizeof *f->pos);
    f->logits_row = xmalloc((size_t)max_rows * sizeof *f->logits_row);
    f->capture_row = xmalloc((size_t)max_rows * sizeof *f->capture_row);
    f->mask = xmalloc((size_t)max_rows * sizeof *f->mask);
    f->x_in = xmalloc((size_t)max_rows * m->cfg.hidden_size * sizeof *f->x_in);
    return 0;
}

static void forcer_free(Forcer *f) {
    runstate_free(f->state);
    free(f->token); free(f->slot); free(f->pos); free(f->logits_row); free(f->capture_row); free(f->mask); free(f->x_in);
    memset(f, 0, sizeof *f);
}

// What one pass over a group of sequences reads out.
typedef struct {
    const AblationMask *mask; // every row, NULL = clean
    float *logits;            // (n_reads, vocab): at read positions, in sequence then read order; or NULL
    float *resid;             // (n_reads, n_layers + 1, hidden) or NULL
    // Component means: every position's attention and MLP outputs summed (double, fixed order).
    double *attn_sum, *mlp_sum; // (n_layers, hidden) or NULL
    long long *n_summed;
    // Every position's residuals, sequence after sequence (not with resid or the sums):
    float *resid_all;           // (group positions, n_layers + 1, hidden) or NULL
    // Start at first_layer from these residuals (laid out as resid_all) instead of the
    // embeddings; the cache below first_layer must hold this group's clean pass.
    const float *enter;
    int first_layer;
} PassOut;

// Runs seqs[0..n) (n <= n_slots; sequence i in slot i) through the model.
static int force_group(Forcer *f, const Seq *seqs, int n, const PassOut *out, Err *err) {
    const ModelConfig *mc = &f->m->cfg;
    int hidden = mc->hidden_size, n_layers = mc->n_layers;
    int *fed = xcalloc((size_t)n, sizeof *fed), *read_base = xmalloc((size_t)n * sizeof *read_base);
    int *pos_base = xmalloc((size_t)n * sizeof *pos_base); // first row of each sequence in resid_all / enter
    int total_reads = 0, total_pos = 0;
    for (int i = 0; i < n; i++) {
        read_base[i] = total_reads;
        total_reads += seqs[i].n_read;
        pos_base[i] = total_pos;
        total_pos += seqs[i].n_tokens;
    }
    int want_components = out->attn_sum != NULL;
    float *logits_buf = NULL, *resid_buf = NULL, *attn_buf = NULL, *mlp_buf = NULL;
    if (out->logits) logits_buf = xmalloc((size_t)f->max_rows * (size_t)mc->vocab_size * sizeof(float));
    if (out->resid) resid_buf = xmalloc((size_t)f->max_rows * (size_t)(n_layers + 1) * (size_t)hidden * sizeof(float));
    if (want_components) {
        attn_buf = xmalloc((size_t)f->max_rows * (size_t)n_layers * (size_t)hidden * sizeof(float));
        mlp_buf = xmalloc((size_t)f->max_rows * (size_t)n_layers * (size_t)hidden * sizeof(float));
    }
    int *row_read = xmalloc((size_t)f->max_rows * sizeof *row_read); // global read index of a row, -1 none
    int rc = 0;
    for (;;) {
        int rows = 0;
        for (int i = 0; i < n && rows < f->max_rows; i++) {
            const Seq *q = &seqs[i];
            int r = 0;
            while (fed[i] < q->n_tokens && rows < f->max_rows) {
                int p = fed[i]++;
                f->token[rows] = q->tokens[p];
                f->slot[rows] = i;
                f->pos[rows] = p;
                f->mask[rows] = out->mask;
                while (r < q->n_read && q->read_pos[r] < p) r++;
                row_read[rows] = r < q->n_read && q->read_pos[r] == p ? read_base[i] + r : -1;
                f->logits_row[rows] = row_read[rows] >= 0 ? rows : -1;
                f->capture_row[rows] = out->resid_all ? pos_base[i] + p : want_components || (out->resid && row_read[rows] >= 0) ? rows : -1;
                if (out->enter)
                    memcpy(f->x_in + (size_t)rows * hidden, out->enter + ((size_t)(pos_base[i] + p) * (n_layers + 1) + out->first_layer) * hidden,
                           (size_t)hidden * sizeof *f->x_in);
                rows++;
            }
        }
        if (rows == 0) break;
        Forward fw = {.n = rows, .token = f->token, .slot = f->slot, .pos = f->pos, .mask = out->mask ? f->mask : NULL,
                      .first_layer = out->enter ? out->first_layer : 0, .x_in = out->enter ? f->x_in : NULL,
                      .logits = logits_buf, .logits_row = out->logits ? f->logits_row : NULL,
                      .resid = out->resid_all ? out->resid_all : resid_buf, .attn_out = attn_buf, .mlp_out = mlp_buf,
                      .capture_row = out->resid || out->resid_all || want_components ? f->capture_row : NULL};
        if ((rc = model_forward(f->m, f->state, &fw, err))) break;
        for (int r = 0; r < rows; r++) {
            int g = row_read[r];
            if (g >= 0 && out->logits)
                memcpy(out->logits + (size_t)g * mc->vocab_size, logits_buf + (size_t)r * mc->vocab_size, (size_t)mc->vocab_size * sizeof(float));
            if (g >= 0 && out->resid)
                memcpy(out->resid + (size_t)g * (n_layers + 1) * hidden, resid_buf + (size_t)r * (n_layers + 1) * hidden,
                       (size_t)(n_layers + 1) * hidden * sizeof(float));
            if (want_components) {
                for (size_t k = 0; k < (size_t)n_layers * hidden; k++) {
                    out->attn_sum[k] += attn_buf[(size_t)r * n_layers * hidden + k];
                    out->mlp_sum[k] += mlp_buf[(size_t)r * n_layers * hidden + k];
                }
                (*out->n_summed)++;
            }
        }
    }
    free(fed); free(read_base); free(pos_base); free(logits_buf); free(resid_buf); free(attn_buf); free(mlp_buf); free(row_read);
    return rc;
}

// log p(token) under logits (vocab), and the token's rank (0 = most likely).
static double log_prob(const float *logits, int vocab, int token, int *rank) {
    double max = logits[0];
    for (int v = 1; v < vocab; v++)
        if (logits[v] > max) max = logits[v];
    double sum = 0;
    int above = 0;
    for (int v = 0; v < vocab; v++) {
        sum += exp((double)logits[v] - max);
        above += logits[v] > logits[token];
    }
    if (rank) *rank = above;
    return (double)logits[token] - max - log(sum);
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
    double *lp_all = NULL;
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
    lp_all = xmalloc((size_t)(a.it.n_items + 1) * (n_layers + 1) * sizeof *lp_all); // (n_items, n_layers + 1)
    for (int i = 0; i < a.it.n_items; i++) {
        const Item *x = &a.it.items[i];
        const GenRecord *rec = &a.it.records[x->record];
        const float *rv = resid + (size_t)item_read_index(&a.it, i) * (n_layers + 1) * hidden;
        for (int l = 0; l <= n_layers; l++) {
            model_final_logits(&a.m, rv + (size_t)l * hidden, logits);
            int rank;
            double lp = log_prob(logits, vocab, x->onset_token_id, &rank);
            lp_all[(size_t)i * (n_layers + 1) + l] = lp;
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
    // The figure: mean log p(onset) per layer with bootstrap 95% CIs, events vs controls.
    double *series = xmalloc((size_t)6 * (n_layers + 1) * sizeof *series), *vals = xmalloc((size_t)(a.it.n_items + 1) * sizeof *vals);
    CiSeries cs[2];
    int counts[2] = {0, 0};
    for (int ctl = 0; ctl < 2; ctl++) {
        double *mean = series + (size_t)(3 * ctl) * (n_layers + 1), *lo = mean + n_layers + 1, *hi = lo + n_layers + 1;
        for (int l = 0; l <= n_layers; l++) {
            int nv = 0;
            for (int i = 0; i < a.it.n_items; i++)
                if (a.it.items[i].is_control == ctl) vals[nv++] = lp_all[(size_t)i * (n_layers + 1) + l];
            Interval ci = bootstrap_mean95(vals, nv, STAT_RESAMPLES, seed_mix(seed_mix((uint64_t)c.seed, 0x1E45), (uint64_t)(2 * l + ctl)));
            mean[l] = ci.est;
            lo[l] = ci.lo;
            hi[l] = ci.hi;
            counts[ctl] = nv;
        }
        cs[ctl] = (CiSeries){mean, lo, hi};
    }
    char note[256];
    snprintf(note, sizeof note, "%s, run %s; log p of the onset token at pred_pos, per layer", variant, run.id);
    figure_path(&run, FIG_LOGIT_LENS, path, sizeof path);
    int frc = fig_logit_lens(path, n_layers, &cs[0], counts[0], &cs[1], counts[1], note, &err);
    free(series);
    free(vals);
    if (frc || publish_figure(&c, &run, FIG_LOGIT_LENS, &err)) goto out;
    printf("logit-lens: %d events, %d controls, %d layers\n", a.it.n_events, a.it.n_items - a.it.n_events, n_layers + 1);
out:
    buf_free(&csv);
    free(resid);
    free(logits);
    free(lp_all);
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
    int *selected[2];
    for (int comp = 0; comp < 2; comp++) {
        selected[comp] = xmalloc((size_t)(top_k[comp] + 1) * sizeof(int));
        buf_printf(&js, ",\n  \"%s_layers\": [", comp ? "mlp" : "attn");
        for (int i = 0; i < top_k[comp]; i++) {
            selected[comp][i] = order[comp][i]->layer;
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
    // The figure: mean drop per layer, attention and MLP, events and controls.
    double *series = xmalloc((size_t)12 * n_layers * sizeof *series);
    CiSeries cs[4]; // attn events, mlp events, attn controls, mlp controls
    for (int s = 0; s < 4; s++) {
        double *mean = series + (size_t)(3 * s) * n_layers, *lo = mean + n_layers, *hi = lo + n_layers;
        for (int l = 0; l < n_layers; l++) {
            const Interval *ci = s < 2 ? &results[2 * l + s % 2].events : &results[2 * l + s % 2].controls;
            mean[l] = ci->est;
            lo[l] = ci->lo;
            hi[l] = ci->hi;
        }
        cs[s] = (CiSeries){mean, lo, hi};
    }
    char note[256];
    snprintf(note, sizeof note, "%s, run %s; %s ablation, scope %s; selected layers ringed", variant, run->id, kind, scope);
    figure_path(run, FIG_ABLATION, path, sizeof path);
    if (rc == 0)
        rc = fig_ablation_importance(path, n_layers, &cs[0], &cs[1], n_events, &cs[2], &cs[3], n_controls, selected[0], top_k[0],
                                     selected[1], top_k[1], note, err);
    if (rc == 0) rc = publish_figure(c, run, FIG_ABLATION, err);
    free(series);
    for (int comp = 0; comp < 2; comp++) {
        free(order[comp]);
        free(selected[comp]);
    }
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
        const Seq *q = &it->seqs[s0 + n];
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
