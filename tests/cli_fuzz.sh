# tests/cli_fuzz.sh: every input the fuzzers ever crashed on (tests/fuzz/crashes/<target>/*)
# through the same fuzz target, built normally (make test) or sanitized (make test-san):
# each must now run to the end (sourced by cli.sh).

REPLAY=${FUZZ_REPLAY:+$ROOT/$FUZZ_REPLAY}
if [ -z "$REPLAY" ] || [ ! -x "$REPLAY" ]; then
    skipped "fuzz crash replay" "no fuzz_replay binary (run through make test)"
else
    n_inputs=0; n_bad=0
    for t in $("$REPLAY" --targets); do
        for f in "$ROOT"/tests/fuzz/crashes/$t/*; do
            [ -f "$f" ] || continue
            n_inputs=$((n_inputs + 1))
            out=$("$REPLAY" "$t" "$f" 2>&1); rc=$?
            if [ $rc -ne 0 ]; then n_bad=$((n_bad + 1)); bad "fuzz replay $t $(basename "$f")" "exit $rc: $(printf '%s\n' "$out" | grep -m 2 -E 'ERROR|error|invariant')"; fi
        done
    done
    [ $n_bad -eq 0 ] && ok "fuzz crash replay: $n_inputs saved inputs run clean through their targets"
    # The replay driver itself runs an input through each target (so a saved crash would be caught).
    printf '{"a": [1, 2.5, "x"]}' > "$ROOT/build/tmp/replay_probe.json"
    expect "fuzz replay runs an input" 0 "" "$REPLAY" json "$ROOT/build/tmp/replay_probe.json"
fi
