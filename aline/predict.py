"""The trained model as an inference artifact: load a run (or one checkpoint), predict on hourly rows.

``load(run_or_checkpoint) -> Predictor`` rebuilds the model from the run's ``config.yaml``, its
``normalizer.json`` and a checkpoint read with ``torch.load(..., weights_only=True)`` (a checkpoint that
holds pickled Python objects is refused). ``Predictor.predict(df_or_csv)`` validates the input exactly as
training does (:func:`aline.data.read_split`) and returns, per window (one subject-day), the next-day
probability and the policy's top-k hours, and per hour the posterior mean/std of the latent state.
``aline.evaluate`` runs its forward pass through the same :class:`Predictor`, so both report the same
probabilities for the same windows.

CLI: ``python -m aline.predict RUN input.csv --out predictions.csv`` (one row per window:
``window_id, p_next, topk_hours``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from aline import contract
from aline.config import Config, ConfigError
from aline.contract import EXIT_FAILURE, EXIT_INVALID, EXIT_OK
from aline.data import DataError, RawSplit, read_split
from aline.data.dataset import Normalizer, answer_channel
from aline.model.asking import (
    drop_unaskable_answers,
    forecast_moments,
    has_answer_channel,
    one_answer_gains,
    one_answer_outputs,
    pool_mask,
    pool_topk,
    reveal,
)
from aline.model.network import AlineModel, build_model
from aline.runs import RunFileError, RunFolder
from aline.runs.checkpoint import load_checkpoint, model_state, state_mismatch
from aline.training.losses import uncertainty_reward

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_BATCH_SIZE = 1024

__all__ = ["Prediction", "Predictor", "RunError", "find_checkpoint", "load", "load_state_dict", "main"]


# A run folder or checkpoint that cannot be used; ``str(err)`` names the file and what is wrong. One class
# with the run folder's own (aline.runs), so a CheckpointError is a RunError too.
RunError = RunFileError


def _warn(message: str) -> None:
    import warnings

    warnings.warn(message.removeprefix("warning: "), UserWarning, stacklevel=3)


def positive_int(text: str) -> int:
    """argparse type for counts such as ``--batch-size`` (argparse reports the error, exit code 2)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


# --- locating and loading the pieces of a run ---------------------------------------------------------


def _resolve_run(run_or_checkpoint: str | Path) -> tuple[Path, Path | None]:
    """``(run_dir, checkpoint or None)``: a run folder, or a ``.pt`` file inside ``<run>/checkpoints/``."""
    path = Path(run_or_checkpoint)
    if path.is_dir():
        return path, None
    if path.is_file():
        parent = path.parent
        run_dir = parent.parent if parent.name == contract.CHECKPOINT_DIR else parent
        return run_dir, path
    raise RunError(f"{path}: no such run folder or checkpoint file")


def find_checkpoint(run_dir: str | Path) -> Path:
    """The run's best checkpoint (``status.json`` → ``best.checkpoint``, a file of its ``checkpoints/``);
    ``last.pt`` if none is recorded. RunError for anything else."""
    return RunFolder(run_dir).best_checkpoint()


def load_state_dict(path: str | Path, run_dir: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The model's state_dict from a checkpoint, read weights-only (no arbitrary code can run).

    Accepts the trainer's checkpoints (state_dict under ``"model"``) and a bare state_dict. With
    ``run_dir``, a checkpoint inside that run folder is opened without following a link."""
    if run_dir is not None:
        return RunFolder(run_dir).model_state(path)
    return model_state(load_checkpoint(path), path)


def _load_run_config(run_dir: Path) -> Config:
    if not (run_dir / contract.CONFIG_FILE).exists() and not (run_dir / contract.CONFIG_FILE).is_symlink():
        raise RunError(f"{run_dir}: no {contract.CONFIG_FILE}; is it a run folder (runs/<run>/)?")
    try:
        return RunFolder(run_dir).load_config()
    except ConfigError as err:
        raise RunError(f"the run's config does not load: {err}") from None


def _load_normalizer(run_dir: Path, cfg: Config) -> Normalizer:
    path = run_dir / contract.NORMALIZER_FILE
    if not path.exists() and not path.is_symlink():
        raise RunError(f"{run_dir}: no {contract.NORMALIZER_FILE} (the feature statistics fitted on train)")
    try:
        normalizer = RunFolder(run_dir).normalizer()
        normalizer.check_features(
            cfg.data.columns.features, where=f"{run_dir / contract.CONFIG_FILE} features"
        )
    except DataError as err:
        raise RunError(str(err)) from None
    return normalizer


# --- outputs ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """Model outputs for N windows (sorted by window id), hours 0..23 along axis 1.

    ``p_next`` is the next-day probability after the whole day (the hour-23 forecast); ``p_hourly`` the
    forecast after each hour. ``uncertainty`` is the per-hour "uncertainty sampling" reward
    (:func:`aline.training.losses.uncertainty_reward`), the model's own idea of where it is unsure.
    """

    window_id: np.ndarray  # [N] object: ids exactly as written in the input, sorted as aline.data sorts them
    p_next: np.ndarray  # [N] float64
    p_hourly: np.ndarray  # [N, 24] float64
    mu_z: np.ndarray  # [N, 24, Z] float32, latent units
    sigma_z: np.ndarray  # [N, 24, Z] float32
    scores: np.ndarray  # [N, 24] float32 policy scores
    topk_hours: np.ndarray  # [N, k] int64, ascending; -1 pads windows whose pool has fewer than k hours
    uncertainty: np.ndarray  # [N, 24] float32
    latent_names: tuple[str, ...]
    # False for a run trained on labels alone: mu_z/sigma_z are then no posterior of anything measurable.
    has_posterior: bool = True
    pool: np.ndarray | None = None  # [N, 24] bool: the hours that can be asked about
    asked: np.ndarray | None = None  # [N, 24] bool: the policy's proposal (top-k pool hours)

    def __len__(self) -> int:
        return int(self.window_id.shape[0])

    def to_frame(self) -> pd.DataFrame:
        """One row per window: ``window_id, p_next, topk_hours`` (hours space-separated, ascending)."""
        import pandas as pd

        hours = [" ".join(str(int(h)) for h in row if h >= 0) for row in self.topk_hours]
        return pd.DataFrame({"window_id": self.window_id, "p_next": self.p_next, "topk_hours": hours})

    def hourly_frame(self) -> pd.DataFrame:
        """One row per window and hour: ``window_id, hour, p, score, mu_<latent>..., sigma_<latent>...``;
        without the mu/sigma columns for a run trained on labels alone (see docs/data.md, "Labels only")."""
        import pandas as pd

        n, t = self.p_hourly.shape
        cols: dict[str, np.ndarray] = {
            "window_id": np.repeat(self.window_id, t),
            "hour": np.tile(np.arange(t), n),
            "p": self.p_hourly.reshape(-1),
            "score": self.scores.reshape(-1),
        }
        if self.has_posterior:
            for j, name in enumerate(self.latent_names):
                cols[f"mu_{name}"] = self.mu_z[:, :, j].reshape(-1)
            for j, name in enumerate(self.latent_names):
                cols[f"sigma_{name}"] = self.sigma_z[:, :, j].reshape(-1)
        return pd.DataFrame(cols)


class Predictor:
    """A loaded model with its config and normaliser; CPU by default, no gradients, batched."""

    def __init__(
        self,
        cfg: Config,
        model: AlineModel,
        normalizer: Normalizer,
        *,
        checkpoint: Path | None = None,
        run_dir: Path | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        device: str | torch.device = "cpu",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.cfg = cfg
        self.normalizer = normalizer
        self.checkpoint = checkpoint
        self.run_dir = run_dir
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    @property
    def k(self) -> int:
        return self.cfg.policy.k

    def read(
        self, data: pd.DataFrame | str | Path, *, require_targets: bool = False, answers: bool = False
    ) -> RawSplit:
        """Validate hourly rows as training does; a DataFrame goes through the same CSV reader. Prediction
        input (``require_targets=False``) reads the answer column only with ``answers``."""
        columns = self.cfg.data.columns
        if not (require_targets or answers):
            columns = columns.model_copy(update={"answers": None})
        if isinstance(data, (str, Path)):
            return read_split(data, columns, require_targets=require_targets)
        import pandas as pd

        if not isinstance(data, pd.DataFrame):
            raise TypeError(f"predict() takes a DataFrame or a CSV path, got {type(data).__name__}")
        # One reader for both inputs keeps the checks and messages identical; line numbers then count the
        # DataFrame's rows from 2 (line 1 is the header), as they would in the CSV it came from.
        with tempfile.TemporaryDirectory(prefix="aline-predict-") as tmp:
            path = Path(tmp) / "input.csv"
            data.to_csv(path, index=False)
            try:
                raw = read_split(path, columns, require_targets=require_targets)
            except DataError as err:
                raise DataError(str(err).replace(str(path), "input DataFrame")) from None
        return raw

    def predict(
        self,
        data: pd.DataFrame | str | Path,
        *,
        answers: bool = False,
        warn: Callable[[str], None] | None = None,
    ) -> Prediction:
        """Per window the next-day probability and top-k hours, per hour the posterior of Z.

        ``data`` needs the window id, hour and feature columns of the run's config (missing cells allowed:
        empty, NA, NaN, null); every other column is ignored, except, with ``answers=True``, the answer
        column (the run's ``data.columns.answers``, e.g. ``ask_symptom_score``): its filled cells are the
        patient's answers to the questions asked so far. They go into the model as answers, never as
        logged values, and the proposed hours are then askable ones not answered yet. Window ids may be
        any text or integers and come back exactly as written. Invalid input raises
        :class:`aline.data.DataError`. An answer at an hour that cannot be asked is dropped, with a warning
        through ``warn`` (default: :func:`warnings.warn`).
        """
        raw = self.read(data, answers=answers)
        if answers and raw.answers is None:
            raise DataError(
                f"{raw.path}: answers were asked for, but the input has no answer column "
                f"({', '.join(self.cfg.data.columns.answers or {}) or 'the run asks no question'}: "
                f"{', '.join((self.cfg.data.columns.answers or {}).values()) or '-'})"
            )
        raw = self.without_unaskable_answers(raw, warn=warn or _warn)
        return self.predict_raw(raw)

    def pool(self, raw: RawSplit, *, deployment: bool = False) -> np.ndarray:
        """The question pool of ``raw`` under the run's config (:func:`aline.model.asking.pool_mask`):
        hours with an answer to reveal, or with ``deployment`` the hours that can still be asked.
        ``[N, 24]`` bool"""
        cfg = self.cfg
        return pool_mask(
            raw, cfg.data.columns.asked_feature, cfg.policy.unaskable_when, deployment=deployment
        )

    def without_unaskable_answers(self, raw: RawSplit, warn: Callable[[str], None] | None = None) -> RawSplit:
        """``raw`` without answers at hours nobody can be asked (warned about through ``warn``)."""
        return drop_unaskable_answers(raw, self.cfg.policy.unaskable_when, warn)

    def inputs(self, raw: RawSplit) -> tuple[np.ndarray, np.ndarray]:
        """The model's inputs for ``raw``: normalised features and mask, with the empty answer channel when
        the run has one. ``[N, 24, F (+1)]`` float32 each"""
        with np.errstate(over="ignore", invalid="ignore"):
            x, mask = self.normalizer.transform(raw.features)
        _check_scaled(raw, x)
        return answer_channel(x, mask) if has_answer_channel(self.cfg) else (x, mask)

    def _answer_inputs(self, raw: RawSplit) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        if raw.answers is None or not has_answer_channel(self.cfg):
            raise DataError(f"{raw.path}: no answer column ({self.cfg.data.columns.answers}) to reveal")
        x, mask = self.inputs(raw)
        j = self.normalizer.feature_names.index(raw.asked_feature)
        scaled = (raw.answers - self.normalizer.mean[j]) / self.normalizer.std[j]
        answer = np.where(np.isnan(raw.answers), 0.0, scaled).astype(np.float32)  # [N, 24]
        return x, mask, answer, x.shape[-1] - 1  # the answer channel is the last column

    @torch.no_grad()
    def one_answer_gains(self, raw: RawSplit, pool: np.ndarray | None = None) -> np.ndarray:
        """The model's cut in its forecast variance (``w . z_23``) from each single pool hour's answer.
        ``[N, 24]`` float64, 0 off the pool."""
        x, mask, answer, j = self._answer_inputs(raw)
        pool = self.pool(raw) if pool is None else pool
        w = self.model.w.detach()
        step = max(1, self.batch_size // 24)  # each window becomes 24 inputs
        out = []
        for start in range(0, x.shape[0], step):
            sl = slice(start, start + step)
            xb, mb = torch.from_numpy(x[sl]).to(self.device), torch.from_numpy(mask[sl]).to(self.device)
            _, var0 = forecast_moments(self.model(xb, mb), w)
            gains = one_answer_gains(
                self.model,
                xb,
                mb,
                torch.from_numpy(answer[sl]).to(self.device),
                torch.from_numpy(pool[sl]).to(self.device),
                j,
                w,
                var0,
            )
            out.append(gains.double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, contract.HOURS))

    @torch.no_grad()
    def one_answer_forecasts(self, raw: RawSplit, pool: np.ndarray) -> np.ndarray:
        """p_next after each single pool hour's answer alone. ``[N, 24]`` float64, NaN off the pool."""
        x, mask, answer, j = self._answer_inputs(raw)
        hours = contract.HOURS
        step = max(1, self.batch_size // hours)  # each window becomes 24 inputs
        out = []
        for start in range(0, x.shape[0], step):
            sl = slice(start, start + step)
            batch = [torch.from_numpy(a[sl]).to(self.device) for a in (x, mask, answer, pool)]
            p = one_answer_outputs(self.model, *batch, j).p_next.double().cpu().numpy()
            out.append(p.reshape(-1, hours))
        p1 = np.concatenate(out) if out else np.zeros((0, hours))
        return np.where(pool, p1, np.nan)

    @torch.no_grad()
    def forecast_after(self, raw: RawSplit, asked: np.ndarray) -> np.ndarray:
        """p_next after revealing the answers (``raw.answers``) of the ``asked`` hours ``[N, 24]``. ``[N]``"""
        x, mask, answer, j = self._answer_inputs(raw)
        asked = np.asarray(asked, dtype=bool) & ~np.isnan(raw.answers)  # no answer, nothing to reveal
        out = []
        for start in range(0, x.shape[0], self.batch_size):
            sl = slice(start, start + self.batch_size)
            xb, mb = reveal(
                torch.from_numpy(x[sl]),
                torch.from_numpy(mask[sl]),
                torch.from_numpy(answer[sl]),
                torch.from_numpy(asked[sl]),
                j,
            )
            out.append(self.model(xb.to(self.device), mb.to(self.device)).p_next.cpu().numpy())
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)

    @torch.no_grad()
    def predict_raw(self, raw: RawSplit, *, reveal_answers: bool = True) -> Prediction:
        """Forward pass over an already validated split, ``batch_size`` windows at a time.

        ``reveal_answers`` (deployment): the split's answers go into the model and the proposals are the
        askable hours not answered yet. Without it (evaluation) the day is read as logged and the pool is
        the hours that have an answer to reveal, as in training.
        """
        self.normalizer.check_features(raw.feature_names, where=str(raw.path))
        reveal_now = reveal_answers and raw.answers is not None and has_answer_channel(self.cfg)
        if reveal_now:
            x, mask, answer, j = self._answer_inputs(raw)
            given = ~np.isnan(raw.answers)  # [N, 24]
        else:
            x, mask = self.inputs(raw)  # [N, 24, F (+1)] each, float32
        pool = self.pool(raw, deployment=reveal_answers)  # [N, 24] bool
        n = x.shape[0]
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("p", "mu", "sigma", "scores", "asked", "unc")}
        for start in range(0, n, self.batch_size):
            sl = slice(start, start + self.batch_size)
            xb, mb = torch.from_numpy(x[sl]), torch.from_numpy(mask[sl])
            if reveal_now:
                xb, mb = reveal(xb, mb, torch.from_numpy(answer[sl]), torch.from_numpy(given[sl]), j)
            pb = torch.from_numpy(pool[sl]).to(self.device)
            out = self.model(xb.to(self.device), mb.to(self.device))
            parts["p"].append(out.p.cpu().numpy())  # [B, 24]
            parts["mu"].append(out.mu_z.cpu().numpy())  # [B, 24, Z]
            parts["sigma"].append(out.sigma_z.cpu().numpy())  # [B, 24, Z]
            parts["scores"].append(out.scores.cpu().numpy())  # [B, 24]
            parts["asked"].append(pool_topk(out.scores, pb, self.k).cpu().numpy())  # [B, 24]
            parts["unc"].append(uncertainty_reward(out.p, out.sigma_z).cpu().numpy())  # [B, 24]
        z_dim = len(self.cfg.data.columns.latents)
        hours = contract.HOURS

        def cat(key: str, tail: tuple[int, ...], dtype: Any) -> np.ndarray:
            if not parts[key]:
                return np.zeros((0, *tail), dtype=dtype)
            return np.concatenate(parts[key]).astype(dtype, copy=False)

        p_hourly = cat("p", (hours,), np.float64)  # float32 values, held exactly in float64
        asked = cat("asked", (hours,), bool)
        # Ascending asked hours, -1 where a window's pool held fewer than k.
        order = np.sort(np.where(asked, np.arange(hours), hours), axis=1)[:, : self.k]
        topk_hours = np.where(order < hours, order, -1).astype(np.int64)
        return Prediction(
            window_id=raw.window_id,
            p_next=p_hourly[:, -1].copy(),
            p_hourly=p_hourly,
            mu_z=cat("mu", (hours, z_dim), np.float32),
            sigma_z=cat("sigma", (hours, z_dim), np.float32),
            scores=cat("scores", (hours,), np.float32),
            topk_hours=topk_hours,
            uncertainty=cat("unc", (hours,), np.float32),
            latent_names=tuple(self.cfg.data.columns.latents),
            has_posterior=self.cfg.loss.posterior != "none",
            pool=pool,
            asked=asked,
        )


def _check_scaled(raw: RawSplit, x: np.ndarray) -> None:
    """A finite value so far outside the training range that its standardised value overflows float32
    (3e38 where training saw tens) would make every forecast of its window NaN: a DataError instead."""
    bad = ~np.isfinite(x)  # [N, 24, F]
    if not bad.any():
        return
    w, h, f = (int(i[0]) for i in np.nonzero(bad))
    value = raw.features[w, h, f]
    raise DataError(
        f"{raw.path}: column {raw.feature_names[f]!r}: value {value:.7g} (window {raw.window_id[w]!r}, hour "
        f"{h}) is too far outside the range the run was trained on to be standardised; "
        f"{int(bad.sum())} such values in all"
    )


def load(
    run_or_checkpoint: str | Path,
    *,
    checkpoint: str | Path | None = None,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
) -> Predictor:
    """A :class:`Predictor` from a run folder (its best checkpoint) or from one checkpoint file in it.

    ``checkpoint`` overrides which checkpoint of the run folder to use. Raises :class:`RunError` with one
    message for a missing or broken run folder, config, normaliser or checkpoint.
    """
    run_dir, ckpt = _resolve_run(run_or_checkpoint)
    if checkpoint is not None:
        ckpt = Path(checkpoint)
    cfg = _load_run_config(run_dir)
    normalizer = _load_normalizer(run_dir, cfg)
    ckpt = ckpt if ckpt is not None else find_checkpoint(run_dir)
    state = load_state_dict(ckpt, run_dir)
    model = build_model(cfg, n_features=len(normalizer.feature_names))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise RunError(
            f"{ckpt}: its weights do not fit the model that {run_dir / contract.CONFIG_FILE} describes: "
            + state_mismatch(err)
        ) from None
    size = batch_size if batch_size is not None else cfg.trainer.eval_batch_size
    return Predictor(cfg, model, normalizer, checkpoint=ckpt, run_dir=run_dir, batch_size=size, device=device)


# --- command line --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m aline.predict",
        description=(
            "Predict with a trained ALINE run: for each window (one subject-day of 24 hourly rows) the "
            "next-day migraine probability and the k hours the policy would ask about."
        ),
        epilog=(
            "The input CSV needs the window id, hour and feature columns named in the run's config.yaml "
            "(missing values allowed: empty, NA, NaN or null cells); every other column is ignored. Window "
            "ids may be any text and are written back exactly as given. Exit codes: 0 success, "
            "2 invalid run folder, checkpoint or input, 1 any other failure."
        ),
    )
    parser.add_argument(
        "run", metavar="RUN", help="run folder (uses its best checkpoint) or a checkpoint .pt file"
    )
    parser.add_argument("input", metavar="INPUT.csv", help="hourly rows, one per window and hour 0..23")
    parser.add_argument(
        "--out",
        metavar="OUT.csv",
        default="-",
        help="write one row per window: window_id, p_next, topk_hours (space-separated); default: stdout",
    )
    parser.add_argument(
        "--hourly-out",
        metavar="FILE.csv",
        help="also write one row per window and hour: window_id, hour, p, score, mu_<latent>, sigma_<latent>",
    )
    parser.add_argument(
        "--answers",
        action="store_true",
        help="read the patient's answers from the run's answer column (data.columns.answers, e.g. "
        "ask_symptom_score): its filled cells enter the model as answers, not as logged values, and the "
        "proposed hours are askable ones not answered yet. Without it that column is ignored. The loop: "
        "predict, ask the proposed hours, fill their answers in, predict --answers",
    )
    parser.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="use this checkpoint instead of the run's best (e.g. .../last.pt)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="N",
        help="windows per forward pass (default: the run's trainer.eval_batch_size)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        predictor = load(args.run, checkpoint=args.checkpoint, batch_size=args.batch_size)
        prediction = predictor.predict(
            args.input, answers=args.answers, warn=lambda m: print(m, file=sys.stderr)
        )
        frame = prediction.to_frame()
        if args.out == "-":
            frame.to_csv(sys.stdout, index=False)
        else:
            frame.to_csv(args.out, index=False)
        if args.hourly_out:
            prediction.hourly_frame().to_csv(args.hourly_out, index=False)
    except (RunError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILURE
    if args.out != "-":
        print(f"wrote {len(prediction)} windows to {args.out}", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
