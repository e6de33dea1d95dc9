"""Plotly figures of the monitor, built from ``RunData`` (no Streamlit here, so tests can inspect them).

Every trace carries ``meta = {"run", "split", "column", "kind"}`` so that a test or a browser script can
find a curve without relying on trace order or colours; every figure carries ``layout.meta = {"chart",
"diverged"}``, the latter mapping a run to the columns where it diverged (left out of the y scale).
Run names go into the figure escaped, since plotly reads ``<b>`` and friends in names as markup.
Long curves are downsampled for drawing only (``aline.plotscale.downsample``: min/max per bucket plus the
first and last point).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from aline import contract as C
from aline.plotscale import diverged, downsample, integer_ticks, robust_range
from aline.runview import RunData
from aline.smoothing import debiased_ema

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
X_MODES = ("step", "epoch", "relative", "wall")
X_TITLES = {"step": "iteration", "epoch": "epoch", "relative": "hours since start", "wall": "time (UTC)"}
# Plotly's PNG button: a fixed size so the export holds the whole figure, legend included, whatever the
# size of the browser window it was drawn in.
PNG_WIDTH = 1400


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


@dataclass
class Ref:
    """A horizontal reference line: ``key`` in status.json's oracle (or a constant ``value``)."""

    text: str
    key: str | None = None
    value: float | None = None
    dash: str = "dash"
    color: str = "black"

    def resolve(self, run: RunData) -> float | None:
        if self.value is not None:
            return self.value
        return run.status.oracle.get(self.key) if self.key else None


@dataclass
class Panel:
    column: str
    title: str
    split: str = C.SPLIT_VAL
    refs: list[Ref] = field(default_factory=list)
    log: bool = False


FORECAST = [
    Panel("auc", "AUC", refs=[Ref("Bayes", "auc"), Ref("logistic regression", "logreg_auc", dash="dot",
                                                      color="#777777")]),
    Panel("brier", "Brier", refs=[Ref("Bayes", "brier")]),
    Panel("ece", "ECE", refs=[Ref("Bayes", "ece")]),
    Panel("pr_auc", "PR AUC", refs=[Ref("Bayes", "pr_auc")]),
]  # fmt: skip
POSTERIOR = [
    Panel("post_mse", "posterior MSE", refs=[Ref("floor (exact posterior)", "post_mse_floor")]),
    Panel("sigma_mae", "sigma error (MAE)", refs=[Ref("exact", value=0.0, dash="dot", color="#777777")]),
]
POLICY = [
    Panel("policy_value", "policy value (share of oracle)", refs=[
        Ref("oracle", value=1.0), Ref("best fixed hours", "best_fixed_share", dash="dot", color="#2ca02c"),
        Ref("random hours", "random_share", dash="dot", color="#d62728")]),
    Panel("auc_asked", "AUC after asking", refs=[Ref("Bayes after the oracle's answers", "auc_asked")]),
    Panel("brier_asked", "Brier after asking", refs=[Ref("Bayes after the oracle's answers", "brier_asked")]),
    Panel("ask_outside_pool", "asks outside the pool (share)", refs=[Ref("none", value=0.0, dash="dot")]),
    Panel("gain_spearman", "gain rank correlation (Spearman)", refs=[Ref("perfect", value=1.0, dash="dot")]),
]  # fmt: skip
OPTIMISATION = [
    Panel("lr", "learning rate", split=C.SPLIT_TRAIN, log=True),
    Panel("grad_norm", "gradient norm", split=C.SPLIT_TRAIN),
]
HEADS = {"forecast": FORECAST, "posterior": POSTERIOR, "policy": POLICY, "optimisation": OPTIMISATION}
HEAD_TITLES = {
    "forecast": "Forecast (validation) vs the Bayes-optimal forecast",
    "posterior": "Posterior (validation) vs the exact posterior",
    "policy": "Policy (validation) vs the oracle, the best fixed hours and random hours",
    "optimisation": "Optimisation (train)",
}


def _finish_axes(fig: go.Figure, x_mode: str, x_values: list[np.ndarray], n_cols: int, n_panels: int) -> None:
    for i in range(1, n_panels + 1):
        axis = "xaxis" if i == 1 else f"xaxis{i}"
        settings: dict[str, object] = {"title": {"text": X_TITLES[x_mode]}}
        if x_mode == "wall":
            settings["type"] = "date"
        if x_mode in ("epoch", "step"):
            finite = [v[np.isfinite(v)] for v in x_values if v.size]
            finite = [v for v in finite if v.size]
            if finite:
                lo = float(min(v.min() for v in finite))
                hi = float(max(v.max() for v in finite))
                if x_mode == "epoch" or hi - lo < 10:
                    settings.update(integer_ticks(lo, hi))
        fig.layout[axis].update(settings)


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
    fig = make_subplots(
        rows=rows, cols=cols, subplot_titles=[p.title for p in shown], horizontal_spacing=0.1,
        vertical_spacing=0.28 if rows > 1 else 0.1,
    )  # fmt: skip
    flagged: dict[str, list[str]] = {}
    x_all: list[np.ndarray] = []
    for p, panel in enumerate(shown):
        row, col = divmod(p, cols)
        scale_y: list[np.ndarray] = []
        ref_values: list[float] = []
        x_panel: list[np.ndarray] = []
        for r, run in enumerate(runs):
            xs, ys = xy(run, panel.split, panel.column, x_mode)
            if ys.size == 0:
                continue
            x_panel.append(xs)
            why = diverged(ys)
            if why:
                flagged.setdefault(run.name, []).append(f"{panel.column} {why}")
            else:
                scale_y.append(ys)
            dx, dy = downsample(xs, ys)
            many = panel.split == C.SPLIT_TRAIN and dx.size > 1
            fig.add_trace(
                go.Scatter(
                    x=_clean(dx), y=_clean(dy), mode="lines" if many else "lines+markers",
                    name=label(run.name), legendgroup=run.name, showlegend=p == 0,
                    line={"color": run_color(r), "width": 1.5}, marker={"size": 6},
                    meta={"run": run.name, "split": panel.split, "column": panel.column, "kind": "value"},
                ),
                row=row + 1, col=col + 1,
            )  # fmt: skip
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
                fig.add_trace(
                    go.Scatter(
                        x=[lo, hi], y=[value, value], mode="lines",
                        name=f"{panel.title}: {ref.text} = {value:.4g}", showlegend=True,
                        line={"color": ref.color, "dash": ref.dash, "width": 1}, hoverinfo="name",
                        meta={"run": run.name, "split": "reference", "column": panel.column,
                              "kind": "oracle", "ref": ref.key or ref.text},
                    ),
                    row=row + 1, col=col + 1,
                )  # fmt: skip
                if ref.value is not None:
                    break  # a constant is the same for every run
        axis = "yaxis" if p == 0 else f"yaxis{p + 1}"
        if panel.log:
            fig.layout[axis].type = "log"
        if robust:
            yr = robust_range(scale_y, ref_values, log=panel.log)
            if yr is not None:
                fig.layout[axis].range = yr
        if not x_panel:
            fig.add_annotation(
                text=f"{panel.column}: no values yet", showarrow=False, xref=f"x{p + 1} domain",
                yref=f"y{p + 1} domain", x=0.5, y=0.5,
            )  # fmt: skip
    _finish_axes(fig, x_mode, x_all, cols, len(shown))
    fig.update_layout(
        title={"text": title}, height=300 * rows + 90, margin={"t": 80, "b": 50, "r": 20},
        uirevision=chart, meta={"chart": chart, "diverged": flagged},
    )  # fmt: skip
    return fig


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
    fig = make_subplots(rows=2, cols=2, subplot_titles=C.LOSS_COLUMNS, horizontal_spacing=0.1,
                        vertical_spacing=0.18)  # fmt: skip
    flagged: dict[str, list[str]] = {}
    x_all: list[np.ndarray] = []
    scale: list[list[np.ndarray]] = [[] for _ in C.LOSS_COLUMNS]
    for r, run in enumerate(runs):
        for split, dash in ((C.SPLIT_TRAIN, "solid"), (C.SPLIT_VAL, "dot")):
            for p, column in enumerate(C.LOSS_COLUMNS):
                xs, ys = xy(run, split, column, x_mode)
                if xs.size == 0:
                    continue
                x_all.append(xs)
                why = diverged(ys)
                if why:
                    flagged.setdefault(run.name, []).append(f"{split} {column} {why}")
                else:
                    scale[p].append(ys)
                smooth = debiased_ema(ys, smoothing)  # [m]
                row, col = divmod(p, 2)
                name = label(f"{run.name} · {split}")
                meta = {"run": run.name, "split": split, "column": column}
                mode = "lines+markers" if split == C.SPLIT_VAL or xs.size == 1 else "lines"
                tx, ty = downsample(xs, ys)
                fig.add_trace(
                    go.Scatter(
                        x=_clean(tx), y=_clean(ty), mode=mode,
                        line={"color": run_color(r), "width": 1, "dash": dash}, opacity=0.25,
                        name=name, legendgroup=name, showlegend=False, hoverinfo="skip",
                        meta={**meta, "kind": "raw"},
                    ),
                    row=row + 1, col=col + 1,
                )  # fmt: skip
                sx, sy = downsample(xs, smooth)
                fig.add_trace(
                    go.Scatter(
                        x=_clean(sx), y=_clean(sy), mode=mode,
                        line={"color": run_color(r), "width": 2, "dash": dash},
                        name=name, legendgroup=name, showlegend=p == 0,
                        meta={**meta, "kind": "smooth"},
                    ),
                    row=row + 1, col=col + 1,
                )  # fmt: skip
    fig.update_yaxes(type="log" if log_y else "linear")
    if robust:
        for p in range(len(C.LOSS_COLUMNS)):
            yr = robust_range(scale[p], log=log_y)
            if yr is not None:
                fig.layout["yaxis" if p == 0 else f"yaxis{p + 1}"].range = yr
    _finish_axes(fig, x_mode, x_all, 2, len(C.LOSS_COLUMNS))
    fig.update_layout(
        title={"text": "Loss (train solid, validation dotted; smoothed, raw faint)"},
        height=640, margin={"t": 80, "b": 50, "r": 20}, uirevision="loss",
        meta={"chart": "loss", "diverged": flagged},
    )  # fmt: skip
    return fig


def val_metrics_figure(runs: Sequence[RunData]) -> go.Figure:
    """Validation AUC, Brier and ECE per epoch with the Bayes lines (kept for scripts; see head_figure)."""
    return panels_figure(runs, FORECAST[:3], "val", "Validation metrics", x_mode="epoch", cols=3)


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
        title={"text": f"Reliability — {label(run.name)}, epoch {epoch}"}, height=440, uirevision="rel",
        legend={"orientation": "h", "yref": "container", "y": 0.02, "yanchor": "bottom"},
        margin={"b": 110}, meta={"chart": "reliability", "diverged": {}},
    )  # fmt: skip
    return fig


def calibration_epochs_figure(run: RunData) -> go.Figure:
    """Calibration across epochs: the reliability curve of every epoch, early epochs pale, the latest dark."""
    epochs = run.calibration_epochs()
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
            line={"color": "black", "dash": "dash", "width": 1},
            meta={"run": run.name, "split": C.SPLIT_VAL, "column": "diagonal", "kind": "reference"},
        )
    )  # fmt: skip
    n = len(epochs)
    for i, epoch in enumerate(epochs):
        table = run.calibration_for(epoch)
        filled = table["count"] > 0
        shade = min(1.0, 0.2 + 0.8 * (i + 1) / n)  # later epochs darker
        fig.add_trace(
            go.Scatter(
                x=_clean(table["mean_pred"][filled]), y=_clean(table["frac_pos"][filled]),
                mode="lines+markers", name=f"epoch {epoch}", opacity=shade,
                line={"color": run_color(0), "width": 1 + 1.5 * (i == n - 1)}, marker={"size": 4},
                meta={"run": run.name, "split": C.SPLIT_VAL, "column": "frac_pos", "kind": "calibration",
                      "epoch": epoch},
            )
        )  # fmt: skip
    fig.update_layout(
        title={"text": f"Calibration over epochs — {label(run.name)}"}, height=440,
        xaxis={"title": {"text": "predicted probability"}, "range": [0, 1]},
        yaxis={"title": {"text": "observed frequency"}, "range": [0, 1]},
        uirevision="calib_epochs", meta={"chart": "calibration_epochs", "diverged": {}},
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
    yticks = integer_ticks(float(epochs.min()), float(epochs.max())) if len(epochs) else {}
    heat.update_layout(
        title={"text": f"Top-k hours per epoch — {label(run.name)}"},
        xaxis={"title": {"text": "hour"}, "dtick": 1},
        yaxis={"title": {"text": "epoch"}, **yticks}, height=400, uirevision="heat",
        meta={"chart": "topk_heatmap", "diverged": {}},
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
        yaxis={"title": {"text": "share of windows"}, "range": [0, 1]}, height=400, uirevision="bars",
        meta={"chart": "topk_bars", "diverged": {}},
    )  # fmt: skip
    return heat, bars


# --- headline values against their limits ------------------------------------------------------------------

# (column, label, oracle key or constant, higher is better)
HEADLINES = (
    ("auc", "AUC", "auc", True),
    ("brier", "Brier", "brier", False),
    ("pr_auc", "PR AUC", "pr_auc", True),
    ("post_mse", "posterior MSE", "post_mse_floor", False),
    ("policy_value", "policy value", 1.0, True),
    ("auc_asked", "AUC after asking", "auc_asked", True),
)


def headline(value: float, limit: float | None, higher_is_better: bool) -> str | None:
    """The value as a share of its limit: value/limit when higher is better, limit/value otherwise,
    so 100 % means "at the limit" either way. None if there is no usable limit."""
    if limit is None or not math.isfinite(limit) or limit <= 0 or value <= 0 or not math.isfinite(value):
        return None
    share = value / limit if higher_is_better else limit / value
    return f"{100 * share:.1f} %"


def headlines(run: RunData) -> list[tuple[str, str, str | None]]:
    """(label, value text, "xx.x % of <limit>" or None) for the newest validation row of ``run``."""
    row = run.newest_row(C.SPLIT_VAL) or {}
    out = []
    for column, name, ref, hib in HEADLINES:
        if column not in row:
            continue
        value = row[column]
        limit = ref if isinstance(ref, float) else run.status.oracle.get(ref)
        limit_name = "oracle" if isinstance(ref, float) else ("floor" if column == "post_mse" else "Bayes")
        share = headline(value, limit, hib)
        out.append((name, f"{value:.4g}", f"{share} of {limit_name}" if share else None))
    return out
