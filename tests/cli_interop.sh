# tests/cli_interop.sh: interop and looking (sourced by cli.sh): the plan, progress with an
# ETA, bt capture read back with numpy, the event browser in Chromium, every CSV as pandas
# reads it, what git tracks of a run, and bad input to each. One small run serves them all.

scratch
sed -e 's/^n_problems = 40/n_problems = 6/' -e 's/^max_new_tokens = 96/max_new_tokens = 48/' \
    -e 's/^variants = .*/variants = baseline_think_newline, think_no_newline/' -e 's/^enabled = true/enabled = false/' -e 's/^scope = all/scope = onset/' \
    configs/backtracking_state_transition.ini > i.ini

# The plan: counts from the config, times from a calibration; --plan runs nothing.
out=$("$BT" plan --config i.ini 2>&1); rc=$?
if [ $rc -eq 0 ] && printf '%s\n' "$out" | grep -q 'generate baseline  *24 completions, 1152 new tokens' &&
   printf '%s\n' "$out" | grep -q 'calibration (' && printf '%s\n' "$out" | grep -qE 'estimate: at most [0-9]'; then
    ok "bt plan: 24 completions of at most 48 tokens, calibrated, estimated"
else bad "bt plan" "exit $rc: $(printf '%s\n' "$out" | head -n 4)"; fi
printf '%s\n' "$out" | grep -q 'generate targeted, random  *1 + 3 x 12 completions of baseline_think_newline, 2304 new tokens' &&
   printf '%s\n' "$out" | grep -q 'collateral-damage  *5 passes (clean, targeted, 3 random) over 12 completions' &&
   ! printf '%s\n' "$out" | grep -qE '^  (directions|generate steered) ' && ok "bt plan: the ablation conditions' 3 random draws, collateral damage, no steering when disabled" ||
    bad "bt plan counts the random draws and collateral damage" "$(printf '%s\n' "$out" | grep -E 'targeted|collateral|directions|steered')"
# Every stage bt run runs is in the plan: the steered ones, the attribution scan's gradient passes.
sed -e 's/^n_problems = 40/n_problems = 6/' -e 's/^max_new_tokens = 96/max_new_tokens = 48/' \
    -e 's/^method = exact/method = attribution+verify\nrandom_draws = 2/' configs/backtracking_state_transition.ini > p.ini
out=$("$BT" plan --config p.ini --shards 2 2>&1); rc=$?
if [ $rc -eq 0 ] && printf '%s\n' "$out" | grep -q 'generate targeted, random  *1 + 2 x 12 completions of baseline_think_newline, 1728 new tokens' &&
   printf '%s\n' "$out" | grep -q 'collateral-damage  *4 passes (clean, targeted, 2 random) over 12 completions' &&
   printf '%s\n' "$out" | grep -qE 'attribution\+verify: [0-9]+ items in 12 completions: a forward and a backward pass each, of [0-9]+ positions; then 1 \+ 12 passes' &&
   printf '%s\n' "$out" | grep -q 'directions  *24 completions of baseline_think_newline and no_think_tag' &&
   printf '%s\n' "$out" | grep -q 'generate steered  *steer, steer_random, project_out: 5 conditions x 2 variants x 12 completions, 5760 new tokens' &&
   printf '%s\n' "$out" | grep -qE 'gradient [0-9.]+ positions/s' && printf '%s\n' "$out" | grep -qE 'estimate: at most [0-9]' &&
   printf '%s\n' "$out" | grep -qE '^  on 2 nodes \(bt slurm --shards 2, stage after stage\): at most [0-9hms]+$'; then
    ok "bt plan: steering, 2 random draws, attribution+verify (12 verified passes), gradient calibrated, on 2 nodes"
else bad "bt plan with steering and attribution+verify" "exit $rc: $(printf '%s\n' "$out" | grep -vE '^  (generate baseline|logit-lens)')"; fi
out=$("$BT" plan --config i.ini --shards 3 --no-calibrate 2>&1)
printf '%s\n' "$out" | grep -q 'on 3 nodes' && bad "bt plan --shards without a calibration prints no time" "$out" ||
    ok "bt plan --shards without a calibration prints no time"
out=$("$BT" plan --config i.ini --shards 3 2>&1)
# seconds of a duration as bt prints it (5s, 4m07s, 2h03m)
dur_s() { echo $(( $(echo "$1" | sed -E 's/^([0-9]+)h0*([0-9]+)m$/\1*3600+\2*60/; s/^([0-9]+)m0*([0-9]+)s$/\1*60+\2/; s/^([0-9]+)s$/\1/') )); }
one=$(printf '%s\n' "$out" | sed -n 's/^  estimate: at most \([0-9hms]*\),.*/\1/p')
three=$(printf '%s\n' "$out" | sed -n 's/^  on 3 nodes (bt slurm --shards 3, stage after stage): at most \([0-9hms]*\)$/\1/p')
if [ -n "$one" ] && [ -n "$three" ] && [ "$(dur_s "$three")" -le "$(dur_s "$one")" ]; then
    ok "bt plan --shards 3: the exact scan splits too, $three on 3 nodes against $one on one"
else bad "bt plan --shards 3" "$(printf '%s\n' "$out" | tail -n 2)"; fi
expect "bt plan --shards 0" 2 "--shards" "$BT" plan --config i.ini --shards 0
out=$("$BT" run --plan --config i.ini 2>/dev/null); rc=$?
[ $rc -eq 0 ] && printf '%s\n' "$out" | grep -q '^bt plan: i.ini' && [ ! -e runs ] && ok "bt run --plan prints the plan and runs nothing" ||
    bad "bt run --plan" "exit $rc, runs/ $( [ -e runs ] && echo exists || echo absent)"
sed 's|^path = models/organism|path = nowhere|; s/^make_organism = true/make_organism = false/' i.ini > nomodel.ini
expect "bt plan without the model" 2 "nowhere: not a model directory" "$BT" plan --config nomodel.ini

# The run, every progress line printed: the plan comes first, and generation has an ETA before
# any completion has finished.
if BT_PROGRESS_EVERY_S=0 "$BT" run --config i.ini > run.out 2> run.err; then ok "bt run (interop run)"
else bad "bt run (interop run)" "$(tail -n 3 run.err)"; fi
head -n 1 run.err | grep -q '^bt plan: i.ini' && ok "bt run prints the plan first" || bad "bt run prints the plan first" "$(head -n 1 run.err)"
grep -qE '^generate baseline_think_newline/baseline: 0/12 completions, [0-9.]+ tok/s, ETA [0-9]+s' run.err &&
    ok "generation progress has an ETA before the first completion ends" ||
    bad "generation ETA from the first steps" "$(grep -m 3 '^generate baseline_think_newline/baseline' run.err)"
id=$(cat runs/.current_run_id); R=runs/$id; act=$R/activations

# Captures, checked with numpy against bt forward --hidden (tests/capture_check.py).
cap() { "$BT" capture --config i.ini --quiet "$@" > cap.log 2>&1 || { bad "capture $*" "$(tail -n 2 cap.log)"; return 1; }; }
sed -e 's/^\[report\]/[capture]\nmax_memory_mb = 0.02\nmax_file_mb = 0.25\n\n[report]/' i.ini > small_mem.ini
if cap --positions all --sites resid,attn,mlp --name all && cap --positions events --layers 0,2,4 --name events &&
   cap --positions window --dtype bf16 --name window &&
   "$BT" capture --config small_mem.ini --quiet --positions all --sites resid,attn,mlp --name split > cap.log 2>&1; then
    n_split=$(ls $act | grep -c '^split-.*-of-.*\.safetensors$')
    [ "$n_split" -gt 1 ] && ok "capture splits past max_file_mb ($n_split files) and streams in pieces" || bad "capture split" "$n_split files"
    if [ -n "$PY" ]; then
        if "$PY" "$ROOT/tests/capture_check.py" "$BT" models/organism $act > check.log 2>&1; then
            ok "captures read with numpy: equal to bt forward --hidden, blocks sum, BF16 rounded, splits join ($(grep -c '^ok' check.log) checks)"
        else bad "captures read with numpy" "$(grep -v '^ok' check.log | head -n 3)"; fi
    else skipped "captures read with numpy" "no python3 with numpy and pandas"; fi
    # A capture of the same name replaces the earlier files, however they were split.
    "$BT" capture --config i.ini --quiet --positions all --name split >/dev/null 2>&1
    [ "$(ls $act | grep -c '^split')" -eq 2 ] && [ -f $act/split.safetensors ] && ok "a capture replaces the earlier files of its name" ||
        bad "capture replaces earlier files" "$(ls $act | grep '^split' | head -n 3)"
fi
expect "capture: unknown site" 2 "--sites: unknown site 'foo'" "$BT" capture --config i.ini --sites resid,foo
expect "capture: a layer attn does not have" 2 "layer 4 does not exist for attn: it has 0..3" "$BT" capture --config i.ini --sites resid,attn --layers 0,4
expect "capture: a layer resid does not have" 2 "layer 5 does not exist for resid" "$BT" capture --config i.ini --layers 5
expect "capture: bad positions" 2 "--positions: 'everywhere' is not one of" "$BT" capture --config i.ini --positions everywhere
expect "capture: bad dtype" 2 "--dtype: 'f16' is not f32 or bf16" "$BT" capture --config i.ini --dtype f16
expect "capture: no such generations" 2 "no generations of no_think_tag under baseline" "$BT" capture --config i.ini --variant no_think_tag
expect "capture: events where there are none" 2 "has no events of baseline_think_newline under targeted_ablation: nothing to capture" \
    "$BT" capture --config i.ini --condition targeted_ablation
sed -e 's/^\[report\]/[capture]\nmax_memory_mb = 0.001\n\n[report]/' i.ini > tiny_mem.ini
expect "capture: max_memory_mb below one position" 2 "tiny_mem.ini: \[capture\] max_memory_mb = 0.001 holds less than one position" \
    "$BT" capture --config tiny_mem.ini
mv $R/analysis/backtracking_events.csv ev.csv
expect "capture at events before detect-events" 2 "no events in run .*: run detect-events first" "$BT" capture --config i.ini --positions window
expect "capture of completions needs no events" 0 "rows of completion" "$BT" capture --config i.ini --positions completion --name c
mv ev.csv $R/analysis/backtracking_events.csv
# A full disk: a small tmpfs over the activations folder where mounting is allowed, else a
# file size limit (write fails with EFBIG); either way exit 1 and nothing under the final names.
rm -rf $act && mkdir -p $act
how=
if [ "$(id -u)" = 0 ] && mount -t tmpfs -o size=64k tmpfs $act 2>/dev/null; then how="a full 64 KB tmpfs"
    "$BT" capture --config i.ini --positions all --sites resid,attn,mlp --name full > full.log 2>&1; rc=$?
    left=$(ls -A $act | tr '\n' ' '); umount $act
elif (trap '' XFSZ; ulimit -f 64) 2>/dev/null; then how="a 32 KB file size limit"
    (trap '' XFSZ; ulimit -f 64; exec "$BT" capture --config i.ini --positions all --sites resid,attn,mlp --name full) > full.log 2>&1; rc=$?
    left=$(ls -A $act | tr '\n' ' ')
fi
if [ -z "$how" ]; then skipped "capture on a full disk" "neither a tmpfs mount nor a file size limit is available"
elif [ $rc -eq 1 ] && grep -qE "full(-[0-9]+-of-[0-9]+)?\.safetensors: write failed: (No space left on device|File too large)" full.log && [ -z "$left" ]; then
    ok "capture on a full disk ($how): exit 1, the error named, no file left"
else bad "capture on a full disk ($how)" "exit $rc, left '$left': $(tail -n 1 full.log)"; fi

# Every CSV of the run loads with pandas as the README documents; an undocumented one fails.
if [ -n "$PY" ]; then
    cap --positions window --name window >/dev/null
    if "$PY" "$ROOT/tests/csv_check.py" "$ROOT/README.md" $R/analysis/*.csv $act/*.csv > csv.log 2>&1; then
        ok "every CSV loads with pandas with the README's columns and types ($(grep -c '^ok' csv.log) files)"
    else bad "CSVs as pandas reads them" "$(grep -v '^ok' csv.log | head -n 3)"; fi
    printf 'run_id,layer\nx,notanint\n' > $R/analysis/extra.csv
    cp $R/analysis/logit_lens.csv wrong.csv && sed -i '2s/,[0-9]*$/,high/' wrong.csv && mkdir -p analysis && mv wrong.csv analysis/logit_lens.csv
    "$PY" "$ROOT/tests/csv_check.py" "$ROOT/README.md" $R/analysis/extra.csv analysis/logit_lens.csv > csv.log 2>&1
    [ $? -eq 1 ] && grep -q 'extra.csv: not documented' csv.log && grep -q 'rank is object, documented int' csv.log &&
        ok "the CSV check rejects an undocumented file and a wrong type" || bad "the CSV check rejects bad CSVs" "$(cat csv.log)"
    rm -f $R/analysis/extra.csv
else skipped "CSVs as pandas reads them" "no python3 with numpy and pandas"; fi

# The event browser: well-formed and self-contained, rendered in Chromium with the first
# event's trigger visible and the filters working; completion text escaped.
page=reports/events.html
if ! command -v python3 >/dev/null 2>&1; then skipped "event browser" "no python3"
else
    python3 "$ROOT/tests/html_check.py" xml $page > html.log 2>&1 && ok "events.html is well-formed and self-contained" ||
        bad "events.html is well-formed and self-contained" "$(cat html.log)"
    printf '<html><body><img src="http://example.com/x.png"/></body></html>' > fetch.html
    printf '<html><body><div>unclosed</body></html>' > broken.html
    python3 "$ROOT/tests/html_check.py" xml fetch.html > h1.log 2>&1; r1=$?
    python3 "$ROOT/tests/html_check.py" xml broken.html > h2.log 2>&1; r2=$?
    [ $r1 -eq 1 ] && grep -q 'would fetch' h1.log && [ $r2 -eq 1 ] && grep -q 'mismatched tag' h2.log &&
        ok "the page check rejects a page that fetches and one that is not well-formed" || bad "page check rejects bad pages" "$(cat h1.log h2.log)"
    trigger=$(awk -F, 'NR > 1 && $2 == "event" { print $8; exit }' $R/analysis/backtracking_events.csv)
    python3 "$ROOT/tests/html_check.py" render $page "$trigger" think_no_newline > render.log 2>&1; rc=$?
    if [ $rc -eq 77 ]; then skipped "events.html in Chromium" "$(tail -n 1 render.log)"
    elif [ $rc -eq 0 ]; then ok "events.html in Chromium: first trigger '$trigger' visible, filter works, not blank"
    else bad "events.html in Chromium" "$(grep -v '^ok' render.log | head -n 3)"; fi
    # A completion with markup in it, shown as text.
    g=$R/generations/baseline_think_newline/baseline.jsonl
    ids=$("$BT" tokenize --tokenizer models/organism/tokenizer.json --text 'So <script>alert(1)</script> & "Wait", it is </pre> 7.' |
          sed 's/.*"ids":\[\([0-9,]*\)\].*/\1/')
    printf '{"problem_id": "markup", "variant": "baseline_think_newline", "condition": "baseline", "sample": 0, "prompt": "x", "prompt_tokens": 1, "completion_ids": [%s], "finish_reason": "eos", "correct": false}\n' "$ids" >> $g
    sed 's/^figures_dir = figures/figures_dir = figures\nmax_events_shown = 1000/' i.ini > all_events.ini
    if "$BT" detect-events --config all_events.ini --quiet >/dev/null && "$BT" make-report --config all_events.ini --quiet >/dev/null &&
       grep -q 'So &lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;<mark class="trigger">Wait</mark>&quot;, it is &lt;/pre&gt; 7.' $page &&
       ! grep -q '<script>alert' $page && python3 "$ROOT/tests/html_check.py" xml $page >/dev/null; then
        ok "events.html escapes completion text and stays well-formed"
    else bad "events.html escapes completion text" "$(grep -o '.\{20\}alert(1).\{40\}' $page | head -n 2)"; fi
fi
# The page on a full disk: make-report fails with the error and leaves no page.
if [ "$(id -u)" = 0 ] && mkdir -p full && mount -t tmpfs -o size=16k tmpfs full 2>/dev/null; then
    sed 's|^figures_dir = figures|figures_dir = figures\nevents_path = full/events.html|' i.ini > fullpage.ini
    "$BT" make-report --config fullpage.ini > full.log 2>&1; rc=$?
    left=$(ls -A full | tr '\n' ' '); umount full
    [ $rc -eq 1 ] && grep -q 'full/events.html: write failed: No space left on device' full.log && [ -z "$left" ] &&
        ok "make-report on a full disk: exit 1, no partial events.html" || bad "make-report on a full disk" "exit $rc, left '$left': $(tail -n 1 full.log)"
else skipped "make-report on a full disk" "cannot mount a tmpfs here (not root)"; fi

# What git tracks of a run: the seed's policy.
if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
    wrong=
    for p in runs/x/generations/v/baseline.jsonl runs/x/activations/a.safetensors runs/.current_run_id models/m/config.json; do
        git -C "$ROOT" check-ignore -q "$p" || wrong="$wrong tracked:$p"
    done
    for p in runs/x/analysis/logit_lens.csv runs/x/figures/a.svg runs/x/meta.json runs/x/config_resolved.ini figures/a.svg \
             reports/events.html reports/backtracking_state_transition_report.md; do
        git -C "$ROOT" check-ignore -q "$p" && wrong="$wrong ignored:$p"
    done
    [ -z "$wrong" ] && ok ".gitignore: results tracked, generations, activations, current run id and weights not" || bad ".gitignore policy" "$wrong"
else skipped ".gitignore policy" "not a git checkout"; fi
cd "$ROOT"
