"""Parquet input for :func:`aline.data.read_split`, chosen by the ``.parquet`` extension.

The result is the pyarrow Table the CSV parse gives (ids as text, every other planned column float32,
null = missing), so validation, column mapping and error messages are shared. Messages quote 1-based
Parquet row numbers where the CSV path quotes file lines.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aline.data.columns import ReadPlan
from aline.data.csv_input import MISSING_MARKERS, PARSE_THREADS
from aline.data.errors import DataError, bad_rows_error, fmt_value
from aline.data.layout import Irregular

__all__ = ["iter_batches", "parquet_header", "read_parquet"]

# Rows per read batch: large enough to decode at full speed, small enough to keep the float64 batch before
# the cast modest (docs/results.md, "Loader and launcher constants").
BATCH_ROWS = 1 << 18
# Rows per batch when the hourly columns stream straight into the arrays (iter_batches). Two batches are
# alive at once, beside the arrays, so smaller batches lower the load's peak (docs/results.md).
STREAM_ROWS = 1 << 16


def parquet_header(path: Path) -> list[str]:
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    if not names:
        raise DataError(f"{path}: the Parquet file has no columns")
    return names


def read_parquet(path: Path, plan: ReadPlan, names: list[str] | None = None) -> pa.Table:
    """The planned columns as the table the CSV parse gives: ids as text (integer ids stay int64, which
    :func:`aline.data.validate.id_codes` reads as their decimal text), every other column float32 (null =
    missing).

    The file is read in batches of all planned columns (pyarrow decodes a batch's columns in parallel),
    each numeric column cast to float32 as it arrives: one pass over the file, and a float64 file never
    sits in memory whole; reading one column at a time is much slower."""
    try:
        reader = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    names = plan.columns() if names is None else names
    ids = set(plan.text_columns())
    kinds = {name: reader.schema_arrow.field(name).type for name in names}
    for name, kind in kinds.items():
        if name not in ids and not (_is_text(kind) or _is_number(kind)):
            raise DataError(f"{path}: column {name!r}: expected numbers, the Parquet column holds {kind}")
    # Ids and text cells are converted on the whole column, so that a bad cell's row number counts from
    # the top of the file rather than from the top of its batch.
    whole = {name for name, kind in kinds.items() if name in ids or _is_text(kind)}
    chunks: dict[str, list[pa.Array]] = {name: [] for name in names}
    try:
        for batch in reader.iter_batches(batch_size=BATCH_ROWS, columns=names, use_threads=PARSE_THREADS):
            for name, col in zip(names, batch.columns, strict=True):
                # Unsafe cast: a float64 beyond float32's range becomes inf, which validation rejects as
                # the CSV path does; NaN stored as a value is missing, like a null.
                chunks[name].append(col if name in whole else pc.cast(col, pa.float32(), safe=False))
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: {_unreadable(reader, names, err)}") from None
    out: dict[str, pa.ChunkedArray] = {}
    for name in names:
        kind = kinds[name] if name in whole else pa.float32()
        col = pa.chunked_array(chunks.pop(name), type=kind)
        if name in ids:
            col = ids_as_text(path, name, col)
        elif name in whole:
            col = pc.cast(text_as_numbers(path, name, col), pa.float32(), safe=False)
        out[name] = col
    return pa.table(out)


def iter_batches(path: Path, names: list[str]) -> Iterator[pa.RecordBatch]:
    """``names`` batch by batch as stored (no cast), for :func:`aline.data.layout.fill_groups`. A read
    error raises :class:`Irregular`: the general path then reads the file and words the message.

    The next batch is decoded on a second thread while the caller lays out this one (pyarrow's decoding
    and NumPy's copies both run without the GIL), and only then: at most two batches are alive at once."""
    ready: queue.Queue = queue.Queue()  # decoded batches (at most one waiting), then _END or the error
    wanted = threading.Semaphore(1)  # the consumer's go-ahead for decoding one more batch
    stop = threading.Event()

    def decode() -> None:
        try:
            batches = pq.ParquetFile(path).iter_batches(
                batch_size=STREAM_ROWS, columns=names, use_threads=PARSE_THREADS
            )
            while True:
                wanted.acquire()
                if stop.is_set():
                    return
                batch = next(batches, _END)
                ready.put(batch)
                if batch is _END:
                    return
        except (pa.ArrowException, OSError) as err:
            ready.put(Irregular(str(err)))
        except BaseException as err:  # anything else (MemoryError) must still reach the caller
            ready.put(err)

    worker = threading.Thread(target=decode, name="aline-parquet-read", daemon=True)
    worker.start()
    try:
        while True:
            item = ready.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            wanted.release()  # decode the next batch while this one is laid out
            yield item
            del item
            pa.default_memory_pool().release_unused()  # the batch just laid out (see read_split)
    finally:
        stop.set()
        wanted.release()  # a decoder waiting for the go-ahead sees the stop and ends
        worker.join()


_END = object()  # the decoder's last item


def _unreadable(reader: pq.ParquetFile, names: list[str], err: Exception) -> str:
    """Which column a failed batched read failed on: each is read again alone (only on this error path),
    so the message names the column as a one-column read would."""
    for name in names:
        try:
            reader.read(columns=[name], use_threads=False)
        except (pa.ArrowException, OSError) as col_err:
            return f"column {name!r}: cannot read it ({col_err})"
    return f"cannot read its data ({err})"


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _is_number(kind: pa.DataType) -> bool:
    return (
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_decimal(kind)
        or pa.types.is_null(kind)
    )


def ids_as_text(path: Path, name: str, col: pa.ChunkedArray) -> pa.ChunkedArray:
    """An id column as a CSV would hold it: text as written (empty = missing), or int64 for whole numbers
    (whole floats included), whose decimal text is the id."""
    kind = col.type
    if _is_text(kind):
        return pc.if_else(pc.equal(col, ""), pa.scalar(None, kind), col).cast(pa.string())
    if pa.types.is_floating(kind):
        values = col.to_numpy(zero_copy_only=False).astype(np.float64)  # [rows], NaN where null
        stored = pc.is_valid(col).to_numpy(zero_copy_only=False)  # [rows]; nulls: missing ids, said later
        # A finite whole number within int64 (NaN stored as a value, inf or 1e19 would cast to an invented
        # id, the same one for all of them).
        fits = np.isfinite(values) & (values == np.round(values)) & (np.abs(values) < 2.0**63)
        bad = stored & ~fits
        if bad.any():
            raise bad_rows_error(
                path, name, "numeric ids must be whole numbers within the 64-bit integer range",
                np.flatnonzero(bad), lambda r, v=values: _id_text(v[r]),
            )  # fmt: skip
        return col.cast(pa.int64(), safe=False)
    if not (pa.types.is_integer(kind) or pa.types.is_null(kind)):
        raise DataError(f"{path}: column {name!r}: ids must be text or whole numbers, found {kind}")
    try:
        return col.cast(pa.int64())
    except pa.ArrowInvalid:  # uint64 beyond int64: rare enough to go through text
        return col.cast(pa.string())


def _id_text(value: float) -> str:
    return "NaN" if np.isnan(value) else fmt_value(value)


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
