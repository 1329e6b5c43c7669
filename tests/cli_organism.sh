# tests/cli_organism.sh: make-organism, and the planted behaviour seen through the
# ordinary inspection commands (sourced by cli.sh).

scratch
expect "make-organism --help" 0 "usage: bt make-organism" "$BT" make-organism --help
expect "make-organism needs a directory" 2 "give the directory to write" "$BT" make-organism
expect "make-organism into a file's child fails clearly" 1 "notadir" sh -c "touch notadir; \"$BT\" make-organism notadir/org"
expect "make-organism DIR" 0 "" "$BT" make-organism org --quiet
expect "make-organism --out DIR" 0 "" "$BT" make-organism --out org2 --quiet
same=1
for f in config.json generation_config.json tokenizer.json tokenizer_config.json model.safetensors; do
    cmp -s "org/$f" "org2/$f" || same=0
done
[ $same -eq 1 ] && ok "make-organism writes the same bytes twice" || bad "make-organism writes the same bytes twice" "files differ"
grep -q '"bt_organism": {"attn_layer": 1, "attn_head": 0, "mlp_layer": 2, "trigger_token": " Wait"' org/config.json &&
    ok "config.json records the planted components" || bad "config.json records the planted components" "$(grep -A1 bt_organism org/config.json)"
expect "the organism loads like a checkpoint" 0 '"architecture":"Qwen2ForCausalLM".*"eos_token_ids":\[[0-9]+\]' "$BT" model-info --model org

# The last token of each prompt is a "." inside the thinking text; the top logit after it
# is " Wait" only when <think> is open and neither planted component is ablated.
ids_of() { "$BT" tokenize --tokenizer org/tokenizer.json --text "$1" | sed 's/.*"ids":\[\([0-9,]*\)\].*/\1/'; }
wait_id=$(ids_of " Wait")
case "$wait_id" in *,*|"") bad "\" Wait\" is one token" "$wait_id" ;; *) ok "\" Wait\" is one token" ;; esac
think=$(ids_of "$(printf '<|user|>\nMia has 12 apples.\n<|assistant|>\n<think>\nWe start with twelve.')")
plain=$(ids_of "$(printf '<|user|>\nMia has 12 apples.\n<|assistant|>\nWe start with twelve.')")
closed=$(ids_of "$(printf '<|user|>\nMia has 12 apples.\n<|assistant|>\n<think>\n\n</think>\n\nWe start with twelve.')")
top1() { ids=$1; shift; "$BT" forward --model org --ids "$ids" --top 1 "$@" | tail -n 1 | sed 's/.*"top":\[\[\([0-9]*\),.*/\1/'; }
[ "$(top1 "$think")" = "$wait_id" ] && ok "forward: Wait tops a sentence end inside <think>" || bad "forward: Wait inside <think>" "top $(top1 "$think")"
[ "$(top1 "$plain")" != "$wait_id" ] && ok "forward: no Wait without <think>" || bad "forward: no Wait without <think>" "top is Wait"
[ "$(top1 "$closed")" != "$wait_id" ] && ok "forward: no Wait after </think>" || bad "forward: no Wait after </think>" "top is Wait"
[ "$(top1 "$think" --ablate attn:1)" != "$wait_id" ] &&
    ok "forward --ablate attn:1 removes Wait" || bad "forward --ablate attn:1 removes Wait" "still top"
[ "$(top1 "$think" --ablate mlp:2)" != "$wait_id" ] &&
    ok "forward --ablate mlp:2 removes Wait" || bad "forward --ablate mlp:2 removes Wait" "still top"
[ "$(top1 "$think" --ablate attn:2 --ablate mlp:1)" = "$wait_id" ] &&
    ok "forward --ablate attn:2 mlp:1 keeps Wait" || bad "forward --ablate attn:2 mlp:1 keeps Wait" "no longer top"

# Mechanisms: each written the same twice and labelled; planted is the default; bad names exit 2.
expect "make-organism --mechanism bogus names the flag and the choices" 2 \
    "--mechanism 'bogus' is not one of planted[|]redundant[|]format_free[|]distributed" "$BT" make-organism bad --mechanism bogus
[ ! -e bad ] && ok "make-organism --mechanism bogus writes nothing" || bad "make-organism --mechanism bogus writes nothing" "bad/ exists"
expect "make-organism --mechanism planted" 0 "" "$BT" make-organism org_planted --mechanism planted --quiet
same=1
for f in config.json generation_config.json tokenizer.json tokenizer_config.json model.safetensors; do cmp -s "org/$f" "org_planted/$f" || same=0; done
[ $same -eq 1 ] && ok "planted is the default mechanism" || bad "planted is the default mechanism" "files differ"
for m in redundant format_free distributed; do
    "$BT" make-organism "org_$m" --mechanism $m --quiet && "$BT" make-organism "org_${m}2" --mechanism $m --quiet
    cmp -s "org_$m/model.safetensors" "org_${m}2/model.safetensors" && cmp -s "org_$m/config.json" "org_${m}2/config.json" &&
        ok "make-organism --mechanism $m writes the same bytes twice" || bad "make-organism --mechanism $m twice" "files differ"
    grep -q "\"mechanism\": \"$m\"" "org_$m/config.json" && ! cmp -s "org_$m/model.safetensors" org/model.safetensors &&
        ok "make-organism --mechanism $m: its own weights, labelled" || bad "make-organism --mechanism $m labelled" "$(grep mechanism "org_$m/config.json")"
done
grep -q '"truth": {"H1": "supported", "H0": "not supported", "H2": "supported"}' org/config.json &&
    grep -q '"thinking_flag": {"dim": 126, "layer": 2, "on": 0.05, "off": -0.05' org/config.json &&
    ok "config.json records planted's truth and features" || bad "config.json records planted's truth and features" "$(grep -A6 truth org/config.json)"

# [model] organism: checked where the config is read; used (and checked) by init-run.
sed 's/^organism = planted/organism = bogus/' configs/backtracking_state_transition.ini > bogus.ini
line=$(grep -n '^organism = bogus' bogus.ini | cut -d: -f1)
expect "[model] organism = bogus names file:line and the choices" 2 \
    "bogus.ini:$line: \[model\] organism: 'bogus' is not one of planted[|]redundant" "$BT" init-run --config bogus.ini
sed -e 's/^organism = planted/organism = redundant/' -e 's|^path = models/organism|path = org|' \
    configs/backtracking_state_transition.ini > mismatch.ini
expect "init-run refuses an organism of another mechanism" 2 \
    "mismatch.ini: \[model\] organism = redundant, but org/config.json holds the planted organism" "$BT" init-run --config mismatch.ini
sed -e 's/^organism = planted/organism = redundant/' -e 's|^path = models/organism|path = models/organism_redundant|' \
    configs/backtracking_state_transition.ini > redundant.ini
expect "init-run builds [model] organism" 0 "" "$BT" init-run --config redundant.ini --quiet
cmp -s models/organism_redundant/model.safetensors org_redundant/model.safetensors &&
    grep -q '^organism = redundant' runs/"$(cat runs/.current_run_id)"/config_resolved.ini &&
    ok "init-run wrote the redundant organism; config_resolved.ini says so" ||
    bad "init-run wrote the redundant organism" "$(ls models; grep organism runs/*/config_resolved.ini)"
expect "init-run accepts its own organism again" 0 "" "$BT" init-run --config redundant.ini --quiet
