"""The Streamlit page under ``AppTest`` on fixture run folders: chart contents and the messages shown."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.monitor_fixtures import (
    HEADER,
    ORACLE,
    FixtureRun,
    append_lines,
    csv_line,
    tensorboard_smooth,
    train_row,
    write_half_run,
    write_run,
)
from streamlit.testing.v1 import AppTest

from aline import contract as C

APP = str(Path(__file__).resolve().parents[1] / "app" / "monitor.py")
RUN_A = "20261125-200000-alpha"
RUN_B = "20261125-190000-beta"


def start(runs: Path, monkeypatch: pytest.MonkeyPatch, query: dict[str, str] | None = None) -> AppTest:
    monkeypatch.setenv("ALINE_RUNS", str(runs))
    at = AppTest.from_file(APP, default_timeout=60)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def figures(at: AppTest) -> dict[str, dict]:
    """Figure JSON of every plotly chart on the page, keyed by the chart name stored in layout.meta."""
    out = {}
    for el in at.get("plotly_chart"):
        spec = json.loads(el.proto.spec)
        out[spec["layout"]["meta"]["chart"]] = spec
    return out


def traces(fig: dict, **meta: str) -> list[dict]:
    return [t for t in fig["data"] if all(t.get("meta", {}).get(k) == v for k, v in meta.items())]


def texts(at: AppTest, kind: str) -> list[str]:
    return [e.value for e in getattr(at, kind)]


@pytest.fixture
def one_run(tmp_path: Path) -> tuple[Path, FixtureRun]:
    root = tmp_path / "runs"
    root.mkdir()
    return root, write_run(root, RUN_A, epochs=3, iters_per_epoch=5, seed=1)


def test_loss_chart_holds_the_file_numbers(one_run, monkeypatch) -> None:
    root, fx = one_run
    at = start(root, monkeypatch)
    fig = figures(at)["loss"]
    weight = at.slider(key="smoothing").value
    for split, rows in ((C.SPLIT_TRAIN, fx.train), (C.SPLIT_VAL, fx.val)):
        for column in C.LOSS_COLUMNS:
            (raw,) = traces(fig, run=RUN_A, split=split, column=column, kind="raw")
            (smooth,) = traces(fig, run=RUN_A, split=split, column=column, kind="smooth")
            assert raw["x"] == [float(r["iteration"]) for r in rows]
            assert raw["y"] == [r[column] for r in rows]  # exact: written with repr, read back as float
            np.testing.assert_allclose(smooth["y"], tensorboard_smooth([r[column] for r in rows], weight))


def test_loss_chart_controls(one_run, monkeypatch) -> None:
    root, fx = one_run
    at = start(root, monkeypatch)
    at.radio(key="x_axis").set_value("epoch")
    at.toggle(key="log_y").set_value(True)
    at.slider(key="smoothing").set_value(0.0)
    at.run()
    fig = figures(at)["loss"]
    assert fig["layout"]["yaxis"]["type"] == "log"
    (raw,) = traces(fig, split=C.SPLIT_TRAIN, column="loss", kind="raw")
    # Per epoch, the last train row (running average over the epoch).
    last = {}
    for r in fx.train:
        last[r["epoch"]] = r["loss"]
    assert raw["x"] == [float(e) for e in last] and raw["y"] == list(last.values())
    (smooth,) = traces(fig, split=C.SPLIT_TRAIN, column="loss", kind="smooth")
    assert smooth["y"] == raw["y"]  # weight 0 means no smoothing


# Every head's chart: (chart, column, split, [(reference key in ORACLE or a constant, ...)]).
HEAD_PANELS = [
    ("forecast", "auc", C.SPLIT_VAL, ["auc", "logreg_auc"]),
    ("forecast", "brier", C.SPLIT_VAL, ["brier"]),
    ("forecast", "ece", C.SPLIT_VAL, ["ece"]),
    ("forecast", "pr_auc", C.SPLIT_VAL, ["pr_auc"]),
    ("posterior", "post_mse", C.SPLIT_VAL, ["post_mse_floor"]),
    ("posterior", "sigma_mae", C.SPLIT_VAL, [0.0]),
    ("policy", "policy_value", C.SPLIT_VAL, [1.0, "best_fixed_share", "random_share"]),
    ("policy", "auc_asked", C.SPLIT_VAL, ["auc_asked"]),
    ("policy", "brier_asked", C.SPLIT_VAL, ["brier_asked"]),
    ("policy", "ask_outside_pool", C.SPLIT_VAL, [0.0]),
    ("policy", "gain_spearman", C.SPLIT_VAL, [1.0]),
    ("optimisation", "lr", C.SPLIT_TRAIN, []),
    ("optimisation", "grad_norm", C.SPLIT_TRAIN, []),
]


def test_every_head_is_charted_with_its_limits(one_run, monkeypatch) -> None:
    root, fx = one_run
    at = start(root, monkeypatch)
    at.radio(key="x_axis").set_value("epoch").run()
    figs = figures(at)
    for chart, column, split, refs in HEAD_PANELS:
        rows = fx.val if split == C.SPLIT_VAL else fx.train
        (line,) = traces(figs[chart], run=RUN_A, column=column, kind="value")
        if split == C.SPLIT_VAL:
            assert line["x"] == [float(r["epoch"]) for r in rows]
            assert line["y"] == [r[column] for r in rows]
        else:  # by epoch, the train curve is the last (running-average) row of each epoch
            last = {r["epoch"]: r[column] for r in rows}
            assert line["x"] == [float(e) for e in last] and line["y"] == list(last.values())
        got = sorted(t["y"][0] for t in traces(figs[chart], column=column, kind="oracle"))
        want = sorted(ORACLE[r] if isinstance(r, str) else r for r in refs)
        assert got == want, (chart, column)
        for t in traces(figs[chart], column=column, kind="oracle"):
            assert t["y"][0] == t["y"][1] and t["line"]["dash"] in ("dash", "dot")


def test_headline_values_read_as_share_of_their_limit(one_run, monkeypatch) -> None:
    root, fx = one_run
    at = start(root, monkeypatch)
    latest = fx.val[-1]
    assert any(RUN_A in c for c in texts(at, "caption"))
    metrics = {m.label: (m.value, m.delta) for m in at.metric}
    auc_share = 100 * latest["auc"] / ORACLE["auc"]
    assert metrics["AUC"] == (f"{latest['auc']:.4g}", f"{auc_share:.1f} % of Bayes")
    brier_share = 100 * ORACLE["brier"] / latest["brier"]  # lower is better: limit / value
    assert metrics["Brier"] == (f"{latest['brier']:.4g}", f"{brier_share:.1f} % of Bayes")
    mse_share = 100 * ORACLE["post_mse_floor"] / latest["post_mse"]
    assert metrics["posterior MSE"][1] == f"{mse_share:.1f} % of floor"
    assert metrics["policy value"][1] == f"{100 * latest['policy_value']:.1f} % of oracle"


def test_reliability_defaults_to_latest_epoch(one_run, monkeypatch) -> None:
    root, fx = one_run
    at = start(root, monkeypatch)
    fig = figures(at)["reliability"]
    latest = max(r["epoch"] for r in fx.calibration)
    rows = [r for r in fx.calibration if r["epoch"] == latest]
    (hist,) = traces(fig, kind="histogram")
    assert hist["y"] == [float(r["count"]) for r in rows]
    assert hist["x"] == pytest.approx([(r["lo"] + r["hi"]) / 2 for r in rows])
    (curve,) = traces(fig, kind="calibration")
    filled = [r for r in rows if r["count"]]
    assert curve["x"] == [r["mean_pred"] for r in filled]
    assert curve["y"] == [r["frac_pos"] for r in filled]
    val = next(r for r in fx.val if r["epoch"] == latest)
    assert f"ECE {val['ece']:.4f}" in curve["name"] and f"Brier {val['brier']:.4f}" in curve["name"]
    (diag,) = traces(fig, kind="reference")
    assert diag["x"] == [0, 1] and diag["y"] == [0, 1]
    # Choosing an earlier epoch shows that epoch's table.
    at.selectbox(key="detail_epoch").set_value(1).run()
    (hist,) = traces(figures(at)["reliability"], kind="histogram")
    assert hist["y"] == [float(r["count"]) for r in fx.calibration if r["epoch"] == 1]


def test_topk_heatmap_and_latest_bars(one_run, monkeypatch) -> None:
    root, fx = one_run
    figs = figures(start(root, monkeypatch))
    epochs = sorted({r["epoch"] for r in fx.topk})
    want = np.zeros((len(epochs), C.HOURS))
    for r in fx.topk:
        want[epochs.index(r["epoch"]), r["hour"]] = r["frequency"]
    (heat,) = figs["topk_heatmap"]["data"]
    assert heat["y"] == epochs and heat["x"] == list(range(24))
    np.testing.assert_array_equal(np.array(heat["z"]), want)
    (bars,) = figs["topk_bars"]["data"]
    assert bars["y"] == want[-1].tolist()


def test_new_rows_appear_on_the_next_refresh(one_run, monkeypatch) -> None:
    root, fx = one_run
    at = start(root, monkeypatch)
    rng = np.random.default_rng(99)
    new = [train_row(rng, 4, 16 + i) for i in range(3)]
    append_lines(root / RUN_A / C.METRICS_FILE, [csv_line(HEADER, r) for r in new])
    at.run()
    (raw,) = traces(figures(at)["loss"], split=C.SPLIT_TRAIN, column="loss", kind="raw")
    assert raw["y"] == [r["loss"] for r in fx.train + new]


def test_compare_runs_and_run_table(tmp_path, monkeypatch) -> None:
    root = tmp_path / "runs"
    a = write_run(root, RUN_A, seed=1)
    b = write_run(root, RUN_B, seed=2, state=C.STATE_FINISHED)
    at = start(root, monkeypatch)
    table = at.dataframe[0].value
    assert list(table["run"]) == [RUN_A, RUN_B]  # newest first
    assert list(table["state"]) == [C.STATE_RUNNING, C.STATE_FINISHED]
    assert list(table["epoch"]) == ["3/10", "3/10"]
    assert list(table["best"]) == [
        f"auc {max(r['auc'] for r in a.val):.4f} @ epoch 3",
        f"auc {max(r['auc'] for r in b.val):.4f} @ epoch 3",
    ]
    assert list(table["best checkpoint"]) == ["checkpoints/best.pt"] * 2
    assert list(table["newest val AUC"]) == [a.val[-1]["auc"], b.val[-1]["auc"]]
    # Running for 10 min with 3 of 10 epochs done: 7 more epochs at 200 s each. Finished: no ETA.
    minutes, seconds = map(int, re.fullmatch(r"(\d+) min (\d+) s", table["ETA"][0]).groups())
    assert 600 / 3 * 7 <= 60 * minutes + seconds <= 660 / 3 * 7 and table["ETA"][1] == ""
    at.multiselect(key="selected_runs").set_value([RUN_A, RUN_B]).run()
    fig = figures(at)["loss"]
    for name, fx in ((RUN_A, a), (RUN_B, b)):
        (raw,) = traces(fig, run=name, split=C.SPLIT_TRAIN, column="loss_bce", kind="raw")
        assert raw["y"] == [r["loss_bce"] for r in fx.train]
    assert len(at.get("download_button")) == 3


def test_downloads_hold_the_full_tables_with_iso_times_and_whole_epochs(one_run) -> None:
    import io
    from datetime import UTC, datetime

    import pandas as pd

    from aline.monitor.runview import RunData, table_csv_bytes

    root, fx = one_run
    run = RunData(root, RUN_A)
    run.refresh()
    text = table_csv_bytes([run], "metrics").decode()
    got = pd.read_csv(io.StringIO(text), dtype={"time": str})
    want = pd.read_csv(root / RUN_A / C.METRICS_FILE)
    assert list(got.columns) == ["run", *HEADER]
    assert (got["run"] == RUN_A).all()
    iso = [datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds") for t in want["time"]]
    assert list(got["time"]) == iso
    first = text.splitlines()[1].split(",")
    assert first[2:4] == [str(fx.train[0]["epoch"]), str(fx.train[0]["iteration"])]  # "1", not "1.0"
    pd.testing.assert_frame_equal(
        got.drop(columns=["run", "time"]), want.drop(columns="time"), check_dtype=False
    )
    for which, name, rows in (
        ("calibration", C.CALIBRATION_FILE, fx.calibration),
        ("topk", C.TOPK_FILE, fx.topk),
    ):
        got = pd.read_csv(io.BytesIO(table_csv_bytes([run], which)))
        pd.testing.assert_frame_equal(
            got.drop(columns="run"), pd.read_csv(root / RUN_A / name), check_dtype=False
        )
        assert len(got) == len(rows)


def test_empty_runs_folder(tmp_path, monkeypatch) -> None:
    root = tmp_path / "runs"
    root.mkdir()
    at = start(root, monkeypatch)
    assert any("No runs in" in t for t in texts(at, "info"))
    assert not at.get("plotly_chart")


def test_missing_runs_folder(tmp_path, monkeypatch) -> None:
    at = start(tmp_path / "nowhere", monkeypatch)
    assert any("does not exist" in t for t in texts(at, "warning"))


@pytest.mark.parametrize("header_only", [True, False])
def test_half_written_run(tmp_path, monkeypatch, header_only) -> None:
    root = tmp_path / "runs"
    write_half_run(root, RUN_A, header_only=header_only)
    at = start(root, monkeypatch)
    assert any(f"Run **{RUN_A}** has no metrics yet" in t for t in texts(at, "info"))
    assert not at.get("plotly_chart")
    assert at.dataframe[0].value["note"][0] == "no metrics yet"


def test_failed_and_stopped_runs_show_reason(tmp_path, monkeypatch) -> None:
    root = tmp_path / "runs"
    write_run(root, RUN_A, state=C.STATE_FAILED, reason="RuntimeError: loss is NaN at iteration 12")
    write_run(root, RUN_B, state=C.STATE_STOPPED, reason="early stopping: no AUC gain in 5 epochs")
    at = start(root, monkeypatch)
    at.multiselect(key="selected_runs").set_value([RUN_A, RUN_B]).run()
    assert f"Run **{RUN_A}** failed: RuntimeError: loss is NaN at iteration 12" in texts(at, "error")
    assert f"Run **{RUN_B}** was stopped: early stopping: no AUC gain in 5 epochs" in texts(at, "warning")
    notes = list(at.dataframe[0].value["note"])
    assert notes == ["RuntimeError: loss is NaN at iteration 12", "early stopping: no AUC gain in 5 epochs"]
    assert figures(at)["loss"]  # the curves up to the failure are still shown


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "status.json is missing"), ("{ not json", "status.json is not valid JSON")],
)
def test_broken_status_file(tmp_path, monkeypatch, content, message) -> None:
    root = tmp_path / "runs"
    write_run(root, RUN_A)
    status = root / RUN_A / C.STATUS_FILE
    if content is None:
        status.unlink()
    else:
        status.write_text(content)
    at = start(root, monkeypatch)
    assert any(message in t for t in texts(at, "warning")), texts(at, "warning")
    assert figures(at)["loss"]


def test_run_name_outside_the_runs_folder_is_refused(tmp_path, monkeypatch) -> None:
    root = tmp_path / "runs"
    write_run(root, RUN_A)
    write_run(tmp_path, "secret")  # a sibling of the runs folder
    at = start(root, monkeypatch, query={"run": "../secret"})
    assert any("not a plain folder name" in t for t in texts(at, "error"))
    assert at.multiselect(key="selected_runs").value == [RUN_A]


def test_runs_dir_from_command_line(tmp_path, monkeypatch) -> None:
    root = tmp_path / "cli_runs"
    write_run(root, RUN_A)
    monkeypatch.setenv("ALINE_RUNS", str(tmp_path / "elsewhere"))
    monkeypatch.setattr(sys, "argv", ["monitor.py", "--runs", str(root)])
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert list(at.dataframe[0].value["run"]) == [RUN_A]


@pytest.mark.slow
def test_page_does_not_import_torch(tmp_path) -> None:
    # Start-up time matters for a page opened often; torch alone costs seconds.
    root = tmp_path / "runs"
    write_run(root, RUN_A)
    code = (
        "import sys; from streamlit.testing.v1 import AppTest;"
        f"at = AppTest.from_file({APP!r}, default_timeout=60); at.run();"
        "assert not at.exception; assert at.get('plotly_chart');"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"ALINE_RUNS": str(root), "PATH": ""},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_choices_survive_new_epochs_and_new_runs(one_run, monkeypatch) -> None:
    from helpers.monitor_fixtures import calibration_rows

    root, fx = one_run
    at = start(root, monkeypatch)
    at.selectbox(key="detail_epoch").set_value(2).run()
    rng = np.random.default_rng(3)
    append_lines(
        root / RUN_A / C.CALIBRATION_FILE,
        [csv_line(C.CALIBRATION_HEADER, r) for r in calibration_rows(rng, 4)],
    )
    write_run(root, "20261125-230000-newer", seed=8)
    at.run()
    assert not at.exception
    assert at.selectbox(key="detail_epoch").value == 2
    assert at.selectbox(key="detail_epoch").options[0] == "latest epoch"
    assert at.multiselect(key="selected_runs").value == [RUN_A]
    assert at.multiselect(key="selected_runs").options == ["20261125-230000-newer", RUN_A]


def test_pause_and_interval_controls(one_run, monkeypatch) -> None:
    root, _ = one_run
    at = start(root, monkeypatch)
    at.toggle(key="pause").set_value(True).run()
    at.number_input(key="interval").set_value(10.0).run()
    assert not at.exception
    assert figures(at)["loss"]


def test_streamlit_config_binds_to_localhost() -> None:
    tomllib = pytest.importorskip("tomllib")
    cfg = tomllib.loads((Path(APP).parents[1] / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] == "127.0.0.1"
    assert cfg["server"]["headless"] is True
    assert cfg["browser"]["gatherUsageStats"] is False
