"""Curve smoothing for the monitor: the debiased exponential moving average that TensorBoard draws.

With weight w, the running value is last = last·w + (1−w)·x over the finite points in order, and each
smoothed point is last / (1 − w^n), n being how many finite points went in so far; the division removes
the pull towards the zero the average starts from. Non-finite points are left as they are and do not
advance the average, so a gap in a curve stays a gap.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter


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
    # lfilter runs the recursion last_i = w·last_{i-1} + (1−w)·x_i in C, starting from last_0 = 0.
    last = lfilter([1.0 - weight], [1.0, -weight], xs)  # [m]
    debias = 1.0 - weight ** np.arange(1, len(xs) + 1)  # [m]
    out[finite] = last / debias
    return out
