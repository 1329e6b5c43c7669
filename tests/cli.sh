#!/bin/sh
# tests/cli.sh: the command line as a user meets it: exit codes, messages, files.
# Each case runs in a scratch directory holding a copy of configs/.
BT=$(cd "$(dirname "$BT")" && pwd)/$(basename "$BT")
ROOT=$(pwd)
SHARED=${BT_SHARED:-$ROOT/../shared}
pass=0; fail=0; skip=0
ok()   { echo "ok   $1"; pass=$((pass + 1)); }
bad()  { echo "FAIL $1: $2"; fail=$((fail + 1)); }
skipped() { echo "skip $1: $2"; skip=$((skip + 1)); }
# python3 with numpy and pandas (Debian's python3-numpy, python3-pandas: /usr/bin/python3 when another comes first).
PY=; for p in python3 /usr/bin/python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import numpy, pandas' 2>/dev/null; then PY=$p; break; fi
done
scratch() { d=$(mktemp -d "$ROOT/build/tmp/cli.XXXXXX"); cp -r "$ROOT/configs" "$d/"; cd "$d" || exit 1; }
# expect NAME CODE PATTERN CMD...: exit code CODE and PATTERN (grep -E) in stdout+stderr.
expect() {
    name=$1; code=$2; pattern=$3; shift 3
    out=$("$@" 2>&1); rc=$?
    if [ $rc -ne "$code" ]; then bad "$name" "exit $rc, wanted $code: $(printf '%s\n' "$out" | head -n 3)"; return; fi
    if [ -n "$pattern" ] && ! printf '%s\n' "$out" | grep -qE -- "$pattern"; then bad "$name" "output lacks /$pattern/: $(printf '%s\n' "$out" | head -n 3)"; return; fi
    ok "$name"
}

# CLI_ONLY=NAME runs only tests/cli_NAME.sh (while working on one part).
if [ -z "${CLI_ONLY:-}" ]; then
scratch
expect "help lists every command" 0 "formatting-sweep" "$BT" --help
for c in init-run prepare-data generate detect-events logit-lens ablation-scan compare-conditions \
         formatting-sweep make-report run plan capture merge slurm model-info tokenize detokenize forward generate-ids make-organism \
         make-bench-model bench; do
    "$BT" --help | grep -q "^  $c " || bad "help lists $c" "missing"
    expect "$c --help" 0 "usage: bt $c" "$BT" $c --help
done
expect "unknown command" 2 "unknown command 'frobnicate'" "$BT" frobnicate
fi

for f in "$ROOT"/tests/cli_${CLI_ONLY:-*}.sh; do [ -f "$f" ] && . "$f"; done

echo "cli: $pass passed, $fail failed, $skip skipped"
