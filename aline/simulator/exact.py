"""Exact posterior and Bayes forecast of simulator windows with any extra set of answered hours (numpy only).

One job: given a window's observed inputs and measurements (the day as logged, D0) plus the patient's
answers at a chosen set of hours, return the exact Gaussian posterior of every latent, the posterior of
the forecast quantity w·Z_23 and the Bayes forecast E[sigmoid(w·Z_23 + b)]. The simulator writes its
posterior and ``query_value`` columns with it, and evaluation scores every asking strategy against it
(:func:`load_exact_split` rebuilds everything from a split's CSV and the meta file).

The pool of a window is the set of hours whose asked-feature cell is empty and whose answer cell is not
(the answer column is empty exactly where the hour cannot be asked). Asked hours outside the pool are
ignored here; callers count them. Answers are absorbed as one more scalar measurement through the same
Kalman filter and RTS smoother (:func:`aline.simulator.kalman.smooth`), so with no answers the result is
the CSV's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from aline.simulator.generative import HABITUAL_MG, T, context, expected_sigmoid, params_from_meta
from aline.simulator.kalman import smooth


@dataclass
class ExactResult:
    """Exact posterior given D0 and the answers at the asked hours."""

    mean: np.ndarray  # [N, T, Z]
    std: np.ndarray  # [N, T, Z]
    target_mean: np.ndarray  # [N] E[w·Z_23 | D0, answers]
    target_var: np.ndarray  # [N] Var(w·Z_23 | D0, answers)
    p_bayes: np.ndarray  # [N] E[sigmoid(w·Z_23 + b) | D0, answers]
    query_value: np.ndarray | None  # [N, T] cut in target_var by one more answer; 0 outside the pool left
    scalars: AnswerScalars | None = None  # only with want_scalars
    loglik: np.ndarray | None = None  # [N] log p(D0 and the answers | model)


@dataclass
class AnswerScalars:
    """Joint Gaussian posterior, given D0, of w·Z_23 and of each hour's answer signal s_t = c·Z_t.

    An answer at hour t is s_t + noise (variance ``noise[:, t]``), so the forecast quantity given D0 and
    any set of answers follows by exact rank-one conditioning of this (T + 1)-dimensional Gaussian, with
    no second pass of the smoother: what makes greedy search over sets cheap.
    """

    target_mean: np.ndarray  # [N]
    target_var: np.ndarray  # [N]
    mean: np.ndarray  # [N, T] E[s_t | D0]
    cov: np.ndarray  # [N, T, T] Cov(s_t, s_u | D0)
    cross: np.ndarray  # [N, T] Cov(s_t, w·Z_23 | D0)
    noise: np.ndarray  # [N, T] answer noise variance
    answers: np.ndarray | None  # [N, T] answer residuals, NaN outside the pool's hours
    pool: np.ndarray  # [N, T] bool
    b: float

    def take(self, rows: np.ndarray) -> AnswerScalars:
        return replace(
            self,
            **{
                f: None if getattr(self, f) is None else getattr(self, f)[rows]
                for f in ("target_mean", "target_var", "mean", "cov", "cross", "noise", "answers", "pool")
            },
        )

    def condition(self, asked: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """E and Var of w·Z_23 given D0 and the answers at the asked hours in the pool. ``[N], [N]``

        One small solve per window over its asked hours (padded to the largest set with inert entries).
        """
        use = np.zeros_like(self.pool) if asked is None else np.asarray(asked, dtype=bool) & self.pool
        count = use.sum(axis=1)  # [N]
        k = int(count.max(initial=0))
        if k == 0:
            return self.target_mean.copy(), self.target_var.copy()
        rows = np.arange(use.shape[0])[:, None]
        hours = np.argsort(~use, axis=1, kind="stable")[:, :k]  # asked hours first  [N, k]
        valid = np.arange(k)[None, :] < count[:, None]  # [N, k]
        both = valid[:, :, None] & valid[:, None, :]
        S = np.where(both, self.cov[rows[:, :, None], hours[:, :, None], hours[:, None, :]], 0.0)  # [N, k, k]
        # Padding entries become an inert unit diagonal with zero covariance to everything.
        S[:, np.arange(k), np.arange(k)] += np.where(valid, self.noise[rows, hours], 1.0)
        c = np.where(valid, self.cross[rows, hours], 0.0)  # [N, k]
        rhs = [c]
        if self.answers is not None:
            rhs.append(np.where(valid, self.answers[rows, hours] - self.mean[rows, hours], 0.0))
        sol = np.linalg.solve(S, np.stack(rhs, axis=2))  # [N, k, 1 or 2]
        var = self.target_var - np.einsum("nk,nk->n", c, sol[:, :, 0])
        mean = self.target_mean.copy()
        if self.answers is not None:
            mean += np.einsum("nk,nk->n", c, sol[:, :, 1])
        return mean, var

    def p_bayes(self, asked: np.ndarray | None) -> np.ndarray:
        tm, tv = self.condition(asked)
        return expected_sigmoid(tm + self.b, tv)

    def set_value(self, asked: np.ndarray) -> np.ndarray:
        """[N] Var(w·Z_23 | D0) - Var(w·Z_23 | D0, answers at the asked hours in the pool)."""
        return self.target_var - self.condition(asked)[1]

    def greedy(self, k: int) -> np.ndarray:
        """[N, T] bool: greedy on the exact set variance cut, k pool hours (all if the pool is smaller).

        After j answers the answer signals' covariance is cov - L L^T (L: one column per answer), so a
        step needs one column of it per window, not a full [T, T] update.
        """
        n, T = self.pool.shape
        chosen = np.zeros_like(self.pool)
        diag = np.diagonal(self.cov, axis1=1, axis2=2).copy()  # [N, T] Var(s_t | D0, answers so far)
        c = self.cross.copy()  # [N, T] Cov(s_t, w·Z_23 | D0, answers so far)
        L = np.zeros((n, T, k))
        for j in range(k):
            cand = self.pool & ~chosen
            rows = np.flatnonzero(cand.any(axis=1))
            if not len(rows):
                break
            gain = np.where(cand[rows], c[rows] ** 2 / (diag[rows] + self.noise[rows]), -np.inf)
            hours = np.argmax(gain, axis=1)
            chosen[rows, hours] = True
            col = self.cov[rows, :, hours] - np.einsum("ntj,nj->nt", L[rows, :, :j], L[rows, hours, :j])
            root = np.sqrt(col[np.arange(len(rows)), hours] + self.noise[rows, hours])  # [n]
            l_col = col / root[:, None]  # [n, T]
            c[rows] -= l_col * (c[rows, hours] / root)[:, None]
            diag[rows] -= l_col**2
            L[rows, :, j] = l_col
        return chosen


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
    want_scalars: bool = False,
) -> ExactResult:
    """Posterior of each window given its measurements and the answers at ``asked`` hours in its pool.

    Shapes: resid, obs, r [N, T, M] (resid = measurement minus its known offset D g_t + d, NaN where
    missing); answers [N, T] (answer minus the asked feature's offset, NaN where the hour is unaskable);
    drive, q [N, T, Z] (drive = B g_t + c); asked [N, T] bool or None. ``asked_index`` is the asked
    feature's measurement index. The query value of an hour is the cut in Var(w·Z_23) from one more answer
    there; it is 0 outside the pool and at hours already asked. ``want_scalars`` (with no asked hours)
    also returns :class:`AnswerScalars` for fast set-level conditioning.
    """
    if want_scalars and asked is not None and np.any(asked):
        raise ValueError("want_scalars describes D0 alone: call it without asked hours")
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
        query_row=P["C"][k] if (want_query_value or want_scalars) else None,
        query_var=r[..., k] if want_query_value else None,
        query_cov=want_scalars,
    )
    qv = None
    if want_query_value:
        qv = np.where(pool, post.query_value, 0.0)
    p = expected_sigmoid(post.target_mean + P["b"], post.target_var)
    sc = None
    if want_scalars:
        sc = AnswerScalars(
            post.target_mean,
            post.target_var,
            post.query_mean,
            post.query_cov,
            post.query_cross,
            r[..., k],
            None if answers is None else np.where(pool, answers, np.nan),
            pool,
            float(P["b"]),
        )
    std = np.sqrt(post.var)
    return ExactResult(post.mean, std, post.target_mean, post.target_var, p, qv, sc, post.loglik)


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
    _scalars: AnswerScalars | None = field(default=None, repr=False, compare=False)

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
            _scalars=None if self._scalars is None else self._scalars.take(rows),
        )

    def posterior(
        self, asked: np.ndarray | None = None, *, want_query_value: bool = False, want_scalars: bool = False
    ) -> ExactResult:
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
            want_scalars=want_scalars,
        )

    def scalars(self) -> AnswerScalars:
        """The joint posterior of w·Z_23 and the answer signals given D0 (computed once, then cached)."""
        if self._scalars is None:
            self._scalars = self.base().scalars
        return self._scalars

    def base(self) -> ExactResult:
        """Posterior given D0 alone, with the query values and the scalars (one smoother pass)."""
        res = self.posterior(None, want_query_value=True, want_scalars=True)
        self._scalars = res.scalars
        return res

    def set_value(self, asked: np.ndarray) -> np.ndarray:
        """[N] Var(w·Z_23 | D0) - Var(w·Z_23 | D0, answers at the asked hours in the pool)."""
        return self.scalars().set_value(asked)

    def greedy_oracle(self, k: int) -> np.ndarray:
        """[N, T] bool: k pool hours per window (fewer if the pool is smaller), each the one whose answer
        cuts Var(w·Z_23) most given the answers already chosen."""
        return self.scalars().greedy(k)


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


@dataclass
class SplitInputs:
    """One split's columns as the exact model reads them, windows sorted by id."""

    feats: dict[str, np.ndarray]  # every input [N, T]
    meas: np.ndarray  # [N, T, M] NaN where missing
    answer: np.ndarray  # [N, T] raw answers, NaN where unaskable
    habitual_row: np.ndarray  # [N] bool: the subject's habitual-caffeine flag
    params: dict[str, Any]
    asked_index: int
    window_id: np.ndarray  # [N]
    y: np.ndarray  # [N] labels
    query_value: np.ndarray  # [N, T] the CSV's column
    p_bayes_csv: np.ndarray  # [N] the CSV's p_bayes

    def model(self, habitual_row: np.ndarray | None = None) -> ExactModel:
        """The exact model of every window; ``habitual_row`` [N] replaces the subject's flag (to ask what
        a forecast that cannot see it would know)."""
        flag = self.habitual_row if habitual_row is None else habitual_row
        return model_arrays(self.feats, self.meas, self.answer, flag, self.params, self.asked_index)


def read_exact_inputs(csv_path: str | Path, meta_path: str | Path) -> SplitInputs:
    """Read one split's CSV (inputs, measurements, answers, labels) and the meta file's model."""
    import pyarrow.csv as pacsv

    try:
        meta = json.loads(Path(meta_path).read_text(encoding="utf-8"))
        P = params_from_meta(meta["model"]["params"])
        inputs, measurements = list(meta["inputs"]), list(meta["measurements"])
        asked, answer_col = meta["asking"]["feature"], meta["asking"]["answer_column"]
    except (OSError, ValueError) as err:
        raise ValueError(f"{meta_path}: cannot read the simulator's meta file ({err})") from None
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"{meta_path}: not a meta file of this simulator (no {err}); the exact posterior needs "
            "model.params, inputs, measurements and asking"
        ) from None
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
    subject = grid("subject_id")[:, 0].astype(np.int64)
    # The habitual-caffeine flag is the subject's mean daily caffeine over its days (all in this split).
    daily = feats["caffeine_mg"].sum(1)
    _, inv = np.unique(subject, return_inverse=True)
    habit = np.bincount(inv, daily) / np.bincount(inv)
    return SplitInputs(
        feats=feats,
        meas=np.stack([grid(name) for name in measurements], axis=2),  # [n, T, M]
        answer=grid(answer_col),
        habitual_row=habit[inv] >= HABITUAL_MG,
        params=P,
        asked_index=measurements.index(asked),
        window_id=ids[:, 0],
        y=grid("y_next")[:, 0],
        query_value=grid("query_value"),
        p_bayes_csv=grid("p_bayes")[:, 0],
    )


def load_exact_split(csv_path: str | Path, meta_path: str | Path) -> ExactSplit:
    """Read one split's CSV and the meta file's model: the exact model of every window, with its labels."""
    split = read_exact_inputs(csv_path, meta_path)
    m = split.model()
    return ExactSplit(
        **{f: getattr(m, f) for f in ExactModel.__dataclass_fields__ if f != "_scalars"},
        window_id=split.window_id,
        y=split.y,
        query_value=split.query_value,
        p_bayes_csv=split.p_bayes_csv,
    )
