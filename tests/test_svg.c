// tests/test_svg.c: the SVG writer and the seven figures, from synthetic and from
// empty data: well-formed, self-contained, the right content, deterministic; then
// an independent XML parser and headless Chromium look at them (tests/svg_check.py).
#include "test.h"

#include <stdlib.h>
#include <unistd.h>

// ----------------------------------------------------------------------------
// A small well-formedness checker: one root, balanced tags, quoted attributes,
// only the five predefined entities (or character references), no stray '<'.

static int xml_name(const char **p) {
    const char *s = *p;
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || *s == '_')) return 0;
    while ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '_' ||
           *s == '-' || *s == ':' || *s == '.')
        s++;
    int n = (int)(s - *p);
    *p = s;
    return n;
}

static int xml_entity(const char **p) { // at '&'
    static const char *names[] = {"&amp;", "&lt;", "&gt;", "&quot;", "&apos;"};
    for (int i = 0; i < 5; i++)
        if (strncmp(*p, names[i], strlen(names[i])) == 0) {
            *p += strlen(names[i]);
            return 1;
        }
    if ((*p)[1] == '#') {
        const char *s = *p + 2;
        while (*s && *s != ';' && s - *p < 10) s++;
        if (*s == ';') {
            *p = s + 1;
            return 1;
        }
    }
    return 0;
}

static const char *xml_check(const char *doc) { // NULL when well-formed, else what is wrong
    static char why[128];
    const char *p = doc, *stack[64];
    int depth = 0, lens[64], roots = 0;
    if (strncmp(p, "<?xml ", 6) == 0) {
        p = strstr(p, "?>");
        if (!p) return "unterminated XML declaration";
        p += 2;
    }
    while (*p) {
        if (*p == '&') {
            if (!xml_entity(&p)) return "bad entity in text";
            continue;
        }
        if (*p == '>') return "stray '>' in text";
        if (*p != '<') {
            if (depth == 0 && !(*p == ' ' || *p == '\n')) return "text outside the root";
            p++;
            continue;
        }
        p++;
        if (*p == '/') {
            p++;
            const char *name = p;
            int n = xml_name(&p);
            if (!n || depth == 0 || n != lens[depth - 1] || strncmp(name, stack[depth - 1], (size_t)n) != 0) {
                snprintf(why, sizeof why, "unbalanced </%.*s>", n, name);
                return why;
            }
            if (*p++ != '>') return "bad end tag";
            depth--;
            continue;
        }
        const char *name = p;
        int n = xml_name(&p);
        if (!n) return "bad tag name";
        if (depth == 0 && ++roots > 1) return "more than one root";
        for (;;) {
            int space = 0;
            while (*p == ' ' || *p == '\n') p++, space = 1;
            if (*p == '/' && p[1] == '>') {
                p += 2;
                break;
            }
            if (*p == '>') {
                if (depth == 64) return "nested too deeply";
                stack[depth] = name;
                lens[depth++] = n;
                p++;
                break;
            }
            if (!space || !xml_name(&p)) return "bad attribute";
            if (*p++ != '=' || *p++ != '"') return "attribute value not quoted";
            while (*p && *p != '"') {
                if (*p == '<') return "'<' in an attribute";
                if (*p == '&' && !xml_entity(&p)) return "bad entity in an attribute";
                if (*p != '&') p++;
            }
            if (*p++ != '"') return "unterminated attribute";
        }
    }
    return depth ? "unclosed element" : roots != 1 ? "no root" : NULL;
}

static int count(const char *hay, const char *needle) {
    int n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle)) n++;
    return n;
}

// Reads the figure back and checks what every figure must have.
static char *load_figure(const char *path, const char *title) {
    Buf b = {0};
    Err err = {0};
    if (read_file(path, &b, &err) != 0) {
        test_fail(__FILE__, __LINE__, "%s", err.msg);
        return xstrdup("");
    }
    const char *why = xml_check(b.data);
    CHECKF(why == NULL, "%s: %s", path, why);
    CHECKF(strstr(b.data, title) != NULL, "%s: no title '%s'", path, title);
    CHECKF(!strstr(b.data, "<script") && !strstr(b.data, "href") && !strstr(b.data, "url("), "%s: external reference",
           path);
    CHECKF(!strstr(b.data, "nan") && !strstr(b.data, "inf"), "%s: a NaN or inf was printed", path);
    CHECK(strstr(b.data, "font-family=\"sans-serif\""));
    return b.data;
}

static void path_in(char *out, size_t n, const char *dir, const char *name) { snprintf(out, n, "%s/%s", dir, name); }

// ----------------------------------------------------------------------------
// Synthetic data shaped like a run of the organism

enum { N_VARIANTS = 5, N_CONDS = 3, N_LAYERS = 12, N_HEADS = 6, N_FIGURES = 7 };
static const char *variants[N_VARIANTS] = {"baseline_think_newline", "think_no_newline", "no_think_tag",
                                           "empty_think", "plain_qa"};
static const char *conditions[N_CONDS] = {"baseline", "targeted_ablation", "random_ablation"};
static const long long var_bt[N_VARIANTS] = {124, 110, 24, 6, 0}, var_n[N_VARIANTS] = {200, 200, 200, 200, 200};
static const long long var_reason[N_VARIANTS] = {198, 196, 180, 20, 4};
static const long long cond_bt[N_CONDS] = {124, 21, 117}, cond_n[N_CONDS] = {200, 200, 200};

typedef struct {
    double mean[N_LAYERS + 1], lo[N_LAYERS + 1], hi[N_LAYERS + 1];
} Curve;

static CiSeries curve_series(const Curve *c) { return (CiSeries){c->mean, c->lo, c->hi}; }

// Writes the six figures from synthetic data into dir (under their spec names).
static void write_synthetic(const char *dir) {
    char path[1200];
    Err err = {0};
    path_in(path, sizeof path, dir, FIG_RATE_BY_VARIANT);
    CHECK(fig_rate_by_variant(path, variants, var_bt, var_n, N_VARIANTS, "model: organism; run 20250101_000000",
                              &err) == 0);
    path_in(path, sizeof path, dir, FIG_RATE_BY_CONDITION);
    CHECK(fig_rate_by_condition(path, conditions, cond_bt, cond_n, N_CONDS,
                                "targeted vs baseline: Fisher p < 1e-20; targeted vs random: p < 1e-18", &err) == 0);
    path_in(path, sizeof path, dir, FIG_FORMATTING);
    CHECK(fig_formatting_effect(path, variants, var_bt, var_reason, var_n, N_VARIANTS,
                                "per opportunity, <think> open vs not: ratio 3.1, p = 1e-4", &err) == 0);

    const char *groups[N_VARIANTS * N_CONDS];
    char names[N_VARIANTS * N_CONDS][96];
    long long c_bt[15], n_bt[15], c_no[15], n_no[15];
    for (int v = 0; v < N_VARIANTS; v++)
        for (int c = 0; c < N_CONDS; c++) {
            int i = v * N_CONDS + c;
            snprintf(names[i], sizeof names[i], "%s / %s", variants[v], conditions[c]);
            groups[i] = names[i];
            n_bt[i] = c == 1 ? var_bt[v] / 6 : var_bt[v];
            c_bt[i] = n_bt[i] * 7 / 10;
            n_no[i] = 200 - n_bt[i];
            c_no[i] = n_no[i] * 6 / 10;
        }
    path_in(path, sizeof path, dir, FIG_BT_VS_ACCURACY);
    CHECK(fig_bt_vs_accuracy(path, groups, c_bt, n_bt, c_no, n_no, 15, NULL, &err) == 0);

    Curve ev, ctl;
    for (int l = 0; l <= N_LAYERS; l++) {
        ev.mean[l] = -11.5 + 10.0 * l / N_LAYERS - (l > 6 ? 1.0 * (l - 6) / 6 : 0) + (l == N_LAYERS ? 1.2 : 0);
        ctl.mean[l] = -11.8 + 4.0 * l / N_LAYERS;
        double w = 0.4 + 0.05 * l;
        ev.lo[l] = ev.mean[l] - w, ev.hi[l] = ev.mean[l] + w;
        ctl.lo[l] = ctl.mean[l] - w * 1.2, ctl.hi[l] = ctl.mean[l] + w * 1.2;
    }
    CiSeries e = curve_series(&ev), k = curve_series(&ctl);
    path_in(path, sizeof path, dir, FIG_LOGIT_LENS);
    CHECK(fig_logit_lens(path, N_LAYERS, &e, 120, &k, 120,
                         "variant baseline_think_newline; onset tokens: Wait (81%), Actually (19%)", &err) == 0);

    Curve at, ml, cat, cml;
    for (int l = 0; l < N_LAYERS; l++) {
        at.mean[l] = l == 5 ? 2.4 : l == 9 ? 0.9 : 0.08 * (l % 3) - 0.05;
        ml.mean[l] = l == 7 ? 1.7 : 0.05 * (l % 4);
        cat.mean[l] = 0.04 * (l % 2) - 0.02;
        cml.mean[l] = 0.03 * (l % 3) - 0.03;
        at.lo[l] = at.mean[l] - 0.2, at.hi[l] = at.mean[l] + 0.2;
        ml.lo[l] = ml.mean[l] - 0.25, ml.hi[l] = ml.mean[l] + 0.25;
        cat.lo[l] = cat.mean[l] - 0.1, cat.hi[l] = cat.mean[l] + 0.1;
        cml.lo[l] = cml.mean[l] - 0.1, cml.hi[l] = cml.mean[l] + 0.1;
    }
    CiSeries a = curve_series(&at), m = curve_series(&ml), ca = curve_series(&cat), cm = curve_series(&cml);
    int sel_attn[] = {5, 9}, sel_mlp[] = {7};
    path_in(path, sizeof path, dir, FIG_ABLATION);
    CHECK(fig_ablation_importance(path, N_LAYERS, &a, &m, 100, &ca, &cm, 100, sel_attn, 2, sel_mlp, 1,
                                  "zero ablation, scope all; top-k attention 2, MLP 1", &err) == 0);

    // Heads: one strong head, a weak negative one, small noise, one missing; two selected, three exact.
    double effect[N_LAYERS * N_HEADS];
    unsigned char exact[N_LAYERS * N_HEADS] = {0}, selected[N_LAYERS * N_HEADS] = {0};
    for (int i = 0; i < N_LAYERS * N_HEADS; i++) effect[i] = 0.01 * ((i * 7) % 5) - 0.02;
    effect[5 * N_HEADS + 2] = 19.3, effect[9 * N_HEADS + 0] = -1.4, effect[11 * N_HEADS + 5] = NAN;
    exact[5 * N_HEADS + 2] = exact[9 * N_HEADS + 0] = exact[3 * N_HEADS + 1] = 1;
    selected[5 * N_HEADS + 2] = selected[3 * N_HEADS + 1] = 1;
    path_in(path, sizeof path, dir, FIG_HEAD_IMPORTANCE);
    CHECK(fig_head_importance(path, N_LAYERS, N_HEADS, effect, exact, selected, 100,
                              "zero ablation, scope all; ringed: exact", &err) == 0);
}

// The same six from empty data, named empty_<spec name>.
static void write_empty(const char *dir) {
    char path[1200];
    Err err = {0};
    long long zero[2] = {0, 0};
    const char *two[2] = {"baseline", "targeted_ablation"};
    path_in(path, sizeof path, dir, "empty_" FIG_RATE_BY_VARIANT);
    CHECK(fig_rate_by_variant(path, NULL, NULL, NULL, 0, NULL, &err) == 0);
    path_in(path, sizeof path, dir, "empty_" FIG_RATE_BY_CONDITION);
    CHECK(fig_rate_by_condition(path, two, zero, zero, 2, NULL, &err) == 0); // zero completions
    path_in(path, sizeof path, dir, "empty_" FIG_FORMATTING);
    CHECK(fig_formatting_effect(path, two, zero, zero, zero, 2, NULL, &err) == 0);
    path_in(path, sizeof path, dir, "empty_" FIG_BT_VS_ACCURACY);
    CHECK(fig_bt_vs_accuracy(path, two, zero, zero, zero, zero, 2, NULL, &err) == 0);
    double nan3[3] = {NAN, NAN, NAN};
    CiSeries none = {nan3, nan3, nan3};
    path_in(path, sizeof path, dir, "empty_" FIG_LOGIT_LENS);
    CHECK(fig_logit_lens(path, 2, &none, 0, &none, 0, NULL, &err) == 0);
    path_in(path, sizeof path, dir, "empty_" FIG_ABLATION);
    CHECK(fig_ablation_importance(path, 2, &none, &none, 0, NULL, NULL, 0, NULL, 0, NULL, 0, NULL, &err) == 0);
    path_in(path, sizeof path, dir, "empty_" FIG_HEAD_IMPORTANCE);
    CHECK(fig_head_importance(path, 0, 0, NULL, NULL, NULL, 0, NULL, &err) == 0);
}

static const char *figure_names[N_FIGURES] = {FIG_RATE_BY_VARIANT, FIG_BT_VS_ACCURACY, FIG_LOGIT_LENS, FIG_ABLATION,
                                              FIG_RATE_BY_CONDITION, FIG_FORMATTING, FIG_HEAD_IMPORTANCE};
static const char *figure_titles[N_FIGURES] = {
    "Backtracking rate by prompt variant", "Accuracy with vs without backtracking",
    "Logit lens: onset token at backtracking events vs controls", "Ablation importance by layer",
    "Backtracking rate by ablation condition", "Effect of output formatting on backtracking",
    "Head importance by layer"};

// ----------------------------------------------------------------------------
// Tests

static void t_escape(void) {
    Buf b = {0};
    svg_escape(&b, "a<b & \"c\" 'd' > e\x01\tf \xC3\xA9 \xFF\xC3 \xE2\x89\xA5");
    CHECK(b.data && strcmp(b.data, "a&lt;b &amp; &quot;c&quot; &apos;d&apos; &gt; e f \xC3\xA9  \xE2\x89\xA5") == 0);
    buf_free(&b);
}

static void t_writer_axes_and_ticks(void) {
    Buf b = {0};
    Svg s;
    svg_begin(&s, &b, 640, 400, "Ticks & <things>", NULL);
    svg_axes(&s, 0, 27, -12.3, -0.8, "layer", "log p", 1);
    double y[3] = {-12, -5, NAN}, x[3] = {0, 10, 27};
    svg_line_series(&s, x, y, NULL, NULL, 3, "#000000", 0, 1);
    svg_end(&s);
    CHECK(xml_check(b.data) == NULL);
    CHECK(strstr(b.data, "<title>Ticks &amp; &lt;things&gt;</title>"));
    // y ticks snap outward to whole steps of 2: -14 .. 0; x ticks are whole layers
    CHECK(strstr(b.data, ">-14</text>") && strstr(b.data, ">0</text>") && !strstr(b.data, ">-16</text>"));
    CHECK(strstr(b.data, ">25</text>") && !strstr(b.data, ".5</text>"));
    CHECK(s.y_min == -14 && s.y_max == 0);
    CHECK(count(b.data, "class=\"pt\"") == 2 && count(b.data, "class=\"line\"") == 1); // NaN is a gap
    buf_free(&b);
    // scatter: filled points and open rings, NaN left out; a legend row per what fits
    svg_begin(&s, &b, 640, 400, "t", NULL);
    SvgKey keys[] = {{"points", "#4477aa", SVG_KEY_RING}, {"a band", "#777777", SVG_KEY_BAND}};
    svg_legend(&s, keys, 2);
    CHECK(s.top > 48 && strstr(b.data, ">points</text>") && strstr(b.data, ">a band</text>"));
    svg_axes(&s, 0, 1, 0, 1, "x", "y", 0);
    double px[3] = {0.1, 0.5, NAN}, py[3] = {0.2, 0.9, 0.3};
    svg_scatter(&s, px, py, 3, "#4477aa", 0);
    svg_scatter(&s, px, py, 3, "#4477aa", 1);
    svg_end(&s);
    CHECK(count(b.data, "class=\"pt\"") == 2 && count(b.data, "class=\"mark\"") == 2 && xml_check(b.data) == NULL);
    buf_free(&b);
    // a rate axis: 0.0 .. 1.0 by 0.2
    svg_begin(&s, &b, 640, 400, "t", "n");
    const char *cats[] = {"a", "b"};
    svg_axes_categories(&s, cats, 2, 0, 1, "x", "rate");
    CHECK(strstr(b.data, ">0.0</text>") && strstr(b.data, ">0.2</text>") && strstr(b.data, ">1.0</text>"));
    buf_free(&b);
    // a degenerate range still draws
    svg_begin(&s, &b, 640, 400, "t", NULL);
    svg_axes(&s, 3, 3, 5, 5, "x", "y", 0);
    svg_end(&s);
    CHECK(s.x_max > s.x_min && s.y_max > s.y_min && xml_check(b.data) == NULL);
    buf_free(&b);
}

static void t_checker_rejects_bad_xml(void) { // the checker must be able to fail
    CHECK(xml_check("<svg><g></svg>") != NULL);
    CHECK(xml_check("<svg a=b/>") != NULL);
    CHECK(xml_check("<svg>a & b</svg>") != NULL);
    CHECK(xml_check("<svg/><svg/>") != NULL);
    CHECK(xml_check("<svg x=\"1\"><text>a&amp;b</text></svg>") == NULL);
}

static void t_figures_synthetic(void) {
    const char *dir = test_tmpdir();
    write_synthetic(dir);
    char path[1200];
    for (int f = 0; f < N_FIGURES; f++) {
        path_in(path, sizeof path, dir, figure_names[f]);
        char *svg = load_figure(path, figure_titles[f]);
        CHECKF(!strstr(svg, "no data"), "%s says no data", figure_names[f]);
        CHECKF(strstr(svg, "<title>") && count(svg, "transform=\"rotate(-90") >= 1, "%s: y axis label",
               figure_names[f]);
        if (f == 0) { // 5 bars with Wilson error bars, k/n labels; plain_qa's 0/200 is a bar of height 0
            CHECK(count(svg, "class=\"bar\"") == 5 && count(svg, "class=\"err\"") == 5);
            CHECK(strstr(svg, ">124/200</text>") && strstr(svg, ">0/200</text>") &&
                  strstr(svg, ">prompt variant</text>"));
            CHECK(strstr(svg, "95% Wilson CI") && strstr(svg, ">backtracking rate</text>"));
        }
        if (f == 1) { // plain_qa never backtracks: its three "with" bars are 0/0, not drawn
            CHECK(count(svg, "class=\"bar\"") == 27 && count(svg, "class=\"err\"") == 27);
            CHECK(count(svg, ">0/0</text>") == 3 && strstr(svg, "completions without backtracking"));
            CHECK(strstr(svg, ">baseline_think_newline / targeted_ablation</text>")); // slanted, not cut
        }
        if (f == 2) { // two lines with bands over layers 0..12, 13 points each
            CHECK(count(svg, "class=\"line\"") == 2 && count(svg, "class=\"band\"") == 2);
            CHECK(count(svg, "class=\"pt\"") == 2 * (N_LAYERS + 1));
            CHECK(strstr(svg, "backtracking events (n = 120)") && strstr(svg, "layer (0 = embeddings)"));
        }
        if (f == 3) { // two panels of events and controls per layer, three selected layers highlighted
            CHECK(count(svg, "class=\"bar\"") == 4 * N_LAYERS && count(svg, "class=\"err\"") == 4 * N_LAYERS);
            CHECK(count(svg, "class=\"highlight\"") == 3 && strstr(svg, "selected for targeted ablation"));
            CHECK(strstr(svg, ">attention output ablated</text>") && strstr(svg, ">MLP output ablated</text>"));
            CHECK(count(svg, ">drop in log p(onset)</text>") == 2 && count(svg, ">layer</text>") == 1);
        }
        if (f == 4) CHECK(count(svg, "class=\"bar\"") == 3 && strstr(svg, ">targeted_ablation</text>") &&
                          strstr(svg, "Fisher p &lt; 1e-20"));
        if (f == 5) CHECK(count(svg, "class=\"bar\"") == 10 && strstr(svg, ">share of completions that reason</text>"));
        if (f == 6) { // a cell per head, the selected outlined, the exact ringed, values printed where they fit
            CHECK(count(svg, "class=\"cell\"") == N_LAYERS * N_HEADS && count(svg, "class=\"selected\"") == 2);
            CHECK(count(svg, "class=\"mark\"") == 3 && count(svg, "class=\"scale\"") == 20);
            CHECK(strstr(svg, ">19.3</text>") && strstr(svg, ">-1.40</text>") && strstr(svg, ">head</text>"));
            CHECK(count(svg, "class=\"celltext\"") == N_LAYERS * N_HEADS - 1); // the missing head prints nothing
            CHECK(strstr(svg, "fill=\"#b2182b\"") && strstr(svg, "fill=\"#dddddd\"")); // the largest at full colour
        }
        free(svg);
    }
}

static void t_figures_empty_say_no_data(void) {
    const char *dir = test_tmpdir();
    write_empty(dir);
    char path[1200];
    for (int f = 0; f < N_FIGURES; f++) {
        char name[256];
        snprintf(name, sizeof name, "empty_%s", figure_names[f]);
        path_in(path, sizeof path, dir, name);
        char *svg = load_figure(path, figure_titles[f]);
        CHECKF(count(svg, "class=\"nodata\"") == 1, "%s lacks 'no data'", name);
        CHECK(!strstr(svg, "class=\"bar\"") && !strstr(svg, "class=\"line\"") && !strstr(svg, "class=\"pt\""));
        free(svg);
    }
}

static void t_figures_partial_data(void) {
    const char *dir = test_tmpdir();
    char path[1200];
    Err err = {0};
    // one variant only
    const char *one[] = {"baseline_think_newline"};
    long long k1[] = {3}, n1[] = {4};
    path_in(path, sizeof path, dir, "one.svg");
    CHECK(fig_rate_by_variant(path, one, k1, n1, 1, NULL, &err) == 0);
    char *svg = load_figure(path, "Backtracking rate by prompt variant");
    CHECK(count(svg, "class=\"bar\"") == 1 && count(svg, "class=\"err\"") == 1 && strstr(svg, ">3/4</text>"));
    free(svg);
    // a variant with zero completions: no bar, its 0/0 said where the bar would be
    const char *three[] = {"a", "b & <c>", "d"};
    long long k3[] = {3, 0, 5}, n3[] = {10, 0, 10};
    path_in(path, sizeof path, dir, "gap.svg");
    CHECK(fig_rate_by_variant(path, three, k3, n3, 3, "note with \"quotes\"", &err) == 0);
    svg = load_figure(path, "Backtracking rate by prompt variant");
    CHECK(count(svg, "class=\"bar\"") == 2 && strstr(svg, ">0/0</text>") && strstr(svg, ">b &amp; &lt;c&gt;</text>"));
    CHECK(strstr(svg, "note with &quot;quotes&quot;"));
    free(svg);
    // a name too long to show whole is shortened with an ellipsis, not run off the canvas
    char longname[600];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    memcpy(longname, "caf\xC3\xA9", 5);
    const char *named[] = {longname};
    path_in(path, sizeof path, dir, "long.svg");
    CHECK(fig_rate_by_variant(path, named, k1, n1, 1, longname, &err) == 0);
    svg = load_figure(path, "Backtracking rate by prompt variant");
    CHECK(count(svg, ">caf\xC3\xA9xxx") == 2 && count(svg, "x\xE2\x80\xA6</text>") == 2 && !strstr(svg, longname));
    free(svg);
    // logit lens with events but no controls, and a layer missing
    double mean[4] = {-9, -7, NAN, -2}, lo[4] = {-10, -8, NAN, -3}, hi[4] = {-8, -6, NAN, -1};
    CiSeries ev = {mean, lo, hi};
    path_in(path, sizeof path, dir, "lens.svg");
    CHECK(fig_logit_lens(path, 3, &ev, 7, NULL, 0, NULL, &err) == 0);
    svg = load_figure(path, "Logit lens");
    CHECK(count(svg, "class=\"line\"") == 2 && count(svg, "class=\"band\"") == 2 && count(svg, "class=\"pt\"") == 3);
    CHECK(strstr(svg, "position-matched controls (n = 0)"));
    free(svg);
    // the write is atomic: an unwritable place is an error, not a partial file
    path_in(path, sizeof path, dir, "one.svg/inside.svg");
    CHECK(fig_rate_by_variant(path, one, k1, n1, 1, NULL, &err) == -1 && strstr(err.msg, "one.svg"));
}

static void t_figures_deterministic(void) {
    const char *a = test_tmpdir();
    char dir_a[1100];
    snprintf(dir_a, sizeof dir_a, "%s", a);
    const char *dir_b = test_tmpdir();
    write_synthetic(dir_a);
    write_synthetic(dir_b);
    for (int f = 0; f < N_FIGURES; f++) {
        char pa[1200], pb[1200];
        Buf x = {0}, y = {0};
        Err err = {0};
        path_in(pa, sizeof pa, dir_a, figure_names[f]);
        path_in(pb, sizeof pb, dir_b, figure_names[f]);
        CHECK(read_file(pa, &x, &err) == 0 && read_file(pb, &y, &err) == 0);
        CHECKF(x.len == y.len && memcmp(x.data, y.data, x.len) == 0, "%s differs between two writes", figure_names[f]);
        buf_free(&x);
        buf_free(&y);
    }
}

// Two pictures a reader could not use: blank, and a bar drawn off the canvas.
static const char *bad_blank = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" "
                               "version=\"1.1\" width=\"300\" height=\"200\"><title>blank</title><rect width=\"300\" "
                               "height=\"200\" fill=\"#ffffff\"/></svg>\n";
static const char *bad_hidden =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" "
    "version=\"1.1\" width=\"300\" height=\"200\"><title>hidden</title><text x=\"10\" y=\"40\" font-size=\"30\">some "
    "text</text>"
    "<rect class=\"bar\" x=\"400\" y=\"10\" width=\"20\" height=\"50\" fill=\"#4477aa\"/></svg>\n";

// Runs tests/svg_check.py MODE on figures written here, synthetic and empty: all of
// them for the XML check; for rendering (a second per figure) the six, one empty and
// the two bad pictures, which it must reject.
static void check_with_python(const char *mode) {
    if (system("python3 -c 'import xml.dom.minidom, zlib' >/dev/null 2>&1") != 0) SKIP("python3 not found");
    const char *dir = test_tmpdir();
    write_synthetic(dir);
    write_empty(dir);
    int render = strcmp(mode, "render") == 0, n_files = render ? N_FIGURES + 1 : 2 * N_FIGURES;
    char cmd[4096], log[1200];
    path_in(log, sizeof log, dir, "svg_check.log");
    int len = snprintf(cmd, sizeof cmd, "python3 tests/svg_check.py %s", mode);
    for (int f = 0; f < N_FIGURES; f++)
        len += snprintf(cmd + len, sizeof cmd - (size_t)len, " %s/%s", dir, figure_names[f]);
    if (render) {
        char bad[1200];
        Err err = {0};
        path_in(bad, sizeof bad, dir, "bad_blank.svg");
        CHECK(write_file_atomic(bad, bad_blank, strlen(bad_blank), &err) == 0);
        path_in(bad, sizeof bad, dir, "bad_hidden.svg");
        CHECK(write_file_atomic(bad, bad_hidden, strlen(bad_hidden), &err) == 0);
        len +=
            snprintf(cmd + len, sizeof cmd - (size_t)len, " %s/empty_%s %s/bad_*.svg", dir, FIG_RATE_BY_VARIANT, dir);
    } else len += snprintf(cmd + len, sizeof cmd - (size_t)len, " %s/empty_*.svg", dir);
    snprintf(cmd + len, sizeof cmd - (size_t)len, " >%s 2>&1", log);
    int rc = system(cmd);
    rc = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
    Buf out = {0};
    Err err = {0};
    read_file(log, &out, &err);
    if (rc == 77) {
        buf_free(&out);
        SKIP("chromium not found (Debian package chromium)");
    }
    const char *text = out.data ? out.data : "no output";
    CHECKF(rc == (render ? 1 : 0), "svg_check.py %s exited %d:\n%s", mode, rc, text);
    CHECKF(count(text, "ok   ") == n_files, "%s", text);
    if (render) CHECKF(count(text, "FAIL ") == 2 && strstr(text, "bad_blank.svg: blank") &&
                       strstr(text, "bad_hidden.svg: colour #4477aa of the data is not visible"), "%s", text);
    buf_free(&out);
}

static void t_figures_parse_as_xml(void) { check_with_python("xml"); }
static void t_figures_render_in_chromium(void) { check_with_python("render"); }

const TestCase tests_svg[] = {
    {"svg: text escaping", t_escape},
    {"svg: axes, nice ticks, gaps", t_writer_axes_and_ticks},
    {"svg: well-formedness checker rejects bad XML", t_checker_rejects_bad_xml},
    {"svg: seven figures from synthetic data", t_figures_synthetic},
    {"svg: seven figures from empty data say no data", t_figures_empty_say_no_data},
    {"svg: one variant, zero completions, missing layer", t_figures_partial_data},
    {"svg: figures are byte-identical across writes", t_figures_deterministic},
    {"svg: figures parse as XML (python3 minidom)", t_figures_parse_as_xml},
    {"svg: figures render in headless chromium", t_figures_render_in_chromium},
    {0, 0},
};
