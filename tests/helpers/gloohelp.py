"""How the multi-process tests of our own pieces (metrics, closed-loop validation, handlers) start their
two gloo ranks: forked from a forkserver that has already imported what the ranks need.

ignite's default, ``spawn``, starts each rank as a fresh interpreter that imports torch, ignite, pandas and
the test module again, which is most of those tests' time. The
forkserver pays that once per pytest process and forks every rank from it; the ranks remain two separate
processes in a real gloo process group. Plain ``fork`` would be cheaper still but is unsafe: a child forked
from a process that has already run OpenMP threads (any test process) hangs in its first parallel op.

The trainer's own launch (``dist.nproc_per_node``, torchrun) keeps ``spawn``: tests/test_train.py runs it
as users do.
"""

from __future__ import annotations

import multiprocessing

# What the ranks' functions and their test modules import (a module missing here is imported by each rank).
PRELOAD = (
    "torch",
    "ignite.distributed",
    "ignite.engine",
    "pandas",
    "sklearn.metrics",
    "aline.train",
    "pytest",
)


def start_method() -> str:
    """``start_method=`` for ``idist.spawn`` / ``idist.Parallel``. The preload list counts only before the
    forkserver first starts; this process's environment and ``sys.path`` (the tests folder) go with it."""
    multiprocessing.set_forkserver_preload(list(PRELOAD))
    return "forkserver"
