"""Tests of aline.training.handlers.status (status.json, SIGTERM, NaN), each on a real ignite Engine."""

from __future__ import annotations

import json
import re
import threading

import numpy as np
import pytest
import torch
from helpers.engines import status_of
from ignite.engine import Engine, Events

from aline.training import handlers as H

pytestmark = pytest.mark.usefixtures("restore_aline_logger")


# --- status.json ------------------------------------------------------------------------------------------


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
