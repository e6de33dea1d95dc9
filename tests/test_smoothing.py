"""The monitor's smoothing against TensorBoard's point-by-point formula."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.monitor_fixtures import tensorboard_smooth

from aline.monitor.smoothing import debiased_ema


@pytest.mark.parametrize("weight", [0.0, 0.3, 0.6, 0.9, 0.99])
def test_matches_tensorboard(weight: float) -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(2.0, 1.0, size=500).cumsum()
    np.testing.assert_allclose(debiased_ema(x, weight), tensorboard_smooth(list(x), weight), rtol=1e-12)


def test_nan_gaps_are_skipped_and_kept() -> None:
    x = np.array([np.nan, 1.0, 2.0, np.nan, np.nan, 4.0, np.inf, 3.0])
    got = debiased_ema(x, 0.7)
    want = tensorboard_smooth(list(x), 0.7)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[np.isfinite(got)], np.asarray(want)[np.isfinite(want)], rtol=1e-12)
    assert got[6] == np.inf  # a non-finite point stays itself rather than poisoning the average


def test_first_point_is_unbiased_and_constant_stays_constant() -> None:
    # Debiasing makes the first smoothed value the first raw value and a constant series stay constant.
    assert debiased_ema(np.array([5.0]), 0.95)[0] == pytest.approx(5.0)
    np.testing.assert_allclose(debiased_ema(np.full(50, 3.25), 0.9), 3.25, rtol=1e-12)


def test_weight_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        debiased_ema(np.ones(3), 1.0)
