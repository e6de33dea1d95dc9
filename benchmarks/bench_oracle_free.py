"""Asking with no oracle: train on the simulator's data with every reference column removed from training,
score against the exact query value and forecasts that training never saw.

Data forms written from ``--data-dir`` (the simulator's three CSVs and meta file):

* ``answers_all``: train loses every reference column (``z_*``, ``post_*``, ``query_value``, ``p_bayes``,
  ``p_true``); val and test lose ``z_*`` only (their references score the run, never train it: the
  validation loss that picks the checkpoint reads what train has). Answers at every askable hour.
  ``policy.reward=auto`` resolves to ``label_gain``.
* ``prompted``: as ``answers_all``, with answers kept at a random 30 % of each window's askable hours in
  train and val (a study that prompted at a few random awake hours); all of them in test, for scoring.
* ``labels_only``: as ``answers_all`` trained with ``data.columns.answers=null``: no loop, the forecast a
  cohort gets from the labels alone (the bar for the forecast without answers).
* ``cohort``: a cohort whose diary is skipped more on bad days: each logged ``symptom_score`` cell is
  dropped with probability ``sigmoid(-1 + 1.5 * s)``, s the standardised true forecast-relevant latent
  ``w* . Z_t`` at that hour; every reference column removed from all splits. Used as a deployment would
  use it: ``predict`` proposes k hours, their answers are filled in, ``predict --answers`` again.
* ``info_gain``: train keeps ``z_*`` but loses every other reference; ``policy.reward=info_gain``.
* ``default``: the unmodified data (the exact ``query_value`` reward).

Each run goes through the command line (``python -m aline.train``, ``python -m aline.evaluate --split
test``, ``python -m aline.predict``) and the script prints one line per run and the bars of issue 29.

    python benchmarks/bench_oracle_free.py --data-dir DIR --forms answers_all prompted labels_only \
        --seeds 0 1 2 [--work DIR] [--config FILE] [--score-data DIR] [KEY=VALUE ...]

``--score-data`` scores every run a second time on a larger test split drawn from the same simulator
(``python -m aline.simulate --subjects 400 --seed 1 --val-frac 0.05 --test-frac 0.85``): on the default
test split's 2,700 windows, a Brier difference of the size asking makes is near the noise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

PREFIX = "synthetic_migraine"
SPLITS = ("train", "val", "test")
REFERENCE_PREFIXES = ("post_mean_", "post_std_")
REFERENCE_COLUMNS = ("query_value", "p_bayes", "p_true")
ASKED, ANSWER = "symptom_score", "ask_symptom_score"
PROMPTED_SHARE = 0.3
FORMS = ("answers_all", "prompted", "labels_only", "cohort", "info_gain", "default")


def _drop(df: pd.DataFrame, latents: bool, references: bool) -> pd.DataFrame:
    drop = []
    for c in df.columns:
        if latents and c.startswith("z_"):
            drop.append(c)
        if references and (c.startswith(REFERENCE_PREFIXES) or c in REFERENCE_COLUMNS):
            drop.append(c)
    return df.drop(columns=drop)


def _askable(df: pd.DataFrame) -> np.ndarray:
    return (df["asleep"] == 0).to_numpy() & (df["busy"] == 0).to_numpy() & df[ASKED].isna().to_numpy()


def derive(data_dir: Path, out: Path, form: str, seed: int = 0) -> Path:
    """Write one data form into ``out`` (the meta file is copied: the exact model scores test)."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(data_dir / f"{PREFIX}_meta.json", out / f"{PREFIX}_meta.json")
    meta = json.loads((data_dir / f"{PREFIX}_meta.json").read_text())
    rng = np.random.default_rng(1000 + seed)
    for split in SPLITS:
        df = pd.read_csv(data_dir / f"{PREFIX}_{split}.csv")
        scoring_split = split != "train"  # val and test keep their references, to score by
        if form in ("answers_all", "labels_only"):
            df = _drop(df, latents=True, references=not scoring_split)
        elif form == "prompted":
            if split != "test":
                # Each askable hour's answer kept with probability PROMPTED_SHARE (all of them in test).
                keep = rng.random(len(df)) < PROMPTED_SHARE
                df[ANSWER] = df[ANSWER].where(keep | ~_askable(df))
            df = _drop(df, latents=True, references=not scoring_split)
        elif form == "info_gain":
            df = _drop(df, latents=False, references=not scoring_split)
        elif form == "cohort":
            w = np.asarray(meta["model"]["params"]["w"], dtype=np.float64)
            zc = [c for c in df.columns if c.startswith("z_")]
            s = df[zc].to_numpy(np.float64) @ w
            s = (s - s.mean()) / s.std()
            skip = rng.random(len(df)) < 1.0 / (1.0 + np.exp(-(-1.0 + 1.5 * s)))
            df[ASKED] = df[ASKED].where(~skip)
            # A skipped diary cell at an askable hour is askable: the patient can be prompted there.
            ask = (df["asleep"] == 0) & (df["busy"] == 0)
            df[ANSWER] = df[ANSWER].where(ask)
            df = _drop(df, latents=True, references=True)
        elif form != "default":
            raise ValueError(form)
        df.to_csv(out / f"{PREFIX}_{split}.csv", index=False)
    return out


def run(cmd: list[str], log: Path) -> float:
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}; see {log}")
    return time.perf_counter() - start


def train_and_evaluate(
    data: Path, runs: Path, name: str, overrides: list[str], configs: list[Path]
) -> tuple[Path, dict, float]:
    """Train ``runs/<stamp>-<name>`` (unless a finished, evaluated one is there) and evaluate it on test."""
    runs.mkdir(parents=True, exist_ok=True)
    done = [r for r in sorted(runs.glob(f"*-{name}")) if (r / "eval" / "test.json").is_file()]
    if done:
        run_dir = done[-1]
    else:
        cmd = [sys.executable, "-m", "aline.train", *(f"--config={c}" for c in configs)]
        cmd += [f"data.dir={data}", f"run.dir={runs}"]
        cmd += [f"run.name={name}", "logging.progress=false", *overrides]
        seconds = run(cmd, runs / f"{name}.train.log")
        run_dir = sorted(runs.glob(f"*-{name}"))[-1]
        run(
            [sys.executable, "-m", "aline.evaluate", str(run_dir), "--split", "test"],
            runs / f"{name}.eval.log",
        )
        (run_dir / "seconds.txt").write_text(f"{seconds:.1f}\n")
    seconds = float((run_dir / "seconds.txt").read_text())
    return run_dir, json.loads((run_dir / "eval" / "test.json").read_text()), seconds


def score_elsewhere(run_dir: Path, data: Path, out: Path) -> dict:
    """Evaluate a copy of ``run_dir`` on the test split of ``data`` (the same form, derived from a larger
    draw of the same simulator), so the run's own ``eval/test.json`` stays the default split's."""
    copy = out / run_dir.name
    if not (copy / "eval" / "test.json").is_file():
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("eval"))
        run(
            [sys.executable, "-m", "aline.evaluate", str(copy), "--split", "test", "--data-dir", str(data)]
            + ["--no-figures"],
            out / f"{run_dir.name}.eval.log",
        )
    return json.loads((copy / "eval" / "test.json").read_text())


def _fmt(v: object) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def summarize(form: str, seed: int, report: dict, seconds: float) -> dict:
    a = report.get("asking") or {}
    pairs = (report.get("asking_detail") or {}).get("paired") or {}
    row = {"form": form, "seed": seed, "seconds": round(seconds, 1), "auc_none": report["auc"]}
    for name in ("trained", "random", "uncertainty", "best_fixed", "fixed_schedule"):
        e = a.get(name) or {}
        row[f"qv_{name}"] = e.get("query_value_share")
        row[f"set_{name}"] = e.get("set_share")
        row[f"brier_{name}"] = e.get("brier_model")
    row["brier_none"] = (a.get("none") or {}).get("brier_model")
    tr = (pairs.get("trained_minus_random") or {}).get("brier")
    if tr:
        row["d_brier_vs_random"] = tr["mean"]
        row["ci_vs_random"] = (tr["lo"], tr["hi"])
    row["policy_value"] = report["policy"].get("trained")
    row["gain_spearman"] = (report.get("asking_detail") or {}).get("gain_spearman")
    return row


def deploy(run_dir: Path, test_csv: Path, work: Path, k: int, seed: int) -> dict:
    """predict, fill the proposed hours' answers in, predict --answers; the same for random askable hours."""
    from aline.scoring import BOOTSTRAP_DRAWS, paired_bootstrap

    full = pd.read_csv(test_csv).sort_values(["window_id", "hour"]).reset_index(drop=True)
    day = full.drop(columns=[ANSWER])
    day_csv = work / "day.csv"
    day.to_csv(day_csv, index=False)
    first = work / "first.csv"
    run(
        [sys.executable, "-m", "aline.predict", str(run_dir), str(day_csv), "--out", str(first)],
        work / "p1.log",
    )
    proposals = pd.read_csv(first, dtype={"topk_hours": str}).fillna("")
    wanted = {
        (w, int(h))
        for w, hs in zip(proposals["window_id"], proposals["topk_hours"], strict=True)
        for h in hs.split()
    }
    rng = np.random.default_rng(seed)
    askable = _askable(full) & full[ANSWER].notna().to_numpy()
    # Random askable hours with an answer: k per window, one seeded draw.
    rand = set()
    for w, grp in full[askable].groupby("window_id"):
        hours = grp["hour"].to_numpy()
        for h in rng.choice(hours, size=min(k, len(hours)), replace=False):
            rand.add((w, int(h)))
    out = {}
    y = full.groupby("window_id")["y_next"].first()
    for name, chosen in (("policy", wanted), ("random", rand)):
        filled = day.copy()
        keys = list(zip(full["window_id"], full["hour"], strict=True))
        filled[ANSWER] = np.where([kk in chosen for kk in keys], full[ANSWER], np.nan)
        path = work / f"{name}.csv"
        filled.to_csv(path, index=False)
        pred = work / f"{name}_pred.csv"
        run(
            [sys.executable, "-m", "aline.predict", str(run_dir), str(path), "--answers", "--out", str(pred)],
            work / f"{name}.log",
        )
        out[name] = pd.read_csv(pred).set_index("window_id")["p_next"]
    out["none"] = pd.read_csv(first).set_index("window_id")["p_next"]
    sq = {name: (p.loc[y.index].to_numpy() - y.to_numpy()) ** 2 for name, p in out.items()}
    res = {f"brier_{n}": float(v.mean()) for n, v in sq.items()}
    res["policy_minus_none"] = paired_bootstrap(sq["policy"] - sq["none"])
    res["policy_minus_random"] = paired_bootstrap(sq["policy"] - sq["random"])
    res["random_minus_none"] = paired_bootstrap(sq["random"] - sq["none"])
    res["draws"] = BOOTSTRAP_DRAWS
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("benchmarks/out/oracle_free"))
    parser.add_argument(
        "--forms", nargs="+", choices=FORMS, default=["answers_all", "prompted", "labels_only"]
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--config",
        type=Path,
        action="append",
        default=[],
        help="config file of every training run (repeatable)",
    )
    parser.add_argument(
        "--score-data",
        type=Path,
        help="a second simulator folder (same generative model, a larger test split): every run is also "
        "scored on its test split, in the same form",
    )
    parser.add_argument("overrides", nargs="*", help="key=value passed to every training run")
    args = parser.parse_args()
    rows = []
    for form in args.forms:
        data = derive(args.data_dir, args.work / "data" / form, form)
        extra = {"labels_only": ["data.columns.answers=null"], "info_gain": ["policy.reward=info_gain"]}
        for seed in args.seeds:
            name = f"{form}-s{seed}"
            overrides = [f"seed={seed}", *extra.get(form, []), *args.overrides]
            runs = args.work / "runs"
            run_dir, report, seconds = train_and_evaluate(data, runs, name, overrides, args.config)
            row = summarize(form, seed, report, seconds)
            if form == "cohort":
                work = args.work / "deploy" / name
                work.mkdir(parents=True, exist_ok=True)
                row["deploy"] = deploy(run_dir, data / f"{PREFIX}_test.csv", work, report["k"], seed)
            if args.score_data is not None:
                big = args.work / "data" / f"{form}-score"
                if not (big / f"{PREFIX}_test.csv").is_file():
                    derive(args.score_data, big, form)
                if form == "cohort":
                    work = args.work / "deploy" / f"{name}-score"
                    work.mkdir(parents=True, exist_ok=True)
                    row["score_deploy"] = deploy(run_dir, big / f"{PREFIX}_test.csv", work, report["k"], seed)
                elif form != "labels_only":
                    scored = score_elsewhere(run_dir, big, args.work / "score_runs")
                    row["score"] = summarize(form, seed, scored, seconds)
            rows.append(row)
            print(json.dumps(row, default=_fmt), flush=True)
    (args.work / "summary.json").write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
