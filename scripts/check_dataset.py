#!/usr/bin/env python3
"""Loads a dataset written by `stringdriverd export` with pyarrow, the
reference Parquet reader, and checks it against expectations.

    scripts/check_dataset.py DATASET_DIR EXPECT_JSON

EXPECT_JSON (a file) holds what the caller read from PostgreSQL:
    {"frames": N,
     "shapes": {"channels": C, "partials": P, "steppers": S, "threshold_channels": T},
     "samples": [{"frame_index": i, "values": {"column": value, ...}}, ...]}
Values are compared exactly, floats to a relative 1e-6. Prints one line per
problem and exits 1 if there is any; prints "dataset ok: ..." and exits 0
otherwise. Checks, beyond the samples: every file of meta/info.json exists
and loads; the columns and their types are those info.json lists (fixed-size
lists of the shapes it gives); frame_index runs 0..N-1; timestamps ascend.
"""

import json
import math
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

DTYPES = {
    "timestamp[us, UTC]": pa.timestamp("us", tz="UTC"),
    "int64": pa.int64(),
    "int32": pa.int32(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "string": pa.string(),
}


def expected_type(feature):
    t = DTYPES[feature["dtype"]]
    shape = feature["shape"]
    names = feature["names"]
    # info.json gives scalars as shape [1] with no names, as LeRobot does.
    if shape == [1] and names is None:
        return t
    for n in reversed(shape):
        t = pa.list_(pa.field("item", t, nullable=False), n)
    return t


def same(a, b):
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(sys.argv[1])
    expect = json.loads(Path(sys.argv[2]).read_text())
    info = json.loads((root / "meta" / "info.json").read_text())
    problems = []

    tables = [pq.read_table(root / f) for f in info["files"]]
    if not tables:
        problems.append("info.json lists no data files")
        table = None
    else:
        table = pa.concat_tables(tables)

    features = info["features"]
    if table is not None:
        # info.json's features are keyed by name (a JSON object, no order).
        if sorted(table.schema.names) != sorted(features):
            problems.append(f"columns {table.schema.names} != info.json features {sorted(features)}")
        for name, f in features.items():
            if name not in table.schema.names:
                continue
            got = table.schema.field(name).type
            want = expected_type(f)
            if not got.equals(want):
                problems.append(f"{name}: type {got}, info.json says {want}")
        if table.num_rows != expect["frames"]:
            problems.append(f"{table.num_rows} rows, expected {expect['frames']}")
        if info["counts"]["frames"] != table.num_rows:
            problems.append(f"info.json counts.frames {info['counts']['frames']} != {table.num_rows} rows")
        fi = table.column("frame_index").to_pylist()
        if fi != list(range(len(fi))):
            problems.append("frame_index does not run 0..N-1")
        ts = table.column("timestamp").to_pylist()
        if any(b < a for a, b in zip(ts, ts[1:])):
            problems.append("timestamps do not ascend")

    for axis, n in expect.get("shapes", {}).items():
        if info["shapes"].get(axis) != n:
            problems.append(f"shape {axis}: info.json {info['shapes'].get(axis)}, expected {n}")

    for sample in expect.get("samples", []):
        i = sample["frame_index"]
        if table is None or i >= table.num_rows:
            problems.append(f"frame {i} is missing")
            continue
        row = table.slice(i, 1).to_pylist()[0]
        for column, want in sample["values"].items():
            got = row.get(column)
            if hasattr(got, "strftime"):
                # Timestamps compare as RFC 3339 UTC with microseconds.
                got = got.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            if not same(got, want):
                problems.append(f"frame {i} {column}: {got!r} != expected {want!r}")

    for p in problems:
        print(p)
    if problems:
        return 1
    rows = table.num_rows if table is not None else 0
    print(f"dataset ok: {rows} rows, {len(features)} features, {len(info['files'])} files, "
          f"{len(expect.get('samples', []))} samples checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
