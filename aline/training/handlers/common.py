"""Small helpers every handler module shares: rank discipline, number cleaning, the logger name."""

from __future__ import annotations

import math
import numbers
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch

LOGGER_NAME = "aline"
WANDB_MISSING = "logging.wandb is true but the wandb package is not installed: pip install 'aline[wandb]'"


def _is_writer() -> bool:
    return idist.get_rank() == 0


def _number(value: Any) -> float | None:
    """A finite Python float, or None for NaN/inf/missing/non-scalar values (written as empty cells)."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        value = value.item()
    if isinstance(value, np.ndarray):
        if value.size != 1:
            return None
        value = value.item()
    if not isinstance(value, numbers.Real):
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def _cell(value: Any) -> str:
    num = _number(value)
    # repr() is the shortest text that reads back to the same float: the CSV loses no precision.
    return "" if num is None else repr(num)
