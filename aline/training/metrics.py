"""The trainer's ignite metrics: running averages on train, per-window validation figures on the evaluator.

Validation metrics are exact over the whole validation split whatever the number of processes. Each one
keeps the per-window values it needs together with the window's ``index`` (its row in the validation
dataset), gathers them from every process at the end of the epoch, drops the duplicate windows that a
``DistributedSampler`` pads each share with, orders the windows by ``index`` and only then computes its
figure with the NumPy rules of :mod:`aline.scoring`. The same windows in the same order give bit-identical
figures on one process and on several, and the trainer agrees with ``aline.evaluate`` by construction.

Undefined figures are NaN, not exceptions: ROC AUC and PR AUC of a set holding a single class, ``sigma_mae``
when the data has no posterior std (σ*), ``policy_value`` when the data has no ``query_value`` column or
the best hours hold no query value at all.

The evaluator's output contract (one row per window, B rows per batch, detached tensors):
``index`` [B] int, ``p`` [B], ``y`` [B] in {0, 1}, ``loss``/``loss_post``/``loss_policy``/``loss_bce`` [B],
``post_sq_err`` [B], ``sigma_abs_err`` [B], ``policy_qv`` [B], ``best_qv`` [B], and from the closed loop
(:func:`aline.training.closed_loop.loop_eval`) ``asked`` [B, 24] and ``pool`` [B, 24] (0/1), ``p_asked`` [B]
(p_next after the policy's answers; NaN without answers) and ``gain_rho`` [B] (NaN for windows where it was
not computed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric, RunningAverage
from ignite.metrics.metric import RunningBatchWise, SingleEpochRunningBatchWise, reinit__is_reduced

from aline import contract, scoring

INDEX_KEY = "index"
# Non-scalar per-epoch results; kept out of the metrics.csv column names on purpose.
CALIBRATION_METRIC = "calibration"
TOPK_METRIC = "topk_frequency"

# Validation metric name -> the evaluator column whose mean over windows it is.
MEAN_COLUMNS = {
    "loss": "loss",
    "loss_post": "loss_post",
    "loss_policy": "loss_policy",
    "loss_bce": "loss_bce",
    "post_mse": "post_sq_err",
    "sigma_mae": "sigma_abs_err",
}

__all__ = [
    "CALIBRATION_METRIC",
    "INDEX_KEY",
    "MEAN_COLUMNS",
    "TOPK_METRIC",
    "ECE",
    "LastValue",
    "PRAUC",
    "PolicySetValue",
    "ROCAUC",
    "BinaryMetric",
    "Brier",
    "CalibrationTable",
    "PolicyValue",
    "AskOutsidePool",
    "AskedForecast",
    "GainSpearman",
    "TopkFrequency",
    "WindowMean",
    "WindowMetric",
    "attach_training_metrics",
    "attach_validation_metrics",
    "validation_metrics",
]


Transform = Callable[[Any], Any]
Device = str | torch.device


def _identity(x: Any) -> Any:
    return x


class WindowMetric(Metric):
    """Base class: accumulates per-window columns keyed by ``index``; exact across processes.

    ``columns`` maps each evaluator output key this metric reads to its width: ``None`` for a [B] column,
    an int w for a [B, w] column. Subclasses implement :meth:`compute_from`, which receives each column as
    a float64 NumPy array ([N] or [N, w]) over the N distinct windows, in increasing ``index`` order.

    Every process must call :meth:`compute` (ignite does so at ``EPOCH_COMPLETED``): it is a collective.
    """

    def __init__(
        self,
        columns: Mapping[str, int | None],
        output_transform: Transform = _identity,
        device: Device = "cpu",
    ) -> None:
        if not columns:
            raise ValueError(f"{type(self).__name__}: needs at least one column to read")
        if INDEX_KEY in columns:
            raise ValueError(f"{type(self).__name__}: '{INDEX_KEY}' is always read; do not list it")
        self._spec: dict[str, int | None] = dict(columns)
        self._width = sum(1 if w is None else int(w) for w in self._spec.values())
        # Documents (and lets ignite tools introspect) which keys of the output dict this metric reads.
        self.required_output_keys = (INDEX_KEY, *self._spec)
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._index: list[torch.Tensor] = []  # each [B] int64
        self._rows: list[torch.Tensor] = []  # each [B, width] float64, columns side by side

    @reinit__is_reduced
    def update(self, output: Mapping[str, Any]) -> None:
        index, rows = self._read(output)
        self._index.append(index)
        self._rows.append(rows)

    @torch.no_grad()
    def iteration_completed(self, engine: Engine) -> None:
        # ignite's default turns a dict output into a tuple; these metrics want the dict (named columns).
        self.update(self._output_transform(engine.state.output))

    def compute(self) -> Any:
        index, rows = self._gather()  # collective: every process must get here, even with no rows
        if index.size == 0:
            raise NotComputableError(
                f"{type(self).__name__} needs at least one window before it can be computed"
            )
        # First occurrence of each window; np.unique also sorts by index, which fixes the summation order.
        _, first = np.unique(index, return_index=True)
        return self.compute_from(self._split(rows[first]))

    def compute_from(self, columns: dict[str, np.ndarray]) -> Any:
        raise NotImplementedError

    # --- internals ----------------------------------------------------------------------------------
    def _read(self, output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        name = type(self).__name__
        if not isinstance(output, Mapping):
            raise TypeError(f"{name}: expected the evaluator's output dict, got {type(output).__name__}")
        missing = [k for k in self.required_output_keys if k not in output]
        if missing:
            raise KeyError(f"{name}: evaluator output lacks {missing}; it has {sorted(output)}")
        index = torch.as_tensor(output[INDEX_KEY]).detach().cpu()
        integer = not (index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool)
        if index.ndim != 1 or not integer:
            raise ValueError(
                f"{name}: '{INDEX_KEY}' must be a 1-D integer tensor [B], "
                f"got shape {tuple(index.shape)} dtype {index.dtype}"
            )
        b = index.shape[0]
        parts = []
        for key, width in self._spec.items():
            col = torch.as_tensor(output[key]).detach().to("cpu", torch.float64)
            expected = (b,) if width is None else (b, width)
            if tuple(col.shape) != expected:
                raise ValueError(
                    f"{name}: '{key}' has shape {tuple(col.shape)}, expected {expected} "
                    f"(B = {b} windows from '{INDEX_KEY}')"
                )
            parts.append(col.reshape(b, -1))
        return index.to(torch.int64), torch.cat(parts, dim=1)  # [B], [B, width]

    def _gather(self) -> tuple[np.ndarray, np.ndarray]:
        index = torch.cat(self._index) if self._index else torch.zeros(0, dtype=torch.int64)  # [n]
        rows = torch.cat(self._rows) if self._rows else torch.zeros(0, self._width, dtype=torch.float64)
        if idist.get_world_size() > 1:
            # Counts are equal under a padding DistributedSampler; exchanging them first keeps the
            # gather correct for uneven shares too (no padding sampler, an empty process).
            counts = idist.all_gather(torch.tensor([index.shape[0]], dtype=torch.int64)).tolist()  # [world]
            index = _gather_rows(index, counts)
            rows = _gather_rows(rows, counts)
        return index.cpu().numpy(), rows.cpu().numpy()

    def _split(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        start = 0
        for key, width in self._spec.items():
            if width is None:
                out[key] = rows[:, start]  # [N]
                start += 1
            else:
                out[key] = rows[:, start : start + width]  # [N, w]
                start += width
        return out


def _gather_rows(x: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """All processes' rows of ``x`` ([n_r, ...] on process r), concatenated in rank order."""
    # all_gather needs equal shapes: pad every share to the largest, then cut the padding back out.
    most = max(counts)
    padded = torch.zeros((most, *x.shape[1:]), dtype=x.dtype)
    padded[: x.shape[0]] = x
    gathered = idist.all_gather(padded)  # [world * most, ...]
    return torch.cat([gathered[r * most : r * most + c] for r, c in enumerate(counts)])


class WindowMean(WindowMetric):
    """Mean of one per-window column over the distinct windows. NaN in any window gives NaN, on purpose:
    a column that is NaN for some windows only is a bug upstream, not something to average around."""

    def __init__(self, column: str, output_transform: Transform = _identity, device: Device = "cpu") -> None:
        self.column = column
        super().__init__({column: None}, output_transform=output_transform, device=device)

    def compute_from(self, columns: dict[str, np.ndarray]) -> float:
        return float(np.mean(columns[self.column]))


class BinaryMetric(WindowMetric):
    """Base for scores of the next-day probability ``p`` against the label ``y``; checks both first."""

    def __init__(self, output_transform: Transform = _identity, device: Device = "cpu") -> None:
        super().__init__({"p": None, "y": None}, output_transform=output_transform, device=device)

    def compute_from(self, columns: dict[str, np.ndarray]) -> Any:
        p, y = columns["p"], columns["y"]  # [N], [N]
        bad_y = ~np.isin(y, (0.0, 1.0))
        if bad_y.any():
            n = int(bad_y.sum())
            raise ValueError(f"{type(self).__name__}: label 'y' must be 0 or 1; {n} windows are not")
        bad_p = ~(np.isfinite(p) & (p >= 0.0) & (p <= 1.0))
        if bad_p.any():
            i = int(np.argmax(bad_p))
            raise ValueError(
                f"{type(self).__name__}: probability 'p' must be finite and in [0, 1]; "
                f"{int(bad_p.sum())} windows are not (first: {p[i]!r} at sorted position {i})"
            )
        return self.score(p, y)

    def score(self, p: np.ndarray, y: np.ndarray) -> Any:
        raise NotImplementedError


class ROCAUC(BinaryMetric):
    """ROC AUC; NaN when the windows hold a single class (undefined, not an error)."""

    def score(self, p: np.ndarray, y: np.ndarray) -> float:
        return scoring.auc(p, y)


class PRAUC(BinaryMetric):
    """Average precision; NaN when the windows hold a single class."""

    def score(self, p: np.ndarray, y: np.ndarray) -> float:
        return scoring.pr_auc(p, y)


class Brier(BinaryMetric):
    """Mean squared error of ``p`` against ``y``."""

    def score(self, p: np.ndarray, y: np.ndarray) -> float:
        return scoring.brier(p, y)


class _BinnedMetric(BinaryMetric):
    """A binary metric computed over ``bins`` uniform probability bins."""

    def __init__(
        self,
        bins: int = scoring.ECE_BINS,
        output_transform: Transform = _identity,
        device: Device = "cpu",
    ) -> None:
        self.bins = int(bins)
        super().__init__(output_transform=output_transform, device=device)


class ECE(_BinnedMetric):
    """Expected calibration error over ``bins`` uniform bins (count-weighted |frac_pos − mean_pred|)."""

    def score(self, p: np.ndarray, y: np.ndarray) -> float:
        return scoring.ece(p, y, self.bins)


class CalibrationTable(_BinnedMetric):
    """The reliability table over ``bins`` uniform bins, as :class:`aline.scoring.CalibrationTable`."""

    def score(self, p: np.ndarray, y: np.ndarray) -> scoring.CalibrationTable:
        return scoring.calibration_table(p, y, self.bins)


class PolicyValue(WindowMetric):
    """Query value captured by the policy's top-k hours as a share of the best k hours' value:
    sum(policy_qv) / sum(best_qv). NaN when the data has no query value or the best hours hold none."""

    def __init__(self, output_transform: Transform = _identity, device: Device = "cpu") -> None:
        super().__init__(
            {"policy_qv": None, "best_qv": None}, output_transform=output_transform, device=device
        )

    def compute_from(self, columns: dict[str, np.ndarray]) -> float:
        got, best = float(np.sum(columns["policy_qv"])), float(np.sum(columns["best_qv"]))
        if not (np.isfinite(got) and np.isfinite(best)) or best <= 0.0:
            return float("nan")
        return got / best


class PolicySetValue(WindowMetric):
    """The exact cut in Var(w*.Z_23) of the policy's whole asked set, summed over windows, as a share of
    the greedy oracle sets' cut: unlike :class:`PolicyValue` it counts what answers say in common once.
    ``set_value`` maps an asked mask [N, hours] (windows in index order) to that share; None (no exact
    model for the data) gives NaN."""

    def __init__(
        self,
        set_value: Callable[[np.ndarray], float] | None,
        hours: int = contract.HOURS,
        output_transform: Transform = _identity,
        device: Device = "cpu",
    ) -> None:
        self.set_value = set_value
        super().__init__({"asked": hours}, output_transform=output_transform, device=device)

    def compute_from(self, columns: dict[str, np.ndarray]) -> float:
        if self.set_value is None:
            return float("nan")
        return float(self.set_value(columns["asked"] > 0.5))


class AskOutsidePool(WindowMetric):
    """Share of the policy's asks that fall outside the question pool (0 when it asked nothing)."""

    def __init__(
        self, hours: int = contract.HOURS, output_transform: Transform = _identity, device: Device = "cpu"
    ) -> None:
        super().__init__({"asked": hours, "pool": hours}, output_transform=output_transform, device=device)

    def compute_from(self, columns: dict[str, np.ndarray]) -> float:
        asked = columns["asked"] > 0.5  # [N, hours]
        outside = asked & ~(columns["pool"] > 0.5)
        n = int(asked.sum())
        return float(outside.sum()) / n if n else 0.0


class AskedForecast(WindowMetric):
    """AUC or Brier of ``p_asked`` (the forecast after the policy's answers) against ``y``; NaN when the
    data has no answers (every ``p_asked`` NaN)."""

    def __init__(self, rule: str, output_transform: Transform = _identity, device: Device = "cpu") -> None:
        if rule not in ("auc", "brier"):
            raise ValueError(f"AskedForecast: rule must be 'auc' or 'brier', got {rule!r}")
        self.rule = rule
        super().__init__({"p_asked": None, "y": None}, output_transform=output_transform, device=device)

    def compute_from(self, columns: dict[str, np.ndarray]) -> float:
        p, y = columns["p_asked"], columns["y"]
        if np.isnan(p).all():
            return float("nan")
        if not np.isfinite(p).all():
            raise ValueError("AskedForecast: 'p_asked' is NaN for some windows only")
        return scoring.auc(p, y) if self.rule == "auc" else scoring.brier(p, y)


class GainSpearman(WindowMetric):
    """Median over windows of ``gain_rho`` (windows where it is NaN are left out; NaN if all are)."""

    def __init__(self, output_transform: Transform = _identity, device: Device = "cpu") -> None:
        super().__init__({"gain_rho": None}, output_transform=output_transform, device=device)

    def compute_from(self, columns: dict[str, np.ndarray]) -> float:
        rho = columns["gain_rho"]
        rho = rho[np.isfinite(rho)]
        return float(np.median(rho)) if rho.size else float("nan")


class TopkFrequency(WindowMetric):
    """Share of windows whose policy asks about each hour (from the ``asked`` [B, hours] mask): a float64
    array [hours]. Its entries sum to k when every window's pool holds at least k hours."""

    def __init__(
        self,
        k: int,
        hours: int = contract.HOURS,
        output_transform: Transform = _identity,
        device: Device = "cpu",
    ) -> None:
        if not 1 <= int(k) <= int(hours):
            raise ValueError(f"TopkFrequency: k must be in [1, {hours}], got {k}")
        self.k = int(k)
        self.hours = int(hours)
        super().__init__({"asked": self.hours}, output_transform=output_transform, device=device)

    def compute_from(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        asked = columns["asked"]  # [N, hours] 0/1
        if not np.isin(asked, (0.0, 1.0)).all():
            raise ValueError("TopkFrequency: 'asked' must be a 0/1 mask over the hours")
        return asked.mean(axis=0)  # [hours]


def validation_metrics(
    k: int, bins: int = scoring.ECE_BINS, set_value: Callable[[np.ndarray], float] | None = None
) -> dict[str, Metric]:
    """Fresh validation metrics under their metrics.csv names plus the two per-epoch tables
    (``set_value``: see :class:`PolicySetValue`)."""
    metrics: dict[str, Metric] = {name: WindowMean(col) for name, col in MEAN_COLUMNS.items()}
    metrics.update(
        auc=ROCAUC(),
        pr_auc=PRAUC(),
        brier=Brier(),
        ece=ECE(bins),
        policy_value=PolicyValue(),
        policy_set_value=PolicySetValue(set_value),
        ask_outside_pool=AskOutsidePool(),
        brier_asked=AskedForecast("brier"),
        auc_asked=AskedForecast("auc"),
        gain_spearman=GainSpearman(),
    )
    metrics[CALIBRATION_METRIC] = CalibrationTable(bins)
    metrics[TOPK_METRIC] = TopkFrequency(k)
    scalar = [n for n in metrics if n not in (CALIBRATION_METRIC, TOPK_METRIC)]
    # The CSV writer and this module must name the same figures; fail loudly if the contract moves.
    if sorted(scalar) != sorted(contract.VAL_METRICS):
        want = sorted(contract.VAL_METRICS)
        raise RuntimeError(f"validation metrics {sorted(scalar)} differ from the contract's {want}")
    return metrics


def attach_validation_metrics(
    evaluator: Engine,
    k: int,
    bins: int = scoring.ECE_BINS,
    set_value: Callable[[np.ndarray], float] | None = None,
) -> None:
    """Attach every validation metric to ``evaluator`` (epoch-wise): the ``contract.VAL_METRICS`` scalars,
    ``"calibration"`` (an :class:`aline.scoring.CalibrationTable`) and ``"topk_frequency"`` (array [24])."""
    for name, metric in validation_metrics(k, bins, set_value).items():
        metric.attach(evaluator, name)


class _Pick:
    """Output transform taking one float from the trainer's output dict, with a clear error if absent."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, output: Any) -> float:
        if not isinstance(output, Mapping) or self.key not in output:
            has = sorted(output) if isinstance(output, Mapping) else type(output).__name__
            raise KeyError(f"training metrics: trainer output lacks '{self.key}'; it has {has}")
        return float(output[self.key])


class LastValue(Metric):
    """The latest value of one trainer output (the learning rate): identical on every process, no sync."""

    required_output_keys = None

    @reinit__is_reduced
    def reset(self) -> None:
        self._value: float | None = None

    @reinit__is_reduced
    def update(self, output: float) -> None:
        self._value = float(output)

    def compute(self) -> float:
        if self._value is None:
            raise NotComputableError("LastValue needs at least one iteration before it can be computed")
        return self._value


def attach_training_metrics(trainer: Engine, alpha: float = 0.98, epoch_bound: bool = True) -> None:
    """Attach running averages of ``contract.TRAIN_METRICS`` to ``trainer`` (updated every iteration).

    The losses and grad_norm are exponential moving averages (``alpha`` = weight of the past); ``lr`` is
    the last value. With several processes each iteration's value is first averaged over processes
    (ignite's RunningAverage does so). ``epoch_bound`` restarts the averages each epoch, so a run resumed
    from an epoch-end checkpoint logs exactly what the uninterrupted run logged.
    """
    usage = SingleEpochRunningBatchWise() if epoch_bound else RunningBatchWise()
    for name in contract.TRAIN_METRICS:
        if name == "lr":
            LastValue(output_transform=_Pick(name)).attach(trainer, name, usage=usage)
        else:
            RunningAverage(alpha=alpha, output_transform=_Pick(name)).attach(trainer, name, usage=usage)
