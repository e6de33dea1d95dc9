"""Every asking strategy side by side: its hours, the share of the oracle's query value it gets, and the
forecast after its answers are revealed, by the model and by exact Bayes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aline import contract, scoring
from aline.data import DataError, RawSplit
from aline.evaluation.baselines import FIXED_SCHEDULE
from aline.predict import Prediction, Predictor
from aline.scoring import best_fixed_hours, oracle_value

POLICY_NAMES = ("trained", "random", "fixed_schedule", "best_fixed", "uncertainty", "oracle")
ASKING_NAMES = ("none", *POLICY_NAMES)
RANDOM_SEED = 0  # the random strategy's one concrete draw (its forecasts need actual answers)


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
    """The simulator's exact posterior for this split (``aline.simulator.exact``), or None if unavailable."""
    try:
        from aline.simulator.exact import load_exact_split
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
        "oracle": "greedy on the exact variance cut (aline.simulator.exact)"
        if exact is not None
        else "top-k query_value of the pool",
        "exact_cut": "mean over windows of the exact cut in Var(w*.Z_23) by the strategy's answers",
        "gain_spearman": None,
    }
    if raw.answers is not None and qv is not None:
        from aline.model.asking import within_window_spearman

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
