"""Training a model through the closed loop for a number of steps, as the learning tests do."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from aline.config import Config
from aline.training.closed_loop import LoopSpec, loop_loss


def train_steps(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    batch: Callable[[int, np.random.Generator], dict[str, torch.Tensor]],
    cfg: Config,
    steps: int,
    rng: np.random.Generator,
    size: int = 128,
) -> None:
    """``steps`` optimiser steps of :func:`loop_loss` on fresh batches of ``size`` windows."""
    spec = LoopSpec.from_config(cfg)
    model.train()
    for _ in range(steps):
        parts = loop_loss(model, batch(size, rng), cfg, spec)
        opt.zero_grad()
        parts.total.mean().backward()
        opt.step()


def toy_config(cue: str, *overrides: str) -> Config:
    """The config of a toy loop task: features ``asleep``, ``rating`` (the asked one, answered in
    ``ask_rating``) and a visible ``cue``; one latent; asleep hours cannot be asked."""
    from aline.config import load_config

    return load_config(
        None,
        [
            f"data.columns.features=[asleep, rating, {cue}]",
            "data.columns.latents=[s]",
            "data.columns.answers={rating: ask_rating}",
            "policy.unaskable_when=[asleep]",
            "policy.samples=4",
            "loss.alpha=1.0",
            *overrides,
        ],
    )


def toy_batch(
    asleep: np.ndarray, cue: np.ndarray, answer: np.ndarray, y: np.ndarray, **extra: np.ndarray | torch.Tensor
) -> dict[str, torch.Tensor]:
    """A batch of the toy task that :func:`toy_config` describes, from ``[N, 24]`` arrays: ``asleep`` and
    the visible ``cue`` logged, the rating never logged, the answer channel empty, the pool the awake hours
    (answers kept there only); ``y`` [N]. ``extra`` entries (arrays or tensors) join the batch as they are
    named."""

    def t(a: np.ndarray | torch.Tensor) -> torch.Tensor:
        return a if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a, dtype=np.float32))

    pool = asleep == 0
    zeros, ones = np.zeros_like(asleep), np.ones_like(asleep)
    return {
        "index": torch.arange(len(y)),
        "x": t(np.stack([asleep, zeros, cue, zeros], axis=-1)),
        "mask": t(np.stack([ones, zeros, ones, zeros], axis=-1)),
        "y": t(y),
        "pool": t(pool),
        "answer": t(np.where(pool, answer, 0.0)),
        **{name: t(value) for name, value in extra.items()},
    }


def trainer_like_adam(model: torch.nn.Module, lr: float = 1e-2) -> torch.optim.Optimizer:
    """Adam with the prediction head ``w, b`` at ``optim.head_lr_mult`` times the rate of the rest, as the
    trainer sets it up (without its weight decay)."""
    mult = Config().optim.head_lr_mult
    head = model.prediction_head_parameters()
    body = [p for p in model.parameters() if all(p is not h for h in head)]
    return torch.optim.Adam([{"params": body, "lr": lr}, {"params": head, "lr": mult * lr}])
