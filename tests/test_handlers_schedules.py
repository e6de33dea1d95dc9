"""Tests of aline.training.handlers.schedules (early stopping, LR schedules), each on a real ignite Engine."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from helpers.engines import fake_evaluator, validate_each_epoch
from ignite.engine import Engine

from aline.config import EarlyStopConfig, SchedConfig
from aline.training import handlers as H

pytestmark = pytest.mark.usefixtures("restore_aline_logger")


def test_early_stopping_stops_after_patience_bad_epochs(tmp_path):
    aucs = [0.60, 0.70, 0.70, 0.65, 0.71, 0.69, 0.70, 0.705, 0.80, 0.9]
    cfg = EarlyStopConfig(metric="auc", patience=3, min_delta=0.0)
    # Brute-force reference: stop once `patience` evaluations in a row have not beaten the best.
    best, bad, stop_at = -math.inf, 0, len(aucs)
    for e, a in enumerate(aucs, start=1):
        if a > best:
            best, bad = a, 0
        else:
            bad += 1
            if bad == cfg.patience:
                stop_at = e
                break
    trainer = Engine(lambda e, b: None)
    evaluator = fake_evaluator([{"auc": np.float32(a)} for a in aucs])
    validate_each_epoch(trainer, evaluator)
    es = H.attach_early_stopping(trainer, evaluator, cfg)
    state = trainer.run([0], max_epochs=len(aucs))
    assert state.epoch == stop_at == 8
    sd = es.state_dict()
    assert type(sd["best_score"]) is float and sd["counter"] == cfg.patience
    buf = io.BytesIO()
    torch.save(H.weights_only_safe(sd), buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True)["best_score"] == pytest.approx(0.71)
    assert H.attach_early_stopping(trainer, evaluator, EarlyStopConfig(patience=None)) is None


def test_early_stopping_min_delta_and_lower_is_better():
    briers = [0.30, 0.295, 0.29, 0.2, 0.199]
    trainer = Engine(lambda e, b: None)
    evaluator = fake_evaluator([{"brier": b} for b in briers])
    validate_each_epoch(trainer, evaluator)
    H.attach_early_stopping(trainer, evaluator, EarlyStopConfig(metric="brier", patience=2, min_delta=0.02))
    # 0.295 and 0.29 improve on 0.30 by less than 0.02: two bad epochs → stop at epoch 3.
    assert trainer.run([0], max_epochs=5).epoch == 3


# --- LR schedules -----------------------------------------------------------------------------------------


def _run_schedule(cfg, base_lr, epoch_length, max_epochs, val=None, metric="loss"):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=123.0)  # whatever the optimiser starts with is overwritten
    lrs = []
    trainer = Engine(lambda e, b: lrs.append(opt.param_groups[0]["lr"]))
    evaluator = fake_evaluator(val or [{"loss": 1.0}])
    validate_each_epoch(trainer, evaluator)
    sched = H.build_lr_scheduler(trainer, evaluator, opt, cfg, base_lr, epoch_length, max_epochs, metric)
    trainer.run(range(epoch_length), max_epochs=max_epochs)
    return np.array(lrs), sched


def test_cosine_with_warmup_matches_closed_form():
    base, n_epoch, epochs, warm, ratio = 0.01, 7, 5, 1.5, 0.1
    lrs, _ = _run_schedule(
        SchedConfig(name="cosine", warmup_epochs=warm, min_lr_ratio=ratio), base, n_epoch, epochs
    )
    total = n_epoch * epochs
    w = round(warm * n_epoch)  # 10 or 11 warmup steps, whichever rounding: compute from the same rule
    expected = []
    for s in range(total):
        if s < w:
            expected.append(base * (s + 1) / w)
        else:
            frac = (s - w) / (total - w - 1)
            expected.append(base * ratio + (base - base * ratio) * (1 + math.cos(math.pi * frac)) / 2)
    np.testing.assert_allclose(lrs, expected, rtol=1e-12)
    assert lrs[w - 1] == pytest.approx(base) and lrs[-1] == pytest.approx(base * ratio)
    assert np.all(np.diff(lrs[:w]) > 0) and np.all(np.diff(lrs[w:]) < 0)


def test_step_schedule_per_epoch():
    lrs, _ = _run_schedule(SchedConfig(name="step", step_epochs=2, gamma=0.5), 0.1, 3, 5)
    expected = np.repeat([0.1 * 0.5 ** (e // 2) for e in range(5)], 3)
    np.testing.assert_allclose(lrs, expected, rtol=1e-15)


def test_none_schedule_is_constant():
    lrs, _ = _run_schedule(SchedConfig(name="none"), 0.02, 2, 3)
    assert (lrs == 0.02).all()


def test_plateau_matches_torch_reduce_lr_on_plateau():
    losses = [1.0, 0.9, 0.95, 0.92, 0.91, 0.85, 0.86, 0.87, 0.88, 0.9, 0.95, 0.96]
    cfg = SchedConfig(name="plateau", plateau_patience=2, gamma=0.5, min_lr_ratio=0.2)
    lrs, sched = _run_schedule(cfg, 0.1, 2, len(losses), val=[{"loss": v} for v in losses])
    # Independent reference: torch's ReduceLROnPlateau fed the same validation losses.
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=0.5, patience=2, threshold=0.0, min_lr=0.1 * 0.2
    )
    expected = []
    for v in losses:
        expected += [opt.param_groups[0]["lr"]] * 2
        ref.step(v)
    np.testing.assert_allclose(lrs, expected, rtol=1e-12)
    assert lrs[-1] < 0.1  # the sequence does reduce the lr
    # Its state goes into last.pt and restores.
    fresh = H.LRSchedule(torch.optim.SGD([p], lr=1.0), cfg, 0.1, 2, len(losses))
    fresh.load_state_dict(torch.load(_saved(sched.state_dict()), weights_only=True))
    assert fresh.state_dict() == sched.state_dict()
    with pytest.raises(ValueError, match="'plateau'.*'cosine'"):
        H.LRSchedule(torch.optim.SGD([p], lr=1.0), SchedConfig(), 0.1, 2, 3).load_state_dict(
            sched.state_dict()
        )


def _saved(obj) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf
