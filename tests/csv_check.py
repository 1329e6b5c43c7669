#!/usr/bin/env python3
"""tests/csv_check.py: every CSV bt writes loads with pandas.read_csv as the README says.

usage: csv_check.py README.md FILE.csv...

The README documents each CSV under a heading that names its path in backticks
(`analysis/logit_lens.csv`, `activations/<name>.csv`), followed by a table of
| column | type | meaning | rows, type one of int, float, str. Each FILE must match one
documented path (by its end), load with plain pandas.read_csv, and have exactly the
documented columns in order, each of its type: int columns load as int64; float columns
as float64 (int64 when every value is whole); str columns as object (float64 when every
value is empty). Exits 0, 1 (a file fails) or 77 (no pandas).
"""
import re
import sys

try:
    import pandas as pd
except ImportError as e:
    print("skip: %s" % e)
    sys.exit(77)

HEADING = re.compile(r"^#+ .*`([^`]*\.csv)`")
ROW = re.compile(r"^\|\s*`?([A-Za-z0-9_]+)`?\s*\|\s*(int|float|str)\s*\|")


def documented(readme):
    docs, current = {}, None
    for line in open(readme, encoding="utf-8"):
        m = HEADING.match(line)
        if m:
            current = m.group(1)
            docs[current] = []
            continue
        m = ROW.match(line)
        if m and current is not None:
            docs[current].append((m.group(1), m.group(2)))
        elif line.startswith("#"):
            current = None
    return {path: cols for path, cols in docs.items() if cols}


def pattern(path):
    return re.compile("(^|/)" + re.escape(path).replace(re.escape("<name>"), "[^/]+") + "$")


def type_ok(series, want):
    kind = series.dtype.kind
    if want == "int":
        return kind == "i"
    if want == "float":
        return kind in "fi"
    return kind == "O" or (kind == "f" and series.isna().all())


def main(argv):
    if len(argv) < 3:
        print(__doc__.strip())
        return 2
    docs = documented(argv[1])
    bad = 0
    for path in argv[2:]:
        match = [p for p in docs if pattern(p).search(path)]
        if len(match) != 1:
            print("FAIL %s: %s in %s" % (path, "not documented" if not match else "documented twice", argv[1]))
            bad += 1
            continue
        cols = docs[match[0]]
        frame = pd.read_csv(path)
        names = [c for c, _ in cols]
        if list(frame.columns) != names:
            print("FAIL %s: columns %s, the README documents %s" % (path, list(frame.columns), names))
            bad += 1
            continue
        wrong = ["%s is %s, documented %s" % (c, frame[c].dtype, t) for c, t in cols if not type_ok(frame[c], t)]
        if wrong:
            print("FAIL %s: %s" % (path, "; ".join(wrong)))
            bad += 1
        else:
            print("ok   %s: %d rows, %d columns as `%s` documents" % (path, len(frame), len(cols), match[0]))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
