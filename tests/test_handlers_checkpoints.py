"""Tests of aline.training.handlers.checkpoints (best and last checkpoints, resume, RNG state), each on a
real ignite Engine with tiny fake data."""

from __future__ import annotations

import io
import math
import types

import numpy as np
import pytest
import torch
from helpers.engines import fake_evaluator, status_of, validate_each_epoch
from ignite.engine import Engine, Events

from aline.config import EarlyStopConfig, SchedConfig
from aline.training import handlers as H

pytestmark = pytest.mark.usefixtures("restore_aline_logger")


# --- best checkpoints --------------------------------------------------------------------------------------


def test_best_checkpoint_keeps_n_best_by_score(tmp_path):
    aucs = [0.50, 0.70, 0.60, 0.80, 0.65, float("nan")]
    model = torch.nn.Linear(2, 1)
    trainer = Engine(lambda e, b: None)
    snapshots = {}
    trainer.add_event_handler(
        Events.EPOCH_STARTED, lambda e: torch.nn.init.constant_(model.bias, float(e.state.epoch))
    )
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: snapshots.update({e.state.epoch: model.bias.detach().clone()})
    )
    evaluator = fake_evaluator([{"auc": np.float64(a), "brier": 0.3} for a in aucs])
    validate_each_epoch(trainer, evaluator)
    status = H.RunStatus(tmp_path / "status.json")
    handler = H.attach_best_checkpoint(trainer, evaluator, tmp_path, model, "auc", n_saved=2, status=status)
    trainer.run([0], max_epochs=len(aucs))

    # Brute-force reference: the two highest finite AUCs.
    ranked = sorted((a, e + 1) for e, a in enumerate(aucs) if not math.isnan(a))[-2:]
    expected = {f"best_epoch={e}_auc={a:.4f}.pt" for a, e in ranked}
    files = {p.name for p in (tmp_path / "checkpoints").iterdir()}
    assert files == expected
    for a, e in ranked:
        ckpt = torch.load(tmp_path / "checkpoints" / f"best_epoch={e}_auc={a:.4f}.pt", weights_only=True)
        assert torch.equal(ckpt["model"]["bias"], snapshots[e])
        assert ckpt["meta"] == {"epoch": e, "iteration": e, "metric": "auc", "value": a}
    best_a, best_e = ranked[-1]
    assert status_of(tmp_path)["best"] == {
        "metric": "auc",
        "value": best_a,
        "epoch": best_e,
        "checkpoint": f"checkpoints/best_epoch={best_e}_auc={best_a:.4f}.pt",
    }
    # The handler's state is weights-only safe (it goes into last.pt).
    buf = io.BytesIO()
    torch.save(H.weights_only_safe(handler.state_dict()), buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True) == handler.state_dict()


def test_best_checkpoint_lower_is_better_names_true_value(tmp_path):
    briers = [0.30, 0.20, 0.25]
    trainer, model = Engine(lambda e, b: None), torch.nn.Linear(1, 1)
    evaluator = fake_evaluator([{"brier": b} for b in briers])
    validate_each_epoch(trainer, evaluator)
    H.attach_best_checkpoint(trainer, evaluator, tmp_path, model, "brier", n_saved=1)
    trainer.run([0], max_epochs=3)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["best_epoch=2_brier=0.2000.pt"]


def test_weights_only_safe_converts_numpy_and_names_bad_entries():
    out = H.weights_only_safe({"a": np.float64(1.5), "b": [np.int64(3), np.arange(3)]})
    assert type(out["a"]) is float and type(out["b"][0]) is int and torch.equal(out["b"][1], torch.arange(3))
    with pytest.raises(TypeError, match=r"ckpt\['opt'\]\['x'\]: object"):
        H.weights_only_safe({"opt": {"x": object()}}, "ckpt")


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 1)
        self.drop = torch.nn.Dropout(0.3)  # uses the torch RNG during training

    def forward(self, x):
        return self.lin(self.drop(x)).squeeze(-1)


def _build_run(run_dir, sched_name="cosine", max_epochs=6):
    """Everything a real run attaches, on a tiny regression problem; returns what the test inspects."""
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(40, 3, generator=g), torch.randn(40, generator=g)
    xv, yv = torch.randn(16, 3, generator=g), torch.randn(16, generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=True)
    model = _Net()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    log = {"lr": [], "loss": [], "val": []}

    def step(engine, batch):
        model.train()
        xb, yb = batch
        loss = ((model(xb) - yb) ** 2).mean() + 1e-3 * torch.randn(()).abs()
        opt.zero_grad()
        loss.backward()
        opt.step()
        log["lr"].append(opt.param_groups[0]["lr"])
        log["loss"].append(loss.item())
        return {"loss": loss.item()}

    trainer, evaluator = Engine(step), Engine(lambda e, b: None)

    @evaluator.on(Events.COMPLETED)
    def metrics(engine):
        model.eval()
        with torch.no_grad():
            mse = float(((model(xv) - yv) ** 2).mean())
        # A noisy "auc" so that early stopping and the best-checkpoint ranking both have work to do.
        engine.state.metrics = {"loss": mse, "auc": np.float64(1.0 - mse + 0.05 * np.random.rand())}
        log["val"].append(engine.state.metrics["auc"])

    validate_each_epoch(trainer, evaluator)
    sched_cfg = SchedConfig(name=sched_name, warmup_epochs=1.0, plateau_patience=0, gamma=0.7)
    sched = H.build_lr_scheduler(trainer, evaluator, opt, sched_cfg, 0.05, len(loader), max_epochs)
    es = H.attach_early_stopping(trainer, evaluator, EarlyStopConfig(metric="auc", patience=4))
    status = H.RunStatus(run_dir / "status.json")
    best = H.attach_best_checkpoint(trainer, evaluator, run_dir, model, "auc", n_saved=2, status=status)
    to_save = {
        "model": model,
        "optimizer": opt,
        "lr_scheduler": sched,
        "trainer": trainer,
        "early_stopping": es,
        "best_checkpoint": best,
        "rng": H.RNGState(),
    }
    last = H.LastCheckpoint(H.last_checkpoint_path(run_dir), to_save)
    H.attach_last_checkpoint(trainer, last)
    H.attach_status(trainer, status)
    return types.SimpleNamespace(
        trainer=trainer,
        loader=loader,
        model=model,
        opt=opt,
        log=log,
        es=es,
        best=best,
        sched=sched,
        to_save=to_save,
    )


def _seed(s):
    torch.manual_seed(s)
    np.random.seed(s)


@pytest.mark.parametrize("sched_name", ["cosine", "plateau"])
def test_last_checkpoint_resume_gives_the_same_numbers_as_never_stopping(tmp_path, sched_name):
    # Reference: 6 epochs without a stop.
    _seed(0)
    ref = _build_run(tmp_path / "ref", sched_name)
    ref.trainer.run(ref.loader, max_epochs=6)

    # Same run, Ctrl-C right after epoch 3 (after last.pt was written for that epoch).
    _seed(0)
    a = _build_run(tmp_path / "run", sched_name)

    @a.trainer.on(Events.EPOCH_COMPLETED(once=3))
    def ctrl_c(_):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        a.trainer.run(a.loader, max_epochs=6)
    assert status_of(tmp_path / "run")["state"] == "stopped"
    last_pt = tmp_path / "run" / "checkpoints" / "last.pt"
    raw = torch.load(last_pt, weights_only=True)  # must not need pickled classes
    assert raw["trainer"]["iteration"] == 3 * len(a.loader)

    # A new process: other seeds, fresh objects, then resume.
    _seed(123)
    b = _build_run(tmp_path / "run", sched_name)
    assert not torch.equal(b.model.lin.weight, a.model.lin.weight)
    H.resume_from(last_pt, b.to_save)
    assert b.es.state_dict() == a.es.state_dict()
    assert b.best.state_dict() == a.best.state_dict()
    assert b.sched.state_dict() == a.sched.state_dict()
    b.trainer.run(b.loader)

    assert a.log["loss"] + b.log["loss"] == ref.log["loss"]
    assert a.log["lr"] + b.log["lr"] == ref.log["lr"]
    assert len(set(ref.log["lr"])) > 3  # the schedule did change the lr
    assert a.log["val"] + b.log["val"] == ref.log["val"]
    for p_ref, p_b in zip(ref.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p_ref, p_b)
    assert b.es.state_dict() == ref.es.state_dict()
    assert b.trainer.state.epoch == ref.trainer.state.epoch
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == sorted(
        p.name for p in (tmp_path / "ref" / "checkpoints").iterdir()
    )
    assert status_of(tmp_path / "run")["best"] == status_of(tmp_path / "ref")["best"]
    assert status_of(tmp_path / "run")["state"] == "finished"


def test_last_checkpoint_keeps_the_last_epoch_boundary_on_failure(tmp_path):
    model = torch.nn.Linear(2, 1)
    bias0 = float(model.bias.detach())

    def step(engine, batch):
        with torch.no_grad():
            model.bias += 1.0
        if engine.state.iteration == 5:
            raise RuntimeError("disk on fire")
        return {"loss": 1.0}

    trainer = Engine(step)
    last = H.LastCheckpoint(H.last_checkpoint_path(tmp_path), {"model": model, "trainer": trainer})
    H.attach_last_checkpoint(trainer, last)
    H.attach_status(trainer, H.RunStatus(tmp_path / "status.json"))
    with pytest.raises(RuntimeError, match="disk on fire"):
        trainer.run(range(2), max_epochs=4)
    ckpt = torch.load(H.last_checkpoint_path(tmp_path), weights_only=True)
    # Failed in epoch 3 (iteration 5): last.pt is the end of epoch 2, which a resume repeats exactly.
    assert ckpt["trainer"]["iteration"] == 4
    assert float(ckpt["model"]["bias"]) == pytest.approx(bias0 + 4.0)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["last.pt"]  # no temp file left
    assert status_of(tmp_path)["state"] == "failed"


def test_run_stopped_in_its_first_epoch_is_resumable_from_the_start(tmp_path):
    model = torch.nn.Linear(2, 1)
    bias0 = float(model.bias.detach())

    def step(engine, batch):
        with torch.no_grad():
            model.bias += 1.0
        if engine.state.iteration == 2:
            raise KeyboardInterrupt
        return {"loss": 1.0}

    trainer = Engine(step)
    last = H.LastCheckpoint(H.last_checkpoint_path(tmp_path), {"model": model, "trainer": trainer})
    H.attach_last_checkpoint(trainer, last)
    H.attach_status(trainer, H.RunStatus(tmp_path / "status.json"))
    with pytest.raises(KeyboardInterrupt):
        trainer.run(range(3), max_epochs=2)
    ckpt = torch.load(H.last_checkpoint_path(tmp_path), weights_only=True)
    assert ckpt["trainer"]["iteration"] == 0
    assert float(ckpt["model"]["bias"]) == pytest.approx(bias0)
    assert status_of(tmp_path)["state"] == "stopped"


def test_resume_from_names_missing_entries(tmp_path):
    model = torch.nn.Linear(1, 1)
    last = H.LastCheckpoint(tmp_path / "last.pt", {"model": model})
    last.save()
    with pytest.raises(H.CheckpointError, match="'early_stopping'"):
        H.resume_from(tmp_path / "last.pt", {"model": model, "early_stopping": object()})
    with pytest.raises(H.CheckpointError, match="nope.pt"):
        H.resume_from(tmp_path / "nope.pt", {"model": model})
    with pytest.raises(TypeError, match="'x'.*state_dict"):
        H.LastCheckpoint(tmp_path / "l.pt", {"x": 3})


def test_rng_state_round_trip():
    import random

    rng = H.RNGState()
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    np.random.normal()  # leave a cached Gaussian in the NumPy state
    buf = io.BytesIO()
    torch.save(H.weights_only_safe(rng.state_dict()), buf)
    first = (random.random(), np.random.normal(), torch.rand(3))
    buf.seek(0)
    rng.load_state_dict(torch.load(buf, weights_only=True))
    again = (random.random(), np.random.normal(), torch.rand(3))
    assert first[0] == again[0] and first[1] == again[1] and torch.equal(first[2], again[2])
