"""``python tests/helpers/hostile_driver.py HOOK [train args]``: ``aline.train`` with one fault injected.

HOOK ``kill-at-setup``: SIGKILL when the run's engines are about to be built, after its folder exists and
before its first ``last.pt``: the window in which a killed run used to be neither resumable nor restartable.
"""

from __future__ import annotations

import os
import signal
import sys

import aline.train as train_mod


def install(hook: str) -> None:
    if hook == "kill-at-setup":

        def setup_run(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)

        train_mod.setup_run = setup_run
    else:
        raise SystemExit(f"unknown hook {hook!r}")


if __name__ == "__main__":
    install(sys.argv[1])
    sys.argv = ["aline.train", *sys.argv[2:]]
    train_mod.cli()
