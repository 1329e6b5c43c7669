// tests/fuzz/fuzz_tokenizer.c: tokenizer.json through tokenizer_load; a tokenizer that
// loads encodes and decodes a fixed text (added-token markers, NFC-sensitive and
// invalid UTF-8 bytes), and the encoding keeps its contract: spans tile the text.
#include "fuzz.h"

static const char text[] =
    "<|user|>\nWhat is 12 + 7?<|assistant|>\n<think>\nOkay. Wait, let me check that.</think> \\boxed{19}"
    "  caf\xC3\xA9 cafe\xCC\x81 \xE2\x84\xAB \xF0\x9F\x98\x80 \xFF\xFE \xC3 <|end|><|endoftext|>  \t\n\n 1234567 it's";

FUZZ_TARGET(tokenizer) {
    const char *path = fuzz_write("tokenizer.json", data, n);
    Tokenizer *t = NULL;
    Err err = {0};
    if (tokenizer_load(&t, path, &err)) {
        fuzz_invariant(err.code == EXIT_BAD_INPUT && strstr(err.msg, "tokenizer.json") != NULL,
                       "an error names the file");
        return 0;
    }
    size_t len = sizeof text - 1;
    TokenList tokens = {0};
    fuzz_invariant(tokenizer_encode(t, text, len, &tokens, &err) == 0, "a short text encodes");
    int vocab = tokenizer_vocab_size(t), at = 0;
    int *ids = xmalloc((size_t)(tokens.n + 1) * sizeof *ids);
    for (int i = 0; i < tokens.n; i++) {
        fuzz_invariant(tokens.v[i].id >= 0 && tokens.v[i].id < vocab, "ids are in the vocab");
        fuzz_invariant(tokens.v[i].start == at && tokens.v[i].end >= tokens.v[i].start, "spans tile the text");
        at = tokens.v[i].end;
        ids[i] = tokens.v[i].id;
        int n_bytes;
        fuzz_invariant(tokenizer_token_bytes(t, ids[i], &n_bytes) != NULL, "an encoded id has bytes");
        tokenizer_is_special(t, ids[i]);
    }
    fuzz_invariant((size_t)at == len, "the spans end at the end of the text");
    Buf out = {0};
    int *offsets = xmalloc((size_t)(tokens.n + 1) * sizeof *offsets);
    tokenizer_decode(t, ids, tokens.n, &out, offsets);
    fuzz_invariant(offsets[tokens.n] == (int)out.len, "the last offset is the decoded length");
    for (int i = 0; i < tokens.n; i++) fuzz_invariant(offsets[i] <= offsets[i + 1], "offsets do not decrease");
    int odd[] = {-1, vocab, vocab - 1, 0, 1 << 30};
    buf_free(&out);
    tokenizer_decode(t, odd, 5, &out, NULL); // unknown ids give nothing
    for (int id = 0; id < vocab && id < 512; id++) {
        int n_bytes;
        const char *bytes = tokenizer_token_bytes(t, id, &n_bytes);
        if (bytes) fuzz_invariant(tokenizer_find(t, bytes, n_bytes) >= 0, "a token's bytes are found");
    }
    buf_free(&out);
    free(offsets);
    free(ids);
    tokens_free(&tokens);
    tokenizer_free(t);
    return 0;
}
