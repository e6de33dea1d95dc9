"""Baselines the trained model is scored against: what fixed, random and oracle question sets are worth
(NumPy, per window) and a logistic regression on the flattened window."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from aline.data import RawSplit
from aline.scoring import oracle_value

FIXED_SCHEDULE = (8, 12, 20)  # the "ask at breakfast, lunch and dinner" schedule a clinic might use


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
