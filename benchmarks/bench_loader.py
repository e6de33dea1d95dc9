"""Time the loader end to end (parse, validation, normalisation, tensors) against a bare pandas.read_csv.

    python benchmarks/bench_loader.py                  # 300 subjects x 60 days = 432k rows
    python benchmarks/bench_loader.py --csv FILE.csv   # any file with the simulator's columns

Without ``--csv`` it uses the simulator's output in ``data/`` (the three splits joined into one file) when
that is there, else writes a file of the same shape and columns with NumPy. The two contenders run
interleaved so that load on this shared machine hits both alike; medians are reported. Target: <= 1.5x.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from aline.config import DEFAULT_FEATURES, DEFAULT_LATENTS, ColumnsConfig, DataConfig
from aline.contract import HOURS
from aline.data import DataError, read_split
from aline.data.dataset import Normalizer, WindowDataset


def synthetic_csv(path: Path, subjects: int, days: int, seed: int = 0) -> Path:
    """A file with the simulator's columns, value ranges, gaps and 4-decimal rounding (not its dynamics)."""
    rng = np.random.default_rng(seed)
    n = subjects * days
    rows = n * HOURS
    cols: dict[str, pa.Array] = {
        "window_id": pa.array(np.repeat(np.arange(n), HOURS)),
        "subject_id": pa.array(np.repeat(np.arange(n) // days, HOURS)),
        "day": pa.array(np.repeat(np.arange(n) % days, HOURS)),
        "hour": pa.array(np.tile(np.arange(HOURS), n)),
    }
    for name in DEFAULT_FEATURES:
        if name in ("asleep", "skipped_meal", "menstrual_window"):
            cols[name] = pa.array((rng.random(rows) < 0.3).astype(np.int64))
            continue
        values = np.round(rng.normal(50.0, 15.0, rows), 4)
        gaps = rng.random(rows) < (0.85 if name == "stress_rating" else 0.1)
        cols[name] = pa.array(values, mask=gaps)
    for latent in DEFAULT_LATENTS:
        cols[f"z_{latent}"] = pa.array(np.round(rng.normal(size=rows), 4))
        cols[f"post_mean_{latent}"] = pa.array(np.round(rng.normal(size=rows), 4))
        cols[f"post_std_{latent}"] = pa.array(np.round(rng.uniform(0.2, 1.0, rows), 4))
    cols["query_value"] = pa.array(np.round(rng.uniform(0.0, 0.05, rows), 4))
    cols["y_next"] = pa.array(np.repeat((rng.random(n) < 0.23).astype(np.int64), HOURS))
    cols["p_true"] = pa.array(np.repeat(np.round(rng.uniform(size=n), 4), HOURS))
    cols["p_bayes"] = pa.array(np.repeat(np.round(rng.uniform(size=n), 4), HOURS))
    pacsv.write_csv(pa.table(cols), path)
    return path


def joined_simulator_output(data_dir: Path, out: Path) -> Path | None:
    """The three simulated splits as one file (one header), or None when data/ lacks them."""
    paths = [DataConfig(dir=str(data_dir)).split_path(s) for s in ("train", "val", "test")]
    if not all(p.is_file() for p in paths):
        return None
    with out.open("wb") as dst:
        for i, p in enumerate(paths):
            with p.open("rb") as src:
                header = src.readline()
                if i == 0:
                    dst.write(header)
                dst.write(src.read())
    return out


def load_end_to_end(path: Path, columns: ColumnsConfig) -> WindowDataset:
    raw = read_split(path, columns)
    return WindowDataset(raw, Normalizer.fit(raw))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--csv", type=Path, help="CSV to load (default: data/ simulator output, else generated)")
    ap.add_argument("--data-dir", type=Path, default=Path("data"), help="where to look for simulator output")
    ap.add_argument("--subjects", type=int, default=300, help="generated file: subjects (default 300)")
    ap.add_argument("--days", type=int, default=60, help="generated file: days per subject (default 60)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats of each contender (default 5)")
    args = ap.parse_args(argv)
    columns = ColumnsConfig()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.csv
        source = "given"
        if path is None:
            path = joined_simulator_output(args.data_dir, Path(tmp) / "joined.csv")
            source = f"simulator output in {args.data_dir}/ (3 splits joined)"
            if path is not None:
                try:
                    read_split(path, columns)
                except DataError as err:  # window ids may repeat across splits; then time train alone
                    print(f"joined splits do not load as one file ({err}); using the train split")
                    path = DataConfig(dir=str(args.data_dir)).split_path("train")
                    source = f"simulator train split in {args.data_dir}/"
        if path is None:
            t0 = time.perf_counter()
            path = synthetic_csv(Path(tmp) / "bench.csv", args.subjects, args.days)
            took = time.perf_counter() - t0
            source = f"NumPy-generated ({args.subjects} subjects x {args.days} days in {took:.1f} s)"
        size_mb = path.stat().st_size / 2**20
        print(f"file: {path} [{source}], {size_mb:.1f} MiB")

        # One untimed pass of each warms the page cache and imports.
        n_rows = len(pd.read_csv(path))
        ds = load_end_to_end(path, columns)
        print(f"rows: {n_rows}, windows: {len(ds)}, features: {ds[0]['x'].shape[-1]}")

        # Wall time is the figure that counts; process CPU time (all threads) is shown beside it because on
        # a busy shared machine it varies far less than wall time does.
        names = ("pandas.read_csv", "aline loader")
        wall: dict[str, list[float]] = {k: [] for k in names}
        cpu: dict[str, list[float]] = {k: [] for k in names}
        for r in range(args.repeats):
            contenders = [
                ("pandas.read_csv", lambda: pd.read_csv(path)),
                ("aline loader", lambda: load_end_to_end(path, columns)),
            ]
            for name, fn in contenders if r % 2 == 0 else contenders[::-1]:
                gc.collect()
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)

    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    for name in names:
        runs = " ".join(f"{v:.2f}" for v in wall[name])
        print(
            f"{name:>16}: median {med[name]:.3f} s wall ({n_rows / med[name] / 1e3:.0f}k rows/s), "
            f"{med_cpu[name]:.3f} s CPU; wall runs: {runs}"
        )
    ratio = med["aline loader"] / med["pandas.read_csv"]
    ratio_cpu = med_cpu["aline loader"] / med_cpu["pandas.read_csv"]
    print(f"ratio loader / pandas.read_csv: {ratio:.2f}x wall, {ratio_cpu:.2f}x CPU (target <= 1.5x wall)")
    return 0 if ratio <= 1.5 else 1


if __name__ == "__main__":
    sys.exit(main())
