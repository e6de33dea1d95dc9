"""Drawing helpers of the monitor (aline.monitor.plotscale) against brute-force references."""

from __future__ import annotations

import numpy as np
import pytest

from aline.monitor.plotscale import diverged, downsample, integer_ticks, robust_range


def brute_extremes(y: np.ndarray, buckets: int) -> set[int]:
    """Index of the first min and first max of each bucket, as a loop would find them."""
    edges = np.linspace(0, len(y), buckets + 1).astype(int)
    keep = set()
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        seg = y[a:b]
        ok = np.flatnonzero(np.isfinite(seg))
        if ok.size:
            keep.add(a + int(ok[np.argmin(seg[ok])]))
            keep.add(a + int(ok[np.argmax(seg[ok])]))
    return keep


@pytest.mark.parametrize("n", [10, 4001, 200_000])
def test_downsample_keeps_every_bucket_extreme_and_the_ends(n: int) -> None:
    rng = np.random.default_rng(n)
    x = np.arange(n, dtype=float)
    y = rng.normal(size=n).cumsum()
    y[n // 3] = 1e6  # a spike that plain every-k-th thinning would miss
    if n > 100:
        y[5] = np.nan
    dx, dy = downsample(x, y, limit=4000)
    if n <= 4000:
        assert dx is x and dy is y
        return
    assert len(dx) <= 4002
    want = sorted(brute_extremes(y, 2000) | {0, n - 1})
    np.testing.assert_array_equal(dx, x[want])
    assert dy.max() == 1e6 and dx[-1] == n - 1 and np.all(np.diff(dx) > 0)


def test_diverged_flags_non_finite_and_runaway_curves() -> None:
    healthy = 2.0 / (1 + 0.05 * np.arange(500))
    assert diverged(healthy) is None
    assert diverged(np.r_[healthy, np.nan]) is None  # empty cells are gaps, not divergence
    assert "infinite" in diverged(np.r_[healthy, np.inf])
    runaway = np.r_[healthy, np.geomspace(1, 4e7, 50)]
    assert "4e+07" in diverged(runaway)


def test_robust_range_ignores_outer_quantiles_but_shows_references() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(1.0, 0.1, size=1000)
    y[::100] = 50.0  # 1 % spikes
    lo, hi = robust_range([y], references=[0.5])
    q_lo, q_hi = np.quantile(y, [0.01, 0.99])
    low, high = min(q_lo, 0.5), q_hi
    pad = 0.08 * (high - low)
    assert (lo, hi) == pytest.approx((low - pad, high + pad))
    assert hi < 50
    # Few points: nothing is cut.
    lo, hi = robust_range([np.array([1.0, 3.0])])
    assert lo < 1.0 and hi > 3.0
    assert robust_range([np.array([np.nan])]) is None
    lo, hi = robust_range([np.array([1e-4, 1e-3, 1e-2])], log=True)
    assert lo < -4 < -2 < hi


@pytest.mark.parametrize(("lo", "hi"), [(1, 1), (1, 2), (1, 7), (0, 37), (1, 240)])
def test_epoch_ticks_are_whole_numbers(lo: int, hi: int) -> None:
    t = integer_ticks(lo, hi)
    assert t["tickmode"] == "linear" and t["tickformat"] == "d"
    assert float(t["dtick"]).is_integer() and t["dtick"] >= 1
    assert (hi - lo) / t["dtick"] <= 10
