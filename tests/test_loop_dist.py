"""The real evaluator (closed-loop validation pass) on two gloo processes gives the single-process figures.

One window per batch, so every window's forward passes are bit-identical whatever the process count; the
metrics then gather, drop the sampler's padding duplicate and compute on the same windows in the same order.
Self-contained so that the spawned processes can import it.
"""

from __future__ import annotations

import math
import pickle
import socket
from pathlib import Path

import ignite.distributed as idist
import pytest
import torch
from helpers import gloohelp
from helpers.evalhelp import make_frame

from aline.config import load_config
from aline.data import read_split
from aline.data.dataset import Normalizer, WindowDataset
from aline.model.network import build_model
from aline.training.engine import make_loader, setup_evaluator
from aline.training.metrics import attach_validation_metrics
from aline.training.run_data import pool_for, resolve_config

N_WINDOWS, WORLD = 21, 2  # odd: the sampler pads one share with a duplicate
LOOP_FIGURES = ("policy_value", "ask_outside_pool", "brier_asked", "auc_asked", "gain_spearman")
FORECAST_FIGURES = ("auc", "brier", "ece", "post_mse", "sigma_mae")


def _figures(csv_path: str) -> dict[str, float]:
    torch.manual_seed(0)
    cfg = load_config(
        None,
        [
            "model.d_model=16",
            "model.heads=2",
            "model.layers=1",
            "model.ff_dim=32",
            "trainer.eval_batch_size=1",
            "policy.gain_windows=1000",
        ],
    )
    raw = read_split(csv_path, cfg.data.columns)
    cfg = resolve_config(cfg, {"train": raw})
    norm = Normalizer.fit(raw)
    dataset = WindowDataset(raw, norm, pool=pool_for(cfg, raw), answer_channel=True)
    model = build_model(cfg, len(norm.feature_names)).eval()
    evaluator = setup_evaluator(cfg, model, torch.device("cpu"))
    attach_validation_metrics(evaluator, cfg.policy.k)
    loader = make_loader(dataset, 1, train=False, seed=0)
    metrics = evaluator.run(loader).metrics
    return {name: float(metrics[name]) for name in LOOP_FIGURES + FORECAST_FIGURES}


def _worker(local_rank: int, csv_path: str, out_dir: str) -> None:
    figures = _figures(csv_path)
    with open(Path(out_dir) / f"rank{idist.get_rank()}.pkl", "wb") as fh:
        pickle.dump(figures, fh)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_give_the_single_process_validation_figures(tmp_path: Path) -> None:
    csv_path = tmp_path / "val.csv"
    make_frame(N_WINDOWS, seed=4).to_csv(csv_path, index=False)
    single = _figures(str(csv_path))
    assert all(math.isfinite(single[name]) for name in LOOP_FIGURES), single
    assert single["ask_outside_pool"] == 0.0
    idist.spawn(
        "gloo",
        _worker,
        args=(str(csv_path), str(tmp_path)),
        nproc_per_node=WORLD,
        master_addr="127.0.0.1",
        master_port=_free_port(),
        start_method=gloohelp.start_method(),
    )
    for rank in range(WORLD):
        with open(tmp_path / f"rank{rank}.pkl", "rb") as fh:
            got = pickle.load(fh)
        for name, value in single.items():
            assert got[name] == value, (rank, name, got[name], value)
