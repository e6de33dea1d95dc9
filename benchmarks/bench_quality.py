"""Quality benchmark: a default-config run against the Bayes limit, as ratios (issue 4's targets).

Trains with ``python -m aline.train`` (whole process, as a user runs it; data simulated into ``data/`` if
absent), once per reward choice, then reads the best checkpoint's validation row from ``metrics.csv`` and
the oracle figures from the simulator's meta file and prints

  AUC / Bayes AUC (target >= 0.99), Brier / Bayes Brier (<= 1.02), post_mse / posterior floor (<= 1.10),
  AUC - logistic-regression AUC (> 0), policy_value (query_value reward: >= 0.8 and > best fixed hours),
  and the wall time of the run (< 5 minutes on 2 cores with nothing else running).

    python benchmarks/bench_quality.py [--rewards uncertainty,query_value] [--keep runs] [KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def best_val_row(run: Path) -> dict[str, float]:
    status = json.loads((run / "status.json").read_text())
    epoch = str(status["best"]["epoch"])
    with (run / "metrics.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "val" and r["epoch"] == epoch]
    return {k: float(v) for k, v in rows[-1].items() if v and k != "split"}


def run_once(reward: str, overrides: list[str], runs: Path) -> tuple[Path, float]:
    cmd = [sys.executable, "-m", "aline.train", f"run.dir={runs}", f"run.name={reward}",
           f"policy.reward={reward}", "logging.progress=false", *overrides]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    run = max(p for p in runs.iterdir() if p.name.endswith(f"-{reward}"))  # the newest of that name
    return run, seconds


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rewards", default="uncertainty,query_value", help="comma-separated reward choices")
    parser.add_argument("--data-dir", default="data", help="folder with the simulator's CSVs and meta")
    parser.add_argument("--keep", metavar="DIR", help="keep the runs under DIR (default: a temp dir)")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for both runs")
    args = parser.parse_args()
    overrides = [f"data.dir={args.data_dir}", *args.overrides]
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(args.keep or tmp)
        runs.mkdir(parents=True, exist_ok=True)
        for reward in args.rewards.split(","):
            run, seconds = run_once(reward, overrides, runs)
            meta = json.loads((Path(args.data_dir) / "synthetic_migraine_meta.json").read_text())
            ref = meta["splits"]["val"]
            row = best_val_row(run)
            checks = [
                ("AUC / Bayes AUC", row["auc"] / ref["oracle"]["auc"], ">=", 0.99),
                ("Brier / Bayes Brier", row["brier"] / ref["oracle"]["brier"], "<=", 1.02),
                ("post_mse / floor", row["post_mse"] / ref["post_var_floor"], "<=", 1.10),
                ("AUC - logreg AUC", row["auc"] - ref["logreg_auc"], ">", 0.0),
                ("wall time [s]", seconds, "<", 300.0),
            ]
            if reward == "query_value":
                checks.append(("policy_value", row["policy_value"], ">=", 0.8))
                checks.append(
                    ("policy_value - best fixed", row["policy_value"] - ref["best_fixed_share"], ">", 0)
                )
            print(f"\n== policy.reward={reward}: best epoch {int(row['epoch'])}, {seconds:.0f} s ==")
            print(
                f"   val auc {row['auc']:.4f} (Bayes {ref['oracle']['auc']:.4f}, "
                f"logreg {ref['logreg_auc']:.4f})"
                f"  brier {row['brier']:.4f} (Bayes {ref['oracle']['brier']:.4f})  ece {row['ece']:.4f}"
                f"  post_mse {row['post_mse']:.4f} (floor {ref['post_var_floor']:.4f})"
                f"  policy_value {row['policy_value']:.3f} (best fixed {ref['best_fixed_share']:.3f})"
            )
            for name, value, op, target in checks:
                good = {
                    ">=": value >= target,
                    "<=": value <= target,
                    ">": value > target,
                    "<": value < target,
                }[op]
                ok &= good
                print(f"   {'ok  ' if good else 'MISS'} {name:28s} {value:8.4f}  (target {op} {target})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
