"""The fast path from parsed rows to ``[rows, k]`` arrays: each hourly column copied once, checked as it goes.

:func:`fill_groups` reads record batches (from a Parquet reader, or the pieces of a CSV as they are parsed)
and copies each one into float32 arrays in file order, one per group of columns, block by block so that a
block of an array stays in cache while its k columns are written in. A file whose rows are already in
window-then-hour order (what the simulator writes, and any file sorted by window and hour) then needs no
reordering: row r of the file is row r of the arrays; :func:`aline.data.read.read_split` puts the arrays of
any other CSV in order afterwards. Writing one whole column at a time (a stride of k floats) touches every
cache line of the array k times, which blocks avoid.

Each block is checked as it is written (missing values where none are allowed, infinite values, values
below a bound). The first problem raises :class:`Irregular`, and :func:`aline.data.read.read_split` reads
the file again column by column, whose messages name every bad row: the fast path never has to.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aline.data.validate import array_numpy

__all__ = ["HourlyGroup", "Irregular", "fill_groups"]

# Bytes of an array per block: about 512 kB, within a 2-core machine's L2 cache.
BLOCK_BYTES = 1 << 19


@dataclass(frozen=True)
class HourlyGroup:
    """Columns that fill one ``[rows, k]`` float32 array, and what they may hold."""

    names: tuple[str, ...]
    allow_missing: bool
    lo: float | None = None


class Irregular(Exception):
    """The fast path met something it does not report (a bad value, a column that is not plain numbers,
    a length that differs): read the file again the general way."""


def fill_groups(
    batches: Iterable[pa.RecordBatch], groups: list[HourlyGroup], rows: int
) -> tuple[list[np.ndarray], set[str]]:
    """One float32 ``[rows, k]`` array per group, and the names of the columns holding at least one value
    (an optional column that is empty throughout counts as absent)."""
    outs = [np.empty((rows, len(g.names)), dtype=np.float32) for g in groups]
    nulls = {name: 0 for g in groups for name in g.names}
    r0 = 0
    # float64 beyond float32's range becomes inf here, which the block check then rejects.
    with np.errstate(over="ignore", invalid="ignore"):
        for batch in batches:
            if r0 + batch.num_rows > rows:
                raise Irregular("more rows than the ids and hours gave")
            for group, out in zip(groups, outs, strict=True):
                columns = [batch.column(name) for name in group.names]
                for name, column in zip(group.names, columns, strict=True):
                    nulls[name] += column.null_count
                _fill(out, r0, [_as_numpy(c) for c in columns], group)
            r0 += batch.num_rows
    if r0 != rows:
        raise Irregular("fewer rows than the ids and hours gave")
    return outs, {name for name, count in nulls.items() if count < rows}


def _fill(out: np.ndarray, r0: int, values: list[np.ndarray], group: HourlyGroup) -> None:
    length = len(values[0])
    step = max(1, BLOCK_BYTES // (4 * out.shape[1]))
    for b0 in range(0, length, step):
        block = out[r0 + b0 : r0 + min(b0 + step, length)]  # [<=step, k]
        for j, v in enumerate(values):
            block[:, j] = v[b0 : b0 + step]
        # One check per cached block, not per column (NaN < lo is False: missing values are checked apart).
        if np.isinf(block).any() if group.allow_missing else not np.isfinite(block).all():
            raise Irregular("a missing or infinite value")
        if group.lo is not None and (block < group.lo).any():
            raise Irregular(f"a value below {group.lo}")


def _as_numpy(arr: pa.Array) -> np.ndarray:
    """A numeric Arrow array as NumPy with nulls as NaN; float64 stays float64 (the copy into the float32
    array casts it, with no float32 copy of the whole column first)."""
    kind = arr.type
    if not (pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_boolean(kind)):
        raise Irregular(f"a column of {kind}")
    if not (pa.types.is_float32(kind) or pa.types.is_float64(kind)):
        arr = pc.cast(arr, pa.float32(), safe=False)
    return array_numpy(arr)
