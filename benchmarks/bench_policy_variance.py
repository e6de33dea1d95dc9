"""How much the baselines cut the variance of the policy gradient (issue 3's variance check).

Holds scores and per-hour rewards fixed, redraws the k-hour samples many times, and measures the
variance of d L_policy / d scores across redraws: the sum over windows and hours of the per-element
variance, divided by the number of windows. All baselines estimate the same gradient (they are
unbiased), so their mean gradients must agree with the plain estimator's; the script prints the largest
gap, in standard errors, as a check.

    python benchmarks/bench_policy_variance.py [--repeats 300] [--windows 256] [--samples 4] [--k 3]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from aline.training.losses import policy_loss


def rewards(kind: str, windows: int, hours: int, gen: torch.Generator) -> torch.Tensor:
    """Per-hour rewards shaped like the two the trainer uses. ``[W, T]``"""
    if kind == "uncertainty":
        # entropy(p_t) + 0.1·mean sigma: a large level (~0.4–0.7 nats) shared by the day, small hourly spread
        p = torch.sigmoid(torch.randn(windows, 1, generator=gen) - 1.2 + 0.3 * torch.randn(windows, hours))
        entropy = -(p * p.log() + (1 - p) * (1 - p).log())
        return entropy + 0.1 * (0.5 + 0.2 * torch.rand(windows, hours, generator=gen))
    if kind == "query_value":
        # non-negative, most hours near zero, a few valuable ones (late waking hours, stressors)
        spikes = (torch.rand(windows, hours, generator=gen) < 0.15).float()
        return spikes * torch.rand(windows, hours, generator=gen) + 0.02 * torch.rand(windows, hours)
    raise ValueError(kind)


def gradient_draws(
    scores: torch.Tensor, reward: torch.Tensor, k: int, samples: int, baseline: str, repeats: int, seed: int
) -> torch.Tensor:
    """``repeats`` independent estimates of d L_policy / d scores. ``[R, W, T]``"""
    gen = torch.Generator().manual_seed(seed)
    s = scores.clone().requires_grad_(True)
    out = []
    for _ in range(repeats):
        (g,) = torch.autograd.grad(policy_loss(s, reward, k, samples, baseline, gen).sum(), s)  # type: ignore[arg-type]
        out.append(g)
    return torch.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--windows", type=int, default=256)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    hours = 24
    t0 = time.perf_counter()
    print(
        f"policy-gradient variance over {args.repeats} redraws; {args.windows} windows × {hours} hours, "
        f"k={args.k}, samples={args.samples}"
    )
    print(f"{'reward':<12} {'baseline':<11} {'variance':>11} {'none/this':>10}  {'mean gap vs none':<16}")
    for kind in ("uncertainty", "query_value"):
        gen = torch.Generator().manual_seed(args.seed)
        scores = 0.5 * torch.randn(args.windows, hours, generator=gen, dtype=torch.float64)  # an early policy
        reward = rewards(kind, args.windows, hours, gen).to(torch.float64)
        draws = {
            b: gradient_draws(scores, reward, args.k, args.samples, b, args.repeats, args.seed + 1)
            for b in ("none", "batch_mean", "loo")
        }
        var = {b: d.var(0).sum().item() / args.windows for b, d in draws.items()}
        plain = draws["none"]  # plain REINFORCE: unbiased by construction, the reference for the others
        for b, d in draws.items():
            ratio = var["none"] / var[b]
            if b == "none":
                print(f"{kind:<12} {b:<11} {var[b]:11.3e} {ratio:10.1f}  -")
                continue
            gap = (d.mean(0) - plain.mean(0)).abs().max().item()
            # the gap's standard error at the noisiest element; a max over W·T elements reaches ~4 of them
            se = math.sqrt((d.var(0).max().item() + plain.var(0).max().item()) / args.repeats)
            print(f"{kind:<12} {b:<11} {var[b]:11.3e} {ratio:10.1f}  {gap:.2e} ({gap / se:.1f} se)")
    print(f"({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
