"""``status.json`` and how a run ends: running/finished/failed/stopped, SIGTERM, NaN termination."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import numbers
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import TerminateOnNan

from aline.contract import (
    STATE_FAILED,
    STATE_FINISHED,
    STATE_RUNNING,
    STATE_STOPPED,
    write_json_atomic,
)
from aline.handlers.common import LOGGER_NAME, _is_writer, _number

if TYPE_CHECKING:
    from aline.handlers.checkpoints import LastCheckpoint

# --- status.json ------------------------------------------------------------------------------------------


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunStatus:
    """``status.json``, rewritten atomically on every change.

    Reopening the file of an earlier run (resume) keeps its ``started`` time and ``best`` entry.
    """

    def __init__(self, path: str | os.PathLike[str], oracle: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        previous: dict[str, Any] = {}
        if self.path.exists():
            try:
                previous = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                previous = {}  # written atomically, so this means a foreign file: start afresh
        self.data: dict[str, Any] = {
            "state": STATE_RUNNING,
            "pid": os.getpid(),
            "started": previous.get("started") or utc_now(),
            "updated": None,
            "finished": None,
            "epoch": previous.get("epoch", 0),
            "iteration": previous.get("iteration", 0),
            "max_epochs": previous.get("max_epochs"),
            "best": previous.get("best"),
            "oracle": dict(oracle) if oracle is not None else previous.get("oracle"),
        }

    def _write(self) -> None:
        self.data["updated"] = utc_now()
        if _is_writer():
            write_json_atomic(self.path, self.data)

    def _progress(self, epoch: int | None, iteration: int | None) -> None:
        if epoch is not None:
            self.data["epoch"] = int(epoch)
        if iteration is not None:
            self.data["iteration"] = int(iteration)

    def running(self, epoch: int = 0, iteration: int = 0, max_epochs: int | None = None) -> None:
        self.data.update(state=STATE_RUNNING, pid=os.getpid(), finished=None)
        self.data.pop("reason", None)
        self.data.pop("note", None)
        if max_epochs is not None:
            self.data["max_epochs"] = int(max_epochs)
        self._progress(epoch, iteration)
        self._write()

    def progress(self, epoch: int, iteration: int) -> None:
        self._progress(epoch, iteration)
        self._write()

    def set_best(self, metric: str, value: float, epoch: int, checkpoint: str) -> None:
        self.data["best"] = {
            "metric": metric,
            "value": _number(value),
            "epoch": int(epoch),
            "checkpoint": checkpoint,
        }
        self._write()

    def _end(self, state: str, epoch: int | None, iteration: int | None, reason: str | None) -> None:
        self.data.update(state=state, finished=utc_now())
        if reason is not None:
            self.data["reason"] = reason
        self._progress(epoch, iteration)
        self._write()

    def finished(
        self, epoch: int | None = None, iteration: int | None = None, note: str | None = None
    ) -> None:
        if note is not None:
            self.data["note"] = note
        self._end(STATE_FINISHED, epoch, iteration, None)

    def failed(self, reason: str, epoch: int | None = None, iteration: int | None = None) -> None:
        self._end(STATE_FAILED, epoch, iteration, reason)

    def stopped(self, reason: str, epoch: int | None = None, iteration: int | None = None) -> None:
        self._end(STATE_STOPPED, epoch, iteration, reason)


def _nonfinite_output(output: Any) -> bool:
    values = output.values() if isinstance(output, Mapping) else [output]
    for v in values:
        if isinstance(v, torch.Tensor):
            if not bool(torch.isfinite(v.detach()).all()):
                return True
        elif isinstance(v, numbers.Real) and not math.isfinite(float(v)):
            return True
    return False


def attach_status(
    trainer: Engine,
    status: RunStatus,
    last_checkpoint: LastCheckpoint | None = None,
    cleanup: Sequence[Callable[[], Any]] = (),
) -> None:
    """Keep ``status.json`` in step with the trainer.

    running at STARTED, progress each epoch, finished at COMPLETED — or failed when the run was ended by
    :class:`TerminateOnNan` (the last step output is not finite). On EXCEPTION_RAISED: write ``last.pt``
    (when given) so the run can be resumed, record stopped (KeyboardInterrupt, incl. SIGTERM via
    :func:`install_sigterm_handler`) or failed (anything else) and re-raise. Ignite swallows an exception
    that an EXCEPTION_RAISED handler does not re-raise, so this one always re-raises; it is also the place
    that writes ``last.pt`` on failure, because handlers after a re-raising one never run. ``cleanup``
    callables (closing files, the W&B run) run at the very end, on success and on failure alike.
    """
    handled: list[BaseException] = []  # the exception already recorded (held, so its identity is stable)

    def run_cleanup() -> None:
        for fn in cleanup:
            try:
                fn()
            except Exception as err:  # one failing close must not hide the others or the run's own error
                logging.getLogger(LOGGER_NAME).error("cleanup %r failed: %s", fn, err)

    def started(engine: Engine) -> None:
        status.running(engine.state.epoch, engine.state.iteration, engine.state.max_epochs)

    def epoch_done(engine: Engine) -> None:
        status.progress(engine.state.epoch, engine.state.iteration)

    def completed(engine: Engine) -> None:
        nan_at = getattr(engine.state, "nan_iteration", None)
        if nan_at is None and engine.should_terminate and _nonfinite_output(engine.state.output):
            nan_at = engine.state.iteration
        if nan_at is not None:
            status.failed(
                f"non-finite loss at iteration {nan_at}", engine.state.epoch, engine.state.iteration
            )
        elif engine.should_terminate:
            status.finished(
                engine.state.epoch,
                engine.state.iteration,
                note=f"stopped early after epoch {engine.state.epoch}",
            )
        else:
            status.finished(engine.state.epoch, engine.state.iteration)
        run_cleanup()

    def exception(engine: Engine, err: BaseException) -> None:
        # Ignite fires EXCEPTION_RAISED twice for an error inside an iteration (inner and outer loop).
        if not (handled and handled[0] is err):
            handled[:] = [err]
            # last.pt is left as the latest epoch boundary wrote it (or as STARTED wrote it): a mid-epoch
            # state cannot be resumed exactly, since the loader would restart the epoch's batches.
            epoch, iteration = engine.state.epoch, engine.state.iteration
            if isinstance(err, KeyboardInterrupt):
                status.stopped(str(err) or "interrupted (KeyboardInterrupt)", epoch, iteration)
            else:
                status.failed(f"{type(err).__name__}: {err}", epoch, iteration)
            run_cleanup()
        raise err

    trainer.add_event_handler(Events.STARTED, started)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, epoch_done)
    trainer.add_event_handler(Events.COMPLETED, completed)
    trainer.add_event_handler(Events.EXCEPTION_RAISED, exception)


class SigtermInterrupt(KeyboardInterrupt):
    """SIGTERM turned into an interrupt, so that a killed run ends like Ctrl-C: status stopped, last.pt."""


def install_sigterm_handler() -> None:
    """Make SIGTERM raise :class:`SigtermInterrupt` in the main thread (no-op elsewhere)."""

    def _raise(signum: int, frame: object) -> None:
        raise SigtermInterrupt("stopped by SIGTERM")

    with contextlib.suppress(ValueError):  # not the main thread: signals cannot be set there
        signal.signal(signal.SIGTERM, _raise)


class _RecordingTerminateOnNan(TerminateOnNan):
    """TerminateOnNan that also notes the iteration, so the status can say where the loss went bad."""

    def __call__(self, engine: Engine) -> None:
        already = bool(engine.should_terminate)
        super().__call__(engine)
        if engine.should_terminate and not already:
            engine.state.nan_iteration = engine.state.iteration


def attach_terminate_on_nan(trainer: Engine) -> TerminateOnNan:
    handler = _RecordingTerminateOnNan()
    trainer.add_event_handler(Events.ITERATION_COMPLETED, handler)
    return handler
