"""Live training monitor: ``streamlit run app/monitor.py -- --runs DIR`` (or ``$ALINE_RUNS``, else ``runs``).

This file is only the page layout. Reading run folders lives in ``aline.runview`` / ``aline.tail`` and the
figures in ``aline.charts``. The page never writes under the runs folder.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import streamlit as st
from streamlit import config as st_config

from aline import contract as C
from aline.charts import loss_figure, reliability_figure, topk_figures, val_metrics_figure
from aline.runview import RunData, list_runs, metrics_csv_bytes, resolve_run, runs_root_from, summarize

st.set_page_config(page_title="ALINE training monitor", layout="wide")
# Run folders are private: if this server listens beyond this machine without anyone having asked for it
# (an old Streamlit that ignored app/.streamlit/config.toml), show nothing. An explicit flag is a choice.
if st.get_option("server.address") not in ("127.0.0.1", "localhost", "::1") and (
    st_config.get_where_defined("server.address") == st_config.ConfigOption.DEFAULT_DEFINITION
):
    st.error(
        "Refusing to serve run data on all interfaces: start with `aline-monitor`, or pass --server.address."
    )
    st.stop()
ROOT: Path = runs_root_from(sys.argv[1:], os.environ)

with st.sidebar:
    st.header("Live")
    st.caption(f"Runs folder: `{ROOT}`")
    interval = st.number_input(
        "Refresh every (seconds)", min_value=0.5, max_value=120.0, value=2.0, step=0.5, key="interval"
    )
    paused = st.toggle("Pause live updates", value=False, key="pause")
    st.header("Loss curves")
    x_axis = st.radio("x axis", ["iteration", "epoch"], horizontal=True, key="x_axis")
    log_y = st.toggle("Log scale (y)", value=False, key="log_y")
    smoothing = st.slider(
        "Smoothing (debiased EMA weight)",
        min_value=0.0,
        max_value=0.99,
        value=0.6,
        step=0.01,
        key="smoothing",
    )

st.title("ALINE training monitor")


def run_data(name: str) -> RunData:
    # One RunData per run and browser session: its tailers remember the byte offsets between refreshes.
    cache: dict[str, RunData] = st.session_state.setdefault("run_data", {})
    key = f"{ROOT.resolve()}::{name}"
    if key not in cache:
        cache[key] = RunData(ROOT, name)
    return cache[key]


def requested_runs(names: list[str]) -> list[str]:
    """Runs named in the URL (``?run=a,b``), checked against the runs folder; others are reported."""
    wanted = [n for n in st.query_params.get("run", "").split(",") if n]
    ok = []
    for name in wanted:
        try:
            resolve_run(ROOT, name)
        except ValueError as exc:
            st.error(str(exc))
            continue
        if name in names:
            ok.append(name)
        else:
            st.warning(f"There is no run named {name!r} in {ROOT}.")
    return ok


def show_run_messages(run: RunData) -> None:
    st_ = run.status
    if st_.problem:
        st.warning(f"Run **{run.name}**: {st_.problem}.")
    if st_.state == C.STATE_FAILED:
        st.error(f"Run **{run.name}** failed: {st_.reason or 'no reason recorded in status.json'}")
    elif st_.state == C.STATE_STOPPED:
        st.warning(f"Run **{run.name}** was stopped: {st_.reason or 'no reason recorded in status.json'}")
    if not run.has_metrics:
        st.info(
            f"Run **{run.name}** has no metrics yet: {C.METRICS_FILE} is missing or holds only its header "
            "(the run has just started, or stopped before its first logged step)."
        )
    for err in run.errors:
        st.error(f"Run **{run.name}**: {err}")


@st.fragment(run_every=None if paused else interval)
def live() -> None:
    if not ROOT.is_dir():
        st.warning(
            f"The runs folder `{ROOT}` does not exist (yet). Start a run with `python -m aline.train`."
        )
        return
    names = list_runs(ROOT)
    if not names:
        st.info(f"No runs in `{ROOT}` yet. Start one with `python -m aline.train run.dir={ROOT}`.")
        return
    runs = {name: run_data(name) for name in names}
    for run in runs.values():
        run.refresh()

    st.subheader("Runs")
    rows = [summarize(run) for run in runs.values()]
    st.dataframe(
        {
            "run": [r.name for r in rows],
            "state": [r.state for r in rows],
            "started": [r.started for r in rows],
            "epochs done": [r.epochs for r in rows],
            "best val AUC": [r.best_auc for r in rows],
            "note": [r.note for r in rows],
        },
        hide_index=True,
        key="run_table",
    )

    if "selected_runs" not in st.session_state:
        st.session_state.selected_runs = requested_runs(names) or names[:1]
    else:
        st.session_state.selected_runs = [n for n in st.session_state.selected_runs if n in runs]
    selected = [runs[n] for n in st.multiselect("Runs to show", names, key="selected_runs")]
    for run in selected:
        show_run_messages(run)
    plotted = [run for run in selected if run.has_metrics]
    if not plotted:
        return

    st.plotly_chart(loss_figure(plotted, x_axis, smoothing, log_y), key="loss_chart")
    st.plotly_chart(val_metrics_figure(plotted), key="val_chart")
    st.download_button(
        "Download metrics of the selected runs (CSV)",
        data=lambda: metrics_csv_bytes(plotted),
        file_name="metrics.csv",
        mime="text/csv",
        on_click="ignore",
        key="download_metrics",
    )

    st.subheader("Calibration and query hours")
    detail = runs[st.selectbox("Run", [r.name for r in plotted], key="detail_run")]
    epochs = detail.calibration_epochs()
    left, right = st.columns(2)
    with left:
        if epochs:
            choice = st.selectbox(
                "Epoch",
                ["latest", *reversed(epochs)],
                format_func=lambda e: f"latest ({epochs[-1]})" if e == "latest" else str(e),
                key="detail_epoch",
            )
            epoch = epochs[-1] if choice == "latest" else int(choice)
            st.plotly_chart(reliability_figure(detail, epoch), key="reliability_chart")
        else:
            st.info(f"Run **{detail.name}** has no {C.CALIBRATION_FILE} rows yet.")
    with right:
        if len(detail.topk):
            heat, bars = topk_figures(detail)
            st.plotly_chart(heat, key="topk_heatmap")
            st.plotly_chart(bars, key="topk_bars")
        else:
            st.info(f"Run **{detail.name}** has no {C.TOPK_FILE} rows yet.")


live()
