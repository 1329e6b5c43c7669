// report.c: everything a person looks at. The SVG writer, the six figures,
// then the event browser and the markdown report with its verdicts.
#include "bt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

// ----------------------------------------------------------------------------
// SVG writer

enum { TITLE_PX = 18, LABEL_PX = 14, TICK_PX = 12, NOTE_PX = 12, LEGEND_PX = 12, BAR_LABEL_PX = 10 };
enum { MAX_TICKS = 12, TICK_LEN_PX = 5, LEGEND_ROW_PX = 20, MARGIN_PX = 24, MAX_BAR_PX = 80, BAR_LABEL_ROOM_PX = 16 };

#define CHAR_EM 0.55           // width of an average character in em; no font metrics in an SVG writer
#define AXIS_COLOR "#333333"
#define GRID_COLOR "#e6e6e6"
#define ZERO_COLOR "#999999"
#define TEXT_COLOR "#222222"
#define NOTE_COLOR "#555555"
#define SLANT_DEG 35           // slant of category labels too wide for their slot
#define SLANT_RAD (SLANT_DEG * 3.14159265358979 / 180)
#define MAX_SLANT_LABEL_PX 320 // longer category labels are shortened with an ellipsis

static double text_px(const char *text, double font_px) {
    size_t chars = 0;
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) chars += (*p & 0xC0) != 0x80;
    return (double)chars * font_px * CHAR_EM;
}

void svg_escape(Buf *b, const char *text) {
    const unsigned char *p = (const unsigned char *)text;
    size_t n = strlen(text);
    for (size_t i = 0; i < n;) {
        unsigned char c = p[i];
        if (c == '&') buf_puts(b, "&amp;");
        else if (c == '<') buf_puts(b, "&lt;");
        else if (c == '>') buf_puts(b, "&gt;");
        else if (c == '"') buf_puts(b, "&quot;");
        else if (c == '\'') buf_puts(b, "&apos;");
        else if (c == '\t' || c == '\n' || c == '\r') buf_putc(b, ' ');
        else if (c < 0x20 || c == 0x7F) { // XML 1.0 has no place for these
        } else {
            uint32_t cp = 0;
            int len = utf8_char(p + i, n - i, &cp);
            if (len == 0 || cp == 0xFFFE || cp == 0xFFFF) { // a stray byte or a non-character: skip it
                i++;
                continue;
            }
            buf_append(b, p + i, (size_t)len);
            i += (size_t)len;
            continue;
        }
        i++;
    }
}

// Copies text into out (cap bytes); when it is wider than max_px at font_px (or
// longer than cap), cut on a character boundary and ended with an ellipsis.
static void text_fit(const char *text, double max_px, double font_px, char *out, size_t cap) {
    size_t n = strlen(text);
    if (text_px(text, font_px) <= max_px && n < cap) {
        memcpy(out, text, n + 1);
        return;
    }
    double fit = max_px / (font_px * CHAR_EM);
    size_t max_chars = fit < 2 ? 2 : (size_t)fit, chars = 0, i = 0;
    while (i < n && chars + 1 < max_chars) { // keep max_chars - 1 characters, then the ellipsis
        size_t next = i + 1;
        while (next < n && ((unsigned char)text[next] & 0xC0) == 0x80) next++;
        if (next + 4 > cap) break;
        i = next;
        chars++;
    }
    memcpy(out, text, i);
    memcpy(out + i, "\xE2\x80\xA6", 4); // U+2026 and the terminator
}

static void svg_text(Svg *s, double x, double y, int font_px, const char *anchor, const char *color,
                     const char *extra, const char *text) {
    buf_printf(s->out, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"%d\" text-anchor=\"%s\" fill=\"%s\"%s%s>", x, y,
               font_px, anchor, color, extra ? " " : "", extra ? extra : "");
    svg_escape(s->out, text);
    buf_puts(s->out, "</text>\n");
}

void svg_begin(Svg *s, Buf *out, int width, int height, const char *title, const char *note) {
    memset(s, 0, sizeof *s);
    s->out = out;
    s->width = width;
    s->height = height;
    buf_printf(out,
               "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
               "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"%d\" height=\"%d\" "
               "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\">\n<title>",
               width, height, width, height);
    svg_escape(out, title);
    buf_printf(out, "</title>\n<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"#ffffff\"/>\n", width, height);
    char fitted[512];
    text_fit(title, width - 2 * MARGIN_PX, TITLE_PX, fitted, sizeof fitted);
    svg_text(s, width / 2.0, 30, TITLE_PX, "middle", TEXT_COLOR, "font-weight=\"bold\"", fitted);
    s->top = 48;
    if (note && note[0]) {
        text_fit(note, width - 2 * MARGIN_PX, NOTE_PX, fitted, sizeof fitted);
        svg_text(s, width / 2.0, 50, NOTE_PX, "middle", NOTE_COLOR, NULL, fitted);
        s->top = 64;
    }
    s->left = 72;
    s->right = width - MARGIN_PX;
    s->bottom = height - 56;
    s->x_min = s->y_min = 0;
    s->x_max = s->y_max = 1;
}

static double sx(const Svg *s, double x) {
    return s->left + (x - s->x_min) / (s->x_max - s->x_min) * (s->right - s->left);
}

// y in px, kept inside the plot area so an infinite bound draws to the edge.
static double sy(const Svg *s, double y) {
    double py = s->bottom - (y - s->y_min) / (s->y_max - s->y_min) * (s->bottom - s->top);
    if (isnan(py)) return s->bottom;
    return py < s->top ? s->top : py > s->bottom ? s->bottom : py;
}

static double key_width(const SvgKey *k) { return 22 + 6 + text_px(k->name, LEGEND_PX) + 16; }

static void legend_swatch(Svg *s, const SvgKey *k, double x, double y) { // (x, y): left end, vertical middle
    Buf *o = s->out;
    switch (k->style) {
    case SVG_KEY_BAR:
        buf_printf(o, "<rect x=\"%.1f\" y=\"%.1f\" width=\"16\" height=\"11\" fill=\"%s\"/>\n", x + 3, y - 5.5,
                   k->color);
        break;
    case SVG_KEY_LINE:
    case SVG_KEY_DASHED:
        buf_printf(o, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\"%s/>\n", x,
                   y, x + 22, y, k->color, k->style == SVG_KEY_DASHED ? " stroke-dasharray=\"6 3\"" : "");
        break;
    case SVG_KEY_RING:
        buf_printf(o, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"6\" fill=\"none\" stroke=\"%s\" stroke-width=\"2\"/>\n",
                   x + 11, y, k->color);
        break;
    case SVG_KEY_ERROR_BAR:
        buf_printf(o, "<path d=\"M%.1f %.1fV%.1fM%.1f %.1fH%.1fM%.1f %.1fH%.1f\" stroke=\"%s\" stroke-width=\"1.5\" "
                      "fill=\"none\"/>\n",
                   x + 11, y - 7, y + 7, x + 7, y - 7, x + 15, x + 7, y + 7, x + 15, k->color);
        break;
    case SVG_KEY_OUTLINE:
        buf_printf(o, "<rect x=\"%.1f\" y=\"%.1f\" width=\"16\" height=\"12\" fill=\"none\" stroke=\"%s\" "
                      "stroke-width=\"2.5\"/>\n", x + 3, y - 6, k->color);
        break;
    default: // SVG_KEY_BAND
        buf_printf(o, "<rect x=\"%.1f\" y=\"%.1f\" width=\"22\" height=\"12\" fill=\"%s\" fill-opacity=\"0.25\"/>\n", x,
                   y - 6, k->color);
    }
}

void svg_legend(Svg *s, const SvgKey *keys, int n) {
    double avail = s->width - 2 * MARGIN_PX, y = s->top + 4;
    for (int first = 0; first < n;) {
        int last = first; // one row: as many keys as fit, at least one
        double row = key_width(&keys[first]);
        while (last + 1 < n && row + key_width(&keys[last + 1]) <= avail) row += key_width(&keys[++last]);
        double x = (s->width - row + 16) / 2; // the trailing gap of the last key does not count
        for (int i = first; i <= last; i++) {
            legend_swatch(s, &keys[i], x, y + 6);
            svg_text(s, x + 28, y + 10, LEGEND_PX, "start", TEXT_COLOR, NULL, keys[i].name);
            x += key_width(&keys[i]);
        }
        y += LEGEND_ROW_PX;
        first = last + 1;
    }
    s->top = y + 8;
}

// Nice step (1, 2 or 5 times a power of ten) giving at most about max_ticks ticks over span.
static double nice_step(double span, int max_ticks) {
    double raw = span / max_ticks, mag = pow(10, floor(log10(raw))), f = raw / mag;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
}

typedef struct {
    double v[MAX_TICKS + 2]; // tick values
    int n;
    int decimals; // printed precision, from the step
} Ticks;

// Widens a degenerate or non-finite range so that it can be drawn.
static void range_fix(double *lo, double *hi) {
    if (!isfinite(*lo) || !isfinite(*hi)) *lo = 0, *hi = 1;
    if (*lo > *hi) {
        double t = *lo;
        *lo = *hi;
        *hi = t;
    }
    if (*hi - *lo < 1e-12 * (fabs(*lo) + fabs(*hi)) || *hi == *lo) {
        double pad = *lo == 0 ? 1 : fabs(*lo) * 0.1;
        *lo -= pad;
        *hi += pad;
    }
}

// Ticks for [lo, hi]; when snap, the range itself grows to whole steps.
static Ticks ticks_make(double *lo, double *hi, int max_ticks, int integer, int snap) {
    Ticks t = {{0}, 0, 0};
    range_fix(lo, hi);
    double step = nice_step(*hi - *lo, max_ticks);
    if (integer && step < 1) step = 1;
    if (snap) {
        *lo = floor(*lo / step + 1e-9) * step;
        *hi = ceil(*hi / step - 1e-9) * step;
    }
    double first = ceil(*lo / step - 1e-9) * step;
    for (int i = 0; t.n < MAX_TICKS + 1; i++) {
        double v = first + i * step;
        if (v > *hi + step * 1e-9) break;
        t.v[t.n++] = fabs(v) < step * 1e-9 ? 0 : v; // no "-0"
    }
    t.decimals = step >= 1 ? 0 : (int)ceil(-log10(step) - 1e-9);
    return t;
}

static double ticks_label_px(const Ticks *t) {
    double w = 0;
    for (int i = 0; i < t->n; i++) {
        char label[64];
        snprintf(label, sizeof label, "%.*f", t->decimals, t->v[i]);
        if (text_px(label, TICK_PX) > w) w = text_px(label, TICK_PX);
    }
    return w;
}

// The y axis: grid, zero line, ticks, labels and the rotated axis title.
static void draw_y_axis(Svg *s, const Ticks *t, const char *y_label) {
    Buf *o = s->out;
    for (int i = 0; i < t->n; i++) {
        double py = sy(s, t->v[i]);
        buf_printf(o, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"1\"/>\n",
                   s->left, py, s->right, py, t->v[i] == 0 && s->y_min < 0 ? ZERO_COLOR : GRID_COLOR);
        buf_printf(o, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"1\"/>\n",
                   s->left - TICK_LEN_PX, py, s->left, py, AXIS_COLOR);
        char label[64];
        snprintf(label, sizeof label, "%.*f", t->decimals, t->v[i]);
        svg_text(s, s->left - TICK_LEN_PX - 3, py + 4, TICK_PX, "end", TEXT_COLOR, NULL, label);
    }
    buf_printf(o, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"1\"/>\n", s->left,
               s->top, s->left, s->bottom, AXIS_COLOR);
    if (!y_label) return;
    // The title sits just left of the tick labels, wherever the left margin ended up.
    double cy = (s->top + s->bottom) / 2, cx = s->left - TICK_LEN_PX - ticks_label_px(t) - 12 - LABEL_PX / 2.0;
    char fitted[256], rotate[64];
    text_fit(y_label, s->bottom - s->top, LABEL_PX, fitted, sizeof fitted);
    snprintf(rotate, sizeof rotate, "transform=\"rotate(-90 %.1f %.1f)\"", cx, cy);
    svg_text(s, cx, cy, LABEL_PX, "middle", TEXT_COLOR, rotate, fitted);
}

static void draw_x_title(Svg *s, const char *x_label) {
    char fitted[256];
    if (x_label) {
        text_fit(x_label, s->right - s->left, LABEL_PX, fitted, sizeof fitted);
        svg_text(s, (s->left + s->right) / 2, s->height - 14, LABEL_PX, "middle", TEXT_COLOR, NULL, fitted);
    }
    buf_printf(s->out, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"1\"/>\n",
               s->left, s->bottom, s->right, s->bottom, AXIS_COLOR);
}

static void set_y_range(Svg *s, double y_min, double y_max, Ticks *t) {
    *t = ticks_make(&y_min, &y_max, 6, 0, 1);
    s->y_min = y_min;
    s->y_max = y_max;
    s->left = 20 + LABEL_PX / 2.0 + 12 + ticks_label_px(t) + TICK_LEN_PX; // axis title, gap, tick labels, tick
}

void svg_axes(Svg *s, double x_min, double x_max, double y_min, double y_max, const char *x_label,
              const char *y_label, int x_integer) {
    Ticks ty, tx;
    set_y_range(s, y_min, y_max, &ty);
    // The x range is the data's own (lines should reach the edges), padded a little for the end markers.
    range_fix(&x_min, &x_max);
    double pad = (x_max - x_min) * 0.03;
    x_min -= pad;
    x_max += pad;
    int max_x_ticks = (int)((s->right - s->left) / (x_integer ? 40 : 70)); // room for each tick label
    tx = ticks_make(&x_min, &x_max, max_x_ticks > 2 ? max_x_ticks : 2, x_integer, 0);
    s->x_min = x_min;
    s->x_max = x_max;
    draw_y_axis(s, &ty, y_label);
    for (int i = 0; i < tx.n; i++) {
        double px = sx(s, tx.v[i]);
        buf_printf(s->out, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"1\"/>\n",
                   px, s->bottom, px, s->bottom + TICK_LEN_PX, AXIS_COLOR);
        char label[64];
        snprintf(label, sizeof label, "%.*f", tx.decimals, tx.v[i]);
        svg_text(s, px, s->bottom + TICK_LEN_PX + 14, TICK_PX, "middle", TEXT_COLOR, NULL, label);
    }
    draw_x_title(s, x_label);
}

void svg_axes_categories(Svg *s, const char *const *categories, int n, double y_min, double y_max,
                         const char *x_label, const char *y_label) {
    if (n < 1) n = 1; // an axis without categories still draws
    // Lay out the labels first: slanted labels need a deeper bottom margin, which the y scale depends on.
    double slot = (s->right - s->left) / n, widest = 0;
    for (int i = 0; categories && i < n; i++)
        if (text_px(categories[i], TICK_PX) > widest) widest = text_px(categories[i], TICK_PX);
    int slant = widest > slot - 8;
    double label_px = widest < MAX_SLANT_LABEL_PX ? widest : MAX_SLANT_LABEL_PX;
    if (slant) s->bottom = s->height - (TICK_LEN_PX + 8 + label_px * sin(SLANT_RAD) + TICK_PX * cos(SLANT_RAD) + 32);
    Ticks ty;
    set_y_range(s, y_min, y_max, &ty);
    if (slant && categories) { // the first label reaches left of its tick: keep it on the canvas
        double first = text_px(categories[0], TICK_PX), reach;
        first = first < MAX_SLANT_LABEL_PX ? first : MAX_SLANT_LABEL_PX;
        reach = first * cos(SLANT_RAD) - (s->right - s->left) / n / 2 + 8;
        if (s->left < reach) s->left = reach;
    }
    slot = (s->right - s->left) / n; // the left margin moved
    s->x_min = -0.5;
    s->x_max = n - 0.5;
    draw_y_axis(s, &ty, y_label);
    for (int i = 0; categories && i < n; i++) {
        double px = sx(s, i), py = s->bottom + TICK_LEN_PX + 14;
        char fitted[256];
        buf_printf(s->out, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"1\"/>\n",
                   px, s->bottom, px, s->bottom + TICK_LEN_PX, AXIS_COLOR);
        if (slant) {
            char rotate[80];
            text_fit(categories[i], MAX_SLANT_LABEL_PX, TICK_PX, fitted, sizeof fitted);
            py = s->bottom + TICK_LEN_PX + 10;
            snprintf(rotate, sizeof rotate, "transform=\"rotate(-%d %.1f %.1f)\"", SLANT_DEG, px + 4, py);
            svg_text(s, px + 4, py, TICK_PX, "end", TEXT_COLOR, rotate, fitted);
        } else {
            text_fit(categories[i], slot - 4, TICK_PX, fitted, sizeof fitted);
            svg_text(s, px, py, TICK_PX, "middle", TEXT_COLOR, NULL, fitted);
        }
    }
    draw_x_title(s, x_label);
}

void svg_line_series(Svg *s, const double *x, const double *y, const double *lo, const double *hi, int n,
                     const char *color, int dashed, double opacity) {
    Buf *o = s->out;
#define X_AT(i) (x ? x[i] : (double)(i))
    // Band: one polygon per run of points whose bounds are both known.
    for (int i = 0; lo && hi && i < n;) {
        if (!isfinite(X_AT(i)) || isnan(lo[i]) || isnan(hi[i])) {
            i++;
            continue;
        }
        int j = i;
        while (j + 1 < n && isfinite(X_AT(j + 1)) && !isnan(lo[j + 1]) && !isnan(hi[j + 1])) j++;
        buf_printf(o, "<polygon class=\"band\" fill=\"%s\" fill-opacity=\"%.2f\" stroke=\"none\" points=\"", color,
                   0.22 * opacity);
        for (int k = i; k <= j; k++) buf_printf(o, "%.1f,%.1f ", sx(s, X_AT(k)), sy(s, hi[k]));
        for (int k = j; k >= i; k--) buf_printf(o, "%.1f,%.1f%s", sx(s, X_AT(k)), sy(s, lo[k]), k > i ? " " : "");
        buf_puts(o, "\"/>\n");
        i = j + 1;
    }
    for (int i = 0; i < n;) { // Line: one polyline per run of known values.
        if (!isfinite(X_AT(i)) || isnan(y[i])) {
            i++;
            continue;
        }
        int j = i;
        while (j + 1 < n && isfinite(X_AT(j + 1)) && !isnan(y[j + 1])) j++;
        buf_printf(o,
                   "<polyline class=\"line\" fill=\"none\" stroke=\"%s\" stroke-opacity=\"%.2f\" stroke-width=\"2\"%s "
                   "points=\"",
                   color, opacity, dashed ? " stroke-dasharray=\"6 3\"" : "");
        for (int k = i; k <= j; k++) buf_printf(o, "%.1f,%.1f%s", sx(s, X_AT(k)), sy(s, y[k]), k < j ? " " : "");
        buf_puts(o, "\"/>\n");
        i = j + 1;
    }
    for (int i = 0; i < n; i++)
        if (isfinite(X_AT(i)) && !isnan(y[i]))
            buf_printf(o, "<circle class=\"pt\" cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\" fill-opacity=\"%.2f\"/>\n",
                       sx(s, X_AT(i)), sy(s, y[i]), color, opacity);
#undef X_AT
}

void svg_error_bar(Svg *s, double x, double lo, double hi, double cap_px) {
    if (isnan(lo) || isnan(hi) || isnan(x)) return;
    double px = sx(s, x), y0 = sy(s, lo), y1 = sy(s, hi), c = cap_px / 2;
    buf_printf(s->out,
               "<path class=\"err\" d=\"M%.1f %.1fV%.1fM%.1f %.1fH%.1fM%.1f %.1fH%.1f\" stroke=\"%s\" "
               "stroke-width=\"1.5\" fill=\"none\"/>\n",
               px, y0, y1, px - c, y0, px + c, px - c, y1, px + c, TEXT_COLOR);
}

void svg_bars(Svg *s, int n_groups, int n_series, const double *value, const double *lo, const double *hi,
              const char *const *colors, const char *const *labels) {
    if (n_groups <= 0 || n_series <= 0) return;
    double unit_px = (s->right - s->left) / (s->x_max - s->x_min); // px per category
    double group_w = 0.8, bar_w = group_w / n_series;                // in category units
    if (bar_w * unit_px > MAX_BAR_PX) { // a few categories: keep bars slim, the group centred
        bar_w = MAX_BAR_PX / unit_px;
        group_w = bar_w * n_series;
    }
    double bar_px = bar_w * unit_px;
    double base = s->y_min > 0 ? s->y_min : s->y_max < 0 ? s->y_max : 0;
    for (int g = 0; g < n_groups; g++)
        for (int j = 0; j < n_series; j++) {
            int i = g * n_series + j;
            double xc = g - group_w / 2 + (j + 0.5) * bar_w, v = value[i];
            double x0 = sx(s, xc - bar_w / 2) + 1, w = bar_px - 2 > 1 ? bar_px - 2 : 1;
            double top_y = sy(s, base);
            if (!isnan(v)) {
                double y0 = sy(s, v > base ? v : base), y1 = sy(s, v > base ? base : v);
                buf_printf(s->out,
                           "<rect class=\"bar\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"/>\n",
                           x0, y0, w, y1 - y0, colors[j]);
                if (lo && hi) svg_error_bar(s, xc, lo[i], hi[i], w * 0.5 < 12 ? w * 0.5 : 12);
                top_y = sy(s, v);
                if (lo && hi && !isnan(hi[i]) && sy(s, hi[i]) < top_y) top_y = sy(s, hi[i]);
            }
            const char *label = labels ? labels[i] : isnan(v) ? "n/a" : NULL;
            // A label may rise into the margin above the plot (BAR_LABEL_ROOM_PX), not further.
            if (label && text_px(label, BAR_LABEL_PX) <= bar_px + 4 &&
                top_y - 5 - BAR_LABEL_PX >= s->top - BAR_LABEL_ROOM_PX)
                svg_text(s, sx(s, xc), top_y - 5, BAR_LABEL_PX, "middle", NOTE_COLOR, "class=\"barlabel\"", label);
        }
}

void svg_scatter(Svg *s, const double *x, const double *y, int n, const char *color, int open) {
    for (int i = 0; i < n; i++) {
        if (isnan(x[i]) || isnan(y[i])) continue;
        if (open)
            buf_printf(s->out,
                       "<circle class=\"mark\" cx=\"%.1f\" cy=\"%.1f\" r=\"7\" fill=\"none\" stroke=\"%s\" "
                       "stroke-width=\"2\"/>\n",
                       sx(s, x[i]), sy(s, y[i]), color);
        else
            buf_printf(s->out, "<circle class=\"pt\" cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"%s\"/>\n", sx(s, x[i]),
                       sy(s, y[i]), color);
    }
}

void svg_highlight_x(Svg *s, double x0, double x1, const char *color) {
    double px0 = sx(s, x0), px1 = sx(s, x1);
    px0 = px0 < s->left ? s->left : px0;
    px1 = px1 > s->right ? s->right : px1;
    if (px1 <= px0) return;
    buf_printf(s->out,
               "<rect class=\"highlight\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\" "
               "fill-opacity=\"0.30\"/>\n",
               px0, s->top, px1 - px0, s->bottom - s->top, color);
}

void svg_no_data(Svg *s, const char *why) {
    s->left = MARGIN_PX; // no axes: the box sits centred
    s->right = s->width - MARGIN_PX;
    double cx = (s->left + s->right) / 2, cy = (s->top + s->bottom) / 2;
    buf_printf(s->out,
               "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#fafafa\" stroke=\"#cccccc\" "
               "stroke-dasharray=\"4 3\"/>\n",
               s->left, s->top, s->right - s->left, s->bottom - s->top);
    svg_text(s, cx, cy, 22, "middle", NOTE_COLOR, "class=\"nodata\"", "no data");
    if (why && why[0]) {
        char fitted[512];
        text_fit(why, s->right - s->left - 20, LABEL_PX, fitted, sizeof fitted);
        svg_text(s, cx, cy + 26, LABEL_PX, "middle", NOTE_COLOR, NULL, fitted);
    }
}

void svg_end(Svg *s) { buf_puts(s->out, "</svg>\n"); }

// ----------------------------------------------------------------------------
// Figures

// Paul Tol's "bright" scheme: distinct for colour-blind readers and in grey print.
#define BLUE "#4477aa"
#define RED "#ee6677"
#define GREEN "#228833"
#define GREY "#777777"
#define INK "#222222"
#define LIGHT_BLUE "#b4c9dd" // BLUE mixed 60% with white: the same quantity over controls
#define YELLOW "#ccbb44"

enum { FIG_HEIGHT = 500, ABLATION_HEIGHT = 640, FIG_MIN_WIDTH = 720, FIG_MAX_WIDTH = 1600, BAR_SLOT_PX = 44 };

static int figure_width(int n_bars) {
    int w = 200 + n_bars * BAR_SLOT_PX;
    return w < FIG_MIN_WIDTH ? FIG_MIN_WIDTH : w > FIG_MAX_WIDTH ? FIG_MAX_WIDTH : w;
}

static int figure_write(const char *path, Buf *b, Err *err) {
    int rc = write_file_atomic(path, b->data, b->len, err);
    buf_free(b);
    return rc;
}

static void min_max(const double *v, int n, double *lo, double *hi) { // over finite values only
    for (int i = 0; v && i < n; i++)
        if (isfinite(v[i])) {
            if (v[i] < *lo) *lo = v[i];
            if (v[i] > *hi) *hi = v[i];
        }
}

static int any_finite(const double *v, int n) {
    for (int i = 0; v && i < n; i++)
        if (isfinite(v[i])) return 1;
    return 0;
}

// Rates with Wilson intervals as bars: series j of group g is k[j][g] / n[j][g].
// Shared by the four figures of proportions, which have one or two series.
enum { MAX_RATE_SERIES = 2 };

typedef struct {
    const char *name, *color;
    const long long *k, *n; // (n_groups) each
} RateSeries;

static int rate_figure(const char *path, const char *title, const char *note, const char *x_label,
                       const char *y_label, const char *const *groups, int n_groups, const RateSeries *series,
                       int n_series, const char *empty_why, Err *err) {
    long long total = 0;
    for (int j = 0; j < n_series; j++)
        for (int g = 0; g < n_groups; g++) total += series[j].n[g] > 0 ? series[j].n[g] : 0;
    // Long group names are slanted below the axis: make room for them rather than cut them.
    int width = figure_width(n_groups * n_series), height = FIG_HEIGHT;
    double widest = 0;
    for (int g = 0; groups && g < n_groups; g++)
        if (text_px(groups[g], TICK_PX) > widest) widest = text_px(groups[g], TICK_PX);
    if (n_groups > 0 && widest > (width - 100.0) / n_groups - 8) {
        double slanted = (widest < MAX_SLANT_LABEL_PX ? widest : MAX_SLANT_LABEL_PX) * sin(SLANT_RAD);
        if (slanted > 60) height += (int)(slanted - 60);
    }
    Buf b = {0};
    Svg s;
    svg_begin(&s, &b, width, height, title, note);
    if (n_groups <= 0 || total == 0) {
        svg_no_data(&s, empty_why);
        svg_end(&s);
        return figure_write(path, &b, err);
    }
    int n_bars = n_groups * n_series;
    char **labels = xmalloc((size_t)n_bars * sizeof *labels); // (n_groups, n_series) "k/n"
    double widest_label = 0, bar_px = (width - 100.0) / n_bars * 0.8;
    for (int g = 0; g < n_groups; g++)
        for (int j = 0; j < n_series; j++) {
            char label[64];
            snprintf(label, sizeof label, "%lld/%lld", series[j].k[g], series[j].n[g]);
            labels[g * n_series + j] = xstrdup(label);
            if (text_px(label, BAR_LABEL_PX) > widest_label) widest_label = text_px(label, BAR_LABEL_PX);
        }
    int show_labels = widest_label <= (bar_px < MAX_BAR_PX ? bar_px : MAX_BAR_PX) +
                                          4; // as svg_bars decides; else the legend promises in vain
    SvgKey keys[MAX_RATE_SERIES + 1];
    int n_keys = 0;
    for (int j = 0; j < n_series; j++) keys[n_keys++] = (SvgKey){series[j].name, series[j].color, SVG_KEY_BAR};
    keys[n_keys++] = (SvgKey){show_labels ? "95% Wilson CI (label: k/n)" : "95% Wilson CI", INK, SVG_KEY_ERROR_BAR};
    svg_legend(&s, keys, n_keys);
    s.top += BAR_LABEL_ROOM_PX;
    double *value = xmalloc((size_t)n_bars * 3 * sizeof *value); // (3, n_groups, n_series): value, lo, hi
    double *lo = value + n_bars, *hi = lo + n_bars;
    const char *colors[MAX_RATE_SERIES];
    for (int g = 0; g < n_groups; g++)
        for (int j = 0; j < n_series; j++) {
            int i = g * n_series + j;
            Interval w = wilson95(series[j].k[g], series[j].n[g]);
            value[i] = w.est;
            lo[i] = w.lo;
            hi[i] = w.hi;
        }
    for (int j = 0; j < n_series; j++) colors[j] = series[j].color;
    svg_axes_categories(&s, groups, n_groups, 0, 1, x_label, y_label);
    svg_bars(&s, n_groups, n_series, value, lo, hi, colors, show_labels ? (const char *const *)labels : NULL);
    svg_end(&s);
    for (int i = 0; i < n_bars; i++) free(labels[i]);
    free(labels);
    free(value);
    return figure_write(path, &b, err);
}

int fig_rate_by_variant(const char *path, const char *const *variants, const long long *bt_k, const long long *n,
                        int n_variants, const char *note, Err *err) {
    RateSeries rate = {"backtracking rate (completions with \xE2\x89\xA5 1 event)", BLUE, bt_k, n};
    return rate_figure(path, "Backtracking rate by prompt variant", note, "prompt variant", "backtracking rate",
                       variants, n_variants, &rate, 1, "no completions", err);
}

int fig_rate_by_condition(const char *path, const char *const *conditions, const long long *bt_k,
                          const long long *n, int n_conditions, const char *note, Err *err) {
    RateSeries rate = {"backtracking rate (completions with \xE2\x89\xA5 1 event)", BLUE, bt_k, n};
    return rate_figure(path, "Backtracking rate by ablation condition", note, "condition", "backtracking rate",
                       conditions, n_conditions, &rate, 1, "no completions", err);
}

int fig_bt_vs_accuracy(const char *path, const char *const *groups, const long long *correct_bt,
                       const long long *n_bt, const long long *correct_nobt, const long long *n_nobt, int n_groups,
                       const char *note, Err *err) {
    RateSeries acc[2] = {{"completions with backtracking", RED, correct_bt, n_bt},
                         {"completions without backtracking", BLUE, correct_nobt, n_nobt}};
    return rate_figure(path, "Accuracy with vs without backtracking", note, "variant / condition", "accuracy",
                       groups, n_groups, acc, 2, "no completions", err);
}

int fig_formatting_effect(const char *path, const char *const *variants, const long long *reasoning_bt,
                          const long long *reasoning, const long long *n, int n_variants, const char *note, Err *err) {
    RateSeries rates[2] = {{"backtracking rate of completions that reason", BLUE, reasoning_bt, reasoning},
                           {"share of completions that reason", GREEN, reasoning, n}};
    return rate_figure(path, "Effect of output formatting on backtracking", note, "prompt variant",
                       "proportion of completions", variants, n_variants, rates, 2, "no completions", err);
}

int fig_logit_lens(const char *path, int n_layers, const CiSeries *events, int n_events, const CiSeries *controls,
                   int n_controls, const char *note, Err *err) {
    Buf b = {0};
    Svg s;
    int n_points = n_layers + 1;
    svg_begin(&s, &b, 800, FIG_HEIGHT, "Logit lens: onset token at backtracking events vs controls", note);
    if (n_layers < 0 || n_events <= 0 || !events || !any_finite(events->mean, n_points)) {
        svg_no_data(&s, n_events <= 0 ? "no backtracking events" : "no layers");
        svg_end(&s);
        return figure_write(path, &b, err);
    }
    int with_controls = controls && n_controls > 0 && any_finite(controls->mean, n_points);
    char event_name[96], control_name[96];
    snprintf(event_name, sizeof event_name, "backtracking events (n = %d)", n_events);
    snprintf(control_name, sizeof control_name, "position-matched controls (n = %d)", with_controls ? n_controls : 0);
    SvgKey keys[] = {
        {event_name, BLUE, SVG_KEY_LINE}, {control_name, GREY, SVG_KEY_DASHED}, {"95% CI", GREY, SVG_KEY_BAND}};
    svg_legend(&s, keys, 3);
    double lo = INFINITY, hi = -INFINITY;
    min_max(events->mean, n_points, &lo, &hi);
    min_max(events->lo, n_points, &lo, &hi);
    min_max(events->hi, n_points, &lo, &hi);
    if (with_controls) {
        min_max(controls->mean, n_points, &lo, &hi);
        min_max(controls->lo, n_points, &lo, &hi);
        min_max(controls->hi, n_points, &lo, &hi);
    }
    svg_axes(&s, 0, n_layers, lo, hi, "layer (0 = embeddings)", "mean log p(onset token)", 1);
    if (with_controls) svg_line_series(&s, NULL, controls->mean, controls->lo, controls->hi, n_points, GREY, 1, 1);
    svg_line_series(&s, NULL, events->mean, events->lo, events->hi, n_points, BLUE, 0, 1);
    svg_end(&s);
    return figure_write(path, &b, err);
}

// One panel of the ablation figure: events (and controls) as bars per layer, selected layers highlighted.
static void ablation_panel(Svg *s, const char *title, int n_layers, double lo, double hi, const CiSeries *events,
                           const CiSeries *controls, const int *selected, int n_selected, const char *x_label) {
    svg_axes(s, -0.5, n_layers - 0.5, lo, hi, x_label, "drop in log p(onset)", 1);
    for (int i = 0; i < n_selected; i++)
        if (selected[i] >= 0 && selected[i] < n_layers)
            svg_highlight_x(s, selected[i] - 0.5, selected[i] + 0.5, YELLOW);
    svg_text(s, s->left, s->top - 8, LABEL_PX, "start", TEXT_COLOR, "font-weight=\"bold\"", title);
    int n_series = controls ? 2 : 1;
    double *v = xmalloc((size_t)n_layers * 2 * 3 * sizeof *v); // (3, n_layers, n_series): mean, lo, hi
    double *vlo = v + n_layers * n_series, *vhi = vlo + n_layers * n_series;
    for (int l = 0; l < n_layers; l++)
        for (int j = 0; j < n_series; j++) {
            const CiSeries *c = j == 0 ? events : controls;
            int i = l * n_series + j;
            v[i] = c->mean[l];
            vlo[i] = c->lo ? c->lo[l] : NAN;
            vhi[i] = c->hi ? c->hi[l] : NAN;
        }
    const char *colors[2] = {BLUE, LIGHT_BLUE};
    svg_bars(s, n_layers, n_series, v, vlo, vhi, colors, NULL);
    free(v);
}

int fig_ablation_importance(const char *path, int n_layers, const CiSeries *attn, const CiSeries *mlp, int n_events,
                            const CiSeries *control_attn, const CiSeries *control_mlp, int n_controls,
                            const int *selected_attn, int n_selected_attn, const int *selected_mlp,
                            int n_selected_mlp, const char *note, Err *err) {
    Buf b = {0};
    Svg s;
    svg_begin(&s, &b, 800, ABLATION_HEIGHT, "Ablation importance by layer: drop in log p(onset token)", note);
    if (n_layers <= 0 || n_events <= 0 || !attn || !mlp ||
        (!any_finite(attn->mean, n_layers) && !any_finite(mlp->mean, n_layers))) {
        svg_no_data(&s, n_events <= 0 ? "no backtracking events" : "no layers");
        svg_end(&s);
        return figure_write(path, &b, err);
    }
    int with_controls = n_controls > 0 && control_attn && control_mlp;
    char event_name[96], control_name[96];
    snprintf(event_name, sizeof event_name, "backtracking events (n = %d)", n_events);
    snprintf(control_name, sizeof control_name, "position-matched controls (n = %d)", with_controls ? n_controls : 0);
    SvgKey keys[] = {{event_name, BLUE, SVG_KEY_BAR}, {control_name, LIGHT_BLUE, SVG_KEY_BAR},
                     {"selected for targeted ablation", YELLOW, SVG_KEY_BAND}, {"95% CI", INK, SVG_KEY_ERROR_BAR}};
    svg_legend(&s, keys, 4);
    double lo = 0, hi = 0; // zero stays in view: "no effect" is the reference; both panels share the scale
    const CiSeries *all[] = {attn, mlp, with_controls ? control_attn : NULL, with_controls ? control_mlp : NULL};
    for (int i = 0; i < 4; i++)
        if (all[i]) {
            min_max(all[i]->mean, n_layers, &lo, &hi);
            min_max(all[i]->lo, n_layers, &lo, &hi);
            min_max(all[i]->hi, n_layers, &lo, &hi);
        }
    // Each panel has its title above it; between them the upper panel's tick labels.
    double title_px = 24, gap = 36 + title_px, bottom = s.bottom;
    s.top += title_px;
    double panel = (bottom - s.top - gap) / 2;
    s.bottom = s.top + panel;
    ablation_panel(&s, "attention output ablated", n_layers, lo, hi, attn, with_controls ? control_attn : NULL,
                   selected_attn, n_selected_attn, NULL);
    s.top = s.bottom + gap;
    s.bottom = bottom;
    ablation_panel(&s, "MLP output ablated", n_layers, lo, hi, mlp, with_controls ? control_mlp : NULL, selected_mlp,
                   n_selected_mlp, "layer");
    svg_end(&s);
    return figure_write(path, &b, err);
}

// ----------------------------------------------------------------------------
// Heatmaps: heads of every layer at once.

#define HEAT_POSITIVE "#b2182b" // a drop: the component carries the onset (ColorBrewer RdBu ends)
#define HEAT_NEGATIVE "#2166ac" // a rise: ablating it makes the onset more likely
#define HEAT_MISSING "#dddddd"
#define HEAT_SCALE_STEPS 20     // bands of the colour scale
enum { HEAT_SCALE_PX = 110, HEAT_ROW_LABEL_PX = 14, HEAT_COL_LABEL_PX = 26 }; // scale's margin; least label spacing
enum { HEAT_CELL_TEXT_W_PX = 38, HEAT_CELL_TEXT_H_PX = 16 };                      // a cell prints its value from here

// White mixed towards the end colour of v's sign by |v| / limit (clamped): "#rrggbb".
static void heat_color(double v, double limit, char out[8]) {
    double t = v / limit;
    t = t > 1 ? 1 : t < -1 ? -1 : t;
    const char *end = t >= 0 ? HEAT_POSITIVE : HEAT_NEGATIVE;
    int rgb[3];
    for (int i = 0; i < 3; i++) {
        unsigned c;
        sscanf(end + 1 + 2 * i, "%2x", &c);
        rgb[i] = (int)lround(255 + fabs(t) * ((double)c - 255));
    }
    snprintf(out, 8, "#%02x%02x%02x", rgb[0], rgb[1], rgb[2]);
}

// Every step-th label of n that fit px apart in span px.
static int label_step(int n, double span_px, double min_px) {
    int step = 1;
    while (step < n && span_px / n * step < min_px) step++;
    return step;
}

void svg_heatmap(Svg *s, int n_rows, int n_cols, const double *value, double limit, const unsigned char *marked,
                 const unsigned char *ringed, const char *row_label, const char *col_label, const char *scale_label) {
    if (n_rows <= 0 || n_cols <= 0) return;
    if (!(limit > 0) || !isfinite(limit)) limit = 1;
    Buf *o = s->out;
    s->left = 20 + LABEL_PX / 2.0 + 12 + text_px("000", TICK_PX) + TICK_LEN_PX;
    s->right = s->width - MARGIN_PX - HEAT_SCALE_PX;
    s->x_min = -0.5, s->x_max = n_cols - 0.5, s->y_min = -0.5, s->y_max = n_rows - 0.5;
    double cw = (s->right - s->left) / n_cols, ch = (s->bottom - s->top) / n_rows;
    for (int r = 0; r < n_rows; r++)
        for (int col = 0; col < n_cols; col++) {
            double v = value[(size_t)r * n_cols + col], x = s->left + col * cw, y = s->top + r * ch;
            char fill[8] = HEAT_MISSING;
            if (!isnan(v)) heat_color(v, limit, fill);
            buf_printf(o, "<rect class=\"cell\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\" "
                          "stroke=\"#ffffff\" stroke-width=\"0.5\"/>\n", x, y, cw, ch, fill);
            if (!isnan(v) && cw >= HEAT_CELL_TEXT_W_PX && ch >= HEAT_CELL_TEXT_H_PX) {
                char text[32];
                snprintf(text, sizeof text, fabs(v) >= 1000 ? "%.0f" : fabs(v) >= 10 ? "%.1f" : "%.2f", v);
                if (strcmp(text, "-0.00") == 0) snprintf(text, sizeof text, "0.00");
                svg_text(s, x + cw / 2, y + ch / 2 + 4, ch >= 20 ? 11 : 9, "middle",
                         fabs(v) > 0.6 * limit ? "#ffffff" : TEXT_COLOR, "class=\"celltext\"", text);
            }
            if (ringed && ringed[(size_t)r * n_cols + col]) { // top right corner, white inside: seen on any colour
                double rad = (cw < ch ? cw : ch) * 0.15;
                rad = rad > 5 ? 5 : rad < 2 ? 2 : rad;
                buf_printf(o, "<circle class=\"mark\" cx=\"%.1f\" cy=\"%.1f\" r=\"%.1f\" fill=\"#ffffff\" "
                              "stroke=\"%s\" stroke-width=\"1.5\"/>\n", x + cw - rad - 4, y + rad + 4, rad, INK);
            }
        }
    for (int r = 0; marked && r < n_rows; r++) // outlines last, above every cell
        for (int col = 0; col < n_cols; col++)
            if (marked[(size_t)r * n_cols + col])
                buf_printf(o, "<rect class=\"selected\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" "
                              "fill=\"none\" stroke=\"%s\" stroke-width=\"3\"/>\n",
                           s->left + col * cw + 1.5, s->top + r * ch + 1.5, cw - 3, ch - 3, INK);
    // Row and column labels, every step-th where they would crowd, and the axis titles.
    char label[32];
    for (int r = 0, step = label_step(n_rows, s->bottom - s->top, HEAT_ROW_LABEL_PX); r < n_rows; r += step) {
        snprintf(label, sizeof label, "%d", r);
        svg_text(s, s->left - TICK_LEN_PX, s->top + (r + 0.5) * ch + 4, TICK_PX, "end", TEXT_COLOR, NULL, label);
    }
    for (int col = 0, step = label_step(n_cols, s->right - s->left, HEAT_COL_LABEL_PX); col < n_cols; col += step) {
        snprintf(label, sizeof label, "%d", col);
        svg_text(s, s->left + (col + 0.5) * cw, s->bottom + TICK_LEN_PX + 14, TICK_PX, "middle", TEXT_COLOR, NULL,
                 label);
    }
    draw_x_title(s, col_label);
    if (row_label) {
        double cy = (s->top + s->bottom) / 2, cx = 20 + LABEL_PX / 2.0;
        char rotate[64];
        snprintf(rotate, sizeof rotate, "transform=\"rotate(-90 %.1f %.1f)\"", cx, cy);
        svg_text(s, cx, cy, LABEL_PX, "middle", TEXT_COLOR, rotate, row_label);
    }
    // The colour scale: +limit at the top, -limit at the bottom.
    double sx0 = s->right + 20, band = (s->bottom - s->top) / HEAT_SCALE_STEPS;
    for (int i = 0; i < HEAT_SCALE_STEPS; i++) {
        char fill[8];
        heat_color(limit * (1 - (2 * i + 1.0) / HEAT_SCALE_STEPS), limit, fill);
        buf_printf(o, "<rect class=\"scale\" x=\"%.1f\" y=\"%.1f\" width=\"16\" height=\"%.1f\" fill=\"%s\"/>\n", sx0,
                   s->top + i * band, band + 0.5, fill);
    }
    buf_printf(o, "<rect x=\"%.1f\" y=\"%.1f\" width=\"16\" height=\"%.1f\" fill=\"none\" stroke=\"%s\" "
                  "stroke-width=\"1\"/>\n", sx0, s->top, s->bottom - s->top, AXIS_COLOR);
    const double ticks[3] = {limit, 0, -limit};
    for (int i = 0; i < 3; i++) {
        snprintf(label, sizeof label, "%.3g", ticks[i] == 0 ? 0.0 : ticks[i]);
        double py = s->top + (s->bottom - s->top) * i / 2.0;
        svg_text(s, sx0 + 22, py + 4, TICK_PX, "start", TEXT_COLOR, NULL, label);
    }
    if (scale_label) {
        double cx = s->width - MARGIN_PX - LABEL_PX / 2.0, cy = (s->top + s->bottom) / 2;
        char rotate[64], fitted[256];
        text_fit(scale_label, s->bottom - s->top, LABEL_PX, fitted, sizeof fitted);
        snprintf(rotate, sizeof rotate, "transform=\"rotate(-90 %.1f %.1f)\"", cx, cy);
        svg_text(s, cx, cy, LABEL_PX, "middle", TEXT_COLOR, rotate, fitted);
    }
}

int fig_head_importance(const char *path, int n_layers, int n_heads, const double *effect, const unsigned char *exact,
                        const unsigned char *selected, int n_events, const char *note, Err *err) {
    int width = 300 + 44 * (n_heads > 0 ? n_heads : 0), height = 240 + 22 * (n_layers > 0 ? n_layers : 0);
    width = width < FIG_MIN_WIDTH ? FIG_MIN_WIDTH : width > FIG_MAX_WIDTH ? FIG_MAX_WIDTH : width;
    height = height < FIG_HEIGHT ? FIG_HEIGHT : height > 2 * ABLATION_HEIGHT ? 2 * ABLATION_HEIGHT : height;
    Buf b = {0};
    Svg s;
    svg_begin(&s, &b, width, height, "Head importance by layer: drop in log p(onset token)", note);
    if (n_layers <= 0 || n_heads <= 0 || n_events <= 0 || !effect || !any_finite(effect, n_layers * n_heads)) {
        svg_no_data(&s, n_events <= 0 ? "no backtracking events" : "no heads scanned");
        svg_end(&s);
        return figure_write(path, &b, err);
    }
    char event_name[96];
    snprintf(event_name, sizeof event_name, "mean over %d backtracking events", n_events);
    SvgKey keys[] = {{event_name, HEAT_POSITIVE, SVG_KEY_BAR},
                     {"selected for targeted ablation", INK, SVG_KEY_OUTLINE},
                     {"ablated exactly (others: attribution estimate)", INK, SVG_KEY_RING}};
    svg_legend(&s, keys, 3);
    double limit = 0;
    for (int i = 0; i < n_layers * n_heads; i++)
        if (isfinite(effect[i]) && fabs(effect[i]) > limit) limit = fabs(effect[i]);
    svg_heatmap(&s, n_layers, n_heads, effect, limit, selected, exact, "layer", "head", "drop in log p(onset)");
    svg_end(&s);
    return figure_write(path, &b, err);
}

// Steering figure: backtracking rate against the steering alpha, the direction as a solid line and
// the random control dashed (each with a Wilson band, the baseline at alpha 0 in both), and
// project_out as a ring with its interval at alpha 0; one colour per steered variant.

static const char *const steer_colors[] = {BLUE, RED, GREEN, YELLOW, GREY};

int fig_rate_by_steering(const char *path, const SteerSeries *series, int n_series, const char *note, Err *err) {
    Buf b = {0};
    Svg s;
    svg_begin(&s, &b, 800, FIG_HEIGHT, "Backtracking rate by steering strength", note);
    long long total = 0;
    double x_lo = 0, x_hi = 0;
    for (int i = 0; i < n_series; i++)
        for (int j = 0; j < series[i].n_points; j++) {
            total += series[i].n[j] > 0 ? series[i].n[j] : 0;
            min_max(&series[i].alpha[j], 1, &x_lo, &x_hi);
        }
    if (n_series <= 0 || total == 0) {
        svg_no_data(&s, "no steered generations");
        svg_end(&s);
        return figure_write(path, &b, err);
    }
    SvgKey *keys = xmalloc((size_t)(n_series + 1) * sizeof *keys);
    for (int i = 0; i < n_series; i++)
        keys[i] = (SvgKey){series[i].name, steer_colors[series[i].color % 5],
                           series[i].kind == STEER_PROJECT_OUT ? SVG_KEY_RING
                           : series[i].kind == STEER_RANDOM    ? SVG_KEY_DASHED
                                                               : SVG_KEY_LINE};
    keys[n_series] = (SvgKey){"95% Wilson CI", GREY, SVG_KEY_BAND};
    svg_legend(&s, keys, n_series + 1);
    svg_axes(&s, x_lo - 0.1 * (x_hi - x_lo + 1e-9), x_hi + 0.1 * (x_hi - x_lo + 1e-9), 0, 1,
             "steering alpha (units of the layer's mean residual norm)", "backtracking rate", 0);
    for (int i = 0; i < n_series; i++) {
        const SteerSeries *q = &series[i];
        double *v = xmalloc((size_t)(3 * q->n_points + 1) * sizeof *v), *lo = v + q->n_points, *hi = lo + q->n_points;
        for (int j = 0; j < q->n_points; j++) {
            Interval w = wilson95(q->k[j], q->n[j]);
            v[j] = w.est, lo[j] = w.lo, hi[j] = w.hi;
        }
        const char *color = steer_colors[q->color % 5];
        if (q->kind == STEER_PROJECT_OUT) {
            for (int j = 0; j < q->n_points; j++) svg_error_bar(&s, q->alpha[j], lo[j], hi[j], 10);
            svg_scatter(&s, q->alpha, v, q->n_points, color, 1);
        } else {
            svg_line_series(&s, q->alpha, v, lo, hi, q->n_points, color, q->kind == STEER_RANDOM, 1);
        }
        free(v);
    }
    free(keys);
    svg_end(&s);
    return figure_write(path, &b, err);
}

// ----------------------------------------------------------------------------
// The report: run metadata, the tables, the six figures and a verdict on each
// hypothesis from the pre-registered criteria in [hypotheses].

// Reads a run artifact if the stage that writes it has run; 0 when absent.
static int read_table(const Run *run, const char *rel, Csv *t, Err *err) {
    char path[1200];
    run_path(run, path, sizeof path, rel);
    if (!path_exists(path)) return 0;
    if (csv_read(path, t, err)) return -1;
    return 1;
}

static const char *cell(const Csv *t, int row, const char *col) {
    int c = csv_col(t, col);
    return c >= 0 && row >= 0 && row < t->n_rows ? csv_cell(t, row, c) : "";
}

static double cell_num(const Csv *t, int row, const char *col) {
    const char *s = cell(t, row, col);
    char *end;
    double v = strtod(s, &end);
    return *s && *end == 0 ? v : NAN;
}

static int find_row(const Csv *t, const char *col, const char *value) {
    for (int r = 0; r < t->n_rows; r++)
        if (strcmp(cell(t, r, col), value) == 0) return r;
    return -1;
}

// "0.42 [0.31, 0.54]" or "n/a".
static void fmt_ci(Buf *b, double est, double lo, double hi) {
    if (est != est) {
        buf_puts(b, "n/a");
        return;
    }
    buf_printf(b, "%.3g", est);
    if (lo == lo && hi == hi) buf_printf(b, " [%.3g, %.3g]", lo, hi);
}

static void fmt_p(Buf *b, double p) {
    if (p != p) buf_puts(b, "n/a");
    else if (p < 1e-4) buf_printf(b, "%.1e", p);
    else buf_printf(b, "%.4f", p);
}

// The value of "key" in meta.json (strings only), or fallback.
static void meta_get(const Json *j, const char *key, char *out, size_t n, const char *fallback) {
    char *v = j && j->n_tok ? json_strdup(j, json_key(j, 0, key)) : NULL;
    snprintf(out, n, "%s", v ? v : fallback);
    free(v);
}

// Path of `to` as seen from directory `from_dir` (both relative to the working directory).
static void relative_to(const char *from_dir, const char *to, char *out, size_t n) {
    if (to[0] == '/' || from_dir[0] == '/') {
        snprintf(out, n, "%s", to);
        return;
    }
    out[0] = 0;
    int depth = 0;
    for (const char *p = from_dir; *p;) {
        const char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        if (len && !(len == 1 && p[0] == '.')) depth++;
        p += len + (slash != NULL);
    }
    for (int i = 0; i < depth; i++) strncat(out, "../", n - strlen(out) - 1);
    strncat(out, to, n - strlen(out) - 1);
}

// ----------------------------------------------------------------------------
// The six figures, drawn from what the stages wrote into the run (so make-report can
// redraw them without recomputing anything); a stage that has not run gives a figure
// that says so.

// Draws one figure into runs/<id>/figures/ and copies it to [report] figures_dir.
typedef struct {
    const Config *c;
    const Run *run;
    char path[1200]; // of the figure being drawn, in the run
    const char *name;
} FigureOut;

static const char *figure_start(FigureOut *f, const char *name) {
    f->name = name;
    run_path(f->run, f->path, sizeof f->path, "figures/");
    snprintf(f->path + strlen(f->path), sizeof f->path - strlen(f->path), "%s", name);
    return f->path;
}

static int figure_publish(const FigureOut *f, Err *err) {
    char to[1200];
    snprintf(to, sizeof to, "%s/%s", f->c->figures_dir, f->name);
    return copy_file_atomic(f->path, to, err);
}

// Baseline rate per configured variant, and accuracy with vs without backtracking per
// variant / condition: both from summary_metrics.json (detect-events).
static int draw_summary_figures(FigureOut *f, Err *err) {
    char path[1200], note[256];
    run_path(f->run, path, sizeof path, ART_SUMMARY);
    Buf text = {0};
    Json j = {0};
    int have = path_exists(path), rc = 0, groups = -1;
    if (have && (read_file(path, &text, err) || json_parse(&j, text.data, text.len, path, err))) rc = -1;
    if (rc == 0 && have && ((groups = json_key(&j, 0, "groups")) < 0 || j.tok[groups].type != JSON_ARRAY))
        rc = err_input(err, "%s: no \"groups\" array (run detect-events again)", path);
    int n = groups >= 0 ? j.tok[groups].size : 0, n_variants = 0;
    const char **variants = xcalloc((size_t)n + 1, sizeof *variants), **labels = xcalloc((size_t)n + 1, sizeof *labels);
    long long *v_k = xcalloc((size_t)n + 1, sizeof *v_k), *v_n = xcalloc((size_t)n + 1, sizeof *v_n); // (n) per variant
    long long *c_bt = xcalloc((size_t)n + 1, sizeof *c_bt),
              *n_bt = xcalloc((size_t)n + 1, sizeof *n_bt); // (n) per group
    long long *c_nobt = xcalloc((size_t)n + 1, sizeof *c_nobt), *n_nobt = xcalloc((size_t)n + 1, sizeof *n_nobt);
    for (int v = 0; rc == 0 && groups >= 0 && v < f->c->n_variants; v++) // baseline rate per configured variant
        JSON_FOR_ARRAY(&j, groups, g, t) {
            long long k, total;
            if (json_eq(&j, json_key(&j, t, "variant"), f->c->variants[v]) &&
                json_eq(&j, json_key(&j, t, "condition"), "baseline") &&
                json_int(&j, json_key(&j, t, "with_backtracking"), &k) == 0 &&
                json_int(&j, json_key(&j, t, "completions"), &total) == 0) {
                variants[n_variants] = f->c->variants[v], v_k[n_variants] = k, v_n[n_variants++] = total;
            }
            (void)g;
        }
    if (rc == 0 && groups >= 0) { // no summary (detect-events has not run): no groups to walk
        JSON_FOR_ARRAY(&j, groups, g, t) { // accuracy per variant / condition, in the order the groups were read
            long long total, with_bt, correct, correct_bt;
            char *variant = json_strdup(&j, json_key(&j, t, "variant")),
                 *condition = json_strdup(&j, json_key(&j, t, "condition"));
            if (rc == 0 && (!variant || !condition || json_int(&j, json_key(&j, t, "completions"), &total) ||
                            json_int(&j, json_key(&j, t, "with_backtracking"), &with_bt) ||
                            json_int(&j, json_key(&j, t, "correct"), &correct) ||
                            json_int(&j, json_key(&j, t, "correct_with_backtracking"), &correct_bt)))
                rc = err_input(err, "%s:%d: group %d lacks a count (run detect-events again)", path, json_line(&j, t),
                               g);
            if (rc == 0) {
                Buf label = {0};
                buf_printf(&label, "%s / %s", variant, condition);
                labels[g] = label.data;
                c_bt[g] = correct_bt, n_bt[g] = with_bt, c_nobt[g] = correct - correct_bt, n_nobt[g] = total - with_bt;
            }
            free(variant);
            free(condition);
        }
    }
    if (!have) snprintf(note, sizeof note, "run %s; detect-events has not run", f->run->id);
    else snprintf(note, sizeof note, "run %s; baseline completions; error bars: Wilson 95%% CI", f->run->id);
    if (rc == 0)
        rc = fig_rate_by_variant(figure_start(f, FIG_RATE_BY_VARIANT), variants, v_k, v_n, n_variants, note, err);
    if (rc == 0) rc = figure_publish(f, err);
    if (have) snprintf(note, sizeof note, "run %s; completions with >= 1 event vs none; Wilson 95%% CI", f->run->id);
    if (rc == 0)
        rc = fig_bt_vs_accuracy(figure_start(f, FIG_BT_VS_ACCURACY), labels, c_bt, n_bt, c_nobt, n_nobt, have ? n : 0,
                                note, err);
    if (rc == 0) rc = figure_publish(f, err);
    for (int g = 0; g < n; g++) free((char *)labels[g]);
    free(labels), free(variants), free(v_k), free(v_n), free(c_bt), free(n_bt), free(c_nobt), free(n_nobt);
    json_free(&j);
    buf_free(&text);
    return rc;
}

// Logit lens: mean log p(onset) per layer with bootstrap 95% CIs, events vs controls.
static int draw_lens_figure(FigureOut *f, const Csv *lens, int have, Err *err) {
    int n_layers = 0, rows = have ? lens->n_rows : 0;
    for (int r = 0; r < rows; r++)
        if ((int)cell_num(lens, r, "layer") > n_layers) n_layers = (int)cell_num(lens, r, "layer");
    double *series = xmalloc((size_t)6 * (n_layers + 1) * sizeof *series),
           *vals = xmalloc((size_t)(rows + 1) * sizeof *vals);
    CiSeries cs[2];
    int counts[2] = {0, 0};
    for (int ctl = 0; ctl < 2; ctl++) {
        double *mean = series + (size_t)(3 * ctl) * (n_layers + 1), *lo = mean + n_layers + 1, *hi = lo + n_layers + 1;
        for (int l = 0; l <= n_layers; l++) {
            int nv = 0;
            for (int r = 0; r < rows; r++)
                if ((int)cell_num(lens, r, "layer") == l && (strcmp(cell(lens, r, "kind"), "control") == 0) == ctl)
                    vals[nv++] = cell_num(lens, r, "logprob");
            Interval ci = bootstrap_mean95(vals, nv, STAT_RESAMPLES,
                                           seed_mix(seed_mix((uint64_t)f->c->seed, 0x1E45), (uint64_t)(2 * l + ctl)));
            mean[l] = ci.est, lo[l] = ci.lo, hi[l] = ci.hi;
            counts[ctl] = nv;
        }
        cs[ctl] = (CiSeries){mean, lo, hi};
    }
    char note[256];
    if (have)
        snprintf(note, sizeof note, "%s, run %s; log p of the onset token at pred_pos, per layer",
                 cell(lens, 0, "variant"), f->run->id);
    else snprintf(note, sizeof note, "run %s; logit-lens has not run", f->run->id);
    int rc = fig_logit_lens(figure_start(f, FIG_LOGIT_LENS), n_layers, &cs[0], counts[0], &cs[1], counts[1], note, err);
    free(series);
    free(vals);
    return rc ? rc : figure_publish(f, err);
}

// Ablation scan: mean drop per layer, attention and MLP, events and controls; selected layers ringed.
static int draw_scan_figure(FigureOut *f, const Csv *scan, int have, Err *err) {
    int n_layers = 0, rows = have ? scan->n_rows : 0;
    for (int r = 0; r < rows; r++)
        if ((int)cell_num(scan, r, "layer") + 1 > n_layers) n_layers = (int)cell_num(scan, r, "layer") + 1;
    double *series = xmalloc((size_t)(12 * n_layers + 1) * sizeof *series);
    int *selected = xmalloc((size_t)(2 * n_layers + 1) * sizeof *selected), n_selected[2] = {0, 0};
    CiSeries cs[4]; // attn events, mlp events, attn controls, mlp controls
    static const char *const columns[2][3] = {{"mean_drop_events", "ci_lo_events", "ci_hi_events"},
                                              {"mean_drop_controls", "ci_lo_controls", "ci_hi_controls"}};
    for (int k = 0; k < 12 * n_layers; k++) series[k] = NAN;
    for (int r = 0; r < rows; r++) { // series 2 ctl + comp, parts mean, lo, hi: series[((3 s) + part) n_layers + l]
        int l = (int)cell_num(scan, r, "layer"), comp = strcmp(cell(scan, r, "component"), "mlp") == 0;
        if (l < 0 || l >= n_layers) continue;
        for (int ctl = 0; ctl < 2; ctl++)
            for (int part = 0; part < 3; part++)
                series[(size_t)(3 * (2 * ctl + comp) + part) * n_layers + l] = cell_num(scan, r, columns[ctl][part]);
    }
    for (int rank = 1; rank <= n_layers; rank++) // the selected layers, best first
        for (int r = 0; r < rows; r++) {
            int comp = strcmp(cell(scan, r, "component"), "mlp") == 0;
            if ((int)cell_num(scan, r, "rank") == rank && strcmp(cell(scan, r, "selected"), "1") == 0 &&
                n_selected[comp] < n_layers)
                selected[comp * n_layers + n_selected[comp]++] = (int)cell_num(scan, r, "layer");
        }
    for (int k = 0; k < 4; k++) {
        const double *mean = series + (size_t)(3 * k) * n_layers;
        cs[k] = (CiSeries){mean, mean + n_layers, mean + 2 * n_layers};
    }
    char note[256];
    if (have && rows)
        snprintf(note, sizeof note, "%s, run %s; %s ablation, scope %s; selected layers ringed",
                 cell(scan, 0, "variant"), f->run->id, cell(scan, 0, "kind"), cell(scan, 0, "scope"));
    else snprintf(note, sizeof note, "run %s; ablation-scan has not run", f->run->id);
    int n_events = rows ? (int)cell_num(scan, 0, "n_events") : 0,
        n_controls = rows ? (int)cell_num(scan, 0, "n_controls") : 0;
    int rc =
        fig_ablation_importance(figure_start(f, FIG_ABLATION), n_layers, &cs[0], &cs[1], n_events, &cs[2], &cs[3],
                                n_controls, selected, n_selected[0], selected + n_layers, n_selected[1], note, err);
    free(series);
    free(selected);
    return rc ? rc : figure_publish(f, err);
}

// Rates per condition (compare-conditions) and per format (formatting-sweep).
static int draw_rate_figures(FigureOut *f, const Csv *conditions, int have_conditions, const Csv *formatting,
                             int have_formatting, Err *err) {
    int n = have_conditions ? conditions->n_rows : 0, nv = have_formatting ? formatting->n_rows : 0;
    const char **names = xcalloc((size_t)(n + nv + 1), sizeof *names);
    long long *k = xcalloc((size_t)(n + nv + 1), sizeof *k), *total = xcalloc((size_t)(n + nv + 1), sizeof *total);
    long long *correct = xcalloc((size_t)(nv + 1), sizeof *correct);
    char note[256];
    for (int r = 0; r < n; r++) {
        names[r] = cell(conditions, r, "condition");
        k[r] = (long long)cell_num(conditions, r, "with_backtracking");
        total[r] = (long long)cell_num(conditions, r, "completions");
    }
    int rt = have_conditions ? find_row(conditions, "condition", "targeted_ablation") : -1;
    if (rt >= 0)
        snprintf(note, sizeof note, "%s, run %s; one-sided paired McNemar p, targeted vs baseline %.3g; Wilson 95%% CI",
                 cell(conditions, rt, "variant"), f->run->id, cell_num(conditions, rt, "p_vs_baseline"));
    else snprintf(note, sizeof note, "run %s; compare-conditions has not run", f->run->id);
    int rc = fig_rate_by_condition(figure_start(f, FIG_RATE_BY_CONDITION), names, k, total, n, note, err);
    if (rc == 0) rc = figure_publish(f, err);
    for (int v = 0; v < nv; v++) { // correct holds the reasoning completions here
        names[v] = cell(formatting, v, "variant");
        k[v] = (long long)cell_num(formatting, v, "reasoning_with_backtracking");
        correct[v] = (long long)cell_num(formatting, v, "reasoning");
        total[v] = (long long)cell_num(formatting, v, "completions");
    }
    double ratio = nv ? cell_num(formatting, 0, "h2_ratio") : NAN;
    if (nv && isfinite(ratio))
        snprintf(note, sizeof note,
                 "run %s; per opportunity, <think> open vs not: ratio %.3g, p = %.3g; Wilson 95%% CI", f->run->id,
                 ratio, cell_num(formatting, 0, "h2_p"));
    else if (nv && isinf(ratio))
        snprintf(note, sizeof note,
                 "run %s; per opportunity, no backtracking without <think> open (p = %.3g); Wilson 95%% CI", f->run->id,
                 cell_num(formatting, 0, "h2_p"));
    else if (nv)
        snprintf(note, sizeof note,
                 "run %s; no completions that reason on one side of <think> open vs not; Wilson 95%% CI", f->run->id);
    else snprintf(note, sizeof note, "run %s; formatting-sweep has not run", f->run->id);
    if (rc == 0) rc = fig_formatting_effect(figure_start(f, FIG_FORMATTING), names, k, correct, total, nv, note, err);
    if (rc == 0) rc = figure_publish(f, err);
    free(names), free(k), free(total), free(correct);
    return rc;
}

// Head importance (ablation-scan with heads): the layers x heads heatmap of the mean drop on events,
// exact where the head was ablated exactly, else the attribution estimate; selected heads outlined.
static int draw_head_figure(FigureOut *f, const Csv *heads, int have, Err *err) {
    int n_layers = 0, n_heads = 0, rows = have ? heads->n_rows : 0, n_estimated = 0;
    for (int r = 0; r < rows; r++) {
        if ((int)cell_num(heads, r, "layer") + 1 > n_layers) n_layers = (int)cell_num(heads, r, "layer") + 1;
        if ((int)cell_num(heads, r, "head") + 1 > n_heads) n_heads = (int)cell_num(heads, r, "head") + 1;
    }
    size_t n_cells = (size_t)n_layers * n_heads;
    double *effect = xmalloc((n_cells + 1) * sizeof *effect);
    unsigned char *exact = xcalloc(n_cells + 1, 1), *selected = xcalloc(n_cells + 1, 1);
    for (size_t i = 0; i < n_cells; i++) effect[i] = NAN;
    for (int r = 0; r < rows; r++) {
        int l = (int)cell_num(heads, r, "layer"), h = (int)cell_num(heads, r, "head");
        if (l < 0 || h < 0) continue;
        size_t i = (size_t)l * n_heads + h;
        effect[i] = cell_num(heads, r, "mean_drop_events");
        exact[i] = strcmp(cell(heads, r, "method"), "exact") == 0;
        selected[i] = strcmp(cell(heads, r, "selected"), "1") == 0;
        n_estimated += !exact[i];
    }
    char note[256];
    if (have && rows)
        snprintf(note, sizeof note, "%s, run %s; %s ablation, scope %s; %s", cell(heads, 0, "variant"), f->run->id,
                 cell(heads, 0, "kind"), cell(heads, 0, "scope"), n_estimated ? "ringed: exact" : "every head exact");
    else snprintf(note, sizeof note, "run %s; no head scan (method exact, top_k_heads 0)", f->run->id);
    int n_events = rows ? (int)cell_num(heads, 0, "n_events") : 0;
    int rc = fig_head_importance(figure_start(f, FIG_HEAD_IMPORTANCE), n_layers, n_heads, effect, exact, selected,
                                 n_events, note, err);
    free(effect);
    free(exact);
    free(selected);
    return rc ? rc : figure_publish(f, err);
}

// ----------------------------------------------------------------------------
// The event browser: [report] events_path (reports/events.html), one self-contained page
// (inline CSS and SVG, a few lines of script for the filters, nothing fetched) that shows
// each event in its text with the trigger marked, the final layer's p(onset) at pred_pos, a
// logit-lens heatmap of the positions up to pred_pos, and its matched control beside it.
// The page is well-formed XML as well as HTML, so a strict parser can check it.

#define PAGE_CONTEXT_BEFORE 360 // bytes of completion shown before the trigger (or the control's token)
#define PAGE_CONTEXT_AFTER 160  // and after it
#define HEAT_CELL_W 26          // heatmap cell, px
#define HEAT_CELL_H 9
#define HEAT_FLOOR (-20.0)      // log p at or below this takes the palest colour
#define HEAT_MAX_OFFSETS 16     // positions a heatmap shows at most

// Completion text as HTML/XML character data: & < > " ' escaped, newlines kept, any other
// control byte, invalid UTF-8 or non-character shown as U+FFFD.
static void html_text(Buf *b, const char *text, size_t n) {
    const unsigned char *p = (const unsigned char *)text;
    for (size_t i = 0; i < n;) {
        unsigned char ch = p[i];
        uint32_t cp = 0;
        int len = utf8_char(p + i, n - i, &cp);
        if (ch == '&') buf_puts(b, "&amp;");
        else if (ch == '<') buf_puts(b, "&lt;");
        else if (ch == '>') buf_puts(b, "&gt;");
        else if (ch == '"') buf_puts(b, "&quot;");
        else if (ch == '\'') buf_puts(b, "&#39;");
        else if (ch == '\n' || ch == '\t') buf_putc(b, (char)ch);
        else if (len == 0 || ch < 0x20 || ch == 0x7F || cp == 0xFFFE || cp == 0xFFFF) buf_puts(b, "\xEF\xBF\xBD");
        else {
            buf_append(b, p + i, (size_t)len);
            i += (size_t)len;
            continue;
        }
        i += len > 0 ? (size_t)len : 1;
    }
}

static void html_str(Buf *b, const char *s) { html_text(b, s, strlen(s)); }

// One generation file of the run, loaded once.
typedef struct {
    char *variant, *condition;
    GenRecord *recs;
    int n;
} PageGenerations;

typedef struct {
    const Config *c;
    const Run *run;
    Tokenizer *tok;
    PageGenerations *files; // (n_files)
    int n_files;
    Csv events, lens, window;
    int have_lens, have_window, n_layers;
} Page;

static const GenRecord *page_record(Page *pg, const char *variant, const char *condition, const char *problem_id,
                                    int sample, Err *err) {
    PageGenerations *g = NULL;
    for (int i = 0; i < pg->n_files && !g; i++)
        if (strcmp(pg->files[i].variant, variant) == 0 && strcmp(pg->files[i].condition, condition) == 0)
            g = &pg->files[i];
    if (!g) {
        char path[1200];
        run_generation_path(pg->run, path, sizeof path, variant, condition);
        pg->files = xrealloc(pg->files, (size_t)(pg->n_files + 1) * sizeof *pg->files);
        g = &pg->files[pg->n_files++];
        *g = (PageGenerations){xstrdup(variant), xstrdup(condition), NULL, 0};
        if (generations_read(path, &g->recs, &g->n, err)) return NULL;
    }
    for (int r = 0; r < g->n; r++)
        if (g->recs[r].sample == sample && strcmp(g->recs[r].problem_id, problem_id) == 0) return &g->recs[r];
    err_input(err, "%s: problem %s sample %d of %s/%s is not among the generations (run detect-events again)",
              ART_EVENTS, problem_id, sample, variant, condition);
    return NULL;
}

// log p(onset) of (kind, event_id) in the logit lens at pred_pos, final layer; NaN when not read.
static double page_final_logprob(const Page *pg, const char *kind, const char *event_id) {
    for (int r = 0; pg->have_lens && r < pg->lens.n_rows; r++)
        if ((int)cell_num(&pg->lens, r, "layer") == pg->n_layers &&
            strcmp(cell(&pg->lens, r, "event_id"), event_id) == 0 && strcmp(cell(&pg->lens, r, "kind"), kind) == 0)
            return cell_num(&pg->lens, r, "logprob");
    return NAN;
}

// The completion text around byte `at`, with [mark_start, mark_end) marked as class mark_class.
static void page_text(Buf *b, const Page *pg, const GenRecord *rec, int k, int char_offset, int mark_len,
                      const char *mark_class) {
    Buf text = {0};
    int *offsets = xmalloc((size_t)(rec->n_completion + 1) * sizeof *offsets);
    tokenizer_decode(pg->tok, rec->completion_ids, rec->n_completion, &text, offsets);
    if (!text.data) buf_append(&text, "", 0);
    int start = char_offset >= 0 ? char_offset : k < rec->n_completion ? offsets[k] : (int)text.len;
    int end = char_offset >= 0 ? start + mark_len : k < rec->n_completion ? offsets[k + 1] : start;
    if (start > (int)text.len) start = (int)text.len;
    if (end > (int)text.len) end = (int)text.len;
    int from = start, to = (int)text.len; // whole tokens within the context
    for (int t = rec->n_completion; t >= 0; t--)
        if (offsets[t] <= start && offsets[t] >= start - PAGE_CONTEXT_BEFORE) from = offsets[t];
    for (int t = 0; t <= rec->n_completion; t++)
        if (offsets[t] >= end && offsets[t] <= end + PAGE_CONTEXT_AFTER) to = offsets[t];
    while (from > 0 && from < start && (text.data[from] & 0xC0) == 0x80) from++; // and whole characters
    while (to < (int)text.len && to > end && (text.data[to] & 0xC0) == 0x80) to--;
    buf_puts(b, "<pre>");
    if (from > 0) buf_puts(b, "\xE2\x80\xA6");
    html_text(b, text.data + from, (size_t)(start - from));
    buf_printf(b, "<mark class=\"%s\">", mark_class);
    html_text(b, text.data + start, (size_t)(end - start));
    buf_puts(b, "</mark>");
    html_text(b, text.data + end, (size_t)(to - end));
    if (to < (int)text.len) buf_puts(b, "\xE2\x80\xA6");
    buf_puts(b, "</pre>\n");
    free(offsets);
    buf_free(&text);
}

static void lens_color(double lp, char out[8]) { // white (log p <= HEAT_FLOOR) to dark blue (log p = 0)
    double t = lp != lp ? 0 : lp <= HEAT_FLOOR ? 0 : lp >= 0 ? 1 : 1 - lp / HEAT_FLOOR;
    static const double lo[3] = {247, 251, 255}, hi[3] = {8, 48, 107};
    snprintf(out, 8, "#%02x%02x%02x", (int)(lo[0] + t * (hi[0] - lo[0])), (int)(lo[1] + t * (hi[1] - lo[1])),
             (int)(lo[2] + t * (hi[2] - lo[2])));
}

// A heatmap of log p(onset) by layer (rows, the last layer on top) and position (columns, up
// to pred_pos) from logit_lens_window.csv, for (kind, event_id); a note when it has none.
static void page_heatmap(Buf *b, const Page *pg, const char *kind, const char *event_id, const char *title) {
    int L = pg->n_layers, n_off = 0, offsets[HEAT_MAX_OFFSETS];
    double *lp = xmalloc((size_t)HEAT_MAX_OFFSETS * (L + 1) * sizeof *lp); // (offsets, n_layers + 1)
    for (int i = 0; i < HEAT_MAX_OFFSETS * (L + 1); i++) lp[i] = NAN;
    for (int r = 0; pg->have_window && r < pg->window.n_rows; r++) {
        if (strcmp(cell(&pg->window, r, "event_id"), event_id) != 0 || strcmp(cell(&pg->window, r, "kind"), kind) != 0)
            continue;
        int off = (int)cell_num(&pg->window, r, "offset"), l = (int)cell_num(&pg->window, r, "layer"), j = 0;
        while (j < n_off && offsets[j] != off) j++;
        if (j == n_off && n_off < HEAT_MAX_OFFSETS) offsets[n_off++] = off;
        if (j < n_off && l >= 0 && l <= L) lp[(size_t)j * (L + 1) + l] = cell_num(&pg->window, r, "logprob");
    }
    if (n_off == 0) {
        buf_printf(b, "<p class=\"note\">%s: not in the logit lens window</p>\n", title);
        free(lp);
        return;
    }
    int left = 34, top = 20, w = left + n_off * HEAT_CELL_W + 6, h = top + (L + 1) * HEAT_CELL_H + 20;
    buf_printf(
        b, "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"heat\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\">",
        w, h, w, h);
    buf_puts(b, "<title>");
    html_str(b, title);
    buf_puts(b, "</title>");
    buf_printf(b, "<text x=\"0\" y=\"12\" font-size=\"11\">");
    html_str(b, title);
    buf_puts(b, "</text>");
    for (int j = 0; j < n_off; j++)
        for (int l = 0; l <= L; l++) {
            char color[8];
            double v = lp[(size_t)j * (L + 1) + l];
            lens_color(v, color);
            buf_printf(b,
                       "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\"><title>layer %d, pred_pos%+d: "
                       "log p %.3f</title></rect>",
                       left + j * HEAT_CELL_W, top + (L - l) * HEAT_CELL_H, HEAT_CELL_W - 1, HEAT_CELL_H - 1, color, l,
                       offsets[j], v);
        }
    for (int l = 0; l <= L; l += L > 8 ? 4 : 1)
        buf_printf(b, "<text x=\"%d\" y=\"%d\" font-size=\"9\" text-anchor=\"end\">L%d</text>", left - 3,
                   top + (L - l) * HEAT_CELL_H + 8, l);
    for (int j = 0; j < n_off; j++)
        buf_printf(b, "<text x=\"%d\" y=\"%d\" font-size=\"9\" text-anchor=\"middle\">%+d</text>",
                   left + j * HEAT_CELL_W + HEAT_CELL_W / 2, top + (L + 1) * HEAT_CELL_H + 11, offsets[j]);
    buf_puts(b, "</svg>\n");
    free(lp);
}

static void page_probability(Buf *b, double lp) {
    if (lp != lp) buf_puts(b, "n/a");
    else buf_printf(b, "%.3g", exp(lp));
}

static const char *const page_style =
    "body{font:14px/1.4 sans-serif;margin:1.5em;color:#222;max-width:1400px}h1{font-size:1.4em}"
    ".meta,.note{color:#555}.event{border-top:1px solid #ccc;padding:.6em 0}.event h2{font-size:1em;margin:.2em 0}"
    ".pair{display:flex;gap:1.2em;flex-wrap:wrap}.side{flex:1 1 420px;min-width:0}.side h3{font-size:.9em;margin:.3em "
    "0;color:#555}"
    "pre{white-space:pre-wrap;word-wrap:break-word;font:12px/1.35 monospace;background:#f7f7f7;padding:.5em;margin:0;"
    "max-height:14em;overflow:auto}mark.trigger{background:#ffd54f;font-weight:bold}mark.position{background:#9fd3f5}"
    "form{position:sticky;top:0;background:#fff;padding:.4em 0;border-bottom:1px solid #ccc}svg.heat{margin-top:.4em}"
    ".scale{display:inline-block;width:120px;height:10px;background:linear-gradient(to right,#f7fbff,#08306b);"
    "vertical-align:middle}";

// Filters without < or & so the page stays well-formed XML; #variant=V;condition=C presets them.
static const char *const page_script =
    "function bt_filter(){var "
    "v=document.getElementById('variant').value,c=document.getElementById('condition').value,n=0;"
    "document.querySelectorAll('.event').forEach(function(e){var show=(v===''||e.dataset.variant===v)?"
    "(c===''||e.dataset.condition===c):false;e.hidden=!show;if(show)n++;});"
    "document.getElementById('shown').textContent=n+' shown';}"
    "location.hash.slice(1).split(';').forEach(function(kv){var p=kv.split('='),s=document.getElementById(p[0]);"
    "if(s)s.value=decodeURIComponent(p[1]||'');});"
    "document.getElementById('variant').onchange=bt_filter;document.getElementById('condition').onchange=bt_filter;bt_"
    "filter();";

static void page_select(Buf *b, const char *id, char **values, int n) {
    buf_printf(b, "<label>%s <select id=\"%s\"><option value=\"\">all</option>", id, id);
    for (int i = 0; i < n; i++) {
        buf_puts(b, "<option value=\"");
        html_str(b, values[i]);
        buf_puts(b, "\">");
        html_str(b, values[i]);
        buf_puts(b, "</option>");
    }
    buf_puts(b, "</select></label> ");
}

static void add_unique(char ***list, int *n, const char *s) {
    for (int i = 0; i < *n; i++)
        if (strcmp((*list)[i], s) == 0) return;
    *list = xrealloc(*list, (size_t)(*n + 1) * sizeof **list);
    (*list)[(*n)++] = xstrdup(s);
}

static int events_page(const Config *c, const Run *run, const char *model_id, Err *err) {
    Page pg = {.c = c, .run = run};
    Buf page = {0};
    char path[1200], **variants = NULL, **conditions = NULL;
    int n_variants = 0, n_conditions = 0, have_events, rc = 0, n_shown = 0, n_total = 0;
    int *chosen = NULL; // (n_shown) rows of the events CSV
    if ((have_events = read_table(run, ART_EVENTS, &pg.events, err)) < 0 ||
        (pg.have_lens = read_table(run, ART_LOGIT_LENS, &pg.lens, err)) < 0 ||
        (pg.have_window = read_table(run, ART_LOGIT_LENS_WINDOW, &pg.window, err)) < 0) {
        rc = -1;
        goto out;
    }
    for (int r = 0; pg.have_lens && r < pg.lens.n_rows; r++)
        if ((int)cell_num(&pg.lens, r, "layer") > pg.n_layers) pg.n_layers = (int)cell_num(&pg.lens, r, "layer");
    // Up to max_events_shown events, taken in turn from each variant x condition so every filter has some.
    int n_rows = have_events ? pg.events.n_rows : 0;
    chosen = xmalloc((size_t)(n_rows + 1) * sizeof *chosen);
    char *taken = xcalloc((size_t)n_rows + 1, 1);
    for (int r = 0; r < n_rows; r++) {
        if (strcmp(cell(&pg.events, r, "kind"), "event") != 0) continue;
        n_total++;
        add_unique(&variants, &n_variants, cell(&pg.events, r, "variant"));
        add_unique(&conditions, &n_conditions, cell(&pg.events, r, "condition"));
    }
    for (int progress_made = 1; progress_made && n_shown < c->max_events_shown;) {
        progress_made = 0;
        for (int v = 0; v < n_variants; v++)
            for (int k = 0; k < n_conditions && n_shown < c->max_events_shown; k++)
                for (int r = 0; r < n_rows; r++)
                    if (!taken[r] && strcmp(cell(&pg.events, r, "kind"), "event") == 0 &&
                        strcmp(cell(&pg.events, r, "variant"), variants[v]) == 0 &&
                        strcmp(cell(&pg.events, r, "condition"), conditions[k]) == 0) {
                        taken[r] = 1, progress_made = 1, n_shown++;
                        break;
                    }
    }
    n_shown = 0;
    for (int r = 0; r < n_rows; r++)
        if (taken[r]) chosen[n_shown++] = r;
    free(taken);
    if (n_shown) {
        snprintf(path, sizeof path, "%s/tokenizer.json", c->model_path);
        if ((rc = tokenizer_load(&pg.tok, path, err))) goto out;
    }

    buf_puts(&page, "<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\">\n<head>\n<meta "
                    "charset=\"utf-8\"/>\n");
    buf_puts(&page, "<title>Backtracking events, run ");
    html_str(&page, run->id);
    buf_printf(&page,
               "</title>\n<style>%s</style>\n</head>\n<body>\n<h1>Backtracking events</h1>\n<p class=\"meta\">run ",
               page_style);
    html_str(&page, run->id);
    buf_puts(&page, ", model ");
    html_str(&page, model_id);
    buf_printf(
        &page,
        ": %d of %d events shown ([report] max_events_shown = %d), each beside its position-matched control. "
        "p(onset) is the final layer's probability of the onset token at pred_pos. The heatmaps show log p(onset) "
        "by layer at the positions up to pred_pos (0); <span class=\"scale\"></span> %.0f to 0.</p>\n",
        n_shown, n_total, c->max_events_shown, HEAT_FLOOR);
    buf_puts(&page, "<form>");
    page_select(&page, "variant", variants, n_variants);
    page_select(&page, "condition", conditions, n_conditions);
    buf_printf(&page, "<span id=\"shown\">%d shown</span></form>\n", n_shown);
    if (!have_events) buf_puts(&page, "<p class=\"note\">detect-events has not run in this run.</p>\n");
    else if (!n_shown) buf_puts(&page, "<p class=\"note\">This run has no backtracking events.</p>\n");
    for (int i = 0; i < n_shown && rc == 0; i++) {
        int r = chosen[i];
        const char *variant = cell(&pg.events, r, "variant"), *condition = cell(&pg.events, r, "condition");
        const char *event_id = cell(&pg.events, r, "event_id"), *trigger = cell(&pg.events, r, "trigger");
        const GenRecord *rec = page_record(&pg, variant, condition, cell(&pg.events, r, "problem_id"),
                                           (int)cell_num(&pg.events, r, "sample"), err);
        if (!rec) {
            rc = -1;
            break;
        }
        int control = -1;
        for (int q = 0; q < pg.events.n_rows && control < 0; q++)
            if (strcmp(cell(&pg.events, q, "kind"), "control") == 0 &&
                strcmp(cell(&pg.events, q, "event_id"), event_id) == 0)
                control = q;
        const GenRecord *ctl = control < 0
                                   ? NULL
                                   : page_record(&pg, variant, condition, cell(&pg.events, control, "problem_id"),
                                                 (int)cell_num(&pg.events, control, "sample"), err);
        if (control >= 0 && !ctl) {
            rc = -1;
            break;
        }
        buf_puts(&page, "<div class=\"event\" data-variant=\"");
        html_str(&page, variant);
        buf_puts(&page, "\" data-condition=\"");
        html_str(&page, condition);
        buf_printf(&page, "\" id=\"event-%s\">\n<h2>event %s: \xE2\x80\x9C", event_id, event_id);
        html_str(&page, trigger);
        buf_puts(&page, "\xE2\x80\x9D in ");
        html_str(&page, variant);
        buf_puts(&page, " / ");
        html_str(&page, condition);
        buf_puts(&page, ", ");
        html_str(&page, rec->problem_id);
        buf_printf(&page, " sample %d, completion token %s (pred_pos %s), onset token ", rec->sample,
                   cell(&pg.events, r, "token_offset"), cell(&pg.events, r, "pred_pos"));
        html_str(&page, cell(&pg.events, r, "onset_token"));
        buf_puts(&page, "; p(onset) ");
        page_probability(&page, page_final_logprob(&pg, "event", event_id));
        buf_puts(&page, ", control ");
        page_probability(&page, control < 0 ? NAN : page_final_logprob(&pg, "control", event_id));
        buf_puts(&page, "</h2>\n<div class=\"pair\">\n<div class=\"side\"><h3>event</h3>\n");
        page_text(&page, &pg, rec, (int)cell_num(&pg.events, r, "token_offset"),
                  (int)cell_num(&pg.events, r, "char_offset"), (int)strlen(trigger), "trigger");
        page_heatmap(&page, &pg, "event", event_id, "event: log p(onset) by layer");
        buf_puts(&page, "</div>\n<div class=\"side\"><h3>matched control");
        if (ctl) {
            buf_puts(&page, ": ");
            html_str(&page, ctl->problem_id);
            buf_printf(&page, " sample %d, the same token position</h3>\n", ctl->sample);
            page_text(&page, &pg, ctl, (int)cell_num(&pg.events, control, "token_offset"), -1, 0, "position");
            page_heatmap(&page, &pg, "control", event_id, "control: log p(onset) by layer");
        } else {
            buf_puts(&page, "</h3>\n<p class=\"note\">no completion of this group qualified as its control</p>\n");
        }
        buf_puts(&page, "</div>\n</div>\n</div>\n");
    }
    if (rc) goto out;
    buf_printf(&page, "<script>%s</script>\n</body>\n</html>\n", page_script);
    if ((rc = write_file_atomic(c->events_path, page.data, page.len, err)) == 0)
        printf("make-report: %s (%d of %d events)\n", c->events_path, n_shown, n_total);
out:
    for (int i = 0; i < pg.n_files; i++) {
        free(pg.files[i].variant);
        free(pg.files[i].condition);
        generations_free(pg.files[i].recs, pg.files[i].n);
    }
    free(pg.files);
    for (int i = 0; i < n_variants; i++) free(variants[i]);
    for (int i = 0; i < n_conditions; i++) free(conditions[i]);
    free(variants);
    free(conditions);
    free(chosen);
    csv_free(&pg.events);
    csv_free(&pg.lens);
    csv_free(&pg.window);
    if (pg.tok) tokenizer_free(pg.tok);
    buf_free(&page);
    return rc;
}

typedef enum { SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE } Verdict;
static const char *const verdict_names[] = {"supported", "not supported", "inconclusive"};

// One hypothesis: its verdict, the p-value of the test whose rejection supports it (raw and
// Holm-adjusted over the hypotheses tested), and the numbers behind it in words.
typedef struct {
    const char *name;    // "H1 (localized trigger)"
    Verdict verdict;
    double p_raw, p_adj; // NaN when the test could not run
    int decided_by_p;    // supported needs p_adj < alpha as well as the effect: decided after Holm
    long long n;         // the sample behind p, for what a larger one would take
    const char *unit;    // what n counts
    Buf why, needed;     // the evidence; when inconclusive, what a larger experiment would take
} Hypothesis;

// Completions per condition at which an interval [.., bound] around est would end at target,
// taking half-widths to shrink as 1/sqrt(n); 0 when target is not between est and bound.
static long long completions_needed(long long n, double est, double bound, double target) {
    if (!(isfinite(est) && isfinite(bound)) || (target - est) * (bound - est) <= 0 ||
        fabs(target - est) >= fabs(bound - est))
        return 0;
    double k = (bound - est) / (target - est);
    return (long long)ceil((double)n * k * k);
}

// The same for a one-sided p-value: z grows as sqrt(n).
static long long completions_needed_p(long long n, double p, double alpha) {
    double z = normal_quantile(1 - p), z_need = normal_quantile(1 - alpha);
    if (!(z > 0) || !isfinite(z) || p < alpha) return 0;
    return (long long)ceil((double)n * (z_need / z) * (z_need / z));
}

static const char *condition_label(const Csv *t, int row) { return cell(t, row, "condition"); }

// H1 (localized trigger) and H0 (diffuse/reroutable) from condition_comparison.csv.
static void decide_ablation(const Config *c, const Csv *t, int have, Hypothesis *h1, Hypothesis *h0) {
    double min_drop = c->h1_min_relative_drop;
    int rb = have ? find_row(t, "condition", "baseline") : -1,
        rt = have ? find_row(t, "condition", "targeted_ablation") : -1;
    if (rb < 0 || rt < 0) {
        buf_puts(&h1->why,
                 "The condition comparison has not run (run compare-conditions), so there is no causal test.");
        buf_puts(&h0->why, "The condition comparison has not run.");
        return;
    }
    long long n = (long long)cell_num(t, rb, "completions");
    if (!(cell_num(t, rb, "with_backtracking") > 0)) {
        buf_puts(&h1->why, "The baseline has no backtracking to remove, so no ablation can be tested.");
        buf_puts(&h0->why, "The baseline has no backtracking to remove.");
        return;
    }
    double d = cell_num(t, rt, "relative_drop_vs_baseline"), d_lo = cell_num(t, rt, "drop_ci_lo");
    double d_hi = cell_num(t, rt, "drop_ci_hi"), p_tb = cell_num(t, rt, "p_vs_baseline");
    double collateral = cell_num(t, rt, "collateral_nll"), collateral_hi = cell_num(t, rt, "collateral_ci_hi");
    // H1: an intersection-union test, every part must hold, so its p-value is the largest.
    double p_h1 = p_tb, worst_adv = INFINITY, worst_adv_hi = INFINITY, least_adv = INFINITY;
    int n_draws = 0, worst = -1;
    double p_h0 = cell_num(t, rt, "p_drop_at_least_min");
    int reliable_set = d_lo >= min_drop ? rt : -1;
    Buf draws = {0};
    for (int r = 0; r < t->n_rows; r++) {
        if (strncmp(condition_label(t, r), "random_ablation_", 16) != 0) continue;
        n_draws++;
        double p = cell_num(t, r, "p_targeted_vs_this"), adv = cell_num(t, r, "targeted_advantage");
        double adv_hi = cell_num(t, r, "advantage_ci_hi"), dr = cell_num(t, r, "relative_drop_vs_baseline");
        if (!(p <= p_h1)) p_h1 = p;
        if (!(adv >= least_adv)) least_adv = adv;
        if (adv_hi < worst_adv_hi || worst < 0) worst_adv_hi = adv_hi, worst_adv = adv, worst = r;
        double p0 = cell_num(t, r, "p_drop_at_least_min");
        if (!(p0 <= p_h0)) p_h0 = p0;
        if (reliable_set < 0 && cell_num(t, r, "drop_ci_lo") >= min_drop) reliable_set = r;
        buf_printf(&draws, "%s%s %.3g [%.3g, %.3g]", n_draws > 1 ? "; " : "", condition_label(t, r), dr,
                   cell_num(t, r, "drop_ci_lo"), cell_num(t, r, "drop_ci_hi"));
    }
    Buf nums = {0};
    buf_printf(&nums,
               "Targeted ablation removed %.3g [95%% CI %.3g, %.3g] of the baseline backtracking rate (%.3g) of %s "
               "(one-sided paired McNemar p = ",
               d, d_lo, d_hi, cell_num(t, rb, "backtracking_rate"), cell(t, rt, "variant"));
    fmt_p(&nums, p_tb);
    buf_printf(&nums, "); the %d shape-matched random draws removed %s", n_draws, draws.data ? draws.data : "nothing");
    if (worst >= 0) {
        buf_printf(&nums,
                   "; the targeted set's advantage over the least favourable draw (%s) is %.3g [%.3g, %.3g] (one-sided "
                   "McNemar p = ",
                   condition_label(t, worst), worst_adv, cell_num(t, worst, "advantage_ci_lo"), worst_adv_hi);
        fmt_p(&nums, cell_num(t, worst, "p_targeted_vs_this"));
        buf_puts(&nums, ")");
    }
    if (isnan(collateral)) buf_puts(&nums, "; collateral damage was not measured (run collateral-damage)");
    else
        buf_printf(&nums, "; the targeted ablation adds %.3g [%.3g, %.3g] nats per token to the baseline text",
                   collateral, cell_num(t, rt, "collateral_ci_lo"), collateral_hi);
    buf_puts(&nums, ".");
    h1->p_raw = p_h1, h1->decided_by_p = 1;
    h0->p_raw = p_h0;
    // H1: not supported on positive evidence only: the drop, or the advantage over some draw,
    // is reliably below the pre-registered size.
    if (d_hi < min_drop) {
        h1->verdict = NOT_SUPPORTED;
        buf_printf(&h1->why, "The targeted drop is reliably below %g (its upper bound is %.3g). %s", min_drop, d_hi,
                   nums.data);
    } else if (worst >= 0 && worst_adv_hi < min_drop) {
        h1->verdict = NOT_SUPPORTED;
        buf_printf(&h1->why,
                   "The targeted set does no better than a random set of the same shape: its advantage over %s is "
                   "reliably below %g. %s",
                   condition_label(t, worst), min_drop, nums.data);
    } else if (!(d >= min_drop)) {
        buf_printf(&h1->why, "The drop is below %g but not reliably so. %s", min_drop, nums.data);
        long long k = completions_needed(n, d, d_hi, min_drop);
        if (k)
            buf_printf(&h1->needed, "About %lld completions per condition would put the drop's upper bound below %g.",
                       k, min_drop);
    } else if (!(least_adv >= min_drop)) {
        buf_printf(&h1->why, "The targeted set's advantage over some random draw is below %g but not reliably so. %s",
                   min_drop, nums.data);
        long long k = completions_needed(n, worst_adv, worst_adv_hi, min_drop);
        if (k)
            buf_printf(&h1->needed,
                       "About %lld completions per condition would put that advantage's upper bound below %g.", k,
                       min_drop);
    } else if (isnan(collateral) || collateral > c->max_collateral_nll) {
        buf_printf(&h1->why, "%s %s",
                   isnan(collateral) ? "The drop reaches the pre-registered size, but without the collateral "
                                       "damage it cannot be told from a broken model."
                                     : "The drop reaches the pre-registered size, but the ablation also "
                                       "damages the model (more than [hypotheses] max_collateral_nll).",
                   nums.data);
        h1->decided_by_p = 0;
    } else {
        h1->verdict = SUPPORTED; // provisional: decided_by_p, so it also needs the Holm-adjusted p below alpha
        buf_printf(&h1->why, "%s", nums.data);
    }
    // H0: supported on positive evidence: every tested set's drop is reliably below the size.
    if (reliable_set >= 0) {
        h0->verdict = NOT_SUPPORTED;
        buf_printf(&h0->why,
                   "A small set reliably reduces backtracking: %s removes %.3g [%.3g, %.3g] of it, at least %g.",
                   condition_label(t, reliable_set), cell_num(t, reliable_set, "relative_drop_vs_baseline"),
                   cell_num(t, reliable_set, "drop_ci_lo"), cell_num(t, reliable_set, "drop_ci_hi"), min_drop);
    } else {
        h0->verdict = SUPPORTED; // provisional: needs the Holm-adjusted p below alpha
        h0->decided_by_p = 1;
        buf_printf(&h0->why,
                   "The test is that every tested set (the targeted one and each random draw) removes less than %g "
                   "of the backtracking (p = the largest bootstrap share of resamples at or above %g). %s",
                   min_drop, min_drop, nums.data);
        double worst_hi = d_hi, worst_est = d;
        for (int r = 0; r < t->n_rows; r++)
            if (strncmp(condition_label(t, r), "random_ablation_", 16) == 0 && cell_num(t, r, "drop_ci_hi") > worst_hi)
                worst_hi = cell_num(t, r, "drop_ci_hi"), worst_est = cell_num(t, r, "relative_drop_vs_baseline");
        long long k = completions_needed(n, worst_est, worst_hi, min_drop);
        if (k)
            buf_printf(&h0->needed, "About %lld completions per condition would put every set's upper bound below %g.",
                       k, min_drop);
    }
    h1->n = h0->n = n;
    buf_free(&draws);
    buf_free(&nums);
}

// H2 (format dependence) from formatting_summary.csv: backtracking per opportunity among
// completions that reason, think-open variants against the others.
static void decide_format(const Config *c, const Csv *t, int have, Hypothesis *h2) {
    if (!have || t->n_rows == 0) {
        buf_puts(&h2->why, "The formatting sweep has not run (run formatting-sweep).");
        return;
    }
    int think = (int)cell_num(t, 0, "h2_think_reasoning"), no_think = (int)cell_num(t, 0, "h2_no_think_reasoning");
    double ratio = cell_num(t, 0, "h2_ratio"), lo = cell_num(t, 0, "h2_ratio_ci_lo"),
           hi = cell_num(t, 0, "h2_ratio_ci_hi");
    Buf nums = {0};
    buf_printf(&nums,
               "Among completions that reason (a thinking part with a sentence end to backtrack after), variants that "
               "leave <think> open backtrack %.3g times per opportunity (%d completions) and the others %.3g (%d "
               "completions): a ratio of %.3g [95%% CI %.3g, %.3g], one-sided permutation p = ",
               cell_num(t, 0, "h2_rate_think"), think, cell_num(t, 0, "h2_rate_no_think"), no_think, ratio, lo, hi);
    fmt_p(&nums, cell_num(t, 0, "h2_p"));
    buf_printf(&nums,
               " (labels permuted within problems). Criteria: ratio >= %g with Holm-adjusted p < %g (supported), or "
               "the ratio's upper bound below %g (not supported).",
               c->h2_min_rate_ratio, c->alpha, c->h2_min_rate_ratio);
    if (think == 0 || no_think == 0) {
        buf_printf(&h2->why,
                   "No %s variant has a completion that reasons, so backtracking given reasoning cannot be compared "
                   "across formats; whether a format makes the model reason at all is reported below, as its own "
                   "finding.",
                   think == 0 ? "think-open" : "no-think");
        buf_free(&nums);
        return;
    }
    h2->p_raw = cell_num(t, 0, "h2_p"), h2->n = think + no_think;
    if (hi < c->h2_min_rate_ratio) {
        h2->verdict = NOT_SUPPORTED;
        buf_printf(&h2->why, "A format dependence of the pre-registered size is ruled out. %s", nums.data);
    } else if (ratio >= c->h2_min_rate_ratio) {
        h2->verdict = SUPPORTED, h2->decided_by_p = 1;
        buf_printf(&h2->why, "%s", nums.data);
    } else {
        buf_printf(&h2->why, "The ratio is below %g but not reliably so. %s", c->h2_min_rate_ratio, nums.data);
        long long k = completions_needed(think + no_think, ratio, hi, c->h2_min_rate_ratio);
        if (k) buf_printf(&h2->needed, "About %lld reasoning completions in all would decide it.", k);
    }
    buf_free(&nums);
}

// Holm over the hypotheses that have a p-value; a provisional "supported" stands only when
// its adjusted p is below alpha, and otherwise becomes inconclusive with what would decide it.
static void holm_verdicts(const Config *c, Hypothesis *h, int n) {
    double p[8] = {0}, adj[8]; // zeroed only for gcc -O1, which cannot see the loop sets the n read
    for (int i = 0; i < n; i++) p[i] = h[i].p_raw;
    holm_adjust(p, n, adj);
    for (int i = 0; i < n; i++) {
        h[i].p_adj = adj[i];
        if (h[i].verdict != SUPPORTED || !h[i].decided_by_p || adj[i] < c->alpha) continue;
        h[i].verdict = INCONCLUSIVE;
        buf_printf(&h[i].why,
                   " The effect reaches the pre-registered size but the test is not significant after Holm's "
                   "correction (adjusted p = %.3g, alpha = %g).",
                   adj[i], c->alpha);
        long long k = completions_needed_p(h[i].n, h[i].p_raw, c->alpha / n);
        if (k) buf_printf(&h[i].needed, "About %lld %s would make it significant at that level.", k, h[i].unit);
    }
}

static void hypothesis_free(Hypothesis *h) {
    buf_free(&h->why);
    buf_free(&h->needed);
}

static void put_hypothesis(Buf *md, const Hypothesis *h) {
    buf_printf(md, "%s: %s\n\n%s", h->name, verdict_names[h->verdict], h->why.data ? h->why.data : "");
    if (!isnan(h->p_raw)) {
        buf_puts(md, " Test p = ");
        fmt_p(md, h->p_raw);
        buf_puts(md, ", Holm-adjusted ");
        fmt_p(md, h->p_adj);
        buf_puts(md, ".");
    }
    if (h->verdict == INCONCLUSIVE && h->needed.data) buf_printf(md, " %s", h->needed.data);
    buf_puts(md, "\n\n");
}

// ----------------------------------------------------------------------------
// Attribution patching in the report: the heads, and how the first-order estimates compare with
// exact ablation where both ran.

// Ranks of x (n), ties sharing their mean rank (1-based).
static void average_ranks(const double *x, int n, double *rank) {
    for (int i = 0; i < n; i++) {
        int below = 0, equal = 0;
        for (int j = 0; j < n; j++) below += x[j] < x[i], equal += x[j] == x[i];
        rank[i] = below + (equal + 1) / 2.0;
    }
}

// Spearman's rank correlation of (x, y) over n pairs; NaN below 3 pairs or with no spread.
static double spearman(const double *x, const double *y, int n) {
    if (n < 3) return NAN;
    double *rx = xmalloc((size_t)n * sizeof *rx), *ry = xmalloc((size_t)n * sizeof *ry); // (n) ranks
    double mx = (n + 1) / 2.0, sxy = 0, sxx = 0, syy = 0;
    average_ranks(x, n, rx);
    average_ranks(y, n, ry);
    for (int i = 0; i < n; i++)
        sxy += (rx[i] - mx) * (ry[i] - mx), sxx += (rx[i] - mx) * (rx[i] - mx), syy += (ry[i] - mx) * (ry[i] - mx);
    free(rx);
    free(ry);
    return sxx > 0 && syy > 0 ? sxy / sqrt(sxx * syy) : NAN;
}

// How the scan measured: "exact", "attribution" or "attribution+verify", from its rows' method column.
static const char *scan_method(const Csv *t, int have) {
    int exact = 0, estimated = 0;
    for (int r = 0; have && r < t->n_rows; r++) {
        exact |= strcmp(cell(t, r, "method"), "exact") == 0;
        estimated |= strcmp(cell(t, r, "method"), "attribution") == 0 || !isnan(cell_num(t, r, "est_drop_events"));
    }
    return estimated && exact ? "attribution+verify" : estimated ? "attribution" : "exact";
}

static void put_attribution_section(Buf *md, const Csv *scan, int have_scan, const Csv *heads, int have_heads,
                                    const char *fig) {
    buf_puts(md, "\n## Heads and attribution patching\n\n");
    if (have_heads && heads->n_rows) {
        buf_printf(md, "Drop in log p(onset) when one attention head's output is ablated (before o_proj), %s ablation, "
                       "scope %s, mean over %s events; heads ranked by specificity as the layers are, heads ablated "
                       "exactly first.\n\n",
                   cell(heads, 0, "kind"), cell(heads, 0, "scope"), cell(heads, 0, "n_events"));
        buf_puts(md,
                 "| rank | head | specificity [95% CI] | drop on events [95% CI] | measured | estimate | selected |\n"
                 "|---|---|---|---|---|---|---|\n");
        for (int rank = 1; rank <= 5; rank++)
            for (int row = 0; row < heads->n_rows; row++) {
                if ((int)cell_num(heads, row, "rank") != rank) continue;
                buf_printf(md, "| %d | %s.%s | ", rank, cell(heads, row, "layer"), cell(heads, row, "head"));
                fmt_ci(md, cell_num(heads, row, "specificity"), cell_num(heads, row, "specificity_ci_lo"),
                       cell_num(heads, row, "specificity_ci_hi"));
                buf_puts(md, " | ");
                fmt_ci(md, cell_num(heads, row, "mean_drop_events"), cell_num(heads, row, "ci_lo_events"),
                       cell_num(heads, row, "ci_hi_events"));
                buf_printf(md, " | %s | ", strcmp(cell(heads, row, "method"), "exact") ? "estimate" : "exact");
                fmt_ci(md, cell_num(heads, row, "est_drop_events"), NAN, NAN);
                buf_printf(md, " | %s |\n", strcmp(cell(heads, row, "selected"), "1") ? "" : "yes");
            }
    } else {
        buf_puts(md, "Heads were not scanned in this run ([ablation] method = exact with top_k_heads = 0).\n");
    }
    buf_printf(md, "\n![Head importance by layer](%s/%s)\n", fig, FIG_HEAD_IMPORTANCE);
    // Components with both numbers: the estimate against the exact drop on events.
    int n = 0, cap = (have_scan ? scan->n_rows : 0) + (have_heads ? heads->n_rows : 0) + 1;
    double *est = xmalloc((size_t)cap * sizeof *est), *exact = xmalloc((size_t)cap * sizeof *exact);
    Buf rows = {0};
    for (int part = 0; part < 2; part++) {
        const Csv *t = part ? heads : scan;
        for (int row = 0; (part ? have_heads : have_scan) && row < t->n_rows; row++) {
            double e = cell_num(t, row, "est_drop_events"), x = cell_num(t, row, "mean_drop_events");
            if (strcmp(cell(t, row, "method"), "exact") || isnan(e) || isnan(x)) continue;
            est[n] = e, exact[n++] = x;
            if (part) buf_printf(&rows, "| head %s.%s | ", cell(t, row, "layer"), cell(t, row, "head"));
            else buf_printf(&rows, "| %s %s | ", cell(t, row, "component"), cell(t, row, "layer"));
            buf_printf(&rows, "%.3g | %.3g | %+.3g |\n", e, x, e - x);
        }
    }
    buf_puts(md, "\n### Attribution against exact ablation\n\n");
    if (n == 0) {
        buf_printf(md, "No component was both estimated and ablated exactly (the scan's method: %s).\n",
                   scan_method(scan, have_scan));
    } else {
        double rho = spearman(est, exact, n);
        buf_printf(md, "Attribution patching estimates every component's ablation effect to first order from one "
                       "forward and one backward pass per item (the gradient of log p(onset) times the change ablation "
                       "makes to the component's output, summed over positions); the scan ablated %d of them exactly, "
                       "chosen by the size of their estimate. Spearman rank correlation of the estimates with the "
                       "exact drops over these: ", n);
        if (isnan(rho)) buf_puts(md, "n/a (fewer than 3, or no spread)");
        else buf_printf(md, "%.3f", rho);
        buf_puts(md,
                 ". A first-order estimate cannot see a path through a saturated nonlinearity, where a small change "
                 "moves nothing and a whole ablation moves everything, so a large exact drop can come with a small "
                 "estimate of either sign: verify candidates chosen by the estimate's size, not its sign.\n\n"
                 "| component | estimated drop on events | exact drop on events | error |\n|---|---|---|---|\n");
        buf_append(md, rows.data, rows.len);
    }
    buf_free(&rows);
    free(est);
    free(exact);
}

// Steering: the dose-response figure and H3 (linear direction), both from steering_sweep.csv,
// and the directions' table from directions.csv.

// The distinct variants of the sweep, in order of first appearance; returns how many.
static int sweep_variants(const Csv *sweep, const char **out) {
    int n = 0;
    for (int r = 0; r < sweep->n_rows; r++) {
        int seen = 0;
        for (int i = 0; i < n && !seen; i++) seen = strcmp(out[i], cell(sweep, r, "variant")) == 0;
        if (!seen) out[n++] = cell(sweep, r, "variant");
    }
    return n;
}

// Rows of one variant and kind ("baseline" rows join the direction and random series at alpha 0),
// sorted by alpha; returns how many.
static int sweep_rows(const Csv *sweep, const char *variant, const char *kind, int with_baseline, int *rows) {
    int n = 0;
    for (int r = 0; r < sweep->n_rows; r++) {
        if (strcmp(cell(sweep, r, "variant"), variant)) continue;
        const char *k = cell(sweep, r, "kind");
        if (strcmp(k, kind) == 0 || (with_baseline && strcmp(k, "baseline") == 0)) rows[n++] = r;
    }
    for (int i = 1; i < n; i++) // insertion sort by alpha: a handful of rows
        for (int j = i; j > 0 && cell_num(sweep, rows[j], "alpha") < cell_num(sweep, rows[j - 1], "alpha"); j--) {
            int t = rows[j];
            rows[j] = rows[j - 1];
            rows[j - 1] = t;
        }
    return n;
}

static int draw_steering_figure(FigureOut *f, const Csv *sweep, int have, Err *err) {
    int n_rows = have ? sweep->n_rows : 0, n_series = 0, n_variants = 0;
    const char **variants = xcalloc((size_t)n_rows + 1, sizeof *variants);
    if (have) n_variants = sweep_variants(sweep, variants);
    SteerSeries *series = xcalloc((size_t)(3 * n_variants + 1), sizeof *series);
    double *alpha = xmalloc((size_t)(3 * n_rows + 1) * sizeof *alpha); // every series' points, in turn
    long long *k = xmalloc((size_t)(3 * n_rows + 1) * sizeof *k), *n = xmalloc((size_t)(3 * n_rows + 1) * sizeof *n);
    int *rows = xmalloc((size_t)(n_rows + 1) * sizeof *rows), used = 0;
    char **names = xcalloc((size_t)(3 * n_variants + 1), sizeof *names);
    static const char *const kinds[] = {"direction", "random", "project_out"};
    static const char *const labels[] = {"direction", "random direction", "project_out (at 0)"};
    for (int v = 0; v < n_variants; v++)
        for (int kind = 0; kind < 3; kind++) {
            int m = sweep_rows(sweep, variants[v], kinds[kind], kind != STEER_PROJECT_OUT, rows);
            if (m == 0 || (kind != STEER_PROJECT_OUT && m < 2)) continue;
            for (int i = 0; i < m; i++) {
                alpha[used + i] = cell_num(sweep, rows[i], "alpha");
                k[used + i] = (long long)cell_num(sweep, rows[i], "with_backtracking");
                n[used + i] = (long long)cell_num(sweep, rows[i], "completions");
            }
            Buf name = {0};
            buf_printf(&name, "%s: %s", variants[v], labels[kind]);
            names[n_series] = name.data;
            series[n_series] = (SteerSeries){name.data, kind, v, alpha + used, k + used, n + used, m};
            n_series++;
            used += m;
        }
    char note[256];
    int layer = -1;
    for (int r = 0; r < n_rows && layer < 0; r++) layer = (int)cell_num(sweep, r, "layer");
    if (have && n_rows)
        snprintf(note, sizeof note, "run %s; steered after layer %d (0 = embeddings); alpha 0 = baseline", f->run->id,
                 layer);
    else snprintf(note, sizeof note, "run %s; steering-sweep has not run", f->run->id);
    int rc = fig_rate_by_steering(figure_start(f, FIG_RATE_BY_STEERING), series, n_series, note, err);
    for (int i = 0; i < n_series; i++) free(names[i]);
    free(names), free(series), free(alpha), free(k), free(n), free(rows), free(variants);
    return rc ? rc : figure_publish(f, err);
}

// H3, per steered variant: what the direction, the random control and project_out did.
typedef struct {
    int lowers, raises;          // the most negative (positive) alpha moves the rate down (up), paired p < alpha
    int wrong_way;               // the direction's trend is significant and negative
    int step_down;               // two neighbouring alphas where the rate falls significantly
    int random_moves;            // the random trend is significant, or a random alpha differs (Bonferroni)
    int random_as_strong;        // ... significantly, with a slope at least the direction's
    int po_lowers, po_raises;    // project_out against the baseline
    int excluded;                // the direction's slope interval rules out the pre-registered change
} SteerJudgement;

static Verdict h3_verdict(const Config *c, const Csv *sweep, int have, Buf *why) {
    if (!have || sweep->n_rows == 0) {
        buf_puts(
            why,
            "The steering sweep has not run (set [steering] enabled = true, or run directions, generate --condition "
            "steer|steer_random|project_out, detect-events and steering-sweep).");
        return INCONCLUSIVE;
    }
    double alpha = c->alpha, m = c->h3_min_rate_change;
    const char **variants = xcalloc((size_t)sweep->n_rows + 1, sizeof *variants);
    int *rows = xmalloc((size_t)(sweep->n_rows + 1) * sizeof *rows), n_variants = sweep_variants(sweep, variants),
        n_random = 0;
    for (int r = 0; r < sweep->n_rows; r++) n_random += strcmp(cell(sweep, r, "kind"), "random") == 0;
    SteerJudgement any = {0}, all = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    int n_judged = 0, n_excludable = 0;
    for (int v = 0; v < n_variants; v++) {
        SteerJudgement j = {0};
        int nd = sweep_rows(sweep, variants[v], "direction", 1, rows), base = -1;
        for (int i = 0; i < nd; i++)
            if (strcmp(cell(sweep, rows[i], "kind"), "baseline") == 0) base = rows[i];
        if (base < 0 || nd < 2) continue;
        double rate_b = cell_num(sweep, base, "backtracking_rate");
        int lo_row = rows[0], hi_row = rows[nd - 1], dir_row = rows[0] == base ? rows[1] : rows[0];
        j.lowers = cell_num(sweep, lo_row, "alpha") < 0 && cell_num(sweep, lo_row, "backtracking_rate") < rate_b &&
                   cell_num(sweep, lo_row, "p_vs_baseline") < alpha;
        j.raises = cell_num(sweep, hi_row, "alpha") > 0 && cell_num(sweep, hi_row, "backtracking_rate") > rate_b &&
                   cell_num(sweep, hi_row, "p_vs_baseline") < alpha;
        double slope = cell_num(sweep, dir_row, "trend_slope"), t_lo = cell_num(sweep, dir_row, "trend_ci_lo");
        double t_hi = cell_num(sweep, dir_row, "trend_ci_hi"), t_p = cell_num(sweep, dir_row, "trend_p");
        j.wrong_way = slope < 0 && t_p < alpha;
        for (int i = 0; i + 1 < nd; i++) {
            long long k0 = (long long)cell_num(sweep, rows[i], "with_backtracking"),
                      n0 = (long long)cell_num(sweep, rows[i], "completions");
            long long k1 = (long long)cell_num(sweep, rows[i + 1], "with_backtracking"),
                      n1 = (long long)cell_num(sweep, rows[i + 1], "completions");
            if ((double)k1 / n1 < (double)k0 / n0 && fisher_exact_p(k0, n0 - k0, k1, n1 - k1) < alpha) j.step_down = 1;
        }
        double range = cell_num(sweep, hi_row, "alpha") - cell_num(sweep, lo_row, "alpha");
        if (t_lo == t_lo && t_hi == t_hi && range > 0) {
            n_excludable++;
            j.excluded = t_lo * range > -m && t_hi * range < m;
        }
        int nr = sweep_rows(sweep, variants[v], "random", 0, rows);
        for (int i = 0; i < nr; i++) {
            double p = cell_num(sweep, rows[i], "p_vs_baseline"), rp = cell_num(sweep, rows[i], "trend_p");
            double rslope = cell_num(sweep, rows[i], "trend_slope");
            if (p < alpha / n_random || rp < alpha) j.random_moves = 1;
            if (rp < alpha && fabs(rslope) >= fabs(slope)) j.random_as_strong = 1;
        }
        int np = sweep_rows(sweep, variants[v], "project_out", 0, rows);
        for (int i = 0; i < np; i++) {
            double rate = cell_num(sweep, rows[i], "backtracking_rate"), p = cell_num(sweep, rows[i], "p_vs_baseline");
            j.po_lowers |= rate < rate_b && p < alpha;
            j.po_raises |= rate > rate_b && p < alpha;
        }
        n_judged++;
        any.lowers |= j.lowers, any.raises |= j.raises, any.wrong_way |= j.wrong_way, any.step_down |= j.step_down;
        any.random_moves |= j.random_moves, any.random_as_strong |= j.random_as_strong, any.po_lowers |= j.po_lowers;
        any.po_raises |= j.po_raises;
        if (t_lo == t_lo && t_hi == t_hi) all.excluded &= j.excluded;
        buf_printf(
            why,
            "%s%s: the most negative alpha %s, the most positive %s; trend %+.3g per unit alpha [%.3g, %.3g], p = ",
            n_judged > 1 ? " " : "", variants[v], j.lowers ? "lowers the rate" : "does not lower it significantly",
            j.raises ? "raises it" : "does not raise it significantly", slope, t_lo, t_hi);
        fmt_p(why, t_p);
        buf_printf(why, "; the random direction %s; project_out %s.",
                   j.random_moves ? "moves it" : "does not move it significantly",
                   j.po_lowers   ? "lowers it"
                   : j.po_raises ? "raises it"
                                 : "does not change it significantly");
    }
    free(variants);
    free(rows);
    buf_printf(
        why,
        " Criteria (alpha = %g): supported when subtracting lowers the rate in some variant and adding raises "
        "it in some "
        "variant (paired McNemar p vs baseline at the extreme alphas), no neighbouring alphas step down (Fisher), "
        "the random "
        "direction moves no rate (its trend p >= alpha, each alpha's McNemar p >= alpha / %d) and project_out "
        "lowers the rate "
        "in some variant and raises it in none; not supported when the direction's trend is significant the "
        "wrong way, the "
        "random direction's trend is significant and at least as steep, project_out raises the rate, or every "
        "variant's "
        "trend interval rules out a rate change of %g across the alphas; inconclusive otherwise.",
        alpha, n_random > 0 ? n_random : 1, m);
    if (n_judged == 0) {
        buf_puts(why, " No steered variant has a baseline and steered conditions.");
        return INCONCLUSIVE;
    }
    if (any.lowers && any.raises && !any.step_down && !any.random_moves && any.po_lowers && !any.po_raises &&
        !any.wrong_way)
        return SUPPORTED;
    if (any.wrong_way || any.random_as_strong || any.po_raises || (n_excludable > 0 && all.excluded))
        return NOT_SUPPORTED;
    return INCONCLUSIVE;
}

// The report's steering section: the directions, the sweep's table, the figure.
static void steering_section(const Run *run, const Csv *sweep, int have, const char *fig, Buf *md, Verdict h3,
                             const char *why) {
    buf_puts(md, "\n## Steering (H3)\n\n");
    Csv dirs = {0};
    Err ignored;
    int have_dirs = read_table(run, ART_DIRECTIONS_CSV, &dirs, &ignored) > 0 && dirs.n_rows > 0;
    if (have_dirs) {
        buf_printf(md,
                   "Difference-of-means directions from `%s` (variant %s): positives = %s, negatives = %s. "
                   "Held-out AUROC: the projection on a direction from half of the completions, scored on the other "
                   "half's positions "
                   "(bootstrap 95%% CI over completions). Top dim: the residual dimension with the largest component "
                   "of the unit "
                   "direction.\n\n",
                   ART_DIRECTIONS, cell(&dirs, 0, "variant"), cell(&dirs, 0, "positives"), cell(&dirs, 0, "negatives"));
        buf_puts(md, "| layer | norm | mean residual norm | cosine with previous | top dim (component) | held-out "
                     "AUROC [95% CI] |\n"
                     "|---|---|---|---|---|---|\n");
        for (int r = 0; r < dirs.n_rows; r++) {
            double cos_prev = cell_num(&dirs, r, "cos_prev");
            buf_printf(md, "| %s%s | %.3g | %.3g | ", cell(&dirs, r, "layer"),
                       strcmp(cell(&dirs, r, "best_auroc"), "1") ? "" : " (best)", cell_num(&dirs, r, "norm"),
                       cell_num(&dirs, r, "mean_norm"));
            if (cos_prev == cos_prev) buf_printf(md, "%.3f", cos_prev);
            else buf_puts(md, "n/a");
            buf_printf(md, " | %s (%.3f) | ", cell(&dirs, r, "top_dim"), cell_num(&dirs, r, "top_component"));
            fmt_ci(md, cell_num(&dirs, r, "auroc"), cell_num(&dirs, r, "auroc_ci_lo"),
                   cell_num(&dirs, r, "auroc_ci_hi"));
            buf_puts(md, " |\n");
        }
        buf_putc(md, '\n');
    } else {
        buf_puts(md, "No directions in this run (bt directions).\n\n");
    }
    csv_free(&dirs);
    if (have && sweep->n_rows) {
        int layer = -1;
        for (int r = 0; r < sweep->n_rows && layer < 0; r++) layer = (int)cell_num(sweep, r, "layer");
        buf_printf(md, "Steered after layer %d (0 = embeddings) at every position; alpha in units of that layer's mean "
                       "residual norm.\n\n", layer);
        buf_puts(md, "| variant | condition | alpha | completions | backtracking rate [95% CI] | events / 1k tokens "
                     "[95% CI] | mean length | "
                     "accuracy | McNemar p vs baseline (paired) |\n|---|---|---|---|---|---|---|---|---|\n");
        for (int r = 0; r < sweep->n_rows; r++) {
            double a = cell_num(sweep, r, "alpha");
            buf_printf(md, a ? "| %s | %s | %+g | %s | " : "| %s | %s | %g | %s | ", cell(sweep, r, "variant"),
                       cell(sweep, r, "condition"), a, cell(sweep, r, "completions"));
            fmt_ci(md, cell_num(sweep, r, "backtracking_rate"), cell_num(sweep, r, "rate_ci_lo"),
                   cell_num(sweep, r, "rate_ci_hi"));
            buf_puts(md, " | ");
            fmt_ci(md, cell_num(sweep, r, "events_per_1k_tokens"), cell_num(sweep, r, "events_per_1k_ci_lo"),
                   cell_num(sweep, r, "events_per_1k_ci_hi"));
            buf_printf(md, " | %.1f | %.3g | ", cell_num(sweep, r, "mean_length"), cell_num(sweep, r, "accuracy"));
            fmt_p(md, cell_num(sweep, r, "p_vs_baseline"));
            buf_puts(md, " |\n");
        }
    } else {
        buf_puts(md, "No steering sweep in this run.\n");
    }
    buf_printf(md, "\n![Backtracking rate by steering strength](%s/%s)\n", fig, FIG_RATE_BY_STEERING);
    buf_printf(md, "\nH3 (linear direction): %s. %s\n", verdict_names[h3], why);
}

int cmd_make_report(int argc, char **argv) {
    Opt opts[] = {OPT_CONFIG, OPT_END};
    Err err = {0};
    Config c;
    Run run;
    int exit_code;
    if (stage_open(argc, argv, opts, &c, &run, &exit_code)) return exit_code;
    Csv conditions = {0}, formatting = {0}, scan = {0}, lens = {0}, heads = {0}, sweep = {0};
    int have_conditions = 0, have_formatting = 0, have_scan = 0, have_lens = 0, have_heads = 0, have_sweep = 0;
    Buf meta_text = {0}, resolved = {0}, md = {0};
    Buf h3_why = {0};
    Json meta = {0};
    char path[1200];
    if ((have_conditions = read_table(&run, ART_CONDITIONS, &conditions, &err)) < 0 ||
        (have_formatting = read_table(&run, ART_FORMATTING, &formatting, &err)) < 0 ||
        (have_scan = read_table(&run, ART_ABLATION, &scan, &err)) < 0 ||
        (have_lens = read_table(&run, ART_LOGIT_LENS, &lens, &err)) < 0 ||
        (have_heads = read_table(&run, ART_HEADS, &heads, &err)) < 0)
        goto out;
    FigureOut figures_out = {.c = &c, .run = &run};
    if (draw_summary_figures(&figures_out, &err) || draw_lens_figure(&figures_out, &lens, have_lens, &err) ||
        draw_scan_figure(&figures_out, &scan, have_scan, &err) ||
        draw_rate_figures(&figures_out, &conditions, have_conditions, &formatting, have_formatting, &err) ||
        draw_head_figure(&figures_out, &heads, have_heads, &err))
        goto out;
    if ((have_sweep = read_table(&run, ART_STEERING_SWEEP, &sweep, &err)) < 0 ||
        draw_steering_figure(&figures_out, &sweep, have_sweep, &err))
        goto out;
    Verdict h3 = h3_verdict(&c, &sweep, have_sweep, &h3_why);
    run_path(&run, path, sizeof path, ART_META);
    if (read_file(path, &meta_text, &err) || json_parse(&meta, meta_text.data, meta_text.len, path, &err)) goto out;
    run_path(&run, path, sizeof path, ART_CONFIG_RESOLVED);
    Err ignored;
    read_file(path, &resolved, &ignored);
    char sha[64], model_id[512], created[64], digest[64], threads[32];
    meta_get(&meta, "git_sha", sha, sizeof sha, "unknown");
    meta_get(&meta, "model_id", model_id, sizeof model_id, c.model_path);
    meta_get(&meta, "utc_time", created, sizeof created, "unknown");
    meta_get(&meta, "config_digest", digest, sizeof digest, "unknown");
    long long n_threads = 0;
    json_int(&meta, json_key(&meta, 0, "threads"), &n_threads);
    if (events_page(&c, &run, model_id, &err)) goto out;
    snprintf(threads, sizeof threads, "%lld", n_threads);
    time_t now = time(NULL);
    struct tm utc;
    gmtime_r(&now, &utc);
    char written[64];
    strftime(written, sizeof written, "%Y-%m-%dT%H:%M:%SZ", &utc);
    double alpha = c.alpha;
    Hypothesis hyp[3] = {{.name = "H1 (localized trigger)", .unit = "completions per condition"},
                         {.name = "H0 (diffuse/reroutable)", .unit = "completions per condition"},
                         {.name = "H2 (format dependence)", .unit = "reasoning completions in all"}};
    for (int k = 0; k < 3; k++) hyp[k].verdict = INCONCLUSIVE, hyp[k].p_raw = hyp[k].p_adj = NAN;
    decide_ablation(&c, &conditions, have_conditions, &hyp[0], &hyp[1]);
    decide_format(&c, &formatting, have_formatting, &hyp[2]);
    holm_verdicts(&c, hyp, 3);

    // The document.
    char report_dir[1200], fig[1300];
    snprintf(report_dir, sizeof report_dir, "%s", c.report_path);
    char *slash = strrchr(report_dir, '/');
    if (slash) *slash = 0;
    else snprintf(report_dir, sizeof report_dir, ".");
    buf_printf(&md, "# Backtracking state transitions: report\n\n");
    buf_printf(&md, "| run | git SHA | model | config | config digest | run created | report written | bt | threads "
                    "|\n|---|---|---|---|---|---|---|---|---|\n");
    buf_printf(&md, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n\n", run.id, sha, model_id, c.file, digest,
               created, written, BT_VERSION, threads);
    buf_puts(&md, "## Verdicts\n\n");
    for (int k = 0; k < 3; k++) put_hypothesis(&md, &hyp[k]);
    buf_printf(&md,
               "Rules (pre-registered in [hypotheses]; alpha = %g, Holm-corrected over the three tests; every test "
               "one-sided in the direction its hypothesis claims; intervals are 95%% percentile bootstraps over "
               "problems): H1 is supported when the targeted ablation removes at least h1_min_relative_drop = %g of "
               "the baseline backtracking and at least that much more than every random draw (paired McNemar tests on "
               "completions that share their sampling seed), while adding at most max_collateral_nll = %g nats per "
               "token to the baseline text; it is not supported when the drop, or its advantage over some draw, is "
               "reliably below %g. H0 "
               "is supported when every tested set (targeted and each draw) reliably removes less than %g, and not "
               "supported when some set reliably removes more. H2 is supported when backtracking per opportunity "
               "(sentence ends in the thinking part of completions that reason) is at least h2_min_rate_ratio = %g "
               "times higher with <think> open than without, and not supported when the ratio's upper bound is below "
               "it. Anything else is inconclusive.\n\n",
               alpha, c.h1_min_relative_drop, c.max_collateral_nll, c.h1_min_relative_drop, c.h1_min_relative_drop,
               c.h2_min_rate_ratio);
    buf_printf(&md, "H3 (linear direction): %s\n\nSee \"Steering (H3)\" below.\n\n", verdict_names[h3]);

    // Backtracking per variant.
    buf_puts(&md, "## Backtracking by prompt format\n\n");
    if (have_formatting && formatting.n_rows) {
        buf_puts(&md,
                 "Whether a format makes the model reason at all (a thinking part with at least one sentence end to "
                 "backtrack after) is its own finding, beside H2; H2 compares backtracking per opportunity among the "
                 "completions that reason.\n\n");
        buf_puts(
            &md,
            "| variant | thinking open | completions | reason at all [95% CI] | events per opportunity [95% CI] | "
            "backtracking rate, all completions [95% CI] | events / 1k tokens [95% CI] | mean length | truncated | "
            "accuracy [95% CI] |\n|---|---|---|---|---|---|---|---|---|---|\n");
        for (int v = 0; v < formatting.n_rows; v++) {
            buf_printf(&md, "| %s | %s | %s | ", cell(&formatting, v, "variant"),
                       strcmp(cell(&formatting, v, "thinking_open"), "1") ? "no" : "yes",
                       cell(&formatting, v, "completions"));
            fmt_ci(&md, cell_num(&formatting, v, "reasoning_share"), cell_num(&formatting, v, "reasoning_ci_lo"),
                   cell_num(&formatting, v, "reasoning_ci_hi"));
            buf_puts(&md, " | ");
            if (cell_num(&formatting, v, "opportunities") > 0)
                fmt_ci(&md, cell_num(&formatting, v, "events_per_opportunity"), cell_num(&formatting, v, "epo_ci_lo"),
                       cell_num(&formatting, v, "epo_ci_hi"));
            else buf_puts(&md, "no opportunities");
            buf_puts(&md, " | ");
            fmt_ci(&md, cell_num(&formatting, v, "backtracking_rate"), cell_num(&formatting, v, "rate_ci_lo"),
                   cell_num(&formatting, v, "rate_ci_hi"));
            buf_puts(&md, " | ");
            fmt_ci(&md, cell_num(&formatting, v, "events_per_1k_tokens"),
                   cell_num(&formatting, v, "events_per_1k_ci_lo"), cell_num(&formatting, v, "events_per_1k_ci_hi"));
            buf_printf(&md, " | %.1f | %s | ", cell_num(&formatting, v, "mean_length"),
                       cell(&formatting, v, "truncated"));
            fmt_ci(&md, cell_num(&formatting, v, "accuracy"), cell_num(&formatting, v, "accuracy_ci_lo"),
                   cell_num(&formatting, v, "accuracy_ci_hi"));
            buf_puts(&md, " |\n");
        }
        buf_printf(&md,
                   "\nChi-square of the backtracking rate over all completions across the variants: %.3g (df %d), p = ",
                   cell_num(&formatting, 0, "chi2_stat"), (int)cell_num(&formatting, 0, "chi2_df"));
        fmt_p(&md, cell_num(&formatting, 0, "chi2_p"));
        buf_puts(&md, " (descriptive: it mixes whether a format reasons with how often it backtracks).\n");
    } else {
        buf_puts(&md, "No formatting sweep in this run.\n");
    }
    static const char *const figures[][2] = {
        {FIG_RATE_BY_VARIANT, "Backtracking rate by prompt variant"},
        {FIG_FORMATTING, "Effect of format on backtracking"},
        {FIG_BT_VS_ACCURACY, "Accuracy with and without backtracking"},
    };
    for (int i = 0; i < 3; i++) {
        relative_to(report_dir, c.figures_dir, fig, sizeof fig);
        buf_printf(&md, "\n![%s](%s/%s)\n", figures[i][1], fig, figures[i][0]);
    }

    // Logit lens.
    buf_puts(&md, "\n## Logit lens\n\n");
    if (have_lens && lens.n_rows) {
        int n_layers = 0;
        for (int row = 0; row < lens.n_rows; row++)
            if ((int)cell_num(&lens, row, "layer") > n_layers) n_layers = (int)cell_num(&lens, row, "layer");
        double *sum = xcalloc((size_t)(2 * (n_layers + 1)), sizeof *sum);
        int *cnt = xcalloc((size_t)(2 * (n_layers + 1)), sizeof *cnt);
        for (int row = 0; row < lens.n_rows; row++) {
            int l = (int)cell_num(&lens, row, "layer"), ctl = strcmp(cell(&lens, row, "kind"), "control") == 0;
            double lp = cell_num(&lens, row, "logprob");
            if (l < 0 || l > n_layers || lp != lp) continue;
            sum[2 * l + ctl] += lp;
            cnt[2 * l + ctl]++;
        }
        int jump = -1;
        double best = -INFINITY;
        buf_puts(&md, "Mean log p of the onset token at pred_pos, reading the residual stream after each block through "
                      "the final norm and unembedding (layer 0 = embeddings).\n\n");
        buf_puts(&md, "| layer | events | controls |\n|---|---|---|\n");
        for (int l = 0; l <= n_layers; l++) {
            double e = cnt[2 * l] ? sum[2 * l] / cnt[2 * l] : NAN,
                   k = cnt[2 * l + 1] ? sum[2 * l + 1] / cnt[2 * l + 1] : NAN;
            buf_printf(&md, "| %d | %.3f | %.3f |\n", l, e, k);
            if (l > 0 && cnt[2 * l] && cnt[2 * l - 2]) {
                double rise = e - sum[2 * l - 2] / cnt[2 * l - 2];
                if (rise > best) { best = rise; jump = l; }
            }
        }
        if (jump > 0)
            buf_printf(&md, "\nThe events' curve rises most after block %d (layer %d to %d: %+.3f nats).\n", jump - 1,
                       jump - 1, jump, best);
        free(sum);
        free(cnt);
    } else {
        buf_puts(&md, "The logit lens has not run in this run.\n");
    }
    relative_to(report_dir, c.figures_dir, fig, sizeof fig);
    buf_printf(&md, "\n![Logit lens: events vs controls](%s/%s)\n", fig, FIG_LOGIT_LENS);

    // Ablation scan.
    buf_puts(&md, "\n## Ablation scan\n\n");
    if (have_scan && scan.n_rows) {
        int onset = strcmp(cell(&scan, 0, "scope"), "onset") == 0;
        buf_printf(&md,
                   "Drop in log p(onset) at pred_pos when one component is ablated (%s ablation, scope %s: %s), mean "
                   "over %s events and %s position-matched controls [95%% CI, bootstrap over problems]. Ranked within "
                   "each component by specificity, the drop on events minus the drop on controls, so a component whose "
                   "ablation breaks everything does not rank first; the top %d attention and %d MLP layers are "
                   "selected.",
                   cell(&scan, 0, "kind"), cell(&scan, 0, "scope"),
                   onset ? "ablated only at pred_pos" : "ablated at every position, as in generation",
                   cell(&scan, 0, "n_events"), cell(&scan, 0, "n_controls"), c.top_k_attn, c.top_k_mlp);
        if (onset)
            buf_puts(&md,
                     " Note: the scan ablated only at pred_pos, while the targeted and random generations ablate at "
                     "every position: the layers were selected under a different intervention from the one tested.");
        const char *method = scan_method(&scan, have_scan);
        if (strcmp(method, "exact"))
            buf_printf(&md, " Method %s: %s.", method,
                       strcmp(method, "attribution")
                               ? "every component estimated by attribution patching, the largest "
                                 "estimates of each kind ablated exactly; a component's numbers are exact "
                                 "where it was, estimates otherwise, and the exact ones rank first"
                               : "every component estimated by attribution patching, none ablated exactly");
        buf_puts(&md, "\n\n| rank | component | layer | specificity [95% CI] | drop on events [95% CI] | drop on "
                      "controls [95% CI] | "
                      "measured | selected |\n|---|---|---|---|---|---|---|---|\n");
        for (int rank = 1; rank <= 5; rank++)
            for (int row = 0; row < scan.n_rows; row++) {
                if ((int)cell_num(&scan, row, "rank") != rank) continue;
                buf_printf(&md, "| %d | %s | %s | ", rank, cell(&scan, row, "component"), cell(&scan, row, "layer"));
                fmt_ci(&md, cell_num(&scan, row, "specificity"), cell_num(&scan, row, "specificity_ci_lo"),
                       cell_num(&scan, row, "specificity_ci_hi"));
                buf_puts(&md, " | ");
                fmt_ci(&md, cell_num(&scan, row, "mean_drop_events"), cell_num(&scan, row, "ci_lo_events"),
                       cell_num(&scan, row, "ci_hi_events"));
                buf_puts(&md, " | ");
                fmt_ci(&md, cell_num(&scan, row, "mean_drop_controls"), cell_num(&scan, row, "ci_lo_controls"),
                       cell_num(&scan, row, "ci_hi_controls"));
                buf_printf(&md, " | %s | %s |\n",
                           strcmp(cell(&scan, row, "method"), "attribution") ? "exact" : "estimate",
                           strcmp(cell(&scan, row, "selected"), "1") ? "" : "yes");
            }
    } else {
        buf_puts(&md, "The ablation scan has not run in this run.\n");
    }
    buf_printf(&md, "\n![Ablation importance by layer](%s/%s)\n", fig, FIG_ABLATION);
    put_attribution_section(&md, &scan, have_scan, &heads, have_heads, fig);

    // Conditions.
    buf_puts(&md, "\n## Targeted vs random ablation\n\n");
    if (have_conditions && conditions.n_rows) {
        buf_puts(&md,
                 "Each condition regenerates the same problems with the same sampling seeds as the baseline, so the "
                 "tests pair completions (McNemar, one-sided: the ablation lowers backtracking). Relative drop = 1 - "
                 "rate / baseline rate; collateral = the increase in negative log-likelihood per token of the baseline "
                 "completions (trigger onsets left out) under that ablation.\n\n");
        buf_puts(
            &md,
            "| condition | completions | backtracking rate [95% CI] | relative drop [95% CI] | McNemar p vs baseline "
            "| targeted advantage [95% CI] | collateral nats/token [95% CI] | events / 1k tokens [95% CI] | "
            "truncated | accuracy [95% CI] |\n|---|---|---|---|---|---|---|---|---|---|\n");
        for (int row = 0; row < conditions.n_rows; row++) {
            buf_printf(&md, "| %s | %s | ", cell(&conditions, row, "condition"), cell(&conditions, row, "completions"));
            fmt_ci(&md, cell_num(&conditions, row, "backtracking_rate"), cell_num(&conditions, row, "rate_ci_lo"),
                   cell_num(&conditions, row, "rate_ci_hi"));
            buf_puts(&md, " | ");
            fmt_ci(&md, cell_num(&conditions, row, "relative_drop_vs_baseline"),
                   cell_num(&conditions, row, "drop_ci_lo"), cell_num(&conditions, row, "drop_ci_hi"));
            buf_puts(&md, " | ");
            fmt_p(&md, cell_num(&conditions, row, "p_vs_baseline"));
            buf_puts(&md, " | ");
            fmt_ci(&md, cell_num(&conditions, row, "targeted_advantage"), cell_num(&conditions, row, "advantage_ci_lo"),
                   cell_num(&conditions, row, "advantage_ci_hi"));
            buf_puts(&md, " | ");
            fmt_ci(&md, cell_num(&conditions, row, "collateral_nll"), cell_num(&conditions, row, "collateral_ci_lo"),
                   cell_num(&conditions, row, "collateral_ci_hi"));
            buf_puts(&md, " | ");
            fmt_ci(&md, cell_num(&conditions, row, "events_per_1k_tokens"),
                   cell_num(&conditions, row, "events_per_1k_ci_lo"),
                   cell_num(&conditions, row, "events_per_1k_ci_hi"));
            buf_printf(&md, " | %s (%.0f%%) | ", cell(&conditions, row, "truncated"),
                       100 * cell_num(&conditions, row, "truncated_share"));
            fmt_ci(&md, cell_num(&conditions, row, "accuracy"), cell_num(&conditions, row, "accuracy_ci_lo"),
                   cell_num(&conditions, row, "accuracy_ci_hi"));
            buf_puts(&md, " |\n");
        }
        for (int d = 0; d <= c.random_draws; d++) {
            LayerSet set = {0};
            Err ignored_err;
            if (ablation_design_read(&run, 1 << 20, d, &set, &ignored_err)) continue;
            buf_printf(&md, "%s", d ? "; " : "\nLayers ablated: targeted: attention ");
            if (d) buf_printf(&md, "random draw %d: attention ", d);
            for (int i = 0; i < set.n_attn; i++) buf_printf(&md, "%s%d", i ? ", " : "", set.attn_layers[i]);
            buf_puts(&md, ", MLP ");
            for (int i = 0; i < set.n_mlp; i++) buf_printf(&md, "%s%d", i ? ", " : "", set.mlp_layers[i]);
            if (set.n_attn_heads) buf_puts(&md, ", heads ");
            for (int i = 0; i < set.n_attn_heads; i++)
                buf_printf(&md, "%s%d.%d", i ? ", " : "", set.attn_heads[2 * i], set.attn_heads[2 * i + 1]);
            layer_set_free(&set);
        }
        buf_puts(&md, " (random draws shape-matched, drawn from the run seed among the other layers).\n");
    } else {
        buf_puts(&md, "No condition comparison in this run.\n");
    }
    buf_printf(&md, "\n![Backtracking rate by condition](%s/%s)\n", fig, FIG_RATE_BY_CONDITION);
    steering_section(&run, &sweep, have_sweep, fig, &md, h3, h3_why.data ? h3_why.data : "");

    // Limitations.
    int n_completions = 0;
    for (int v = 0; have_formatting && v < formatting.n_rows; v++)
        n_completions += (int)cell_num(&formatting, v, "completions");
    char sampling[128] = "as the model's generation_config.json says";
    int sampling_obj = json_key(&meta, 0, "sampling");
    double temperature, top_p;
    long long top_k;
    if (json_number(&meta, json_key(&meta, sampling_obj, "temperature"), &temperature) == 0 &&
        json_int(&meta, json_key(&meta, sampling_obj, "top_k"), &top_k) == 0 &&
        json_number(&meta, json_key(&meta, sampling_obj, "top_p"), &top_p) == 0)
        snprintf(sampling, sizeof sampling, "temperature %g, top-k %lld, top-p %g", temperature, top_k, top_p);
    buf_printf(
        &md,
        "\n## Limitations\n\n"
        "Sample size: %d problems x %d samples per prompt variant (%d baseline completions in all); intervals are "
        "95%% (Wilson for single rates, percentile bootstrap over problems with %d resamples for everything else) "
        "and the three hypothesis tests are one-sided and Holm-corrected at alpha = %g. "
        "Single model: %s; what holds for it need not hold for other checkpoints or sizes. "
        "Sampling: %s, at most %d new tokens, so long chains of thought may be cut off and late backtracking "
        "missed (the truncated completions are counted in the tables). "
        "Events are found lexically (%d triggers, case-sensitive, whole words, before </think>), so a backtrack "
        "phrased otherwise is not counted and a trigger word used plainly is. "
        "The ablation scan used %s ablation with scope %s on at most %d events (method %s); zero ablation can "
        "remove more than a component's specific contribution, which is why the collateral damage is "
        "measured.\n",
        c.n_problems, c.samples_per_problem, n_completions, STAT_RESAMPLES, alpha, model_id, sampling, c.max_new_tokens,
        c.n_triggers, c.ablation_kind == ABLATE_MEAN ? "mean" : "zero",
        c.ablation_scope == SCOPE_ONSET ? "onset" : "all", c.ablation_max_events, scan_method(&scan, have_scan));
    buf_puts(&md, "\n## Configuration\n\n```ini\n");
    if (resolved.data) buf_append(&md, resolved.data, resolved.len);
    buf_puts(&md, "```\n");
    if (write_file_atomic(c.report_path, md.data, md.len, &err) == 0) {
        printf("make-report: %s\n", c.report_path);
        for (int k = 0; k < 3; k++) printf("  %s: %s\n", hyp[k].name, verdict_names[hyp[k].verdict]);
    }
    for (int k = 0; k < 3; k++) hypothesis_free(&hyp[k]);
    if (!err.msg[0]) printf("  H3 (linear direction): %s\n", verdict_names[h3]);
    buf_free(&h3_why);
out:
    csv_free(&sweep);
    buf_free(&h3_why);
    csv_free(&conditions);
    csv_free(&formatting);
    csv_free(&scan);
    csv_free(&lens);
    csv_free(&heads);
    json_free(&meta);
    buf_free(&meta_text);
    buf_free(&resolved);
    buf_free(&md);
    config_free(&c);
    return err.msg[0] ? fail(&err) : 0;
}
