"""Tests of aline.training.handlers.logs (CSV logs, logging, W&B), each on a real ignite Engine with tiny
fake data."""

from __future__ import annotations

import csv
import io
import logging
import math
import re
import sys
import types

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.engines import fake_evaluator, validate_each_epoch
from ignite.engine import Engine, Events

from aline.config import Config
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

pytestmark = pytest.mark.usefixtures("restore_aline_logger")


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
