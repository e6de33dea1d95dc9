"""Turn the long hourly CSV (one row per window and hour) into validated ``[N, 24, ...]`` arrays and tensors.

Window and subject ids are text, kept exactly as written (``S123-2024-05-01``, ``007``); windows are
sorted by id, by value when every id is a whole number. A missing value is an empty cell or ``NA``, ``NaN``,
``null`` in any case; any other text in a numeric column is an error.

The CSV is parsed once by pyarrow with explicit column types, then everything else is whole-array NumPy:
one sort by (window, hour), one reshape. Any problem in the file becomes a single :class:`DataError` naming
the file, the column, the first offending CSV lines (header = line 1) and what is wrong with them.

Feature statistics for normalisation are fitted on the training split only (:class:`Normalizer`) and
saved with the run; :class:`WindowDataset` serves whole batches by one fancy index (``__getitems__``).
"""

from __future__ import annotations

import csv
import difflib
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from aline.config import SPLITS, ColumnsConfig, DataConfig
from aline.contract import HOURS

__all__ = [
    "MISSING_MARKERS",
    "DataError",
    "HOURS",
    "RawSplit",
    "feature_report",
    "load_splits",
    "read_split",
]

# How many offending CSV lines an error message quotes before summarising the rest as a count.
_SHOWN = 5
# pyarrow's threaded parse: on 2 idle cores the whole load of 432k rows took 0.30 s against 0.47 s with one
# thread (benchmarks/bench_loader.py). On busy cores it was slower (1.3 s vs 1.0 s), but a user training
# here has the cores to themselves.
_PARSE_THREADS = True


class DataError(ValueError):
    """Bad input data; ``str(err)`` is one message naming the file, the column and the first bad rows."""


@dataclass(frozen=True)
class RawSplit:
    """One split as un-normalised NumPy arrays; windows sorted by id, hours 0..23 along axis 1."""

    path: Path
    window_id: np.ndarray  # [N] object: ids as written (str), sorted (by value when all are whole numbers)
    features: np.ndarray  # [N, 24, F] float32, NaN where missing
    feature_names: tuple[str, ...]
    z: np.ndarray | None  # [N, 24, Z] float32
    sigma: np.ndarray | None  # [N, 24, Z] float32 posterior std
    post_mean: np.ndarray | None  # [N, 24, Z] float32 posterior mean
    y: np.ndarray | None  # [N] float32 in {0, 1}
    query_value: np.ndarray | None  # [N, 24] float32
    p_bayes: np.ndarray | None  # [N] float32
    p_true: np.ndarray | None  # [N] float32
    # Optional per-window or per-hour arrays go here as fields with a None default, read in read_split
    # like the ones above (a per-hour [N, 24] array through ``hourly``), and reach the model through
    # WindowDataset's ``optional`` table.
    subject_id: np.ndarray | None = None  # [N] object (str), as written
    # The closed loop (data.columns.answers): the answer to the asked feature if asked at each hour.
    answers: np.ndarray | None = None  # [N, 24] float32, NaN where it cannot be asked
    asked_feature: str | None = None  # the feature those answers fill

    def __len__(self) -> int:
        return int(self.window_id.shape[0])


# --- error messages -----------------------------------------------------------------------------------


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() == ".parquet"


def _row_word(path: Path) -> tuple[str, int]:
    """How messages point at data row 0: CSV line 2 (line 1 is the header), or Parquet row 1."""
    return ("row", 1) if _is_parquet(path) else ("line", 2)


def _csv_lines(path: Path, rows: np.ndarray) -> np.ndarray:
    return np.asarray(rows, dtype=np.int64) + _row_word(path)[1]


def _bad_rows_error(
    path: Path, column: str, problem: str, rows: np.ndarray, cell: Callable[[int], str] | None = None
) -> DataError:
    """``rows``: 0-based data rows in file order, quoted as CSV line numbers (Parquet: 1-based row
    numbers); ``cell(row)`` shows a value."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    word = _row_word(path)[0]
    if cell is None:
        quoted = ", ".join(f"{word} {n}" for n in _csv_lines(path, rows[:_SHOWN]))
    else:
        shown = rows[:_SHOWN]
        quoted = ", ".join(
            f"{word} {n} = {cell(int(r))}" for r, n in zip(shown, _csv_lines(path, shown), strict=True)
        )
    more = f" ({len(rows)} rows in all)" if len(rows) > _SHOWN else ""
    return DataError(f"{path}: column {column!r}: {problem}; first bad rows: {quoted}{more}")


def _fmt(value: float) -> str:
    value = float(value)
    if math.isnan(value):
        return "missing"
    # Values come from float32 columns: 7 significant digits show what the file said without float noise.
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.7g}"


# --- reading ------------------------------------------------------------------------------------------


def _read_header(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if _is_parquet(path):
        from aline.parquet_input import parquet_header  # imports this module: load it lazily

        return parquet_header(path)
    with path.open("rb") as fh:
        raw = fh.readline()
    try:
        first = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: line 1: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not first.strip():
        raise DataError(f"{path}: the file is empty (expected a header line with column names)")
    # Names are kept exactly as written (pyarrow matches them so): " hour" is not "hour", and the
    # missing-column message then suggests the near miss.
    return next(csv.reader([first.rstrip("\r\n")]))


@dataclass(frozen=True)
class _Plan:
    """Which columns to read, and of which role; derived from the header and the column mapping."""

    window_id: str
    hour: str
    features: list[str]
    subject_id: str | None = None
    latents: list[str] | None = None
    sigma: list[str] | None = None
    post_mean: list[str] | None = None
    label: str | None = None
    query_value: str | None = None
    p_bayes: str | None = None
    p_true: str | None = None
    answer: str | None = None  # the answer column of the closed loop (data.columns.answers)

    def text_columns(self) -> list[str]:
        """Columns read as text, exactly as written (ids)."""
        return [c for c in (self.window_id, self.subject_id) if c is not None]

    def columns(self) -> list[str]:
        out = [self.window_id, self.hour, *self.features]
        for group in (self.latents, self.sigma, self.post_mean):
            out += group or []
        singles = (self.label, self.query_value, self.p_bayes, self.p_true, self.subject_id, self.answer)
        out += [c for c in singles if c is not None]
        return out


# Optional roles: (role in ColumnsConfig.is_default_mapping, the config key a user sets, a description).
_OPTIONAL_ROLES = (
    ("subject_id", "data.columns.subject_id", "subject id"),
    ("latents", "data.columns.latent_prefix/latents", "latent"),
    ("sigma", "data.columns.sigma_prefix", "posterior std"),
    ("post_mean", "data.columns.post_mean_prefix", "posterior mean"),
    ("query_value", "data.columns.query_value", "query value"),
    ("p_bayes", "data.columns.p_bayes", "p_bayes"),
    ("p_true", "data.columns.p_true", "p_true"),
    ("answers", "data.columns.answers", "answer"),
)


def _role_columns(columns: ColumnsConfig, role: str) -> list[str] | None:
    if role == "latents":
        return columns.latent_columns()
    if role == "sigma":
        return columns.sigma_columns()
    if role == "post_mean":
        return columns.post_mean_columns()
    if role == "answers":
        return list((columns.answers or {}).values()) or None
    name = getattr(columns, role)
    return None if name is None else [name]


def _missing_text(names: list[str], header: list[str]) -> str:
    hints = []
    for name in names:
        close = difflib.get_close_matches(name, header, n=1, cutoff=0.75)
        hints.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
    return ", ".join(hints)


def _header_text(header: list[str]) -> str:
    more = " ..." if len(header) > 40 else ""
    return f"the header has {len(header)} columns: " + ", ".join(header[:40]) + more


def _plan(path: Path, header: list[str], columns: ColumnsConfig, require_targets: bool) -> _Plan:
    """Required: window id, hour, features (and the label when training). Optional roles are read when the
    CSV has them; a column name the user chose that is not in the header is an error (a typo must not
    silently drop a role), while the built-in simulator names may be absent. Prediction input
    (``require_targets=False``) reads only the id, hour and feature columns and ignores everything else."""
    present = set(header)
    wanted = [columns.window_id, columns.hour, *columns.features]
    if require_targets:
        wanted.append(columns.label)
    problems = []
    missing = [c for c in wanted if c not in present]
    if missing:
        problems.append(f"missing column(s) {_missing_text(missing, header)}")
    roles: dict[str, list[str] | None] = {}
    if require_targets:
        for role, key, what in _OPTIONAL_ROLES:
            names = _role_columns(columns, role)
            have = [c for c in (names or []) if c in present]
            if not names or (not have and columns.is_default_mapping(role)):
                roles[role] = None
            elif not have:
                problems.append(
                    f"{key} maps the {what} column(s) {_missing_text(names, header)}, which the file lacks "
                    f"(set {key.split('/')[0]}=null to leave them out)"
                )
            elif len(have) < len(names):
                # A group of per-latent columns is all-or-nothing: half of them is a broken file.
                lacking = ", ".join(repr(c) for c in names if c not in present)
                problems.append(f"{what} columns incomplete: has {have[0]!r} but is missing {lacking}")
            else:
                roles[role] = names
    if problems:
        raise DataError(f"{path}: " + "; ".join(problems) + "; " + _header_text(header))

    def single(role: str) -> str | None:
        names = roles.get(role)
        return names[0] if names else None

    plan = _Plan(
        window_id=columns.window_id,
        hour=columns.hour,
        features=list(columns.features),
        subject_id=single("subject_id"),
        latents=roles.get("latents"),
        sigma=roles.get("sigma"),
        post_mean=roles.get("post_mean"),
        label=columns.label if require_targets else None,
        query_value=single("query_value"),
        p_bayes=single("p_bayes"),
        p_true=single("p_true"),
        answer=single("answers"),
    )
    used = plan.columns()
    twice = sorted({c for c in used if header.count(c) > 1})
    if twice:
        raise DataError(
            f"{path}: column(s) {', '.join(map(repr, twice))} appear more than once in the header"
        )
    clash = sorted({c for c in used if used.count(c) > 1})
    if clash:
        raise DataError(f"{path}: the column mapping uses {', '.join(map(repr, clash))} for two roles")
    return plan


def _case_variants(word: str) -> list[str]:
    out = [""]
    for ch in word:
        out = [p + v for p in out for v in {ch.lower(), ch.upper()}]
    return out


# Cells that mean "missing", case-insensitive (design: an empty cell; users' tools also write these).
# pyarrow matches null markers exactly, so every case variant is listed. Any other text is an error.
MISSING_MARKERS = ("", *(v for w in ("NA", "NaN", "null") for v in _case_variants(w)))


def _parse(path: Path, header: list[str], plan: _Plan) -> pa.Table:
    wanted = plan.columns()
    # float32 is what the model sees; parsing straight to it halves every later pass over the data, and a
    # value too large for it (1e39) parses as inf, which validation then rejects like a written "inf".
    types = {c: pa.float32() for c in wanted}
    for c in plan.text_columns():
        types[c] = pa.string()  # ids are given back exactly as written: "007" stays "007"
    try:
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=_PARSE_THREADS),
            convert_options=pacsv.ConvertOptions(
                include_columns=wanted,
                column_types=types,
                null_values=list(MISSING_MARKERS),
                strings_can_be_null=True,
            ),
        )
    except pa.ArrowException as err:
        raise _diagnose(path, header, plan, str(err)) from None


def _diagnose(path: Path, header: list[str], plan: _Plan, arrow_msg: str) -> DataError:
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
            return _bad_rows_error(path, name, problem, rows, lambda r, text=text: repr(text.iloc[r]))
    where = re.search(r"column #(\d+)", arrow_msg)
    column = header[int(where.group(1))] if where and int(where.group(1)) < len(header) else "?"
    return DataError(f"{path}: column {column!r}: cannot read it as numbers ({arrow_msg})")


# --- validation (on file-order arrays, so row indices are file rows) -----------------------------------


def _check_values(
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
        raise _bad_rows_error(
            path, name, "missing values (empty cells) are not allowed here", np.flatnonzero(nan)
        )
    huge = np.isinf(values)
    if huge.any():
        rows = np.flatnonzero(huge)
        raise _bad_rows_error(path, name, "infinite or out-of-range values", rows, lambda r: _fmt(values[r]))
    if allowed is not None:
        bad = ~np.isin(values, allowed) & ~nan
        what = "values must be one of " + ", ".join(_fmt(a) for a in allowed)
    elif lo is not None or hi is not None:
        lo_ = -np.inf if lo is None else lo
        hi_ = np.inf if hi is None else hi
        bad = ((values < lo_) | (values > hi_)) & ~nan
        what = f"values must lie in [{_fmt(lo_)}, {_fmt(hi_)}]"
    else:
        return
    if bad.any():
        rows = np.flatnonzero(bad)
        raise _bad_rows_error(path, name, what, rows, lambda r: _fmt(values[r]))


def _block_order(wid: np.ndarray, hour: np.ndarray) -> np.ndarray | None:
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


def _window_order(
    path: Path, plan: _Plan, wid: np.ndarray, hour: np.ndarray, id_text: Callable[[int], str]
) -> tuple[np.ndarray | None, np.ndarray | None, int]:
    """``(order, blocks, N)``: the row order that sorts by (window, hour), None when the file already is;
    ``blocks`` when that order only moves whole windows (see :func:`_block_order`). Checks 24 distinct hours.
    ``wid`` holds integer window codes; ``id_text(code)`` is the id as written, for messages.
    """
    same_window = wid[1:] == wid[:-1]
    in_order = bool(np.all((wid[1:] > wid[:-1]) | (same_window & (hour[1:] > hour[:-1]))))
    if in_order:
        order = None
    else:
        blocks = _block_order(wid, hour)
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
        lines = np.sort(_csv_lines(path, file_rows(span[repeated] if repeated.any() else span)))
        word = _row_word(path)[0]
        shown = ", ".join(f"{word} {n}" for n in lines[:6]) + (", ..." if len(lines) > 6 else "")
        notes.append(f"window {id_text(int(w[starts[k]]))} ({'; '.join(parts)}: {shown})")
    more = f" ({len(bad_windows)} windows in all)" if len(bad_windows) > 3 else ""
    return_msg = (
        f"{path}: columns {plan.window_id!r}/{plan.hour!r}: every window needs exactly {HOURS} rows, one per "
        f"hour 0..{HOURS - 1}; bad: " + "; ".join(notes) + more
    )
    raise DataError(return_msg)


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Text ids → (``[rows]`` int64 codes, ``[K]`` ids as written), codes numbered in id order: by value
    when every id is a whole number (so 9 comes before 10), else as text."""
    encoded = column.combine_chunks().dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    names = np.asarray(encoded.dictionary.to_pylist(), dtype=object)  # [K]
    try:
        numeric = pc.cast(encoded.dictionary, pa.int64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        numeric = np.zeros(len(names), dtype=np.int64)
    # "007" and "7" are two windows with one value: the text breaks the tie.
    order = np.lexsort((names.astype(str), numeric))  # [K] dictionary entries in id order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[codes], names[order]


def _numeric_numpy(column: pa.ChunkedArray) -> np.ndarray:
    """[rows] float32 (NaN where null) or int64 values, read from the Arrow buffers. pyarrow's own
    null-filling conversion imports pandas, which costs more than a 400k-row load (once per process)."""
    dtype = np.dtype(np.int64) if pa.types.is_int64(column.type) else np.dtype(np.float32)
    parts = []
    for chunk in column.chunks:
        end = chunk.offset + len(chunk)
        validity, data = chunk.buffers()[:2]
        values = np.frombuffer(data, dtype=dtype, count=end)[chunk.offset :]
        if chunk.null_count:
            bits = np.unpackbits(np.frombuffer(validity, np.uint8), count=end, bitorder="little")
            values = np.where(bits[chunk.offset :].astype(bool), values, dtype.type(np.nan))
        parts.append(values)
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.empty(0, dtype)


def read_split(path: str | Path, columns: ColumnsConfig, *, require_targets: bool = True) -> RawSplit:
    """Read and validate one long CSV, or a Parquet file when the name ends in ``.parquet``.

    ``require_targets=True`` (training, evaluation) also needs the label and reads the optional roles the
    file has; ``require_targets=False`` (prediction input) reads only the window id, hour and feature
    columns and ignores every other column."""
    path = Path(path)
    header = _read_header(path)
    plan = _plan(path, header, columns, require_targets)
    if _is_parquet(path):
        from aline.parquet_input import read_parquet

        table = read_parquet(path, plan)
    else:
        table = _parse(path, header, plan)
    n_rows = table.num_rows
    if n_rows == 0:
        raise DataError(f"{path}: no data rows below the header")

    # Each column is let go once it is in the arrays: the parsed table and the arrays never both sit in
    # memory whole (peak memory at 10x data, benchmarks/bench_scale.py).
    parsed = {name: table.column(name) for name in table.column_names}
    del table

    def col(name: str) -> np.ndarray:
        return _numeric_numpy(parsed.pop(name))  # [rows] float32, NaN for empty cells

    id_col = parsed.pop(plan.window_id)
    if id_col.null_count:
        rows = np.flatnonzero(id_col.is_null().to_numpy(zero_copy_only=False))
        raise _bad_rows_error(path, plan.window_id, "missing window id", rows)
    # Any text is an id; windows are ordered by id (numerically when all ids are whole numbers).
    wid, id_names = _codes(id_col)  # [rows] int64, [N] object (str)
    hour = col(plan.hour)  # [rows]
    _check_values(path, plan.hour, hour, allow_missing=False, lo=0, hi=HOURS - 1)
    whole = hour == np.round(hour)
    if not whole.all():
        rows = np.flatnonzero(~whole)
        raise _bad_rows_error(path, plan.hour, "hours must be whole numbers", rows, lambda r: _fmt(hour[r]))

    order, blocks, n = _window_order(path, plan, wid, hour, lambda c: repr(id_names[c]))

    def arrange(v: np.ndarray) -> np.ndarray:
        """[rows] in file order → [N, 24] sorted by window, then hour."""
        if blocks is not None:
            return v.reshape(n, HOURS)[blocks]
        return (v if order is None else v[order]).reshape(n, HOURS)

    wid_sorted = id_names[arrange(wid)[:, 0]]  # [N] ids as written

    def blank(names: list[str] | str | None) -> bool:
        # An optional column left entirely empty is absent.
        if names is None:
            return True
        names = [names] if isinstance(names, str) else names
        return all(parsed[c].null_count == n_rows for c in names)

    def hourly(names: list[str], allow_missing: bool, lo: float | None = None) -> np.ndarray:
        out = np.empty((n, HOURS, len(names)), dtype=np.float32)  # [N, 24, k]
        for j, name in enumerate(names):
            v = col(name)
            _check_values(path, name, v, allow_missing=allow_missing, lo=lo)
            out[:, :, j] = arrange(v)
        return out

    def not_constant(name: str, grid: np.ndarray) -> None:
        differs = np.flatnonzero((grid != grid[:, :1]).any(axis=1))
        if len(differs):
            rows = (np.arange(n * HOURS) if order is None else order).reshape(n, HOURS)[differs].ravel()
            wids = ", ".join(repr(wid_sorted[i]) for i in differs[:3])
            raise _bad_rows_error(
                path,
                name,
                f"must be the same on all {HOURS} rows of a window; differs in window {wids}",
                rows,
            )

    def per_window(name: str, **limits: object) -> np.ndarray:
        v = col(name)
        _check_values(path, name, v, allow_missing=False, **limits)  # type: ignore[arg-type]
        grid = arrange(v)  # [N, 24]
        not_constant(name, grid)
        return grid[:, 0].astype(np.float32)

    def subjects(name: str | None) -> np.ndarray | None:
        if name is None or blank(name):
            return None
        column = parsed.pop(name)
        if column.null_count:
            rows = np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))
            raise _bad_rows_error(path, name, "missing subject id", rows)
        codes, names = _codes(column)
        grid = arrange(codes)  # [N, 24]
        not_constant(name, grid)
        return names[grid[:, 0]]

    features = hourly(plan.features, allow_missing=True)
    z = None if plan.latents is None else hourly(plan.latents, allow_missing=False)
    sigma = None if blank(plan.sigma) else hourly(plan.sigma, allow_missing=False, lo=0.0)
    post_mean = None if blank(plan.post_mean) else hourly(plan.post_mean, allow_missing=False)
    y = None if plan.label is None else per_window(plan.label, allowed=(0.0, 1.0))
    qv = plan.query_value
    query_value = None if blank(qv) else hourly([qv], allow_missing=False).reshape(n, HOURS)
    p_bayes = None if blank(plan.p_bayes) else per_window(plan.p_bayes, lo=0.0, hi=1.0)
    p_true = None if blank(plan.p_true) else per_window(plan.p_true, lo=0.0, hi=1.0)
    answers = None if blank(plan.answer) else hourly([plan.answer], allow_missing=True).reshape(n, HOURS)
    return RawSplit(
        path=path,
        window_id=wid_sorted,
        features=features,
        feature_names=tuple(plan.features),
        z=z,
        sigma=sigma,
        post_mean=post_mean,
        y=y,
        query_value=query_value,
        p_bayes=p_bayes,
        p_true=p_true,
        subject_id=subjects(plan.subject_id),
        answers=answers,
        asked_feature=None if answers is None else columns.asked_feature,
    )


_OPTIONAL = ("z", "sigma", "post_mean", "query_value", "p_bayes", "p_true", "subject_id", "answers")
_OPTIONAL_NAMES = {"z": "latents", "sigma": "posterior std", "post_mean": "posterior mean"}
# How many shared ids a split-overlap message quotes.
_SHOWN_IDS = 5


def load_splits(data: DataConfig, splits: Iterable[str] = SPLITS) -> dict[str, RawSplit]:
    """Read and validate the named splits of ``data.dir`` (each a ``.parquet`` or a ``.csv``) with targets,
    and check them together.

    Every split is read even when an earlier one is bad, and every problem found is raised as one
    :class:`DataError` (one paragraph per problem): per file, its first problem; across files, that they
    carry the same optional columns, that no window id (nor subject id, where the files have one) is in
    two splits, and that no feature is empty in the whole train split.
    """
    splits = list(splits)
    paths = {s: data.split_path(s) for s in splits}
    both = [p for p in paths.values() if _is_parquet(p) and p.with_suffix(".csv").is_file()]
    if both:
        # Which of the two is current cannot be told from the files; refuse rather than guess.
        raise DataError(
            f"data folder {data.dir}: both {both[0].with_suffix('.csv').name} and {both[0].name} exist; "
            "keep one format per split (remove or move the other file)"
        )
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise DataError(f"data folder {data.dir}: missing file(s) {', '.join(missing)}")
    out: dict[str, RawSplit] = {}
    problems: list[str] = []
    for s, p in paths.items():
        try:
            out[s] = read_split(p, data.columns, require_targets=True)
        except DataError as err:
            problems.append(str(err))
    if len(out) == len(splits):
        problems += _cross_split_problems(out)
    if "train" in out:
        problems += feature_report(out["train"])[0]
    if problems:
        raise DataError("\n".join(problems) if len(problems) == 1 else _numbered(problems))
    return out


def _numbered(problems: list[str]) -> str:
    return f"{len(problems)} data problems:\n" + "\n".join(f"  {i}. {p}" for i, p in enumerate(problems, 1))


def _cross_split_problems(out: dict[str, RawSplit]) -> list[str]:
    problems = []
    names = list(out)
    first = names[0]
    have = {s: {k for k in _OPTIONAL if getattr(raw, k) is not None} for s, raw in out.items()}
    for s in names[1:]:
        if have[s] != have[first]:
            diff = ", ".join(_OPTIONAL_NAMES.get(k, k) for k in sorted(have[s] ^ have[first]))
            problems.append(
                f"{out[s].path}: carries a different set of optional columns than {out[first].path} "
                f"(differs in: {diff}); all splits must have the same columns"
            )
    for attr, what in (("window_id", "window id"), ("subject_id", "subject id")):
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                ids_a, ids_b = getattr(out[a], attr), getattr(out[b], attr)
                if ids_a is None or ids_b is None:
                    continue
                shared = np.intersect1d(ids_a.astype(str), ids_b.astype(str))
                if len(shared):
                    shown = ", ".join(repr(str(v)) for v in shared[:_SHOWN_IDS])
                    more = f" ({len(shared)} in all)" if len(shared) > _SHOWN_IDS else ""
                    problems.append(
                        f"{out[a].path} and {out[b].path}: the splits share {what}(s) {shown}{more}; "
                        f"a {what} may be in one split only (the {b} figures would be measured on "
                        "data the model saw)"
                    )
    return problems


def feature_report(train: RawSplit) -> tuple[list[str], list[str]]:
    """``(errors, warnings)`` about the train split's features: a feature with no value at all is an error
    (the model could not learn what it means); a constant one a warning (it carries nothing)."""
    flat = train.features.reshape(-1, train.features.shape[-1])  # [N*24, F]
    seen = ~np.isnan(flat)
    errors, warnings = [], []
    for j, name in enumerate(train.feature_names):
        values = flat[seen[:, j], j]
        if not len(values):
            errors.append(
                f"{train.path}: feature column {name!r} has no value in the whole train split; drop it "
                "from data.columns.features or fill it"
            )
        elif values.min() == values.max():
            warnings.append(
                f"{train.path}: feature column {name!r} is constant ({_fmt(values[0])}) in the train "
                "split; it carries no information (its missing-mask may still)"
            )
    return errors, warnings
