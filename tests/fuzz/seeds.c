// tests/fuzz/seeds.c: small seeds made from big real files at fuzz time (never stored in
// the repository). A real tokenizer.json is 7-17 MB and loads in 0.1 s; the fuzzer needs
// its normalizer, pre-tokenizer, decoder and added tokens in a file it can mutate quickly.
#include "fuzz.h"

#include <stdio.h>

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int kept(char **set, int n, const char *s) { return bsearch(&s, set, (size_t)n, sizeof *set, cmp_str) != NULL; }

// Bytes of the UTF-8 character at s[0], 0 if s holds more or less than one character.
static int one_char(const char *s) {
    size_t n = strlen(s);
    unsigned c = (unsigned char)s[0];
    size_t want = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
    return n == want;
}

typedef struct {
    int start, end; // span of the source replaced
    Buf text;       // by this
} Edit;

static int cmp_edit(const void *a, const void *b) { return ((const Edit *)a)->start - ((const Edit *)b)->start; }

// Writes tokenizer.json `in` to `out` with the vocab cut to ids below max_id plus every
// one-character token (the byte alphabet), the merges of kept tokens only, and the added
// tokens renumbered just above the kept ids (so per-id tables stay small).
int fuzz_shrink_tokenizer(const char *in, const char *out, int max_id) {
    Buf src = {0}, dst = {0};
    Json j;
    Err err = {0};
    if (read_file(in, &src, &err) || json_parse(&j, src.data, src.len, in, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        buf_free(&src);
        return -1;
    }
    int model = json_key(&j, 0, "model"), vocab = json_key(&j, model, "vocab"), merges = json_key(&j, model, "merges");
    int added = json_key(&j, 0, "added_tokens");
    if (vocab < 0 || merges < 0 || j.tok[vocab].type != JSON_OBJECT || j.tok[merges].type != JSON_ARRAY) {
        fprintf(stderr, "%s: no model.vocab object and model.merges array\n", in);
        json_free(&j);
        buf_free(&src);
        return -1;
    }
    Edit *edits =
        xcalloc((size_t)(2 + (added >= 0 && j.tok[added].type == JSON_ARRAY ? j.tok[added].size : 0)), sizeof *edits);
    int n_edits = 0;
    char **set = xmalloc((size_t)(j.tok[vocab].size + 1) * sizeof *set);
    int n_set = 0;
    long long top_id = -1;
    Edit *e = &edits[n_edits++];
    e->start = j.tok[vocab].start;
    e->end = j.tok[vocab].end;
    buf_putc(&e->text, '{');
    JSON_FOR_OBJECT(&j, vocab, i, k) {
        long long id;
        char *name = json_strdup(&j, k);
        if (json_int(&j, k + 1, &id) || !(id < max_id || one_char(name))) {
            free(name);
            continue;
        }
        if (n_set) buf_puts(&e->text, ", ");
        buf_append(&e->text, src.data + j.tok[k].start - 1, (size_t)(j.tok[k + 1].end - j.tok[k].start + 1));
        set[n_set++] = name;
        if (id > top_id) top_id = id;
    }
    buf_putc(&e->text, '}');
    qsort(set, (size_t)n_set, sizeof *set, cmp_str);
    e = &edits[n_edits++];
    e->start = j.tok[merges].start;
    e->end = j.tok[merges].end;
    buf_putc(&e->text, '[');
    int n_merges = 0;
    Buf left = {0}, right = {0};
    JSON_FOR_ARRAY(&j, merges, i, m) {
        left.len = right.len = 0;
        if (j.tok[m].type == JSON_STRING) {
            json_string(&j, m, &left);
            char *space = strchr(left.data, ' ');
            if (!space) continue;
            buf_puts(&right, space + 1);
            left.len = (size_t)(space - left.data);
            left.data[left.len] = 0;
        } else if (j.tok[m].type == JSON_ARRAY && j.tok[m].size == 2) {
            if (json_string(&j, m + 1, &left) || json_string(&j, j.tok[m + 1].next, &right)) continue;
        } else {
            continue;
        }
        Buf both = {0};
        buf_puts(&both, left.data);
        buf_puts(&both, right.data);
        int keep = kept(set, n_set, left.data) && kept(set, n_set, right.data) && kept(set, n_set, both.data);
        buf_free(&both);
        if (!keep) continue;
        if (n_merges++) buf_puts(&e->text, ", ");
        int quoted = j.tok[m].type == JSON_STRING;
        buf_append(&e->text, src.data + j.tok[m].start - quoted, (size_t)(j.tok[m].end - j.tok[m].start + 2 * quoted));
    }
    buf_putc(&e->text, ']');
    if (added >= 0 && j.tok[added].type == JSON_ARRAY) JSON_FOR_ARRAY(&j, added, i, a) {
        int v = json_key(&j, a, "id");
        if (v < 0) continue;
        e = &edits[n_edits++];
        e->start = j.tok[v].start;
        e->end = j.tok[v].end;
        buf_printf(&e->text, "%lld", top_id + 1 + i);
    }
    qsort(edits, (size_t)n_edits, sizeof *edits, cmp_edit);
    int at = 0;
    for (int k = 0; k < n_edits; k++) {
        buf_append(&dst, src.data + at, (size_t)(edits[k].start - at));
        buf_append(&dst, edits[k].text.data, edits[k].text.len);
        at = edits[k].end;
        buf_free(&edits[k].text);
    }
    buf_append(&dst, src.data + at, src.len - (size_t)at);
    int rc = write_file_atomic(out, dst.data, dst.len, &err);
    if (rc) fprintf(stderr, "%s\n", err.msg);
    for (int i = 0; i < n_set; i++) free(set[i]);
    free(set);
    free(edits);
    buf_free(&left);
    buf_free(&right);
    buf_free(&dst);
    json_free(&j);
    buf_free(&src);
    return rc;
}
