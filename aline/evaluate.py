"""``python -m aline.evaluate RUN``: score one checkpoint against the Bayes limit and simple baselines.

Loads the run's best checkpoint (weights-only) through :func:`aline.predict.load`, so evaluation and serving
share one forward pass, and scores one split: forecast quality (ROC AUC, PR AUC, Brier with its Murphy
decomposition, ECE) next to the Bayes-optimal ``p_bayes``, the latent oracle ``p_true`` and a logistic
regression fitted on train; posterior quality (MSE of mu_z against the posterior-variance floor, sigma
error, 90 % interval coverage); and the query policy against baselines on the simulator's ``query_value``,
each as a share of the per-window best k hours. Writes ``RUN/eval/<split>.json``, per-window predictions
``RUN/eval/<split>_predictions.csv`` and plotly HTML figures, and prints a summary table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aline import contract, scoring
from aline.config import ConfigError
from aline.contract import EXIT_FAILURE, EXIT_INVALID, EXIT_OK
from aline.data import DataError, RawSplit, read_split
from aline.predict import Prediction, Predictor, RunError, load, positive_int
from aline.scoring import best_fixed_hours, oracle_value

FIXED_SCHEDULE = (8, 12, 20)  # the "ask at breakfast, lunch and dinner" schedule a clinic might use
COVERAGE_LEVEL = 0.90
POLICY_NAMES = ("trained", "random", "fixed_schedule", "best_fixed", "uncertainty", "oracle")
ASKING_NAMES = ("none", *POLICY_NAMES)
RANDOM_SEED = 0  # the random strategy's one concrete draw (its forecasts need actual answers)

__all__ = [
    "FIXED_SCHEDULE",
    "POLICY_NAMES",
    "EvalResult",
    "best_fixed_hours",
    "chosen_value",
    "evaluate",
    "fit_logreg",
    "format_summary",
    "logreg_design",
    "main",
    "oracle_value",
    "policy_shares",
    "random_value",
]


# --- policy values (NumPy, per window) -----------------------------------------------------------------


def chosen_value(query_value: np.ndarray, hours: np.ndarray) -> np.ndarray:
    """Query value of the chosen hours: ``hours`` [N, k] per window, [k] for every window, or an asked
    mask [N, 24] bool. ``-> [N]``"""
    if np.asarray(hours).dtype == bool:
        return (query_value * hours).sum(axis=1)
    hours = np.asarray(hours, dtype=np.int64)
    if hours.ndim == 1:
        return query_value[:, hours].sum(axis=1)
    return np.take_along_axis(query_value, hours, axis=1).sum(axis=1)


def random_value(query_value: np.ndarray, k: int, pool: np.ndarray | None = None) -> np.ndarray:
    """Expected query value of k distinct hours drawn uniformly at random: k × the window's mean hour;
    with ``pool`` [N, 24], of min(k, pool size) pool hours: that share of the pool's total.

    Exact by linearity of expectation (each hour is in the draw with probability k/24), so the random
    baseline carries no sampling noise and needs no seed. ``[N, 24] -> [N]``
    """
    if pool is not None:
        size = pool.sum(axis=1)
        total = (query_value * pool).sum(axis=1)
        return np.where(size > 0, np.minimum(k, size) * total / np.maximum(size, 1), 0.0)
    return k * query_value.mean(axis=1)


def policy_shares(
    query_value: np.ndarray,
    k: int,
    *,
    trained: np.ndarray,
    uncertainty: np.ndarray,
    best_fixed: np.ndarray,
    fixed_schedule: tuple[int, ...] = FIXED_SCHEDULE,
    pool: np.ndarray | None = None,
) -> dict[str, float]:
    """Each policy's total query value over the windows as a share of the oracle's (NaN if that is 0).

    ``trained`` and ``uncertainty`` are per-window hours [N, k]; ``best_fixed`` and ``fixed_schedule``
    one set of hours for all windows.
    """
    qv = query_value.astype(np.float64)  # [N, 24]
    best = float(oracle_value(qv, k).sum())
    values = {
        "trained": chosen_value(qv, trained),
        "random": random_value(qv, k, pool),
        "fixed_schedule": chosen_value(qv, np.asarray(fixed_schedule)),
        "best_fixed": chosen_value(qv, best_fixed),
        "uncertainty": chosen_value(qv, uncertainty),
        "oracle": oracle_value(qv, k),
    }
    if not best > 0.0:
        return {name: float("nan") for name in values}
    return {name: float(v.sum()) / best for name, v in values.items()}


# --- logistic-regression baseline ----------------------------------------------------------------------


LOGREG_C = 0.05  # L2 strength of the simulator's reference baseline, so the two figures compare


@dataclass(frozen=True)
class _Design:
    """Flattened-window design fitted on train: per (hour, feature) column, the mean and std of the
    observed values (values), and of the observed-indicator (masks)."""

    mean: np.ndarray  # [24*F]
    std: np.ndarray  # [24*F]
    mask_mean: np.ndarray  # [24*F]
    mask_std: np.ndarray  # [24*F]


def _flatten(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = features.reshape(features.shape[0], -1).astype(np.float64)  # [N, 24*F]
    return flat, (~np.isnan(flat)).astype(np.float64)


def logreg_design(train_features: np.ndarray) -> _Design:
    flat, seen = _flatten(train_features)
    count = seen.sum(axis=0)
    mean = np.where(seen > 0, flat, 0.0).sum(axis=0) / np.maximum(count, 1)
    var = np.where(seen > 0, (flat - mean) ** 2, 0.0).sum(axis=0) / np.maximum(count, 1)
    std, mask_std = np.sqrt(var), seen.std(axis=0)
    # A constant column (or an always-observed feature's mask) carries nothing; std 1 keeps it at 0.
    std, mask_std = np.where(std > 0, std, 1.0), np.where(mask_std > 0, mask_std, 1.0)
    return _Design(mean, std, seen.mean(axis=0), mask_std)


def _design_matrix(design: _Design, features: np.ndarray) -> np.ndarray:
    flat, seen = _flatten(features)
    # Standardise, then a missing value becomes 0: mean imputation in standardised units.
    x = np.where(seen > 0, (flat - design.mean) / design.std, 0.0)
    m = (seen - design.mask_mean) / design.mask_std
    return np.concatenate([x, m], axis=1)  # [N, 2*24*F]: values + missing masks


def fit_logreg(train: RawSplit, c: float = LOGREG_C) -> tuple[_Design, Any]:
    """L2 logistic regression on train's flattened windows: standardised, mean-imputed values plus the
    standardised missing masks (the simulator's reference baseline, same ``C``)."""
    from sklearn.linear_model import LogisticRegression

    design = logreg_design(train.features)
    # tol 1e-6: within 1e-4 of the converged probabilities; the default 1e-4 stops 0.01 away.
    model = LogisticRegression(C=c, tol=1e-6, max_iter=10000)
    model.fit(_design_matrix(design, train.features), train.y.astype(np.int64))
    return design, model


def predict_logreg(fitted: tuple[_Design, Any], features: np.ndarray) -> np.ndarray:
    design, model = fitted
    return model.predict_proba(_design_matrix(design, features))[:, 1]  # [N]


# --- asking: every strategy's answers revealed, model and exact Bayes ----------------------------------


def hours_mask(hours: np.ndarray, n: int) -> np.ndarray:
    """Hours ``[k]`` (same for every window) or ``[N, k]`` (-1 = none) -> asked mask ``[N, 24]`` bool."""
    hours = np.asarray(hours, dtype=np.int64)
    mask = np.zeros((n, contract.HOURS), dtype=bool)
    if hours.ndim == 1:
        mask[:, hours] = True
        return mask
    rows = np.repeat(np.arange(n), hours.shape[1])
    keep = hours.ravel() >= 0
    mask[rows[keep], hours.ravel()[keep]] = True
    return mask


def top_in_pool(values: np.ndarray, pool: np.ndarray, k: int) -> np.ndarray:
    """The k highest ``values`` among each window's pool hours (fewer if the pool is smaller). ``[N, 24]``"""
    masked = np.where(pool, values, -np.inf)
    order = np.argsort(-masked, axis=1, kind="stable")[:, :k]
    mask = hours_mask(order, len(values))
    return mask & pool


def random_in_pool(pool: np.ndarray, k: int, seed: int = RANDOM_SEED) -> np.ndarray:
    """k pool hours per window drawn uniformly at random (one seeded draw). ``[N, 24]``"""
    return top_in_pool(np.random.default_rng(seed).random(pool.shape), pool, k)


def _load_exact(raw: RawSplit, meta_path: Path) -> Any:
    """The simulator's exact posterior for this split (``aline.exact``), or None where unavailable."""
    try:
        from aline.exact import load_exact_split
    except ImportError:
        return None
    if not meta_path.is_file() or raw.answers is None:
        return None
    import json

    asking = json.loads(meta_path.read_text(encoding="utf-8")).get("asking") or {}
    if asking.get("feature") != raw.asked_feature:
        return None  # a meta file from another simulator version, or another question than the run's
    try:
        exact = load_exact_split(raw.path, meta_path)
    except (ValueError, KeyError) as err:
        raise DataError(f"{meta_path}: cannot build the exact posterior for {raw.path} ({err})") from None
    # The simulator's ids are integers; the loader keeps ids as the text written in the file.
    if not np.array_equal(np.asarray(exact.window_id).astype(str), raw.window_id.astype(str)):
        raise DataError(f"{raw.path}: the exact posterior's windows do not match the split's windows")
    return exact


def asking_report(
    predictor: Predictor,
    raw: RawSplit,
    pred: Prediction,
    train: RawSplit,
    uncertainty: np.ndarray,
    *,
    meta_path: Path,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """For each strategy in ``ASKING_NAMES``: its share of the oracle's query value, its share of asks
    outside the pool, and the forecast after its answers are revealed (model and exact Bayes)."""
    k = predictor.k
    n = len(raw)
    pool = pred.pool if pred.pool is not None else predictor.pool(raw)  # [N, 24]
    y = raw.y.astype(np.float64)
    qv = None if raw.query_value is None else raw.query_value.astype(np.float64) * pool
    exact = _load_exact(raw, meta_path)
    best_fixed = None if train.query_value is None else best_fixed_hours(train.query_value, k)
    if qv is not None:
        oracle = top_in_pool(qv, pool, k) if exact is None else np.asarray(exact.greedy_oracle(k), bool)
    else:
        oracle = None
    asks: dict[str, np.ndarray | None] = {
        "none": np.zeros((n, contract.HOURS), dtype=bool),
        "trained": pred.asked,
        "random": random_in_pool(pool, k),
        "fixed_schedule": hours_mask(np.asarray(FIXED_SCHEDULE), n),
        "best_fixed": None if best_fixed is None else hours_mask(best_fixed, n),
        "uncertainty": top_in_pool(np.asarray(uncertainty, dtype=np.float64), pool, k),
        "oracle": oracle,
    }
    best = None if qv is None else float(oracle_value(qv, k).sum())
    out: dict[str, Any] = {}
    for name, asked in asks.items():
        entry: dict[str, Any] = dict.fromkeys(
            ("query_value_share", "outside_pool", "brier_model", "auc_model", "brier_bayes", "auc_bayes")
        )
        if asked is None:
            out[name] = entry
            continue
        answered = asked & pool  # an ask outside the pool gets no answer
        n_asked = int(asked.sum())
        entry["outside_pool"] = float((asked & ~pool).sum()) / n_asked if n_asked else 0.0
        if qv is not None and best and best > 0:
            entry["query_value_share"] = float((qv * answered).sum()) / best
        if name == "none":
            p_model = pred.p_next
        elif raw.answers is not None:
            p_model = predictor.forecast_after(raw, answered)
        else:
            p_model = None
        if p_model is not None:
            entry["brier_model"], entry["auc_model"] = scoring.brier(p_model, y), scoring.auc(p_model, y)
        if exact is not None:
            p_bayes = np.asarray(exact.posterior(None if name == "none" else answered).p_bayes, np.float64)
            entry["brier_bayes"], entry["auc_bayes"] = scoring.brier(p_bayes, y), scoring.auc(p_bayes, y)
            if qv is not None:
                entry["exact_cut"] = float(np.mean(exact.set_value(answered)))
        out[name] = entry
    detail: dict[str, Any] = {
        "k": k,
        "pool_hours_per_window": float(pool.sum(axis=1).mean()),
        "random": f"one draw of k pool hours per window (seed {RANDOM_SEED})",
        "oracle": "greedy on the exact variance cut (aline.exact)"
        if exact is not None
        else "top-k query_value of the pool",
        "exact_cut": "mean over windows of the exact cut in Var(w*.Z_23) by the strategy's answers",
        "gain_spearman": None,
    }
    if raw.answers is not None and qv is not None:
        from aline.asking import within_window_spearman

        # The first policy.gain_windows windows, as in validation (24 forward passes per window).
        m = min(n, predictor.cfg.policy.gain_windows)
        sub = raw if m == n else _first_windows(raw, m)
        gains = predictor.one_answer_gains(sub, pool[:m])
        rho = within_window_spearman(gains, qv[:m], pool[:m])
        finite = rho[np.isfinite(rho)]
        detail["gain_spearman"] = float(np.median(finite)) if finite.size else None
        detail["gain_spearman_windows"] = int(finite.size)
        detail["model_gain_mean"] = float(gains[pool[:m]].mean()) if pool[:m].any() else None
    return out, detail


def _first_windows(raw: RawSplit, m: int) -> RawSplit:
    """The first ``m`` windows of a split (every per-window array cut along axis 0)."""
    import dataclasses

    cut = {
        f.name: getattr(raw, f.name)[:m]
        for f in dataclasses.fields(raw)
        if isinstance(getattr(raw, f.name), np.ndarray)
    }
    return dataclasses.replace(raw, **cut)


# --- evaluation ------------------------------------------------------------------------------------------


@dataclass
class EvalResult:
    report: dict[str, Any]
    prediction: Prediction
    json_path: Path
    predictions_path: Path
    figures: list[Path]


def _rel(path: Path | None, root: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return str(path.resolve().relative_to(root.resolve())) if root is not None else str(path)
    except ValueError:
        return str(path)


def _split_path(predictor: Predictor, split: str, data_dir: str | Path | None) -> Path:
    data = predictor.cfg.data
    if data_dir is not None:
        data = data.model_copy(update={"dir": str(data_dir)})
    path = data.split_path(split)
    if not path.is_file():
        raise DataError(
            f"{path}: the {split} split of the run's data is not there (data.dir={data.dir!r} in the run's "
            "config); point --data-dir at the folder holding "
            f"{data.prefix}_{{train,val,test}}.csv"
        )
    return path


def _coverage(z: np.ndarray, mu: np.ndarray, sigma: np.ndarray, level: float = COVERAGE_LEVEL) -> float:
    half = statistics.NormalDist().inv_cdf(0.5 + level / 2.0)  # 1.6449 for 90 %
    return float(np.mean(np.abs(z - mu) <= half * sigma))


def evaluate(
    run: str | Path,
    split: str = "val",
    *,
    checkpoint: str | Path | None = None,
    data_dir: str | Path | None = None,
    batch_size: int | None = None,
    figures: bool = True,
) -> EvalResult:
    """Evaluate a run's checkpoint on one split and write ``RUN/eval/<split>.json`` and companions.

    Raises :class:`aline.predict.RunError` or :class:`aline.data.DataError` for unusable input.
    """
    predictor = load(run, checkpoint=checkpoint, batch_size=batch_size)
    cols = predictor.cfg.data.columns
    k = predictor.k
    path = _split_path(predictor, split, data_dir)
    raw = read_split(path, cols, require_targets=True)
    train = raw if split == "train" else read_split(_split_path(predictor, "train", data_dir), cols)
    pred = predictor.predict_raw(raw)

    y = raw.y.astype(np.float64)  # [N]
    z = None if raw.z is None else raw.z.astype(np.float64)  # [N, 24, Z]; None: labels-only data
    p = pred.p_next  # [N] float64
    mu = pred.mu_z.astype(np.float64)
    sig = pred.sigma_z.astype(np.float64)

    report: dict[str, Any] = {
        "split": split,
        "run": str(predictor.run_dir),
        "checkpoint": _rel(predictor.checkpoint, predictor.run_dir),
        "data_file": str(path),
        "n_windows": len(raw),
        "base_rate": float(y.mean()),
        "k": k,
    }
    report.update(scoring.binary_scores(p, y))
    report["brier_decomposition"] = scoring.brier_decomposition(p, y)
    report["post_mse"] = report["post_mse_per_latent"] = report["coverage_90"] = None
    if z is not None:
        report["post_mse"] = float(np.mean((mu - z) ** 2))
        report["post_mse_per_latent"] = dict(
            zip(cols.latents, np.mean((mu - z) ** 2, axis=(0, 1)).tolist(), strict=True)
        )
        report["coverage_90"] = _coverage(z, mu, sig)
    report["sigma_mae"] = None if raw.sigma is None else float(np.mean(np.abs(sig - raw.sigma)))

    oracle: dict[str, Any] = {"auc": None, "pr_auc": None, "brier": None, "ece": None, "post_mse_floor": None}
    if raw.p_bayes is not None:
        oracle.update(scoring.binary_scores(raw.p_bayes.astype(np.float64), y))
        oracle["brier_decomposition"] = scoring.brier_decomposition(raw.p_bayes.astype(np.float64), y)
    if raw.sigma is not None:
        oracle["post_mse_floor"] = float(np.mean(raw.sigma.astype(np.float64) ** 2))
    if raw.post_mean is not None and z is not None:
        # The exact posterior's own error: equals the floor up to sampling noise when the data is right.
        oracle["post_mse_exact"] = float(np.mean((raw.post_mean.astype(np.float64) - z) ** 2))
        if raw.sigma is not None:
            oracle["coverage_90"] = _coverage(
                z, raw.post_mean.astype(np.float64), raw.sigma.astype(np.float64)
            )
    report["oracle"] = oracle
    report["latent_oracle"] = (
        None if raw.p_true is None else scoring.binary_scores(raw.p_true.astype(np.float64), y)
    )

    fitted = fit_logreg(train)
    p_logreg = predict_logreg(fitted, raw.features)
    report["logreg"] = {**scoring.binary_scores(p_logreg, y), "C": LOGREG_C}

    # Uncertainty sampling asks its top-k hours among the askable ones, like every other strategy.
    unc_pool = top_in_pool(pred.uncertainty.astype(np.float64), pred.pool, k)  # [N, 24]
    uncertainty_hours = np.sort(np.where(unc_pool, np.arange(contract.HOURS), contract.HOURS), axis=1)[:, :k]
    uncertainty_hours = np.where(uncertainty_hours < contract.HOURS, uncertainty_hours, -1)  # [N, k]
    policy: dict[str, Any] = dict.fromkeys(POLICY_NAMES)
    detail: dict[str, Any] = {
        "k": k,
        "measure": "sum of query_value over the chosen hours and all windows / the same for each "
        "window's best k hours",
        "random": "expected value of k distinct pool hours drawn uniformly, exact, no seed",
        "fixed_schedule_hours": list(FIXED_SCHEDULE),
        "best_fixed_hours": None,
        "trained_topk_frequency": pred.asked.sum(axis=0).astype(np.int64).tolist(),
    }
    qv_trained = qv_oracle = None
    if raw.query_value is not None and train.query_value is not None:
        best_fixed = best_fixed_hours(train.query_value, k)
        detail["best_fixed_hours"] = best_fixed.tolist()
        policy.update(
            policy_shares(
                raw.query_value,
                k,
                trained=pred.asked,
                uncertainty=unc_pool,
                best_fixed=best_fixed,
                pool=pred.pool,
            )
        )
        qv = raw.query_value.astype(np.float64)
        qv_trained, qv_oracle = chosen_value(qv, pred.asked), oracle_value(qv, k)
        detail["oracle_value_per_window"] = float(qv_oracle.mean())
    report["policy"] = policy
    report["policy_detail"] = detail
    report["asking"], report["asking_detail"] = asking_report(
        predictor,
        raw,
        pred,
        train,
        pred.uncertainty,
        meta_path=predictor.cfg.data.model_copy(update={"dir": str(path.parent)}).meta_path,
    )

    ratios: dict[str, Any] = {}
    if oracle["auc"]:
        ratios["auc_vs_bayes"] = report["auc"] / oracle["auc"]
        ratios["brier_vs_bayes"] = report["brier"] / oracle["brier"]
    if oracle["post_mse_floor"] and report["post_mse"] is not None:
        ratios["post_mse_vs_floor"] = report["post_mse"] / oracle["post_mse_floor"]
    report["ratios"] = ratios

    out_dir = predictor.run_dir / contract.EVAL_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    predictions_path = out_dir / f"{split}_predictions.csv"
    _write_predictions(predictions_path, raw, pred, p_logreg, uncertainty_hours, qv_trained, qv_oracle)
    figure_paths = _write_figures(out_dir, split, report, raw, p, p_logreg) if figures else []
    report["figures"] = [p_.name for p_ in figure_paths]
    json_path = out_dir / f"{split}.json"
    contract.write_json_atomic(json_path, report)
    return EvalResult(report, pred, json_path, predictions_path, figure_paths)


def _hours_text(hours: np.ndarray) -> list[str]:
    return [" ".join(str(int(h)) for h in row if h >= 0) for row in hours]


def _write_predictions(
    path: Path,
    raw: RawSplit,
    pred: Prediction,
    p_logreg: np.ndarray,
    uncertainty_hours: np.ndarray,
    qv_trained: np.ndarray | None,
    qv_oracle: np.ndarray | None,
) -> None:
    import pandas as pd

    cols: dict[str, Any] = {
        "window_id": pred.window_id,
        "y": raw.y.astype(np.int64),
        "p": pred.p_next,
        "p_logreg": p_logreg,
    }
    if raw.p_bayes is not None:
        cols["p_bayes"] = raw.p_bayes.astype(np.float64)
    if raw.p_true is not None:
        cols["p_true"] = raw.p_true.astype(np.float64)
    cols["topk_hours"] = _hours_text(pred.topk_hours)
    cols["uncertainty_hours"] = _hours_text(uncertainty_hours)
    if qv_trained is not None:
        cols["qv_trained"] = qv_trained
        cols["qv_oracle"] = qv_oracle
    # Default float formatting is the shortest repr that round-trips, so a reader recovers p exactly.
    pd.DataFrame(cols).to_csv(path, index=False)


def _write_figures(
    out_dir: Path, split: str, report: dict[str, Any], raw: RawSplit, p: np.ndarray, p_logreg: np.ndarray
) -> list[Path]:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    from sklearn.metrics import roc_curve

    y = raw.y
    forecasts = {"model": p, "logistic regression": p_logreg}
    if raw.p_bayes is not None:
        forecasts["Bayes optimal (p_bayes)"] = raw.p_bayes
    if raw.p_true is not None:
        forecasts["latent oracle (p_true)"] = raw.p_true
    paths = []

    roc = go.Figure()
    for name, values in forecasts.items():
        fpr, tpr, _ = roc_curve(y, values)
        roc.add_trace(
            go.Scatter(x=fpr, y=tpr, mode="lines", name=f"{name} (AUC {scoring.auc(values, y):.3f})")
        )
    roc.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="chance")
    )
    roc.update_layout(
        title=f"ROC, {split} split ({len(y)} windows)",
        xaxis_title="false positive rate",
        yaxis_title="true positive rate",
    )
    paths.append(out_dir / f"{split}_roc.html")
    roc.write_html(paths[-1], include_plotlyjs="directory")

    rel = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.7, 0.3], vertical_spacing=0.05)
    rel.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="perfect"),
        row=1,
        col=1,
    )
    for name in [n for n in forecasts if n != "latent oracle (p_true)"]:
        table = scoring.calibration_table(forecasts[name], y)
        used = table.count > 0
        label = f"{name} (ECE {scoring.ece(forecasts[name], y):.3f})"
        rel.add_trace(
            go.Scatter(x=table.mean_pred[used], y=table.frac_pos[used], mode="lines+markers", name=label),
            row=1,
            col=1,
        )
    table = scoring.calibration_table(p, y)
    rel.add_trace(
        go.Bar(x=(table.lo + table.hi) / 2, y=table.count, width=table.hi - table.lo, name="model forecasts"),
        row=2,
        col=1,
    )
    rel.update_xaxes(range=[0, 1], title_text="forecast probability", row=2, col=1)
    rel.update_yaxes(range=[0, 1], title_text="observed frequency", row=1, col=1)
    rel.update_yaxes(title_text="windows", row=2, col=1)
    rel.update_layout(title=f"Reliability diagram, {split} split ({scoring.ECE_BINS} uniform bins)")
    paths.append(out_dir / f"{split}_reliability.html")
    rel.write_html(paths[-1], include_plotlyjs="directory")

    shares = report["policy"]
    if all(v is not None for v in shares.values()):
        bar = go.Figure(
            go.Bar(x=list(shares), y=list(shares.values()), text=[f"{v:.3f}" for v in shares.values()])
        )
        bar.update_layout(
            title=f"Query value captured, share of the per-window best k={report['k']} hours ({split})",
            yaxis_title="share of oracle",
        )
        paths.append(out_dir / f"{split}_policy.html")
        bar.write_html(paths[-1], include_plotlyjs="directory")
    return paths


# --- summary ---------------------------------------------------------------------------------------------


def _num(value: Any, width: int = 9) -> str:
    return f"{value:>{width}.4f}" if isinstance(value, (int, float)) and value == value else f"{'-':>{width}}"


def format_summary(report: dict[str, Any]) -> str:
    """A plain-text table of the report, for the console."""
    oracle, latent, logreg = report["oracle"], report.get("latent_oracle") or {}, report["logreg"]
    lines = [
        f"evaluation of {report['run']} ({report['checkpoint']}) on {report['split']}: "
        f"{report['n_windows']} windows, base rate {report['base_rate']:.3f}",
        "",
        f"{'forecast':<12}{'model':>9}{'bayes':>9}{'latent':>9}{'logreg':>9}",
    ]
    for key in ("auc", "pr_auc", "brier", "ece"):
        lines.append(
            f"{key:<12}{_num(report[key])}{_num(oracle.get(key))}{_num(latent.get(key))}{_num(logreg.get(key))}"
        )
    d = report["brier_decomposition"]
    lines.append(
        f"brier = reliability {d['reliability']:.4f} - resolution {d['resolution']:.4f} "
        f"+ uncertainty {d['uncertainty']:.4f} (model)"
    )
    lines += [
        "",
        f"{'posterior':<12}{'model':>9}{'exact':>9}",
        f"{'post_mse':<12}{_num(report['post_mse'])}{_num(oracle.get('post_mse_floor'))}   (exact: floor)",
        f"{'coverage_90':<12}{_num(report['coverage_90'])}{_num(oracle.get('coverage_90'))}",
        f"{'sigma_mae':<12}{_num(report.get('sigma_mae'))}",
        "",
        f"policy: share of the oracle's query value (k={report['k']})",
    ]
    detail = report["policy_detail"]
    notes = {
        "fixed_schedule": f"hours {detail['fixed_schedule_hours']}",
        "best_fixed": f"hours {detail['best_fixed_hours']} (best on train)",
        "random": "expected value",
        "uncertainty": "top-k of the model's own uncertainty",
    }
    for name in POLICY_NAMES:
        lines.append(f"  {name:<16}{_num(report['policy'][name])}  {notes.get(name, '')}".rstrip())
    asking = report.get("asking")
    if asking:
        cols = ("query_value_share", "outside_pool", "brier_model", "brier_bayes", "auc_model", "auc_bayes")
        heads = ("qv share", "outside", "brier", "brier*", "auc", "auc*")
        lines += [
            "",
            "asking: forecasts after each strategy's answers (* = exact Bayes with the same answers)",
            f"  {'strategy':<16}" + "".join(f"{h:>9}" for h in heads),
        ]
        for name, entry in asking.items():
            lines.append(f"  {name:<16}" + "".join(_num(entry.get(c)) for c in cols))
        rho = (report.get("asking_detail") or {}).get("gain_spearman")
        lines.append(f"  one-answer gain Spearman (model vs exact, median over windows): {_num(rho).strip()}")
    return "\n".join(lines)


# --- command line --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m aline.evaluate",
        description=(
            "Evaluate a trained run's best checkpoint on one split against the Bayes-optimal forecast, the "
            "latent oracle, a logistic regression, and policy baselines. Writes RUN_DIR/eval/<split>.json, "
            "RUN_DIR/eval/<split>_predictions.csv (one row per window) and plotly HTML figures "
            "(<split>_roc.html, <split>_reliability.html, <split>_policy.html), and prints a summary."
        ),
        epilog=(
            "Policy figures are shares of the query value that each window's own best k hours capture. "
            "Exit codes: 0 success, 2 invalid run folder, checkpoint or data, 1 any other failure."
        ),
    )
    parser.add_argument("run", metavar="RUN_DIR", help="run folder written by python -m aline.train")
    parser.add_argument(
        "--split",
        choices=("val", "test", "train"),
        default="val",
        help="which split of the run's data to score (default: val)",
    )
    parser.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="checkpoint to evaluate instead of the best one named in status.json "
        "(e.g. RUN_DIR/checkpoints/last.pt)",
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder with <prefix>_{train,val,test}.csv (default: data.dir from the run's config.yaml); "
        "train is read as well, for the logistic regression and the best fixed hours",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="N",
        help="windows per forward pass (default: trainer.eval_batch_size)",
    )
    parser.add_argument("--no-figures", action="store_true", help="skip the plotly HTML figures")
    parser.add_argument("--quiet", action="store_true", help="do not print the summary table")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = evaluate(
            args.run,
            args.split,
            checkpoint=args.checkpoint,
            data_dir=args.data_dir,
            batch_size=args.batch_size,
            figures=not args.no_figures,
        )
    except (RunError, DataError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILURE
    if not args.quiet:
        print(format_summary(result.report))
        print(f"\nwrote {result.json_path}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
