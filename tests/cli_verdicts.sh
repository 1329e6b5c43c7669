# tests/cli_verdicts.sh: bt run on every organism, whose true answer to each hypothesis
# is recorded in its config.json, must reach that answer, "no" as well as "yes" (sourced
# by cli.sh). Small settings: 16 problems x 4 samples, 3 random draws.

scratch
for m in planted redundant format_free distributed; do
    sed -e 's/^n_problems = 40/n_problems = 16/' -e 's/^samples_per_problem = 2/samples_per_problem = 4/' \
        -e 's/^max_new_tokens = 96/max_new_tokens = 80/' -e "s/^organism = planted/organism = $m/" \
        -e "s|^path = models/organism|path = models/organism_$m|" -e "s|^path = reports/|path = reports/$m/|" \
        configs/backtracking_state_transition.ini > $m.ini
    if ! "$BT" run --config $m.ini --quiet > $m.log 2>&1; then bad "bt run on the $m organism" "$(tail -n 3 $m.log)"; continue; fi
    report=reports/$m/backtracking_state_transition_report.md
    truth=$(grep -o '"truth": {[^}]*}' models/organism_$m/config.json)
    got=""; want=""
    for h in H1 H0 H2; do
        want="$want $h=$(printf '%s' "$truth" | sed -n "s/.*\"$h\": \"\([a-z ]*\)\".*/\1/p")"
        got="$got $h=$(sed -n "s/^$h ([a-z/ ]*): \(.*\)$/\1/p" $report)"
    done
    [ "$got" = "$want" ] && ok "bt run on the $m organism reaches its truth:$got" || bad "verdicts on the $m organism" "got$got; truth$want"
done
