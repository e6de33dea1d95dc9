"""The ignite engines: a trainer whose step is the composite ALINE loss, and an evaluator.

Factories in the style of the ignite code-generator templates: ``setup_trainer`` and ``setup_evaluator``
each wrap one small closure; ``setup_averaging`` gives the weights the evaluator scores. What the two
steps return is the contract that ``aline.training.metrics`` and ``aline.training.handlers`` read (see
the module docstring of ``aline.training.metrics``).
"""

from __future__ import annotations

import math

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from aline.config import Config
from aline.data.dataset import keep_batch
from aline.training.closed_loop import LoopSpec, loop_eval, loop_loss, loop_loss_with_first

Batch = dict[str, torch.Tensor]


def make_loader(dataset: Dataset, batch_size: int, *, train: bool, seed: int) -> DataLoader:
    """A loader whose shard and order depend only on (seed, epoch, rank), so runs and resumes repeat.

    A DistributedSampler is used even on one process: it gives the same seeded shuffle either way, and at
    evaluation it pads every process's share to the same length (duplicates that the metrics drop by index).
    """
    sampler = DistributedSampler(
        dataset,
        num_replicas=idist.get_world_size(),
        rank=idist.get_rank(),
        shuffle=train,
        seed=seed,
        drop_last=False,
    )
    # The dataset builds a whole batch with one fancy index (__getitems__), so collation is the identity.
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=keep_batch, num_workers=0)


def _to(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def setup_trainer(
    cfg: Config,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
) -> Engine:
    """Trainer engine: one optimisation step of the closed loop (:func:`aline.training.closed_loop.loop_loss`)
    per batch."""
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip is not None else math.inf
    params = [p for p in model.parameters() if p.requires_grad]
    spec = LoopSpec.from_config(cfg)

    def step(engine: Engine, batch: Batch) -> dict[str, float]:
        model.train()
        batch = _to(batch, device)
        parts = loop_loss(model, batch, cfg, spec)
        optimizer.zero_grad(set_to_none=True)
        parts.total.mean().backward()
        # The norm before clipping is what tells a user whether clipping is active.
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        return {**parts.means(), "grad_norm": float(grad_norm), "lr": float(optimizer.param_groups[0]["lr"])}

    trainer = Engine(step)

    @trainer.on(Events.EPOCH_STARTED)
    def _reseed(engine: Engine) -> None:
        # Shuffle order, Gumbel noise and dropout are functions of (seed, epoch, rank) only, so a run
        # resumed from an epoch boundary continues exactly as an uninterrupted one would.
        sampler = engine.state.dataloader.sampler
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(engine.state.epoch)
        torch.manual_seed(cfg.seed * 100_003 + engine.state.epoch * 1_009 + idist.get_rank())

    return trainer


def setup_averaging(cfg: Config, trainer: Engine, model: torch.nn.Module) -> torch.nn.Module:
    """The weights that validation scores and the checkpoints keep as ``model``: an exponential moving
    average of ``model``'s, updated after every step (ignite's ``EMAHandler``), or with
    ``optim.ema_momentum`` null the model itself.

    Every process keeps its own average of the weights DDP keeps identical, so the averages agree too.
    """
    momentum = cfg.optim.ema_momentum
    if momentum is None:
        return model
    ema = EMAHandler(model, momentum=momentum)

    # Until 1 / momentum steps have passed the average is the plain mean of every step's weights so far:
    # from the initial weights it would lag a short run by that many steps. A function of the iteration
    # (which a resumed trainer restores), so a resumed run averages as an uninterrupted one does.
    @trainer.on(Events.ITERATION_COMPLETED)
    def _momentum(engine: Engine) -> None:
        engine.state.ema_momentum = max(momentum, 1.0 / engine.state.iteration)

    ema.attach(trainer, name="ema_momentum", warn_if_exists=False)  # after: it reads the momentum set above
    return ema.ema_model


def setup_evaluator(cfg: Config, model: torch.nn.Module, device: torch.device) -> Engine:
    """Evaluator engine: per-window outputs (see ``aline.training.metrics``): the losses of the training
    loop, the forecast as logged, and the loop's figures (policy's asks, forecast after their answers,
    gains)."""
    spec = LoopSpec.from_config(cfg)

    @torch.no_grad()
    def step(engine: Engine, batch: Batch) -> dict[str, torch.Tensor]:
        model.eval()
        batch = _to(batch, device)
        parts, out = loop_loss_with_first(model, batch, cfg, spec)  # out: the day as logged (D0)
        result: dict[str, torch.Tensor] = {
            "index": batch["index"],
            "p": out.p_next,
            "y": batch["y"],
            "loss": parts.total,
            "loss_post": parts.post,
            "loss_policy": parts.policy,
            "loss_bce": parts.bce,
        }
        nan = torch.full_like(out.p_next, float("nan"))
        z = batch.get("z")  # absent when training on labels alone
        result["post_sq_err"] = nan if z is None else (out.mu_z - z).pow(2).mean(dim=(1, 2))
        sigma = batch.get("sigma")
        result["sigma_abs_err"] = nan if sigma is None else (out.sigma_z - sigma).abs().mean(dim=(1, 2))
        result.update(loop_eval(model, batch, cfg, spec, out0=out))
        return {name: t.detach().cpu() for name, t in result.items()}

    evaluator = Engine(step)
    # The policy loss samples hours; fixing the noise per pass makes validation losses repeat. The trainer
    # reseeds at every epoch start, so this does not leak into training.
    evaluator.add_event_handler(Events.STARTED, lambda _: torch.manual_seed(cfg.seed))
    return evaluator
