"""Data at scale: simulate, load, memory and training throughput at 1x and 10x the default data.

For each scale (1x = 300 subjects x 60 days, 432k rows; 10x = 3,000 x 60, 4.3 M rows) and each format
(CSV, Parquet) it measures

- simulate rows/s: ``aline.simulate.simulate`` writing the three splits;
- load time: ``aline.data.load_splits`` of train and val (parse, validation, arrays) in a fresh process,
  against a bare pyarrow read of the same two files (``pyarrow.csv.read_csv`` / ``pyarrow.parquet
  .read_table``, all columns, default options) also in a fresh process;
- for 1 and 2 training processes (``dist.nproc_per_node=2`` over gloo, started as ``aline.train`` starts
  them: a fork launch trains rank 0 in the loading process and forks the others, which read its arrays in
  place; spawned ranks (``--start-method spawn``) map one shared copy through ``aline.data.shared``, and
  the loading process only waits): peak RSS of every process (the loading one and each rank),
  PSS (proportional set size: shared pages divided among the processes that map them, so PSS adds up
  across processes) after each rank has made one full pass over its shard of train and val as an epoch
  does, and training windows/s over a fixed number of optimisation steps of the default model;
- the arrays' size: bytes of every train and val array the loader returns.

Every measurement runs in its own process (peak RSS is per process). Figures are printed as a table with
the issue's goals as ratios:

  load <= 1.5x the bare pyarrow read (10x); peak RSS per process <= 1.5x the arrays' size; two processes
  together <= 1.3x the memory (PSS) of one; windows/s at 10x within 10 % of 1x.

    OMP_NUM_THREADS=1 python benchmarks/bench_scale.py                      # 1x and 10x: several minutes
    OMP_NUM_THREADS=1 python benchmarks/bench_scale.py --scales 0.1 --steps 10   # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BASE_SUBJECTS, DAYS = 300, 60
FORMATS = ("csv", "parquet")


# --- process memory ---------------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def smaps(pid: int | str = "self") -> dict[str, float]:
    """Current Rss / Pss / private memory of a process in MB (Linux /proc/PID/smaps_rollup)."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            out[key] = int(value.split()[0]) / 1024
    return {
        "rss": out["Rss"],
        "pss": out["Pss"],
        "private": out.get("Private_Clean", 0) + out.get("Private_Dirty", 0),
    }


# --- workers (each in a fresh process) ---------------------------------------------------------------------


def worker_bare(paths: list[str]) -> dict[str, Any]:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    t0, c0 = time.perf_counter(), time.process_time()
    rows = 0
    for p in paths:
        table = pq.read_table(p) if p.endswith(".parquet") else pacsv.read_csv(p)
        rows += table.num_rows
        del table
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"seconds": seconds, "cpu_seconds": cpu, "rows": rows, "peak_rss_mb": peak_rss_mb()}


def _array_bytes(splits: dict[str, Any]) -> int:
    import numpy as np

    return sum(v.nbytes for raw in splits.values() for v in vars(raw).values() if isinstance(v, np.ndarray))


def _steps(cfg, splits, steps: int, warmup: int) -> dict[str, Any]:
    """Train ``steps`` timed optimisation steps (after ``warmup``) as aline.train sets them up, then make
    one full pass over this rank's shard of train and val (what an epoch and its validation read)."""
    import ignite.distributed as idist
    import torch
    from ignite.engine import Events

    from aline.data import return_freed_memory
    from aline.data.dataset import Normalizer
    from aline.model.network import build_model, unwrap
    from aline.train import build_optimizer, resolve_config, window_dataset
    from aline.training.engine import make_loader, setup_trainer

    # The data-dependent choices (policy.reward=auto, loss.posterior=auto) and the question pool, as
    # aline.train.setup_run makes them: the closed loop needs both.
    cfg = resolve_config(cfg, splits)
    torch.manual_seed(cfg.seed)
    normalizer = Normalizer.fit(splits["train"])
    train_set = window_dataset(cfg, splits["train"], normalizer)
    val_set = window_dataset(cfg, splits["val"], normalizer)
    return_freed_memory()  # as setup_run does
    loader = make_loader(train_set, cfg.trainer.batch_size, train=True, seed=cfg.seed)
    model = build_model(cfg, n_features=len(normalizer.feature_names))
    model.init_prediction_bias(float(splits["train"].y.mean()))
    model = idist.auto_model(model)
    optimizer = idist.auto_optim(build_optimizer(cfg, unwrap(model)))
    trainer = setup_trainer(cfg, model, optimizer, torch.device("cpu"))
    marks: dict[str, float] = {}

    @trainer.on(Events.ITERATION_COMPLETED)
    def _mark(engine) -> None:
        if engine.state.iteration == warmup:
            idist.barrier()
            marks["start"] = time.perf_counter()
        elif engine.state.iteration == warmup + steps:
            idist.barrier()
            marks["end"] = time.perf_counter()

    trainer.run(loader, max_epochs=1, epoch_length=warmup + steps)
    world = idist.get_world_size()
    seconds = marks["end"] - marks["start"]
    for data, batch in ((train_set, cfg.trainer.batch_size), (val_set, cfg.trainer.eval_batch_size)):
        shard = list(make_loader(data, batch, train=False, seed=cfg.seed).sampler)
        for i in range(0, len(shard), 4096):
            data.__getitems__(shard[i : i + 4096])
    idist.barrier()  # every rank has read its shard: memory is measured with all of them alive
    mem = smaps()
    # The launching process, when it is not itself rank 0 (a spawn launch; a fork launch trains rank 0 in it).
    launcher = os.environ.get("BENCH_LAUNCHER_PID")
    separate = world > 1 and idist.get_rank() == 0 and launcher and int(launcher) != os.getpid()
    parent = smaps(launcher) if separate else None
    idist.barrier()
    return {
        "windows_per_s": steps * cfg.trainer.batch_size * world / seconds,
        "step_seconds": seconds / steps,
        "peak_rss_mb": peak_rss_mb(),
        "mem": mem,
        "parent_mem": parent,
    }


def _rank(local_rank: int, cfg, handles, steps: int, warmup: int, out_dir: str) -> None:
    import ignite.distributed as idist

    from aline.data.shared import open_splits

    result = _steps(cfg, open_splits(handles), steps, warmup)
    Path(out_dir, f"rank{idist.get_rank()}.json").write_text(json.dumps(result))


def worker_train(data_dir: str, nproc: int, steps: int, warmup: int, start_method: str) -> dict[str, Any]:
    from aline.config import load_config
    from aline.data import load_splits
    from aline.training.launch import Launch, rank_data, run_ranks

    dist = [f"dist.nproc_per_node={nproc}", "dist.backend=gloo", f"dist.start_method={start_method}"]
    cfg = load_config(None, [f"data.dir={data_dir}", *dist])
    launch = Launch.plan(cfg)  # the trainer's launch: fork or spawn, each rank's threads
    # Every training process imports scikit-learn's metrics (validation; a fork launch before it forks):
    # here first, so that the baseline holds every import and the 1- and 2-process runs compare alike.
    import sklearn.metrics  # noqa: F401

    base = smaps()["rss"]  # interpreter, torch, ignite, scikit-learn, aline: before any data
    t0, c0 = time.perf_counter(), time.process_time()
    with launch.no_thread_pool():
        splits = load_splits(cfg.data, splits=("train", "val"))
    out: dict[str, Any] = {
        "load_seconds": time.perf_counter() - t0,
        "load_cpu_seconds": time.process_time() - c0,
        "load_peak_rss_mb": peak_rss_mb(),  # the process's peak up to the end of loading
        "baseline_rss_mb": base,
        "array_mb": _array_bytes(splits) / 2**20,
    }
    if nproc == 1:
        out["ranks"] = [_steps(cfg, splits, steps, warmup)]
        out["parent"] = None
        return out
    # As aline.train hands the data over: forked ranks read these arrays in place; spawned ones map one
    # shared copy, and rank_data empties ``splits`` so that this process keeps none.
    os.environ["BENCH_LAUNCHER_PID"] = str(os.getpid())
    with tempfile.TemporaryDirectory() as tmp, launch.no_thread_pool(), rank_data(launch, splits) as handed:
        run_ranks(launch, _rank, cfg, handed, steps, warmup, tmp)
        out["ranks"] = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(nproc)]
    parent = out["ranks"][0].pop("parent_mem")
    out["parent"] = None if parent is None else {"peak_rss_mb": peak_rss_mb(), "mem": parent}
    return out


def worker_simulate(out_dir: str, subjects: int, fmt: str) -> dict[str, Any]:
    from aline.simulate import simulate

    t0 = time.perf_counter()
    simulate(subjects=subjects, days=DAYS, seed=0, out_dir=out_dir, progress=False, fmt=fmt)
    return {"seconds": time.perf_counter() - t0, "rows": subjects * DAYS * 24, "peak_rss_mb": peak_rss_mb()}


def spawn(*args: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", *args]
    root = str(Path(__file__).resolve().parents[1])  # the repository: workers import its aline
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"worker {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the table ---------------------------------------------------------------------------------------------


def measure(
    scale: float, fmt: str, root: Path, steps: int, warmup: int, nprocs: list[int], start_method: str
) -> dict[str, Any]:
    subjects = max(3, round(BASE_SUBJECTS * scale))
    data = root / f"{scale:g}x-{fmt}"
    sim = spawn("simulate", str(data), str(subjects), fmt)
    files = [str(data / f"synthetic_migraine_{s}.{fmt}") for s in ("train", "val")]
    bare = [spawn("bare", *files)]
    runs = {n: spawn("train", str(data), str(n), str(steps), str(warmup), start_method) for n in nprocs}
    bare.append(spawn("bare", *files))  # before and after: the machine's load changes meanwhile
    return {
        "scale": scale,
        "format": fmt,
        "rows": sim["rows"],
        "file_mb": sum(Path(f).stat().st_size for f in files) / 2**20,
        "simulate_rows_per_s": sim["rows"] / sim["seconds"],
        "bare_seconds": statistics.median(b["seconds"] for b in bare),
        "bare_cpu_seconds": statistics.median(b["cpu_seconds"] for b in bare),
        "bare_runs": [b["seconds"] for b in bare],
        "runs": runs,
    }


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        for n, run in r["runs"].items():
            procs = [*run["ranks"], *([run["parent"]] if run["parent"] else [])]
            peak = max(p["peak_rss_mb"] for p in procs)
            rank_peak = max(p["peak_rss_mb"] for p in run["ranks"])
            pss = sum(p["mem"]["pss"] for p in procs)
            rows.append(
                {
                    "scale": r["scale"],
                    "format": r["format"],
                    "nproc": n,
                    "rows": r["rows"],
                    "file_mb": r["file_mb"],
                    "sim_rows_s": r["simulate_rows_per_s"],
                    "load_s": run["load_seconds"],
                    "bare_s": r["bare_seconds"],
                    "load_ratio": run["load_seconds"] / r["bare_seconds"],
                    "load_cpu_ratio": run["load_cpu_seconds"] / r["bare_cpu_seconds"],
                    "load_peak_mb": run["load_peak_rss_mb"],
                    "array_mb": run["array_mb"],
                    "baseline_mb": run["baseline_rss_mb"],
                    "peak_rss_mb": peak,
                    "rank_peak_rss_mb": rank_peak,
                    "parent_peak_rss_mb": run["parent"]["peak_rss_mb"] if run["parent"] else None,
                    "peak_ratio": peak / run["array_mb"],
                    "peak_over_base_ratio": (peak - run["baseline_rss_mb"]) / run["array_mb"],
                    "pss_total_mb": pss,
                    # Memory only this rank holds: a private copy of the data would show up here.
                    "rank_private_mb": max(p["mem"]["private"] for p in run["ranks"]),
                    "windows_s": run["ranks"][0]["windows_per_s"],
                }
            )
    for row in rows:
        one = [o for o in rows if (o["scale"], o["format"], o["nproc"]) == (row["scale"], row["format"], 1)]
        row["pss_vs_1proc"] = row["pss_total_mb"] / one[0]["pss_total_mb"] if one else float("nan")
        small = [o for o in rows if (o["format"], o["nproc"]) == (row["format"], row["nproc"])]
        ref = min(small, key=lambda o: o["scale"])
        row["windows_vs_smallest"] = row["windows_s"] / ref["windows_s"]
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'scale':>5} {'fmt':>7} {'np':>2} {'rows':>9} {'file MB':>8} {'sim rows/s':>10} {'load s':>7} "
        f"{'bare s':>7} {'load/bare':>9} {'arrays MB':>9} {'base MB':>7} {'load pk':>8} {'peak MB':>8} "
        f"{'peak/arr':>8} "
        f"{'(pk-base)/arr':>13} {'rank priv MB':>12} {'PSS all MB':>10} {'PSS/1proc':>9} {'win/s':>7} "
        f"{'win/s vs 1x':>11}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['scale']:>4g}x {r['format']:>7} {r['nproc']:>2} {r['rows']:>9,} {r['file_mb']:>8.1f} "
            f"{r['sim_rows_s']:>10,.0f} {r['load_s']:>7.2f} {r['bare_s']:>7.2f} {r['load_ratio']:>9.2f} "
            f"{r['array_mb']:>9.1f} {r['baseline_mb']:>7.0f} {r['load_peak_mb']:>8.0f} "
            f"{r['peak_rss_mb']:>8.0f} {r['peak_ratio']:>8.2f} "
            f"{r['peak_over_base_ratio']:>13.2f} {r['rank_private_mb']:>12.0f} {r['pss_total_mb']:>10.0f} "
            f"{r['pss_vs_1proc']:>9.2f} "
            f"{r['windows_s']:>7.0f} {r['windows_vs_smallest']:>11.2f}"
        )
    print(
        "base: RSS after imports (scikit-learn's metrics included), before any data. load pk: peak RSS of "
        "the loading process up to the end of "
        "loading. peak: highest peak RSS of any process of the run. rank priv: largest private (unshared) "
        "memory of a training process after a full pass over its shard. PSS all: proportional set size "
        "summed over every process of the run (the launching parent included). win/s: training windows/s, "
        "all processes together."
    )
    big = max(r["scale"] for r in rows)
    print(f"\nGoals, checked at the largest scale ({big:g}x):")
    for r in [r for r in rows if r["scale"] == big]:
        tag = f"{r['format']:>7}, {r['nproc']} proc"
        checks = [
            ("load <= 1.5x bare pyarrow read", r["load_ratio"], r["load_ratio"] <= 1.5),
            ("  same in CPU seconds (steadier when shared)", r["load_cpu_ratio"], r["load_cpu_ratio"] <= 1.5),
            ("peak RSS per process <= 1.5x arrays", r["peak_ratio"], r["peak_ratio"] <= 1.5),
            (
                "  same, less the pre-data baseline",
                r["peak_over_base_ratio"],
                r["peak_over_base_ratio"] <= 1.5,
            ),
            ("windows/s within 10 % of 1x", r["windows_vs_smallest"], r["windows_vs_smallest"] >= 0.9),
        ]
        if r["nproc"] > 1:
            checks.append(
                ("processes together <= 1.3x one (PSS)", r["pss_vs_1proc"], r["pss_vs_1proc"] <= 1.3)
            )
        for name, value, ok in checks:
            print(f"  {'ok  ' if ok else 'MISS'} {tag}: {name:38s} {value:6.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", default="1,10", help="data sizes as multiples of 300 subjects x 60 days")
    ap.add_argument("--formats", default="csv,parquet")
    ap.add_argument("--nproc", default="1,2", help="training process counts")
    # 120 steps at the default batch 64 (about 15 s): 30 steps (4-5 s) gave 0.73-1.15x between two runs.
    ap.add_argument(
        "--start-method",
        choices=("fork", "spawn"),
        default="fork",
        help="how the 2-process runs start their ranks (dist.start_method; python -m aline.train forks)",
    )
    ap.add_argument("--steps", type=int, default=120, help="timed training steps per run (default 120)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps before them (default 5)")
    ap.add_argument("--keep", type=Path, help="simulate into this folder and keep it (default: a temp dir)")
    ap.add_argument("--json", type=Path, help="also write the raw figures to this file")
    ap.add_argument(
        "--table", type=Path, nargs="+", help="only print the table of --json file(s) written earlier"
    )
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.table:
        saved = [r for path in args.table for r in json.loads(path.read_text())]
        for r in saved:
            r["runs"] = {int(n): run for n, run in r["runs"].items()}
        print_table(summarise(saved))
        return 0
    if args.worker:
        kind, rest = args.worker[0], args.worker[1:]
        if kind == "bare":
            result = worker_bare(rest)
        elif kind == "simulate":
            result = worker_simulate(rest[0], int(rest[1]), rest[2])
        else:
            result = worker_train(rest[0], int(rest[1]), int(rest[2]), int(rest[3]), rest[4])
        print(json.dumps(result))
        return 0

    omp = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"OMP_NUM_THREADS={omp}, {os.cpu_count()} CPUs, ranks started by {args.start_method}", flush=True)
    nprocs = [int(n) for n in args.nproc.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        for scale in [float(s) for s in args.scales.split(",")]:
            for fmt in args.formats.split(","):
                t0 = time.perf_counter()
                results.append(measure(scale, fmt, root, args.steps, args.warmup, nprocs, args.start_method))
                print(f"[{scale:g}x {fmt} measured in {time.perf_counter() - t0:.0f} s]", flush=True)
                if args.json:  # as it goes: a long run stopped half way keeps what it measured
                    args.json.write_text(json.dumps(results, indent=1))
    print()
    print_table(summarise(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
