"""Console progress of a training run: a live bar on a terminal, a few plain lines per epoch elsewhere.

On a terminal, ignite's ``ProgressBar`` redraws one line in place. Redirected to a file (CI, ``> train.log``)
every redraw would land in the file as its own line (about 150 per epoch), so there the trainer writes one
short line each time another ``every_pct`` percent of the epoch is done, and one at the end of the epoch.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO

from ignite.engine import Engine, Events

DEFAULT_EVERY_PCT = 10.0


def attach_progress(
    trainer: Engine,
    metric_names: list[str],
    stream: TextIO | None = None,
    every_pct: float = DEFAULT_EVERY_PCT,
) -> None:
    """Report the trainer's progress on ``stream`` (stderr by default): ignite's ``ProgressBar`` when the
    stream is a terminal, else a plain line every ``every_pct`` percent of an epoch (no carriage returns).

    ``metric_names`` are read from ``engine.state.metrics`` or, for the running loss, from
    ``engine.state.output`` when it is a dict (as the bar does).
    """
    stream = sys.stderr if stream is None else stream
    if _is_tty(stream):
        from ignite.handlers import ProgressBar

        ProgressBar(persist=False, file=stream).attach(trainer, metric_names=metric_names)
        return
    PlainProgress(stream, metric_names, every_pct).attach(trainer)


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real file
        return False


class PlainProgress:
    """Writes ``epoch 3/20  40% (120/300)  loss 0.6123  12.3 it/s`` lines at fixed shares of an epoch."""

    def __init__(self, stream: TextIO, metric_names: list[str], every_pct: float) -> None:
        if not 0 < every_pct <= 100:
            raise ValueError(f"every_pct must be in (0, 100], got {every_pct}")
        self.stream = stream
        self.metric_names = list(metric_names)
        self.every_pct = every_pct
        self._next_pct = every_pct
        self._t0 = 0.0

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)

    def _epoch_started(self, engine: Engine) -> None:
        self._next_pct = self.every_pct
        self._t0 = time.perf_counter()

    def _iteration(self, engine: Engine) -> None:
        total = engine.state.epoch_length
        if not total:
            return
        done = (engine.state.iteration - 1) % total + 1  # iterations done in this epoch
        pct = 100.0 * done / total
        if pct + 1e-9 < self._next_pct and done != total:
            return
        # Skip the marks already passed (an epoch shorter than 100 / every_pct iterations).
        self._next_pct = (math.floor(pct / self.every_pct + 1e-9) + 1) * self.every_pct
        elapsed = time.perf_counter() - self._t0
        rate = f"  {done / elapsed:.1f} it/s" if elapsed > 0 else ""
        max_epochs = engine.state.max_epochs
        parts = [f"epoch {engine.state.epoch}/{max_epochs}", f"{pct:3.0f}% ({done}/{total})"]
        parts += [
            f"{name} {v:.4g}" for name in self.metric_names if (v := self._value(engine, name)) is not None
        ]
        self.stream.write("  ".join(parts) + rate + "\n")
        self.stream.flush()

    @staticmethod
    def _value(engine: Engine, name: str) -> float | None:
        value = engine.state.metrics.get(name)
        if value is None and isinstance(engine.state.output, dict):
            value = engine.state.output.get(name)
        try:
            return float(value) if value is not None else None
        except (TypeError, ValueError):
            return None
