#!/usr/bin/env python3
"""tests/capture_check.py: bt capture's files as numpy meets them.

usage: capture_check.py BT MODEL_DIR ACTIVATIONS_DIR

Expects these captures of one run in ACTIVATIONS_DIR (tests/cli_interop.sh makes them):
  all     --positions all --sites resid,attn,mlp, F32, one file
  events  --positions events --sites resid --layers 0,2,4 (4-layer organism), F32
  window  --positions window, BF16
  split   as all, but streamed in pieces and split into numbered files

Reads each file from the public safetensors layout (8-byte little-endian header length,
a JSON header, raw little-endian data) with numpy alone, validates the header as the
safetensors library does, and checks the numbers against `bt forward --hidden` for the
same token ids, the block outputs against the residual stream, the BF16 capture against
the F32 one rounded, and the split capture against the whole one. Prints one line per
check; exits 0 when all pass, 1 when one fails, 77 when numpy or pandas is missing.
"""
import json
import os
import subprocess
import sys

try:
    import numpy as np
    import pandas as pd
except ImportError as e:
    print("skip: %s" % e)
    sys.exit(77)

DTYPES = {"F32": np.float32, "BF16": np.uint16}
failures = []


def check(name, ok, detail=""):
    print("%s %s%s" % ("ok  " if ok else "FAIL", name, "" if ok else ": " + detail))
    if not ok:
        failures.append(name)


def load(path):
    """(metadata, {name: float32 array}) of a safetensors file, checked as the library checks it."""
    with open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    if not all(isinstance(v, str) for v in meta.values()):
        raise ValueError("metadata values must be strings")
    data = raw[8 + n:]
    end, tensors = 0, {}
    for name, t in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        a, b = t["data_offsets"]
        if a != end:
            raise ValueError("%s starts at %d, not where the previous ends (%d)" % (name, a, end))
        width = 2 if t["dtype"] == "BF16" else 4
        if b - a != width * int(np.prod(t["shape"])):
            raise ValueError("%s: %d bytes for shape %s" % (name, b - a, t["shape"]))
        x = np.frombuffer(data[a:b], DTYPES[t["dtype"]]).reshape(t["shape"])
        if t["dtype"] == "BF16":  # numpy has no bfloat16: widen to float32 exactly
            x = (x.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = x
        end = b
    if end != len(data):
        raise ValueError("data section is %d bytes, the tensors cover %d" % (len(data), end))
    return meta, tensors


def forward_hidden(bt, model, ids):
    out = subprocess.run([bt, "forward", "--model", model, "--ids", ",".join(map(str, ids)), "--hidden", "--top", "1"],
                         stdout=subprocess.PIPE, check=True).stdout.decode()
    return np.array([json.loads(line)["hidden"] for line in out.splitlines()], dtype=np.float32)


def to_bf16(x):
    """float32 -> bfloat16 (round to nearest even) -> float32, as torch converts."""
    b = x.view(np.uint32).astype(np.uint64)
    b = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint32) << 16
    return b.view(np.float32)


def main(bt, model, act):
    meta, full = load(os.path.join(act, "all.safetensors"))
    rows = pd.read_csv(os.path.join(act, "all.csv"))
    n_layers = full["attn"].shape[1]
    check("all: shapes (rows, layers, hidden) match the CSV", full["resid"].shape[0] == len(rows) and
          full["resid"].shape[1] == n_layers + 1 and full["mlp"].shape == full["attn"].shape,
          str({k: v.shape for k, v in full.items()}))
    check("all: metadata names the sites and layers", meta.get("sites") == "resid,attn,mlp" and
          meta.get("resid_layers") == ",".join(map(str, range(n_layers + 1))), str(meta))
    # Every position of two completions against bt forward --hidden on the same ids.
    keys = rows[rows.kind == "event"][["problem_id", "sample"]].drop_duplicates().head(2).values.tolist()
    for problem, sample in keys:
        seq = rows[(rows.problem_id == problem) & (rows["sample"] == sample)].sort_values("pos")
        ok = list(seq.pos) == list(range(len(seq)))
        hidden = forward_hidden(bt, model, list(seq.token_id))
        got = full["resid"][seq.index.values]
        check("all: %s sample %d, %d positions x %d layers equal bt forward --hidden" % (problem, sample, len(seq),
              n_layers + 1), ok and hidden.shape == got.shape and np.array_equal(hidden, got),
              "max diff %g" % (np.abs(hidden - got).max() if hidden.shape == got.shape else -1))
    # Each block adds its attention and MLP outputs to the stream, in that order, in float32.
    resid, attn, mlp = full["resid"], full["attn"], full["mlp"]
    summed = (resid[:, :-1] + attn) + mlp
    check("all: resid[l+1] == resid[l] + attn[l] + mlp[l] exactly", np.array_equal(summed, resid[:, 1:]),
          "max diff %g" % np.abs(summed - resid[:, 1:]).max())
    # Events: the chosen layers of the rows at events, the same numbers as the whole capture.
    _, ev = load(os.path.join(act, "events.safetensors"))
    ev_rows = pd.read_csv(os.path.join(act, "events.csv"))
    index = {(p, s, q): i for i, (p, s, q) in enumerate(zip(rows.problem_id, rows["sample"], rows.pos))}
    at = [index[(p, s, q)] for p, s, q in zip(ev_rows.problem_id, ev_rows["sample"], ev_rows.pos)]
    check("events: one row per event, kind event, offset 0", (ev_rows.kind == "event").all() and (ev_rows.offset == 0).all()
          and len(ev_rows) == len(ev["resid"]), "%d rows" % len(ev_rows))
    check("events: layers 0,2,4 of the residual equal the whole capture's", ev["resid"].shape[1] == 3 and
          np.array_equal(ev["resid"], full["resid"][at][:, [0, 2, 4]]), str(ev["resid"].shape))
    # Window: BF16 rows are the F32 values rounded to nearest even.
    wmeta, win = load(os.path.join(act, "window.safetensors"))
    w_rows = pd.read_csv(os.path.join(act, "window.csv"))
    at = [index[(p, s, q)] for p, s, q in zip(w_rows.problem_id, w_rows["sample"], w_rows.pos)]
    check("window: BF16 equals the F32 capture rounded to nearest even", wmeta.get("format") == "pt" and
          np.array_equal(win["resid"], to_bf16(full["resid"][at])), str(win["resid"].shape))
    has_zero = w_rows.groupby(["kind", "event_id"]).offset.apply(lambda o: (o == 0).any()).all()
    check("window: offsets run -w..w around each event and control",
          set(w_rows.kind) <= {"event", "control"} and w_rows.offset.min() < 0 < w_rows.offset.max() and has_zero)
    # Split: numbered files that concatenate to the whole capture; the CSV says which row is where.
    s_rows = pd.read_csv(os.path.join(act, "split.csv"))
    files = sorted(set(s_rows.file))
    parts = [load(os.path.join(act, f)) for f in files]
    joined = {k: np.concatenate([p[1][k] for p in parts]) for k in ("resid", "attn", "mlp")}
    check("split: %d files concatenate to the whole capture, bit for bit" % len(files), len(files) > 1 and
          all(np.array_equal(joined[k], full[k]) for k in joined), str(files[:3]))
    first = {f: int(p[0]["first_row"]) for f, p in zip(files, parts)}
    check("split: metadata first_row and the CSV's file/file_row agree",
          (s_rows.row == s_rows.file.map(first) + s_rows.file_row).all() and
          all(len(p[1]["resid"]) == int(p[0]["n_rows"]) for p in parts))
    same = s_rows.drop(columns=["file", "file_row"]).equals(rows.drop(columns=["file", "file_row"]))
    check("split: the same rows as the whole capture", same)
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(__doc__.strip())
        sys.exit(2)
    sys.exit(main(*sys.argv[1:]))
