"""Pieces the handler tests share: an evaluator that reports given metrics, validation after each epoch, and
reading a run's status.json. (Their clean ``aline`` logger is the ``restore_aline_logger`` fixture.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events


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


def status_of(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "status.json").read_text())
