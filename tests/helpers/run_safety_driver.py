"""``python tests/helpers/run_safety_driver.py HOOK [train args]``: ``aline.train.main``, one fault injected.

Used by tests/test_run_safety.py to stop a real training process at exact points. HOOK is one of

* ``pause-after-train-row:N:MARKER`` — after metrics.csv's train row of iteration N, create MARKER and
  sleep (the test then tries a second writer and kills this one with SIGKILL);
* ``kill-in-checkpoint-write:K`` — SIGKILL in the middle of the K-th ``last.pt`` write of this process
  (half the bytes are in the temporary file);
* ``kill-after-calibration:E`` — SIGKILL right after epoch E's calibration rows (before topk_hours.csv
  and before ``last.pt``);
* ``nan-gradient-at:N`` — at training step N the loss is scaled by 1e12 (finite) and its gradient is NaN.

Then it runs the trainer's console entry point (``aline.train.cli``, or ``main`` in versions without it).

Only public classes of ``aline.training.handlers`` / ``aline.training.engine`` are patched, so the same
driver runs against older versions of the trainer.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import time
from pathlib import Path

import torch

import aline.train as train_mod
from aline import contract

try:
    from aline.training import engine as engine_mod
    from aline.training import handlers
except ImportError:  # versions before the modules were grouped by concern
    import aline.engine as engine_mod  # type: ignore[no-redef]

    from aline import handlers  # type: ignore[no-redef]


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(hook: str) -> None:
    name, _, arg = hook.partition(":")
    if name == "pause-after-train-row":
        target, marker = arg.split(":", 1)
        original_row = handlers.MetricsCSV.write_row

        def write_row(self, split, epoch, iteration, metrics, when=None):
            original_row(self, split, epoch, iteration, metrics, when)
            if split == "train" and int(iteration) == int(target):
                Path(marker).write_text(str(os.getpid()))
                time.sleep(600)

        handlers.MetricsCSV.write_row = write_row
    elif name == "kill-in-checkpoint-write":
        saves = {"n": 0}
        original_save = handlers.LastCheckpoint.save

        def save(self):
            saves["n"] += 1
            if saves["n"] != int(arg):
                return original_save(self)
            buf = io.BytesIO()
            torch.save(self.state(), buf)
            data = buf.getvalue()
            with contract.atomic_write(self.path, "wb") as fh:
                fh.write(data[: len(data) // 2])
                fh.flush()
                os.fsync(fh.fileno())
                _die()

        handlers.LastCheckpoint.save = save
    elif name == "kill-after-calibration":
        original_write = handlers.CalibrationCSV.write

        def write(self, epoch, table):
            original_write(self, epoch, table)
            if int(epoch) == int(arg):
                _die()

        handlers.CalibrationCSV.write = write
    elif name == "nan-gradient-at":
        # The trainer's step loss: loop_loss since the closed loop, composite_loss before it.
        loss_name = "loop_loss" if hasattr(engine_mod, "loop_loss") else "composite_loss"
        real = getattr(engine_mod, loss_name)
        steps = {"n": 0}

        def poisoned(*args, **kwargs):
            parts = real(*args, **kwargs)
            if torch.is_grad_enabled():  # training steps only; validation runs under no_grad
                steps["n"] += 1
                if steps["n"] == int(arg):
                    parts.total.register_hook(lambda grad: grad * float("nan"))
                    parts.total = parts.total * 1e12
            return parts

        setattr(engine_mod, loss_name, poisoned)
    else:
        raise SystemExit(f"unknown hook {hook!r}")


if __name__ == "__main__":
    install(sys.argv[1])
    sys.argv = [sys.argv[0], *sys.argv[2:]]
    if hasattr(train_mod, "cli"):
        train_mod.cli()
    sys.exit(train_mod.main())
