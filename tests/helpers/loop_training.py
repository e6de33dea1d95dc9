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
