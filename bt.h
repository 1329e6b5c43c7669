// bt: the backtracking state-transition pipeline in C.
// One header for the whole program: data structures first, then the functions
// each source file provides, in the order a reader goes: io.c, bt.c, tokenizer.c,
// model.c, generate.c, analysis.c, report.c, organism.c, bench.c.
#ifndef BT_H
#define BT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

// The x86 SIMD kernels (AVX-512, AVX2) are compiled where gcc or clang target x86-64, and run
// where the CPU has them; -DBT_PORTABLE leaves them out, as every other architecture does.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(BT_PORTABLE)
#define BT_X86_KERNELS 1
#endif
#ifndef _OPENMP
#pragma GCC diagnostic ignored "-Wunknown-pragmas" // built without OpenMP: the omp loops run serially
#endif

#define BT_VERSION "0.1.0"
#define BT_DEFAULT_CONFIG "configs/backtracking_state_transition.ini"

// ----------------------------------------------------------------------------
// Errors are values: a parser or loader fills an Err and returns -1; only the
// command (and so main) prints it and decides the exit code.

enum { EXIT_OK = 0, EXIT_RUNTIME = 1, EXIT_BAD_INPUT = 2 };

typedef struct {
    int code;       // EXIT_BAD_INPUT or EXIT_RUNTIME
    char msg[1024]; // one line, names the file and line or tensor
} Err;

int err_input(Err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));   // code 2, returns -1
int err_runtime(Err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3))); // code 1, returns -1

// ----------------------------------------------------------------------------
// Memory and byte buffers (io.c)

void *xmalloc(size_t n);             // exits 1 with a message when out of memory
#define HUGE_PAGE_BYTES ((size_t)2 << 20) // x86-64 transparent huge page
void *xmalloc_huge(size_t n);        // xmalloc in whole huge pages, for streams of weights
// AVX-512: how far ahead of a stream of weights the tiles of many rows prefetch, into L1 and,
// further, into L2: one distance into L1 alone left them short of bandwidth (README, third
// measurement). The one-row (decode) tile's distances depend on the CPU (Model.row_ahead).
#define MATMUL_PREFETCH_L1_BYTES 1024
#define MATMUL_PREFETCH_L2_BYTES 4096
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
int cmp_int_asc(const void *a, const void *b); // qsort comparator for int
double now_seconds(void);                      // monotonic clock, for progress and benchmarks
uint64_t fnv1a64(const char *s, size_t n);     // FNV-1a: a stable 64-bit digest (seeds, config digests)

// Length of the valid UTF-8 sequence at s[0..n) (1-4), 0 if invalid (overlong, surrogate,
// > U+10FFFF, truncated); its code point in *cp when cp is not NULL.
static inline int utf8_char(const unsigned char *s, size_t n, uint32_t *cp) {
    unsigned c = s[0];
    int len = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0;
    if (len == 0 || c > 0xF4 || (size_t)len > n) return 0;
    uint32_t v = len == 1 ? c : c & (0x3Fu >> (len - 1));
    for (int k = 1; k < len; k++) {
        if ((s[k] & 0xC0) != 0x80) return 0;
        v = v << 6 | (s[k] & 0x3Fu);
    }
    if ((len == 3 && (v < 0x800 || (v >= 0xD800 && v < 0xE000))) || (len == 4 && (v < 0x10000 || v > 0x10FFFF)))
        return 0;
    if (cp) *cp = v;
    return len;
}

typedef struct {
    char *data; // always NUL-terminated when non-NULL
    size_t len;
    size_t cap;
} Buf;

void buf_append(Buf *b, const void *p, size_t n);
void buf_puts(Buf *b, const char *s);
void buf_putc(Buf *b, char c);
void buf_printf(Buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_utf8(Buf *b, uint32_t cp); // the UTF-8 encoding of code point cp
void buf_json_string(Buf *b, const char *s, size_t n); // quoted and escaped; invalid UTF-8 becomes U+FFFD
void buf_json_double(Buf *b, double x);                // shortest round-trip form; NaN/inf as null
void buf_csv_field(Buf *b, const char *s, size_t n);   // RFC 4180: quoted when it holds , " or newline
void buf_free(Buf *b);

// ----------------------------------------------------------------------------
// Files (io.c). Outputs are written whole: temp file + fsync + rename.

int read_file(const char *path, Buf *out, Err *err);
int write_file_atomic(const char *path, const void *data, size_t n, Err *err);
int append_durable(const char *path, const void *data, size_t n, Err *err); // O_APPEND + fsync: one finished record
int copy_file_atomic(const char *from, const char *to, Err *err);
int mkdir_p(const char *path, Err *err);
int path_exists(const char *path);
int path_is_dir(const char *path);

// CSV reading (io.c): a header row and rows of string cells.
typedef struct {
    char **cells; // ((n_rows + 1) * n_cols), row 0 = header
    int n_rows, n_cols;
    char *path;    // the file, for messages
    int *row_line; // (n_rows + 1) source line where each row starts, row 0 = header
} Csv;

int csv_read(const char *path, Csv *t, Err *err); // rows with another field count: "file:line" error
void csv_free(Csv *t);
int csv_col(const Csv *t, const char *name);      // column index, -1 if absent
const char *csv_cell(const Csv *t, int row, int col); // row 0 = first data row

// ----------------------------------------------------------------------------
// JSON reading, jsmn-style (io.c): one flat array of tokens that are spans over
// the source buffer; no tree and no copies. Strings are unescaped only when used.

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } JsonType;

typedef struct {
    JsonType type;
    int start, end; // byte range in src; strings exclude the quotes
    int size;       // arrays: elements; objects: key/value pairs
    int next;       // index of the first token after this value (skips its subtree)
} JsonTok;

typedef struct {
    const char *src; // not owned
    size_t len;
    const char *name; // file name used in messages
    JsonTok *tok;     // (n_tok)
    int n_tok;
} Json;

// Parses the whole of src as one JSON value; errors read "name:line: message".
int json_parse(Json *j, const char *src, size_t len, const char *name, Err *err);
void json_free(Json *j);
int json_line(const Json *j, int t);                  // 1-based source line of token t
int json_key(const Json *j, int obj, const char *key); // value token of key, -1 if absent or obj not an object
int json_eq(const Json *j, int t, const char *s);      // string token equals s (after unescaping)
int json_string(const Json *j, int t, Buf *out);       // appends the unescaped string; -1 if not a string
char *json_strdup(const Json *j, int t);               // unescaped copy, NULL if not a string
int json_number(const Json *j, int t, double *out);    // -1 if not a number
int json_int(const Json *j, int t, long long *out);    // -1 if not an integral number
int json_bool(const Json *j, int t, int *out);         // -1 if not true/false

// Iterate an array (t = element token) or an object (k = key token, k + 1 = value).
#define JSON_FOR_ARRAY(j, arr, i, t) \
    for (int i = 0, t = (arr) + 1; i < (j)->tok[arr].size; i++, t = (j)->tok[t].next)
#define JSON_FOR_OBJECT(j, obj, i, k) \
    for (int i = 0, k = (obj) + 1; i < (j)->tok[obj].size; i++, k = (j)->tok[k + 1].next)

// ----------------------------------------------------------------------------
// Deterministic random numbers: splitmix64 seeding, xoshiro256** stream.
// Every seeded choice in bt derives its stream from (run seed, purpose, indices).

typedef struct { uint64_t s[4]; } Rng;

static inline uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
static inline uint64_t seed_mix(uint64_t a, uint64_t b) {
    uint64_t x = a ^ (b * 0xD1B54A32D192ED03ULL);
    return splitmix64(&x);
}
static inline void rng_seed(Rng *r, uint64_t seed) { for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed); }
static inline uint64_t rng_next(Rng *r) {
    uint64_t *s = r->s, result = ((s[1] * 5) << 7 | (s[1] * 5) >> 57) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = (s[3] << 45) | (s[3] >> 19);
    return result;
}
static inline double rng_uniform(Rng *r) { return (rng_next(r) >> 11) * 0x1.0p-53; } // [0, 1)
static inline uint64_t rng_below(Rng *r, uint64_t n) { return n ? rng_next(r) % n : 0; }
static inline double rng_normal(Rng *r) { // Box-Muller
    double u = rng_uniform(r), v = rng_uniform(r);
    return __builtin_sqrt(-2.0 * __builtin_log(1.0 - u)) * __builtin_cos(6.283185307179586 * v);
}

// ----------------------------------------------------------------------------
// Configuration (bt.c): one INI file; the table of known keys lives in bt.c.

enum { SOURCE_GSM8K, SOURCE_BUILTIN };
enum { ABLATE_ZERO, ABLATE_MEAN };
enum { SCOPE_ALL, SCOPE_ONSET };
// [ablation] method: ablate every component exactly; estimate every layer component and head from one
// forward + backward pass per item; or estimate, then ablate the top verify_k of each kind exactly.
enum { METHOD_EXACT, METHOD_ATTRIBUTION, METHOD_ATTRIBUTION_VERIFY };
static inline const char *ablation_method_name(int method) {
    static const char *const names[] = {"exact", "attribution", "attribution+verify"};
    return names[method];
}
#define MAX_RANDOM_DRAWS 100 // [ablation] random_draws at most
enum { STEER_POSITIVES_EVENTS, STEER_POSITIVES_THINKING };
#define STEER_LAYER_AUTO (-1)

typedef struct {
    char *name;          // from the section name [variant.NAME]
    char *template_text; // prompt with {question}; C escapes already decoded
} Variant;

typedef struct {
    char *file; // the config file it was read from
    // [run]
    char *runs_dir;
    long long seed;
    int threads; // 0 = all cores
    // [model]
    char *model_path;
    int max_seq_len;
    int make_organism; // build the embedded organism at model_path when it is missing
    int organism;      // ORGANISM_*: the mechanism make_organism builds
    // [data]
    int data_source; // SOURCE_*
    char *data_path;
    int n_problems;
    char *processed_dir;
    // [generation]
    int max_new_tokens;
    double temperature, top_p; // NaN when the config leaves them to the model
    int top_k;                 // -1 when the config leaves it to the model
    int batch_size, samples_per_problem;
    char **variants; // (n_variants) baseline variants, in order
    int n_variants;
    // [detection]
    char **triggers; // (n_triggers)
    int n_triggers;
    int controls_per_event;
    int control_min_distance; // tokens between a control position and any event
    // [logit_lens]
    char *lens_variant;
    int lens_max_events;
    // [ablation]
    int ablation_kind;  // ABLATE_*
    int ablation_scope; // SCOPE_*
    int top_k_attn, top_k_mlp;
    int ablation_max_events;
    int random_draws;   // shape-matched random layer sets, each its own condition
    int ablation_method; // METHOD_*
    int verify_k;        // attribution+verify: components of each kind ablated exactly
    int top_k_heads;     // heads selected for the ablation conditions (0 = none)
    // [hypotheses]
    double alpha, h1_min_relative_drop, h2_min_rate_ratio;
    double max_collateral_nll; // nats per token an ablation may add to the baseline text before H1 distrusts it
    // [report]
    char *report_path;
    char *figures_dir;
    char *events_path;     // the event browser (events.html)
    int max_events_shown;  // events the browser shows at most
    // [capture]
    double capture_max_memory_mb; // activations held in memory at once, MB (2^20 bytes)
    double capture_max_file_mb;   // a capture splits into numbered files past this size, MB
    int capture_window;           // --positions window: tokens each side of pred_pos
    int capture_dtype;            // CAPTURE_F32 or CAPTURE_BF16
    // [steering]: difference-of-means directions, steered generation, H3
    int steering_enabled;      // bt run runs directions, the steered conditions and steering-sweep
    int steer_positives;       // STEER_POSITIVES_*
    char *steer_negatives;     // "controls" | "thinking" | "variant:NAME"
    int steer_window_start;    // the event window: tokens from the onset (-1 = the token before it)
    int steer_window_len;      // tokens in the window
    int steer_layer;           // the residual steered (0 = embeddings), STEER_LAYER_AUTO = best held-out AUROC
    double *steer_alphas;      // (n_steer_alphas) in units of the layer's mean norm, nonzero
    int n_steer_alphas;
    char **steer_variants;     // (n_steer_variants) the variants bt run steers (default: the [logit_lens] variant)
    int n_steer_variants;
    double h3_min_rate_change; // [hypotheses]: smallest rate change across the alphas that counts as an effect
    // [variant.*]
    Variant *variant_defs; // (n_variant_defs)
    int n_variant_defs;
} Config;

int config_load(Config *c, const char *path, Err *err);
void config_free(Config *c);
void config_write_resolved(const Config *c, Buf *out); // every key with its effective value
const Variant *config_variant(const Config *c, const char *name);
// The scan covers heads by attribution, and exactly when the design selects heads.
static inline int scan_heads(const Config *c) { return c->ablation_method != METHOD_EXACT || c->top_k_heads > 0; }

// ----------------------------------------------------------------------------
// Command line (bt.c): each command parses its own flags with one helper.

typedef struct {
    const char *name;  // "--config"
    int takes_value;   // 0 = a switch
    const char *help;  // one line for `bt CMD --help`
    const char *value; // last value given (or "1" for a switch), NULL if absent
    const char *values[32]; // every value, for repeatable flags such as --ablate
    int n_values;
} Opt;

#define OPT(name, takes_value, help) {name, takes_value, help, NULL, {0}, 0}
#define OPT_END {0}
#define OPT_CONFIG OPT("--config", 1, "config file (default " BT_DEFAULT_CONFIG ")")

// Fills opts (ended by OPT_END) from argv, argv[0] being the command name.
// Returns 0, 1 after printing usage for --help, or -1 (unknown flag, missing value).
// --quiet and --threads N are accepted by every command.
int opts_parse(Opt *opts, int argc, char **argv, Err *err);
int fail(const Err *err); // prints "bt: message" to stderr once, returns the exit code
const char *opt_str(const Opt *opts, const char *name, const char *fallback);
int parse_ids(const char *s, int vocab, const char *dir, int **ids, int *n, Err *err); // "1,2,3" for --ids
void write_stdout(const Buf *b); // a command's output, flushed
int opt_int(const Opt *opts, const char *name, long long lo, long long hi, long long fallback, long long *out,
            Err *err);

extern int bt_quiet;   // --quiet: no progress on stderr
extern int bt_threads; // threads in use (OpenMP), >= 1

void set_threads(int n); // 0 = all cores
int thread_id(void);     // of the calling thread in its OpenMP team, 0 outside one
void progress(const char *fmt, ...) __attribute__((format(printf, 1, 2))); // stderr unless --quiet

// ----------------------------------------------------------------------------
// Runs (bt.c): the one place that knows the run folder layout.

#define ART_CONFIG_RESOLVED "config_resolved.ini"
#define ART_META "meta.json"
#define ART_EVENTS "analysis/backtracking_events.csv"
#define ART_SUMMARY "analysis/summary_metrics.json"
#define ART_COMPLETIONS "analysis/completions.csv"
#define ART_COLLATERAL "analysis/collateral_damage.csv"
#define ART_LOGIT_LENS "analysis/logit_lens.csv"
#define ART_ABLATION "analysis/ablation_importance.csv"
#define ART_ABLATION_ESTIMATES "analysis/ablation_estimates.csv" // only its shards: attribution+verify's first phase
#define ART_SELECTED "analysis/selected_layers.json"
#define ART_RANDOM_LAYERS "analysis/random_layers.json"
#define ART_MEANS "analysis/component_means.json"
#define ART_HEADS "analysis/head_importance.csv"
#define ART_CONDITIONS "analysis/condition_comparison.csv"
#define ART_FORMATTING "analysis/formatting_summary.csv"
#define ART_LOGIT_LENS_WINDOW "analysis/logit_lens_window.csv"
#define ART_ACTIVATIONS "activations" // bt capture's safetensors files and their index CSVs
#define ART_DIRECTIONS "analysis/directions.safetensors"
#define ART_DIRECTIONS_CSV "analysis/directions.csv"
#define ART_STEERING_SWEEP "analysis/steering_sweep.csv"

typedef struct {
    char id[128];  // run id, e.g. 20251223_123456
    char dir[1024]; // runs_dir/id
} Run;

int run_current(const Config *c, Run *run, Err *err);  // reads runs/.current_run_id
// A stage's start: flags, config (--config), threads, current run; 0 to go on, else 1 and the exit code.
int stage_open(int argc, char **argv, Opt *opts, Config *c, Run *run, int *exit_code);
void run_path(const Run *run, char *out, size_t n, const char *rel); // runs/<id>/<rel>
void run_generation_path(const Run *run, char *out, size_t n, const char *variant, const char *condition);
// Every generation file of the run: variant by variant in the config's order, and within a
// variant baseline, targeted_ablation, random_ablation_1.., then other conditions by name.
int run_generation_files(const Config *c, const Run *run, char ***paths, Err *err);
void run_activation_path(const Run *run, char *out, size_t n, const char *file); // runs/<id>/activations/<file>

// ----------------------------------------------------------------------------
// Problems (bt.c)

typedef struct {
    char *id;       // "gsm8k_test_0042" or "builtin_007"
    char *question;
    char *gold;     // normalised gold answer, commas removed
    char *answer;   // full reference answer text
} Problem;

void processed_path(const Config *c, char *out, size_t n); // <processed_dir>/gsm8k_<N>.jsonl or builtin_<N>.jsonl
int problems_load(const char *path, Problem **out, int *n_out, Err *err);
void problems_free(Problem *p, int n);

// Answers (bt.c): last \boxed{}, else after ####, else the last number after </think>.
void answer_normalize(const char *s, size_t n, char *out, size_t out_n);
void answer_extract(const char *text, size_t n, int thinking_open, char *out, size_t out_n);
int answer_correct(const char *predicted, const char *gold);
int prompt_thinking_open(const char *prompt); // the prompt leaves a <think> open


// ----------------------------------------------------------------------------
// Tokenizer (tokenizer.c): the single source of tokenization. Hugging Face
// tokenizer.json byte-level BPE (Qwen2/2.5/3, DeepSeek-R1-Distill, Llama 3, GPT-2
// style); encode yields byte spans in the input. Load and use are thread-safe:
// a loaded Tokenizer is never written again.

typedef struct Tokenizer Tokenizer;

typedef struct {
    int id;
    int start, end; // byte span [start, end) of the token in the encoded text
} Token;

typedef struct {
    Token *v; // (n)
    int n, cap;
} TokenList;

// Errors (exit 2) name the file and line: bad JSON, wrong types, duplicate ids or
// strings, merges naming tokens not in the vocab, and any pipeline bt does not
// implement (non-BPE models, normalizers other than NFC, unknown Split regexes).
int tokenizer_load(Tokenizer **out, const char *path, Err *err);
void tokenizer_free(Tokenizer *t);
int tokenizer_vocab_size(const Tokenizer *t); // largest id + 1
// Appends the tokens of text[0..len) to out: added tokens split out of the raw text
// first, then NFC (when the file asks for it), the pre-tokenizer, BPE. Any bytes
// are accepted (an invalid UTF-8 byte is a character of no class). Spans are
// offsets in text and tile it: they start at 0, each starts where the previous
// ended, the last ends at len. Where NFC changes the text, the token holding the
// first byte of the changed stretch spans all of its original bytes, and tokens
// starting later inside it start at its end. Fails only for texts of 2 GB or more.
int tokenizer_encode(const Tokenizer *t, const char *text, size_t len, TokenList *out, Err *err);
// Appends the bytes of ids to out (an added token gives its content; unknown ids
// give nothing). offsets (n + 1 entries, or NULL) receive the offset in out->data
// where each token's bytes start, then out->len. decode(encode(s)) == s for any
// bytes s when the tokenizer has no normalizer; with NFC, the text between added
// tokens comes back in NFC (so == s when s is NFC).
void tokenizer_decode(const Tokenizer *t, const int *ids, int n, Buf *out, int *offsets);
// decoded bytes of one token, NULL if unknown
const char *tokenizer_token_bytes(const Tokenizer *t, int id, int *n_bytes);
// Id whose decoded bytes are exactly these, -1 if none; an added token first, as in encoding.
int tokenizer_find(const Tokenizer *t, const char *bytes, int n_bytes);
int tokenizer_is_special(const Tokenizer *t, int id); // an added token marked "special"
void tokens_free(TokenList *l);

// Encoding speed on the texts of a file (each string value of a JSONL object, or
// each line), encoded one text at a time on one thread, repeated until min_seconds.
typedef struct {
    int n_texts, passes;
    long long n_bytes, n_tokens; // one pass
    double seconds;              // all passes
    double mb_s;                 // 10^6 bytes encoded per second
} TokenizerBench;
int tokenizer_bench(const Tokenizer *t, const char *path, double min_seconds, TokenizerBench *b, Err *err);

// ----------------------------------------------------------------------------
// Model (model.c): a Hugging Face checkpoint directory, weights mmapped in their
// stored dtype, an exact batched forward pass with capture and ablation hooks.

typedef enum { DT_F32, DT_BF16, DT_F16 } DType;
static inline size_t dtype_bytes(DType d) { return d == DT_F32 ? 4 : 2; }
const char *dtype_name(DType d); // "F32", "BF16", "F16": safetensors' names

typedef struct {
    const void *data; // into the mmap, NULL when absent (e.g. no bias)
    DType dtype;
    int rows, cols;     // 2-D: (out, in) as stored; 1-D: rows = 1
    const void *packed; // matmul weights on AVX-512: the same values as model.c's kernels read them, else NULL
} Tensor;

typedef struct {
    char architecture[64]; // Qwen2ForCausalLM | Qwen3ForCausalLM | LlamaForCausalLM
    int hidden_size, n_layers, n_heads, n_kv_heads, head_dim, intermediate_size, vocab_size;
    int max_position;
    float rms_norm_eps, rope_theta;
    int rope_llama3; // rope_scaling type "llama3"
    float rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_original_max_position;
    int tie_word_embeddings, qkv_bias, qk_norm;
    int bos_token_id;  // -1 if none
    int eos_ids[8];    // from config.json and generation_config.json
    int n_eos;
    // Sampling defaults from generation_config.json, as Hugging Face's generate() takes them:
    // do_sample false (also when absent) means greedy; absent values are GenerationConfig's.
    int gen_do_sample;
    double gen_temperature; // 1.0 when absent
    int gen_top_k;          // 50 when absent (0 = off)
    double gen_top_p;       // 1.0 when absent
} ModelConfig;

typedef struct {
    Tensor attn_norm;                // (hidden)
    Tensor wq, wk, wv, wo;           // (heads*head_dim, hidden), (kv*head_dim, hidden) x2, (hidden, heads*head_dim)
    Tensor bq, bk, bv;               // (heads*head_dim), (kv*head_dim) x2; Qwen2 only
    Tensor q_norm, k_norm;           // (head_dim); Qwen3 only
    Tensor mlp_norm;                 // (hidden)
    Tensor w_gate, w_up, w_down;     // (inter, hidden) x2, (hidden, inter)
} LayerWeights;

// The matmul, attention and SiLU kernels a model runs: the SIMD levels read packed weights and
// give the same bits as each other; portable C rounds differently (within HF's tolerances).
typedef enum { SIMD_PORTABLE, SIMD_AVX2, SIMD_AVX512 } SimdLevel;
extern const char *const simd_names[]; // "portable", "avx2", "avx512"

typedef struct {
    ModelConfig cfg;
    char dir[1024];
    Tensor embed;          // (vocab, hidden)
    LayerWeights *layers;  // (n_layers)
    Tensor final_norm;     // (hidden)
    Tensor lm_head;        // (vocab, hidden); the embedding when tied
    float *inv_freq;       // (head_dim/2) RoPE inverse frequencies, scaling applied
    void **maps;           // (n_maps) mmapped shard files
    size_t *map_sizes;     // (n_maps)
    int n_maps;
    size_t bytes_mapped, bytes_allocated;
    void *packed;          // the packed matmul weights (Tensor.packed points in), NULL on the portable path
    int simd;              // SimdLevel: the kernels, chosen at load (CPU features, BT_SIMD, BT_NO_SIMD=1)
    size_t l2_bytes;       // one core's L2 (0: unknown), which bounds where the matmul prefetches ahead
    int row_ahead[2];      // SIMD: how far the one-row (decode) matmul tile prefetches into L1, L2 (bytes, by CPU)
} Model;

int model_load(Model *m, const char *dir, Err *err);
int model_config_read(const char *dir, ModelConfig *c, Err *err); // config.json + generation_config.json only
// The tensors of a model's architecture, by Hugging Face name, with the shapes its config implies.
typedef struct {
    char name[96];
    Tensor *t;
    int rows, cols; // rows = 0 for a 1-D tensor of cols values
} TensorSlot;
int model_slots(Model *m, TensorSlot *slots); // fills slots when not NULL; returns how many tensors
void model_free(Model *m);

// Which components to ablate, applied to a component's output before the residual add.
typedef struct {
    int kind;                 // ABLATE_ZERO or ABLATE_MEAN
    unsigned char *attn;      // (n_layers) 1 = replace the attention block output (after o_proj)
    unsigned char *mlp;       // (n_layers) 1 = replace the MLP output (after down_proj)
    unsigned char *head;      // (n_layers * n_heads) 1 = replace that head's output before o_proj; NULL = none
    const float *attn_mean;   // (n_layers, hidden) for ABLATE_MEAN
    const float *mlp_mean;    // (n_layers, hidden)
    const float *head_mean;   // (n_layers, n_heads * head_dim)
    // Steering acts on the residual stream itself, at every row the mask is on.
    // the residual steer_add joins: 0 = embeddings, l = after block l-1 (logit-lens numbering)
    int steer_layer;
    const float *steer_add;   // (hidden) added to that residual; NULL = none
    const float *project_out; // (hidden) unit direction whose component is removed from every residual; NULL = none
} AblationMask;

// KV cache and scratch for one model: n_slots sequences of up to max_seq tokens,
// forward calls of up to max_rows tokens. The cache is F32; attention score buffers
// exist for the threads in use at creation (more threads later are capped to those).
// It remembers how many positions of each slot are cached: a row at pos p needs
// 0..p-1 there (a row at a smaller pos than cached rewinds the slot to p + 1).
typedef struct RunState RunState;

RunState *runstate_new(const Model *m, int n_slots, int max_seq, int max_rows, Err *err);
void runstate_free(RunState *s);
size_t runstate_bytes(const RunState *s);

// One batched forward call. Row i is token[i] of the sequence in KV slot slot[i]
// at position pos[i]; a row attends to its slot's positions 0..pos[i]. Rows of one
// slot come in increasing pos; earlier positions must already be in the cache.
typedef struct {
    int n;                 // rows
    const int *token;      // (n) token ids (ignored when first_layer > 0)
    const int *slot;       // (n)
    const int *pos;        // (n)
    const AblationMask *const *mask; // (n) mask of each row, NULL entries (or NULL) = clean
    // Start at a layer: rows enter first_layer with residual x_in instead of the embedding.
    // Layers below first_layer are not computed and their cache entries are left as they
    // are, so the caller must have cached them (e.g. a clean pass over the same positions):
    // the scope-all ablation scan resumes each ablated pass from the clean residual.
    int first_layer;
    const float *x_in;     // (n, hidden) required when first_layer > 0; optional at 0 (replaces the embeddings)
                           // A mask's steering acts on the residuals the call forms: x_in at layer 0, not above.
    // Replay: rows do not write the cache; each attends to the cached 0..pos-1 plus its own
    // key/value, so many variants of one position fit in one call (the onset-scope scan).
    int replay;
    // Outputs, each for rows whose index entry is >= 0 (that entry is the output row):
    float *logits;         // (n_out, vocab)
    const int *logits_row; // (n) or NULL = no logits
    // (n_cap, n_layers + 1, hidden): [0] embeddings, [l] residual after block l-1 (pre final norm)
    float *resid;
    float *attn_out;       // (n_cap, n_layers, hidden) attention block outputs (before the residual add), or NULL
    float *mlp_out;        // (n_cap, n_layers, hidden) MLP outputs, or NULL
    float *head_out;       // (n_cap, n_layers, n_heads * head_dim) every head's output before o_proj, or NULL
    const int *capture_row; // (n) or NULL = no capture
} Forward;

// Returns -1 with a message for a call that breaks the contract (rows > max_rows, a slot or
// position out of range, a position whose prefix is not cached, two rows writing one cache
// entry, mean ablation without means) before computing anything; token ids out of range
// and positions past max_seq are EXIT_BAD_INPUT, the rest EXIT_RUNTIME.
int model_forward(const Model *m, RunState *s, const Forward *f, Err *err);
// final norm + lm_head of one residual (hidden) -> (vocab)
void model_final_logits(const Model *m, const float *resid, float *logits);
// The same for n residuals, resid + i * stride (floats) -> logits (n, vocab); bitwise what model_forward gives.
void model_final_logits_rows(const Model *m, const float *resid, int n, size_t stride, float *logits);
// A safetensors file of n tensors, in the order given; a tensor with rows = 1 is 1-D.
// Built in memory and written with write_file_atomic.
int safetensors_write(const char *path, const char *const *names, const Tensor *tensors, int n, Err *err);
// One 1-D (rows = 1) or 2-D tensor of a single safetensors file, as F32 in *out (rows, cols); errors
// (exit 2) name the file and tensor.
int safetensors_read_f32(const char *path, const char *name, float **out, int *rows, int *cols, Err *err);

size_t model_kv_bytes_per_token(const Model *m); // KV cache bytes one position of one sequence takes
void tensor_row_f32(const Tensor *t, int row, float *out); // row of a 2-D tensor (cols values) as F32
float tensor_at(const Tensor *t, size_t i);                 // element i (row-major) as F32
// The unit the matmuls (and transposed ones) hand out v-th of n among T threads: a permutation
// of 0..n-1 (identity for T = 1).
int spread_unit(int v, int n, int T);

// Teacher forcing: known token sequences through the model, one per KV slot, n_slots at a
// time, in forward calls of at most max_rows rows; outputs at each sequence's read positions.
typedef struct {
    int *tokens;   // (n_tokens) the whole sequence
    int n_tokens;  // positions fed: start .. n_tokens-1
    int start;     // positions before start are already in this sequence's KV slot
    int *read_pos; // (n_read) increasing, each in [start, n_tokens)
    int n_read;
} ForcedSeq;

typedef struct {
    const Model *m;
    RunState *state;
    int n_slots, max_rows;
    int *token, *slot, *pos, *logits_row, *capture_row; // (max_rows) row buffers
    const AblationMask **mask;                          // (max_rows)
    float *x_in;                                        // (max_rows, hidden) residuals rows enter with
} Forcer;

// What one pass over a group of sequences reads out. Reads are numbered sequence after
// sequence, in read order; positions likewise (sequence i's first at the sum of the
// n_tokens before it).
typedef struct {
    const AblationMask *mask; // on every row, NULL = clean
    float *logits;            // (n_reads, vocab) at the reads, or NULL
    float *resid;             // (n_reads, n_layers + 1, hidden) at the reads, or NULL
    float *resid_all;         // (positions, n_layers + 1, hidden) at every position, or NULL
    // Every position's attention and MLP outputs summed (double, in a fixed order), for
    // component means; not in the same pass as resid or resid_all.
    double *attn_sum, *mlp_sum; // (n_layers, hidden) or NULL
    double *head_sum;           // (n_layers, n_heads * head_dim) or NULL; only beside attn_sum and mlp_sum
    long long *n_summed;        // positions summed
    // Start at first_layer from these residuals (laid out as resid_all) instead of the
    // embeddings; the cache below first_layer must hold this group's clean pass.
    const float *enter;
    int first_layer;
    float *attn, *mlp; // (n_reads, n_layers, hidden) attention block and MLP outputs at the reads, or NULL
} PassOut;

int forcer_init(Forcer *f, const Model *m, int n_slots, int max_seq, int max_rows, Err *err);
void forcer_free(Forcer *f);
// Runs seqs[0..n) (n <= n_slots; sequence i in slot i) through the model.
int force_group(Forcer *f, const ForcedSeq *seqs, int n, const PassOut *out, Err *err);
double log_prob(const float *logits, int vocab, int token, int *rank); // log-softmax at token; rank 0 = most likely

// ----------------------------------------------------------------------------
// Attribution patching (model.c): one forward and one backward pass over one
// teacher-forced sequence give the gradient of metric = log p(onset_token_id | logits
// at pred_pos) with respect to activations (never weights), and from it a first-order
// estimate of every component's ablation effect: zero ablation -sum_t g(t) . a(t),
// mean ablation sum_t g(t) . (mean - a(t)), t over positions 0..pred_pos (later
// positions cannot change the metric and are not computed).

// Scratch of the gradient pass for sequences of up to max_tokens positions: the residual
// stream at every layer boundary, one layer's internals and the gradients (about 1.05 GB for
// 4096 positions of R1-Distill-Qwen-1.5B), plus keep_bytes in which the forward keeps layers'
// internals so that the backward need not recompute them: a pass costs one forward and one
// backward when every layer fits, one more forward of the layers that do not (same results).
typedef struct GradState GradState;

#define GRAD_KEEP_BYTES ((size_t)1536 << 20) // a keep budget: every layer of 515 positions of R1-Distill-Qwen-1.5B

GradState *gradstate_new(const Model *m, int max_tokens, size_t keep_bytes, Err *err);
void gradstate_free(GradState *gs);
size_t gradstate_bytes(const GradState *gs); // everything gradstate_new allocated
size_t model_gradient_bytes(const Model *m, int max_tokens, size_t keep_bytes); // the same, without allocating
int model_gradient_layers_kept(const Model *m, int n, size_t keep_bytes); // of a pass over n positions

typedef struct {
    // The target: ids 0..pred_pos of token (n >= pred_pos + 1) are read.
    const int *token;      // (n) token ids of the sequence
    int n;
    int pred_pos;          // metric reads the logits at this position
    int onset_token_id;    // metric = log softmax(those logits)[onset_token_id]
    // Scoring: each NULL mean scores its kind for zero ablation.
    const float *attn_mean; // (n_layers, hidden) or NULL
    const float *mlp_mean;  // (n_layers, hidden) or NULL
    const float *head_mean; // (n_layers, n_heads * head_dim) or NULL
    // Outputs, each NULL = not wanted. Rows are positions 0..pred_pos.
    double metric;         // log p(onset_token_id) at pred_pos (F32 logits, log-sum-exp in double)
    float *grad_resid;     // (pred_pos + 1, n_layers + 1, hidden): [0] embeddings, [l] residual after block l-1
    float *grad_attn;      // (pred_pos + 1, n_layers, hidden) d metric / d attention output (after o_proj)
    float *grad_mlp;       // (pred_pos + 1, n_layers, hidden) d metric / d MLP output (after down_proj)
    float *grad_head;      // (pred_pos + 1, n_layers, n_heads * head_dim) d metric / d each head's output before o_proj
    float *attn_out;       // (pred_pos + 1, n_layers, hidden) the forward activations the gradients pair with
    float *mlp_out;        // (pred_pos + 1, n_layers, hidden)
    float *head_out;       // (pred_pos + 1, n_layers, n_heads * head_dim)
    double *score_attn;    // (n_layers) estimated change of the metric when the component is ablated at every position
    double *score_mlp;     // (n_layers)
    double *score_head;    // (n_layers, n_heads)
    int layers_kept;       // layers whose internals the forward kept (the rest were recomputed)
} Gradient;

// Fills g's wanted outputs. Bitwise the same for any thread count; the forward activations
// are bitwise model_forward's. pred_pos out of [0, n) or past max_tokens, a token id or
// onset_token_id out of the vocabulary: EXIT_BAD_INPUT, nothing computed.
int model_gradient(const Model *m, GradState *gs, Gradient *g, Err *err);
// The scores from g's gradients and activations (those present) and means; bitwise what
// model_gradient computes for the same g.
void attribution_scores(const ModelConfig *c, Gradient *g);

// ----------------------------------------------------------------------------
// Generation (generate.c): the experiment's conditions, Hugging Face's sampler, the one
// batched generation loop, and the records generate appends, one JSON line per
// completion in runs/<id>/generations/<variant>/<condition>.jsonl.

enum { COND_BASELINE, COND_TARGETED, COND_RANDOM, N_CONDITIONS };

// A condition and its name: "baseline", "targeted_ablation", "random_ablation_K" (draw K,
// 1-based; draw 0 = every draw, named "random_ablation", only as a --condition).
typedef struct {
    int kind; // COND_*
    int draw; // COND_RANDOM: 1 .. random_draws, or 0 for all
} Condition;

int condition_parse(const char *name, Condition *out); // -1 if not a condition name
void condition_format(const Condition *c, char *out, size_t n);

// Temperature, then top-k, then top-p: the order of Hugging Face's logits processors.
typedef struct {
    double temperature; // 0 = greedy (the first of equal maxima, as torch.argmax)
    int top_k;          // 0 = off
    double top_p;       // 1 = off
} Sampler;

typedef struct {
    int id;
    float logit;
    float weight; // exp((logit - max logit) / temperature)
    double prob;  // weight / the kept weights' sum: the distribution the token is drawn from
} SampleCandidate;

Sampler config_sampler(const Config *c, const ModelConfig *mc); // [generation] keys, else generation_config.json
// The tokens a draw can return, most likely first, with their probabilities; scratch
// out is (vocab). Returns how many are kept (at least one).
int sampler_filter(const Sampler *s, const float *logits, int vocab, SampleCandidate *out);
int sample_token(const Sampler *s, const float *logits, int vocab, Rng *rng, SampleCandidate *scratch);

// One sequence of the generation loop.
typedef struct {
    const int *prompt;   // (n_prompt)
    int n_prompt;
    int max_new;         // tokens to generate at most
    Rng rng;             // its own sampling stream
    int *ids;            // (max_new) generated ids, the eos not included
    int n_ids;
    int eos_id;          // the eos id that ended it, -1 if none
    const char *finish_reason; // NULL while running, then "eos" | "length" | "max_seq_len"
    int n_fed;           // prompt tokens in the KV cache
    double start_s, first_token_s, end_s; // took a slot, sampled its first token, finished (now_seconds)
} GenSeq;

typedef struct {
    Sampler sampler;
    int batch_size;           // KV slots: sequences generated together
    int max_seq;              // positions per sequence at most (prompt + generated)
    const AblationMask *mask; // on every row, NULL = clean
    int ignore_eos;           // run every sequence to max_new (benchmarks)
    int (*on_finish)(void *ctx, int seq, Err *err); // each sequence as it finishes; nonzero stops the loop
    void (*on_step)(void *ctx);                     // after each forward call (progress), or NULL
    void *ctx;
} GenParams;

// Generates seqs[0..n_seqs) with continuous batching over batch_size KV slots.
int generate_batch(const Model *m, GenSeq *seqs, int n_seqs, const GenParams *p, Err *err);

typedef struct {
    char *problem_id, *variant, *condition;
    int sample;
    char *prompt;        // rendered template
    int prompt_tokens;   // tokens of prompt (the one tokenization path)
    int *completion_ids; // (n_completion) without the EOS token
    int n_completion;
    char *finish_reason; // eos | length | max_seq_len
    int correct;
} GenRecord;

int generations_read(const char *path, GenRecord **out, int *n_out, Err *err);
void generations_free(GenRecord *r, int n);

// Steering conditions (generate.c): steer_<alpha> adds alpha x the steered layer's mean norm x the
// unit direction to that residual at every position; steer_random_<alpha> a random unit direction
// (drawn from the run seed) at the same scale; project_out removes the direction's component from
// every residual. alpha is printed with "%+g" (steer_-2, steer_+0.5).
enum { STEER_DIRECTION, STEER_RANDOM, STEER_PROJECT_OUT };
#define STEER_GROUPS "steer | steer_random | project_out" // what generate --condition takes for them

typedef struct {
    char name[64]; // the condition: its generation file's name
    int kind;      // STEER_*
    double alpha;  // units of the layer's mean norm; 0 for project_out
} SteerCondition;

// The conditions of one group ("steer", "steer_random", "project_out"), or of all three when group is
// NULL, in [steering] alphas order; out holds 2 * n_steer_alphas + 1. Returns how many, -1 for no group
// (out NULL: only whether group names one).
int steer_conditions(const Config *c, const char *group, SteerCondition *out);

// The run's directions (analysis/directions.safetensors) and the layer a condition steers.
typedef struct {
    int n_layers, hidden;
    float *directions; // (n_layers + 1, hidden) difference of means, [0] = embeddings
    float *mean_norm;  // (n_layers + 1) norm of each layer's mean residual
    int layer;         // the steered residual: [steering] layer, or the best held-out AUROC (directions.csv)
} SteerDirections;

int steer_directions_load(const Config *c, const Run *run, const ModelConfig *mc, SteerDirections *d, Err *err);
void steer_directions_free(SteerDirections *d);
// A condition's AblationMask: steer_add / project_out point into vec (hidden), which it fills.
int steer_condition_mask(const Config *c, const SteerDirections *d, const SteerCondition *sc, AblationMask *mask,
                         float *vec, Err *err);


// ----------------------------------------------------------------------------
// Analysis (analysis.c): events and controls, statistics, the ablation design
// (which layers a condition removes), and the analyses on teacher-forced passes.

// Events

typedef struct {
    int trigger;    // index in the config's triggers
    int start, end; // byte range in the text
} TriggerHit;

// Opportunities to backtrack: sentence boundaries ('.', '!' or '?' then white space, or a line
// break) with more text after them. A completion "reasons" when its thinking part has one.
int count_sentence_ends(const char *text, size_t n);
// Case-sensitive whole-word trigger matches, earliest first, no overlaps.
int find_triggers(const char *text, size_t n, char *const *triggers, int n_triggers, TriggerHit *hits, int max_hits);


// Statistics: 95% intervals and tests, each checked against
// published values in tests/test_stats.c. An undefined result is NaN, never a guess.

#define Z95 1.959963984540054     // two-sided 95% standard normal quantile
#define STAT_RESAMPLES 10000      // bootstrap resamples and permutations the analyses use
#define FISHER_REL_TOL 1e-7       // tables this close to the observed one count as "as extreme" (as R and scipy)

typedef struct {
    double est, lo, hi; // point estimate and 95% bounds; NaN when undefined
} Interval;

typedef struct {
    double stat; // Pearson X^2; NaN when the test is undefined
    int df;      // groups used - 1
    double p;    // upper tail of chi-square(df) at stat; NaN when undefined
    int n_groups; // groups used: those with at least one trial
} ChiSquare;

// Wilson score interval for k successes in n trials; n = 0 gives est, lo, hi all NaN.
Interval wilson95(long long k, long long n);
// Fisher's exact test of the 2x2 table [[a, b], [c, d]], two-sided: the summed
// probability of every table with the same margins no more likely than this one.
// Log-factorials, so margins in the millions are fine; an empty table gives 1.
double fisher_exact_p(long long a, long long b, long long c, long long d);
double gamma_q(double a, double x); // upper regularized incomplete gamma Q(a, x); NaN unless a > 0, x >= 0
double chi2_sf(double x, double df); // P(X >= x), X ~ chi-square(df)
// Pearson chi-square test that k[i] / n[i] are one proportion across groups.
// Groups with n[i] = 0 are left out. Undefined (stat and p NaN) when fewer than
// two groups remain or when every trial succeeded or every trial failed.
ChiSquare chi2_homogeneity(const long long *k, const long long *n, int n_groups);
double mean_of(const double *x, int n); // NaN when n = 0
// Percentile bootstrap 95% interval of the mean from n_resamples resamples drawn with an
// Rng seeded with seed: the same inputs and seed give the same interval. est is
// the mean of the data itself; no data gives all NaN.
Interval bootstrap_mean95(const double *x, int n, int n_resamples, uint64_t seed);

// Statistics for steering (analysis.c).
// AUROC: the probability that a positive's score exceeds a negative's, ties counting half (the
// Mann-Whitney U over n_pos x n_neg); weight (n) or NULL = 1 each. NaN without both kinds.
double auroc(const double *score, const unsigned char *is_pos, const double *weight, int n);
// Percentile bootstrap 95% interval of the AUROC resampling whole clusters (cluster[i] in
// [0, n_clusters), e.g. the completion a position is in) with replacement; est is auroc().
Interval auroc_cluster_bootstrap95(const double *score, const unsigned char *is_pos, const int *cluster, int n,
                                   int n_clusters, int n_resamples, uint64_t seed);
typedef struct {
    // least-squares slope of the rate on x (weights n), 95% Wald interval (unpooled; NaN when every rate is 0 or 1)
    double slope, lo, hi;
    double z, p;          // Cochran-Armitage trend statistic and two-sided p (pooled null variance)
} Trend;
// Cochran-Armitage test for a linear trend in k[i] / n[i] over scores x[i], i < m. slope, z and p
// are NaN when x does not vary; z and p also when no trial (or every trial) succeeded.
Trend cochran_armitage(const double *x, const long long *k, const long long *n, int m);

// P(X >= k) for X ~ Binomial(n, p), summed exactly in logs; 1 when k = 0, NaN for bad arguments.
double binomial_tail_p(long long k, long long n, double p);
// Exact one-sided McNemar test on paired yes/no outcomes: b pairs went yes -> no, c went
// no -> yes; the p-value of "the change lowers the rate", P(X >= b), X ~ Binomial(b + c, 1/2).
double mcnemar_p(long long b, long long c);
// Holm's step-down adjustment of n p-values (NaN entries are left out and stay NaN).
void holm_adjust(const double *p, int n, double *adjusted);
// Percentile bootstrap over clusters (e.g. problems, whose completions are not independent):
// each resample draws n_clusters clusters with replacement and calls stat with weights[c] =
// the times cluster c was drawn (all 1 for the estimate). Resamples where stat is NaN are
// left out. share_at_least (or NULL) receives (1 + #{stat* >= threshold}) / (1 + resamples),
// a one-sided bootstrap p-value for "the statistic is below threshold".
typedef double (*ClusterStat)(const void *ctx, const int *weights);
Interval cluster_bootstrap95(ClusterStat stat, const void *ctx, int n_clusters, int n_resamples, uint64_t seed,
                             double threshold, double *share_at_least);
double normal_quantile(double q); // the standard normal quantile (probit)

// Ablation design: Layers an ablation condition removes (selected_layers.json, random_layers.json).
typedef struct {
    int kind;            // ABLATE_ZERO or ABLATE_MEAN
    int *attn_layers;    // (n_attn)
    int n_attn;
    int *mlp_layers;     // (n_mlp)
    int n_mlp;
    int *attn_heads;     // (n_attn_heads, 2) layer, head; "attn_heads" in the JSON, absent when none
    int n_attn_heads;
} LayerSet;

int layer_set_read(const char *path, int n_layers, LayerSet *s, Err *err);
void layer_set_free(LayerSet *s);
void layer_set_json(Buf *b, const LayerSet *s); // {"kind": ..., "attn_layers": [...], "mlp_layers": [...]}
// n_draws sets of as many attention and MLP layers (and heads, of n_heads per layer) as targeted has,
// none of them targeted, drawn from the run seed; distinct sets while the model has that many.
int draw_random_layers(const LayerSet *targeted, int n_layers, int n_heads, long long seed, int n_draws,
                       LayerSet *draws, Err *err);
// The design ablation-scan wrote: draw 0 = the targeted (selected) layers, d >= 1 = random draw d.
int ablation_design_read(const Run *run, int n_layers, int draw, LayerSet *set, Err *err);
// analysis/component_means.json: each component's mean output, (n_layers, hidden) each.
int component_means_read(const Run *run, const ModelConfig *mc, float **attn_mean, float **mlp_mean, Err *err);

// Heads in the ablation design (attribution patching scores every head; a design may ablate some).
// The mask of a set: attn, mlp (n_layers) and, when the set has heads, head (n_layers * n_heads);
// a head the model does not have is EXIT_BAD_INPUT. kind and means are the caller's.
int layer_set_mask(const LayerSet *set, const ModelConfig *mc, AblationMask *mask, Err *err);
void ablation_mask_free(AblationMask *mask); // the arrays layer_set_mask allocated
// The "head" block of component_means.json, (n_layers, n_heads * head_dim): each head's mean output
// before o_proj. A file written before heads were scanned has none: EXIT_BAD_INPUT, run ablation-scan again.
int head_means_read(const Run *run, const ModelConfig *mc, float **head_mean, Err *err);


// ----------------------------------------------------------------------------
// Figures (report.c): a small SVG 1.1 writer, stb-style (a handful of calls that
// append to a Buf), and one function per figure of the spec. A figure is
// self-contained (no scripts, fonts or links), its text escaped, its numbers
// printed at fixed precision: the same data gives the same bytes.

#define FIG_RATE_BY_VARIANT "backtracking_rate_by_variant.svg"
#define FIG_BT_VS_ACCURACY "backtracking_vs_accuracy.svg"
#define FIG_LOGIT_LENS "wait_logit_lens_bt_vs_control.svg"
#define FIG_ABLATION "ablation_importance_by_layer.svg"
#define FIG_RATE_BY_CONDITION "backtracking_rate_by_condition.svg"
#define FIG_FORMATTING "formatting_effect_on_backtracking.svg"
#define FIG_HEAD_IMPORTANCE "head_importance_by_layer.svg"
#define FIG_RATE_BY_STEERING "backtracking_rate_by_steering.svg"

enum { SVG_KEY_BAR, SVG_KEY_LINE, SVG_KEY_DASHED, SVG_KEY_RING, SVG_KEY_ERROR_BAR, SVG_KEY_BAND, SVG_KEY_OUTLINE };

typedef struct {
    const char *name;  // legend text
    const char *color; // "#rrggbb"
    int style;         // SVG_KEY_*: the swatch drawn beside the name
} SvgKey;

typedef struct {
    Buf *out;
    int width, height;                 // canvas, px
    double left, top, right, bottom;   // plot area, px; set by svg_begin, svg_legend and the axes calls
    double x_min, x_max, y_min, y_max; // data range of the plot area (categories: x = 0..n-1)
} Svg;

// Call order: svg_begin, svg_legend, one axes call, then series, then svg_end. Panels: set
// top and bottom of the plot area before each further axes call. NULL axis labels are left out.
// note: grey line under the title, or NULL
void svg_begin(Svg *s, Buf *out, int width, int height, const char *title, const char *note);
void svg_legend(Svg *s, const SvgKey *keys, int n); // rows centred under the title; moves the plot area down
// Numeric axes with "nice" ticks covering [x_min, x_max] x [y_min, y_max]; x_integer: ticks on whole numbers.
void svg_axes(Svg *s, double x_min, double x_max, double y_min, double y_max, const char *x_label,
              const char *y_label, int x_integer);
// Categorical x axis (category i at x = i; long names slanted, then shortened) and a numeric y axis.
void svg_axes_categories(Svg *s, const char *const *categories, int n, double y_min, double y_max,
                         const char *x_label, const char *y_label);
// A line through (x[i], y[i]) (x NULL: x = i) with a band from lo to hi (NULL: none); NaN leaves a gap.
void svg_line_series(Svg *s, const double *x, const double *y, const double *lo, const double *hi, int n,
                     const char *color, int dashed, double opacity);
// Grouped bars: value, lo, hi are (n_groups, n_series); colors (n_series); labels (n_groups, n_series)
// or NULL: small text above each bar when it fits. A NaN value draws no bar, only its label.
void svg_bars(Svg *s, int n_groups, int n_series, const double *value, const double *lo, const double *hi,
              const char *const *colors, const char *const *labels);
void svg_error_bar(Svg *s, double x, double lo, double hi, double cap_px); // vertical whisker in data units
void svg_scatter(Svg *s, const double *x, const double *y, int n, const char *color, int open); // open: rings
void svg_highlight_x(Svg *s, double x0, double x1, const char *color); // translucent column over [x0, x1]
void svg_no_data(Svg *s, const char *why); // "no data" and the reason, where the plot would be
void svg_end(Svg *s);
void svg_escape(Buf *b, const char *text); // XML text/attribute escaping; control bytes and bad UTF-8 dropped

// One series of means with 95% CI bounds, each (n); NaN marks a missing value, lo/hi NULL = no band.
typedef struct {
    const double *mean, *lo, *hi;
} CiSeries;

// The six figures. Each writes one SVG to path whole (temp file + rename) and
// returns 0, or -1 with err filled. Inputs are plain arrays; rates come as counts
// (k of n) and get Wilson 95% intervals here. Empty input (no variants, zero
// completions, no events) gives a figure that says "no data". note: one line
// under the title (model, run id, a test result), or NULL.
//
// Backtracking rate per prompt variant: bt_k[i] of n[i] completions have >= 1 event.
int fig_rate_by_variant(const char *path, const char *const *variants, const long long *bt_k, const long long *n,
                        int n_variants, const char *note, Err *err);
// Accuracy with vs without backtracking per group (e.g. "variant / condition"): correct_bt[i] of
// n_bt[i] completions with an event are correct, correct_nobt[i] of n_nobt[i] without.
int fig_bt_vs_accuracy(const char *path, const char *const *groups, const long long *correct_bt,
                       const long long *n_bt, const long long *correct_nobt, const long long *n_nobt, int n_groups,
                       const char *note, Err *err);
// Logit lens: events and controls are (n_layers + 1) per layer (0 = embeddings): mean log p of
// the onset token at pred_pos with 95% CI. controls may be NULL or n_controls 0.
int fig_logit_lens(const char *path, int n_layers, const CiSeries *events, int n_events, const CiSeries *controls,
                   int n_controls, const char *note, Err *err);
// Ablation scan: (n_layers) mean drop in log p(onset) with 95% CI when layer l's attention / MLP
// output is ablated, over events and (control_* may be NULL) over controls. Two panels, attention
// above MLP; the selected layers (indices) are highlighted.
int fig_ablation_importance(const char *path, int n_layers, const CiSeries *attn, const CiSeries *mlp, int n_events,
                            const CiSeries *control_attn, const CiSeries *control_mlp, int n_controls,
                            const int *selected_attn, int n_selected_attn, const int *selected_mlp,
                            int n_selected_mlp, const char *note, Err *err);
// Backtracking rate per condition (baseline, targeted_ablation, random_ablation): bt_k[i] of n[i].
int fig_rate_by_condition(const char *path, const char *const *conditions, const long long *bt_k,
                          const long long *n, int n_conditions, const char *note, Err *err);
// Formatting sweep: per variant the backtracking rate of the completions that reason
// (reasoning_bt[i] of reasoning[i]) and the share that reason (reasoning[i] of n[i]).
int fig_formatting_effect(const char *path, const char *const *variants, const long long *reasoning_bt,
                          const long long *reasoning, const long long *n, int n_variants, const char *note, Err *err);

// Heatmaps (report.c), for the heads of attribution patching.
// A grid of n_rows x n_cols cells, row 0 at the top: value (n_rows, n_cols) on a diverging scale from
// -limit (blue) through white (0) to +limit (red), NaN grey; marked cells (or NULL) outlined, ringed
// cells (or NULL) carry a small ring; values printed in the cells when they fit. Draws its row and
// column labels and, right of the grid, the colour scale: call it instead of an axes call.
void svg_heatmap(Svg *s, int n_rows, int n_cols, const double *value, double limit, const unsigned char *marked,
                 const unsigned char *ringed, const char *row_label, const char *col_label, const char *scale_label);
// Head importance: effect (n_layers, n_heads) is the mean drop in log p(onset) over n_events events when
// one head is ablated, exact where exact (n_layers, n_heads) is 1, else the attribution estimate;
// selected (n_layers, n_heads) marks the heads the targeted condition ablates. exact, selected may be NULL.
int fig_head_importance(const char *path, int n_layers, int n_heads, const double *effect, const unsigned char *exact,
                        const unsigned char *selected, int n_events, const char *note, Err *err);
// Steering dose-response: each series is one steered variant's direction (a line), random control
// (dashed) or project_out (rings with intervals): k[i] of n[i] completions backtrack at alpha[i]
// (each (n_points)), with Wilson 95% bands.
typedef struct {
    const char *name;       // legend text
    int kind;               // STEER_DIRECTION, STEER_RANDOM or STEER_PROJECT_OUT
    int color;              // index of the variant: series of one variant share a colour
    const double *alpha;    // (n_points) increasing for lines
    const long long *k, *n; // (n_points)
    int n_points;
} SteerSeries;
int fig_rate_by_steering(const char *path, const SteerSeries *series, int n_series, const char *note, Err *err);

// ----------------------------------------------------------------------------
// Organism (organism.c): the embedded planted-mechanism model. A Qwen2 directory
// whose weights are constructed so that " Wait" follows a "." inside an open <think>
// with a set probability, decided by one attention head and one MLP layer; the same
// facts are in its config.json under "bt_organism".

#define ORGANISM_ATTN_LAYER 1     // head 0 moves "inside <think>" into the residual stream
#define ORGANISM_MLP_LAYER 2      // turns that flag + "." into the trigger's logit
#define ORGANISM_TRIGGER " Wait"  // the onset token (one token)
#define ORGANISM_P_WAIT 0.35      // p(trigger | ".", inside <think>) when sampling at ORGANISM_TEMPERATURE
#define ORGANISM_TEMPERATURE 0.6  // the bigram table reproduces its text's frequencies at this temperature

// Writes config.json (last), generation_config.json, tokenizer.json, tokenizer_config.json
// and model.safetensors into dir (created if missing); the same bytes every time.
int organism_write(const char *dir, Err *err);

// Organism mechanisms (organism.c): the same text, vocabulary and noise, wired so that the
// true answer to each hypothesis is known; config.json's "bt_organism" records the mechanism,
// its true verdicts ("truth") and the residual dims of its features ("features").
enum { ORGANISM_PLANTED, ORGANISM_REDUNDANT, ORGANISM_FORMAT_FREE, ORGANISM_DISTRIBUTED, N_ORGANISM_MECHANISMS };
#define ORGANISM_MECHANISMS "planted|redundant|format_free|distributed" // in enum order: [model] organism's choices

const char *organism_mechanism_name(int mechanism); // NULL when out of range
int organism_mechanism_find(const char *name);      // ORGANISM_*, or -1 for an unknown name
// organism_write of one mechanism; organism_write is ORGANISM_PLANTED.
int organism_write_mechanism(const char *dir, int mechanism, Err *err);
// For make_organism with dir already written: -1 (exit 2, naming config_file's [model] organism)
// when dir's config.json records another mechanism; one written before mechanisms existed is
// planted, and a directory that is not an organism (no "bt_organism") passes.
int organism_check_mechanism(const char *dir, int mechanism, const char *config_file, Err *err);
// ----------------------------------------------------------------------------
// Interop and looking: activations out to safetensors (capture.c), the event browser
// (report.c), the plan of a run and progress with an ETA (bt.c).

// The shapes of the heavy stages' forward calls, here because bt plan sizes them too.
#define GEN_PREFILL_ROWS 512 // generate.c: rows of prompt per forward call: bounds the activations of a prefill
#define ANALYSIS_MAX_ROWS 512 // analysis.c: rows per forward call in teacher-forced passes
// analysis.c: scope-all scan: clean residuals kept per group of completions
#define ANALYSIS_CAPTURE_BYTES ((size_t)1 << 30)

enum { CAPTURE_F32, CAPTURE_BF16 };
#define CAPTURE_DTYPES "f32|bf16" // in enum order: [capture] dtype's choices

// A long stage's progress line, "stage: done/total unit, X tok/s, ETA T", printed at most every
// progress_every_s() seconds and at the end. The ETA scales the time so far by the work left
// (work_done of work_total, in any unit: tokens generated against the budget, positions forced).
#define PROGRESS_EVERY_S 2.0
double progress_every_s(void); // PROGRESS_EVERY_S, or $BT_PROGRESS_EVERY_S (tests and logs: 0 = every step)
typedef struct {
    double t0;     // the stage's start (now_seconds)
    double last_s; // when the last line was printed, seconds after t0
} ProgressClock;
void progress_start(ProgressClock *pc);
void progress_eta(ProgressClock *pc, const char *stage, long long done, long long total, const char *unit,
                  double tokens, double work_done, double work_total);
void format_duration(char *out, size_t n, double seconds); // "42s", "3m07s", "2h05m", "?" when unknown
char *render_prompt(const char *template_text, const char *question); // generate.c: every {question} replaced

// ----------------------------------------------------------------------------
// Shards (bt.c, with the run layout): a heavy stage run as N independent tasks. Shard K of N
// (--shard K/N, or --shard auto inside a Slurm job array) takes a contiguous K-th of the stage's
// units (problems for generation, completions for the teacher-forced analyses) and writes
// <stem>.shard-KKK-of-NNN.<ext> next to the unsharded <stem>.<ext>, plus a manifest
// <stem>.shard-KKK-of-NNN.manifest.json (run, stage, N, units, a digest of the inputs, finished).
// A reader takes the unsharded file or, when it is absent, every shard in K order; a set with
// holes, mixed N, an unfinished shard or one from another run is refused (exit 2).

#define SHARD_MAX 999 // shards of one stage at most (three digits in the names)

typedef struct {
    int k, n; // shard k of n, k in 1..n; n = 0: not sharded, the whole stage
} Shard;

// What a shard's manifest records; every shard of one output must agree on all of it.
typedef struct {
    const char *stage; // "generate", "logit-lens", "ablation-scan", "collateral-damage", "directions"
    const char *what;  // the output's subject, e.g. "baseline_think_newline/baseline"
    int units;         // units the stage splits (all shards together)
    int items;         // items of the output (all shards together), -1 when not counted
    uint64_t digest;   // the stage's inputs (config and the files it read); readers compare it
    int append;        // 1: the shard file grows by appends and resumes (generation); 0: written whole
    const double *costs; // (units) what each unit costs, for shares of equal cost; NULL: of equal counts
} ShardInfo;

// --shard: "K/N" (1 <= K <= N <= SHARD_MAX) or "auto": K = SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN
// + 1 of N = SLURM_ARRAY_TASK_COUNT, or, when BT_SHARDS is set (bt slurm's scripts set it, so a task
// resubmitted alone keeps its shard), K = SLURM_ARRAY_TASK_ID of N = BT_SHARDS. NULL: not sharded.
int shard_parse(const char *spec, Shard *s, Err *err);
#define OPT_SHARD                                                                                                      \
    OPT("--shard", 1, "K/N: do the K-th of N shares and write shard files; auto: from the Slurm job array")
// The shard's units [first, end): contiguous shares of equal counts, or, given costs (n_units, each
// >= 0), of equal cost: unit q goes to the shard its cost's midpoint falls in, so a share is within
// the largest unit's cost of the mean.
void shard_range(const Shard *s, int n_units, const double *costs, int *first, int *end);
void shard_file(const char *path, const Shard *s, char *out, size_t n); // dir/stem.ext -> dir/stem.shard-KKK-of-NNN.ext
// Length of the stem when name (no directory) is "<stem>.shard-KKK-of-NNN.<ext>" with this ext, else 0.
size_t shard_name_stem(const char *name, const char *ext);
// Before a shard writes path's shard file: refuses (exit 2, nothing written) an unsharded path that
// exists, shards of path with another N, and this shard's file left by another run or stage; then
// writes the manifest as unfinished. shard_finish marks it finished once the shard file is whole.
int shard_begin(const Run *run, const char *path, const Shard *s, const ShardInfo *info, Err *err);
int shard_finish(const Run *run, const char *path, const Shard *s, const ShardInfo *info, Err *err);
// Whether this shard's output is already there, finished, with the same info (a rerun skips it).
int shard_done(const Run *run, const char *path, const Shard *s, const ShardInfo *info);
// The shards of path (the unsharded file of run_id): 0 with *n_shards = 0 when there are none, else
// every shard file in K order after checking the set (one N, none missing, each finished, of run_id,
// all agreeing on their manifests; info, when not NULL, receives theirs, and a nonzero want_digest
// must equal their digest). The caller frees files[0..n) and files.
int shard_set(const char *run_id, const char *path, uint64_t want_digest, char ***files, int *n_shards, ShardInfo *info,
              Err *err);
void shard_set_free(char **files, int n);
void shard_info_free(ShardInfo *info);   // frees what shard_set's info received
int exists_or_sharded(const char *path); // the unsharded file or any shard of it is there
uint64_t config_digest(const Config *c); // fnv1a64 of the resolved config: every key's effective value
uint64_t file_digest(const char *path);  // fnv1a64 of a file's bytes, 0 when it cannot be read
// The run id of a path inside a run folder: runs_dir/<id>/generations/<variant>/<condition>.jsonl.
void run_id_of_generation_path(const char *path, char *id, size_t n);
// Each unsharded generation file of the run that is missing while its shards are all there: their
// concatenation in K order (the records of an unsharded run, byte for byte), and timing sidecars alike.
int merge_generations(const Config *c, const Run *run, int *n_merged, Err *err);

// The merging halves of the sharded analyses (analysis.c): each reads the stage's shard files,
// checks them against the run's current inputs and writes the stage's outputs through the same
// summarizing code as an unsharded run, so any N gives the same bytes.
int merge_logit_lens(const Config *c, const Run *run, Err *err);
int merge_ablation_scan(const Config *c, const Run *run, Err *err);
int merge_collateral_damage(const Config *c, const Run *run, Err *err);
int merge_directions(const Config *c, const Run *run, Err *err);

int cmd_merge(int argc, char **argv); // cluster.c: bt merge --stage S
int cmd_slurm(int argc, char **argv); // cluster.c: bt slurm: the pipeline as a chain of sbatch scripts

// ----------------------------------------------------------------------------
// Commands: each returns an exit code. Defined in the file that owns the capability.

int not_built(int argc, char **argv); // for a command whose capability does not exist yet: says so, exits 1

int cmd_init_run(int argc, char **argv);
int cmd_prepare_data(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_detect_events(int argc, char **argv);
int cmd_logit_lens(int argc, char **argv);
int cmd_ablation_scan(int argc, char **argv);
int cmd_compare_conditions(int argc, char **argv);
int cmd_collateral_damage(int argc, char **argv);
int cmd_formatting_sweep(int argc, char **argv);
int cmd_make_report(int argc, char **argv);
int cmd_capture(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_plan(int argc, char **argv);
int cmd_model_info(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);
int cmd_forward(int argc, char **argv);
int cmd_generate_ids(int argc, char **argv);
int cmd_make_organism(int argc, char **argv);
int cmd_make_bench_model(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_directions(int argc, char **argv);
int cmd_steering_sweep(int argc, char **argv);

// ----------------------------------------------------------------------------
// Reliability: checked readers and limits the parsers share (fuzzed in tests/fuzz/).

// Checked CSV cells (io.c): -1 with "file:line: column 'name': ..." when the cell is not
// an integer in [lo, hi] (csv_int) or not a finite number (csv_double).
int csv_int(const Csv *t, int row, int col, long long lo, long long hi, long long *out, Err *err);
int csv_double(const Csv *t, int row, int col, double *out, Err *err);
// The most bytes of token strings a tokenizer may hold (tokenizer.c): UINT32_MAX, as offsets
// into them are 32-bit; a load past it fails. Tests lower it to reach the limit.
extern size_t tokenizer_pool_limit;
// Text files read line by line with C strings (INI, JSONL) refuse a NUL byte, which would
// silently end the text early (io.c): "path:line: NUL byte in a text file".
int text_has_nul(const char *path, const Buf *text, Err *err);
// Duplicate keys in one JSON object (io.c): json_duplicate_key gives the key token that
// repeats an earlier key, -1 if none (O(keys^2): for the small objects bt reads);
// json_unique_keys fails with "name:line: key \"k\" appears twice in one object".
int json_duplicate_key(const Json *j, int obj);
int json_unique_keys(const Json *j, int obj, Err *err);
// GSM8K's {question, answer} JSONL as prepare-data reads it (bt.c); ids are <file stem>_<line - 1>.
int gsm8k_load(const char *path, Problem **out, int *n_out, Err *err);

#endif
