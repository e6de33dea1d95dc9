"""Helpers for the hostile-file tests: a tiny real run, copies of it, the CLIs as real subprocesses, and a
snapshot of a folder's bytes to prove that nothing outside a run folder changed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "model.d_model=16",
    "model.heads=2",
    "model.layers=1",
    "model.ff_dim=32",
    "trainer.batch_size=16",
    "trainer.eval_batch_size=64",
    "trainer.log_every=1",
    "logging.progress=false",
    "sched.warmup_epochs=0.5",
]


@dataclass
class Made:
    data: Path  # the simulated data folder (prefix "sim")
    run: Path  # a finished one-epoch run trained on it


def make_data(out: Path) -> Path:
    from aline.simulate import simulate

    simulate(subjects=12, days=4, seed=5, out_dir=out, progress=False)
    return out


def train_args(data: Path, runs: Path, *extra: str) -> list[str]:
    return [f"data.dir={data}", f"run.dir={runs}", *TINY, *extra]


def make_run(base: Path, epochs: int = 1) -> Made:
    """A finished run of the real trainer, trained in this process on tiny simulated data."""
    import torch

    from aline.config import load_config
    from aline.train import train

    data = make_data(base / "data")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = load_config(None, train_args(data, base / "runs", f"trainer.epochs={epochs}"))
        result = train(cfg, announce=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    return Made(data, result.run_dir)


def copy_run(run: Path, where: Path) -> Path:
    """A copy of ``run`` inside ``where/runs/`` (the copy's folder is new, its files are the run's)."""
    dest = where / "runs" / run.name
    shutil.copytree(run, dest, symlinks=True)
    return dest


def env() -> dict[str, str]:
    # One thread in every process, the test's own included (fixture one_torch_thread): identical sums.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def cli(module: str, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m <module> argv...`` in a fresh interpreter, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, argv)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` (links not followed): its bytes and mtime, to compare before/after."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(folder))] = (path.read_bytes(), path.stat().st_mtime_ns)
    return out


def one_line_error(stderr: str) -> str:
    """The stderr of a refused command: one ``error: ...`` line, no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]
