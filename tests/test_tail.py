"""The byte-offset CSV tailer on real files: appends, half-written lines, truncation, replacement."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
import pytest
from helpers.monitor_fixtures import csv_line, train_row, val_row

import aline.monitor.tail as tail_mod
from aline import contract as C
from aline.monitor.tail import CsvTailer, TailedTable

HEADER_LINE = ",".join(C.METRICS_HEADER) + "\n"


def rows(n: int, seed: int = 0, start: int = 1) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(start, start + n):
        out.append(val_row(rng, i, i) if i % 5 == 0 else train_row(rng, 1 + i // 5, i))
    return out


def write(path: Path, lines: list[str], mode: str = "w") -> None:
    with open(path, mode, encoding="utf-8", newline="") as fh:
        fh.write("".join(lines))


def reference(path: Path) -> dict[str, list]:
    """The file's complete lines parsed with the csv module alone: empty → NaN, numbers → float."""
    text = path.read_bytes().decode()
    text = text[: text.rfind("\n") + 1]
    reader = list(csv.reader(text.splitlines()))
    header, body = reader[0], reader[1:]
    cols: dict[str, list] = {h: [] for h in header}
    for r in body:
        for h, cell in zip(header, r, strict=True):
            cols[h].append(cell if h == "split" else (math.nan if cell == "" else float(cell)))
    return cols


def assert_same(table: TailedTable, path: Path) -> None:
    ref = reference(path)
    assert len(table) == len(ref["time"])
    for name, values in ref.items():
        got = table.column(name)
        if name == "split":
            assert list(got) == values
        else:
            np.testing.assert_array_equal(got, np.asarray(values, dtype=float))


def test_appended_rows_are_read_incrementally(tmp_path: Path) -> None:
    path = tmp_path / C.METRICS_FILE
    data = rows(12)
    write(path, [HEADER_LINE] + [csv_line(C.METRICS_HEADER, r) for r in data[:7]])
    table = TailedTable(path, text_columns=("split",))
    assert table.refresh() == 7
    assert table.header == C.METRICS_HEADER
    assert_same(table, path)
    write(path, [csv_line(C.METRICS_HEADER, r) for r in data[7:]], mode="a")
    assert table.refresh() == 5
    assert table.refresh() == 0
    assert_same(table, path)
    assert table.tailer.offset == path.stat().st_size
    # Empty cells are NaN: a train row has no AUC, a val row no learning rate.
    split = table.column("split")
    assert np.isnan(table.column("auc")[split == "train"]).all()
    assert np.isnan(table.column("lr")[split == "val"]).all()


def test_only_appended_bytes_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / C.METRICS_FILE
    write(path, [HEADER_LINE] + [csv_line(C.METRICS_HEADER, r) for r in rows(500)])
    table = TailedTable(path, text_columns=("split",))
    table.refresh()
    new = [csv_line(C.METRICS_HEADER, r) for r in rows(10, seed=3, start=501)]
    write(path, new, mode="a")

    read_sizes: list[int] = []
    real_open = tail_mod.open_binary  # the tailer's only way to open the file

    class Counting:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def read(self, n=-1):
            data = self.fh.read(n)
            read_sizes.append(len(data))
            return data

    monkeypatch.setattr(tail_mod, "open_binary", lambda root, p: Counting(real_open(root, p)))
    assert table.refresh() == 10
    appended = len("".join(new).encode())
    assert read_sizes and appended in read_sizes  # the patch was in effect and the new block was read
    # The appended bytes, plus the header and a few guard bytes re-checked for a replaced file.
    assert sum(read_sizes) <= appended + len(HEADER_LINE) + 64
    assert sum(read_sizes) < path.stat().st_size / 10
    assert_same(table, path)


def test_half_written_last_line_waits_for_its_newline(tmp_path: Path) -> None:
    path = tmp_path / C.METRICS_FILE
    data = rows(4)
    lines = [csv_line(C.METRICS_HEADER, r) for r in data]
    write(path, [HEADER_LINE] + lines[:3] + [lines[3][:25]])
    table = TailedTable(path, text_columns=("split",))
    assert table.refresh() == 3
    assert_same(table, path)  # the reference also ignores the unterminated line
    write(path, [lines[3][25:]], mode="a")
    assert table.refresh() == 1
    assert table.column("iteration")[-1] == data[3]["iteration"]
    assert_same(table, path)


def test_header_itself_half_written(tmp_path: Path) -> None:
    path = tmp_path / C.METRICS_FILE
    write(path, [HEADER_LINE[:10]])
    table = TailedTable(path, text_columns=("split",))
    assert table.refresh() == 0 and table.header is None
    write(path, [HEADER_LINE[10:], csv_line(C.METRICS_HEADER, rows(1)[0])], mode="a")
    assert table.refresh() == 1
    assert_same(table, path)


def test_truncation_rereads_from_start(tmp_path: Path) -> None:
    path = tmp_path / C.METRICS_FILE
    write(path, [HEADER_LINE] + [csv_line(C.METRICS_HEADER, r) for r in rows(8)])
    table = TailedTable(path, text_columns=("split",))
    table.refresh()
    version = table.version
    write(path, [HEADER_LINE] + [csv_line(C.METRICS_HEADER, r) for r in rows(2, seed=9)])  # "w" truncates
    assert table.refresh() == 2
    assert table.version > version
    assert_same(table, path)


def test_replacement_by_rename_is_detected(tmp_path: Path) -> None:
    path = tmp_path / C.METRICS_FILE
    write(path, [HEADER_LINE] + [csv_line(C.METRICS_HEADER, r) for r in rows(3)])
    table = TailedTable(path, text_columns=("split",))
    table.refresh()
    # A new, longer file renamed over the old one: same name, new inode, size larger than the offset.
    other = tmp_path / "new.csv"
    write(other, [HEADER_LINE] + [csv_line(C.METRICS_HEADER, r) for r in rows(9, seed=5)])
    os.replace(other, path)
    assert table.refresh() == 9
    assert_same(table, path)


def test_in_place_rewrite_is_detected(tmp_path: Path) -> None:
    path = tmp_path / C.METRICS_FILE
    write(path, [HEADER_LINE] + [csv_line(C.METRICS_HEADER, r) for r in rows(3)])
    table = TailedTable(path, text_columns=("split",))
    table.refresh()
    ino = path.stat().st_ino
    # Same inode, rewritten through the same handle with other rows and then grown.
    with open(path, "r+", encoding="utf-8", newline="") as fh:
        fh.seek(0)
        fh.write(HEADER_LINE + "".join(csv_line(C.METRICS_HEADER, r) for r in rows(6, seed=11)))
    assert path.stat().st_ino == ino
    assert table.refresh() == 6
    assert_same(table, path)


def test_missing_file_then_created(tmp_path: Path) -> None:
    path = tmp_path / C.METRICS_FILE
    tailer = CsvTailer(path)
    chunk = tailer.poll()
    assert not chunk.exists and chunk.data == b"" and chunk.header is None
    table = TailedTable(path, text_columns=("split",))
    assert table.refresh() == 0 and len(table) == 0
    assert table.column("loss").size == 0
    write(path, [HEADER_LINE, csv_line(C.METRICS_HEADER, rows(1)[0])])
    assert table.refresh() == 1


def test_bad_cell_names_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / C.METRICS_FILE
    good = [csv_line(C.METRICS_HEADER, r) for r in rows(3)]
    bad = good[1].replace(",train,", ",train,oops", 1) if ",train," in good[1] else None
    assert bad is not None
    write(path, [HEADER_LINE, good[0], bad, good[2]])
    table = TailedTable(path, text_columns=("split",))
    with pytest.raises(ValueError, match=r"metrics\.csv: line 3, column 'loss': 'oops.*' is not a number"):
        table.refresh()
    assert table.error is not None and "line 3" in table.error


def test_wrong_field_count_is_named(tmp_path: Path) -> None:
    path = tmp_path / C.METRICS_FILE
    write(path, [HEADER_LINE, "1,2,3\n"])
    table = TailedTable(path, text_columns=("split",))
    with pytest.raises(ValueError, match=rf"line 2 has 3 fields, the header has {len(C.METRICS_HEADER)}"):
        table.refresh()


@pytest.mark.parametrize("n", [tail_mod._BULK_LINES - 1, tail_mod._BULK_LINES + 500])
def test_bulk_and_line_parsers_agree_with_reference(tmp_path: Path, n: int) -> None:
    # Both parsing paths (csv module for small appends, pandas for large blocks) against the reference.
    path = tmp_path / C.METRICS_FILE
    write(path, [HEADER_LINE] + [csv_line(C.METRICS_HEADER, r) for r in rows(n, seed=2)])
    table = TailedTable(path, text_columns=("split",))
    assert table.refresh() == n
    assert_same(table, path)
    assert all(isinstance(s, str) for s in table.column("split")[:5])


def test_crlf_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / C.CALIBRATION_FILE
    path.write_bytes(
        b"epoch,bin,lo,hi,count,mean_pred,frac_pos\r\n1,0,0.0,0.5,3,0.2,0.33\r\n\r\n1,1,0.5,1.0,0,,\r\n"
    )
    table = TailedTable(path)
    assert table.refresh() == 2
    assert table.header == C.CALIBRATION_HEADER
    np.testing.assert_array_equal(table.column("count"), [3.0, 0.0])
    assert np.isnan(table.column("mean_pred")[1])
