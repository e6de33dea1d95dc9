"""The fast layout of files already in window-then-hour order (aline/data/layout.py): the same arrays as the
data it was written from, whatever the block and batch sizes and column types; every bad value still
reported with all its rows."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from test_parquet import COLS, F, frame, truth, write_csv, write_parquet

from aline.config import DEFAULT_FEATURES
from aline.data import DataError, read_split
from aline.data.validate import id_codes


def in_order(t: dict[str, np.ndarray]):
    """The long frame sorted by window, then hour (as the simulator writes it); the truth in that order."""
    df = frame(t).sort_values(["window_id", "hour"]).reset_index(drop=True)
    order = np.argsort(t["window_id"])
    return df, {k: v[order] for k, v in t.items()}


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the fast layout's calls that finished, so a test knows which path read its file."""
    import aline.data.read as read_module

    done: list[int] = []
    real = read_module.fill_groups

    def counted(*args, **kwargs):
        out = real(*args, **kwargs)
        done.append(1)
        return out

    monkeypatch.setattr(read_module, "fill_groups", counted)
    return done


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("small_blocks", [False, True])
def test_an_in_order_file_loads_to_the_arrays_it_was_written_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spy: list[int], fmt: str, small_blocks: bool
) -> None:
    t = truth(n=9)
    df, want = in_order(t)
    rng = np.random.default_rng(3)
    # Columns stored as booleans and integers (a Parquet writer keeps pandas' types) are cast as they are
    # laid out; a CSV holds them as 0/1 and whole numbers.
    asleep, steps = DEFAULT_FEATURES.index("asleep"), DEFAULT_FEATURES.index("steps")
    flags = rng.random((9, 24)) < 0.5
    counts = rng.integers(0, 5000, (9, 24))
    df["asleep"] = flags.ravel() if fmt == "parquet" else flags.ravel().astype(np.int64)
    df["steps"] = counts.ravel()
    want["features"][:, :, asleep] = flags
    want["features"][:, :, steps] = counts
    if small_blocks:  # blocks and batches that end mid-window, and many of them
        monkeypatch.setattr("aline.data.layout.BLOCK_BYTES", 4 * F * 7)
        monkeypatch.setattr("aline.data.parquet_input.BATCH_ROWS", 50)
        monkeypatch.setattr("aline.data.parquet_input.STREAM_ROWS", 50)
    path = (
        write_csv(df, tmp_path / "a.csv") if fmt == "csv" else write_parquet(df, tmp_path / "a.parquet", 70)
    )
    raw = read_split(path, COLS)
    assert spy == [1]  # the fast layout read it
    np.testing.assert_array_equal(raw.window_id, want["window_id"].astype(str))
    for key in ("features", "z", "sigma", "y"):
        np.testing.assert_array_equal(getattr(raw, key), want[key], err_msg=key)
    np.testing.assert_array_equal(raw.post_mean, want["z"])  # frame() writes z as the posterior mean too
    assert raw.query_value is None and raw.answers is None


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [
        ("z_stress", np.inf, "infinite or out-of-range values"),
        ("z_stress", np.nan, "missing values"),
        ("post_std_stress", -0.5, r"values must lie in \[0, inf\]"),
        ("heart_rate", -np.inf, "infinite or out-of-range values"),
    ],
)
def test_bad_values_in_an_in_order_file_are_reported_with_every_row(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    spy: list[int],
    fmt: str,
    column: str,
    value: float,
    problem: str,
) -> None:
    """The fast layout stops at the first bad block; the general path then names the rows in every block."""
    monkeypatch.setattr("aline.data.layout.BLOCK_BYTES", 4 * F * 7)
    monkeypatch.setattr("aline.data.parquet_input.BATCH_ROWS", 50)
    monkeypatch.setattr("aline.data.parquet_input.STREAM_ROWS", 50)
    df, _ = in_order(truth(n=9))
    bad = [5, 130, 200]  # in three different batches
    df.loc[bad, column] = value
    path = (
        write_csv(df, tmp_path / "a.csv") if fmt == "csv" else write_parquet(df, tmp_path / "a.parquet", 70)
    )
    with pytest.raises(DataError, match=f"column '{column}': {problem}") as err:
        read_split(path, COLS)
    assert spy == []
    assert not [t for t in threading.enumerate() if t.name == "aline-parquet-read"]  # the reader stopped
    first = 2 if fmt == "csv" else 1  # the CSV line of data row 0, or its Parquet row number
    assert [int(n) for n in re.findall(r"\b(?:line|row) (\d+)", str(err.value))] == [r + first for r in bad]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_bad_per_window_values_in_an_in_order_file_are_reported_with_their_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spy: list[int], fmt: str
) -> None:
    """The columns other than ids, hours and hourly values (a Parquet file's are read one by one after the
    hourly ones) are checked as on the general path: the message names the file rows of the bad window."""
    monkeypatch.setattr("aline.data.parquet_input.STREAM_ROWS", 50)
    df, _ = in_order(truth(n=9))
    victim = df["window_id"].iloc[100]
    bad = np.flatnonzero(df["window_id"] == victim)
    df.loc[bad, "y_next"] = 2
    path = (
        write_csv(df, tmp_path / "a.csv") if fmt == "csv" else write_parquet(df, tmp_path / "a.parquet", 70)
    )
    with pytest.raises(DataError, match=r"column 'y_next': values must be one of 0, 1") as err:
        read_split(path, COLS)
    assert spy == [1]  # the hourly columns were laid out by the fast path first
    first = 2 if fmt == "csv" else 1
    quoted = [int(n) for n in re.findall(r"\b(?:line|row) (\d+)", str(err.value))]
    assert quoted and quoted == [r + first for r in bad[: len(quoted)]]
    assert f"{len(bad)} rows in all" in str(err.value)

    df.loc[bad, "y_next"] = 0
    df.loc[bad[5], "y_next"] = 1  # one hour of the window disagrees
    path = (
        write_csv(df, tmp_path / "b.csv") if fmt == "csv" else write_parquet(df, tmp_path / "b.parquet", 70)
    )
    with pytest.raises(DataError, match=rf"column 'y_next': must be the same on all 24 rows.*'{victim}'"):
        read_split(path, COLS)


def test_an_optional_column_empty_throughout_is_absent_on_the_fast_path(
    tmp_path: Path, spy: list[int]
) -> None:
    df, _ = in_order(truth(n=4))
    df["ask_symptom_score"] = np.nan  # the answers column exists but holds nothing
    raw = read_split(write_parquet(df, tmp_path / "a.parquet"), COLS)
    assert spy == [1] and raw.answers is None
    df.loc[30, "ask_symptom_score"] = 2.0
    raw = read_split(write_parquet(df, tmp_path / "b.parquet"), COLS)
    assert raw.answers is not None and raw.answers.reshape(-1)[30] == 2.0
    assert np.isnan(np.delete(raw.answers.reshape(-1), 30)).all()


@pytest.mark.parametrize("ids", [[3, 3, 3, 7, 7, 10, 10, 10, 12], [10, 3, 3, 7, 12, 10, 7, 3, 10]])
def test_integer_id_codes_number_ids_by_value_in_or_out_of_order(ids: list[int]) -> None:
    values = np.array(ids, dtype=np.int64)
    column = pa.chunked_array([pa.array(values[:4]), pa.array(values[4:])])
    codes, names = id_codes(column)
    unique, inverse = np.unique(values, return_inverse=True)  # the reference: sorted by value
    np.testing.assert_array_equal(codes, inverse)
    assert list(names) == [str(u) for u in unique]


@pytest.mark.parametrize(
    "ids",
    [
        ["10", "10", "10", "9", "9", "007", "7", "7", "12"],  # grouped, out of order, a run across chunks
        ["10", "10", "10", "9", "9", "007", "10", "7", "12"],  # "10" in two runs: not grouped
        ["5", "5", "5", "5", "5", "5", "5", "5", "5"],  # one run over every chunk
        ["b", "a", "a", "c", "c", "c", "b2", "b2", "a1"],  # not numbers: by text
    ],
)
@pytest.mark.parametrize("cut", [3, 4, 5])
def test_text_id_codes_number_ids_by_value_then_text_in_any_grouping(ids: list[str], cut: int) -> None:
    column = pa.chunked_array([pa.array(ids[:cut]), pa.array([], pa.string()), pa.array(ids[cut:])])
    codes, names = id_codes(column)
    numbers = all(i.isdigit() for i in ids)
    # The reference: distinct ids sorted by value with the text breaking ties ("007" before "7"), or by text.
    unique = sorted(set(ids), key=(lambda i: (int(i), i)) if numbers else None)
    assert list(names) == unique
    assert [unique[c] for c in codes] == ids


def _csv_variant(df, variant: str, path: Path) -> Path:
    """``df`` written as a CSV with one twist the piecewise parse must survive or hand on."""
    text = df.to_csv(index=False, float_format="%.9g")
    if variant == "crlf":
        text = text.replace("\n", "\r\n")
    elif variant == "no final line end":
        text = text.rstrip("\n")
    elif variant == "blank line":  # pyarrow skips it: the line count is one off, so the general path reads it
        lines = text.split("\n")
        text = "\n".join([*lines[:50], "", *lines[50:]])
    elif variant == "quoted header":  # a quote anywhere: lines may not be rows, so the general path reads it
        text = '"window_id"' + text[len("window_id") :]
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("variant", "path"),
    [
        ("plain", "pieces"),
        ("crlf", "pieces"),
        ("no final line end", "pieces"),
        ("windows shuffled whole", "pieces"),
        ("rows shuffled", "pieces"),
        ("blank line", "pieces, then the general path"),
        ("quoted header", "the whole file at once"),
    ],
)
@pytest.mark.parametrize("piece_bytes", [97, 4096, 1 << 25])
def test_a_csv_parsed_in_pieces_loads_to_the_arrays_it_was_written_from(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    spy: list[int],
    variant: str,
    path: str,
    piece_bytes: int,
) -> None:
    """Pieces cut mid-window and mid-file, files in window order or not: the same arrays as the data (a
    shuffled file is put in window order after the pieces are laid out)."""
    import aline.data.read as read_module

    monkeypatch.setattr("aline.data.csv_input.PIECE_BYTES", piece_bytes)
    split: list[bool] = []  # whether the file was cut into pieces
    real_split = read_module.split_csv

    def recorded(*args):
        pieces = real_split(*args)
        split.append(pieces is not None)
        return pieces

    monkeypatch.setattr(read_module, "split_csv", recorded)
    t = truth(n=9)
    df, want = in_order(t)
    if variant == "windows shuffled whole":
        windows = np.random.default_rng(5).permutation(df["window_id"].unique())
        df = df.set_index("window_id").loc[windows].reset_index()
    elif variant == "rows shuffled":
        df = frame(t)
    raw = read_split(_csv_variant(df, variant, tmp_path / "a.csv"), COLS)
    # The fast layout finished (spy) from pieces, or from the whole file; or the general path read it.
    assert (split[:1], spy) == {
        "pieces": ([True], [1]),
        "pieces, then the general path": ([True], []),
        "the whole file at once": ([False], [1]),
    }[path]
    np.testing.assert_array_equal(raw.window_id, want["window_id"].astype(str))
    for key in ("features", "z", "sigma", "y"):
        np.testing.assert_array_equal(getattr(raw, key), want[key], err_msg=key)
