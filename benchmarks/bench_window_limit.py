"""What a forecast that reads one window at a time can reach, against the Bayes forecast in ``p_bayes``.

The simulator's exact posterior conditions on the window's rows and on one subject-level value: whether
the subject is a habitual caffeine user (mean daily caffeine over all the subject's days >= 50 mg), which
drives caffeine withdrawal on a day without caffeine. The files carry that mean as the input
``usual_caffeine_mg``; a model that reads one day without it cannot quite reach ``p_bayes``. This prints,
per split, the exact Bayes forecast of such an observer: the mixture over the flag of the two exact
forecasts, weighted by

    P(flag | window) ∝ P(flag | the window's caffeine total) · p(the window's measurements | flag)

(the first factor estimated on the train split in caffeine bins, the second the exact Kalman likelihood),
and, for comparison, two plain rules (flag = 0; flag = any caffeine that day). Ratios are to ``p_bayes``.

    python benchmarks/bench_window_limit.py [--data-dir data]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.metrics import brier_score_loss, roc_auc_score

from aline.simulator.exact import ExactResult, SplitInputs, read_exact_inputs

CAFFEINE_BINS = (0.5, 100.0, 200.0)  # mg a day: none, some, habitual-sized, large


def caffeine_bin(split: SplitInputs) -> np.ndarray:
    return np.digitize(split.feats["caffeine_mg"].sum(1), CAFFEINE_BINS)  # [N]


def prior_by_bin(train: SplitInputs) -> np.ndarray:
    """P(habitual | caffeine bin) on train, with one pseudo-count of each kind per bin."""
    bins = caffeine_bin(train)
    n = len(CAFFEINE_BINS) + 1
    hits = np.bincount(bins, train.habitual_row.astype(float), n)
    return (hits + 1.0) / (np.bincount(bins, minlength=n) + 2.0)


def window_only_forecast(
    split: SplitInputs, prior: np.ndarray, off: ExactResult, on: ExactResult
) -> tuple[np.ndarray, np.ndarray]:
    """[N] the mixture forecast and [N] P(habitual | window), from the exact posteriors of every window
    with the flag off and on."""
    p1 = prior[caffeine_bin(split)]
    log_odds = np.log(p1) - np.log1p(-p1) + on.loglik - off.loglik
    weight = 1.0 / (1.0 + np.exp(-log_odds))
    return weight * on.p_bayes + (1.0 - weight) * off.p_bayes, weight


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="the simulator's output folder")
    parser.add_argument("--prefix", default="synthetic_migraine", help="file name prefix")
    args = parser.parse_args(argv)
    meta = args.data_dir / f"{args.prefix}_meta.json"

    def read(split: str) -> SplitInputs:
        return read_exact_inputs(args.data_dir / f"{args.prefix}_{split}.csv", meta)

    prior = prior_by_bin(read("train"))
    print("P(habitual | daily caffeine bin) on train:", " ".join(f"{p:.3f}" for p in prior))
    print(f"{'split':6s} {'forecast':34s} {'AUC':>7s} {'x Bayes':>8s} {'Brier':>7s} {'x Bayes':>8s}")
    for name in ("val", "test"):
        split = read(name)
        y, p_bayes = split.y, split.p_bayes_csv
        n = len(y)
        caf = split.feats["caffeine_mg"].sum(1) > 0
        off = split.model(np.zeros(n, dtype=bool)).posterior()
        on = split.model(np.ones(n, dtype=bool)).posterior()
        mixture, weight = window_only_forecast(split, prior, off, on)
        rules = {
            "Bayes (p_bayes, sees the flag)": p_bayes,
            "window-only Bayes (mixture)": mixture,
            "flag = 0": off.p_bayes,
            "flag = any caffeine that day": split.model(caf).posterior().p_bayes,
        }
        auc0, brier0 = roc_auc_score(y, p_bayes), brier_score_loss(y, p_bayes)
        for label, p in rules.items():
            auc, brier = roc_auc_score(y, p), brier_score_loss(y, p)
            print(f"{name:6s} {label:34s} {auc:7.4f} {auc / auc0:8.4f} {brier:7.4f} {brier / brier0:8.4f}")
        moved = np.abs(mixture - p_bayes) > 0.01
        print(
            f"{name:6s} windows whose forecast moves by > 0.01 without the flag: {moved.mean():.3f}; "
            f"mean P(true flag | window) {np.mean(np.where(split.habitual_row, weight, 1 - weight)):.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
