"""Plotly figures of the monitor, built from ``RunData`` (no Streamlit here, so tests can inspect them).

Every trace carries ``meta = {"run", "split", "column", "kind"}`` so that a test or a browser script can
find a curve without relying on trace order or colours. Long curves are thinned to at most
``MAX_POINTS`` points per trace after smoothing; the last point is always kept so the tip stays live.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from aline import contract as C
from aline.runview import RunData
from aline.smoothing import debiased_ema

MAX_POINTS = 5000
VAL_PANELS = (("auc", "AUC"), ("brier", "Brier"), ("ece", "ECE"))
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")


def run_color(index: int) -> str:
    return _PALETTE[index % len(_PALETTE)]


def thin(x: np.ndarray, y: np.ndarray, limit: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Every k-th point so that at most ``limit`` remain, plus the last one (``[m]`` → ``[≤limit+1]``)."""
    n = len(x)
    if n <= limit:
        return x, y
    step = math.ceil(n / limit)
    idx = np.arange(0, n, step)
    if idx[-1] != n - 1:
        idx = np.append(idx, n - 1)
    return x[idx], y[idx]


def _last_per_epoch(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Train rows hold running averages, so the last one of an epoch is that epoch's mean train loss.
    if x.size == 0:
        return x, y
    last = np.r_[x[1:] != x[:-1], True]
    return x[last], y[last]


def _clean(values: np.ndarray) -> list[float | None]:
    # Plain lists (not typed arrays) keep the figure JSON readable; NaN becomes a gap (null).
    return [None if not math.isfinite(v) else float(v) for v in values]


def loss_figure(
    runs: Sequence[RunData], x_axis: str = "iteration", smoothing: float = 0.6, log_y: bool = False
) -> go.Figure:
    """Total loss and its three parts (2×2 panels); per run and split a faint raw and a smoothed line."""
    fig = make_subplots(rows=2, cols=2, subplot_titles=C.LOSS_COLUMNS, horizontal_spacing=0.08)
    for r, run in enumerate(runs):
        for split, dash in ((C.SPLIT_TRAIN, "solid"), (C.SPLIT_VAL, "dot")):
            for p, column in enumerate(C.LOSS_COLUMNS):
                xs, ys = run.series(split, column, x=x_axis)
                if split == C.SPLIT_TRAIN and x_axis == "epoch":
                    xs, ys = _last_per_epoch(xs, ys)
                if xs.size == 0:
                    continue
                smooth = debiased_ema(ys, smoothing)  # [m]
                row, col = divmod(p, 2)
                label = f"{run.name} · {split}"
                meta = {"run": run.name, "split": split, "column": column}
                tx, ty = thin(xs, ys)
                fig.add_trace(
                    go.Scatter(
                        x=_clean(tx), y=_clean(ty), mode="lines+markers" if split == C.SPLIT_VAL else "lines",
                        line={"color": run_color(r), "width": 1, "dash": dash}, opacity=0.25,
                        name=label, legendgroup=label, showlegend=False, hoverinfo="skip",
                        meta={**meta, "kind": "raw"},
                    ),
                    row=row + 1, col=col + 1,
                )  # fmt: skip
                sx, sy = thin(xs, smooth)
                fig.add_trace(
                    go.Scatter(
                        x=_clean(sx), y=_clean(sy), mode="lines+markers" if split == C.SPLIT_VAL else "lines",
                        line={"color": run_color(r), "width": 2, "dash": dash},
                        name=label, legendgroup=label, showlegend=p == 0,
                        meta={**meta, "kind": "smooth"},
                    ),
                    row=row + 1, col=col + 1,
                )  # fmt: skip
    fig.update_xaxes(title_text=x_axis)
    fig.update_yaxes(type="log" if log_y else "linear")
    fig.update_layout(
        title={"text": "Loss"},
        height=560,
        margin={"t": 70, "b": 40},
        uirevision="loss",
        meta={"chart": "loss"},
    )
    return fig


def val_metrics_figure(runs: Sequence[RunData]) -> go.Figure:
    """Validation AUC, Brier and ECE per epoch, with the Bayes-optimal values as dashed lines."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t in VAL_PANELS])
    all_epochs: list[float] = []
    for r, run in enumerate(runs):
        for p, (column, _) in enumerate(VAL_PANELS):
            ep, vals = run.series(C.SPLIT_VAL, column, x="epoch")
            all_epochs.extend(ep.tolist())
            if ep.size == 0:
                continue
            fig.add_trace(
                go.Scatter(
                    x=_clean(ep), y=_clean(vals), mode="lines+markers", name=run.name, legendgroup=run.name,
                    showlegend=p == 0, line={"color": run_color(r)},
                    meta={"run": run.name, "split": C.SPLIT_VAL, "column": column, "kind": "value"},
                ),
                row=1, col=p + 1,
            )  # fmt: skip
    lo, hi = (min(all_epochs), max(all_epochs)) if all_epochs else (0.0, 1.0)
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    for p, (column, title) in enumerate(VAL_PANELS):
        seen: set[float] = set()
        for run in runs:
            value = run.status.oracle.get(column)
            if value is None or value in seen:
                continue
            seen.add(value)
            fig.add_trace(
                go.Scatter(
                    x=[lo, hi], y=[value, value], mode="lines", name=f"Bayes-optimal {title} = {value:.4g}",
                    line={"color": "black", "dash": "dash", "width": 1},
                    meta={"run": run.name, "split": "oracle", "column": column, "kind": "oracle"},
                ),
                row=1, col=p + 1,
            )  # fmt: skip
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(
        title={"text": "Validation metrics"}, height=380, margin={"t": 70, "b": 40}, uirevision="val",
        meta={"chart": "val"},
    )  # fmt: skip
    return fig


def reliability_figure(run: RunData, epoch: int) -> go.Figure:
    """Reliability diagram of one epoch: diagonal, calibration curve, and prediction counts per bin."""
    table = run.calibration_for(epoch)
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    count = table["count"]  # [bins]
    fig.add_trace(
        go.Bar(
            x=_clean((table["lo"] + table["hi"]) / 2), y=_clean(count),
            width=_clean(table["hi"] - table["lo"]), name="predictions per bin",
            marker={"color": "#999999"}, opacity=0.35,
            meta={"run": run.name, "split": C.SPLIT_VAL, "column": "count", "kind": "histogram"},
        ),
        secondary_y=True,
    )  # fmt: skip
    fig.add_trace(
        go.Scatter(
            x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
            line={"color": "black", "dash": "dash", "width": 1},
            meta={"run": run.name, "split": C.SPLIT_VAL, "column": "diagonal", "kind": "reference"},
        ),
        secondary_y=False,
    )  # fmt: skip
    ece = run.metric_at_epoch("ece", epoch)
    brier = run.metric_at_epoch("brier", epoch)
    filled = count > 0
    fig.add_trace(
        go.Scatter(
            x=_clean(table["mean_pred"][filled]), y=_clean(table["frac_pos"][filled]), mode="lines+markers",
            name=f"epoch {epoch}: ECE {_fmt(ece)}, Brier {_fmt(brier)}", line={"color": run_color(0)},
            meta={"run": run.name, "split": C.SPLIT_VAL, "column": "frac_pos", "kind": "calibration"},
        ),
        secondary_y=False,
    )  # fmt: skip
    fig.update_xaxes(title_text="predicted probability", range=[0, 1])
    fig.update_yaxes(title_text="observed frequency", range=[0, 1], secondary_y=False)
    fig.update_yaxes(title_text="count", secondary_y=True, showgrid=False)
    fig.update_layout(
        title={"text": f"Reliability — {run.name}, epoch {epoch}"}, height=420, uirevision="rel",
        legend={"orientation": "h", "y": -0.2}, meta={"chart": "reliability"},
    )  # fmt: skip
    return fig


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def topk_figures(run: RunData) -> tuple[go.Figure, go.Figure]:
    """Top-k hour selection: epoch × hour heatmap, and the latest epoch as 24 bars."""
    epochs, matrix = run.topk_matrix()  # [E], [E, 24]
    hours = list(range(C.HOURS))
    heat = go.Figure(
        go.Heatmap(
            z=matrix.tolist(), x=hours, y=epochs.tolist(), colorscale="Viridis", zmin=0, zmax=1,
            colorbar={"title": {"text": "share"}},
            meta={"run": run.name, "split": C.SPLIT_VAL, "column": "frequency", "kind": "heatmap"},
        )
    )  # fmt: skip
    heat.update_layout(
        title={"text": f"Top-k hours per epoch — {run.name}"}, xaxis={"title": {"text": "hour"}, "dtick": 1},
        yaxis={"title": {"text": "epoch"}}, height=380, uirevision="heat", meta={"chart": "topk_heatmap"},
    )  # fmt: skip
    latest = matrix[-1] if len(epochs) else np.zeros(C.HOURS)
    title = f"Top-k hours, epoch {int(epochs[-1])}" if len(epochs) else "Top-k hours"
    bars = go.Figure(
        go.Bar(
            x=hours, y=latest.tolist(), marker={"color": run_color(0)},
            meta={"run": run.name, "split": C.SPLIT_VAL, "column": "frequency", "kind": "latest"},
        )
    )  # fmt: skip
    bars.update_layout(
        title={"text": title}, xaxis={"title": {"text": "hour"}, "dtick": 1},
        yaxis={"title": {"text": "share of windows"}, "range": [0, 1]}, height=380, uirevision="bars",
        meta={"chart": "topk_bars"},
    )  # fmt: skip
    return heat, bars
