// bt.c: the command line, the INI config, the run folder, data preparation,
// and main. Read top to bottom: flags, config, runs, problems, commands, main.
#include "bt.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

int bt_quiet = 0;
int bt_threads = 1;
static int threads_flag = -1; // --threads N given on the command line, -1 if not: it beats [run] threads

// ----------------------------------------------------------------------------
// Flags

int fail(const Err *err) {
    fprintf(stderr, "bt: %s\n", err->msg[0] ? err->msg : "failed");
    return err->code ? err->code : EXIT_RUNTIME;
}

void progress(const char *fmt, ...) {
    if (bt_quiet) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
}

double progress_every_s(void) {
    static double every = -1;
    if (every < 0) {
        const char *env = getenv("BT_PROGRESS_EVERY_S");
        char *end;
        double v = env ? strtod(env, &end) : -1;
        every = env && *env && !*end && v >= 0 ? v : PROGRESS_EVERY_S;
    }
    return every;
}

void progress_start(ProgressClock *pc) {
    pc->t0 = now_seconds();
    pc->last_s = 0;
}

void format_duration(char *out, size_t n, double s) {
    if (s < 0 || s != s || s > 1e8) snprintf(out, n, "?");
    else if (s < 60) snprintf(out, n, "%.0fs", s);
    else if (s < 3600) snprintf(out, n, "%dm%02ds", (int)(s / 60), (int)s % 60);
    else snprintf(out, n, "%dh%02dm", (int)(s / 3600), (int)(s / 60) % 60);
}

void progress_eta(ProgressClock *pc, const char *stage, long long done, long long total, const char *unit,
                  double tokens, double work_done, double work_total) {
    double t = now_seconds() - pc->t0;
    if (done < total && t - pc->last_s < progress_every_s()) return;
    pc->last_s = t;
    char eta[32];
    format_duration(eta, sizeof eta, work_done > 0 ? t * (work_total - work_done) / work_done : NAN);
    progress("%s: %lld/%lld %s, %.1f tok/s, ETA %s\n", stage, done, total, unit, t > 0 ? tokens / t : 0.0, eta);
}

int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

void set_threads(int n) {
#ifdef _OPENMP
    if (n <= 0) n = omp_get_num_procs();
    omp_set_num_threads(n);
    bt_threads = n;
#else
    (void)n;
    bt_threads = 1;
#endif
}

static void print_usage(const char *cmd, const Opt *opts) {
    printf("usage: bt %s", cmd);
    for (const Opt *o = opts; o->name; o++) printf(" [%s%s]", o->name, o->takes_value ? " V" : "");
    printf("\n\nflags:\n");
    for (const Opt *o = opts; o->name; o++) printf("  %-14s %s\n", o->name, o->help ? o->help : "");
    printf("  %-14s %s\n  %-14s %s\n", "--threads N", "threads (0 = all cores)", "--quiet", "no progress on stderr");
}

int opts_parse(Opt *opts, int argc, char **argv, Err *err) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            print_usage(argv[0], opts);
            return 1;
        }
        if (strcmp(a, "--quiet") == 0) {
            bt_quiet = 1;
            continue;
        }
        if (strcmp(a, "--threads") == 0) {
            char *end;
            if (i + 1 >= argc) return err_input(err, "%s: --threads needs a value", argv[0]);
            long n = strtol(argv[++i], &end, 10);
            if (*end || n < 0 || n > 1024)
                return err_input(err, "%s: --threads: '%s' is not a thread count", argv[0], argv[i]);
            set_threads((int)n);
            threads_flag = (int)n;
            continue;
        }
        Opt *o = opts;
        while (o->name && strcmp(o->name, a) != 0) o++;
        if (!o->name) return err_input(err, "%s: unknown argument '%s' (see bt %s --help)", argv[0], a, argv[0]);
        if (o->takes_value) {
            if (i + 1 >= argc) return err_input(err, "%s: %s needs a value", argv[0], a);
            o->value = argv[++i];
        } else {
            o->value = "1";
        }
        if (o->n_values < (int)(sizeof o->values / sizeof o->values[0])) o->values[o->n_values++] = o->value;
        else return err_input(err, "%s: %s given too many times", argv[0], a);
    }
    return 0;
}

const char *opt_str(const Opt *opts, const char *name, const char *fallback) {
    for (const Opt *o = opts; o->name; o++)
        if (strcmp(o->name, name) == 0) return o->value ? o->value : fallback;
    return fallback;
}

int opt_int(const Opt *opts, const char *name, long long lo, long long hi, long long fallback, long long *out,
            Err *err) {
    const char *s = opt_str(opts, name, NULL);
    if (!s) {
        *out = fallback;
        return 0;
    }
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*s == 0 || *end || errno) return err_input(err, "%s: '%s' is not an integer", name, s);
    if (v < lo || v > hi) return err_input(err, "%s: %lld is out of range [%lld, %lld]", name, v, lo, hi);
    *out = v;
    return 0;
}

// "1,2,3" -> ids, each in [0, vocab) of the model in dir.
int parse_ids(const char *s, int vocab, const char *dir, int **ids_out, int *n_out, Err *err) {
    int n = 0, cap = 16, *ids = xmalloc((size_t)cap * sizeof *ids);
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || (*end && *end != ',')) {
            free(ids);
            return err_input(err, "--ids: '%s' is not a comma-separated list of token ids", s);
        }
        if (v < 0 || v >= vocab) {
            free(ids);
            return err_input(err, "--ids: token id %ld out of range [0, %d) of %s", v, vocab, dir);
        }
        if (n == cap) ids = xrealloc(ids, (size_t)(cap *= 2) * sizeof *ids);
        ids[n++] = (int)v;
        p = *end ? end + 1 : end;
        if (*end && !*p) {
            free(ids);
            return err_input(err, "--ids: '%s' ends with a comma", s);
        }
    }
    if (!n) {
        free(ids);
        return err_input(err, "--ids: no token ids given");
    }
    *ids_out = ids;
    *n_out = n;
    return 0;
}

void write_stdout(const Buf *b) {
    if (b->len) fwrite(b->data, 1, b->len, stdout);
    fflush(stdout);
}

// ----------------------------------------------------------------------------
// Config: a small INI parser (inih's shape) and one table of known keys.

typedef enum {
    KEY_STRING,
    KEY_INT,
    KEY_FLOAT,
    KEY_BOOL,
    KEY_CHOICE,
    KEY_LIST,
    KEY_TRIGGERS,
    KEY_FLOATS,
    KEY_LAYER
} KeyType;

typedef struct {
    const char *section, *key;
    KeyType type;
    const char *default_value;
    double lo, hi;       // KEY_INT / KEY_FLOAT / KEY_FLOATS / KEY_LAYER range, inclusive
    const char *choices; // KEY_CHOICE: "a|b", stored as the index
    size_t offset;       // of the field in Config
    size_t count_offset; // KEY_LIST / KEY_TRIGGERS / KEY_FLOATS: the int holding the count
} ConfigKey;

#define FIELD(f) offsetof(Config, f)
static const ConfigKey config_keys[] = {
    {"run", "runs_dir", KEY_STRING, "runs", 0, 0, NULL, FIELD(runs_dir), 0},
    {"run", "seed", KEY_INT, "1234", 0, 9007199254740991.0, NULL, FIELD(seed), 0},
    {"run", "threads", KEY_INT, "0", 0, 1024, NULL, FIELD(threads), 0},
    {"model", "path", KEY_STRING, "models/organism", 0, 0, NULL, FIELD(model_path), 0},
    {"model", "max_seq_len", KEY_INT, "4096", 16, 1048576, NULL, FIELD(max_seq_len), 0},
    {"model", "make_organism", KEY_BOOL, "false", 0, 0, NULL, FIELD(make_organism), 0},
    {"model", "organism", KEY_CHOICE, "planted", 0, 0, ORGANISM_MECHANISMS, FIELD(organism), 0},
    {"data", "source", KEY_CHOICE, "gsm8k", 0, 0, "gsm8k|builtin", FIELD(data_source), 0},
    {"data", "path", KEY_STRING, "../shared/gsm8k/test.jsonl", 0, 0, NULL, FIELD(data_path), 0},
    {"data", "n_problems", KEY_INT, "200", 1, 1000000, NULL, FIELD(n_problems), 0},
    {"data", "processed_dir", KEY_STRING, "data/processed", 0, 0, NULL, FIELD(processed_dir), 0},
    {"generation", "max_new_tokens", KEY_INT, "1024", 1, 1048576, NULL, FIELD(max_new_tokens), 0},
    // Sampling: a key left out takes the model's generation_config.json value (config_sampler).
    {"generation", "temperature", KEY_FLOAT, NULL, 0, 100, NULL, FIELD(temperature), 0},
    {"generation", "top_k", KEY_INT, NULL, 0, 1 << 30, NULL, FIELD(top_k), 0},
    {"generation", "top_p", KEY_FLOAT, NULL, 1e-9, 1, NULL, FIELD(top_p), 0},
    {"generation", "batch_size", KEY_INT, "16", 1, 4096, NULL, FIELD(batch_size), 0},
    {"generation", "samples_per_problem", KEY_INT, "1", 1, 100000, NULL, FIELD(samples_per_problem), 0},
    {"generation", "variants", KEY_LIST, "baseline_think_newline", 0, 0, NULL, FIELD(variants), FIELD(n_variants)},
    {"detection", "triggers", KEY_TRIGGERS,
     "Wait | Actually | Hold on | Hmm | But wait | Let me double-check | Let me re-check | Let me recheck", 0, 0, NULL,
     FIELD(triggers), FIELD(n_triggers)},
    {"detection", "controls_per_event", KEY_INT, "1", 0, 100, NULL, FIELD(controls_per_event), 0},
    {"detection", "control_min_distance", KEY_INT, "5", 0, 100000, NULL, FIELD(control_min_distance), 0},
    {"logit_lens", "variant", KEY_STRING, "baseline_think_newline", 0, 0, NULL, FIELD(lens_variant), 0},
    {"logit_lens", "max_events", KEY_INT, "200", 1, 1000000, NULL, FIELD(lens_max_events), 0},
    {"ablation", "kind", KEY_CHOICE, "zero", 0, 0, "zero|mean", FIELD(ablation_kind), 0},
    {"ablation", "scope", KEY_CHOICE, "all", 0, 0, "all|onset", FIELD(ablation_scope), 0},
    {"ablation", "top_k_attn", KEY_INT, "4", 0, 4096, NULL, FIELD(top_k_attn), 0},
    {"ablation", "top_k_mlp", KEY_INT, "2", 0, 4096, NULL, FIELD(top_k_mlp), 0},
    {"ablation", "max_events", KEY_INT, "100", 1, 1000000, NULL, FIELD(ablation_max_events), 0},
    {"ablation", "random_draws", KEY_INT, "3", 1, MAX_RANDOM_DRAWS, NULL, FIELD(random_draws), 0},
    {"ablation", "method", KEY_CHOICE, "exact", 0, 0, "exact|attribution|attribution+verify", FIELD(ablation_method),
     0},
    {"ablation", "verify_k", KEY_INT, "4", 1, 4096, NULL, FIELD(verify_k), 0},
    {"ablation", "top_k_heads", KEY_INT, "0", 0, 65536, NULL, FIELD(top_k_heads), 0},
    {"hypotheses", "alpha", KEY_FLOAT, "0.05", 1e-12, 0.5, NULL, FIELD(alpha), 0},
    {"hypotheses", "h1_min_relative_drop", KEY_FLOAT, "0.5", 0, 1, NULL, FIELD(h1_min_relative_drop), 0},
    {"hypotheses", "h2_min_rate_ratio", KEY_FLOAT, "2.0", 1, 1e9, NULL, FIELD(h2_min_rate_ratio), 0},
    {"hypotheses", "h3_min_rate_change", KEY_FLOAT, "0.2", 0, 1, NULL, FIELD(h3_min_rate_change), 0},
    {"hypotheses", "max_collateral_nll", KEY_FLOAT, "0.5", 0, 1e9, NULL, FIELD(max_collateral_nll), 0},
    {"report", "path", KEY_STRING, "reports/backtracking_state_transition_report.md", 0, 0, NULL, FIELD(report_path),
     0},
    {"report", "figures_dir", KEY_STRING, "figures", 0, 0, NULL, FIELD(figures_dir), 0},
    {"report", "events_path", KEY_STRING, "reports/events.html", 0, 0, NULL, FIELD(events_path), 0},
    {"report", "max_events_shown", KEY_INT, "50", 0, 100000, NULL, FIELD(max_events_shown), 0},
    {"capture", "max_memory_mb", KEY_FLOAT, "1024", 0.001, 1e7, NULL, FIELD(capture_max_memory_mb), 0},
    {"capture", "max_file_mb", KEY_FLOAT, "4096", 0.001, 1e9, NULL, FIELD(capture_max_file_mb), 0},
    {"capture", "window", KEY_INT, "8", 0, 100000, NULL, FIELD(capture_window), 0},
    {"capture", "dtype", KEY_CHOICE, "f32", 0, 0, CAPTURE_DTYPES, FIELD(capture_dtype), 0},
    // Steering: defaults as Venhoff et al. (the window from the token before the onset, 10 tokens into it).
    {"steering", "enabled", KEY_BOOL, "false", 0, 0, NULL, FIELD(steering_enabled), 0},
    {"steering", "positives", KEY_CHOICE, "events", 0, 0, "events|thinking", FIELD(steer_positives), 0},
    {"steering", "negatives", KEY_STRING, "thinking", 0, 0, NULL, FIELD(steer_negatives), 0},
    {"steering", "window_start", KEY_INT, "-1", -4096, 4096, NULL, FIELD(steer_window_start), 0},
    {"steering", "window_len", KEY_INT, "11", 1, 4096, NULL, FIELD(steer_window_len), 0},
    {"steering", "layer", KEY_LAYER, "auto", 0, 4096, NULL, FIELD(steer_layer), 0},
    {"steering", "alphas", KEY_FLOATS, "-2, -1, -0.5, 0.5, 1, 2", -1000, 1000, NULL, FIELD(steer_alphas),
     FIELD(n_steer_alphas)},
    // no default: steering_config_check makes it the [logit_lens] variant
    {"steering", "variants", KEY_LIST, NULL, 0, 0, NULL, FIELD(steer_variants), FIELD(n_steer_variants)},
};
#define N_CONFIG_KEYS (sizeof config_keys / sizeof config_keys[0])
#define VARIANT_PREFIX "variant."

// Strips leading and trailing whitespace in place.
static char *strip(char *s) {
    while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n') s++;
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n')) *--e = 0;
    return s;
}

// Decodes C escapes (\n \t \\ \" \') of a template; returns NULL on an unknown escape.
static char *unescape_template(const char *s) {
    char *out = xmalloc(strlen(s) + 1), *o = out;
    for (; *s; s++) {
        if (*s != '\\') {
            *o++ = *s;
            continue;
        }
        switch (*++s) {
        case 'n': *o++ = '\n'; break;
        case 't': *o++ = '\t'; break;
        case 'r': *o++ = '\r'; break;
        case '\\': *o++ = '\\'; break;
        case '"': *o++ = '"'; break;
        case '\'': *o++ = '\''; break;
        default: free(out); return NULL;
        }
    }
    *o = 0;
    return out;
}

static void escape_template(Buf *b, const char *s) {
    for (; *s; s++) {
        if (*s == '\n') buf_puts(b, "\\n");
        else if (*s == '\t') buf_puts(b, "\\t");
        else if (*s == '\r') buf_puts(b, "\\r");
        else if (*s == '\\') buf_puts(b, "\\\\");
        else buf_putc(b, *s);
    }
}

static void free_list(char **items, int n) {
    for (int i = 0; i < n; i++) free(items[i]);
    free(items);
}

// Splits s on sep into trimmed, non-empty items.
static int split_list(const char *s, char sep, char ***out) {
    char *copy = xstrdup(s), *p = copy;
    char **items = NULL;
    int n = 0;
    for (;;) {
        char *end = strchr(p, sep);
        if (end) *end = 0;
        char *item = strip(p);
        if (*item) {
            items = xrealloc(items, (size_t)(n + 1) * sizeof *items);
            items[n++] = xstrdup(item);
        }
        if (!end) break;
        p = end + 1;
    }
    free(copy);
    *out = items;
    return n;
}

// Sets one key from its text value; where names "file:line" for messages.
static int config_set(Config *c, const ConfigKey *k, const char *value, const char *where, Err *err) {
    char *field = (char *)c + k->offset;
    char *end;
    switch (k->type) {
    case KEY_STRING:
        if (!*value) return err_input(err, "%s: [%s] %s must not be empty", where, k->section, k->key);
        free(*(char **)field);
        *(char **)field = xstrdup(value);
        return 0;
    case KEY_INT: {
        errno = 0;
        long long v = strtoll(value, &end, 10);
        if (!*value || *end || errno)
            return err_input(err, "%s: [%s] %s: '%s' is not an integer", where, k->section, k->key, value);
        if (v < k->lo || v > k->hi)
            return err_input(err, "%s: [%s] %s = %lld is out of range [%.0f, %.0f]", where, k->section, k->key, v,
                             k->lo, k->hi);
        if (k->offset == FIELD(seed)) *(long long *)field = v;
        else *(int *)field = (int)v;
        return 0;
    }
    case KEY_FLOAT: {
        errno = 0;
        double v = strtod(value, &end);
        if (!*value || *end || errno || v != v)
            return err_input(err, "%s: [%s] %s: '%s' is not a number", where, k->section, k->key, value);
        if (v < k->lo || v > k->hi)
            return err_input(err, "%s: [%s] %s = %g is out of range [%g, %g]", where, k->section, k->key, v, k->lo,
                             k->hi);
        *(double *)field = v;
        return 0;
    }
    case KEY_BOOL:
        if (strcmp(value, "true") == 0) *(int *)field = 1;
        else if (strcmp(value, "false") == 0) *(int *)field = 0;
        else return err_input(err, "%s: [%s] %s: '%s' is not true or false", where, k->section, k->key, value);
        return 0;
    case KEY_CHOICE: {
        int index = 0;
        for (const char *ch = k->choices; *ch; index++) {
            size_t len = strcspn(ch, "|");
            if (strlen(value) == len && strncmp(ch, value, len) == 0) {
                *(int *)field = index;
                return 0;
            }
            ch += len + (ch[len] == '|');
        }
        return err_input(err, "%s: [%s] %s: '%s' is not one of %s", where, k->section, k->key, value, k->choices);
    }
    case KEY_FLOATS: { // a comma-separated list of distinct nonzero numbers
        char **items;
        int n = split_list(value, ',', &items), rc = 0;
        if (n == 0) return err_input(err, "%s: [%s] %s: empty list", where, k->section, k->key);
        double *v = xmalloc((size_t)n * sizeof *v);
        for (int i = 0; i < n && rc == 0; i++) {
            errno = 0;
            v[i] = strtod(items[i], &end);
            if (*end || errno || v[i] != v[i])
                rc = err_input(err, "%s: [%s] %s: '%s' is not a number", where, k->section, k->key, items[i]);
            else if (v[i] < k->lo || v[i] > k->hi || v[i] == 0)
                rc = err_input(err, "%s: [%s] %s: %s is 0 or out of range [%g, %g]", where, k->section, k->key,
                               items[i], k->lo, k->hi);
            for (int j = 0; j < i && rc == 0; j++)
                if (v[j] == v[i])
                    rc = err_input(err, "%s: [%s] %s: %s is listed twice", where, k->section, k->key, items[i]);
        }
        free_list(items, n);
        if (rc) {
            free(v);
            return -1;
        }
        free(*(double **)field);
        *(double **)field = v;
        *(int *)((char *)c + k->count_offset) = n;
        return 0;
    }
    case KEY_LAYER: { // "auto" or a layer index; the model bounds it when it is used
        if (strcmp(value, "auto") == 0) {
            *(int *)field = STEER_LAYER_AUTO;
            return 0;
        }
        errno = 0;
        long long v = strtoll(value, &end, 10);
        if (!*value || *end || errno)
            return err_input(err, "%s: [%s] %s: '%s' is not a layer number or auto", where, k->section, k->key, value);
        if (v < k->lo || v > k->hi)
            return err_input(err, "%s: [%s] %s = %lld is out of range [%.0f, %.0f]", where, k->section, k->key, v,
                             k->lo, k->hi);
        *(int *)field = (int)v;
        return 0;
    }
    case KEY_LIST:
    case KEY_TRIGGERS: {
        char **items;
        int n = split_list(value, k->type == KEY_LIST ? ',' : '|', &items);
        if (n == 0) return err_input(err, "%s: [%s] %s: empty list", where, k->section, k->key);
        free_list(*(char ***)field, *(int *)((char *)c + k->count_offset));
        *(char ***)field = items;
        *(int *)((char *)c + k->count_offset) = n;
        return 0;
    }
    }
    return 0;
}

static const char *choice_name(const char *choices, int index, char *out, size_t n) {
    for (int i = 0; i < index && strchr(choices, '|'); i++) choices = strchr(choices, '|') + 1;
    size_t len = strcspn(choices, "|");
    snprintf(out, n, "%.*s", (int)len, choices);
    return out;
}

void config_write_resolved(const Config *c, Buf *out) {
    buf_printf(out, "; resolved configuration (every key with its effective value), from %s\n",
               c->file ? c->file : "defaults");
    const char *section = "";
    for (size_t i = 0; i < N_CONFIG_KEYS; i++) {
        const ConfigKey *k = &config_keys[i];
        if (strcmp(section, k->section) != 0) buf_printf(out, "\n[%s]\n", section = k->section);
        const char *field = (const char *)c + k->offset;
        if (!k->default_value && ((k->type == KEY_FLOAT && isnan(*(const double *)field)) ||
                                  (k->type == KEY_INT && *(const int *)field < 0))) {
            buf_printf(out, "; %s: from the model's generation_config.json\n", k->key);
            continue;
        }
        buf_printf(out, "%s = ", k->key);
        char name[64];
        switch (k->type) {
        case KEY_STRING: buf_puts(out, *(char *const *)field); break;
        case KEY_INT:
            if (k->offset == FIELD(seed)) buf_printf(out, "%lld", *(const long long *)field);
            else buf_printf(out, "%d", *(const int *)field);
            break;
        case KEY_FLOAT: buf_json_double(out, *(const double *)field); break;
        case KEY_BOOL: buf_puts(out, *(const int *)field ? "true" : "false"); break;
        case KEY_CHOICE: buf_puts(out, choice_name(k->choices, *(const int *)field, name, sizeof name)); break;
        case KEY_LIST:
        case KEY_TRIGGERS: {
            char *const *items = *(char **const *)field;
            int n = *(const int *)((const char *)c + k->count_offset);
            for (int j = 0; j < n; j++)
                buf_printf(out, "%s%s", j ? (k->type == KEY_LIST ? ", " : " | ") : "", items[j]);
            break;
        }
        case KEY_FLOATS:
            for (int j = 0; j < *(const int *)((const char *)c + k->count_offset); j++) {
                if (j) buf_puts(out, ", ");
                buf_json_double(out, (*(double *const *)field)[j]);
            }
            break;
        case KEY_LAYER:
            if (*(const int *)field == STEER_LAYER_AUTO) buf_puts(out, "auto");
            else buf_printf(out, "%d", *(const int *)field);
            break;
        }
        buf_putc(out, '\n');
    }
    for (int v = 0; v < c->n_variant_defs; v++) {
        buf_printf(out, "\n[%s%s]\ntemplate = \"", VARIANT_PREFIX, c->variant_defs[v].name);
        escape_template(out, c->variant_defs[v].template_text);
        buf_puts(out, "\"\n");
    }
}

const Variant *config_variant(const Config *c, const char *name) {
    for (int i = 0; i < c->n_variant_defs; i++)
        if (strcmp(c->variant_defs[i].name, name) == 0) return &c->variant_defs[i];
    return NULL;
}

static int valid_name(const char *s) {
    if (!*s) return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '_' ||
              *s == '-' || *s == '.'))
            return 0;
    return 1;
}

void config_free(Config *c) {
    for (size_t i = 0; i < N_CONFIG_KEYS; i++) {
        const ConfigKey *k = &config_keys[i];
        char *field = (char *)c + k->offset;
        if (k->type == KEY_STRING) free(*(char **)field);
        if (k->type == KEY_LIST || k->type == KEY_TRIGGERS)
            free_list(*(char ***)field, *(int *)((char *)c + k->count_offset));
        if (k->type == KEY_FLOATS) free(*(double **)field);
    }
    for (int v = 0; v < c->n_variant_defs; v++) {
        free(c->variant_defs[v].name);
        free(c->variant_defs[v].template_text);
    }
    free(c->variant_defs);
    free(c->file);
    memset(c, 0, sizeof *c);
}

// [steering] keys that name variants: negatives = controls | thinking | variant:NAME, and variants
// (the [logit_lens] variant when the file names none).
static int steering_config_check(Config *c, const char *path, const int *seen, Err *err) {
    if (c->n_steer_variants == 0) {
        c->steer_variants = xmalloc(sizeof *c->steer_variants);
        c->steer_variants[c->n_steer_variants++] = xstrdup(c->lens_variant);
    }
    int neg_line = 0, var_line = 0;
    for (size_t i = 0; i < N_CONFIG_KEYS; i++) {
        if (config_keys[i].offset == FIELD(steer_negatives)) neg_line = seen[i];
        if (config_keys[i].offset == FIELD(steer_variants)) var_line = seen[i];
    }
    const char *neg = c->steer_negatives, *name = strncmp(neg, "variant:", 8) == 0 ? neg + 8 : NULL;
    if (strcmp(neg, "controls") && strcmp(neg, "thinking") && !name)
        return err_input(err, "%s:%d: [steering] negatives: '%s' is not controls, thinking or variant:NAME", path,
                         neg_line, neg);
    if (c->steer_positives == STEER_POSITIVES_THINKING && strcmp(neg, "thinking") == 0)
        return err_input(err,
                         "%s:%d: [steering] positives = thinking and negatives = thinking contrast a set with itself",
                         path, neg_line);
    if (name && !config_variant(c, name))
        return err_input(err, "%s:%d: [steering] negatives = %s: there is no [variant.%s] section", path, neg_line, neg,
                         name);
    int generated = 0;
    for (int v = 0; name && v < c->n_variants; v++) generated |= strcmp(c->variants[v], name) == 0;
    if (name && c->steering_enabled && !generated)
        return err_input(err,
                         "%s:%d: [steering] negatives = %s, but [generation] variants does not generate %s (add it, or "
                         "set [steering] enabled = false)",
                         path, neg_line, neg, name);
    for (int v = 0; v < c->n_steer_variants; v++)
        if (!config_variant(c, c->steer_variants[v]))
            return err_input(err, "%s:%d: [steering] variants names '%s' but there is no [variant.%s] section", path,
                             var_line, c->steer_variants[v], c->steer_variants[v]);
    return 0;
}

int config_load(Config *c, const char *path, Err *err) {
    memset(c, 0, sizeof *c);
    c->temperature = c->top_p = NAN, c->top_k = -1; // unset: the model decides
    for (size_t i = 0; i < N_CONFIG_KEYS; i++)
        if (config_keys[i].default_value &&
            config_set(c, &config_keys[i], config_keys[i].default_value, "defaults", err))
            return -1;
    c->file = xstrdup(path);
    Buf text = {0};
    if (read_file(path, &text, err) || text_has_nul(path, &text, err)) {
        buf_free(&text);
        config_free(c);
        return -1;
    }
    int line_no = 0, variants_line = 0, lens_line = 0, method_line = 0;
    int seen[N_CONFIG_KEYS] = {0};
    char section[256] = "";
    Variant *variant = NULL; // the [variant.NAME] section being read
    char where[1200];
    char *p = text.data;
    while (p && *p) {
        char *next = strchr(p, '\n');
        if (next) *next++ = 0;
        line_no++;
        snprintf(where, sizeof where, "%s:%d", path, line_no);
        char *line = strip(p);
        p = next;
        if (*line == 0 || *line == ';' || *line == '#') continue;
        if (*line == '[') {
            char *close = strchr(line, ']');
            if (!close) { err_input(err, "%s: unterminated section header '%s'", where, line); goto fail; }
            if (*strip(close + 1)) { err_input(err, "%s: text after section header", where); goto fail; }
            *close = 0;
            snprintf(section, sizeof section, "%s", strip(line + 1));
            variant = NULL;
            if (strncmp(section, VARIANT_PREFIX, strlen(VARIANT_PREFIX)) == 0) {
                const char *name = section + strlen(VARIANT_PREFIX);
                if (!valid_name(name)) {
                    err_input(err, "%s: bad variant name '%s' (letters, digits, _ - .)", where, name);
                    goto fail;
                }
                if (config_variant(c, name)) {
                    err_input(err, "%s: variant '%s' defined twice", where, name);
                    goto fail;
                }
                c->variant_defs = xrealloc(c->variant_defs, (size_t)(c->n_variant_defs + 1) * sizeof *c->variant_defs);
                variant = &c->variant_defs[c->n_variant_defs++];
                variant->name = xstrdup(name);
                variant->template_text = NULL;
                continue;
            }
            size_t i = 0;
            while (i < N_CONFIG_KEYS && strcmp(config_keys[i].section, section) != 0) i++;
            if (i == N_CONFIG_KEYS) { err_input(err, "%s: unknown section [%s]", where, section); goto fail; }
            continue;
        }
        char *eq = strchr(line, '=');
        if (!eq) { err_input(err, "%s: expected 'key = value', found '%s'", where, line); goto fail; }
        *eq = 0;
        char *key = strip(line), *value = strip(eq + 1);
        if (!*section) { err_input(err, "%s: key '%s' outside any section", where, key); goto fail; }
        if (variant) {
            if (strcmp(key, "template") != 0) {
                err_input(err, "%s: unknown key '%s' in [%s] (only 'template')", where, key, section);
                goto fail;
            }
            if (variant->template_text) {
                err_input(err, "%s: template given twice in [%s]", where, section);
                goto fail;
            }
            size_t vlen = strlen(value);
            if (vlen >= 2 && value[0] == '"' && value[vlen - 1] == '"') { // quotes keep edge spaces
                value[vlen - 1] = 0;
                value++;
            }
            variant->template_text = unescape_template(value);
            if (!variant->template_text) {
                err_input(err, "%s: unknown escape in template (use \\n \\t \\r \\\\ \\\" \\')", where);
                goto fail;
            }
            if (!strstr(variant->template_text, "{question}")) {
                err_input(err, "%s: template of [%s] has no {question}", where, section);
                goto fail;
            }
            continue;
        }
        size_t i = 0;
        while (i < N_CONFIG_KEYS &&
               !(strcmp(config_keys[i].section, section) == 0 && strcmp(config_keys[i].key, key) == 0))
            i++;
        if (i == N_CONFIG_KEYS) { err_input(err, "%s: unknown key '%s' in [%s]", where, key, section); goto fail; }
        if (seen[i]) {
            err_input(err, "%s: key '%s' in [%s] given twice (first on line %d)", where, key, section, seen[i]);
            goto fail;
        }
        seen[i] = line_no;
        if (config_set(c, &config_keys[i], value, where, err)) goto fail;
        if (config_keys[i].offset == FIELD(variants)) variants_line = line_no;
        if (config_keys[i].offset == FIELD(lens_variant)) lens_line = line_no;
        if (config_keys[i].offset == FIELD(ablation_method)) method_line = line_no;
    }
    for (int v = 0; v < c->n_variant_defs; v++)
        if (!c->variant_defs[v].template_text) {
            err_input(err, "%s: [variant.%s] has no template", path, c->variant_defs[v].name);
            goto fail;
        }
    for (int v = 0; v < c->n_variants; v++)
        if (!config_variant(c, c->variants[v])) {
            if (variants_line)
                err_input(err, "%s:%d: [generation] variants names '%s' but there is no [variant.%s] section", path,
                          variants_line, c->variants[v], c->variants[v]);
            else
                err_input(err,
                          "%s: [generation] variants is not given and its default '%s' has no [variant.%s] section",
                          path, c->variants[v], c->variants[v]);
            goto fail;
        }
    if (!config_variant(c, c->lens_variant)) {
        if (lens_line)
            err_input(err, "%s:%d: [logit_lens] variant '%s' has no [variant.%s] section", path, lens_line,
                      c->lens_variant, c->lens_variant);
        else
            err_input(err, "%s: [logit_lens] variant is not given and its default '%s' has no [variant.%s] section",
                      path, c->lens_variant, c->lens_variant);
        goto fail;
    }
    if (c->ablation_method != METHOD_EXACT && c->ablation_scope == SCOPE_ONSET) { // an estimate of ablating everywhere
        err_input(err, "%s:%d: [ablation] method = %s estimates ablation at every position: it needs scope = all", path,
                  method_line, ablation_method_name(c->ablation_method));
        goto fail;
    }
    if (steering_config_check(c, path, seen, err)) goto fail;
    buf_free(&text);
    return 0;
fail:
    buf_free(&text);
    config_free(c);
    return -1;
}

// ----------------------------------------------------------------------------
// Runs: runs/<id>/ holds everything one experiment writes; runs/.current_run_id names it.

#define CURRENT_RUN_FILE ".current_run_id"

void run_path(const Run *run, char *out, size_t n, const char *rel) { snprintf(out, n, "%s/%s", run->dir, rel); }

void run_generation_path(const Run *run, char *out, size_t n, const char *variant, const char *condition) {
    snprintf(out, n, "%s/generations/%s/%s.jsonl", run->dir, variant, condition);
}

// Canonical order of conditions within a variant: baseline, targeted, random draws in order, others by name.
static int cmp_condition_file(const void *a, const void *b) {
    const char *x = *(const char *const *)a, *y = *(const char *const *)b;
    Condition cx, cy;
    int kx = condition_parse(x, &cx) ? N_CONDITIONS : cx.kind, ky = condition_parse(y, &cy) ? N_CONDITIONS : cy.kind;
    if (kx != ky) return kx - ky;
    if (kx == COND_RANDOM && cx.draw != cy.draw) return cx.draw - cy.draw;
    return strcmp(x, y);
}

int run_generation_files(const Config *c, const Run *run, char ***paths, Err *err) {
    (void)err;
    char **out = NULL;
    int n = 0;
    for (int v = 0; v < c->n_variant_defs; v++) {
        char dir[1200];
        snprintf(dir, sizeof dir, "%s/generations/%s", run->dir, c->variant_defs[v].name);
        DIR *d = opendir(dir);
        if (!d) continue;
        char **names = NULL;
        int n_names = 0;
        for (struct dirent *e; (e = readdir(d));) {
            size_t len = strlen(e->d_name),
                   stem = shard_name_stem(e->d_name, "jsonl"); // a shard names its condition too
            if (stem ? memchr(e->d_name, '.', stem) != NULL
                     : len <= 6 || strcmp(e->d_name + len - 6, ".jsonl") != 0 || memchr(e->d_name, '.', len - 6))
                continue;
            names = xrealloc(names, (size_t)(n_names + 1) * sizeof *names);
            names[n_names++] = xstrndup(e->d_name, stem ? stem : len - 6); // a condition: no dot (not a sidecar)
        }
        closedir(d);
        if (n_names > 1) qsort(names, (size_t)n_names, sizeof *names, cmp_condition_file); // names is NULL when none
        for (int i = 0; i < n_names; i++) {
            if (i + 1 < n_names && strcmp(names[i], names[i + 1]) == 0) { // the file and its shards, or several shards
                free(names[i]);
                continue;
            }
            char path[1200];
            run_generation_path(run, path, sizeof path, c->variant_defs[v].name, names[i]);
            out = xrealloc(out, (size_t)(n + 1) * sizeof *out);
            out[n++] = xstrdup(path);
            free(names[i]);
        }
        free(names);
    }
    *paths = out;
    return n;
}

void run_activation_path(const Run *run, char *out, size_t n, const char *file) {
    snprintf(out, n, "%s/%s/%s", run->dir, ART_ACTIVATIONS, file);
}

int run_current(const Config *c, Run *run, Err *err) {
    char path[1100];
    snprintf(path, sizeof path, "%s/%s", c->runs_dir, CURRENT_RUN_FILE);
    Buf b = {0};
    Err ignored;
    const char *pinned =
        getenv("BT_RUN_ID"); // bt slurm's jobs name their run: another run made current meanwhile is not theirs
    if (pinned && *pinned) {
        snprintf(path, sizeof path, "$BT_RUN_ID");
        buf_puts(&b, pinned);
    } else if (read_file(path, &b, &ignored))
        return err_input(err, "no current run: %s is missing (run `bt init-run --config %s` first)", path, c->file);
    char *id = strip(b.data);
    if (!valid_name(id) || strlen(id) >= sizeof run->id) {
        err_input(err, "%s: bad run id '%s'", path, id);
        buf_free(&b);
        return -1;
    }
    snprintf(run->id, sizeof run->id, "%s", id);
    snprintf(run->dir, sizeof run->dir, "%s/%s", c->runs_dir, id);
    buf_free(&b);
    if (!path_is_dir(run->dir))
        return err_input(err, "current run %s: %s does not exist (run `bt init-run` again)", run->id, run->dir);
    return 0;
}

// The start of every stage after init-run: its flags, the config, the current run.
// Returns 0 to go on, else 1 with *exit_code the command's exit code (0 after --help).
int stage_open(int argc, char **argv, Opt *opts, Config *c, Run *run, int *exit_code) {
    Err err = {0};
    int r = opts_parse(opts, argc, argv, &err);
    if (r) {
        *exit_code = r < 0 ? fail(&err) : 0;
        return 1;
    }
    if (config_load(c, opt_str(opts, "--config", BT_DEFAULT_CONFIG), &err)) {
        *exit_code = fail(&err);
        return 1;
    }
    set_threads(threads_flag >= 0 ? threads_flag : c->threads);
    if (run_current(c, run, &err)) {
        config_free(c);
        *exit_code = fail(&err);
        return 1;
    }
    return 0;
}

// The git commit of the checkout bt runs in, read from .git without running git.
static void git_sha(char *out, size_t n) {
    snprintf(out, n, "unknown");
    Buf head = {0};
    Err ignored;
    if (read_file(".git/HEAD", &head, &ignored)) return;
    char *h = strip(head.data);
    if (strncmp(h, "ref: ", 5) != 0) {
        if (strlen(h) == 40) snprintf(out, n, "%s", h);
        buf_free(&head);
        return;
    }
    char path[1100];
    snprintf(path, sizeof path, ".git/%s", h + 5);
    Buf ref = {0};
    if (read_file(path, &ref, &ignored) == 0 && strlen(strip(ref.data)) == 40) {
        snprintf(out, n, "%s", strip(ref.data));
    } else if (read_file(".git/packed-refs", &ref, &ignored) == 0) { // "<sha> <ref>" lines
        char *line = ref.data;
        while (line && *line) {
            char *nl = strchr(line, '\n');
            if (nl) *nl = 0;
            if (strlen(line) > 41 && line[40] == ' ' && strcmp(line + 41, h + 5) == 0) {
                snprintf(out, n, "%.40s", line);
                break;
            }
            line = nl ? nl + 1 : NULL;
        }
    }
    buf_free(&ref);
    buf_free(&head);
}

// The model's id: config.json's _name_or_path when it has one, else the directory name.
static void model_id(const char *model_dir, char *out, size_t n) {
    char path[1100];
    snprintf(path, sizeof path, "%s/config.json", model_dir);
    Buf b = {0};
    Json j;
    Err ignored;
    out[0] = 0;
    if (read_file(path, &b, &ignored) == 0 && json_parse(&j, b.data, b.len, path, &ignored) == 0) {
        char *name = json_strdup(&j, json_key(&j, 0, "_name_or_path"));
        if (name && *name) snprintf(out, n, "%s", name);
        free(name);
        json_free(&j);
    }
    buf_free(&b);
    if (!out[0]) {
        size_t len = strlen(model_dir);
        while (len > 1 && model_dir[len - 1] == '/') len--;
        const char *base = model_dir;
        for (size_t i = 0; i < len; i++)
            if (model_dir[i] == '/') base = model_dir + i + 1;
        snprintf(out, n, "%.*s", (int)(len - (size_t)(base - model_dir)), base);
    }
}

int cmd_init_run(int argc, char **argv) {
    Opt opts[] = {OPT_CONFIG, OPT("--run-id", 1, "run id (default: UTC YYYYMMDD_HHMMSS)"), OPT_END};
    Err err = {0};
    int r = opts_parse(opts, argc, argv, &err);
    if (r) return r < 0 ? fail(&err) : 0;
    Config c;
    if (config_load(&c, opt_str(opts, "--config", BT_DEFAULT_CONFIG), &err)) return fail(&err);
    set_threads(threads_flag >= 0 ? threads_flag : c.threads);
    Run run;
    const char *given = opt_str(opts, "--run-id", NULL);
    time_t now = time(NULL);
    struct tm utc;
    gmtime_r(&now, &utc);
    char stamp[64], utc_time[64];
    strftime(stamp, sizeof stamp, "%Y%m%d_%H%M%S", &utc);
    strftime(utc_time, sizeof utc_time, "%Y-%m-%dT%H:%M:%SZ", &utc);
    if (given && (!valid_name(given) || strlen(given) >= 100)) {
        err_input(&err, "--run-id '%s': use letters, digits, _ - . (at most 99)", given);
        goto out;
    }
    snprintf(run.id, sizeof run.id, "%s", given ? given : stamp);
    snprintf(run.dir, sizeof run.dir, "%s/%s", c.runs_dir, run.id);
    for (int k = 2; !given && path_exists(run.dir) && k < 1000; k++) { // two runs in one second
        snprintf(run.id, sizeof run.id, "%s_%d", stamp, k);
        snprintf(run.dir, sizeof run.dir, "%s/%s", c.runs_dir, run.id);
    }
    if (given && path_exists(run.dir)) {
        err_input(&err, "run %s already exists in %s", run.id, c.runs_dir);
        goto out;
    }
    char model_config[1100];
    snprintf(model_config, sizeof model_config, "%s/config.json", c.model_path);
    if (c.make_organism && !path_exists(model_config)) {
        progress("init-run: writing the embedded %s organism to %s\n", organism_mechanism_name(c.organism),
                 c.model_path);
        if (organism_write_mechanism(c.model_path, c.organism, &err)) goto out;
    } else if (c.make_organism && organism_check_mechanism(c.model_path, c.organism, c.file, &err)) {
        goto out;
    }
    // The sampling the run will use, when the model is there to say what it leaves to it.
    ModelConfig mc;
    if (path_exists(model_config)) {
        if (model_config_read(c.model_path, &mc, &err)) goto out;
        Sampler sampler = config_sampler(&c, &mc);
        c.temperature = sampler.temperature, c.top_k = sampler.top_k, c.top_p = sampler.top_p;
    }
    if (mkdir_p(run.dir, &err)) goto out;
    Buf resolved = {0}, meta = {0};
    config_write_resolved(&c, &resolved);
    char path[1200], sha[64], id[512];
    git_sha(sha, sizeof sha);
    model_id(c.model_path, id, sizeof id);
    buf_puts(&meta, "{\n  \"run_id\": ");
    buf_json_string(&meta, run.id, strlen(run.id));
    buf_puts(&meta, ",\n  \"git_sha\": ");
    buf_json_string(&meta, sha, strlen(sha));
    buf_printf(&meta, ",\n  \"utc_time\": \"%s\",\n  \"model_path\": ", utc_time);
    buf_json_string(&meta, c.model_path, strlen(c.model_path));
    buf_puts(&meta, ",\n  \"model_id\": ");
    buf_json_string(&meta, id, strlen(id));
    buf_puts(&meta, ",\n  \"config\": ");
    buf_json_string(&meta, c.file, strlen(c.file));
    buf_puts(&meta, ",\n  \"sampling\": {\"temperature\": "); // null: left to a model not there yet
    buf_json_double(&meta, c.temperature);
    buf_puts(&meta, ", \"top_k\": ");
    if (c.top_k >= 0) buf_printf(&meta, "%d", c.top_k);
    else buf_puts(&meta, "null");
    buf_puts(&meta, ", \"top_p\": ");
    buf_json_double(&meta, c.top_p);
    buf_printf(&meta,
               "},\n  \"config_digest\": \"fnv1a64:%016llx\",\n  \"bt_version\": \"%s\",\n  \"threads\": %d\n}\n",
               (unsigned long long)fnv1a64(resolved.data, resolved.len), BT_VERSION, bt_threads);
    run_path(&run, path, sizeof path, ART_CONFIG_RESOLVED);
    int rc = write_file_atomic(path, resolved.data, resolved.len, &err);
    run_path(&run, path, sizeof path, ART_META);
    if (rc == 0) rc = write_file_atomic(path, meta.data, meta.len, &err);
    snprintf(path, sizeof path, "%s/%s", c.runs_dir, CURRENT_RUN_FILE);
    if (rc == 0) rc = write_file_atomic(path, run.id, strlen(run.id), &err);
    buf_free(&resolved);
    buf_free(&meta);
    if (rc == 0) printf("%s\n", run.dir);
out:
    config_free(&c);
    return err.msg[0] ? fail(&err) : 0;
}

// ----------------------------------------------------------------------------
// Shards: a stage's share K of N, its file names next to the unsharded output, its manifest,
// and the set of shards a reader takes when the unsharded output is absent.

#define SHARD_TAG ".shard-" // <stem>.shard-KKK-of-NNN.<ext>
#define SHARD_MANIFEST_EXT "manifest.json"

// A whole number of at most 9 digits in s[0..len), nothing else; -1 otherwise.
static long whole_number(const char *s, size_t len) {
    if (len == 0 || len > 9) return -1;
    long v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

static long env_number(const char *name) {
    const char *v = getenv(name);
    return v ? whole_number(v, strlen(v)) : -1;
}

int shard_parse(const char *spec, Shard *s, Err *err) {
    s->k = s->n = 0;
    if (!spec) return 0;
    long k, n;
    if (strcmp(spec, "auto") == 0) {
        long id = env_number("SLURM_ARRAY_TASK_ID");
        if (id < 0)
            return err_input(err,
                             "--shard auto: SLURM_ARRAY_TASK_ID is not set (not a Slurm array task): give --shard K/N");
        if (getenv("BT_SHARDS")) {
            k = id, n = env_number("BT_SHARDS");
            if (n < 1) return err_input(err, "--shard auto: BT_SHARDS='%s' is not a shard count", getenv("BT_SHARDS"));
        } else {
            long min = env_number("SLURM_ARRAY_TASK_MIN"), count = env_number("SLURM_ARRAY_TASK_COUNT");
            if (min < 0 || count < 1)
                return err_input(err, "--shard auto: SLURM_ARRAY_TASK_MIN or SLURM_ARRAY_TASK_COUNT is not set");
            k = id - min + 1, n = count;
        }
        if (k < 1 || k > n || n > SHARD_MAX)
            return err_input(err, "--shard auto: array task %ld is not one of shards 1..%ld (at most %d)", id, n,
                             SHARD_MAX);
    } else {
        const char *slash = strchr(spec, '/');
        k = slash ? whole_number(spec, (size_t)(slash - spec)) : -1;
        n = slash ? whole_number(slash + 1, strlen(slash + 1)) : -1;
        if (k < 0 || n < 0) return err_input(err, "--shard '%s': give K/N (shard K of N, 1 <= K <= N) or auto", spec);
        if (n < 1 || n > SHARD_MAX || k < 1 || k > n)
            return err_input(err, "--shard %s: K must be in 1..N and N in 1..%d", spec, SHARD_MAX);
    }
    s->k = (int)k, s->n = (int)n;
    return 0;
}

void shard_range(const Shard *s, int n_units, const double *costs, int *first, int *end) {
    double total = 0;
    for (int q = 0; costs && q < n_units; q++) total += costs[q];
    if (!s->n || total <= 0) {
        *first = s->n ? (int)((long long)n_units * (s->k - 1) / s->n) : 0;
        *end = s->n ? (int)((long long)n_units * s->k / s->n) : n_units;
        return;
    }
    *first = *end = n_units;
    double before = 0; // the costs of units 0..q-1
    for (int q = 0; q < n_units; q++) {
        int k = (int)((before + costs[q] / 2) * s->n / total) + 1; // the shard of unit q's midpoint
        if (k > s->n) k = s->n;
        if (k >= s->k && *first == n_units) *first = q;
        if (k > s->k) {
            *end = q;
            break;
        }
        before += costs[q];
    }
}

// dir/stem.ext -> dir/stem.shard-KKK-of-NNN.<ext> (ext NULL: the path's own extension).
static void shard_file_ext(const char *path, const Shard *s, const char *ext, char *out, size_t n) {
    const char *base = strrchr(path, '/'), *dot = strrchr(base ? base : path, '.');
    size_t stem = dot ? (size_t)(dot - path) : strlen(path);
    snprintf(out, n, "%.*s" SHARD_TAG "%03d-of-%03d.%s", (int)stem, path, s->k, s->n, ext ? ext : dot ? dot + 1 : "");
}

void shard_file(const char *path, const Shard *s, char *out, size_t n) { shard_file_ext(path, s, NULL, out, n); }

size_t shard_name_stem(const char *name, const char *ext) {
    size_t len = strlen(name), tail = strlen(SHARD_TAG) + 3 + 4 + 3 + 1 + strlen(ext); // .shard-KKK-of-NNN.ext
    if (len <= tail) return 0;
    const char *t = name + len - tail;
    if (memcmp(t, SHARD_TAG, strlen(SHARD_TAG)) != 0) return 0;
    t += strlen(SHARD_TAG);
    if (whole_number(t, 3) < 1 || memcmp(t + 3, "-of-", 4) != 0 || whole_number(t + 7, 3) < 1 || t[10] != '.' ||
        strcmp(t + 11, ext) != 0)
        return 0;
    return len - tail;
}

// The K and N of a shard name whose stem and ext are known to match.
static void shard_name_kn(const char *name, size_t stem, int *k, int *n) {
    const char *t = name + stem + strlen(SHARD_TAG);
    *k = (int)whole_number(t, 3);
    *n = (int)whole_number(t + 7, 3);
}

typedef struct {
    char *run_id;
    ShardInfo info; // stage and what are owned
    int k, n, first_unit, end_unit, finished;
} Manifest;

static void manifest_free(Manifest *m) {
    free(m->run_id);
    shard_info_free(&m->info);
    memset(m, 0, sizeof *m);
}

void shard_info_free(ShardInfo *info) {
    free((char *)info->stage);
    free((char *)info->what);
    memset(info, 0, sizeof *info);
}

static int manifest_write(const Run *run, const char *path, const Shard *s, const ShardInfo *info, int finished,
                          Err *err) {
    char mpath[1300];
    shard_file_ext(path, s, SHARD_MANIFEST_EXT, mpath, sizeof mpath);
    int first, end;
    shard_range(s, info->units, info->costs, &first, &end);
    Buf b = {0};
    buf_puts(&b, "{\"run_id\": ");
    buf_json_string(&b, run->id, strlen(run->id));
    buf_puts(&b, ", \"stage\": ");
    buf_json_string(&b, info->stage, strlen(info->stage));
    buf_puts(&b, ", \"what\": ");
    buf_json_string(&b, info->what, strlen(info->what));
    buf_printf(&b,
               ", \"shard\": %d, \"n_shards\": %d, \"units\": %d, \"first_unit\": %d, \"end_unit\": %d, \"items\": %d, "
               "\"digest\": \"fnv1a64:%016llx\", \"finished\": %s}\n",
               s->k, s->n, info->units, first, end, info->items, (unsigned long long)info->digest,
               finished ? "true" : "false");
    int rc = write_file_atomic(mpath, b.data, b.len, err);
    buf_free(&b);
    return rc;
}

static int manifest_read(const char *mpath, Manifest *m, Err *err) {
    memset(m, 0, sizeof *m);
    Buf text = {0};
    Json j;
    if (read_file(mpath, &text, err)) return -1;
    if (json_parse(&j, text.data, text.len, mpath, err)) {
        buf_free(&text);
        return -1;
    }
    long long v[7] = {0};
    static const char *const keys[7] = {"shard", "n_shards", "units", "first_unit", "end_unit", "items", "finished"};
    int ok = 1;
    for (int i = 0; i < 6; i++)
        ok = ok && json_int(&j, json_key(&j, 0, keys[i]), &v[i]) == 0 && v[i] >= -1 && v[i] <= INT32_MAX;
    int finished = 0;
    ok = ok && json_bool(&j, json_key(&j, 0, "finished"), &finished) == 0;
    m->run_id = json_strdup(&j, json_key(&j, 0, "run_id"));
    m->info.stage = json_strdup(&j, json_key(&j, 0, "stage"));
    m->info.what = json_strdup(&j, json_key(&j, 0, "what"));
    char *digest = json_strdup(&j, json_key(&j, 0, "digest"));
    unsigned long long d = 0;
    ok = ok && m->run_id && m->info.stage && m->info.what && digest && sscanf(digest, "fnv1a64:%16llx", &d) == 1;
    free(digest);
    json_free(&j);
    buf_free(&text);
    if (!ok) {
        manifest_free(m);
        return err_input(err, "%s: not a shard manifest (a field is missing or bad)", mpath);
    }
    m->k = (int)v[0], m->n = (int)v[1], m->info.units = (int)v[2], m->first_unit = (int)v[3], m->end_unit = (int)v[4];
    m->info.items = (int)v[5], m->info.digest = d, m->finished = finished;
    return 0;
}

static int same_info(const ShardInfo *a, const ShardInfo *b) {
    return strcmp(a->stage, b->stage) == 0 && strcmp(a->what, b->what) == 0 && a->units == b->units &&
           a->items == b->items && a->digest == b->digest;
}

// The shard names of path in its directory (data files and manifests): each (k, n) once, sorted by k then n.
static int shard_names(const char *path, int (*kn)[2], int max, int *n_found) {
    char dir[1200];
    const char *slash = strrchr(path, '/'), *base = slash ? slash + 1 : path, *dot = strrchr(base, '.');
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) : 1, slash ? path : ".");
    size_t stem = dot ? (size_t)(dot - base) : strlen(base);
    *n_found = 0;
    DIR *d = opendir(dir);
    if (!d) return 0;
    for (struct dirent *e; (e = readdir(d));) {
        size_t s = shard_name_stem(e->d_name, dot ? dot + 1 : "");
        if (!s) s = shard_name_stem(e->d_name, SHARD_MANIFEST_EXT);
        if (s != stem || memcmp(e->d_name, base, stem) != 0) continue;
        int k, n, seen = 0;
        shard_name_kn(e->d_name, s, &k, &n);
        for (int i = 0; i < *n_found && !seen; i++) seen = kn[i][0] == k && kn[i][1] == n;
        if (!seen && *n_found < max) kn[(*n_found)++][0] = k, kn[*n_found - 1][1] = n;
    }
    closedir(d);
    for (int i = 1; i < *n_found; i++) // insertion sort: a few hundred at most
        for (int j = i; j > 0 && (kn[j][0] < kn[j - 1][0] || (kn[j][0] == kn[j - 1][0] && kn[j][1] < kn[j - 1][1]));
             j--) {
            int t0 = kn[j][0], t1 = kn[j][1];
            kn[j][0] = kn[j - 1][0], kn[j][1] = kn[j - 1][1], kn[j - 1][0] = t0, kn[j - 1][1] = t1;
        }
    return *n_found;
}

int exists_or_sharded(const char *path) {
    int kn[1][2], n;
    return path_exists(path) || shard_names(path, kn, 1, &n) > 0;
}

int shard_begin(const Run *run, const char *path, const Shard *s, const ShardInfo *info, Err *err) {
    char file[1300], mpath[1300];
    shard_file(path, s, file, sizeof file);
    if (info->append && path_exists(path))
        return err_input(
            err, "%s exists: this output was made unsharded or its shards are merged (remove it to make shards)", path);
    static int kn[4 * SHARD_MAX][2];
    int n_found;
    shard_names(path, kn, 4 * SHARD_MAX, &n_found);
    for (int i = 0; i < n_found; i++)
        if (kn[i][1] != s->n) {
            Shard other = {kn[i][0], kn[i][1]};
            shard_file(path, &other, mpath, sizeof mpath);
            return err_input(err,
                             "%s: shards of this output by N = %d are there, and one output is split one way (remove "
                             "them to shard it by %d)",
                             mpath, other.n, s->n);
        }
    shard_file_ext(path, s, SHARD_MANIFEST_EXT, mpath, sizeof mpath);
    if (path_exists(file) || path_exists(mpath)) { // left by an earlier try of this shard: of this run and stage?
        Manifest m;
        if (!path_exists(mpath))
            return err_input(err, "%s has no manifest %s: not written by this shard; remove it", file, mpath);
        if (manifest_read(mpath, &m, err)) return -1;
        int rc = 0;
        if (strcmp(m.run_id, run->id) != 0)
            rc = err_input(err, "%s belongs to run %s, not to run %s: remove it", mpath, m.run_id, run->id);
        else if (strcmp(m.info.stage, info->stage) != 0 || strcmp(m.info.what, info->what) != 0)
            rc = err_input(err, "%s was written by %s of %s, not %s of %s", mpath, m.info.stage, m.info.what,
                           info->stage, info->what);
        else if (info->append && !same_info(&m.info, info) && path_exists(file))
            rc = err_input(
                err,
                "%s was started under another config or inputs (digest, units): remove it to start this shard again",
                file);
        manifest_free(&m);
        if (rc) return rc;
    }
    if (manifest_write(run, path, s, info, 0, err)) return -1;
    return info->append && !path_exists(file) ? append_durable(file, "", 0, err) : 0; // a share of none is a file too
}

int shard_finish(const Run *run, const char *path, const Shard *s, const ShardInfo *info, Err *err) {
    return manifest_write(run, path, s, info, 1, err);
}

int shard_done(const Run *run, const char *path, const Shard *s, const ShardInfo *info) {
    char file[1300], mpath[1300];
    shard_file(path, s, file, sizeof file);
    shard_file_ext(path, s, SHARD_MANIFEST_EXT, mpath, sizeof mpath);
    Manifest m;
    Err ignored;
    if (!path_exists(file) || !path_exists(mpath) || manifest_read(mpath, &m, &ignored)) return 0;
    int done = m.finished && m.k == s->k && m.n == s->n && strcmp(m.run_id, run->id) == 0 && same_info(&m.info, info);
    manifest_free(&m);
    return done;
}

void shard_set_free(char **files, int n) {
    for (int i = 0; i < n; i++) free(files[i]);
    free(files);
}

int shard_set(const char *run_id, const char *path, uint64_t want_digest, char ***files_out, int *n_shards,
              ShardInfo *info, Err *err) {
    *files_out = NULL;
    *n_shards = 0;
    static int kn[4 * SHARD_MAX][2];
    int n_found;
    if (shard_names(path, kn, 4 * SHARD_MAX, &n_found) == 0) return 0;
    int n = kn[0][1];
    char a[1300], b[1300];
    for (int i = 1; i < n_found; i++)
        if (kn[i][1] != n) {
            Shard x = {kn[0][0], n}, y = {kn[i][0], kn[i][1]};
            shard_file(path, &x, a, sizeof a);
            shard_file(path, &y, b, sizeof b);
            return err_input(err, "%s and %s: shards of one output with different N (%d and %d); remove the stale set",
                             a, b, n, y.n);
        }
    // Every shard's data file must be there: name the missing ones.
    Buf missing = {0};
    int n_missing = 0;
    for (int k = 1; k <= n; k++) {
        Shard s = {k, n};
        shard_file(path, &s, a, sizeof a);
        if (path_exists(a)) continue;
        if (n_missing++ < 8) buf_printf(&missing, "%s%s", n_missing > 1 ? ", " : "", a);
    }
    if (n_missing) {
        if (n_missing > 8) buf_printf(&missing, " and %d more", n_missing - 8);
        err_input(err, "%s is not there and its shards have holes: %d of %d missing: %s", path, n_missing, n,
                  missing.data);
        buf_free(&missing);
        return -1;
    }
    char **files = xcalloc((size_t)n, sizeof *files);
    Manifest first = {0};
    int rc = 0;
    for (int k = 1; k <= n && rc == 0; k++) {
        Shard s = {k, n};
        Manifest m;
        shard_file(path, &s, a, sizeof a);
        shard_file_ext(path, &s, SHARD_MANIFEST_EXT, b, sizeof b);
        files[k - 1] = xstrdup(a);
        if (!path_exists(b)) {
            rc = err_input(err, "%s has no manifest %s: not written by a bt shard", a, b);
            break;
        }
        if (manifest_read(b, &m, err)) {
            rc = -1;
            break;
        }
        if (strcmp(m.run_id, run_id) != 0)
            rc = err_input(err, "%s: a shard of run %s, not of run %s", b, m.run_id, run_id);
        else if (m.k != k || m.n != n)
            rc = err_input(err, "%s: says shard %d of %d, but is named shard %d of %d", b, m.k, m.n, k, n);
        else if (!m.finished)
            rc = err_input(err, "%s: unfinished: its task stopped or still runs (run shard %d/%d again)", b, k, n);
        else if (k > 1 && !same_info(&m.info, &first.info))
            rc = err_input(err,
                           "%s: disagrees with shard 1 of %d on what they hold (%s of %s; digest, units or items): "
                           "rerun the stale shards",
                           b, n, m.info.stage, m.info.what);
        else if (want_digest && m.info.digest != want_digest)
            rc = err_input(err,
                           "%s: computed from other inputs than the run's current ones (config or input files "
                           "changed): rerun its shards",
                           b);
        if (k == 1)
            first = m;
        else
            manifest_free(&m);
    }
    if (rc) {
        manifest_free(&first);
        shard_set_free(files, n);
        return -1;
    }
    if (info) *info = first.info, first.info.stage = first.info.what = NULL;
    manifest_free(&first);
    *files_out = files;
    *n_shards = n;
    return n;
}

void run_id_of_generation_path(const char *path, char *id, size_t n) {
    const char *end = NULL, *p = path;
    for (const char *q; (q = strstr(p, "/generations/")); p = q + 1) end = q; // the last one
    const char *start = end;
    while (start && start > path && start[-1] != '/') start--;
    snprintf(id, n, "%.*s", end ? (int)(end - start) : 0, end ? start : "");
}

uint64_t config_digest(const Config *c) {
    Buf b = {0};
    config_write_resolved(c, &b);
    uint64_t d = fnv1a64(b.data, b.len);
    buf_free(&b);
    return d;
}

uint64_t file_digest(const char *path) {
    Buf b = {0};
    Err ignored;
    uint64_t d = read_file(path, &b, &ignored) ? 0 : fnv1a64(b.data, b.len);
    buf_free(&b);
    return d;
}

// Concatenates files[0..n) (those that exist when skip_missing) into path, whole.
static int concat_files(char **files, int n, int skip_missing, const char *path, Err *err) {
    Buf all = {0};
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++)
        if (!skip_missing || path_exists(files[i])) rc = read_file(files[i], &all, err);
    if (rc == 0) rc = write_file_atomic(path, all.data ? all.data : "", all.len, err);
    buf_free(&all);
    return rc;
}

int merge_generations(const Config *c, const Run *run, int *n_merged, Err *err) {
    char **paths;
    int n_paths = run_generation_files(c, run, &paths, err), rc = 0;
    *n_merged = 0;
    for (int f = 0; f < n_paths && rc == 0; f++) {
        char **files;
        int n;
        if (path_exists(paths[f])) continue;
        if ((rc = shard_set(run->id, paths[f], 0, &files, &n, NULL, err)) <= 0) continue;
        rc = concat_files(files, n, 0, paths[f], err);
        for (int k = 0; k < n; k++) { // each shard's timing sidecar: stem.shard-KKK-of-NNN.timing.jsonl
            size_t len = strlen(files[k]);
            char *t = xmalloc(len + 16);
            snprintf(t, len + 16, "%.*s.timing.jsonl", (int)(len - 6), files[k]);
            free(files[k]);
            files[k] = t;
        }
        char timing[1300];
        snprintf(timing, sizeof timing, "%.*s.timing.jsonl", (int)(strlen(paths[f]) - 6), paths[f]);
        if (rc == 0) rc = concat_files(files, n, 1, timing, err);
        shard_set_free(files, n);
        if (rc == 0) (*n_merged)++;
    }
    for (int f = 0; f < n_paths; f++) free(paths[f]);
    free(paths);
    return rc < 0 ? -1 : 0;
}

// ----------------------------------------------------------------------------
// Problems: GSM8K JSONL in, data/processed/<source>_<N>.jsonl out.

// Arithmetic word problems written for bt (not from GSM8K): question, gold answer.
static const char *const builtin_problems[][2] = {
    {"Mia has 12 apples and buys 7 more. How many apples does she have now?", "19"},
    {"A baker makes 48 rolls and puts them in bags of 6. How many bags does he fill?", "8"},
    {"Tom reads 15 pages a day for 6 days. How many pages does he read?", "90"},
    {"A bus holds 40 people. 23 get on at the first stop and 9 more at the second. How many seats are still empty?",
     "8"},
    {"Sara saves 5 dollars a week. How many dollars has she saved after 13 weeks?", "65"},
    {"A garden has 7 rows of 9 tulips. 14 tulips are picked. How many tulips are left?", "49"},
    {"Ben buys 3 notebooks at 4 dollars each and a pen for 2 dollars. How much does he spend?", "14"},
    {"A train travels 60 miles an hour for 3 hours and then 45 miles an hour for 2 hours. How far does it go?", "270"},
    {"Lena has 100 stickers. She gives 35 to her brother and 20 to a friend. How many does she keep?", "45"},
    {"There are 24 students in a class and a third of them walk to school. How many students walk?", "8"},
    {"A shop sells pencils in packs of 10. Kim needs 73 pencils. How many packs must she buy?", "8"},
    {"A farmer has 18 cows and twice as many sheep. How many animals does he have in all?", "54"},
    {"Omar runs 4 laps of a 400 meter track every morning. How many meters does he run in 5 mornings?", "8000"},
    {"A pizza is cut into 8 slices. 5 friends each eat 3 slices. How many pizzas did they need at least?", "2"},
    {"Jade earns 11 dollars an hour and works 7 hours. She spends 30 dollars on lunch and a book. How much is left?",
     "47"},
    {"A box has 6 red, 9 blue and 5 green marbles. How many marbles are not blue?", "11"},
    {"Paul is 9 years old. His mother is 4 times as old. How old will his mother be in 5 years?", "41"},
    {"A tank holds 250 liters. It is filled at 25 liters a minute. How many minutes does it take to fill it from "
     "empty?",
     "10"},
    {"Nina bakes 3 trays of 12 cookies and eats 4. She shares the rest equally with 3 friends, herself included. How "
     "many cookies does each get?",
     "8"},
    {"A movie starts at 7 pm and lasts 135 minutes. How many minutes after 9 pm does it end?", "15"},
    {"Leo has 5 boxes with 16 crayons each. He loses 12 crayons. How many crayons does he have?", "68"},
    {"A ticket costs 8 dollars for adults and 5 dollars for children. What do 2 adults and 3 children pay?", "31"},
    {"A rope is 84 meters long and is cut into pieces of 7 meters. How many pieces are there?", "12"},
    {"Ella plants 5 seeds a day for 2 weeks. How many seeds does she plant?", "70"},
    {"A library has 320 books and lends out a quarter of them. How many books stay on the shelves?", "240"},
    {"Max buys 2 shirts at 15 dollars and pays with a 50 dollar bill. How much change does he get?", "20"},
    {"A recipe needs 3 eggs for 12 muffins. How many eggs are needed for 36 muffins?", "9"},
    {"Ivy walks 2 kilometers to school and back every day. How many kilometers does she walk in 5 school days?", "20"},
    {"A hotel has 9 floors with 14 rooms each. 37 rooms are empty. How many rooms are taken?", "89"},
    {"Sam had 60 dollars. He spent half on shoes and 12 dollars on socks. How much does he have left?", "18"},
    {"A car uses 6 liters of fuel for every 100 kilometers. How many liters does it use for 450 kilometers?", "27"},
    {"Zoe scores 17, 23 and 20 points in three games. What is her average score?", "20"},
    {"A classroom has 5 tables with 4 chairs each, and 3 extra chairs by the wall. How many chairs are there?", "23"},
    {"Ann picks 45 strawberries and Bob picks 3 times as many. How many do they pick together?", "180"},
    {"A clock gains 2 minutes every day. How many minutes does it gain in 3 weeks?", "42"},
    {"A school orders 12 boxes of 25 pencils and hands out 260. How many pencils are left?", "40"},
    {"Dan swims 30 lengths on Monday and 10 more on Tuesday than on Monday. How many lengths does he swim on both "
     "days?",
     "70"},
    {"A packet of tea has 80 bags. Ruth uses 4 bags a day. How many days does the packet last?", "20"},
    {"Each of 7 kites needs 3 meters of string. String comes in 10 meter rolls. How many rolls are needed?", "3"},
    {"A fruit stall sells 14 melons in the morning and 19 in the afternoon at 3 dollars each. How much money does it "
     "take in?",
     "99"},
};
#define N_BUILTIN (int)(sizeof builtin_problems / sizeof builtin_problems[0])

void processed_path(const Config *c, char *out, size_t n) {
    snprintf(out, n, "%s/%s_%d.jsonl", c->processed_dir, c->data_source == SOURCE_BUILTIN ? "builtin" : "gsm8k",
             c->n_problems);
}

void problems_free(Problem *p, int n) {
    for (int i = 0; i < n; i++) {
        free(p[i].id);
        free(p[i].question);
        free(p[i].gold);
        free(p[i].answer);
    }
    free(p);
}

// Gold answer of a GSM8K solution: the text after "#### ", commas removed.
static char *gold_from_answer(const char *answer) {
    const char *mark = strstr(answer, "#### ");
    if (!mark) return NULL;
    Buf b = {0};
    for (const char *s = mark + 5; *s && *s != '\n'; s++)
        if (*s != ',') buf_putc(&b, *s);
    if (!b.data) return NULL;
    char *g = xstrdup(strip(b.data));
    buf_free(&b);
    if (!*g) {
        free(g);
        return NULL;
    }
    return g;
}

// Reads a JSONL file of problems. With gsm8k_layout, records are GSM8K's
// {question, answer} and the gold answer is extracted; otherwise bt's
// processed records {id, question, gold, answer}.
static int read_problems(const char *path, int gsm8k_layout, Problem **out, int *n_out, Err *err) {
    Buf text = {0};
    if (read_file(path, &text, err) || text_has_nul(path, &text, err)) {
        buf_free(&text);
        return -1;
    }
    Problem *list = NULL;
    int n = 0, line_no = 0;
    char *p = text.data;
    const char *stem = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    size_t stem_len = strcspn(stem, ".");
    while (*p) {
        char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        line_no++;
        char *line = p;
        p = nl ? nl + 1 : p + len;
        int blank = 1;
        for (size_t i = 0; i < len; i++) blank &= line[i] == ' ' || line[i] == '\t' || line[i] == '\r';
        if (blank) continue;
        char name[1200];
        snprintf(name, sizeof name, "%s:%d", path, line_no);
        Json j;
        if (json_parse(&j, line, len, path, err)) {
            // json_parse counts lines within this one line; name the file's line instead.
            char *colon = strstr(err->msg, ": invalid JSON"), reason[sizeof err->msg]; // copied: err->msg is rewritten
            snprintf(reason, sizeof reason, "%s", colon ? colon + 2 : "invalid JSON");
            err_input(err, "%s: %s", name, reason);
            goto fail;
        }
        int dup = json_duplicate_key(&j, 0); // a key given twice is refused, not resolved
        if (j.tok[0].type != JSON_OBJECT || dup >= 0) {
            char *key = dup >= 0 ? json_strdup(&j, dup) : NULL;
            json_free(&j);
            if (key) err_input(err, "%s: key \"%.200s\" appears twice", name, key);
            else err_input(err, "%s: expected a JSON object", name);
            free(key);
            goto fail;
        }
        Problem pr = {0};
        pr.question = json_strdup(&j, json_key(&j, 0, "question"));
        pr.answer = json_strdup(&j, json_key(&j, 0, "answer"));
        if (gsm8k_layout) {
            if (pr.answer) pr.gold = gold_from_answer(pr.answer);
            Buf id = {0};
            buf_printf(&id, "%.*s_%04d", (int)stem_len, stem, line_no - 1);
            pr.id = id.data;
        } else {
            pr.id = json_strdup(&j, json_key(&j, 0, "id"));
            pr.gold = json_strdup(&j, json_key(&j, 0, "gold"));
        }
        json_free(&j);
        const char *missing = !pr.question ? "question" : !pr.answer ? "answer" : !pr.id ? "id" : NULL;
        if (missing || !pr.gold) {
            if (missing) err_input(err, "%s: missing string field \"%s\"", name, missing);
            else if (gsm8k_layout) err_input(err, "%s: answer has no '#### ' gold answer", name);
            else err_input(err, "%s: missing string field \"gold\"", name);
            free(pr.id); free(pr.question); free(pr.gold); free(pr.answer);
            goto fail;
        }
        list = xrealloc(list, (size_t)(n + 1) * sizeof *list);
        list[n++] = pr;
    }
    buf_free(&text);
    *out = list;
    *n_out = n;
    return 0;
fail:
    buf_free(&text);
    problems_free(list, n);
    return -1;
}

int problems_load(const char *path, Problem **out, int *n_out, Err *err) {
    return read_problems(path, 0, out, n_out, err);
}
int gsm8k_load(const char *path, Problem **out, int *n_out, Err *err) {
    return read_problems(path, 1, out, n_out, err);
}

int cmd_prepare_data(int argc, char **argv) {
    Opt opts[] = {OPT_CONFIG, OPT_END};
    Err err = {0};
    Config c;
    Run run;
    int exit_code;
    if (stage_open(argc, argv, opts, &c, &run, &exit_code)) return exit_code;
    Problem *all = NULL, *chosen = NULL;
    int n_all = 0, n = c.n_problems;
    if (c.data_source == SOURCE_BUILTIN) {
        if (n > N_BUILTIN) {
            err_input(&err, "%s: [data] n_problems = %d but there are %d built-in problems", c.file, n, N_BUILTIN);
            goto out;
        }
        chosen = xcalloc((size_t)n, sizeof *chosen);
        for (int i = 0; i < n; i++) {
            char id[32];
            snprintf(id, sizeof id, "builtin_%03d", i);
            Buf answer = {0};
            buf_printf(&answer, "#### %s", builtin_problems[i][1]);
            chosen[i] =
                (Problem){xstrdup(id), xstrdup(builtin_problems[i][0]), xstrdup(builtin_problems[i][1]), answer.data};
        }
    } else {
        if (read_problems(c.data_path, 1, &all, &n_all, &err)) goto out;
        if (n > n_all) {
            err_input(&err, "%s: [data] n_problems = %d but %s has %d problems", c.file, n, c.data_path, n_all);
            goto out;
        }
        // A seeded partial Fisher-Yates shuffle picks n of them; kept in file order.
        int *index = xmalloc((size_t)n_all * sizeof *index);
        for (int i = 0; i < n_all; i++) index[i] = i;
        Rng rng;
        rng_seed(&rng, seed_mix((uint64_t)c.seed, 0xDA7A));
        for (int i = 0; i < n; i++) {
            int k = i + (int)rng_below(&rng, (uint64_t)(n_all - i));
            int t = index[i]; index[i] = index[k]; index[k] = t;
        }
        qsort(index, (size_t)n, sizeof *index, cmp_int_asc);
        chosen = xcalloc((size_t)n, sizeof *chosen);
        for (int i = 0; i < n; i++) {
            chosen[i] = all[index[i]];
            all[index[i]] = (Problem){0};
        }
        free(index);
    }
    Buf out = {0};
    for (int i = 0; i < n; i++) {
        buf_puts(&out, "{\"id\": ");
        buf_json_string(&out, chosen[i].id, strlen(chosen[i].id));
        buf_puts(&out, ", \"question\": ");
        buf_json_string(&out, chosen[i].question, strlen(chosen[i].question));
        buf_puts(&out, ", \"gold\": ");
        buf_json_string(&out, chosen[i].gold, strlen(chosen[i].gold));
        buf_puts(&out, ", \"answer\": ");
        buf_json_string(&out, chosen[i].answer, strlen(chosen[i].answer));
        buf_puts(&out, "}\n");
    }
    char path[1100];
    processed_path(&c, path, sizeof path);
    if (write_file_atomic(path, out.data, out.len, &err) == 0) printf("%s\n", path);
    buf_free(&out);
out:
    problems_free(all, n_all);
    problems_free(chosen, chosen ? n : 0);
    config_free(&c);
    return err.msg[0] ? fail(&err) : 0;
}

// ----------------------------------------------------------------------------
// Answers: the predicted answer of a completion and its comparison with gold.

// Canonical form of an answer: no spaces, commas or '$' (or \$), no trailing '.',
// and numbers in one spelling (12.50 and 12.5, 7.0 and 7 compare equal).
void answer_normalize(const char *s, size_t n, char *out, size_t out_n) {
    char tmp[256];
    size_t k = 0;
    for (size_t i = 0; i < n && k + 1 < sizeof tmp; i++) {
        if (s[i] == '\\' && i + 1 < n && s[i + 1] == '$') continue; // LaTeX \$
        if (s[i] != ' ' && s[i] != ',' && s[i] != '$' && s[i] != '\n' && s[i] != '\t') tmp[k++] = s[i];
    }
    while (k > 0 && tmp[k - 1] == '.') k--;
    tmp[k] = 0;
    char *end;
    double v = strtod(tmp, &end);
    if (k > 0 && *end == 0 && tmp[0] != '+' && (tmp[0] == '-' || (tmp[0] >= '0' && tmp[0] <= '9') || tmp[0] == '.') &&
        v == v)
        snprintf(out, out_n, "%.12g", v);
    else
        snprintf(out, out_n, "%s", tmp);
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

// Finds the last number ("-1,234.5") in s[0..n); returns its start and length.
static int last_number(const char *s, size_t n, size_t *start, size_t *len) {
    int found = 0;
    for (size_t i = 0; i < n;) {
        if (!is_digit(s[i])) { i++; continue; }
        size_t b = i;
        if (b > 0 && s[b - 1] == '-') b--;
        while (i < n && (is_digit(s[i]) || ((s[i] == ',' || s[i] == '.') && i + 1 < n && is_digit(s[i + 1])))) i++;
        *start = b;
        *len = i - b;
        found = 1;
    }
    return found;
}

static const char *find_last(const char *s, size_t n, const char *needle) {
    size_t m = strlen(needle);
    for (size_t i = n >= m ? n - m + 1 : 0; i-- > 0;)
        if (memcmp(s + i, needle, m) == 0) return s + i;
    return NULL;
}

// The predicted answer of a completion: the last \boxed{...}, else the number
// after the last "####", else the last number after </think> (anywhere when the
// prompt left no <think> open). Empty when there is none.
void answer_extract(const char *text, size_t n, int thinking_open, char *out, size_t out_n) {
    out[0] = 0;
    const char *boxed = find_last(text, n, "\\boxed{");
    if (boxed) {
        const char *p = boxed + 7, *end = text + n;
        int depth = 1;
        const char *q = p;
        while (q < end && depth > 0) {
            if (*q == '{') depth++;
            if (*q == '}') depth--;
            if (depth > 0) q++;
        }
        if (depth == 0) {
            answer_normalize(p, (size_t)(q - p), out, out_n);
            return;
        }
    }
    const char *hashes = find_last(text, n, "####");
    if (hashes) {
        size_t rest = n - (size_t)(hashes + 4 - text), start, len;
        const char *line_end = memchr(hashes + 4, '\n', rest);
        if (line_end) rest = (size_t)(line_end - (hashes + 4));
        if (last_number(hashes + 4, rest, &start, &len)) {
            // The first number after ####, not the last on its line.
            size_t i = 0;
            const char *h = hashes + 4;
            while (i < rest && !is_digit(h[i])) i++;
            start = i > 0 && h[i - 1] == '-' ? i - 1 : i;
            while (i < rest && (is_digit(h[i]) || ((h[i] == ',' || h[i] == '.') && i + 1 < rest && is_digit(h[i + 1]))))
                i++;
            answer_normalize(h + start, i - start, out, out_n);
            return;
        }
    }
    const char *close = find_last(text, n, "</think>");
    const char *from = close ? close + 8 : thinking_open ? NULL : text;
    size_t start, len;
    if (from && last_number(from, (size_t)(text + n - from), &start, &len))
        answer_normalize(from + start, len, out, out_n);
}

// Whether a prompt leaves a <think> open (so the completion starts inside thinking).
int prompt_thinking_open(const char *prompt) {
    const char *open = find_last(prompt, strlen(prompt), "<think>");
    const char *close = find_last(prompt, strlen(prompt), "</think>");
    return open && (!close || close < open);
}

int answer_correct(const char *predicted, const char *gold) {
    char g[256];
    answer_normalize(gold, strlen(gold), g, sizeof g);
    return predicted[0] && strcmp(predicted, g) == 0;
}

// ----------------------------------------------------------------------------
// bt run: every stage in the seed's order, stopping at the first failure.

static int plan_write(const Config *c, int calibrate, int shards, Buf *out, Err *err);
// The stages bt run leaves out unless [steering] enabled = true.
static int steering_stage(int (*fn)(int, char **), const char *const *args) {
    return fn == cmd_directions || fn == cmd_steering_sweep ||
           (fn == cmd_generate && args[2] && steer_conditions(&(Config){0}, args[2], NULL) >= 0);
}

int cmd_run(int argc, char **argv) {
    Opt opts[] = {OPT_CONFIG, OPT("--plan", 0, "print the plan (as bt plan) and stop; without it the plan comes first"),
                  OPT_END};
    Err err = {0};
    int r = opts_parse(opts, argc, argv, &err);
    if (r) return r < 0 ? fail(&err) : 0;
    const char *config = opt_str(opts, "--config", BT_DEFAULT_CONFIG);
    Config c;
    if (config_load(&c, config, &err)) return fail(&err);
    set_threads(threads_flag >= 0 ? threads_flag : c.threads);
    int plan_only = opt_str(opts, "--plan", NULL) != NULL;
    if (plan_only || !bt_quiet) { // the plan goes to stdout with --plan, else to stderr as progress
        Buf plan = {0};
        if (plan_write(&c, 1, 1, &plan, &err)) {
            buf_free(&plan);
            config_free(&c);
            return fail(&err);
        }
        if (plan_only) write_stdout(&plan);
        else progress("%s", plan.data);
        buf_free(&plan);
        if (plan_only) {
            config_free(&c);
            return 0;
        }
    }
    char threads[16];
    snprintf(threads, sizeof threads, "%d", threads_flag >= 0 ? threads_flag : c.threads);
    const char *variant = c.lens_variant;
    struct { int (*fn)(int, char **); const char *args[4]; } stages[] = {
        {cmd_init_run, {"init-run"}},
        {cmd_prepare_data, {"prepare-data"}},
        {cmd_generate, {"generate", "--condition", "baseline"}},
        {cmd_detect_events, {"detect-events"}},
        {cmd_logit_lens, {"logit-lens", "--variant", variant}},
        {cmd_ablation_scan, {"ablation-scan", "--variant", variant}},
        {cmd_generate, {"generate", "--condition", "targeted_ablation", "--variant"}},
        {cmd_generate, {"generate", "--condition", "random_ablation", "--variant"}},
        {cmd_collateral_damage, {"collateral-damage", "--variant", variant}},
        {cmd_directions, {"directions", "--variant", variant}},
        {cmd_generate, {"generate", "--condition", "steer"}},
        {cmd_generate, {"generate", "--condition", "steer_random"}},
        {cmd_generate, {"generate", "--condition", "project_out"}},
        {cmd_detect_events, {"detect-events"}},
        {cmd_compare_conditions, {"compare-conditions", "--variant", variant}},
        {cmd_formatting_sweep, {"formatting-sweep"}},
        {cmd_steering_sweep, {"steering-sweep"}},
        {cmd_make_report, {"make-report"}},
    };
    int rc = 0;
    for (size_t i = 0; i < sizeof stages / sizeof stages[0] && rc == 0; i++) {
        if (!c.steering_enabled && steering_stage(stages[i].fn, stages[i].args)) continue;
        char *args[12];
        int n = 0;
        Buf name = {0};
        for (int k = 0; k < 4 && stages[i].args[k]; k++) {
            args[n++] = (char *)stages[i].args[k];
            buf_printf(&name, "%s%s", k ? " " : "", stages[i].args[k]);
        }
        if (n == 4 && strcmp(args[3], "--variant") == 0) { // the generate stages take the variant too
            args[n++] = (char *)variant;
            buf_printf(&name, " %s", variant);
        }
        args[n++] = "--config";
        args[n++] = (char *)config;
        args[n++] = "--threads";
        args[n++] = threads;
        args[n] = NULL;
        progress("bt run: %s\n", name.data);
        rc = stages[i].fn(n, args);
        if (rc) fprintf(stderr, "bt run: stage '%s' failed (exit %d)\n", name.data, rc);
        buf_free(&name);
    }
    config_free(&c);
    return rc;
}

// ----------------------------------------------------------------------------
// Plan: what `bt run` will do under a config, before it does it: the work of each heavy
// stage, the memory it needs, and the wall time from a calibration of a few seconds on
// the model. Events are not known before generation, so the analyses are sized at their
// max_events and generation at max_new_tokens per completion: the plan is an upper bound.

#define PLAN_PREFILL_TOKENS 256 // calibration: one teacher-forced sequence of this many positions
#define PLAN_DECODE_PROMPT 8    // calibration: prompt tokens of each decoding sequence
#define PLAN_DECODE_STEPS 8     // calibration: tokens each decoding sequence generates
#define PLAN_READOUT_ROWS 8     // calibration: final norm + unembedding readouts timed
#define PLAN_GRAD_TOKENS 64     // calibration: positions of the timed gradient pass (attribution methods)
#define PLAN_MIN_SECONDS 0.25   // calibration: each measurement repeats until it took this long ...
#define PLAN_MAX_REPEATS 50     // ... or this many times (small models)
#define PLAN_MB 1048576.0

typedef struct {
    double prefill_tok_s; // teacher-forced positions per second (prefill, logit lens, scans)
    double step_s;        // one decode step of batch sequences at short context
    int batch;            // sequences decoded together in the calibration
    double readout_s;     // final norm + unembedding of one residual
    double grad_pos_s;    // attribution methods: a gradient pass (forward and backward), per position
    double weight_bytes;  // weights read per decode step (every layer and lm_head)
    double seconds;       // the calibration took
} Calibration;

// Bytes of weights a forward step reads: every layer, the final norm and lm_head; an untied
// embedding is read a row at a time and left out.
static double plan_weight_bytes(Model *m) {
    double bytes = 0;
    TensorSlot *slots = xmalloc((size_t)model_slots(m, NULL) * sizeof *slots);
    int n_tensors = model_slots(m, slots);
    for (int i = 0; i < n_tensors; i++)
        if (strcmp(slots[i].name, "model.embed_tokens.weight") != 0 || m->cfg.tie_word_embeddings)
            bytes += (double)(slots[i].rows ? slots[i].rows : 1) * slots[i].cols * dtype_bytes(slots[i].t->dtype);
    free(slots);
    return bytes;
}

static int plan_calibrate(const Config *c, Model *m, const int *prompt, int n_prompt, int batch, Calibration *cal,
                          Err *err) {
    const ModelConfig *mc = &m->cfg;
    double t_start = now_seconds();
    memset(cal, 0, sizeof *cal);
    cal->weight_bytes = plan_weight_bytes(m);
    // Teacher forcing: the prompt repeated to PLAN_PREFILL_TOKENS positions, one call as the analyses make them.
    int *tokens = xmalloc(PLAN_PREFILL_TOKENS * sizeof *tokens), read = PLAN_PREFILL_TOKENS - 1;
    for (int i = 0; i < PLAN_PREFILL_TOKENS; i++) tokens[i] = prompt[i % n_prompt];
    Forcer f;
    int rc = forcer_init(&f, m, 1, PLAN_PREFILL_TOKENS, ANALYSIS_MAX_ROWS, err);
    float *logits = xmalloc((size_t)PLAN_READOUT_ROWS * mc->vocab_size * sizeof *logits);      // (rows, vocab)
    float *resid = xcalloc((size_t)PLAN_READOUT_ROWS * mc->hidden_size, sizeof *resid);       // (rows, hidden)
    if (rc == 0) {
        ForcedSeq seq = {.tokens = tokens, .n_tokens = PLAN_PREFILL_TOKENS, .read_pos = &read, .n_read = 1};
        PassOut out = {.logits = logits};
        double t0 = now_seconds(), t = 0;
        int reps = 0;
        while (rc == 0 && reps < PLAN_MAX_REPEATS && (t = now_seconds() - t0) < PLAN_MIN_SECONDS)
            rc = force_group(&f, &seq, 1, &out, err), reps++;
        cal->prefill_tok_s = reps * PLAN_PREFILL_TOKENS / (now_seconds() - t0);
        forcer_free(&f);
    }
    if (rc == 0) {
        for (int i = 0; i < PLAN_READOUT_ROWS * mc->hidden_size; i++) resid[i] = (float)(i % 7) - 3;
        double t0 = now_seconds();
        int reps = 0;
        while (reps < PLAN_MAX_REPEATS && now_seconds() - t0 < PLAN_MIN_SECONDS)
            model_final_logits_rows(m, resid, PLAN_READOUT_ROWS, (size_t)mc->hidden_size, logits), reps++;
        cal->readout_s = (now_seconds() - t0) / (reps * PLAN_READOUT_ROWS);
    }
    if (rc == 0 && c->ablation_method != METHOD_EXACT) { // every layer kept at this length: no recomputation
        GradState *gs = gradstate_new(m, PLAN_GRAD_TOKENS, GRAD_KEEP_BYTES, err);
        double *score = xmalloc((size_t)(2 + mc->n_heads) * mc->n_layers * sizeof *score);
        Gradient g = {.token = tokens,
                      .n = PLAN_GRAD_TOKENS,
                      .pred_pos = PLAN_GRAD_TOKENS - 1,
                      .onset_token_id = tokens[0],
                      .score_attn = score,
                      .score_mlp = score + mc->n_layers,
                      .score_head = score + 2 * mc->n_layers};
        double t0 = now_seconds();
        int reps = 0;
        rc = gs ? 0 : -1;
        while (rc == 0 && reps < PLAN_MAX_REPEATS && now_seconds() - t0 < PLAN_MIN_SECONDS)
            rc = model_gradient(m, gs, &g, err), reps++;
        if (rc == 0) cal->grad_pos_s = (now_seconds() - t0) / (reps * PLAN_GRAD_TOKENS);
        free(score);
        gradstate_free(gs);
    }
    // Decoding: batch sequences through the one generation loop with the run's sampler.
    GenSeq *seqs = xcalloc((size_t)batch, sizeof *seqs);
    int *ids = xmalloc((size_t)batch * PLAN_DECODE_STEPS * sizeof *ids);
    GenParams p = {.sampler = config_sampler(c, mc),
                   .batch_size = batch,
                   .max_seq = PLAN_DECODE_PROMPT + PLAN_DECODE_STEPS,
                   .ignore_eos = 1};
    double t0 = now_seconds(), decoding = 0;
    int reps = 0;
    while (rc == 0 && reps < PLAN_MAX_REPEATS && now_seconds() - t0 < PLAN_MIN_SECONDS) {
        for (int i = 0; i < batch; i++) {
            seqs[i] = (GenSeq){.prompt = prompt,
                               .n_prompt = n_prompt < PLAN_DECODE_PROMPT ? n_prompt : PLAN_DECODE_PROMPT,
                               .max_new = PLAN_DECODE_STEPS,
                               .ids = ids + (size_t)i * PLAN_DECODE_STEPS};
            rng_seed(&seqs[i].rng, (uint64_t)i);
        }
        if ((rc = generate_batch(m, seqs, batch, &p, err))) break;
        double first = seqs[0].first_token_s, last = seqs[0].end_s; // the steps after every prompt is in
        for (int i = 1; i < batch; i++) {
            if (seqs[i].first_token_s > first) first = seqs[i].first_token_s;
            if (seqs[i].end_s > last) last = seqs[i].end_s;
        }
        decoding += last - first;
        reps++;
    }
    cal->step_s = reps ? decoding / reps / (PLAN_DECODE_STEPS - 1) : 0;
    cal->batch = batch;
    free(seqs);
    free(ids);
    free(tokens);
    free(logits);
    free(resid);
    cal->seconds = now_seconds() - t_start;
    return rc;
}

// Bytes of the KV cache and scratch of one RunState: the scratch measured on a one-position
// state, the cache from the bytes per position.
static double plan_state_bytes(const Model *m, int n_slots, int max_seq, int max_rows) {
    Err ignored;
    RunState *s = runstate_new(m, 1, 1, max_rows, &ignored);
    double scratch = s ? (double)runstate_bytes(s) : 0;
    runstate_free(s);
    return scratch + (double)model_kv_bytes_per_token(m) * n_slots * max_seq;
}

// Seconds to generate n completions of mean_prompt prompt tokens and at most max_new tokens:
// prefill, then steps of up to batch tokens whose time grows with the KV cache they read (a
// short last batch counted as a whole one: its steps cost less, but not in proportion).
static double plan_generate_s(const Calibration *cal, const Model *m, long long n, double mean_prompt, int max_new,
                              int batch) {
    if (n == 0) return 0;
    int b = n < batch ? (int)n : batch;
    double steps = ceil((double)n / b) * max_new, context = mean_prompt + max_new / 2.0;
    double kv_s =
        b * context * (double)model_kv_bytes_per_token(m) / (cal->weight_bytes / cal->step_s); // at the weights' rate
    return (double)n * mean_prompt / cal->prefill_tok_s + steps * (cal->step_s + kv_s);
}

// Seconds of the generation stages bt run runs, n completions per file: t[0] the baseline
// variants, t[1] the targeted and random ablation conditions, t[2] the steered conditions.
static void plan_generation_s(const Config *c, const Calibration *cal, const Model *m, long long n,
                              double prompt_mean_all, double lens_prompt_mean, const double *steer_prompt_mean,
                              double t[3]) {
    t[0] = c->n_variants * plan_generate_s(cal, m, n, prompt_mean_all, c->max_new_tokens, c->batch_size);
    t[1] = (1 + c->random_draws) * plan_generate_s(cal, m, n, lens_prompt_mean, c->max_new_tokens, c->batch_size);
    t[2] = 0;
    for (int v = 0; v < c->n_steer_variants && c->steering_enabled; v++)
        t[2] += (2 * c->n_steer_alphas + 1) *
                plan_generate_s(cal, m, n, steer_prompt_mean[v], c->max_new_tokens, c->batch_size);
}

static void plan_bytes(Buf *b, double bytes) {
    if (bytes >= 1e9) buf_printf(b, "%.1f GB", bytes / 1e9);
    else buf_printf(b, "%.0f MB", bytes / 1e6 < 1 ? 1 : bytes / 1e6);
}

static void plan_line(Buf *b, const char *stage, const char *work, double seconds) {
    char t[32];
    format_duration(t, sizeof t, seconds);
    buf_printf(b, "  %-34s %-78s %s\n", stage, work, t);
}

// Prompt lengths of var over the problems: their mean, min and max folded into *min and *max,
// and (first non-NULL) the first prompt's tokens.
static int plan_prompts(const Variant *var, const Problem *problems, int n_problems, const Tokenizer *tok, double *mean,
                        int *min, int *max, TokenList *first, Err *err) {
    TokenList tl = {0};
    double sum = 0;
    int rc = 0;
    for (int i = 0; i < n_problems && rc == 0; i++) {
        char *prompt = render_prompt(var->template_text, problems[i].question);
        tl.n = 0;
        rc = tokenizer_encode(tok, prompt, strlen(prompt), first && i == 0 ? first : &tl, err);
        free(prompt);
        int n = first && i == 0 ? first->n : tl.n;
        sum += n;
        if (n < *min) *min = n;
        if (n > *max) *max = n;
    }
    tokens_free(&tl);
    *mean = n_problems ? sum / n_problems : 0;
    return rc;
}

// The plan of `bt run` under c, appended to out; calibrate = 0 leaves the times out; shards > 1
// adds the wall time when bt slurm runs every heavy stage as that many tasks.
static int plan_write(const Config *c, int calibrate, int shards, Buf *out, Err *err) {
    char path[1200];
    snprintf(path, sizeof path, "%s/config.json", c->model_path);
    if (!path_exists(path) && c->make_organism) { // what init-run would do first; it takes milliseconds
        progress("plan: writing the embedded %s organism to %s\n", organism_mechanism_name(c->organism), c->model_path);
        if (organism_write_mechanism(c->model_path, c->organism, err)) return -1;
    }
    Model m;
    Tokenizer *tok = NULL;
    Problem *problems = NULL;
    int n_problems = 0, rc = 0, *first_prompt = NULL;
    if (model_load(&m, c->model_path, err)) return -1;
    snprintf(path, sizeof path, "%s/tokenizer.json", c->model_path);
    if (tokenizer_load(&tok, path, err)) {
        model_free(&m);
        return -1;
    }
    // The problems: the processed set when prepare-data has run, else its source (all of GSM8K:
    // the plan measures prompt lengths, not the seeded choice).
    processed_path(c, path, sizeof path);
    if (path_exists(path)) rc = problems_load(path, &problems, &n_problems, err);
    else if (c->data_source == SOURCE_GSM8K) rc = read_problems(c->data_path, 1, &problems, &n_problems, err);
    else {
        n_problems = c->n_problems < N_BUILTIN ? c->n_problems : N_BUILTIN;
        problems = xcalloc((size_t)n_problems, sizeof *problems);
        for (int i = 0; i < n_problems; i++) problems[i].question = xstrdup(builtin_problems[i][0]);
    }
    const ModelConfig *mc = &m.cfg;
    int L = mc->n_layers, H = mc->n_heads, prompt_min = 1 << 30, prompt_max = 0;
    long long per_variant = (long long)c->n_problems * c->samples_per_problem;
    double prompt_mean_all = 0, lens_prompt_mean = 0, neg_prompt_mean = 0;
    double *steer_prompt_mean = xcalloc((size_t)c->n_steer_variants + 1, sizeof *steer_prompt_mean);
    TokenList first = {0};
    for (int v = 0; v < c->n_variants && rc == 0; v++) {
        double mean = 0;
        rc = plan_prompts(config_variant(c, c->variants[v]), problems, n_problems, tok, &mean, &prompt_min, &prompt_max,
                          NULL, err);
        prompt_mean_all += mean / c->n_variants;
    }
    // The ablation, collateral and directions stages read the lens variant; the steered ones theirs.
    if (rc == 0)
        rc = plan_prompts(config_variant(c, c->lens_variant), problems, n_problems, tok, &lens_prompt_mean, &prompt_min,
                          &prompt_max, &first, err);
    for (int v = 0; v < c->n_steer_variants && c->steering_enabled && rc == 0; v++)
        rc = plan_prompts(config_variant(c, c->steer_variants[v]), problems, n_problems, tok, &steer_prompt_mean[v],
                          &prompt_min, &prompt_max, NULL, err);
    const char *neg_variant = strncmp(c->steer_negatives, "variant:", 8) == 0 ? c->steer_negatives + 8 : NULL;
    if (neg_variant && c->steering_enabled && rc == 0)
        rc = plan_prompts(config_variant(c, neg_variant), problems, n_problems, tok, &neg_prompt_mean, &prompt_min,
                          &prompt_max, NULL, err);
    if (prompt_min > prompt_max) prompt_min = prompt_max;
    int n_first = first.n ? first.n : 1; // the lens variant's first prompt to calibrate on
    first_prompt = xcalloc((size_t)n_first, sizeof *first_prompt);
    for (int t = 0; t < first.n; t++) first_prompt[t] = first.v[t].id;
    tokens_free(&first);
    Calibration cal = {0};
    int gen_batch = per_variant * c->n_variants < c->batch_size ? (int)(per_variant * c->n_variants) : c->batch_size;
    if (gen_batch < 1) gen_batch = 1;
    if (rc == 0 && calibrate) rc = plan_calibrate(c, &m, first_prompt, n_first, gen_batch, &cal, err);
    if (rc) goto out;

    // The work, stage by stage.
    int max_seq = prompt_max + c->max_new_tokens < c->max_seq_len ? prompt_max + c->max_new_tokens : c->max_seq_len;
    double position_bytes = (double)(L + 1) * mc->hidden_size * sizeof(float),
           vocab_bytes = (double)mc->vocab_size * sizeof(float);
    long long n_gen = per_variant * c->n_variants;
    long long lens_items = (long long)c->lens_max_events * (1 + c->controls_per_event);
    long long scan_items = (long long)c->ablation_max_events * (1 + c->controls_per_event);
    long long lens_seqs = lens_items < per_variant ? lens_items : per_variant,
              scan_seqs = scan_items < per_variant ? scan_items : per_variant;
    double seq_tokens = lens_prompt_mean + c->max_new_tokens;
    if (seq_tokens > c->max_seq_len) seq_tokens = c->max_seq_len;
    // The scan's components ablated exactly: every layer component (and head, when the design
    // selects heads), or the verify_k of each kind the estimates rank first.
    int n_exact = 2 * L + (c->top_k_heads > 0 ? L * H : 0), attribution = c->ablation_method != METHOD_EXACT;
    if (c->ablation_method == METHOD_ATTRIBUTION) n_exact = 0;
    if (c->ablation_method == METHOD_ATTRIBUTION_VERIFY)
        n_exact = 2 * (c->verify_k < L ? c->verify_k : L) + (c->verify_k < L * H ? c->verify_k : L * H);
    // An exact pass starts at its component's layer: (L + 1) / 2L of a pass on average; a verified
    // component's layer is not known before, so it counts whole.
    double exact_pass = c->ablation_method == METHOD_EXACT ? (L + 1) / (2.0 * L) : 1;
    int n_steer = c->steering_enabled ? 2 * c->n_steer_alphas + 1 : 0, n_sets = 1 + c->random_draws;
    long long dir_seqs = c->steering_enabled ? per_variant * (neg_variant ? 2 : 1) : 0;
    double dir_positions =
        c->steering_enabled ? per_variant * (seq_tokens + (neg_variant ? neg_prompt_mean + c->max_new_tokens : 0)) : 0;
    double t_gen = 0, t_lens = 0, t_scan = 0, t_ablate = 0, t_collateral = 0, t_directions = 0, t_steer = 0,
           t_sharded = 0;
    int cal_ok = calibrate && cal.prefill_tok_s > 0 && cal.step_s > 0 && cal.readout_s > 0 &&
                 (!attribution || cal.grad_pos_s > 0);
    if (cal_ok) {
        double gen[3], gen_share[3];
        plan_generation_s(c, &cal, &m, per_variant, prompt_mean_all, lens_prompt_mean, steer_prompt_mean, gen);
        t_gen = gen[0], t_ablate = gen[1], t_steer = gen[2];
        t_lens = lens_seqs * seq_tokens / cal.prefill_tok_s + lens_items * (L + 1) * cal.readout_s;
        double passes = 1 + n_exact * exact_pass; // scope all: a clean pass, then each component's
        if (c->ablation_scope == SCOPE_ONSET)     // onset: the clean pass, then replayed rows at the reads
            passes = 1 + scan_items * n_exact * exact_pass / (scan_seqs * seq_tokens);
        if (n_exact == 0) passes = 0;
        // Mean ablation first sums every completion's components: each shard of each phase over all of them.
        double t_means = c->ablation_kind == ABLATE_MEAN ? scan_seqs * seq_tokens / cal.prefill_tok_s : 0;
        t_scan = scan_seqs * seq_tokens * passes / cal.prefill_tok_s +
                 scan_items * (n_exact + (n_exact > 0)) * cal.readout_s;
        if (attribution) { // a forward and a backward pass per item, plus a forward of the layers not kept
            int kept = model_gradient_layers_kept(&m, (int)seq_tokens, GRAD_KEEP_BYTES);
            t_scan += scan_items * seq_tokens * (cal.grad_pos_s + (double)(L - kept) / L / cal.prefill_tok_s);
        }
        t_collateral =
            (1 + n_sets) * per_variant * (seq_tokens / cal.prefill_tok_s + c->max_new_tokens * cal.readout_s);
        t_directions = dir_positions / cal.prefill_tok_s;
        // Sharded: a task generates its share of each file's completions; the teacher-forced stages
        // split their completions (attribution+verify's scan in both its phases).
        plan_generation_s(c, &cal, &m, (per_variant + shards - 1) / shards, prompt_mean_all, lens_prompt_mean,
                          steer_prompt_mean, gen_share);
        int means_per_node = c->ablation_method == METHOD_ATTRIBUTION_VERIFY && shards > 1 ? 2 : 1;
        t_sharded = gen_share[0] + gen_share[1] + gen_share[2] +
                    (t_lens + t_scan + t_collateral + t_directions) / shards + means_per_node * t_means;
        t_scan += t_means;
    }
    int slots = c->batch_size, lens_slots = lens_seqs < slots ? (int)lens_seqs : slots,
        scan_slots = scan_seqs < slots ? (int)scan_seqs : slots;
    double mem_gen = plan_state_bytes(&m, gen_batch, max_seq, gen_batch + GEN_PREFILL_ROWS) +
                     gen_batch * vocab_bytes + mc->vocab_size * sizeof(SampleCandidate);
    double mem_lens = plan_state_bytes(&m, lens_slots, max_seq, ANALYSIS_MAX_ROWS) + lens_items * position_bytes;
    double group_positions = scan_slots * seq_tokens,
           group_reads = scan_items < scan_slots ? scan_items : scan_slots * (double)scan_items / scan_seqs;
    double scan_resid =
        c->ablation_scope == SCOPE_ALL ? group_positions * position_bytes : group_reads * position_bytes;
    if (scan_resid > (double)ANALYSIS_CAPTURE_BYTES && c->ablation_scope == SCOPE_ALL)
        scan_resid = (double)ANALYSIS_CAPTURE_BYTES;
    double mem_scan = plan_state_bytes(&m, scan_slots, max_seq, ANALYSIS_MAX_ROWS) + scan_resid +
                      group_reads * vocab_bytes * (c->ablation_scope == SCOPE_ALL ? 2 : 1);
    double mem_grad = attribution ? (double)model_gradient_bytes(&m, (int)seq_tokens, GRAD_KEEP_BYTES) : 0;
    double mem_peak = mem_gen > mem_lens ? mem_gen : mem_lens;
    if (mem_scan > mem_peak) mem_peak = mem_scan;
    if (mem_grad > mem_peak) mem_peak = mem_grad;
    double weights = (double)m.bytes_mapped, weights_read = plan_weight_bytes(&m);

    Buf work = {0};
    buf_printf(out, "bt plan: %s on %s (%s, %d layers, hidden %d, vocab %d, ", c->file, c->model_path, mc->architecture,
               L, mc->hidden_size, mc->vocab_size);
    plan_bytes(out, weights);
    buf_printf(out, " of %s weights), %d thread%s\n", dtype_name(m.embed.dtype), bt_threads, bt_threads > 1 ? "s" : "");
    buf_printf(
        out,
        "  %d problems (%s) x %d sample%s x %d variant%s; prompts %d-%d tokens (mean %.0f); at most %d new tokens "
        "each, batches of %d\n",
        c->n_problems, c->data_source == SOURCE_BUILTIN ? "built-in" : c->data_path, c->samples_per_problem,
        c->samples_per_problem > 1 ? "s" : "", c->n_variants, c->n_variants > 1 ? "s" : "", prompt_min, prompt_max,
        prompt_mean_all, c->max_new_tokens, c->batch_size);
    buf_printf(out, "  %-34s %-78s %s\n", "stage", "work (at most)", cal_ok ? "time (at most)" : "time");
    buf_printf(&work, "%lld completions, %lld new tokens, %.0f prompt tokens", n_gen, n_gen * c->max_new_tokens,
               (double)n_gen * prompt_mean_all);
    plan_line(out, "generate baseline", work.data, cal_ok ? t_gen : NAN);
    work.len = 0;
    buf_printf(&work, "%lld events + controls in %lld completions: %.0f positions forced, %lld readouts", lens_items,
               lens_seqs, lens_seqs * seq_tokens, lens_items * (L + 1));
    plan_line(out, "logit-lens", work.data, cal_ok ? t_lens : NAN);
    work.len = 0;
    buf_printf(&work, "%s: %lld items in %lld completions", ablation_method_name(c->ablation_method), scan_items,
               scan_seqs);
    if (attribution)
        buf_printf(&work, ": a forward and a backward pass each, of %.0f positions%s", seq_tokens,
                   n_exact ? "; then" : "");
    else buf_puts(&work, ":");
    if (n_exact && c->ablation_scope == SCOPE_ALL)
        buf_printf(&work, " 1 + %d passes (%.0f pass-equivalents) of %.0f positions", n_exact, 1 + n_exact * exact_pass,
                   scan_seqs * seq_tokens);
    else if (n_exact)
        buf_printf(&work, " 1 pass of %.0f positions, %lld replayed rows", scan_seqs * seq_tokens,
                   scan_items * n_exact);
    char stage[64];
    snprintf(stage, sizeof stage, "ablation-scan (%s, %s)",
             c->ablation_scope == SCOPE_ALL ? "scope all" : "scope onset",
             c->ablation_kind == ABLATE_MEAN ? "mean" : "zero");
    plan_line(out, stage, work.data, cal_ok ? t_scan : NAN);
    work.len = 0;
    buf_printf(&work, "1 + %d x %lld completions of %s, %lld new tokens", c->random_draws, per_variant, c->lens_variant,
               n_sets * per_variant * c->max_new_tokens);
    plan_line(out, "generate targeted, random", work.data, cal_ok ? t_ablate : NAN);
    work.len = 0;
    buf_printf(&work,
               "%d passes (clean, targeted, %d random) over %lld completions: %.0f positions, %lld readouts each",
               1 + n_sets, c->random_draws, per_variant, per_variant * seq_tokens, per_variant * c->max_new_tokens);
    plan_line(out, "collateral-damage", work.data, cal_ok ? t_collateral : NAN);
    if (c->steering_enabled) {
        work.len = 0;
        buf_printf(&work, "%lld completions of %s%s%s: %.0f positions forced", dir_seqs, c->lens_variant,
                   neg_variant ? " and " : "", neg_variant ? neg_variant : "", dir_positions);
        plan_line(out, "directions", work.data, cal_ok ? t_directions : NAN);
        work.len = 0;
        buf_printf(&work,
                   "steer, steer_random, project_out: %d conditions x %d variant%s x %lld completions, %lld new tokens",
                   n_steer, c->n_steer_variants, c->n_steer_variants > 1 ? "s" : "", per_variant,
                   (long long)n_steer * c->n_steer_variants * per_variant * c->max_new_tokens);
        plan_line(out, "generate steered", work.data, cal_ok ? t_steer : NAN);
    }
    plan_line(out, "the other stages",
              c->steering_enabled ? "detect-events (twice), compare-conditions, formatting-sweep, steering-sweep, "
                                    "make-report"
                                  : "detect-events (twice), compare-conditions, formatting-sweep, make-report",
              cal_ok ? 0 : NAN);
    work.len = 0;
    buf_printf(out, "  memory: weights ");
    plan_bytes(out, weights);
    buf_printf(out, " (mmapped); KV cache %.0f KB per position: generation %d x %d positions = ",
               model_kv_bytes_per_token(&m) / 1024.0, gen_batch, max_seq);
    plan_bytes(out, (double)model_kv_bytes_per_token(&m) * gen_batch * max_seq);
    buf_puts(out, "; activations: logit lens ");
    plan_bytes(out, lens_items * position_bytes);
    buf_puts(out, ", scan ");
    plan_bytes(out, scan_resid);
    if (attribution) {
        buf_puts(out, ", gradient pass ");
        plan_bytes(out, mem_grad);
    }
    buf_puts(out, "\n  peak memory about ");
    plan_bytes(out, weights_read + mem_peak);
    buf_puts(out, " (the weights a step reads + the largest stage's cache, scratch and activations)\n");
    if (cal_ok) {
        buf_printf(out,
                   "  calibration (%.1f s): teacher forcing %.1f tok/s, decode %.1f tok/s at batch %d, %.1f readouts/s",
                   cal.seconds, cal.prefill_tok_s, cal.batch / cal.step_s, cal.batch, 1 / cal.readout_s);
        if (attribution) buf_printf(out, ", gradient %.1f positions/s", 1 / cal.grad_pos_s);
        char total[32];
        format_duration(total, sizeof total,
                        t_gen + t_lens + t_scan + t_ablate + t_collateral + t_directions + t_steer);
        buf_printf(
            out,
            "\n  estimate: at most %s, if every completion runs to max_new_tokens and the analyses reach max_events\n",
            total);
        if (shards > 1) {
            format_duration(total, sizeof total, t_sharded);
            buf_printf(out, "  on %d nodes (bt slurm --shards %d, stage after stage): at most %s\n", shards, shards,
                       total);
        }
    }
    buf_free(&work);
out:
    free(first_prompt);
    free(steer_prompt_mean);
    problems_free(problems, n_problems);
    tokenizer_free(tok);
    model_free(&m);
    return rc;
}

int cmd_plan(int argc, char **argv) {
    Opt opts[] = {OPT_CONFIG, OPT("--no-calibrate", 0, "counts and memory only: no timing on the model"),
                  OPT("--shards", 1, "also the wall time on this many nodes, as bt slurm --shards runs it"), OPT_END};
    Err err = {0};
    int r = opts_parse(opts, argc, argv, &err);
    if (r) return r < 0 ? fail(&err) : 0;
    Config c;
    if (config_load(&c, opt_str(opts, "--config", BT_DEFAULT_CONFIG), &err)) return fail(&err);
    set_threads(threads_flag >= 0 ? threads_flag : c.threads);
    long long shards = 1;
    Buf b = {0};
    if (opt_int(opts, "--shards", 1, SHARD_MAX, 1, &shards, &err) == 0 &&
        plan_write(&c, !opt_str(opts, "--no-calibrate", NULL), (int)shards, &b, &err) == 0)
        write_stdout(&b);
    buf_free(&b);
    config_free(&c);
    return err.msg[0] ? fail(&err) : 0;
}

// ----------------------------------------------------------------------------
// Commands

#ifndef BT_NO_MAIN
typedef struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
} Command;

static const Command commands[] = {
    {"init-run", cmd_init_run, "create runs/<run_id>/ and make it the current run"},
    {"prepare-data", cmd_prepare_data, "write the processed problem set (GSM8K or built-in)"},
    {"generate", cmd_generate, "generate completions for a condition (baseline, ablation or steering)"},
    {"detect-events", cmd_detect_events, "find backtracking events and position-matched controls"},
    {"logit-lens", cmd_logit_lens, "onset-token logit, log-prob and rank by layer"},
    {"ablation-scan", cmd_ablation_scan, "effect of ablating each layer's attention and MLP"},
    {"collateral-damage", cmd_collateral_damage, "NLL the ablations add to the baseline text (specificity)"},
    {"compare-conditions", cmd_compare_conditions, "baseline vs targeted vs random ablation"},
    {"formatting-sweep", cmd_formatting_sweep, "backtracking across prompt formats"},
    {"directions", cmd_directions, "difference-of-means steering directions per layer, with held-out AUROC"},
    {"steering-sweep", cmd_steering_sweep,
     "backtracking rate per steering alpha: direction, random control, project_out"},
    {"make-report", cmd_make_report, "write the markdown report with hypothesis verdicts"},
    {"run", cmd_run, "every stage above, in order"},
    {"plan", cmd_plan, "what bt run will do, with time and memory estimated on the model"},
    {"capture", cmd_capture, "activations at events, windows or whole completions to safetensors"},
    {"merge", cmd_merge, "put a sharded stage's outputs together (as one unsharded run writes them)"},
    {"slurm", cmd_slurm, "the pipeline as a chain of Slurm job arrays (sbatch scripts; --submit)"},
    {"model-info", cmd_model_info, "architecture, shapes, dtypes, parameter count, memory"},
    {"tokenize", cmd_tokenize, "token ids and byte spans of text"},
    {"detokenize", cmd_detokenize, "text of token ids"},
    {"forward", cmd_forward, "logits (and hidden states) of token ids, optionally ablated"},
    {"generate-ids", cmd_generate_ids, "greedy continuation of token ids"},
    {"make-organism", cmd_make_organism, "write the embedded planted-mechanism model"},
    {"make-bench-model", cmd_make_bench_model, "write a random-weight model of a real shape"},
    {"bench", cmd_bench, "speed and memory benchmark"},
};

static void print_help(void) {
    printf("bt %s: the backtracking state-transition pipeline\n\nusage: bt COMMAND [flags]   (bt COMMAND --help for "
           "its flags)\n\n",
           BT_VERSION);
    printf("pipeline stages:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (strcmp(commands[i].name, "model-info") == 0) printf("\ninspection and tools:\n");
        printf("  %-19s %s\n", commands[i].name, commands[i].summary);
    }
    printf("\n--config defaults to %s. Exit codes: 0 ok, 1 runtime failure, 2 bad usage or input.\n",
           BT_DEFAULT_CONFIG);
}

int main(int argc, char **argv) {
    set_threads(0);
    if (argc < 2) {
        print_help();
        return EXIT_BAD_INPUT;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        print_help();
        return EXIT_OK;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("bt %s\n", BT_VERSION);
        return EXIT_OK;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].name) == 0) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "bt: unknown command '%s' (see bt --help)\n", argv[1]);
    return EXIT_BAD_INPUT;
}
#endif
