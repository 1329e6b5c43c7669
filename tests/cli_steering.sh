# tests/cli_steering.sh: steering on the planted organism (sourced by cli.sh): bt directions, the
# steered conditions, steering-sweep and the report, against the organism's recorded features;
# determinism of steered generation; bad input. Small settings keep it to seconds.

scratch
sed -e 's/^n_problems = 40/n_problems = 10/' -e 's/^samples_per_problem = 2/samples_per_problem = 4/' \
    -e 's/^max_new_tokens = 96/max_new_tokens = 64/' -e 's/^batch_size = 16/batch_size = 8/' \
    configs/backtracking_state_transition.ini > st.ini
"$BT" init-run --config st.ini --quiet >/dev/null && "$BT" prepare-data --config st.ini --quiet >/dev/null
for v in baseline_think_newline no_think_tag; do "$BT" generate --config st.ini --condition baseline --variant $v --quiet; done
"$BT" detect-events --config st.ini --quiet >/dev/null
R=runs/$(cat runs/.current_run_id); A=$R/analysis; G=$R/generations
expect "steering before directions" 2 "no analysis/directions.safetensors in run .*: run directions first" \
    "$BT" generate --config st.ini --condition steer --variant baseline_think_newline
ls $G/baseline_think_newline/steer_* >/dev/null 2>&1 && bad "nothing written without directions" "a steer file exists" ||
    ok "nothing written without directions"
expect "directions" 0 "directions: [0-9]+ completions, [0-9]+ positive and [0-9]+ negative positions, 5 layers" \
    "$BT" directions --config st.ini

# The format contrast (thinking vs no_think_tag prose) finds the thinking flag: its recorded dim is
# the largest component of the direction at the layer where the flag is whole (after the planted head).
flag=$(sed -n 's/.*"thinking_flag": {"dim": \([0-9]*\), "layer": \([0-9]*\),.*/\1 \2/p' models/organism/config.json)
flag_dim=${flag% *}; flag_layer=${flag#* }
col() { head -n 1 "$1" | tr ',' '\n' | grep -nx "$2" | cut -d: -f1; }
dc=$A/directions.csv
row_at() { awk -F, -v l="$1" -v c="$(col $dc "$2")" -v lc="$(col $dc layer)" 'NR > 1 && $lc == l { print $c }' $dc; }
top=$(row_at "$flag_layer" top_dim); share=$(row_at "$flag_layer" top_component)
if [ -n "$flag_dim" ] && [ "$top" = "$flag_dim" ] && awk -v s="$share" 'BEGIN { exit !(s >= 0.7) }'; then
    ok "thinking vs no_think_tag: the flag dim $flag_dim is the top component at layer $flag_layer (cosine $share)"
else bad "the flag direction" "flag dim '$flag_dim' layer '$flag_layer': top dim $top, component $share"; fi
[ "$(row_at 0 top_dim)" != "$flag_dim" ] && ok "no flag in the embeddings' direction" || bad "no flag in the embeddings' direction" "top dim is the flag"
if awk -F, -v a="$(col $dc auroc)" -v lo="$(col $dc auroc_ci_lo)" -v hi="$(col $dc auroc_ci_hi)" -v b="$(col $dc best_auroc)" \
    'NR > 1 { n++; if (!($lo <= $a && $a <= $hi && $a > 0.5 && $a <= 1)) bad = 1; best += $b } END { exit !(n == 5 && !bad && best == 1) }' $dc; then
    ok "directions.csv: a held-out AUROC above 0.5 inside its CI per layer, one best layer"
else bad "directions.csv AUROC" "$(cut -d, -f5,15-18 $dc | tr '\n' ' ')"; fi
# Directions do not depend on how completions are grouped or on threads.
cp $dc d8.csv; cp $A/directions.safetensors d8.safetensors
sed 's/^batch_size = .*/batch_size = 1/' st.ini > d1.ini
"$BT" directions --config d1.ini --threads 1 --quiet >/dev/null && cmp -s $dc d8.csv && cmp -s $A/directions.safetensors d8.safetensors &&
    ok "directions: the same files with one completion per pass on one thread" || bad "directions grouping" "$(diff d8.csv $dc | head -n 3)"
# The file is a plain safetensors file: numpy reads it from the public layout.
if [ -n "$PY" ]; then
    out=$("$PY" "$ROOT/tests/directions_check.py" $A/directions.safetensors $dc 2>&1) &&
        ok "directions.safetensors loads with numpy and matches directions.csv" || bad "directions.safetensors with numpy" "$out"
else skipped "directions.safetensors with numpy" "python3 with numpy and pandas is not installed"; fi

# The steered conditions: every variant of [steering] variants, one file per alpha.
for g in steer steer_random project_out; do "$BT" generate --config st.ini --condition $g --quiet || bad "generate --condition $g" "exit $?"; done
n_files=$(ls $G/baseline_think_newline/ $G/no_think_tag/ | grep -cE '^(steer_[-+]1|steer_random_[-+]1|project_out)\.jsonl$')
[ "$n_files" -eq 10 ] && ok "steer, steer_random, project_out: one file per alpha and variant" || bad "steered files" "$n_files of 10"
grep -q '"steering": {"kind": "direction", "layer": 2, "alpha": -1, "norm": ' $G/baseline_think_newline/steer_-1.jsonl &&
    ok "a steered record says how it was steered" || bad "steered record" "$(head -c 300 $G/baseline_think_newline/steer_-1.jsonl)"
"$BT" detect-events --config st.ini --quiet >/dev/null
expect "steering-sweep" 0 "steering-sweep: no_think_tag: rate at baseline 0.000" "$BT" steering-sweep --config st.ini
if [ -n "$PY" ]; then
    "$PY" "$ROOT/tests/csv_check.py" "$ROOT/README.md" $A/directions.csv $A/steering_sweep.csv > csv.log 2>&1 &&
        ok "directions.csv and steering_sweep.csv load with pandas as the README documents" ||
        bad "steering CSVs as pandas reads them" "$(grep -v '^ok' csv.log | head -n 3)"
else skipped "steering CSVs as pandas reads them" "python3 with numpy and pandas is not installed"; fi
sw=$A/steering_sweep.csv
# rate and paired p of one variant / condition
rate() { awk -F, -v v="$1" -v k="$2" -v vc="$(col $sw variant)" -v kc="$(col $sw condition)" -v c="$(col $sw "$3")" \
    'NR > 1 && $vc == v && $kc == k { print $c }' $sw; }
if awk -v r="$(rate baseline_think_newline steer_-1 backtracking_rate)" -v p="$(rate baseline_think_newline steer_-1 p_vs_baseline)" \
    -v b="$(rate baseline_think_newline baseline backtracking_rate)" 'BEGIN { exit !(b >= 0.3 && r <= 0.05 && p < 0.05) }'; then
    ok "subtracting the flag direction takes baseline_think_newline's rate to near zero"
else bad "subtracting the flag direction" "baseline $(rate baseline_think_newline baseline backtracking_rate), steer_-1 $(rate baseline_think_newline steer_-1 backtracking_rate)"; fi
if awk -v r="$(rate no_think_tag steer_+1 backtracking_rate)" -v p="$(rate no_think_tag steer_+1 p_vs_baseline)" \
    'BEGIN { exit !(r >= 0.3 && p < 0.05) }'; then ok "adding the flag direction makes no_think_tag backtrack"
else bad "adding the flag direction" "no_think_tag steer_+1 rate $(rate no_think_tag steer_+1 backtracking_rate)"; fi
if awk -v r="$(rate baseline_think_newline project_out backtracking_rate)" -v p="$(rate baseline_think_newline project_out p_vs_baseline)" \
    -v b="$(rate baseline_think_newline baseline backtracking_rate)" 'BEGIN { exit !(r < b && p < 0.05) }'; then
    ok "project_out lowers baseline_think_newline's rate"
else bad "project_out" "rate $(rate baseline_think_newline project_out backtracking_rate)"; fi
# A random direction of the same norm does not do what the flag direction does: no_think_tag stays
# at its baseline. (Inside <think> it does move the rate: README, "Steering".)
if awk -v a="$(rate no_think_tag steer_random_+1 rate_ci_lo)" -v b="$(rate no_think_tag steer_random_-1 rate_ci_lo)" \
    -v base="$(rate no_think_tag baseline backtracking_rate)" 'BEGIN { exit !(a <= base && b <= base) }'; then
    ok "the random direction at the same alphas leaves no_think_tag within its CI"
else bad "random direction on no_think_tag" "$(rate no_think_tag steer_random_+1 backtracking_rate)"; fi
expect "make-report with the steering section" 0 "H3 \(linear direction\): (supported|not supported|inconclusive)" "$BT" make-report --config st.ini
report=reports/backtracking_state_transition_report.md
grep -q '^## Steering (H3)$' $report && grep -q '^H3 (linear direction): ' $report && grep -q "](../figures/backtracking_rate_by_steering.svg)" $report &&
    [ -s figures/backtracking_rate_by_steering.svg ] && ok "report: H3 verdict, steering section and figure" || bad "report steering section" "missing"
if command -v python3 >/dev/null 2>&1; then
    python3 "$ROOT/tests/svg_check.py" xml figures/backtracking_rate_by_steering.svg >/dev/null 2>&1 &&
        ok "steering figure is a well-formed SVG" || bad "steering figure" "$(python3 "$ROOT/tests/svg_check.py" xml figures/backtracking_rate_by_steering.svg 2>&1 | tail -n 2)"
fi

# Steered generation has the guarantees of every condition: byte-identical for batch 1, 3 and 8
# and 1 or 2 threads, and it resumes after a torn write.
cp $G/no_think_tag/steer_+1.jsonl st_ref.jsonl
same=1
for bt in "1 1" "3 2" "8 1"; do
    set -- $bt
    sed "s/^batch_size = .*/batch_size = $1/" st.ini > sb.ini
    rm -f $G/no_think_tag/steer_+1.jsonl $G/no_think_tag/project_out.jsonl
    "$BT" generate --config sb.ini --condition steer --variant no_think_tag --threads "$2" --quiet &&
        "$BT" generate --config sb.ini --condition project_out --variant no_think_tag --threads "$2" --quiet || same=0
    cmp -s $G/no_think_tag/steer_+1.jsonl st_ref.jsonl || same=0
done
[ $same -eq 1 ] && ok "steered generation: byte-identical for batch 1/3/8 and 1/2 threads" || bad "steered generation determinism" "files differ"
head -n 5 st_ref.jsonl > $G/no_think_tag/steer_+1.jsonl
printf '{"problem_id": "builtin_00' >> $G/no_think_tag/steer_+1.jsonl
"$BT" generate --config st.ini --condition steer --variant no_think_tag --quiet
cmp -s $G/no_think_tag/steer_+1.jsonl st_ref.jsonl && ok "steered generation resumes after a torn write" ||
    bad "steered generation resumes" "$(wc -l < $G/no_think_tag/steer_+1.jsonl) records"
# bt forward --steer adds the same vector as the condition: the first steered record's prompt and first
# token, greedy, under the same mask (a smoke test of the flag path).
expect "forward --steer" 0 '"top":\[\[' "$BT" forward --model models/organism --ids 1,2,3 --top 1 --directions $A/directions.safetensors --steer 2:1
expect "forward --project-out" 0 '"top":\[\[' "$BT" forward --model models/organism --ids 1,2,3 --top 1 --directions $A/directions.safetensors --project-out 2
expect "forward --steer without --directions" 2 "--steer needs --directions FILE" "$BT" forward --model models/organism --ids 1,2 --steer 2:1
expect "forward --steer out of range" 2 "layer 9 out of range \[0, 4\]" "$BT" forward --model models/organism --ids 1,2 --directions $A/directions.safetensors --steer 9:1

# With events as positives and their position-matched controls as negatives (both inside thinking) the
# direction is made of the window's own tokens, not the flag: a direction is only as specific as its contrast.
sed -e 's/^positives = thinking/positives = events/' -e 's/^negatives = variant:no_think_tag/negatives = controls/' st.ini > ev.ini
cp $A/directions.csv dirs_flag.csv; cp $A/directions.safetensors dirs_flag.safetensors
if "$BT" directions --config ev.ini --quiet >/dev/null; then
    top=$(row_at "$flag_layer" top_dim); share=$(row_at "$flag_layer" top_component)
    # the residual dims of the window's tokens: where each token's embedding is largest
    window_dims=""
    for w in " Wait" "," " let" " me" " check" " that"; do
        id=$("$BT" tokenize --tokenizer models/organism/tokenizer.json --text "$w" | sed 's/.*"ids":\[\([0-9]*\)\].*/\1/')
        window_dims="$window_dims $("$BT" forward --model models/organism --ids "$id" --hidden --top 1 |
            sed 's/.*"hidden":\[\[\([^]]*\)\].*/\1/' | tr ',' '\n' | awk 'NR == 1 || $1 > m { m = $1; i = NR - 1 } END { print i }')"
    done
    case " $window_dims " in *" $top "*) in_window=1 ;; *) in_window=0 ;; esac
    if [ "$top" != "$flag_dim" ] && [ $in_window -eq 1 ]; then
        ok "events vs controls: the top component at layer $flag_layer is dim $top, a token of the window ($window_dims), not the flag"
    else bad "events vs controls direction" "top dim $top ($share), window dims$window_dims, flag $flag_dim"; fi
else bad "directions with events vs controls" "failed"; fi

# Bad input: exit 2, one message naming the key, file or run, nothing written.
cp dirs_flag.csv $A/directions.csv; cp dirs_flag.safetensors $A/directions.safetensors
sed 's/^layer = 2/layer = 9/' st.ini > l9.ini
rm -f $G/baseline_think_newline/steer_-1.jsonl
expect "a steering layer out of range" 2 "l9.ini: \[steering\] layer = 9 is out of range \[0, 4\] for the model in models/organism" \
    "$BT" generate --config l9.ini --condition steer --variant baseline_think_newline
[ ! -e $G/baseline_think_newline/steer_-1.jsonl ] && ok "no generation file for a bad layer" || bad "no generation file for a bad layer" "written"
sed 's/^alphas = .*/alphas = -1, one/' st.ini > na.ini
expect "alphas that are not numbers" 2 "na.ini:[0-9]+: \[steering\] alphas: 'one' is not a number" "$BT" steering-sweep --config na.ini
sed 's/^triggers = .*/triggers = Zzyzx/' ev.ini > none.ini
"$BT" detect-events --config none.ini --quiet >/dev/null
expect "an empty positive set" 2 "none.ini: \[steering\] positives = events gives no positions in run $(cat runs/.current_run_id) \(variant baseline_think_newline has no events\)" \
    "$BT" directions --config none.ini
cmp -s $A/directions.csv dirs_flag.csv && cmp -s $A/directions.safetensors dirs_flag.safetensors &&
    ok "a failed directions run leaves the previous files" || bad "a failed directions run leaves the previous files" "changed"
sed 's/^negatives = .*/negatives = controls/' none.ini > nc.ini
sed -i 's/^positives = .*/positives = thinking/' nc.ini
expect "an empty negative set" 2 "nc.ini: \[steering\] negatives = controls gives no positions in run .* \(variant baseline_think_newline has no events\)" \
    "$BT" directions --config nc.ini
head -c 100 dirs_flag.safetensors > $A/directions.safetensors
expect "a truncated directions file" 2 "directions.safetensors: .*(header|truncated|past the end)" \
    "$BT" generate --config st.ini --condition steer --variant baseline_think_newline
rm -f $A/directions.csv
cp dirs_flag.safetensors $A/directions.safetensors
sed 's/^layer = 2/layer = auto/' st.ini > auto.ini
expect "layer = auto without directions.csv" 2 "no analysis/directions.csv in run .*: run directions first" \
    "$BT" generate --config auto.ini --condition steer --variant baseline_think_newline
expect "steering-sweep of a variant never generated" 2 "no baseline generations of variant think_no_newline in run" \
    "$BT" steering-sweep --config st.ini --variant think_no_newline

# bench times directions (items/s) and steered generation against plain (a time ratio) on the tiny shape.
scratch
"$BT" make-bench-model tiny --shape tiny --quiet
expect "bench --only directions,steer" 0 '"directions_items_s":[0-9][0-9.e+-]*,"steer16_time_ratio":[0-9][0-9.e+-]*[,}]' \
    "$BT" bench --model tiny --repeat 1 --only directions,steer --json --quiet
cd "$ROOT"
