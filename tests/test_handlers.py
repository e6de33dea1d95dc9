"""Tests of aline.training.handlers, each on a real ignite Engine with tiny fake data."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
import sys
import threading
import types

import gloohelp
import numpy as np
import pandas as pd
import pytest
import torch
from ignite.engine import Engine, Events

from aline.config import Config, EarlyStopConfig, SchedConfig
from aline.contract import (
    CALIBRATION_HEADER,
    METRIC_COLUMNS,
    METRICS_HEADER,
    TOPK_HEADER,
    TRAIN_METRICS,
    VAL_METRICS,
)
from aline.scoring import calibration_table
from aline.training import handlers as H
from aline.training.engine import setup_averaging

# --- helpers ----------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _restore_aline_logger():
    """setup_logging() reconfigures the process-wide 'aline' logger; give other test files a clean one."""
    yield
    logger = logging.getLogger("aline")
    for handler in [h for h in logger.handlers if getattr(h, "_aline", False)]:
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


def fake_evaluator(values: list[dict]) -> Engine:
    """An evaluator whose n-th run 'computes' values[n] as its metrics (like ignite Metrics at COMPLETED)."""
    ev = Engine(lambda e, b: None)
    runs = {"n": 0}

    @ev.on(Events.COMPLETED)
    def _metrics(engine: Engine) -> None:
        engine.state.metrics = dict(values[min(runs["n"], len(values) - 1)])
        runs["n"] += 1

    return ev


def validate_each_epoch(trainer: Engine, evaluator: Engine) -> None:
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run([0]))


def read_rows(path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


# --- metrics.csv ------------------------------------------------------------------------------------------


def test_metrics_csv_header_rows_empty_cells_and_flush(tmp_path):
    path = tmp_path / "metrics.csv"
    log = H.MetricsCSV(path)
    # Visible to another reader before any row and before close.
    assert path.read_text() == ",".join(METRICS_HEADER) + "\n"
    log.write_row(
        "train",
        1,
        10,
        {"loss": 0.5, "lr": np.float32(1e-3), "auc": 0.9, "grad_norm": float("nan")},
        when=123.0,
    )
    log.write_row("val", 1, 10, {"loss": 0.25, "auc": 0.75, "lr": 0.1, "calibration": object()}, when=124.0)
    rows = read_rows(path)  # file still open: rows were flushed
    assert rows[0] == list(METRICS_HEADER)
    train = dict(zip(rows[0], rows[1], strict=True))
    val = dict(zip(rows[0], rows[2], strict=True))
    assert (train["time"], train["epoch"], train["iteration"], train["split"]) == (
        "123.000",
        "1",
        "10",
        "train",
    )
    assert float(train["loss"]) == 0.5 and float(train["lr"]) == float(np.float32(1e-3))
    assert train["auc"] == ""  # a val-only metric on a train row is not applicable
    assert train["grad_norm"] == ""  # NaN is written as empty
    assert val["split"] == "val" and float(val["auc"]) == 0.75 and val["lr"] == ""
    assert all(val[c] == "" for c in METRIC_COLUMNS if c not in ("loss", "auc"))
    log.close()
    with pytest.raises(ValueError, match="split"):
        H.MetricsCSV(tmp_path / "m2.csv").write_row("test", 1, 1, {})


def test_metrics_csv_values_round_trip_exactly(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.normal(size=(5, len(TRAIN_METRICS)))
    log = H.MetricsCSV(tmp_path / "metrics.csv")
    for i, row in enumerate(values):
        log.write_row("train", 1, i + 1, dict(zip(TRAIN_METRICS, row, strict=True)))
    log.close()
    df = pd.read_csv(tmp_path / "metrics.csv")
    np.testing.assert_array_equal(df[list(TRAIN_METRICS)].to_numpy(), values)


def test_metrics_csv_repairs_partial_last_line_on_reopen(tmp_path):
    path = tmp_path / "metrics.csv"
    log = H.MetricsCSV(path)
    log.write_row("train", 1, 1, {"loss": 1.0})
    log.close()
    with open(path, "a") as fh:
        fh.write("1700000000.000,1,2,train,0.12")  # a crash in the middle of a row
    log = H.MetricsCSV(path)
    log.write_row("train", 1, 2, {"loss": 2.0})
    log.close()
    rows = read_rows(path)
    assert len(rows) == 3 and all(len(r) == len(METRICS_HEADER) for r in rows)
    assert [r[2] for r in rows[1:]] == ["1", "2"]
    assert [float(r[METRICS_HEADER.index("loss")]) for r in rows[1:]] == [1.0, 2.0]


def test_metrics_csv_partial_header_is_rewritten(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("time,epo")
    H.MetricsCSV(path).close()
    assert path.read_text() == ",".join(METRICS_HEADER) + "\n"


def test_metrics_csv_header_mismatch_is_a_clear_error(tmp_path):
    path = tmp_path / "metrics.csv"
    header = list(METRICS_HEADER)
    header[5] = "loss_posterior"
    path.write_text(",".join(header) + "\n")
    with pytest.raises(ValueError, match=r"metrics\.csv.*column 6.*'loss_posterior'.*'loss_post'"):
        H.MetricsCSV(path)


def test_attach_metrics_csv_on_engines(tmp_path):
    epoch_length, every, epochs = 5, 2, 2
    trainer = Engine(lambda e, b: None)

    @trainer.on(Events.ITERATION_COMPLETED)
    def running_averages(engine):  # stands in for the RunningAverage metrics
        engine.state.metrics = {name: engine.state.iteration + k / 10 for k, name in enumerate(TRAIN_METRICS)}

    val = [
        {"loss": 0.5 - e / 10, "auc": 0.6 + e / 10, "brier": float("nan"), "topk_frequency": np.ones(24)}
        for e in range(epochs)
    ]
    evaluator = fake_evaluator(val)
    validate_each_epoch(trainer, evaluator)
    log = H.MetricsCSV(tmp_path / "metrics.csv")
    H.attach_metrics_csv(trainer, evaluator, log, every=every)
    trainer.run(range(epoch_length), max_epochs=epochs)
    log.close()

    df = pd.read_csv(tmp_path / "metrics.csv")
    train = df[df.split == "train"]
    total = epoch_length * epochs
    expected_iters = sorted(
        set(range(every, total + 1, every)) | {epoch_length * (e + 1) for e in range(epochs)}
    )
    assert train.iteration.tolist() == expected_iters
    assert train.epoch.tolist() == [(i - 1) // epoch_length + 1 for i in expected_iters]
    for k, name in enumerate(TRAIN_METRICS):
        np.testing.assert_allclose(train[name].to_numpy(), np.array(expected_iters) + k / 10)
    assert train[list(set(VAL_METRICS) - set(TRAIN_METRICS))].isna().all().all()
    vrows = df[df.split == "val"]
    assert vrows.epoch.tolist() == [1, 2] and vrows.iteration.tolist() == [5, 10]
    np.testing.assert_allclose(vrows.auc, [0.6, 0.7])
    assert vrows.brier.isna().all() and vrows.lr.isna().all()
    assert (np.diff(df.time.to_numpy()) >= 0).all()


# --- calibration.csv / topk_hours.csv ---------------------------------------------------------------------


def test_calibration_and_topk_writers_rows_equal_inputs(tmp_path):
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 0.6, size=300)  # leaves the upper bins empty
    y = (rng.uniform(size=300) < p).astype(float)
    freqs = [rng.uniform(size=24), rng.uniform(size=24)]
    trainer = Engine(lambda e, b: None)
    evaluator = fake_evaluator(
        [
            {"calibration": calibration_table(p[:150], y[:150]), "topk_frequency": freqs[0]},
            {"calibration": calibration_table(p, y), "topk_frequency": torch.tensor(freqs[1])},
        ]
    )
    validate_each_epoch(trainer, evaluator)
    cal, top = H.CalibrationCSV(tmp_path / "calibration.csv"), H.TopkCSV(tmp_path / "topk_hours.csv")
    H.attach_validation_tables(trainer, evaluator, cal, top)
    trainer.run([0, 1], max_epochs=2)

    c = pd.read_csv(tmp_path / "calibration.csv")
    assert tuple(c.columns) == CALIBRATION_HEADER
    last = c[c.epoch == 2].reset_index(drop=True)
    # Independent reference: NumPy histogram over 15 uniform bins (p < 1, so edges agree).
    edges = np.linspace(0, 1, 16)
    counts, _ = np.histogram(p, bins=edges)
    np.testing.assert_array_equal(last["count"], counts)
    np.testing.assert_allclose(last.lo, edges[:-1])
    np.testing.assert_allclose(last.hi, edges[1:])
    which = np.digitize(p, edges) - 1
    for b in range(15):
        if counts[b]:
            assert last.mean_pred[b] == pytest.approx(p[which == b].mean(), rel=1e-12)
            assert last.frac_pos[b] == pytest.approx(y[which == b].mean(), rel=1e-12)
        else:
            assert math.isnan(last.mean_pred[b]) and math.isnan(last.frac_pos[b])
    assert c[c.epoch == 1]["count"].sum() == 150

    t = pd.read_csv(tmp_path / "topk_hours.csv")
    assert tuple(t.columns) == TOPK_HEADER
    for epoch in (1, 2):
        rows = t[t.epoch == epoch]
        assert rows.hour.tolist() == list(range(24))
        np.testing.assert_array_equal(rows.frequency.to_numpy(), freqs[epoch - 1])
    with pytest.raises(ValueError, match=r"shape \(24,\)"):
        top.write(3, np.ones(23))


# --- status.json ------------------------------------------------------------------------------------------


def status_of(run_dir):
    return json.loads((run_dir / "status.json").read_text())


def make_status_trainer(step, tmp_path, oracle=None):
    trainer = Engine(step)
    status = H.RunStatus(tmp_path / "status.json", oracle)
    H.attach_terminate_on_nan(trainer)
    H.attach_status(trainer, status)
    return trainer, status


def test_status_running_then_finished(tmp_path):
    seen = []
    trainer, _ = make_status_trainer(lambda e, b: {"loss": 1.0}, tmp_path, oracle={"auc": 0.8})
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: seen.append(status_of(tmp_path)))
    trainer.run(range(3), max_epochs=2)
    assert {s["state"] for s in seen} == {"running"}
    assert [s["epoch"] for s in seen] == [0, 0, 0, 1, 1, 1]  # updated at each epoch end
    final = status_of(tmp_path)
    assert final["state"] == "finished" and final["epoch"] == 2 and final["iteration"] == 6
    assert final["pid"] > 0 and final["oracle"] == {"auc": 0.8} and "reason" not in final
    assert final["started"] <= final["updated"] and final["finished"] is not None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", final["finished"])
    assert not [p for p in tmp_path.iterdir() if p.name != "status.json"]  # no temp files left


def test_status_exception_is_failed_and_reraised(tmp_path):
    def step(engine, batch):
        if engine.state.iteration == 4:
            raise ValueError("bad batch 42")
        return {"loss": 1.0}

    trainer, _ = make_status_trainer(step, tmp_path)
    with pytest.raises(ValueError, match="bad batch 42"):
        trainer.run(range(3), max_epochs=3)
    st = status_of(tmp_path)
    assert st["state"] == "failed" and st["reason"] == "ValueError: bad batch 42"
    assert st["iteration"] == 4 and st["epoch"] == 2


def test_status_nan_is_failed_with_iteration(tmp_path):
    losses = [1.0, 0.5, float("nan"), 0.2, 0.1, 0.1]
    trainer, _ = make_status_trainer(
        lambda e, b: {"loss": losses[e.state.iteration - 1], "lr": 0.1}, tmp_path
    )
    state = trainer.run(range(2), max_epochs=3)
    assert state.iteration == 3
    st = status_of(tmp_path)
    assert st["state"] == "failed" and st["reason"] == "non-finite loss at iteration 3"


def test_status_nan_detected_with_plain_terminate_on_nan(tmp_path):
    from ignite.handlers import TerminateOnNan

    trainer = Engine(lambda e, b: {"loss": torch.tensor(float("inf")) if e.state.iteration == 2 else 1.0})
    trainer.add_event_handler(Events.ITERATION_COMPLETED, TerminateOnNan())
    H.attach_status(trainer, H.RunStatus(tmp_path / "status.json"))
    trainer.run(range(4), max_epochs=1)
    assert status_of(tmp_path)["reason"] == "non-finite loss at iteration 2"


def test_early_termination_without_nan_is_finished(tmp_path):
    trainer, _ = make_status_trainer(lambda e, b: {"loss": 1.0}, tmp_path)
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda e: e.terminate())
    trainer.run(range(2), max_epochs=5)
    st = status_of(tmp_path)
    assert st["state"] == "finished" and st["epoch"] == 2 and "reason" not in st


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt(), H.SigtermInterrupt("stopped by SIGTERM")])
def test_status_keyboard_interrupt_is_stopped_and_reraised(tmp_path, interrupt):
    def step(engine, batch):
        if engine.state.iteration == 2:
            raise interrupt
        return {"loss": 1.0}

    trainer, _ = make_status_trainer(step, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        trainer.run(range(3), max_epochs=2)
    st = status_of(tmp_path)
    assert st["state"] == "stopped" and st["iteration"] == 2
    assert st["reason"] == (str(interrupt) or "interrupted (KeyboardInterrupt)")


def test_sigterm_becomes_stopped(tmp_path):
    import os
    import signal

    old = signal.getsignal(signal.SIGTERM)
    try:
        H.install_sigterm_handler()

        def step(engine, batch):
            if engine.state.iteration == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return {"loss": 1.0}

        trainer, _ = make_status_trainer(step, tmp_path)
        with pytest.raises(KeyboardInterrupt):
            trainer.run(range(5), max_epochs=1)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert status_of(tmp_path)["state"] == "stopped"
    assert status_of(tmp_path)["reason"] == "stopped by SIGTERM"


def test_status_resume_keeps_started_and_best(tmp_path):
    first = H.RunStatus(tmp_path / "status.json", {"auc": 0.8})
    first.running()
    first.set_best("auc", np.float64(0.7), 1, "checkpoints/best_epoch=1_auc=0.7000.pt")
    first.stopped("interrupted")
    started = status_of(tmp_path)["started"]
    again = H.RunStatus(tmp_path / "status.json")
    again.running(1, 10)
    st = status_of(tmp_path)
    assert st["started"] == started and st["state"] == "running" and "reason" not in st
    assert st["finished"] is None and st["best"]["value"] == 0.7 and st["oracle"] == {"auc": 0.8}


def test_status_writes_are_atomic_for_a_concurrent_reader(tmp_path):
    status = H.RunStatus(tmp_path / "status.json", {"pad": "x" * 20000})  # big enough to need several writes
    status.running()
    stop, bad = threading.Event(), []

    def reader():
        while not stop.is_set():
            try:
                json.loads((tmp_path / "status.json").read_text())
            except ValueError as err:
                bad.append(err)

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(60):
        status.progress(i, i * 10)
    stop.set()
    thread.join()
    assert not bad
    assert status_of(tmp_path)["iteration"] == 590


# --- checkpoints, early stopping, resume ------------------------------------------------------------------


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


# --- logging ----------------------------------------------------------------------------------------------


def test_setup_logging_same_lines_on_console_and_file(tmp_path):
    stream = io.StringIO()
    logger = H.setup_logging(tmp_path, stream=stream)
    logger = H.setup_logging(tmp_path, stream=stream)  # again: no duplicated handlers
    trainer = Engine(lambda e, b: None)

    @trainer.on(Events.ITERATION_COMPLETED)
    def running(engine):
        engine.state.metrics = {"loss": 0.4321}

    evaluator = fake_evaluator(
        [{"loss": 0.5, "auc": 0.75, "brier": 0.18, "ece": float("nan"), "post_mse": 1.2, "policy_value": 0.8}]
    )
    validate_each_epoch(trainer, evaluator)
    H.attach_epoch_summary(trainer, evaluator, logger)
    trainer.run([0], max_epochs=2)
    for h in logger.handlers:
        h.flush()
    file_lines = (tmp_path / "train.log").read_text().splitlines()
    assert file_lines == stream.getvalue().splitlines()
    assert len(file_lines) == 2
    assert re.search(
        r"INFO epoch 2/2 \| train loss 0\.4321 \| val loss 0\.5000 auc 0\.7500 brier 0\.1800 ece n/a "
        r"post_mse 1\.2000 policy_value 0\.8000 \| \d+\.\ds$",
        file_lines[1],
    )
    H.setup_logging(None, stream=io.StringIO())  # detach the file handler from later tests
    logging.getLogger("aline").info("after")
    assert "after" not in (tmp_path / "train.log").read_text()


# --- W&B --------------------------------------------------------------------------------------------------


def test_wandb_missing_package_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb → ImportError
    cfg = Config.model_validate({"logging": {"wandb": True}})
    with pytest.raises(ModuleNotFoundError, match=re.escape("pip install 'aline[wandb]'")):
        H.attach_wandb(Engine(lambda e, b: None), Engine(lambda e, b: None), cfg)
    assert H.attach_wandb(Engine(lambda e, b: None), Engine(lambda e, b: None), Config()) is None


def test_wandb_logs_scalars_through_ignite_logger(monkeypatch, tmp_path):
    calls = {"init": [], "log": []}
    fake = types.ModuleType("wandb")
    fake.init = lambda *a, **k: calls["init"].append(k)
    fake.log = lambda data, step=None, **k: calls["log"].append((step, dict(data)))
    fake.finish = lambda: None
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = Config.model_validate({"logging": {"wandb": True, "wandb_mode": "offline"}, "run": {"name": "t1"}})
    trainer = Engine(lambda e, b: None)

    @trainer.on(Events.ITERATION_COMPLETED)
    def running(engine):
        engine.state.metrics = {"loss": float(engine.state.iteration), "lr": 0.1, "grad_norm": float("nan")}

    evaluator = fake_evaluator([{"auc": 0.7, "loss": 0.3, "calibration": object()}])
    validate_each_epoch(trainer, evaluator)
    wb = H.attach_wandb(trainer, evaluator, cfg, run_dir=tmp_path, every=2)
    trainer.run(range(4), max_epochs=1)
    wb.close()
    (init,) = calls["init"]
    assert init["mode"] == "offline" and init["project"] == "aline" and init["dir"] == str(tmp_path)
    assert init["config"]["run"]["name"] == "t1"
    assert calls["log"] == [
        (2, {"train/loss": 2.0, "train/lr": 0.1}),
        (4, {"train/loss": 4.0, "train/lr": 0.1}),
        (4, {"val/loss": 0.3, "val/auc": 0.7, "epoch": 1}),
    ]


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
