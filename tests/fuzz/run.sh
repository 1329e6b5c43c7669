#!/bin/sh
# tests/fuzz/run.sh (make fuzz): builds the libFuzzer targets with clang and runs each for
# FUZZ_SECONDS, nice'd, one at a time, from a seed corpus of ../shared's real files
# (linked by path, never copied into the repository) and this project's own artifacts
# (made here by bt run on the embedded organism). A crash, leak or UB report is saved in
# tests/fuzz/crashes/<target>/, which make test replays. Ends with one line per target:
# executions, corpus size and libFuzzer's cov:.
# FUZZ_TARGETS="json csv" runs some; FUZZ_ARGS adds libFuzzer flags (e.g. -runs=N).
set -u
ROOT=$(pwd)
SHARED=$(cd "${BT_SHARED:-$ROOT/../shared}" 2>/dev/null && pwd || echo /nonexistent)
FUZZ_CC=${FUZZ_CC:-clang}
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
BT=$(cd "$(dirname "${BT:-./bt}")" && pwd)/$(basename "${BT:-./bt}")
REPLAY=$ROOT/${FUZZ_REPLAY:-build/fuzz_replay}
TARGETS=${FUZZ_TARGETS:-$("$REPLAY" --targets)}
F=$ROOT/build/fuzz
mkdir -p "$F"

probe='int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }'
if ! printf '%s\n' "$probe" | "$FUZZ_CC" -fsanitize=fuzzer,address,undefined -x c - -o "$F/probe" >/dev/null 2>&1; then
    echo "make fuzz: skipped: $FUZZ_CC cannot build libFuzzer targets (needs clang with libFuzzer, e.g. Debian's libclang-rt-dev)"
    exit 0
fi
make -s fuzz-targets FUZZ_CC="$FUZZ_CC" || exit 1

# Seeds: fresh each time, links to real files plus artifacts of a small organism run.
S=$F/seeds
rm -rf "$S" "$F/work"
for t in $TARGETS; do mkdir -p "$S/$t" "$F/corpus/$t" "$ROOT/tests/fuzz/crashes/$t"; done
seed() { # seed TARGET FILE...: links each existing file into the target's seed directory
    t=$1; shift
    [ -d "$S/$t" ] || return 0
    for f in "$@"; do [ -f "$f" ] && ln -sf "$f" "$S/$t/$(echo "$f" | sed "s|^$ROOT/||; s|^$SHARED/||; s|/|_|g")"; done
}
W=$F/work
mkdir -p "$W" && cd "$W" && cp -r "$ROOT/configs" .
sed -e 's/^n_problems = 40/n_problems = 6/' -e 's/^max_new_tokens = 96/max_new_tokens = 48/' \
    configs/backtracking_state_transition.ini > small.ini
sed 's/^kind = zero/kind = mean/' small.ini > mean.ini
if "$BT" run --config small.ini --threads 1 --quiet >run.log 2>&1 &&
   "$BT" ablation-scan --config mean.ini --threads 1 --quiet >>run.log 2>&1; then
    R=$W/runs/$(cat runs/.current_run_id)
    A=$R/analysis
    for g in "$R"/generations/*/*.jsonl; do
        case $g in *.timing.jsonl) continue ;; esac
        head -n 1 "$g" > "$g.line1.json"
    done
else
    echo "make fuzz: bt run on the organism failed; seeding from ../shared only"; tail -n 3 run.log; R=/nonexistent; A=/nonexistent
fi
"$BT" make-organism "$W/organism" --quiet >/dev/null 2>&1
O=$W/organism
"$REPLAY" --seed-safetensors "$W/tiny.safetensors"
for tk in "$SHARED"/tokenizers/*/tokenizer.json; do
    [ -f "$tk" ] && "$REPLAY" --shrink-tokenizer "$tk" "$W/$(basename "$(dirname "$tk")")_2000.tokenizer.json" 2000
done
head -n 3 "$SHARED/gsm8k/test.jsonl" > gsm8k_test_3.jsonl 2>/dev/null
head -n 60 "$SHARED/gsm8k/train.jsonl" > gsm8k_train_60.jsonl 2>/dev/null
cd "$ROOT"

seed json "$SHARED"/reference/*/config.json "$SHARED"/reference/*/model.safetensors.index.json \
    "$SHARED"/tokenizers/*/tokenizer_config.json "$SHARED"/tokenizers/*/special_tokens_map.json \
    "$O"/config.json "$O"/generation_config.json "$O"/tokenizer_config.json "$O"/tokenizer.json \
    "$R"/meta.json "$A"/*.json "$R"/generations/*/*.line1.json
seed ini "$ROOT"/configs/*.ini "$R"/config_resolved.ini
seed model_config "$SHARED"/reference/*/config.json "$O"/config.json
seed safetensors "$W"/tiny.safetensors "$SHARED"/reference/*/*.safetensors "$O"/model.safetensors
seed tokenizer "$O"/tokenizer.json "$W"/*_2000.tokenizer.json "$SHARED"/tokenizers/*/tokenizer.json
seed generations "$R"/generations/*/baseline.jsonl "$R"/generations/*/*_ablation.jsonl
seed problems "$W"/gsm8k_*.jsonl "$SHARED"/gsm8k/test.jsonl "$W"/data/processed/*.jsonl
seed csv "$A"/*.csv
seed layers "$A"/selected_layers.json "$A"/random_layers.json "$A"/component_means.json

max_len() {
    case $1 in
    ini|model_config) echo 8192 ;;
    tokenizer) echo 262144 ;;
    *) echo 65536 ;;
    esac
}

status=0
summary=""
for t in $TARGETS; do
    log=$F/$t.log
    echo "fuzz $t: ${FUZZ_SECONDS} s from $(ls "$S/$t" | wc -l) seeds"
    mkdir -p "$F/tmp"
    TMPDIR=$([ -d /dev/shm ] && echo /dev/shm || echo "$F/tmp") \
    nice -n 10 "$F/fuzz-$t" -max_total_time="$FUZZ_SECONDS" -max_len="$(max_len "$t")" -timeout=30 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$ROOT/tests/fuzz/crashes/$t/" ${FUZZ_ARGS:-} \
        "$F/corpus/$t" "$S/$t" >"$log" 2>&1
    rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1 | cut -d' ' -f2)
    ft=$(grep -oE 'ft: [0-9]+' "$log" | tail -n 1 | cut -d' ' -f2)
    corp=$(ls "$F/corpus/$t" | wc -l)
    line="$t: ${runs:-0} executions, corpus $corp, cov: ${cov:-?}, ft: ${ft:-?}"
    if [ $rc -ne 0 ]; then
        status=1
        line="$line, FAILED (exit $rc): $(grep -m 1 -E 'ERROR|runtime error|invariant' "$log")"
        grep -E '^artifact_prefix|Test unit written' "$log"
    fi
    echo "$line"
    summary="$summary$line
"
done
printf '\n%s' "$summary"
exit $status
