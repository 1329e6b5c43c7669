# tests/cli_model.sh: model-info, forward, generate-ids on the reference models (sourced by cli.sh).

# Without the x86 kernels (-DBT_PORTABLE: what every other architecture compiles) the kernel
# files build warning-free too, with and without OpenMP.
cc_=${CC:-cc}
if command -v "$cc_" >/dev/null 2>&1; then
    omp_flag=$(printf 'int main(void){return 0;}' | "$cc_" -fopenmp -x c - -o /dev/null 2>/dev/null && echo -fopenmp)
    out=$(cd "$ROOT" && for omp in "" $omp_flag; do for f in model.c bench.c; do
        "$cc_" -O2 $omp -c -o /dev/null -Wall -Wextra -Werror -DBT_PORTABLE "$f" 2>&1 || echo "failed: $f $omp"
    done; done)
    if [ -z "$out" ]; then ok "portable build (-DBT_PORTABLE) is warning-free"
    else bad "portable build (-DBT_PORTABLE) is warning-free" "$(printf '%s' "$out" | head -n 5)"; fi
else skipped "portable build (-DBT_PORTABLE) is warning-free" "no C compiler ($cc_)"; fi

REF=$SHARED/reference
if [ ! -d "$REF/qwen2_tiny_f32" ]; then
    skipped "model commands" "$REF is absent"
else
    scratch
    M=$REF/qwen2_tiny_f32
    expect "model-info" 0 '"architecture":"Qwen2ForCausalLM".*"n_params":179008,.*"bytes_mapped":720000,"bytes_allocated":[0-9]+,"kv_cache_bytes_per_token":768' "$BT" model-info --model $M
    expect "model-info tied, sharded, bf16" 0 '"tie_word_embeddings":true.*"dtype":"BF16"' "$BT" model-info --model $REF/qwen2_tiny_bf16_tied
    expect "model-info llama3 rope scaling" 0 '"rope_scaling":\{"type":"llama3","factor":8,' "$BT" model-info --model $REF/llama3_tiny

    # Greedy continuation of prompt 0 equals Hugging Face's generate() for every model.
    for d in "$REF"/*/; do
        name=$(basename "$d")
        prompt=$(grep -o '"input_ids":\[\[[0-9,]*\]' "$d/expected.json" | sed 's/.*\[\[//; s/\]$//')
        want=$(grep -o '"new_tokens":\[[0-9,]*\]' "$d/expected.json" | sed 's/.*:\[//; s/\]$//')
        expect "generate-ids $name equals HF greedy" 0 "^\{\"ids\":\[$want\]\}$" "$BT" generate-ids --model "$d" --ids "$prompt" --max-new 24 --threads 2
        expect "generate-ids $name equals HF greedy, portable kernels" 0 "^\{\"ids\":\[$want\]\}$" \
            env BT_NO_SIMD=1 "$BT" generate-ids --model "$d" --ids "$prompt" --max-new 24 --threads 1
        expect "generate-ids $name equals HF greedy, at most the avx2 kernels" 0 "^\{\"ids\":\[$want\]\}$" \
            env BT_SIMD=avx2 "$BT" generate-ids --model "$d" --ids "$prompt" --max-new 24 --threads 2
    done
    expect "an unknown BT_SIMD is refused, naming it" 2 "BT_SIMD=sse: not one of portable, avx2, avx512" \
        env BT_SIMD=sse "$BT" generate-ids --model "$M" --ids 1,2 --max-new 1

    d=$REF/llama3_tiny
    prompt=$(grep -o '"input_ids":\[\[[0-9,]*\]' "$d/expected.json" | sed 's/.*\[\[//; s/\]$//')
    first=$(grep -o '"new_tokens":\[[0-9]*' "$d/expected.json" | sed 's/.*\[//')
    expect "forward --top 1 of the last position is HF's first greedy token" 0 "^\{\"pos\":47,\"top\":\[\[$first," sh -c "\"$BT\" forward --model $d --ids $prompt --top 1 | tail -n 1"
    out=$("$BT" forward --model $M --ids 5,17,300,2)
    n=$(echo "$out" | wc -l)
    n_logits=$(echo "$out" | head -n 1 | grep -o , | wc -l) # "pos":0, then 383 between logits
    [ "$n" -eq 4 ] && [ "$n_logits" -eq 384 ] && echo "$out" | tail -n 1 | grep -q '^{"pos":3,"logits":\[' \
        && ok "forward: one line per position, every logit" || bad "forward: one line per position" "$n lines, $n_logits commas"
    expect "forward --top --hidden" 0 '^\{"pos":0,"top":\[\[[0-9]+,[-0-9.e]+\],\[[0-9]+,[-0-9.e]+\]\],"hidden":\[\[' "$BT" forward --model $M --ids 5,17 --top 2 --hidden
    h=$("$BT" forward --model $M --ids 5,17 --hidden | head -n 1 | grep -o '\],\[' | wc -l)
    [ "$h" -eq 3 ] && ok "forward --hidden: L+1 vectors" || bad "forward --hidden: L+1 vectors" "$h separators"
    a=$("$BT" forward --model $M --ids 5,17,300 --top 1 --ablate attn:0 --ablate head:2.1 | tail -n 1)
    c=$("$BT" forward --model $M --ids 5,17,300 --top 1 | tail -n 1)
    [ -n "$a" ] && [ "$a" != "$c" ] && ok "forward --ablate changes the logits" || bad "forward --ablate changes the logits" "$a"
    [ "$("$BT" forward --model $M --ids 5,17,300 --threads 1)" = "$("$BT" forward --model $M --ids 5,17,300 --threads 2)" ] \
        && ok "forward: same bytes with 1 and 2 threads" || bad "forward: same bytes with 1 and 2 threads" "differ"

    # Generation stops after an eos id (from generation_config.json), which it prints.
    cp -r $REF/qwen3_tiny eos_model
    d=$REF/qwen3_tiny
    prompt=$(grep -o '"input_ids":\[\[[0-9,]*\]' "$d/expected.json" | sed 's/.*\[\[//; s/\]$//')
    want=$(grep -o '"new_tokens":\[[0-9,]*\]' "$d/expected.json" | sed 's/.*:\[//; s/\]$//' | cut -d, -f1-3)
    eos=$(echo "$want" | cut -d, -f3)
    chmod u+w eos_model eos_model/*
    printf '{"eos_token_id": [%s]}\n' "$eos" > eos_model/generation_config.json
    expect "generate-ids stops at eos" 0 "^\{\"ids\":\[$want\]\}$" "$BT" generate-ids --model eos_model --ids "$prompt" --max-new 24

    expect "forward without --model" 2 "--model DIR and --ids" "$BT" forward --ids 1,2
    expect "forward on a missing directory" 2 "nowhere: not a model directory" "$BT" forward --model nowhere --ids 1
    expect "forward with an id past the vocabulary" 2 "token id 384 out of range \[0, 384\)" "$BT" forward --model $M --ids 1,384
    expect "forward with bad ids" 2 "'1,,2' is not a comma-separated list" "$BT" forward --model $M --ids 1,,2
    expect "forward with a bad --ablate" 2 "'attn:x' is not attn:L, mlp:L or head:L.H" "$BT" forward --model $M --ids 1 --ablate attn:x
    expect "forward with a layer out of range" 2 "layer 3 out of range \[0, 3\)" "$BT" forward --model $M --ids 1 --ablate mlp:3
    expect "forward with a head out of range" 2 "head 4 out of range \[0, 4\)" "$BT" forward --model $M --ids 1 --ablate head:0.4
    expect "generate-ids with a bad --max-new" 2 "--max-new" "$BT" generate-ids --model $M --ids 1 --max-new -1
    mkdir bad_model
    cp $M/config.json bad_model/
    head -c 700000 $M/model.safetensors > bad_model/model.safetensors
    out=$("$BT" forward --model bad_model --ids 1 2>&1 >/dev/null); rc=$?
    [ $rc -eq 2 ] && echo "$out" | grep -q "bad_model/model.safetensors: tensor '.*': data_offsets .* out of range" \
        && ok "truncated checkpoint: exit 2 naming file and tensor" || bad "truncated checkpoint" "exit $rc: $out"
    [ -z "$("$BT" forward --model bad_model --ids 1 2>/dev/null)" ] && ok "truncated checkpoint: no output" || bad "truncated checkpoint: no output" "stdout"
    sed 's/Qwen2ForCausalLM/MistralForCausalLM/' $M/config.json > bad_model/config.json
    expect "unknown architecture" 2 "bad_model/config.json:3: unsupported architecture 'MistralForCausalLM'" "$BT" model-info --model bad_model
fi
