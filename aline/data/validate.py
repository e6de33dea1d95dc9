"""Validation of the parsed columns, on file-order arrays so that row indices are file rows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aline.contract import HOURS
from aline.data.columns import ReadPlan
from aline.data.errors import DataError, bad_rows_error, file_lines, fmt_value, row_word


def check_values(
    path: Path,
    name: str,
    values: np.ndarray,
    *,
    allow_missing: bool,
    lo: float | None = None,
    hi: float | None = None,
    allowed: tuple[float, ...] | None = None,
) -> None:
    nan = np.isnan(values)
    if not allow_missing and nan.any():
        raise bad_rows_error(
            path, name, "missing values (empty cells) are not allowed here", np.flatnonzero(nan)
        )
    huge = np.isinf(values)
    if huge.any():
        rows = np.flatnonzero(huge)
        raise bad_rows_error(
            path, name, "infinite or out-of-range values", rows, lambda r: fmt_value(values[r])
        )
    if allowed is not None:
        bad = ~np.isin(values, allowed) & ~nan
        what = "values must be one of " + ", ".join(fmt_value(a) for a in allowed)
    elif lo is not None or hi is not None:
        lo_ = -np.inf if lo is None else lo
        hi_ = np.inf if hi is None else hi
        bad = ((values < lo_) | (values > hi_)) & ~nan
        what = f"values must lie in [{fmt_value(lo_)}, {fmt_value(hi_)}]"
    else:
        return
    if bad.any():
        rows = np.flatnonzero(bad)
        raise bad_rows_error(path, name, what, rows, lambda r: fmt_value(values[r]))


def block_order(wid: np.ndarray, hour: np.ndarray) -> np.ndarray | None:
    """[N] order of whole windows when each window is 24 consecutive rows in hour order (say, a file sorted
    by subject), else None. Moving 24-row blocks is far cheaper than gathering every row of every column."""
    if len(wid) % HOURS:
        return None
    w = wid.reshape(-1, HOURS)  # [N, 24]
    if not ((hour.reshape(-1, HOURS) == np.arange(HOURS)).all() and (w == w[:, :1]).all()):
        return None
    blocks = np.argsort(w[:, 0], kind="stable")
    ids = w[blocks, 0]
    # A window split over two blocks is an error that the general path describes.
    return None if (ids[1:] == ids[:-1]).any() else blocks


def window_order(
    path: Path, plan: ReadPlan, wid: np.ndarray, hour: np.ndarray, id_text: Callable[[int], str]
) -> tuple[np.ndarray | None, np.ndarray | None, int]:
    """``(order, blocks, N)``: the row order that sorts by (window, hour), None when the file already is;
    ``blocks`` when that order only moves whole windows (see :func:`block_order`). Checks 24 distinct hours.
    ``wid`` holds integer window codes; ``id_text(code)`` is the id as written, for messages.
    """
    same_window = wid[1:] == wid[:-1]
    in_order = bool(np.all((wid[1:] > wid[:-1]) | (same_window & (hour[1:] > hour[:-1]))))
    if in_order:
        order = None
    else:
        blocks = block_order(wid, hour)
        if blocks is not None:
            order = (blocks[:, None] * HOURS + np.arange(HOURS)).ravel()  # [rows], for error messages
            return order, blocks, len(blocks)
        order = np.lexsort((hour, wid))
    w = wid if order is None else wid[order]
    h = hour if order is None else hour[order]
    starts = np.flatnonzero(np.r_[True, w[1:] != w[:-1]])
    counts = np.diff(np.r_[starts, len(w)])
    dup = np.flatnonzero((w[1:] == w[:-1]) & (h[1:] == h[:-1]))
    if (counts == HOURS).all() and not len(dup):
        # 24 rows, all hours in 0..23 (checked before) and no repeats: exactly the hours 0..23.
        return order, None, len(starts)

    def file_rows(sorted_rows: np.ndarray) -> np.ndarray:
        return sorted_rows if order is None else order[sorted_rows]

    bad_windows = np.flatnonzero(counts != HOURS)
    if len(dup):
        bad_windows = np.union1d(bad_windows, np.searchsorted(starts, dup, side="right") - 1)
    notes = []
    for k in bad_windows[:3]:
        span = np.arange(starts[k], starts[k] + counts[k])
        hours = h[span].astype(np.int64)
        seen = np.bincount(hours, minlength=HOURS)
        parts = [f"{counts[k]} rows"]
        if (seen == 0).any():
            parts.append("no row for hour " + ", ".join(map(str, np.flatnonzero(seen == 0))))
        if (seen > 1).any():
            parts.append("repeated hour " + ", ".join(map(str, np.flatnonzero(seen > 1))))
        # Point at the repeated rows when there are any, else at the window's rows.
        repeated = np.isin(hours, np.flatnonzero(seen > 1))
        lines = np.sort(file_lines(path, file_rows(span[repeated] if repeated.any() else span)))
        word = row_word(path)[0]
        shown = ", ".join(f"{word} {n}" for n in lines[:6]) + (", ..." if len(lines) > 6 else "")
        notes.append(f"window {id_text(int(w[starts[k]]))} ({'; '.join(parts)}: {shown})")
    more = f" ({len(bad_windows)} windows in all)" if len(bad_windows) > 3 else ""
    return_msg = (
        f"{path}: columns {plan.window_id!r}/{plan.hour!r}: every window needs exactly {HOURS} rows, one per "
        f"hour 0..{HOURS - 1}; bad: " + "; ".join(notes) + more
    )
    raise DataError(return_msg)


def id_codes(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Ids as text or int64 → (``[rows]`` int64 codes, ``[K]`` ids as written, as str), codes numbered in
    id order: by value when every id is a whole number (so 9 comes before 10), else as text."""
    runs = _runs(column) if not column.null_count else None
    if runs is not None:
        run_of_row, run_ids = runs  # [rows], [R]
        codes, names = id_codes(pa.chunked_array([run_ids]))  # [R] one code per run
        if len(names) == len(run_ids):
            # Every id in one run of rows (a file grouped by window, or by subject, in any order): the codes
            # come from the runs, with no hashing or copy of the whole column (faster, and less memory).
            return codes[run_of_row], names
    encoded = column.combine_chunks().dictionary_encode()
    codes = numeric_numpy(pa.chunked_array([encoded.indices])).astype(np.int64, copy=False)  # [rows]
    if pa.types.is_int64(encoded.dictionary.type):
        numeric = numeric_numpy(pa.chunked_array([encoded.dictionary]))  # [K]
        order = np.argsort(numeric, kind="stable")
        names = numeric.astype(str).astype(object)  # [K]
    else:
        names = np.asarray(encoded.dictionary.to_pylist(), dtype=object)  # [K]
        try:
            numeric = numeric_numpy(pa.chunked_array([pc.cast(encoded.dictionary, pa.int64())]))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            numeric = np.zeros(len(names), dtype=np.int64)
        # "007" and "7" are two windows with one value: the text breaks the tie.
        order = np.lexsort((names.astype(str), numeric))  # [K] dictionary entries in id order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[codes], names[order]


def _runs(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array] | None:
    """``([rows] int64 run number, [R] id of each run)`` for the runs of equal ids down the column, or None
    when there are as many runs as rows (no run to gain from)."""
    starts = []
    last = None  # the previous chunk's last id
    for chunk in column.chunks:
        if not len(chunk):
            continue
        new = np.empty(len(chunk), dtype=bool)  # [len] a run starts at this row
        new[0] = last is None or chunk[0].as_py() != last
        new[1:] = pc.not_equal(chunk[1:], chunk[:-1]).to_numpy(zero_copy_only=False)
        last = chunk[len(chunk) - 1].as_py()
        starts.append(new)
    if not starts:
        return None
    new = np.concatenate(starts) if len(starts) > 1 else starts[0]
    run_of_row = np.cumsum(new, dtype=np.int64) - 1
    if run_of_row[-1] + 1 == len(new):
        return None
    return run_of_row, column.filter(pa.array(new)).combine_chunks()


def numeric_numpy(column: pa.ChunkedArray) -> np.ndarray:
    """[rows] float32 (float64 for a float64 column; NaN where null) or integer values (of a column without
    nulls), read from the Arrow buffers. pyarrow's own conversion imports pandas, which costs more than a
    400k-row load (once per process)."""
    parts = [array_numpy(chunk) for chunk in column.chunks]
    if len(parts) == 1:
        return parts[0]
    if parts:
        return np.concatenate(parts)
    return np.empty(0, _numpy_type(column.type))


def array_numpy(chunk: pa.Array) -> np.ndarray:
    """One Arrow array as :func:`numeric_numpy` gives it: a view of its buffer unless it has nulls."""
    dtype = _numpy_type(chunk.type)
    end = chunk.offset + len(chunk)
    validity, data = chunk.buffers()[:2]
    values = np.frombuffer(data, dtype=dtype, count=end)[chunk.offset :]
    if chunk.null_count:
        # Only the bytes of this array's bits: a slice deep into a long array starts far into the buffer.
        first = chunk.offset // 8
        raw = np.frombuffer(validity, np.uint8, count=(end + 7) // 8 - first, offset=first)
        bits = np.unpackbits(raw, count=end - 8 * first, bitorder="little")[chunk.offset - 8 * first :]
        values = np.where(bits.view(bool), values, dtype.type(np.nan))  # unpackbits gives 0/1
    return values


def _numpy_type(kind: pa.DataType) -> np.dtype:
    if pa.types.is_signed_integer(kind):
        return np.dtype(f"int{kind.bit_width}")
    return np.dtype(np.float64 if pa.types.is_float64(kind) else np.float32)
