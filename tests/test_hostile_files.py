"""Hostile files (issue 30): nothing outside a run folder is touched, a bad file is exit 2 with one line,
checkpoints never pass on torch's unsafe advice, ids are never invented, CSV line numbers are physical.

Each test is named after the finding it covers (f1..f10). Real runs of the trainer, real files, the CLIs
as subprocesses.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers.hostile import Made, cli, copy_run, make_run, one_line_error, snapshot

from aline import contract as C
from aline.config import load_config
from aline.data import DataError, read_split


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Made:
    return make_run(tmp_path_factory.mktemp("hostile"))


def _val(made: Made) -> Path:
    return load_config(made.run / C.CONFIG_FILE).data.split_path("val")


def _outside(tmp_path: Path, like: Path | None = None) -> Path:
    """A sibling of the runs folder holding ``victim.csv``, as another run would have: the CSV ``like``
    (its header and rows) plus 300 rows more, or 300 plain rows."""
    out = tmp_path / "outside"
    out.mkdir()
    text = like.read_text() if like is not None else ""
    (out / "victim.csv").write_text(text + "".join(f"9,{i},0,0,0,0,0\n" for i in range(300)))
    return out


# --- f1: a resume never writes through a link ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", [C.CALIBRATION_FILE, C.LOG_FILE])
def test_f1_resume_refuses_a_run_file_that_is_a_symlink(made: Made, tmp_path: Path, name: str) -> None:
    run = copy_run(made.run, tmp_path)
    outside = _outside(tmp_path, like=run / C.CALIBRATION_FILE)  # another run's calibration.csv
    before = snapshot(outside)
    (run / name).unlink()
    (run / name).symlink_to(outside / "victim.csv")
    proc = cli("aline.train", "--resume", run, "trainer.epochs=2")
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc.stderr)
    assert str(run / name) in line and "symbolic link" in line
    assert snapshot(outside) == before  # not one row lost, not one line appended


# --- f2: one bad run folder never takes the monitor down ---------------------------------------------------


def _bad_runs(root: Path) -> dict[str, str]:
    """Run folders with one hostile file each; returns name -> the word its reason must contain."""
    from helpers.monitor_fixtures import write_run

    bad = {
        "20260101-000001-latin1": (C.STATUS_FILE, b'{"state": "running", "reason": "caf\xe9"}', "UTF-8"),
        "20260101-000002-deep": (C.STATUS_FILE, b"[" * 100_000 + b"]" * 100_000, "nested"),
        "20260101-000003-hugepid": (None, None, None),
        "20260101-000004-badconfig": (C.CONFIG_FILE, b"seed: 1\nname: caf\xe9\n", "UTF-8"),
    }
    words = {}
    for name, (file, content, word) in bad.items():
        write_run(root, name, epochs=1, iters_per_epoch=2)
        if file is not None:
            (root / name / file).write_bytes(content)
            words[name] = word
    status = json.loads((root / "20260101-000003-hugepid" / C.STATUS_FILE).read_text())
    status.update(pid=10**30, host=socket.gethostname())
    (root / "20260101-000003-hugepid" / C.STATUS_FILE).write_text(json.dumps(status))
    return words


def test_f2_runview_reads_each_bad_run_as_unreadable(tmp_path: Path) -> None:
    from helpers.monitor_fixtures import write_run

    from aline.monitor.runview import RunData, summarize

    root = tmp_path / "runs"
    write_run(root, "20260102-000000-good", state=C.STATE_FINISHED, epochs=2)
    words = _bad_runs(root)
    for name, word in words.items():
        run = RunData(root, name)
        run.refresh(tables=True)
        run.config()
        summary = summarize(run)
        if name.endswith("badconfig"):
            cfg, why = run.config()
            assert cfg is None and word in why and "\n" not in why
            assert run.max_epochs() == 10  # status.json's own budget: the bad config changes nothing else
        else:
            assert summary.state == "unreadable", (name, summary)
            assert word in summary.note and "\n" not in summary.note
    huge = RunData(root, "20260101-000003-hugepid")
    huge.refresh(tables=False)
    assert summarize(huge).state == C.STATE_INTERRUPTED  # no process has that pid
    good = RunData(root, "20260102-000000-good")
    good.refresh(tables=False)
    assert summarize(good).state == C.STATE_FINISHED


@pytest.mark.slow
def test_f2_monitor_page_shows_every_run_despite_bad_ones(tmp_path: Path, monkeypatch) -> None:
    from helpers.monitor_fixtures import write_run
    from test_monitor_app import start

    root = tmp_path / "runs"
    write_run(root, "20260102-000000-good", state=C.STATE_FINISHED, epochs=2)
    words = _bad_runs(root)
    at = start(root, monkeypatch, query={"run": ",".join(words)})
    table = at.dataframe[0].value.set_index("run")
    assert table.loc["20260102-000000-good", "state"] == C.STATE_FINISHED
    for name in ("20260101-000001-latin1", "20260101-000002-deep"):
        assert table.loc[name, "state"] == "unreadable"
    assert table.loc["20260101-000003-hugepid", "state"] == C.STATE_INTERRUPTED
    assert any("UTF-8" in w for w in (e.value for e in at.warning))  # the bad config.yaml, said in a line


# --- f3: nothing from a file or the URL is rendered as markdown -------------------------------------------


def _rendered(text: str) -> str:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").render(text)


@pytest.mark.slow
def test_f3_no_markdown_image_from_a_status_reason_or_the_url(tmp_path: Path, monkeypatch) -> None:
    from helpers.monitor_fixtures import write_run
    from test_monitor_app import start

    root = tmp_path / "runs"
    image = "![x](http://127.0.0.1:9/leak.png)"
    write_run(root, "20260102-000000-run", state=C.STATE_FAILED, reason=f"boom {image} <b>bold</b>")
    at = start(root, monkeypatch, query={"run": f"20260102-000000-run,{image}"})
    bodies = [e.value for kind in ("error", "warning", "info", "caption") for e in getattr(at, kind)]
    assert any("boom" in b for b in bodies) and any("leak.png" in b for b in bodies if "boom" not in b)
    for body in bodies:
        html = _rendered(body)
        assert "<img" not in html and "<a " not in html and "<b>" not in html, body


# --- f4: torch's advice never reaches the user -------------------------------------------------------------


def _raw_pickle(path: Path) -> None:
    with path.open("wb") as fh:
        pickle.dump({"model": {"w": Fraction(1, 3)}}, fh)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["evaluate", "predict", "init-from"])
def test_f4_a_raw_pickle_checkpoint_is_named_without_torchs_advice(
    made: Made, tmp_path: Path, command: str
) -> None:
    run = copy_run(made.run, tmp_path)
    best = run / json.loads((run / C.STATUS_FILE).read_text())["best"]["checkpoint"]
    _raw_pickle(best)
    if command == "evaluate":
        proc = cli("aline.evaluate", run, "--quiet", "--no-figures")
    elif command == "predict":
        proc = cli("aline.predict", run, _val(made))
    else:
        from helpers.hostile import train_args

        proc = cli("aline.train", *train_args(made.data, tmp_path / "new"), f"trainer.init_from={run}")
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc.stderr)
    assert best.name in line and "weights_only" not in proc.stderr and "trust" not in proc.stderr


def test_f4_python_api_names_the_file_without_torchs_advice(made: Made, tmp_path: Path) -> None:
    from aline import predict

    evil = tmp_path / "raw.pt"
    _raw_pickle(evil)
    with pytest.raises(ValueError) as caught:
        predict.load(made.run, checkpoint=evil)
    assert str(evil) in str(caught.value) and "weights_only" not in str(caught.value)


# --- f5: a float id that is not a whole int64 is a data error naming the row -----------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 9.3e18, -1e19])
def test_f5_float_window_ids_out_of_int64_are_refused(made: Made, tmp_path: Path, bad: float) -> None:
    frame = pd.read_csv(_val(made))
    frame["window_id"] = frame["window_id"].astype("float64")
    n_windows = frame["window_id"].nunique()
    assert n_windows >= 2
    frame.loc[0:23, "window_id"] = bad  # the first window (rows 1..24)
    frame.loc[24:47, "window_id"] = bad * 2  # and the second
    table = pa.Table.from_pandas(frame, preserve_index=False)
    # From NumPy, NaN is stored as a value (pandas would store it as a null, a missing id).
    ids = pa.array(frame["window_id"].to_numpy(), type=pa.float64())
    table = table.set_column(table.column_names.index("window_id"), "window_id", ids)
    path = tmp_path / "val.parquet"
    pq.write_table(table, path)
    cfg = load_config(made.run / C.CONFIG_FILE)
    with pytest.raises(DataError, match=r"column 'window_id'.*whole numbers.*row 1\b"):
        read_split(path, cfg.data.columns, require_targets=False)


# --- f6: every bad input is exit 2 with one line, no traceback ---------------------------------------------


@pytest.mark.slow
def test_f6_config_with_a_latin1_byte(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"run:\n  name: caf\xe9\n")
    proc = cli("aline.train", "--config", bad)
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc.stderr)
    assert str(bad) in line and "UTF-8" in line and "line 2" in line


@pytest.mark.slow
def test_f6_predict_reads_a_cr_only_csv(made: Made, tmp_path: Path) -> None:
    cr = tmp_path / "cr.csv"
    cr.write_bytes(_val(made).read_bytes().replace(b"\n", b"\r"))
    out = tmp_path / "out.csv"
    proc = cli("aline.predict", made.run, cr, "--out", out)
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 0, proc.stderr
    lf = cli("aline.predict", made.run, _val(made))
    assert out.read_text() == lf.stdout.replace("\r\n", "\n")  # the same predictions as from the LF file


DEEP_NORMALIZER = (C.NORMALIZER_FILE, b"[" * 100_000, "nested")
DEEP_STATUS = (C.STATUS_FILE, b'{"best": ' * 100_000, "nested")
LATIN1_CONFIG = (C.CONFIG_FILE, b"seed: 1\nrun:\n  name: caf\xe9\n", "UTF-8")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "file", "content", "word"),
    [
        *[
            (cmd, *bad)
            for cmd in ("evaluate", "predict")
            for bad in (DEEP_NORMALIZER, DEEP_STATUS, LATIN1_CONFIG)
        ],
        # A resume keeps the normaliser it was trained with, and starts an unusable status.json afresh.
        ("resume", *DEEP_NORMALIZER),
        ("resume", *LATIN1_CONFIG),
    ],
)
def test_f6_hostile_run_files_exit_2(
    made: Made, tmp_path: Path, file: str, content: bytes, word: str, command: str
) -> None:
    run = copy_run(made.run, tmp_path)
    (run / file).write_bytes(content)
    if command == "evaluate":
        proc = cli("aline.evaluate", run, "--quiet", "--no-figures")
    elif command == "predict":
        proc = cli("aline.predict", run, _val(made))
    else:
        proc = cli("aline.train", "--resume", run, "trainer.epochs=2")
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc.stderr)
    assert file in line and word in line


def test_f6_huge_pid_in_status_json_means_the_owner_is_gone(tmp_path: Path) -> None:
    from aline.contract import display_state

    for pid in (10**30, 2**63, -1, 0):
        status = {"state": C.STATE_RUNNING, "pid": pid, "host": socket.gethostname(), "heartbeat": None}
        assert display_state(status) == C.STATE_INTERRUPTED, pid


@pytest.mark.slow
def test_f6_resume_after_a_csv_header_mismatch_marks_the_run_failed(made: Made, tmp_path: Path) -> None:
    run = copy_run(made.run, tmp_path)
    path = run / C.TOPK_FILE
    path.write_text(path.read_text().replace("frequency", "share", 1))
    proc = cli("aline.train", "--resume", run, "trainer.epochs=2")
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc.stderr)
    assert str(path) in line and "'share'" in line
    status = json.loads((run / C.STATUS_FILE).read_text())
    assert status["state"] == C.STATE_FAILED and str(path) in status["reason"]


# --- f7: ignite's temp files are cleaned up too ----------------------------------------------------------


@pytest.mark.slow
def test_f7_resume_removes_ignites_temp_checkpoint(made: Made, tmp_path: Path) -> None:
    run = copy_run(made.run, tmp_path)
    stray = run / C.CHECKPOINT_DIR / "tmpa1b2c3d4"  # what ignite's DiskSaver leaves when killed mid-write
    stray.write_bytes(b"half a checkpoint")
    ours = run / C.CHECKPOINT_DIR / ".last.pt.x1y2.tmp"
    ours.write_bytes(b"half")
    proc = cli("aline.train", "--resume", run, "trainer.epochs=2")
    assert proc.returncode == 0, proc.stderr
    assert not stray.exists() and not ours.exists()
    assert f"removed {stray}" in proc.stdout + proc.stderr
    assert json.loads((run / C.STATUS_FILE).read_text())["epoch"] == 2


# --- f8: a run killed before its first last.pt starts again from scratch -----------------------------------
# (tests/test_hostile_resume.py: it needs a trainer killed at an exact point)

# --- f9: CSV lines of any length; line numbers count physical lines -------------------------------------


def test_f9_a_line_over_one_mib_reads(made: Made, tmp_path: Path) -> None:
    frame = pd.read_csv(_val(made))
    frame["note"] = ""
    frame.loc[5, "note"] = "x" * (3 << 20)  # an ignored column with a 3 MiB cell
    path = tmp_path / "long.csv"
    frame.to_csv(path, index=False)
    cfg = load_config(made.run / C.CONFIG_FILE)
    got = read_split(path, cfg.data.columns, require_targets=False)
    want = read_split(_val(made), cfg.data.columns, require_targets=False)
    np.testing.assert_array_equal(got.features, want.features)
    assert list(got.window_id) == list(want.window_id)


def test_f9_errors_name_physical_lines_after_blank_lines_and_multiline_cells(
    made: Made, tmp_path: Path
) -> None:
    lines = _val(made).read_text().splitlines(keepends=True)
    header = lines[0].rstrip("\n") + ",note\n"
    body = [line.rstrip("\n") + ",\n" for line in lines[1:]]
    body[2] = body[2][:-2] + ',"two\nlines"\n'  # a quoted cell holding a line break
    body.insert(5, "\n")  # two blank lines
    body.insert(6, "\n")
    cols = header.rstrip("\n").split(",")
    feature = load_config(made.run / C.CONFIG_FILE).data.columns.features[0]
    j = cols.index(feature)
    target = 100  # index into body of the row made bad
    cells = body[target].split(",")
    cells[j] = "oops"
    body[target] = ",".join(cells)
    text = header + "".join(body)
    path = tmp_path / "odd.csv"
    path.write_text(text)
    physical = text[: text.index(body[target])].count("\n") + 1  # the 1-based line the bad row starts on
    cfg = load_config(made.run / C.CONFIG_FILE)
    with pytest.raises(DataError) as caught:
        read_split(path, cfg.data.columns, require_targets=False)
    assert f"line {physical} = 'oops'" in str(caught.value), (physical, str(caught.value))


# --- f10: paths from the run folder never lead out of it -------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_f10_best_checkpoint_outside_the_run_is_refused(made: Made, tmp_path: Path, command: str) -> None:
    run = copy_run(made.run, tmp_path)
    other = copy_run(made.run, tmp_path / "elsewhere")
    status = json.loads((run / C.STATUS_FILE).read_text())
    best = status["best"]["checkpoint"]
    status["best"]["checkpoint"] = f"../../elsewhere/runs/{other.name}/{best}"
    (run / C.STATUS_FILE).write_text(json.dumps(status))
    (run / best).unlink()
    if command == "evaluate":
        proc = cli("aline.evaluate", run, "--quiet", "--no-figures")
    else:
        proc = cli("aline.predict", run, _val(made))
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc.stderr)
    assert "best.checkpoint" in line and "checkpoints/" in line


def test_f10_monitor_never_shows_a_file_linked_into_a_run(tmp_path: Path) -> None:
    from helpers.monitor_fixtures import write_run

    from aline.monitor.runview import RunData, summarize

    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "status.json").write_text(json.dumps({"state": "failed", "reason": "SECRET-STATUS"}))
    (secret / "config.yaml").write_text("password: SECRET-CONFIG\n")
    root = tmp_path / "runs"
    write_run(root, "20260102-000000-linked")
    run_dir = root / "20260102-000000-linked"
    for name in (C.STATUS_FILE, C.CONFIG_FILE):
        (run_dir / name).unlink()
        (run_dir / name).symlink_to(secret / name)
    run = RunData(root, "20260102-000000-linked")
    run.refresh(tables=True)
    summary = summarize(run)
    cfg, why = run.config()
    assert summary.state == "unreadable" and "symbolic link" in summary.note
    assert "SECRET" not in repr(run.status) and "SECRET" not in summary.note
    assert cfg is None and "symbolic link" in why and "SECRET" not in why


def test_f10_monitor_does_not_tail_a_linked_csv(tmp_path: Path) -> None:
    from helpers.monitor_fixtures import write_run

    from aline.monitor.runview import RunData

    root = tmp_path / "runs"
    write_run(root, "20260102-000000-a", epochs=2)
    write_run(tmp_path / "other", "20260102-000000-b", epochs=3)
    metrics = root / "20260102-000000-a" / C.METRICS_FILE
    metrics.unlink()
    metrics.symlink_to(tmp_path / "other" / "20260102-000000-b" / C.METRICS_FILE)
    run = RunData(root, "20260102-000000-a")
    run.refresh(tables=True)
    assert len(run.metrics) == 0
    assert any("symbolic link" in e for e in run.errors)


def test_runfolder_refuses_writes_through_links_and_out_of_the_folder(tmp_path: Path) -> None:
    from aline.runs import RunFileError, RunFolder

    run = tmp_path / "run"
    run.mkdir()
    outside = _outside(tmp_path)
    before = snapshot(outside)
    (run / C.LOG_FILE).symlink_to(outside / "victim.csv")
    (run / C.CHECKPOINT_DIR).symlink_to(outside, target_is_directory=True)
    folder = RunFolder(run)
    with pytest.raises(RunFileError, match="symbolic link"):
        folder.open_append(C.LOG_FILE)
    with pytest.raises(RunFileError, match="symbolic link"):
        folder.truncate(C.LOG_FILE, 0)
    with pytest.raises(RunFileError, match="outside the run folder"):
        folder.open_write(f"{C.CHECKPOINT_DIR}/victim.csv")
    with pytest.raises(RunFileError, match="symbolic link"):
        folder.check_writable()
    assert snapshot(outside) == before
    os.unlink(run / C.LOG_FILE)
    with folder.open_append(C.LOG_FILE) as fh:
        fh.write("fine\n")
    assert (run / C.LOG_FILE).read_text() == "fine\n"
    shutil.rmtree(outside)


# --- found by the fuzz harness (tests/test_fuzz_hostile.py), beyond the list -----------------------


def test_fuzz_found_a_folder_in_place_of_a_run_file_refuses_the_resume(
    made: Made, tmp_path: Path, capsys: pytest.CaptureFixture[str], one_torch_thread
) -> None:
    from aline import train

    run = copy_run(made.run, tmp_path)
    (run / C.STATUS_FILE).unlink()
    (run / C.STATUS_FILE).mkdir()
    assert train.main(["--resume", str(run), "trainer.epochs=2"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert str(run / C.STATUS_FILE) in line and "not a regular file" in line
    assert (run / C.STATUS_FILE).is_dir() and not list((run / C.STATUS_FILE).iterdir())


def test_fuzz_found_the_summary_of_a_run_whose_best_value_is_undefined(tmp_path: Path) -> None:
    from aline.train import TrainResult, summary_line

    best = {"metric": "auc", "value": None, "epoch": 1, "checkpoint": "checkpoints/best.pt"}
    line = summary_line(TrainResult(tmp_path, C.STATE_FINISHED, 2, best))
    assert line.endswith("best auc undefined at epoch 1 (checkpoints/best.pt)")
    line = summary_line(TrainResult(tmp_path, C.STATE_FINISHED, 2, {**best, "value": 0.71234}))
    assert "best auc 0.7123 at epoch 1" in line


def test_fuzz_found_a_carriage_return_inside_a_csv_log_line(tmp_path: Path) -> None:
    from helpers.monitor_fixtures import write_run

    from aline.monitor.runview import RunData

    root = tmp_path / "runs"
    fx = write_run(root, "20260102-000000-a", epochs=2)
    path = fx.dir / C.CALIBRATION_FILE
    lines = path.read_bytes().count(b"\n")
    with path.open("ab") as fh:
        fh.write(b"3,0,0.0,0.1\r,5,0.05,0.0\n")  # a lone CR: the csv module refuses the line
    run = RunData(root, "20260102-000000-a")
    run.refresh(tables=True)  # no exception: the run's other tables and status are still read
    assert any(f"line {lines + 1}: not a CSV line" in e for e in run.errors), run.errors
    assert len(run.metrics) == len(fx.train) + len(fx.val)


def test_fuzz_found_a_value_too_far_outside_the_training_range(
    made: Made, tmp_path: Path, capsys: pytest.CaptureFixture[str], one_torch_thread
) -> None:
    from aline import evaluate, predict

    data = tmp_path / "data"
    shutil.copytree(made.data, data)
    val = data / _val(made).name
    frame = pd.read_csv(val)
    feature = load_config(made.run / C.CONFIG_FILE).data.columns.features[0]
    frame[feature] = frame[feature].astype("float64")
    frame.loc[5, feature] = -3e38  # finite in float32; standardised with the training statistics, -inf
    frame.to_csv(val, index=False)
    assert evaluate.main([str(made.run), "--data-dir", str(data), "--quiet", "--no-figures"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert f"column {feature!r}: value -3e+38" in line and "hour 5" in line
    assert predict.main([str(made.run), str(val)]) == 2
    assert "too far outside the range" in one_line_error(capsys.readouterr().err)


def test_a_config_yaml_that_refers_to_itself_is_unreadable_not_a_crash(tmp_path: Path) -> None:
    from helpers.monitor_fixtures import write_run

    from aline.monitor.runview import RunData, config_diff

    root = tmp_path / "runs"
    for name in ("20260102-000000-a", "20260102-000000-b"):
        write_run(root, name)
    (root / "20260102-000000-a" / C.CONFIG_FILE).write_text("trainer: &t {epochs: 3, again: *t}\n")
    loop = RunData(root, "20260102-000000-a")
    cfg, why = loop.config()
    assert cfg is None and "refers to itself" in why
    other, _ = RunData(root, "20260102-000000-b").config()
    assert config_diff({"b": other}) == []  # the page's diff of the readable configs still works


def test_runfolder_checkpoints_are_written_and_read_inside_the_folder_only(tmp_path: Path) -> None:
    import torch

    from aline.runs import RunFileError, RunFolder
    from aline.runs.checkpoint import CheckpointError

    run = tmp_path / "run"
    run.mkdir()
    folder = RunFolder(run)
    folder.save_checkpoint({"model": {"w": torch.arange(3.0)}})
    assert torch.equal(folder.load_checkpoint()["model"]["w"], torch.arange(3.0))
    assert not list(folder.checkpoints.glob("*.tmp"))  # written beside, then renamed over
    outside = _outside(tmp_path)
    other = tmp_path / "other_run"
    other.mkdir()
    linked = RunFolder(tmp_path / "linked")
    linked.path.mkdir()
    linked.checkpoints.symlink_to(other, target_is_directory=True)
    with pytest.raises(RunFileError, match="symbolic link|outside the run folder"):
        linked.save_checkpoint({"model": {}})
    assert not list(other.iterdir()) and (outside / "victim.csv").exists()
    (folder.checkpoints / "evil.pt").symlink_to(folder.last_checkpoint)
    with pytest.raises(CheckpointError, match="symbolic link"):
        folder.load_checkpoint(folder.checkpoints / "evil.pt")


def test_fuzz_found_a_quote_that_is_never_closed(made: Made, tmp_path: Path) -> None:
    lines = _val(made).read_text().splitlines(keepends=True)
    lines[3] = '"' + lines[3]  # the rest of the file is one quoted cell, longer than csv's field limit
    path = tmp_path / "quote.csv"
    path.write_text("".join(lines) + "".join(lines[4:]) * 20)
    cfg = load_config(made.run / C.CONFIG_FILE)
    with pytest.raises(DataError, match=r"quote\.csv: line 4: malformed CSV .*never closed"):
        read_split(path, cfg.data.columns, require_targets=False)
