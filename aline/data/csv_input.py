"""CSV input for :func:`aline.data.read.read_split`: a typed pyarrow parse, whole or piece by piece; what a
failed parse means."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from aline.data.columns import ReadPlan
from aline.data.errors import DataError, bad_rows_error
from aline.data.layout import Irregular

# pyarrow's threaded parse: faster on idle cores, slower on busy ones, and a user training here has the
# cores to themselves (docs/results.md, "Loader and launcher constants").
PARSE_THREADS = True


def csv_header(path: Path) -> list[str]:
    """The column names on a CSV file's first line, exactly as written."""
    with path.open("rb") as fh:
        raw = fh.readline()
    # The first line ends at \n, \r\n or a lone \r (a file saved with old Mac line ends is one long
    # "line" to readline).
    raw = raw.split(b"\r", 1)[0] if b"\r" in raw else raw
    try:
        first = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: line 1: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not first.strip():
        raise DataError(f"{path}: the file is empty (expected a header line with column names)")
    # Names are kept exactly as written (pyarrow matches them so): " hour" is not "hour", and the
    # missing-column message then suggests the near miss.
    try:
        return next(csv.reader([first.rstrip("\r\n")]))
    except csv.Error as err:
        raise DataError(f"{path}: line 1: not a CSV header line ({err})") from None


def _case_variants(word: str) -> list[str]:
    out = [""]
    for ch in word:
        out = [p + v for p in out for v in {ch.lower(), ch.upper()}]
    return out


# Cells that mean "missing", case-insensitive (design: an empty cell; users' tools also write these).
# pyarrow matches null markers exactly, so every case variant is listed. Any other text is an error.
MISSING_MARKERS = ("", *(v for w in ("NA", "NaN", "null") for v in _case_variants(w)))


# Bytes of text the fast path parses at a time (:func:`split_csv`): only one piece's parsed columns sit in
# memory beside the arrays, at no cost in parse time (docs/results.md, "Loader and launcher constants").
PIECE_BYTES = 1 << 25


def _convert_options(plan: ReadPlan) -> pacsv.ConvertOptions:
    wanted = plan.columns()
    # float32 is what the model sees; parsing straight to it halves every later pass over the data, and a
    # value too large for it (1e39) parses as inf, which validation then rejects like a written "inf".
    types = {c: pa.float32() for c in wanted}
    for c in plan.text_columns():
        types[c] = pa.string()  # ids are given back exactly as written: "007" stays "007"
    return pacsv.ConvertOptions(
        include_columns=wanted,
        column_types=types,
        null_values=list(MISSING_MARKERS),
        strings_can_be_null=True,
    )


def read_any_lines(path: Path, convert: pacsv.ConvertOptions) -> pa.Table:
    """``pacsv.read_csv`` of a whole file, whatever the length of its lines: pyarrow parses in blocks
    (1 MiB by default) and refuses a row longer than one ("straddling object straddles two block
    boundaries"); such a file is parsed again with a block that holds the whole file."""
    try:
        return pacsv.read_csv(
            path, read_options=pacsv.ReadOptions(use_threads=PARSE_THREADS), convert_options=convert
        )
    except pa.ArrowInvalid as err:
        if "straddl" not in str(err):
            raise
    block = min(max(path.stat().st_size + 1, 1 << 20), (1 << 31) - 1)
    return pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(use_threads=PARSE_THREADS, block_size=block),
        convert_options=convert,
    )


def parse_csv(path: Path, header: list[str], plan: ReadPlan) -> pa.Table:
    try:
        return read_any_lines(path, _convert_options(plan))
    except pa.ArrowException as err:
        raise diagnose_csv(path, header, plan, str(err)) from None


@dataclass(frozen=True)
class CsvPieces:
    """A CSV file cut at line ends into pieces of about :data:`PIECE_BYTES`, parsed one at a time."""

    path: Path
    header: list[str]
    plan: ReadPlan
    starts: list[int]  # byte offset of each piece; the first holds the header line
    size: int
    rows: int  # data lines (every line but the header), counted from the line ends

    def tables(self) -> Iterator[pa.Table]:
        """Each piece parsed as :func:`parse_csv` parses the whole file. A parse error raises
        :class:`Irregular`: the general path then parses the file whole and words the message."""
        convert = _convert_options(self.plan)
        with self.path.open("rb") as fh:
            for k, (start, end) in enumerate(zip(self.starts, [*self.starts[1:], self.size], strict=True)):
                fh.seek(start)
                text = fh.read(end - start)
                options = pacsv.ReadOptions(
                    use_threads=PARSE_THREADS, column_names=self.header, skip_rows=1 if k == 0 else 0
                )
                try:
                    table = pacsv.read_csv(
                        pa.BufferReader(text), read_options=options, convert_options=convert
                    )
                except pa.ArrowException as err:
                    raise Irregular(str(err)) from None
                del text
                yield table


def split_csv(path: Path, header: list[str], plan: ReadPlan) -> CsvPieces | None:
    """Where to cut ``path`` into pieces, and its row count, from one pass over its bytes; None when the file
    holds a double quote anywhere (a quoted cell may hold a line break, so a line end may not end a row)
    or no data line: the general path reads those."""
    starts, lines, pos, cut = [0], 0, 0, PIECE_BYTES
    last = b"\n"
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 24):
            if b'"' in chunk:
                return None
            lines += chunk.count(b"\n")
            while cut < pos + len(chunk):
                end = chunk.find(b"\n", cut - pos)
                if end < 0:
                    cut = pos + len(chunk)  # the next line end is in a later chunk
                    break
                starts.append(pos + end + 1)
                cut = pos + end + 1 + PIECE_BYTES
            pos += len(chunk)
            last = chunk[-1:]
    if starts[-1] == pos:
        starts.pop()  # a cut right at the end of the file: no piece after it
    rows = lines + (last != b"\n") - 1  # a last line without a line end is a row too; less the header
    return CsvPieces(path, header, plan, starts, pos, rows) if rows > 0 else None


def diagnose_csv(path: Path, header: list[str], plan: ReadPlan, arrow_msg: str) -> DataError:
    """The fast typed parse failed; find out where, with line numbers (slow path, errors only)."""
    if "parse error" in arrow_msg or "Expected" in arrow_msg:
        with path.open("r", encoding="utf-8-sig", errors="replace", newline="") as fh:
            reader = csv.reader(fh)
            previous = 0  # physical lines consumed before this record (a quoted cell may span lines)
            try:
                for fields in reader:
                    lineno, previous = previous + 1, reader.line_num
                    if fields and len(fields) != len(header):
                        return DataError(
                            f"{path}: line {lineno}: expected {len(header)} fields like the header, "
                            f"found {len(fields)}"
                        )
            except csv.Error as err:  # a quote never closed runs on to the end of the file
                return DataError(
                    f"{path}: line {previous + 1}: malformed CSV ({err}; a quote that is never closed?)"
                )
        return DataError(f"{path}: malformed CSV ({arrow_msg})")

    import pandas as pd  # only needed on this error path

    wanted = plan.columns()
    try:
        as_text = read_any_lines(
            path,
            pacsv.ConvertOptions(
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
