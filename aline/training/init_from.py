"""``trainer.init_from``: start a new run from another run's weights and normaliser, checked to fit first."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from aline.config import Config, ConfigError
from aline.data import DataError
from aline.data.dataset import Normalizer
from aline.model.network import build_model
from aline.runs import RunFileError, RunFolder
from aline.runs.checkpoint import state_mismatch

__all__ = ["InitFrom", "load_init"]


@dataclass
class InitFrom:
    """Weights and normaliser of the run that ``--init-from`` names."""

    run_dir: Path
    checkpoint: Path
    normalizer: Normalizer
    state: dict[str, torch.Tensor]


def load_init(cfg: Config) -> InitFrom | None:
    """Read ``trainer.init_from`` (a run folder) and check that it fits this run: same features in the
    same order, and weights of the model this config builds. Raises ConfigError naming the difference."""
    if cfg.trainer.init_from is None:
        return None
    run_dir = Path(cfg.trainer.init_from)
    where = f"--init-from {run_dir}"
    if not run_dir.is_dir():
        raise ConfigError(f"{where}: no such run folder")
    folder = RunFolder(run_dir)
    try:
        normalizer = folder.normalizer()
        checkpoint = folder.best_checkpoint()
        state = folder.model_state(checkpoint)
    except (DataError, RunFileError) as err:
        raise ConfigError(f"{where}: {err}") from None
    ours, theirs = list(cfg.data.columns.features), list(normalizer.feature_names)
    if ours != theirs:
        only_ours = [f for f in ours if f not in theirs]
        only_theirs = [f for f in theirs if f not in ours]
        detail = []
        if only_ours:
            detail.append(f"only in this run's data.columns.features: {only_ours}")
        if only_theirs:
            detail.append(f"only in {run_dir.name}: {only_theirs}")
        if not detail:
            detail.append(f"same features in another order (there: {theirs})")
        raise ConfigError(f"{where}: its features differ from this run's: " + "; ".join(detail))
    model = build_model(cfg, n_features=len(ours))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ConfigError(
            f"{where}: its weights ({checkpoint.name}) do not fit the model this config describes (model.*, "
            f"data.columns.latents): " + state_mismatch(err)
        ) from None
    return InitFrom(run_dir, checkpoint, normalizer, state)
