"""One split read and validated: :func:`read_split` turns a long file into a :class:`RawSplit` of
``[N, 24, ...]`` arrays, windows sorted by id (see the package docstring for what counts as missing)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from aline.config import ColumnsConfig
from aline.contract import HOURS
from aline.data.columns import ReadPlan, plan_columns
from aline.data.csv_input import CsvPieces, csv_header, parse_csv, split_csv
from aline.data.errors import DataError, bad_rows_error, fmt_value, is_parquet
from aline.data.layout import HourlyGroup, Irregular, fill_groups
from aline.data.parquet_input import iter_batches, parquet_header, read_parquet
from aline.data.validate import check_values, id_codes, numeric_numpy, window_order


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


def read_header(path: Path) -> list[str]:
    """A split file's column names; the extension picks the format."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return parquet_header(path) if is_parquet(path) else csv_header(path)


def read_split(path: str | Path, columns: ColumnsConfig, *, require_targets: bool = True) -> RawSplit:
    """Read and validate one long CSV, or a Parquet file when the name ends in ``.parquet``.

    ``require_targets=True`` (training, evaluation) also needs the label and reads the optional roles the
    file has; ``require_targets=False`` (prediction input) reads only the window id, hour and feature
    columns, and the answer column when the file has it, and ignores every other column."""
    path = Path(path)
    header = read_header(path)
    plan = plan_columns(path, header, columns, require_targets)
    try:
        return _read(path, header, plan, columns, fast=True)
    except Irregular:
        pass  # outside the handler, so that the general path's DataError is not chained to this
    # Something the fast layout does not describe (a bad value, a column of text): the column-by-column
    # path reads the file again and names every bad row.
    return _read(path, header, plan, columns, fast=False)


def _groups(plan: ReadPlan) -> list[HourlyGroup]:
    """The hourly columns by the array they fill, with what each may hold: the one statement of both
    that the fast layout and the column-by-column path check against."""
    groups = [HourlyGroup(tuple(plan.features), allow_missing=True)]
    for names, lo in ((plan.latents, None), (plan.sigma, 0.0), (plan.post_mean, None)):
        if names:
            groups.append(HourlyGroup(tuple(names), allow_missing=False, lo=lo))
    if plan.query_value is not None:
        groups.append(HourlyGroup((plan.query_value,), allow_missing=False))
    if plan.answer is not None:
        groups.append(HourlyGroup((plan.answer,), allow_missing=True))
    return groups


def _drain(columns: dict[str, pa.ChunkedArray]) -> Iterator[pa.RecordBatch]:
    """The columns as record batches, each let go once it is laid out (the table and the arrays never
    both sit in memory whole). Empties ``columns``."""
    batches = pa.table(columns).to_batches()
    columns.clear()
    batches.reverse()
    while batches:
        yield batches.pop()
        pa.default_memory_pool().release_unused()


def _hourly_batches(
    pieces: CsvPieces, hourly: list[str], others: list[str], kept: list[pa.Table]
) -> Iterator[pa.RecordBatch]:
    """The hourly columns of each parsed piece, as record batches; the ``others`` are appended to ``kept``."""
    for table in pieces.tables():
        kept.append(table.select(others))
        batches = table.select(hourly).to_batches()
        del table
        yield from batches
        del batches
        pa.default_memory_pool().release_unused()  # the piece just laid out (see _read)


class _OnDemand(dict):
    """Columns of a Parquet file read one at a time, when first looked up, for the fast path's columns
    other than ids, hours and the hourly ones: each sits in memory only while it is checked and laid out."""

    def __init__(self, path: Path, plan: ReadPlan, names: list[str]) -> None:
        super().__init__()
        self.path, self.plan, self.names = path, plan, frozenset(names)

    def __missing__(self, name: str) -> pa.ChunkedArray:
        if name not in self.names:
            raise KeyError(name)
        self[name] = column = read_parquet(self.path, self.plan, [name]).column(0)
        return column

    def pop(self, name: str) -> pa.ChunkedArray:  # type: ignore[override]
        self[name]  # read it first if it was never looked up
        return super().pop(name)


def _read(path: Path, header: list[str], plan: ReadPlan, columns: ColumnsConfig, *, fast: bool) -> RawSplit:
    groups = _groups(plan)
    spec = {g.names: g for g in groups}
    hourly_names = [c for g in groups for c in g.names]
    hourly_set = set(hourly_names)
    # The fast path streams a Parquet file's hourly columns later, straight into the arrays.
    stream = fast and is_parquet(path)
    pieces = split_csv(path, header, plan) if fast and not is_parquet(path) else None
    filled: list[np.ndarray] | None = None  # [rows, k] per group, in file order (a CSV read in pieces)
    present: set[str] | None = None  # the hourly columns with a value in them (fast path)
    if stream:
        # Only what orders the rows comes first. The hourly columns stream into the arrays, and every other
        # column is read alone when first used (_OnDemand): reading them together beside the arrays
        # raises the load's peak.
        order_by = [plan.window_id, plan.hour]
        on_demand = [c for c in plan.columns() if c not in hourly_set and c not in order_by]
        table = read_parquet(path, plan, order_by)
    elif pieces is not None:
        # A CSV's hourly columns go into the arrays piece by piece as it is parsed, in file order (put in
        # window order below if need be); the other columns are kept as parsed.
        kept: list[pa.Table] = []
        others = [c for c in plan.columns() if c not in hourly_set]
        filled, present = fill_groups(
            _hourly_batches(pieces, hourly_names, others, kept), groups, pieces.rows
        )
        table = pa.concat_tables(kept)
        del kept
    else:
        table = read_parquet(path, plan) if is_parquet(path) else parse_csv(path, header, plan)
    # Arrow's allocator keeps freed blocks (parse buffers, Parquet's float64 batches, each column once it
    # is in the arrays) for reuse by Arrow, while the arrays come from NumPy's allocator. Handing them back
    # as they are freed lowers both the load's peak and what the process keeps after loading.
    pa.default_memory_pool().release_unused()
    n_rows = table.num_rows
    if n_rows == 0:
        raise DataError(f"{path}: no data rows below the header")

    # Each column is let go once it is in the arrays: the parsed table and the arrays never both sit in
    # memory whole (docs/results.md, "Data at scale").
    parsed = _OnDemand(path, plan, on_demand) if stream else {}
    parsed.update((name, table.column(name)) for name in table.column_names)
    del table

    def col(name: str) -> np.ndarray:
        return numeric_numpy(parsed.pop(name))  # [rows] float32, NaN for empty cells

    id_col = parsed.pop(plan.window_id)
    if id_col.null_count:
        rows = np.flatnonzero(id_col.is_null().to_numpy(zero_copy_only=False))
        raise bad_rows_error(path, plan.window_id, "missing window id", rows)
    # Any text is an id; windows are ordered by id (numerically when all ids are whole numbers).
    wid, id_names = id_codes(id_col)  # [rows] int64, [N] object (str)
    del id_col
    hour = col(plan.hour)  # [rows]
    check_values(path, plan.hour, hour, allow_missing=False, lo=0, hi=HOURS - 1)
    whole = hour == np.round(hour)
    if not whole.all():
        rows = np.flatnonzero(~whole)
        raise bad_rows_error(
            path, plan.hour, "hours must be whole numbers", rows, lambda r, h=hour: fmt_value(h[r])
        )

    order, blocks, n = window_order(path, plan, wid, hour, lambda c: repr(id_names[c]))

    def arrange(v: np.ndarray) -> np.ndarray:
        """[rows, ...] in file order → [N, 24, ...] sorted by window, then hour."""
        if blocks is not None:
            return v.reshape(n, HOURS, *v.shape[1:])[blocks]
        return (v if order is None else v[order]).reshape(n, HOURS, *v.shape[1:])

    wid_sorted = id_names[arrange(wid)[:, 0]]  # [N] ids as written
    del wid, hour, whole  # [rows] each: not needed beside the arrays

    # [N, 24, k] arrays already laid out by the fast path, by group; the columns with a value in them.
    laid_out: dict[tuple[str, ...], np.ndarray] = {}
    if filled is not None:
        # A view when the file is in window order; otherwise one group at a time is copied into order.
        for group in groups:
            laid_out[group.names] = arrange(filled.pop(0))
    elif fast and order is None:
        batches = (
            iter_batches(path, hourly_names) if stream else _drain({c: parsed.pop(c) for c in hourly_names})
        )
        outs, present = fill_groups(batches, groups, n * HOURS)
        laid_out = {g.names: out.reshape(n, HOURS, -1) for g, out in zip(groups, outs, strict=True)}
    elif stream:  # rows out of order: the general layout below, from a table of the hourly columns
        parsed.update(zip(hourly_names, read_parquet(path, plan, hourly_names).columns, strict=True))

    def blank(names: list[str] | str | None) -> bool:
        # An optional column left entirely empty is absent.
        if names is None:
            return True
        names = [names] if isinstance(names, str) else names
        if present is not None and all(c in hourly_set for c in names):  # laid out by the fast path
            return not any(c in present for c in names)
        return all(parsed[c].null_count == n_rows for c in names)

    def hourly(names: list[str]) -> np.ndarray:
        key = tuple(names)
        if key in laid_out:
            return laid_out.pop(key)
        group = spec[key]
        out = np.empty((n, HOURS, len(names)), dtype=np.float32)  # [N, 24, k]
        for j, name in enumerate(names):
            v = col(name)
            check_values(path, name, v, allow_missing=group.allow_missing, lo=group.lo)
            out[:, :, j] = arrange(v)
            del v
            pa.default_memory_pool().release_unused()  # the parsed column, now in ``out``
        return out

    def not_constant(name: str, grid: np.ndarray) -> None:
        differs = np.flatnonzero((grid != grid[:, :1]).any(axis=1))
        if len(differs):
            rows = (np.arange(n * HOURS) if order is None else order).reshape(n, HOURS)[differs].ravel()
            wids = ", ".join(repr(wid_sorted[i]) for i in differs[:3])
            raise bad_rows_error(
                path,
                name,
                f"must be the same on all {HOURS} rows of a window; differs in window {wids}",
                rows,
            )

    def per_window(name: str, **limits: object) -> np.ndarray:
        v = col(name)
        check_values(path, name, v, allow_missing=False, **limits)  # type: ignore[arg-type]
        grid = arrange(v)  # [N, 24]
        not_constant(name, grid)
        return grid[:, 0].astype(np.float32)

    def subjects(name: str | None) -> np.ndarray | None:
        if name is None or blank(name):
            return None
        column = parsed.pop(name)
        if column.null_count:
            rows = np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))
            raise bad_rows_error(path, name, "missing subject id", rows)
        codes, names = id_codes(column)
        grid = arrange(codes)  # [N, 24]
        not_constant(name, grid)
        return names[grid[:, 0]]

    features = hourly(plan.features)
    z = None if plan.latents is None else hourly(plan.latents)
    sigma = None if blank(plan.sigma) else hourly(plan.sigma)
    post_mean = None if blank(plan.post_mean) else hourly(plan.post_mean)
    y = None if plan.label is None else per_window(plan.label, allowed=(0.0, 1.0))
    qv = plan.query_value
    query_value = None if blank(qv) else hourly([qv]).reshape(n, HOURS)
    p_bayes = None if blank(plan.p_bayes) else per_window(plan.p_bayes, lo=0.0, hi=1.0)
    p_true = None if blank(plan.p_true) else per_window(plan.p_true, lo=0.0, hi=1.0)
    answers = None if blank(plan.answer) else hourly([plan.answer]).reshape(n, HOURS)
    split = RawSplit(
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
    parsed.clear()  # unread columns (a role left out, an all-empty optional column)
    pa.default_memory_pool().release_unused()
    return split
