"""What changes the course of a run from validation results: LR schedules and early stopping."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import EarlyStopping

from aline.config import EarlyStopConfig, SchedConfig
from aline.training.handlers.checkpoints import metric_score, score_sign
from aline.training.handlers.common import _number

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
