# tests/cli_foundation.sh: init-run, the current run, prepare-data (sourced by cli.sh).

scratch
expect "stage before init-run fails clearly" 2 "no current run: runs/.current_run_id is missing" "$BT" prepare-data
expect "init-run with a bad config names file:line" 2 "nope.ini:1: unknown section \[x\]" sh -c "printf '[x]\n' > nope.ini; \"$BT\" init-run --config nope.ini"
[ ! -e runs ] && ok "bad config leaves no run behind" || bad "bad config leaves no run behind" "runs/ exists"
expect "init-run" 0 "runs/[0-9]{8}_[0-9]{6}" "$BT" init-run
id=$(cat runs/.current_run_id)
if [ -f "runs/$id/config_resolved.ini" ] && grep -q '^samples_per_problem = 2$' "runs/$id/config_resolved.ini" &&
   grep -q '"bt_version"' "runs/$id/meta.json" && grep -q '"git_sha": "unknown"' "runs/$id/meta.json" &&
   grep -q '"model_id": "organism"' "runs/$id/meta.json" && grep -q '"utc_time": "20' "runs/$id/meta.json"; then
    ok "init-run writes config_resolved.ini and meta.json"
else bad "init-run writes config_resolved.ini and meta.json" "$(ls runs/$id)"; fi
expect "init-run --run-id" 0 "runs/mine" "$BT" init-run --run-id mine
[ "$(cat runs/.current_run_id)" = mine ] && ok "current run follows init-run" || bad "current run follows init-run" "$(cat runs/.current_run_id)"
expect "init-run refuses an existing run id" 2 "run mine already exists" "$BT" init-run --run-id mine
expect "init-run refuses a bad run id" 2 "--run-id '../x'" "$BT" init-run --run-id ../x
expect "unknown flag" 2 "unknown argument '--colour'" "$BT" init-run --colour red
expect "flag without value" 2 "--config needs a value" "$BT" init-run --config
rm -rf runs/mine
expect "current run folder removed" 2 "current run mine: runs/mine does not exist" "$BT" prepare-data

if [ -f "$SHARED/gsm8k/test.jsonl" ]; then
    scratch
    sed -e 's/^source = builtin/source = gsm8k/' -e "s|^processed_dir = .*|processed_dir = data/processed\npath = $SHARED/gsm8k/test.jsonl|" \
        -e 's/^n_problems = 40/n_problems = 25/' -e 's/^make_organism = true/make_organism = false/' configs/backtracking_state_transition.ini > g.ini
    "$BT" init-run --config g.ini >/dev/null
    expect "prepare-data gsm8k" 0 "data/processed/gsm8k_25.jsonl" "$BT" prepare-data --config g.ini
    f=data/processed/gsm8k_25.jsonl
    cp $f first.jsonl
    "$BT" prepare-data --config g.ini >/dev/null
    if [ "$(wc -l < $f)" -eq 25 ] && cmp -s $f first.jsonl; then ok "gsm8k sample: 25 records, same seed same sample"; else bad "gsm8k sample" "$(wc -l < $f) lines"; fi
    sed 's/^seed = 1234/seed = 99/' g.ini > g2.ini
    "$BT" prepare-data --config g2.ini >/dev/null
    cmp -s $f first.jsonl && bad "another seed gives another sample" "identical" || ok "another seed gives another sample"
    # Every gold answer equals the text after '#### ' in its own answer, commas removed.
    if python3 -c 'import json,sys
for l in open(sys.argv[1]):
    r=json.loads(l); g=r["answer"].split("#### ")[1].strip().replace(",","")
    assert r["gold"]==g and r["id"].startswith("test_"), r
' first.jsonl 2>/dev/null; then ok "gold answers extracted after ####"; else
        command -v python3 >/dev/null && bad "gold answers extracted after ####" "mismatch" || skipped "gold answers extracted after ####" "no python3"; fi
    sed 's/^n_problems = 25/n_problems = 5000/' g.ini > big.ini
    expect "n_problems larger than the file" 2 "n_problems = 5000 but .*test.jsonl has 1319 problems" "$BT" prepare-data --config big.ini
else
    skipped "prepare-data gsm8k" "$SHARED/gsm8k/test.jsonl is absent"
fi

scratch
sed -e 's/^source = builtin/source = gsm8k/' -e 's|^processed_dir = .*|processed_dir = out\npath = bad.jsonl|' \
    -e 's/^n_problems = 40/n_problems = 1/' -e 's/^make_organism = true/make_organism = false/' configs/backtracking_state_transition.ini > b.ini
"$BT" init-run --config b.ini >/dev/null
printf '{"question": "q", "answer": "a #### 1"}\n{"question": "q2", "answer": "no gold here"}\n' > bad.jsonl
expect "gsm8k answer without ####" 2 "bad.jsonl:2: answer has no '#### ' gold answer" "$BT" prepare-data --config b.ini
printf '{"question": "q", "answer": "#### 1"}\n\n{"question": "q2" "answer": "#### 2"}\n' > bad.jsonl
expect "gsm8k malformed line" 2 "bad.jsonl:3: invalid JSON" "$BT" prepare-data --config b.ini
printf '{"answer": "#### 1"}\n' > bad.jsonl
expect "gsm8k missing question" 2 "bad.jsonl:1: missing string field \"question\"" "$BT" prepare-data --config b.ini
[ ! -e out ] && ok "bad data leaves no output" || bad "bad data leaves no output" "$(ls out)"

scratch
sed -e 's/^make_organism = true/make_organism = false/' configs/backtracking_state_transition.ini > p.ini
"$BT" init-run --config p.ini >/dev/null
expect "prepare-data builtin" 0 "data/processed/builtin_40.jsonl" "$BT" prepare-data --config p.ini
[ "$(grep -c '"gold": "[0-9]*"' data/processed/builtin_40.jsonl)" -eq 40 ] && ok "40 built-in problems with numeric gold" || bad "40 built-in problems" "$(wc -l < data/processed/builtin_40.jsonl)"
cd "$ROOT"
