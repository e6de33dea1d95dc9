"""Parquet input: same arrays as the CSV of the same data, same validation and kind of messages."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aline.config import DEFAULT_FEATURES, DEFAULT_LATENTS, ColumnsConfig, DataConfig
from aline.data import HOURS, DataError, load_splits, read_split
from aline.simulate import main as simulate_main

COLS = ColumnsConfig()
F, Z = len(DEFAULT_FEATURES), len(DEFAULT_LATENTS)


def truth(n: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feats = rng.normal(50.0, 10.0, (n, HOURS, F)).astype(np.float32)
    feats[rng.random(feats.shape) < 0.2] = np.nan
    return {
        "window_id": rng.choice(10_000, size=n, replace=False).astype(np.int64),
        "features": feats,
        "z": rng.normal(size=(n, HOURS, Z)).astype(np.float32),
        "sigma": rng.uniform(0.1, 2.0, (n, HOURS, Z)).astype(np.float32),
        "y": (rng.random(n) < 0.5).astype(np.float32),
    }


def frame(t: dict[str, np.ndarray], seed: int = 1) -> pd.DataFrame:
    """The long layout, rows shuffled: one row per (window, hour)."""
    n = len(t["window_id"])
    data = {"window_id": np.repeat(t["window_id"], HOURS), "hour": np.tile(np.arange(HOURS), n)}
    for j, name in enumerate(DEFAULT_FEATURES):
        data[name] = t["features"][:, :, j].ravel().astype(np.float64)
    for j, name in enumerate(DEFAULT_LATENTS):
        data[f"z_{name}"] = t["z"][:, :, j].ravel().astype(np.float64)
        data[f"post_mean_{name}"] = t["z"][:, :, j].ravel().astype(np.float64)
        data[f"post_std_{name}"] = t["sigma"][:, :, j].ravel().astype(np.float64)
    data["y_next"] = np.repeat(t["y"], HOURS).astype(np.int64)
    return pd.DataFrame(data).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def write_parquet(df: pd.DataFrame, path: Path, row_group_size: int | None = None) -> Path:
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=row_group_size)
    return path


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    df.to_csv(path, index=False, float_format="%.9g")  # float32 values round-trip exactly
    return path


def rows_in(message: str) -> list[int]:
    return [int(n) for n in re.findall(r"\brow (\d+)", message)]


def test_parquet_and_csv_of_the_same_data_load_to_identical_arrays(tmp_path: Path) -> None:
    t = truth()
    df = frame(t)
    from_csv = read_split(write_csv(df, tmp_path / "a.csv"), COLS)
    from_parquet = read_split(write_parquet(df, tmp_path / "a.parquet"), COLS)
    order = np.argsort(t["window_id"])  # the loader sorts windows by id; hours come back 0..23
    for key in ("window_id", "features", "z", "sigma", "y"):
        want = t[key][order].astype(str) if key == "window_id" else t[key][order]  # ids come back as text
        np.testing.assert_array_equal(getattr(from_parquet, key), want, err_msg=key)
        np.testing.assert_array_equal(getattr(from_parquet, key), getattr(from_csv, key), err_msg=key)
    assert from_parquet.query_value is None and from_csv.query_value is None


def test_simulator_parquet_output_loads_like_its_csv(tmp_path: Path) -> None:
    common = ["--subjects", "6", "--days", "3", "--seed", "2", "--quiet"]
    assert simulate_main([*common, "--out", str(tmp_path / "c")]) == 0
    assert simulate_main([*common, "--out", str(tmp_path / "p"), "--format", "parquet"]) == 0
    meta = json.loads((tmp_path / "p" / "synthetic_migraine_meta.json").read_text())
    assert meta["files"]["train"] == "synthetic_migraine_train.parquet"
    csv_splits = load_splits(DataConfig(dir=str(tmp_path / "c")))
    pq_splits = load_splits(DataConfig(dir=str(tmp_path / "p")))
    for split, raw in pq_splits.items():
        assert raw.path.suffix == ".parquet"
        for key in ("window_id", "features", "z", "sigma", "post_mean", "y", "query_value", "p_bayes"):
            np.testing.assert_array_equal(getattr(raw, key), getattr(csv_splits[split], key), err_msg=key)

    # Writing the other format into the same folder replaces the split files: never both at once.
    assert simulate_main([*common, "--out", str(tmp_path / "p")]) == 0
    assert sorted(p.suffix for p in (tmp_path / "p").glob("*_train.*")) == [".csv"]


def test_folder_holding_both_formats_of_a_split_is_refused(tmp_path: Path) -> None:
    df = frame(truth())
    for split in ("train", "val", "test"):
        write_csv(df, tmp_path / f"synthetic_migraine_{split}.csv")
    write_parquet(df, tmp_path / "synthetic_migraine_val.parquet")
    with pytest.raises(DataError, match=r"synthetic_migraine_val\.csv and synthetic_migraine_val\.parquet"):
        load_splits(DataConfig(dir=str(tmp_path)))


def test_missing_column_names_the_file_and_the_near_miss(tmp_path: Path) -> None:
    df = frame(truth()).rename(columns={"hour": "hours"})
    path = write_parquet(df, tmp_path / "bad.parquet")
    with pytest.raises(DataError) as info:
        read_split(path, COLS)
    msg = str(info.value)
    assert msg.startswith(str(path)) and "missing column(s) 'hour' (did you mean 'hours'?)" in msg


def test_label_outside_0_1_quotes_the_parquet_rows(tmp_path: Path) -> None:
    df = frame(truth(n=3))
    victim = df["window_id"].iloc[10]
    df.loc[df["window_id"] == victim, "y_next"] = 2
    path = write_parquet(df, tmp_path / "bad.parquet")
    with pytest.raises(DataError) as info:
        read_split(path, COLS)
    msg = str(info.value)
    assert str(path) in msg and "'y_next'" in msg and "values must be one of 0, 1" in msg
    rows = rows_in(msg)
    assert len(rows) == 5 and "24 rows in all" in msg
    # Row numbers are 1-based rows of the file, read back independently.
    back = pq.read_table(path).to_pandas()
    assert all(back["y_next"].iloc[r - 1] == 2 for r in rows)


def test_window_without_24_hours(tmp_path: Path) -> None:
    df = frame(truth(n=3))
    victim = df["window_id"].iloc[0]
    drop = df.index[(df["window_id"] == victim) & (df["hour"] == 5)]
    path = write_parquet(df.drop(index=drop).reset_index(drop=True), tmp_path / "bad.parquet")
    with pytest.raises(DataError) as info:
        read_split(path, COLS)
    msg = str(info.value)
    assert str(path) in msg and f"window '{victim}' (23 rows; no row for hour 5" in msg
    back = pq.read_table(path).to_pandas()
    assert all(back["window_id"].iloc[r - 1] == victim for r in rows_in(msg))


def test_fractional_hour_and_text_and_float_ids(tmp_path: Path) -> None:
    df = frame(truth(n=2)).astype({"hour": np.float64})
    df.loc[7, "hour"] = 3.5
    with pytest.raises(
        DataError, match=r"bad1\.parquet: column 'hour': hours must be whole numbers.*row 8 = 3\.5"
    ):
        read_split(write_parquet(df, tmp_path / "bad1.parquet"), COLS)

    df = frame(truth(n=2))
    # Numbers stored as text read like a CSV's cells (null = missing); other text is reported by row.
    df["steps"] = [None if np.isnan(v) else repr(float(v)) for v in df["steps"]]
    df.loc[4, "steps"] = "many"
    with pytest.raises(
        DataError, match=r"bad2\.parquet: column 'steps': text in a numeric column.*row 5 = 'many'"
    ):
        read_split(write_parquet(df, tmp_path / "bad2.parquet"), COLS)

    df = frame(truth(n=2)).astype({"window_id": np.float64})
    df.loc[2, "window_id"] = 1.5
    with pytest.raises(
        DataError, match=r"bad3\.parquet: column 'window_id': numeric ids must be whole.*row 3"
    ):
        read_split(write_parquet(df, tmp_path / "bad3.parquet"), COLS)


def test_huge_value_and_not_a_parquet_file(tmp_path: Path) -> None:
    df = frame(truth(n=2))
    df.loc[3, "z_stress"] = 1e39  # beyond float32, as a CSV "1e39" would be
    with pytest.raises(DataError, match=r"column 'z_stress': infinite or out-of-range values.*row 4"):
        read_split(write_parquet(df, tmp_path / "big.parquet"), COLS)

    fake = tmp_path / "fake.parquet"
    fake.write_text("window_id,hour\n1,0\n")
    with pytest.raises(DataError, match=r"fake\.parquet: not a readable Parquet file"):
        read_split(fake, COLS)


def test_a_file_read_in_many_batches_loads_the_same_and_counts_rows_from_the_top(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large files are read in batches; with 50-row batches a small file needs several. The arrays, text
    ids and the row numbers of bad cells must not depend on where a batch ends."""
    t = truth(n=8)
    df = frame(t)  # 192 rows, shuffled
    df["subject_id"] = ["s" + str(int(w) % 3) for w in df["window_id"]]  # text ids next to integer ones
    path = write_parquet(df, tmp_path / "a.parquet", row_group_size=70)
    whole = read_split(path, COLS)
    monkeypatch.setattr("aline.data.parquet_input.BATCH_ROWS", 50)
    monkeypatch.setattr("aline.data.parquet_input.STREAM_ROWS", 50)
    batched = read_split(path, COLS)
    for key in ("window_id", "subject_id", "features", "z", "sigma", "post_mean", "y"):
        np.testing.assert_array_equal(getattr(batched, key), getattr(whole, key), err_msg=key)
    np.testing.assert_array_equal(batched.window_id, np.sort(t["window_id"]).astype(str))

    # A bad cell in the fourth batch: its row number counts from the top of the file.
    df["steps"] = [None if np.isnan(v) else repr(float(v)) for v in df["steps"]]
    df.loc[171, "steps"] = "lots"
    bad = write_parquet(df, tmp_path / "bad.parquet", row_group_size=70)
    with pytest.raises(DataError, match=r"column 'steps': text in a numeric column.*row 172 = 'lots'"):
        read_split(bad, COLS)
    df = frame(t).astype({"window_id": np.float64})
    df.loc[120, "window_id"] = 0.5
    bad = write_parquet(df, tmp_path / "bad_id.parquet", row_group_size=70)
    with pytest.raises(DataError, match=r"column 'window_id': numeric ids must be whole.*row 121 = 0\.5"):
        read_split(bad, COLS)


@pytest.mark.parametrize("in_order", [False, True])
def test_a_damaged_column_is_named(tmp_path: Path, in_order: bool) -> None:
    """The batched read fails as a whole on one bad column chunk; the message still names that column. In
    a file already in window order the hourly columns are read on a second thread (aline.data.layout's
    fast path): the failure there is worded the same, and the thread is gone afterwards."""
    df = frame(truth(n=20))
    if in_order:
        df = df.sort_values(["window_id", "hour"]).reset_index(drop=True)
    path = write_parquet(df, tmp_path / "damaged.parquet")
    meta = pq.ParquetFile(path).metadata
    chunk = meta.row_group(0).column(meta.schema.names.index("heart_rate"))
    data = bytearray(path.read_bytes())
    start = chunk.data_page_offset
    data[start : start + chunk.total_compressed_size] = b"\xab" * chunk.total_compressed_size
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"damaged\.parquet: column 'heart_rate': cannot read it \("):
        read_split(path, COLS)
    assert not [t for t in threading.enumerate() if t.name == "aline-parquet-read"]
