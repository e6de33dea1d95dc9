"""Ignite handlers that turn a training run into the run folder of ``shared/design.md``.

One job: everything the trainer does *around* its steps — CSV logs, ``status.json``, checkpoints and resume,
early stopping, NaN termination, LR schedules, console/file logging and optional W&B. Each piece is a small
object plus an ``attach_*`` function; ``aline.engine`` / ``aline.train`` decide which ones to attach.

Rank discipline: every object that writes a file checks ``idist.get_rank() == 0`` itself and is inert on the
other ranks, so the caller may build and attach the same handlers on every process. Handlers that change the
run (early stopping, LR schedule, best-checkpoint bookkeeping) run on every rank and see the same,
already-gathered validation metrics, so all ranks take the same decisions.

Ordering rules for the caller (ignite runs the handlers of one event in the order they were added):

* attach the metrics to the trainer/evaluator *before* these handlers, so that ``state.metrics`` is already
  computed when a handler reads it;
* attach the validation run (``trainer`` EPOCH_COMPLETED → ``evaluator.run``) *before*
  :func:`attach_last_checkpoint`, so that ``last.pt`` holds the state after this epoch's validation
  (early stopping, plateau scheduler, best checkpoints) — which is what makes a resumed run exact.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import numbers
import os
import random
import signal
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver, EarlyStopping, TerminateOnNan

from aline.config import Config, EarlyStopConfig, SchedConfig
from aline.contract import (
    CALIBRATION_FILE,
    CALIBRATION_HEADER,
    CHECKPOINT_DIR,
    HIGHER_IS_BETTER,
    HOURS,
    LAST_CHECKPOINT,
    LOG_FILE,
    METRIC_COLUMNS,
    METRICS_FILE,
    METRICS_HEADER,
    SPLIT_TRAIN,
    SPLIT_VAL,
    STATE_FAILED,
    STATE_FINISHED,
    STATE_RUNNING,
    STATE_STOPPED,
    STATUS_FILE,
    TOPK_FILE,
    TOPK_HEADER,
    TRAIN_METRICS,
    VAL_METRICS,
    atomic_write,
    write_json_atomic,
)
from aline.scoring import CalibrationTable

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


# --- append-only CSV files --------------------------------------------------------------------------------


class AppendCSV:
    """An append-only CSV file with a fixed header; each event is one write + flush.

    Reopening an existing file (resume) checks its header and cuts a trailing partial line (a crash in the
    middle of a write leaves one without its newline), so a new row is never glued onto garbage.
    """

    def __init__(self, path: str | os.PathLike[str], header: Sequence[str]) -> None:
        self.path = Path(path)
        self.header = tuple(header)
        self._fh: io.TextIOWrapper | None = None
        if not _is_writer():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > 0:
            self._repair_and_check()
            self._fh = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115 (kept open)
        else:
            self._fh = open(self.path, "w", encoding="utf-8", newline="")  # noqa: SIM115 (kept open)
            self._write_lines([self.header])

    def _repair_and_check(self) -> None:
        with open(self.path, "rb+") as fh:
            data = fh.read()
            if not data.endswith(b"\n"):
                cut = data.rfind(b"\n") + 1  # 0 when even the header is incomplete
                fh.seek(cut)
                fh.truncate()
                logging.getLogger(LOGGER_NAME).warning(
                    "%s: dropped a partial last line (%d bytes) left by an interrupted write",
                    self.path,
                    len(data) - cut,
                )
                data = data[:cut]
            if not data:
                fh.write((",".join(self.header) + "\n").encode("utf-8"))
                return
        found = tuple(data.split(b"\n", 1)[0].decode("utf-8").rstrip("\r").split(","))
        if found != self.header:
            diff = next(
                (i for i, (a, b) in enumerate(zip(found, self.header, strict=False)) if a != b),
                min(len(found), len(self.header)),
            )
            got = found[diff] if diff < len(found) else "<end of header>"
            want = self.header[diff] if diff < len(self.header) else "<end of header>"
            raise ValueError(
                f"{self.path}: existing header does not match this version's columns "
                f"(column {diff + 1}: found {got!r}, expected {want!r}); "
                "start a new run or move the file away"
            )

    def _write_lines(self, rows: Iterable[Sequence[Any]]) -> None:
        if self._fh is None:
            return
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        # One write per event, then flush: a reader tailing the file sees whole events as they happen.
        self._fh.write(buf.getvalue())
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> AppendCSV:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MetricsCSV(AppendCSV):
    """``metrics.csv``: one row per logging event, columns ``aline.contract.METRICS_HEADER``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path, METRICS_HEADER)
        self.last_train_iteration: int | None = None

    def write_row(
        self,
        split: str,
        epoch: int,
        iteration: int,
        metrics: Mapping[str, Any],
        when: float | None = None,
    ) -> None:
        """Append one row; metrics not in the header (tables, arrays) are ignored, NaN becomes empty."""
        if split not in (SPLIT_TRAIN, SPLIT_VAL):
            raise ValueError(f"split must be {SPLIT_TRAIN!r} or {SPLIT_VAL!r}, got {split!r}")
        allowed = TRAIN_METRICS if split == SPLIT_TRAIN else VAL_METRICS
        stamp = time.time() if when is None else when
        row = [f"{stamp:.3f}", int(epoch), int(iteration), split]
        row += [_cell(metrics.get(name)) if name in allowed else "" for name in METRIC_COLUMNS]
        self._write_lines([row])
        if split == SPLIT_TRAIN:
            self.last_train_iteration = int(iteration)


def attach_metrics_csv(trainer: Engine, evaluator: Engine, csv_log: MetricsCSV, every: int) -> None:
    """Train rows every ``every`` iterations and at each epoch end; a val row after each evaluation."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")

    def train_row(engine: Engine) -> None:
        # An epoch whose length is a multiple of `every` would otherwise log its last iteration twice.
        if csv_log.last_train_iteration == engine.state.iteration:
            return
        csv_log.write_row(SPLIT_TRAIN, engine.state.epoch, engine.state.iteration, engine.state.metrics)

    def val_row(engine: Engine) -> None:
        csv_log.write_row(SPLIT_VAL, trainer.state.epoch, trainer.state.iteration, engine.state.metrics)

    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=every), train_row)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, train_row)
    evaluator.add_event_handler(Events.COMPLETED, val_row)


class CalibrationCSV(AppendCSV):
    """``calibration.csv``: the validation reliability table, one row per bin per epoch."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path, CALIBRATION_HEADER)

    def write(self, epoch: int, table: CalibrationTable) -> None:
        rows = [
            [
                int(epoch),
                b,
                _cell(table.lo[b]),
                _cell(table.hi[b]),
                int(table.count[b]),
                _cell(table.mean_pred[b]),
                _cell(table.frac_pos[b]),
            ]
            for b in range(len(table.count))
        ]
        self._write_lines(rows)


class TopkCSV(AppendCSV):
    """``topk_hours.csv``: share of validation windows whose top-k holds each hour, per epoch."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path, TOPK_HEADER)

    def write(self, epoch: int, frequency: Sequence[float] | np.ndarray | torch.Tensor) -> None:
        freq = np.asarray(frequency.cpu() if isinstance(frequency, torch.Tensor) else frequency, dtype=float)
        if freq.shape != (HOURS,):
            raise ValueError(f"{self.path}: top-k frequency must have shape ({HOURS},), got {freq.shape}")
        self._write_lines([[int(epoch), hour, _cell(freq[hour])] for hour in range(HOURS)])


def attach_validation_tables(
    trainer: Engine,
    evaluator: Engine,
    calibration_csv: CalibrationCSV,
    topk_csv: TopkCSV,
    calibration_key: str = "calibration",
    topk_key: str = "topk_frequency",
) -> None:
    """After each evaluation, append the calibration table and the top-k hour frequencies."""

    def write(engine: Engine) -> None:
        metrics = engine.state.metrics
        if calibration_key in metrics:
            calibration_csv.write(trainer.state.epoch, metrics[calibration_key])
        if topk_key in metrics:
            topk_csv.write(trainer.state.epoch, metrics[topk_key])

    evaluator.add_event_handler(Events.COMPLETED, write)


# --- status.json ------------------------------------------------------------------------------------------


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunStatus:
    """``status.json``, rewritten atomically on every change.

    Reopening the file of an earlier run (resume) keeps its ``started`` time and ``best`` entry.
    """

    def __init__(self, path: str | os.PathLike[str], oracle: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        previous: dict[str, Any] = {}
        if self.path.exists():
            try:
                previous = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                previous = {}  # written atomically, so this means a foreign file: start afresh
        self.data: dict[str, Any] = {
            "state": STATE_RUNNING,
            "pid": os.getpid(),
            "started": previous.get("started") or utc_now(),
            "updated": None,
            "finished": None,
            "epoch": previous.get("epoch", 0),
            "iteration": previous.get("iteration", 0),
            "max_epochs": previous.get("max_epochs"),
            "best": previous.get("best"),
            "oracle": dict(oracle) if oracle is not None else previous.get("oracle"),
        }

    def _write(self) -> None:
        self.data["updated"] = utc_now()
        if _is_writer():
            write_json_atomic(self.path, self.data)

    def _progress(self, epoch: int | None, iteration: int | None) -> None:
        if epoch is not None:
            self.data["epoch"] = int(epoch)
        if iteration is not None:
            self.data["iteration"] = int(iteration)

    def running(self, epoch: int = 0, iteration: int = 0, max_epochs: int | None = None) -> None:
        self.data.update(state=STATE_RUNNING, pid=os.getpid(), finished=None)
        self.data.pop("reason", None)
        self.data.pop("note", None)
        if max_epochs is not None:
            self.data["max_epochs"] = int(max_epochs)
        self._progress(epoch, iteration)
        self._write()

    def progress(self, epoch: int, iteration: int) -> None:
        self._progress(epoch, iteration)
        self._write()

    def set_best(self, metric: str, value: float, epoch: int, checkpoint: str) -> None:
        self.data["best"] = {
            "metric": metric,
            "value": _number(value),
            "epoch": int(epoch),
            "checkpoint": checkpoint,
        }
        self._write()

    def _end(self, state: str, epoch: int | None, iteration: int | None, reason: str | None) -> None:
        self.data.update(state=state, finished=utc_now())
        if reason is not None:
            self.data["reason"] = reason
        self._progress(epoch, iteration)
        self._write()

    def finished(
        self, epoch: int | None = None, iteration: int | None = None, note: str | None = None
    ) -> None:
        if note is not None:
            self.data["note"] = note
        self._end(STATE_FINISHED, epoch, iteration, None)

    def failed(self, reason: str, epoch: int | None = None, iteration: int | None = None) -> None:
        self._end(STATE_FAILED, epoch, iteration, reason)

    def stopped(self, reason: str, epoch: int | None = None, iteration: int | None = None) -> None:
        self._end(STATE_STOPPED, epoch, iteration, reason)


def _nonfinite_output(output: Any) -> bool:
    values = output.values() if isinstance(output, Mapping) else [output]
    for v in values:
        if isinstance(v, torch.Tensor):
            if not bool(torch.isfinite(v.detach()).all()):
                return True
        elif isinstance(v, numbers.Real) and not math.isfinite(float(v)):
            return True
    return False


def attach_status(
    trainer: Engine,
    status: RunStatus,
    last_checkpoint: LastCheckpoint | None = None,
    cleanup: Sequence[Callable[[], Any]] = (),
) -> None:
    """Keep ``status.json`` in step with the trainer.

    running at STARTED, progress each epoch, finished at COMPLETED — or failed when the run was ended by
    :class:`TerminateOnNan` (the last step output is not finite). On EXCEPTION_RAISED: write ``last.pt``
    (when given) so the run can be resumed, record stopped (KeyboardInterrupt, incl. SIGTERM via
    :func:`install_sigterm_handler`) or failed (anything else) and re-raise. Ignite swallows an exception
    that an EXCEPTION_RAISED handler does not re-raise, so this one always re-raises; it is also the place
    that writes ``last.pt`` on failure, because handlers after a re-raising one never run. ``cleanup``
    callables (closing files, the W&B run) run at the very end, on success and on failure alike.
    """
    handled: list[BaseException] = []  # the exception already recorded (held, so its identity is stable)

    def run_cleanup() -> None:
        for fn in cleanup:
            try:
                fn()
            except Exception as err:  # one failing close must not hide the others or the run's own error
                logging.getLogger(LOGGER_NAME).error("cleanup %r failed: %s", fn, err)

    def started(engine: Engine) -> None:
        status.running(engine.state.epoch, engine.state.iteration, engine.state.max_epochs)

    def epoch_done(engine: Engine) -> None:
        status.progress(engine.state.epoch, engine.state.iteration)

    def completed(engine: Engine) -> None:
        nan_at = getattr(engine.state, "nan_iteration", None)
        if nan_at is None and engine.should_terminate and _nonfinite_output(engine.state.output):
            nan_at = engine.state.iteration
        if nan_at is not None:
            status.failed(
                f"non-finite loss at iteration {nan_at}", engine.state.epoch, engine.state.iteration
            )
        elif engine.should_terminate:
            status.finished(
                engine.state.epoch,
                engine.state.iteration,
                note=f"stopped early after epoch {engine.state.epoch}",
            )
        else:
            status.finished(engine.state.epoch, engine.state.iteration)
        run_cleanup()

    def exception(engine: Engine, err: BaseException) -> None:
        # Ignite fires EXCEPTION_RAISED twice for an error inside an iteration (inner and outer loop).
        if not (handled and handled[0] is err):
            handled[:] = [err]
            # last.pt is left as the latest epoch boundary wrote it (or as STARTED wrote it): a mid-epoch
            # state cannot be resumed exactly, since the loader would restart the epoch's batches.
            epoch, iteration = engine.state.epoch, engine.state.iteration
            if isinstance(err, KeyboardInterrupt):
                status.stopped(str(err) or "interrupted (KeyboardInterrupt)", epoch, iteration)
            else:
                status.failed(f"{type(err).__name__}: {err}", epoch, iteration)
            run_cleanup()
        raise err

    trainer.add_event_handler(Events.STARTED, started)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, epoch_done)
    trainer.add_event_handler(Events.COMPLETED, completed)
    trainer.add_event_handler(Events.EXCEPTION_RAISED, exception)


class SigtermInterrupt(KeyboardInterrupt):
    """SIGTERM turned into an interrupt, so that a killed run ends like Ctrl-C: status stopped, last.pt."""


def install_sigterm_handler() -> None:
    """Make SIGTERM raise :class:`SigtermInterrupt` in the main thread (no-op elsewhere)."""

    def _raise(signum: int, frame: object) -> None:
        raise SigtermInterrupt("stopped by SIGTERM")

    with contextlib.suppress(ValueError):  # not the main thread: signals cannot be set there
        signal.signal(signal.SIGTERM, _raise)


class _RecordingTerminateOnNan(TerminateOnNan):
    """TerminateOnNan that also notes the iteration, so the status can say where the loss went bad."""

    def __call__(self, engine: Engine) -> None:
        already = bool(engine.should_terminate)
        super().__call__(engine)
        if engine.should_terminate and not already:
            engine.state.nan_iteration = engine.state.iteration


def attach_terminate_on_nan(trainer: Engine) -> TerminateOnNan:
    handler = _RecordingTerminateOnNan()
    trainer.add_event_handler(Events.ITERATION_COMPLETED, handler)
    return handler


# --- checkpoints ------------------------------------------------------------------------------------------


def _unwrap(obj: Any) -> Any:
    if isinstance(obj, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        return obj.module
    return obj


def weights_only_safe(value: Any, where: str = "checkpoint") -> Any:
    """A copy of ``value`` that ``torch.load(weights_only=True)`` accepts.

    NumPy scalars become Python numbers and NumPy arrays tensors; anything else that is not a tensor,
    number, string, None or a dict/list/tuple of those raises a TypeError naming where it sits.
    """
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.generic):  # before the float check: np.float64 subclasses float
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str, bytes, torch.Size, torch.dtype)):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, Mapping):
        out = OrderedDict() if isinstance(value, OrderedDict) else {}
        for k, v in value.items():
            out[k] = weights_only_safe(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        items = [weights_only_safe(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise TypeError(f"{where}: {type(value).__name__} cannot be loaded with torch.load(weights_only=True)")


class RNGState:
    """Python, NumPy and torch (CPU and CUDA) random states, as a checkpointable object."""

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = random.getstate()
        name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
        state: dict[str, Any] = {
            "python": [version, list(internal), gauss],
            "numpy": {
                "name": name,
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached": float(cached),
            },
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        n = state["numpy"]
        keys = n["keys"].numpy().astype(np.uint32)
        np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached"]))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class LastCheckpoint:
    """``checkpoints/last.pt``: everything needed to resume, replaced atomically on each save.

    ``to_save`` maps names to objects with ``state_dict()`` (model, optimizer, LR schedule, trainer, early
    stopping, the best-checkpoint handler, :class:`RNGState`, ...). Saved only on rank 0.
    """

    def __init__(self, path: str | os.PathLike[str], to_save: Mapping[str, Any]) -> None:
        for key, obj in to_save.items():
            if not hasattr(obj, "state_dict"):
                raise TypeError(f"last checkpoint: {key!r} ({type(obj).__name__}) has no state_dict()")
        self.path = Path(path)
        self.to_save = dict(to_save)

    def state(self) -> dict[str, Any]:
        raw = {key: _unwrap(obj).state_dict() for key, obj in self.to_save.items()}
        return weights_only_safe(raw, str(self.path.name))

    def save(self) -> None:
        if not _is_writer():
            return
        payload = self.state()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.path, "wb") as fh:
            torch.save(payload, fh)


def last_checkpoint_path(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT


def attach_last_checkpoint(trainer: Engine, last: LastCheckpoint) -> None:
    """Write ``last.pt`` at each epoch end (attach after the validation handler; see the module doc).

    Also at the start of a fresh run, so that a run stopped during its first epoch is resumable too. Only
    epoch boundaries are ever saved: resuming from one repeats the interrupted epoch exactly.
    """
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: last.save())

    @trainer.on(Events.STARTED)
    def _initial(_: Engine) -> None:
        if not last.path.exists():
            last.save()


def resume_from(last_pt: str | os.PathLike[str], to_load: Mapping[str, Any]) -> dict[str, Any]:
    """Load ``last.pt`` (weights only) into the objects of ``to_load``; returns the raw checkpoint dict."""
    path = Path(last_pt)
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: {path} does not exist")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    missing = [key for key in to_load if key not in checkpoint]
    if missing:
        raise KeyError(
            f"cannot resume from {path}: it has no entry for {', '.join(map(repr, missing))} "
            f"(it holds {', '.join(map(repr, checkpoint))})"
        )
    for key, obj in to_load.items():
        _unwrap(obj).load_state_dict(checkpoint[key])
    return checkpoint


def score_sign(metric: str) -> float:
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"unknown validation metric {metric!r}; choose one of {', '.join(VAL_METRICS)}")
    return 1.0 if HIGHER_IS_BETTER[metric] else -1.0


def metric_score(metric: str) -> Callable[[Engine], float]:
    """Score function for ignite (higher = better): a plain float, and −inf for an undefined (NaN) metric.

    NaN would poison ignite's comparisons (every later score would look like no improvement, or every one
    like an improvement); −inf ranks an undefined evaluation as the worst one instead.
    """
    sign = score_sign(metric)

    def score(engine: Engine) -> float:
        value = _number(engine.state.metrics.get(metric))
        return -math.inf if value is None else sign * value

    return score


class _BestFilename(str):
    """Filename pattern that shows the metric's own value, not ignite's sign-flipped score.

    Ignite formats ``score`` from the priority (−brier for a lower-is-better metric); Checkpoint only calls
    ``pattern.format(**fields)``, so overriding ``format`` is enough to print ``brier=0.1523``.
    """

    sign: float = 1.0

    def format(self, *args: Any, **fields: Any) -> str:  # type: ignore[override]
        score = fields.get("score")
        if score is not None:
            value = float(score) * self.sign
            fields["score"] = f"{value:.4f}" if math.isfinite(value) else "nan"
        return str.format(self, *args, **fields)


class _KeepGoingDiskSaver(DiskSaver):
    def remove(self, filename: str) -> None:
        # A best checkpoint deleted by hand must not crash a resumed run when it falls out of the top n.
        if _is_writer():
            (self.dirname / filename).unlink(missing_ok=True)


class _BestMeta:
    """Extra entry of a best checkpoint: which epoch, which metric and value it was chosen for."""

    def __init__(self, trainer: Engine, evaluator: Engine, metric: str) -> None:
        self.trainer, self.evaluator, self.metric = trainer, evaluator, metric

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": int(self.trainer.state.epoch),
            "iteration": int(self.trainer.state.iteration),
            "metric": self.metric,
            "value": _number(self.evaluator.state.metrics.get(self.metric)),
        }


def attach_best_checkpoint(
    trainer: Engine,
    evaluator: Engine,
    run_dir: str | os.PathLike[str],
    model: torch.nn.Module,
    metric: str,
    n_saved: int = 1,
    status: RunStatus | None = None,
) -> Checkpoint:
    """Keep the ``n_saved`` best checkpoints by validation ``metric`` in ``run_dir/checkpoints``.

    Files are named ``best_epoch=3_auc=0.8123.pt`` and hold ``{"model": state_dict, "meta": {...}}``.
    The returned handler's ``state_dict()`` belongs in ``last.pt`` (so a resumed run keeps its ranking).
    When a new best appears, ``status.best`` is updated with the file's path relative to ``run_dir``.
    """
    sign = score_sign(metric)
    pattern = _BestFilename("best_epoch={global_step}_{score_name}={score}.{ext}")
    pattern.sign = sign
    saver = _KeepGoingDiskSaver(Path(run_dir) / CHECKPOINT_DIR, require_empty=False, create_dir=True)
    handler = Checkpoint(
        {"model": model, "meta": _BestMeta(trainer, evaluator, metric)},
        saver,
        score_function=metric_score(metric),
        score_name=metric,
        n_saved=n_saved,
        global_step_transform=lambda *_: trainer.state.epoch,
        filename_pattern=pattern,
    )

    def save(engine: Engine) -> None:
        saved_before = handler.state_dict()["_saved"]
        handler(engine)
        saved = handler.state_dict()["_saved"]  # [(priority, filename)], best last
        if status is None or not saved or (saved_before and saved[-1][1] == saved_before[-1][1]):
            return
        priority, filename = saved[-1]
        value = priority * sign if math.isfinite(priority) else None
        status.set_best(metric, value, trainer.state.epoch, f"{CHECKPOINT_DIR}/{filename}")

    evaluator.add_event_handler(Events.COMPLETED, save)
    return handler


# --- early stopping ---------------------------------------------------------------------------------------


def attach_early_stopping(trainer: Engine, evaluator: Engine, cfg: EarlyStopConfig) -> EarlyStopping | None:
    """Stop after ``cfg.patience`` evaluations without an improvement of more than ``cfg.min_delta``.

    None when ``cfg.patience`` is None. The score is a plain float (never a NumPy scalar, never NaN), so the
    handler's ``state_dict()`` is weights-only loadable.
    """
    if cfg.patience is None:
        return None
    # 4th positional = min_delta (ignite < 0.5.5) / threshold (0.5.5): the same meaning under both names.
    handler = EarlyStopping(cfg.patience, metric_score(cfg.metric), trainer, cfg.min_delta)
    evaluator.add_event_handler(Events.COMPLETED, handler)
    return handler


# --- learning-rate schedules ------------------------------------------------------------------------------


class LRSchedule:
    """Sets every param group's lr before each iteration, from a closed form of the trainer's counters.

    cosine: linear warmup over ``warmup_epochs`` epochs, then cosine decay to ``min_lr_ratio * base_lr`` at
    the last iteration (per iteration). step: ``base_lr * gamma ** ((epoch - 1) // step_epochs)`` (per epoch).
    plateau: multiply by ``gamma`` (not below ``min_lr_ratio * base_lr``) once the validation metric has not
    improved for more than ``plateau_patience`` evaluations (as torch's ReduceLROnPlateau, threshold 0).
    none: constant. Cosine and step depend only on the trainer's epoch/iteration, so restoring the trainer
    restores them; plateau's own counters are in ``state_dict()``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        cfg: SchedConfig,
        base_lr: float,
        epoch_length: int,
        max_epochs: int,
        metric: str = "loss",
    ) -> None:
        self.optimizer, self.cfg, self.base_lr = optimizer, cfg, float(base_lr)
        self.epoch_length, self.max_epochs = int(epoch_length), int(max_epochs)
        self.metric = metric
        self.sign = score_sign(metric)
        self.min_lr = self.base_lr * cfg.min_lr_ratio
        self.warmup_iters = int(round(cfg.warmup_epochs * self.epoch_length)) if cfg.name == "cosine" else 0
        self.total_iters = self.epoch_length * self.max_epochs
        self.scale = 1.0  # plateau: product of the reductions so far
        self.best: float | None = None
        self.bad_evals = 0

    def lr_at(self, iteration: int, epoch: int) -> float:
        """lr for the 1-based ``iteration`` (in 1-based ``epoch``)."""
        name = self.cfg.name
        if name == "cosine":
            step = iteration - 1
            if step < self.warmup_iters:
                return self.base_lr * (step + 1) / self.warmup_iters
            span = max(1, self.total_iters - self.warmup_iters - 1)
            t = min(1.0, (step - self.warmup_iters) / span)
            return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
        if name == "step":
            return self.base_lr * self.cfg.gamma ** ((epoch - 1) // self.cfg.step_epochs)
        if name == "plateau":
            return max(self.min_lr, self.base_lr * self.scale)
        return self.base_lr

    def apply(self, engine: Engine) -> None:
        lr = self.lr_at(engine.state.iteration, engine.state.epoch)
        for group in self.optimizer.param_groups:
            # A group may ask for a fixed multiple of the schedule (the prediction head does).
            group["lr"] = lr * group.get("lr_mult", 1.0)

    def on_validation(self, engine: Engine) -> None:
        value = _number(engine.state.metrics.get(self.metric))
        score = None if value is None else self.sign * value
        if score is not None and (self.best is None or score > self.best):
            self.best, self.bad_evals = score, 0
            return
        self.bad_evals += 1
        if self.bad_evals > self.cfg.plateau_patience:
            self.scale *= self.cfg.gamma
            self.bad_evals = 0

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.cfg.name, "scale": self.scale, "best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["name"] != self.cfg.name:
            raise ValueError(f"LR schedule in checkpoint is {state['name']!r}, config says {self.cfg.name!r}")
        self.scale, self.best, self.bad_evals = float(state["scale"]), state["best"], int(state["bad_evals"])


def build_lr_scheduler(
    trainer: Engine,
    evaluator: Engine,
    optimizer: torch.optim.Optimizer,
    sched_cfg: SchedConfig,
    base_lr: float,
    epoch_length: int,
    max_epochs: int,
    metric: str = "loss",
) -> LRSchedule:
    """Build the schedule of ``sched_cfg.name`` and attach it; put the result in ``last.pt``.

    ``metric`` is the validation metric that ``plateau`` watches (SchedConfig has no field for it).
    """
    sched = LRSchedule(optimizer, sched_cfg, base_lr, epoch_length, max_epochs, metric)
    trainer.add_event_handler(Events.ITERATION_STARTED, sched.apply)
    if sched_cfg.name == "plateau":
        evaluator.add_event_handler(Events.COMPLETED, sched.on_validation)
    return sched


# --- logging ----------------------------------------------------------------------------------------------


def setup_logging(
    run_dir: str | os.PathLike[str] | None, level: int = logging.INFO, stream: Any = None
) -> logging.Logger:
    """The ``aline`` logger: the same lines on the console and in ``run_dir/train.log`` (rank 0 only).

    Other ranks log warnings and errors to the console only. Calling it again replaces the handlers.
    """
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        if getattr(handler, "_aline", False):
            logger.removeHandler(handler)
            handler.close()
    logger.setLevel(level)
    logger.propagate = False
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    console = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handlers: list[logging.Handler] = [console]
    if not _is_writer():
        console.setLevel(logging.WARNING)
    elif run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(run_dir) / LOG_FILE, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler._aline = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    return logger


def _fmt(value: Any, digits: int = 4) -> str:
    num = _number(value)
    return "n/a" if num is None else f"{num:.{digits}f}"


def format_epoch_summary(
    epoch: int,
    max_epochs: int | None,
    train: Mapping[str, Any],
    val: Mapping[str, Any],
    seconds: float,
) -> str:
    """One line per epoch: ``epoch 3/20 | train loss 0.4123 | val loss 0.4012 auc 0.8012 ... | 12.3s``."""
    of = f"/{max_epochs}" if max_epochs else ""
    val_part = " ".join(
        f"{name} {_fmt(val.get(name))}"
        for name in ("loss", "auc", "brier", "ece", "post_mse", "policy_value")
    )
    return f"epoch {epoch}{of} | train loss {_fmt(train.get('loss'))} | val {val_part} | {seconds:.1f}s"


def attach_epoch_summary(trainer: Engine, evaluator: Engine, logger: logging.Logger | None = None) -> None:
    """Log :func:`format_epoch_summary` after each validation; time counts from the epoch's start."""
    log = logger or logging.getLogger(LOGGER_NAME)
    started = {"t": time.perf_counter()}
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda _: started.update(t=time.perf_counter()))

    def summary(engine: Engine) -> None:
        log.info(
            format_epoch_summary(
                trainer.state.epoch,
                trainer.state.max_epochs,
                trainer.state.metrics,
                engine.state.metrics,
                time.perf_counter() - started["t"],
            )
        )

    evaluator.add_event_handler(Events.COMPLETED, summary)


# --- Weights & Biases -------------------------------------------------------------------------------------


def _scalars(metrics: Mapping[str, Any], names: Sequence[str], prefix: str) -> dict[str, float]:
    out = {}
    for name in names:
        num = _number(metrics.get(name))
        if num is not None:
            out[f"{prefix}/{name}"] = num
    return out


def attach_wandb(
    trainer: Engine,
    evaluator: Engine,
    cfg: Config,
    run_dir: str | os.PathLike[str] | None = None,
    every: int | None = None,
) -> Any:
    """Log train/val scalars to W&B through ignite's ``WandBLogger``; None when ``logging.wandb`` is off.

    Only rank 0 logs. ``logging.wandb_mode`` = offline needs no network (``wandb sync`` uploads later).
    The caller closes the returned logger (``.close()``) when training ends.
    """
    if not cfg.logging.wandb or not _is_writer():
        return None
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise ModuleNotFoundError(WANDB_MISSING) from None
    from ignite.handlers.wandb_logger import WandBLogger

    kwargs: dict[str, Any] = {
        "project": cfg.logging.wandb_project,
        "mode": cfg.logging.wandb_mode,
        "config": cfg.to_dict(),
        "name": cfg.run.name,
    }
    if run_dir is not None:
        kwargs["dir"] = str(run_dir)
    wb = WandBLogger(**kwargs)
    every = every or cfg.trainer.log_every

    def log_train(engine: Engine) -> None:
        values = _scalars(engine.state.metrics, TRAIN_METRICS, SPLIT_TRAIN)
        if values:
            wb.log(values, step=engine.state.iteration)

    def log_val(engine: Engine) -> None:
        values = _scalars(engine.state.metrics, VAL_METRICS, SPLIT_VAL)
        values["epoch"] = trainer.state.epoch
        wb.log(values, step=trainer.state.iteration)

    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=every), log_train)
    evaluator.add_event_handler(Events.COMPLETED, log_val)
    return wb


# --- everything, in the right order -----------------------------------------------------------------------


@dataclass
class RunHandlers:
    """What :func:`attach_all` attached; ``to_save`` is exactly what ``last.pt`` holds."""

    logger: logging.Logger
    status: RunStatus
    metrics_csv: MetricsCSV
    calibration_csv: CalibrationCSV
    topk_csv: TopkCSV
    lr_schedule: LRSchedule
    early_stopping: EarlyStopping | None
    best_checkpoint: Checkpoint
    last_checkpoint: LastCheckpoint
    to_save: dict[str, Any]
    wandb: Any = None
    resumed_from: Path | None = None


def attach_all(
    cfg: Config,
    run_dir: str | os.PathLike[str],
    *,
    trainer: Engine,
    evaluator: Engine,
    val_loader: Iterable[Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch_length: int,
    oracle: Mapping[str, Any] | None = None,
    resume: bool = False,
    plateau_metric: str = "loss",
) -> RunHandlers:
    """Attach validation and every handler of this module in the order they need; resume when asked.

    Call on every rank, after the trainer's and the evaluator's metrics are attached and before
    ``trainer.run``. With ``resume``, ``run_dir/checkpoints/last.pt`` is loaded into the model, optimiser,
    trainer and handlers (``early_stopping`` may be absent from it: then it starts afresh).
    """
    run_dir = Path(run_dir)
    logger = setup_logging(run_dir)
    status = RunStatus(run_dir / STATUS_FILE, oracle)
    metrics_csv = MetricsCSV(run_dir / METRICS_FILE)
    calibration_csv = CalibrationCSV(run_dir / CALIBRATION_FILE)
    topk_csv = TopkCSV(run_dir / TOPK_FILE)

    attach_terminate_on_nan(trainer)
    # Before validation, so that an epoch's last train row precedes its val row in time and in the file.
    attach_metrics_csv(trainer, evaluator, metrics_csv, cfg.trainer.log_every)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run(val_loader))
    attach_validation_tables(trainer, evaluator, calibration_csv, topk_csv)
    schedule = build_lr_scheduler(
        trainer,
        evaluator,
        optimizer,
        cfg.sched,
        cfg.optim.lr,
        epoch_length,
        cfg.trainer.epochs,
        metric=plateau_metric,
    )
    early = attach_early_stopping(trainer, evaluator, cfg.early_stop)
    best = attach_best_checkpoint(
        trainer, evaluator, run_dir, model, cfg.checkpoint.metric, cfg.checkpoint.n_saved, status
    )
    attach_epoch_summary(trainer, evaluator, logger)
    to_save: dict[str, Any] = {
        "model": model,
        "optimizer": optimizer,
        "lr_scheduler": schedule,
        "trainer": trainer,
        "best_checkpoint": best,
        "rng": RNGState(),
    }
    if early is not None:
        to_save["early_stopping"] = early
    last = LastCheckpoint(last_checkpoint_path(run_dir), to_save)
    attach_last_checkpoint(trainer, last)  # after validation: last.pt holds this epoch's decisions
    wb = attach_wandb(trainer, evaluator, cfg, run_dir)
    cleanup: list[Callable[[], Any]] = [metrics_csv.close, calibration_csv.close, topk_csv.close]
    if wb is not None:
        cleanup.append(wb.close)
    attach_status(trainer, status, last, cleanup)
    if cfg.logging.progress and _is_writer():
        from ignite.handlers import ProgressBar

        ProgressBar(persist=False).attach(trainer, metric_names=["loss"])

    resumed_from = None
    if resume:
        resumed_from = last_checkpoint_path(run_dir)
        to_load = dict(to_save)
        if early is not None:
            saved_keys = torch.load(resumed_from, map_location="cpu", weights_only=True).keys()
            if "early_stopping" not in saved_keys:
                logger.warning("%s has no early-stopping state: early stopping starts afresh", resumed_from)
                del to_load["early_stopping"]
        resume_from(resumed_from, to_load)
        logger.info(
            "resumed %s at epoch %d, iteration %d", run_dir, trainer.state.epoch, trainer.state.iteration
        )
    return RunHandlers(
        logger,
        status,
        metrics_csv,
        calibration_csv,
        topk_csv,
        schedule,
        early,
        best,
        last,
        to_save,
        wb,
        resumed_from,
    )


__all__ = [
    "RunHandlers",
    "attach_all",
    "AppendCSV",
    "CalibrationCSV",
    "LRSchedule",
    "LastCheckpoint",
    "MetricsCSV",
    "RNGState",
    "RunStatus",
    "SigtermInterrupt",
    "TopkCSV",
    "attach_best_checkpoint",
    "attach_early_stopping",
    "attach_epoch_summary",
    "attach_last_checkpoint",
    "attach_metrics_csv",
    "attach_status",
    "attach_terminate_on_nan",
    "attach_validation_tables",
    "attach_wandb",
    "last_checkpoint_path",
    "build_lr_scheduler",
    "format_epoch_summary",
    "install_sigterm_handler",
    "metric_score",
    "resume_from",
    "setup_logging",
    "utc_now",
    "weights_only_safe",
]
