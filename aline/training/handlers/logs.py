"""The run's logs: append-only CSV files, console/file logging, the epoch summary line, optional W&B."""

from __future__ import annotations

import csv
import io
import logging
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from aline.config import Config
from aline.contract import (
    CALIBRATION_HEADER,
    HOURS,
    LOG_FILE,
    METRIC_COLUMNS,
    METRICS_HEADER,
    SPLIT_TRAIN,
    SPLIT_VAL,
    TOPK_HEADER,
    TRAIN_METRICS,
    VAL_METRICS,
)
from aline.runs import files
from aline.runs.folder import check_header_line
from aline.scoring import CalibrationTable
from aline.training.handlers.common import LOGGER_NAME, WANDB_MISSING, _cell, _is_writer, _number

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
        # The run folder's own file, never one a link leads to (files.RunFileError names it).
        root = self.path.parent
        if self.path.is_symlink() or (self.path.exists() and self.path.stat().st_size > 0):
            self._repair_and_check()
            self._fh = files.open_for_append(root, self.path)
        else:
            self._fh = files.open_for_write(root, self.path)
            self._write_lines([self.header])

    def _repair_and_check(self) -> None:
        with files.update_in_place(self.path.parent, self.path) as fh:
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
        check_header_line(self.path, data.split(b"\n", 1)[0], self.header)

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

    def write_train_row(self, engine: Engine) -> None:
        """The trainer's running averages now, once per iteration at most."""
        # An epoch whose length is a multiple of `every` would otherwise log its last iteration twice.
        if self.last_train_iteration == engine.state.iteration:
            return
        self.write_row(SPLIT_TRAIN, engine.state.epoch, engine.state.iteration, engine.state.metrics)


def attach_metrics_csv(trainer: Engine, evaluator: Engine, csv_log: MetricsCSV, every: int) -> None:
    """Train rows every ``every`` iterations and at each epoch end; a val row after each evaluation."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")

    def train_row(engine: Engine) -> None:
        csv_log.write_train_row(engine)

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


class CSVLengths:
    """The byte length of each append-only CSV, as an entry of ``last.pt``: what makes logs exactly-once.

    ``last.pt`` is written at epoch boundaries, after that epoch's rows. A run killed later (mid-epoch, or
    between a CSV append and the checkpoint's rename) has rows past the checkpoint; on resume,
    ``load_state_dict`` cuts each file back to its length at the checkpoint, so the replayed epoch is
    written once. The files are open in append mode, so cutting them under an open handle is safe.
    """

    def __init__(self, files: Sequence[AppendCSV]) -> None:
        self.files = list(files)

    def state_dict(self) -> dict[str, int]:
        return {f.path.name: f.path.stat().st_size for f in self.files if f.path.exists()}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        log = logging.getLogger(LOGGER_NAME)
        for f in self.files:
            if not _is_writer() or f.path.name not in state:
                continue
            want, have = int(state[f.path.name]), f.path.stat().st_size
            if want < 0:
                raise ValueError(f"{f.path.name}: a negative length ({want})")
            if have > want:
                files.truncate(f.path.parent, f.path, want)
                log.info(
                    "%s: dropped %d bytes written after the checkpoint (replayed now)", f.path, have - want
                )
            elif have < want:
                log.warning("%s is shorter than when last.pt was written (%d < %d bytes)", f.path, have, want)


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
        handlers.append(_RunLogHandler(Path(run_dir) / LOG_FILE))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler._aline = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    return logger


class _RunLogHandler(logging.FileHandler):
    """``train.log``, appended to without following a link (files.RunFileError if one is there)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, mode="a", encoding="utf-8", delay=True)
        self.stream = self._open()  # at once: a link in train.log's place is refused before training

    def _open(self) -> io.TextIOWrapper:
        path = Path(self.baseFilename)
        return files.open_for_append(path.parent, path)


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
