"""Synthetic migraine data with known truth: ``python -m aline.simulate``.

The module's one job is to write ``DIR/synthetic_migraine_{train,val,test}.csv`` and
``DIR/synthetic_migraine_meta.json``: hourly rows of one subject-day per window, the true latent state,
the exact posterior of that state given the window's observations, the value of asking the diary at each
hour, the next-day label and the best forecasts that any model could make (``p_bayes``) or that one knowing
the latent state could make (``p_true``).

Generative model: see :mod:`aline.simmodel` (one window = one subject-day, hours t = 0..23; windows are
independent given the observed inputs, which is what makes each window's posterior exact). Z = (stress,
sleep_debt, hormonal, env_load); y = (heart_rate, hrv, skin_temp, stress_rating, symptom_score). g_t is a
known function of the observed inputs (thresholds, recent sums), and q_t, r_t depend on them too: a
skipped meal or a falling barometer makes stress more volatile, walking makes the heart rate noisier, and
screens, walking and drinks make the premonitory-symptom score less reliable. One subject-level value
enters g as well: whether the subject is a habitual caffeine user (mean daily caffeine over all of the
subject's days >= 50 mg, computable from the CSV by subject), which drives caffeine withdrawal on a day
without caffeine. The posterior columns condition on the window's rows and that flag.

Wearable values have gaps (a day without the watch, charging, off-wrist hours, motion artefacts in HRV);
the diary stress rating is logged at a few waking hours a day, the symptom score rarely. The symptom score
is the question that can be asked: ``ask_symptom_score`` holds the answer the patient would give at each
askable hour (awake and not busy), drawn from the same measurement model (equal to the logged value where
logged, empty where unaskable), and ``query_value`` the exact cut in Var(w·Z_23) from one answer there
(:mod:`aline.exact`). Measurements are written rounded to two decimals and the posterior is computed from
the rounded values (the rounding error, variance 1e-4/12, is ignored next to the measurement noise). The
diary scores are continuous on a 0-10 scale and not clipped, so that they stay linear-Gaussian.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from aline.config import DEFAULT_FEATURES, DEFAULT_LATENTS, SPLITS
from aline.exact import ExactModel
from aline.scoring import best_fixed_hours, binary_scores, oracle_value
from aline.simmodel import (
    ANSWER_PREFIX,
    ASKED,
    ASKED_INDEX,
    CONTEXT_NOISE,
    G_DEFINITIONS,
    G_NAMES,
    HABITUAL_MG,
    INPUTS,
    INTEGER_INPUTS,
    MEASUREMENTS,
    UNASKABLE_WHEN,
    UNITS,
    T,
    askable,
    context,
    default_params,
    expected_sigmoid,
    sigmoid,
)

ASKING = {
    "feature": ASKED,
    "answer_column": ANSWER_PREFIX + ASKED,
    "unaskable_when": list(UNASKABLE_WHEN),
    "pool": f"hours whose {ASKED} cell is empty and whose {ANSWER_PREFIX + ASKED} cell is not; equivalently "
    f"{ASKED} empty and each of {', '.join(UNASKABLE_WHEN)} equal to 0",
    "answer": f"the {ASKED} the patient would report if asked at that hour: drawn from the same measurement "
    "model as the logged value (equal to it where logged), empty where the hour cannot be asked",
    "mechanisms": [
        "premonitory symptoms (fatigue, yawning, neck stiffness) precede attacks by hours and were "
        "recorded in electronic diaries before most attacks (Giffin et al. 2003, Neurology 60:935-940; "
        "Karsan & Goadsby 2018, Curr Pain Headache Rep 22:1); hypothalamic activity changes in the day "
        "before the attack (Schulte & May 2016, Brain 139:1987-1993): the score loads on sleep debt and "
        "trigger load, which the forecast weighs most",
        "a momentary self-rating is less reliable when made while distracted or impaired (ecological "
        "momentary assessment: Shiffman, Stone & Hufford 2008, Annu Rev Clin Psychol 4:1-32): its noise "
        "variance grows with screen use, walking and drinks in the last 3 hours (context_noise), so a "
        "quiet hour's answer is worth several busy ones and the quiet hours change from day to day",
        "which hours can be asked varies by day: not while asleep, nor while busy (commuting on workdays, "
        "meetings, driving or errands at weekends), an observed 0/1 input",
        "logged rarely by itself (0.1-0.8 entries a day): most of its value is in asking",
    ],
}

# Re-exported for callers that knew them here.
__all__ = ["default_params", "expected_sigmoid", "generate", "main", "simulate"]
_context = context
ANSWER_COLUMN = ANSWER_PREFIX + ASKED

PREFIX = "synthetic_migraine"
BEST_K = 3
# Decimals of the written floats; measurements are rounded before the filter sees them.
FLOAT_DECIMALS = {"measurement": 2, "latent": 4, "query_value": 6, "prob": 6}

HABITS = {
    "wake_hour_range": [5.5, 9.0],
    "wake_day_sd_h": 0.8,
    "sleep_need_h": [7.4, 0.6],
    "night_sleep_day_sd_h": 1.1,
    "bedtime_day_sd_h": 0.9,
    "habitual_caffeine_share": 0.65,
    "habitual_caffeine_mg": [100, 400],
    "caffeine_free_day_prob": 0.08,
    "occasional_caffeine_prob": 0.05,
    "abstainer_share": 0.2,
    "drink_day_prob": [0.05, 0.45],
    "weekend_drink_factor": 1.8,
    "extra_drinks_poisson_mean": [0.5, 3.5],
    "meal_skip_prob": [0.02, 0.2],
    "screen_min_per_h": [5, 25],
    "steps_per_h": [150, 600],
    "walk_bout_prob": 0.12,
    "menstruating_share": 0.5,
    "cycle_days": [26, 31],
    "diary_entries_per_day": [1.0, 4.0],
    "no_watch_day_prob": 0.04,
    "charging_day_prob": 0.6,
    "off_wrist_hour_prob": 0.05,
    "hrv_motion_loss_prob": 0.8,
    "pressure_hpa": [1013.0, 7.0],
    "pressure_trend_sd_hpa_per_h": 0.22,
    "pressure_noise_sd_hpa": 0.12,
    "screen_free_hour_prob": 0.3,
    "symptom_entries_per_day": [0.1, 0.8],
    "commuter_share": 0.7,
    "meeting_hour_prob": [0.05, 0.3],
    "weekend_busy_hour_prob": 0.06,
}

if set(UNITS) != set(DEFAULT_FEATURES) or len(DEFAULT_LATENTS) != 4:
    # The generator produces exactly the columns in UNITS; a changed config list must be mirrored here.
    raise RuntimeError(
        "aline.config.DEFAULT_FEATURES/DEFAULT_LATENTS no longer match what aline.simulate generates: "
        f"{sorted(set(UNITS) ^ set(DEFAULT_FEATURES))} differ, latents {DEFAULT_LATENTS}"
    )


# --- generation -----------------------------------------------------------------------------------------


def _inputs(rng: np.random.Generator, subjects: int, days: int) -> dict[str, np.ndarray]:
    """Observed inputs [N, T] from subject habits plus day-to-day noise; N = subjects * days."""
    H = HABITS
    S, N = subjects, subjects * days
    subj = np.repeat(np.arange(S), days)
    day = np.tile(np.arange(days), S)
    h = np.arange(T)[None, :]
    rows = np.arange(N)

    wake_mean = rng.uniform(*H["wake_hour_range"], S)
    sleep_need = np.clip(rng.normal(*H["sleep_need_h"], S), 5.5, 9.0)
    habitual = rng.random(S) < H["habitual_caffeine_share"]
    habit_mg = rng.uniform(*H["habitual_caffeine_mg"], S)
    abstainer = rng.random(S) < H["abstainer_share"]
    drink_p = np.where(abstainer, 0.0, rng.uniform(*H["drink_day_prob"], S))
    drink_lam = rng.uniform(*H["extra_drinks_poisson_mean"], S)
    skip_p = rng.uniform(*H["meal_skip_prob"], S)
    screen_base = rng.uniform(*H["screen_min_per_h"], S)
    activity = rng.uniform(*H["steps_per_h"], S)
    menstruates = rng.random(S) < H["menstruating_share"]
    cycle_len = rng.integers(H["cycle_days"][0], H["cycle_days"][1] + 1, S)
    cycle_off = rng.integers(0, 64, S)
    diary_rate = rng.uniform(*H["diary_entries_per_day"], S)

    # Sleep: last night's sleep ends at the wake hour; tonight's starts at a bedtime of 21:00 or later
    # (so that evening hours 18-20 are always awake).
    wake = np.clip(np.round(wake_mean[subj] + rng.normal(0, H["wake_day_sd_h"], N)), 4, 12)
    night = np.clip(sleep_need[subj] + rng.normal(0, H["night_sleep_day_sd_h"], N), 3.0, 10.5)
    onset = np.round(wake - night)
    bed = np.round(wake_mean[subj] + 24 - sleep_need[subj] + rng.normal(0, H["bedtime_day_sd_h"], N))
    bed = np.maximum(bed, 21)
    asleep = ((h >= onset[:, None]) & (h < wake[:, None])) | (h >= bed[:, None])
    awake = ~asleep

    # Caffeine: habitual users drink in the morning and often in the afternoon, rarely skip a day.
    caf = np.zeros((N, T))
    user = habitual[subj]
    drinks_today = np.where(
        user, rng.random(N) >= H["caffeine_free_day_prob"], rng.random(N) < H["occasional_caffeine_prob"]
    )
    amount = np.where(user, habit_mg[subj], 80.0) * rng.uniform(0.7, 1.3, N)
    has_pm = user & (rng.random(N) < 0.6)
    am_hour = (wake + rng.integers(0, 2, N)).astype(int)
    pm_hour = rng.integers(13, 17, N)
    am = np.round(np.where(has_pm, 0.6, 1.0) * amount, -1) * drinks_today
    pm = np.round(0.4 * amount, -1) * (drinks_today & has_pm)
    caf[rows, am_hour] += am
    caf[rows, pm_hour] += pm

    # Alcohol: evening drinks spread over the hours from the start until bedtime (or midnight).
    weekend = (day % 7) >= 5
    p_day = np.clip(drink_p[subj] * np.where(weekend, H["weekend_drink_factor"], 1.0), 0, 0.9)
    n_drinks = np.where(rng.random(N) < p_day, 1 + rng.poisson(drink_lam[subj]), 0)
    start = rng.integers(18, 21, N)
    span = np.minimum(bed, 24).astype(int) - start
    k = h - start[:, None]
    inside = (k >= 0) & (k < span[:, None])
    alcohol = np.where(inside, n_drinks[:, None] // span[:, None] + (k < (n_drinks % span)[:, None]), 0)

    # Barometric pressure: a daily trend plus a random walk, from 3 hours before midnight.
    trend = rng.normal(0, H["pressure_trend_sd_hpa_per_h"], N)
    walk = np.cumsum(rng.normal(0, H["pressure_noise_sd_hpa"], (N, T + 3)), axis=1)
    p = rng.normal(*H["pressure_hpa"], N)[:, None] + trend[:, None] * np.arange(-3, T)[None, :] + walk
    p = np.round(p, 1)
    pressure = p[:, 3:]
    change = np.round(p[:, 3:] - p[:, :-3], 1)

    # Meals at wake+1, 12-13 and 18-19 h; each may be skipped.
    skipped = np.zeros((N, T))
    for meal_hour in ((wake + 1).astype(int), rng.integers(12, 14, N), rng.integers(18, 20, N)):
        skipped[rows, meal_hour] = np.maximum(skipped[rows, meal_hour], rng.random(N) < skip_p[subj])

    evening = np.where(h >= 18, 2.0, 1.0)
    screen = np.clip(np.round(screen_base[subj, None] * evening * rng.lognormal(0, 0.5, (N, T))), 0, 60)
    bouts = (rng.random((N, T)) < H["walk_bout_prob"]) * rng.uniform(2000, 6000, (N, T))
    steps = np.round(activity[subj, None] * rng.lognormal(0, 0.6, (N, T)) + bouts)

    phase = (day + cycle_off[subj]) % cycle_len[subj]
    menstrual = menstruates[subj] & ((phase <= 2) | (phase >= cycle_len[subj] - 2))

    # Diary: a few entries a day at random waking hours.
    n_awake = awake.sum(1)
    n_diary = np.minimum(rng.poisson(diary_rate[subj]), n_awake)
    keys = np.where(awake, rng.random((N, T)), 2.0)
    rank = np.empty((N, T), dtype=np.int64)
    np.put_along_axis(rank, np.argsort(keys, axis=1), np.arange(T)[None, :].repeat(N, 0), axis=1)
    diary_obs = rank < n_diary[:, None]

    # Wearable gaps: no watch all day, a charging block, random off-wrist hours, HRV motion artefacts.
    worn_day = rng.random(N) >= H["no_watch_day_prob"]
    charging = rng.random(N) < H["charging_day_prob"]
    c_start = rng.integers(6, 23, N)
    c_len = rng.integers(1, 4, N)
    charge_gap = charging[:, None] & (h >= c_start[:, None]) & (h < (c_start + c_len)[:, None])
    worn = worn_day[:, None] & ~charge_gap & (rng.random((N, T)) >= H["off_wrist_hour_prob"])
    motion = (steps > 1500) & (rng.random((N, T)) < H["hrv_motion_loss_prob"])
    hrv_obs = worn & ~motion & (rng.random((N, T)) >= 0.05)
    temp_obs = worn & (rng.random((N, T)) >= 0.02)

    # Screen-free hours (a walk, a meal with others, a nap): the quiet moments for a self-rating.
    screen = np.where(rng.random((N, T)) < H["screen_free_hour_prob"], 0.0, screen)

    # Busy hours, when a question cannot be answered: commuting on workdays, meetings, errands and
    # driving on weekends. They move from day to day, and so does the pool of askable hours.
    commuter = rng.random(S) < H["commuter_share"]
    meeting_p = rng.uniform(*H["meeting_hour_prob"], S)
    workday = commuter[subj] & ~weekend
    commute_am = (wake + 1 + rng.integers(0, 2, N)).astype(int)
    commute_pm = rng.integers(16, 19, N)
    busy = rng.random((N, T)) < np.where(
        workday[:, None],
        meeting_p[subj, None] * ((h >= 9) & (h < 17)),
        H["weekend_busy_hour_prob"],
    )
    busy[rows, np.minimum(commute_am, T - 1)] |= workday
    busy[rows, commute_pm] |= workday
    busy &= awake

    # Premonitory-symptom diary: rarely logged unprompted, and only at hours when it could be asked.
    can_ask = awake & ~busy
    sym_rate = rng.uniform(*H["symptom_entries_per_day"], S)
    n_sym = np.minimum(rng.poisson(sym_rate[subj]), can_ask.sum(1))
    keys = np.where(can_ask, rng.random((N, T)), 2.0)
    np.put_along_axis(rank, np.argsort(keys, axis=1), np.arange(T)[None, :].repeat(N, 0), axis=1)
    symptom_obs = rank < n_sym[:, None]

    feats = {
        "asleep": asleep.astype(np.float64),
        "caffeine_mg": caf * awake,
        "alcohol_drinks": alcohol.astype(np.float64),
        "pressure_hpa": pressure,
        "pressure_change_3h": change,
        "skipped_meal": skipped * awake,
        "screen_time_min": screen * awake,
        "steps": steps * awake,
        "menstrual_window": np.repeat(menstrual[:, None], T, 1).astype(np.float64),
        "busy": busy.astype(np.float64),
    }
    obs = np.stack([worn, hrv_obs, temp_obs, diary_obs, symptom_obs], axis=2)  # [N, T, M]
    return {
        "subject": subj,
        "day": day,
        "feats": feats,
        "obs": obs,
    }


def generate(subjects: int, days: int, seed: int, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every window's inputs, measurements, truth and posterior as arrays (N = subjects * days)."""
    P = default_params() if params is None else params
    rng = np.random.default_rng(seed)
    data = _inputs(rng, subjects, days)
    feats, obs = data["feats"], data["obs"]
    N = subjects * days
    daily_caf = feats["caffeine_mg"].sum(1).reshape(subjects, days).mean(1)
    habitual_subject = daily_caf >= HABITUAL_MG
    habitual_row = habitual_subject[data["subject"]]
    g, q, r = _context(feats, habitual_row, P)

    A, B, c, C, D, d = P["A"], P["B"], P["c"], P["C"], P["D"], P["d"]
    drive = g @ B.T + c  # [N, T, Z]
    z = np.empty((N, T, 4))
    z[:, 0] = P["mu0"] + rng.standard_normal((N, 4)) @ np.linalg.cholesky(P["Sigma0"]).T
    eps = rng.standard_normal((N, T, 4)) * np.sqrt(q)
    for t in range(1, T):
        z[:, t] = z[:, t - 1] @ A.T + drive[:, t] + eps[:, t]
    offset = g @ D.T + d  # [N, T, M]
    M = len(MEASUREMENTS)
    # Every measurement is drawn at every hour; the asked feature's draw at an askable hour is the answer
    # the patient would give if asked then (the logged value where it was logged).
    full = z @ C.T + offset + rng.standard_normal((N, T, M)) * np.sqrt(r)
    full = np.round(full, FLOAT_DECIMALS["measurement"])
    y = np.where(obs, full, np.nan)
    answer = np.where(askable(feats, UNASKABLE_WHEN), full[..., ASKED_INDEX], np.nan)  # [N, T]

    model = ExactModel(y - offset, obs, answer - offset[..., ASKED_INDEX], drive, q, r, P, ASKED_INDEX)
    post = model.posterior(None, want_query_value=True)
    logit_true = z[:, T - 1] @ P["w"] + P["b"]
    p_true = sigmoid(logit_true)
    y_next = (rng.random(N) < p_true).astype(np.int64)
    return {
        "subject": data["subject"],
        "day": data["day"],
        "feats": feats,
        "y": y,
        "obs": obs,
        "z": z,
        "post_mean": post.mean,
        "post_std": post.std,
        "query_value": post.query_value,  # 0 outside the pool (unaskable or logged)
        "answer": answer,
        "model": model,
        "y_next": y_next,
        "p_true": p_true,
        "p_bayes": post.p_bayes,
        "target_mean": post.target_mean,  # [N] E[w.Z_23 | obs]
        "target_var": post.target_var,  # [N] Var(w.Z_23 | obs)
        "habitual_subject": habitual_subject,
    }


# --- reference figures ------------------------------------------------------------------------------------


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


# --- files -------------------------------------------------------------------------------------------------


def columns() -> list[str]:
    """CSV header, in order."""
    cols = ["window_id", "subject_id", "day", "hour", *DEFAULT_FEATURES, ANSWER_COLUMN]
    for name in DEFAULT_LATENTS:
        cols += [f"z_{name}", f"post_mean_{name}", f"post_std_{name}"]
    return cols + ["query_value", "y_next", "p_true", "p_bayes"]


def _round_outputs(sim: dict[str, Any]) -> None:
    """Round the written values in place so that every figure in the meta comes from the CSV's values."""
    for key in ("z", "post_mean", "post_std"):
        sim[key] = np.round(sim[key], FLOAT_DECIMALS["latent"])
    sim["query_value"] = np.round(sim["query_value"], FLOAT_DECIMALS["query_value"])
    for key in ("p_true", "p_bayes"):
        sim[key] = np.round(sim[key], FLOAT_DECIMALS["prob"])


def _table(sim: dict[str, Any], rows: np.ndarray, days: int):
    import pyarrow as pa

    n = len(rows)

    def per_row(a: np.ndarray) -> np.ndarray:  # [n] per window -> [n * 24]
        return np.repeat(a, T)

    data: dict[str, Any] = {
        "window_id": per_row(sim["subject"][rows] * days + sim["day"][rows]),
        "subject_id": per_row(sim["subject"][rows]),
        "day": per_row(sim["day"][rows]),
        "hour": np.tile(np.arange(T), n),
    }
    for name in INPUTS:
        v = sim["feats"][name][rows].ravel()
        data[name] = v.astype(np.int64) if name in INTEGER_INPUTS else v
    y = sim["y"][rows]  # [n, 24, M], one gather per array rather than one per column
    for j, name in enumerate(MEASUREMENTS):
        v = y[:, :, j].ravel()
        data[name] = pa.array(v, mask=np.isnan(v))  # NaN -> null -> empty cell
    v = sim["answer"][rows].ravel()
    data[ANSWER_COLUMN] = pa.array(v, mask=np.isnan(v))
    z, mean, std = sim["z"][rows], sim["post_mean"][rows], sim["post_std"][rows]  # [n, 24, Z]
    for i, name in enumerate(DEFAULT_LATENTS):
        data[f"z_{name}"] = z[:, :, i].ravel()
        data[f"post_mean_{name}"] = mean[:, :, i].ravel()
        data[f"post_std_{name}"] = std[:, :, i].ravel()
    data["query_value"] = sim["query_value"][rows].ravel()
    data["y_next"] = per_row(sim["y_next"][rows])
    data["p_true"] = per_row(sim["p_true"][rows])
    data["p_bayes"] = per_row(sim["p_bayes"][rows])
    assert list(data) == columns()
    return pa.table(data)


def _write_csv(table, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    tmp = path.with_name(path.name + ".tmp")
    # pyarrow quotes header names whatever the quoting style; a plain header is friendlier to other tools.
    with pa.OSFile(str(tmp), "wb") as sink:
        sink.write((",".join(table.column_names) + "\n").encode())
        pcsv.write_csv(table, sink, pcsv.WriteOptions(include_header=False, quoting_style="none"))
    tmp.replace(path)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


class _Progress:
    """Stage lines on stderr: elapsed time and hourly rows per second so far."""

    def __init__(self, rows: int, enabled: bool) -> None:
        self.rows, self.enabled, self.t0 = rows, enabled, time.perf_counter()

    def __call__(self, stage: str) -> None:
        if self.enabled:
            dt = time.perf_counter() - self.t0
            rate = f", {self.rows / dt:,.0f} rows/s so far" if dt > 0.05 else ""
            print(f"[simulate] {dt:6.2f}s  {stage}  ({self.rows:,} rows{rate})", file=sys.stderr)


# --- entry points ------------------------------------------------------------------------------------------

TARGETS = {
    "base_rate": [0.15, 0.30],
    "val_bayes_auc": [0.70, 0.85],
    "latent_auc_above_bayes": True,
    "logreg_auc_gap_min": 0.02,
    "best_fixed_share_max": 0.75,
    "oracle_cut_share_min": 0.15,
}


def split_subjects(subjects: int, val_frac: float, test_frac: float, seed: int) -> dict[str, np.ndarray]:
    """Subject ids per split (disjoint, sorted); val and test get at least one subject when possible."""
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise ValueError(
            f"--val-frac {val_frac} and --test-frac {test_frac} must be in [0, 1) and sum below 1"
        )
    order = np.random.default_rng([seed, 7]).permutation(subjects)
    n_val = int(round(subjects * val_frac))
    n_test = int(round(subjects * test_frac))
    if subjects >= 3:
        n_val, n_test = max(n_val, int(val_frac > 0)), max(n_test, int(test_frac > 0))
    if n_val + n_test >= subjects:
        raise ValueError(
            f"{subjects} subjects leave none for training with --val-frac {val_frac} --test-frac {test_frac}"
        )
    parts = {"val": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}
    return {k: np.sort(parts[k]) for k in SPLITS}


def _import_reference_libraries() -> None:
    import pyarrow.csv  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import sklearn.metrics  # noqa: F401


def simulate(
    subjects: int = 300,
    days: int = 60,
    seed: int = 0,
    out_dir: str | Path = "data",
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    progress: bool = True,
) -> dict[str, Any]:
    """Simulate, write the three CSVs and the meta JSON into ``out_dir``; returns the meta."""
    args = (subjects, days, seed, out_dir, val_frac, test_frac, progress)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn depends on it
        return _simulate(*args)
    # The batched 4x4 algebra makes many small BLAS calls: extra BLAS threads only spin, and the CSV
    # writer threads need the cores.
    with threadpool_limits(limits=1, user_api="blas"):
        return _simulate(*args)


def _simulate(subjects, days, seed, out_dir, val_frac, test_frac, progress) -> dict[str, Any]:
    if subjects < 1 or days < 1:
        raise ValueError(f"--subjects ({subjects}) and --days ({days}) must be at least 1")
    split_ids = split_subjects(subjects, val_frac, test_frac, seed)
    # scikit-learn (with pandas and scipy) takes about a second to import; do it while numpy simulates.
    importer = threading.Thread(target=_import_reference_libraries, daemon=True)
    importer.start()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_rows = subjects * days * T
    tick = _Progress(n_rows, progress)
    tick(f"simulating {subjects} subjects x {days} days (seed {seed})")
    P = default_params()
    sim = generate(subjects, days, seed, P)
    _round_outputs(sim)
    tick("latent state, measurements, Kalman posterior and labels done")

    importer.join()

    split_rows = {k: np.flatnonzero(np.isin(sim["subject"], ids)) for k, ids in split_ids.items()}
    paths = {k: out / f"{PREFIX}_{k}.csv" for k in SPLITS}
    # CSV writing releases the GIL; the reference figures below run meanwhile.
    pool = ThreadPoolExecutor(max_workers=2)
    futures = [
        pool.submit(lambda k=k: _write_csv(_table(sim, split_rows[k], days), paths[k])) for k in SPLITS
    ]

    qv = sim["query_value"]
    train_rows = split_rows["train"]
    best_hours = best_fixed_hours(qv[train_rows], BEST_K)
    logreg = logreg_baseline(sim, split_rows) if len(np.unique(sim["y_next"][train_rows])) == 2 else None
    tick("reference figures (oracle, logistic regression, best fixed hours) done")
    flags = trigger_flags(sim)
    trig = _trigger_odds(flags, sim["y_next"])
    splits: dict[str, Any] = {}
    for i, (k, rows) in enumerate(split_rows.items()):
        splits[k] = _split_figures(
            sim, rows, len(split_ids[k]), best_hours, logreg["splits"].get(k) if logreg else None
        )
        if len(rows):
            splits[k].update(_asking_figures(sim, rows, best_hours, np.random.default_rng([seed, 13, i])))
    tick("asking references (greedy oracle, best fixed, random askable hours) done")
    for fut in futures:
        fut.result()
    pool.shutdown()
    tick("CSV files written")

    meta = _meta(subjects, days, seed, val_frac, test_frac, P, split_ids, splits, logreg, best_hours, trig)
    meta_path = out / f"{PREFIX}_meta.json"
    tmp = meta_path.with_name(meta_path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(meta), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(meta_path)
    tick(f"meta written; files in {out}")
    if progress:
        print(realism_summary(meta), file=sys.stderr)
    return _jsonable(meta)


def _split_figures(
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


def _asking_figures(
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
    for name, chosen in sets.items():
        res = model.posterior(chosen)
        cut[name] = base_var - res.target_var  # [n]
        scores = binary_scores(res.p_bayes, y)
        asked[name] = {"auc": scores["auc"], "brier": scores["brier"], "n_asked": float(chosen.sum(1).mean())}
    oracle_q = oracle_value(qv, BEST_K).sum()
    oracle_cut = cut["oracle"].sum()
    return {
        "pool_hours_mean": float(pool.sum(1).mean()),
        "random_share": float(qv[sets["random"]].sum() / oracle_q) if oracle_q > 0 else None,
        "oracle_cut_share": float(np.mean(cut["oracle"] / base_var)),
        "best_fixed_cut_share": float(np.mean(cut["best_fixed"] / base_var)),
        "random_cut_share": float(np.mean(cut["random"] / base_var)),
        "best_fixed_set_share": float(cut["best_fixed"].sum() / oracle_cut) if oracle_cut > 0 else None,
        "random_set_share": float(cut["random"].sum() / oracle_cut) if oracle_cut > 0 else None,
        "asked": asked,
    }


def _trigger_odds(flags: dict[str, np.ndarray], y: np.ndarray) -> dict[str, Any]:
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


def _meta(subjects, days, seed, val_frac, test_frac, P, split_ids, splits, logreg, best_hours, trig):
    feats = [
        {"name": n, "unit": UNITS[n], "kind": "measurement" if n in MEASUREMENTS else "input"}
        for n in DEFAULT_FEATURES
    ]
    val = splits["val"] if splits["val"]["n_windows"] else splits["train"]
    checks = {
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
    return {
        "generator": "aline.simulate",
        "seed": seed,
        "subjects": subjects,
        "days": days,
        "hours": T,
        "val_frac": val_frac,
        "test_frac": test_frac,
        "n_windows": subjects * days,
        "n_rows": subjects * days * T,
        "files": {k: f"{PREFIX}_{k}.csv" for k in SPLITS},
        "columns": columns(),
        "features": feats,
        "inputs": list(INPUTS),
        "measurements": list(MEASUREMENTS),
        "latents": list(DEFAULT_LATENTS),
        "window_id": "subject_id * days + day (unique across the three files)",
        "split_subjects": {k: v.tolist() for k, v in split_ids.items()},
        "model": {
            "equations": [
                "Z_0 ~ N(mu0, Sigma0)",
                "Z_t = A Z_{t-1} + B g_t + c + eps_t, eps_t ~ N(0, diag q_t), t = 1..23",
                "y_t = C Z_t + D g_t + d + delta_t, delta_t ~ N(0, diag r_t), observed entries only",
                "y_next ~ Bernoulli(sigmoid(w . Z_23 + b))",
            ],
            "g": list(G_NAMES),
            "context_noise": CONTEXT_NOISE,
            "g_definitions": G_DEFINITIONS,
            "params": P,
            "measurement_rounding_decimals": 2,
        },
        "habits": HABITS,
        "asking": ASKING,
        "query_value": f"Var(w.Z_23 | obs) - Var(w.Z_23 | obs + {ASKED} answered at hour t); "
        "0 outside the pool (an unaskable hour, or one where it was logged)",
        "p_bayes": "E[sigmoid(w.Z_23 + b) | obs], 48-node Gauss-Hermite quadrature",
        "splits": splits,
        "baselines": {
            "logreg": logreg,
            "best_fixed_hours": best_hours.tolist(),
            "best_fixed_k": BEST_K,
            "best_fixed_note": "chosen on train by mean query value; share = its summed query value / the "
            "summed query value of each window's own best 3 hours (the trainer's policy_value); "
            "*_set_share: the exact variance cut of the set's answers / that of the greedy oracle's; "
            "*_cut_share: mean over windows of that cut / Var(w.Z_23 | D0); asked.<strategy>: exact-Bayes "
            "AUC and Brier of the forecast given D0 plus that strategy's answers (fixed hours outside a "
            "window's pool are not asked); random: k pool hours drawn uniformly (seed [seed, 13, split])",
        },
        "triggers": trig,
        "realism": {"targets": TARGETS, "checks": checks},
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
            f"{pct('best_fixed_cut_share')}, random {pct('random_cut_share')}",
            "  exact-Bayes AUC / Brier with each strategy's answers: "
            + ", ".join(
                f"{k} {num(v['auc'])} / {num(v['brier'], 4)}" for k, v in (val.get("asked") or {}).items()
            ),
            f"  posterior variance floor {num(val['post_var_floor'], 4)}",
            f"  trigger odds ratios (all windows): {ors}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aline.simulate",
        description="Write synthetic hourly migraine-diary data with its exact posterior and oracle figures: "
        "DIR/synthetic_migraine_{train,val,test}.csv and DIR/synthetic_migraine_meta.json.",
    )
    parser.add_argument("--subjects", type=int, default=300, help="number of subjects (default 300)")
    parser.add_argument(
        "--days", type=int, default=60, help="days per subject; one window per day (default 60)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    parser.add_argument("--out", default="data", help="output folder, created if needed (default data)")
    parser.add_argument(
        "--val-frac",
        type=float,
        default=0.15,
        help="share of subjects in the validation split (default 0.15)",
    )
    parser.add_argument(
        "--test-frac", type=float, default=0.15, help="share of subjects in the test split (default 0.15)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines or realism summary on stderr")
    args = parser.parse_args(argv)
    try:
        simulate(args.subjects, args.days, args.seed, args.out, args.val_frac, args.test_frac, not args.quiet)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
