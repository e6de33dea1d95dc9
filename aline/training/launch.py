"""How a run's processes start: one process, or N ranks forked or spawned from the launcher.

:class:`Launch` plans it from the config (backend, start method, threads per rank); :func:`rank_data` hands
the loaded splits to the ranks with one copy between all processes; :func:`run_ranks` runs a function in
every rank through ``ignite.distributed.Parallel`` and passes a Ctrl-C or SIGTERM at the launcher on to them.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import ignite.distributed as idist
import torch

from aline.config import Config, ConfigError
from aline.data import RawSplit
from aline.data.shared import SharedSplit, read_only_splits, shared_splits
from aline.training.handlers import install_sigterm_handler

__all__ = ["Launch", "rank_data", "run_ranks"]


@dataclass(frozen=True)
class Launch:
    """How the run's processes start: the process group's backend, how many ranks this process starts
    (None: it trains itself) and by which start method, and the torch threads each rank trains with.

    A forked rank shares the launcher's pages (the interpreter, torch, ignite: about 210 MB that a spawned
    rank holds privately). GNU OpenMP, torch's CPU thread pool, is not fork-safe: a child forked after its
    parent ran a multi-threaded torch operation hangs in its first one (measured: a 2000 x 2000 matmul never
    returned; with the parent's op on one thread, it ran). So a forking launcher keeps torch on one thread
    until the ranks start (:meth:`no_thread_pool`), and each rank then sets ``threads``. ``auto`` forks only
    CPU ranks on Linux, and only for a caller that vouches that nothing ran before (``python -m
    aline.train``); ``train()`` called from Python spawns, since a notebook or a test may have run torch
    already.
    """

    backend: str | None
    nproc: int | None
    method: str
    threads: int

    @classmethod
    def plan(cls, cfg: Config, may_fork: bool = False) -> Launch:
        """ConfigError before anything is created."""
        backend = cfg.dist.backend
        if backend is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        nproc = cfg.dist.nproc_per_node if cfg.dist.nproc_per_node > 1 else None
        if nproc and backend is None:
            raise ConfigError("dist.nproc_per_node > 1 needs dist.backend (gloo on CPU, nccl on GPU)")
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device: cuda was asked for but torch sees no CUDA device")
        method = cfg.dist.start_method
        if method == "auto":
            # Forking is what was measured: Linux, CPU ranks. A CUDA context does not survive a fork, and
            # macOS's system libraries are not fork-safe (Python spawns there by default).
            cpu = backend == "gloo" and (cfg.device == "cpu" or not torch.cuda.is_available())
            method = "fork" if may_fork and cpu and sys.platform == "linux" else "spawn"
        threads = torch.get_num_threads()
        if nproc and "OMP_NUM_THREADS" not in os.environ:
            # The ranks share the cores: N ranks of all-core thread pools left 2 ranks on 2 cores 6x slower
            # than one process (an epoch in 126-140 s against 21 s). A user's OMP_NUM_THREADS wins.
            threads = max(1, threads // nproc)
        return cls(backend, nproc, method, threads)

    @property
    def forks(self) -> bool:
        return self.nproc is not None and self.method == "fork"

    @contextlib.contextmanager
    def no_thread_pool(self) -> Iterator[None]:
        """While this process prepares a forked launch, its torch work runs on one thread (no OpenMP pool
        for the ranks to inherit); the thread count is restored afterwards."""
        if not self.forks:
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)


@contextlib.contextmanager
def rank_data(launch: Launch, splits: dict[str, RawSplit]) -> Iterator[dict[str, RawSplit | SharedSplit]]:
    """The splits as the ranks ``launch`` starts receive them (:func:`open_splits` turns them back into
    arrays), with one copy of the arrays between all processes."""
    if launch.forks:
        # Forked ranks read this process's arrays in place, on pages they share, and share what it
        # imported: so import here what each rank's validation metrics would import for itself.
        read_only_splits(splits)
        import sklearn.metrics  # noqa: F401

        yield splits
    elif launch.nproc:
        # Spawned ranks map one shared copy of the arrays rather than each unpickling its own. This
        # process drops its copy (the caller's dict too) before they start.
        with shared_splits(splits) as shared:
            splits.clear()
            yield shared
    else:
        yield splits


def run_ranks(launch: Launch, fn: Callable[..., None], *args: Any) -> None:
    """``fn(local_rank, *args)`` in every rank ``launch`` starts, or in this process when it starts none."""
    extra: dict[str, Any] = {}
    if launch.nproc:
        extra["start_method"] = launch.method
        # A fixed rendezvous port (ignite's default 2222) makes two multi-process runs on one machine
        # collide: a started group takes a free port unless the user named one.
        if "MASTER_PORT" not in os.environ:
            extra["master_port"] = _free_port()
    with contextlib.ExitStack() as stack:
        if launch.forks:
            # What this process holds stays out of the ranks' garbage collections, whose bookkeeping writes
            # would otherwise copy the shared pages into each rank.
            gc.collect()
            gc.freeze()
            stack.callback(gc.unfreeze)
        with idist.Parallel(backend=launch.backend, nproc_per_node=launch.nproc, **extra) as parallel:
            try:
                parallel.run(_in_rank, launch, fn, *args)
            except KeyboardInterrupt:
                if launch.nproc:
                    _stop_ranks()
                raise


def _in_rank(local_rank: int, launch: Launch, fn: Callable[..., None], *args: Any) -> None:
    torch.set_num_threads(launch.threads)  # a forked rank inherits the launcher's one thread (Launch)
    if launch.nproc:  # a started rank; a spawned one would die at SIGTERM without a status or last.pt
        install_sigterm_handler(rank=True)
    fn(local_rank, *args)


def _stop_ranks(grace_s: float = 120.0) -> None:
    """Ctrl-C or SIGTERM reached the launcher: pass SIGTERM on to the ranks and wait for them to stop as a
    single process does (status stopped, a resumable last.pt). A scheduler may signal the launcher alone,
    and ranks left running would go on training with nobody waiting for them (measured: they did)."""
    ranks = multiprocessing.active_children()
    for proc in ranks:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in ranks:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
