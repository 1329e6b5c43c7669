// tests/fuzz/fuzz_csv.c: csv_read, then every cell through the checked readers.
#include "fuzz.h"

FUZZ_TARGET(csv) {
    const char *path = fuzz_write("analysis/backtracking_events.csv", data, n);
    Csv t;
    Err err = {0};
    if (csv_read(path, &t, &err)) {
        fuzz_invariant(err.code == EXIT_BAD_INPUT && strstr(err.msg, "backtracking_events.csv") != NULL,
                       "an error names the file");
        return 0;
    }
    fuzz_invariant(t.n_cols >= 1 && t.n_rows >= 0, "a header row");
    for (int c = 0; c < t.n_cols; c++)
        fuzz_invariant(csv_col(&t, t.cells[c]) <= c, "csv_col finds the first column of a name");
    int named = 0; // one bad cell's message is checked; the others are read without formatting one
    for (int r = 0; r < t.n_rows; r++) {
        fuzz_invariant(t.row_line[r + 1] > t.row_line[r], "rows start on increasing lines");
        for (int c = 0; c < t.n_cols; c++) {
            long long v;
            double d;
            if (csv_int(&t, r, c, -1000, 1000, &v, NULL) == 0)
                fuzz_invariant(v >= -1000 && v <= 1000, "csv_int keeps its range");
            else if (!named++)
                fuzz_invariant(csv_int(&t, r, c, -1000, 1000, &v, &err) == -1 &&
                                   strstr(err.msg, "backtracking_events.csv:"),
                               "a bad cell names file and line");
            if (csv_double(&t, r, c, &d, NULL) == 0) fuzz_invariant(d - d == 0, "csv_double is finite");
        }
    }
    csv_free(&t);
    return 0;
}
