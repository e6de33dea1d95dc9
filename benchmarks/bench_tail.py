"""Cost of one monitor refresh after 10 appended rows vs a full re-read of a 200k-row metrics.csv.

    python benchmarks/bench_tail.py [--rows 200000] [--repeats 15]

The refresh is ``RunData.refresh()`` on a run whose tables were already read (status.json + the appended
bytes of the three CSVs); the full re-read is the same call on a fresh ``RunData`` (every byte parsed), and,
for reference, ``pandas.read_csv`` of the file. Exits 1 if the refresh costs 1/20 of the re-read or more.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from aline import contract as C
from aline.monitor.runview import RunData


def metrics_lines(rng: np.random.Generator, start: int, n: int) -> str:
    """n metrics.csv lines in contract order: a val row every 100th iteration, empty cells elsewhere."""
    it = np.arange(start, start + n)
    vals = rng.uniform(0, 2, size=(n, len(C.METRIC_COLUMNS)))  # [n, metrics]
    is_val = it % 100 == 0
    train_only = [C.METRIC_COLUMNS.index(c) for c in C.TRAIN_ONLY_COLUMNS]
    val_only = [C.METRIC_COLUMNS.index(c) for c in C.VAL_ONLY_COLUMNS]
    lines = []
    for i in range(n):
        cells = [repr(float(v)) for v in vals[i]]
        for j in train_only if is_val[i] else val_only:
            cells[j] = ""
        split = C.SPLIT_VAL if is_val[i] else C.SPLIT_TRAIN
        lines.append(
            f"{float(1.7e9 + it[i])!r},{1 + it[i] // 1000},{it[i]},{split}," + ",".join(cells) + "\n"
        )
    return "".join(lines)


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run_dir = root / "run"
        run_dir.mkdir()
        (run_dir / C.STATUS_FILE).write_text(json.dumps({"state": "running", "epoch": 1}))
        path = run_dir / C.METRICS_FILE
        path.write_text(",".join(C.METRICS_HEADER) + "\n" + metrics_lines(rng, 1, args.rows))
        print(f"metrics.csv: {args.rows} rows, {path.stat().st_size / 1e6:.1f} MB")

        def full() -> None:
            run = RunData(root, "run")
            run.refresh()
            assert len(run.metrics) >= args.rows

        full_s = median_seconds(full, max(3, args.repeats // 3))

        import pandas as pd

        pandas_s = median_seconds(lambda: pd.read_csv(path), max(3, args.repeats // 3))

        live = RunData(root, "run")
        live.refresh()
        next_it = args.rows + 1
        times = []
        for _ in range(args.repeats):
            block = metrics_lines(rng, next_it, 10)
            next_it += 10
            with open(path, "a") as fh:
                fh.write(block)
            t = time.perf_counter()
            got = live.refresh()
            times.append(time.perf_counter() - t)
            assert got == 10, got
        assert len(live.metrics) == next_it - 1
        refresh_s = statistics.median(times)

    ratio = refresh_s / full_s
    print(f"full re-read (fresh RunData.refresh): median {full_s * 1e3:9.2f} ms")
    print(f"full re-read (pandas.read_csv):       median {pandas_s * 1e3:9.2f} ms")
    print(f"refresh after appending 10 rows:      median {refresh_s * 1e3:9.3f} ms")
    print(f"ratio refresh / full re-read = 1/{1 / ratio:.0f} ({ratio:.5f})")
    print(f"ratio refresh / pandas.read_csv = 1/{pandas_s / refresh_s:.0f}")
    ok = ratio < 1 / 20
    print("PASS" if ok else "FAIL", "(target: below 1/20)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
