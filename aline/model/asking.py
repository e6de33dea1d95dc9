"""The closed loop's pieces: the question pool, drawing hours from it, revealing answers, the model's gains.

An hour can be asked about when the patient is awake (every ``policy.unaskable_when`` feature is 0; a
missing value there counts as asleep) and the asked feature was not logged there. In training and
evaluation the answer must also exist (the ``ask_<feature>`` column is filled: a study that prompted at a few
hours has answers only there). At deployment (:func:`pool_mask` with ``deployment=True``) every askable hour
not answered yet can be proposed. The policy only ever draws from the pool: hours outside it get a score
of -inf before sampling, and any slot left over when a window's pool holds fewer than k hours is marked
invalid (never revealed, never rewarded, no log-probability).

An answer enters the model as an answer, not as a logged value: the input has one more channel after the
features (value and mask bit), so a day's logging pattern, which may say something about the patient,
is left as it was and the model can weigh a prompted answer differently from a diary entry
(:func:`aline.data.dataset.answer_channel` appends it).

Torch functions work on batches (``B`` windows, ``T`` = 24 hours, ``S`` samples); the pool and the answer
checks are NumPy (they run once per split).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from aline.config import Config
    from aline.data import RawSplit
    from aline.model.network import AlineModel, AlineOutput

# Scores beyond this carry no extra meaning for a softmax over 24 hours; clamping keeps +-inf and huge
# logits from turning the Plackett-Luce terms into inf - inf = NaN.
SCORE_LIMIT = 1e4

# An answers mapping must fit its feature. A diary logged at a few hours shows only part of its scale, so
# answers may stray this share of the feature's observed train range beyond it, and up to
# ANSWER_OUTSIDE_SHARE of them may lie further out; a mapping to another feature puts nearly all outside...
ANSWER_RANGE_MARGIN = 0.25
ANSWER_OUTSIDE_SHARE = 0.1
# ...and where a cell holds both a logged value and an answer, the two must agree at least this well
# (Pearson), over at least ANSWER_MIN_PAIRS such cells; fewer pairs leave the range check alone.
ANSWER_MIN_CORRELATION = 0.5
ANSWER_MIN_PAIRS = 30

__all__ = [
    "ANSWER_MIN_CORRELATION",
    "ANSWER_RANGE_MARGIN",
    "answer_mapping_problem",
    "asked_from_draws",
    "awake_mask",
    "drop_unaskable_answers",
    "has_answer_channel",
    "forecast_moments",
    "masked_gumbel_topk",
    "one_answer_gains",
    "one_answer_outputs",
    "pool_log_prob",
    "pool_mask",
    "pool_topk",
    "random_pool_draw",
    "reveal",
    "safe_scores",
    "within_window_spearman",
]


# --- the pool (NumPy, per split) ---------------------------------------------------------------------


def _column(raw: RawSplit, name: str) -> np.ndarray:
    """One feature's values ``[N, 24]`` (NaN where missing)."""
    return raw.features[:, :, list(raw.feature_names).index(name)]


def awake_mask(raw: RawSplit, unaskable_when: Sequence[str]) -> np.ndarray:
    """Hours at which a question can be put: every ``unaskable_when`` feature is 0 (missing counts as
    unaskable). ``[N, 24]`` bool"""
    awake = np.ones((len(raw), raw.features.shape[1]), dtype=bool)
    for name in unaskable_when:
        v = _column(raw, name)
        awake &= ~np.isnan(v) & (v == 0)
    return awake


def pool_mask(
    raw: RawSplit, asked_feature: str | None, unaskable_when: Sequence[str], *, deployment: bool = False
) -> np.ndarray:
    """Askable hours ``[N, 24]`` bool: awake and the asked feature not logged, always.

    With answers in ``raw`` (training, evaluation) the answer must exist too. ``deployment=True`` (predict:
    which hours to ask next) proposes every such hour that has no answer yet. With no asked feature at all
    (no loop configured), only the ``unaskable_when`` rule applies.
    """
    awake = awake_mask(raw, unaskable_when)
    if asked_feature is None or asked_feature not in raw.feature_names:
        return awake
    pool = awake & np.isnan(_column(raw, asked_feature))  # not logged
    if raw.answers is not None:
        answered = ~np.isnan(raw.answers)
        pool &= ~answered if deployment else answered
    return pool


def drop_unaskable_answers(
    raw: RawSplit, unaskable_when: Sequence[str], warn: Callable[[str], None] | None = None
) -> RawSplit:
    """``raw`` without the answers found at unaskable hours where the feature was not logged (data-entry
    noise: nobody can be asked while asleep); ``warn`` is told how many, when there are any. The split is
    returned unchanged when there are none."""
    if raw.answers is None:
        return raw
    logged = ~np.isnan(_column(raw, raw.asked_feature))
    # Where the feature was logged, the answer column may repeat it (a simulator's convention); such a
    # cell is never in the pool, so only the unlogged ones are noise to drop.
    bad = ~np.isnan(raw.answers) & ~logged & ~awake_mask(raw, unaskable_when)  # [N, 24]
    count = int(bad.sum())
    if not count:
        return raw
    if warn is not None:
        warn(
            f"warning: {raw.path}: dropped {count} answer(s) at hours that cannot be asked "
            f"(policy.unaskable_when={list(unaskable_when)})"
        )
    import dataclasses

    return dataclasses.replace(raw, answers=np.where(bad, np.float32(np.nan), raw.answers))


def answer_mapping_problem(raw: RawSplit, answer_column: str) -> str | None:
    """Why ``raw``'s answers cannot be answers to its asked feature, or None when they fit: more than
    ``ANSWER_OUTSIDE_SHARE`` of them outside the feature's observed range widened by
    ``ANSWER_RANGE_MARGIN`` of it on each side, or, where a cell
    holds both a logged value and an answer, too little agreement (Pearson below
    ``ANSWER_MIN_CORRELATION``)."""
    if raw.answers is None or raw.asked_feature is None:
        return None
    feature = raw.asked_feature
    logged = _column(raw, feature)  # [N, 24]
    answers = raw.answers
    seen, given = ~np.isnan(logged), ~np.isnan(answers)
    if not seen.any() or not given.any():
        return None
    lo, hi = float(np.min(logged[seen])), float(np.max(logged[seen]))
    margin = ANSWER_RANGE_MARGIN * max(hi - lo, 1e-12)
    a = answers[given]
    outside = int(((a < lo - margin) | (a > hi + margin)).sum())
    both = seen & given
    where = f"answer column {answer_column!r} does not fit feature {feature!r}"
    if outside > ANSWER_OUTSIDE_SHARE * a.size:
        return (
            f"{where}: {outside} of {a.size} answers lie outside the feature's observed range "
            f"[{lo:.4g}, {hi:.4g}] widened by {ANSWER_RANGE_MARGIN:.0%} (at most "
            f"{ANSWER_OUTSIDE_SHARE:.0%} may); answers must be on the feature's scale (check "
            "data.columns.answers)"
        )
    if int(both.sum()) >= ANSWER_MIN_PAIRS:
        x, y = logged[both].astype(np.float64), answers[both].astype(np.float64)
        if np.ptp(x) > 0 and np.ptp(y) > 0:
            r = float(np.corrcoef(x, y)[0, 1])
            if r < ANSWER_MIN_CORRELATION:
                return (
                    f"{where}: where both were recorded ({int(both.sum())} cells) they correlate at "
                    f"{r:.2f}, below {ANSWER_MIN_CORRELATION}; an answer must measure what the feature "
                    "logs (check data.columns.answers)"
                )
    return None


# --- the answer channel -------------------------------------------------------------------------------


def has_answer_channel(cfg: Config) -> bool:
    """Whether the model reads an answer channel: whenever the config names a question to ask."""
    return cfg.data.columns.asked_feature is not None


# --- drawing hours from the pool ---------------------------------------------------------------------


def safe_scores(scores: Tensor) -> Tensor:
    """Scores with NaN -> 0 and everything clamped to +-SCORE_LIMIT (gradient passes inside the limits)."""
    return torch.nan_to_num(scores, nan=0.0, posinf=SCORE_LIMIT, neginf=-SCORE_LIMIT).clamp(
        -SCORE_LIMIT, SCORE_LIMIT
    )


def masked_gumbel_topk(
    scores: Tensor, pool: Tensor, k: int, samples: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """``samples`` Plackett-Luce draws of up to k pool hours per window.

    Returns ``hours`` [S, B, k] (draw order) and ``valid`` [S, B, k] bool: False for the slots a window
    with fewer than k pool hours cannot fill (their hour index is arbitrary and must be ignored).
    """
    s = safe_scores(scores.detach()).masked_fill(~pool, float("-inf"))  # [B, T]
    shape = (samples, *s.shape)
    device = s.device if generator is None else generator.device
    u = torch.rand(shape, generator=generator, device=device, dtype=s.dtype).to(s.device)
    tiny = torch.finfo(s.dtype).tiny
    gumbel = -torch.log(-torch.log(u.clamp(tiny, 1.0 - 1e-7)))  # finite: u never 0 or 1
    hours = (s + gumbel).topk(k, dim=-1, sorted=True).indices  # [S, B, k]
    valid = pool.expand(samples, *pool.shape).gather(-1, hours)  # [S, B, k]
    return hours, valid


def random_pool_draw(pool: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """Up to k pool hours per window, uniformly at random: an asked mask ``[B, T]`` bool."""
    hours, valid = masked_gumbel_topk(torch.zeros(pool.shape, device=pool.device), pool, k, 1, generator)
    return asked_from_draws(hours, valid, pool.shape[-1])[0]


def pool_log_prob(scores: Tensor, pool: Tensor, hours: Tensor, valid: Tensor) -> Tensor:
    """Plackett-Luce log-probability of the valid draws, over the pool only. ``[S, B]``

    Step j contributes ``s_h - logsumexp(s over pool hours not drawn before)``; invalid steps contribute 0
    through a finite dummy term, so neither the value nor the gradient can become NaN.
    """
    s = safe_scores(scores)  # [B, T]
    t = s.shape[-1]
    chosen = s.expand(*hours.shape[:-1], t).gather(-1, hours)  # [S, B, k]
    onehot = torch.nn.functional.one_hot(hours, t) * valid.unsqueeze(-1)  # [S, B, k, T]
    drawn_before = (onehot.cumsum(-2) - onehot).bool()
    avail = pool.unsqueeze(-2) & ~drawn_before  # [S, B, k, T]
    avail = avail | ~valid.unsqueeze(-1)  # an invalid step: any finite row, multiplied by 0 below
    lse = s.unsqueeze(-2).masked_fill(~avail, float("-inf")).logsumexp(-1)  # [S, B, k]
    return ((chosen - lse) * valid).sum(-1)


def asked_from_draws(hours: Tensor, valid: Tensor, t: int) -> Tensor:
    """Draws ``[..., k]`` with their validity -> asked mask ``[..., T]`` bool."""
    onehot = torch.nn.functional.one_hot(hours, t) * valid.unsqueeze(-1)  # [..., k, T]
    return onehot.sum(-2) > 0


def pool_topk(scores: Tensor, pool: Tensor, k: int) -> Tensor:
    """The policy at evaluation: the k best-scoring pool hours (fewer if the pool is smaller). ``[B, T]``"""
    s = safe_scores(scores).masked_fill(~pool, float("-inf"))
    hours = s.topk(k, dim=-1).indices  # [B, k]
    return asked_from_draws(hours, pool.gather(-1, hours), s.shape[-1])


# --- revealing answers and what the model makes of them ----------------------------------------------


def reveal(x: Tensor, mask: Tensor, answer: Tensor, asked: Tensor, feature: int) -> tuple[Tensor, Tensor]:
    """Write the answers of the ``asked`` hours ([..., T] bool) into the input's answer channel (column
    ``feature``, see :func:`answer_channel`): value and mask bit."""
    column = torch.zeros(x.shape[-1], dtype=torch.bool, device=x.device)
    column[feature] = True
    sel = asked.unsqueeze(-1) & column  # [..., T, F]: the asked hours' cell of the asked feature
    x1 = torch.where(sel, answer.unsqueeze(-1).to(x.dtype), x)
    m1 = torch.where(sel, torch.ones((), dtype=mask.dtype, device=mask.device), mask)
    return x1, m1


def forecast_moments(out: AlineOutput, w: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of the model's forecast-relevant quantity ``w . z_23``. ``[B], [B]``

    The variance is ``w^T Sigma w`` with the full covariance where the encoder gives one (kalman), else
    the factorised ``sum_j w_j^2 sigma_j^2``; ``w`` is the prediction head (detached by the caller), the
    model's own idea of what the forecast weighs.
    """
    mu, sigma = out.mu_z[:, -1], out.sigma_z[:, -1]  # [B, Z]
    if out.cov_z is not None:
        return mu @ w, torch.einsum("z,bzy,y->b", w, out.cov_z[:, -1], w)
    return mu @ w, sigma.square() @ w.square()


def one_answer_outputs(
    model: AlineModel | torch.nn.Module, x: Tensor, mask: Tensor, answer: Tensor, pool: Tensor, feature: int
) -> AlineOutput:
    """The model's output after each single pool hour's answer alone: one pass over B x T inputs, input
    ``b * T + h`` revealing hour h of window b (nothing where h is off the pool)."""
    b, t = pool.shape
    eye = torch.eye(t, dtype=torch.bool, device=x.device)  # [T, T]: row h reveals hour h
    asked = eye.unsqueeze(0) & pool.unsqueeze(1)  # [B, T(which), T(hours)]
    xr, mr = reveal(
        x.unsqueeze(1).expand(b, t, *x.shape[1:]),
        mask.unsqueeze(1).expand(b, t, *mask.shape[1:]),
        answer.unsqueeze(1).expand(b, t, t),
        asked,
        feature,
    )
    return model(xr.reshape(b * t, *x.shape[1:]), mr.reshape(b * t, *mask.shape[1:]))


@torch.no_grad()
def one_answer_gains(
    model: AlineModel | torch.nn.Module,
    x: Tensor,
    mask: Tensor,
    answer: Tensor,
    pool: Tensor,
    feature: int,
    w: Tensor,
    var0: Tensor,
) -> Tensor:
    """The model's cut in its forecast variance from each single pool hour's answer. ``[B, T]``, 0 off the
    pool."""
    b, t = pool.shape
    _, var1 = forecast_moments(one_answer_outputs(model, x, mask, answer, pool, feature), w)
    return torch.where(pool, var0.unsqueeze(1) - var1.reshape(b, t), torch.zeros((), device=x.device))


def within_window_spearman(model_gain: np.ndarray, exact: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Spearman correlation over each window's pool hours; NaN where fewer than 3 or either is constant."""
    from scipy.stats import spearmanr

    out = np.full(model_gain.shape[0], np.nan)
    for i in range(model_gain.shape[0]):
        a, e = model_gain[i, pool[i]], exact[i, pool[i]]
        if a.size >= 3 and np.ptp(a) > 0 and np.ptp(e) > 0:
            out[i] = spearmanr(a, e).statistic
    return out
