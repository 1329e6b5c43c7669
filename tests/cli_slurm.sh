# tests/cli_slurm.sh: sharded runs (sourced by cli.sh). Every heavy stage by hand in 3 shards
# must give the bytes of an unsharded run; bad --shard values and broken shard sets are refused.
# Then the pipeline on a real Slurm: a one-node cluster on localhost started here (munged,
# slurmctld, slurmd, in a temp dir, stopped by their pids), `bt slurm --submit --shards 4` (the
# scan attribution+verify, in two phases), one array task cancelled mid-run and resubmitted; the
# report and every analysis file must equal a plain `bt run` of the same config but for run ids
# and timestamps.

# The shared small config: 8 problems x 2 samples, short completions.
shard_config() {
    sed -e 's/^n_problems = 40/n_problems = 8/' -e 's/^samples_per_problem = 2/samples_per_problem = 2/' \
        -e 's/^max_new_tokens = 96/max_new_tokens = 48/' "$@" configs/backtracking_state_transition.ini
}
# same_run DIR_A RUN_A DIR_B RUN_B: analysis files, generations (not timing) and report equal up to run ids and times.
same_run() {
    diffs=""
    for f in "$1"/runs/"$2"/analysis/*; do
        b=$(basename "$f")
        case "$b" in *.shard-*) continue ;; esac
        sed "s/$2/$4/g" "$f" | cmp -s - "$3/runs/$4/analysis/$b" || diffs="$diffs $b"
    done
    for f in "$1"/runs/"$2"/generations/*/*.jsonl; do
        r=${f#"$1"/runs/"$2"/}
        case "$r" in *.timing.jsonl | *.shard-*) continue ;; esac
        cmp -s "$f" "$3/runs/$4/$r" || diffs="$diffs $r"
    done
    n_files=$(ls "$1"/runs/"$2"/analysis | grep -vc shard)
}
no_times() { sed -e "s/$2/RUN/g" -e 's/[0-9]\{4\}-[0-9][0-9]-[0-9][0-9]T[0-9:]*Z/TIME/g' "$1"; }

# --- Shards by hand: the same bytes as an unsharded run, and the errors.
scratch
shard_config -e 's/^kind = zero/kind = mean/' > mean.ini
"$BT" run --config mean.ini --threads 1 --quiet > plain.log 2>&1 || bad "bt run (mean ablation) for the shard comparison" "$(tail -n 2 plain.log)"
plain=$(cat runs/.current_run_id)
no_times reports/backtracking_state_transition_report.md "$plain" > plain_report.md
by_hand() { # by_hand RUN_ID N: the pipeline as shards 1..N of each heavy stage, with merges between
    C="--config mean.ini --threads 1 --quiet"; V=baseline_think_newline; N=$2
    ks=$(seq "$N" -1 1) # any order
    "$BT" init-run $C --run-id "$1" > /dev/null && "$BT" prepare-data $C > /dev/null || return 1
    for k in $ks; do "$BT" generate $C --condition baseline --shard $k/$N || return 1; done
    "$BT" merge $C --stage generate > /dev/null && "$BT" detect-events $C > /dev/null || return 1
    for k in $ks; do
        "$BT" logit-lens $C --variant $V --shard $k/$N > /dev/null &&
            "$BT" ablation-scan $C --variant $V --shard $k/$N > /dev/null &&
            "$BT" directions $C --variant $V --shard $k/$N > /dev/null || return 1
    done
    for s in logit-lens ablation-scan directions; do "$BT" merge $C --stage $s > /dev/null || return 1; done
    for k in $ks; do
        "$BT" generate $C --condition targeted_ablation --variant $V --shard $k/$N &&
            "$BT" generate $C --condition random_ablation --variant $V --shard $k/$N &&
            "$BT" collateral-damage $C --variant $V --shard $k/$N > /dev/null || return 1
        for cond in steer steer_random project_out; do "$BT" generate $C --condition $cond --shard $k/$N || return 1; done
    done
    # detect-events and steering-sweep read the ablated and steered generations straight from their shards
    "$BT" merge $C --stage collateral-damage > /dev/null && "$BT" detect-events $C > /dev/null &&
        "$BT" compare-conditions $C --variant $V > /dev/null && "$BT" formatting-sweep $C > /dev/null &&
        "$BT" steering-sweep $C > /dev/null && "$BT" make-report $C > /dev/null && "$BT" merge $C --stage generate > /dev/null
}
for n in 1 2 3; do
    hand=$(echo "$plain" | sed "s/^./$(echo ABC | cut -c$n)/") # a run id of the same length: figure notes are cut to fit
    if by_hand "$hand" $n > hand.log 2>&1; then
        same_run . "$plain" . "$hand"
        no_times reports/backtracking_state_transition_report.md "$hand" | cmp -s - plain_report.md || diffs="$diffs report"
        [ -z "$diffs" ] && [ "$n_files" -ge 15 ] &&
            ok "$n shards by hand (mean ablation): $n_files analysis files, every generation and the report as unsharded" ||
            bad "$n shards by hand give an unsharded run's bytes" "differ:$diffs ($n_files files)"
    else bad "$n shards by hand" "$(tail -n 3 hand.log)"; fi
done
# The shard CSVs load with pandas as the README documents them (the by-hand runs keep their shards).
PY=; for p in python3 /usr/bin/python3; do
    if [ -z "$PY" ] && "$p" -c 'import numpy, pandas' > /dev/null 2>&1; then PY=$p; fi
done
if [ -z "$PY" ]; then skipped "shard CSVs as pandas reads them" "no python3 with numpy and pandas"
elif "$PY" "$ROOT/tests/csv_check.py" "$ROOT/README.md" runs/$hand/analysis/*.shard-*.csv > csv.log 2>&1 &&
    [ "$(grep -c '^ok' csv.log)" -ge 12 ]; then
    ok "shard CSVs load with pandas with the README's columns ($(grep -c '^ok' csv.log) files)"
else bad "shard CSVs as pandas reads them" "$(grep -v '^ok' csv.log | head -n 3)"; fi
C="--config mean.ini --quiet"
before=$(ls runs/$hand/analysis | wc -l)
for s in 0/4 5/4 x/y 3 1/1000; do expect "--shard $s refused" 2 "--shard" "$BT" logit-lens $C --shard $s; done
for s in 0/4 x/y; do
    for st in "generate --condition baseline" "ablation-scan" "collateral-damage" "directions"; do
        expect "$st --shard $s refused" 2 "--shard" "$BT" $st $C --shard $s
    done
done
[ "$(ls runs/$hand/analysis | wc -l)" = "$before" ] && ok "refused --shard values wrote nothing" ||
    bad "refused --shard values wrote nothing" "$(ls runs/$hand/analysis | wc -l) files, $before before"
expect "--shard auto outside Slurm refused" 2 "SLURM_ARRAY_TASK_ID is not set" env -u SLURM_ARRAY_TASK_ID "$BT" logit-lens $C --shard auto
# detect-events ran again since the shards were made, leaving the baseline events as they were: a
# finished shard is skipped; a shard whose files are gone is done again.
expect "--shard auto: task 7 of an array 5..7 is shard 3/3, already done" 0 "shard 3/3 is already there" \
    env SLURM_ARRAY_TASK_ID=7 SLURM_ARRAY_TASK_MIN=5 SLURM_ARRAY_TASK_COUNT=3 "$BT" logit-lens $C --shard auto
rm runs/$hand/analysis/logit_lens.shard-003-of-003.*
expect "--shard auto with BT_SHARDS: task 3 resubmitted alone is shard 3/3, done again" 0 "\\(shard 3/3: " \
    env SLURM_ARRAY_TASK_ID=3 SLURM_ARRAY_TASK_MIN=3 SLURM_ARRAY_TASK_COUNT=1 BT_SHARDS=3 "$BT" logit-lens $C --shard auto
# A report job resubmitted merges collateral damage again after detect-events renumbered the events.
"$BT" merge $C --stage collateral-damage > merge.log 2>&1 &&
    sed "s/$hand/$plain/g" runs/$hand/analysis/collateral_damage.csv |
    cmp -s - runs/$plain/analysis/collateral_damage.csv &&
    ok "merge --stage collateral-damage again after the last detect-events: the same file" ||
    bad "merge --stage collateral-damage again" "$(cat merge.log)"
expect "N mismatched with the shards there refused" 2 "by N = 3 are there" "$BT" logit-lens $C --shard 2/4
G=runs/$hand/generations/baseline_think_newline
rm -f $G/targeted_ablation.jsonl $G/targeted_ablation.shard-002-of-003.jsonl # the merged file gone: readers take the shards
expect "a shard set with a hole refused, naming the missing file" 2 "1 of 3 missing: .*targeted_ablation.shard-002-of-003.jsonl" \
    "$BT" detect-events $C
"$BT" init-run $C --run-id other > /dev/null
O=runs/other/generations/baseline_think_newline
for k in 1 2 3; do "$BT" generate $C --condition baseline --variant baseline_think_newline --shard $k/3 > /dev/null 2>&1; done
for k in 1 2 3; do cp $O/baseline.shard-00$k-of-003.jsonl $O/targeted_ablation.shard-00$k-of-003.jsonl; done
expect "a shard without its manifest refused" 2 "has no manifest" "$BT" detect-events $C
cp $G/targeted_ablation.shard-00[123]-of-003.* $O/
expect "shards of another run refused" 2 "a shard of run $hand, not of run other" "$BT" detect-events $C
cp $G/baseline.shard-001-of-003.* $O/
expect "writing into another run's shard refused" 2 "belongs to run $hand" \
    "$BT" generate $C --condition baseline --variant baseline_think_newline --shard 1/3
before=$(ls runs/other/analysis 2> /dev/null | wc -l)
expect "merge with no shards refused" 2 "no shards of logit-lens" "$BT" merge $C --stage logit-lens
[ "$(ls runs/other/analysis 2> /dev/null | wc -l)" = "$before" ] && ok "refused merges wrote nothing" || bad "refused merges wrote nothing" "$(ls runs/other/analysis)"

# The scan with heads (every head by attribution; heads exactly with top_k_heads) in 2 shards: the unsharded bytes.
A=runs/$plain/analysis
scan_shards() {
    for k in 2 1; do BT_RUN_ID=$plain "$BT" ablation-scan $H --shard $k/2 > /dev/null || return 1; done
    BT_RUN_ID=$plain "$BT" merge $H --stage ablation-scan > /dev/null
}
for m in "method = attribution" "top_k_heads = 1"; do
    sed -e '/^method = /d' -e '/^top_k_heads = /d' -e "s/^max_events = 100/max_events = 100\n$m/" mean.ini > heads.ini
    H="--config heads.ini --threads 1 --quiet"
    rm -f $A/ablation_importance.shard-*
    if BT_RUN_ID=$plain "$BT" ablation-scan $H > scan.log 2>&1 && cp $A/ablation_importance.csv imp.csv &&
        cp $A/head_importance.csv heads.csv && rm $A/ablation_importance.csv $A/head_importance.csv &&
        scan_shards >> scan.log 2>&1 && cmp -s imp.csv $A/ablation_importance.csv && cmp -s heads.csv $A/head_importance.csv; then
        ok "ablation-scan with heads ($m) in 2 shards: the unsharded CSVs"
    else bad "ablation-scan with heads ($m) in 2 shards" "$(tail -n 2 scan.log)"; fi
done
# attribution+verify shards in two phases: estimates (2 shards here), then every shard verifies
# what all the estimates choose (3 shards): the unsharded bytes, verified components and all.
sed -e '/^method = /d' -e "s/^max_events = 100/max_events = 100\nmethod = attribution+verify/" -e 's/^verify_k = 4/verify_k = 2/' \
    mean.ini > verify.ini
H="--config verify.ini --threads 1 --quiet"
rm -f $A/ablation_importance.shard-*
expect "attribution+verify's verifying shard refused before its estimates" 2 "run ablation-scan --estimates --shard K/N" \
    env BT_RUN_ID=$plain "$BT" ablation-scan $H --shard 1/2
expect "ablation-scan --estimates unsharded refused" 2 "give --shard K/N" env BT_RUN_ID=$plain "$BT" ablation-scan $H --estimates
expect "ablation-scan --estimates with method exact refused" 2 "method = attribution\+verify" \
    env BT_RUN_ID=$plain "$BT" ablation-scan --config mean.ini --estimates --shard 1/2
if BT_RUN_ID=$plain "$BT" ablation-scan $H > scan.log 2>&1 && cp $A/ablation_importance.csv imp.csv &&
    cp $A/head_importance.csv heads.csv && cp $A/selected_layers.json selected.json &&
    rm $A/ablation_importance.csv $A/head_importance.csv $A/selected_layers.json; then
    for k in 2 1; do BT_RUN_ID=$plain "$BT" ablation-scan $H --estimates --shard $k/2 >> scan.log 2>&1; done
    for k in 3 1 2; do BT_RUN_ID=$plain "$BT" ablation-scan $H --shard $k/3 >> scan.log 2>&1; done
    BT_RUN_ID=$plain "$BT" merge $H --stage ablation-scan >> scan.log 2>&1
    n_exact=$(grep -c ',exact,' imp.csv)
    cmp -s imp.csv $A/ablation_importance.csv && cmp -s heads.csv $A/head_importance.csv &&
        cmp -s selected.json $A/selected_layers.json && [ "$n_exact" = 4 ] && grep -q ',attribution,' imp.csv &&
        ok "attribution+verify: estimates in 2 shards, verification in 3: the unsharded CSVs (2 + 2 layer components verified)" ||
        bad "attribution+verify in two sharded phases" "$n_exact verified; $(tail -n 2 scan.log)"
else bad "attribution+verify unsharded, for the shard comparison" "$(tail -n 2 scan.log)"; fi
# The estimates split the completions by cost (positions once per item): events cluster in this
# organism's completions, so the two shares are not the 8 + 8 a split by count gives.
split=$(cat $A/ablation_estimates.shard-00[12]-of-002.manifest.json |
    grep -o '"units": [0-9]*, "first_unit": [0-9]*, "end_unit": [0-9]*' | tr -dc '0-9 \n' | tr -s ' \n' '  ')
echo "$split" | awk '{ exit !(NF == 6 && $2 == 0 && $3 == $5 && $6 == $1 && $3 != int($1 / 2)) }' &&
    ok "attribution estimates shard by cost: units, first, end of each: $split" ||
    bad "attribution estimates shard by cost" "manifests: $split"
# Broken estimates: a verifying shard names the file and line, exits 2 and writes nothing.
E=$A/ablation_estimates.shard-001-of-002.csv
cp $E estimates.csv && rm -f $A/ablation_importance.shard-*
sed '3s/,[^,]*$/,zz/' estimates.csv > $E
expect "an estimate that is not a number refused, naming its line" 2 "ablation_estimates.shard-001-of-002.csv:3: .*est_drop 'zz' is not a number" \
    env BT_RUN_ID=$plain "$BT" ablation-scan $H --shard 1/2
sed '3d' estimates.csv > $E
expect "a missing estimate refused" 2 "item 0 .* is in no shard" env BT_RUN_ID=$plain "$BT" ablation-scan $H --shard 1/2
cp estimates.csv $E
expect "estimates of another variant refused" 2 "estimate shards are of baseline_think_newline .*, not of no_think_tag" \
    env BT_RUN_ID=$plain "$BT" ablation-scan $H --variant no_think_tag --shard 1/2
[ -z "$(ls $A | grep 'ablation_importance.shard')" ] && ok "refused verifying shards wrote nothing" ||
    bad "refused verifying shards wrote nothing" "$(ls $A | grep shard)"
if [ -z "$PY" ]; then skipped "estimate shard CSVs as pandas reads them" "no python3 with numpy and pandas"
elif "$PY" "$ROOT/tests/csv_check.py" "$ROOT/README.md" $A/ablation_estimates.shard-*.csv > csv.log 2>&1 &&
    [ "$(grep -c '^ok' csv.log)" = 2 ]; then ok "estimate shard CSVs load with pandas with the README's columns"
else bad "estimate shard CSVs as pandas reads them" "$(grep -v '^ok' csv.log | head -n 3)"; fi
"$BT" slurm --config verify.ini --shards 2 --run-id vchain --dir vsl > /dev/null 2>&1 &&
    grep -q -- '--array=1-2' vsl/ablation-estimates.sbatch && grep -q 'ablation-scan .*--estimates .*--shard auto$' vsl/ablation-estimates.sbatch &&
    grep -q -- '--array=1-2' vsl/ablation-scan.sbatch && grep -q '^deps_ablation_scan="detect-events ablation-estimates"$' vsl/submit.sh &&
    grep -q 'merge --stage ablation-scan' vsl/merge-analyses.sbatch &&
    ok "bt slurm: attribution+verify's scan is two job arrays, estimates then verification, merged" ||
    bad "bt slurm with attribution+verify" "$(ls vsl; grep deps_ablation vsl/submit.sh)"

# bt slurm without Slurm: the scripts, their chain and the steering stages only when enabled.
expect "bt slurm writes the chain" 0 "submit with: sh .*/sl/submit.sh" "$BT" slurm $C --shards 3 --run-id chain --dir sl
B=sl/generate-baseline.sbatch
n_scripts=$(ls sl/*.sbatch 2> /dev/null | wc -l)
[ "$n_scripts" = 13 ] && grep -q '^#SBATCH --array=1-3$' $B && grep -q 'generate --condition baseline .*--shard auto$' $B &&
    grep -q '^deps_ablation_scan="detect-events"$' sl/submit.sh &&
    grep -q '^#SBATCH --output=.*/sl/logs/generate-baseline-%A_%a.log$' $B && grep -q 'BT_SHARDS=3' $B &&
    grep -q '^deps_generate_steer="merge-directions"$' sl/submit.sh && grep -q 'steering-sweep' sl/report.sbatch &&
    ! grep -q -- '--array' sl/report.sbatch && ok "bt slurm: 13 scripts, arrays 1-3 with --shard auto, a log per task" ||
    bad "bt slurm's scripts" "$n_scripts scripts: $(grep -h 'SBATCH --array\|shard' sl/*.sbatch | head -n 3)"
sed 's/^enabled = true/enabled = false/' mean.ini > no_steering_chain.ini
"$BT" slurm --config no_steering_chain.ini --quiet --shards 2 --run-id chain2 --dir sl2 > /dev/null 2>&1
[ "$(ls sl2/*.sbatch 2> /dev/null | wc -l)" = 10 ] && ! grep -qE 'steer[-_ ]|steering-sweep' sl2/submit.sh sl2/report.sbatch &&
    grep -q '^deps_report="generate-targeted generate-random collateral-damage"$' sl2/submit.sh &&
    ok "bt slurm leaves the steering stages out when [steering] enabled = false" ||
    bad "bt slurm without steering" "$(ls sl2 | tr '\n' ' ')"
expect "bt slurm --shards 0 refused" 2 "--shards" "$BT" slurm $C --shards 0 --dir sl3
expect "bt slurm --partition with a space refused" 2 "one word" "$BT" slurm $C --partition 'a b' --dir sl3
[ ! -e sl3 ] && ok "refused bt slurm wrote nothing" || bad "refused bt slurm wrote nothing" "$(ls sl3)"

# --- A real Slurm.
slurm_missing=""
for p in slurmctld slurmd munged mungekey sbatch squeue scancel sinfo; do
    command -v $p > /dev/null 2>&1 || [ -x /usr/sbin/$p ] || slurm_missing="$slurm_missing $p"
done
if [ -n "$slurm_missing" ]; then
    skipped "bt slurm on a real Slurm" "not installed:$slurm_missing (Debian: slurm-wlm munge)"
elif [ "$(id -u)" != 0 ]; then
    skipped "bt slurm on a real Slurm" "not root: the test starts its own slurmd, which runs jobs as their user"
else
scratch
PATH=$PATH:/usr/sbin
T=$(mktemp -d /tmp/bt-slurm.XXXXXX) # short: the munge socket's path must fit a sockaddr_un
slurm_stop() { # the jobs, then the daemons this test started, by their pids
    if [ -n "${SLURM_CONF:-}" ]; then
        for j in $(cut -d' ' -f2 slurm/*/jobs.txt 2> /dev/null); do scancel "$j" 2> /dev/null; done
        i=0; while [ $i -lt 50 ] && [ -n "$(squeue -h 2> /dev/null)" ]; do sleep 0.1; i=$((i + 1)); done
    fi
    for f in slurmd slurmctld munged; do [ -f "$T/$f.pid" ] && kill "$(cat "$T/$f.pid")" 2> /dev/null; done
    sleep 0.5
    rm -rf "$T"
    unset SLURM_CONF
    trap - EXIT INT TERM
}
trap slurm_stop EXIT INT TERM
port=$((20000 + ($$ % 5000) * 2))
cpus=$(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' | head -n 1)
mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -n 1)
mkdir -p "$T/state" "$T/spool"
cat > "$T/slurm.conf" << EOF
ClusterName=bttest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$T/munge.sock
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/slurmctld.log
SlurmdLogFile=$T/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=sched_interval=1
MinJobAge=600
KillWait=2
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
NodeName=btnode NodeHostname=localhost NodeAddr=127.0.0.1 CPUs=${cpus:-1} RealMemory=${mem:-1000} State=UNKNOWN
PartitionName=bt Nodes=btnode Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$T/slurm.conf"
started=0
if mungekey -c -k "$T/munge.key" > "$T/setup.log" 2>&1 &&
    munged --force -S "$T/munge.sock" --key-file="$T/munge.key" --log-file="$T/munged.log" --pid-file="$T/munged.pid" \
        --seed-file="$T/munged.seed" >> "$T/setup.log" 2>&1 &&
    slurmctld -f "$SLURM_CONF" -i >> "$T/setup.log" 2>&1 && slurmd -f "$SLURM_CONF" -N btnode >> "$T/setup.log" 2>&1; then
    i=0; while [ $i -lt 100 ] && [ "$(sinfo -h -n btnode -o %t 2> /dev/null)" != idle ]; do sleep 0.2; i=$((i + 1)); done
    [ "$(sinfo -h -n btnode -o %t 2> /dev/null)" = idle ] && started=1
fi
# The chain on the cluster, compared with a plain run in the same directory; returns at the first failure.
# The scan is attribution+verify, as in the real-model configs: its two phases are two arrays.
slurm_chain() {
    shard_config -e 's/^method = exact/method = attribution+verify/' > s.ini
    "$BT" run --config "$PWD/s.ini" --threads 1 --quiet > plain.log 2>&1 || { bad "plain bt run for the Slurm comparison" "$(tail -n 2 plain.log)"; return; }
    plain=$(cat runs/.current_run_id)
    cp reports/backtracking_state_transition_report.md plain_report.md
    id=$(echo "$plain" | sed 's/^./S/')
    t0=$(date +%s)
    # A FIFO for the timing sidecar of targeted generation's shard 2 holds that task after its first record
    # (the open for append waits for a reader), so the cancel below lands mid-run, deterministically.
    fifo=runs/$id/generations/baseline_think_newline/targeted_ablation.shard-002-of-004.timing.jsonl
    shard=${fifo%.timing.jsonl}.jsonl
    "$BT" slurm --config "$PWD/s.ini" --shards 4 --cpus 1 --run-id "$id" --submit > submit.log 2>&1 ||
        { bad "bt slurm --submit" "$(tail -n 3 submit.log)"; return; }
    [ "$(grep -cE '^[a-z-]+ [0-9]+$' submit.log)" = 14 ] && grep -q '^ablation-estimates [0-9]' submit.log &&
        ok "bt slurm --submit: 14 jobs (9 arrays of 4, the scan's estimates among them), their ids printed" ||
        { bad "bt slurm --submit prints the job ids" "$(head -n 3 submit.log)"; return; }
    wait_for() { # wait_for TENTHS CONDITION...: poll until the condition holds; 1 if it never did
        n=$1; shift
        while [ "$n" -gt 0 ]; do "$@" && return 0; sleep 0.1; n=$((n - 1)); done
        return 1
    }
    wait_for 300 test -f runs/$id/meta.json || { bad "the chain's prepare job" "$(cat slurm/$id/logs/prepare-*.log)"; return; }
    mkdir -p "$(dirname $fifo)" && mkfifo $fifo
    targeted=$(sed -n 's/^generate-targeted //p' slurm/$id/jobs.txt)
    has_record() { [ "$(cat $shard 2> /dev/null | wc -l)" -ge 1 ]; }
    wait_for 900 has_record || { bad "the chain reaches generate-targeted" "$(squeue -h | head -n 3; tail -n 3 slurm/$id/logs/*.log)"; return; }
    state=$(squeue -h -j "${targeted}_2" -o %T 2> /dev/null)
    scancel "${targeted}_2"
    [ "$(wc -l < $shard)" = 1 ] && [ "$state" = RUNNING ] &&
        ok "array task generate-targeted 2 cancelled mid-run (1 of its 4 records written)" ||
        { bad "array task cancelled mid-run" "it had $(wc -l < $shard) records, state '$state'"; return; }
    # The chain stops: the report waits on a dependency that can no longer be met, the rest finishes.
    stuck() { squeue -h -o '%j %r' | grep -q 'bt-report DependencyNeverSatisfied' && [ "$(squeue -h | wc -l)" = 1 ]; }
    wait_for 900 stuck || { bad "the chain stops at the report" "$(squeue -h -o '%i %j %T %r')"; return; }
    rm -f $fifo
    sh slurm/$id/submit.sh generate-targeted 2 > resubmit.log 2>&1 && grep -q '^report [0-9]' resubmit.log &&
        ok "resubmitted with submit.sh generate-targeted 2: $(tr '\n' ' ' < resubmit.log)" ||
        { bad "submit.sh generate-targeted 2" "$(cat resubmit.log)"; return; }
    idle() { [ -z "$(squeue -h)" ]; }
    if ! wait_for 1200 idle || [ ! -f runs/$id/analysis/condition_comparison.csv ]; then
        bad "the Slurm chain finishes" "$(squeue -h | head -n 3; tail -n 2 slurm/$id/logs/*.log | tail -n 8)"
        return
    fi
    same_run . "$plain" . "$id"
    [ -z "$diffs" ] && [ "$n_files" -ge 11 ] &&
        ok "Slurm run equals the plain run: $n_files analysis files and every generation ($(($(date +%s) - t0)) s)" ||
        bad "Slurm run equals the plain run" "differ:$diffs ($n_files files)"
    no_times plain_report.md "$plain" > a.md
    no_times reports/backtracking_state_transition_report.md "$id" > b.md
    cmp -s a.md b.md && ok "Slurm run's report equals the plain run's (run id and times aside)" ||
        bad "Slurm run's report" "$(diff a.md b.md | head -n 4)"
    [ "$(ls slurm/$id/logs | grep -c '^generate-baseline-[0-9]*_[1-4].log$')" = 4 ] && ok "a log per array task" ||
        bad "a log per array task" "$(ls slurm/$id/logs | tr '\n' ' ')"
}
if [ $started = 0 ]; then
    bad "a one-node Slurm on localhost" "$(cat "$T/setup.log" "$T/slurmctld.log" "$T/slurmd.log" 2> /dev/null | tail -n 4)"
else
    ok "a one-node Slurm on localhost ($cpus CPUs): munged, slurmctld, slurmd"
    slurm_chain
fi
slurm_stop
fi
