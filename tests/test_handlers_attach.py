"""Tests of attach_all (aline.training.handlers): every handler together writes the run folder, resumes,
keeps the moving average of the weights, and writes once under two gloo processes."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import gloohelp
from helpers.engines import status_of
from ignite.engine import Engine, Events

from aline.config import Config
from aline.scoring import calibration_table
from aline.training import handlers as H
from aline.training.engine import setup_averaging

pytestmark = pytest.mark.usefixtures("restore_aline_logger")


# --- attach_all -------------------------------------------------------------------------------------------


def _all_run(run_dir, epochs, resume=False, ema=None, raw_weights=None, stop_after=None):
    """``ema``: validate and checkpoint a moving average of the weights with this momentum;
    ``raw_weights``: a list that receives the trained weights after every step; ``stop_after``: end the
    run after that epoch (last.pt written), as an interruption would."""
    cfg = Config.model_validate(
        {
            "optim": {"ema_momentum": ema},
            "trainer": {"epochs": epochs, "log_every": 2},
            "logging": {"progress": False},
            "checkpoint": {"metric": "auc", "n_saved": 1},
            "early_stop": {"metric": "auc", "patience": 5},
        }
    )
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
    data = [torch.randn(4, 2) for _ in range(3)]

    def step(engine, x):
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    trainer = Engine(step)

    @trainer.on(Events.ITERATION_COMPLETED)
    def running(engine):
        engine.state.metrics = {"loss": engine.state.output["loss"], "lr": opt.param_groups[0]["lr"]}

    if raw_weights is not None:
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: raw_weights.append(_flat(model)))
    scored = setup_averaging(cfg, trainer, model)

    rng = np.random.default_rng(0)
    p, y = rng.uniform(size=50), rng.integers(0, 2, size=50)
    evaluator = Engine(lambda e, b: None)

    @evaluator.on(Events.COMPLETED)
    def metrics(engine):
        auc = 0.6 + 0.01 * trainer.state.epoch
        engine.state.metrics = {
            "loss": 1.0,
            "auc": auc,
            "calibration": calibration_table(p, y),
            "topk_frequency": np.full(24, 0.125),
        }

    attached = H.attach_all(
        cfg,
        run_dir,
        trainer=trainer,
        evaluator=evaluator,
        val_loader=[0],
        model=model,
        scored_model=scored,
        optimizer=opt,
        epoch_length=len(data),
        oracle={"auc": 0.8},
        resume=resume,
    )
    if stop_after is not None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=stop_after), lambda e: e.terminate())
    trainer.run(data, max_epochs=epochs)
    H.setup_logging(None, stream=io.StringIO())  # release train.log
    return attached, model


def test_attach_all_writes_the_run_folder_and_resumes(tmp_path):
    run = tmp_path / "run"
    first, _ = _all_run(run, epochs=2)
    names = {p.name for p in run.iterdir()}
    assert {
        "status.json",
        "metrics.csv",
        "calibration.csv",
        "topk_hours.csv",
        "train.log",
        "checkpoints",
    } <= names
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"best_epoch=2_auc=0.6200.pt", "last.pt"}
    st = status_of(run)
    assert st["state"] == "finished" and st["epoch"] == 2 and st["oracle"] == {"auc": 0.8}
    assert st["best"]["checkpoint"] == "checkpoints/best_epoch=2_auc=0.6200.pt"
    assert set(torch.load(run / "checkpoints" / "last.pt", weights_only=True)) == {
        "model",
        "optimizer",
        "lr_scheduler",
        "trainer",
        "best_checkpoint",
        "rng",
        "early_stopping",
        "logs",
    }

    # Extend the finished run by one epoch from last.pt.
    second, model = _all_run(run, epochs=3, resume=True)
    assert second.resumed_from == run / "checkpoints" / "last.pt"
    st2 = status_of(run)
    assert st2["state"] == "finished" and st2["epoch"] == 3 and st2["started"] == st["started"]
    df = pd.read_csv(run / "metrics.csv")
    assert df[df.split == "val"].epoch.tolist() == [1, 2, 3]
    assert df[df.split == "train"].iteration.tolist() == [2, 3, 4, 6, 8, 9]
    assert pd.read_csv(run / "topk_hours.csv").epoch.value_counts().to_dict() == {1: 24, 2: 24, 3: 24}
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"best_epoch=3_auc=0.6300.pt", "last.pt"}
    assert "resumed" in (run / "train.log").read_text()


def _flat(module: torch.nn.Module) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).numpy().copy()


def _average(start: np.ndarray, raw: list[np.ndarray], momentum: float, first_step: int) -> np.ndarray:
    """NumPy reference: the moving average over the weights of steps ``first_step``, ``first_step + 1``,
    ..., with momentum max(momentum, 1 / step), starting from ``start``."""
    average = start
    for step, weights in enumerate(raw, start=first_step):
        m = max(momentum, 1.0 / step)
        average = (1.0 - m) * average + m * weights
    return average


def test_checkpoints_keep_the_moving_average_and_resume_continues_it(tmp_path):
    momentum = 0.25  # the plain mean for the first 4 steps, then the moving average: 9 steps see both
    raw: list[np.ndarray] = []
    torch.manual_seed(0)
    start = _flat(torch.nn.Linear(2, 1))  # _all_run's model, seeded alike
    attached, model = _all_run(tmp_path / "full", epochs=3, ema=momentum, raw_weights=raw)
    average = _average(start, raw, momentum, first_step=1)
    scored = attached.to_save["model"]
    assert scored is not model and len(raw) == 9
    np.testing.assert_allclose(_flat(scored), average, rtol=1e-6, atol=1e-7)
    assert not np.allclose(_flat(scored), _flat(model))

    # The best checkpoint holds the averaged weights (what validation scored); last.pt holds both.
    best = torch.load(tmp_path / "full" / "checkpoints" / "best_epoch=3_auc=0.6300.pt", weights_only=True)
    last = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)
    for name, value in scored.state_dict().items():
        assert torch.equal(best["model"][name], value) and torch.equal(last["model"][name], value)
    for name, value in model.state_dict().items():
        assert torch.equal(last["online_model"][name], value)

    # Stopped after 2 epochs and resumed: both sets of weights as if never stopped.
    _all_run(tmp_path / "cut", epochs=3, ema=momentum, stop_after=2)
    resumed, resumed_model = _all_run(tmp_path / "cut", epochs=3, resume=True, ema=momentum)
    np.testing.assert_array_equal(_flat(resumed_model), _flat(model))
    np.testing.assert_array_equal(_flat(resumed.to_save["model"]), _flat(scored))


def test_resume_without_an_average_starts_it_from_the_weights(tmp_path):
    # last.pt written with optim.ema_momentum null (or by an older trainer) has no online_model entry.
    _, before = _all_run(tmp_path, epochs=1)
    trained = _flat(before)
    raw: list[np.ndarray] = []
    resumed, _ = _all_run(tmp_path, epochs=2, resume=True, ema=0.5, raw_weights=raw)
    assert "holds no averaged weights" in (tmp_path / "train.log").read_text()
    # The average began at the resumed weights and went on from iteration 4 (3 steps an epoch).
    average = _average(trained, raw, 0.5, first_step=4)
    np.testing.assert_allclose(_flat(resumed.to_save["model"]), average, rtol=1e-6, atol=1e-7)


def test_resume_with_averaging_switched_off_trains_on_from_the_raw_weights(tmp_path):
    _, never_stopped = _all_run(tmp_path / "full", epochs=2)
    _all_run(tmp_path / "cut", epochs=2, ema=0.5, stop_after=1)
    _, resumed = _all_run(tmp_path / "cut", epochs=2, resume=True)
    np.testing.assert_array_equal(_flat(resumed), _flat(never_stopped))


def _two_rank_run(local_rank, run_dir):
    import ignite.distributed as idist

    assert idist.get_world_size() == 2
    _all_run(run_dir, epochs=2)  # every rank builds and attaches the same handlers


@pytest.mark.slow
def test_attach_all_on_two_gloo_processes_writes_once(tmp_path):
    import ignite.distributed as idist

    with idist.Parallel(backend="gloo", nproc_per_node=2, start_method=gloohelp.start_method()) as parallel:
        parallel.run(_two_rank_run, str(tmp_path))
    df = pd.read_csv(tmp_path / "metrics.csv")
    assert df[df.split == "val"].epoch.tolist() == [1, 2]  # one row per event, not one per process
    assert len(pd.read_csv(tmp_path / "calibration.csv")) == 2 * 15
    assert status_of(tmp_path)["state"] == "finished"
    assert {p.name for p in (tmp_path / "checkpoints").iterdir()} == {"best_epoch=2_auc=0.6200.pt", "last.pt"}
