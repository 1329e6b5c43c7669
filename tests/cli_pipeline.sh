# tests/cli_pipeline.sh: generation, events and the whole pipeline on the
# embedded organism (sourced by cli.sh). Small settings keep it to seconds.

scratch
# A small copy of the default experiment: 10 problems x 4 samples, short completions.
sed -e 's/^n_problems = 40/n_problems = 10/' -e 's/^samples_per_problem = 2/samples_per_problem = 4/' \
    -e 's/^max_new_tokens = 96/max_new_tokens = 64/' -e 's/^batch_size = 16/batch_size = 8/' \
    configs/backtracking_state_transition.ini > small.ini
if "$BT" init-run --config small.ini --quiet >/dev/null && "$BT" prepare-data --config small.ini --quiet >/dev/null; then
    ok "organism built by init-run"
else
    bad "organism built by init-run" "$("$BT" prepare-data --config small.ini 2>&1 | tail -n 2)"
fi
gen() { # gen OUT_NAME THREADS BATCH: baseline generation of baseline_think_newline, file copied to OUT_NAME
    sed "s/^batch_size = .*/batch_size = $3/" small.ini > b.ini
    rm -rf runs/"$(cat runs/.current_run_id)"/generations
    "$BT" generate --config b.ini --condition baseline --variant baseline_think_newline --threads "$2" --quiet &&
        cp runs/"$(cat runs/.current_run_id)"/generations/baseline_think_newline/baseline.jsonl "$1"
}
if gen g_1_1.jsonl 1 1 && gen g_2_8.jsonl 2 8 && gen g_1_3.jsonl 1 3; then
    if [ "$(wc -l < g_1_1.jsonl)" -eq 40 ] && cmp -s g_1_1.jsonl g_2_8.jsonl && cmp -s g_1_1.jsonl g_1_3.jsonl; then
        ok "generation: 40 records, byte-identical for batch 1/3/8 and 1/2 threads"
    else bad "generation determinism" "$(wc -l < g_1_1.jsonl) records; files differ"; fi
else bad "generation determinism" "generate failed"; fi
# A crash leaves some whole records and maybe a torn last line: a re-run completes
# the file without losing or duplicating a record.
out=runs/"$(cat runs/.current_run_id)"/generations/baseline_think_newline/baseline.jsonl
head -n 13 g_1_1.jsonl > "$out"
printf '{"problem_id": "builtin_003", "variant": "baseline_th' >> "$out"
"$BT" generate --config small.ini --condition baseline --variant baseline_think_newline --quiet
cmp -s "$out" g_1_1.jsonl && ok "generation resumes after a torn write" || bad "generation resumes after a torn write" "$(wc -l < "$out") records, differs"
# The same with a real kill -9 while it runs (when the machine is slow enough to catch it).
rm -f "$out"
sed "s/^batch_size = .*/batch_size = 1/" small.ini > b.ini
"$BT" generate --config b.ini --condition baseline --variant baseline_think_newline --threads 1 --quiet &
pid=$!
i=0; while [ $i -lt 500 ] && [ "$(cat "$out" 2>/dev/null | wc -l)" -lt 3 ]; do sleep 0.01; i=$((i + 1)); done
kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
partial=$(cat "$out" 2>/dev/null | wc -l)
"$BT" generate --config b.ini --condition baseline --variant baseline_think_newline --quiet
if [ "$partial" -ge 40 ]; then skipped "generation resumes after kill -9" "generation finished before the kill"
elif cmp -s "$out" g_1_1.jsonl; then ok "generation resumes after kill -9 (had $partial records)"
else bad "generation resumes after kill -9" "had $partial records; $(wc -l < "$out") after resume, differs"; fi

# The whole pipeline on the organism recovers the planted answer (a smaller
# version of the default `bt run`).
scratch
sed -e 's/^n_problems = 40/n_problems = 12/' -e 's/^samples_per_problem = 2/samples_per_problem = 4/' \
    -e 's/^max_new_tokens = 96/max_new_tokens = 64/' configs/backtracking_state_transition.ini > e2e.ini
if "$BT" run --config e2e.ini --quiet > run.log 2>&1; then ok "bt run completes every stage"
else bad "bt run completes every stage" "$(tail -n 3 run.log)"; fi
id=$(cat runs/.current_run_id); A=runs/$id/analysis
attn=$(sed -n 's/.*"attn_layer": *\([0-9]*\).*/\1/p' models/organism/config.json)
mlp=$(sed -n 's/.*"mlp_layer": *\([0-9]*\).*/\1/p' models/organism/config.json)
# ablation_importance.csv: run_id,variant,layer,component,...,rank,selected
rank_of() { awk -F, -v l="$1" -v c="$2" 'NR > 1 && $3 == l && $4 == c { print $(NF-1) }' $A/ablation_importance.csv; }
if [ -n "$attn" ] && [ "$(rank_of "$attn" attn)" = 1 ] && [ "$(rank_of "$mlp" mlp)" = 1 ]; then
    ok "ablation scan ranks the planted attention layer $attn and MLP layer $mlp first"
else bad "ablation scan ranks the planted components first" "attn $attn rank $(rank_of "$attn" attn), mlp $mlp rank $(rank_of "$mlp" mlp)"; fi
grep -q "\"attn_layers\": \[$attn\]" $A/selected_layers.json && grep -q "\"mlp_layers\": \[$mlp\]" $A/selected_layers.json &&
    ok "selected_layers.json holds the planted layers" || bad "selected_layers.json holds the planted layers" "$(tr -d '\n' < $A/selected_layers.json)"
col() { head -n 1 "$1" | tr ',' '\n' | grep -nx "$2" | cut -d: -f1; }
cc=$A/condition_comparison.csv
drop_c=$(col $cc relative_drop_vs_baseline); p_c=$(col $cc p_vs_baseline); cond_c=$(col $cc condition)
if awk -F, -v d=$drop_c -v p=$p_c -v k=$cond_c 'NR > 1 && $k == "targeted_ablation" { ok = ($d >= 0.9 && $p < 0.05) }
    NR > 1 && $k ~ /^random_ablation_[0-9]+$/ { n++; if ($d >= 0.2) r = 1 } END { exit !(ok && n == 3 && !r) }' $cc; then
    ok "targeted ablation cuts backtracking >= 90% (McNemar p < 0.05), each of 3 random draws < 20%"
else bad "targeted vs random ablation" "$(cut -d, -f3,6,$drop_c,$p_c $cc | tr '\n' ' ')"; fi
fs=$A/formatting_summary.csv
think_c=$(col $fs thinking_open); rate_c=$(col $fs backtracking_rate)
if awk -F, -v t=$think_c -v r=$rate_c 'NR > 1 { n++; if (($t == 1) != ($r > 0)) bad = 1 } END { exit !(n >= 3 && !bad) }' $fs; then
    ok "formatting sweep: variants with <think> open backtrack, the others do not"
else bad "formatting sweep" "$(cut -d, -f2,$think_c,$rate_c $fs | tr '\n' ' ')"; fi
report=reports/backtracking_state_transition_report.md
grep -q "^The events' curve rises most after block $mlp " $report && ok "logit lens jumps at the planted MLP layer" ||
    bad "logit lens jumps at the planted MLP layer $mlp" "$(grep "rises most" $report)"
grep -q '^H1 (localized trigger): supported$' $report && grep -q '^H2 (format dependence): supported$' $report &&
    grep -q '^H0 (diffuse/reroutable): not supported$' $report && ok "report: H1 supported, H0 not supported, H2 supported" ||
    bad "report verdicts" "$(grep '^H[012] ' $report | tr '\n' ' ')"
n_fig=0; for f in backtracking_rate_by_variant backtracking_vs_accuracy wait_logit_lens_bt_vs_control ablation_importance_by_layer \
    backtracking_rate_by_condition formatting_effect_on_backtracking; do
    [ -s runs/$id/figures/$f.svg ] && cmp -s runs/$id/figures/$f.svg figures/$f.svg && grep -q "](../figures/$f.svg)" $report && n_fig=$((n_fig + 1))
done
[ $n_fig -eq 6 ] && ok "six figures in the run, copied to figures/, embedded in the report" || bad "six figures" "$n_fig of 6"
# The scope-all scan resumes each ablated pass from a group's clean residuals: its
# numbers do not depend on how completions are grouped, nor on the thread count.
cp $A/ablation_importance.csv imp_batch16.csv
sed 's/^batch_size = .*/batch_size = 1/' e2e.ini > b1.ini
if "$BT" ablation-scan --config b1.ini --threads 1 --quiet >/dev/null && cmp -s $A/ablation_importance.csv imp_batch16.csv; then
    ok "scope-all scan: the same CSV with one completion per group on one thread as with 16 on two"
else bad "scope-all scan grouping" "$(diff imp_batch16.csv $A/ablation_importance.csv | head -n 4)"; fi
# The cheap onset scope (ablate only at pred_pos, replay the layers above over the
# clean cache) finds the same components.
sed 's/^scope = all/scope = onset/' e2e.ini > onset.ini
if "$BT" ablation-scan --config onset.ini --quiet >/dev/null && [ "$(rank_of "$attn" attn)" = 1 ] && [ "$(rank_of "$mlp" mlp)" = 1 ] &&
   grep -q '"scope": "onset"' $A/selected_layers.json; then ok "onset-scope scan ranks the planted components first"
else bad "onset-scope scan" "attn rank $(rank_of "$attn" attn), mlp rank $(rank_of "$mlp" mlp)"; fi
# Mean ablation: means estimated on the run's completions, used by the scan and by generation.
sed 's/^kind = zero/kind = mean/' e2e.ini > mean.ini
if "$BT" ablation-scan --config mean.ini --quiet >/dev/null && grep -q '"positions": [1-9]' $A/component_means.json &&
   rm -f runs/$id/generations/baseline_think_newline/targeted_ablation.jsonl &&
   "$BT" generate --config mean.ini --condition targeted_ablation --quiet && grep -q '"kind": "mean"' runs/$id/generations/baseline_think_newline/targeted_ablation.jsonl; then
    ok "mean ablation: component means written, used by the scan and by generation"
else bad "mean ablation" "failed"; fi

# A scan of fewer events than the run holds reads the controls of the chosen events only.
sed 's/^max_events = 100/max_events = 5/' e2e.ini > five.ini
if "$BT" ablation-scan --config five.ini --quiet >/dev/null && grep -q '"n_events": 5,' $A/selected_layers.json &&
   [ "$(sed -n 's/.*"n_controls": \([0-9]*\).*/\1/p' $A/selected_layers.json)" -le 5 ]; then
    ok "ablation scan of 5 chosen events reads at most their 5 controls"
else bad "ablation scan of 5 chosen events" "$(grep n_ $A/selected_layers.json | tr -d '\n')"; fi

# Stages run out of order say what to run first; an experiment without a single
# event still runs to a report that says why nothing can be concluded.
scratch
sed -e 's/^n_problems = 40/n_problems = 4/' -e 's/^samples_per_problem = 2/samples_per_problem = 2/' \
    -e 's/^max_new_tokens = 96/max_new_tokens = 32/' configs/backtracking_state_transition.ini > few.ini
"$BT" init-run --config few.ini --quiet >/dev/null
expect "generate before prepare-data" 2 "builtin_4.jsonl is missing: run prepare-data first" "$BT" generate --config few.ini --condition baseline
"$BT" prepare-data --config few.ini --quiet >/dev/null
expect "generate needs a condition" 2 "--condition must be baseline, targeted_ablation, random_ablation or random_ablation_K" "$BT" generate --config few.ini
expect "generate an unknown variant" 2 "no \[variant.nope\] section" "$BT" generate --config few.ini --condition baseline --variant nope
expect "detect-events before generate" 2 "no generations in run .*: run generate first" "$BT" detect-events --config few.ini
mkdir -p runs/"$(cat runs/.current_run_id)"/generations/baseline_think_newline # a variant's folder, still empty
expect "detect-events with an empty generations folder" 2 "no generations in run .*: run generate first" \
    "$BT" detect-events --config few.ini
expect "ablation-scan before detect-events" 2 "no events in run .*: run detect-events first" "$BT" ablation-scan --config few.ini
expect "targeted generation before ablation-scan" 2 "no analysis/selected_layers.json in run .*: run ablation-scan first" \
    "$BT" generate --config few.ini --condition targeted_ablation
expect "compare-conditions before detect-events" 2 "run detect-events first" "$BT" compare-conditions --config few.ini
expect "make-report before detect-events: a report of what has not run" 0 "H1 \(localized trigger\): inconclusive" \
    "$BT" make-report --config few.ini
scratch
sed -e 's/^n_problems = 40/n_problems = 4/' -e 's/^max_new_tokens = 96/max_new_tokens = 32/' -e 's/^triggers = .*/triggers = Zzyzx/' \
    configs/backtracking_state_transition.ini > none.ini
if "$BT" run --config none.ini --quiet > run.log 2>&1 && grep -q '^H1 (localized trigger): inconclusive$' reports/backtracking_state_transition_report.md &&
   grep -q 'no data' figures/ablation_importance_by_layer.svg && grep -q 'no backtracking to remove' reports/backtracking_state_transition_report.md; then
    ok "no events at all: bt run completes, figures say no data, the report says why"
else bad "no events at all" "$(tail -n 2 run.log)"; fi

# Events against a hand-written completion with known trigger positions, mapped
# to tokens through the tokenizer's spans (Qwen3's real tokenizer.json).
if [ -f "$SHARED/tokenizers/qwen3/tokenizer.json" ]; then
    scratch
    mkdir -p qwen && cp "$SHARED/tokenizers/qwen3/tokenizer.json" qwen/
    sed -e 's|^path = models/organism|path = qwen|' -e 's/^make_organism = true/make_organism = false/' configs/backtracking_state_transition.ini > q.ini
    "$BT" init-run --config q.ini --quiet >/dev/null
    ids() { "$BT" tokenize --tokenizer qwen/tokenizer.json --text "$1" | sed 's/.*"ids":\[\([0-9,]*\)\].*/\1/'; }
    # "Wait" starts token 9 ([20,24]); "Actually" starts inside token 16 (" Actually", [36,45]);
    # "Hmm" comes after </think> and does not count; "wait" is lower case.
    one=$(ids "$(printf 'Let me add 3 and 4.\nWait, that is 7. Actually yes.</think> Hmm \\boxed{7}')")
    two=$(ids "Let me add the numbers one by one and then check them all again, wait, carefully now.")
    g=runs/$(cat runs/.current_run_id)/generations/baseline_think_newline
    mkdir -p $g
    rec() { printf '{"problem_id": "p%s", "variant": "baseline_think_newline", "condition": "baseline", "sample": 0, "prompt": "x", "prompt_tokens": %s, "completion_ids": [%s], "finish_reason": "eos", "correct": false}\n' "$1" "$2" "$3"; }
    { rec 1 7 "$one"; rec 2 5 "$two"; } > $g/baseline.jsonl
    expect "detect-events on hand-written completions" 0 "2 completions, 2 events, 2 controls" "$BT" detect-events --config q.ini
    ev=runs/$(cat runs/.current_run_id)/analysis/backtracking_events.csv
    # kind,event_id,...,trigger(8),char_offset(9),token_offset(10),onset_token_id(11),onset_token(12),prompt_tokens(13),pred_pos(14)
    got=$(awk -F, 'NR > 1 { printf "%s %s %s %s %s %s %s %s;", $2, $3, $6, $8, $9, $10, $11, $14 }' $ev)
    want="event 0 p1 Wait 20 9 14190 15;event 1 p1 Actually 37 16 33763 22;control 0 p2 Wait -1 9 14190 13;control 1 p2 Actually -1 16 33763 20;"
    [ "$got" = "$want" ] && ok "events map to the tokens that hold them; controls are position-matched" || bad "event positions" "got $got"
else
    skipped "events against hand-written completions" "$SHARED/tokenizers/qwen3 is absent"
fi
cd "$ROOT"
