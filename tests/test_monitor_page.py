"""The monitor page (AppTest) on fixture runs: liveness, bad runs, labels, axes, config and calm refreshes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers.monitor_fixtures import (
    HEADER,
    append_lines,
    calibration_rows,
    csv_line,
    utc_iso,
    write_run,
    write_status,
)
from test_monitor_app import RUN_A, RUN_B, figures, start, texts, traces

from aline import contract as C


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_run_states_are_distinct(tmp_path, monkeypatch) -> None:
    root = tmp_path / "runs"
    now = time.time()
    for i, state in enumerate(("running", "finished", "failed", "stopped")):
        write_run(root, f"20261125-20000{i}-{state}", state=state, reason="why" if i > 1 else None, seed=i)
    # Killed with kill -9 on this host: its pid is gone, its heartbeat still fresh.
    killed = write_run(root, "20261125-200010-killed", seed=7).dir
    write_status(killed, pid=dead_pid(), epoch=3, max_epochs=10)
    # Owner on another host whose heartbeat went stale: pid cannot be checked, the heartbeat decides.
    stale = write_run(root, "20261125-200011-stale", seed=8).dir
    old = utc_iso(now - 10 * C.HEARTBEAT_STALE_S)
    write_status(stale, host="elsewhere", pid=1, heartbeat=old, updated=old, epoch=3)
    for f in stale.iterdir():  # nothing written since the last heartbeat
        os.utime(f, (now - 10 * C.HEARTBEAT_STALE_S,) * 2)
    at = start(root, monkeypatch, query={"run": "20261125-200010-killed"})
    table = at.dataframe[0].value
    states = dict(zip(table["run"], table["state"], strict=True))
    assert states == {
        "20261125-200011-stale": "interrupted", "20261125-200010-killed": "interrupted",
        "20261125-200003-stopped": "stopped", "20261125-200002-failed": "failed",
        "20261125-200001-finished": "finished", "20261125-200000-running": "running",
    }  # fmt: skip
    assert any("20261125-200010-killed** is interrupted" in w for w in texts(at, "warning"))
    # An interrupted run has no ETA, and its last update is as old as its heartbeat.
    row = list(table["run"]).index("20261125-200011-stale")
    assert table["ETA"][row] == "" and table["last update"][row].startswith("5 min")


def diverging_run(root, name: str) -> None:
    fx = write_run(root, name, epochs=3, iters_per_epoch=5, seed=9)
    path = fx.dir / C.METRICS_FILE
    lines = path.read_text().splitlines(keepends=True)
    rows = []
    for r in sorted(fx.train + fx.val, key=lambda r: r["time"]):
        r = dict(r)
        if r["iteration"] > 5:
            for col in C.LOSS_COLUMNS:
                r[col] = float(r[col]) * 4e7 ** ((r["iteration"] - 5) / 10)
        rows.append(csv_line(HEADER, r))
    path.write_text(lines[0] + "".join(rows))


def test_diverged_run_leaves_the_other_runs_scale_alone(tmp_path, monkeypatch) -> None:
    root = tmp_path / "runs"
    write_run(root, RUN_A, epochs=3, iters_per_epoch=5, seed=1)
    diverging_run(root, RUN_B)
    at = start(root, monkeypatch)
    alone = figures(at)["loss"]["layout"]
    at.multiselect(key="selected_runs").set_value([RUN_A, RUN_B]).run()
    both = figures(at)["loss"]
    for axis in ("yaxis", "yaxis2", "yaxis3", "yaxis4"):
        assert both["layout"][axis]["range"] == alone[axis]["range"]
    assert RUN_B in both["layout"]["meta"]["diverged"] and RUN_A not in both["layout"]["meta"]["diverged"]
    assert any(f"Run **{RUN_B}** diverged" in w for w in texts(at, "warning"))
    (raw,) = traces(both, run=RUN_B, split=C.SPLIT_TRAIN, column="loss", kind="raw")
    assert max(raw["y"]) > 1e6  # still drawn, just not scaled to
    at.toggle(key="robust").set_value(False).run()
    assert "range" not in figures(at)["loss"]["layout"]["yaxis"]  # plain autoscale when asked


def test_run_names_are_escaped_in_every_chart(tmp_path, monkeypatch) -> None:
    root = tmp_path / "runs"
    name = "20261125-200000-<b>bold&co"
    write_run(root, name, seed=1)
    at = start(root, monkeypatch)
    figs = figures(at)
    assert set(figs) >= {"loss", "forecast", "posterior", "policy", "optimisation", "reliability",
                         "calibration_epochs", "topk_heatmap", "topk_bars"}  # fmt: skip
    for fig in figs.values():
        text = json.dumps([t.get("name", "") for t in fig["data"]] + [fig["layout"].get("title", {})])
        assert "<b>" not in text
    assert any("&lt;b&gt;bold&amp;co" in t.get("name", "") for t in figs["loss"]["data"])
    assert "&lt;b&gt;bold&amp;co" in figs["reliability"]["layout"]["title"]["text"]


def test_single_point_has_markers_and_epoch_ticks_are_whole(tmp_path, monkeypatch) -> None:
    root = tmp_path / "runs"
    fx = write_run(root, RUN_A, epochs=1, iters_per_epoch=1, seed=2)
    at = start(root, monkeypatch)
    (raw,) = traces(figures(at)["loss"], split=C.SPLIT_TRAIN, column="loss", kind="raw")
    assert raw["x"] == [1.0] and "markers" in raw["mode"]
    at.radio(key="x_axis").set_value("epoch").run()
    for chart in ("loss", "forecast"):
        layout = figures(at)[chart]["layout"]
        assert layout["xaxis"]["dtick"] == 1 and layout["xaxis"]["tickformat"] == "d"
    (auc,) = traces(figures(at)["forecast"], column="auc", kind="value")
    assert auc["y"] == [fx.val[0]["auc"]] and "markers" in auc["mode"]


def test_relative_and_wall_time_axes(one_run, monkeypatch) -> None:
    root, fx = one_run
    at = start(root, monkeypatch)
    t0 = min(float(r["time"]) for r in fx.train + fx.val)
    at.radio(key="x_axis").set_value("relative").run()
    (raw,) = traces(figures(at)["loss"], split=C.SPLIT_TRAIN, column="loss", kind="raw")
    assert raw["x"] == pytest.approx([(r["time"] - t0) / 3600 for r in fx.train])
    at.radio(key="x_axis").set_value("wall").run()
    fig = figures(at)["loss"]
    (raw,) = traces(fig, split=C.SPLIT_TRAIN, column="loss", kind="raw")
    assert raw["x"] == pytest.approx([r["time"] * 1000 for r in fx.train])
    assert fig["layout"]["xaxis"]["type"] == "date"


@pytest.fixture
def one_run(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    return root, write_run(root, RUN_A, epochs=3, iters_per_epoch=5, seed=1)


def test_config_view_and_diff(tmp_path, monkeypatch) -> None:
    root = tmp_path / "runs"
    write_run(root, RUN_A, seed=1)
    write_run(root, RUN_B, seed=2)
    (root / RUN_B / C.CONFIG_FILE).write_text("seed: 2\ntrainer:\n  epochs: 10\n  batch_size: 64\n")
    at = start(root, monkeypatch)
    assert at.json[0].value and json.loads(at.json[0].value)["optim"] == {"lr": 0.002}
    at.multiselect(key="selected_runs").set_value([RUN_A, RUN_B]).run()
    diff = at.dataframe[-1].value  # the runs table comes first, the config diff last
    rows = {r["key"]: (r[RUN_A], r[RUN_B]) for r in diff.to_dict("records")}
    assert rows == {"seed": ("1", "2"), "trainer.batch_size": ("32", "64"), "optim.lr": ("0.002", "(absent)")}


def test_calibration_over_epochs(one_run, monkeypatch) -> None:
    root, fx = one_run
    fig = figures(start(root, monkeypatch))["calibration_epochs"]
    for epoch in (1, 2, 3):
        (curve,) = [t for t in traces(fig, kind="calibration") if t["meta"]["epoch"] == epoch]
        filled = [r for r in fx.calibration if r["epoch"] == epoch and r["count"]]
        assert curve["x"] == [r["mean_pred"] for r in filled] and curve["y"] == [
            r["frac_pos"] for r in filled
        ]


def test_link_warning_stays_while_the_link_is_bad(one_run, monkeypatch) -> None:
    root, _ = one_run
    at = start(root, monkeypatch, query={"run": "20990101-000000-missing"})
    for _ in range(3):
        assert any("no run named '20990101-000000-missing'" in w for w in texts(at, "warning"))
        at.run()


def test_refresh_without_new_rows_rebuilds_nothing(one_run, monkeypatch) -> None:
    root, fx = one_run
    at = start(root, monkeypatch)
    before = {k: (v[0], id(v[1])) for k, v in at.session_state["figures"].items()}
    specs = {k: json.dumps(v, sort_keys=True) for k, v in figures(at).items()}
    at.run()
    after = {k: (v[0], id(v[1])) for k, v in at.session_state["figures"].items()}
    assert after == before  # the same figure objects: nothing was rebuilt
    assert {k: json.dumps(v, sort_keys=True) for k, v in figures(at).items()} == specs
    new = calibration_rows(np.random.default_rng(1), 4)
    append_lines(root / RUN_A / C.CALIBRATION_FILE, [csv_line(C.CALIBRATION_HEADER, r) for r in new])
    at.run()
    assert id(at.session_state["figures"]["rel"][1]) != before["rel"][1]  # a grown file does rebuild
    # The epoch picker and the reliability chart come from the same refresh: both at epoch 4.
    assert at.selectbox(key="detail_epoch").options[0] == "latest epoch"
    assert figures(at)["reliability"]["layout"]["title"]["text"].endswith("epoch 4")


def test_selection_from_url(tmp_path, monkeypatch) -> None:
    root = tmp_path / "runs"
    write_run(root, RUN_A, seed=1)
    write_run(root, RUN_B, seed=2)
    at = start(root, monkeypatch, query={"run": RUN_B})
    assert at.multiselect(key="selected_runs").value == [RUN_B]


def test_many_epochs_stay_light_for_the_browser(tmp_path, monkeypatch) -> None:
    # A long run: its calibration chart shows a dozen epochs (first and latest among them), not all, and
    # its validation curves drop the per-point markers, which the browser draws one SVG node at a time.
    root = tmp_path / "runs"
    write_run(root, RUN_A, epochs=250, iters_per_epoch=1, seed=5)
    at = start(root, monkeypatch)
    figs = figures(at)
    curves = traces(figs["calibration_epochs"], kind="calibration")
    shown = [t["meta"]["epoch"] for t in curves]
    assert len(shown) == 12 and shown[0] == 1 and shown[-1] == 250 and shown == sorted(shown)
    assert figs["calibration_epochs"]["layout"]["title"]["text"].endswith("(12 of 250 epochs)")
    at.radio(key="x_axis").set_value("epoch").run()
    (auc,) = traces(figures(at)["forecast"], column="auc", kind="value")
    assert len(auc["y"]) == 250 and auc["mode"] == "lines"
