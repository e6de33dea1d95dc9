"""The run-folder contract shared by the trainer (writer) and the monitor (reader).

Every file name, column name and state that both sides rely on lives here, so that the two can only
disagree by editing this one module. ``docs/run-folder.md`` describes the contract.
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
# Held by the training process (aline.runs.ownership): host, pid and token; its mtime is the heartbeat.
LOCK_FILE = "owner.lock"

# --- status.json ----------------------------------------------------------------------------------------
STATE_RUNNING = "running"
STATE_FINISHED = "finished"
STATE_FAILED = "failed"
STATE_STOPPED = "stopped"
STATES = (STATE_RUNNING, STATE_FINISHED, STATE_FAILED, STATE_STOPPED)
# Never written: a run whose status.json says "running" but whose owner is gone (its process died, or its
# heartbeat went stale) is *shown* as interrupted by the trainer's --resume and by the monitor.
STATE_INTERRUPTED = "interrupted"
DISPLAY_STATES = (*STATES, STATE_INTERRUPTED)
# status.json carries "host", "pid" and "heartbeat" (UTC ISO) while running; the owner refreshes the
# heartbeat every HEARTBEAT_INTERVAL_S. A heartbeat older than HEARTBEAT_STALE_S means the owner is gone,
# also when the reader is on another machine and cannot ask about the pid.
HEARTBEAT_INTERVAL_S = 5.0
HEARTBEAT_STALE_S = 30.0

# --- metrics.csv ----------------------------------------------------------------------------------------
SPLIT_TRAIN = "train"
SPLIT_VAL = "val"
INDEX_COLUMNS = ("time", "epoch", "iteration", "split")
LOSS_COLUMNS = ("loss", "loss_post", "loss_policy", "loss_bce")
TRAIN_ONLY_COLUMNS = ("grad_norm", "lr")
VAL_ONLY_COLUMNS = (
    "auc",
    "brier",
    "ece",
    "pr_auc",
    "post_mse",
    "sigma_mae",
    "policy_value",  # share of the oracle's query value that the policy's top-k pool hours hold
    "policy_set_value",  # exact variance cut of the policy's set / that of the greedy oracle's set
    "ask_outside_pool",  # share of the policy's asks outside the question pool (must be 0)
    "brier_asked",  # Brier of p_next after the policy's top-k answers are revealed
    "auc_asked",  # ROC AUC of the same
    "gain_spearman",  # median within-window Spearman: model's one-answer variance cut vs query_value
)
TRAIN_METRICS = LOSS_COLUMNS + TRAIN_ONLY_COLUMNS
VAL_METRICS = LOSS_COLUMNS + VAL_ONLY_COLUMNS
METRIC_COLUMNS = LOSS_COLUMNS + TRAIN_ONLY_COLUMNS + VAL_ONLY_COLUMNS
METRICS_HEADER = INDEX_COLUMNS + METRIC_COLUMNS

# Which direction is better, for best-checkpoint selection and early stopping.
HIGHER_IS_BETTER = {
    "auc": True,
    "pr_auc": True,
    "policy_value": True,
    "policy_set_value": True,
    "auc_asked": True,
    "gain_spearman": True,
}
for _name in VAL_METRICS:
    HIGHER_IS_BETTER.setdefault(_name, False)

# --- calibration.csv and topk_hours.csv -------------------------------------------------------------
CALIBRATION_HEADER = ("epoch", "bin", "lo", "hi", "count", "mean_pred", "frac_pos")
TOPK_HEADER = ("epoch", "hour", "frequency")
HOURS = 24

# --- oracle references stored in status.json["oracle"] (from the simulator's meta file) -----------------
ORACLE_KEYS = (
    "auc",
    "brier",
    "ece",
    "pr_auc",
    "post_mse_floor",
    "logreg_auc",
    "best_fixed_share",  # policy_value of the best fixed k hours (chosen on train)
    "random_share",  # policy_value of k random askable hours
    "auc_asked",  # exact-Bayes AUC after the oracle's k answers
    "brier_asked",  # exact-Bayes Brier after the oracle's k answers
)


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


# Above any pid a kernel hands out (Linux: 2**22); os.kill would overflow on a larger number.
PID_MAX = 1 << 22


def _pid_alive(pid: int) -> bool:
    # 0 and negative numbers name process groups, not a process: os.kill(0, 0) would always succeed.
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid <= PID_MAX:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def display_state(status: dict[str, Any], *, now: float | None = None, this_host: str | None = None) -> str:
    """The state to show for a run: status.json's own, except that a "running" run whose owner is gone is
    ``STATE_INTERRUPTED``. The owner is gone when its heartbeat is older than ``HEARTBEAT_STALE_S`` or,
    on the owner's own host, when its pid no longer exists (another host cannot ask about a pid, so there
    the heartbeat alone decides)."""
    import socket
    import time
    from datetime import datetime

    state = status.get("state")
    if state != STATE_RUNNING:
        return state
    now = time.time() if now is None else now
    beat = status.get("heartbeat") or status.get("updated")
    try:
        beat_s = datetime.fromisoformat(str(beat).replace("Z", "+00:00")).timestamp()
    except (ValueError, OverflowError, OSError):  # OverflowError: a date near year 1 with an offset
        beat_s = None
    if beat_s is not None and now - beat_s > HEARTBEAT_STALE_S:
        return STATE_INTERRUPTED
    host = status.get("host")
    pid = status.get("pid")
    if host and host == (this_host or socket.gethostname()) and isinstance(pid, int) and not _pid_alive(pid):
        return STATE_INTERRUPTED
    return STATE_RUNNING
