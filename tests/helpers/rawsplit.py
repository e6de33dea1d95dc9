"""A RawSplit in memory, for tests of what reads one (the pool, the answers checks, the dataset)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from aline.data import RawSplit


def raw_split(
    features: np.ndarray, names: Sequence[str], answers: np.ndarray | None = None, asked: str | None = None
) -> RawSplit:
    """Features ``[N, 24, F]`` named ``names``; with ``answers`` ``[N, 24]``, those of feature ``asked``."""
    n = features.shape[0]
    return RawSplit(
        path=Path("mem.csv"),
        window_id=np.arange(n),
        features=features.astype(np.float32),
        feature_names=tuple(names),
        z=None,
        sigma=None,
        post_mean=None,
        y=None,
        query_value=None,
        p_bayes=None,
        p_true=None,
        answers=None if answers is None else answers.astype(np.float32),
        asked_feature=None if answers is None else asked,
    )
