"""Turn the long hourly CSV (one row per window and hour) into validated ``[N, 24, ...]`` arrays and tensors.

The CSV is parsed once by pyarrow with explicit column types, then everything else is whole-array NumPy:
one sort by (window, hour), one reshape. Any problem in the file becomes a single :class:`DataError` naming
the file, the column, the first offending CSV lines (header = line 1) and what is wrong with them.

Feature statistics for normalisation are fitted on the training split only (:class:`Normalizer`) and
saved with the run; :class:`WindowDataset` serves whole batches by one fancy index (``__getitems__``).
"""

from __future__ import annotations

import csv
import difflib
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import torch
from torch import Tensor

from aline.config import SPLITS, ColumnsConfig, DataConfig
from aline.contract import HOURS, write_json_atomic

__all__ = [
    "DataError",
    "HOURS",
    "Normalizer",
    "RawSplit",
    "WindowDataset",
    "keep_batch",
    "load_splits",
    "read_split",
]

# How many offending CSV lines an error message quotes before summarising the rest as a count.
_SHOWN = 5
# pyarrow's threaded parse: on 2 idle cores the whole load of 432k rows took 0.30 s against 0.47 s with one
# thread (benchmarks/bench_loader.py). On busy cores it was slower (1.3 s vs 1.0 s), but a user training
# here has the cores to themselves.
_PARSE_THREADS = True
_NORMALIZER_KIND = "aline.normalizer"
_NORMALIZER_VERSION = 1


class DataError(ValueError):
    """Bad input data; ``str(err)`` is one message naming the file, the column and the first bad rows."""


@dataclass(frozen=True)
class RawSplit:
    """One split as un-normalised NumPy arrays; windows sorted by id, hours 0..23 along axis 1."""

    path: Path
    window_id: np.ndarray  # [N] int64
    features: np.ndarray  # [N, 24, F] float32, NaN where missing
    feature_names: tuple[str, ...]
    z: np.ndarray | None  # [N, 24, Z] float32
    sigma: np.ndarray | None  # [N, 24, Z] float32 posterior std
    post_mean: np.ndarray | None  # [N, 24, Z] float32 posterior mean
    y: np.ndarray | None  # [N] float32 in {0, 1}
    query_value: np.ndarray | None  # [N, 24] float32
    p_bayes: np.ndarray | None  # [N] float32
    p_true: np.ndarray | None  # [N] float32
    # The closed loop (data.columns.answers): the answer to the asked feature if asked at each hour.
    answers: np.ndarray | None = None  # [N, 24] float32, NaN where it cannot be asked
    asked_feature: str | None = None  # the feature those answers fill

    def __len__(self) -> int:
        return int(self.window_id.shape[0])


# --- error messages -----------------------------------------------------------------------------------


def _csv_lines(rows: np.ndarray) -> np.ndarray:
    # Data row 0 sits on line 2 of the file: line 1 is the header.
    return np.asarray(rows, dtype=np.int64) + 2


def _bad_rows_error(
    path: Path, column: str, problem: str, rows: np.ndarray, cell: Callable[[int], str] | None = None
) -> DataError:
    """``rows``: 0-based data rows in file order, quoted as CSV line numbers; ``cell(row)`` shows a value."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    if cell is None:
        quoted = ", ".join(f"line {n}" for n in _csv_lines(rows[:_SHOWN]))
    else:
        shown = rows[:_SHOWN]
        quoted = ", ".join(
            f"line {n} = {cell(int(r))}" for r, n in zip(shown, _csv_lines(shown), strict=True)
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
    latents: list[str] | None
    sigma: list[str] | None
    post_mean: list[str] | None
    label: str | None
    query_value: str | None
    p_bayes: str | None
    p_true: str | None
    answer: str | None = None

    def columns(self) -> list[str]:
        out = [self.window_id, self.hour, *self.features]
        for group in (self.latents, self.sigma, self.post_mean):
            out += group or []
        singles = (self.label, self.query_value, self.p_bayes, self.p_true, self.answer)
        out += [c for c in singles if c is not None]
        return out


def _plan(path: Path, header: list[str], columns: ColumnsConfig, require_targets: bool) -> _Plan:
    present = set(header)
    wanted = [columns.window_id, columns.hour, *columns.features]
    if require_targets:
        wanted += [*columns.latent_columns(), columns.label]
    dup_config = sorted({c for c in wanted if wanted.count(c) > 1})
    if dup_config:
        raise DataError(f"{path}: the column mapping uses {', '.join(map(repr, dup_config))} for two roles")
    missing = [c for c in wanted if c not in present]
    if missing:
        hints = []
        for name in missing:
            close = difflib.get_close_matches(name, header, n=1, cutoff=0.75)
            hints.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
        raise DataError(
            f"{path}: missing column(s) {', '.join(hints)}; the header has {len(header)} columns: "
            + ", ".join(header[:40])
            + (" ..." if len(header) > 40 else "")
        )

    def group(names: list[str] | None, role: str) -> list[str] | None:
        # A group of per-latent columns is all-or-nothing: half of them is a broken file, not an absent one.
        if names is None:
            return None
        have = [c for c in names if c in present]
        if not have:
            return None
        if len(have) < len(names):
            lacking = ", ".join(repr(c) for c in names if c not in present)
            raise DataError(f"{path}: {role} columns incomplete: has {have[0]!r} but is missing {lacking}")
        return names

    def single(name: str | None) -> str | None:
        return name if name is not None and name in present else None

    plan = _Plan(
        window_id=columns.window_id,
        hour=columns.hour,
        features=list(columns.features),
        latents=group(columns.latent_columns(), "latent"),
        sigma=group(columns.sigma_columns(), "posterior std"),
        post_mean=group(columns.post_mean_columns(), "posterior mean"),
        label=single(columns.label),
        query_value=single(columns.query_value),
        p_bayes=single(columns.p_bayes),
        p_true=single(columns.p_true),
        answer=single(next(iter(columns.answers.values()), None)),
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


def _parse(path: Path, header: list[str], plan: _Plan) -> pa.Table:
    wanted = plan.columns()
    # float32 is what the model sees; parsing straight to it halves every later pass over the data, and a
    # value too large for it (1e39) parses as inf, which validation then rejects like a written "inf".
    types = {c: pa.float32() for c in wanted}
    types[plan.window_id] = pa.int64()
    try:
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=_PARSE_THREADS),
            # Only an empty cell is missing (design.md); "NA" or "n/a" is text and gets reported as such.
            convert_options=pacsv.ConvertOptions(
                include_columns=wanted, column_types=types, null_values=[""]
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
                null_values=[""],
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
    for name in [c for c in header if c in wanted]:
        text = as_text.column(name).to_pandas()
        if name == plan.window_id:
            filled = text.fillna("0")
            bad = ~filled.str.fullmatch(r"-?[0-9]+").to_numpy(dtype=bool)
            problem = "window ids must be whole numbers"
        else:
            bad = (pd.to_numeric(text, errors="coerce").isna() & text.notna()).to_numpy(dtype=bool)
            problem = "text in a numeric column"
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
    path: Path, plan: _Plan, wid: np.ndarray, hour: np.ndarray
) -> tuple[np.ndarray | None, np.ndarray | None, int]:
    """``(order, blocks, N)``: the row order that sorts by (window, hour), None when the file already is;
    ``blocks`` when that order only moves whole windows (see :func:`_block_order`). Checks 24 distinct hours.
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
        lines = np.sort(_csv_lines(file_rows(span[repeated] if repeated.any() else span)))
        shown = ", ".join(f"line {n}" for n in lines[:6]) + (", ..." if len(lines) > 6 else "")
        notes.append(f"window {w[starts[k]]} ({'; '.join(parts)}: {shown})")
    more = f" ({len(bad_windows)} windows in all)" if len(bad_windows) > 3 else ""
    return_msg = (
        f"{path}: columns {plan.window_id!r}/{plan.hour!r}: every window needs exactly {HOURS} rows, one per "
        f"hour 0..{HOURS - 1}; bad: " + "; ".join(notes) + more
    )
    raise DataError(return_msg)


def read_split(path: str | Path, columns: ColumnsConfig, *, require_targets: bool = True) -> RawSplit:
    """Read and validate one long CSV; ``require_targets=False`` (prediction input) needs only
    window id, hour and the features, and reads latents, label and extras when they are present."""
    path = Path(path)
    header = _read_header(path)
    plan = _plan(path, header, columns, require_targets)
    table = _parse(path, header, plan)
    n_rows = table.num_rows
    if n_rows == 0:
        raise DataError(f"{path}: no data rows below the header")

    def col(name: str) -> np.ndarray:
        return table.column(name).to_numpy()  # [rows] float32, NaN for empty cells

    id_col = table.column(plan.window_id)
    if id_col.null_count:
        rows = np.flatnonzero(id_col.is_null().to_numpy(zero_copy_only=False))
        raise _bad_rows_error(path, plan.window_id, "missing window id", rows)
    wid = id_col.to_numpy().astype(np.int64, copy=False)  # [rows]
    hour = col(plan.hour)  # [rows]
    _check_values(path, plan.hour, hour, allow_missing=False, lo=0, hi=HOURS - 1)
    whole = hour == np.round(hour)
    if not whole.all():
        rows = np.flatnonzero(~whole)
        raise _bad_rows_error(path, plan.hour, "hours must be whole numbers", rows, lambda r: _fmt(hour[r]))

    order, blocks, n = _window_order(path, plan, wid, hour)

    def arrange(v: np.ndarray) -> np.ndarray:
        """[rows] in file order → [N, 24] sorted by window, then hour."""
        if blocks is not None:
            return v.reshape(n, HOURS)[blocks]
        return (v if order is None else v[order]).reshape(n, HOURS)

    wid_sorted = np.ascontiguousarray(arrange(wid)[:, 0])  # [N]

    def blank(names: list[str] | str | None, optional: bool) -> bool:
        # An optional column left entirely empty (say, a label column in a prediction input) is absent.
        if names is None or not optional:
            return names is None
        names = [names] if isinstance(names, str) else names
        return all(table.column(c).null_count == n_rows for c in names)

    def hourly(names: list[str], allow_missing: bool, lo: float | None = None) -> np.ndarray:
        out = np.empty((n, HOURS, len(names)), dtype=np.float32)  # [N, 24, k]
        for j, name in enumerate(names):
            v = col(name)
            _check_values(path, name, v, allow_missing=allow_missing, lo=lo)
            out[:, :, j] = arrange(v)
        return out

    def per_window(name: str, **limits: object) -> np.ndarray:
        v = col(name)
        _check_values(path, name, v, allow_missing=False, **limits)  # type: ignore[arg-type]
        grid = arrange(v)  # [N, 24]
        differs = np.flatnonzero((grid != grid[:, :1]).any(axis=1))
        if len(differs):
            rows = (np.arange(n * HOURS) if order is None else order).reshape(n, HOURS)[differs].ravel()
            wids = ", ".join(str(wid_sorted[i]) for i in differs[:3])
            raise _bad_rows_error(
                path,
                name,
                f"must be the same on all {HOURS} rows of a window; differs in window {wids}",
                rows,
            )
        return grid[:, 0].astype(np.float32)

    opt = not require_targets
    features = hourly(plan.features, allow_missing=True)
    z = None if blank(plan.latents, opt) else hourly(plan.latents, allow_missing=False)
    sigma = None if blank(plan.sigma, True) else hourly(plan.sigma, allow_missing=False, lo=0.0)
    post_mean = None if blank(plan.post_mean, True) else hourly(plan.post_mean, allow_missing=False)
    y = None if blank(plan.label, opt) else per_window(plan.label, allowed=(0.0, 1.0))
    qv = plan.query_value
    query_value = None if blank(qv, True) else hourly([qv], allow_missing=False).reshape(n, HOURS)
    p_bayes = None if blank(plan.p_bayes, True) else per_window(plan.p_bayes, lo=0.0, hi=1.0)
    p_true = None if blank(plan.p_true, True) else per_window(plan.p_true, lo=0.0, hi=1.0)
    answers = (
        None if blank(plan.answer, True) else hourly([plan.answer], allow_missing=True).reshape(n, HOURS)
    )
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
        answers=answers,
        asked_feature=None if answers is None else columns.asked_feature,
    )


_OPTIONAL = ("sigma", "post_mean", "query_value", "p_bayes", "p_true", "answers")


def load_splits(data: DataConfig, splits: Iterable[str] = SPLITS) -> dict[str, RawSplit]:
    """Read the named splits of ``data.dir`` with targets; all files must exist and agree on which
    optional columns (posterior std/mean, query value, p_bayes, p_true) they carry."""
    splits = list(splits)
    paths = {s: data.split_path(s) for s in splits}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise DataError(f"data folder {data.dir}: missing file(s) {', '.join(missing)}")
    out = {s: read_split(p, data.columns, require_targets=True) for s, p in paths.items()}
    if out:
        first = splits[0]
        have = {s: {k for k in _OPTIONAL if getattr(raw, k) is not None} for s, raw in out.items()}
        for s in splits[1:]:
            if have[s] != have[first]:
                diff = sorted(have[s] ^ have[first])
                raise DataError(
                    f"{paths[s]}: carries a different set of optional columns than {paths[first]} "
                    f"(differs in: {', '.join(diff)}); all splits must have the same columns"
                )
    return out


# --- normalisation ------------------------------------------------------------------------------------


@dataclass
class Normalizer:
    """Per-feature mean/std (fitted on train, missing values ignored); a constant column gets std 1."""

    feature_names: tuple[str, ...]
    mean: np.ndarray  # [F] float64
    std: np.ndarray  # [F] float64, > 0

    @classmethod
    def fit(cls, raw: RawSplit) -> Normalizer:
        n_features = raw.features.shape[-1]
        cols = np.ascontiguousarray(raw.features.reshape(-1, n_features).T)  # [F, N*24] float32
        mean = np.zeros(n_features)
        std = np.zeros(n_features)
        for j in range(n_features):
            # One contiguous pass per feature over its observed values; sums accumulate in float64.
            v = cols[j][~np.isnan(cols[j])]
            if not len(v):
                continue
            mean[j] = v.mean(dtype=np.float64)
            d = v - np.float32(mean[j])
            std[j] = math.sqrt(np.square(d, out=d).sum(dtype=np.float64) / len(v))
        # Constant (or never observed) columns carry no scale; std 1 leaves them as plain offsets.
        flat_col = (std <= 1e-9 * np.abs(mean)) | (std == 0)
        std = np.where(flat_col, 1.0, std)
        return cls(tuple(raw.feature_names), mean, std)

    def transform(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``features`` [N, 24, F] → (x standardised with missing → 0, mask with 1 = observed), float32."""
        if features.shape[-1] != len(self.feature_names):
            raise DataError(
                f"normalizer has {len(self.feature_names)} features, the data has {features.shape[-1]}"
            )
        seen = ~np.isnan(features)
        mean = self.mean.astype(np.float32)
        std = self.std.astype(np.float32)
        x = np.where(seen, (features - mean) / std, np.float32(0)).astype(np.float32, copy=False)
        return x, seen.astype(np.float32)

    def check_features(self, names: Sequence[str], where: str = "the data") -> None:
        if tuple(names) != self.feature_names:
            extra = [n for n in names if n not in self.feature_names]
            lacking = [n for n in self.feature_names if n not in names]
            detail = (
                f"only in data: {extra}; only in normalizer: {lacking}"
                if extra or lacking
                else "order differs"
            )
            raise DataError(
                f"normalizer features {list(self.feature_names)} do not match {where} "
                f"{list(names)} ({detail})"
            )

    def save(self, path: str | Path) -> None:
        write_json_atomic(
            path,
            {
                "kind": _NORMALIZER_KIND,
                "version": _NORMALIZER_VERSION,
                "feature_names": list(self.feature_names),
                "mean": [float(v) for v in self.mean],
                "std": [float(v) for v in self.std],
            },
        )

    @classmethod
    def load(cls, path: str | Path) -> Normalizer:
        path = Path(path)
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{path}: normalizer file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataError(f"{path}: not a readable normalizer JSON file ({err})") from None
        if not isinstance(payload, dict) or payload.get("kind") != _NORMALIZER_KIND:
            raise DataError(f'{path}: not a normalizer file (expected "kind": "{_NORMALIZER_KIND}")')
        if payload.get("version") != _NORMALIZER_VERSION:
            raise DataError(
                f"{path}: normalizer version {payload.get('version')!r}, expected {_NORMALIZER_VERSION}"
            )
        names, mean, std = payload.get("feature_names"), payload.get("mean"), payload.get("std")
        if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
            raise DataError(f'{path}: "feature_names" must be a non-empty list of column names')
        if len(set(names)) != len(names):
            raise DataError(f'{path}: "feature_names" lists a column twice')
        arrays = {}
        for key, value in (("mean", mean), ("std", std)):
            ok = isinstance(value, list) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
            )
            if not ok or len(value) != len(names):
                raise DataError(f'{path}: "{key}" must be a list of {len(names)} numbers, one per feature')
            arrays[key] = np.asarray(value, dtype=np.float64)
        if (
            not np.isfinite(arrays["mean"]).all()
            or not (np.isfinite(arrays["std"]) & (arrays["std"] > 0)).all()
        ):
            raise DataError(f'{path}: "mean" must be finite and "std" finite and > 0')
        return cls(tuple(names), arrays["mean"], arrays["std"])


# --- tensors ------------------------------------------------------------------------------------------


class WindowDataset(torch.utils.data.Dataset):
    """All windows of one split as tensors, built once; items and batches are dicts of tensors.

    Keys: ``index`` (dataset row), ``x`` and ``mask`` [.., 24, F], and when the split has them ``z``
    [.., 24, Z], ``y``, ``sigma`` [.., 24, Z], ``query_value`` [.., 24]; with ``pool`` given, ``pool``
    [.., 24] (1 = askable) and ``answer`` [.., 24] (the normalised answer, 0 where there is none). Use
    ``collate_fn=keep_batch`` in a DataLoader: it then fetches whole batches through ``__getitems__``.
    """

    def __init__(self, raw: RawSplit, normalizer: Normalizer, pool: np.ndarray | None = None) -> None:
        normalizer.check_features(raw.feature_names, where=str(raw.path))
        x, mask = normalizer.transform(raw.features)
        self.window_id = raw.window_id  # [N] int64, for writing predictions back per window
        self.tensors: dict[str, Tensor] = {
            "index": torch.arange(len(raw), dtype=torch.int64),
            "x": torch.from_numpy(x),  # [N, 24, F]
            "mask": torch.from_numpy(mask),  # [N, 24, F]
        }
        optional = {"z": raw.z, "y": raw.y, "sigma": raw.sigma, "query_value": raw.query_value}
        for key, value in optional.items():
            if value is not None:
                self.tensors[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        if pool is not None:
            self.tensors["pool"] = torch.from_numpy(np.ascontiguousarray(pool, dtype=np.float32))
            answer = np.zeros(pool.shape, dtype=np.float32)  # [N, 24]
            if raw.answers is not None:
                j = normalizer.feature_names.index(raw.asked_feature)
                scaled = (raw.answers - normalizer.mean[j]) / normalizer.std[j]
                answer = np.where(np.isnan(raw.answers), 0.0, scaled).astype(np.float32)
            self.tensors["answer"] = torch.from_numpy(answer)

    def __len__(self) -> int:
        return int(self.tensors["index"].shape[0])

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return {k: v[idx] for k, v in self.tensors.items()}


def keep_batch(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """Collate function for :class:`WindowDataset`: ``__getitems__`` already built the batch."""
    return batch
