"""The simulator's generative model as known functions of the observed inputs (numpy only).

One job: the constants of the linear-Gaussian model and the map from a window's observed inputs to the
known drive ``g_t``, the process variances ``q_t`` and the measurement variances ``r_t``. The simulator
(:mod:`aline.simulate`) draws data with them and :mod:`aline.simulator.exact` rebuilds them from a written
CSV and the meta file, so both condition on exactly the same model.

    Z_0 ~ N(mu0, Sigma0)
    Z_t = A Z_{t-1} + B g_t + c + eps_t,   eps_t ~ N(0, diag q_t)       t = 1..23
    y_t = C Z_t + D g_t + d + delta_t,     delta_t ~ N(0, diag r_t)     only the observed entries
    y_next ~ Bernoulli(sigmoid(w · Z_23 + b))

Z = (stress, sleep_debt, hormonal, env_load). y = (heart_rate, hrv, skin_temp, stress_rating,
symptom_score). The asked question is the premonitory-symptom score (``ASKED``): fatigue, yawning and neck
stiffness are the commonest premonitory symptoms and precede attacks by hours (Giffin et al. 2003,
Neurology 60:935; Karsan & Goadsby 2018, Curr Pain Headache Rep 22:1; hypothalamic activity changes in the
day before an attack: Schulte & May 2016, Brain 139:1987), so the score loads on the forecast-relevant
latents (sleep debt and trigger load). How reliable a momentary self-rating is depends on the moment: the
ecological-momentary-assessment literature treats ratings made while distracted or impaired as noisier
(Shiffman, Stone & Hufford 2008, Annu Rev Clin Psychol 4:1). Here its noise variance grows with screen use,
walking and recent alcohol in that hour, all observed: an answer in a quiet hour is worth several in a busy
one, and the quiet hours move from day to day. ``q_t`` and ``r_t`` depend on observed inputs only, so the
model stays linear-Gaussian in Z given the inputs and every posterior is exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aline.config import DEFAULT_FEATURES, DEFAULT_MEASUREMENTS

T = 24
MEASUREMENTS = DEFAULT_MEASUREMENTS
INPUTS = tuple(f for f in DEFAULT_FEATURES if f not in MEASUREMENTS)
# The question the patient can be asked at any askable hour, and the column holding the answer.
ASKED = "symptom_score"
ASKED_INDEX = MEASUREMENTS.index(ASKED)
ANSWER_PREFIX = "ask_"
ANSWER_COLUMN = ANSWER_PREFIX + ASKED
# Observed flags under which an hour cannot be asked (the config's default policy.unaskable_when).
UNASKABLE_WHEN = ("asleep", "busy")
HABITUAL_MG = 50.0  # mean daily caffeine that marks a habitual user

# Inputs that are counts or flags: written as integers ("3", not "3.0").
INTEGER_INPUTS = frozenset(
    (
        "asleep",
        "caffeine_mg",
        "alcohol_drinks",
        "skipped_meal",
        "screen_time_min",
        "steps",
        "menstrual_window",
        "busy",
    )
)

UNITS = {
    "asleep": "0/1 flag",
    "caffeine_mg": "mg consumed in the hour",
    "alcohol_drinks": "standard drinks in the hour",
    "pressure_hpa": "hPa",
    "pressure_change_3h": "hPa, pressure now minus 3 hours earlier",
    "skipped_meal": "0/1, a planned meal skipped in the hour",
    "screen_time_min": "minutes of screen use in the hour",
    "steps": "steps in the hour",
    "menstrual_window": "0/1, within -2..+2 days of menses onset (constant over the day)",
    "busy": "0/1, driving, commuting or in a meeting: the patient cannot answer a question this hour",
    "usual_caffeine_mg": "mg a day: the subject's mean daily caffeine over its diary days (every row alike)",
    "heart_rate": "bpm, hourly mean (empty: watch not worn)",
    "hrv": "ms RMSSD (empty: not worn or motion artefact)",
    "skin_temp": "deg C (empty: watch not worn)",
    "stress_rating": "diary score 0-10, continuous (empty: not logged)",
    "symptom_score": "premonitory-symptom diary score 0-10 (fatigue, yawning, neck stiffness), continuous "
    "(empty: not logged)",
}

# Known functions of the observed inputs that drive the latent state and the measurements.
G_NAMES = (
    "awake",
    "skipped_meal_last4h",
    "screen_hours",
    "ksteps",
    "caffeine_100mg",
    "caffeine_100mg_after_15h",
    "drinks",
    "heavy_drinking_so_far",
    "pressure_drop_hpa",
    "caffeine_withdrawal",
    "menstrual_window",
    "drinks_last3h",
)

G_DEFINITIONS = {
    "skipped_meal_last4h": "skipped meals in hours t-3..t",
    "pressure_drop_hpa": "max(0, -pressure_change_3h - 0.3)",
    "heavy_drinking_so_far": "1 once the day's drinks up to hour t reach 5",
    "caffeine_withdrawal": "habitual user, no caffeine yet today, awake, hour >= 10",
    "habitual_user": f"subject's mean daily caffeine over its days >= {HABITUAL_MG:g} mg",
    "drinks_last3h": "drinks in hours t-2..t",
}

CONTEXT_NOISE = [
    "q_t[stress] = q_base[stress] * (q_stress_asleep_factor if asleep else 1)"
    " * (1 + q_stress_skipped_meal_gain * min(skipped_meal_last4h, 1)"
    " + q_stress_pressure_drop_gain * pressure_drop_hpa)",
    "r_t[heart_rate] = r_base[heart_rate] * (1 + r_heart_rate_per_ksteps * steps / 1000)",
    "r_t[hrv] = r_base[hrv] * (r_hrv_active_factor if steps > 1500 else 1)",
    "r_t[symptom_score] = r_base[symptom_score] * (1 + r_symptom_per_screen_hour * screen_time_min / 60"
    " + r_symptom_per_ksteps_over_1k * max(steps / 1000 - 1, 0) + r_symptom_per_drink * drinks_last3h)",
]


ASKING = {
    "feature": ASKED,
    "answer_column": ANSWER_COLUMN,
    "unaskable_when": list(UNASKABLE_WHEN),
    "pool": f"hours whose {ASKED} cell is empty and whose {ANSWER_COLUMN} cell is not; equivalently "
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


def default_params() -> dict[str, Any]:
    """Every constant of the generative model; the meta file stores them verbatim."""
    G = {n: i for i, n in enumerate(G_NAMES)}
    Z, M = 4, len(MEASUREMENTS)
    B = np.zeros((Z, len(G_NAMES)))
    # stress: rises while awake, with skipped meals, screens and a falling barometer; eases with exercise.
    B[0, [G["awake"], G["skipped_meal_last4h"], G["screen_hours"], G["ksteps"], G["drinks"]]] = [
        0.12,
        0.35,
        0.20,
        -0.03,
        -0.05,
    ]
    B[0, G["pressure_drop_hpa"]] = 0.05
    # sleep debt: builds while awake, repaid while asleep (c), more with late caffeine and alcohol.
    B[1, [G["awake"], G["caffeine_100mg_after_15h"], G["drinks"]]] = [0.22, 0.08, 0.02]
    # hormonal state: pulled up during the menstrual window.
    B[2, G["menstrual_window"]] = 0.025
    # trigger load: alcohol (heavy drinking much more), falling pressure, caffeine withdrawal.
    B[3, [G["drinks"], G["heavy_drinking_so_far"], G["pressure_drop_hpa"], G["caffeine_withdrawal"]]] = [
        0.03,
        0.10,
        0.025,
        0.05,
    ]
    D = np.zeros((M, len(G_NAMES)))
    D[0, [G["awake"], G["ksteps"], G["caffeine_100mg"], G["drinks"]]] = [9.0, 6.0, 1.5, 2.0]
    D[1, [G["awake"], G["drinks"]]] = [-10.0, -2.0]
    D[2, G["awake"]] = -0.6
    # Caffeine masks fatigue for a few hours: the symptom score reads lower right after a coffee.
    D[4, G["caffeine_100mg"]] = -0.4
    return {
        "A": np.array(
            [
                [0.80, 0.0, 0.0, 0.0],
                [0.0, 0.99, 0.0, 0.0],
                [0.0, 0.0, 0.97, 0.0],
                # Load integrates stress: a stressful day followed by calm (let-down) leaves load high and
                # stress low, and the label weighs stress negatively and load positively.
                [0.06, 0.0, 0.0, 0.97],
            ]
        ),
        "B": B,
        "c": np.array([-0.06, -0.15, 0.0, 0.0]),
        "q_base": np.array([0.08, 0.003, 0.003, 0.003]),
        "q_stress_asleep_factor": 0.35,
        "q_stress_skipped_meal_gain": 8.0,
        "q_stress_pressure_drop_gain": 0.8,
        "mu0": np.array([-0.4, 0.0, 0.0, 0.2]),
        "Sigma0": np.array(
            [
                [0.25, 0.05, 0.0, 0.05],
                [0.05, 0.30, 0.0, 0.0],
                [0.0, 0.0, 0.80, 0.0],
                [0.05, 0.0, 0.0, 0.30],
            ]
        ),
        "C": np.array(
            [
                [2.0, 2.0, 0.0, 0.0],
                [-3.5, -3.0, 0.0, -2.5],
                [0.0, 0.0, 0.35, 0.1],
                [1.8, 0.0, 0.0, 0.0],
                # Premonitory symptoms: fatigue and yawning (sleep debt), neck stiffness and the prodrome
                # of the trigger load; not stress itself.
                [0.0, 1.4, 0.3, 1.8],
            ]
        ),
        "D": D,
        "d": np.array([55.0, 55.0, 33.6, 4.2, 2.0]),
        "r_base": np.array([5.0, 30.0, 0.03, 0.5, 0.3]),
        "r_heart_rate_per_ksteps": 2.0,
        "r_hrv_active_factor": 2.0,
        "r_symptom_per_screen_hour": 12.0,
        "r_symptom_per_ksteps_over_1k": 4.0,
        "r_symptom_per_drink": 4.0,
        "w": np.array([-0.3, 1.5, 0.6, 1.9]),
        "b": -2.7,
    }


def params_from_meta(raw: dict[str, Any]) -> dict[str, Any]:
    """The meta file's ``model.params`` back as arrays (lists -> float arrays, scalars kept)."""
    return {k: np.asarray(v, dtype=np.float64) if isinstance(v, list) else v for k, v in raw.items()}


def context(
    feats: dict[str, np.ndarray], habitual_row: np.ndarray, P: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """g [N, T, G], process variances q [N, T, Z] and measurement variances r [N, T, M].

    ``feats``: every input of ``INPUTS`` as [N, T]; ``habitual_row`` [N] bool (the subject's flag).
    """
    awake = 1.0 - feats["asleep"]
    caf = feats["caffeine_mg"]
    drinks = feats["alcohol_drinks"]
    skipped = feats["skipped_meal"]
    skip4 = skipped.copy()
    for lag in (1, 2, 3):
        skip4[:, lag:] += skipped[:, :-lag]
    drinks3 = drinks.copy()
    for lag in (1, 2):
        drinks3[:, lag:] += drinks[:, :-lag]
    hour = np.arange(T)[None, :]
    drop = np.maximum(0.0, -feats["pressure_change_3h"] - 0.3)
    no_caf_yet = np.cumsum(caf, axis=1) == 0
    screen_h = feats["screen_time_min"] / 60.0
    ksteps = feats["steps"] / 1000.0
    g = np.stack(
        [
            awake,
            skip4,
            screen_h,
            ksteps,
            caf / 100.0,
            caf / 100.0 * (hour >= 15),
            drinks,
            (np.cumsum(drinks, axis=1) >= 5).astype(np.float64),
            drop,
            (habitual_row[:, None] & no_caf_yet & (awake > 0) & (hour >= 10)).astype(np.float64),
            feats["menstrual_window"],
            drinks3,
        ],
        axis=2,
    )
    stress_q = P["q_base"][0] * np.where(awake > 0, 1.0, P["q_stress_asleep_factor"])
    stress_q = stress_q * (
        1.0
        + P["q_stress_skipped_meal_gain"] * np.minimum(skip4, 1.0)
        + P["q_stress_pressure_drop_gain"] * drop
    )
    q = np.empty(awake.shape + (4,))
    q[..., 0] = stress_q
    q[..., 1:] = P["q_base"][1:]
    r = np.empty(awake.shape + (len(MEASUREMENTS),))
    r[...] = P["r_base"]
    r[..., 0] *= 1.0 + P["r_heart_rate_per_ksteps"] * ksteps
    r[..., 1] *= np.where(feats["steps"] > 1500, P["r_hrv_active_factor"], 1.0)
    r[..., ASKED_INDEX] *= (
        1.0
        + P["r_symptom_per_screen_hour"] * screen_h
        + P["r_symptom_per_ksteps_over_1k"] * np.maximum(ksteps - 1.0, 0.0)
        + P["r_symptom_per_drink"] * drinks3
    )
    return g, q, r


def askable(feats: dict[str, np.ndarray], unaskable_when: tuple[str, ...] = UNASKABLE_WHEN) -> np.ndarray:
    """[N, T] bool: hours at which the question can be put (every flag in ``unaskable_when`` is 0)."""
    ok = np.ones(next(iter(feats.values())).shape, dtype=bool)
    for name in unaskable_when:
        ok &= feats[name] == 0
    return ok


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def expected_sigmoid(mean: np.ndarray, var: np.ndarray, nodes: int = 48) -> np.ndarray:
    """E[sigmoid(a)] for a ~ N(mean, var), by Gauss-Hermite quadrature."""
    x, wts = np.polynomial.hermite.hermgauss(nodes)
    a = mean[:, None] + np.sqrt(2.0 * var)[:, None] * x[None, :]
    return sigmoid(a) @ (wts / np.sqrt(np.pi))
