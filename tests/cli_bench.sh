# tests/cli_bench.sh: make-bench-model and bench on the tiny shape (sourced by cli.sh).
# Benchmarks are commands, not timed tests: this checks that they run and what they print.

scratch
expect "make-bench-model tiny" 0 "" "$BT" make-bench-model tiny --shape tiny --quiet
expect "the bench model loads" 0 '"architecture":"Qwen2ForCausalLM","hidden_size":96,.*"kv_cache_bytes_per_token":768' "$BT" model-info --model tiny
"$BT" make-bench-model tiny_again --shape tiny --quiet
"$BT" make-bench-model tiny_seed1 --shape tiny --seed 1 --quiet
cmp -s tiny/model.safetensors tiny_again/model.safetensors && cmp -s tiny/config.json tiny_again/config.json \
    && ok "make-bench-model: same seed, same bytes" || bad "make-bench-model: same seed, same bytes" "differ"
cmp -s tiny/model.safetensors tiny_seed1/model.safetensors && bad "make-bench-model: another seed, other weights" "same" \
    || ok "make-bench-model: another seed, other weights"
expect "make-bench-model f32" 0 "" "$BT" make-bench-model tiny_f32 --shape tiny --dtype f32 --quiet
expect "f32 bench model" 0 '"dtype":"F32"' "$BT" model-info --model tiny_f32
expect "make-bench-model with an unknown shape" 2 "--shape 'llama-70b' is not" "$BT" make-bench-model x --shape llama-70b
expect "make-bench-model with an unknown dtype" 2 "--dtype 'int8' is not" "$BT" make-bench-model x --shape tiny --dtype int8
expect "make-bench-model without a directory" 2 "usage: bt make-bench-model DIR" "$BT" make-bench-model --shape tiny
[ ! -e x ] && ok "make-bench-model: nothing written on bad input" || bad "make-bench-model: nothing written on bad input" "x exists"

# --long-new 32: the long generation figures scaled down to keep make test fast (1024 by default).
out=$("$BT" bench --model tiny --repeat 1 --long-new 32 --json --quiet); rc=$?
missing=""
for k in prefill_tok_s decode_tok_s gen16_tok_s gen64_tok_s gen16_long_tok_s gen64_long_tok_s lens_items_s \
         scan_s_per_event_all scan_s_per_event_onset attribution_s_per_event attribution_vs_scan_all grad_mb_4096 \
         peak_rss_mb bandwidth_gb_s roofline_fraction fma_peak_gflops \
         prefill_roofline_fraction decode_roofline_fraction gen16_roofline_fraction gen64_roofline_fraction \
         gen16_long_roofline_fraction gen64_long_roofline_fraction lens_roofline_fraction scan_all_roofline_fraction \
         scan_onset_roofline_fraction; do
    echo "$out" | grep -qE "\"$k\":[0-9][0-9.e+-]*[,}]" || missing="$missing $k"
done
echo "$out" | grep -qE '"tokenizer_mb_s":(null|[0-9][0-9.e+-]*)[,}]' || missing="$missing tokenizer_mb_s"
echo "$out" | grep -qE '"bf16_peak_gflops":(null|[0-9][0-9.e+-]*)[,}]' || missing="$missing bf16_peak_gflops"
[ $rc -eq 0 ] && [ -z "$missing" ] && [ "$(echo "$out" | wc -l)" -eq 1 ] \
    && ok "bench --json: one object with every key" || bad "bench --json: one object with every key" "exit $rc, missing:$missing"
expect "bench table" 0 'decode roofline fraction' "$BT" bench --model tiny --repeat 1 --long-new 0 --quiet --threads 1
expect "bench table: the roofline per figure" 0 '^  prefill 512 +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+$' \
    "$BT" bench --model tiny --repeat 1 --only prefill,gen16_long --long-new 8 --quiet --threads 1
expect "bench --long-new 0 skips the long figures" 0 '"gen16_long_tok_s":null,"gen64_long_tok_s":null' \
    "$BT" bench --model tiny --repeat 1 --only gen16_long,gen64_long --long-new 0 --json --quiet
expect "bench --only memory: each stage's peak RSS from a process of its own" 0 \
    '"rss_decode_mb":[0-9.]+,"rss_gen16_mb":[0-9.]+,"rss_lens_mb":[0-9.]+,"rss_scan_mb":[0-9.]+,"rss_attribution_mb":[0-9.]+,"rss_directions_mb":[0-9.]+' \
    "$BT" bench --model tiny --only memory --json --quiet --threads 1
expect "bench with a bad --long-new" 2 "--long-new" "$BT" bench --model tiny --long-new -1
expect "bench --only, portable kernels" 0 '"kernels":"portable".*"prefill_tok_s":[0-9].*"decode_tok_s":null' \
    env BT_NO_SIMD=1 "$BT" bench --model tiny --repeat 1 --only prefill --json --quiet
if grep -q "^flags.* avx2 .*" /proc/cpuinfo 2>/dev/null && grep -q "^flags.* fma .*" /proc/cpuinfo; then
    expect "bench --only, BT_SIMD=avx2 kernels" 0 '"kernels":"avx2".*"prefill_tok_s":[0-9]' \
        env BT_SIMD=avx2 "$BT" bench --model tiny --repeat 1 --only prefill --json --quiet
else
    skipped "bench with the AVX2 kernels" "this CPU has no AVX2 and FMA"
fi
expect "bench without --model" 2 "--model DIR is required" "$BT" bench
expect "bench on a missing model" 2 "nowhere: not a model directory" "$BT" bench --model nowhere
TOK=$SHARED/tokenizers/qwen2_5/tokenizer.json
if [ -f "$TOK" ]; then
    expect "bench --tokenizer" 0 '"tokenizer_mb_s":[0-9][0-9.e+-]*,' "$BT" bench --model tiny --only tokenizer --tokenizer "$TOK" --json --quiet
    expect "bench --tokenizer --text" 0 '"tokenizer_mb_s":[0-9][0-9.e+-]*,' "$BT" bench --model tiny --only tokenizer --tokenizer "$TOK" \
        --text "$SHARED/reference/README.md" --json --quiet
    expect "bench with a bad tokenizer" 2 "tiny/config.json" "$BT" bench --model tiny --only tokenizer --tokenizer tiny/config.json
else
    skipped "bench --tokenizer" "$TOK is absent"
fi
