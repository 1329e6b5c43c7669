// cluster.c: the pipeline on a cluster. bt merge puts a sharded stage's outputs together; bt slurm
// writes the whole pipeline as a chain of sbatch scripts (a job array per heavy stage, small jobs
// between them) and a submit.sh that submits the chain, or resubmits part of it after a failure.
// The shards themselves (names, manifests, which units a shard takes) live with the run layout in
// bt.c; each stage's split and its merge live with the stage.
#include "bt.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

// ----------------------------------------------------------------------------
// bt merge --stage S

int cmd_merge(int argc, char **argv) {
    Opt opts[] = {
        OPT_CONFIG,
        OPT("--stage", 1,
            "generate (every sharded generation file) | logit-lens | ablation-scan | collateral-damage | directions"),
        OPT_END};
    Err err = {0};
    Config c;
    Run run;
    int exit_code;
    if (stage_open(argc, argv, opts, &c, &run, &exit_code)) return exit_code;
    const char *stage = opt_str(opts, "--stage", NULL);
    int n_merged = 0;
    if (!stage) {
        err_input(&err,
                  "merge: --stage is required: generate, logit-lens, ablation-scan, collateral-damage or directions");
    } else if (strcmp(stage, "generate") == 0) {
        // Files already whole (merged before, or never sharded) are left as they are: a resubmitted chain goes through.
        if (merge_generations(&c, &run, &n_merged, &err) == 0)
            printf("merge: %d generation file%s of run %s put together from their shards\n", n_merged,
                   n_merged == 1 ? "" : "s", run.id);
    } else if (strcmp(stage, "logit-lens") == 0) {
        merge_logit_lens(&c, &run, &err);
    } else if (strcmp(stage, "ablation-scan") == 0) {
        merge_ablation_scan(&c, &run, &err);
    } else if (strcmp(stage, "collateral-damage") == 0) {
        merge_collateral_damage(&c, &run, &err);
    } else if (strcmp(stage, "directions") == 0) {
        merge_directions(&c, &run, &err);
    } else {
        err_input(&err,
                  "merge: --stage '%s': give generate, logit-lens, ablation-scan, collateral-damage or directions",
                  stage);
    }
    config_free(&c);
    return err.msg[0] ? fail(&err) : 0;
}

// ----------------------------------------------------------------------------
// bt slurm: one sbatch script per stage and submit.sh. The stages are bt run's, in its order;
// a stage waits (afterok) for the ones it reads from, so independent arrays run side by side.

typedef struct {
    const char *name;        // the script is <name>.sbatch; submit.sh takes the name
    int array;               // 1: a job array of N shards (--shard auto), else one small job
    int steering;            // 1: only with [steering] enabled = true (as bt run)
    int estimates;           // 1: only with [ablation] method = attribution+verify (its scan's first phase)
    const char *deps;        // stages it waits for, space-separated
    const char *commands[8]; // bt arguments, one command each; "@V" is the [logit_lens] variant
} SlurmStage;

static const SlurmStage slurm_stages[] = {
    {"prepare", 0, 0, 0, "", {"prepare-data"}}, // preceded by init-run when the run is not there yet
    {"generate-baseline", 1, 0, 0, "prepare", {"generate --condition baseline"}},
    {"detect-events", 0, 0, 0, "generate-baseline", {"merge --stage generate", "detect-events"}},
    {"logit-lens", 1, 0, 0, "detect-events", {"logit-lens --variant @V"}},
    {"ablation-estimates", 1, 0, 1, "detect-events", {"ablation-scan --variant @V --estimates"}},
    {"ablation-scan", 1, 0, 0, "detect-events ablation-estimates", {"ablation-scan --variant @V"}},
    {"directions", 1, 1, 0, "detect-events", {"directions --variant @V"}},
    {"merge-analyses",
     0,
     0,
     0,
     "logit-lens ablation-scan",
     {"merge --stage logit-lens", "merge --stage ablation-scan"}},
    {"merge-directions", 0, 1, 0, "directions", {"merge --stage directions"}},
    {"generate-targeted", 1, 0, 0, "merge-analyses", {"generate --condition targeted_ablation --variant @V"}},
    {"generate-random", 1, 0, 0, "merge-analyses", {"generate --condition random_ablation --variant @V"}},
    {"collateral-damage", 1, 0, 0, "merge-analyses", {"collateral-damage --variant @V"}},
    {"generate-steer",
     1,
     1,
     0,
     "merge-directions",
     {"generate --condition steer", "generate --condition steer_random", "generate --condition project_out"}},
    {"report",
     0,
     0,
     0,
     "generate-targeted generate-random collateral-damage generate-steer",
     {"merge --stage generate", "merge --stage collateral-damage", "detect-events", "compare-conditions --variant @V",
      "formatting-sweep", "steering-sweep", "make-report"}},
};
#define N_SLURM_STAGES (int)(sizeof slurm_stages / sizeof slurm_stages[0])

// s in single quotes for sh ('\'' for a quote inside).
static void sh_quote(Buf *b, const char *s) {
    buf_putc(b, '\'');
    for (; *s; s++) {
        if (*s == '\'')
            buf_puts(b, "'\\''");
        else
            buf_putc(b, *s);
    }
    buf_putc(b, '\'');
}

// A value that goes onto an #SBATCH line: printable, no quotes or spaces that would split it.
static int sbatch_value_ok(const char *s) {
    if (!*s) return 0;
    for (; *s; s++)
        if ((unsigned char)*s < 0x21 || *s == 0x7f || *s == '\'' || *s == '"' || *s == '\\') return 0;
    return 1;
}

// The absolute path of this bt binary, for scripts that run on other nodes of a shared file system.
static void self_path(char *out, size_t n) {
    char buf[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (len > 0) {
        buf[len] = 0;
        snprintf(out, n, "%s", buf);
    } else if (!realpath("bt", out)) {
        snprintf(out, n, "bt");
    }
}

typedef struct {
    const Config *c;
    const char *run_id, *dir, *bt, *config, *cwd, *partition, *time;
    const char *const *extra; // (n_extra) more sbatch options, e.g. --account=x
    int n_extra, shards, cpus;
} SlurmPlan;

static int slurm_stage_on(const SlurmPlan *p, const SlurmStage *st) {
    return (!st->steering || p->c->steering_enabled) &&
           (!st->estimates || p->c->ablation_method == METHOD_ATTRIBUTION_VERIFY);
}

static void stage_script(const SlurmPlan *p, const SlurmStage *st, Buf *b) {
    buf_puts(b, "#!/bin/sh\n");
    buf_printf(b, "#SBATCH --job-name=bt-%s\n", st->name);
    buf_printf(b, "#SBATCH --chdir=%s\n", p->cwd);
    if (st->array) {
        buf_printf(b, "#SBATCH --array=1-%d\n", p->shards);
        buf_printf(b, "#SBATCH --output=%s/logs/%s-%%A_%%a.log\n", p->dir, st->name); // a log per task
    } else {
        buf_printf(b, "#SBATCH --output=%s/logs/%s-%%j.log\n", p->dir, st->name);
    }
    if (p->cpus)
        buf_printf(b, "#SBATCH --ntasks=1\n#SBATCH --cpus-per-task=%d\n", p->cpus);
    else
        buf_puts(b, "#SBATCH --ntasks=1\n#SBATCH --exclusive\n"); // a whole node per task: threads = its cores
    if (st->array) buf_puts(b, "#SBATCH --requeue\n");            // a preempted shard comes back and resumes
    if (p->partition) buf_printf(b, "#SBATCH --partition=%s\n", p->partition);
    if (p->time) buf_printf(b, "#SBATCH --time=%s\n", p->time);
    for (int i = 0; i < p->n_extra; i++) buf_printf(b, "#SBATCH %s\n", p->extra[i]);
    buf_printf(b, "# Stage %s of bt's pipeline for run %s, written by bt slurm; %s/submit.sh chains the stages.\n",
               st->name, p->run_id, p->dir);
    if (st->array)
        buf_printf(
            b,
            "# Task K of the array does shard K of %d (--shard auto reads SLURM_ARRAY_TASK_ID and BT_SHARDS), so a\n"
            "# task resubmitted alone (sbatch --array=K) does the same shard; it resumes what it had done.\n",
            p->shards);
    buf_puts(b, "set -eu\n");
    buf_printf(b, "export BT_RUN_ID=%s BT_SHARDS=%d\n", p->run_id, p->shards);
    buf_puts(b, "BT=");
    sh_quote(b, p->bt);
    buf_puts(b, "\nCONFIG=");
    sh_quote(b, p->config);
    buf_puts(b, "\n");
    if (strcmp(st->name, "prepare") == 0) { // the run is made once: a resubmitted chain keeps it
        Buf meta = {0};
        buf_printf(&meta, "%s/%s/%s", p->c->runs_dir, p->run_id, ART_META);
        buf_puts(b, "if [ ! -f ");
        sh_quote(b, meta.data);
        buf_printf(b, " ]; then \"$BT\" init-run --config \"$CONFIG\" --threads %d --run-id %s; fi\n", p->cpus,
                   p->run_id);
        buf_free(&meta);
    }
    for (int k = 0; k < 8 && st->commands[k]; k++) {
        if (!p->c->steering_enabled && strcmp(st->commands[k], "steering-sweep") == 0) continue;
        buf_puts(b, "\"$BT\" ");
        for (const char *s = st->commands[k]; *s;) {
            const char *sp = strchr(s, ' ');
            size_t len = sp ? (size_t)(sp - s) : strlen(s);
            if (len == 2 && memcmp(s, "@V", 2) == 0)
                sh_quote(b, p->c->lens_variant);
            else
                buf_append(b, s, len);
            s += len;
            if (*s) buf_putc(b, *s++);
        }
        buf_printf(b, " --config \"$CONFIG\" --threads %d%s\n", p->cpus, st->array ? " --shard auto" : "");
    }
}

// submit.sh: the chain, with the stage graph of slurm_stages.
static void submit_script(const SlurmPlan *p, Buf *b) {
    buf_printf(b,
               "#!/bin/sh\n"
               "# Submits bt's pipeline for run %s as a chain of Slurm jobs (written by bt slurm).\n"
               "# usage: submit.sh [STAGE [TASKS]]\n"
               "#   STAGE: submit STAGE and every stage that waits for it (default: the whole chain)\n"
               "#   TASKS: which of STAGE's array tasks (e.g. 3 or 1,3; default all)\n"
               "# Prints \"stage job_id\" per job and appends them to jobs.txt. Resubmitting a stage after a failed\n"
               "# or cancelled task cancels the jobs of an earlier submission that wait behind it (they would\n"
               "# wait forever); a stage waits for the jobs of an earlier submission it reads from that are\n"
               "# still queued or running. Generation shards resume; finished analysis shards are skipped.\n"
               "set -eu\n"
               "cd \"$(dirname \"$0\")\"\n"
               "stages=\"",
               p->run_id);
    for (int i = 0, n = 0; i < N_SLURM_STAGES; i++)
        if (slurm_stage_on(p, &slurm_stages[i])) buf_printf(b, "%s%s", n++ ? " " : "", slurm_stages[i].name);
    buf_puts(b, "\"\n");
    for (int i = 0; i < N_SLURM_STAGES; i++) {
        if (!slurm_stage_on(p, &slurm_stages[i])) continue;
        buf_puts(b, "deps_");
        for (const char *s = slurm_stages[i].name; *s; s++) buf_putc(b, *s == '-' ? '_' : *s);
        buf_puts(b, "=\"");
        int n = 0;
        for (const char *d = slurm_stages[i].deps; *d;) { // the deps that are on
            size_t len = strcspn(d, " ");
            for (int j = 0; j < N_SLURM_STAGES; j++)
                if (strlen(slurm_stages[j].name) == len && memcmp(slurm_stages[j].name, d, len) == 0 &&
                    slurm_stage_on(p, &slurm_stages[j]))
                    buf_printf(b, "%s%.*s", n++ ? " " : "", (int)len, d);
            d += len;
            while (*d == ' ') d++;
        }
        buf_puts(b, "\"\n");
    }
    buf_puts(b,
             "from=${1:-prepare}\n"
             "tasks=${2:-}\n"
             "key() { echo \"$1\" | tr - _; }\n"
             "deps_of() { eval \"echo \\${deps_$(key \"$1\")}\"; }\n"
             "old_job() { eval \"echo \\${old_$(key \"$1\")}\"; }\n"
             "queued() { [ -n \"$1\" ] && [ -n \"$(squeue -h -j \"$1\" -o %i 2>/dev/null)\" ]; }\n"
             "in_list() { case \" $2 \" in *\" $1 \"*) return 0;; esac; return 1; }\n"
             "for s in $stages; do # each stage's job of the last submission (jobs.txt), before this one adds to it\n"
             "    j=$( [ -f jobs.txt ] && sed -n \"s/^$s //p\" jobs.txt | tail -n 1 || true)\n"
             "    eval \"old_$(key \"$s\")=$j\"\n"
             "done\n"
             "submit=\"\"\n"
             "for s in $stages; do\n"
             "    want=0; [ \"$s\" = \"$from\" ] && want=1\n"
             "    for d in $(deps_of \"$s\"); do if in_list \"$d\" \"$submit\"; then want=1; fi; done\n"
             "    if [ $want = 1 ]; then submit=\"$submit $s\"; fi\n"
             "done\n"
             "if [ -z \"$submit\" ]; then echo \"submit.sh: no stage '$from' (stages: $stages)\" >&2; exit 2; fi\n"
             "for s in $submit; do # jobs of an earlier submission waiting behind the stages resubmitted\n"
             "    [ \"$s\" = \"$from\" ] && continue\n"
             "    j=$(old_job \"$s\"); if queued \"$j\"; then scancel \"$j\"; fi\n"
             "done\n"
             "for s in $submit; do\n"
             "    dep=\"\"\n"
             "    for d in $(deps_of \"$s\"); do\n"
             "        j=$(old_job \"$d\")\n"
             "        if in_list \"$d\" \"$submit\"; then\n"
             "            dep=\"$dep,afterok:$(eval echo \\$job_$(key \"$d\"))\"\n"
             "            if [ \"$d\" = \"$from\" ] && queued \"$j\"; then dep=\"$dep,afterany:$j\"; fi\n"
             "        elif queued \"$j\"; then dep=\"$dep,afterany:$j\"; fi\n"
             "    done\n"
             "    set -- --parsable\n"
             "    if [ -n \"$dep\" ]; then set -- \"$@\" --dependency=\"${dep#,}\"; fi\n"
             "    if [ \"$s\" = \"$from\" ] && [ -n \"$tasks\" ]; then set -- \"$@\" --array=\"$tasks\"; fi\n"
             "    id=$(sbatch \"$@\" \"$s.sbatch\")\n"
             "    id=${id%%;*} # --parsable prints id or id;cluster\n"
             "    eval \"job_$(key \"$s\")=$id\"\n"
             "    echo \"$s $id\" >> jobs.txt\n"
             "    echo \"$s $id\"\n"
             "done\n");
}

int cmd_slurm(int argc, char **argv) {
    Opt opts[] = {
        OPT_CONFIG,
        OPT("--shards", 1, "shards of every heavy stage: tasks of each job array (default 4)"),
        OPT("--partition", 1, "Slurm partition"),
        OPT("--time", 1, "time limit of each job, as sbatch takes it (e.g. 4:00:00)"),
        OPT("--cpus", 1, "cores per task (--cpus-per-task, and bt --threads); default: a whole node per task"),
        OPT("--sbatch", 1, "one more sbatch option for every job, e.g. --account=x (repeatable)"),
        OPT("--run-id", 1, "the run the chain makes (default: UTC YYYYMMDD_HHMMSS); an existing run is continued"),
        OPT("--dir", 1, "where the scripts go (default slurm/<run id>)"),
        OPT("--submit", 0, "submit the chain (sh DIR/submit.sh: sbatch --parsable) and print the job ids"),
        OPT_END};
    Err err = {0};
    int r = opts_parse(opts, argc, argv, &err);
    if (r) return r < 0 ? fail(&err) : 0;
    Config c;
    const char *config = opt_str(opts, "--config", BT_DEFAULT_CONFIG);
    if (config_load(&c, config, &err)) return fail(&err);
    long long shards, cpus;
    SlurmPlan p = {.c = &c, .partition = opt_str(opts, "--partition", NULL), .time = opt_str(opts, "--time", NULL)};
    char run_id[128], dir[PATH_MAX + 256], bt[PATH_MAX], config_abs[PATH_MAX], cwd[PATH_MAX], path[PATH_MAX + 512];
    Buf script = {0};
    const Opt *extra = NULL;
    for (const Opt *o = opts; o->name; o++)
        if (strcmp(o->name, "--sbatch") == 0) extra = o;
    if (opt_int(opts, "--shards", 1, SHARD_MAX, 4, &shards, &err) || opt_int(opts, "--cpus", 1, 4096, 0, &cpus, &err))
        goto out;
    if ((p.partition && !sbatch_value_ok(p.partition)) || (p.time && !sbatch_value_ok(p.time))) {
        err_input(&err, "slurm: --partition and --time take one word (no spaces or quotes)");
        goto out;
    }
    for (int i = 0; i < extra->n_values; i++)
        if (strncmp(extra->values[i], "--", 2) != 0 || !sbatch_value_ok(extra->values[i])) {
            err_input(&err, "slurm: --sbatch '%s': give one sbatch option as --name=value", extra->values[i]);
            goto out;
        }
    if (!config_variant(&c, c.lens_variant)) {
        err_input(&err, "%s: [logit_lens] variant %s has no [variant.%s] section", c.file, c.lens_variant,
                  c.lens_variant);
        goto out;
    }
    const char *given = opt_str(opts, "--run-id", NULL);
    if (given) {
        snprintf(run_id, sizeof run_id, "%.99s", given);
        for (const char *s = given; *s; s++)
            if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '_' ||
                  *s == '-' || *s == '.') ||
                strlen(given) > 99) {
                err_input(&err, "--run-id '%s': use letters, digits, _ - . (at most 99)", given);
                goto out;
            }
    } else { // a new run: a UTC stamp not taken yet
        time_t now = time(NULL);
        struct tm utc;
        gmtime_r(&now, &utc);
        strftime(run_id, sizeof run_id, "%Y%m%d_%H%M%S", &utc);
        char stamp[64];
        snprintf(stamp, sizeof stamp, "%.40s", run_id);
        for (int k = 2; k < 1000; k++) {
            snprintf(path, sizeof path, "%s/%s", c.runs_dir, run_id);
            if (!path_exists(path)) break;
            snprintf(run_id, sizeof run_id, "%.40s_%d", stamp, k);
        }
    }
    if (!getcwd(cwd, sizeof cwd) || !realpath(c.file, config_abs)) {
        err_runtime(&err, "slurm: cannot resolve the working directory or %s", c.file);
        goto out;
    }
    const char *dir_opt = opt_str(opts, "--dir", NULL);
    if (dir_opt && dir_opt[0] == '/')
        snprintf(dir, sizeof dir, "%s", dir_opt);
    else if (dir_opt)
        snprintf(dir, sizeof dir, "%s/%s", cwd, dir_opt);
    else
        snprintf(dir, sizeof dir, "%s/slurm/%s", cwd, run_id);
    if (!sbatch_value_ok(dir) || !sbatch_value_ok(cwd)) {
        err_input(&err, "slurm: %s: the scripts' paths must not hold spaces or quotes (sbatch reads them unquoted)",
                  dir);
        goto out;
    }
    self_path(bt, sizeof bt);
    p.run_id = run_id, p.dir = dir, p.bt = bt, p.config = config_abs, p.cwd = cwd;
    p.extra = extra->values, p.n_extra = extra->n_values, p.shards = (int)shards, p.cpus = (int)cpus;
    snprintf(path, sizeof path, "%s/logs", dir);
    if (mkdir_p(path, &err)) goto out;
    int n_on = 0;
    for (int i = 0; i <= N_SLURM_STAGES; i++) {
        if (i < N_SLURM_STAGES && !slurm_stage_on(&p, &slurm_stages[i])) continue;
        n_on += i < N_SLURM_STAGES;
        script.len = 0;
        if (i < N_SLURM_STAGES)
            stage_script(&p, &slurm_stages[i], &script);
        else
            submit_script(&p, &script);
        snprintf(path, sizeof path, "%s/%s%s", dir, i < N_SLURM_STAGES ? slurm_stages[i].name : "submit",
                 i < N_SLURM_STAGES ? ".sbatch" : ".sh");
        if (write_file_atomic(path, script.data, script.len, &err)) goto out;
        chmod(path, 0755);
    }
    progress("slurm: run %s: %d stages (%d shards each heavy one) in %s\n", run_id, n_on, p.shards, dir);
    if (!opt_str(opts, "--submit", NULL)) {
        printf("%s\nsubmit with: sh %s/submit.sh\n", dir, dir);
        goto out;
    }
    fflush(stdout);
    script.len = 0;
    buf_puts(&script, "sh ");
    snprintf(path, sizeof path, "%s/submit.sh", dir);
    sh_quote(&script, path);
    int status = system(script.data); // its output (stage and job id per line) is ours
    if (status != 0)
        err_runtime(&err, "slurm: %s/submit.sh failed (exit %d): is Slurm's sbatch there and the cluster up?", dir,
                    status > 255 ? status >> 8 : status);
out:
    buf_free(&script);
    config_free(&c);
    return err.msg[0] ? fail(&err) : 0;
}
