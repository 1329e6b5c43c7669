// tests/test_config.c: the INI config, its key table and its errors; problem files.
#include "test.h"

#include <stdlib.h>

// Writes text to a fresh file and loads it as a config.
static int load_text(const char *text, Config *c, Err *err, char *path, size_t n) {
    snprintf(path, n, "%s/c.ini", test_tmpdir());
    Err werr;
    if (write_file_atomic(path, text, strlen(text), &werr)) return -2;
    return config_load(c, path, err);
}

static void t_shipped_configs_load(void) {
    const char *files[] = {"configs/backtracking_state_transition.ini", "configs/r1_distill_qwen_1_5b.ini",
                           "configs/qwen3_0_6b.ini", "configs/r1_distill_llama_8b.ini"};
    for (int i = 0; i < 4; i++) {
        Config c;
        Err err = {0};
        CHECKF(config_load(&c, files[i], &err) == 0, "%s: %s", files[i], err.msg);
        if (err.msg[0]) continue;
        CHECK(c.n_variants >= 3);
        int with_think = 0, without = 0;
        for (int v = 0; v < c.n_variants; v++) {
            const Variant *var = config_variant(&c, c.variants[v]);
            CHECK(var && strstr(var->template_text, "{question}"));
            if (var && strstr(var->template_text, "<think>") && !strstr(var->template_text, "</think>")) with_think++;
            else without++;
        }
        CHECKF(with_think >= 1 && without >= 2, "%s: %d thinking, %d other variants", files[i], with_think, without);
        // The organism is scanned exactly; the real models by attribution, verified by exact ablation.
        CHECK(c.ablation_method == (i == 0 ? METHOD_EXACT : METHOD_ATTRIBUTION_VERIFY) &&
              c.ablation_scope == SCOPE_ALL);
        config_free(&c);
    }
}

static void t_values_and_escapes(void) {
    Config c;
    Err err = {0};
    char path[1200];
    CHECK(load_text("[generation]\ntemperature = 0\nvariants = a, b\n[logit_lens]\nvariant = b\n"
                    "[variant.a]\ntemplate = Q: {question}\\nA:\n[variant.b]\ntemplate = \"  {question}\\t \"\n"
                    "[detection]\ntriggers = Wait |  Hold on|Hmm\n[ablation]\nkind = mean\n"
                    "method = attribution+verify\ntop_k_heads = 3\n",
                    &c, &err, path, sizeof path) == 0);
    CHECK(c.temperature == 0 && c.n_variants == 2 && strcmp(c.variants[1], "b") == 0);
    CHECK(strcmp(config_variant(&c, "a")->template_text, "Q: {question}\nA:") == 0);
    CHECK(strcmp(config_variant(&c, "b")->template_text, "  {question}\t ") == 0);
    CHECK(c.n_triggers == 3 && strcmp(c.triggers[1], "Hold on") == 0);
    CHECK(c.ablation_kind == ABLATE_MEAN && c.ablation_scope == SCOPE_ALL);
    CHECK(c.ablation_method == METHOD_ATTRIBUTION_VERIFY && c.top_k_heads == 3 && c.verify_k == 4);
    CHECK(c.seed == 1234 && c.batch_size == 16); // defaults where the file is silent
    // The resolved config reads back to the same resolved text.
    Buf a = {0}, b = {0};
    config_write_resolved(&c, &a);
    Config again;
    char path2[1200];
    CHECKF(load_text(a.data, &again, &err, path2, sizeof path2) == 0, "%s", err.msg);
    config_write_resolved(&again, &b);
    const char *body_a = strchr(a.data, '\n'), *body_b = b.data ? strchr(b.data, '\n') : NULL;
    CHECK(body_a && body_b && strcmp(body_a, body_b) == 0);
    buf_free(&a);
    buf_free(&b);
    config_free(&again);
    config_free(&c);
}

static void t_bad_configs_name_file_and_line(void) {
    static const struct { const char *text, *want;
    } cases[] = {
        {"[run]\nseed = 1\n[bogus]\n", ":3: unknown section [bogus]"},
        {"[generation]\n\ntempreature = 0.5\n", ":3: unknown key 'tempreature' in [generation]"},
        {"[run]\nseed = 12x\n", ":2: [run] seed: '12x' is not an integer"},
        {"[generation]\ntop_p = 1.5\n", ":2: [generation] top_p = 1.5 is out of range"},
        {"[generation]\nbatch_size = 0\n", ":2: [generation] batch_size = 0 is out of range"},
        {"[run]\nseed 12\n", ":2: expected 'key = value'"},
        {"[run\nseed = 1\n", ":1: unterminated section header"},
        {"seed = 1\n", ":1: key 'seed' outside any section"},
        {"[model]\nmake_organism = yes\n", ":2: [model] make_organism: 'yes' is not true or false"},
        {"[ablation]\nkind = half\n", ":2: [ablation] kind: 'half' is not one of zero|mean"},
        {"[model]\n\norganism = bogus\n",
         ":3: [model] organism: 'bogus' is not one of planted|redundant|format_free|distributed"},
        {"[run]\nseed = 1\nseed = 2\n", ":3: key 'seed' in [run] given twice (first on line 2)"},
        {"[generation]\nvariants = x\n", ":2: [generation] variants names 'x' but there is no [variant.x] section"},
        {"[variant.a]\ntemplate = no placeholder\n", ":2: template of [variant.a] has no {question}"},
        {"[variant.a]\ntemplate = {question}\\q\n", ":2: unknown escape in template"},
        {"[variant.a]\nprompt = {question}\n", ":2: unknown key 'prompt' in [variant.a]"},
        {"[detection]\ntriggers = | \n", ":2: [detection] triggers: empty list"},
        {"[generation]\ntemperature = nan\n", ":2: [generation] temperature: 'nan' is not a number"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        Config c;
        Err err = {0};
        char path[1200];
        int rc = load_text(cases[i].text, &c, &err, path, sizeof path);
        CHECKF(rc == -1 && err.code == EXIT_BAD_INPUT, "case %zu accepted", i);
        CHECKF(strncmp(err.msg, path, strlen(path)) == 0 && strstr(err.msg, cases[i].want),
               "case %zu: got '%s', want '%s'", i, err.msg, cases[i].want);
    }
    Config c;
    Err err = {0};
    CHECK(config_load(&c, "build/tmp/no/such/config.ini", &err) == -1 &&
          strstr(err.msg, "no/such/config.ini: cannot open"));
}

static void t_problems_file_errors(void) {
    static const struct { const char *text, *want;
    } cases[] = {
        {"{\"id\": \"a\", \"question\": \"q\", \"gold\": \"1\", \"answer\": \"x\"}\n{\"id\": \"b\", \"question\": "
         "\"q\"\n",
         ":2: "},
        {"\n{\"id\": \"a\", \"question\": \"q\", \"answer\": \"x\"}\n", ":2: missing string field \"gold\""},
        {"[1, 2]\n", ":1: expected a JSON object"},
        {"{\"id\": \"a\", \"question\": 7, \"gold\": \"1\", \"answer\": \"x\"}\n",
         ":1: missing string field \"question\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char path[1200];
        snprintf(path, sizeof path, "%s/p.jsonl", test_tmpdir());
        Err err = {0};
        CHECK(write_file_atomic(path, cases[i].text, strlen(cases[i].text), &err) == 0);
        Problem *p = NULL;
        int n = 0;
        CHECKF(problems_load(path, &p, &n, &err) == -1 && err.code == EXIT_BAD_INPUT, "case %zu accepted", i);
        CHECKF(strstr(err.msg, path) && strstr(err.msg, cases[i].want), "case %zu: '%s'", i, err.msg);
    }
    char path[1200];
    snprintf(path, sizeof path, "%s/ok.jsonl", test_tmpdir());
    const char *good = "{\"id\": \"a\", \"question\": \"q\\u00e9\", \"gold\": \"12\", \"answer\": \"x\\n#### 12\"}\n\n";
    Err err = {0};
    CHECK(write_file_atomic(path, good, strlen(good), &err) == 0);
    Problem *p = NULL;
    int n = 0;
    CHECK(problems_load(path, &p, &n, &err) == 0 && n == 1 && strcmp(p[0].question, "q\xC3\xA9") == 0 &&
          strcmp(p[0].gold, "12") == 0);
    problems_free(p, n);
}

const TestCase tests_config[] = {
    {"config: shipped configs load, with thinking and plain variants", t_shipped_configs_load},
    {"config: values, lists, escapes, defaults, resolved round-trip", t_values_and_escapes},
    {"config: bad files give file:line messages", t_bad_configs_name_file_and_line},
    {"config: problem files: malformed lines name file and line", t_problems_file_errors},
    {0, 0},
};
