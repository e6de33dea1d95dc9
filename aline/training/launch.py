"""How a run's processes start: one process; or N ranks, rank 0 in the launcher and the others forked from it;
or N ranks spawned by ignite.

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

__all__ = ["Launch", "RankFailed", "rank_data", "run_ranks"]


@dataclass(frozen=True)
class Launch:
    """How the run's processes start: the process group's backend, how many ranks the run has (None: this
    process trains alone) and how they start (``fork``: rank 0 here, the others forked; ``spawn``: all N
    spawned by ignite), and the torch threads each rank trains with.

    A forked rank shares the launcher's pages (the interpreter, torch, ignite), which a spawned rank holds
    privately. GNU OpenMP, torch's CPU thread pool, is not fork-safe: a child forked after its parent ran a
    multi-threaded torch operation hangs in its first one (with the parent's operation on one thread, it
    runs). So a forking launcher keeps torch on one thread
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
            # The ranks share the cores: N ranks of all-core thread pools oversubscribe them and train far
            # slower than one process (docs/results.md). A user's OMP_NUM_THREADS wins.
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
    if launch.forks:
        _run_forked(launch, fn, *args)
        return
    extra: dict[str, Any] = {}
    if launch.nproc:
        extra["start_method"] = launch.method
        # A fixed rendezvous port (ignite's default 2222) makes two multi-process runs on one machine
        # collide: a started group takes a free port unless the user named one.
        if "MASTER_PORT" not in os.environ:
            extra["master_port"] = _free_port()
    with idist.Parallel(backend=launch.backend, nproc_per_node=launch.nproc, **extra) as parallel:
        try:
            parallel.run(_in_rank, launch, fn, *args)
        except KeyboardInterrupt:
            if launch.nproc:
                _stop_ranks(multiprocessing.active_children())
            raise


class RankFailed(RuntimeError):
    """A forked rank ended with an error (its message) or was killed."""


def _run_forked(launch: Launch, fn: Callable[..., None], *args: Any) -> None:
    """This process is rank 0; ranks 1..N-1 are forked from it, and each joins the process group as a
    torchrun-started one does (``ignite.distributed.Parallel`` from the environment).

    Why not let ignite fork all N: the launcher then only waits, yet holds its own memory (the loaded data's
    bookkeeping, the Python heap it imported), and every rank copies the pages of that heap it writes to.
    With rank 0 here, a 2-process run holds one copy less (docs/results.md, "Data at scale"). Only rank 0
    writes files, so a rank that must be stopped loses nothing."""
    group = {
        "MASTER_ADDR": os.environ.get("MASTER_ADDR", "127.0.0.1"),
        # A fixed port would make two runs on one machine collide: a free one unless the user named one.
        "MASTER_PORT": os.environ.get("MASTER_PORT") or str(_free_port()),
        "WORLD_SIZE": str(launch.nproc),
        "LOCAL_WORLD_SIZE": str(launch.nproc),
    }
    context = multiprocessing.get_context("fork")
    errors = context.SimpleQueue()  # "rank r: error" of a rank whose fn raised
    ranks = []
    # What this process holds stays out of the ranks' garbage collections, whose bookkeeping writes would
    # otherwise copy the shared pages into each rank.
    gc.collect()
    gc.freeze()
    try:
        for rank in range(1, launch.nproc):
            proc = context.Process(
                target=_forked_rank, args=(rank, group, errors, launch, fn, *args), name=f"aline-rank-{rank}"
            )
            proc.start()
            ranks.append(proc)
        rank0 = {**group, "RANK": "0", "LOCAL_RANK": "0"}
        with _environ(rank0), idist.Parallel(backend=launch.backend) as parallel:
            parallel.run(_in_rank, launch, fn, *args)
    except BaseException as err:
        # Stopped (Ctrl-C, SIGTERM) or failed here: the other ranks stop too. When this rank only saw its
        # peer go away, what became of the peer (its own error, or how it ended) is the one to report.
        if _lost_peer(err):
            for proc in ranks:
                proc.join(timeout=2.0)  # a peer that went away is on its way out
        ended = _how_ranks_ended(ranks)
        _stop_ranks(ranks, grace_s=10.0)
        failed = _first_error(errors) or ended
        if failed is not None and _lost_peer(err) and not _lost_peer(failed):
            raise RankFailed(failed) from err
        raise
    finally:
        gc.unfreeze()
    for proc in ranks:
        proc.join()
    failed = _first_error(errors) or _how_ranks_ended(ranks)
    if failed is not None:
        raise RankFailed(failed)


def _forked_rank(
    rank: int, group: dict[str, str], errors: Any, launch: Launch, fn: Callable[..., None], *args: Any
) -> None:
    os.environ.update(group, RANK=str(rank), LOCAL_RANK=str(rank))
    with idist.Parallel(backend=launch.backend) as parallel:
        parallel.run(_reporting_rank, rank, errors, launch, fn, *args)


def _reporting_rank(
    local_rank: int, rank: int, errors: Any, launch: Launch, fn: Callable[..., None], *args: Any
) -> None:
    """:func:`_in_rank`, sending an error to the launcher before the process group closes (rank 0 then sees
    its peer go away, and reports this instead)."""
    try:
        _in_rank(local_rank, launch, fn, *args)
    except KeyboardInterrupt:
        raise SystemExit(1) from None  # stopped with rank 0, which reports it
    except BaseException as err:
        errors.put(f"rank {rank}: {type(err).__name__}: {err}"[:2000])  # a pipe's worth at most
        raise


def _first_error(errors: Any) -> str | None:
    return None if errors.empty() else errors.get()


def _how_ranks_ended(ranks: list[multiprocessing.process.BaseProcess]) -> str | None:
    """The forked ranks (1, 2, ...) that have ended other than with success, or None."""
    words = []
    for rank, proc in enumerate(ranks, start=1):
        code = proc.exitcode
        if code is not None and code < 0:
            words.append(f"rank {rank} was killed by {signal.Signals(-code).name}")
        elif code:
            words.append(f"rank {rank} exited with code {code}")
    return "; ".join(words) or None


def _lost_peer(err: BaseException | str) -> bool:
    """Whether an error is a collective failing because another rank went away (gloo's words for it)."""
    text = str(err)
    return any(
        words in text for words in ("Connection closed by peer", "Connection reset by peer", "Broken pipe")
    )


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """``values`` set in ``os.environ`` for the duration, then put back as they were."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _in_rank(local_rank: int, launch: Launch, fn: Callable[..., None], *args: Any) -> None:
    torch.set_num_threads(launch.threads)  # a forked rank inherits the launcher's one thread (Launch)
    if launch.nproc:  # a started rank; a spawned one would die at SIGTERM without a status or last.pt
        install_sigterm_handler(rank=True)
    fn(local_rank, *args)


def _stop_ranks(ranks: list[multiprocessing.process.BaseProcess], grace_s: float = 120.0) -> None:
    """Ctrl-C or SIGTERM reached the launcher: pass SIGTERM on to the ranks and wait for them to stop as a
    single process does (status stopped, a resumable last.pt). A scheduler may signal the launcher alone,
    and ranks left running would go on training with nobody waiting for them (measured: they did)."""
    for proc in ranks:
        if proc.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in ranks:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
