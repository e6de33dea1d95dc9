"""Incremental reading of an append-only CSV file: each poll parses only the bytes appended since the last.

The trainer appends rows to metrics.csv, calibration.csv and topk_hours.csv and flushes after each row, so
a reader may see a last line whose newline has not arrived yet; that line is left for the next poll. A file
that shrank (truncated) or was swapped for another one (new inode, or the bytes we already read changed) is
re-read from the start, and the caller is told so that it can drop what it had.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aline.runs.files import RunFileError, open_binary

# How many bytes just before the current offset are re-read on each poll to notice an in-place rewrite
# (same inode, same size or larger, different content).
_GUARD_BYTES = 64
# Above this many new lines the chunk goes through pandas' C parser; below it, Python's csv module is
# faster because it has no per-call set-up cost.
_BULK_LINES = 2000


@dataclass
class TailChunk:
    """What one poll found: the header (once known), the complete lines appended, and whether to reset."""

    header: tuple[str, ...] | None
    data: bytes  # complete lines only, each ending in b"\n"
    reset: bool  # the file was truncated or replaced: everything read before is void
    exists: bool = True


class CsvTailer:
    """Byte-offset reader of one growing CSV file. Holds no parsed rows, only where it stopped."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.offset = 0  # bytes consumed, always just after a b"\n"
        self.header: tuple[str, ...] | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino)
        self._head = b""  # the header line as read, to notice a replacement with another header
        self._guard = b""  # last bytes consumed, to notice an in-place rewrite

    def _forget(self) -> None:
        self.offset = 0
        self.header = None
        self._identity = None
        self._head = b""
        self._guard = b""

    def poll(self) -> TailChunk:
        """Read what was appended since the last poll; never blocks, never raises for a missing file."""
        try:
            # Never through a link, never outside the run folder (RunFileError, a ValueError).
            fh = open_binary(self.path.parent, self.path)
        except FileNotFoundError:
            had_data = self.offset > 0
            self._forget()
            return TailChunk(header=None, data=b"", reset=had_data, exists=False)
        with fh:
            st = os.fstat(fh.fileno())
            reset = self._changed(fh, st)
            if reset:
                self._forget()
            self._identity = (st.st_dev, st.st_ino)
            if st.st_size == self.offset:
                return TailChunk(header=self.header, data=b"", reset=reset)
            fh.seek(self.offset)
            chunk = fh.read(st.st_size - self.offset)
        end = chunk.rfind(b"\n")
        if end < 0:
            return TailChunk(header=self.header, data=b"", reset=reset)
        complete = chunk[: end + 1]
        self.offset += end + 1
        self._guard = (self._guard + complete)[-_GUARD_BYTES:]
        if self.header is None:
            first_end = complete.index(b"\n") + 1
            self._head = complete[:first_end]
            self.header = _parse_header(self._head)
            complete = complete[first_end:]
        return TailChunk(header=self.header, data=complete, reset=reset)

    def _changed(self, fh: io.BufferedReader, st: os.stat_result) -> bool:
        if self._identity is None:
            return False
        if (st.st_dev, st.st_ino) != self._identity or st.st_size < self.offset:
            return True
        if self._head:
            fh.seek(0)
            if fh.read(len(self._head)) != self._head:
                return True
        if self._guard:
            fh.seek(self.offset - len(self._guard))
            if fh.read(len(self._guard)) != self._guard:
                return True
        return False


def _parse_header(line: bytes) -> tuple[str, ...]:
    return tuple(c.strip() for c in line.decode("utf-8", "replace").rstrip("\r\n").split(","))


@dataclass
class _Columns:
    """Growable column arrays: appending k rows costs O(k) amortised, reading costs nothing (views)."""

    names: tuple[str, ...]
    text: frozenset[str]
    n: int = 0
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.names:
            self.arrays[name] = np.empty(64, dtype=object if name in self.text else np.float64)

    def extend(self, cols: dict[str, np.ndarray]) -> None:
        k = len(next(iter(cols.values()))) if cols else 0
        if k == 0:
            return
        need = self.n + k
        for name in self.names:
            arr = self.arrays[name]
            if need > len(arr):
                grown = np.empty(max(need, 2 * len(arr)), dtype=arr.dtype)
                grown[: self.n] = arr[: self.n]
                self.arrays[name] = arr = grown
            arr[self.n : need] = cols[name]
        self.n = need


class TailedTable:
    """A CSV file kept in memory as columns, updated from the bytes appended since the last refresh.

    Every column is parsed as a float (an empty cell is NaN) except those named in ``text_columns``.
    A cell that is neither empty nor a number raises ``ValueError`` naming the file, line and column.
    """

    def __init__(self, path: str | os.PathLike[str], text_columns: tuple[str, ...] = ()) -> None:
        self.tailer = CsvTailer(path)
        self.text_columns = frozenset(text_columns)
        self._cols: _Columns | None = None
        self._lines = 1  # file line number of the last parsed line (the header is line 1)
        self.version = 0  # bumps whenever the content changes, for callers that cache derived data
        self.error: str | None = None  # the last parse error, kept so that a live view can keep showing it

    @property
    def path(self) -> Path:
        return self.tailer.path

    @property
    def exists(self) -> bool:
        return self.tailer.path.exists()

    @property
    def header(self) -> tuple[str, ...] | None:
        return self.tailer.header

    def __len__(self) -> int:
        return 0 if self._cols is None else self._cols.n

    def refresh(self) -> int:
        """Read appended rows; returns how many arrived (all of them again after a truncation/replacement)."""
        try:
            chunk = self.tailer.poll()
        except (RunFileError, OSError) as exc:
            # A file that cannot be read (a link, no permission) shows nothing of it, and says why.
            had = self._cols is not None
            self.tailer._forget()
            self._cols, self._lines = None, 1
            self.error = str(exc) if isinstance(exc, RunFileError) else f"{self.path}: cannot read it ({exc})"
            if had:
                self.version += 1
            raise ValueError(self.error) from None
        if chunk.reset:
            self._cols = None
            self._lines = 1
            self.error = None
            self.version += 1
        if chunk.header is None:
            return 0
        if self._cols is None:
            self._cols = _Columns(chunk.header, self.text_columns & set(chunk.header))
            self.version += 1
        if not chunk.data:
            return 0
        try:
            cols, k = _parse_rows(chunk.data, self._cols, self.path, self._lines)
        except ValueError as exc:
            # The bad bytes are consumed: report once, keep the message, carry on with later rows.
            self._lines += chunk.data.count(b"\n")
            self.error = str(exc)
            raise
        self._cols.extend(cols)
        self._lines += chunk.data.count(b"\n")
        self.version += 1
        return k

    def column(self, name: str) -> np.ndarray:
        """A read-only view of one column (``[n]``); empty if the file or the column is absent."""
        if self._cols is None or name not in self._cols.arrays:
            return np.empty(0, dtype=object if name in self.text_columns else np.float64)
        view = self._cols.arrays[name][: self._cols.n]
        view.flags.writeable = False
        return view

    def to_pandas(self):  # -> pandas.DataFrame; imported lazily so the tailer itself stays light
        import pandas as pd

        if self._cols is None:
            return pd.DataFrame()
        return pd.DataFrame({name: self.column(name).copy() for name in self._cols.names})


def _parse_rows(
    data: bytes, cols: _Columns, path: Path, first_line: int
) -> tuple[dict[str, np.ndarray], int]:
    """Parse complete CSV lines into one array per column; ``first_line`` is the file line of the first one.

    Returns the columns and the number of rows. Blank lines are skipped; errors name the file's own line.
    """
    text = data.decode("utf-8")
    n_lines = text.count("\n")
    width = len(cols.names)
    # The bulk parser is only trusted on well-formed text (no blank or short lines, no quoting): anything
    # else goes line by line, which names the offending line.
    if n_lines >= _BULK_LINES and text.count(",") == (width - 1) * n_lines and '"' not in text:
        bulk = _parse_bulk(text, cols)
        if bulk is not None:
            return bulk, n_lines
    out: dict[str, list] = {name: [] for name in cols.names}
    n_rows = 0
    for i, row in enumerate(_rows(text, path, first_line)):
        if not row:
            continue
        line = first_line + 1 + i
        if len(row) != width:
            raise ValueError(f"{path}: line {line} has {len(row)} fields, the header has {width}")
        for name, cell in zip(cols.names, row, strict=True):
            out[name].append(cell if name in cols.text else _to_float(cell, path, line, name))
        n_rows += 1
    return {
        name: np.asarray(vals, dtype=object if name in cols.text else np.float64)
        for name, vals in out.items()
    }, n_rows


def _rows(text: str, path: Path, first_line: int):  # -> Iterator[list[str]]
    """CSV rows of ``text``; a line the csv module cannot split (a lone CR inside it) is a ValueError
    naming the file's line, like every other bad line."""
    reader = csv.reader(io.StringIO(text))
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ValueError(f"{path}: line {first_line + reader.line_num}: not a CSV line ({exc})") from None
        yield row


def _to_float(cell: str, path: Path, line: int, column: str) -> float:
    if cell == "" or cell.isspace():
        return math.nan
    try:
        return float(cell)
    except ValueError:
        raise ValueError(f"{path}: line {line}, column {column!r}: {cell!r} is not a number") from None


def _parse_bulk(text: str, cols: _Columns) -> dict[str, np.ndarray] | None:
    """pandas' C parser over a large block; None if a numeric column holds text (the caller then names it)."""
    import pandas as pd

    frame = pd.read_csv(
        io.StringIO(text),
        header=None,
        names=list(cols.names),
        dtype={name: str for name in cols.text},
        keep_default_na=False,
        na_values={name: [""] for name in cols.names if name not in cols.text},
    )
    result: dict[str, np.ndarray] = {}
    for name in cols.names:
        values = frame[name].to_numpy()
        if name in cols.text:
            result[name] = values.astype(object)
        elif values.dtype.kind in "fiu":
            result[name] = values.astype(np.float64, copy=False)
        else:
            return None
    return result
