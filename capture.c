// capture.c: activations out to disk in the format numpy, torch and SAELens read. bt capture
// teacher-forces a run's completions and streams the residual stream and the attention and
// MLP outputs at chosen positions into safetensors files, with an index CSV that says where
// each row comes from. Read top to bottom: the streaming safetensors writer, the rows to
// capture, the command.
#include "bt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CAPTURE_MAX_ROWS 512   // rows per forward call
#define BYTES_PER_MB 1048576.0 // [capture] sizes are MB of 2^20 bytes
#define N_SITES 3

enum { SITE_RESID, SITE_ATTN, SITE_MLP };
static const char *const site_names[N_SITES] = {"resid", "attn", "mlp"};
enum { POS_EVENTS, POS_CONTROLS, POS_WINDOW, POS_COMPLETION, POS_ALL, N_POSITIONS };
static const char *const position_names[N_POSITIONS] = {"events", "controls", "window", "completion", "all"};
enum { ROW_EVENT, ROW_CONTROL, ROW_OTHER }; // in this order rows at one position sort
static const char *const row_kind_names[] = {"event", "control", "other"};

// ----------------------------------------------------------------------------
// Streaming safetensors: the header first, with every tensor's final offsets (the shapes are
// known before anything is computed), then each tensor's rows written in place as they come.
// The bytes go to a temp file next to the final path; the caller renames it once it is whole.

typedef struct {
    const char *name;
    int n_dims;
    long long shape[3];
} StTensor;

typedef struct {
    char path[1500];          // final name
    char tmp[1600];           // the file being written
    int fd;                   // -1 when closed
    size_t data_start;        // 8 + header bytes: where tensor data begins
    size_t offset[N_SITES];   // each tensor's first byte, from data_start
    size_t row_bytes[N_SITES];
    size_t total, written;    // data bytes in all, and written so far
} StStream;

static uint16_t f32_to_bf16(float f) { // round to nearest even, as torch converts; NaN stays NaN
    uint32_t b;
    memcpy(&b, &f, 4);
    if ((b & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((b >> 16) | 0x40);
    return (uint16_t)((b + 0x7fffu + ((b >> 16) & 1)) >> 16);
}

static int st_write_at(StStream *st, const void *data, size_t n, size_t at, Err *err) {
    const char *p = data;
    while (n > 0) {
        ssize_t w = pwrite(st->fd, p, n, (off_t)at);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return err_runtime(err, "%s: write failed: %s", st->path, w < 0 ? strerror(errno) : "no progress");
        p += w, at += (size_t)w, n -= (size_t)w;
    }
    return 0;
}

static void st_abort(StStream *st) {
    if (st->fd >= 0) close(st->fd);
    if (st->tmp[0]) unlink(st->tmp);
    st->fd = -1;
    st->tmp[0] = 0;
}

// Creates the temp file of path and writes the header of tensors t[0..n) (each of row_bytes[i]
// per row along dim 0, in that order, contiguous) with metadata, a JSON object's members.
static int st_open(StStream *st, const char *path, const StTensor *t, int n, DType dtype, const char *metadata,
                   Err *err) {
    memset(st, 0, sizeof *st);
    st->fd = -1;
    snprintf(st->path, sizeof st->path, "%s", path);
    Buf header = {0};
    buf_printf(&header, "{\"__metadata__\":{%s}", metadata);
    for (int i = 0; i < n; i++) {
        size_t per_row = dtype_bytes(dtype);
        for (int d = 1; d < t[i].n_dims; d++) per_row *= (size_t)t[i].shape[d];
        st->row_bytes[i] = per_row;
        st->offset[i] = st->total;
        size_t bytes = per_row * (size_t)t[i].shape[0];
        buf_printf(&header, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", t[i].name, dtype_name(dtype));
        for (int d = 0; d < t[i].n_dims; d++) buf_printf(&header, "%s%lld", d ? "," : "", t[i].shape[d]);
        buf_printf(&header, "],\"data_offsets\":[%zu,%zu]}", st->total, st->total + bytes);
        st->total += bytes;
    }
    buf_putc(&header, '}');
    while (header.len % 8) buf_putc(&header, ' '); // the format pads the header to 8 bytes
    st->data_start = 8 + header.len;
    snprintf(st->tmp, sizeof st->tmp, "%s.tmp.%ld", path, (long)getpid());
    st->fd = open(st->tmp, O_WRONLY | O_CREAT | O_TRUNC, 0666);
    int rc = 0;
    if (st->fd < 0) {
        rc = err_runtime(err, "%s: cannot create: %s", st->tmp, strerror(errno));
        st->tmp[0] = 0;
    } else {
        unsigned char length[8];
        for (int i = 0; i < 8; i++) length[i] = (unsigned char)((uint64_t)header.len >> (8 * i));
        rc = st_write_at(st, length, 8, 0, err);
        if (rc == 0) rc = st_write_at(st, header.data, header.len, 8, err);
    }
    buf_free(&header);
    if (rc) st_abort(st);
    return rc;
}

static int st_put_row(StStream *st, int tensor, long long row, const void *data, Err *err) {
    size_t n = st->row_bytes[tensor];
    st->written += n;
    return st_write_at(st, data, n, st->data_start + st->offset[tensor] + (size_t)row * n, err);
}

// Every byte written: fsync and close, leaving the temp file for the rename.
static int st_finish(StStream *st, Err *err) {
    if (st->written != st->total)
        return err_runtime(err, "%s: %zu of %zu bytes written", st->path, st->written, st->total);
    if (fsync(st->fd) != 0) return err_runtime(err, "%s: write failed: %s", st->path, strerror(errno));
    int rc = close(st->fd);
    st->fd = -1;
    if (rc != 0) return err_runtime(err, "%s: write failed: %s", st->path, strerror(errno));
    return 0;
}

// ----------------------------------------------------------------------------
// Rows: one per activation row written, ordered by completion, then position, so that the
// teacher-forced passes produce them in file order. A position read once can feed several
// rows (two windows overlapping, one control shared by two events).

typedef struct {
    int record;          // completion: index in the generation file
    int pos;             // position in prompt + completion
    int kind;            // ROW_*
    int event_id;        // the event the row belongs to (a control: its event's id), -1 for none
    const char *trigger; // that event's trigger, "" for none (points into the events CSV)
    int offset;          // pos - pred_pos of that event or control, 0 for none
    int read;            // global read index: which forward-pass output the row copies
} CaptureRow;

// An event or control of backtracking_events.csv in the captured completions.
typedef struct {
    int record, pred_pos, kind, event_id;
    const char *trigger;
} CaptureItem;

static int cmp_row(const void *a, const void *b) {
    const CaptureRow *x = a, *y = b;
    if (x->record != y->record) return x->record - y->record;
    if (x->pos != y->pos) return x->pos - y->pos;
    if (x->kind != y->kind) return x->kind - y->kind;
    return x->event_id - y->event_id;
}

static void add_row(CaptureRow **rows, int *n, int *cap, CaptureRow r) {
    if (*n == *cap) *rows = xrealloc(*rows, (size_t)(*cap = *cap ? 2 * *cap : 1024) * sizeof **rows);
    (*rows)[(*n)++] = r;
}

// The events and controls of variant x condition, from backtracking_events.csv.
static int capture_items(const Run *run, const char *variant, const char *condition, const GenRecord *recs, int n_recs,
                         Csv *csv, CaptureItem **out, int *n_out, Err *err) {
    char path[1200];
    run_path(run, path, sizeof path, ART_EVENTS);
    *out = NULL;
    *n_out = 0;
    if (!path_exists(path)) return 0;
    if (csv_read(path, csv, err)) return -1;
    static const char *const cols[] = {"kind", "event_id", "variant", "condition", "problem_id", "sample", "trigger",
                                       "pred_pos", "prompt_tokens"};
    int col[9];
    for (int i = 0; i < 9; i++)
        if ((col[i] = csv_col(csv, cols[i])) < 0)
            return err_input(err, "%s: no column '%s' (written by another version? run detect-events again)", path,
                             cols[i]);
    CaptureItem *items = xmalloc((size_t)(csv->n_rows + 1) * sizeof *items);
    int n = 0;
    for (int r = 0; r < csv->n_rows; r++) {
        if (strcmp(csv_cell(csv, r, col[2]), variant) != 0 || strcmp(csv_cell(csv, r, col[3]), condition) != 0)
            continue;
        const char *kind = csv_cell(csv, r, col[0]), *problem = csv_cell(csv, r, col[4]);
        int sample = atoi(csv_cell(csv, r, col[5])), record = -1;
        for (int k = 0; k < n_recs && record < 0; k++)
            if (recs[k].sample == sample && strcmp(recs[k].problem_id, problem) == 0) record = k;
        CaptureItem x = {record, atoi(csv_cell(csv, r, col[7])), strcmp(kind, "control") == 0 ? ROW_CONTROL : ROW_EVENT,
                         atoi(csv_cell(csv, r, col[1])), csv_cell(csv, r, col[6])};
        if (record < 0 || atoi(csv_cell(csv, r, col[8])) != recs[record].prompt_tokens || x.pred_pos < 0 ||
            x.pred_pos >= recs[record].prompt_tokens + recs[record].n_completion) {
            free(items);
            return err_input(err, "%s:%d: %s %d does not fit the generations of %s/%s (run detect-events again)", path,
                             r + 2, kind, x.event_id, variant, condition);
        }
        items[n++] = x;
    }
    *out = items;
    *n_out = n;
    return 0;
}

// The rows positions asks for, sorted, each with its read; reads are the distinct
// (record, pos) pairs in order.
static int capture_rows(int positions, int window, const GenRecord *recs, int n_recs, const CaptureItem *items,
                        int n_items, CaptureRow **out, int *n_reads) {
    CaptureRow *rows = NULL;
    int n = 0, cap = 0;
    for (int i = 0; i < n_items; i++) {
        const CaptureItem *x = &items[i];
        if ((positions == POS_EVENTS && x->kind != ROW_EVENT) || (positions == POS_CONTROLS && x->kind != ROW_CONTROL))
            continue;
        int w = positions == POS_WINDOW ? window : 0,
            end = recs[x->record].prompt_tokens + recs[x->record].n_completion;
        for (int p = x->pred_pos - w; p <= x->pred_pos + w; p++)
            if (p >= 0 && p < end)
                add_row(&rows, &n, &cap,
                        (CaptureRow){x->record, p, x->kind, x->event_id, x->trigger, p - x->pred_pos, 0});
    }
    if (positions == POS_COMPLETION || positions == POS_ALL)
        for (int r = 0; r < n_recs; r++)
            for (int p = positions == POS_ALL ? 0 : recs[r].prompt_tokens;
                 p < recs[r].prompt_tokens + recs[r].n_completion; p++)
                add_row(&rows, &n, &cap, (CaptureRow){r, p, ROW_OTHER, -1, "", 0, 0});
    if (n) qsort(rows, (size_t)n, sizeof *rows, cmp_row);
    // Completion and all: one row per position, the event (else the control) read there if any.
    int kept = 0, reads = 0;
    for (int i = 0; i < n; i++) {
        int same = kept > 0 && rows[kept - 1].record == rows[i].record && rows[kept - 1].pos == rows[i].pos;
        if (same && (positions == POS_COMPLETION || positions == POS_ALL)) continue;
        rows[kept] = rows[i];
        rows[kept++].read = same ? reads - 1 : reads++;
    }
    *out = rows;
    *n_reads = reads;
    return kept;
}

// ----------------------------------------------------------------------------
// bt capture

// "resid,attn" -> want[SITE_*].
static int parse_sites(const char *s, int want[N_SITES], Err *err) {
    memset(want, 0, N_SITES * sizeof *want);
    const char *p = s;
    while (*p) {
        size_t len = strcspn(p, ",");
        int k = 0;
        while (k < N_SITES && !(strlen(site_names[k]) == len && strncmp(site_names[k], p, len) == 0)) k++;
        if (k == N_SITES) return err_input(err, "--sites: unknown site '%.*s' (resid, attn, mlp)", (int)len, p);
        if (want[k]) return err_input(err, "--sites: %s given twice", site_names[k]);
        want[k] = 1;
        p += len + (p[len] == ',');
    }
    if (!want[0] && !want[1] && !want[2]) return err_input(err, "--sites: no site given (resid, attn, mlp)");
    return 0;
}

// "all" or "0,5,10": the layers of each wanted site, in the order given. resid has n_layers + 1
// (0 = embeddings, l = after block l-1), attn and mlp n_layers (block l's output).
static int parse_layers(const char *s, const int want[N_SITES], int n_layers, int *layers[N_SITES], int n_sel[N_SITES],
                        Err *err) {
    for (int k = 0; k < N_SITES; k++) {
        int count = k == SITE_RESID ? n_layers + 1 : n_layers;
        layers[k] = xmalloc((size_t)(count + 1) * sizeof *layers[k]);
        n_sel[k] = 0;
        if (!want[k]) continue;
        if (strcmp(s, "all") == 0) {
            for (int l = 0; l < count; l++) layers[k][n_sel[k]++] = l;
            continue;
        }
        for (const char *p = s; *p;) {
            char *end;
            errno = 0;
            long v = strtol(p, &end, 10);
            if (end == p || errno || (*end && *end != ',') || (*end == ',' && !end[1]))
                return err_input(err, "--layers: '%s' is not 'all' or a comma-separated list of layers", s);
            if (v < 0 || v >= count)
                return err_input(err, "--layers: layer %ld does not exist for %s: it has %d..%d%s", v, site_names[k], 0,
                                 count - 1, k == SITE_RESID ? " (0 = embeddings, l = after block l-1)" : " (blocks)");
            for (int i = 0; i < n_sel[k]; i++)
                if (layers[k][i] == v) return err_input(err, "--layers: layer %ld given twice", v);
            if (n_sel[k] == count) return err_input(err, "--layers: more layers than %s has", site_names[k]);
            layers[k][n_sel[k]++] = (int)v;
            p = *end ? end + 1 : end;
        }
    }
    return 0;
}

static int capture_name_ok(const char *s) {
    if (!*s || *s == '.' || strlen(s) > 200) return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '_' ||
              *s == '-' || *s == '.'))
            return 0;
    return 1;
}

// File f of n_files of a capture: <name>.safetensors alone, else <name>-00001-of-00003.safetensors.
static void capture_file_name(char *out, size_t n, const char *name, int f, int n_files) {
    if (n_files == 1) snprintf(out, n, "%s.safetensors", name);
    else snprintf(out, n, "%s-%05d-of-%05d.safetensors", name, f + 1, n_files);
}

// Removes the files of an earlier capture of this name that the new one does not have.
static void capture_remove_stale(const Run *run, const char *name, int n_files) {
    char dir[1200], path[1500], mine[400];
    run_activation_path(run, dir, sizeof dir, "");
    DIR *d = opendir(dir);
    if (!d) return;
    size_t len = strlen(name);
    struct dirent *e;
    while ((e = readdir(d))) {
        int f, of, used = 0;
        if (strncmp(e->d_name, name, len) != 0) continue;
        const char *rest = e->d_name + len;
        int old =
            strcmp(rest, ".safetensors") == 0 ||
            (sscanf(rest, "-%5d-of-%5d.safetensors%n", &f, &of, &used) == 2 && rest[used] == 0 && strlen(rest) == 27);
        if (!old) continue;
        int keep = 0;
        for (int k = 0; k < n_files && !keep; k++) {
            capture_file_name(mine, sizeof mine, name, k, n_files);
            keep = strcmp(mine, e->d_name) == 0;
        }
        snprintf(path, sizeof path, "%s%s", dir, e->d_name);
        if (!keep) unlink(path);
    }
    closedir(d);
}

int cmd_capture(int argc, char **argv) {
    Opt opts[] = {OPT_CONFIG,
                  OPT("--variant", 1, "variant whose completions to read (default [logit_lens] variant)"),
                  OPT("--condition", 1, "condition of the generations (default baseline)"),
                  OPT("--sites", 1, "resid,attn,mlp: any of them (default resid)"),
                  OPT("--layers", 1, "all, or layers such as 0,5,10 (resid 0 = embeddings) (default all)"),
                  OPT("--positions", 1, "events | controls | window | completion | all (default events)"),
                  OPT("--dtype", 1, "f32 | bf16 (default [capture] dtype)"),
                  OPT("--name", 1, "file name stem (default <variant>_<condition>_<positions>)"),
                  OPT_END};
    Err err = {0};
    Config c;
    Run run;
    int exit_code;
    if (stage_open(argc, argv, opts, &c, &run, &exit_code)) return exit_code;
    const char *variant = opt_str(opts, "--variant", c.lens_variant),
               *condition = opt_str(opts, "--condition", "baseline");
    const char *positions_text = opt_str(opts, "--positions", "events"), *dtype_text = opt_str(opts, "--dtype", NULL);
    Model m = {0};
    int model_loaded = 0, n_recs = 0, n_items = 0, n_rows = 0, n_reads = 0, n_seqs = 0, n_files = 0;
    Tokenizer *tok = NULL;
    GenRecord *recs = NULL;
    Csv events = {0};
    CaptureItem *items = NULL;
    CaptureRow *rows = NULL;
    ForcedSeq *seqs = NULL;
    StStream *files = NULL;
    Forcer f = {0};
    int *layers[N_SITES] = {NULL, NULL, NULL}, n_sel[N_SITES], want[N_SITES];
    float *site_buf[N_SITES] = {NULL, NULL, NULL};
    unsigned char *row_out = NULL;
    Buf csv = {0};
    char path[1500], name[256];
    int positions = 0;
    while (positions < N_POSITIONS && strcmp(position_names[positions], positions_text) != 0) positions++;
    int dtype = c.capture_dtype;
    if (dtype_text)
        dtype = strcmp(dtype_text, "f32") == 0 ? CAPTURE_F32 : strcmp(dtype_text, "bf16") == 0 ? CAPTURE_BF16 : -1;
    snprintf(name, sizeof name, "%s_%s_%s", variant, condition, positions_text);
    if (opt_str(opts, "--name", NULL)) snprintf(name, sizeof name, "%s", opt_str(opts, "--name", NULL));
    if (positions == N_POSITIONS) {
        err_input(&err, "--positions: '%s' is not one of events, controls, window, completion, all", positions_text);
        goto out;
    }
    if (dtype < 0) {
        err_input(&err, "--dtype: '%s' is not f32 or bf16", dtype_text);
        goto out;
    }
    if (!capture_name_ok(name) || !capture_name_ok(variant) || !capture_name_ok(condition)) {
        err_input(&err, "capture: name '%s', variant '%s' and condition '%s' must be letters, digits, _ - . only", name,
                  variant, condition);
        goto out;
    }
    if (parse_sites(opt_str(opts, "--sites", "resid"), want, &err)) goto out;
    run_generation_path(&run, path, sizeof path, variant, condition);
    if (!exists_or_sharded(path)) {
        err_input(&err, "no generations of %s under %s in run %s (%s): run generate first", variant, condition, run.id,
                  path);
        goto out;
    }
    if (model_config_read(c.model_path, &m.cfg, &err)) goto out;
    const int L = m.cfg.n_layers, D = m.cfg.hidden_size;
    if (parse_layers(opt_str(opts, "--layers", "all"), want, L, layers, n_sel, &err)) goto out;
    if (generations_read(path, &recs, &n_recs, &err)) goto out;
    if (capture_items(&run, variant, condition, recs, n_recs, &events, &items, &n_items, &err)) goto out;
    if (positions <= POS_WINDOW && !events.cells) {
        err_input(&err,
                  "--positions %s: no events in run %s: run detect-events first (or capture --positions completion)",
                  positions_text, run.id);
        goto out;
    }
    n_rows = capture_rows(positions, c.capture_window, recs, n_recs, items, n_items, &rows, &n_reads);
    if (n_rows == 0) {
        err_input(&err,
                  "--positions %s: run %s has no %s of %s under %s: nothing to capture (try --positions completion)",
                  positions_text, run.id,
                  positions == POS_CONTROLS ? "controls"
                  : positions <= POS_WINDOW ? "events"
                                            : "completions",
                  variant, condition);
        goto out;
    }

    // Sizes: what one read holds in memory (every layer, F32) and what one row writes.
    size_t read_bytes = 0, row_out_bytes = 0, out_elem = dtype == CAPTURE_BF16 ? 2 : 4;
    for (int k = 0; k < N_SITES; k++) {
        if (!want[k]) continue;
        read_bytes += (size_t)(k == SITE_RESID ? L + 1 : L) * D * sizeof(float);
        row_out_bytes += (size_t)n_sel[k] * D * out_elem;
    }
    double budget = c.capture_max_memory_mb * BYTES_PER_MB;
    if ((double)read_bytes > budget) {
        err_input(&err, "%s: [capture] max_memory_mb = %g holds less than one position's activations (%.3f MB)", c.file,
                  c.capture_max_memory_mb, read_bytes / BYTES_PER_MB);
        goto out;
    }
    int max_reads = budget / read_bytes > n_reads ? n_reads : (int)(budget / read_bytes);
    long long rows_per_file = (long long)(c.capture_max_file_mb * BYTES_PER_MB / (double)row_out_bytes);
    if (rows_per_file < 1) rows_per_file = 1;
    if (rows_per_file > n_rows) rows_per_file = n_rows;
    n_files = (int)((n_rows + rows_per_file - 1) / rows_per_file);

    // One teacher-forced sequence per completion with reads: prompt (the one tokenization path) + completion.
    char tok_path[1200];
    snprintf(tok_path, sizeof tok_path, "%s/tokenizer.json", c.model_path);
    if (tokenizer_load(&tok, tok_path, &err) || model_load(&m, c.model_path, &err)) goto out;
    model_loaded = 1;
    seqs = xcalloc((size_t)n_rows + 1, sizeof *seqs);
    int *seq_record = xcalloc((size_t)n_rows + 1, sizeof *seq_record), max_tokens = 1;
    long long tokens_total = 0;
    TokenList prompt = {0};
    for (int i = 0; i < n_rows; i++) {
        if (i > 0 && rows[i].read == rows[i - 1].read) continue;
        if (n_seqs == 0 || seq_record[n_seqs - 1] != rows[i].record) {
            const GenRecord *rec = &recs[rows[i].record];
            prompt.n = 0;
            if (tokenizer_encode(tok, rec->prompt, strlen(rec->prompt), &prompt, &err)) break;
            if (prompt.n != rec->prompt_tokens) {
                err_input(&err,
                          "problem %s: the prompt now encodes to %d tokens, the record says %d (tokenizer changed?)",
                          rec->problem_id, prompt.n, rec->prompt_tokens);
                break;
            }
            ForcedSeq *q = &seqs[n_seqs];
            seq_record[n_seqs++] = rows[i].record;
            q->tokens = xmalloc((size_t)(prompt.n + rec->n_completion + 1) * sizeof *q->tokens);
            for (int t = 0; t < prompt.n; t++) q->tokens[t] = prompt.v[t].id;
            memcpy(q->tokens + prompt.n, rec->completion_ids, (size_t)rec->n_completion * sizeof *q->tokens);
            q->read_pos = xmalloc((size_t)(prompt.n + rec->n_completion + 1) * sizeof *q->read_pos);
        }
        ForcedSeq *q = &seqs[n_seqs - 1];
        q->read_pos[q->n_read++] = rows[i].pos;
        q->n_tokens = rows[i].pos + 1;
    }
    tokens_free(&prompt);
    for (int s = 0; s < n_seqs; s++) {
        tokens_total += seqs[s].n_tokens;
        if (seqs[s].n_tokens > max_tokens) max_tokens = seqs[s].n_tokens;
    }
    if (err.msg[0]) {
        free(seq_record);
        goto out;
    }
    int n_slots = n_seqs < c.batch_size ? n_seqs : c.batch_size;
    if (forcer_init(&f, &m, n_slots, max_tokens, CAPTURE_MAX_ROWS, &err)) {
        free(seq_record);
        goto out;
    }
    for (int k = 0; k < N_SITES; k++)
        if (want[k]) site_buf[k] = xmalloc((size_t)max_reads * (k == SITE_RESID ? L + 1 : L) * D * sizeof(float));
    row_out = xmalloc((size_t)(L + 1) * D * out_elem);

    // The files' headers, and the index CSV.
    Buf meta = {0};
    files = xcalloc((size_t)n_files, sizeof *files);
    for (int i = 0; i < n_files; i++) files[i].fd = -1;
    buf_puts(
        &csv,
        "row,file,file_row,run_id,variant,condition,problem_id,sample,prompt_tokens,pos,token_id,token,kind,event_id,"
        "trigger,offset\n");
    for (int i = 0, s = 0; i < n_rows; i++) {
        const CaptureRow *r = &rows[i];
        const GenRecord *rec = &recs[r->record];
        while (seq_record[s] != r->record) s++; // rows and sequences are both in record order
        int token = seqs[s].tokens[r->pos], n_bytes = 0;
        const char *text = tokenizer_token_bytes(tok, token, &n_bytes);
        capture_file_name(path, sizeof path, name, (int)(i / rows_per_file), n_files);
        buf_printf(&csv, "%d,%s,%lld,%s,", i, path, i % rows_per_file, run.id);
        buf_csv_field(&csv, variant, strlen(variant));
        buf_putc(&csv, ',');
        buf_csv_field(&csv, condition, strlen(condition));
        buf_putc(&csv, ',');
        buf_csv_field(&csv, rec->problem_id, strlen(rec->problem_id));
        buf_printf(&csv, ",%d,%d,%d,%d,", rec->sample, rec->prompt_tokens, r->pos, token);
        Buf escaped = {0}; // the token as a JSON string, so spaces and newlines stay visible
        buf_json_string(&escaped, text ? text : "", text ? (size_t)n_bytes : 0);
        buf_csv_field(&csv, escaped.data, escaped.len);
        buf_free(&escaped);
        buf_printf(&csv, ",%s,%d,", row_kind_names[r->kind], r->event_id);
        buf_csv_field(&csv, r->trigger, strlen(r->trigger));
        buf_printf(&csv, ",%d\n", r->offset);
    }
    free(seq_record);

    // Groups of completions (as many as fit the slots and the memory bound), or one long
    // completion in pieces; each group's rows go straight to their files. --shard K/N, when the
    // heavy stages get it, splits here: a shard takes its share of seqs and writes its own files.
    ProgressClock pc;
    progress_start(&pc);
    double t0 = now_seconds();
    long long tokens_done = 0, bytes_written = 0;
    int next_row = 0, rc = 0;
    for (int s0 = 0, base = 0; s0 < n_seqs && rc == 0;) {
        int n = 0, reads = 0;
        while (s0 + n < n_seqs && n < n_slots && reads + seqs[s0 + n].n_read <= max_reads)
            reads += seqs[s0 + n++].n_read;
        int pieces = n == 0; // one completion alone holds more reads than memory: in pieces of max_reads
        if (pieces) n = 1, reads = seqs[s0].n_read;
        for (int r0 = 0; r0 < reads && rc == 0;) {
            int r1 = pieces && reads - r0 > max_reads ? r0 + max_reads : reads;
            ForcedSeq piece = seqs[s0];
            if (pieces) {
                piece.start = r0 ? seqs[s0].read_pos[r0 - 1] + 1 : 0;
                piece.read_pos = seqs[s0].read_pos + r0;
                piece.n_read = r1 - r0;
                piece.n_tokens = piece.read_pos[piece.n_read - 1] + 1;
            }
            PassOut pass = {.resid = site_buf[SITE_RESID], .attn = site_buf[SITE_ATTN], .mlp = site_buf[SITE_MLP]};
            if ((rc = force_group(&f, pieces ? &piece : seqs + s0, n, &pass, &err))) break;
            for (int i = 0; i < n; i++) tokens_done += pieces ? piece.n_tokens - piece.start : seqs[s0 + i].n_tokens;
            // The rows of this pass's reads, in order.
            for (; rc == 0 && next_row < n_rows && rows[next_row].read < base + r1; next_row++) {
                int fi = (int)(next_row / rows_per_file), read = rows[next_row].read - base - r0;
                long long local = next_row % rows_per_file,
                          in_file = fi == n_files - 1 ? n_rows - fi * rows_per_file : rows_per_file;
                StStream *st = &files[fi];
                if (local == 0) {
                    meta.len = 0;
                    buf_printf(&meta, "\"format\":\"pt\",\"producer\":\"bt %s\",\"run_id\":", BT_VERSION);
                    buf_json_string(&meta, run.id, strlen(run.id));
                    buf_puts(&meta, ",\"model\":");
                    buf_json_string(&meta, c.model_path, strlen(c.model_path));
                    buf_printf(&meta,
                               ",\"variant\":\"%s\",\"condition\":\"%s\",\"positions\":\"%s\",\"index\":\"%s.csv\","
                               "\"first_row\":\"%lld\",\"n_rows\":\"%lld\",\"sites\":\"",
                               variant, condition, positions_text, name, fi * rows_per_file, in_file);
                    for (int k = 0, first = 1; k < N_SITES; k++)
                        if (want[k]) buf_printf(&meta, "%s%s", first ? "" : ",", site_names[k]), first = 0;
                    buf_putc(&meta, '"');
                    StTensor t[N_SITES];
                    int nt = 0;
                    for (int k = 0; k < N_SITES; k++) {
                        if (!want[k]) continue;
                        buf_printf(&meta, ",\"%s_layers\":\"", site_names[k]);
                        for (int l = 0; l < n_sel[k]; l++) buf_printf(&meta, "%s%d", l ? "," : "", layers[k][l]);
                        buf_putc(&meta, '"');
                        t[nt++] = (StTensor){site_names[k], 3, {in_file, n_sel[k], D}};
                    }
                    run_activation_path(&run, path, sizeof path, "");
                    if ((rc = mkdir_p(path, &err))) break;
                    char file[400];
                    capture_file_name(file, sizeof file, name, fi, n_files);
                    run_activation_path(&run, path, sizeof path, file);
                    if ((rc = st_open(st, path, t, nt, dtype == CAPTURE_BF16 ? DT_BF16 : DT_F32, meta.data, &err)))
                        break;
                }
                for (int k = 0, tensor = 0; k < N_SITES && rc == 0; k++) {
                    if (!want[k]) continue;
                    int per_read = k == SITE_RESID ? L + 1 : L;
                    for (int l = 0; l < n_sel[k]; l++) {
                        const float *src = site_buf[k] + ((size_t)read * per_read + layers[k][l]) * D;
                        if (dtype == CAPTURE_BF16)
                            for (int d = 0; d < D; d++) ((uint16_t *)row_out)[(size_t)l * D + d] = f32_to_bf16(src[d]);
                        else memcpy(row_out + (size_t)l * D * 4, src, (size_t)D * 4);
                    }
                    rc = st_put_row(st, tensor++, local, row_out, &err);
                    bytes_written += (long long)st->row_bytes[tensor - 1];
                }
                if (rc == 0 && local == in_file - 1) rc = st_finish(st, &err);
            }
            progress_eta(&pc, "capture", next_row, n_rows, "rows", (double)tokens_done, (double)tokens_done,
                         (double)tokens_total);
            r0 = r1;
        }
        base += reads;
        s0 += n;
    }
    buf_free(&meta);
    // Whole files only: rename them all into place, then the index; a failure undoes the renames.
    int renamed = 0;
    while (rc == 0 && renamed < n_files) {
        if (rename(files[renamed].tmp, files[renamed].path) != 0) {
            rc = err_runtime(&err, "%s: cannot rename into place: %s", files[renamed].path, strerror(errno));
            break;
        }
        files[renamed++].tmp[0] = 0;
    }
    snprintf(tok_path, sizeof tok_path, "%s.csv", name);
    run_activation_path(&run, path, sizeof path, tok_path);
    if (rc == 0) rc = write_file_atomic(path, csv.data, csv.len, &err);
    if (rc) {
        for (int i = 0; i < renamed; i++) unlink(files[i].path);
        goto out;
    }
    capture_remove_stale(&run, name, n_files);
    double secs = now_seconds() - t0;
    capture_file_name(tok_path, sizeof tok_path, name, 0, n_files);
    run_activation_path(&run, path, sizeof path, tok_path);
    printf("capture: %d rows of %s", n_rows, positions_text);
    for (int k = 0; k < N_SITES; k++)
        if (want[k]) printf(", %s %d layers", site_names[k], n_sel[k]);
    printf(" (%s) -> %s%s (%.1f MB in %d file%s) and %s.csv\n", dtype == CAPTURE_BF16 ? "BF16" : "F32", path,
           n_files > 1 ? " ..." : "", bytes_written / BYTES_PER_MB, n_files, n_files > 1 ? "s" : "", name);
    printf("capture: %lld positions forced in %.2f s: %.1f tok/s, %.1f rows/s, %.1f MB/s written\n", tokens_done, secs,
           tokens_done / secs, n_rows / secs, bytes_written / BYTES_PER_MB / secs);
out:
    for (int i = 0; files && i < n_files; i++) st_abort(&files[i]);
    free(files);
    for (int s = 0; s < n_seqs; s++) {
        free(seqs[s].tokens);
        free(seqs[s].read_pos);
    }
    free(seqs);
    for (int k = 0; k < N_SITES; k++) {
        free(layers[k]);
        free(site_buf[k]);
    }
    free(row_out);
    free(rows);
    free(items);
    csv_free(&events);
    buf_free(&csv);
    forcer_free(&f);
    generations_free(recs, n_recs);
    if (tok) tokenizer_free(tok);
    if (model_loaded) model_free(&m);
    config_free(&c);
    return err.msg[0] ? fail(&err) : 0;
}
