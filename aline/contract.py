"""The run-folder contract shared by the trainer (writer) and the monitor (reader).

Every file name, column name and state that both sides rely on lives here, so that the two can only
disagree by editing this one module. See ``shared/design.md`` ("The run folder").
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from aline.scoring import ECE_BINS  # noqa: F401  (re-exported: one definition of the bin count)

# --- exit codes of the command-line tools (train, evaluate, predict) -------------------------------------
EXIT_OK, EXIT_FAILURE, EXIT_INVALID = 0, 1, 2  # invalid = bad config, data, run folder or checkpoint

# --- files inside runs/<run>/ -------------------------------------------------------------------------
CONFIG_FILE = "config.yaml"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.csv"
CALIBRATION_FILE = "calibration.csv"
TOPK_FILE = "topk_hours.csv"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
NORMALIZER_FILE = "normalizer.json"
LOG_FILE = "train.log"
EVAL_DIR = "eval"

# --- status.json ----------------------------------------------------------------------------------------
STATE_RUNNING = "running"
STATE_FINISHED = "finished"
STATE_FAILED = "failed"
STATE_STOPPED = "stopped"
STATES = (STATE_RUNNING, STATE_FINISHED, STATE_FAILED, STATE_STOPPED)

# --- metrics.csv ----------------------------------------------------------------------------------------
SPLIT_TRAIN = "train"
SPLIT_VAL = "val"
INDEX_COLUMNS = ("time", "epoch", "iteration", "split")
LOSS_COLUMNS = ("loss", "loss_post", "loss_policy", "loss_bce")
TRAIN_ONLY_COLUMNS = ("grad_norm", "lr")
VAL_ONLY_COLUMNS = ("auc", "brier", "ece", "pr_auc", "post_mse", "sigma_mae", "policy_value")
TRAIN_METRICS = LOSS_COLUMNS + TRAIN_ONLY_COLUMNS
VAL_METRICS = LOSS_COLUMNS + VAL_ONLY_COLUMNS
METRIC_COLUMNS = LOSS_COLUMNS + TRAIN_ONLY_COLUMNS + VAL_ONLY_COLUMNS
METRICS_HEADER = INDEX_COLUMNS + METRIC_COLUMNS

# Which direction is better, for best-checkpoint selection and early stopping.
HIGHER_IS_BETTER = {"auc": True, "pr_auc": True, "policy_value": True}
for _name in VAL_METRICS:
    HIGHER_IS_BETTER.setdefault(_name, False)

# --- calibration.csv and topk_hours.csv -------------------------------------------------------------
CALIBRATION_HEADER = ("epoch", "bin", "lo", "hi", "count", "mean_pred", "frac_pos")
TOPK_HEADER = ("epoch", "hour", "frequency")
HOURS = 24

# --- oracle references stored in status.json["oracle"] (from the simulator's meta file) -----------------
ORACLE_KEYS = ("auc", "brier", "ece", "pr_auc", "post_mse_floor", "logreg_auc", "best_fixed_share")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Write a temporary file beside ``path`` and rename it over ``path`` only once it is complete, so a
    concurrent reader (or a crash) sees either the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with atomic_write(path) as fh:
        fh.write(text)


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> None:
    """Write JSON atomically (see :func:`write_text_atomic`); NaN and inf become null."""
    text = json.dumps(_finite(payload), indent=2, sort_keys=True, allow_nan=False, default=_json_default)
    write_text_atomic(path, text + "\n")


def _finite(value: Any) -> Any:
    # NaN/inf are not JSON; an undefined metric (AUC of a one-class batch) is written as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    # numpy scalars and 0-d tensors sneak into payloads; JSON wants plain numbers.
    if hasattr(value, "item"):
        return _finite(value.item())
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
