"""Drawing simulated subject-days: each subject's habits, a day's observed inputs, the latent path and
the measurements from the generative model (:mod:`aline.simulator.generative`), the exact posterior and
the next-day label; and the split of subjects into train, val and test. No files here:
:mod:`aline.simulate` writes them."""

from __future__ import annotations

from typing import Any

import numpy as np

from aline.config import DEFAULT_FEATURES, DEFAULT_LATENTS, SPLITS
from aline.simulator.exact import ExactModel
from aline.simulator.generative import (
    ASKED_INDEX,
    HABITUAL_MG,
    MEASUREMENTS,
    UNASKABLE_WHEN,
    UNITS,
    T,
    askable,
    context,
    default_params,
    sigmoid,
)

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


def draw_inputs(rng: np.random.Generator, subjects: int, days: int) -> dict[str, np.ndarray]:
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
    data = draw_inputs(rng, subjects, days)
    feats, obs = data["feats"], data["obs"]
    N = subjects * days
    daily_caf = feats["caffeine_mg"].sum(1).reshape(subjects, days).mean(1)
    habitual_subject = daily_caf >= HABITUAL_MG
    habitual_row = habitual_subject[data["subject"]]
    # A subject-level input: the mean the habitual-user flag is read from (the flag drives withdrawal), as
    # an intake form would record it. Without it no model reading one day can reach p_bayes.
    usual = np.round(daily_caf, FLOAT_DECIMALS["measurement"])[data["subject"]]  # [N]
    feats["usual_caffeine_mg"] = np.repeat(usual[:, None], T, axis=1)
    g, q, r = context(feats, habitual_row, P)

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
    post = model.base()  # query values, and the scalars that the asking references condition on
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
