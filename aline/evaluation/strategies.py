"""Every asking strategy side by side: its hours, the forecast after its answers are revealed (by the model,
and by exact Bayes on simulated data), the paired difference between the trained policy and random hours
with a bootstrap interval, and where the data has a query value the share of the oracle's it gets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aline import contract, scoring
from aline.data import RawSplit
from aline.evaluation.baselines import FIXED_SCHEDULE
from aline.evaluation.exact_reference import load_exact, set_share
from aline.predict import Prediction, Predictor
from aline.scoring import best_fixed_hours, oracle_value

POLICY_NAMES = ("trained", "random", "fixed_schedule", "best_fixed", "uncertainty", "oracle")
ASKING_NAMES = ("none", *POLICY_NAMES[:-1], "label_oracle", "oracle")
RANDOM_SEED = 0  # the random strategy's one concrete draw (its forecasts need actual answers)
BEST_FIXED_WINDOWS = 2000  # train windows the label-chosen best fixed hours are picked on


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


def best_fixed_by_label(predictor: Predictor, train: RawSplit, k: int, windows: int = BEST_FIXED_WINDOWS):
    """The best fixed k hours chosen on train without an oracle: greedily, the hour whose answers (where a
    window has one) most raise the model's mean log-likelihood of the observed labels, given the hours
    already chosen; over the first ``windows`` train windows. ``[k]`` int, or None without answers."""
    if train.answers is None:
        return None
    sub = train if len(train) <= windows else _first_windows(train, windows)
    pool = predictor.pool(sub)
    y = sub.y.astype(np.float64)
    chosen: list[int] = []
    for _ in range(k):
        best_h, best_ll = -1, -np.inf
        for h in range(contract.HOURS):
            if h in chosen:
                continue
            asked = hours_mask(np.asarray([*chosen, h]), len(sub)) & pool
            ll = -float(np.mean(scoring.log_loss_per_window(predictor.forecast_after(sub, asked), y)))
            if ll > best_ll:
                best_h, best_ll = h, ll
        chosen.append(best_h)
    return np.sort(np.asarray(chosen, dtype=np.int64))


def asking_report(
    predictor: Predictor,
    raw: RawSplit,
    pred: Prediction,
    train: RawSplit,
    uncertainty: np.ndarray,
    *,
    meta_path: Path,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """For each strategy in ``ASKING_NAMES``: the forecast after its answers are revealed on the hours
    that have answers (the model's Brier, log loss and AUC; exact Bayes where the simulator's model is
    there), its share of asks outside the pool, and, with a query value, its share of the oracle's: summed
    per hour and for the set. The detail holds the paired differences trained - random and trained - none
    with a bootstrap 90 % interval over windows."""
    k = predictor.k
    n = len(raw)
    pool = pred.pool if pred.pool is not None else predictor.pool(raw)  # [N, 24]
    y = raw.y.astype(np.float64)
    qv = None if raw.query_value is None else raw.query_value.astype(np.float64) * pool
    exact = load_exact(raw, meta_path)
    if train.query_value is not None:
        best_fixed, chosen_by = best_fixed_hours(train.query_value, k), "train's query_value"
    else:
        best_fixed = best_fixed_by_label(predictor, train, k)
        chosen_by = "the model's label log-likelihood gain on train" if best_fixed is not None else None
    if qv is not None:
        oracle = top_in_pool(qv, pool, k) if exact is None else np.asarray(exact.greedy_oracle(k), bool)
    else:
        oracle = None
    label_oracle = None
    if raw.answers is not None:
        p1 = predictor.one_answer_forecasts(raw, pool)  # [N, 24], NaN off the pool
        base = scoring.log_loss_per_window(pred.p_next, y)[:, None]
        gain = base - scoring.log_loss_per_window(np.nan_to_num(p1, nan=0.5), y[:, None])  # [N, 24]
        label_oracle = top_in_pool(np.where(pool, gain, -np.inf), pool, k)
    asks: dict[str, np.ndarray | None] = {
        "none": np.zeros((n, contract.HOURS), dtype=bool),
        "trained": pred.asked,
        "random": random_in_pool(pool, k),
        "fixed_schedule": hours_mask(np.asarray(FIXED_SCHEDULE), n),
        "best_fixed": None if best_fixed is None else hours_mask(best_fixed, n),
        "uncertainty": top_in_pool(np.asarray(uncertainty, dtype=np.float64), pool, k),
        "label_oracle": label_oracle,
        "oracle": oracle,
    }
    best = None if qv is None else float(oracle_value(qv, k).sum())
    oracle_cut = float(np.sum(exact.set_value(oracle))) if exact is not None and oracle is not None else None
    out: dict[str, Any] = {}
    losses: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # per-window Brier and log loss
    keys = ("query_value_share", "set_share", "outside_pool", "brier_model", "log_loss_model", "auc_model")
    for name, asked in asks.items():
        entry: dict[str, Any] = dict.fromkeys((*keys, "brier_bayes", "auc_bayes"))
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
            sq, ll = (p_model - y) ** 2, scoring.log_loss_per_window(p_model, y)
            losses[name] = (sq, ll)
            entry["brier_model"], entry["log_loss_model"] = float(sq.mean()), float(ll.mean())
            entry["auc_model"] = scoring.auc(p_model, y)
        if exact is not None:
            p_bayes = np.asarray(exact.posterior(None if name == "none" else answered).p_bayes, np.float64)
            entry["brier_bayes"], entry["auc_bayes"] = scoring.brier(p_bayes, y), scoring.auc(p_bayes, y)
            if qv is not None:
                entry["exact_cut"] = float(np.mean(exact.set_value(answered)))
            if oracle_cut:
                entry["set_share"] = set_share(exact, answered, oracle_cut)
        out[name] = entry
    paired: dict[str, Any] = {}
    for other in ("random", "none"):
        if "trained" in losses and other in losses:
            paired[f"trained_minus_{other}"] = {
                rule: scoring.paired_bootstrap(losses["trained"][i] - losses[other][i])
                for i, rule in enumerate(("brier", "log_loss"))
            }
    detail: dict[str, Any] = {
        "k": k,
        "pool_hours_per_window": float(pool.sum(axis=1).mean()),
        "random": f"one draw of k pool hours per window (seed {RANDOM_SEED})",
        "best_fixed_hours": None if best_fixed is None else best_fixed.tolist(),
        "best_fixed_chosen_by": chosen_by,
        "label_oracle": "hindsight: each window's k pool hours whose single answers most raise the model's "
        "log-likelihood of the observed label (uses the answers and the label: a reference, not a strategy)",
        "oracle": "greedy on the exact variance cut (aline.simulator.exact)"
        if exact is not None
        else "top-k query_value of the pool",
        "set_share": "exact cut in Var(w*.Z_23) of the strategy's answered set, summed over windows, over "
        "the same for the greedy oracle's sets",
        "exact_cut": "mean over windows of the exact cut in Var(w*.Z_23) by the strategy's answers",
        "paired": paired,
        "paired_note": f"mean per-window difference in Brier and log loss (negative: trained better) with "
        f"a {scoring.BOOTSTRAP_DRAWS}-draw percentile bootstrap 90 % interval over windows",
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
