"""Real-data benchmark (issue 10): train on the simulator's CSVs with the oracle columns removed, as a
cohort's own CSV would be, and score the result on the test split.

Two derived data sets are written from ``--data-dir`` (the simulator's three CSVs):

* ``no_sigma``: every ``post_std_*`` column dropped. ``loss.posterior=auto`` then trains the posterior by
  Gaussian NLL. Targets: 90 % interval coverage of the true latent in 0.87-0.93 and posterior MSE within
  1.10x the floor (the exact posterior's variance, from the original file's ``post_std_*``).
* ``labels_only``: every ``z_*``, ``post_*``, ``query_value`` and ``p_*`` column dropped. The run trains on
  the labels alone. Target: test AUC >= that of a scikit-learn HistGradientBoostingClassifier on the
  flattened 24 x F features + missing masks, its hyper-parameters tuned on the val split (same split).

With ``--with-default`` the unmodified data is trained as well. Every run trains to ``trainer.epochs``
without early stopping (``early_stop.patience=null``), so that ``metrics.csv`` holds the whole validation
trajectory; the script then replays the early-stop and best-checkpoint rules for several metrics on that
trajectory and prints, per rule, the epoch it stops at, the epoch it picks and the val figures there
(what ``early_stop.metric``/``checkpoint.metric`` would have given).

    python benchmarks/bench_real_data.py --data-dir DIR [--work DIR] [--with-default] [KEY=VALUE ...]

docs/results.md ("Without the simulator's references") says which data its figures were measured on.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ORACLE_PREFIXES = ("z_", "post_", "p_")
RULE_METRICS = ("auc", "loss", "loss_bce", "brier", "loss_post", "post_mse")
HIGHER = {"auc", "pr_auc", "policy_value"}
PATIENCE = 5


def derive(data_dir: Path, out: Path, kind: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        df = pd.read_csv(data_dir / f"synthetic_migraine_{split}.csv", dtype=str, keep_default_na=False)
        if kind == "no_sigma":
            drop = [c for c in df.columns if c.startswith("post_std_")]
        elif kind == "labels_only":
            drop = [c for c in df.columns if c.startswith(ORACLE_PREFIXES) or c == "query_value"]
        else:
            drop = []
        # Text in, text out: the kept cells are byte-identical to the simulator's.
        df.drop(columns=drop).to_csv(out / f"synthetic_migraine_{split}.csv", index=False)
    return out


def train(data: Path, runs: Path, name: str, overrides: list[str]) -> tuple[Path, float]:
    cmd = [sys.executable, "-m", "aline.train", f"data.dir={data}", f"run.dir={runs}", f"run.name={name}",
           "logging.progress=false", "early_stop.patience=null", *overrides]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    return max(p for p in runs.iterdir() if p.name.endswith(f"-{name}")), seconds


def val_rows(run: Path) -> list[dict[str, float]]:
    with (run / "metrics.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "val"]
    return [
        {k: float(v) if v else math.nan for k, v in r.items() if k not in ("split", "time")} for r in rows
    ]


def replay(rows: list[dict[str, float]], metric: str) -> tuple[int, int]:
    """(epoch early stopping with patience 5 stops at, epoch the best checkpoint holds then)."""
    sign = 1.0 if metric in HIGHER else -1.0
    best, best_epoch, bad = -math.inf, int(rows[0]["epoch"]), 0
    for r in rows:
        value = sign * r[metric]
        if value > best:
            best, best_epoch, bad = value, int(r["epoch"]), 0
        else:
            bad += 1
            if bad >= PATIENCE:
                return int(r["epoch"]), best_epoch
    return int(rows[-1]["epoch"]), best_epoch


def trajectory_report(name: str, rows: list[dict[str, float]]) -> None:
    by_epoch = {int(r["epoch"]): r for r in rows}
    shown = ("auc", "brier", "post_mse", "sigma_mae", "policy_value", "loss_post", "loss_bce")
    print(f"   selection rules on the {len(rows)}-epoch val trajectory of {name} (patience {PATIENCE}):")
    print(f"   {'rule':10s} {'stop':>5s} {'pick':>5s} " + " ".join(f"{s:>12s}" for s in shown))
    last = int(rows[-1]["epoch"])
    lines = [(m, *replay(rows, m)) for m in RULE_METRICS if not math.isnan(rows[-1].get(m, math.nan))]
    lines.append(("last", last, last))
    for metric, stop, pick in lines:
        r = by_epoch[pick]
        print(
            f"   {metric:10s} {stop:5d} {pick:5d} " + " ".join(f"{r.get(s, math.nan):12.4f}" for s in shown)
        )


def evaluate_test(run: Path) -> dict:
    from aline.evaluate import evaluate

    return evaluate(run, split="test", figures=False).report


def floor_and_coverage(data_dir: Path) -> float:
    test = pd.read_csv(data_dir / "synthetic_migraine_test.csv")
    std = test[[c for c in test.columns if c.startswith("post_std_")]].to_numpy(dtype=np.float64)
    return float(np.mean(std**2))


def hgb_auc(data: Path) -> tuple[float, dict]:
    """Tuned HistGradientBoostingClassifier on flattened features + masks: fit on train, pick on val AUC,
    score test."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    from aline.config import ColumnsConfig
    from aline.data import read_split

    cols = ColumnsConfig()
    raw = {s: read_split(data / f"synthetic_migraine_{s}.csv", cols) for s in ("train", "val", "test")}

    def design(split: str) -> np.ndarray:
        flat = raw[split].features.reshape(len(raw[split]), -1).astype(np.float64)  # [N, 24*F]
        return np.concatenate([flat, np.isnan(flat).astype(np.float64)], axis=1)  # NaN handled natively

    xs = {s: design(s) for s in raw}
    ys = {s: raw[s].y.astype(int) for s in raw}
    best = (-1.0, None, None)
    grid = [
        {"learning_rate": lr, "max_leaf_nodes": leaves, "l2_regularization": l2, "min_samples_leaf": msl}
        for lr in (0.03, 0.1)
        for leaves in (7, 31)
        for l2 in (0.0, 1.0)
        for msl in (20, 80)
    ]
    for params in grid:
        model = HistGradientBoostingClassifier(
            max_iter=600, early_stopping=True, validation_fraction=0.15, n_iter_no_change=30,
            random_state=0, **params,
        )  # fmt: skip
        model.fit(xs["train"], ys["train"])
        val_auc = roc_auc_score(ys["val"], model.predict_proba(xs["val"])[:, 1])
        if val_auc > best[0]:
            best = (val_auc, params, model)
    test_auc = float(roc_auc_score(ys["test"], best[2].predict_proba(xs["test"])[:, 1]))
    return test_auc, {**best[1], "val_auc": round(best[0], 4), "n_iter": int(best[2].n_iter_)}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default="data", help="folder with the simulator's three CSVs")
    parser.add_argument("--work", default="runs/bench_real_data", help="derived data and runs go here")
    parser.add_argument("--only", default="no_sigma,labels_only", help="which derived sets to run")
    parser.add_argument("--with-default", action="store_true", help="also train on the unmodified data")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every run")
    args = parser.parse_args()
    data_dir, work = Path(args.data_dir), Path(args.work)
    runs = work / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    kinds = args.only.split(",") + (["default"] if args.with_default else [])
    ok = True
    floor = floor_and_coverage(data_dir)
    for kind in kinds:
        data = data_dir if kind == "default" else derive(data_dir, work / kind, kind)
        run, seconds = train(data, runs, kind, args.overrides)
        cfg = json.dumps({k: v for k, v in _run_loss(run).items() if k in ("posterior", "bce_into_encoder")})
        print(f"\n== {kind}: {run} ({seconds:.0f} s; resolved loss {cfg}) ==")
        report = evaluate_test(run)
        best = json.loads((run / "status.json").read_text())["best"]
        print(f"   best checkpoint: {best['metric']} {best['value']:.4f} at epoch {best['epoch']}")
        trajectory_report(kind, val_rows(run))
        checks = []
        if kind in ("no_sigma", "default"):
            cov, ratio = report["coverage_90"], report["post_mse"] / floor
            print(f"   test coverage_90 {cov:.4f}  post_mse {report['post_mse']:.4f} (floor {floor:.4f})")
            checks += [("coverage_90 >= 0.87", cov >= 0.87, cov), ("coverage_90 <= 0.93", cov <= 0.93, cov),
                       ("post_mse / floor <= 1.10", ratio <= 1.10, ratio)]  # fmt: skip
        if kind == "labels_only":
            auc_hgb, params = hgb_auc(data)
            print(f"   test auc {report['auc']:.4f}  tuned HGB {auc_hgb:.4f} ({params})  "
                  f"logreg {report['logreg']['auc']:.4f}  brier {report['brier']:.4f}")  # fmt: skip
            checks.append(("auc - HGB auc >= 0", report["auc"] >= auc_hgb, report["auc"] - auc_hgb))
        print(f"   test auc {report['auc']:.4f}  brier {report['brier']:.4f}  ece {report['ece']:.4f}")
        for name, good, value in checks:
            ok &= good
            print(f"   {'ok  ' if good else 'MISS'} {name:28s} {value:8.4f}")
    return 0 if ok else 1


def _run_loss(run: Path) -> dict:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())["loss"]


if __name__ == "__main__":
    sys.exit(main())
