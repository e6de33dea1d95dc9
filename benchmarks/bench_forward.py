"""Time one forward pass of the default model on a batch of windows, and one training step's worth.

Three figures, medians over repeats: training-mode forward, forward + backward of a loss over all heads,
and the eval-mode forward under ``torch.inference_mode`` (the transformer's fused fast path).

    python benchmarks/bench_forward.py [--batch 512] [--repeats 20] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from aline.config import Config
from aline.model.network import build_model


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(3):  # warm-up: allocator and kernel selection
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = Config()
    n_features = len(cfg.data.columns.features)
    torch.manual_seed(0)
    model = build_model(cfg, n_features)
    x = torch.randn(args.batch, 24, n_features)
    mask = (torch.rand(args.batch, 24, n_features) < 0.2).float()

    def fwd_bwd() -> None:
        out = model(x, mask)
        (out.mu_z.square().mean() + out.sigma_z.mean() + out.scores.mean() + out.logits.mean()).backward()

    model.train()
    train_fwd = median_ms(lambda: model(x, mask), args.repeats)
    train_step = median_ms(fwd_bwd, args.repeats)
    model.eval()
    with torch.inference_mode():
        eval_fwd = median_ms(lambda: model(x, mask), args.repeats)
    m = cfg.model
    print(
        f"batch {args.batch}, d_model {m.d_model}, layers {m.layers}, heads {m.heads}, "
        f"threads {torch.get_num_threads()}, params {sum(p.numel() for p in model.parameters())}"
    )
    print(f"forward (train mode)     {train_fwd:7.1f} ms")
    print(f"forward + backward       {train_step:7.1f} ms")
    print(f"forward (inference mode) {eval_fwd:7.1f} ms")


if __name__ == "__main__":
    main()
