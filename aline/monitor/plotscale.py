"""Drawing-only helpers of the monitor: downsampling that keeps extremes, outlier-robust y ranges and the
test that flags a diverged curve. Pure NumPy, no plotly and no Streamlit.

Downsampling is min/max per bucket (the M4 idea without the first/last of each bucket): the x range is
cut into ``buckets`` runs of consecutive points and each keeps its lowest and highest point, in their
original order, plus the series' first and last point. A spike therefore survives any thinning, and the
live tip of the curve is always drawn. It is for drawing only; exports use the full tables.
"""

from __future__ import annotations

import math

import numpy as np

MAX_POINTS = 4000  # per trace after downsampling: 2 points per bucket
# What the monitor draws per long curve: a min and a max per pixel column of a half-width panel (about
# 600 px) shows the same envelope as any denser thinning. When many runs share a panel each curve gets
# fewer, so that a panel holds at most PANEL_POINTS points: the browser's drawing time grows with the
# points it is sent (ten runs of 200,000 rows at 4,000 points per curve took minutes to appear).
CURVE_POINTS = 1200
PANEL_POINTS = 8000
MIN_CURVE_POINTS = 300
# A curve is "diverged" when it holds a non-finite value or when its largest magnitude exceeds this many
# times the typical magnitude (median) of its own first tenth: a loss that grows a thousandfold has left
# the region where the other runs live, and would flatten them if it set the scale.
DIVERGE_FACTOR = 1e3
# TensorBoard's "ignore outliers in chart scaling" keeps the bulk of the points; these quantiles of the
# pooled points (of the runs that are not diverged) set the y range, padded by PAD of its span.
ROBUST_QUANTILES = (0.01, 0.99)
PAD = 0.08


def downsample(x: np.ndarray, y: np.ndarray, limit: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``limit`` (+2) points of ``(x, y)`` (``[n]`` → ``[m]``): min and max per bucket, first, last.

    NaN points (gaps) are kept as they are only when no thinning is needed; a thinned series drops them,
    since a bucket's extreme is taken over its finite points.
    """
    n = len(x)
    if n <= limit:
        return x, y
    buckets = max(1, limit // 2)
    edges = np.linspace(0, n, buckets + 1).astype(np.int64)  # [buckets+1]
    finite = np.isfinite(y)
    lo_val = np.where(finite, y, np.inf)
    hi_val = np.where(finite, y, -np.inf)
    starts = edges[:-1]
    # argmin/argmax per bucket via reduceat on the values, then the first index holding that value.
    mins = np.minimum.reduceat(lo_val, starts)  # [buckets]
    maxs = np.maximum.reduceat(hi_val, starts)  # [buckets]
    bucket_of = np.repeat(np.arange(buckets), np.diff(edges))  # [n]
    is_min = lo_val == mins[bucket_of]
    is_max = hi_val == maxs[bucket_of]
    keep = (is_min | is_max) & finite
    # Several points may tie for an extreme; keeping all of them is harmless but can exceed the limit on a
    # flat series, so keep only the first min and first max index per bucket.
    idx = np.flatnonzero(keep)
    first_min = _first_per_bucket(idx[is_min[idx]], bucket_of)
    first_max = _first_per_bucket(idx[is_max[idx]], bucket_of)
    chosen = np.unique(np.concatenate([first_min, first_max, [0, n - 1]]))
    return x[chosen], y[chosen]


def curve_points(curves: int) -> int:
    """The downsampling limit for each of ``curves`` long curves drawn in one panel."""
    return max(MIN_CURVE_POINTS, min(CURVE_POINTS, PANEL_POINTS // max(1, curves)))


def _first_per_bucket(idx: np.ndarray, bucket_of: np.ndarray) -> np.ndarray:
    if idx.size == 0:
        return idx
    b = bucket_of[idx]
    first = np.r_[True, b[1:] != b[:-1]]
    return idx[first]


def diverged(y: np.ndarray) -> str | None:
    """Why the curve ``y`` (``[n]``) counts as diverged, or None. Empty cells (NaN) are not counted."""
    y = np.asarray(y, dtype=np.float64)
    inf = np.isinf(y)
    if inf.any():
        return "holds an infinite value"
    finite = y[np.isfinite(y)]
    if finite.size < 2:
        return None
    head = np.abs(finite[: max(1, finite.size // 10)])
    typical = float(np.median(head))
    peak = float(np.max(np.abs(finite)))
    if typical > 0 and peak > DIVERGE_FACTOR * typical:
        return f"reached {peak:.3g}, over {DIVERGE_FACTOR:.0f}× its early level {typical:.3g}"
    if typical == 0 and peak > DIVERGE_FACTOR:
        return f"reached {peak:.3g} from 0"
    return None


def robust_range(
    samples: list[np.ndarray], references: list[float] = (), log: bool = False
) -> list[float] | None:
    """A y range ``[lo, hi]`` that ignores the outer quantiles of the pooled finite points, and always
    shows the reference lines (Bayes limits). None if there is nothing finite to scale to.

    With ``log`` the range is in log10 units, as plotly wants for a log axis (non-positive points left out).
    """
    pooled = [np.asarray(s, dtype=np.float64).ravel() for s in samples]
    values = np.concatenate(pooled) if pooled else np.empty(0)
    values = values[np.isfinite(values)]
    refs = np.asarray([r for r in references if r is not None and math.isfinite(r)], dtype=np.float64)
    if log:
        values = np.log10(values[values > 0])
        refs = np.log10(refs[refs > 0])
    if values.size == 0 and refs.size == 0:
        return None
    if values.size:
        lo, hi = np.quantile(values, ROBUST_QUANTILES)
        # A single point per run (or few) must not be cut: with under 20 points the quantiles are the ends.
        if values.size < 20:
            lo, hi = values.min(), values.max()
    else:
        lo, hi = refs.min(), refs.max()
    if refs.size:
        lo, hi = min(lo, refs.min()), max(hi, refs.max())
    span = hi - lo
    if span <= 0:
        span = abs(hi) * 0.1 or 1.0
    return [float(lo - PAD * span), float(hi + PAD * span)]


def integer_ticks(lo: float, hi: float, target: int = 10) -> dict[str, object]:
    """Axis settings for whole-number ticks (epochs) over ``[lo, hi]``: a whole step, never 0.5."""
    span = max(hi - lo, 1.0)
    step = max(1, math.ceil(span / target))
    # Round the step up to 1, 2, 5 × 10^k so the labels read well.
    mag = 10 ** int(math.floor(math.log10(step)))
    for m in (1, 2, 5, 10):
        if m * mag >= step:
            step = m * mag
            break
    return {"tickmode": "linear", "tick0": 0, "dtick": step, "tickformat": "d"}
