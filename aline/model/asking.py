"""The closed loop's pieces: the question pool, drawing hours from it, revealing answers, the model's gains.

An hour can be asked about when its answer exists (the ``ask_<feature>`` column is filled) and the asked
feature was not logged there. At deployment no answer column exists yet: then the hour must be awake (every
``policy.unaskable_when`` feature is 0) and the feature's cell empty. The policy only ever draws from that
pool: hours outside it get a score of -inf before sampling, and any slot left over when a window's pool
holds fewer than k hours is marked invalid (never revealed, never rewarded, no log-probability).

Torch functions work on batches (``B`` windows, ``T`` = 24 hours, ``S`` samples); :func:`pool_mask` is NumPy
(it runs once per split).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from aline.data import RawSplit
    from aline.model.network import AlineModel, AlineOutput

# Scores beyond this carry no extra meaning for a softmax over 24 hours; clamping keeps +-inf and huge
# logits from turning the Plackett-Luce terms into inf - inf = NaN.
SCORE_LIMIT = 1e4

__all__ = [
    "asked_from_draws",
    "forecast_moments",
    "masked_gumbel_topk",
    "one_answer_gains",
    "pool_log_prob",
    "pool_mask",
    "pool_topk",
    "random_pool_draw",
    "reveal",
    "safe_scores",
    "within_window_spearman",
]


# --- the pool (NumPy, per split) ---------------------------------------------------------------------


def pool_mask(raw: RawSplit, asked_feature: str | None, unaskable_when: Sequence[str]) -> np.ndarray:
    """Askable hours ``[N, 24]`` bool.

    With answers: the answer exists and the feature was not logged. Without (deployment): the feature was
    not logged and every ``unaskable_when`` feature is 0 (a missing value there counts as unaskable). With
    no asked feature at all (no loop configured), only the ``unaskable_when`` rule applies.
    """
    names = list(raw.feature_names)
    n = len(raw)
    if raw.answers is not None:
        logged = ~np.isnan(raw.features[:, :, names.index(raw.asked_feature)])
        return ~np.isnan(raw.answers) & ~logged
    awake = np.ones((n, raw.features.shape[1]), dtype=bool)
    for name in unaskable_when:
        v = raw.features[:, :, names.index(name)]
        awake &= ~np.isnan(v) & (v == 0)
    if asked_feature is None:
        return awake
    return awake & np.isnan(raw.features[:, :, names.index(asked_feature)])


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
    """Write the answers of the ``asked`` hours ([..., T] bool) into the input: value and mask bit."""
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
    """The model's cut in its forecast variance from each single pool hour's answer. ``[B, T]`` (0 off pool)

    One no-grad pass over B x T inputs, each revealing one hour.
    """
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
    out = model(xr.reshape(b * t, *x.shape[1:]), mr.reshape(b * t, *mask.shape[1:]))
    _, var1 = forecast_moments(out, w)
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
