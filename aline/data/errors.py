"""Bad input data as one message: the error type and how messages quote files, columns and rows."""

from __future__ import annotations

import contextlib
import csv
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

# How many offending CSV lines an error message quotes before summarising the rest as a count.
SHOWN = 5


class DataError(ValueError):
    """Bad input data; ``str(err)`` is one message naming the file, the column and the first bad rows."""


def is_parquet(path: Path) -> bool:
    return path.suffix.lower() == ".parquet"


def row_word(path: Path) -> tuple[str, int]:
    """How messages point at data row 0: CSV line 2 (line 1 is the header), or Parquet row 1."""
    return ("row", 1) if is_parquet(path) else ("line", 2)


def file_lines(path: Path, rows: np.ndarray) -> np.ndarray:
    """How messages number data rows (0-based, in file order): a CSV's physical line on which each row
    starts, a Parquet file's 1-based row."""
    rows = np.asarray(rows, dtype=np.int64)
    if is_parquet(path) or not len(rows):
        return rows + row_word(path)[1]
    starts = csv_row_lines(path, int(rows.max()) + 1)
    if len(starts) <= int(rows.max()):  # the file changed under us: the plain count is all there is
        return rows + row_word(path)[1]
    return starts[rows]


def csv_row_lines(path: Path, n_rows: int) -> np.ndarray:
    """``[n_rows]`` the 1-based physical line on which each of the first data rows of a CSV starts.

    Rows are counted as the parser counts them: blank lines are skipped, and a quoted cell may span
    several lines. Only error messages need this, so the file is read again here."""
    starts: list[int] = []
    seen_header = False
    with path.open("r", encoding="utf-8-sig", errors="replace", newline="") as fh:
        reader = csv.reader(fh)
        previous = 0  # lines consumed before this record
        with contextlib.suppress(csv.Error):  # an unclosed quote: the lines found so far are all there is
            for record in reader:
                first, previous = previous + 1, reader.line_num
                if not record:
                    continue
                if not seen_header:
                    seen_header = True
                    continue
                starts.append(first)
                if len(starts) >= n_rows:
                    break
    return np.asarray(starts, dtype=np.int64)


def bad_rows_error(
    path: Path, column: str, problem: str, rows: np.ndarray, cell: Callable[[int], str] | None = None
) -> DataError:
    """``rows``: 0-based data rows in file order, quoted as CSV line numbers (Parquet: 1-based row
    numbers); ``cell(row)`` shows a value."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    word = row_word(path)[0]
    if cell is None:
        quoted = ", ".join(f"{word} {n}" for n in file_lines(path, rows[:SHOWN]))
    else:
        shown = rows[:SHOWN]
        quoted = ", ".join(
            f"{word} {n} = {cell(int(r))}" for r, n in zip(shown, file_lines(path, shown), strict=True)
        )
    more = f" ({len(rows)} rows in all)" if len(rows) > SHOWN else ""
    return DataError(f"{path}: column {column!r}: {problem}; first bad rows: {quoted}{more}")


def fmt_value(value: float) -> str:
    value = float(value)
    if math.isnan(value):
        return "missing"
    # Values come from float32 columns: 7 significant digits show what the file said without float noise.
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.7g}"
