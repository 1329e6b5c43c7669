// io.c: errors, memory, byte buffers, whole-file writes, JSON reading and
// writing, CSV writing. The one place that knows how bytes reach the disk.
#include "bt.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

// ----------------------------------------------------------------------------
// Errors

static int err_set(Err *err, int code, const char *fmt, va_list ap) {
    if (err) {
        err->code = code;
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    }
    return -1;
}

int err_input(Err *err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    err_set(err, EXIT_BAD_INPUT, fmt, ap);
    va_end(ap);
    return -1;
}

int err_runtime(Err *err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    err_set(err, EXIT_RUNTIME, fmt, ap);
    va_end(ap);
    return -1;
}

// ----------------------------------------------------------------------------
// Memory

static void out_of_memory(size_t n) {
    fprintf(stderr, "bt: out of memory allocating %zu bytes\n", n);
    exit(EXIT_RUNTIME);
}

void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) out_of_memory(n);
    return p;
}

// Aligned to and rounded up to HUGE_PAGE_BYTES, and advised as transparent huge pages (a
// no-op where the kernel has none): a stream through gigabytes of weights then walks one page
// table entry per 2 MB instead of per 4 KB, and reads measurably faster. Free with free().
void *xmalloc_huge(size_t n) {
    size_t bytes = (n / HUGE_PAGE_BYTES + 1) * HUGE_PAGE_BYTES; // whole pages, never 0
    void *p = NULL;
    if (posix_memalign(&p, HUGE_PAGE_BYTES, bytes) != 0) out_of_memory(bytes);
#ifdef MADV_HUGEPAGE
    madvise(p, bytes, MADV_HUGEPAGE);
#endif
    return p;
}

void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) out_of_memory(n * size);
    return p;
}

void *xrealloc(void *p, size_t n) {
    p = realloc(p, n ? n : 1);
    if (!p) out_of_memory(n);
    return p;
}

char *xstrndup(const char *s, size_t n) {
    char *d = xmalloc(n + 1);
    memcpy(d, s, n);
    d[n] = 0;
    return d;
}

char *xstrdup(const char *s) { return xstrndup(s, strlen(s)); }

int cmp_int_asc(const void *a, const void *b) {
    return (*(const int *)a > *(const int *)b) - (*(const int *)a < *(const int *)b);
}

double now_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

uint64_t fnv1a64(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ULL;
    return h;
}

// ----------------------------------------------------------------------------
// Byte buffers

static void buf_reserve(Buf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1) cap *= 2;
    b->data = xrealloc(b->data, cap);
    b->cap = cap;
}

void buf_append(Buf *b, const void *p, size_t n) {
    buf_reserve(b, n);
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = 0;
}

void buf_puts(Buf *b, const char *s) { buf_append(b, s, strlen(s)); }
void buf_putc(Buf *b, char c) { buf_append(b, &c, 1); }

void buf_printf(Buf *b, const char *fmt, ...) {
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof small) {
        buf_append(b, small, (size_t)n);
        return;
    }
    buf_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void buf_utf8(Buf *b, uint32_t cp) {
    char u[4];
    int n;
    if (cp < 0x80) { u[0] = (char)cp; n = 1; }
    else if (cp < 0x800) { u[0] = (char)(0xC0 | cp >> 6); u[1] = (char)(0x80 | (cp & 0x3F)); n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | cp >> 12);
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (char)(0xF0 | cp >> 18);
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    buf_append(b, u, (size_t)n);
}

void buf_free(Buf *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

void buf_json_string(Buf *b, const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    buf_putc(b, '"');
    for (size_t i = 0; i < n;) {
        unsigned c = u[i];
        if (c == '"' || c == '\\') {
            buf_putc(b, '\\');
            buf_putc(b, (char)c);
            i++;
        } else if (c < 0x20) {
            switch (c) {
            case '\n': buf_puts(b, "\\n"); break;
            case '\t': buf_puts(b, "\\t"); break;
            case '\r': buf_puts(b, "\\r"); break;
            case '\b': buf_puts(b, "\\b"); break;
            case '\f': buf_puts(b, "\\f"); break;
            default: buf_printf(b, "\\u%04x", c);
            }
            i++;
        } else if (c < 0x80) {
            buf_putc(b, (char)c);
            i++;
        } else {
            int len = utf8_char(u + i, n - i, NULL);
            if (len) {
                buf_append(b, u + i, (size_t)len);
                i += (size_t)len;
            } else {
                buf_puts(b, "\xEF\xBF\xBD"); // U+FFFD, as a lossy UTF-8 decode does
                i++;
            }
        }
    }
    buf_putc(b, '"');
}

void buf_json_double(Buf *b, double x) {
    if (!isfinite(x)) {
        buf_puts(b, "null");
        return;
    }
    char tmp[40];
    for (int prec = 1; prec <= 17; prec++) { // shortest form that reads back exactly
        snprintf(tmp, sizeof tmp, "%.*g", prec, x);
        if (strtod(tmp, NULL) == x) break;
    }
    buf_puts(b, tmp);
}

void buf_csv_field(Buf *b, const char *s, size_t n) {
    int quote = n > 0 && (s[0] == ' ' || s[n - 1] == ' ');
    for (size_t i = 0; i < n && !quote; i++)
        quote = s[i] == ',' || s[i] == '"' || s[i] == '\n' || s[i] == '\r';
    if (!quote) {
        buf_append(b, s, n);
        return;
    }
    buf_putc(b, '"');
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"') buf_putc(b, '"');
        buf_putc(b, s[i]);
    }
    buf_putc(b, '"');
}

// ----------------------------------------------------------------------------
// Files

int read_file(const char *path, Buf *out, Err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return err_input(err, "%s: cannot open: %s", path, strerror(errno));
    char chunk[65536];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0) buf_append(out, chunk, got);
    int bad = ferror(f), read_errno = errno; // EISDIR when path is a directory
    fclose(f);
    if (bad) return err_input(err, "%s: cannot read: %s", path, strerror(read_errno));
    if (!out->data) buf_append(out, "", 0);
    return 0;
}

int text_has_nul(const char *path, const Buf *text, Err *err) {
    const char *nul = memchr(text->data, 0, text->len);
    if (!nul) return 0;
    int line = 1;
    for (const char *q = text->data; q < nul; q++) line += *q == '\n';
    return err_input(err, "%s:%d: NUL byte in a text file", path, line);
}

int path_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

int path_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int mkdir_p(const char *path, Err *err) {
    char tmp[4096];
    size_t n = strlen(path);
    if (n == 0) return 0;
    if (n >= sizeof tmp) return err_input(err, "%s: path too long", path);
    memcpy(tmp, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (tmp[i] != '/' && tmp[i] != 0) continue;
        char saved = tmp[i];
        tmp[i] = 0;
        if (mkdir(tmp, 0777) != 0 && errno != EEXIST)
            return err_runtime(err, "%s: cannot create directory: %s", tmp, strerror(errno));
        tmp[i] = saved;
    }
    if (!path_is_dir(path)) return err_runtime(err, "%s: exists and is not a directory", path);
    return 0;
}

static int mkdir_parent(const char *path, Err *err) {
    const char *slash = strrchr(path, '/');
    if (!slash || slash == path) return 0;
    char dir[4096];
    size_t n = (size_t)(slash - path);
    if (n >= sizeof dir) return err_input(err, "%s: path too long", path);
    memcpy(dir, path, n);
    dir[n] = 0;
    return mkdir_p(dir, err);
}

static int write_all(int fd, const void *data, size_t n) {
    const char *p = data;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

// A writer killed between creating its temp file and renaming it leaves path.tmp.PID behind;
// the next whole write of path removes those whose process is gone (a live one may be writing).
static void remove_stale_temps(const char *path) {
    const char *slash = strrchr(path, '/'), *base = slash ? slash + 1 : path;
    char dir[4096];
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) : 1, slash ? path : ".");
    if (slash == path) snprintf(dir, sizeof dir, "/");
    DIR *d = opendir(dir);
    if (!d) return;
    size_t base_len = strlen(base);
    struct dirent *ent;
    while ((ent = readdir(d))) {
        const char *name = ent->d_name;
        if (strncmp(name, base, base_len) != 0 || strncmp(name + base_len, ".tmp.", 5) != 0) continue;
        char *end;
        long pid = strtol(name + base_len + 5, &end, 10);
        if (*end || pid <= 0 || pid == (long)getpid() || !(kill((pid_t)pid, 0) != 0 && errno == ESRCH)) continue;
        char stale[8192];
        snprintf(stale, sizeof stale, "%s/%s", dir, name);
        unlink(stale);
    }
    closedir(d);
}

int write_file_atomic(const char *path, const void *data, size_t n, Err *err) {
    if (mkdir_parent(path, err)) return -1;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0666);
    if (fd < 0) return err_runtime(err, "%s: cannot create: %s", tmp, strerror(errno));
    if (write_all(fd, data, n) != 0 || fsync(fd) != 0) {
        int e = errno;
        close(fd);
        unlink(tmp);
        return err_runtime(err, "%s: write failed: %s", path, strerror(e));
    }
    close(fd);
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return err_runtime(err, "%s: cannot rename into place: %s", path, strerror(e));
    }
    remove_stale_temps(path);
    return 0;
}

int append_durable(const char *path, const void *data, size_t n, Err *err) {
    if (mkdir_parent(path, err)) return -1;
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0666);
    if (fd < 0) return err_runtime(err, "%s: cannot open for append: %s", path, strerror(errno));
    if (write_all(fd, data, n) != 0 || fsync(fd) != 0) {
        int e = errno;
        close(fd);
        return err_runtime(err, "%s: append failed: %s", path, strerror(e));
    }
    close(fd);
    return 0;
}

int copy_file_atomic(const char *from, const char *to, Err *err) {
    Buf b = {0};
    int rc = read_file(from, &b, err);
    if (rc == 0) rc = write_file_atomic(to, b.data, b.len, err);
    buf_free(&b);
    return rc;
}

// ----------------------------------------------------------------------------
// JSON reading: recursive descent over the buffer, emitting jsmn-style spans.

#define JSON_MAX_DEPTH 256

typedef struct {
    Json *j;
    size_t i; // cursor
    int cap;  // allocated tokens
    Err *err;
} JsonParser;

int json_line(const Json *j, int t) {
    size_t end = t >= 0 && t < j->n_tok ? (size_t)j->tok[t].start : 0;
    int line = 1;
    for (size_t i = 0; i < end && i < j->len; i++) line += j->src[i] == '\n';
    return line;
}

static int jp_fail(JsonParser *p, const char *what) {
    int line = 1;
    for (size_t i = 0; i < p->i && i < p->j->len; i++) line += p->j->src[i] == '\n';
    return err_input(p->err, "%s:%d: invalid JSON: %s", p->j->name ? p->j->name : "<json>", line, what);
}

static void jp_skip_ws(JsonParser *p) {
    const char *s = p->j->src;
    while (p->i < p->j->len && (s[p->i] == ' ' || s[p->i] == '\t' || s[p->i] == '\n' || s[p->i] == '\r')) p->i++;
}

static int jp_new(JsonParser *p, JsonType type) {
    Json *j = p->j;
    if (j->n_tok == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 256;
        j->tok = xrealloc(j->tok, (size_t)p->cap * sizeof *j->tok);
    }
    JsonTok *t = &j->tok[j->n_tok];
    t->type = type;
    t->start = (int)p->i;
    t->end = t->start;
    t->size = 0;
    t->next = j->n_tok + 1;
    return j->n_tok++;
}

static int hex4(const char *s) {
    int v = 0;
    for (int k = 0; k < 4; k++) {
        char c = s[k];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= c - '0';
        else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
        else return -1;
    }
    return v;
}

static int jp_string(JsonParser *p) {
    const char *s = p->j->src;
    size_t n = p->j->len;
    p->i++; // opening quote
    int t = jp_new(p, JSON_STRING);
    while (p->i < n) {
        unsigned char c = (unsigned char)s[p->i];
        if (c == '"') {
            p->j->tok[t].end = (int)p->i;
            p->i++;
            p->j->tok[t].next = p->j->n_tok;
            return t;
        }
        if (c < 0x20) return jp_fail(p, "control character in string");
        if (c >= 0x80) { // JSON text is UTF-8 (RFC 8259)
            int len = utf8_char((const unsigned char *)s + p->i, n - p->i, NULL);
            if (!len) return jp_fail(p, "invalid UTF-8 in string");
            p->i += (size_t)len;
            continue;
        }
        if (c == '\\') {
            if (p->i + 1 >= n) break;
            char e = s[p->i + 1];
            if (e == 'u') {
                if (p->i + 6 > n || hex4(s + p->i + 2) < 0) return jp_fail(p, "bad \\u escape");
                p->i += 6;
                continue;
            }
            if (!strchr("\"\\/bfnrt", e) || e == 0) return jp_fail(p, "bad escape in string");
            p->i += 2;
            continue;
        }
        p->i++;
    }
    return jp_fail(p, "unterminated string");
}

static int jp_number(JsonParser *p) {
    const char *s = p->j->src;
    size_t n = p->j->len;
    int t = jp_new(p, JSON_NUMBER);
    if (p->i < n && s[p->i] == '-') p->i++;
    if (p->i >= n || s[p->i] < '0' || s[p->i] > '9') return jp_fail(p, "bad number");
    if (s[p->i] == '0') p->i++;
    else
        while (p->i < n && s[p->i] >= '0' && s[p->i] <= '9') p->i++;
    if (p->i < n && s[p->i] == '.') {
        p->i++;
        if (p->i >= n || s[p->i] < '0' || s[p->i] > '9') return jp_fail(p, "bad number");
        while (p->i < n && s[p->i] >= '0' && s[p->i] <= '9') p->i++;
    }
    if (p->i < n && (s[p->i] == 'e' || s[p->i] == 'E')) {
        p->i++;
        if (p->i < n && (s[p->i] == '+' || s[p->i] == '-')) p->i++;
        if (p->i >= n || s[p->i] < '0' || s[p->i] > '9') return jp_fail(p, "bad number");
        while (p->i < n && s[p->i] >= '0' && s[p->i] <= '9') p->i++;
    }
    p->j->tok[t].end = (int)p->i;
    return t;
}

static int jp_value(JsonParser *p, int depth) {
    const char *s = p->j->src;
    size_t n = p->j->len;
    jp_skip_ws(p);
    if (p->i >= n) return jp_fail(p, "unexpected end of input");
    if (depth > JSON_MAX_DEPTH) return jp_fail(p, "nested too deeply");
    char c = s[p->i];
    if (c == '{' || c == '[') {
        int is_obj = c == '{';
        int t = jp_new(p, is_obj ? JSON_OBJECT : JSON_ARRAY);
        p->i++;
        jp_skip_ws(p);
        if (p->i < n && s[p->i] == (is_obj ? '}' : ']')) {
            p->i++;
        } else {
            for (;;) {
                if (is_obj) {
                    jp_skip_ws(p);
                    if (p->i >= n || s[p->i] != '"') return jp_fail(p, "expected a string key");
                    if (jp_string(p) < 0) return -1;
                    jp_skip_ws(p);
                    if (p->i >= n || s[p->i] != ':') return jp_fail(p, "expected ':' after key");
                    p->i++;
                }
                if (jp_value(p, depth + 1) < 0) return -1;
                p->j->tok[t].size++;
                jp_skip_ws(p);
                if (p->i < n && s[p->i] == ',') {
                    p->i++;
                    continue;
                }
                if (p->i < n && s[p->i] == (is_obj ? '}' : ']')) {
                    p->i++;
                    break;
                }
                return jp_fail(p, is_obj ? "expected ',' or '}'" : "expected ',' or ']'");
            }
        }
        p->j->tok[t].end = (int)p->i;
        p->j->tok[t].next = p->j->n_tok;
        return t;
    }
    if (c == '"') return jp_string(p);
    if (c == '-' || (c >= '0' && c <= '9')) return jp_number(p);
    static const struct { const char *word; JsonType type; } literals[] = {
        {"true", JSON_BOOL}, {"false", JSON_BOOL}, {"null", JSON_NULL}};
    for (int k = 0; k < 3; k++) {
        size_t len = strlen(literals[k].word);
        if (p->i + len <= n && memcmp(s + p->i, literals[k].word, len) == 0) {
            int t = jp_new(p, literals[k].type);
            p->i += len;
            p->j->tok[t].end = (int)p->i;
            return t;
        }
    }
    return jp_fail(p, "unexpected character");
}

int json_parse(Json *j, const char *src, size_t len, const char *name, Err *err) {
    memset(j, 0, sizeof *j);
    j->src = src;
    j->len = len;
    j->name = name;
    if (len >= (size_t)1 << 31) return err_input(err, "%s: JSON text larger than 2 GB", name);
    JsonParser p = {j, 0, 0, err};
    if (jp_value(&p, 0) < 0) {
        json_free(j);
        return -1;
    }
    jp_skip_ws(&p);
    if (p.i != len) {
        jp_fail(&p, "trailing characters after the value");
        json_free(j);
        return -1;
    }
    return 0;
}

void json_free(Json *j) {
    free(j->tok);
    j->tok = NULL;
    j->n_tok = 0;
}

int json_string(const Json *j, int t, Buf *out) {
    if (t < 0 || t >= j->n_tok || j->tok[t].type != JSON_STRING) return -1;
    const char *s = j->src;
    int i = j->tok[t].start, end = j->tok[t].end;
    while (i < end) {
        int run = i;
        while (run < end && s[run] != '\\') run++;
        buf_append(out, s + i, (size_t)(run - i));
        i = run;
        if (i >= end) break;
        char e = s[i + 1];
        i += 2;
        switch (e) {
        case 'b': buf_putc(out, '\b'); break;
        case 'f': buf_putc(out, '\f'); break;
        case 'n': buf_putc(out, '\n'); break;
        case 'r': buf_putc(out, '\r'); break;
        case 't': buf_putc(out, '\t'); break;
        case 'u': {
            unsigned cp = (unsigned)hex4(s + i);
            i += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && i + 6 <= end && s[i] == '\\' && s[i + 1] == 'u') {
                int lo = hex4(s + i + 2);
                if (lo >= 0xDC00 && lo < 0xE000) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + ((unsigned)lo - 0xDC00);
                    i += 6;
                }
            }
            if (cp >= 0xD800 && cp < 0xE000) cp = 0xFFFD; // lone surrogate
            buf_utf8(out, cp);
            break;
        }
        default: buf_putc(out, e); // " \ /
        }
    }
    if (!out->data) buf_append(out, "", 0);
    return 0;
}

char *json_strdup(const Json *j, int t) {
    Buf b = {0};
    if (json_string(j, t, &b) < 0) return NULL;
    return b.data;
}

int json_eq(const Json *j, int t, const char *s) {
    if (t < 0 || t >= j->n_tok || j->tok[t].type != JSON_STRING) return 0;
    size_t n = strlen(s);
    const JsonTok *k = &j->tok[t];
    if (memchr(j->src + k->start, '\\', (size_t)(k->end - k->start)) == NULL)
        return (size_t)(k->end - k->start) == n && memcmp(j->src + k->start, s, n) == 0;
    Buf b = {0};
    json_string(j, t, &b);
    int eq = b.len == n && memcmp(b.data, s, n) == 0;
    buf_free(&b);
    return eq;
}

int json_key(const Json *j, int obj, const char *key) {
    if (obj < 0 || obj >= j->n_tok || j->tok[obj].type != JSON_OBJECT) return -1;
    JSON_FOR_OBJECT(j, obj, i, k)
        if (json_eq(j, k, key)) return k + 1;
    return -1;
}

int json_number(const Json *j, int t, double *out) {
    if (t < 0 || t >= j->n_tok || j->tok[t].type != JSON_NUMBER) return -1;
    char small[128];
    size_t n = (size_t)(j->tok[t].end - j->tok[t].start);
    char *tmp = n < sizeof small ? small : xmalloc(n + 1); // all of a long number: cutting it changes its value
    memcpy(tmp, j->src + j->tok[t].start, n);
    tmp[n] = 0;
    *out = strtod(tmp, NULL);
    if (tmp != small) free(tmp);
    return 0;
}

int json_int(const Json *j, int t, long long *out) {
    double d;
    if (json_number(j, t, &d) < 0 || d != floor(d) || fabs(d) > 9007199254740992.0) return -1;
    *out = (long long)d;
    return 0;
}

int json_bool(const Json *j, int t, int *out) {
    if (t < 0 || t >= j->n_tok || j->tok[t].type != JSON_BOOL) return -1;
    *out = j->src[j->tok[t].start] == 't';
    return 0;
}

// ----------------------------------------------------------------------------
// CSV reading (RFC 4180): the analysis tables written by earlier stages.

void csv_free(Csv *t) {
    for (int i = 0; i < (t->n_rows + 1) * t->n_cols; i++) free(t->cells[i]);
    free(t->cells);
    free(t->path);
    free(t->row_line);
    memset(t, 0, sizeof *t);
}

// Parses one record starting at *at; appends its fields to cells. Returns the field
// count, or -1 when a quoted field runs to the end of the file.
static int csv_record(const char *s, size_t n, size_t *at, char ***cells, int *n_cells, int *cap, int *line_no) {
    int fields = 0;
    size_t i = *at;
    for (;;) {
        Buf f = {0};
        if (i < n && s[i] == '"') {
            int closed = 0;
            i++;
            while (i < n) {
                if (s[i] == '"' && i + 1 < n && s[i + 1] == '"') { buf_putc(&f, '"'); i += 2; }
                else if (s[i] == '"') { i++; closed = 1; break; }
                else { if (s[i] == '\n') (*line_no)++; buf_putc(&f, s[i++]); }
            }
            if (!closed) {
                buf_free(&f);
                return -1;
            }
        }
        while (i < n && s[i] != ',' && s[i] != '\n' && s[i] != '\r') buf_putc(&f, s[i++]);
        if (!f.data) buf_append(&f, "", 0);
        if (*n_cells == *cap) { // grow geometrically: a cell at a time is quadratic under ASan and valgrind
            *cap = *cap ? 2 * *cap : 64;
            *cells = xrealloc(*cells, (size_t)*cap * sizeof **cells);
        }
        (*cells)[(*n_cells)++] = f.data;
        fields++;
        if (i < n && s[i] == ',') { i++; continue; }
        if (i < n && s[i] == '\r') i++;
        if (i < n && s[i] == '\n') i++;
        break;
    }
    *at = i;
    return fields;
}

int csv_read(const char *path, Csv *t, Err *err) {
    memset(t, 0, sizeof *t);
    Buf text = {0};
    if (read_file(path, &text, err)) return -1;
    size_t at = 0;
    int line_no = 1, n_cells = 0, cells_cap = 0, n_records = 0, lines_cap = 0;
    if (text.len == 0) {
        buf_free(&text);
        return err_input(err, "%s: empty file (no header)", path);
    }
    t->path = xstrdup(path);
    while (at < text.len) {
        int start_line = line_no;
        int got = csv_record(text.data, text.len, &at, &t->cells, &n_cells, &cells_cap, &line_no);
        line_no++;
        if (n_records == 0 && got > 0) t->n_cols = got;
        if (got != t->n_cols) {
            int cols = t->n_cols;
            for (int i = 0; i < n_cells; i++) free(t->cells[i]);
            t->n_rows = t->n_cols = 0;
            csv_free(t);
            buf_free(&text);
            if (got < 0)
                return err_input(err, "%s:%d: quoted field is not closed before the end of the file", path, start_line);
            return err_input(err, "%s:%d: %d fields, the header has %d", path, start_line, got, cols);
        }
        if (n_records == lines_cap) {
            lines_cap = lines_cap ? 2 * lines_cap : 64;
            t->row_line = xrealloc(t->row_line, (size_t)lines_cap * sizeof *t->row_line);
        }
        t->row_line[n_records++] = start_line;
    }
    t->n_rows = n_records - 1;
    buf_free(&text);
    return 0;
}

int csv_col(const Csv *t, const char *name) {
    for (int c = 0; c < t->n_cols; c++)
        if (strcmp(t->cells[c], name) == 0) return c;
    return -1;
}

const char *csv_cell(const Csv *t, int row, int col) {
    return t->cells[(size_t)(row + 1) * (size_t)t->n_cols + (size_t)col];
}

// ----------------------------------------------------------------------------
// Checked CSV cells: a cell that is not the number its column holds is an error
// naming the file, the row's line and the column, never a silent 0.

int csv_int(const Csv *t, int row, int col, long long lo, long long hi, long long *out, Err *err) {
    const char *s = csv_cell(t, row, col);
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi || isspace((unsigned char)*s))
        return err_input(err, "%s:%d: column '%s': '%.40s' is not an integer in [%lld, %lld]", t->path,
                         t->row_line[row + 1], t->cells[col], s, lo, hi);
    *out = v;
    return 0;
}

int csv_double(const Csv *t, int row, int col, double *out, Err *err) {
    const char *s = csv_cell(t, row, col);
    char *end;
    double v = strtod(s, &end);
    if (!*s || *end || isspace((unsigned char)*s) || !isfinite(v))
        return err_input(err, "%s:%d: column '%s': '%.40s' is not a finite number", t->path, t->row_line[row + 1],
                         t->cells[col], s);
    *out = v;
    return 0;
}

// ----------------------------------------------------------------------------
// Duplicate JSON keys: RFC 8259 leaves their meaning open (Python keeps the last, json_key
// finds the first), so a file that depends on one is refused where bt reads small objects.

static int json_same_string(const Json *j, int a, int b) {
    const JsonTok *x = &j->tok[a], *y = &j->tok[b];
    size_t nx = (size_t)(x->end - x->start), ny = (size_t)(y->end - y->start);
    if (!memchr(j->src + x->start, '\\', nx) && !memchr(j->src + y->start, '\\', ny))
        return nx == ny && memcmp(j->src + x->start, j->src + y->start, nx) == 0;
    Buf bx = {0}, by = {0};
    json_string(j, a, &bx);
    json_string(j, b, &by);
    int same = bx.len == by.len && memcmp(bx.data, by.data, bx.len) == 0;
    buf_free(&bx);
    buf_free(&by);
    return same;
}

int json_duplicate_key(const Json *j, int obj) {
    if (obj < 0 || obj >= j->n_tok || j->tok[obj].type != JSON_OBJECT) return -1;
    JSON_FOR_OBJECT(j, obj, i, k) {
        int earlier = obj + 1;
        for (int e = 0; e < i; e++, earlier = j->tok[earlier + 1].next)
            if (json_same_string(j, earlier, k)) return k;
    }
    return -1;
}

int json_unique_keys(const Json *j, int obj, Err *err) {
    int k = json_duplicate_key(j, obj);
    if (k < 0) return 0;
    char *name = json_strdup(j, k);
    const char *file = j->name ? j->name : "<json>";
    err_input(err, "%s:%d: key \"%.200s\" appears twice in one object", file, json_line(j, k), name);
    free(name);
    return -1;
}
