"""aline.training.metrics against scikit-learn / NumPy references, via a real ignite Engine and directly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from ignite.exceptions import NotComputableError
from sklearn.metrics import average_precision_score, roc_auc_score

from aline import contract
from aline.training.metrics import (
    CALIBRATION_METRIC,
    ECE,
    ROCAUC,
    TOPK_METRIC,
    AskedForecast,
    AskOutsidePool,
    Brier,
    CalibrationTable,
    PolicyValue,
    TopkFrequency,
    WindowMean,
    attach_training_metrics,
    attach_validation_metrics,
    validation_metrics,
)

K = 3
HOURS = 24
BINS = 15


def make_windows(n: int = 203, k: int = K, seed: int = 0) -> dict[str, torch.Tensor]:
    """One row per window in the evaluator's output format (float32 like a model's outputs)."""
    rng = np.random.default_rng(seed)
    p = rng.beta(0.8, 2.5, n)
    p[:3] = [0.0, 1.0, 0.5]  # the closed ends of the first and last bins, and a bin middle
    y = (rng.random(n) < p).astype(np.float32)
    f32 = {name: torch.from_numpy(rng.gamma(2.0, 0.5, n).astype(np.float32)) for name in _LOSSES}
    best = rng.gamma(3.0, 1.0, n)
    topk = np.sort(np.stack([rng.choice(HOURS, k, replace=False) for _ in range(n)]), axis=1)
    asked = np.zeros((n, HOURS), dtype=np.float32)
    asked[np.arange(n)[:, None], topk] = 1.0
    # The pool holds the asked hours except in every 7th window (an ask outside it), plus random others.
    pool = np.maximum(asked, (rng.random((n, HOURS)) < 0.4).astype(np.float32))
    pool[::7, topk[::7, 0]] = 0.0
    p_asked = np.clip(p + rng.normal(0, 0.05, n), 0.0, 1.0)
    gain_rho = np.where(rng.random(n) < 0.3, rng.uniform(-1, 1, n), np.nan)
    return {
        "index": torch.arange(n, dtype=torch.int64),
        "p": torch.from_numpy(p.astype(np.float32)),
        "y": torch.from_numpy(y),
        **f32,
        "post_sq_err": torch.from_numpy(rng.gamma(1.0, 0.3, n).astype(np.float32)),
        "sigma_abs_err": torch.from_numpy(rng.gamma(1.0, 0.1, n).astype(np.float32)),
        "policy_qv": torch.from_numpy((best * rng.random(n)).astype(np.float32)),
        "best_qv": torch.from_numpy(best.astype(np.float32)),
        "topk": torch.from_numpy(topk.astype(np.int64)),
        "asked": torch.from_numpy(asked),
        "pool": torch.from_numpy(pool),
        "p_asked": torch.from_numpy(p_asked.astype(np.float32)),
        "gain_rho": torch.from_numpy(gain_rho.astype(np.float32)),
    }


_LOSSES = ("loss", "loss_post", "loss_policy", "loss_bce")


def batches(
    windows: dict[str, torch.Tensor], rows: np.ndarray, size: int = 16
) -> list[dict[str, torch.Tensor]]:
    """Evaluator step outputs over the given window rows (repeats allowed), ``size`` windows per batch."""
    rows = torch.as_tensor(np.asarray(rows), dtype=torch.int64)
    return [{key: col[rows[i : i + size]] for key, col in windows.items()} for i in range(0, len(rows), size)]


def run_engine(outputs: list[dict], k: int = K) -> dict:
    evaluator = Engine(lambda engine, batch: batch)
    attach_validation_metrics(evaluator, k)
    return dict(evaluator.run(outputs).metrics)


def run_direct(outputs: list[dict], k: int = K) -> dict:
    figures = {}
    for name, metric in validation_metrics(k).items():
        metric.reset()
        for out in outputs:
            metric.update(out)
        figures[name] = metric.compute()
    return figures


def np64(t: torch.Tensor) -> np.ndarray:
    return t.numpy().astype(np.float64)


def reference_ece(p: np.ndarray, y: np.ndarray, bins: int = BINS) -> float:
    """Written from the definition, bin by bin: bins [i/bins, (i+1)/bins), the last one closed at 1."""
    total, n = 0.0, len(p)
    for i in range(bins):
        lo, hi = i / bins, (i + 1) / bins
        inside = (p >= lo) & ((p < hi) if i < bins - 1 else (p <= 1.0))
        if inside.any():
            total += inside.sum() / n * abs(y[inside].mean() - p[inside].mean())
    return total


def reference_figures(w: dict[str, torch.Tensor]) -> dict:
    p, y = np64(w["p"]), np64(w["y"])
    ref = {name: float(np.mean(np64(w[name]))) for name in _LOSSES}
    ref.update(
        auc=roc_auc_score(y, p),
        pr_auc=average_precision_score(y, p),
        brier=float(np.mean((p - y) ** 2)),
        ece=reference_ece(p, y),
        post_mse=float(np.mean(np64(w["post_sq_err"]))),
        sigma_mae=float(np.mean(np64(w["sigma_abs_err"]))),
        policy_value=float(np64(w["policy_qv"]).sum() / np64(w["best_qv"]).sum()),
    )
    asked, pool = np64(w["asked"]) > 0, np64(w["pool"]) > 0
    ref["ask_outside_pool"] = float((asked & ~pool).sum() / asked.sum())
    p_asked = np64(w["p_asked"])
    ref["auc_asked"] = roc_auc_score(y, p_asked)
    ref["brier_asked"] = float(np.mean((p_asked - y) ** 2))
    rho = np64(w["gain_rho"])
    ref["gain_spearman"] = float(np.median(rho[~np.isnan(rho)]))
    ref["policy_set_value"] = float("nan")  # no exact model of these windows (tested on its own)
    return ref


def same(a: object, b: object) -> bool:
    """Exact equality, NaN equal to NaN, arrays and calibration tables compared field by field."""
    if hasattr(a, "count") and hasattr(a, "frac_pos"):
        fields = ("lo", "hi", "count", "mean_pred", "frac_pos")
        return all(np.array_equal(getattr(a, f), getattr(b, f), equal_nan=True) for f in fields)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b, equal_nan=True)
    return a == b or (math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("feed", [run_engine, run_direct], ids=["engine", "reset-update-compute"])
def test_scalar_metrics_match_sklearn_and_numpy(feed):
    w = make_windows()
    figures = feed(batches(w, np.arange(len(w["index"]))))
    ref = reference_figures(w)
    assert set(figures) == set(contract.VAL_METRICS) | {CALIBRATION_METRIC, TOPK_METRIC}
    for name in contract.VAL_METRICS:
        assert isinstance(figures[name], float), name
        assert figures[name] == pytest.approx(ref[name], rel=1e-12, abs=1e-12, nan_ok=True), name


@pytest.mark.parametrize("feed", [run_engine, run_direct], ids=["engine", "reset-update-compute"])
def test_calibration_table_matches_numpy(feed):
    w = make_windows()
    table = feed(batches(w, np.arange(len(w["index"]))))[CALIBRATION_METRIC]
    p, y = np64(w["p"]), np64(w["y"])
    # Bin by comparison with the edges rather than by p * bins, so the two sides can disagree.
    edges = np.linspace(0.0, 1.0, BINS + 1)
    which = np.searchsorted(edges, p, side="right") - 1
    which[p == 1.0] = BINS - 1
    assert np.array_equal(table.lo, edges[:-1]) and np.array_equal(table.hi, edges[1:])
    for b in range(BINS):
        inside = which == b
        assert table.count[b] == inside.sum()
        if inside.any():
            assert table.mean_pred[b] == pytest.approx(p[inside].mean(), rel=1e-12)
            assert table.frac_pos[b] == pytest.approx(y[inside].mean(), rel=1e-12)
        else:
            assert np.isnan(table.mean_pred[b]) and np.isnan(table.frac_pos[b])
    assert table.count.sum() == len(p)


@pytest.mark.parametrize("feed", [run_engine, run_direct], ids=["engine", "reset-update-compute"])
def test_topk_frequency_matches_direct_count(feed):
    w = make_windows()
    freq = feed(batches(w, np.arange(len(w["index"]))))[TOPK_METRIC]
    rows = [set(np.flatnonzero(r).tolist()) for r in w["asked"].numpy()]
    expected = [sum(hour in row for row in rows) / len(rows) for hour in range(HOURS)]
    assert freq.shape == (HOURS,)
    np.testing.assert_allclose(freq, expected, rtol=0, atol=1e-15)
    assert freq.sum() == pytest.approx(K)


def test_padding_duplicates_and_order_change_nothing():
    w = make_windows()
    n = len(w["index"])
    clean = run_engine(batches(w, np.arange(n)))
    rng = np.random.default_rng(1)
    # What a padding DistributedSampler does: shuffled order, some windows seen twice (or more).
    rows = np.concatenate([rng.permutation(n), rng.choice(n, 29), [5, 5, 5]])
    padded = run_engine(batches(w, rows, size=7))
    assert padded.keys() == clean.keys()
    for name in clean:
        assert same(padded[name], clean[name]), name
    # The duplicates must really be dropped: counting them would move Brier.
    p, y = np64(w["p"])[rows], np64(w["y"])[rows]
    assert float(np.mean((p - y) ** 2)) != clean["brier"]


def test_single_class_gives_nan_auc_not_an_exception():
    w = make_windows(n=40)
    w["y"] = torch.zeros(40)
    figures = run_engine(batches(w, np.arange(40)))
    assert math.isnan(figures["auc"]) and math.isnan(figures["pr_auc"])
    p = np64(w["p"])
    assert figures["brier"] == pytest.approx(float(np.mean(p**2)), rel=1e-12)


def test_missing_sigma_and_query_value_give_nan():
    w = make_windows(n=40)
    w["sigma_abs_err"] = torch.full((40,), float("nan"))
    w["policy_qv"] = torch.full((40,), float("nan"))
    w["best_qv"] = torch.full((40,), float("nan"))
    figures = run_engine(batches(w, np.arange(40)))
    assert math.isnan(figures["sigma_mae"]) and math.isnan(figures["policy_value"])
    assert math.isfinite(figures["auc"])


def test_loop_metrics_without_answers_are_nan_and_asking_nothing_is_not_outside():
    w = make_windows(n=30)
    w["p_asked"] = torch.full((30,), float("nan"))
    w["gain_rho"] = torch.full((30,), float("nan"))
    w["asked"] = torch.zeros(30, HOURS)
    figures = run_engine(batches(w, np.arange(30)))
    assert math.isnan(figures["auc_asked"]) and math.isnan(figures["brier_asked"])
    assert math.isnan(figures["gain_spearman"])
    assert figures["ask_outside_pool"] == 0.0
    half = make_windows(n=16)
    half["p_asked"][:4] = float("nan")
    with pytest.raises(ValueError, match="NaN for some windows only"):
        metric = AskedForecast("brier")
        metric.update(half)
        metric.compute()


def test_policy_value_without_any_best_value_is_nan():
    w = make_windows(n=10)
    metric = PolicyValue()
    metric.update({"index": w["index"], "policy_qv": torch.zeros(10), "best_qv": torch.zeros(10)})
    assert math.isnan(metric.compute())


def test_reset_forgets_previous_epoch():
    w = make_windows(n=60)
    metric = WindowMean("loss")
    metric.update({"index": w["index"], "loss": torch.full((60,), 100.0)})
    metric.reset()
    metric.update({"index": w["index"][:30], "loss": w["loss"][:30]})
    assert metric.compute() == pytest.approx(float(np.mean(np64(w["loss"][:30]))), rel=1e-12)


def test_evaluator_rerun_each_epoch_starts_afresh():
    w = make_windows(n=50)
    evaluator = Engine(lambda engine, batch: batch)
    attach_validation_metrics(evaluator, K)
    evaluator.run(batches(w, np.arange(25)))
    second = evaluator.run(batches(w, np.arange(25, 50))).metrics
    p, y = np64(w["p"])[25:], np64(w["y"])[25:]
    assert second["brier"] == pytest.approx(float(np.mean((p - y) ** 2)), rel=1e-12)


def test_no_window_is_not_computable():
    with pytest.raises(NotComputableError, match="at least one window"):
        Brier().compute()


@pytest.mark.parametrize(
    ("metric", "change", "error", "message"),
    [
        (ROCAUC(), lambda o: o.pop("y"), KeyError, r"ROCAUC: evaluator output lacks \['y'\]"),
        (Brier(), lambda o: o.update(p=o["p"][:-1]), ValueError, r"'p' has shape \(15,\), expected \(16,\)"),
        (Brier(), lambda o: o.update(index=o["index"].float()), ValueError, "'index' must be a 1-D integer"),
        (ECE(), lambda o: o.update(y=o["y"] * 0.5 + 0.25), ValueError, "label 'y' must be 0 or 1"),
        (ECE(), lambda o: o["p"].__setitem__(3, float("nan")), ValueError, "'p' must be finite and in"),
        (Brier(), lambda o: o["p"].__setitem__(3, 1.5), ValueError, "'p' must be finite and in"),
        (
            AskOutsidePool(),
            lambda o: o.update(asked=o["asked"][:, :-1]),
            ValueError,
            r"'asked' has shape \(16, 23\), expected \(16, 24\)",
        ),
        (TopkFrequency(K), lambda o: o["asked"].__setitem__((0, 0), 0.5), ValueError, "0/1 mask"),
    ],
)
def test_bad_evaluator_output_gives_clear_message(metric, change, error, message):
    out = batches(make_windows(n=16), np.arange(16))[0]
    out = {key: value.clone() for key, value in out.items()}
    change(out)
    with pytest.raises(error, match=message):
        metric.update(out)
        metric.compute()


def test_calibration_metric_bins_follow_argument():
    w = make_windows(n=80)
    metric = CalibrationTable(bins=4)
    metric.update({"index": w["index"], "p": w["p"], "y": w["y"]})
    table = metric.compute()
    p = np64(w["p"])
    expected = [((p >= b / 4) & ((p < (b + 1) / 4) | (b == 3))).sum() for b in range(4)]
    assert table.count.tolist() == expected


def test_attached_names_do_not_collide_with_csv_columns():
    assert CALIBRATION_METRIC not in contract.METRICS_HEADER
    assert TOPK_METRIC not in contract.METRICS_HEADER


# --- training metrics -------------------------------------------------------------------------------


def train_outputs(n: int, seed: int = 0) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    return [{name: float(rng.gamma(2.0, 1.0)) for name in contract.TRAIN_METRICS} for _ in range(n)]


@pytest.mark.parametrize("epoch_bound", [True, False])
def test_training_running_averages_follow_the_recursion(epoch_bound):
    alpha, per_epoch, epochs = 0.9, 5, 3
    outputs = train_outputs(per_epoch)
    trainer = Engine(lambda engine, batch: batch)
    attach_training_metrics(trainer, alpha=alpha, epoch_bound=epoch_bound)
    seen: list[dict] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(dict(e.state.metrics)))
    trainer.run(outputs, max_epochs=epochs)

    stream = outputs * epochs
    for name in contract.TRAIN_METRICS:
        ema = None
        for i, out in enumerate(stream):
            if ema is None or (epoch_bound and i % per_epoch == 0):
                ema = out[name]
            else:
                ema = alpha * ema + (1 - alpha) * out[name]
            want = out[name] if name == "lr" else ema
            assert seen[i][name] == pytest.approx(want, rel=1e-12), (name, i)


def test_training_metrics_name_the_missing_output():
    trainer = Engine(lambda engine, batch: batch)
    attach_training_metrics(trainer)
    out = train_outputs(1)[0]
    del out["grad_norm"]
    with pytest.raises(KeyError, match="trainer output lacks 'grad_norm'"):
        trainer.run([out])
