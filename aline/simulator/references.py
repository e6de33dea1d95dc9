"""Reference figures of a simulated data set, for the simulator's meta file and its realism summary.

One job: from the simulated arrays of one run (``aline.simulator.generate``), the figures that say how
realistic the data are and how much asking can matter: the oracle forecasts' scores, a logistic-regression
baseline, trigger odds ratios, the best fixed hours, and what each asking strategy's answers do to the
variance and the exact-Bayes forecast of tomorrow (via :mod:`aline.simulator.exact`). Every figure is
computed from the values written to the CSV.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aline.config import DEFAULT_LATENTS
from aline.scoring import binary_scores, oracle_value
from aline.simulator.exact import ExactModel
from aline.simulator.generative import HABITUAL_MG, INPUTS, MEASUREMENTS, T, expected_sigmoid

BEST_K = 3

TARGETS = {
    "base_rate": [0.15, 0.30],
    "val_bayes_auc": [0.70, 0.85],
    "latent_auc_above_bayes": True,
    "logreg_auc_gap_min": 0.02,
    "best_fixed_share_max": 0.75,
    "oracle_cut_share_min": 0.15,
}


def trigger_flags(sim: dict[str, Any]) -> dict[str, np.ndarray]:
    """Daily trigger flags [N] as the literature names them, from the written columns only."""
    f = sim["feats"]
    asleep = f["asleep"] > 0
    stress = sim["z"][..., 0]
    daily_caf = f["caffeine_mg"].sum(1)
    sub = sim["subject"]
    habit = np.bincount(sub, daily_caf) / np.bincount(sub)
    return {
        "stress_letdown": stress[:, 8:20].max(1) - stress[:, T - 1] > 1.2,
        "poor_sleep": asleep.sum(1) < 6,  # under 6 h asleep in the window
        "menstrual_window": f["menstrual_window"][:, 0] > 0,
        "heavy_alcohol": f["alcohol_drinks"].sum(1) >= 5,
        "caffeine_withdrawal": (habit[sub] >= HABITUAL_MG) & (daily_caf == 0),
        "pressure_fall": f["pressure_hpa"][:, T - 1] - f["pressure_hpa"][:, 0] < -5.0,
    }


def _flat_features(sim: dict[str, Any], rows: np.ndarray) -> np.ndarray:
    """Flattened windows [n, 24 * (F + M)]: every feature (NaN where missing) and the measurement masks."""
    f = sim["feats"]
    cols = [f[name][rows] for name in INPUTS] + [sim["y"][rows, :, j] for j in range(len(MEASUREMENTS))]
    x = np.stack(cols, axis=2).reshape(len(rows), -1)
    mask = sim["obs"][rows].reshape(len(rows), -1).astype(np.float64)
    return np.concatenate([x, mask], axis=1)


# tol 1e-4: validation AUC within 1e-4 of a 1e-5 fit on the default data, and equal to the evaluation's
# (tol 1e-6) on a 40-window split, where 1e-3 stopped 0.015 away.
LOGREG_TOL = 1e-4


def logreg_baseline(sim: dict[str, Any], split_rows: dict[str, np.ndarray]) -> dict[str, Any]:
    """Logistic regression on flattened train windows: standardised, mean-imputed, plus missing masks."""
    from sklearn.linear_model import LogisticRegression

    xtr = _flat_features(sim, split_rows["train"])
    seen = ~np.isnan(xtr)
    count = np.maximum(seen.sum(0), 1)  # a diary hour may never be logged in a small train split
    mu = np.where(seen, xtr, 0.0).sum(0) / count
    sd = np.sqrt(np.where(seen, (xtr - mu) ** 2, 0.0).sum(0) / count)
    sd[~(sd > 0)] = 1.0

    def prep(x: np.ndarray) -> np.ndarray:
        z = (x - mu) / sd
        return np.where(np.isnan(z), 0.0, z)

    C = 0.05
    model = LogisticRegression(C=C, tol=LOGREG_TOL, max_iter=500)
    model.fit(prep(xtr), sim["y_next"][split_rows["train"]])
    out: dict[str, Any] = {"C": C, "tol": LOGREG_TOL, "n_inputs": int(xtr.shape[1]), "splits": {}}
    for split, rows in split_rows.items():
        if not len(rows):
            continue
        p = model.predict_proba(prep(_flat_features(sim, rows)))[:, 1]
        out["splits"][split] = binary_scores(p, sim["y_next"][rows])
    return out


def split_figures(
    sim: dict[str, Any], rows: np.ndarray, n_subjects: int, best_hours: np.ndarray, logreg: dict | None
) -> dict[str, Any]:
    """Oracle and baseline figures of one split, every one computed from the values written to its CSV."""
    out: dict[str, Any] = {"subjects": n_subjects, "n_windows": int(len(rows)), "n_rows": int(len(rows) * T)}
    if not len(rows):  # an empty split (e.g. --val-frac 0) has no figures
        return out
    y = sim["y_next"][rows]
    qv = sim["query_value"][rows]  # [n, 24]
    var = sim["post_std"][rows] ** 2  # [n, 24, Z]
    oracle_q = oracle_value(qv, BEST_K).sum()
    out.update(
        {
            "base_rate": float(y.mean()),
            "oracle": binary_scores(sim["p_bayes"][rows], y),
            "latent_oracle": binary_scores(sim["p_true"][rows], y),
            "post_var_floor": float(var.mean()),
            "post_var_floor_per_latent": dict(
                zip(DEFAULT_LATENTS, var.mean(axis=(0, 1)).tolist(), strict=True)
            ),
            "logreg_auc": logreg["auc"] if logreg else None,
            "logreg_brier": logreg["brier"] if logreg else None,
            "best_fixed_share": float(qv[:, best_hours].sum() / oracle_q) if oracle_q > 0 else None,
            "oracle_top3_query_value": float(oracle_q / len(rows)),
            "query_value_mean": float(qv.mean()),
        }
    )
    return out


def random_pool_hours(pool: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """[N, T] bool: k hours drawn uniformly without replacement from each window's pool (all if fewer)."""
    keys = np.where(pool, rng.random(pool.shape), -1.0)
    top = np.argsort(-keys, axis=1, kind="stable")[:, :k]
    out = np.zeros_like(pool)
    np.put_along_axis(out, top, True, axis=1)
    return out & pool


def asking_figures(
    sim: dict[str, Any], rows: np.ndarray, best_hours: np.ndarray, rng: np.random.Generator
) -> dict[str, Any]:
    """What the answers of each strategy's k hours do: variance cut of w.Z_23 and exact-Bayes scores."""
    model: ExactModel = sim["model"].take(rows)
    y = sim["y_next"][rows]
    qv = sim["query_value"][rows]  # [n, 24]
    base_var = sim["target_var"][rows]
    pool = model.askable
    fixed = np.zeros_like(pool)
    fixed[:, best_hours] = True
    sets = {
        "none": np.zeros_like(pool),
        "oracle": model.greedy_oracle(BEST_K),
        "best_fixed": fixed & pool,
        "random": random_pool_hours(pool, BEST_K, rng),
    }
    asked, cut = {}, {}
    scalars = model.scalars()
    for name, chosen in sets.items():
        mean, var = scalars.condition(chosen)
        cut[name] = base_var - var  # [n]
        scores = binary_scores(expected_sigmoid(mean + model.params["b"], var), y)
        asked[name] = {"auc": scores["auc"], "brier": scores["brier"], "n_asked": float(chosen.sum(1).mean())}
    oracle_q = oracle_value(qv, BEST_K).sum()
    oracle_cut = cut["oracle"].sum()
    return {
        "pool_hours_mean": float(pool.sum(1).mean()),
        # Share of windows whose greedy-oracle set holds each hour: how much the best hours move.
        "oracle_hour_frequency": sets["oracle"].mean(axis=0).round(4).tolist(),
        "random_share": float(qv[sets["random"]].sum() / oracle_q) if oracle_q > 0 else None,
        "oracle_cut_share": float(np.mean(cut["oracle"] / base_var)),
        "best_fixed_cut_share": float(np.mean(cut["best_fixed"] / base_var)),
        "random_cut_share": float(np.mean(cut["random"] / base_var)),
        "best_fixed_set_share": float(cut["best_fixed"].sum() / oracle_cut) if oracle_cut > 0 else None,
        "random_set_share": float(cut["random"].sum() / oracle_cut) if oracle_cut > 0 else None,
        "asked": asked,
    }


def trigger_odds(flags: dict[str, np.ndarray], y: np.ndarray) -> dict[str, Any]:
    """Odds ratios of a joint (nearly unpenalised) logistic regression of y_next on the daily flags."""
    from sklearn.linear_model import LogisticRegression

    X = np.stack([v.astype(np.float64) for v in flags.values()], axis=1)
    usable = X.std(0) > 0
    out = {
        "prevalence": dict(zip(flags, X.mean(0).tolist(), strict=True)),
        "odds_ratio": dict.fromkeys(flags),
    }
    if usable.any() and 0 < y.sum() < len(y):
        model = LogisticRegression(C=1e4, max_iter=1000).fit(X[:, usable], y)
        for name, coef in zip(np.array(list(flags))[usable], model.coef_[0], strict=True):
            out["odds_ratio"][str(name)] = float(np.exp(coef))
    return out


def realism_checks(splits: dict[str, Any]) -> dict[str, bool]:
    """Each realism target met or not (val figures, or train's when there is no val split)."""
    val = splits["val"] if splits["val"]["n_windows"] else splits["train"]
    return {
        "base_rate": TARGETS["base_rate"][0]
        <= (splits["train"]["base_rate"] or 0)
        <= TARGETS["base_rate"][1],
        "val_bayes_auc": TARGETS["val_bayes_auc"][0]
        <= (val["oracle"]["auc"] or 0)
        <= TARGETS["val_bayes_auc"][1],
        "latent_auc_above_bayes": (val["latent_oracle"]["auc"] or 0) > (val["oracle"]["auc"] or 1),
        "logreg_auc_gap": val["logreg_auc"] is not None
        and (val["oracle"]["auc"] or 0) - val["logreg_auc"] >= TARGETS["logreg_auc_gap_min"],
        "best_fixed_share": (val["best_fixed_share"] or 1) <= TARGETS["best_fixed_share_max"],
        "oracle_cut_share": (val.get("oracle_cut_share") or 0) >= TARGETS["oracle_cut_share_min"],
    }


def realism_summary(meta: dict[str, Any]) -> str:
    """A few lines comparing the realised figures with the design's targets (val, or train if no val)."""
    s = meta["splits"]
    name = "val" if s["val"]["n_windows"] else "train"
    val = s[name]
    chk = meta["realism"]["checks"]

    def mark(ok: bool) -> str:
        return "ok " if ok else "OUT"

    def num(x: Any, digits: int = 3) -> str:
        return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"

    def pct(key: str) -> str:
        x = val.get(key)
        return "n/a" if x is None else f"{100 * x:.1f} %"

    bayes = val["oracle"]["auc"]
    gap_bar = num(bayes - 0.02) if bayes is not None else "n/a"
    ors = ", ".join(f"{k} {num(v, 2)}" for k, v in meta["triggers"]["odds_ratio"].items())
    return "\n".join(
        [
            f"realism ({name} split unless noted; target in brackets):",
            f"  {mark(chk['base_rate'])} base rate train {num(s['train']['base_rate'])}  [0.15-0.30]",
            f"  {mark(chk['val_bayes_auc'])} Bayes AUC (p_bayes) {num(bayes)}  [0.70-0.85]",
            f"  {mark(chk['latent_auc_above_bayes'])} latent-oracle AUC (p_true) "
            f"{num(val['latent_oracle']['auc'])}  [above Bayes]",
            f"  {mark(chk['logreg_auc_gap'])} logistic-regression AUC {num(val['logreg_auc'])}"
            f"  [<= {gap_bar}]",
            f"  {mark(chk['best_fixed_share'])} best fixed hours {meta['baselines']['best_fixed_hours']} get "
            f"{num(val['best_fixed_share'])} of the oracle query value  "
            f"[<= {TARGETS['best_fixed_share_max']}]; random askable hours {num(val.get('random_share'))}",
            f"  {mark(chk['oracle_cut_share'])} the oracle's {BEST_K} answers ({meta['asking']['feature']}) "
            f"cut Var(w.Z_23 | D0) by {pct('oracle_cut_share')} on average"
            f"  [>= {100 * TARGETS['oracle_cut_share_min']:.0f} %]; best fixed "
            f"{pct('best_fixed_cut_share')}, random {pct('random_cut_share')}; "
            f"{num(val.get('pool_hours_mean'), 1)} askable hours a day",
            "  exact-Bayes AUC / Brier with each strategy's answers: "
            + ", ".join(
                f"{k} {num(v['auc'])} / {num(v['brier'], 4)}" for k, v in (val.get("asked") or {}).items()
            ),
            f"  posterior variance floor {num(val['post_var_floor'], 4)}",
            f"  trigger odds ratios (all windows): {ors}",
        ]
    )
