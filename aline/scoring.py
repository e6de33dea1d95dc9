"""NumPy scoring rules for binary forecasts, shared by the simulator, the trainer's metrics and evaluation.

Kept free of torch so that the simulator (which must start fast) can use it. AUC and PR AUC come from
scikit-learn; this module adds what scikit-learn lacks: uniform-bin calibration tables, ECE and the
Murphy decomposition of the Brier score; and the two query-value references that the simulator's meta
file and the evaluation must compute identically (the per-window oracle and the best fixed hours).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ECE_BINS = 15


@dataclass(frozen=True)
class CalibrationTable:
    """Uniform bins over [0, 1]; empty bins have count 0 and NaN means."""

    lo: np.ndarray  # [bins]
    hi: np.ndarray  # [bins]
    count: np.ndarray  # [bins] int
    mean_pred: np.ndarray  # [bins]
    frac_pos: np.ndarray  # [bins]


def bin_index(p: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """Bin of each probability; p == 1 falls in the last bin rather than one past it."""
    return np.clip((np.asarray(p, dtype=np.float64) * bins).astype(np.int64), 0, bins - 1)


def calibration_table(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> CalibrationTable:
    p = np.asarray(p, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    idx = bin_index(p, bins)
    count = np.bincount(idx, minlength=bins)
    sum_p = np.bincount(idx, weights=p, minlength=bins)
    sum_y = np.bincount(idx, weights=y, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pred = np.where(count > 0, sum_p / count, np.nan)
        frac_pos = np.where(count > 0, sum_y / count, np.nan)
    edges = np.linspace(0.0, 1.0, bins + 1)
    return CalibrationTable(edges[:-1], edges[1:], count, mean_pred, frac_pos)


def ece(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: count-weighted mean |frac_pos - mean_pred| over uniform bins."""
    t = calibration_table(p, y, bins)
    used = t.count > 0
    if not used.any():
        return float("nan")
    gap = np.abs(t.frac_pos[used] - t.mean_pred[used])
    return float(np.sum(t.count[used] * gap) / np.sum(t.count[used]))


def brier(p: np.ndarray, y: np.ndarray) -> float:
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return float(np.mean((p - y) ** 2))


def brier_decomposition(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> dict[str, float]:
    """Murphy (1973): Brier ≈ reliability − resolution + uncertainty, exact up to within-bin spread."""
    t = calibration_table(p, y, bins)
    n = t.count.sum()
    used = t.count > 0
    base = float(np.mean(y))
    w = t.count[used] / n
    reliability = float(np.sum(w * (t.mean_pred[used] - t.frac_pos[used]) ** 2))
    resolution = float(np.sum(w * (t.frac_pos[used] - base) ** 2))
    uncertainty = base * (1.0 - base)
    return {
        "brier": brier(p, y),
        "reliability": reliability,
        "resolution": resolution,
        "uncertainty": uncertainty,
    }


def _both_classes(y: np.ndarray) -> bool:
    y = np.asarray(y)
    return y.size > 0 and 0 < y.sum() < y.size


def auc(p: np.ndarray, y: np.ndarray) -> float:
    """ROC AUC, NaN (not an exception) when only one class is present or a forecast is not finite."""
    if not _both_classes(y) or not np.isfinite(p).all():
        return float("nan")
    from sklearn.metrics import roc_auc_score  # lazy: the monitor imports this module and starts faster

    return float(roc_auc_score(y, p))


def pr_auc(p: np.ndarray, y: np.ndarray) -> float:
    """Average precision (step-wise area under the precision-recall curve); NaN as :func:`auc`."""
    if not _both_classes(y) or not np.isfinite(p).all():
        return float("nan")
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, p))


def binary_scores(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> dict[str, float]:
    """The forecast figures this project reports everywhere, under the metrics.csv names."""
    return {"auc": auc(p, y), "pr_auc": pr_auc(p, y), "brier": brier(p, y), "ece": ece(p, y, bins)}


def oracle_value(query_value: np.ndarray, k: int) -> np.ndarray:
    """Query value of each window's own best k hours. ``[N, 24] -> [N]``"""
    return np.sort(query_value, axis=1)[:, -k:].sum(axis=1)


def best_fixed_hours(train_query_value: np.ndarray, k: int) -> np.ndarray:
    """The k hours (same for every window) with the most total query value on train, ascending. ``[k]``

    The total of a fixed set is the sum of its hours' totals, so the best set is simply the top-k hours.
    """
    totals = train_query_value.astype(np.float64).sum(axis=0)  # [24]
    return np.sort(np.argsort(-totals, kind="stable")[:k])


def log_loss_per_window(p: np.ndarray, y: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """``-log p(y)`` of each forecast ``[N]`` (p clipped to [eps, 1 - eps])."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    y = np.asarray(y, dtype=np.float64)
    return -(y * np.log(p) + (1.0 - y) * np.log1p(-p))


BOOTSTRAP_DRAWS = 2000
BOOTSTRAP_SEED = 0


def paired_bootstrap(
    diff: np.ndarray, level: float = 0.9, draws: int = BOOTSTRAP_DRAWS, seed: int = BOOTSTRAP_SEED
) -> dict[str, float]:
    """Mean of per-window paired differences ``[N]`` with a percentile bootstrap interval over windows
    (``draws`` resamples of N windows with replacement, one seeded generator): ``mean``, ``lo``, ``hi``,
    ``level``. The interval excludes 0 when both ends have the same sign."""
    diff = np.asarray(diff, dtype=np.float64)
    n = diff.shape[0]
    if n == 0:
        nan = float("nan")
        return {"mean": nan, "lo": nan, "hi": nan, "level": level}
    rng = np.random.default_rng(seed)
    means = np.empty(draws)
    for i in range(draws):  # one resample at a time: memory stays at one [N] index array
        means[i] = diff[rng.integers(0, n, n)].mean()
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return {"mean": float(diff.mean()), "lo": float(lo), "hi": float(hi), "level": level}
