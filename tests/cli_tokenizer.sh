# tests/cli_tokenizer.sh: bt tokenize and bt detokenize (sourced by tests/cli.sh).
# Expected ids come from ../shared/tokenizers/*/expected.jsonl (Hugging Face's encodings).
scratch
QWEN=$SHARED/tokenizers/qwen3/tokenizer.json
LLAMA=$SHARED/tokenizers/llama3_1/tokenizer.json

expect "tokenize needs --tokenizer" 2 "--tokenizer FILE is required" "$BT" tokenize --text hi
expect "tokenize of a missing file" 2 "no_such.json: cannot open" "$BT" tokenize --tokenizer no_such.json --text hi
printf '{"model": ' >bad_tokenizer.json
expect "tokenize of malformed tokenizer.json" 2 "bad_tokenizer.json:1: invalid JSON" "$BT" tokenize --tokenizer bad_tokenizer.json --text hi
printf '{"model": {"type": "Unigram", "vocab": []}}' >unigram.json
expect "tokenize of a Unigram tokenizer" 2 "model.type 'Unigram' is not supported" "$BT" tokenize --tokenizer unigram.json --text hi
expect "detokenize of malformed tokenizer.json" 2 "bad_tokenizer.json:1: invalid JSON" "$BT" detokenize --tokenizer bad_tokenizer.json --ids 1

if [ -r "$QWEN" ] && [ -r "$LLAMA" ]; then
    expect "tokenize --text qwen3" 0 '^\{"ids":\[14190,11,1077,752,10146,25,220,19,23,14,17,284,220,17,19,13\], "spans":\[\[0,4\],\[4,5\],\[5,9\],\[9,12\],' \
        "$BT" tokenize --tokenizer "$QWEN" --text "Wait, let me verify: 48/2 = 24."
    expect "tokenize --text llama3_1" 0 '^\{"ids":\[9906,1917\], "spans":\[\[0,5\],\[5,11\]\]\}$' "$BT" tokenize --tokenizer "$LLAMA" --text "Hello world"
    expect "tokenize --text with a special token" 0 '"ids":\[151667,198\]' "$BT" tokenize --tokenizer "$QWEN" --text "<think>
"
    printf '{"text": "Wait"}\n\n{"id": 2, "text": " Wait"}\n' >in.jsonl
    expect "tokenize --jsonl" 0 '^\{"ids":\[14190\], "spans":\[\[0,4\]\]\}$' "$BT" tokenize --tokenizer "$QWEN" --jsonl in.jsonl
    n=$("$BT" tokenize --tokenizer "$QWEN" --jsonl in.jsonl | grep -c '"ids":\[13824\], "spans":\[\[0,5\]\]')
    [ "$n" = 1 ] && ok "tokenize --jsonl: one line per input" || bad "tokenize --jsonl: one line per input" "second input not found"
    printf '{"text": "Wait"}\n{"txt": "x"}\n' >bad.jsonl
    out=$("$BT" tokenize --tokenizer "$QWEN" --jsonl bad.jsonl 2>err.txt); rc=$?
    if [ $rc -eq 2 ] && [ -z "$out" ] && grep -q 'bad.jsonl:2: expected an object with a "text" string' err.txt; then
        ok "tokenize --jsonl bad line: exit 2, no partial output"
    else bad "tokenize --jsonl bad line: exit 2, no partial output" "rc $rc, stdout '$out', $(cat err.txt)"; fi
    printf '{"text": "ok"}\n{"text": \n' >broken.jsonl
    expect "tokenize --jsonl invalid JSON line" 2 "broken.jsonl:2: invalid JSON" "$BT" tokenize --tokenizer "$QWEN" --jsonl broken.jsonl
    expect "tokenize --text and --jsonl" 2 "exactly one of" "$BT" tokenize --tokenizer "$QWEN" --text a --jsonl in.jsonl
    out=$("$BT" detokenize --tokenizer "$LLAMA" --ids 271,14524 2>&1); rc=$? # printf, not echo: dash's echo expands \n
    if [ $rc -eq 0 ] && [ "$(printf '%s' "$out")" = '{"text": "\n\nWait"}' ]; then ok "detokenize"; else bad "detokenize" "rc $rc: $(printf '%s' "$out")"; fi
    expect "detokenize with spaces and a special token" 0 '^\{"text": "<think>Wait"\}$' "$BT" detokenize --tokenizer "$QWEN" --ids "151667, 14190"
    expect "detokenize of no ids" 0 '^\{"text": ""\}$' "$BT" detokenize --tokenizer "$QWEN" --ids ""
    expect "detokenize of an unknown id" 2 "'151669' is not a token id" "$BT" detokenize --tokenizer "$QWEN" --ids 1,151669
    expect "detokenize of a bad list" 2 "expected ','" "$BT" detokenize --tokenizer "$QWEN" --ids "1;2"
    expect "detokenize needs --ids" 2 "are required" "$BT" detokenize --tokenizer "$QWEN"
else
    skipped "tokenize and detokenize of real tokenizers" "../shared/tokenizers is absent"
fi

if [ -r "$QWEN" ] && [ -r "$SHARED/gsm8k/test.jsonl" ]; then
    expect "tokenize --bench" 0 '"texts":2638, .*"mb_s":[0-9]' "$BT" tokenize --tokenizer "$QWEN" --bench "$SHARED/gsm8k/test.jsonl"
else
    skipped "tokenize --bench" "../shared/gsm8k/test.jsonl or the qwen3 tokenizer is absent"
fi
cd "$ROOT" || exit 1
