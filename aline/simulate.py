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
from aline.scoring import best_fixed_hours
from aline.simmodel import (
    ANSWER_COLUMN,
    ASKED,
    ASKED_INDEX,
    ASKING,
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
from aline.simrefs import (
    BEST_K,
    TARGETS,
    asking_figures,
    logreg_baseline,
    realism_checks,
    realism_summary,
    split_figures,
    trigger_flags,
    trigger_odds,
)

# Re-exported for callers that knew them here.
__all__ = ["default_params", "expected_sigmoid", "generate", "main", "simulate"]
_context = context

PREFIX = "synthetic_migraine"
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


def _write_parquet(table, path: Path) -> None:
    import pyarrow.parquet as pq

    tmp = path.with_name(path.name + ".tmp")
    # Same column types and values as the CSV (float64, int64), so both formats load to identical arrays.
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)


WRITERS = {"csv": _write_csv, "parquet": _write_parquet}


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
    fmt: str = "csv",
) -> dict[str, Any]:
    """Simulate, write the three splits (``fmt``: csv or parquet) and the meta JSON into ``out_dir``;
    returns the meta."""
    if fmt not in WRITERS:
        raise ValueError(f"--format {fmt!r}: expected one of {', '.join(WRITERS)}")
    args = (subjects, days, seed, out_dir, val_frac, test_frac, progress, fmt)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn depends on it
        return _simulate(*args)
    # The batched 4x4 algebra makes many small BLAS calls: extra BLAS threads only spin, and the CSV
    # writer threads need the cores.
    with threadpool_limits(limits=1, user_api="blas"):
        return _simulate(*args)


def _simulate(subjects, days, seed, out_dir, val_frac, test_frac, progress, fmt) -> dict[str, Any]:
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
    paths = {k: out / f"{PREFIX}_{k}.{fmt}" for k in SPLITS}
    write = WRITERS[fmt]
    # CSV writing releases the GIL; the reference figures below run meanwhile.
    pool = ThreadPoolExecutor(max_workers=2)
    futures = [pool.submit(lambda k=k: write(_table(sim, split_rows[k], days), paths[k])) for k in SPLITS]

    qv = sim["query_value"]
    train_rows = split_rows["train"]
    best_hours = best_fixed_hours(qv[train_rows], BEST_K)
    logreg = logreg_baseline(sim, split_rows) if len(np.unique(sim["y_next"][train_rows])) == 2 else None
    tick("reference figures (oracle, logistic regression, best fixed hours) done")
    flags = trigger_flags(sim)
    trig = trigger_odds(flags, sim["y_next"])
    splits: dict[str, Any] = {}
    for i, (k, rows) in enumerate(split_rows.items()):
        splits[k] = split_figures(
            sim, rows, len(split_ids[k]), best_hours, logreg["splits"].get(k) if logreg else None
        )
        if len(rows):
            splits[k].update(asking_figures(sim, rows, best_hours, np.random.default_rng([seed, 13, i])))
    tick("asking references (greedy oracle, best fixed, random askable hours) done")
    for fut in futures:
        fut.result()
    pool.shutdown()
    tick(f"{fmt} files written")
    for k in SPLITS:
        # A split left from an earlier run in the other format would disagree with the new meta, and the
        # loader refuses a folder holding both formats of one split.
        for other in WRITERS.keys() - {fmt}:
            (out / f"{PREFIX}_{k}.{other}").unlink(missing_ok=True)

    meta = _meta(subjects, days, seed, val_frac, test_frac, P, split_ids, splits, logreg, best_hours, trig)
    meta["files"] = {k: p.name for k, p in paths.items()}
    meta_path = out / f"{PREFIX}_meta.json"
    tmp = meta_path.with_name(meta_path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(meta), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(meta_path)
    tick(f"meta written; files in {out}")
    if progress:
        print(realism_summary(meta), file=sys.stderr)
    return _jsonable(meta)


def _meta(subjects, days, seed, val_frac, test_frac, P, split_ids, splits, logreg, best_hours, trig):
    feats = [
        {"name": n, "unit": UNITS[n], "kind": "measurement" if n in MEASUREMENTS else "input"}
        for n in DEFAULT_FEATURES
    ]
    checks = realism_checks(splits)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aline.simulate",
        description="Write synthetic hourly migraine-diary data with its exact posterior and oracle figures: "
        "DIR/synthetic_migraine_{train,val,test}.csv (or .parquet with --format parquet) and "
        "DIR/synthetic_migraine_meta.json.",
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
    parser.add_argument(
        "--format",
        choices=sorted(WRITERS),
        default="csv",
        help="file format of the three splits: csv or parquet (.parquet; the trainer reads either; "
        "default csv)",
    )
    args = parser.parse_args(argv)
    try:
        simulate(
            args.subjects,
            args.days,
            args.seed,
            args.out,
            args.val_frac,
            args.test_frac,
            not args.quiet,
            args.format,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
