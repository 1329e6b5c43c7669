#!/bin/sh
# tests/run.sh: the whole suite (unit tests, then command-line tests).
# Prints each group's counts and ends with the line "N passed, N failed, N skipped".
BT=${BT:-./bt}
UNIT=${UNIT:-build/unit}
export BT
mkdir -p build/tmp
total_pass=0; total_fail=0; total_skip=0
add_counts() { # reads "name: N passed, N failed, N skipped" from the last line of $1
    line=$(grep -E '^[a-z]+: [0-9]+ passed, [0-9]+ failed' "$1" | tail -n 1)
    if [ -z "$line" ]; then
        echo "$2: no totals line (crashed?)"; total_fail=$((total_fail + 1)); return
    fi
    p=$(echo "$line" | sed -E 's/^[a-z]+: ([0-9]+) passed.*/\1/')
    f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')
    s=$(echo "$line" | sed -nE 's/.* ([0-9]+) skipped.*/\1/p')
    total_pass=$((total_pass + p)); total_fail=$((total_fail + f)); total_skip=$((total_skip + ${s:-0}))
}
"$UNIT" "$@" >build/tmp/unit.log 2>&1; rc=$?
cat build/tmp/unit.log
add_counts build/tmp/unit.log unit
if [ $rc -ne 0 ] && ! grep -qE '^unit: [0-9]+ passed, [1-9]' build/tmp/unit.log; then
    echo "unit: exited $rc"; total_fail=$((total_fail + 1))
fi
if [ $# -eq 0 ]; then
    sh tests/cli.sh >build/tmp/cli.log 2>&1
    cat build/tmp/cli.log
    add_counts build/tmp/cli.log cli
fi
echo "$total_pass passed, $total_fail failed, $total_skip skipped"
[ $total_fail -eq 0 ]
