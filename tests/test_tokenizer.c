// tests/test_tokenizer.c: the tokenizer against Hugging Face's own encodings
// (../shared/tokenizers/*/expected.jsonl), hand-checked pre-tokenizer pieces, BPE
// and NFC cases on small tokenizer.json files written here, property tests
// (round trips, spans that tile the input) and malformed tokenizer.json files.
#include "test.h"

#include <stdio.h>
#include <stdlib.h>

// ----------------------------------------------------------------------------
// Helpers

// Spans start at 0, follow one another without gaps and end at len.
static int spans_tile(const TokenList *l, size_t len) {
    int at = 0;
    for (int k = 0; k < l->n; k++) {
        if (l->v[k].start != at || l->v[k].end < l->v[k].start) return 0;
        at = l->v[k].end;
    }
    return (size_t)at == len;
}

static int decode_equals(const Tokenizer *t, const TokenList *l, const char *want, size_t n) {
    int *ids = xmalloc(((size_t)l->n + 1) * sizeof *ids);
    for (int k = 0; k < l->n; k++) ids[k] = l->v[k].id;
    Buf b = {0};
    tokenizer_decode(t, ids, l->n, &b, NULL);
    int eq = b.len == n && memcmp(b.data, want, n) == 0;
    buf_free(&b);
    free(ids);
    return eq;
}

static Tokenizer *load_shared(const char *dir) {
    char rel[256];
    snprintf(rel, sizeof rel, "tokenizers/%s/tokenizer.json", dir);
    const char *path = shared_path(rel);
    if (!path) return NULL;
    Tokenizer *t = NULL;
    Err err = {0};
    CHECKF(tokenizer_load(&t, path, &err) == 0, "%s", err.msg);
    return t;
}


// ----------------------------------------------------------------------------
// Hugging Face's encodings: every line of every expected.jsonl

static void check_expected(const char *dir) {
    char rel[256];
    snprintf(rel, sizeof rel, "tokenizers/%s/expected.jsonl", dir);
    const char *exp_path = shared_path(rel);
    if (!exp_path) SKIP("../shared/tokenizers/%s/expected.jsonl is absent", dir);
    Tokenizer *t = load_shared(dir);
    if (!t) SKIP("../shared/tokenizers/%s/tokenizer.json is absent", dir);
    Buf src = {0}, text = {0}, decoded = {0}, want = {0};
    Err err = {0};
    CHECKF(read_file(exp_path, &src, &err) == 0, "%s", err.msg);
    int n_lines = 0, ids_wrong = 0, text_wrong = 0, spans_wrong = 0, nfc_lines = 0;
    TokenList l = {0};
    for (size_t i = 0, line = 1; i < src.len; line++) {
        size_t e = i;
        while (e < src.len && src.data[e] != '\n') e++;
        Json j;
        if (json_parse(&j, src.data + i, e - i, exp_path, &err) != 0) {
            CHECKF(0, "%s line %zu: %s", exp_path, line, err.msg);
            break;
        }
        int jt = json_key(&j, 0, "text"), ji = json_key(&j, 0, "ids"), jd = json_key(&j, 0, "decoded");
        text.len = decoded.len = 0;
        json_string(&j, jt, &text);
        json_string(&j, jd, &decoded);
        int n_want = j.tok[ji].size, *ids = xmalloc(((size_t)n_want + 1) * sizeof *ids);
        JSON_FOR_ARRAY(&j, ji, k, v) {
            long long x;
            json_int(&j, v, &x);
            ids[k] = (int)x;
        }
        l.n = 0;
        CHECK(tokenizer_encode(t, text.data, text.len, &l, &err) == 0);
        int same = l.n == n_want;
        for (int k = 0; same && k < n_want; k++) same = l.v[k].id == ids[k];
        if (!same && ids_wrong++ < 3) {
            Buf got = {0};
            for (int k = 0; k < l.n && k < 40; k++) buf_printf(&got, "%d ", l.v[k].id);
            CHECKF(0, "%s line %zu: ids differ for %.80s: got %s(%d tokens, want %d)", dir, line, text.data, got.data,
                   l.n, n_want);
            buf_free(&got);
        }
        want.len = 0;
        tokenizer_decode(t, ids, n_want, &want, NULL);
        if ((want.len != decoded.len || memcmp(want.data, decoded.data, decoded.len) != 0) && text_wrong++ < 3)
            CHECKF(0, "%s line %zu: decode differs for %.80s", dir, line, text.data);
        int tiles = spans_tile(&l, text.len);
        int unchanged = text.len == decoded.len && memcmp(text.data, decoded.data, text.len) == 0;
        nfc_lines += !unchanged;
        for (int k = 0; tiles && unchanged && k < l.n; k++) { // each span holds exactly its token's bytes
            int nb;
            const char *b = tokenizer_token_bytes(t, l.v[k].id, &nb);
            tiles = b && nb == l.v[k].end - l.v[k].start && memcmp(b, text.data + l.v[k].start, (size_t)nb) == 0;
        }
        if (!tiles && spans_wrong++ < 3) CHECKF(0, "%s line %zu: spans wrong for %.80s", dir, line, text.data);
        free(ids);
        json_free(&j);
        n_lines++;
        i = e + 1;
    }
    CHECKF(n_lines > 600, "%s: only %d lines", dir, n_lines);
    CHECKF(ids_wrong == 0 && text_wrong == 0 && spans_wrong == 0,
           "%s: %d/%d lines with wrong ids, %d wrong decodes, %d wrong spans", dir, ids_wrong, n_lines, text_wrong,
           spans_wrong);
    CHECKF(strcmp(dir, "llama3_1") == 0 || nfc_lines > 0, "%s: no line exercises NFC", dir);
    tokens_free(&l);
    buf_free(&src);
    buf_free(&text);
    buf_free(&decoded);
    buf_free(&want);
    tokenizer_free(t);
}

static void t_tokenizer_expected_qwen3(void) { check_expected("qwen3"); }
static void t_tokenizer_expected_qwen2_5(void) { check_expected("qwen2_5"); }
static void t_tokenizer_expected_llama3_1(void) { check_expected("llama3_1"); }
static void t_tokenizer_expected_r1_distill(void) { check_expected("r1_distill_qwen_derived"); }

static void t_tokenizer_shared_api(void) {
    Tokenizer *t = load_shared("qwen3");
    if (!t) SKIP("../shared/tokenizers/qwen3 is absent");
    CHECK(tokenizer_vocab_size(t) == 151669);
    CHECK(tokenizer_find(t, "<think>", 7) == 151667);
    CHECK(!tokenizer_is_special(t, 151667));   // <think> is an added token, not a special one
    CHECK(tokenizer_is_special(t, 151643));    // <|endoftext|>
    CHECK(tokenizer_find(t, " Wait", 5) >= 0);
    int n;
    const char *b = tokenizer_token_bytes(t, tokenizer_find(t, " Wait", 5), &n);
    CHECK(b && n == 5 && memcmp(b, " Wait", 5) == 0);
    CHECK(tokenizer_token_bytes(t, -1, &n) == NULL && tokenizer_token_bytes(t, 151669, &n) == NULL);
    int ids[] = {151667, 198, 14190}, offsets[4];
    Buf out = {0};
    buf_puts(&out, "ab");
    tokenizer_decode(t, ids, 3, &out, offsets);
    CHECK(offsets[0] == 2 && offsets[1] == 9 && offsets[2] == 10 && offsets[3] == (int)out.len);
    CHECK(memcmp(out.data, "ab<think>\n", 10) == 0);
    buf_free(&out);
    tokenizer_free(t);
}

// ----------------------------------------------------------------------------
// Small tokenizer.json files written by the tests

static const char REGEX_QWEN[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
                                 "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char REGEX_LLAMA3[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
                                   "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

enum { PRE_QWEN, PRE_LLAMA3, PRE_GPT2 };

typedef struct {
    int nfc;
    int pre;                   // PRE_*
    int ignore_merges;
    int string_merges;         // merges as "a b" instead of ["a", "b"]
    const char *const *merges; // raw bytes: left, right, left, right, ..., NULL
    const char *const *extra;  // raw-byte vocab strings reached by no merge, NULL-terminated
    const char *added;         // JSON array of added tokens, NULL = none
} Synth;

// GPT-2's byte-level character for a byte.
static uint32_t byte_char(int b) {
    int next = 0x100;
    for (int c = 0; c < 256; c++) {
        int printable = (c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE;
        if (c == b) return printable ? (uint32_t)c : (uint32_t)next;
        if (!printable) next++;
    }
    return 0;
}

static void byte_level_json(Buf *out, const char *s, size_t n) {
    Buf u = {0};
    for (size_t i = 0; i < n; i++) buf_utf8(&u, byte_char((unsigned char)s[i]));
    buf_json_string(out, u.data ? u.data : "", u.len);
    buf_free(&u);
}

static const char *synth_write(const Synth *s) {
    static char path[1100];
    snprintf(path, sizeof path, "%s/tokenizer.json", test_tmpdir());
    const char *vocab[512];
    int n = 0;
    char bytes[256][2];
    for (int b = 0; b < 256; b++) {
        bytes[b][0] = (char)b;
        bytes[b][1] = 0;
    }
    Buf j = {0}, joined = {0};
    buf_puts(&j, "{\"version\": \"1.0\", \"added_tokens\": ");
    buf_puts(&j, s->added ? s->added : "[]");
    buf_printf(&j, ",\n\"normalizer\": %s,\n\"pre_tokenizer\": ", s->nfc ? "{\"type\": \"NFC\"}" : "null");
    const char *bl =
        "{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": false, \"use_regex\": %s}";
    if (s->pre == PRE_GPT2) {
        buf_printf(&j, bl, "true");
    } else {
        buf_puts(&j, "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": {\"Regex\": ");
        const char *re = s->pre == PRE_QWEN ? REGEX_QWEN : REGEX_LLAMA3;
        buf_json_string(&j, re, strlen(re));
        buf_puts(&j, "}, \"behavior\": \"Isolated\", \"invert\": false}, ");
        buf_printf(&j, bl, "false");
        buf_puts(&j, "]}");
    }
    buf_puts(&j, ",\n\"post_processor\": null, \"decoder\": {\"type\": \"ByteLevel\"},\n");
    buf_printf(
        &j,
        "\"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": null, \"ignore_merges\": %s,\n\"vocab\": {",
        s->ignore_merges ? "true" : "false");
    // vocab: the 256 bytes in byte order, then merge results in merge order, then extras
    Buf strings = {0}; // every vocab string, NUL-separated, so vocab[] can point into it after it stops growing
    for (int b = 0; b < 256; b++) vocab[n++] = bytes[b];
    for (int k = 0; s->merges && s->merges[k]; k += 2) {
        joined.len = 0;
        buf_puts(&joined, s->merges[k]);
        buf_puts(&joined, s->merges[k + 1]);
        buf_append(&strings, joined.data, joined.len + 1);
    }
    for (int k = 0; s->extra && s->extra[k]; k++) buf_append(&strings, s->extra[k], strlen(s->extra[k]) + 1);
    for (size_t at = 0; at < strings.len; at += strlen(strings.data + at) + 1) {
        int dup = 0;
        for (int v = 0; v < n && !dup; v++) dup = strcmp(vocab[v], strings.data + at) == 0 && (vocab[v][0] || v == 0);
        if (!dup) vocab[n++] = strings.data + at;
    }
    for (int v = 0; v < n; v++) {
        if (v) buf_puts(&j, ", ");
        byte_level_json(&j, vocab[v], v < 256 ? 1 : strlen(vocab[v]));
        buf_printf(&j, ": %d", v);
    }
    buf_puts(&j, "},\n\"merges\": [");
    for (int k = 0; s->merges && s->merges[k]; k += 2) {
        if (k) buf_puts(&j, ", ");
        if (s->string_merges) {
            Buf u = {0};
            for (int side = 0; side < 2; side++) {
                if (side) buf_putc(&u, ' ');
                for (const char *c = s->merges[k + side]; *c; c++) buf_utf8(&u, byte_char((unsigned char)*c));
            }
            buf_json_string(&j, u.data, u.len);
            buf_free(&u);
        } else {
            buf_putc(&j, '[');
            byte_level_json(&j, s->merges[k], strlen(s->merges[k]));
            buf_puts(&j, ", ");
            byte_level_json(&j, s->merges[k + 1], strlen(s->merges[k + 1]));
            buf_putc(&j, ']');
        }
    }
    buf_puts(&j, "]}}\n");
    Err err = {0};
    if (write_file_atomic(path, j.data, j.len, &err) != 0) CHECKF(0, "%s", err.msg);
    buf_free(&j);
    buf_free(&joined);
    buf_free(&strings);
    return path;
}

static Tokenizer *synth_load(const Synth *s) {
    Tokenizer *t = NULL;
    Err err = {0};
    const char *path = synth_write(s);
    CHECKF(tokenizer_load(&t, path, &err) == 0, "%s", err.msg);
    return t;
}

// Encodes text and checks the tokens' bytes are the '|'-separated pieces of want.
static void check_pieces(const Tokenizer *t, const char *text, const char *want) {
    TokenList l = {0};
    Err err = {0};
    CHECK(tokenizer_encode(t, text, strlen(text), &l, &err) == 0);
    Buf got = {0};
    for (int k = 0; k < l.n; k++) {
        int n;
        const char *b = tokenizer_token_bytes(t, l.v[k].id, &n);
        if (k) buf_putc(&got, '|');
        buf_append(&got, b, (size_t)n);
    }
    CHECKF(got.len == strlen(want) && memcmp(got.data, want, got.len) == 0, "'%s': got '%s', want '%s'", text,
           got.data ? got.data : "", want);
    CHECKF(spans_tile(&l, strlen(text)), "'%s': spans do not tile", text);
    buf_free(&got);
    tokens_free(&l);
}

// ----------------------------------------------------------------------------
// The pre-tokenizer: with ignore_merges and every expected piece in the vocab,
// each piece comes out as one token, so tokens show the regex's pieces.

static const char *const qwen_pieces[] = {"I",
                                          "'m",
                                          " ",
                                          " fine",
                                          "\n\n",
                                          " ok",
                                          "abc",
                                          "1",
                                          "2",
                                          "3",
                                          "x",
                                          "!!\n\n",
                                          "y",
                                          "a",
                                          " ,",
                                          " b",
                                          "end",
                                          "   ",
                                          "IT",
                                          "'S",
                                          "'ll",
                                          "'LL",
                                          "'ve",
                                          "'re",
                                          "'d",
                                          "'t",
                                          "'s",
                                          "s",
                                          "'x",
                                          "\xC2\xA0word",
                                          "\tx",
                                          "h\xC3\xA9llo",
                                          " w\xC3\xB6rld",
                                          "\xE4\xB8\xAD\xE6\x96\x87",
                                          "\xD9\xA1",
                                          "\xD9\xA2",
                                          " \n\n",
                                          " x",
                                          "!\r\n",
                                          " ...\n",
                                          "'\xC5\xBF",
                                          "\xE2\x80\x99s",
                                          " $",
                                          NULL};

static void t_tokenizer_pretok_qwen(void) {
    Synth s = {.pre = PRE_QWEN, .ignore_merges = 1, .extra = qwen_pieces};
    Tokenizer *t = synth_load(&s);
    if (!t) return;
    check_pieces(t, "I'm  fine\n\n  ok", "I|'m| | fine|\n\n| | ok");
    check_pieces(t, "abc123", "abc|1|2|3");
    check_pieces(t, "x!!\n\ny", "x|!!\n\n|y");
    check_pieces(t, "a , b", "a| ,| b");
    check_pieces(t, "end   ", "end|   ");
    check_pieces(t, "IT'S'll'LL've're'd't", "IT|'S|'ll|'LL|'ve|'re|'d|'t");
    check_pieces(t, "'x", "'x");                                      // not a contraction: ' then a letter
    check_pieces(t, "'\xC5\xBFx", "'\xC5\xBF|x");                     // U+017F LONG S folds to s under (?i)
    check_pieces(t, "\xC2\xA0word\tx", "\xC2\xA0word|\tx");           // NBSP and tab lead a word
    check_pieces(t, "h\xC3\xA9llo w\xC3\xB6rld", "h\xC3\xA9llo| w\xC3\xB6rld");
    check_pieces(t, "\xE4\xB8\xAD\xE6\x96\x87\xD9\xA1\xD9\xA2", "\xE4\xB8\xAD\xE6\x96\x87|\xD9\xA1|\xD9\xA2");
    check_pieces(t, "? \n\n x", "?| \n\n| x");                        // \s*[\r\n]+ stops after the run's last newline
    check_pieces(t, "!\r\n", "!\r\n");
    check_pieces(t, "x ...\n  $", "x| ...\n| | $");
    check_pieces(t, "x\xE2\x80\x99s", "x|\xE2\x80\x99s");            // U+2019 is no apostrophe: it leads the letters
    tokenizer_free(t);
}

static const char *const llama_pieces[] = {"abc",      "123", "45", "1", "12", " ", "x", "\xD9\xA1\xD9\xA2\xD9\xA3",
                                           "\xD9\xA4", NULL};

static void t_tokenizer_pretok_llama3(void) {
    Synth s = {.pre = PRE_LLAMA3, .ignore_merges = 1, .extra = llama_pieces};
    Tokenizer *t = synth_load(&s);
    if (!t) return;
    check_pieces(t, "abc12345", "abc|123|45");
    check_pieces(t, "1 12", "1| |12");
    check_pieces(t, "\xD9\xA1\xD9\xA2\xD9\xA3\xD9\xA4",
                 "\xD9\xA1\xD9\xA2\xD9\xA3|\xD9\xA4"); // Arabic-Indic digits are \p{N}
    tokenizer_free(t);
}

static const char *const gpt2_pieces[] = {"Hello", " ", " world", "abc", "123", "x",  "!!",
                                          "\n",    "y", "'S",     "S",   " 12", "'s", NULL};

static void t_tokenizer_pretok_gpt2(void) {
    Synth s = {.pre = PRE_GPT2, .ignore_merges = 1, .extra = gpt2_pieces};
    Tokenizer *t = synth_load(&s);
    if (!t) return;
    check_pieces(t, "Hello  world", "Hello| | world");
    check_pieces(t, "abc123 12", "abc|123| 12");
    check_pieces(t, "x!!\n\ny", "x|!!|\n|\n|y");
    check_pieces(t, "'S's", "'|S|'s"); // GPT-2's contractions are case-sensitive
    tokenizer_free(t);
}

// ----------------------------------------------------------------------------
// BPE, merges, ignore_merges, added tokens

static const char *const hello_merges[] = {"l", "l", "h", "e", "he", "ll", "hell", "o", " ", "w", " w", "o", NULL};

static void t_tokenizer_bpe_merges(void) {
    for (int form = 0; form < 2; form++) { // both JSON merge forms
        Synth s = {.pre = PRE_QWEN, .merges = hello_merges, .string_merges = form};
        Tokenizer *t = synth_load(&s);
        if (!t) return;
        check_pieces(t, "hello", "hello");
        check_pieces(t, "hellohell", "hello|hell");
        check_pieces(t, "hel", "he|l");
        check_pieces(t, "hello wo", "hello| wo");
        check_pieces(t, "ohell", "o|hell");
        tokenizer_free(t);
    }
    // Rank decides, not position: (e, l) before (h, e) leaves "h" alone.
    static const char *const ranked[] = {"e", "l", "h", "e", NULL};
    Synth s = {.pre = PRE_QWEN, .merges = ranked};
    Tokenizer *t = synth_load(&s);
    if (!t) return;
    check_pieces(t, "hel", "h|el");
    check_pieces(t, "hehe", "he|he");
    tokenizer_free(t);
}

static void t_tokenizer_ignore_merges(void) {
    static const char *const extra[] = {"abc", NULL};
    static const char *const merges[] = {"a", "b", NULL};
    for (int ignore = 0; ignore < 2; ignore++) {
        Synth s = {.pre = PRE_QWEN, .ignore_merges = ignore, .merges = merges, .extra = extra};
        Tokenizer *t = synth_load(&s);
        if (!t) return;
        check_pieces(t, "abc", ignore ? "abc" : "ab|c"); // no merge reaches "abc"; only ignore_merges finds it whole
        check_pieces(t, "abcd", "ab|c|d");
        tokenizer_free(t);
    }
}

static void t_tokenizer_added_tokens(void) {
    const char *added =
        "[{\"id\": 300, \"content\": \"<|a|>\", \"special\": true, \"normalized\": false},"
        " {\"id\": 301, \"content\": \"<|a|>b\", \"special\": false, \"normalized\": false},"
        " {\"id\": 302, \"content\": \"<think>\", \"special\": false, \"normalized\": false},"
        " {\"id\": 303, \"content\": \"<mask>\", \"special\": true, \"lstrip\": true, \"rstrip\": true, "
        "\"normalized\": false},"
        " {\"id\": 304, \"content\": \"\xEF\xBD\x9C\", \"special\": true, \"normalized\": false},"
        " {\"id\": 305, \"content\": \"Wait\", \"special\": false, \"normalized\": true, \"single_word\": true}]";
    Synth s = {.pre = PRE_QWEN, .merges = hello_merges, .added = added};
    Tokenizer *t = synth_load(&s);
    if (!t) return;
    CHECK(tokenizer_vocab_size(t) == 306);
    check_pieces(t, "x<|a|>b<|a|>", "x|<|a|>b|<|a|>");            // leftmost-longest
    check_pieces(t, "hello<think>\nhello", "hello|<think>|\n|hello");
    check_pieces(t, "a <mask> b", "a|<mask>|b");                   // lstrip and rstrip take the spaces (spans below)
    check_pieces(t, "\xEF\xBD\x9C" "hello", "\xEF\xBD\x9C|hello");  // decodes as its UTF-8 content
    check_pieces(t, "Wait, xWait", "Wait|,| |x|W|a|i|t");          // single_word: not inside a word
    CHECK(tokenizer_is_special(t, 300) && !tokenizer_is_special(t, 301) && !tokenizer_is_special(t, 305));
    CHECK(tokenizer_find(t, "<|a|>b", 6) == 301);
    CHECK(tokenizer_find(t, "hello", 5) >= 256);
    CHECK(tokenizer_find(t, "zz", 2) == -1);
    TokenList l = {0};
    Err err = {0};
    const char *text = "a <mask> b";
    CHECK(tokenizer_encode(t, text, strlen(text), &l, &err) == 0);
    CHECK(l.n == 3 && l.v[1].id == 303 && l.v[1].start == 1 && l.v[1].end == 9);
    int n;
    const char *b = tokenizer_token_bytes(t, 303, &n);
    CHECK(b && n == 6 && memcmp(b, "<mask>", 6) == 0); // decodes as its content, without the spaces
    tokens_free(&l);
    tokenizer_free(t);
}

// ----------------------------------------------------------------------------
// NFC

static void check_nfc(const Tokenizer *t, const char *in, const char *want) {
    TokenList l = {0};
    Err err = {0};
    CHECK(tokenizer_encode(t, in, strlen(in), &l, &err) == 0);
    CHECKF(decode_equals(t, &l, want, strlen(want)), "NFC of '%s'", in);
    CHECKF(spans_tile(&l, strlen(in)), "'%s': spans do not tile", in);
    tokens_free(&l);
}

static void t_tokenizer_nfc(void) {
    Synth s = {.nfc = 1, .pre = PRE_QWEN, .merges = hello_merges};
    Tokenizer *t = synth_load(&s);
    if (!t) return;
    check_nfc(t, "e\xCC\x81", "\xC3\xA9");                                  // e + U+0301 -> U+00E9
    check_nfc(t, "\xE2\x84\xAB", "\xC3\x85");                               // U+212B ANGSTROM SIGN -> U+00C5
    check_nfc(t, "\xE2\x84\xA6", "\xCE\xA9");                               // U+2126 OHM SIGN -> U+03A9
    check_nfc(t, "\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8", "\xEA\xB0\x81");   // jamo G A G -> U+AC01
    check_nfc(t, "\xEA\xB0\x80\xE1\x86\xA8", "\xEA\xB0\x81");               // U+AC00 + final G -> U+AC01
    check_nfc(t, "a\xCC\x81\xCC\x96", "\xC3\xA1\xCC\x96"); // a acute grave-below -> a-acute grave-below
    check_nfc(t, "x\xCC\x81\xCC\x96", "x\xCC\x96\xCC\x81");                 // marks sorted by ccc (220 before 230)
    check_nfc(t, "\xCD\x84", "\xCC\x88\xCC\x81");                           // U+0344 decomposes, never recomposes
    check_nfc(t, "\xC3\xA9 hello \xED\x95\x9C\xEA\xB5\xAD", "\xC3\xA9 hello \xED\x95\x9C\xEA\xB5\xAD"); // already NFC
    check_nfc(t, "\xCC\x81" "a", "\xCC\x81" "a");                           // a leading mark composes with nothing
    check_nfc(t, "\xE0\xA4\xA8\xE0\xA4\xBC", "\xE0\xA4\xA9");               // U+0928 U+093C -> U+0929
    check_nfc(t, "\xF0\x91\x82\x99\xF0\x91\x82\xBA", "\xF0\x91\x82\x9A");   // U+11099 U+110BA -> U+1109A (astral)
    check_nfc(t, "\xF0\xAF\xA0\x80", "\xE4\xB8\xBD");                       // U+2F800 -> U+4E3D (singleton)
    check_nfc(t, "\xE0\xA5\x98", "\xE0\xA4\x95\xE0\xA4\xBC");              // U+0958 is excluded from composition
    check_nfc(t,
              "e\xCC\x81\xFF"
              "e\xCC\x81",
              "\xC3\xA9\xFF\xC3\xA9"); // invalid byte stays, blocks nothing it should not
    // Spans stay in the original text: "ab e\u0301 c" -> the token that starts the changed block spans it.
    TokenList l = {0};
    Err err = {0};
    const char *text = "ab e\xCC\x81 c";
    CHECK(tokenizer_encode(t, text, strlen(text), &l, &err) == 0);
    CHECK(spans_tile(&l, strlen(text)));
    int found = 0;
    for (int k = 0; k < l.n; k++) found |= l.v[k].start == 3 && l.v[k].end >= 6;
    CHECKF(found, "no token spans the original e + U+0301 at [3, 6)");
    tokens_free(&l);
    tokenizer_free(t);
}

// ----------------------------------------------------------------------------
// Properties: random inputs round-trip and their spans tile the input

// A random string of code points from scripts the tokenizers meet, combining marks included.
static void random_unicode(Rng *r, Buf *b, int with_marks) {
    static const uint32_t ranges[][2] = {
        {0x20, 0x7E}, {'\n', '\n'}, {'\r', '\r'}, {'\t', '\t'}, {' ', ' '}, {'\'', '\''}, {0xA0, 0xFF},
        {0x391, 0x3C9}, {0x410, 0x44F}, {0x5D0, 0x5EA}, {0x627, 0x64A}, {0x660, 0x669}, {0x905, 0x939}, {0xE01, 0xE3A},
        {0x3000, 0x3003}, {0x3041, 0x3096}, {0x4E00, 0x9FFF}, {0xAC00, 0xD7A3}, {0x2002, 0x200D}, {0x2028, 0x2029},
        {0xFEFF, 0xFEFF}, {0x1F300, 0x1F64F}, {0x1F1E6, 0x1F1FF}, {0x20000, 0x2A6DF},
        // what NFC changes: marks, jamo, singletons, excluded and precomposed letters
        {0x300, 0x36F}, {0x1DC0, 0x1DFF}, {0x2126, 0x212B}, {0xF900, 0xFAD9}, {0x0958, 0x095F}, {0x1E00, 0x1EFF},
        {0x1100, 0x1112}, {0x1161, 0x1175}, {0x11A8, 0x11C2}, {0x2000, 0x2001}};
    int n_ranges = (int)(sizeof ranges / sizeof ranges[0]) - (with_marks ? 0 : 10);
    int len = (int)rng_below(r, 40);
    for (int k = 0; k < len; k++) {
        const uint32_t *g = ranges[rng_below(r, (uint64_t)n_ranges)];
        buf_utf8(b, g[0] + (uint32_t)rng_below(r, g[1] - g[0] + 1));
    }
}

static void round_trips(const Tokenizer *t, int nfc, const char *name) {
    Rng r;
    rng_seed(&r, 12345);
    TokenList l = {0}, l2 = {0};
    Err err = {0};
    Buf s = {0}, d = {0};
    int bad_tile = 0, bad_trip = 0, bad_stable = 0;
    for (int iter = 0; iter < 3000; iter++) {
        s.len = 0;
        if (iter % 2 == 0 && !nfc) { // random bytes, valid UTF-8 or not
            int len = (int)rng_below(&r, 32);
            for (int k = 0; k < len; k++)
                buf_putc(&s,
                         iter % 4 == 0 ? (char)rng_below(&r, 256) : " \n'aZ9\xC3\xA9\xE2\x80\x99"[rng_below(&r, 11)]);
        } else {
            random_unicode(&r, &s, 1);
        }
        if (!s.data) buf_append(&s, "", 0);
        l.n = 0;
        CHECK(tokenizer_encode(t, s.data, s.len, &l, &err) == 0);
        bad_tile += !spans_tile(&l, s.len);
        int *ids = xmalloc(((size_t)l.n + 1) * sizeof *ids);
        for (int k = 0; k < l.n; k++) ids[k] = l.v[k].id;
        d.len = 0;
        tokenizer_decode(t, ids, l.n, &d, NULL);
        if (!nfc) {
            bad_trip += d.len != s.len || memcmp(d.data, s.data, s.len) != 0;
        } else { // decode gives NFC(s): encoding it again gives the same ids and text
            l2.n = 0;
            CHECK(tokenizer_encode(t, d.data, d.len, &l2, &err) == 0);
            int same = l2.n == l.n;
            for (int k = 0; same && k < l.n; k++) same = l2.v[k].id == ids[k];
            bad_stable += !same;
        }
        free(ids);
    }
    // Valid Unicode with no combining marks, compatibility characters or jamo is already NFC.
    for (int iter = 0; nfc && iter < 1000; iter++) {
        s.len = 0;
        random_unicode(&r, &s, 0);
        if (!s.data) buf_append(&s, "", 0);
        l.n = 0;
        CHECK(tokenizer_encode(t, s.data, s.len, &l, &err) == 0);
        bad_tile += !spans_tile(&l, s.len);
        bad_trip += !decode_equals(t, &l, s.data, s.len);
    }
    CHECKF(bad_tile == 0, "%s: %d inputs whose spans do not tile", name, bad_tile);
    CHECKF(bad_trip == 0, "%s: %d inputs that do not round-trip", name, bad_trip);
    CHECKF(bad_stable == 0, "%s: %d inputs whose NFC encodes differently", name, bad_stable);
    tokens_free(&l);
    tokens_free(&l2);
    buf_free(&s);
    buf_free(&d);
}

static void t_tokenizer_round_trip_synthetic(void) {
    const char *added = "[{\"id\": 400, \"content\": \"<think>\", \"special\": false, \"normalized\": false}]";
    for (int pre = PRE_QWEN; pre <= PRE_GPT2; pre++) {
        for (int nfc = 0; nfc < 2; nfc++) {
            Synth s = {.nfc = nfc, .pre = pre, .merges = hello_merges, .added = added};
            Tokenizer *t = synth_load(&s);
            if (!t) return;
            round_trips(t, nfc, nfc ? "synthetic NFC" : "synthetic");
            tokenizer_free(t);
        }
    }
}

static void t_tokenizer_round_trip_shared(void) {
    static const char *const dirs[] = {"llama3_1", "qwen3"};
    int any = 0;
    for (int k = 0; k < 2; k++) {
        Tokenizer *t = load_shared(dirs[k]);
        if (!t) continue;
        any = 1;
        round_trips(t, k == 1, dirs[k]);
        tokenizer_free(t);
    }
    if (!any) SKIP("../shared/tokenizers is absent");
}

// ----------------------------------------------------------------------------
// Malformed tokenizer.json: exit code 2 and a message naming the file and the problem

static void t_tokenizer_malformed(void) {
    // The base file: the 256 byte tokens plus "ab" (id 256); each case changes one part.
    Buf bytes = {0};
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        byte_level_json(&bytes, &c, 1);
        buf_printf(&bytes, ": %d, ", b);
    }
    buf_puts(&bytes, "\"ab\": 256");
    const char *base_pre = "\"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false}, ";
    const char *base_dec = "\"decoder\": {\"type\": \"ByteLevel\"}, ";
    struct {
        const char *what;
        const char *file;        // the whole file, or NULL for the base file with the changes below
        const char *vocab_extra; // appended to the vocab
        const char *merges;      // the merges array
        const char *model_extra; // more model keys
        const char *top;         // top-level keys that replace the base ones of the same name
        const char *want;        // in the message; NULL = loads
    } cases[] = {
        {"valid", NULL, "", "[\"a b\", [\"a\", \"b\"]]", "", "", NULL},
        {"bad JSON", "{", 0, 0, 0, 0, "invalid JSON"},
        {"not an object", "[]", 0, 0, 0, 0, "must hold a JSON object"},
        {"WordPiece", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", 0, 0, 0, 0,
         "'WordPiece' is not supported"},
        {"merge names a missing token", NULL, "", "[\"a c\"]", "", "", "merge 1 names 'ac', which is not in the vocab"},
        {"merge part missing", NULL, "", "[\"a b\", [\"x\", \"zz\"]]", "", "", "merge 2 names 'zz'"},
        {"merge not two parts", NULL, "", "[\"a b c\"]", "", "", "not two tokens separated by one space"},
        {"merge wrong type", NULL, "", "[\"a b\", 7]", "", "", "merge 2 is a number"},
        {"merge array of three", NULL, "", "[[\"a\", \"b\", \"c\"]]", "", "", "array that is not two strings"},
        {"merges not an array", NULL, "", "{}", "", "", "model.merges is an object, expected an array"},
        {"duplicate id", NULL, ", \"zz\": 5", "[]", "", "", "vocab id 5 is given twice"},
        {"duplicate token", NULL, ", \"ab\": 257", "[]", "", "", "vocab token 'ab' appears twice"},
        {"id not an integer", NULL, ", \"zz\": \"7\"", "[]", "", "", "vocab id is a string, expected an integer id"},
        {"id fractional", NULL, ", \"zz\": 7.5", "[]", "", "", "vocab id is a number, expected an integer id"},
        {"id negative", NULL, ", \"zz\": -3", "[]", "", "", "vocab id -3 is out of range"},
        {"vocab not an object",
         "{\"model\": {\"type\": \"BPE\", \"vocab\": [], \"merges\": []}, \"pre_tokenizer\": {\"type\": \"ByteLevel\", "
         "\"add_prefix_space\": false}, \"decoder\": {\"type\": \"ByteLevel\"}}",
         0, 0, 0, 0, "model.vocab is an array, expected an object"},
        {"ignore_merges type", NULL, "", "[]", ", \"ignore_merges\": 1", "",
         "model.ignore_merges is a number, expected a boolean"},
        {"dropout", NULL, "", "[]", ", \"dropout\": 0.1", "", "dropout must be null"},
        {"added id twice", NULL, "", "[]", "",
         "\"added_tokens\": [{\"id\": 300, \"content\": \"<a>\"}, {\"id\": 300, \"content\": \"<b>\"}], ",
         "added token id 300 is given twice"},
        {"added id of another token", NULL, "", "[]", "", "\"added_tokens\": [{\"id\": 256, \"content\": \"<a>\"}], ",
         "already the id of a different vocab token"},
        {"added content wrong type", NULL, "", "[]", "", "\"added_tokens\": [{\"id\": 300, \"content\": 4}], ",
         "content is a number, expected a string"},
        {"added not an object", NULL, "", "[]", "", "\"added_tokens\": [3], ", "added_tokens[0] is a number"},
        {"normalizer", NULL, "", "[]", "", "\"normalizer\": {\"type\": \"Lowercase\"}, ",
         "normalizer type 'Lowercase' is not supported"},
        {"split regex", NULL, "", "[]", "",
         "\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": "
         "{\"Regex\": \"\\\\s+\"}, "
         "\"behavior\": \"Isolated\", \"invert\": false}, {\"type\": \"ByteLevel\", \"add_prefix_space\": false, "
         "\"use_regex\": false}]}, ",
         "Split regex '\\s+' is not one bt implements"},
        {"decoder", NULL, "", "[]", "", "\"decoder\": {\"type\": \"WordPiece\"}, ", "decoder.type is 'WordPiece'"},
        {"prefix space", NULL, "", "[]", "", "\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, ",
         "add_prefix_space=true is not supported"},
        {"key twice", NULL, "", "[]", ", \"type\": \"BPE\"", "", "key 'type' appears twice in one object"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        Buf j = {0};
        if (cases[c].file) buf_puts(&j, cases[c].file);
        else
            buf_printf(&j, "{%s%s%s\"model\": {\"type\": \"BPE\"%s, \"vocab\": {%s%s}, \"merges\": %s}}", cases[c].top,
                       strstr(cases[c].top, "\"pre_tokenizer\"") ? "" : base_pre,
                       strstr(cases[c].top, "\"decoder\"") ? "" : base_dec, cases[c].model_extra, bytes.data,
                       cases[c].vocab_extra, cases[c].merges);
        char path[1100];
        snprintf(path, sizeof path, "%s/tokenizer.json", test_tmpdir());
        Err err = {0};
        CHECK(write_file_atomic(path, j.data, j.len, &err) == 0);
        Tokenizer *t = NULL;
        int rc = tokenizer_load(&t, path, &err);
        if (!cases[c].want) {
            CHECKF(rc == 0 && t, "%s: %s", cases[c].what, err.msg);
        } else {
            CHECKF(rc == -1 && !t && err.code == EXIT_BAD_INPUT, "%s: loaded", cases[c].what);
            CHECKF(strstr(err.msg, path) && strstr(err.msg, cases[c].want), "%s: message '%s' lacks '%s'",
                   cases[c].what, err.msg, cases[c].want);
        }
        tokenizer_free(t);
        buf_free(&j);
    }
    Err err = {0};
    Tokenizer *t = NULL;
    CHECK(tokenizer_load(&t, "build/tmp/no/such/tokenizer.json", &err) == -1 && err.code == EXIT_BAD_INPUT &&
          strstr(err.msg, "cannot open"));
    buf_free(&bytes);
}

// Missing byte tokens make byte-level BPE impossible.
static void t_tokenizer_missing_byte(void) {
    const char *text = "{\"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false}, \"decoder\": "
                       "{\"type\": \"ByteLevel\"},"
                       " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}";
    char path[1100];
    snprintf(path, sizeof path, "%s/tokenizer.json", test_tmpdir());
    Err err = {0};
    CHECK(write_file_atomic(path, text, strlen(text), &err) == 0);
    Tokenizer *t = NULL;
    CHECK(tokenizer_load(&t, path, &err) == -1 && strstr(err.msg, "no token for byte 0x00"));
}

// Mutated tokenizer.json files either load (and then encode and decode) or fail
// with exit code 2 and a message naming the file; none crashes (run under ASan).
static void t_tokenizer_fuzz_load(void) {
    const char *added = "[{\"id\": 300, \"content\": \"<think>\", \"special\": true, \"normalized\": false},"
                        " {\"id\": 301, \"content\": \"W\\u00e9\", \"normalized\": true, \"lstrip\": true}]";
    for (int variant = 0; variant < 2; variant++) {
        Synth s = {.nfc = 1, .pre = variant ? PRE_LLAMA3 : PRE_GPT2, .ignore_merges = variant, .string_merges = variant,
                   .merges = hello_merges, .added = added};
        Buf good = {0};
        Err err = {0};
        CHECK(read_file(synth_write(&s), &good, &err) == 0);
        char path[1100];
        snprintf(path, sizeof path, "%s/fuzz.json", test_tmpdir());
        Rng r;
        rng_seed(&r, 99 + (uint64_t)variant);
        static const char alphabet[] = "{}[]\",:0123456789 -.\\ntfalsrueBPEx\x80\xC3";
        Buf m = {0}, text = {0};
        TokenList l = {0};
        int loaded = 0;
        for (int iter = 0; iter < 300; iter++) {
            m.len = 0;
            buf_append(&m, good.data, good.len);
            for (int k = 1 + (int)rng_below(&r, 3); k > 0 && m.len > 0; k--) {
                size_t at = rng_below(&r, m.len);
                int op = (int)rng_below(&r, 3);
                if (op == 0) m.data[at] = alphabet[rng_below(&r, sizeof alphabet - 1)];
                else if (op == 1) memmove(m.data + at, m.data + at + 1, --m.len - at); // delete a byte
                else m.len = at;                                                          // truncate
            }
            FILE *f = fopen(path, "wb");
            CHECK(f && fwrite(m.data, 1, m.len, f) == m.len);
            if (f) fclose(f);
            Tokenizer *t = NULL;
            err = (Err){0};
            if (tokenizer_load(&t, path, &err) == 0) {
                loaded++;
                text.len = 0;
                random_unicode(&r, &text, 1);
                buf_puts(&text, "<think>hello W\xC3\xA9 world");
                l.n = 0;
                CHECK(tokenizer_encode(t, text.data, text.len, &l, &err) == 0 && spans_tile(&l, text.len));
                tokenizer_free(t);
            } else {
                CHECKF(err.code == EXIT_BAD_INPUT && strstr(err.msg, path), "iteration %d: '%s'", iter, err.msg);
            }
        }
        CHECKF(loaded > 0 && loaded < 300, "variant %d: %d of 300 mutants loaded", variant, loaded);
        tokens_free(&l);
        buf_free(&m);
        buf_free(&text);
        buf_free(&good);
    }
}

const TestCase tests_tokenizer[] = {
    {"tokenizer_expected_qwen3", t_tokenizer_expected_qwen3},
    {"tokenizer_expected_qwen2_5", t_tokenizer_expected_qwen2_5},
    {"tokenizer_expected_llama3_1", t_tokenizer_expected_llama3_1},
    {"tokenizer_expected_r1_distill", t_tokenizer_expected_r1_distill},
    {"tokenizer_shared_api", t_tokenizer_shared_api},
    {"tokenizer_pretok_qwen", t_tokenizer_pretok_qwen},
    {"tokenizer_pretok_llama3", t_tokenizer_pretok_llama3},
    {"tokenizer_pretok_gpt2", t_tokenizer_pretok_gpt2},
    {"tokenizer_bpe_merges", t_tokenizer_bpe_merges},
    {"tokenizer_ignore_merges", t_tokenizer_ignore_merges},
    {"tokenizer_added_tokens", t_tokenizer_added_tokens},
    {"tokenizer_nfc", t_tokenizer_nfc},
    {"tokenizer_round_trip_synthetic", t_tokenizer_round_trip_synthetic},
    {"tokenizer_round_trip_shared", t_tokenizer_round_trip_shared},
    {"tokenizer_malformed", t_tokenizer_malformed},
    {"tokenizer_missing_byte", t_tokenizer_missing_byte},
    {"tokenizer_fuzz_load", t_tokenizer_fuzz_load},
    {0, 0},
};
