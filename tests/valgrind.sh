#!/bin/sh
# tests/valgrind.sh (make test-valgrind): the unit tests and a small bt run (every stage on
# the organism) under valgrind memcheck; passes with zero errors and no definite leaks.
# Skipped with a message where valgrind is missing. Minutes, not seconds: not part of make test.
BT=$(cd "$(dirname "${BT:-./bt}")" && pwd)/$(basename "${BT:-./bt}")
UNIT=${UNIT:-build/unit}
if ! command -v valgrind >/dev/null 2>&1; then echo "make test-valgrind: skipped: valgrind is not installed"; exit 0; fi
# valgrind does not run AVX-512 code: the portable kernels (they pass the same reference tests).
export BT_NO_SIMD=1
VG="valgrind --error-exitcode=99 --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite --num-callers=30"
mkdir -p build/tmp
status=0
summary() { # summary NAME LOG RC
    errors=$(sed -n 's/.*ERROR SUMMARY: \([0-9]*\) errors.*/\1/p' "$2" | tail -n 1)
    definite=$(sed -n 's/.*definitely lost: \([0-9,]*\) bytes.*/\1/p' "$2" | tail -n 1)
    echo "$1: exit $3, ${errors:-?} errors, ${definite:-0} bytes definitely lost (log: $2)"
    [ "$3" -eq 0 ] && [ "${errors:-1}" -eq 0 ] || status=1
}
log=$(pwd)/build/tmp/valgrind_unit.log
$VG --log-file="$log" "$UNIT" >build/tmp/valgrind_unit.out 2>&1; rc=$?
tail -n 1 build/tmp/valgrind_unit.out
summary "unit tests" "$log" $rc
d=$(mktemp -d "$(pwd)/build/tmp/valgrind.XXXXXX") && cp -r configs "$d/" && cd "$d" || exit 1
sed -e 's/^n_problems = 40/n_problems = 4/' -e 's/^max_new_tokens = 96/max_new_tokens = 32/' -e 's/^batch_size = 16/batch_size = 4/' \
    -e 's/^variants = .*/variants = baseline_think_newline, no_think_tag/' configs/backtracking_state_transition.ini > small.ini
log=$d/valgrind_run.log
$VG --log-file="$log" "$BT" run --config small.ini --quiet >run.out 2>&1; rc=$?
summary "bt run" "$log" $rc
[ $status -eq 0 ] && echo "valgrind: clean" || echo "valgrind: FAILED"
exit $status
