// model.c: Hugging Face checkpoints (config.json + safetensors, mmapped read-only
// in their stored dtype) and the exact batched forward pass with capture and
// ablation hooks; the inspection commands model-info, forward and generate-ids.
// Read top to bottom: stored numbers, safetensors, config.json, loading, the run
// state, the blocks (rmsnorm, matmul, rope, attention), the forward pass, commands.
#include "bt.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef BT_X86_KERNELS
#define HAVE_AVX512 1 // the AVX-512 and AVX2 kernels are compiled (and run where the CPU has them)
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#define ST_MAX_HEADER_BYTES (100u << 20) // the safetensors format caps its JSON header at 100 MB
#define ST_MAX_DIMS 8
#define MAX_EOS 8             // eos ids kept (ModelConfig.eos_ids)
#define MATMUL_W_ROWS 4       // portable: weight rows per block, each x load feeds this many dot products
#define MATMUL_CHUNK 256      // portable: weight columns converted to F32 at a time, on the stack
#define MATMUL_LANES 8        // portable: independent partial sums per dot product
#define MATMUL_SLIVER 32      // AVX-512: weight rows packed side by side, column by column (two vectors of outputs)
#define MATMUL_KC 256         // AVX-512: columns per packed block (a thread's slivers of one stay in L2 while x passes)
#define MATMUL_MR 12          // AVX-512: rows of x per tile (12 x 2 accumulators, 2 weight vectors, a broadcast)
#define MATMUL_MR_FIRST 16    // AVX-512: rows of x in a block's first tile where that spares a 4-row last tile
#define MATMUL_MR_AVX2 6      // AVX2: rows of x per tile (6 x 2 accumulators of 8 outputs: 15 of 16 registers)
#define MATMUL_SLIVER_ORDER_AVX2 24 // AVX2: up to this many rows of x, slivers outer, rows inner
#define MATMUL_MAX_SLIVERS 4  // AVX-512: slivers per tile at most (fewer rows take more slivers)
#define MATMUL_GROUP 12       // AVX-512: slivers a thread takes at a time (a multiple of every tile's slivers)
#define PARALLEL_MIN_MACS 2e5 // smaller matmuls and attentions run on one thread: waking threads costs more
#define PARALLEL_MIN_ROWS 16  // the per-row stages (norms, RoPE, SiLU) of fewer rows run on one thread
#define ATTN_HEADS 6          // AVX-512 attention: query heads sharing a key head, taken together
#define KEY_BLOCK 16          // positions per block of the key cache, stored dimension-major (16 keys' d side by side)
#define LOGIT_ROWS_MAX 64     // rows per lm_head pass (scratch: LOGIT_ROWS_MAX x vocab floats)
#define CMD_MAX_ROWS 256      // prefill chunk of the inspection commands

static int max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

// ----------------------------------------------------------------------------
// Stored numbers: F32, BF16, F16 read as F32 (both 16-bit widenings are exact)

static inline float bf16_to_f32(uint16_t b) {
    uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff, bits;
    if (exponent == 0x1f) bits = sign | 0x7f800000u | (mantissa << 13); // inf, NaN
    else if (exponent) bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    else { // zero or subnormal: mantissa * 2^-24 is exact in F32
        float f = (float)mantissa * 0x1p-24f;
        return sign ? -f : f;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

const char *dtype_name(DType d) { return d == DT_F32 ? "F32" : d == DT_BF16 ? "BF16" : "F16"; }

// n values of row `row` from column `col` on, as F32.
static void tensor_span_f32(const Tensor *t, int row, int col, int n, float *out) {
    size_t off = (size_t)row * (size_t)t->cols + (size_t)col;
    if (t->dtype == DT_F32) {
        memcpy(out, (const float *)t->data + off, (size_t)n * sizeof(float));
    } else if (t->dtype == DT_BF16) {
        const uint16_t *p = (const uint16_t *)t->data + off;
        for (int i = 0; i < n; i++) out[i] = bf16_to_f32(p[i]);
    } else {
        const uint16_t *p = (const uint16_t *)t->data + off;
        for (int i = 0; i < n; i++) out[i] = f16_to_f32(p[i]);
    }
}

void tensor_row_f32(const Tensor *t, int row, float *out) { tensor_span_f32(t, row, 0, t->cols, out); }

float tensor_at(const Tensor *t, size_t i) {
    if (t->dtype == DT_F32) return ((const float *)t->data)[i];
    uint16_t v = ((const uint16_t *)t->data)[i];
    return t->dtype == DT_BF16 ? bf16_to_f32(v) : f16_to_f32(v);
}

// ----------------------------------------------------------------------------
// safetensors: u64 little-endian header length, JSON header {name: {dtype, shape,
// data_offsets [begin, end) relative to the data section}}, then the data.

typedef struct {
    char *name;                    // tensor name (owned)
    int file;                      // index into Checkpoint.paths
    char dtype[16];                // as written in the header
    int dtype_id;                  // DType, or -1 for a dtype bt does not compute with
    int n_dims;
    long long shape[ST_MAX_DIMS];  // (n_dims)
    size_t begin, end;             // byte range in the data section
    const void *data;              // into the mmap
} StEntry;

typedef struct {
    StEntry *v; // (n) every tensor of every mapped file
    int n, cap;
    char **paths; // (n_files) file paths, for messages
    int n_files;
    char index_path[1100]; // model.safetensors.index.json, "" for a single file
} Checkpoint;

static const struct {
    const char *name;
    int bytes;
    int dtype_id; // -1: a valid safetensors dtype that bt does not compute with
} st_dtypes[] = {
    {"F32", 4, DT_F32}, {"BF16", 2, DT_BF16}, {"F16", 2, DT_F16},
    {"F64", 8, -1}, {"I64", 8, -1}, {"U64", 8, -1}, {"I32", 4, -1}, {"U32", 4, -1}, {"I16", 2, -1},
    {"U16", 2, -1}, {"I8", 1, -1}, {"U8", 1, -1}, {"BOOL", 1, -1}, {"F8_E4M3", 1, -1}, {"F8_E5M2", 1, -1},
};

static void checkpoint_free(Checkpoint *ck) {
    for (int i = 0; i < ck->n; i++) free(ck->v[i].name);
    free(ck->v);
    for (int i = 0; i < ck->n_files; i++) free(ck->paths[i]);
    free(ck->paths);
    memset(ck, 0, sizeof *ck);
}

static int checkpoint_find(const Checkpoint *ck, const char *name) {
    for (int i = 0; i < ck->n; i++)
        if (strcmp(ck->v[i].name, name) == 0) return i;
    return -1;
}

static int cmp_entry_begin(const void *a, const void *b) {
    const StEntry *x = *(const StEntry *const *)a, *y = *(const StEntry *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end > y->end) - (x->end < y->end);
}

// Reads one tensor's header entry (value token t) into e; the name is already set.
static int st_entry(const Json *j, int t, StEntry *e, const char *path, size_t data_bytes, size_t data_start,
                    Err *err) {
    if (j->tok[t].type != JSON_OBJECT)
        return err_input(err, "%s: tensor '%s': header entry is not an object", path, e->name);
    if (json_duplicate_key(j, t) >= 0)
        return err_input(err, "%s: tensor '%s': header entry gives a key twice", path, e->name);
    int dt = json_key(j, t, "dtype"), sh = json_key(j, t, "shape"), off = json_key(j, t, "data_offsets");
    if (dt < 0 || sh < 0 || off < 0)
        return err_input(err, "%s: tensor '%s': header entry lacks dtype, shape or data_offsets", path, e->name);
    Buf b = {0};
    if (json_string(j, dt, &b) < 0 || b.len >= sizeof e->dtype) {
        buf_free(&b);
        return err_input(err, "%s: tensor '%s': dtype is not a known name", path, e->name);
    }
    memcpy(e->dtype, b.data, b.len + 1);
    buf_free(&b);
    int elem_bytes = 0;
    for (size_t k = 0; k < sizeof st_dtypes / sizeof st_dtypes[0]; k++)
        if (strcmp(st_dtypes[k].name, e->dtype) == 0) {
            elem_bytes = st_dtypes[k].bytes;
            e->dtype_id = st_dtypes[k].dtype_id;
        }
    if (!elem_bytes) return err_input(err, "%s: tensor '%s': unknown dtype '%s'", path, e->name, e->dtype);
    if (j->tok[sh].type != JSON_ARRAY || j->tok[sh].size > ST_MAX_DIMS)
        return err_input(err, "%s: tensor '%s': shape is not an array of at most %d sizes", path, e->name, ST_MAX_DIMS);
    unsigned long long n_elems = 1;
    e->n_dims = 0;
    JSON_FOR_ARRAY(j, sh, i, d) {
        long long v;
        if (json_int(j, d, &v) < 0 || v < 0 || v > (1LL << 40))
            return err_input(err, "%s: tensor '%s': shape has a bad size", path, e->name);
        e->shape[e->n_dims++] = v;
        if (v && n_elems > (1ULL << 50) / (unsigned long long)v) // bound before multiplying: the product must not wrap
            return err_input(err, "%s: tensor '%s': shape is too large", path, e->name);
        n_elems *= (unsigned long long)v;
    }
    long long begin, end;
    if (j->tok[off].type != JSON_ARRAY || j->tok[off].size != 2 || json_int(j, off + 1, &begin) < 0 ||
        json_int(j, j->tok[off + 1].next, &end) < 0)
        return err_input(err, "%s: tensor '%s': data_offsets is not [begin, end]", path, e->name);
    if (begin < 0 || end < begin || (unsigned long long)end > data_bytes)
        return err_input(err, "%s: tensor '%s': data_offsets [%lld, %lld] out of range (data section has %zu bytes)",
                         path, e->name, begin, end, data_bytes);
    if ((unsigned long long)(end - begin) != n_elems * (unsigned long long)elem_bytes)
        return err_input(err, "%s: tensor '%s': data_offsets hold %lld bytes but shape x %s needs %llu",
                         path, e->name, end - begin, e->dtype, n_elems * (unsigned long long)elem_bytes);
    if ((data_start + (size_t)begin) % (size_t)elem_bytes)
        return err_input(err, "%s: tensor '%s': data is not aligned to its %d-byte elements", path, e->name,
                         elem_bytes);
    e->begin = (size_t)begin;
    e->end = (size_t)end;
    return 0;
}

// Maps one safetensors file read-only, validates its header and adds its tensors to ck.
static int st_map(Model *m, Checkpoint *ck, const char *path, Err *err) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return err_input(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return err_input(err, "%s: not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    if (size < 8) {
        close(fd);
        return err_input(err, "%s: truncated: %zu bytes, too short for a safetensors header", path, size);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return err_runtime(err, "%s: cannot mmap: %s", path, strerror(errno));
    m->maps = xrealloc(m->maps, (size_t)(m->n_maps + 1) * sizeof *m->maps);
    m->map_sizes = xrealloc(m->map_sizes, (size_t)(m->n_maps + 1) * sizeof *m->map_sizes);
    m->maps[m->n_maps] = map;
    m->map_sizes[m->n_maps++] = size;
    m->bytes_mapped += size;
    int file = ck->n_files++;
    ck->paths = xrealloc(ck->paths, (size_t)ck->n_files * sizeof *ck->paths);
    ck->paths[file] = xstrdup(path);

    const unsigned char *p = map;
    unsigned long long header_bytes = 0;
    for (int i = 7; i >= 0; i--) header_bytes = header_bytes << 8 | p[i];
    if (header_bytes > size - 8)
        return err_input(err, "%s: header length %llu runs past the end of the file (%zu bytes)", path, header_bytes,
                         size);
    if (header_bytes > ST_MAX_HEADER_BYTES)
        return err_input(err, "%s: header length %llu is over the 100 MB limit", path, header_bytes);
    size_t data_start = 8 + (size_t)header_bytes, data_bytes = size - data_start;
    Json j;
    if (json_parse(&j, (const char *)p + 8, (size_t)header_bytes, path, err) < 0) return -1;
    if (j.tok[0].type != JSON_OBJECT) {
        json_free(&j);
        return err_input(err, "%s: header is not a JSON object", path);
    }
    int first = ck->n, rc = 0;
    JSON_FOR_OBJECT(&j, 0, i, k) {
        if (json_eq(&j, k, "__metadata__")) continue;
        if (ck->n == ck->cap) {
            ck->cap = ck->cap ? 2 * ck->cap : 512;
            ck->v = xrealloc(ck->v, (size_t)ck->cap * sizeof *ck->v);
        }
        StEntry *e = &ck->v[ck->n];
        memset(e, 0, sizeof *e);
        e->name = json_strdup(&j, k);
        e->file = file;
        ck->n++;
        if (checkpoint_find(ck, e->name) != ck->n - 1) {
            rc = err_input(err, "%s: tensor '%s' appears twice in the checkpoint", path, e->name);
            break;
        }
        if ((rc = st_entry(&j, k + 1, e, path, data_bytes, data_start, err)) < 0) break;
        e->data = p + data_start + e->begin;
    }
    json_free(&j);
    if (rc < 0) return -1;
    // No two tensors may share bytes: in order of offset, each starts after every earlier one ends.
    int n_file = ck->n - first;
    StEntry **by_begin = xmalloc((size_t)(n_file ? n_file : 1) * sizeof *by_begin);
    for (int i = 0; i < n_file; i++) by_begin[i] = &ck->v[first + i];
    qsort(by_begin, (size_t)n_file, sizeof *by_begin, cmp_entry_begin);
    const StEntry *reach = NULL; // the earlier tensor that ends last
    for (int i = 0; i < n_file && rc == 0; i++) {
        const StEntry *e = by_begin[i];
        if (e->end == e->begin) continue; // empty tensors hold no bytes
        if (reach && reach->end > e->begin)
            rc = err_input(err, "%s: tensors '%s' and '%s' overlap (bytes %zu-%zu and %zu-%zu)", path, reach->name,
                           e->name, reach->begin, reach->end, e->begin, e->end);
        if (!reach || e->end > reach->end) reach = e;
    }
    free(by_begin);
    return rc;
}

// Maps DIR/model.safetensors, or every shard named by DIR/model.safetensors.index.json.
static int st_map_checkpoint(Model *m, Checkpoint *ck, const char *dir, Err *err) {
    char path[1100];
    snprintf(ck->index_path, sizeof ck->index_path, "%s/model.safetensors.index.json", dir);
    if (!path_exists(ck->index_path)) {
        ck->index_path[0] = 0;
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        if (!path_exists(path)) return err_input(err, "%s: no model.safetensors or model.safetensors.index.json", dir);
        return st_map(m, ck, path, err);
    }
    const char *ipath = ck->index_path;
    Buf text = {0};
    Json j = {0};
    if (read_file(ipath, &text, err) < 0) return -1;
    int rc = json_parse(&j, text.data, text.len, ipath, err);
    int wm = rc < 0 ? -1 : json_key(&j, 0, "weight_map");
    if (rc == 0 && (wm < 0 || j.tok[wm].type != JSON_OBJECT)) rc = err_input(err, "%s: no weight_map object", ipath);
    // Map each shard once, in order of first mention.
    if (rc == 0) JSON_FOR_OBJECT(&j, wm, i, k) {
        char *file = json_strdup(&j, k + 1);
        if (!file || !*file || strchr(file, '/') || strcmp(file, "..") == 0) {
            rc = err_input(err, "%s:%d: weight_map value is not a file name in %s", ipath, json_line(&j, k + 1), dir);
        } else {
            snprintf(path, sizeof path, "%s/%s", dir, file);
            int seen = 0;
            for (int f = 0; f < ck->n_files; f++) seen |= strcmp(ck->paths[f], path) == 0;
            if (!seen && !path_exists(path))
                rc = err_input(err, "%s: shard '%s' (listed in %s) does not exist", path, file, ipath);
            else if (!seen) rc = st_map(m, ck, path, err);
        }
        free(file);
        if (rc < 0) break;
    }
    // Every tensor the index names must be in the shard it names.
    if (rc == 0) JSON_FOR_OBJECT(&j, wm, i, k) {
        char *name = json_strdup(&j, k), *file = json_strdup(&j, k + 1);
        snprintf(path, sizeof path, "%s/%s", dir, file);
        int e = checkpoint_find(ck, name);
        if (e < 0 || strcmp(ck->paths[ck->v[e].file], path) != 0)
            rc = err_input(err, "%s: tensor '%s' is not in %s, where %s places it", path, name, file, ipath);
        free(name);
        free(file);
        if (rc < 0) break;
    }
    json_free(&j);
    buf_free(&text);
    return rc;
}

// Writing: the header padded with spaces to 8 bytes, a tensor with rows = 1 written 1-D,
// the data copied as stored (little-endian hosts).
int safetensors_write(const char *path, const char *const *names, const Tensor *tensors, int n, Err *err) {
    Buf header = {0};
    size_t offset = 0;
    buf_puts(&header, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < n; i++) {
        const Tensor *t = &tensors[i];
        if (!names[i][0] || t->rows < 1 || t->cols < 1 || (unsigned)t->dtype > DT_F16 || !t->data) {
            buf_free(&header);
            return err_runtime(err, "%s: tensor %d ('%s') has no name, shape, dtype or data", path, i, names[i]);
        }
        size_t bytes = (size_t)t->rows * t->cols * dtype_bytes(t->dtype);
        buf_putc(&header, ',');
        buf_json_string(&header, names[i], strlen(names[i]));
        buf_printf(&header, ":{\"dtype\":\"%s\",\"shape\":[", dtype_name(t->dtype));
        if (t->rows > 1) buf_printf(&header, "%d,", t->rows);
        buf_printf(&header, "%d],\"data_offsets\":[%zu,%zu]}", t->cols, offset, offset + bytes);
        offset += bytes;
    }
    buf_putc(&header, '}');
    while (header.len % 8) buf_putc(&header, ' ');
    size_t total = 8 + header.len + offset;
    unsigned char *file = xmalloc(total), *p = file;
    for (int i = 0; i < 8; i++) *p++ = (unsigned char)((uint64_t)header.len >> (8 * i));
    memcpy(p, header.data, header.len), p += header.len;
    for (int i = 0; i < n; i++) {
        size_t bytes = (size_t)tensors[i].rows * tensors[i].cols * dtype_bytes(tensors[i].dtype);
        memcpy(p, tensors[i].data, bytes), p += bytes;
    }
    int rc = write_file_atomic(path, file, total, err);
    free(file);
    buf_free(&header);
    return rc;
}

// Reading one 1-D or 2-D tensor of a single safetensors file as F32 (steering directions):
// the header validated as a checkpoint's, the data copied out, nothing left mapped.
int safetensors_read_f32(const char *path, const char *name, float **out, int *rows, int *cols, Err *err) {
    Model file = {0}; // holds the mapping only
    Checkpoint ck = {0};
    *out = NULL;
    int rc = st_map(&file, &ck, path, err), e = rc == 0 ? checkpoint_find(&ck, name) : -1;
    if (rc == 0 && e < 0) rc = err_input(err, "%s: no tensor '%s'", path, name);
    const StEntry *t = e >= 0 ? &ck.v[e] : NULL;
    if (rc == 0 && t->dtype_id < 0)
        rc = err_input(err, "%s: tensor '%s' is %s, not F32, BF16 or F16", path, name, t->dtype);
    if (rc == 0 && (t->n_dims < 1 || t->n_dims > 2 || t->shape[0] < 1 || t->shape[t->n_dims - 1] < 1 ||
                    t->shape[0] > INT32_MAX || t->shape[t->n_dims - 1] > INT32_MAX))
        rc = err_input(err, "%s: tensor '%s' is not a non-empty vector or matrix", path, name);
    if (rc == 0) {
        Tensor v = {t->data, (DType)t->dtype_id, t->n_dims == 2 ? (int)t->shape[0] : 1, (int)t->shape[t->n_dims - 1],
                    NULL};
        *out = xmalloc((size_t)v.rows * v.cols * sizeof **out);
        for (int r = 0; r < v.rows; r++) tensor_row_f32(&v, r, *out + (size_t)r * v.cols);
        *rows = v.rows;
        *cols = v.cols;
    }
    checkpoint_free(&ck);
    model_free(&file);
    return rc;
}

// ----------------------------------------------------------------------------
// config.json (and generation_config.json for eos ids)

static const char *const architectures[] = {"Qwen2ForCausalLM", "Qwen3ForCausalLM", "LlamaForCausalLM"};

// A positive integer key; fallback when absent or null (fallback < 0: required).
static int cfg_int(const Json *j, const char *key, long long fallback, int *out, const char *path, Err *err) {
    int t = json_key(j, 0, key);
    long long v;
    if (t < 0 || j->tok[t].type == JSON_NULL) {
        if (fallback < 0) return err_input(err, "%s: '%s' is missing", path, key);
        *out = (int)fallback;
        return 0;
    }
    if (json_int(j, t, &v) < 0 || v <= 0 || v > (1LL << 30))
        return err_input(err, "%s:%d: '%s' must be a positive integer", path, json_line(j, t), key);
    *out = (int)v;
    return 0;
}

static int cfg_float(const Json *j, int obj, const char *key, double fallback, float *out, const char *path, Err *err) {
    int t = json_key(j, obj, key);
    double v;
    if (t < 0 || j->tok[t].type == JSON_NULL) {
        if (fallback < 0) return err_input(err, "%s: '%s' is missing", path, key);
        *out = (float)fallback;
        return 0;
    }
    // bt computes in float: the value must stay positive and finite as one
    if (json_number(j, t, &v) < 0 || !(v > 0) || !isfinite(v) || !((float)v > 0) || isinf((float)v))
        return err_input(err, "%s:%d: '%s' must be a positive number within float range", path, json_line(j, t), key);
    *out = (float)v;
    return 0;
}

static int cfg_bool(const Json *j, const char *key, int fallback, int *out, const char *path, Err *err) {
    int t = json_key(j, 0, key);
    if (t < 0 || j->tok[t].type == JSON_NULL) {
        *out = fallback;
        return 0;
    }
    if (json_bool(j, t, out) < 0)
        return err_input(err, "%s:%d: '%s' must be true or false", path, json_line(j, t), key);
    return 0;
}

// eos_token_id may be an int, a list of ints, or null; ids are added once each.
static int cfg_eos(ModelConfig *c, const Json *j, const char *path, Err *err) {
    int t = json_key(j, 0, "eos_token_id");
    if (t < 0 || j->tok[t].type == JSON_NULL) return 0;
    int one = j->tok[t].type != JSON_ARRAY, n = one ? 1 : j->tok[t].size, e = one ? t : t + 1;
    for (int i = 0; i < n; i++, e = j->tok[e].next) {
        long long id;
        if (json_int(j, e, &id) < 0 || id < 0 || id > INT32_MAX)
            return err_input(err, "%s:%d: eos_token_id must be an id, a list of ids, or null", path, json_line(j, e));
        int known = 0;
        for (int k = 0; k < c->n_eos; k++) known |= c->eos_ids[k] == id;
        if (!known && c->n_eos == MAX_EOS) return err_input(err, "%s: more than %d eos ids", path, MAX_EOS);
        if (!known) c->eos_ids[c->n_eos++] = (int)id;
    }
    return 0;
}

static int cfg_bos(ModelConfig *c, const Json *j, const char *path, Err *err) {
    int t = json_key(j, 0, "bos_token_id");
    long long id;
    if (t < 0 || j->tok[t].type == JSON_NULL) return 0;
    if (json_int(j, t, &id) < 0 || id < 0 || id > INT32_MAX)
        return err_input(err, "%s:%d: bad bos_token_id", path, json_line(j, t));
    c->bos_token_id = (int)id;
    return 0;
}

// RoPE: rope_theta, and rope_scaling (null, "default" or "llama3"); or, as newer
// transformers write it, one rope_parameters object holding rope_type and rope_theta.
// Anything missing or not implemented is an error naming the key: a wrong RoPE gives
// plausible but wrong logits, so there is no silent default.
static int cfg_rope(ModelConfig *c, const Json *j, const char *path, Err *err) {
    int params = json_key(j, 0, "rope_parameters"), rs = json_key(j, 0, "rope_scaling");
    const char *key = "rope_scaling";
    if (params >= 0 && j->tok[params].type != JSON_NULL) {
        if (j->tok[params].type != JSON_OBJECT)
            return err_input(err, "%s:%d: 'rope_parameters' must be an object", path, json_line(j, params));
        rs = params, key = "rope_parameters";
        if (json_key(j, params, "rope_theta") < 0 && json_key(j, 0, "rope_theta") < 0)
            return err_input(err, "%s:%d: 'rope_parameters' has no 'rope_theta'", path, json_line(j, params));
    }
    int theta_obj = rs == params && json_key(j, params, "rope_theta") >= 0 ? params : 0;
    if (json_key(j, theta_obj, "rope_theta") < 0)
        return err_input(err, "%s: 'rope_theta' is missing (bt does not assume a RoPE base)", path);
    if (cfg_float(j, theta_obj, "rope_theta", -1, &c->rope_theta, path, err) < 0) return -1;
    if (rs < 0 || j->tok[rs].type == JSON_NULL) return 0;
    if (j->tok[rs].type != JSON_OBJECT)
        return err_input(err, "%s:%d: '%s' must be an object or null", path, json_line(j, rs), key);
    if (json_unique_keys(j, rs, err)) return -1;
    int type = json_key(j, rs, "rope_type");
    if (type < 0) type = json_key(j, rs, "type"); // the older spelling
    Buf name = {0};
    if (json_string(j, type, &name) < 0)
        return err_input(err, "%s:%d: '%s' has no rope_type", path, json_line(j, rs), key);
    int rc = 0;
    if (strcmp(name.data, "default") == 0) {
        // plain RoPE
    } else if (strcmp(name.data, "llama3") == 0) {
        float orig = 0;
        c->rope_llama3 = 1;
        if (cfg_float(j, rs, "factor", -1, &c->rope_factor, path, err) < 0 ||
            cfg_float(j, rs, "low_freq_factor", -1, &c->rope_low_freq_factor, path, err) < 0 ||
            cfg_float(j, rs, "high_freq_factor", -1, &c->rope_high_freq_factor, path, err) < 0 ||
            cfg_float(j, rs, "original_max_position_embeddings", -1, &orig, path, err) < 0)
            rc = -1;
        else if (c->rope_high_freq_factor <= c->rope_low_freq_factor)
            rc = err_input(err, "%s: %s: high_freq_factor must exceed low_freq_factor", path, key);
        c->rope_original_max_position = (int)orig;
    } else {
        rc = err_input(err, "%s:%d: %s rope_type '%s' is not implemented (\"default\" or \"llama3\")", path,
                       json_line(j, type), key, name.data);
    }
    buf_free(&name);
    return rc;
}

// The sampling keys of generation_config.json (GenerationConfig's defaults set by the caller).
static int cfg_sampling(ModelConfig *c, const Json *j, const char *path, Err *err) {
    static const char *const keys[] = {"temperature", "top_p", "top_k"};
    double *values[] = {&c->gen_temperature, &c->gen_top_p, NULL};
    for (int k = 0; k < 3; k++) {
        int t = json_key(j, 0, keys[k]);
        double v;
        if (t < 0 || j->tok[t].type == JSON_NULL) continue;
        if (json_number(j, t, &v) < 0 || !(v >= 0) || v > (k == 1 ? 1 : 1 << 30) || (k == 2 && v != floor(v)))
            return err_input(err, "%s:%d: '%s' is not a valid %s", path, json_line(j, t), keys[k],
                             k == 2 ? "count (0 = off)" : k == 1 ? "probability" : "temperature");
        if (values[k]) *values[k] = v;
        else c->gen_top_k = (int)v;
    }
    return cfg_bool(j, "do_sample", 0, &c->gen_do_sample, path, err);
}

int model_config_read(const char *dir, ModelConfig *c, Err *err) {
    char path[1100];
    snprintf(path, sizeof path, "%s/config.json", dir);
    Buf text = {0};
    Json j = {0};
    memset(c, 0, sizeof *c);
    c->bos_token_id = -1;
    c->gen_temperature = 1, c->gen_top_k = 50, c->gen_top_p = 1; // Hugging Face's GenerationConfig defaults
    if (!path_exists(path)) return err_input(err, "%s: no config.json: not a Hugging Face model directory", dir);
    if (read_file(path, &text, err) < 0) return -1;
    int rc = json_parse(&j, text.data, text.len, path, err);
    if (rc == 0 && j.tok[0].type != JSON_OBJECT) rc = err_input(err, "%s: not a JSON object", path);
    if (rc == 0) rc = json_unique_keys(&j, 0, err);
    if (rc < 0) goto done;

    int arch = json_key(&j, 0, "architectures");
    Buf name = {0};
    if (arch < 0 || j.tok[arch].type != JSON_ARRAY || j.tok[arch].size < 1 || json_string(&j, arch + 1, &name) < 0) {
        rc = err_input(err, "%s: 'architectures' must list the model class", path);
        goto done;
    }
    int known = 0;
    for (size_t i = 0; i < sizeof architectures / sizeof architectures[0]; i++)
        known |= strcmp(name.data, architectures[i]) == 0;
    if (!known || name.len >= sizeof c->architecture) {
        rc = err_input(
            err,
            "%s:%d: unsupported architecture '%s' (supported: Qwen2ForCausalLM, Qwen3ForCausalLM, LlamaForCausalLM)",
            path, json_line(&j, arch + 1), name.data);
        buf_free(&name);
        goto done;
    }
    memcpy(c->architecture, name.data, name.len + 1);
    buf_free(&name);
    int is_qwen2 = strcmp(c->architecture, "Qwen2ForCausalLM") == 0,
        is_qwen3 = strcmp(c->architecture, "Qwen3ForCausalLM") == 0;

    if ((rc = cfg_int(&j, "hidden_size", -1, &c->hidden_size, path, err)) < 0) goto done;
    if ((rc = cfg_int(&j, "num_hidden_layers", -1, &c->n_layers, path, err)) < 0) goto done;
    if ((rc = cfg_int(&j, "num_attention_heads", -1, &c->n_heads, path, err)) < 0) goto done;
    if ((rc = cfg_int(&j, "num_key_value_heads", c->n_heads, &c->n_kv_heads, path, err)) < 0) goto done;
    if ((rc = cfg_int(&j, "head_dim", c->hidden_size / c->n_heads, &c->head_dim, path, err)) < 0) goto done;
    if ((rc = cfg_int(&j, "intermediate_size", -1, &c->intermediate_size, path, err)) < 0) goto done;
    if ((rc = cfg_int(&j, "vocab_size", -1, &c->vocab_size, path, err)) < 0) goto done;
    if ((rc = cfg_int(&j, "max_position_embeddings", 4096, &c->max_position, path, err)) < 0) goto done;
    if ((rc = cfg_float(&j, 0, "rms_norm_eps", 1e-6, &c->rms_norm_eps, path, err)) < 0) goto done;
    if ((rc = cfg_bool(&j, "tie_word_embeddings", 0, &c->tie_word_embeddings, path, err)) < 0) goto done;
    if ((rc = cfg_rope(c, &j, path, err)) < 0) goto done;
    if ((rc = cfg_eos(c, &j, path, err)) < 0 || (rc = cfg_bos(c, &j, path, err)) < 0) goto done;
    c->qkv_bias = is_qwen2; // Qwen2 attention always has q/k/v bias, never o bias
    c->qk_norm = is_qwen3;

    // Options these architectures allow but bt does not compute: refuse rather than be wrong.
    int attention_bias = 0, mlp_bias = 0, sliding = 0;
    if ((rc = cfg_bool(&j, "attention_bias", 0, &attention_bias, path, err)) < 0) goto done;
    if ((rc = cfg_bool(&j, "mlp_bias", 0, &mlp_bias, path, err)) < 0) goto done;
    if ((rc = cfg_bool(&j, "use_sliding_window", 0, &sliding, path, err)) < 0) goto done;
    if (!is_qwen2 && (attention_bias || mlp_bias)) {
        rc = err_input(err, "%s: attention_bias / mlp_bias true is not supported", path);
        goto done;
    }
    if (sliding) { rc = err_input(err, "%s: use_sliding_window true is not supported", path); goto done; }
    int act = json_key(&j, 0, "hidden_act");
    if (act >= 0 && !json_eq(&j, act, "silu")) {
        rc = err_input(err, "%s:%d: hidden_act must be \"silu\"", path, json_line(&j, act));
        goto done;
    }
    if (c->n_heads % c->n_kv_heads)
        rc = err_input(err, "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", path, c->n_heads,
                       c->n_kv_heads);
    else if (c->head_dim < 2 || c->head_dim % 2)
        rc = err_input(err, "%s: head_dim %d must be even and positive for RoPE", path, c->head_dim);
    else if (c->n_layers > 4096 || c->n_heads > 4096 || c->head_dim > 4096 || c->hidden_size > (1 << 20) ||
             c->intermediate_size > (1 << 22) || c->vocab_size > (1 << 24))
        rc = err_input(err, "%s: sizes beyond what bt supports (layers, heads, head_dim <= 4096; hidden <= 2^20; "
                       "intermediate <= 2^22; vocab <= 2^24)", path);
done:
    json_free(&j);
    buf_free(&text);
    if (rc < 0) return -1;

    // generation_config.json may add eos ids (and a bos id).
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    if (!path_exists(path)) return 0;
    if (read_file(path, &text, err) < 0) return -1;
    rc = json_parse(&j, text.data, text.len, path, err);
    if (rc == 0 && j.tok[0].type != JSON_OBJECT) rc = err_input(err, "%s: not a JSON object", path);
    if (rc == 0) rc = json_unique_keys(&j, 0, err);
    if (rc == 0) rc = cfg_eos(c, &j, path, err);
    if (rc == 0 && c->bos_token_id < 0) rc = cfg_bos(c, &j, path, err);
    if (rc == 0) rc = cfg_sampling(c, &j, path, err);
    json_free(&j);
    buf_free(&text);
    return rc;
}

// ----------------------------------------------------------------------------
// Loading: every tensor the architecture needs, by its Hugging Face name, bound
// with the shape the config implies. The same list drives model-info.

int model_slots(Model *m, TensorSlot *slots) {
    const ModelConfig *c = &m->cfg;
    int n = 0, D = c->hidden_size, q_dim = c->n_heads * c->head_dim, kv_dim = c->n_kv_heads * c->head_dim;
#define SLOT(ptr, r, cc, ...) do { if (slots) { snprintf(slots[n].name, sizeof slots[n].name, __VA_ARGS__); \
    slots[n].t = (ptr); slots[n].rows = (r); slots[n].cols = (cc); } n++; } while (0)
    SLOT(&m->embed, c->vocab_size, D, "model.embed_tokens.weight");
    for (int l = 0; l < c->n_layers; l++) {
        LayerWeights *w = &m->layers[l];
        SLOT(&w->attn_norm, 0, D, "model.layers.%d.input_layernorm.weight", l);
        SLOT(&w->wq, q_dim, D, "model.layers.%d.self_attn.q_proj.weight", l);
        SLOT(&w->wk, kv_dim, D, "model.layers.%d.self_attn.k_proj.weight", l);
        SLOT(&w->wv, kv_dim, D, "model.layers.%d.self_attn.v_proj.weight", l);
        if (c->qkv_bias) {
            SLOT(&w->bq, 0, q_dim, "model.layers.%d.self_attn.q_proj.bias", l);
            SLOT(&w->bk, 0, kv_dim, "model.layers.%d.self_attn.k_proj.bias", l);
            SLOT(&w->bv, 0, kv_dim, "model.layers.%d.self_attn.v_proj.bias", l);
        }
        if (c->qk_norm) {
            SLOT(&w->q_norm, 0, c->head_dim, "model.layers.%d.self_attn.q_norm.weight", l);
            SLOT(&w->k_norm, 0, c->head_dim, "model.layers.%d.self_attn.k_norm.weight", l);
        }
        SLOT(&w->wo, D, q_dim, "model.layers.%d.self_attn.o_proj.weight", l);
        SLOT(&w->mlp_norm, 0, D, "model.layers.%d.post_attention_layernorm.weight", l);
        SLOT(&w->w_gate, c->intermediate_size, D, "model.layers.%d.mlp.gate_proj.weight", l);
        SLOT(&w->w_up, c->intermediate_size, D, "model.layers.%d.mlp.up_proj.weight", l);
        SLOT(&w->w_down, D, c->intermediate_size, "model.layers.%d.mlp.down_proj.weight", l);
    }
    SLOT(&m->final_norm, 0, D, "model.norm.weight");
    if (!c->tie_word_embeddings) SLOT(&m->lm_head, c->vocab_size, D, "lm_head.weight");
#undef SLOT
    return n;
}

static int bind_tensor(const Checkpoint *ck, const TensorSlot *s, Err *err) {
    int e = checkpoint_find(ck, s->name);
    if (e < 0)
        return err_input(err, "%s: tensor '%s' is missing", ck->index_path[0] ? ck->index_path : ck->paths[0], s->name);
    const StEntry *x = &ck->v[e];
    const char *path = ck->paths[x->file];
    int want_dims = s->rows ? 2 : 1;
    int ok = x->n_dims == want_dims &&
             (want_dims == 1 ? x->shape[0] == s->cols : x->shape[0] == s->rows && x->shape[1] == s->cols);
    if (!ok) {
        char got[128] = "[", want[64];
        for (int d = 0; d < x->n_dims; d++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? ", " : "", x->shape[d]);
        strcat(got, "]");
        if (s->rows) snprintf(want, sizeof want, "[%d, %d]", s->rows, s->cols);
        else snprintf(want, sizeof want, "[%d]", s->cols);
        return err_input(err, "%s: tensor '%s': shape %s, expected %s from config.json", path, s->name, got, want);
    }
    if (x->dtype_id < 0)
        return err_input(err, "%s: tensor '%s': dtype %s is not supported (F32, BF16, F16)", path, s->name, x->dtype);
    s->t->data = x->data;
    s->t->dtype = (DType)x->dtype_id;
    s->t->rows = s->rows ? s->rows : 1;
    s->t->cols = s->cols;
    return 0;
}

// HF's inverse frequencies in F32, as HF computes them (llama3 scaling included).
static void rope_inv_freq(const ModelConfig *c, float *inv_freq) {
    int half = c->head_dim / 2;
    for (int i = 0; i < half; i++) {
        float exponent = (float)(2 * i) / (float)c->head_dim;
        float inv = 1.0f / powf(c->rope_theta, exponent);
        if (c->rope_llama3) {
            float orig = (float)c->rope_original_max_position, low = c->rope_low_freq_factor,
                  high = c->rope_high_freq_factor;
            float wavelen = (float)(2.0 * M_PI) / inv;
            if (wavelen > orig / low) {
                inv = inv / c->rope_factor;
            } else if (!(wavelen < orig / high)) { // between the bands: interpolate
                float smooth = (orig / wavelen - low) / (high - low);
                inv = (1.0f - smooth) * inv / c->rope_factor + smooth * inv;
            }
        }
        inv_freq[i] = inv;
    }
}

void model_free(Model *m) {
    for (int i = 0; i < m->n_maps; i++) munmap(m->maps[i], m->map_sizes[i]);
    free(m->maps);
    free(m->map_sizes);
    free(m->layers);
    free(m->inv_freq);
    free(m->packed);
    memset(m, 0, sizeof *m);
}

static int choose_simd(Err *err); // the hot spot: which kernels this CPU runs (SimdLevel, -1: bad BT_SIMD)
static size_t l2_cache_bytes(void);
#ifdef HAVE_AVX512
static void choose_row_ahead(int row_ahead[2]);
static void pack_weights(Model *m); // the matmul weights as the AVX-512 kernels read them
#endif

int model_load(Model *m, const char *dir, Err *err) {
    memset(m, 0, sizeof *m);
    if (strlen(dir) >= sizeof m->dir - 64) return err_input(err, "%s: model path too long", dir);
    if (!path_is_dir(dir)) return err_input(err, "%s: not a model directory", dir);
    snprintf(m->dir, sizeof m->dir, "%s", dir);
    if (model_config_read(dir, &m->cfg, err) < 0) return -1;
    Checkpoint ck = {0};
    if (st_map_checkpoint(m, &ck, dir, err) < 0) {
        checkpoint_free(&ck);
        model_free(m);
        return -1;
    }
    m->layers = xcalloc((size_t)m->cfg.n_layers, sizeof *m->layers);
    int n_slots = model_slots(m, NULL);
    TensorSlot *slots = xmalloc((size_t)n_slots * sizeof *slots);
    model_slots(m, slots);
    int rc = 0;
    for (int i = 0; i < n_slots && rc == 0; i++) rc = bind_tensor(&ck, &slots[i], err);
    free(slots);
    checkpoint_free(&ck);
    if (rc < 0) {
        model_free(m);
        return -1;
    }
    if (m->cfg.tie_word_embeddings) m->lm_head = m->embed;
    m->inv_freq = xmalloc((size_t)(m->cfg.head_dim / 2) * sizeof *m->inv_freq);
    rope_inv_freq(&m->cfg, m->inv_freq);
    if ((m->simd = choose_simd(err)) < 0) {
        model_free(m);
        return -1;
    }
    m->l2_bytes = l2_cache_bytes();
    m->bytes_allocated = (size_t)m->cfg.n_layers * sizeof *m->layers + (size_t)(m->cfg.head_dim / 2) * sizeof(float) +
                         (size_t)m->n_maps * (sizeof *m->maps + sizeof *m->map_sizes);
#ifdef HAVE_AVX512
    choose_row_ahead(m->row_ahead);
    if (m->simd) pack_weights(m); // adds its bytes
#endif
    return 0;
}

// ----------------------------------------------------------------------------
// Run state: the KV cache of n_slots sequences and the scratch of one call

struct RunState {
    int n_slots, max_seq, max_rows;
    int max_seq_pad;    // max_seq rounded up to two key blocks (the AVX-512 attention reads them in pairs)
    int n_threads;      // threads with their own score buffer
    int logit_rows;     // rows per lm_head pass
    float *key_cache;   // (n_layers, n_slots, n_kv_heads, max_seq_pad / KEY_BLOCK, head_dim, KEY_BLOCK) keys after RoPE
    float *value_cache; // (n_layers, n_slots, n_kv_heads, max_seq_pad, head_dim)
    int *slot_len;      // (n_slots) positions 0..slot_len-1 are in the cache
    int *slot_len_call; // (n_slots) slot_len as this call will leave it (validation)
    int *slot_pos_call; // (n_slots) last position this call writes in each slot, -1 = none (validation)
    float *x;           // (max_rows, hidden) residual stream
    float *xb;          // (max_rows, hidden) normed input of a block
    float *block_out;   // (max_rows, hidden) attention or MLP output before the residual add
    float *q;           // (max_rows, n_heads * head_dim) queries after RoPE
    float *k, *v;       // (max_rows, kv_dim) keys (after RoPE) and values of this call's rows
    float *heads;       // (max_rows, n_heads * head_dim) attention output of each head, before o_proj
    float *hb, *hb2;    // (max_rows, intermediate) gate and up projections
    float *rope_cos;    // (max_rows, head_dim / 2) of each row's position
    float *rope_sin;    // (max_rows, head_dim / 2)
    float *scores; // (n_threads, n_heads / n_kv_heads, max_seq_pad) attention scores of one row's heads of one kv head
    float *logits;      // (logit_rows, vocab)
    size_t bytes;       // everything above
};

static float *rs_alloc(RunState *s, size_t n, int *failed) {
    float *p = calloc(n ? n : 1, sizeof(float));
    if (!p) *failed = 1;
    s->bytes += n * sizeof(float);
    return p;
}

RunState *runstate_new(const Model *m, int n_slots, int max_seq, int max_rows, Err *err) {
    const ModelConfig *c = &m->cfg;
    if (n_slots < 1 || max_seq < 1 || max_rows < 1)
        return err_runtime(err, "runstate: n_slots, max_seq and max_rows must be positive"), NULL;
    size_t kv_dim = (size_t)c->n_kv_heads * (size_t)c->head_dim, q_dim = (size_t)c->n_heads * (size_t)c->head_dim;
    if ((double)c->n_layers * n_slots * max_seq * (double)kv_dim * 8 > 1e13)
        return err_runtime(err, "runstate: KV cache for %d x %d positions is too large", n_slots, max_seq), NULL;
    RunState *s = xcalloc(1, sizeof *s);
    s->n_slots = n_slots;
    s->max_seq = max_seq;
    s->max_seq_pad = (max_seq + 2 * KEY_BLOCK - 1) / (2 * KEY_BLOCK) * (2 * KEY_BLOCK);
    size_t cache = (size_t)c->n_layers * (size_t)n_slots * (size_t)s->max_seq_pad * kv_dim;
    s->max_rows = max_rows;
    s->n_threads = max_threads();
    s->logit_rows = max_rows < LOGIT_ROWS_MAX ? max_rows : LOGIT_ROWS_MAX;
    size_t R = (size_t)max_rows, D = (size_t)c->hidden_size;
    int failed = 0;
    s->key_cache = rs_alloc(s, cache, &failed);
    s->value_cache = rs_alloc(s, cache, &failed);
    s->x = rs_alloc(s, R * D, &failed);
    s->xb = rs_alloc(s, R * D, &failed);
    s->block_out = rs_alloc(s, R * D, &failed);
    s->q = rs_alloc(s, R * q_dim, &failed);
    s->k = rs_alloc(s, R * kv_dim, &failed);
    s->v = rs_alloc(s, R * kv_dim, &failed);
    s->heads = rs_alloc(s, R * q_dim, &failed);
    s->hb = rs_alloc(s, R * (size_t)c->intermediate_size, &failed);
    s->hb2 = rs_alloc(s, R * (size_t)c->intermediate_size, &failed);
    s->rope_cos = rs_alloc(s, R * (size_t)(c->head_dim / 2), &failed);
    s->rope_sin = rs_alloc(s, R * (size_t)(c->head_dim / 2), &failed);
    s->scores =
        rs_alloc(s, (size_t)s->n_threads * (size_t)(c->n_heads / c->n_kv_heads) * (size_t)s->max_seq_pad, &failed);
    s->logits = rs_alloc(s, (size_t)s->logit_rows * (size_t)c->vocab_size, &failed);
    s->slot_len = xcalloc((size_t)n_slots, sizeof *s->slot_len);
    s->slot_len_call = xcalloc((size_t)n_slots, sizeof *s->slot_len_call);
    s->slot_pos_call = xcalloc((size_t)n_slots, sizeof *s->slot_pos_call);
    s->bytes += 3 * (size_t)n_slots * sizeof(int);
    if (failed) {
        size_t bytes = s->bytes;
        runstate_free(s);
        return err_runtime(err, "runstate: cannot allocate %zu bytes (KV cache and scratch)", bytes), NULL;
    }
    return s;
}

void runstate_free(RunState *s) {
    if (!s) return;
    float *bufs[] = {s->key_cache, s->value_cache, s->x, s->xb, s->block_out, s->q, s->k, s->v, s->heads,
                     s->hb, s->hb2, s->rope_cos, s->rope_sin, s->scores, s->logits};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    free(s->slot_len);
    free(s->slot_len_call);
    free(s->slot_pos_call);
    free(s);
}

size_t runstate_bytes(const RunState *s) { return s->bytes; }

// Offset of one (layer, slot, kv head)'s keys in key_cache and values in value_cache.
static size_t kv_base(const RunState *s, const ModelConfig *c, int layer, int slot, int kv_head) {
    return (((size_t)layer * s->n_slots + (size_t)slot) * (size_t)c->n_kv_heads + (size_t)kv_head) *
           (size_t)s->max_seq_pad * (size_t)c->head_dim;
}

size_t model_kv_bytes_per_token(const Model *m) {
    return 2 * (size_t)m->cfg.n_layers * (size_t)m->cfg.n_kv_heads * (size_t)m->cfg.head_dim * sizeof(float);
}

// ----------------------------------------------------------------------------
// The blocks

// HF RMSNorm: weight * (x * rsqrt(mean(x^2) + eps)), F32 (the sum of squares in double).
static void rmsnorm(float *out, const float *x, const Tensor *weight, int n, float eps) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float r = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++) out[i] = tensor_at(weight, (size_t)i) * (x[i] * r);
}

// HF rotate_half RoPE on one head: pairs (i, i + half), cos/sin tables cat(freqs, freqs).
static void rope(float *v, const float *cos_t, const float *sin_t, int head_dim) {
    int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * cos_t[i] - x2 * sin_t[i];
        v[i + half] = x2 * cos_t[i] + x1 * sin_t[i];
    }
}

static void ablate(float *v, int n, int kind, const float *mean) {
    if (kind == ABLATE_MEAN) memcpy(v, mean, (size_t)n * sizeof *v);
    else memset(v, 0, (size_t)n * sizeof *v);
}

// Steering of one residual x (n) as a pass forms it: residual index layer (0 = embeddings, l = after
// block l-1) gets steer_add, and every residual loses its component along project_out. The dot product
// is summed in double in one order, so a row's result does not depend on its batch or thread.
static void steer_residual(float *x, int n, const AblationMask *mk, int layer) {
    if (mk->steer_add && mk->steer_layer == layer)
        for (int d = 0; d < n; d++) x[d] += mk->steer_add[d];
    if (mk->project_out) {
        double dot = 0;
        for (int d = 0; d < n; d++) dot += (double)x[d] * mk->project_out[d];
        float along = (float)dot;
        for (int d = 0; d < n; d++) x[d] -= along * mk->project_out[d];
    }
}

// ----------------------------------------------------------------------------
// The hot spot: matmul, attention and the SiLU gate, in portable C and in AVX-512.
//
// Nearly all the time goes here: decoding streams every weight once per step (memory
// bound), prefill and batched generation reuse each weight for many rows (FMA bound).
// Each model picks its kernels once, at load: AVX-512 when the CPU has it (run-time
// detection, functions compiled with `target` attributes, so `cc` needs no -m flags)
// unless BT_NO_SIMD=1, else portable C. Both keep the two promises bt is built on:
// - batch invariance: each output element of a row is summed in an order fixed by the
//   tensor shapes alone, never by n, by the other rows, or by where the row falls in a
//   tile, so a row's logits are bitwise the same alone or in any batch;
// - thread invariance: each output element is computed whole by one thread.
// The two paths round differently from each other; each meets HF's tolerances. Products
// are F32 (a BF16 weight times an F32 activation is exact before the add), never BF16.

// Portable: weight rows o0..o1 in blocks of MATMUL_W_ROWS, converted to F32 MATMUL_CHUNK
// columns at a time and reused by all n rows; lane l sums the columns l mod MATMUL_LANES,
// the lanes then the chunks add in order.
static void matmul_rows_portable(float *out, const float *x, int n, const Tensor *w, int o0, int o1) {
    int d_out = w->rows, d_in = w->cols;
    for (int b = o0; b < o1; b += MATMUL_W_ROWS) {
        int nw = o1 - b < MATMUL_W_ROWS ? o1 - b : MATMUL_W_ROWS;
        float wc[MATMUL_W_ROWS][MATMUL_CHUNK]; // this block's weights, columns c..c+len
        for (int c = 0; c < d_in; c += MATMUL_CHUNK) {
            int len = d_in - c < MATMUL_CHUNK ? d_in - c : MATMUL_CHUNK;
            for (int k = 0; k < MATMUL_W_ROWS; k++) tensor_span_f32(w, b + (k < nw ? k : 0), c, len, wc[k]);
            for (int r = 0; r < n; r++) {
                const float *xr = x + (size_t)r * d_in + c;
                float acc[MATMUL_W_ROWS][MATMUL_LANES] = {{0}}; // lane l sums the columns i = l mod LANES
                int i = 0;
                for (; i + MATMUL_LANES <= len; i += MATMUL_LANES)
                    for (int k = 0; k < MATMUL_W_ROWS; k++)
                        for (int l = 0; l < MATMUL_LANES; l++) acc[k][l] += xr[i + l] * wc[k][i + l];
                for (; i < len; i++)
                    for (int k = 0; k < MATMUL_W_ROWS; k++) acc[k][i % MATMUL_LANES] += xr[i] * wc[k][i];
                float *o = out + (size_t)r * d_out + b;
                for (int k = 0; k < nw; k++) {
                    float sum = 0;
                    for (int l = 0; l < MATMUL_LANES; l++) sum += acc[k][l];
                    o[k] = c ? o[k] + sum : sum;
                }
            }
        }
    }
}

// q · k over hd values in MATMUL_LANES partial sums, k's values `stride` floats apart.
static float dot_strided(const float *q, const float *k, size_t stride, int hd) {
    float acc[MATMUL_LANES] = {0}, sum = 0;
    for (int d = 0; d < hd; d++) acc[d % MATMUL_LANES] += q[d] * k[(size_t)d * stride];
    for (int l = 0; l < MATMUL_LANES; l++) sum += acc[l];
    return sum;
}

// The `group` query heads that share one key/value head (q, out: group x hd) over positions
// 0..pos. keys: blocks of KEY_BLOCK positions stored dimension-major; values: (pos, hd);
// self_k/self_v (replay) stand for position pos. scores: group x seq_stride floats.
static void attend_portable(const float *q, const float *keys, const float *values, const float *self_k,
                            const float *self_v, int pos, int hd, int group, int seq_stride, float scale, float *scores,
                            float *out) {
    for (int h = 0; h < group; h++) {
        const float *qh = q + (size_t)h * hd;
        float *sc = scores + (size_t)h * seq_stride, *o = out + (size_t)h * hd, max = -INFINITY, sum = 0;
        for (int p = 0; p <= pos; p++) {
            const float *key = keys + (size_t)(p / KEY_BLOCK) * hd * KEY_BLOCK + p % KEY_BLOCK;
            sc[p] = (self_k && p == pos ? dot_strided(qh, self_k, 1, hd) : dot_strided(qh, key, KEY_BLOCK, hd)) * scale;
            if (sc[p] > max) max = sc[p];
        }
        for (int p = 0; p <= pos; p++) {
            sc[p] = expf(sc[p] - max);
            sum += sc[p];
        }
        for (int p = 0; p <= pos; p++) sc[p] /= sum;
        for (int d = 0; d < hd; d++) o[d] = 0;
        for (int p = 0; p <= pos; p++) {
            const float *vp = self_v && p == pos ? self_v : values + (size_t)p * hd;
            for (int d = 0; d < hd; d++) o[d] += sc[p] * vp[d];
        }
    }
}

// gate[i] = silu(gate[i]) * up[i], silu(x) = x / (1 + e^-x) as torch computes it.
static void silu_gate_portable(float *gate, const float *up, size_t n) {
    for (size_t i = 0; i < n; i++) gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

#ifdef HAVE_AVX512
#include <immintrin.h>
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define AVX2 __attribute__((target("avx2,fma,f16c"))) // every CPU with AVX2 has F16C
#define INLINE inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 16") // small loops over tile rows: registers, not memory

static int cpu_has_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma");
}

// Sum of the 8 lanes of h as a fixed tree (halves, then quarters, ...), the last steps of
// every horizontal sum, AVX-512's (16 lanes: their halves added first) and AVX2's alike.
__attribute__((target("avx"))) static INLINE float hsum8_tree(__m256 h) { // AVX: inlined in AVX2 and AVX-512 code
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
}

AVX512 static INLINE float hsum_avx512(__m512 v) {
    return hsum8_tree(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)));
}

// e^x within 2 ulp: Cephes' expf polynomial on r = x - n ln2 (|r| <= ln2 / 2), times 2^n; ln2
// in two parts, the polynomial's coefficients from the highest power (the AVX2 exp's too).
#define EXP_MIN_X -104.0f
#define EXP_MAX_X 88.7228394f
#define EXP_LOG2E 1.44269504088896341f
#define EXP_LN2_HI 0.693359375f
#define EXP_LN2_LO -2.12194440e-4f
static const float exp_poly[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                                  4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

AVX512 static INLINE __m512 exp_avx512(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(EXP_MIN_X)), _mm512_set1_ps(EXP_MAX_X));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(EXP_LOG2E)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_HI), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_LO), r);
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(exp_poly[0]), r, _mm512_set1_ps(exp_poly[1]));
    for (int i = 2; i < 6; i++) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(exp_poly[i]));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

static INLINE __mmask16 mask16(int left) {
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (left > 0 ? left : 0)) - 1);
}

// The AVX-512 matmul is an outer product over packed weights (pack_weights): a tile of R rows
// of x by S slivers (MATMUL_SLIVER weight rows each) keeps R x 2S accumulators of 16 outputs,
// and for each column broadcasts each row's x into one FMA per accumulator. So every output
// sums its products one column after another, starting from zero: one FMA chain whatever the
// tile, the batch or the thread, and no horizontal sums. Tiles take MATMUL_MR rows of x (the
// rest in one shorter tile) and as many slivers as 24 accumulators allow, but for one row:
// bound by memory, it takes one sliver, so that a thread reads its slivers' block as one
// linear stream: each sliver's prefetches run on into the next tile's, where with two at a
// time the second started cold (BF16 decode +22% on a Zen 4 VM, F32 +3%).
// Where the rows would end in a 4-row tile (3 slivers from L2, the slowest tile), the
// block's first tile, which streams its weights from memory, takes 16 rows and one sliver
// instead: more FMAs per byte to hide the stream behind, though the compiler keeps 3 of the
// 32 accumulators in L1 (F32 batch 16 +12%; 20 rows or more spill too many, and a 16-row
// first tile that leaves a shorter last tile, as in prefill 512, loses 1-2%).
static INLINE int tile_slivers(int R) { return R == 1 ? 1 : R <= 3 ? 4 : R == 4 ? 3 : R <= 6 ? 2 : 1; }

// Column k of one packed sliver (BF16: rows i and 16 + i share a 32-bit word) as two vectors of 16 outputs.
AVX512 static INLINE void sliver_col_avx512(DType dtype, const char *p, __m512 *a, __m512 *b) {
    if (dtype == DT_BF16) {
        __m512i raw = _mm512_load_si512(p);
        *a = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
        *b = _mm512_castsi512_ps(_mm512_and_si512(raw, _mm512_set1_epi32((int)0xffff0000u)));
    } else if (dtype == DT_F16) {
        *a = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)p));
        *b = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)p + 1));
    } else {
        *a = _mm512_load_ps((const float *)p);
        *b = _mm512_load_ps((const float *)p + 16);
    }
}

// A tile: R rows of x (ldx apart) by S slivers (sliver_bytes apart, from pk) over the len
// columns of one packed block. The sums start at zero (first block) or from out (ldo apart),
// whose n_out columns from the tile's first are real outputs (the rest is a sliver's padding).
// keep: NULL, or where the tile writes its one sliver's columns widened to F32 (len x MATMUL_SLIVER floats).
// ahead: NULL, or bytes the tile prefetches into L2, one line at each column k with k & ahead_mask == 0.
// row_ahead: for one row (R == 1), how far ahead of its stream the tile prefetches into L1 and
// L2 (Model.row_ahead); more rows prefetch at MATMUL_PREFETCH_L1_BYTES and _L2_BYTES.
AVX512 static INLINE void sliver_tile_avx512(DType dtype, int R, int S, const float *x, size_t ldx, const char *pk,
                                             size_t sliver_bytes, int len, int first, float *out, size_t ldo, int n_out,
                                             float *keep, const char *ahead, int ahead_mask, const int *row_ahead) {
    __m512 acc[MATMUL_MR_FIRST][2 * MATMUL_MAX_SLIVERS];
    size_t col_bytes = MATMUL_SLIVER * dtype_bytes(dtype);
    int l1_ahead = R == 1 ? row_ahead[0] : MATMUL_PREFETCH_L1_BYTES,
        l2_ahead = R == 1 ? row_ahead[1] : MATMUL_PREFETCH_L2_BYTES;
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int j = 0; j < 2 * S; j++)
        acc[r][j] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mask16(n_out - 16 * j), out + r * ldo + 16 * j);
    for (int k = 0; k < len; k++) {
        __m512 w[2 * MATMUL_MAX_SLIVERS];
        UNROLL for (int t = 0; t < S; t++) {
            const char *p = pk + t * sliver_bytes + k * col_bytes;
            for (int line = 0; line < (dtype == DT_F32 ? 2 : 1); line++) { // the prefetchers alone fall behind
                _mm_prefetch(p + 64 * line + l1_ahead, _MM_HINT_T0);
                _mm_prefetch(p + 64 * line + l2_ahead, _MM_HINT_T2);
            }
            sliver_col_avx512(dtype, p, &w[2 * t], &w[2 * t + 1]);
            if (keep) {
                _mm512_store_ps(keep + (size_t)k * MATMUL_SLIVER, w[2 * t]);
                _mm512_store_ps(keep + (size_t)k * MATMUL_SLIVER + 16, w[2 * t + 1]);
            }
        }
        if (ahead && (k & ahead_mask) == 0) _mm_prefetch(ahead, _MM_HINT_T2), ahead += 64;
        UNROLL for (int r = 0; r < R; r++) {
            __m512 xv = _mm512_set1_ps(x[r * ldx + k]);
            UNROLL for (int j = 0; j < 2 * S; j++) acc[r][j] = _mm512_fmadd_ps(xv, w[j], acc[r][j]);
        }
    }
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int j = 0; j < 2 * S; j++)
        _mm512_mask_storeu_ps(out + r * ldo + 16 * j, mask16(n_out - 16 * j), acc[r][j]);
}

// Every tile of one dtype, R and S constants in each (one function per dtype keeps it a constant).
#define SLIVER_TILE(R, S)                                                                                              \
    case (R) * 8 + (S):                                                                                                \
        sliver_tile_avx512(dtype, R, S, x, ldx, pk, sliver_bytes, len, first, out, ldo, n_out, NULL, NULL, 0,          \
                           row_ahead);                                                                                 \
        return;
#define SLIVER_TILES_1(R) SLIVER_TILE(R, 1)
#define SLIVER_TILES_2(R) SLIVER_TILE(R, 1) SLIVER_TILE(R, 2)
#define SLIVER_TILES_3(R) SLIVER_TILES_2(R) SLIVER_TILE(R, 3)
#define SLIVER_TILES_4(R) SLIVER_TILES_3(R) SLIVER_TILE(R, 4)
#define SLIVER_TILES_AVX512(name, dtype_constant)                                                                      \
    AVX512 static void name(int R, int S, const float *x, size_t ldx, const char *pk, size_t sliver_bytes, int len,    \
                            int first, float *out, size_t ldo, int n_out, const int row_ahead[2]) {                    \
        const DType dtype = dtype_constant;                                                                            \
        switch (R * 8 + S) {                                                                                           \
            SLIVER_TILES_1(1) SLIVER_TILES_4(2) SLIVER_TILES_4(3) SLIVER_TILES_3(4) SLIVER_TILES_2(5)                  \
            SLIVER_TILES_2(6) SLIVER_TILES_1(7) SLIVER_TILES_1(8) SLIVER_TILES_1(9) SLIVER_TILES_1(10)                 \
            SLIVER_TILES_1(11) SLIVER_TILES_1(12) SLIVER_TILES_1(16)                                                   \
        }                                                                                                              \
    }
SLIVER_TILES_AVX512(sliver_tiles_bf16, DT_BF16)
SLIVER_TILES_AVX512(sliver_tiles_f16, DT_F16)
SLIVER_TILES_AVX512(sliver_tiles_f32, DT_F32)

// A full tile of F32 weights that prefetches the next block as it goes (see matmul_slivers_avx512).
AVX512 static void sliver_tile_f32_ahead(const float *x, size_t ldx, const char *pk, int len, int first, float *out,
                                         size_t ldo, int n_out, const char *ahead, int ahead_mask) {
    sliver_tile_avx512(DT_F32, MATMUL_MR, 1, x, ldx, pk, 0, len, first, out, ldo, n_out, NULL, ahead, ahead_mask, NULL);
}

// Where sliver s of the block from column kb starts in w packed (pack_weights), in elements.
static size_t packed_offset(const Tensor *w, int kb, int s) {
    int n_slivers = (w->rows + MATMUL_SLIVER - 1) / MATMUL_SLIVER, g0 = s / MATMUL_GROUP * MATMUL_GROUP,
        in_group = n_slivers - g0 < MATMUL_GROUP ? n_slivers - g0 : MATMUL_GROUP,
        len = w->cols - kb < MATMUL_KC ? w->cols - kb : MATMUL_KC;
    return ((size_t)g0 * w->cols + (size_t)kb * in_group + (size_t)(s - g0) * len) * MATMUL_SLIVER;
}

// Where the block after slivers s0..s1's block from column kb lies (NULL: none), and its bytes:
// the same slivers' next block, or after their last the next group's first, which a thread
// mostly takes next (spread_unit); either way the bytes right after it.
static const char *next_block(const Tensor *w, int kb, int s0, int s1, size_t *bytes) {
    int n_slivers = (w->rows + MATMUL_SLIVER - 1) / MATMUL_SLIVER,
        next_kb = kb + MATMUL_KC < w->cols ? kb + MATMUL_KC : 0;
    int first = next_kb ? s0 : s1, count = next_kb ? s1 - s0 : n_slivers - s1 < s1 - s0 ? n_slivers - s1 : s1 - s0;
    int len = w->cols - next_kb < MATMUL_KC ? w->cols - next_kb : MATMUL_KC;
    size_t eb = dtype_bytes(w->dtype);
    *bytes = count > 0 ? (size_t)count * len * MATMUL_SLIVER * eb : 0;
    return count > 0 ? (const char *)w->packed + packed_offset(w, next_kb, first) * eb : NULL;
}

// The first tile (R rows: MATMUL_MR or MATMUL_MR_FIRST) of a 16-bit block, keeping its sliver
// widened (see matmul_slivers_avx512).
AVX512 static void sliver_tile_widen(DType dtype, int R, const float *x, size_t ldx, const char *pk, int len, int first,
                                     float *out, size_t ldo, int n_out, float *keep) {
    if (dtype == DT_BF16 && R == MATMUL_MR)
        sliver_tile_avx512(DT_BF16, MATMUL_MR, 1, x, ldx, pk, 0, len, first, out, ldo, n_out, keep, NULL, 0, NULL);
    else if (dtype == DT_BF16)
        sliver_tile_avx512(DT_BF16, MATMUL_MR_FIRST, 1, x, ldx, pk, 0, len, first, out, ldo, n_out, keep, NULL, 0,
                           NULL);
    else if (R == MATMUL_MR)
        sliver_tile_avx512(DT_F16, MATMUL_MR, 1, x, ldx, pk, 0, len, first, out, ldo, n_out, keep, NULL, 0, NULL);
    else
        sliver_tile_avx512(DT_F16, MATMUL_MR_FIRST, 1, x, ldx, pk, 0, len, first, out, ldo, n_out, keep, NULL, 0, NULL);
}

// Slivers s0..s1 (one group of the packing, pack_weights) of w against all n rows of x:
// block by block of MATMUL_KC columns, the slivers' block (in L2) meeting every tile of
// rows, each tile's columns of x staying in L1. With 16-bit weights and a full tile after
// the first, the first tile also writes each sliver widened to F32 and the later full tiles
// read that copy (in L2): the widening ops share the FMA ports, and the copy spares them
// (prefill 5-10% faster). Fewer rows, or the last shorter tile (several slivers, so 3x the
// bytes from L2), widen in registers. F32 weights (twice the bytes) stream at 2/3 of the
// read bandwidth when each block's first tile starts them anew, so there the full tiles
// after the first prefetch the next block into L2, spread evenly over them (batch 64 9-11%
// faster), where x, out and both blocks fit in half of L2 (Model.l2_bytes; at prefill 512
// they evict each other, -6%).
AVX512 static void matmul_slivers_avx512(const Model *m, float *out, const float *x, int n, const Tensor *w, int s0,
                                         int s1) {
    void (*tiles)(int, int, const float *, size_t, const char *, size_t, int, int, float *, size_t, int, const int *) =
        w->dtype == DT_BF16 ? sliver_tiles_bf16 : w->dtype == DT_F16 ? sliver_tiles_f16 : sliver_tiles_f32;
    int d_out = w->rows, d_in = w->cols;
    // The first tile's rows (or all n, when fewer): 16 where tiles of 12 would leave 4.
    int first_rows = n % MATMUL_MR == MATMUL_MR_FIRST - MATMUL_MR ? MATMUL_MR_FIRST : MATMUL_MR;
    int widen = w->dtype != DT_F32 && n >= first_rows + MATMUL_MR;
    size_t eb = dtype_bytes(w->dtype);
    _Alignas(64) float wide[MATMUL_GROUP][MATMUL_KC * MATMUL_SLIVER]; // the block's slivers in F32: 384 KB of stack
    int full_tiles = (n - (n < first_rows ? n : first_rows)) / MATMUL_MR; // after the first, per sliver
    size_t group_bytes = (size_t)(s1 - s0) * MATMUL_KC * MATMUL_SLIVER * eb;
    size_t footprint = (size_t)n * (MATMUL_KC + (size_t)(s1 - s0) * MATMUL_SLIVER) * sizeof(float) + 2 * group_bytes;
    int ahead = w->dtype == DT_F32 && full_tiles > 0 && 2 * footprint <= m->l2_bytes;
    for (int kb = 0; kb < d_in; kb += MATMUL_KC) {
        int len = d_in - kb < MATMUL_KC ? d_in - kb : MATMUL_KC;
        size_t sliver_bytes = (size_t)len * MATMUL_SLIVER * eb, next_bytes = 0;
        const char *block = (const char *)w->packed + packed_offset(w, kb, s0) * eb;
        const char *next = ahead ? next_block(w, kb, s0, s1, &next_bytes) : NULL, *next_end = next;
        if (next) next_end += next_bytes;
        int every = 1; // columns per prefetched line, a power of 2: as few as cover the next block
        while (next_bytes && every < len &&
               (size_t)2 * every * (next_bytes / 64) <= (size_t)len * full_tiles * (s1 - s0))
            every *= 2;
        size_t ahead_bytes = (size_t)64 * ((len + every - 1) / every); // what one tile prefetches
        for (int r0 = 0, R; r0 < n; r0 += R) {
            R = r0 == 0 ? (n < first_rows ? n : first_rows) : n - r0 < MATMUL_MR ? n - r0 : MATMUL_MR;
            int S = tile_slivers(R);
            for (int s = s0; s < s1; s += S) {
                const float *xt = x + (size_t)r0 * d_in + kb;
                float *ot = out + (size_t)r0 * d_out + (size_t)s * MATMUL_SLIVER;
                int n_out = d_out - s * MATMUL_SLIVER;
                if (next && next < next_end && r0 > 0 && R == MATMUL_MR) {
                    if ((size_t)(next_end - next) < ahead_bytes) next = next_end - ahead_bytes; // ends with the block
                    sliver_tile_f32_ahead(xt, (size_t)d_in, block + (s - s0) * sliver_bytes, len, kb == 0, ot,
                                          (size_t)d_out, n_out, next, every - 1);
                    next += ahead_bytes;
                } else if (!widen || (r0 > 0 && R < MATMUL_MR))
                    tiles(R, s1 - s < S ? s1 - s : S, xt, (size_t)d_in, block + (s - s0) * sliver_bytes, sliver_bytes,
                          len, kb == 0, ot, (size_t)d_out, n_out, m->row_ahead);
                else if (r0 == 0)
                    sliver_tile_widen(w->dtype, R, xt, (size_t)d_in, block + (s - s0) * sliver_bytes, len, kb == 0, ot,
                                      (size_t)d_out, n_out, wide[s - s0]);
                else
                    sliver_tiles_f32(MATMUL_MR, 1, xt, (size_t)d_in, (const char *)wide[s - s0],
                                     (size_t)len * MATMUL_SLIVER * sizeof(float), len, kb == 0, ot, (size_t)d_out,
                                     n_out, m->row_ahead);
            }
        }
    }
}

// Scores of G heads (q: G x hd) against the 32 keys of a pair of key blocks from kb: lane
// j of acc[h][t] sums q[h][d] * key(16 t + j)[d] over d in order, one FMA per d, so no
// horizontal sums; scaled into scores[h * seq_stride + p0 ..]. Lanes past the last
// position read stale keys and are never used.
AVX512 static INLINE void scores_avx512(int G, const float *q, int hd, const float *kb, float scale, float *scores,
                                        int seq_stride, int p0) {
    __m512 acc[ATTN_HEADS][2];
    UNROLL for (int h = 0; h < G; h++) acc[h][0] = acc[h][1] = _mm512_setzero_ps();
    for (int d = 0; d < hd; d++) {
        __m512 k0 = _mm512_loadu_ps(kb + (size_t)d * KEY_BLOCK),
               k1 = _mm512_loadu_ps(kb + (size_t)(hd + d) * KEY_BLOCK);
        UNROLL for (int h = 0; h < G; h++) {
            __m512 qd = _mm512_set1_ps(q[(size_t)h * hd + d]);
            acc[h][0] = _mm512_fmadd_ps(qd, k0, acc[h][0]);
            acc[h][1] = _mm512_fmadd_ps(qd, k1, acc[h][1]);
        }
    }
    UNROLL for (int h = 0; h < G; h++) {
        float *sc = scores + (size_t)h * seq_stride + p0;
        _mm512_storeu_ps(sc, _mm512_mul_ps(acc[h][0], _mm512_set1_ps(scale)));
        _mm512_storeu_ps(sc + KEY_BLOCK, _mm512_mul_ps(acc[h][1], _mm512_set1_ps(scale)));
    }
}

// out[h] (VEC vectors of dimensions from d0) = sum over p of prob[h][p] * value(p), in position order.
AVX512 static INLINE void values_avx512(int G, int VEC, const float *probs, int seq_stride, const float *values,
                                        const float *self_v, int pos, int hd, int d0, float *out) {
    __m512 acc[ATTN_HEADS][8];
    __mmask16 m[8];
    UNROLL for (int v = 0; v < VEC; v++) m[v] = mask16(hd - d0 - 16 * v);
    UNROLL for (int h = 0; h < G; h++) UNROLL for (int v = 0; v < VEC; v++) acc[h][v] = _mm512_setzero_ps();
    for (int p = 0; p <= pos; p++) {
        const float *vp = (self_v && p == pos ? self_v : values + (size_t)p * hd) + d0;
        __m512 val[8];
        UNROLL for (int v = 0; v < VEC; v++) val[v] = _mm512_maskz_loadu_ps(m[v], vp + 16 * v);
        UNROLL for (int h = 0; h < G; h++) {
            __m512 prob = _mm512_set1_ps(probs[(size_t)h * seq_stride + p]);
            UNROLL for (int v = 0; v < VEC; v++) acc[h][v] = _mm512_fmadd_ps(prob, val[v], acc[h][v]);
        }
    }
    UNROLL for (int h = 0; h < G; h++) UNROLL for (int v = 0; v < VEC; v++)
        _mm512_mask_storeu_ps(out + (size_t)h * hd + d0 + 16 * v, m[v], acc[h][v]);
}

// A replayed row's score against its own key (not in the cache): the same FMAs in the same
// order as a cached key's lane in the SIMD score kernels.
static float self_key_score(const float *q, const float *self_k, int hd, float scale) {
    float acc = 0;
    for (int d = 0; d < hd; d++) acc = fmaf(q[d], self_k[d], acc);
    return acc * scale;
}

// attend_portable's arithmetic, ATTN_HEADS heads at a time: scores by key blocks, a
// vectorised softmax per head, then values with each value row loaded once for all heads.
AVX512 static void attend_avx512(const float *q, const float *keys, const float *values, const float *self_k,
                                 const float *self_v, int pos, int hd, int group, int seq_stride, float scale,
                                 float *scores, float *out) {
    for (int h0 = 0; h0 < group; h0 += ATTN_HEADS) {
        int G = group - h0 < ATTN_HEADS ? group - h0 : ATTN_HEADS, n = pos + 1;
        const float *qg = q + (size_t)h0 * hd;
        for (int p0 = 0; p0 < n; p0 += 2 * KEY_BLOCK) {
            const float *kb = keys + (size_t)(p0 / KEY_BLOCK) * hd * KEY_BLOCK;
            switch (G) { // constant head counts keep the accumulators in registers
            case 1: scores_avx512(1, qg, hd, kb, scale, scores, seq_stride, p0); break;
            case 2: scores_avx512(2, qg, hd, kb, scale, scores, seq_stride, p0); break;
            case 3: scores_avx512(3, qg, hd, kb, scale, scores, seq_stride, p0); break;
            case 4: scores_avx512(4, qg, hd, kb, scale, scores, seq_stride, p0); break;
            case 5: scores_avx512(5, qg, hd, kb, scale, scores, seq_stride, p0); break;
            default: scores_avx512(6, qg, hd, kb, scale, scores, seq_stride, p0); break;
            }
        }
        for (int h = 0; h < G; h++) {
            float *sc = scores + (size_t)h * seq_stride;
            if (self_k) sc[pos] = self_key_score(qg + (size_t)h * hd, self_k, hd, scale);
            __m512 vmax = _mm512_set1_ps(-INFINITY), vsum = _mm512_setzero_ps();
            for (int p = 0; p < n; p += 16)
                vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(vmax, mask16(n - p), sc + p));
            __m512 max = _mm512_set1_ps(_mm512_reduce_max_ps(vmax)); // max is exact in any order
            for (int p = 0; p < n; p += 16) {
                __mmask16 m = mask16(n - p);
                __m512 e = exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, sc + p), max));
                vsum = _mm512_add_ps(vsum, _mm512_maskz_mov_ps(m, e));
                _mm512_mask_storeu_ps(sc + p, m, e);
            }
            __m512 sum = _mm512_set1_ps(hsum_avx512(vsum));
            for (int p = 0; p < n; p += 16) {
                __mmask16 m = mask16(n - p);
                _mm512_mask_storeu_ps(sc + p, m, _mm512_div_ps(_mm512_maskz_loadu_ps(m, sc + p), sum));
            }
        }
        float *og = out + (size_t)h0 * hd;
        for (int d0 = 0; d0 < hd; d0 += G <= 2 ? 128 : 64)
            switch (
                G) { // up to 2 heads: 8 vectors of dimensions at a time, else 4 (the accumulators fill the registers)
            case 1: values_avx512(1, 8, scores, seq_stride, values, self_v, pos, hd, d0, og); break;
            case 2: values_avx512(2, 8, scores, seq_stride, values, self_v, pos, hd, d0, og); break;
            case 3: values_avx512(3, 4, scores, seq_stride, values, self_v, pos, hd, d0, og); break;
            case 4: values_avx512(4, 4, scores, seq_stride, values, self_v, pos, hd, d0, og); break;
            case 5: values_avx512(5, 4, scores, seq_stride, values, self_v, pos, hd, d0, og); break;
            default: values_avx512(6, 4, scores, seq_stride, values, self_v, pos, hd, d0, og); break;
            }
    }
}

AVX512 static void silu_gate_avx512(float *gate, const float *up, size_t n) {
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = mask16(n - i < 16 ? (int)(n - i) : 16);
        __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
        __m512 s =
            _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), g))));
        _mm512_mask_storeu_ps(gate + i, m, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, up + i)));
    }
}

// AVX2 + FMA: the AVX-512 kernels' arithmetic in vectors of 8, for the x86 CPUs without
// AVX-512 (Zen 2 and 3, Haswell to Alder Lake). They read the same packed weights and do the
// same FMAs, in the same order, for every output, score and sum, so their results are the
// AVX-512 kernels' bit for bit (tested): a run makes the same bytes on either kind of CPU.
static int cpu_has_avx2(void) { // F16C too, which clang's __builtin_cpu_supports cannot ask for
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

// Lanes 0..left-1 of 8 on (sign bit set), for maskload/maskstore.
AVX2 static INLINE __m256i mask8(int left) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(left), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// exp_avx512's arithmetic. Its scalef (p x 2^n, n in [-150, 128], rounded once) is two
// multiplies by powers of 2 that are normal floats: the first is exact, the second rounds.
AVX2 static INLINE __m256 exp_avx2(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(EXP_MIN_X)), _mm256_set1_ps(EXP_MAX_X));
    __m256 n =
        _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(EXP_LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_LO), r);
    __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(exp_poly[0]), r, _mm256_set1_ps(exp_poly[1]));
    for (int i = 2; i < 6; i++) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(exp_poly[i]));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i ni = _mm256_cvttps_epi32(n), n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
    __m256 two_n1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, _mm256_set1_epi32(127)), 23)),
           two_n2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, _mm256_set1_epi32(127)), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, two_n1), two_n2);
}

// The first output of vector v (of 8) of a packed sliver's column: BF16 interleaves rows i and 16 + i.
static INLINE int sliver_lane0(DType dtype, int v) { return dtype == DT_BF16 ? (v & 1) * 16 + (v >> 1) * 8 : 8 * v; }

// Vectors 2h and 2h + 1 of column p of one packed sliver (32 bytes of BF16: a shift and a mask).
AVX2 static INLINE void sliver_half_avx2(DType dtype, const char *p, int h, __m256 *a, __m256 *b) {
    if (dtype == DT_BF16) {
        __m256i raw = _mm256_load_si256((const __m256i *)p + h);
        *a = _mm256_castsi256_ps(_mm256_slli_epi32(raw, 16));
        *b = _mm256_castsi256_ps(_mm256_and_si256(raw, _mm256_set1_epi32((int)0xffff0000u)));
    } else if (dtype == DT_F16) {
        *a = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)p + 2 * h));
        *b = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)p + 2 * h + 1));
    } else {
        *a = _mm256_load_ps((const float *)p + 16 * h);
        *b = _mm256_load_ps((const float *)p + 16 * h + 8);
    }
}

// sliver_tile_avx512 for one sliver in vectors of 8, with 16 registers: R rows of x by H
// halves of the sliver from half h0 (one row or two take the whole sliver, more rows one half
// at a time, the second pass reading what the first brought into L1), R x 2H accumulators.
// Many rows prefetch twice as far into L2 as the AVX-512 tiles (batch 16 +6-10% on a Zen 4 VM).
AVX2 static INLINE void sliver_tile_avx2(DType dtype, int R, int H, int h0, const float *x, size_t ldx, const char *pk,
                                         int len, int first, float *out, size_t ldo, int n_out, const int *row_ahead,
                                         const char *ahead, int ahead_mask) {
    __m256 acc[MATMUL_MR_AVX2][4];
    __m256i mask[4];
    int lane0[4];
    size_t col_bytes = MATMUL_SLIVER * dtype_bytes(dtype);
    int l1_ahead = R == 1 ? row_ahead[0] : MATMUL_PREFETCH_L1_BYTES,
        l2_ahead = R == 1 ? row_ahead[1] : 2 * MATMUL_PREFETCH_L2_BYTES;
    UNROLL for (int j = 0; j < 2 * H; j++) {
        lane0[j] = sliver_lane0(dtype, 2 * h0 + j);
        mask[j] = mask8(n_out - lane0[j]);
    }
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int j = 0; j < 2 * H; j++)
        acc[r][j] = first ? _mm256_setzero_ps() : _mm256_maskload_ps(out + r * ldo + lane0[j], mask[j]);
    for (int k = 0; k < len; k++) {
        const char *p = pk + k * col_bytes;
        if (h0 == 0)
            for (int line = 0; line < (dtype == DT_F32 ? 2 : 1); line++) {
                _mm_prefetch(p + 64 * line + l1_ahead, _MM_HINT_T0);
                _mm_prefetch(p + 64 * line + l2_ahead, _MM_HINT_T2);
            }
        __m256 w[4];
        UNROLL for (int t = 0; t < H; t++) sliver_half_avx2(dtype, p, h0 + t, &w[2 * t], &w[2 * t + 1]);
        if (ahead && (k & ahead_mask) == 0) _mm_prefetch(ahead, _MM_HINT_T2), ahead += 64;
        UNROLL for (int r = 0; r < R; r++) {
            __m256 xv = _mm256_broadcast_ss(x + r * ldx + k);
            UNROLL for (int j = 0; j < 2 * H; j++) acc[r][j] = _mm256_fmadd_ps(xv, w[j], acc[r][j]);
        }
    }
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int j = 0; j < 2 * H; j++)
        _mm256_maskstore_ps(out + r * ldo + lane0[j], mask[j], acc[r][j]);
}

// Every AVX2 tile of one dtype, R a constant in each.
#define SLIVER_TILE_AVX2(R)                                                                                            \
    case R:                                                                                                            \
        sliver_tile_avx2(dtype, R, (R) <= 2 ? 2 : 1, h0, x, ldx, pk, len, first, out, ldo, n_out, row_ahead, ahead,    \
                         ahead_mask);                                                                                  \
        return;
#define SLIVER_TILES_AVX2(name, dtype_constant)                                                                        \
    AVX2 static void name(int R, int h0, const float *x, size_t ldx, const char *pk, int len, int first, float *out,   \
                          size_t ldo, int n_out, const int row_ahead[2], const char *ahead, int ahead_mask) {          \
        const DType dtype = dtype_constant;                                                                            \
        switch (R) {                                                                                                   \
            SLIVER_TILE_AVX2(1) SLIVER_TILE_AVX2(2) SLIVER_TILE_AVX2(3) SLIVER_TILE_AVX2(4) SLIVER_TILE_AVX2(5)        \
            SLIVER_TILE_AVX2(6)                                                                                        \
        }                                                                                                              \
    }
SLIVER_TILES_AVX2(sliver_tiles_avx2_bf16, DT_BF16)
SLIVER_TILES_AVX2(sliver_tiles_avx2_f16, DT_F16)
SLIVER_TILES_AVX2(sliver_tiles_avx2_f32, DT_F32)

// matmul_slivers_avx512's loops with the AVX2 tiles: slivers s0..s1 of w against all n rows
// of x, block by block of MATMUL_KC columns, each block's slivers (in L2) meeting every tile of
// rows. Up to MATMUL_SLIVER_ORDER_AVX2 rows each sliver meets every tile of rows in turn
// instead, and the tiles after the first prefetch the next sliver into L2, spread over them: so
// memory streams through all their FMAs, not through the first tile's alone.
AVX2 static void matmul_slivers_avx2(const Model *m, float *out, const float *x, int n, const Tensor *w, int s0,
                                     int s1) {
    void (*tiles)(int, int, const float *, size_t, const char *, int, int, float *, size_t, int, const int *,
                  const char *, int) = w->dtype == DT_BF16  ? sliver_tiles_avx2_bf16
                                       : w->dtype == DT_F16 ? sliver_tiles_avx2_f16
                                                            : sliver_tiles_avx2_f32;
    int d_out = w->rows, d_in = w->cols, sliver_order = n <= MATMUL_SLIVER_ORDER_AVX2, later_passes = 0;
    size_t eb = dtype_bytes(w->dtype);
    for (int r0 = MATMUL_MR_AVX2, R; r0 < n; r0 += R) {
        R = n - r0 < MATMUL_MR_AVX2 ? n - r0 : MATMUL_MR_AVX2;
        later_passes += R <= 2 ? 1 : 2;
    }
    for (int kb = 0; kb < d_in; kb += MATMUL_KC) {
        int len = d_in - kb < MATMUL_KC ? d_in - kb : MATMUL_KC, every = 1;
        size_t sliver_bytes = (size_t)len * MATMUL_SLIVER * eb, lines = sliver_bytes / 64;
        while (every < len && (size_t)later_passes * ((len + 2 * every - 1) / (2 * every)) >= lines) every *= 2;
        const char *block = (const char *)w->packed + packed_offset(w, kb, s0) * eb;
        for (int first_s = s0, step = sliver_order ? 1 : s1 - s0; first_s < s1; first_s += step) {
            const char *next = sliver_order ? block + (size_t)(first_s - s0 + 1) * sliver_bytes : NULL;
            for (int r0 = 0, R; r0 < n; r0 += R) {
                R = n - r0 < MATMUL_MR_AVX2 ? n - r0 : MATMUL_MR_AVX2;
                for (int s = first_s; s < first_s + step; s++)
                    for (int h0 = 0; h0 < 2; h0 += R <= 2 ? 2 : 1) {
                        tiles(R, h0, x + (size_t)r0 * d_in + kb, (size_t)d_in, block + (s - s0) * sliver_bytes, len,
                              kb == 0, out + (size_t)r0 * d_out + (size_t)s * MATMUL_SLIVER, (size_t)d_out,
                              d_out - s * MATMUL_SLIVER, m->row_ahead, r0 > 0 ? next : NULL, every - 1);
                        if (next && r0 > 0) next += (size_t)64 * ((len + every - 1) / every);
                    }
            }
        }
    }
}

// scores_avx512 for one key block of 16 positions (2 x G accumulators of 8 lanes).
AVX2 static INLINE void scores_avx2(int G, const float *q, int hd, const float *kb, float scale, float *scores,
                                    int seq_stride, int p0) {
    __m256 acc[ATTN_HEADS][2];
    UNROLL for (int h = 0; h < G; h++) acc[h][0] = acc[h][1] = _mm256_setzero_ps();
    for (int d = 0; d < hd; d++) {
        __m256 k0 = _mm256_loadu_ps(kb + (size_t)d * KEY_BLOCK), k1 = _mm256_loadu_ps(kb + (size_t)d * KEY_BLOCK + 8);
        UNROLL for (int h = 0; h < G; h++) {
            __m256 qd = _mm256_broadcast_ss(q + (size_t)h * hd + d);
            acc[h][0] = _mm256_fmadd_ps(qd, k0, acc[h][0]);
            acc[h][1] = _mm256_fmadd_ps(qd, k1, acc[h][1]);
        }
    }
    UNROLL for (int h = 0; h < G; h++) {
        float *sc = scores + (size_t)h * seq_stride + p0;
        _mm256_storeu_ps(sc, _mm256_mul_ps(acc[h][0], _mm256_set1_ps(scale)));
        _mm256_storeu_ps(sc + 8, _mm256_mul_ps(acc[h][1], _mm256_set1_ps(scale)));
    }
}

// values_avx512 in VEC vectors of 8 dimensions from d0.
AVX2 static INLINE void values_avx2(int G, int VEC, const float *probs, int seq_stride, const float *values,
                                    const float *self_v, int pos, int hd, int d0, float *out) {
    __m256 acc[ATTN_HEADS][4];
    __m256i m[4];
    UNROLL for (int v = 0; v < VEC; v++) m[v] = mask8(hd - d0 - 8 * v);
    UNROLL for (int h = 0; h < G; h++) UNROLL for (int v = 0; v < VEC; v++) acc[h][v] = _mm256_setzero_ps();
    for (int p = 0; p <= pos; p++) {
        const float *vp = (self_v && p == pos ? self_v : values + (size_t)p * hd) + d0;
        __m256 val[4];
        UNROLL for (int v = 0; v < VEC; v++) val[v] = _mm256_maskload_ps(vp + 8 * v, m[v]);
        UNROLL for (int h = 0; h < G; h++) {
            __m256 prob = _mm256_broadcast_ss(probs + (size_t)h * seq_stride + p);
            UNROLL for (int v = 0; v < VEC; v++) acc[h][v] = _mm256_fmadd_ps(prob, val[v], acc[h][v]);
        }
    }
    UNROLL for (int h = 0; h < G; h++) UNROLL for (int v = 0; v < VEC; v++)
        _mm256_maskstore_ps(out + (size_t)h * hd + d0 + 8 * v, m[v], acc[h][v]);
}

// attend_avx512 in vectors of 8; the softmax's sum keeps its 16 lanes in two vectors.
AVX2 static void attend_avx2(const float *q, const float *keys, const float *values, const float *self_k,
                             const float *self_v, int pos, int hd, int group, int seq_stride, float scale,
                             float *scores, float *out) {
    for (int h0 = 0; h0 < group; h0 += ATTN_HEADS) {
        int G = group - h0 < ATTN_HEADS ? group - h0 : ATTN_HEADS, n = pos + 1;
        const float *qg = q + (size_t)h0 * hd;
        for (int p0 = 0; p0 < n; p0 += KEY_BLOCK) {
            const float *kb = keys + (size_t)(p0 / KEY_BLOCK) * hd * KEY_BLOCK;
            switch (G) { // constant head counts keep the accumulators in registers
            case 1: scores_avx2(1, qg, hd, kb, scale, scores, seq_stride, p0); break;
            case 2: scores_avx2(2, qg, hd, kb, scale, scores, seq_stride, p0); break;
            case 3: scores_avx2(3, qg, hd, kb, scale, scores, seq_stride, p0); break;
            case 4: scores_avx2(4, qg, hd, kb, scale, scores, seq_stride, p0); break;
            case 5: scores_avx2(5, qg, hd, kb, scale, scores, seq_stride, p0); break;
            default: scores_avx2(6, qg, hd, kb, scale, scores, seq_stride, p0); break;
            }
        }
        for (int h = 0; h < G; h++) {
            float *sc = scores + (size_t)h * seq_stride;
            if (self_k) sc[pos] = self_key_score(qg + (size_t)h * hd, self_k, hd, scale);
            __m256 vmax = _mm256_set1_ps(-INFINITY);
            for (int p = 0; p < n; p += 8) {
                __m256i m = mask8(n - p);
                __m256 scores8 = _mm256_blendv_ps(vmax, _mm256_maskload_ps(sc + p, m), _mm256_castsi256_ps(m));
                vmax = _mm256_max_ps(vmax, scores8);
            }
            __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
            __m256 max = _mm256_set1_ps(_mm_cvtss_f32(m4)), sum[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
            for (int p = 0; p < n; p += 16) // lane j of sum[0], sum[1] is lane j, 8 + j of exp_avx512's sum
                for (int half = 0; half < 2; half++) {
                    __m256i m = mask8(n - p - 8 * half);
                    __m256 e = exp_avx2(_mm256_sub_ps(_mm256_maskload_ps(sc + p + 8 * half, m), max));
                    sum[half] = _mm256_add_ps(sum[half], _mm256_and_ps(e, _mm256_castsi256_ps(m)));
                    _mm256_maskstore_ps(sc + p + 8 * half, m, e);
                }
            __m256 total = _mm256_set1_ps(hsum8_tree(_mm256_add_ps(sum[0], sum[1]))); // hsum_avx512's tree
            for (int p = 0; p < n; p += 8) {
                __m256i m = mask8(n - p);
                _mm256_maskstore_ps(sc + p, m, _mm256_div_ps(_mm256_maskload_ps(sc + p, m), total));
            }
        }
        float *og = out + (size_t)h0 * hd;
        for (int d0 = 0; d0 < hd; d0 += G <= 2 ? 32 : 16)
            switch (G) { // up to 2 heads: 4 vectors of dimensions at a time, else 2 (16 registers)
            case 1: values_avx2(1, 4, scores, seq_stride, values, self_v, pos, hd, d0, og); break;
            case 2: values_avx2(2, 4, scores, seq_stride, values, self_v, pos, hd, d0, og); break;
            case 3: values_avx2(3, 2, scores, seq_stride, values, self_v, pos, hd, d0, og); break;
            case 4: values_avx2(4, 2, scores, seq_stride, values, self_v, pos, hd, d0, og); break;
            case 5: values_avx2(5, 2, scores, seq_stride, values, self_v, pos, hd, d0, og); break;
            default: values_avx2(6, 2, scores, seq_stride, values, self_v, pos, hd, d0, og); break;
            }
    }
}

AVX2 static void silu_gate_avx2(float *gate, const float *up, size_t n) {
    for (size_t i = 0; i < n; i += 8) {
        __m256i m = mask8(n - i < 8 ? (int)(n - i) : 8);
        __m256 g = _mm256_maskload_ps(gate + i, m);
        __m256 s =
            _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), g))));
        _mm256_maskstore_ps(gate + i, m, _mm256_mul_ps(s, _mm256_maskload_ps(up + i, m)));
    }
}
#else
static int cpu_has_avx512(void) { return 0; }
static int cpu_has_avx2(void) { return 0; }
#endif

// One core's L2 in bytes, 0 where the C library cannot say.
static size_t l2_cache_bytes(void) {
#ifdef _SC_LEVEL2_CACHE_SIZE
    long bytes = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return bytes > 0 ? (size_t)bytes : 0;
#else
    return 0;
#endif
}

const char *const simd_names[] = {"portable", "avx2", "avx512"};

// The kernels a model uses (SimdLevel): the best the CPU has, at most BT_SIMD's (a name of
// simd_names, to compare the paths on one machine), portable C where BT_NO_SIMD is set (not "0").
static int choose_simd(Err *err) {
    const char *off = getenv("BT_NO_SIMD"), *cap = getenv("BT_SIMD");
    int most = cap && *cap ? -1 : SIMD_AVX512;
    for (int level = SIMD_PORTABLE; cap && *cap && level <= SIMD_AVX512; level++)
        if (strcmp(cap, simd_names[level]) == 0) most = level;
    if (most < 0) return err_input(err, "BT_SIMD=%s: not one of portable, avx2, avx512", cap);
    if (off && *off && strcmp(off, "0") != 0) return SIMD_PORTABLE;
    if (most >= SIMD_AVX512 && cpu_has_avx512()) return SIMD_AVX512;
    return most >= SIMD_AVX2 && cpu_has_avx2() ? SIMD_AVX2 : SIMD_PORTABLE;
}

#ifdef HAVE_AVX512
// How far ahead the one-row (decode) tile prefetches its stream into L1 and L2, by CPU vendor:
// on a Zen 4 VM the other tiles' distances read a lone stream slower than no software
// prefetch at all, 256 B / 2 KB faster (BF16 decode +20%, F32 +10%; the tiles of many rows
// lose up to 20% at these). Intel keeps the others' distances, measured there.
static void choose_row_ahead(int row_ahead[2]) {
    __builtin_cpu_init();
    int amd = __builtin_cpu_is("amd");
    row_ahead[0] = amd ? 256 : MATMUL_PREFETCH_L1_BYTES;
    row_ahead[1] = amd ? 2048 : MATMUL_PREFETCH_L2_BYTES;
}

// The AVX-512 kernels read each matmul weight packed: groups of MATMUL_GROUP slivers of
// MATMUL_SLIVER rows (the last group shorter); in each group blocks of MATMUL_KC columns; in
// each block the group's slivers one after another; in each sliver the columns in order, each
// column's 32 rows side by side (rows past the last are zero), as two vectors of 16 outputs.
// BF16 puts rows i and 16 + i in one 32-bit word (low, high) so that a shift and a mask widen
// them; F16 and F32 keep row order. So a thread's unit of work (a group, block after block)
// reads one linear stream, and the next group, which it mostly takes next, follows on: with
// the blocks of all slivers one after another instead, the stream jumped at every block and
// the prefetchers started anew (BF16 decode 3-11% slower on a Zen 4 VM).
// Bytes of w packed, rounded up to a cache line so that the next tensor's starts on one.
static size_t packed_bytes(const Tensor *w) {
    size_t rows = (size_t)(w->rows + MATMUL_SLIVER - 1) / MATMUL_SLIVER * MATMUL_SLIVER;
    size_t bytes = rows * w->cols * dtype_bytes(w->dtype);
    return (bytes + 63) / 64 * 64;
}

static void pack_tensor(const Tensor *w, void *dst) {
    int n_slivers = (w->rows + MATMUL_SLIVER - 1) / MATMUL_SLIVER, bf16 = w->dtype == DT_BF16;
    size_t eb = dtype_bytes(w->dtype);
#pragma omp parallel for schedule(static)
    for (int s = 0; s < n_slivers; s++)
        for (int kb = 0; kb < w->cols; kb += MATMUL_KC) {
            int len = w->cols - kb < MATMUL_KC ? w->cols - kb : MATMUL_KC;
            size_t sliver = packed_offset(w, kb, s);
            for (int i = 0; i < MATMUL_SLIVER; i++) {
                int row = s * MATMUL_SLIVER + i, at = bf16 ? i % 16 * 2 + i / 16 : i;
                size_t src = (size_t)row * w->cols + kb, d = sliver + at;
                for (int k = 0; k < len; k++, d += MATMUL_SLIVER)
                    if (eb == 2) ((uint16_t *)dst)[d] = row < w->rows ? ((const uint16_t *)w->data)[src + k] : 0;
                    else ((uint32_t *)dst)[d] = row < w->rows ? ((const uint32_t *)w->data)[src + k] : 0;
            }
        }
}

// Packs every matmul weight into one allocation (Model.packed), then tells the kernel it may
// drop the mapped pages read: the file still backs them (the portable path and the gradients'
// transposed matmul read the stored rows), and the weights stay in memory once, not twice.
static void pack_weights(Model *m) {
    int n = 7 * m->cfg.n_layers + 1;
    Tensor **ts = xmalloc((size_t)n * sizeof *ts);
    for (int l = 0; l < m->cfg.n_layers; l++) {
        LayerWeights *w = &m->layers[l];
        Tensor *layer[7] = {&w->wq, &w->wk, &w->wv, &w->wo, &w->w_gate, &w->w_up, &w->w_down};
        memcpy(ts + 7 * l, layer, sizeof layer);
    }
    ts[n - 1] = &m->lm_head;
    size_t total = 0, page = (size_t)sysconf(_SC_PAGESIZE);
    for (int i = 0; i < n; i++) total += packed_bytes(ts[i]);
    m->packed = xmalloc_huge(total);
    char *mem = m->packed;
    m->bytes_allocated += total;
    for (int i = 0; i < n; i++) {
        pack_tensor(ts[i], mem);
        ts[i]->packed = mem;
        mem += packed_bytes(ts[i]);
        size_t bytes = (size_t)ts[i]->rows * ts[i]->cols * dtype_bytes(ts[i]->dtype);
        uintptr_t from = ((uintptr_t)ts[i]->data + page - 1) / page * page,
                  to = ((uintptr_t)ts[i]->data + bytes) / page * page;
        if (to > from) madvise((void *)from, to - from, MADV_DONTNEED);
    }
    free(ts);
}
#endif

// The unit handed out v-th of n among T threads: the units dealt as T runs, so threads that
// take units at the same moment stream weights far apart (neighbouring blocks streamed side
// by side made 2-thread batch-16 matmuls 4-8% slower, the gradient pass's transposed ones
// 2-9%). Each output is whole in one unit, so the order changes no result.
int spread_unit(int v, int n, int T) {
    int run = v % T, per_run = n / T, longer = n % T;
    return run * per_run + (run < longer ? run : longer) + v / T;
}

// outs[j](n, rows of ws[j]) = x(n, d_in) · ws[j]^T (+ biases[j]) for n_w weights that read
// the same x (q, k and v; gate and up), W in its stored dtype. Threads take blocks of weight
// rows of any of them, each output whole, from one loop: so no thread idles at the end of
// each matmul, nor through one of a single block (k and v). Where there are still fewer
// blocks than threads the rows of x are split too, in whole tiles. n_w <= 3.
static void matmuls(const Model *m, const float *x, int n, int n_w, float *const outs[], const Tensor *const ws[],
                    const Tensor *const biases[]) {
    int d_in = ws[0]->cols, block = MATMUL_W_ROWS, tile = 1, w_blocks[3], first_unit[4] = {0}, n_blocks = 0;
    (void)m; // unused without the SIMD kernels
#ifdef HAVE_AVX512
    if (m->simd) block = MATMUL_GROUP * MATMUL_SLIVER, tile = m->simd == SIMD_AVX512 ? MATMUL_MR : MATMUL_MR_AVX2;
#endif
    for (int j = 0; j < n_w; j++) n_blocks += w_blocks[j] = (ws[j]->rows + block - 1) / block;
    int chunk = n; // rows of x per unit of work
    for (int parts = 2; n_blocks * (parts - 1) < max_threads() && (n + parts - 1) / parts >= 2 * tile; parts++)
        chunk = ((n + parts - 1) / parts + tile - 1) / tile * tile;
    int n_chunks = (n + chunk - 1) / chunk;
    double macs = 0;
    for (int j = 0; j < n_w; j++) {
        first_unit[j + 1] = first_unit[j] + w_blocks[j] * n_chunks;
        macs += (double)n * ws[j]->rows * d_in;
    }
    int n_units = first_unit[n_w], n_threads = max_threads();
    (void)macs; // unused without OpenMP
#pragma omp parallel for schedule(                                                                                     \
    dynamic, 1) if (macs >= PARALLEL_MIN_MACS) // dynamic: a thread that lost its core to another process does less
    for (int v = 0; v < n_units; v++) {
        int u = spread_unit(v, n_units, n_threads), j = 0;
        while (u >= first_unit[j + 1]) j++;
        const Tensor *w = ws[j], *bias = biases[j];
        int d_out = w->rows, k = u - first_unit[j]; // unit k of weight j: its block and chunk of rows
        int o0 = k % w_blocks[j] * block, o1 = d_out - o0 < block ? d_out : o0 + block;
        int r0 = k / w_blocks[j] * chunk, nr = n - r0 < chunk ? n - r0 : chunk;
        float *o = outs[j] + (size_t)r0 * d_out;
        const float *xr = x + (size_t)r0 * d_in;
#ifdef HAVE_AVX512
        if (m->simd == SIMD_AVX512)
            matmul_slivers_avx512(m, o, xr, nr, w, o0 / MATMUL_SLIVER, (o1 + MATMUL_SLIVER - 1) / MATMUL_SLIVER);
        else if (m->simd == SIMD_AVX2)
            matmul_slivers_avx2(m, o, xr, nr, w, o0 / MATMUL_SLIVER, (o1 + MATMUL_SLIVER - 1) / MATMUL_SLIVER);
        else
#endif
            matmul_rows_portable(o, xr, nr, w, o0, o1);
        if (bias && bias->data)
            for (int r = 0; r < nr; r++)
                for (int c = o0; c < o1; c++) o[(size_t)r * d_out + c] += tensor_at(bias, (size_t)c);
    }
}

// out(n, d_out) = x(n, d_in) · W(d_out, d_in)^T (+ bias).
static void matmul(const Model *m, float *out, const float *x, int n, const Tensor *w, const Tensor *bias) {
    matmuls(m, x, n, 1, &out, &w, &bias);
}

static void silu_gate(const Model *m, float *gate, const float *up, size_t n) {
    (void)m; // unused without the SIMD kernels
#ifdef HAVE_AVX512
    if (m->simd == SIMD_AVX512) {
        silu_gate_avx512(gate, up, n);
        return;
    }
    if (m->simd == SIMD_AVX2) {
        silu_gate_avx2(gate, up, n);
        return;
    }
#endif
    silu_gate_portable(gate, up, n);
}

// One key/value head's query heads over positions 0..pos, in the model's kernels (attend_portable).
static void attend(const Model *m, const float *q, const float *keys, const float *values, const float *self_k,
                   const float *self_v, int pos, int hd, int group, int seq_stride, float scale, float *scores,
                   float *out) {
    (void)m; // unused without the SIMD kernels
#ifdef HAVE_AVX512
    if (m->simd == SIMD_AVX512) {
        attend_avx512(q, keys, values, self_k, self_v, pos, hd, group, seq_stride, scale, scores, out);
        return;
    }
    if (m->simd == SIMD_AVX2) {
        attend_avx2(q, keys, values, self_k, self_v, pos, hd, group, seq_stride, scale, scores, out);
        return;
    }
#endif
    attend_portable(q, keys, values, self_k, self_v, pos, hd, group, seq_stride, scale, scores, out);
}

// Causal attention of every row and head over its slot's cache (positions 0..pos; a
// replayed row reads the cache for 0..pos-1 and its own key/value at pos). Scores and
// softmax in F32 as HF: scale head_dim^-0.5, max-subtracted exp, normalised, then V.
// The query heads that share a key/value head go together, each key read once for all.
static void attention(const Model *m, RunState *s, const Forward *f, int layer, int replay) {
    const ModelConfig *c = &m->cfg;
    int hd = c->head_dim, kv_dim = c->n_kv_heads * hd, q_dim = c->n_heads * hd, group = c->n_heads / c->n_kv_heads;
    float scale = 1.0f / sqrtf((float)hd);
    int n_pairs = f->n * c->n_kv_heads;
    int n_threads = max_threads() < s->n_threads ? max_threads() : s->n_threads; // threads with a score buffer
    double macs = 0;
    for (int i = 0; i < f->n; i++) macs += 2.0 * (f->pos[i] + 1) * c->n_heads * hd;
    (void)n_threads, (void)macs; // unused without OpenMP
#pragma omp parallel for num_threads(n_threads)                                                                        \
    schedule(dynamic, 1) if (macs >= PARALLEL_MIN_MACS) // rows of a prefill differ in length
    for (int pair = 0; pair < n_pairs; pair++) {
        int i = pair / c->n_kv_heads, g = pair % c->n_kv_heads;
        size_t base = kv_base(s, c, layer, f->slot[i], g);
        const float *q = s->q + (size_t)i * q_dim + (size_t)g * group * hd;
        const float *self_k = replay ? s->k + (size_t)i * kv_dim + (size_t)g * hd : NULL;
        const float *self_v = replay ? s->v + (size_t)i * kv_dim + (size_t)g * hd : NULL;
        float *scores = s->scores + (size_t)thread_id() * group * s->max_seq_pad,
              *out = s->heads + (size_t)i * q_dim + (size_t)g * group * hd;
        attend(m, q, s->key_cache + base, s->value_cache + base, self_k, self_v, f->pos[i], hd, group, s->max_seq_pad,
               scale, scores, out);
    }
}

// ----------------------------------------------------------------------------
// The forward pass

// Checks a call against the run state before anything is computed.
static int forward_check(const Model *m, RunState *s, const Forward *f, int replay, Err *err) {
    const ModelConfig *c = &m->cfg;
    if (f->n > s->max_rows) return err_runtime(err, "model_forward: %d rows, run state holds %d", f->n, s->max_rows);
    if (f->first_layer < 0 || f->first_layer > c->n_layers)
        return err_runtime(err, "model_forward: first_layer %d out of range [0, %d]", f->first_layer, c->n_layers);
    if (f->first_layer > 0 && !f->x_in)
        return err_runtime(err, "model_forward: first_layer %d without x_in", f->first_layer);
    if (f->resid && !f->capture_row) return err_runtime(err, "model_forward: resid without capture_row");
    memcpy(s->slot_len_call, s->slot_len, (size_t)s->n_slots * sizeof *s->slot_len);
    for (int k = 0; k < s->n_slots; k++) s->slot_pos_call[k] = -1;
    for (int i = 0; i < f->n; i++) {
        int slot = f->slot[i], pos = f->pos[i];
        if (!f->x_in && (f->token[i] < 0 || f->token[i] >= c->vocab_size))
            return err_input(err, "token id %d out of range [0, %d)", f->token[i], c->vocab_size);
        if (slot < 0 || slot >= s->n_slots)
            return err_runtime(err, "model_forward: row %d: slot %d out of range [0, %d)", i, slot, s->n_slots);
        if (pos < 0 || pos >= s->max_seq)
            return err_input(err, "position %d out of range: the run state holds %d positions", pos, s->max_seq);
        if (pos > s->slot_len_call[slot])
            return err_runtime(err, "model_forward: row %d: slot %d position %d, but only positions 0..%d are cached",
                               i, slot, pos, s->slot_len_call[slot] - 1);
        if (!replay && pos <= s->slot_pos_call[slot]) // two rows would write one cache entry
            return err_runtime(err, "model_forward: row %d: slot %d position %d after position %d in the same call", i,
                               slot, pos, s->slot_pos_call[slot]);
        if (!replay) s->slot_len_call[slot] = pos + 1, s->slot_pos_call[slot] = pos;
        const AblationMask *mk = f->mask ? f->mask[i] : NULL;
        if (mk && mk->steer_add && (mk->steer_layer < 0 || mk->steer_layer > c->n_layers))
            return err_runtime(err, "model_forward: row %d: steer_layer %d out of range [0, %d]", i, mk->steer_layer,
                               c->n_layers);
        if (mk && mk->kind == ABLATE_MEAN) {
            int need_attn = 0, need_mlp = 0, need_head = 0;
            for (int l = 0; l < c->n_layers; l++) {
                need_attn |= mk->attn && mk->attn[l];
                need_mlp |= mk->mlp && mk->mlp[l];
                for (int h = 0; mk->head && h < c->n_heads; h++) need_head |= mk->head[l * c->n_heads + h];
            }
            if ((need_attn && !mk->attn_mean) || (need_mlp && !mk->mlp_mean) || (need_head && !mk->head_mean))
                return err_runtime(err, "model_forward: row %d: mean ablation without its mean vectors", i);
        }
    }
    return 0;
}

int model_forward(const Model *m, RunState *s, const Forward *f, Err *err) {
    const ModelConfig *c = &m->cfg;
    int replay = f->replay;
    if (f->n <= 0) return 0;
    if (forward_check(m, s, f, replay, err) < 0) return -1;
    if (!replay) memcpy(s->slot_len, s->slot_len_call, (size_t)s->n_slots * sizeof *s->slot_len);
    int n = f->n, D = c->hidden_size, L = c->n_layers, hd = c->head_dim, half = hd / 2, H = c->n_heads;
    int q_dim = H * hd, kv_dim = c->n_kv_heads * hd, inter = c->intermediate_size;
    float eps = c->rms_norm_eps;
#define CAPTURE(buf, per_row, i, l) ((buf) + ((size_t)f->capture_row[i] * (per_row) + (size_t)(l)) * D)
#define MASK(i) (f->mask ? f->mask[i] : NULL)
#define STEERS(mk) ((mk) && ((mk)->steer_add || (mk)->project_out))

    // Embeddings (or the residual a replay enters with) and each row's RoPE table.
    for (int i = 0; i < n; i++) {
        float *x = s->x + (size_t)i * D;
        if (f->x_in) memcpy(x, f->x_in + (size_t)i * D, (size_t)D * sizeof *x);
        else tensor_row_f32(&m->embed, f->token[i], x);
        if (f->first_layer == 0 && STEERS(MASK(i))) steer_residual(x, D, MASK(i), 0);
        if (f->resid && f->capture_row[i] >= 0)
            memcpy(CAPTURE(f->resid, L + 1, i, f->first_layer), x, (size_t)D * sizeof *x);
        for (int k = 0; k < half; k++) {
            float angle = (float)f->pos[i] * m->inv_freq[k];
            s->rope_cos[(size_t)i * half + k] = cosf(angle);
            s->rope_sin[(size_t)i * half + k] = sinf(angle);
        }
    }

    for (int l = f->first_layer; l < L; l++) {
        const LayerWeights *w = &m->layers[l];

        // Attention: x += o_proj(attention(rope(q), rope(k), v)) of the normed residual.
#pragma omp parallel for if (n >= PARALLEL_MIN_ROWS)
        for (int i = 0; i < n; i++) rmsnorm(s->xb + (size_t)i * D, s->x + (size_t)i * D, &w->attn_norm, D, eps);
        matmuls(m, s->xb, n, 3, (float *[]){s->q, s->k, s->v}, (const Tensor *[]){&w->wq, &w->wk, &w->wv},
                (const Tensor *[]){&w->bq, &w->bk, &w->bv});
#pragma omp parallel for if (n >= PARALLEL_MIN_ROWS)
        for (int i = 0; i < n; i++) {
            const float *cos_t = s->rope_cos + (size_t)i * half, *sin_t = s->rope_sin + (size_t)i * half;
            for (int h = 0; h < H; h++) {
                float *q = s->q + (size_t)i * q_dim + (size_t)h * hd;
                if (c->qk_norm) rmsnorm(q, q, &w->q_norm, hd, eps);
                rope(q, cos_t, sin_t, hd);
            }
            for (int h = 0; h < c->n_kv_heads; h++) {
                float *k = s->k + (size_t)i * kv_dim + (size_t)h * hd;
                if (c->qk_norm) rmsnorm(k, k, &w->k_norm, hd, eps);
                rope(k, cos_t, sin_t, hd);
            }
            for (int h = 0; h < c->n_kv_heads && !replay;
                 h++) { // every row's key/value is cached before any row attends
                int p = f->pos[i];
                size_t base = kv_base(s, c, l, f->slot[i], h);
                float *key = s->key_cache + base + (size_t)(p / KEY_BLOCK) * hd * KEY_BLOCK + p % KEY_BLOCK;
                for (int d = 0; d < hd; d++) key[(size_t)d * KEY_BLOCK] = s->k[(size_t)i * kv_dim + (size_t)h * hd + d];
                memcpy(s->value_cache + base + (size_t)p * hd, s->v + (size_t)i * kv_dim + (size_t)h * hd,
                       (size_t)hd * sizeof(float));
            }
        }
        attention(m, s, f, l, replay);
        for (int i = 0; i < n; i++) {
            const AblationMask *mk = MASK(i);
            for (int h = 0; mk && mk->head && h < H; h++)
                if (mk->head[l * H + h])
                    ablate(s->heads + (size_t)i * q_dim + (size_t)h * hd, hd, mk->kind,
                           mk->head_mean + (size_t)l * q_dim + (size_t)h * hd);
            if (f->head_out && f->capture_row && f->capture_row[i] >= 0)
                memcpy(f->head_out + ((size_t)f->capture_row[i] * L + l) * q_dim, s->heads + (size_t)i * q_dim,
                       (size_t)q_dim * sizeof(float));
        }
        matmul(m, s->block_out, s->heads, n, &w->wo, NULL);
        for (int i = 0; i < n; i++) {
            const AblationMask *mk = MASK(i);
            float *out = s->block_out + (size_t)i * D, *x = s->x + (size_t)i * D;
            if (mk && mk->attn && mk->attn[l]) ablate(out, D, mk->kind, mk->attn_mean + (size_t)l * D);
            if (f->attn_out && f->capture_row && f->capture_row[i] >= 0)
                memcpy(CAPTURE(f->attn_out, L, i, l), out, (size_t)D * sizeof *out);
            for (int d = 0; d < D; d++) x[d] += out[d];
            // the MLP reads a residual without the direction too
            if (mk && mk->project_out) steer_residual(x, D, mk, -1);
        }

        // MLP: x += down(silu(gate(h)) * up(h)), h the normed residual.
#pragma omp parallel for if (n >= PARALLEL_MIN_ROWS)
        for (int i = 0; i < n; i++) rmsnorm(s->xb + (size_t)i * D, s->x + (size_t)i * D, &w->mlp_norm, D, eps);
        matmuls(m, s->xb, n, 2, (float *[]){s->hb, s->hb2}, (const Tensor *[]){&w->w_gate, &w->w_up},
                (const Tensor *[]){NULL, NULL});
#pragma omp parallel for if (n >= PARALLEL_MIN_ROWS)
        for (int i = 0; i < n; i++) silu_gate(m, s->hb + (size_t)i * inter, s->hb2 + (size_t)i * inter, (size_t)inter);
        matmul(m, s->block_out, s->hb, n, &w->w_down, NULL);
        for (int i = 0; i < n; i++) {
            const AblationMask *mk = MASK(i);
            float *out = s->block_out + (size_t)i * D, *x = s->x + (size_t)i * D;
            if (mk && mk->mlp && mk->mlp[l]) ablate(out, D, mk->kind, mk->mlp_mean + (size_t)l * D);
            if (f->mlp_out && f->capture_row && f->capture_row[i] >= 0)
                memcpy(CAPTURE(f->mlp_out, L, i, l), out, (size_t)D * sizeof *out);
            for (int d = 0; d < D; d++) x[d] += out[d];
            if (STEERS(mk)) steer_residual(x, D, mk, l + 1);
            if (f->resid && f->capture_row[i] >= 0)
                memcpy(CAPTURE(f->resid, L + 1, i, l + 1), x, (size_t)D * sizeof *x);
        }
    }

    // Logits: final norm + lm_head of the rows that want them, LOGIT_ROWS_MAX at a time.
    if (f->logits && f->logits_row) {
        int i = 0, V = c->vocab_size;
        while (i < n) {
            int rows[LOGIT_ROWS_MAX], n_rows = 0;
            for (; i < n && n_rows < s->logit_rows; i++)
                if (f->logits_row[i] >= 0) {
                    rmsnorm(s->xb + (size_t)n_rows * D, s->x + (size_t)i * D, &m->final_norm, D, eps);
                    rows[n_rows++] = i;
                }
            if (!n_rows) break;
            matmul(m, s->logits, s->xb, n_rows, &m->lm_head, NULL);
            for (int r = 0; r < n_rows; r++)
                memcpy(f->logits + (size_t)f->logits_row[rows[r]] * V, s->logits + (size_t)r * V,
                       (size_t)V * sizeof(float));
        }
    }
#undef CAPTURE
#undef MASK
#undef STEERS
    return 0;
}

void model_final_logits_rows(const Model *m, const float *resid, int n, size_t stride, float *logits) {
    int D = m->cfg.hidden_size, rows = n < LOGIT_ROWS_MAX ? n : LOGIT_ROWS_MAX;
    float *normed = xmalloc((size_t)rows * D * sizeof *normed);
    for (int i0 = 0; i0 < n; i0 += rows) {
        int k = n - i0 < rows ? n - i0 : rows;
        for (int r = 0; r < k; r++)
            rmsnorm(normed + (size_t)r * D, resid + (size_t)(i0 + r) * stride, &m->final_norm, D, m->cfg.rms_norm_eps);
        matmul(m, logits + (size_t)i0 * m->cfg.vocab_size, normed, k, &m->lm_head, NULL);
    }
    free(normed);
}

void model_final_logits(const Model *m, const float *resid, float *logits) {
    model_final_logits_rows(m, resid, 1, 0, logits);
}

// ----------------------------------------------------------------------------
// Teacher forcing: known sequences through the model, one per KV slot, in forward calls
// of at most max_rows rows; outputs go straight to the caller's arrays at the reads.

int forcer_init(Forcer *f, const Model *m, int n_slots, int max_seq, int max_rows, Err *err) {
    memset(f, 0, sizeof *f);
    f->m = m;
    f->n_slots = n_slots;
    f->max_rows = max_rows;
    f->state = runstate_new(m, n_slots, max_seq, max_rows, err);
    if (!f->state) return -1;
    f->token = xmalloc((size_t)max_rows * sizeof *f->token);
    f->slot = xmalloc((size_t)max_rows * sizeof *f->slot);
    f->pos = xmalloc((size_t)max_rows * sizeof *f->pos);
    f->logits_row = xmalloc((size_t)max_rows * sizeof *f->logits_row);
    f->capture_row = xmalloc((size_t)max_rows * sizeof *f->capture_row);
    f->mask = xmalloc((size_t)max_rows * sizeof *f->mask);
    f->x_in = xmalloc((size_t)max_rows * m->cfg.hidden_size * sizeof *f->x_in);
    return 0;
}

void forcer_free(Forcer *f) {
    runstate_free(f->state);
    free(f->token);
    free(f->slot);
    free(f->pos);
    free(f->logits_row);
    free(f->capture_row);
    free(f->mask);
    free(f->x_in);
    memset(f, 0, sizeof *f);
}

int force_group(Forcer *f, const ForcedSeq *seqs, int n, const PassOut *out, Err *err) {
    const ModelConfig *mc = &f->m->cfg;
    int hidden = mc->hidden_size, n_layers = mc->n_layers;
    if (n > f->n_slots) return err_runtime(err, "force_group: %d sequences, the forcer has %d slots", n, f->n_slots);
    if (out->attn_sum && (out->resid || out->resid_all)) // all three are indexed by capture_row
        return err_runtime(err, "force_group: component sums and residuals in one pass");
    int want_outputs = out->attn || out->mlp; // component outputs at the reads
    if (want_outputs && (out->attn_sum || out->resid_all))
        return err_runtime(err, "force_group: component outputs at reads with sums or every position's residuals");
    int *fed = xmalloc((size_t)n * sizeof *fed), *read_base = xmalloc((size_t)n * sizeof *read_base);
    int *pos_base = xmalloc((size_t)n * sizeof *pos_base); // (n) first row of each sequence in resid_all / enter
    int total_reads = 0, total_pos = 0;
    for (int i = 0; i < n; i++) {
        fed[i] = seqs[i].start;
        read_base[i] = total_reads;
        total_reads += seqs[i].n_read;
        pos_base[i] = total_pos;
        total_pos += seqs[i].n_tokens;
    }
    int want_components = out->attn_sum != NULL;
    float *attn_buf = NULL, *mlp_buf = NULL; // (max_rows, n_layers, hidden) outputs to sum
    float *head_buf = NULL;                  // (max_rows, n_layers, q_dim) heads to sum
    size_t q_dim = (size_t)mc->n_heads * mc->head_dim;
    if (want_components) {
        attn_buf = xmalloc((size_t)f->max_rows * (size_t)n_layers * (size_t)hidden * sizeof(float));
        mlp_buf = xmalloc((size_t)f->max_rows * (size_t)n_layers * (size_t)hidden * sizeof(float));
        if (out->head_sum) head_buf = xmalloc((size_t)f->max_rows * (size_t)n_layers * q_dim * sizeof(float));
    }
    int rc = 0;
    for (;;) {
        int rows = 0;
        for (int i = 0; i < n && rows < f->max_rows; i++) {
            const ForcedSeq *q = &seqs[i];
            int r = 0;
            while (fed[i] < q->n_tokens && rows < f->max_rows) {
                int p = fed[i]++;
                f->token[rows] = q->tokens[p];
                f->slot[rows] = i;
                f->pos[rows] = p;
                f->mask[rows] = out->mask;
                while (r < q->n_read && q->read_pos[r] < p) r++;
                int read = r < q->n_read && q->read_pos[r] == p ? read_base[i] + r : -1; // global read index
                f->logits_row[rows] = read;
                f->capture_row[rows] = out->resid_all ? pos_base[i] + p : want_components ? rows : read;
                if (out->enter)
                    memcpy(f->x_in + (size_t)rows * hidden,
                           out->enter + ((size_t)(pos_base[i] + p) * (n_layers + 1) + out->first_layer) * hidden,
                           (size_t)hidden * sizeof *f->x_in);
                rows++;
            }
        }
        if (rows == 0) break;
        Forward fw = {.n = rows,
                      .token = f->token,
                      .slot = f->slot,
                      .pos = f->pos,
                      .mask = out->mask ? f->mask : NULL,
                      .first_layer = out->enter ? out->first_layer : 0,
                      .x_in = out->enter ? f->x_in : NULL,
                      .logits = out->logits,
                      .logits_row = out->logits ? f->logits_row : NULL,
                      .resid = out->resid_all ? out->resid_all : out->resid,
                      .attn_out = want_components ? attn_buf : out->attn,
                      .mlp_out = want_components ? mlp_buf : out->mlp,
                      .head_out = head_buf,
                      .capture_row =
                          out->resid || out->resid_all || want_components || want_outputs ? f->capture_row : NULL};
        if ((rc = model_forward(f->m, f->state, &fw, err))) break;
        for (int r = 0; r < rows && want_components; r++) {
            for (size_t k = 0; k < (size_t)n_layers * hidden; k++) {
                out->attn_sum[k] += attn_buf[(size_t)r * n_layers * hidden + k];
                out->mlp_sum[k] += mlp_buf[(size_t)r * n_layers * hidden + k];
            }
            for (size_t k = 0; head_buf && k < (size_t)n_layers * q_dim; k++)
                out->head_sum[k] += head_buf[(size_t)r * n_layers * q_dim + k];
            (*out->n_summed)++;
        }
    }
    free(fed);
    free(read_base);
    free(pos_base);
    free(attn_buf);
    free(mlp_buf);
    free(head_buf);
    return rc;
}

// log p(token) under logits (vocab), and the token's rank (0 = most likely).
double log_prob(const float *logits, int vocab, int token, int *rank) {
    double max = logits[0];
    for (int v = 1; v < vocab; v++)
        if (logits[v] > max) max = logits[v];
    double sum = 0;
    int above = 0;
    for (int v = 0; v < vocab; v++) {
        sum += exp((double)logits[v] - max);
        above += logits[v] > logits[token];
    }
    if (rank) *rank = above;
    return (double)logits[token] - max - log(sum);
}

// ----------------------------------------------------------------------------
// The gradient pass (attribution patching)
//
// metric = log p(onset | logits at P) of one teacher-forced sequence, P = pred_pos, and its
// gradient with respect to activations, never weights. Positions after P cannot change the
// metric, so only rows 0..P exist here. The forward keeps the residual stream at every layer
// boundary, and each layer's internals (LayerActs) while they fit the state's keep budget; the
// backward walks the layers down, recomputes the internals of a layer it did not keep from
// the residual entering it with the forward's own kernels (so they are bitwise the forward's:
// kept or recomputed, the result is the same), and reads them in reverse: final norm and
// lm_head; then per layer the MLP (down_proj, SwiGLU, gate/up_proj, RMSNorm) and attention
// (o_proj, softmax over positions, GQA, RoPE, q/k norms, q/k/v_proj, RMSNorm). The residual
// add passes its gradient through, so d/d(MLP output) of layer l is d/d(residual after block
// l) and d/d(attention output) is d/d(residual between the two blocks). Each gradient element
// is summed in an order fixed by the shapes, by one thread: the same bits for any thread count.
//
// Memory (model_gradient_bytes), N = max_tokens, floats: the residual stream N (L+1) D;
// one layer's internals and gradients N (3 D + 5 q_dim + 8 kv_dim + head_dim); one head's
// probabilities and score gradients 2 x N (N+1) / 2 (the only N x N term: one head at a
// time); MLP and matmul scratch for GRAD_ROWS rows; the logits of one position (no N x vocab
// buffer); plus the keep budget. R1-Distill-Qwen-1.5B, N = 4096: 1.05 GB + the budget.

#define GRAD_ROWS 128     // rows per matmul call and per MLP chunk (scratch: GRAD_ROWS x intermediate)
#define GRAD_COLS 64      // transposed matmul: output columns per block, one thread's unit of work
#define GRAD_K_CHUNK 128  // transposed matmul: weight rows per pass over a block (held in L1 while all rows pass)
#define GRAD_TILE_ROWS 6  // SIMD transposed matmul: rows per tile (AVX-512: 6 x 4 accumulators, AVX2: 6 x 2)
#define GRAD_KEY_BLOCK 16 // attention backward: key positions per block, one thread's unit of work
#define GRAD_MAX_BUFS 32  // buffers of a GradState

// One layer's internals over positions 0..n-1, as the forward computed them.
typedef struct {
    float *x_mid;       // (n, hidden) residual between the attention and the MLP
    float *attn_out;    // (n, hidden) attention output
    float *q_pre;       // (n, q_dim) query projections (bias added), before q_norm and RoPE
    float *q;           // (n, q_dim) queries after RoPE
    float *heads;       // (n, q_dim) each head's output before o_proj
    float *k_pre;       // (n, kv_dim) key projections before k_norm and RoPE
    float *k, *v;       // (n, kv_dim) keys after RoPE, values
    float *gate, *up;   // (rows, intermediate) gate and up projections, then their gradients
    float *mlp_out;     // (rows, hidden) MLP output
    int kept;           // 1: kept from the forward (gate, up, mlp_out: n rows); 0: recomputed (GRAD_ROWS rows, a chunk)
} LayerActs;

struct GradState {
    int max_tokens, max_pad; // positions; max_pad rounds up to two key blocks, as the attention kernels read them
    int n_threads;           // threads with their own score buffer
    size_t keep_floats;      // the keep budget
    float *resid;       // (max_tokens, n_layers + 1, hidden) residual stream at every layer boundary
    LayerActs work;     // a layer that is recomputed: max_tokens rows, its MLP GRAD_ROWS rows
    float *keep;        // (keep_floats) kept layers' internals, laid out per call (grad_keep)
    LayerActs *kept;    // (n_layers) this call's kept layers; .kept 0 = recomputed
    float *dx;          // (max_tokens, hidden) d metric / d the residual at the current point of the backward
    float *dheads;      // (max_tokens, q_dim) d metric / d heads
    float *dq;          // (max_tokens, q_dim) d metric / d q, then d q_pre
    float *dk, *dv;     // (max_tokens, kv_dim) d metric / d keys (then d k_pre) and values
    float *key_cache;   // (n_kv_heads, max_pad / KEY_BLOCK, head_dim, KEY_BLOCK) keys as the attention kernels read
    float *value_cache; // (n_kv_heads, max_pad, head_dim)
    float *value_blocks; // (n_kv_heads, max_pad / KEY_BLOCK, head_dim, KEY_BLOCK) values as the keys (SIMD backward)
    float *rope_cos;    // (max_tokens, head_dim / 2) of each position
    float *rope_sin;    // (max_tokens, head_dim / 2)
    float *probs;       // (max_tokens (max_tokens + 1) / 2) one head's attention probabilities, row t at t (t + 1) / 2
    float *dscores;     // (max_tokens (max_tokens + 1) / 2) d metric / d that head's scores (scale applied)
    float *scores;      // (n_threads, n_heads / n_kv_heads, max_pad) the attention kernels' score buffers
    float *row_scratch; // (n_threads, 2, max_pad) SIMD backward: one row's scores and d metric / d probabilities
    float *xb;          // (GRAD_ROWS, hidden) a normed block input, or d metric / d it
    float *act;         // (GRAD_ROWS, intermediate) silu(gate) * up, then its gradient
    float *logits;      // (vocab) logits at pred_pos, then d metric / d them
    float *owned[GRAD_MAX_BUFS]; // (n_owned) every buffer above, for gradstate_free
    int n_owned;
    size_t bytes;       // everything above
};

// Floats of one kept layer of n positions.
static size_t grad_layer_floats(const ModelConfig *c, int n) {
    size_t D = (size_t)c->hidden_size, q_dim = (size_t)c->n_heads * c->head_dim,
           kv_dim = (size_t)c->n_kv_heads * c->head_dim;
    return (size_t)n * (3 * D + 3 * q_dim + 3 * kv_dim + 2 * (size_t)c->intermediate_size);
}

// Every buffer of a GradState and its size in floats: gradstate_new allocates this table,
// model_gradient_bytes sums it. Returns the number of buffers.
static int grad_layout(const Model *m, int max_tokens, size_t keep_floats, int n_threads, GradState *gs, float **bufs[],
                       size_t sizes[]) {
    const ModelConfig *c = &m->cfg;
    size_t N = (size_t)max_tokens, D = (size_t)c->hidden_size, hd = (size_t)c->head_dim,
           q_dim = (size_t)c->n_heads * hd;
    size_t kv_dim = (size_t)c->n_kv_heads * hd, inter = (size_t)c->intermediate_size, R = GRAD_ROWS;
    size_t pad = (N + 2 * KEY_BLOCK - 1) / (2 * KEY_BLOCK) * (2 * KEY_BLOCK), tri = N * (N + 1) / 2;
    int k = 0;
#define GRAD_BUF(field, count) (bufs[k] = &gs->field, sizes[k++] = (count))
    GRAD_BUF(resid, N * (size_t)(c->n_layers + 1) * D);
    GRAD_BUF(work.x_mid, N * D), GRAD_BUF(work.attn_out, N * D), GRAD_BUF(work.q_pre, N * q_dim),
        GRAD_BUF(work.q, N * q_dim);
    GRAD_BUF(work.heads, N * q_dim), GRAD_BUF(work.k_pre, N * kv_dim), GRAD_BUF(work.k, N * kv_dim),
        GRAD_BUF(work.v, N * kv_dim);
    GRAD_BUF(work.gate, R * inter), GRAD_BUF(work.up, R * inter), GRAD_BUF(work.mlp_out, R * D);
    GRAD_BUF(keep, keep_floats);
    GRAD_BUF(dx, N * D), GRAD_BUF(dheads, N * q_dim), GRAD_BUF(dq, N * q_dim), GRAD_BUF(dk, N * kv_dim),
        GRAD_BUF(dv, N * kv_dim);
    GRAD_BUF(key_cache, pad * kv_dim), GRAD_BUF(value_cache, pad * kv_dim), GRAD_BUF(value_blocks, pad * kv_dim);
    GRAD_BUF(rope_cos, N * (hd / 2)), GRAD_BUF(rope_sin, N * (hd / 2));
    GRAD_BUF(probs, tri), GRAD_BUF(dscores, tri);
    GRAD_BUF(scores, (size_t)n_threads * (size_t)(c->n_heads / c->n_kv_heads) * pad);
    GRAD_BUF(row_scratch, (size_t)n_threads * 2 * pad);
    GRAD_BUF(xb, R * D), GRAD_BUF(act, R * inter);
    GRAD_BUF(logits, (size_t)c->vocab_size);
#undef GRAD_BUF
    return k;
}

// The keep budget in floats: keep_bytes, but no more than every layer of max_tokens positions needs.
static size_t grad_keep_floats(const Model *m, int max_tokens, size_t keep_bytes) {
    size_t all = (size_t)m->cfg.n_layers * grad_layer_floats(&m->cfg, max_tokens);
    return keep_bytes / sizeof(float) < all ? keep_bytes / sizeof(float) : all;
}

size_t model_gradient_bytes(const Model *m, int max_tokens, size_t keep_bytes) {
    GradState dummy;
    float **bufs[GRAD_MAX_BUFS];
    size_t sizes[GRAD_MAX_BUFS], bytes = sizeof(GradState) + (size_t)m->cfg.n_layers * sizeof(LayerActs);
    int n = grad_layout(m, max_tokens, grad_keep_floats(m, max_tokens, keep_bytes), max_threads(), &dummy, bufs, sizes);
    for (int i = 0; i < n; i++) bytes += sizes[i] * sizeof(float);
    return bytes;
}

GradState *gradstate_new(const Model *m, int max_tokens, size_t keep_bytes, Err *err) {
    if (max_tokens < 1) return err_runtime(err, "gradstate: max_tokens must be positive"), NULL;
    GradState *gs = xcalloc(1, sizeof *gs);
    gs->max_tokens = max_tokens;
    gs->max_pad = (max_tokens + 2 * KEY_BLOCK - 1) / (2 * KEY_BLOCK) * (2 * KEY_BLOCK);
    gs->n_threads = max_threads();
    gs->keep_floats = grad_keep_floats(m, max_tokens, keep_bytes);
    gs->kept = xcalloc((size_t)m->cfg.n_layers, sizeof *gs->kept);
    gs->bytes = sizeof *gs + (size_t)m->cfg.n_layers * sizeof *gs->kept;
    float **bufs[GRAD_MAX_BUFS];
    size_t sizes[GRAD_MAX_BUFS];
    int n = grad_layout(m, max_tokens, gs->keep_floats, gs->n_threads, gs, bufs, sizes), failed = 0;
    for (int i = 0; i < n; i++) {
        // calloc: the attention kernels read key blocks past the last position
        *bufs[i] = calloc(sizes[i] ? sizes[i] : 1, sizeof(float));
        failed |= !*bufs[i];
        gs->owned[gs->n_owned++] = *bufs[i];
        gs->bytes += sizes[i] * sizeof(float);
    }
    if (failed) {
        size_t bytes = gs->bytes;
        gradstate_free(gs);
        return err_runtime(err, "gradstate: cannot allocate %zu bytes for %d positions", bytes, max_tokens), NULL;
    }
    return gs;
}

void gradstate_free(GradState *gs) {
    if (!gs) return;
    for (int i = 0; i < gs->n_owned; i++) free(gs->owned[i]);
    free(gs->kept);
    free(gs);
}

// Layers (the last ones) whose internals for n positions fit keep_floats.
static int grad_layers_fit(const ModelConfig *c, size_t keep_floats, int n) {
    size_t per_layer = grad_layer_floats(c, n), fit = per_layer ? keep_floats / per_layer : 0;
    return fit < (size_t)c->n_layers ? (int)fit : c->n_layers;
}

int model_gradient_layers_kept(const Model *m, int n, size_t keep_bytes) {
    return grad_layers_fit(&m->cfg, grad_keep_floats(m, n, keep_bytes), n);
}

// Lays out this call's kept layers in the keep budget, n positions each, the top layers first
// (the backward reaches them first); returns how many fit.
static int grad_keep(const Model *m, GradState *gs, int n) {
    const ModelConfig *c = &m->cfg;
    size_t D = (size_t)c->hidden_size, q_dim = (size_t)c->n_heads * c->head_dim,
           kv_dim = (size_t)c->n_kv_heads * c->head_dim;
    size_t N = (size_t)n, inter = (size_t)c->intermediate_size;
    int n_kept = grad_layers_fit(c, gs->keep_floats, n);
    memset(gs->kept, 0, (size_t)c->n_layers * sizeof *gs->kept);
    float *p = gs->keep;
    for (int i = 0; i < n_kept; i++) {
        LayerActs *a = &gs->kept[c->n_layers - 1 - i];
        a->x_mid = p, p += N * D;
        a->attn_out = p, p += N * D;
        a->q_pre = p, p += N * q_dim;
        a->q = p, p += N * q_dim;
        a->heads = p, p += N * q_dim;
        a->k_pre = p, p += N * kv_dim;
        a->k = p, p += N * kv_dim;
        a->v = p, p += N * kv_dim;
        a->gate = p, p += N * inter;
        a->up = p, p += N * inter;
        a->mlp_out = p, p += N * D;
        a->kept = 1;
    }
    return n_kept;
}

size_t gradstate_bytes(const GradState *gs) { return gs->bytes; }

// --- the transposes of the blocks

// The transpose of rmsnorm at x: dx (+)= r w dy - x r^3 / n sum_i w_i dy_i x_i, r as rmsnorm computes it.
// dx may be dy (then accumulate is 0).
static void rmsnorm_backward(float *dx, const float *x, const Tensor *weight, const float *dy, int n, float eps,
                             int accumulate) {
    double ss = 0, dot = 0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float r = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++) dot += (double)tensor_at(weight, (size_t)i) * dy[i] * x[i];
    float k = (float)(dot * r * r * r / n);
    for (int i = 0; i < n; i++) {
        float v = r * tensor_at(weight, (size_t)i) * dy[i] - x[i] * k;
        dx[i] = accumulate ? dx[i] + v : v;
    }
}

// The transpose of rope: the gradient of each pair rotated back by the same angle.
static void rope_backward(float *g, const float *cos_t, const float *sin_t, int head_dim) {
    int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        float g1 = g[i], g2 = g[i + half];
        g[i] = g1 * cos_t[i] + g2 * sin_t[i];
        g[i + half] = g2 * cos_t[i] - g1 * sin_t[i];
    }
}

// y += a x over n values.
static void axpy(float *y, float a, const float *x, int n) {
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

// Portable transposed matmul of output columns c0..c1: weight rows converted GRAD_K_CHUNK at
// a time; each output element sums its products in weight-row order.
static void matmul_t_cols_portable(float *out, const float *dy, int n, const Tensor *w, int c0, int c1,
                                   int accumulate) {
    int d_out = w->rows, d_in = w->cols, nc = c1 - c0;
    float wc[GRAD_K_CHUNK][GRAD_COLS]; // weight rows o0.., columns c0..c1 as F32, zero past c1
    for (int o0 = 0; o0 < d_out; o0 += GRAD_K_CHUNK) {
        int no = d_out - o0 < GRAD_K_CHUNK ? d_out - o0 : GRAD_K_CHUNK;
        for (int k = 0; k < no; k++) {
            tensor_span_f32(w, o0 + k, c0, nc, wc[k]);
            for (int j = nc; j < GRAD_COLS; j++) wc[k][j] = 0;
        }
        for (int r = 0; r < n; r++) {
            float acc[GRAD_COLS], *o = out + (size_t)r * d_in + c0;
            const float *g = dy + (size_t)r * d_out + o0;
            for (int j = 0; j < GRAD_COLS; j++) acc[j] = (o0 || accumulate) && j < nc ? o[j] : 0.0f;
            for (int k = 0; k < no; k++)
                for (int j = 0; j < GRAD_COLS; j++) acc[j] += g[k] * wc[k][j];
            memcpy(o, acc, (size_t)nc * sizeof *o);
        }
    }
}

#ifdef HAVE_AVX512
// 64 columns of weight row data + at (fewer when left < 64, zero past it) as four F32 vectors. BF16
// comes as the forward's staging lays it out, which a shift and a mask do in place: vector 2j holds
// the even columns of the j-th 32, vector 2j + 1 the odd ones; F16 and F32 come in column order.
AVX512 static INLINE void w_cols_avx512(DType dtype, const void *w, size_t at, int left, __m512 v[4]) {
    if (dtype == DT_BF16) {
        UNROLL for (int j = 0; j < 2; j++) {
            int l = left - 32 * j;
            __mmask32 m = l >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << (l > 0 ? l : 0)) - 1);
            __m512i raw = _mm512_maskz_loadu_epi16(m, (const uint16_t *)w + at + 32 * j);
            v[2 * j] = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
            v[2 * j + 1] = _mm512_castsi512_ps(_mm512_and_si512(raw, _mm512_set1_epi32((int)0xffff0000u)));
        }
        return;
    }
    UNROLL for (int j = 0; j < 4; j++) {
        __mmask16 m = mask16(left - 16 * j);
        if (dtype == DT_F32) v[j] = _mm512_maskz_loadu_ps(m, (const float *)w + at + 16 * j);
        else v[j] = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)w + at + 16 * j));
    }
}

// 64 output values from out (fewer when left < 64) in w_cols_avx512's layout for dtype, and back.
AVX512 static INLINE void out_load_avx512(DType dtype, const float *out, int left, __m512 v[4]) {
    UNROLL for (int j = 0; j < 4; j++) v[j] = _mm512_maskz_loadu_ps(mask16(left - 16 * j), out + 16 * j);
    if (dtype != DT_BF16) return;
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30),
                  odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    UNROLL for (int j = 0; j < 2; j++) {
        __m512 lo = v[2 * j], hi = v[2 * j + 1];
        v[2 * j] = _mm512_permutex2var_ps(lo, even, hi);
        v[2 * j + 1] = _mm512_permutex2var_ps(lo, odd, hi);
    }
}

AVX512 static INLINE void out_store_avx512(DType dtype, float *out, int left, __m512 v[4]) {
    if (dtype == DT_BF16) {
        const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23),
                      hi = _mm512_add_epi32(lo, _mm512_set1_epi32(8));
        UNROLL for (int j = 0; j < 2; j++) {
            __m512 e = v[2 * j], o = v[2 * j + 1];
            v[2 * j] = _mm512_permutex2var_ps(e, lo, o);
            v[2 * j + 1] = _mm512_permutex2var_ps(e, hi, o);
        }
    }
    UNROLL for (int j = 0; j < 4; j++) _mm512_mask_storeu_ps(out + 16 * j, mask16(left - 16 * j), v[j]);
}

// R rows (dy rows ld_dy apart) times weight rows o0..o1 into 64 output columns from c0: one FMA
// per weight row and lane, in row order, continuing from out when load.
AVX512 static INLINE void tile_t_avx512(DType dtype, int R, const float *dy, size_t ld_dy, const void *w, size_t d_in,
                                        int c0, int left, int o0, int o1, int load, float *out, size_t ldo) {
    __m512 acc[GRAD_TILE_ROWS][4];
    UNROLL for (int r = 0; r < R; r++) {
        if (load) out_load_avx512(dtype, out + (size_t)r * ldo + c0, left, acc[r]);
        else UNROLL for (int j = 0; j < 4; j++) acc[r][j] = _mm512_setzero_ps();
    }
    for (int o = o0; o < o1; o++) {
        __m512 wv[4];
        w_cols_avx512(dtype, w, (size_t)o * d_in + (size_t)c0, left, wv);
        UNROLL for (int r = 0; r < R; r++) {
            __m512 a = _mm512_set1_ps(dy[(size_t)r * ld_dy + o]);
            UNROLL for (int j = 0; j < 4; j++) acc[r][j] = _mm512_fmadd_ps(a, wv[j], acc[r][j]);
        }
    }
    UNROLL for (int r = 0; r < R; r++) out_store_avx512(dtype, out + (size_t)r * ldo + c0, left, acc[r]);
}

#define TILE_T(dtype, R)                                                                                               \
    tile_t_avx512(dtype, R, g, (size_t)d_out, w->data, (size_t)d_in, c0, c1 - c0, o0, o1, load, o, (size_t)d_in)
#define TILES_T(dtype)                                                                                          \
    switch (R) { /* constant row counts keep the accumulators in registers */                                 \
    case 6: TILE_T(dtype, 6); break; case 5: TILE_T(dtype, 5); break; case 4: TILE_T(dtype, 4); break;        \
    case 3: TILE_T(dtype, 3); break; case 2: TILE_T(dtype, 2); break; default: TILE_T(dtype, 1); break;       \
    }

// AVX-512 transposed matmul of output columns c0..c1 (at most GRAD_COLS): GRAD_K_CHUNK weight rows
// of the block stay in L1 while every tile of rows passes.
AVX512 static void matmul_t_cols_avx512(float *out, const float *dy, int n, const Tensor *w, int c0, int c1,
                                        int accumulate) {
    int d_out = w->rows, d_in = w->cols;
    for (int o0 = 0; o0 < d_out; o0 += GRAD_K_CHUNK) {
        int o1 = d_out - o0 < GRAD_K_CHUNK ? d_out : o0 + GRAD_K_CHUNK, load = o0 > 0 || accumulate;
        for (int r0 = 0; r0 < n; r0 += GRAD_TILE_ROWS) {
            int R = n - r0 < GRAD_TILE_ROWS ? n - r0 : GRAD_TILE_ROWS;
            const float *g = dy + (size_t)r0 * d_out;
            float *o = out + (size_t)r0 * d_in;
            if (w->dtype == DT_BF16) TILES_T(DT_BF16)
            else if (w->dtype == DT_F16) TILES_T(DT_F16)
            else TILES_T(DT_F32)
        }
    }
}
#undef TILES_T
#undef TILE_T

// The AVX-512 backward kernels' arithmetic in vectors of 8: each output, score and sum takes
// the same FMAs in the same order (the 16-lane sums kept as two vectors and summed by the same
// tree), so an attribution gives the same bits on a CPU with AVX2 alone.

// 8 floats from p, or lanes 0..left-1 of them (the rest zero) when partial; and back.
AVX2 static INLINE __m256 load8_avx2(const float *p, int partial, int left) {
    return partial ? _mm256_maskload_ps(p, mask8(left)) : _mm256_loadu_ps(p);
}

AVX2 static INLINE void store8_avx2(float *p, int partial, int left, __m256 v) {
    if (partial) _mm256_maskstore_ps(p, mask8(left), v); // vmaskmovps stores are slow on AMD: only where needed
    else _mm256_storeu_ps(p, v);
}

// 16 columns of weight row data + at (fewer when left < 16, zero past it) as two F32 vectors in column order.
AVX2 static INLINE void w_cols_avx2(DType dtype, const void *w, size_t at, int left, __m256 v[2]) {
    char row[16 * sizeof(float)];
    const char *src = (const char *)w + at * dtype_bytes(dtype);
    if (left < 16) { // a block's last columns: staged through a zeroed row so no load runs past the tensor
        memset(row, 0, sizeof row);
        src = memcpy(row, src, (size_t)left * dtype_bytes(dtype));
    }
    UNROLL for (int j = 0; j < 2; j++) {
        if (dtype == DT_F32) {
            v[j] = _mm256_loadu_ps((const float *)src + 8 * j);
        } else {
            __m128i raw = _mm_loadu_si128((const __m128i *)((const uint16_t *)src + 8 * j));
            v[j] = dtype == DT_F16 ? _mm256_cvtph_ps(raw)
                                   : _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
        }
    }
}

// tile_t_avx512 for 16 output columns (left of them real) from wc, weight rows o0.. of those
// columns as F32, 16 to a row: R rows x 2 accumulators of 8, one FMA per weight row and lane.
AVX2 static INLINE void tile_t_avx2(int R, const float *dy, size_t ld_dy, const float *wc, int no, int left, int load,
                                    float *out, size_t ldo) {
    __m256 acc[GRAD_TILE_ROWS][2];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int j = 0; j < 2; j++) acc[r][j] =
        !load ? _mm256_setzero_ps() : load8_avx2(out + (size_t)r * ldo + 8 * j, left < 16, left - 8 * j);
    for (int k = 0; k < no; k++) {
        __m256 w0 = _mm256_load_ps(wc + 16 * k), w1 = _mm256_load_ps(wc + 16 * k + 8);
        UNROLL for (int r = 0; r < R; r++) {
            __m256 a = _mm256_broadcast_ss(dy + (size_t)r * ld_dy + k);
            acc[r][0] = _mm256_fmadd_ps(a, w0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(a, w1, acc[r][1]);
        }
    }
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int j = 0; j < 2; j++)
        store8_avx2(out + (size_t)r * ldo + 8 * j, left < 16, left - 8 * j, acc[r][j]);
}

// matmul_t_cols_avx512 in passes of 16 columns: each pass widens its GRAD_K_CHUNK weight rows
// into a contiguous F32 block once, which every tile of rows then reads from L1 (the rows of
// the stored weight lie a power-of-2 multiple apart and would share a few sets of L1).
AVX2 static void matmul_t_cols_avx2(float *out, const float *dy, int n, const Tensor *w, int c0, int c1,
                                    int accumulate) {
    int d_out = w->rows, d_in = w->cols;
    size_t eb = dtype_bytes(w->dtype);
    _Alignas(32) float wc[GRAD_K_CHUNK * 16];
    for (int o0 = 0; o0 < d_out; o0 += GRAD_K_CHUNK) {
        int no = d_out - o0 < GRAD_K_CHUNK ? d_out - o0 : GRAD_K_CHUNK, load = o0 > 0 || accumulate;
        for (int c = c0; c < c1; c += 16) {
            for (int k = 0; k < no; k++) {
                __m256 v[2];
                if (o0 + GRAD_K_CHUNK + k < d_out) // the next chunk's rows, which no prefetcher sees coming
                    _mm_prefetch((const char *)w->data + ((size_t)(o0 + GRAD_K_CHUNK + k) * d_in + (size_t)c) * eb,
                                 _MM_HINT_T1);
                w_cols_avx2(w->dtype, w->data, (size_t)(o0 + k) * d_in + (size_t)c, c1 - c, v);
                _mm256_store_ps(wc + 16 * k, v[0]), _mm256_store_ps(wc + 16 * k + 8, v[1]);
            }
            for (int r0 = 0; r0 < n; r0 += GRAD_TILE_ROWS) {
                const float *g = dy + (size_t)r0 * d_out + o0;
                float *o = out + (size_t)r0 * d_in + c;
                switch (n - r0 < GRAD_TILE_ROWS ? n - r0 : GRAD_TILE_ROWS) { // constants keep acc in registers
                case 6: tile_t_avx2(6, g, (size_t)d_out, wc, no, c1 - c, load, o, (size_t)d_in); break;
                case 5: tile_t_avx2(5, g, (size_t)d_out, wc, no, c1 - c, load, o, (size_t)d_in); break;
                case 4: tile_t_avx2(4, g, (size_t)d_out, wc, no, c1 - c, load, o, (size_t)d_in); break;
                case 3: tile_t_avx2(3, g, (size_t)d_out, wc, no, c1 - c, load, o, (size_t)d_in); break;
                case 2: tile_t_avx2(2, g, (size_t)d_out, wc, no, c1 - c, load, o, (size_t)d_in); break;
                default: tile_t_avx2(1, g, (size_t)d_out, wc, no, c1 - c, load, o, (size_t)d_in); break;
                }
            }
        }
    }
}
#endif

// out (n, d_in) = [out +] dy (n, d_out) · W (d_out, d_in), W in its stored dtype: the transpose of
// matmul (a bias passes no gradient on). Threads take blocks of GRAD_COLS output columns; each
// output element is summed over the weight rows in order, whatever the blocking.
static void matmul_t(const Model *m, float *out, const float *dy, int n, const Tensor *w, int accumulate) {
    int d_in = w->cols, n_blocks = (d_in + GRAD_COLS - 1) / GRAD_COLS;
    double macs = (double)n * w->rows * d_in;
    (void)macs; // unused without OpenMP
    int n_threads = max_threads();
#pragma omp parallel for schedule(dynamic, 1) if (macs >= PARALLEL_MIN_MACS)
    for (int v = 0; v < n_blocks; v++) {
        int b = spread_unit(v, n_blocks, n_threads);
        int c0 = b * GRAD_COLS, c1 = d_in - c0 < GRAD_COLS ? d_in : c0 + GRAD_COLS;
#ifdef HAVE_AVX512
        if (m->simd == SIMD_AVX512) matmul_t_cols_avx512(out, dy, n, w, c0, c1, accumulate);
        else if (m->simd == SIMD_AVX2) matmul_t_cols_avx2(out, dy, n, w, c0, c1, accumulate);
        else
#endif
            matmul_t_cols_portable(out, dy, n, w, c0, c1, accumulate);
    }
    (void)m;
}

// acc + one component's attribution over rows 0..n-1 of dim values (g and a rows g_stride and
// a_stride floats apart): -g . a (zero ablation), or g . (mean - a); rows then values in order.
static double score_rows(double acc, const float *g, size_t g_stride, const float *a, size_t a_stride, int n, int dim,
                         const float *mean) {
    for (int t = 0; t < n; t++)
        for (int d = 0; d < dim; d++) {
            double ga = (double)g[(size_t)t * g_stride + d], av = (double)a[(size_t)t * a_stride + d];
            acc += mean ? ga * ((double)mean[d] - av) : -ga * av;
        }
    return acc;
}

// Copies rows 0..n-1 of dim values from src (rows src_stride apart) to dst (dst_stride apart).
static void copy_rows(float *dst, size_t dst_stride, const float *src, size_t src_stride, int n, int dim) {
    for (int t = 0; t < n; t++)
        memcpy(dst + (size_t)t * dst_stride, src + (size_t)t * src_stride, (size_t)dim * sizeof *dst);
}

// --- one layer, forward (kept or recomputed) and backward

static float *grad_resid_at(const Model *m, const GradState *gs, int t, int l) {
    return gs->resid + ((size_t)t * (m->cfg.n_layers + 1) + (size_t)l) * m->cfg.hidden_size;
}

// Layer l's attention over positions 0..n-1 into a, as model_forward computes it: q_pre, k_pre,
// q, k, v, heads, attn_out, and x_mid = residual + attn_out.
static void grad_attention_forward(const Model *m, GradState *gs, LayerActs *a, int l, int n) {
    const ModelConfig *c = &m->cfg;
    const LayerWeights *w = &m->layers[l];
    int D = c->hidden_size, hd = c->head_dim, half = hd / 2, H = c->n_heads, KV = c->n_kv_heads;
    int q_dim = H * hd, kv_dim = KV * hd, group = H / KV;
    float eps = c->rms_norm_eps, scale = 1.0f / sqrtf((float)hd);
    for (int r0 = 0; r0 < n; r0 += GRAD_ROWS) {
        int k = n - r0 < GRAD_ROWS ? n - r0 : GRAD_ROWS;
        for (int i = 0; i < k; i++)
            rmsnorm(gs->xb + (size_t)i * D, grad_resid_at(m, gs, r0 + i, l), &w->attn_norm, D, eps);
        float *outs[3] = {a->q_pre + (size_t)r0 * q_dim, a->k_pre + (size_t)r0 * kv_dim, a->v + (size_t)r0 * kv_dim};
        matmuls(m, gs->xb, k, 3, outs, (const Tensor *[]){&w->wq, &w->wk, &w->wv},
                (const Tensor *[]){&w->bq, &w->bk, &w->bv});
    }
    memcpy(a->q, a->q_pre, (size_t)n * q_dim * sizeof *a->q);
    memcpy(a->k, a->k_pre, (size_t)n * kv_dim * sizeof *a->k);
    for (int t = 0; t < n; t++) {
        const float *cos_t = gs->rope_cos + (size_t)t * half, *sin_t = gs->rope_sin + (size_t)t * half;
        for (int h = 0; h < H; h++) {
            float *q = a->q + (size_t)t * q_dim + (size_t)h * hd;
            if (c->qk_norm) rmsnorm(q, q, &w->q_norm, hd, eps);
            rope(q, cos_t, sin_t, hd);
        }
        for (int h = 0; h < KV; h++) {
            float *k = a->k + (size_t)t * kv_dim + (size_t)h * hd;
            if (c->qk_norm) rmsnorm(k, k, &w->k_norm, hd, eps);
            rope(k, cos_t, sin_t, hd);
            float *key =
                gs->key_cache + (size_t)h * gs->max_pad * hd + (size_t)(t / KEY_BLOCK) * hd * KEY_BLOCK + t % KEY_BLOCK;
            for (int d = 0; d < hd; d++) key[(size_t)d * KEY_BLOCK] = k[d];
            memcpy(gs->value_cache + ((size_t)h * gs->max_pad + (size_t)t) * hd,
                   a->v + (size_t)t * kv_dim + (size_t)h * hd, (size_t)hd * sizeof(float));
        }
    }
    int n_pairs = n * KV, n_threads = max_threads() < gs->n_threads ? max_threads() : gs->n_threads;
    double macs = (double)n * (n + 1) * H * hd;
    (void)n_threads, (void)macs, (void)scale; // unused without OpenMP
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 1) if (macs >= PARALLEL_MIN_MACS)
    for (int pair = 0; pair < n_pairs; pair++) {
        int t = pair / KV, g = pair % KV;
        const float *q = a->q + (size_t)t * q_dim + (size_t)g * group * hd;
        const float *keys = gs->key_cache + (size_t)g * gs->max_pad * hd,
                    *values = gs->value_cache + (size_t)g * gs->max_pad * hd;
        float *scores = gs->scores + (size_t)thread_id() * group * gs->max_pad,
              *out = a->heads + (size_t)t * q_dim + (size_t)g * group * hd;
        attend(m, q, keys, values, NULL, NULL, t, hd, group, gs->max_pad, scale, scores, out);
    }
    matmul(m, a->attn_out, a->heads, n, &w->wo, NULL);
    for (int t = 0; t < n; t++) {
        const float *x = grad_resid_at(m, gs, t, l), *out = a->attn_out + (size_t)t * D;
        float *mid = a->x_mid + (size_t)t * D;
        for (int d = 0; d < D; d++) mid[d] = x[d] + out[d];
    }
}

// Row of a's MLP buffers that holds position r0: r0 when the layer is kept, 0 (a chunk) when not.
static size_t mlp_base(const LayerActs *a, int r0) { return a->kept ? (size_t)r0 : 0; }

// Layer l's MLP of rows r0..r0+k-1 (k <= GRAD_ROWS) from a's x_mid: gate, up and mlp_out into a.
static void grad_mlp_forward(const Model *m, GradState *gs, LayerActs *a, int l, int r0, int k) {
    const ModelConfig *c = &m->cfg;
    const LayerWeights *w = &m->layers[l];
    int D = c->hidden_size;
    size_t base = mlp_base(a, r0), inter = (size_t)c->intermediate_size;
    float *gate = a->gate + base * inter, *up = a->up + base * inter;
    for (int i = 0; i < k; i++)
        rmsnorm(gs->xb + (size_t)i * D, a->x_mid + (size_t)(r0 + i) * D, &w->mlp_norm, D, c->rms_norm_eps);
    matmuls(m, gs->xb, k, 2, (float *[]){gate, up}, (const Tensor *[]){&w->w_gate, &w->w_up},
            (const Tensor *[]){NULL, NULL});
    memcpy(gs->act, gate, (size_t)k * inter * sizeof *gs->act);
    silu_gate(m, gs->act, up, (size_t)k * inter);
    matmul(m, a->mlp_out + base * D, gs->act, k, &w->w_down, NULL);
}

// The MLP of rows r0..r0+k-1 in reverse: dx (d/d the residual after the block, which is d/d the
// MLP output) becomes d/d x_mid. Reads a's gate and up of those rows and overwrites them.
static void grad_mlp_backward(const Model *m, GradState *gs, LayerActs *a, int l, int r0, int k) {
    const ModelConfig *c = &m->cfg;
    const LayerWeights *w = &m->layers[l];
    int D = c->hidden_size;
    size_t base = mlp_base(a, r0), inter = (size_t)c->intermediate_size, n_inter = (size_t)k * inter;
    float *gate = a->gate + base * inter, *up = a->up + base * inter;
    matmul_t(m, gs->act, gs->dx + (size_t)r0 * D, k, &w->w_down, 0);
    for (size_t i = 0; i < n_inter; i++) { // silu(g) u: d/dg = u s (1 + g (1 - s)), d/du = g s, s = sigmoid(g)
        float gt = gate[i], s = 1.0f / (1.0f + expf(-gt)), da = gs->act[i];
        gate[i] = da * up[i] * s * (1.0f + gt * (1.0f - s));
        up[i] = da * gt * s;
    }
    matmul_t(m, gs->xb, gate, k, &w->w_gate, 0);
    matmul_t(m, gs->xb, up, k, &w->w_up, 1);
    for (int i = 0; i < k; i++)
        rmsnorm_backward(gs->dx + (size_t)(r0 + i) * D, a->x_mid + (size_t)(r0 + i) * D, &w->mlp_norm,
                         gs->xb + (size_t)i * D, D, c->rms_norm_eps, 1);
}

// Query head h at position t in the backward pass: what it reads, and its rows of the buffers it writes.
typedef struct {
    int hd, kv_dim, t;
    float scale;
    const float *q, *dout;                  // its query and d metric / d its output
    const float *keys, *values;             // its key head's key and value of position 0, rows kv_dim apart
    const float *key_blocks, *value_blocks; // the same in the SIMD kernels' dimension-major blocks
    float *p, *ds, *dq;                     // row t of probs and dscores; d metric / d its query
} HeadRow;

static HeadRow head_row(const Model *m, const GradState *gs, const LayerActs *a, int h, int t) {
    const ModelConfig *c = &m->cfg;
    int hd = c->head_dim, q_dim = c->n_heads * hd, g = h / (c->n_heads / c->n_kv_heads);
    size_t row = (size_t)t * (t + 1) / 2, at = (size_t)t * q_dim + (size_t)h * hd, block = (size_t)g * gs->max_pad * hd;
    return (HeadRow){.hd = hd,
                     .kv_dim = c->n_kv_heads * hd,
                     .t = t,
                     .scale = 1.0f / sqrtf((float)hd),
                     .q = a->q + at,
                     .dout = gs->dheads + at,
                     .keys = a->k + (size_t)g * hd,
                     .values = a->v + (size_t)g * hd,
                     .key_blocks = gs->key_cache + block,
                     .value_blocks = gs->value_blocks + block,
                     .p = gs->probs + row,
                     .ds = gs->dscores + row,
                     .dq = gs->dq + at};
}

// Query head h at position t: its probabilities over 0..t (recomputed in F32 as the forward
// does), d metric / d its scores (scale applied) and d metric / d its query.
static void head_backward_row(const HeadRow *r) {
    int hd = r->hd, kv_dim = r->kv_dim, t = r->t;
    float scale = r->scale, max = -INFINITY, sum = 0, *p = r->p, *ds = r->ds, *dq = r->dq;
    const float *q = r->q, *dout = r->dout, *keys = r->keys, *values = r->values;
    for (int u = 0; u <= t; u++) {
        p[u] = dot_strided(q, keys + (size_t)u * kv_dim, 1, hd) * scale;
        if (p[u] > max) max = p[u];
    }
    for (int u = 0; u <= t; u++) {
        p[u] = expf(p[u] - max);
        sum += p[u];
    }
    double expected = 0; // sum over u of p(u) dp(u)
    for (int u = 0; u <= t; u++) {
        p[u] /= sum;
        ds[u] = dot_strided(dout, values + (size_t)u * kv_dim, 1, hd); // d metric / d p(u)
        expected += (double)p[u] * ds[u];
    }
    for (int d = 0; d < hd; d++) dq[d] = 0;
    for (int u = 0; u <= t; u++) {
        ds[u] = scale * p[u] * (ds[u] - (float)expected); // softmax: ds = p (dp - sum p dp)
        axpy(dq, ds[u], keys + (size_t)u * kv_dim, hd);
    }
}

// Query head h's share of d metric / d keys and values at positions u0..u1-1: sums over the
// query positions t = u..n-1 in order, added to dk and dv.
static void head_backward_keys(const Model *m, GradState *gs, const LayerActs *a, int h, int u0, int u1, int n) {
    const ModelConfig *c = &m->cfg;
    int hd = c->head_dim, q_dim = c->n_heads * hd, kv_dim = c->n_kv_heads * hd, g = h / (c->n_heads / c->n_kv_heads);
    for (int t = u0; t < n; t++) {
        size_t row = (size_t)t * (t + 1) / 2;
        const float *p = gs->probs + row, *ds = gs->dscores + row;
        const float *q = a->q + (size_t)t * q_dim + (size_t)h * hd,
                    *dout = gs->dheads + (size_t)t * q_dim + (size_t)h * hd;
        int last = u1 - 1 < t ? u1 - 1 : t;
        for (int u = u0; u <= last; u++) {
            axpy(gs->dk + (size_t)u * kv_dim + (size_t)g * hd, ds[u], q, hd);
            axpy(gs->dv + (size_t)u * kv_dim + (size_t)g * hd, p[u], dout, hd);
        }
    }
}

#ifdef HAVE_AVX512
// head_backward_row in AVX-512: scores and d metric / d probabilities 32 keys at a time from the
// dimension-major key and value blocks (the forward's score kernel), a vectorised softmax, then dq.
AVX512 static void head_backward_row_avx512(const HeadRow *r, float *sc, float *dp) {
    int hd = r->hd, kv_dim = r->kv_dim, n = r->t + 1;
    float scale = r->scale, *p = r->p, *ds = r->ds, *dq = r->dq;
    const float *q = r->q, *dout = r->dout, *kb = r->key_blocks, *vb = r->value_blocks, *keys = r->keys;
    for (int p0 = 0; p0 < n; p0 += 2 * KEY_BLOCK) {
        scores_avx512(1, q, hd, kb + (size_t)(p0 / KEY_BLOCK) * hd * KEY_BLOCK, scale, sc, 0, p0);
        scores_avx512(1, dout, hd, vb + (size_t)(p0 / KEY_BLOCK) * hd * KEY_BLOCK, 1.0f, dp, 0, p0);
    }
    __m512 vmax = _mm512_set1_ps(-INFINITY), vsum = _mm512_setzero_ps(), vexp = _mm512_setzero_ps();
    for (int u = 0; u < n; u += 16) vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(vmax, mask16(n - u), sc + u));
    __m512 max = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
    for (int u = 0; u < n; u += 16) {
        __mmask16 k = mask16(n - u);
        __m512 e = _mm512_maskz_mov_ps(k, exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, sc + u), max)));
        vsum = _mm512_add_ps(vsum, e);
        _mm512_storeu_ps(sc + u, e);
    }
    __m512 sum = _mm512_set1_ps(hsum_avx512(vsum));
    for (int u = 0; u < n; u += 16) { // expected = sum over u of p(u) dp(u)
        __mmask16 k = mask16(n - u);
        __m512 pu = _mm512_div_ps(_mm512_loadu_ps(sc + u), sum);
        _mm512_storeu_ps(sc + u, pu);
        _mm512_mask_storeu_ps(p + u, k, pu);
        vexp = _mm512_fmadd_ps(pu, _mm512_maskz_loadu_ps(k, dp + u), vexp);
    }
    __m512 expected = _mm512_set1_ps(hsum_avx512(vexp)), vscale = _mm512_set1_ps(scale);
    for (int u = 0; u < n; u += 16) { // softmax: ds = p (dp - sum p dp), scale applied
        __mmask16 k = mask16(n - u);
        __m512 d = _mm512_mul_ps(_mm512_mul_ps(vscale, _mm512_loadu_ps(sc + u)),
                                 _mm512_sub_ps(_mm512_maskz_loadu_ps(k, dp + u), expected));
        _mm512_mask_storeu_ps(ds + u, k, d);
    }
    for (int d0 = 0; d0 < hd; d0 += 128) { // dq = sum over u of ds(u) k(u), 8 vectors of dimensions at a time
        __m512 acc[8];
        __mmask16 mk[8];
        UNROLL for (int v = 0; v < 8; v++) mk[v] = mask16(hd - d0 - 16 * v), acc[v] = _mm512_setzero_ps();
        for (int u = 0; u < n; u++) {
            __m512 s = _mm512_set1_ps(ds[u]);
            const float *ku = keys + (size_t)u * kv_dim + d0;
            UNROLL for (int v = 0; v < 8; v++)
                acc[v] = _mm512_fmadd_ps(s, _mm512_maskz_loadu_ps(mk[v], ku + 16 * v), acc[v]);
        }
        UNROLL for (int v = 0; v < 8; v++) _mm512_mask_storeu_ps(dq + d0 + 16 * v, mk[v], acc[v]);
    }
}

// head_backward_keys in AVX-512: per key position, its sums over the query positions in
// registers (4 vectors of dimensions for dk, 4 for dv), then added to dk and dv.
AVX512 static void head_backward_keys_avx512(const Model *m, GradState *gs, const LayerActs *a, int h, int u0, int u1,
                                             int n) {
    const ModelConfig *c = &m->cfg;
    int hd = c->head_dim, q_dim = c->n_heads * hd, kv_dim = c->n_kv_heads * hd, g = h / (c->n_heads / c->n_kv_heads);
    for (int u = u0; u < u1; u++)
        for (int d0 = 0; d0 < hd; d0 += 64) {
            __m512 ak[4], av[4];
            __mmask16 mk[4];
            UNROLL for (int v = 0; v < 4; v++) mk[v] = mask16(hd - d0 - 16 * v), ak[v] = av[v] = _mm512_setzero_ps();
            for (int t = u; t < n; t++) {
                size_t at = (size_t)t * (t + 1) / 2 + (size_t)u;
                __m512 s = _mm512_set1_ps(gs->dscores[at]), pr = _mm512_set1_ps(gs->probs[at]);
                const float *q = a->q + (size_t)t * q_dim + (size_t)h * hd + d0,
                            *dout = gs->dheads + (size_t)t * q_dim + (size_t)h * hd + d0;
                UNROLL for (int v = 0; v < 4; v++) {
                    ak[v] = _mm512_fmadd_ps(s, _mm512_maskz_loadu_ps(mk[v], q + 16 * v), ak[v]);
                    av[v] = _mm512_fmadd_ps(pr, _mm512_maskz_loadu_ps(mk[v], dout + 16 * v), av[v]);
                }
            }
            float *dk = gs->dk + (size_t)u * kv_dim + (size_t)g * hd + d0,
                  *dv = gs->dv + (size_t)u * kv_dim + (size_t)g * hd + d0;
            UNROLL for (int v = 0; v < 4; v++) {
                _mm512_mask_storeu_ps(dk + 16 * v, mk[v],
                                      _mm512_add_ps(_mm512_maskz_loadu_ps(mk[v], dk + 16 * v), ak[v]));
                _mm512_mask_storeu_ps(dv + 16 * v, mk[v],
                                      _mm512_add_ps(_mm512_maskz_loadu_ps(mk[v], dv + 16 * v), av[v]));
            }
        }
}

// dq (64 dimensions from d0, the last vectors partial when partial) = sum over u of ds(u) k(u),
// in key order.
AVX2 static INLINE void dq_avx2(int partial, int hd, int d0, int n, const float *ds, const float *keys, int kv_dim,
                                float *dq) {
    __m256 acc[8];
    UNROLL for (int v = 0; v < 8; v++) acc[v] = _mm256_setzero_ps();
    for (int u = 0; u < n; u++) {
        __m256 s = _mm256_broadcast_ss(ds + u);
        const float *ku = keys + (size_t)u * kv_dim + d0;
        UNROLL for (int v = 0; v < 8; v++)
            acc[v] = _mm256_fmadd_ps(s, load8_avx2(ku + 8 * v, partial, hd - d0 - 8 * v), acc[v]);
    }
    UNROLL for (int v = 0; v < 8; v++) store8_avx2(dq + d0 + 8 * v, partial, hd - d0 - 8 * v, acc[v]);
}

// head_backward_row_avx512 in vectors of 8: scores and d metric / d probabilities one key
// block at a time, the softmax's sums in 16 lanes as two vectors, then dq 64 dimensions at a time.
AVX2 static void head_backward_row_avx2(const HeadRow *r, float *sc, float *dp) {
    int hd = r->hd, kv_dim = r->kv_dim, n = r->t + 1;
    float scale = r->scale, *p = r->p, *ds = r->ds, *dq = r->dq;
    const float *q = r->q, *dout = r->dout, *kb = r->key_blocks, *vb = r->value_blocks, *keys = r->keys;
    for (int p0 = 0; p0 < n; p0 += KEY_BLOCK) {
        scores_avx2(1, q, hd, kb + (size_t)(p0 / KEY_BLOCK) * hd * KEY_BLOCK, scale, sc, 0, p0);
        scores_avx2(1, dout, hd, vb + (size_t)(p0 / KEY_BLOCK) * hd * KEY_BLOCK, 1.0f, dp, 0, p0);
    }
    float max = -INFINITY; // exact in any order
    for (int u = 0; u < n; u++) max = sc[u] > max ? sc[u] : max;
    __m256 vmax = _mm256_set1_ps(max), vsum[2], vexp[2];
    vsum[0] = vsum[1] = vexp[0] = vexp[1] = _mm256_setzero_ps();
    for (int u = 0; u < n; u += 16) // lane j of vsum[0], vsum[1] is lane j, 8 + j of the AVX-512 sum
        UNROLL for (int k = 0; k < 2; k++) {
            __m256i mk = mask8(n - u - 8 * k);
            __m256 e = _mm256_and_ps(exp_avx2(_mm256_sub_ps(_mm256_maskload_ps(sc + u + 8 * k, mk), vmax)),
                                     _mm256_castsi256_ps(mk));
            vsum[k] = _mm256_add_ps(vsum[k], e);
            _mm256_storeu_ps(sc + u + 8 * k, e);
        }
    __m256 sum = _mm256_set1_ps(hsum8_tree(_mm256_add_ps(vsum[0], vsum[1])));
    for (int u = 0; u < n; u += 16) // expected = sum over u of p(u) dp(u)
        UNROLL for (int k = 0; k < 2; k++) {
            __m256i mk = mask8(n - u - 8 * k);
            __m256 pu = _mm256_div_ps(_mm256_loadu_ps(sc + u + 8 * k), sum);
            _mm256_storeu_ps(sc + u + 8 * k, pu);
            _mm256_maskstore_ps(p + u + 8 * k, mk, pu);
            vexp[k] = _mm256_fmadd_ps(pu, _mm256_maskload_ps(dp + u + 8 * k, mk), vexp[k]);
        }
    __m256 expected = _mm256_set1_ps(hsum8_tree(_mm256_add_ps(vexp[0], vexp[1]))), vscale = _mm256_set1_ps(scale);
    for (int u = 0; u < n; u += 8) { // softmax: ds = p (dp - sum p dp), scale applied
        __m256i mk = mask8(n - u);
        __m256 d = _mm256_mul_ps(_mm256_mul_ps(vscale, _mm256_loadu_ps(sc + u)),
                                 _mm256_sub_ps(_mm256_maskload_ps(dp + u, mk), expected));
        _mm256_maskstore_ps(ds + u, mk, d);
    }
    for (int d0 = 0; d0 < hd; d0 += 64)
        if (hd - d0 >= 64) dq_avx2(0, hd, d0, n, ds, keys, kv_dim, dq);
        else dq_avx2(1, hd, d0, n, ds, keys, kv_dim, dq);
}

// Key position u's sums for dk and dv over query positions u..n-1 (32 dimensions from d0), added to them.
AVX2 static INLINE void key_sums_avx2(int partial, const GradState *gs, const LayerActs *a, int h, int g, int u, int n,
                                      int hd, int q_dim, int kv_dim, int d0) {
    __m256 ak[4], av[4];
    UNROLL for (int v = 0; v < 4; v++) ak[v] = av[v] = _mm256_setzero_ps();
    for (int t = u; t < n; t++) {
        size_t at = (size_t)t * (t + 1) / 2 + (size_t)u;
        __m256 s = _mm256_broadcast_ss(gs->dscores + at), pr = _mm256_broadcast_ss(gs->probs + at);
        const float *q = a->q + (size_t)t * q_dim + (size_t)h * hd + d0,
                    *dout = gs->dheads + (size_t)t * q_dim + (size_t)h * hd + d0;
        UNROLL for (int v = 0; v < 4; v++) {
            ak[v] = _mm256_fmadd_ps(s, load8_avx2(q + 8 * v, partial, hd - d0 - 8 * v), ak[v]);
            av[v] = _mm256_fmadd_ps(pr, load8_avx2(dout + 8 * v, partial, hd - d0 - 8 * v), av[v]);
        }
    }
    float *dk = gs->dk + (size_t)u * kv_dim + (size_t)g * hd + d0,
          *dv = gs->dv + (size_t)u * kv_dim + (size_t)g * hd + d0;
    UNROLL for (int v = 0; v < 4; v++) {
        int left = hd - d0 - 8 * v;
        store8_avx2(dk + 8 * v, partial, left, _mm256_add_ps(load8_avx2(dk + 8 * v, partial, left), ak[v]));
        store8_avx2(dv + 8 * v, partial, left, _mm256_add_ps(load8_avx2(dv + 8 * v, partial, left), av[v]));
    }
}

// head_backward_keys_avx512 in vectors of 8, 32 dimensions at a time.
AVX2 static void head_backward_keys_avx2(const Model *m, GradState *gs, const LayerActs *a, int h, int u0, int u1,
                                         int n) {
    const ModelConfig *c = &m->cfg;
    int hd = c->head_dim, q_dim = c->n_heads * hd, kv_dim = c->n_kv_heads * hd, g = h / (c->n_heads / c->n_kv_heads);
    for (int u = u0; u < u1; u++)
        for (int d0 = 0; d0 < hd; d0 += 32)
            if (hd - d0 >= 32) key_sums_avx2(0, gs, a, h, g, u, n, hd, q_dim, kv_dim, d0);
            else key_sums_avx2(1, gs, a, h, g, u, n, hd, q_dim, kv_dim, d0);
}

#endif

// Layer l's attention in reverse: dheads (d/d each head's output, set by the caller) through
// softmax, GQA, RoPE and q/k norms to d/d q_pre, k_pre, v, then through q/k/v_proj and the
// norm: dx (d/d x_mid) becomes d/d the residual entering the layer.
static void grad_attention_backward(const Model *m, GradState *gs, const LayerActs *a, int l, int n) {
    const ModelConfig *c = &m->cfg;
    const LayerWeights *w = &m->layers[l];
    int D = c->hidden_size, hd = c->head_dim, half = hd / 2, H = c->n_heads, KV = c->n_kv_heads;
    int q_dim = H * hd, kv_dim = KV * hd, n_key_blocks = (n + GRAD_KEY_BLOCK - 1) / GRAD_KEY_BLOCK;
    float eps = c->rms_norm_eps;
    double macs = (double)n * (n + 1) * hd;
    memset(gs->dk, 0, (size_t)n * kv_dim * sizeof *gs->dk);
    memset(gs->dv, 0, (size_t)n * kv_dim * sizeof *gs->dv);
    int n_threads = max_threads() < gs->n_threads ? max_threads() : gs->n_threads; // threads with a scratch row
    // Keys and values laid out for the score kernel (a kept layer's keys are in no cache).
    for (int t = 0; t < n && m->simd != SIMD_PORTABLE; t++)
        for (int g = 0; g < KV; g++) {
            size_t at = (size_t)g * gs->max_pad * hd + (size_t)(t / KEY_BLOCK) * hd * KEY_BLOCK + t % KEY_BLOCK;
            for (int d = 0; d < hd; d++) {
                gs->key_cache[at + (size_t)d * KEY_BLOCK] = a->k[(size_t)t * kv_dim + (size_t)g * hd + d];
                gs->value_blocks[at + (size_t)d * KEY_BLOCK] = a->v[(size_t)t * kv_dim + (size_t)g * hd + d];
            }
        }
    for (int h = 0; h < H; h++) { // one head's n x n at a time; its keys' sums continue the previous heads'
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 16) if (macs >= PARALLEL_MIN_MACS)
        for (int t = 0; t < n; t++) {
            HeadRow r = head_row(m, gs, a, h, t);
            float *sc = gs->row_scratch + (size_t)thread_id() * 2 * gs->max_pad, *dp = sc + gs->max_pad;
            (void)sc, (void)dp; // unused without the SIMD kernels
#ifdef HAVE_AVX512
            if (m->simd == SIMD_AVX512) head_backward_row_avx512(&r, sc, dp);
            else if (m->simd == SIMD_AVX2) head_backward_row_avx2(&r, sc, dp);
            else
#endif
                head_backward_row(&r);
        }
#pragma omp parallel for schedule(dynamic, 1) if (macs >= PARALLEL_MIN_MACS)
        for (int b = 0; b < n_key_blocks; b++) {
            int u0 = b * GRAD_KEY_BLOCK, u1 = n - u0 < GRAD_KEY_BLOCK ? n : u0 + GRAD_KEY_BLOCK;
#ifdef HAVE_AVX512
            if (m->simd == SIMD_AVX512) head_backward_keys_avx512(m, gs, a, h, u0, u1, n);
            else if (m->simd == SIMD_AVX2) head_backward_keys_avx2(m, gs, a, h, u0, u1, n);
            else
#endif
                head_backward_keys(m, gs, a, h, u0, u1, n);
        }
    }
    (void)macs, (void)n_threads;
    for (int t = 0; t < n; t++) {
        const float *cos_t = gs->rope_cos + (size_t)t * half, *sin_t = gs->rope_sin + (size_t)t * half;
        for (int h = 0; h < H; h++) {
            float *dq = gs->dq + (size_t)t * q_dim + (size_t)h * hd;
            rope_backward(dq, cos_t, sin_t, hd);
            if (c->qk_norm)
                rmsnorm_backward(dq, a->q_pre + (size_t)t * q_dim + (size_t)h * hd, &w->q_norm, dq, hd, eps, 0);
        }
        for (int h = 0; h < KV; h++) {
            float *dk = gs->dk + (size_t)t * kv_dim + (size_t)h * hd;
            rope_backward(dk, cos_t, sin_t, hd);
            if (c->qk_norm)
                rmsnorm_backward(dk, a->k_pre + (size_t)t * kv_dim + (size_t)h * hd, &w->k_norm, dk, hd, eps, 0);
        }
    }
    for (int r0 = 0; r0 < n; r0 += GRAD_ROWS) {
        int k = n - r0 < GRAD_ROWS ? n - r0 : GRAD_ROWS;
        matmul_t(m, gs->xb, gs->dq + (size_t)r0 * q_dim, k, &w->wq, 0);
        matmul_t(m, gs->xb, gs->dk + (size_t)r0 * kv_dim, k, &w->wk, 1);
        matmul_t(m, gs->xb, gs->dv + (size_t)r0 * kv_dim, k, &w->wv, 1);
        for (int i = 0; i < k; i++)
            rmsnorm_backward(gs->dx + (size_t)(r0 + i) * D, grad_resid_at(m, gs, r0 + i, l), &w->attn_norm,
                             gs->xb + (size_t)i * D, D, eps, 1);
    }
}

// --- the whole pass

int model_gradient(const Model *m, GradState *gs, Gradient *g, Err *err) {
    const ModelConfig *c = &m->cfg;
    int P = g->pred_pos, n = P + 1, D = c->hidden_size, L = c->n_layers, V = c->vocab_size, hd = c->head_dim,
        half = hd / 2;
    int H = c->n_heads, q_dim = H * hd;
    size_t LD = (size_t)L * D, LQ = (size_t)L * q_dim;
    if (P < 0 || P >= g->n) return err_input(err, "gradient: pred_pos %d out of range [0, %d)", P, g->n);
    if (n > gs->max_tokens)
        return err_input(err, "gradient: pred_pos %d out of range: the gradient state holds %d positions", P,
                         gs->max_tokens);
    if (g->onset_token_id < 0 || g->onset_token_id >= V)
        return err_input(err, "gradient: onset token id %d out of range [0, %d)", g->onset_token_id, V);
    for (int t = 0; t < n; t++)
        if (g->token[t] < 0 || g->token[t] >= V)
            return err_input(err, "gradient: token id %d out of range [0, %d)", g->token[t], V);
    g->layers_kept = grad_keep(m, gs, n);
#define ACTS(l) (gs->kept[l].kept ? &gs->kept[l] : &gs->work)

    // Forward: the residual stream at every layer boundary (and kept layers' internals), then the logits at pred_pos.
    for (int t = 0; t < n; t++) {
        tensor_row_f32(&m->embed, g->token[t], grad_resid_at(m, gs, t, 0));
        for (int k = 0; k < half; k++) {
            float angle = (float)t * m->inv_freq[k];
            gs->rope_cos[(size_t)t * half + k] = cosf(angle);
            gs->rope_sin[(size_t)t * half + k] = sinf(angle);
        }
    }
    for (int l = 0; l < L; l++) {
        LayerActs *a = ACTS(l);
        grad_attention_forward(m, gs, a, l, n);
        for (int r0 = 0; r0 < n; r0 += GRAD_ROWS) {
            int k = n - r0 < GRAD_ROWS ? n - r0 : GRAD_ROWS;
            grad_mlp_forward(m, gs, a, l, r0, k);
            for (int i = 0; i < k; i++) {
                const float *mid = a->x_mid + (size_t)(r0 + i) * D,
                            *out = a->mlp_out + (mlp_base(a, r0) + (size_t)i) * D;
                float *x = grad_resid_at(m, gs, r0 + i, l + 1);
                for (int d = 0; d < D; d++) x[d] = mid[d] + out[d];
            }
        }
    }
    model_final_logits(m, grad_resid_at(m, gs, P, L), gs->logits);

    // metric = log softmax at the onset token; d metric / d logits = onehot - softmax.
    float *logits = gs->logits;
    double max = logits[0], sum = 0;
    for (int v = 1; v < V; v++) max = logits[v] > max ? logits[v] : max;
    for (int v = 0; v < V; v++) sum += exp((double)logits[v] - max);
    double log_z = max + log(sum);
    g->metric = (double)logits[g->onset_token_id] - max - log(sum); // as analysis.c's log_prob
    for (int v = 0; v < V; v++) logits[v] = (float)((v == g->onset_token_id) - exp((double)logits[v] - log_z));

    // Final norm and lm_head in reverse: only pred_pos's residual reaches the metric.
    memset(gs->dx, 0, (size_t)n * D * sizeof *gs->dx);
    matmul_t(m, gs->xb, logits, 1, &m->lm_head, 0);
    rmsnorm_backward(gs->dx + (size_t)P * D, grad_resid_at(m, gs, P, L), &m->final_norm, gs->xb, D, c->rms_norm_eps, 0);
    if (g->grad_resid) copy_rows(g->grad_resid + (size_t)L * D, (size_t)(L + 1) * D, gs->dx, D, n, D);

    for (int l = L - 1; l >= 0; l--) {
        const float *attn_mean = g->attn_mean ? g->attn_mean + (size_t)l * D : NULL,
                    *mlp_mean = g->mlp_mean ? g->mlp_mean + (size_t)l * D : NULL;
        LayerActs *a = ACTS(l);
        if (!a->kept) grad_attention_forward(m, gs, a, l, n);
        if (g->attn_out) copy_rows(g->attn_out + (size_t)l * D, LD, a->attn_out, D, n, D);
        if (g->head_out) copy_rows(g->head_out + (size_t)l * q_dim, LQ, a->heads, q_dim, n, q_dim);
        double score_mlp = 0;
        for (int r0 = 0; r0 < n; r0 += GRAD_ROWS) {
            int k = n - r0 < GRAD_ROWS ? n - r0 : GRAD_ROWS;
            if (!a->kept) grad_mlp_forward(m, gs, a, l, r0, k);
            const float *mlp_out = a->mlp_out + mlp_base(a, r0) * D;
            if (g->mlp_out) copy_rows(g->mlp_out + ((size_t)r0 * L + l) * D, LD, mlp_out, D, k, D);
            if (g->grad_mlp) copy_rows(g->grad_mlp + ((size_t)r0 * L + l) * D, LD, gs->dx + (size_t)r0 * D, D, k, D);
            score_mlp = score_rows(score_mlp, gs->dx + (size_t)r0 * D, D, mlp_out, D, k, D, mlp_mean);
            grad_mlp_backward(m, gs, a, l, r0, k);
        }
        if (g->score_mlp) g->score_mlp[l] = score_mlp;
        if (g->grad_attn) copy_rows(g->grad_attn + (size_t)l * D, LD, gs->dx, D, n, D);
        if (g->score_attn) g->score_attn[l] = score_rows(0, gs->dx, D, a->attn_out, D, n, D, attn_mean);
        matmul_t(m, gs->dheads, gs->dx, n, &m->layers[l].wo, 0);
        if (g->grad_head) copy_rows(g->grad_head + (size_t)l * q_dim, LQ, gs->dheads, q_dim, n, q_dim);
        for (int h = 0; g->score_head && h < H; h++)
            g->score_head[(size_t)l * H + h] =
                score_rows(0, gs->dheads + (size_t)h * hd, q_dim, a->heads + (size_t)h * hd, q_dim, n, hd,
                           g->head_mean ? g->head_mean + (size_t)l * q_dim + (size_t)h * hd : NULL);
        grad_attention_backward(m, gs, a, l, n);
        if (g->grad_resid) copy_rows(g->grad_resid + (size_t)l * D, (size_t)(L + 1) * D, gs->dx, D, n, D);
    }
#undef ACTS
    return 0;
}

void attribution_scores(const ModelConfig *c, Gradient *g) {
    int n = g->pred_pos + 1, D = c->hidden_size, L = c->n_layers, H = c->n_heads, hd = c->head_dim, q_dim = H * hd;
    size_t LD = (size_t)L * D, LQ = (size_t)L * q_dim;
    for (int l = 0; l < L; l++) {
        if (g->score_attn && g->grad_attn && g->attn_out)
            g->score_attn[l] = score_rows(0, g->grad_attn + (size_t)l * D, LD, g->attn_out + (size_t)l * D, LD, n, D,
                                          g->attn_mean ? g->attn_mean + (size_t)l * D : NULL);
        if (g->score_mlp && g->grad_mlp && g->mlp_out)
            g->score_mlp[l] = score_rows(0, g->grad_mlp + (size_t)l * D, LD, g->mlp_out + (size_t)l * D, LD, n, D,
                                         g->mlp_mean ? g->mlp_mean + (size_t)l * D : NULL);
        for (int h = 0; g->score_head && g->grad_head && g->head_out && h < H; h++) {
            size_t at = (size_t)l * q_dim + (size_t)h * hd;
            g->score_head[(size_t)l * H + h] = score_rows(0, g->grad_head + at, LQ, g->head_out + at, LQ, n, hd,
                                                          g->head_mean ? g->head_mean + at : NULL);
        }
    }
}

// ----------------------------------------------------------------------------
// Commands: model-info, forward

// Shortest decimal that reads back as the same float.
static void buf_float(Buf *b, float x) {
    if (!isfinite(x)) {
        buf_puts(b, "null");
        return;
    }
    char tmp[32];
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(tmp, sizeof tmp, "%.*g", prec, (double)x);
        if (strtof(tmp, NULL) == x) break;
    }
    buf_puts(b, tmp);
}

int cmd_model_info(int argc, char **argv) {
    Opt opts[] = {OPT("--model", 1, "Hugging Face model directory"), OPT_END};
    Err err = {0};
    int r = opts_parse(opts, argc, argv, &err);
    if (r) return r > 0 ? EXIT_OK : fail(&err);
    const char *dir = opt_str(opts, "--model", NULL);
    if (!dir) return err_input(&err, "model-info: --model DIR is required"), fail(&err);
    Model m;
    if (model_load(&m, dir, &err) < 0) return fail(&err);
    const ModelConfig *c = &m.cfg;
    Buf b = {0};
    buf_puts(&b, "{\"model\":");
    buf_json_string(&b, dir, strlen(dir));
    buf_printf(
        &b,
        ",\"architecture\":\"%s\",\"hidden_size\":%d,\"n_layers\":%d,\"n_heads\":%d,\"n_kv_heads\":%d,\"head_dim\":%d",
        c->architecture, c->hidden_size, c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim);
    buf_printf(&b, ",\"intermediate_size\":%d,\"vocab_size\":%d,\"max_position\":%d,\"rms_norm_eps\":",
               c->intermediate_size, c->vocab_size, c->max_position);
    buf_float(&b, c->rms_norm_eps);
    buf_puts(&b, ",\"rope_theta\":");
    buf_float(&b, c->rope_theta);
    if (c->rope_llama3) {
        buf_puts(&b, ",\"rope_scaling\":{\"type\":\"llama3\",\"factor\":");
        buf_float(&b, c->rope_factor);
        buf_puts(&b, ",\"low_freq_factor\":");
        buf_float(&b, c->rope_low_freq_factor);
        buf_puts(&b, ",\"high_freq_factor\":");
        buf_float(&b, c->rope_high_freq_factor);
        buf_printf(&b, ",\"original_max_position\":%d}", c->rope_original_max_position);
    } else {
        buf_puts(&b, ",\"rope_scaling\":null");
    }
    buf_printf(&b, ",\"tie_word_embeddings\":%s,\"qkv_bias\":%s,\"qk_norm\":%s",
               c->tie_word_embeddings ? "true" : "false", c->qkv_bias ? "true" : "false",
               c->qk_norm ? "true" : "false");
    if (c->bos_token_id >= 0) buf_printf(&b, ",\"bos_token_id\":%d", c->bos_token_id);
    else buf_puts(&b, ",\"bos_token_id\":null");
    buf_puts(&b, ",\"eos_token_ids\":[");
    for (int i = 0; i < c->n_eos; i++) buf_printf(&b, "%s%d", i ? "," : "", c->eos_ids[i]);
    buf_puts(&b, "]");
    int n_slots = model_slots(&m, NULL);
    TensorSlot *slots = xmalloc((size_t)n_slots * sizeof *slots);
    model_slots(&m, slots);
    long long n_params = 0;
    size_t weight_bytes = 0;
    for (int i = 0; i < n_slots; i++) {
        n_params += (long long)slots[i].t->rows * slots[i].t->cols;
        weight_bytes += (size_t)slots[i].t->rows * slots[i].t->cols * dtype_bytes(slots[i].t->dtype);
    }
    buf_printf(&b,
               ",\"n_params\":%lld,\"weight_bytes\":%zu,\"bytes_mapped\":%zu,\"bytes_allocated\":%zu,\"kv_cache_bytes_"
               "per_token\":%zu",
               n_params, weight_bytes, m.bytes_mapped, m.bytes_allocated, model_kv_bytes_per_token(&m));
    buf_puts(&b, ",\"tensors\":[");
    for (int i = 0; i < n_slots; i++) {
        const Tensor *t = slots[i].t;
        buf_printf(&b, "%s{\"name\":\"%s\",\"dtype\":\"%s\",\"shape\":", i ? "," : "", slots[i].name,
                   dtype_name(t->dtype));
        if (slots[i].rows) buf_printf(&b, "[%d,%d]}", t->rows, t->cols);
        else buf_printf(&b, "[%d]}", t->cols);
    }
    buf_puts(&b, "]}\n");
    write_stdout(&b);
    buf_free(&b);
    free(slots);
    model_free(&m);
    return EXIT_OK;
}

// "attn:L", "mlp:L" or "head:L.H" into mask.
static int parse_ablation(const char *spec, const ModelConfig *c, AblationMask *mask, Err *err) {
    int layer, head = -1, used = 0;
    char kind[8];
    if (sscanf(spec, "%7[a-z]:%d%n", kind, &layer, &used) == 2 && spec[used] == '.' && strcmp(kind, "head") == 0) {
        int more = 0;
        if (sscanf(spec + used, ".%d%n", &head, &more) != 1) used = -1;
        else used += more;
    }
    if (used <= 0 || spec[used] || (strcmp(kind, "head") == 0) != (head >= 0) ||
        (strcmp(kind, "attn") && strcmp(kind, "mlp") && strcmp(kind, "head")))
        return err_input(err, "--ablate: '%s' is not attn:L, mlp:L or head:L.H", spec);
    if (layer < 0 || layer >= c->n_layers)
        return err_input(err, "--ablate %s: layer %d out of range [0, %d)", spec, layer, c->n_layers);
    if (head >= c->n_heads) return err_input(err, "--ablate %s: head %d out of range [0, %d)", spec, head, c->n_heads);
    if (kind[0] == 'a') mask->attn[layer] = 1;
    else if (kind[0] == 'm') mask->mlp[layer] = 1;
    else mask->head[layer * c->n_heads + head] = 1;
    return 0;
}

// --directions FILE with --steer L:ALPHA or --project-out L into mask, the vector in vec (hidden):
// the same vectors as the steer_<alpha> and project_out conditions of generate.
static int parse_steering(const Opt *opts, const ModelConfig *c, AblationMask *mask, float *vec, Err *err) {
    const char *file = opt_str(opts, "--directions", NULL), *steer = opt_str(opts, "--steer", NULL);
    const char *project = opt_str(opts, "--project-out", NULL);
    if (!steer && !project) return file ? err_input(err, "--directions needs --steer L:ALPHA or --project-out L") : 0;
    if (steer && project) return err_input(err, "--steer and --project-out: give one of them");
    if (!file) return err_input(err, "--%s needs --directions FILE", steer ? "steer" : "project-out");
    int layer, used = 0;
    double alpha = 0;
    const char *spec = steer ? steer : project;
    if (steer ? sscanf(steer, "%d:%lf%n", &layer, &alpha, &used) != 2
              : sscanf(project, "%d%n", &layer, &used) != 1 || spec[used])
        return err_input(err, "--%s: '%s' is not %s", steer ? "steer" : "project-out", spec,
                         steer ? "L:ALPHA" : "a layer");
    if (spec[used] || alpha != alpha) return err_input(err, "--steer: '%s' is not L:ALPHA", spec);
    if (layer < 0 || layer > c->n_layers)
        return err_input(err, "--%s %s: layer %d out of range [0, %d]", steer ? "steer" : "project-out", spec, layer,
                         c->n_layers);
    float *dirs = NULL, *norms = NULL;
    int rows, cols, n_rows, n_cols, rc = safetensors_read_f32(file, "directions", &dirs, &rows, &cols, err);
    if (rc == 0) rc = safetensors_read_f32(file, "mean_norm", &norms, &n_rows, &n_cols, err);
    if (rc == 0 && (rows != c->n_layers + 1 || cols != c->hidden_size || n_rows * n_cols != c->n_layers + 1))
        rc = err_input(err, "%s: directions (%d, %d) do not fit this model's (%d, %d)", file, rows, cols,
                       c->n_layers + 1, c->hidden_size);
    double norm = 0;
    for (int d = 0; rc == 0 && d < cols; d++)
        norm += (double)dirs[(size_t)layer * cols + d] * dirs[(size_t)layer * cols + d];
    if (rc == 0 && !(norm > 0)) rc = err_input(err, "%s: the direction at layer %d is zero", file, layer);
    double scale = rc == 0 && steer ? alpha * norms[layer] : 1;
    norm = sqrt(norm);
    for (int d = 0; rc == 0 && d < cols; d++) vec[d] = (float)(scale * dirs[(size_t)layer * cols + d] / norm);
    if (rc == 0 && steer) mask->steer_layer = layer, mask->steer_add = vec;
    if (rc == 0 && project) mask->project_out = vec;
    free(dirs);
    free(norms);
    return rc;
}

typedef struct {
    float logit;
    int id;
} Ranked;

static int cmp_ranked(const void *a, const void *b) { // larger logit first, ties to the lower id
    const Ranked *x = a, *y = b;
    if (x->logit != y->logit) return x->logit > y->logit ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

// One JSON line per position: logits (all, or the top K as [id, logit]) and the residual stream.
static void print_position(Buf *b, int pos, const float *logits, int V, int top_k, Ranked *ranked, const float *resid,
                           int L, int D) {
    buf_printf(b, "{\"pos\":%d,", pos);
    if (top_k) {
        for (int v = 0; v < V; v++) ranked[v] = (Ranked){logits[v], v};
        qsort(ranked, (size_t)V, sizeof *ranked, cmp_ranked);
        buf_puts(b, "\"top\":[");
        for (int k = 0; k < top_k; k++) {
            buf_printf(b, "%s[%d,", k ? "," : "", ranked[k].id);
            buf_float(b, ranked[k].logit);
            buf_putc(b, ']');
        }
    } else {
        buf_puts(b, "\"logits\":[");
        for (int v = 0; v < V; v++) {
            if (v) buf_putc(b, ',');
            buf_float(b, logits[v]);
        }
    }
    buf_putc(b, ']');
    if (resid) {
        buf_puts(b, ",\"hidden\":[");
        for (int l = 0; l <= L; l++) {
            buf_puts(b, l ? ",[" : "[");
            for (int d = 0; d < D; d++) {
                if (d) buf_putc(b, ',');
                buf_float(b, resid[(size_t)l * D + d]);
            }
            buf_putc(b, ']');
        }
        buf_putc(b, ']');
    }
    buf_puts(b, "}\n");
}

// forward --grad POS:TOKEN: zero-ablation attribution of every attention and MLP layer and
// every head for log p(TOKEN) at POS, as one JSON object.
static int forward_grad(const Model *m, const int *ids, int n, const char *spec, Err *err) {
    const ModelConfig *c = &m->cfg;
    long pos, token;
    char *end;
    errno = 0;
    pos = strtol(spec, &end, 10);
    if (end == spec || *end != ':' || errno) return err_input(err, "--grad: '%s' is not POS:TOKEN", spec);
    const char *rest = end + 1;
    token = strtol(rest, &end, 10);
    if (end == rest || *end || errno) return err_input(err, "--grad: '%s' is not POS:TOKEN", spec);
    if (pos < 0 || pos >= n)
        return err_input(err, "--grad %s: position %ld out of range [0, %d) of --ids", spec, pos, n);
    if (token < 0 || token >= c->vocab_size)
        return err_input(err, "--grad %s: token id %ld out of range [0, %d) of %s", spec, token, c->vocab_size, m->dir);
    int L = c->n_layers, H = c->n_heads;
    double *attn = xmalloc((size_t)L * sizeof *attn), *mlp = xmalloc((size_t)L * sizeof *mlp),
           *head = xmalloc((size_t)L * H * sizeof *head);
    Gradient g = {.token = ids, .n = n, .pred_pos = (int)pos, .onset_token_id = (int)token, .score_attn = attn,
                  .score_mlp = mlp, .score_head = head};
    GradState *gs = gradstate_new(m, (int)pos + 1, GRAD_KEEP_BYTES, err);
    int rc = gs ? model_gradient(m, gs, &g, err) : -1;
    if (rc == 0) {
        Buf b = {0};
        buf_printf(&b, "{\"pred_pos\":%ld,\"onset_token_id\":%ld,\"metric\":", pos, token);
        buf_json_double(&b, g.metric);
        buf_puts(&b, ",\"ablation\":\"zero\",\"attn\":[");
        for (int l = 0; l < L; l++) buf_puts(&b, l ? "," : ""), buf_json_double(&b, attn[l]);
        buf_puts(&b, "],\"mlp\":[");
        for (int l = 0; l < L; l++) buf_puts(&b, l ? "," : ""), buf_json_double(&b, mlp[l]);
        buf_puts(&b, "],\"head\":[");
        for (int l = 0; l < L; l++) {
            buf_puts(&b, l ? ",[" : "[");
            for (int h = 0; h < H; h++) buf_puts(&b, h ? "," : ""), buf_json_double(&b, head[(size_t)l * H + h]);
            buf_putc(&b, ']');
        }
        buf_puts(&b, "]}\n");
        write_stdout(&b);
        buf_free(&b);
    }
    gradstate_free(gs);
    free(attn), free(mlp), free(head);
    return rc;
}

int cmd_forward(int argc, char **argv) {
    Opt opts[] = {OPT("--model", 1, "Hugging Face model directory"),
                  OPT("--ids", 1, "token ids, comma-separated"),
                  OPT("--ablate", 1, "zero a component at every position: attn:L, mlp:L or head:L.H (repeatable)"),
                  OPT("--hidden", 0, "also print the residual stream: L+1 vectors per position, [0] = embeddings"),
                  OPT("--top", 1, "print the K largest logits as \"top\": [[id, logit], ...] instead of all"),
                  OPT("--grad", 1,
                      "POS:TOKEN: instead, the estimated change of log p(TOKEN) at POS when each attention "
                      "and MLP layer and each head is zero-ablated (attribution patching), as one JSON object"),
                  OPT("--directions", 1, "a directions.safetensors (bt directions) for --steer and --project-out"),
                  OPT("--steer", 1, "L:ALPHA: add ALPHA x mean_norm[L] x the unit direction of layer L after layer L"),
                  OPT("--project-out", 1, "L: remove the unit direction of layer L from every residual"),
                  OPT_END};
    Err err = {0};
    int r = opts_parse(opts, argc, argv, &err);
    if (r) return r > 0 ? EXIT_OK : fail(&err);
    const char *dir = opt_str(opts, "--model", NULL), *ids_text = opt_str(opts, "--ids", NULL);
    if (!dir || !ids_text) return err_input(&err, "forward: --model DIR and --ids 1,2,3 are required"), fail(&err);
    Model m;
    if (model_load(&m, dir, &err) < 0) return fail(&err);
    const ModelConfig *c = &m.cfg;
    int V = c->vocab_size, D = c->hidden_size, L = c->n_layers, hidden = opt_str(opts, "--hidden", NULL) != NULL;
    AblationMask mask = {.kind = ABLATE_ZERO, .attn = xcalloc((size_t)L, 1), .mlp = xcalloc((size_t)L, 1),
                         .head = xcalloc((size_t)L * c->n_heads, 1)};
    int *ids = NULL, n = 0, rc = 0, n_ablate = 0;
    float *steer_vec = xmalloc((size_t)D * sizeof *steer_vec); // (hidden)
    rc = parse_steering(opts, c, &mask, steer_vec, &err);
    n_ablate += mask.steer_add || mask.project_out;
    long long top_k = 0;
    for (const Opt *o = opts; o->name; o++)
        if (strcmp(o->name, "--ablate") == 0)
            for (int i = 0; i < o->n_values && rc == 0; i++, n_ablate++)
                rc = parse_ablation(o->values[i], c, &mask, &err);
    if (rc == 0) rc = opt_int(opts, "--top", 1, V, 0, &top_k, &err);
    if (rc == 0) rc = parse_ids(ids_text, V, dir, &ids, &n, &err);
    const char *grad = opt_str(opts, "--grad", NULL);
    if (rc == 0 && grad && (n_ablate || hidden || top_k))
        rc = err_input(&err, "forward: --grad goes with none of --ablate, --hidden, --top");
    if (rc == 0 && grad) rc = forward_grad(&m, ids, n, grad, &err);
    if (grad || rc < 0) n = 0; // nothing more to compute
    int rows = n < CMD_MAX_ROWS ? n : CMD_MAX_ROWS;
    Forcer f = {0};
    if (rc == 0 && n) rc = forcer_init(&f, &m, 1, n, rows, &err);
    float *logits = xmalloc((size_t)(rows + 1) * V * sizeof *logits);                     // (rows, vocab)
    float *resid = hidden ? xmalloc((size_t)(rows + 1) * (L + 1) * D * sizeof *resid) : NULL; // (rows, L + 1, hidden)
    int *read_pos = xmalloc((size_t)(rows + 1) * sizeof *read_pos);                        // (rows)
    Ranked *ranked = top_k ? xmalloc((size_t)V * sizeof *ranked) : NULL;                   // (vocab)
    Buf b = {0};
    // A chunk of rows at a time, printed as it is computed: every input was checked above.
    for (int i0 = 0; rc == 0 && i0 < n; i0 += rows) {
        int k = n - i0 < rows ? n - i0 : rows;
        for (int i = 0; i < k; i++) read_pos[i] = i0 + i;
        ForcedSeq seq = {.tokens = ids, .n_tokens = i0 + k, .start = i0, .read_pos = read_pos, .n_read = k};
        PassOut out = {.mask = n_ablate ? &mask : NULL, .logits = logits, .resid = resid};
        rc = force_group(&f, &seq, 1, &out, &err);
        for (int i = 0; rc == 0 && i < k; i++) {
            print_position(&b, i0 + i, logits + (size_t)i * V, V, (int)top_k, ranked,
                           resid ? resid + (size_t)i * (L + 1) * D : NULL, L, D);
            if (b.len > (1u << 20)) {
                write_stdout(&b);
                b.len = 0;
            }
        }
    }
    if (rc == 0) write_stdout(&b);
    buf_free(&b);
    free(ranked);
    free(logits);
    free(resid);
    free(read_pos);
    free(ids);
    free(mask.attn);
    free(mask.mlp);
    free(mask.head);
    free(steer_vec);
    forcer_free(&f);
    model_free(&m);
    return rc < 0 ? fail(&err) : EXIT_OK;
}
