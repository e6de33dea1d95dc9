"""``status.json`` and how a run ends: running/finished/failed/stopped, SIGTERM, NaN termination."""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

from aline.contract import (
    HEARTBEAT_INTERVAL_S,
    STATE_FAILED,
    STATE_FINISHED,
    STATE_RUNNING,
    STATE_STOPPED,
)
from aline.runs import RunFolder
from aline.runs.files import RunFileError, read_text
from aline.runs.status import parse_status, status_int
from aline.training.handlers.common import LOGGER_NAME, _is_writer, _number

# --- status.json ------------------------------------------------------------------------------------------


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunStatus:
    """``status.json``, rewritten atomically on every change; the one writer of that file.

    Reopening the file of an earlier run (resume) keeps its ``started`` time and ``best`` entry. While the
    run is running, a daemon thread refreshes ``heartbeat`` every ``HEARTBEAT_INTERVAL_S`` (with ``host``
    and ``pid``, what ``contract.display_state`` needs to tell a live run from an interrupted one). Every
    write, the heartbeat's included, holds one lock, so two writes never interleave.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        oracle: Mapping[str, Any] | None = None,
        oracle_free: bool | None = None,
    ) -> None:
        self.path = Path(path)
        try:
            previous = parse_status(read_text(self.path.parent, self.path), self.path)
        except FileNotFoundError:
            previous = {}
        except (RunFileError, OSError):
            previous = {}  # written atomically, so this means a foreign file: start afresh
        self.data: dict[str, Any] = {
            "state": STATE_RUNNING,
            "run": self.path.parent.name,  # which folder this is (two same-named runs never share one)
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "heartbeat": None,
            "started": previous.get("started") or utc_now(),
            "updated": None,
            "finished": None,
            "epoch": status_int(previous, "epoch"),
            "iteration": status_int(previous, "iteration"),
            "max_epochs": previous.get("max_epochs"),
            "best": previous.get("best"),
            "oracle": dict(oracle) if oracle is not None else previous.get("oracle"),
            # Whether training read no reference column (the run's data.oracle_free, resolved).
            "oracle_free": oracle_free if oracle_free is not None else previous.get("oracle_free"),
        }
        self._lock = threading.RLock()  # every read-modify-write of self.data holds it
        self._stop_beat = threading.Event()
        self._beat_thread: threading.Thread | None = None

    def _write(self) -> None:
        with self._lock:
            now = utc_now()
            self.data["updated"] = now
            if self.data["state"] == STATE_RUNNING:
                self.data["heartbeat"] = now
            if _is_writer():
                RunFolder(self.path.parent).write_status(self.data, self.path.name)

    def beat(self) -> None:
        """Refresh the heartbeat (only while running: a finished run has no owner to prove alive)."""
        with self._lock:
            if self.data["state"] == STATE_RUNNING:
                self._write()

    def _start_heartbeat(self) -> None:
        if self._beat_thread is not None or not _is_writer():
            return
        self._stop_beat.clear()

        def loop() -> None:
            while not self._stop_beat.wait(HEARTBEAT_INTERVAL_S):
                try:
                    self.beat()
                except OSError as err:  # a full disk must not end the run from this thread
                    logging.getLogger(LOGGER_NAME).warning("status heartbeat not written: %s", err)

        self._beat_thread = threading.Thread(target=loop, name="aline-status-heartbeat", daemon=True)
        self._beat_thread.start()

    def stop_heartbeat(self) -> None:
        self._stop_beat.set()
        if self._beat_thread is not None and self._beat_thread is not threading.current_thread():
            self._beat_thread.join(timeout=2 * HEARTBEAT_INTERVAL_S)
        self._beat_thread = None

    def _progress(self, epoch: int | None, iteration: int | None) -> None:
        if epoch is not None:
            self.data["epoch"] = int(epoch)
        if iteration is not None:
            self.data["iteration"] = int(iteration)

    def running(self, epoch: int = 0, iteration: int = 0, max_epochs: int | None = None) -> None:
        with self._lock:
            self.data.update(state=STATE_RUNNING, pid=os.getpid(), finished=None)
            self.data.pop("reason", None)
            self.data.pop("note", None)
            if max_epochs is not None:
                self.data["max_epochs"] = int(max_epochs)
            self._progress(epoch, iteration)
            self._write()
        self._start_heartbeat()

    def progress(self, epoch: int, iteration: int) -> None:
        with self._lock:
            self._progress(epoch, iteration)
            self._write()

    def set_best(self, metric: str, value: float, epoch: int, checkpoint: str) -> None:
        best = {"metric": metric, "value": _number(value), "epoch": int(epoch), "checkpoint": checkpoint}
        with self._lock:
            self.data["best"] = best
            self._write()

    def _end(
        self,
        state: str,
        epoch: int | None,
        iteration: int | None,
        reason: str | None,
        note: str | None = None,
    ) -> None:
        self.stop_heartbeat()  # outside the lock: the thread may be waiting for it
        with self._lock:
            self.data.update(state=state, finished=utc_now())
            if reason is not None:
                self.data["reason"] = reason
            if note is not None:
                self.data["note"] = note
            self._progress(epoch, iteration)
            self._write()

    def finished(
        self, epoch: int | None = None, iteration: int | None = None, note: str | None = None
    ) -> None:
        self._end(STATE_FINISHED, epoch, iteration, None, note)

    def failed(self, reason: str, epoch: int | None = None, iteration: int | None = None) -> None:
        self._end(STATE_FAILED, epoch, iteration, reason)

    def stopped(self, reason: str, epoch: int | None = None, iteration: int | None = None) -> None:
        self._end(STATE_STOPPED, epoch, iteration, reason)


_QUANTITY_NAMES = {"grad_norm": "gradient norm"}


def _nonfinite_quantity(output: Any) -> str | None:
    """The first non-finite quantity of a step's output (losses before the gradient norm), or None."""
    if not isinstance(output, Mapping):
        output = {"loss": output}
    # The total loss first, then its parts, then anything else (grad_norm): name the root cause first.
    order = sorted(output, key=lambda k: (k != "loss", not str(k).startswith("loss"), str(k)))
    for key in order:
        v = output[key]
        if isinstance(v, torch.Tensor):
            bad = not bool(torch.isfinite(v.detach()).all())
        elif isinstance(v, numbers.Real):
            bad = not math.isfinite(float(v))
        else:
            bad = False
        if bad:
            return _QUANTITY_NAMES.get(str(key), str(key))
    return None


def _nonfinite_output(output: Any) -> bool:
    return _nonfinite_quantity(output) is not None


def attach_status(
    trainer: Engine,
    status: RunStatus,
    cleanup: Sequence[Callable[[], Any]] = (),
) -> None:
    """Keep ``status.json`` in step with the trainer.

    running at STARTED, progress each epoch, finished at COMPLETED — or failed when the run was ended by
    :class:`DivergenceGuard` (its reason) or a plain ``TerminateOnNan`` (the output's non-finite quantity).
    On EXCEPTION_RAISED: record stopped (KeyboardInterrupt, incl. SIGTERM via
    :func:`install_sigterm_handler`) or failed (anything else) and re-raise (ignite swallows an exception
    that an EXCEPTION_RAISED handler does not re-raise); ``last.pt`` stays at the last epoch boundary, the
    only state a resume can repeat exactly. ``cleanup`` callables (closing files, the W&B run) run at the
    very end, on success and on failure alike.
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
        reason = getattr(engine.state, "divergence", None)
        if reason is None and engine.should_terminate:
            what = _nonfinite_quantity(engine.state.output)  # a plain TerminateOnNan ended the run
            if what is not None:
                reason = f"non-finite {what} at iteration {engine.state.iteration}"
        if reason is not None:
            status.failed(reason, engine.state.epoch, engine.state.iteration)
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


def install_sigterm_handler(*, rank: bool = False) -> None:
    """Make SIGTERM raise :class:`SigtermInterrupt` in the main thread (no-op elsewhere), once: a second
    SIGTERM is ignored, so that it cannot cut short the writing of status.json and last.pt.

    ``rank=True`` (a process started by the launcher) treats SIGINT the same way: a Ctrl-C reaches every
    process of the terminal's group, and the launcher then passes SIGTERM on to the ranks as well (a
    scheduler may signal the launcher alone); whichever comes first stops the rank, the other is ignored.
    """
    signals = (signal.SIGTERM, signal.SIGINT) if rank else (signal.SIGTERM,)

    def _raise(signum: int, frame: object) -> None:
        for s in signals:
            signal.signal(s, signal.SIG_IGN)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SigtermInterrupt("stopped by SIGTERM")

    with contextlib.suppress(ValueError):  # not the main thread: signals cannot be set there
        for s in signals:
            signal.signal(s, _raise)


class DivergenceGuard:
    """Ends the run at the first iteration whose loss, gradient norm or parameters are not finite.

    Says which quantity it was and where: ``engine.state.divergence`` holds the reason ("non-finite
    gradient norm at iteration 37 (loss 8.1e+12)"), which :func:`attach_status` records, and the reason goes
    to the log (``train.log``). ``on_diverge(engine)`` runs first (the caller logs the failing iteration's
    metrics row there). With several processes the verdict is reduced over all of them, so every rank stops
    at the same iteration; a rank that stopped alone would leave the others waiting in a collective.
    """

    def __init__(
        self,
        parameters: Iterable[tuple[str, torch.Tensor]] = (),
        on_diverge: Callable[[Engine], Any] | None = None,
    ) -> None:
        self.parameters = list(parameters)
        self.on_diverge = on_diverge

    def _bad_parameter(self) -> str | None:
        if not self.parameters:
            return None
        tensors = [p.detach() for _, p in self.parameters]
        if bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):  # one sync in the usual case
            return None
        return next(
            name for name, t in zip(self._names(), tensors, strict=True) if not torch.isfinite(t).all()
        )

    def _names(self) -> list[str]:
        return [name for name, _ in self.parameters]

    def __call__(self, engine: Engine) -> None:
        if getattr(engine.state, "divergence", None) is not None:
            return
        output = engine.state.output
        what = _nonfinite_quantity(output)
        if what is None:
            param = self._bad_parameter()
            what = None if param is None else f"parameter {param}"
        bad = what is not None
        if idist.get_world_size() > 1:
            bad = bool(idist.all_reduce(float(bad), op="MAX"))  # a number: ignite puts it on the right device
            what = what or "value on another process"
        if not bad:
            return
        reason = f"non-finite {what} at iteration {engine.state.iteration}"
        loss = _number(output.get("loss")) if isinstance(output, Mapping) else None
        if what != "loss" and loss is not None:
            reason += f" (loss {loss:.3g})"
        engine.state.divergence = reason
        engine.state.nan_iteration = engine.state.iteration
        if self.on_diverge is not None:
            self.on_diverge(engine)
        logging.getLogger(LOGGER_NAME).error("training diverged: %s", reason)
        engine.terminate()


def attach_terminate_on_nan(
    trainer: Engine,
    model: torch.nn.Module | None = None,
    on_diverge: Callable[[Engine], Any] | None = None,
) -> DivergenceGuard:
    """Attach a :class:`DivergenceGuard` (parameters of ``model`` checked too, when given)."""
    params = [] if model is None else [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    handler = DivergenceGuard(params, on_diverge)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, handler)
    return handler
