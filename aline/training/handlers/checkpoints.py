"""Checkpoints: ``last.pt`` (everything needed to resume, RNG included), resume, best-by-metric files."""

from __future__ import annotations

import math
import os
import random
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver

from aline.contract import (
    CHECKPOINT_DIR,
    HIGHER_IS_BETTER,
    LAST_CHECKPOINT,
    VAL_METRICS,
)
from aline.model.network import unwrap
from aline.runs.checkpoint import CheckpointError, load_checkpoint_dict, save_checkpoint
from aline.training.handlers.common import _is_writer, _number
from aline.training.handlers.status import RunStatus

# --- checkpoints ------------------------------------------------------------------------------------------


def weights_only_safe(value: Any, where: str = "checkpoint") -> Any:
    """A copy of ``value`` that ``torch.load(weights_only=True)`` accepts.

    NumPy scalars become Python numbers and NumPy arrays tensors; anything else that is not a tensor,
    number, string, None or a dict/list/tuple of those raises a TypeError naming where it sits.
    """
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.generic):  # before the float check: np.float64 subclasses float
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str, bytes, torch.Size, torch.dtype)):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, Mapping):
        out = OrderedDict() if isinstance(value, OrderedDict) else {}
        for k, v in value.items():
            out[k] = weights_only_safe(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        items = [weights_only_safe(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise TypeError(f"{where}: {type(value).__name__} cannot be loaded with torch.load(weights_only=True)")


class RNGState:
    """Python, NumPy and torch (CPU and CUDA) random states, as a checkpointable object."""

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = random.getstate()
        name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
        state: dict[str, Any] = {
            "python": [version, list(internal), gauss],
            "numpy": {
                "name": name,
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached": float(cached),
            },
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        n = state["numpy"]
        keys = n["keys"].numpy().astype(np.uint32)
        np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached"]))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class LastCheckpoint:
    """``checkpoints/last.pt``: everything needed to resume, replaced atomically on each save.

    ``to_save`` maps names to objects with ``state_dict()`` (model, optimizer, LR schedule, trainer, early
    stopping, the best-checkpoint handler, :class:`RNGState`, ...). Saved only on rank 0.
    """

    def __init__(self, path: str | os.PathLike[str], to_save: Mapping[str, Any]) -> None:
        for key, obj in to_save.items():
            if not hasattr(obj, "state_dict"):
                raise TypeError(f"last checkpoint: {key!r} ({type(obj).__name__}) has no state_dict()")
        self.path = Path(path)
        self.to_save = dict(to_save)

    def state(self) -> dict[str, Any]:
        raw = {key: unwrap(obj).state_dict() for key, obj in self.to_save.items()}
        return weights_only_safe(raw, str(self.path.name))

    def save(self) -> None:
        if not _is_writer():
            return
        save_checkpoint(self.state(), self.path)


def last_checkpoint_path(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT


def attach_last_checkpoint(trainer: Engine, last: LastCheckpoint) -> None:
    """Write ``last.pt`` at each epoch end (attach after the validation handler; see the module doc).

    Also at the start of a fresh run, so that a run stopped during its first epoch is resumable too. Only
    epoch boundaries are ever saved: resuming from one repeats the interrupted epoch exactly.
    """
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: last.save())

    @trainer.on(Events.STARTED)
    def _initial(_: Engine) -> None:
        if not last.path.exists():
            last.save()


def read_checkpoint(
    path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """A checkpoint of this trainer, weights only (:func:`aline.runs.checkpoint.load_checkpoint`): inside
    ``root`` and never through a link when ``root`` (the run folder) is given."""
    return load_checkpoint_dict(path, root=root)


def best_checkpoint_files(run_dir: str | os.PathLike[str], checkpoint: Mapping[str, Any]) -> list[Path]:
    """The best-checkpoint files that ``last.pt``'s best-checkpoint handler state says exist."""
    state = checkpoint.get("best_checkpoint") or {}
    saved = state.get("_saved") if isinstance(state, Mapping) else None
    names = []
    for item in saved or []:
        name = item[1] if isinstance(item, (list, tuple)) and len(item) == 2 else None
        # A plain file name of checkpoints/: a name from last.pt must never lead a read, or the removal of
        # a checkpoint that fell out of the best n, out of that folder.
        if not (isinstance(name, str) and _plain_name(name)):
            raise CheckpointError(
                f"{Path(run_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT}: its best-checkpoint list names "
                f"{str(name)[:80]!r}, not a file of {CHECKPOINT_DIR}/; not a checkpoint of this trainer"
            )
        names.append(Path(run_dir) / CHECKPOINT_DIR / name)
    return names


def _plain_name(name: str) -> bool:
    return name not in ("", ".", "..") and not any(ch in name for ch in "/\\\0")


def check_resumable(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``last.pt`` and every best checkpoint it names (weights only); CheckpointError on a bad one.

    A best checkpoint deleted by hand is allowed (the run only loses that file); one that is there but
    unreadable is not, since evaluation and prediction would later fail on it.
    """
    checkpoint = read_checkpoint(last_checkpoint_path(run_dir), root=run_dir)
    for best in best_checkpoint_files(run_dir, checkpoint):
        if (best.exists() or best.is_symlink()) and "model" not in read_checkpoint(best, root=run_dir):
            raise CheckpointError(f"{best}: no 'model' entry; not a best checkpoint of this trainer")
    return checkpoint


def resume_from(
    last_pt: str | os.PathLike[str],
    to_load: Mapping[str, Any],
    checkpoint: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Load ``last.pt`` (weights only) into the objects of ``to_load``; returns the raw checkpoint dict.

    Every fault (unreadable file, missing entry, an entry that does not fit) is a :class:`CheckpointError`.
    """
    path = Path(last_pt)
    checkpoint = dict(checkpoint) if checkpoint is not None else read_checkpoint(path)
    missing = [key for key in to_load if key not in checkpoint]
    if missing:
        raise CheckpointError(
            f"{path}: cannot resume: it has no entry for {', '.join(map(repr, missing))} "
            f"(it holds {', '.join(map(repr, checkpoint))})"
        )
    for key, obj in to_load.items():
        try:
            unwrap(obj).load_state_dict(checkpoint[key])
        except (
            KeyError,
            ValueError,
            RuntimeError,
            TypeError,
            AttributeError,
            IndexError,
            OverflowError,
        ) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise CheckpointError(f"{path}: entry {key!r} does not fit this run ({first})") from None
    return checkpoint


def score_sign(metric: str) -> float:
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"unknown validation metric {metric!r}; choose one of {', '.join(VAL_METRICS)}")
    return 1.0 if HIGHER_IS_BETTER[metric] else -1.0


def metric_score(metric: str) -> Callable[[Engine], float]:
    """Score function for ignite (higher = better): a plain float, and −inf for an undefined (NaN) metric.

    NaN would poison ignite's comparisons (every later score would look like no improvement, or every one
    like an improvement); −inf ranks an undefined evaluation as the worst one instead.
    """
    sign = score_sign(metric)

    def score(engine: Engine) -> float:
        value = _number(engine.state.metrics.get(metric))
        return -math.inf if value is None else sign * value

    return score


class _BestFilename(str):
    """Filename pattern that shows the metric's own value, not ignite's sign-flipped score.

    Ignite formats ``score`` from the priority (−brier for a lower-is-better metric); Checkpoint only calls
    ``pattern.format(**fields)``, so overriding ``format`` is enough to print ``brier=0.1523``.
    """

    sign: float = 1.0

    def format(self, *args: Any, **fields: Any) -> str:  # type: ignore[override]
        score = fields.get("score")
        if score is not None:
            value = float(score) * self.sign
            fields["score"] = f"{value:.4f}" if math.isfinite(value) else "nan"
        return str.format(self, *args, **fields)


class _KeepGoingDiskSaver(DiskSaver):
    def remove(self, filename: str) -> None:
        # A best checkpoint deleted by hand must not crash a resumed run when it falls out of the top n.
        if _is_writer() and _plain_name(filename):  # never a name that leads out of checkpoints/
            (self.dirname / filename).unlink(missing_ok=True)


class _BestMeta:
    """Extra entry of a best checkpoint: which epoch, which metric and value it was chosen for."""

    def __init__(self, trainer: Engine, evaluator: Engine, metric: str) -> None:
        self.trainer, self.evaluator, self.metric = trainer, evaluator, metric

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": int(self.trainer.state.epoch),
            "iteration": int(self.trainer.state.iteration),
            "metric": self.metric,
            "value": _number(self.evaluator.state.metrics.get(self.metric)),
        }


def attach_best_checkpoint(
    trainer: Engine,
    evaluator: Engine,
    run_dir: str | os.PathLike[str],
    model: torch.nn.Module,
    metric: str,
    n_saved: int = 1,
    status: RunStatus | None = None,
) -> Checkpoint:
    """Keep the ``n_saved`` best checkpoints by validation ``metric`` in ``run_dir/checkpoints``.

    Files are named ``best_epoch=3_auc=0.8123.pt`` and hold ``{"model": state_dict, "meta": {...}}``.
    The returned handler's ``state_dict()`` belongs in ``last.pt`` (so a resumed run keeps its ranking).
    When a new best appears, ``status.best`` is updated with the file's path relative to ``run_dir``.
    """
    sign = score_sign(metric)
    pattern = _BestFilename("best_epoch={global_step}_{score_name}={score}.{ext}")
    pattern.sign = sign
    saver = _KeepGoingDiskSaver(Path(run_dir) / CHECKPOINT_DIR, require_empty=False, create_dir=True)
    handler = Checkpoint(
        {"model": model, "meta": _BestMeta(trainer, evaluator, metric)},
        saver,
        score_function=metric_score(metric),
        score_name=metric,
        n_saved=n_saved,
        global_step_transform=lambda *_: trainer.state.epoch,
        filename_pattern=pattern,
    )

    def save(engine: Engine) -> None:
        saved_before = handler.state_dict()["_saved"]
        handler(engine)
        saved = handler.state_dict()["_saved"]  # [(priority, filename)], best last
        if status is None or not saved or (saved_before and saved[-1][1] == saved_before[-1][1]):
            return
        priority, filename = saved[-1]
        value = priority * sign if math.isfinite(priority) else None
        status.set_best(metric, value, trainer.state.epoch, f"{CHECKPOINT_DIR}/{filename}")

    evaluator.add_event_handler(Events.COMPLETED, save)
    return handler
