# tests/cli_attrib.sh: attribution patching in the ablation scan ([ablation] method, verify_k,
# top_k_heads) on the planted organism, whose planted components are known (sourced by cli.sh).
# The first-order estimate cannot see the planted head (its path saturates the planted MLP), so
# attribution+verify must find it by the size of its estimate and the exact ablation.

scratch
# attr_config NAME LINES: the default experiment at small settings, LINES ("\n"-separated) in [ablation].
attr_config() {
    sed -e 's/^n_problems = 40/n_problems = 10/' -e 's/^samples_per_problem = 2/samples_per_problem = 4/' \
        -e 's/^max_new_tokens = 96/max_new_tokens = 64/' \
        -e '/^method = /d' -e '/^verify_k = /d' -e '/^top_k_heads = /d' \
        -e "s/^max_events = 100/max_events = 100\n$2/" configs/backtracking_state_transition.ini > "$1"
}
attr_col() { head -n 1 "$1" | tr ',' '\n' | grep -nx "$2" | cut -d: -f1; } # attr_col FILE NAME: its number
attr_rows() { # attr_rows FILE COLUMN VALUE: rows holding VALUE in COLUMN
    awk -F, -v c="$(attr_col "$1" "$2")" -v v="$3" 'NR > 1 && $c == v { n++ } END { print n + 0 }' "$1"
}
organism_key() { sed -n "s/.*\"$1\": *\([0-9]*\).*/\1/p" models/organism/config.json; }

# Bad values of the new keys: exit 2 naming file and line, nothing run.
attr_config bad_method.ini "method = fast"
expect "[ablation] method = fast" 2 \
    "bad_method.ini:[0-9]+: \[ablation\] method: 'fast' is not one of exact\|attribution\|attribution\+verify" \
    "$BT" init-run --config bad_method.ini
attr_config bad_verify.ini "method = attribution+verify\nverify_k = 0"
expect "[ablation] verify_k = 0" 2 "bad_verify.ini:[0-9]+: \[ablation\] verify_k = 0 is out of range \[1, 4096\]" \
    "$BT" init-run --config bad_verify.ini
attr_config bad_heads.ini "top_k_heads = two"
expect "[ablation] top_k_heads = two" 2 "bad_heads.ini:[0-9]+: \[ablation\] top_k_heads: 'two' is not an integer" \
    "$BT" init-run --config bad_heads.ini
attr_config bad_scope.ini "method = attribution"
sed -i 's/^scope = all/scope = onset/' bad_scope.ini
expect "method = attribution with scope = onset" 2 \
    "bad_scope.ini:[0-9]+: \[ablation\] method = attribution estimates ablation at every position: it needs scope = all" \
    "$BT" init-run --config bad_scope.ini

# method = attribution alone, heads selected: the whole pipeline runs, every head is scored, and the
# targeted and random conditions ablate heads.
attr_config attr.ini "method = attribution\ntop_k_heads = 1"
if "$BT" run --config attr.ini --threads 1 --quiet > run.log 2>&1; then ok "bt run with method = attribution, top_k_heads = 1"
else bad "bt run with method = attribution, top_k_heads = 1" "$(tail -n 3 run.log)"; fi
id=$(cat runs/.current_run_id); A=runs/$id/analysis; G=runs/$id/generations/baseline_think_newline
L=$(organism_key num_hidden_layers); H=$(organism_key num_attention_heads)
if [ "$(attr_rows $A/head_importance.csv method attribution)" = $((L * H)) ] &&
   [ "$(wc -l < $A/head_importance.csv)" = $((L * H + 1)) ] &&
   [ "$(attr_rows $A/ablation_importance.csv method attribution)" = $((2 * L)) ] &&
   grep -q '"method": "attribution"' $A/selected_layers.json; then
    ok "method = attribution: head_importance.csv scores all $((L * H)) heads, every row an estimate"
else bad "method = attribution: every head estimated" "$(wc -l < $A/head_importance.csv) lines"; fi
sel=$(sed -n 's/.*"attn_heads": \(\[\[[0-9]*, [0-9]*\]\]\).*/\1/p' $A/selected_layers.json)
n_targeted=$(grep -cF "\"attn_heads\": $sel}" $G/targeted_ablation.jsonl)
if [ -n "$sel" ] && [ "$n_targeted" -gt 0 ] && [ "$n_targeted" = "$(wc -l < $G/targeted_ablation.jsonl)" ]; then
    ok "targeted ablation records ablate the selected head $sel"
else bad "targeted ablation ablates the selected head" "selected '$sel'; $(head -n 1 $G/targeted_ablation.jsonl)"; fi
n_ok=0
for d in 1 2 3; do
    got=$(head -n 1 $G/random_ablation_$d.jsonl | sed -n 's/.*"attn_heads": \(\[\[[0-9]*, [0-9]*\]\]\)}}$/\1/p')
    [ -n "$got" ] && [ "$got" != "$sel" ] && n_ok=$((n_ok + 1))
done
[ $n_ok = 3 ] && ok "each random draw ablates one head, never the selected one" ||
    bad "random draws' heads" "$(grep -o '"attn_heads": [^}]*' $A/random_layers.json | tr '\n' ' ')"
hc=$(attr_col $A/collateral_damage.csv attn_heads)
n_sets=$(awk -F, -v c="$hc" 'NR > 1 && $c ~ /^\[[0-9]+\.[0-9]+\]$/ { n++ } END { print n + 0 }' $A/collateral_damage.csv)
[ -n "$hc" ] && [ "$n_sets" = 4 ] && ok "collateral damage measures the same masks, heads included" ||
    bad "collateral damage with heads" "$(cat $A/collateral_damage.csv)"
report=reports/backtracking_state_transition_report.md
grep -q '^## Heads and attribution patching' $report && grep -q "](../figures/head_importance_by_layer.svg)" $report &&
    cmp -s runs/$id/figures/head_importance_by_layer.svg figures/head_importance_by_layer.svg &&
    ok "report: the head section and head_importance_by_layer.svg" || bad "report: heads" "$(grep -c Heads $report)"

# attribution+verify finds the planted components exactly, even verifying one candidate of each kind.
attn=$(organism_key attn_layer); head=$(organism_key attn_head); mlp=$(organism_key mlp_layer)
attr_config verify.ini "method = attribution+verify\nverify_k = 1\ntop_k_heads = 1"
S=$A/selected_layers.json
if "$BT" ablation-scan --config verify.ini --threads 1 --quiet >/dev/null && grep -q "\"attn_layers\": \[$attn\]" $S &&
   grep -q "\"mlp_layers\": \[$mlp\]" $S && grep -q "\"attn_heads\": \[\[$attn, $head\]\]" $S &&
   [ "$(attr_rows $A/head_importance.csv method exact)" = 1 ] &&
   [ "$(attr_rows $A/ablation_importance.csv method exact)" = 2 ]; then
    est=$(awk -F, -v e="$(attr_col $A/head_importance.csv est_drop_events)" -v l=$attn -v h=$head \
              -v x="$(attr_col $A/head_importance.csv mean_drop_events)" \
              'NR > 1 && $3 == l && $4 == h { print "estimated " $e ", exact " $x }' $A/head_importance.csv)
    ok "attribution+verify (verify_k 1) selects attention $attn, MLP $mlp and head $attn.$head (head: $est)"
else bad "attribution+verify selects the planted components" "$(tr -d '\n' < $S)"; fi

# The scan's CSVs with heads load with pandas as the README documents them.
if [ -n "$PY" ]; then
    if "$PY" "$ROOT/tests/csv_check.py" "$ROOT/README.md" $A/head_importance.csv $A/ablation_importance.csv \
        $A/collateral_damage.csv > csv.log 2>&1; then ok "head_importance.csv and the columns for heads as the README documents"
    else bad "CSVs with heads as pandas reads them" "$(grep -v '^ok' csv.log | head -n 3)"; fi
else skipped "CSVs with heads as pandas reads them" "python3 with pandas is not installed"; fi

# The same scan, byte for byte, on one thread and on two.
sed 's/^max_events = 100/max_events = 20/' verify.ini > det.ini
"$BT" ablation-scan --config det.ini --threads 1 --quiet >/dev/null &&
    cp $A/ablation_importance.csv det_imp.csv && cp $A/head_importance.csv det_heads.csv
if "$BT" ablation-scan --config det.ini --threads 2 --quiet >/dev/null && cmp -s $A/ablation_importance.csv det_imp.csv &&
   cmp -s $A/head_importance.csv det_heads.csv; then ok "attribution+verify scan: the same CSVs on one thread and on two"
else bad "attribution scan determinism" "$(diff det_heads.csv $A/head_importance.csv | head -n 4)"; fi

# Mean ablation of heads: per-head means beside the components', used by the scan and by generation;
# a means file without them (written before heads were scanned) is an error that says so.
sed 's/^kind = zero/kind = mean/' verify.ini > mean.ini
rm -f $G/targeted_ablation.jsonl
if "$BT" ablation-scan --config mean.ini --threads 1 --quiet >/dev/null && grep -q '^"head": \[' $A/component_means.json &&
   "$BT" generate --config mean.ini --condition targeted_ablation --threads 1 --quiet &&
   grep -q '"kind": "mean", .*"attn_heads": \[\[' $G/targeted_ablation.jsonl; then
    ok "mean ablation of heads: head means written, used by the scan and by generation"
else bad "mean ablation of heads" "$(head -n 1 $G/targeted_ablation.jsonl 2>&1 | grep -o '"ablation".*')"; fi
sed -i -e '/^"head": /d' -e 's/^\("mlp": .*\),$/\1}/' $A/component_means.json
rm -f $G/targeted_ablation.jsonl
expect "mean ablation of heads with an old means file" 2 'component_means.json has no "head" means .*run ablation-scan again' \
    "$BT" generate --config mean.ini --condition targeted_ablation --threads 1
sed -i 's/"attn_heads": \[\[[0-9]*, [0-9]*\]\]/"attn_heads": [[1, 9]]/' $A/selected_layers.json
expect "a head the model does not have" 2 "names head 1.9, but the model has $H heads per layer" \
    "$BT" generate --config verify.ini --condition targeted_ablation --threads 1
cd "$ROOT"
