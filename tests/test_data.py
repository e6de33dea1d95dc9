"""aline.data: CSV → validated arrays → normalised tensors, checked against arrays built independently."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from aline.config import DEFAULT_FEATURES, DEFAULT_LATENTS, ColumnsConfig, DataConfig
from aline.data import HOURS, DataError, RawSplit, load_splits, read_split
from aline.data.dataset import Normalizer, WindowDataset, keep_batch

COLS = ColumnsConfig()
F, Z = len(DEFAULT_FEATURES), len(DEFAULT_LATENTS)


def make_truth(n: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-window arrays in the shapes the loader must return (window ids unsorted, non-contiguous)."""
    rng = np.random.default_rng(seed)
    feats = rng.normal(50.0, 10.0, (n, HOURS, F)).astype(np.float32)
    feats[rng.random(feats.shape) < 0.2] = np.nan  # gappy features are allowed
    return {
        "window_id": rng.choice(10_000, size=n, replace=False).astype(np.int64),
        "features": feats,
        "z": rng.normal(size=(n, HOURS, Z)).astype(np.float32),
        "post_mean": rng.normal(size=(n, HOURS, Z)).astype(np.float32),
        "sigma": rng.uniform(0.1, 2.0, (n, HOURS, Z)).astype(np.float32),
        "query_value": rng.uniform(0, 1, (n, HOURS)).astype(np.float32),
        "y": (rng.random(n) < 0.5).astype(np.float32),
        "p_true": rng.uniform(0, 1, n).astype(np.float32),
        "p_bayes": rng.uniform(0, 1, n).astype(np.float32),
    }


def to_frame(t: dict[str, np.ndarray], shuffle: bool = True, seed: int = 1) -> pd.DataFrame:
    """Flatten to the simulator's long layout: one row per (window, hour), per-window values repeated."""
    n = len(t["window_id"])
    data: dict[str, np.ndarray] = {
        "window_id": np.repeat(t["window_id"], HOURS),
        "subject_id": np.repeat(t["window_id"] // 2, HOURS),
        "day": np.repeat(np.arange(n) % 2, HOURS),
        "hour": np.tile(np.arange(HOURS), n),
    }
    for j, name in enumerate(DEFAULT_FEATURES):
        data[name] = t["features"][:, :, j].ravel()
    for j, name in enumerate(DEFAULT_LATENTS):
        data[f"z_{name}"] = t["z"][:, :, j].ravel()
        data[f"post_mean_{name}"] = t["post_mean"][:, :, j].ravel()
        data[f"post_std_{name}"] = t["sigma"][:, :, j].ravel()
    data["query_value"] = t["query_value"].ravel()
    for key, col in (("y", "y_next"), ("p_true", "p_true"), ("p_bayes", "p_bayes")):
        data[col] = np.repeat(t[key], HOURS)
    df = pd.DataFrame(data)
    df["y_next"] = df["y_next"].astype(int)
    if shuffle:
        df = df.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    return df


def write(df: pd.DataFrame, path: Path) -> Path:
    # repr-precision floats so the file round-trips float32 values exactly; NaN becomes an empty cell.
    df.to_csv(path, index=False, float_format="%.9g")
    return path


def sorted_truth(t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    order = np.argsort(t["window_id"])
    return {k: v[order] for k, v in t.items()}


def csv_field(path: Path, line: int, column: str) -> str:
    """The raw text of one cell, by 1-based file line (header = 1), read without the loader."""
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    return lines[line - 1].split(",")[header.index(column)]


def lines_in(message: str) -> list[int]:
    return [int(n) for n in re.findall(r"\bline (\d+)", message)]


# --- reading a good file -----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["shuffled rows", "whole windows, unsorted", "sorted"])
def test_read_split_recovers_arrays(tmp_path: Path, layout: str) -> None:
    # The three orders take the loader's three paths: full sort, moving 24-row blocks, nothing to move.
    t = make_truth()
    df = to_frame(t, shuffle=layout == "shuffled rows")
    if layout == "sorted":
        df = df.sort_values(["window_id", "hour"])
    raw = read_split(write(df, tmp_path / "a.csv"), COLS)
    ref = sorted_truth(t)
    # Ids come back as the text written; integer ids in numeric order.
    assert list(raw.window_id) == [str(i) for i in ref["window_id"]]
    assert raw.feature_names == DEFAULT_FEATURES
    assert raw.features.shape == (6, HOURS, F) and raw.features.dtype == np.float32
    np.testing.assert_array_equal(raw.features, ref["features"])  # NaN positions included
    for key in ("z", "post_mean", "sigma", "query_value", "y", "p_true", "p_bayes"):
        got = getattr(raw, key)
        assert got.dtype == np.float32, key
        np.testing.assert_array_equal(got, ref[key], err_msg=key)
    assert len(raw) == 6


def test_prediction_input_needs_only_ids_hours_features(tmp_path: Path) -> None:
    t = make_truth(n=3)
    df = to_frame(t)[["window_id", "hour", *DEFAULT_FEATURES]]
    raw = read_split(write(df, tmp_path / "in.csv"), COLS, require_targets=False)
    assert (
        raw.z is raw.y is raw.sigma is raw.post_mean is raw.query_value is raw.p_bayes is raw.p_true is None
    )
    np.testing.assert_array_equal(raw.features, sorted_truth(t)["features"])
    with pytest.raises(DataError, match="missing column.*'y_next'"):
        read_split(tmp_path / "in.csv", COLS)  # training needs the label (latents are optional)


def test_prediction_input_with_blank_label_column_reads_it_as_absent(tmp_path: Path) -> None:
    df = to_frame(make_truth(n=2))
    df["y_next"] = np.nan
    raw = read_split(write(df, tmp_path / "in.csv"), COLS, require_targets=False)
    assert raw.y is None and raw.z is None  # prediction input: everything but id, hour, features ignored


def test_sigma_absent_is_none_and_sigma_prefix_none(tmp_path: Path) -> None:
    df = to_frame(make_truth(n=2)).drop(columns=[f"post_std_{n}" for n in DEFAULT_LATENTS])
    path = write(df, tmp_path / "a.csv")
    assert read_split(path, COLS).sigma is None
    full = write(to_frame(make_truth(n=2)), tmp_path / "b.csv")
    assert read_split(full, ColumnsConfig(sigma_prefix=None)).sigma is None


def test_custom_column_mapping(tmp_path: Path) -> None:
    t = make_truth(n=3)
    df = to_frame(t).rename(
        columns={"window_id": "day_key", "hour": "h", "y_next": "migraine", "z_stress": "L_stress"}
    )
    df = df.rename(columns={f"z_{n}": f"L_{n}" for n in DEFAULT_LATENTS})
    cols = ColumnsConfig(
        window_id="day_key", hour="h", label="migraine", latent_prefix="L_", features=["hrv", "steps"]
    )
    raw = read_split(write(df, tmp_path / "a.csv"), cols)
    ref = sorted_truth(t)
    picks = [DEFAULT_FEATURES.index("hrv"), DEFAULT_FEATURES.index("steps")]
    np.testing.assert_array_equal(raw.features, ref["features"][:, :, picks])
    np.testing.assert_array_equal(raw.z, ref["z"])
    np.testing.assert_array_equal(raw.y, ref["y"])


# --- bad files: one DataError each, naming file, column and lines ------------------------------------


def test_missing_columns_are_all_listed(tmp_path: Path) -> None:
    df = to_frame(make_truth(n=2)).drop(columns=["hrv", "z_hormonal", "y_next"])
    path = write(df, tmp_path / "bad.csv")
    with pytest.raises(DataError) as info:
        read_split(path, COLS)
    msg = str(info.value)
    assert str(path) in msg
    for name in ("hrv", "z_hormonal", "y_next"):
        assert repr(name) in msg


@pytest.mark.parametrize("case", ["23 rows", "25 rows", "repeated hour", "hour 24"])
def test_window_without_exactly_24_hours(tmp_path: Path, case: str) -> None:
    t = make_truth(n=3)
    df = to_frame(t, shuffle=False)
    victim = int(t["window_id"][1])
    rows = np.flatnonzero(df["window_id"].to_numpy() == victim)
    if case == "23 rows":
        df = df.drop(index=rows[5])  # hour 5 gone
    elif case == "25 rows":
        df = pd.concat([df, df.iloc[[rows[7]]]], ignore_index=True)  # hour 7 twice
    elif case == "repeated hour":
        df.loc[rows[3], "hour"] = 4  # 24 rows but hour 3 missing, 4 twice
    else:
        df.loc[rows[3], "hour"] = 24
    path = write(df.sample(frac=1.0, random_state=3), tmp_path / "bad.csv")
    with pytest.raises(DataError) as info:
        read_split(path, COLS)
    msg = str(info.value)
    assert str(path) in msg and "'hour'" in msg
    if case == "hour 24":
        line = lines_in(msg)[0]
        assert csv_field(path, line, "hour") == "24"
        return
    assert f"window '{victim}'" in msg
    expected = {"23 rows": "23 rows", "25 rows": "repeated hour 7", "repeated hour": "no row for hour 3"}[
        case
    ]
    assert expected in msg
    # The quoted lines are rows of that window in the file.
    for line in lines_in(msg):
        assert int(csv_field(path, line, "window_id")) == victim


@pytest.mark.parametrize("value", ["2", ""])
def test_label_outside_0_1(tmp_path: Path, value: str) -> None:
    df = to_frame(make_truth(n=3)).astype({"y_next": object})
    victim = df["window_id"].iloc[10]
    df.loc[df["window_id"] == victim, "y_next"] = value
    path = write(df, tmp_path / "bad.csv")
    with pytest.raises(DataError) as info:
        read_split(path, COLS)
    msg = str(info.value)
    assert str(path) in msg and "'y_next'" in msg
    lines = lines_in(msg)
    assert len(lines) == 5 and "24 rows in all" in msg
    assert all(csv_field(path, n, "y_next") == value for n in lines)


@pytest.mark.parametrize("shuffle", [True, False])
def test_label_must_agree_within_window(tmp_path: Path, shuffle: bool) -> None:
    df = to_frame(make_truth(n=3), shuffle=shuffle)
    victim = df["window_id"].iloc[30]
    df.loc[30, "y_next"] = 1 - df.loc[30, "y_next"]
    path = write(df, tmp_path / "bad.csv")
    with pytest.raises(DataError, match=rf"'y_next'.*same on all 24 rows.*window '{victim}'"):
        read_split(path, COLS)
    with pytest.raises(DataError) as info:
        read_split(path, COLS)
    lines = lines_in(str(info.value))
    assert len(lines) == 5 and all(int(csv_field(path, n, "window_id")) == victim for n in lines)


@pytest.mark.parametrize(
    ("column", "text"),
    [("heart_rate", "abc"), ("z_stress", "abc"), ("hour", "abc"), ("hrv", "n/a"), ("steps", "NA x")],
)
def test_text_in_numeric_column(tmp_path: Path, column: str, text: str) -> None:
    # "n/a" is one of pyarrow's default null markers; only an empty cell may mean "missing" here.
    df = to_frame(make_truth(n=3)).astype({column: object})
    df.loc[17, column] = text
    path = write(df, tmp_path / "bad.csv")
    with pytest.raises(DataError) as info:
        read_split(path, COLS)
    msg = str(info.value)
    assert str(path) in msg and repr(column) in msg and repr(text) in msg
    assert lines_in(msg) == [19]
    assert csv_field(path, 19, column) == text


@pytest.mark.parametrize(
    ("column", "value"), [("steps", np.inf), ("z_env_load", -np.inf), ("p_bayes", np.inf), ("hrv", 1e39)]
)
def test_infinite_values(tmp_path: Path, column: str, value: float) -> None:
    df = to_frame(make_truth(n=3)).astype({column: np.float64})  # float64 holds 1e39; float32 would not
    df.loc[30, column] = value
    path = write(df, tmp_path / "bad.csv")
    with pytest.raises(DataError) as info:
        read_split(path, COLS)
    msg = str(info.value)
    assert str(path) in msg and repr(column) in msg and "infinite" in msg
    assert lines_in(msg) == [32]
    assert float(csv_field(path, 32, column)) == value  # 1e39 overflows the model's float32


def test_missing_latent_value(tmp_path: Path) -> None:
    df = to_frame(make_truth(n=3))
    df.loc[[8, 40], "z_sleep_debt"] = np.nan
    path = write(df, tmp_path / "bad.csv")
    with pytest.raises(DataError) as info:
        read_split(path, COLS)
    msg = str(info.value)
    assert str(path) in msg and "'z_sleep_debt'" in msg and "missing" in msg
    assert lines_in(msg) == [10, 42]


def test_empty_file_and_header_only(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty\.csv: the file is empty"):
        read_split(empty, COLS)
    header_only = tmp_path / "header.csv"
    to_frame(make_truth(n=1)).iloc[:0].to_csv(header_only, index=False)
    with pytest.raises(DataError, match=r"header\.csv: no data rows"):
        read_split(header_only, COLS)
    with pytest.raises(DataError, match="not found"):
        read_split(tmp_path / "nope.csv", COLS)


def test_ragged_row_names_its_line(tmp_path: Path) -> None:
    path = write(to_frame(make_truth(n=2)), tmp_path / "bad.csv")
    lines = path.read_text().splitlines()
    lines[6] += ",1"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"bad\.csv: line 7: expected \d+ fields"):
        read_split(path, COLS)


def test_partial_sigma_columns_are_an_error(tmp_path: Path) -> None:
    df = to_frame(make_truth(n=2)).drop(columns=["post_std_hormonal"])
    with pytest.raises(DataError, match="missing 'post_std_hormonal'"):
        read_split(write(df, tmp_path / "bad.csv"), COLS)


def test_negative_sigma_and_p_outside_unit_interval(tmp_path: Path) -> None:
    df = to_frame(make_truth(n=2))
    df.loc[3, "post_std_stress"] = -0.5
    with pytest.raises(DataError, match=r"'post_std_stress'.*\[0, inf\].*line 5 = -0\.5"):
        read_split(write(df, tmp_path / "bad.csv"), COLS)


# --- normalisation -----------------------------------------------------------------------------------


def test_normalizer_matches_pandas_and_transform(tmp_path: Path) -> None:
    t = make_truth(n=8)
    t["features"][:, :, 2] = 3.0  # constant column → std 1
    df = to_frame(t)
    raw = read_split(write(df, tmp_path / "a.csv"), COLS)
    norm = Normalizer.fit(raw)
    ref_mean = df[list(DEFAULT_FEATURES)].astype(np.float64).mean().to_numpy()  # pandas skips NaN
    ref_std = df[list(DEFAULT_FEATURES)].astype(np.float64).std(ddof=0).to_numpy().copy()
    ref_std[2] = 1.0
    # float32 data: agreement to ~1e-7 relative is all that normalising needs.
    np.testing.assert_allclose(norm.mean, ref_mean, rtol=1e-9)
    np.testing.assert_allclose(norm.std, ref_std, rtol=1e-6)
    assert norm.std[2] == 1.0

    x, mask = norm.transform(raw.features)
    assert x.dtype == mask.dtype == np.float32 and x.shape == mask.shape == raw.features.shape
    observed = ~np.isnan(sorted_truth(t)["features"])
    np.testing.assert_array_equal(mask, observed.astype(np.float32))
    expect = (sorted_truth(t)["features"].astype(np.float64) - ref_mean) / ref_std
    np.testing.assert_allclose(x[observed], expect[observed], rtol=1e-5, atol=1e-5)
    assert (x[~observed] == 0).all()


def test_normalizer_save_load_roundtrip_and_bad_files(tmp_path: Path) -> None:
    raw = read_split(write(to_frame(make_truth()), tmp_path / "a.csv"), COLS)
    norm = Normalizer.fit(raw)
    path = tmp_path / "normalizer.json"
    norm.save(path)
    back = Normalizer.load(path)
    assert back.feature_names == norm.feature_names
    np.testing.assert_array_equal(back.mean, norm.mean)
    np.testing.assert_array_equal(back.std, norm.std)
    assert not list(tmp_path.glob(".normalizer.json.*"))  # no temp file left behind

    payload = json.loads(path.read_text())
    bad_cases = {
        "garbage": "{not json",
        "short": json.dumps({**payload, "std": payload["std"][:-1]}),
        "zero std": json.dumps({**payload, "std": [0.0] * len(payload["std"])}),
        "wrong kind": json.dumps({**payload, "kind": "other"}),
    }
    for label, text in bad_cases.items():
        bad = tmp_path / f"bad_{label.replace(' ', '_')}.json"
        bad.write_text(text)
        with pytest.raises(DataError, match=re.escape(str(bad))):
            Normalizer.load(bad)
    with pytest.raises(DataError, match="not found"):
        Normalizer.load(tmp_path / "missing.json")


def test_dataset_rejects_normalizer_for_other_features(tmp_path: Path) -> None:
    raw = read_split(write(to_frame(make_truth(n=2)), tmp_path / "a.csv"), COLS)
    norm = Normalizer.fit(raw)
    other = Normalizer(tuple(reversed(norm.feature_names)), norm.mean, norm.std)
    with pytest.raises(DataError, match="do not match"):
        WindowDataset(raw, other)


# --- tensors -----------------------------------------------------------------------------------------


def test_dataset_items_batches_and_dataloader(tmp_path: Path) -> None:
    t = make_truth(n=10)
    raw = read_split(write(to_frame(t), tmp_path / "a.csv"), COLS)
    ds = WindowDataset(raw, Normalizer.fit(raw))
    ref = sorted_truth(t)
    assert len(ds) == 10
    item = ds[4]
    assert set(item) == {"index", "x", "mask", "z", "y", "sigma", "post_mean", "query_value"}
    assert item["x"].shape == (HOURS, F) and item["z"].shape == (HOURS, Z) and item["y"].shape == ()
    np.testing.assert_array_equal(item["z"].numpy(), ref["z"][4])
    np.testing.assert_array_equal(item["post_mean"].numpy(), ref["post_mean"][4])
    assert item["y"].item() == ref["y"][4]

    batch = ds.__getitems__([7, 2, 2])
    for key, value in batch.items():
        np.testing.assert_array_equal(value.numpy(), torch.stack([ds[i][key] for i in (7, 2, 2)]).numpy())

    loader = DataLoader(
        ds, batch_size=4, shuffle=True, collate_fn=keep_batch, generator=torch.Generator().manual_seed(0)
    )
    seen = []
    for b in loader:
        assert b["x"].shape[1:] == (HOURS, F) and b["mask"].shape == b["x"].shape
        assert b["sigma"].shape[1:] == (HOURS, Z) and b["query_value"].shape[1:] == (HOURS,)
        idx = b["index"].numpy()
        np.testing.assert_array_equal(b["y"].numpy(), ref["y"][idx])
        np.testing.assert_array_equal(b["z"].numpy(), ref["z"][idx])
        seen.extend(idx.tolist())
    assert sorted(seen) == list(range(10))


def test_dataset_without_targets_has_only_inputs(tmp_path: Path) -> None:
    df = to_frame(make_truth(n=2))[["window_id", "hour", *DEFAULT_FEATURES]]
    raw = read_split(write(df, tmp_path / "in.csv"), COLS, require_targets=False)
    ds = WindowDataset(raw, Normalizer.fit(raw))
    assert set(ds[0]) == {"index", "x", "mask"}


# --- splits ------------------------------------------------------------------------------------------


def test_load_splits(tmp_path: Path) -> None:
    truths = {s: make_truth(n=3, seed=i) for i, s in enumerate(("train", "val", "test"))}
    for s, t in truths.items():
        write(to_frame(t), tmp_path / f"synthetic_migraine_{s}.csv")
    cfg = DataConfig(dir=str(tmp_path))
    out = load_splits(cfg)
    assert set(out) == {"train", "val", "test"}
    for s, raw in out.items():
        assert isinstance(raw, RawSplit)
        np.testing.assert_array_equal(raw.z, sorted_truth(truths[s])["z"])
    assert set(load_splits(cfg, splits=("val",))) == {"val"}

    # A split that lacks columns the others have is inconsistent.
    df = to_frame(truths["val"]).drop(columns=["query_value"])
    write(df, tmp_path / "synthetic_migraine_val.csv")
    with pytest.raises(DataError, match=r"synthetic_migraine_val\.csv.*query_value"):
        load_splits(cfg)

    (tmp_path / "synthetic_migraine_test.csv").unlink()
    (tmp_path / "synthetic_migraine_train.csv").unlink()
    with pytest.raises(DataError) as info:
        load_splits(cfg)
    assert "synthetic_migraine_test.csv" in str(info.value) and "synthetic_migraine_train.csv" in str(
        info.value
    )


def test_never_observed_feature_gets_mean_0_std_1(tmp_path: Path) -> None:
    t = make_truth(n=2)
    t["features"][:, :, 5] = np.nan
    raw = read_split(write(to_frame(t), tmp_path / "a.csv"), COLS)
    norm = Normalizer.fit(raw)
    assert norm.mean[5] == 0.0 and norm.std[5] == 1.0
    x, mask = norm.transform(raw.features)
    assert (x[:, :, 5] == 0).all() and (mask[:, :, 5] == 0).all()


def test_pyarrow_written_file_with_quoted_header(tmp_path: Path) -> None:
    # pyarrow's CSV writer (a fast choice for the simulator) quotes every header name.
    import pyarrow as pa
    import pyarrow.csv as pacsv

    t = make_truth(n=3)
    path = tmp_path / "arrow.csv"
    pacsv.write_csv(pa.Table.from_pandas(to_frame(t), preserve_index=False), path)
    assert path.read_text().startswith('"window_id"')
    raw = read_split(path, COLS)
    np.testing.assert_array_equal(raw.features, sorted_truth(t)["features"])
    np.testing.assert_array_equal(raw.y, sorted_truth(t)["y"])


def test_non_utf8_bytes_give_a_data_error(tmp_path: Path) -> None:
    path = write(to_frame(make_truth(n=2)), tmp_path / "bad.csv")
    data = path.read_bytes().replace(b"\n", b"\n\xff\xfe", 1)
    path.write_bytes(data)
    with pytest.raises(DataError, match=r"bad\.csv: line 2: not UTF-8"):
        read_split(path, COLS)


def test_header_name_with_stray_space_is_reported_with_a_hint(tmp_path: Path) -> None:
    df = to_frame(make_truth(n=2)).rename(columns={"hrv": " hrv"})
    with pytest.raises(DataError, match=r"missing column\(s\) 'hrv' \(did you mean ' hrv'\?\)"):
        read_split(write(df, tmp_path / "bad.csv"), COLS)


def test_simulator_data_without_a_newer_default_feature_says_how_to_renew_it(tmp_path: Path) -> None:
    """A data folder written by an earlier aline.simulate (before usual_caffeine_mg) is named as such; a
    file of the user's own lacking a feature gets the plain message."""
    df = to_frame(make_truth(n=2))
    old = write(df.drop(columns=["usual_caffeine_mg"]), tmp_path / "old.csv")
    with pytest.raises(DataError) as err:
        read_split(old, COLS)
    assert "missing column(s) 'usual_caffeine_mg' (data from an earlier aline.simulate?" in str(err.value)
    assert f"python -m aline.simulate --out {tmp_path}" in str(err.value)
    own = write(df.drop(columns=["usual_caffeine_mg", "p_bayes"]), tmp_path / "own.csv")
    with pytest.raises(DataError) as err:
        read_split(own, COLS)
    assert "missing column(s) 'usual_caffeine_mg'" in str(err.value) and "aline.simulate" not in str(
        err.value
    )
