"""A cohort's own CSV (issue 10): no simulator columns, text ids, NA cells, and the messages around them.

Every test writes real CSV files; references are built from the arrays the test wrote, not from the loader.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import aline.train as train_mod
from aline import contract
from aline.config import DEFAULT_LATENTS, ColumnsConfig, ConfigError, DataConfig, load_config
from aline.data import HOURS, MISSING_MARKERS, DataError, feature_report, load_splits, read_split
from aline.predict import load as load_predictor
from aline.predict import load_state_dict
from aline.predict import main as predict_main

FEATURES = ["hr_bpm", "sleep_h", "diary"]
COLUMNS = ColumnsConfig(
    window_id="day_key", hour="hr", label="migraine", subject_id="subj", features=list(FEATURES)
)
TINY = [
    "model.d_model=16",
    "model.heads=2",
    "model.layers=1",
    "model.ff_dim=32",
    "trainer.batch_size=16",
    "trainer.eval_batch_size=64",
    "trainer.log_every=2",
    "logging.progress=false",
]
COHORT = [
    "data.prefix=cohort",
    "data.columns.window_id=day_key",
    "data.columns.hour=hr",
    "data.columns.label=migraine",
    "data.columns.subject_id=subj",
    f"data.columns.features=[{','.join(FEATURES)}]",
]


def cohort(subjects: range, days: int = 2, seed: int = 0, miss: float = 0.2) -> tuple[pd.DataFrame, dict]:
    """Long rows (shuffled) with text ids; returns the frame and the per-window truth, ids sorted as text."""
    rng = np.random.default_rng(seed)
    ids = [f"S{s:03d}-2024-05-{d + 1:02d}" for s in subjects for d in range(days)]
    subj = [f"S{s:03d}" for s in subjects for _ in range(days)]
    n = len(ids)
    feats = rng.normal(size=(n, HOURS, len(FEATURES)))
    feats[rng.random(feats.shape) < miss] = np.nan
    feats[:, :, 0] = np.where(np.isnan(feats[:, :, 0]), np.nan, feats[:, :, 0] * 10 + 70)
    y = (rng.random(n) < 1 / (1 + np.exp(-np.nanmean(feats[:, :, 1], axis=1) * 3))).astype(int)
    y[:2] = [0, 1]  # both classes in every split
    df = pd.DataFrame(
        {
            "day_key": np.repeat(ids, HOURS),
            "subj": np.repeat(subj, HOURS),
            "hr": np.tile(np.arange(HOURS), n),
            **{f: feats[:, :, j].ravel() for j, f in enumerate(FEATURES)},
            "migraine": np.repeat(y, HOURS),
            "notes": "free text, ignored",
        }
    )
    df = df.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    return df, {"ids": np.array(ids, dtype=object), "features": feats.astype(np.float32), "y": y}


def write(df: pd.DataFrame, path: Path, na: str = "NA") -> Path:
    df.to_csv(path, index=False, na_rep=na, float_format="%.9g")
    return path


def write_cohort(folder: Path, seed: int = 0, **kw) -> dict[str, dict]:
    folder.mkdir(parents=True, exist_ok=True)
    truths = {}
    for i, split in enumerate(("train", "val", "test")):
        subjects = {"train": range(0, 10), "val": range(10, 14), "test": range(14, 18)}[split]
        df, truths[split] = cohort(subjects, seed=seed + i, **kw)
        write(df, folder / f"cohort_{split}.csv")
    return truths


def cohort_data(folder: Path) -> DataConfig:
    return DataConfig(dir=str(folder), prefix="cohort", columns=COLUMNS)


# --- formats --------------------------------------------------------------------------------------------


def test_text_ids_and_missing_markers_in_any_case(tmp_path: Path) -> None:
    df, truth = cohort(range(3), seed=1)
    text = df.astype({f: object for f in FEATURES})
    markers = ["", "NA", "na", "NaN", "nan", "NAN", "null", "NULL", "Null"]
    holes = np.argwhere(df[FEATURES].isna().to_numpy())
    for k, (row, col) in enumerate(holes):
        text.iat[row, text.columns.get_loc(FEATURES[col])] = markers[k % len(markers)]
    path = tmp_path / "c.csv"
    text.to_csv(path, index=False, float_format="%.9g")
    assert {"NA", "null", "NaN", "Null"} <= set(path.read_text().replace("\n", ",").split(","))
    raw = read_split(path, COLUMNS)
    order = np.argsort(truth["ids"].astype(str))
    assert list(raw.window_id) == list(truth["ids"][order])  # exactly as written
    np.testing.assert_array_equal(raw.features, truth["features"][order])  # NaN where any marker was
    assert raw.z is raw.sigma is raw.p_bayes is None
    assert list(raw.subject_id) == [i.split("-")[0] for i in truth["ids"][order]]
    assert set(MISSING_MARKERS) >= {"", "NA", "nan", "NULL", "nUlL"}


@pytest.mark.parametrize("text", ["N/A", "none", "-", "NA NA", "1,5"])
def test_other_text_is_still_an_error(tmp_path: Path, text: str) -> None:
    df, _ = cohort(range(2), seed=2)
    df = df.astype({"sleep_h": object})
    df.loc[7, "sleep_h"] = text
    path = write(df, tmp_path / "c.csv")
    with pytest.raises(DataError) as info:
        read_split(path, COLUMNS)
    msg = str(info.value)
    assert str(path) in msg and "'sleep_h'" in msg and "line 9" in msg and repr(text) in msg


def test_integer_ids_keep_their_text_and_numeric_order(tmp_path: Path) -> None:
    df, truth = cohort(range(3), days=4, seed=3)
    as_int = {i: f"{k * 5:03d}" if k % 2 else str(k * 5) for k, i in enumerate(sorted(truth["ids"]))}
    df["day_key"] = df["day_key"].map(as_int)  # "0", "005", "10", "015", ... mixed zero padding
    raw = read_split(write(df, tmp_path / "c.csv"), COLUMNS)
    expect = sorted(as_int.values(), key=int)
    assert list(raw.window_id) == expect


# --- messages -------------------------------------------------------------------------------------------


def test_typo_in_an_optional_mapping_is_an_error_and_null_leaves_it_out(tmp_path: Path) -> None:
    df, _ = cohort(range(2), seed=4)
    path = write(df, tmp_path / "c.csv")
    typo = COLUMNS.model_copy(update={"subject_id": "subjj"})
    with pytest.raises(DataError) as info:
        read_split(path, typo)
    msg = str(info.value)
    assert "data.columns.subject_id" in msg and "'subjj' (did you mean 'subj'?)" in msg and "null" in msg
    assert read_split(path, COLUMNS.model_copy(update={"subject_id": None})).subject_id is None
    # The simulator's names are the defaults: absent from a cohort CSV, they are simply not read.
    assert read_split(path, COLUMNS).p_bayes is None
    with pytest.raises(DataError, match="data.columns.p_bayes maps.*'p_bayse'"):
        read_split(path, COLUMNS.model_copy(update={"p_bayes": "p_bayse"}))
    with pytest.raises(DataError, match=f"data.columns.latent_prefix.*'L_{DEFAULT_LATENTS[0]}'"):
        read_split(path, COLUMNS.model_copy(update={"latent_prefix": "L_"}))


def test_feature_empty_in_train_is_an_error_constant_one_a_warning(tmp_path: Path) -> None:
    write_cohort(tmp_path)
    train = tmp_path / "cohort_train.csv"
    df = pd.read_csv(train, keep_default_na=False, dtype=str)
    df["diary"] = "NA"
    df["sleep_h"] = "7.5"
    df.to_csv(train, index=False)
    with pytest.raises(DataError) as info:
        load_splits(cohort_data(tmp_path))
    msg = str(info.value)
    assert "'diary' has no value in the whole train split" in msg and str(train) in msg
    df["diary"] = "1"
    df.to_csv(train, index=False)
    raw = load_splits(cohort_data(tmp_path))["train"]
    errors, warnings = feature_report(raw)
    assert errors == [] and len(warnings) == 2
    assert "'sleep_h' is constant (7.5)" in warnings[0] and "'diary' is constant (1)" in warnings[1]


def test_problems_of_all_three_splits_are_reported_together(tmp_path: Path) -> None:
    write_cohort(tmp_path)
    paths = {s: tmp_path / f"cohort_{s}.csv" for s in ("train", "val", "test")}
    df = pd.read_csv(paths["train"], keep_default_na=False, dtype=str)
    df.loc[3, "migraine"] = "2"
    df.to_csv(paths["train"], index=False)
    pd.read_csv(paths["val"], keep_default_na=False, dtype=str).drop(columns=["diary"]).to_csv(
        paths["val"], index=False
    )
    df = pd.read_csv(paths["test"], keep_default_na=False, dtype=str)
    df.loc[10, "hr"] = "24"
    df.to_csv(paths["test"], index=False)
    with pytest.raises(DataError) as info:
        load_splits(cohort_data(tmp_path))
    msg = str(info.value)
    assert msg.startswith("3 data problems")
    assert f"{paths['train']}: column 'migraine'" in msg and "line 5 = 2" in msg
    assert f"{paths['val']}: missing column(s) 'diary'" in msg
    assert f"{paths['test']}: column 'hr'" in msg and "line 12 = 24" in msg


def test_a_window_or_subject_in_two_splits_is_an_error(tmp_path: Path) -> None:
    write_cohort(tmp_path)
    paths = {s: tmp_path / f"cohort_{s}.csv" for s in ("train", "val", "test")}
    val = pd.read_csv(paths["val"], keep_default_na=False, dtype=str)
    train = pd.read_csv(paths["train"], keep_default_na=False, dtype=str)
    # A subject of train with new day keys in val: same subject, different windows.
    moved = val["subj"] == "S010"
    val.loc[moved, "subj"] = "S003"
    val.loc[moved, "day_key"] = (
        val.loc[moved, "day_key"].str.replace("S010", "S003").str.replace("-05-", "-06-")
    )
    val.to_csv(paths["val"], index=False)
    with pytest.raises(DataError) as info:
        load_splits(cohort_data(tmp_path))
    msg = str(info.value)
    assert f"{paths['train']} and {paths['val']}: the splits share subject id(s) 'S003'" in msg
    assert "window id" not in msg
    # Now the same window in test as in train (subject check off: only window ids are compared).
    test = pd.read_csv(paths["test"], keep_default_na=False, dtype=str)
    dup = train[train["day_key"] == "S001-2024-05-02"].copy()
    dup["subj"] = "S014"
    test = test[test["day_key"] != "S014-2024-05-02"]
    pd.concat([test, dup]).to_csv(paths["test"], index=False)
    no_subj = cohort_data(tmp_path).model_copy(
        update={"columns": COLUMNS.model_copy(update={"subject_id": None})}
    )
    with pytest.raises(DataError) as info:
        load_splits(no_subj)
    msg = str(info.value)
    assert f"{paths['train']} and {paths['test']}: the splits share window id(s) 'S001-2024-05-02'" in msg
    assert "subject" not in msg.split("share")[1].split(";")[0]


def test_override_errors_name_the_override_not_the_file(tmp_path: Path) -> None:
    cfg_file = tmp_path / "my.yaml"
    cfg_file.write_text("loss:\n  alpha: 0.2\n  lamm: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(cfg_file, ["loss.lam=-1", "loss.posterior=gauss"])
    lines = str(info.value).splitlines()
    lam = next(line for line in lines if "loss.lam:" in line)
    assert "override 'loss.lam=-1'" in lam and str(cfg_file) not in lam
    post = next(line for line in lines if "loss.posterior:" in line)
    assert "override 'loss.posterior=gauss'" in post
    typo = next(line for line in lines if "loss.lamm" in line)
    assert f"(from config file {cfg_file})" in typo and "(from override" not in typo


def test_simulator_hint_only_for_the_simulators_prefix(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    simulated = []
    monkeypatch.setattr("aline.simulate.simulate", lambda **kw: simulated.append(kw))
    for prefix, hinted in (("synthetic_migraine", True), ("cohort", False)):
        cfg = load_config(None, [f"data.dir={tmp_path / 'nope'}", f"data.prefix={prefix}"])
        with pytest.raises(DataError) as info:
            train_mod.prepare_data(cfg, announce=lambda _: None)
        assert ("python -m aline.simulate" in str(info.value)) is hinted
        assert f"{prefix}_{{train,val,test}}.csv" in str(info.value)
    # The default folder is filled by the simulator only under the simulator's own prefix.
    with pytest.raises(DataError) as info:
        train_mod.prepare_data(load_config(None, ["data.prefix=cohort"]), announce=lambda _: None)
    assert simulated == [] and "simulate" not in str(info.value)


# --- training on a cohort CSV --------------------------------------------------------------------------


def test_cohort_csv_trains_and_predicts_end_to_end(tmp_path: Path, one_torch_thread) -> None:
    """No simulator column at all, text ids, NA cells: train labels-only, then predict from the CLI."""
    data = tmp_path / "data"
    truths = write_cohort(data)
    assert "NA" in (data / "cohort_train.csv").read_text()
    cfg = load_config(None, [f"data.dir={data}", f"run.dir={tmp_path / 'runs'}", *COHORT, *TINY,
                             "trainer.epochs=2", "run.name=cohort"])  # fmt: skip
    result = train_mod.train(cfg, announce=lambda _: None)
    assert result.state == contract.STATE_FINISHED and result.epoch == 2
    saved = yaml.safe_load((result.run_dir / contract.CONFIG_FILE).read_text())
    assert saved["loss"]["posterior"] == "none" and saved["loss"]["bce_into_encoder"] is True

    # Predict input: only id, hour and features matter; a blank label, a bad label and junk are ignored.
    df, _ = cohort(range(14, 18), seed=2)
    df["migraine"] = np.where(np.arange(len(df)) % 2, "", "2")
    df[f"z_{DEFAULT_LATENTS[0]}"] = ""  # a partial, blank latent set
    src = write(df, tmp_path / "new.csv")
    out = tmp_path / "pred.csv"
    hourly = tmp_path / "hourly.csv"
    code = predict_main([str(result.run_dir), str(src), "--out", str(out), "--hourly-out", str(hourly)])
    assert code == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "window_id,p_next,topk_hours"
    written = [line.split(",")[0] for line in lines[1:]]
    assert written == sorted(truths["test"]["ids"])  # the ids exactly as written, one row per window
    p = np.array([float(line.split(",")[1]) for line in lines[1:]])
    assert ((p > 0) & (p < 1)).all()
    # Labels-only: the hourly file has no mu/sigma columns (they are no posterior of anything measured).
    header = hourly.read_text().splitlines()[0].split(",")
    assert header == ["window_id", "hour", "p", "score"]


def test_no_sigma_columns_train_the_posterior_by_nll(tmp_path: Path, one_torch_thread) -> None:
    from aline.simulate import simulate

    data = tmp_path / "data"
    simulate(subjects=12, days=4, seed=5, out_dir=data, progress=False)
    base = [f"data.dir={data}", f"run.dir={tmp_path / 'runs'}", *TINY, "trainer.epochs=1"]
    # With the posterior std and mean columns: mse, the mean fitted to the exact posterior mean.
    splits = train_mod.prepare_data(load_config(None, base), announce=lambda _: None)
    resolved = train_mod.resolve_config(load_config(None, base), splits)
    assert (resolved.loss.posterior, resolved.loss.mean_target) == ("mse", "posterior")
    no_mean = [*base, "data.columns.post_mean_prefix=null"]
    splits = train_mod.prepare_data(load_config(None, no_mean), announce=lambda _: None)
    assert train_mod.resolve_config(load_config(None, no_mean), splits).loss.mean_target == "truth"
    with pytest.raises(DataError, match=r"loss.mean_target=posterior needs .*post_mean_prefix is null"):
        cfg = load_config(None, [*no_mean, "loss.mean_target=posterior"])
        train_mod.prepare_data(cfg, announce=lambda _: None)

    for split in ("train", "val", "test"):
        path = data / f"synthetic_migraine_{split}.csv"
        df = pd.read_csv(path, keep_default_na=False, dtype=str)
        df.drop(columns=[c for c in df.columns if c.startswith("post_std_")]).to_csv(path, index=False)
    splits = train_mod.prepare_data(load_config(None, base), announce=lambda _: None)
    resolved = train_mod.resolve_config(load_config(None, base), splits)
    assert resolved.loss.posterior == "nll" and resolved.loss.bce_into_encoder is False
    assert resolved.loss.mean_target == "truth"  # the NLL's mean term is fitted to the truth
    assert resolved.policy.info_gain == "logprob"  # auto: the latent truth is there to score answers by
    # Asking for the sigma target explicitly is a data error naming the key, before any run folder.
    with pytest.raises(DataError, match="loss.posterior=mse with loss.sigma_target=posterior needs") as info:
        train_mod.prepare_data(load_config(None, [*base, "loss.posterior=mse"]), announce=lambda _: None)
    assert f"'post_std_{DEFAULT_LATENTS[0]}'" in str(info.value) and "None" not in str(info.value)
    null = [*base, "loss.posterior=mse", "data.columns.sigma_prefix=null"]
    with pytest.raises(DataError, match="sigma_prefix is null"):
        train_mod.prepare_data(load_config(None, null), announce=lambda _: None)
    # Without the latent truth, info_gain's auto estimator is the variance form, and logprob is an error.
    blind = [*base, "data.columns.latent_prefix=null", "loss.posterior=none", "policy.reward=info_gain"]
    splits = train_mod.prepare_data(load_config(None, blind), announce=lambda _: None)
    assert train_mod.resolve_config(load_config(None, blind), splits).policy.info_gain == "variance"
    with pytest.raises(DataError, match=r"policy.info_gain=logprob .* needs the latent columns"):
        train_mod.prepare_data(
            load_config(None, [*blind, "policy.info_gain=logprob"]), announce=lambda _: None
        )
    # ... but only where the info_gain reward reads the estimator: with another reward it is no error.
    other = [*blind, "policy.info_gain=logprob", "policy.reward=uncertainty"]
    assert train_mod.prepare_data(load_config(None, other), announce=lambda _: None)["train"].z is None
    assert not (tmp_path / "runs").exists()


def test_init_from_starts_from_the_runs_weights_and_names_feature_differences(
    tmp_path: Path, one_torch_thread, capsys
) -> None:
    data = tmp_path / "data"
    write_cohort(data)
    common = [f"data.dir={data}", f"run.dir={tmp_path / 'runs'}", *COHORT, *TINY, "trainer.epochs=1"]
    first = train_mod.train(load_config(None, [*common, "run.name=a"]), announce=lambda _: None)
    # Fine-tune with a learning rate too small to move the weights: they stay the first run's.
    cfg = load_config(None, [*common, "run.name=b", "optim.lr=1e-12", "sched.name=none"])
    cfg.trainer.init_from = str(first.run_dir)
    second = train_mod.train(cfg, announce=lambda _: None)
    assert (second.run_dir / contract.NORMALIZER_FILE).read_text() == (
        first.run_dir / contract.NORMALIZER_FILE
    ).read_text()
    a = load_state_dict(first.run_dir / "checkpoints" / "last.pt")
    b = load_state_dict(second.run_dir / "checkpoints" / "last.pt")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
    assert load_predictor(second.run_dir).normalizer.feature_names == tuple(FEATURES)

    other = [f"data.columns.features=[{FEATURES[1]},{FEATURES[0]},extra]"]
    df = pd.read_csv(data / "cohort_train.csv", keep_default_na=False, dtype=str)
    for split in ("train", "val", "test"):
        path = data / f"cohort_{split}.csv"
        df = pd.read_csv(path, keep_default_na=False, dtype=str)
        df["extra"] = "1.5"
        df.loc[0, "extra"] = "2"
        df.to_csv(path, index=False)
    # The command line, in-process (the CLI's own argument parsing and exit code; no interpreter start-up).
    assert train_mod.main(["--init-from", str(first.run_dir), *common, *other]) == 2
    err = capsys.readouterr().err
    assert "features differ" in err and "['extra']" in err and "['diary']" in err
    assert "Traceback" not in err


def test_cli_reports_data_problems_of_every_split_with_exit_2(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    write_cohort(data)
    for split in ("val", "test"):
        path = data / f"cohort_{split}.csv"
        df = pd.read_csv(path, keep_default_na=False, dtype=str)
        df.loc[0, "hr_bpm"] = "fast"
        df.to_csv(path, index=False)
    assert train_mod.main([f"data.dir={data}", f"run.dir={tmp_path / 'runs'}", *COHORT]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "cohort_val.csv: column 'hr_bpm'" in err and "cohort_test.csv: column 'hr_bpm'" in err
    assert not (tmp_path / "runs").exists()
