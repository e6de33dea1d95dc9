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
