"""Ignite handlers that turn a training run into the run folder of ``docs/run-folder.md``.

Everything the trainer does *around* its steps, one module per job (``logs``: CSV files, logging, epoch
summary, W&B; ``status``: status.json, heartbeat, SIGTERM, divergence; ``checkpoints``: last/best
checkpoints, resume, RNG; ``schedules``: LR schedule, early stopping); this package re-exports them and
:func:`attach_all` attaches them in order. Each piece is a small object plus an ``attach_*`` function;
``aline.training.engine`` / ``aline.train`` decide which ones to attach.

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

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, EarlyStopping

from aline.config import Config
from aline.contract import CALIBRATION_FILE, METRICS_FILE, STATUS_FILE, TOPK_FILE
from aline.training.handlers.checkpoints import (
    CheckpointError,
    LastCheckpoint,
    RNGState,
    attach_best_checkpoint,
    attach_last_checkpoint,
    check_resumable,
    last_checkpoint_path,
    metric_score,
    read_checkpoint,
    resume_from,
    score_sign,
    weights_only_safe,
)
from aline.training.handlers.common import LOGGER_NAME, WANDB_MISSING, _is_writer
from aline.training.handlers.logs import (
    AppendCSV,
    CalibrationCSV,
    CSVLengths,
    MetricsCSV,
    TopkCSV,
    attach_epoch_summary,
    attach_metrics_csv,
    attach_validation_tables,
    attach_wandb,
    format_epoch_summary,
    setup_logging,
)
from aline.training.handlers.schedules import LRSchedule, attach_early_stopping, build_lr_scheduler
from aline.training.handlers.status import (
    DivergenceGuard,
    RunStatus,
    SigtermInterrupt,
    attach_status,
    attach_terminate_on_nan,
    install_sigterm_handler,
    utc_now,
)
from aline.training.progress import attach_progress

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
    scored_model: torch.nn.Module | None = None,
    oracle: Mapping[str, Any] | None = None,
    resume: bool = False,
    plateau_metric: str = "loss",
) -> RunHandlers:
    """Attach validation and every handler of this module in the order they need; resume when asked.

    Call on every rank, after the trainer's and the evaluator's metrics are attached and before
    ``trainer.run``. ``scored_model``: the weights the evaluator scores when they are not ``model``'s own
    (their moving average); checkpoints keep them as ``model``, the weights a prediction loads, and
    ``last.pt`` keeps ``model``'s beside them as ``online_model``. With ``resume``,
    ``run_dir/checkpoints/last.pt`` is loaded into the model, optimiser, trainer and handlers
    (``early_stopping`` may be absent from it: then it starts afresh).
    """
    run_dir = Path(run_dir)
    scored = model if scored_model is None else scored_model
    logger = setup_logging(run_dir)
    free = cfg.data.oracle_free
    status = RunStatus(run_dir / STATUS_FILE, oracle, free if isinstance(free, bool) else None)
    metrics_csv = MetricsCSV(run_dir / METRICS_FILE)
    calibration_csv = CalibrationCSV(run_dir / CALIBRATION_FILE)
    topk_csv = TopkCSV(run_dir / TOPK_FILE)

    # The failing iteration's row goes to metrics.csv before the run ends, so the file shows the divergence.
    attach_terminate_on_nan(trainer, model, on_diverge=metrics_csv.write_train_row)
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
        trainer, evaluator, run_dir, scored, cfg.checkpoint.metric, cfg.checkpoint.n_saved, status
    )
    attach_epoch_summary(trainer, evaluator, logger)
    to_save: dict[str, Any] = {
        "model": scored,
        "optimizer": optimizer,
        "lr_scheduler": schedule,
        "trainer": trainer,
        "best_checkpoint": best,
        "rng": RNGState(),
    }
    if scored is not model:
        to_save["online_model"] = model  # the weights training continues from
    if early is not None:
        to_save["early_stopping"] = early
    to_save["logs"] = CSVLengths([metrics_csv, calibration_csv, topk_csv])
    last = LastCheckpoint(last_checkpoint_path(run_dir), to_save)
    attach_last_checkpoint(trainer, last)  # after validation: last.pt holds this epoch's decisions
    wb = attach_wandb(trainer, evaluator, cfg, run_dir)
    cleanup: list[Callable[[], Any]] = [metrics_csv.close, calibration_csv.close, topk_csv.close]
    if wb is not None:
        cleanup.append(wb.close)
    attach_status(trainer, status, cleanup)
    if cfg.logging.progress and _is_writer():
        # A bar on a terminal; a plain line every 10 % of an epoch when stderr is a file or a pipe.
        attach_progress(trainer, ["loss"])

    resumed_from = None
    if resume:
        resumed_from = last_checkpoint_path(run_dir)
        to_load = dict(to_save)
        checkpoint = read_checkpoint(resumed_from, root=run_dir)
        optional = {
            "early_stopping": "early stopping starts afresh",
            "logs": "rows logged after it are kept (an older trainer wrote it)",
        }
        for key, consequence in optional.items():
            if key in to_load and key not in checkpoint:
                logger.warning("%s has no %s state: %s", resumed_from, key, consequence)
                del to_load[key]
        if "online_model" in to_load and "online_model" not in checkpoint:
            logger.warning(
                "%s holds no averaged weights (written with optim.ema_momentum null or by an older trainer): "
                "the average starts from its model weights",
                resumed_from,
            )
            checkpoint["online_model"] = checkpoint.get("model")
        elif "online_model" in checkpoint and "online_model" not in to_load:
            # Averaging switched off: training goes on from the weights it had, not from their average.
            checkpoint["model"] = checkpoint["online_model"]
        resume_from(resumed_from, to_load, checkpoint)
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
    "CSVLengths",
    "CheckpointError",
    "DivergenceGuard",
    "check_resumable",
    "read_checkpoint",
    "score_sign",
    "LOGGER_NAME",
    "WANDB_MISSING",
]
