"""Training throughput: the ignite trainer with every default handler against a bare PyTorch loop.

Both train the same model (same init), on the same data, batch size and loss, and both run a validation
pass after each epoch (the bare loop scores it with scikit-learn's AUC; the ignite run computes every
metric and writes metrics.csv, calibration/top-k tables, status.json, checkpoints and the log). Repeats
are interleaved (bare, ignite, bare, ignite, ...) so that the noise of a shared machine hits both alike;
the figure is the median ratio of windows/s (ignite / bare). Target >= 0.95. Run it with nothing else on.

    python benchmarks/bench_train_speed.py [--repeats 9] [--epochs 2] [KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from ignite.engine import Events
from sklearn.metrics import roc_auc_score
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from aline.config import load_config
from aline.data import load_splits
from aline.data.dataset import Normalizer
from aline.model.network import build_model
from aline.train import build_optimizer, resolve_config, setup_run, window_dataset
from aline.training.closed_loop import LoopSpec, loop_eval, loop_loss, loop_loss_with_first
from aline.training.engine import make_loader


def bare_loop(cfg, splits, epochs: int) -> float:
    """Seconds for ``epochs`` epochs of a plain loop doing the trainer's work: step = the closed loop's
    loss (both passes), backward, clip, AdamW, the moving average of the weights (``optim.ema_momentum``);
    validation of the averaged weights = the loop's loss (the default checkpoint metric) with its first
    pass reused for the forecast and the loop's columns, AUC."""
    torch.manual_seed(cfg.seed)
    norm = Normalizer.fit(splits["train"])
    spec = LoopSpec.from_config(cfg)
    train_set = window_dataset(cfg, splits["train"], norm)
    val_set = window_dataset(cfg, splits["val"], norm)
    train_loader = make_loader(train_set, cfg.trainer.batch_size, train=True, seed=0)
    val_loader = make_loader(val_set, cfg.trainer.eval_batch_size, train=False, seed=0)
    model = build_model(cfg, len(norm.feature_names))
    model.init_prediction_bias(float(splits["train"].y.mean()))
    optimizer = build_optimizer(cfg, model)
    momentum = cfg.optim.ema_momentum
    averaged = (
        None if momentum is None else AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(1 - momentum))
    )
    scored = model if averaged is None else averaged.module
    start = time.perf_counter()
    for epoch in range(epochs):
        train_loader.sampler.set_epoch(epoch)
        model.train()
        for batch in train_loader:
            loss = loop_loss(model, batch, cfg, spec).total.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            if averaged is not None:
                averaged.update_parameters(model)
        scored.eval()
        ps, ys = [], []
        with torch.no_grad():
            for batch in val_loader:
                _, out = loop_loss_with_first(scored, batch, cfg, spec)  # val loss: checkpoint selection
                ps.append(out.p_next)
                loop_eval(scored, batch, cfg, spec, out0=out)
                ys.append(batch["y"])
        roc_auc_score(torch.cat(ys).numpy(), torch.cat(ps).numpy())
    return time.perf_counter() - start


def ignite_run(cfg, splits, epochs: int, root: Path, i: int) -> float:
    """Seconds from the trainer's STARTED to COMPLETED, all default handlers attached."""
    run = setup_run(cfg, root / f"run{i}", splits, resume=False)
    marks: dict[str, float] = {}
    run.trainer.add_event_handler(Events.STARTED, lambda _: marks.setdefault("start", time.perf_counter()))
    run.trainer.add_event_handler(Events.COMPLETED, lambda _: marks.setdefault("end", time.perf_counter()))
    run.trainer.run(run.train_loader, max_epochs=epochs)
    return marks["end"] - marks["start"]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "overrides", nargs="*", help="config overrides (data.dir=..., trainer.batch_size=...)"
    )
    args = parser.parse_args()
    cfg = load_config(None, [f"trainer.epochs={args.epochs}", *args.overrides])
    splits = load_splits(cfg.data, splits=("train", "val"))
    cfg = resolve_config(cfg, splits)  # policy.reward=auto and loss.posterior=auto made concrete
    windows = len(splits["train"]) * args.epochs
    logging.getLogger("aline").setLevel(logging.WARNING)  # the per-epoch summary would interleave
    bare_t, ignite_t, ratios = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            b = bare_loop(cfg, splits, args.epochs)
            g = ignite_run(cfg, splits, args.epochs, Path(tmp), i)
            bare_t.append(b)
            ignite_t.append(g)
            ratios.append(b / g)
            speeds = f"bare {windows / b:7.0f} windows/s   ignite {windows / g:7.0f} windows/s"
            print(f"repeat {i + 1}: {speeds}   ratio {b / g:.3f}", flush=True)
    ratio = statistics.median(ratios)
    print(
        f"\nmedian over {args.repeats} interleaved repeats "
        f"({args.epochs} epochs of {len(splits['train'])} windows, "
        f"batch {cfg.trainer.batch_size}, d_model {cfg.model.d_model}, {torch.get_num_threads()} threads):\n"
        f"  bare loop  {windows / statistics.median(bare_t):7.0f} windows/s\n"
        f"  ignite     {windows / statistics.median(ignite_t):7.0f} windows/s\n"
        f"  ratio ignite/bare {ratio:.3f}  (target >= 0.95)"
    )
    return 0 if ratio >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
