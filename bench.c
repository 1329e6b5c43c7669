// bench.c: benchmark models and the benchmark. make-bench-model writes a seeded
// random-weight model of a real shape as an ordinary Hugging Face directory; bench
// times what the pipeline spends its hours on (prefill, decode and batched generation
// through the one generation loop, teacher-forced analyses, the tokenizer) beside the
// machine's read bandwidth. Read top to bottom: shapes, writing a model, measurements,
// the command.
#include "bt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef BT_X86_KERNELS
#include <immintrin.h>
#define HAVE_AVX512 1
#define AVX512 __attribute__((target("avx512f")))
#endif

#define BENCH_SHARD_BYTES (1u << 30)        // make-bench-model: shard size (a shard is built in memory)
#define BENCH_PREFILL_TOKENS 512            // prefill: one prompt of this many tokens, in one call
#define BENCH_DECODE_PROMPT 16              // decode and generation: prompt tokens per sequence (not timed)
#define BENCH_DECODE_TOKENS 64              // decode at batch 1: tokens timed
#define BENCH_GEN_STEPS 32                  // batched generation: steps timed
#define BENCH_SEQ_TOKENS 384                // logit lens and ablation scans: prompt + completion
#define BENCH_BANDWIDTH_BYTES (512u << 20)  // read-bandwidth buffer: far past the last-level cache
#define BENCH_TEXT_BYTES (1u << 20)         // tokenizer text when no --text is given
#define BENCH_MEMORY_SEQS 16                // --only memory: generate this many sequences ...
#define BENCH_MEMORY_TOKENS 2048            // ... to this many tokens (half prompt, half generated)
#define BENCH_SUM_LANES 8                   // portable read-bandwidth loop: independent partial sums
#define BENCH_LONG_PROMPT 128               // long generation: prompt tokens per sequence (timed)
#define BENCH_LONG_NEW 1024                 // long generation: new tokens per sequence (--long-new)
#define BENCH_PROBE_SECONDS 0.05            // peak probes: length of one timed run (the best of several counts)

typedef struct {
    const char *name, *architecture;
    int hidden_size, intermediate_size, n_layers, n_heads, n_kv_heads, head_dim, vocab_size, max_position;
    int tie_word_embeddings, bos_token_id, eos_token_id;
    double rope_theta;
} BenchShape;

// The real models' shapes; the tiny ones have sizes that are not multiples of the SIMD widths,
// and tiny-qwen3's heads are wide enough for the kernels' whole blocks of dimensions (136 = 2 x 64 + 8).
static const BenchShape bench_shapes[] = {
    {"r1-distill-qwen-1.5b", "Qwen2ForCausalLM", 1536, 8960, 28, 12, 2, 128, 151936, 131072, 0, 151646, 151643, 10000},
    {"qwen3-0.6b", "Qwen3ForCausalLM", 1024, 3072, 28, 16, 8, 128, 151936, 40960, 1, 151643, 151645, 1000000},
    {"tiny", "Qwen2ForCausalLM", 96, 2100, 2, 4, 2, 24, 1001, 4096, 0, 1, 2, 10000}, // 2100: 9 packed blocks
    {"tiny-qwen3", "Qwen3ForCausalLM", 96, 200, 2, 2, 1, 136, 1001, 4096, 1, 1, 2, 1000000},
};

static uint16_t f32_to_bf16(float f) { // round to nearest even
    uint32_t b;
    memcpy(&b, &f, 4);
    return (uint16_t)((b + 0x7fffu + ((b >> 16) & 1)) >> 16);
}

static uint16_t f32_to_f16(float f) { // round to nearest even; |f| well inside F16's range here
    uint32_t b;
    memcpy(&b, &f, 4);
    uint32_t sign = (b >> 16) & 0x8000, mag = b & 0x7fffffff;
    if (mag < 0x38800000u) { // below F16's smallest normal: a multiple of 2^-24
        float a = fabsf(f) * 0x1p24f;
        return (uint16_t)(sign | (uint32_t)lrintf(a));
    }
    uint32_t h = ((mag >> 13) - (112u << 10)), rest = mag & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;
    return (uint16_t)(sign | (h > 0x7bff ? 0x7bff : h));
}

// n values center + U(-spread, spread) in dtype, from one seeded stream.
static void bench_fill(void *data, DType dtype, size_t n, float center, float spread, uint64_t seed) {
    Rng rng;
    rng_seed(&rng, seed);
    for (size_t i = 0; i < n; i++) {
        float v = center + spread * (float)((double)(rng_next(&rng) >> 40) * 0x1p-23 - 1.0);
        if (dtype == DT_F32) ((float *)data)[i] = v;
        else if (dtype == DT_BF16) ((uint16_t *)data)[i] = f32_to_bf16(v);
        else ((uint16_t *)data)[i] = f32_to_f16(v);
    }
}

// config.json of a shape, as Hugging Face writes it (the keys bt and transformers read).
static void bench_config_json(Buf *b, const BenchShape *sh, DType dtype) {
    int qwen3 = strcmp(sh->architecture, "Qwen3ForCausalLM") == 0;
    buf_printf(b, "{\n  \"architectures\": [\"%s\"],\n  \"model_type\": \"%s\",\n", sh->architecture,
               qwen3 ? "qwen3" : "qwen2");
    buf_printf(b, "  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n  \"num_hidden_layers\": %d,\n",
               sh->hidden_size, sh->intermediate_size, sh->n_layers);
    buf_printf(b, "  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d,\n", sh->n_heads, sh->n_kv_heads);
    if (qwen3) buf_printf(b, "  \"head_dim\": %d,\n  \"attention_bias\": false,\n", sh->head_dim);
    buf_printf(b, "  \"vocab_size\": %d,\n  \"max_position_embeddings\": %d,\n  \"rms_norm_eps\": 1e-06,\n",
               sh->vocab_size, sh->max_position);
    buf_printf(b, "  \"rope_theta\": %.1f,\n  \"rope_scaling\": null,\n  \"hidden_act\": \"silu\",\n", sh->rope_theta);
    buf_printf(b, "  \"tie_word_embeddings\": %s,\n  \"use_sliding_window\": false,\n",
               sh->tie_word_embeddings ? "true" : "false");
    buf_printf(b, "  \"bos_token_id\": %d,\n  \"eos_token_id\": %d,\n  \"torch_dtype\": \"%s\"\n}\n", sh->bos_token_id,
               sh->eos_token_id, dtype == DT_F32 ? "float32" : dtype == DT_BF16 ? "bfloat16" : "float16");
}

// Writes a random-weight model of a shape into dir: shards of at most BENCH_SHARD_BYTES
// (with model.safetensors.index.json) or one model.safetensors, then config.json.
static int bench_model_write(const char *dir, const BenchShape *sh, DType dtype, uint64_t seed, Err *err) {
    Model m = {0};
    ModelConfig *c = &m.cfg;
    c->hidden_size = sh->hidden_size, c->intermediate_size = sh->intermediate_size, c->n_layers = sh->n_layers;
    c->n_heads = sh->n_heads, c->n_kv_heads = sh->n_kv_heads, c->head_dim = sh->head_dim,
    c->vocab_size = sh->vocab_size;
    c->tie_word_embeddings = sh->tie_word_embeddings;
    c->qkv_bias = strcmp(sh->architecture, "Qwen2ForCausalLM") == 0;
    c->qk_norm = strcmp(sh->architecture, "Qwen3ForCausalLM") == 0;
    m.layers = xcalloc((size_t)c->n_layers, sizeof *m.layers);
    int n_slots = model_slots(&m, NULL);
    TensorSlot *slots = xmalloc((size_t)n_slots * sizeof *slots);
    model_slots(&m, slots);
    int *shard = xmalloc((size_t)n_slots * sizeof *shard), n_shards = 1;
    size_t in_shard = 0, total = 0;
    for (int i = 0; i < n_slots; i++) { // consecutive tensors fill a shard up to the limit
        size_t bytes = (size_t)(slots[i].rows ? slots[i].rows : 1) * slots[i].cols * dtype_bytes(dtype);
        if (in_shard && in_shard + bytes > BENCH_SHARD_BYTES) n_shards++, in_shard = 0;
        shard[i] = n_shards - 1;
        in_shard += bytes;
        total += bytes;
    }
    int rc = mkdir_p(dir, err);
    Buf index = {0};
    buf_printf(&index, "{\n  \"metadata\": {\"total_size\": %zu},\n  \"weight_map\": {", total);
    for (int k = 0, first = 0; rc == 0 && k < n_shards; k++) {
        char file[64], path[1200];
        if (n_shards == 1) snprintf(file, sizeof file, "model.safetensors");
        else snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", k + 1, n_shards);
        snprintf(path, sizeof path, "%s/%s", dir, file);
        int n = 0;
        while (first + n < n_slots && shard[first + n] == k) n++;
        const char **names = xmalloc((size_t)n * sizeof *names);
        Tensor *tensors = xcalloc((size_t)n, sizeof *tensors);
        for (int i = 0; i < n; i++) {
            const TensorSlot *s = &slots[first + i];
            Tensor *t = &tensors[i];
            size_t len = strlen(s->name);
            t->rows = s->rows ? s->rows : 1;
            t->cols = s->cols;
            t->dtype = dtype;
            t->data = xmalloc((size_t)t->rows * t->cols * dtype_bytes(dtype));
            names[i] = s->name;
            // Norm weights near 1, small biases, other weights of variance ~ 1 / fan_in (activations stay O(1)).
            int is_norm = len > 11 && strcmp(s->name + len - 11, "norm.weight") == 0,
                is_bias = len > 4 && strcmp(s->name + len - 4, "bias") == 0;
            float center = is_norm ? 1.0f : 0.0f, spread = is_norm   ? 0.1f
                                                           : is_bias ? 0.02f
                                                                     : 1.7f / sqrtf((float)t->cols);
            bench_fill((void *)t->data, dtype, (size_t)t->rows * t->cols, center, spread,
                       seed_mix(seed, (uint64_t)(first + i)));
            buf_printf(&index, "%s\n    \"%s\": \"%s\"", first + i ? "," : "", s->name, file);
        }
        progress("make-bench-model: %s (%d tensors)\n", path, n);
        rc = safetensors_write(path, names, tensors, n, err);
        for (int i = 0; i < n; i++) free((void *)tensors[i].data);
        free(tensors);
        free(names);
        first += n;
    }
    buf_puts(&index, "\n  }\n}\n");
    char path[1200];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    if (rc == 0 && n_shards > 1) rc = write_file_atomic(path, index.data, index.len, err);
    Buf config = {0};
    bench_config_json(&config, sh, dtype);
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (rc == 0) rc = write_file_atomic(path, config.data, config.len, err); // last: a model dir only once complete
    buf_free(&config);
    buf_free(&index);
    free(shard);
    free(slots);
    free(m.layers);
    return rc;
}

int cmd_make_bench_model(int argc, char **argv) {
    Opt opts[] = {OPT("--shape", 1, "r1-distill-qwen-1.5b | qwen3-0.6b | tiny | tiny-qwen3"),
                  OPT("--dtype", 1, "bf16 (default) | f16 | f32"),
                  OPT("--seed", 1, "random seed (default 0)"), OPT_END};
    Err err = {0};
    const char *dir = argc > 1 && argv[1][0] != '-' ? argv[1] : NULL;
    int r = opts_parse(opts, argc - (dir != NULL), argv + (dir != NULL), &err);
    if (r) return r > 0 ? EXIT_OK : fail(&err);
    const char *shape = opt_str(opts, "--shape", NULL), *dtype_text = opt_str(opts, "--dtype", "bf16");
    if (!dir || !shape)
        return err_input(&err, "make-bench-model: usage: bt make-bench-model DIR --shape NAME [--dtype bf16|f16|f32]"),
               fail(&err);
    const BenchShape *sh = NULL;
    for (size_t i = 0; i < sizeof bench_shapes / sizeof bench_shapes[0]; i++)
        if (strcmp(bench_shapes[i].name, shape) == 0) sh = &bench_shapes[i];
    if (!sh)
        return err_input(&err, "make-bench-model: --shape '%s' is not r1-distill-qwen-1.5b, qwen3-0.6b, tiny or tiny-qwen3",
                           shape),
               fail(&err);
    DType dtype = strcmp(dtype_text, "f32") == 0 ? DT_F32 : strcmp(dtype_text, "f16") == 0 ? DT_F16 : DT_BF16;
    if (dtype == DT_BF16 && strcmp(dtype_text, "bf16") != 0)
        return err_input(&err, "make-bench-model: --dtype '%s' is not bf16, f16 or f32", dtype_text), fail(&err);
    long long seed;
    if (opt_int(opts, "--seed", 0, INT64_MAX, 0, &seed, &err) < 0) return fail(&err);
    if (bench_model_write(dir, sh, dtype, (uint64_t)seed, &err) < 0) return fail(&err);
    return EXIT_OK;
}

// ----------------------------------------------------------------------------
// Measurements

// The default config's sampler, so the generation figures include sampling.
static const Sampler bench_sampler = {.temperature = 0.6, .top_k = 50, .top_p = 0.95};

// n_seq sequences through the one generation loop: prompts of P tokens (sequence q's prompt
// is ids q..q+P-1), steps tokens each, every eos ignored. Completion tokens per second from
// the moment the last sequence has its first token (prompts in) to the end, or over the
// whole call (whole_run: prompts included, every completion token counted).
static int bench_generate(const Model *m, int n_seq, int P, int steps, const int *ids, const Sampler *sampler,
                          const AblationMask *mask, int whole_run, double *tok_s, Err *err) {
    double start = now_seconds();
    GenSeq *seqs = xcalloc((size_t)n_seq, sizeof *seqs);
    for (int q = 0; q < n_seq; q++) {
        seqs[q] = (GenSeq){.prompt = ids + q, .n_prompt = P, .max_new = steps,
                           .ids = xmalloc((size_t)steps * sizeof *seqs[q].ids)};
        rng_seed(&seqs[q].rng, seed_mix(0xBE7C, (uint64_t)q));
    }
    GenParams params = {.sampler = *sampler, .batch_size = n_seq, .max_seq = P + steps, .mask = mask, .ignore_eos = 1};
    int rc = generate_batch(m, seqs, n_seq, &params, err);
    double t0 = 0, t1 = 0;
    long long tokens = 0;
    for (int q = 0; q < n_seq; q++) {
        if (seqs[q].first_token_s > t0) t0 = seqs[q].first_token_s;
        if (seqs[q].end_s > t1) t1 = seqs[q].end_s;
        tokens += seqs[q].n_ids - !whole_run;
        free(seqs[q].ids);
    }
    free(seqs);
    *tok_s = tokens / (t1 - (whole_run ? start : t0));
    return rc;
}

// One teacher-forced pass over ids[0..n) in slot 0 with mask on every row; the last
// position's logits (when logits) and residuals (when resid).
static int bench_forward(Forcer *f, int *ids, int n, const AblationMask *mask, float *logits, float *resid,
                         Err *err) {
    int last = n - 1;
    ForcedSeq seq = {.tokens = ids, .n_tokens = n, .read_pos = &last, .n_read = 1};
    PassOut out = {.mask = mask, .logits = logits, .resid = resid};
    return force_group(f, &seq, 1, &out, err);
}

// Read bandwidth: the best of a few passes summing a buffer far larger than the caches, in
// huge pages and (AVX-512) prefetched ahead at either of the distances the matmul tiles read
// their packed weights at: a probe that reads slower than bt itself would understate the roof.
#ifdef HAVE_AVX512
AVX512 static float sum_avx512(const float *v, size_t n, int l1_ahead, int l2_ahead) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 64 <= n; i += 64) {
        for (int line = 0; line < 4; line++) {
            _mm_prefetch((const char *)(v + i + 16 * line) + l1_ahead, _MM_HINT_T0);
            _mm_prefetch((const char *)(v + i + 16 * line) + l2_ahead, _MM_HINT_T2);
        }
        a0 = _mm512_add_ps(a0, _mm512_loadu_ps(v + i));
        a1 = _mm512_add_ps(a1, _mm512_loadu_ps(v + i + 16));
        a2 = _mm512_add_ps(a2, _mm512_loadu_ps(v + i + 32));
        a3 = _mm512_add_ps(a3, _mm512_loadu_ps(v + i + 48));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

// sum_avx512 in vectors of 8, for the AVX2 kernels.
__attribute__((target("avx2"))) static float sum_avx2(const float *v, size_t n, int l1_ahead, int l2_ahead) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (size_t i = 0; i + 64 <= n; i += 64)
        for (int line = 0; line < 4; line++) {
            _mm_prefetch((const char *)(v + i + 16 * line) + l1_ahead, _MM_HINT_T0);
            _mm_prefetch((const char *)(v + i + 16 * line) + l2_ahead, _MM_HINT_T2);
            acc[line] = _mm256_add_ps(acc[line], _mm256_add_ps(_mm256_loadu_ps(v + i + 16 * line),
                                                               _mm256_loadu_ps(v + i + 16 * line + 8)));
        }
    __m256 all = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    float lanes[8], sum = 0;
    _mm256_storeu_ps(lanes, all);
    for (int l = 0; l < 8; l++) sum += lanes[l];
    return sum;
}
#endif

// Tokenizer speed on a text file, or on BENCH_TEXT_BYTES of seeded reasoning-like text.
static int bench_tokenizer(const char *tokenizer_path, const char *text_path, double *mb_s, Err *err) {
    static const char *const words[] = {"Wait",
                                        ",",
                                        " so",
                                        " the",
                                        " answer",
                                        " is",
                                        " $",
                                        "12",
                                        "3",
                                        ".",
                                        " Let",
                                        " me",
                                        " check",
                                        ":",
                                        " 4",
                                        " *",
                                        " 7",
                                        " =",
                                        " 28",
                                        "\n\n",
                                        " Actually",
                                        " each",
                                        " of",
                                        " eggs",
                                        " per",
                                        " day",
                                        " she",
                                        " sells",
                                        " 0",
                                        ".5",
                                        " dollars",
                                        " Hmm",
                                        "?",
                                        " total",
                                        " (",
                                        ")",
                                        " \u00e9t\u00e9"};
    Tokenizer *t;
    if (tokenizer_load(&t, tokenizer_path, err) < 0) return -1;
    char tmp[] = "/tmp/bt_bench_text_XXXXXX";
    int rc = 0;
    if (!text_path) { // one text per line, as tokenizer_bench reads a plain file
        Buf text = {0};
        Rng rng;
        rng_seed(&rng, 5);
        while (text.len < BENCH_TEXT_BYTES) {
            int n = 20 + (int)rng_below(&rng, 200);
            for (int i = 0; i < n; i++) buf_puts(&text, words[rng_below(&rng, sizeof words / sizeof words[0])]);
            buf_putc(&text, '\n');
        }
        int fd = mkstemp(tmp);
        if (fd < 0 || write(fd, text.data, text.len) != (ssize_t)text.len)
            rc = err_runtime(err, "%s: cannot write the benchmark text", tmp);
        if (fd >= 0) close(fd);
        buf_free(&text);
        text_path = tmp;
    }
    TokenizerBench tb;
    if (rc == 0) rc = tokenizer_bench(t, text_path, 1.0, &tb, err);
    if (rc == 0) *mb_s = tb.mb_s;
    if (text_path == tmp) unlink(tmp);
    tokenizer_free(t);
    return rc;
}

static double bench_bandwidth(const Model *m) {
    size_t n = BENCH_BANDWIDTH_BYTES / sizeof(float), per = 1u << 20; // floats per work item
    float *buf = xmalloc_huge(n * sizeof *buf);
    for (size_t i = 0; i < n; i++) buf[i] = 1.0f;
    double best = 0;
    for (int pass = 0; pass < 10; pass++) {
        int row = pass % 2; // odd passes prefetch as the one-row matmul tile does (Model.row_ahead)
        (void)row, (void)m; // unused without the SIMD kernels
        double t0 = now_seconds(), total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total)
        for (size_t i = 0; i < n; i += per) {
#ifdef HAVE_AVX512
            if (m->simd) {
                int l1 = row ? m->row_ahead[0] : MATMUL_PREFETCH_L1_BYTES,
                    l2 = row ? m->row_ahead[1] : MATMUL_PREFETCH_L2_BYTES;
                total += m->simd == SIMD_AVX512 ? sum_avx512(buf + i, per, l1, l2) : sum_avx2(buf + i, per, l1, l2);
                continue;
            }
#endif
            float acc[BENCH_SUM_LANES] = {0};
            for (size_t k = i; k < i + per; k += BENCH_SUM_LANES)
                for (int l = 0; l < BENCH_SUM_LANES; l++) acc[l] += buf[k + l];
            for (int l = 0; l < BENCH_SUM_LANES; l++) total += acc[l];
        }
        double gb_s = (double)n * sizeof *buf / (now_seconds() - t0) / 1e9;
        if (total == (double)n && gb_s > best) best = gb_s; // the sum checks that every value was read
    }
    free(buf);
    return best;
}

static double median(double *v, int n) {
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && v[j] < v[j - 1]; j--) {
            double t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static double peak_rss_mb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0; // Linux reports KiB
}

static int bench_wants(const char *only, const char *name) {
    if (!only) return 1;
    size_t n = strlen(name);
    for (const char *p = only; (p = strstr(p, name)); p += n)
        if ((p == only || p[-1] == ',') && (p[n] == ',' || !p[n])) return 1;
    return 0;
}

enum { BENCH_PREFILL, BENCH_DECODE, BENCH_GEN16, BENCH_GEN64, BENCH_LENS, BENCH_SCAN_ALL, BENCH_SCAN_ONSET,
       BENCH_ATTRIBUTION, BENCH_MEMORY, BENCH_DIRECTIONS, BENCH_STEER16, BENCH_GEN16_LONG, BENCH_GEN64_LONG, N_BENCH };
static const char *const bench_names[N_BENCH] = {"prefill", "decode",      "gen16",  "gen64",      "lens", "scan",
                                                 "scan",    "attribution", "memory", "directions", "steer",
                                                 "gen16_long", "gen64_long"};
#define BENCH_GRAD_TOKENS 4096 // the gradient pass's memory is reported for one item this long

typedef struct {
    const Model *m;
    Forcer f;          // one slot, BENCH_PREFILL_TOKENS positions and rows
    int *ids;          // (n_ids) random token ids
    float *logits;     // (L + 1, vocab)
    float *resid;      // (L + 1, hidden)
    float *x_in;       // (2, hidden) rows a replay enters with
    float *resid_all;  // (BENCH_SEQ_TOKENS, L + 1, hidden) every position's clean residuals
    unsigned char *attn_on, *mlp_on, *none; // (n_layers) masks: attention, MLP, nothing
    AblationMask attn, mlp;
    GradState *grad;   // BENCH_SEQ_TOKENS positions, the scan's keep budget; made on first use
    double *scores;    // (2 n_layers + n_layers n_heads) attribution scores: attention, MLP, heads
    int long_new;      // long generation: new tokens per sequence (0: not run)
} BenchCtx;

// One pass of the scope-all scan over BENCH_SEQ_TOKENS tokens: clean (mask NULL), keeping
// every position's residuals, or from `layer` with mask, entering with those residuals.
static int bench_scan_pass(BenchCtx *b, const AblationMask *mask, int layer, Err *err) {
    int last = BENCH_SEQ_TOKENS - 1;
    ForcedSeq seq = {.tokens = b->ids, .n_tokens = BENCH_SEQ_TOKENS, .read_pos = &last, .n_read = 1};
    PassOut out = {.mask = mask, .logits = b->logits};
    if (mask) out.enter = b->resid_all, out.first_layer = layer;
    else out.resid_all = b->resid_all;
    return force_group(&b->f, &seq, 1, &out, err);
}

// Steering's costs. directions: items/s, an item being BENCH_SEQ_TOKENS positions all read at every
// layer in one teacher-forced pass and added to the per-layer sums, as bt directions does.
// steer: the time of batch-16 generation with a steering vector added at the middle layer over the
// time without it, measured back to back in the order plain, steered, steered, plain.
static int bench_steering(BenchCtx *b, int what, double *value, Err *err) {
    const Model *m = b->m;
    int L = m->cfg.n_layers, D = m->cfg.hidden_size, S = BENCH_SEQ_TOKENS, rc = 0;
    double t0 = now_seconds();
    if (what == BENCH_DIRECTIONS) {
        size_t per = (size_t)(L + 1) * D;
        int *read_pos = xmalloc((size_t)S * sizeof *read_pos);
        float *resid = xmalloc((size_t)S * per * sizeof *resid); // (S, L + 1, hidden)
        double *sum = xcalloc(per, sizeof *sum);                  // (L + 1, hidden)
        for (int p = 0; p < S; p++) read_pos[p] = p;
        ForcedSeq seq = {.tokens = b->ids, .n_tokens = S, .read_pos = read_pos, .n_read = S};
        PassOut out = {.resid = resid};
        rc = force_group(&b->f, &seq, 1, &out, err);
        for (int p = 0; p < S && rc == 0; p++)
            for (size_t k = 0; k < per; k++) sum[k] += resid[(size_t)p * per + k];
        *value = 1 / (now_seconds() - t0);
        free(read_pos), free(resid), free(sum);
        return rc;
    }
    float *vec = xmalloc((size_t)D * sizeof *vec); // (hidden) a steering vector of a typical size
    for (int d = 0; d < D; d++) vec[d] = 0.01f * (float)((d * 7919) % 17 - 8);
    AblationMask steer = {.steer_layer = L / 2, .steer_add = vec};
    // Plain, steered, steered, plain: a load that drifts during the measurement hits both alike.
    double tok_s[4], time_plain = 0, time_steered = 0;
    for (int i = 0; i < 4 && rc == 0; i++) {
        int steered = i == 1 || i == 2;
        rc = bench_generate(m, 16, BENCH_DECODE_PROMPT, BENCH_GEN_STEPS + 1, b->ids, &bench_sampler,
                            steered ? &steer : NULL, 0, &tok_s[i], err);
        if (steered) time_steered += 1 / tok_s[i];
        else time_plain += 1 / tok_s[i];
    }
    *value = time_steered / time_plain;
    free(vec);
    return rc;
}

// One run of one measurement: its value (tokens/s, items/s, s/event or MB).
static int bench_once(BenchCtx *b, int what, double *value, Err *err) {
    const Model *m = b->m;
    int L = m->cfg.n_layers, D = m->cfg.hidden_size, S = BENCH_SEQ_TOKENS, rc = 0;
    double t0 = now_seconds();
    switch (what) {
    case BENCH_PREFILL:
        rc = bench_forward(&b->f, b->ids, BENCH_PREFILL_TOKENS, NULL, b->logits, NULL, err);
        *value = BENCH_PREFILL_TOKENS / (now_seconds() - t0);
        break;
    case BENCH_DECODE:
        rc = bench_generate(m, 1, BENCH_DECODE_PROMPT, BENCH_DECODE_TOKENS + 1, b->ids, &bench_sampler, NULL, 0, value,
                            err);
        break;
    case BENCH_GEN16:
    case BENCH_GEN64:
        rc = bench_generate(m, what == BENCH_GEN16 ? 16 : 64, BENCH_DECODE_PROMPT, BENCH_GEN_STEPS + 1, b->ids,
                            &bench_sampler, NULL, 0, value, err);
        break;
    case BENCH_GEN16_LONG: // realistic: long prompts, a growing cache, prompts and sampling timed
    case BENCH_GEN64_LONG:
        rc = bench_generate(m, what == BENCH_GEN16_LONG ? 16 : 64, BENCH_LONG_PROMPT, b->long_new, b->ids,
                            &bench_sampler, NULL, 1, value, err);
        break;
    case BENCH_LENS: // the residual after every layer at the last position, each through final norm + lm_head
        rc = bench_forward(&b->f, b->ids, S, NULL, NULL, b->resid, err);
        if (rc == 0) model_final_logits_rows(m, b->resid, L + 1, (size_t)D, b->logits);
        *value = 1 / (now_seconds() - t0);
        break;
    case BENCH_SCAN_ALL: { // a clean pass, then per component a pass from its layer: first and last timed
        memset(b->attn_on, 0, (size_t)L), memset(b->mlp_on, 0, (size_t)L);
        b->attn_on[0] = b->mlp_on[L - 1] = 1;
        rc = bench_scan_pass(b, NULL, 0, err);
        double t_clean = now_seconds() - t0;
        if (rc == 0) rc = bench_scan_pass(b, &b->attn, 0, err);
        double t_first = now_seconds() - t0 - t_clean;
        if (rc == 0) rc = bench_scan_pass(b, &b->mlp, L - 1, err);
        double t_last = now_seconds() - t0 - t_clean - t_first;
        *value = t_clean + L * (t_first + t_last); // sum over l of 2 (t_last + (t_first - t_last)(L-1-l)/(L-1))
        break;
    }
    case BENCH_ATTRIBUTION: { // one forward + one backward scoring every layer and head, as the scan does per item
        if (!b->grad && !(b->grad = gradstate_new(m, S, GRAD_KEEP_BYTES, err))) return -1;
        t0 = now_seconds(); // the state is allocated once per scan, not per item
        Gradient g = {.token = b->ids, .n = S, .pred_pos = S - 1, .onset_token_id = b->ids[S - 1],
                      .score_attn = b->scores, .score_mlp = b->scores + L, .score_head = b->scores + 2 * L};
        rc = model_gradient(m, b->grad, &g, err);
        *value = now_seconds() - t0;
        break;
    }
    case BENCH_MEMORY: // the 6 GB promise, measured: value = peak RSS after the run (MB)
        rc = bench_generate(m, BENCH_MEMORY_SEQS, BENCH_MEMORY_TOKENS / 2, BENCH_MEMORY_TOKENS / 2, b->ids,
                            &bench_sampler, NULL, 0, &(double){0}, err);
        *value = peak_rss_mb();
        break;
    case BENCH_DIRECTIONS: // a completion's pass with every position read at every layer, summed into the means
    case BENCH_STEER16:
        rc = bench_steering(b, what, value, err);
        break;
    case BENCH_SCAN_ONSET: // a clean forward capturing the event row, then per layer one replay of two rows
        rc = bench_forward(&b->f, b->ids, S, NULL, b->logits, b->resid, err);
        for (int l = 0; l < L && rc == 0; l++) {
            memset(b->attn_on, 0, (size_t)L), memset(b->mlp_on, 0, (size_t)L);
            b->attn_on[l] = b->mlp_on[l] = 1;
            for (int r = 0; r < 2; r++)
                memcpy(b->x_in + (size_t)r * D, b->resid + (size_t)l * D, (size_t)D * sizeof *b->x_in);
            int token[2] = {b->ids[S - 1], b->ids[S - 1]}, slot[2] = {0, 0}, pos[2] = {S - 1, S - 1}, row[2] = {0, 1};
            const AblationMask *masks[2] = {&b->attn, &b->mlp};
            Forward f = {.n = 2, .token = token, .slot = slot, .pos = pos, .mask = masks, .first_layer = l,
                         .x_in = b->x_in, .replay = 1, .logits = b->logits, .logits_row = row};
            rc = model_forward(m, b->f.state, &f, err);
        }
        *value = now_seconds() - t0;
        break;
    }
    return rc;
}

// Each wanted measurement `repeat` times; values[what] = the median, NAN when not wanted.
static int bench_run(const Model *m, int repeat, int long_new, const char *only, double values[N_BENCH], Err *err) {
    const ModelConfig *c = &m->cfg;
    int L = c->n_layers, D = c->hidden_size, n_ids = BENCH_MEMORY_TOKENS + 64; // enough for every measurement
    BenchCtx b = {.m = m, .ids = xmalloc((size_t)n_ids * sizeof(int)),
                  .logits = xmalloc((size_t)(L + 1) * c->vocab_size * sizeof(float)),
                  .resid = xmalloc((size_t)(L + 1) * D * sizeof(float)), .x_in = xmalloc((size_t)2 * D * sizeof(float)),
                  .resid_all = xmalloc((size_t)BENCH_SEQ_TOKENS * (L + 1) * D * sizeof(float)),
                  .attn_on = xcalloc((size_t)L, 1), .mlp_on = xcalloc((size_t)L, 1), .none = xcalloc((size_t)L, 1),
                  .scores = xmalloc((size_t)(2 * L + L * c->n_heads) * sizeof(double)), .long_new = long_new};
    b.attn = (AblationMask){.kind = ABLATE_ZERO, .attn = b.attn_on, .mlp = b.none};
    b.mlp = (AblationMask){.kind = ABLATE_ZERO, .attn = b.none, .mlp = b.mlp_on};
    Rng rng;
    rng_seed(&rng, 20240607);
    for (int i = 0; i < n_ids; i++) b.ids[i] = (int)rng_below(&rng, (uint64_t)c->vocab_size);
    int rows = BENCH_PREFILL_TOKENS > BENCH_SEQ_TOKENS ? BENCH_PREFILL_TOKENS : BENCH_SEQ_TOKENS;
    int rc = forcer_init(&b.f, m, 1, rows, rows, err);
    double *runs = xmalloc((size_t)repeat * sizeof *runs);
    for (int what = 0; what < N_BENCH && rc == 0; what++) {
        values[what] = NAN;
        if (!bench_wants(only, bench_names[what]) || (what == BENCH_MEMORY && !only)) continue; // memory: on request
        int long_run = what == BENCH_GEN16_LONG || what == BENCH_GEN64_LONG;
        if (long_run && long_new == 0) continue;
        int runs_wanted = what == BENCH_MEMORY || long_run ? 1 : repeat; // one long run already averages over its steps
        for (int r = 0; r < runs_wanted && rc == 0; r++) {
            progress("bench: %s%s %d/%d\n", bench_names[what],
                     what == BENCH_SCAN_ALL ? " all" : what == BENCH_SCAN_ONSET ? " onset" : "", r + 1, runs_wanted);
            rc = bench_once(&b, what, &runs[r], err);
        }
        if (rc == 0) values[what] = median(runs, runs_wanted);
    }
    free(runs);
    free(b.ids);
    free(b.logits);
    free(b.resid);
    free(b.x_in);
    free(b.resid_all);
    free(b.attn_on);
    free(b.mlp_on);
    free(b.none);
    free(b.scores);
    gradstate_free(b.grad);
    forcer_free(&b.f);
    return rc;
}

// ----------------------------------------------------------------------------
// Roofline: the machine's per-thread arithmetic peaks, measured with register-only loops,
// and each figure's work (FLOPs, and the bytes of weights and KV cache it must read at
// least once), so that a figure is judged against min(peak x threads, bandwidth x FLOPs/byte).

#define PROBE_ACCS 16 // independent accumulators: more than FMA latency x FMA ports on any x86 core
#define PROBE_STEPS 1024 // loop iterations between clock reads

// F32 FMA peak of the widest vector unit bt can name, in FLOP/s of one thread; *isa names it.
#ifdef BT_X86_KERNELS
__attribute__((target("avx512f"))) static float probe_fma_avx512(long steps) {
    __m512 acc[PROBE_ACCS], a = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(1e-3f);
    for (int i = 0; i < PROBE_ACCS; i++) acc[i] = _mm512_set1_ps((float)i);
    for (long s = 0; s < steps; s++) // acc converges to 1: no overflow, no subnormals
        _Pragma("GCC unroll 16") for (int i = 0; i < PROBE_ACCS; i++) acc[i] = _mm512_fmadd_ps(acc[i], a, c);
    for (int i = 1; i < PROBE_ACCS; i++) acc[0] = _mm512_add_ps(acc[0], acc[i]);
    return _mm512_reduce_add_ps(acc[0]);
}

__attribute__((target("avx2,fma"))) static float probe_fma_avx2(long steps) {
    __m256 acc[PROBE_ACCS], a = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(1e-3f);
    for (int i = 0; i < PROBE_ACCS; i++) acc[i] = _mm256_set1_ps((float)i);
    for (long s = 0; s < steps; s++)
        _Pragma("GCC unroll 16") for (int i = 0; i < PROBE_ACCS; i++) acc[i] = _mm256_fmadd_ps(acc[i], a, c);
    float out[8], sum = 0;
    for (int i = 1; i < PROBE_ACCS; i++) acc[0] = _mm256_add_ps(acc[0], acc[i]);
    _mm256_storeu_ps(out, acc[0]);
    for (int i = 0; i < 8; i++) sum += out[i];
    return sum;
}

// vdpbf16ps: 16 lanes, each two BF16 products added to an F32 accumulator per instruction.
__attribute__((target("avx512f,avx512bf16"))) static float probe_bf16_avx512(long steps) {
    __m512 acc[PROBE_ACCS];
    __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(2e-3f));
    for (int i = 0; i < PROBE_ACCS; i++) acc[i] = _mm512_set1_ps((float)i);
    for (long s = 0; s < steps; s++)
        _Pragma("GCC unroll 16") for (int i = 0; i < PROBE_ACCS; i++) acc[i] = _mm512_dpbf16_ps(acc[i], a, a);
    for (int i = 1; i < PROBE_ACCS; i++) acc[0] = _mm512_add_ps(acc[0], acc[i]);
    return _mm512_reduce_add_ps(acc[0]);
}
#endif

// Portable C: 8-lane accumulators the compiler may keep in vector registers.
static float probe_fma_c(long steps) {
    float acc[PROBE_ACCS][8];
    for (int i = 0; i < PROBE_ACCS; i++)
        for (int l = 0; l < 8; l++) acc[i][l] = (float)(i + l);
    for (long s = 0; s < steps; s++)
        _Pragma("GCC unroll 16") for (int i = 0; i < PROBE_ACCS; i++)
            for (int l = 0; l < 8; l++) acc[i][l] = acc[i][l] * 0.999f + 1e-3f;
    float sum = 0;
    for (int i = 0; i < PROBE_ACCS; i++)
        for (int l = 0; l < 8; l++) sum += acc[i][l];
    return sum;
}

// FLOP/s of one thread while every thread of the run probes at once (cores busy together clock
// lower than one alone, and the figures run on all of them): the best of 10 runs of
// BENCH_PROBE_SECONDS each (on a shared core the best run is the core's own speed).
// flop_per_step: FLOPs of one iteration over every accumulator.
static double probe_peak(float (*probe)(long), double flop_per_step) {
    long steps = PROBE_STEPS;
    volatile float sink = 0;
    double t0 = now_seconds();
    while (now_seconds() - t0 < BENCH_PROBE_SECONDS / 10) sink += probe(steps), steps *= 2; // warm up, find the length
    double best = 0;
    for (int run = 0; run < 10; run++) {
        float sum = 0;
        double t = now_seconds();
#pragma omp parallel reduction(+ : sum)
        sum += probe(steps * 10);
        t = now_seconds() - t; // the slowest thread's: each did steps * 10 within it
        sink += sum;
        if (steps * 10 * flop_per_step / t > best) best = steps * 10 * flop_per_step / t;
    }
    (void)sink;
    return best;
}

// F32 FMA peak (FLOP/s, one thread) and its instructions; the BF16-dot peak, NAN without AVX512-BF16.
static double bench_fma_peak(const char **isa) {
#ifdef BT_X86_KERNELS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return *isa = "avx512", probe_peak(probe_fma_avx512, PROBE_ACCS * 16 * 2);
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return *isa = "avx2", probe_peak(probe_fma_avx2, PROBE_ACCS * 8 * 2);
#endif
    return *isa = "c", probe_peak(probe_fma_c, PROBE_ACCS * 8 * 2);
}

static double bench_bf16_peak(void) {
#ifdef BT_X86_KERNELS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512bf16")) return probe_peak(probe_bf16_avx512, PROBE_ACCS * 16 * 2 * 2);
#endif
    return NAN;
}

// FLOPs and bytes read of one unit of a figure (a token, an item, an event).
typedef struct {
    double flops, bytes;
} Work;

// The model's sizes that set the work: matmul weights per layer and of the lm_head, their
// bytes (norms and biases included), the KV-cache bytes per position per layer.
typedef struct {
    double layer_params, layer_bytes, head_params, head_bytes, kv_bytes;
    double attn_flops; // per query, layer and key
    int n_layers;
} WorkShape;

static WorkShape work_shape(Model *m) {
    const ModelConfig *c = &m->cfg;
    WorkShape w = {.n_layers = c->n_layers, .kv_bytes = 2.0 * c->n_kv_heads * c->head_dim * sizeof(float),
                   .attn_flops = 4.0 * c->n_heads * c->head_dim}; // q.k and p.v: two multiply-adds per head dimension
    int n_slots = model_slots(m, NULL);
    TensorSlot *slots = xmalloc((size_t)n_slots * sizeof *slots);
    model_slots(m, slots);
    for (int i = 0; i < n_slots; i++) {
        const Tensor *t = slots[i].t;
        double params = (double)t->rows * t->cols, bytes = params * (double)dtype_bytes(t->dtype);
        int in_layer = strncmp(slots[i].name, "model.layers.", 13) == 0;
        int head = t == &m->lm_head || (c->tie_word_embeddings && t == &m->embed);
        if (t == &m->embed && !head) continue; // the embedding: one row per token, not counted
        if (in_layer) w.layer_bytes += bytes, w.layer_params += slots[i].rows ? params : 0;
        else w.head_bytes += bytes, w.head_params += head ? params : 0;
    }
    free(slots);
    w.layer_params /= c->n_layers, w.layer_bytes /= c->n_layers;
    return w;
}

// One pass of n_seq sequences, each with n_tok new positions after ctx cached ones, through
// the last `layers` layers, and head_rows rows through the lm_head. Weights are read once
// per pass (the batch shares them), each sequence's KV cache once per layer.
static Work work_pass(const WorkShape *w, double n_seq, double n_tok, double ctx, double layers, double head_rows) {
    double keys = n_tok * ctx + n_tok * (n_tok + 1) / 2; // causal: position i attends to ctx + i + 1 keys
    double flops =
        n_seq * layers * (2 * n_tok * w->layer_params + w->attn_flops * keys) + 2 * head_rows * w->head_params;
    double bytes =
        layers * (w->layer_bytes + n_seq * w->kv_bytes * (ctx + n_tok)) + (head_rows > 0 ? w->head_bytes : 0);
    return (Work){flops, bytes};
}

static Work work_add(Work a, Work b, double times) {
    return (Work){a.flops + times * b.flops, a.bytes + times * b.bytes};
}

// Each figure's work per unit of its value, as bench_once runs it. Decode steps are taken at
// their middle context; a scan pass from layer l runs the last L - l layers.
static void bench_work(const WorkShape *w, int long_new, Work work[N_BENCH]) {
    int L = w->n_layers, S = BENCH_SEQ_TOKENS;
    Work none = {0, 0};
    for (int i = 0; i < N_BENCH; i++) work[i] = (Work){NAN, NAN};
    work[BENCH_PREFILL] = work_add(none, work_pass(w, 1, BENCH_PREFILL_TOKENS, 0, L, 1), 1.0 / BENCH_PREFILL_TOKENS);
    work[BENCH_DECODE] = work_pass(w, 1, 1, BENCH_DECODE_PROMPT + BENCH_DECODE_TOKENS / 2, L, 1);
    for (int n = 16, i = BENCH_GEN16; n <= 64; n *= 4, i = BENCH_GEN64)
        work[i] = work_add(none, work_pass(w, n, 1, BENCH_DECODE_PROMPT + BENCH_GEN_STEPS / 2, L, n), 1.0 / n);
    for (int n = 16, i = BENCH_GEN16_LONG; n <= 64 && long_new > 0; n *= 4, i = BENCH_GEN64_LONG) {
        Work run = work_pass(w, n, BENCH_LONG_PROMPT, 0, L, n); // prompts, then a step per further token
        run = work_add(run, work_pass(w, n, 1, BENCH_LONG_PROMPT + long_new / 2.0, L, n), long_new - 1);
        work[i] = work_add(none, run, 1.0 / ((double)n * long_new));
    }
    work[BENCH_LENS] = work_add(work_pass(w, 1, S, 0, L, 0), work_pass(w, 0, 0, 0, 0, L + 1), 1);
    Work scan = work_pass(w, 1, S, 0, L, 1), onset = scan;
    for (int l = 0; l < L; l++) {
        scan = work_add(scan, work_pass(w, 1, S, 0, L - l, 1), 2); // an attention and an MLP pass from layer l
        onset = work_add(onset, work_pass(w, 2, 1, S - 1, L - l, 2), 1); // one replay of two rows
    }
    work[BENCH_SCAN_ALL] = scan, work[BENCH_SCAN_ONSET] = onset;
}

// The passes of each stage in a process of its own (this bt, `bench --only FIGURE --repeat 1 --json`),
// so one figure's buffers do not hide another's: the peak RSS (MB) the child reports after its passes
// and before its probes, NAN when it could not run.
static const char *const stage_memory_figures[] = {"decode", "gen16", "lens", "scan", "attribution", "directions"};
#define N_STAGE_MEMORY (int)(sizeof stage_memory_figures / sizeof stage_memory_figures[0])

static double child_peak_rss_mb(const char *dir, const char *figure) {
    char self[4096], threads[16], out_path[] = "/tmp/bt-bench-XXXXXX";
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    int fd = mkstemp(out_path);
    if (len <= 0 || fd < 0) return NAN;
    unlink(out_path); // the open descriptor is all the child and this process need
    self[len] = 0;
    snprintf(threads, sizeof threads, "%d", bt_threads);
    char *args[] = {self,  "bench",      "--model", (char *)dir, "--only",  (char *)figure, "--repeat", "1",
                    "--long-new", "0", "--threads", threads,     "--quiet", "--json",       NULL};
    posix_spawn_file_actions_t io;
    posix_spawn_file_actions_init(&io);
    posix_spawn_file_actions_adddup2(&io, fd, 1);
    pid_t pid;
    extern char **environ;
    int rc = posix_spawn(&pid, self, &io, NULL, args, environ), status = 0;
    posix_spawn_file_actions_destroy(&io);
    double mb = NAN;
    char text[8192];
    ssize_t n = 0;
    if (rc == 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0 &&
        (n = pread(fd, text, sizeof text - 1, 0)) > 0) {
        text[n] = 0;
        const char *at = strstr(text, "\"peak_rss_mb\":");
        if (at) mb = strtod(at + strlen("\"peak_rss_mb\":"), NULL);
    }
    close(fd);
    return mb;
}

int cmd_bench(int argc, char **argv) {
    Opt opts[] = {OPT("--model", 1, "Hugging Face model directory (see make-bench-model)"),
                  OPT("--repeat", 1, "runs of each measurement; the median is printed (default 3)"),
                  OPT("--only", 1,
                      "comma-separated subset: prefill,decode,gen16,gen64,gen16_long,gen64_long,lens,scan,"
                      "attribution,directions,steer,tokenizer,bandwidth; or memory (minutes)"),
                  OPT("--tokenizer", 1, "tokenizer.json to time (default: the model directory's, if any)"),
                  OPT("--text", 1, "text to tokenize: JSONL (every string) or lines (default: 1 MB of generated text)"),
                  OPT("--long-new", 1, "gen16_long, gen64_long: new tokens per sequence (default 1024; 0 skips them)"),
                  OPT("--json", 0, "print one JSON object instead of the table"), OPT_END};
    Err err = {0};
    int r = opts_parse(opts, argc, argv, &err);
    if (r) return r > 0 ? EXIT_OK : fail(&err);
    const char *dir = opt_str(opts, "--model", NULL), *only = opt_str(opts, "--only", NULL);
    long long repeat, long_new;
    if (!dir) return err_input(&err, "bench: --model DIR is required"), fail(&err);
    if (opt_int(opts, "--repeat", 1, 100, 3, &repeat, &err) < 0) return fail(&err);
    if (opt_int(opts, "--long-new", 0, 1 << 20, BENCH_LONG_NEW, &long_new, &err) < 0) return fail(&err);
    Model m;
    if (model_load(&m, dir, &err) < 0) return fail(&err);
    // Weight bytes a decode step reads: every tensor but the embedding, of which it reads one row.
    double weight_bytes = 0, values[N_BENCH], bandwidth = NAN;
    int n_slots = model_slots(&m, NULL);
    TensorSlot *slots = xmalloc((size_t)n_slots * sizeof *slots);
    model_slots(&m, slots);
    for (int i = 0; i < n_slots; i++)
        if (slots[i].t != &m.embed || m.cfg.tie_word_embeddings)
            weight_bytes += (double)slots[i].t->rows * slots[i].t->cols * (double)dtype_bytes(slots[i].t->dtype);
    free(slots);
    if (bench_run(&m, (int)repeat, (int)long_new, only, values, &err) < 0) {
        model_free(&m);
        return fail(&err);
    }
    double rss_mb = peak_rss_mb(), tokenizer_mb_s = NAN; // RSS before the bandwidth buffer and the tokenizer
    double stage_rss[N_STAGE_MEMORY]; // (N_STAGE_MEMORY) peak RSS of each figure's own process, MB
    for (int i = 0; i < N_STAGE_MEMORY; i++) {
        stage_rss[i] = NAN;
        if (only && bench_wants(only, "memory")) {
            progress("bench: memory of %s in a process of its own\n", stage_memory_figures[i]);
            stage_rss[i] = child_peak_rss_mb(dir, stage_memory_figures[i]);
        }
    }
    char tokenizer_path[1200];
    snprintf(tokenizer_path, sizeof tokenizer_path, "%s/tokenizer.json", dir);
    const char *tok = opt_str(opts, "--tokenizer", path_exists(tokenizer_path) ? tokenizer_path : NULL);
    if (tok && bench_wants(only, "tokenizer")) {
        progress("bench: tokenizer\n");
        if (bench_tokenizer(tok, opt_str(opts, "--text", NULL), &tokenizer_mb_s, &err) < 0) {
            model_free(&m);
            return fail(&err);
        }
    }
    int any_figure = 0;
    for (int i = 0; i < N_BENCH; i++) any_figure |= !isnan(values[i]);
    if (bench_wants(only, "bandwidth") || any_figure) bandwidth = bench_bandwidth(&m);
    const char *fma_isa = "none";
    double fma_peak = NAN, bf16_peak = NAN; // FLOP/s of one thread
    if (bench_wants(only, "peak") || any_figure) {
        progress("bench: arithmetic peaks\n");
        fma_peak = bench_fma_peak(&fma_isa), bf16_peak = bench_bf16_peak();
    }
    struct {
        const char *key, *what, *fmt, *unit;
        double v;
    } rows[] = {
        {"prefill_tok_s", "prefill, 512-token prompt", "%.1f", "tokens/s", values[BENCH_PREFILL]},
        {"decode_tok_s", "decode, batch 1", "%.2f", "tokens/s", values[BENCH_DECODE]},
        {"gen16_tok_s", "generation, batch 16", "%.1f", "completion tokens/s", values[BENCH_GEN16]},
        {"gen64_tok_s", "generation, batch 64", "%.1f", "completion tokens/s", values[BENCH_GEN64]},
        {"gen16_long_tok_s", "generation, 16 x (128 + new)", "%.1f", "completion tokens/s, whole run (--long-new)",
         values[BENCH_GEN16_LONG]},
        {"gen64_long_tok_s", "generation, 64 x (128 + new)", "%.1f", "completion tokens/s, whole run (--long-new)",
         values[BENCH_GEN64_LONG]},
        {"lens_items_s", "logit lens, 384 tokens", "%.3f", "items/s", values[BENCH_LENS]},
        {"scan_s_per_event_all", "ablation scan, scope all", "%.1f",
         "s/event (384 tokens: a clean pass, then 2L passes each from its layer)", values[BENCH_SCAN_ALL]},
        {"scan_s_per_event_onset", "ablation scan, scope onset", "%.2f", "s/event", values[BENCH_SCAN_ONSET]},
        {"attribution_s_per_event", "attribution patching", "%.2f",
         "s/event (384 tokens: one forward + one backward, every layer and head)", values[BENCH_ATTRIBUTION]},
        {"attribution_vs_scan_all", "attribution vs scope-all scan", "%.1f", "x cheaper per event",
         values[BENCH_SCAN_ALL] / values[BENCH_ATTRIBUTION]},
        {"grad_mb_4096", "gradient pass, 4096 tokens", "%.0f",
         "MB beyond the weights (model_gradient_bytes, the scan's keep budget)",
         model_gradient_bytes(&m, BENCH_GRAD_TOKENS, GRAD_KEEP_BYTES) / 1e6},
        {"tokenizer_mb_s", "tokenizer", "%.1f", "MB/s (one thread)", tokenizer_mb_s},
        {"peak_rss_mb", "peak RSS", "%.0f", "MB", rss_mb},
        {"memory_16x2048_rss_mb", "generating 16 x 2048 tokens", "%.0f", "MB peak RSS (--only memory)",
         values[BENCH_MEMORY]},
        {"rss_decode_mb", "decode, own process", "%.0f", "MB peak RSS: weights + KV (--only memory)", stage_rss[0]},
        {"rss_gen16_mb", "generation 16, own process", "%.0f", "MB peak RSS (--only memory)", stage_rss[1]},
        {"rss_lens_mb", "logit lens, own process", "%.0f", "MB peak RSS (--only memory)", stage_rss[2]},
        {"rss_scan_mb", "ablation scan, own process", "%.0f", "MB peak RSS, both scopes (--only memory)",
         stage_rss[3]},
        {"rss_attribution_mb", "attribution, own process", "%.0f", "MB peak RSS (--only memory)", stage_rss[4]},
        {"rss_directions_mb", "directions, own process", "%.0f", "MB peak RSS (--only memory)", stage_rss[5]},
        {"directions_items_s", "directions, 384 tokens", "%.3f", "items/s (every position read at every layer)",
         values[BENCH_DIRECTIONS]},
        {"steer16_time_ratio", "steered generation, batch 16", "%.3f", "x the time of plain generation (back to back)",
         values[BENCH_STEER16]},
        {"bandwidth_gb_s", "read bandwidth", "%.1f", "GB/s", bandwidth},
        {"roofline_fraction", "decode roofline fraction", "%.2f",
         "(weight bytes per token x decode tokens/s / bandwidth)",
         weight_bytes * values[BENCH_DECODE] / (bandwidth * 1e9)},
        {"fma_peak_gflops", "F32 FMA peak", "%.1f", "GFLOP/s per thread, all threads at once (register-only loop)",
         fma_peak / 1e9},
        {"bf16_peak_gflops", "BF16 dot peak", "%.1f",
         "GFLOP/s per thread, as above (vdpbf16ps; null without AVX512-BF16)", bf16_peak / 1e9},
    };
    // The roofline of each figure: bt computes in F32 whatever the weights' dtype, so the F32 FMA peak is its roof.
    static const struct {
        const char *key, *what;
        int figure, per_second; // per_second: the value is a rate (else seconds per unit)
    } roof_rows[] = {
        {"prefill", "prefill 512", BENCH_PREFILL, 1}, {"decode", "decode", BENCH_DECODE, 1},
        {"gen16", "generation, batch 16", BENCH_GEN16, 1}, {"gen64", "generation, batch 64", BENCH_GEN64, 1},
        {"gen16_long", "generation, 16 long", BENCH_GEN16_LONG, 1},
        {"gen64_long", "generation, 64 long", BENCH_GEN64_LONG, 1},
        {"lens", "logit lens item", BENCH_LENS, 1}, {"scan_all", "scan event, scope all", BENCH_SCAN_ALL, 0},
        {"scan_onset", "scan event, scope onset", BENCH_SCAN_ONSET, 0},
    };
    int n_roof = (int)(sizeof roof_rows / sizeof roof_rows[0]);
    WorkShape shape = work_shape(&m);
    Work work[N_BENCH];
    bench_work(&shape, (int)long_new, work);
    double roof_intensity[16], roof_gflops[16], reached_gflops[16], roof_fraction[16]; // (n_roof)
    for (int i = 0; i < n_roof; i++) {
        double v = values[roof_rows[i].figure], rate = roof_rows[i].per_second ? v : 1 / v;
        const Work *wk = &work[roof_rows[i].figure];
        roof_intensity[i] = wk->flops / wk->bytes;
        roof_gflops[i] = fmin(fma_peak * bt_threads, bandwidth * 1e9 * roof_intensity[i]) / 1e9;
        reached_gflops[i] = wk->flops * rate / 1e9;
        roof_fraction[i] = reached_gflops[i] / roof_gflops[i]; // NAN when the figure or a probe was not run
    }
    int n_rows = (int)(sizeof rows / sizeof rows[0]);
    const char *kernels = simd_names[m.simd];
    Buf b = {0};
    if (opt_str(opts, "--json", NULL)) {
        buf_puts(&b, "{\"model\":");
        buf_json_string(&b, dir, strlen(dir));
        buf_printf(&b, ",\"threads\":%d,\"kernels\":\"%s\",\"weight_bytes_per_token\":%.0f", bt_threads, kernels,
                   weight_bytes);
        for (int i = 0; i < n_rows; i++) {
            buf_printf(&b, ",\"%s\":", rows[i].key);
            buf_json_double(&b, rows[i].v);
        }
        buf_printf(&b, ",\"fma_isa\":\"%s\"", fma_isa);
        for (int i = 0; i < n_roof; i++) {
            buf_printf(&b, ",\"%s_roofline_fraction\":", roof_rows[i].key);
            buf_json_double(&b, roof_fraction[i]);
        }
        buf_puts(&b, "}\n");
    } else {
        buf_printf(&b, "bt bench: %s (%s, %s weights, %.2f GB per token), %d threads, %s kernels, median of %lld\n",
                   dir, m.cfg.architecture, dtype_name(m.lm_head.dtype), weight_bytes / 1e9, bt_threads, kernels,
                   repeat);
        for (int i = 0; i < n_rows; i++) {
            char v[32] = "null";
            if (!isnan(rows[i].v)) snprintf(v, sizeof v, rows[i].fmt, rows[i].v);
            buf_printf(&b, "  %-28s %10s  %s\n", rows[i].what, v, rows[i].unit);
        }
        buf_printf(&b, "roofline: min(%.1f GFLOP/s F32 FMA (%s) x %d threads, %.1f GB/s x FLOP/byte)", fma_peak / 1e9,
                   fma_isa, bt_threads, bandwidth);
        buf_puts(&b, "; bytes = weights + KV cache, each read once\n");
        buf_printf(&b, "  %-28s %10s %12s %12s %9s\n", "figure", "FLOP/byte", "roof GFLOP/s", "reached", "fraction");
        for (int i = 0; i < n_roof; i++) {
            if (isnan(values[roof_rows[i].figure])) continue;
            buf_printf(&b, "  %-28s %10.1f %12.1f %12.1f %9.2f\n", roof_rows[i].what, roof_intensity[i], roof_gflops[i],
                       reached_gflops[i], roof_fraction[i]);
        }
    }
    write_stdout(&b);
    buf_free(&b);
    model_free(&m);
    return EXIT_OK;
}
