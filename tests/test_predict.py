"""aline.predict: loading a run weights-only, predicting from CSV or DataFrame, the CLI contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.evalhelp import make_run

from aline import contract, evaluate, predict
from aline.config import DEFAULT_FEATURES, load_config
from aline.data import DataError, read_split
from aline.data.dataset import Normalizer, WindowDataset
from aline.model.network import build_model


class NotWeights:
    """Any class instance: pickling it stores a reference to this module's code."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("pred"))


def _val_path(run: Path) -> Path:
    return load_config(run / contract.CONFIG_FILE).data.split_path("val")


@pytest.mark.slow  # a fresh interpreter importing torch: several seconds on a busy machine
def test_predict_cli_reproduces_the_evaluators_probabilities_exactly(run: Path, tmp_path: Path) -> None:
    result = evaluate.evaluate(run, "val", figures=False)
    out = tmp_path / "pred.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "aline.predict", str(run), str(_val_path(run)), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    pred = pd.read_csv(out)
    assert list(pred.columns) == ["window_id", "p_next", "topk_hours"]
    ev = pd.read_csv(result.predictions_path)
    np.testing.assert_array_equal(pred["window_id"].to_numpy(), ev["window_id"].to_numpy())
    np.testing.assert_array_equal(pred["p_next"].to_numpy(), ev["p"].to_numpy())  # bit for bit
    assert list(pred["topk_hours"]) == list(ev["topk_hours"])


def test_outputs_match_a_direct_forward_pass(run: Path) -> None:
    predictor = predict.load(run)
    prediction = predictor.predict(_val_path(run))
    cfg = load_config(run / contract.CONFIG_FILE)
    raw = read_split(_val_path(run), cfg.data.columns)
    ds = WindowDataset(raw, Normalizer.load(run / contract.NORMALIZER_FILE), answer_channel=True)
    model = build_model(cfg, len(DEFAULT_FEATURES))
    best = json.loads((run / contract.STATUS_FILE).read_text())["best"]["checkpoint"]
    model.load_state_dict(torch.load(run / best)["model"])
    model.eval()
    with torch.no_grad():
        b = ds.__getitems__(list(range(len(ds))))
        out = model(b["x"], b["mask"])
    np.testing.assert_allclose(prediction.p_next, out.p_next.numpy(), atol=1e-6)
    np.testing.assert_allclose(prediction.mu_z, out.mu_z.numpy(), atol=1e-5)
    np.testing.assert_allclose(prediction.sigma_z, out.sigma_z.numpy(), atol=1e-5)
    # Top-k hours: the k largest scores in the deployment pool (awake, not busy, symptom score not
    # logged; the input's answer column is ignored without answers=True), ascending, by a NumPy sort.
    names = list(DEFAULT_FEATURES)
    f = raw.features
    awake = (f[:, :, names.index("asleep")] == 0) & (f[:, :, names.index("busy")] == 0)
    awake &= np.isnan(f[:, :, names.index("symptom_score")])
    expected = np.sort(np.argsort(-np.where(awake, out.scores.numpy(), -np.inf), axis=1)[:, :3], axis=1)
    np.testing.assert_array_equal(prediction.topk_hours, expected)
    assert predictor.checkpoint == run / best


def test_dataframe_with_features_only_and_gaps_gives_the_csv_result(run: Path) -> None:
    predictor = predict.load(run)
    full = pd.read_csv(_val_path(run))
    slim = full[["window_id", "hour", *DEFAULT_FEATURES]].sample(frac=1.0, random_state=0)  # rows shuffled
    from_df = predictor.predict(slim)
    from_csv = predictor.predict(_val_path(run))
    np.testing.assert_array_equal(from_df.window_id, from_csv.window_id)
    np.testing.assert_array_equal(from_df.p_next, from_csv.p_next)
    assert slim[list(DEFAULT_FEATURES)].isna().any().any()  # the input really had missing values

    hourly = from_df.hourly_frame()
    assert len(hourly) == 24 * len(from_df)
    assert {"mu_stress", "sigma_env_load", "hour", "window_id"} <= set(hourly.columns)
    assert (hourly.filter(like="sigma_") > 0).all().all()
    frame = from_df.to_frame()
    hours = [list(map(int, s.split())) for s in frame["topk_hours"]]
    assert all(len(h) == 3 and h == sorted(set(h)) and h[0] >= 0 and h[-1] <= 23 for h in hours)


def test_batch_size_does_not_change_predictions(run: Path) -> None:
    a = predict.load(run, batch_size=7).predict(_val_path(run))
    b = predict.load(run, batch_size=4096).predict(_val_path(run))
    np.testing.assert_allclose(a.p_next, b.p_next, atol=1e-6)
    np.testing.assert_array_equal(a.topk_hours, b.topk_hours)


def test_invalid_input_raises_the_trainings_data_errors(run: Path) -> None:
    predictor = predict.load(run)
    full = pd.read_csv(_val_path(run))
    with pytest.raises(DataError, match=r"input DataFrame.*missing column\(s\) 'steps'"):
        predictor.predict(full.drop(columns=["steps"]))
    with pytest.raises(DataError, match=r"exactly 24 rows.*window '120'"):
        predictor.predict(full.drop(index=[5]))
    bad = full.astype({"hrv": object})
    bad.loc[48, "hrv"] = "high"
    with pytest.raises(DataError, match=r"'hrv'.*text in a numeric column.*\b50\b"):
        predictor.predict(bad)
    with pytest.raises(DataError, match="file not found"):
        predictor.predict(Path("/nonexistent/day.csv"))


def test_checkpoint_with_a_pickled_object_is_refused(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = torch.load(run / contract.CHECKPOINT_DIR / contract.LAST_CHECKPOINT, weights_only=True)
    evil = tmp_path / "evil.pt"
    torch.save({"model": state["model"], "extra": NotWeights()}, evil)
    with pytest.raises(predict.RunError, match="refused: the checkpoint holds pickled Python objects"):
        predict.load(run, checkpoint=evil)
    assert predict.main([str(run), str(_val_path(run)), "--checkpoint", str(evil)]) == 2
    err = capsys.readouterr().err
    assert "pickled Python objects (here test_predict.NotWeights)" in err and err.count("\n") == 1


def test_checkpoint_file_and_bare_state_dict_load(run: Path, tmp_path: Path) -> None:
    last = run / contract.CHECKPOINT_DIR / contract.LAST_CHECKPOINT
    by_file = predict.load(last)
    assert by_file.run_dir == run and by_file.checkpoint == last
    bare = tmp_path / "bare.pt"
    torch.save(torch.load(last, weights_only=True)["model"], bare)
    a = predict.load(run, checkpoint=bare).predict(_val_path(run))
    b = by_file.predict(_val_path(run))
    np.testing.assert_array_equal(a.p_next, b.p_next)


def test_weights_of_another_model_are_reported(run: Path, tmp_path: Path) -> None:
    cfg = load_config(run / contract.CONFIG_FILE, ["model.d_model=8"])
    other = tmp_path / "other.pt"
    torch.save({"model": build_model(cfg, len(DEFAULT_FEATURES)).state_dict()}, other)
    with pytest.raises(predict.RunError, match="do not fit the model"):
        predict.load(run, checkpoint=other)
    with pytest.raises(predict.RunError, match="no such run folder"):
        predict.load(tmp_path / "missing-run")


def test_cli_help_and_stdout(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        predict.main(["--help"])
    text = capsys.readouterr().out
    for option in ("RUN", "INPUT.csv", "--out", "--hourly-out", "--checkpoint", "--batch-size"):
        assert option in text
    assert predict.main([str(run), str(_val_path(run))]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "window_id,p_next,topk_hours" and len(lines) == 61


def test_predict_proposes_askable_hours_only_and_filled_answers_update_the_forecast(tmp_path: Path) -> None:
    run = make_run(tmp_path, overrides=("data.columns.answers={symptom_score: ask_symptom_score}",))
    predictor = predict.load(run)
    full = pd.read_csv(_val_path(run)).sort_values(["window_id", "hour"]).reset_index(drop=True)
    day = full.drop(columns=["ask_symptom_score"])  # deployment: no answers yet
    first = predictor.predict(day)
    asleep = day["asleep"].to_numpy().reshape(-1, 24)
    busy = day["busy"].to_numpy().reshape(-1, 24)
    logged = day["symptom_score"].notna().to_numpy().reshape(-1, 24)
    askable = (asleep == 0) & (busy == 0) & ~logged
    assert first.asked.any()
    assert not (first.asked & ~askable).any(), "a proposed hour is asleep or already logged"
    np.testing.assert_array_equal(first.asked.sum(axis=1), np.minimum(askable.sum(axis=1), 3))
    rows = np.flatnonzero(first.asked.ravel())
    for text, mask in zip(first.to_frame()["topk_hours"], first.asked, strict=True):
        assert sorted(int(h) for h in text.split()) == np.flatnonzero(mask).tolist()

    # The patient answers: the answers go into the answer column and enter the model as answers.
    filled = day.copy()
    filled["ask_symptom_score"] = np.nan
    filled.loc[rows, "ask_symptom_score"] = full.loc[rows, "ask_symptom_score"].to_numpy()
    second = predictor.predict(filled, answers=True)
    raw = read_split(_val_path(run), predictor.cfg.data.columns)
    np.testing.assert_allclose(second.p_next, predictor.forecast_after(raw, first.asked), atol=1e-6)
    assert (np.abs(second.p_next - first.p_next) > 1e-6).mean() > 0.5  # the untrained head is small
    assert not (second.asked & first.asked).any(), "an answered hour is proposed again"
    assert not (second.asked & ~askable).any()
    # Without answers=True the answer column is ignored: the day as logged.
    np.testing.assert_array_equal(predictor.predict(filled).p_next, first.p_next)
    # The same values written as if the patient had logged them are another input: the logging pattern
    # changes, the answer channel stays empty.
    as_logged = day.copy()
    as_logged.loc[rows, "symptom_score"] = full.loc[rows, "ask_symptom_score"].to_numpy()
    third = predictor.predict(as_logged)
    assert (np.abs(third.p_next - second.p_next) > 1e-6).mean() > 0.5
