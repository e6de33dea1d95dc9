"""Parquet input for :func:`aline.data.read_split`, chosen by the ``.parquet`` extension.

The result is the pyarrow Table the CSV parse gives (ids as text, every other planned column float32,
null = missing), so validation, column mapping and error messages are shared. Messages quote 1-based
Parquet row numbers where the CSV path quotes file lines.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aline.data.columns import ReadPlan
from aline.data.csv_input import MISSING_MARKERS, PARSE_THREADS
from aline.data.errors import DataError, bad_rows_error, fmt_value

__all__ = ["parquet_header", "read_parquet"]


def parquet_header(path: Path) -> list[str]:
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    if not names:
        raise DataError(f"{path}: the Parquet file has no columns")
    return names


def read_parquet(path: Path, plan: ReadPlan) -> pa.Table:
    """The planned columns as the table the CSV parse gives: ids as text, every other column float32
    (null = missing). Read one column at a time so that a float64 file never sits in memory whole."""
    try:
        reader = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    out: dict[str, pa.ChunkedArray] = {}
    for name in plan.columns():
        try:
            col = reader.read(columns=[name], use_threads=PARSE_THREADS).column(0)
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"{path}: column {name!r}: cannot read it ({err})") from None
        kind = col.type
        if (pa.types.is_string(kind) or pa.types.is_large_string(kind)) and name not in plan.text_columns():
            col = text_as_numbers(path, name, col)
            kind = col.type
        if name in plan.text_columns():
            out[name] = ids_as_text(path, name, col)
            continue
        if not (
            pa.types.is_integer(kind)
            or pa.types.is_floating(kind)
            or pa.types.is_boolean(kind)
            or pa.types.is_decimal(kind)
            or pa.types.is_null(kind)
        ):
            raise DataError(f"{path}: column {name!r}: expected numbers, the Parquet column holds {kind}")
        # Unsafe cast: a float64 beyond float32's range becomes inf, which validation rejects as the CSV
        # path does; NaN stored as a value is missing, like a null.
        out[name] = pc.cast(col, pa.float32(), safe=False)
    return pa.table(out)


def ids_as_text(path: Path, name: str, col: pa.ChunkedArray) -> pa.ChunkedArray:
    """An id column as the text a CSV would hold: integers as written, whole floats without ".0"."""
    kind = col.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return pc.if_else(pc.equal(col, ""), pa.scalar(None, kind), col).cast(pa.string())
    if pa.types.is_floating(kind):
        values = col.to_numpy(zero_copy_only=False)
        bad = ~np.isnan(values) & (values != np.round(values))
        if bad.any():
            raise bad_rows_error(
                path, name, "numeric ids must be whole numbers", np.flatnonzero(bad),
                lambda r, v=values: fmt_value(v[r]),
            )  # fmt: skip
        col = col.cast(pa.int64(), safe=False)
    elif not (pa.types.is_integer(kind) or pa.types.is_null(kind)):
        raise DataError(f"{path}: column {name!r}: ids must be text or whole numbers, found {kind}")
    return col.cast(pa.string())


def text_as_numbers(path: Path, name: str, col: pa.ChunkedArray) -> pa.ChunkedArray:
    """A text column holding numbers (as a CSV would) becomes float64; other text is reported by row."""
    import pandas as pd  # only on this unusual path

    text = col.to_pandas()
    # The CSV path's missing markers (empty, NA, NaN, null in any case) are missing here too.
    text = text.where(~text.isin(MISSING_MARKERS), None)
    numbers = pd.to_numeric(text, errors="coerce")
    bad = (numbers.isna() & text.notna()).to_numpy(dtype=bool)
    if bad.any():
        raise bad_rows_error(
            path, name, "text in a numeric column", np.flatnonzero(bad), lambda r: repr(text.iloc[r])
        )
    return pa.chunked_array([pa.array(numbers.to_numpy(dtype=np.float64), from_pandas=True)])
