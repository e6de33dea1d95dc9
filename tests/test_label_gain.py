"""Asking on a cohort without an oracle: the label's reward, learning from it, the answer channel, the pool's
rules, the answers-mapping check, oracle-free splits, the bootstrap interval and the set-level metric."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.evalhelp import make_data, make_run
from helpers.loop_training import toy_batch, toy_config, train_steps, trainer_like_adam
from helpers.rawsplit import raw_split

from aline import evaluate, scoring
from aline.config import load_config
from aline.data import DataError, load_splits
from aline.model import asking
from aline.model.network import AlineModel
from aline.training.closed_loop import LoopSpec, loop_eval
from aline.training.losses import label_gain_reward, set_policy_loss
from aline.training.metrics import PolicySetValue

HOURS = 24


# --- the reward ----------------------------------------------------------------------------------------


def test_label_gain_is_the_log_likelihood_gain_of_the_observed_label() -> None:
    rng = np.random.default_rng(0)
    logit0 = rng.normal(0, 3, 50)
    logit1 = rng.normal(0, 3, (4, 50))
    y = (rng.random(50) < 0.3).astype(np.float64)
    got = label_gain_reward(torch.tensor(logit0), torch.tensor(logit1), torch.tensor(y)).numpy()
    # From the two passes' probabilities, in NumPy: log p(y | answers) - log p(y | day as logged).
    p0, p1 = 1 / (1 + np.exp(-logit0)), 1 / (1 + np.exp(-logit1))
    want = np.log(np.where(y == 1, p1, 1 - p1)) - np.log(np.where(y == 1, p0, 1 - p0))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    # Confident wrong forecasts stay finite (computed from logits, no log(0)).
    extreme = label_gain_reward(torch.tensor([40.0]), torch.tensor([[-40.0]]), torch.tensor([0.0]))
    assert torch.isfinite(extreme).all() and float(extreme) == pytest.approx(40.0, abs=1e-6)


def test_expected_label_gain_is_the_mean_of_the_observed_one_under_the_new_forecast() -> None:
    rng = np.random.default_rng(1)
    logit0, logit1 = rng.normal(0, 2, 30), rng.normal(0, 2, (3, 30))
    t = torch.tensor
    expected = label_gain_reward(t(logit0), t(logit1), t(np.zeros(30)), "expected").numpy()
    p1 = 1 / (1 + np.exp(-logit1))
    ones = label_gain_reward(t(logit0), t(logit1), t(np.ones(30))).numpy()
    zeros = label_gain_reward(t(logit0), t(logit1), t(np.zeros(30))).numpy()
    np.testing.assert_allclose(expected, p1 * ones + (1 - p1) * zeros, rtol=1e-9, atol=1e-12)
    assert (expected >= -1e-12).all()  # a KL divergence


def test_leave_one_out_removes_what_all_samples_of_a_window_share() -> None:
    # Samples of one window share its label: a reward shifted per window leaves the policy loss unchanged.
    rng = np.random.default_rng(2)
    log_prob = torch.tensor(rng.normal(size=(4, 6)), requires_grad=True)
    reward = torch.tensor(rng.normal(size=(4, 6)))
    shift = torch.tensor(rng.normal(0, 10, size=(1, 6)))
    a = set_policy_loss(log_prob, reward, "loo")
    b = set_policy_loss(log_prob, reward + shift, "loo")
    torch.testing.assert_close(a, b)


# --- learning from the label alone ---------------------------------------------------------------------


def _key_hour_batch(n: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Features [asleep, rating, key] + the answer channel; the rating is never logged. Each window has a
    key hour, flagged by the visible ``key`` input at a random awake hour: its answer is the sign of the
    next-day label plus small noise. Every other answer is noise. No latent truth, no query value."""
    asleep = np.zeros((n, HOURS), dtype=np.float32)
    asleep[:, :12] = 1.0
    key_hour = rng.integers(12, HOURS, n)
    key = np.zeros((n, HOURS), dtype=np.float32)
    key[np.arange(n), key_hour] = 1.0
    y = (rng.random(n) < 0.5).astype(np.float32)
    answer = rng.normal(0, 1, (n, HOURS))
    answer[np.arange(n), key_hour] = (2 * y - 1) * 1.5 + rng.normal(0, 0.3, n)
    return toy_batch(asleep, key, answer, y, key=key)


@pytest.mark.slow
def test_the_label_reward_learns_to_ask_the_hour_that_decides_the_label(one_torch_thread) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cfg = toy_config("key", "policy.reward=label_gain", "policy.k=3", "loss.posterior=none")
    spec = LoopSpec.from_config(cfg)
    assert spec.feature == 3  # the answer channel after the three features
    model = AlineModel(4, 1, d_model=32, layers=1, detach_prediction=False)
    opt = trainer_like_adam(model)
    val = _key_hour_batch(400, np.random.default_rng(99))

    def asks_the_key_hour() -> float:
        model.eval()
        res = loop_eval(model, val, cfg, spec)
        return float((res["asked"] * val["key"]).sum(1).mean())

    before = asks_the_key_hour()
    train_steps(model, opt, _key_hour_batch, cfg, 200, rng)
    after = asks_the_key_hour()
    # Three random awake hours hold the key one a quarter of the time.
    assert after > 0.8 and after > before + 0.5, (before, after)
    model.eval()
    res = loop_eval(model, val, cfg, spec)
    p_asked, y = res["p_asked"].double(), val["y"].double()
    with torch.no_grad():
        p_day = model(val["x"], val["mask"]).p_next.double()
    assert float(((p_asked - y) ** 2).mean()) < float(((p_day - y) ** 2).mean()) - 0.1


def _noisy_hours_batch(n: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Features [asleep, rating, noisy] + the answer channel; the rating is never logged. The day's state u
    decides the label; every awake hour's answer reads u, with noise variance 0.05, or 4 where the visible
    ``noisy`` input is 1 (half the awake hours, at random). No latent truth, no query value."""
    asleep = np.zeros((n, HOURS), dtype=np.float32)
    asleep[:, :12] = 1.0
    noisy = ((rng.random((n, HOURS)) < 0.5) & (asleep == 0)).astype(np.float32)
    u = rng.normal(0, 1, (n, 1))
    y = (rng.random(n) < 1 / (1 + np.exp(-3 * u[:, 0]))).astype(np.float32)
    answer = u + rng.normal(0, 1, (n, HOURS)) * np.where(noisy > 0, 2.0, 0.05**0.5)
    return toy_batch(asleep, noisy, answer, y, noisy=noisy)


@pytest.mark.slow
def test_fitted_to_its_readings_the_kalman_encoder_learns_from_labels_to_ask_the_quiet_hours(
    one_torch_thread,
) -> None:
    """Labels only, as the kalman preset trains: what an answer is worth shows only in how noisy it is.
    With the readings' likelihood (which teaches the filter that noise) and the expected label gain that
    ``auto`` takes with it, the policy learns to ask the quiet hours."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cfg = toy_config("noisy", "policy.reward=label_gain", "loss.posterior=none", "loss.readings=1.0")
    spec = LoopSpec.from_config(cfg)
    model = AlineModel(4, 1, encoder="kalman", d_model=16, measurements=[1, 3], detach_prediction=False)
    opt = trainer_like_adam(model)
    val = _noisy_hours_batch(400, np.random.default_rng(99))

    def quiet_share() -> float:
        model.eval()
        res = loop_eval(model, val, cfg, spec)
        return float((res["asked"] * (1 - val["noisy"])).sum() / res["asked"].sum())

    before = quiet_share()
    train_steps(model, opt, _noisy_hours_batch, cfg, 150, rng)
    after = quiet_share()
    assert after > 0.9 and after > before + 0.3, (before, after)  # random awake hours: half are quiet


# --- the pool and the answers mapping ------------------------------------------------------------------


def _with_asleep_answers(data: Path) -> int:
    """Write answers at every unlogged asleep hour of train; returns how many were added."""
    path = data / "synthetic_migraine_train.csv"
    df = pd.read_csv(path)
    bad = (df["asleep"] > 0) & df["symptom_score"].isna() & df["ask_symptom_score"].isna()
    df.loc[bad, "ask_symptom_score"] = 0.5
    df.to_csv(path, index=False)
    return int(bad.sum())


def test_answers_at_unaskable_hours_are_dropped_with_a_count(tmp_path: Path) -> None:
    from aline.train import prepare_data
    from aline.training.run_data import pool_for

    data = make_data(tmp_path / "data")
    added = _with_asleep_answers(data)
    assert added > 0
    cfg = load_config(None, [f"data.dir={data}"])
    said: list[str] = []
    splits = prepare_data(cfg, announce=said.append)
    warnings = [m for m in said if "synthetic_migraine_train.csv: dropped" in m]
    assert len(warnings) == 1 and f"dropped {added} answer(s)" in warnings[0], said
    train = splits["train"]
    names = list(train.feature_names)
    asleep = train.features[:, :, names.index("asleep")] > 0
    unlogged = np.isnan(train.features[:, :, names.index("symptom_score")])
    assert not (asleep & unlogged & ~np.isnan(train.answers)).any()
    assert not (pool_for(cfg, train) & asleep).any()


def _raw(logged: np.ndarray, answers: np.ndarray):
    feats = np.stack([np.zeros_like(logged), logged], axis=-1)
    return raw_split(feats, ("asleep", "heart_rate"), answers, "heart_rate")


def test_the_answers_mapping_is_checked_by_range_and_by_agreement() -> None:
    rng = np.random.default_rng(3)
    n = 200
    truth = rng.normal(70, 10, (n, HOURS))  # a heart rate
    logged = np.where(rng.random((n, HOURS)) < 0.3, truth, np.nan)
    # Answers of the same quantity: fine.
    assert (
        asking.answer_mapping_problem(_raw(logged, truth + rng.normal(0, 2, truth.shape)), "ask_hr") is None
    )
    # A 0-10 symptom score mapped onto heart rate: out of range, named with both columns.
    problem = asking.answer_mapping_problem(_raw(logged, rng.uniform(0, 10, truth.shape)), "ask_symptom")
    assert problem is not None and "'ask_symptom'" in problem and "'heart_rate'" in problem
    assert "outside the feature's observed range" in problem
    # Same scale but unrelated to what was logged where both exist: refused by the correlation.
    shuffled = rng.permutation(truth.ravel()).reshape(truth.shape)
    problem = asking.answer_mapping_problem(_raw(logged, shuffled), "ask_other")
    assert problem is not None and "correlate" in problem and "'ask_other'" in problem


@pytest.mark.slow  # a fresh interpreter importing torch
def test_a_mismatched_answers_mapping_exits_2_naming_both_columns(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data")
    for split in ("train", "val", "test"):
        path = data / f"synthetic_migraine_{split}.csv"
        df = pd.read_csv(path)
        df["heart_rate"] = df["heart_rate"] * 10 + 70  # beats per minute, against a 0-10 style answer
        df.to_csv(path, index=False)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "aline.train",
            f"data.dir={data}",
            f"run.dir={tmp_path / 'runs'}",
            "data.columns.answers={heart_rate: ask_symptom_score}",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "'ask_symptom_score'" in proc.stderr and "'heart_rate'" in proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# --- oracle-free splits ------------------------------------------------------------------------------------


REFERENCES = ("post_mean_", "post_std_", "query_value", "p_bayes", "p_true")


def _strip(data: Path, split: str, latents: bool = False) -> None:
    path = data / f"synthetic_migraine_{split}.csv"
    df = pd.read_csv(path)
    drop = [c for c in df.columns if c.startswith(REFERENCES) or (latents and c.startswith("z_"))]
    df.drop(columns=drop).to_csv(path, index=False)


def test_val_and_test_may_carry_references_that_train_lacks_never_the_reverse(tmp_path: Path) -> None:
    cfg = load_config(None, [f"data.dir={make_data(tmp_path / 'a')}"])
    _strip(Path(cfg.data.dir), "train")
    splits = load_splits(cfg.data)
    assert splits["train"].query_value is None and splits["val"].query_value is not None

    cfg = load_config(None, [f"data.dir={make_data(tmp_path / 'b')}"])
    _strip(Path(cfg.data.dir), "val")
    with pytest.raises(DataError, match="synthetic_migraine_val.csv: carries a different set"):
        load_splits(cfg.data)


@pytest.mark.slow
def test_a_run_trained_without_references_says_so(tmp_path: Path) -> None:
    from aline.train import train

    data = make_data(tmp_path / "data")
    _strip(data, "train", latents=True)
    for split in ("val", "test"):  # z_* must match across splits; the other references may stay
        path = data / f"synthetic_migraine_{split}.csv"
        df = pd.read_csv(path)
        df.drop(columns=[c for c in df.columns if c.startswith("z_")]).to_csv(path, index=False)
    cfg = load_config(
        None,
        [
            f"data.dir={data}",
            f"run.dir={tmp_path / 'runs'}",
            "trainer.epochs=1",
            "model.d_model=16",
            "logging.progress=false",
        ],
    )
    result = train(cfg, announce=lambda _: None)
    saved = load_config(result.run_dir / "config.yaml")
    status = json.loads((result.run_dir / "status.json").read_text())
    assert saved.data.oracle_free is True and status["oracle_free"] is True
    assert saved.policy.reward == "label_gain" and saved.loss.posterior == "none"
    # Validation still scores the policy by the val split's query value, which training never read.
    rows = pd.read_csv(result.run_dir / "metrics.csv")
    val = rows[rows["split"] == "val"]
    assert np.isfinite(val["policy_value"]).all()


def test_oracle_free_true_ignores_the_train_splits_references(tmp_path: Path) -> None:
    from aline.train import prepare_data
    from aline.training.run_data import resolve_config

    cfg = load_config(None, [f"data.dir={make_data(tmp_path / 'data')}", "data.oracle_free=true"])
    said: list[str] = []
    splits = prepare_data(cfg, announce=said.append)
    train = splits["train"]
    assert train.query_value is None and train.sigma is None and train.post_mean is None
    assert train.p_bayes is None and train.p_true is None and train.z is not None
    assert splits["val"].query_value is not None  # val keeps its references, to score by
    assert any("data.oracle_free=true" in m for m in said)
    resolved = resolve_config(cfg, splits)
    assert resolved.data.oracle_free is True and resolved.policy.reward == "info_gain"


# --- evaluation without an oracle ------------------------------------------------------------------------


def test_the_bootstrap_interval_agrees_with_scipys() -> None:
    from scipy.stats import bootstrap

    rng = np.random.default_rng(5)
    diff = rng.normal(0.01, 0.2, 800)
    ours = scoring.paired_bootstrap(diff, level=0.9, draws=4000, seed=1)
    ref = bootstrap(
        (diff,), np.mean, confidence_level=0.9, n_resamples=20000, method="percentile", random_state=2
    ).confidence_interval
    assert ours["mean"] == pytest.approx(diff.mean())
    width = ref.high - ref.low
    assert ours["lo"] == pytest.approx(ref.low, abs=0.05 * width)
    assert ours["hi"] == pytest.approx(ref.high, abs=0.05 * width)
    # And a direct recomputation with the same generator gives the same ends to the last bit.
    g = np.random.default_rng(1)
    means = [diff[g.integers(0, 800, 800)].mean() for _ in range(4000)]
    assert (ours["lo"], ours["hi"]) == tuple(np.quantile(means, [0.05, 0.95]))


def test_evaluation_without_reference_columns_scores_every_strategy(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data")
    for split in ("train", "val", "test"):
        _strip(data, split, latents=True)
    run = make_run(tmp_path, data_dir=data)
    result = evaluate.evaluate(run, "val", figures=False)
    report = result.report
    asking_ = report["asking"]
    for name in ("none", "trained", "random", "fixed_schedule", "best_fixed", "uncertainty", "label_oracle"):
        entry = asking_[name]
        assert np.isfinite(entry["brier_model"]) and np.isfinite(entry["log_loss_model"]), name
        assert entry["query_value_share"] is None and entry["set_share"] is None
    assert report["asking_detail"]["best_fixed_chosen_by"].startswith("the model's label")
    assert len(report["asking_detail"]["best_fixed_hours"]) == report["k"]
    # The paired difference, recomputed from the model's own forecasts after each strategy's answers.
    from aline import predict
    from aline.data import read_split
    from aline.evaluation.strategies import random_in_pool

    predictor = predict.load(run)
    raw = read_split(data / "synthetic_migraine_val.csv", predictor.cfg.data.columns)
    pred = predictor.predict_raw(raw, reveal_answers=False)
    y = raw.y.astype(np.float64)
    p_trained = predictor.forecast_after(raw, pred.asked & pred.pool)
    p_random = predictor.forecast_after(raw, random_in_pool(pred.pool, predictor.k))
    diff = (p_trained - y) ** 2 - (p_random - y) ** 2
    got = report["asking_detail"]["paired"]["trained_minus_random"]["brier"]
    assert got["mean"] == pytest.approx(diff.mean(), rel=1e-9, abs=1e-12)
    assert got["lo"] <= got["mean"] <= got["hi"]
    assert asking_["trained"]["brier_model"] == pytest.approx(np.mean((p_trained - y) ** 2))


# --- the set-level metric ---------------------------------------------------------------------------------


def test_policy_set_value_scores_the_asked_sets_in_window_order() -> None:
    rng = np.random.default_rng(6)
    n = 40
    asked = rng.random((n, HOURS)) < 0.1
    weights = rng.random((n, HOURS))
    seen: list[np.ndarray] = []

    def share(mask: np.ndarray) -> float:
        seen.append(mask)
        return float((weights * mask).sum() / weights.sum())

    metric = PolicySetValue(share)
    metric.reset()
    order = rng.permutation(n)
    for part in np.array_split(order, 5):  # shuffled batches, as several processes would hand them in
        metric.update(
            {"index": torch.from_numpy(part), "asked": torch.from_numpy(asked[part].astype(np.float32))}
        )
    assert metric.compute() == pytest.approx(float((weights * asked).sum() / weights.sum()))
    np.testing.assert_array_equal(seen[-1], asked)
    none = PolicySetValue(None)
    none.reset()
    none.update({"index": torch.arange(2), "asked": torch.zeros(2, HOURS)})
    assert np.isnan(none.compute())


@pytest.mark.slow  # a fresh interpreter importing torch
def test_predict_answers_without_an_answer_column_exits_2(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    day = tmp_path / "day.csv"
    frame = pd.read_csv(load_config(run / "config.yaml").data.split_path("val"))
    frame.drop(columns=["ask_symptom_score"]).to_csv(day, index=False)
    cmd = [sys.executable, "-m", "aline.predict", str(run), str(day), "--answers", "--out", "-"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "ask_symptom_score" in proc.stderr and "no answer column" in proc.stderr
    # A stray, unreadable answer column is no concern of a plain prediction.
    frame.assign(ask_symptom_score="n/a").to_csv(day, index=False)
    plain = subprocess.run(cmd[:-3] + ["--out", "-"], capture_output=True, text=True)
    assert plain.returncode == 0, plain.stderr


@pytest.mark.slow
def test_a_simulated_split_without_its_references_is_scored_without_the_exact_model(tmp_path: Path) -> None:
    from aline.simulate import simulate

    data = tmp_path / "data"
    simulate(subjects=20, days=6, seed=3, out_dir=data, progress=False)
    for split in ("train", "val", "test"):
        _strip(data, split, latents=True)
    run = make_run(tmp_path, data_dir=data)
    report = evaluate.evaluate(run, "test", figures=False).report
    assert report["asking"]["oracle"]["brier_model"] is None  # no exact model: no oracle strategy
    assert np.isfinite(report["asking"]["trained"]["brier_model"])
    assert report["asking"]["trained"]["set_share"] is None


# --- the readings' likelihood: how a labels-only model learns what an answer is worth -------------------


def test_labels_only_fits_the_kalman_encoder_to_its_readings_and_hints_at_it(tmp_path: Path) -> None:
    from aline.train import KALMAN_HINT, KALMAN_INFO_GAIN_HINT, encoder_hint, prepare_data
    from aline.training.run_data import resolve_config

    data = make_data(tmp_path / "data")
    for split in ("train", "val", "test"):
        _strip(data, split, latents=True)
    resolved = {}
    for encoder in ("gru", "kalman"):
        cfg = load_config(None, [f"data.dir={data}", f"model.encoder={encoder}"])
        resolved[encoder] = resolve_config(cfg, prepare_data(cfg, announce=lambda _: None))
    assert resolved["kalman"].loss.readings == 1.0 and resolved["kalman"].policy.reward == "label_gain"
    assert resolved["gru"].loss.readings == 0.0  # the GRU has no likelihood of its readings
    # Fitted to its readings, the model moves its forecast by what an answer is worth: the expected gain.
    assert resolved["kalman"].policy.label_gain == "expected"
    assert resolved["gru"].policy.label_gain == "observed"
    explicit = load_config(None, [f"data.dir={data}", "model.encoder=kalman", "loss.readings=0.25"])
    assert resolve_config(explicit, prepare_data(explicit, announce=lambda _: None)).loss.readings == 0.25
    # With the latent truth the posterior is fitted to it, and the readings term is off unless asked for.
    with_truth = load_config(None, [f"data.dir={make_data(tmp_path / 'z')}", "model.encoder=kalman"])
    assert resolve_config(with_truth, prepare_data(with_truth, announce=lambda _: None)).loss.readings == 0.0
    assert encoder_hint(resolved["gru"]) == KALMAN_HINT and encoder_hint(resolved["kalman"]) is None
    # info_gain with the exact posterior in train: no advice; without it, the same advice in its own words.
    gru_truth = load_config(None, [f"data.dir={tmp_path / 'z'}", "policy.reward=info_gain"])
    assert encoder_hint(resolve_config(gru_truth, prepare_data(gru_truth, announce=lambda _: None))) is None
    _strip(tmp_path / "z", "train")
    resolved_free = resolve_config(gru_truth, prepare_data(gru_truth, announce=lambda _: None))
    assert resolved_free.loss.posterior == "nll" and encoder_hint(resolved_free) == KALMAN_INFO_GAIN_HINT
    assert all("configs/model/kalman.yaml" in h for h in (KALMAN_HINT, KALMAN_INFO_GAIN_HINT))


def test_l_post_takes_the_readings_nll_of_both_halves_of_the_loops_pass() -> None:
    from aline.model.network import AlineOutput
    from aline.training.losses import readings_part

    cfg = load_config(None, ["loss.readings=0.5"]).loss
    b = 3
    nll = torch.tensor([1.0, 2.0, 3.0, 5.0, 7.0, 11.0])  # [2B]: the day as logged, then with its answers
    zeros = torch.zeros(2 * b, HOURS, 1)

    def out(readings):
        return AlineOutput(zeros, zeros + 1.0, zeros[..., 0], zeros[..., 0], readings_nll=readings)

    both_halves = 0.5 * (nll[:b] + nll[b:]).numpy()
    np.testing.assert_allclose(readings_part(out(nll), {}, cfg, b).numpy(), 0.5 * both_halves)
    np.testing.assert_allclose(readings_part(out(nll[:b]), {}, cfg, b).numpy(), 0.5 * nll[:b].numpy())
    assert torch.equal(readings_part(out(None), {}, cfg, b), torch.zeros(b))  # an encoder without readings
    # auto, resolved from the batch as resolve_config does from the data: on with labels only, off with z.
    auto = load_config(None, []).loss
    np.testing.assert_allclose(readings_part(out(nll[:b]), {}, auto, b).numpy(), nll[:b].numpy())
    assert torch.equal(readings_part(out(nll[:b]), {"z": zeros[:b]}, auto, b), torch.zeros(b))
