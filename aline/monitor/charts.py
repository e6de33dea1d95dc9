"""Plotly figures of the monitor, built from ``RunData`` (no Streamlit here, so tests can inspect them).

Every trace carries ``meta = {"run", "split", "column", "kind"}`` so that a test or a browser script can
find a curve without relying on trace order or colours; every figure carries ``layout.meta = {"chart",
"diverged"}``, the latter mapping a run to the columns where it diverged (left out of the y scale).
Run names go into the figure escaped, since plotly reads ``<b>`` and friends in names as markup.
Long curves are downsampled for drawing only (``aline.monitor.plotscale.downsample``: min/max per bucket
plus the first and last point), to fewer points per curve the more runs share a panel (``curve_points``).

Figures are built as plain dicts and wrapped without plotly's per-property validation (``_validate=False``):
validating every trace cost about a second per refresh for one run, far more than reading the files. They
are finished when returned (nothing changes them afterwards), which lets ``ChartFigure`` make their dict
form once.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from aline import contract as C
from aline.monitor.heads import FORECAST, HEAD_TITLES, HEADS, Panel
from aline.monitor.plotscale import curve_points, diverged, downsample, integer_ticks, robust_range
from aline.monitor.runview import RunData
from aline.monitor.smoothing import debiased_ema

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
X_MODES = ("step", "epoch", "relative", "wall")
X_TITLES = {"step": "iteration", "epoch": "epoch", "relative": "hours since start", "wall": "time (UTC)"}
# Markers only on curves this short: on a thousand-epoch validation curve they are a thousand SVG nodes per
# panel that show nothing the line does not, and they slow the browser's drawing most of all.
MARKER_POINTS = 200
# The calibration-over-epochs chart draws at most this many epochs (evenly spread, first and latest
# included): each is a curve and a legend entry, and a thousand of them took the browser seconds.
CALIBRATION_CURVES = 12
# Plotly's PNG button: a fixed size so the export holds the whole figure, legend included, whatever the
# size of the browser window it was drawn in.
PNG_WIDTH = 1400


class ChartFigure(go.Figure):
    """A finished figure of this module, whose dict form is made once.

    ``st.plotly_chart`` calls ``to_dict`` (a deep copy plus a walk over every number) each time it sends a
    figure, and a live page sends every chart on every refresh: that was most of a refresh's server time,
    for figures that had not changed. Nothing changes these figures after they are built, so the first
    dict is handed out again (read only: Streamlit only serialises it).
    """

    _as_dict: dict | None = None

    def to_dict(self) -> dict:
        if self._as_dict is None:
            self._as_dict = super().to_dict()
        return self._as_dict


def _figure(data: list[dict], layout: dict) -> ChartFigure:
    return ChartFigure({"data": data, "layout": layout}, _validate=False)


def _grid(rows: int, cols: int, titles: Sequence[str], hspace: float, vspace: float) -> dict:
    """Layout axes for a rows × cols grid of subplots (numbered row by row), with a title over each."""
    layout: dict = {"annotations": []}
    width = (1 - hspace * (cols - 1)) / cols
    height = (1 - vspace * (rows - 1)) / rows
    for i, title in enumerate(titles):
        r, c = divmod(i, cols)
        x0 = c * (width + hspace)
        y1 = 1 - r * (height + vspace)
        n = "" if i == 0 else str(i + 1)
        layout[f"xaxis{n}"] = {"domain": _unit(x0, x0 + width), "anchor": f"y{n}"}
        layout[f"yaxis{n}"] = {"domain": _unit(y1 - height, y1), "anchor": f"x{n}"}
        layout["annotations"].append(
            {
                "text": title,
                "showarrow": False,
                "xref": "paper",
                "yref": "paper",
                "x": x0 + width / 2,
                "y": y1,
                "xanchor": "center",
                "yanchor": "bottom",
                "font": {"size": 14},
            }
        )
    return layout


def _unit(lo: float, hi: float) -> list[float]:
    # Rounding keeps 1 - 3 * (1/3) from landing a hair below 0, which plotly refuses.
    return [min(1.0, max(0.0, round(lo, 6))), min(1.0, max(0.0, round(hi, 6)))]


def _legend_height(data: list[dict]) -> int:
    # Three entries per legend row at the export width; about 22 px a row.
    entries = sum(1 for t in data if t.get("showlegend", True))
    return 22 * math.ceil(entries / 3)


def _bottom_legend(data: list[dict]) -> dict:
    """A horizontal legend under the plots, placed in the figure's own box (``yref: container``) with a
    bottom margin sized to hold it, so neither the page nor the PNG export can cut it off."""
    return {
        "legend": {"orientation": "h", "yref": "container", "y": 0, "yanchor": "bottom", "x": 0},
        "margin": {"t": 80, "l": 70, "r": 30, "b": 70 + _legend_height(data)},
    }


def _axes(i: int) -> dict[str, str]:
    """Trace keys placing it on subplot ``i`` (0-based)."""
    n = "" if i == 0 else str(i + 1)
    return {"xaxis": f"x{n}", "yaxis": f"y{n}"}


def png_config(fig: go.Figure, name: str) -> dict[str, object]:
    """``st.plotly_chart(config=...)`` for a figure: PNG export at a size that fits its legend."""
    height = fig.layout.height or 450
    return {
        "displaylogo": False,
        "toImageButtonOptions": {"format": "png", "filename": name, "width": PNG_WIDTH, "height": height},
    }


def run_color(index: int) -> str:
    return _PALETTE[index % len(_PALETTE)]


def label(name: str) -> str:
    """A run name as plotly text: HTML-escaped, so ``<b>x</b>`` reads literally instead of turning bold."""
    return html.escape(name, quote=False)


def _clean(values: np.ndarray) -> list[float | None]:
    # Plain lists (not typed arrays) keep the figure JSON readable; NaN and ±inf become a gap (null).
    return [float(v) if math.isfinite(v) else None for v in values]


def _last_per_epoch(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Train rows hold running averages, so the last one of an epoch is that epoch's mean train loss.
    if x.size == 0:
        return x, y
    last = np.r_[x[1:] != x[:-1], True]
    return x[last], y[last]


def xy(run: RunData, split: str, column: str, x_mode: str) -> tuple[np.ndarray, np.ndarray]:
    """The (x, y) to draw for one run, split and metric under an x mode (see ``X_MODES``)."""
    source = {"step": "iteration", "epoch": "epoch", "relative": "relative", "wall": "time"}[x_mode]
    xs, ys = run.series(split, column, x=source)
    if x_mode == "epoch" and split == C.SPLIT_TRAIN:
        xs, ys = _last_per_epoch(xs, ys)
    if x_mode == "wall":
        xs = xs * 1000.0  # plotly date axes take milliseconds since the epoch
    return xs, ys


def _series(
    run: RunData, split: str, column: str, x_mode: str, flagged: dict[str, list[str]], tag: str
) -> tuple[np.ndarray, np.ndarray, bool]:
    """One series and whether it may set the y scale; a diverged one is recorded in ``flagged`` under
    ``tag`` and kept out of the scale, so it cannot flatten the other runs."""
    xs, ys = xy(run, split, column, x_mode)
    why = diverged(ys) if ys.size else None
    if why:
        flagged.setdefault(run.name, []).append(f"{tag} {why}")
    return xs, ys, not why


def _finish_axes(layout: dict, x_mode: str, x_values: list[np.ndarray], n_panels: int) -> None:
    finite = [v[np.isfinite(v)] for v in x_values]
    finite = [v for v in finite if v.size]
    ticks: dict[str, object] = {}
    if finite and x_mode in ("epoch", "step"):
        lo = float(min(v.min() for v in finite))
        hi = float(max(v.max() for v in finite))
        if x_mode == "epoch" or hi - lo < 10:
            ticks = integer_ticks(lo, hi)
    for i in range(n_panels):
        axis = layout["xaxis" if i == 0 else f"xaxis{i + 1}"]
        axis["title"] = {"text": X_TITLES[x_mode]}
        if x_mode == "wall":
            axis["type"] = "date"
        axis.update(ticks)


def _calibration_diagonal(run: RunData) -> dict:
    """The dashed y = x line of a reliability chart (perfect calibration)."""
    return _scatter(
        [0, 1],
        [0, 1],
        mode="lines",
        name="perfect calibration",
        line={"color": "black", "dash": "dash", "width": 1},
        meta={"run": run.name, "split": C.SPLIT_VAL, "column": "diagonal", "kind": "reference"},
    )


def _scatter(x, y, **kw) -> dict:
    return {
        "type": "scatter",
        "x": _clean(np.asarray(x, dtype=np.float64)),
        "y": _clean(np.asarray(y, dtype=np.float64)),
        **kw,
    }


def panels_figure(
    runs: Sequence[RunData],
    panels: Sequence[Panel],
    chart: str,
    title: str,
    x_mode: str = "epoch",
    robust: bool = True,
    cols: int = 2,
) -> go.Figure:
    """One subplot per panel whose column some run logs; per run one line, plus the panel's references.

    With ``robust`` each panel's y range ignores outlying points and the runs that diverged in that
    panel (they are still drawn, and named in ``layout.meta["diverged"]``).
    """
    shown = [p for p in panels if any(p.column in run.columns for run in runs)]
    if not shown:
        shown = list(panels[:1])
    cols = min(cols, len(shown))
    rows = math.ceil(len(shown) / cols)
    layout = _grid(rows, cols, [p.title for p in shown], hspace=0.1, vspace=0.3 / rows if rows > 1 else 0)
    data: list[dict] = []
    flagged: dict[str, list[str]] = {}
    x_all: list[np.ndarray] = []
    limit = curve_points(len(runs))  # one curve per run in each panel
    for p, panel in enumerate(shown):
        scale_y: list[np.ndarray] = []
        ref_values: list[float] = []
        x_panel: list[np.ndarray] = []
        for r, run in enumerate(runs):
            xs, ys, scaled = _series(run, panel.split, panel.column, x_mode, flagged, panel.column)
            if ys.size == 0:
                continue
            x_panel.append(xs)
            if scaled:
                scale_y.append(ys)
            dx, dy = downsample(xs, ys, limit)
            dots = (panel.split != C.SPLIT_TRAIN or dx.size == 1) and dx.size <= MARKER_POINTS
            data.append(
                _scatter(
                    dx,
                    dy,
                    mode="lines+markers" if dots else "lines",
                    name=label(run.name),
                    legendgroup=run.name,
                    showlegend=p == 0,
                    line={"color": run_color(r), "width": 1.5},
                    marker={"size": 6},
                    meta={"run": run.name, "split": panel.split, "column": panel.column, "kind": "value"},
                    **_axes(p),
                )
            )
        x_all.extend(x_panel)
        lo, hi = _x_span(x_panel)
        for ref in panel.refs:
            seen: set[float] = set()
            for run in runs:
                value = ref.resolve(run)
                if value is None or value in seen:
                    continue
                seen.add(value)
                ref_values.append(value)
                data.append(
                    _scatter(
                        [lo, hi],
                        [value, value],
                        mode="lines",
                        name=f"{panel.title}: {ref.text} = {value:.4g}",
                        showlegend=True,
                        line={"color": ref.color, "dash": ref.dash, "width": 1},
                        hoverinfo="name",
                        meta={
                            "run": run.name,
                            "split": "reference",
                            "column": panel.column,
                            "kind": "oracle",
                            "ref": ref.key or ref.text,
                        },
                        **_axes(p),
                    )
                )
                if ref.value is not None:
                    break  # a constant is the same for every run
        axis = layout["yaxis" if p == 0 else f"yaxis{p + 1}"]
        if panel.log:
            axis["type"] = "log"
        if robust and panel.robust:
            yr = robust_range(scale_y, ref_values, log=panel.log)
            if yr is not None:
                axis["range"] = yr
        if not x_panel:
            n = "" if p == 0 else str(p + 1)
            layout["annotations"].append(
                {
                    "text": f"{panel.column}: no values yet",
                    "showarrow": False,
                    "xref": f"x{n} domain",
                    "yref": f"y{n} domain",
                    "x": 0.5,
                    "y": 0.5,
                }
            )
    _finish_axes(layout, x_mode, x_all, len(shown))
    layout.update(
        title={"text": title},
        height=300 * rows + 90 + _legend_height(data),
        **_bottom_legend(data),
        uirevision=chart,
        meta={"chart": chart, "diverged": flagged},
    )
    return _figure(data, layout)


def _x_span(xs: list[np.ndarray]) -> tuple[float, float]:
    finite = [v[np.isfinite(v)] for v in xs]
    finite = [v for v in finite if v.size]
    if not finite:
        return 0.0, 1.0
    lo = float(min(v.min() for v in finite))
    hi = float(max(v.max() for v in finite))
    if lo == hi:
        return lo - 0.5, hi + 0.5
    return lo, hi


def head_figure(runs: Sequence[RunData], head: str, x_mode: str = "epoch", robust: bool = True) -> go.Figure:
    """The chart of one head (``forecast``, ``posterior``, ``policy``, ``optimisation``) with its limits."""
    return panels_figure(runs, HEADS[head], head, HEAD_TITLES[head], x_mode=x_mode, robust=robust)


def loss_figure(
    runs: Sequence[RunData],
    x_mode: str = "step",
    smoothing: float = 0.6,
    log_y: bool = False,
    robust: bool = True,
) -> go.Figure:
    """Total loss and its three parts (2×2 panels); per run and split a faint raw and a smoothed line."""
    layout = _grid(2, 2, C.LOSS_COLUMNS, hspace=0.1, vspace=0.18)
    data: list[dict] = []
    flagged: dict[str, list[str]] = {}
    x_all: list[np.ndarray] = []
    scale: list[list[np.ndarray]] = [[] for _ in C.LOSS_COLUMNS]
    limit = curve_points(2 * len(runs))  # a raw and a smoothed train curve per run in each panel
    for r, run in enumerate(runs):
        for split, dash in ((C.SPLIT_TRAIN, "solid"), (C.SPLIT_VAL, "dot")):
            for p, column in enumerate(C.LOSS_COLUMNS):
                xs, ys, scaled = _series(run, split, column, x_mode, flagged, f"{split} {column}")
                if xs.size == 0:
                    continue
                x_all.append(xs)
                if scaled:
                    scale[p].append(ys)
                smooth = debiased_ema(ys, smoothing)  # [m]
                name = label(f"{run.name} · {split}")
                meta = {"run": run.name, "split": split, "column": column}
                tx, ty = downsample(xs, ys, limit)
                dots = (split == C.SPLIT_VAL or tx.size == 1) and tx.size <= MARKER_POINTS
                mode = "lines+markers" if dots else "lines"
                data.append(
                    _scatter(
                        tx,
                        ty,
                        mode=mode,
                        line={"color": run_color(r), "width": 1, "dash": dash},
                        opacity=0.25,
                        name=name,
                        legendgroup=name,
                        showlegend=False,
                        hoverinfo="skip",
                        meta={**meta, "kind": "raw"},
                        **_axes(p),
                    )
                )
                sx, sy = downsample(xs, smooth, limit)
                data.append(
                    _scatter(
                        sx,
                        sy,
                        mode=mode,
                        line={"color": run_color(r), "width": 2, "dash": dash},
                        name=name,
                        legendgroup=name,
                        showlegend=p == 0,
                        meta={**meta, "kind": "smooth"},
                        **_axes(p),
                    )
                )
    for p in range(len(C.LOSS_COLUMNS)):
        axis = layout["yaxis" if p == 0 else f"yaxis{p + 1}"]
        axis["type"] = "log" if log_y else "linear"
        if robust:
            yr = robust_range(scale[p], log=log_y)
            if yr is not None:
                axis["range"] = yr
    _finish_axes(layout, x_mode, x_all, len(C.LOSS_COLUMNS))
    layout.update(
        title={"text": "Loss (train solid, validation dotted; smoothed, raw faint)"},
        height=640 + _legend_height(data),
        **_bottom_legend(data),
        uirevision="loss",
        meta={"chart": "loss", "diverged": flagged},
    )
    return _figure(data, layout)


def val_metrics_figure(runs: Sequence[RunData]) -> go.Figure:
    """Validation AUC, Brier and ECE per epoch with the Bayes lines (kept for scripts; see head_figure)."""
    return panels_figure(runs, FORECAST[:3], "val", "Validation metrics", x_mode="epoch", cols=3)


def reliability_figure(run: RunData, epoch: int) -> go.Figure:
    """Reliability diagram of one epoch: diagonal, calibration curve, and prediction counts per bin."""
    table = run.calibration_for(epoch)
    count = table["count"]  # [bins]
    ece = run.metric_at_epoch("ece", epoch)
    brier = run.metric_at_epoch("brier", epoch)
    filled = count > 0
    data = [
        {
            "type": "bar",
            "x": _clean((table["lo"] + table["hi"]) / 2),
            "y": _clean(count),
            "width": _clean(table["hi"] - table["lo"]),
            "name": "predictions per bin",
            "marker": {"color": "#999999"},
            "opacity": 0.35,
            "xaxis": "x",
            "yaxis": "y2",
            "meta": {"run": run.name, "split": C.SPLIT_VAL, "column": "count", "kind": "histogram"},
        },
        _calibration_diagonal(run),
        _scatter(
            table["mean_pred"][filled],
            table["frac_pos"][filled],
            mode="lines+markers",
            name=f"epoch {epoch}: ECE {_fmt(ece)}, Brier {_fmt(brier)}",
            line={"color": run_color(0)},
            meta={"run": run.name, "split": C.SPLIT_VAL, "column": "frac_pos", "kind": "calibration"},
        ),
    ]
    layout = {
        "title": {"text": f"Reliability — {label(run.name)}, epoch {epoch}"},
        "height": 440,
        "uirevision": "rel",
        "xaxis": {"title": {"text": "predicted probability"}, "range": [0, 1]},
        "yaxis": {"title": {"text": "observed frequency"}, "range": [0, 1]},
        "yaxis2": {"title": {"text": "count"}, "overlaying": "y", "side": "right", "showgrid": False},
        "legend": {"orientation": "h", "yref": "container", "y": 0.02, "yanchor": "bottom"},
        "margin": {"b": 110},
        "meta": {"chart": "reliability", "diverged": {}},
    }
    return _figure(data, layout)


def calibration_epochs_figure(run: RunData) -> go.Figure:
    """Calibration across epochs: the reliability curve of each epoch (at most ``CALIBRATION_CURVES``, evenly
    spread), early epochs pale, the latest dark."""
    logged = run.calibration_epochs()
    epochs = logged
    if len(logged) > CALIBRATION_CURVES:
        picks = np.unique(np.linspace(0, len(logged) - 1, CALIBRATION_CURVES).round().astype(int))
        epochs = [logged[i] for i in picks]
    data = [_calibration_diagonal(run)]
    n = len(epochs)
    for i, epoch in enumerate(epochs):
        table = run.calibration_for(epoch)
        filled = table["count"] > 0
        shade = min(1.0, 0.2 + 0.8 * (i + 1) / n)  # later epochs darker
        data.append(
            _scatter(
                table["mean_pred"][filled],
                table["frac_pos"][filled],
                mode="lines+markers",
                name=f"epoch {epoch}",
                opacity=shade,
                line={"color": run_color(0), "width": 1 + 1.5 * (i == n - 1)},
                marker={"size": 4},
                meta={
                    "run": run.name,
                    "split": C.SPLIT_VAL,
                    "column": "frac_pos",
                    "kind": "calibration",
                    "epoch": epoch,
                },
            )
        )
    layout = {
        "title": {"text": f"Calibration over epochs — {label(run.name)}" + _of(len(epochs), len(logged))},
        "height": 440,
        "xaxis": {"title": {"text": "predicted probability"}, "range": [0, 1]},
        "yaxis": {"title": {"text": "observed frequency"}, "range": [0, 1]},
        "uirevision": "calib_epochs",
        "meta": {"chart": "calibration_epochs", "diverged": {}},
    }
    return _figure(data, layout)


def _of(shown: int, logged: int) -> str:
    return f" ({shown} of {logged} epochs)" if shown < logged else ""


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def topk_figures(run: RunData) -> tuple[go.Figure, go.Figure]:
    """Top-k hour selection: epoch × hour heatmap, and the latest epoch as 24 bars."""
    epochs, matrix = run.topk_matrix()  # [E], [E, 24]
    hours = list(range(C.HOURS))
    yticks = integer_ticks(float(epochs.min()), float(epochs.max())) if len(epochs) else {}
    heat = _figure(
        [
            {
                "type": "heatmap",
                "z": matrix.tolist(),
                "x": hours,
                "y": epochs.tolist(),
                "colorscale": "Viridis",
                "zmin": 0,
                "zmax": 1,
                "colorbar": {"title": {"text": "share"}},
                "meta": {"run": run.name, "split": C.SPLIT_VAL, "column": "frequency", "kind": "heatmap"},
            }
        ],
        {
            "title": {"text": f"Top-k hours per epoch — {label(run.name)}"},
            "xaxis": {"title": {"text": "hour"}, "dtick": 1},
            "yaxis": {"title": {"text": "epoch"}, **yticks},
            "height": 400,
            "uirevision": "heat",
            "meta": {"chart": "topk_heatmap", "diverged": {}},
        },
    )
    latest = matrix[-1] if len(epochs) else np.zeros(C.HOURS)
    title = f"Top-k hours, epoch {int(epochs[-1])}" if len(epochs) else "Top-k hours"
    bars = _figure(
        [
            {
                "type": "bar",
                "x": hours,
                "y": latest.tolist(),
                "marker": {"color": run_color(0)},
                "meta": {"run": run.name, "split": C.SPLIT_VAL, "column": "frequency", "kind": "latest"},
            }
        ],
        {
            "title": {"text": title},
            "xaxis": {"title": {"text": "hour"}, "dtick": 1},
            "yaxis": {"title": {"text": "share of windows"}, "range": [0, 1]},
            "height": 400,
            "uirevision": "bars",
            "meta": {"chart": "topk_bars", "diverged": {}},
        },
    )
    return heat, bars
