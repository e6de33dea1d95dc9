"""Issue 30, finding 8: a run killed before its first ``last.pt`` is started again from scratch by
``--resume`` (same config, same seed, same result), and the monitor shows it as never started meanwhile."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.hostile import ROOT, cli, env, make_data, train_args

from aline import contract as C

DRIVER = ROOT / "tests" / "helpers" / "hostile_driver.py"


def without_time(path: Path) -> bytes:
    return b"".join(line.split(b",", 1)[1] for line in path.read_bytes().splitlines(keepends=True))


@pytest.mark.slow
def test_f8_a_run_killed_before_its_first_checkpoint_starts_again(tmp_path: Path) -> None:
    from aline.monitor.runview import RunData, summarize

    data = make_data(tmp_path / "data")
    runs = tmp_path / "runs"
    args = train_args(data, runs, "trainer.epochs=1", "seed=3")
    killed = subprocess.run(
        [sys.executable, str(DRIVER), "kill-at-setup", *args], env=env(), capture_output=True, text=True
    )
    assert killed.returncode == -9, killed.stderr
    (run,) = list(runs.iterdir())
    assert not (run / C.CHECKPOINT_DIR / C.LAST_CHECKPOINT).exists()

    view = RunData(runs, run.name)
    view.refresh(tables=False)
    summary = summarize(view)
    assert summary.state == "never started"
    assert f"python -m aline.train --resume {run}" in summary.note

    resumed = cli("aline.train", "--resume", run)
    assert resumed.returncode == 0, resumed.stderr
    assert "never started" in resumed.stderr + resumed.stdout

    reference = cli("aline.train", *train_args(data, tmp_path / "ref", "trainer.epochs=1", "seed=3"))
    assert reference.returncode == 0, reference.stderr
    (ref,) = list((tmp_path / "ref").iterdir())
    for name in (C.METRICS_FILE, C.CALIBRATION_FILE, C.TOPK_FILE):
        assert without_time(run / name) == without_time(ref / name), name
    ours = torch.load(run / C.CHECKPOINT_DIR / C.LAST_CHECKPOINT, weights_only=True)["model"]
    theirs = torch.load(ref / C.CHECKPOINT_DIR / C.LAST_CHECKPOINT, weights_only=True)["model"]
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    view.refresh(tables=False)
    assert summarize(view).state == C.STATE_FINISHED
