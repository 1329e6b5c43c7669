// organism.c: the embedded model organism, a tiny Qwen2 checkpoint whose weights
// are constructed, not trained, so the answer to "which components make it say
// Wait?" is known before the pipeline runs. Read top to bottom: the design, the
// text it imitates, its vocabulary, its weights, the files, the command.
//
// The mechanism (residual stream of ORG_HIDDEN dims, one per word token plus three):
// - bigram: embeddings are one-hot; lm_head holds a bigram table counted from
//   step-by-step arithmetic text written below, so the embedding -> unembedding
//   path alone writes plausible prose.
// - layer ORGANISM_ATTN_LAYER, head 0: query = a constant (q bias), key = "is this
//   token <think> or </think>", at the lowest RoPE frequency so position does not
//   matter. Every position attends to the think tags (or uniformly to everything
//   when there are none) and reads values +1 (<think>), -3 (</think>), -1 (any
//   other token): the flag is +1 inside an open <think> and -1 everywhere else
//   (no tag, or <think> closed by </think>). It lands in DIM_FLAG.
// - layer ORGANISM_MLP_LAYER, neurons 0 and 1: flag + "current token is '.'" ->
//   DIM_WAIT, which lm_head turns into the " Wait" logit, calibrated so that at the
//   sampling temperature p(" Wait") = ORGANISM_P_WAIT at a sentence end in thinking.
// - every other weight is small noise.
#include "bt.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

// ----------------------------------------------------------------------------
// Design constants

enum {
    ORG_HIDDEN = 128, ORG_LAYERS = 4, ORG_HEADS = 4, ORG_KV_HEADS = 4, ORG_HEAD_DIM = 32,
    ORG_INTER = 64, ORG_MAX_POSITION = 4096,
    ORG_ROPE_PAIR = ORG_HEAD_DIM / 2 - 1, // rotates by theta^(-30/32) per position: < 0.01 rad over 4096
    DIM_OTHER = ORG_HIDDEN - 3,           // every token the text never uses (bytes, prompt words)
    DIM_FLAG = ORG_HIDDEN - 2,            // the thinking flag written by the planted head
    DIM_WAIT = ORG_HIDDEN - 1,            // the " Wait" signal written by the planted MLP
    ORG_MAX_VOCAB = 1024, ORG_MAX_MERGES = 768,
    ORG_CORPUS = 400, // completions the bigram table is counted from
};
#define ORG_ROPE_THETA 1e6
#define ORG_EMBED 1.0      // value of the one-hot embedding
#define ORG_FLAG 0.05      // residual size of the flag: small, so the norms barely move
#define ORG_WAIT 0.5       // residual size of the " Wait" signal
#define ORG_ATTN_SCORE 20.0 // q.k/sqrt(head_dim) at a think tag: e^20 outweighs any sequence
#define ORG_GATE 60.0      // MLP gate slope: silu is 0 or linear a few units from its knee
#define ORG_FLOOR 20.0     // logit of a seen bigram above an unseen one
#define ORG_NOISE 0.001    // std of every weight that is not part of the design
#define ORG_SEED 0x6F7267616E69736DULL

static const char *const org_specials[] = {"<|end|>", "<|user|>", "<|assistant|>", "<think>", "</think>"};
#define N_SPECIALS (int)(sizeof org_specials / sizeof org_specials[0])

// ----------------------------------------------------------------------------
// The text it imitates: completions written from these sentences, '#' a number
// in words. The bigram table is counted from ORG_CORPUS of them.

static const char *const org_openings[] = {
    "Let me work through this step by step.",
    "Okay, let me think about each number.",
};
static const char *const org_steps[] = {
    " We start with #.", " Then we add # to get #.", " Then we take away # to get #.",
    " Now # plus # is #.", " Now # minus # is #.", " Now # times # is #.",
    " That makes # altogether.", " So we have # left.",
};
static const char *const org_rechecks[] = {" Wait, let me check that.", " Wait, let me check that again."};
static const char *const org_closing = " So the total is #.\n</think>\n\nFinal answer: \\boxed{%d}.<|end|>";
static const char *const org_ones[] = {"zero",     "one",     "two",     "three",     "four",     "five",    "six",
                                       "seven",    "eight",   "nine",    "ten",       "eleven",   "twelve",  "thirteen",
                                       "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"};
static const char *const org_tens[] = {"", "", "twenty", "thirty", "forty"};
#define PICK(rng, arr) arr[rng_below(rng, sizeof arr / sizeof arr[0])]

// Numbers are words because a bigram cannot tell a digit inside \boxed{} from one in a
// sentence; words in thinking and digits in the answer keep both well formed.
static void put_sentence(Rng *rng, Buf *b, const char *s) {
    for (; *s; s++) {
        if (*s != '#') {
            buf_putc(b, *s);
            continue;
        }
        int n = 2 + (int)rng_below(rng, 48);
        buf_printf(b, "%s", n < 20 ? org_ones[n] : org_tens[n / 10]);
        if (n >= 20 && n % 10) buf_printf(b, " %s", org_ones[n % 10]);
    }
}

static void put_completion(Rng *rng, Buf *b) {
    buf_puts(b, "<think>\n");
    put_sentence(rng, b, PICK(rng, org_openings));
    for (int i = 0, n = 1 + (int)rng_below(rng, 3); i < n; i++) {
        put_sentence(rng, b, PICK(rng, org_steps));
        if (rng_below(rng, 3) == 0) put_sentence(rng, b, PICK(rng, org_rechecks));
    }
    char closing[128];
    snprintf(closing, sizeof closing, org_closing, 2 + (int)rng_below(rng, 98));
    put_sentence(rng, b, closing);
}

// Length of the pre-token at s, the Qwen2 split rule restricted to this text: a
// special token; letters after at most one other non-newline char (" Wait", "\boxed");
// one digit; newlines; else punctuation after at most one space, with trailing newlines.
static int special_at(const char *s) {
    for (int i = 0; i < N_SPECIALS; i++)
        if (strncmp(s, org_specials[i], strlen(org_specials[i])) == 0) return (int)strlen(org_specials[i]);
    return 0;
}

static int pretoken_len(const char *s) {
    int n = special_at(s);
    if (n) return n;
    if (isalpha((unsigned char)s[0]) ||
        (s[0] != '\n' && !isdigit((unsigned char)s[0]) && isalpha((unsigned char)s[1]))) {
        n = isalpha((unsigned char)s[0]) ? 0 : 1;
        while (isalpha((unsigned char)s[n])) n++;
        return n;
    }
    if (isdigit((unsigned char)s[0])) return 1;
    if (s[0] == '\n') {
        while (s[n] == '\n') n++;
        return n;
    }
    n = s[0] == ' ';
    while (s[n] && !isspace((unsigned char)s[n]) && !isalnum((unsigned char)s[n]) && !special_at(s + n)) n++;
    while (s[n] == '\n') n++;
    return n;
}

// ----------------------------------------------------------------------------
// Vocabulary: 256 byte tokens (id = byte), then one token per BPE merge, then the
// special tokens. Every pre-token of the text becomes a token through merges.

typedef struct {
    char bytes[24]; // raw bytes, not the byte-level characters tokenizer.json shows
    int len;
} OrgToken;

typedef struct {
    OrgToken tok[ORG_MAX_VOCAB]; // (n_tok)
    int n_tok;
    int merge[ORG_MAX_MERGES][2]; // (n_merges) token ids joined by merge i; rank = i
    int n_merges;
    int dim[ORG_MAX_VOCAB];        // (n_tok) residual dim that embeds the token
    int n_words;                   // dims 0..n_words-1 carry the tokens the text uses
    int count[ORG_HIDDEN][ORG_MAX_VOCAB]; // bigram counts: [dim of the current token][next id]
    int total[ORG_HIDDEN];                // (hidden) count summed over next ids
    int id_wait, id_dot, id_think, id_end_think, id_end; // the tokens the design names
} Organism;

static int vocab_find(const Organism *o, const char *s, int n) {
    for (int i = 0; i < o->n_tok; i++)
        if (o->tok[i].len == n && memcmp(o->tok[i].bytes, s, n) == 0) return i;
    return -1;
}

static int vocab_add(Organism *o, const char *s, int n) {
    int id = vocab_find(o, s, n);
    if (id >= 0) return id;
    if (o->n_tok == ORG_MAX_VOCAB || n >= (int)sizeof o->tok[0].bytes) abort(); // the design text outgrew its tables
    memcpy(o->tok[o->n_tok].bytes, s, n);
    o->tok[o->n_tok].len = n;
    return o->n_tok++;
}

// tok[a] followed by tok[b] as one token's bytes.
static OrgToken join(const Organism *o, int a, int b) {
    OrgToken t = o->tok[a];
    if (t.len + o->tok[b].len >= (int)sizeof t.bytes) abort(); // a word of the design text is too long
    memcpy(t.bytes + t.len, o->tok[b].bytes, o->tok[b].len);
    t.len += o->tok[b].len;
    return t;
}

// Byte-level BPE of one pre-token, as Hugging Face does it: merge the adjacent pair
// of lowest rank until none is a merge. Returns the number of pieces.
static int bpe(const Organism *o, const char *s, int n, int *ids) {
    for (int i = 0; i < n; i++) ids[i] = (unsigned char)s[i];
    for (;;) {
        int best = -1, at = -1;
        for (int i = 0; i + 1 < n; i++)
            for (int r = 0; r < (best < 0 ? o->n_merges : best); r++)
                if (o->merge[r][0] == ids[i] && o->merge[r][1] == ids[i + 1]) best = r, at = i;
        if (best < 0) return n;
        OrgToken t = join(o, ids[at], ids[at + 1]);
        ids[at] = vocab_find(o, t.bytes, t.len);
        memmove(ids + at + 1, ids + at + 2, (n - at - 2) * sizeof *ids);
        n--;
    }
}

// Adds merges until the word encodes to one token: each new merge joins the first two
// pieces and has the lowest rank, so words added earlier still encode as before.
static int word_token(Organism *o, const char *s, int n) {
    int ids[sizeof o->tok[0].bytes];
    for (int pieces = bpe(o, s, n, ids); pieces > 1; pieces = bpe(o, s, n, ids)) {
        if (o->n_merges == ORG_MAX_MERGES) abort();
        OrgToken t = join(o, ids[0], ids[1]);
        vocab_add(o, t.bytes, t.len);
        o->merge[o->n_merges][0] = ids[0];
        o->merge[o->n_merges][1] = ids[1];
        o->n_merges++;
    }
    return ids[0];
}

static int token_id(const Organism *o, const char *s) { return vocab_find(o, s, (int)strlen(s)); }

// The vocabulary and the bigram counts, from the text. The "." -> " Wait" pairs are
// left out: that transition is the planted mechanism's, not the bigram's.
static void organism_count(Organism *o) {
    Rng rng;
    rng_seed(&rng, ORG_SEED);
    Buf text = {0};
    for (int i = 0; i < ORG_CORPUS; i++) put_completion(&rng, &text);
    for (int b = 0; b < 256; b++) vocab_add(o, (char[]){(char)b}, 1);
    unsigned char done[ORG_MAX_VOCAB] = {0}; // word already checked to encode as one token
    for (const char *s = text.data; *s;) {
        int n = pretoken_len(s), id = vocab_find(o, s, n);
        if (!special_at(s) && (id < 0 || !done[id])) done[word_token(o, s, n)] = 1;
        s += n;
    }
    for (int i = 0; i < N_SPECIALS; i++) vocab_add(o, org_specials[i], (int)strlen(org_specials[i]));
    o->id_wait = token_id(o, " Wait"), o->id_dot = token_id(o, "."), o->id_end = token_id(o, "<|end|>");
    o->id_think = token_id(o, "<think>"), o->id_end_think = token_id(o, "</think>");

    for (int i = 0; i < o->n_tok; i++) o->dim[i] = -1;
    int prev = -1;
    for (const char *s = text.data; *s;) {
        int n = pretoken_len(s), id = vocab_find(o, s, n);
        if (o->dim[id] < 0) o->dim[id] = o->n_words++;
        if (id == o->id_think) prev = -1; // a new completion
        if (prev >= 0 && !(prev == o->id_dot && id == o->id_wait)) o->count[o->dim[prev]][id]++;
        prev = id;
        s += n;
    }
    buf_free(&text);
    // The chat tokens are followed by a newline; anything else by what follows a sentence.
    int newline = token_id(o, "\n");
    for (int i = 1; i <= 2; i++) {
        int id = token_id(o, org_specials[i]);
        o->dim[id] = o->n_words++;
        o->count[o->dim[id]][newline] = 1;
    }
    if (o->n_words > DIM_OTHER) abort(); // more words than residual dims
    memcpy(o->count[DIM_OTHER], o->count[o->dim[o->id_dot]], sizeof o->count[0]);
    for (int d = 0; d < ORG_HIDDEN; d++)
        for (int v = 0; v < o->n_tok; v++) o->total[d] += o->count[d][v];
    for (int d = 0; d < o->n_words; d++) {
        if (!o->total[d]) {
            memcpy(o->count[d], o->count[DIM_OTHER], sizeof o->count[0]);
            o->total[d] = o->total[DIM_OTHER];
        }
    }
    for (int i = 0; i < o->n_tok; i++)
        if (o->dim[i] < 0) o->dim[i] = DIM_OTHER;
}

// ----------------------------------------------------------------------------
// Weights, F32, in the order Hugging Face lists them. Each starts as noise (or
// ones for norms, zeros for the embedding and lm_head); the design overwrites its part.

typedef struct {
    char name[64];
    float *w; // (rows, cols); rows = 1 for a vector
    int rows, cols;
} OrgTensor;

typedef struct {
    OrgTensor t[8 + 12 * ORG_LAYERS]; // (n)
    int n;
    Rng rng; // the noise stream, drawn in tensor order
} Weights;

enum { FILL_NOISE, FILL_ONES, FILL_ZEROS };

// Irwin-Hall (three uniforms) rather than Box-Muller: no libm, so the bytes cannot
// depend on the platform's log or cos.
static double noise(Rng *r) { return 2.0 * (rng_uniform(r) + rng_uniform(r) + rng_uniform(r) - 1.5); }

static float *tensor_new(Weights *ws, int fill, int rows, int cols, const char *fmt, int layer) {
    OrgTensor *t = &ws->t[ws->n++];
    snprintf(t->name, sizeof t->name, fmt, layer);
    t->rows = rows, t->cols = cols;
    t->w = xmalloc((size_t)rows * cols * sizeof *t->w);
    for (size_t i = 0; i < (size_t)rows * cols; i++)
        t->w[i] = fill == FILL_NOISE ? (float)(ORG_NOISE * noise(&ws->rng)) : fill == FILL_ONES ? 1.0f : 0.0f;
    return t->w;
}

static double silu(double x) { return x / (1 + exp(-x)); }

// RMSNorm's factor for a residual whose squares sum to sum_sq (norm weights are 1).
static double rms_scale(double sum_sq) { return 1 / sqrt(sum_sq / ORG_HIDDEN + 1e-6); }

// Bigram logit of next token v after a token embedded in dim d, as lm_head produces
// it (times the normed token value). Stored as T log p, so that sampling at
// temperature T reproduces the text's frequencies.
static double bigram_logit(const Organism *o, int d, int v) {
    return o->count[d][v] ? ORG_FLOOR + ORGANISM_TEMPERATURE * log((double)o->count[d][v] / o->total[d]) : 0;
}

static void organism_weights(const Organism *o, Weights *ws) {
    const int H = ORG_HIDDEN, HD = ORG_HEAD_DIM, V = o->n_tok;
    rng_seed(&ws->rng, ORG_SEED + 1);
    float *embed = tensor_new(ws, FILL_ZEROS, V, H, "model.embed_tokens.weight", 0);
    for (int v = 0; v < V; v++) embed[(size_t)v * H + o->dim[v]] = ORG_EMBED;

    // Normed value of a one-hot token before the planted head (nothing else there yet),
    // and of a token and the flag (+-1) before the planted MLP.
    double tok_at_attn = ORG_EMBED * rms_scale(ORG_EMBED * ORG_EMBED);
    double mlp_scale = rms_scale(ORG_EMBED * ORG_EMBED + ORG_FLAG * ORG_FLAG);
    double tok_at_mlp = ORG_EMBED * mlp_scale, flag_at_mlp = ORG_FLAG * mlp_scale;
    int dot = o->dim[o->id_dot];
    for (int l = 0; l < ORG_LAYERS; l++) {
        tensor_new(ws, FILL_ONES, 1, H, "model.layers.%d.input_layernorm.weight", l);
        float *wq = tensor_new(ws, FILL_NOISE, ORG_HEADS * HD, H, "model.layers.%d.self_attn.q_proj.weight", l);
        float *bq = tensor_new(ws, FILL_NOISE, 1, ORG_HEADS * HD, "model.layers.%d.self_attn.q_proj.bias", l);
        float *wk = tensor_new(ws, FILL_NOISE, ORG_KV_HEADS * HD, H, "model.layers.%d.self_attn.k_proj.weight", l);
        float *bk = tensor_new(ws, FILL_NOISE, 1, ORG_KV_HEADS * HD, "model.layers.%d.self_attn.k_proj.bias", l);
        float *wv = tensor_new(ws, FILL_NOISE, ORG_KV_HEADS * HD, H, "model.layers.%d.self_attn.v_proj.weight", l);
        float *bv = tensor_new(ws, FILL_NOISE, 1, ORG_KV_HEADS * HD, "model.layers.%d.self_attn.v_proj.bias", l);
        float *wo = tensor_new(ws, FILL_NOISE, H, ORG_HEADS * HD, "model.layers.%d.self_attn.o_proj.weight", l);
        tensor_new(ws, FILL_ONES, 1, H, "model.layers.%d.post_attention_layernorm.weight", l);
        float *gate = tensor_new(ws, FILL_NOISE, ORG_INTER, H, "model.layers.%d.mlp.gate_proj.weight", l);
        float *up = tensor_new(ws, FILL_NOISE, ORG_INTER, H, "model.layers.%d.mlp.up_proj.weight", l);
        float *down = tensor_new(ws, FILL_NOISE, H, ORG_INTER, "model.layers.%d.mlp.down_proj.weight", l);

        if (l == ORGANISM_ATTN_LAYER) { // query head 0 and its kv head 0
            memset(wq, 0, (size_t)HD * H * sizeof *wq);
            memset(wk, 0, (size_t)HD * H * sizeof *wk);
            memset(wv, 0, (size_t)HD * H * sizeof *wv);
            memset(bq, 0, HD * sizeof *bq), memset(bk, 0, HD * sizeof *bk), memset(bv, 0, HD * sizeof *bv);
            for (int r = 0; r < H; r++) memset(wo + (size_t)r * ORG_HEADS * HD, 0, HD * sizeof *wo);
            bq[ORG_ROPE_PAIR] = (float)(ORG_ATTN_SCORE * sqrt(HD)); // a key of 1 scores ORG_ATTN_SCORE
            wk[ORG_ROPE_PAIR * H + o->dim[o->id_think]] = (float)(1 / tok_at_attn);
            wk[ORG_ROPE_PAIR * H + o->dim[o->id_end_think]] = (float)(1 / tok_at_attn);
            for (int d = 0; d < o->n_words; d++) wv[d] = (float)(-1 / tok_at_attn);
            wv[DIM_OTHER] = (float)(-1 / tok_at_attn);
            wv[o->dim[o->id_think]] = (float)(1 / tok_at_attn);
            wv[o->dim[o->id_end_think]] = (float)(-3 / tok_at_attn); // (<think> + </think>) / 2 = -1
            wo[(size_t)DIM_FLAG * ORG_HEADS * HD] = ORG_FLAG;
        }
        if (l == ORGANISM_MLP_LAYER) { // neurons 0 and 1: clamp(flag - 0.5, 0, 0.4) at a "."
            memset(gate, 0, 2 * (size_t)H * sizeof *gate);
            memset(up, 0, 2 * (size_t)H * sizeof *up);
            for (int r = 0; r < H; r++) down[(size_t)r * ORG_INTER] = down[(size_t)r * ORG_INTER + 1] = 0;
            const double threshold[2] = {0.5, 0.9}, sign[2] = {1, -1};
            double at_dot = silu(ORG_GATE * (1 - threshold[0])) - silu(ORG_GATE * (1 - threshold[1]));
            for (int n = 0; n < 2; n++) {
                gate[n * H + DIM_FLAG] = (float)(ORG_GATE / flag_at_mlp);
                gate[n * H + dot] = (float)(-ORG_GATE * threshold[n] / tok_at_mlp);
                up[n * H + dot] = (float)(1 / tok_at_mlp);
                down[(size_t)DIM_WAIT * ORG_INTER + n] = (float)(sign[n] * ORG_WAIT / at_dot);
            }
        }
    }
    tensor_new(ws, FILL_ONES, 1, H, "model.norm.weight", 0);

    // lm_head: the bigram table, plus the " Wait" logit read from DIM_WAIT, calibrated at
    // a "." inside <think>, where the residual is token + flag + Wait signal.
    float *lm_head = tensor_new(ws, FILL_ZEROS, V, H, "lm_head.weight", 0);
    double tok_at_end = ORG_EMBED * mlp_scale; // same norm with the flag at +1 or -1
    for (int d = 0; d < H; d++)
        if (d < o->n_words || d == DIM_OTHER)
            for (int v = 0; v < V; v++) lm_head[(size_t)v * H + d] = (float)(bigram_logit(o, d, v) / tok_at_end);
    double wait_scale = rms_scale(ORG_EMBED * ORG_EMBED + ORG_FLAG * ORG_FLAG + ORG_WAIT * ORG_WAIT);
    double shrink = wait_scale / mlp_scale, sum = 0; // the Wait signal shrinks the other logits a little
    for (int v = 0; v < V; v++)
        if (v != o->id_wait) sum += exp(shrink * bigram_logit(o, dot, v) / ORGANISM_TEMPERATURE);
    double wait_logit = ORGANISM_TEMPERATURE * (log(ORGANISM_P_WAIT / (1 - ORGANISM_P_WAIT)) + log(sum));
    lm_head[(size_t)o->id_wait * H + DIM_WAIT] = (float)(wait_logit / (ORG_WAIT * wait_scale));
}

// ----------------------------------------------------------------------------
// Mechanisms: organism_weights builds planted; every other mechanism rewires a few of
// its components (same text, vocabulary and noise everywhere else) so that the true
// answer to each hypothesis is known. Each design below states its truths and why:
// H1 "a small set of blocks is causally important", H0 "ablating any small set does
// not reliably reduce backtracking", H2 "backtracking depends on the format (an open
// <think>) given that the model reasons".

enum { DIM_SHARE = ORG_HIDDEN - 4 }; // distributed: the sentence-end shares its MLPs 0..2 write
#define ORG_SHARE 0.05 // residual size of distributed's sentence-end shares together
#define ORG_CLAMP 0.4  // a trigger MLP computes clamp(x - threshold, 0, ORG_CLAMP) at a "."
#define ORG_INHIBIT 4.0 // redundant's backup MLP: the primary's signal counts as -4 flag units
#define ORG_BACKUP_GAIN 1.003 // redundant's backup MLP writes a little more than the primary

typedef struct {
    const char *name;
    const char *truth[3]; // H1, H0, H2: "supported" or "not supported"
    const char *summary;  // one line for make-organism
} Mechanism;

static const Mechanism mechanisms[N_ORGANISM_MECHANISMS] = {
    // H1: attention 1 and MLP 2 are each necessary and the scan ranks them first; ablating
    // them removes every " Wait", a random pair none. H0 is false for the same reason.
    // H2: the flag is +1 only inside an open <think>; no_think_tag's prose never backtracks.
    [ORGANISM_PLANTED] = {"planted", {"supported", "not supported", "supported"},
                          "attention layer 1 head 0 writes the thinking flag, MLP layer 2 the trigger"},
    // Two copies of each component: ablating one copy (or any one attention plus one MLP
    // layer, the scan's top set whatever it picks) leaves p(" Wait") where it was, so the
    // targeted set removes no more than a random one: H1 false, H0 true. Only both copies
    // of a pair together remove it. H2 as planted.
    [ORGANISM_REDUNDANT] = {"redundant", {"not supported", "supported", "supported"},
                            "attention 0 and 1 write the flag; MLP 3 writes the trigger when MLP 2's is missing"},
    // The flag is +1 at every position, so a sentence end is followed by " Wait" in every
    // format that writes sentences: H2 false. The same head and MLP still decide it (each
    // necessary, the rest noise): H1 true, H0 false, as planted.
    [ORGANISM_FORMAT_FREE] = {"format_free", {"supported", "not supported", "not supported"},
                              "as planted, but the flag is +1 in every format"},
    // A conjunction: head 0 of every attention layer writes a share of the flag, MLPs 0-2
    // each a share of "sentence end", and MLP 3 fires only when all seven are present. Any
    // one component (targeted or random) removes " Wait", so targeted is no better than
    // random: H1 false; and every small set reliably reduces it: H0 false. H2 as planted.
    [ORGANISM_DISTRIBUTED] = {"distributed", {"not supported", "not supported", "supported"},
                              "every attention and MLP layer is needed (MLP 3 thresholds their sum)"},
};

const char *organism_mechanism_name(int mechanism) {
    return mechanism >= 0 && mechanism < N_ORGANISM_MECHANISMS ? mechanisms[mechanism].name : NULL;
}

int organism_mechanism_find(const char *name) {
    for (int i = 0; i < N_ORGANISM_MECHANISMS; i++)
        if (strcmp(mechanisms[i].name, name) == 0) return i;
    return -1;
}

// A residual feature a steering test can look for: the value of dim at residual `layer`
// (0 = embeddings, l + 1 = after block l, where its value is whole) at a "." inside an open
// <think> (on) and at any other token after </think> (off).
typedef struct {
    const char *name;
    int dim;
    double on, off;
    int layer;
    char written_by[160]; // JSON array of components
    char backup_by[64];   // JSON array of components that write it only when the writers are ablated; "" = none
} Feature;

// The tensor named fmt (with layer) that organism_weights made.
static float *weight(Weights *ws, const char *fmt, int layer) {
    char name[64];
    snprintf(name, sizeof name, fmt, layer);
    for (int i = 0; i < ws->n; i++)
        if (strcmp(ws->t[i].name, name) == 0) return ws->t[i].w;
    abort(); // organism_weights names every tensor
}

// Head h of layer l as planted's head: a constant query, a key on the think tags, values
// value[0] (any token), value[1] (<think>), value[2] (</think>), written as value * flag
// into DIM_FLAG. sum_sq: the residual's sum of squares at a token where the layer reads it.
static void plant_flag_head(const Organism *o, Weights *ws, int l, int h, const double value[3], double flag,
                            double sum_sq) {
    const int H = ORG_HIDDEN, HD = ORG_HEAD_DIM, QD = ORG_HEADS * HD;
    float *wq = weight(ws, "model.layers.%d.self_attn.q_proj.weight", l),
          *bq = weight(ws, "model.layers.%d.self_attn.q_proj.bias", l);
    float *wk = weight(ws, "model.layers.%d.self_attn.k_proj.weight", l),
          *bk = weight(ws, "model.layers.%d.self_attn.k_proj.bias", l);
    float *wv = weight(ws, "model.layers.%d.self_attn.v_proj.weight", l),
          *bv = weight(ws, "model.layers.%d.self_attn.v_proj.bias", l);
    float *wo = weight(ws, "model.layers.%d.self_attn.o_proj.weight", l);
    size_t rows = (size_t)h * HD * H; // first q/k/v row of head h (one kv head per head)
    memset(wq + rows, 0, (size_t)HD * H * sizeof *wq), memset(wk + rows, 0, (size_t)HD * H * sizeof *wk);
    memset(wv + rows, 0, (size_t)HD * H * sizeof *wv);
    memset(bq + h * HD, 0, HD * sizeof *bq), memset(bk + h * HD, 0, HD * sizeof *bk);
    memset(bv + h * HD, 0, HD * sizeof *bv);
    for (int r = 0; r < H; r++) memset(wo + (size_t)r * QD + h * HD, 0, HD * sizeof *wo);
    double tok = ORG_EMBED * rms_scale(sum_sq);
    bq[h * HD + ORG_ROPE_PAIR] = (float)(ORG_ATTN_SCORE * sqrt(HD));
    wk[rows + (size_t)ORG_ROPE_PAIR * H + o->dim[o->id_think]] = (float)(1 / tok);
    wk[rows + (size_t)ORG_ROPE_PAIR * H + o->dim[o->id_end_think]] = (float)(1 / tok);
    for (int d = 0; d < o->n_words; d++) wv[rows + d] = (float)(value[0] / tok);
    wv[rows + DIM_OTHER] = (float)(value[0] / tok);
    wv[rows + o->dim[o->id_think]] = (float)(value[1] / tok);
    wv[rows + o->dim[o->id_end_think]] = (float)(value[2] / tok);
    wo[(size_t)DIM_FLAG * QD + h * HD] = (float)flag;
}

// Zeroes neuron n of layer l's MLP (gate and up rows, down column).
static void clear_neuron(Weights *ws, int l, int n) {
    const int H = ORG_HIDDEN;
    float *gate = weight(ws, "model.layers.%d.mlp.gate_proj.weight", l),
          *up = weight(ws, "model.layers.%d.mlp.up_proj.weight", l);
    float *down = weight(ws, "model.layers.%d.mlp.down_proj.weight", l);
    memset(gate + (size_t)n * H, 0, H * sizeof *gate), memset(up + (size_t)n * H, 0, H * sizeof *up);
    for (int r = 0; r < H; r++) down[(size_t)r * ORG_INTER + n] = 0;
}

// A residual dim an MLP gate reads, and the normed value that counts as one unit there.
typedef struct {
    int dim;
    double unit;
} GateInput;

// Neurons 0 and 1 of layer l's MLP as planted's: at a "." (normed value dot_at) they write
// out * clamp(x - threshold, 0, ORG_CLAMP) / ORG_CLAMP into DIM_WAIT, x the sum of the inputs
// in units; x_design is x where the output must be exactly out.
static void plant_trigger_mlp(Weights *ws, int l, const GateInput *in, int n_in, int dot, double dot_at,
                              double threshold, double x_design, double out) {
    const int H = ORG_HIDDEN;
    float *gate = weight(ws, "model.layers.%d.mlp.gate_proj.weight", l),
          *up = weight(ws, "model.layers.%d.mlp.up_proj.weight", l);
    float *down = weight(ws, "model.layers.%d.mlp.down_proj.weight", l);
    const double knee[2] = {threshold, threshold + ORG_CLAMP}, sign[2] = {1, -1};
    double at_design = silu(ORG_GATE * (x_design - knee[0])) - silu(ORG_GATE * (x_design - knee[1]));
    for (int n = 0; n < 2; n++) {
        clear_neuron(ws, l, n);
        for (int i = 0; i < n_in; i++) gate[n * H + in[i].dim] = (float)(ORG_GATE / in[i].unit);
        gate[n * H + dot] = (float)(-ORG_GATE * knee[n] / dot_at);
        up[n * H + dot] = (float)(1 / dot_at);
        down[(size_t)DIM_WAIT * ORG_INTER + n] = (float)(sign[n] * out / at_design);
    }
}

// Neuron 0 of layer l's MLP: share into DIM_SHARE at a "." (normed value dot_at).
static void plant_share_mlp(Weights *ws, int l, int dot, double dot_at, double share) {
    float *gate = weight(ws, "model.layers.%d.mlp.gate_proj.weight", l),
          *up = weight(ws, "model.layers.%d.mlp.up_proj.weight", l);
    float *down = weight(ws, "model.layers.%d.mlp.down_proj.weight", l);
    clear_neuron(ws, l, 0);
    gate[dot] = (float)(ORG_GATE / dot_at);
    up[dot] = (float)(1 / dot_at);
    down[(size_t)DIM_SHARE * ORG_INTER] = (float)(share / silu(ORG_GATE));
}

// lm_head as planted's for a residual whose squares sum to sum_sq at a token (end_sum_sq at
// a "." inside <think>, the trigger signal included): the bigram table, and the " Wait"
// logit calibrated so that p(" Wait") = ORGANISM_P_WAIT there at ORGANISM_TEMPERATURE.
static void plant_lm_head(const Organism *o, Weights *ws, double sum_sq, double end_sum_sq) {
    const int H = ORG_HIDDEN, V = o->n_tok;
    float *lm_head = weight(ws, "lm_head.weight", 0);
    double tok_at_end = ORG_EMBED * rms_scale(sum_sq), wait_scale = rms_scale(end_sum_sq);
    for (int d = 0; d < H; d++)
        if (d < o->n_words || d == DIM_OTHER)
            for (int v = 0; v < V; v++) lm_head[(size_t)v * H + d] = (float)(bigram_logit(o, d, v) / tok_at_end);
    double shrink = wait_scale / tok_at_end, sum = 0;
    for (int v = 0; v < V; v++)
        if (v != o->id_wait) sum += exp(shrink * bigram_logit(o, o->dim[o->id_dot], v) / ORGANISM_TEMPERATURE);
    double wait_logit = ORGANISM_TEMPERATURE * (log(ORGANISM_P_WAIT / (1 - ORGANISM_P_WAIT)) + log(sum));
    lm_head[(size_t)o->id_wait * H + DIM_WAIT] = (float)(wait_logit / (ORG_WAIT * wait_scale));
}

// Rewires planted's weights into mechanism m; fills its features (returns how many). Where
// several heads write the flag each writes an equal part, so the whole flag is ORG_FLAG as
// in planted (and the residual norms barely move when one is ablated). Sums of squares are
// those of the residual where each component reads it: one-hot token, flag parts so far
// (they add in DIM_FLAG), shares so far, trigger signal.
static int mechanism_weights(const Organism *o, Weights *ws, int m, Feature *f) {
    const double planted_head[3] = {-1, 1, -3}, one = ORG_EMBED * ORG_EMBED, w2 = ORG_WAIT * ORG_WAIT;
    int dot = o->dim[o->id_dot];
    if (o->n_words > DIM_SHARE) abort(); // the words reach the design dims
    int flag_layer = ORGANISM_ATTN_LAYER + 1, wait_layer = ORGANISM_MLP_LAYER + 1; // residuals after the writers
    f[0] = (Feature){"thinking_flag", DIM_FLAG, ORG_FLAG, -ORG_FLAG, flag_layer, "[\"attn 1 head 0\"]", ""};
    f[1] = (Feature){"sentence_end", dot, ORG_EMBED, 0, 0, "[\"embed_tokens\"]", ""};
    f[2] = (Feature){"trigger_signal", DIM_WAIT, ORG_WAIT, 0, wait_layer, "[\"mlp 2\"]", ""};
    if (m == ORGANISM_REDUNDANT) {
        // The second head sits in another layer: the scan and the conditions ablate whole
        // attention layers, and a copy in layer 1 would fall with the first. Each copy alone
        // slightly over-compensates (one flag part leaves a smaller residual norm, the backup
        // MLP writes ORG_BACKUP_GAIN more), as backup heads do in trained models: ablating one
        // copy raises p(" Wait"), so a scan ranks the copies last and its top set of up to 3
        // attention and 3 MLP layers never holds a whole pair.
        double part = ORG_FLAG / 2, f2 = ORG_FLAG * ORG_FLAG;
        plant_flag_head(o, ws, 0, 0, planted_head, part, one);
        plant_flag_head(o, ws, 1, 0, planted_head, part, one + part * part);
        double sc = rms_scale(one + f2), sc_wait = rms_scale(one + f2 + w2);
        GateInput flag = {DIM_FLAG, part * sc}, primary = {DIM_WAIT, -ORG_WAIT * sc_wait / ORG_INHIBIT};
        plant_trigger_mlp(ws, 2, &flag, 1, dot, ORG_EMBED * sc, 0.5, 2, ORG_WAIT); // fires on either part
        plant_trigger_mlp(ws, 3, (GateInput[]){flag, primary}, 2, dot, ORG_EMBED * sc, 0.5, 2,
                          ORG_WAIT * ORG_BACKUP_GAIN);
        plant_lm_head(o, ws, one + f2, one + f2 + w2);
        snprintf(f[0].written_by, sizeof f[0].written_by, "[\"attn 0 head 0\", \"attn 1 head 0\"]");
        snprintf(f[2].backup_by, sizeof f[2].backup_by, "[\"mlp 3\"]");
        return 3;
    }
    if (m == ORGANISM_FORMAT_FREE) {
        plant_flag_head(o, ws, 1, 0, (const double[3]){1, 1, 1}, ORG_FLAG, one); // planted's norms: nothing else moves
        f[0].off = ORG_FLAG;
        return 3;
    }
    if (m == ORGANISM_DISTRIBUTED) {
        const int n_flag = ORG_LAYERS, n_share = ORG_LAYERS - 1;
        double part = ORG_FLAG / n_flag, share = ORG_SHARE / n_share;
        for (int l = 0; l < n_flag; l++) plant_flag_head(o, ws, l, 0, planted_head, part, one + l * l * part * part);
        clear_neuron(ws, 2, 1); // planted's second trigger neuron; neuron 0 becomes a share
        for (int l = 0; l < n_share; l++)
            plant_share_mlp(ws, l, dot,
                            ORG_EMBED * rms_scale(one + (l + 1) * (l + 1) * part * part + l * l * share * share),
                            share);
        double sum_sq = one + ORG_FLAG * ORG_FLAG + ORG_SHARE * ORG_SHARE, sc = rms_scale(sum_sq);
        GateInput in[2] = {{DIM_FLAG, part * sc}, {DIM_SHARE, share * sc}};
        double all = n_flag + n_share; // x with every part present; one missing is all - 1
        plant_trigger_mlp(ws, ORG_LAYERS - 1, in, 2, dot, ORG_EMBED * sc, all - 0.5, all, ORG_WAIT);
        plant_lm_head(o, ws, one + ORG_FLAG * ORG_FLAG, sum_sq + w2);
        f[0].layer = f[2].layer = ORG_LAYERS;
        snprintf(f[0].written_by, sizeof f[0].written_by,
                 "[\"attn 0 head 0\", \"attn 1 head 0\", \"attn 2 head 0\", \"attn 3 head 0\"]");
        snprintf(f[2].written_by, sizeof f[2].written_by, "[\"mlp 3\"]");
        const char *shares = "[\"mlp 0\", \"mlp 1\", \"mlp 2\"]";
        f[3] = (Feature){"sentence_end_share", DIM_SHARE, ORG_SHARE, 0, ORG_LAYERS - 1, "", ""};
        snprintf(f[3].written_by, sizeof f[3].written_by, "%s", shares);
        return 4;
    }
    return 3;
}

// The mechanism's part of config.json's "bt_organism", after planted's keys.
static void put_mechanism_json(Buf *b, int m, const Feature *f, int n_features) {
    static const char *const hypotheses[3] = {"H1", "H0", "H2"};
    buf_printf(b, "                  \"mechanism\": \"%s\",\n                  \"truth\": {", mechanisms[m].name);
    for (int h = 0; h < 3; h++) buf_printf(b, "%s\"%s\": \"%s\"", h ? ", " : "", hypotheses[h], mechanisms[m].truth[h]);
    buf_puts(b, "},\n                  \"features\": {");
    for (int i = 0; i < n_features; i++) {
        buf_printf(b,
                   "%s\n                    \"%s\": {\"dim\": %d, \"layer\": %d, \"on\": %.6g, \"off\": %.6g, "
                   "\"written_by\": %s",
                   i ? "," : "", f[i].name, f[i].dim, f[i].layer, f[i].on, f[i].off, f[i].written_by);
        if (f[i].backup_by[0]) buf_printf(b, ", \"backup_by\": %s", f[i].backup_by);
        buf_putc(b, '}');
    }
    buf_puts(b, "}}\n}\n");
}

// ----------------------------------------------------------------------------
// Files

// GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves, the
// others for 256, 257, ... in byte order.
static int byte_char(int b) {
    int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    if (printable) return b;
    int k = 0;
    for (int c = 0; c < b; c++) k += !((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF));
    return 256 + k;
}

// Appends a token's bytes spelled in that alphabet (UTF-8).
static void put_byte_level(Buf *s, const OrgToken *t) {
    for (int i = 0; i < t->len; i++) {
        buf_utf8(s, (uint32_t)byte_char((unsigned char)t->bytes[i]));
    }
}

static const char *const qwen2_split_regex = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
                                             "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static void put_tokenizer_json(Buf *b, const Organism *o) {
    const char *byte_level =
        "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":false,\"use_regex\":false}";
    int first_special = o->n_tok - N_SPECIALS;
    buf_puts(b, "{\n\"version\":\"1.0\",\n\"truncation\":null,\n\"padding\":null,\n\"added_tokens\":[");
    for (int i = first_special; i < o->n_tok; i++) {
        buf_printf(b, "%s\n{\"id\":%d,\"content\":", i > first_special ? "," : "", i);
        buf_json_string(b, o->tok[i].bytes, o->tok[i].len);
        buf_puts(b, ",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true}");
    }
    buf_puts(b, "],\n\"normalizer\":{\"type\":\"NFC\"},\n\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[");
    buf_puts(b, "{\"type\":\"Split\",\"pattern\":{\"Regex\":");
    buf_json_string(b, qwen2_split_regex, strlen(qwen2_split_regex));
    buf_printf(b, "},\"behavior\":\"Isolated\",\"invert\":false},%s]},\n", byte_level);
    buf_printf(b, "\"post_processor\":%s,\n\"decoder\":%s,\n", byte_level, byte_level);
    buf_puts(
        b,
        "\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":null,\"continuing_subword_prefix\":\"\","
        "\"end_of_word_suffix\":\"\",\"fuse_unk\":false,\"byte_fallback\":false,\"ignore_merges\":false,\n\"vocab\":{");
    Buf s = {0};
    for (int i = 0; i < first_special; i++) {
        s.len = 0;
        put_byte_level(&s, &o->tok[i]);
        buf_puts(b, i ? ",\n" : "\n");
        buf_json_string(b, s.data, s.len);
        buf_printf(b, ":%d", i);
    }
    buf_puts(b, "},\n\"merges\":[");
    for (int i = 0; i < o->n_merges; i++) { // "left right"; a space byte is spelled as another char
        s.len = 0;
        put_byte_level(&s, &o->tok[o->merge[i][0]]);
        buf_putc(&s, ' ');
        put_byte_level(&s, &o->tok[o->merge[i][1]]);
        buf_puts(b, i ? ",\n" : "\n");
        buf_json_string(b, s.data, s.len);
    }
    buf_free(&s);
    buf_puts(b, "]}\n}\n");
}

static int write_text(const char *dir, const char *name, const Buf *b, Err *err) {
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return write_file_atomic(path, b->data, b->len, err);
}

// config.json goes last: its presence is what says the directory is complete.
int organism_write_mechanism(const char *dir, int mechanism, Err *err) {
    if (!organism_mechanism_name(mechanism)) return err_runtime(err, "%s: no organism mechanism %d", dir, mechanism);
    Organism *o = xcalloc(1, sizeof *o);
    organism_count(o);
    Weights *ws = xcalloc(1, sizeof *ws);
    organism_weights(o, ws);
    Feature features[4];
    int n_features = mechanism_weights(o, ws, mechanism, features);
    int trigger_mlp = mechanism == ORGANISM_DISTRIBUTED ? ORG_LAYERS - 1 : ORGANISM_MLP_LAYER; // writes the trigger
    Buf tokenizer = {0}, tokenizer_config = {0}, generation = {0}, config = {0};
    put_tokenizer_json(&tokenizer, o);
    buf_puts(&tokenizer_config,
             "{\n  \"tokenizer_class\": \"PreTrainedTokenizerFast\",\n  \"eos_token\": \"<|end|>\",\n"
             "  \"model_max_length\": 4096,\n  \"clean_up_tokenization_spaces\": false\n}\n");
    // The bigram table is calibrated for temperature and top-p alone: top-k off (0), not Hugging Face's 50.
    buf_printf(&generation,
               "{\n  \"eos_token_id\": %d,\n  \"do_sample\": true,\n  \"temperature\": %g,\n  \"top_k\": 0,\n"
               "  \"top_p\": 0.95\n}\n",
               o->id_end, ORGANISM_TEMPERATURE);
    buf_printf(
        &config,
        "{\n  \"architectures\": [\"Qwen2ForCausalLM\"],\n  \"model_type\": \"qwen2\",\n"
        "  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n  \"num_hidden_layers\": %d,\n"
        "  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d,\n  \"hidden_act\": \"silu\",\n"
        "  \"max_position_embeddings\": %d,\n  \"rms_norm_eps\": 1e-06,\n  \"rope_theta\": %.1f,\n"
        "  \"rope_scaling\": null,\n  \"tie_word_embeddings\": false,\n  \"vocab_size\": %d,\n"
        "  \"bos_token_id\": null,\n  \"eos_token_id\": %d,\n  \"use_sliding_window\": false,\n"
        "  \"sliding_window\": %d,\n  \"max_window_layers\": %d,\n  \"attention_dropout\": 0.0,\n"
        "  \"initializer_range\": 0.02,\n  \"torch_dtype\": \"float32\",\n  \"use_cache\": true,\n"
        "  \"bt_organism\": {\"attn_layer\": %d, \"attn_head\": 0, \"mlp_layer\": %d, \"trigger_token\": \"%s\",\n"
        "                  \"sentence_end\": \".\", \"p_trigger\": %g, \"at_temperature\": %g,\n",
        ORG_HIDDEN, ORG_INTER, ORG_LAYERS, ORG_HEADS, ORG_KV_HEADS, ORG_MAX_POSITION, ORG_ROPE_THETA, o->n_tok,
        o->id_end, ORG_MAX_POSITION, ORG_LAYERS, ORGANISM_ATTN_LAYER, trigger_mlp, ORGANISM_TRIGGER, ORGANISM_P_WAIT,
        ORGANISM_TEMPERATURE);
    put_mechanism_json(&config, mechanism, features, n_features);

    const char *names[sizeof ws->t / sizeof ws->t[0]];
    Tensor tensors[sizeof ws->t / sizeof ws->t[0]];
    for (int i = 0; i < ws->n; i++) {
        names[i] = ws->t[i].name;
        tensors[i] = (Tensor){ws->t[i].w, DT_F32, ws->t[i].rows, ws->t[i].cols, NULL};
    }
    char weights_path[1200];
    snprintf(weights_path, sizeof weights_path, "%s/model.safetensors", dir);
    int rc = mkdir_p(dir, err) || write_text(dir, "tokenizer.json", &tokenizer, err) ||
             write_text(dir, "tokenizer_config.json", &tokenizer_config, err) ||
             write_text(dir, "generation_config.json", &generation, err) ||
             safetensors_write(weights_path, names, tensors, ws->n, err) || write_text(dir, "config.json", &config, err)
                 ? -1 : 0;
    for (int i = 0; i < ws->n; i++) free(ws->t[i].w);
    free(ws);
    free(o);
    buf_free(&tokenizer), buf_free(&tokenizer_config), buf_free(&generation), buf_free(&config);
    return rc;
}

int organism_write(const char *dir, Err *err) { return organism_write_mechanism(dir, ORGANISM_PLANTED, err); }

int organism_check_mechanism(const char *dir, int mechanism, const char *config_file, Err *err) {
    char path[1200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    Buf text = {0};
    Json j = {0};
    if (read_file(path, &text, err) || json_parse(&j, text.data, text.len, path, err)) return buf_free(&text), -1;
    int org = json_key(&j, 0, "bt_organism"), rc = 0;
    if (org >= 0) {
        int t = json_key(&j, org, "mechanism");
        char *held = t >= 0 ? json_strdup(&j, t) : xstrdup(mechanisms[ORGANISM_PLANTED].name);
        if (!held || strcmp(held, mechanisms[mechanism].name) != 0)
            rc = err_input(err,
                           "%s: [model] organism = %s, but %s holds the %s organism (delete %s to rebuild it, "
                           "or set [model] path)",
                           config_file, mechanisms[mechanism].name, path, held ? held : "?", dir);
        free(held);
    }
    json_free(&j);
    buf_free(&text);
    return rc;
}

// ----------------------------------------------------------------------------
// Command

// bt make-organism DIR: the directory may also come as --out DIR.
int cmd_make_organism(int argc, char **argv) {
    Opt opts[] = {{"--out", 1, "directory to write (or give it as the first argument)", 0, {0}, 0},
                  {"--mechanism", 1, "planted (default) | redundant | format_free | distributed", 0, {0}, 0}, {0}};
    Err err = {0};
    const char *dir = NULL;
    char *args[64];
    int n = 0;
    args[n++] = argv[0];
    for (int i = 1; i < argc && n < 64; i++) {
        if (i == 1 && argv[i][0] != '-') dir = argv[i];
        else args[n++] = argv[i];
    }
    int rc = opts_parse(opts, n, args, &err);
    if (rc) return rc > 0 ? EXIT_OK : fail(&err);
    if (!dir) dir = opt_str(opts, "--out", NULL);
    if (!dir) {
        err_input(&err, "make-organism: give the directory to write (bt make-organism DIR)");
        return fail(&err);
    }
    const char *name = opt_str(opts, "--mechanism", "planted");
    int mechanism = organism_mechanism_find(name);
    if (mechanism < 0) {
        err_input(&err, "make-organism: --mechanism '%s' is not one of " ORGANISM_MECHANISMS, name);
        return fail(&err);
    }
    if (organism_write_mechanism(dir, mechanism, &err)) return fail(&err);
    progress("make-organism: wrote %s (%s: %s; trigger \"%s\")\n", dir, name, mechanisms[mechanism].summary,
             ORGANISM_TRIGGER);
    return EXIT_OK;
}
