#!/usr/bin/env python3
"""tests/directions_check.py: bt's directions.safetensors read with numpy from the public safetensors
layout (8-byte little-endian header length, a JSON header of {name: {dtype, shape, data_offsets}},
the data), and checked against directions.csv (one row per layer: its norm and mean_norm).

usage: directions_check.py DIRECTIONS.safetensors DIRECTIONS.csv
Exit 0 when it holds, 1 with a message when not, 77 when numpy is missing.
"""
import csv
import json
import struct
import sys

try:
    import numpy as np
except ImportError:
    print("numpy is not installed")
    sys.exit(77)


def load(path):
    with open(path, "rb") as f:
        blob = f.read()
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + header_len])
    data = blob[8 + header_len:]
    dtypes = {"F32": np.float32, "F16": np.float16}
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            assert all(isinstance(v, str) for v in entry.values()), "metadata values must be strings"
            continue
        begin, end = entry["data_offsets"]
        array = np.frombuffer(data[begin:end], dtype=dtypes[entry["dtype"]]).reshape(entry["shape"])
        out[name] = array
    assert (8 + header_len) % 8 == 0, "the data section starts 8-byte aligned"
    return out


def main():
    tensors = load(sys.argv[1])
    with open(sys.argv[2], newline="") as f:
        rows = list(csv.DictReader(f))
    directions, mean_norm = tensors["directions"], tensors["mean_norm"]
    layers = len(rows)
    if directions.dtype != np.float32 or directions.shape[0] != layers or directions.ndim != 2:
        sys.exit(f"directions: {directions.dtype} {directions.shape}, want F32 ({layers}, hidden)")
    if mean_norm.shape != (layers,):
        sys.exit(f"mean_norm: shape {mean_norm.shape}, want ({layers},)")
    for row in rows:
        layer = int(row["layer"])
        norm = float(np.linalg.norm(directions[layer].astype(np.float64)))
        want = float(row["norm"])
        if abs(norm - want) > 1e-5 * max(want, 1e-6):
            sys.exit(f"layer {layer}: norm {norm} in the file, {want} in the CSV")
        if abs(float(mean_norm[layer]) - float(row["mean_norm"])) > 1e-5 * max(float(row["mean_norm"]), 1e-6):
            sys.exit(f"layer {layer}: mean_norm {mean_norm[layer]} in the file, {row['mean_norm']} in the CSV")
        top = int(np.argmax(np.abs(directions[layer])))
        if norm > 0 and top != int(row["top_dim"]):
            sys.exit(f"layer {layer}: largest component at dim {top}, the CSV says {row['top_dim']}")
    print(f"ok: {layers} layers x {directions.shape[1]} dims")


if __name__ == "__main__":
    main()
