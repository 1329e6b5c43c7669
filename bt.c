// bt.c: the command line, the INI config, the run folder, data preparation,
// and main. Read top to bottom: flags, config, runs, problems, commands, main.
#include "bt.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

int bt_quiet = 0;
int bt_threads = 1;

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
            if (*end || n < 0 || n > 1024) return err_input(err, "%s: --threads: '%s' is not a thread count", argv[0], argv[i]);
            set_threads((int)n);
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

int opt_int(const Opt *opts, const char *name, long long lo, long long hi, long long fallback, long long *out, Err *err) {
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

int not_built(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0) {
            printf("usage: bt %s   (not built yet in this version of bt)\n", argv[0]);
            return EXIT_OK;
        }
    fprintf(stderr, "bt %s: not built yet in this version of bt\n", argv[0]);
    return EXIT_RUNTIME;
}

int cmd_init_run(int argc, char **argv) { return not_built(argc, argv); }
int cmd_prepare_data(int argc, char **argv) { return not_built(argc, argv); }
int cmd_generate(int argc, char **argv) { return not_built(argc, argv); }
int cmd_detect_events(int argc, char **argv) { return not_built(argc, argv); }
int cmd_run(int argc, char **argv) { return not_built(argc, argv); }

// ----------------------------------------------------------------------------
// Commands

typedef struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
} Command;

static const Command commands[] = {
    {"init-run", cmd_init_run, "create runs/<run_id>/ and make it the current run"},
    {"prepare-data", cmd_prepare_data, "write the processed problem set (GSM8K or built-in)"},
    {"generate", cmd_generate, "generate completions for a condition (baseline or ablation)"},
    {"detect-events", cmd_detect_events, "find backtracking events and position-matched controls"},
    {"logit-lens", cmd_logit_lens, "onset-token logit, log-prob and rank by layer"},
    {"ablation-scan", cmd_ablation_scan, "effect of ablating each layer's attention and MLP"},
    {"compare-conditions", cmd_compare_conditions, "baseline vs targeted vs random ablation"},
    {"formatting-sweep", cmd_formatting_sweep, "backtracking across prompt formats"},
    {"make-report", cmd_make_report, "write the markdown report with hypothesis verdicts"},
    {"run", cmd_run, "every stage above, in order"},
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
    printf("bt %s: the backtracking state-transition pipeline\n\nusage: bt COMMAND [flags]   (bt COMMAND --help for its flags)\n\n", BT_VERSION);
    printf("pipeline stages:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (i == 10) printf("\ninspection and tools:\n");
        printf("  %-19s %s\n", commands[i].name, commands[i].summary);
    }
    printf("\n--config defaults to %s. Exit codes: 0 ok, 1 runtime failure, 2 bad usage or input.\n", BT_DEFAULT_CONFIG);
}

#ifndef BT_NO_MAIN
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
