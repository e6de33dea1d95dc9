"""Exact posterior and Bayes forecast of simulator windows with any extra set of answered hours (numpy only).

One job: given a window's observed inputs and measurements (the day as logged, D0) plus the patient's
answers at a chosen set of hours, return the exact Gaussian posterior of every latent, the posterior of
the forecast quantity w·Z_23 and the Bayes forecast E[sigmoid(w·Z_23 + b)]. The simulator writes its
posterior and ``query_value`` columns with it, and evaluation scores every asking strategy against it
(:func:`load_exact_split` rebuilds everything from a split's CSV and the meta file).

The pool of a window is the set of hours whose asked-feature cell is empty and whose answer cell is not
(the answer column is empty exactly where the hour cannot be asked). Asked hours outside the pool are
ignored here; callers count them. Answers are absorbed as one more scalar measurement through the same
Kalman filter and RTS smoother (:func:`aline.kalman.smooth`), so with no answers the result is the CSV's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from aline.kalman import smooth
from aline.simmodel import HABITUAL_MG, T, context, expected_sigmoid, params_from_meta


@dataclass
class ExactResult:
    """Exact posterior given D0 and the answers at the asked hours."""

    mean: np.ndarray  # [N, T, Z]
    std: np.ndarray  # [N, T, Z]
    target_mean: np.ndarray  # [N] E[w·Z_23 | D0, answers]
    target_var: np.ndarray  # [N] Var(w·Z_23 | D0, answers)
    p_bayes: np.ndarray  # [N] E[sigmoid(w·Z_23 + b) | D0, answers]
    query_value: np.ndarray | None  # [N, T] cut in target_var by one more answer; 0 outside the pool left


def exact_posterior(
    resid: np.ndarray,
    obs: np.ndarray,
    answers: np.ndarray | None,
    drive: np.ndarray,
    q: np.ndarray,
    r: np.ndarray,
    params: dict[str, Any],
    asked: np.ndarray | None = None,
    *,
    asked_index: int,
    want_query_value: bool = False,
) -> ExactResult:
    """Posterior of each window given its measurements and the answers at ``asked`` hours in its pool.

    Shapes: resid, obs, r [N, T, M] (resid = measurement minus its known offset D g_t + d, NaN where
    missing); answers [N, T] (answer minus the asked feature's offset, NaN where the hour is unaskable);
    drive, q [N, T, Z] (drive = B g_t + c); asked [N, T] bool or None. ``asked_index`` is the asked
    feature's measurement index. The query value of an hour is the cut in Var(w·Z_23) from one more answer
    there; it is 0 outside the pool and at hours already asked.
    """
    k = asked_index
    logged = obs[..., k]
    pool = np.zeros_like(logged) if answers is None else ~logged & ~np.isnan(answers)  # [N, T]
    if asked is not None and answers is not None:
        use = np.asarray(asked, dtype=bool) & pool
        if use.any():
            obs = obs.copy()
            obs[..., k] |= use
            resid = resid.copy()
            resid[..., k] = np.where(use, answers, resid[..., k])
            pool = pool & ~use
    P = params
    post = smooth(
        resid,
        obs,
        drive,
        q,
        r,
        P["A"],
        P["C"],
        P["mu0"],
        P["Sigma0"],
        target=P["w"],
        query_row=P["C"][k] if want_query_value else None,
        query_var=r[..., k] if want_query_value else None,
    )
    qv = None
    if want_query_value:
        qv = np.where(pool, post.query_value, 0.0)
    p = expected_sigmoid(post.target_mean + P["b"], post.target_var)
    return ExactResult(post.mean, np.sqrt(post.var), post.target_mean, post.target_var, p, qv)


@dataclass
class ExactModel:
    """A batch of windows in the form :func:`exact_posterior` needs, with the set-level helpers."""

    resid: np.ndarray  # [N, T, M]
    obs: np.ndarray  # [N, T, M] bool
    answers: np.ndarray | None  # [N, T] answer residuals, NaN where unaskable
    drive: np.ndarray  # [N, T, Z]
    q: np.ndarray  # [N, T, Z]
    r: np.ndarray  # [N, T, M]
    params: dict[str, Any]
    asked_index: int

    @property
    def askable(self) -> np.ndarray:
        """[N, T] bool: the pool (answer known and the asked feature not logged)."""
        if self.answers is None:
            return np.zeros(self.obs.shape[:2], dtype=bool)
        return ~self.obs[..., self.asked_index] & ~np.isnan(self.answers)

    def take(self, rows: np.ndarray) -> ExactModel:
        return replace(
            self,
            resid=self.resid[rows],
            obs=self.obs[rows],
            answers=None if self.answers is None else self.answers[rows],
            drive=self.drive[rows],
            q=self.q[rows],
            r=self.r[rows],
        )

    def posterior(self, asked: np.ndarray | None = None, *, want_query_value: bool = False) -> ExactResult:
        return exact_posterior(
            self.resid,
            self.obs,
            self.answers,
            self.drive,
            self.q,
            self.r,
            self.params,
            asked,
            asked_index=self.asked_index,
            want_query_value=want_query_value,
        )

    def set_value(self, asked: np.ndarray, base_var: np.ndarray | None = None) -> np.ndarray:
        """[N] Var(w·Z_23 | D0) - Var(w·Z_23 | D0, answers at the asked hours in the pool)."""
        if base_var is None:
            base_var = self.posterior(None).target_var
        return base_var - self.posterior(asked).target_var

    def greedy_oracle(self, k: int) -> np.ndarray:
        """[N, T] bool: k pool hours per window (fewer if the pool is smaller), each the one whose answer
        cuts Var(w·Z_23) most given the answers already chosen."""
        pool = self.askable
        chosen = np.zeros_like(pool)
        rows = np.arange(pool.shape[0])
        for _ in range(k):
            cand = pool & ~chosen
            if not cand.any():
                break
            qv = self.posterior(chosen, want_query_value=True).query_value
            pick = np.argmax(np.where(cand, qv, -np.inf), axis=1)
            has = cand.any(axis=1)
            chosen[rows[has], pick[has]] = True
        return chosen


@dataclass
class ExactSplit(ExactModel):
    """One split's windows (sorted by id) as written, ready for exact scoring of asked sets."""

    window_id: np.ndarray = None  # type: ignore[assignment]  # [N]
    y: np.ndarray = None  # type: ignore[assignment]  # [N] labels
    query_value: np.ndarray = None  # type: ignore[assignment]  # [N, T] the CSV's column
    p_bayes_csv: np.ndarray = None  # type: ignore[assignment]  # [N] the CSV's p_bayes


def model_arrays(
    feats: dict[str, np.ndarray],
    meas: np.ndarray,
    answer: np.ndarray | None,
    habitual_row: np.ndarray,
    params: dict[str, Any],
    asked_index: int,
) -> ExactModel:
    """Build the model of a batch: ``feats`` every input [N, T]; ``meas`` [N, T, M] with NaN where missing;
    ``answer`` [N, T] raw answers (NaN where unaskable); ``habitual_row`` [N] bool."""
    P = params
    g, q, r = context(feats, habitual_row, P)
    drive = g @ P["B"].T + P["c"]  # [N, T, Z]
    offset = g @ P["D"].T + P["d"]  # [N, T, M]
    obs = ~np.isnan(meas)
    resid = meas - offset
    ans = None if answer is None else answer - offset[..., asked_index]
    return ExactModel(resid, obs, ans, drive, q, r, P, asked_index)


def load_exact_split(csv_path: str | Path, meta_path: str | Path) -> ExactSplit:
    """Read one split's CSV (inputs, measurements, answers, labels) and the meta file's model."""
    import pyarrow.csv as pacsv

    meta = json.loads(Path(meta_path).read_text(encoding="utf-8"))
    P = params_from_meta(meta["model"]["params"])
    inputs, measurements = list(meta["inputs"]), list(meta["measurements"])
    asking = meta["asking"]
    asked, answer_col = asking["feature"], asking["answer_column"]
    cols = ["window_id", "subject_id", "hour", *inputs, *measurements, answer_col]
    cols += ["query_value", "y_next", "p_bayes"]
    try:
        table = pacsv.read_csv(
            csv_path,
            convert_options=pacsv.ConvertOptions(include_columns=cols, null_values=[""]),
        )
    except Exception as err:  # pyarrow raises several types; one message names the file
        raise ValueError(f"{csv_path}: cannot read the columns the exact posterior needs ({err})") from None
    data = {c: table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in cols}
    wid = data["window_id"].astype(np.int64)
    order = np.lexsort((data["hour"], wid))
    n_rows = len(wid)
    if n_rows % T:
        raise ValueError(f"{csv_path}: {n_rows} rows is not a whole number of {T}-hour windows")
    n = n_rows // T

    def grid(name: str) -> np.ndarray:
        return data[name][order].reshape(n, T)

    ids = wid[order].reshape(n, T)
    if not ((ids == ids[:, :1]).all() and (grid("hour") == np.arange(T)).all()):
        raise ValueError(f"{csv_path}: every window needs exactly {T} rows, hours 0..{T - 1}")
    feats = {name: grid(name) for name in inputs}
    meas = np.stack([grid(name) for name in measurements], axis=2)  # [n, T, M]
    subject = grid("subject_id")[:, 0].astype(np.int64)
    # The habitual-caffeine flag is the subject's mean daily caffeine over its days (all in this split).
    daily = feats["caffeine_mg"].sum(1)
    _, inv = np.unique(subject, return_inverse=True)
    habit = np.bincount(inv, daily) / np.bincount(inv)
    habitual_row = habit[inv] >= HABITUAL_MG
    m = model_arrays(feats, meas, grid(answer_col), habitual_row, P, measurements.index(asked))
    return ExactSplit(
        **{f: getattr(m, f) for f in ExactModel.__dataclass_fields__},
        window_id=ids[:, 0],
        y=grid("y_next")[:, 0],
        query_value=grid("query_value"),
        p_bayes_csv=grid("p_bayes")[:, 0],
    )
