"""The monitor on a run folder written by the real trainer (not a fixture): trainer and monitor agree."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from helpers.monitor_fixtures import tiny_real_run
from streamlit.testing.v1 import AppTest

from aline import contract as C

APP = str(Path(__file__).resolve().parents[1] / "app" / "monitor.py")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_real_run(tmp_path_factory.mktemp("real"))


def chart(at: AppTest, name: str) -> dict:
    for el in at.get("plotly_chart"):
        spec = json.loads(el.proto.spec)
        if spec["layout"]["meta"]["chart"] == name:
            return spec
    raise AssertionError(f"no {name} chart; page has {[e.value for e in at.error]}")


def test_monitor_shows_a_real_trainer_run(real_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALINE_RUNS", str(real_run.parent))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]

    with (real_run / C.METRICS_FILE).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    status = json.loads((real_run / C.STATUS_FILE).read_text())

    loss = chart(at, "loss")
    for split in (C.SPLIT_TRAIN, C.SPLIT_VAL):
        want = [float(r["loss"]) for r in rows if r["split"] == split]
        want_meta = {"split": split, "column": "loss", "kind": "raw"}
        raw = [t for t in loss["data"] if want_meta.items() <= t["meta"].items()]
        assert raw and raw[0]["y"] == pytest.approx(want)

    # Every head's chart holds the file's values for every column the trainer logged, with its limits.
    at.radio(key="x_axis").set_value("epoch").run()
    val_rows = [r for r in rows if r["split"] == C.SPLIT_VAL]
    train_rows = [r for r in rows if r["split"] == C.SPLIT_TRAIN]
    panels = {
        "forecast": ["auc", "brier", "ece", "pr_auc"], "posterior": ["post_mse", "sigma_mae"],
        "policy": ["policy_value", "auc_asked", "brier_asked"], "optimisation": ["lr", "grad_norm"],
    }  # fmt: skip
    checked = 0
    for name, columns in panels.items():
        fig = chart(at, name)
        for column in columns:
            if column not in rows[0]:
                continue  # a metric this trainer version does not log yet
            split_rows = (
                val_rows if column in C.VAL_METRICS or column in ("auc_asked", "brier_asked") else None
            )
            if split_rows is None:  # train metric by epoch: the last row of each epoch
                last = {r["epoch"]: r[column] for r in train_rows}
                want = [float(v) for v in last.values()]
            else:
                want = [float(r[column]) for r in split_rows]
            (line,) = [
                t for t in fig["data"] if t["meta"].get("column") == column and t["meta"]["kind"] == "value"
            ]
            assert line["y"] == pytest.approx(want), (name, column)
            checked += 1
    assert checked >= 9  # 13 once the asking metrics are logged
    refs = {
        (t["meta"]["column"], t["meta"]["ref"]): t["y"][0]
        for name in panels
        for t in chart(at, name)["data"]
        if t["meta"].get("kind") == "oracle"
    }
    assert refs[("auc", "auc")] == pytest.approx(status["oracle"]["auc"])
    assert refs[("post_mse", "post_mse_floor")] == pytest.approx(status["oracle"]["post_mse_floor"])
    assert refs[("policy_value", "oracle")] == 1.0
    for name in ("reliability", "calibration_epochs", "topk_heatmap"):
        assert any(t.get("y") for t in chart(at, name)["data"])

    with (real_run / C.TOPK_FILE).open(newline="") as fh:
        last = [float(r["frequency"]) for r in csv.DictReader(fh) if r["epoch"] == "2"]
    bars = chart(at, "topk_bars")
    assert bars["data"][0]["y"] == pytest.approx(last)
    table = at.dataframe[0].value
    assert list(table["state"]) == ["finished"] and list(table["epoch"]) == ["2/2"]
