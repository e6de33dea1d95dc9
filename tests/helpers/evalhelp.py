"""Test helpers for evaluation and prediction: a small long CSV with the simulator's columns, and a run
folder built by hand (fresh model weights, fitted normaliser, config, status.json), so these tests do not
depend on the trainer or the simulator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from aline import contract
from aline.config import DEFAULT_FEATURES, DEFAULT_LATENTS, Config, load_config
from aline.data import read_split
from aline.data.dataset import Normalizer
from aline.model.network import build_model

HOURS = 24


def hours_of_day() -> np.ndarray:
    return np.arange(HOURS)[None, :]


def make_frame(n_windows: int, seed: int, first_id: int = 0) -> pd.DataFrame:
    """Random but well-formed windows with every column the simulator writes (features with gaps)."""
    rng = np.random.default_rng(seed)
    n, f, z_dim = n_windows, len(DEFAULT_FEATURES), len(DEFAULT_LATENTS)
    feats = rng.normal(size=(n, HOURS, f))
    feats[rng.random(size=feats.shape) < 0.15] = np.nan  # gaps, as the wearables have
    # Asleep: a 0/1 flag without gaps (it decides which hours can be asked about), night plus a lie-in.
    wake = rng.integers(5, 10, size=(n, 1))
    feats[:, :, DEFAULT_FEATURES.index("asleep")] = (hours_of_day() < wake) | (hours_of_day() >= 23)
    feats[:, :, DEFAULT_FEATURES.index("busy")] = rng.random((n, HOURS)) < 0.2  # 0/1, like asleep
    z = rng.normal(size=(n, HOURS, z_dim)).cumsum(axis=1) * 0.3
    post_std = rng.uniform(0.2, 0.6, size=(n, HOURS, z_dim))
    post_mean = z + rng.normal(size=z.shape) * post_std
    logit = 1.5 * z[:, -1, 0] - 1.2
    p_true = 1.0 / (1.0 + np.exp(-logit))
    y = (rng.random(n) < p_true).astype(np.int64)
    p_bayes = 1.0 / (1.0 + np.exp(-(0.8 * post_mean[:, -1, 0] - 1.2)))
    # Query value: a per-window peak that moves from day to day, so fixed hours fall short of the oracle.
    peak = rng.integers(6, 22, size=n)
    hours = np.arange(HOURS)
    qv = np.exp(-0.5 * ((hours[None, :] - peak[:, None]) / 2.0) ** 2) * rng.uniform(0.5, 1.5, size=(n, 1))
    qv[rng.random(size=qv.shape) < 0.1] = 0.0

    ids = first_id + np.arange(n)
    cols: dict[str, np.ndarray] = {
        "window_id": np.repeat(ids, HOURS),
        "subject_id": np.repeat(ids // 5, HOURS),
        "day": np.repeat(ids % 5, HOURS),
        "hour": np.tile(hours, n),
    }
    for j, name in enumerate(DEFAULT_FEATURES):
        cols[name] = feats[:, :, j].ravel()
    for prefix, values in (("z_", z), ("post_mean_", post_mean), ("post_std_", post_std)):
        for j, name in enumerate(DEFAULT_LATENTS):
            cols[prefix + name] = values[:, :, j].ravel()
    # The diary is sparse (logged at a few hours); the answer column holds what the patient would say if
    # asked: the logged rating where there is one, a fresh value while awake, nothing while asleep.
    rating = DEFAULT_FEATURES.index("symptom_score")
    feats[:, :, rating] = np.where(rng.random((n, HOURS)) < 0.15, feats[:, :, rating], np.nan)
    cols["symptom_score"] = feats[:, :, rating].ravel()
    asleep = (feats[:, :, DEFAULT_FEATURES.index("asleep")] > 0) | (
        feats[:, :, DEFAULT_FEATURES.index("busy")] > 0
    )
    fresh = rng.normal(size=(n, HOURS))
    answer = np.where(np.isnan(feats[:, :, rating]), np.where(asleep, np.nan, fresh), feats[:, :, rating])
    cols["ask_symptom_score"] = answer.ravel()
    cols["query_value"] = qv.ravel()
    cols["y_next"] = np.repeat(y, HOURS)
    cols["p_true"] = np.repeat(p_true, HOURS)
    cols["p_bayes"] = np.repeat(p_bayes, HOURS)
    return pd.DataFrame(cols)


def make_data(data_dir: Path, sizes: tuple[int, int, int] = (120, 60, 60), seed: int = 0) -> Path:
    """``data_dir/synthetic_migraine_{train,val,test}.csv`` with disjoint window ids."""
    data_dir.mkdir(parents=True, exist_ok=True)
    first = 0
    for i, (split, n) in enumerate(zip(("train", "val", "test"), sizes, strict=True)):
        make_frame(n, seed + i, first_id=first).to_csv(
            data_dir / f"synthetic_migraine_{split}.csv", index=False
        )
        first += n
    return data_dir


def make_run(
    tmp_path: Path, overrides: tuple[str, ...] = (), seed: int = 0, data_dir: Path | None = None
) -> Path:
    """A run folder like the trainer writes, with an untrained (seeded) model as its best checkpoint;
    on ``data_dir`` when given, else on fresh :func:`make_data` windows."""
    if data_dir is None:
        data_dir = make_data(tmp_path / "data", seed=seed)
    cfg: Config = load_config(
        None,
        [
            f"data.dir={data_dir}",
            "model.d_model=16",
            "model.heads=2",
            "model.layers=1",
            "model.ff_dim=32",
            *overrides,
        ],
    )
    run = tmp_path / "runs" / "r1"
    (run / contract.CHECKPOINT_DIR).mkdir(parents=True)
    (run / contract.CONFIG_FILE).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    train = read_split(cfg.data.split_path("train"), cfg.data.columns)
    Normalizer.fit(train).save(run / contract.NORMALIZER_FILE)
    torch.manual_seed(seed)
    model = build_model(cfg, n_features=len(cfg.data.columns.features))
    model.init_prediction_bias(float(train.y.mean()))
    best = f"{contract.CHECKPOINT_DIR}/best_model_1_auc=0.5000.pt"
    torch.save({"model": model.state_dict()}, run / best)
    torch.save({"model": model.state_dict()}, run / contract.CHECKPOINT_DIR / contract.LAST_CHECKPOINT)
    status = {"state": "finished", "best": {"metric": "auc", "value": 0.5, "epoch": 1, "checkpoint": best}}
    (run / contract.STATUS_FILE).write_text(json.dumps(status))
    return run
