"""Writes run folders exactly as the run-folder contract says (docs/run-folder.md), for the monitor's tests.

The numbers are random but written with full precision (``repr``), so a test can compare what a chart
holds with what the file holds, exactly. Nothing here imports the monitor's own reading code.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aline import contract as C

ORACLE = {
    "auc": 0.801, "brier": 0.1502, "ece": 0.011, "pr_auc": 0.52, "post_mse_floor": 0.31, "logreg_auc": 0.74,
    "best_fixed_share": 0.61, "random_share": 0.33, "auc_asked": 0.83, "brier_asked": 0.141,
}  # fmt: skip
# The validation columns that the loop helper adds to the contract; written whether or not contract.py
# already lists them, so the monitor is tested on the header it will meet.
NEW_VAL_COLUMNS = ("ask_outside_pool", "brier_asked", "auc_asked", "gain_spearman")
HEADER = C.METRICS_HEADER + tuple(c for c in NEW_VAL_COLUMNS if c not in C.METRICS_HEADER)


def utc_iso(seconds: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def csv_line(header: tuple[str, ...], row: dict[str, object]) -> str:
    """One CSV line (with its newline) of ``row`` in ``header`` order; absent keys are empty cells."""
    return ",".join(_cell(row.get(col)) for col in header) + "\n"


def append_lines(path: Path, lines: list[str]) -> None:
    with open(path, "a", encoding="utf-8", newline="") as fh:
        fh.write("".join(lines))
        fh.flush()


@dataclass
class FixtureRun:
    """What was written, so that tests can compare against it without parsing the files themselves."""

    dir: Path
    train: list[dict[str, object]] = field(default_factory=list)
    val: list[dict[str, object]] = field(default_factory=list)
    calibration: list[dict[str, object]] = field(default_factory=list)
    topk: list[dict[str, object]] = field(default_factory=list)


def train_row(rng: np.random.Generator, epoch: int, iteration: int, t0: float = 1.7e9) -> dict[str, object]:
    base = 2.0 / (1 + 0.05 * iteration)
    parts = rng.uniform(0.1, 1.0, size=3) * base
    return {
        "time": t0 + iteration,
        "epoch": epoch,
        "iteration": iteration,
        "split": C.SPLIT_TRAIN,
        "loss": float(parts.sum()),
        "loss_post": float(parts[0]),
        "loss_policy": float(parts[1]),
        "loss_bce": float(parts[2]),
        "grad_norm": float(rng.uniform(0.5, 3)),
        "lr": 1e-3,
    }


def val_row(rng: np.random.Generator, epoch: int, iteration: int, t0: float = 1.7e9) -> dict[str, object]:
    parts = rng.uniform(0.1, 1.0, size=3)
    return {
        "time": t0 + iteration + 0.5,
        "epoch": epoch,
        "iteration": iteration,
        "split": C.SPLIT_VAL,
        "loss": float(parts.sum()),
        "loss_post": float(parts[0]),
        "loss_policy": float(parts[1]),
        "loss_bce": float(parts[2]),
        "auc": float(rng.uniform(0.6, 0.8)),
        "brier": float(rng.uniform(0.15, 0.2)),
        "ece": float(rng.uniform(0.0, 0.05)),
        "pr_auc": float(rng.uniform(0.3, 0.5)),
        "post_mse": float(rng.uniform(0.3, 0.6)),
        "sigma_mae": float(rng.uniform(0.0, 0.2)),
        "policy_value": float(rng.uniform(0.2, 0.9)),
        "ask_outside_pool": float(rng.uniform(0.0, 0.1)),
        "brier_asked": float(rng.uniform(0.14, 0.2)),
        "auc_asked": float(rng.uniform(0.6, 0.85)),
        "gain_spearman": float(rng.uniform(0.0, 0.9)),
    }


def calibration_rows(rng: np.random.Generator, epoch: int, bins: int = 10) -> list[dict[str, object]]:
    edges = np.linspace(0, 1, bins + 1)
    rows = []
    for b in range(bins):
        count = int(rng.integers(0, 50)) if b < bins - 2 else 0  # top bins empty, as in real runs
        mean_pred = float(rng.uniform(edges[b], edges[b + 1])) if count else None
        frac_pos = float(rng.uniform(0, 1)) if count else None
        rows.append({"epoch": epoch, "bin": b, "lo": float(edges[b]), "hi": float(edges[b + 1]),
                     "count": count, "mean_pred": mean_pred, "frac_pos": frac_pos})  # fmt: skip
    return rows


def topk_rows(rng: np.random.Generator, epoch: int) -> list[dict[str, object]]:
    return [{"epoch": epoch, "hour": h, "frequency": float(rng.uniform(0, 1))} for h in range(C.HOURS)]


def write_status(run_dir: Path, **fields: object) -> None:
    """status.json of a live run (this process as the owner, a fresh heartbeat) unless ``fields`` say else."""

    now = time.time()
    status = {
        "state": C.STATE_RUNNING,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": utc_iso(now - 600),
        "updated": utc_iso(now),
        "heartbeat": utc_iso(now),
        "finished": None,
        "epoch": 0,
        "iteration": 0,
        "max_epochs": 10,
        "best": {"metric": "auc", "value": None, "epoch": None, "checkpoint": None},
        "oracle": dict(ORACLE),
    }
    status.update(fields)
    (run_dir / C.STATUS_FILE).write_text(json.dumps(status), encoding="utf-8")


def write_run(
    root: Path,
    name: str,
    *,
    epochs: int = 3,
    iters_per_epoch: int = 4,
    state: str = C.STATE_RUNNING,
    reason: str | None = None,
    seed: int = 0,
) -> FixtureRun:
    """A complete run folder: config, status, metrics (train + val rows), calibration and top-k tables."""
    rng = np.random.default_rng(seed)
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / C.CONFIG_FILE).write_text(
        f"seed: {seed}\ntrainer:\n  epochs: 10\n  batch_size: 32\noptim:\n  lr: 0.002\n", encoding="utf-8"
    )
    out = FixtureRun(run_dir)
    it = 0
    for epoch in range(1, epochs + 1):
        for _ in range(iters_per_epoch):
            it += 1
            out.train.append(train_row(rng, epoch, it))
        out.val.append(val_row(rng, epoch, it))
        out.calibration.extend(calibration_rows(rng, epoch))
        out.topk.extend(topk_rows(rng, epoch))
    metrics = [csv_line(HEADER, r) for r in sorted(out.train + out.val, key=lambda r: r["time"])]
    (run_dir / C.METRICS_FILE).write_text(",".join(HEADER) + "\n" + "".join(metrics))
    (run_dir / C.CALIBRATION_FILE).write_text(
        ",".join(C.CALIBRATION_HEADER)
        + "\n"
        + "".join(csv_line(C.CALIBRATION_HEADER, r) for r in out.calibration)
    )
    (run_dir / C.TOPK_FILE).write_text(
        ",".join(C.TOPK_HEADER) + "\n" + "".join(csv_line(C.TOPK_HEADER, r) for r in out.topk)
    )
    best_auc = max(float(r["auc"]) for r in out.val) if out.val else None
    write_status(
        run_dir, state=state, epoch=epochs, iteration=it, reason=reason,
        best={"metric": "auc", "value": best_auc, "epoch": epochs, "checkpoint": "checkpoints/best.pt"},
        finished=utc_iso(time.time() - 60) if state != C.STATE_RUNNING else None,
    )  # fmt: skip
    return out


def write_half_run(root: Path, name: str, header_only: bool = True) -> Path:
    """A run that has written config.yaml and status.json but no metrics rows yet."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / C.CONFIG_FILE).write_text("seed: 0\n", encoding="utf-8")
    write_status(run_dir)
    if header_only:
        (run_dir / C.METRICS_FILE).write_text(",".join(HEADER) + "\n")
    return run_dir


def tensorboard_smooth(values: list[float], weight: float) -> list[float]:
    """TensorBoard's scalar smoothing as its front end writes it, one point at a time (test reference)."""
    out = []
    last = 0.0
    n = 0
    for v in values:
        if not np.isfinite(v):
            out.append(v)
            continue
        last = last * weight + (1 - weight) * v
        n += 1
        debias = 1.0 if weight == 1 else 1 - weight**n
        out.append(last / debias)
    return out


def tiny_real_run(root: Path, epochs: int = 2) -> Path:
    """A run folder written by the real trainer on a few simulated subjects (a slow fixture)."""
    from aline.config import load_config
    from aline.simulate import simulate
    from aline.train import train

    simulate(subjects=20, days=6, seed=5, out_dir=root / "data", progress=False)
    overrides = [
        f"data.dir={root / 'data'}", f"run.dir={root / 'runs'}", f"trainer.epochs={epochs}",
        "trainer.batch_size=32", "trainer.log_every=1", "model.d_model=16", "model.heads=2", "model.layers=1",
        "model.ff_dim=32", "logging.progress=false",
    ]  # fmt: skip
    return train(load_config(None, overrides), announce=lambda _: None).run_dir
