# tests/cli_bad.sh: the broken-input corpus (sourced by cli.sh). Each line of
# tests/bad/MANIFEST is a case: KIND/FILE and a pattern. The runner puts FILE where bt
# expects that kind of file (in a small organism run made once here), runs the command
# that reads it, and asserts: exit 2, exactly one line on stderr, naming the file and
# matching the pattern (the line, key or tensor), no output written, no temp file left.
# FILE may be a special made at test time: @empty, @dir (a directory where the file
# should be), @unreadable (chmod 000), @sparse3g (a 3 GB sparse safetensors file).
# BAD_ONLY=KIND runs one kind; BAD_SHOW=1 prints each case's stderr line.

BAD=$ROOT/tests/bad
scratch
sed -e 's/^n_problems = 40/n_problems = 6/' -e 's/^max_new_tokens = 96/max_new_tokens = 48/' \
    -e 's/^variants = .*/variants = baseline_think_newline/' -e 's/^enabled = true/enabled = false/' configs/backtracking_state_transition.ini > small.ini
sed 's/^kind = zero/kind = mean/' small.ini > mean.ini
sed -e 's/^source = builtin/source = gsm8k/' -e 's/^n_problems = 6/n_problems = 2/' -e 's|^path = models/organism|path = no_model|' \
    -e 's/^make_organism = true/make_organism = false/' -e 's|^\[data\]|[data]\npath = gsm8k.jsonl|' small.ini > gsm.ini
if "$BT" run --config small.ini --threads 1 --quiet >base.log 2>&1 &&
   "$BT" ablation-scan --config mean.ini --threads 1 --quiet >>base.log 2>&1 &&
   "$BT" logit-lens --config small.ini --threads 1 --quiet --shard 1/1 >>base.log 2>&1; then
    RUN=runs/$(cat runs/.current_run_id)
    A=$RUN/analysis
    G=$RUN/generations/baseline_think_newline
    cp -r models/organism model_good && cp -r models/organism m
    cp model_good/tokenizer.json tok.json
    printf '{"question": "Two and two?", "answer": "Add them.\\n#### 4"}\n{"question": "One and one?", "answer": "#### 2"}\n' > gsm8k.jsonl
    printf '{"weight_map": {}}\n' > index_good.json
    bad_base=1
else
    bad "broken-input corpus: base run" "$(tail -n 3 base.log)"
    bad_base=0
fi

# bad_kind KIND: sets DEST (where the file goes), GOOD (what restores it; "" = remove),
# CMD (the bt command reading it) and OUT (what must not be written; "stdout" = nothing printed).
bad_kind() {
    OUT=stdout
    case $1 in
    ini) DEST=bad.ini; GOOD=""; CMD="init-run --config bad.ini --run-id badcase"; OUT=runs/badcase ;;
    config) DEST=m/config.json; GOOD=model_good/config.json; CMD="model-info --model m" ;;
    genconfig) DEST=m/generation_config.json; GOOD=model_good/generation_config.json; CMD="model-info --model m" ;;
    safetensors) DEST=m/model.safetensors; GOOD=model_good/model.safetensors; CMD="model-info --model m" ;;
    index) DEST=m/model.safetensors.index.json; GOOD=""; CMD="model-info --model m" ;;
    tokenizer) DEST=tok.json; GOOD=model_good/tokenizer.json; CMD="tokenize --tokenizer tok.json --text hello" ;;
    problems) DEST=data/processed/builtin_6.jsonl; GOOD=keep; CMD="generate --config small.ini --condition baseline"; OUT=$G/baseline.jsonl ;;
    gsm8k) DEST=gsm8k.jsonl; GOOD=keep; CMD="prepare-data --config gsm.ini"; OUT=data/processed/gsm8k_2.jsonl ;;
    generations) DEST=$G/baseline.jsonl; GOOD=keep; CMD="detect-events --config small.ini"; OUT=$A/backtracking_events.csv ;;
    events) DEST=$A/backtracking_events.csv; GOOD=keep; CMD="logit-lens --config small.ini"; OUT=$A/logit_lens.csv ;;
    compare) DEST=$A/completions.csv; GOOD=keep; CMD="compare-conditions --config small.ini"; OUT=$A/condition_comparison.csv ;;
    scan) DEST=$A/ablation_importance.csv; GOOD=keep; CMD="make-report --config small.ini"; OUT=reports/backtracking_state_transition_report.md ;;
    meta) DEST=$RUN/meta.json; GOOD=keep; CMD="make-report --config small.ini"; OUT=reports/backtracking_state_transition_report.md ;;
    selected) DEST=$A/selected_layers.json; GOOD=keep; CMD="generate --config small.ini --condition targeted_ablation"; OUT=$G/targeted_ablation.jsonl ;;
    random) DEST=$A/random_layers.json; GOOD=keep; CMD="generate --config small.ini --condition random_ablation"; OUT=$G/random_ablation_1.jsonl ;;
    lensshard) DEST=$A/logit_lens.shard-001-of-001.csv; GOOD=keep; CMD="merge --config small.ini --stage logit-lens"; OUT=$A/logit_lens.csv ;;
    lensmanifest) DEST=$A/logit_lens.shard-001-of-001.manifest.json; GOOD=keep; CMD="merge --config small.ini --stage logit-lens"; OUT=$A/logit_lens.csv ;;
    means) DEST=$A/component_means.json; GOOD=keep; CMD="generate --config mean.ini --condition targeted_ablation"; OUT=$G/targeted_ablation.jsonl ;;
    *) return 1 ;;
    esac
}

# bad_place SOURCE: puts the case's file at DEST; returns 1 when the case cannot run here.
bad_place() {
    rm -rf "$DEST"
    case $1 in
    @empty) : > "$DEST" ;;
    @dir) mkdir -p "$DEST" ;;
    @unreadable)
        cp "$held" "$DEST" && chmod 000 "$DEST"
        if cat "$DEST" >/dev/null 2>&1; then why="running as root: chmod 000 does not stop reads"; return 1; fi ;;
    @sparse3g) # header length 2^31 (the 2 GB field), then a hole up to 3 GB: nothing is read or allocated
        printf '\000\000\000\200\000\000\000\000' > "$DEST" && truncate -s 3G "$DEST" ||
            { why="cannot make a sparse 3 GB file here"; return 1; } ;;
    *) sed "s/@RUN_ID@/${RUN#runs/}/g" "$BAD/$2" > "$DEST" ;; # shard files name their run
    esac
}

n_cases=0
if [ $bad_base -eq 1 ]; then
    while read -r case pattern; do
        case $case in ''|'#'*) continue ;; esac
        kind=${case%%/*}; file=${case#*/}
        [ -n "${BAD_ONLY:-}" ] && [ "$BAD_ONLY" != "$kind" ] && continue
        name="bad input $case"
        if ! bad_kind "$kind"; then bad "$name" "unknown kind '$kind' in tests/bad/MANIFEST"; continue; fi
        n_cases=$((n_cases + 1))
        # Hold the good file and the output aside, so the case starts from a clean run.
        held=build_held.$$
        rm -rf "$held"
        if [ -e "$DEST" ]; then cp -p "$DEST" "$held"; else cp small.ini "$held"; fi
        [ "$OUT" != stdout ] && [ -e "$OUT" ] && mv "$OUT" "$OUT.held"
        why=""
        if bad_place "$file" "$case"; then
            "$BT" $CMD --threads 1 --quiet >out.txt 2>err.txt; rc=$?
            line=$(head -n 1 err.txt); n_lines=$(wc -l < err.txt)
            [ -n "${BAD_SHOW:-}" ] && printf "  %s: exit %s: %s\n" "$case" "$rc" "$line"
            base=$(basename "$DEST")
            tmp=$(find . -name '*.tmp.*' | head -n 1)
            if [ $rc -ne 2 ]; then bad "$name" "exit $rc, wanted 2: $line"
            elif [ "$n_lines" -ne 1 ]; then bad "$name" "$n_lines lines on stderr: $(tr '\n' '|' < err.txt | cut -c1-300)"
            elif ! printf '%s\n' "$line" | grep -aqF -- "$base"; then bad "$name" "message does not name $base: $line"
            elif ! printf '%s\n' "$line" | LC_ALL=C grep -aqE -- "$pattern"; then bad "$name" "message lacks /$pattern/: $line"
            elif [ "$OUT" = stdout ] && [ -s out.txt ]; then bad "$name" "printed output: $(head -c 200 out.txt)"
            elif [ "$OUT" != stdout ] && [ -e "$OUT" ]; then bad "$name" "wrote $OUT"
            elif [ -n "$tmp" ]; then bad "$name" "left a temp file $tmp"
            else ok "$name"; fi
        else
            skipped "$name" "$why"
        fi
        # Restore: the good file (or none), the held output.
        chmod -R u+rwx "$DEST" 2>/dev/null; rm -rf "$DEST"
        if [ "$GOOD" = keep ]; then cp -p "$held" "$DEST"; elif [ -n "$GOOD" ]; then cp -p "$GOOD" "$DEST"; fi
        rm -f "$held"
        [ -e "$OUT.held" ] && rm -rf "$OUT" && mv "$OUT.held" "$OUT"
    done < "$BAD/MANIFEST"
    if [ -z "${BAD_ONLY:-}" ]; then
        [ $n_cases -lt 60 ] && bad "broken-input corpus" "only $n_cases cases in tests/bad/MANIFEST (want at least 60)"
        unlisted=$(cd "$BAD" && for f in */*; do grep -q "^$f " MANIFEST || echo "$f"; done)
        [ -z "$unlisted" ] && ok "broken-input corpus: $n_cases cases, every file in tests/bad listed" ||
            bad "broken-input corpus" "files missing from tests/bad/MANIFEST: $(echo $unlisted)"
    fi
fi
