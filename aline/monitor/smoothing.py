"""Curve smoothing for the monitor: the debiased exponential moving average that TensorBoard draws.

With weight w, the running value is last = last·w + (1−w)·x over the finite points in order, and each
smoothed point is last / (1 − w^n), n being how many finite points went in so far; the division removes
the pull towards the zero the average starts from. Non-finite points are left as they are and do not
advance the average, so a gap in a curve stays a gap.

NumPy only: importing scipy.signal for its lfilter would cost the monitor's first page more than
everything else the page imports.
"""

from __future__ import annotations

import math

import numpy as np

# Points per block of the vectorised recursion: the block is cut where w^-k would pass this bound, so a
# value up to 1e250 times it still fits a double.
_SCALE_LIMIT = 1e50


def debiased_ema(values: np.ndarray, weight: float) -> np.ndarray:
    """Smooth a 1-D series (``[n]`` → ``[n]``) with TensorBoard's debiased EMA; ``weight`` in [0, 1)."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    x = np.asarray(values, dtype=np.float64)  # [n]
    out = x.copy()
    finite = np.isfinite(x)
    if weight == 0.0 or not finite.any():
        return out
    xs = x[finite]  # [m]
    last = _ema(xs, weight)  # [m]
    # 1 − w^n as −expm1(n·ln w): exact where w^n is close to 1, and far faster than w ** n over an array.
    debias = -np.expm1(np.arange(1, len(xs) + 1) * math.log(weight))  # [m]
    out[finite] = last / debias
    return out


def _ema(xs: np.ndarray, w: float) -> np.ndarray:
    """last_i = w·last_{i-1} + (1−w)·x_i from last_{-1} = 0 (``[m]`` → ``[m]``), 0 < w < 1.

    In a block started from 0, position k holds (1−w)·w^k·Σ_{j≤k} w^−j·x_j: one cumulative sum. A block
    also inherits w^(k+1) times the value its predecessor ended on (its carry); the carries are a scalar
    recursion over the blocks, a few hundred steps for 200,000 points.
    """
    m = len(xs)
    block = max(1, min(m, int(math.log(_SCALE_LIMIT) / -math.log(w))))
    n_blocks = -(-m // block)
    padded = np.zeros(n_blocks * block)
    padded[:m] = xs
    k = np.arange(block)  # [B]
    grow = np.exp(-k * math.log(w))  # [B] w^-k
    local = np.cumsum(padded.reshape(n_blocks, block) * grow, axis=1)  # [nb, B]
    local *= (1.0 - w) / grow
    carry = np.empty(n_blocks)  # [nb] value just before each block
    prev, decay = 0.0, w**block
    for b, end in enumerate(local[:, -1].tolist()):
        carry[b] = prev
        prev = decay * prev + end
    local += (w / grow) * carry[:, None]
    return local.ravel()[:m]
