# tests/cli_grad.sh: forward --grad, attribution scores from one gradient pass (sourced by cli.sh).

REF=$SHARED/reference
if [ ! -d "$REF/qwen2_tiny_f32" ]; then
    skipped "forward --grad" "$REF is absent"
else
    scratch
    M=$REF/qwen2_tiny_f32 # 3 layers, 4 heads, vocab 384
    ids=5,17,300,2,9
    x='-?[0-9][0-9.e+-]*'
    heads="\[$x,$x,$x,$x\]"
    want="^\{\"pred_pos\":3,\"onset_token_id\":7,\"metric\":$x,\"ablation\":\"zero\",\"attn\":\[$x,$x,$x\],"
    want="$want\"mlp\":\[$x,$x,$x\],\"head\":\[$heads,$heads,$heads\]\}$"
    expect "forward --grad: one object, a score per layer and head" 0 "$want" \
        "$BT" forward --model $M --ids $ids --grad 3:7

    # The metric is log p(7) at position 3, as forward's own logits give it.
    g=$("$BT" forward --model $M --ids $ids --grad 3:7 | sed 's/.*"metric":\([^,]*\),.*/\1/')
    lp=$("$BT" forward --model $M --ids 5,17,300,2 | tail -n 1 | sed 's/.*"logits":\[//; s/\]}$//' |
        awk -F, '{ m = $1; for (i = 1; i <= NF; i++) if ($i + 0 > m + 0) m = $i
                   s = 0; for (i = 1; i <= NF; i++) s += exp($i - m); printf "%.6f", $8 - m - log(s) }')
    name="forward --grad: metric is log p at pred_pos"
    if awk -v a="$g" -v b="$lp" 'BEGIN { exit !(a - b < 1e-5 && b - a < 1e-5) }'; then ok "$name"
    else bad "$name" "$g against $lp"; fi
    one=$("$BT" forward --model $M --ids $ids --grad 4:1 --threads 1)
    two=$("$BT" forward --model $M --ids $ids --grad 4:1 --threads 2)
    [ -n "$one" ] && [ "$one" = "$two" ] && ok "forward --grad: same bytes with 1 and 2 threads" \
        || bad "forward --grad: same bytes with 1 and 2 threads" "differ"

    expect "forward --grad: position past the ids" 2 "--grad 3:7: position 3 out of range \[0, 3\)" \
        "$BT" forward --model $M --ids 5,17,300 --grad 3:7
    expect "forward --grad: token past the vocabulary" 2 "--grad 1:384: token id 384 out of range \[0, 384\)" \
        "$BT" forward --model $M --ids 5,17,300 --grad 1:384
    expect "forward --grad: not POS:TOKEN" 2 "--grad: '1-2' is not POS:TOKEN" \
        "$BT" forward --model $M --ids 5,17 --grad 1-2
    expect "forward --grad with --ablate" 2 "--grad goes with none of" \
        "$BT" forward --model $M --ids 5,17 --grad 1:2 --ablate attn:0
    out=$("$BT" forward --model $M --ids 5,17,300 --grad 9:1 2>/dev/null)
    [ -z "$out" ] && ok "forward --grad, bad input: no output" || bad "forward --grad, bad input: no output" "stdout"
fi
