"""Live training monitor: ``streamlit run app/monitor.py -- --runs DIR`` (or ``$ALINE_RUNS``, else ``runs``).

This file is only the page layout. Reading run folders lives in ``aline.monitor.runview`` /
``aline.monitor.tail`` and the figures in ``aline.monitor.charts``. The page never writes under the runs
folder.

Calm refreshes: the page is two fragments that rerun on their own timer, the runs table (cheap: status.json
and the tail of metrics.csv per run) and the charts (full tables, selected runs only). Chart controls live
inside the charts fragment, so changing one reruns that fragment only. Figures are cached on the tables'
versions and the controls, so a refresh in which no file grew rebuilds nothing and hands Streamlit the very
same figures (the browser then redraws nothing).

Table first: a browser draws what one script run sends in one go, and the charts (plotly's large script,
then every figure) would keep the runs table off the screen for seconds. A browser session's first page
therefore comes in stages, the runs table, then the first chart, then the rest, each sent once the browser
says it has drawn the one before (``next_stage``, ``aline.monitor.paintsignal``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import streamlit as st
from streamlit import config as st_config

from aline import contract as C
from aline.monitor.charts import (
    X_MODES,
    calibration_epochs_figure,
    head_figure,
    loss_figure,
    png_config,
    reliability_figure,
    topk_figures,
)
from aline.monitor.heads import headlines
from aline.monitor.paintsignal import when_drawn
from aline.monitor.plaintext import plain
from aline.monitor.runview import (
    STATE_UNREADABLE,
    RunData,
    config_diff,
    human_duration,
    list_runs,
    progress,
    resolve_run,
    runs_root_from,
    summarize,
    table_csv_bytes,
)
from aline.monitor.sharedruns import SharedRuns, locked

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
    st.caption(f"Runs folder: {plain(ROOT)}")
    interval = st.number_input(
        "Refresh every (seconds)", min_value=0.5, max_value=120.0, value=2.0, step=0.5, key="interval"
    )
    paused = st.toggle("Pause live updates", value=False, key="pause")

st.title("ALINE training monitor")
# A live page shows the last data it read until the next arrives: Streamlit's "stale" fading of elements
# while a refresh runs (after about half a second) only makes the page flicker, most on a loaded machine.
st.html(
    "<style>[data-testid='stElementContainer'][data-stale='true']"
    "{opacity: 1 !important; transition: none !important;}</style>"
)
RUN_EVERY = None if paused else interval


def run_data(name: str) -> RunData:
    # The runs table's own RunData per run and browser session: it reads status.json and the tail of
    # metrics.csv only, so it costs little to keep per session, and never waits for the charts' locks.
    cache: dict[str, RunData] = st.session_state.setdefault("run_data", {})
    key = f"{ROOT.resolve()}::{name}"
    if key not in cache:
        cache[key] = RunData(ROOT, name)
    return cache[key]


def url_runs(names: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Runs named in the URL (``?run=a,b``) that exist, and (level, message) for the others. Checked on
    every refresh, so a warning stays while the URL still names a bad run."""
    wanted = [n for n in st.query_params.get("run", "").split(",") if n]
    ok, problems = [], []
    for name in wanted:
        try:
            resolve_run(ROOT, name)
        except ValueError as exc:
            problems.append(("error", plain(exc)))
            continue
        if name in names:
            ok.append(name)
        else:
            problems.append(("warning", plain(f"There is no run named {name!r} in {ROOT}.")))
    return ok, problems


def _fmt_best(best: dict) -> tuple[str, str]:
    value = best.get("value")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or best.get("epoch") is None:
        return "", ""
    return f"{best.get('metric', '?')} {value:.4f} @ epoch {best['epoch']}", str(best.get("checkpoint") or "")


def run_row(name: str, now: float) -> dict:
    """One line of the runs table. A run folder that defeats every reader's own checks is one line saying
    so: one bad folder never takes the table of the others with it."""
    try:
        run = run_data(name)
        run.refresh(tables=False)
        s, p = summarize(run, now), progress(run, now)
        best, ckpt = _fmt_best(run.status.best)
        newest = run.newest_row(C.SPLIT_VAL) or {}
    except Exception as exc:  # noqa: BLE001 - the boundary between one run's files and the whole page
        note = " ".join(f"{type(exc).__name__}: {exc}".split())
        return {"run": name, "state": STATE_UNREADABLE, "note": note}
    return {
        "run": name,
        "state": s.state,
        "epoch": f"{p.epoch if p.epoch is not None else '–'}/{p.max_epochs or '?'}",
        "elapsed": human_duration(p.elapsed_s),
        "ETA": human_duration(p.eta_s),
        "last update": f"{human_duration(p.last_update_age_s)} ago" if p.last_update_age_s else "",
        "best": best,
        "best checkpoint": ckpt,
        "newest val AUC": newest.get("auc"),
        "note": s.note,
    }


@st.fragment(run_every=RUN_EVERY)
def runs_part() -> None:
    """The runs table and the newest values of the selected runs: cheap, so they draw first."""
    if not ROOT.is_dir():
        st.warning(
            f"The runs folder `{ROOT}` does not exist (yet). Start a run with `python -m aline.train`."
        )
        return
    names = list_runs(ROOT)
    if not names:
        st.info(f"No runs in `{ROOT}` yet. Start one with `python -m aline.train run.dir={ROOT}`.")
        return
    from_url, problems = url_runs(names)
    for level, message in problems:
        getattr(st, level)(message)
    if "selected_runs" not in st.session_state:
        st.session_state.selected_runs = from_url or names[:1]
    now = time.time()
    rows = [run_row(name, now) for name in names]
    st.subheader("Runs")
    st.dataframe(rows, hide_index=True, key="run_table")
    selected = [n for n in st.session_state.get("selected_runs", []) if n in names]
    for name in selected:
        lines = headlines(run_data(name))
        if not lines:
            continue
        st.caption(f"Newest validation values of **{plain(name)}**, as a share of their limits")
        cols = st.columns(len(lines))
        for col, (title, value, share) in zip(cols, lines, strict=True):
            col.metric(title, value, share, delta_color="off", delta_arrow="off")


def show_run_messages(run: RunData, diverged: dict[str, list[str]]) -> None:
    status = run.status
    state = status.display_state()
    name = plain(run.name)  # a folder name, and what status.json says: shown as text, never as markdown
    if status.problem:
        st.warning(f"Run **{name}**: {plain(status.problem)}.")
    if state == C.STATE_FAILED:
        st.error(f"Run **{name}** failed: {plain(status.reason or 'no reason recorded in status.json')}")
    elif state == C.STATE_STOPPED:
        st.warning(
            f"Run **{name}** was stopped: {plain(status.reason or 'no reason recorded in status.json')}"
        )
    elif state == C.STATE_INTERRUPTED:
        st.warning(
            f"Run **{name}** is interrupted: status.json says running, but its process is gone or its "
            f"heartbeat is older than {C.HEARTBEAT_STALE_S:.0f} s. Resume it with "
            f"python -m aline.train --resume {plain(run.dir)}"
        )
    if not run.has_metrics:
        st.info(
            f"Run **{name}** has no metrics yet: {C.METRICS_FILE} is missing or holds only its header "
            "(the run has just started, or stopped before its first logged step)."
        )
    for err in run.errors:
        st.error(f"Run **{name}**: {plain(err)}")
    if run.name in diverged:
        st.warning(
            f"Run **{name}** diverged ({plain('; '.join(diverged[run.name]))}); it is drawn but left out "
            "of the y scale of the others."
        )


@st.cache_resource
def shared_runs() -> SharedRuns:
    """Parsed runs and built figures, shared by every session of this server (aline.monitor.sharedruns)."""
    return SharedRuns()


def cached_figure(name: str, key: tuple, build):  # -> plotly Figure
    """The figure for ``key`` (table versions + controls), built only when no session has built it yet."""
    cache: dict[str, tuple[tuple, object]] = st.session_state.setdefault("figures", {})
    hit = cache.get(name)
    if hit is None or hit[0] != key:
        cache[name] = (key, shared_runs().figure((name, key), build))
    return cache[name][1]


def chart(fig, name: str) -> None:
    st.plotly_chart(fig, key=f"{name}_chart", config=png_config(fig, name))


@st.fragment(run_every=RUN_EVERY)
def charts_part() -> None:
    """Controls, selection and every chart of the selected runs, from one snapshot of their files."""
    names = list_runs(ROOT)
    if not names:
        return
    if "selected_runs" not in st.session_state:
        st.session_state.selected_runs = url_runs(names)[0] or names[:1]
    else:
        st.session_state.selected_runs = [n for n in st.session_state.selected_runs if n in names]
    with st.container(border=True):
        c1, c2, c3, c4, c5 = st.columns([4, 3, 2, 2, 2])
        chosen = c1.multiselect("Runs to show", names, key="selected_runs")
        x_mode = c2.radio("x axis", X_MODES, horizontal=True, key="x_axis")
        smoothing = c3.slider("Smoothing (debiased EMA)", 0.0, 0.99, 0.6, 0.01, key="smoothing")
        log_y = c4.toggle("Log scale (loss)", value=False, key="log_y")
        robust = c5.toggle("Ignore outliers in scaling", value=True, key="robust")
    runs = [shared_runs().run(ROOT, n) for n in chosen]
    # Other sessions may refresh these runs at any time, so they are read under their locks throughout.
    with locked(runs):
        draw_charts(runs, x_mode, smoothing, log_y, robust)


def draw_charts(runs: list[RunData], x_mode: str, smoothing: float, log_y: bool, robust: bool) -> None:
    """Run messages and every chart of ``runs``, from one snapshot of their files."""
    for run in runs:
        # While paused this session reads no new rows (another session's refresh still shows in a chart
        # that a control change rebuilds).
        if not st.session_state.get("pause") or not run.tables_loaded:
            run.refresh(tables=True)
    plotted = [run for run in runs if run.has_metrics]
    versions = tuple((r.name, r.version, tuple(sorted(r.status.oracle.items())), r.columns) for r in plotted)
    diverged: dict[str, list[str]] = {}
    figs = []
    if plotted:
        loss = cached_figure(
            "loss", (versions, x_mode, smoothing, log_y, robust),
            lambda: loss_figure(plotted, x_mode, smoothing, log_y, robust),
        )  # fmt: skip
        figs.append(("loss", loss))
        for head in ("forecast", "posterior", "policy", "optimisation"):
            fig = cached_figure(
                head, (versions, x_mode, robust), lambda h=head: head_figure(plotted, h, x_mode, robust)
            )
            figs.append((head, fig))
        for _, fig in figs:
            for run, why in fig.layout.meta["diverged"].items():
                diverged.setdefault(run, []).extend(why)
    for run in runs:
        show_run_messages(run, diverged)
    if not plotted:
        return
    for name, fig in figs if paint_stage() == STAGE_ALL else figs[:1]:
        chart(fig, name)
    if paint_stage() < STAGE_ALL:
        return

    st.subheader("Calibration and query hours")
    by_name = {r.name: r for r in plotted}
    detail = by_name[st.selectbox("Run", list(by_name), key="detail_run")]
    dkey = (detail.name, detail.version)
    # The epoch list and the charts below come from the same refresh, so the picker never trails them.
    epochs = detail.calibration_epochs()
    left, right = st.columns(2)
    with left:
        if epochs:
            choice = st.selectbox(
                "Epoch",
                ["latest", *reversed(epochs)],
                # A fixed label: one that names the newest epoch is redrawn late by the browser when only
                # the options change, and then disagrees with the chart for a refresh or two.
                format_func=lambda e: "latest epoch" if e == "latest" else str(e),
                key="detail_epoch",
            )
            epoch = epochs[-1] if choice == "latest" or choice not in epochs else int(choice)
            chart(
                cached_figure("rel", (dkey, epoch), lambda: reliability_figure(detail, epoch)), "reliability"
            )
        else:
            st.info(f"Run **{plain(detail.name)}** has no {C.CALIBRATION_FILE} rows yet.")
    with right:
        if epochs:
            chart(
                cached_figure("calib_epochs", dkey, lambda: calibration_epochs_figure(detail)),
                "calibration_epochs",
            )
    if len(detail.topk):
        heat, bars = cached_figure("topk", dkey, lambda: topk_figures(detail))
        left, right = st.columns(2)
        with left:
            chart(heat, "topk_heatmap")
        with right:
            chart(bars, "topk_bars")
    else:
        st.info(f"Run **{plain(detail.name)}** has no {C.TOPK_FILE} rows yet.")

    st.subheader("Configuration")
    cfg, problem = detail.config()
    with st.expander(f"config.yaml of {plain(detail.name)}", expanded=False):
        if cfg is None:
            st.warning(plain(problem))
        else:
            st.json(cfg, expanded=2)
    configs = {r.name: c for r in plotted if (c := r.config()[0]) is not None}
    if len(configs) >= 2:
        diff = config_diff(configs)
        if diff:
            st.caption("Keys whose values differ between the selected runs")
            st.dataframe(diff, hide_index=True, key="config_diff")
        else:
            st.caption("The selected runs have identical configurations.")

    st.subheader("Export")
    c1, c2, c3 = st.columns(3)
    for col, which, label in (
        (c1, "metrics", "metrics"), (c2, "calibration", "calibration"), (c3, "topk", "top-k hours"),
    ):  # fmt: skip
        col.download_button(
            f"Download {label} of the selected runs (CSV)",
            data=lambda w=which: locked_csv(plotted, w),
            file_name=f"{which}.csv",
            mime="text/csv",
            on_click="ignore",
            key=f"download_{which}",
        )


def locked_csv(runs: list[RunData], which: str) -> bytes:
    # Called when the button is pressed, outside the refresh that drew it: the runs are locked again.
    with locked(runs):
        return table_csv_bytes(runs, which)


# A browser session's first page comes in stages, each sent once the browser has drawn the one before
# (``next_stage``): the runs table, then the first chart, then all the rest. The browser draws a script
# run's output in one go, and each stage's drawing would keep the one before off the screen: plotly's
# script and first chart for the table, the eight other charts for the first chart.
STAGE_TABLE, STAGE_FIRST_CHART, STAGE_ALL = 0, 1, 2
# What the browser must have drawn before it asks for the next stage.
STAGE_DRAWN = {
    STAGE_TABLE: '[data-testid="stDataFrame"] canvas',
    STAGE_FIRST_CHART: ".js-plotly-plot .main-svg",
}


def paint_stage() -> int:
    """How much of the page this script run draws. A client that is not a browser (AppTest, which sends no
    HTTP headers and draws nothing) gets all of it at once."""
    if not st.context.headers:
        return STAGE_ALL
    return int(st.session_state.get("paint_stage", STAGE_TABLE))


def next_stage() -> None:
    """Asks the browser for word once it has drawn this stage: the word moves the session to the next
    stage, and the rerun it causes draws that. The last stage's run does not call this."""
    stage = paint_stage()

    def advance() -> None:
        st.session_state.paint_stage = stage + 1

    if stage == STAGE_TABLE:
        st.caption("Loading the charts…")
    when_drawn(stage, STAGE_DRAWN[stage], advance)


runs_part()
if paint_stage() > STAGE_TABLE:
    charts_part()
if paint_stage() < STAGE_ALL:
    next_stage()
