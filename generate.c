// generate.c: sampling and generation, right after the forward pass. The experiment's
// conditions and their ablation masks, the sampler (temperature, top-k, top-p, in the
// order of Hugging Face's logits processors), the one batched generation loop over KV
// slots, the records it appends, and the commands generate and generate-ids.
// Read top to bottom: conditions, sampler, the generation loop, records, commands.
#include "bt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define GEN_MIN_LOGIT_NATS 40 // tokens this far (after temperature) below the best carry < 1e-17 of the mass
#define SAMPLER_FIRST_SORT 64 // candidates the sampler sorts first; it takes more only when it must
#define SAMPLER_HEAP_MAX 256  // top-k up to this finds its k-th largest logit first and skips what falls below
#define SAMPLER_Z_MARGIN 1e-6 // below the k-th best z by this much a token's float weight is strictly smaller

// ----------------------------------------------------------------------------
// Conditions: what a generation file was generated under.

int condition_parse(const char *name, Condition *out) {
    static const char *const kinds[N_CONDITIONS] = {"baseline", "targeted_ablation", "random_ablation"};
    *out = (Condition){-1, 0};
    for (int k = 0; name && k < N_CONDITIONS; k++) {
        size_t n = strlen(kinds[k]);
        if (strncmp(name, kinds[k], n) != 0) continue;
        if (name[n] == 0) return *out = (Condition){k, 0}, 0;
        char *end;
        long draw = k == COND_RANDOM && name[n] == '_' ? strtol(name + n + 1, &end, 10) : 0;
        if (draw >= 1 && draw <= MAX_RANDOM_DRAWS && *end == 0 && name[n + 1] != '0')
            return *out = (Condition){k, (int)draw}, 0;
    }
    return -1;
}

void condition_format(const Condition *c, char *out, size_t n) {
    static const char *const kinds[N_CONDITIONS] = {"baseline", "targeted_ablation", "random_ablation"};
    if (c->kind == COND_RANDOM && c->draw > 0) snprintf(out, n, "%s_%d", kinds[c->kind], c->draw);
    else snprintf(out, n, "%s", kinds[c->kind]);
}

// The layers a condition ablates (none for baseline) and its AblationMask, from the
// ablation design ablation-scan wrote into the run.
static int condition_mask(const Config *c, const Run *run, const Model *m, const Condition *cond, LayerSet *set,
                          AblationMask *mask, float **means, Err *err) {
    memset(set, 0, sizeof *set);
    memset(mask, 0, sizeof *mask);
    if (cond->kind == COND_BASELINE) return 0;
    int n_layers = m->cfg.n_layers;
    if (ablation_design_read(run, n_layers, cond->kind == COND_RANDOM ? cond->draw : 0, set, err)) return -1;
    set->kind = c->ablation_kind;
    if (layer_set_mask(set, &m->cfg, mask, err)) return -1;
    mask->kind = c->ablation_kind;
    if (c->ablation_kind == ABLATE_MEAN) {
        if (component_means_read(run, &m->cfg, &means[0], &means[1], err)) return -1;
        if (set->n_attn_heads && head_means_read(run, &m->cfg, &means[2], err)) return -1;
        mask->attn_mean = means[0];
        mask->mlp_mean = means[1];
        mask->head_mean = means[2];
    }
    return 0;
}

// ----------------------------------------------------------------------------
// Sampler: Hugging Face's temperature, top-k and top-p warpers, in that order, then a
// draw from what is left. Candidates are ordered by weight (ties to the lower id).

// The run's sampler: the config's values, and for a key it leaves out the model's
// generation_config.json, as Hugging Face's generate() would use it.
Sampler config_sampler(const Config *c, const ModelConfig *mc) {
    Sampler s = {c->temperature, c->top_k, c->top_p};
    if (isnan(s.temperature)) s.temperature = mc->gen_do_sample ? mc->gen_temperature : 0;
    if (s.top_k < 0) s.top_k = mc->gen_top_k;
    if (isnan(s.top_p)) s.top_p = mc->gen_top_p;
    return s;
}

static int cmp_candidate(const void *a, const void *b) {
    const SampleCandidate *x = a, *y = b;
    if (x->weight != y->weight) return x->weight < y->weight ? 1 : -1;
    return x->id - y->id;
}

static void swap_candidates(SampleCandidate *a, SampleCandidate *b) {
    SampleCandidate t = *a;
    *a = *b;
    *b = t;
}

// Moves the m best of a[0..n) to a[0..m), in no order (quickselect, median-of-three pivots).
static void select_best(SampleCandidate *a, int n, int m) {
    int lo = 0, hi = n - 1;
    while (lo < hi && m > lo && m <= hi) {
        int mid = lo + (hi - lo) / 2;
        if (cmp_candidate(&a[mid], &a[lo]) < 0) swap_candidates(&a[mid], &a[lo]);
        if (cmp_candidate(&a[hi], &a[lo]) < 0) swap_candidates(&a[hi], &a[lo]);
        if (cmp_candidate(&a[hi], &a[mid]) < 0) swap_candidates(&a[hi], &a[mid]);
        SampleCandidate pivot = a[mid];
        int i = lo, j = hi;
        while (i <= j) {
            while (cmp_candidate(&a[i], &pivot) < 0) i++;
            while (cmp_candidate(&a[j], &pivot) > 0) j--;
            if (i <= j) swap_candidates(&a[i++], &a[j--]);
        }
        if (m <= j) hi = j;
        else if (m >= i) lo = i;
        else break;
    }
}

// The k-th largest of v[0..n) (k <= n, k <= SAMPLER_HEAP_MAX): a min-heap of the k best so far,
// whose root most values fail to beat, so one comparison each.
static float kth_largest(const float *v, int n, int k) {
    float heap[SAMPLER_HEAP_MAX];
    for (int i = 0; i < k; i++) { // sift up
        int at = i;
        for (; at > 0 && heap[(at - 1) / 2] > v[i]; at = (at - 1) / 2) heap[at] = heap[(at - 1) / 2];
        heap[at] = v[i];
    }
    for (int i = k; i < n; i++) {
        if (!(v[i] > heap[0])) continue;
        int at = 0; // replace the root, sift down
        for (int c = 1; c < k; at = c, c = 2 * c + 1) {
            if (c + 1 < k && heap[c + 1] < heap[c]) c++;
            if (heap[c] >= v[i]) break;
            heap[at] = heap[c];
        }
        heap[at] = v[i];
    }
    return heap[0];
}

int sampler_filter(const Sampler *s, const float *logits, int vocab, SampleCandidate *out) {
    float max = logits[0];
    for (int i = 1; i < vocab; i++)
        if (logits[i] > max) max = logits[i];
    // z = (logit - max) / T rises with the logit, so with top-k every token whose z is below
    // the k-th best z by SAMPLER_Z_MARGIN has a float weight strictly below the k-th's and
    // sorts after everything top-k keeps: it needs no exp and no place among the candidates.
    // n_all counts them too, for top-k's tests; their mass (in sum) would only matter if
    // top-k kept every candidate, and then none was skipped.
    double z_floor = -GEN_MIN_LOGIT_NATS;
    if (s->top_k > 0 && s->top_k <= SAMPLER_HEAP_MAX && s->top_k < vocab) {
        double z_k = (kth_largest(logits, vocab, s->top_k) - max) / s->temperature - SAMPLER_Z_MARGIN;
        if (z_k > z_floor) z_floor = z_k;
    }
    int n = 0, n_all = 0;
    double sum = 0;
    for (int i = 0; i < vocab; i++) {
        double z = (logits[i] - max) / s->temperature;
        if (z < -GEN_MIN_LOGIT_NATS) continue;
        n_all++;
        if (z < z_floor) continue;
        double w = exp(z);
        out[n++] = (SampleCandidate){.id = i, .logit = logits[i], .weight = (float)w};
        sum += w;
    }
    // Only the best few are ever needed in order: sort the best m, and take more while
    // top-k's ties or top-p's mass reach past them (the same result as sorting all n).
    for (int m = n < SAMPLER_FIRST_SORT ? n : SAMPLER_FIRST_SORT;; m = 2 * m < n ? 2 * m : n) {
        if (s->top_k > 0 && m < n && m <= s->top_k) continue;
        select_best(out, n, m);
        qsort(out, (size_t)m, sizeof *out, cmp_candidate);
        // top-k keeps every token whose logit reaches the k-th largest (ties kept, as torch.topk's threshold).
        int k_end = n;
        double k_sum = sum;
        if (s->top_k > 0 && s->top_k < n_all) {
            k_end = s->top_k;
            while (k_end < m && out[k_end].logit == out[s->top_k - 1].logit) k_end++;
            if (k_end == m && m < n) continue; // ties may go on past the sorted part
            if (k_end < n_all) {
                k_sum = 0;
                for (int i = 0; i < k_end; i++) k_sum += out[i].weight;
            }
        }
        // top-p keeps the most likely tokens until their mass reaches top_p (at least one).
        double cum = 0;
        int keep = 0;
        while (keep < k_end && keep < m) {
            cum += out[keep++].weight / k_sum;
            if (cum >= s->top_p) break;
        }
        if (cum < s->top_p && keep < k_end) continue; // the mass goes on past the sorted part
        double kept = 0;
        for (int i = 0; i < keep; i++) kept += out[i].weight;
        for (int i = 0; i < keep; i++) out[i].prob = out[i].weight / kept;
        return keep;
    }
}

// The first of equal maxima, as torch.argmax.
static int argmax(const float *v, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

int sample_token(const Sampler *s, const float *logits, int vocab, Rng *rng, SampleCandidate *scratch) {
    if (s->temperature <= 0) return argmax(logits, vocab);
    int n = sampler_filter(s, logits, vocab, scratch);
    double kept = 0;
    for (int i = 0; i < n; i++) kept += scratch[i].weight;
    double u = rng_uniform(rng) * kept;
    for (int i = 0; i < n; i++) {
        u -= scratch[i].weight;
        if (u < 0) return scratch[i].id;
    }
    return scratch[n - 1].id;
}

// ----------------------------------------------------------------------------
// The generation loop: continuous batching over batch_size KV slots. A free slot takes
// the next sequence; each forward call feeds every running slot its next decode token or
// its next chunk of prompt; a finished sequence frees its slot at once. Every sequence
// samples from its own stream, so what it generates does not depend on its neighbours.

int generate_batch(const Model *m, GenSeq *seqs, int n_seqs, const GenParams *p, Err *err) {
    if (n_seqs == 0) return 0;
    int n_slots = p->batch_size < n_seqs ? p->batch_size : n_seqs, vocab = m->cfg.vocab_size;
    int max_seq = 1;
    for (int i = 0; i < n_seqs; i++) {
        if (seqs[i].n_prompt < 1) return err_input(err, "generate: sequence %d has an empty prompt", i);
        if (seqs[i].n_prompt + seqs[i].max_new > max_seq) max_seq = seqs[i].n_prompt + seqs[i].max_new;
    }
    if (max_seq > p->max_seq) max_seq = p->max_seq;
    int max_rows = n_slots + GEN_PREFILL_ROWS;
    RunState *state = runstate_new(m, n_slots, max_seq, max_rows, err);
    if (!state) return -1;
    int *slot_seq = xmalloc((size_t)n_slots * sizeof *slot_seq); // (n_slots) sequence in each slot, -1 = free
    int *row_token = xmalloc((size_t)max_rows * sizeof *row_token);   // (max_rows) of one forward call
    int *row_slot = xmalloc((size_t)max_rows * sizeof *row_slot);     // (max_rows)
    int *row_pos = xmalloc((size_t)max_rows * sizeof *row_pos);       // (max_rows)
    int *row_logits = xmalloc((size_t)max_rows * sizeof *row_logits); // (max_rows) output row, -1 = none
    const AblationMask **row_mask = xmalloc((size_t)max_rows * sizeof *row_mask); // (max_rows)
    float *logits = xmalloc((size_t)n_slots * (size_t)vocab * sizeof *logits);     // (n_slots, vocab)
    int *logit_slot = xmalloc((size_t)n_slots * sizeof *logit_slot);  // (n_slots) slot of each logits row
    int n_scratch = bt_threads; // sampling threads, each with a (vocab) scratch
    SampleCandidate *scratch = xmalloc((size_t)n_scratch * vocab * sizeof *scratch);
    int *sampled = xmalloc((size_t)n_slots * sizeof *sampled); // (n_slots) token drawn for each logits row
    for (int s = 0; s < n_slots; s++) slot_seq[s] = -1;
    int next_seq = 0, n_done = 0, rc = 0;
    while (rc == 0 && n_done < n_seqs) {
        for (int s = 0; s < n_slots; s++)
            if (slot_seq[s] < 0 && next_seq < n_seqs) {
                slot_seq[s] = next_seq;
                seqs[next_seq].n_fed = 0;
                seqs[next_seq].eos_id = -1;
                seqs[next_seq++].start_s = now_seconds();
            }
        int n = 0, n_out = 0, budget = GEN_PREFILL_ROWS;
        for (int s = 0; s < n_slots; s++) {
            if (slot_seq[s] < 0) continue;
            GenSeq *q = &seqs[slot_seq[s]];
            if (q->n_fed < q->n_prompt) {
                int take = q->n_prompt - q->n_fed;
                if (take > budget) take = budget;
                if (take == 0) continue;
                budget -= take;
                for (int i = 0; i < take; i++, n++) {
                    row_token[n] = q->prompt[q->n_fed + i];
                    row_slot[n] = s;
                    row_pos[n] = q->n_fed + i;
                    row_logits[n] = -1;
                    row_mask[n] = p->mask;
                }
                q->n_fed += take;
                if (q->n_fed == q->n_prompt) { // the prompt is in: its last row predicts the first token
                    row_logits[n - 1] = n_out;
                    logit_slot[n_out++] = s;
                }
            } else {
                row_token[n] = q->ids[q->n_ids - 1];
                row_slot[n] = s;
                row_pos[n] = q->n_prompt + q->n_ids - 1;
                row_logits[n] = n_out;
                row_mask[n] = p->mask;
                logit_slot[n_out++] = s;
                n++;
            }
        }
        Forward f = {.n = n, .token = row_token, .slot = row_slot, .pos = row_pos, .mask = p->mask ? row_mask : NULL,
                     .logits = logits, .logits_row = row_logits};
        if (n > 0 && (rc = model_forward(m, state, &f, err))) break;
        // Each sequence draws from its own generator, so threads may sample rows in any order.
#pragma omp parallel for num_threads(n_scratch) schedule(dynamic, 1) if (n_out >= 4)
        for (int o = 0; o < n_out; o++) {
            Rng *rng = &seqs[slot_seq[logit_slot[o]]].rng;
            SampleCandidate *mine = scratch + (size_t)thread_id() * vocab;
            sampled[o] = sample_token(&p->sampler, logits + (size_t)o * vocab, vocab, rng, mine);
        }
        for (int o = 0; o < n_out && rc == 0; o++) {
            int s = logit_slot[o], index = slot_seq[s];
            GenSeq *q = &seqs[index];
            int token = sampled[o], is_eos = 0;
            if (q->n_ids == 0) q->first_token_s = now_seconds();
            for (int e = 0; e < m->cfg.n_eos && !p->ignore_eos; e++) is_eos |= token == m->cfg.eos_ids[e];
            if (is_eos) {
                q->eos_id = token;
                q->finish_reason = "eos";
            } else {
                q->ids[q->n_ids++] = token;
                if (q->n_ids == q->max_new) q->finish_reason = "length";
                else if (q->n_prompt + q->n_ids > max_seq) q->finish_reason = "max_seq_len"; // no room to feed it
            }
            if (q->finish_reason) {
                q->end_s = now_seconds();
                slot_seq[s] = -1;
                n_done++;
                if (p->on_finish) rc = p->on_finish(p->ctx, index, err);
            }
        }
        if (p->on_step && rc == 0) p->on_step(p->ctx);
    }
    free(slot_seq);
    free(row_token);
    free(row_slot);
    free(row_pos);
    free(row_logits);
    free(row_mask);
    free(logits);
    free(logit_slot);
    free(scratch);
    free(sampled);
    runstate_free(state);
    return rc;
}

// ----------------------------------------------------------------------------
// Generation records: one JSON line per completion, appended in (problem, sample)
// order as soon as every record before it is out, so a file never depends on batch
// size or threads, and a crash loses at most the completions still running.

// Renders a variant template: every {question} replaced by the question.
char *render_prompt(const char *template_text, const char *question) {
    Buf b = {0};
    const char *p = template_text, *q;
    while ((q = strstr(p, "{question}"))) {
        buf_append(&b, p, (size_t)(q - p));
        buf_puts(&b, question);
        p = q + strlen("{question}");
    }
    buf_puts(&b, p);
    return b.data;
}

// Seed of one completion: a function of (run seed, problem id, sample) only,
// so the same completion is drawn whatever else is in its batch.
static uint64_t completion_seed(long long run_seed, const char *problem_id, int sample) {
    return seed_mix(seed_mix((uint64_t)run_seed, fnv1a64(problem_id, strlen(problem_id))), (uint64_t)sample);
}

// Reads the (problem_id, sample) pairs already in a generation file; a torn
// last line (a crash mid-append) is cut off so the file holds whole records.
static int resume_scan(const char *path, char ***done_ids, int **done_samples, int *n_done, Err *err) {
    *done_ids = NULL;
    *done_samples = NULL;
    *n_done = 0;
    if (!path_exists(path)) return 0;
    Buf text = {0};
    if (read_file(path, &text, err)) return -1;
    size_t good_end = 0;
    int line_no = 0;
    for (size_t at = 0; at < text.len;) {
        char *nl = memchr(text.data + at, '\n', text.len - at);
        line_no++;
        if (!nl) break; // no newline: torn
        Json j;
        Err perr;
        size_t len = (size_t)(nl - (text.data + at));
        if (json_parse(&j, text.data + at, len, path, &perr) == 0) {
            char *id = json_strdup(&j, json_key(&j, 0, "problem_id"));
            long long sample;
            if (id && json_int(&j, json_key(&j, 0, "sample"), &sample) == 0) {
                *done_ids = xrealloc(*done_ids, (size_t)(*n_done + 1) * sizeof **done_ids);
                *done_samples = xrealloc(*done_samples, (size_t)(*n_done + 1) * sizeof **done_samples);
                (*done_ids)[*n_done] = id;
                (*done_samples)[(*n_done)++] = (int)sample;
                json_free(&j);
                at += len + 1;
                good_end = at;
                continue;
            }
            free(id);
            json_free(&j);
        }
        if (nl + 1 != text.data + text.len) { // a bad line before the end is not a torn write
            buf_free(&text);
            return err_input(err, "%s:%d: not a generation record; remove the file to regenerate", path, line_no);
        }
        break;
    }
    int rc = 0;
    if (good_end != text.len) {
        progress("generate: %s: dropping a torn last record (%zu bytes) left by an interrupted run\n", path,
                 text.len - good_end);
        rc = write_file_atomic(path, text.data, good_end, err);
    }
    buf_free(&text);
    return rc;
}

// One completion of a variant to produce, and where its record goes.
typedef struct {
    int problem;    // index into the problems
    int sample;     // 0 .. samples_per_problem-1
    uint64_t seed;  // of its sampling stream
    char *prompt;   // rendered template
    TokenList prompt_tokens;
    int *prompt_ids; // (prompt_tokens.n)
    char *record;   // the finished JSONL line, until written
} Job;

// What the records of one generation file need while the loop runs.
typedef struct {
    const Config *c;
    const Problem *problems;
    const char *variant, *condition;
    const Tokenizer *tok;
    const LayerSet *set;   // what the condition ablates
    const char *steering_json; // how a steering condition steers (a JSON object), NULL for the others
    int thinking_open;     // the variant's prompt leaves <think> open
    Job *jobs;             // (n_jobs)
    GenSeq *seqs;          // (n_jobs): seqs[i] generates jobs[i]
    int n_jobs, n_done_before, next_write, n_finished;
    const char *path, *timing_path;
    ProgressClock clock;
} RecordWriter;

// Renders a finished completion as one JSON line.
static char *job_record(const RecordWriter *w, const Job *job, const GenSeq *q) {
    const Problem *pr = &w->problems[job->problem];
    Buf b = {0}, text = {0};
    tokenizer_decode(w->tok, q->ids, q->n_ids, &text, NULL);
    if (!text.data) buf_append(&text, "", 0);
    char predicted[256];
    answer_extract(text.data, text.len, w->thinking_open, predicted, sizeof predicted);
    buf_puts(&b, "{\"problem_id\": ");
    buf_json_string(&b, pr->id, strlen(pr->id));
    buf_puts(&b, ", \"variant\": ");
    buf_json_string(&b, w->variant, strlen(w->variant));
    buf_printf(&b, ", \"condition\": \"%s\", \"sample\": %d, \"seed\": %llu, \"prompt\": ", w->condition, job->sample,
               (unsigned long long)job->seed);
    buf_json_string(&b, job->prompt, strlen(job->prompt));
    buf_printf(&b, ", \"prompt_tokens\": %d, \"completion\": ", job->prompt_tokens.n);
    buf_json_string(&b, text.data, text.len);
    buf_puts(&b, ", \"completion_ids\": [");
    for (int i = 0; i < q->n_ids; i++) buf_printf(&b, "%s%d", i ? "," : "", q->ids[i]);
    buf_printf(&b, "], \"completion_tokens\": %d, \"finish_reason\": \"%s\", \"gold\": ", q->n_ids, q->finish_reason);
    buf_json_string(&b, pr->gold, strlen(pr->gold));
    buf_puts(&b, ", \"predicted\": ");
    buf_json_string(&b, predicted, strlen(predicted));
    buf_printf(&b, ", \"correct\": %s, \"ablation\": ", answer_correct(predicted, pr->gold) ? "true" : "false");
    if (w->set->n_attn + w->set->n_mlp + w->set->n_attn_heads) layer_set_json(&b, w->set);
    else buf_puts(&b, "null");
    if (w->steering_json) buf_printf(&b, ", \"steering\": %s", w->steering_json);
    buf_puts(&b, "}\n");
    buf_free(&text);
    return b.data;
}

// Progress from the first steps on: tokens generated against the budget (max_new_tokens for every
// completion still running, what it took for each finished one), at most every progress_every_s().
static void generation_progress(void *ctx) {
    RecordWriter *w = ctx;
    if (w->n_finished < w->n_jobs && now_seconds() - w->clock.t0 - w->clock.last_s < progress_every_s()) return;
    long long made = 0, budget = 0;
    for (int i = 0; i < w->n_jobs; i++) {
        made += w->seqs[i].n_ids;
        budget += w->seqs[i].finish_reason ? w->seqs[i].n_ids : w->seqs[i].max_new;
    }
    char stage[300];
    snprintf(stage, sizeof stage, "generate %s/%s", w->variant, w->condition);
    progress_eta(&w->clock, stage, w->n_done_before + w->n_finished, w->n_done_before + w->n_jobs, "completions",
                 (double)made, (double)made, (double)budget);
}

// on_finish of the loop: the record of sequence i, then every record that is next in
// job order goes out (appended with fsync), with its timing in the sidecar.
static int record_finished(void *ctx, int i, Err *err) {
    RecordWriter *w = ctx;
    w->jobs[i].record = job_record(w, &w->jobs[i], &w->seqs[i]);
    w->n_finished++;
    int rc = 0;
    while (rc == 0 && w->next_write < w->n_jobs && w->jobs[w->next_write].record) {
        Job *job = &w->jobs[w->next_write];
        const GenSeq *q = &w->seqs[w->next_write];
        rc = append_durable(w->path, job->record, strlen(job->record), err);
        Buf timing = {0};
        double secs = q->end_s - q->start_s;
        const char *id = w->problems[job->problem].id;
        buf_puts(&timing, "{\"problem_id\": ");
        buf_json_string(&timing, id, strlen(id));
        buf_printf(&timing, ", \"sample\": %d, \"completion_tokens\": %d, \"wall_s\": %.3f, \"tokens_per_s\": %.2f, "
                            "\"threads\": %d, \"batch_size\": %d}\n",
                   job->sample, q->n_ids, secs, secs > 0 ? q->n_ids / secs : 0.0, bt_threads, w->c->batch_size);
        if (rc == 0) rc = append_durable(w->timing_path, timing.data, timing.len, err);
        buf_free(&timing);
        free(job->record);
        job->record = NULL;
        w->next_write++;
    }
    generation_progress(w);
    return rc;
}

// Generates every missing completion of one variant under one condition.
static int generate_variant(const Config *c, const Run *run, const Model *m, const Tokenizer *tok,
                            const Problem *problems, int n_problems, const Variant *variant, const char *condition,
                            const AblationMask *mask, const LayerSet *set, const char *steering_json,
                            const Shard *shard, Err *err) {
    char path[1300], timing_path[1400];
    run_generation_path(run, path, sizeof path, variant->name, condition);
    // A shard appends to its own file (its share of the problems: a problem's samples stay together).
    char what[300];
    snprintf(what, sizeof what, "%s/%s", variant->name, condition);
    Buf set_json = {0};
    layer_set_json(&set_json, set);
    if (steering_json) buf_puts(&set_json, steering_json); // a steered file depends on its vector too
    ShardInfo info = {
        "generate", what, n_problems, -1, seed_mix(config_digest(c), fnv1a64(set_json.data, set_json.len)), 1, NULL};
    buf_free(&set_json);
    int first_problem, end_problem;
    shard_range(shard, n_problems, NULL, &first_problem, &end_problem);
    if (shard->n) {
        if (shard_begin(run, path, shard, &info, err)) return -1;
        char unsharded[1300];
        snprintf(unsharded, sizeof unsharded, "%s", path);
        shard_file(unsharded, shard, path, sizeof path);
    }
    snprintf(timing_path, sizeof timing_path, "%.*s.timing.jsonl", (int)(strlen(path) - 6), path);
    char **done_ids;
    int *done_samples, n_done;
    if (resume_scan(path, &done_ids, &done_samples, &n_done, err)) return -1;
    // The work list: every (problem, sample) without a record, in order.
    int n_total = n_problems * c->samples_per_problem;
    RecordWriter w = {.c = c,
                      .problems = problems,
                      .variant = variant->name,
                      .condition = condition,
                      .tok = tok,
                      .set = set,
                      .steering_json = steering_json,
                      .thinking_open = prompt_thinking_open(variant->template_text),
                      .n_done_before = n_done,
                      .path = path,
                      .timing_path = timing_path};
    w.jobs = xcalloc((size_t)n_total + 1, sizeof *w.jobs);
    w.seqs = xcalloc((size_t)n_total + 1, sizeof *w.seqs);
    int rc = 0;
    for (int p = first_problem; p < end_problem && rc == 0; p++) {
        for (int s = 0; s < c->samples_per_problem && rc == 0; s++) {
            int done = 0;
            for (int d = 0; d < n_done && !done; d++)
                done = done_samples[d] == s && strcmp(done_ids[d], problems[p].id) == 0;
            if (done) continue;
            Job *job = &w.jobs[w.n_jobs];
            GenSeq *q = &w.seqs[w.n_jobs++];
            job->problem = p;
            job->sample = s;
            job->prompt = render_prompt(variant->template_text, problems[p].question);
            rc = tokenizer_encode(tok, job->prompt, strlen(job->prompt), &job->prompt_tokens, err);
            if (rc == 0 && job->prompt_tokens.n == 0)
                rc = err_input(err, "%s: variant %s gives an empty prompt", c->file, variant->name);
            if (rc == 0 && job->prompt_tokens.n + 1 > c->max_seq_len)
                rc = err_input(err, "problem %s: prompt of %d tokens does not fit [model] max_seq_len = %d",
                               problems[p].id, job->prompt_tokens.n, c->max_seq_len);
            job->prompt_ids = xmalloc((size_t)(job->prompt_tokens.n + 1) * sizeof *job->prompt_ids);
            for (int t = 0; t < job->prompt_tokens.n; t++) job->prompt_ids[t] = job->prompt_tokens.v[t].id;
            job->seed = completion_seed(c->seed, problems[p].id, s);
            *q = (GenSeq){.prompt = job->prompt_ids, .n_prompt = job->prompt_tokens.n, .max_new = c->max_new_tokens,
                          .ids = xmalloc((size_t)c->max_new_tokens * sizeof *q->ids)};
            rng_seed(&q->rng, job->seed);
        }
    }
    for (int d = 0; d < n_done; d++) free(done_ids[d]);
    free(done_ids);
    free(done_samples);
    GenParams params = {.sampler = config_sampler(c, &m->cfg), .batch_size = c->batch_size, .max_seq = c->max_seq_len,
                        .mask = mask, .on_finish = record_finished, .on_step = generation_progress, .ctx = &w};
    progress_start(&w.clock);
    if (rc == 0) rc = generate_batch(m, w.seqs, w.n_jobs, &params, err);
    if (rc == 0 && shard->n) {
        char unsharded[1300];
        run_generation_path(run, unsharded, sizeof unsharded, variant->name, condition);
        rc = shard_finish(run, unsharded, shard, &info, err);
    }
    for (int i = 0; i < w.n_jobs; i++) {
        free(w.jobs[i].prompt);
        tokens_free(&w.jobs[i].prompt_tokens);
        free(w.jobs[i].prompt_ids);
        free(w.jobs[i].record);
        free(w.seqs[i].ids);
    }
    free(w.jobs);
    free(w.seqs);
    return rc;
}

// ----------------------------------------------------------------------------
// Generation records read back (detect-events and the analyses).

void generations_free(GenRecord *r, int n) {
    for (int i = 0; i < n; i++) {
        free(r[i].problem_id);
        free(r[i].variant);
        free(r[i].condition);
        free(r[i].prompt);
        free(r[i].completion_ids);
        free(r[i].finish_reason);
    }
    free(r);
}

// The records of an unsharded file that is not there: those of its shards, in K order.
static int generations_read_shards(const char *path, GenRecord **out, int *n_out, Err *err) {
    char run_id[128], **files;
    int n_files, rc = 0;
    run_id_of_generation_path(path, run_id, sizeof run_id);
    if (shard_set(run_id, path, 0, &files, &n_files, NULL, err) < 0) return -1;
    for (int k = 0; k < n_files && rc == 0; k++) {
        GenRecord *recs;
        int n;
        if ((rc = generations_read(files[k], &recs, &n, err))) break;
        *out = xrealloc(*out, (size_t)(*n_out + n + 1) * sizeof **out);
        memcpy(*out + *n_out, recs, (size_t)n * sizeof *recs);
        *n_out += n;
        free(recs);
    }
    shard_set_free(files, n_files);
    if (rc) {
        generations_free(*out, *n_out);
        *out = NULL;
        *n_out = 0;
    }
    return rc;
}

int generations_read(const char *path, GenRecord **out, int *n_out, Err *err) {
    *out = NULL;
    *n_out = 0;
    if (!path_exists(path) && exists_or_sharded(path)) return generations_read_shards(path, out, n_out, err);
    Buf text = {0};
    if (read_file(path, &text, err)) return -1;
    GenRecord *list = NULL;
    int n = 0, line_no = 0, rc = 0;
    for (size_t at = 0; at < text.len && rc == 0;) {
        char *nl = memchr(text.data + at, '\n', text.len - at);
        size_t len = nl ? (size_t)(nl - (text.data + at)) : text.len - at;
        line_no++;
        const char *line = text.data + at;
        at += len + 1;
        if (len == 0) continue;
        Json j;
        if (json_parse(&j, line, len, path, err)) {
            const char *why = strstr(err->msg, "invalid JSON: "); // json_parse counts lines within this one line
            char reason[256];
            snprintf(reason, sizeof reason, "%s", why ? why + strlen("invalid JSON: ") : "invalid JSON");
            rc = err_input(err, "%s:%d: not a JSON generation record (%s)", path, line_no, reason);
            break;
        }
        GenRecord r = {0};
        long long sample = -1, prompt_tokens = -1;
        int ids = json_key(&j, 0, "completion_ids");
        r.problem_id = json_strdup(&j, json_key(&j, 0, "problem_id"));
        r.variant = json_strdup(&j, json_key(&j, 0, "variant"));
        r.condition = json_strdup(&j, json_key(&j, 0, "condition"));
        r.prompt = json_strdup(&j, json_key(&j, 0, "prompt"));
        r.finish_reason = json_strdup(&j, json_key(&j, 0, "finish_reason"));
        json_int(&j, json_key(&j, 0, "sample"), &sample);
        json_int(&j, json_key(&j, 0, "prompt_tokens"), &prompt_tokens);
        int has_correct = json_bool(&j, json_key(&j, 0, "correct"), &r.correct) == 0; // absent is not "false"
        r.sample = (int)sample;
        r.prompt_tokens = (int)prompt_tokens;
        int dup = json_duplicate_key(&j, 0); // a key given twice is refused, not resolved
        char *twice = dup >= 0 ? json_strdup(&j, dup) : NULL;
        // The first field that is missing or bad (sample and prompt_tokens must fit an int).
        const char *bad = twice ? twice : !r.problem_id ? "problem_id" : !r.variant ? "variant"
                          : !r.condition ? "condition" : !r.prompt ? "prompt" : !r.finish_reason ? "finish_reason"
                          : sample < 0 || sample > INT32_MAX ? "sample"
                          : prompt_tokens <= 0 || prompt_tokens > INT32_MAX ? "prompt_tokens" : !has_correct ? "correct"
                          : ids < 0 || j.tok[ids].type != JSON_ARRAY ? "completion_ids" : NULL;
        if (!bad) {
            r.completion_ids = xmalloc((size_t)(j.tok[ids].size + 1) * sizeof *r.completion_ids);
            JSON_FOR_ARRAY(&j, ids, i, t) {
                long long v;
                if (json_int(&j, t, &v) || v < 0 || v > INT32_MAX) bad = "completion_ids";
                else r.completion_ids[r.n_completion++] = (int)v;
                (void)i;
            }
        }
        json_free(&j);
        if (bad) {
            free(r.problem_id);
            free(r.variant);
            free(r.condition);
            free(r.prompt);
            free(r.completion_ids);
            free(r.finish_reason);
            if (twice)
                rc = err_input(err, "%s:%d: generation record: key \"%.200s\" appears twice", path, line_no, bad);
            else rc = err_input(err, "%s:%d: generation record: \"%s\" is missing or has a bad value", path, line_no,
                                bad);
            free(twice);
            break;
        }
        free(twice);
        list = xrealloc(list, (size_t)(n + 1) * sizeof *list);
        list[n++] = r;
    }
    buf_free(&text);
    if (rc) {
        generations_free(list, n);
        return -1;
    }
    *out = list;
    *n_out = n;
    return 0;
}

// ----------------------------------------------------------------------------
// Steering conditions: the run's difference-of-means direction (bt directions) added at one
// layer at every position, a random direction of the same norm, or the direction projected out
// of every residual. The hook is the AblationMask's steering fields, so the loop is the same.

#define STEER_RANDOM_STREAM 0x5EE4D1 // the random control's direction: (run seed, this) only

int steer_conditions(const Config *c, const char *group, SteerCondition *out) {
    static const char *const groups[] = {"steer", "steer_random", "project_out"};
    int n = 0, found = 0;
    for (int g = 0; g < 3; g++) {
        if (group && strcmp(group, groups[g]) != 0) continue;
        found = 1;
        if (g == STEER_PROJECT_OUT) {
            if (out) out[n] = (SteerCondition){"project_out", STEER_PROJECT_OUT, 0};
            n++;
            continue;
        }
        for (int a = 0; a < c->n_steer_alphas && out; a++, n++) {
            out[n] = (SteerCondition){"", g, c->steer_alphas[a]};
            snprintf(out[n].name, sizeof out[n].name, "%s_%+g", groups[g], c->steer_alphas[a]);
        }
    }
    return found ? n : -1;
}

void steer_directions_free(SteerDirections *d) {
    free(d->directions);
    free(d->mean_norm);
    memset(d, 0, sizeof *d);
}

static double norm_of(const float *v, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += (double)v[i] * v[i];
    return sqrt(s);
}

// The layer of [steering] layer = auto: the row of directions.csv that bt directions marked best.
static int steer_best_layer(const Run *run, int n_layers, int *layer, Err *err) {
    char path[1200];
    run_path(run, path, sizeof path, ART_DIRECTIONS_CSV);
    Csv t;
    if (!path_exists(path)) return err_input(err, "no %s in run %s: run directions first", ART_DIRECTIONS_CSV, run->id);
    if (csv_read(path, &t, err)) return -1;
    int col_layer = csv_col(&t, "layer"), col_best = csv_col(&t, "best_auroc");
    *layer = -1;
    for (int r = 0; r < t.n_rows && col_layer >= 0 && col_best >= 0; r++)
        if (strcmp(csv_cell(&t, r, col_best), "1") == 0) *layer = atoi(csv_cell(&t, r, col_layer));
    csv_free(&t);
    if (*layer < 0 || *layer > n_layers)
        return err_input(err, "%s: no layer marked best_auroc within [0, %d] (run directions again)", path, n_layers);
    return 0;
}

int steer_directions_load(const Config *c, const Run *run, const ModelConfig *mc, SteerDirections *d, Err *err) {
    memset(d, 0, sizeof *d);
    char path[1200];
    run_path(run, path, sizeof path, ART_DIRECTIONS);
    if (!path_exists(path)) return err_input(err, "no %s in run %s: run directions first", ART_DIRECTIONS, run->id);
    int rows, cols, norm_rows, norm_cols, L = mc->n_layers;
    if (safetensors_read_f32(path, "directions", &d->directions, &rows, &cols, err) ||
        safetensors_read_f32(path, "mean_norm", &d->mean_norm, &norm_rows, &norm_cols, err)) {
        steer_directions_free(d);
        return -1;
    }
    d->n_layers = L;
    d->hidden = mc->hidden_size;
    if (rows != L + 1 || cols != mc->hidden_size || norm_rows != 1 || norm_cols != L + 1) {
        steer_directions_free(d);
        return err_input(
            err, "%s: directions (%d, %d) and mean_norm (%d) do not fit this model's (%d, %d) (run directions again)",
            path, rows, cols, norm_rows * norm_cols, L + 1, mc->hidden_size);
    }
    if (c->steer_layer == STEER_LAYER_AUTO) {
        if (steer_best_layer(run, L, &d->layer, err)) {
            steer_directions_free(d);
            return -1;
        }
    } else if (c->steer_layer > L) {
        steer_directions_free(d);
        return err_input(err, "%s: [steering] layer = %d is out of range [0, %d] for the model in %s", c->file,
                         c->steer_layer, L, c->model_path);
    } else {
        d->layer = c->steer_layer;
    }
    if (!(norm_of(d->directions + (size_t)d->layer * d->hidden, d->hidden) > 0) || !(d->mean_norm[d->layer] > 0)) {
        int layer = d->layer;
        steer_directions_free(d);
        return err_input(err,
                         "%s: the direction at layer %d is zero (positives and negatives agree there): choose another "
                         "[steering] layer",
                         path, layer);
    }
    return 0;
}

int steer_condition_mask(const Config *c, const SteerDirections *d, const SteerCondition *sc, AblationMask *mask,
                         float *vec, Err *err) {
    memset(mask, 0, sizeof *mask);
    int D = d->hidden;
    const float *dir = d->directions + (size_t)d->layer * D;
    double *unit = xmalloc((size_t)D * sizeof *unit); // (hidden)
    if (sc->kind == STEER_RANDOM) {
        Rng rng;
        rng_seed(&rng, seed_mix((uint64_t)c->seed, STEER_RANDOM_STREAM));
        for (int i = 0; i < D; i++) unit[i] = rng_normal(&rng);
    } else {
        for (int i = 0; i < D; i++) unit[i] = dir[i];
    }
    double norm = 0;
    for (int i = 0; i < D; i++) norm += unit[i] * unit[i];
    norm = sqrt(norm);
    if (!(norm > 0)) {
        free(unit);
        return err_runtime(err, "steering: a zero direction at layer %d", d->layer);
    }
    double scale = sc->kind == STEER_PROJECT_OUT ? 1 : sc->alpha * d->mean_norm[d->layer];
    for (int i = 0; i < D; i++) vec[i] = (float)(scale * unit[i] / norm);
    free(unit);
    if (sc->kind == STEER_PROJECT_OUT) {
        mask->project_out = vec;
    } else {
        mask->steer_layer = d->layer;
        mask->steer_add = vec;
    }
    return 0;
}

// generate --condition steer | steer_random | project_out: one file per condition of the group,
// for --variant or every [steering] variant.
static int generate_steered(const Config *c, const Run *run, const Model *m, const Tokenizer *tok,
                            const Problem *problems, int n_problems, const char *group, const char *one,
                            const Shard *shard, Err *err) {
    SteerCondition *sc = xmalloc((size_t)(2 * c->n_steer_alphas + 1) * sizeof *sc);
    int n = steer_conditions(c, group, sc), rc = 0;
    SteerDirections d;
    if (steer_directions_load(c, run, &m->cfg, &d, err)) {
        free(sc);
        return -1;
    }
    float *vec = xmalloc((size_t)d.hidden * sizeof *vec); // (hidden) the condition's vector
    LayerSet none = {0};
    int n_variants = one ? 1 : c->n_steer_variants;
    for (int v = 0; v < n_variants && rc == 0; v++) {
        const char *name = one ? one : c->steer_variants[v];
        for (int i = 0; i < n && rc == 0; i++) {
            AblationMask mask;
            if ((rc = steer_condition_mask(c, &d, &sc[i], &mask, vec, err))) break;
            Buf json = {0};
            static const char *const kinds[] = {"direction", "random", "project_out"};
            buf_printf(&json, "{\"kind\": \"%s\", \"layer\": %d, \"alpha\": ", kinds[sc[i].kind], d.layer);
            buf_json_double(&json, sc[i].alpha);
            buf_puts(&json, ", \"norm\": ");
            buf_json_double(&json, norm_of(vec, d.hidden));
            buf_puts(&json, "}");
            rc = generate_variant(c, run, m, tok, problems, n_problems, config_variant(c, name), sc[i].name, &mask,
                                  &none, json.data, shard, err);
            buf_free(&json);
        }
    }
    free(vec);
    free(sc);
    steer_directions_free(&d);
    return rc;
}

// ----------------------------------------------------------------------------
// Commands: generate, generate-ids

int cmd_generate(int argc, char **argv) {
    Opt opts[] = {
        OPT_CONFIG,
        OPT("--condition", 1,
            "baseline | targeted_ablation | random_ablation (every draw) | random_ablation_K | " STEER_GROUPS),
        OPT("--variant", 1,
            "one variant (default: every [generation] variant for baseline, [steering] variants for steering, "
            "[logit_lens] variant otherwise)"),
        OPT_SHARD, OPT_END};
    Err err = {0};
    Config c;
    Run run;
    int exit_code;
    if (stage_open(argc, argv, opts, &c, &run, &exit_code)) return exit_code;
    Condition cond;
    const char *condition = opt_str(opts, "--condition", NULL);
    Model m = {0};
    Tokenizer *tok = NULL;
    Problem *problems = NULL;
    int n_problems = 0, loaded = 0;
    const char *one = opt_str(opts, "--variant", NULL);
    Shard shard;
    if (shard_parse(opt_str(opts, "--shard", NULL), &shard, &err)) goto out;
    const char *steer_group =
        condition && condition_parse(condition, &cond) && steer_conditions(&c, condition, NULL) >= 0 ? condition : NULL;
    if (!steer_group && condition_parse(condition, &cond)) {
        err_input(&err,
                  "generate: --condition must be baseline, targeted_ablation, random_ablation or random_ablation_K "
                  "(K = 1 .. [ablation] random_draws), or " STEER_GROUPS);
        goto out;
    }
    if (!steer_group && cond.kind == COND_RANDOM && cond.draw > c.random_draws) {
        err_input(&err, "generate: --condition %s: %s has [ablation] random_draws = %d", condition, c.file,
                  c.random_draws);
        goto out;
    }
    if (one && !config_variant(&c, one)) {
        err_input(&err, "%s: no [variant.%s] section", c.file, one);
        goto out;
    }
    char path[1200];
    processed_path(&c, path, sizeof path);
    if (!path_exists(path)) {
        err_input(&err, "%s is missing: run prepare-data first", path);
        goto out;
    }
    if (problems_load(path, &problems, &n_problems, &err)) goto out;
    if (model_load(&m, c.model_path, &err)) goto out;
    loaded = 1;
    snprintf(path, sizeof path, "%s/tokenizer.json", c.model_path);
    if (tokenizer_load(&tok, path, &err)) goto out;
    if (steer_group) {
        generate_steered(&c, &run, &m, tok, problems, n_problems, steer_group, one, &shard, &err);
        goto out;
    }
    // random_ablation alone means every draw; baseline every configured variant unless one is named.
    int first_draw = cond.kind == COND_RANDOM ? (cond.draw ? cond.draw : 1) : 0;
    int last_draw = cond.kind == COND_RANDOM ? (cond.draw ? cond.draw : c.random_draws) : 0;
    for (int draw = first_draw; draw <= last_draw; draw++) {
        Condition this = {cond.kind, draw};
        char name[64];
        condition_format(&this, name, sizeof name);
        LayerSet set = {0};
        AblationMask mask = {0};
        float *means[3] = {NULL, NULL, NULL}; // attention, MLP, heads
        int rc = condition_mask(&c, &run, &m, &this, &set, &mask, means, &err);
        int n_gen = one || cond.kind != COND_BASELINE ? 1 : c.n_variants;
        for (int v = 0; v < n_gen && rc == 0; v++) {
            const char *variant = one ? one : cond.kind == COND_BASELINE ? c.variants[v] : c.lens_variant;
            rc = generate_variant(&c, &run, &m, tok, problems, n_problems, config_variant(&c, variant), name,
                                  cond.kind == COND_BASELINE ? NULL : &mask, &set, NULL, &shard, &err);
        }
        ablation_mask_free(&mask);
        free(means[0]);
        free(means[1]);
        free(means[2]);
        layer_set_free(&set);
        if (rc) goto out;
    }
out:
    if (tok) tokenizer_free(tok);
    if (loaded) model_free(&m);
    problems_free(problems, n_problems);
    config_free(&c);
    return err.msg[0] ? fail(&err) : 0;
}

int cmd_generate_ids(int argc, char **argv) {
    Opt opts[] = {OPT("--model", 1, "Hugging Face model directory"),
                  OPT("--ids", 1, "prompt token ids, comma-separated"),
                  OPT("--max-new", 1, "tokens to generate at most (stops after an eos id); prints the new ids"),
                  OPT_END};
    Err err = {0};
    int r = opts_parse(opts, argc, argv, &err);
    if (r) return r > 0 ? EXIT_OK : fail(&err);
    const char *dir = opt_str(opts, "--model", NULL), *ids_text = opt_str(opts, "--ids", NULL);
    if (!dir || !ids_text) return err_input(&err, "generate-ids: --model DIR and --ids 1,2,3 are required"), fail(&err);
    long long max_new;
    if (opt_int(opts, "--max-new", 0, 1 << 20, 16, &max_new, &err) < 0) return fail(&err);
    Model m;
    if (model_load(&m, dir, &err) < 0) return fail(&err);
    int *ids = NULL, n = 0, rc = parse_ids(ids_text, m.cfg.vocab_size, m.dir, &ids, &n, &err);
    GenSeq q = {.prompt = ids, .n_prompt = n, .max_new = (int)max_new, .eos_id = -1};
    q.ids = xmalloc((size_t)(max_new + 1) * sizeof *q.ids);
    GenParams greedy = {.sampler = {.temperature = 0}, .batch_size = 1, .max_seq = n + (int)max_new};
    if (rc == 0 && max_new > 0) rc = generate_batch(&m, &q, 1, &greedy, &err);
    Buf b = {0};
    buf_puts(&b, "{\"ids\":[");
    for (int k = 0; k < q.n_ids; k++) buf_printf(&b, "%s%d", k ? "," : "", q.ids[k]);
    if (q.eos_id >= 0) buf_printf(&b, "%s%d", q.n_ids ? "," : "", q.eos_id); // the eos that ended it, as HF prints it
    buf_puts(&b, "]}\n");
    if (rc == 0) write_stdout(&b);
    buf_free(&b);
    free(q.ids);
    free(ids);
    model_free(&m);
    return rc < 0 ? fail(&err) : EXIT_OK;
}
