"""Run discovery, status parsing and the path checks of the monitor's read-only run view."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers.monitor_fixtures import HEADER, append_lines, csv_line, train_row, write_half_run, write_run

from aline import contract as C
from aline.monitor.runview import RunData, list_runs, read_status, resolve_run, runs_root_from, summarize


@pytest.mark.parametrize("name", ["..", ".", "../other", "a/b", "/etc", "", "x\\..\\y"])
def test_names_that_leave_the_root_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="runs folder"):
        resolve_run(tmp_path, name)


def test_symlink_out_of_the_root_is_refused_and_not_listed(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    write_run(root, "20261125-000000-inside")
    write_run(tmp_path, "outside")
    os.symlink(tmp_path / "outside", root / "link")
    with pytest.raises(ValueError, match="outside the runs folder"):
        resolve_run(root, "link")
    assert list_runs(root) == ["20261125-000000-inside"]
    assert resolve_run(root, "20261125-000000-inside") == (root / "20261125-000000-inside").resolve()


def test_list_runs_ignores_files_hidden_and_unrelated_folders(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    write_half_run(root, "20261125-010000-b", header_only=False)
    write_run(root, "20261125-020000-a")
    (root / ".gitkeep").write_text("")
    (root / ".hidden").mkdir()
    (root / "scratch").mkdir()  # no run files at all
    assert list_runs(root) == ["20261125-020000-a", "20261125-010000-b"]
    assert list_runs(tmp_path / "missing") == []


def test_runs_root_precedence() -> None:
    assert runs_root_from(["--runs", "a"], {"ALINE_RUNS": "b"}) == Path("a")
    assert runs_root_from(["--runs=c"], {}) == Path("c")
    assert runs_root_from([], {"ALINE_RUNS": "b"}) == Path("b")
    assert runs_root_from([], {}) == Path("runs")


def test_status_problems_are_described(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    assert "is missing" in read_status(run).problem
    (run / C.STATUS_FILE).write_text('{"state": "running",')
    assert "not valid JSON (line 1" in read_status(run).problem
    (run / C.STATUS_FILE).write_text("[1, 2]")
    assert "JSON list, not an object" in read_status(run).problem
    (run / C.STATUS_FILE).write_text('{"state": "exploded"}')
    assert "'exploded' is not one of running" in read_status(run).problem


def test_status_fields_and_partial_oracle(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    oracle = {"auc": 0.8, "brier": None}  # partial, with a null the trainer wrote for a NaN
    status = {"state": "failed", "reason": "OOM", "epoch": 4, "oracle": oracle, "best": None}
    (run / C.STATUS_FILE).write_text(json.dumps(status))
    st = read_status(run)
    assert (st.state, st.reason, st.epoch, st.problem) == ("failed", "OOM", 4, None)
    assert st.oracle == {"auc": 0.8} and st.best == {}


def test_summary_and_tables_match_the_files(tmp_path: Path) -> None:
    fx = write_run(tmp_path, "r", epochs=4, state=C.STATE_STOPPED, reason="user pressed Ctrl-C", seed=4)
    run = RunData(tmp_path, "r")
    run.refresh()
    s = summarize(run)
    assert (s.state, s.epochs, s.note) == ("stopped", 4, "user pressed Ctrl-C")
    assert s.best_auc == max(r["auc"] for r in fx.val)
    epochs, matrix = run.topk_matrix()
    assert epochs.tolist() == [1, 2, 3, 4]
    for r in fx.topk:
        assert matrix[r["epoch"] - 1, r["hour"]] == r["frequency"]
    cal = run.calibration_for(2)
    want = [r for r in fx.calibration if r["epoch"] == 2]
    np.testing.assert_array_equal(cal["count"], [r["count"] for r in want])
    assert run.calibration_epochs() == [1, 2, 3, 4]
    assert run.metric_at_epoch("ece", 3) == fx.val[2]["ece"]
    assert run.metric_at_epoch("ece", 9) is None


def test_refresh_survives_a_bad_row(tmp_path: Path) -> None:
    write_run(tmp_path, "r")
    with open(tmp_path / "r" / C.TOPK_FILE, "a") as fh:
        fh.write("5,3,lots\n")
    run = RunData(tmp_path, "r")
    run.refresh()
    assert any("topk_hours.csv: line" in e and "'frequency'" in e for e in run.errors)
    assert run.has_metrics


def test_resumed_run_rows_supersede_earlier_ones(tmp_path: Path) -> None:
    # A run resumed from the end of epoch 1 (iteration 4) re-logs iterations 5.. of epoch 2.
    fx = write_run(tmp_path, "r", epochs=2, iters_per_epoch=4, seed=6)
    rng = np.random.default_rng(1)
    relogged = [train_row(rng, 2, i) for i in (5, 6, 7, 8)]
    append_lines(tmp_path / "r" / C.METRICS_FILE, [csv_line(HEADER, r) for r in relogged])
    run = RunData(tmp_path, "r")
    run.refresh()
    x, y = run.series(C.SPLIT_TRAIN, "loss")
    want = [r for r in fx.train if r["iteration"] <= 4] + relogged  # brute force: keep the latest per step
    assert x.tolist() == [r["iteration"] for r in want]
    assert y.tolist() == [r["loss"] for r in want]
    # The validation row of epoch 2 (iteration 8) was logged before the resume and is superseded by nothing
    # later in the val split, so it stays.
    assert run.series(C.SPLIT_VAL, "auc", x="epoch")[0].tolist() == [1.0, 2.0]
