# tests/cli_kill.sh: every stage that writes, killed with SIGKILL at 10 seeded moments
# (a seeded fraction of its measured uninterrupted duration), then run again: the run's
# files must be byte-identical to an uninterrupted run's and no temp file (*.tmp.*) may
# be left (sourced by cli.sh). Small organism settings keep each stage to a fraction of a second.
# KILL_ONLY="generate-baseline ..." runs some stages; KILL_TIMES sets the kills per stage.

scratch
sed -e 's/^n_problems = 40/n_problems = 4/' -e 's/^max_new_tokens = 96/max_new_tokens = 40/' -e 's/^batch_size = 16/batch_size = 2/' \
    -e 's/^variants = .*/variants = baseline_think_newline, no_think_tag/' configs/backtracking_state_transition.ini > kill.ini
kill_times=${KILL_TIMES:-10}
# The files a run holds, with their hashes. Wall-clock time is not reproducible: the timing
# sidecars are left out, and the time the report was written is masked in the report.
state_hash() {
    find runs data figures reports -type f ! -name '*.timing.jsonl' 2>/dev/null | LC_ALL=C sort | while read -r f; do
        case $f in
        *.md) printf '%s  %s\n' "$(sed -E 's/[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z/<time>/g' "$f" | sha256sum | cut -c1-64)" "$f" ;;
        *) sha256sum "$f" ;;
        esac
    done
}
save_state() { rm -rf "$1" && mkdir -p "$1" && for d in runs data figures reports; do [ -d $d ] && cp -a $d "$1/"; done; }
load_state() { rm -rf runs data figures reports && cp -a "$1"/. .; }
now_ms() { date +%s%N | cut -c1-13; }
# kill_stage NAME ARGS...: the stage from the current state, uninterrupted and then killed kill_times times.
kill_stage() {
    name=$1; shift
    if [ -n "${KILL_ONLY:-}" ] && ! echo " $KILL_ONLY " | grep -q " $name "; then "$BT" "$@" --config kill.ini --threads 1 --quiet >/dev/null 2>&1; return; fi
    save_state before
    t0=$(now_ms)
    if ! "$BT" "$@" --config kill.ini --threads 1 --quiet >/dev/null 2>stage.err; then
        bad "kill -9 $name" "the uninterrupted run failed: $(head -n 1 stage.err)"; return
    fi
    duration_ms=$(( $(now_ms) - t0 ))
    state_hash > want.txt
    save_state after
    # Seeded moments: fractions of the duration from awk's generator, seeded by the stage name's length and the kill count.
    fractions=$(awk -v seed=$(( ${#name} * 7919 + kill_times )) -v n=$kill_times 'BEGIN { srand(seed); for (i = 0; i < n; i++) printf "%.3f\n", rand() }')
    n_killed=0; n_bad=0; why=""
    for f in $fractions; do
        load_state before
        delay=$(awk -v f=$f -v d=$duration_ms 'BEGIN { printf "%.3f", f * d / 1000 }')
        "$BT" "$@" --config kill.ini --threads 1 --quiet >/dev/null 2>&1 &
        pid=$!
        sleep "$delay"
        kill -9 $pid 2>/dev/null
        wait $pid 2>/dev/null
        [ $? -eq 137 ] && n_killed=$((n_killed + 1)) # it died of the SIGKILL, so it was still running
        if ! "$BT" "$@" --config kill.ini --threads 1 --quiet >/dev/null 2>stage.err; then
            n_bad=$((n_bad + 1)); why="re-run after a kill at ${delay}s failed: $(head -n 1 stage.err)"; continue
        fi
        tmp=$(find runs data figures reports -name '*.tmp.*' 2>/dev/null | head -n 1)
        if ! state_hash | cmp -s - want.txt; then
            n_bad=$((n_bad + 1)); why="after a kill at ${delay}s: $(state_hash | diff - want.txt | grep '^[<>]' | head -n 2 | awk '{ print $1, $3 }' | tr '\n' ' ')"
        elif [ -n "$tmp" ]; then
            n_bad=$((n_bad + 1)); why="after a kill at ${delay}s a temp file is left: $tmp"
        fi
    done
    load_state after
    if [ $n_bad -eq 0 ]; then ok "kill -9 $name: $kill_times kills in ${duration_ms} ms ($n_killed while running), the same bytes after a re-run"
    else bad "kill -9 $name" "$n_bad of $kill_times: $why"; fi
}

if "$BT" init-run --config kill.ini --quiet >/dev/null && "$BT" prepare-data --config kill.ini --threads 1 --quiet >/dev/null; then
    kill_stage generate-baseline generate --condition baseline
    kill_stage detect-events detect-events
    kill_stage logit-lens logit-lens
    kill_stage ablation-scan ablation-scan
    kill_stage generate-targeted generate --condition targeted_ablation
    kill_stage generate-random generate --condition random_ablation
    kill_stage collateral-damage collateral-damage
    kill_stage directions directions
    kill_stage generate-steer generate --condition steer
    "$BT" generate --config kill.ini --condition steer_random --threads 1 --quiet >/dev/null
    "$BT" detect-events --config kill.ini --threads 1 --quiet >/dev/null
    kill_stage compare-conditions compare-conditions
    kill_stage formatting-sweep formatting-sweep
    kill_stage steering-sweep steering-sweep
    kill_stage make-report make-report
else
    bad "kill -9 stages" "init-run or prepare-data failed"
fi
