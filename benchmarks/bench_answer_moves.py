"""How far a trained run's forecast moves for one answer, by how noisy that answer is.

For each test window and pool hour, the run's forecast after that hour's answer alone against its forecast
with none: the squared move of the logit, KL(p1 || p0) (the expected label gain) and the observed label
gain log p1(y) - log p0(y). They are averaged within bands of the answer's noise variance, which the
simulator's exact model knows (``aline.simulator.exact``), beside the mean exact query value of the band.
A model that weighs answers as the exact one does moves less where the answer is noisier.

    python benchmarks/bench_answer_moves.py RUN_DIR --data-dir DIR [--split test]

``DIR`` holds the run's data form (answers present) and the simulator's meta file; the exact model is
rebuilt from the same CSV, so the split must still carry the simulator's columns that it needs
(``aline.simulator.exact.load_exact_split``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

BANDS = ((0.0, 0.6), (0.6, 1.5), (1.5, 3.0), (3.0, np.inf))
PREFIX = "synthetic_migraine"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--split", default="test", choices=("val", "test"))
    args = parser.parse_args()

    import aline.predict as predict
    from aline.simulator.exact import load_exact_split

    model = predict.load(args.run_dir)
    csv = args.data_dir / f"{PREFIX}_{args.split}.csv"
    raw = model.read(csv, require_targets=True)
    exact = load_exact_split(csv, args.data_dir / f"{PREFIX}_meta.json")
    pool = model.pool(raw)
    p0 = model.predict_raw(raw, reveal_answers=False).p_next[:, None]  # [N, 1]
    p1 = model.one_answer_forecasts(raw, pool)  # [N, 24], NaN off the pool
    y = raw.y.astype(np.float64)[:, None]
    move = (np.log(p1 / (1 - p1)) - np.log(p0 / (1 - p0))) ** 2
    kl = p1 * np.log(p1 / p0) + (1 - p1) * np.log((1 - p1) / (1 - p0))
    observed = y * np.log(p1 / p0) + (1 - y) * np.log((1 - p1) / (1 - p0))
    noise = exact.scalars().noise  # [N, 24] the answer's noise variance
    qv = exact.query_value
    print(f"{args.run_dir.name} ({args.split}): one answer at a time, by its noise variance")
    print("noise band     hours   logit move^2   KL(p1||p0)   observed gain   exact query value")
    for lo, hi in BANDS:
        band = pool & (noise >= lo) & (noise < hi)
        print(
            f"[{lo:.1f}, {hi:.1f})  {int(band.sum()):7d}   {move[band].mean():12.4f}"
            f"   {kl[band].mean():10.5f}   {observed[band].mean():13.5f}   {qv[band].mean():17.4f}"
        )


if __name__ == "__main__":
    main()
