"""CSV input for :func:`aline.data.read.read_split`: one typed pyarrow parse; what a failed parse means."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from aline.data.columns import ReadPlan
from aline.data.errors import DataError, bad_rows_error

# pyarrow's threaded parse: on 2 idle cores the whole load of 432k rows took 0.30 s against 0.47 s with one
# thread (benchmarks/bench_loader.py). On busy cores it was slower (1.3 s vs 1.0 s), but a user training
# here has the cores to themselves.
PARSE_THREADS = True


def _case_variants(word: str) -> list[str]:
    out = [""]
    for ch in word:
        out = [p + v for p in out for v in {ch.lower(), ch.upper()}]
    return out


# Cells that mean "missing", case-insensitive (design: an empty cell; users' tools also write these).
# pyarrow matches null markers exactly, so every case variant is listed. Any other text is an error.
MISSING_MARKERS = ("", *(v for w in ("NA", "NaN", "null") for v in _case_variants(w)))


def parse_csv(path: Path, header: list[str], plan: ReadPlan) -> pa.Table:
    wanted = plan.columns()
    # float32 is what the model sees; parsing straight to it halves every later pass over the data, and a
    # value too large for it (1e39) parses as inf, which validation then rejects like a written "inf".
    types = {c: pa.float32() for c in wanted}
    for c in plan.text_columns():
        types[c] = pa.string()  # ids are given back exactly as written: "007" stays "007"
    try:
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=PARSE_THREADS),
            convert_options=pacsv.ConvertOptions(
                include_columns=wanted,
                column_types=types,
                null_values=list(MISSING_MARKERS),
                strings_can_be_null=True,
            ),
        )
    except pa.ArrowException as err:
        raise diagnose_csv(path, header, plan, str(err)) from None


def diagnose_csv(path: Path, header: list[str], plan: ReadPlan, arrow_msg: str) -> DataError:
    """The fast typed parse failed; find out where, with line numbers (slow path, errors only)."""
    if "parse error" in arrow_msg or "Expected" in arrow_msg:
        with path.open("r", encoding="utf-8-sig", errors="replace", newline="") as fh:
            for lineno, fields in enumerate(csv.reader(fh), start=1):
                if fields and len(fields) != len(header):
                    return DataError(
                        f"{path}: line {lineno}: expected {len(header)} fields like the header, "
                        f"found {len(fields)}"
                    )
        return DataError(f"{path}: malformed CSV ({arrow_msg})")

    import pandas as pd  # only needed on this error path

    wanted = plan.columns()
    try:
        as_text = pacsv.read_csv(
            path,
            convert_options=pacsv.ConvertOptions(
                include_columns=wanted,
                column_types={c: pa.string() for c in wanted},
                null_values=list(MISSING_MARKERS),
                strings_can_be_null=True,
            ),
        )
    except pa.ArrowException as err:  # bytes that are not UTF-8, most likely: find the line
        with path.open("rb") as fh:
            for lineno, line in enumerate(fh, start=1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as bad:
                    return DataError(
                        f"{path}: line {lineno}: not UTF-8 text ({bad.reason} at byte {bad.start})"
                    )
        return DataError(f"{path}: cannot read it as a CSV of numbers ({arrow_msg}; {err})")
    for name in [c for c in header if c in wanted and c not in plan.text_columns()]:
        text = as_text.column(name).to_pandas()
        bad = (pd.to_numeric(text, errors="coerce").isna() & text.notna()).to_numpy(dtype=bool)
        problem = "text in a numeric column (missing values: an empty cell, NA, NaN or null)"
        rows = np.flatnonzero(bad)
        if len(rows):
            return bad_rows_error(path, name, problem, rows, lambda r, text=text: repr(text.iloc[r]))
    where = re.search(r"column #(\d+)", arrow_msg)
    column = header[int(where.group(1))] if where and int(where.group(1)) < len(header) else "?"
    return DataError(f"{path}: column {column!r}: cannot read it as numbers ({arrow_msg})")
