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
