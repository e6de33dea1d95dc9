"""aline.training.launch.Launch: how a multi-process run starts its ranks, and the one-thread guard that
makes forking them safe."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from aline.config import load_config
from aline.training.launch import Launch


def plan(*overrides: str, may_fork: bool = False) -> Launch:
    return Launch.plan(load_config(None, list(overrides)), may_fork)


TWO = ("dist.nproc_per_node=2", "dist.backend=gloo")


@pytest.mark.parametrize(
    ("method", "may_fork", "expected"),
    [("auto", True, "fork"), ("auto", False, "spawn"), ("spawn", True, "spawn"), ("fork", False, "fork")],
)
def test_auto_forks_only_for_a_caller_that_vouches_for_its_process(method, may_fork, expected) -> None:
    launch = plan(*TWO, f"dist.start_method={method}", may_fork=may_fork)
    assert launch.method == expected and launch.forks == (expected == "fork")


def test_auto_spawns_gpu_ranks_and_off_linux(monkeypatch) -> None:
    # nccl ranks hold CUDA contexts, which do not survive a fork.
    assert plan("dist.nproc_per_node=2", "dist.backend=nccl", "device=cpu", may_fork=True).method == "spawn"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert plan(*TWO, may_fork=True).method == "spawn"  # device=auto would put the gloo ranks on a GPU
    assert plan(*TWO, "device=cpu", may_fork=True).method == "fork"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert plan(*TWO, "device=cpu", may_fork=True).method == "spawn"


def test_one_process_starts_no_ranks_and_keeps_every_thread() -> None:
    launch = plan(may_fork=True)
    assert launch.nproc is None and not launch.forks
    assert launch.threads == torch.get_num_threads()


def test_ranks_share_the_cores_unless_the_user_set_omp_num_threads(monkeypatch) -> None:
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert plan("dist.nproc_per_node=3", "dist.backend=gloo").threads == 2  # 8 // 3
    assert plan("dist.nproc_per_node=16", "dist.backend=gloo").threads == 1  # never 0
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    assert plan("dist.nproc_per_node=3", "dist.backend=gloo").threads == 8


def test_no_thread_pool_holds_torch_at_one_thread_only_for_a_forking_launch() -> None:
    before = torch.get_num_threads()
    with plan(*TWO, "dist.start_method=fork").no_thread_pool():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with plan(*TWO, "dist.start_method=spawn").no_thread_pool():
        assert torch.get_num_threads() == before


@pytest.mark.skipif(sys.platform != "linux", reason="fork and GNU OpenMP: the platform the guard is for")
def test_a_child_forked_after_guarded_torch_work_runs_its_own_parallel_ops() -> None:
    """The hazard and the guard, in a fresh interpreter (this test process has run OpenMP threads): a
    multi-threaded matmul in the parent, made under no_thread_pool, then fork; the child's own 2-thread
    matmul must return. Without the guard it hangs (measured), which the timeout would report."""
    script = textwrap.dedent(
        """
        import os, torch
        from aline.config import load_config
        from aline.training.launch import Launch
        launch = Launch.plan(load_config(None, ["dist.nproc_per_node=2", "dist.backend=gloo",
                                                "dist.start_method=fork"]))
        with launch.no_thread_pool():
            a = torch.randn(1500, 1500)
            (a @ a).sum()
        pid = os.fork()
        if pid == 0:
            torch.set_num_threads(2)
            b = torch.randn(1500, 1500)
            print("child", float((b @ b).abs().sum() > 0), flush=True)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print("exit", os.waitstatus_to_exitcode(status))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["child", "1.0", "exit", "0"]


def _run_script(body: str) -> subprocess.CompletedProcess:
    """``body`` in a fresh interpreter (forking from this test process, which has run OpenMP threads, could
    hang), with run_ranks and a fork launch of two gloo ranks at hand."""
    head = """
        import os, signal, sys
        import ignite.distributed as idist
        from aline.training.launch import Launch, RankFailed, run_ranks
        TWO = Launch(backend="gloo", nproc=2, method="fork", threads=1)
        """
    script = textwrap.dedent(head) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)


@pytest.mark.skipif(sys.platform != "linux", reason="forked ranks: Linux only (Launch.plan)")
def test_a_fork_launch_runs_rank_0_in_the_launcher_and_forks_the_others() -> None:
    proc = _run_script(
        """
        launcher = os.getpid()
        def report(local_rank):
            where = "launcher" if os.getpid() == launcher else "child"
            seen = idist.all_gather(idist.get_rank())  # a collective across both processes
            line = f"rank {idist.get_rank()} of {idist.get_world_size()} in {where}; saw {sorted(seen)}\\n"
            os.write(1, line.encode())  # one write per line: the two processes share the pipe
        run_ranks(TWO, report)
        print("after:", os.environ.get("RANK"), os.environ.get("WORLD_SIZE"))
        """
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line]
    assert sorted(lines[:2]) == ["rank 0 of 2 in launcher; saw [0, 1]", "rank 1 of 2 in child; saw [0, 1]"]
    assert lines[2:] == ["after: None None"]  # the launcher's environment is as it was


@pytest.mark.skipif(sys.platform != "linux", reason="forked ranks: Linux only (Launch.plan)")
@pytest.mark.parametrize(
    ("failure", "reported"),
    [
        # A Python error: sent to the launcher before rank 1's process group closes.
        ('raise ValueError("rank one broke")', "rank 1: ValueError: rank one broke"),
        # No Python error to send (the kernel's OOM killer, a kill -9): how the rank ended.
        ("os.kill(os.getpid(), signal.SIGKILL)", "rank 1 was killed by SIGKILL"),
    ],
)
def test_a_forked_rank_that_fails_alone_is_reported_by_the_launcher(failure: str, reported: str) -> None:
    """Rank 1 fails while rank 0 waits for it in a collective: rank 0 must not hang, and what the launcher
    reports is rank 1's fate, not only that its peer went away."""
    proc = _run_script(
        f"""
        def fn(local_rank):
            if idist.get_rank() == 1:
                {failure}
            idist.barrier()
        try:
            run_ranks(TWO, fn)
        except RankFailed as err:
            print("RankFailed:", err)
        """
    )
    assert f"RankFailed: {reported}" in proc.stdout, proc.stderr[-3000:]
