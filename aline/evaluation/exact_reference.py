"""The simulator's exact after-asking posterior for a split, when the split and its meta file allow it:
what scores any set of asked hours against the best possible (validation and evaluation both use it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from aline.data import DataError, RawSplit

__all__ = ["load_exact", "read_meta", "set_share"]


def read_meta(path: Path) -> dict[str, Any]:
    """The simulator's meta file as a dict ({} when its top level is not an object); DataError naming the
    file when it is not readable JSON."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        why = "nested too deeply" if isinstance(err, RecursionError) else err
        raise DataError(f"{path}: not a readable meta JSON file ({why})") from None
    return meta if isinstance(meta, dict) else {}


def load_exact(raw: RawSplit, meta_path: Path) -> Any:
    """The simulator's exact posterior for this split (:class:`aline.simulator.exact.ExactSplit`), or None
    when the split has no answers or no meta file of the simulator that asks the run's question."""
    if not meta_path.is_file() or raw.answers is None:
        return None
    if raw.query_value is None or raw.p_bayes is None:
        return None  # references removed (a cohort made from simulated data): nothing exact to score by
    from aline.simulator.exact import load_exact_split

    asking = read_meta(meta_path).get("asking")
    if not isinstance(asking, dict) or asking.get("feature") != raw.asked_feature:
        return None  # a meta file from another simulator version, or another question than the run's
    try:
        exact = load_exact_split(raw.path, meta_path)
    except (ValueError, KeyError) as err:
        raise DataError(f"{meta_path}: cannot build the exact posterior for {raw.path} ({err})") from None
    # The simulator's ids are integers; the loader keeps ids as the text written in the file.
    if not np.array_equal(np.asarray(exact.window_id).astype(str), raw.window_id.astype(str)):
        raise DataError(f"{raw.path}: the exact posterior's windows do not match the split's windows")
    return exact


def set_share(exact: Any, asked: np.ndarray, oracle_cut: float) -> float:
    """The exact cut in Var(w*.Z_23) of each window's asked set ``[N, 24]`` bool, summed over windows, as a
    share of ``oracle_cut`` (the same sum for the greedy oracle's sets). NaN when that is not positive."""
    if not oracle_cut > 0.0:
        return float("nan")
    return float(np.sum(exact.set_value(np.asarray(asked, dtype=bool)))) / oracle_cut
